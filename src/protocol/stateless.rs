//! The 2026-07-28 revision's per-request envelope (`params._meta`) and the
//! shape of its results (`resultType`, cacheable fields, `serverInfo`).

use serde_json::{json, Map, Value};

use super::jsonrpc::{RpcError, UNSUPPORTED_PROTOCOL_VERSION};
use super::logging::LogLevel;
use super::version::{HANDSHAKE_VERSIONS, STATELESS};

pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
pub const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
pub const META_SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// Modern versions served, newest first.
pub const STATELESS_VERSIONS: [&str; 1] = [STATELESS];

/// What one stateless request says about its client.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub version: String,
    pub client_capabilities: Value,
    pub client_info: Option<Value>,
    /// Set when the request opts into log messages.
    pub log_level: Option<LogLevel>,
    pub progress_token: Option<Value>,
}

/// Whether a request carries the modern envelope.
pub fn is_enveloped(params: Option<&Value>) -> bool {
    params
        .and_then(|p| p.get("_meta"))
        .and_then(|meta| meta.get(META_PROTOCOL_VERSION))
        .is_some()
}

/// Reads and checks the envelope: -32602 for a missing or malformed key,
/// -32022 for a version this server does not serve.
pub fn parse(params: Option<&Value>) -> Result<Envelope, RpcError> {
    let meta = params
        .and_then(|p| p.get("_meta"))
        .and_then(Value::as_object)
        .ok_or_else(|| RpcError::invalid_params("a 2026-07-28 request needs params._meta"))?;
    let version = meta
        .get(META_PROTOCOL_VERSION)
        .and_then(Value::as_str)
        .ok_or_else(|| {
            RpcError::invalid_params(format!(
                "params._meta needs {META_PROTOCOL_VERSION} (a string)"
            ))
        })?;
    if !STATELESS_VERSIONS.contains(&version) {
        return Err(unsupported_version(version));
    }
    let client_capabilities = match meta.get(META_CLIENT_CAPABILITIES) {
        Some(caps @ Value::Object(_)) => caps.clone(),
        _ => {
            return Err(RpcError::invalid_params(format!(
                "params._meta needs {META_CLIENT_CAPABILITIES} (an object)"
            )))
        }
    };
    let log_level = match meta.get(META_LOG_LEVEL) {
        None => None,
        Some(Value::String(level)) => Some(
            LogLevel::parse(level)
                .ok_or_else(|| RpcError::invalid_params(format!("unknown log level: {level}")))?,
        ),
        Some(_) => {
            return Err(RpcError::invalid_params(format!(
                "{META_LOG_LEVEL} must be a string"
            )))
        }
    };
    let progress_token = meta
        .get("progressToken")
        .filter(|token| token.is_string() || token.is_i64() || token.is_u64())
        .cloned();
    Ok(Envelope {
        version: version.to_string(),
        client_capabilities,
        client_info: meta.get(META_CLIENT_INFO).cloned(),
        log_level,
        progress_token,
    })
}

/// -32022 naming what is served. Handshake versions are listed too, so a
/// client with no modern version in common falls back to `initialize`.
pub fn unsupported_version(requested: &str) -> RpcError {
    let supported: Vec<&str> = STATELESS_VERSIONS
        .iter()
        .chain(HANDSHAKE_VERSIONS.iter())
        .copied()
        .collect();
    RpcError::new(
        UNSUPPORTED_PROTOCOL_VERSION,
        format!("protocol version {requested} is not supported"),
    )
    .with_data(json!({"supported": supported, "requested": requested}))
}

/// Marks a result complete, adds the server's identity, and for cacheable
/// results the freshness fields (stale at once, private to this client).
pub fn complete(mut result: Value, server_info: Value, cacheable: bool) -> Value {
    if let Value::Object(map) = &mut result {
        map.insert("resultType".into(), Value::String("complete".into()));
        if cacheable {
            map.insert("ttlMs".into(), Value::from(0));
            map.insert("cacheScope".into(), Value::String("private".into()));
        }
        add_server_info(map, server_info);
    }
    result
}

/// An `InputRequiredResult`: what the server needs, and the state to echo.
pub fn input_required(
    input_requests: Map<String, Value>,
    request_state: String,
    server_info: Value,
) -> Value {
    let mut map = Map::new();
    map.insert("resultType".into(), Value::String("input_required".into()));
    map.insert("inputRequests".into(), Value::Object(input_requests));
    map.insert("requestState".into(), Value::String(request_state));
    add_server_info(&mut map, server_info);
    Value::Object(map)
}

fn add_server_info(map: &mut Map<String, Value>, server_info: Value) {
    let meta = map
        .entry("_meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(meta) = meta {
        meta.insert(META_SERVER_INFO.into(), server_info);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(meta: Value) -> Value {
        json!({"_meta": meta})
    }

    #[test]
    fn a_full_envelope_parses() {
        let params = meta(json!({
            META_PROTOCOL_VERSION: "2026-07-28",
            META_CLIENT_CAPABILITIES: {"elicitation": {"form": {}}},
            META_CLIENT_INFO: {"name": "c", "version": "1"},
            META_LOG_LEVEL: "warning",
            "progressToken": 3
        }));
        assert!(is_enveloped(Some(&params)));
        let envelope = parse(Some(&params)).unwrap();
        assert_eq!(envelope.log_level, Some(LogLevel::Warning));
        assert_eq!(envelope.progress_token, Some(json!(3)));
    }

    #[test]
    fn missing_or_bad_keys_are_32602_and_unknown_versions_32022() {
        assert_eq!(parse(None).unwrap_err().code, -32602);
        let no_caps = meta(json!({META_PROTOCOL_VERSION: "2026-07-28"}));
        assert_eq!(parse(Some(&no_caps)).unwrap_err().code, -32602);
        let bad_level = meta(
            json!({META_PROTOCOL_VERSION: "2026-07-28", META_CLIENT_CAPABILITIES: {}, META_LOG_LEVEL: "loud"}),
        );
        assert_eq!(parse(Some(&bad_level)).unwrap_err().code, -32602);
        let future =
            meta(json!({META_PROTOCOL_VERSION: "2099-01-01", META_CLIENT_CAPABILITIES: {}}));
        let error = parse(Some(&future)).unwrap_err();
        assert_eq!(error.code, -32022);
        let data = error.data.unwrap();
        assert_eq!(data["requested"], "2099-01-01");
        assert_eq!(data["supported"][0], "2026-07-28");
        assert!(data["supported"]
            .as_array()
            .unwrap()
            .contains(&json!("2025-11-25")));
    }

    #[test]
    fn results_are_marked_and_cacheable_ones_carry_freshness() {
        let info = json!({"name": "s", "version": "1"});
        let listed = complete(json!({"tools": []}), info.clone(), true);
        assert_eq!(listed["resultType"], "complete");
        assert_eq!(
            (listed["ttlMs"].clone(), listed["cacheScope"].clone()),
            (json!(0), json!("private"))
        );
        assert_eq!(listed["_meta"][META_SERVER_INFO], info);
        let called = complete(json!({"content": []}), info.clone(), false);
        assert!(called.get("ttlMs").is_none());
        let asked = input_required(Map::new(), "v1.x".into(), info);
        assert_eq!(asked["resultType"], "input_required");
        assert!(asked.get("ttlMs").is_none());
    }
}
