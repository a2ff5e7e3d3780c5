//! What tools return: content blocks and the tool result, in MCP's JSON shape.

use serde_json::{json, Map, Value};

/// The contents of a resource, as `resources/read` returns them.
#[derive(Debug, Clone, PartialEq)]
pub enum ResourceContents {
    Text {
        uri: String,
        mime_type: Option<String>,
        text: String,
    },
    /// Base64-encoded bytes.
    Blob {
        uri: String,
        mime_type: Option<String>,
        blob: String,
    },
}

impl ResourceContents {
    pub fn text(uri: &str, mime_type: &str, text: impl Into<String>) -> Self {
        ResourceContents::Text {
            uri: uri.to_string(),
            mime_type: Some(mime_type.to_string()),
            text: text.into(),
        }
    }

    pub fn blob(uri: &str, mime_type: &str, base64: impl Into<String>) -> Self {
        ResourceContents::Blob {
            uri: uri.to_string(),
            mime_type: Some(mime_type.to_string()),
            blob: base64.into(),
        }
    }

    pub fn to_value(&self) -> Value {
        let (uri, mime_type, key, body) = match self {
            ResourceContents::Text {
                uri,
                mime_type,
                text,
            } => (uri, mime_type, "text", text),
            ResourceContents::Blob {
                uri,
                mime_type,
                blob,
            } => (uri, mime_type, "blob", blob),
        };
        let mut out = Map::new();
        out.insert("uri".into(), Value::String(uri.clone()));
        if let Some(mime_type) = mime_type {
            out.insert("mimeType".into(), Value::String(mime_type.clone()));
        }
        out.insert(key.into(), Value::String(body.clone()));
        Value::Object(out)
    }
}

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
    /// A resource embedded with its contents.
    Resource(ResourceContents),
    /// A link to a resource the client may read.
    ResourceLink {
        uri: String,
        name: String,
        mime_type: Option<String>,
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
            Content::Resource(contents) => {
                json!({"type": "resource", "resource": contents.to_value()})
            }
            Content::ResourceLink {
                uri,
                name,
                mime_type,
            } => {
                let mut link = json!({"type": "resource_link", "uri": uri, "name": name});
                if let Some(mime_type) = mime_type {
                    link["mimeType"] = Value::String(mime_type.clone());
                }
                link
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
