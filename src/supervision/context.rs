//! What a child sees of its supervisor: its id, the stop request, the shard's
//! clock, and (for a child that is itself a supervisor) a slot to register in
//! so the parent can walk the live tree.

use std::cell::RefCell;
use std::rc::Rc;

use crate::sync::{Event, EventWait};
use crate::time::SharedClock;

use super::stats::RestartStats;
use super::supervisor::Supervisor;

/// Shard-wide things every supervisor in a tree shares.
#[derive(Clone)]
pub struct SupervisorEnv {
    pub clock: SharedClock,
    pub stats: Rc<RestartStats>,
}

impl SupervisorEnv {
    pub fn new(clock: SharedClock) -> Self {
        SupervisorEnv {
            clock,
            stats: Rc::new(RestartStats::new()),
        }
    }
}

/// Handed to a child's start function each time it is (re)started.
pub struct ChildContext {
    pub(crate) id: Rc<str>,
    pub(crate) shutdown: Event,
    pub(crate) env: SupervisorEnv,
    pub(crate) subtree: Option<Rc<RefCell<Option<Supervisor>>>>,
}

impl ChildContext {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Completes when the supervisor asks this child to stop. A well-behaved
    /// child then finishes up and returns `ExitReason::Shutdown`; one that does
    /// not is killed when its shutdown timeout runs out.
    pub fn shutdown_requested(&self) -> EventWait {
        self.shutdown.wait()
    }

    pub fn is_shutdown_requested(&self) -> bool {
        self.shutdown.is_set()
    }

    /// The stop signal itself, for children that hand it to their own tasks.
    pub fn shutdown_event(&self) -> Event {
        self.shutdown.clone()
    }

    pub fn env(&self) -> &SupervisorEnv {
        &self.env
    }

    pub fn clock(&self) -> &SharedClock {
        &self.env.clock
    }

    /// A child that is a supervisor registers here so the parent's tree view
    /// includes it.
    pub fn register_subtree(&self, supervisor: &Supervisor) {
        if let Some(subtree) = &self.subtree {
            *subtree.borrow_mut() = Some(supervisor.clone());
        }
    }
}
