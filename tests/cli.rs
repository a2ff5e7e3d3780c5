//! The `shardmcp` binary as a user runs it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Client;

fn shardmcp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shardmcp"))
}

/// Kills the server if a test fails before stopping it.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_with_limit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::park_timeout(Duration::from_millis(20));
    }
    None
}

#[test]
fn serve_prints_its_listener_answers_and_drains_on_sigterm_with_exit_0() {
    let child = shardmcp()
        .args([
            "serve",
            "--shards",
            "2",
            "--pools",
            "3",
            "--tcp",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--log",
            "warn",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary runs");
    let mut server = Server(child);
    let mut stdout = BufReader::new(server.0.stdout.take().unwrap());
    // One line per listener (tcp and http, in the order they came up).
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        lines.push(line);
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("shardmcp: http listening on 127.0.0.1:")),
        "{lines:?}"
    );
    let line = lines
        .iter()
        .find(|l| l.starts_with("shardmcp: tcp listening on 127.0.0.1:"))
        .expect("a tcp listener line")
        .clone();
    assert!(line.contains("(2 shards, SO_REUSEPORT)"), "{line}");
    let addr: SocketAddr = line.split_whitespace().nth(4).unwrap().parse().unwrap();

    let mut clients: Vec<Client> = (0..8).map(|_| Client::connect(addr).unwrap()).collect();
    assert!(clients.iter_mut().all(|c| c.ping()));

    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(server.0.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = wait_with_limit(&mut server.0, common::IO_TIMEOUT).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[test]
fn print_config_shows_the_effective_configuration_with_flags_applied() {
    let output = shardmcp()
        .args(["serve", "--print-config", "--shards", "3", "--pools", "5"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let config = shardmcp::config::Config::parse(&text).expect("printed config parses");
    assert_eq!((config.runtime.shards, config.runtime.pools), (3, 5));
}

#[test]
fn config_errors_are_one_clear_line_and_exit_1() {
    let dir = std::env::temp_dir().join(format!("shardmcp-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(b"[runtime]\nshardz = 2\n")
        .unwrap();
    let output = shardmcp()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with("shardmcp: error: config file"),
        "{stderr}"
    );
    assert!(stderr.contains("shardz"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");

    let output = shardmcp().args(["serve", "--pools", "0"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("runtime.pools"), "{stderr}");

    let output = shardmcp()
        .args(["serve", "--config", "/nonexistent/shardmcp.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8(output.stderr)
        .unwrap()
        .contains("cannot read config file"));
}

#[test]
fn a_port_in_use_is_reported_not_retried_forever() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let child = shardmcp()
        .args([
            "serve",
            "--shards",
            "1",
            "--http",
            "",
            "--tcp",
            &addr.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let status = wait_with_limit(&mut server.0, common::IO_TIMEOUT).expect("exits");
    assert_eq!(status.code(), Some(1));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut server.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("shardmcp: error: cannot reserve tcp address"),
        "{stderr}"
    );
}

#[test]
fn help_explains_serve_and_its_flags() {
    let output = shardmcp().args(["serve", "--help"]).output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in [
        "--config",
        "--shards",
        "--pools",
        "--tcp",
        "--http",
        "--stdio",
        "--print-config",
        "--log",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}
