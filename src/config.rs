//! Every bound and knob as a named, documented value. Loaded from TOML;
//! unknown keys are errors that name the key, and `validate` checks how the
//! bounds relate. Units are in the names (`_ms`, `_bytes`, `_max`).

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub runtime: RuntimeConfig,
    pub listen: ListenConfig,
    pub limits: LimitsConfig,
    pub supervision: SupervisionConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub otel: OtelConfig,
    pub auth: AuthConfig,
    pub protect: ProtectConfig,
    pub chaos: ChaosConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Shards (one executor pinned to one core each); 0 = one per available core.
    pub shards: usize,
    /// Session pools per shard (bulkheads). Default 8.
    pub pools: usize,
    /// On SIGINT/SIGTERM, how long in-flight work may take before it is cut off.
    pub drain_deadline_ms: u64,
    /// io_uring registered buffer memory per shard. Counts against RLIMIT_MEMLOCK.
    pub io_memory_bytes: usize,
    /// Submission queue entries of each shard's io_uring rings. The kernel
    /// sizes its table of armed polls from it (ring entries / 16 buckets,
    /// at most 256), and every cancel (of a timeout, too) searches that
    /// table first: with glommio's default of 128 and 15,000 idle
    /// connections, a quarter of a shard's CPU went to those searches.
    pub io_ring_depth: usize,
    /// How long an idle shard spins looking for work before it parks in the
    /// kernel. 0 parks at once (no idle CPU); spinning trades idle CPU for
    /// latency of everything that wakes a parked shard (timers, sockets,
    /// mesh doorbells).
    pub spin_before_park_us: u64,
    /// How often a shard looks for commands from the node (drain, rewiring).
    /// Control traffic only: requests never wait on it.
    pub control_poll_ms: u64,
    /// Messages each mesh queue (one per ordered shard pair) holds; a full
    /// queue makes the sender wait.
    pub mesh_channel_capacity: usize,
    /// How long a shard's mesh poller keeps polling after the last message
    /// before it parks (and a sender must ring its doorbell, an eventfd
    /// wake-up). Polling costs CPU only while mesh traffic flows.
    pub mesh_spin_us: u64,
    /// Longest a parked mesh poller sleeps before looking again on its own.
    pub mesh_park_max_ms: u64,
    /// Messages taken from one peer's queue per pass, so one busy peer
    /// cannot starve the others.
    pub mesh_batch_max: usize,
    /// How long a call over the mesh waits for its reply.
    pub mesh_call_timeout_ms: u64,
    /// Calls a shard may have waiting for replies at once; more are refused.
    pub mesh_pending_calls_max: usize,
    /// Shard restarts the node allows within `shard_restart_period_ms` before it
    /// gives up and exits non-zero.
    pub shard_restarts_max: u32,
    pub shard_restart_period_ms: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            shards: 0,
            pools: 8,
            drain_deadline_ms: 10_000,
            io_memory_bytes: 1 << 20,
            io_ring_depth: 4_096,
            spin_before_park_us: 0,
            control_poll_ms: 10,
            mesh_channel_capacity: 1_024,
            mesh_spin_us: 50,
            mesh_park_max_ms: 10,
            mesh_batch_max: 256,
            mesh_call_timeout_ms: 5_000,
            mesh_pending_calls_max: 65_536,
            shard_restarts_max: 5,
            shard_restart_period_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Newline-delimited JSON-RPC over TCP. Empty string disables it. Port 0
    /// picks a free port once for all shards.
    pub tcp: String,
    /// Streamable HTTP at `/mcp`. Empty string disables it. Port 0 picks a
    /// free port once for all shards.
    pub http: String,
    /// Pending connections the kernel queues per shard listener (capped by
    /// net.core.somaxconn).
    pub backlog: u32,
    /// Host names HTTP requests may name in `Host` and `Origin` (DNS-rebinding
    /// protection); anything else gets 403.
    pub allowed_hosts: Vec<String>,
    /// The admin listener (`/metrics`, `/health/live`, `/health/ready`,
    /// `/admin/tree`, the live page at `/`), apart from MCP traffic. Empty string disables it.
    /// Port 0 picks a free port (see the `admin` line `serve` prints).
    pub admin: String,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            tcp: "127.0.0.1:8081".to_string(),
            http: "127.0.0.1:8080".to_string(),
            backlog: 4_096,
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            admin: "127.0.0.1:9090".to_string(),
        }
    }
}

/// The admin listener's own bounds. It runs on its own threads, off the
/// shards, so a busy or dead shard cannot make it unresponsive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Threads serving admin connections, one connection each at a time;
    /// more clients wait in the kernel backlog. Default 2.
    pub workers: usize,
    /// Longest an admin client may take to send its request or read the
    /// answer before its connection is closed. Default 2000 ms.
    pub io_timeout_ms: u64,
    /// How long a scrape waits for each shard's figures; a shard that has
    /// not answered by then is reported down (`shardmcp_shard_up 0`, and
    /// `/health/ready` answers 503). Default 1000 ms.
    pub shard_answer_timeout_ms: u64,
    /// Largest admin request head (request line and headers); a larger one
    /// gets 431. Default 8192 bytes.
    pub request_head_bytes_max: usize,
    /// Live page streams (`/admin/events`, the page at `/`) open at once,
    /// each on its own thread so the workers stay free for scrapes and
    /// probes; one more gets 503. Default 4, at most 64.
    pub page_streams_max: usize,
    /// How often a page stream pushes a snapshot (each push asks every
    /// shard, like a scrape). Default 1000 ms, between 100 and 60000.
    pub page_interval_ms: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            workers: 2,
            io_timeout_ms: 2_000,
            shard_answer_timeout_ms: 1_000,
            request_head_bytes_max: 8_192,
            page_streams_max: 4,
            page_interval_ms: 1_000,
        }
    }
}

/// Fault injection through the admin listener (`/admin/chaos/...`) and
/// `shardmcp chaos`: off unless enabled, and every fault is bounded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChaosConfig {
    /// Accept chaos requests (`serve --chaos` sets it). Off: they get 403.
    pub enabled: bool,
    /// Longest stall (a shard's thread blocked) one request may ask for.
    /// Default 10000 ms.
    pub stall_ms_max: u64,
    /// Longest a mesh channel may be held full by one request. Default
    /// 10000 ms.
    pub fill_ms_max: u64,
    /// How long a chaos request waits for the killed domain to accept work
    /// again before it answers without a recovery time. Default 10000 ms.
    pub recovery_timeout_ms: u64,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        ChaosConfig {
            enabled: false,
            stall_ms_max: 10_000,
            fill_ms_max: 10_000,
            recovery_timeout_ms: 10_000,
        }
    }
}

/// Log lines on stderr.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (one human-readable line per event) or `json` (one JSON
    /// object per line, for log shippers). Default `text`.
    pub format: LogFormat,
    /// Filter in tracing's env-filter syntax, e.g. `info` or
    /// `warn,shardmcp=debug`. `--log` and then RUST_LOG override it.
    /// Default `info`.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

/// OpenTelemetry trace export over OTLP/HTTP (protobuf). Needs a binary
/// built with `--features otel`; off while `endpoint` is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtelConfig {
    /// Full URL spans are POSTed to, e.g. `http://127.0.0.1:4318/v1/traces`
    /// (a collector next to the server: plain `http://` only). Empty = off.
    pub endpoint: String,
    /// The `service.name` resource attribute of every span.
    pub service_name: String,
    /// Longest a finished span waits before its batch is sent.
    pub export_interval_ms: u64,
    /// Spans in one export request.
    pub batch_size_max: usize,
    /// Finished spans waiting for export, all shards together; a span
    /// finished while it is full is dropped (and counted) rather than block
    /// a shard.
    pub queue_size_max: usize,
    /// Connect, send and read timeout of one export request.
    pub export_timeout_ms: u64,
    /// Longest collector response read (its body is only checked for
    /// errors).
    pub response_bytes_max: usize,
}

impl Default for OtelConfig {
    fn default() -> Self {
        OtelConfig {
            endpoint: String::new(),
            service_name: "shardmcp".to_string(),
            export_interval_ms: 1_000,
            batch_size_max: 512,
            queue_size_max: 4_096,
            export_timeout_ms: 5_000,
            response_bytes_max: 65_536,
        }
    }
}

impl OtelConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.endpoint.is_empty() {
            if !cfg!(feature = "otel") {
                return Err(invalid(
                    "otel.endpoint",
                    "this binary was built without the `otel` feature; rebuild with \
                     `cargo build --release --features otel`, or leave otel.endpoint empty",
                ));
            }
            if let Err(reason) = parse_http_url(&self.endpoint) {
                return Err(invalid(
                    "otel.endpoint",
                    format!("`{}`: {reason}", self.endpoint),
                ));
            }
        }
        if self.service_name.is_empty() || self.service_name.len() > 255 {
            return Err(invalid("otel.service_name", "must be 1 to 255 bytes long"));
        }
        if self.export_interval_ms == 0 || self.export_interval_ms > 60_000 {
            return Err(invalid(
                "otel.export_interval_ms",
                "must be between 1 and 60000",
            ));
        }
        if self.queue_size_max == 0 || self.queue_size_max > 1_048_576 {
            return Err(invalid(
                "otel.queue_size_max",
                "must be between 1 and 1048576",
            ));
        }
        if self.batch_size_max == 0 || self.batch_size_max > self.queue_size_max {
            return Err(invalid(
                "otel.batch_size_max",
                "must be between 1 and otel.queue_size_max",
            ));
        }
        if self.export_timeout_ms == 0 || self.export_timeout_ms > 60_000 {
            return Err(invalid(
                "otel.export_timeout_ms",
                "must be between 1 and 60000",
            ));
        }
        if self.response_bytes_max < 1_024 || self.response_bytes_max > 16_777_216 {
            return Err(invalid(
                "otel.response_bytes_max",
                "must be between 1024 and 16777216",
            ));
        }
        Ok(())
    }
}

/// A plain `http://host[:port][/path]` URL as (host, port, path); the path
/// defaults to `/v1/traces`, the port to 80.
pub fn parse_http_url(url: &str) -> Result<(String, u16, String), &'static str> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("must start with http:// (https is not supported; use a local collector)")?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err("needs a host and no user info");
    }
    let (host, port) = match authority.rsplit_once(':') {
        // An IPv6 literal without a port ends with `]`.
        Some((host, port)) if !port.ends_with(']') => (
            host,
            port.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or("the port must be a number from 1 to 65535")?,
        ),
        _ => (authority, 80),
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the host is empty or holds spaces");
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the path holds spaces");
    }
    let path = if path.is_empty() || path == "/" {
        "/v1/traces".to_string()
    } else {
        path.to_string()
    };
    Ok((host.to_string(), port, path))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Sessions one pool holds; a new session past it is refused.
    pub sessions_per_pool_max: usize,
    /// Messages waiting in one session actor's mailbox; senders wait when
    /// full. The actor takes each at once (requests run as tasks), so a few
    /// suffice; every slot is allocated up front for every session.
    pub session_mailbox_capacity: usize,
    /// Largest JSON-RPC message (a TCP line, an HTTP body); past it the
    /// message is refused with -32600.
    pub message_bytes_max: usize,
    /// Entries per page of `tools/list` and the other lists.
    pub page_size: usize,
    /// Requests one session may have running at once; more get -32000.
    pub requests_in_flight_per_session_max: usize,
    /// Resource URIs one session may subscribe to; more get -32000.
    pub subscriptions_per_session_max: usize,
    /// Frames queued for one session's client (notifications and replies);
    /// handlers that notify wait when it is full. Transports drain it as
    /// frames come; every slot is allocated up front for every session
    /// (32 slots: about 2 KiB of an idle session's ~8 KiB).
    pub session_outbox_capacity: usize,
    /// How long a request to the client (sampling, elicitation, roots) waits
    /// for its answer.
    pub client_request_timeout_ms: u64,
    /// Requests to one client waiting for answers at once; more are refused.
    pub client_requests_per_session_max: usize,
    /// Rounds of InputRequiredResult one 2026-07-28 call may go through.
    pub input_rounds_max: u32,
    /// How long a sealed requestState stays valid.
    pub request_state_ttl_ms: u64,
    /// Tasks one session may hold; creating more gets -32000.
    pub tasks_per_session_max: usize,
    /// Tasks one shard's task store holds, of all its sessions; creating
    /// more (after expired ones are swept) gets -32000. At least
    /// `tasks_per_session_max`.
    pub tasks_per_shard_max: usize,
    /// Longest lifetime a task may have; longer requested ttls are cut to it.
    pub task_ttl_ms_max: u64,
    /// How long one request may run before the caller gets a timeout error.
    pub request_timeout_ms: u64,
    /// Connections one shard serves at once, over all its listeners; more
    /// get HTTP 503 or a JSON-RPC -32030 line and are closed
    /// (`protect::connections_per_shard` also applies `protect.connections_max`).
    pub connections_per_shard_max: usize,
    /// How long an HTTP connection may sit idle between requests (closed
    /// by sweeps a quarter of it apart: after at most a quarter more).
    pub http_idle_timeout_ms: u64,
    /// How long a client may take to send a whole request once it started
    /// (slow clients are answered 408 and cut off).
    pub http_read_timeout_ms: u64,
    /// How long one write to a client may wait for it to read.
    pub http_write_timeout_ms: u64,
    /// An HTTP session nobody used (and nobody watches a stream of) for this
    /// long is closed; its id then gets 404.
    pub http_session_idle_ms: u64,
    /// A quiet SSE stream gets a comment line this often.
    pub sse_keepalive_ms: u64,
    /// The `retry` hint each SSE stream opens with: how long a client waits
    /// before it reconnects.
    pub sse_retry_ms: u64,
    /// A POST whose client accepts both JSON and SSE is answered with plain
    /// JSON when its handler answers within this many turns of the shard's
    /// task queue and sent nothing on the request's stream first (a smaller
    /// answer, no stream to keep). A slower request gets SSE, resumable.
    /// 0: such requests are always answered with SSE.
    pub http_json_answer_turns: usize,
    /// SSE events one stream keeps so that a client can resume it.
    pub event_store_events_per_stream: usize,
    /// Bytes of SSE history one shard keeps in all.
    pub event_store_bytes_max: usize,
    /// How long a stream nobody is connected to stays resumable.
    pub event_store_retention_ms: u64,
    /// Definitions of one kind (tools, resources, resource templates,
    /// prompts) a shard's server may hold after runtime additions; an
    /// addition past it is refused (`ServerError::TooManyDefinitions`).
    pub definitions_per_kind_max: usize,
    /// WebSocket: after this long without a frame from the client, the
    /// server sends a ping.
    pub ws_ping_interval_ms: u64,
    /// WebSocket: a client that sends nothing (not even the pong) for this
    /// long after a ping, or accepts no bytes of a write for this long, is
    /// taken for dead: its session ends and the connection is closed.
    pub ws_pong_timeout_ms: u64,
    /// A request for a session whose actor died with its pool waits this
    /// long for the pool to be restarted and a new actor to take the
    /// session up, before it is answered as an unknown session (404).
    pub session_resume_wait_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            sessions_per_pool_max: 16_384,
            session_mailbox_capacity: 16,
            message_bytes_max: 4 << 20,
            page_size: 100,
            requests_in_flight_per_session_max: 64,
            subscriptions_per_session_max: 1_024,
            session_outbox_capacity: 32,
            client_request_timeout_ms: 60_000,
            client_requests_per_session_max: 16,
            input_rounds_max: 8,
            request_state_ttl_ms: 600_000,
            tasks_per_session_max: 64,
            tasks_per_shard_max: 65_536,
            task_ttl_ms_max: 3_600_000,
            request_timeout_ms: 30_000,
            connections_per_shard_max: 65_536,
            http_idle_timeout_ms: 60_000,
            http_read_timeout_ms: 10_000,
            http_write_timeout_ms: 10_000,
            http_session_idle_ms: 1_800_000,
            sse_keepalive_ms: 15_000,
            sse_retry_ms: 1_000,
            http_json_answer_turns: 3,
            event_store_events_per_stream: 256,
            event_store_bytes_max: 64 << 20,
            event_store_retention_ms: 300_000,
            definitions_per_kind_max: 10_000,
            ws_ping_interval_ms: 30_000,
            ws_pong_timeout_ms: 10_000,
            session_resume_wait_ms: 100,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisionConfig {
    /// A shard's root supervisor: restarts within the period before the whole
    /// shard gives up (and the node restarts it).
    pub shard_intensity: u32,
    pub shard_period_ms: u64,
    /// The supervisor over the pools.
    pub pools_intensity: u32,
    pub pools_period_ms: u64,
    /// Each pool (simple_one_for_one of sessions).
    pub pool_intensity: u32,
    pub pool_period_ms: u64,
    /// How long a session actor may take to stop when asked, before it is killed.
    pub session_shutdown_ms: u32,
    /// Listeners and core services.
    pub service_intensity: u32,
    pub service_period_ms: u64,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        SupervisionConfig {
            shard_intensity: 10,
            shard_period_ms: 10_000,
            pools_intensity: 100,
            pools_period_ms: 1_000,
            pool_intensity: 1_000,
            pool_period_ms: 1_000,
            session_shutdown_ms: 5_000,
            service_intensity: 20,
            service_period_ms: 10_000,
        }
    }
}

/// Authorization of HTTP clients as an OAuth 2.1 resource server (MCP
/// 2025-11-25 authorization, RFC 9728, RFC 6750); see `crate::auth`. Off
/// by default. It guards every HTTP route that reaches MCP; the admin
/// listener and stdio are not affected, and TCP must be off while it is on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `off`, `static` (a tokens file) or `jwt` (signed tokens checked
    /// against a JWKS file). Default `off`.
    pub mode: AuthMode,
    /// This server's canonical resource URI as clients name it (e.g.
    /// `https://mcp.example.com/mcp`): the `resource` of the metadata
    /// document and the default audience. Required when on.
    pub resource: String,
    /// Authorization servers that issue tokens for this server, listed in
    /// the metadata document. At least one in `jwt` mode.
    pub authorization_servers: Vec<String>,
    /// Scopes listed in the metadata document.
    pub scopes_supported: Vec<String>,
    /// Scopes a token must hold for any MCP access; fewer get 403.
    pub scopes_required: Vec<String>,
    /// `static`: TOML or JSON file of `[[tokens]]`, each with `token` (or
    /// `token_sha256`, its hex digest), `principal` and `scopes`.
    pub tokens_file: String,
    /// `static`: entries the tokens file may hold. Default 10000.
    pub tokens_max: usize,
    /// `jwt`: the JWKS (JSON) whose keys sign tokens, read once at start.
    pub jwks_file: String,
    /// `jwt`: keys the JWKS may hold. Default 64.
    pub jwks_keys_max: usize,
    /// `jwt`: the `iss` every token must carry. Required in `jwt` mode.
    pub issuer: String,
    /// `jwt`: the `aud` a token must include; "" means `resource`.
    pub audience: String,
    /// `jwt`: signature algorithms accepted (asymmetric only). Default
    /// RS256 and ES256.
    pub algorithms: Vec<String>,
    /// `jwt`: clock skew allowed on `exp` and `nbf`, in seconds. Default 60.
    pub leeway_secs: u64,
    /// `jwt`: verified tokens each shard remembers (until they expire) so
    /// a signature is checked once per shard, not per request; past it the
    /// expired, then any, entries make room. Default 4096.
    pub token_cache_entries_max: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    Off,
    Static,
    Jwt,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Off,
            resource: String::new(),
            authorization_servers: Vec::new(),
            scopes_supported: Vec::new(),
            scopes_required: Vec::new(),
            tokens_file: String::new(),
            tokens_max: 10_000,
            jwks_file: String::new(),
            jwks_keys_max: 64,
            issuer: String::new(),
            audience: String::new(),
            algorithms: vec!["RS256".into(), "ES256".into()],
            leeway_secs: 60,
            token_cache_entries_max: 4_096,
        }
    }
}

/// Overload protection (`src/protect`): rate limits, the node's connection
/// limit, the shard's cap on requests in flight, the memory guard and the
/// tools' circuit breakers. Every figure is per shard unless it says node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtectConfig {
    /// Requests per second one session may send (token bucket, enforced on
    /// the shard that owns the session, whichever shard the request reached);
    /// past it: HTTP 429 with Retry-After, or JSON-RPC error -32029. 0 = off
    /// (the default: one session may carry a whole client's traffic, as in
    /// the single-session benchmarks).
    pub session_rate_per_s: u32,
    /// Requests one session may send at once before the rate applies.
    pub session_burst: u32,
    /// Requests (HTTP) and connections (TCP) per second from one client IP
    /// address, counted by each shard on its own: a node of N shards lets an
    /// address through at up to N times this. 0 = off (the default: many
    /// clients behind one proxy or NAT share an address).
    pub address_rate_per_s: u32,
    /// Requests one address may send at once before the rate applies.
    pub address_burst: u32,
    /// Token buckets one shard keeps per kind (sessions, addresses); idle
    /// ones are dropped first when it is full.
    pub buckets_max: usize,
    /// Connections the whole node serves at once, split evenly over the
    /// shards (each shard takes the smaller of its share and
    /// `limits.connections_per_shard_max`); past it: HTTP 503 or JSON-RPC
    /// -32030, then the connection is closed. 0 = only the per-shard limit.
    pub connections_max: usize,
    /// Refused connections one shard answers at once (503, then it waits for
    /// the client to close, up to `limits.http_read_timeout_ms`); more are
    /// closed without an answer.
    pub refusals_in_flight_max: usize,
    /// Largest HTTP request head (request line and headers); past it: 431.
    pub http_head_bytes_max: usize,
    /// HTTP requests one shard serves at once (SSE streams not counted);
    /// past it: 503 with Retry-After. This sheds load offered past capacity.
    pub requests_in_flight_per_shard_max: usize,
    /// While the process RSS is above this, new sessions (initialize,
    /// GET /sse, TCP and WebSocket connections) get 503 / -32030. 0 = off.
    pub memory_guard_bytes: u64,
    /// How often each shard reads the RSS (for the guard) and drops idle
    /// token buckets.
    pub memory_check_interval_ms: u64,
    /// Consecutive failures (isError result, error, panic, timeout) that
    /// open a tool's circuit breaker on a shard; while open, calls get
    /// JSON-RPC -32031 at once. 0 = off.
    pub breaker_failures_max: u32,
    /// How long an open breaker refuses calls before one probe call runs.
    pub breaker_cooldown_ms: u64,
    /// The Retry-After (seconds) of 503 answers.
    pub retry_after_s: u64,
}

impl Default for ProtectConfig {
    fn default() -> Self {
        ProtectConfig {
            session_rate_per_s: 0,
            session_burst: 2_000,
            address_rate_per_s: 0,
            address_burst: 1_000,
            buckets_max: 65_536,
            connections_max: 262_144,
            refusals_in_flight_max: 256,
            http_head_bytes_max: 16 << 10,
            requests_in_flight_per_shard_max: 16_384,
            memory_guard_bytes: 0,
            memory_check_interval_ms: 1_000,
            breaker_failures_max: 20,
            breaker_cooldown_ms: 5_000,
            retry_after_s: 1,
        }
    }
}

/// Signature algorithms `auth.algorithms` may name: asymmetric ones only,
/// so a public key can never be used as an HMAC secret.
pub const AUTH_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

impl AuthConfig {
    /// The audience tokens must name: `audience`, or `resource` when empty.
    pub fn audience(&self) -> &str {
        if self.audience.is_empty() {
            &self.resource
        } else {
            &self.audience
        }
    }

    fn validate(&self, listen: &ListenConfig) -> Result<(), ConfigError> {
        if self.tokens_max == 0 || self.tokens_max > 1_000_000 {
            return Err(invalid("auth.tokens_max", "must be between 1 and 1000000"));
        }
        if self.jwks_keys_max == 0 || self.jwks_keys_max > 1_024 {
            return Err(invalid("auth.jwks_keys_max", "must be between 1 and 1024"));
        }
        if self.token_cache_entries_max == 0 || self.token_cache_entries_max > 1_000_000 {
            return Err(invalid(
                "auth.token_cache_entries_max",
                "must be between 1 and 1000000",
            ));
        }
        if self.leeway_secs > 600 {
            return Err(invalid("auth.leeway_secs", "at most 600 (10 minutes)"));
        }
        if let Some(bad) = self
            .algorithms
            .iter()
            .find(|alg| !AUTH_ALGORITHMS.contains(&alg.as_str()))
        {
            return Err(invalid(
                "auth.algorithms",
                format!(
                    "`{bad}` is not accepted; choose from {} (no HMAC, no `none`)",
                    AUTH_ALGORITHMS.join(", ")
                ),
            ));
        }
        let scope_ok = |s: &String| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        };
        for (key, scopes) in [
            ("auth.scopes_supported", &self.scopes_supported),
            ("auth.scopes_required", &self.scopes_required),
        ] {
            if !scopes.iter().all(scope_ok) {
                return Err(invalid(
                    key,
                    "each scope is printable ASCII without spaces, quotes or backslashes",
                ));
            }
        }
        if self.mode == AuthMode::Off {
            return Ok(());
        }
        if self.resource.is_empty() {
            return Err(invalid("auth.resource", "required when auth.mode is on"));
        }
        absolute_uri(&self.resource).map_err(|reason| invalid("auth.resource", reason))?;
        for server in &self.authorization_servers {
            absolute_uri(server).map_err(|reason| invalid("auth.authorization_servers", reason))?;
        }
        if !listen.tcp.is_empty() {
            return Err(invalid(
                "listen.tcp",
                "must be \"\" while auth.mode is on: the TCP transport cannot carry a bearer token",
            ));
        }
        match self.mode {
            AuthMode::Static if self.tokens_file.is_empty() => Err(invalid(
                "auth.tokens_file",
                "required when auth.mode = \"static\"",
            )),
            AuthMode::Jwt if self.jwks_file.is_empty() => Err(invalid(
                "auth.jwks_file",
                "required when auth.mode = \"jwt\"",
            )),
            AuthMode::Jwt if self.issuer.is_empty() => Err(invalid(
                "auth.issuer",
                "required when auth.mode = \"jwt\"",
            )),
            AuthMode::Jwt if self.authorization_servers.is_empty() => Err(invalid(
                "auth.authorization_servers",
                "at least one is required when auth.mode = \"jwt\" (the metadata document must name it)",
            )),
            AuthMode::Jwt if self.algorithms.is_empty() => {
                Err(invalid("auth.algorithms", "at least one is required"))
            }
            _ => Ok(()),
        }
    }
}

/// An absolute http(s) URI with a host and no fragment, as RFC 9728 asks
/// of a resource identifier.
fn absolute_uri(text: &str) -> Result<(), String> {
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .ok_or_else(|| format!("`{text}` must start with https:// (or http://)"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() {
        return Err(format!("`{text}` has no host"));
    }
    if text.contains('#') || text.contains(|c: char| c.is_whitespace() || c == '"') {
        return Err(format!("`{text}` must have no fragment, spaces or quotes"));
    }
    Ok(())
}

impl ProtectConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("protect.session_burst", self.session_burst),
            ("protect.address_burst", self.address_burst),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        for (key, value) in [
            ("protect.buckets_max", self.buckets_max),
            (
                "protect.refusals_in_flight_max",
                self.refusals_in_flight_max,
            ),
            (
                "protect.requests_in_flight_per_shard_max",
                self.requests_in_flight_per_shard_max,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.http_head_bytes_max < 1_024 || self.http_head_bytes_max > 1 << 20 {
            return Err(invalid(
                "protect.http_head_bytes_max",
                "must be between 1024 and 1048576",
            ));
        }
        if self.memory_check_interval_ms < 10 || self.memory_check_interval_ms > 60_000 {
            return Err(invalid(
                "protect.memory_check_interval_ms",
                "must be between 10 and 60000",
            ));
        }
        if self.breaker_cooldown_ms == 0 || self.breaker_cooldown_ms > 86_400_000 {
            return Err(invalid(
                "protect.breaker_cooldown_ms",
                "must be between 1 and 86400000",
            ));
        }
        if self.retry_after_s == 0 || self.retry_after_s > 3_600 {
            return Err(invalid(
                "protect.retry_after_s",
                "must be between 1 and 3600",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The most restarts a supervisor may allow per period: its window keeps one
/// timestamp per restart, so this bounds that memory (16 bytes each).
pub const INTENSITY_MAX: u32 = 1_000_000;

/// The longest WebSocket keepalive period: a day. Longer would keep dead
/// clients' sessions for no purpose.
pub const WS_KEEPALIVE_MS_MAX: u64 = 86_400_000;

/// Upper bound of `limits.http_json_answer_turns`: past a few turns a
/// request is no longer quick, and its client should get a resumable stream.
pub const HTTP_JSON_ANSWER_TURNS_MAX: usize = 64;

/// The most shards a node runs: the session-id prefix holds 4 hex digits, and
/// the mesh needs shards² channels.
pub const SHARDS_MAX: usize = 1_024;

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|error| match error {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// ```
    /// use shardmcp::config::Config;
    ///
    /// let config = Config::parse("[runtime]\nshards = 2\n").unwrap();
    /// assert_eq!(config.runtime.shards, 2);
    /// let error = Config::parse("[runtime]\nshardz = 2\n").unwrap_err();
    /// assert!(error.to_string().contains("shardz"));
    /// ```
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: "<text>".to_string(),
            message: error.to_string().trim_end().replace('\n', " "),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|error| format!("# cannot render: {error}\n"))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.protect.validate()?;
        let r = &self.runtime;
        if r.shards > SHARDS_MAX {
            return Err(invalid("runtime.shards", format!("at most {SHARDS_MAX}")));
        }
        if r.pools == 0 || r.pools > 4_096 {
            return Err(invalid("runtime.pools", "must be between 1 and 4096"));
        }
        if r.mesh_channel_capacity == 0 {
            return Err(invalid(
                "runtime.mesh_channel_capacity",
                "must be at least 1",
            ));
        }
        if r.mesh_spin_us > 1_000_000 {
            return Err(invalid("runtime.mesh_spin_us", "at most 1000000 (1 s)"));
        }
        if r.mesh_park_max_ms == 0 || r.mesh_park_max_ms > 1_000 {
            return Err(invalid(
                "runtime.mesh_park_max_ms",
                "must be between 1 and 1000",
            ));
        }
        if r.mesh_batch_max == 0 {
            return Err(invalid("runtime.mesh_batch_max", "must be at least 1"));
        }
        if r.mesh_pending_calls_max == 0 {
            return Err(invalid(
                "runtime.mesh_pending_calls_max",
                "must be at least 1",
            ));
        }
        if r.control_poll_ms == 0 || r.control_poll_ms > 1_000 {
            return Err(invalid(
                "runtime.control_poll_ms",
                "must be between 1 and 1000",
            ));
        }
        if r.shard_restart_period_ms == 0 {
            return Err(invalid(
                "runtime.shard_restart_period_ms",
                "must be greater than 0",
            ));
        }
        if r.spin_before_park_us > 1_000_000 {
            return Err(invalid(
                "runtime.spin_before_park_us",
                "at most 1000000 (1 s)",
            ));
        }
        if r.io_ring_depth == 0 || r.io_ring_depth > 32_768 {
            return Err(invalid(
                "runtime.io_ring_depth",
                "must be between 1 and 32768 (io_uring's limit)",
            ));
        }
        if r.io_memory_bytes < 64 << 10 {
            return Err(invalid("runtime.io_memory_bytes", "must be at least 65536"));
        }
        if self.listen.backlog == 0 || self.listen.backlog > i32::MAX as u32 {
            return Err(invalid(
                "listen.backlog",
                "must be between 1 and 2147483647",
            ));
        }
        if !self.listen.http.is_empty() {
            self.listen
                .http
                .parse::<SocketAddr>()
                .map_err(|e| invalid("listen.http", format!("`{}`: {e}", self.listen.http)))?;
        }
        if !self.listen.tcp.is_empty() {
            self.listen
                .tcp
                .parse::<SocketAddr>()
                .map_err(|e| invalid("listen.tcp", format!("`{}`: {e}", self.listen.tcp)))?;
        }
        if !self.listen.admin.is_empty() {
            self.listen
                .admin
                .parse::<SocketAddr>()
                .map_err(|e| invalid("listen.admin", format!("`{}`: {e}", self.listen.admin)))?;
        }
        let a = &self.admin;
        if a.workers == 0 || a.workers > 64 {
            return Err(invalid("admin.workers", "must be between 1 and 64"));
        }
        if a.io_timeout_ms == 0 || a.io_timeout_ms > 60_000 {
            return Err(invalid(
                "admin.io_timeout_ms",
                "must be between 1 and 60000",
            ));
        }
        let c = &self.chaos;
        for (key, value) in [
            ("chaos.stall_ms_max", c.stall_ms_max),
            ("chaos.fill_ms_max", c.fill_ms_max),
            ("chaos.recovery_timeout_ms", c.recovery_timeout_ms),
        ] {
            if value == 0 || value > 600_000 {
                return Err(invalid(key, "must be between 1 and 600000"));
            }
        }
        if self.limits.session_resume_wait_ms > 60_000 {
            return Err(invalid("limits.session_resume_wait_ms", "at most 60000"));
        }
        if a.shard_answer_timeout_ms == 0 || a.shard_answer_timeout_ms > 60_000 {
            return Err(invalid(
                "admin.shard_answer_timeout_ms",
                "must be between 1 and 60000",
            ));
        }
        if a.shard_answer_timeout_ms < r.control_poll_ms {
            return Err(invalid(
                "admin.shard_answer_timeout_ms",
                format!(
                    "{} ms is shorter than runtime.control_poll_ms ({} ms), so shards could never answer in time",
                    a.shard_answer_timeout_ms, r.control_poll_ms
                ),
            ));
        }
        if a.request_head_bytes_max < 256 || a.request_head_bytes_max > 1 << 20 {
            return Err(invalid(
                "admin.request_head_bytes_max",
                "must be between 256 and 1048576",
            ));
        }
        if a.page_streams_max == 0 || a.page_streams_max > 64 {
            return Err(invalid(
                "admin.page_streams_max",
                "must be between 1 and 64",
            ));
        }
        if a.page_interval_ms < 100 || a.page_interval_ms > 60_000 {
            return Err(invalid(
                "admin.page_interval_ms",
                "must be between 100 and 60000",
            ));
        }
        self.otel.validate()?;
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid(
                "log.level",
                format!("`{}`: {error}", self.log.level),
            ));
        }
        let l = &self.limits;
        for (key, value) in [
            ("limits.sessions_per_pool_max", l.sessions_per_pool_max),
            (
                "limits.session_mailbox_capacity",
                l.session_mailbox_capacity,
            ),
            (
                "limits.connections_per_shard_max",
                l.connections_per_shard_max,
            ),
            ("limits.page_size", l.page_size),
            (
                "limits.requests_in_flight_per_session_max",
                l.requests_in_flight_per_session_max,
            ),
            (
                "limits.subscriptions_per_session_max",
                l.subscriptions_per_session_max,
            ),
            ("limits.session_outbox_capacity", l.session_outbox_capacity),
            ("limits.tasks_per_session_max", l.tasks_per_session_max),
            ("limits.tasks_per_shard_max", l.tasks_per_shard_max),
            (
                "limits.client_requests_per_session_max",
                l.client_requests_per_session_max,
            ),
            (
                "limits.definitions_per_kind_max",
                l.definitions_per_kind_max,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if l.message_bytes_max < 1_024 {
            return Err(invalid("limits.message_bytes_max", "must be at least 1024"));
        }
        if l.input_rounds_max == 0 || l.input_rounds_max > 64 {
            return Err(invalid(
                "limits.input_rounds_max",
                "must be between 1 and 64",
            ));
        }
        if l.tasks_per_shard_max < l.tasks_per_session_max {
            return Err(invalid(
                "limits.tasks_per_shard_max",
                "must be at least limits.tasks_per_session_max",
            ));
        }
        if l.task_ttl_ms_max == 0 {
            return Err(invalid("limits.task_ttl_ms_max", "must be greater than 0"));
        }
        if l.request_state_ttl_ms == 0 {
            return Err(invalid(
                "limits.request_state_ttl_ms",
                "must be greater than 0",
            ));
        }
        if l.client_request_timeout_ms == 0 {
            return Err(invalid(
                "limits.client_request_timeout_ms",
                "must be greater than 0",
            ));
        }
        for (key, value) in [
            ("limits.request_timeout_ms", l.request_timeout_ms),
            ("limits.http_idle_timeout_ms", l.http_idle_timeout_ms),
            ("limits.http_read_timeout_ms", l.http_read_timeout_ms),
            ("limits.http_write_timeout_ms", l.http_write_timeout_ms),
            ("limits.http_session_idle_ms", l.http_session_idle_ms),
            ("limits.sse_keepalive_ms", l.sse_keepalive_ms),
            (
                "limits.event_store_retention_ms",
                l.event_store_retention_ms,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if l.http_json_answer_turns > HTTP_JSON_ANSWER_TURNS_MAX {
            return Err(invalid(
                "limits.http_json_answer_turns",
                format!("must be at most {HTTP_JSON_ANSWER_TURNS_MAX}"),
            ));
        }
        if l.event_store_events_per_stream == 0 {
            return Err(invalid(
                "limits.event_store_events_per_stream",
                "must be at least 1",
            ));
        }
        if l.event_store_bytes_max < 64 << 10 {
            return Err(invalid(
                "limits.event_store_bytes_max",
                "must be at least 65536",
            ));
        }
        let bare_host = |host: &str| {
            !host.is_empty()
                && !host.contains(|c: char| c.is_whitespace() || c == '/')
                && (!host.contains(':') || host.parse::<std::net::Ipv6Addr>().is_ok())
        };
        if !self.listen.allowed_hosts.iter().all(|host| bare_host(host)) {
            return Err(invalid(
                "listen.allowed_hosts",
                "each entry is a bare host name or address, without scheme or port",
            ));
        }
        for (key, value) in [
            ("limits.ws_ping_interval_ms", l.ws_ping_interval_ms),
            ("limits.ws_pong_timeout_ms", l.ws_pong_timeout_ms),
        ] {
            if value == 0 || value > WS_KEEPALIVE_MS_MAX {
                return Err(invalid(
                    key,
                    format!("must be between 1 and {WS_KEEPALIVE_MS_MAX}"),
                ));
            }
        }
        let s = &self.supervision;
        for (key, value) in [
            ("supervision.shard_period_ms", s.shard_period_ms),
            ("supervision.pools_period_ms", s.pools_period_ms),
            ("supervision.pool_period_ms", s.pool_period_ms),
            ("supervision.service_period_ms", s.service_period_ms),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        for (key, value) in [
            ("supervision.shard_intensity", s.shard_intensity),
            ("supervision.pools_intensity", s.pools_intensity),
            ("supervision.pool_intensity", s.pool_intensity),
            ("supervision.service_intensity", s.service_intensity),
        ] {
            if value > INTENSITY_MAX {
                return Err(invalid(
                    key,
                    format!("at most {INTENSITY_MAX} restarts per period"),
                ));
            }
        }
        self.auth.validate(&self.listen)?;
        if u64::from(s.session_shutdown_ms) > r.drain_deadline_ms {
            return Err(invalid(
                "supervision.session_shutdown_ms",
                format!(
                    "{} ms does not fit in runtime.drain_deadline_ms ({} ms)",
                    s.session_shutdown_ms, r.drain_deadline_ms
                ),
            ));
        }
        Ok(())
    }

    /// Shards to run: the configured count, or one per core we may run on.
    pub fn shard_count(&self, available_cores: usize) -> usize {
        if self.runtime.shards == 0 {
            available_cores.clamp(1, SHARDS_MAX)
        } else {
            self.runtime.shards
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_are_named() {
        let error = Config::parse("[runtime]\nshardz = 2\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("shardz"), "{error}");
        let error = Config::parse("[nonsense]\n").unwrap_err().to_string();
        assert!(error.contains("nonsense"), "{error}");
    }

    #[test]
    fn wrong_types_and_bad_values_name_the_key() {
        let error = Config::parse("[runtime]\npools = \"eight\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("pools"), "{error}");
        let error = Config::parse("[runtime]\npools = 0\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "config key `runtime.pools`: must be between 1 and 4096"
        );
        let error = Config::parse("[listen]\ntcp = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("config key `listen.tcp`"), "{error}");
    }

    #[test]
    fn chaos_bounds_and_the_resume_wait_are_checked_by_name() {
        for key in ["stall_ms_max", "fill_ms_max", "recovery_timeout_ms"] {
            for value in [0, 600_001] {
                let error = Config::parse(&format!("[chaos]\n{key} = {value}\n"))
                    .unwrap_err()
                    .to_string();
                assert!(error.contains(&format!("`chaos.{key}`")), "{error}");
            }
        }
        let error = Config::parse("[limits]\nsession_resume_wait_ms = 60001\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("limits.session_resume_wait_ms"), "{error}");
        assert!(!Config::default().chaos.enabled, "chaos is off by default");
        assert!(
            Config::parse("[chaos]\nenabled = true\n")
                .unwrap()
                .chaos
                .enabled
        );
    }

    #[test]
    fn zero_bounds_are_refused_by_name() {
        for key in [
            "page_size",
            "requests_in_flight_per_session_max",
            "subscriptions_per_session_max",
        ] {
            let error = Config::parse(&format!("[limits]\n{key} = 0\n"))
                .unwrap_err()
                .to_string();
            assert_eq!(
                error,
                format!("config key `limits.{key}`: must be at least 1")
            );
        }
    }

    #[test]
    fn websocket_keepalive_bounds_are_refused_by_name_when_zero_or_past_a_day() {
        for key in ["ws_ping_interval_ms", "ws_pong_timeout_ms"] {
            for value in [0, WS_KEEPALIVE_MS_MAX + 1] {
                let error = Config::parse(&format!("[limits]\n{key} = {value}\n"))
                    .unwrap_err()
                    .to_string();
                assert_eq!(
                    error,
                    format!("config key `limits.{key}`: must be between 1 and 86400000")
                );
            }
        }
    }

    #[test]
    fn json_answer_turns_are_bounded_and_zero_is_allowed() {
        let parsed = Config::parse("[limits]\nhttp_json_answer_turns = 0\n").unwrap();
        assert_eq!(parsed.limits.http_json_answer_turns, 0);
        let error = Config::parse(&format!(
            "[limits]\nhttp_json_answer_turns = {}\n",
            HTTP_JSON_ANSWER_TURNS_MAX + 1
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(
            error,
            "config key `limits.http_json_answer_turns`: must be at most 64"
        );
    }

    #[test]
    fn shutdown_must_fit_in_drain_deadline() {
        let text = "[runtime]\ndrain_deadline_ms = 100\n[supervision]\nsession_shutdown_ms = 200\n";
        let error = Config::parse(text).unwrap_err().to_string();
        assert!(error.contains("session_shutdown_ms"), "{error}");
    }

    /// Every key of a TOML text, as `table.key`.
    fn keys(text: &str) -> Vec<String> {
        let value: toml::Value = toml::from_str(text).unwrap();
        let mut keys = Vec::new();
        for (table, entries) in value.as_table().unwrap() {
            for key in entries.as_table().unwrap().keys() {
                keys.push(format!("{table}.{key}"));
            }
        }
        keys.sort();
        keys
    }

    #[test]
    fn the_example_file_is_the_defaults_and_names_every_key() {
        let example = include_str!("../shardmcp.example.toml");
        // No documented differences: the example is the defaults, spelled out.
        assert_eq!(Config::parse(example).unwrap(), Config::default());
        assert_eq!(keys(example), keys(&Config::default().to_toml()));
    }

    #[test]
    fn admin_and_log_keys_are_checked_by_name() {
        let error = Config::parse("[listen]\nadmin = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("config key `listen.admin`"), "{error}");
        assert_eq!(
            Config::parse("[admin]\nworkers = 0\n")
                .unwrap_err()
                .to_string(),
            "config key `admin.workers`: must be between 1 and 64"
        );
        let error = Config::parse("[admin]\nshard_answer_timeout_ms = 5\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("runtime.control_poll_ms"), "{error}");
        let error = Config::parse("[log]\nformat = \"xml\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("xml"), "{error}");
        let error = Config::parse("[log]\nlevel = \"shardmcp=loud\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("config key `log.level`"), "{error}");
        let config = Config::parse("[log]\nformat = \"json\"\nlevel = \"warn\"\n").unwrap();
        assert_eq!(config.log.format, LogFormat::Json);
        assert!(
            Config::parse("[listen]\nadmin = \"\"\n").is_ok(),
            "empty disables"
        );
        assert_eq!(
            Config::parse("[admin]\npage_streams_max = 0\n")
                .unwrap_err()
                .to_string(),
            "config key `admin.page_streams_max`: must be between 1 and 64"
        );
        assert_eq!(
            Config::parse("[admin]\npage_interval_ms = 10\n")
                .unwrap_err()
                .to_string(),
            "config key `admin.page_interval_ms`: must be between 100 and 60000"
        );
        let config =
            Config::parse("[admin]\npage_streams_max = 8\npage_interval_ms = 250\n").unwrap();
        assert_eq!(
            (config.admin.page_streams_max, config.admin.page_interval_ms),
            (8, 250)
        );
    }

    #[test]
    fn auth_keys_are_checked_by_name() {
        let on = "[listen]\ntcp = \"\"\n[auth]\nmode = \"jwt\"\nresource = \"https://mcp.example.com/mcp\"\nissuer = \"https://as.example.com\"\nauthorization_servers = [\"https://as.example.com\"]\njwks_file = \"jwks.json\"\n";
        let config = Config::parse(on).unwrap();
        assert_eq!(config.auth.mode, AuthMode::Jwt);
        assert_eq!(config.auth.audience(), "https://mcp.example.com/mcp");
        let error = |text: &str| Config::parse(text).unwrap_err().to_string();
        let tcp_on = on.replace("tcp = \"\"", "tcp = \"127.0.0.1:0\"");
        assert!(
            error(&tcp_on)
                .starts_with("config key `listen.tcp`: must be \"\" while auth.mode is on"),
            "{}",
            error(&tcp_on)
        );
        for (from, to, key) in [
            (
                "resource = \"https://mcp.example.com/mcp\"",
                "resource = \"\"",
                "auth.resource",
            ),
            (
                "resource = \"https://mcp.example.com/mcp\"",
                "resource = \"mcp.example.com\"",
                "auth.resource",
            ),
            (
                "resource = \"https://mcp.example.com/mcp\"",
                "resource = \"https://h/mcp#x\"",
                "auth.resource",
            ),
            (
                "issuer = \"https://as.example.com\"",
                "issuer = \"\"",
                "auth.issuer",
            ),
            (
                "jwks_file = \"jwks.json\"",
                "jwks_file = \"\"",
                "auth.jwks_file",
            ),
            (
                "authorization_servers = [\"https://as.example.com\"]",
                "authorization_servers = []",
                "auth.authorization_servers",
            ),
            (
                "authorization_servers = [\"https://as.example.com\"]",
                "authorization_servers = [\"as\"]",
                "auth.authorization_servers",
            ),
            ("mode = \"jwt\"", "mode = \"static\"", "auth.tokens_file"),
            (
                "mode = \"jwt\"",
                "mode = \"jwt\"\nalgorithms = [\"HS256\"]",
                "auth.algorithms",
            ),
            (
                "mode = \"jwt\"",
                "mode = \"jwt\"\nalgorithms = []",
                "auth.algorithms",
            ),
            (
                "mode = \"jwt\"",
                "mode = \"jwt\"\nleeway_secs = 601",
                "auth.leeway_secs",
            ),
            (
                "mode = \"jwt\"",
                "mode = \"jwt\"\ntoken_cache_entries_max = 0",
                "auth.token_cache_entries_max",
            ),
            (
                "mode = \"jwt\"",
                "mode = \"jwt\"\njwks_keys_max = 0",
                "auth.jwks_keys_max",
            ),
            (
                "mode = \"jwt\"",
                "mode = \"jwt\"\ntokens_max = 0",
                "auth.tokens_max",
            ),
            (
                "mode = \"jwt\"",
                "mode = \"jwt\"\nscopes_required = [\"a b\"]",
                "auth.scopes_required",
            ),
        ] {
            let text = on.replace(from, to);
            assert!(
                error(&text).starts_with(&format!("config key `{key}`")),
                "{key}: {}",
                error(&text)
            );
        }
        assert!(error("[auth]\nmode = \"sometimes\"\n").contains("sometimes"));
        // HTTP off (serve --stdio with the same file): nothing to guard, no error.
        let no_http = on.replace("tcp = \"\"", "tcp = \"\"\nhttp = \"\"");
        assert!(Config::parse(&no_http).is_ok());
        // Off, the other keys are not required.
        assert!(Config::parse("[auth]\nmode = \"off\"\n").is_ok());
    }

    #[test]
    fn protect_keys_are_checked_by_name() {
        for (text, expected) in [
            (
                "[protect]\nsession_burst = 0\n",
                "config key `protect.session_burst`: must be at least 1",
            ),
            (
                "[protect]\nbuckets_max = 0\n",
                "config key `protect.buckets_max`: must be at least 1",
            ),
            (
                "[protect]\nrequests_in_flight_per_shard_max = 0\n",
                "config key `protect.requests_in_flight_per_shard_max`: must be at least 1",
            ),
            (
                "[protect]\nhttp_head_bytes_max = 10\n",
                "config key `protect.http_head_bytes_max`: must be between 1024 and 1048576",
            ),
            (
                "[protect]\nmemory_check_interval_ms = 0\n",
                "config key `protect.memory_check_interval_ms`: must be between 10 and 60000",
            ),
            (
                "[protect]\nbreaker_cooldown_ms = 0\n",
                "config key `protect.breaker_cooldown_ms`: must be between 1 and 86400000",
            ),
            (
                "[protect]\nretry_after_s = 0\n",
                "config key `protect.retry_after_s`: must be between 1 and 3600",
            ),
        ] {
            assert_eq!(Config::parse(text).unwrap_err().to_string(), expected);
        }
        let error = Config::parse("[protect]\nrate = 5\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("rate"), "{error}");
        let config = Config::parse("[protect]\nsession_rate_per_s = 0\nmemory_guard_bytes = 1\n")
            .expect("0 turns the session rate off");
        assert_eq!(config.protect.memory_guard_bytes, 1);
    }

    #[test]
    fn printed_config_parses_back_to_itself() {
        let mut config = Config::default();
        config.runtime.shards = 3;
        assert_eq!(Config::parse(&config.to_toml()).unwrap(), config);
    }

    #[test]
    fn otel_endpoints_are_plain_http_urls() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:4318/v1/traces"),
            Ok(("127.0.0.1".to_string(), 4318, "/v1/traces".to_string()))
        );
        assert_eq!(
            parse_http_url("http://collector"),
            Ok(("collector".to_string(), 80, "/v1/traces".to_string()))
        );
        assert_eq!(
            parse_http_url("http://[::1]:9/x"),
            Ok(("[::1]".to_string(), 9, "/x".to_string()))
        );
        for bad in [
            "https://127.0.0.1:4318/v1/traces",
            "127.0.0.1:4318",
            "http://",
            "http://:4318/",
            "http://host:0/",
            "http://host:http/",
            "http://user@host/",
            "http://host/a b",
        ] {
            assert!(parse_http_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn otel_bounds_are_checked_by_name() {
        for (text, key) in [
            (
                "[otel]\nexport_interval_ms = 0\n",
                "otel.export_interval_ms",
            ),
            ("[otel]\nqueue_size_max = 0\n", "otel.queue_size_max"),
            ("[otel]\nbatch_size_max = 5000\n", "otel.batch_size_max"),
            ("[otel]\nexport_timeout_ms = 0\n", "otel.export_timeout_ms"),
            (
                "[otel]\nresponse_bytes_max = 10\n",
                "otel.response_bytes_max",
            ),
            ("[otel]\nservice_name = \"\"\n", "otel.service_name"),
        ] {
            let error = Config::parse(text).unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("config key `{key}`")),
                "{text}: {error}"
            );
        }
    }

    #[cfg(not(feature = "otel"))]
    #[test]
    fn an_otel_endpoint_is_refused_by_a_binary_built_without_the_feature() {
        let error = Config::parse("[otel]\nendpoint = \"http://127.0.0.1:4318/v1/traces\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("config key `otel.endpoint`"), "{error}");
        assert!(error.contains("--features otel"), "{error}");
        // The other keys are inert without an endpoint and load as usual.
        let config = Config::parse("[otel]\nservice_name = \"edge\"\n").unwrap();
        assert_eq!(config.otel.service_name, "edge");
    }

    #[cfg(feature = "otel")]
    #[test]
    fn an_otel_endpoint_is_checked_by_a_binary_built_with_the_feature() {
        let config =
            Config::parse("[otel]\nendpoint = \"http://127.0.0.1:4318/v1/traces\"\n").unwrap();
        assert_eq!(config.otel.endpoint, "http://127.0.0.1:4318/v1/traces");
        let error = Config::parse("[otel]\nendpoint = \"https://collector/v1/traces\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("config key `otel.endpoint`"), "{error}");
        assert!(error.contains("http://"), "{error}");
    }
}
