//! Streamable HTTP's SSE streams seen from a raw client: the standalone GET
//! stream, resumption after `Last-Event-ID` (also across shards), streams a
//! handler closes, the legacy HTTP+SSE transport, and the timeouts that cut
//! off idle and slow clients.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{test_config, IO_TIMEOUT};
use serde_json::Value;
use shardmcp::ids::ShardId;
use shardmcp::runtime::{self, NodeHandle};
use shardmcp::server::demo;

/// One SSE event as a client sees it.
#[derive(Debug, Default, Clone)]
struct Event {
    id: Option<String>,
    event: Option<String>,
    data: String,
    retry: Option<u64>,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// One HTTP exchange on its own connection, read as it arrives.
struct Conn {
    stream: TcpStream,
    raw: Vec<u8>,
    status: u16,
    head: String,
    /// Decoded body bytes not yet parsed into events.
    body: String,
    chunked: bool,
    ended: bool,
}

impl Conn {
    fn open(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Conn {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).unwrap();
        let mut conn = Conn {
            stream,
            raw: Vec::new(),
            status: 0,
            head: String::new(),
            body: String::new(),
            chunked: false,
            ended: false,
        };
        conn.read_head();
        conn
    }

    fn read_head(&mut self) {
        while !contains(&self.raw, b"\r\n\r\n") {
            if !self.fill() {
                return;
            }
        }
        let end = find(&self.raw, b"\r\n\r\n").unwrap();
        self.head = String::from_utf8_lossy(&self.raw[..end]).into_owned();
        self.raw.drain(..end + 4);
        self.status = self
            .head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        self.chunked = self
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.raw.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Moves whole chunks from `raw` to `body`; false at the body's end.
    fn decode_chunks(&mut self) -> bool {
        loop {
            let Some(line_end) = find(&self.raw, b"\r\n") else {
                return true;
            };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.trim(), 16).expect("chunk size");
            if size == 0 {
                self.ended = true;
                return false;
            }
            if self.raw.len() < line_end + 2 + size + 2 {
                return true;
            }
            let data = self.raw[line_end + 2..line_end + 2 + size].to_vec();
            self.raw.drain(..line_end + 2 + size + 2);
            self.body.push_str(&String::from_utf8_lossy(&data));
        }
    }

    /// The next event with data or an id (comments skipped); `None` once the
    /// stream has ended.
    fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.body.find("\n\n") {
                let block: String = self.body.drain(..end + 2).collect();
                let mut event = Event::default();
                let mut fields = 0;
                for line in block.lines() {
                    let Some((key, value)) = line.split_once(':') else {
                        continue;
                    };
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match key {
                        "id" => event.id = Some(value.to_string()),
                        "event" => event.event = Some(value.to_string()),
                        "data" => event.data.push_str(value),
                        "retry" => event.retry = value.parse().ok(),
                        _ => continue, // a comment
                    }
                    fields += 1;
                }
                if fields > 0 {
                    return Some(event);
                }
                continue;
            }
            if self.ended {
                return None;
            }
            if self.chunked {
                if !self.decode_chunks() || self.body.contains("\n\n") {
                    continue;
                }
            } else {
                self.body.push_str(&String::from_utf8_lossy(&self.raw));
                self.raw.clear();
            }
            if !self.ended && !self.fill() {
                self.ended = true;
            }
        }
    }

    /// The rest of a plain (not chunked) body.
    fn body_text(mut self) -> String {
        while self.fill() {}
        self.body.push_str(&String::from_utf8_lossy(&self.raw));
        self.body
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

fn post_headers(session: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Content-Type", "application/json".into()),
        ("Accept", "application/json, text/event-stream".into()),
        ("Mcp-Session-Id", session.into()),
    ]
}

fn refs<'a>(headers: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    headers.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Opens an initialized session; gives its id.
fn new_session(addr: SocketAddr) -> String {
    let json = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
    ];
    let init = Conn::open(addr, "POST", "/mcp", &json, INIT);
    assert_eq!(init.status, 200, "{}", init.head);
    let session = init.header("mcp-session-id").expect("a session id");
    let headers = post_headers(&session);
    let done = Conn::open(addr, "POST", "/mcp", &refs(&headers), INITIALIZED);
    assert_eq!(done.status, 202);
    session
}

fn post(addr: SocketAddr, session: &str, body: &str) -> Conn {
    Conn::open(addr, "POST", "/mcp", &refs(&post_headers(session)), body)
}

fn resume(addr: SocketAddr, session: &str, last_event_id: Option<&str>) -> Conn {
    let mut headers = vec![("Accept", "text/event-stream"), ("Mcp-Session-Id", session)];
    if let Some(id) = last_event_id {
        headers.push(("Last-Event-ID", id));
    }
    Conn::open(addr, "GET", "/mcp", &headers, "")
}

fn stop(node: NodeHandle) {
    node.drain();
    node.join().unwrap();
}

/// The reconnection fixture closes its POST stream before answering; the
/// answer comes on the GET that resumes after the last event seen.
fn closed_stream_is_resumed(addr: SocketAddr, session: &str, id: u64) {
    let call = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"test_reconnection","arguments":{{}}}}}}"#
    );
    let mut stream = post(addr, session, &call);
    assert_eq!(stream.status, 200, "{}", stream.head);
    let priming = stream.next_event().expect("a priming event");
    assert_eq!(priming.data, "", "priming events carry no data");
    assert_eq!(priming.retry, Some(1_000), "the retry hint");
    let last = priming.id.expect("an event id");
    assert!(
        stream.next_event().is_none(),
        "the handler closed the stream before answering"
    );
    let mut resumed = resume(addr, session, Some(&last));
    assert_eq!(resumed.status, 200, "{}", resumed.head);
    let answer = resumed.next_event().expect("the answer");
    assert_eq!(answer.json()["id"], id);
    assert_eq!(
        answer.json()["result"]["content"][0]["text"],
        "Reconnection test completed"
    );
    assert!(resumed.next_event().is_none(), "the stream ends with it");
}

#[test]
fn a_stream_its_handler_closed_is_resumed_after_the_last_event_id() {
    let node = runtime::start(test_config(1, 1), demo::factory()).unwrap();
    let addr = node.http_addr().unwrap();
    let session = new_session(addr);
    closed_stream_is_resumed(addr, &session, 5);
    // Once delivered, the stream is gone: resuming it again finds nothing.
    let mut again = resume(addr, &session, Some("1-0"));
    assert_eq!(again.status, 404);
    assert!(again.next_event().is_none());
    stop(node);
}

#[test]
fn streams_resume_on_whichever_shard_the_client_reconnects_to() {
    let node = runtime::start(test_config(2, 2), demo::factory()).unwrap();
    let addr = node.http_addr().unwrap();
    let session = new_session(addr);
    let forwarded = || {
        node.query(ShardId(0)).unwrap().http_forwarded
            + node.query(ShardId(1)).unwrap().http_forwarded
    };
    // Each connection lands on either shard: go on until some crossed.
    let mut id = 10;
    while id < 200 && (id < 20 || forwarded() == 0) {
        closed_stream_is_resumed(addr, &session, id);
        id += 1;
    }
    assert!(forwarded() > 0, "some exchanges crossed the mesh");
    stop(node);
}

#[test]
fn a_dropped_connection_loses_no_event() {
    let node = runtime::start(test_config(1, 1), demo::factory()).unwrap();
    let addr = node.http_addr().unwrap();
    let session = new_session(addr);
    let call = r#"{"jsonrpc":"2.0","id":"slow-1","method":"tools/call","params":{"name":"slow","arguments":{"ms":600},"_meta":{"progressToken":"p"}}}"#;
    let mut first = post(addr, &session, call);
    let priming = first.next_event().unwrap();
    let seen = first.next_event().expect("a first notification");
    assert!(seen.json()["method"].is_string());
    let last = seen.id.clone().expect("events carry ids");
    assert_ne!(priming.id, seen.id);
    drop(first); // the connection dies mid-call; the call goes on

    let mut resumed = resume(addr, &session, Some(&last));
    assert_eq!(resumed.status, 200);
    let mut events = vec![seen];
    while let Some(event) = resumed.next_event() {
        events.push(event);
    }
    // Four steps, each a log message and a progress notification, then the
    // answer: every one exactly once, in order.
    let methods: Vec<String> = events
        .iter()
        .map(|e| e.json()["method"].as_str().unwrap_or("answer").to_string())
        .collect();
    assert_eq!(methods.len(), 9, "{methods:?}");
    assert_eq!(methods.last().map(String::as_str), Some("answer"));
    let progress: Vec<f64> = events
        .iter()
        .filter(|e| e.json()["method"] == "notifications/progress")
        .map(|e| e.json()["params"]["progress"].as_f64().unwrap())
        .collect();
    assert_eq!(progress, [1.0, 2.0, 3.0, 4.0]);
    assert_eq!(events[8].json()["id"], "slow-1");
    stop(node);
}

#[test]
fn the_get_stream_carries_what_belongs_to_no_request_and_resumes_too() {
    let node = runtime::start(test_config(1, 1), demo::factory()).unwrap();
    let addr = node.http_addr().unwrap();
    let session = new_session(addr);
    let subscribe = r#"{"jsonrpc":"2.0","id":2,"method":"resources/subscribe","params":{"uri":"demo://notes/a"}}"#;
    let mut subscribed = post(addr, &session, subscribe);
    while subscribed.next_event().is_some() {}

    let mut listening = resume(addr, &session, None);
    assert_eq!(listening.status, 200);
    assert_eq!(
        listening.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    let priming = listening.next_event().unwrap();
    assert_eq!(priming.id.as_deref(), Some("0-0"));
    let touch = |id: u64| {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"touch_note","arguments":{{"name":"a"}}}}}}"#
        );
        let mut call = post(addr, &session, &body);
        while call.next_event().is_some() {}
    };
    touch(3);
    let update = listening.next_event().expect("the update");
    assert_eq!(update.json()["method"], "notifications/resources/updated");
    assert_eq!(update.json()["params"]["uri"], "demo://notes/a");
    let last = update.id.clone().unwrap();
    drop(listening);

    touch(4);
    let mut resumed = resume(addr, &session, Some(&last));
    let missed = resumed.next_event().expect("the update sent while away");
    assert_eq!(missed.json()["method"], "notifications/resources/updated");
    assert_ne!(missed.id.as_deref(), Some(last.as_str()));
    stop(node);
}

#[test]
fn get_and_resumption_refusals_say_why() {
    let node = runtime::start(test_config(1, 1), demo::factory()).unwrap();
    let addr = node.http_addr().unwrap();
    let session = new_session(addr);
    let no_accept = Conn::open(addr, "GET", "/mcp", &[("Mcp-Session-Id", &session)], "");
    assert_eq!(no_accept.status, 406);
    let no_session = Conn::open(addr, "GET", "/mcp", &[("Accept", "text/event-stream")], "");
    assert_eq!(no_session.status, 400);
    let unknown = resume(addr, "0000aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", None);
    assert_eq!(unknown.status, 404);
    let malformed = resume(addr, &session, Some("yesterday"));
    assert_eq!(malformed.status, 400);
    assert!(malformed.body_text().contains("not an event id"));
    let gone = resume(addr, &session, Some("99-3"));
    assert_eq!(gone.status, 404);
    assert!(gone.body_text().contains("no stream 99"));
    let put = Conn::open(addr, "PUT", "/mcp", &[], "");
    assert_eq!(
        (put.status, put.header("allow").as_deref()),
        (405, Some("GET, POST, DELETE"))
    );
    let text = Conn::open(
        addr,
        "POST",
        "/mcp",
        &[("Content-Type", "text/plain"), ("Mcp-Session-Id", &session)],
        "{}",
    );
    assert_eq!(text.status, 415);
    stop(node);
}

#[test]
fn a_batch_on_a_2025_03_26_session_is_answered_in_full() {
    let node = runtime::start(test_config(1, 1), demo::factory()).unwrap();
    let addr = node.http_addr().unwrap();
    let json = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
    ];
    let init = INIT.replace("2025-11-25", "2025-03-26");
    let opened = Conn::open(addr, "POST", "/mcp", &json, &init);
    let session = opened.header("mcp-session-id").unwrap();
    let mut headers = json.to_vec();
    headers.push(("Mcp-Session-Id", &session));
    Conn::open(addr, "POST", "/mcp", &headers, INITIALIZED);
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}]"#;
    let reply = Conn::open(addr, "POST", "/mcp", &headers, batch);
    assert_eq!(reply.status, 200);
    let answers: Value = serde_json::from_str(&reply.body_text()).unwrap();
    let answers = answers.as_array().expect("a batch answer");
    assert_eq!(answers.len(), 2);
    assert!(answers
        .iter()
        .any(|a| a["id"] == 2 && a["result"].is_object()));
    stop(node);
}

#[test]
fn the_legacy_sse_transport_serves_a_whole_session() {
    let node = runtime::start(test_config(2, 2), demo::factory()).unwrap();
    let addr = node.http_addr().unwrap();
    let mut events = Conn::open(addr, "GET", "/sse", &[("Accept", "text/event-stream")], "");
    assert_eq!(events.status, 200);
    let endpoint = events.next_event().expect("the endpoint event");
    assert_eq!(endpoint.event.as_deref(), Some("endpoint"));
    let path = endpoint.data.clone();
    assert!(path.starts_with("/messages?sessionId="), "{path}");
    let json = [("Content-Type", "application/json")];
    let init = INIT.replace("2025-11-25", "2024-11-05");
    // Each POST may land on either shard: the owner answers on this stream.
    for (body, answer_id) in [
        (init.as_str(), Some(1)),
        (INITIALIZED, None),
        (
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"legacy"}}}"#,
            Some(2),
        ),
    ] {
        let accepted = Conn::open(addr, "POST", &path, &json, body);
        assert_eq!(accepted.status, 202, "{}", accepted.head);
        if let Some(id) = answer_id {
            let answer = events.next_event().expect("the answer on the SSE stream");
            assert_eq!(answer.event.as_deref(), Some("message"));
            assert_eq!(answer.json()["id"], id, "{:?}", answer);
        }
    }
    let missing = Conn::open(addr, "POST", "/messages", &json, INITIALIZED);
    assert_eq!(missing.status, 400);
    let unknown = Conn::open(
        addr,
        "POST",
        "/messages?sessionId=0000aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        &json,
        INITIALIZED,
    );
    assert_eq!(unknown.status, 404);
    // The session ends with its stream.
    drop(events);
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let ping = r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#;
        if Conn::open(addr, "POST", &path, &json, ping).status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "the session outlived its stream");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop(node);
}

#[test]
fn idle_and_slow_clients_are_cut_off_and_idle_sessions_expire() {
    let mut config = test_config(1, 1);
    config.limits.http_idle_timeout_ms = 200;
    config.limits.http_read_timeout_ms = 200;
    config.limits.http_session_idle_ms = 300;
    let node = runtime::start(config, demo::factory()).unwrap();
    let addr = node.http_addr().unwrap();

    // Silent: closed without a word.
    let mut silent = TcpStream::connect(addr).unwrap();
    silent.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut out = Vec::new();
    let _ = silent.read_to_end(&mut out);
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));

    // Slowloris: a head that never ends gets 408, then the connection ends.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    slow.write_all(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = slow.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");

    // An HTTP session nobody uses is closed: its id then gets 404.
    let session = new_session(addr);
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let ping = r#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#;
        let status = post(addr, &session, ping).status;
        if status == 404 {
            break;
        }
        assert_eq!(status, 200);
        assert!(Instant::now() < deadline, "the idle session never expired");
        // Each ping counts as use: wait past the idle bound before the next.
        std::thread::sleep(Duration::from_millis(1_500));
    }
    stop(node);
}

#[test]
fn a_legacy_stream_ends_when_its_session_dies() {
    use shardmcp::runtime::Fault;
    let node = runtime::start(test_config(1, 1), demo::factory()).unwrap();
    let addr = node.http_addr().unwrap();
    let mut events = Conn::open(addr, "GET", "/sse", &[("Accept", "text/event-stream")], "");
    let endpoint = events.next_event().expect("the endpoint event");
    assert_eq!(endpoint.event.as_deref(), Some("endpoint"));
    node.inject(ShardId(0), Fault::KillPool(0)).unwrap();
    // The client sees its stream end, and can open a new one.
    assert!(
        events.next_event().is_none(),
        "the stream outlived its session"
    );
    let mut again = Conn::open(addr, "GET", "/sse", &[("Accept", "text/event-stream")], "");
    assert!(again.next_event().is_some());
    drop(again);
    stop(node);
}
