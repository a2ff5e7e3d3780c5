//! The final report, as text for people and JSON for scripts, and the live
//! progress line.

use std::fmt::Write;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::stats::{Stats, Tick};
use crate::chaos::classify::{Kill, Summary};

/// How the run was set up (echoed in the report).
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    pub target: String,
    pub transport: String,
    pub sessions: u64,
    pub connections: u64,
    pub threads: u64,
    pub procs: u64,
    /// Total requests per second asked for; None is closed loop.
    pub rate_per_second: Option<f64>,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
    /// (label, weight) of each mix entry.
    pub mix: Vec<(String, u32)>,
    pub idle: bool,
}

/// The server's resident memory and CPU over the run, when it is local.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerUsage {
    pub pid: u32,
    /// Before the generator connected.
    pub before_bytes: Option<u64>,
    /// Once every session was initialized.
    pub ready_bytes: Option<u64>,
    /// When the measured window ended (sessions still open).
    pub end_bytes: Option<u64>,
    /// Highest value seen (sampled once a second).
    pub max_bytes: Option<u64>,
    /// CPU time the server used in the measured window, seconds.
    pub cpu_seconds: Option<f64>,
    /// Its CPU time when the window began (to subtract at the end).
    pub cpu_start_seconds: Option<f64>,
}

impl ServerUsage {
    /// (ready - before) / sessions ready: what one open session costs the server.
    pub fn per_session_bytes(&self, sessions: u64) -> Option<f64> {
        let (before, ready) = (self.before_bytes?, self.ready_bytes?);
        (sessions > 0).then(|| (ready as f64 - before as f64) / sessions as f64)
    }

    pub fn sample(&mut self, rss: Option<u64>) {
        if let Some(rss) = rss {
            self.max_bytes = Some(self.max_bytes.map_or(rss, |max| max.max(rss)));
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub info: RunInfo,
    pub stats: Stats,
    pub server: Option<ServerUsage>,
    /// `--chaos`: what was injected and how the failures fell.
    pub chaos: Option<ChaosReport>,
}

/// The chaos part of a run (`--chaos`).
#[derive(Debug, Clone, PartialEq)]
pub struct ChaosReport {
    /// The schedule as given.
    pub spec: String,
    pub summary: Summary,
    /// Every injection, in order.
    pub kills: Vec<Kill>,
}

impl ChaosReport {
    fn to_json(&self) -> Value {
        let s = &self.summary;
        let recovery: Vec<Value> = s
            .recovery
            .iter()
            .map(|r| {
                json!({
                    "kind": r.kind,
                    "injected": r.injected,
                    "failed_to_inject": r.failed,
                    "unrecovered": r.unrecovered,
                    "sessions_affected": r.sessions_affected,
                    "recovery_ms": {
                        "p50": r.p50_us.map(ms),
                        "p99": r.p99_us.map(ms),
                        "max": r.max_us.map(ms),
                    },
                })
            })
            .collect();
        let errors: Vec<&str> = self
            .kills
            .iter()
            .filter_map(|kill| kill.error.as_deref())
            .collect();
        json!({
            "spec": self.spec,
            "grace_ms": ms(s.grace_us),
            "failed_inside": s.failed_inside,
            "failed_outside": s.failed_outside,
            "failed_unclassified": s.failed_unclassified,
            "recovery": recovery,
            "injection_errors": errors,
        })
    }

    fn write_text(&self, out: &mut String) {
        let s = &self.summary;
        let _ = writeln!(
            out,
            "chaos         {}: {} failed inside the killed domains, {} outside{} (window: request sent to {:.0} ms after the answer)",
            self.spec,
            thousands(s.failed_inside),
            thousands(s.failed_outside),
            if s.failed_unclassified > 0 {
                format!(", {} not classified", thousands(s.failed_unclassified))
            } else {
                String::new()
            },
            ms(s.grace_us)
        );
        let show = |us: Option<u64>| us.map_or("-".to_string(), |us| format!("{:.3}", ms(us)));
        for r in &s.recovery {
            let _ = write!(
                out,
                "  {:<8} {} injected, {} sessions hit; recovery (ms) p50 {}  p99 {}  max {}",
                r.kind.name(),
                thousands(r.injected),
                thousands(r.sessions_affected),
                show(r.p50_us),
                show(r.p99_us),
                show(r.max_us)
            );
            if r.unrecovered > 0 {
                let _ = write!(out, "; {} did not recover in time", r.unrecovered);
            }
            if r.failed > 0 {
                let _ = write!(out, "; {} injections failed", r.failed);
            }
            out.push('\n');
        }
        if let Some(error) = self.kills.iter().find_map(|kill| kill.error.as_deref()) {
            let _ = writeln!(out, "  first injection error: {error}");
        }
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1_000.0
}

fn latency_json(histogram: &Histogram<u64>) -> Value {
    if histogram.is_empty() {
        return Value::Null;
    }
    json!({
        "count": histogram.len(),
        "p50": ms(histogram.value_at_quantile(0.50)),
        "p90": ms(histogram.value_at_quantile(0.90)),
        "p99": ms(histogram.value_at_quantile(0.99)),
        "p99_9": ms(histogram.value_at_quantile(0.999)),
        "max": ms(histogram.max()),
        "mean": histogram.mean() / 1_000.0,
    })
}

fn latency_text(histogram: &Histogram<u64>) -> String {
    if histogram.is_empty() {
        return "no samples".to_string();
    }
    format!(
        "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        ms(histogram.value_at_quantile(0.50)),
        ms(histogram.value_at_quantile(0.90)),
        ms(histogram.value_at_quantile(0.99)),
        ms(histogram.value_at_quantile(0.999)),
        ms(histogram.max()),
    )
}

/// 1234567 → "1,234,567".
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

impl Report {
    pub fn per_second(&self, count: u64) -> f64 {
        let seconds = self.info.duration.as_secs_f64();
        if seconds > 0.0 {
            count as f64 / seconds
        } else {
            0.0
        }
    }

    pub fn to_json(&self) -> Value {
        let s = &self.stats;
        let info = &self.info;
        let operations: Vec<Value> = info
            .mix
            .iter()
            .enumerate()
            .map(|(i, (label, weight))| {
                let counts = s.per_op.get(i).copied().unwrap_or_default();
                json!({"op": label, "weight": weight, "ok": counts.ok, "failed": counts.failed})
            })
            .collect();
        let per_request_us = |seconds: f64| {
            let requests = s.ok + s.failed;
            (requests > 0).then(|| seconds * 1e6 / requests as f64)
        };
        let server = self.server.as_ref().map(|server| {
            json!({
                "pid": server.pid,
                "cpu_seconds": server.cpu_seconds,
                "cpu_us_per_request": server.cpu_seconds.and_then(per_request_us),
                "rss_bytes": {
                    "before": server.before_bytes,
                    "ready": server.ready_bytes,
                    "end": server.end_bytes,
                    "max": server.max_bytes,
                },
                "rss_per_session_bytes": server.per_session_bytes(s.sessions_ready),
            })
        });
        json!({
            "target": info.target,
            "transport": info.transport,
            "sessions": info.sessions,
            "connections": info.connections,
            "threads": info.threads,
            "procs": info.procs,
            "mode": if info.idle { "idle" } else if info.rate_per_second.is_some() { "open" } else { "closed" },
            "rate_per_second": info.rate_per_second,
            "warmup_s": info.warmup.as_secs_f64(),
            "duration_s": info.duration.as_secs_f64(),
            "timeout_s": info.timeout.as_secs_f64(),
            "requests": {
                "attempted": s.ok + s.failed,
                "ok": s.ok,
                "failed": s.failed,
                "ok_per_second": self.per_second(s.ok),
                "missed": s.missed,
            },
            "availability": s.availability(),
            "latency_ms": latency_json(&s.latency),
            "initialize": {
                "sessions_ready": s.sessions_ready,
                "sessions_failed": s.sessions_failed,
                "in_window_ok": s.inits_ok,
                "in_window_failed": s.inits_failed,
                "reinitializations": s.reinitializations,
                "latency_ms": latency_json(&s.init_latency),
            },
            "errors": {
                "total": s.errors_total(),
                "by_kind": s.errors,
            },
            "operations": operations,
            "notifications": s.notifications,
            "server_requests": s.server_requests,
            "reconnects": s.reconnects,
            "bytes_sent": s.bytes_sent,
            "bytes_received": s.bytes_received,
            "generator_cpu_seconds": s.cpu_seconds,
            "generator_cpu_us_per_request": per_request_us(s.cpu_seconds),
            "server": server,
            "chaos": self.chaos.as_ref().map(ChaosReport::to_json),
        })
    }

    pub fn to_text(&self) -> String {
        let s = &self.stats;
        let info = &self.info;
        let mut out = String::new();
        let mode = if info.idle {
            "idle (sessions held, no requests)".to_string()
        } else {
            match info.rate_per_second {
                Some(rate) => format!("open loop at {rate} req/s"),
                None => "closed loop".to_string(),
            }
        };
        let _ = writeln!(
            out,
            "target        {} over {}: {} sessions on {} connections, {} threads in {} process{}",
            info.target,
            info.transport,
            thousands(info.sessions),
            thousands(info.connections),
            info.threads,
            info.procs,
            if info.procs == 1 { "" } else { "es" }
        );
        let _ = writeln!(
            out,
            "run           {mode}, {:.1} s measured after {:.1} s warmup, timeout {:.1} s",
            info.duration.as_secs_f64(),
            info.warmup.as_secs_f64(),
            info.timeout.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "sessions      {} ready, {} failed at setup; initialize {}",
            thousands(s.sessions_ready),
            thousands(s.sessions_failed),
            latency_text(&s.init_latency)
        );
        let _ = writeln!(
            out,
            "requests      {} attempted, {} ok, {} failed: {:.1} ok/s{}",
            thousands(s.ok + s.failed),
            thousands(s.ok),
            thousands(s.failed),
            self.per_second(s.ok),
            if s.missed > 0 {
                format!(
                    "; {} due but never sent (no free connection)",
                    thousands(s.missed)
                )
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            out,
            "availability  {}",
            match s.availability() {
                Some(a) => format!(
                    "{:.3} % ({} of {} requests and initializations)",
                    a * 100.0,
                    thousands(s.ok + s.inits_ok),
                    thousands(s.attempted())
                ),
                None => "n/a (nothing attempted)".to_string(),
            }
        );
        let _ = writeln!(out, "latency (ms)  {}", latency_text(&s.latency));
        let errors = if s.errors.is_empty() {
            "none".to_string()
        } else {
            s.errors
                .iter()
                .map(|(kind, count)| format!("{kind} {}", thousands(*count)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(out, "errors        {errors}");
        let _ = writeln!(
            out,
            "sessions      {} re-initialized, {} reconnects, {} notifications, {} server requests",
            thousands(s.reinitializations),
            thousands(s.reconnects),
            thousands(s.notifications),
            thousands(s.server_requests)
        );
        for (i, (label, weight)) in info.mix.iter().enumerate() {
            let counts = s.per_op.get(i).copied().unwrap_or_default();
            let _ = writeln!(
                out,
                "  {label} (weight {weight}): {} ok, {} failed",
                thousands(counts.ok),
                thousands(counts.failed)
            );
        }
        let requests = s.ok + s.failed;
        let per_request = |seconds: f64| {
            if requests > 0 {
                format!(" ({:.1} µs per request)", seconds * 1e6 / requests as f64)
            } else {
                String::new()
            }
        };
        let server_cpu = self
            .server
            .as_ref()
            .and_then(|server| server.cpu_seconds)
            .map_or("server ?".to_string(), |cpu| {
                format!("server {cpu:.2} s{}", per_request(cpu))
            });
        let _ = writeln!(
            out,
            "cpu           {server_cpu}, generator {:.2} s{} in the measured window",
            s.cpu_seconds,
            per_request(s.cpu_seconds)
        );
        if let Some(server) = &self.server {
            let show = |v: Option<u64>| v.map_or("?".to_string(), mib);
            let _ = write!(
                out,
                "server        pid {}: RSS {} before, {} with sessions open, {} at the end, {} max",
                server.pid,
                show(server.before_bytes),
                show(server.ready_bytes),
                show(server.end_bytes),
                show(server.max_bytes)
            );
            if let Some(per) = server.per_session_bytes(s.sessions_ready) {
                let _ = write!(out, "; {:.1} KiB per session", per / 1024.0);
            }
            out.push('\n');
        }
        if let Some(chaos) = &self.chaos {
            chaos.write_text(&mut out);
        }
        out
    }
}

/// The live line: one second of all workers.
pub fn progress_line(
    second: u64,
    phase: &str,
    tick: &Tick,
    sessions_ready: u64,
    sessions: u64,
) -> String {
    if phase == "setup" {
        return format!(
            "[{second:>4}s] setup   {}/{} sessions ready",
            thousands(sessions_ready),
            thousands(sessions)
        );
    }
    let p99 = if tick.latency.is_empty() {
        "-".to_string()
    } else {
        format!("{:.3} ms", ms(tick.latency.value_at_quantile(0.99)))
    };
    format!(
        "[{second:>4}s] {phase:<7} {} req/s  errors {}  p99 {p99}",
        thousands(tick.ok + tick.failed),
        thousands(tick.failed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::stats::ErrorKind;

    fn sample() -> Report {
        let mut stats = Stats::new(2);
        for us in 1..=1_000u64 {
            stats.record_ok(0, us);
        }
        stats.record_failure(1, ErrorKind::Timeout);
        stats.record_init_ok(2_000, false);
        stats.sessions_ready = 20;
        stats.reinitializations = 2;
        stats.notifications = 5;
        stats.cpu_seconds = 0.25;
        Report {
            info: RunInfo {
                target: "http://127.0.0.1:8080/mcp".into(),
                transport: "http".into(),
                sessions: 20,
                connections: 10,
                threads: 2,
                procs: 1,
                rate_per_second: Some(50.0),
                warmup: Duration::from_secs(1),
                duration: Duration::from_secs(2),
                timeout: Duration::from_secs(10),
                mix: vec![("tools/call:echo".into(), 8), ("ping".into(), 1)],
                idle: false,
            },
            stats,
            server: Some(ServerUsage {
                pid: 42,
                before_bytes: Some(10 << 20),
                ready_bytes: Some((10 << 20) + 20 * 4096),
                end_bytes: Some(11 << 20),
                max_bytes: Some(12 << 20),
                cpu_seconds: Some(0.5),
                cpu_start_seconds: Some(3.0),
            }),
            chaos: None,
        }
    }

    #[test]
    fn json_report_has_every_figure_scripts_read() {
        let json = sample().to_json();
        assert_eq!(json["transport"], "http");
        assert_eq!(json["mode"], "open");
        assert_eq!(json["requests"]["attempted"], 1_001);
        assert_eq!(json["requests"]["ok"], 1_000);
        assert_eq!(json["requests"]["ok_per_second"], 500.0);
        assert_eq!(json["errors"]["total"], 1);
        assert_eq!(json["errors"]["by_kind"]["timeout"], 1);
        assert_eq!(json["latency_ms"]["p50"], 0.5);
        assert_eq!(json["latency_ms"]["p99"], 0.99);
        assert_eq!(json["latency_ms"]["p99_9"], 0.999);
        assert_eq!(json["latency_ms"]["max"], 1.0);
        assert_eq!(json["latency_ms"]["count"], 1_000);
        let availability = json["availability"].as_f64().unwrap();
        assert!((availability - 1_000.0 / 1_001.0).abs() < 1e-9);
        assert_eq!(json["initialize"]["reinitializations"], 2);
        assert_eq!(json["initialize"]["latency_ms"]["p50"], 2.0);
        assert_eq!(json["operations"][1]["op"], "ping");
        assert_eq!(json["operations"][1]["failed"], 1);
        assert_eq!(json["server"]["pid"], 42);
        assert_eq!(json["server"]["rss_per_session_bytes"], 4096.0);
        assert_eq!(json["notifications"], 5);
        assert_eq!(json["server"]["cpu_seconds"], 0.5);
        assert_eq!(json["server"]["cpu_us_per_request"], 0.5e6 / 1_001.0);
        assert_eq!(json["generator_cpu_seconds"], 0.25);
    }

    #[test]
    fn text_report_names_every_figure() {
        let text = sample().to_text();
        for expected in [
            "http://127.0.0.1:8080/mcp over http: 20 sessions on 10 connections, 2 threads in 1 process\n",
            "open loop at 50 req/s, 2.0 s measured after 1.0 s warmup",
            "requests      1,001 attempted, 1,000 ok, 1 failed: 500.0 ok/s\n",
            "availability  99.900 % (1,000 of 1,001 requests and initializations)",
            "latency (ms)  p50 0.500  p90 0.900  p99 0.990  p99.9 0.999  max 1.000",
            "errors        timeout 1",
            "2 re-initialized",
            "tools/call:echo (weight 8): 1,000 ok, 0 failed",
            "ping (weight 1): 0 ok, 1 failed",
            "cpu           server 0.50 s (499.5 µs per request), generator 0.25 s (249.8 µs per request) in the measured window",
            "pid 42: RSS 10.0 MiB before, 10.1 MiB with sessions open, 11.0 MiB at the end, 12.0 MiB max; 4.0 KiB per session",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from\n{text}");
        }
    }

    #[test]
    fn a_chaos_run_reports_inside_outside_and_recovery_per_kind() {
        use crate::chaos::classify::{summarize, Failure, SessionKey};
        use crate::chaos::{ChaosAnswer, Kind};
        let kill = |sent_us: u64, recovery_us: u64| Kill {
            kind: Kind::Pool,
            sent_us,
            answered_us: sent_us + recovery_us,
            answer: Some(ChaosAnswer {
                kind: Some(Kind::Pool),
                shard: 0,
                pool: Some(0),
                pools: 2,
                sessions_affected: 5,
                recovery_us: Some(recovery_us),
                ..ChaosAnswer::default()
            }),
            error: None,
        };
        let kills = vec![kill(1_000, 100), kill(5_000, 300)];
        let in_pool = SessionKey {
            shard: 0,
            high: 2,
            low: 0,
        };
        let elsewhere = SessionKey {
            shard: 1,
            high: 2,
            low: 0,
        };
        let failures = [
            Failure {
                at_us: 1_050,
                session: Some(in_pool),
            },
            Failure {
                at_us: 1_050,
                session: Some(elsewhere),
            },
        ];
        let mut report = sample();
        report.chaos = Some(ChaosReport {
            spec: "pool=1s".into(),
            summary: summarize(&failures, 0, &kills, 1_000),
            kills,
        });
        let json = report.to_json();
        assert_eq!(json["chaos"]["failed_inside"], 1);
        assert_eq!(json["chaos"]["failed_outside"], 1);
        assert_eq!(json["chaos"]["recovery"][0]["kind"], "pool");
        assert_eq!(json["chaos"]["recovery"][0]["injected"], 2);
        assert_eq!(json["chaos"]["recovery"][0]["sessions_affected"], 10);
        assert_eq!(json["chaos"]["recovery"][0]["recovery_ms"]["p50"], 0.1);
        assert_eq!(json["chaos"]["recovery"][0]["recovery_ms"]["max"], 0.3);
        let text = report.to_text();
        for expected in [
            "chaos         pool=1s: 1 failed inside the killed domains, 1 outside",
            "  pool     2 injected, 10 sessions hit; recovery (ms) p50 0.100  p99 0.300  max 0.300",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from\n{text}");
        }
        assert_eq!(sample().to_json()["chaos"], Value::Null);
    }

    #[test]
    fn an_empty_run_reports_no_samples_not_zeros() {
        let mut report = sample();
        report.stats = Stats::new(2);
        report.server = None;
        let json = report.to_json();
        assert_eq!(json["latency_ms"], Value::Null);
        assert_eq!(json["availability"], Value::Null);
        assert_eq!(json["server"], Value::Null);
        let text = report.to_text();
        assert!(text.contains("latency (ms)  no samples"), "{text}");
        assert!(text.contains("n/a (nothing attempted)"), "{text}");
        assert!(text.contains("errors        none"), "{text}");
    }

    #[test]
    fn progress_lines_show_rate_errors_and_p99() {
        let mut tick = Tick::new();
        tick.ok = 12_000;
        tick.failed = 3;
        tick.latency.saturating_record(1_500);
        assert_eq!(
            progress_line(7, "run", &tick, 0, 0),
            "[   7s] run     12,003 req/s  errors 3  p99 1.500 ms"
        );
        assert_eq!(
            progress_line(1, "setup", &tick, 1_500, 15_000),
            "[   1s] setup   1,500/15,000 sessions ready"
        );
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }
}
