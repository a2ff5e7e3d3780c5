//! The server features as methods: tools, resources, prompts, completion,
//! logging level, and the list paging they share.

use super::client::RequestPeer;
use super::*;

impl McpSession {
    /// One page of one of the server's lists, each entry by `descriptor`.
    pub(super) fn list<T>(
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

    pub(super) fn tools_list(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        self.list("tools", params, self.server().tools(), Tool::descriptor)
    }

    pub(super) fn resources_list(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        self.list(
            "resources",
            params,
            self.server().resources(),
            Resource::descriptor,
        )
    }

    pub(super) fn templates_list(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        self.list(
            "resourceTemplates",
            params,
            self.server().templates(),
            ResourceTemplate::descriptor,
        )
    }

    pub(super) fn prompts_list(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        self.list(
            "prompts",
            params,
            self.server().prompts(),
            Prompt::descriptor,
        )
    }

    pub(super) async fn resources_read(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let uri = required_str(params, "uri", "resources/read")?;
        let server = self.server();
        let read = if let Some(resource) = server.resource(uri) {
            resource.read()
        } else {
            let matched = server
                .templates()
                .iter()
                .find_map(|template| template.matches(uri).map(|vars| (template.clone(), vars)));
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

    pub(super) fn knows_resource(&self, uri: &str) -> bool {
        let server = self.server();
        server.resource(uri).is_some()
            || server
                .templates()
                .iter()
                .any(|template| template.matches(uri).is_some())
    }

    pub(super) fn subscribe(&self, params: Option<&Value>, on: bool) -> Result<Value, RpcError> {
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

    pub(super) async fn prompts_get(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let name = required_str(params, "name", "prompts/get")?;
        let prompt = self
            .server()
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

    pub(super) fn complete(&self, params: Option<&Value>) -> Result<Value, RpcError> {
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
                let prompt = self.server().prompt(prompt_name).cloned().ok_or_else(|| {
                    RpcError::invalid_params(format!("unknown prompt: {prompt_name}"))
                })?;
                prompt.completer.clone()
            }
            Some("ref/resource") => {
                let uri = reference
                    .get("uri")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let template = self.server().template(uri).cloned().ok_or_else(|| {
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

    pub(super) fn set_level(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let level = required_str(params, "level", "logging/setLevel")?;
        let level = LogLevel::parse(level)
            .ok_or_else(|| RpcError::invalid_params(format!("unknown log level: {level}")))?;
        self.log_level.set(level);
        Ok(json!({}))
    }

    /// The tool and its checked arguments for a `tools/call`.
    pub(super) fn tool_call_target(
        &self,
        params: &Map<String, Value>,
    ) -> Result<(Rc<Tool>, Map<String, Value>), RpcError> {
        let name = params
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| RpcError::invalid_params("tools/call needs params.name (a string)"))?;
        let tool = self
            .server()
            .tool(name)
            .cloned()
            .ok_or_else(|| RpcError::invalid_params(format!("unknown tool: {name}")))?;
        let none = Value::Object(Map::new());
        let arguments = match params.get("arguments") {
            None | Some(Value::Null) => &none,
            Some(arguments @ Value::Object(_)) => arguments,
            Some(_) => {
                return Err(RpcError::invalid_params(
                    "params.arguments must be an object",
                ))
            }
        };
        // Checked where they lie: the handler's copy is the only one made.
        tool.check_arguments(arguments)?;
        Ok((tool, arguments.as_object().cloned().unwrap_or_default()))
    }

    pub(super) async fn tools_call(
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
                return self
                    .run_tool_handshake(
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
            let outcome = session.run_tool_handshake(&tool, call).await;
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
}
