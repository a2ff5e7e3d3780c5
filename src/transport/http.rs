//! Streamable HTTP (first slice): `POST /mcp` carries JSON-RPC and answers a
//! request with an SSE stream (the request's notifications and server
//! requests, then its response) or with JSON when the client accepts only
//! JSON; notifications and responses get 202; `Mcp-Session-Id` is issued at
//! `initialize`; `DELETE` ends a session; `GET` is answered 405 (no
//! standalone stream yet). Host and Origin are checked against the localhost
//! forms (DNS-rebinding protection). A request for a session owned by
//! another shard goes there through [`Forward`] (the mesh), and its frames
//! come back on this connection. Resumable streams, the GET stream and the
//! 2026-07-28 header checks come with the transports issue.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;

use crate::protocol::jsonrpc::{decode, Id, Incoming, Message};
use crate::protocol::version::{era_of, HANDSHAKE_VERSIONS};
use crate::registry::SessionId;
use crate::session::{self, OutFrame, SessionHandle};

use super::sockets;
use super::tcp::TcpService;

/// Largest request head (request line and headers).
const HEAD_BYTES_MAX: usize = 16 << 10;
const HEADERS_MAX: usize = 64;
/// Frames waiting for one request's SSE stream.
const STREAM_FRAMES_MAX: usize = 256;

/// Routes a session's outbox frames to the POST stream of the request they
/// belong to; frames for no open stream are dropped (there is no GET stream).
#[derive(Default)]
struct Router {
    streams: RefCell<HashMap<Id, Rc<LocalSender<Bytes>>>>,
}

/// Reaches sessions owned by other shards (the runtime implements it over
/// the mesh).
pub trait Forward {
    /// Hands `body` to `session` on its owning shard. The frames of the
    /// request go to `frames` as they come; the future gives the reply
    /// (`None` for a notification), or `None` when the session is unknown.
    fn forward(
        &self,
        session: SessionId,
        body: Bytes,
        frames: LocalSender<Bytes>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Option<Bytes>>>>>;
    /// Ends `session` on its owning shard; false when it is unknown.
    fn delete(
        &self,
        session: SessionId,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool>>>;
}

/// The routers of this shard's HTTP sessions, and the way to other shards'.
#[derive(Default)]
pub struct HttpSessions {
    routers: RefCell<HashMap<String, Rc<Router>>>,
    forward: RefCell<Option<Rc<dyn Forward>>>,
}

impl HttpSessions {
    pub fn set_forward(&self, forward: Rc<dyn Forward>) {
        *self.forward.borrow_mut() = Some(forward);
    }

    /// Starts streaming request `id` of a local session: its frames go to
    /// `frames` until `end_stream` (used for requests forwarded here).
    pub fn open_stream(&self, handle: &SessionHandle, id: Id, frames: LocalSender<Bytes>) {
        self.router(handle)
            .streams
            .borrow_mut()
            .insert(id, Rc::new(frames));
    }

    pub fn end_stream(&self, handle: &SessionHandle, id: &Id) {
        self.router(handle).streams.borrow_mut().remove(id);
    }

    pub fn forget_session(&self, id: &SessionId) {
        self.forget(id);
    }

    fn router(&self, handle: &SessionHandle) -> Rc<Router> {
        let key = handle.id().to_string();
        if let Some(router) = self.routers.borrow().get(&key) {
            return router.clone();
        }
        let router = Rc::new(Router::default());
        if let Some(outbox) = handle.take_outbox() {
            let routing = router.clone();
            glommio::spawn_local(route_frames(outbox, routing)).detach();
        }
        self.routers.borrow_mut().insert(key, router.clone());
        router
    }

    fn forget(&self, id: &SessionId) {
        self.routers.borrow_mut().remove(&id.to_string());
    }
}

async fn route_frames(outbox: LocalReceiver<OutFrame>, router: Rc<Router>) {
    while let Some(frame) = outbox.recv().await {
        let Some(related) = frame.related else {
            continue;
        };
        let stream = router.streams.borrow().get(&related).cloned();
        if let Some(stream) = stream {
            let _ = stream.send(frame.frame).await;
        }
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Bytes,
    keep_alive: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Serves one HTTP/1.1 connection (keep-alive, one request at a time).
pub async fn serve_connection(
    mut stream: TcpStream,
    service: Rc<TcpService>,
    sessions: Rc<HttpSessions>,
) {
    let tracked = sockets::track(stream.as_raw_fd());
    let mut buffer = BytesMut::with_capacity(4 << 10);
    loop {
        let request =
            match read_request(&mut stream, &mut buffer, service.limits.message_bytes_max).await {
                Ok(Some(request)) => request,
                Ok(None) => break,
                Err(status) => {
                    let _ = respond(&mut stream, status, &[], b"", false).await;
                    break;
                }
            };
        let keep_alive = request.keep_alive && !service.drain.is_set();
        if handle(&mut stream, request, &service, &sessions, keep_alive)
            .await
            .is_err()
            || !keep_alive
        {
            break;
        }
    }
    drop(tracked);
    let _ = stream.close().await;
}

async fn read_request(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    body_max: usize,
) -> Result<Option<Request>, &'static str> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(buffer) {
            Ok(httparse::Status::Complete(head_len)) => {
                let method = parsed.method.unwrap_or("").to_string();
                let path = parsed.path.unwrap_or("").to_string();
                let version = parsed.version.unwrap_or(1);
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let length = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.trim().parse::<usize>().map_err(|_| "400 Bad Request"))
                    .transpose()?
                    .unwrap_or(0);
                if length > body_max {
                    return Err("413 Payload Too Large");
                }
                let connection = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("connection"))
                    .map(|(_, v)| v.to_ascii_lowercase());
                let keep_alive = match connection.as_deref() {
                    Some("close") => false,
                    Some("keep-alive") => true,
                    _ => version == 1,
                };
                let _ = buffer.split_to(head_len);
                while buffer.len() < length {
                    read_more(stream, buffer)
                        .await
                        .map_err(|_| "400 Bad Request")?;
                }
                let body = buffer.split_to(length).freeze();
                return Ok(Some(Request {
                    method,
                    path,
                    headers,
                    body,
                    keep_alive,
                }));
            }
            Ok(httparse::Status::Partial) => {
                if buffer.len() > HEAD_BYTES_MAX {
                    return Err("431 Request Header Fields Too Large");
                }
                match read_more(stream, buffer).await {
                    Ok(()) => {}
                    Err(_) if buffer.is_empty() => return Ok(None),
                    Err(_) => return Err("400 Bad Request"),
                }
            }
            Err(_) => return Err("400 Bad Request"),
        }
    }
}

async fn read_more(stream: &mut TcpStream, buffer: &mut BytesMut) -> std::io::Result<()> {
    let mut chunk = [0u8; 4 << 10];
    let read = stream.read(&mut chunk).await?;
    if read == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buffer.extend_from_slice(&chunk[..read]);
    Ok(())
}

/// Host and Origin must name this machine (DNS-rebinding protection).
fn trusted(request: &Request) -> bool {
    fn local(authority: &str) -> bool {
        let host = authority
            .trim()
            .trim_start_matches("http://")
            .trim_start_matches("https://");
        let host = match host.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(""),
            None => host.split(':').next().unwrap_or(""),
        };
        matches!(host, "localhost" | "127.0.0.1" | "::1")
    }
    request.header("host").is_some_and(local) && request.header("origin").is_none_or(local)
}

async fn handle(
    stream: &mut TcpStream,
    request: Request,
    service: &Rc<TcpService>,
    sessions: &Rc<HttpSessions>,
    keep_alive: bool,
) -> std::io::Result<()> {
    if !trusted(&request) {
        return respond(
            stream,
            "403 Forbidden",
            &[],
            b"host or origin not allowed",
            keep_alive,
        )
        .await;
    }
    if request.path.split('?').next() == Some("/ws") {
        // The connection is the WebSocket's until it ends; the error stops
        // the HTTP loop from reading on it.
        super::ws::serve(stream, &request.method, &request.headers, service).await;
        return Err(std::io::ErrorKind::ConnectionAborted.into());
    }
    if request.path.split('?').next() != Some("/mcp") {
        return respond(stream, "404 Not Found", &[], b"", keep_alive).await;
    }
    if let Some(version) = request.header("mcp-protocol-version") {
        if era_of(version).is_none() {
            let body = format!(
                "unsupported MCP-Protocol-Version {version}; served: {}",
                HANDSHAKE_VERSIONS.join(", ")
            );
            return respond(stream, "400 Bad Request", &[], body.as_bytes(), keep_alive).await;
        }
    }
    let session_header = request.header("mcp-session-id").map(str::to_string);
    match request.method.as_str() {
        "POST" => {}
        "DELETE" => {
            let Some(id) = session_header.and_then(|text| SessionId::parse(&text).ok()) else {
                return missing_session(stream, keep_alive).await;
            };
            let forward = sessions.forward.borrow().clone();
            if let Some(forward) = forward.filter(|_| id.shard() != service.registry.shard()) {
                let status = if forward.delete(id).await {
                    "200 OK"
                } else {
                    "404 Not Found"
                };
                return respond(stream, status, &[], b"", keep_alive).await;
            }
            if service.registry.contains(&id) {
                session::close(&service.registry, &id);
                sessions.forget(&id);
                return respond(stream, "200 OK", &[], b"", keep_alive).await;
            }
            return respond(stream, "404 Not Found", &[], b"", keep_alive).await;
        }
        _ => {
            return respond(
                stream,
                "405 Method Not Allowed",
                &[("Allow", "POST, DELETE")],
                b"",
                keep_alive,
            )
            .await
        }
    }
    // What the body holds decides the answer: requests get one, the rest 202.
    let (first_request, enveloped) = match decode(&request.body, service.limits.message_bytes_max) {
        Ok(Incoming::Single(Message::Request { id, method, params })) => {
            let enveloped =
                crate::protocol::stateless::is_enveloped(params.as_ref()) && method != "initialize";
            (Some((id, method, params)), enveloped)
        }
        _ => (None, false),
    };
    // A 2026-07-28 request needs no session: served here, with no mesh hop.
    if session_header.is_none() && enveloped {
        if let Some((id, method, params)) = first_request {
            return stateless(
                stream,
                request,
                service,
                id,
                &method,
                params.as_ref(),
                keep_alive,
            )
            .await;
        }
    }
    let first_request = first_request.map(|(id, method, _)| (id, method));
    // A session owned by another shard: its requests go there over the mesh.
    let foreign = session_header
        .as_deref()
        .and_then(|text| SessionId::parse(text).ok())
        .filter(|id| id.shard() != service.registry.shard());
    let forward = sessions.forward.borrow().clone();
    if let (Some(id), Some(forward)) = (foreign, forward) {
        return forwarded(
            stream,
            request,
            forward,
            id,
            first_request.map(|(id, _)| id),
            keep_alive,
        )
        .await;
    }
    let handle = match session_header {
        Some(text) => match SessionId::parse(&text)
            .ok()
            .and_then(|id| service.registry.get(&id))
        {
            Some(handle) => handle,
            None => {
                return respond(stream, "404 Not Found", &[], b"unknown session", keep_alive).await
            }
        },
        None if first_request
            .as_ref()
            .is_some_and(|(_, method)| method == "initialize") =>
        {
            match session::open(&service.registry, &service.pools, &service.sessions) {
                Ok(handle) => handle,
                Err(error) => {
                    let body = error.to_string();
                    return respond(
                        stream,
                        "503 Service Unavailable",
                        &[],
                        body.as_bytes(),
                        keep_alive,
                    )
                    .await;
                }
            }
        }
        None => return missing_session(stream, keep_alive).await,
    };
    let session_id = handle.id().to_string();
    let router = sessions.router(&handle);
    let Some((id, _)) = first_request else {
        let _ = handle.request(request.body).await;
        return respond(
            stream,
            "202 Accepted",
            &[("Mcp-Session-Id", &session_id)],
            b"",
            keep_alive,
        )
        .await;
    };
    let wants_sse = request
        .header("accept")
        .is_some_and(|accept| accept.contains("text/event-stream"));
    if !wants_sse {
        let reply = handle
            .request(request.body)
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        let headers = [
            ("Content-Type", "application/json"),
            ("Mcp-Session-Id", session_id.as_str()),
        ];
        return respond(stream, "200 OK", &headers, &reply, keep_alive).await;
    }
    let (frames_tx, frames) = local_channel::new_bounded(STREAM_FRAMES_MAX);
    router
        .streams
        .borrow_mut()
        .insert(id.clone(), Rc::new(frames_tx));
    let reply = async { handle.request(request.body).await.ok() };
    let streamed = stream_until_reply(stream, &frames, reply, &session_id, keep_alive).await;
    router.streams.borrow_mut().remove(&id);
    streamed
}

/// Serves a request for a session another shard owns.
async fn forwarded(
    stream: &mut TcpStream,
    request: Request,
    forward: Rc<dyn Forward>,
    session: SessionId,
    request_id: Option<Id>,
    keep_alive: bool,
) -> std::io::Result<()> {
    let session_text = session.to_string();
    let wants_sse = request
        .header("accept")
        .is_some_and(|accept| accept.contains("text/event-stream"));
    let (frames_tx, frames) = local_channel::new_bounded(STREAM_FRAMES_MAX);
    let reply = forward.forward(session, request.body, frames_tx);
    if request_id.is_none() || !wants_sse {
        let Some(reply) = reply.await else {
            return respond(stream, "404 Not Found", &[], b"unknown session", keep_alive).await;
        };
        return match reply {
            Some(reply) if request_id.is_some() => {
                let headers = [
                    ("Content-Type", "application/json"),
                    ("Mcp-Session-Id", session_text.as_str()),
                ];
                respond(stream, "200 OK", &headers, &reply, keep_alive).await
            }
            _ => {
                respond(
                    stream,
                    "202 Accepted",
                    &[("Mcp-Session-Id", &session_text)],
                    b"",
                    keep_alive,
                )
                .await
            }
        };
    }
    stream_until_reply(stream, &frames, reply, &session_text, keep_alive).await
}

/// Streams a request's frames as SSE events until its reply comes, then the
/// frames still queued, then the reply. The head goes out with the first
/// event, so a `None` reply (unknown session) can still be answered 404.
async fn stream_until_reply(
    stream: &mut TcpStream,
    frames: &LocalReceiver<Bytes>,
    reply: impl std::future::Future<Output = Option<Option<Bytes>>>,
    session: &str,
    keep_alive: bool,
) -> std::io::Result<()> {
    futures_lite::pin!(reply);
    let first = future::or(async { Err(frames.recv().await) }, async {
        Ok((&mut reply).await)
    })
    .await;
    match first {
        Ok(None) => respond(stream, "404 Not Found", &[], b"unknown session", keep_alive).await,
        Ok(Some(done)) => {
            write_sse_head(stream, session, keep_alive).await?;
            stream_frames(stream, frames, async { done }).await
        }
        Err(frame) => {
            write_sse_head(stream, session, keep_alive).await?;
            if let Some(frame) = frame {
                write_event(stream, &frame).await?;
            }
            stream_frames(stream, frames, async { reply.await.flatten() }).await
        }
    }
}

/// Serves one 2026-07-28 request: the revision's header checks, then a
/// session-less run on this shard. Errors get the statuses the revision
/// asks for (400 for -32020..-32022 and a bad envelope, 404 for -32601);
/// a request whose handler streams notifications is answered with SSE.
#[allow(clippy::too_many_arguments)]
async fn stateless(
    stream: &mut TcpStream,
    request: Request,
    service: &Rc<TcpService>,
    id: Id,
    method: &str,
    params: Option<&serde_json::Value>,
    keep_alive: bool,
) -> std::io::Result<()> {
    use crate::protocol::jsonrpc::{encode_error, RpcError, HEADER_MISMATCH};
    use crate::protocol::stateless::META_PROTOCOL_VERSION;
    let version = params
        .and_then(|p| p.get("_meta"))
        .and_then(|meta| meta.get(META_PROTOCOL_VERSION))
        .and_then(serde_json::Value::as_str);
    let name = match method {
        "tools/call" | "prompts/get" => params.and_then(|p| p.get("name")),
        "resources/read" => params.and_then(|p| p.get("uri")),
        _ => None,
    }
    .and_then(serde_json::Value::as_str);
    let mismatch = if request.header("mcp-protocol-version") != version {
        Some("MCP-Protocol-Version must be present and equal params._meta's protocol version")
    } else if request.header("mcp-method") != Some(method) {
        Some("Mcp-Method must be present and equal the body's method")
    } else if name.is_some() && request.header("mcp-name") != name {
        Some("Mcp-Name must be present and equal the body's name or uri")
    } else {
        None
    };
    if let Some(reason) = mismatch {
        let body = encode_error(Some(&id), &RpcError::new(HEADER_MISMATCH, reason));
        let headers = [("Content-Type", "application/json")];
        return respond(stream, "400 Bad Request", &headers, &body, keep_alive).await;
    }
    let env = &service.sessions;
    let session = crate::session::McpSession::new(
        env.server.clone(),
        env.limits,
        env.clock.clone(),
        env.state_key.clone(),
    );
    session.set_update_hook(env.resource_updates.clone());
    let Some(outbox) = session.take_outbox() else {
        return respond(stream, "500 Internal Server Error", &[], b"", keep_alive).await;
    };
    let wants_sse = request
        .header("accept")
        .is_some_and(|accept| accept.contains("text/event-stream"));
    let reply = session.handle_frame(&request.body);
    futures_lite::pin!(reply);
    // Until the first notification, the answer may still be plain JSON.
    let first = future::or(async { Err(outbox.recv().await) }, async {
        Ok((&mut reply).await)
    })
    .await;
    match first {
        Ok(reply) => {
            let reply = reply.unwrap_or_default();
            let status = match serde_json::from_slice::<serde_json::Value>(&reply)
                .ok()
                .and_then(|value| {
                    value
                        .pointer("/error/code")
                        .and_then(serde_json::Value::as_i64)
                }) {
                Some(-32601) => "404 Not Found",
                Some(-32602 | -32020 | -32021 | -32022 | -32600 | -32700) => "400 Bad Request",
                _ => "200 OK",
            };
            respond(
                stream,
                status,
                &[("Content-Type", "application/json")],
                &reply,
                keep_alive,
            )
            .await
        }
        Err(frame) if wants_sse => {
            write_sse_head(stream, "", keep_alive).await?;
            if let Some(frame) = frame {
                write_event(stream, &frame.frame).await?;
            }
            let (frames_tx, frames) = local_channel::new_bounded(STREAM_FRAMES_MAX);
            let pump = glommio::spawn_local(async move {
                while let Some(frame) = outbox.recv().await {
                    if frames_tx.send(frame.frame).await.is_err() {
                        break;
                    }
                }
            });
            let outcome = stream_frames(stream, &frames, reply).await;
            session.close();
            drop(pump);
            outcome
        }
        // A client that takes only JSON gets the result; notifications are dropped.
        Err(_) => {
            let reply = reply.await.unwrap_or_default();
            respond(
                stream,
                "200 OK",
                &[("Content-Type", "application/json")],
                &reply,
                keep_alive,
            )
            .await
        }
    }
}

/// After the head: events until the reply, the queued rest, the reply, the end.
async fn stream_frames(
    stream: &mut TcpStream,
    frames: &LocalReceiver<Bytes>,
    reply: impl std::future::Future<Output = Option<Bytes>>,
) -> std::io::Result<()> {
    futures_lite::pin!(reply);
    let reply = loop {
        let next = future::or(async { Err(frames.recv().await) }, async {
            Ok((&mut reply).await)
        })
        .await;
        match next {
            Err(Some(frame)) => write_event(stream, &frame).await?,
            // The sender is gone: no frame can come; only the reply is left.
            Err(None) => break (&mut reply).await,
            Ok(reply) => break reply,
        }
    };
    while let Ok(Some(frame)) = future::or(async { Ok(frames.recv().await) }, async {
        futures_lite::future::yield_now().await;
        Err(())
    })
    .await
    {
        write_event(stream, &frame).await?;
    }
    if let Some(reply) = reply {
        write_event(stream, &reply).await?;
    }
    stream.write_all(b"0\r\n\r\n").await
}

async fn missing_session(stream: &mut TcpStream, keep_alive: bool) -> std::io::Result<()> {
    respond(
        stream,
        "400 Bad Request",
        &[],
        b"missing Mcp-Session-Id",
        keep_alive,
    )
    .await
}

async fn write_sse_head(
    stream: &mut TcpStream,
    session: &str,
    keep_alive: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n{}Transfer-Encoding: chunked\r\nConnection: {}\r\n\r\n",
        if session.is_empty() { String::new() } else { format!("Mcp-Session-Id: {session}\r\n") },
        if keep_alive { "keep-alive" } else { "close" }
    );
    stream.write_all(head.as_bytes()).await
}

async fn write_event(stream: &mut TcpStream, frame: &[u8]) -> std::io::Result<()> {
    let mut event = Vec::with_capacity(frame.len() + 32);
    event.extend_from_slice(b"event: message\ndata: ");
    event.extend_from_slice(frame);
    event.extend_from_slice(b"\n\n");
    let mut chunk = format!("{:x}\r\n", event.len()).into_bytes();
    chunk.extend_from_slice(&event);
    chunk.extend_from_slice(b"\r\n");
    stream.write_all(&chunk).await
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
) -> std::io::Result<()> {
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await
}
