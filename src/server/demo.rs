//! The embedded default server that plain `shardmcp serve` runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::protocol::logging::LogLevel;

use super::{
    Content, Prompt, PromptMessage, PromptResult, Resource, ResourceContents, ResourceTemplate,
    Server, ServerError, ServerFactory, TaskSupport, Tool, ToolError, ToolResult,
};

const README: &str =
    "shardmcp demo server: try the echo, add and slow tools, read demo://notes/{name}, \
or get the greeting and review prompts.";

pub fn factory() -> ServerFactory {
    // One tally for the node: every shard's `slow` counts into it.
    let tally = Arc::new(SlowTally::default());
    Arc::new(move || build_with(tally.clone()))
}

pub fn build() -> Result<Server, ServerError> {
    build_with(Arc::default())
}

/// How many `slow` calls are running, ran to their end, or were stopped
/// before it (cancelled, or their request dropped). Each result reports it,
/// so a client can see from a later call that a cancelled one really stopped.
#[derive(Default)]
struct SlowTally {
    running: AtomicU64,
    completed: AtomicU64,
    stopped: AtomicU64,
}

/// One running `slow` call; dropped unfinished (the handler returned early
/// or its future was dropped), it counts as stopped.
struct SlowRun {
    tally: Arc<SlowTally>,
    finished: bool,
}

impl SlowRun {
    fn start(tally: Arc<SlowTally>) -> SlowRun {
        tally.running.fetch_add(1, Ordering::SeqCst);
        SlowRun {
            tally,
            finished: false,
        }
    }

    /// Marks this call finished; what the tally says of the others.
    fn finish(mut self) -> serde_json::Value {
        self.finished = true;
        json!({
            "othersRunning": self.tally.running.load(Ordering::SeqCst) - 1,
            "completed": self.tally.completed.load(Ordering::SeqCst),
            "stopped": self.tally.stopped.load(Ordering::SeqCst),
        })
    }
}

impl Drop for SlowRun {
    fn drop(&mut self) {
        let ended = if self.finished {
            &self.tally.completed
        } else {
            &self.tally.stopped
        };
        ended.fetch_add(1, Ordering::SeqCst);
        self.tally.running.fetch_sub(1, Ordering::SeqCst);
    }
}

fn build_with(tally: Arc<SlowTally>) -> Result<Server, ServerError> {
    let demo = Server::builder("shardmcp", env!("CARGO_PKG_VERSION"))
        .title("shardmcp demo server")
        .instructions("A demo server: echo text, add numbers, or wait a while with `slow`; read demo://readme and demo://notes/{name}; get the greeting and review prompts.")
        .resource(
            Resource::text("demo://readme", "readme", "text/plain", README)
                .title("About this server")
                .size(README.len() as u64),
        )
        .resource(
            Resource::new("demo://pixel.png", "pixel", |uri| async move {
                Ok(vec![ResourceContents::blob(&uri, "image/png", super::conformance::PNG_BASE64)])
            })
            .mime_type("image/png")
            .description("A 1x1 PNG, as a blob"),
        )
        .template(
            ResourceTemplate::new("demo://notes/{name}", "note", |uri, vars| async move {
                let name = vars.get("name").cloned().unwrap_or_default();
                Ok(vec![ResourceContents::text(&uri, "text/plain", format!("note {name}"))])
            })?
            .description("A note per name")
            .mime_type("text/plain")
            .complete_with(|variable, partial| {
                complete_from(variable == "name", &["alpha", "beta", "gamma"], partial)
            }),
        )
        .prompt(
            Prompt::new("greeting", "Greets someone by name.", |args| async move {
                let name = args.get("name").cloned().unwrap_or_default();
                Ok(PromptResult {
                    description: Some("A greeting".into()),
                    messages: vec![PromptMessage::user(Content::text(format!("Say hello to {name}.")))],
                })
            })
            .argument("name", "Who to greet", true)
            .complete_with(|argument, partial| {
                complete_from(argument == "name", &["Ada", "Alan", "Grace"], partial)
            }),
        )
        .prompt(
            Prompt::new("review", "Asks for a review of the readme, embedding it.", |args| async move {
                let focus = args.get("focus").cloned().unwrap_or_else(|| "clarity".into());
                Ok(PromptResult {
                    description: None,
                    messages: vec![
                        PromptMessage::user(Content::Resource(ResourceContents::text(
                            "demo://readme",
                            "text/plain",
                            README,
                        ))),
                        PromptMessage::user(Content::text(format!("Review it for {focus}."))),
                    ],
                })
            })
            .argument("focus", "What to look at", false),
        )
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
        .tool(slow_tool(tally)?)
        .tool(
            Tool::builder("touch_note", "Marks demo://notes/{name} as changed: its subscribers are told.")
                .input_schema(json!({
                    "type": "object",
                    "properties": {"name": {"type": "string"}},
                    "required": ["name"]
                }))
                .handler(|call| async move {
                    let uri = format!("demo://notes/{}", call.str_arg("name").unwrap_or_default());
                    call.resource_updated(&uri);
                    Ok(ToolResult::text(format!("touched {uri}")))
                })?,
        )
        ;
    // The conformance suite's fixtures ride along, so the default server passes it.
    super::conformance::add_fixtures(demo)?.build()
}

/// `slow`: waits in four steps, logging and reporting progress at each;
/// stops when cancelled. Its result carries the tally of all `slow` calls.
fn slow_tool(tally: Arc<SlowTally>) -> Result<Tool, ServerError> {
    Tool::builder(
        "slow",
        "Waits for the given number of milliseconds (at most 60000) in four steps, \
         reporting progress and logging each step; cancellable. Its result tells how \
         many other slow calls are running, ran to their end, or were stopped.",
    )
    .input_schema(json!({
        "type": "object",
        "properties": {"ms": {"type": "integer", "minimum": 0, "maximum": 60000}},
        "required": ["ms"]
    }))
    .output_schema(json!({
        "type": "object",
        "properties": {
            "waitedMs": {"type": "integer"},
            "othersRunning": {"type": "integer"},
            "completed": {"type": "integer"},
            "stopped": {"type": "integer"}
        },
        "required": ["waitedMs", "othersRunning", "completed", "stopped"]
    }))
    .task_support(TaskSupport::Optional)
    .handler(move |call| {
        let tally = tally.clone();
        async move {
            let run = SlowRun::start(tally);
            const STEPS: u64 = 4;
            let ms = call
                .arguments
                .get("ms")
                .and_then(|v| v.as_u64())
                .unwrap_or(0);
            for step in 1..=STEPS {
                let waited = futures_lite::future::or(
                    async {
                        glommio::timer::sleep(Duration::from_millis(ms / STEPS)).await;
                        true
                    },
                    async {
                        call.cancelled().await;
                        false
                    },
                )
                .await;
                if !waited {
                    return Err(ToolError::Failed("cancelled".into()));
                }
                call.log(
                    LogLevel::Info,
                    Some("slow"),
                    json!({"step": step, "of": STEPS}),
                )
                .await;
                call.progress(step as f64, Some(STEPS as f64), None).await;
            }
            let mut tally = run.finish();
            tally["waitedMs"] = json!(ms);
            Ok(ToolResult {
                content: vec![Content::text(format!("waited {ms} ms"))],
                structured_content: Some(tally),
                is_error: false,
            })
        }
    })
}

fn complete_from(applies: bool, candidates: &[&str], partial: &str) -> Vec<String> {
    if !applies {
        return Vec::new();
    }
    candidates
        .iter()
        .filter(|candidate| candidate.starts_with(partial))
        .map(|candidate| candidate.to_string())
        .collect()
}
