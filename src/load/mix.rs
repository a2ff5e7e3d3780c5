//! The operation mix: which requests a session sends, and how often.
//!
//! Syntax (also in `shardmcp load --help`): comma-separated entries
//! `OP[=WEIGHT]`. Commas, colons and `=` inside a JSON argument object do not
//! split anything; a trailing `=DIGITS` is always the weight.
//!
//! ```text
//! tools/call:echo:{"text":"hi"}=8,tools/list=1,resources/read:demo://readme=1,ping=1
//! ```

use rand::Rng;

/// Entries one mix may hold.
pub const MIX_ENTRIES_MAX: usize = 64;
/// Largest weight of one entry; the sum of all weights stays far from overflow.
pub const MIX_WEIGHT_MAX: u32 = 1_000_000;
/// Longest `--mix` text accepted.
pub const MIX_TEXT_BYTES_MAX: usize = 64 << 10;

/// The mix `shardmcp load` runs when `--mix` is not given (it suits the
/// embedded demo server).
pub const DEFAULT_MIX: &str =
    r#"tools/call:echo:{"text":"hi"}=8,tools/list=1,resources/read:demo://readme=1,ping=1"#;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MixError {
    #[error("--mix is empty; give at least one operation, e.g. `ping`")]
    Empty,
    #[error("--mix is longer than {MIX_TEXT_BYTES_MAX} bytes")]
    TooLong,
    #[error("--mix has more than {MIX_ENTRIES_MAX} entries")]
    TooManyEntries,
    #[error("--mix entry {index} is empty (two commas in a row, or a trailing comma?)")]
    EmptyEntry { index: usize },
    #[error("--mix entry `{entry}`: unknown operation `{op}`; expected ping, tools/list, resources/list, resources/templates/list, prompts/list, tools/call:NAME[:ARGS], prompts/get:NAME[:ARGS], resources/read:URI or rpc:METHOD[:PARAMS]")]
    UnknownOperation { entry: String, op: String },
    #[error("--mix entry `{entry}`: {op} needs {what} after `{op}:`")]
    MissingArgument {
        entry: String,
        op: &'static str,
        what: &'static str,
    },
    #[error("--mix entry `{entry}`: {op} takes no argument")]
    UnexpectedArgument { entry: String, op: &'static str },
    #[error("--mix entry `{entry}`: arguments are not valid JSON: {reason}")]
    BadJson { entry: String, reason: String },
    #[error("--mix entry `{entry}`: arguments must be a JSON object")]
    NotAnObject { entry: String },
    #[error("--mix entry `{entry}`: unbalanced quotes or brackets")]
    Unbalanced { entry: String },
    #[error("--mix entry `{entry}`: weight must be an integer from 1 to {MIX_WEIGHT_MAX}")]
    BadWeight { entry: String },
    #[error(
        "--mix entry `{entry}`: `initialize` and notifications are sent by the generator itself"
    )]
    Reserved { entry: String },
}

/// One request kind, ready to be rendered with a fresh id.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    /// How the operation is named in reports, e.g. `tools/call:echo`.
    pub label: String,
    /// The JSON-RPC method.
    pub method: String,
    /// Everything after the id: `,"method":...,"params":...}`.
    tail: String,
    /// tools/call results with `isError: true` count as failures.
    pub is_tool_call: bool,
}

impl Operation {
    fn new(method: &str, label: String, params: Option<serde_json::Value>) -> Operation {
        let method_json = serde_json::Value::String(method.to_string()).to_string();
        let tail = match params {
            Some(params) => format!(r#","method":{method_json},"params":{params}}}"#),
            None => format!(r#","method":{method_json}}}"#),
        };
        Operation {
            label,
            method: method.to_string(),
            tail,
            is_tool_call: method == "tools/call",
        }
    }

    /// Writes the whole JSON-RPC request with `id` into `out`.
    pub fn render(&self, id: u64, out: &mut Vec<u8>) {
        use std::io::Write;
        out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
        let _ = write!(out, "{id}");
        out.extend_from_slice(self.tail.as_bytes());
    }
}

/// A weighted set of operations.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    pub operations: Vec<Operation>,
    pub weights: Vec<u32>,
    /// Running sums of `weights`, for picking.
    cumulative: Vec<u64>,
}

impl Mix {
    /// The sum of all weights.
    pub fn total_weight(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// Picks an operation's index with probability weight / total.
    pub fn pick(&self, rng: &mut impl Rng) -> usize {
        let total = self.total_weight();
        if self.operations.len() == 1 || total == 0 {
            return 0;
        }
        self.index_of(rng.random_range(0..total))
    }

    /// The entry a point in `0..total_weight()` falls into.
    pub fn index_of(&self, point: u64) -> usize {
        self.cumulative
            .partition_point(|&sum| sum <= point)
            .min(self.operations.len() - 1)
    }

    /// The mix in its `--mix` syntax (labels carry no arguments; for reports).
    pub fn describe(&self) -> String {
        self.operations
            .iter()
            .zip(&self.weights)
            .map(|(op, weight)| format!("{}={weight}", op.label))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl std::str::FromStr for Mix {
    type Err = MixError;

    fn from_str(text: &str) -> Result<Mix, MixError> {
        parse(text)
    }
}

/// Parses the `--mix` syntax.
pub fn parse(text: &str) -> Result<Mix, MixError> {
    if text.len() > MIX_TEXT_BYTES_MAX {
        return Err(MixError::TooLong);
    }
    if text.trim().is_empty() {
        return Err(MixError::Empty);
    }
    let entries = split_top_level(text, b',').map_err(|entry| MixError::Unbalanced {
        entry: entry.to_string(),
    })?;
    if entries.len() > MIX_ENTRIES_MAX {
        return Err(MixError::TooManyEntries);
    }
    let mut operations = Vec::with_capacity(entries.len());
    let mut weights = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(MixError::EmptyEntry { index });
        }
        let (op, weight) = split_weight(entry)?;
        operations.push(parse_operation(entry, op)?);
        weights.push(weight);
    }
    let mut cumulative = Vec::with_capacity(weights.len());
    let mut sum = 0u64;
    for &weight in &weights {
        sum += u64::from(weight);
        cumulative.push(sum);
    }
    Ok(Mix {
        operations,
        weights,
        cumulative,
    })
}

/// Splits at `separator` where it is outside JSON strings and brackets.
/// Err carries the text when quotes or brackets do not balance.
fn split_top_level(text: &str, separator: u8) -> Result<Vec<&str>, &str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut in_string = false;
    let mut escaped = false;
    let mut start = 0;
    for (at, &byte) in text.as_bytes().iter().enumerate() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth < 0 {
                    return Err(text);
                }
            }
            _ if byte == separator && depth == 0 => {
                parts.push(&text[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    if in_string || depth != 0 {
        return Err(text);
    }
    parts.push(&text[start..]);
    Ok(parts)
}

/// Splits a trailing `=DIGITS` weight off an entry (default 1). An `=`
/// inside JSON arguments or a URI query is not a weight; on an entry with no
/// `:` (plain `ping=...`) anything after `=` must be a valid weight.
fn split_weight(entry: &str) -> Result<(&str, u32), MixError> {
    let Some(at) = entry.rfind('=') else {
        return Ok((entry, 1));
    };
    let (op, weight) = (entry[..at].trim_end(), entry[at + 1..].trim());
    let inside_json = op.contains(['{', '[']) && !op.ends_with(['}', ']']);
    let digits = !weight.is_empty() && weight.bytes().all(|b| b.is_ascii_digit());
    let bad_weight = || MixError::BadWeight {
        entry: entry.to_string(),
    };
    if inside_json || (!digits && op.contains(':')) {
        return Ok((entry, 1));
    }
    if !digits {
        return Err(bad_weight());
    }
    match weight.parse::<u32>() {
        Ok(weight) if (1..=MIX_WEIGHT_MAX).contains(&weight) => Ok((op, weight)),
        _ => Err(bad_weight()),
    }
}

fn parse_operation(entry: &str, op: &str) -> Result<Operation, MixError> {
    let (kind, rest) = match op.split_once(':') {
        Some((kind, rest)) => (kind.trim(), Some(rest)),
        None => (op.trim(), None),
    };
    let missing = |op: &'static str, what: &'static str| MixError::MissingArgument {
        entry: entry.to_string(),
        op,
        what,
    };
    match kind {
        "ping" | "tools/list" | "resources/list" | "resources/templates/list" | "prompts/list" => {
            if rest.is_some() {
                let op = match kind {
                    "ping" => "ping",
                    "tools/list" => "tools/list",
                    "resources/list" => "resources/list",
                    "resources/templates/list" => "resources/templates/list",
                    _ => "prompts/list",
                };
                return Err(MixError::UnexpectedArgument {
                    entry: entry.to_string(),
                    op,
                });
            }
            Ok(Operation::new(kind, kind.to_string(), None))
        }
        "tools/call" | "prompts/get" => {
            let op: &'static str = if kind == "tools/call" {
                "tools/call"
            } else {
                "prompts/get"
            };
            let rest = rest.ok_or_else(|| missing(op, "a name"))?;
            let (name, arguments) = match rest.split_once(':') {
                Some((name, arguments)) => (name.trim(), Some(arguments)),
                None => (rest.trim(), None),
            };
            if name.is_empty() {
                return Err(missing(op, "a name"));
            }
            let arguments = match arguments {
                Some(text) => json_object(entry, text)?,
                None => serde_json::json!({}),
            };
            let params = serde_json::json!({"name": name, "arguments": arguments});
            Ok(Operation::new(op, format!("{op}:{name}"), Some(params)))
        }
        "resources/read" => {
            let uri = rest
                .map(str::trim)
                .filter(|uri| !uri.is_empty())
                .ok_or_else(|| missing("resources/read", "a URI"))?;
            let params = serde_json::json!({ "uri": uri });
            Ok(Operation::new(
                "resources/read",
                format!("resources/read:{uri}"),
                Some(params),
            ))
        }
        "rpc" => {
            let rest = rest.ok_or_else(|| missing("rpc", "a method"))?;
            let (method, params) = match rest.split_once(':') {
                Some((method, params)) if params.trim_start().starts_with('{') => {
                    (method.trim(), Some(json_object(entry, params)?))
                }
                _ => (rest.trim(), None),
            };
            if method.is_empty() {
                return Err(missing("rpc", "a method"));
            }
            if method == "initialize" || method.starts_with("notifications/") {
                return Err(MixError::Reserved {
                    entry: entry.to_string(),
                });
            }
            Ok(Operation::new(method, method.to_string(), params))
        }
        "initialize" => Err(MixError::Reserved {
            entry: entry.to_string(),
        }),
        _ => Err(MixError::UnknownOperation {
            entry: entry.to_string(),
            op: kind.to_string(),
        }),
    }
}

fn json_object(entry: &str, text: &str) -> Result<serde_json::Value, MixError> {
    let value: serde_json::Value =
        serde_json::from_str(text.trim()).map_err(|error| MixError::BadJson {
            entry: entry.to_string(),
            reason: error.to_string(),
        })?;
    if !value.is_object() {
        return Err(MixError::NotAnObject {
            entry: entry.to_string(),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(op: &Operation, id: u64) -> serde_json::Value {
        let mut out = Vec::new();
        op.render(id, &mut out);
        serde_json::from_slice(&out).expect("valid JSON")
    }

    #[test]
    fn the_default_mix_parses_with_its_weights() {
        let mix = parse(DEFAULT_MIX).unwrap();
        let labels: Vec<_> = mix.operations.iter().map(|op| op.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "tools/call:echo",
                "tools/list",
                "resources/read:demo://readme",
                "ping"
            ]
        );
        assert_eq!(mix.weights, [8, 1, 1, 1]);
        assert_eq!(mix.total_weight(), 11);
        assert_eq!(
            rendered(&mix.operations[0], 7),
            serde_json::json!({"jsonrpc":"2.0","id":7,"method":"tools/call",
                "params":{"name":"echo","arguments":{"text":"hi"}}})
        );
        assert_eq!(
            rendered(&mix.operations[2], 1),
            serde_json::json!({"jsonrpc":"2.0","id":1,"method":"resources/read",
                "params":{"uri":"demo://readme"}})
        );
        assert_eq!(
            rendered(&mix.operations[3], 2),
            serde_json::json!({"jsonrpc":"2.0","id":2,"method":"ping"})
        );
    }

    #[test]
    fn json_arguments_may_hold_commas_colons_equals_and_brackets() {
        let mix = parse(r#"tools/call:add:{"a":1,"b":[2,3],"s":"x=1,}{"}=3,prompts/get:greeting"#)
            .unwrap();
        assert_eq!(mix.weights, [3, 1]);
        let call = rendered(&mix.operations[0], 1);
        assert_eq!(
            call["params"]["arguments"],
            serde_json::json!({"a":1,"b":[2,3],"s":"x=1,}{"})
        );
        let prompt = rendered(&mix.operations[1], 2);
        assert_eq!(
            prompt["params"],
            serde_json::json!({"name":"greeting","arguments":{}})
        );
    }

    #[test]
    fn a_uri_with_a_query_keeps_its_equals_unless_a_weight_follows() {
        let mix = parse("resources/read:demo://x?a=b,resources/read:demo://y?n=5=2").unwrap();
        assert_eq!(mix.operations[0].label, "resources/read:demo://x?a=b");
        assert_eq!(mix.weights, [1, 2]);
        assert_eq!(mix.operations[1].label, "resources/read:demo://y?n=5");
    }

    #[test]
    fn rpc_sends_any_other_method_with_optional_params() {
        let mix = parse(r#"rpc:completion/complete:{"ref":{"type":"ref/prompt","name":"greeting"},"argument":{"name":"name","value":"a"}},rpc:logging/setLevel:{"level":"info"}=2,rpc:tasks/list"#).unwrap();
        assert_eq!(mix.operations[0].method, "completion/complete");
        assert_eq!(
            rendered(&mix.operations[0], 1)["params"]["ref"]["name"],
            "greeting"
        );
        assert_eq!(mix.weights, [1, 2, 1]);
        assert_eq!(
            rendered(&mix.operations[2], 9),
            serde_json::json!({"jsonrpc":"2.0","id":9,"method":"tasks/list"})
        );
    }

    #[test]
    fn bad_mixes_are_refused_with_the_entry_named() {
        type Check = fn(&MixError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, MixError::Empty)),
            ("ping,,tools/list", |e| {
                matches!(e, MixError::EmptyEntry { index: 1 })
            }),
            ("ping,", |e| matches!(e, MixError::EmptyEntry { index: 1 })),
            (
                "tools/cal:echo",
                |e| matches!(e, MixError::UnknownOperation { op, .. } if op == "tools/cal"),
            ),
            ("tools/call", |e| {
                matches!(e, MixError::MissingArgument { what: "a name", .. })
            }),
            ("tools/call::{}", |e| {
                matches!(e, MixError::MissingArgument { .. })
            }),
            ("resources/read", |e| {
                matches!(e, MixError::MissingArgument { what: "a URI", .. })
            }),
            ("ping:x", |e| {
                matches!(e, MixError::UnexpectedArgument { op: "ping", .. })
            }),
            (r#"tools/call:echo:{"text":}"#, |e| {
                matches!(e, MixError::BadJson { .. })
            }),
            ("tools/call:echo:[1,2]", |e| {
                matches!(e, MixError::NotAnObject { .. })
            }),
            (r#"tools/call:echo:{"text":"hi""#, |e| {
                matches!(e, MixError::Unbalanced { .. })
            }),
            ("ping=0", |e| matches!(e, MixError::BadWeight { .. })),
            ("ping=-3", |e| matches!(e, MixError::BadWeight { .. })),
            ("ping=1.5", |e| matches!(e, MixError::BadWeight { .. })),
            ("ping=99999999999", |e| {
                matches!(e, MixError::BadWeight { .. })
            }),
            ("initialize", |e| matches!(e, MixError::Reserved { .. })),
            ("rpc:notifications/initialized", |e| {
                matches!(e, MixError::Reserved { .. })
            }),
        ];
        for (text, expected) in cases {
            let error = parse(text).expect_err(text);
            assert!(expected(&error), "{text}: got {error:?}");
            if let MixError::BadJson { entry, .. } | MixError::BadWeight { entry } = &error {
                assert!(error.to_string().contains(entry.as_str()), "{error}");
            }
        }
        let many = vec!["ping"; MIX_ENTRIES_MAX + 1].join(",");
        assert_eq!(parse(&many), Err(MixError::TooManyEntries));
    }

    #[test]
    fn picking_follows_the_weights_exactly_over_the_weight_space() {
        let mix = parse("ping=3,tools/list=1,prompts/list=6").unwrap();
        let mut counts = [0usize; 3];
        for point in 0..mix.total_weight() {
            counts[mix.index_of(point)] += 1;
        }
        assert_eq!(counts, [3, 1, 6]);
        // And a seeded generator lands near the weights.
        use rand::SeedableRng;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let mut counts = [0usize; 3];
        for _ in 0..10_000 {
            counts[mix.pick(&mut rng)] += 1;
        }
        assert!((2_700..3_300).contains(&counts[0]), "{counts:?}");
        assert!((700..1_300).contains(&counts[1]), "{counts:?}");
        assert!((5_700..6_300).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn describe_lists_labels_and_weights() {
        let mix = parse(DEFAULT_MIX).unwrap();
        assert_eq!(
            mix.describe(),
            "tools/call:echo=8,tools/list=1,resources/read:demo://readme=1,ping=1"
        );
    }
}
