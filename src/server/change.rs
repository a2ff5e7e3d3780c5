//! Node-wide changes to server definitions. Handlers are local futures, so
//! a definition cannot cross cores: a change carries a `Send + Sync`
//! factory instead, and every shard builds its own copy from it. The node
//! keeps the changes (one entry per definition, compacted) in a
//! [`ChangeLog`], so a shard it restarts is built the way the others are.

use std::fmt;
use std::sync::Arc;

use super::{Lists, Prompt, Resource, ResourceTemplate, ServerError, Tool};

/// Builds a definition on the shard that applies the change.
pub type MakeTool = Arc<dyn Fn() -> Result<Tool, ServerError> + Send + Sync>;
pub type MakeResource = Arc<dyn Fn() -> Result<Resource, ServerError> + Send + Sync>;
pub type MakeTemplate = Arc<dyn Fn() -> Result<ResourceTemplate, ServerError> + Send + Sync>;
pub type MakePrompt = Arc<dyn Fn() -> Result<Prompt, ServerError> + Send + Sync>;

/// What kind of definition a change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DefinitionKind {
    Tool,
    Resource,
    Template,
    Prompt,
}

impl DefinitionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DefinitionKind::Tool => "tool",
            DefinitionKind::Resource => "resource",
            DefinitionKind::Template => "resource template",
            DefinitionKind::Prompt => "prompt",
        }
    }

    /// The list a change of this kind changes (templates are listed with
    /// resources, under `notifications/resources/list_changed`).
    pub fn list(self) -> Lists {
        let mut lists = Lists::NONE;
        match self {
            DefinitionKind::Tool => lists.tools = true,
            DefinitionKind::Resource | DefinitionKind::Template => lists.resources = true,
            DefinitionKind::Prompt => lists.prompts = true,
        }
        lists
    }
}

/// One change to a server's definitions, sendable to every shard. An
/// addition replaces a definition with the same key (tool or prompt name,
/// resource URI, URI template) in place, or appends.
///
/// ```
/// use serde_json::json;
/// use shardmcp::server::{Change, DefinitionKind, Tool, ToolResult};
///
/// let add = Change::add_tool(|| {
///     Tool::builder("late", "Added at runtime.")
///         .handler(|_call| async { Ok(ToolResult::text("here")) })
/// });
/// assert_eq!(add.kind(), DefinitionKind::Tool);
/// assert_eq!(add.key().unwrap(), "late");
/// assert_eq!(Change::RemoveTool("late".into()).key().unwrap(), "late");
/// ```
#[derive(Clone)]
pub enum Change {
    AddTool(MakeTool),
    RemoveTool(String),
    AddResource(MakeResource),
    RemoveResource(String),
    AddTemplate(MakeTemplate),
    RemoveTemplate(String),
    AddPrompt(MakePrompt),
    RemovePrompt(String),
}

impl fmt::Debug for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.is_add() { "add" } else { "remove" };
        match self.removed_key() {
            Some(key) => write!(f, "Change({verb} {} {key})", self.kind().as_str()),
            None => write!(f, "Change({verb} {})", self.kind().as_str()),
        }
    }
}

impl Change {
    pub fn add_tool(
        make: impl Fn() -> Result<Tool, ServerError> + Send + Sync + 'static,
    ) -> Change {
        Change::AddTool(Arc::new(make))
    }

    pub fn add_resource(
        make: impl Fn() -> Result<Resource, ServerError> + Send + Sync + 'static,
    ) -> Change {
        Change::AddResource(Arc::new(make))
    }

    pub fn add_template(
        make: impl Fn() -> Result<ResourceTemplate, ServerError> + Send + Sync + 'static,
    ) -> Change {
        Change::AddTemplate(Arc::new(make))
    }

    pub fn add_prompt(
        make: impl Fn() -> Result<Prompt, ServerError> + Send + Sync + 'static,
    ) -> Change {
        Change::AddPrompt(Arc::new(make))
    }

    /// The removal of the definition of `kind` with `key`.
    pub fn remove(kind: DefinitionKind, key: &str) -> Change {
        let key = key.to_string();
        match kind {
            DefinitionKind::Tool => Change::RemoveTool(key),
            DefinitionKind::Resource => Change::RemoveResource(key),
            DefinitionKind::Template => Change::RemoveTemplate(key),
            DefinitionKind::Prompt => Change::RemovePrompt(key),
        }
    }

    pub fn kind(&self) -> DefinitionKind {
        match self {
            Change::AddTool(_) | Change::RemoveTool(_) => DefinitionKind::Tool,
            Change::AddResource(_) | Change::RemoveResource(_) => DefinitionKind::Resource,
            Change::AddTemplate(_) | Change::RemoveTemplate(_) => DefinitionKind::Template,
            Change::AddPrompt(_) | Change::RemovePrompt(_) => DefinitionKind::Prompt,
        }
    }

    pub fn is_add(&self) -> bool {
        matches!(
            self,
            Change::AddTool(_)
                | Change::AddResource(_)
                | Change::AddTemplate(_)
                | Change::AddPrompt(_)
        )
    }

    fn removed_key(&self) -> Option<&str> {
        match self {
            Change::RemoveTool(key)
            | Change::RemoveResource(key)
            | Change::RemoveTemplate(key)
            | Change::RemovePrompt(key) => Some(key),
            _ => None,
        }
    }

    /// The key of the definition this change is about. An addition is
    /// built once to learn it, which also checks that it builds; the
    /// definition is dropped at once (it never runs here).
    pub fn key(&self) -> Result<String, ServerError> {
        Ok(match self {
            Change::AddTool(make) => make()?.name,
            Change::AddResource(make) => make()?.uri,
            Change::AddTemplate(make) => make()?.uri_template,
            Change::AddPrompt(make) => make()?.name,
            Change::RemoveTool(key)
            | Change::RemoveResource(key)
            | Change::RemoveTemplate(key)
            | Change::RemovePrompt(key) => key.clone(),
        })
    }
}

/// What the log holds for one definition.
#[derive(Clone)]
enum Op {
    /// Added (or replaced in place).
    Add(Change),
    /// Removed, then added again: replayed as both, so it lands at the end
    /// of its list as it did on the running shards.
    Readd(Change),
    Remove,
}

#[derive(Clone)]
struct Entry {
    kind: DefinitionKind,
    key: String,
    op: Op,
}

/// The node's record of node-wide changes, one entry per definition key:
/// a later change to a key replaces its entry, so the log is bounded by
/// the number of distinct keys ever changed (`keys_max`), not by how
/// often they change.
pub struct ChangeLog {
    entries: Vec<Entry>,
    keys_max: usize,
}

impl ChangeLog {
    pub fn new(keys_max: usize) -> ChangeLog {
        ChangeLog {
            entries: Vec::new(),
            keys_max,
        }
    }

    /// Records a batch of keyed changes ([`Change::key`]); all or nothing
    /// when it would take the log past its bound.
    pub fn record(&mut self, batch: &[(String, Change)]) -> Result<(), ServerError> {
        let mut fresh: Vec<(DefinitionKind, &str)> = Vec::new();
        for (key, change) in batch {
            let known = self
                .entries
                .iter()
                .any(|entry| entry.kind == change.kind() && entry.key == *key);
            if !known && !fresh.contains(&(change.kind(), key.as_str())) {
                fresh.push((change.kind(), key));
            }
        }
        if self.entries.len() + fresh.len() > self.keys_max {
            return Err(ServerError::TooManyDefinitions {
                kind: "changed",
                max: self.keys_max,
            });
        }
        for (key, change) in batch {
            self.record_one(key, change);
        }
        Ok(())
    }

    fn record_one(&mut self, key: &str, change: &Change) {
        let kind = change.kind();
        let position = self
            .entries
            .iter()
            .position(|entry| entry.kind == kind && entry.key == key);
        let Some(position) = position else {
            let op = if change.is_add() {
                Op::Add(change.clone())
            } else {
                Op::Remove
            };
            self.entries.push(Entry {
                kind,
                key: key.to_string(),
                op,
            });
            return;
        };
        let entry = &mut self.entries[position];
        match (&entry.op, change.is_add()) {
            (Op::Add(_), true) => entry.op = Op::Add(change.clone()),
            (Op::Readd(_), true) => entry.op = Op::Readd(change.clone()),
            (_, false) => entry.op = Op::Remove,
            (Op::Remove, true) => {
                let mut entry = self.entries.remove(position);
                entry.op = Op::Readd(change.clone());
                self.entries.push(entry);
            }
        }
    }

    /// The changes that bring a freshly built server to where the running
    /// shards are (for node-wide changes), in order.
    pub fn replay(&self) -> Vec<Change> {
        let mut changes = Vec::with_capacity(self.entries.len());
        for entry in &self.entries {
            match &entry.op {
                Op::Add(change) => changes.push(change.clone()),
                Op::Readd(change) => {
                    changes.push(Change::remove(entry.kind, &entry.key));
                    changes.push(change.clone());
                }
                Op::Remove => changes.push(Change::remove(entry.kind, &entry.key)),
            }
        }
        changes
    }

    /// Definition keys the log holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
