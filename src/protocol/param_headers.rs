//! `Mcp-Param-*` headers (2026-07-28, `x-mcp-header`): a tool may mark
//! arguments whose values a client mirrors into HTTP headers, so that
//! proxies can route on them without reading the body. The server checks
//! that each header equals its argument.
//!
//! Only `string`, `integer` and `boolean` properties reachable from the
//! schema's root through `properties` alone count. A value that is not plain
//! visible ASCII travels as `=?base64?<UTF-8 in base64>?=`.

use base64::Engine;
use serde_json::Value;

/// The header prefix; the token from the schema follows it.
pub const PREFIX: &str = "mcp-param-";

/// One argument mirrored into a header.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderParam {
    /// The header's token (`Mcp-Param-{token}`), compared ignoring case.
    pub token: String,
    /// The path of the argument from the arguments object's root.
    pub path: Vec<String>,
    pub kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    Integer,
    Boolean,
}

/// The mirrored arguments an input schema declares.
pub fn header_params(schema: &Value) -> Vec<HeaderParam> {
    let mut found = Vec::new();
    collect(schema, &mut Vec::new(), &mut found);
    found
}

fn collect(schema: &Value, path: &mut Vec<String>, found: &mut Vec<HeaderParam>) {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, property) in properties {
        path.push(name.clone());
        if let Some(token) = property.get("x-mcp-header").and_then(Value::as_str) {
            let kind = match property.get("type").and_then(Value::as_str) {
                Some("string") => Some(Kind::String),
                Some("integer") => Some(Kind::Integer),
                Some("boolean") => Some(Kind::Boolean),
                _ => None,
            };
            if let Some(kind) = kind {
                found.push(HeaderParam {
                    token: token.to_string(),
                    path: path.clone(),
                    kind,
                });
            }
        }
        collect(property, path, found);
        path.pop();
    }
}

/// Checks the request's `Mcp-Param-*` headers against its arguments:
/// every mirrored argument that is present (and not null) needs its header
/// with the same value, and no header may come without its argument.
/// `headers` are the request's (name, value) pairs.
pub fn check<'a>(
    params: &[HeaderParam],
    arguments: Option<&Value>,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), String> {
    let sent: Vec<(&str, &str)> = headers
        .into_iter()
        .filter_map(|(name, value)| {
            let prefixed = name
                .get(..PREFIX.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(PREFIX));
            prefixed.then(|| (&name[PREFIX.len()..], value))
        })
        .collect();
    for (token, _) in &sent {
        if !params.iter().any(|p| p.token.eq_ignore_ascii_case(token)) {
            return Err(format!(
                "Mcp-Param-{token} names no x-mcp-header argument of this tool"
            ));
        }
        if sent
            .iter()
            .filter(|(other, _)| other.eq_ignore_ascii_case(token))
            .count()
            > 1
        {
            return Err(format!("Mcp-Param-{token} is sent more than once"));
        }
    }
    for param in params {
        let argument = arguments
            .and_then(|root| {
                param
                    .path
                    .iter()
                    .try_fold(root, |value, key| value.get(key))
            })
            .filter(|value| !value.is_null());
        let header = sent
            .iter()
            .find(|(token, _)| token.eq_ignore_ascii_case(&param.token))
            .map(|(_, value)| *value);
        match (argument, header) {
            (None, None) => {}
            (None, Some(_)) => {
                return Err(format!(
                    "Mcp-Param-{} is sent but its argument is absent",
                    param.token
                ))
            }
            (Some(_), None) => {
                return Err(format!(
                    "Mcp-Param-{} is missing for argument {}",
                    param.token,
                    param.path.join(".")
                ))
            }
            (Some(argument), Some(header)) => {
                if !matches(param.kind, argument, &decode(header)?) {
                    return Err(format!(
                        "Mcp-Param-{} does not equal argument {}",
                        param.token,
                        param.path.join(".")
                    ));
                }
            }
        }
    }
    Ok(())
}

fn matches(kind: Kind, argument: &Value, header: &str) -> bool {
    match kind {
        Kind::String => argument.as_str() == Some(header),
        Kind::Boolean => argument.as_bool().map(|b| b.to_string()).as_deref() == Some(header),
        // Integers compare as numbers ("007" names 7).
        Kind::Integer => match (argument.as_i64(), header.trim().parse::<i64>()) {
            (Some(a), Ok(h)) => a == h,
            _ => match (argument.as_u64(), header.trim().parse::<u64>()) {
                (Some(a), Ok(h)) => a == h,
                _ => false,
            },
        },
    }
}

/// A header value as its sender meant it: `=?base64?…?=` decoded.
fn decode(value: &str) -> Result<String, String> {
    let Some(encoded) = value
        .strip_prefix("=?base64?")
        .and_then(|rest| rest.strip_suffix("?="))
    else {
        return Ok(value.to_string());
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|error| format!("a =?base64?…?= header value does not decode: {error}"))?;
    String::from_utf8(bytes).map_err(|_| "a =?base64?…?= header value is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "region": {"type": "string", "x-mcp-header": "Region"},
                "count": {"type": "integer", "x-mcp-header": "Count"},
                "dry": {"type": "boolean", "x-mcp-header": "Dry"},
                "ratio": {"type": "number", "x-mcp-header": "Ratio"},
                "target": {"type": "object", "properties": {
                    "zone": {"type": "string", "x-mcp-header": "Zone"}
                }},
                "plain": {"type": "string"}
            }
        })
    }

    fn pairs(headers: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> {
        headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn finds_only_scalar_properties_reachable_through_properties() {
        let params = header_params(&schema());
        let mut tokens: Vec<&str> = params.iter().map(|p| p.token.as_str()).collect();
        tokens.sort();
        assert_eq!(
            tokens,
            ["Count", "Dry", "Region", "Zone"],
            "numbers never count"
        );
        let zone = params.iter().find(|p| p.token == "Zone").unwrap();
        assert_eq!(zone.path, ["target", "zone"]);
    }

    #[test]
    fn headers_must_mirror_their_arguments() {
        let params = header_params(&schema());
        let arguments = json!({"region": "eu", "count": 7, "dry": true, "target": {"zone": "b"}});
        let good = headers(&[
            ("Mcp-Param-Region", "eu"),
            ("mcp-param-count", "007"),
            ("MCP-PARAM-DRY", "true"),
            ("Mcp-Param-Zone", "b"),
            ("Mcp-Method", "tools/call"),
        ]);
        assert_eq!(check(&params, Some(&arguments), pairs(&good)), Ok(()));
        let wrong = headers(&[
            ("Mcp-Param-Region", "us"),
            ("Mcp-Param-Count", "7"),
            ("Mcp-Param-Dry", "true"),
            ("Mcp-Param-Zone", "b"),
        ]);
        assert!(check(&params, Some(&arguments), pairs(&wrong))
            .unwrap_err()
            .contains("Region does not equal"));
        let missing = headers(&[("Mcp-Param-Region", "eu")]);
        assert!(check(&params, Some(&arguments), pairs(&missing))
            .unwrap_err()
            .contains("missing"));
        let extra = headers(&[("Mcp-Param-Region", "eu")]);
        assert!(check(&params, Some(&json!({})), pairs(&extra))
            .unwrap_err()
            .contains("argument is absent"));
        let unknown = headers(&[("Mcp-Param-Nope", "x")]);
        assert!(check(&params, None, pairs(&unknown))
            .unwrap_err()
            .contains("names no x-mcp-header"));
        let twice = headers(&[("Mcp-Param-Region", "eu"), ("mcp-param-region", "eu")]);
        assert!(
            check(&params, Some(&json!({"region": "eu"})), pairs(&twice))
                .unwrap_err()
                .contains("more than once")
        );
        // A null argument needs no header.
        assert_eq!(check(&params, Some(&json!({"region": null})), []), Ok(()));
    }

    #[test]
    fn base64_values_are_decoded_before_comparing() {
        let params = header_params(&schema());
        let arguments = json!({"region": "zürich "});
        let encoded = format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode("zürich ")
        );
        let sent = headers(&[("Mcp-Param-Region", &encoded)]);
        assert_eq!(check(&params, Some(&arguments), pairs(&sent)), Ok(()));
        let broken = headers(&[("Mcp-Param-Region", "=?base64?***?=")]);
        assert!(check(&params, Some(&arguments), pairs(&broken))
            .unwrap_err()
            .contains("does not decode"));
    }
}
