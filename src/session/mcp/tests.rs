//! The MCP session through an in-memory transport: frames in, frames out, no
//! sockets. Grid: lifecycle phase × method × good or bad input.

use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::protocol::logging::LogLevel;
use crate::protocol::request_state::StateKey;
use crate::server::{demo, LiveServer, Server, Tool, ToolResult};
use crate::time::{ManualClock, SystemClock};

fn run<F: Future<Output = ()> + 'static>(f: F) {
    crate::sync::run_on_fresh_shard(f)
}

/// A session with a fixed state key (the node shares one in real runs).
fn new_session(
    server: Rc<Server>,
    limits: SessionLimits,
    clock: crate::time::SharedClock,
) -> Rc<McpSession> {
    McpSession::new(
        LiveServer::new(Rc::unwrap_or_clone(server)),
        limits,
        clock,
        StateKey::new([9; 32]),
    )
}

fn demo_tool_count() -> usize {
    demo::build().unwrap().tools().len()
}

fn session() -> Rc<McpSession> {
    new_session(
        Rc::new(demo::build().unwrap()),
        SessionLimits::default(),
        SystemClock::shared(),
    )
}

async fn send(session: &Rc<McpSession>, frame: Value) -> Option<Value> {
    send_raw(session, &frame.to_string()).await
}

async fn send_raw(session: &Rc<McpSession>, frame: &str) -> Option<Value> {
    session
        .handle_frame(frame.as_bytes())
        .await
        .map(|bytes| serde_json::from_slice(&bytes).expect("valid JSON out"))
}

fn request(id: i64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

fn init_params(version: &str) -> Value {
    json!({"protocolVersion": version, "capabilities": {"sampling": {}}, "clientInfo": {"name": "t", "version": "1"}})
}

async fn initialized(version: &str) -> Rc<McpSession> {
    let session = session();
    let reply = send(&session, request(0, "initialize", init_params(version)))
        .await
        .unwrap();
    assert!(reply.get("result").is_some(), "{reply}");
    assert!(send(
        &session,
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
    )
    .await
    .is_none());
    session
}

fn error_code(reply: &Value) -> i64 {
    reply["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("not an error: {reply}"))
}

#[test]
fn initialize_negotiates_and_reports_derived_capabilities() {
    run(async {
        for (asked, agreed) in [
            ("2025-11-25", "2025-11-25"),
            ("2025-06-18", "2025-06-18"),
            ("2025-03-26", "2025-03-26"),
            ("2024-11-05", "2024-11-05"),
            ("1999-01-01", "2025-11-25"),
        ] {
            let session = session();
            let reply = send(&session, request(1, "initialize", init_params(asked)))
                .await
                .unwrap();
            let result = &reply["result"];
            assert_eq!(result["protocolVersion"], agreed, "asked {asked}");
            assert_eq!(
                result["capabilities"],
                json!({
                    "tools": {"listChanged": true},
                    "logging": {},
                    "resources": {"subscribe": true, "listChanged": true},
                    "prompts": {"listChanged": true},
                    "completions": {},
                    "tasks": {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
                })
            );
            assert_eq!(result["serverInfo"]["name"], "shardmcp");
            assert!(result["instructions"].as_str().is_some());
            assert_eq!(session.protocol_version(), Some(agreed));
            assert_eq!(session.client_capabilities(), Some(json!({"sampling": {}})));
            assert!(!session.is_ready());
            send(
                &session,
                json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            )
            .await;
            assert!(session.is_ready());
        }
    });
}

#[test]
fn a_server_without_tools_advertises_no_tools_capability() {
    run(async {
        let bare = Rc::new(Server::builder("bare", "0").build().unwrap());
        let session = new_session(bare, SessionLimits::default(), SystemClock::shared());
        let reply = send(
            &session,
            request(1, "initialize", init_params("2025-11-25")),
        )
        .await
        .unwrap();
        assert_eq!(reply["result"]["capabilities"], json!({}));
        assert!(reply["result"].get("instructions").is_none());
    });
}

#[test]
fn before_initialize_only_ping_and_initialize_are_served() {
    run(async {
        let session = session();
        let pong = send(&session, request(1, "ping", json!({}))).await.unwrap();
        assert_eq!(pong, json!({"jsonrpc": "2.0", "id": 1, "result": {}}));
        for method in ["tools/list", "tools/call", "nope"] {
            let reply = send(&session, request(2, method, json!({}))).await.unwrap();
            assert_eq!(error_code(&reply), -32600, "{method}");
            assert!(reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not initialized"));
        }
    });
}

#[test]
fn a_second_initialize_and_bad_initialize_params_are_refused() {
    run(async {
        let session = session();
        for bad in [
            json!({}),
            json!({"protocolVersion": 5}),
            json!({"protocolVersion": "2025-11-25"}),
            json!({"protocolVersion": "2025-11-25", "clientInfo": {}, "capabilities": 3}),
        ] {
            let reply = send(&session, request(1, "initialize", bad.clone()))
                .await
                .unwrap();
            assert_eq!(error_code(&reply), -32602, "{bad}");
        }
        let session = initialized("2025-11-25").await;
        let reply = send(
            &session,
            request(2, "initialize", init_params("2025-11-25")),
        )
        .await
        .unwrap();
        assert_eq!(error_code(&reply), -32600);
        assert!(reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already initialized"));
        assert_eq!(
            session.protocol_version(),
            Some("2025-11-25"),
            "first negotiation stands"
        );
    });
}

#[test]
fn malformed_frames_get_errors_and_the_session_stays_usable() {
    run(async {
        let session = initialized("2025-11-25").await;
        assert_eq!(
            error_code(&send_raw(&session, "{not json").await.unwrap()),
            -32700
        );
        assert_eq!(
            error_code(
                &send_raw(&session, r#"{"jsonrpc":"2.0","id":1,"method":7}"#)
                    .await
                    .unwrap()
            ),
            -32600
        );
        let unknown = send(&session, request(3, "resources/nope", json!({})))
            .await
            .unwrap();
        assert_eq!(
            (unknown["id"].clone(), error_code(&unknown)),
            (json!(3), -32601)
        );
        let params = send_raw(
            &session,
            r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":[1]}"#,
        )
        .await
        .unwrap();
        assert_eq!(error_code(&params), -32602);
        // A response to a request never sent, and an unknown notification: ignored.
        assert!(
            send_raw(&session, r#"{"jsonrpc":"2.0","id":99,"result":{}}"#)
                .await
                .is_none()
        );
        assert!(send_raw(
            &session,
            r#"{"jsonrpc":"2.0","method":"notifications/whatever"}"#
        )
        .await
        .is_none());
        let pong = send(&session, request(5, "ping", json!({}))).await.unwrap();
        assert_eq!(pong["result"], json!({}));
    });
}

#[test]
fn batches_only_on_a_2025_03_26_session() {
    run(async {
        let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/x"},{"jsonrpc":"2.0","id":2,"method":"tools/list"}]"#;
        let session = initialized("2025-11-25").await;
        let refused = send_raw(&session, batch).await.unwrap();
        assert_eq!(error_code(&refused), -32600);
        assert!(refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2025-03-26"));

        let session = initialized("2025-03-26").await;
        let replies = send_raw(&session, batch).await.unwrap();
        let replies = replies.as_array().expect("a batch answer");
        assert_eq!(replies.len(), 2, "the notification gets no entry");
        assert_eq!(replies[0]["id"], 1);
        assert_eq!(
            replies[1]["result"]["tools"].as_array().unwrap().len(),
            demo_tool_count()
        );
    });
}

#[test]
fn tools_list_pages_with_opaque_cursors_and_refuses_bad_ones() {
    run(async {
        let limits = SessionLimits {
            page_size: 2,
            ..SessionLimits::default()
        };
        let session = new_session(
            Rc::new(demo::build().unwrap()),
            limits,
            SystemClock::shared(),
        );
        send(
            &session,
            request(0, "initialize", init_params("2025-11-25")),
        )
        .await;
        let first = send(&session, request(1, "tools/list", json!({})))
            .await
            .unwrap();
        let names: Vec<_> = first["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].clone())
            .collect();
        assert_eq!(names, [json!("echo"), json!("add")]);
        let cursor = first["result"]["nextCursor"].as_str().unwrap().to_string();
        // Walking every page yields every tool once, in declaration order.
        let mut names: Vec<Value> = first["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].clone())
            .collect();
        let mut next = Some(cursor);
        let mut pages = 1;
        while let Some(cursor) = next {
            let page = send(
                &session,
                request(2, "tools/list", json!({"cursor": cursor})),
            )
            .await
            .unwrap();
            names.extend(
                page["result"]["tools"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t["name"].clone()),
            );
            next = page["result"]["nextCursor"].as_str().map(str::to_string);
            pages += 1;
        }
        let all: Vec<Value> = demo::build()
            .unwrap()
            .tools()
            .iter()
            .map(|t| json!(t.name))
            .collect();
        assert_eq!(names, all);
        assert_eq!(pages, all.len().div_ceil(2));
        let add = &first["result"]["tools"][1];
        assert_eq!(add["inputSchema"]["required"], json!(["a", "b"]));
        assert!(add["outputSchema"].is_object());
        for bad in [json!("garbage"), json!("c1.zz"), json!("c1.ff"), json!(5)] {
            let reply = send(&session, request(3, "tools/list", json!({"cursor": bad})))
                .await
                .unwrap();
            assert_eq!(error_code(&reply), -32602, "{bad}");
        }
    });
}

#[test]
fn tools_call_validates_arguments_against_the_schema() {
    run(async {
        let session = initialized("2025-11-25").await;
        let echo = send(
            &session,
            request(
                1,
                "tools/call",
                json!({"name": "echo", "arguments": {"text": "hi"}}),
            ),
        )
        .await
        .unwrap();
        assert_eq!(
            echo["result"],
            json!({"content": [{"type": "text", "text": "hi"}], "isError": false})
        );
        let cases = [
            (json!({"name": "echo", "arguments": {}}), "text"),
            (json!({"name": "echo", "arguments": {"text": 5}}), "/text"),
            (
                json!({"name": "add", "arguments": {"a": "1", "b": 2}}),
                "/a",
            ),
            (json!({"name": "nope"}), "unknown tool: nope"),
            (json!({"arguments": {}}), "params.name"),
            (
                json!({"name": "echo", "arguments": [1]}),
                "arguments must be an object",
            ),
        ];
        for (params, fragment) in cases {
            let reply = send(&session, request(2, "tools/call", params.clone()))
                .await
                .unwrap();
            assert_eq!(error_code(&reply), -32602, "{params}");
            let message = reply["error"]["message"].as_str().unwrap();
            assert!(message.contains(fragment), "{params}: {message}");
        }
    });
}

fn custom_server() -> Rc<Server> {
    Rc::new(
        Server::builder("custom", "1")
            .tool(
                Tool::builder("boom", "Panics.")
                    .handler(|_call| async { panic!("tool exploded") })
                    .unwrap(),
            )
            .tool(
                Tool::builder("fails", "Fails in its own domain.")
                    .handler(|_call| async {
                        Err(crate::server::ToolError::Failed("disk full".into()))
                    })
                    .unwrap(),
            )
            .tool(
                Tool::builder("liar", "Declares an output schema and ignores it.")
                    .output_schema(json!({"type": "object", "required": ["n"]}))
                    .handler(|_call| async { Ok(ToolResult::text("no structure")) })
                    .unwrap(),
            )
            .build()
            .unwrap(),
    )
}

#[test]
fn a_panicking_handler_fails_its_request_with_32603_and_the_session_lives_on() {
    run(async {
        let session = new_session(
            custom_server(),
            SessionLimits::default(),
            SystemClock::shared(),
        );
        send(
            &session,
            request(0, "initialize", init_params("2025-11-25")),
        )
        .await;
        let reply = send(&session, request(1, "tools/call", json!({"name": "boom"})))
            .await
            .unwrap();
        assert_eq!(error_code(&reply), -32603);
        assert!(
            !reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains("exploded"),
            "no internals leak"
        );
        let failed = send(&session, request(2, "tools/call", json!({"name": "fails"})))
            .await
            .unwrap();
        assert_eq!(failed["result"]["isError"], true);
        assert_eq!(failed["result"]["content"][0]["text"], "disk full");
        let liar = send(&session, request(3, "tools/call", json!({"name": "liar"})))
            .await
            .unwrap();
        assert_eq!(error_code(&liar), -32603);
        assert_eq!(session.in_flight(), 0);
        assert_eq!(
            send(&session, request(4, "ping", json!({}))).await.unwrap()["result"],
            json!({})
        );
    });
}

#[test]
fn requests_run_concurrently_and_cancellation_stops_one_without_a_reply() {
    run(async {
        let session = initialized("2025-11-25").await;
        let slow_session = session.clone();
        let slow = glommio::spawn_local(async move {
            send(
                &slow_session,
                request(
                    10,
                    "tools/call",
                    json!({"name": "slow", "arguments": {"ms": 60000}}),
                ),
            )
            .await
        });
        crate::sync::settle(4).await;
        assert_eq!(session.in_flight(), 1);
        // The session answers others while the slow call runs.
        let echo = send(
            &session,
            request(
                11,
                "tools/call",
                json!({"name": "echo", "arguments": {"text": "meanwhile"}}),
            ),
        )
        .await
        .unwrap();
        assert_eq!(echo["result"]["content"][0]["text"], "meanwhile");
        // A duplicate id of a running request is refused.
        let dup = send(&session, request(10, "ping", json!({})))
            .await
            .unwrap();
        assert_eq!(error_code(&dup), -32600);
        // Cancelling an unknown id is ignored; cancelling the slow one ends it.
        assert!(send(
            &session,
            json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId": 999}})
        )
        .await
        .is_none());
        send(&session, json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId": 10, "reason": "user"}})).await;
        assert_eq!(slow.await, None, "a cancelled request gets no response");
        assert_eq!(session.in_flight(), 0);
    });
}

#[test]
fn the_in_flight_bound_refuses_extra_requests_and_close_cancels_all() {
    run(async {
        let limits = SessionLimits {
            in_flight_max: 2,
            ..SessionLimits::default()
        };
        let session = new_session(
            Rc::new(demo::build().unwrap()),
            limits,
            SystemClock::shared(),
        );
        send(
            &session,
            request(0, "initialize", init_params("2025-11-25")),
        )
        .await;
        let mut running = Vec::new();
        for id in 1..=2 {
            let s = session.clone();
            running.push(glommio::spawn_local(async move {
                send(
                    &s,
                    request(
                        id,
                        "tools/call",
                        json!({"name": "slow", "arguments": {"ms": 60000}}),
                    ),
                )
                .await
            }));
        }
        crate::sync::settle(4).await;
        let third = send(&session, request(3, "ping", json!({}))).await.unwrap();
        assert_eq!(error_code(&third), -32000);
        session.close();
        for task in running {
            assert_eq!(task.await, None);
        }
        assert_eq!(session.in_flight(), 0);
        let _ = Duration::ZERO;
    });
}

#[test]
fn resources_list_read_text_blob_and_templates() {
    run(async {
        let session = initialized("2025-11-25").await;
        let list = send(&session, request(1, "resources/list", json!({})))
            .await
            .unwrap();
        let uris: Vec<_> = list["result"]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["uri"].clone())
            .collect();
        assert_eq!(
            uris[..2],
            [json!("demo://readme"), json!("demo://pixel.png")]
        );
        assert!(
            uris.contains(&json!("test://static-text")),
            "conformance fixtures listed too"
        );
        assert_eq!(list["result"]["resources"][0]["mimeType"], "text/plain");
        let templates = send(&session, request(2, "resources/templates/list", json!({})))
            .await
            .unwrap();
        assert_eq!(
            templates["result"]["resourceTemplates"][0]["uriTemplate"],
            "demo://notes/{name}"
        );

        let text = send(
            &session,
            request(3, "resources/read", json!({"uri": "demo://readme"})),
        )
        .await
        .unwrap();
        let contents = &text["result"]["contents"][0];
        assert_eq!(
            (contents["uri"].clone(), contents["mimeType"].clone()),
            (json!("demo://readme"), json!("text/plain"))
        );
        assert!(contents["text"]
            .as_str()
            .unwrap()
            .starts_with("shardmcp demo server"));
        let blob = send(
            &session,
            request(4, "resources/read", json!({"uri": "demo://pixel.png"})),
        )
        .await
        .unwrap();
        assert!(blob["result"]["contents"][0]["blob"]
            .as_str()
            .unwrap()
            .starts_with("iVBOR"));
        let note = send(
            &session,
            request(5, "resources/read", json!({"uri": "demo://notes/123"})),
        )
        .await
        .unwrap();
        assert_eq!(note["result"]["contents"][0]["text"], "note 123");
        assert_eq!(note["result"]["contents"][0]["uri"], "demo://notes/123");

        let missing = send(
            &session,
            request(6, "resources/read", json!({"uri": "demo://nope"})),
        )
        .await
        .unwrap();
        assert_eq!(error_code(&missing), -32002);
        assert_eq!(missing["error"]["data"]["uri"], "demo://nope");
        let no_uri = send(&session, request(7, "resources/read", json!({})))
            .await
            .unwrap();
        assert_eq!(error_code(&no_uri), -32602);
    });
}

#[test]
fn subscriptions_are_recorded_bounded_and_refused_for_unknown_uris() {
    run(async {
        let limits = SessionLimits {
            subscriptions_max: 1,
            ..SessionLimits::default()
        };
        let session = new_session(
            Rc::new(demo::build().unwrap()),
            limits,
            SystemClock::shared(),
        );
        send(
            &session,
            request(0, "initialize", init_params("2025-11-25")),
        )
        .await;
        let ok = send(
            &session,
            request(1, "resources/subscribe", json!({"uri": "demo://readme"})),
        )
        .await
        .unwrap();
        assert_eq!(ok["result"], json!({}));
        assert!(session.is_subscribed("demo://readme"));
        let full = send(
            &session,
            request(2, "resources/subscribe", json!({"uri": "demo://notes/x"})),
        )
        .await
        .unwrap();
        assert_eq!(error_code(&full), -32000);
        let unknown = send(
            &session,
            request(3, "resources/subscribe", json!({"uri": "demo://nope"})),
        )
        .await
        .unwrap();
        assert_eq!(error_code(&unknown), -32002);
        let off = send(
            &session,
            request(4, "resources/unsubscribe", json!({"uri": "demo://readme"})),
        )
        .await
        .unwrap();
        assert_eq!(off["result"], json!({}));
        assert!(!session.is_subscribed("demo://readme"));
    });
}

#[test]
fn prompts_list_and_get_with_arguments_and_embedded_resources() {
    run(async {
        let session = initialized("2025-11-25").await;
        let list = send(&session, request(1, "prompts/list", json!({})))
            .await
            .unwrap();
        let greeting = &list["result"]["prompts"][0];
        assert_eq!(greeting["name"], "greeting");
        assert_eq!(
            greeting["arguments"][0],
            json!({"name": "name", "required": true, "description": "Who to greet"})
        );
        let got = send(
            &session,
            request(
                2,
                "prompts/get",
                json!({"name": "greeting", "arguments": {"name": "Ada"}}),
            ),
        )
        .await
        .unwrap();
        assert_eq!(
            got["result"]["messages"][0],
            json!({"role": "user", "content": {"type": "text", "text": "Say hello to Ada."}})
        );
        let review = send(
            &session,
            request(3, "prompts/get", json!({"name": "review"})),
        )
        .await
        .unwrap();
        let embedded = &review["result"]["messages"][0]["content"];
        assert_eq!(embedded["type"], "resource");
        assert_eq!(embedded["resource"]["uri"], "demo://readme");
        for (params, fragment) in [
            (json!({"name": "greeting"}), "needs argument `name`"),
            (
                json!({"name": "greeting", "arguments": {"name": 5}}),
                "must be a string",
            ),
            (json!({"name": "nope"}), "unknown prompt"),
            (json!({}), "params.name"),
        ] {
            let reply = send(&session, request(4, "prompts/get", params.clone()))
                .await
                .unwrap();
            assert_eq!(error_code(&reply), -32602, "{params}");
            assert!(
                reply["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains(fragment),
                "{params}"
            );
        }
    });
}

#[test]
fn completion_offers_values_for_prompt_arguments_and_template_variables() {
    run(async {
        let session = initialized("2025-11-25").await;
        let prompt = send(
            &session,
            request(
                1,
                "completion/complete",
                json!({
                    "ref": {"type": "ref/prompt", "name": "greeting"},
                    "argument": {"name": "name", "value": "A"}
                }),
            ),
        )
        .await
        .unwrap();
        assert_eq!(
            prompt["result"],
            json!({"completion": {"values": ["Ada", "Alan"], "total": 2, "hasMore": false}})
        );
        let template = send(
            &session,
            request(
                2,
                "completion/complete",
                json!({
                    "ref": {"type": "ref/resource", "uri": "demo://notes/{name}"},
                    "argument": {"name": "name", "value": "g"}
                }),
            ),
        )
        .await
        .unwrap();
        assert_eq!(template["result"]["completion"]["values"], json!(["gamma"]));
        let none = send(
            &session,
            request(
                3,
                "completion/complete",
                json!({
                    "ref": {"type": "ref/prompt", "name": "review"},
                    "argument": {"name": "focus", "value": ""}
                }),
            ),
        )
        .await
        .unwrap();
        assert_eq!(none["result"]["completion"]["values"], json!([]));
        for params in [
            json!({"ref": {"type": "ref/prompt", "name": "nope"}, "argument": {"name": "x", "value": ""}}),
            json!({"ref": {"type": "ref/other"}, "argument": {"name": "x", "value": ""}}),
            json!({"ref": {"type": "ref/prompt", "name": "greeting"}}),
        ] {
            let reply = send(&session, request(4, "completion/complete", params.clone()))
                .await
                .unwrap();
            assert_eq!(error_code(&reply), -32602, "{params}");
        }
    });
}

#[test]
fn methods_for_features_the_server_lacks_are_not_found() {
    run(async {
        let bare = Rc::new(Server::builder("bare", "0").build().unwrap());
        let session = new_session(bare, SessionLimits::default(), SystemClock::shared());
        send(
            &session,
            request(0, "initialize", init_params("2025-11-25")),
        )
        .await;
        for method in [
            "tools/list",
            "resources/list",
            "resources/read",
            "prompts/get",
        ] {
            let reply = send(&session, request(1, method, json!({}))).await.unwrap();
            assert_eq!(error_code(&reply), -32601, "{method}");
        }
    });
}

/// A tool that logs at three levels and reports three steps of progress,
/// and one that waits until cancelled; no real time passes in either.
fn chatty_server() -> Rc<Server> {
    Rc::new(
        Server::builder("chatty", "1")
            .tool(
                Tool::builder("chatty", "Logs and reports progress.")
                    .handler(|call| async move {
                        for (step, level) in [LogLevel::Debug, LogLevel::Info, LogLevel::Error]
                            .into_iter()
                            .enumerate()
                        {
                            call.log(level, Some("chatty"), json!({"step": step})).await;
                            call.progress(step as f64 + 1.0, Some(3.0), Some("working"))
                                .await;
                        }
                        call.progress(1.0, None, None).await; // not above the last: not sent
                        Ok(ToolResult::text("done"))
                    })
                    .unwrap(),
            )
            .tool(
                Tool::builder("stuck", "Waits until cancelled.")
                    .handler(|call| async move {
                        call.cancelled().await;
                        Ok(ToolResult::text("cancelled"))
                    })
                    .unwrap(),
            )
            .build()
            .unwrap(),
    )
}

fn drain_outbox(
    outbox: &glommio::channels::local_channel::LocalReceiver<Box<OutFrame>>,
    session: &McpSession,
) -> Vec<Value> {
    let mut frames = Vec::new();
    while session.outbox_len() > 0 {
        let frame = futures_lite::future::block_on(outbox.recv()).unwrap();
        frames.push(serde_json::from_slice(&frame.frame).unwrap());
    }
    frames
}

#[test]
fn logs_honour_the_level_and_progress_echoes_its_token_before_the_result() {
    run(async {
        let session = new_session(
            chatty_server(),
            SessionLimits::default(),
            SystemClock::shared(),
        );
        let outbox = session.take_outbox().unwrap();
        send(
            &session,
            request(0, "initialize", init_params("2025-11-25")),
        )
        .await;
        let caps = send(&session, request(9, "ping", json!({}))).await.unwrap();
        assert_eq!(caps["result"], json!({}));

        // Default level info: debug is held back. Integer token echoed as an integer.
        session
            .handle_frame_into_outbox(
                request(
                    1,
                    "tools/call",
                    json!({"name": "chatty", "_meta": {"progressToken": 7}}),
                )
                .to_string()
                .as_bytes(),
            )
            .await;
        let frames = drain_outbox(&outbox, &session);
        let methods: Vec<&str> = frames
            .iter()
            .map(|f| f["method"].as_str().unwrap_or("RESULT"))
            .collect();
        assert_eq!(
            methods,
            [
                "notifications/progress",
                "notifications/message",
                "notifications/progress",
                "notifications/message",
                "notifications/progress",
                "RESULT",
            ]
        );
        assert_eq!(
            frames[0]["params"],
            json!({"progressToken": 7, "progress": 1.0, "total": 3.0, "message": "working"})
        );
        assert_eq!(
            frames[1]["params"],
            json!({"level": "info", "logger": "chatty", "data": {"step": 1}})
        );
        assert_eq!(frames[5]["id"], 1);

        // setLevel error: only the error line; a string token stays a string.
        let set = send(
            &session,
            request(2, "logging/setLevel", json!({"level": "error"})),
        )
        .await
        .unwrap();
        assert_eq!(set["result"], json!({}));
        session
            .handle_frame_into_outbox(
                request(
                    3,
                    "tools/call",
                    json!({"name": "chatty", "_meta": {"progressToken": "p-1"}}),
                )
                .to_string()
                .as_bytes(),
            )
            .await;
        let frames = drain_outbox(&outbox, &session);
        let logs: Vec<_> = frames
            .iter()
            .filter(|f| f["method"] == "notifications/message")
            .collect();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0]["params"]["level"], "error");
        assert!(frames
            .iter()
            .filter(|f| f["method"] == "notifications/progress")
            .all(|f| f["params"]["progressToken"] == "p-1"));

        // No token: no progress at all.
        session
            .handle_frame_into_outbox(
                request(4, "tools/call", json!({"name": "chatty"}))
                    .to_string()
                    .as_bytes(),
            )
            .await;
        let frames = drain_outbox(&outbox, &session);
        assert!(frames
            .iter()
            .all(|f| f["method"] != "notifications/progress"));

        let bad = send(
            &session,
            request(5, "logging/setLevel", json!({"level": "loud"})),
        )
        .await
        .unwrap();
        assert_eq!(error_code(&bad), -32602);
    });
}

#[test]
fn a_request_past_its_timeout_is_answered_with_an_error_and_its_handler_cancelled() {
    run(async {
        let clock = ManualClock::new();
        let limits = SessionLimits {
            request_timeout: Duration::from_millis(100),
            ..SessionLimits::default()
        };
        let session = new_session(chatty_server(), limits, clock.clone());
        send(
            &session,
            request(0, "initialize", init_params("2025-11-25")),
        )
        .await;
        let waiting = session.clone();
        let call = glommio::spawn_local(async move {
            send(&waiting, request(1, "tools/call", json!({"name": "stuck"}))).await
        });
        crate::sync::settle(4).await;
        assert_eq!(session.in_flight(), 1);
        clock.advance(Duration::from_millis(99));
        crate::sync::settle(4).await;
        assert_eq!(session.in_flight(), 1, "not yet");
        clock.advance(Duration::from_millis(1));
        let reply = call.await.unwrap();
        assert_eq!(error_code(&reply), -32603);
        assert!(reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not finish within 100 ms"));
        assert_eq!(session.in_flight(), 0);
    });
}

/// Tools that ask the client for things and return what it said.
fn asking_server() -> Rc<Server> {
    Rc::new(
        Server::builder("asking", "1")
            .tool(
                Tool::builder("sample", "Samples.")
                    .handler(|call| async move {
                        let asked = json!({"messages": [], "maxTokens": 10});
                        Ok(ToolResult::structured(call.create_message(asked).await?))
                    })
                    .unwrap(),
            )
            .tool(
                Tool::builder("form", "Elicits a form.")
                    .handler(|call| async move {
                        let asked = json!({"message": "ok?", "requestedSchema": {"type": "object"}});
                        Ok(ToolResult::structured(call.elicit(asked).await?))
                    })
                    .unwrap(),
            )
            .tool(
                Tool::builder("url", "Elicits through a URL.")
                    .handler(|call| async move {
                        let asked = json!({"mode": "url", "message": "go", "url": "https://example.invalid/x", "elicitationId": "e1"});
                        Ok(ToolResult::structured(call.elicit(asked).await?))
                    })
                    .unwrap(),
            )
            .tool(
                Tool::builder("roots", "Lists roots.")
                    .handler(|call| async move { Ok(ToolResult::structured(call.list_roots().await?)) })
                    .unwrap(),
            )
            .build()
            .unwrap(),
    )
}

async fn asking_session(capabilities: Value, clock: crate::time::SharedClock) -> Rc<McpSession> {
    let limits = SessionLimits {
        client_request_timeout: Duration::from_millis(500),
        ..SessionLimits::default()
    };
    let session = new_session(asking_server(), limits, clock);
    let params = json!({"protocolVersion": "2025-11-25", "capabilities": capabilities, "clientInfo": {"name": "t", "version": "1"}});
    send(&session, request(0, "initialize", params))
        .await
        .unwrap();
    session
}

#[test]
fn a_handler_asks_the_client_and_gets_its_answer_routed_back_by_id() {
    run(async {
        let caps = json!({"sampling": {}, "elicitation": {"form": {}, "url": {}}, "roots": {}});
        let session = asking_session(caps, SystemClock::shared()).await;
        let outbox = session.take_outbox().unwrap();
        for (tool, method, answer) in [
            (
                "sample",
                "sampling/createMessage",
                json!({"role": "assistant", "content": {"type": "text", "text": "hi"}, "model": "m"}),
            ),
            (
                "form",
                "elicitation/create",
                json!({"action": "accept", "content": {"ok": true}}),
            ),
            ("url", "elicitation/create", json!({"action": "accept"})),
            (
                "roots",
                "roots/list",
                json!({"roots": [{"uri": "file:///tmp", "name": "tmp"}]}),
            ),
        ] {
            let caller = session.clone();
            let call = glommio::spawn_local(async move {
                send(&caller, request(1, "tools/call", json!({"name": tool}))).await
            });
            let asked: Value = serde_json::from_slice(&outbox.recv().await.unwrap().frame).unwrap();
            assert_eq!(asked["method"], method, "{tool}");
            let id = asked["id"].clone();
            assert!(id.as_str().unwrap().starts_with("shardmcp-"));
            let reply = json!({"jsonrpc": "2.0", "id": id, "result": answer});
            assert!(
                send(&session, reply).await.is_none(),
                "a response gets no reply"
            );
            let result = call.await.unwrap();
            assert_eq!(result["result"]["structuredContent"], answer, "{tool}");
        }
    });
}

#[test]
fn a_client_error_answer_reaches_the_handler_and_becomes_the_call_error() {
    run(async {
        let session = asking_session(json!({"roots": {}}), SystemClock::shared()).await;
        let outbox = session.take_outbox().unwrap();
        let caller = session.clone();
        let call = glommio::spawn_local(async move {
            send(&caller, request(1, "tools/call", json!({"name": "roots"}))).await
        });
        let asked: Value = serde_json::from_slice(&outbox.recv().await.unwrap().frame).unwrap();
        send(&session, json!({"jsonrpc": "2.0", "id": asked["id"], "error": {"code": -1, "message": "denied"}})).await;
        let result = call.await.unwrap();
        assert_eq!(
            (error_code(&result), result["error"]["message"].clone()),
            (-1, json!("denied"))
        );
    });
}

#[test]
fn asking_for_an_undeclared_capability_fails_with_32021_naming_it() {
    run(async {
        // Elicitation declared as {} (form only, the pre-mode shape); no sampling, no roots.
        let session = asking_session(json!({"elicitation": {}}), SystemClock::shared()).await;
        for (tool, required) in [
            ("sample", json!({"sampling": {}})),
            ("roots", json!({"roots": {}})),
            ("url", json!({"elicitation": {"url": {}}})),
        ] {
            let reply = send(&session, request(1, "tools/call", json!({"name": tool})))
                .await
                .unwrap();
            assert_eq!(error_code(&reply), -32021, "{tool}");
            assert_eq!(
                reply["error"]["data"]["requiredCapabilities"], required,
                "{tool}"
            );
        }
        assert_eq!(session.outbox_len(), 0, "nothing was sent to the client");
    });
}

#[test]
fn a_client_that_never_answers_times_out_on_the_injected_clock() {
    run(async {
        let clock = ManualClock::new();
        let session = asking_session(json!({"sampling": {}}), clock.clone()).await;
        let outbox = session.take_outbox().unwrap();
        let caller = session.clone();
        let call = glommio::spawn_local(async move {
            send(&caller, request(1, "tools/call", json!({"name": "sample"}))).await
        });
        outbox.recv().await.unwrap();
        clock.advance(Duration::from_millis(500));
        let reply = call.await.unwrap();
        assert_eq!(error_code(&reply), -32603);
        assert!(reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not answer sampling/createMessage"));
        // A late answer is ignored.
        assert!(send(
            &session,
            json!({"jsonrpc": "2.0", "id": "shardmcp-0", "result": {}})
        )
        .await
        .is_none());
    });
}

/// A 2026-07-28 request: the envelope in `_meta`, plus extra params.
fn modern(id: i64, method: &str, capabilities: Value, extra: Value) -> Value {
    let mut params = json!({"_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": capabilities,
        "io.modelcontextprotocol/clientInfo": {"name": "py", "version": "2"}
    }});
    if let (Value::Object(params), Value::Object(extra)) = (&mut params, extra) {
        for (key, value) in extra {
            if key == "_meta" {
                let meta = params.get_mut("_meta").unwrap().as_object_mut().unwrap();
                meta.extend(value.as_object().unwrap().clone());
            } else {
                params.insert(key, value);
            }
        }
    }
    request(id, method, params)
}

#[test]
fn stateless_discover_and_lists_carry_result_type_cache_fields_and_server_info() {
    run(async {
        let session = session();
        let discover = send(&session, modern(1, "server/discover", json!({}), json!({})))
            .await
            .unwrap();
        let result = &discover["result"];
        assert_eq!(result["supportedVersions"], json!(["2026-07-28"]));
        assert_eq!(
            result["capabilities"]["tools"],
            json!({"listChanged": true})
        );
        assert_eq!(
            (
                result["resultType"].clone(),
                result["ttlMs"].clone(),
                result["cacheScope"].clone()
            ),
            (json!("complete"), json!(0), json!("private"))
        );
        assert_eq!(
            result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
            "shardmcp"
        );
        assert!(result.get("protocolVersion").is_none() && result.get("serverInfo").is_none());

        let tools = send(&session, modern(2, "tools/list", json!({}), json!({})))
            .await
            .unwrap();
        assert_eq!(
            tools["result"]["tools"].as_array().unwrap().len(),
            demo_tool_count()
        );
        assert_eq!(tools["result"]["cacheScope"], "private");
        let call = send(
            &session,
            modern(
                3,
                "tools/call",
                json!({}),
                json!({"name": "add", "arguments": {"a": 2, "b": 3}}),
            ),
        )
        .await
        .unwrap();
        assert_eq!(call["result"]["structuredContent"], json!({"sum": 5.0}));
        assert_eq!(call["result"]["resultType"], "complete");
        assert!(
            call["result"].get("ttlMs").is_none(),
            "tools/call is not cacheable"
        );
        let read = send(
            &session,
            modern(
                4,
                "resources/read",
                json!({}),
                json!({"uri": "demo://readme"}),
            ),
        )
        .await
        .unwrap();
        assert_eq!(read["result"]["ttlMs"], 0);
        let missing = send(
            &session,
            modern(
                5,
                "resources/read",
                json!({}),
                json!({"uri": "demo://nope"}),
            ),
        )
        .await
        .unwrap();
        assert_eq!(
            error_code(&missing),
            -32602,
            "2026 reports a missing resource as invalid params"
        );
        let prompt = send(
            &session,
            modern(
                6,
                "prompts/get",
                json!({}),
                json!({"name": "greeting", "arguments": {"name": "Ada"}}),
            ),
        )
        .await
        .unwrap();
        assert_eq!(prompt["result"]["resultType"], "complete");
    });
}

#[test]
fn stateless_envelope_errors_and_removed_methods() {
    run(async {
        let session = session();
        let no_caps = request(
            1,
            "tools/list",
            json!({"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}),
        );
        assert_eq!(error_code(&send(&session, no_caps).await.unwrap()), -32602);
        let future = request(
            2,
            "tools/list",
            json!({"_meta": {"io.modelcontextprotocol/protocolVersion": "2030-01-01", "io.modelcontextprotocol/clientCapabilities": {}}}),
        );
        let reply = send(&session, future).await.unwrap();
        assert_eq!(error_code(&reply), -32022);
        assert_eq!(reply["error"]["data"]["requested"], "2030-01-01");
        for removed in [
            "ping",
            "logging/setLevel",
            "resources/subscribe",
            "tasks/list",
        ] {
            let reply = send(
                &session,
                modern(
                    3,
                    removed,
                    json!({}),
                    json!({"level": "info", "uri": "demo://readme"}),
                ),
            )
            .await
            .unwrap();
            assert_eq!(error_code(&reply), -32601, "{removed}");
        }
        // The connection now speaks 2026-07-28: initialize is refused with -32022.
        let init = send(
            &session,
            request(4, "initialize", init_params("2025-11-25")),
        )
        .await
        .unwrap();
        assert_eq!(error_code(&init), -32022);
        assert_eq!(init["error"]["data"]["supported"], json!(["2026-07-28"]));
    });
}

#[test]
fn a_handshake_session_refuses_enveloped_requests() {
    run(async {
        let session = initialized("2025-11-25").await;
        let reply = send(&session, modern(1, "tools/list", json!({}), json!({})))
            .await
            .unwrap();
        assert_eq!(error_code(&reply), -32600);
        assert!(reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2025-11-25"));
    });
}

#[test]
fn stateless_logging_and_progress_come_from_the_envelope() {
    run(async {
        let session = new_session(
            chatty_server(),
            SessionLimits::default(),
            SystemClock::shared(),
        );
        let outbox = session.take_outbox().unwrap();
        let quiet = modern(1, "tools/call", json!({}), json!({"name": "chatty"}));
        session
            .handle_frame_into_outbox(quiet.to_string().as_bytes())
            .await;
        let frames = drain_outbox(&outbox, &session);
        assert_eq!(
            frames.len(),
            1,
            "no logLevel, no progressToken: only the result"
        );
        assert_eq!(frames[0]["result"]["resultType"], "complete");

        let loud = modern(
            2,
            "tools/call",
            json!({}),
            json!({"name": "chatty", "_meta": {
            "io.modelcontextprotocol/logLevel": "error", "progressToken": "t"}}),
        );
        session
            .handle_frame_into_outbox(loud.to_string().as_bytes())
            .await;
        let frames = drain_outbox(&outbox, &session);
        let logs: Vec<_> = frames
            .iter()
            .filter(|f| f["method"] == "notifications/message")
            .collect();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0]["params"]["level"], "error");
        assert_eq!(
            frames
                .iter()
                .filter(|f| f["method"] == "notifications/progress")
                .count(),
            3
        );
    });
}

#[test]
fn stateless_elicitation_is_an_input_required_round_and_the_retry_completes() {
    run(async {
        let session = new_session(
            asking_server(),
            SessionLimits::default(),
            SystemClock::shared(),
        );
        let caps = json!({"elicitation": {"form": {}}});
        let first = send(
            &session,
            modern(1, "tools/call", caps.clone(), json!({"name": "form"})),
        )
        .await
        .unwrap();
        let result = &first["result"];
        assert_eq!(result["resultType"], "input_required");
        assert_eq!(
            result["inputRequests"]["input-0"]["method"],
            "elicitation/create"
        );
        assert_eq!(
            result["inputRequests"]["input-0"]["params"]["message"],
            "ok?"
        );
        assert!(result
            .get("inputRequests")
            .unwrap()
            .get("input-0")
            .unwrap()
            .get("id")
            .is_none());
        let state = result["requestState"].as_str().unwrap().to_string();
        assert!(state.starts_with("v1."));

        let answer = json!({"action": "accept", "content": {"ok": true}});
        let retry = send(&session, modern(2, "tools/call", caps.clone(), json!({
            "name": "form", "inputResponses": {"input-0": answer.clone()}, "requestState": state.clone()
        }))).await.unwrap();
        assert_eq!(retry["result"]["resultType"], "complete");
        assert_eq!(retry["result"]["structuredContent"], answer);

        // A forged state, answers without state, and another tool's state are refused.
        let mut forged = state.clone();
        forged.push('0');
        for extra in [
            json!({"name": "form", "inputResponses": {"input-0": answer.clone()}, "requestState": forged}),
            json!({"name": "form", "inputResponses": {"input-0": answer.clone()}}),
            json!({"name": "sample", "inputResponses": {"input-0": answer.clone()}, "requestState": state.clone()}),
        ] {
            let reply = send(
                &session,
                modern(
                    3,
                    "tools/call",
                    json!({"elicitation": {}, "sampling": {}}),
                    extra.clone(),
                ),
            )
            .await
            .unwrap();
            assert_eq!(error_code(&reply), -32602, "{extra}");
        }
        let forged_reply = send(
            &session,
            modern(
                4,
                "tools/call",
                caps.clone(),
                json!({
            "name": "form", "inputResponses": {}, "requestState": "v1.00.00"}),
            ),
        )
        .await
        .unwrap();
        assert_eq!(
            forged_reply["error"]["data"]["reason"],
            "invalid_request_state"
        );

        // Without the capability in this request's envelope: -32021, no round.
        let no_caps = send(
            &session,
            modern(5, "tools/call", json!({}), json!({"name": "form"})),
        )
        .await
        .unwrap();
        assert_eq!(error_code(&no_caps), -32021);
    });
}

#[test]
fn stateless_rounds_are_bounded() {
    run(async {
        let limits = SessionLimits {
            input_rounds_max: 1,
            ..SessionLimits::default()
        };
        let session = new_session(asking_server(), limits, SystemClock::shared());
        let caps = json!({"roots": {}});
        let first = send(
            &session,
            modern(1, "tools/call", caps.clone(), json!({"name": "roots"})),
        )
        .await
        .unwrap();
        let state = first["result"]["requestState"].clone();
        // Answer the wrong key: the handler still lacks input, but the limit is reached.
        let retry = send(
            &session,
            modern(
                2,
                "tools/call",
                caps,
                json!({
            "name": "roots", "inputResponses": {"other": {}}, "requestState": state}),
            ),
        )
        .await
        .unwrap();
        assert_eq!(error_code(&retry), -32602);
        assert!(retry["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit is 1"));
    });
}

#[test]
fn stateless_listen_is_acknowledged_and_ends_by_cancellation_without_a_response() {
    run(async {
        let session = session();
        let outbox = session.take_outbox().unwrap();
        let listener = session.clone();
        let listen = glommio::spawn_local(async move {
            send(
                &listener,
                modern(
                    7,
                    "subscriptions/listen",
                    json!({}),
                    json!({"notifications": {"toolsListChanged": true}}),
                ),
            )
            .await
        });
        let ack: Value = serde_json::from_slice(&outbox.recv().await.unwrap().frame).unwrap();
        assert_eq!(ack["method"], "notifications/subscriptions/acknowledged");
        assert_eq!(
            ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
            7
        );
        assert_eq!(
            ack["params"]["notifications"],
            json!({"toolsListChanged": true}),
            "the tool list may change"
        );
        assert_eq!(session.in_flight(), 1);
        send(&session, json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}})).await;
        assert_eq!(listen.await, None);
    });
}

/// A job tool (optional task) that finishes when the test says, one that
/// must run as a task, and one that never may.
fn task_server(release: crate::sync::Event) -> Rc<Server> {
    use crate::server::TaskSupport;
    Rc::new(
        Server::builder("tasks", "1")
            .tool(
                Tool::builder("job", "Finishes when released.")
                    .task_support(TaskSupport::Optional)
                    .handler(move |call| {
                        let release = release.clone();
                        async move {
                            futures_lite::future::or(release.wait(), call.cancelled()).await;
                            Ok(ToolResult::text("job done"))
                        }
                    })
                    .unwrap(),
            )
            .tool(
                Tool::builder("must", "Only as a task.")
                    .task_support(TaskSupport::Required)
                    .handler(|_call| async { Ok(ToolResult::text("ok")) })
                    .unwrap(),
            )
            .tool(
                Tool::builder("never", "Never as a task.")
                    .handler(|_call| async { Ok(ToolResult::text("ok")) })
                    .unwrap(),
            )
            .build()
            .unwrap(),
    )
}

#[test]
fn a_task_augmented_call_answers_at_once_and_its_result_waits_for_the_job() {
    run(async {
        let release = crate::sync::Event::new();
        let session = new_session(
            task_server(release.clone()),
            SessionLimits::default(),
            SystemClock::shared(),
        );
        let outbox = session.take_outbox().unwrap();
        let init = send(
            &session,
            request(0, "initialize", init_params("2025-11-25")),
        )
        .await
        .unwrap();
        assert_eq!(
            init["result"]["capabilities"]["tasks"],
            json!({"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}})
        );
        let list = send(&session, request(1, "tools/list", json!({})))
            .await
            .unwrap();
        assert_eq!(
            list["result"]["tools"][0]["execution"],
            json!({"taskSupport": "optional"})
        );
        assert!(list["result"]["tools"][2].get("execution").is_none());

        let created = send(
            &session,
            request(
                2,
                "tools/call",
                json!({"name": "job", "task": {"ttl": 5000}}),
            ),
        )
        .await
        .unwrap();
        let task = &created["result"]["task"];
        assert_eq!(
            (task["status"].clone(), task["ttl"].clone()),
            (json!("working"), json!(5000))
        );
        assert!(task["createdAt"].as_str().unwrap().ends_with('Z'));
        let task_id = task["taskId"].as_str().unwrap().to_string();
        let got = send(
            &session,
            request(3, "tasks/get", json!({"taskId": task_id})),
        )
        .await
        .unwrap();
        assert_eq!(got["result"]["status"], "working");
        let listed = send(&session, request(4, "tasks/list", json!({})))
            .await
            .unwrap();
        assert_eq!(listed["result"]["tasks"].as_array().unwrap().len(), 1);

        let waiter = session.clone();
        let id_for_result = task_id.clone();
        let result = glommio::spawn_local(async move {
            send(
                &waiter,
                request(5, "tasks/result", json!({"taskId": id_for_result})),
            )
            .await
            .unwrap()
        });
        crate::sync::settle(4).await;
        release.set();
        let result = result.await;
        assert_eq!(result["result"]["content"][0]["text"], "job done");
        assert_eq!(
            result["result"]["_meta"]["io.modelcontextprotocol/related-task"]["taskId"],
            task_id.as_str()
        );
        let status: Value = serde_json::from_slice(&outbox.recv().await.unwrap().frame).unwrap();
        assert_eq!(
            (status["method"].clone(), status["params"]["status"].clone()),
            (json!("notifications/tasks/status"), json!("completed"))
        );
        let done = send(
            &session,
            request(6, "tasks/cancel", json!({"taskId": task_id})),
        )
        .await
        .unwrap();
        assert_eq!(
            error_code(&done),
            -32602,
            "a terminal task cannot be cancelled"
        );
    });
}

#[test]
fn a_cancelled_task_stays_cancelled_and_task_support_is_enforced() {
    run(async {
        let session = new_session(
            task_server(crate::sync::Event::new()),
            SessionLimits::default(),
            SystemClock::shared(),
        );
        send(
            &session,
            request(0, "initialize", init_params("2025-11-25")),
        )
        .await;
        let created = send(
            &session,
            request(1, "tools/call", json!({"name": "job", "task": {}})),
        )
        .await
        .unwrap();
        let task_id = created["result"]["task"]["taskId"]
            .as_str()
            .unwrap()
            .to_string();
        let cancelled = send(
            &session,
            request(2, "tasks/cancel", json!({"taskId": task_id})),
        )
        .await
        .unwrap();
        assert_eq!(cancelled["result"]["status"], "cancelled");
        crate::sync::settle(4).await;
        let got = send(
            &session,
            request(3, "tasks/get", json!({"taskId": task_id})),
        )
        .await
        .unwrap();
        assert_eq!(
            got["result"]["status"], "cancelled",
            "the job finishing afterwards changes nothing"
        );
        let result = send(
            &session,
            request(4, "tasks/result", json!({"taskId": task_id})),
        )
        .await
        .unwrap();
        assert_eq!(error_code(&result), -32000);
        for (params, fragment) in [
            (json!({"name": "must"}), "only runs as a task"),
            (
                json!({"name": "never", "task": {}}),
                "does not run as a task",
            ),
        ] {
            let reply = send(&session, request(5, "tools/call", params.clone()))
                .await
                .unwrap();
            assert_eq!(error_code(&reply), -32602, "{params}");
            assert!(reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains(fragment));
        }
        let unknown = send(&session, request(6, "tasks/get", json!({"taskId": "nope"})))
            .await
            .unwrap();
        assert_eq!(error_code(&unknown), -32602);
        let must = send(
            &session,
            request(7, "tools/call", json!({"name": "must", "task": {}})),
        )
        .await
        .unwrap();
        assert_eq!(must["result"]["task"]["status"], "working");
    });
}

/// Deterministic xorshift, so a failure can be replayed.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn mutated_and_truncated_frames_never_panic_and_always_get_valid_json_back() {
    run(async {
        let seeds = [
            request(1, "initialize", init_params("2025-11-25")).to_string(),
            request(2, "tools/call", json!({"name": "add", "arguments": {"a": 1, "b": 2}, "_meta": {"progressToken": 1}})).to_string(),
            modern(3, "tools/call", json!({"elicitation": {}}), json!({"name": "echo", "arguments": {"text": "x"}})).to_string(),
            modern(4, "resources/read", json!({}), json!({"uri": "demo://notes/1"})).to_string(),
            r#"[{"jsonrpc":"2.0","id":5,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":5}}]"#.to_string(),
            request(6, "completion/complete", json!({"ref": {"type": "ref/prompt", "name": "greeting"}, "argument": {"name": "name", "value": "A"}})).to_string(),
        ];
        let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
        for round in 0..3_000 {
            // A fresh session now and then, so both eras and both phases are hit.
            let session = if round % 50 == 0 || round % 50 == 1 {
                session()
            } else {
                initialized("2025-11-25").await
            };
            let seed = seeds[(noise.next() % seeds.len() as u64) as usize].as_bytes();
            let mut frame = seed.to_vec();
            match noise.next() % 3 {
                0 => frame.truncate((noise.next() % (frame.len() as u64 + 1)) as usize),
                1 => {
                    for _ in 0..1 + noise.next() % 4 {
                        let at = (noise.next() % frame.len() as u64) as usize;
                        frame[at] = (noise.next() % 256) as u8;
                    }
                }
                _ => {
                    let at = (noise.next() % frame.len() as u64) as usize;
                    let insert = [b'"', b'{', b'}', b'[', b']', b',', b':', b'\\', 0xff, b'9'];
                    frame.insert(at, insert[(noise.next() % insert.len() as u64) as usize]);
                }
            }
            if let Some(reply) = session.handle_frame(&frame).await {
                let parsed: Result<Value, _> = serde_json::from_slice(&reply);
                assert!(
                    parsed.is_ok(),
                    "round {round}: invalid JSON out for {:?}",
                    String::from_utf8_lossy(&frame)
                );
            }
        }
    });
}

#[test]
fn a_resource_change_reaches_subscribed_sessions_and_listens_only() {
    run(async {
        let subscriber = initialized("2025-11-25").await;
        let bystander = initialized("2025-11-25").await;
        let listener = session();
        let outboxes = [
            subscriber.take_outbox().unwrap(),
            bystander.take_outbox().unwrap(),
            listener.take_outbox().unwrap(),
        ];
        // One hook for the three, as the shard's hook covers its sessions.
        let everyone: Vec<std::rc::Weak<McpSession>> = [&subscriber, &bystander, &listener]
            .iter()
            .map(|s| Rc::downgrade(s))
            .collect();
        let hook: UpdateHook = Rc::new(move |uri: &str| {
            for session in everyone.iter().filter_map(std::rc::Weak::upgrade) {
                session.deliver_resource_updated(uri);
            }
        });
        for session in [&subscriber, &bystander, &listener] {
            session.set_update_hook(hook.clone());
        }
        send(
            &subscriber,
            request(1, "resources/subscribe", json!({"uri": "demo://notes/x"})),
        )
        .await
        .unwrap();
        let listening = listener.clone();
        let listen = glommio::spawn_local(async move {
            send(
                &listening,
                modern(
                    9,
                    "subscriptions/listen",
                    json!({}),
                    json!({"notifications": {
                "resourceSubscriptions": ["demo://notes/x", "demo://nope"]}}),
                ),
            )
            .await
        });
        let ack: Value = serde_json::from_slice(&outboxes[2].recv().await.unwrap().frame).unwrap();
        assert_eq!(
            ack["params"]["notifications"],
            json!({"resourceSubscriptions": ["demo://notes/x"]}),
            "unknown URIs are not honoured"
        );

        let touched = send(
            &bystander,
            request(
                2,
                "tools/call",
                json!({"name": "touch_note", "arguments": {"name": "x"}}),
            ),
        )
        .await
        .unwrap();
        assert_eq!(
            touched["result"]["content"][0]["text"],
            "touched demo://notes/x"
        );
        let update: Value =
            serde_json::from_slice(&outboxes[0].recv().await.unwrap().frame).unwrap();
        assert_eq!(
            update,
            json!({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "demo://notes/x"}})
        );
        assert_eq!(bystander.outbox_len(), 0, "not subscribed: nothing");
        let listened: Value =
            serde_json::from_slice(&outboxes[2].recv().await.unwrap().frame).unwrap();
        assert_eq!(listened["params"]["uri"], "demo://notes/x");
        assert_eq!(
            listened["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
            9
        );

        // After unsubscribing, and after the listen ends, nothing more arrives.
        send(
            &subscriber,
            request(3, "resources/unsubscribe", json!({"uri": "demo://notes/x"})),
        )
        .await;
        send(&listener, json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 9}})).await;
        assert_eq!(listen.await, None);
        send(
            &bystander,
            request(
                4,
                "tools/call",
                json!({"name": "touch_note", "arguments": {"name": "x"}}),
            ),
        )
        .await;
        assert_eq!((subscriber.outbox_len(), listener.outbox_len()), (0, 0));
    });
}

/// Sessions sharing one live server, as the sessions of one shard do.
fn session_on(live: &Rc<LiveServer>) -> Rc<McpSession> {
    McpSession::new(
        live.clone(),
        SessionLimits::default(),
        SystemClock::shared(),
        StateKey::new([9; 32]),
    )
}

async fn initialize_on(live: &Rc<LiveServer>, version: &str, ready: bool) -> Rc<McpSession> {
    let session = session_on(live);
    let reply = send(&session, request(0, "initialize", init_params(version)))
        .await
        .unwrap();
    assert!(reply.get("result").is_some(), "{reply}");
    if ready {
        send(
            &session,
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        )
        .await;
    }
    session
}

fn frames(
    outbox: &glommio::channels::local_channel::LocalReceiver<Box<OutFrame>>,
    session: &McpSession,
) -> Vec<Value> {
    drain_outbox(outbox, session)
}

fn tool_names(reply: &Value) -> Vec<String> {
    reply["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tool| tool["name"].as_str().unwrap().to_string())
        .collect()
}

fn list_changed(method: &str) -> Value {
    json!({"jsonrpc": "2.0", "method": method})
}

#[test]
fn a_handler_toggling_a_tool_tells_every_initialized_session_of_its_shard_and_the_list_follows() {
    run(async {
        let live = LiveServer::new(demo::build().unwrap());
        let caller = initialize_on(&live, "2025-11-25", true).await;
        let old = initialize_on(&live, "2024-11-05", true).await;
        let answered = initialize_on(&live, "2025-06-18", false).await;
        let fresh = session_on(&live);
        let listener = session_on(&live);
        let outboxes: Vec<_> = [&caller, &old, &answered, &fresh, &listener]
            .iter()
            .map(|s| s.take_outbox().unwrap())
            .collect();
        assert_eq!(live.subscriber_count(), 5);
        let listening = listener.clone();
        let listen = glommio::spawn_local(async move {
            send(
                &listening,
                modern(
                    8,
                    "subscriptions/listen",
                    json!({}),
                    json!({"notifications": {"toolsListChanged": true, "promptsListChanged": true, "resourcesListChanged": false}}),
                ),
            )
            .await
        });
        let ack: Value = serde_json::from_slice(&outboxes[4].recv().await.unwrap().frame).unwrap();
        assert_eq!(
            ack["params"]["notifications"],
            json!({"toolsListChanged": true, "promptsListChanged": true}),
            "false flags are left out"
        );

        let toggle = json!({"name": "toggle_reverse"});
        let added = send(&caller, request(1, "tools/call", toggle.clone()))
            .await
            .unwrap();
        assert_eq!(added["result"]["content"][0]["text"], "added reverse");
        let tools_changed = list_changed("notifications/tools/list_changed");
        for (index, session) in [&caller, &old, &answered].iter().enumerate() {
            assert_eq!(
                frames(&outboxes[index], session),
                std::slice::from_ref(&tools_changed),
                "session {index}"
            );
        }
        assert_eq!(fresh.outbox_len(), 0, "not initialized: not told");
        let heard: Value =
            serde_json::from_slice(&outboxes[4].recv().await.unwrap().frame).unwrap();
        assert_eq!(
            heard,
            json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed",
                   "params": {"_meta": {"io.modelcontextprotocol/subscriptionId": 8}}})
        );

        // Every session of the shard now lists and calls it.
        let listed = send(&old, request(2, "tools/list", json!({})))
            .await
            .unwrap();
        assert!(tool_names(&listed).contains(&"reverse".to_string()));
        let reversed = send(
            &old,
            request(
                3,
                "tools/call",
                json!({"name": "reverse", "arguments": {"text": "abc"}}),
            ),
        )
        .await
        .unwrap();
        assert_eq!(reversed["result"]["content"][0]["text"], "cba");
        let stateless = send(&listener, modern(4, "tools/list", json!({}), json!({})))
            .await
            .unwrap();
        assert!(tool_names(&stateless).contains(&"reverse".to_string()));

        // Toggled off: told again, gone from the list, unknown to call.
        let removed = send(&old, request(5, "tools/call", toggle)).await.unwrap();
        assert_eq!(removed["result"]["content"][0]["text"], "removed reverse");
        assert_eq!(
            frames(&outboxes[0], &caller),
            std::slice::from_ref(&tools_changed)
        );
        let listed = send(&caller, request(6, "tools/list", json!({})))
            .await
            .unwrap();
        assert!(!tool_names(&listed).contains(&"reverse".to_string()));
        let gone = send(
            &caller,
            request(
                7,
                "tools/call",
                json!({"name": "reverse", "arguments": {"text": "x"}}),
            ),
        )
        .await
        .unwrap();
        assert_eq!(error_code(&gone), -32602);

        // One edit of two lists: one notice per list; the listen did not
        // ask for resources.
        live.edit(|draft| {
            draft.remove_prompt("review");
            draft.remove_resource("demo://readme");
            Ok(())
        })
        .unwrap();
        assert_eq!(
            frames(&outboxes[1], &old),
            [
                tools_changed,
                list_changed("notifications/resources/list_changed"),
                list_changed("notifications/prompts/list_changed")
            ]
        );
        let frames_heard: Vec<Value> = frames(&outboxes[4], &listener);
        let methods: Vec<&str> = frames_heard
            .iter()
            .map(|f| f["method"].as_str().unwrap())
            .collect();
        assert_eq!(
            methods,
            [
                "notifications/tools/list_changed",
                "notifications/prompts/list_changed"
            ]
        );
        let read = send(
            &caller,
            request(8, "resources/read", json!({"uri": "demo://readme"})),
        )
        .await
        .unwrap();
        assert_eq!(error_code(&read), -32002, "removed resources are not found");

        // An ended listen hears nothing more; a dropped session unsubscribes.
        send(&listener, json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 8}})).await;
        assert_eq!(listen.await, None);
        live.remove_prompt("greeting");
        assert_eq!(listener.outbox_len(), 0);
        drop(outboxes);
        drop((fresh, listener));
        assert_eq!(live.subscriber_count(), 3);
    });
}

#[test]
fn list_changes_reach_only_lists_the_session_was_told_of_and_served_lists_stay_served() {
    run(async {
        let tools_only = Server::builder("t", "1")
            .tool(
                Tool::builder("only", "The only tool.")
                    .handler(|_call| async { Ok(ToolResult::text("x")) })
                    .unwrap(),
            )
            .declare(crate::server::Lists {
                resources: true,
                ..crate::server::Lists::NONE
            })
            .build()
            .unwrap();
        let live = LiveServer::new(tools_only);
        let session = initialize_on(&live, "2025-11-25", true).await;
        let outbox = session.take_outbox().unwrap();
        let prompts = send(&session, request(1, "prompts/list", json!({})))
            .await
            .unwrap();
        assert_eq!(error_code(&prompts), -32601, "no prompts yet");
        let empty = send(&session, request(2, "resources/list", json!({})))
            .await
            .unwrap();
        assert_eq!(
            empty["result"]["resources"],
            json!([]),
            "declared: served while empty"
        );

        live.add_prompt(crate::server::Prompt::new(
            "late",
            "Added.",
            |_args| async { Ok(crate::server::PromptResult::default()) },
        ))
        .unwrap();
        assert_eq!(
            session.outbox_len(),
            0,
            "prompts were not advertised to this session: no notice"
        );
        let prompts = send(&session, request(3, "prompts/list", json!({})))
            .await
            .unwrap();
        assert_eq!(
            prompts["result"]["prompts"][0]["name"], "late",
            "but served now"
        );

        live.add_resource(crate::server::Resource::text(
            "x://1",
            "one",
            "text/plain",
            "1",
        ))
        .unwrap();
        assert_eq!(
            frames(&outbox, &session),
            [list_changed("notifications/resources/list_changed")]
        );
        // The last tool removed: still served to a session told of tools.
        assert!(live.remove_tool("only"));
        assert_eq!(
            frames(&outbox, &session),
            [list_changed("notifications/tools/list_changed")]
        );
        let tools = send(&session, request(4, "tools/list", json!({})))
            .await
            .unwrap();
        assert_eq!(tools["result"]["tools"], json!([]));
        // A session that starts now is told of what the server offers now.
        let later = initialize_on(&live, "2025-11-25", true).await;
        let tools = send(&later, request(1, "tools/list", json!({})))
            .await
            .unwrap();
        assert_eq!(error_code(&tools), -32601);
    });
}

#[test]
fn icons_are_listed_where_set_and_absent_elsewhere() {
    run(async {
        let session = initialized("2025-11-25").await;
        let pixel = json!([{"src": format!("data:image/png;base64,{}", crate::server::conformance::PNG_BASE64),
                            "mimeType": "image/png", "sizes": ["1x1"]}]);
        let init = send(
            &session_on(&LiveServer::new(demo::build().unwrap())),
            request(0, "initialize", init_params("2025-11-25")),
        )
        .await
        .unwrap();
        assert_eq!(init["result"]["serverInfo"]["icons"], pixel);
        assert!(init["result"]["serverInfo"]["description"].is_string());

        let tools = send(&session, request(1, "tools/list", json!({})))
            .await
            .unwrap();
        let by_name = |list: &Value, key: &str, name: &str| {
            list.as_array()
                .unwrap()
                .iter()
                .find(|entry| entry[key] == name)
                .cloned()
                .unwrap()
        };
        assert_eq!(
            by_name(&tools["result"]["tools"], "name", "echo")["icons"],
            pixel
        );
        assert!(by_name(&tools["result"]["tools"], "name", "add")
            .get("icons")
            .is_none());
        let resources = send(&session, request(2, "resources/list", json!({})))
            .await
            .unwrap();
        assert_eq!(
            by_name(&resources["result"]["resources"], "uri", "demo://readme")["icons"],
            pixel
        );
        assert!(
            by_name(&resources["result"]["resources"], "uri", "demo://pixel.png")
                .get("icons")
                .is_none()
        );
        let prompts = send(&session, request(3, "prompts/list", json!({})))
            .await
            .unwrap();
        assert_eq!(
            by_name(&prompts["result"]["prompts"], "name", "greeting")["icons"],
            pixel
        );
        assert!(by_name(&prompts["result"]["prompts"], "name", "review")
            .get("icons")
            .is_none());

        // Templates carry them too, and a definition with too many is refused.
        let icon = crate::server::Icon::new("https://example.com/t.svg")
            .unwrap()
            .theme(crate::server::Theme::Dark);
        let template = crate::server::ResourceTemplate::new("t://{x}", "t", |_uri, _vars| async {
            Ok(vec![])
        })
        .unwrap()
        .icon(icon.clone());
        assert_eq!(
            template.descriptor()["icons"],
            json!([{"src": "https://example.com/t.svg", "theme": "dark"}])
        );
        let mut crowded = Tool::builder("crowded", "Too many icons.");
        for _ in 0..=crate::server::ICONS_MAX {
            crowded = crowded.icon(icon.clone());
        }
        assert!(matches!(
            crowded.handler(|_call| async { Ok(ToolResult::text("x")) }),
            Err(crate::server::ServerError::InvalidIcon { .. })
        ));
    });
}

/// Tools for URL-mode elicitation: one that sends the user to a URL and
/// completes the elicitation itself once the client agreed; one that keeps
/// its completer for later; one that demands URL elicitation (-32042).
fn url_server(
    kept: Rc<std::cell::RefCell<Option<crate::server::ElicitationCompleter>>>,
) -> Rc<Server> {
    use crate::server::{ToolError, UrlElicitation};
    Rc::new(
        Server::builder("urls", "1")
            .tool(
                Tool::builder("connect", "Sends the user to a URL and waits.")
                    .handler(|call| async move {
                        let go = UrlElicitation::new("e-1", "https://example.invalid/connect", "Connect");
                        let answer = call.elicit_url(&go).await?;
                        call.elicitation_completer("e-1")
                            .complete()
                            .await
                            .map_err(|error| ToolError::Failed(error.to_string()))?;
                        let again = call.elicitation_completer("e-1").complete().await;
                        Ok(ToolResult::structured(json!({"answer": answer, "again": again.unwrap_err().to_string()})))
                    })
                    .unwrap(),
            )
            .tool(
                Tool::builder("later", "Demands URL elicitation; completes later.")
                    .handler(move |call| {
                        *kept.borrow_mut() = Some(call.elicitation_completer("e-2"));
                        async move {
                            Err(ToolError::UrlElicitationRequired(vec![UrlElicitation::new(
                                "e-2",
                                "https://example.invalid/auth",
                                "Authorize",
                            )]))
                        }
                    })
                    .unwrap(),
            )
            .tool(
                Tool::builder("bad_url", "A URL elicitation without its id.")
                    .handler(|call| async move {
                        let asked = json!({"mode": "url", "message": "go", "url": "https://example.invalid"});
                        Ok(ToolResult::structured(call.elicit(asked).await?))
                    })
                    .unwrap(),
            )
            .build()
            .unwrap(),
    )
}

async fn url_session(server: Rc<Server>, version: &str, capabilities: Value) -> Rc<McpSession> {
    let session = new_session(server, SessionLimits::default(), SystemClock::shared());
    let params = json!({"protocolVersion": version, "capabilities": capabilities, "clientInfo": {"name": "t", "version": "1"}});
    send(&session, request(0, "initialize", params))
        .await
        .unwrap();
    session
}

#[test]
fn a_url_elicitation_is_completed_once_on_the_calls_stream_while_it_runs() {
    run(async {
        let kept = Rc::new(std::cell::RefCell::new(None));
        let session = url_session(
            url_server(kept),
            "2025-11-25",
            json!({"elicitation": {"url": {}}}),
        )
        .await;
        let outbox = session.take_outbox().unwrap();
        let caller = session.clone();
        let call = glommio::spawn_local(async move {
            send(
                &caller,
                request(1, "tools/call", json!({"name": "connect"})),
            )
            .await
        });
        let asked = outbox.recv().await.unwrap();
        let asked: Value = serde_json::from_slice(&asked.frame).unwrap();
        assert_eq!(asked["params"]["elicitationId"], "e-1");
        assert_eq!(asked["params"]["mode"], "url");
        send(
            &session,
            json!({"jsonrpc": "2.0", "id": asked["id"], "result": {"action": "accept"}}),
        )
        .await;
        let done = outbox.recv().await.unwrap();
        assert_eq!(done.related, Some(Id::Int(1)), "on the call's stream");
        assert_eq!(
            serde_json::from_slice::<Value>(&done.frame).unwrap(),
            json!({"jsonrpc": "2.0", "method": "notifications/elicitation/complete", "params": {"elicitationId": "e-1"}})
        );
        let result = call.await.unwrap();
        assert_eq!(
            result["result"]["structuredContent"]["answer"],
            json!({"action": "accept"})
        );
        assert_eq!(
            result["result"]["structuredContent"]["again"], "no pending URL elicitation e-1",
            "once per id"
        );
        // URL-mode params without an id are refused before anything is sent.
        let bad = send(
            &session,
            request(2, "tools/call", json!({"name": "bad_url"})),
        )
        .await
        .unwrap();
        assert_eq!(error_code(&bad), -32602);
        assert!(bad["error"]["message"]
            .as_str()
            .unwrap()
            .contains("elicitationId"));
        assert_eq!(session.outbox_len(), 0);
    });
}

#[test]
fn url_elicitation_required_is_32042_and_its_completion_comes_after_the_call() {
    run(async {
        let kept = Rc::new(std::cell::RefCell::new(None));
        let session = url_session(
            url_server(kept.clone()),
            "2025-11-25",
            json!({"elicitation": {"form": {}, "url": {}}}),
        )
        .await;
        let outbox = session.take_outbox().unwrap();
        let reply = send(&session, request(1, "tools/call", json!({"name": "later"})))
            .await
            .unwrap();
        assert_eq!(
            reply["error"],
            json!({"code": -32042, "message": "This request requires more information.",
                   "data": {"elicitations": [{"mode": "url", "elicitationId": "e-2",
                            "url": "https://example.invalid/auth", "message": "Authorize"}]}})
        );
        let completer = kept.borrow_mut().take().unwrap();
        assert_eq!(completer.elicitation_id(), "e-2");
        completer.complete().await.unwrap();
        let done = outbox.recv().await.unwrap();
        assert_eq!(
            done.related, None,
            "the call is over: the session's own stream"
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&done.frame).unwrap()["params"],
            json!({"elicitationId": "e-2"})
        );
        assert_eq!(
            completer.complete().await,
            Err(crate::server::ElicitationError::Unknown("e-2".into()))
        );
        drop(outbox);
        drop(session);
        assert_eq!(
            completer.complete().await,
            Err(crate::server::ElicitationError::SessionEnded)
        );

        // A client without URL mode, or an older protocol, gets -32021.
        for (version, caps) in [
            ("2025-11-25", json!({"elicitation": {"form": {}}})),
            ("2025-06-18", json!({"elicitation": {"url": {}}})),
        ] {
            let kept = Rc::new(std::cell::RefCell::new(None));
            let session = url_session(url_server(kept.clone()), version, caps).await;
            let reply = send(&session, request(1, "tools/call", json!({"name": "later"})))
                .await
                .unwrap();
            assert_eq!(error_code(&reply), -32021, "{version}");
            assert_eq!(
                reply["error"]["data"]["requiredCapabilities"],
                json!({"elicitation": {"url": {}}})
            );
            let completer = kept.borrow_mut().take().unwrap();
            assert!(matches!(
                completer.complete().await,
                Err(crate::server::ElicitationError::Unsupported(_))
            ));
        }
    });
}

#[test]
fn stateless_url_elicitation_required_is_an_input_required_round_without_ids() {
    run(async {
        let kept = Rc::new(std::cell::RefCell::new(None));
        let session = new_session(
            url_server(kept.clone()),
            SessionLimits::default(),
            SystemClock::shared(),
        );
        let caps = json!({"elicitation": {"url": {}}});
        let reply = send(
            &session,
            modern(1, "tools/call", caps, json!({"name": "later"})),
        )
        .await
        .unwrap();
        let result = &reply["result"];
        assert_eq!(result["resultType"], "input_required");
        assert_eq!(
            result["inputRequests"],
            json!({"input-0": {"method": "elicitation/create", "params":
                {"mode": "url", "url": "https://example.invalid/auth", "message": "Authorize"}}})
        );
        // Accepting only means the user went there: the retry asks again
        // while the handler still demands it (never -32042 in this era).
        let retry = send(
            &session,
            modern(
                2,
                "tools/call",
                json!({"elicitation": {"url": {}}}),
                json!({
                    "name": "later",
                    "inputResponses": {"input-0": {"action": "accept"}},
                    "requestState": result["requestState"],
                }),
            ),
        )
        .await
        .unwrap();
        assert_eq!(retry["result"]["resultType"], "input_required");
        let completer = kept.borrow_mut().take().unwrap();
        assert!(matches!(
            completer.complete().await,
            Err(crate::server::ElicitationError::Unsupported(_))
        ));
        let refused = send(
            &session,
            modern(3, "tools/call", json!({}), json!({"name": "later"})),
        )
        .await
        .unwrap();
        assert_eq!(error_code(&refused), -32021);
    });
}
