//! A shard's server as it is now: the current definitions (a [`Server`]
//! snapshot each request takes once) and the sessions that serve them,
//! held weakly. An edit swaps in a new snapshot and then tells every
//! subscribed session, once per list, which lists changed; requests
//! already running keep the snapshot they started with.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use slab::Slab;

use super::{Change, Lists, Prompt, Resource, ResourceTemplate, Server, ServerError, Tool};

/// Definitions of one kind (tools, resources, templates, prompts) a
/// server may hold after runtime additions, unless the runtime is given
/// another bound (`limits.definitions_per_kind_max`).
pub const DEFINITIONS_PER_KIND_MAX: usize = 10_000;

/// A session as the live server sees it: told when lists or resources
/// change. The session layer implements it.
pub trait Subscriber {
    /// `lists` changed (each at least once since the last call).
    fn lists_changed(&self, lists: Lists);
    /// The resource at `uri` changed.
    fn resource_updated(&self, uri: &str);
}

/// One shard's server. Shard-local: `Rc`, no locks.
///
/// ```
/// use serde_json::json;
/// use shardmcp::server::{LiveServer, Lists, Server, Tool, ToolResult};
///
/// let live = LiveServer::new(Server::builder("s", "1").build().unwrap());
/// assert!(live.current().tools().is_empty());
/// let late = Tool::builder("late", "Added at runtime.")
///     .handler(|_call| async { Ok(ToolResult::text("here")) })
///     .unwrap();
/// assert_eq!(live.add_tool(late).unwrap(), Lists { tools: true, ..Lists::NONE });
/// assert_eq!(live.current().tools().len(), 1);
/// assert!(live.remove_tool("late"));
/// assert!(!live.remove_tool("late"), "already gone: nothing changed");
/// ```
pub struct LiveServer {
    current: RefCell<Rc<Server>>,
    /// Set while an edit runs: an edit from inside it would be lost when
    /// the outer one swaps in its copy, so it is refused.
    editing: Cell<bool>,
    definitions_max: usize,
    subscribers: RefCell<Slab<Weak<dyn Subscriber>>>,
}

/// One edit of a server: additions and removals, applied all together or
/// not at all by [`LiveServer::edit`].
pub struct ServerEdit {
    server: Server,
    changed: Lists,
    definitions_max: usize,
}

impl ServerEdit {
    /// The definitions as edited so far.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Adds `tool`, or replaces the tool of the same name in place.
    pub fn add_tool(&mut self, tool: Tool) -> Result<(), ServerError> {
        self.server.upsert_tool(tool, self.definitions_max)?;
        self.changed.tools = true;
        Ok(())
    }

    /// Removes the tool; false (and nothing changed) when there is none.
    pub fn remove_tool(&mut self, name: &str) -> bool {
        let removed = self.server.remove_tool(name);
        self.changed.tools |= removed;
        removed
    }

    pub fn add_resource(&mut self, resource: Resource) -> Result<(), ServerError> {
        self.server
            .upsert_resource(resource, self.definitions_max)?;
        self.changed.resources = true;
        Ok(())
    }

    pub fn remove_resource(&mut self, uri: &str) -> bool {
        let removed = self.server.remove_resource(uri);
        self.changed.resources |= removed;
        removed
    }

    pub fn add_template(&mut self, template: ResourceTemplate) -> Result<(), ServerError> {
        self.server
            .upsert_template(template, self.definitions_max)?;
        self.changed.resources = true;
        Ok(())
    }

    pub fn remove_template(&mut self, uri_template: &str) -> bool {
        let removed = self.server.remove_template(uri_template);
        self.changed.resources |= removed;
        removed
    }

    pub fn add_prompt(&mut self, prompt: Prompt) -> Result<(), ServerError> {
        self.server.upsert_prompt(prompt, self.definitions_max)?;
        self.changed.prompts = true;
        Ok(())
    }

    pub fn remove_prompt(&mut self, name: &str) -> bool {
        let removed = self.server.remove_prompt(name);
        self.changed.prompts |= removed;
        removed
    }

    /// Applies one node-wide change, building its definition here.
    pub fn apply(&mut self, change: &Change) -> Result<(), ServerError> {
        match change {
            Change::AddTool(make) => self.add_tool(make()?),
            Change::AddResource(make) => self.add_resource(make()?),
            Change::AddTemplate(make) => self.add_template(make()?),
            Change::AddPrompt(make) => self.add_prompt(make()?),
            Change::RemoveTool(name) => {
                self.remove_tool(name);
                Ok(())
            }
            Change::RemoveResource(uri) => {
                self.remove_resource(uri);
                Ok(())
            }
            Change::RemoveTemplate(uri_template) => {
                self.remove_template(uri_template);
                Ok(())
            }
            Change::RemovePrompt(name) => {
                self.remove_prompt(name);
                Ok(())
            }
        }
    }
}

impl LiveServer {
    pub fn new(server: Server) -> Rc<LiveServer> {
        LiveServer::with_definitions_max(server, DEFINITIONS_PER_KIND_MAX)
    }

    /// A live server whose runtime additions stop at `definitions_max`
    /// definitions of each kind (past it an addition is refused with
    /// [`ServerError::TooManyDefinitions`]).
    pub fn with_definitions_max(server: Server, definitions_max: usize) -> Rc<LiveServer> {
        Rc::new(LiveServer {
            current: RefCell::new(Rc::new(server)),
            editing: Cell::new(false),
            definitions_max,
            subscribers: RefCell::new(Slab::new()),
        })
    }

    /// The definitions now. A request takes this once and keeps it.
    pub fn current(&self) -> Rc<Server> {
        self.current.borrow().clone()
    }

    /// Edits the definitions: `edit` works on a copy, which replaces the
    /// current snapshot only if it returns `Ok`. Then every subscribed
    /// session hears, once per list, which lists changed. Returns what
    /// `edit` returned and the lists that changed. An edit started from
    /// inside another is refused ([`ServerError::NestedEdit`]).
    pub fn edit<R>(
        &self,
        edit: impl FnOnce(&mut ServerEdit) -> Result<R, ServerError>,
    ) -> Result<(R, Lists), ServerError> {
        if self.editing.replace(true) {
            return Err(ServerError::NestedEdit);
        }
        // Cleared however `edit` ends, a panic included.
        struct Editing<'a>(&'a Cell<bool>);
        impl Drop for Editing<'_> {
            fn drop(&mut self) {
                self.0.set(false);
            }
        }
        let guard = Editing(&self.editing);
        let mut draft = ServerEdit {
            server: (*self.current()).clone(),
            changed: Lists::NONE,
            definitions_max: self.definitions_max,
        };
        let out = edit(&mut draft);
        drop(guard);
        let out = out?;
        let changed = draft.changed;
        if changed.any() {
            *self.current.borrow_mut() = Rc::new(draft.server);
            self.notify(|subscriber| subscriber.lists_changed(changed));
        }
        Ok((out, changed))
    }

    /// Applies node-wide changes as one edit (one notification per list).
    pub fn apply(&self, changes: &[Change]) -> Result<Lists, ServerError> {
        self.edit(|draft| changes.iter().try_for_each(|change| draft.apply(change)))
            .map(|((), changed)| changed)
    }

    /// Adds `tool` (or replaces the one of the same name); the lists that changed.
    pub fn add_tool(&self, tool: Tool) -> Result<Lists, ServerError> {
        self.edit(|draft| draft.add_tool(tool))
            .map(|(_, lists)| lists)
    }

    /// Removes a tool; false when there was none (then nobody is told).
    pub fn remove_tool(&self, name: &str) -> bool {
        self.removed(|draft| draft.remove_tool(name))
    }

    pub fn add_resource(&self, resource: Resource) -> Result<Lists, ServerError> {
        self.edit(|draft| draft.add_resource(resource))
            .map(|(_, lists)| lists)
    }

    pub fn remove_resource(&self, uri: &str) -> bool {
        self.removed(|draft| draft.remove_resource(uri))
    }

    pub fn add_template(&self, template: ResourceTemplate) -> Result<Lists, ServerError> {
        self.edit(|draft| draft.add_template(template))
            .map(|(_, lists)| lists)
    }

    pub fn remove_template(&self, uri_template: &str) -> bool {
        self.removed(|draft| draft.remove_template(uri_template))
    }

    pub fn add_prompt(&self, prompt: Prompt) -> Result<Lists, ServerError> {
        self.edit(|draft| draft.add_prompt(prompt))
            .map(|(_, lists)| lists)
    }

    pub fn remove_prompt(&self, name: &str) -> bool {
        self.removed(|draft| draft.remove_prompt(name))
    }

    fn removed(&self, remove: impl FnOnce(&mut ServerEdit) -> bool) -> bool {
        self.edit(|draft| Ok(remove(draft)))
            .is_ok_and(|(removed, _)| removed)
    }

    /// Tells this shard's sessions that the resource at `uri` changed (each
    /// decides whether it follows it).
    pub fn resource_updated(&self, uri: &str) {
        self.notify(|subscriber| subscriber.resource_updated(uri));
    }

    /// Adds a session to be told of changes; its key is for [`Self::unsubscribe`].
    pub fn subscribe(&self, subscriber: Weak<dyn Subscriber>) -> usize {
        self.subscribers.borrow_mut().insert(subscriber)
    }

    pub fn unsubscribe(&self, key: usize) {
        self.subscribers.borrow_mut().try_remove(key);
    }

    /// Sessions subscribed now.
    pub fn subscriber_count(&self) -> usize {
        self.subscribers.borrow().len()
    }

    fn notify(&self, tell: impl Fn(&dyn Subscriber)) {
        // Collected first: a subscriber told may end (and unsubscribe).
        let alive: Vec<Rc<dyn Subscriber>> = self
            .subscribers
            .borrow()
            .iter()
            .filter_map(|(_, subscriber)| subscriber.upgrade())
            .collect();
        for subscriber in &alive {
            tell(subscriber.as_ref());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::server::{ChangeLog, DefinitionKind, ToolResult};

    fn tool(name: &str, description: &str) -> Tool {
        Tool::builder(name, description)
            .handler(|_call| async { Ok(ToolResult::text("x")) })
            .unwrap()
    }

    fn names(server: &Server) -> Vec<String> {
        server.tools().iter().map(|t| t.name.clone()).collect()
    }

    #[derive(Default)]
    struct Recorder {
        lists: RefCell<Vec<Lists>>,
        uris: RefCell<Vec<String>>,
    }

    impl Subscriber for Recorder {
        fn lists_changed(&self, lists: Lists) {
            self.lists.borrow_mut().push(lists);
        }
        fn resource_updated(&self, uri: &str) {
            self.uris.borrow_mut().push(uri.to_string());
        }
    }

    #[test]
    fn an_edit_swaps_the_snapshot_and_tells_subscribers_once_per_list() {
        let live = LiveServer::new(
            Server::builder("s", "1")
                .tool(tool("a", "1"))
                .build()
                .unwrap(),
        );
        let recorder = Rc::new(Recorder::default());
        let as_subscriber: Rc<dyn Subscriber> = recorder.clone();
        let key = live.subscribe(Rc::downgrade(&as_subscriber));
        let before = live.current();
        let (_, changed) = live
            .edit(|draft| {
                draft.add_tool(tool("b", "2"))?;
                draft.add_tool(tool("a", "replaced"))?;
                draft.add_prompt(Prompt::new("p", "d", |_args| async {
                    Ok(crate::server::PromptResult::default())
                }))
            })
            .unwrap();
        assert_eq!(
            changed,
            Lists {
                tools: true,
                prompts: true,
                resources: false
            }
        );
        assert_eq!(
            names(&before),
            ["a"],
            "a running request keeps its snapshot"
        );
        let now = live.current();
        assert_eq!(
            names(&now),
            ["a", "b"],
            "replaced in place, added at the end"
        );
        assert_eq!(now.tool("a").unwrap().description, "replaced");
        assert_eq!(*recorder.lists.borrow(), [changed]);

        // A failed edit changes nothing and tells nobody.
        let failed = live.edit(|draft| {
            draft.remove_tool("a");
            Err::<(), _>(ServerError::InvalidName(String::new()))
        });
        assert!(failed.is_err());
        assert_eq!(names(&live.current()), ["a", "b"]);
        assert_eq!(recorder.lists.borrow().len(), 1);

        // An edit from inside an edit would be lost: refused.
        let nested = live.edit(|_draft| live.add_tool(tool("c", "3")).map(|_| ()));
        assert_eq!(nested.unwrap_err(), ServerError::NestedEdit);
        assert_eq!(names(&live.current()), ["a", "b"]);

        // Removing nothing is no change.
        assert!(!live.remove_prompt("nope"));
        assert_eq!(recorder.lists.borrow().len(), 1);
        assert!(live.remove_tool("a"));
        assert_eq!(names(&live.current()), ["b"]);
        assert_eq!(live.current().tool("b").unwrap().name, "b", "index follows");

        live.resource_updated("x://1");
        assert_eq!(*recorder.uris.borrow(), ["x://1"]);
        live.unsubscribe(key);
        live.resource_updated("x://2");
        assert_eq!(recorder.uris.borrow().len(), 1, "unsubscribed");
        assert_eq!(live.subscriber_count(), 0);
    }

    #[test]
    fn additions_stop_at_the_bound_and_replacements_do_not_count() {
        let live = LiveServer::with_definitions_max(Server::builder("s", "1").build().unwrap(), 2);
        live.add_tool(tool("a", "1")).unwrap();
        live.add_tool(tool("b", "1")).unwrap();
        assert_eq!(
            live.add_tool(tool("c", "1")).unwrap_err(),
            ServerError::TooManyDefinitions {
                kind: "tool",
                max: 2
            }
        );
        live.add_tool(tool("a", "again")).unwrap();
        assert_eq!(names(&live.current()), ["a", "b"]);
    }

    #[test]
    fn lists_offered_follow_definitions_and_declarations() {
        let bare = Server::builder("s", "1").build().unwrap();
        assert_eq!(bare.lists(), Lists::NONE);
        assert_eq!(bare.capabilities(), serde_json::json!({}));
        let declared = Server::builder("s", "1")
            .declare(Lists {
                prompts: true,
                ..Lists::NONE
            })
            .build()
            .unwrap();
        assert_eq!(
            declared.capabilities(),
            serde_json::json!({"prompts": {"listChanged": true}})
        );
        let live = LiveServer::new(bare);
        live.add_template(
            ResourceTemplate::new("x://{id}", "x", |_uri, _vars| async { Ok(vec![]) }).unwrap(),
        )
        .unwrap();
        assert_eq!(
            live.current().capabilities()["resources"],
            serde_json::json!({"subscribe": true, "listChanged": true})
        );
        assert!(live.current().template("x://{id}").is_some());
        assert!(live.remove_template("x://{id}"));
        assert_eq!(live.current().lists(), Lists::NONE);
    }

    #[test]
    fn a_change_log_replays_to_the_same_lists_and_stays_bounded() {
        let add = |name: &'static str| {
            let change = Change::add_tool(move || {
                Tool::builder(name, "logged").handler(|_call| async { Ok(ToolResult::text("x")) })
            });
            (name.to_string(), change)
        };
        let remove = |name: &str| (name.to_string(), Change::remove(DefinitionKind::Tool, name));
        let factory = || {
            Server::builder("s", "1")
                .tool(tool("a", "f"))
                .tool(tool("b", "f"))
                .build()
                .unwrap()
        };

        let running = LiveServer::new(factory());
        let mut log = ChangeLog::new(3);
        let batches = [
            vec![add("c")],
            vec![remove("a")],
            vec![add("d")],
            vec![remove("c"), add("a")],
            vec![add("c")],
            vec![add("d")],
        ];
        for batch in &batches {
            log.record(batch).unwrap();
            let changes: Vec<Change> = batch.iter().map(|(_, change)| change.clone()).collect();
            running.apply(&changes).unwrap();
        }
        assert_eq!(names(&running.current()), ["b", "d", "a", "c"]);
        assert_eq!(log.len(), 3, "one entry per key");

        let restarted = LiveServer::new(factory());
        restarted.apply(&log.replay()).unwrap();
        assert_eq!(names(&restarted.current()), names(&running.current()));

        // A fourth distinct key is refused, and the batch records nothing.
        assert!(matches!(
            log.record(&[add("a"), add("e")]),
            Err(ServerError::TooManyDefinitions { .. })
        ));
        assert_eq!(log.len(), 3);
    }
}
