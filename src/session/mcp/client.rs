//! Requests from this server to the client (sampling, elicitation, roots) in
//! the handshake era, the handler's view of the session (`RequestPeer`), and
//! resource-change announcements.

use super::*;

impl McpSession {
    pub(super) fn announce_resource_updated(&self, uri: &str) {
        let hook = self.update_hook.borrow().clone();
        match hook {
            Some(hook) => hook(uri),
            // No runtime around (a bare session): only this session hears it.
            None => self.deliver_resource_updated(uri),
        }
    }

    /// Sends a request to the client and waits for its answer (see
    /// [`Peer::request`]).
    pub(super) async fn request_client(
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

    pub(super) fn check_client_capability(
        &self,
        method: &str,
        params: &Value,
    ) -> Result<(), RpcError> {
        check_capability(
            &self.client_capabilities().unwrap_or(Value::Null),
            method,
            params,
        )
    }

    pub(super) fn answer_client_request(&self, id: &Id, answer: Result<Value, RpcError>) {
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
}

/// The session as a handler sees it during one request.
pub(super) struct RequestPeer {
    pub(super) session: Weak<McpSession>,
    pub(super) related: Id,
}

impl Peer for RequestPeer {
    fn notify(&self, method: &'static str, params: Value) -> Pin<Box<dyn Future<Output = ()>>> {
        notify_related(&self.session, &self.related, method, params)
    }

    fn log_enabled(&self, level: LogLevel) -> bool {
        self.session
            .upgrade()
            .is_some_and(|session| level >= session.log_level.get())
    }

    fn resource_updated(&self, uri: &str) {
        announce_from(&self.session, uri);
    }

    fn close_stream(&self) -> Pin<Box<dyn Future<Output = ()>>> {
        let session = self.session.clone();
        let related = self.related.clone();
        Box::pin(async move {
            if let Some(session) = session.upgrade() {
                session.push(OutFrame::close_stream(related)).await;
            }
        })
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

/// Queues a notification about request `related`, if its session still lives
/// (waits while the outbox is full).
pub(super) fn notify_related(
    session: &Weak<McpSession>,
    related: &Id,
    method: &'static str,
    params: Value,
) -> Pin<Box<dyn Future<Output = ()>>> {
    let session = session.clone();
    let related = related.clone();
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

/// Announces a changed resource through the session's hook, if it still lives.
pub(super) fn announce_from(session: &Weak<McpSession>, uri: &str) {
    if let Some(session) = session.upgrade() {
        session.announce_resource_updated(uri);
    }
}

/// The client must have declared the capability a request to it needs.
pub(super) fn check_capability(
    capabilities: &Value,
    method: &str,
    params: &Value,
) -> Result<(), RpcError> {
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
