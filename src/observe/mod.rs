//! Observability: per-shard counters and histograms, and the renderers the
//! admin listener serves them with.
//!
//! - [`metrics`]: what a shard counts (requests by method and outcome with
//!   their latency, sessions and connections by transport), in `Cell`s of a
//!   thread-local: a shard is one thread, so recording is a plain add with
//!   no atomics and no locks. A snapshot travels to the node on its query
//!   path at scrape time.
//! - [`prometheus`]: the Prometheus text exposition format, every sample
//!   labelled with its shard.
//! - [`tree_text`]: the node's supervision tree as indented text.
//! - [`process`]: process-wide figures read from `/proc/self`.
//! - [`otel`]: one span per MCP request exported over OTLP/HTTP (cargo
//!   feature `otel`; empty stubs without it).
//!
//! Nothing here changes the state of the parts it watches.

pub mod metrics;
pub mod otel;
pub mod process;
pub mod prometheus;
pub mod tree_text;

pub use metrics::{
    connection_opened, declare_transport, record_auth_refusal, record_request,
    record_session_closed, record_session_opened, snapshot, ConnectionGuard, MetricsSnapshot,
    Outcome,
};
pub use metrics::{record_breaker_opened, record_shed, set_breakers_open};
