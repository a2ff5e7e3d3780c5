//! The embedded default server's conformance fixtures, checked the way the
//! official suite's server scenarios check them (tests/conformance/FIXTURES.md),
//! through a session and without sockets. The suite itself runs over HTTP.

use std::future::Future;
use std::rc::Rc;

use serde_json::{json, Value};

use shardmcp::protocol::request_state::StateKey;
use shardmcp::server::demo;
use shardmcp::session::{McpSession, OutFrame, SessionLimits};
use shardmcp::time::SystemClock;

fn run<F: Future<Output = ()> + 'static>(f: F) {
    shardmcp::sync::run_on_fresh_shard(f)
}

/// A session initialized as the suite's client does (2025-11-25, sampling and
/// elicitation declared), with its outbox.
async fn suite_session() -> (
    Rc<McpSession>,
    glommio::channels::local_channel::LocalReceiver<Box<OutFrame>>,
) {
    let session = McpSession::new(
        shardmcp::server::LiveServer::new(demo::build().unwrap()),
        SessionLimits::default(),
        SystemClock::shared(),
        StateKey::random(),
    );
    let outbox = session.take_outbox().unwrap();
    let init = call(
        &session,
        0,
        "initialize",
        json!({
            "protocolVersion": "2025-11-25",
            "capabilities": {"sampling": {}, "elicitation": {}},
            "clientInfo": {"name": "conformance-test-client", "version": "1.0.0"}
        }),
    )
    .await;
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25");
    session
        .handle_frame(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
        .await;
    (session, outbox)
}

async fn call(session: &Rc<McpSession>, id: i64, method: &str, params: Value) -> Value {
    let frame = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    let reply = session
        .handle_frame(frame.to_string().as_bytes())
        .await
        .expect("a reply");
    serde_json::from_slice(&reply).unwrap()
}

async fn tool(session: &Rc<McpSession>, name: &str, arguments: Option<Value>) -> Value {
    let mut params = json!({"name": name});
    if let Some(arguments) = arguments {
        params["arguments"] = arguments;
    }
    let reply = call(session, 1, "tools/call", params).await;
    assert!(reply.get("error").is_none(), "{name}: {reply}");
    reply["result"].clone()
}

fn is_base64(text: &str) -> bool {
    !text.is_empty()
        && text.len().is_multiple_of(4)
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
}

/// Runs a tool while answering the one request it sends to the client.
async fn tool_asking(
    session: &Rc<McpSession>,
    outbox: &glommio::channels::local_channel::LocalReceiver<Box<OutFrame>>,
    name: &str,
    arguments: Value,
    answer: Value,
) -> (Value, Value) {
    let caller = session.clone();
    let name = name.to_string();
    let running = glommio::spawn_local(async move { tool(&caller, &name, Some(arguments)).await });
    let asked: Value = serde_json::from_slice(&outbox.recv().await.unwrap().frame).unwrap();
    let reply = json!({"jsonrpc": "2.0", "id": asked["id"], "result": answer});
    assert!(session
        .handle_frame(reply.to_string().as_bytes())
        .await
        .is_none());
    (asked, running.await)
}

#[test]
fn lifecycle_utilities_answer_exactly_empty_objects() {
    run(async {
        let (session, _outbox) = suite_session().await;
        assert_eq!(
            call(&session, 2, "ping", json!({})).await["result"],
            json!({})
        );
        assert_eq!(
            call(&session, 3, "logging/setLevel", json!({"level": "info"})).await["result"],
            json!({})
        );
        for method in ["resources/subscribe", "resources/unsubscribe"] {
            let reply = call(
                &session,
                4,
                method,
                json!({"uri": "test://watched-resource"}),
            )
            .await;
            assert_eq!(reply["result"], json!({}), "{method}");
        }
    });
}

#[test]
fn tools_list_is_one_page_of_described_object_schemas() {
    run(async {
        let (session, _outbox) = suite_session().await;
        let list = call(&session, 2, "tools/list", json!({})).await;
        assert!(
            list["result"].get("nextCursor").is_none(),
            "the suite reads page 1 only"
        );
        let tools = list["result"]["tools"].as_array().unwrap();
        for tool in tools {
            assert!(!tool["description"].as_str().unwrap().is_empty(), "{tool}");
            assert_eq!(tool["inputSchema"]["type"], "object", "{tool}");
        }
        let modern = tools
            .iter()
            .find(|t| t["name"] == "json_schema_2020_12_tool")
            .unwrap();
        let schema = &modern["inputSchema"];
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert!(schema["$defs"]["address"].is_object());
        assert_eq!(schema["additionalProperties"], false);
        let prompts = call(&session, 3, "prompts/list", json!({})).await;
        for prompt in prompts["result"]["prompts"].as_array().unwrap() {
            assert!(
                !prompt["description"].as_str().unwrap().is_empty(),
                "{prompt}"
            );
        }
    });
}

#[test]
fn content_tools_return_the_exact_blocks() {
    run(async {
        let (session, _outbox) = suite_session().await;
        let text = tool(&session, "test_simple_text", None).await;
        assert_eq!(
            text["content"],
            json!([{"type": "text", "text": "This is a simple text response for testing."}])
        );
        let image = tool(&session, "test_image_content", Some(json!({}))).await;
        assert_eq!(
            (
                image["content"][0]["type"].clone(),
                image["content"][0]["mimeType"].clone()
            ),
            (json!("image"), json!("image/png"))
        );
        assert!(is_base64(image["content"][0]["data"].as_str().unwrap()));
        let audio = tool(&session, "test_audio_content", Some(json!({}))).await;
        assert_eq!(audio["content"][0]["mimeType"], "audio/wav");
        assert!(is_base64(audio["content"][0]["data"].as_str().unwrap()));
        let embedded = tool(&session, "test_embedded_resource", Some(json!({}))).await;
        assert_eq!(
            embedded["content"][0],
            json!({"type": "resource", "resource": {
            "uri": "test://embedded-resource", "mimeType": "text/plain", "text": "This is an embedded resource content."}})
        );
        let mixed = tool(&session, "test_multiple_content_types", Some(json!({}))).await;
        let kinds: Vec<&str> = mixed["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["text", "image", "resource"]);
        assert_eq!(
            mixed["content"][2]["resource"]["text"],
            r#"{"test":"data","value":123}"#
        );
        let error = tool(&session, "test_error_handling", Some(json!({}))).await;
        assert_eq!(error["isError"], true);
        assert_eq!(
            error["content"][0]["text"],
            "This tool intentionally returns an error for testing"
        );
    });
}

#[test]
fn logging_and_progress_tools_notify_three_times_before_their_result() {
    run(async {
        let (session, outbox) = suite_session().await;
        call(&session, 2, "logging/setLevel", json!({"level": "debug"})).await;
        let frame = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "test_tool_with_logging", "arguments": {}}});
        session
            .handle_frame_into_outbox(frame.to_string().as_bytes())
            .await;
        let mut logs = Vec::new();
        loop {
            let out: Value = serde_json::from_slice(&outbox.recv().await.unwrap().frame).unwrap();
            if out.get("result").is_some() {
                break;
            }
            assert_eq!(out["method"], "notifications/message");
            logs.push(out["params"]["data"].clone());
        }
        assert_eq!(
            logs,
            [
                json!("Tool execution started"),
                json!("Tool processing data"),
                json!("Tool execution completed")
            ]
        );

        // The suite's client sends its request id as an integer progress token.
        let frame = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "test_tool_with_progress", "arguments": {}, "_meta": {"progressToken": 4}}});
        session
            .handle_frame_into_outbox(frame.to_string().as_bytes())
            .await;
        let mut progress = Vec::new();
        loop {
            let out: Value = serde_json::from_slice(&outbox.recv().await.unwrap().frame).unwrap();
            if out.get("result").is_some() {
                break;
            }
            assert_eq!(
                (
                    out["params"]["progressToken"].clone(),
                    out["params"]["total"].clone()
                ),
                (json!(4), json!(100.0))
            );
            progress.push(out["params"]["progress"].as_f64().unwrap());
        }
        assert_eq!(progress, [0.0, 50.0, 100.0]);
    });
}

#[test]
fn sampling_and_elicitation_tools_ask_in_shapes_the_suite_accepts() {
    run(async {
        let (session, outbox) = suite_session().await;
        let (asked, result) = tool_asking(&session, &outbox, "test_sampling", json!({"prompt": "Test prompt for sampling"}),
            json!({"role": "assistant", "content": {"type": "text", "text": "This is a test response from the client"}, "model": "test-model", "stopReason": "endTurn"})).await;
        assert_eq!(asked["method"], "sampling/createMessage");
        assert_eq!(asked["params"]["maxTokens"], 100);
        assert_eq!(
            asked["params"]["messages"][0]["content"]["text"],
            "Test prompt for sampling"
        );
        assert_eq!(
            result["content"][0]["text"],
            "LLM response: This is a test response from the client"
        );

        let (asked, result) = tool_asking(&session, &outbox, "test_elicitation", json!({"message": "Please provide your information"}),
            json!({"action": "accept", "content": {"username": "testuser", "email": "test@example.com"}})).await;
        assert_eq!(
            asked["params"]["message"],
            "Please provide your information"
        );
        assert_eq!(asked["params"]["requestedSchema"]["type"], "object");
        assert!(result["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("User response: action=accept, content="));

        let (asked, _) = tool_asking(
            &session,
            &outbox,
            "test_elicitation_sep1034_defaults",
            json!({}),
            json!({"action": "decline"}),
        )
        .await;
        let properties = &asked["params"]["requestedSchema"]["properties"];
        assert_eq!(
            (
                properties["name"]["type"].clone(),
                properties["name"]["default"].clone()
            ),
            (json!("string"), json!("John Doe"))
        );
        assert_eq!(
            (
                properties["age"]["type"].clone(),
                properties["age"]["default"].clone()
            ),
            (json!("integer"), json!(30))
        );
        assert_eq!(
            (
                properties["score"]["type"].clone(),
                properties["score"]["default"].clone()
            ),
            (json!("number"), json!(95.5))
        );
        assert!(properties["status"]["enum"]
            .as_array()
            .unwrap()
            .contains(&properties["status"]["default"]));
        assert_eq!(
            (
                properties["verified"]["type"].clone(),
                properties["verified"]["default"].clone()
            ),
            (json!("boolean"), json!(true))
        );

        let (asked, _) = tool_asking(
            &session,
            &outbox,
            "test_elicitation_sep1330_enums",
            json!({}),
            json!({"action": "cancel"}),
        )
        .await;
        let p = &asked["params"]["requestedSchema"]["properties"];
        assert!(
            p["untitledSingle"]["enum"].is_array()
                && p["untitledSingle"].get("oneOf").is_none()
                && p["untitledSingle"].get("enumNames").is_none()
        );
        assert!(p["titledSingle"].get("enum").is_none());
        assert!(p["titledSingle"]["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["const"].is_string() && o["title"].is_string()));
        assert_eq!(
            p["legacyEnum"]["enum"].as_array().unwrap().len(),
            p["legacyEnum"]["enumNames"].as_array().unwrap().len()
        );
        assert!(
            p["untitledMulti"]["items"]["enum"].is_array()
                && p["untitledMulti"]["items"].get("anyOf").is_none()
        );
        assert!(p["titledMulti"]["items"].get("enum").is_none());
        assert!(p["titledMulti"]["items"]["anyOf"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["const"].is_string() && o["title"].is_string()));
    });
}

#[test]
fn resources_prompts_and_completion_fixtures() {
    run(async {
        let (session, _outbox) = suite_session().await;
        let text = call(
            &session,
            2,
            "resources/read",
            json!({"uri": "test://static-text"}),
        )
        .await;
        assert_eq!(
            text["result"]["contents"][0],
            json!({"uri": "test://static-text", "mimeType": "text/plain",
            "text": "This is the content of the static text resource."})
        );
        let binary = call(
            &session,
            3,
            "resources/read",
            json!({"uri": "test://static-binary"}),
        )
        .await;
        assert_eq!(binary["result"]["contents"][0]["mimeType"], "image/png");
        assert!(is_base64(
            binary["result"]["contents"][0]["blob"].as_str().unwrap()
        ));
        let templated = call(
            &session,
            4,
            "resources/read",
            json!({"uri": "test://template/123/data"}),
        )
        .await;
        let contents = &templated["result"]["contents"][0];
        assert_eq!(
            (contents["uri"].clone(), contents["mimeType"].clone()),
            (json!("test://template/123/data"), json!("application/json"))
        );
        assert!(contents["text"].as_str().unwrap().contains("123"));

        let simple = call(
            &session,
            5,
            "prompts/get",
            json!({"name": "test_simple_prompt"}),
        )
        .await;
        assert_eq!(
            simple["result"]["messages"][0]["content"]["text"],
            "This is a simple prompt for testing."
        );
        let with_args = call(
            &session,
            6,
            "prompts/get",
            json!({"name": "test_prompt_with_arguments",
            "arguments": {"arg1": "testValue1", "arg2": "testValue2"}}),
        )
        .await;
        assert_eq!(
            with_args["result"]["messages"][0]["content"]["text"],
            "Prompt with arguments: arg1='testValue1', arg2='testValue2'"
        );
        let embedded = call(
            &session,
            7,
            "prompts/get",
            json!({"name": "test_prompt_with_embedded_resource",
            "arguments": {"resourceUri": "test://example-resource"}}),
        )
        .await;
        let messages = embedded["result"]["messages"].as_array().unwrap();
        assert_eq!(messages[0]["content"]["type"], "resource");
        assert_eq!(
            messages[0]["content"]["resource"]["uri"],
            "test://example-resource"
        );
        assert_eq!(
            messages[1]["content"]["text"],
            "Please process the embedded resource above."
        );
        let image = call(
            &session,
            8,
            "prompts/get",
            json!({"name": "test_prompt_with_image"}),
        )
        .await;
        assert_eq!(image["result"]["messages"][0]["content"]["type"], "image");
        assert!(is_base64(
            image["result"]["messages"][0]["content"]["data"]
                .as_str()
                .unwrap()
        ));

        let completion = call(
            &session,
            9,
            "completion/complete",
            json!({
            "ref": {"type": "ref/prompt", "name": "test_prompt_with_arguments"},
            "argument": {"name": "arg1", "value": "test"}}),
        )
        .await;
        let values = completion["result"]["completion"]["values"]
            .as_array()
            .unwrap();
        assert!(values.len() <= 100 && values.iter().all(Value::is_string));
        assert!(values.contains(&json!("testValue1")));
    });
}
