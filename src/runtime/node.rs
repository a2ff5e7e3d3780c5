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
use crate::server::ServerFactory;
use crate::transport::stdio::StdioLink;

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
const DRAIN_GRACE: Duration = Duration::from_secs(2);

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

enum NodeCommand {
    Drain,
    ToShard(ShardId, ShardControl),
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
            });
        }

        let listeners = node.await_ready(&events_rx)?;
        let (commands_tx, commands_rx) = bounded(64);
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
        Ok(NodeHandle {
            commands: commands_tx,
            observer: observer_rx,
            thread: Some(thread),
            listeners,
            shards,
        })
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
                },
                default(tick) => {}
            }
        }
    }

    fn on_event(&mut self, event: ShardEvent, state: &mut Stopping, drain_deadline: Duration) {
        match event {
            ShardEvent::Exited { shard, exit } => {
                self.slots[shard.index()].running = false;
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
                tracing::error!(%shard, ?exit, "shard died; restarting it");
                if let Err(error) = self.restart_shard(shard, &exit) {
                    tracing::error!(%error, "node giving up");
                    state.failure = Some(error);
                    self.begin_drain(state, drain_deadline);
                }
            }
            ShardEvent::Listening { .. } => {
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
