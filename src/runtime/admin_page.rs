//! The live page on the admin port: `/` (HTML, JS and CSS built into the
//! binary, nothing fetched from elsewhere) and `/admin/events`, an SSE
//! stream pushing one JSON snapshot every `admin.page_interval_ms`: the tree
//! of `/admin/tree` plus, per shard, sessions, pool sessions, restarts,
//! throughput and latency estimates. A snapshot is gathered exactly as a
//! scrape is (`admin::gather`), so a page costs the shards what a scraper
//! polling at the same interval would.
//!
//! Threads: a stream lives for as long as the page stays open. Holding an
//! admin worker for that would let a few open tabs starve `/metrics` and the
//! health probes, so each stream gets its own thread instead, and at most
//! `admin.page_streams_max` of them exist (one more is answered 503 before
//! any thread starts). The admin threads stay bounded:
//! `admin.workers + admin.page_streams_max`.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde_json::{json, Value};

use crate::config::Config;
use crate::observe::metrics::LATENCY_BUCKETS_NS;

use super::admin::{gather, tree_json, Gathered};
use super::node::NodeCommand;

pub(super) const INDEX_HTML: &str = include_str!("admin_page/index.html");
pub(super) const PAGE_JS: &str = include_str!("admin_page/page.js");
pub(super) const PAGE_CSS: &str = include_str!("admin_page/page.css");

/// The page loads only its own script and style and talks only to its own
/// origin; nothing else may load even if a tree id carried markup.
pub(super) const PAGE_HEADERS: &str = "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'\r\nX-Content-Type-Options: nosniff\r\n";

/// How long the browser waits before reconnecting a dropped stream.
const CLIENT_RETRY_MS: u64 = 3_000;

/// A stream sleeps between pushes in slices this long, so a stopping admin
/// listener is not held up by a long `admin.page_interval_ms`.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// One shard's cumulative request figures, kept between two pushes of a
/// stream to turn counters into a rate and a window's latency.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShardTotals {
    /// Requests that ended, every method and outcome.
    requests: u64,
    /// Cumulative latency bucket counts over every method, one per bound of
    /// [`LATENCY_BUCKETS_NS`].
    buckets: Vec<u64>,
    /// Requests in the latency histogram (the `+Inf` bucket).
    count: u64,
}

/// What a stream remembers between pushes: each shard's totals by index
/// (None for a shard that did not answer).
pub type Window = Vec<Option<ShardTotals>>;

fn totals(gathered: &Gathered, index: usize) -> Option<ShardTotals> {
    let report = gathered.reports.get(index)?.as_ref()?;
    let mut totals = ShardTotals {
        requests: 0,
        buckets: vec![0; LATENCY_BUCKETS_NS.len()],
        count: 0,
    };
    for method in &report.metrics.methods {
        totals.requests += method.outcomes.iter().map(|&(_, n)| n).sum::<u64>();
        for (sum, &n) in totals.buckets.iter_mut().zip(&method.buckets) {
            *sum += n;
        }
        totals.count += method.count;
    }
    Some(totals)
}

/// The figures of the window from `before` to `now`. A shard restarted in
/// between counts from zero again (its counters went down): the window is
/// then everything the new shard counted, as Prometheus reads a reset.
fn delta(now: &ShardTotals, before: Option<&ShardTotals>) -> ShardTotals {
    match before {
        Some(before) if now.requests >= before.requests && now.count >= before.count => {
            ShardTotals {
                requests: now.requests - before.requests,
                buckets: now
                    .buckets
                    .iter()
                    .zip(before.buckets.iter().chain(std::iter::repeat(&0)))
                    .map(|(&n, &b)| n.saturating_sub(b))
                    .collect(),
                count: now.count - before.count,
            }
        }
        _ => now.clone(),
    }
}

/// Estimates quantile `q` (0..=1) in milliseconds from cumulative bucket
/// counts, interpolating linearly inside the bucket the rank falls in (as
/// Prometheus' `histogram_quantile`). A rank past the last bound reports the
/// last bound: the histogram knows nothing finer. None without requests.
pub fn quantile_ms(cumulative: &[u64], count: u64, q: f64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * count as f64).max(1.0);
    let mut below = 0u64;
    let mut lower_ns = 0u64;
    for (&bound_ns, &cumulative) in LATENCY_BUCKETS_NS.iter().zip(cumulative) {
        if cumulative as f64 >= rank {
            let inside = cumulative.saturating_sub(below).max(1) as f64;
            let fraction = ((rank - below as f64) / inside).clamp(0.0, 1.0);
            let ns = lower_ns as f64 + (bound_ns - lower_ns) as f64 * fraction;
            return Some(ns / 1e6);
        }
        below = cumulative;
        lower_ns = bound_ns;
    }
    Some(lower_ns as f64 / 1e6)
}

/// One push: the tree and each shard's figures. `previous` is the window
/// the last push of the same stream left and how long ago it was taken;
/// without it (the first push) there is no rate and the latency covers
/// everything since each shard started. None when the node has stopped.
pub fn snapshot(
    gathered: &Gathered,
    previous: Option<(Duration, &Window)>,
    interval_ms: u64,
) -> Option<(Value, Window)> {
    let status = gathered.status.as_ref()?;
    let tree = tree_json(gathered)?;
    let states: Vec<Value> = tree["children"]
        .as_array()
        .map(|c| c.iter().map(|s| s["status"].clone()).collect())
        .unwrap_or_default();
    let mut window = Vec::with_capacity(status.shards.len());
    let mut shards = Vec::with_capacity(status.shards.len());
    for (index, shard) in status.shards.iter().enumerate() {
        let report = gathered.reports.get(index).and_then(Option::as_ref);
        let now = totals(gathered, index);
        let before = previous.and_then(|(_, w)| w.get(index).and_then(Option::as_ref));
        let (rps, p50, p99) = match &now {
            Some(now) => {
                let window = delta(now, before);
                let rps = match previous {
                    Some((elapsed, _)) if before.is_some() && !elapsed.is_zero() => {
                        Some(window.requests as f64 / elapsed.as_secs_f64())
                    }
                    _ => None,
                };
                (
                    rps,
                    quantile_ms(&window.buckets, window.count, 0.5),
                    quantile_ms(&window.buckets, window.count, 0.99),
                )
            }
            None => (None, None, None),
        };
        shards.push(json!({
            "shard": shard.shard.0,
            "status": states.get(index).cloned().unwrap_or(Value::Null),
            "restarts": shard.restarts,
            "sessions": report.map_or(0, |r| r.sessions),
            "pools": report.map(|r| r.pool_sessions.clone()).unwrap_or_default(),
            "requests": now.as_ref().map_or(0, |t| t.requests),
            "rps": rps,
            "p50_ms": p50,
            "p99_ms": p99,
        }));
        window.push(now);
    }
    let value = json!({
        "interval_ms": interval_ms,
        "draining": status.draining,
        "shards": shards,
        "tree": tree,
    });
    Some((value, window))
}

/// One SSE event: an optional `event:` line, the data one `data:` line per
/// line of it (a bare CR or LF would otherwise end the field early), and the
/// blank line that ends the event.
pub fn sse_frame(event: Option<&str>, data: &str) -> String {
    let mut frame = String::with_capacity(data.len() + 16);
    if let Some(event) = event {
        frame.push_str("event: ");
        frame.push_str(event);
        frame.push('\n');
    }
    for line in data.split(['\n', '\r']) {
        frame.push_str("data: ");
        frame.push_str(line);
        frame.push('\n');
    }
    frame.push('\n');
    frame
}

/// The page streams of one admin listener: how many are open and their
/// threads, joined when the listener stops.
#[derive(Default)]
pub(super) struct PageStreams {
    open: Arc<AtomicUsize>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Gives a stream's slot back when its thread ends, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a stream thread needs.
pub(super) struct StreamContext {
    pub node: Sender<NodeCommand>,
    pub config: Arc<Config>,
    pub stop: Arc<AtomicBool>,
}

impl PageStreams {
    /// Hands `stream` (its request read) to a thread of its own, or answers
    /// 503 when `admin.page_streams_max` streams are open already.
    pub(super) fn open(&self, mut stream: TcpStream, context: StreamContext) {
        let max = context.config.admin.page_streams_max;
        let reserved = self
            .open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if !reserved {
            refuse(
                &mut stream,
                "admin.page_streams_max page streams are open\n",
            );
            return;
        }
        let slot = Slot(self.open.clone());
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        threads.retain(|thread| !thread.is_finished());
        // The stream moves into the thread only if it starts; keep a copy to
        // answer on when it does not.
        let answer = stream.try_clone();
        let spawned = std::thread::Builder::new()
            .name("shardmcp-admin-page".into())
            .spawn(move || {
                let _slot = slot;
                push(stream, &context);
            });
        match spawned {
            Ok(thread) => threads.push(thread),
            Err(error) => {
                tracing::warn!(%error, "cannot start an admin page stream thread");
                if let Ok(mut answer) = answer {
                    refuse(&mut answer, "cannot start a stream thread\n");
                }
            }
        }
    }

    /// Waits for every stream thread; they see the stop flag within
    /// [`STOP_CHECK`] or their current push, which is bounded by
    /// `admin.shard_answer_timeout_ms` and `admin.io_timeout_ms`.
    pub(super) fn join(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

fn refuse(stream: &mut TcpStream, why: &str) {
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nRetry-After: 5\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{why}",
        why.len()
    );
    let _ = stream.write_all(answer.as_bytes());
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// The stream: a snapshot now and then every `admin.page_interval_ms` until
/// the client goes (a write fails or times out after `admin.io_timeout_ms`),
/// the node stops (a last `stopped` event) or the listener stops.
fn push(mut stream: TcpStream, context: &StreamContext) {
    let interval = Duration::from_millis(context.config.admin.page_interval_ms);
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nConnection: close\r\nX-Accel-Buffering: no\r\n\r\nretry: {CLIENT_RETRY_MS}\n\n"
    );
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut previous: Option<(Instant, Window)> = None;
    while !context.stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let gathered = gather(&context.node, &context.config);
        let taken = Instant::now();
        let last = previous
            .as_ref()
            .map(|(at, window)| (taken.duration_since(*at), window));
        let frame = match snapshot(&gathered, last, context.config.admin.page_interval_ms) {
            Some((value, window)) => {
                previous = Some((taken, window));
                sse_frame(None, &value.to_string())
            }
            None => {
                let _ = stream.write_all(sse_frame(Some("stopped"), "{}").as_bytes());
                break;
            }
        };
        if stream.write_all(frame.as_bytes()).is_err() {
            break;
        }
        let next = started + interval;
        while !context.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now >= next {
                break;
            }
            std::thread::sleep((next - now).min(STOP_CHECK));
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_lines_and_end_with_a_blank_line() {
        assert_eq!(sse_frame(None, "{\"a\":1}"), "data: {\"a\":1}\n\n");
        assert_eq!(
            sse_frame(Some("stopped"), "one\ntwo\rthree"),
            "event: stopped\ndata: one\ndata: two\ndata: three\n\n"
        );
        assert_eq!(sse_frame(None, ""), "data: \n\n");
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let n = LATENCY_BUCKETS_NS.len();
        assert_eq!(quantile_ms(&vec![0; n], 0, 0.5), None);
        // Ten requests, all in the first bucket (0..50 µs): p50 is halfway.
        let all_first = vec![10; n];
        assert_eq!(quantile_ms(&all_first, 10, 0.5), Some(0.025));
        assert_eq!(quantile_ms(&all_first, 10, 1.0), Some(0.05));
        // Past the last bound: the last bound.
        let none_bounded = vec![0; n];
        let last = *LATENCY_BUCKETS_NS.last().unwrap() as f64 / 1e6;
        assert_eq!(quantile_ms(&none_bounded, 3, 0.5), Some(last));
        // Half in the first bucket, half in the second (50..100 µs).
        let mut split = vec![4; n];
        split[0] = 2;
        assert_eq!(quantile_ms(&split, 4, 0.5), Some(0.05));
        assert_eq!(quantile_ms(&split, 4, 1.0), Some(0.1));
        let p75 = quantile_ms(&split, 4, 0.75).unwrap();
        assert!((p75 - 0.075).abs() < 1e-9, "{p75}");
    }

    #[test]
    fn deltas_subtract_and_read_a_restart_as_a_reset() {
        let before = ShardTotals {
            requests: 5,
            buckets: vec![1, 4],
            count: 4,
        };
        let now = ShardTotals {
            requests: 8,
            buckets: vec![2, 7],
            count: 7,
        };
        assert_eq!(
            delta(&now, Some(&before)),
            ShardTotals {
                requests: 3,
                buckets: vec![1, 3],
                count: 3
            }
        );
        let restarted = ShardTotals {
            requests: 2,
            buckets: vec![0, 2],
            count: 2,
        };
        assert_eq!(delta(&restarted, Some(&before)), restarted);
        assert_eq!(delta(&now, None), now);
    }
}
