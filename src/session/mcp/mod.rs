//! One MCP session, in either era: frames in, frames out, no I/O.
//!
//! - here: the lifecycle (initialize, version negotiation, initialized),
//!   decoding and dispatch, the in-flight table, cancellation, timeouts, and
//!   the outbox every frame for the client goes through;
//! - `features`: tools, resources, prompts, completion, logging level;
//! - `client`: requests to the client (sampling, elicitation, roots) and the
//!   handler's view of the session;
//! - `stateless_era`: 2026-07-28 requests, discover, listen, and
//!   `InputRequiredResult` rounds.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_lite::future;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use serde_json::{json, Map, Value};

use crate::protocol::jsonrpc::{
    decode, encode_batch, encode_error, encode_request, encode_result, params_object, Id, Incoming,
    Message, RpcError, INVALID_PARAMS, MISSING_REQUIRED_CLIENT_CAPABILITY, RESOURCE_NOT_FOUND,
    SERVER_ERROR, UNSUPPORTED_PROTOCOL_VERSION, URL_ELICITATION_REQUIRED,
};
use crate::protocol::logging::LogLevel;
use crate::protocol::request_state::{self, RoundState, StateKey};
use crate::protocol::stateless::{self, Envelope};
use crate::protocol::version::{allows_batches, negotiate, Era};
use crate::server::{
    Lists, LiveServer, Peer, Prompt, Resource, ResourceError, ResourceTemplate, Server, Subscriber,
    TaskSupport, Tool, ToolCall, ToolError,
};

use super::tasks::{TaskStore, TaskTable};
use crate::observe::{self, Outcome};
use crate::sync::{catch_panic, oneshot, Event, OneshotSender};
use crate::time::SharedClock;

/// A session's own bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Largest frame decoded; larger ones are refused with -32600.
    pub message_bytes_max: usize,
    /// Entries per page of a list result.
    pub page_size: usize,
    /// Requests of this session running at once; more are refused.
    pub in_flight_max: usize,
    /// Resource URIs one session may subscribe to.
    pub subscriptions_max: usize,
    /// Frames (notifications, and replies sent through the outbox) waiting for
    /// the transport; handlers that notify wait when it is full.
    pub outbox_capacity: usize,
    /// How long one request may run before it is cancelled and answered
    /// with an error.
    pub request_timeout: Duration,
    /// How long a request to the client (sampling, elicitation, roots) waits
    /// for its answer.
    pub client_request_timeout: Duration,
    /// Requests to the client waiting for answers at once; more are refused.
    pub client_requests_max: usize,
    /// Rounds of `InputRequiredResult` one stateless call may go through.
    pub input_rounds_max: u32,
    /// How long a sealed `requestState` stays valid.
    pub request_state_ttl: Duration,
    /// Tasks one session may hold (running or finished, until their ttl).
    pub tasks_max: usize,
    /// Longest lifetime a task may ask for.
    pub task_ttl_max: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            message_bytes_max: 4 << 20,
            page_size: 100,
            in_flight_max: 64,
            subscriptions_max: 1_024,
            outbox_capacity: 32,
            request_timeout: Duration::from_secs(30),
            client_request_timeout: Duration::from_secs(60),
            client_requests_max: 16,
            input_rounds_max: 8,
            request_state_ttl: Duration::from_secs(600),
            tasks_max: 64,
            task_ttl_max: Duration::from_secs(3_600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Only `initialize` and `ping` are served.
    AwaitingInitialize,
    /// `initialize` answered; requests are served.
    Initialized,
    /// `notifications/initialized` received too.
    Ready,
}

#[derive(Clone)]
struct Negotiated {
    version: &'static str,
    client_info: Value,
    client_capabilities: Value,
    /// The lists the `initialize` result advertised: served (even if the
    /// server no longer holds any) and announced when they change.
    lists: Lists,
    /// Whether it advertised tasks.
    tasks: bool,
}

/// URL-mode elicitations one session remembers as pending (sent and not yet
/// completed); past it the oldest is forgotten, and completing it is then
/// refused as unknown.
pub const URL_ELICITATIONS_PENDING_MAX: usize = 64;

/// What one `subscriptions/listen` follows.
pub(super) struct Listen {
    pub(super) lists: Lists,
    pub(super) uris: HashSet<String>,
}

pub struct McpSession {
    /// The shard's server; each request takes the current snapshot once.
    live: Rc<LiveServer>,
    /// This session's key among the live server's subscribers.
    subscription: Cell<Option<usize>>,
    limits: SessionLimits,
    phase: Cell<Phase>,
    negotiated: RefCell<Option<Negotiated>>,
    /// Requests running now, with the signal that cancels each.
    in_flight: RefCell<HashMap<Id, Event>>,
    /// Set when the session ends: every running request stops.
    closed: Event,
    /// Resource URIs this session subscribed to.
    subscriptions: RefCell<HashSet<String>>,
    /// Least severe log level the client wants (`logging/setLevel`).
    log_level: Cell<LogLevel>,
    clock: SharedClock,
    /// Frames are boxed: the bounded channel allocates every slot when the
    /// session opens, and an idle session should not pay ~64 bytes per slot.
    outbox: LocalSender<Box<OutFrame>>,
    outbox_receiver: RefCell<Option<LocalReceiver<Box<OutFrame>>>>,
    /// Task-augmented calls of this session, in the shard's task store.
    tasks: TaskTable,
    /// Which era this session speaks, once its first request fixed it.
    era: Cell<Option<Era>>,
    /// The id of the actor that owns this session (none for a session made
    /// outside an actor); only the trace export reads it.
    id: Cell<Option<crate::registry::SessionId>>,
    /// Seals and opens `requestState`; the same on every shard of the node.
    state_key: StateKey,
    /// Carries a resource change to every shard (set by the runtime).
    update_hook: RefCell<Option<UpdateHook>>,
    /// Open `subscriptions/listen` requests and what each follows.
    listens: RefCell<Vec<(Id, Listen)>>,
    /// URL elicitations sent to the client and not yet completed, oldest
    /// first (at most `URL_ELICITATIONS_PENDING_MAX`).
    url_elicitations: RefCell<VecDeque<String>>,
    /// Requests this server sent to the client, waiting for answers.
    client_requests: RefCell<HashMap<Id, OneshotSender<Result<Value, RpcError>>>>,
    next_client_request: Cell<u64>,
}

/// Announces a resource change to the whole node.
pub type UpdateHook = Rc<dyn Fn(&str)>;

/// A session's state as it outlives its actor (see [`McpSession::resume_state`]).
#[derive(Clone)]
pub struct ResumeState {
    negotiated: Option<Negotiated>,
    phase: Phase,
    era: Option<Era>,
    log_level: LogLevel,
    subscriptions: HashSet<String>,
}

/// A frame for the client, tagged with the request it belongs to (if any),
/// so a transport with one stream per request can route it. An empty frame
/// carries no message: it asks the transport to close the stream of
/// `related` (see [`OutFrame::close_stream`]).
#[derive(Debug, Clone)]
pub struct OutFrame {
    pub related: Option<Id>,
    pub frame: Bytes,
}

impl OutFrame {
    /// Asks the transport to close the SSE stream request `related` answers
    /// on, while the request goes on (the client resumes the stream).
    pub fn close_stream(related: Id) -> Self {
        OutFrame {
            related: Some(related),
            frame: Bytes::new(),
        }
    }

    /// Whether this frame only asks to close a stream.
    pub fn is_close_stream(&self) -> bool {
        self.frame.is_empty()
    }
}

impl McpSession {
    /// A session of `live`'s shard, subscribed to its changes until
    /// dropped, with a task store of its own (a shard passes its store to
    /// [`Self::with_task_store`]).
    pub fn new(
        live: Rc<LiveServer>,
        limits: SessionLimits,
        clock: SharedClock,
        state_key: StateKey,
    ) -> Rc<Self> {
        let tasks = TaskStore::new(limits.tasks_max, limits.tasks_max, limits.task_ttl_max);
        Self::with_task_store(live, &tasks, limits, clock, state_key)
    }

    /// A session whose tasks live in the shard's `tasks` store.
    pub fn with_task_store(
        live: Rc<LiveServer>,
        tasks: &Rc<TaskStore>,
        limits: SessionLimits,
        clock: SharedClock,
        state_key: StateKey,
    ) -> Rc<Self> {
        let (outbox, outbox_receiver) = local_channel::new_bounded(limits.outbox_capacity.max(1));
        let session = Rc::new(McpSession {
            live,
            subscription: Cell::new(None),
            limits,
            phase: Cell::new(Phase::AwaitingInitialize),
            negotiated: RefCell::new(None),
            in_flight: RefCell::new(HashMap::new()),
            closed: Event::new(),
            subscriptions: RefCell::new(HashSet::new()),
            log_level: Cell::new(LogLevel::Info),
            clock,
            outbox,
            outbox_receiver: RefCell::new(Some(outbox_receiver)),
            tasks: tasks.table(),
            era: Cell::new(None),
            id: Cell::new(None),
            state_key,
            update_hook: RefCell::new(None),
            listens: RefCell::new(Vec::new()),
            url_elicitations: RefCell::new(VecDeque::new()),
            client_requests: RefCell::new(HashMap::new()),
            next_client_request: Cell::new(0),
        });
        let weak: Weak<McpSession> = Rc::downgrade(&session);
        let key = session.live.subscribe(weak);
        session.subscription.set(Some(key));
        session
    }

    /// The server's definitions now; a request takes them once.
    pub(super) fn server(&self) -> Rc<Server> {
        self.live.current()
    }

    /// The shard's live server this session serves.
    pub fn live_server(&self) -> &Rc<LiveServer> {
        &self.live
    }

    /// The version negotiated at `initialize`, once there was one.
    pub fn protocol_version(&self) -> Option<&'static str> {
        self.negotiated.borrow().as_ref().map(|n| n.version)
    }

    pub fn client_info(&self) -> Option<Value> {
        self.negotiated
            .borrow()
            .as_ref()
            .map(|n| n.client_info.clone())
    }

    pub fn client_capabilities(&self) -> Option<Value> {
        self.negotiated
            .borrow()
            .as_ref()
            .map(|n| n.client_capabilities.clone())
    }

    pub fn is_ready(&self) -> bool {
        self.phase.get() == Phase::Ready
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.borrow().len()
    }

    /// Tasks this session holds (for metrics).
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// What a new actor needs to carry this session on after its actor
    /// died (chaos, a pool crash): the negotiated handshake, log level and
    /// subscriptions. Requests in flight and pending client requests die
    /// with the actor.
    pub fn resume_state(&self) -> ResumeState {
        ResumeState {
            negotiated: self.negotiated.borrow().clone(),
            phase: self.phase.get(),
            era: self.era.get(),
            log_level: self.log_level.get(),
            subscriptions: self.subscriptions.borrow().clone(),
        }
    }

    /// Takes up `state` in a fresh session (before its first request).
    pub fn resume(&self, state: ResumeState) {
        *self.negotiated.borrow_mut() = state.negotiated;
        self.phase.set(state.phase);
        self.era.set(state.era);
        self.log_level.set(state.log_level);
        *self.subscriptions.borrow_mut() = state.subscriptions;
    }

    /// Ends the session: running requests and tasks are cancelled and
    /// answer nothing.
    pub fn close(&self) {
        self.closed.set();
        self.tasks.cancel_all();
        for (_, cancel) in self.in_flight.borrow_mut().drain() {
            cancel.set();
        }
    }

    /// Where this session's handlers announce resource changes.
    pub fn set_update_hook(&self, hook: UpdateHook) {
        *self.update_hook.borrow_mut() = Some(hook);
    }

    /// Sends `notifications/resources/updated` if this session follows
    /// `uri`: subscribed to it (handshake era) or listening for it (2026).
    pub fn deliver_resource_updated(&self, uri: &str) {
        let mut frames = Vec::new();
        if self.subscriptions.borrow().contains(uri) {
            frames.push(encode_request(
                None,
                "notifications/resources/updated",
                Some(&json!({"uri": uri})),
            ));
        }
        let mut frames: Vec<(Option<Id>, Bytes)> =
            frames.into_iter().map(|frame| (None, frame)).collect();
        for (id, listen) in self.listens.borrow().iter() {
            if listen.uris.contains(uri) {
                let params =
                    json!({"uri": uri, "_meta": {stateless::META_SUBSCRIPTION_ID: id.to_value()}});
                frames.push((
                    Some(id.clone()),
                    encode_request(None, "notifications/resources/updated", Some(&params)),
                ));
            }
        }
        self.send_notices(frames, "resource update");
    }

    /// Sends `notifications/*/list_changed` for `lists`: in the handshake
    /// era for the lists `initialize` advertised (once initialized); in the
    /// stateless era on each listen that asked for them.
    pub fn deliver_lists_changed(&self, lists: Lists) {
        let mut frames: Vec<(Option<Id>, Bytes)> = Vec::new();
        let advertised = self
            .negotiated
            .borrow()
            .as_ref()
            .map_or(Lists::NONE, |negotiated| negotiated.lists);
        if self.era.get() == Some(Era::Handshake) && self.phase.get() != Phase::AwaitingInitialize {
            for method in lists.and(advertised).changed_methods() {
                frames.push((None, encode_request(None, method, None)));
            }
        }
        for (id, listen) in self.listens.borrow().iter() {
            let params = json!({"_meta": {stateless::META_SUBSCRIPTION_ID: id.to_value()}});
            for method in lists.and(listen.lists).changed_methods() {
                frames.push((
                    Some(id.clone()),
                    encode_request(None, method, Some(&params)),
                ));
            }
        }
        self.send_notices(frames, "list change");
    }

    /// Queues notices no request waits for. A full outbox must not stall
    /// whoever made the change: the notice is dropped and logged.
    fn send_notices(&self, frames: Vec<(Option<Id>, Bytes)>, what: &'static str) {
        for (related, frame) in frames {
            if let Err(error) = self.outbox.try_send(Box::new(OutFrame { related, frame })) {
                tracing::warn!(%error, "{what} dropped: the client's outbox is full");
            }
        }
    }

    /// The stream of frames for the client; the transport takes it once.
    pub fn take_outbox(&self) -> Option<LocalReceiver<Box<OutFrame>>> {
        self.outbox_receiver.borrow_mut().take()
    }

    /// Completes when the session has ended (its actor stopped or died).
    pub fn ended(&self) -> crate::sync::EventWait {
        self.closed.wait()
    }

    /// Frames queued for the client and not yet taken by the transport.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Queues a frame for the client, waiting while the outbox is full. A
    /// frame for a transport that has gone is dropped.
    pub async fn push(&self, frame: OutFrame) {
        let _ = self.outbox.send(Box::new(frame)).await;
    }

    /// Handles one frame and queues its reply in the outbox, behind the
    /// notifications the request sent, so a single-stream transport keeps
    /// the order the protocol needs.
    pub async fn handle_frame_into_outbox(self: &Rc<Self>, frame: &[u8]) {
        self.handle_decoded_into_outbox(self.decode(frame)).await;
    }

    /// [`handle_frame_into_outbox`](Self::handle_frame_into_outbox) for a
    /// frame decoded already.
    pub async fn handle_decoded_into_outbox(
        self: &Rc<Self>,
        message: Result<Incoming, crate::protocol::jsonrpc::Refusal>,
    ) {
        if let Some(reply) = self.handle_decoded(message).await {
            self.push(OutFrame {
                related: None,
                frame: reply,
            })
            .await;
        }
    }

    /// Handles one frame; `None` when there is nothing to send back.
    pub async fn handle_frame(self: &Rc<Self>, frame: &[u8]) -> Option<Bytes> {
        self.handle_decoded(self.decode(frame)).await
    }

    /// Decodes a frame within this session's message bound.
    pub fn decode(&self, frame: &[u8]) -> Result<Incoming, crate::protocol::jsonrpc::Refusal> {
        decode(frame, self.limits.message_bytes_max)
    }

    /// Handles one decoded frame (a bad one is answered with its error).
    pub async fn handle_decoded(
        self: &Rc<Self>,
        message: Result<Incoming, crate::protocol::jsonrpc::Refusal>,
    ) -> Option<Bytes> {
        match message {
            Err(refusal) => Some(encode_error(refusal.id.as_ref(), &refusal.error)),
            Ok(Incoming::Single(message)) => self.handle_message(message).await,
            Ok(Incoming::Batch(entries)) => self.handle_batch(entries).await,
        }
    }

    async fn handle_batch(
        self: &Rc<Self>,
        entries: Vec<Result<Message, crate::protocol::jsonrpc::Refusal>>,
    ) -> Option<Bytes> {
        let version = self.protocol_version();
        if !version.is_some_and(allows_batches) {
            return Some(encode_error(
                None,
                &RpcError::invalid_request(format!(
                    "JSON-RPC batches are only accepted on a session that negotiated 2025-03-26 (this one: {})",
                    version.unwrap_or("not initialized")
                )),
            ));
        }
        let mut replies = Vec::new();
        for entry in entries {
            let reply = match entry {
                Ok(message) => self.handle_message(message).await,
                Err(refusal) => Some(encode_error(refusal.id.as_ref(), &refusal.error)),
            };
            replies.extend(reply);
        }
        (!replies.is_empty()).then(|| encode_batch(&replies))
    }

    async fn handle_message(self: &Rc<Self>, message: Message) -> Option<Bytes> {
        match message {
            Message::Request { id, method, params } => {
                self.handle_request(id, &method, params).await
            }
            Message::Notification { method, params } => {
                self.handle_notification(&method, params.as_ref());
                None
            }
            Message::Response { id, result } => {
                self.answer_client_request(&id, Ok(result));
                None
            }
            Message::ErrorResponse {
                id: Some(id),
                error,
            } => {
                self.answer_client_request(&id, Err(error));
                None
            }
            Message::ErrorResponse { id: None, error } => {
                tracing::warn!(code = error.code, message = %error.message, "client reported an error");
                None
            }
        }
    }

    async fn handle_request(
        self: &Rc<Self>,
        id: Id,
        method: &str,
        params: Option<Value>,
    ) -> Option<Bytes> {
        let started = self.clock.now();
        let cancel = Event::new();
        {
            let mut in_flight = self.in_flight.borrow_mut();
            if in_flight.contains_key(&id) {
                let error = RpcError::invalid_request(format!(
                    "request id {id} is already in use by a running request"
                ));
                self.count_request(method, Outcome::Refused, Duration::ZERO);
                return Some(encode_error(Some(&id), &error));
            }
            if in_flight.len() >= self.limits.in_flight_max {
                let error = RpcError::new(
                    SERVER_ERROR,
                    format!(
                        "too many requests in flight on this session (at most {})",
                        self.limits.in_flight_max
                    ),
                );
                self.count_request(method, Outcome::Refused, Duration::ZERO);
                return Some(encode_error(Some(&id), &error));
            }
            in_flight.insert(id.clone(), cancel.clone());
        }
        let work = catch_panic(self.dispatch(&id, method, params, cancel.clone()));
        // A listen stays open, and a task result is awaited, as long as the
        // client wants: no timeout for those.
        let unbounded = matches!(method, "subscriptions/listen" | "tasks/result");
        let timed_out = Cell::new(false);
        // Cancellation is polled first: when it and the work become ready
        // together (a handler that stops because it was cancelled), it wins.
        let outcome = future::or(
            async {
                cancel.wait().await;
                None
            },
            future::or(async { Some(work.await) }, async {
                // Made on the first poll, right after the work's: a request
                // answered at once never builds (allocates) a timer.
                if unbounded {
                    future::pending::<()>().await
                } else {
                    self.clock.sleep(self.limits.request_timeout).await
                }
                timed_out.set(true);
                Some(Ok(Err(RpcError::internal(format!(
                    "{method} did not finish within {} ms",
                    self.limits.request_timeout.as_millis()
                )))))
            }),
        )
        .await;
        self.in_flight.borrow_mut().remove(&id);
        let cancelled = cancel.is_set();
        // A handler still running after its timeout is told to stop.
        cancel.set();
        let (reply, counted) = match outcome {
            // Cancelled: the spec says the receiver sends no response.
            None => (None, Outcome::Cancelled),
            Some(_) if cancelled => (None, Outcome::Cancelled),
            Some(Ok(Ok(result))) => (Some(encode_result(&id, &result)), Outcome::Ok),
            Some(Ok(Err(error))) => (
                Some(encode_error(Some(&id), &error)),
                if timed_out.get() {
                    Outcome::Timeout
                } else {
                    Outcome::Error
                },
            ),
            Some(Err(panic)) => {
                tracing::error!(%id, method, %panic, "handler panicked");
                let error = RpcError::internal(format!("internal error while handling {method}"));
                (Some(encode_error(Some(&id), &error)), Outcome::Panic)
            }
        };
        let elapsed = self.clock.now().saturating_sub(started);
        self.count_request(method, counted, elapsed);
        reply
    }

    /// Counts a finished request and, with trace export on, sends its span.
    fn count_request(&self, method: &str, outcome: Outcome, elapsed: Duration) {
        observe::record_request(method, outcome, elapsed);
        observe::otel::record_request(method, outcome, elapsed, self.era.get(), self.id.get());
    }

    /// Names the session in exported spans.
    pub fn set_session_id(&self, id: crate::registry::SessionId) {
        self.id.set(Some(id));
    }

    fn handle_notification(&self, method: &str, params: Option<&Value>) {
        match method {
            "notifications/initialized" => {
                if self.phase.get() == Phase::Initialized {
                    self.phase.set(Phase::Ready);
                } else {
                    tracing::warn!(phase = ?self.phase.get(), "notifications/initialized out of order; ignored");
                }
            }
            "notifications/cancelled" => {
                let request = params
                    .and_then(|p| p.get("requestId"))
                    .and_then(|raw| match raw {
                        Value::String(s) => Some(Id::Str(s.as_str().into())),
                        Value::Number(n) => {
                            n.as_i64().map(Id::Int).or_else(|| n.as_u64().map(Id::Uint))
                        }
                        _ => None,
                    });
                let cancel = request
                    .as_ref()
                    .and_then(|id| self.in_flight.borrow().get(id).cloned());
                match (request, cancel) {
                    (Some(_), Some(cancel)) => cancel.set(),
                    // Unknown or finished requests: the spec says ignore.
                    (request, None) => tracing::debug!(
                        ?request,
                        "cancellation of a request that is not running; ignored"
                    ),
                    (None, Some(_)) => {}
                }
            }
            other => tracing::debug!(method = other, "notification not handled; ignored"),
        }
    }

    async fn dispatch(
        self: &Rc<Self>,
        id: &Id,
        method: &str,
        params: Option<Value>,
        cancel: Event,
    ) -> Result<Value, RpcError> {
        if self.era_of_request(method, params.as_ref())? == Era::Stateless {
            return self.dispatch_stateless(id, method, params, cancel).await;
        }
        match method {
            "initialize" => return self.initialize(params.as_ref()),
            "ping" => return Ok(json!({})),
            _ => {}
        }
        if self.phase.get() == Phase::AwaitingInitialize {
            return Err(RpcError::invalid_request(format!(
                "the session is not initialized: send initialize before {method}"
            )));
        }
        let server = self.server();
        // A feature is served if this session was told of it at initialize
        // or the server offers it now (definitions change at runtime).
        let (advertised, advertised_tasks) = self
            .negotiated
            .borrow()
            .as_ref()
            .map_or((Lists::NONE, false), |n| (n.lists, n.tasks));
        let lists = server.lists().or(advertised);
        let (has_tools, has_resources, has_prompts) = (lists.tools, lists.resources, lists.prompts);
        let has_tasks = advertised_tasks || server.has_task_tools();
        match method {
            "tools/list" if has_tools => self.tools_list(params.as_ref()),
            "tools/call" if has_tools => self.tools_call(id, params, cancel).await,
            "logging/setLevel" if has_tools => self.set_level(params.as_ref()),
            "tasks/get" if has_tasks => self.tasks.get(task_id(params.as_ref())?),
            "tasks/result" if has_tasks => self.tasks.result(task_id(params.as_ref())?).await,
            "tasks/cancel" if has_tasks => self.tasks.cancel(task_id(params.as_ref())?),
            "tasks/list" if has_tasks => {
                let (start, _, _) = page(params.as_ref(), usize::MAX, self.limits.page_size)?;
                let (entries, total) = self.tasks.list(start, self.limits.page_size);
                let mut result = json!({"tasks": entries});
                let end = start.saturating_add(self.limits.page_size);
                if end < total {
                    result["nextCursor"] = Value::String(format!("{CURSOR_PREFIX}{end:x}"));
                }
                Ok(result)
            }
            "resources/list" if has_resources => self.resources_list(params.as_ref()),
            "resources/templates/list" if has_resources => self.templates_list(params.as_ref()),
            "resources/read" if has_resources => self.resources_read(params.as_ref()).await,
            "resources/subscribe" if has_resources => self.subscribe(params.as_ref(), true),
            "resources/unsubscribe" if has_resources => self.subscribe(params.as_ref(), false),
            "prompts/list" if has_prompts => self.prompts_list(params.as_ref()),
            "prompts/get" if has_prompts => self.prompts_get(params.as_ref()).await,
            "completion/complete" => self.complete(params.as_ref()),
            // Unknown, or a feature this server does not offer.
            other => Err(RpcError::method_not_found(other)),
        }
    }

    fn initialize(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        if self.phase.get() != Phase::AwaitingInitialize {
            return Err(RpcError::invalid_request(
                "the session is already initialized",
            ));
        }
        let params = params_object(params)?;
        let requested = params
            .get("protocolVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                RpcError::invalid_params("initialize needs params.protocolVersion (a string)")
            })?;
        let client_capabilities = match params.get("capabilities") {
            Some(Value::Object(caps)) => Value::Object(caps.clone()),
            None => Value::Object(Map::new()),
            Some(_) => {
                return Err(RpcError::invalid_params(
                    "params.capabilities must be an object",
                ))
            }
        };
        let client_info = match params.get("clientInfo") {
            Some(info @ Value::Object(_)) => info.clone(),
            _ => {
                return Err(RpcError::invalid_params(
                    "initialize needs params.clientInfo (name and version)",
                ))
            }
        };
        let version = negotiate(requested);
        let server = self.server();
        *self.negotiated.borrow_mut() = Some(Negotiated {
            version,
            client_info,
            client_capabilities,
            lists: server.lists(),
            tasks: server.has_task_tools(),
        });
        self.phase.set(Phase::Initialized);
        self.era.set(Some(Era::Handshake));
        let mut result = Map::new();
        result.insert("protocolVersion".into(), Value::String(version.to_string()));
        result.insert("capabilities".into(), server.capabilities());
        result.insert("serverInfo".into(), server.info().to_value());
        if let Some(instructions) = server.instructions() {
            result.insert(
                "instructions".into(),
                Value::String(instructions.to_string()),
            );
        }
        Ok(Value::Object(result))
    }
}

impl Subscriber for McpSession {
    fn lists_changed(&self, lists: Lists) {
        self.deliver_lists_changed(lists);
    }

    fn resource_updated(&self, uri: &str) {
        self.deliver_resource_updated(uri);
    }
}

impl Drop for McpSession {
    fn drop(&mut self) {
        if let Some(key) = self.subscription.take() {
            self.live.unsubscribe(key);
        }
    }
}

/// Runs a tool; a URL-elicitation demand becomes the -32042 error, which
/// each era then turns into its own answer.
async fn run_tool(tool: &Tool, call: ToolCall) -> Result<Value, RpcError> {
    // Through the tool's circuit breaker: refused at once while it is open;
    // dropped unfinished (timeout, panic) it counts as a failure.
    let breaker = crate::protect::admit_tool(&tool.name, call.cancel_signal())?;
    let outcome = run_tool_unguarded(tool, call).await;
    if let Some(breaker) = breaker {
        let failed = match &outcome {
            Ok(result) => result.get("isError") == Some(&Value::Bool(true)),
            // Asking the client for input is no failure of the tool.
            Err(error) => error.code != URL_ELICITATION_REQUIRED,
        };
        breaker.finish(!failed);
    }
    outcome
}

async fn run_tool_unguarded(tool: &Tool, call: ToolCall) -> Result<Value, RpcError> {
    match tool.call(call).await {
        Ok(result) => {
            tool.check_result(&result)?;
            Ok(result.to_value())
        }
        Err(ToolError::Failed(message)) => Ok(crate::server::ToolResult::error(message).to_value()),
        Err(ToolError::Protocol(error)) => Err(error),
        Err(ToolError::UrlElicitationRequired(elicitations)) if elicitations.is_empty() => {
            Err(RpcError::internal(format!(
                "tool {} demanded URL elicitation but named none",
                tool.name
            )))
        }
        Err(ToolError::UrlElicitationRequired(elicitations)) => {
            Err(RpcError::url_elicitation_required(
                elicitations.iter().map(|e| e.to_params()).collect(),
            ))
        }
    }
}

fn task_id(params: Option<&Value>) -> Result<&str, RpcError> {
    required_str(params, "taskId", "tasks/*")
}

fn required_str<'a>(
    params: Option<&'a Value>,
    key: &str,
    method: &str,
) -> Result<&'a str, RpcError> {
    params_object(params)?
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::invalid_params(format!("{method} needs params.{key} (a string)")))
}

/// Handshake-era "resource not found" (-32002, with the URI in `data`).
fn resource_not_found(uri: &str) -> RpcError {
    RpcError::new(RESOURCE_NOT_FOUND, format!("resource not found: {uri}"))
        .with_data(json!({"uri": uri}))
}

/// One page of a list result under `key`, with `nextCursor` when more follow.
fn listing(
    key: &str,
    params: Option<&Value>,
    total: usize,
    page_size: usize,
    entries: impl FnOnce(std::ops::Range<usize>) -> Vec<Value>,
) -> Result<Value, RpcError> {
    let (start, end, next) = page(params, total, page_size)?;
    let mut result = Map::new();
    result.insert(key.into(), Value::Array(entries(start..end)));
    if let Some(next) = next {
        result.insert("nextCursor".into(), Value::String(next));
    }
    Ok(Value::Object(result))
}

const CURSOR_PREFIX: &str = "c1.";

/// The slice of a list one page covers, and the cursor of the next page.
fn page(
    params: Option<&Value>,
    total: usize,
    page_size: usize,
) -> Result<(usize, usize, Option<String>), RpcError> {
    let start = match params.and_then(|p| p.get("cursor")) {
        None | Some(Value::Null) => 0,
        Some(Value::String(cursor)) => cursor
            .strip_prefix(CURSOR_PREFIX)
            .and_then(|offset| usize::from_str_radix(offset, 16).ok())
            .filter(|&offset| offset <= total)
            .ok_or_else(|| RpcError::invalid_params(format!("invalid cursor: {cursor}")))?,
        Some(_) => return Err(RpcError::invalid_params("cursor must be a string")),
    };
    let end = start.saturating_add(page_size.max(1)).min(total);
    let next = (end < total).then(|| format!("{CURSOR_PREFIX}{end:x}"));
    Ok((start, end, next))
}

mod client;
mod features;
mod stateless_era;

#[cfg(test)]
mod tests;
