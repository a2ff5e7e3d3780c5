//! Interop: the official MCP clients drive `shardmcp serve` (the embedded
//! default server) through a whole scenario, and every step's outcome is
//! checked here.
//!
//! - TypeScript SDK client (`tests/interop/ts_client.mjs`), handshake era;
//! - Python SDK client (`tests/interop/py_client.py`) in its 2026-07-28 mode
//!   and in its handshake (`legacy`) mode.
//!
//! Each script prints one JSON line per step (`{"step": ..., "ok": ...}`
//! plus what it saw). `tests/interop/setup.sh` installs the pinned clients
//! once per run. Each test starts its own server (2 shards, so requests also
//! cross the mesh) on a free port and stops it even when the test fails.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A client script that has not finished by then has hung: it is killed.
const CLIENT_LIMIT: Duration = Duration::from_secs(180);
/// Longer than the server's default drain deadline (10 s).
const STOP_LIMIT: Duration = Duration::from_secs(20);

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Runs `tests/interop/setup.sh` once for this test binary (the script also
/// takes a file lock, for runs in other processes).
fn setup() {
    static SETUP: OnceLock<Result<(), String>> = OnceLock::new();
    let outcome = SETUP.get_or_init(|| {
        let output = Command::new("bash")
            .arg(interop_dir().join("setup.sh"))
            .output()
            .map_err(|error| format!("could not run setup.sh: {error}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "tests/interop/setup.sh failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    });
    if let Err(message) = outcome {
        panic!("{message}");
    }
}

/// How a client reaches the server: Streamable HTTP at a running server's
/// URL, or stdio, where the client starts `shardmcp serve --stdio` itself
/// (the HTTP-only steps, `listen` and `cancel-quiet`, are skipped there by the
/// scripts).
#[derive(Clone, Copy)]
enum Transport<'a> {
    Http(&'a str),
    Stdio,
}

/// A running `shardmcp serve`; killed on drop if the test did not stop it.
struct Server {
    child: Option<Child>,
    /// Held open: a server writing to a closed stdout would get EPIPE.
    _stdout: BufReader<std::process::ChildStdout>,
    url: String,
    stderr: PathBuf,
}

impl Server {
    fn start() -> Server {
        Server::start_with(&[])
    }

    /// A server with these `serve` arguments added.
    fn start_with(extra: &[&str]) -> Server {
        let stderr = std::env::temp_dir().join(format!(
            "shardmcp-interop-{}-{:?}.stderr",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardmcp"))
            .args([
                "serve",
                "--shards",
                "2",
                "--tcp",
                "",
                "--http",
                "127.0.0.1:0",
                "--admin",
                "",
                "--log",
                "warn",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("the server binary runs");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("the server prints its listener");
        let mut server = Server {
            child: Some(child),
            _stdout: stdout,
            url: String::new(),
            stderr,
        };
        let addr = line
            .strip_prefix("shardmcp: http listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no listening line: {line:?}; {}", server.stderr_text()));
        server.url = format!("http://{addr}/mcp");
        server
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM, then the drain: it must end at once (the clients left no
    /// request running and no connection open) with exit 0 and nothing
    /// logged at warn or above.
    fn stop_cleanly(mut self) {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let status = wait_for(&mut child, STOP_LIMIT);
        let logged = self.stderr_text();
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the server did not exit within {STOP_LIMIT:?} of SIGTERM; it logged:\n{logged}"
            );
        };
        assert!(
            status.success(),
            "server exit {status}; it logged:\n{logged}"
        );
        assert!(
            !logged.contains("WARN") && !logged.contains("ERROR"),
            "the server logged warnings or errors (\"drain deadline reached\" means a connection \
             was left open, e.g. a handler the client had abandoned):\n{logged}"
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.stderr);
    }
}

fn wait_for(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The official clients, and the era each speaks.
#[derive(Clone, Copy, PartialEq)]
enum Sdk {
    /// TypeScript SDK, handshake era.
    Ts,
    /// Python SDK, `mode="2026-07-28"`.
    PyModern,
    /// Python SDK, `mode="legacy"` (initialize handshake).
    PyLegacy,
}

impl Sdk {
    fn command(self, transport: Transport, steps: &[&str]) -> Command {
        let dir = interop_dir();
        let mut command = match self {
            Sdk::Ts => {
                let mut command = Command::new("node");
                command.arg(dir.join("ts_client.mjs"));
                command
            }
            Sdk::PyModern | Sdk::PyLegacy => {
                let mut command = Command::new(dir.join(".venv/bin/python"));
                command
                    .arg(dir.join("py_client.py"))
                    .arg("--mode")
                    .arg(if self == Sdk::PyModern {
                        "2026-07-28"
                    } else {
                        "legacy"
                    });
                command
            }
        };
        command
            .current_dir(&dir)
            .arg("--steps")
            .arg(steps.join(","));
        match transport {
            Transport::Http(url) => command.args(["--transport", "http", "--url", url]),
            Transport::Stdio => command
                .args(["--transport", "stdio", "--command"])
                .arg(env!("CARGO_BIN_EXE_shardmcp"))
                .args(["serve", "--stdio", "--log", "warn"]),
        };
        command
    }

    fn modern(self) -> bool {
        self == Sdk::PyModern
    }

    /// The name the script's elicitation and sampling answers carry.
    fn short(self) -> &'static str {
        match self {
            Sdk::Ts => "ts",
            Sdk::PyModern | Sdk::PyLegacy => "py",
        }
    }
}

/// What one client script printed.
struct Run {
    steps: HashMap<String, Value>,
    order: Vec<String>,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn of(sdk: Sdk, transport: Transport, steps: &[&str]) -> Run {
        Run::of_with(sdk, transport, steps, &[])
    }

    /// A run with these script arguments added.
    fn of_with(sdk: Sdk, transport: Transport, steps: &[&str], extra: &[&str]) -> Run {
        setup();
        let mut child = sdk
            .command(transport, steps)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the client script runs");
        // Read both pipes on threads so a chatty client cannot block.
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        let err = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        let status = wait_for(&mut child, CLIENT_LIMIT);
        if status.is_none() {
            let _ = child.kill();
        }
        let status = status.unwrap_or_else(|| child.wait().unwrap());
        let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
        let mut run = Run {
            steps: HashMap::new(),
            order: Vec::new(),
            status,
            stdout,
            stderr,
        };
        for line in run.stdout.lines() {
            let value: Value = serde_json::from_str(line).unwrap_or_else(|error| {
                panic!("not a JSON step line ({error}): {line}\n{}", run.dump())
            });
            let name = value["step"].as_str().unwrap_or_default().to_string();
            run.order.push(name.clone());
            run.steps.insert(name, value);
        }
        run
    }

    fn dump(&self) -> String {
        format!(
            "client exit: {}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    /// The step's line, which must say ok.
    fn step(&self, name: &str) -> &Value {
        let line = self
            .steps
            .get(name)
            .unwrap_or_else(|| panic!("no line for step {name}\n{}", self.dump()));
        assert_eq!(
            line["ok"],
            true,
            "step {name} failed: {line}\n{}",
            self.dump()
        );
        line
    }

    /// Every step ran, in order, each ok, and the script exited 0.
    fn assert_all_ok(&self, steps: &[&str]) {
        let mut wanted = vec!["connect"];
        wanted.extend_from_slice(steps);
        wanted.push("close");
        assert_eq!(self.order, wanted, "steps run\n{}", self.dump());
        for name in &wanted {
            self.step(name);
        }
        assert!(self.status.success(), "{}", self.dump());
    }
}

/// The steps every client runs, in the scripts' order.
fn common_steps() -> Vec<&'static str> {
    vec![
        "tools/list",
        "tools/call:echo",
        "tools/call:add",
        "tools/call:invalid-arguments",
        "resources/list",
        "resources/read",
        "prompts",
        "progress-and-logging",
        "elicitation",
        "sampling",
        "cancel",
    ]
}

/// Checks what each common step saw; the scripts check it too, this makes
/// the expectations visible (and fails on a script that checks too little).
fn assert_common(run: &Run, sdk: Sdk) {
    let tools = run.step("tools/list");
    assert_eq!(tools["first"], json!(["echo", "add", "slow", "touch_note"]));
    assert!(tools["tools"].as_u64().unwrap() >= 5, "{tools}");
    assert_eq!(run.step("tools/call:echo")["text"], "héllo ✓");
    assert_eq!(run.step("tools/call:echo")["isError"], false);
    // JS prints 42, Python 42.0: compare numbers as numbers.
    assert_eq!(run.step("tools/call:add")["sum"].as_f64(), Some(42.0));
    assert_eq!(run.step("tools/call:invalid-arguments")["code"], -32602);

    let resources = run.step("resources/list");
    for uri in ["demo://readme", "demo://pixel.png"] {
        assert!(
            resources["uris"].as_array().unwrap().contains(&json!(uri)),
            "{resources}"
        );
    }
    assert!(resources["templates"]
        .as_array()
        .unwrap()
        .contains(&json!("demo://notes/{name}")));
    let read = run.step("resources/read");
    assert_eq!(read["note"], "note alpha");
    assert_eq!(read["pngBytes"], 70);
    // 2026-07-28 retired -32002 for a missing resource in favour of -32602.
    assert_eq!(read["missing"], if sdk.modern() { -32602 } else { -32002 });

    let prompts = run.step("prompts");
    assert_eq!(prompts["greeting"], "Say hello to Ada.");
    assert_eq!(prompts["review"], json!(["resource", "text"]));
    assert_eq!(prompts["completion"], json!(["Ada", "Alan"]));

    let progress = run.step("progress-and-logging");
    let values: Vec<f64> = progress["progress"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    // The TypeScript SDK may drop the last progress over stdio (it settles
    // the response before it dispatches a notification read with it; see
    // ts_client.mjs): the logs still show that all four steps ran.
    let ts_over_stdio = sdk == Sdk::Ts && run.step("connect")["transport"] == "stdio";
    if ts_over_stdio && values.len() == 3 {
        assert_eq!(values, [1.0, 2.0, 3.0], "{progress}");
    } else {
        assert_eq!(values, [1.0, 2.0, 3.0, 4.0], "{progress}");
    }
    assert_eq!(progress["logs"], 4);
    assert_eq!(progress["text"], "waited 200 ms");

    let who = sdk.short();
    assert_eq!(
        run.step("elicitation")["text"],
        format!(
            r#"User response: action=accept, content={{"email":"{who}@example.org","username":"{who}-user"}}"#
        )
    );
    assert_eq!(
        run.step("sampling")["text"],
        format!("LLM response: {who} model says: What is 6x7?")
    );
    // The cancelled call counted as stopped early, not completed (the
    // script compares the server's tally before and after).
    assert_eq!(run.step("cancel")["stopped"], 1);
}

/// The server closed the reconnection fixture's stream before answering: the
/// SDK got the answer only by resuming it with `Last-Event-ID`.
fn assert_resumed(run: &Run) {
    assert_eq!(run.step("resume")["text"], "Reconnection test completed");
}

#[test]
fn typescript_sdk_over_http_handshake_era() {
    let server = Server::start();
    let mut steps = common_steps();
    steps.extend(["resume", "ping"]);
    let run = Run::of(Sdk::Ts, Transport::Http(&server.url), &steps);
    run.assert_all_ok(&steps);
    assert_resumed(&run);
    let connect = run.step("connect");
    assert_eq!(connect["sdk"], "1.32.2");
    assert_eq!(connect["server"], "shardmcp");
    assert_eq!(connect["protocolVersion"], "2025-11-25");
    assert_eq!(connect["sessionId"], true);
    assert_eq!(
        connect["capabilities"],
        json!([
            "completions",
            "logging",
            "prompts",
            "resources",
            "tasks",
            "tools"
        ])
    );
    assert_common(&run, Sdk::Ts);
    server.stop_cleanly();
}

#[test]
fn python_sdk_over_http_2026_07_28() {
    let server = Server::start();
    let steps = common_steps();
    let run = Run::of(Sdk::PyModern, Transport::Http(&server.url), &steps);
    run.assert_all_ok(&steps);
    let connect = run.step("connect");
    assert_eq!(connect["sdk"], "2.3.0");
    assert_eq!(connect["protocolVersion"], "2026-07-28");
    // No handshake in this revision: nothing identified the server up front.
    assert_eq!(connect["server"], Value::Null);
    let tools = run.step("tools/list");
    assert_eq!(
        (&tools["ttlMs"], &tools["cacheScope"]),
        (&json!(0), &json!("private"))
    );
    assert_common(&run, Sdk::PyModern);
    server.stop_cleanly();
}

#[test]
fn python_sdk_over_http_handshake_era() {
    let server = Server::start();
    let mut steps = common_steps();
    steps.extend(["resume", "ping"]);
    let run = Run::of(Sdk::PyLegacy, Transport::Http(&server.url), &steps);
    run.assert_all_ok(&steps);
    assert_resumed(&run);
    let connect = run.step("connect");
    assert_eq!(connect["sdk"], "2.3.0");
    assert_eq!(connect["server"], "shardmcp");
    assert_eq!(connect["protocolVersion"], "2025-11-25");
    assert_common(&run, Sdk::PyLegacy);
    server.stop_cleanly();
}

// What only HTTP has: the GET stream, listens without a session, and
// cancellation by closing a 2026-07-28 stream.

#[test]
fn handshake_era_subscriptions_over_http_reach_the_client() {
    for sdk in [Sdk::Ts, Sdk::PyLegacy] {
        let server = Server::start();
        let run = Run::of(sdk, Transport::Http(&server.url), &["subscribe"]);
        run.assert_all_ok(&["subscribe"]);
        assert_eq!(run.step("subscribe")["uri"], "demo://notes/subscribed");
        server.stop_cleanly();
    }
}

#[test]
fn stateless_listen_over_http_carries_resource_updates() {
    let server = Server::start();
    let run = Run::of(Sdk::PyModern, Transport::Http(&server.url), &["listen"]);
    run.assert_all_ok(&["listen"]);
    assert_eq!(run.step("listen")["uri"], "demo://notes/listened");
    server.stop_cleanly();
}

#[test]
fn closing_a_quiet_stateless_stream_cancels_its_handler() {
    let server = Server::start();
    let run = Run::of(
        Sdk::PyModern,
        Transport::Http(&server.url),
        &["cancel-quiet"],
    );
    run.assert_all_ok(&["cancel-quiet"]);
    assert_eq!(run.step("cancel-quiet")["stopped"], 1);
    server.stop_cleanly();
}

#[test]
fn typescript_sdk_over_stdio() {
    let mut steps = common_steps();
    steps.push("ping");
    let run = Run::of(Sdk::Ts, Transport::Stdio, &steps);
    run.assert_all_ok(&steps);
    let connect = run.step("connect");
    assert_eq!(connect["server"], "shardmcp");
    assert_eq!(connect["protocolVersion"], "2025-11-25");
    assert_common(&run, Sdk::Ts);
}

#[test]
fn python_sdk_over_stdio_both_eras() {
    for (sdk, version) in [(Sdk::PyLegacy, "2025-11-25"), (Sdk::PyModern, "2026-07-28")] {
        let steps = common_steps();
        let run = Run::of(sdk, Transport::Stdio, &steps);
        run.assert_all_ok(&steps);
        assert_eq!(run.step("connect")["protocolVersion"], version);
        assert_common(&run, sdk);
    }
}

/// The TypeScript SDK client reaches a server with `[auth]` on when it
/// sends a bearer token on every request (session, GET stream, DELETE), and
/// is refused without one.
#[test]
fn ts_sdk_with_a_bearer_token_against_static_auth() {
    let dir = std::env::temp_dir().join(format!("shardmcp-interop-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = "interop-token-0123456789";
    let tokens = dir.join("tokens.toml");
    std::fs::write(
        &tokens,
        format!("[[tokens]]\ntoken = \"{token}\"\nprincipal = \"interop\"\nscopes = [\"mcp\"]\n"),
    )
    .unwrap();
    let config = dir.join("shardmcp.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\ntcp = \"\"\n[auth]\nmode = \"static\"\nresource = \"http://127.0.0.1/mcp\"\nscopes_required = [\"mcp\"]\ntokens_file = \"{}\"\n",
            tokens.display()
        ),
    )
    .unwrap();
    let server = Server::start_with(&["--config", &config.display().to_string()]);
    let steps = [
        "tools/list",
        "tools/call:echo",
        "progress-and-logging",
        "ping",
    ];
    let run = Run::of_with(
        Sdk::Ts,
        Transport::Http(&server.url),
        &steps,
        &["--bearer", token],
    );
    run.assert_all_ok(&steps);
    let refused = Run::of(Sdk::Ts, Transport::Http(&server.url), &["ping"]);
    assert!(!refused.status.success(), "{}", refused.dump());
    let connect = &refused.steps["connect"];
    assert_eq!(connect["ok"], false, "{}", refused.dump());
    let _ = std::fs::remove_dir_all(&dir);
    server.stop_cleanly();
}
