//! One MCP session in the handshake era: lifecycle (initialize, version
//! negotiation, initialized), request dispatch to the server, cancellation and
//! the in-flight table. No I/O: frames in, frames out.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;
use futures_lite::future;
use serde_json::{json, Map, Value};

use crate::protocol::jsonrpc::{
    decode, encode_batch, encode_error, encode_result, params_object, Id, Incoming, Message,
    RpcError, SERVER_ERROR,
};
use crate::protocol::version::{allows_batches, negotiate};
use crate::server::{Server, ToolCall, ToolError};
use crate::sync::{catch_panic, Event};

/// A session's own bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Largest frame decoded; larger ones are refused with -32600.
    pub message_bytes_max: usize,
    /// Entries per page of a list result.
    pub page_size: usize,
    /// Requests of this session running at once; more are refused.
    pub in_flight_max: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            message_bytes_max: 4 << 20,
            page_size: 100,
            in_flight_max: 64,
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
}

impl McpSession {
    pub fn new(server: Rc<Server>, limits: SessionLimits) -> Rc<Self> {
        Rc::new(McpSession {
            server,
            limits,
            phase: Cell::new(Phase::AwaitingInitialize),
            negotiated: RefCell::new(None),
            in_flight: RefCell::new(HashMap::new()),
            closed: Event::new(),
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

    /// Ends the session: running requests are cancelled and answer nothing.
    pub fn close(&self) {
        self.closed.set();
        for (_, cancel) in self.in_flight.borrow_mut().drain() {
            cancel.set();
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
            Message::Response { id, .. } | Message::ErrorResponse { id: Some(id), .. } => {
                tracing::warn!(%id, "response to a request this server never sent; ignored");
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
        let work = catch_panic(self.dispatch(method, params, cancel.clone()));
        // Cancellation is polled first: when it and the work become ready
        // together (a handler that stops because it was cancelled), it wins.
        let outcome = future::or(
            async {
                cancel.wait().await;
                None
            },
            async { Some(work.await) },
        )
        .await;
        self.in_flight.borrow_mut().remove(&id);
        match outcome {
            // Cancelled: the spec says the receiver sends no response.
            None => None,
            Some(_) if cancel.is_set() => None,
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
        method: &str,
        params: Option<Value>,
        cancel: Event,
    ) -> Result<Value, RpcError> {
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
        match method {
            "tools/list" => self.tools_list(params.as_ref()),
            "tools/call" => self.tools_call(params, cancel).await,
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

    fn tools_list(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let tools = self.server.tools();
        let (start, end, next) = page(params, tools.len(), self.limits.page_size)?;
        let mut result = Map::new();
        result.insert(
            "tools".into(),
            Value::Array(
                tools[start..end]
                    .iter()
                    .map(|tool| tool.descriptor())
                    .collect(),
            ),
        );
        if let Some(next) = next {
            result.insert("nextCursor".into(), Value::String(next));
        }
        Ok(Value::Object(result))
    }

    async fn tools_call(&self, params: Option<Value>, cancel: Event) -> Result<Value, RpcError> {
        let params = params_object(params.as_ref())?;
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
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(arguments @ Value::Object(_)) => arguments.clone(),
            Some(_) => {
                return Err(RpcError::invalid_params(
                    "params.arguments must be an object",
                ))
            }
        };
        tool.check_arguments(&arguments)?;
        let Value::Object(arguments) = arguments else {
            return Err(RpcError::invalid_params(
                "params.arguments must be an object",
            ));
        };
        match tool.call(ToolCall::new(arguments, cancel)).await {
            Ok(result) => {
                tool.check_result(&result)?;
                Ok(result.to_value())
            }
            Err(ToolError::Failed(message)) => {
                Ok(crate::server::ToolResult::error(message).to_value())
            }
            Err(ToolError::Protocol(error)) => Err(error),
        }
    }
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
