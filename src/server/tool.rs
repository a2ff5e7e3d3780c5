//! Tools: declared once with their JSON Schemas, validated before the handler
//! runs, handled by a local future.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use serde_json::{json, Map, Value};

use crate::protocol::jsonrpc::RpcError;
use crate::protocol::logging::LogLevel;
use crate::sync::Event;

use super::content::ToolResult;
use super::icon::{check_icons, insert_icons, Icon};
use super::{LiveServer, ServerError};

/// Why a tool call did not produce a result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ToolError {
    /// The tool failed in its own domain: reported to the client as a result
    /// with `isError: true` and this text.
    #[error("{0}")]
    Failed(String),
    /// A protocol error to answer with instead of a result.
    #[error(transparent)]
    Protocol(#[from] RpcError),
    /// The call cannot go on until the user completes these URL-mode
    /// elicitations (2025-11-25 `URLElicitationRequiredError`, -32042). In
    /// the 2026-07-28 era they become an `InputRequiredResult` round.
    #[error("URL elicitation required ({} pending)", .0.len())]
    UrlElicitationRequired(Vec<UrlElicitation>),
}

/// A definition that cannot be built or added (say, from a handler that
/// changes the server) fails the call in its own domain.
impl From<ServerError> for ToolError {
    fn from(error: ServerError) -> Self {
        ToolError::Failed(error.to_string())
    }
}

/// A URL-mode elicitation: the user is sent to `url` out of band.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlElicitation {
    /// Unique within the server; `notifications/elicitation/complete`
    /// names it when the interaction is over.
    pub elicitation_id: String,
    pub url: String,
    /// Why the user should go there.
    pub message: String,
}

impl UrlElicitation {
    pub fn new(elicitation_id: &str, url: &str, message: &str) -> Self {
        UrlElicitation {
            elicitation_id: elicitation_id.to_string(),
            url: url.to_string(),
            message: message.to_string(),
        }
    }

    /// The `elicitation/create` params (`ElicitRequestURLParams`).
    pub fn to_params(&self) -> Value {
        json!({
            "mode": "url",
            "message": self.message,
            "url": self.url,
            "elicitationId": self.elicitation_id,
        })
    }
}

/// Why `notifications/elicitation/complete` was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElicitationError {
    #[error("the session has ended")]
    SessionEnded,
    /// The session's protocol has no such notification, or its client did
    /// not declare URL-mode elicitation.
    #[error("not supported on this session: {0}")]
    Unsupported(String),
    /// No URL elicitation with this id is pending on the session: never
    /// sent, or already completed.
    #[error("no pending URL elicitation {0}")]
    Unknown(String),
}

/// How a handler reaches the client during a call: the session implements
/// it, routing what is sent to the request's stream.
pub trait Peer {
    /// Sends a notification related to this call; waits while the client's
    /// outbox is full (backpressure), and drops it if the client is gone.
    fn notify(&self, method: &'static str, params: Value) -> Pin<Box<dyn Future<Output = ()>>>;
    /// Whether the client wants log messages of this level.
    fn log_enabled(&self, level: LogLevel) -> bool;
    /// Sends a request to the client (sampling, elicitation, roots) and waits
    /// for its answer. Fails with -32021 when the client did not declare the
    /// capability the method needs, and with a timeout error when it does not
    /// answer in time.
    fn request(
        &self,
        method: &'static str,
        params: Value,
    ) -> Pin<Box<dyn Future<Output = Result<Value, RpcError>>>>;
    /// Tells every session on every shard that subscribed to `uri` that
    /// it changed.
    fn resource_updated(&self, uri: &str);
    /// Asks the transport to close the SSE stream this call answers on,
    /// without ending the call (SEP-1699): the client reconnects with
    /// `Last-Event-ID` and gets the rest. Queued behind what the call sent
    /// before; transports without resumable streams ignore it.
    fn close_stream(&self) -> Pin<Box<dyn Future<Output = ()>>>;
    /// This shard's live server, to change definitions at runtime; `None`
    /// once the session has ended.
    fn server(&self) -> Option<Rc<LiveServer>>;
    /// Sends `notifications/elicitation/complete` for a pending URL
    /// elicitation to this call's client, on the call's stream while it
    /// runs and on the session's own stream afterwards.
    fn complete_elicitation(
        &self,
        elicitation_id: &str,
    ) -> Pin<Box<dyn Future<Output = Result<(), ElicitationError>>>>;
}

/// Completes one URL-mode elicitation of a call, after the call if need be:
/// it holds the session weakly and stays on the call's shard.
#[derive(Clone)]
pub struct ElicitationCompleter {
    peer: Rc<dyn Peer>,
    elicitation_id: String,
}

impl ElicitationCompleter {
    pub fn elicitation_id(&self) -> &str {
        &self.elicitation_id
    }

    /// Tells the client the out-of-band interaction is over; once per id.
    pub async fn complete(&self) -> Result<(), ElicitationError> {
        self.peer.complete_elicitation(&self.elicitation_id).await
    }
}

/// What a handler gets for one call.
pub struct ToolCall {
    pub arguments: Map<String, Value>,
    cancel: Event,
    peer: Rc<dyn Peer>,
    progress_token: Option<Value>,
    last_progress: Cell<Option<f64>>,
}

impl ToolCall {
    pub fn new(
        arguments: Map<String, Value>,
        cancel: Event,
        peer: Rc<dyn Peer>,
        progress_token: Option<Value>,
    ) -> Self {
        ToolCall {
            arguments,
            cancel,
            peer,
            progress_token,
            last_progress: Cell::new(None),
        }
    }

    /// Sends `notifications/message` if the client's log level lets it through.
    pub async fn log(&self, level: LogLevel, logger: Option<&str>, data: Value) {
        if !self.peer.log_enabled(level) {
            return;
        }
        let mut params = json!({"level": level.as_str(), "data": data});
        if let Some(logger) = logger {
            params["logger"] = Value::String(logger.to_string());
        }
        self.peer.notify("notifications/message", params).await;
    }

    /// Asks the client's model for a completion (`sampling/createMessage`).
    pub async fn create_message(&self, params: Value) -> Result<Value, RpcError> {
        self.peer.request("sampling/createMessage", params).await
    }

    /// Asks the user for input (`elicitation/create`); `params.mode` is
    /// `"form"` (default) or `"url"`.
    pub async fn elicit(&self, params: Value) -> Result<Value, RpcError> {
        self.peer.request("elicitation/create", params).await
    }

    /// Sends the user to a URL (`elicitation/create` in URL mode). The
    /// answer says whether they agreed to go, not that they are done:
    /// [`Self::elicitation_completer`] tells the client when they are.
    pub async fn elicit_url(&self, elicitation: &UrlElicitation) -> Result<Value, RpcError> {
        self.peer
            .request("elicitation/create", elicitation.to_params())
            .await
    }

    /// A handle that sends `notifications/elicitation/complete` for
    /// `elicitation_id` (sent by [`Self::elicit_url`], or returned in
    /// [`ToolError::UrlElicitationRequired`]) to this session's client,
    /// during or after this call.
    pub fn elicitation_completer(&self, elicitation_id: &str) -> ElicitationCompleter {
        ElicitationCompleter {
            peer: self.peer.clone(),
            elicitation_id: elicitation_id.to_string(),
        }
    }

    /// This shard's live server: add or remove tools, resources, templates
    /// and prompts at runtime. Sessions on this shard are told which lists
    /// changed; other shards are not changed (the node's
    /// `NodeHandle::change` changes every shard). `None` once the session
    /// has ended.
    pub fn server(&self) -> Option<Rc<LiveServer>> {
        self.peer.server()
    }

    /// Announces that the resource at `uri` changed: every session that
    /// subscribed to it, on any shard, gets `notifications/resources/updated`.
    pub fn resource_updated(&self, uri: &str) {
        self.peer.resource_updated(uri);
    }

    /// Closes the SSE stream this call answers on while the call goes on;
    /// the client resumes it with `Last-Event-ID` and gets the rest,
    /// answer included (see [`Peer::close_stream`]).
    pub async fn close_stream(&self) {
        self.peer.close_stream().await;
    }

    /// The client's roots (`roots/list`).
    pub async fn list_roots(&self) -> Result<Value, RpcError> {
        self.peer.request("roots/list", json!({})).await
    }

    /// Whether the client asked for progress (sent a progress token).
    pub fn wants_progress(&self) -> bool {
        self.progress_token.is_some()
    }

    /// Sends `notifications/progress` when the client asked for progress.
    /// Progress must grow: a value not above the last one is not sent.
    pub async fn progress(&self, progress: f64, total: Option<f64>, message: Option<&str>) {
        let Some(token) = &self.progress_token else {
            return;
        };
        if self
            .last_progress
            .get()
            .is_some_and(|last| progress <= last)
        {
            return;
        }
        self.last_progress.set(Some(progress));
        let mut params = json!({"progressToken": token, "progress": progress});
        if let Some(total) = total {
            params["total"] = json!(total);
        }
        if let Some(message) = message {
            params["message"] = Value::String(message.to_string());
        }
        self.peer.notify("notifications/progress", params).await;
    }

    /// Completes when the client cancels this call; a long handler selects on it.
    pub async fn cancelled(&self) {
        self.cancel.wait().await
    }

    /// The request's cancellation signal itself (for the circuit breaker,
    /// which must tell a cancelled call from a failed one).
    pub(crate) fn cancel_signal(&self) -> crate::sync::Event {
        self.cancel.clone()
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_set()
    }

    /// A string argument (already checked against the schema).
    pub fn str_arg(&self, name: &str) -> Option<&str> {
        self.arguments.get(name).and_then(Value::as_str)
    }

    pub fn f64_arg(&self, name: &str) -> Option<f64> {
        self.arguments.get(name).and_then(Value::as_f64)
    }
}

pub type ToolFuture = Pin<Box<dyn Future<Output = Result<ToolResult, ToolError>>>>;
pub type ToolHandler = Rc<dyn Fn(ToolCall) -> ToolFuture>;

/// Whether a tool may run as a task (2025-11-25 `execution.taskSupport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskSupport {
    /// Never as a task (the default).
    #[default]
    Forbidden,
    /// As a task when the client asks for one.
    Optional,
    /// Only as a task.
    Required,
}

impl TaskSupport {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskSupport::Forbidden => "forbidden",
            TaskSupport::Optional => "optional",
            TaskSupport::Required => "required",
        }
    }
}

/// A tool as served: metadata, compiled schemas, handler.
pub struct Tool {
    pub name: String,
    pub title: Option<String>,
    pub description: String,
    pub input_schema: Value,
    pub output_schema: Option<Value>,
    pub annotations: Option<Value>,
    pub task_support: TaskSupport,
    pub icons: Vec<Icon>,
    input_validator: jsonschema::Validator,
    output_validator: Option<jsonschema::Validator>,
    handler: ToolHandler,
}

/// Declares a tool; [`ToolBuilder::handler`] finishes it.
pub struct ToolBuilder {
    name: String,
    title: Option<String>,
    description: String,
    input_schema: Value,
    output_schema: Option<Value>,
    annotations: Option<Value>,
    task_support: TaskSupport,
    icons: Vec<Icon>,
}

impl Tool {
    /// A tool that takes no arguments until `input_schema` says otherwise.
    pub fn builder(name: &str, description: &str) -> ToolBuilder {
        ToolBuilder {
            name: name.to_string(),
            title: None,
            description: description.to_string(),
            input_schema: json!({"type": "object"}),
            output_schema: None,
            annotations: None,
            task_support: TaskSupport::Forbidden,
            icons: Vec::new(),
        }
    }

    /// The `tools/list` entry.
    pub fn descriptor(&self) -> Value {
        let mut out = Map::new();
        out.insert("name".into(), Value::String(self.name.clone()));
        if let Some(title) = &self.title {
            out.insert("title".into(), Value::String(title.clone()));
        }
        out.insert(
            "description".into(),
            Value::String(self.description.clone()),
        );
        out.insert("inputSchema".into(), self.input_schema.clone());
        if let Some(schema) = &self.output_schema {
            out.insert("outputSchema".into(), schema.clone());
        }
        if let Some(annotations) = &self.annotations {
            out.insert("annotations".into(), annotations.clone());
        }
        if self.task_support != TaskSupport::Forbidden {
            out.insert(
                "execution".into(),
                json!({"taskSupport": self.task_support.as_str()}),
            );
        }
        insert_icons(&mut out, &self.icons);
        Value::Object(out)
    }

    /// Checks arguments against the input schema: -32602 with the
    /// validator's messages when they do not fit.
    pub fn check_arguments(&self, arguments: &Value) -> Result<(), RpcError> {
        // The common case, valid arguments, without the error iterator's
        // allocations.
        if self.input_validator.is_valid(arguments) {
            return Ok(());
        }
        let problems: Vec<String> = self
            .input_validator
            .iter_errors(arguments)
            .take(8)
            .map(|error| {
                let at = error.instance_path.to_string();
                if at.is_empty() {
                    error.to_string()
                } else {
                    format!("{at}: {error}")
                }
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(RpcError::invalid_params(format!(
                "invalid arguments for tool {}: {}",
                self.name,
                problems.join("; ")
            )))
        }
    }

    /// Checks a result against the output schema, if the tool declares one.
    pub fn check_result(&self, result: &ToolResult) -> Result<(), RpcError> {
        let Some(validator) = &self.output_validator else {
            return Ok(());
        };
        if result.is_error {
            return Ok(());
        }
        let Some(structured) = &result.structured_content else {
            return Err(RpcError::internal(format!(
                "tool {} declares an outputSchema but returned no structuredContent",
                self.name
            )));
        };
        validator.validate(structured).map_err(|error| {
            RpcError::internal(format!(
                "tool {} returned structuredContent that does not fit its outputSchema: {error}",
                self.name
            ))
        })
    }

    pub fn call(&self, call: ToolCall) -> ToolFuture {
        (self.handler)(call)
    }
}

impl ToolBuilder {
    pub fn title(mut self, title: &str) -> Self {
        self.title = Some(title.to_string());
        self
    }

    /// The JSON Schema (2020-12 unless it says otherwise) of the arguments object.
    pub fn input_schema(mut self, schema: Value) -> Self {
        self.input_schema = schema;
        self
    }

    /// The schema of `structuredContent`; a tool with one must return it.
    pub fn output_schema(mut self, schema: Value) -> Self {
        self.output_schema = Some(schema);
        self
    }

    /// Hints such as `readOnlyHint`, `destructiveHint`, `idempotentHint`.
    pub fn annotations(mut self, annotations: Value) -> Self {
        self.annotations = Some(annotations);
        self
    }

    /// Lets clients run the tool as a task (2025-11-25 tasks).
    pub fn task_support(mut self, support: TaskSupport) -> Self {
        self.task_support = support;
        self
    }

    /// An icon a client may show for the tool (at most
    /// [`ICONS_MAX`](super::ICONS_MAX), checked by [`ToolBuilder::handler`]).
    pub fn icon(mut self, icon: Icon) -> Self {
        self.icons.push(icon);
        self
    }

    /// Finishes the tool with its handler, compiling its schemas.
    pub fn handler<F, Fut>(self, handler: F) -> Result<Tool, ServerError>
    where
        F: Fn(ToolCall) -> Fut + 'static,
        Fut: Future<Output = Result<ToolResult, ToolError>> + 'static,
    {
        if self.name.is_empty() || self.name.len() > 128 {
            return Err(ServerError::InvalidName(self.name));
        }
        check_icons(&self.name, &self.icons)?;
        if self.input_schema.get("type").and_then(Value::as_str) != Some("object") {
            return Err(ServerError::InvalidSchema {
                tool: self.name,
                reason: "inputSchema must have \"type\": \"object\"".into(),
            });
        }
        let compile = |schema: &Value, which: &str| {
            jsonschema::validator_for(schema).map_err(|error| ServerError::InvalidSchema {
                tool: self.name.clone(),
                reason: format!("{which}: {error}"),
            })
        };
        let input_validator = compile(&self.input_schema, "inputSchema")?;
        let output_validator = match &self.output_schema {
            Some(schema) => Some(compile(schema, "outputSchema")?),
            None => None,
        };
        Ok(Tool {
            name: self.name,
            title: self.title,
            description: self.description,
            input_schema: self.input_schema,
            output_schema: self.output_schema,
            annotations: self.annotations,
            task_support: self.task_support,
            icons: self.icons,
            input_validator,
            output_validator,
            handler: Rc::new(move |call| Box::pin(handler(call))),
        })
    }
}
