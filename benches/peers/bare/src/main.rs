//! The ceiling of the peer comparison (benches/peers/run.sh): an HTTP/1.1
//! keep-alive responder that does no MCP work at all, on the same runtime and
//! cores as shardmcp: one glommio executor pinned to each CPU of the process's
//! affinity mask, each with its own SO_REUSEPORT listener, so the kernel
//! spreads connections over the cores as it does for shardmcp.
//!
//! It answers just enough for `shardmcp load` to run sessions against it:
//! - POST with `"method":"initialize"` in the body: a fixed initialize result
//!   and an `Mcp-Session-Id` header;
//! - POST without an `"id"` (a notification): 202 Accepted;
//! - any other POST: a fixed tools/call result (`{"content":[{"type":"text",
//!   "text":"hi"}]}`) carrying the request's own JSON-RPC id, copied byte for
//!   byte, so the generator can match answers to requests;
//! - DELETE: 204; anything else: 405.
//!
//! Usage: bare-responder [ADDR]   (default 127.0.0.1:0; prints
//! "listening on ADDR" once every core listens)

use std::net::SocketAddr;
use std::sync::mpsc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};

/// Largest request head plus body it accepts; a client sending more is cut off.
const REQUEST_MAX: usize = 64 * 1024;
const HEADERS_MAX: usize = 32;

const INIT_RESULT: &str = r#"{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"bare-responder","version":"0.1.0"}}"#;
const CALL_RESULT: &str = r#"{"content":[{"type":"text","text":"hi"}]}"#;
const SESSION_ID: &str = "bare-0000000000000000";

fn main() {
    let addr: SocketAddr = match std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()
    {
        Ok(addr) => addr,
        Err(error) => {
            eprintln!("bare-responder: bad address: {error}");
            std::process::exit(2);
        }
    };
    let cpus = allowed_cpus();
    // The first core binds (port 0 picks a free port); the others then bind
    // the same port with SO_REUSEPORT (glommio sets it on every listener).
    let (bound_tx, bound_rx) = mpsc::channel::<Result<SocketAddr, String>>();
    let mut handles = Vec::new();
    let mut addr = addr;
    for (index, &cpu) in cpus.iter().enumerate() {
        let tx = bound_tx.clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("bare-{index}"))
            .spawn(move || async move {
                let listener = match TcpListener::bind(addr) {
                    Ok(listener) => listener,
                    Err(error) => {
                        let _ = tx.send(Err(error.to_string()));
                        return;
                    }
                };
                let _ = tx.send(listener.local_addr().map_err(|e| e.to_string()));
                drop(tx);
                loop {
                    match listener.accept().await {
                        Ok(stream) => {
                            glommio::spawn_local(serve(stream)).detach();
                        }
                        Err(error) => eprintln!("bare-responder: accept: {error}"),
                    }
                }
            });
        match handle {
            Ok(handle) => handles.push(handle),
            Err(error) => {
                eprintln!("bare-responder: executor on cpu {cpu}: {error}");
                std::process::exit(1);
            }
        }
        match bound_rx.recv() {
            Ok(Ok(bound)) => addr = bound,
            Ok(Err(error)) => {
                eprintln!("bare-responder: bind {addr}: {error}");
                std::process::exit(1);
            }
            Err(_) => {
                eprintln!("bare-responder: executor on cpu {cpu} died");
                std::process::exit(1);
            }
        }
    }
    println!("listening on {addr} ({} cores)", cpus.len());
    for handle in handles {
        let _ = handle.join();
    }
}

/// The CPUs this process may run on (taskset), as shardmcp picks its cores.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity
    // writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let ok =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) }
            == 0;
    let cpus: Vec<usize> = if ok {
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect()
    } else {
        Vec::new()
    };
    if cpus.is_empty() {
        (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
    } else {
        cpus
    }
}

/// One keep-alive connection: reads requests (no pipelining needed: the
/// generator waits for each answer), answers each from fixed bodies.
async fn serve(mut stream: TcpStream) {
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut out: Vec<u8> = Vec::with_capacity(512);
    let mut filled = 0usize;
    loop {
        // Parse what is buffered; read more when the request is incomplete.
        let (head_len, method_post, method_delete, content_length) = {
            let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(&buf[..filled]) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let length = request
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| {
                            std::str::from_utf8(h.value)
                                .ok()?
                                .trim()
                                .parse::<usize>()
                                .ok()
                        })
                        .unwrap_or(0);
                    (
                        Some(head_len),
                        request.method == Some("POST"),
                        request.method == Some("DELETE"),
                        length,
                    )
                }
                Ok(httparse::Status::Partial) => (None, false, false, 0),
                Err(_) => return,
            }
        };
        let complete = head_len.filter(|&h| filled >= h + content_length);
        let Some(head_len) = complete else {
            if filled == buf.len() {
                if buf.len() >= REQUEST_MAX {
                    return;
                }
                buf.resize((buf.len() * 2).clamp(4096, REQUEST_MAX), 0);
            }
            match stream.read(&mut buf[filled..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => filled += n,
            }
            continue;
        };
        let end = head_len + content_length;
        let body = &buf[head_len..end];
        out.clear();
        if method_post {
            match json_id(body) {
                None => {
                    out.extend_from_slice(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                }
                Some(id) => {
                    let init = find(body, b"\"method\":\"initialize\"").is_some();
                    let result = if init { INIT_RESULT } else { CALL_RESULT };
                    let length =
                        r#"{"jsonrpc":"2.0","id":,"result":}"#.len() + id.len() + result.len();
                    out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n");
                    if init {
                        out.extend_from_slice(b"mcp-session-id: ");
                        out.extend_from_slice(SESSION_ID.as_bytes());
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(format!("content-length: {length}\r\n\r\n").as_bytes());
                    out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
                    out.extend_from_slice(id);
                    out.extend_from_slice(br#","result":"#);
                    out.extend_from_slice(result.as_bytes());
                    out.push(b'}');
                }
            }
        } else if method_delete {
            out.extend_from_slice(b"HTTP/1.1 204 No Content\r\n\r\n");
        } else {
            out.extend_from_slice(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n");
        }
        if stream.write_all(&out).await.is_err() {
            return;
        }
        // Keep what follows this request (none unless the client pipelines).
        buf.copy_within(end..filled, 0);
        filled -= end;
    }
}

/// The raw bytes of the request's top-level `"id"` value (a number or a
/// string without escapes, as the generator sends), None for a notification.
fn json_id(body: &[u8]) -> Option<&[u8]> {
    let start = find(body, b"\"id\":")? + 5;
    let rest = &body[start..];
    let rest_trimmed = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    let value = &rest[rest_trimmed..];
    let len = if value.first() == Some(&b'"') {
        value[1..].iter().position(|&b| b == b'"')? + 2
    } else {
        value
            .iter()
            .position(|&b| b == b',' || b == b'}' || b.is_ascii_whitespace())?
    };
    Some(&value[..len])
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
