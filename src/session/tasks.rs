//! Tasks (2025-11-25): a task-augmented `tools/call` answers at once with a
//! task; the call runs on, and the client polls it (`tasks/get`), lists
//! (`tasks/list`), waits for its result (`tasks/result`) or cancels it
//! (`tasks/cancel`). The tasks live in the shard's [`TaskStore`], bounded in
//! count (per shard and per session) and in lifetime; each is owned by the
//! session that created it, which sees only its own through its
//! [`TaskTable`]. A session's tasks go when the session does.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::protocol::jsonrpc::{RpcError, SERVER_ERROR};
use crate::sync::Event;

pub const META_RELATED_TASK: &str = "io.modelcontextprotocol/related-task";

/// How often a client is asked to poll a task, in milliseconds.
const POLL_INTERVAL_MS: u64 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Working,
    Completed,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Working => "working",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        self != TaskStatus::Working
    }
}

struct Task {
    owner: u64,
    status: TaskStatus,
    status_message: Option<String>,
    created_at: SystemTime,
    updated_at: SystemTime,
    ttl: Duration,
    /// What the call returned, once it has.
    outcome: Option<Result<Value, RpcError>>,
    /// Set when the task reaches a terminal status.
    done: Event,
    /// Stops the running call.
    cancel: Event,
}

impl Task {
    fn expired(&self, now: SystemTime) -> bool {
        now.duration_since(self.created_at)
            .is_ok_and(|age| age >= self.ttl)
    }
}

/// The tasks of one shard. Shard-local: `Rc`, no locks.
pub struct TaskStore {
    tasks: RefCell<HashMap<String, Task>>,
    /// Each owner's task ids, oldest first.
    owners: RefCell<HashMap<u64, VecDeque<String>>>,
    /// Tasks the shard holds at most; creating more gets -32000.
    tasks_max: usize,
    /// Tasks one session holds at most.
    per_session_max: usize,
    /// Longest lifetime a task may ask for.
    ttl_max: Duration,
    next_owner: Cell<u64>,
    next_serial: Cell<u64>,
}

impl TaskStore {
    pub fn new(tasks_max: usize, per_session_max: usize, ttl_max: Duration) -> Rc<TaskStore> {
        Rc::new(TaskStore {
            tasks: RefCell::new(HashMap::new()),
            owners: RefCell::new(HashMap::new()),
            tasks_max,
            per_session_max,
            ttl_max,
            next_owner: Cell::new(0),
            next_serial: Cell::new(0),
        })
    }

    /// A new session's view of the store: it sees only the tasks it creates.
    pub fn table(self: &Rc<Self>) -> TaskTable {
        let owner = self.next_owner.get();
        self.next_owner.set(owner + 1);
        TaskTable {
            store: self.clone(),
            owner,
        }
    }

    /// Tasks held now, of every session (running or finished, until their ttl).
    pub fn len(&self) -> usize {
        self.tasks.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the tasks whose lifetime is over (running ones are
    /// cancelled); `owner` limits it to one session's.
    fn sweep(&self, owner: Option<u64>) {
        let now = SystemTime::now();
        let mut tasks = self.tasks.borrow_mut();
        let mut owners = self.owners.borrow_mut();
        for (&who, ids) in owners.iter_mut() {
            if owner.is_some_and(|owner| owner != who) {
                continue;
            }
            ids.retain(|id| {
                let expired = tasks.get(id).is_none_or(|task| task.expired(now));
                if expired {
                    if let Some(task) = tasks.remove(id) {
                        task.cancel.set();
                    }
                }
                !expired
            });
        }
        owners.retain(|_, ids| !ids.is_empty());
    }

    /// Forgets every task of `owner`, cancelling the running ones.
    fn release(&self, owner: u64) {
        let ids = self.owners.borrow_mut().remove(&owner).unwrap_or_default();
        let mut tasks = self.tasks.borrow_mut();
        for id in ids {
            if let Some(task) = tasks.remove(&id) {
                task.cancel.set();
            }
        }
    }

    fn object(&self, id: &str, task: &Task) -> Value {
        let mut object = json!({
            "taskId": id,
            "status": task.status.as_str(),
            "createdAt": rfc3339(task.created_at),
            "lastUpdatedAt": rfc3339(task.updated_at),
            "ttl": task.ttl.as_millis() as u64,
            "pollInterval": POLL_INTERVAL_MS,
        });
        if let Some(message) = &task.status_message {
            object["statusMessage"] = Value::String(message.clone());
        }
        object
    }
}

/// One session's tasks in its shard's store. Dropping it forgets them.
pub struct TaskTable {
    store: Rc<TaskStore>,
    owner: u64,
}

impl TaskTable {
    /// Creates a working task; returns its id, the cancel signal for the
    /// call, and the task object to answer with.
    pub fn create(
        &self,
        requested_ttl_ms: Option<u64>,
    ) -> Result<(String, Event, Value), RpcError> {
        let store = &self.store;
        store.sweep(Some(self.owner));
        if self.len() >= store.per_session_max {
            return Err(RpcError::new(
                SERVER_ERROR,
                format!(
                    "this session already holds its maximum of {} tasks",
                    store.per_session_max
                ),
            ));
        }
        if store.len() >= store.tasks_max {
            store.sweep(None);
            if store.len() >= store.tasks_max {
                return Err(RpcError::new(
                    SERVER_ERROR,
                    format!(
                        "this shard already holds its maximum of {} tasks",
                        store.tasks_max
                    ),
                ));
            }
        }
        let serial = store.next_serial.get();
        store.next_serial.set(serial + 1);
        // Unique on the shard; unguessable across sessions.
        let id = format!("task-{serial}-{:016x}", rand::random::<u64>());
        let now = SystemTime::now();
        let ttl = requested_ttl_ms
            .map(Duration::from_millis)
            .unwrap_or(store.ttl_max)
            .min(store.ttl_max);
        let task = Task {
            owner: self.owner,
            status: TaskStatus::Working,
            status_message: None,
            created_at: now,
            updated_at: now,
            ttl,
            outcome: None,
            done: Event::new(),
            cancel: Event::new(),
        };
        let cancel = task.cancel.clone();
        let object = store.object(&id, &task);
        store.tasks.borrow_mut().insert(id.clone(), task);
        store
            .owners
            .borrow_mut()
            .entry(self.owner)
            .or_default()
            .push_back(id.clone());
        Ok((id, cancel, object))
    }

    /// Runs `f` on this session's live task `id` (an expired one is
    /// forgotten first); -32602 when there is none.
    fn with_task<R>(&self, id: &str, f: impl FnOnce(&mut Task) -> R) -> Result<R, RpcError> {
        let now = SystemTime::now();
        let expired = {
            let tasks = self.store.tasks.borrow();
            match tasks.get(id) {
                Some(task) if task.owner == self.owner => task.expired(now),
                _ => return Err(unknown(id)),
            }
        };
        if expired {
            self.store.sweep(Some(self.owner));
            return Err(unknown(id));
        }
        let mut tasks = self.store.tasks.borrow_mut();
        let task = tasks.get_mut(id).ok_or_else(|| unknown(id))?;
        Ok(f(task))
    }

    /// Records the call's outcome, unless the task was cancelled meanwhile
    /// (cancellation is final). Returns the task object if it changed.
    pub fn finish(&self, id: &str, outcome: Result<Value, RpcError>) -> Option<Value> {
        let mut tasks = self.store.tasks.borrow_mut();
        let task = tasks.get_mut(id).filter(|task| task.owner == self.owner)?;
        if task.status.is_terminal() {
            return None;
        }
        task.status = if outcome.is_ok() {
            TaskStatus::Completed
        } else {
            TaskStatus::Failed
        };
        task.outcome = Some(outcome);
        task.updated_at = SystemTime::now();
        task.done.set();
        Some(self.store.object(id, task))
    }

    pub fn get(&self, id: &str) -> Result<Value, RpcError> {
        self.with_task(id, |task| self.store.object(id, task))
    }

    /// Cancels a running task; a terminal one is refused with -32602.
    pub fn cancel(&self, id: &str) -> Result<Value, RpcError> {
        self.with_task(id, |task| {
            if task.status.is_terminal() {
                return Err(RpcError::invalid_params(format!(
                    "task {id} is already {}",
                    task.status.as_str()
                )));
            }
            task.status = TaskStatus::Cancelled;
            task.status_message = Some("The task was cancelled by request.".into());
            task.updated_at = SystemTime::now();
            task.cancel.set();
            task.done.set();
            Ok(self.store.object(id, task))
        })?
    }

    /// Cancels every running task of the session and forgets them all (the
    /// session is ending).
    pub fn cancel_all(&self) {
        self.store.release(self.owner);
    }

    /// Waits until the task is terminal, then returns what the call would
    /// have returned, tagged with the task.
    pub async fn result(&self, id: &str) -> Result<Value, RpcError> {
        let done = self.with_task(id, |task| task.done.clone())?;
        done.wait().await;
        let related = json!({"taskId": id});
        let outcome = self.with_task(id, |task| task.outcome.clone())?;
        match outcome {
            Some(Ok(mut result)) => {
                if let Value::Object(map) = &mut result {
                    let meta = map
                        .entry("_meta")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Value::Object(meta) = meta {
                        meta.insert(META_RELATED_TASK.into(), related);
                    }
                }
                Ok(result)
            }
            Some(Err(error)) => Err(error),
            None => Err(RpcError::new(SERVER_ERROR, "task cancelled")
                .with_data(json!({META_RELATED_TASK: related}))),
        }
    }

    /// This session's tasks in creation order, one page; and how many it has.
    pub fn list(&self, start: usize, page_size: usize) -> (Vec<Value>, usize) {
        self.store.sweep(Some(self.owner));
        let owners = self.store.owners.borrow();
        let tasks = self.store.tasks.borrow();
        let ids = owners.get(&self.owner);
        let page = ids
            .into_iter()
            .flatten()
            .skip(start)
            .take(page_size)
            .filter_map(|id| tasks.get(id).map(|task| self.store.object(id, task)))
            .collect();
        (page, ids.map_or(0, VecDeque::len))
    }

    /// This session's tasks.
    pub fn len(&self) -> usize {
        self.store
            .owners
            .borrow()
            .get(&self.owner)
            .map_or(0, VecDeque::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for TaskTable {
    fn drop(&mut self) {
        self.store.release(self.owner);
    }
}

fn unknown(id: &str) -> RpcError {
    RpcError::invalid_params(format!("unknown task: {id}"))
}

/// `2025-11-25T10:30:00.123Z` (UTC, milliseconds).
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_764_066_600_123); // 2025-11-25T10:30:00.123Z
        assert_eq!(rfc3339(t), "2025-11-25T10:30:00.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&rfc3339(leap)[..10], "2000-02-29");
    }

    #[test]
    fn lifecycle_is_working_then_terminal_and_cancellation_is_final() {
        let store = TaskStore::new(16, 2, Duration::from_secs(60));
        let table = store.table();
        let (id, cancel, object) = table.create(Some(5_000)).unwrap();
        assert_eq!(
            (object["status"].clone(), object["ttl"].clone()),
            (json!("working"), json!(5_000))
        );
        let cancelled = table.cancel(&id).unwrap();
        assert_eq!(cancelled["status"], "cancelled");
        assert!(cancel.is_set());
        assert!(
            table.finish(&id, Ok(json!({}))).is_none(),
            "cancelled stays cancelled"
        );
        assert_eq!(table.cancel(&id).unwrap_err().code, -32602);
        let (other, _, _) = table.create(None).unwrap();
        assert_eq!(
            table.get(&other).unwrap()["ttl"],
            60_000,
            "ttl capped at the maximum"
        );
        assert_eq!(
            table.finish(&other, Ok(json!({"x": 1}))).unwrap()["status"],
            "completed"
        );
        assert!(table.create(None).is_err(), "bounded per session");
        assert_eq!(table.get("nope").unwrap_err().code, -32602);
    }

    #[test]
    fn the_shard_store_is_bounded_and_each_session_sees_only_its_own() {
        let store = TaskStore::new(3, 2, Duration::from_secs(60));
        let (mine, theirs) = (store.table(), store.table());
        let (a, _, _) = mine.create(None).unwrap();
        let (b, _, _) = mine.create(None).unwrap();
        let (c, their_cancel, _) = theirs.create(None).unwrap();
        assert_eq!(store.len(), 3);
        let Err(refused) = store.table().create(None) else {
            panic!("a fourth task on a shard of three");
        };
        assert!(refused.message.contains("shard"), "{}", refused.message);

        let (listed, total) = mine.list(0, 10);
        let ids: Vec<&str> = listed
            .iter()
            .map(|t| t["taskId"].as_str().unwrap())
            .collect();
        assert_eq!((ids, total), (vec![a.as_str(), b.as_str()], 2));
        assert_eq!(theirs.list(0, 10).1, 1);
        // Another session's task is unknown to this one, whatever it tries.
        assert_eq!(mine.get(&c).unwrap_err().code, -32602);
        assert_eq!(mine.cancel(&c).unwrap_err().code, -32602);
        assert!(mine.finish(&c, Ok(json!({}))).is_none());
        assert!(!their_cancel.is_set());

        // A session that ends takes its tasks with it: room again.
        drop(theirs);
        assert!(their_cancel.is_set(), "its running task was cancelled");
        assert_eq!(store.len(), 2);
        assert!(store.table().create(None).is_ok());
    }

    #[test]
    fn a_task_past_its_lifetime_is_forgotten_and_its_call_cancelled() {
        let store = TaskStore::new(4, 4, Duration::from_secs(60));
        let table = store.table();
        let (id, cancel, _) = table.create(Some(0)).unwrap();
        assert_eq!(table.get(&id).unwrap_err().code, -32602, "lifetime 0: gone");
        assert!(cancel.is_set());
        assert_eq!((table.len(), store.len()), (0, 0));
        let (kept, _, _) = table.create(None).unwrap();
        let (expiring, _, _) = table.create(Some(0)).unwrap();
        let (listed, total) = table.list(0, 10);
        assert_eq!((listed.len(), total), (1, 1));
        assert_eq!(listed[0]["taskId"], kept.as_str());
        assert!(table.cancel(&expiring).is_err());
    }
}
