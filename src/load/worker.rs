//! One generator thread: a glommio executor driving its share of the
//! connections and sessions. Phases: setup (connect, initialize every
//! session), wait for the go signal, run (warmup, then the measured window),
//! report, clean up (DELETE HTTP sessions unless kept).
//!
//! HTTP sessions live in a thread-wide table. By default each session keeps
//! to the connection that initialized it (connection k of C owns sessions
//! k, k+C, k+2C... and takes them in turn), as a client with its own
//! keep-alive connection would; with fewer sessions than connections,
//! several connections share one. With `spread_sessions` any connection
//! carries any session, round-robin, so a session's requests arrive on
//! connections the server accepted on other shards. Over TCP each
//! connection is one session.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use futures_lite::future;
use glommio::sync::Semaphore;
use glommio::{LocalExecutorBuilder, Placement};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::conn::{Conn, HttpAnswer, SourcePorts};
use super::http::RequestHead;
use super::mix::Mix;
use super::pacer::{Pacer, Ticket};
use super::reply::Outcome;
use super::stats::{ErrorKind, Stats, Tick};
use crate::transport::sweep::SweptSockets;

mod legacy;

/// io_uring registered buffer memory per generator thread: the generator
/// does no file I/O, so the minimum glommio takes.
const IO_MEMORY_BYTES: usize = 64 << 10;
/// io_uring submission queue depth of a generator thread. The kernel sizes
/// its table of armed polls from the ring (buckets = ring entries / 16), and
/// every cancel looks there first: with the default 128 and 15,000 idle
/// connections each armed for reading, a third of the generator's CPU went
/// to walking that table.
const RING_DEPTH: usize = 4_096;
/// Connections one thread opens at once during setup, so a large run does
/// not overflow the server's SYN and accept backlogs in one burst.
pub const CONNECTS_IN_FLIGHT_MAX: u64 = 256;
/// Tries for each connect and each initialization during setup.
const SETUP_ATTEMPTS_MAX: u32 = 3;
/// Pause after a failed connect before the next try.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
/// How often a thread looks for the go signal while it waits.
const GO_POLL: Duration = Duration::from_millis(1);
/// How long a connection waits when every session it could use is being
/// initialized by another connection.
const SESSION_WAIT: Duration = Duration::from_millis(1);

/// The protocol version the generator asks for.
pub const PROTOCOL_VERSION: &str = "2025-11-25";

/// Where and how to reach the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    /// Streamable HTTP: POST `path` with `Host: host`.
    Http {
        addr: SocketAddr,
        host: String,
        path: String,
    },
    /// Newline-delimited JSON-RPC, one session per connection.
    Tcp { addr: SocketAddr },
    /// WebSocket (`GET path`, subprotocol `mcp`), one session per
    /// connection, one message per text frame.
    Ws {
        addr: SocketAddr,
        host: String,
        path: String,
    },
    /// Legacy HTTP+SSE (2024-11-05): a `GET path` stream per session that
    /// names where to POST and carries every answer.
    Sse {
        addr: SocketAddr,
        host: String,
        path: String,
    },
}

impl Wire {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Wire::Http { addr, .. }
            | Wire::Tcp { addr }
            | Wire::Sse { addr, .. }
            | Wire::Ws { addr, .. } => *addr,
        }
    }
}

/// One thread's share of the run.
#[derive(Debug, Clone)]
pub struct WorkerPlan {
    /// Among all threads of all processes (seeds the mix, phases the pacer).
    pub index: usize,
    pub threads_total: usize,
    pub wire: Wire,
    pub connections: usize,
    /// HTTP sessions; over TCP it equals `connections`.
    pub sessions: usize,
    pub mix: Arc<Mix>,
    /// This thread's requests per second; None is closed loop.
    pub rate_per_second: Option<f64>,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
    /// Hold the sessions open and send nothing.
    pub idle: bool,
    /// Leave HTTP sessions on the server at the end instead of DELETEing them.
    pub keep_sessions: bool,
    /// The host's ephemeral port range; each thread binds its connections
    /// to its own slice of it (None: the kernel chooses).
    pub source_ports: Option<(u16, u16)>,
    /// Local addresses to connect from, in turn (empty: any).
    pub source_ips: Vec<std::net::IpAddr>,
    /// How long the executor spins looking for work before it parks
    /// (zero parks at once).
    pub spin_before_park: Duration,
    /// HTTP: any connection carries any session (see the module doc).
    pub spread_sessions: bool,
}

/// What workers (threads, or child processes) tell the coordinator.
#[derive(Debug)]
pub enum Event {
    /// Setup is over for `source`.
    Ready { source: usize },
    /// One second of progress (also sent during setup).
    Tick { source: usize, tick: Tick },
    /// Everything `source` measured; it sends nothing after.
    Final { source: usize, stats: Box<Stats> },
    /// `source` could not go on.
    Failed { source: usize, message: String },
}

/// Starts a worker thread. It sends `Ready`, waits for a message on `go`,
/// runs, and ends with `Final` or `Failed`.
pub fn spawn(
    plan: WorkerPlan,
    source: usize,
    events: Sender<Event>,
    go: Receiver<()>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("load-{}", plan.index))
        .spawn(move || {
            let failed = events.clone();
            let mut builder = LocalExecutorBuilder::new(Placement::Unbound)
                .name(&format!("load-{}", plan.index))
                .io_memory(IO_MEMORY_BYTES)
                .ring_depth(RING_DEPTH);
            if !plan.spin_before_park.is_zero() {
                builder = builder.spin_before_park(plan.spin_before_park);
            }
            let executor = builder.make();
            let executor = match executor {
                Ok(executor) => executor,
                Err(error) => {
                    let _ = failed.send(Event::Failed {
                        source,
                        message: format!("cannot start a glommio executor: {error}"),
                    });
                    return;
                }
            };
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                executor.run(run(plan, source, events, go))
            }));
            let message = match outcome {
                Ok(Ok(())) => return,
                Ok(Err(message)) => message,
                Err(panic) => panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".to_string()),
            };
            let _ = failed.send(Event::Failed { source, message });
        })
}

/// A one-way gate: tasks wait until it opens.
struct Latch(Semaphore);

impl Latch {
    fn new() -> Latch {
        Latch(Semaphore::new(0))
    }
    fn open(&self) {
        self.0.close();
    }
    async fn wait(&self) {
        // A closed semaphore refuses every acquire: that is the opening.
        while self.0.acquire(1).await.is_ok() {}
    }
}

/// Counts tasks down to zero, then opens its latch.
struct Countdown {
    left: Cell<usize>,
    done: Latch,
}

impl Countdown {
    fn new(count: usize) -> Countdown {
        let countdown = Countdown {
            left: Cell::new(count),
            done: Latch::new(),
        };
        if count == 0 {
            countdown.done.open();
        }
        countdown
    }
    fn finish_one(&self) {
        let left = self.left.get().saturating_sub(1);
        self.left.set(left);
        if left == 0 {
            self.done.open();
        }
    }
}

#[derive(Debug, Clone)]
enum SlotState {
    /// Needs an initialize.
    Empty,
    Initializing,
    Ready {
        /// None when the server issues no session ids.
        id: Option<Rc<str>>,
        version: Rc<str>,
    },
}

struct Slot {
    state: SlotState,
    /// Successful initializations so far (more than one: re-initialized).
    inits: u32,
    /// Legacy SSE: the task reading the session's stream (dropping it
    /// closes the stream, which ends the session), and which opening of
    /// the slot it serves.
    stream: Option<glommio::Task<()>>,
    generation: u64,
}

enum Claim {
    Use {
        slot: usize,
        id: Option<Rc<str>>,
        version: Rc<str>,
    },
    Init(usize),
}

/// When an event falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Setup,
    Warmup,
    Measured,
}

struct Worker {
    plan: WorkerPlan,
    source: usize,
    events: Sender<Event>,
    origin: Instant,
    stats: RefCell<Stats>,
    tick: RefCell<Tick>,
    slots: RefCell<Vec<Slot>>,
    /// Next session to take with `spread_sessions`.
    cursor: Cell<usize>,
    next_id: Cell<u64>,
    rng: RefCell<SmallRng>,
    pacer: RefCell<Pacer>,
    connect_permits: Semaphore,
    ports: Option<SourcePorts>,
    setup_done: Countdown,
    run_done: Countdown,
    go: Latch,
    /// Set when `go` opens (setup is over).
    running: Cell<bool>,
    cleanup: Latch,
    /// Keeps the request timeout of this thread's connections: each is
    /// timed while an exchange runs (`transport::sweep`), so no request
    /// arms a timer of its own.
    watchdog: Rc<SweptSockets>,
    /// Legacy SSE: requests waiting for their answer on a session's stream,
    /// by JSON-RPC id, with the session's slot.
    waiters: RefCell<std::collections::HashMap<u64, legacy::Waiter>>,
}

async fn run(
    plan: WorkerPlan,
    source: usize,
    events: Sender<Event>,
    go: Receiver<()>,
) -> Result<(), String> {
    let sessions = match plan.wire {
        Wire::Http { .. } | Wire::Sse { .. } => plan.sessions,
        Wire::Tcp { .. } | Wire::Ws { .. } => plan.connections,
    };
    let connections = plan.connections;
    let origin = Instant::now();
    let worker = Rc::new(Worker {
        stats: RefCell::new(Stats::new(plan.mix.operations.len())),
        tick: RefCell::new(Tick::new()),
        slots: RefCell::new(
            (0..sessions)
                .map(|_| Slot {
                    state: SlotState::Empty,
                    inits: 0,
                    stream: None,
                    generation: 0,
                })
                .collect(),
        ),
        cursor: Cell::new(0),
        next_id: Cell::new(0),
        rng: RefCell::new(SmallRng::seed_from_u64(0x5eed_0000 + plan.index as u64)),
        pacer: RefCell::new(Pacer::closed(
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
        )),
        connect_permits: Semaphore::new(CONNECTS_IN_FLIGHT_MAX),
        ports: plan.source_ports.and_then(|(low, high)| {
            SourcePorts::slice(low, high, plan.index, plan.threads_total)
                .map(|ports| ports.with_ips(plan.source_ips.clone()))
        }),
        setup_done: Countdown::new(connections),
        run_done: Countdown::new(connections),
        go: Latch::new(),
        running: Cell::new(false),
        cleanup: Latch::new(),
        watchdog: Rc::default(),
        waiters: RefCell::new(std::collections::HashMap::new()),
        plan,
        source,
        events,
        origin,
    });
    let watchdog = {
        let sockets = worker.watchdog.clone();
        let interval = SweptSockets::sweep_interval(worker.plan.timeout);
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(interval).await;
                sockets.sweep(false);
            }
        })
    };
    let tasks: Vec<_> = (0..connections)
        .map(|index| glommio::spawn_local(connection(worker.clone(), index)))
        .collect();

    // Setup, with a tick a second so the coordinator can show progress.
    let ticker = glommio::spawn_local(tick_every_second(worker.clone()));
    worker.setup_done.done.wait().await;
    worker.send_tick();
    worker.send(Event::Ready { source })?;
    loop {
        match go.try_recv() {
            Ok(()) => break,
            Err(TryRecvError::Empty) => glommio::timer::sleep(GO_POLL).await,
            Err(TryRecvError::Disconnected) => return Err("the coordinator went away".into()),
        }
    }
    let start = worker.now();
    let measure_from = start + worker.plan.warmup;
    let end = measure_from + worker.plan.duration;
    *worker.pacer.borrow_mut() = match worker.plan.rate_per_second {
        Some(rate) => {
            let phase = worker.plan.index as f64 / worker.plan.threads_total.max(1) as f64;
            Pacer::open(rate, phase, start, measure_from, end)
        }
        None => Pacer::closed(start, measure_from, end),
    };
    worker.running.set(true);
    worker.go.open();
    // This thread's CPU time over the measured window.
    let cpu_start = Rc::new(Cell::new(None));
    let cpu_sampler = {
        let cpu_start = cpu_start.clone();
        let wait = measure_from.saturating_sub(worker.now());
        glommio::spawn_local(async move {
            glommio::timer::sleep(wait).await;
            cpu_start.set(Some(super::host::thread_cpu_seconds()));
        })
    };
    worker.run_done.done.wait().await;
    let cpu_end = super::host::thread_cpu_seconds();
    drop(cpu_sampler);
    drop(ticker);
    worker.send_tick();
    let missed = worker.pacer.borrow().missed(worker.now());
    let stats = {
        let mut stats = worker.stats.borrow_mut();
        stats.missed = missed;
        stats.cpu_seconds = cpu_start
            .get()
            .map_or(0.0, |start| (cpu_end - start).max(0.0));
        stats.clone()
    };
    worker.send(Event::Final {
        source,
        stats: Box::new(stats),
    })?;
    worker.cleanup.open();
    for task in tasks {
        task.await;
    }
    drop(watchdog);
    Ok(())
}

async fn tick_every_second(worker: Rc<Worker>) {
    loop {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        worker.send_tick();
    }
}

impl Worker {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn send(&self, event: Event) -> Result<(), String> {
        self.events
            .send(event)
            .map_err(|_| "the coordinator went away".to_string())
    }

    /// Progress only: a full channel drops the tick rather than stall.
    fn send_tick(&self) {
        let tick = self.tick.borrow_mut().take();
        let _ = self.events.try_send(Event::Tick {
            source: self.source,
            tick,
        });
    }

    fn next_id(&self) -> u64 {
        let id = self.next_id.get() + 1;
        self.next_id.set(id);
        id
    }

    fn phase(&self, at: Duration) -> Phase {
        if !self.running.get() {
            return Phase::Setup;
        }
        if self.pacer.borrow().measured(at) {
            Phase::Measured
        } else {
            Phase::Warmup
        }
    }

    fn stats(&self) -> std::cell::RefMut<'_, Stats> {
        self.stats.borrow_mut()
    }

    /// Opens a connection, at most `CONNECTS_IN_FLIGHT_MAX` at once.
    async fn connect(&self) -> Result<Conn, ErrorKind> {
        let _permit = self.connect_permits.acquire_permit(1).await;
        let mut conn = Conn::connect(
            self.plan.wire.addr(),
            self.ports.as_ref(),
            self.plan.timeout,
        )
        .await?;
        conn.watch_by(&self.watchdog);
        if let Wire::Ws { host, path, .. } = &self.plan.wire {
            let upgraded = with_timeout(self.plan.timeout, conn.upgrade_websocket(host, path));
            upgraded.await.unwrap_or(Err(ErrorKind::Timeout))?;
        }
        Ok(conn)
    }

    fn record_init(&self, started: Duration, result: &Result<(), ErrorKind>, phase: Phase) {
        let latency_us = (self.now() - started).as_micros() as u64;
        let mut stats = self.stats();
        match (result, phase) {
            (Ok(()), _) => stats.record_init_ok(latency_us, phase == Phase::Measured),
            (Err(kind), Phase::Setup) => {
                *stats.errors.entry(format!("setup:{kind}")).or_insert(0) += 1;
            }
            (Err(kind), _) => {
                stats.record_init_failure(*kind, phase == Phase::Measured);
                if phase == Phase::Measured {
                    stats.record_failure_at(None);
                }
            }
        }
    }

    fn record_request(
        &self,
        op: usize,
        intended: Duration,
        result: Result<(), ErrorKind>,
        session: Option<&str>,
    ) {
        let latency = self.now().saturating_sub(intended);
        let latency_us = latency.as_micros() as u64;
        {
            let mut tick = self.tick.borrow_mut();
            match result {
                Ok(()) => {
                    tick.ok += 1;
                    tick.latency.saturating_record(latency_us.max(1));
                }
                Err(_) => tick.failed += 1,
            }
        }
        if self.phase(intended) != Phase::Measured {
            return;
        }
        let mut stats = self.stats();
        match result {
            Ok(()) => stats.record_ok(op, latency_us),
            Err(kind) => {
                stats.record_failure(op, kind);
                stats.record_failure_at(session);
            }
        }
    }

    fn count_frames(&self, at: Duration, notifications: u64, server_requests: u64) {
        if (notifications | server_requests) != 0 && self.phase(at) == Phase::Measured {
            let mut stats = self.stats();
            stats.notifications += notifications;
            stats.server_requests += server_requests;
        }
    }

    /// One exchange with a timeout; drops the connection on failure, on
    /// timeout and when the server will not reuse it. A keep-alive
    /// connection the server closed before answering is opened again and the
    /// request retried once.
    async fn http_call(
        &self,
        conn: &mut Option<Conn>,
        head: &RequestHead<'_>,
        body: &[u8],
        id: Option<u64>,
    ) -> Result<HttpAnswer, ErrorKind> {
        for attempt in 0..2 {
            if conn.is_none() {
                *conn = Some(self.connect().await?);
                if attempt > 0 || self.running.get() {
                    self.stats().reconnects += 1;
                }
            }
            let Some(open) = conn.as_mut() else {
                return Err(ErrorKind::Closed);
            };
            let (sent, received) = (open.bytes_sent, open.bytes_received);
            let reused = sent > 0;
            // The thread's watchdog keeps the timeout (see `Worker::connect`).
            let result = open.http_exchange(head, body, id).await;
            {
                let mut stats = self.stats();
                stats.bytes_sent += open.bytes_sent - sent;
                stats.bytes_received += open.bytes_received - received;
            }
            let answered_nothing = open.bytes_received == received;
            match result {
                Ok(answer) => {
                    if !answer.reusable {
                        *conn = None;
                    }
                    return Ok(answer);
                }
                Err(ErrorKind::Closed) if reused && answered_nothing && attempt == 0 => {
                    *conn = None;
                }
                Err(kind) => {
                    *conn = None;
                    return Err(kind);
                }
            }
        }
        Err(ErrorKind::Closed)
    }

    /// `initialize` then `notifications/initialized` over HTTP.
    async fn http_initialize(
        &self,
        conn: &mut Option<Conn>,
    ) -> Result<(Option<Rc<str>>, Rc<str>), ErrorKind> {
        let Wire::Http { host, path, .. } = &self.plan.wire else {
            return Err(ErrorKind::BadResponse);
        };
        let id = self.next_id();
        let body = initialize_request(id);
        let head = RequestHead {
            method: "POST",
            path,
            host,
            session: None,
            protocol_version: None,
        };
        let started = self.now();
        let answer = self.http_call(conn, &head, &body, Some(id)).await?;
        self.count_frames(started, answer.notifications, answer.server_requests);
        if answer.status != 200 {
            return Err(ErrorKind::HttpStatus(answer.status));
        }
        let version: Rc<str> = match answer.outcome {
            Some(Outcome::Result { protocol_version }) => protocol_version
                .as_deref()
                .unwrap_or(PROTOCOL_VERSION)
                .into(),
            Some(Outcome::Failed(kind)) => return Err(kind),
            None if answer.bad_body => return Err(ErrorKind::BadResponse),
            None => return Err(ErrorKind::NoResponse),
        };
        let session: Option<Rc<str>> = answer.session.as_deref().map(Rc::from);
        let head = RequestHead {
            method: "POST",
            path,
            host,
            session: session.as_deref(),
            protocol_version: Some(&version),
        };
        let answer = self.http_call(conn, &head, INITIALIZED, None).await?;
        match answer.status {
            200 | 202 | 204 => Ok((session, version)),
            404 => Err(ErrorKind::SessionNotFound),
            status => Err(ErrorKind::HttpStatus(status)),
        }
    }

    /// Initializes HTTP session `slot` (already marked Initializing).
    async fn init_slot(&self, conn: &mut Option<Conn>, slot: usize) -> Result<(), ErrorKind> {
        let started = self.now();
        let phase = self.phase(started);
        let result = self.http_initialize(conn).await;
        let mut slots = self.slots.borrow_mut();
        let entry = &mut slots[slot];
        let outcome = match result {
            Ok((id, version)) => {
                entry.state = SlotState::Ready { id, version };
                entry.inits += 1;
                if entry.inits > 1 && phase == Phase::Measured {
                    self.stats().reinitializations += 1;
                }
                Ok(())
            }
            Err(kind) => {
                entry.state = SlotState::Empty;
                Err(kind)
            }
        };
        drop(slots);
        self.record_init(started, &outcome, phase);
        outcome
    }

    /// The next session for a request on connection `conn` (`turn` counts
    /// its claims); claims an empty one for initializing. None when all it
    /// may use are being initialized by other connections.
    fn claim(&self, conn: usize, turn: &mut usize) -> Option<Claim> {
        let mut slots = self.slots.borrow_mut();
        let sessions = slots.len();
        let candidates = if self.plan.spread_sessions {
            sessions
        } else {
            usable_slots(conn, self.plan.connections, sessions)
        };
        for _ in 0..candidates {
            let index = if self.plan.spread_sessions {
                let index = self.cursor.get() % sessions.max(1);
                self.cursor.set(index + 1);
                index
            } else {
                let index = usable_slot(conn, self.plan.connections, sessions, *turn);
                *turn = turn.wrapping_add(1);
                index
            };
            match &slots[index].state {
                SlotState::Ready { id, version } => {
                    return Some(Claim::Use {
                        slot: index,
                        id: id.clone(),
                        version: version.clone(),
                    })
                }
                SlotState::Empty => {
                    slots[index].state = SlotState::Initializing;
                    return Some(Claim::Init(index));
                }
                SlotState::Initializing => {}
            }
        }
        None
    }

    /// The server forgot session `slot` (404): the next claim initializes it.
    fn forget(&self, slot: usize, id: &Option<Rc<str>>) {
        let mut slots = self.slots.borrow_mut();
        if let SlotState::Ready { id: current, .. } = &slots[slot].state {
            if current == id {
                slots[slot].state = SlotState::Empty;
            }
        }
    }
}

/// Sessions connection `conn` of `conns` initializes and deletes: `conn`,
/// `conn + conns`, ... below `sessions`.
fn owned_slots(conn: usize, conns: usize, sessions: usize) -> impl Iterator<Item = usize> {
    (conn..sessions).step_by(conns.max(1))
}

/// How many sessions connection `conn` takes requests to: those it owns,
/// or one it shares when sessions are fewer than connections.
fn usable_slots(conn: usize, conns: usize, sessions: usize) -> usize {
    if sessions >= conns {
        sessions.saturating_sub(conn).div_ceil(conns.max(1))
    } else {
        usize::from(sessions > 0)
    }
}

/// The session of connection `conn`'s claim number `turn`.
fn usable_slot(conn: usize, conns: usize, sessions: usize, turn: usize) -> usize {
    if sessions >= conns {
        conn + (turn % usable_slots(conn, conns, sessions).max(1)) * conns
    } else {
        conn % sessions.max(1)
    }
}

/// Runs `work` for at most `limit`; None on timeout.
async fn with_timeout<T>(limit: Duration, work: impl std::future::Future<Output = T>) -> Option<T> {
    future::or(async { Some(work.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}

fn initialize_request(id: u64) -> Vec<u8> {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"initialize","params":{{"protocolVersion":"{PROTOCOL_VERSION}","capabilities":{{}},"clientInfo":{{"name":"shardmcp-load","version":"{}"}}}}}}"#,
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes()
}

const INITIALIZED: &[u8] = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

/// One connection's whole life.
async fn connection(worker: Rc<Worker>, index: usize) {
    match worker.plan.wire {
        Wire::Http { .. } => http_connection(&worker, index).await,
        Wire::Tcp { .. } | Wire::Ws { .. } => tcp_connection(&worker, index).await,
        Wire::Sse { .. } => legacy::sse_connection(&worker, index).await,
    }
}

/// Opens a connection during setup, trying a few times; failures count as
/// `setup:` errors. None when every try failed (requests will try again).
async fn setup_connect(worker: &Worker) -> Option<Conn> {
    for attempt in 0..SETUP_ATTEMPTS_MAX {
        match worker.connect().await {
            Ok(opened) => return Some(opened),
            Err(kind) => {
                *worker
                    .stats()
                    .errors
                    .entry(format!("setup:{kind}"))
                    .or_insert(0) += 1;
                if attempt + 1 < SETUP_ATTEMPTS_MAX {
                    glommio::timer::sleep(RECONNECT_BACKOFF).await;
                }
            }
        }
    }
    None
}

/// Counts one session set up (or not) during setup.
fn note_setup(worker: &Worker, ready: bool) {
    let mut stats = worker.stats();
    if ready {
        stats.sessions_ready += 1;
        worker.tick.borrow_mut().sessions_ready += 1;
    } else {
        stats.sessions_failed += 1;
    }
}

async fn http_connection(worker: &Worker, index: usize) {
    // Setup: open the connection, then initialize the sessions it owns.
    let mut conn = setup_connect(worker).await;
    for slot in owned_slots(index, worker.plan.connections, worker.plan.sessions) {
        worker.slots.borrow_mut()[slot].state = SlotState::Initializing;
        let mut ready = false;
        for _ in 0..SETUP_ATTEMPTS_MAX {
            if worker.init_slot(&mut conn, slot).await.is_ok() {
                ready = true;
                break;
            }
            worker.slots.borrow_mut()[slot].state = SlotState::Initializing;
        }
        if !ready {
            worker.slots.borrow_mut()[slot].state = SlotState::Empty;
        }
        note_setup(worker, ready);
    }
    worker.setup_done.finish_one();
    worker.go.wait().await;

    if worker.plan.idle {
        idle_until_end(worker).await;
    } else {
        http_run(worker, &mut conn, index).await;
    }
    worker.run_done.finish_one();
    worker.cleanup.wait().await;
    if !worker.plan.keep_sessions {
        http_cleanup(worker, &mut conn, index).await;
    }
    if let Some(conn) = conn {
        conn.reset();
    }
}

async fn idle_until_end(worker: &Worker) {
    let end = worker.pacer.borrow().end();
    glommio::timer::sleep(end.saturating_sub(worker.now())).await;
}

async fn http_run(worker: &Worker, conn: &mut Option<Conn>, index: usize) {
    let Wire::Http { host, path, .. } = &worker.plan.wire else {
        return;
    };
    let mut body = Vec::with_capacity(256);
    let mut turn = 0usize;
    loop {
        let ticket = worker.pacer.borrow_mut().take(worker.now());
        let Ticket::Send { intended, wait } = ticket else {
            return;
        };
        if !wait.is_zero() {
            glommio::timer::sleep(wait).await;
        }
        let claim = loop {
            match worker.claim(index, &mut turn) {
                Some(claim) => break claim,
                None => glommio::timer::sleep(SESSION_WAIT).await,
            }
        };
        let (slot, session, version) = match claim {
            Claim::Use { slot, id, version } => (slot, id, version),
            Claim::Init(slot) => {
                if worker.init_slot(conn, slot).await.is_err() {
                    if conn.is_none() {
                        glommio::timer::sleep(RECONNECT_BACKOFF).await;
                    }
                    continue;
                }
                match &worker.slots.borrow()[slot].state {
                    SlotState::Ready { id, version } => (slot, id.clone(), version.clone()),
                    _ => continue,
                }
            }
        };
        let op = worker.plan.mix.pick(&mut *worker.rng.borrow_mut());
        let id = worker.next_id();
        body.clear();
        worker.plan.mix.operations[op].render(id, &mut body);
        let head = RequestHead {
            method: "POST",
            path,
            host,
            session: session.as_deref(),
            protocol_version: Some(&version),
        };
        let result = match worker.http_call(conn, &head, &body, Some(id)).await {
            Ok(answer) => {
                worker.count_frames(intended, answer.notifications, answer.server_requests);
                match (answer.status, answer.outcome) {
                    (200, Some(Outcome::Result { .. })) => Ok(()),
                    (200, Some(Outcome::Failed(kind))) => Err(kind),
                    (200, None) if answer.bad_body => Err(ErrorKind::BadResponse),
                    (200, None) => Err(ErrorKind::NoResponse),
                    (404, _) if session.is_some() => {
                        worker.forget(slot, &session);
                        Err(ErrorKind::SessionNotFound)
                    }
                    (status, _) => Err(ErrorKind::HttpStatus(status)),
                }
            }
            Err(kind) => Err(kind),
        };
        let connect_failed = result == Err(ErrorKind::Connect);
        worker.record_request(op, intended, result, session.as_deref());
        if connect_failed {
            glommio::timer::sleep(RECONNECT_BACKOFF).await;
        }
    }
}

/// DELETEs the sessions this connection owns.
async fn http_cleanup(worker: &Worker, conn: &mut Option<Conn>, index: usize) {
    let Wire::Http { host, path, .. } = &worker.plan.wire else {
        return;
    };
    for slot in owned_slots(index, worker.plan.connections, worker.plan.sessions) {
        let session = match &worker.slots.borrow()[slot].state {
            SlotState::Ready { id: Some(id), .. } => id.clone(),
            _ => continue,
        };
        let head = RequestHead {
            method: "DELETE",
            path,
            host,
            session: Some(&session),
            protocol_version: None,
        };
        // Best effort: the run is over and already reported.
        if worker.http_call(conn, &head, b"", None).await.is_err() && conn.is_none() {
            return;
        }
    }
}

/// One TCP connection = one session: connect, initialize, run; a lost
/// connection is opened and initialized again.
async fn tcp_connection(worker: &Worker, index: usize) {
    let mut conn: Option<Conn> = None;
    let mut ready = false;
    for attempt in 0..SETUP_ATTEMPTS_MAX {
        let started = worker.now();
        let result = tcp_open_session(worker, &mut conn).await;
        worker.record_init(started, &result, Phase::Setup);
        if result.is_ok() {
            ready = true;
            break;
        }
        if attempt + 1 < SETUP_ATTEMPTS_MAX {
            glommio::timer::sleep(RECONNECT_BACKOFF).await;
        }
    }
    {
        let mut stats = worker.stats();
        if ready {
            stats.sessions_ready += 1;
            worker.tick.borrow_mut().sessions_ready += 1;
        } else {
            stats.sessions_failed += 1;
        }
    }
    if ready {
        worker.slots.borrow_mut()[index].inits = 1;
    }
    worker.setup_done.finish_one();
    worker.go.wait().await;
    if worker.plan.idle {
        idle_until_end(worker).await;
    } else {
        tcp_run(worker, &mut conn, index).await;
    }
    worker.run_done.finish_one();
    worker.cleanup.wait().await;
    if let Some(conn) = conn {
        conn.reset();
    }
}

/// Connects and runs the handshake; on failure the connection is dropped.
async fn tcp_open_session(worker: &Worker, conn: &mut Option<Conn>) -> Result<(), ErrorKind> {
    *conn = None;
    let mut opened = worker.connect().await?;
    let id = worker.next_id();
    let request = initialize_request(id);
    let handshake = async {
        let (outcome, notifications, server_requests) =
            opened.line_exchange(&request, Some(id)).await?;
        opened.line_exchange(INITIALIZED, None).await?;
        Ok::<_, ErrorKind>((outcome, notifications, server_requests))
    };
    let result = with_timeout(worker.plan.timeout, handshake).await;
    {
        let mut stats = worker.stats();
        stats.bytes_sent += opened.bytes_sent;
        stats.bytes_received += opened.bytes_received;
    }
    match result {
        None => Err(ErrorKind::Timeout),
        Some(Err(kind)) => Err(kind),
        Some(Ok((Some(Outcome::Result { .. }), ..))) => {
            *conn = Some(opened);
            Ok(())
        }
        Some(Ok((Some(Outcome::Failed(kind)), ..))) => Err(kind),
        Some(Ok((None, ..))) => Err(ErrorKind::NoResponse),
    }
}

async fn tcp_run(worker: &Worker, conn: &mut Option<Conn>, index: usize) {
    let mut body = Vec::with_capacity(256);
    loop {
        let ticket = worker.pacer.borrow_mut().take(worker.now());
        let Ticket::Send { intended, wait } = ticket else {
            return;
        };
        if !wait.is_zero() {
            glommio::timer::sleep(wait).await;
        }
        if conn.is_none() {
            // The session went with its connection: a new one, initialized.
            let started = worker.now();
            let phase = worker.phase(started);
            let result = tcp_open_session(worker, conn).await;
            worker.record_init(started, &result, phase);
            if phase == Phase::Measured {
                let mut stats = worker.stats();
                stats.reconnects += 1;
                if result.is_ok() {
                    stats.reinitializations += 1;
                }
            }
            if result.is_err() {
                glommio::timer::sleep(RECONNECT_BACKOFF).await;
                continue;
            }
            worker.slots.borrow_mut()[index].inits += 1;
        }
        let Some(open) = conn.as_mut() else {
            continue;
        };
        let op = worker.plan.mix.pick(&mut *worker.rng.borrow_mut());
        let id = worker.next_id();
        body.clear();
        worker.plan.mix.operations[op].render(id, &mut body);
        let (sent, received) = (open.bytes_sent, open.bytes_received);
        // The thread's watchdog keeps the timeout (see `Worker::connect`).
        let result = open.line_exchange(&body, Some(id)).await;
        {
            let mut stats = worker.stats();
            stats.bytes_sent += open.bytes_sent - sent;
            stats.bytes_received += open.bytes_received - received;
        }
        let result = match result {
            Ok((outcome, notifications, server_requests)) => {
                worker.count_frames(intended, notifications, server_requests);
                match outcome {
                    Some(Outcome::Result { .. }) => Ok(()),
                    Some(Outcome::Failed(kind)) => Err(kind),
                    None => Err(ErrorKind::NoResponse),
                }
            }
            Err(kind) => {
                *conn = None;
                Err(kind)
            }
        };
        worker.record_request(op, intended, result, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_session_keeps_to_one_connection_and_every_session_is_used() {
        // 10 sessions over 4 connections: 0,4,8 / 1,5,9 / 2,6 / 3,7.
        let owned: Vec<Vec<usize>> = (0..4).map(|c| owned_slots(c, 4, 10).collect()).collect();
        assert_eq!(
            owned,
            [vec![0, 4, 8], vec![1, 5, 9], vec![2, 6], vec![3, 7]]
        );
        for (conn, mine) in owned.iter().enumerate() {
            assert_eq!(usable_slots(conn, 4, 10), mine.len());
            let taken: Vec<usize> = (0..6).map(|turn| usable_slot(conn, 4, 10, turn)).collect();
            let cycle: Vec<usize> = mine.iter().cycle().take(6).copied().collect();
            assert_eq!(taken, cycle, "connection {conn} takes its own in turn");
        }
        // 2 sessions over 5 connections: shared, each initialized by one.
        let owned: Vec<Vec<usize>> = (0..5).map(|c| owned_slots(c, 5, 2).collect()).collect();
        assert_eq!(owned, [vec![0], vec![1], vec![], vec![], vec![]]);
        let used: Vec<usize> = (0..5).map(|c| usable_slot(c, 5, 2, 7)).collect();
        assert_eq!(used, [0, 1, 0, 1, 0]);
        assert!((0..5).all(|c| usable_slots(c, 5, 2) == 1));
    }
}
