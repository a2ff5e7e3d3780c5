//! Streamable HTTP seen from a raw client: the happy path and every refusal.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::{test_config, IO_TIMEOUT};
use shardmcp::runtime;
use shardmcp::server::demo;

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    }
}

/// One request on its own connection (`Connection: close`), read to the end.
fn http(addr: SocketAddr, method: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut request = format!(
        "{method} /mcp HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
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
    assert_eq!(call.status, 200);
    assert_eq!(
        call.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    let progress_at = call
        .body
        .find("notifications/progress")
        .expect("progress on the stream");
    let result_at = call
        .body
        .find(r#""result""#)
        .expect("the result on the stream");
    assert!(
        progress_at < result_at,
        "notifications precede the response"
    );
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
        let headers = [
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("Mcp-Session-Id", session.as_str()),
        ];
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{calls},"method":"tools/call","params":{{"name":"slow","arguments":{{"ms":4}},"_meta":{{"progressToken":{calls}}}}}}}"#
        );
        let call = http(addr, "POST", &headers, &body);
        assert_eq!(call.status, 200, "{}", call.head);
        let progress_at = call
            .body
            .find("notifications/progress")
            .expect("progress streamed back");
        let result_at = call.body.find(r#""result""#).expect("the result");
        assert!(progress_at < result_at);
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
