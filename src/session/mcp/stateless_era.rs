//! The 2026-07-28 stateless era: which era a request belongs to, the
//! enveloped dispatch, `server/discover`, `subscriptions/listen`, and
//! `InputRequiredResult` rounds (`StatelessPeer`).

use super::client::{announce_from, check_capability, notify_related};
use super::*;

impl McpSession {
    /// Which era a request belongs to. The first request fixes the era of a
    /// session: `initialize` the handshake era, an enveloped request the
    /// stateless one (as on stdio); the other era is refused afterwards.
    pub(super) fn era_of_request(
        &self,
        method: &str,
        params: Option<&Value>,
    ) -> Result<Era, RpcError> {
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

    pub(super) async fn dispatch_stateless(
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

    /// `tools/call` in the stateless era: when the handler asks the client
    /// for input it was not given, the answer is an `InputRequiredResult`
    /// round; the retry carries the answers and the sealed state.
    pub(super) async fn tools_call_stateless(
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
    pub(super) fn discover(&self) -> Value {
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
    pub(super) async fn listen(&self, id: &Id, params: Option<&Value>) -> Result<Value, RpcError> {
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

/// Milliseconds since the Unix epoch: request states must expire the same
/// way on every shard, so they use the wall clock.
pub(super) fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// The session as a stateless (2026-07-28) handler sees it: capabilities and
/// log level come with the request, and questions for the client become
/// input requests of an `InputRequiredResult`.
pub(super) struct StatelessPeer {
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
        notify_related(&self.session, &self.related, method, params)
    }

    fn log_enabled(&self, level: LogLevel) -> bool {
        self.log_level.is_some_and(|least| level >= least)
    }

    fn resource_updated(&self, uri: &str) {
        announce_from(&self.session, uri);
    }

    /// A 2026-07-28 call has no session to resume a stream in: its stream
    /// stays open until the answer.
    fn close_stream(&self) -> Pin<Box<dyn Future<Output = ()>>> {
        Box::pin(async {})
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

/// Ends a listen's interest however the listen ends.
pub(super) struct ForgetListen<'a> {
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
