//! JSON-RPC 2.0: decoding with simd-json, encoding, ids echoed exactly.
//!
//! Decoding first parses the bytes (failure: -32700) and then checks the
//! envelope (failure: -32600 naming what is wrong), so a client always learns
//! which of the two it got wrong. Batches are decoded here; whether a session
//! may send them (only 2025-03-26 allows it) is decided by the session.

mod error;

use std::cell::RefCell;
use std::fmt;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

pub use error::*;

/// A request id, echoed back exactly as it came (string or integer).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Id {
    Str(Box<str>),
    Int(i64),
    /// Integers above i64::MAX that still fit in u64.
    Uint(u64),
}

impl Id {
    pub fn to_value(&self) -> Value {
        match self {
            Id::Str(s) => Value::String(s.to_string()),
            Id::Int(n) => Value::from(*n),
            Id::Uint(n) => Value::from(*n),
        }
    }

    fn from_value(value: &Value) -> Option<Id> {
        match value {
            Value::String(s) => Some(Id::Str(s.as_str().into())),
            Value::Number(n) => n.as_i64().map(Id::Int).or_else(|| n.as_u64().map(Id::Uint)),
            _ => None,
        }
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Str(s) => write!(f, "{s:?}"),
            Id::Int(n) => write!(f, "{n}"),
            Id::Uint(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Id::Str(s) => serializer.serialize_str(s),
            Id::Int(n) => serializer.serialize_i64(*n),
            Id::Uint(n) => serializer.serialize_u64(*n),
        }
    }
}

/// One decoded JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Request {
        id: Id,
        method: String,
        params: Option<Value>,
    },
    Notification {
        method: String,
        params: Option<Value>,
    },
    /// A response to a request the server sent (sampling, elicitation, roots).
    Response {
        id: Id,
        result: Value,
    },
    ErrorResponse {
        id: Option<Id>,
        error: RpcError,
    },
}

impl Message {
    pub fn method(&self) -> Option<&str> {
        match self {
            Message::Request { method, .. } | Message::Notification { method, .. } => Some(method),
            _ => None,
        }
    }
}

/// What one incoming frame held.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Single(Message),
    /// Each entry decoded on its own: one bad entry does not spoil the rest.
    Batch(Vec<Result<Message, Refusal>>),
}

/// A message that could not be accepted, with the id to answer (if any could
/// be read) and the error to answer with.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub id: Option<Id>,
    pub error: RpcError,
}

impl Refusal {
    fn new(id: Option<Id>, error: RpcError) -> Self {
        Refusal { id, error }
    }
}

thread_local! {
    // simd-json parses in place and wants scratch buffers: one set per shard.
    static SCRATCH: RefCell<(Vec<u8>, simd_json::Buffers)> =
        RefCell::new((Vec::new(), simd_json::Buffers::default()));
}

/// Decodes one frame. `max_bytes` bounds the frame; past it the frame is
/// refused without being parsed.
pub fn decode(frame: &[u8], max_bytes: usize) -> Result<Incoming, Refusal> {
    if frame.len() > max_bytes {
        return Err(Refusal::new(
            None,
            RpcError::invalid_request(format!(
                "message of {} bytes exceeds the limit of {max_bytes} bytes",
                frame.len()
            )),
        ));
    }
    if too_deep(frame) {
        return Err(Refusal::new(
            None,
            RpcError::parse_error(format!("arrays and objects nested deeper than {DEPTH_MAX}")),
        ));
    }
    let value = parse(frame).map_err(|error| Refusal::new(None, RpcError::parse_error(error)))?;
    match value {
        Value::Array(entries) => {
            if entries.is_empty() {
                return Err(Refusal::new(None, RpcError::invalid_request("empty batch")));
            }
            Ok(Incoming::Batch(entries.into_iter().map(classify).collect()))
        }
        other => classify(other).map(Incoming::Single),
    }
}

/// Deepest nesting of arrays and objects a frame may have (serde_json's
/// own bound when it parses). The JSON tree is built recursively: unbounded,
/// a frame of a few hundred KB of `[` overflows the shard's stack and takes
/// the process down (a hand-made input to fuzz/jsonrpc_decode showed it).
pub const DEPTH_MAX: usize = 128;

/// Whether `frame` nests arrays and objects deeper than [`DEPTH_MAX`]
/// (brackets inside strings do not count). One pass, before parsing.
fn too_deep(frame: &[u8]) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in frame {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > DEPTH_MAX {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn parse(frame: &[u8]) -> Result<Value, simd_json::Error> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let (bytes, buffers) = &mut *scratch;
        bytes.clear();
        bytes.extend_from_slice(frame);
        simd_json::serde::from_slice_with_buffers(bytes, buffers)
    })
}

/// Checks one value against the JSON-RPC 2.0 envelope.
fn classify(value: Value) -> Result<Message, Refusal> {
    let Value::Object(mut object) = value else {
        return Err(Refusal::new(
            None,
            RpcError::invalid_request("a message must be a JSON object"),
        ));
    };
    let id = match object.remove("id") {
        None => None,
        // The parsed string becomes the id as it is, without a copy.
        Some(Value::String(id)) => Some(Id::Str(id.into_boxed_str())),
        Some(raw) => match Id::from_value(&raw) {
            Some(id) => Some(id),
            None if raw.is_null() && object.contains_key("error") => None,
            None => {
                return Err(Refusal::new(
                    None,
                    RpcError::invalid_request("id must be a string or an integer"),
                ))
            }
        },
    };
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(Refusal::new(
            id,
            RpcError::invalid_request("jsonrpc must be exactly \"2.0\""),
        ));
    }
    if let Some(method) = object.remove("method") {
        let Value::String(method) = method else {
            return Err(Refusal::new(
                id,
                RpcError::invalid_request("method must be a string"),
            ));
        };
        let params = match object.remove("params") {
            None => None,
            Some(params @ (Value::Object(_) | Value::Array(_))) => Some(params),
            Some(Value::Null) => None,
            Some(_) => {
                return Err(Refusal::new(
                    id,
                    RpcError::invalid_request("params must be an object or an array"),
                ))
            }
        };
        return Ok(match id {
            Some(id) => Message::Request { id, method, params },
            None => Message::Notification { method, params },
        });
    }
    if let Some(error) = object.remove("error") {
        return Ok(Message::ErrorResponse {
            id,
            error: error_object(&error),
        });
    }
    match (id, object.remove("result")) {
        (Some(id), Some(result)) => Ok(Message::Response { id, result }),
        (id, _) => Err(Refusal::new(
            id,
            RpcError::invalid_request("a message needs a method, a result or an error"),
        )),
    }
}

fn error_object(error: &Value) -> RpcError {
    let code = error
        .get("code")
        .and_then(Value::as_i64)
        .unwrap_or(INTERNAL_ERROR);
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    RpcError {
        code,
        message,
        data: error.get("data").cloned(),
    }
}

/// `{"jsonrpc":"2.0","id":…,"result":…}`
pub fn encode_result(id: &Id, result: &Value) -> Bytes {
    #[derive(Serialize)]
    struct Out<'a> {
        jsonrpc: &'static str,
        id: &'a Id,
        result: &'a Value,
    }
    to_bytes(&Out {
        jsonrpc: "2.0",
        id,
        result,
    })
}

/// `{"jsonrpc":"2.0","id":…|null,"error":{…}}`
pub fn encode_error(id: Option<&Id>, error: &RpcError) -> Bytes {
    #[derive(Serialize)]
    struct ErrorOut<'a> {
        code: i64,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<&'a Value>,
    }
    #[derive(Serialize)]
    struct Out<'a> {
        jsonrpc: &'static str,
        id: Option<&'a Id>,
        error: ErrorOut<'a>,
    }
    to_bytes(&Out {
        jsonrpc: "2.0",
        id,
        error: ErrorOut {
            code: error.code,
            message: &error.message,
            data: error.data.as_ref(),
        },
    })
}

/// A notification or a request from the server (`id: None` for a notification).
pub fn encode_request(id: Option<&Id>, method: &str, params: Option<&Value>) -> Bytes {
    #[derive(Serialize)]
    struct Out<'a> {
        jsonrpc: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Id>,
        method: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        params: Option<&'a Value>,
    }
    to_bytes(&Out {
        jsonrpc: "2.0",
        id,
        method,
        params,
    })
}

/// Joins encoded responses into one batch array.
pub fn encode_batch(parts: &[Bytes]) -> Bytes {
    let mut out = Vec::with_capacity(parts.iter().map(Bytes::len).sum::<usize>() + parts.len() + 1);
    out.push(b'[');
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(part);
    }
    out.push(b']');
    Bytes::from(out)
}

fn to_bytes<T: Serialize>(value: &T) -> Bytes {
    // Straight into a Vec: serialising through a reused per-shard buffer and
    // copying out saved an allocation but measured slower (benches/request_path.rs).
    match simd_json::to_vec(value) {
        Ok(bytes) => Bytes::from(bytes),
        // Serialising our own structs of strings and JSON values cannot fail;
        // answer with a fixed internal error rather than panic if it ever does.
        Err(_) => Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"cannot encode response"}}"#,
        ),
    }
}

/// A params object as a map (an absent `params` is an empty map).
pub fn params_object(params: Option<&Value>) -> Result<&Map<String, Value>, RpcError> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    match params {
        None => Ok(EMPTY.get_or_init(Map::new)),
        Some(Value::Object(map)) => Ok(map),
        Some(_) => Err(RpcError::invalid_params("params must be an object")),
    }
}

#[cfg(test)]
mod tests;
