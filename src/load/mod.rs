//! `shardmcp load`: a thread-per-core MCP load generator that drives real,
//! initialized MCP sessions against any MCP server.
//!
//! - [`mix`]: the `--mix` syntax and the requests it renders.
//! - [`pacer`]: open loop (corrected for coordinated omission) and closed loop.
//! - [`http`], [`reply`], [`conn`]: the client side of Streamable HTTP and of
//!   newline-delimited JSON-RPC over TCP, on glommio sockets.
//! - [`worker`]: one executor thread's connections and sessions.
//! - [`coordinator`]: go signal, progress line, memory samples, merging.
//! - [`procs`]: spreading connections over child processes (fd limits).
//! - [`stats`], [`report`]: HDR histograms and counts; text and JSON reports.
//! - [`host`]: fd and port limits, the local server's pid and RSS.
//!
//! It speaks MCP over sockets only and knows nothing of the server's
//! internals: it imports no other part of the crate but [`crate::chaos`]
//! (`--chaos`: the admin client, schedules, classification), which itself
//! imports nothing.

pub mod conn;
pub mod coordinator;
pub mod host;
pub mod http;
pub mod mix;
pub mod pacer;
pub mod procs;
pub mod reply;
pub mod report;
pub mod stats;
pub mod worker;

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::bounded;

use self::coordinator::Coordination;
use self::mix::Mix;
use self::report::{Report, RunInfo, ServerUsage};
use self::stats::Stats;
use self::worker::{Event, Wire, WorkerPlan};

/// Most sessions one run drives.
pub const SESSIONS_MAX: u64 = 10_000_000;
/// Most connections one run opens (all processes together).
pub const CONNECTIONS_MAX: u64 = 1_000_000;
/// Most executor threads per run, and most child processes.
pub const THREADS_MAX: u64 = 1_024;
pub const PROCS_MAX: u64 = 1_024;
/// Longest warmup or measured window.
pub const DURATION_MAX: Duration = Duration::from_secs(7 * 24 * 3_600);
/// Longest executor spin before parking.
pub const SPIN_MAX: Duration = Duration::from_millis(10);
/// Request timeout bounds.
pub const TIMEOUT_MIN: Duration = Duration::from_millis(1);
pub const TIMEOUT_MAX: Duration = Duration::from_secs(3_600);
/// Events waiting for the coordinator; a worker's progress tick is dropped
/// when it is full (its setup and final reports wait instead).
const EVENTS_CAPACITY: usize = 4_096;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot resolve target {target}: {reason}")]
    Resolve { target: String, reason: String },
    #[error(transparent)]
    Mix(#[from] mix::MixError),
    #[error(transparent)]
    Host(#[from] host::HostError),
    #[error("cannot start a generator thread: {0}")]
    Spawn(std::io::Error),
    #[error("cannot start child process {index}: {source}")]
    Child { index: u64, source: std::io::Error },
    #[error("worker {worker} failed: {message}")]
    Worker { worker: usize, message: String },
    #[error("{missing} workers never reported; the run is incomplete")]
    Unfinished { missing: usize },
    #[error(transparent)]
    Stats(#[from] stats::StatsError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Which MCP transport the generator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Streamable HTTP (POST to the URL, JSON or SSE answers).
    Http,
    /// Newline-delimited JSON-RPC over TCP, one session per connection.
    Tcp,
    /// WebSocket at /ws (subprotocol `mcp`), one session per connection.
    Ws,
    /// Legacy HTTP+SSE (2024-11-05): GET /sse per session, POST /messages.
    Sse,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Tcp => "tcp",
            Transport::Ws => "ws",
            Transport::Sse => "sse",
        }
    }

    pub fn parse(text: &str) -> Result<Transport, LoadError> {
        match text {
            "http" => Ok(Transport::Http),
            "tcp" => Ok(Transport::Tcp),
            "ws" => Ok(Transport::Ws),
            "sse" => Ok(Transport::Sse),
            other => Err(LoadError::Invalid(format!(
                "--transport {other}: expected http, tcp, ws or sse"
            ))),
        }
    }

    /// Where `shardmcp serve` listens by default for this transport.
    pub fn default_target(self) -> &'static str {
        match self {
            Transport::Http => "http://127.0.0.1:8080/mcp",
            Transport::Tcp => "127.0.0.1:8081",
            Transport::Ws => "ws://127.0.0.1:8080/ws",
            Transport::Sse => "http://127.0.0.1:8080/sse",
        }
    }
}

/// Parses `--target` (`http://HOST:PORT/PATH`, `tcp://HOST:PORT` or
/// `HOST:PORT`) for `transport` and resolves it.
pub fn parse_target(text: &str, transport: Transport) -> Result<Wire, LoadError> {
    let invalid = |reason: String| LoadError::Invalid(format!("--target {text}: {reason}"));
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (Some(scheme.to_ascii_lowercase()), rest),
        None => (None, text),
    };
    match (scheme.as_deref(), transport) {
        (None, _) => {}
        (Some("http"), Transport::Http | Transport::Sse)
        | (Some("ws"), Transport::Ws)
        | (Some("tcp"), Transport::Tcp) => {}
        (Some("https" | "wss"), _) => return Err(invalid("TLS is not supported".into())),
        (Some(scheme), _) => {
            return Err(invalid(format!(
                "scheme {scheme}:// does not match --transport {}",
                transport.name()
            )))
        }
    }
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(invalid("no HOST:PORT".into()));
    }
    if transport == Transport::Tcp && !path.is_empty() && path != "/" {
        return Err(invalid("a tcp target has no path".into()));
    }
    let addr = resolve(authority).map_err(|reason| LoadError::Resolve {
        target: text.to_string(),
        reason,
    })?;
    let path = if path.is_empty() {
        match transport {
            Transport::Http => "/mcp",
            Transport::Sse => "/sse",
            Transport::Ws => "/ws",
            Transport::Tcp => "",
        }
        .to_string()
    } else {
        path.to_string()
    };
    Ok(match transport {
        Transport::Tcp => Wire::Tcp { addr },
        Transport::Sse => Wire::Sse {
            addr,
            host: authority.to_string(),
            path,
        },
        Transport::Http => Wire::Http {
            addr,
            host: authority.to_string(),
            path,
        },
        Transport::Ws => Wire::Ws {
            addr,
            host: authority.to_string(),
            path,
        },
    })
}

fn resolve(authority: &str) -> Result<SocketAddr, String> {
    if !authority.contains(':') || authority.ends_with(']') {
        return Err("a port is needed (HOST:PORT)".into());
    }
    let addrs: Vec<SocketAddr> = authority
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| "no address".to_string())
}

/// Most local addresses `--source-ips` takes.
pub const SOURCE_IPS_MAX: usize = 256;

fn wire_addr(wire: &Wire) -> SocketAddr {
    wire.addr()
}

/// `127.0.0.1,127.0.0.2` or a last-octet range `127.0.0.1-8` (IPv4), in the
/// target's address family.
pub fn parse_source_ips(
    text: &str,
    target: SocketAddr,
) -> Result<Vec<std::net::IpAddr>, LoadError> {
    let invalid = |reason: String| LoadError::Invalid(format!("--source-ips {text}: {reason}"));
    let mut ips = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = match part.rsplit_once('-') {
            Some((first, last)) if !first.contains(':') => {
                let first: std::net::Ipv4Addr = first
                    .parse()
                    .map_err(|e| invalid(format!("`{first}`: {e}")))?;
                let last: u8 = last
                    .parse()
                    .map_err(|_| invalid(format!("`{last}` is not a last octet")))?;
                if last < first.octets()[3] {
                    return Err(invalid(format!("`{part}` runs backwards")));
                }
                (first, last)
            }
            _ => {
                let ip: std::net::IpAddr = part
                    .parse()
                    .map_err(|e| invalid(format!("`{part}`: {e}")))?;
                ips.push(ip);
                continue;
            }
        };
        let [a, b, c, low] = first.octets();
        for d in low..=last {
            ips.push(std::net::Ipv4Addr::new(a, b, c, d).into());
        }
    }
    if ips.is_empty() || ips.len() > SOURCE_IPS_MAX {
        return Err(invalid(format!("give 1 to {SOURCE_IPS_MAX} addresses")));
    }
    if ips.iter().any(|ip| ip.is_ipv4() != target.is_ipv4()) {
        return Err(invalid("addresses must be of the target's family".into()));
    }
    Ok(ips)
}

/// Parses `10s`, `500ms`, `50us`, `2m`, `1h`, `1.5s` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1_000.0,
        "us" | "µs" => value / 1_000_000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3_600.0,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (us, ms, s, m, h)"
            ))
        }
    };
    if !seconds.is_finite() || seconds < 0.0 || seconds > DURATION_MAX.as_secs_f64() {
        return Err(format!("`{text}` is out of range (0 to 7 days)"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Everything one run needs, checked.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// `--target` as given (reports and child processes).
    pub target: String,
    pub transport: Transport,
    pub wire: Wire,
    pub sessions: u64,
    pub connections: u64,
    /// Executor threads, all processes together.
    pub threads: u64,
    /// Child processes; 0 chooses from the fd limit.
    pub procs: u64,
    pub rate_per_second: Option<f64>,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
    /// The `--mix` text (passed on to child processes) and its parse.
    pub mix_text: String,
    pub mix: Arc<Mix>,
    pub idle: bool,
    pub keep_sessions: bool,
    pub server_pid: Option<u32>,
    /// Local addresses to connect from (`--source-ips`).
    pub source_ips: Vec<std::net::IpAddr>,
    /// Executor spin before parking (`--spin`).
    pub spin: Duration,
    /// HTTP: any connection carries any session (`--spread-sessions`).
    pub spread_sessions: bool,
    /// This process runs slice `.0` of `.1` for a parent (`--slice K/N`).
    pub slice: Option<(u64, u64)>,
    /// `--chaos`: faults to inject during the measured window.
    pub chaos: Option<ChaosPlan>,
}

/// `--chaos SPEC --admin ADDR [--chaos-grace D]`, checked.
#[derive(Debug, Clone)]
pub struct ChaosPlan {
    pub text: String,
    pub spec: crate::chaos::spec::Spec,
    pub admin: SocketAddr,
    /// How long after a kill's answer a failure of its domain still counts
    /// as inside it (see `chaos::classify`).
    pub grace: Duration,
}

/// Longest `--chaos-grace`.
pub const CHAOS_GRACE_MAX: Duration = Duration::from_secs(600);

/// Settings as the command line gives them (unchecked).
#[derive(Debug, Clone, Default)]
pub struct LoadSettings {
    pub target: Option<String>,
    pub transport: String,
    pub sessions: u64,
    pub connections: Option<u64>,
    pub threads: Option<u64>,
    pub procs: Option<u64>,
    pub rate_per_second: Option<f64>,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
    pub mix: String,
    pub idle: bool,
    pub keep_sessions: bool,
    pub server_pid: Option<u32>,
    /// Comma-separated local addresses to connect from.
    pub source_ips: Option<String>,
    pub spin: Duration,
    pub spread_sessions: bool,
    pub slice: Option<String>,
    pub chaos: Option<String>,
    pub admin: Option<String>,
    pub chaos_grace: Duration,
}

impl LoadSpec {
    pub fn new(settings: LoadSettings) -> Result<LoadSpec, LoadError> {
        let invalid = |text: String| Err(LoadError::Invalid(text));
        let transport = Transport::parse(&settings.transport)?;
        let target = settings
            .target
            .clone()
            .unwrap_or_else(|| transport.default_target().to_string());
        let mix = Arc::new(mix::parse(&settings.mix)?);
        let sessions = settings.sessions;
        if !(1..=SESSIONS_MAX).contains(&sessions) {
            return invalid(format!("--sessions must be from 1 to {SESSIONS_MAX}"));
        }
        let connections = settings.connections.unwrap_or(sessions);
        if !(1..=CONNECTIONS_MAX).contains(&connections) {
            return invalid(format!("--connections must be from 1 to {CONNECTIONS_MAX}"));
        }
        if transport == Transport::Tcp && connections != sessions {
            return invalid(format!(
                "--transport tcp carries one session per connection: --sessions ({sessions}) and --connections ({connections}) must match (or leave --connections out)"
            ));
        }
        let threads = settings
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64));
        if !(1..=THREADS_MAX).contains(&threads) {
            return invalid(format!("--threads must be from 1 to {THREADS_MAX}"));
        }
        let procs = settings.procs.unwrap_or(0);
        if procs > PROCS_MAX {
            return invalid(format!("--procs must be at most {PROCS_MAX}"));
        }
        if let Some(rate) = settings.rate_per_second {
            if !(rate > 0.0 && rate <= pacer::RATE_PER_SECOND_MAX) {
                return invalid(
                    "--rate must be above 0 and at most 1e9 requests per second".into(),
                );
            }
        }
        if settings.duration.is_zero() {
            return invalid("--duration must be above 0".into());
        }
        if settings.spin > SPIN_MAX {
            return invalid("--spin must be at most 10ms".into());
        }
        if !(TIMEOUT_MIN..=TIMEOUT_MAX).contains(&settings.timeout) {
            return invalid("--timeout must be from 1ms to 1h".into());
        }
        let slice = match &settings.slice {
            None => None,
            Some(text) => {
                let parsed = text.split_once('/').and_then(|(k, n)| {
                    Some((k.trim().parse::<u64>().ok()?, n.trim().parse::<u64>().ok()?))
                });
                match parsed {
                    Some((k, n)) if n >= 1 && k < n && n <= PROCS_MAX => Some((k, n)),
                    _ => return invalid(format!("--slice {text}: expected K/N with K < N")),
                }
            }
        };
        let wire = parse_target(&target, transport)?;
        let source_ips = match &settings.source_ips {
            None => Vec::new(),
            Some(text) => parse_source_ips(text, wire_addr(&wire))?,
        };
        let chaos = match &settings.chaos {
            None => None,
            Some(_) if slice.is_some() => None,
            Some(_) if settings.idle => {
                return invalid("--chaos measures failures of requests; --idle sends none".into())
            }
            Some(text) => {
                let spec = crate::chaos::spec::Spec::parse(text)
                    .map_err(|error| LoadError::Invalid(error.to_string()))?;
                let admin_text = settings.admin.as_deref().unwrap_or("127.0.0.1:9090");
                let admin = resolve(admin_text).map_err(|reason| {
                    LoadError::Invalid(format!("--admin {admin_text}: {reason}"))
                })?;
                if settings.chaos_grace > CHAOS_GRACE_MAX {
                    return invalid("--chaos-grace must be at most 10m".into());
                }
                Some(ChaosPlan {
                    text: text.clone(),
                    spec,
                    admin,
                    grace: settings.chaos_grace,
                })
            }
        };
        Ok(LoadSpec {
            target,
            transport,
            wire,
            sessions,
            connections,
            threads,
            procs,
            rate_per_second: settings.rate_per_second,
            warmup: settings.warmup,
            duration: settings.duration,
            timeout: settings.timeout,
            mix_text: settings.mix,
            mix,
            idle: settings.idle,
            keep_sessions: settings.keep_sessions,
            server_pid: settings.server_pid,
            source_ips,
            spin: settings.spin,
            spread_sessions: settings.spread_sessions,
            slice,
            chaos,
        })
    }
}

/// `total` split in `parts`: the size of part `index` (the first parts
/// take one more when it does not divide).
pub fn share(total: u64, index: u64, parts: u64) -> u64 {
    total / parts + u64::from(index < total % parts)
}

/// Where part `index` of `total` split in `parts` starts.
pub fn offset(total: u64, index: u64, parts: u64) -> u64 {
    (0..index).map(|i| share(total, i, parts)).sum()
}

/// One process's share of a run (the whole run when there are no children).
#[derive(Debug, Clone, PartialEq)]
pub struct ProcShare {
    pub connections: u64,
    pub sessions: u64,
    pub threads: u64,
    /// Index of this process's first thread among all threads.
    pub first_thread: u64,
    pub threads_total: u64,
}

impl LoadSpec {
    /// Sockets the run opens: its connections, and with legacy SSE a stream
    /// per session besides.
    pub fn sockets(&self) -> u64 {
        match self.transport {
            Transport::Sse => self.connections + self.sessions,
            _ => self.connections,
        }
    }

    /// Threads per process when the run is spread over `procs` processes.
    pub fn threads_per_proc(&self, procs: u64) -> u64 {
        (self.threads / procs.max(1)).max(1)
    }

    /// Process `index` of `procs`: its connections, sessions and threads.
    pub fn proc_share(&self, index: u64, procs: u64) -> ProcShare {
        let connections = share(self.connections, index, procs);
        let sessions = share(self.sessions, index, procs);
        let per_proc = self.threads_per_proc(procs);
        // No more threads than connections (or HTTP sessions) to drive.
        let mut threads = per_proc.min(connections).max(1);
        if self.transport != Transport::Tcp {
            threads = threads.min(sessions).max(1);
        }
        ProcShare {
            connections,
            sessions,
            threads,
            first_thread: index * per_proc,
            threads_total: per_proc * procs,
        }
    }

    /// The plans of one process's threads.
    pub fn worker_plans(&self, share_: &ProcShare) -> Vec<WorkerPlan> {
        let source_ports = host::ephemeral_ports()
            .and_then(|(low, high)| Some((u16::try_from(low).ok()?, u16::try_from(high).ok()?)));
        (0..share_.threads)
            .map(|t| {
                let connections = share(share_.connections, t, share_.threads);
                let sessions = share(share_.sessions, t, share_.threads);
                let rate = self
                    .rate_per_second
                    .map(|rate| rate * connections as f64 / self.connections as f64);
                WorkerPlan {
                    index: (share_.first_thread + t) as usize,
                    threads_total: share_.threads_total as usize,
                    wire: self.wire.clone(),
                    connections: connections as usize,
                    sessions: sessions as usize,
                    mix: self.mix.clone(),
                    rate_per_second: rate,
                    warmup: self.warmup,
                    duration: self.duration,
                    timeout: self.timeout,
                    idle: self.idle,
                    keep_sessions: self.keep_sessions,
                    source_ports,
                    source_ips: self.source_ips.clone(),
                    spin_before_park: self.spin,
                    spread_sessions: self.spread_sessions,
                }
            })
            .collect()
    }

    fn info(&self, threads: u64, procs: u64) -> RunInfo {
        RunInfo {
            target: self.target.clone(),
            transport: self.transport.name().to_string(),
            sessions: self.sessions,
            connections: self.connections,
            threads,
            procs,
            rate_per_second: self.rate_per_second,
            warmup: self.warmup,
            duration: self.duration,
            timeout: self.timeout,
            mix: self
                .mix
                .operations
                .iter()
                .zip(&self.mix.weights)
                .map(|(op, weight)| (op.label.clone(), *weight))
                .collect(),
            idle: self.idle,
        }
    }
}

/// Starts this process's threads; they report on `events` and wait for a
/// message on their go channel.
/// Go channels and join handles of one process's worker threads.
type Threads = (
    Vec<crossbeam_channel::Sender<()>>,
    Vec<std::thread::JoinHandle<()>>,
);

pub(crate) fn start_threads(
    plans: Vec<WorkerPlan>,
    events: &crossbeam_channel::Sender<Event>,
) -> Result<Threads, LoadError> {
    let mut gos = Vec::with_capacity(plans.len());
    let mut handles = Vec::with_capacity(plans.len());
    for (source, plan) in plans.into_iter().enumerate() {
        let (go_tx, go_rx) = bounded(1);
        handles.push(worker::spawn(plan, source, events.clone(), go_rx).map_err(LoadError::Spawn)?);
        gos.push(go_tx);
    }
    Ok((gos, handles))
}

/// Runs the whole load and returns the report. Progress lines go to
/// `progress` (None for quiet).
pub fn run(spec: &LoadSpec, progress: Option<&mut dyn Write>) -> Result<Report, LoadError> {
    let limit = host::raise_fd_limit()?;
    host::check_ports(
        spec.sockets(),
        spec.source_ips.len().max(1) as u64,
        host::ephemeral_ports(),
    )?;
    let procs = if spec.procs == 0 {
        let per_proc = spec.threads_per_proc(1);
        host::procs_needed(spec.sockets(), per_proc, limit)
            .ok_or_else(|| {
                LoadError::Invalid(format!(
                    "RLIMIT_NOFILE ({limit}) is too low for even one connection; raise it (ulimit -n)"
                ))
            })?
            .min(PROCS_MAX)
    } else {
        spec.procs
    };
    host::check_fds(spec.sockets(), procs, spec.threads_per_proc(procs), limit)?;
    if procs > spec.connections || (spec.transport != Transport::Tcp && procs > spec.sessions) {
        return Err(LoadError::Invalid(format!(
            "--procs {procs} is more than there are connections or sessions to share"
        )));
    }

    let addr = wire_addr(&spec.wire);
    let mut memory = spec
        .server_pid
        .or_else(|| host::find_listener_pid(addr))
        .map(|pid| ServerUsage {
            pid,
            before_bytes: host::rss_bytes(pid),
            ..ServerUsage::default()
        });
    if let Some(memory) = memory.as_mut() {
        memory.sample(memory.before_bytes);
    }

    let (events_tx, events) = bounded(EVENTS_CAPACITY);
    let coordination = |sources: usize| Coordination {
        sources,
        sessions: spec.sessions,
        warmup: spec.warmup,
        duration: spec.duration,
        timeout: spec.timeout,
        operations: spec.mix.operations.len(),
        progress: None,
        memory: None,
    };
    // The schedule starts with the workers' go, its injections falling in
    // the measured window (after the warmup).
    let mut schedule: Option<crate::chaos::schedule::Running> = None;
    let mut start_chaos = || -> Result<(), LoadError> {
        if let Some(plan) = &spec.chaos {
            schedule = Some(
                crate::chaos::schedule::start(
                    &plan.spec,
                    plan.admin,
                    spec.warmup,
                    spec.duration,
                    spec.timeout.max(Duration::from_secs(30)),
                )
                .map_err(LoadError::Spawn)?,
            );
        }
        Ok(())
    };
    let (stats, threads) = if procs == 1 {
        let share_ = spec.proc_share(0, 1);
        let plans = spec.worker_plans(&share_);
        let (gos, handles) = start_threads(plans, &events_tx)?;
        drop(events_tx);
        let stats = Coordination {
            progress,
            memory: memory.as_mut(),
            ..coordination(gos.len())
        }
        .run(&events, || {
            for go in &gos {
                let _ = go.send(());
            }
            start_chaos()
        });
        // Workers waiting for a go that will not come see their channel close.
        drop(gos);
        drop(events);
        // Workers still clean up (DELETE sessions) after their final report.
        for handle in handles {
            let _ = handle.join();
        }
        (stats?, share_.threads)
    } else {
        let mut children = procs::Children::spawn(spec, procs, events_tx)?;
        let result = Coordination {
            progress,
            memory: memory.as_mut(),
            ..coordination(procs as usize)
        }
        .run(&events, || {
            children.go()?;
            start_chaos()
        });
        let threads = (0..procs).map(|k| spec.proc_share(k, procs).threads).sum();
        children.finish(result.is_err());
        (result?, threads)
    };
    let chaos = match (&spec.chaos, schedule) {
        (Some(plan), Some(running)) => {
            let kills = running.finish();
            let summary = crate::chaos::classify::summarize(
                &stats.failures,
                stats.failures_unrecorded,
                &kills,
                plan.grace.as_micros() as u64,
            );
            Some(report::ChaosReport {
                spec: plan.text.clone(),
                summary,
                kills,
            })
        }
        _ => None,
    };
    Ok(Report {
        info: spec.info(threads, procs),
        stats,
        server: memory,
        chaos,
    })
}

/// Merges statistics (exposed for tests and child processes).
pub fn merge_all<'a>(
    parts: impl IntoIterator<Item = &'a Stats>,
    operations: usize,
) -> Result<Stats, LoadError> {
    let mut total = Stats::new(operations);
    for part in parts {
        total.merge(part)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LoadSettings {
        LoadSettings {
            target: Some("http://127.0.0.1:8080/mcp".into()),
            transport: "http".into(),
            sessions: 10,
            threads: Some(2),
            warmup: Duration::ZERO,
            duration: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            mix: "ping".into(),
            ..LoadSettings::default()
        }
    }

    #[test]
    fn targets_parse_with_defaults_per_transport() {
        let wire = parse_target("http://127.0.0.1:8080", Transport::Http).unwrap();
        assert_eq!(
            wire,
            Wire::Http {
                addr: "127.0.0.1:8080".parse().unwrap(),
                host: "127.0.0.1:8080".into(),
                path: "/mcp".into()
            }
        );
        let wire = parse_target("localhost:9/x/mcp?a=1", Transport::Http).unwrap();
        assert!(
            matches!(wire, Wire::Http { ref host, ref path, .. } if host == "localhost:9" && path == "/x/mcp?a=1")
        );
        assert_eq!(
            parse_target("tcp://127.0.0.1:8081", Transport::Tcp).unwrap(),
            Wire::Tcp {
                addr: "127.0.0.1:8081".parse().unwrap()
            }
        );
        for (text, transport, needle) in [
            ("https://127.0.0.1:1/mcp", Transport::Http, "TLS"),
            ("tcp://127.0.0.1:1", Transport::Http, "does not match"),
            ("127.0.0.1", Transport::Tcp, "port"),
            ("127.0.0.1:1/x", Transport::Tcp, "no path"),
            ("http:///mcp", Transport::Http, "HOST:PORT"),
        ] {
            let error = parse_target(text, transport).unwrap_err().to_string();
            assert!(error.contains(needle), "{text}: {error}");
        }
    }

    #[test]
    fn source_addresses_take_lists_and_ranges() {
        let target: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let ips = parse_source_ips("127.0.0.1-3, 10.0.0.9", target).unwrap();
        let text: Vec<_> = ips.iter().map(|ip| ip.to_string()).collect();
        assert_eq!(text, ["127.0.0.1", "127.0.0.2", "127.0.0.3", "10.0.0.9"]);
        for bad in ["", "127.0.0.5-2", "127.0.0.1-300", "::1", "nope"] {
            assert!(parse_source_ips(bad, target).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1_500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("50us"), Ok(Duration::from_micros(50)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3_600)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1000h").is_err());
    }

    #[test]
    fn specs_refuse_what_cannot_run() {
        assert!(LoadSpec::new(settings()).is_ok());
        let refuse = |change: fn(&mut LoadSettings), needle: &str| {
            let mut s = settings();
            change(&mut s);
            let error = LoadSpec::new(s).unwrap_err().to_string();
            assert!(error.contains(needle), "{needle}: {error}");
        };
        refuse(|s| s.transport = "udp".into(), "expected http, tcp");
        refuse(
            |s| {
                s.transport = "tcp".into();
                s.target = Some("127.0.0.1:8081".into());
                s.connections = Some(3);
            },
            "one session per connection",
        );
        refuse(|s| s.sessions = 0, "--sessions");
        refuse(|s| s.connections = Some(0), "--connections");
        refuse(|s| s.rate_per_second = Some(0.0), "--rate");
        refuse(|s| s.duration = Duration::ZERO, "--duration");
        refuse(|s| s.timeout = Duration::ZERO, "--timeout");
        refuse(|s| s.mix = "pong".into(), "unknown operation");
        refuse(|s| s.slice = Some("2/2".into()), "--slice");
        refuse(|s| s.threads = Some(0), "--threads");
        refuse(|s| s.spin = Duration::from_secs(1), "--spin");
    }

    #[test]
    fn work_is_shared_out_evenly_over_processes_and_threads() {
        let mut s = settings();
        s.sessions = 15_001;
        s.connections = Some(1_001);
        s.threads = Some(4);
        s.rate_per_second = Some(1_001.0);
        let spec = LoadSpec::new(s).unwrap();
        let shares: Vec<_> = (0..2).map(|k| spec.proc_share(k, 2)).collect();
        assert_eq!(shares[0].connections + shares[1].connections, 1_001);
        assert_eq!(shares[0].sessions + shares[1].sessions, 15_001);
        assert_eq!((shares[0].threads, shares[1].threads), (2, 2));
        assert_eq!((shares[0].first_thread, shares[1].first_thread), (0, 2));
        let plans: Vec<_> = shares.iter().flat_map(|s| spec.worker_plans(s)).collect();
        assert_eq!(plans.iter().map(|p| p.connections).sum::<usize>(), 1_001);
        assert_eq!(plans.iter().map(|p| p.sessions).sum::<usize>(), 15_001);
        let rate: f64 = plans.iter().filter_map(|p| p.rate_per_second).sum();
        assert!((rate - 1_001.0).abs() < 1e-6, "{rate}");
        let indexes: Vec<_> = plans.iter().map(|p| p.index).collect();
        assert_eq!(indexes, [0, 1, 2, 3]);
        // Threads never outnumber what they drive.
        let mut s = settings();
        s.sessions = 1;
        s.connections = Some(8);
        s.threads = Some(4);
        let spec = LoadSpec::new(s).unwrap();
        assert_eq!(spec.proc_share(0, 1).threads, 1);
        assert_eq!(
            (offset(10, 0, 3), offset(10, 1, 3), offset(10, 2, 3)),
            (0, 4, 7)
        );
    }
}
