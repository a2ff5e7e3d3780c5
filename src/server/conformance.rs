//! The fixtures the official MCP conformance suite's server scenarios call,
//! named and behaving as those scenarios check (see
//! `tests/conformance/FIXTURES.md` for what each scenario expects). They are
//! part of the embedded default server, so `shardmcp serve` passes the suite
//! out of the box.

use std::time::Duration;

use serde_json::{json, Value};

use crate::protocol::logging::LogLevel;

use super::{
    Content, Prompt, PromptMessage, PromptResult, Resource, ResourceContents, ResourceTemplate,
    ServerBuilder, ServerError, Tool, ToolError, ToolResult,
};

/// A 1x1 PNG.
pub const PNG_BASE64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";
/// A valid 16-bit mono WAV with eight silent samples.
pub const WAV_BASE64: &str =
    "UklGRjQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YRAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// Time between the log lines and progress steps of the slow fixtures.
const STEP: Duration = Duration::from_millis(50);

fn text_tool(name: &str, description: &str, text: &'static str) -> Result<Tool, ServerError> {
    Tool::builder(name, description).handler(move |_call| async move { Ok(ToolResult::text(text)) })
}

fn contents_tool(
    name: &str,
    description: &str,
    content: Vec<Content>,
) -> Result<Tool, ServerError> {
    Tool::builder(name, description).handler(move |_call| {
        let content = content.clone();
        async move {
            Ok(ToolResult {
                content,
                ..ToolResult::default()
            })
        }
    })
}

/// A tool that asks the user to fill `schema` and reports what came back,
/// as `<reply_prefix> action=<action>, content=<content>`.
fn elicitation_tool(
    name: &str,
    description: &str,
    input_schema: Option<Value>,
    ask: fn(&super::ToolCall) -> Value,
    reply_prefix: &'static str,
) -> Result<Tool, ServerError> {
    let mut tool = Tool::builder(name, description);
    if let Some(schema) = input_schema {
        tool = tool.input_schema(schema);
    }
    tool.handler(move |call| async move {
        let answer = call.elicit(ask(&call)).await?;
        Ok(ToolResult::text(format!(
            "{reply_prefix} action={}, content={}",
            answer["action"].as_str().unwrap_or("unknown"),
            answer.get("content").cloned().unwrap_or(Value::Null)
        )))
    })
}

/// The first text of a sampling answer (`content` may be one block or a list).
fn sampled_text(answer: &Value) -> String {
    let content = &answer["content"];
    let block = if content.is_array() {
        &content[0]
    } else {
        content
    };
    block["text"].as_str().unwrap_or_default().to_string()
}

/// Adds every conformance fixture to a server.
pub fn add_fixtures(server: ServerBuilder) -> Result<ServerBuilder, ServerError> {
    let server = server
        .tool(text_tool(
            "test_simple_text",
            "Returns a simple text response.",
            "This is a simple text response for testing.",
        )?)
        .tool(contents_tool(
            "test_image_content",
            "Returns an image.",
            vec![Content::Image {
                data: PNG_BASE64.into(),
                mime_type: "image/png".into(),
            }],
        )?)
        .tool(contents_tool(
            "test_audio_content",
            "Returns audio.",
            vec![Content::Audio {
                data: WAV_BASE64.into(),
                mime_type: "audio/wav".into(),
            }],
        )?)
        .tool(contents_tool(
            "test_embedded_resource",
            "Returns an embedded resource.",
            vec![Content::Resource(ResourceContents::text(
                "test://embedded-resource",
                "text/plain",
                "This is an embedded resource content.",
            ))],
        )?)
        .tool(contents_tool(
            "test_multiple_content_types",
            "Returns text, an image and a resource.",
            vec![
                Content::text("Multiple content types test:"),
                Content::Image {
                    data: PNG_BASE64.into(),
                    mime_type: "image/png".into(),
                },
                Content::Resource(ResourceContents::text(
                    "test://mixed-content-resource",
                    "application/json",
                    r#"{"test":"data","value":123}"#,
                )),
            ],
        )?)
        .tool(
            Tool::builder("test_tool_with_logging", "Logs three messages while it runs.").handler(
                |call| async move {
                    for (index, line) in ["Tool execution started", "Tool processing data", "Tool execution completed"]
                        .into_iter()
                        .enumerate()
                    {
                        if index > 0 {
                            glommio::timer::sleep(STEP).await;
                        }
                        call.log(LogLevel::Info, None, json!(line)).await;
                    }
                    Ok(ToolResult::text("Tool with logging executed successfully"))
                },
            )?,
        )
        .tool(
            Tool::builder("test_tool_with_progress", "Reports progress 0, 50, 100.").handler(
                |call| async move {
                    for (index, progress) in [0.0, 50.0, 100.0].into_iter().enumerate() {
                        if index > 0 {
                            glommio::timer::sleep(STEP).await;
                        }
                        call.progress(progress, Some(100.0), None).await;
                    }
                    Ok(ToolResult::text("Tool with progress executed successfully"))
                },
            )?,
        )
        .tool(
            Tool::builder("test_error_handling", "Always fails, as a tool result.").handler(
                |_call| async move {
                    Err(ToolError::Failed("This tool intentionally returns an error for testing".into()))
                },
            )?,
        )
        .tool(
            Tool::builder("test_sampling", "Asks the client's model to answer a prompt.")
                .input_schema(json!({
                    "type": "object",
                    "properties": {"prompt": {"type": "string", "description": "The prompt to send"}},
                    "required": ["prompt"]
                }))
                .handler(|call| async move {
                    let prompt = call.str_arg("prompt").unwrap_or_default().to_string();
                    let answer = call
                        .create_message(json!({
                            "messages": [{"role": "user", "content": {"type": "text", "text": prompt}}],
                            "maxTokens": 100
                        }))
                        .await?;
                    Ok(ToolResult::text(format!("LLM response: {}", sampled_text(&answer))))
                })?,
        )
        .tool(elicitation_tool(
            "test_elicitation",
            "Asks the user for a name and an email.",
            Some(json!({
                "type": "object",
                "properties": {"message": {"type": "string", "description": "What to ask"}},
                "required": ["message"]
            })),
            |call| {
                json!({
                    "message": call.str_arg("message").unwrap_or_default(),
                    "requestedSchema": {
                        "type": "object",
                        "properties": {
                            "username": {"type": "string", "description": "User's response"},
                            "email": {"type": "string", "description": "User's email address"}
                        },
                        "required": ["username", "email"]
                    }
                })
            },
            "User response:",
        )?)
        .tool(elicitation_tool(
            "test_elicitation_sep1034_defaults",
            "Asks for a form whose fields have defaults (SEP-1034).",
            None,
            |_call| {
                json!({
                    "message": "Please review and update the form fields with defaults",
                    "requestedSchema": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string", "description": "User name", "default": "John Doe"},
                            "age": {"type": "integer", "description": "User age", "default": 30},
                            "score": {"type": "number", "description": "User score", "default": 95.5},
                            "status": {"type": "string", "description": "User status",
                                       "enum": ["active", "inactive", "pending"], "default": "active"},
                            "verified": {"type": "boolean", "description": "Verification status", "default": true}
                        },
                        "required": []
                    }
                })
            },
            "Elicitation completed:",
        )?)
        .tool(elicitation_tool(
            "test_elicitation_sep1330_enums",
            "Asks for a form with every enum form (SEP-1330).",
            None,
            |_call| {
                json!({
                    "message": "Please select options from the enum fields",
                    "requestedSchema": {
                        "type": "object",
                        "properties": {
                            "untitledSingle": {"type": "string", "description": "Pick one",
                                "enum": ["option1", "option2", "option3"]},
                            "titledSingle": {"type": "string", "description": "Pick one (titled)",
                                "oneOf": [
                                    {"const": "value1", "title": "First Option"},
                                    {"const": "value2", "title": "Second Option"},
                                    {"const": "value3", "title": "Third Option"}]},
                            "legacyEnum": {"type": "string", "description": "Pick one (legacy)",
                                "enum": ["opt1", "opt2", "opt3"],
                                "enumNames": ["Option One", "Option Two", "Option Three"]},
                            "untitledMulti": {"type": "array", "description": "Pick some",
                                "minItems": 1, "maxItems": 3,
                                "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
                            "titledMulti": {"type": "array", "description": "Pick some (titled)",
                                "minItems": 1, "maxItems": 3,
                                "items": {"anyOf": [
                                    {"const": "value1", "title": "First Choice"},
                                    {"const": "value2", "title": "Second Choice"},
                                    {"const": "value3", "title": "Third Choice"}]}}
                        },
                        "required": []
                    }
                })
            },
            "Elicitation completed:",
        )?)
        .tool(
            Tool::builder("json_schema_2020_12_tool", "Tool with JSON Schema 2020-12 features")
                .input_schema(json!({
                    "$schema": "https://json-schema.org/draft/2020-12/schema",
                    "type": "object",
                    "$defs": {"address": {"type": "object", "properties": {
                        "street": {"type": "string"}, "city": {"type": "string"}}}},
                    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
                    "additionalProperties": false
                }))
                .handler(|call| async move {
                    Ok(ToolResult::text(format!(
                        "JSON Schema 2020-12 tool called with: {}",
                        Value::Object(call.arguments.clone())
                    )))
                })?,
        )
        .tool(
            Tool::builder(
                "test_reconnection",
                "Closes the SSE stream it was called on, then answers: the client gets the answer by resuming the stream (SEP-1699).",
            )
            .handler(|call| async move {
                call.close_stream().await;
                Ok(ToolResult::text("Reconnection test completed"))
            })?,
        )
        .resource(Resource::text(
            "test://static-text",
            "static-text",
            "text/plain",
            "This is the content of the static text resource.",
        ))
        .resource(
            Resource::new("test://static-binary", "static-binary", |uri| async move {
                Ok(vec![ResourceContents::blob(&uri, "image/png", PNG_BASE64)])
            })
            .mime_type("image/png"),
        )
        .resource(Resource::text(
            "test://watched-resource",
            "watched-resource",
            "text/plain",
            "A resource to subscribe to.",
        ))
        .template(
            ResourceTemplate::new("test://template/{id}/data", "template-data", |uri, vars| async move {
                let id = vars.get("id").cloned().unwrap_or_default();
                let text = json!({"id": id, "templateTest": true, "data": format!("Data for ID: {id}")});
                Ok(vec![ResourceContents::text(&uri, "application/json", text.to_string())])
            })?
            .mime_type("application/json")
            .description("Data for an id"),
        )
        .prompt(Prompt::new("test_simple_prompt", "A prompt without arguments.", |_args| async move {
            Ok(PromptResult {
                description: None,
                messages: vec![PromptMessage::user(Content::text("This is a simple prompt for testing."))],
            })
        }))
        .prompt(
            Prompt::new("test_prompt_with_arguments", "A prompt with two arguments.", |args| async move {
                let arg = |name: &str| args.get(name).cloned().unwrap_or_default();
                Ok(PromptResult {
                    description: None,
                    messages: vec![PromptMessage::user(Content::text(format!(
                        "Prompt with arguments: arg1='{}', arg2='{}'",
                        arg("arg1"),
                        arg("arg2")
                    )))],
                })
            })
            .argument("arg1", "First argument", true)
            .argument("arg2", "Second argument", true)
            .complete_with(|argument, partial| {
                let candidates: &[&str] = match argument {
                    "arg1" => &["test", "testValue1", "paris", "park"],
                    "arg2" => &["testValue2", "value"],
                    _ => &[],
                };
                candidates
                    .iter()
                    .filter(|candidate| candidate.starts_with(partial))
                    .map(|candidate| candidate.to_string())
                    .collect()
            }),
        )
        .prompt(
            Prompt::new(
                "test_prompt_with_embedded_resource",
                "A prompt that embeds the resource it is given.",
                |args| async move {
                    let uri = args.get("resourceUri").cloned().unwrap_or_default();
                    Ok(PromptResult {
                        description: None,
                        messages: vec![
                            PromptMessage::user(Content::Resource(ResourceContents::text(
                                &uri,
                                "text/plain",
                                "Embedded resource content for testing.",
                            ))),
                            PromptMessage::user(Content::text("Please process the embedded resource above.")),
                        ],
                    })
                },
            )
            .argument("resourceUri", "The URI of the resource to embed", true),
        )
        .prompt(Prompt::new("test_prompt_with_image", "A prompt with an image.", |_args| async move {
            Ok(PromptResult {
                description: None,
                messages: vec![
                    PromptMessage::user(Content::Image {
                        data: PNG_BASE64.into(),
                        mime_type: "image/png".into(),
                    }),
                    PromptMessage::user(Content::text("Please analyze the image above.")),
                ],
            })
        }));
    Ok(server)
}
