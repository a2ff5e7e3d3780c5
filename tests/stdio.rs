//! `shardmcp serve --stdio` as an MCP client runs it: one session on the
//! child's stdin and stdout, nothing else on stdout, exit 0 at EOF.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Client, IO_TIMEOUT};
use serde_json::{json, Value};

const INIT: &str = r#"{"jsonrpc":"2.0","id":"init","method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"stdio-test","version":"0"}}}"#;

/// The server as a child process; killed if a test fails before it exits.
struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Every line the server wrote to stdout, in order.
    seen: Vec<String>,
    stderr: mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(args: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardmcp"))
        .args(["serve", "--stdio", "--log", "info"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    let (line_tx, lines) = mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let (err_tx, stderr) = mpsc::channel();
    let mut stderr_pipe = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        let mut line = String::new();
        while stderr_pipe.read_line(&mut line).is_ok_and(|read| read > 0) {
            if err_tx.send(std::mem::take(&mut line)).is_err() {
                break;
            }
        }
    });
    Server {
        stdin: child.stdin.take(),
        child,
        lines,
        seen: Vec::new(),
        stderr,
    }
}

impl Server {
    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    /// The next line on stdout, as JSON; None at EOF.
    fn next(&mut self) -> Option<Value> {
        let line = match self.lines.recv_timeout(IO_TIMEOUT) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("no output within {IO_TIMEOUT:?}"),
        };
        self.seen.push(line.clone());
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}")))
    }

    fn exchange(&mut self, line: &str) -> Value {
        self.send(line);
        self.next().expect("an answer")
    }

    fn initialize(&mut self) -> Value {
        let reply = self.exchange(INIT);
        self.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        reply
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + IO_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::park_timeout(Duration::from_millis(10));
        }
        panic!("the server did not exit within {IO_TIMEOUT:?}");
    }

    /// The next stderr line containing `wanted`.
    fn stderr_line(&mut self, wanted: &str) -> String {
        loop {
            match self.stderr.recv_timeout(IO_TIMEOUT) {
                Ok(line) if line.contains(wanted) => return line,
                Ok(_) => {}
                Err(_) => panic!("no stderr line with {wanted:?}"),
            }
        }
    }

    /// Every stdout line was one JSON-RPC 2.0 message.
    fn assert_stdout_is_only_json_rpc(&self) {
        assert!(!self.seen.is_empty());
        for line in &self.seen {
            let value: Value = serde_json::from_str(line).unwrap();
            assert_eq!(value["jsonrpc"], "2.0", "{line}");
        }
    }
}

#[test]
fn a_session_initializes_lists_calls_survives_bad_json_and_finishes_in_flight_work_at_eof() {
    let mut server = spawn(&[]);
    let init = server.initialize();
    assert_eq!(init["id"], "init");
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25");
    assert_eq!(init["result"]["serverInfo"]["name"], "shardmcp");

    let tools = server.exchange(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#);
    assert_eq!(tools["result"]["tools"][0]["name"], "echo");
    let echo = server.exchange(
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"over stdio"}}}"#,
    );
    assert_eq!(echo["id"], 3);
    assert_eq!(echo["result"]["content"][0]["text"], "over stdio");

    let bad = server.exchange("{oops");
    assert_eq!(bad["error"]["code"], -32700);
    assert_eq!(bad["id"], Value::Null);
    let pong = server.exchange(r#"{"jsonrpc":"2.0","id":4,"method":"ping"}"#);
    assert_eq!(pong, json!({"jsonrpc":"2.0","id":4,"result":{}}));

    // A call still running when stdin closes is finished and answered,
    // its progress first; then stdout ends and the exit status is 0.
    server.send(
        r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"slow","arguments":{"ms":200},"_meta":{"progressToken":"p"}}}"#,
    );
    server.close_stdin();
    let mut progress = Vec::new();
    let result = loop {
        let frame = server.next().expect("the call's frames before EOF");
        match frame["method"].as_str() {
            Some("notifications/progress") => {
                progress.push(frame["params"]["progress"].as_f64().unwrap())
            }
            Some("notifications/message") => {}
            Some(other) => panic!("unexpected {other}"),
            None => break frame,
        }
    };
    assert_eq!(progress, [1.0, 2.0, 3.0, 4.0]);
    assert_eq!(result["id"], 5);
    assert_eq!(result["result"]["content"][0]["text"], "waited 200 ms");
    assert!(server.next().is_none(), "nothing after the last answer");
    let status = server.wait();
    assert!(status.success(), "{status:?}");
    server.assert_stdout_is_only_json_rpc();
    // Logs went to stderr, and no network listener was started.
    server.stderr_line("serving one MCP session on stdin/stdout");
    let mut rest = String::new();
    while let Ok(line) = server.stderr.recv_timeout(Duration::from_millis(100)) {
        rest.push_str(&line);
    }
    assert!(!rest.contains("listening on"), "{rest}");
}

#[test]
fn an_oversized_line_gets_the_error_and_is_skipped_and_the_session_goes_on() {
    let dir = std::env::temp_dir().join(format!("shardmcp-stdio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("small.toml");
    std::fs::write(&path, "[limits]\nmessage_bytes_max = 1024\n").unwrap();
    let mut server = spawn(&["--config", path.to_str().unwrap()]);
    server.initialize();
    let huge = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"pad":"{}"}}}}"#,
        "x".repeat(64 << 10)
    );
    let refused = server.exchange(&huge);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(refused["error"]["code"], -32600);
    assert!(refused["error"]["message"]
        .as_str()
        .unwrap()
        .contains("limits.message_bytes_max (1024 bytes)"));
    let pong = server.exchange(r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#);
    assert_eq!(pong["id"], 2, "the line after the refused one is served");
    server.close_stdin();
    assert!(server.next().is_none());
    assert!(server.wait().success());
    server.assert_stdout_is_only_json_rpc();
}

#[test]
fn listeners_start_only_when_asked_for_and_go_to_stderr() {
    let mut server = spawn(&["--tcp", "127.0.0.1:0"]);
    let line = server.stderr_line("tcp listening on");
    let addr = line
        .split_whitespace()
        .nth(4)
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("an address in {line:?}"));
    let mut tcp = Client::connect(addr).unwrap();
    assert!(tcp.ping(), "the tcp listener serves beside stdio");
    server.initialize();
    // The node lives as long as the stdio session.
    server.close_stdin();
    assert!(server.next().is_none());
    assert!(server.wait().success());
    assert!(!tcp.ping(), "the tcp listener went with it");
    server.assert_stdout_is_only_json_rpc();
}

#[test]
fn sigterm_drains_the_stdio_session_and_exits_0() {
    let mut server = spawn(&[]);
    server.initialize();
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(server.child.id() as libc::pid_t, libc::SIGTERM);
    }
    assert!(server.wait().success());
    server.assert_stdout_is_only_json_rpc();
}

#[test]
fn stdio_runs_one_shard_and_says_so_when_asked_for_more() {
    let output = Command::new(env!("CARGO_BIN_EXE_shardmcp"))
        .args(["serve", "--stdio", "--shards", "2"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        stderr.trim_end(),
        "shardmcp: error: config key `runtime.shards`: --stdio serves one session on one shard; drop --shards or give 1"
    );

    // Empty stdin: a session that ends at once, cleanly, with nothing on stdout.
    let mut server = spawn(&["--shards", "1"]);
    server.close_stdin();
    assert!(server.next().is_none());
    assert!(server.wait().success());
    assert!(server.seen.is_empty(), "{:?}", server.seen);
}

/// The library side: a node serving its stdio session over a socket pair.
mod embedded {
    use std::io::{BufRead, BufReader, Write};
    use std::net::Shutdown;
    use std::os::unix::net::UnixStream;

    use shardmcp::ids::ShardId;
    use shardmcp::runtime::{self, Fault, NodeError};
    use shardmcp::server::demo;
    use shardmcp::transport::stdio::StdioLink;

    use super::common::{test_config, IO_TIMEOUT};
    use super::INIT;

    fn start(pools: usize) -> (runtime::NodeHandle, UnixStream, BufReader<UnixStream>) {
        start_with(test_config(1, pools))
    }

    fn start_with(
        mut config: shardmcp::config::Config,
    ) -> (runtime::NodeHandle, UnixStream, BufReader<UnixStream>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        config.listen.tcp.clear();
        config.listen.http.clear();
        let node =
            runtime::start_with_stdio(config, demo::factory(), StdioLink::from_socket(theirs))
                .unwrap();
        let reader = BufReader::new(ours.try_clone().unwrap());
        (node, ours, reader)
    }

    fn initialize(writer: &mut UnixStream, reader: &mut BufReader<UnixStream>) {
        writer.write_all(INIT.as_bytes()).unwrap();
        writer.write_all(b"\n").unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.contains(r#""protocolVersion":"2025-11-25""#), "{line}");
    }

    #[test]
    fn the_node_ends_cleanly_with_its_session_at_end_of_input() {
        let (node, mut writer, mut reader) = start(2);
        initialize(&mut writer, &mut reader);
        writer.shutdown(Shutdown::Write).unwrap();
        node.join().expect("a clean end");
    }

    #[test]
    fn work_still_running_at_the_drain_deadline_after_end_of_input_is_cut_off() {
        let mut config = test_config(1, 1);
        config.runtime.drain_deadline_ms = 200;
        config.supervision.session_shutdown_ms = 100;
        let (node, mut writer, mut reader) = start_with(config);
        initialize(&mut writer, &mut reader);
        writer
            .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":\"long\",\"method\":\"tools/call\",\"params\":{\"name\":\"slow\",\"arguments\":{\"ms\":60000}}}\n")
            .unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
        node.join()
            .expect("a clean end: the client closed its input");
        let mut rest = String::new();
        while reader.read_line(&mut rest).unwrap() > 0 {}
        assert!(!rest.contains(r#""id":"long""#), "{rest}");
    }

    #[test]
    fn a_session_killed_with_its_pool_ends_the_node_with_an_error() {
        let (node, mut writer, mut reader) = start(1);
        initialize(&mut writer, &mut reader);
        node.inject(ShardId(0), Fault::KillPool(0)).unwrap();
        match node.join() {
            Err(NodeError::Stdio(reason)) => {
                assert_eq!(reason, "it ended unexpectedly (its actor or pool stopped)")
            }
            other => panic!("expected a stdio failure, got {other:?}"),
        }
    }

    #[test]
    fn a_dead_shard_is_not_restarted_under_a_stdio_session_the_node_ends_with_an_error() {
        let (node, mut writer, mut reader) = start(2);
        initialize(&mut writer, &mut reader);
        node.inject(ShardId(0), Fault::PanicShard).unwrap();
        match node.join() {
            Err(NodeError::Stdio(reason)) => assert!(reason.contains("shard 0 died"), "{reason}"),
            other => panic!("expected a stdio failure, got {other:?}"),
        }
    }
}
