//! Overload protection seen from outside, over real sockets: rate limits
//! (429 + Retry-After, JSON-RPC -32029), connection limits (503 / -32030),
//! head and body limits (431, 413), the shard's cap on requests in flight
//! (503), the session's (-32000), the memory guard (503 for new sessions),
//! and a tool's circuit breaker (-32031, then a probe closes it).

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http::{read_reply, send, Reply};
use common::{test_config, Client, IO_TIMEOUT};
use serde_json::{json, Value};
use shardmcp::config::Config;
use shardmcp::ids::ShardId;
use shardmcp::protect::{CIRCUIT_OPEN, OVERLOADED, RATE_LIMITED};
use shardmcp::runtime::{self, NodeHandle};
use shardmcp::server::{demo, Server, ServerFactory, Tool, ToolError, ToolResult};

fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    common::http::request(addr, method, path, headers, body)
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"protect","version":"0"}}}"#;

/// A new HTTP session; its id.
fn open_session(addr: SocketAddr) -> String {
    let reply = http(
        addr,
        "POST",
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
        ],
        INITIALIZE,
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let session = reply.header("mcp-session-id").expect("a session id");
    let done = http(
        addr,
        "POST",
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            ("Mcp-Session-Id", &session),
        ],
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    assert_eq!(done.status, 202, "{done:?}");
    session
}

fn post(addr: SocketAddr, session: &str, body: &str) -> Reply {
    http(
        addr,
        "POST",
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
            ("Mcp-Session-Id", session),
        ],
        body,
    )
}

fn ping(id: u64) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#)
}

fn start(config: Config, server: ServerFactory) -> NodeHandle {
    runtime::start(config, server).expect("node started")
}

fn assert_shed(reply: &Reply, status: u16, code: i64) {
    assert_eq!(reply.status, status, "{reply:?}");
    let retry: u64 = reply
        .header("retry-after")
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After in whole seconds: {reply:?}"));
    assert!(retry >= 1);
    assert_eq!(reply.json()["error"]["code"], code, "{reply:?}");
}

/// The first line a new TCP connection gets unasked, if any within `wait`.
fn first_line(addr: SocketAddr, wait: Duration) -> Option<Value> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(wait)).ok()?;
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while let Ok(1) = stream.read(&mut byte) {
        if byte[0] == b'\n' {
            return serde_json::from_slice(&raw).ok();
        }
        raw.push(byte[0]);
    }
    None
}

fn metrics(node: &NodeHandle) -> String {
    let admin = node.admin_addr().expect("admin listener");
    http(admin, "GET", "/metrics", &[], "").body
}

#[test]
fn a_session_over_its_rate_gets_429_with_retry_after_on_every_shard() {
    let mut config = test_config(2, 1);
    config.protect.session_rate_per_s = 1;
    config.protect.session_burst = 3;
    let node = start(config, demo::factory());
    let addr = node.http_addr().unwrap();
    let session = open_session(addr);
    let started = Instant::now();
    let (mut served, mut refused) = (0u64, 0u64);
    // Fresh connections land on both shards: requests reaching the shard
    // that does not own the session are forwarded, and refused there too.
    for id in 0..200 {
        let forwarded = node.query(ShardId(0)).unwrap().http_forwarded
            + node.query(ShardId(1)).unwrap().http_forwarded;
        if refused >= 5 && forwarded > 0 {
            break;
        }
        let reply = post(addr, &session, &ping(id));
        match reply.status {
            200 => served += 1,
            429 => {
                assert_shed(&reply, 429, RATE_LIMITED);
                refused += 1;
            }
            other => panic!("unexpected {other}: {reply:?}"),
        }
    }
    let forwarded = node.query(ShardId(0)).unwrap().http_forwarded
        + node.query(ShardId(1)).unwrap().http_forwarded;
    assert!(forwarded > 0, "some requests crossed shards");
    assert!(refused >= 5);
    // The burst, plus what the rate refilled while the test ran.
    let refilled = started.elapsed().as_secs() + 1;
    assert!(served <= 3 + refilled, "served {served}");
    assert!(metrics(&node).contains("reason=\"session_rate\""));
    // Another session has its own bucket.
    let other = open_session(addr);
    assert_eq!(post(addr, &other, &ping(1)).status, 200);
}

#[test]
fn a_session_over_its_rate_on_tcp_gets_the_json_rpc_error_for_its_request() {
    let mut config = test_config(1, 1);
    config.protect.session_rate_per_s = 1;
    config.protect.session_burst = 2;
    let node = start(config, demo::factory());
    let mut client = Client::connect(node.tcp_addr().unwrap()).unwrap();
    client.initialize(); // initialize and initialized: the burst
    let reply = client.exchange(&ping(7)).unwrap();
    assert_eq!(reply["id"], 7);
    assert_eq!(reply["error"]["code"], RATE_LIMITED);
    assert!(reply["error"]["data"]["retryAfterMs"].as_u64().unwrap() > 0);
}

#[test]
fn a_client_address_over_its_rate_gets_429_on_http_and_an_error_on_tcp() {
    let mut config = test_config(1, 1);
    config.protect.address_rate_per_s = 1;
    config.protect.address_burst = 2;
    let node = start(config, demo::factory());
    let addr = node.http_addr().unwrap();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let reply = http(addr, "GET", "/nowhere", &[], "");
        if reply.status == 429 {
            assert_shed(&reply, 429, RATE_LIMITED);
        }
        statuses.push(reply.status);
    }
    assert!(
        statuses.iter().filter(|&&s| s == 404).count() <= 3,
        "{statuses:?}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
    // TCP connections from the same address take from their own shard's
    // bucket (the same one): refused with the error line, then closed.
    let mut refused = None;
    for _ in 0..4 {
        if let Some(frame) = first_line(node.tcp_addr().unwrap(), Duration::from_millis(200)) {
            refused = Some(frame);
            break;
        }
    }
    let refused = refused.expect("a TCP connection refused for its address");
    assert_eq!(refused["error"]["code"], RATE_LIMITED);
}

#[test]
fn connections_past_the_shard_cap_get_503_or_an_error_and_are_closed() {
    let mut config = test_config(1, 1);
    config.limits.connections_per_shard_max = 2;
    let node = start(config, demo::factory());
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut client = Client::connect(node.tcp_addr().unwrap()).unwrap();
        client.initialize();
        held.push(client);
    }
    // One cap over both listeners: HTTP is refused too.
    let reply = http(node.http_addr().unwrap(), "GET", "/nowhere", &[], "");
    assert_shed(&reply, 503, OVERLOADED);
    assert!(reply.head.contains("Connection: close"));
    let mut late = Client::connect(node.tcp_addr().unwrap()).unwrap();
    let frame = late.read_frame().expect("an error line");
    assert_eq!(frame["error"]["code"], OVERLOADED);
    assert!(late.read_frame().is_err(), "then closed");
    // A connection that ends frees its place.
    drop(held.pop());
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let mut client = Client::connect(node.tcp_addr().unwrap()).unwrap();
        if client.ping() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed place was never reused"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(metrics(&node).contains("reason=\"connections\""));
}

#[test]
fn the_node_connection_limit_is_shared_out_over_its_shards() {
    let mut config = test_config(2, 1);
    config.protect.connections_max = 2;
    let node = start(config, demo::factory());
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        let mut client = Client::connect(node.tcp_addr().unwrap()).unwrap();
        if client.ping() {
            held.push(client);
        } else {
            refused += 1;
        }
    }
    assert!(held.len() <= 2, "at most one per shard");
    assert!(refused >= 4);
}

#[test]
fn a_head_past_its_bound_gets_431_and_a_body_past_its_bound_413() {
    let mut config = test_config(1, 1);
    config.protect.http_head_bytes_max = 1_024;
    config.limits.message_bytes_max = 1_024;
    let node = start(config, demo::factory());
    let addr = node.http_addr().unwrap();
    let long = "a".repeat(2_000);
    let reply = http(addr, "GET", "/mcp", &[("X-Long", &long)], "");
    assert_eq!(reply.status, 431, "{reply:?}");
    let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"x":"{long}"}}}}"#);
    let reply = http(
        addr,
        "POST",
        "/mcp",
        &[("Content-Type", "application/json")],
        &body,
    );
    assert_eq!(reply.status, 413, "{reply:?}");
    // Under both bounds it is served.
    open_session(addr);
}

fn slow_call(id: u64, ms: u64) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"slow","arguments":{"ms":ms}}}).to_string()
}

#[test]
fn requests_past_the_shard_in_flight_cap_are_shed_with_503() {
    let mut config = test_config(1, 1);
    config.protect.requests_in_flight_per_shard_max = 1;
    let node = start(config, demo::factory());
    let addr = node.http_addr().unwrap();
    let session = open_session(addr);
    let busy = send(
        addr,
        "POST",
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
            ("Mcp-Session-Id", &session),
        ],
        &slow_call(1, 3_000),
    );
    // Wait until the slow call runs (its connection holds the one place).
    let deadline = Instant::now() + IO_TIMEOUT;
    let reply = loop {
        let reply = post(addr, &session, &ping(2));
        if reply.status == 503 {
            break reply;
        }
        assert!(Instant::now() < deadline, "never shed: {reply:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_shed(&reply, 503, OVERLOADED);
    assert!(reply.json()["error"]["data"]["reason"] == "in_flight");
    // A GET (no work) is not counted.
    let get = http(addr, "GET", "/nowhere", &[], "");
    assert_eq!(get.status, 404);
    // Its place is free once it is answered.
    assert_eq!(read_reply(busy).status, 200);
    let deadline = Instant::now() + IO_TIMEOUT;
    while post(addr, &session, &ping(3)).status != 200 {
        assert!(Instant::now() < deadline, "the place was never freed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn requests_past_the_session_in_flight_cap_get_a_json_rpc_error_over_http() {
    let mut config = test_config(1, 1);
    config.limits.requests_in_flight_per_session_max = 1;
    let node = start(config, demo::factory());
    let addr = node.http_addr().unwrap();
    let session = open_session(addr);
    let _busy = send(
        addr,
        "POST",
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
            ("Mcp-Session-Id", &session),
        ],
        &slow_call(1, 3_000),
    );
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let reply = post(addr, &session, &ping(2));
        assert_eq!(reply.status, 200, "{reply:?}");
        if reply.json()["error"]["code"] == -32000 {
            let message = reply.json()["error"]["message"].to_string();
            assert!(message.contains("too many requests in flight"), "{message}");
            break;
        }
        assert!(Instant::now() < deadline, "never refused: {reply:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn above_the_memory_guard_new_sessions_are_refused_and_stateless_requests_served() {
    let mut config = test_config(1, 1);
    config.protect.memory_guard_bytes = 1;
    let node = start(config, demo::factory());
    let addr = node.http_addr().unwrap();
    let reply = http(
        addr,
        "POST",
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
        ],
        INITIALIZE,
    );
    assert_shed(&reply, 503, OVERLOADED);
    assert_eq!(reply.json()["error"]["data"]["reason"], "memory");
    let legacy = http(addr, "GET", "/sse", &[("Accept", "text/event-stream")], "");
    assert_eq!(legacy.status, 503, "{legacy:?}");
    let mut client = Client::connect(node.tcp_addr().unwrap()).unwrap();
    let frame = client.read_frame().expect("the refusal");
    assert_eq!(frame["error"]["code"], OVERLOADED);
    // Stateless requests open no session: still served.
    let stateless = http(
        addr,
        "POST",
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "server/discover"),
        ],
        r#"{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#,
    );
    assert_eq!(stateless.status, 200, "{stateless:?}");
    assert!(metrics(&node).contains("reason=\"memory\""));
}

/// A server whose one tool fails while `healthy` is false; `runs` counts
/// the handler's runs.
fn flaky_server(healthy: Arc<AtomicBool>, runs: Arc<AtomicU64>) -> ServerFactory {
    Arc::new(move || {
        let (healthy, runs) = (healthy.clone(), runs.clone());
        let tool = Tool::builder("flaky", "Fails until told otherwise.").handler(move |_call| {
            let (healthy, runs) = (healthy.clone(), runs.clone());
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                if healthy.load(Ordering::SeqCst) {
                    Ok(ToolResult::text("fine"))
                } else {
                    Err(ToolError::Failed("backend down".into()))
                }
            }
        })?;
        Server::builder("flaky", "0").tool(tool).build()
    })
}

#[test]
fn a_failing_tool_opens_its_breaker_and_a_successful_probe_closes_it() {
    let healthy = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU64::new(0));
    let mut config = test_config(1, 1);
    config.protect.breaker_failures_max = 3;
    config.protect.breaker_cooldown_ms = 100;
    let node = start(config, flaky_server(healthy.clone(), runs.clone()));
    let addr = node.http_addr().unwrap();
    let session = open_session(addr);
    let call = |id: u64| {
        post(
            addr,
            &session,
            &json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"flaky"}})
                .to_string(),
        )
        .json()
    };
    for id in 0..3 {
        assert_eq!(call(id)["result"]["isError"], true);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    let refused = call(10);
    assert_eq!(refused["error"]["code"], CIRCUIT_OPEN, "{refused}");
    assert_eq!(refused["error"]["data"]["tool"], "flaky");
    assert_eq!(runs.load(Ordering::SeqCst), 3, "the handler did not run");
    let text = metrics(&node);
    assert!(
        text.contains("shardmcp_breaker_opens_total{shard=\"0\"} 1"),
        "{text}"
    );
    assert!(text.contains("reason=\"breaker\""));
    // Still failing after the cooldown: the probe fails, it opens again.
    let deadline = Instant::now() + IO_TIMEOUT;
    while runs.load(Ordering::SeqCst) == 3 {
        let reply = call(20);
        assert!(
            Instant::now() < deadline,
            "no probe after the cooldown: {reply}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        call(21)["error"]["code"],
        CIRCUIT_OPEN,
        "a failed probe reopens it"
    );
    // Healthy again: the next probe succeeds and closes it.
    healthy.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let reply = call(30);
        if reply["result"]["isError"] == false {
            break;
        }
        assert_eq!(reply["error"]["code"], CIRCUIT_OPEN, "{reply}");
        assert!(Instant::now() < deadline, "never closed");
        std::thread::sleep(Duration::from_millis(20));
    }
    for id in 40..45 {
        assert_eq!(call(id)["result"]["isError"], false, "closed");
    }
}

#[test]
fn above_the_memory_guard_a_websocket_gets_the_refusal_then_a_close() {
    use async_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};
    let mut config = test_config(1, 1);
    config.protect.memory_guard_bytes = 1;
    let node = start(config, demo::factory());
    let addr = node.http_addr().unwrap();
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mcp".parse().unwrap());
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let (mut ws, _) = tungstenite::client(request, stream).expect("upgraded");
    let refusal: Value = loop {
        match ws.read().expect("a message") {
            Message::Text(text) => break serde_json::from_str(&text).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected the refusal, got {other:?}"),
        }
    };
    assert_eq!(refusal["error"]["code"], OVERLOADED, "{refusal}");
    assert_eq!(refusal["error"]["data"]["reason"], "memory");
    loop {
        match ws.read() {
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
}
