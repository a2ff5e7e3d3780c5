//! Streamable HTTP (the 2025-11-25 transport) at `/mcp`, and the legacy
//! HTTP+SSE transport (2024-11-05) at `/sse` + `/messages`.
//!
//! - `POST /mcp` carries JSON-RPC. Requests are answered with an SSE stream
//!   (the request's notifications and server requests, then its response)
//!   or with JSON when the client accepts only JSON; notifications and
//!   responses get 202. `Mcp-Session-Id` is issued at `initialize`.
//! - `GET /mcp` opens the session's standalone SSE stream, or resumes any of
//!   its streams after `Last-Event-ID`; the history lives in the owning
//!   shard's [`EventStore`]. Every stream starts with a priming event (an id
//!   and the `retry` hint), so a client can resume from the very start.
//! - `DELETE /mcp` ends the session.
//! - A request for a session another shard owns goes there through
//!   [`Forward`] (the mesh); its events come back to this connection.
//! - A 2026-07-28 request (its envelope in `_meta`, no session) is served
//!   here, on the accepting shard, with no mesh hop.
//! - Host and Origin are checked against `listen.allowed_hosts`
//!   (DNS-rebinding protection). Idle, slow and dead clients time out.
//! - With `[auth]` on, every MCP route needs a bearer token ([`crate::auth`]),
//!   the protected resource metadata is served, and a session answers only
//!   the principal that opened it (another gets 404, as for an unknown id).

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasherDefault;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;

use super::sweep::{SweptSocket, SweptSockets};
use crate::auth::{Caller, Guard, PrincipalId};
use crate::config::LimitsConfig;
use crate::protocol::jsonrpc::{decode, Id, Incoming, Message, Refusal};
use crate::protocol::version::{era_of, HANDSHAKE_VERSIONS};
use crate::registry::{IdHasher, SessionId};
use crate::session::{self, OutFrame, SessionHandle, SessionRecords, SessionRegistry};
use crate::sync::Event;
use crate::time::SharedClock;

use super::event_store::{EventStore, ResumeError, StoreLimits};
use super::sockets;
use super::tcp::TcpService;

/// Largest request head (request line and headers) when no shard
/// configured one (`protect.http_head_bytes_max`, same default).
const HEAD_BYTES_MAX: usize = 16 << 10;
const HEADERS_MAX: usize = 64;
/// Events queued between a session's streams and one connection.
const STREAM_FRAMES_MAX: usize = 256;
/// Room offered to each read; small, because idle connections hold it.
const READ_CHUNK_BYTES: usize = 4 << 10;

/// What an HTTP request asks of a session, on the shard that owns it.
pub enum Exchange {
    /// A POST body; `requests` are the ids of the requests in it (none: it
    /// holds only notifications and responses).
    Post {
        message: Result<Incoming, Refusal>,
        requests: Vec<Id>,
        sse: bool,
        /// The client accepts a plain JSON answer too.
        json: bool,
    },
    /// A GET: the standalone stream, or the stream `last_event_id` names.
    Get { last_event_id: Option<String> },
    /// A POST to `/messages` of a legacy HTTP+SSE session: the answer goes
    /// to the session's SSE stream.
    LegacyPost { body: Bytes },
}

/// The owning shard's answer to an [`Exchange`].
pub enum Answer {
    /// A JSON body (200), or nothing to say (202).
    Reply(Option<Bytes>),
    /// SSE events until the channel closes.
    Stream(LocalReceiver<Bytes>),
    /// Refused with this status and reason.
    Refused(&'static str, String),
    /// Refused by overload protection (429/503 with Retry-After).
    Shed(crate::protect::Shed),
    UnknownSession,
}

/// Reaches sessions owned by other shards (the runtime implements it over
/// the mesh).
pub trait Forward {
    /// Runs `exchange` on `session`'s owning shard. When the answer is a
    /// stream, its events arrive on `events` (the answer's own receiver is
    /// the other end of it).
    /// `caller` must be the session's principal (see [`HttpSessions::exchange`]).
    fn exchange(
        &self,
        session: SessionId,
        exchange: Exchange,
        caller: Caller,
        events: (LocalSender<Bytes>, LocalReceiver<Bytes>),
    ) -> Pin<Box<dyn Future<Output = Answer>>>;
    /// Ends `session` on its owning shard; false when it is unknown (or
    /// belongs to another principal than `caller`).
    fn delete(&self, session: SessionId, caller: Caller) -> Pin<Box<dyn Future<Output = bool>>>;
}

/// What this shard knows of one of its HTTP sessions.
struct Link {
    /// The principal that opened the session; only it may use the session.
    owner: Caller,
    last_seen: Cell<Duration>,
    /// Frames the routing task has taken from the session's outbox.
    routed: Cell<u64>,
    /// Requests waiting until `routed` reaches a count (see `flush`).
    waiters: RefCell<Vec<(u64, Event)>>,
}

impl Link {
    fn release_all(&self) {
        for (_, waiter) in self.waiters.borrow_mut().drain(..) {
            waiter.set();
        }
    }
}

type Links = HashMap<SessionId, Link, BuildHasherDefault<IdHasher>>;

/// The HTTP sessions this shard owns, their streams, and the way to other
/// shards' sessions.
pub struct HttpSessions {
    store: EventStore,
    links: RefCell<Links>,
    forward: RefCell<Option<Rc<dyn Forward>>>,
    /// Set once at shard start when `[auth]` is on.
    auth: OnceCell<Guard>,
    /// The shard's records of sessions whose actor died (set at shard
    /// start): a session that will be taken up again keeps its owner here.
    records: OnceCell<Rc<SessionRecords>>,
    /// Owners of sessions whose actor died and whose record waits to be
    /// taken up (auth on only): the new actor answers the same principal.
    /// Bounded by the records; pruned by `sweep`.
    orphans: RefCell<HashMap<SessionId, PrincipalId, BuildHasherDefault<IdHasher>>>,
    clock: SharedClock,
    session_idle: Duration,
    /// See `limits.http_json_answer_turns`.
    json_answer_turns: usize,
    /// Keep-alive connections between requests, for the idle sweeps.
    idle: Rc<SweptSockets>,
}

impl HttpSessions {
    pub fn new(limits: &LimitsConfig, clock: SharedClock) -> Self {
        HttpSessions {
            store: EventStore::new(
                StoreLimits {
                    events_per_stream: limits.event_store_events_per_stream,
                    bytes_max: limits.event_store_bytes_max,
                    retained_for: Duration::from_millis(limits.event_store_retention_ms),
                    retry_ms: limits.sse_retry_ms,
                    sink_capacity: STREAM_FRAMES_MAX,
                },
                clock.clone(),
            ),
            links: RefCell::new(Links::default()),
            forward: RefCell::new(None),
            auth: OnceCell::new(),
            records: OnceCell::new(),
            orphans: RefCell::new(HashMap::default()),
            clock,
            session_idle: Duration::from_millis(limits.http_session_idle_ms),
            json_answer_turns: limits.http_json_answer_turns,
            idle: Rc::new(SweptSockets::default()),
        }
    }

    pub fn set_forward(&self, forward: Rc<dyn Forward>) {
        *self.forward.borrow_mut() = Some(forward);
    }

    /// Turns authorization on for this shard's HTTP routes.
    pub fn set_auth(&self, guard: Guard) {
        let _ = self.auth.set(guard);
    }

    /// Where this shard keeps the state of sessions whose actor died.
    pub fn set_records(&self, records: Rc<SessionRecords>) {
        let _ = self.records.set(records);
    }

    /// The session's outbox closed. If its actor died and left a record
    /// (it will be taken up again), its owner is kept for the new actor, so
    /// another principal cannot claim the session meanwhile.
    fn outbox_closed(&self, id: &SessionId) {
        let owner = self.links.borrow().get(id).and_then(|link| link.owner);
        let resumable = self
            .records
            .get()
            .is_some_and(|records| records.contains(id));
        if let (Some(owner), true) = (owner, resumable) {
            self.orphans.borrow_mut().insert(*id, owner);
        }
        self.forget_session(id);
    }

    /// Whether `caller` may use (or end) session `id`: its owner only.
    pub fn admits(&self, id: &SessionId, caller: Caller) -> bool {
        match self.links.borrow().get(id) {
            Some(link) => link.owner == caller,
            None => match self.orphans.borrow().get(id) {
                Some(owner) => Some(*owner) == caller,
                None => caller.is_none(),
            },
        }
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// This shard's keep-alive connections, for the idle sweeps.
    pub fn idle(&self) -> &SweptSockets {
        &self.idle
    }

    /// HTTP sessions of this shard.
    pub fn len(&self) -> usize {
        self.links.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.links.borrow().is_empty()
    }

    /// Drops what this shard keeps for a session that ended.
    pub fn forget_session(&self, id: &SessionId) {
        let link = self.links.borrow_mut().remove(id);
        if let Some(link) = link {
            link.release_all();
        }
        self.store.forget(id);
    }

    /// Serves `exchange` for `handle`, a session this shard owns, when
    /// `caller` is its principal: the first exchange (initialize) binds it.
    pub async fn exchange(
        self: &Rc<Self>,
        handle: &SessionHandle,
        exchange: Exchange,
        caller: Caller,
    ) -> Answer {
        let id = handle.id();
        if !self.link(handle, caller) {
            return Answer::UnknownSession;
        }
        // Here, on the owning shard: one bucket per session, whichever
        // shard its requests arrive on.
        let limited = match &exchange {
            Exchange::Post { requests, .. } => !requests.is_empty(),
            Exchange::LegacyPost { .. } => true,
            Exchange::Get { .. } => false,
        };
        if limited {
            if let Some(protect) = crate::protect::current() {
                if let Err(shed) = protect.admit_session_message(id) {
                    return Answer::Shed(shed);
                }
            }
        }
        match exchange {
            Exchange::Post {
                message, requests, ..
            } if requests.is_empty() => match handle.request_decoded(message).await {
                Ok(_) => Answer::Reply(None),
                Err(_) => Answer::UnknownSession,
            },
            Exchange::Post {
                message,
                sse: false,
                ..
            } => match handle.request_decoded(message).await {
                Ok(reply) => Answer::Reply(Some(reply.unwrap_or_default())),
                Err(_) => Answer::UnknownSession,
            },
            Exchange::Post {
                message,
                requests,
                json,
                ..
            } => {
                // The turns count from when the request is in the actor's
                // mailbox: time queued behind a busy session's other
                // requests (one session shared by many connections) is no
                // sign of a slow handler, and nothing streams meanwhile.
                let queued = handle.submit_decoded(message).await;
                // Numbered before this task yields, so before the actor
                // takes the request: frames related to it open its stream
                // while its handler runs.
                let number = self.store.reserve_request_stream(id, &requests);
                let owned = handle.clone();
                let mut reply = Box::pin(async move {
                    let reply = match queued {
                        Ok(answer) => answer.await,
                        Err(error) => Err(error),
                    };
                    (owned, reply)
                });
                let turns = if json { self.json_answer_turns } else { 0 };
                if let Some((handle, reply)) = within_turns(&mut reply, turns).await {
                    self.flush(&handle).await;
                    let plain = match &reply {
                        Ok(Some(_)) | Err(_) => self.store.take_unused(id, number),
                        Ok(None) => false,
                    };
                    return match reply {
                        Ok(Some(reply)) if plain => Answer::Reply(Some(reply)),
                        Err(_) if plain => Answer::UnknownSession,
                        reply => {
                            let events = self.store.attach_request_stream(id, number);
                            self.store.finish(id, number, reply.ok().flatten());
                            Answer::Stream(events)
                        }
                    };
                }
                let events = self.store.attach_request_stream(id, number);
                let sessions = self.clone();
                // The request outlives the connection: a client that drops
                // it resumes the stream and still gets the answer.
                glommio::spawn_local(async move {
                    let (handle, reply) = reply.await;
                    sessions.flush(&handle).await;
                    sessions.store.finish(id, number, reply.ok().flatten());
                })
                .detach();
                Answer::Stream(events)
            }
            Exchange::Get {
                last_event_id: None,
            } => Answer::Stream(self.store.open_standalone(id, true)),
            Exchange::Get {
                last_event_id: Some(last),
            } => match self.store.resume(id, &last) {
                Ok(events) => Answer::Stream(events),
                Err(error @ ResumeError::Malformed(_)) => {
                    Answer::Refused("400 Bad Request", error.to_string())
                }
                Err(error) => Answer::Refused("404 Not Found", error.to_string()),
            },
            Exchange::LegacyPost { body } => {
                let sessions = self.clone();
                let handle = handle.clone();
                glommio::spawn_local(async move {
                    let reply = handle.request(body).await.ok().flatten();
                    sessions.flush(&handle).await;
                    if let Some(reply) = reply {
                        sessions.store.route(id, None, reply);
                    }
                })
                .detach();
                Answer::Reply(None)
            }
        }
    }

    /// Closes sessions no client has touched for `http_session_idle_ms`
    /// (none is watching a stream of theirs), and expires stream history.
    pub fn sweep(&self, registry: &SessionRegistry) {
        let now = self.clock.now();
        let idle: Vec<SessionId> = self
            .links
            .borrow()
            .iter()
            .filter(|(id, link)| {
                now.saturating_sub(link.last_seen.get()) >= self.session_idle
                    && !self.store.has_sink(id)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            tracing::debug!(session = %id, "HTTP session idle too long; closed");
            session::close(registry, &id);
            self.forget_session(&id);
        }
        if let Some(records) = self.records.get() {
            self.orphans
                .borrow_mut()
                .retain(|id, _| records.contains(id));
        }
        self.store.expire();
    }

    /// Notes that the client used the session, and starts routing its
    /// outbox to its streams the first time. False when the session's
    /// outbox is gone (another transport owns it), or when `caller` is not
    /// the principal the session was opened by.
    fn link(self: &Rc<Self>, handle: &SessionHandle, caller: Caller) -> bool {
        let id = handle.id();
        let now = self.clock.now();
        if let Some(link) = self.links.borrow().get(&id) {
            if link.owner != caller {
                return false;
            }
            link.last_seen.set(now);
            return true;
        }
        let orphaned = self.orphans.borrow().get(&id).copied();
        if orphaned.is_some_and(|owner| Some(owner) != caller) {
            return false;
        }
        let Some(outbox) = handle.take_outbox() else {
            return false;
        };
        self.orphans.borrow_mut().remove(&id);
        self.links.borrow_mut().insert(
            id,
            Link {
                owner: caller,
                last_seen: Cell::new(now),
                routed: Cell::new(0),
                waiters: RefCell::new(Vec::new()),
            },
        );
        glommio::spawn_local(route_frames(Rc::downgrade(self), id, outbox)).detach();
        true
    }

    fn route(&self, id: SessionId, frame: OutFrame) {
        if frame.is_close_stream() {
            // A handler asked to close its request's stream (SEP-1699).
            if let Some(related) = &frame.related {
                self.store.detach_request(id, related);
            }
            return;
        }
        self.store.route(id, frame.related.as_ref(), frame.frame);
    }

    /// Waits until the routing task has taken every frame the session has
    /// queued so far, so a reply routed next comes after the notifications
    /// its handler sent. (The outbox has one reader, the routing task: it
    /// routes each frame as it takes it, in order.)
    async fn flush(&self, handle: &SessionHandle) {
        let queued = handle.outbox_len() as u64;
        if queued == 0 {
            return;
        }
        let waiter = {
            let links = self.links.borrow();
            let Some(link) = links.get(&handle.id()) else {
                return;
            };
            let waiter = Event::new();
            link.waiters
                .borrow_mut()
                .push((link.routed.get() + queued, waiter.clone()));
            waiter
        };
        waiter.wait().await;
    }

    /// Counts a routed frame and releases the requests that waited for it.
    fn routed_one(&self, id: &SessionId) {
        if let Some(link) = self.links.borrow().get(id) {
            let routed = link.routed.get() + 1;
            link.routed.set(routed);
            link.waiters.borrow_mut().retain(|(target, waiter)| {
                if *target <= routed {
                    waiter.set();
                    false
                } else {
                    true
                }
            });
        }
    }
}

async fn route_frames(
    sessions: Weak<HttpSessions>,
    id: SessionId,
    outbox: LocalReceiver<Box<OutFrame>>,
) {
    while let Some(frame) = outbox.recv().await {
        let Some(sessions) = sessions.upgrade() else {
            return;
        };
        sessions.route(id, *frame);
        sessions.routed_one(&id);
    }
    // The session ended (its outbox closed): so do its streams.
    if let Some(sessions) = sessions.upgrade() {
        sessions.outbox_closed(&id);
    }
}

struct Request {
    method: String,
    path: String,
    headers: Headers,
    body: Bytes,
    keep_alive: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    fn accepts_sse(&self) -> bool {
        self.header("accept")
            .is_some_and(|accept| accept.contains("text/event-stream"))
    }

    /// Whether a plain JSON answer is acceptable (no Accept header means
    /// anything is).
    fn accepts_json(&self) -> bool {
        self.header("accept").is_none_or(|accept| {
            accept.contains("application/json")
                || accept.contains("application/*")
                || accept.contains("*/*")
        })
    }

    fn query(&self, key: &str) -> Option<&str> {
        let query = self.path.split_once('?')?.1;
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(name, _)| *name == key)
            .map(|(_, value)| value)
    }
}

/// Why reading a request stopped.
enum ReadError {
    /// Answer with this status, then close.
    Status(&'static str),
    /// The client went away, or stayed silent: close quietly.
    Closed,
}

/// Serves one HTTP/1.1 connection (keep-alive; requests one at a time).
pub async fn serve_connection(
    mut stream: TcpStream,
    service: Rc<TcpService>,
    sessions: Rc<HttpSessions>,
) {
    let tracked = sockets::track(stream.as_raw_fd());
    let limits = &service.limits;
    // A client that stops reading is cut off instead of holding the shard.
    let _ = stream.set_write_timeout(Some(Duration::from_millis(limits.http_write_timeout_ms)));
    let mut buffer = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let peer = stream.peer_addr().ok().map(|addr| addr.ip());
    let protect = crate::protect::current();
    let idle = sessions.idle.register(stream.as_raw_fd());
    loop {
        let request = match read_request(&mut stream, &mut buffer, &service, &idle).await {
            Ok(request) => request,
            Err(ReadError::Closed) => break,
            Err(ReadError::Status(status)) => {
                let _ = respond(&mut stream, status, &[], status.as_bytes(), false).await;
                break;
            }
        };
        let keep_alive = request.keep_alive && !service.drain.is_set();
        // Held while the request is served.
        let _in_flight = match admit(protect.as_ref(), peer, &request) {
            Ok(in_flight) => in_flight,
            Err(shed) => {
                if respond_shed(&mut stream, &shed, keep_alive).await.is_err() || !keep_alive {
                    break;
                }
                continue;
            }
        };
        if handle(
            &mut stream,
            &mut buffer,
            request,
            &service,
            &sessions,
            keep_alive,
        )
        .await
        .is_err()
            || !keep_alive
        {
            break;
        }
    }
    // Out of the idle sweeps before the descriptor can be reused.
    drop(idle);
    drop(tracked);
    let _ = stream.close().await;
}

/// Overload protection for one request: its address's rate, and for a
/// POST (work, not a stream) a place among the shard's requests in flight.
fn admit(
    protect: Option<&Rc<crate::protect::Protect>>,
    peer: Option<std::net::IpAddr>,
    request: &Request,
) -> Result<Option<crate::protect::InFlight>, crate::protect::Shed> {
    let Some(protect) = protect else {
        return Ok(None);
    };
    if let Some(peer) = peer {
        protect.admit_address(peer)?;
    }
    if request.method == "POST" {
        return protect.enter_request().map(Some);
    }
    Ok(None)
}

/// A refusal: its status, `Retry-After`, and the JSON-RPC error as body.
async fn respond_shed(
    stream: &mut TcpStream,
    shed: &crate::protect::Shed,
    keep_alive: bool,
) -> std::io::Result<()> {
    let retry_after = shed.retry_after_secs().to_string();
    respond(
        stream,
        shed.reason.status(),
        &[
            ("Retry-After", retry_after.as_str()),
            ("Content-Type", "application/json"),
        ],
        &shed.http_body(None),
        keep_alive,
    )
    .await
}

/// Reads one request: the connection may idle up to `http_idle_timeout_ms`
/// (and a quarter more: see [`super::idle`]) before it starts, and must then
/// deliver the whole request within `http_read_timeout_ms` (slow clients do
/// not hold a connection open).
async fn read_request(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    service: &TcpService,
    idle: &SweptSocket,
) -> Result<Request, ReadError> {
    let limits = &service.limits;
    if buffer.is_empty() {
        // Between requests the shard's idle sweeps watch the connection
        // (`http_idle_timeout_ms`, and the drain): they end its stream.
        if service.drain.is_set() {
            return Err(ReadError::Closed);
        }
        idle.start();
        let read = read_more(stream, buffer).await;
        idle.stop();
        if read.is_err() {
            return Err(ReadError::Closed);
        }
    }
    let head_max =
        crate::protect::current().map_or(HEAD_BYTES_MAX, |protect| protect.http_head_bytes_max());
    // Usually the whole request came in one read: no deadline to arm.
    if let Some(request) = take_request(buffer, limits.message_bytes_max, head_max)? {
        return Ok(request);
    }
    let deadline = service
        .clock
        .sleep(Duration::from_millis(limits.http_read_timeout_ms));
    future::or(
        parse_request(stream, buffer, limits.message_bytes_max, head_max),
        async {
            deadline.await;
            Err(ReadError::Status("408 Request Timeout"))
        },
    )
    .await
}

async fn parse_request(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    body_max: usize,
    head_max: usize,
) -> Result<Request, ReadError> {
    loop {
        if let Some(request) = take_request(buffer, body_max, head_max)? {
            return Ok(request);
        }
        if read_more(stream, buffer).await.is_err() {
            return Err(ReadError::Closed);
        }
    }
}

/// Takes one whole request (head and body) off the front of `buffer`;
/// `None` (and `buffer` untouched) until all of it is there.
fn take_request(
    buffer: &mut BytesMut,
    body_max: usize,
    head_max: usize,
) -> Result<Option<Request>, ReadError> {
    let Some(head) = parse_head_within(buffer, body_max, head_max).map_err(ReadError::Status)?
    else {
        return Ok(None);
    };
    if buffer.len() < head.head_len + head.content_length {
        return Ok(None);
    }
    let _ = buffer.split_to(head.head_len);
    let body = buffer.split_to(head.content_length).freeze();
    Ok(Some(Request {
        method: head.method,
        path: head.path,
        headers: head.headers,
        body,
        keep_alive: head.keep_alive,
    }))
}

/// A request's headers, in the order they came: every name and value in
/// one string, so a request costs two allocations for them, not two each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    text: String,
    /// For each header, where its name ends and where its value ends in
    /// `text` (each starts where the one before ended).
    ends: Vec<(u32, u32)>,
}

impl Headers {
    pub fn with_capacity(headers: usize, bytes: usize) -> Self {
        Headers {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(headers),
        }
    }

    /// Adds a header. Heads are bounded far below 4 GiB (`HEAD_BYTES_MAX`);
    /// a header past that would be dropped rather than wrap the offsets.
    pub fn push(&mut self, name: &str, value: &str) {
        let Ok(name_end) = u32::try_from(self.text.len() + name.len()) else {
            return;
        };
        let Ok(value_end) = u32::try_from(name_end as usize + value.len()) else {
            return;
        };
        self.text.push_str(name);
        self.text.push_str(value);
        self.ends.push((name_end, value_end));
    }

    /// Every (name, value), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut start = 0usize;
        self.ends.iter().map(move |&(name_end, value_end)| {
            let (name_end, value_end) = (name_end as usize, value_end as usize);
            let pair = (&self.text[start..name_end], &self.text[name_end..value_end]);
            start = value_end;
            pair
        })
    }

    /// The first value of header `name` (any case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for Headers {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(pairs: I) -> Self {
        let mut headers = Headers::default();
        for (name, value) in pairs {
            headers.push(name, value);
        }
        headers
    }
}

/// A request head: the request line and the headers, without the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub headers: Headers,
    /// The body's length (`Content-Length`; 0 without one).
    pub content_length: usize,
    pub keep_alive: bool,
    /// Bytes of `buf` the head took; the body follows.
    pub head_len: usize,
}

/// Parses the request head at the start of `buf` (no I/O): `Ok(None)` when
/// more bytes are needed, `Err` with the status to answer (then close) when
/// the head is malformed, too large, chunked, or announces a body over
/// `body_max`.
pub fn parse_head(buf: &[u8], body_max: usize) -> Result<Option<Head>, &'static str> {
    parse_head_within(buf, body_max, HEAD_BYTES_MAX)
}

/// [`parse_head`] with a head of at most `head_max` bytes (past it: 431).
pub fn parse_head_within(
    buf: &[u8],
    body_max: usize,
    head_max: usize,
) -> Result<Option<Head>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        // Complete in one read or not, a head past the bound is refused.
        Ok(httparse::Status::Complete(head_len)) if head_len > head_max => {
            return Err("431 Request Header Fields Too Large")
        }
        Ok(httparse::Status::Complete(head_len)) => head_len,
        Ok(httparse::Status::Partial) if buf.len() > head_max => {
            return Err("431 Request Header Fields Too Large")
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("400 Bad Request"),
    };
    let method = parsed.method.unwrap_or("").to_string();
    let path = parsed.path.unwrap_or("").to_string();
    let version = parsed.version.unwrap_or(1);
    let mut headers = Headers::with_capacity(parsed.headers.len(), head_len);
    for header in parsed.headers.iter() {
        headers.push(header.name, &String::from_utf8_lossy(header.value));
    }
    let header = |name: &str| headers.get(name).map(str::trim);
    if header("transfer-encoding").is_some() {
        // Bodies are JSON-RPC messages of known size.
        return Err("411 Length Required");
    }
    let content_length = header("content-length")
        .map(|v| v.parse::<usize>())
        .transpose()
        .map_err(|_| "400 Bad Request")?
        .unwrap_or(0);
    if content_length > body_max {
        return Err("413 Payload Too Large");
    }
    let keep_alive = match header("connection") {
        Some(value) if value.eq_ignore_ascii_case("close") => false,
        Some(value) if value.eq_ignore_ascii_case("keep-alive") => true,
        _ => version == 1,
    };
    Ok(Some(Head {
        method,
        path,
        headers,
        content_length,
        keep_alive,
        head_len,
    }))
}

async fn read_more(stream: &mut TcpStream, buffer: &mut BytesMut) -> std::io::Result<()> {
    let mut chunk = [0u8; READ_CHUNK_BYTES];
    let read = stream.read(&mut chunk).await?;
    if read == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buffer.extend_from_slice(&chunk[..read]);
    Ok(())
}

/// Host and Origin must name an allowed host (DNS-rebinding protection).
fn trusted(request: &Request, allowed: &[String]) -> bool {
    let allowed_host = |authority: &str| {
        let host = authority
            .trim()
            .trim_start_matches("http://")
            .trim_start_matches("https://");
        let host = match host.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(""),
            None => host.split([':', '/']).next().unwrap_or(""),
        };
        allowed.iter().any(|name| name.eq_ignore_ascii_case(host))
    };
    request.header("host").is_some_and(allowed_host)
        && request.header("origin").is_none_or(allowed_host)
}

async fn handle(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    request: Request,
    service: &Rc<TcpService>,
    sessions: &Rc<HttpSessions>,
    keep_alive: bool,
) -> std::io::Result<()> {
    if !trusted(&request, &service.allowed_hosts) {
        return respond(
            stream,
            "403 Forbidden",
            &[],
            b"host or origin not allowed",
            keep_alive,
        )
        .await;
    }
    let route = request.path.split('?').next().unwrap_or("");
    let caller = match authorize(stream, &request, route, sessions, keep_alive).await {
        Gate::Pass(caller) => caller,
        Gate::Answered(outcome) => return outcome,
    };
    if route == "/ws" {
        // The connection is the WebSocket's until it ends; the error stops
        // the HTTP loop from reading on it.
        let early = buffer.split().to_vec();
        super::ws::serve(stream, early, &request.method, &request.headers, service).await;
        return Err(std::io::ErrorKind::ConnectionAborted.into());
    }
    match (route, request.method.as_str()) {
        ("/mcp", _) => {
            mcp(
                stream, buffer, request, service, sessions, caller, keep_alive,
            )
            .await
        }
        ("/sse", "GET") => legacy_open(stream, buffer, service, sessions, caller, keep_alive).await,
        ("/messages", "POST") => {
            legacy_post(
                stream, buffer, request, service, sessions, caller, keep_alive,
            )
            .await
        }
        ("/sse", _) | ("/messages", _) => {
            let allow = if route == "/sse" { "GET" } else { "POST" };
            respond(
                stream,
                "405 Method Not Allowed",
                &[("Allow", allow)],
                b"",
                keep_alive,
            )
            .await
        }
        _ => respond(stream, "404 Not Found", &[], b"", keep_alive).await,
    }
}

/// What the authorization gate decided about a request.
enum Gate {
    /// Go on, on behalf of this principal (`None`: auth is off, or the
    /// route reaches no MCP).
    Pass(Caller),
    /// Answered here: a refusal, or the metadata document.
    Answered(std::io::Result<()>),
}

/// With `[auth]` on: serves the protected resource metadata (public), and
/// lets a request to an MCP route through only with a good bearer token.
async fn authorize(
    stream: &mut TcpStream,
    request: &Request,
    route: &str,
    sessions: &HttpSessions,
    keep_alive: bool,
) -> Gate {
    let Some(guard) = sessions.auth.get() else {
        return Gate::Pass(None);
    };
    if let Some(document) = guard.metadata(route) {
        let outcome = if request.method == "GET" {
            let headers = [("Content-Type", "application/json")];
            respond(stream, "200 OK", &headers, document.as_bytes(), keep_alive).await
        } else {
            let headers = [("Allow", "GET")];
            respond(stream, "405 Method Not Allowed", &headers, b"", keep_alive).await
        };
        return Gate::Answered(outcome);
    }
    if !matches!(route, "/mcp" | "/sse" | "/messages" | "/ws") {
        return Gate::Pass(None);
    }
    let query = request.path.split_once('?').map(|(_, query)| query);
    match guard.authorize(request.header("authorization"), query) {
        Ok(principal) => Gate::Pass(Some(principal)),
        Err(refusal) => {
            crate::observe::record_auth_refusal(refusal.error());
            let challenge = guard.policy().challenge(refusal);
            let body = format!("{}: {}", refusal.error(), refusal.description());
            let headers = [
                ("WWW-Authenticate", challenge.as_str()),
                ("Content-Type", "text/plain"),
            ];
            Gate::Answered(
                respond(
                    stream,
                    refusal.status(),
                    &headers,
                    body.as_bytes(),
                    keep_alive,
                )
                .await,
            )
        }
    }
}

/// The Streamable HTTP endpoint.
async fn mcp(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    request: Request,
    service: &Rc<TcpService>,
    sessions: &Rc<HttpSessions>,
    caller: Caller,
    keep_alive: bool,
) -> std::io::Result<()> {
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
    let session_id = session_header
        .as_deref()
        .map(|text| SessionId::parse(text).ok());
    let exchange = match request.method.as_str() {
        "POST" => None,
        "GET" => {
            if !request.accepts_sse() {
                return respond(
                    stream,
                    "406 Not Acceptable",
                    &[],
                    b"GET /mcp opens an SSE stream: Accept must include text/event-stream",
                    keep_alive,
                )
                .await;
            }
            Some(Exchange::Get {
                last_event_id: request.header("last-event-id").map(str::to_string),
            })
        }
        "DELETE" => {
            let Some(Some(id)) = session_id else {
                return missing_session(stream, keep_alive).await;
            };
            let deleted = match foreign_forward(sessions, service, &id) {
                Some(forward) => forward.delete(id, caller).await,
                None if service.registry.contains(&id) && sessions.admits(&id, caller) => {
                    session::close(&service.registry, &id);
                    sessions.forget_session(&id);
                    true
                }
                None => false,
            };
            let status = if deleted { "200 OK" } else { "404 Not Found" };
            return respond(stream, status, &[], b"", keep_alive).await;
        }
        _ => {
            return respond(
                stream,
                "405 Method Not Allowed",
                &[("Allow", "GET, POST, DELETE")],
                b"",
                keep_alive,
            )
            .await
        }
    };
    if let Some(exchange) = exchange {
        let Some(Some(id)) = session_id else {
            return missing_session(stream, keep_alive).await;
        };
        let answer = run_exchange(sessions, service, id, exchange, caller).await;
        let text = id.encode();
        let session = std::str::from_utf8(&text).unwrap_or_default();
        return write_answer(stream, buffer, answer, session, service, keep_alive).await;
    }
    if let Some(content_type) = request.header("content-type") {
        if !content_type
            .to_ascii_lowercase()
            .contains("application/json")
        {
            return respond(
                stream,
                "415 Unsupported Media Type",
                &[],
                b"POST /mcp takes Content-Type: application/json",
                keep_alive,
            )
            .await;
        }
    }
    // What the body holds decides the answer: requests get one, the rest 202.
    // The session gets the decoded message: the body is parsed once.
    let decoded = decode(&request.body, service.limits.message_bytes_max);
    let mut requests = Vec::new();
    let mut single = None;
    match &decoded {
        Ok(Incoming::Single(Message::Request { id, method, params })) => {
            requests.push(id.clone());
            single = Some((id, method.as_str(), params.as_ref()));
        }
        Ok(Incoming::Batch(entries)) => {
            for entry in entries.iter().flatten() {
                if let Message::Request { id, .. } = entry {
                    requests.push(id.clone());
                }
            }
        }
        Ok(Incoming::Single(_)) => {}
        // Bad JSON or a bad envelope: the session answers it with the error.
        Err(refusal) => requests.push(refusal.id.clone().unwrap_or(Id::Int(0))),
    }
    // A 2026-07-28 request needs no session: served here, with no mesh hop.
    if session_header.is_none() {
        if let Some((id, method, params)) = single {
            if crate::protocol::stateless::is_enveloped(params) && method != "initialize" {
                return stateless(
                    stream,
                    buffer,
                    &request,
                    service,
                    id.clone(),
                    method,
                    params,
                    keep_alive,
                )
                .await;
            }
        }
    }
    let initialize = single.is_some_and(|(_, method, _)| method == "initialize");
    let sse = request.accepts_sse();
    let json = request.accepts_json();
    let id = match session_id {
        Some(Some(id)) => id,
        Some(None) => {
            return respond(stream, "404 Not Found", &[], b"unknown session", keep_alive).await
        }
        None if initialize => {
            match session::open(&service.registry, &service.pools, &service.sessions) {
                Ok(handle) => handle.id(),
                Err(error) => return no_session_opened(stream, &error, keep_alive).await,
            }
        }
        None => return missing_session(stream, keep_alive).await,
    };
    let exchange = Exchange::Post {
        message: decoded,
        requests,
        sse,
        json,
    };
    let answer = run_exchange(sessions, service, id, exchange, caller).await;
    let text = id.encode();
    let session = std::str::from_utf8(&text).unwrap_or_default();
    write_answer(stream, buffer, answer, session, service, keep_alive).await
}

/// Runs an exchange where the session lives: here, or over the mesh.
async fn run_exchange(
    sessions: &Rc<HttpSessions>,
    service: &TcpService,
    id: SessionId,
    exchange: Exchange,
    caller: Caller,
) -> Answer {
    if let Some(forward) = foreign_forward(sessions, service, &id) {
        let events = local_channel::new_bounded(STREAM_FRAMES_MAX);
        return forward.exchange(id, exchange, caller, events).await;
    }
    // A session whose actor died with its pool is taken up again here.
    match session::find_or_resume(&service.registry, &service.pools, &service.sessions, &id).await {
        Some(handle) => sessions.exchange(&handle, exchange, caller).await,
        None => Answer::UnknownSession,
    }
}

fn foreign_forward(
    sessions: &HttpSessions,
    service: &TcpService,
    id: &SessionId,
) -> Option<Rc<dyn Forward>> {
    if id.shard() == service.registry.shard() {
        return None;
    }
    sessions.forward.borrow().clone()
}

async fn write_answer(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    answer: Answer,
    session: &str,
    service: &TcpService,
    keep_alive: bool,
) -> std::io::Result<()> {
    match answer {
        Answer::Reply(Some(body)) => {
            let headers = [
                ("Content-Type", "application/json"),
                ("Mcp-Session-Id", session),
            ];
            respond(stream, "200 OK", &headers, &body, keep_alive).await
        }
        Answer::Reply(None) => {
            respond(
                stream,
                "202 Accepted",
                &[("Mcp-Session-Id", session)],
                b"",
                keep_alive,
            )
            .await
        }
        Answer::Stream(events) => {
            let head = sse_head(session, keep_alive);
            write_events(stream, buffer, head, &events, service).await
        }
        Answer::Refused(status, reason) => {
            respond(stream, status, &[], reason.as_bytes(), keep_alive).await
        }
        Answer::Shed(shed) => respond_shed(stream, &shed, keep_alive).await,
        Answer::UnknownSession => {
            respond(stream, "404 Not Found", &[], b"unknown session", keep_alive).await
        }
    }
}

/// `GET /sse` (2024-11-05): a new session whose every message to the client
/// travels on this stream, after an `endpoint` event naming where to POST.
/// The session ends with the stream.
async fn legacy_open(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    service: &Rc<TcpService>,
    sessions: &Rc<HttpSessions>,
    caller: Caller,
    keep_alive: bool,
) -> std::io::Result<()> {
    let handle = match session::open(&service.registry, &service.pools, &service.sessions) {
        Ok(handle) => handle,
        Err(error) => return no_session_opened(stream, &error, keep_alive).await,
    };
    let id = handle.id();
    if !sessions.link(&handle, caller) {
        session::close(&service.registry, &id);
        return respond(stream, "500 Internal Server Error", &[], b"", false).await;
    }
    sessions.store.set_legacy(id);
    let events = sessions.store.open_standalone(id, false);
    let endpoint = format!("event: endpoint\ndata: /messages?sessionId={id}\n\n");
    // The stream is the session's life: when the session dies (its pool
    // killed, say), the stream ends and the client opens a new one.
    let ended = handle.ended();
    drop(handle);
    let outcome = async {
        // Head and endpoint go out before the race with `ended`, as before
        // writes were batched: the client learns where to POST first.
        let mut head = sse_head("", keep_alive);
        push_chunk(&mut head, endpoint.as_bytes());
        stream.write_all(&head).await?;
        future::or(
            write_events(stream, buffer, Vec::new(), &events, service),
            async {
                ended.await;
                // Unterminated on purpose: the client sees the stream break.
                Err(std::io::ErrorKind::ConnectionAborted.into())
            },
        )
        .await
    }
    .await;
    session::close(&service.registry, &id);
    sessions.forget_session(&id);
    outcome
}

/// `POST /messages?sessionId=…` (2024-11-05): accepted with 202; the answer
/// goes to the session's SSE stream.
async fn legacy_post(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    request: Request,
    service: &Rc<TcpService>,
    sessions: &Rc<HttpSessions>,
    caller: Caller,
    keep_alive: bool,
) -> std::io::Result<()> {
    let Some(text) = request.query("sessionId") else {
        return respond(
            stream,
            "400 Bad Request",
            &[],
            b"missing sessionId query parameter",
            keep_alive,
        )
        .await;
    };
    let Ok(id) = SessionId::parse(text) else {
        return respond(stream, "404 Not Found", &[], b"unknown session", keep_alive).await;
    };
    let answer = run_exchange(
        sessions,
        service,
        id,
        Exchange::LegacyPost { body: request.body },
        caller,
    )
    .await;
    match answer {
        Answer::Reply(_) => respond(stream, "202 Accepted", &[], b"Accepted", keep_alive).await,
        other => write_answer(stream, buffer, other, "", service, keep_alive).await,
    }
}

/// Serves one 2026-07-28 request: the revision's header checks, then a
/// session-less run on this shard. Errors get the statuses the revision
/// asks for (400 for -32020..-32022 and a bad envelope, 404 for -32601);
/// a request whose handler streams notifications is answered with SSE.
#[allow(clippy::too_many_arguments)]
async fn stateless(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    request: &Request,
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
    let mut reason = mismatch.map(str::to_string);
    // A tool's `x-mcp-header` arguments travel as `Mcp-Param-*` headers too.
    if let (None, "tools/call", Some(name)) = (&reason, method, name) {
        if let Some(tool) = service.sessions.server.current().tool(name) {
            let mirrored = crate::protocol::param_headers::header_params(&tool.input_schema);
            let arguments = params.and_then(|p| p.get("arguments"));
            if let Err(problem) =
                crate::protocol::param_headers::check(&mirrored, arguments, request.headers.iter())
            {
                reason = Some(problem);
            }
        }
    }
    if let Some(reason) = reason {
        let body = encode_error(Some(&id), &RpcError::new(HEADER_MISMATCH, reason));
        let headers = [("Content-Type", "application/json")];
        return respond(stream, "400 Bad Request", &headers, &body, keep_alive).await;
    }
    let session = service.sessions.new_session();
    let Some(outbox) = session.take_outbox() else {
        return respond(stream, "500 Internal Server Error", &[], b"", keep_alive).await;
    };
    let reply = session.handle_frame(&request.body);
    futures_lite::pin!(reply);
    let pipelined_max = service.limits.message_bytes_max + HEAD_BYTES_MAX;
    // Until the first notification, the answer may still be plain JSON. In
    // this revision a client that goes away cancels its request.
    let first = future::or(
        async { Some(Err(outbox.recv().await)) },
        future::or(async { Some(Ok((&mut reply).await)) }, async {
            until_gone(stream, buffer, pipelined_max).await;
            None
        }),
    )
    .await;
    let Some(first) = first else {
        session.close();
        return Err(std::io::ErrorKind::ConnectionAborted.into());
    };
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
        Err(frame) if request.accepts_sse() => {
            stream.write_all(&sse_head("", keep_alive)).await?;
            let mut frame = frame;
            // No session, so nothing to resume: events carry no ids.
            let outcome = async {
                loop {
                    match frame {
                        Some(out) if !out.frame.is_empty() => {
                            write_chunk(stream, &message_event(&out.frame)).await?
                        }
                        Some(_) => {}
                        None => break,
                    }
                    let next = future::or(
                        async { Some(Err(outbox.recv().await)) },
                        future::or(async { Some(Ok((&mut reply).await)) }, async {
                            until_gone(stream, buffer, pipelined_max).await;
                            None
                        }),
                    )
                    .await;
                    frame = match next {
                        None => return Err(std::io::ErrorKind::ConnectionAborted.into()),
                        Some(Err(next)) => next,
                        Some(Ok(done)) => {
                            // The handler is done: what it queued, then its answer.
                            while let Some(Some(out)) = future::poll_once(outbox.recv()).await {
                                if !out.frame.is_empty() {
                                    write_chunk(stream, &message_event(&out.frame)).await?;
                                }
                            }
                            if let Some(done) = done {
                                write_chunk(stream, &message_event(&done)).await?;
                            }
                            break;
                        }
                    };
                }
                stream.write_all(b"0\r\n\r\n").await
            }
            .await;
            session.close();
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

/// Writes `head` (the response head, perhaps a first event) and SSE events
/// until the stream ends, with a comment line whenever it has been quiet for
/// `sse_keepalive_ms` (so proxies keep it and a dead client is found out),
/// then ends the chunked body. What is ready together leaves in one write:
/// every write is a trip through the TCP stack and a wakeup of the client, and
/// a request's answer (head, priming event, message, end) took four.
async fn write_events(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    head: Vec<u8>,
    events: &LocalReceiver<Bytes>,
    service: &TcpService,
) -> std::io::Result<()> {
    let keepalive = Duration::from_millis(service.limits.sse_keepalive_ms);
    let pipelined_max = service.limits.message_bytes_max + HEAD_BYTES_MAX;
    let mut out = head;
    let mut first = true;
    loop {
        if take_ready(events, &mut out).await {
            out.extend_from_slice(b"0\r\n\r\n");
            return stream.write_all(&out).await;
        }
        if first {
            first = false;
            // A quick handler answers within a few turns of the task queue
            // (the session actor, then the request's task): let them run, so
            // head, priming event, answer and end leave in one write.
            for _ in 0..FIRST_WRITE_YIELDS {
                future::yield_now().await;
                if take_ready(events, &mut out).await {
                    out.extend_from_slice(b"0\r\n\r\n");
                    return stream.write_all(&out).await;
                }
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        let quiet = service.clock.sleep(keepalive);
        let drained = service.drain.wait();
        let next = future::or(async { Wake::Event(events.recv().await) }, async {
            quiet.await;
            Wake::Quiet
        });
        let next = future::or(next, async {
            drained.await;
            Wake::Event(None)
        });
        // A client that hangs up frees its connection at once.
        let next = future::or(next, async {
            until_gone(stream, buffer, pipelined_max).await;
            Wake::Gone
        })
        .await;
        match next {
            Wake::Event(Some(event)) => push_chunk(&mut out, &event),
            Wake::Event(None) => break,
            Wake::Quiet => push_chunk(&mut out, b": keepalive\n\n"),
            Wake::Gone => return Err(std::io::ErrorKind::ConnectionAborted.into()),
        }
    }
    out.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&out).await
}

/// Polls `future` now and after each of up to `turns` turns of the task
/// queue; its output if it was ready by then. With 0 turns it is not polled
/// at all.
async fn within_turns<F: Future + Unpin>(future: &mut F, turns: usize) -> Option<F::Output> {
    if turns == 0 {
        return None;
    }
    if let Some(output) = future::poll_once(&mut *future).await {
        return Some(output);
    }
    for _ in 0..turns {
        future::yield_now().await;
        if let Some(output) = future::poll_once(&mut *future).await {
            return Some(output);
        }
    }
    None
}

/// Turns of the task queue a new SSE answer waits for its events before its
/// first write (see `write_events`).
const FIRST_WRITE_YIELDS: usize = 3;

/// Moves the events already waiting in `events` into `out` as chunks,
/// without waiting; true when the stream has ended (its sender is gone).
async fn take_ready(events: &LocalReceiver<Bytes>, out: &mut Vec<u8>) -> bool {
    while let Some(next) = future::poll_once(events.recv()).await {
        match next {
            Some(event) => push_chunk(out, &event),
            None => return true,
        }
    }
    false
}

/// What woke a stream writer.
enum Wake {
    Event(Option<Bytes>),
    Quiet,
    Gone,
}

/// Completes when the client has hung up. Bytes it sends meanwhile (its next
/// request, pipelined) are kept in `buffer`, up to `max`; then it is no
/// longer watched.
async fn until_gone(stream: &mut TcpStream, buffer: &mut BytesMut, max: usize) {
    if buffer.len() < max && read_more(stream, buffer).await.is_err() {
        return;
    }
    future::pending::<()>().await;
}

fn message_event(frame: &[u8]) -> Vec<u8> {
    let mut event = Vec::with_capacity(frame.len() + 24);
    event.extend_from_slice(b"event: message\ndata: ");
    event.extend_from_slice(frame);
    event.extend_from_slice(b"\n\n");
    event
}

/// A new session could not be opened (the shard is full, its pool is down).
async fn no_session_opened(
    stream: &mut TcpStream,
    error: &session::SessionError,
    keep_alive: bool,
) -> std::io::Result<()> {
    if let session::SessionError::Shed(shed) = error {
        return respond_shed(stream, shed, keep_alive).await;
    }
    let body = error.to_string();
    respond(
        stream,
        "503 Service Unavailable",
        &[],
        body.as_bytes(),
        keep_alive,
    )
    .await
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

fn sse_head(session: &str, keep_alive: bool) -> Vec<u8> {
    // Room for a small answer's events, which usually follow in the same write.
    let mut head = Vec::with_capacity(256 + 512);
    head.extend_from_slice(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n",
    );
    if !session.is_empty() {
        push_header(&mut head, "Mcp-Session-Id", session);
    }
    head.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    head.extend_from_slice(if keep_alive {
        b"Connection: keep-alive\r\n\r\n"
    } else {
        b"Connection: close\r\n\r\n"
    });
    head
}

async fn write_chunk(stream: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    let mut chunk = Vec::with_capacity(data.len() + 16);
    push_chunk(&mut chunk, data);
    stream.write_all(&chunk).await
}

/// Appends `data` to `out` as one chunk of a chunked body.
fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    push_number(out, data.len(), 16);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in base 10 or 16 (lower case) without the formatting
/// machinery: every answer writes one or two of these.
fn push_number(out: &mut Vec<u8>, mut n: usize, radix: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 20];
    let mut start = text.len();
    loop {
        start -= 1;
        text[start] = DIGITS[n % radix];
        n /= radix;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&text[start..]);
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
) -> std::io::Result<()> {
    let headers_len: usize = headers
        .iter()
        .map(|(name, value)| name.len() + value.len() + 4)
        .sum();
    let mut out = Vec::with_capacity(80 + status.len() + headers_len + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    push_number(&mut out, body.len(), 10);
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        push_header(&mut out, name, value);
    }
    out.extend_from_slice(if keep_alive {
        b"Connection: keep-alive\r\n\r\n"
    } else {
        b"Connection: close\r\n\r\n"
    });
    out.extend_from_slice(body);
    stream.write_all(&out).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "POST".into(),
            path: "/messages?x=1&sessionId=abc".into(),
            headers: headers.iter().copied().collect(),
            body: Bytes::new(),
            keep_alive: true,
        }
    }

    #[test]
    fn headers_keep_their_order_and_are_found_in_any_case() {
        let head = b"POST /mcp HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nAccept: json\r\naccept: sse\r\nContent-Length: 0\r\n\r\n";
        let parsed = parse_head(head, 1 << 20).unwrap().expect("a whole head");
        let pairs: Vec<(&str, &str)> = parsed.headers.iter().collect();
        assert_eq!(
            pairs,
            [
                ("Host", "a"),
                ("X-Empty", ""),
                ("Accept", "json"),
                ("accept", "sse"),
                ("Content-Length", "0")
            ]
        );
        assert_eq!(parsed.headers.get("ACCEPT"), Some("json"), "the first one");
        assert_eq!(parsed.headers.get("x-empty"), Some(""));
        assert_eq!(parsed.headers.get("missing"), None);
        assert_eq!(parsed.headers.len(), 5);
        // Bytes that are not UTF-8 are replaced, not refused.
        let odd = b"GET / HTTP/1.1\r\nX-Odd: a\xffb\r\n\r\n";
        let parsed = parse_head(odd, 1 << 20).unwrap().expect("a whole head");
        assert_eq!(parsed.headers.get("x-odd"), Some("a\u{fffd}b"));
    }

    #[test]
    fn numbers_and_chunks_are_written_without_the_formatter() {
        let mut out = Vec::new();
        for (n, radix) in [
            (0, 10),
            (7, 10),
            (1234, 10),
            (usize::MAX, 10),
            (0, 16),
            (255, 16),
        ] {
            push_number(&mut out, n, radix);
            out.push(b' ');
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("0 7 1234 {} 0 ff ", usize::MAX)
        );
        let mut chunk = Vec::new();
        push_chunk(&mut chunk, &[b'x'; 26]);
        assert_eq!(chunk, [b"1a\r\n".as_slice(), &[b'x'; 26], b"\r\n"].concat());
    }

    #[test]
    fn a_plain_json_answer_needs_a_client_that_accepts_json() {
        let with_accept = |accept: &str| request(&[("Accept", accept)]);
        assert!(with_accept("application/json, text/event-stream").accepts_json());
        assert!(with_accept("*/*").accepts_json());
        assert!(request(&[]).accepts_json(), "no Accept: anything goes");
        assert!(!with_accept("text/event-stream").accepts_json());
        assert!(with_accept("text/event-stream").accepts_sse());
    }

    #[test]
    fn host_and_origin_must_be_allowed() {
        let allowed = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        assert!(trusted(&request(&[("Host", "127.0.0.1:8080")]), &allowed));
        assert!(trusted(&request(&[("Host", "[::1]:80")]), &allowed));
        assert!(trusted(
            &request(&[("host", "localhost"), ("Origin", "http://localhost:3000")]),
            &allowed
        ));
        assert!(!trusted(&request(&[]), &allowed), "Host is required");
        assert!(!trusted(
            &request(&[("Host", "evil.example.com")]),
            &allowed
        ));
        assert!(!trusted(
            &request(&[("Host", "localhost"), ("Origin", "http://evil.example.com")]),
            &allowed
        ));
        assert!(!trusted(
            &request(&[("Host", "localhost.evil.example.com")]),
            &allowed
        ));
        let wider = vec!["mcp.internal".to_string()];
        assert!(trusted(&request(&[("Host", "mcp.internal:8080")]), &wider));
    }

    #[test]
    fn query_parameters_are_found_by_name() {
        let r = request(&[]);
        assert_eq!(r.query("sessionId"), Some("abc"));
        assert_eq!(r.query("x"), Some("1"));
        assert_eq!(r.query("y"), None);
    }

    #[test]
    fn a_head_parses_without_io_and_says_what_to_answer() {
        let bytes = b"POST /mcp HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}";
        let head = parse_head(bytes, 16).unwrap().expect("complete");
        assert_eq!((head.method.as_str(), head.path.as_str()), ("POST", "/mcp"));
        assert_eq!((head.content_length, head.keep_alive), (2, true));
        assert_eq!(head.head_len, bytes.len() - 2);
        assert_eq!(parse_head(&bytes[..20], 16), Ok(None), "more bytes needed");
        assert_eq!(parse_head(bytes, 1), Err("413 Payload Too Large"));
        let http10 = b"GET / HTTP/1.0\r\n\r\n";
        assert!(!parse_head(http10, 16).unwrap().unwrap().keep_alive);
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_head(chunked, 16), Err("411 Length Required"));
        let bad_length = b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n";
        assert_eq!(parse_head(bad_length, 16), Err("400 Bad Request"));
        assert_eq!(
            parse_head(b"\x00 / HTTP/1.1\r\n", 16),
            Err("400 Bad Request")
        );
        let whole = [
            b"GET / HTTP/1.1\r\nX: ".as_slice(),
            &[b'a'; 2_000],
            b"\r\n\r\n",
        ]
        .concat();
        assert_eq!(
            parse_head_within(&whole, 16, 1_024),
            Err("431 Request Header Fields Too Large"),
            "complete, but past the bound"
        );
        assert!(parse_head_within(&whole, 16, 4_096).unwrap().is_some());
        let endless = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; HEAD_BYTES_MAX]].concat();
        assert_eq!(
            parse_head(&endless, 16),
            Err("431 Request Header Fields Too Large")
        );
    }

    #[test]
    fn events_ready_together_are_framed_into_one_buffer() {
        glommio::LocalExecutorBuilder::default()
            .make()
            .expect("executor")
            .run(async {
                let (sink, events) = local_channel::new_bounded::<Bytes>(4);
                let mut out = sse_head("s1", true);
                let head_len = out.len();
                assert!(!take_ready(&events, &mut out).await, "open, nothing yet");
                assert_eq!(out.len(), head_len);
                sink.try_send(Bytes::from_static(b"id: 1-0\ndata: \n\n"))
                    .unwrap();
                sink.try_send(Bytes::from_static(b"data: {}\n\n")).unwrap();
                assert!(!take_ready(&events, &mut out).await, "still open");
                assert_eq!(
                    &out[head_len..],
                    b"10\r\nid: 1-0\ndata: \n\n\r\na\r\ndata: {}\n\n\r\n"
                );
                drop(sink);
                assert!(
                    take_ready(&events, &mut out).await,
                    "the sender is gone: ended"
                );
                let head = String::from_utf8(out[..head_len].to_vec()).unwrap();
                assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
                assert!(head.contains("Mcp-Session-Id: s1\r\n"));
                assert!(head.ends_with("Connection: keep-alive\r\n\r\n"));
            });
    }
}
