//! What one thread (or one child process) measured, and how the pieces are
//! merged into one report. Latencies live in HDR histograms (microseconds,
//! 3 significant digits); a child process hands its histograms to the parent
//! in hdrhistogram's V2 format, hex-encoded inside a JSON line.

use crate::chaos::classify::{Failure, SessionKey};
use std::collections::BTreeMap;
use std::fmt;

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency a histogram records, in microseconds (one hour); longer
/// ones are recorded as this.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant digits the histograms keep (0.1 % resolution).
pub const LATENCY_SIGFIG: u8 = 3;
/// Largest serialized histogram accepted from a child (hex text, bytes).
pub const HISTOGRAM_HEX_BYTES_MAX: usize = 8 << 20;

pub fn new_histogram() -> Histogram<u64> {
    // Fixed, valid bounds: this cannot fail.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGFIG)
        .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"))
}

/// Why one request (or one initialization) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// The TCP connection could not be opened.
    Connect,
    /// No answer within `--timeout`.
    Timeout,
    /// The server closed the connection before answering.
    Closed,
    /// Another socket error (reset, broken pipe, ...).
    Io,
    /// An HTTP status other than 200/202 (404 on a session is `SessionNotFound`).
    HttpStatus(u16),
    /// The server does not know the session any more (HTTP 404): it is
    /// initialized again.
    SessionNotFound,
    /// The answer could not be parsed (HTTP, SSE or JSON-RPC).
    BadResponse,
    /// An SSE stream ended without the response to our request.
    NoResponse,
    /// A JSON-RPC error response, by code.
    Rpc(i64),
    /// A `tools/call` result with `isError: true`.
    ToolError,
}

impl ErrorKind {
    pub fn label(&self) -> String {
        match self {
            ErrorKind::Connect => "connect".into(),
            ErrorKind::Timeout => "timeout".into(),
            ErrorKind::Closed => "closed".into(),
            ErrorKind::Io => "io".into(),
            ErrorKind::HttpStatus(status) => format!("http_{status}"),
            ErrorKind::SessionNotFound => "session_not_found".into(),
            ErrorKind::BadResponse => "bad_response".into(),
            ErrorKind::NoResponse => "no_response".into(),
            ErrorKind::Rpc(code) => format!("rpc_{code}"),
            ErrorKind::ToolError => "tool_error".into(),
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// Successes and failures of one mix operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCounts {
    pub ok: u64,
    pub failed: u64,
}

/// Everything one worker measured in the measured window (plus setup).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Latency of successful mix requests, µs, from the intended send time.
    #[serde(with = "hex_histogram")]
    pub latency: Histogram<u64>,
    /// Latency of successful initializations (setup and re-initialization), µs.
    #[serde(with = "hex_histogram")]
    pub init_latency: Histogram<u64>,
    /// Mix requests answered with a result.
    pub ok: u64,
    /// Mix requests that failed (any `ErrorKind`).
    pub failed: u64,
    /// Initializations attempted in the measured window (re-initializations,
    /// reconnected TCP sessions), and how many failed.
    pub inits_ok: u64,
    pub inits_failed: u64,
    /// Failures by kind; initialization failures are prefixed `init:`.
    pub errors: BTreeMap<String, u64>,
    /// Per mix entry, in `--mix` order.
    pub per_op: Vec<OpCounts>,
    /// Notifications the server sent on request streams.
    pub notifications: u64,
    /// Requests the server sent to the client (not answered by the generator).
    pub server_requests: u64,
    /// Sessions initialized again after the server forgot them (HTTP 404) or
    /// after their TCP connection was lost.
    pub reinitializations: u64,
    /// Connections opened again after an error.
    pub reconnects: u64,
    /// Open loop: requests due in the window that no connection could send.
    pub missed: u64,
    /// Sessions initialized during setup, and sessions that could not be.
    pub sessions_ready: u64,
    pub sessions_failed: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// CPU time the generator's threads used in the measured window, seconds.
    pub cpu_seconds: f64,
    /// Each failure in the measured window, when and for which session
    /// (for `--chaos`: inside or outside the killed domain); at most
    /// `FAILURES_RECORDED_MAX` per worker, the rest only counted.
    #[serde(default)]
    pub failures: Vec<Failure>,
    #[serde(default)]
    pub failures_unrecorded: u64,
}

/// Failures one worker records one by one (24 bytes each); past it they
/// are only counted, so a dead server cannot grow the generator's memory.
pub const FAILURES_RECORDED_MAX: usize = 100_000;

impl Stats {
    pub fn new(operations: usize) -> Stats {
        Stats {
            latency: new_histogram(),
            init_latency: new_histogram(),
            ok: 0,
            failed: 0,
            inits_ok: 0,
            inits_failed: 0,
            errors: BTreeMap::new(),
            per_op: vec![OpCounts::default(); operations],
            notifications: 0,
            server_requests: 0,
            reinitializations: 0,
            reconnects: 0,
            missed: 0,
            sessions_ready: 0,
            sessions_failed: 0,
            bytes_sent: 0,
            bytes_received: 0,
            cpu_seconds: 0.0,
            failures: Vec::new(),
            failures_unrecorded: 0,
        }
    }

    /// Notes one failure in the measured window (`session`: its id, when
    /// it had one).
    pub fn record_failure_at(&mut self, session: Option<&str>) {
        if self.failures.len() >= FAILURES_RECORDED_MAX {
            self.failures_unrecorded += 1;
            return;
        }
        self.failures.push(Failure {
            at_us: crate::chaos::schedule::unix_us(),
            session: session.and_then(SessionKey::parse),
        });
    }

    pub fn record_ok(&mut self, op: usize, latency_us: u64) {
        self.ok += 1;
        self.latency.saturating_record(latency_us.max(1));
        if let Some(counts) = self.per_op.get_mut(op) {
            counts.ok += 1;
        }
    }

    pub fn record_failure(&mut self, op: usize, kind: ErrorKind) {
        self.failed += 1;
        *self.errors.entry(kind.label()).or_insert(0) += 1;
        if let Some(counts) = self.per_op.get_mut(op) {
            counts.failed += 1;
        }
    }

    pub fn record_init_ok(&mut self, latency_us: u64, in_window: bool) {
        self.init_latency.saturating_record(latency_us.max(1));
        if in_window {
            self.inits_ok += 1;
        }
    }

    pub fn record_init_failure(&mut self, kind: ErrorKind, in_window: bool) {
        if in_window {
            self.inits_failed += 1;
            *self
                .errors
                .entry(format!("init:{}", kind.label()))
                .or_insert(0) += 1;
        }
    }

    /// Requests and initializations attempted in the window.
    pub fn attempted(&self) -> u64 {
        self.ok + self.failed + self.inits_ok + self.inits_failed
    }

    /// Successful / attempted, in [0, 1]; None when nothing was attempted.
    pub fn availability(&self) -> Option<f64> {
        let attempted = self.attempted();
        (attempted > 0).then(|| (self.ok + self.inits_ok) as f64 / attempted as f64)
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Stats) -> Result<(), StatsError> {
        self.latency
            .add(&other.latency)
            .map_err(|e| StatsError::Histogram(format!("{e:?}")))?;
        self.init_latency
            .add(&other.init_latency)
            .map_err(|e| StatsError::Histogram(format!("{e:?}")))?;
        self.ok += other.ok;
        self.failed += other.failed;
        self.inits_ok += other.inits_ok;
        self.inits_failed += other.inits_failed;
        for (kind, count) in &other.errors {
            *self.errors.entry(kind.clone()).or_insert(0) += count;
        }
        if self.per_op.len() < other.per_op.len() {
            self.per_op.resize(other.per_op.len(), OpCounts::default());
        }
        for (mine, theirs) in self.per_op.iter_mut().zip(&other.per_op) {
            mine.ok += theirs.ok;
            mine.failed += theirs.failed;
        }
        self.notifications += other.notifications;
        self.server_requests += other.server_requests;
        self.reinitializations += other.reinitializations;
        self.reconnects += other.reconnects;
        self.missed += other.missed;
        self.sessions_ready += other.sessions_ready;
        self.sessions_failed += other.sessions_failed;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.cpu_seconds += other.cpu_seconds;
        self.failures.extend_from_slice(&other.failures);
        self.failures_unrecorded += other.failures_unrecorded;
        Ok(())
    }
}

/// One second of one worker, for the live progress line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    pub ok: u64,
    pub failed: u64,
    /// Sessions initialized during setup in this second.
    pub sessions_ready: u64,
    #[serde(with = "hex_histogram")]
    pub latency: Histogram<u64>,
}

impl Tick {
    pub fn new() -> Tick {
        Tick {
            ok: 0,
            failed: 0,
            sessions_ready: 0,
            latency: new_histogram(),
        }
    }

    pub fn merge(&mut self, other: &Tick) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.sessions_ready += other.sessions_ready;
        // Same fixed bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&other.latency);
    }

    /// Hands back what was counted and starts over.
    pub fn take(&mut self) -> Tick {
        let taken = self.clone();
        self.ok = 0;
        self.failed = 0;
        self.sessions_ready = 0;
        self.latency.reset();
        taken
    }
}

impl Default for Tick {
    fn default() -> Self {
        Tick::new()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("cannot merge histograms: {0}")]
    Histogram(String),
    #[error("bad serialized histogram: {0}")]
    Serialized(String),
}

/// Histograms as hex text of hdrhistogram's V2 serialization.
mod hex_histogram {
    use super::*;

    pub fn serialize<S: serde::Serializer>(
        histogram: &Histogram<u64>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&to_hex(histogram).map_err(serde::ser::Error::custom)?)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Histogram<u64>, D::Error> {
        let text = String::deserialize(deserializer)?;
        from_hex(&text).map_err(serde::de::Error::custom)
    }
}

pub fn to_hex(histogram: &Histogram<u64>) -> Result<String, StatsError> {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(histogram, &mut bytes)
        .map_err(|e| StatsError::Serialized(format!("{e:?}")))?;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(HEX[usize::from(byte >> 4)]));
        text.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    Ok(text)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

pub fn from_hex(text: &str) -> Result<Histogram<u64>, StatsError> {
    if text.len() > HISTOGRAM_HEX_BYTES_MAX || !text.len().is_multiple_of(2) {
        return Err(StatsError::Serialized(format!(
            "{} hex characters (even, at most {HISTOGRAM_HEX_BYTES_MAX})",
            text.len()
        )));
    }
    let digit = |c: u8| -> Result<u8, StatsError> {
        (c as char)
            .to_digit(16)
            .map(|d| d as u8)
            .ok_or_else(|| StatsError::Serialized(format!("not hex: {:?}", c as char)))
    };
    let bytes = text
        .as_bytes()
        .chunks(2)
        .map(|pair| Ok(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect::<Result<Vec<u8>, StatsError>>()?;
    let histogram: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| StatsError::Serialized(format!("{e:?}")))?;
    // Histograms must share our bounds to merge.
    let mut ours = new_histogram();
    ours.add(&histogram)
        .map_err(|e| StatsError::Serialized(format!("{e:?}")))?;
    Ok(ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_histograms_give_the_percentiles_of_all_samples() {
        let mut a = Stats::new(2);
        let mut b = Stats::new(2);
        // 1..=1000 µs split between two workers, odd and even.
        for us in 1..=1_000u64 {
            if us % 2 == 0 {
                a.record_ok(0, us);
            } else {
                b.record_ok(1, us);
            }
        }
        b.record_failure(1, ErrorKind::Timeout);
        b.record_failure(0, ErrorKind::HttpStatus(503));
        a.record_failure(0, ErrorKind::Timeout);
        let mut total = Stats::new(2);
        total.merge(&a).unwrap();
        total.merge(&b).unwrap();
        assert_eq!(total.latency.len(), 1_000);
        assert_eq!(total.latency.value_at_quantile(0.5), 500);
        assert_eq!(total.latency.value_at_quantile(0.9), 900);
        assert_eq!(total.latency.value_at_quantile(0.99), 990);
        assert_eq!(total.latency.max(), 1_000);
        assert_eq!((total.ok, total.failed), (1_000, 3));
        assert_eq!(total.errors.get("timeout"), Some(&2));
        assert_eq!(total.errors.get("http_503"), Some(&1));
        assert_eq!(
            total.per_op,
            [
                OpCounts { ok: 500, failed: 2 },
                OpCounts { ok: 500, failed: 1 }
            ]
        );
        let availability = total.availability().unwrap();
        assert!((availability - 1_000.0 / 1_003.0).abs() < 1e-12);
    }

    #[test]
    fn large_latencies_keep_three_significant_digits_and_saturate_at_the_bound() {
        let mut stats = Stats::new(1);
        stats.record_ok(0, 12_345_678);
        stats.record_ok(0, u64::MAX);
        let p50 = stats.latency.value_at_quantile(0.5);
        assert!(
            (12_340_000..=12_360_000).contains(&p50),
            "{p50} is 12,345,678 within 0.1 %"
        );
        assert!(stats.latency.max() >= LATENCY_US_MAX);
        assert!(stats.latency.max() <= LATENCY_US_MAX + LATENCY_US_MAX / 1_000);
    }

    #[test]
    fn stats_survive_the_child_process_wire_format() {
        let mut stats = Stats::new(3);
        for us in [5, 50, 500, 5_000, 50_000] {
            stats.record_ok(2, us);
        }
        stats.record_init_ok(1_200, true);
        stats.record_init_failure(ErrorKind::HttpStatus(503), true);
        stats.record_failure(1, ErrorKind::Rpc(-32602));
        stats.reinitializations = 4;
        stats.missed = 9;
        let line = serde_json::to_string(&stats).unwrap();
        assert!(!line.contains('\n'));
        let back: Stats = serde_json::from_str(&line).unwrap();
        assert_eq!(back, stats);
        assert_eq!(back.errors.get("init:http_503"), Some(&1));
        assert_eq!(back.errors.get("rpc_-32602"), Some(&1));
        assert_eq!(back.availability(), Some(6.0 / 8.0));
    }

    #[test]
    fn bad_serialized_histograms_are_errors_not_panics() {
        assert!(from_hex("abc").is_err());
        assert!(from_hex("zz").is_err());
        assert!(from_hex("00112233").is_err());
        assert!(serde_json::from_str::<Tick>(
            r#"{"ok":1,"failed":0,"sessions_ready":0,"latency":"1c"}"#
        )
        .is_err());
    }

    #[test]
    fn a_tick_resets_when_taken() {
        let mut tick = Tick::new();
        tick.ok = 3;
        tick.latency.saturating_record(10);
        let taken = tick.take();
        assert_eq!((taken.ok, taken.latency.len()), (3, 1));
        assert_eq!((tick.ok, tick.latency.len()), (0, 0));
        let mut sum = Tick::new();
        sum.merge(&taken);
        sum.merge(&taken);
        assert_eq!((sum.ok, sum.latency.len()), (6, 2));
    }
}
