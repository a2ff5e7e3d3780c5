//! The node: the main side of the process. It resolves listen addresses,
//! starts one shard thread per core, watches them, restarts a dead shard on
//! the same core (rewiring its mesh channels, so the other shards never
//! notice), and drains on request.

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
use crate::server::ServerFactory;

use super::shard::{self, Fault, ShardControl, ShardEvent, ShardExit, ShardReport, ShardStart};

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
    state_key: StateKey,
    mesh: mesh::MeshWiring<shard::ShardMessage>,
    shards: usize,
    cpus: Vec<usize>,
    tcp: Option<SocketAddr>,
    http: Option<SocketAddr>,
    slots: Vec<ShardSlot>,
    events_tx: Sender<ShardEvent>,
    observer: Sender<NodeEvent>,
}

impl Node {
    /// Starts every shard and returns once each reports its listeners.
    pub fn start(config: Config, server: ServerFactory) -> Result<NodeHandle, NodeError> {
        let config = Arc::new(config);
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
            state_key: StateKey::random(),
            mesh: wiring,
            shards,
            cpus,
            tcp,
            http,
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
        &self,
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
            server: self.server.clone(),
            state_key: self.state_key.clone(),
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
        let mut draining_since: Option<Instant> = None;
        let mut failure: Option<NodeError> = None;
        loop {
            if draining_since.is_some() && self.slots.iter().all(|slot| !slot.running) {
                self.join_threads();
                return failure.map_or(Ok(()), Err);
            }
            let tick = match draining_since {
                Some(since) => {
                    let limit = drain_deadline + DRAIN_GRACE;
                    if since.elapsed() >= limit {
                        return Err(failure.unwrap_or(NodeError::DrainTimeout(limit)));
                    }
                    limit - since.elapsed()
                }
                None => Duration::from_secs(3_600),
            };
            select! {
                recv(events) -> event => {
                    let Ok(event) = event else { return Err(NodeError::Stopped) };
                    match event {
                        ShardEvent::Exited { shard, exit } => {
                            let slot = &mut self.slots[shard.index()];
                            slot.running = false;
                            slot.listening.clear();
                            // Its peers stop sending to it and fail their calls now.
                            self.mesh.close_shard(shard);
                            let _ = self.observer.try_send(NodeEvent::Shard(ShardEvent::Exited {
                                shard,
                                exit: exit.clone(),
                            }));
                            if draining_since.is_some() || exit == ShardExit::Drained {
                                continue;
                            }
                            let slot = &mut self.slots[shard.index()];
                            if slot.held {
                                tracing::error!(%shard, ?exit, "shard died; its restart is held");
                                slot.pending_restart = Some(exit);
                                continue;
                            }
                            tracing::error!(%shard, ?exit, "shard died; restarting it");
                            if let Some(error) = self.restart_or_give_up(shard, &exit, drain_deadline) {
                                failure = Some(error);
                                draining_since = Some(Instant::now());
                            }
                        }
                        ShardEvent::Listening { shard, kind, .. } => {
                            // Noted before observers hear of it, so a status
                            // asked after the event already shows it.
                            if let Some(slot) = self.slots.get_mut(shard.index()) {
                                slot.note_listening(kind);
                            }
                            let _ = self.observer.try_send(NodeEvent::Shard(event));
                        }
                    }
                }
                recv(commands) -> command => match command {
                    Ok(NodeCommand::Drain) | Err(_) => {
                        if draining_since.is_none() {
                            tracing::info!(deadline_ms = drain_deadline.as_millis() as u64, "draining");
                            draining_since = Some(Instant::now());
                            self.drain_all(drain_deadline);
                        }
                    }
                    Ok(NodeCommand::ToShard(shard, control)) => {
                        match self.slots.get(shard.index()) {
                            Some(slot) => { let _ = slot.control.try_send(control); }
                            None => tracing::warn!(%shard, "command for a shard that does not exist"),
                        }
                    }
                    Ok(NodeCommand::Status(reply)) => {
                        let _ = reply.try_send(self.status(draining_since.is_some()));
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
                        if let (Some(exit), None) = (pending, draining_since) {
                            tracing::info!(%shard, "restart released; restarting the shard");
                            if let Some(error) = self.restart_or_give_up(shard, &exit, drain_deadline) {
                                failure = Some(error);
                                draining_since = Some(Instant::now());
                            }
                        }
                    }
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
        drain_deadline: Duration,
    ) -> Option<NodeError> {
        let error = self.restart_shard(shard, exit).err()?;
        tracing::error!(%error, "node giving up");
        self.drain_all(drain_deadline);
        Some(error)
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
                })
                .collect(),
            shard_restarts_max: self.config.runtime.shard_restarts_max,
            shard_restart_period_ms: self.config.runtime.shard_restart_period_ms,
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
    Node::start(config, server)
}
