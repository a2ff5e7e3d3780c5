//! What tools return: content blocks and the tool result, in MCP's JSON shape.

use serde_json::{json, Map, Value};

/// One content block of a tool result or a prompt message.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    Text(String),
    /// Base64 data and its MIME type.
    Image {
        data: String,
        mime_type: String,
    },
    Audio {
        data: String,
        mime_type: String,
    },
}

impl Content {
    pub fn text(text: impl Into<String>) -> Self {
        Content::Text(text.into())
    }

    pub fn to_value(&self) -> Value {
        match self {
            Content::Text(text) => json!({"type": "text", "text": text}),
            Content::Image { data, mime_type } => {
                json!({"type": "image", "data": data, "mimeType": mime_type})
            }
            Content::Audio { data, mime_type } => {
                json!({"type": "audio", "data": data, "mimeType": mime_type})
            }
        }
    }
}

/// The result of `tools/call`. A tool that fails in its own domain returns a
/// result with `is_error` set, not a protocol error, so the model sees why.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolResult {
    pub content: Vec<Content>,
    pub structured_content: Option<Value>,
    pub is_error: bool,
}

impl ToolResult {
    pub fn text(text: impl Into<String>) -> Self {
        ToolResult {
            content: vec![Content::text(text)],
            ..ToolResult::default()
        }
    }

    /// A result carrying structured content, with its JSON text as the
    /// content block for clients that only read text.
    pub fn structured(value: Value) -> Self {
        ToolResult {
            content: vec![Content::text(value.to_string())],
            structured_content: Some(value),
            is_error: false,
        }
    }

    pub fn error(text: impl Into<String>) -> Self {
        ToolResult {
            content: vec![Content::text(text)],
            structured_content: None,
            is_error: true,
        }
    }

    pub fn to_value(&self) -> Value {
        let mut out = Map::new();
        out.insert(
            "content".into(),
            Value::Array(self.content.iter().map(Content::to_value).collect()),
        );
        if let Some(structured) = &self.structured_content {
            out.insert("structuredContent".into(), structured.clone());
        }
        out.insert("isError".into(), Value::Bool(self.is_error));
        Value::Object(out)
    }
}
