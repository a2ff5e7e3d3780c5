//! JSON-RPC and MCP error codes: the only place codes are chosen.

use serde_json::Value;

/// Invalid JSON was received.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON sent is not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// The method does not exist or is not available.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid method parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// Internal error (a handler failed or panicked).
pub const INTERNAL_ERROR: i64 = -32603;
/// Server error range start (-32000..-32099 are implementation-defined).
pub const SERVER_ERROR: i64 = -32000;
/// MCP 2025-era "resource not found" (retired in 2026-07-28 for -32602).
pub const RESOURCE_NOT_FOUND: i64 = -32002;
/// MCP 2025-11-25 only: the request needs URL-mode elicitations completed
/// first (`data.elicitations`); retired in 2026-07-28.
pub const URL_ELICITATION_REQUIRED: i64 = -32042;
/// MCP 2026-07-28: a header is missing, malformed, duplicated or differs from the body.
pub const HEADER_MISMATCH: i64 = -32020;
/// MCP 2026-07-28: the request needs a client capability it did not declare.
pub const MISSING_REQUIRED_CLIENT_CAPABILITY: i64 = -32021;
/// MCP 2026-07-28: the protocol version is not served.
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} ({code})")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    pub fn parse_error(detail: impl std::fmt::Display) -> Self {
        Self::new(PARSE_ERROR, format!("parse error: {detail}"))
    }

    pub fn invalid_request(detail: impl Into<String>) -> Self {
        Self::new(INVALID_REQUEST, detail)
    }

    pub fn method_not_found(method: &str) -> Self {
        Self::new(METHOD_NOT_FOUND, format!("method not found: {method}"))
            .with_data(Value::String(method.to_string()))
    }

    pub fn invalid_params(detail: impl Into<String>) -> Self {
        Self::new(INVALID_PARAMS, detail)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(INTERNAL_ERROR, detail)
    }

    /// 2025-11-25 `URLElicitationRequiredError`: each of `elicitations` is
    /// an `elicitation/create` URL-mode params object with its `elicitationId`.
    pub fn url_elicitation_required(elicitations: Vec<Value>) -> Self {
        Self::new(
            URL_ELICITATION_REQUIRED,
            "This request requires more information.",
        )
        .with_data(serde_json::json!({"elicitations": elicitations}))
    }
}
