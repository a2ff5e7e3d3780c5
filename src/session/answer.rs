//! The JSON-RPC 2.0 envelope checks and `ping`, the part of MCP every session
//! answers before the protocol layer adds the rest.

use bytes::Bytes;
use serde_json::{json, Value};

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;

/// Answers one message; `None` for a notification (nothing to send back).
pub fn answer(message: &[u8]) -> Option<Bytes> {
    let value: Value = match serde_json::from_slice(message) {
        Ok(value) => value,
        Err(error) => {
            return Some(error_reply(
                Value::Null,
                PARSE_ERROR,
                &format!("parse error: {error}"),
            ))
        }
    };
    let Some(object) = value.as_object() else {
        return Some(error_reply(
            Value::Null,
            INVALID_REQUEST,
            "a message must be a JSON object",
        ));
    };
    let id = match object.get("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id.clone()),
        Some(_) => {
            return Some(error_reply(
                Value::Null,
                INVALID_REQUEST,
                "id must be a string or a number",
            ))
        }
    };
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Some(error_reply(
            id.unwrap_or(Value::Null),
            INVALID_REQUEST,
            "jsonrpc must be \"2.0\"",
        ));
    }
    let Some(method) = object.get("method").and_then(Value::as_str) else {
        return Some(error_reply(
            id.unwrap_or(Value::Null),
            INVALID_REQUEST,
            "method must be a string",
        ));
    };
    let id = id?; // a notification: no reply
    match method {
        "ping" => Some(to_bytes(&json!({"jsonrpc": "2.0", "id": id, "result": {}}))),
        other => Some(error_reply(
            id,
            METHOD_NOT_FOUND,
            &format!("method not found: {other}"),
        )),
    }
}

fn error_reply(id: Value, code: i64, message: &str) -> Bytes {
    to_bytes(&json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}))
}

fn to_bytes(value: &Value) -> Bytes {
    Bytes::from(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(message: &str) -> Value {
        serde_json::from_slice(&answer(message.as_bytes()).expect("a reply")).unwrap()
    }

    #[test]
    fn ping_echoes_string_and_integer_ids_exactly() {
        assert_eq!(
            reply(r#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#),
            json!({"jsonrpc":"2.0","id":7,"result":{}})
        );
        assert_eq!(
            reply(r#"{"jsonrpc":"2.0","id":"a-1","method":"ping"}"#)["id"],
            "a-1"
        );
    }

    #[test]
    fn bad_input_gets_the_standard_codes() {
        assert_eq!(reply("{not json")["error"]["code"], PARSE_ERROR);
        assert_eq!(reply("[1]")["error"]["code"], INVALID_REQUEST);
        assert_eq!(
            reply(r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#)["error"]["code"],
            INVALID_REQUEST
        );
        assert_eq!(
            reply(r#"{"jsonrpc":"2.0","id":1}"#)["error"]["code"],
            INVALID_REQUEST
        );
        assert_eq!(
            reply(r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#)["error"]["code"],
            INVALID_REQUEST
        );
        let unknown = reply(r#"{"jsonrpc":"2.0","id":3,"method":"nope"}"#);
        assert_eq!(
            (unknown["id"].clone(), unknown["error"]["code"].clone()),
            (json!(3), json!(METHOD_NOT_FOUND))
        );
    }

    #[test]
    fn notifications_get_no_reply() {
        assert!(answer(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).is_none());
    }
}
