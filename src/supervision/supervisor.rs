//! The supervisor: starts children in order, notices their exits, restarts them
//! by strategy within its restart intensity, and stops them in reverse order.
//!
//! It runs as one task on its shard. Children are glommio tasks wrapped so that
//! a panic becomes `ExitReason::Panic` and a kill drops the child's future; each
//! child reports its exit into the supervisor's mailbox with the generation it
//! was started as, so reports from a child that was already replaced are
//! ignored (OTP gets the same effect from pids).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::future;
use slab::Slab;

use crate::sync::{catch_panic, CatchPanic, Event, EventWait};

use super::context::{ChildContext, SupervisorEnv};
use super::intensity::IntensityWindow;
use super::spec::{
    check_specs, ChildFuture, ChildKind, ChildSpec, DynamicTemplate, ExitReason, Restart, Shutdown,
    SpecError, StartFn, Strategy, SupFlags,
};
use super::tree::TreeNode;

/// Names one child of one supervisor: its slot and the generation it was
/// created with, so a stale key never reaches a newer child in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChildKey {
    slot: usize,
    created: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SupervisorError {
    #[error("start_child needs a simple_one_for_one supervisor")]
    NotDynamic,
    #[error("supervisor `{0}` is stopping and takes no new children")]
    Stopping(String),
    #[error("supervisor `{id}` already holds its maximum of {max} children")]
    Full { id: String, max: usize },
    #[error("no such child")]
    NoSuchChild,
    #[error(transparent)]
    Spec(#[from] SpecError),
}

/// Told about each new instance of a supervisor.
pub type OnStart = Rc<dyn Fn(&Supervisor)>;

/// Everything needed to build a supervisor, checked once; reused on every
/// restart when the supervisor is itself a child.
#[derive(Clone)]
pub struct SupervisorSpec {
    pub id: Rc<str>,
    pub flags: SupFlags,
    pub children: Vec<ChildSpec>,
    pub template: Option<DynamicTemplate>,
    /// Most dynamic children at once; `start_child` past it is refused.
    pub children_max: usize,
    /// Called with each new instance, so callers can keep a handle to the
    /// current one across restarts (pools do).
    pub on_start: Option<OnStart>,
}

impl SupervisorSpec {
    pub fn new(id: &str, flags: SupFlags) -> Self {
        SupervisorSpec {
            id: Rc::from(id),
            flags,
            children: Vec::new(),
            template: None,
            children_max: usize::MAX,
            on_start: None,
        }
    }

    pub fn child(mut self, spec: ChildSpec) -> Self {
        self.children.push(spec);
        self
    }

    pub fn template(mut self, template: DynamicTemplate, children_max: usize) -> Self {
        self.template = Some(template);
        self.children_max = children_max;
        self
    }

    pub fn on_start(mut self, callback: impl Fn(&Supervisor) + 'static) -> Self {
        self.on_start = Some(Rc::new(callback));
        self
    }

    pub fn check(&self) -> Result<(), SpecError> {
        check_specs(&self.flags, &self.children, self.template.as_ref())
    }

    /// Builds a supervisor that is not yet running; call [`Supervisor::run`].
    pub fn build(&self, env: SupervisorEnv) -> Result<Supervisor, SpecError> {
        self.check()?;
        Ok(Supervisor::from_checked(self, env))
    }

    /// This supervisor as a permanent child of another (shutdown `Infinity`).
    pub fn into_child_spec(self) -> Result<ChildSpec, SpecError> {
        self.check()?;
        let id = self.id.clone();
        let spec = Rc::new(self);
        let start: StartFn = Rc::new(move |ctx: ChildContext| -> ChildFuture {
            let supervisor = Supervisor::from_checked(&spec, ctx.env.clone());
            ctx.register_subtree(&supervisor);
            let stop = ctx.shutdown_event();
            Box::pin(async move { supervisor.run(stop).await })
        });
        Ok(ChildSpec {
            id,
            start,
            restart: Restart::Permanent,
            shutdown: Shutdown::Infinity,
            kind: ChildKind::Supervisor,
        })
    }
}

/// A supervisor running as its own task (see [`Supervisor::spawn`]).
pub struct RunningSupervisor {
    pub stop: Event,
    pub task: glommio::Task<ExitReason>,
}

/// A handle to a supervisor; cheap to clone, shard-local.
#[derive(Clone)]
pub struct Supervisor {
    inner: Rc<Inner>,
}

struct Inner {
    id: Rc<str>,
    flags: SupFlags,
    template: Option<DynamicTemplate>,
    children_max: usize,
    env: SupervisorEnv,
    state: RefCell<State>,
    mailbox: RefCell<VecDeque<ExitNotice>>,
    mailbox_waker: RefCell<Option<Waker>>,
    /// Times the strategy fired (restart events counted against intensity).
    restarts: Cell<u64>,
    stopped: Event,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Running,
    Stopping,
    Stopped,
}

struct State {
    children: Slab<Child>,
    /// Static children in start order (slots into `children`).
    order: Vec<usize>,
    window: IntensityWindow,
    phase: Phase,
    next_created: u64,
}

struct Child {
    spec: ChildSpec,
    created: u64,
    running: Option<Running>,
    generation: u64,
    restarts: u64,
    /// When the death that led to the pending restart was noticed.
    noticed_at: Option<Duration>,
    subtree: Option<Rc<RefCell<Option<Supervisor>>>>,
}

struct Running {
    generation: u64,
    shutdown: Event,
    kill: Event,
    exited: Event,
}

struct ExitNotice {
    slot: usize,
    generation: u64,
    reason: ExitReason,
}

impl Supervisor {
    fn from_checked(spec: &SupervisorSpec, env: SupervisorEnv) -> Supervisor {
        let supervisor = Supervisor {
            inner: Rc::new(Inner {
                id: spec.id.clone(),
                flags: spec.flags,
                template: spec.template.clone(),
                children_max: spec.children_max,
                env,
                state: RefCell::new(State {
                    children: Slab::new(),
                    order: Vec::with_capacity(spec.children.len()),
                    window: IntensityWindow::new(spec.flags.intensity, spec.flags.period_ms),
                    phase: Phase::Idle,
                    next_created: 0,
                }),
                mailbox: RefCell::new(VecDeque::new()),
                mailbox_waker: RefCell::new(None),
                restarts: Cell::new(0),
                stopped: Event::new(),
            }),
        };
        {
            let mut state = supervisor.inner.state.borrow_mut();
            for child_spec in &spec.children {
                let slot = insert_child(&mut state, child_spec.clone());
                state.order.push(slot);
            }
        }
        if let Some(on_start) = &spec.on_start {
            on_start(&supervisor);
        }
        supervisor
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    pub fn strategy(&self) -> Strategy {
        self.inner.flags.strategy
    }

    /// Restart events so far (each one counted against the intensity).
    pub fn restarts(&self) -> u64 {
        self.inner.restarts.get()
    }

    pub fn env(&self) -> &SupervisorEnv {
        &self.inner.env
    }

    /// Completes once the supervisor has exited (stopped or gave up).
    pub fn stopped(&self) -> EventWait {
        self.inner.stopped.wait()
    }

    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.is_set()
    }

    /// Children known to the supervisor (running or waiting to be restarted).
    pub fn child_count(&self) -> usize {
        self.inner.state.borrow().children.len()
    }

    pub fn running_count(&self) -> usize {
        let state = self.inner.state.borrow();
        state
            .children
            .iter()
            .filter(|(_, child)| child.running.is_some())
            .count()
    }

    /// The key of a static child by id.
    pub fn child_key(&self, id: &str) -> Option<ChildKey> {
        let state = self.inner.state.borrow();
        state.order.iter().find_map(|&slot| {
            let child = &state.children[slot];
            (&*child.spec.id == id).then_some(ChildKey {
                slot,
                created: child.created,
            })
        })
    }

    /// Keys of every child, static ones in start order first.
    pub fn child_keys(&self) -> Vec<ChildKey> {
        let state = self.inner.state.borrow();
        state
            .children
            .iter()
            .map(|(slot, child)| ChildKey {
                slot,
                created: child.created,
            })
            .collect()
    }

    /// How many times this child has been restarted.
    pub fn child_restarts(&self, key: ChildKey) -> Option<u64> {
        self.with_child(key, |child| child.restarts)
    }

    pub fn is_child_running(&self, key: ChildKey) -> bool {
        self.with_child(key, |child| child.running.is_some())
            .unwrap_or(false)
    }

    /// The supervisor handle of a running child that is itself a supervisor.
    pub fn child_supervisor(&self, key: ChildKey) -> Option<Supervisor> {
        self.with_child(key, |child| {
            child
                .subtree
                .as_ref()
                .and_then(|subtree| subtree.borrow().clone())
        })
        .flatten()
    }

    fn with_child<T>(&self, key: ChildKey, f: impl FnOnce(&Child) -> T) -> Option<T> {
        let state = self.inner.state.borrow();
        state
            .children
            .get(key.slot)
            .filter(|child| child.created == key.created)
            .map(f)
    }

    /// Starts a dynamic child (simple_one_for_one) with the template's restart
    /// and shutdown policy. The child runs at once.
    pub fn start_child(&self, start: StartFn) -> Result<ChildKey, SupervisorError> {
        let template = self
            .inner
            .template
            .as_ref()
            .ok_or(SupervisorError::NotDynamic)?;
        let slot = {
            let mut state = self.inner.state.borrow_mut();
            if matches!(state.phase, Phase::Stopping | Phase::Stopped) {
                return Err(SupervisorError::Stopping(self.inner.id.to_string()));
            }
            if state.children.len() >= self.inner.children_max {
                return Err(SupervisorError::Full {
                    id: self.inner.id.to_string(),
                    max: self.inner.children_max,
                });
            }
            let spec = ChildSpec {
                id: template.id.clone(),
                start,
                restart: template.restart,
                shutdown: template.shutdown,
                kind: template.kind,
            };
            insert_child(&mut state, spec)
        };
        let created = self.inner.state.borrow().children[slot].created;
        self.spawn_child(slot);
        Ok(ChildKey { slot, created })
    }

    /// Stops a child by its shutdown policy and forgets it (dynamic) or keeps
    /// its spec without restarting it (static), as OTP's `terminate_child`.
    pub async fn terminate_child(&self, key: ChildKey) -> Result<(), SupervisorError> {
        let (running, shutdown) = {
            let mut state = self.inner.state.borrow_mut();
            let child = state
                .children
                .get_mut(key.slot)
                .filter(|child| child.created == key.created)
                .ok_or(SupervisorError::NoSuchChild)?;
            (child.running.take(), child.spec.shutdown)
        };
        if let Some(running) = running {
            stop_child(&self.inner.env, &running, shutdown).await;
        }
        if self.inner.template.is_some() {
            let mut state = self.inner.state.borrow_mut();
            if state
                .children
                .get(key.slot)
                .is_some_and(|child| child.created == key.created)
            {
                state.children.remove(key.slot);
            }
        }
        Ok(())
    }

    /// Kills a running child as a crash would: it exits with `Killed` and the
    /// strategy decides what happens next. Returns false if it is not running.
    pub fn kill_child(&self, key: ChildKey) -> bool {
        let kill = self.with_child(key, |child| child.running.as_ref().map(|r| r.kill.clone()));
        match kill.flatten() {
            Some(kill) => {
                kill.set();
                true
            }
            None => false,
        }
    }

    /// Runs the supervisor as its own task on this shard. Set `stop` to stop
    /// it; await `task` for its exit reason.
    pub fn spawn(&self) -> RunningSupervisor {
        let stop = Event::new();
        let runner = self.clone();
        let signal = stop.clone();
        RunningSupervisor {
            stop,
            task: glommio::spawn_local(async move { runner.run(signal).await }),
        }
    }

    /// Runs the supervisor until `stop` is set (exit `Shutdown`) or its restart
    /// intensity is exceeded (exit `MaxIntensity`). Children are stopped in
    /// reverse start order either way. If this future is dropped instead, every
    /// child is killed, as linked processes die with their supervisor.
    pub async fn run(&self, stop: Event) -> ExitReason {
        let mut guard = KillChildrenOnDrop {
            supervisor: Some(self.clone()),
        };
        let static_slots = {
            let mut state = self.inner.state.borrow_mut();
            state.phase = Phase::Running;
            state.order.clone()
        };
        for slot in static_slots {
            self.spawn_child(slot);
        }

        let reason = loop {
            let next = NextEvent {
                inner: &self.inner,
                stop: stop.wait(),
            }
            .await;
            match next {
                Next::Stop => {
                    self.terminate_all().await;
                    break ExitReason::Shutdown;
                }
                Next::Exit(notice) => {
                    if !self.handle_exit(notice).await {
                        tracing::error!(
                            supervisor = %self.inner.id,
                            intensity = self.inner.flags.intensity,
                            period_ms = self.inner.flags.period_ms,
                            "restart intensity exceeded; stopping children and escalating"
                        );
                        self.terminate_all().await;
                        break ExitReason::MaxIntensity;
                    }
                }
            }
        };
        self.inner.state.borrow_mut().phase = Phase::Stopped;
        self.inner.mailbox.borrow_mut().clear();
        guard.supervisor = None;
        self.inner.stopped.set();
        reason
    }

    /// Handles one exit. Returns false when the intensity is exceeded.
    async fn handle_exit(&self, notice: ExitNotice) -> bool {
        let now = self.inner.env.clock.now();
        let dynamic = self.inner.template.is_some();
        {
            let mut state = self.inner.state.borrow_mut();
            let Some(child) = state.children.get_mut(notice.slot) else {
                return true;
            };
            match &child.running {
                Some(running) if running.generation == notice.generation => {}
                _ => return true, // a child that was already replaced or stopped
            }
            child.running = None;
            let restart = match child.spec.restart {
                Restart::Permanent => true,
                Restart::Transient => notice.reason.is_abnormal(),
                Restart::Temporary => false,
            };
            if notice.reason.is_abnormal() {
                tracing::warn!(supervisor = %self.inner.id, child = %child.spec.id,
                    reason = %notice.reason, restart, "child exited abnormally");
            } else {
                tracing::debug!(supervisor = %self.inner.id, child = %child.spec.id,
                    reason = %notice.reason, "child exited");
            }
            if !restart {
                if dynamic || child.spec.restart == Restart::Temporary {
                    remove_child(&mut state, notice.slot);
                }
                return true;
            }
            if !state.window.add_restart(now) {
                return false;
            }
        }
        self.inner.restarts.set(self.inner.restarts.get() + 1);

        let to_restart: Vec<usize> = match self.inner.flags.strategy {
            Strategy::OneForOne | Strategy::SimpleOneForOne => vec![notice.slot],
            Strategy::OneForAll => {
                let order = self.inner.state.borrow().order.clone();
                self.terminate_group(&order).await;
                order
            }
            Strategy::RestForOne => {
                let order = self.inner.state.borrow().order.clone();
                let position = order
                    .iter()
                    .position(|&slot| slot == notice.slot)
                    .unwrap_or(0);
                let rest = order[position..].to_vec();
                self.terminate_group(&rest[1..]).await;
                rest
            }
        };
        // Temporary children stopped as part of a group are not restarted.
        let survivors: Vec<usize> = {
            let state = self.inner.state.borrow();
            to_restart
                .into_iter()
                .filter(|&slot| state.children.contains(slot))
                .collect()
        };
        for slot in survivors {
            {
                let mut state = self.inner.state.borrow_mut();
                let child = &mut state.children[slot];
                child.restarts += 1;
                child.noticed_at = Some(now);
            }
            self.inner.env.stats.count_restart();
            self.spawn_child(slot);
        }
        true
    }

    /// Stops the running children among `slots` in reverse order and drops the
    /// temporary ones (OTP `terminate_children`).
    async fn terminate_group(&self, slots: &[usize]) {
        for &slot in slots.iter().rev() {
            let taken = {
                let mut state = self.inner.state.borrow_mut();
                match state.children.get_mut(slot) {
                    Some(child) => child.running.take().map(|r| (r, child.spec.shutdown)),
                    None => None,
                }
            };
            if let Some((running, shutdown)) = taken {
                stop_child(&self.inner.env, &running, shutdown).await;
            }
            let mut state = self.inner.state.borrow_mut();
            if state
                .children
                .get(slot)
                .is_some_and(|child| child.spec.restart == Restart::Temporary)
            {
                remove_child(&mut state, slot);
            }
        }
    }

    /// Stops every child: static ones one by one in reverse start order,
    /// dynamic ones all at once under one timer (OTP `terminate_dynamic_children`).
    async fn terminate_all(&self) {
        self.inner.state.borrow_mut().phase = Phase::Stopping;
        if self.inner.template.is_none() {
            let order = self.inner.state.borrow().order.clone();
            self.terminate_group(&order).await;
            return;
        }
        let (running, shutdown): (Vec<Running>, Shutdown) = {
            let mut state = self.inner.state.borrow_mut();
            let shutdown = self
                .inner
                .template
                .as_ref()
                .map_or(Shutdown::BrutalKill, |t| t.shutdown);
            let running = state
                .children
                .iter_mut()
                .filter_map(|(_, child)| child.running.take())
                .collect();
            state.children.clear();
            (running, shutdown)
        };
        for child in &running {
            match shutdown {
                Shutdown::BrutalKill => child.kill.set(),
                Shutdown::TimeoutMs(_) | Shutdown::Infinity => child.shutdown.set(),
            }
        }
        let all_exited = async {
            for child in &running {
                child.exited.wait().await;
            }
        };
        if let Shutdown::TimeoutMs(ms) = shutdown {
            let timer = self
                .inner
                .env
                .clock
                .sleep(Duration::from_millis(u64::from(ms)));
            let in_time = future::or(
                async {
                    all_exited.await;
                    true
                },
                async {
                    timer.await;
                    false
                },
            )
            .await;
            if !in_time {
                for child in &running {
                    child.kill.set();
                }
            }
        }
        for child in &running {
            child.exited.wait().await;
        }
    }

    fn spawn_child(&self, slot: usize) {
        let (start, ctx, running_events, noticed_at) = {
            let mut state = self.inner.state.borrow_mut();
            let child = &mut state.children[slot];
            child.generation += 1;
            let running = Running {
                generation: child.generation,
                shutdown: Event::new(),
                kill: Event::new(),
                exited: Event::new(),
            };
            if let Some(subtree) = &child.subtree {
                *subtree.borrow_mut() = None;
            }
            let ctx = ChildContext {
                id: child.spec.id.clone(),
                shutdown: running.shutdown.clone(),
                env: self.inner.env.clone(),
                subtree: child.subtree.clone(),
            };
            let events = (
                running.generation,
                running.kill.clone(),
                running.exited.clone(),
            );
            child.running = Some(running);
            (
                child.spec.start.clone(),
                ctx,
                events,
                child.noticed_at.take(),
            )
        };
        let (generation, kill, exited) = running_events;
        // The start function runs outside any borrow: it may build a nested
        // supervisor or call back into handles it holds.
        let child_future = start(ctx);
        let supervisor = Rc::downgrade(&self.inner);
        let env = self.inner.env.clone();
        glommio::spawn_local(async move {
            if let Some(noticed) = noticed_at {
                env.stats
                    .record_duration(env.clock.now().saturating_sub(noticed));
            }
            let reason = Contained {
                future: Some(catch_panic(child_future)),
                kill: kill.wait(),
            }
            .await;
            exited.set();
            post_exit(&supervisor, slot, generation, reason);
        })
        .detach();
    }

    /// The live tree under this supervisor.
    pub fn tree(&self) -> TreeNode {
        self.tree_as(self.inner.id.to_string(), 0, true)
    }

    fn tree_as(&self, id: String, own_restarts: u64, running: bool) -> TreeNode {
        let state = self.inner.state.borrow();
        let dynamic = self.inner.template.is_some();
        let mut children = Vec::new();
        let mut visit = |child: &Child| {
            let subtree = child
                .subtree
                .as_ref()
                .and_then(|subtree| subtree.borrow().clone());
            match subtree {
                Some(nested) if child.running.is_some() => {
                    children.push(nested.tree_as(child.spec.id.to_string(), child.restarts, true))
                }
                // Dynamic workers are summarised by `child_count`; a pool of
                // thousands of sessions would drown the tree otherwise.
                _ if dynamic && child.spec.kind == ChildKind::Worker => {}
                _ => children.push(TreeNode {
                    id: child.spec.id.to_string(),
                    kind: child.spec.kind,
                    strategy: None,
                    restart: child.spec.restart,
                    running: child.running.is_some(),
                    restarts: child.restarts,
                    children_restarted: 0,
                    child_count: 0,
                    children: Vec::new(),
                }),
            }
        };
        if dynamic {
            state.children.iter().for_each(|(_, child)| visit(child));
        } else {
            state
                .order
                .iter()
                .for_each(|&slot| visit(&state.children[slot]));
        }
        TreeNode {
            id,
            kind: ChildKind::Supervisor,
            strategy: Some(self.inner.flags.strategy.as_str()),
            restart: Restart::Permanent,
            running,
            restarts: own_restarts,
            children_restarted: self.inner.restarts.get(),
            child_count: state.children.len(),
            children,
        }
    }
}

fn insert_child(state: &mut State, spec: ChildSpec) -> usize {
    let created = state.next_created;
    state.next_created += 1;
    let subtree = (spec.kind == ChildKind::Supervisor).then(|| Rc::new(RefCell::new(None)));
    state.children.insert(Child {
        spec,
        created,
        running: None,
        generation: 0,
        restarts: 0,
        noticed_at: None,
        subtree,
    })
}

fn remove_child(state: &mut State, slot: usize) {
    if state.children.contains(slot) {
        state.children.remove(slot);
    }
    state.order.retain(|&s| s != slot);
}

fn post_exit(supervisor: &Weak<Inner>, slot: usize, generation: u64, reason: ExitReason) {
    let Some(inner) = supervisor.upgrade() else {
        return;
    };
    if inner.stopped.is_set() {
        return;
    }
    inner.mailbox.borrow_mut().push_back(ExitNotice {
        slot,
        generation,
        reason,
    });
    let waker = inner.mailbox_waker.borrow_mut().take();
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// Asks a child to stop by its policy and waits until it has exited.
async fn stop_child(env: &SupervisorEnv, running: &Running, shutdown: Shutdown) {
    match shutdown {
        Shutdown::BrutalKill => running.kill.set(),
        Shutdown::Infinity => running.shutdown.set(),
        Shutdown::TimeoutMs(ms) => {
            running.shutdown.set();
            let timer = env.clock.sleep(Duration::from_millis(u64::from(ms)));
            let exited = running.exited.wait();
            let in_time = future::or(
                async {
                    exited.await;
                    true
                },
                async {
                    timer.await;
                    false
                },
            )
            .await;
            if !in_time {
                running.kill.set();
            }
        }
    }
    running.exited.wait().await;
}

enum Next {
    Stop,
    Exit(ExitNotice),
}

/// The supervisor's receive: a stop request wins over queued exits.
struct NextEvent<'a> {
    inner: &'a Inner,
    stop: EventWait,
}

impl Future for NextEvent<'_> {
    type Output = Next;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Next> {
        let this = self.get_mut();
        if this.stop.poll_set(cx).is_ready() {
            return Poll::Ready(Next::Stop);
        }
        if let Some(notice) = this.inner.mailbox.borrow_mut().pop_front() {
            return Poll::Ready(Next::Exit(notice));
        }
        *this.inner.mailbox_waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Runs a child's future so that neither a panic nor a kill escapes: a panic
/// becomes `ExitReason::Panic`, a kill drops the future and gives `Killed`.
struct Contained {
    future: Option<CatchPanic<ChildFuture>>,
    kill: EventWait,
}

impl Future for Contained {
    type Output = ExitReason;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ExitReason> {
        let this = self.get_mut();
        if this.kill.poll_set(cx).is_ready() {
            drop_contained(this.future.take());
            return Poll::Ready(ExitReason::Killed);
        }
        let Some(child) = this.future.as_mut() else {
            return Poll::Ready(ExitReason::Killed);
        };
        match Pin::new(child).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(outcome) => {
                drop_contained(this.future.take());
                Poll::Ready(outcome.unwrap_or_else(ExitReason::Panic))
            }
        }
    }
}

/// A killed child's destructor may panic too; that must not reach the shard.
fn drop_contained(future: Option<CatchPanic<ChildFuture>>) {
    if let Some(future) = future {
        let _ = catch_unwind(AssertUnwindSafe(move || drop(future)));
    }
}

struct KillChildrenOnDrop {
    supervisor: Option<Supervisor>,
}

impl Drop for KillChildrenOnDrop {
    fn drop(&mut self) {
        let Some(supervisor) = self.supervisor.take() else {
            return;
        };
        let kills: Vec<Event> = {
            let Ok(mut state) = supervisor.inner.state.try_borrow_mut() else {
                return;
            };
            state.phase = Phase::Stopped;
            state
                .children
                .iter_mut()
                .filter_map(|(_, child)| child.running.take().map(|r| r.kill))
                .collect()
        };
        for kill in kills {
            kill.set();
        }
        supervisor.inner.stopped.set();
    }
}
