//! The runtime wires the parts together: the node (main side: shard threads,
//! CPU placement, signals, drain, shard restarts) and the shard (one pinned
//! executor running its supervision tree). It holds no MCP rules.

pub mod admin;
pub mod admin_page;
pub mod chaos;
pub mod node;
pub mod shard;

pub use node::{
    available_cpus, start, start_with_stdio, Drainer, Listener, NodeError, NodeEvent, NodeHandle,
    NodeStatus, ShardStatus, CHANGES_PER_CALL_MAX, CHANGE_LOG_KEYS_MAX,
};
pub use shard::{Fault, ShardEvent, ShardExit, ShardReport};
