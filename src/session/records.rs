//! The shard's records of sessions whose actor died without ending the
//! session (killed, or gone with its pool). They belong to the shard, not
//! to a pool, so they outlive the pool's restart (DESIGN: "state that must
//! outlive a restart belongs to the supervisor, not the worker"). Written
//! only when an actor dies and read when a new one takes the session up:
//! nothing on the request path touches them while actors live.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::time::Duration;

use crate::registry::{IdHasher, SessionId};
use crate::time::SharedClock;

use super::ResumeState;

struct Record {
    state: ResumeState,
    transport: &'static str,
    died_at: Duration,
}

/// Bounded by count (`records_max`, the shard's session bound) and by age
/// (`ttl`: a client that has not come back by then has gone).
pub struct SessionRecords {
    records: RefCell<HashMap<SessionId, Record, BuildHasherDefault<IdHasher>>>,
    records_max: usize,
    ttl: Duration,
    clock: SharedClock,
}

impl SessionRecords {
    pub fn new(records_max: usize, ttl: Duration, clock: SharedClock) -> SessionRecords {
        SessionRecords {
            records: RefCell::new(HashMap::default()),
            records_max,
            ttl,
            clock,
        }
    }

    /// Keeps the state of a session whose actor died; when full, the
    /// session is lost (its client re-initializes) rather than memory grown.
    pub fn keep(&self, id: SessionId, state: ResumeState, transport: &'static str) {
        let mut records = self.records.borrow_mut();
        if records.len() >= self.records_max && !records.contains_key(&id) {
            tracing::warn!(session = %id, max = self.records_max, "session records full; session state lost");
            return;
        }
        let died_at = self.clock.now();
        records.insert(
            id,
            Record {
                state,
                transport,
                died_at,
            },
        );
    }

    pub fn contains(&self, id: &SessionId) -> bool {
        self.records.borrow().contains_key(id)
    }

    /// The transport the session was counted under, if it has a record.
    pub fn transport(&self, id: &SessionId) -> Option<&'static str> {
        self.records.borrow().get(id).map(|record| record.transport)
    }

    /// Hands the state to the new actor (the record goes).
    pub fn take(&self, id: &SessionId) -> Option<ResumeState> {
        self.records
            .borrow_mut()
            .remove(id)
            .map(|record| record.state)
    }

    pub fn forget(&self, id: &SessionId) {
        self.records.borrow_mut().remove(id);
    }

    pub fn len(&self) -> usize {
        self.records.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.borrow().is_empty()
    }

    /// Drops records older than the ttl; returns how many went.
    pub fn sweep(&self) -> usize {
        let now = self.clock.now();
        let mut records = self.records.borrow_mut();
        let before = records.len();
        records.retain(|_, record| now.saturating_sub(record.died_at) < self.ttl);
        before - records.len()
    }
}
