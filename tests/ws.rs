//! WebSocket at `/ws`: the upgrade and its refusals, one MCP session per
//! connection on every shard, bad input, keepalive and close.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::{self, Message, WebSocket};
use common::{test_config, IO_TIMEOUT};
use serde_json::{json, Value};
use shardmcp::ids::ShardId;
use shardmcp::runtime::{self, NodeHandle};
use shardmcp::server::demo;

type Ws = WebSocket<TcpStream>;

const INIT: &str = r#"{"jsonrpc":"2.0","id":"init","method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"ws-test","version":"0"}}}"#;

fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// A WebSocket client offering `protocols` (none when empty).
fn open(addr: SocketAddr, protocols: &str) -> Result<Ws, tungstenite::Error> {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    if !protocols.is_empty() {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
    }
    let (ws, response) = tungstenite::client(request, tcp(addr)).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(error) => error,
        tungstenite::HandshakeError::Interrupted(_) => panic!("blocking handshake interrupted"),
    })?;
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("mcp")
    );
    Ok(ws)
}

fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).expect("sent");
}

/// The next text message, as JSON (pings are answered on the way).
fn next_json(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("a message") {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// The close frame the server ends with.
fn close_code(ws: &mut Ws) -> CloseCode {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => return frame.code,
            Ok(Message::Close(None)) => panic!("a close without a code"),
            Ok(_) => {}
            Err(error) => panic!("connection ended without a close frame: {error}"),
        }
    }
}

fn initialize(ws: &mut Ws) -> Value {
    send(ws, INIT);
    let reply = next_json(ws);
    send(
        ws,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    reply
}

fn sessions(node: &NodeHandle) -> usize {
    (0..node.shard_count())
        .map(|index| node.query(ShardId(index as u16)).unwrap().sessions)
        .sum()
}

/// Waits (up to IO_TIMEOUT) until the node holds `count` sessions.
fn await_sessions(node: &NodeHandle, count: usize) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while sessions(node) != count {
        assert!(Instant::now() < deadline, "sessions never reached {count}");
        std::thread::park_timeout(std::time::Duration::from_millis(5));
    }
}

/// One raw HTTP request on its own connection; the answer's head and body.
fn raw(addr: SocketAddr, request: &str) -> String {
    let mut stream = tcp(addr);
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1_024];
    loop {
        let read = stream.read(&mut chunk).unwrap_or(0);
        answer.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        // Done at EOF, or once the head and its Content-Length body are in
        // (the connection may stay open: upgraded, or kept alive).
        let complete = text.split_once("\r\n\r\n").is_some_and(|(head, body)| {
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("Content-Length: "))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
            body.len() >= length
        });
        if read == 0 || complete {
            return text;
        }
    }
}

fn upgrade_request(addr: SocketAddr, extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

#[test]
fn sessions_on_every_shard_initialize_call_tools_and_get_progress_before_the_result() {
    let node = runtime::start(test_config(2, 2), demo::factory()).unwrap();
    let addr = node.http_addr().unwrap();
    let mut clients = Vec::new();
    // Clients until both shards hold some (the kernel spreads connections).
    while clients.len() < 64
        && (clients.len() < 4
            || node.query(ShardId(0)).unwrap().sessions == 0
            || node.query(ShardId(1)).unwrap().sessions == 0)
    {
        let mut ws = open(addr, "mcp").expect("upgraded");
        let init = initialize(&mut ws);
        assert_eq!(init["id"], "init");
        assert_eq!(init["result"]["protocolVersion"], "2025-11-25");
        clients.push(ws);
    }
    assert!(node.query(ShardId(0)).unwrap().sessions > 0);
    assert!(node.query(ShardId(1)).unwrap().sessions > 0);
    for (index, ws) in clients.iter_mut().enumerate() {
        send(
            ws,
            &format!(
                r#"{{"jsonrpc":"2.0","id":{index},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"hi {index}"}}}}}}"#
            ),
        );
        let reply = next_json(ws);
        assert_eq!(reply["id"], index);
        assert_eq!(reply["result"]["content"][0]["text"], format!("hi {index}"));
    }

    let ws = &mut clients[0];
    send(ws, r#"{"jsonrpc":"2.0","id":"list","method":"tools/list"}"#);
    let tools = next_json(ws);
    assert_eq!(tools["result"]["tools"][0]["name"], "echo");
    send(
        ws,
        r#"{"jsonrpc":"2.0","id":"slow","method":"tools/call","params":{"name":"slow","arguments":{"ms":20},"_meta":{"progressToken":"p"}}}"#,
    );
    let mut progress = Vec::new();
    let result = loop {
        let frame = next_json(ws);
        match frame["method"].as_str() {
            Some("notifications/progress") => {
                assert_eq!(frame["params"]["progressToken"], "p");
                progress.push(frame["params"]["progress"].as_f64().unwrap());
            }
            Some("notifications/message") => {}
            Some(other) => panic!("unexpected {other}"),
            None => break frame,
        }
    };
    assert_eq!(progress, [1.0, 2.0, 3.0, 4.0]);
    assert_eq!(result["id"], "slow");
    assert_eq!(result["result"]["content"][0]["text"], "waited 20 ms");
    send(ws, r#"{"jsonrpc":"2.0","id":"p","method":"ping"}"#);
    assert_eq!(next_json(ws), json!({"jsonrpc":"2.0","id":"p","result":{}}));

    // A client's close ends its session.
    let count = sessions(&node);
    clients[0].close(None).unwrap();
    while clients[0].read().is_ok() {}
    await_sessions(&node, count - 1);
    drop(clients);
    node.drain();
    node.join().unwrap();
}

#[test]
fn malformed_json_gets_a_parse_error_and_the_session_lives_on() {
    let node = runtime::start(test_config(1, 1), demo::factory()).unwrap();
    let mut ws = open(node.http_addr().unwrap(), "mcp").unwrap();
    send(&mut ws, "{oops");
    let reply = next_json(&mut ws);
    assert_eq!(reply["error"]["code"], -32700);
    assert_eq!(reply["id"], Value::Null);
    initialize(&mut ws);
    send(&mut ws, r#"{"jsonrpc":"2.0","id":9,"method":"nope"}"#);
    assert_eq!(next_json(&mut ws)["error"]["code"], -32601);
    send(&mut ws, r#"{"jsonrpc":"2.0","id":10,"method":"ping"}"#);
    assert_eq!(next_json(&mut ws)["result"], json!({}));
    drop(ws);
    node.drain();
    node.join().unwrap();
}

#[test]
fn the_upgrade_needs_the_mcp_subprotocol_and_echoes_it() {
    let node = runtime::start(test_config(1, 1), demo::factory()).unwrap();
    let addr = node.http_addr().unwrap();
    for offered in ["", "graphql-ws", "chat, superchat"] {
        match open(addr, offered) {
            Err(tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 400, "offered {offered:?}");
                let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
                assert!(body.contains("Sec-WebSocket-Protocol: mcp"), "{body}");
            }
            Err(other) => panic!("offered {offered:?}: {other}"),
            Ok(_) => panic!("offered {offered:?}: upgraded anyway"),
        }
    }
    // Among others, and repeated: accepted, and only `mcp` is echoed.
    let mut ws = open(addr, "json, mcp").expect("upgraded");
    assert_eq!(
        initialize(&mut ws)["result"]["protocolVersion"],
        "2025-11-25"
    );
    drop(ws);
    let answer = raw(
        addr,
        &upgrade_request(
            addr,
            "Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: mcp\r\n",
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    assert!(
        answer.contains("Sec-WebSocket-Protocol: mcp\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{answer}"
    );
    node.drain();
    node.join().unwrap();
}

#[test]
fn malformed_upgrades_and_foreign_origins_are_refused_by_status() {
    let node = runtime::start(test_config(1, 1), demo::factory()).unwrap();
    let addr = node.http_addr().unwrap();
    let mcp = "Sec-WebSocket-Protocol: mcp\r\n";
    let status = |answer: String| answer.split_whitespace().nth(1).unwrap_or("").to_string();

    let evil = raw(
        addr,
        &upgrade_request(addr, &format!("{mcp}Origin: http://evil.example\r\n")),
    );
    assert_eq!(status(evil), "403");
    let rebinding = raw(
        addr,
        &upgrade_request(addr, mcp).replacen(&format!("Host: {addr}"), "Host: evil.example", 1),
    );
    assert_eq!(status(rebinding), "403");
    let plain_get = raw(addr, &format!("GET /ws HTTP/1.1\r\nHost: {addr}\r\n\r\n"));
    assert_eq!(status(plain_get.clone()), "426");
    assert!(plain_get.contains("Upgrade: websocket"), "{plain_get}");
    let old = raw(
        addr,
        &upgrade_request(addr, mcp).replace("Version: 13", "Version: 8"),
    );
    assert_eq!(status(old.clone()), "426");
    assert!(old.contains("Sec-WebSocket-Version: 13"), "{old}");
    let keyless = raw(
        addr,
        &upgrade_request(addr, mcp).replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
    );
    assert_eq!(status(keyless), "400");
    let post = raw(addr, &upgrade_request(addr, mcp).replacen("GET", "POST", 1));
    assert_eq!(status(post), "405");
    assert_eq!(sessions(&node), 0, "no refused upgrade opened a session");
    // A local Origin is fine.
    let local_origin = raw(
        addr,
        &upgrade_request(addr, &format!("{mcp}Origin: http://localhost:3000\r\n")),
    );
    assert_eq!(status(local_origin), "101");
    node.drain();
    node.join().unwrap();
}

#[test]
fn an_oversized_message_gets_the_error_and_close_1009() {
    let mut config = test_config(1, 1);
    config.limits.message_bytes_max = 1_024;
    let node = runtime::start(config, demo::factory()).unwrap();
    let mut ws = open(node.http_addr().unwrap(), "mcp").unwrap();
    initialize(&mut ws);
    let huge = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"pad":"{}"}}}}"#,
        "x".repeat(4_096)
    );
    send(&mut ws, &huge);
    let reply = next_json(&mut ws);
    assert_eq!(reply["error"]["code"], -32600);
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("limits.message_bytes_max (1024 bytes)"));
    assert_eq!(close_code(&mut ws), CloseCode::Size);
    await_sessions(&node, 0);
    node.drain();
    node.join().unwrap();
}

#[test]
fn binary_messages_are_refused_with_close_1003() {
    let node = runtime::start(test_config(1, 1), demo::factory()).unwrap();
    let mut ws = open(node.http_addr().unwrap(), "mcp").unwrap();
    ws.send(Message::binary(INIT.as_bytes().to_vec())).unwrap();
    assert_eq!(close_code(&mut ws), CloseCode::Unsupported);
    await_sessions(&node, 0);
    node.drain();
    node.join().unwrap();
}

#[test]
fn a_live_client_is_pinged_and_kept_a_silent_one_is_dropped_with_its_session() {
    let mut config = test_config(1, 1);
    config.limits.ws_ping_interval_ms = 20;
    // Generous for the pong: a loaded machine must not fail the live client.
    config.limits.ws_pong_timeout_ms = 500;
    let node = runtime::start(config, demo::factory()).unwrap();
    let addr = node.http_addr().unwrap();

    // tungstenite answers each ping as it reads it.
    let mut live = open(addr, "mcp").unwrap();
    initialize(&mut live);
    let mut pings = 0;
    while pings < 5 {
        match live.read().expect("still connected") {
            Message::Ping(_) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    send(&mut live, r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
    assert_eq!(next_json(&mut live)["id"], 1, "answered after five pings");
    live.close(None).unwrap();
    while live.read().is_ok() {}
    await_sessions(&node, 0);

    // A raw client that upgrades and then never reads nor answers.
    let mut silent = tcp(addr);
    silent
        .write_all(upgrade_request(addr, "Sec-WebSocket-Protocol: mcp\r\n").as_bytes())
        .unwrap();
    await_sessions(&node, 1);
    let mut seen = Vec::new();
    let _ = silent.read_to_end(&mut seen); // ends when the server closes
    let head_end = seen
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    assert!(seen.starts_with(b"HTTP/1.1 101 "));
    // Then a ping (0x89, empty), and a close (0x88) once the pong is overdue.
    assert_eq!(&seen[head_end..head_end + 2], [0x89, 0x00]);
    // 0x88, the length, then the code: 1008 (policy).
    let close = &seen[head_end + 2..];
    assert_eq!(close.first(), Some(&0x88), "a close frame");
    assert_eq!(close.get(2..4), Some(&[0x03, 0xF0][..]), "code 1008");
    await_sessions(&node, 0);
    node.drain();
    node.join().unwrap();
}

#[test]
fn a_drain_closes_open_sockets_with_going_away() {
    let node = runtime::start(test_config(1, 1), demo::factory()).unwrap();
    let mut ws = open(node.http_addr().unwrap(), "mcp").unwrap();
    initialize(&mut ws);
    node.drain();
    assert_eq!(close_code(&mut ws), CloseCode::Away);
    node.join().unwrap();
}

#[test]
fn frames_sent_right_behind_the_upgrade_request_are_not_lost() {
    let node = runtime::start(test_config(1, 1), demo::factory()).unwrap();
    let addr = node.http_addr().unwrap();
    // One write: the upgrade request and a masked text frame with INIT.
    let mut bytes = upgrade_request(addr, "Sec-WebSocket-Protocol: mcp\r\n").into_bytes();
    let payload = INIT.as_bytes();
    assert!(payload.len() >= 126 && payload.len() < 65_536);
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    bytes.extend_from_slice(&[0x81, 0x80 | 126]);
    bytes.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    bytes.extend_from_slice(&mask);
    bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let mut stream = tcp(addr);
    stream.write_all(&bytes).unwrap();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4_096];
    let deadline = Instant::now() + IO_TIMEOUT;
    while !String::from_utf8_lossy(&seen).contains("\"protocolVersion\"") {
        assert!(Instant::now() < deadline, "no answer to the early frame");
        let read = stream.read(&mut chunk).unwrap_or(0);
        assert!(read > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..read]);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(text.contains(r#""id":"init""#), "{text}");
    drop(stream);
    node.drain();
    node.join().unwrap();
}
