//! shardmcp: a thread-per-core Model Context Protocol server runtime with
//! Erlang/OTP-style supervision.
//!
//! Module map (see DESIGN.md for the shape; a module imports only those listed
//! after it, and only `runtime` wires parts together):
//!
//! - [`cli`]: the `shardmcp` subcommands and their flags.
//! - [`doctor`]: host checks against what `serve` needs and what `tuning/` recommends.
//! - [`runtime`]: the node (shards, signals, drain, shard restarts) and one shard's tree.
//! - [`transport`]: listeners: bytes in, frames to session actors, bytes out.
//! - [`auth`]: bearer-token authorization of HTTP clients (JWT/JWKS or static tokens).
//! - [`pool`]: pool supervisors (bulkheads) and session placement by id hash.
//! - [`session`]: the session actor: MCP lifecycle and dispatch for one session.
//! - [`server`]: the user API: tools (and more to come) built per shard from a factory.
//! - [`protect`]: overload protection: rate limits, shedding, memory guard, circuit breakers.
//! - [`mesh`]: bounded channels between every ordered pair of shards, call/reply.
//! - [`protocol`]: the JSON-RPC 2.0 codec (simd-json) and MCP versions and eras.
//! - [`registry`]: session ids (owning shard + 128 random bits) and shard-local maps.
//! - [`supervision`]: OTP child specs, strategies, intensity, restart timing, the tree.
//! - [`load`]: `shardmcp load`, the MCP load generator (a client; imports no other part).
//! - [`chaos`]: fault kinds, the admin client, `load --chaos` schedules and their classification.
//! - [`observe`]: per-shard counters and histograms; Prometheus text and tree renderers.
//! - [`config`]: every bound as a named, documented value; TOML with unknown keys refused.
//! - [`time`], [`sync`]: injected clock and shard-local primitives underneath it all.

#![deny(clippy::await_holding_refcell_ref)]

pub mod auth;
pub mod chaos;
pub mod cli;
pub mod config;
pub mod doctor;
#[doc(hidden)]
pub mod fuzzing;
pub mod ids;
pub mod load;
pub mod mesh;
pub mod observe;
pub mod pool;
pub mod protect;
pub mod protocol;
pub mod registry;
pub mod runtime;
pub mod server;
pub mod session;
pub mod supervision;
pub mod sync;
pub mod time;
pub mod transport;
