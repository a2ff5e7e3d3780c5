//! What a JSON-RPC message from the server means to the request that waits
//! for it: our response (a result, a tool error, an error code), a
//! notification, or a request from the server.

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::stats::ErrorKind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The response to the request with our id.
    Response(Outcome),
    /// A response to some other id (not ours; ignored).
    OtherResponse,
    Notification,
    /// A request from the server (sampling, elicitation, roots...).
    ServerRequest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A result; `protocol_version` is set on an initialize result.
    Result {
        protocol_version: Option<String>,
    },
    Failed(ErrorKind),
}

#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    method: Option<IgnoredAny>,
    #[serde(default)]
    result: Option<ResultFields>,
    #[serde(default)]
    error: Option<ErrorFields>,
}

#[derive(Deserialize)]
struct ResultFields {
    #[serde(default, rename = "isError")]
    is_error: Option<bool>,
    #[serde(default, rename = "protocolVersion")]
    protocol_version: Option<String>,
}

#[derive(Deserialize)]
struct ErrorFields {
    code: i64,
}

/// A message from the server, whatever request it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A response; `id` is None unless it is an integer (ours always are).
    Response {
        id: Option<u64>,
        outcome: Outcome,
    },
    Notification,
    ServerRequest,
}

/// Classifies one message against the request `id` we wait for. Err when
/// the bytes are not a JSON-RPC message at all.
pub fn classify(bytes: &[u8], id: u64) -> Result<Frame, ErrorKind> {
    Ok(match classify_incoming(bytes)? {
        Incoming::Response {
            id: Some(answered),
            outcome,
        } if answered == id => Frame::Response(outcome),
        Incoming::Response { .. } => Frame::OtherResponse,
        Incoming::Notification => Frame::Notification,
        Incoming::ServerRequest => Frame::ServerRequest,
    })
}

/// Classifies one message on its own (a stream carrying the answers of
/// many requests, as legacy HTTP+SSE does).
pub fn classify_incoming(bytes: &[u8]) -> Result<Incoming, ErrorKind> {
    let wire: Wire = serde_json::from_slice(bytes).map_err(|_| ErrorKind::BadResponse)?;
    match (wire.method.is_some(), &wire.id) {
        (true, None) => return Ok(Incoming::Notification),
        (true, Some(_)) => return Ok(Incoming::ServerRequest),
        _ => {}
    }
    let id = wire.id.as_ref().and_then(serde_json::Value::as_u64);
    let outcome = match (wire.result, wire.error) {
        (_, Some(error)) => Outcome::Failed(ErrorKind::Rpc(error.code)),
        (Some(result), None) if result.is_error == Some(true) => {
            Outcome::Failed(ErrorKind::ToolError)
        }
        (Some(result), None) => Outcome::Result {
            protocol_version: result.protocol_version,
        },
        (None, None) => return Err(ErrorKind::BadResponse),
    };
    Ok(Incoming::Response { id, outcome })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_classified_against_our_id() {
        let ok = |v: Option<&str>| {
            Ok(Frame::Response(Outcome::Result {
                protocol_version: v.map(str::to_string),
            }))
        };
        assert_eq!(
            classify(br#"{"jsonrpc":"2.0","id":7,"result":{}}"#, 7),
            ok(None)
        );
        assert_eq!(
            classify(
                br#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25","capabilities":{}}}"#,
                1
            ),
            ok(Some("2025-11-25"))
        );
        assert_eq!(
            classify(
                br#"{"jsonrpc":"2.0","id":7,"result":{"content":[],"isError":true}}"#,
                7
            ),
            Ok(Frame::Response(Outcome::Failed(ErrorKind::ToolError)))
        );
        assert_eq!(
            classify(
                br#"{"jsonrpc":"2.0","id":7,"error":{"code":-32602,"message":"x"}}"#,
                7
            ),
            Ok(Frame::Response(Outcome::Failed(ErrorKind::Rpc(-32602))))
        );
        assert_eq!(
            classify(br#"{"jsonrpc":"2.0","id":8,"result":{}}"#, 7),
            Ok(Frame::OtherResponse)
        );
        assert_eq!(
            classify(br#"{"jsonrpc":"2.0","id":"7","result":{}}"#, 7),
            Ok(Frame::OtherResponse)
        );
        assert_eq!(
            classify(
                br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#,
                7
            ),
            Ok(Frame::Notification)
        );
        assert_eq!(
            classify(br#"{"jsonrpc":"2.0","id":1,"method":"roots/list"}"#, 1),
            Ok(Frame::ServerRequest)
        );
        assert_eq!(classify(b"not json", 7), Err(ErrorKind::BadResponse));
        assert_eq!(
            classify_incoming(
                br#"{"jsonrpc":"2.0","id":12,"error":{"code":-32601,"message":"x"}}"#
            ),
            Ok(Incoming::Response {
                id: Some(12),
                outcome: Outcome::Failed(ErrorKind::Rpc(-32601))
            })
        );
        assert_eq!(
            classify(br#"{"jsonrpc":"2.0","id":7}"#, 7),
            Err(ErrorKind::BadResponse)
        );
    }
}
