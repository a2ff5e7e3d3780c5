//! `shardmcp load` against real servers: a `shardmcp serve` child process
//! (HTTP, TCP and WebSocket, one and two generator processes), an in-process node whose
//! session pool is killed mid-run, and a tiny HTTP server that forgets every
//! session once.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{test_config, IO_TIMEOUT};
use shardmcp::load::{self, LoadSettings, LoadSpec};

fn shardmcp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shardmcp"))
}

/// A `shardmcp serve` child on free ports; killed when dropped.
struct Server {
    child: Child,
    http: SocketAddr,
    tcp: SocketAddr,
}

impl Server {
    fn start() -> Server {
        let mut child = shardmcp()
            .args([
                "serve",
                "--shards",
                "2",
                "--http",
                "127.0.0.1:0",
                "--tcp",
                "127.0.0.1:0",
                "--admin",
                "",
                "--log",
                "warn",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("shardmcp serve runs");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (mut http, mut tcp) = (None, None);
        while http.is_none() || tcp.is_none() {
            let mut line = String::new();
            if stdout.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let addr: Option<SocketAddr> =
                line.split_whitespace().nth(4).and_then(|a| a.parse().ok());
            if line.starts_with("shardmcp: http") {
                http = addr;
            } else if line.starts_with("shardmcp: tcp") {
                tcp = addr;
            }
        }
        Server {
            child,
            http: http.expect("an http listener line"),
            tcp: tcp.expect("a tcp listener line"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_cli(args: &[&str]) -> (std::process::Output, serde_json::Value) {
    let dir = std::env::temp_dir().join(format!(
        "shardmcp-load-{}-{}",
        std::process::id(),
        args.join("").len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join(format!(
        "{}.json",
        args.iter().map(|a| a.len()).sum::<usize>()
    ));
    let output = shardmcp()
        .arg("load")
        .args(args)
        .arg("--json")
        .arg(&json_path)
        .output()
        .expect("shardmcp load runs");
    let json = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(serde_json::Value::Null);
    std::fs::remove_dir_all(&dir).ok();
    (output, json)
}

fn assert_clean_run(output: &std::process::Output, json: &serde_json::Value, sessions: u64) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert_eq!(json["errors"]["total"], 0, "{stdout}");
    assert_eq!(json["initialize"]["sessions_ready"], sessions, "{stdout}");
    assert_eq!(json["requests"]["failed"], 0, "{stdout}");
    assert!(json["requests"]["ok"].as_u64().unwrap() > 0, "{stdout}");
    assert_eq!(json["availability"], 1.0, "{stdout}");
    assert!(
        json["latency_ms"]["p99"].as_f64().unwrap() > 0.0,
        "{stdout}"
    );
    assert!(stdout.contains("errors        none"), "{stdout}");
    assert!(stdout.contains("availability  100.000 %"), "{stdout}");
    // The live line, once a second.
    assert!(stderr.contains("req/s  errors 0  p99"), "{stderr}");
}

#[test]
fn a_short_http_run_against_shardmcp_serve_has_no_errors() {
    let server = Server::start();
    let target = format!("http://{}/mcp", server.http);
    let (output, json) = run_cli(&[
        "--target",
        &target,
        "--sessions",
        "20",
        "--duration",
        "1s",
        "--threads",
        "2",
        "--fail-on-errors",
    ]);
    assert_clean_run(&output, &json, 20);
    assert_eq!(json["transport"], "http");
    assert_eq!(json["operations"].as_array().unwrap().len(), 4);
    for op in json["operations"].as_array().unwrap() {
        assert!(op["ok"].as_u64().unwrap() > 0, "every mix entry ran: {op}");
    }
    // The server was found through /proc and its memory read.
    assert_eq!(json["server"]["pid"], server.child.id());
    assert!(json["server"]["rss_bytes"]["ready"].as_u64().unwrap() > 0);
}

#[test]
fn a_short_tcp_run_in_two_processes_has_no_errors_and_merges_both() {
    let server = Server::start();
    let target = server.tcp.to_string();
    let (output, json) = run_cli(&[
        "--transport",
        "tcp",
        "--target",
        &target,
        "--sessions",
        "20",
        "--duration",
        "1s",
        "--procs",
        "2",
        "--threads",
        "2",
        "--rate",
        "2000",
        "--mix",
        "ping=1,tools/call:add:{\"a\":1,\"b\":2}=1",
    ]);
    assert_clean_run(&output, &json, 20);
    assert_eq!(json["procs"], 2);
    assert_eq!(json["mode"], "open");
    let ok = json["requests"]["ok"].as_u64().unwrap();
    // 2,000/s for 1 s, split over both processes; a loaded machine may miss some.
    let missed = json["requests"]["missed"].as_u64().unwrap();
    assert_eq!(ok + missed, 2_000, "{json}");
}

#[test]
fn a_short_legacy_sse_run_against_shardmcp_serve_has_no_errors() {
    let server = Server::start();
    let target = format!("http://{}/sse", server.http);
    let (output, json) = run_cli(&[
        "--transport",
        "sse",
        "--target",
        &target,
        "--sessions",
        "20",
        "--connections",
        "6",
        "--duration",
        "1s",
        "--threads",
        "2",
    ]);
    assert_clean_run(&output, &json, 20);
    assert_eq!(json["transport"], "sse");
    for op in json["operations"].as_array().unwrap() {
        assert!(op["ok"].as_u64().unwrap() > 0, "every mix entry ran: {op}");
    }
}

#[test]
fn a_short_websocket_run_against_shardmcp_serve_has_no_errors() {
    let server = Server::start();
    let target = format!("ws://{}/ws", server.http);
    let (output, json) = run_cli(&[
        "--transport",
        "ws",
        "--target",
        &target,
        "--sessions",
        "12",
        "--duration",
        "1s",
        "--threads",
        "2",
    ]);
    assert_clean_run(&output, &json, 12);
    assert_eq!(json["transport"], "ws");
    for op in json["operations"].as_array().unwrap() {
        assert!(op["ok"].as_u64().unwrap() > 0, "every mix entry ran: {op}");
    }
}

#[test]
fn http_sessions_outnumbering_connections_share_them() {
    let server = Server::start();
    let target = format!("http://{}/mcp", server.http);
    let (output, json) = run_cli(&[
        "--target",
        &target,
        "--sessions",
        "50",
        "--connections",
        "4",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--mix",
        "ping",
    ]);
    assert_clean_run(&output, &json, 50);
    assert_eq!(json["connections"], 4);
}

/// Deletes the server's sessions mid-run by killing their pool: the
/// generator sees 404s and initializes those sessions again.
/// Requests in flight when their session dies are answered 404, or their
/// SSE stream (already begun with a priming event) ends without a response;
/// none is left waiting for the timeout.
#[test]
fn sessions_lost_on_a_real_node_are_initialized_again() {
    lose_sessions_mid_run(
        "http",
        "/mcp",
        &["session_not_found", "no_response", "timeout"],
    );
}

/// The server keeps a legacy stream open after its session died, so a
/// request it accepted just before is never answered: the generator can
/// only time it out (see the README's known limits).
#[test]
fn legacy_sse_sessions_lost_on_a_real_node_are_opened_again() {
    lose_sessions_mid_run("sse", "/sse", &["session_not_found", "timeout", "closed"]);
}

fn lose_sessions_mid_run(transport: &str, path: &str, allowed_errors: &[&str]) {
    // A killed pool's HTTP sessions are taken up again by new actors; a
    // legacy session ends with its stream when its actor dies.
    let fault = if transport == "sse" {
        Fault::KillPool(0)
    } else {
        Fault::PanicShard
    };
    use shardmcp::ids::ShardId;
    use shardmcp::runtime::{self, Fault};
    let mut config = test_config(1, 1);
    config.runtime.shard_restarts_max = 1_000;
    let node = runtime::start(config, shardmcp::server::demo::factory()).unwrap();
    let addr = node.http_addr().unwrap();
    let spec = LoadSpec::new(LoadSettings {
        target: Some(format!("http://{addr}{path}")),
        transport: transport.into(),
        sessions: 16,
        connections: Some(8),
        threads: Some(1),
        duration: Duration::from_secs(3),
        timeout: Duration::from_secs(2),
        mix: "ping".into(),
        ..LoadSettings::default()
    })
    .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let runner = {
        let done = done.clone();
        std::thread::spawn(move || {
            let report = load::run(&spec, None);
            done.store(true, Ordering::SeqCst);
            report
        })
    };
    // Kill the shard (every session: a killed pool's sessions are taken up
    // again, a dead shard's are lost) again and again until the run ends:
    // some kills land in the measured window.
    while !done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(500));
        if node.query(ShardId(0)).map(|r| r.sessions).unwrap_or(0) > 0 {
            let _ = node.inject(ShardId(0), fault);
        }
    }
    let report = runner.join().unwrap().expect("the run completes");
    node.drain();
    node.join().unwrap();
    let stats = &report.stats;
    let text = report.to_text();
    assert!(stats.reinitializations >= 1, "{text}");
    // The dead shard's connections die with it, and until it is back up
    // nothing listens (one shard): the generator reconnects.
    let lost_connections = [
        "closed",
        "io",
        "connect",
        "init:connect",
        "init:closed",
        "init:io",
    ];
    for kind in stats.errors.keys() {
        assert!(
            allowed_errors.contains(&kind.as_str()) || lost_connections.contains(&kind.as_str()),
            "{kind}: {text}"
        );
    }
    // Lost as a 404, or (legacy) as its stream closing.
    assert!(
        stats.errors.contains_key("session_not_found") || stats.errors.contains_key("closed"),
        "{text}"
    );
    assert!(stats.ok > 0, "{}", report.to_text());
    assert!(report.stats.availability().unwrap() < 1.0);
}

/// A minimal Streamable HTTP server: sessions `s1`..; the first
/// `forget_first` sessions answer their first request 404 (forgotten), all
/// others answer with SSE: a notification, then the response. A silent one
/// answers `initialize` and nothing after it.
struct TinyServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    deleted: Arc<Mutex<Vec<String>>>,
}

impl TinyServer {
    fn start(forget_first: u64) -> TinyServer {
        Self::spawn(forget_first, false)
    }

    fn silent() -> TinyServer {
        Self::spawn(0, true)
    }

    fn spawn(forget_first: u64, silent: bool) -> TinyServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let deleted = Arc::new(Mutex::new(Vec::new()));
        let sessions = Arc::new(AtomicU64::new(0));
        let forgotten = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let thread = {
            let stop = stop.clone();
            let deleted = deleted.clone();
            std::thread::spawn(move || {
                let mut connections = Vec::new();
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (sessions, forgotten, deleted) =
                        (sessions.clone(), forgotten.clone(), deleted.clone());
                    connections.push(std::thread::spawn(move || {
                        serve_tiny(
                            stream,
                            &sessions,
                            forget_first,
                            silent,
                            &forgotten,
                            &deleted,
                        )
                    }));
                }
                for connection in connections {
                    let _ = connection.join();
                }
            })
        };
        TinyServer {
            addr,
            stop,
            thread: Some(thread),
            deleted,
        }
    }
}

impl Drop for TinyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_tiny(
    stream: TcpStream,
    sessions: &AtomicU64,
    forget_first: u64,
    silent: bool,
    forgotten: &Mutex<std::collections::HashSet<String>>,
    deleted: &Mutex<Vec<String>>,
) {
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            head.push(line);
        }
        let header = |name: &str| {
            head.iter().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_string())
            })
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let session = header("mcp-session-id");
        let reply = if head[0].starts_with("DELETE") {
            deleted.lock().unwrap().push(session.unwrap_or_default());
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_string()
        } else {
            let message: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let id = message.get("id").cloned();
            match (message["method"].as_str(), id) {
                (Some("initialize"), Some(id)) => {
                    let n = sessions.fetch_add(1, Ordering::SeqCst) + 1;
                    let json = serde_json::json!({"jsonrpc":"2.0","id":id,"result":{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"tiny","version":"0"}}}).to_string();
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: s{n}\r\nContent-Length: {}\r\n\r\n{json}", json.len())
                }
                (_, None) => "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n".to_string(),
                // Never answers: the next read ends when the client closes.
                (_, Some(_)) if silent => continue,
                (_, Some(id)) => {
                    let session = session.unwrap_or_default();
                    let n: u64 = session.trim_start_matches('s').parse().unwrap_or(0);
                    if n <= forget_first && forgotten.lock().unwrap().insert(session) {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 15\r\n\r\nunknown session"
                            .to_string()
                    } else {
                        // A priming event (id, empty data) as resumable
                        // streams begin, then a notification and the response.
                        let mut out = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n17\r\nid: 0\ndata: \nretry: 9\n\n\r\n".to_string();
                        for event in [
                            r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"hi"}}"#.to_string(),
                            serde_json::json!({"jsonrpc":"2.0","id":id,"result":{}}).to_string(),
                        ] {
                            let event = format!("event: message\ndata: {event}\n\n");
                            out.push_str(&format!("{:x}\r\n{event}\r\n", event.len()));
                        }
                        out.push_str("0\r\n\r\n");
                        out
                    }
                }
            }
        };
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// `ping` from one generator thread over 2 connections against `server`,
/// no warmup, measured for `duration`.
fn ping_tiny(
    server: &TinyServer,
    sessions: u64,
    duration: Duration,
    timeout: Duration,
) -> load::report::Report {
    let spec = LoadSpec::new(LoadSettings {
        target: Some(format!("http://{}/mcp", server.addr)),
        transport: "http".into(),
        sessions,
        connections: Some(2),
        threads: Some(1),
        duration,
        timeout,
        mix: "ping".into(),
        ..LoadSettings::default()
    })
    .unwrap();
    load::run(&spec, None).expect("the run completes")
}

#[test]
fn a_session_answered_404_is_initialized_again_and_counted() {
    let server = TinyServer::start(4);
    let report = ping_tiny(
        &server,
        4,
        Duration::from_millis(500),
        Duration::from_secs(5),
    );
    let stats = &report.stats;
    let text = report.to_text();
    assert_eq!(stats.sessions_ready, 4, "{text}");
    assert_eq!(stats.reinitializations, 4, "{text}");
    assert_eq!(stats.inits_ok, 4, "{text}");
    assert_eq!(stats.errors.get("session_not_found"), Some(&4), "{text}");
    assert_eq!(stats.errors_total(), 4, "{text}");
    assert_eq!(stats.failed, 4, "{text}");
    // Every answered request came on an SSE stream after one notification.
    assert_eq!(stats.notifications, stats.ok, "{text}");
    assert!(text.contains("4 re-initialized"), "{text}");
    // The sessions in use at the end were DELETEd: the re-initialized ones.
    let mut deleted = server.deleted.lock().unwrap().clone();
    deleted.sort();
    assert_eq!(deleted, ["s5", "s6", "s7", "s8"]);
}

#[test]
fn a_request_never_answered_times_out_and_the_run_still_ends() {
    let server = TinyServer::silent();
    let report = ping_tiny(
        &server,
        2,
        Duration::from_millis(1_500),
        Duration::from_millis(200),
    );
    let stats = &report.stats;
    let text = report.to_text();
    assert_eq!(stats.sessions_ready, 2, "{text}");
    assert_eq!(stats.ok, 0, "{text}");
    // Each connection times out, reconnects and tries again: a few
    // timeouts each in 1.5 s, every one counted as such.
    let timeouts = stats.errors.get("timeout").copied().unwrap_or(0);
    assert!(timeouts >= 2, "{text}");
    assert_eq!(stats.errors_total(), timeouts, "{text}");
    assert_eq!(report.stats.availability(), Some(0.0), "{text}");
}

#[test]
fn bad_settings_are_one_clear_line_and_exit_1() {
    for (args, needle) in [
        (vec!["--mix", "tools/call"], "needs a name"),
        (vec!["--mix", "ping=0"], "weight"),
        (
            vec!["--transport", "ws", "--target", "http://127.0.0.1:1/ws"],
            "does not match --transport ws",
        ),
        (
            vec![
                "--transport",
                "tcp",
                "--sessions",
                "3",
                "--connections",
                "2",
            ],
            "one session per connection",
        ),
        (vec!["--target", "https://127.0.0.1:1/mcp"], "TLS"),
    ] {
        let output = shardmcp().arg("load").args(&args).output().unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(stderr.starts_with("shardmcp: error: "), "{stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
}

#[test]
fn a_server_that_is_not_there_fails_every_session_and_reports_it() {
    // A port nobody listens on: bind, take the address, close.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (output, json) = run_cli(&[
        "--target",
        &format!("http://{addr}/mcp"),
        "--sessions",
        "2",
        "--duration",
        "200ms",
        "--timeout",
        "1s",
        "--quiet",
        "--fail-on-errors",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(json["initialize"]["sessions_failed"], 2);
    assert!(
        json["errors"]["by_kind"]["setup:connect"].as_u64().unwrap() >= 2,
        "{json}"
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("failed (--fail-on-errors)"), "{stderr}");
}

#[test]
fn help_explains_every_flag_and_the_mix_syntax() {
    let output = shardmcp().args(["load", "--help"]).output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in [
        "--target",
        "--transport",
        "--sessions",
        "--connections",
        "--duration",
        "--warmup",
        "--rate",
        "--mix",
        "--timeout",
        "--threads",
        "--procs",
        "--json",
        "--server-pid",
        "--idle",
        "--keep-sessions",
        "--fail-on-errors",
        "--quiet",
        "--slice",
        "--source-ips",
        "--spin",
        "--spread-sessions",
        "tools/call:NAME[:ARGS]",
        "resources/read:URI",
        "coordinated",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

/// By default a session keeps to the connection that opened it, so on a
/// two-shard node nothing crosses the mesh; spread sessions do cross it.
#[test]
fn sessions_keep_to_their_connection_unless_spread() {
    use shardmcp::ids::ShardId;
    let node =
        shardmcp::runtime::start(test_config(2, 2), shardmcp::server::demo::factory()).unwrap();
    let addr = node.http_addr().unwrap();
    let forwarded = || -> u64 {
        (0..2)
            .map(|shard| node.query(ShardId(shard)).unwrap().http_forwarded)
            .sum()
    };
    let run = |spread: bool| {
        let spec = LoadSpec::new(LoadSettings {
            target: Some(format!("http://{addr}/mcp")),
            transport: "http".into(),
            sessions: 32,
            connections: Some(16),
            threads: Some(2),
            duration: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
            mix: "ping".into(),
            spread_sessions: spread,
            ..LoadSettings::default()
        })
        .unwrap();
        let report = load::run(&spec, None).expect("the run completes");
        assert_eq!(report.stats.errors_total(), 0, "{}", report.to_text());
        assert!(report.stats.ok > 0);
    };
    run(false);
    assert_eq!(forwarded(), 0, "every request went to its session's shard");
    run(true);
    // 16 connections land on both shards (SO_REUSEPORT hashing); sessions
    // taken round-robin then reach connections of the other shard.
    assert!(forwarded() > 0);
    node.drain();
    node.join().unwrap();
}
