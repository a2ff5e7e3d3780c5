//! The admin listener seen from outside: `/metrics` read by the official
//! Prometheus parser (Python `prometheus_client`, installed into a venv by
//! tests/admin/setup.sh), readiness while a shard is down or stalled, the
//! live tree as JSON, and `shardmcp tree`.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::{forget_events, test_config, wait_for, Client, IO_TIMEOUT};
use serde_json::Value;
use shardmcp::ids::ShardId;
use shardmcp::runtime::{self, Fault, NodeEvent, ShardEvent};
use shardmcp::server::demo;

/// The venv's python, set up once per test binary.
fn python() -> &'static PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let setup = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/admin/setup.sh");
        let output = Command::new("bash")
            .arg(setup)
            .stderr(Stdio::inherit())
            .output()
            .expect("tests/admin/setup.sh runs (needs python3 with venv)");
        assert!(output.status.success(), "tests/admin/setup.sh failed");
        let stdout = String::from_utf8(output.stdout).unwrap();
        PathBuf::from(
            stdout
                .trim()
                .lines()
                .last()
                .expect("setup prints the python"),
        )
    })
}

/// One sample as the Prometheus parser read it.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Families by name (as the parser names them: counters without `_total`)
/// with their type and samples.
struct Metrics {
    families: BTreeMap<String, (String, Vec<Sample>)>,
}

impl Metrics {
    /// Parses exposition text with `prometheus_client`; panics with the
    /// parser's error when it refuses the text.
    fn parse(text: &str) -> Metrics {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/admin/parse_metrics.py");
        let mut child = Command::new(python())
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "the Prometheus parser refused /metrics: {}\n{text}",
            String::from_utf8_lossy(&output.stderr)
        );
        let parsed: Value = serde_json::from_slice(&output.stdout).unwrap();
        let mut families = BTreeMap::new();
        for family in parsed.as_array().unwrap() {
            let samples = family["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| Sample {
                    name: s["name"].as_str().unwrap().to_string(),
                    labels: s["labels"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                        .collect(),
                    value: match &s["value"] {
                        Value::String(inf) if inf == "+Inf" => f64::INFINITY,
                        other => other.as_f64().unwrap(),
                    },
                })
                .collect();
            families.insert(
                family["name"].as_str().unwrap().to_string(),
                (family["type"].as_str().unwrap().to_string(), samples),
            );
        }
        Metrics { families }
    }

    fn kind(&self, family: &str) -> &str {
        self.families
            .get(family)
            .map(|(kind, _)| kind.as_str())
            .unwrap_or_else(|| panic!("no family {family}"))
    }

    /// Samples named `name` whose labels include every pair of `labels`.
    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<Sample> {
        self.families
            .values()
            .flat_map(|(_, samples)| samples)
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .cloned()
            .collect()
    }

    /// The sum over every sample matching (e.g. over shards).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name, labels).iter().map(|s| s.value).sum()
    }

    /// The one sample matching.
    fn one(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found = self.samples(name, labels);
        assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
        found[0].value
    }
}

struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

/// One admin request on its own connection, read to the end.
fn get(addr: SocketAddr, path: &str) -> Answer {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    )
}

fn request(addr: SocketAddr, raw: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.write_all(raw.as_bytes()).unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|line| line.strip_prefix("Content-Type: "))
        .unwrap_or("")
        .to_string();
    Answer {
        status,
        content_type,
        body: body.to_string(),
    }
}

fn scrape(addr: SocketAddr) -> Metrics {
    let answer = get(addr, "/metrics");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        answer.content_type
    );
    Metrics::parse(&answer.body)
}

/// One MCP request over HTTP, on its own connection.
fn http_post(addr: SocketAddr, session: Option<&str>, body: &str) -> (u16, String, String) {
    let mut head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(session) = session {
        head.push_str(&format!(
            "Mcp-Session-Id: {session}\r\nMCP-Protocol-Version: 2025-11-25\r\n"
        ));
    }
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
        .write_all(format!("{head}\r\n{body}").as_bytes())
        .unwrap();
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let session = head
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case("mcp-session-id")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    (status, session, body.to_string())
}

/// Checks what the format promises of every histogram: buckets never
/// decrease, and `+Inf` equals `_count`.
fn assert_histograms_are_consistent(metrics: &Metrics, family: &str) {
    assert_eq!(metrics.kind(family), "histogram");
    let (_, samples) = &metrics.families[family];
    // Labels without `le` → (bound, cumulative count) per bucket.
    type Labels = Vec<(String, String)>;
    let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
    for sample in samples
        .iter()
        .filter(|s| s.name == format!("{family}_bucket"))
    {
        let mut key: Vec<(String, String)> = sample.labels.clone().into_iter().collect();
        key.retain(|(k, _)| k != "le");
        let le = match sample.labels["le"].as_str() {
            "+Inf" => f64::INFINITY,
            bound => bound.parse().unwrap(),
        };
        series.entry(key).or_default().push((le, sample.value));
    }
    assert!(!series.is_empty(), "{family} has no buckets");
    for (key, buckets) in series {
        let labels: Vec<(&str, &str)> = key.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        for pair in buckets.windows(2) {
            assert!(
                pair[0].0 < pair[1].0,
                "{family} {key:?}: bounds out of order"
            );
            assert!(pair[0].1 <= pair[1].1, "{family} {key:?}: buckets decrease");
        }
        let inf = buckets.last().unwrap();
        assert_eq!(inf.0, f64::INFINITY, "{family} {key:?}: no +Inf bucket");
        assert_eq!(inf.1, metrics.one(&format!("{family}_count"), &labels));
    }
}

#[test]
fn metrics_parse_with_the_prometheus_parser_and_counters_move_after_traffic() {
    let node = runtime::start(test_config(2, 3), demo::factory()).unwrap();
    let admin = node.admin_addr().expect("admin listener");
    let before = scrape(admin);
    for shard in ["0", "1"] {
        assert_eq!(before.one("shardmcp_shard_up", &[("shard", shard)]), 1.0);
        assert_eq!(
            before.one("shardmcp_shard_restarts_total", &[("shard", shard)]),
            0.0
        );
        for transport in ["tcp", "http"] {
            let labels = [("shard", shard), ("transport", transport)];
            assert_eq!(before.one("shardmcp_sessions", &labels), 0.0);
            assert_eq!(
                before.one("shardmcp_connections_accepted_total", &labels),
                0.0
            );
        }
        assert_eq!(
            before
                .samples("shardmcp_mesh_queue_depth", &[("shard", shard)])
                .len(),
            1,
            "one peer"
        );
        assert_eq!(before.one("shardmcp_tasks", &[("shard", shard)]), 0.0);
        assert_eq!(
            before.one(
                "shardmcp_mesh_backpressure_events_total",
                &[("shard", shard)]
            ),
            0.0
        );
        assert_eq!(
            before
                .samples("shardmcp_pool_sessions", &[("shard", shard)])
                .len(),
            3
        );
    }
    assert_eq!(before.kind("shardmcp_shard_restarts"), "counter");
    assert_eq!(before.kind("shardmcp_shard_up"), "gauge");
    assert!(before.one("process_resident_memory_bytes", &[]) > 1_000_000.0);
    assert!(before.one("process_open_fds", &[]) > 3.0);
    assert_eq!(before.one("shardmcp_shards", &[]), 2.0);
    assert_histograms_are_consistent(&before, "shardmcp_restart_duration_seconds");
    assert_eq!(before.sum("shardmcp_requests_total", &[]), 0.0);

    // Traffic: a TCP session and an HTTP session.
    let mut client = Client::connect(node.tcp_addr().unwrap()).unwrap();
    client.initialize();
    for id in 10..13 {
        let reply = client
            .exchange(&format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"add","arguments":{{"a":1,"b":2}}}}}}"#))
            .unwrap();
        assert_eq!(reply["result"]["structuredContent"]["sum"], 3.0);
    }
    let reply = client
        .exchange(r#"{"jsonrpc":"2.0","id":20,"method":"no/such/method"}"#)
        .unwrap();
    assert_eq!(reply["error"]["code"], -32601);
    let http = node.http_addr().unwrap();
    let (status, session, _) = http_post(
        http,
        None,
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
    );
    assert_eq!(status, 200);
    assert!(!session.is_empty());
    let (status, _, _) = http_post(
        http,
        Some(&session),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    assert_eq!(status, 202);
    let (status, _, body) = http_post(
        http,
        Some(&session),
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
    );
    assert_eq!(status, 200, "{body}");
    // A pool of the shard holding the TCP session is killed: one restart.
    let tcp_shard = (0..2u16)
        .find(|&s| {
            node.query(ShardId(s))
                .unwrap()
                .metrics
                .transports
                .iter()
                .any(|t| t.transport == "tcp" && t.sessions_open == 1)
        })
        .expect("the TCP session's shard");
    // Not the HTTP session's pool: the gauges below still count it.
    let http_session = shardmcp::registry::SessionId::parse(&session).unwrap();
    let pool = (0..3)
        .find(|&pool| {
            http_session.shard() != ShardId(tcp_shard) || http_session.pool_index(3) != pool
        })
        .unwrap();
    node.inject(ShardId(tcp_shard), Fault::KillPool(pool))
        .unwrap();

    let after = scrape(admin);
    assert_eq!(after.kind("shardmcp_requests"), "counter");
    let calls = [("method", "tools/call"), ("outcome", "ok")];
    assert_eq!(after.sum("shardmcp_requests_total", &calls), 3.0);
    assert_eq!(
        after.sum(
            "shardmcp_requests_total",
            &[("method", "initialize"), ("outcome", "ok")]
        ),
        2.0,
        "one over TCP, one over HTTP"
    );
    assert_eq!(
        after.sum(
            "shardmcp_requests_total",
            &[("method", "tools/list"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        after.sum(
            "shardmcp_requests_total",
            &[("method", "other"), ("outcome", "error")]
        ),
        1.0,
        "unknown methods share one label"
    );
    assert_eq!(
        after.sum(
            "shardmcp_request_duration_seconds_count",
            &[("method", "tools/call")]
        ),
        3.0
    );
    assert!(
        after.sum(
            "shardmcp_request_duration_seconds_sum",
            &[("method", "tools/call")]
        ) > 0.0
    );
    assert_histograms_are_consistent(&after, "shardmcp_request_duration_seconds");
    assert_histograms_are_consistent(&after, "shardmcp_restart_duration_seconds");
    assert_eq!(
        after.sum("shardmcp_sessions_opened_total", &[("transport", "http")]),
        1.0
    );
    assert_eq!(
        after.sum("shardmcp_sessions", &[("transport", "http")]),
        1.0
    );
    assert!(
        after.sum(
            "shardmcp_connections_accepted_total",
            &[("transport", "http")]
        ) >= 3.0
    );
    assert_eq!(
        after.sum(
            "shardmcp_connections_accepted_total",
            &[("transport", "tcp")]
        ),
        1.0
    );
    // The killed pool restarted; whether the TCP session was in it depends
    // on its id, so the count of TCP sessions is 0 or 1.
    let shard = tcp_shard.to_string();
    let pools = format!("shard-{tcp_shard}/pools");
    assert_eq!(
        after.one(
            "shardmcp_supervisor_restarts_total",
            &[("shard", &shard), ("supervisor", &pools)]
        ),
        1.0
    );
    assert!(
        after.one(
            "shardmcp_restart_duration_seconds_count",
            &[("shard", &shard)]
        ) >= 1.0
    );
    node.drain();
    node.join().unwrap();
}

#[test]
fn readiness_turns_false_while_a_shard_is_down_and_true_after_the_node_restarts_it() {
    let node = runtime::start(test_config(2, 2), demo::factory()).unwrap();
    let admin = node.admin_addr().unwrap();
    let ready = get(admin, "/health/ready");
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (200, "ready: 2 shards up, tcp, http accepting\n")
    );

    // Held, so shard 1 stays down until released: no race with the restart.
    node.hold_restarts(ShardId(1)).unwrap();
    forget_events(&node);
    node.inject(ShardId(1), Fault::PanicShard).unwrap();
    wait_for(&node, |e| {
        matches!(
            e,
            NodeEvent::Shard(ShardEvent::Exited {
                shard: ShardId(1),
                ..
            })
        )
    });
    let down = get(admin, "/health/ready");
    assert_eq!(down.status, 503);
    assert_eq!(
        down.body,
        "not ready:\nshard 1: down (its restart is held)\n"
    );
    assert_eq!(get(admin, "/health/live").status, 200, "the process lives");
    let metrics = scrape(admin);
    assert_eq!(metrics.one("shardmcp_shard_up", &[("shard", "0")]), 1.0);
    assert_eq!(metrics.one("shardmcp_shard_up", &[("shard", "1")]), 0.0);
    let tree: Value = serde_json::from_str(&get(admin, "/admin/tree").body).unwrap();
    assert_eq!(tree["children"][1]["status"], "down (restart held)");
    assert_eq!(tree["children"][0]["status"], "up");
    // Shard 0 keeps serving.
    assert!(Client::connect(node.tcp_addr().unwrap()).unwrap().ping());

    node.release_restarts(ShardId(1)).unwrap();
    wait_for(&node, |e| {
        matches!(
            e,
            NodeEvent::ShardRestarted {
                shard: ShardId(1),
                restarts: 1
            }
        )
    });
    let mut bound = Vec::new();
    while bound.len() < 2 {
        if let NodeEvent::Shard(ShardEvent::Listening { kind, .. }) = wait_for(&node, |e| {
            matches!(
                e,
                NodeEvent::Shard(ShardEvent::Listening {
                    shard: ShardId(1),
                    ..
                })
            )
        }) {
            bound.push(kind);
        }
    }
    let ready = get(admin, "/health/ready");
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (200, "ready: 2 shards up, tcp, http accepting\n")
    );
    let metrics = scrape(admin);
    assert_eq!(metrics.one("shardmcp_shard_up", &[("shard", "1")]), 1.0);
    assert_eq!(
        metrics.one("shardmcp_shard_restarts_total", &[("shard", "1")]),
        1.0
    );

    node.drain();
    let draining = get(admin, "/health/ready");
    assert_eq!(draining.status, 503, "{}", draining.body);
    node.join().unwrap();
    assert!(
        TcpStream::connect(admin).is_err(),
        "the admin listener stops with the node"
    );
}

#[test]
fn the_admin_listener_answers_while_a_shard_is_stalled() {
    let mut config = test_config(2, 2);
    config.admin.shard_answer_timeout_ms = 200;
    let node = runtime::start(config, demo::factory()).unwrap();
    let admin = node.admin_addr().unwrap();
    node.inject(ShardId(1), Fault::Stall(Duration::from_millis(3_000)))
        .unwrap();
    let stalled = get(admin, "/health/ready");
    assert_eq!(stalled.status, 503);
    assert_eq!(
        stalled.body,
        "not ready:\nshard 1: did not answer in time\n"
    );
    let metrics = scrape(admin);
    assert_eq!(metrics.one("shardmcp_shard_up", &[("shard", "0")]), 1.0);
    assert_eq!(metrics.one("shardmcp_shard_up", &[("shard", "1")]), 0.0);
    assert_eq!(get(admin, "/health/live").status, 200);
    // Once the stall is over the shard answers again (bounded wait).
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        if get(admin, "/health/ready").status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "shard 1 never came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    node.drain();
    node.join().unwrap();
}

#[test]
fn the_tree_json_matches_the_configured_shards_and_pools() {
    let mut config = test_config(2, 5);
    config.runtime.shard_restarts_max = 7;
    let node = runtime::start(config, demo::factory()).unwrap();
    let admin = node.admin_addr().unwrap();
    node.inject(ShardId(0), Fault::KillPool(4)).unwrap();
    let answer = get(admin, "/admin/tree");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type, "application/json");
    let tree: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(tree["id"], "node");
    assert_eq!(tree["restart_intensity"]["restarts_max"], 7);
    assert_eq!(tree["child_count"], 2);
    let shards = tree["children"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    for (index, shard) in shards.iter().enumerate() {
        assert_eq!(shard["id"], format!("shard-{index}"));
        assert_eq!(shard["status"], "up");
        assert_eq!(shard["strategy"], "one_for_one");
        let ids: Vec<&str> = shard["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["services", "pools", "listeners"]);
        let pools = &shard["children"][1];
        assert_eq!(pools["strategy"], "one_for_one");
        let pool_ids: Vec<&str> = pools["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        assert_eq!(pool_ids, ["pool-0", "pool-1", "pool-2", "pool-3", "pool-4"]);
        for pool in pools["children"].as_array().unwrap() {
            assert_eq!(pool["strategy"], "simple_one_for_one");
        }
        let listeners: Vec<&str> = shard["children"][2]["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["id"].as_str().unwrap())
            .collect();
        assert_eq!(listeners, ["tcp", "http"]);
        assert_eq!(shard["children"][2]["children"][0]["restart"], "transient");
    }
    assert_eq!(shards[0]["children"][1]["children"][4]["restarts"], 1);
    assert_eq!(shards[0]["children"][1]["children_restarted"], 1);
    assert_eq!(shards[1]["children"][1]["children_restarted"], 0);
    node.drain();
    node.join().unwrap();
}

#[test]
fn the_admin_listener_refuses_what_it_does_not_serve() {
    let mut config = test_config(1, 1);
    config.admin.request_head_bytes_max = 512;
    let node = runtime::start(config, demo::factory()).unwrap();
    let admin = node.admin_addr().unwrap();
    assert_eq!(get(admin, "/nowhere").status, 404);
    let post = request(
        admin,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(post.status, 405);
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(2_000)
    );
    assert_eq!(request(admin, &huge).status, 431);
    assert_eq!(request(admin, "NONSENSE\r\n\r\n").status, 400);
    assert_eq!(
        get(admin, "/metrics?x=1").status,
        200,
        "queries are ignored"
    );
    node.drain();
    node.join().unwrap();
}

/// Kills the server if a test fails before stopping it.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn shardmcp_tree_prints_the_live_tree_of_a_running_server() {
    let child = Command::new(env!("CARGO_BIN_EXE_shardmcp"))
        .args([
            "serve",
            "--shards",
            "2",
            "--pools",
            "3",
            "--tcp",
            "127.0.0.1:0",
            "--http",
            "",
            "--admin",
            "127.0.0.1:0",
            "--log",
            "warn",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let mut stdout = BufReader::new(server.0.stdout.take().unwrap());
    let mut admin = None;
    for _ in 0..2 {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        if let Some(rest) = line.strip_prefix("shardmcp: admin listening on ") {
            admin = rest.split_whitespace().next().map(str::to_string);
        }
    }
    let admin = admin.expect("an admin line");

    let output = Command::new(env!("CARGO_BIN_EXE_shardmcp"))
        .args(["tree", "--admin", &admin])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "node [restarts dead shards, at most 5 per 10000 ms] shards=2 shard_restarts=0"
    );
    assert_eq!(
        lines[1],
        "├── shard-0 (up) [one_for_one] children=3 restarts=0 restarted=0"
    );
    for expected in [
        "│   ├── services [one_for_one] children=2 restarts=0 restarted=0",
        "│   │   ├── control (worker, permanent) running restarts=0",
        "│   │   └── protect (worker, permanent) running restarts=0",
        "│   ├── pools [one_for_one] children=3 restarts=0 restarted=0",
        "│   │   └── pool-2 [simple_one_for_one] children=0 restarts=0 restarted=0",
        "│   └── listeners [one_for_one] children=1 restarts=0 restarted=0",
        "│       └── tcp (worker, transient) running restarts=0",
        "└── shard-1 (up) [one_for_one] children=3 restarts=0 restarted=0",
    ] {
        assert!(
            lines.contains(&expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    assert_eq!(lines.len(), 1 + 2 * 10, "{text}");

    let output = Command::new(env!("CARGO_BIN_EXE_shardmcp"))
        .args(["tree", "--json", "--admin", &admin])
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["children"].as_array().unwrap().len(), 2);

    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(server.0.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());

    // Nothing listens there now: one clear line and exit 1.
    let output = Command::new(env!("CARGO_BIN_EXE_shardmcp"))
        .args(["tree", "--admin", &admin])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with(&format!(
            "shardmcp: error: cannot reach the admin listener at {admin}"
        )),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1);
}
