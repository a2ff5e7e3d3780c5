//! Supervision with Erlang/OTP semantics: child specs (restart type, shutdown
//! policy, kind), the four strategies, restart intensity with escalation,
//! ordered start and reverse-ordered stop, timed restarts and a live tree.
//!
//! Everything here is shard-local (`Rc`, `RefCell`, glommio local tasks) and
//! knows nothing of sockets or MCP. A "crash" is a panic in a child's future or
//! the child returning an abnormal [`ExitReason`]; either is caught here and
//! never unwinds into the shard.
//!
//! ```
//! use shardmcp::supervision::*;
//! use shardmcp::sync::Event;
//! use shardmcp::time::SystemClock;
//!
//! glommio::LocalExecutorBuilder::default().make().unwrap().run(async {
//!     let worker = ChildSpec::worker("worker", |ctx| async move {
//!         ctx.shutdown_requested().await;
//!         ExitReason::Shutdown
//!     });
//!     let sup = SupervisorSpec::new("root", SupFlags::new(Strategy::OneForOne).intensity(3, 1_000))
//!         .child(worker)
//!         .build(SupervisorEnv::new(SystemClock::shared()))
//!         .unwrap();
//!     let stop = Event::new();
//!     stop.set(); // ask it to stop as soon as it has started its children
//!     assert_eq!(sup.run(stop).await, ExitReason::Shutdown);
//!     assert_eq!(sup.tree().children[0].id, "worker");
//! });
//! ```

mod context;
mod intensity;
mod spec;
mod stats;
mod supervisor;
mod tree;

#[cfg(test)]
mod tests;

pub use context::{ChildContext, SupervisorEnv};
pub use spec::{
    ChildFuture, ChildKind, ChildSpec, DynamicTemplate, ExitReason, Restart, Shutdown, SpecError,
    StartFn, Strategy, SupFlags,
};
pub use stats::{RestartBuckets, RestartStats, RestartSummary};
pub use supervisor::{ChildKey, RunningSupervisor, Supervisor, SupervisorError, SupervisorSpec};
pub use tree::TreeNode;

pub use crate::sync::panic_message;
