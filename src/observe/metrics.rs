//! What one shard counts. The figures live in a thread-local: a shard is one
//! thread, so a request records with plain adds (no atomics, no locks), and
//! the node gathers a [`snapshot`] through the shard's query path when
//! someone scrapes `/metrics`. A shard the node restarts runs on a new
//! thread and starts from zero, as a restarted process does; Prometheus
//! treats that as a counter reset.
//!
//! Every label set is bounded: methods outside [`METHODS`] are counted as
//! `other` (a client must not be able to grow the series), and transports
//! are names from code, at most [`TRANSPORTS_MAX`].

use std::cell::RefCell;
use std::time::Duration;

use serde::Serialize;

/// The methods counted under their own name; anything else is `other`.
pub const METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "tasks/get",
    "tasks/result",
    "tasks/list",
    "tasks/cancel",
    "server/discover",
    "subscriptions/listen",
    OTHER_METHOD,
];

const OTHER_METHOD: &str = "other";

/// Upper bounds of the request latency buckets, in nanoseconds (50 µs to
/// 30 s; the request timeout defaults to 30 s). `+Inf` follows implicitly.
pub const LATENCY_BUCKETS_NS: &[u64] = &[
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// Upper bounds of the restart-duration buckets, in nanoseconds (death
/// noticed to the new child's first poll: 1 µs to 10 s).
pub const RESTART_BUCKETS_NS: &[u64] = &[
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
    10_000_000_000,
];

/// Distinct transports counted by name; more would be a programming error,
/// and they are folded into the last slot rather than grow without bound.
pub const TRANSPORTS_MAX: usize = 16;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered with a result.
    Ok,
    /// Answered with a JSON-RPC error (a bad request, a failing handler's
    /// protocol error, an unknown method...).
    Error,
    /// Cancelled by the client (or its session ended): no answer sent.
    Cancelled,
    /// Ran past `limits.request_timeout_ms`.
    Timeout,
    /// The handler panicked; answered with -32603.
    Panic,
    /// Refused before it ran: its id was in use, or too many in flight.
    Refused,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::Error,
        Outcome::Cancelled,
        Outcome::Timeout,
        Outcome::Panic,
        Outcome::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Cancelled => "cancelled",
            Outcome::Timeout => "timeout",
            Outcome::Panic => "panic",
            Outcome::Refused => "refused",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Default)]
struct MethodStats {
    outcomes: [u64; Outcome::ALL.len()],
    /// Per bucket (not cumulative); the last slot is past the last bound.
    buckets: [u64; LATENCY_BUCKETS_NS.len() + 1],
    sum_ns: u64,
    count: u64,
}

#[derive(Clone, Default)]
struct TransportStats {
    transport: &'static str,
    sessions_open: u64,
    sessions_opened: u64,
    connections_open: u64,
    connections_accepted: u64,
}

struct ShardMetrics {
    methods: RefCell<Vec<MethodStats>>,
    transports: RefCell<Vec<TransportStats>>,
    /// Requests the authorization gate refused, one slot per
    /// [`AUTH_REFUSALS`] entry.
    auth_refusals: RefCell<[u64; AUTH_REFUSALS.len()]>,
    protect: RefCell<ProtectSnapshot>,
}

/// Authorization refusals counted, as (HTTP status, RFC 6750 error); a
/// request with no token at all counts as `missing`.
pub const AUTH_REFUSALS: [(&str, &str); 4] = [
    ("401", "missing"),
    ("401", "invalid_token"),
    ("400", "invalid_request"),
    ("403", "insufficient_scope"),
];

thread_local! {
    static METRICS: ShardMetrics = ShardMetrics {
        methods: RefCell::new(vec![MethodStats::default(); METHODS.len()]),
        transports: RefCell::new(Vec::new()),
        auth_refusals: RefCell::new([0; AUTH_REFUSALS.len()]),
        protect: RefCell::new(ProtectSnapshot::default()),
    };
}

/// Why overload protection refused something (`src/protect`), the
/// `reason` label of `shardmcp_shed_total`.
pub const SHED_REASONS: &[&str] = &[
    "session_rate",
    "address_rate",
    "connections",
    "in_flight",
    "memory",
    "breaker",
];

/// What overload protection did on a shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProtectSnapshot {
    /// Refusals, one count per entry of [`SHED_REASONS`].
    pub shed: [u64; 6],
    /// Times a tool's circuit breaker opened.
    pub breaker_opens: u64,
    /// Breakers open (or half-open) at the last check.
    pub breakers_open: u64,
}

/// Counts one refusal; `reason` is one of [`SHED_REASONS`] (anything else
/// is counted under the last).
pub fn record_shed(reason: &str) {
    let index = SHED_REASONS
        .iter()
        .position(|&known| known == reason)
        .unwrap_or(SHED_REASONS.len() - 1);
    let _ = METRICS.try_with(|metrics| metrics.protect.borrow_mut().shed[index] += 1);
}

pub fn record_breaker_opened() {
    let _ = METRICS.try_with(|metrics| metrics.protect.borrow_mut().breaker_opens += 1);
}

pub fn set_breakers_open(open: u64) {
    let _ = METRICS.try_with(|metrics| metrics.protect.borrow_mut().breakers_open = open);
}

/// Counts a request the authorization gate refused, by its error (one of
/// [`AUTH_REFUSALS`]; anything else is a programming error and is dropped).
pub fn record_auth_refusal(error: &str) {
    if let Some(slot) = AUTH_REFUSALS.iter().position(|(_, known)| *known == error) {
        let _ = METRICS.try_with(|metrics| metrics.auth_refusals.borrow_mut()[slot] += 1);
    }
}

fn method_index(method: &str) -> usize {
    METHODS
        .iter()
        .position(|&known| known == method)
        .unwrap_or(METHODS.len() - 1)
}

fn bucket_index(elapsed_ns: u64) -> usize {
    LATENCY_BUCKETS_NS.partition_point(|&bound| bound < elapsed_ns)
}

/// Counts one request: its method, how it ended and how long it took.
/// Requests that were refused before running count no latency.
pub fn record_request(method: &str, outcome: Outcome, elapsed: Duration) {
    let index = method_index(method);
    let elapsed_ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    // try_with: a session torn down while the thread exits records nothing.
    let _ = METRICS.try_with(|metrics| {
        let mut methods = metrics.methods.borrow_mut();
        let stats = &mut methods[index];
        stats.outcomes[outcome.index()] += 1;
        if outcome != Outcome::Refused {
            stats.buckets[bucket_index(elapsed_ns)] += 1;
            stats.sum_ns = stats.sum_ns.saturating_add(elapsed_ns);
            stats.count += 1;
        }
    });
}

fn with_transport(transport: &'static str, change: impl FnOnce(&mut TransportStats)) {
    let _ = METRICS.try_with(|metrics| {
        let mut transports = metrics.transports.borrow_mut();
        let slot = match transports.iter().position(|t| t.transport == transport) {
            Some(slot) => slot,
            None if transports.len() < TRANSPORTS_MAX => {
                transports.push(TransportStats {
                    transport,
                    ..TransportStats::default()
                });
                transports.len() - 1
            }
            None => transports.len() - 1,
        };
        change(&mut transports[slot]);
    });
}

/// Makes a transport's series exist (at zero) before its first connection,
/// so rates work from the start.
pub fn declare_transport(transport: &'static str) {
    with_transport(transport, |_| {});
}

pub fn record_session_opened(transport: &'static str) {
    with_transport(transport, |t| {
        t.sessions_open += 1;
        t.sessions_opened += 1;
    });
}

pub fn record_session_closed(transport: &'static str) {
    with_transport(transport, |t| {
        t.sessions_open = t.sessions_open.saturating_sub(1)
    });
}

/// Counts a connection open until the guard is dropped, however the task
/// serving it ends.
pub fn connection_opened(transport: &'static str) -> ConnectionGuard {
    record_connection_opened(transport);
    ConnectionGuard { transport }
}

pub struct ConnectionGuard {
    transport: &'static str,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        record_connection_closed(self.transport);
    }
}

pub fn record_connection_opened(transport: &'static str) {
    with_transport(transport, |t| {
        t.connections_open += 1;
        t.connections_accepted += 1;
    });
}

pub fn record_connection_closed(transport: &'static str) {
    with_transport(transport, |t| {
        t.connections_open = t.connections_open.saturating_sub(1)
    });
}

/// One method's figures in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MethodSnapshot {
    pub method: &'static str,
    /// Every outcome with its count, zeros included.
    pub outcomes: Vec<(&'static str, u64)>,
    /// Cumulative counts, one per bound of [`LATENCY_BUCKETS_NS`].
    pub buckets: Vec<u64>,
    pub sum_seconds: f64,
    pub count: u64,
}

/// One transport's figures in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransportSnapshot {
    pub transport: &'static str,
    pub sessions_open: u64,
    pub sessions_opened: u64,
    pub connections_open: u64,
    pub connections_accepted: u64,
}

/// A copy of this shard's figures, to send to the node.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    /// Methods that have been called at least once.
    pub methods: Vec<MethodSnapshot>,
    pub transports: Vec<TransportSnapshot>,
    /// Authorization refusals as (status, error, count), zeros included
    /// once a shard has counted anything (empty from `Default`).
    pub auth_refusals: Vec<(&'static str, &'static str, u64)>,
    pub protect: ProtectSnapshot,
}

/// This shard's figures now.
pub fn snapshot() -> MetricsSnapshot {
    METRICS
        .try_with(|metrics| {
            let methods = metrics
                .methods
                .borrow()
                .iter()
                .enumerate()
                .filter(|(_, stats)| stats.outcomes.iter().any(|&n| n > 0))
                .map(|(index, stats)| {
                    let mut running = 0;
                    let buckets = stats.buckets[..LATENCY_BUCKETS_NS.len()]
                        .iter()
                        .map(|&n| {
                            running += n;
                            running
                        })
                        .collect();
                    MethodSnapshot {
                        method: METHODS[index],
                        outcomes: Outcome::ALL
                            .iter()
                            .map(|o| (o.as_str(), stats.outcomes[o.index()]))
                            .collect(),
                        buckets,
                        sum_seconds: stats.sum_ns as f64 / 1e9,
                        count: stats.count,
                    }
                })
                .collect();
            let transports = metrics
                .transports
                .borrow()
                .iter()
                .map(|t| TransportSnapshot {
                    transport: t.transport,
                    sessions_open: t.sessions_open,
                    sessions_opened: t.sessions_opened,
                    connections_open: t.connections_open,
                    connections_accepted: t.connections_accepted,
                })
                .collect();
            let refused = metrics.auth_refusals.borrow();
            let auth_refusals = AUTH_REFUSALS
                .iter()
                .zip(refused.iter())
                .map(|(&(status, error), &count)| (status, error, count))
                .collect();
            MetricsSnapshot {
                methods,
                transports,
                auth_refusals,
                protect: metrics.protect.borrow().clone(),
            }
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each test runs on its own thread, so each sees fresh figures.

    #[test]
    fn requests_are_counted_by_method_and_outcome_with_cumulative_buckets() {
        record_request("tools/call", Outcome::Ok, Duration::from_micros(40));
        record_request("tools/call", Outcome::Ok, Duration::from_millis(3));
        record_request("tools/call", Outcome::Error, Duration::from_secs(60));
        record_request("ping", Outcome::Refused, Duration::from_secs(1));
        let snap = snapshot();
        assert_eq!(snap.methods.len(), 2);
        let ping = snap.methods.iter().find(|m| m.method == "ping").unwrap();
        assert_eq!(ping.count, 0, "refusals record no latency");
        assert!(ping.outcomes.contains(&("refused", 1)));
        let call = snap
            .methods
            .iter()
            .find(|m| m.method == "tools/call")
            .unwrap();
        assert_eq!(call.count, 3);
        assert!(call.outcomes.contains(&("ok", 2)));
        assert!(call.outcomes.contains(&("error", 1)));
        assert_eq!(call.outcomes.len(), Outcome::ALL.len());
        assert_eq!(call.buckets.len(), LATENCY_BUCKETS_NS.len());
        assert_eq!(call.buckets[0], 1, "40 µs is in the 50 µs bucket");
        let five_ms = LATENCY_BUCKETS_NS
            .iter()
            .position(|&b| b == 5_000_000)
            .unwrap();
        assert_eq!(call.buckets[five_ms], 2);
        assert_eq!(*call.buckets.last().unwrap(), 2, "60 s is past every bound");
        assert!((call.sum_seconds - 60.00304).abs() < 1e-9);
    }

    #[test]
    fn unknown_methods_share_one_label() {
        for i in 0..100 {
            record_request(&format!("made/up/{i}"), Outcome::Error, Duration::ZERO);
        }
        let snap = snapshot();
        assert_eq!(snap.methods.len(), 1);
        assert_eq!(snap.methods[0].method, "other");
        assert_eq!(snap.methods[0].count, 100);
    }

    #[test]
    fn auth_refusals_are_counted_by_error() {
        record_auth_refusal("invalid_token");
        record_auth_refusal("invalid_token");
        record_auth_refusal("insufficient_scope");
        record_auth_refusal("made-up");
        let snap = snapshot();
        assert_eq!(snap.auth_refusals.len(), AUTH_REFUSALS.len());
        assert!(snap.auth_refusals.contains(&("401", "invalid_token", 2)));
        assert!(snap
            .auth_refusals
            .contains(&("403", "insufficient_scope", 1)));
        assert!(snap.auth_refusals.contains(&("401", "missing", 0)));
    }

    #[test]
    fn bucket_bounds_are_inclusive() {
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(50_000), 0);
        assert_eq!(bucket_index(50_001), 1);
        assert_eq!(bucket_index(u64::MAX), LATENCY_BUCKETS_NS.len());
    }

    #[test]
    fn refusals_are_counted_by_reason() {
        record_shed("session_rate");
        record_shed("session_rate");
        record_shed("memory");
        record_shed("made up");
        record_breaker_opened();
        set_breakers_open(1);
        let protect = snapshot().protect;
        assert_eq!(protect.shed, [2, 0, 0, 0, 1, 1]);
        assert_eq!((protect.breaker_opens, protect.breakers_open), (1, 1));
    }

    #[test]
    fn sessions_and_connections_by_transport() {
        record_connection_opened("tcp");
        record_session_opened("tcp");
        let kept = connection_opened("http");
        drop(connection_opened("http"));
        record_session_closed("tcp");
        record_session_closed("tcp"); // never below zero
        let snap = snapshot();
        let tcp = snap
            .transports
            .iter()
            .find(|t| t.transport == "tcp")
            .unwrap();
        assert_eq!((tcp.sessions_open, tcp.sessions_opened), (0, 1));
        assert_eq!((tcp.connections_open, tcp.connections_accepted), (1, 1));
        let http = snap
            .transports
            .iter()
            .find(|t| t.transport == "http")
            .unwrap();
        assert_eq!((http.connections_open, http.connections_accepted), (1, 2));
        drop(kept);
    }
}
