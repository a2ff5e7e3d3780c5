//! Child specifications, supervisor flags and exit reasons, in OTP's words.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use serde::Serialize;

use super::context::ChildContext;

/// When a terminated child is restarted (OTP `restart`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// Always restarted.
    Permanent,
    /// Restarted only after an abnormal exit (anything but `Normal`/`Shutdown`).
    Transient,
    /// Never restarted; removed from the supervisor when it exits.
    Temporary,
}

/// How a supervisor stops a child (OTP `shutdown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shutdown {
    /// Killed at once: its future is dropped without being asked.
    BrutalKill,
    /// Asked to stop, then killed if it has not exited after this many ms.
    TimeoutMs(u32),
    /// Asked to stop, and waited for as long as it takes (for supervisors).
    Infinity,
}

/// Whether a child is a worker or a supervisor (OTP `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildKind {
    Worker,
    Supervisor,
}

/// Restart strategy (OTP `strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Restart only the child that exited.
    OneForOne,
    /// Stop every other child (reverse order), then restart all (in order).
    OneForAll,
    /// Stop the children started after the one that exited, then restart it and them.
    RestForOne,
    /// One template, children added at run time with `start_child`; each child is
    /// handled as under `OneForOne`.
    SimpleOneForOne,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::OneForOne => "one_for_one",
            Strategy::OneForAll => "one_for_all",
            Strategy::RestForOne => "rest_for_one",
            Strategy::SimpleOneForOne => "simple_one_for_one",
        }
    }
}

/// Why a child stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// Finished its work.
    Normal,
    /// Stopped because its supervisor (or the node) asked it to.
    Shutdown,
    /// Killed by its supervisor (brutal kill or a shutdown timeout that ran out).
    Killed,
    /// Its future panicked; the panic message.
    Panic(String),
    /// It returned an error; the error's message.
    Error(String),
    /// A supervisor whose restart intensity was exceeded gave up.
    MaxIntensity,
}

impl ExitReason {
    /// OTP: `normal` and `shutdown` are normal; every other reason is abnormal.
    pub fn is_abnormal(&self) -> bool {
        !matches!(self, ExitReason::Normal | ExitReason::Shutdown)
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Normal => f.write_str("normal"),
            ExitReason::Shutdown => f.write_str("shutdown"),
            ExitReason::Killed => f.write_str("killed"),
            ExitReason::Panic(message) => write!(f, "panic: {message}"),
            ExitReason::Error(message) => write!(f, "error: {message}"),
            ExitReason::MaxIntensity => f.write_str("reached max restart intensity"),
        }
    }
}

/// A running child: a local (`!Send`) future that says why it stopped.
pub type ChildFuture = Pin<Box<dyn Future<Output = ExitReason>>>;

/// Starts a child; called again on every restart.
pub type StartFn = Rc<dyn Fn(ChildContext) -> ChildFuture>;

/// Everything a supervisor needs to start, restart and stop one child.
#[derive(Clone)]
pub struct ChildSpec {
    pub id: Rc<str>,
    pub start: StartFn,
    pub restart: Restart,
    pub shutdown: Shutdown,
    pub kind: ChildKind,
}

impl ChildSpec {
    /// A permanent worker with a 5 s shutdown timeout (OTP's worker default).
    pub fn worker<F, Fut>(id: &str, start: F) -> Self
    where
        F: Fn(ChildContext) -> Fut + 'static,
        Fut: Future<Output = ExitReason> + 'static,
    {
        ChildSpec {
            id: Rc::from(id),
            start: Rc::new(move |ctx| Box::pin(start(ctx))),
            restart: Restart::Permanent,
            shutdown: Shutdown::TimeoutMs(5_000),
            kind: ChildKind::Worker,
        }
    }

    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    pub fn kind(mut self, kind: ChildKind) -> Self {
        self.kind = kind;
        self
    }
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .field("kind", &self.kind)
            .finish()
    }
}

/// What every child started by a `SimpleOneForOne` supervisor shares; the start
/// function comes with each `start_child` call.
#[derive(Debug, Clone)]
pub struct DynamicTemplate {
    pub id: Rc<str>,
    pub restart: Restart,
    pub shutdown: Shutdown,
    pub kind: ChildKind,
}

/// Supervisor flags (OTP `sup_flags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupFlags {
    pub strategy: Strategy,
    /// Most restarts allowed within `period_ms`; one more makes the supervisor
    /// stop its children and exit with `MaxIntensity`, escalating to its parent.
    pub intensity: u32,
    pub period_ms: u64,
}

impl SupFlags {
    /// OTP's defaults: at most 1 restart in 5 s.
    pub fn new(strategy: Strategy) -> Self {
        SupFlags {
            strategy,
            intensity: 1,
            period_ms: 5_000,
        }
    }

    pub fn intensity(mut self, restarts: u32, period_ms: u64) -> Self {
        self.intensity = restarts;
        self.period_ms = period_ms;
        self
    }
}

/// A spec that `check` refused, naming the field (OTP `check_childspec`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("child id must not be empty")]
    EmptyId,
    #[error("duplicate child id `{0}`")]
    DuplicateId(String),
    #[error("supervisor period_ms must be greater than 0")]
    ZeroPeriod,
    #[error("a simple_one_for_one supervisor takes a template, not static children")]
    StaticChildrenInSimpleOneForOne,
    #[error("a simple_one_for_one supervisor needs a template")]
    MissingTemplate,
    #[error("only a simple_one_for_one supervisor takes a template")]
    TemplateWithoutSimpleOneForOne,
}

pub(crate) fn check_specs(
    flags: &SupFlags,
    children: &[ChildSpec],
    template: Option<&DynamicTemplate>,
) -> Result<(), SpecError> {
    if flags.period_ms == 0 {
        return Err(SpecError::ZeroPeriod);
    }
    match (flags.strategy, template) {
        (Strategy::SimpleOneForOne, None) => return Err(SpecError::MissingTemplate),
        (Strategy::SimpleOneForOne, Some(_)) if !children.is_empty() => {
            return Err(SpecError::StaticChildrenInSimpleOneForOne)
        }
        (Strategy::SimpleOneForOne, Some(t)) if t.id.is_empty() => return Err(SpecError::EmptyId),
        (strategy, Some(_)) if strategy != Strategy::SimpleOneForOne => {
            return Err(SpecError::TemplateWithoutSimpleOneForOne)
        }
        _ => {}
    }
    for (index, spec) in children.iter().enumerate() {
        if spec.id.is_empty() {
            return Err(SpecError::EmptyId);
        }
        if children[..index].iter().any(|other| other.id == spec.id) {
            return Err(SpecError::DuplicateId(spec.id.to_string()));
        }
    }
    Ok(())
}
