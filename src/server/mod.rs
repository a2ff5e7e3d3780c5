//! The server API: what a server offers (tools, resources and templates,
//! prompts, completions) is declared once and built on every shard from a
//! `Send + Sync` factory. Handlers are local futures: they may hold `Rc`s and
//! never cross cores. On a running shard the definitions live in a
//! [`LiveServer`], which handlers (on their shard) and the node (on every
//! shard, through [`Change`]s) edit; each edit tells the shard's sessions
//! which lists changed. Nothing here names a transport.

mod change;
pub mod conformance;
mod content;
pub mod demo;
mod icon;
mod live;
mod prompt;
mod resource;
mod tool;

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use serde_json::{json, Map, Value};

pub use change::{Change, ChangeLog, DefinitionKind};
pub use content::{Content, ResourceContents, ToolResult};
pub use icon::{Icon, Theme, ICONS_MAX, ICON_SIZES_MAX, ICON_SRC_BYTES_MAX};
pub use live::{LiveServer, ServerEdit, Subscriber, DEFINITIONS_PER_KIND_MAX};
pub use prompt::{Prompt, PromptArgument, PromptFuture, PromptMessage, PromptResult, Role};
pub use resource::{ReadFuture, Resource, ResourceError, ResourceTemplate};

/// Completes an argument: (argument or variable name, partial value) → candidates.
pub type Completer = Rc<dyn Fn(&str, &str) -> Vec<String>>;
pub use tool::{
    ElicitationCompleter, ElicitationError, Peer, TaskSupport, Tool, ToolBuilder, ToolCall,
    ToolError, ToolFuture, ToolHandler, UrlElicitation,
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
    #[error("icon `{src}`: {reason}")]
    InvalidIcon { src: String, reason: String },
    #[error("a server edit was started from inside another edit of it")]
    NestedEdit,
    #[error("the server already holds its maximum of {max} {kind} definitions")]
    TooManyDefinitions { kind: &'static str, max: usize },
}

/// Which of the server's lists: offered, changed, or followed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lists {
    pub tools: bool,
    pub resources: bool,
    pub prompts: bool,
}

impl Lists {
    pub const NONE: Lists = Lists {
        tools: false,
        resources: false,
        prompts: false,
    };
    pub const ALL: Lists = Lists {
        tools: true,
        resources: true,
        prompts: true,
    };

    pub fn any(self) -> bool {
        self.tools || self.resources || self.prompts
    }

    /// The lists in both.
    pub fn and(self, other: Lists) -> Lists {
        Lists {
            tools: self.tools && other.tools,
            resources: self.resources && other.resources,
            prompts: self.prompts && other.prompts,
        }
    }

    /// The lists in either.
    pub fn or(self, other: Lists) -> Lists {
        Lists {
            tools: self.tools || other.tools,
            resources: self.resources || other.resources,
            prompts: self.prompts || other.prompts,
        }
    }

    /// The `notifications/*/list_changed` methods for these lists.
    pub fn changed_methods(self) -> impl Iterator<Item = &'static str> {
        [
            (self.tools, "notifications/tools/list_changed"),
            (self.resources, "notifications/resources/list_changed"),
            (self.prompts, "notifications/prompts/list_changed"),
        ]
        .into_iter()
        .filter_map(|(set, method)| set.then_some(method))
    }
}

/// Who the server says it is (`serverInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Implementation {
    pub name: String,
    pub version: String,
    pub title: Option<String>,
    pub description: Option<String>,
    pub website_url: Option<String>,
    pub icons: Vec<Icon>,
}

impl Implementation {
    pub fn to_value(&self) -> Value {
        let mut out = Map::new();
        out.insert("name".into(), Value::String(self.name.clone()));
        out.insert("version".into(), Value::String(self.version.clone()));
        if let Some(title) = &self.title {
            out.insert("title".into(), Value::String(title.clone()));
        }
        if let Some(description) = &self.description {
            out.insert("description".into(), Value::String(description.clone()));
        }
        if let Some(url) = &self.website_url {
            out.insert("websiteUrl".into(), Value::String(url.clone()));
        }
        icon::insert_icons(&mut out, &self.icons);
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
///     json!({"tools": {"listChanged": true}, "logging": {}})
/// );
/// let greet = server.tool("greet").unwrap();
/// assert!(greet.check_arguments(&json!({"name": 5})).is_err());
/// ```
///
/// A `Server` is a snapshot: cloning it is cheap (definitions are `Rc`s), and
/// a shard's [`LiveServer`] swaps in an edited clone when definitions change.
#[derive(Clone)]
pub struct Server {
    info: Implementation,
    instructions: Option<String>,
    /// Lists advertised even while empty, so later additions are announced.
    declared: Lists,
    tools: Vec<Rc<Tool>>,
    tool_index: HashMap<String, usize>,
    resources: Vec<Rc<Resource>>,
    resource_index: HashMap<String, usize>,
    templates: Vec<Rc<ResourceTemplate>>,
    template_index: HashMap<String, usize>,
    prompts: Vec<Rc<Prompt>>,
    prompt_index: HashMap<String, usize>,
}

/// Builds a server on each shard; shared by every core.
pub type ServerFactory = Arc<dyn Fn() -> Result<Server, ServerError> + Send + Sync>;

pub struct ServerBuilder {
    info: Implementation,
    instructions: Option<String>,
    declared: Lists,
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
                description: None,
                website_url: None,
                icons: Vec::new(),
            },
            instructions: None,
            declared: Lists::NONE,
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

    pub fn template(&self, uri_template: &str) -> Option<&Rc<ResourceTemplate>> {
        self.template_index
            .get(uri_template)
            .map(|&index| &self.templates[index])
    }

    pub fn prompts(&self) -> &[Rc<Prompt>] {
        &self.prompts
    }

    pub fn prompt(&self, name: &str) -> Option<&Rc<Prompt>> {
        self.prompt_index
            .get(name)
            .map(|&index| &self.prompts[index])
    }

    /// The lists this server offers: those it holds something in, and
    /// those declared with [`ServerBuilder::declare`].
    pub fn lists(&self) -> Lists {
        Lists {
            tools: !self.tools.is_empty(),
            resources: !self.resources.is_empty() || !self.templates.is_empty(),
            prompts: !self.prompts.is_empty(),
        }
        .or(self.declared)
    }

    /// Capabilities derived from what the server offers: a capability is
    /// advertised only when there is something behind it. Every list may
    /// change at runtime ([`LiveServer`]), so each says `listChanged`.
    pub fn capabilities(&self) -> Value {
        let mut capabilities = Map::new();
        let lists = self.lists();
        if lists.tools {
            capabilities.insert("tools".into(), json!({"listChanged": true}));
            // Tools can log to the client through their call context.
            capabilities.insert("logging".into(), json!({}));
        }
        if lists.resources {
            capabilities.insert(
                "resources".into(),
                json!({"subscribe": true, "listChanged": true}),
            );
        }
        if lists.prompts {
            capabilities.insert("prompts".into(), json!({"listChanged": true}));
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

    /// What the server does, for `serverInfo.description`.
    pub fn description(mut self, description: &str) -> Self {
        self.info.description = Some(description.to_string());
        self
    }

    /// The server's website, for `serverInfo.websiteUrl`.
    pub fn website_url(mut self, url: &str) -> Self {
        self.info.website_url = Some(url.to_string());
        self
    }

    /// An icon for the server itself (`serverInfo.icons`).
    pub fn icon(mut self, icon: Icon) -> Self {
        self.info.icons.push(icon);
        self
    }

    /// Advertises these lists even while the server holds nothing in them,
    /// so definitions added at runtime are announced to every session.
    pub fn declare(mut self, lists: Lists) -> Self {
        self.declared = self.declared.or(lists);
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
        let template_index = index_by(&self.templates, "resource template", |t| &t.uri_template)?;
        icon::check_icons(&self.info.name, &self.info.icons)?;
        for resource in &self.resources {
            icon::check_icons(&resource.uri, &resource.icons)?;
        }
        for template in &self.templates {
            icon::check_icons(&template.uri_template, &template.icons)?;
        }
        for prompt in &self.prompts {
            icon::check_icons(&prompt.name, &prompt.icons)?;
        }
        Ok(Server {
            info: self.info,
            instructions: self.instructions,
            declared: self.declared,
            tools: self.tools.into_iter().map(Rc::new).collect(),
            tool_index,
            resources: self.resources.into_iter().map(Rc::new).collect(),
            resource_index,
            templates: self.templates.into_iter().map(Rc::new).collect(),
            template_index,
            prompts: self.prompts.into_iter().map(Rc::new).collect(),
            prompt_index,
        })
    }
}

/// Edits of a server snapshot, for [`ServerEdit`]: each adds or replaces
/// (same key, same place in its list) or removes one definition.
impl Server {
    pub(crate) fn upsert_tool(&mut self, tool: Tool, max: usize) -> Result<(), ServerError> {
        let key = tool.name.clone();
        upsert(
            &mut self.tools,
            &mut self.tool_index,
            key,
            tool,
            "tool",
            max,
        )
    }

    pub(crate) fn remove_tool(&mut self, name: &str) -> bool {
        remove(&mut self.tools, &mut self.tool_index, name)
    }

    pub(crate) fn upsert_resource(
        &mut self,
        resource: Resource,
        max: usize,
    ) -> Result<(), ServerError> {
        icon::check_icons(&resource.uri, &resource.icons)?;
        let key = resource.uri.clone();
        upsert(
            &mut self.resources,
            &mut self.resource_index,
            key,
            resource,
            "resource",
            max,
        )
    }

    pub(crate) fn remove_resource(&mut self, uri: &str) -> bool {
        remove(&mut self.resources, &mut self.resource_index, uri)
    }

    pub(crate) fn upsert_template(
        &mut self,
        template: ResourceTemplate,
        max: usize,
    ) -> Result<(), ServerError> {
        icon::check_icons(&template.uri_template, &template.icons)?;
        let key = template.uri_template.clone();
        upsert(
            &mut self.templates,
            &mut self.template_index,
            key,
            template,
            "resource template",
            max,
        )
    }

    pub(crate) fn remove_template(&mut self, uri_template: &str) -> bool {
        remove(&mut self.templates, &mut self.template_index, uri_template)
    }

    pub(crate) fn upsert_prompt(&mut self, prompt: Prompt, max: usize) -> Result<(), ServerError> {
        icon::check_icons(&prompt.name, &prompt.icons)?;
        let key = prompt.name.clone();
        upsert(
            &mut self.prompts,
            &mut self.prompt_index,
            key,
            prompt,
            "prompt",
            max,
        )
    }

    pub(crate) fn remove_prompt(&mut self, name: &str) -> bool {
        remove(&mut self.prompts, &mut self.prompt_index, name)
    }
}

/// Replaces the item with `key` in place, or appends it while the list
/// holds fewer than `max`.
fn upsert<T>(
    items: &mut Vec<Rc<T>>,
    index: &mut HashMap<String, usize>,
    key: String,
    item: T,
    kind: &'static str,
    max: usize,
) -> Result<(), ServerError> {
    if let Some(&position) = index.get(&key) {
        items[position] = Rc::new(item);
        return Ok(());
    }
    if items.len() >= max {
        return Err(ServerError::TooManyDefinitions { kind, max });
    }
    index.insert(key, items.len());
    items.push(Rc::new(item));
    Ok(())
}

/// Removes the item with `key`, keeping the others' order; false if absent.
fn remove<T>(items: &mut Vec<Rc<T>>, index: &mut HashMap<String, usize>, key: &str) -> bool {
    let Some(position) = index.remove(key) else {
        return false;
    };
    items.remove(position);
    for later in index.values_mut().filter(|at| **at > position) {
        *later -= 1;
    }
    true
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
