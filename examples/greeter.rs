//! A complete server of your own: one tool, one resource, one prompt, served
//! by every shard over TCP until Ctrl-C.
//!
//! ```sh
//! cargo run --release --example greeter -- 127.0.0.1:9000
//! ```

use std::sync::Arc;

use serde_json::json;
use shardmcp::config::Config;
use shardmcp::server::{
    Content, Prompt, PromptMessage, PromptResult, Resource, Server, ServerFactory, Tool, ToolResult,
};

fn factory() -> ServerFactory {
    // Runs once per shard: handlers may hold Rc and shard-local state.
    Arc::new(|| {
        Server::builder("greeter", "1.0.0")
            .instructions("Greets people by name.")
            .tool(
                Tool::builder("greet", "Greets someone by name.")
                    .input_schema(json!({
                        "type": "object",
                        "properties": {"name": {"type": "string"}},
                        "required": ["name"]
                    }))
                    .handler(|call| async move {
                        let name = call.str_arg("name").unwrap_or("you").to_string();
                        Ok(ToolResult::text(format!("Hello, {name}!")))
                    })?,
            )
            .resource(Resource::text(
                "greeter://style",
                "style",
                "text/plain",
                "Warm, short, and always with an exclamation mark.",
            ))
            .prompt(
                Prompt::new("welcome", "Welcomes a new user.", |args| async move {
                    let name = args.get("name").cloned().unwrap_or_default();
                    Ok(PromptResult {
                        description: None,
                        messages: vec![PromptMessage::user(Content::text(format!(
                            "Write a warm welcome for {name}."
                        )))],
                    })
                })
                .argument("name", "Who joined", true),
            )
            .build()
    })
}

fn main() {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let mut config = Config::default();
    config.listen.tcp = address;
    if let Err(error) = config.validate() {
        eprintln!("greeter: {error}");
        std::process::exit(1);
    }
    let node = match shardmcp::runtime::start(config, factory()) {
        Ok(node) => node,
        Err(error) => {
            eprintln!("greeter: {error}");
            std::process::exit(1);
        }
    };
    for listener in node.listeners() {
        println!("greeter: {} listening on {}", listener.kind, listener.addr);
    }
    let drainer = node.drainer();
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]) {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("greeter: cannot install signal handlers: {error}");
            std::process::exit(1);
        }
    };
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            drainer.drain();
        }
    });
    if let Err(error) = node.join() {
        eprintln!("greeter: {error}");
        std::process::exit(1);
    }
}
