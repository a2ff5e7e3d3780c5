//! Tasks (2025-11-25): a task-augmented `tools/call` answers at once with a
//! task; the call runs on, and the client polls it (`tasks/get`), lists
//! (`tasks/list`), waits for its result (`tasks/result`) or cancels it
//! (`tasks/cancel`). The table is per session, so tasks are scoped to their
//! requestor by construction; it is bounded in count and in lifetime.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::protocol::jsonrpc::RpcError;
use crate::sync::Event;

pub const META_RELATED_TASK: &str = "io.modelcontextprotocol/related-task";

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
    id: String,
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

/// The tasks of one session.
pub struct TaskTable {
    tasks: RefCell<VecDeque<Task>>,
    tasks_max: usize,
    ttl_max: Duration,
    poll_interval_ms: u64,
    next_serial: Cell<u64>,
}

impl TaskTable {
    pub fn new(tasks_max: usize, ttl_max: Duration) -> Self {
        TaskTable {
            tasks: RefCell::new(VecDeque::new()),
            tasks_max,
            ttl_max,
            poll_interval_ms: 1_000,
            next_serial: Cell::new(0),
        }
    }

    /// Creates a working task; returns its id, the cancel signal for the
    /// call, and the task object to answer with.
    pub fn create(
        &self,
        requested_ttl_ms: Option<u64>,
    ) -> Result<(String, Event, Value), RpcError> {
        self.sweep();
        let mut tasks = self.tasks.borrow_mut();
        if tasks.len() >= self.tasks_max {
            return Err(RpcError::new(
                crate::protocol::jsonrpc::SERVER_ERROR,
                format!(
                    "this session already holds its maximum of {} tasks",
                    self.tasks_max
                ),
            ));
        }
        let serial = self.next_serial.get();
        self.next_serial.set(serial + 1);
        // Unique within the session; unguessable across sessions.
        let id = format!("task-{serial}-{:016x}", rand::random::<u64>());
        let now = SystemTime::now();
        let ttl = requested_ttl_ms
            .map(Duration::from_millis)
            .unwrap_or(self.ttl_max)
            .min(self.ttl_max);
        let task = Task {
            id: id.clone(),
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
        let object = self.object(&task);
        tasks.push_back(task);
        Ok((id, cancel, object))
    }

    /// Records the call's outcome, unless the task was cancelled meanwhile
    /// (cancellation is final). Returns the task object if it changed.
    pub fn finish(&self, id: &str, outcome: Result<Value, RpcError>) -> Option<Value> {
        let mut tasks = self.tasks.borrow_mut();
        let task = tasks.iter_mut().find(|t| t.id == id)?;
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
        Some(self.object(task))
    }

    pub fn get(&self, id: &str) -> Result<Value, RpcError> {
        self.sweep();
        let tasks = self.tasks.borrow();
        let task = tasks
            .iter()
            .find(|t| t.id == id)
            .ok_or_else(|| unknown(id))?;
        Ok(self.object(task))
    }

    /// Cancels a running task; a terminal one is refused with -32602.
    pub fn cancel(&self, id: &str) -> Result<Value, RpcError> {
        let mut tasks = self.tasks.borrow_mut();
        let task = tasks
            .iter_mut()
            .find(|t| t.id == id)
            .ok_or_else(|| unknown(id))?;
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
        Ok(self.object(task))
    }

    /// Cancels every running task (the session is ending).
    pub fn cancel_all(&self) {
        for task in self.tasks.borrow_mut().iter_mut() {
            task.cancel.set();
        }
    }

    /// Waits until the task is terminal, then returns what the call would
    /// have returned, tagged with the task.
    pub async fn result(&self, id: &str) -> Result<Value, RpcError> {
        let done = {
            let tasks = self.tasks.borrow();
            let task = tasks
                .iter()
                .find(|t| t.id == id)
                .ok_or_else(|| unknown(id))?;
            task.done.clone()
        };
        done.wait().await;
        let tasks = self.tasks.borrow();
        let task = tasks
            .iter()
            .find(|t| t.id == id)
            .ok_or_else(|| unknown(id))?;
        let related = json!({"taskId": task.id});
        match &task.outcome {
            Some(Ok(result)) => {
                let mut result = result.clone();
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
            Some(Err(error)) => Err(error.clone()),
            None => Err(
                RpcError::new(crate::protocol::jsonrpc::SERVER_ERROR, "task cancelled")
                    .with_data(json!({META_RELATED_TASK: related})),
            ),
        }
    }

    /// Tasks in creation order, one page.
    pub fn list(&self, start: usize, page_size: usize) -> (Vec<Value>, usize) {
        self.sweep();
        let tasks = self.tasks.borrow();
        let page = tasks
            .iter()
            .skip(start)
            .take(page_size)
            .map(|task| self.object(task))
            .collect();
        (page, tasks.len())
    }

    pub fn len(&self) -> usize {
        self.tasks.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets tasks whose lifetime is over (running ones are cancelled).
    fn sweep(&self) {
        let now = SystemTime::now();
        self.tasks.borrow_mut().retain(|task| {
            let alive = now
                .duration_since(task.created_at)
                .map_or(true, |age| age < task.ttl);
            if !alive {
                task.cancel.set();
            }
            alive
        });
    }

    fn object(&self, task: &Task) -> Value {
        let mut object = json!({
            "taskId": task.id,
            "status": task.status.as_str(),
            "createdAt": rfc3339(task.created_at),
            "lastUpdatedAt": rfc3339(task.updated_at),
            "ttl": task.ttl.as_millis() as u64,
            "pollInterval": self.poll_interval_ms,
        });
        if let Some(message) = &task.status_message {
            object["statusMessage"] = Value::String(message.clone());
        }
        object
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
        let table = TaskTable::new(2, Duration::from_secs(60));
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
        assert!(table.create(None).is_err(), "bounded");
        assert_eq!(table.get("nope").unwrap_err().code, -32602);
    }
}
