//! The server API: what a server offers (tools today; resources, prompts and
//! completions follow) is declared once and built on every shard from a
//! `Send + Sync` factory. Handlers are local futures: they may hold `Rc`s and
//! never cross cores. Nothing here names a transport.

pub mod conformance;
mod content;
pub mod demo;
mod prompt;
mod resource;
mod tool;

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use serde_json::{json, Map, Value};

pub use content::{Content, ResourceContents, ToolResult};
pub use prompt::{Prompt, PromptArgument, PromptFuture, PromptMessage, PromptResult, Role};
pub use resource::{ReadFuture, Resource, ResourceError, ResourceTemplate};

/// Completes an argument: (argument or variable name, partial value) → candidates.
pub type Completer = Rc<dyn Fn(&str, &str) -> Vec<String>>;
pub use tool::{
    Peer, TaskSupport, Tool, ToolBuilder, ToolCall, ToolError, ToolFuture, ToolHandler,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    #[error("invalid tool name `{0}` (1 to 128 characters)")]
    InvalidName(String),
    #[error("tool `{0}` is declared twice")]
    DuplicateTool(String),
    #[error("tool `{tool}`: {reason}")]
    InvalidSchema { tool: String, reason: String },
    #[error("resource template `{template}`: {reason}")]
    InvalidTemplate { template: String, reason: String },
    #[error("{kind} `{name}` is declared twice")]
    Duplicate { kind: &'static str, name: String },
}

/// Who the server says it is (`serverInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Implementation {
    pub name: String,
    pub version: String,
    pub title: Option<String>,
}

impl Implementation {
    pub fn to_value(&self) -> Value {
        let mut out = Map::new();
        out.insert("name".into(), Value::String(self.name.clone()));
        out.insert("version".into(), Value::String(self.version.clone()));
        if let Some(title) = &self.title {
            out.insert("title".into(), Value::String(title.clone()));
        }
        Value::Object(out)
    }
}

/// One shard's server: built by the factory on that shard.
///
/// ```
/// use std::sync::Arc;
/// use serde_json::json;
/// use shardmcp::server::{Server, ServerFactory, Tool, ToolResult};
///
/// let factory: ServerFactory = Arc::new(|| {
///     Server::builder("my-server", "1.0.0")
///         .instructions("Greets people.")
///         .tool(
///             Tool::builder("greet", "Greets someone by name.")
///                 .input_schema(json!({
///                     "type": "object",
///                     "properties": {"name": {"type": "string"}},
///                     "required": ["name"]
///                 }))
///                 .handler(|call| async move {
///                     let name = call.str_arg("name").unwrap_or("you").to_string();
///                     Ok(ToolResult::text(format!("hello, {name}")))
///                 })?,
///         )
///         .build()
/// });
/// let server = factory().unwrap();
/// assert_eq!(
///     server.capabilities(),
///     json!({"tools": {"listChanged": false}, "logging": {}})
/// );
/// let greet = server.tool("greet").unwrap();
/// assert!(greet.check_arguments(&json!({"name": 5})).is_err());
/// ```
pub struct Server {
    info: Implementation,
    instructions: Option<String>,
    tools: Vec<Rc<Tool>>,
    tool_index: HashMap<String, usize>,
    resources: Vec<Rc<Resource>>,
    resource_index: HashMap<String, usize>,
    templates: Vec<Rc<ResourceTemplate>>,
    prompts: Vec<Rc<Prompt>>,
    prompt_index: HashMap<String, usize>,
}

/// Builds a server on each shard; shared by every core.
pub type ServerFactory = Arc<dyn Fn() -> Result<Server, ServerError> + Send + Sync>;

pub struct ServerBuilder {
    info: Implementation,
    instructions: Option<String>,
    tools: Vec<Tool>,
    resources: Vec<Resource>,
    templates: Vec<ResourceTemplate>,
    prompts: Vec<Prompt>,
}

impl Server {
    pub fn builder(name: &str, version: &str) -> ServerBuilder {
        ServerBuilder {
            info: Implementation {
                name: name.to_string(),
                version: version.to_string(),
                title: None,
            },
            instructions: None,
            tools: Vec::new(),
            resources: Vec::new(),
            templates: Vec::new(),
            prompts: Vec::new(),
        }
    }

    pub fn info(&self) -> &Implementation {
        &self.info
    }

    pub fn instructions(&self) -> Option<&str> {
        self.instructions.as_deref()
    }

    /// Tools in declaration order (a stable order for pagination).
    pub fn tools(&self) -> &[Rc<Tool>] {
        &self.tools
    }

    pub fn tool(&self, name: &str) -> Option<&Rc<Tool>> {
        self.tool_index.get(name).map(|&index| &self.tools[index])
    }

    /// Whether any tool may run as a task.
    pub fn has_task_tools(&self) -> bool {
        self.tools
            .iter()
            .any(|tool| tool.task_support != TaskSupport::Forbidden)
    }

    pub fn resources(&self) -> &[Rc<Resource>] {
        &self.resources
    }

    pub fn resource(&self, uri: &str) -> Option<&Rc<Resource>> {
        self.resource_index
            .get(uri)
            .map(|&index| &self.resources[index])
    }

    pub fn templates(&self) -> &[Rc<ResourceTemplate>] {
        &self.templates
    }

    pub fn prompts(&self) -> &[Rc<Prompt>] {
        &self.prompts
    }

    pub fn prompt(&self, name: &str) -> Option<&Rc<Prompt>> {
        self.prompt_index
            .get(name)
            .map(|&index| &self.prompts[index])
    }

    /// Capabilities derived from what the server holds: a capability is
    /// advertised only when there is something behind it.
    pub fn capabilities(&self) -> Value {
        let mut capabilities = Map::new();
        if !self.tools.is_empty() {
            capabilities.insert("tools".into(), json!({"listChanged": false}));
            // Tools can log to the client through their call context.
            capabilities.insert("logging".into(), json!({}));
        }
        if !self.resources.is_empty() || !self.templates.is_empty() {
            capabilities.insert(
                "resources".into(),
                json!({"subscribe": true, "listChanged": false}),
            );
        }
        if !self.prompts.is_empty() {
            capabilities.insert("prompts".into(), json!({"listChanged": false}));
        }
        if self.has_task_tools() {
            capabilities.insert(
                "tasks".into(),
                json!({"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}),
            );
        }
        let completes = self.prompts.iter().any(|p| p.completer.is_some())
            || self.templates.iter().any(|t| t.completer.is_some());
        if completes {
            capabilities.insert("completions".into(), json!({}));
        }
        Value::Object(capabilities)
    }
}

impl ServerBuilder {
    pub fn title(mut self, title: &str) -> Self {
        self.info.title = Some(title.to_string());
        self
    }

    pub fn instructions(mut self, instructions: &str) -> Self {
        self.instructions = Some(instructions.to_string());
        self
    }

    pub fn tool(mut self, tool: Tool) -> Self {
        self.tools.push(tool);
        self
    }

    pub fn resource(mut self, resource: Resource) -> Self {
        self.resources.push(resource);
        self
    }

    pub fn template(mut self, template: ResourceTemplate) -> Self {
        self.templates.push(template);
        self
    }

    pub fn prompt(mut self, prompt: Prompt) -> Self {
        self.prompts.push(prompt);
        self
    }

    pub fn build(self) -> Result<Server, ServerError> {
        let mut tool_index = HashMap::with_capacity(self.tools.len());
        for (index, tool) in self.tools.iter().enumerate() {
            if tool_index.insert(tool.name.clone(), index).is_some() {
                return Err(ServerError::DuplicateTool(tool.name.clone()));
            }
        }
        let resource_index = index_by(&self.resources, "resource", |r| &r.uri)?;
        let prompt_index = index_by(&self.prompts, "prompt", |p| &p.name)?;
        index_by(&self.templates, "resource template", |t| &t.uri_template)?;
        Ok(Server {
            info: self.info,
            instructions: self.instructions,
            tools: self.tools.into_iter().map(Rc::new).collect(),
            tool_index,
            resources: self.resources.into_iter().map(Rc::new).collect(),
            resource_index,
            templates: self.templates.into_iter().map(Rc::new).collect(),
            prompts: self.prompts.into_iter().map(Rc::new).collect(),
            prompt_index,
        })
    }
}

fn index_by<T>(
    items: &[T],
    kind: &'static str,
    key: impl Fn(&T) -> &String,
) -> Result<HashMap<String, usize>, ServerError> {
    let mut index = HashMap::with_capacity(items.len());
    for (position, item) in items.iter().enumerate() {
        if index.insert(key(item).clone(), position).is_some() {
            return Err(ServerError::Duplicate {
                kind,
                name: key(item).clone(),
            });
        }
    }
    Ok(index)
}
