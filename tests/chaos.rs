//! Chaos injection over the admin listener, against a real node: refused
//! unless enabled, each kind answers what it hit and its recovery, and the
//! sessions of a killed pool or actor carry on without their client
//! noticing.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{test_config, IO_TIMEOUT};
use serde_json::Value;
use shardmcp::chaos::classify::SessionKey;
use shardmcp::runtime::{self, NodeHandle};
use shardmcp::server::demo;

fn chaos(node: &NodeHandle, method: &str, path: &str) -> (u16, String) {
    let admin = node.admin_addr().unwrap();
    let reply = common::http::request(admin, method, path, &[], "");
    (reply.status, reply.body)
}

fn chaos_json(node: &NodeHandle, path: &str) -> Value {
    let (status, body) = chaos(node, "POST", path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn mcp(node: &NodeHandle, session: Option<&str>, body: &str) -> (u16, String, String) {
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    if let Some(session) = session {
        headers.push(("Mcp-Session-Id", session));
        headers.push(("MCP-Protocol-Version", "2025-11-25"));
    }
    let reply = common::http::request(node.http_addr().unwrap(), "POST", "/mcp", &headers, body);
    (reply.status, reply.head, reply.body)
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;

/// An initialized HTTP session; its id.
fn open_session(node: &NodeHandle) -> String {
    let (status, head, _) = mcp(node, None, INIT);
    assert_eq!(status, 200);
    let id = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("mcp-session-id")
                .then(|| value.trim().to_string())
        })
        .unwrap();
    let (status, _, _) = mcp(
        node,
        Some(&id),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    assert_eq!(status, 202);
    id
}

fn chaos_node(enabled: bool) -> NodeHandle {
    let mut config = test_config(2, 2);
    config.chaos.enabled = enabled;
    runtime::start(config, demo::factory()).unwrap()
}

#[test]
fn chaos_is_refused_unless_enabled() {
    let node = chaos_node(false);
    let (status, body) = chaos(&node, "POST", "/admin/chaos/pool");
    assert_eq!(status, 403);
    assert!(body.contains("--chaos"), "{body}");
    // Nothing was killed.
    assert_eq!(node.status().unwrap().shards[0].restarts, 0);
}

#[test]
fn bad_chaos_requests_say_why() {
    let node = chaos_node(true);
    let cases = [
        ("POST", "/admin/chaos/planet", 400, "unknown chaos kind"),
        ("GET", "/admin/chaos/pool", 405, "POST"),
        ("POST", "/admin/chaos/pool?shard=9", 400, "shard=9"),
        ("POST", "/admin/chaos/pool?shard=0&pool=5", 400, "pool=5"),
        ("POST", "/admin/chaos/pool?color=red", 400, "color"),
        ("POST", "/admin/chaos/stall?shard=0", 400, "ms"),
        (
            "POST",
            "/admin/chaos/stall?shard=0&ms=999999",
            400,
            "stall_ms_max",
        ),
        (
            "POST",
            "/admin/chaos/session?shard=0&session=000100000000000000000000000000000001",
            400,
            "belongs to shard 1",
        ),
        (
            "POST",
            "/admin/chaos/session?shard=0&session=000000000000000000000000000000000001",
            404,
            "no live session",
        ),
        (
            "POST",
            "/admin/chaos/fill?shard=0&to=0&ms=5",
            400,
            "another shard",
        ),
    ];
    for (method, path, expected, words) in cases {
        let (status, body) = chaos(&node, method, path);
        assert_eq!(status, expected, "{method} {path}: {body}");
        assert!(body.contains(words), "{method} {path}: {body}");
    }
}

#[test]
fn a_killed_pool_restarts_and_its_sessions_carry_on() {
    let node = chaos_node(true);
    let session = open_session(&node);
    let key = SessionKey::parse(&session).unwrap();
    let pool = key.pool(2);
    let answer = chaos_json(
        &node,
        &format!("/admin/chaos/pool?shard={}&pool={pool}", key.shard),
    );
    assert_eq!(answer["kind"], "pool");
    assert_eq!(answer["shard"], key.shard);
    assert_eq!(answer["pool"], pool);
    assert_eq!(answer["pools"], 2);
    assert!(
        answer["sessions_affected"].as_u64().unwrap() >= 1,
        "{answer}"
    );
    assert!(answer["recovery_us"].as_u64().is_some(), "{answer}");
    // The session's actor died with its pool; the client does not notice.
    let (status, _, body) = mcp(
        &node,
        Some(&session),
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"tools\""), "{body}");
    // Twice in a row, and through the other shard's connections too.
    chaos_json(
        &node,
        &format!("/admin/chaos/pool?shard={}&pool={pool}", key.shard),
    );
    let (status, _, body) = mcp(
        &node,
        Some(&session),
        r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let report = node.query(shardmcp::ids::ShardId(key.shard)).unwrap();
    assert!(report.restarts.restarts >= 2, "{:?}", report.restarts);
}

#[test]
fn a_killed_session_actor_is_taken_up_again_with_its_state() {
    let node = chaos_node(true);
    let session = open_session(&node);
    let key = SessionKey::parse(&session).unwrap();
    let answer = chaos_json(
        &node,
        &format!("/admin/chaos/session?session={session}&shard={}", key.shard),
    );
    assert_eq!(answer["kind"], "session");
    assert_eq!(answer["session"], session.as_str());
    assert_eq!(answer["sessions_affected"], 1);
    assert!(answer["recovery_us"].as_u64().is_some(), "{answer}");
    // Still initialized: a request that needs the handshake is served.
    let (status, _, body) = mcp(
        &node,
        Some(&session),
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"tools\""), "{body}");
    // A random session on the shard; and on any shard (the other has none).
    let answer = chaos_json(&node, &format!("/admin/chaos/session?shard={}", key.shard));
    assert_eq!(answer["session"], session.as_str());
    for _ in 0..4 {
        let answer = chaos_json(&node, "/admin/chaos/session");
        assert_eq!(answer["session"], session.as_str());
    }
    let other = 1 - key.shard;
    let (status, body) = chaos(
        &node,
        "POST",
        &format!("/admin/chaos/session?shard={other}"),
    );
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("has no sessions"), "{body}");
}

#[test]
fn a_killed_shard_is_restarted_and_its_recovery_measured() {
    let node = chaos_node(true);
    let answer = chaos_json(&node, "/admin/chaos/shard?shard=1");
    assert_eq!(answer["kind"], "shard");
    assert_eq!(answer["shard"], 1);
    assert!(answer["recovery_us"].as_u64().is_some(), "{answer}");
    let status = node.status().unwrap();
    assert_eq!(status.shards[1].restarts, 1);
    assert!(status.shards[1].is_up(&status.expected_listeners));
    // The restarted shard serves.
    open_session(&node);
}

#[test]
fn stalls_fills_and_drops_answer_what_they_did() {
    let node = chaos_node(true);
    let stall = chaos_json(&node, "/admin/chaos/stall?shard=0&ms=20");
    assert_eq!(stall["ms"], 20);
    assert!(stall["recovery_us"].as_u64().unwrap() >= 20_000, "{stall}");
    let fill = chaos_json(&node, "/admin/chaos/fill?shard=0&to=1&ms=20");
    assert_eq!(fill["to"], 1);
    assert!(fill["messages_queued"].as_u64().unwrap() > 0, "{fill}");
    assert!(fill["recovery_us"].as_u64().is_some(), "{fill}");
    // A keep-alive connection open on some shard: dropping every
    // connection of both shards closes it.
    let http = node.http_addr().unwrap();
    let mut open = TcpStream::connect(http).unwrap();
    open.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    // Answered, so a shard holds it open (keep-alive) before the drop.
    open.write_all(format!("GET /nothing HTTP/1.1\r\nHost: {http}\r\n\r\n").as_bytes())
        .unwrap();
    let mut answer = [0u8; 512];
    assert!(open.read(&mut answer).unwrap() > 0);
    let mut dropped = 0;
    for shard in 0..2 {
        let answer = chaos_json(
            &node,
            &format!("/admin/chaos/drop?shard={shard}&fraction=1"),
        );
        dropped += answer["connections_dropped"].as_u64().unwrap();
    }
    assert!(dropped >= 1);
    let mut buffer = [0u8; 16];
    assert_eq!(
        open.read(&mut buffer).unwrap_or(0),
        0,
        "the connection was closed"
    );
    // The listeners stay: new connections are served.
    open_session(&node);
}

fn load(args: &[&str]) -> (std::process::Output, Value) {
    let path = std::env::temp_dir().join(format!(
        "shardmcp-chaos-load-{}-{}.json",
        std::process::id(),
        args.len()
    ));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_shardmcp"))
        .arg("load")
        .args(args)
        .arg("--json")
        .arg(&path)
        .output()
        .expect("shardmcp load runs");
    let json = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null);
    std::fs::remove_file(&path).ok();
    (output, json)
}

#[test]
fn a_load_run_with_pool_kills_reports_them_and_no_failure_outside_the_killed_pools() {
    let node = chaos_node(true);
    let target = format!("http://{}/mcp", node.http_addr().unwrap());
    let admin = node.admin_addr().unwrap().to_string();
    let (output, json) = load(&[
        "--target",
        &target,
        "--sessions",
        "40",
        "--rate",
        "400",
        "--duration",
        "2s",
        "--threads",
        "1",
        "--quiet",
        "--chaos",
        "pool=250ms,session=250ms",
        "--admin",
        &admin,
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let chaos = &json["chaos"];
    assert_eq!(chaos["spec"], "pool=250ms,session=250ms", "{stdout}");
    let pool = &chaos["recovery"][1];
    assert_eq!(pool["kind"], "pool", "{stdout}");
    // At 250 ms, 500 ms ... 1750 ms of the 2 s window.
    assert_eq!(pool["injected"], 7, "{stdout}");
    assert_eq!(pool["failed_to_inject"], 0, "{stdout}");
    assert_eq!(pool["unrecovered"], 0, "{stdout}");
    assert!(pool["recovery_ms"]["p99"].as_f64().is_some(), "{stdout}");
    assert_eq!(chaos["recovery"][0]["kind"], "session", "{stdout}");
    // Sessions outside a killed pool never failed; those inside carried on
    // (their state outlived the pool), so at most the requests in flight in
    // a killed actor failed, and every failure is accounted for.
    assert_eq!(chaos["failed_outside"], 0, "{stdout}");
    let failed = json["requests"]["failed"].as_u64().unwrap()
        + json["initialize"]["in_window_failed"].as_u64().unwrap();
    assert_eq!(chaos["failed_inside"].as_u64().unwrap(), failed, "{stdout}");
    assert!(json["requests"]["ok"].as_u64().unwrap() > 0, "{stdout}");
    assert!(json["availability"].as_f64().is_some(), "{stdout}");
    assert!(
        stdout.contains("chaos         pool=250ms,session=250ms: "),
        "{stdout}"
    );
    assert!(stdout.contains("  pool     7 injected"), "{stdout}");
}

#[test]
fn a_bad_chaos_spec_is_one_clear_line() {
    for (spec, extra, words) in [
        ("planet=1s", "", "unknown kind `planet`"),
        ("pool=1ms", "", "shorter than the minimum"),
        ("stall=1s", "", "needs a length"),
        ("pool=1s", "--idle", "--idle sends none"),
        (
            "pool=1s",
            "--chaos-grace=11m",
            "--chaos-grace must be at most 10m",
        ),
        ("pool=1s", "--admin=nowhere", "--admin nowhere"),
    ] {
        let mut args = vec!["--chaos", spec, "--duration", "1s", "--quiet"];
        if !extra.is_empty() {
            args.push(extra);
        }
        let (output, _) = load(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(stderr.contains(words), "{spec} {extra}: {stderr}");
    }
}

#[test]
fn the_chaos_command_prints_one_line_or_one_clear_error() {
    let node = chaos_node(true);
    let admin = node.admin_addr().unwrap().to_string();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_shardmcp"))
            .arg("chaos")
            .args(args)
            .output()
            .expect("shardmcp chaos runs")
    };
    let output = run(&["pool", "--admin", &admin, "--shard", "1", "--pool", "0"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with("pool shard=1 pool=0 sessions_affected="),
        "{stdout}"
    );
    assert!(stdout.contains(" recovery="), "{stdout}");
    for (args, words) in [
        (
            vec!["session", "--session", "zz"],
            "not a shardmcp session id",
        ),
        (vec!["stall", "--shard", "0"], "`ms` is required for stall"),
        (vec!["pool", "--pool", "7"], "answered 400: pool=7"),
    ] {
        let mut args = args;
        args.extend(["--admin", admin.as_str()]);
        let output = run(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(words), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    let off = chaos_node(false);
    let output = run(&["shard", "--admin", &off.admin_addr().unwrap().to_string()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("answered 403"), "{stderr}");
}
