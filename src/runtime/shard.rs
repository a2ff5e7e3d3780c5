//! One shard: a glommio executor pinned to one core, running the shard's
//! supervision tree:
//!
//! ```text
//! shard-N (one_for_one)
//! ├── services (one_for_one): control (commands from the node)
//! ├── pools (one_for_one) ── pool-0..P-1 (simple_one_for_one) ── sessions (temporary)
//! └── listeners (one_for_one): tcp, http (transient), stdio (temporary)
//! ```
//!
//! State that must outlive a restart of the worker serving it (the registry,
//! the mesh port, the pool handles) belongs to the shard, not to a worker.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use futures_lite::future;
use glommio::channels::local_channel::{LocalReceiver, LocalSender};
use glommio::sync::{Gate, Semaphore};
use glommio::{LocalExecutorBuilder, Placement};

use crate::auth::{Caller, Guard, Policy};
use crate::config::Config;
use crate::ids::ShardId;
use crate::mesh::{Incoming, MeshPort, PeerEnds, PollPolicy, ShardEnds};
use crate::observe::MetricsSnapshot;
use crate::pool::PoolSet;
use crate::protocol::request_state::StateKey;
use crate::registry::{Registry, SessionId};
use crate::server::{Change, LiveServer, ServerError, ServerFactory};
use crate::session::tasks::TaskStore;
use crate::session::{SessionEnv, SessionLimits, SessionRegistry};
use crate::supervision::{
    panic_message, ChildContext, ChildSpec, ExitReason, RestartBuckets, RestartSummary, SpecError,
    Strategy, SupFlags, Supervisor, SupervisorEnv, SupervisorSpec, TreeNode,
};
use crate::sync::Event;
use crate::time::{SharedClock, SystemClock};
use crate::transport::http::{Answer, Exchange, Forward, HttpSessions};
use crate::transport::sockets;
use crate::transport::stdio::{self, StdioLink, StdioService};
use crate::transport::tcp::{self, TcpService, Wire};

/// What crosses the mesh between shards.
pub enum ShardMessage {
    /// The owner's answer (`None` for a notification).
    SessionReply(Option<Bytes>),
    /// The session does not exist (any more) on its owner.
    SessionUnknown,
    /// A resource changed: tell this shard's sessions that follow it.
    ResourceUpdated(String),
    /// An HTTP exchange for a session owned by the receiving shard; the call
    /// is answered with `HttpAnswer`, and a streamed answer's events follow
    /// as `StreamFrame` calls tagged `stream`, then `StreamEnd`.
    HttpForward {
        session: SessionId,
        exchange: Exchange,
        /// The requester's principal: the owner checks it against the session's.
        caller: Caller,
        stream: u64,
    },
    /// The owner's answer to `HttpForward`.
    HttpAnswer(RemoteAnswer),
    /// One event of a forwarded stream, for the shard whose connection
    /// shows it; answered `SessionReply` while that connection keeps up,
    /// `SessionUnknown` once it is gone (the owner then keeps the events
    /// for the client to resume).
    StreamFrame { stream: u64, frame: Bytes },
    /// A forwarded stream ended.
    StreamEnd { stream: u64 },
    /// End a session owned by the receiving shard (HTTP DELETE elsewhere).
    DeleteSession(SessionId, Caller),
    /// Chaos: what a full mesh channel is held full with; ignored.
    Filler,
}

/// An [`Answer`] as it crosses the mesh: a stream's events follow apart.
pub enum RemoteAnswer {
    Reply(Option<Bytes>),
    Streaming,
    Refused(&'static str, String),
    /// Refused by overload protection on the owning shard.
    Shed(crate::protect::Shed),
    UnknownSession,
}

/// Faults the node can inject into a shard (tests, and chaos later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A panic in a task no supervisor watches: it escapes and kills the shard.
    PanicShard,
    /// Kill pool `n` as a crash would; the pools supervisor restarts it empty.
    KillPool(usize),
    /// Block the shard's thread for this long, as a handler stuck in a long
    /// loop would: nothing on the shard runs, it answers no one.
    Stall(Duration),
}

/// A shard's state as seen from outside, gathered on the shard.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShardReport {
    pub shard: ShardId,
    pub sessions: usize,
    pub pool_sessions: Vec<usize>,
    pub restarts: RestartSummary,
    pub mesh_full_events: u64,
    /// HTTP requests sent to the shard owning their session.
    pub http_forwarded: u64,
    /// Tasks in the shard's task store (all sessions, until their ttl).
    pub tasks: usize,
    /// Tools the shard's server holds now (runtime changes included).
    pub tools: usize,
    pub tree: TreeNode,
    /// Requests, sessions and connections as this shard counted them.
    pub metrics: MetricsSnapshot,
    /// Messages waiting in this shard's mesh queue to each peer.
    pub mesh_queue_depth: Vec<(ShardId, usize)>,
    /// Mesh calls this shard has waiting for replies.
    pub mesh_pending_calls: usize,
    /// Restart durations, bucketed by `observe::metrics::RESTART_BUCKETS_NS`.
    pub restart_durations: RestartBuckets,
    /// SSE streams open or kept for resumption, and the bytes of history kept.
    pub event_store_streams: usize,
    pub event_store_bytes: usize,
    /// SSE connections dropped because their client read too slowly.
    pub sse_slow_clients: u64,
}

/// Commands from the node. Control traffic only: nothing on the request path.
pub enum ShardControl {
    Drain {
        deadline: Duration,
    },
    Attach(PeerEnds<ShardMessage>),
    Fault(Fault, Sender<()>),
    Query(Sender<ShardReport>),
    /// Node-wide definition changes: built and applied on this shard as one
    /// edit (its sessions hear once per list), then acknowledged.
    Change(Vec<Change>, Sender<ChangeReply>),
    /// A chaos action (see `runtime::chaos`), answered once the domain
    /// accepts work again.
    Chaos(
        crate::chaos::Kind,
        crate::chaos::Params,
        Sender<Result<crate::chaos::ChaosAnswer, super::chaos::Refusal>>,
    ),
}

/// How a node-wide change went, as the node and its shards report it.
#[derive(Debug)]
pub enum ChangeReply {
    /// The node recorded the change and queued it to these shards; those
    /// in `missed` had a full control queue (they get it when restarted).
    Queued {
        shards: Vec<ShardId>,
        missed: Vec<ShardId>,
    },
    /// The node refused the change (its change log is full).
    Refused(ServerError),
    /// A shard applied the change, or could not.
    Applied(ShardId, Result<(), ServerError>),
}

/// Why a shard's thread ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardExit {
    /// Drained on request: the node is shutting down.
    Drained,
    /// The root supervisor gave up (or stopped unasked).
    GaveUp(String),
    /// A panic escaped supervision.
    Panicked(String),
    /// The executor could not be built (core, memlock, io_uring).
    StartFailed(String),
}

/// What the node tells its observers about shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardEvent {
    Listening {
        shard: ShardId,
        kind: &'static str,
        addr: SocketAddr,
    },
    Exited {
        shard: ShardId,
        exit: ShardExit,
    },
    /// The stdio session ended: `failure` is `None` when stdin closed (or
    /// the node drained) and the session finished cleanly.
    StdioEnded {
        shard: ShardId,
        failure: Option<String>,
    },
}

/// Everything a shard thread starts from.
pub struct ShardStart {
    pub shard: ShardId,
    pub cpu: Option<usize>,
    pub shards: usize,
    pub config: Arc<Config>,
    pub tcp: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    /// The bridge to the process's stdin and stdout, on the shard that
    /// serves the stdio session.
    pub stdio: Option<StdioLink>,
    pub server: ServerFactory,
    /// Node-wide changes made since the node started, replayed on top of
    /// what the factory builds (a restarted shard matches the others).
    pub changes: Vec<Change>,
    /// Seals stateless `requestState`: one key for the whole node.
    pub state_key: StateKey,
    /// Authorization of HTTP clients, when `[auth]` is on (read once by the node).
    pub auth: Option<Arc<Policy>>,
    pub mesh: ShardEnds<ShardMessage>,
    pub control: Receiver<ShardControl>,
    pub events: Sender<ShardEvent>,
}

/// Runs one shard on the current thread until it drains, gives up or panics.
pub fn run(start: ShardStart) -> ShardExit {
    let shard = start.shard;
    let builder = match start.cpu {
        Some(cpu) => LocalExecutorBuilder::new(Placement::Fixed(cpu)),
        None => LocalExecutorBuilder::new(Placement::Unbound),
    };
    let mut builder = builder
        .name(&format!("shard-{shard}"))
        .io_memory(start.config.runtime.io_memory_bytes)
        .ring_depth(start.config.runtime.io_ring_depth);
    if start.config.runtime.spin_before_park_us > 0 {
        builder = builder.spin_before_park(Duration::from_micros(
            start.config.runtime.spin_before_park_us,
        ));
    }
    let executor = match builder.make() {
        Ok(executor) => executor,
        Err(error) => return ShardExit::StartFailed(error.to_string()),
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        executor.run(async move { run_tree(start).await })
    }));
    match result {
        Ok(exit) => exit,
        Err(payload) => {
            let released = sockets::shutdown_all();
            tracing::error!(%shard, released, "panic escaped supervision; shard sockets shut down");
            // What the executor does not drop is leaked; its sockets would
            // keep their fds for good (see `sockets::close_leaked`).
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(executor)));
            let closed = sockets::close_leaked();
            if closed > 0 {
                tracing::warn!(%shard, closed, "closed the dead shard's leaked sockets");
            }
            ShardExit::Panicked(panic_message(payload.as_ref()))
        }
    }
}

/// The shard's own state, shared by its workers; lives as long as the shard.
pub struct ShardContext {
    pub shard: ShardId,
    /// Shards in the node (this one's mesh peers are the others).
    pub shards: usize,
    pub config: Arc<Config>,
    pub clock: SharedClock,
    pub registry: Rc<SessionRegistry>,
    pub pools: Rc<PoolSet>,
    /// The shard's server definitions as they are now.
    pub server: Rc<LiveServer>,
    /// Task-augmented calls of the shard's sessions.
    pub tasks: Rc<TaskStore>,
    pub mesh: Rc<MeshPort<ShardMessage>>,
    pub drain: Event,
    pub connections: Rc<Gate>,
    /// This shard's HTTP sessions (their stream routers).
    pub http: Rc<HttpSessions>,
    /// Streams of requests this shard forwarded, by stream number.
    forwarded: RefCell<HashMap<u64, Rc<LocalSender<Bytes>>>>,
    next_stream: std::cell::Cell<u64>,
    /// HTTP requests this shard sent to their session's owner.
    forwarded_total: std::cell::Cell<u64>,
    root: RefCell<Option<Supervisor>>,
    /// What every session of the shard shares (set once the tree is built).
    sessions: RefCell<Option<Rc<SessionEnv>>>,
    stop: Event,
    draining: std::cell::Cell<bool>,
}

async fn run_tree(start: ShardStart) -> ShardExit {
    let config = start.config.clone();
    let clock = SystemClock::shared();
    let env = SupervisorEnv::new(clock.clone());
    let sessions_max = config
        .runtime
        .pools
        .saturating_mul(config.limits.sessions_per_pool_max);
    let mesh = MeshPort::with_policy(
        start.shard,
        start.shards,
        clock.clone(),
        config.runtime.mesh_pending_calls_max,
        PollPolicy {
            spin: Duration::from_micros(config.runtime.mesh_spin_us),
            park_max: Duration::from_millis(config.runtime.mesh_park_max_ms),
            batch_max: config.runtime.mesh_batch_max,
        },
    );
    let server = match (start.server)() {
        Ok(server) => {
            LiveServer::with_definitions_max(server, config.limits.definitions_per_kind_max)
        }
        Err(error) => return ShardExit::StartFailed(format!("server definition: {error}")),
    };
    // One at a time: a change this shard cannot take (its own additions
    // reached the bound) must not undo the others.
    for change in &start.changes {
        if let Err(error) = server.apply(std::slice::from_ref(change)) {
            tracing::warn!(shard = %start.shard, ?change, %error, "node-wide change not replayed");
        }
    }
    let ctx = Rc::new(ShardContext {
        shard: start.shard,
        shards: start.shards,
        config: config.clone(),
        clock: clock.clone(),
        registry: Rc::new(Registry::new(start.shard, sessions_max)),
        pools: PoolSet::new(config.runtime.pools),
        server: server.clone(),
        tasks: TaskStore::new(
            config.limits.tasks_per_shard_max,
            config.limits.tasks_per_session_max,
            Duration::from_millis(config.limits.task_ttl_ms_max),
        ),
        mesh: mesh.clone(),
        drain: Event::new(),
        connections: Rc::new(Gate::new()),
        http: Rc::new(HttpSessions::new(&config.limits, clock.clone())),
        forwarded: RefCell::new(HashMap::new()),
        next_stream: std::cell::Cell::new(0),
        forwarded_total: std::cell::Cell::new(0),
        root: RefCell::new(None),
        sessions: RefCell::new(None),
        stop: Event::new(),
        draining: std::cell::Cell::new(false),
    });
    crate::protect::install(crate::protect::Protect::new(&config, clock.clone()));
    install_mesh_handler(&ctx);
    ctx.http.set_forward(Rc::new(MeshForward {
        ctx: Rc::downgrade(&ctx),
    }));
    if let Some(policy) = &start.auth {
        ctx.http.set_auth(Guard::new(policy.clone()));
    }
    // Queues work at once; doorbells connect in the background.
    drop(mesh.connect(start.mesh));

    let sessions = Rc::new(SessionEnv {
        server,
        tasks: ctx.tasks.clone(),
        limits: SessionLimits {
            message_bytes_max: config.limits.message_bytes_max,
            page_size: config.limits.page_size,
            in_flight_max: config.limits.requests_in_flight_per_session_max,
            subscriptions_max: config.limits.subscriptions_per_session_max,
            outbox_capacity: config.limits.session_outbox_capacity,
            request_timeout: Duration::from_millis(config.limits.request_timeout_ms),
            client_request_timeout: Duration::from_millis(config.limits.client_request_timeout_ms),
            client_requests_max: config.limits.client_requests_per_session_max,
            input_rounds_max: config.limits.input_rounds_max,
            request_state_ttl: Duration::from_millis(config.limits.request_state_ttl_ms),
            tasks_max: config.limits.tasks_per_session_max,
            task_ttl_max: Duration::from_millis(config.limits.task_ttl_ms_max),
        },
        clock: clock.clone(),
        state_key: start.state_key.clone(),
        resource_updates: resource_update_hook(&ctx, start.shards),
        mailbox_capacity: config.limits.session_mailbox_capacity,
        // Each listener gets a copy labelled with its own transport.
        transport: "none",
        records: Rc::new(crate::session::SessionRecords::new(
            sessions_max,
            Duration::from_millis(config.limits.http_session_idle_ms),
            clock.clone(),
        )),
        resume_wait: Duration::from_millis(config.limits.session_resume_wait_ms),
    });
    ctx.http.set_records(sessions.records.clone());
    *ctx.sessions.borrow_mut() = Some(sessions.clone());
    let root = match build_tree(
        &ctx,
        &sessions,
        start.tcp,
        start.http,
        start.stdio,
        start.control,
        start.events,
    ) {
        Ok(spec) => spec,
        Err(error) => return ShardExit::StartFailed(format!("invalid supervision tree: {error}")),
    };
    let root = match root.build(env) {
        Ok(root) => root,
        Err(error) => return ShardExit::StartFailed(format!("invalid supervision tree: {error}")),
    };
    *ctx.root.borrow_mut() = Some(root.clone());
    let reason = root.run(ctx.stop.clone()).await;
    if ctx.draining.get() {
        ShardExit::Drained
    } else {
        ShardExit::GaveUp(reason.to_string())
    }
}

fn build_tree(
    ctx: &Rc<ShardContext>,
    sessions: &Rc<SessionEnv>,
    tcp: Option<SocketAddr>,
    http: Option<SocketAddr>,
    stdio: Option<StdioLink>,
    control: Receiver<ShardControl>,
    events: Sender<ShardEvent>,
) -> Result<SupervisorSpec, SpecError> {
    let sup = &ctx.config.supervision;
    let service_flags =
        SupFlags::new(Strategy::OneForOne).intensity(sup.service_intensity, sup.service_period_ms);

    let control_ctx = ctx.clone();
    let control_worker = ChildSpec::worker("control", move |child| {
        control_loop(control_ctx.clone(), control.clone(), child)
    });
    let mut services = SupervisorSpec::new("services", service_flags)
        .child(control_worker)
        .child(ChildSpec::worker("protect", |child| async move {
            if let Some(protect) = crate::protect::current() {
                protect.run(child.shutdown_requested()).await;
            }
            ExitReason::Shutdown
        }));
    if http.is_some() {
        let sweep_ctx = ctx.clone();
        services = services.child(ChildSpec::worker("http-sweeper", move |child| {
            sweep_http(sweep_ctx.clone(), child)
        }));
        let idle_ctx = ctx.clone();
        services = services.child(ChildSpec::worker("http-idle", move |child| {
            sweep_idle_connections(idle_ctx.clone(), child)
        }));
    }

    let mut listeners = SupervisorSpec::new("listeners", service_flags);
    // One cap over all the shard's listeners.
    let permits = Rc::new(Semaphore::new(crate::protect::connections_per_shard(
        &ctx.config,
        ctx.shards,
    ) as u64));
    let wires = [
        tcp.map(|addr| (addr, Wire::NewlineJson)),
        http.map(|addr| (addr, Wire::Http(ctx.http.clone()))),
    ];
    for (addr, wire) in wires.into_iter().flatten() {
        let shard = ctx.shard;
        let kind = wire.name();
        let events = events.clone();
        let service = Rc::new(TcpService {
            wire,
            allowed_hosts: ctx.config.listen.allowed_hosts.clone(),
            registry: ctx.registry.clone(),
            pools: ctx.pools.clone(),
            sessions: Rc::new(SessionEnv {
                transport: kind,
                ..SessionEnv::clone(sessions)
            }),
            limits: ctx.config.limits.clone(),
            listen_backlog: ctx.config.listen.backlog as i32,
            clock: ctx.clock.clone(),
            drain: ctx.drain.clone(),
            drain_deadline: Duration::from_millis(ctx.config.runtime.drain_deadline_ms),
            connections: ctx.connections.clone(),
            permits: permits.clone(),
            on_listening: Rc::new(move |addr| {
                let _ = events.send(ShardEvent::Listening { shard, kind, addr });
            }),
        });
        listeners = listeners.child(tcp::listener_spec(addr, service));
    }
    if let Some(link) = stdio {
        let shard = ctx.shard;
        let service = Rc::new(StdioService {
            registry: ctx.registry.clone(),
            pools: ctx.pools.clone(),
            sessions: Rc::new(SessionEnv {
                transport: "stdio",
                ..SessionEnv::clone(sessions)
            }),
            limits: ctx.config.limits.clone(),
            clock: ctx.clock.clone(),
            drain: ctx.drain.clone(),
            drain_deadline: Duration::from_millis(ctx.config.runtime.drain_deadline_ms),
            connections: ctx.connections.clone(),
            on_end: Rc::new(move |failure| {
                let _ = events.send(ShardEvent::StdioEnded { shard, failure });
            }),
        });
        listeners = listeners.child(stdio::session_spec(link, service));
    }

    Ok(SupervisorSpec::new(
        &format!("shard-{}", ctx.shard),
        SupFlags::new(Strategy::OneForOne).intensity(sup.shard_intensity, sup.shard_period_ms),
    )
    .child(services.into_child_spec()?)
    .child(ctx.pools.supervisor_spec(&ctx.config)?)
    .child(listeners.into_child_spec()?))
}

/// A resource change reaches this shard's sessions at once and every other
/// shard's through the mesh (best effort: a full queue drops it, counted).
fn resource_update_hook(ctx: &Rc<ShardContext>, shards: usize) -> crate::session::UpdateHook {
    let weak = Rc::downgrade(ctx);
    Rc::new(move |uri: &str| {
        let Some(ctx) = weak.upgrade() else { return };
        ctx.server.resource_updated(uri);
        for peer in (0..shards)
            .map(|index| ShardId(index as u16))
            .filter(|&peer| peer != ctx.shard)
        {
            if let Err(error) = ctx
                .mesh
                .try_cast(peer, ShardMessage::ResourceUpdated(uri.to_string()))
            {
                tracing::warn!(%peer, uri, %error, "resource update not sent to a shard");
            }
        }
    })
}

/// How often idle HTTP sessions and stale SSE history are looked for.
const HTTP_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Closes idle HTTP sessions and expires SSE history until asked to stop.
async fn sweep_http(ctx: Rc<ShardContext>, child: ChildContext) -> ExitReason {
    loop {
        let stop = child.shutdown_requested();
        let tick = ctx.clock.sleep(HTTP_SWEEP_INTERVAL);
        if futures_lite::future::or(
            async {
                stop.await;
                true
            },
            async {
                tick.await;
                false
            },
        )
        .await
        {
            return ExitReason::Shutdown;
        }
        ctx.http.sweep(&ctx.registry);
        if let Some(sessions) = ctx.sessions_env() {
            sessions.records.sweep();
        }
    }
}

/// Ends keep-alive HTTP connections idle past `limits.http_idle_timeout_ms`,
/// and every idle one at once when the shard drains (see `transport::sweep`).
async fn sweep_idle_connections(ctx: Rc<ShardContext>, child: ChildContext) -> ExitReason {
    let interval = crate::transport::sweep::SweptSockets::sweep_interval(Duration::from_millis(
        ctx.config.limits.http_idle_timeout_ms,
    ));
    loop {
        let stop = child.shutdown_requested();
        let tick = ctx.clock.sleep(interval);
        // Once the drain started, every sweep is a draining one: waiting
        // for the drain again would return at once.
        let draining = ctx.drain.is_set();
        let drain = ctx.drain.wait();
        let woke = futures_lite::future::or(
            async {
                stop.await;
                None
            },
            futures_lite::future::or(
                async {
                    tick.await;
                    Some(draining)
                },
                async {
                    if draining {
                        futures_lite::future::pending::<()>().await;
                    }
                    drain.await;
                    Some(true)
                },
            ),
        )
        .await;
        match woke {
            None => return ExitReason::Shutdown,
            Some(draining) => {
                ctx.http.idle().sweep(draining);
            }
        }
    }
}

/// Serves what other shards send: forwarded session requests, resource updates.
fn install_mesh_handler(ctx: &Rc<ShardContext>) {
    let weak = Rc::downgrade(ctx);
    ctx.mesh
        .set_handler(move |incoming: Incoming<ShardMessage>| {
            let Some(ctx) = weak.upgrade() else { return };
            let from = incoming.from;
            match incoming.body {
                ShardMessage::ResourceUpdated(uri) => ctx.server.resource_updated(&uri),
                ShardMessage::StreamFrame { stream, frame } => {
                    let target = ctx.forwarded.borrow().get(&stream).cloned();
                    // Never wait here: a connection that cannot take the
                    // event now is dropped, and its client resumes.
                    let delivered = target.is_some_and(|target| target.try_send(frame).is_ok());
                    if !delivered {
                        ctx.forwarded.borrow_mut().remove(&stream);
                    }
                    if let Some(reply_to) = incoming.reply_to {
                        let answer = if delivered {
                            ShardMessage::SessionReply(None)
                        } else {
                            ShardMessage::SessionUnknown
                        };
                        glommio::spawn_local(async move {
                            let _ = ctx.mesh.reply(reply_to, answer).await;
                        })
                        .detach();
                    }
                }
                ShardMessage::StreamEnd { stream } => {
                    ctx.forwarded.borrow_mut().remove(&stream);
                }
                ShardMessage::HttpForward {
                    session,
                    exchange,
                    caller,
                    stream,
                } => {
                    if let Some(reply_to) = incoming.reply_to {
                        glommio::spawn_local(serve_forwarded(
                            ctx, from, reply_to, session, exchange, caller, stream,
                        ))
                        .detach();
                    }
                }
                ShardMessage::DeleteSession(session, caller) => {
                    if let Some(reply_to) = incoming.reply_to {
                        let known =
                            ctx.registry.contains(&session) && ctx.http.admits(&session, caller);
                        if known {
                            crate::session::close(&ctx.registry, &session);
                            ctx.http.forget_session(&session);
                        }
                        glommio::spawn_local(async move {
                            let answer = if known {
                                ShardMessage::SessionReply(None)
                            } else {
                                ShardMessage::SessionUnknown
                            };
                            let _ = ctx.mesh.reply(reply_to, answer).await;
                        })
                        .detach();
                    }
                }
                // Replies are taken by the mesh itself; nothing else is sent here.
                ShardMessage::SessionReply(_)
                | ShardMessage::SessionUnknown
                | ShardMessage::HttpAnswer(_)
                | ShardMessage::Filler => {}
            }
        });
}

/// Runs, on the owning shard, an HTTP exchange another shard received. A
/// streamed answer's events go back one call each, so the pump learns when
/// that shard's connection is gone and stops (the events stay in the store
/// for the client to resume).
async fn serve_forwarded(
    ctx: Rc<ShardContext>,
    origin: ShardId,
    reply_to: crate::mesh::ReplyTo,
    session: SessionId,
    exchange: Exchange,
    caller: Caller,
    stream: u64,
) {
    let handle = match ctx.sessions_env() {
        Some(env) => {
            crate::session::find_or_resume(&ctx.registry, &ctx.pools, &env, &session).await
        }
        None => ctx.registry.get(&session),
    };
    let answer = match handle {
        Some(handle) => ctx.http.exchange(&handle, exchange, caller).await,
        None => Answer::UnknownSession,
    };
    let (remote, events) = match answer {
        Answer::Reply(reply) => (RemoteAnswer::Reply(reply), None),
        Answer::Stream(events) => (RemoteAnswer::Streaming, Some(events)),
        Answer::Refused(status, reason) => (RemoteAnswer::Refused(status, reason), None),
        Answer::Shed(shed) => (RemoteAnswer::Shed(shed), None),
        Answer::UnknownSession => (RemoteAnswer::UnknownSession, None),
    };
    if ctx
        .mesh
        .reply(reply_to, ShardMessage::HttpAnswer(remote))
        .await
        .is_err()
    {
        return;
    }
    let Some(events) = events else { return };
    let timeout = Duration::from_millis(ctx.config.runtime.mesh_call_timeout_ms);
    while let Some(frame) = events.recv().await {
        let sent = ctx
            .mesh
            .call(origin, ShardMessage::StreamFrame { stream, frame }, timeout)
            .await;
        if !matches!(sent, Ok(ShardMessage::SessionReply(_))) {
            // Dropping `events` detaches the stream on this shard.
            return;
        }
    }
    let _ = ctx
        .mesh
        .cast(origin, ShardMessage::StreamEnd { stream })
        .await;
}

/// HTTP's way to sessions on other shards: one mesh call per exchange, with
/// a streamed answer's events coming back as calls of their own.
struct MeshForward {
    ctx: std::rc::Weak<ShardContext>,
}

impl Forward for MeshForward {
    fn exchange(
        &self,
        session: SessionId,
        exchange: Exchange,
        caller: Caller,
        events: (LocalSender<Bytes>, LocalReceiver<Bytes>),
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Answer>>> {
        let ctx = self.ctx.clone();
        Box::pin(async move {
            let Some(ctx) = ctx.upgrade() else {
                return Answer::UnknownSession;
            };
            let (sender, receiver) = events;
            let stream = ctx.next_stream.get();
            ctx.next_stream.set(stream.wrapping_add(1));
            ctx.forwarded_total.set(ctx.forwarded_total.get() + 1);
            ctx.forwarded.borrow_mut().insert(stream, Rc::new(sender));
            let timeout = Duration::from_millis(ctx.config.limits.request_timeout_ms);
            let message = ShardMessage::HttpForward {
                session,
                exchange,
                caller,
                stream,
            };
            let answer = ctx.mesh.call(session.shard(), message, timeout).await;
            let answer = match answer {
                Ok(ShardMessage::HttpAnswer(RemoteAnswer::Streaming)) => {
                    return Answer::Stream(receiver)
                }
                Ok(ShardMessage::HttpAnswer(RemoteAnswer::Reply(reply))) => Answer::Reply(reply),
                Ok(ShardMessage::HttpAnswer(RemoteAnswer::Refused(status, reason))) => {
                    Answer::Refused(status, reason)
                }
                Ok(ShardMessage::HttpAnswer(RemoteAnswer::Shed(shed))) => Answer::Shed(shed),
                _ => Answer::UnknownSession,
            };
            ctx.forwarded.borrow_mut().remove(&stream);
            answer
        })
    }

    fn delete(
        &self,
        session: SessionId,
        caller: Caller,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool>>> {
        let ctx = self.ctx.clone();
        Box::pin(async move {
            let Some(ctx) = ctx.upgrade() else {
                return false;
            };
            let timeout = Duration::from_millis(ctx.config.runtime.mesh_call_timeout_ms);
            matches!(
                ctx.mesh
                    .call(
                        session.shard(),
                        ShardMessage::DeleteSession(session, caller),
                        timeout
                    )
                    .await,
                Ok(ShardMessage::SessionReply(_))
            )
        })
    }
}

impl ShardContext {
    /// What the shard's sessions share, once the tree is built.
    pub fn sessions_env(&self) -> Option<Rc<SessionEnv>> {
        self.sessions.borrow().clone()
    }

    pub fn report(&self) -> ShardReport {
        let root = self.root.borrow().clone();
        let restart_durations = root
            .as_ref()
            .map(|root| {
                root.env()
                    .stats
                    .cumulative(crate::observe::metrics::RESTART_BUCKETS_NS)
            })
            .unwrap_or_default();
        let (tree, restarts) = match root {
            Some(root) => (root.tree(), root.env().stats.summary()),
            None => (
                TreeNode {
                    id: format!("shard-{}", self.shard),
                    kind: crate::supervision::ChildKind::Supervisor,
                    strategy: None,
                    restart: crate::supervision::Restart::Permanent,
                    running: false,
                    restarts: 0,
                    children_restarted: 0,
                    child_count: 0,
                    children: Vec::new(),
                },
                RestartSummary::default(),
            ),
        };
        ShardReport {
            shard: self.shard,
            sessions: self.registry.len(),
            pool_sessions: self.pools.session_counts(),
            restarts,
            mesh_full_events: self.mesh.full_events(),
            http_forwarded: self.forwarded_total.get(),
            tasks: self.tasks.len(),
            tools: self.server.current().tools().len(),
            tree,
            metrics: crate::observe::snapshot(),
            mesh_queue_depth: (0..self.shards)
                .map(|index| ShardId(index as u16))
                .filter(|&peer| peer != self.shard)
                .map(|peer| (peer, self.mesh.queue_depth(peer)))
                .collect(),
            mesh_pending_calls: self.mesh.pending_calls(),
            event_store_streams: self.http.store().streams(),
            event_store_bytes: self.http.store().bytes(),
            sse_slow_clients: self.http.store().slow_sinks(),
            restart_durations,
        }
    }

    /// Stop accepting, let connections finish up to `deadline`, then stop the
    /// tree in reverse order.
    fn begin_drain(self: &Rc<Self>, deadline: Duration) {
        if self.draining.replace(true) {
            return;
        }
        self.drain.set();
        let ctx = self.clone();
        glommio::spawn_local(async move {
            let timer = ctx.clock.sleep(deadline);
            let connections = ctx.connections.clone();
            let finished = future::or(
                async {
                    let _ = connections.close().await;
                    true
                },
                async {
                    timer.await;
                    false
                },
            )
            .await;
            if !finished {
                tracing::warn!(shard = %ctx.shard, "drain deadline reached with connections still open");
            }
            ctx.stop.set();
        })
        .detach();
    }
}

async fn control_loop(
    ctx: Rc<ShardContext>,
    control: Receiver<ShardControl>,
    child: ChildContext,
) -> ExitReason {
    let poll = Duration::from_millis(ctx.config.runtime.control_poll_ms);
    loop {
        while let Ok(command) = control.try_recv() {
            match command {
                ShardControl::Drain { deadline } => ctx.begin_drain(deadline),
                ShardControl::Attach(ends) => ctx.mesh.attach(ends),
                ShardControl::Fault(fault, done) => {
                    inject(&ctx, fault);
                    let _ = done.send(());
                }
                ShardControl::Query(reply) => {
                    let _ = reply.send(ctx.report());
                }
                ShardControl::Change(changes, done) => {
                    let applied = ctx.server.apply(&changes).map(|_| ());
                    let _ = done.send(ChangeReply::Applied(ctx.shard, applied));
                }
                ShardControl::Chaos(kind, params, reply) => {
                    super::chaos::spawn(&ctx, kind, params, reply)
                }
            }
        }
        let tick = ctx.clock.sleep(poll);
        let stop = future::or(
            async {
                tick.await;
                false
            },
            async {
                child.shutdown_requested().await;
                true
            },
        )
        .await;
        if stop {
            return ExitReason::Shutdown;
        }
    }
}

fn inject(ctx: &Rc<ShardContext>, fault: Fault) {
    match fault {
        Fault::PanicShard => {
            tracing::warn!(shard = %ctx.shard, "injected fault: panic outside supervision");
            // glommio polls a new task at once; yield first so the node gets
            // its acknowledgement before the shard dies.
            glommio::spawn_local(async {
                futures_lite::future::yield_now().await;
                panic!("injected fault: shard panic outside supervision");
            })
            .detach();
        }
        Fault::KillPool(index) => {
            tracing::warn!(shard = %ctx.shard, pool = index, "injected fault: kill pool");
            ctx.pools.kill_pool(index);
        }
        Fault::Stall(duration) => {
            tracing::warn!(shard = %ctx.shard, ?duration, "injected fault: stall the shard");
            // After a yield, so the node gets its acknowledgement first.
            glommio::spawn_local(async move {
                futures_lite::future::yield_now().await;
                std::thread::sleep(duration);
            })
            .detach();
        }
    }
}
