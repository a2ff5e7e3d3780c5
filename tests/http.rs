//! Streamable HTTP seen from a raw client: the happy path and every refusal.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::http::Reply;
use common::{test_config, IO_TIMEOUT};
use shardmcp::runtime;
use shardmcp::server::demo;

/// One request to `/mcp` on its own connection, read to the end.
fn http(addr: SocketAddr, method: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    common::http::request(addr, method, "/mcp", headers, body)
}

/// An SSE answer whose progress notification came before its result.
fn assert_progress_then_result(reply: &Reply) {
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    let progress_at = reply
        .body
        .find("notifications/progress")
        .expect("progress on the stream");
    let result_at = reply
        .body
        .find(r#""result""#)
        .expect("the result on the stream");
    assert!(
        progress_at < result_at,
        "notifications precede the response: {}",
        reply.body
    );
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;

#[test]
fn a_session_is_opened_used_over_sse_and_deleted() {
    let node = runtime::start(test_config(2, 2), demo::factory()).unwrap();
    let addr = node.http_addr().expect("http listener");
    let json = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
    ];
    let init = http(addr, "POST", &json, INIT);
    assert_eq!(init.status, 200, "{}", init.head);
    assert!(init.body.contains(r#""protocolVersion":"2025-11-25""#));
    let session = init.header("mcp-session-id").expect("a session id");
    let with_session = |accept: &'static str| {
        vec![
            ("Content-Type", "application/json"),
            ("Accept", accept),
            ("Mcp-Session-Id", session.as_str()),
            ("MCP-Protocol-Version", "2025-11-25"),
        ]
    };
    let note = http(
        addr,
        "POST",
        &with_session("application/json"),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    assert_eq!(note.status, 202);
    let call = http(
        addr,
        "POST",
        &with_session("application/json, text/event-stream"),
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"slow","arguments":{"ms":8},"_meta":{"progressToken":9}}}"#,
    );
    assert_progress_then_result(&call);
    let deleted = http(addr, "DELETE", &with_session("application/json"), "");
    assert_eq!(deleted.status, 200);
    let gone = http(
        addr,
        "POST",
        &with_session("application/json"),
        r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#,
    );
    assert_eq!(gone.status, 404, "a deleted session is unknown");
    node.drain();
    node.join().unwrap();
}

/// Opens a session (initialize + initialized) and gives its id.
/// A POST's headers for a client that takes JSON or SSE, on `session`.
fn session_headers(session: &str) -> [(&'static str, &str); 3] {
    [
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("Mcp-Session-Id", session),
    ]
}

fn open_session(addr: SocketAddr) -> String {
    let json = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
    ];
    let init = http(addr, "POST", &json, INIT);
    assert_eq!(init.status, 200, "{}", init.head);
    let session = init.header("mcp-session-id").expect("a session id");
    let headers = [
        ("Content-Type", "application/json"),
        ("Mcp-Session-Id", session.as_str()),
    ];
    let note = http(
        addr,
        "POST",
        &headers,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    assert_eq!(note.status, 202);
    session
}

#[test]
fn a_quick_answer_is_plain_json_unless_the_request_streams_first() {
    const ECHO: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#;
    const NOTIFYING: &str = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"slow","arguments":{"ms":0},"_meta":{"progressToken":"p"}}}"#;
    let node = runtime::start(test_config(2, 2), demo::factory()).unwrap();
    let addr = node.http_addr().unwrap();
    let session = open_session(addr);
    let post = |accept: &str, body: &str| {
        let headers = [
            ("Content-Type", "application/json"),
            ("Accept", accept),
            ("Mcp-Session-Id", session.as_str()),
        ];
        http(addr, "POST", &headers, body)
    };
    // Each POST is a new connection, so some land on the session's shard
    // and some cross the mesh: the choice is the same either way.
    for _ in 0..6 {
        let quick = post("application/json, text/event-stream", ECHO);
        assert_eq!(quick.status, 200, "{}", quick.head);
        assert_eq!(
            quick.header("content-type").as_deref(),
            Some("application/json")
        );
        let reply: serde_json::Value = serde_json::from_str(&quick.body).expect("one JSON object");
        assert_eq!(reply["id"], 2);
        assert_eq!(reply["result"]["content"][0]["text"], "hi");
        // Progress went out before the answer: it needs the stream.
        let streamed = post("application/json, text/event-stream", NOTIFYING);
        assert_progress_then_result(&streamed);
        // A client that takes only SSE gets SSE.
        let sse_only = post("text/event-stream", ECHO);
        assert_eq!(
            sse_only.header("content-type").as_deref(),
            Some("text/event-stream")
        );
        assert!(sse_only.body.contains(r#""text":"hi""#));
    }
    drop(node);

    // With the bound at 0, every request of such a client gets SSE.
    let mut config = test_config(1, 1);
    config.limits.http_json_answer_turns = 0;
    let node = runtime::start(config, demo::factory()).unwrap();
    let addr = node.http_addr().unwrap();
    let session = open_session(addr);
    let headers = session_headers(&session);
    let call = http(addr, "POST", &headers, ECHO);
    assert_eq!(
        call.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    assert!(
        call.body.contains("id: ") && call.body.contains("retry: "),
        "a resumable stream: {}",
        call.body
    );
    assert!(call.body.contains(r#""text":"hi""#));
}

/// Many connections sharing one session queue behind its mailbox; that wait
/// is not the handler's, so their quick answers are still plain JSON.
#[test]
fn quick_answers_queued_behind_a_busy_session_are_still_plain_json() {
    const CONCURRENT: usize = 24;
    let mut config = test_config(1, 1);
    config.limits.session_mailbox_capacity = 1;
    let node = runtime::start(config, demo::factory()).unwrap();
    let addr = node.http_addr().unwrap();
    let session = open_session(addr);
    let headers = session_headers(&session);
    // All sent before any answer is read: they reach the shard together.
    let pending: Vec<TcpStream> = (0..CONCURRENT)
        .map(|i| {
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"n{i}"}}}}}}"#
            );
            common::http::send(addr, "POST", "/mcp", &headers, &body)
        })
        .collect();
    for (i, stream) in pending.into_iter().enumerate() {
        let reply = common::http::read_reply(stream);
        assert_eq!(reply.status, 200, "{}", reply.head);
        assert_eq!(
            reply.header("content-type").as_deref(),
            Some("application/json"),
            "request {i}: {}",
            reply.body
        );
        assert_eq!(
            reply.json()["result"]["content"][0]["text"],
            format!("n{i}")
        );
    }
}

#[test]
fn requests_for_a_session_on_another_shard_are_forwarded_with_their_streams() {
    use shardmcp::ids::ShardId;
    let node = runtime::start(test_config(2, 2), demo::factory()).unwrap();
    let addr = node.http_addr().unwrap();
    let json = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
    ];
    let init = http(addr, "POST", &json, INIT);
    let session = init.header("mcp-session-id").expect("a session id");
    let forwarded = || {
        node.query(ShardId(0)).unwrap().http_forwarded
            + node.query(ShardId(1)).unwrap().http_forwarded
    };
    // Each request comes on a fresh connection, which the kernel hands to
    // either shard: keep going until some went to the other one.
    let mut calls = 0;
    while calls < 200 && (calls < 8 || forwarded() == 0) {
        calls += 1;
        let headers = session_headers(&session);
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{calls},"method":"tools/call","params":{{"name":"slow","arguments":{{"ms":4}},"_meta":{{"progressToken":{calls}}}}}}}"#
        );
        let call = http(addr, "POST", &headers, &body);
        assert_progress_then_result(&call);
    }
    assert!(forwarded() > 0, "some requests crossed the mesh");
    // A DELETE that lands on the other shard ends the session too.
    let headers = [("Mcp-Session-Id", session.as_str())];
    let mut deleted = http(addr, "DELETE", &headers, "");
    while deleted.status == 200 {
        deleted = http(addr, "DELETE", &headers, "");
    }
    assert_eq!(deleted.status, 404, "gone, whichever shard is asked");
    node.drain();
    node.join().unwrap();
}

#[test]
fn every_refusal_has_its_status() {
    let mut config = test_config(1, 1);
    config.limits.message_bytes_max = 1_024;
    let node = runtime::start(config, demo::factory()).unwrap();
    let addr = node.http_addr().unwrap();
    let json = ("Content-Type", "application/json");
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;

    let get = http(addr, "GET", &[("Accept", "text/event-stream")], "");
    assert_eq!(get.status, 400, "GET needs a session");
    let evil = http(addr, "POST", &[json, ("Host", "evil.example.com")], INIT);
    assert_eq!(evil.status, 403, "DNS rebinding: a foreign Host");
    let evil_origin = http(
        addr,
        "POST",
        &[json, ("Origin", "http://evil.example.com")],
        INIT,
    );
    assert_eq!(evil_origin.status, 403, "DNS rebinding: a foreign Origin");
    assert_eq!(
        http(addr, "POST", &[json], ping).status,
        400,
        "no session and not initialize"
    );
    let unknown = "0000aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    assert_eq!(
        http(addr, "POST", &[json, ("Mcp-Session-Id", unknown)], ping).status,
        404
    );
    assert_eq!(
        http(addr, "POST", &[json, ("Mcp-Session-Id", "not-an-id")], ping).status,
        404
    );
    let version = http(
        addr,
        "POST",
        &[json, ("MCP-Protocol-Version", "1999-01-01")],
        INIT,
    );
    assert_eq!(version.status, 400);
    assert!(version.body.contains("unsupported MCP-Protocol-Version"));
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"pad":"{}"}}}}"#,
        "x".repeat(2_000)
    );
    assert_eq!(http(addr, "POST", &[json], &big).status, 413);
    let mut other = TcpStream::connect(addr).unwrap();
    other.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(
        other,
        "GET /elsewhere HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    let _ = other.read_to_string(&mut raw);
    assert!(raw.starts_with("HTTP/1.1 404"), "{raw}");
    node.drain();
    node.join().unwrap();
}

/// A 2026-07-28 request body with its envelope.
fn modern(id: u64, method: &str, extra: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{{{extra}"_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{{}},"progressToken":{id}}}}}}}"#
    )
}

#[test]
fn stateless_requests_need_no_session_and_follow_the_revisions_header_rules() {
    let node = runtime::start(test_config(2, 2), demo::factory()).unwrap();
    let addr = node.http_addr().unwrap();
    let headers = |method: &'static str, name: Option<&'static str>| {
        let mut headers = vec![
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", method),
        ];
        if let Some(name) = name {
            headers.push(("Mcp-Name", name));
        }
        headers
    };
    let discover = http(
        addr,
        "POST",
        &headers("server/discover", None),
        &modern(1, "server/discover", ""),
    );
    assert_eq!(discover.status, 200, "{}", discover.body);
    assert!(
        discover.header("mcp-session-id").is_none(),
        "no session in this revision"
    );
    assert!(discover
        .body
        .contains(r#""supportedVersions":["2026-07-28"]"#));
    assert!(discover.body.contains(r#""resultType":"complete""#));

    let add = http(
        addr,
        "POST",
        &headers("tools/call", Some("add")),
        &modern(
            2,
            "tools/call",
            r#""name":"add","arguments":{"a":1,"b":2},"#,
        ),
    );
    assert_eq!(add.status, 200);
    assert!(
        add.body.contains(r#""structuredContent":{"sum":3.0}"#),
        "{}",
        add.body
    );

    let wrong_method = http(
        addr,
        "POST",
        &headers("tools/list", None),
        &modern(3, "server/discover", ""),
    );
    assert_eq!(wrong_method.status, 400);
    assert!(wrong_method.body.contains("-32020"));
    let no_name = http(
        addr,
        "POST",
        &headers("tools/call", None),
        &modern(
            4,
            "tools/call",
            r#""name":"add","arguments":{"a":1,"b":2},"#,
        ),
    );
    assert_eq!(no_name.status, 400, "Mcp-Name is required for tools/call");
    let removed = http(addr, "POST", &headers("ping", None), &modern(5, "ping", ""));
    assert_eq!(removed.status, 404);
    assert!(removed.body.contains("-32601"));

    // A handler that reports progress answers with SSE: progress, then the result.
    let slow = http(
        addr,
        "POST",
        &headers("tools/call", Some("slow")),
        &modern(6, "tools/call", r#""name":"slow","arguments":{"ms":8},"#),
    );
    assert_eq!(slow.status, 200);
    assert_eq!(
        slow.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    let progress_at = slow.body.find("notifications/progress").expect("progress");
    let result_at = slow
        .body
        .find(r#""resultType":"complete""#)
        .expect("result");
    assert!(progress_at < result_at);
    node.drain();
    node.join().unwrap();
}

/// Reads from `stream` until `needle` has arrived; everything read so far.
fn read_until(stream: &mut TcpStream, seen: &mut String, needle: &str) {
    let mut buffer = [0u8; 4096];
    while !seen.contains(needle) {
        let read = stream.read(&mut buffer).expect("the stream stays open");
        assert!(read > 0, "stream ended before {needle}: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }
}

#[test]
fn a_stateless_listen_stream_hears_node_wide_list_changes() {
    use shardmcp::server::{Change, Tool, ToolResult};
    let mut config = test_config(2, 2);
    // The open listen holds its connection until the drain deadline.
    config.runtime.drain_deadline_ms = 200;
    let node = runtime::start(config, demo::factory()).unwrap();
    let addr = node.http_addr().unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let body = modern(
        41,
        "subscriptions/listen",
        r#""notifications":{"toolsListChanged":true,"resourcesListChanged":true},"#,
    );
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2026-07-28\r\n\
         Mcp-Method: subscriptions/listen\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut seen = String::new();
    read_until(
        &mut stream,
        &mut seen,
        "notifications/subscriptions/acknowledged",
    );
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(
        seen.contains(r#""notifications":{"resourcesListChanged":true,"toolsListChanged":true}"#),
        "{seen}"
    );

    node.change(vec![Change::add_tool(|| {
        Tool::builder("late", "Added node-wide.")
            .handler(|_call| async { Ok(ToolResult::text("here")) })
    })])
    .unwrap();
    read_until(&mut stream, &mut seen, "notifications/tools/list_changed");
    let notice = &seen[seen.find("notifications/tools/list_changed").unwrap()..];
    assert!(
        notice.contains(r#""io.modelcontextprotocol/subscriptionId":41"#),
        "{notice}"
    );
    drop(stream);
    node.drain();
    node.join().unwrap();
}

#[test]
fn mcp_param_headers_must_mirror_x_mcp_header_arguments() {
    use shardmcp::server::{Server, Tool, ToolResult};
    let factory: shardmcp::server::ServerFactory = std::sync::Arc::new(|| {
        Server::builder("params", "1")
            .tool(
                Tool::builder("route", "Routes by region.")
                    .input_schema(serde_json::json!({
                        "type": "object",
                        "properties": {
                            "region": {"type": "string", "x-mcp-header": "Region"},
                            "count": {"type": "integer", "x-mcp-header": "Count"}
                        },
                        "required": ["region"]
                    }))
                    .handler(|_call| async { Ok(ToolResult::text("routed")) })?,
            )
            .build()
    });
    let node = runtime::start(test_config(1, 1), factory).unwrap();
    let addr = node.http_addr().unwrap();
    let body = modern(
        1,
        "tools/call",
        r#""name":"route","arguments":{"region":"zürich","count":7},"#,
    );
    let call = |extra: &[(&'static str, &'static str)]| {
        let mut headers = vec![
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "route"),
        ];
        headers.extend_from_slice(extra);
        http(addr, "POST", &headers, &body)
    };
    // Non-ASCII travels base64-encoded; integers compare as numbers.
    let good = call(&[
        ("Mcp-Param-Region", "=?base64?esO8cmljaA==?="),
        ("mcp-param-count", "007"),
    ]);
    assert_eq!(good.status, 200, "{}", good.body);
    assert!(good.body.contains("routed"));
    let wrong = call(&[
        ("Mcp-Param-Region", "=?base64?YmVybg==?="),
        ("Mcp-Param-Count", "7"),
    ]);
    assert_eq!(wrong.status, 400);
    assert!(wrong.body.contains("-32020") && wrong.body.contains("Mcp-Param-Region"));
    let missing = call(&[("Mcp-Param-Region", "=?base64?esO8cmljaA==?=")]);
    assert_eq!(missing.status, 400);
    assert!(
        missing.body.contains("Mcp-Param-Count is missing"),
        "{}",
        missing.body
    );
    node.drain();
    node.join().unwrap();
}

#[test]
fn pipelined_requests_on_one_connection_are_answered_in_order() {
    let node = runtime::start(test_config(1, 1), demo::factory()).unwrap();
    let addr = node.http_addr().unwrap();
    let json = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
    ];
    let init = http(addr, "POST", &json, INIT);
    let session = init.header("mcp-session-id").unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    // Three requests in one write; the last one closes the connection.
    let mut pipelined = String::new();
    for (id, close) in [(1, false), (2, false), (3, true)] {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"n{id}"}}}}}}"#
        );
        pipelined.push_str(&format!(
            "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAccept: application/json\r\nMcp-Session-Id: {session}\r\nConnection: {}\r\nContent-Length: {}\r\n\r\n{body}",
            if close { "close" } else { "keep-alive" },
            body.len()
        ));
    }
    stream.write_all(pipelined.as_bytes()).unwrap();
    let mut raw = String::new();
    let _ = stream.read_to_string(&mut raw);
    assert_eq!(raw.matches("HTTP/1.1 200 OK").count(), 3, "{raw}");
    let (one, two, three) = (
        raw.find(r#""n1""#).unwrap(),
        raw.find(r#""n2""#).unwrap(),
        raw.find(r#""n3""#).unwrap(),
    );
    assert!(one < two && two < three, "{raw}");
    node.drain();
    node.join().unwrap();
}

#[test]
fn a_busy_keep_alive_connection_outlives_the_idle_bound_and_a_quiet_one_does_not() {
    let mut config = test_config(1, 1);
    config.limits.http_idle_timeout_ms = 1_000;
    let node = runtime::start(config, demo::factory()).unwrap();
    let addr = node.http_addr().unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let started = std::time::Instant::now();
    let mut answered = 0;
    // A request every 100 ms for 2.5 s: the connection's one idle timer
    // fires twice meanwhile and must be armed again, not close it.
    while started.elapsed() < std::time::Duration::from_millis(2_500) {
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
        let request = format!(
            "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(
                stream.read(&mut byte).unwrap(),
                1,
                "closed after {answered} answers, {:?} in",
                started.elapsed()
            );
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("Content-Length: "))
            .and_then(|value| value.trim().parse().ok())
            .expect("a Content-Length");
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).unwrap();
        answered += 1;
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(answered >= 10, "{answered}");
    // Then quiet: the server closes the connection without a word.
    let mut rest = Vec::new();
    let closed = stream.read_to_end(&mut rest);
    assert!(
        closed.is_ok(),
        "still open after {IO_TIMEOUT:?}: {closed:?}"
    );
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}
