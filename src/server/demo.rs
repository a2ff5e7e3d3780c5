//! The embedded default server that plain `shardmcp serve` runs.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{Server, ServerError, ServerFactory, Tool, ToolError, ToolResult};

pub fn factory() -> ServerFactory {
    Arc::new(build)
}

pub fn build() -> Result<Server, ServerError> {
    Server::builder("shardmcp", env!("CARGO_PKG_VERSION"))
        .title("shardmcp demo server")
        .instructions("A demo server: echo text, add numbers, or wait a while with `slow`.")
        .tool(
            Tool::builder("echo", "Echoes the given text back.")
                .input_schema(json!({
                    "type": "object",
                    "properties": {"text": {"type": "string", "description": "Text to echo"}},
                    "required": ["text"]
                }))
                .annotations(json!({"readOnlyHint": true, "idempotentHint": true}))
                .handler(|call| async move {
                    Ok(ToolResult::text(call.str_arg("text").unwrap_or_default()))
                })?,
        )
        .tool(
            Tool::builder("add", "Adds two numbers.")
                .input_schema(json!({
                    "type": "object",
                    "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                    "required": ["a", "b"]
                }))
                .output_schema(json!({
                    "type": "object",
                    "properties": {"sum": {"type": "number"}},
                    "required": ["sum"]
                }))
                .handler(|call| async move {
                    let (a, b) = (call.f64_arg("a"), call.f64_arg("b"));
                    match (a, b) {
                        (Some(a), Some(b)) => Ok(ToolResult::structured(json!({"sum": a + b}))),
                        _ => Err(ToolError::Failed("a and b must be numbers".into())),
                    }
                })?,
        )
        .tool(
            Tool::builder("slow", "Waits for the given number of milliseconds (at most 60000), then answers; cancellable.")
                .input_schema(json!({
                    "type": "object",
                    "properties": {"ms": {"type": "integer", "minimum": 0, "maximum": 60000}},
                    "required": ["ms"]
                }))
                .handler(|call| async move {
                    let ms = call.arguments.get("ms").and_then(|v| v.as_u64()).unwrap_or(0);
                    let waited = futures_lite::future::or(
                        async {
                            glommio::timer::sleep(Duration::from_millis(ms)).await;
                            true
                        },
                        async {
                            call.cancelled().await;
                            false
                        },
                    )
                    .await;
                    if waited {
                        Ok(ToolResult::text(format!("waited {ms} ms")))
                    } else {
                        Err(ToolError::Failed("cancelled".into()))
                    }
                })?,
        )
        .build()
}
