//! One MCP session in the handshake era: lifecycle (initialize, version
//! negotiation, initialized), request dispatch to the server, cancellation and
//! the in-flight table. No I/O: frames in, frames out.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
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
    SERVER_ERROR, UNSUPPORTED_PROTOCOL_VERSION,
};
use crate::protocol::logging::LogLevel;
use crate::protocol::request_state::{self, RoundState, StateKey};
use crate::protocol::stateless::{self, Envelope};
use crate::protocol::version::{allows_batches, negotiate, Era};
use crate::server::{
    Peer, Prompt, Resource, ResourceError, ResourceTemplate, Server, TaskSupport, Tool, ToolCall,
    ToolError,
};

use super::tasks::TaskTable;
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
            outbox_capacity: 256,
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

struct Negotiated {
    version: &'static str,
    client_info: Value,
    client_capabilities: Value,
}

pub struct McpSession {
    server: Rc<Server>,
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
    outbox: LocalSender<OutFrame>,
    outbox_receiver: RefCell<Option<LocalReceiver<OutFrame>>>,
    /// Task-augmented calls of this session.
    tasks: TaskTable,
    /// Which era this session speaks, once its first request fixed it.
    era: Cell<Option<Era>>,
    /// Seals and opens `requestState`; the same on every shard of the node.
    state_key: StateKey,
    /// Carries a resource change to every shard (set by the runtime).
    update_hook: RefCell<Option<UpdateHook>>,
    /// Open `subscriptions/listen` requests and the resource URIs each follows.
    listens: RefCell<Vec<(Id, HashSet<String>)>>,
    /// Requests this server sent to the client, waiting for answers.
    client_requests: RefCell<HashMap<Id, OneshotSender<Result<Value, RpcError>>>>,
    next_client_request: Cell<u64>,
}

/// Announces a resource change to the whole node.
pub type UpdateHook = Rc<dyn Fn(&str)>;

/// A frame for the client, tagged with the request it belongs to (if any),
/// so a transport with one stream per request can route it.
#[derive(Debug, Clone)]
pub struct OutFrame {
    pub related: Option<Id>,
    pub frame: Bytes,
}

/// The session as a handler sees it during one request.
struct RequestPeer {
    session: Weak<McpSession>,
    related: Id,
}

impl Peer for RequestPeer {
    fn notify(&self, method: &'static str, params: Value) -> Pin<Box<dyn Future<Output = ()>>> {
        let session = self.session.clone();
        let related = self.related.clone();
        Box::pin(async move {
            if let Some(session) = session.upgrade() {
                let frame = encode_request(None, method, Some(&params));
                session
                    .push(OutFrame {
                        related: Some(related),
                        frame,
                    })
                    .await;
            }
        })
    }

    fn log_enabled(&self, level: LogLevel) -> bool {
        self.session
            .upgrade()
            .is_some_and(|session| level >= session.log_level.get())
    }

    fn resource_updated(&self, uri: &str) {
        if let Some(session) = self.session.upgrade() {
            session.announce_resource_updated(uri);
        }
    }

    fn request(
        &self,
        method: &'static str,
        params: Value,
    ) -> Pin<Box<dyn Future<Output = Result<Value, RpcError>>>> {
        let session = self.session.clone();
        let related = self.related.clone();
        Box::pin(async move {
            let session = session
                .upgrade()
                .ok_or_else(|| RpcError::internal("the session has ended"))?;
            session.request_client(related, method, params).await
        })
    }
}

impl McpSession {
    pub fn new(
        server: Rc<Server>,
        limits: SessionLimits,
        clock: SharedClock,
        state_key: StateKey,
    ) -> Rc<Self> {
        let (outbox, outbox_receiver) = local_channel::new_bounded(limits.outbox_capacity.max(1));
        Rc::new(McpSession {
            server,
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
            tasks: TaskTable::new(limits.tasks_max, limits.task_ttl_max),
            era: Cell::new(None),
            state_key,
            update_hook: RefCell::new(None),
            listens: RefCell::new(Vec::new()),
            client_requests: RefCell::new(HashMap::new()),
            next_client_request: Cell::new(0),
        })
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

    fn announce_resource_updated(&self, uri: &str) {
        let hook = self.update_hook.borrow().clone();
        match hook {
            Some(hook) => hook(uri),
            // No runtime around (a bare session): only this session hears it.
            None => self.deliver_resource_updated(uri),
        }
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
        for (listen, uris) in self.listens.borrow().iter() {
            if uris.contains(uri) {
                let params = json!({"uri": uri, "_meta": {stateless::META_SUBSCRIPTION_ID: listen.to_value()}});
                frames.push(encode_request(
                    None,
                    "notifications/resources/updated",
                    Some(&params),
                ));
            }
        }
        for frame in frames {
            // A full outbox must not stall whoever announced the change.
            if let Err(error) = self.outbox.try_send(OutFrame {
                related: None,
                frame,
            }) {
                tracing::warn!(uri, %error, "resource update dropped: the client's outbox is full");
            }
        }
    }

    /// The stream of frames for the client; the transport takes it once.
    pub fn take_outbox(&self) -> Option<LocalReceiver<OutFrame>> {
        self.outbox_receiver.borrow_mut().take()
    }

    /// Sends a request to the client and waits for its answer (see
    /// [`Peer::request`]).
    async fn request_client(
        &self,
        related: Id,
        method: &'static str,
        params: Value,
    ) -> Result<Value, RpcError> {
        self.check_client_capability(method, &params)?;
        if self.client_requests.borrow().len() >= self.limits.client_requests_max {
            return Err(RpcError::new(
                SERVER_ERROR,
                format!(
                    "too many requests to the client waiting for answers (at most {})",
                    self.limits.client_requests_max
                ),
            ));
        }
        let number = self.next_client_request.get();
        self.next_client_request.set(number + 1);
        // Our ids live in a namespace of their own: the client's ids are its.
        let id = Id::Str(format!("shardmcp-{number}").into());
        let (answer_tx, answer_rx) = oneshot();
        self.client_requests
            .borrow_mut()
            .insert(id.clone(), answer_tx);
        let frame = encode_request(Some(&id), method, Some(&params));
        self.push(OutFrame {
            related: Some(related),
            frame,
        })
        .await;
        let timer = self.clock.sleep(self.limits.client_request_timeout);
        let answer = future::or(async { Some(answer_rx.await) }, async {
            timer.await;
            None
        })
        .await;
        self.client_requests.borrow_mut().remove(&id);
        match answer {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(RpcError::internal(
                "the session ended before the client answered",
            )),
            None => Err(RpcError::internal(format!(
                "the client did not answer {method} within {} ms",
                self.limits.client_request_timeout.as_millis()
            ))),
        }
    }

    fn check_client_capability(&self, method: &str, params: &Value) -> Result<(), RpcError> {
        check_capability(
            &self.client_capabilities().unwrap_or(Value::Null),
            method,
            params,
        )
    }

    fn answer_client_request(&self, id: &Id, answer: Result<Value, RpcError>) {
        let waiting = self.client_requests.borrow_mut().remove(id);
        match waiting {
            Some(reply) => {
                let _ = reply.send(answer);
            }
            None => {
                tracing::warn!(%id, "response to a request this server never sent (or gave up on); ignored")
            }
        }
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
        let _ = self.outbox.send(frame).await;
    }

    /// Handles one frame and queues its reply in the outbox, behind the
    /// notifications the request sent, so a single-stream transport keeps
    /// the order the protocol needs.
    pub async fn handle_frame_into_outbox(self: &Rc<Self>, frame: &[u8]) {
        if let Some(reply) = self.handle_frame(frame).await {
            self.push(OutFrame {
                related: None,
                frame: reply,
            })
            .await;
        }
    }

    /// Handles one frame; `None` when there is nothing to send back.
    pub async fn handle_frame(self: &Rc<Self>, frame: &[u8]) -> Option<Bytes> {
        match decode(frame, self.limits.message_bytes_max) {
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
        let cancel = Event::new();
        {
            let mut in_flight = self.in_flight.borrow_mut();
            if in_flight.contains_key(&id) {
                let error = RpcError::invalid_request(format!(
                    "request id {id} is already in use by a running request"
                ));
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
                return Some(encode_error(Some(&id), &error));
            }
            in_flight.insert(id.clone(), cancel.clone());
        }
        let work = catch_panic(self.dispatch(&id, method, params, cancel.clone()));
        // A listen stays open, and a task result is awaited, as long as the
        // client wants: no timeout for those.
        let unbounded = matches!(method, "subscriptions/listen" | "tasks/result");
        let timer = (!unbounded).then(|| self.clock.sleep(self.limits.request_timeout));
        // Cancellation is polled first: when it and the work become ready
        // together (a handler that stops because it was cancelled), it wins.
        let outcome = future::or(
            async {
                cancel.wait().await;
                None
            },
            future::or(async { Some(work.await) }, async {
                match timer {
                    Some(timer) => timer.await,
                    None => future::pending::<()>().await,
                }
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
        match outcome {
            // Cancelled: the spec says the receiver sends no response.
            None => None,
            Some(_) if cancelled => None,
            Some(Ok(Ok(result))) => Some(encode_result(&id, &result)),
            Some(Ok(Err(error))) => Some(encode_error(Some(&id), &error)),
            Some(Err(panic)) => {
                tracing::error!(%id, method, %panic, "handler panicked");
                Some(encode_error(
                    Some(&id),
                    &RpcError::internal(format!("internal error while handling {method}")),
                ))
            }
        }
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
        let server = &self.server;
        let has_tools = !server.tools().is_empty();
        let has_resources = !server.resources().is_empty() || !server.templates().is_empty();
        let has_prompts = !server.prompts().is_empty();
        match method {
            "tools/list" if has_tools => self.tools_list(params.as_ref()),
            "tools/call" if has_tools => self.tools_call(id, params, cancel).await,
            "logging/setLevel" if has_tools => self.set_level(params.as_ref()),
            "tasks/get" if server.has_task_tools() => self.tasks.get(task_id(params.as_ref())?),
            "tasks/result" if server.has_task_tools() => {
                self.tasks.result(task_id(params.as_ref())?).await
            }
            "tasks/cancel" if server.has_task_tools() => {
                self.tasks.cancel(task_id(params.as_ref())?)
            }
            "tasks/list" if server.has_task_tools() => {
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

    /// Which era a request belongs to. The first request fixes the era of a
    /// session: `initialize` the handshake era, an enveloped request the
    /// stateless one (as on stdio); the other era is refused afterwards.
    fn era_of_request(&self, method: &str, params: Option<&Value>) -> Result<Era, RpcError> {
        let enveloped = stateless::is_enveloped(params);
        match self.era.get() {
            Some(Era::Stateless) => Ok(Era::Stateless),
            Some(Era::Handshake) if enveloped && method != "initialize" => Err(RpcError::invalid_request(format!(
                "this session negotiated {} with initialize; a 2026-07-28 request belongs on a connection of its own",
                self.protocol_version().unwrap_or("a handshake-era version")
            ))),
            Some(Era::Handshake) => Ok(Era::Handshake),
            None if enveloped && method != "initialize" => Ok(Era::Stateless),
            None => Ok(Era::Handshake),
        }
    }

    async fn dispatch_stateless(
        self: &Rc<Self>,
        id: &Id,
        method: &str,
        params: Option<Value>,
        cancel: Event,
    ) -> Result<Value, RpcError> {
        if method == "initialize" {
            let requested = params
                .as_ref()
                .and_then(|p| p.get("protocolVersion"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Err(RpcError::new(
                UNSUPPORTED_PROTOCOL_VERSION,
                "this connection speaks 2026-07-28, which has no initialize",
            )
            .with_data(
                json!({"supported": stateless::STATELESS_VERSIONS, "requested": requested}),
            ));
        }
        let envelope = stateless::parse(params.as_ref())?;
        if self.era.get().is_none() {
            self.era.set(Some(Era::Stateless));
        }
        let info = self.server.info().to_value();
        let cacheable =
            |result: Result<Value, RpcError>| result.map(|r| stateless::complete(r, &info, true));
        let complete =
            |result: Result<Value, RpcError>| result.map(|r| stateless::complete(r, &info, false));
        let server = &self.server;
        let has_tools = !server.tools().is_empty();
        let has_resources = !server.resources().is_empty() || !server.templates().is_empty();
        let has_prompts = !server.prompts().is_empty();
        let params = params.as_ref();
        match method {
            "server/discover" => Ok(self.discover()),
            "tools/list" if has_tools => cacheable(self.tools_list(params)),
            "tools/call" if has_tools => {
                self.tools_call_stateless(id, params.cloned(), envelope, cancel)
                    .await
            }
            "resources/list" if has_resources => cacheable(self.resources_list(params)),
            "resources/templates/list" if has_resources => cacheable(self.templates_list(params)),
            "resources/read" if has_resources => {
                cacheable(self.resources_read(params).await.map_err(|error| {
                    // 2026-07-28 reports a missing resource as invalid params.
                    if error.code == RESOURCE_NOT_FOUND {
                        RpcError {
                            code: INVALID_PARAMS,
                            ..error
                        }
                    } else {
                        error
                    }
                }))
            }
            "prompts/list" if has_prompts => cacheable(self.prompts_list(params)),
            "prompts/get" if has_prompts => complete(self.prompts_get(params).await),
            "completion/complete" => complete(self.complete(params)),
            "subscriptions/listen" => self.listen(id, params).await,
            // Unknown, removed in this revision (ping, logging/setLevel,
            // resources/subscribe...), or a feature this server lacks.
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
        *self.negotiated.borrow_mut() = Some(Negotiated {
            version,
            client_info,
            client_capabilities,
        });
        self.phase.set(Phase::Initialized);
        self.era.set(Some(Era::Handshake));
        let mut result = Map::new();
        result.insert("protocolVersion".into(), Value::String(version.to_string()));
        result.insert("capabilities".into(), self.server.capabilities());
        result.insert("serverInfo".into(), self.server.info().to_value());
        if let Some(instructions) = self.server.instructions() {
            result.insert(
                "instructions".into(),
                Value::String(instructions.to_string()),
            );
        }
        Ok(Value::Object(result))
    }

    /// One page of one of the server's lists, each entry by `descriptor`.
    fn list<T>(
        &self,
        key: &str,
        params: Option<&Value>,
        items: &[Rc<T>],
        descriptor: impl Fn(&T) -> Value,
    ) -> Result<Value, RpcError> {
        listing(key, params, items.len(), self.limits.page_size, |range| {
            items[range].iter().map(|item| descriptor(item)).collect()
        })
    }

    fn tools_list(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        self.list("tools", params, self.server.tools(), Tool::descriptor)
    }

    fn resources_list(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        self.list(
            "resources",
            params,
            self.server.resources(),
            Resource::descriptor,
        )
    }

    fn templates_list(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        self.list(
            "resourceTemplates",
            params,
            self.server.templates(),
            ResourceTemplate::descriptor,
        )
    }

    fn prompts_list(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        self.list("prompts", params, self.server.prompts(), Prompt::descriptor)
    }

    async fn resources_read(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let uri = required_str(params, "uri", "resources/read")?;
        let read = if let Some(resource) = self.server.resource(uri) {
            resource.read()
        } else {
            let matched =
                self.server.templates().iter().find_map(|template| {
                    template.matches(uri).map(|vars| (template.clone(), vars))
                });
            match matched {
                Some((template, variables)) => template.read(uri, variables),
                None => return Err(resource_not_found(uri)),
            }
        };
        match read.await {
            Ok(contents) => {
                Ok(json!({"contents": contents.iter().map(|c| c.to_value()).collect::<Vec<_>>()}))
            }
            Err(ResourceError::NotFound(_)) => Err(resource_not_found(uri)),
            Err(ResourceError::Failed(message)) => Err(RpcError::internal(format!(
                "reading {uri} failed: {message}"
            ))),
        }
    }

    fn knows_resource(&self, uri: &str) -> bool {
        self.server.resource(uri).is_some()
            || self
                .server
                .templates()
                .iter()
                .any(|template| template.matches(uri).is_some())
    }

    fn subscribe(&self, params: Option<&Value>, on: bool) -> Result<Value, RpcError> {
        let method = if on {
            "resources/subscribe"
        } else {
            "resources/unsubscribe"
        };
        let uri = required_str(params, "uri", method)?;
        let mut subscriptions = self.subscriptions.borrow_mut();
        if !on {
            subscriptions.remove(uri);
            return Ok(json!({}));
        }
        if !self.knows_resource(uri) {
            return Err(resource_not_found(uri));
        }
        if !subscriptions.contains(uri) && subscriptions.len() >= self.limits.subscriptions_max {
            return Err(RpcError::new(
                SERVER_ERROR,
                format!(
                    "too many subscriptions on this session (at most {})",
                    self.limits.subscriptions_max
                ),
            ));
        }
        subscriptions.insert(uri.to_string());
        Ok(json!({}))
    }

    /// Whether this session subscribed to `uri` (for `notifications/resources/updated`).
    pub fn is_subscribed(&self, uri: &str) -> bool {
        self.subscriptions.borrow().contains(uri)
    }

    async fn prompts_get(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let name = required_str(params, "name", "prompts/get")?;
        let prompt = self
            .server
            .prompt(name)
            .cloned()
            .ok_or_else(|| RpcError::invalid_params(format!("unknown prompt: {name}")))?;
        let mut arguments = HashMap::new();
        match params.and_then(|p| p.get("arguments")) {
            None | Some(Value::Null) => {}
            Some(Value::Object(given)) => {
                for (key, value) in given {
                    let Value::String(value) = value else {
                        return Err(RpcError::invalid_params(format!(
                            "prompt argument `{key}` must be a string"
                        )));
                    };
                    arguments.insert(key.clone(), value.clone());
                }
            }
            Some(_) => {
                return Err(RpcError::invalid_params(
                    "params.arguments must be an object",
                ))
            }
        }
        let run = prompt.get(arguments).map_err(RpcError::invalid_params)?;
        let result = run
            .await
            .map_err(|message| RpcError::internal(format!("prompt {name} failed: {message}")))?;
        Ok(result.to_value())
    }

    fn complete(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        const VALUES_MAX: usize = 100;
        let params = params_object(params)?;
        let reference = params
            .get("ref")
            .ok_or_else(|| RpcError::invalid_params("completion/complete needs params.ref"))?;
        let argument = params
            .get("argument")
            .ok_or_else(|| RpcError::invalid_params("completion/complete needs params.argument"))?;
        let (name, value) = match (
            argument.get("name").and_then(Value::as_str),
            argument.get("value").and_then(Value::as_str),
        ) {
            (Some(name), Some(value)) => (name, value),
            _ => {
                return Err(RpcError::invalid_params(
                    "params.argument needs name and value (strings)",
                ))
            }
        };
        let completer = match reference.get("type").and_then(Value::as_str) {
            Some("ref/prompt") => {
                let prompt_name = reference
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let prompt = self.server.prompt(prompt_name).ok_or_else(|| {
                    RpcError::invalid_params(format!("unknown prompt: {prompt_name}"))
                })?;
                prompt.completer.clone()
            }
            Some("ref/resource") => {
                let uri = reference
                    .get("uri")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let template = self
                    .server
                    .templates()
                    .iter()
                    .find(|t| t.uri_template == uri)
                    .ok_or_else(|| {
                        RpcError::invalid_params(format!("unknown resource template: {uri}"))
                    })?;
                template.completer.clone()
            }
            _ => {
                return Err(RpcError::invalid_params(
                    "params.ref.type must be ref/prompt or ref/resource",
                ))
            }
        };
        let mut values = completer
            .map(|complete| complete(name, value))
            .unwrap_or_default();
        let total = values.len();
        values.truncate(VALUES_MAX);
        Ok(json!({"completion": {"values": values, "total": total, "hasMore": total > VALUES_MAX}}))
    }

    fn set_level(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let level = required_str(params, "level", "logging/setLevel")?;
        let level = LogLevel::parse(level)
            .ok_or_else(|| RpcError::invalid_params(format!("unknown log level: {level}")))?;
        self.log_level.set(level);
        Ok(json!({}))
    }

    /// The tool and its checked arguments for a `tools/call`.
    fn tool_call_target(
        &self,
        params: &Map<String, Value>,
    ) -> Result<(Rc<Tool>, Map<String, Value>), RpcError> {
        let name = params
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| RpcError::invalid_params("tools/call needs params.name (a string)"))?;
        let tool = self
            .server
            .tool(name)
            .cloned()
            .ok_or_else(|| RpcError::invalid_params(format!("unknown tool: {name}")))?;
        let arguments = match params.get("arguments") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(arguments)) => arguments.clone(),
            Some(_) => {
                return Err(RpcError::invalid_params(
                    "params.arguments must be an object",
                ))
            }
        };
        tool.check_arguments(&Value::Object(arguments.clone()))?;
        Ok((tool, arguments))
    }

    async fn tools_call(
        self: &Rc<Self>,
        id: &Id,
        params: Option<Value>,
        cancel: Event,
    ) -> Result<Value, RpcError> {
        let params = params_object(params.as_ref())?;
        let (tool, arguments) = self.tool_call_target(params)?;
        let progress_token = params
            .get("_meta")
            .and_then(|meta| meta.get("progressToken"))
            .filter(|token| token.is_string() || token.is_i64() || token.is_u64())
            .cloned();
        let peer = Rc::new(RequestPeer {
            session: Rc::downgrade(self),
            related: id.clone(),
        });
        let as_task = params.get("task").is_some_and(Value::is_object);
        match (as_task, tool.task_support) {
            (true, TaskSupport::Forbidden) => {
                return Err(RpcError::invalid_params(format!(
                    "tool {} does not run as a task",
                    tool.name
                )))
            }
            (false, TaskSupport::Required) => {
                return Err(RpcError::invalid_params(format!(
                    "tool {} only runs as a task: add params.task",
                    tool.name
                )))
            }
            (false, _) => {
                return run_tool(
                    &tool,
                    ToolCall::new(arguments, cancel, peer, progress_token),
                )
                .await
            }
            (true, _) => {}
        }
        let ttl_ms = params
            .get("task")
            .and_then(|task| task.get("ttl"))
            .and_then(Value::as_u64);
        let (task_id, task_cancel, task) = self.tasks.create(ttl_ms)?;
        let session = self.clone();
        // The call outlives this request: it is stopped by tasks/cancel (or
        // the session ending), not by the request's own cancellation.
        glommio::spawn_local(async move {
            let call = ToolCall::new(arguments, task_cancel, peer, progress_token);
            let outcome = run_tool(&tool, call).await;
            if let Some(status) = session.tasks.finish(&task_id, outcome) {
                let frame = encode_request(None, "notifications/tasks/status", Some(&status));
                session
                    .push(OutFrame {
                        related: None,
                        frame,
                    })
                    .await;
            }
        })
        .detach();
        Ok(json!({"task": task}))
    }

    /// `tools/call` in the stateless era: when the handler asks the client
    /// for input it was not given, the answer is an `InputRequiredResult`
    /// round; the retry carries the answers and the sealed state.
    async fn tools_call_stateless(
        self: &Rc<Self>,
        id: &Id,
        params: Option<Value>,
        envelope: Envelope,
        cancel: Event,
    ) -> Result<Value, RpcError> {
        let params = params_object(params.as_ref())?;
        let (tool, arguments) = self.tool_call_target(params)?;
        let digest = request_state::digest(&Value::Object(arguments.clone()));
        let responses = match params.get("inputResponses") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(responses)) => responses.clone(),
            Some(_) => {
                return Err(RpcError::invalid_params(
                    "params.inputResponses must be an object",
                ))
            }
        };
        let round = match params.get("requestState") {
            None | Some(Value::Null) if responses.is_empty() => 0,
            None | Some(Value::Null) => {
                return Err(RpcError::invalid_params(
                    "params.inputResponses need the requestState they answer",
                ))
            }
            Some(Value::String(state)) => {
                request_state::open(
                    &self.state_key,
                    state,
                    wall_clock_ms(),
                    "tools/call",
                    &tool.name,
                    &digest,
                )
                .map_err(|error| {
                    RpcError::invalid_params(format!("Invalid or expired requestState ({error})"))
                        .with_data(json!({"reason": "invalid_request_state"}))
                })?
                .round
            }
            Some(_) => {
                return Err(RpcError::invalid_params(
                    "params.requestState must be a string",
                ))
            }
        };
        if round >= self.limits.input_rounds_max {
            return Err(RpcError::invalid_params(format!(
                "this call has asked for input {round} times; the limit is {}",
                self.limits.input_rounds_max
            )));
        }
        let peer = Rc::new(StatelessPeer {
            session: Rc::downgrade(self),
            related: id.clone(),
            capabilities: envelope.client_capabilities.clone(),
            log_level: envelope.log_level,
            responses,
            asks: RefCell::new(Map::new()),
            next_key: Cell::new(0),
        });
        let call = ToolCall::new(
            arguments,
            cancel,
            peer.clone(),
            envelope.progress_token.clone(),
        );
        let outcome = run_tool(&tool, call).await;
        let info = self.server.info().to_value();
        let asks = peer.asks.take();
        if !asks.is_empty() {
            let state = request_state::seal(
                &self.state_key,
                &RoundState {
                    method: "tools/call".into(),
                    target: tool.name.clone(),
                    arguments_digest: digest,
                    expires_at_ms: wall_clock_ms()
                        .saturating_add(self.limits.request_state_ttl.as_millis() as u64),
                    round: round + 1,
                },
            );
            return Ok(stateless::input_required(asks, state, &info));
        }
        outcome.map(|result| stateless::complete(result, &info, false))
    }

    /// `server/discover`: what this server serves, for this request only.
    fn discover(&self) -> Value {
        let mut result = Map::new();
        result.insert(
            "supportedVersions".into(),
            json!(stateless::STATELESS_VERSIONS),
        );
        result.insert("capabilities".into(), self.server.capabilities());
        if let Some(instructions) = self.server.instructions() {
            result.insert(
                "instructions".into(),
                Value::String(instructions.to_string()),
            );
        }
        stateless::complete(Value::Object(result), &self.server.info().to_value(), true)
    }

    /// `subscriptions/listen`: acknowledged with the kinds honoured (none
    /// yet: this server's lists never change), then open until cancelled.
    async fn listen(&self, id: &Id, params: Option<&Value>) -> Result<Value, RpcError> {
        if let Some(filter) = params.and_then(|p| p.get("notifications")) {
            if !filter.is_object() {
                return Err(RpcError::invalid_params(
                    "params.notifications must be an object",
                ));
            }
        }
        // Honoured: resource subscriptions (this server's lists never change).
        let uris: HashSet<String> = params
            .and_then(|p| p.get("notifications"))
            .and_then(|n| n.get("resourceSubscriptions"))
            .and_then(Value::as_array)
            .map(|uris| {
                uris.iter()
                    .filter_map(Value::as_str)
                    .filter(|uri| self.knows_resource(uri))
                    .take(self.limits.subscriptions_max)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let mut honoured = Map::new();
        if !uris.is_empty() {
            let mut sorted: Vec<&String> = uris.iter().collect();
            sorted.sort();
            honoured.insert("resourceSubscriptions".into(), json!(sorted));
        }
        let acknowledged = json!({
            "_meta": {stateless::META_SUBSCRIPTION_ID: id.to_value()},
            "notifications": honoured
        });
        self.listens.borrow_mut().push((id.clone(), uris));
        let _forget = ForgetListen {
            session: self,
            id: id.clone(),
        };
        self.push(OutFrame {
            related: Some(id.clone()),
            frame: encode_request(
                None,
                "notifications/subscriptions/acknowledged",
                Some(&acknowledged),
            ),
        })
        .await;
        // Ends by cancellation (or the session closing): no response then.
        future::pending::<()>().await;
        Ok(json!({}))
    }
}

async fn run_tool(tool: &Tool, call: ToolCall) -> Result<Value, RpcError> {
    match tool.call(call).await {
        Ok(result) => {
            tool.check_result(&result)?;
            Ok(result.to_value())
        }
        Err(ToolError::Failed(message)) => Ok(crate::server::ToolResult::error(message).to_value()),
        Err(ToolError::Protocol(error)) => Err(error),
    }
}

/// Milliseconds since the Unix epoch: request states must expire the same
/// way on every shard, so they use the wall clock.
fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// The session as a stateless (2026-07-28) handler sees it: capabilities and
/// log level come with the request, and questions for the client become
/// input requests of an `InputRequiredResult`.
struct StatelessPeer {
    session: Weak<McpSession>,
    related: Id,
    capabilities: Value,
    log_level: Option<LogLevel>,
    /// The client's answers to the previous round, by key.
    responses: Map<String, Value>,
    /// Questions this round could not answer, by key.
    asks: RefCell<Map<String, Value>>,
    next_key: Cell<usize>,
}

impl Peer for StatelessPeer {
    fn notify(&self, method: &'static str, params: Value) -> Pin<Box<dyn Future<Output = ()>>> {
        let session = self.session.clone();
        let related = self.related.clone();
        Box::pin(async move {
            if let Some(session) = session.upgrade() {
                let frame = encode_request(None, method, Some(&params));
                session
                    .push(OutFrame {
                        related: Some(related),
                        frame,
                    })
                    .await;
            }
        })
    }

    fn log_enabled(&self, level: LogLevel) -> bool {
        self.log_level.is_some_and(|least| level >= least)
    }

    fn resource_updated(&self, uri: &str) {
        if let Some(session) = self.session.upgrade() {
            session.announce_resource_updated(uri);
        }
    }

    fn request(
        &self,
        method: &'static str,
        params: Value,
    ) -> Pin<Box<dyn Future<Output = Result<Value, RpcError>>>> {
        let checked = check_capability(&self.capabilities, method, &params);
        // Keys follow the order the handler asks in, which is the same on
        // every round for the same arguments and answers.
        let key = format!("input-{}", self.next_key.get());
        self.next_key.set(self.next_key.get() + 1);
        let answer = match checked {
            Err(error) => Err(error),
            Ok(()) => match self.responses.get(&key) {
                Some(answer) => Ok(answer.clone()),
                None => {
                    self.asks
                        .borrow_mut()
                        .insert(key, json!({"method": method, "params": params}));
                    Err(RpcError::internal("input required from the client"))
                }
            },
        };
        Box::pin(async move { answer })
    }
}

/// The client must have declared the capability a request to it needs.
fn check_capability(capabilities: &Value, method: &str, params: &Value) -> Result<(), RpcError> {
    let (declared, required) = match method {
        "sampling/createMessage" => (
            capabilities.get("sampling").is_some(),
            json!({"sampling": {}}),
        ),
        "roots/list" => (capabilities.get("roots").is_some(), json!({"roots": {}})),
        "elicitation/create" => {
            let elicitation = capabilities.get("elicitation");
            let url_mode = params.get("mode").and_then(Value::as_str) == Some("url");
            let declared = match elicitation {
                None => false,
                Some(modes) if url_mode => modes.get("url").is_some(),
                // An empty object means form mode (as before modes existed).
                Some(modes) => {
                    modes.get("form").is_some() || modes.as_object().is_some_and(|m| m.is_empty())
                }
            };
            let mode = if url_mode { "url" } else { "form" };
            (declared, json!({"elicitation": {mode: {}}}))
        }
        _ => (true, Value::Null),
    };
    if declared {
        return Ok(());
    }
    Err(RpcError::new(
        MISSING_REQUIRED_CLIENT_CAPABILITY,
        format!("the client did not declare the capability {method} needs"),
    )
    .with_data(json!({"requiredCapabilities": required})))
}

/// Ends a listen's interest however the listen ends.
struct ForgetListen<'a> {
    session: &'a McpSession,
    id: Id,
}

impl Drop for ForgetListen<'_> {
    fn drop(&mut self) {
        self.session
            .listens
            .borrow_mut()
            .retain(|(listen, _)| *listen != self.id);
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

#[cfg(test)]
mod tests;
