//! The node: the main side of the process. It resolves listen addresses,
//! starts one shard thread per core, watches them, restarts a dead shard on
//! the same core (rewiring its mesh channels, so the other shards never
//! notice), and drains on request. With a stdio session, the node lives as
//! long as that session: when it ends, the node drains.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender};

use crate::config::Config;
use crate::ids::ShardId;
use crate::mesh;
use crate::protocol::request_state::StateKey;
use crate::server::{Change, ChangeLog, ServerError, ServerFactory};
use crate::transport::stdio::StdioLink;

use super::shard::{
    self, ChangeReply, Fault, ShardControl, ShardEvent, ShardExit, ShardReport, ShardStart,
};

/// Shard events waiting for the node loop.
const SHARD_EVENTS_CAPACITY: usize = 4_096;
/// Events kept for observers (tests, the binary); older ones are dropped.
const OBSERVER_EVENTS_CAPACITY: usize = 4_096;
/// Commands waiting for one shard's control worker.
const SHARD_CONTROL_CAPACITY: usize = 256;
/// How long a start may take before `Node::start` reports the shards that are not up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the node waits for a shard to answer a query or a fault.
const SHARD_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra time past the drain deadline before the node stops waiting for shards.
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// Commands (drain, queries, admin scrapes) waiting for the node loop.
const NODE_COMMANDS_CAPACITY: usize = 256;
/// Definitions (by kind and key) the node's change log may hold; a change
/// that would add another is refused. Each key holds one entry however
/// often it changes.
pub const CHANGE_LOG_KEYS_MAX: usize = 4_096;
/// Changes one `NodeHandle::change` call may carry.
pub const CHANGES_PER_CALL_MAX: usize = 1_024;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot reserve {kind} address {addr}: {source}")]
    Reserve {
        kind: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot start shard thread {shard}: {source}")]
    Spawn {
        shard: ShardId,
        source: std::io::Error,
    },
    #[error("shard {shard} failed to start: {reason}")]
    ShardStart { shard: ShardId, reason: String },
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error("shards did not report ready within {0:?}")]
    StartupTimeout(Duration),
    #[error(
        "shard {shard} died {restarts} times within {period_ms} ms (last: {reason}); giving up"
    )]
    ShardRestartIntensity {
        shard: ShardId,
        restarts: u32,
        period_ms: u64,
        reason: String,
    },
    #[error("shards still running {0:?} after the drain deadline")]
    DrainTimeout(Duration),
    #[error("the node has stopped")]
    Stopped,
    #[error("shard {0} did not answer")]
    NoAnswer(ShardId),
    #[error("no shard {0}")]
    NoSuchShard(ShardId),
    #[error("cannot start the admin listener: {0}")]
    Admin(std::io::Error),
    #[error("definition change refused: {0}")]
    Definitions(#[from] ServerError),
    #[error("shard {shard} could not apply the definition change: {error}")]
    ChangeRefused { shard: ShardId, error: ServerError },
    #[error("{count} changes in one call; at most {max}")]
    TooManyChanges { count: usize, max: usize },
    #[error("the stdio session failed: {0}")]
    Stdio(String),
}

/// What the node tells observers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    Shard(ShardEvent),
    ShardRestarted { shard: ShardId, restarts: u64 },
}

/// One listener, shared by every shard through SO_REUSEPORT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub kind: &'static str,
    pub addr: SocketAddr,
}

pub(crate) enum NodeCommand {
    Drain,
    ToShard(ShardId, ShardControl),
    /// The node's view of its shards.
    Status(Sender<NodeStatus>),
    /// Ask every running shard for its report; each answers on the sender.
    QueryAll(Sender<ShardReport>),
    /// Hold (true) or release (false) the restart of a shard.
    HoldRestarts(ShardId, bool),
    /// Keyed changes for every shard; progress goes to the sender.
    Change(Vec<(String, Change)>, Sender<ChangeReply>),
}

/// The node's view of its shards, for readiness and the admin tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// A drain has begun: the node is on its way out.
    pub draining: bool,
    /// The listeners every shard runs (`tcp`, `http`), in start order.
    pub expected_listeners: Vec<&'static str>,
    pub shards: Vec<ShardStatus>,
    /// The node's shard restart intensity (`runtime.shard_restarts_max` per
    /// `runtime.shard_restart_period_ms`).
    pub shard_restarts_max: u32,
    pub shard_restart_period_ms: u64,
}

/// One shard as the node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStatus {
    pub shard: ShardId,
    /// Its thread is running (it may still be starting its listeners).
    pub running: bool,
    /// Listeners it reported bound since it last started.
    pub listening: Vec<&'static str>,
    /// Times the node restarted it.
    pub restarts: u64,
    /// Its restart is held (see [`NodeHandle::hold_restarts`]).
    pub held: bool,
    /// Its last death to its restarted self having bound every listener
    /// again, µs, as the node saw both (None before any restart).
    pub last_recovery_us: Option<u64>,
}

impl ShardStatus {
    /// Running, and every expected listener has reported in.
    pub fn is_up(&self, expected: &[&'static str]) -> bool {
        self.running && expected.iter().all(|kind| self.listening.contains(kind))
    }
}

/// Starts a drain from any thread.
#[derive(Clone)]
pub struct Drainer {
    commands: Sender<NodeCommand>,
}

impl Drainer {
    pub fn drain(&self) {
        let _ = self.commands.send(NodeCommand::Drain);
    }
}

/// A running node.
pub struct NodeHandle {
    commands: Sender<NodeCommand>,
    observer: Receiver<NodeEvent>,
    thread: Option<JoinHandle<Result<(), NodeError>>>,
    listeners: Vec<Listener>,
    shards: usize,
    /// Dropped with the handle, after `Drop` has drained and joined the
    /// node, so it answers (503, draining) while a drain runs.
    admin: Option<super::admin::AdminServer>,
}

impl NodeHandle {
    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    pub fn shard_count(&self) -> usize {
        self.shards
    }

    /// The HTTP listener's address, if one is configured.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.kind == "http")
            .map(|l| l.addr)
    }

    /// The TCP listener's address, if one is configured.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.kind == "tcp")
            .map(|l| l.addr)
    }

    /// The admin listener's address, if one is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.kind == "admin")
            .map(|l| l.addr)
    }

    /// The node's view of its shards.
    pub fn status(&self) -> Result<NodeStatus, NodeError> {
        let (reply, answer) = bounded(1);
        self.commands
            .send(NodeCommand::Status(reply))
            .map_err(|_| NodeError::Stopped)?;
        answer
            .recv_timeout(SHARD_ANSWER_TIMEOUT)
            .map_err(|_| NodeError::Stopped)
    }

    /// Holds the restart of `shard`: if it dies, it stays down (readiness
    /// says so) until [`release_restarts`](Self::release_restarts). For
    /// maintenance and fault experiments; a held shard that is running is
    /// untouched.
    pub fn hold_restarts(&self, shard: ShardId) -> Result<(), NodeError> {
        self.set_hold(shard, true)
    }

    /// Ends a hold; a shard that died while held is restarted now (its
    /// death counts against the node's restart intensity as usual).
    pub fn release_restarts(&self, shard: ShardId) -> Result<(), NodeError> {
        self.set_hold(shard, false)
    }

    fn set_hold(&self, shard: ShardId, hold: bool) -> Result<(), NodeError> {
        if shard.index() >= self.shards {
            return Err(NodeError::NoSuchShard(shard));
        }
        self.commands
            .send(NodeCommand::HoldRestarts(shard, hold))
            .map_err(|_| NodeError::Stopped)
    }

    /// Events since the last call (shard exits, restarts, listeners).
    pub fn events(&self) -> &Receiver<NodeEvent> {
        &self.observer
    }

    /// Starts a graceful drain; `join` waits for it to finish.
    pub fn drain(&self) {
        self.drainer().drain();
    }

    /// A handle another thread (the signal handler) can drain the node with.
    pub fn drainer(&self) -> Drainer {
        Drainer {
            commands: self.commands.clone(),
        }
    }

    /// A shard's report, gathered on that shard.
    pub fn query(&self, shard: ShardId) -> Result<ShardReport, NodeError> {
        let (reply, answer) = bounded(1);
        self.commands
            .send(NodeCommand::ToShard(shard, ShardControl::Query(reply)))
            .map_err(|_| NodeError::Stopped)?;
        answer
            .recv_timeout(SHARD_ANSWER_TIMEOUT)
            .map_err(|_| NodeError::NoAnswer(shard))
    }

    /// Injects a fault and waits until the shard has acted on it.
    pub fn inject(&self, shard: ShardId, fault: Fault) -> Result<(), NodeError> {
        let (done, acted) = bounded(1);
        self.commands
            .send(NodeCommand::ToShard(
                shard,
                ShardControl::Fault(fault, done),
            ))
            .map_err(|_| NodeError::Stopped)?;
        acted
            .recv_timeout(SHARD_ANSWER_TIMEOUT)
            .map_err(|_| NodeError::NoAnswer(shard))
    }

    /// Changes the server's definitions on every shard, as one edit per
    /// shard: each shard builds its own copy of an added definition from
    /// the change's factory, and its sessions hear `list_changed` once per
    /// list. Returns when every running shard has applied it. The node
    /// records the change, so a shard it restarts later has it too.
    ///
    /// Each addition is first built once here, on the calling thread, to
    /// check it and learn its key (so its factory must not need a shard's
    /// executor to build); a bad one refuses the whole call before any
    /// shard sees it.
    pub fn change(&self, changes: Vec<Change>) -> Result<(), NodeError> {
        if changes.len() > CHANGES_PER_CALL_MAX {
            return Err(NodeError::TooManyChanges {
                count: changes.len(),
                max: CHANGES_PER_CALL_MAX,
            });
        }
        let mut batch = Vec::with_capacity(changes.len());
        for change in changes {
            batch.push((change.key()?, change));
        }
        // Room for every reply, so no shard ever waits on this caller.
        let (done, replies) = bounded(self.shards + 2);
        self.commands
            .send(NodeCommand::Change(batch, done))
            .map_err(|_| NodeError::Stopped)?;
        let deadline = Instant::now() + SHARD_ANSWER_TIMEOUT;
        let (mut queued, mut applied) = (Vec::new(), Vec::new());
        let mut failure = None;
        loop {
            let reply = match replies.recv_deadline(deadline) {
                Ok(reply) => reply,
                // Every sender is gone: the node and each shard have answered.
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    let silent = queued.iter().find(|shard| !applied.contains(*shard));
                    return Err(NodeError::NoAnswer(silent.copied().unwrap_or(ShardId(0))));
                }
            };
            match reply {
                ChangeReply::Queued { shards, missed } => {
                    queued = shards;
                    if let Some(&shard) = missed.first() {
                        failure.get_or_insert(NodeError::NoAnswer(shard));
                    }
                }
                ChangeReply::Refused(error) => return Err(NodeError::Definitions(error)),
                ChangeReply::Applied(shard, result) => {
                    applied.push(shard);
                    if let Err(error) = result {
                        failure.get_or_insert(NodeError::ChangeRefused { shard, error });
                    }
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Waits for the node to stop (after `drain`, or when it gives up).
    pub fn join(mut self) -> Result<(), NodeError> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(NodeError::Stopped),
            None => Ok(()),
        }
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.commands.send(NodeCommand::Drain);
            let _ = thread.join();
        }
    }
}

/// Cores this process may run on (its affinity mask), in order.
pub fn available_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity
    // writes at most size_of::<cpu_set_t>() bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Binds (without listening) a SO_REUSEPORT socket on `addr`, which turns
/// port 0 into one concrete port every shard can then bind, and keeps the
/// port ours for the node's lifetime. A bound socket that never listens gets
/// no connections.
fn reserve(kind: &'static str, addr: SocketAddr) -> Result<socket2::Socket, NodeError> {
    let error = |source| NodeError::Reserve {
        kind,
        addr: addr.to_string(),
        source,
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(error)?;
    socket.set_reuse_address(true).map_err(error)?;
    socket.set_reuse_port(true).map_err(error)?;
    socket.bind(&addr.into()).map_err(error)?;
    Ok(socket)
}

/// How far the node is in stopping: since when it drains, and the error it
/// will exit with.
#[derive(Default)]
struct Stopping {
    since: Option<Instant>,
    failure: Option<NodeError>,
}

struct ShardSlot {
    control: Sender<ShardControl>,
    thread: Option<JoinHandle<()>>,
    deaths: VecDeque<Instant>,
    restarts: u64,
    running: bool,
    /// Listener kinds reported since the shard last started.
    listening: Vec<&'static str>,
    /// Restarts held by the operator.
    held: bool,
    /// Why it died, while a held restart waits.
    pending_restart: Option<ShardExit>,
    /// When the node saw it die, until it is up again.
    died_at: Option<Instant>,
    last_recovery: Option<Duration>,
}

impl ShardSlot {
    fn note_listening(&mut self, kind: &'static str) {
        if !self.listening.contains(&kind) {
            self.listening.push(kind);
        }
    }
}

struct Node {
    config: Arc<Config>,
    server: ServerFactory,
    /// Node-wide definition changes, replayed on every shard started later.
    changes: ChangeLog,
    state_key: StateKey,
    /// `[auth]`'s keys or tokens, read once here; every shard shares them.
    auth: Option<Arc<crate::auth::Policy>>,
    mesh: mesh::MeshWiring<shard::ShardMessage>,
    shards: usize,
    cpus: Vec<usize>,
    tcp: Option<SocketAddr>,
    http: Option<SocketAddr>,
    /// The stdio bridge until the shard that serves it takes it.
    stdio: Option<StdioLink>,
    /// The shard serving the stdio session: its death ends the node.
    stdio_shard: Option<ShardId>,
    /// Events that came while the node waited for its shards to start.
    deferred: Vec<ShardEvent>,
    slots: Vec<ShardSlot>,
    events_tx: Sender<ShardEvent>,
    observer: Sender<NodeEvent>,
}

impl Node {
    /// Starts every shard and returns once each reports its listeners.
    pub fn start(
        config: Config,
        server: ServerFactory,
        stdio: Option<StdioLink>,
    ) -> Result<NodeHandle, NodeError> {
        let config = Arc::new(config);
        // Before any port is taken: a bad JWKS or tokens file fails the start.
        let auth = crate::auth::Policy::load(&config.auth)?;
        let cpus = available_cpus();
        let shards = config.shard_count(cpus.len());

        let mut reservations = Vec::new();
        let mut reserve_listener =
            |kind: &'static str, text: &str| -> Result<Option<SocketAddr>, NodeError> {
                if text.is_empty() {
                    return Ok(None);
                }
                let wanted: SocketAddr = text.parse().map_err(|_| NodeError::Reserve {
                    kind,
                    addr: text.to_string(),
                    source: std::io::Error::other("not an address"),
                })?;
                let socket = reserve(kind, wanted)?;
                let bound = socket
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .unwrap_or(wanted);
                reservations.push(socket);
                Ok(Some(bound))
            };
        let tcp = reserve_listener("tcp", &config.listen.tcp)?;
        let http = reserve_listener("http", &config.listen.http)?;
        // Bound before any shard starts, so a taken port fails the start at once.
        let admin_listener = if config.listen.admin.is_empty() {
            None
        } else {
            Some(super::admin::bind(&config.listen.admin)?)
        };

        let (events_tx, events_rx) = bounded(SHARD_EVENTS_CAPACITY);
        let (observer_tx, observer_rx) = bounded(OBSERVER_EVENTS_CAPACITY);
        let (wiring, ends) = mesh::full(shards, config.runtime.mesh_channel_capacity);
        let mut node = Node {
            config: config.clone(),
            server,
            changes: ChangeLog::new(CHANGE_LOG_KEYS_MAX),
            state_key: StateKey::random(),
            auth,
            mesh: wiring,
            shards,
            cpus,
            tcp,
            http,
            stdio_shard: stdio.as_ref().map(|_| ShardId(0)),
            stdio,
            deferred: Vec::new(),
            slots: Vec::with_capacity(shards),
            events_tx,
            observer: observer_tx,
        };
        for ends in ends {
            let (control_tx, control_rx) = bounded(SHARD_CONTROL_CAPACITY);
            let thread = node.spawn_shard(ends, control_rx)?;
            node.slots.push(ShardSlot {
                control: control_tx,
                thread: Some(thread),
                deaths: VecDeque::new(),
                restarts: 0,
                running: true,
                listening: Vec::new(),
                held: false,
                pending_restart: None,
                died_at: None,
                last_recovery: None,
            });
        }

        let mut listeners = node.await_ready(&events_rx)?;
        let (commands_tx, commands_rx) = bounded(NODE_COMMANDS_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("shardmcp-node".into())
            .spawn(move || {
                let _reservations = reservations;
                node.supervise(events_rx, commands_rx)
            })
            .map_err(|source| NodeError::Spawn {
                shard: ShardId(0),
                source,
            })?;
        let mut handle = NodeHandle {
            commands: commands_tx.clone(),
            observer: observer_rx,
            thread: Some(thread),
            listeners: Vec::new(),
            shards,
            admin: None,
        };
        if let Some((listener, addr)) = admin_listener {
            // On failure `handle` drops here, which drains what started.
            handle.admin = Some(super::admin::AdminServer::start(
                listener,
                commands_tx,
                config.clone(),
            )?);
            listeners.push(Listener {
                kind: "admin",
                addr,
            });
        }
        handle.listeners = listeners;
        Ok(handle)
    }

    fn spawn_shard(
        &mut self,
        ends: mesh::ShardEnds<shard::ShardMessage>,
        control: Receiver<ShardControl>,
    ) -> Result<JoinHandle<()>, NodeError> {
        let shard = ends.shard;
        let start = ShardStart {
            shard,
            cpu: (!self.cpus.is_empty()).then(|| self.cpus[shard.index() % self.cpus.len()]),
            shards: self.shards,
            config: self.config.clone(),
            tcp: self.tcp,
            http: self.http,
            stdio: if self.stdio_shard == Some(shard) {
                self.stdio.take()
            } else {
                None
            },
            server: self.server.clone(),
            changes: self.changes.replay(),
            state_key: self.state_key.clone(),
            auth: self.auth.clone(),
            mesh: ends,
            control,
            events: self.events_tx.clone(),
        };
        let events = self.events_tx.clone();
        std::thread::Builder::new()
            .name(format!("shard-{shard}"))
            .spawn(move || {
                let exit = shard::run(start);
                let _ = events.send(ShardEvent::Exited { shard, exit });
            })
            .map_err(|source| NodeError::Spawn { shard, source })
    }

    fn await_ready(&mut self, events: &Receiver<ShardEvent>) -> Result<Vec<Listener>, NodeError> {
        let expected = usize::from(self.tcp.is_some()) + usize::from(self.http.is_some());
        let mut ready = vec![0usize; self.slots.len()];
        let mut listeners: Vec<Listener> = Vec::new();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while ready.iter().any(|&n| n < expected) {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match events.recv_timeout(remaining) {
                Ok(ShardEvent::Listening { shard, kind, addr }) => {
                    ready[shard.index()] += 1;
                    self.slots[shard.index()].note_listening(kind);
                    if !listeners.iter().any(|l| l.kind == kind) {
                        listeners.push(Listener { kind, addr });
                    }
                    let _ = self
                        .observer
                        .try_send(NodeEvent::Shard(ShardEvent::Listening {
                            shard,
                            kind,
                            addr,
                        }));
                }
                Ok(ShardEvent::Exited { shard, exit }) => {
                    self.stop_all();
                    return Err(NodeError::ShardStart {
                        shard,
                        reason: format!("{exit:?}"),
                    });
                }
                // Served once the node runs (stdin can close before every
                // listener is up).
                Ok(event @ ShardEvent::StdioEnded { .. }) => self.deferred.push(event),
                Err(_) => {
                    self.stop_all();
                    return Err(NodeError::StartupTimeout(STARTUP_TIMEOUT));
                }
            }
        }
        Ok(listeners)
    }

    fn stop_all(&self) {
        for slot in &self.slots {
            let _ = slot.control.try_send(ShardControl::Drain {
                deadline: Duration::ZERO,
            });
        }
    }

    fn supervise(
        mut self,
        events: Receiver<ShardEvent>,
        commands: Receiver<NodeCommand>,
    ) -> Result<(), NodeError> {
        let drain_deadline = Duration::from_millis(self.config.runtime.drain_deadline_ms);
        let mut state = Stopping::default();
        for event in std::mem::take(&mut self.deferred) {
            self.on_event(event, &mut state, drain_deadline);
        }
        loop {
            if state.since.is_some() && self.slots.iter().all(|slot| !slot.running) {
                self.join_threads();
                return state.failure.map_or(Ok(()), Err);
            }
            let tick = match state.since {
                Some(since) => {
                    let limit = drain_deadline + DRAIN_GRACE;
                    if since.elapsed() >= limit {
                        return Err(state.failure.unwrap_or(NodeError::DrainTimeout(limit)));
                    }
                    limit - since.elapsed()
                }
                None => Duration::from_secs(3_600),
            };
            select! {
                recv(events) -> event => {
                    let Ok(event) = event else { return Err(NodeError::Stopped) };
                    self.on_event(event, &mut state, drain_deadline);
                }
                recv(commands) -> command => match command {
                    Ok(NodeCommand::Drain) | Err(_) => self.begin_drain(&mut state, drain_deadline),
                    Ok(NodeCommand::ToShard(shard, control)) => {
                        match self.slots.get(shard.index()) {
                            Some(slot) => { let _ = slot.control.try_send(control); }
                            None => tracing::warn!(%shard, "command for a shard that does not exist"),
                        }
                    }
                    Ok(NodeCommand::Status(reply)) => {
                        let _ = reply.try_send(self.status(state.since.is_some()));
                    }
                    Ok(NodeCommand::QueryAll(reply)) => {
                        // A shard that is down has no one to answer: its
                        // absence is the answer.
                        for slot in self.slots.iter().filter(|slot| slot.running) {
                            let _ = slot.control.try_send(ShardControl::Query(reply.clone()));
                        }
                    }
                    Ok(NodeCommand::HoldRestarts(shard, hold)) => {
                        let Some(slot) = self.slots.get_mut(shard.index()) else { continue };
                        slot.held = hold;
                        let pending = if hold { None } else { slot.pending_restart.take() };
                        if let (Some(exit), None) = (pending, state.since) {
                            tracing::info!(%shard, "restart released; restarting the shard");
                            self.restart_or_give_up(shard, &exit, &mut state, drain_deadline);
                        }
                    }
                    Ok(NodeCommand::Change(batch, done)) => self.change(batch, done),
                },
                default(tick) => {}
            }
        }
    }

    /// Restarts `shard`; past the restart intensity, starts draining every
    /// shard and returns why the node gives up.
    fn restart_or_give_up(
        &mut self,
        shard: ShardId,
        exit: &ShardExit,
        state: &mut Stopping,
        drain_deadline: Duration,
    ) {
        if let Err(error) = self.restart_shard(shard, exit) {
            tracing::error!(%error, "node giving up");
            state.failure = Some(error);
            self.begin_drain(state, drain_deadline);
        }
    }

    fn status(&self, draining: bool) -> NodeStatus {
        let mut expected_listeners = Vec::new();
        if self.tcp.is_some() {
            expected_listeners.push("tcp");
        }
        if self.http.is_some() {
            expected_listeners.push("http");
        }
        NodeStatus {
            draining,
            expected_listeners,
            shards: self
                .slots
                .iter()
                .enumerate()
                .map(|(index, slot)| ShardStatus {
                    shard: ShardId(index as u16),
                    running: slot.running,
                    listening: slot.listening.clone(),
                    restarts: slot.restarts,
                    held: slot.held,
                    last_recovery_us: slot
                        .last_recovery
                        .map(|d| d.as_micros().min(u128::from(u64::MAX)) as u64),
                })
                .collect(),
            shard_restarts_max: self.config.runtime.shard_restarts_max,
            shard_restart_period_ms: self.config.runtime.shard_restart_period_ms,
        }
    }

    /// Records a node-wide change and queues it to every running shard; a
    /// shard down now is built with it when it restarts.
    fn change(&mut self, batch: Vec<(String, Change)>, done: Sender<ChangeReply>) {
        if let Err(error) = self.changes.record(&batch) {
            let _ = done.try_send(ChangeReply::Refused(error));
            return;
        }
        let changes: Vec<Change> = batch.into_iter().map(|(_, change)| change).collect();
        let (mut shards, mut missed) = (Vec::new(), Vec::new());
        for (index, slot) in self.slots.iter().enumerate() {
            let shard = ShardId(index as u16);
            if !slot.running {
                continue;
            }
            match slot
                .control
                .try_send(ShardControl::Change(changes.clone(), done.clone()))
            {
                Ok(()) => shards.push(shard),
                Err(_) => {
                    tracing::warn!(%shard, "control queue full: definition change not sent");
                    missed.push(shard);
                }
            }
        }
        let _ = done.try_send(ChangeReply::Queued { shards, missed });
    }

    fn on_event(&mut self, event: ShardEvent, state: &mut Stopping, drain_deadline: Duration) {
        match event {
            ShardEvent::Exited { shard, exit } => {
                let slot = &mut self.slots[shard.index()];
                slot.running = false;
                slot.listening.clear();
                slot.died_at = Some(Instant::now());
                // Its peers stop sending to it and fail their calls now.
                self.mesh.close_shard(shard);
                let _ = self.observer.try_send(NodeEvent::Shard(ShardEvent::Exited {
                    shard,
                    exit: exit.clone(),
                }));
                if state.since.is_some() || exit == ShardExit::Drained {
                    return;
                }
                if self.stdio_shard == Some(shard) {
                    // The stdio session died with its shard; a restarted
                    // shard could not resume it.
                    let error = NodeError::Stdio(format!("shard {shard} died ({exit:?})"));
                    tracing::error!(%error, "node giving up");
                    state.failure = Some(error);
                    self.begin_drain(state, drain_deadline);
                    return;
                }
                let slot = &mut self.slots[shard.index()];
                if slot.held {
                    tracing::error!(%shard, ?exit, "shard died; its restart is held");
                    slot.pending_restart = Some(exit);
                    return;
                }
                tracing::error!(%shard, ?exit, "shard died; restarting it");
                self.restart_or_give_up(shard, &exit, state, drain_deadline);
            }
            ShardEvent::Listening { shard, kind, .. } => {
                // Noted before observers hear of it, so a status asked after
                // the event already shows it.
                let expected = usize::from(self.tcp.is_some()) + usize::from(self.http.is_some());
                if let Some(slot) = self.slots.get_mut(shard.index()) {
                    slot.note_listening(kind);
                    if slot.listening.len() >= expected {
                        if let Some(died_at) = slot.died_at.take() {
                            slot.last_recovery = Some(died_at.elapsed());
                        }
                    }
                }
                let _ = self.observer.try_send(NodeEvent::Shard(event));
            }
            ShardEvent::StdioEnded { ref failure, .. } => {
                let _ = self.observer.try_send(NodeEvent::Shard(event.clone()));
                if state.since.is_some() {
                    return;
                }
                match failure {
                    None => tracing::info!("stdin closed and the stdio session is done"),
                    Some(reason) => {
                        tracing::error!(reason, "the stdio session failed");
                        state.failure = Some(NodeError::Stdio(reason.clone()));
                    }
                }
                // The node lives as long as its stdio session.
                self.begin_drain(state, drain_deadline);
            }
        }
    }

    fn begin_drain(&self, state: &mut Stopping, deadline: Duration) {
        if state.since.is_none() {
            tracing::info!(deadline_ms = deadline.as_millis() as u64, "draining");
            state.since = Some(Instant::now());
            self.drain_all(deadline);
        }
    }

    fn drain_all(&self, deadline: Duration) {
        for slot in self.slots.iter().filter(|slot| slot.running) {
            let _ = slot.control.try_send(ShardControl::Drain { deadline });
        }
    }

    /// Starts shard `k` again on its core with fresh mesh channels; the other
    /// shards get their new ends through their control queues.
    fn restart_shard(&mut self, shard: ShardId, exit: &ShardExit) -> Result<(), NodeError> {
        let period = Duration::from_millis(self.config.runtime.shard_restart_period_ms);
        let restarts_max = self.config.runtime.shard_restarts_max;
        {
            let slot = &mut self.slots[shard.index()];
            if let Some(thread) = slot.thread.take() {
                let _ = thread.join();
            }
            let now = Instant::now();
            while slot
                .deaths
                .front()
                .is_some_and(|&t| now.duration_since(t) > period)
            {
                slot.deaths.pop_front();
            }
            slot.deaths.push_back(now);
            if slot.deaths.len() > restarts_max as usize {
                return Err(NodeError::ShardRestartIntensity {
                    shard,
                    restarts: restarts_max,
                    period_ms: period.as_millis() as u64,
                    reason: format!("{exit:?}"),
                });
            }
        }
        let (own, peers) = self.mesh.rewire(shard);
        for (peer, ends) in peers {
            let slot = &self.slots[peer.index()];
            if slot.running {
                let _ = slot.control.try_send(ShardControl::Attach(ends));
            }
        }
        let (control_tx, control_rx) = bounded(SHARD_CONTROL_CAPACITY);
        let thread = self.spawn_shard(own, control_rx)?;
        let slot = &mut self.slots[shard.index()];
        slot.control = control_tx;
        slot.thread = Some(thread);
        slot.running = true;
        slot.listening.clear();
        slot.restarts += 1;
        let _ = self.observer.try_send(NodeEvent::ShardRestarted {
            shard,
            restarts: slot.restarts,
        });
        Ok(())
    }

    fn join_threads(&mut self) {
        for slot in &mut self.slots {
            if let Some(thread) = slot.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// Starts a node with `config`, serving what `server` builds on each shard.
pub fn start(config: Config, server: ServerFactory) -> Result<NodeHandle, NodeError> {
    Node::start(config, server, None)
}

/// Starts a node that also serves one session over `stdio` (on shard 0) and
/// lives as long as it: when the session ends (stdin closed, in-flight work
/// done), the node drains and `join` returns; `Ok` unless the session failed.
pub fn start_with_stdio(
    config: Config,
    server: ServerFactory,
    stdio: StdioLink,
) -> Result<NodeHandle, NodeError> {
    Node::start(config, server, Some(stdio))
}
