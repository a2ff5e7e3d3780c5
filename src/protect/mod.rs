//! Overload protection, shard-local: what a shard refuses so that what it
//! accepts is served well.
//!
//! - [`bucket`]: token buckets per session (on the shard that owns it) and
//!   per client address (per shard) → HTTP 429 with `Retry-After`, or the
//!   JSON-RPC error [`RATE_LIMITED`] on TCP, WebSocket and stdio.
//! - connections: one cap per shard over all its listeners, the smaller of
//!   `limits.connections_per_shard_max` and `protect.connections_max`
//!   divided over the shards; past it a connection is answered 503 (HTTP)
//!   or [`OVERLOADED`] (TCP) and closed.
//! - requests in flight on a shard (HTTP POSTs) past
//!   `protect.requests_in_flight_per_shard_max` → 503 with `Retry-After`:
//!   this is what sheds load offered past capacity.
//! - a memory guard: while the process RSS is above
//!   `protect.memory_guard_bytes`, new sessions are refused (503).
//! - [`breaker`]: a circuit breaker per tool per shard.
//!
//! The shard installs its [`Protect`] in a thread-local (a shard is one
//! thread); the transports and the session actor reach it with
//! [`current`]. Nothing here takes a lock or an atomic.

pub mod breaker;
pub mod bucket;

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;

use crate::config::Config;
use crate::observe;
use crate::protocol::jsonrpc::{
    decode, encode_batch, encode_error, Id, Incoming, Message, RpcError,
};
use crate::registry::SessionId;
use crate::sync::Event;
use crate::time::SharedClock;

use breaker::{BreakerCall, Breakers};
use bucket::{retry_after_secs, Buckets, Rate};

/// JSON-RPC error (implementation-defined range): a rate limit refused the
/// message; `data.retryAfterMs` says when to try again.
pub const RATE_LIMITED: i64 = -32029;
/// JSON-RPC error: the server is over a limit (connections, requests in
/// flight, memory) and refused the message; `data.retryAfterMs` as above.
pub const OVERLOADED: i64 = -32030;
/// JSON-RPC error: the tool's circuit breaker is open; the handler did not
/// run. `data.tool` names it, `data.retryAfterMs` says when it may.
pub const CIRCUIT_OPEN: i64 = -32031;

/// Why something was refused (the `reason` label of `shardmcp_shed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    SessionRate,
    AddressRate,
    Connections,
    InFlight,
    Memory,
    Breaker,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SessionRate => "session_rate",
            Reason::AddressRate => "address_rate",
            Reason::Connections => "connections",
            Reason::InFlight => "in_flight",
            Reason::Memory => "memory",
            Reason::Breaker => "breaker",
        }
    }

    /// The HTTP status a refusal for this reason gets.
    pub fn status(self) -> &'static str {
        match self {
            Reason::SessionRate | Reason::AddressRate => "429 Too Many Requests",
            _ => "503 Service Unavailable",
        }
    }

    pub fn code(self) -> i64 {
        match self {
            Reason::SessionRate | Reason::AddressRate => RATE_LIMITED,
            Reason::Breaker => CIRCUIT_OPEN,
            _ => OVERLOADED,
        }
    }
}

/// A refusal: why, and when to try again. `Send`, so an owning shard's
/// refusal crosses the mesh to the shard holding the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shed {
    pub reason: Reason,
    pub retry_after: Duration,
    pub message: String,
}

impl Shed {
    fn new(reason: Reason, retry_after: Duration, message: String) -> Shed {
        observe::record_shed(reason.as_str());
        Shed {
            reason,
            retry_after,
            message,
        }
    }

    /// Whole seconds for `Retry-After`.
    pub fn retry_after_secs(&self) -> u64 {
        retry_after_secs(self.retry_after)
    }

    pub fn rpc_error(&self) -> RpcError {
        let retry_ms = u64::try_from(self.retry_after.as_millis()).unwrap_or(u64::MAX);
        RpcError::new(self.reason.code(), self.message.clone())
            .with_data(json!({"reason": self.reason.as_str(), "retryAfterMs": retry_ms}))
    }

    /// The answer to `message` (a JSON-RPC message or batch as received):
    /// this error for each request in it; `None` when it holds no request
    /// (notifications are dropped, there is no one to tell).
    pub fn answer_to(&self, message: &[u8], bytes_max: usize) -> Option<Bytes> {
        let error = self.rpc_error();
        match decode(message, bytes_max) {
            Ok(Incoming::Single(Message::Request { id, .. })) => {
                Some(encode_error(Some(&id), &error))
            }
            Ok(Incoming::Single(_)) => None,
            Ok(Incoming::Batch(entries)) => {
                let replies: Vec<Bytes> = entries
                    .iter()
                    .flatten()
                    .filter_map(|entry| match entry {
                        Message::Request { id, .. } => Some(encode_error(Some(id), &error)),
                        _ => None,
                    })
                    .collect();
                (!replies.is_empty()).then(|| encode_batch(&replies))
            }
            Err(_) => Some(encode_error(None, &error)),
        }
    }

    /// An HTTP body for the refusal: the JSON-RPC error, for `id` if known.
    pub fn http_body(&self, id: Option<&Id>) -> Bytes {
        encode_error(id, &self.rpc_error())
    }
}

/// One shard's protection state.
pub struct Protect {
    clock: SharedClock,
    sessions: Buckets<SessionId>,
    addresses: Buckets<IpAddr>,
    breakers: Rc<Breakers>,
    memory_guard_bytes: u64,
    memory_over: Cell<bool>,
    in_flight: Cell<usize>,
    in_flight_max: usize,
    refusals: Cell<usize>,
    refusals_max: usize,
    retry_after: Duration,
    sweep_interval: Duration,
    http_head_bytes_max: usize,
}

impl Protect {
    pub fn new(config: &Config, clock: SharedClock) -> Rc<Protect> {
        let p = &config.protect;
        let protect = Rc::new(Protect {
            sessions: Buckets::new(
                Rate::new(p.session_rate_per_s, p.session_burst),
                p.buckets_max,
            ),
            addresses: Buckets::new(
                Rate::new(p.address_rate_per_s, p.address_burst),
                p.buckets_max,
            ),
            breakers: Breakers::new(
                p.breaker_failures_max,
                Duration::from_millis(p.breaker_cooldown_ms),
                clock.clone(),
            ),
            clock,
            memory_guard_bytes: p.memory_guard_bytes,
            memory_over: Cell::new(false),
            in_flight: Cell::new(0),
            in_flight_max: p.requests_in_flight_per_shard_max,
            refusals: Cell::new(0),
            refusals_max: p.refusals_in_flight_max,
            retry_after: Duration::from_secs(p.retry_after_s),
            sweep_interval: Duration::from_millis(p.memory_check_interval_ms),
            http_head_bytes_max: p.http_head_bytes_max,
        });
        // Right from the start, not after the first interval.
        protect.check_memory(crate::observe::process::resident_memory_bytes());
        protect
    }

    /// A message of session `id` (on the shard that owns it).
    pub fn admit_session_message(&self, id: SessionId) -> Result<(), Shed> {
        self.sessions.take(id, self.clock.now()).map_err(|wait| {
            Shed::new(
                Reason::SessionRate,
                wait,
                "rate limit of this session exceeded (protect.session_rate_per_s)".into(),
            )
        })
    }

    /// A request (HTTP) or connection (TCP) from `address`.
    pub fn admit_address(&self, address: IpAddr) -> Result<(), Shed> {
        self.addresses
            .take(address, self.clock.now())
            .map_err(|wait| {
                Shed::new(
                    Reason::AddressRate,
                    wait,
                    "rate limit of this client address exceeded (protect.address_rate_per_s)"
                        .into(),
                )
            })
    }

    /// A new session: refused while memory is over the guard.
    pub fn admit_new_session(&self) -> Result<(), Shed> {
        if self.memory_over.get() {
            return Err(Shed::new(
                Reason::Memory,
                self.retry_after,
                format!(
                    "no new sessions: server memory is above protect.memory_guard_bytes ({})",
                    self.memory_guard_bytes
                ),
            ));
        }
        Ok(())
    }

    /// A request starting on this shard; in flight until the guard drops.
    pub fn enter_request(self: &Rc<Self>) -> Result<InFlight, Shed> {
        let now = self.in_flight.get();
        if now >= self.in_flight_max {
            return Err(Shed::new(
                Reason::InFlight,
                self.retry_after,
                format!(
                    "server busy: {now} requests in flight on this shard (protect.requests_in_flight_per_shard_max)"
                ),
            ));
        }
        self.in_flight.set(now + 1);
        Ok(InFlight {
            protect: self.clone(),
        })
    }

    /// A connection past the shard's cap: counted, and the answer to give.
    pub fn connection_refused(&self) -> Shed {
        Shed::new(
            Reason::Connections,
            self.retry_after,
            "too many connections (limits.connections_per_shard_max, protect.connections_max)"
                .into(),
        )
    }

    /// Room to answer one refused connection before closing it; `None`
    /// when so many refusals are under way that it is closed at once.
    pub fn refusal_slot(self: &Rc<Self>) -> Option<RefusalSlot> {
        let now = self.refusals.get();
        if now >= self.refusals_max {
            return None;
        }
        self.refusals.set(now + 1);
        Some(RefusalSlot {
            protect: self.clone(),
        })
    }

    /// A call of `tool` through its breaker.
    pub fn admit_tool<'a>(&self, tool: &'a str, cancel: Event) -> Result<BreakerCall<'a>, Shed> {
        self.breakers.admit(tool, cancel).map_err(|refused| {
            Shed::new(
                Reason::Breaker,
                refused.retry_after,
                format!("tool {tool} keeps failing: its circuit breaker is open"),
            )
        })
    }

    pub fn breakers(&self) -> &Rc<Breakers> {
        &self.breakers
    }

    pub fn http_head_bytes_max(&self) -> usize {
        self.http_head_bytes_max
    }

    pub fn requests_in_flight(&self) -> usize {
        self.in_flight.get()
    }

    pub fn memory_over(&self) -> bool {
        self.memory_over.get()
    }

    /// Sets the memory guard from an RSS reading (`None`: unreadable, so
    /// the guard does not refuse).
    pub fn check_memory(&self, resident_bytes: Option<u64>) {
        let over = self.memory_guard_bytes > 0
            && resident_bytes.is_some_and(|bytes| bytes > self.memory_guard_bytes);
        if over != self.memory_over.get() {
            tracing::warn!(
                resident_bytes,
                guard = self.memory_guard_bytes,
                over,
                "memory guard {}",
                if over {
                    "refuses new sessions"
                } else {
                    "lifted"
                }
            );
        }
        self.memory_over.set(over);
    }

    /// The shard's protect worker: reads RSS and drops refilled buckets
    /// every `protect.memory_check_interval_ms` (never per request).
    pub async fn run(self: Rc<Self>, stop: impl std::future::Future<Output = ()>) {
        let work = async {
            loop {
                self.clock.sleep(self.sweep_interval).await;
                if self.memory_guard_bytes > 0 {
                    self.check_memory(crate::observe::process::resident_memory_bytes());
                }
                let now = self.clock.now();
                self.sessions.sweep(now);
                self.addresses.sweep(now);
                observe::set_breakers_open(self.breakers.open_count() as u64);
            }
        };
        futures_lite::future::or(work, stop).await;
    }
}

/// A request counted in flight on its shard.
pub struct InFlight {
    protect: Rc<Protect>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.protect.in_flight.get();
        self.protect.in_flight.set(now.saturating_sub(1));
    }
}

/// A refused connection being answered.
pub struct RefusalSlot {
    protect: Rc<Protect>,
}

impl Drop for RefusalSlot {
    fn drop(&mut self) {
        let now = self.protect.refusals.get();
        self.protect.refusals.set(now.saturating_sub(1));
    }
}

/// Connections one shard serves at once: its own cap, or its share of the
/// node's, whichever is smaller (the node's limit is split evenly, so no
/// count is shared between shards).
pub fn connections_per_shard(config: &Config, shards: usize) -> usize {
    let own = config.limits.connections_per_shard_max;
    match config.protect.connections_max {
        0 => own,
        node => own.min(node.div_ceil(shards.max(1))),
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Protect>>> = const { RefCell::new(None) };
}

/// Makes `protect` this shard's (thread's) protection.
pub fn install(protect: Rc<Protect>) {
    CURRENT.with(|current| *current.borrow_mut() = Some(protect));
}

/// This shard's protection; `None` off a shard (unit tests of other parts).
pub fn current() -> Option<Rc<Protect>> {
    CURRENT
        .try_with(|current| current.borrow().clone())
        .ok()
        .flatten()
}

/// A tool call through this shard's breaker: `Ok(None)` off a shard.
pub fn admit_tool<'a>(tool: &'a str, cancel: Event) -> Result<Option<BreakerCall<'a>>, RpcError> {
    match current() {
        Some(protect) => protect.admit_tool(tool, cancel).map(Some).map_err(|shed| {
            shed.rpc_error().with_data(json!({
                "reason": "breaker",
                "tool": tool,
                "retryAfterMs": u64::try_from(shed.retry_after.as_millis()).unwrap_or(u64::MAX),
            }))
        }),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::ManualClock;

    fn protect(edit: impl FnOnce(&mut Config)) -> (Rc<Protect>, Rc<ManualClock>) {
        let mut config = Config::default();
        edit(&mut config);
        let clock = ManualClock::new();
        (Protect::new(&config, clock.clone()), clock)
    }

    #[test]
    fn session_messages_are_limited_per_session_with_a_retry_hint() {
        let (p, clock) = protect(|c| {
            c.protect.session_rate_per_s = 2;
            c.protect.session_burst = 2;
        });
        let a = SessionId::new(crate::ids::ShardId(0), 1);
        let b = SessionId::new(crate::ids::ShardId(0), 2);
        assert!(p.admit_session_message(a).is_ok());
        assert!(p.admit_session_message(a).is_ok());
        let shed = p.admit_session_message(a).unwrap_err();
        assert_eq!(shed.reason, Reason::SessionRate);
        assert_eq!(shed.reason.status(), "429 Too Many Requests");
        assert_eq!(shed.retry_after, Duration::from_millis(500));
        assert_eq!(shed.retry_after_secs(), 1);
        assert!(p.admit_session_message(b).is_ok(), "its own bucket");
        clock.advance(Duration::from_millis(500));
        assert!(p.admit_session_message(a).is_ok());
    }

    #[test]
    fn addresses_are_limited_and_off_by_default() {
        let (p, _) = protect(|_| {});
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..10_000 {
            assert!(p.admit_address(ip).is_ok());
        }
        let (p, _) = protect(|c| {
            c.protect.address_rate_per_s = 1;
            c.protect.address_burst = 1;
        });
        assert!(p.admit_address(ip).is_ok());
        let shed = p.admit_address(ip).unwrap_err();
        assert_eq!(shed.reason.code(), RATE_LIMITED);
        assert!(p.admit_address("127.0.0.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn requests_in_flight_past_the_shard_cap_are_shed_until_one_ends() {
        let (p, _) = protect(|c| c.protect.requests_in_flight_per_shard_max = 2);
        let one = p.enter_request().unwrap();
        let _two = p.enter_request().unwrap();
        let shed = p.enter_request().err().unwrap();
        assert_eq!(shed.reason.status(), "503 Service Unavailable");
        assert_eq!(shed.retry_after_secs(), 1);
        drop(one);
        assert_eq!(p.requests_in_flight(), 1);
        assert!(p.enter_request().is_ok());
    }

    #[test]
    fn the_memory_guard_refuses_new_sessions_only_above_its_threshold() {
        let (p, _) = protect(|c| c.protect.memory_guard_bytes = 1_000);
        p.check_memory(Some(999));
        assert!(p.admit_new_session().is_ok());
        p.check_memory(Some(1_001));
        let shed = p.admit_new_session().unwrap_err();
        assert_eq!(shed.reason, Reason::Memory);
        p.check_memory(None);
        assert!(p.admit_new_session().is_ok(), "unreadable: do not refuse");
        let (off, _) = protect(|_| {});
        off.check_memory(Some(u64::MAX));
        assert!(off.admit_new_session().is_ok(), "0 is off");
        // A tiny guard is over at once, before the first interval.
        let (tiny, _) = protect(|c| c.protect.memory_guard_bytes = 1);
        assert!(tiny.admit_new_session().is_err());
    }

    #[test]
    fn refusal_slots_are_bounded() {
        let (p, _) = protect(|c| c.protect.refusals_in_flight_max = 1);
        let slot = p.refusal_slot().unwrap();
        assert!(p.refusal_slot().is_none());
        drop(slot);
        assert!(p.refusal_slot().is_some());
    }

    #[test]
    fn the_node_connection_limit_is_split_over_shards() {
        let mut config = Config::default();
        config.limits.connections_per_shard_max = 1_000;
        config.protect.connections_max = 0;
        assert_eq!(connections_per_shard(&config, 4), 1_000);
        config.protect.connections_max = 1_001;
        assert_eq!(connections_per_shard(&config, 4), 251);
        config.protect.connections_max = 100_000;
        assert_eq!(connections_per_shard(&config, 4), 1_000);
    }

    #[test]
    fn a_refusal_answers_each_request_of_a_message_and_skips_notifications() {
        let shed = Shed {
            reason: Reason::SessionRate,
            retry_after: Duration::from_millis(1_500),
            message: "slow down".into(),
        };
        let reply = shed
            .answer_to(br#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#, 1 << 20)
            .unwrap();
        let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(reply["id"], 7);
        assert_eq!(reply["error"]["code"], RATE_LIMITED);
        assert_eq!(reply["error"]["data"]["retryAfterMs"], 1_500);
        assert!(shed
            .answer_to(br#"{"jsonrpc":"2.0","method":"notifications/x"}"#, 1 << 20)
            .is_none());
        let batch = shed
            .answer_to(
                br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"n"},{"jsonrpc":"2.0","id":2,"method":"ping"}]"#,
                1 << 20,
            )
            .unwrap();
        let batch: serde_json::Value = serde_json::from_slice(&batch).unwrap();
        assert_eq!(batch.as_array().unwrap().len(), 2);
        let garbage = shed.answer_to(b"{nope", 1 << 20).unwrap();
        let garbage: serde_json::Value = serde_json::from_slice(&garbage).unwrap();
        assert_eq!(garbage["id"], serde_json::Value::Null);
    }
}
