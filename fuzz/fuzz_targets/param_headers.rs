//! Any tool input schema, arguments and `Mcp-Param-*` headers: finding the
//! mirrored arguments and checking the headers never panics.
//!
//! The input is three parts split at NUL bytes: the schema (JSON), the
//! arguments (JSON; absent when it does not parse), and header lines
//! `name: value`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use shardmcp::protocol::param_headers::{check, header_params, PREFIX};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let Ok(schema) = serde_json::from_slice::<Value>(parts.next().unwrap_or_default()) else {
        return;
    };
    let arguments = serde_json::from_slice::<Value>(parts.next().unwrap_or_default()).ok();
    let headers: Vec<(String, String)> = String::from_utf8_lossy(parts.next().unwrap_or_default())
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    let params = header_params(&schema);
    let result = check(
        &params,
        arguments.as_ref(),
        headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str())),
    );
    // With no mirrored header sent and no mirrored argument given, it passes.
    let sends_none = !headers
        .iter()
        .any(|(name, _)| name.to_ascii_lowercase().starts_with(PREFIX));
    if sends_none && arguments.is_none() {
        assert_eq!(result, Ok(()));
    }
});
