//! The admin listener: `/metrics` (Prometheus text), `/health/live`,
//! `/health/ready`, `/admin/tree` and the live page (`/`, `/admin/events`,
//! see `admin_page`), apart from MCP traffic.
//!
//! It runs on its own few threads (`admin.workers`, blocking std sockets),
//! not on a shard. A shard can be busy with a long handler or dead and
//! waiting for its restart; an admin listener on shard 0 would then go
//! silent exactly when an operator needs it, and readiness could never
//! report shard 0 itself down. These threads never touch the request path:
//! they ask the node loop, which asks each shard over its control queue (the
//! same path as `NodeHandle::query`), and wait at most
//! `admin.shard_answer_timeout_ms`; a shard that has not answered by then is
//! reported down. The shards count for themselves in thread-locals
//! (`observe::metrics`); the figures are gathered only when scraped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender};
use serde_json::{json, Value};

use crate::config::Config;
use crate::observe::metrics::{LATENCY_BUCKETS_NS, RESTART_BUCKETS_NS, SHED_REASONS};
use crate::observe::process;
use crate::observe::prometheus::{self, Family};
use crate::supervision::TreeNode;

use super::admin_page::{self, PageStreams, StreamContext};
use super::node::{NodeCommand, NodeError, NodeStatus};
use super::shard::ShardReport;

/// Accept errors (EMFILE...) are retried after this pause, so a worker
/// never spins.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Binds the admin address; returns the listener and the address it got
/// (port 0 becomes a concrete port).
pub(super) fn bind(text: &str) -> Result<(TcpListener, SocketAddr), NodeError> {
    let error = |source| NodeError::Reserve {
        kind: "admin",
        addr: text.to_string(),
        source,
    };
    let wanted: SocketAddr = text
        .parse()
        .map_err(|_| error(std::io::Error::other("not an address")))?;
    let listener = TcpListener::bind(wanted).map_err(error)?;
    let bound = listener.local_addr().map_err(error)?;
    Ok((listener, bound))
}

/// The running admin listener; dropping it stops its threads.
pub struct AdminServer {
    stop: Arc<AtomicBool>,
    listener: TcpListener,
    workers: Vec<JoinHandle<()>>,
    pages: Arc<PageStreams>,
}

impl AdminServer {
    pub(super) fn start(
        listener: TcpListener,
        node: Sender<NodeCommand>,
        config: Arc<Config>,
    ) -> Result<AdminServer, NodeError> {
        // Off the request path: one flag the admin threads share.
        let stop = Arc::new(AtomicBool::new(false));
        let mut server = AdminServer {
            stop: stop.clone(),
            listener,
            workers: Vec::new(),
            pages: Arc::new(PageStreams::default()),
        };
        for index in 0..config.admin.workers {
            let listener = server.listener.try_clone().map_err(NodeError::Admin)?;
            let worker = Worker {
                node: node.clone(),
                config: config.clone(),
                stop: stop.clone(),
                pages: server.pages.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("shardmcp-admin-{index}"))
                .spawn(move || worker.run(listener))
                .map_err(NodeError::Admin)?;
            server.workers.push(thread);
        }
        Ok(server)
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // shutdown(2) on a listening socket wakes every thread blocked in
        // accept(2) on it (Linux), which then sees the flag.
        // SAFETY: the fd is our open listener; shutdown changes only its state.
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        // After the workers: none of them can start a stream any more.
        self.pages.join();
    }
}

struct Worker {
    node: Sender<NodeCommand>,
    config: Arc<Config>,
    stop: Arc<AtomicBool>,
    pages: Arc<PageStreams>,
}

/// One answer: status line, content type, body.
struct Response {
    status: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    allow: bool,
    /// Further header lines, each ending in CRLF.
    headers: &'static str,
}

impl Response {
    fn text(status: &'static str, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
            allow: false,
            headers: "",
        }
    }

    fn page(content_type: &'static str, body: &'static str) -> Response {
        Response {
            status: "200 OK",
            content_type,
            body: body.as_bytes().to_vec(),
            allow: false,
            headers: admin_page::PAGE_HEADERS,
        }
    }
}

impl Worker {
    fn run(self, listener: TcpListener) {
        loop {
            let accepted = listener.accept();
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            match accepted {
                Ok((stream, _)) => self.serve(stream),
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    std::thread::sleep(ACCEPT_BACKOFF);
                }
            }
        }
    }

    fn serve(&self, mut stream: TcpStream) {
        let timeout = Duration::from_millis(self.config.admin.io_timeout_ms);
        let _ = stream.set_read_timeout(Some(timeout));
        let _ = stream.set_write_timeout(Some(timeout));
        let response = match read_head(&mut stream, self.config.admin.request_head_bytes_max) {
            Ok(head) if head.method == "GET" && path_of(&head) == "/admin/events" => {
                let context = StreamContext {
                    node: self.node.clone(),
                    config: self.config.clone(),
                    stop: self.stop.clone(),
                };
                self.pages.open(stream, context);
                return;
            }
            Ok(head) => self.answer(&head),
            Err(HeadError::TooLarge) => Response::text(
                "431 Request Header Fields Too Large",
                "request head exceeds admin.request_head_bytes_max\n",
            ),
            Err(HeadError::Malformed) => Response::text("400 Bad Request", "bad request\n"),
            Err(HeadError::Io) => return,
        };
        let mut head = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            response.status,
            response.content_type,
            response.body.len()
        );
        if response.allow {
            head.push_str("Allow: GET\r\n");
        }
        head.push_str(response.headers);
        head.push_str("\r\n");
        let _ = stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(&response.body));
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }

    fn answer(&self, head: &RequestHead) -> Response {
        let path = path_of(head);
        if path.starts_with("/admin/chaos/") {
            return match super::chaos::answer(&head.method, &head.path, &self.node, &self.config) {
                Ok(answer) => Response {
                    status: "200 OK",
                    content_type: "application/json",
                    body: serde_json::to_vec(&answer).unwrap_or_default(),
                    allow: false,
                    headers: "",
                },
                Err((status, body)) => Response::text(status, body),
            };
        }
        let known = matches!(
            path,
            "/metrics"
                | "/health/live"
                | "/health/ready"
                | "/admin/tree"
                | "/"
                | "/admin/page.js"
                | "/admin/page.css"
                | "/admin/events"
        );
        if !known {
            return Response::text(
                "404 Not Found",
                "not found: try /, /metrics, /health/live, /health/ready or /admin/tree\n",
            );
        }
        if head.method != "GET" {
            let mut response = Response::text("405 Method Not Allowed", "only GET\n");
            response.allow = true;
            return response;
        }
        match path {
            "/health/live" => Response::text("200 OK", "live\n"),
            "/" => Response::page("text/html; charset=utf-8", admin_page::INDEX_HTML),
            "/admin/page.js" => {
                Response::page("text/javascript; charset=utf-8", admin_page::PAGE_JS)
            }
            "/admin/page.css" => Response::page("text/css; charset=utf-8", admin_page::PAGE_CSS),
            "/health/ready" => match readiness(&self.gather()) {
                Ok(line) => Response::text("200 OK", line),
                Err(reasons) => Response::text(
                    "503 Service Unavailable",
                    format!("not ready:\n{}", reasons.join("")),
                ),
            },
            "/metrics" => Response {
                status: "200 OK",
                content_type: prometheus::CONTENT_TYPE,
                body: metrics_text(&self.gather(), &ProcessFigures::read()).into_bytes(),
                allow: false,
                headers: "",
            },
            _ => match tree_json(&self.gather()) {
                Some(tree) => Response {
                    status: "200 OK",
                    content_type: "application/json",
                    body: tree.to_string().into_bytes(),
                    allow: false,
                    headers: "",
                },
                None => Response::text("503 Service Unavailable", "the node has stopped\n"),
            },
        }
    }

    fn gather(&self) -> Gathered {
        gather(&self.node, &self.config)
    }
}

/// The path of a request without its query.
fn path_of(head: &RequestHead) -> &str {
    head.path.split('?').next().unwrap_or("")
}

/// The node's status and every running shard's report, each waited for at
/// most `admin.shard_answer_timeout_ms`: what a scrape, the tree and a page
/// push all read.
pub(super) fn gather(node: &Sender<NodeCommand>, config: &Config) -> Gathered {
    let wait = Duration::from_millis(config.admin.shard_answer_timeout_ms);
    let deadline = Instant::now() + wait;
    let (reply, answer) = bounded(1);
    let status = node
        .send_timeout(NodeCommand::Status(reply), wait)
        .ok()
        .and_then(|()| answer.recv_deadline(deadline).ok());
    let Some(status) = status else {
        return Gathered {
            status: None,
            reports: Vec::new(),
        };
    };
    let mut reports: Vec<Option<ShardReport>> = vec![None; status.shards.len()];
    let expected = status.shards.iter().filter(|s| s.running).count();
    let (reply, answers) = bounded(status.shards.len().max(1));
    if expected > 0
        && node
            .send_deadline(NodeCommand::QueryAll(reply), deadline)
            .is_ok()
    {
        let mut got = 0;
        while got < expected {
            let Ok(report) = answers.recv_deadline(deadline) else {
                break;
            };
            if let Some(slot) = reports.get_mut(report.shard.index()) {
                got += usize::from(slot.is_none());
                *slot = Some(report);
            }
        }
    }
    Gathered {
        status: Some(status),
        reports,
    }
}

/// What a scrape gathered: the node's view (None when the node loop did not
/// answer) and each shard's report by index (None when it did not answer).
pub struct Gathered {
    pub status: Option<NodeStatus>,
    pub reports: Vec<Option<ShardReport>>,
}

impl Gathered {
    /// Whether shard `index` is up and answered, with its report.
    fn shard_up(&self, index: usize) -> Option<&ShardReport> {
        let status = self.status.as_ref()?;
        let shard = status.shards.get(index)?;
        if !shard.is_up(&status.expected_listeners) {
            return None;
        }
        self.reports.get(index)?.as_ref()
    }
}

/// 200 with one line, or the reasons (one line each) for 503: ready when
/// the node is not draining and every shard runs, has bound every listener
/// since it started, answers, and has each listener child running.
pub fn readiness(gathered: &Gathered) -> Result<String, Vec<String>> {
    let Some(status) = &gathered.status else {
        return Err(vec!["node: stopped or not answering\n".to_string()]);
    };
    let mut reasons = Vec::new();
    if status.draining {
        reasons.push("node: draining\n".to_string());
    }
    for (index, shard) in status.shards.iter().enumerate() {
        let id = shard.shard;
        if !shard.running {
            let held = if shard.held {
                " (its restart is held)"
            } else {
                " (restarting)"
            };
            reasons.push(format!("shard {id}: down{held}\n"));
            continue;
        }
        let missing: Vec<&str> = status
            .expected_listeners
            .iter()
            .filter(|kind| !shard.listening.contains(kind))
            .copied()
            .collect();
        if !missing.is_empty() {
            reasons.push(format!(
                "shard {id}: starting, listener(s) not bound yet: {}\n",
                missing.join(", ")
            ));
            continue;
        }
        let Some(Some(report)) = gathered.reports.get(index) else {
            reasons.push(format!("shard {id}: did not answer in time\n"));
            continue;
        };
        for kind in &status.expected_listeners {
            let running = report
                .tree
                .find(&["listeners", kind])
                .is_some_and(|child| child.running);
            if !running {
                reasons.push(format!("shard {id}: listener {kind} is not running\n"));
            }
        }
    }
    if reasons.is_empty() {
        let listeners = if status.expected_listeners.is_empty() {
            "no listeners".to_string()
        } else {
            format!("{} accepting", status.expected_listeners.join(", "))
        };
        Ok(format!(
            "ready: {} shards up, {listeners}\n",
            status.shards.len()
        ))
    } else {
        Err(reasons)
    }
}

/// The live tree: the node, its shards, and each shard's supervision tree.
/// A shard that is down or did not answer appears with its status and no
/// children. None when the node loop did not answer.
pub fn tree_json(gathered: &Gathered) -> Option<Value> {
    let status = gathered.status.as_ref()?;
    let children: Vec<Value> = status
        .shards
        .iter()
        .enumerate()
        .map(|(index, shard)| {
            let report = gathered.reports.get(index).and_then(Option::as_ref);
            let state = if !shard.running {
                if shard.held {
                    "down (restart held)"
                } else {
                    "down"
                }
            } else if !shard.is_up(&status.expected_listeners) {
                "starting"
            } else if report.is_none() {
                "not answering"
            } else {
                "up"
            };
            match report {
                Some(report) => {
                    let mut node = serde_json::to_value(&report.tree).unwrap_or(Value::Null);
                    if let Value::Object(fields) = &mut node {
                        // The node is a shard's parent: it counts its restarts.
                        fields.insert("restarts".into(), json!(shard.restarts));
                        fields.insert("status".into(), json!(state));
                        fields.insert("shard".into(), json!(shard.shard.0));
                        fields.insert("sessions".into(), json!(report.sessions));
                    }
                    node
                }
                None => json!({
                    "id": format!("shard-{}", shard.shard),
                    "shard": shard.shard.0,
                    "kind": "supervisor",
                    "status": state,
                    "running": shard.running,
                    "restarts": shard.restarts,
                    "children_restarted": 0,
                    "child_count": 0,
                    "children": [],
                    "error": if shard.running { "did not answer in time" } else { "shard is down" },
                }),
            }
        })
        .collect();
    Some(json!({
        "id": "node",
        "kind": "node",
        "strategy": "restart_shard",
        "restart_intensity": {
            "restarts_max": status.shard_restarts_max,
            "period_ms": status.shard_restart_period_ms,
        },
        "running": true,
        "draining": status.draining,
        "restarts": status.shards.iter().map(|s| s.restarts).sum::<u64>(),
        "children_restarted": status.shards.iter().map(|s| s.restarts).sum::<u64>(),
        "child_count": status.shards.len(),
        "children": children,
    }))
}

/// Process-wide figures, read at scrape time.
pub struct ProcessFigures {
    pub resident_bytes: Option<u64>,
    pub resident_peak_bytes: Option<u64>,
    pub open_fds: Option<u64>,
}

impl ProcessFigures {
    pub fn read() -> ProcessFigures {
        ProcessFigures {
            resident_bytes: process::resident_memory_bytes(),
            resident_peak_bytes: process::resident_memory_peak_bytes(),
            open_fds: process::open_fds(),
        }
    }
}

fn seconds(bounds_ns: &[u64]) -> Vec<f64> {
    bounds_ns.iter().map(|&ns| ns as f64 / 1e9).collect()
}

/// Every supervisor of a shard's tree with its path from the shard root
/// (`shard-0/pools/pool-3`) and the restarts it performed.
fn supervisors<'a>(node: &'a TreeNode, path: String, out: &mut Vec<(String, &'a TreeNode)>) {
    if node.strategy.is_some() {
        out.push((path.clone(), node));
    }
    for child in &node.children {
        supervisors(child, format!("{path}/{}", child.id), out);
    }
}

/// `/metrics`: every family, every sample labelled with its shard. A shard
/// that is down or did not answer has `shardmcp_shard_up 0` and no other
/// samples this time.
pub fn metrics_text(gathered: &Gathered, process: &ProcessFigures) -> String {
    let mut shards = Family::gauge("shardmcp_shards", "Shards the node runs.");
    let mut up = Family::gauge(
        "shardmcp_shard_up",
        "1 when the shard runs, has bound its listeners and answered this scrape.",
    );
    let mut shard_restarts = Family::counter(
        "shardmcp_shard_restarts_total",
        "Times the node restarted the shard after it died.",
    );
    let mut requests = Family::counter(
        "shardmcp_requests_total",
        "MCP requests by method and outcome (ok, error, cancelled, timeout, panic, refused).",
    );
    let mut latency = Family::histogram(
        "shardmcp_request_duration_seconds",
        "Time from a request's arrival at its session to its answer, by method.",
    );
    let mut sessions = Family::gauge("shardmcp_sessions", "Open sessions by transport.");
    let mut sessions_opened = Family::counter(
        "shardmcp_sessions_opened_total",
        "Sessions opened by transport.",
    );
    let mut pool_sessions = Family::gauge("shardmcp_pool_sessions", "Sessions in each pool.");
    let mut connections = Family::gauge("shardmcp_connections", "Open connections by transport.");
    let mut accepted = Family::counter(
        "shardmcp_connections_accepted_total",
        "Connections accepted by transport.",
    );
    let mut supervisor_restarts = Family::counter(
        "shardmcp_supervisor_restarts_total",
        "Restarts each supervisor performed (path from the shard root).",
    );
    let mut restart_duration = Family::histogram(
        "shardmcp_restart_duration_seconds",
        "Time from a child's death being noticed to its replacement's first poll.",
    );
    let mut mesh_depth = Family::gauge(
        "shardmcp_mesh_queue_depth",
        "Messages waiting in the mesh queue from the shard to a peer.",
    );
    let mut mesh_full = Family::counter(
        "shardmcp_mesh_backpressure_events_total",
        "Times the shard found a mesh queue full (the sender waited or the message was handed back).",
    );
    let mut mesh_pending = Family::gauge(
        "shardmcp_mesh_pending_calls",
        "Mesh calls the shard has waiting for replies.",
    );
    let mut forwarded = Family::counter(
        "shardmcp_http_forwarded_total",
        "HTTP requests the shard sent over the mesh to the shard owning their session.",
    );
    let mut tasks = Family::gauge("shardmcp_tasks", "Tasks held by the shard's sessions.");
    let mut event_streams = Family::gauge(
        "shardmcp_event_store_streams",
        "SSE streams the shard holds open or keeps for resumption.",
    );
    let mut event_bytes = Family::gauge(
        "shardmcp_event_store_bytes",
        "Bytes of SSE history the shard keeps for resumption.",
    );
    let mut slow_clients = Family::counter(
        "shardmcp_sse_slow_clients_total",
        "SSE connections dropped because their client read too slowly (it can resume).",
    );
    let mut auth_refusals = Family::counter(
        "shardmcp_auth_refusals_total",
        "HTTP requests refused by authorization, by status and RFC 6750 error.",
    );
    let mut rss = Family::gauge(
        "process_resident_memory_bytes",
        "Resident memory of the process (VmRSS).",
    );
    let mut rss_peak = Family::gauge(
        "shardmcp_process_resident_memory_peak_bytes",
        "Peak resident memory of the process (VmHWM).",
    );
    let mut fds = Family::gauge("process_open_fds", "Open file descriptors of the process.");
    let mut shed = Family::counter(
        "shardmcp_shed_total",
        "Requests and connections refused by overload protection, by reason.",
    );
    let mut breaker_opens = Family::counter(
        "shardmcp_breaker_opens_total",
        "Times a tool's circuit breaker opened.",
    );
    let mut breakers_open = Family::gauge(
        "shardmcp_breakers_open",
        "Tool circuit breakers open or half-open.",
    );

    let latency_bounds = seconds(LATENCY_BUCKETS_NS);
    let restart_bounds = seconds(RESTART_BUCKETS_NS);
    if let Some(status) = &gathered.status {
        shards.add(&[], status.shards.len() as f64);
        for (index, shard) in status.shards.iter().enumerate() {
            let label = shard.shard.to_string();
            let by_shard = [("shard", label.as_str())];
            let report = gathered.shard_up(index);
            up.add(&by_shard, f64::from(u8::from(report.is_some())));
            shard_restarts.add(&by_shard, shard.restarts as f64);
            let Some(report) = report else { continue };
            for method in &report.metrics.methods {
                for &(outcome, count) in &method.outcomes {
                    requests.add(
                        &[
                            ("shard", &label),
                            ("method", method.method),
                            ("outcome", outcome),
                        ],
                        count as f64,
                    );
                }
                latency.add_histogram(
                    &[("shard", &label), ("method", method.method)],
                    &latency_bounds,
                    &method.buckets,
                    method.sum_seconds,
                    method.count,
                );
            }
            for transport in &report.metrics.transports {
                let labels = [
                    ("shard", label.as_str()),
                    ("transport", transport.transport),
                ];
                sessions.add(&labels, transport.sessions_open as f64);
                sessions_opened.add(&labels, transport.sessions_opened as f64);
                connections.add(&labels, transport.connections_open as f64);
                accepted.add(&labels, transport.connections_accepted as f64);
            }
            for (pool, &count) in report.pool_sessions.iter().enumerate() {
                pool_sessions.add(
                    &[("shard", &label), ("pool", &pool.to_string())],
                    count as f64,
                );
            }
            let mut found = Vec::new();
            supervisors(&report.tree, report.tree.id.clone(), &mut found);
            for (path, node) in found {
                supervisor_restarts.add(
                    &[("shard", &label), ("supervisor", &path)],
                    node.children_restarted as f64,
                );
            }
            restart_duration.add_histogram(
                &by_shard,
                &restart_bounds,
                &report.restart_durations.cumulative,
                report.restart_durations.sum_ns / 1e9,
                report.restart_durations.count,
            );
            for &(peer, depth) in &report.mesh_queue_depth {
                mesh_depth.add(
                    &[("shard", &label), ("peer", &peer.to_string())],
                    depth as f64,
                );
            }
            mesh_full.add(&by_shard, report.mesh_full_events as f64);
            mesh_pending.add(&by_shard, report.mesh_pending_calls as f64);
            forwarded.add(&by_shard, report.http_forwarded as f64);
            tasks.add(&by_shard, report.tasks as f64);
            event_streams.add(&by_shard, report.event_store_streams as f64);
            event_bytes.add(&by_shard, report.event_store_bytes as f64);
            slow_clients.add(&by_shard, report.sse_slow_clients as f64);
            for &(status, error, count) in &report.metrics.auth_refusals {
                auth_refusals.add(
                    &[("shard", &label), ("status", status), ("error", error)],
                    count as f64,
                );
            }
            let protect = &report.metrics.protect;
            for (reason, &count) in SHED_REASONS.iter().zip(&protect.shed) {
                shed.add(&[("shard", &label), ("reason", reason)], count as f64);
            }
            breaker_opens.add(&by_shard, protect.breaker_opens as f64);
            breakers_open.add(&by_shard, protect.breakers_open as f64);
        }
    }
    if let Some(bytes) = process.resident_bytes {
        rss.add(&[], bytes as f64);
    }
    if let Some(bytes) = process.resident_peak_bytes {
        rss_peak.add(&[], bytes as f64);
    }
    if let Some(count) = process.open_fds {
        fds.add(&[], count as f64);
    }
    prometheus::render(&[
        shards,
        up,
        shard_restarts,
        requests,
        latency,
        sessions,
        sessions_opened,
        pool_sessions,
        connections,
        accepted,
        supervisor_restarts,
        restart_duration,
        mesh_depth,
        mesh_full,
        mesh_pending,
        forwarded,
        tasks,
        event_streams,
        event_bytes,
        slow_clients,
        auth_refusals,
        rss,
        rss_peak,
        fds,
        shed,
        breaker_opens,
        breakers_open,
    ])
}

/// The request line of an admin request.
struct RequestHead {
    method: String,
    path: String,
}

enum HeadError {
    TooLarge,
    Malformed,
    Io,
}

/// Reads up to the end of the request head (a body, if any, is ignored:
/// every admin endpoint is a GET).
fn read_head(stream: &mut TcpStream, bytes_max: usize) -> Result<RequestHead, HeadError> {
    let mut buffer = Vec::with_capacity(1_024);
    let mut chunk = [0u8; 1_024];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buffer) {
            Ok(httparse::Status::Complete(_)) => {
                return Ok(RequestHead {
                    method: request.method.unwrap_or("").to_string(),
                    path: request.path.unwrap_or("").to_string(),
                })
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(_) => return Err(HeadError::Malformed),
        }
        if buffer.len() >= bytes_max {
            return Err(HeadError::TooLarge);
        }
        let room = chunk.len().min(bytes_max - buffer.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) | Err(_) => return Err(HeadError::Io),
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ShardId;
    use crate::runtime::ShardStatus;
    use crate::supervision::{ChildKind, Restart};

    fn leaf(id: &str, running: bool) -> TreeNode {
        TreeNode {
            id: id.to_string(),
            kind: ChildKind::Worker,
            strategy: None,
            restart: Restart::Transient,
            running,
            restarts: 0,
            children_restarted: 0,
            child_count: 0,
            children: Vec::new(),
        }
    }

    fn shard_tree(shard: u16, http_running: bool) -> TreeNode {
        let listeners = TreeNode {
            id: "listeners".into(),
            kind: ChildKind::Supervisor,
            strategy: Some("one_for_one"),
            restart: Restart::Permanent,
            running: true,
            restarts: 0,
            children_restarted: 3,
            child_count: 2,
            children: vec![leaf("tcp", true), leaf("http", http_running)],
        };
        TreeNode {
            id: format!("shard-{shard}"),
            kind: ChildKind::Supervisor,
            strategy: Some("one_for_one"),
            restart: Restart::Permanent,
            running: true,
            restarts: 0,
            children_restarted: 0,
            child_count: 1,
            children: vec![listeners],
        }
    }

    fn report(shard: u16, http_running: bool) -> ShardReport {
        ShardReport {
            shard: ShardId(shard),
            sessions: 0,
            pool_sessions: vec![0, 0],
            restarts: Default::default(),
            mesh_full_events: 7,
            http_forwarded: 0,
            tree: shard_tree(shard, http_running),
            metrics: Default::default(),
            tasks: 0,
            tools: 0,
            mesh_queue_depth: vec![(ShardId(1 - shard), 0)],
            mesh_pending_calls: 0,
            restart_durations: Default::default(),
            event_store_streams: 0,
            event_store_bytes: 0,
            sse_slow_clients: 0,
        }
    }

    fn status(running: [bool; 2]) -> NodeStatus {
        NodeStatus {
            draining: false,
            expected_listeners: vec!["tcp", "http"],
            shards: (0..2)
                .map(|i| ShardStatus {
                    shard: ShardId(i as u16),
                    running: running[i],
                    listening: if running[i] {
                        vec!["tcp", "http"]
                    } else {
                        Vec::new()
                    },
                    restarts: 1,
                    held: false,
                    last_recovery_us: None,
                })
                .collect(),
            shard_restarts_max: 5,
            shard_restart_period_ms: 10_000,
        }
    }

    #[test]
    fn ready_only_when_every_shard_is_up_answers_and_runs_its_listeners() {
        let all = Gathered {
            status: Some(status([true, true])),
            reports: vec![Some(report(0, true)), Some(report(1, true))],
        };
        assert_eq!(
            readiness(&all),
            Ok("ready: 2 shards up, tcp, http accepting\n".to_string())
        );

        let down = Gathered {
            status: Some(status([true, false])),
            reports: vec![Some(report(0, true)), None],
        };
        assert_eq!(
            readiness(&down),
            Err(vec!["shard 1: down (restarting)\n".to_string()])
        );

        let silent = Gathered {
            status: Some(status([true, true])),
            reports: vec![None, Some(report(1, true))],
        };
        assert_eq!(
            readiness(&silent),
            Err(vec!["shard 0: did not answer in time\n".to_string()])
        );

        let listener_down = Gathered {
            status: Some(status([true, true])),
            reports: vec![Some(report(0, true)), Some(report(1, false))],
        };
        assert_eq!(
            readiness(&listener_down),
            Err(vec!["shard 1: listener http is not running\n".to_string()])
        );

        let mut starting = status([true, true]);
        starting.shards[0].listening = vec!["tcp"];
        starting.draining = true;
        let starting = Gathered {
            status: Some(starting),
            reports: vec![Some(report(0, true)), Some(report(1, true))],
        };
        assert_eq!(
            readiness(&starting),
            Err(vec![
                "node: draining\n".to_string(),
                "shard 0: starting, listener(s) not bound yet: http\n".to_string()
            ])
        );

        let stopped = Gathered {
            status: None,
            reports: Vec::new(),
        };
        assert!(readiness(&stopped).is_err());
    }

    #[test]
    fn metrics_mark_a_silent_shard_down_and_label_the_rest() {
        let gathered = Gathered {
            status: Some(status([true, false])),
            reports: vec![Some(report(0, true)), None],
        };
        let figures = ProcessFigures {
            resident_bytes: Some(4_096),
            resident_peak_bytes: None,
            open_fds: Some(9),
        };
        let text = metrics_text(&gathered, &figures);
        assert!(
            text.contains("shardmcp_shard_up{shard=\"0\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("shardmcp_shard_up{shard=\"1\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("shardmcp_shard_restarts_total{shard=\"1\"} 1\n"));
        assert!(text.contains(
            "shardmcp_supervisor_restarts_total{shard=\"0\",supervisor=\"shard-0/listeners\"} 3\n"
        ));
        assert!(text.contains("shardmcp_mesh_backpressure_events_total{shard=\"0\"} 7\n"));
        assert!(!text.contains("shardmcp_mesh_backpressure_events_total{shard=\"1\"}"));
        assert!(
            text.contains("shardmcp_restart_duration_seconds_bucket{shard=\"0\",le=\"+Inf\"} 0\n")
        );
        assert!(text.contains("process_resident_memory_bytes 4096\n"));
        assert!(!text.contains("shardmcp_process_resident_memory_peak_bytes"));
    }

    #[test]
    fn the_tree_puts_shards_under_the_node_with_their_status() {
        let gathered = Gathered {
            status: Some(status([true, false])),
            reports: vec![Some(report(0, true)), None],
        };
        let tree = tree_json(&gathered).unwrap();
        assert_eq!(tree["id"], "node");
        assert_eq!(tree["child_count"], 2);
        assert_eq!(tree["restarts"], 2);
        assert_eq!(tree["children"][0]["id"], "shard-0");
        assert_eq!(tree["children"][0]["status"], "up");
        assert_eq!(tree["children"][0]["children"][0]["id"], "listeners");
        assert_eq!(tree["children"][1]["status"], "down");
        assert_eq!(tree["children"][1]["error"], "shard is down");
    }

    #[test]
    fn a_page_snapshot_has_the_tree_and_each_shards_rate_and_latency() {
        use crate::observe::metrics::{MethodSnapshot, MetricsSnapshot};
        let with_calls = |ok: u64, first: u64| {
            let n = LATENCY_BUCKETS_NS.len();
            let mut buckets = vec![ok + 1; n];
            buckets[0] = first;
            MetricsSnapshot {
                methods: vec![MethodSnapshot {
                    method: "tools/call",
                    outcomes: vec![("ok", ok), ("error", 1)],
                    buckets,
                    sum_seconds: 0.0,
                    count: ok + 1,
                }],
                transports: Vec::new(),
                ..MetricsSnapshot::default()
            }
        };
        let mut busy = report(0, true);
        busy.sessions = 3;
        busy.pool_sessions = vec![1, 2];
        busy.metrics = with_calls(3, 2);
        let gathered = Gathered {
            status: Some(status([true, false])),
            reports: vec![Some(busy.clone()), None],
        };
        let (first, window) = admin_page::snapshot(&gathered, None, 500).unwrap();
        assert_eq!(first["interval_ms"], 500);
        assert_eq!(first["draining"], false);
        assert_eq!(first["tree"]["children"][0]["id"], "shard-0");
        let shard = &first["shards"][0];
        assert_eq!(shard["shard"], 0);
        assert_eq!(shard["status"], "up");
        assert_eq!(shard["sessions"], 3);
        assert_eq!(shard["pools"], json!([1, 2]));
        assert_eq!(shard["restarts"], 1);
        assert_eq!(shard["requests"], 4);
        assert_eq!(shard["rps"], Value::Null, "no rate without a previous push");
        // 4 requests, 2 under 50 µs and 2 in 50..100 µs: p50 at 50 µs.
        assert_eq!(shard["p50_ms"], 0.05);
        assert!(shard["p99_ms"].as_f64().unwrap() > 0.09);
        let down = &first["shards"][1];
        assert_eq!(down["status"], "down");
        assert_eq!(down["rps"], Value::Null);
        assert_eq!(down["p50_ms"], Value::Null);

        // Half a second later 10 more requests, all under 50 µs.
        busy.metrics = with_calls(13, 12);
        let later = Gathered {
            status: Some(status([true, false])),
            reports: vec![Some(busy), None],
        };
        let (second, _) =
            admin_page::snapshot(&later, Some((Duration::from_millis(500), &window)), 500).unwrap();
        let shard = &second["shards"][0];
        assert_eq!(shard["requests"], 14);
        assert_eq!(shard["rps"], 20.0);
        assert_eq!(shard["p50_ms"], 0.025, "only this window's requests count");
        let text = second.to_string();
        let frame = admin_page::sse_frame(None, &text);
        assert_eq!(
            frame,
            format!("data: {text}\n\n"),
            "one line of JSON, one data field"
        );

        let stopped = Gathered {
            status: None,
            reports: Vec::new(),
        };
        assert!(admin_page::snapshot(&stopped, None, 500).is_none());
    }
}
