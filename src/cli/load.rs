//! `shardmcp load`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::load::{self, mix::DEFAULT_MIX, parse_duration, LoadError, LoadSettings, LoadSpec};

#[derive(Debug, Args)]
#[command(after_long_help = MIX_HELP)]
pub struct LoadArgs {
    /// Server to load: http://HOST:PORT/PATH for http (path defaults to
    /// /mcp) and sse (the stream's path, default /sse), HOST:PORT or
    /// tcp://HOST:PORT for tcp [default: http://127.0.0.1:8080/mcp,
    /// http://127.0.0.1:8080/sse with --transport sse, 127.0.0.1:8081 with
    /// --transport tcp].
    #[arg(long, value_name = "URL|HOST:PORT")]
    pub target: Option<String>,
    /// MCP transport: http (Streamable HTTP: POST, JSON or SSE answers,
    /// Mcp-Session-Id), sse (legacy HTTP+SSE of 2024-11-05: a GET stream
    /// per session, requests POSTed over --connections, answers on the
    /// stream), tcp (newline-delimited JSON-RPC, one session per
    /// connection), ws (WebSocket at /ws with subprotocol mcp, one session
    /// per connection, one message per text frame).
    #[arg(long, value_name = "http|sse|tcp|ws", default_value = "http")]
    pub transport: String,
    /// MCP sessions to open (initialize + notifications/initialized) and
    /// drive.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub sessions: u64,
    /// TCP connections, all processes together [default: --sessions]. Over
    /// http, sessions are shared out over the connections (keep-alive: one
    /// connection carries several sessions in turn), so there may be more
    /// sessions than connections, or fewer (connections then share them).
    /// Over sse they carry the POSTs, and each session's stream is one
    /// connection more. Over tcp it must equal --sessions.
    #[arg(long, value_name = "N")]
    pub connections: Option<u64>,
    /// Length of the measured window, e.g. 60s, 500ms, 2m.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before the measured window (not counted), e.g. 5s.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Open loop: total requests per second over all sessions, sent on
    /// schedule whether or not earlier ones were answered; latency counts
    /// from each request's scheduled time (corrected for coordinated
    /// omission). Without it: closed loop, each connection sends its next
    /// request as soon as the previous one is answered.
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
    /// Operations and their weights (syntax below, under MIX).
    #[arg(long, value_name = "SPEC", default_value = DEFAULT_MIX)]
    pub mix: String,
    /// How long one request (or connect, or initialize) may take before it
    /// counts as a timeout and its connection is dropped. A request's limit
    /// is kept by a sweep four times per limit, so it ends between 1x and
    /// 1.25x this.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Generator threads, all processes together; each is a glommio
    /// executor (io_uring) driving its share of the connections [default:
    /// one per available core].
    #[arg(long, value_name = "N")]
    pub threads: Option<u64>,
    /// Child processes to spread the connections over [default: as few as
    /// RLIMIT_NOFILE allows: one process holds at most that many sockets].
    #[arg(long, value_name = "N")]
    pub procs: Option<u64>,
    /// Also write the report as JSON to FILE ("-" writes it to stdout
    /// instead of the text report).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Server process whose resident memory (VmRSS) the report shows
    /// [default: the local process listening on the target's port, found
    /// through /proc, when there is one].
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Open the sessions, hold them for --duration without sending
    /// requests, and report the server's memory per session.
    #[arg(long)]
    pub idle: bool,
    /// Leave the http sessions on the server at the end (they are DELETEd
    /// otherwise; legacy sse sessions end with their streams when the
    /// generator exits).
    #[arg(long)]
    pub keep_sessions: bool,
    /// Exit with status 1 when any request or initialization failed.
    #[arg(long)]
    pub fail_on_errors: bool,
    /// No live progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Local addresses to connect from, e.g. 127.0.0.1-4 or 10.0.0.5,10.0.0.6:
    /// each adds a port range's worth of connections to one server address
    /// (past 64,000 connections) [default: any address].
    #[arg(long, value_name = "IPS")]
    pub source_ips: Option<String>,
    /// How long each generator thread spins looking for work before it
    /// parks in the kernel, e.g. 200us (at most 10ms). Parking and waking
    /// cost tens of microseconds on a VM; spinning trades idle CPU for that
    /// (for a generator on cores of its own, not beside the server).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub spin: Duration,
    /// http and sse: any connection carries any session, round-robin, so a
    /// session's requests arrive on connections the server accepted on
    /// other shards (exercises its cross-shard forwarding). By default a
    /// session keeps to the connection that initialized it.
    #[arg(long)]
    pub spread_sessions: bool,
    /// Inject faults during the measured window through the server's admin
    /// listener (--admin; the server must run with --chaos), e.g.
    /// pool=1s,shard=10s: a comma-separated list of KIND=PERIOD, KIND one
    /// of session, pool, shard, stall, drop, fill (stall and fill take a
    /// length: stall=5s@20ms). Each kind hits a random target every PERIOD.
    /// The report adds availability, failures inside and outside the
    /// killed domains, and recovery p50/p99/max per kind (see CHAOS below).
    #[arg(long, value_name = "SPEC")]
    pub chaos: Option<String>,
    /// The server's admin listener, for --chaos.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// --chaos: how long after a kill's answer (which comes once the domain
    /// accepts work again) a failure of a session in the killed domain
    /// still counts as inside it.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub chaos_grace: Duration,
    /// Run only slice K of N of the connections and sessions, writing JSON
    /// lines for a parent process on stdout (what --procs children run).
    #[arg(long, value_name = "K/N")]
    pub slice: Option<String>,
}

const MIX_HELP: &str = r#"MIX
  --mix is a comma-separated list of OP[=WEIGHT] entries; WEIGHT is an
  integer from 1 to 1000000 (default 1) and each request picks an entry with
  probability WEIGHT / sum of weights. OP is one of:
    ping
    tools/list | resources/list | resources/templates/list | prompts/list
    tools/call:NAME[:ARGS]     ARGS is a JSON object (default {})
    prompts/get:NAME[:ARGS]    ARGS is a JSON object of strings
    resources/read:URI
    rpc:METHOD[:PARAMS]        any other request; PARAMS is a JSON object
  Commas, colons and '=' inside JSON do not split entries. A trailing
  '=DIGITS' is always read as the weight: write resources/read:x?n=5=1 for a
  URI that itself ends in =5. Quote the whole mix for the shell:
    --mix 'tools/call:echo:{"text":"hi"}=8,tools/list=1,resources/read:demo://readme=1,ping=1'

REPORT
  Latency percentiles (HDR histogram, microsecond resolution) of successful
  requests, errors by kind (connect, timeout, closed, io, http_NNN,
  session_not_found, bad_response, no_response, rpc_CODE, tool_error; setup:
  and init: prefixes for failed initializations), availability (successful
  / attempted requests and initializations in the measured window),
  re-initializations (a session answered 404 is initialized again), and the
  server's RSS when it runs on this machine.

CHAOS
  With --chaos, every failure is classified. It is inside when its session
  (the shard is read off the Mcp-Session-Id, the pool is the id's high 64
  random bits modulo the pool count the server's answer gives) was in the
  domain a kill hit, and it happened between the kill's request and
  --chaos-grace after its answer; every other failure is outside. A failed
  initialization has no session: it is inside when it falls in any kill's
  window. drop hits connections, not sessions: any failure in its window is
  inside. Recovery is measured by the server: death to the domain accepting
  work again (session and pool: a new actor answered a ping; shard: the node
  restarted it and it bound every listener; stall: a task ran again; fill:
  the peer answered a mesh call).
"#;

#[derive(Debug, thiserror::Error)]
pub enum LoadCliError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{failed} of {attempted} requests and initializations failed (--fail-on-errors)")]
    Failures { failed: u64, attempted: u64 },
}

impl LoadArgs {
    fn settings(&self) -> LoadSettings {
        LoadSettings {
            target: self.target.clone(),
            transport: self.transport.clone(),
            sessions: self.sessions,
            connections: self.connections,
            threads: self.threads,
            procs: self.procs,
            rate_per_second: self.rate,
            warmup: self.warmup,
            duration: self.duration,
            timeout: self.timeout,
            mix: self.mix.clone(),
            idle: self.idle,
            keep_sessions: self.keep_sessions,
            server_pid: self.server_pid,
            source_ips: self.source_ips.clone(),
            spin: self.spin,
            spread_sessions: self.spread_sessions,
            slice: self.slice.clone(),
            chaos: self.chaos.clone(),
            admin: Some(self.admin.clone()),
            chaos_grace: self.chaos_grace,
        }
    }
}

pub fn load(args: &LoadArgs) -> Result<(), LoadCliError> {
    let spec = LoadSpec::new(args.settings())?;
    if spec.slice.is_some() {
        return Ok(load::procs::run_child(&spec)?);
    }
    let mut stderr = std::io::stderr();
    let progress: Option<&mut dyn Write> = if args.quiet { None } else { Some(&mut stderr) };
    let report = load::run(&spec, progress)?;
    let json_to_stdout = args.json.as_deref() == Some(std::path::Path::new("-"));
    if let Some(path) = &args.json {
        let text = format!(
            "{}\n",
            serde_json::to_string_pretty(&report.to_json()).unwrap_or_default()
        );
        let written = if json_to_stdout {
            std::io::stdout().lock().write_all(text.as_bytes())
        } else {
            std::fs::write(path, text)
        };
        written.map_err(|source| LoadError::Write {
            path: path.display().to_string(),
            source,
        })?;
    }
    if !json_to_stdout {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(report.to_text().as_bytes());
        let _ = out.flush();
    }
    let failed = report.stats.errors_total();
    if args.fail_on_errors && failed > 0 {
        return Err(LoadCliError::Failures {
            failed,
            attempted: report.stats.attempted(),
        });
    }
    Ok(())
}
