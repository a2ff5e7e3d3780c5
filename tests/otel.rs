//! Trace export as a user runs it: `shardmcp serve` built with `--features
//! otel`, pointed at a tiny OTLP/HTTP receiver on 127.0.0.1, sends one span
//! per MCP request with its method, session, era, shard and outcome.
#![cfg(feature = "otel")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message;

use common::{Client, IO_TIMEOUT};

/// Kills the server if a test fails before stopping it.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One POST the receiver got: path and body.
struct Post {
    path: String,
    content_type: String,
    body: Vec<u8>,
}

/// Accepts connections until the test ends, answers every request 200 and
/// hands each request to the test.
fn receiver() -> (SocketAddr, mpsc::Receiver<Post>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            match read_post(stream) {
                Some(post) => {
                    if tx.send(post).is_err() {
                        return;
                    }
                }
                None => continue,
            }
        }
    });
    (addr, rx)
}

fn read_post(stream: TcpStream) -> Option<Post> {
    stream.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut parts = request_line.split_whitespace();
    if parts.next()? != "POST" {
        return None;
    }
    let path = parts.next()?.to_string();
    let mut length = 0usize;
    let mut content_type = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "content-type" => content_type = value.trim().to_string(),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let mut stream = stream;
    stream
        .write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
        )
        .ok()?;
    Some(Post {
        path,
        content_type,
        body,
    })
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn string(value: Option<&AnyValue>) -> Option<&str> {
    match value {
        Some(AnyValue::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn serve_with_endpoint(endpoint: &str, dir: &std::path::Path) -> (Server, SocketAddr) {
    let config = dir.join("shardmcp.toml");
    std::fs::write(
        &config,
        format!(
            "[otel]\nendpoint = \"{endpoint}\"\nservice_name = \"otel-test\"\nexport_interval_ms = 50\n"
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_shardmcp"))
        .args(["serve", "--config"])
        .arg(&config)
        .args([
            "--shards",
            "1",
            "--tcp",
            "127.0.0.1:0",
            "--admin",
            "",
            "--log",
            "warn",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("binary runs");
    let mut server = Server(child);
    let mut stdout = BufReader::new(server.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.starts_with("shardmcp: tcp listening on "), "{line}");
    let addr: SocketAddr = line.split_whitespace().nth(4).unwrap().parse().unwrap();
    (server, addr)
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("shardmcp-otel-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn each_request_arrives_at_the_collector_as_a_span_with_its_method() {
    let (collector, posts) = receiver();
    let dir = temp_dir("spans");
    let (mut server, addr) = serve_with_endpoint(&format!("http://{collector}/v1/traces"), &dir);

    let mut client = Client::connect(addr).unwrap();
    client.initialize();
    assert!(client.ping());
    // An unknown method: answered with an error, so its span says so.
    let reply = client
        .exchange(r#"{"jsonrpc":"2.0","id":"x","method":"no/such/method"}"#)
        .unwrap();
    assert!(reply.get("error").is_some(), "{reply}");
    // A 2026-07-28 request on a second connection: no initialize.
    let mut stateless = Client::connect(addr).unwrap();
    let reply = stateless
        .exchange(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#)
        .unwrap();
    assert!(reply.get("result").is_some(), "{reply}");

    let mut spans = Vec::new();
    let mut resources = Vec::new();
    let deadline = Instant::now() + IO_TIMEOUT;
    while !["initialize", "ping", "no/such/method", "tools/list"]
        .iter()
        .all(|m| spans.iter().any(|(name, _, _)| name == m))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let post = posts
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("spans missing; got {spans:?}"));
        assert_eq!(post.path, "/v1/traces");
        assert_eq!(post.content_type, "application/x-protobuf");
        let request = ExportTraceServiceRequest::decode(post.body.as_slice()).unwrap();
        for resource_spans in request.resource_spans {
            if let Some(resource) = resource_spans.resource {
                resources.push(
                    string(attribute(&resource.attributes, "service.name")).map(str::to_string),
                );
            }
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    let status = span.status.as_ref().map(|s| s.code);
                    spans.push((span.name.clone(), span.attributes.clone(), status));
                }
            }
        }
    }
    assert!(
        resources.iter().all(|r| r.as_deref() == Some("otel-test")),
        "{resources:?}"
    );

    let (_, ping, status) = spans.iter().find(|(name, _, _)| name == "ping").unwrap();
    assert_eq!(string(attribute(ping, "mcp.method.name")), Some("ping"));
    assert_eq!(string(attribute(ping, "mcp.request.outcome")), Some("ok"));
    assert_eq!(string(attribute(ping, "shardmcp.era")), Some("handshake"));
    assert_eq!(
        attribute(ping, "shardmcp.shard"),
        Some(&AnyValue::IntValue(0))
    );
    let session = string(attribute(ping, "mcp.session.id")).expect("a session id");
    assert!(!session.is_empty());
    assert_ne!(*status, Some(StatusCode::Error as i32));

    let (_, unknown, status) = spans
        .iter()
        .find(|(name, _, _)| name == "no/such/method")
        .unwrap();
    assert_eq!(
        string(attribute(unknown, "mcp.request.outcome")),
        Some("error")
    );
    assert_eq!(string(attribute(unknown, "mcp.session.id")), Some(session));
    assert_eq!(*status, Some(StatusCode::Error as i32));

    let (_, listed, _) = spans
        .iter()
        .find(|(name, _, _)| name == "tools/list")
        .unwrap();
    assert_eq!(string(attribute(listed, "shardmcp.era")), Some("stateless"));
    assert_eq!(string(attribute(listed, "mcp.request.outcome")), Some("ok"));

    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(server.0.id() as libc::pid_t, libc::SIGTERM);
    }
    let _ = server.0.wait();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_collector_that_is_down_does_not_stop_the_server_answering() {
    // Bound, then dropped: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = temp_dir("down");
    let (mut server, addr) =
        serve_with_endpoint(&format!("http://127.0.0.1:{port}/v1/traces"), &dir);
    let mut client = Client::connect(addr).unwrap();
    client.initialize();
    for _ in 0..50 {
        assert!(client.ping());
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(server.0.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = server.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(dir);
}
