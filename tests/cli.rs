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
            "--admin",
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
    // One line per listener (tcp and http, in the order they came up, then admin).
    let mut lines = Vec::new();
    for _ in 0..3 {
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
    assert!(
        lines[2].starts_with("shardmcp: admin listening on 127.0.0.1:"),
        "{lines:?}"
    );
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
            "--admin",
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
        "--admin",
        "--print-config",
        "--log",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[test]
fn an_admin_port_in_use_is_reported() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let output = shardmcp()
        .args([
            "serve",
            "--shards",
            "1",
            "--http",
            "",
            "--tcp",
            "127.0.0.1:0",
            "--admin",
            &addr.to_string(),
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with(&format!(
            "shardmcp: error: cannot reserve admin address {addr}"
        )),
        "{stderr}"
    );
}

#[test]
fn doctor_runs_here_and_prints_a_report_whose_exit_status_follows_its_fails() {
    let output = shardmcp()
        .args(["doctor", "--shards", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0], "shardmcp doctor: this host against tuning/ (2 shards)",
        "{stdout}"
    );
    for check in [
        "kernel",
        "io_uring",
        "memlock",
        "nofile",
        "listen",
        "somaxconn",
        "syn_backlog",
        "port_range",
        "nr_open",
        "file_max",
        "cores",
        "isolation",
        "thp",
    ] {
        let line = lines
            .iter()
            .find(|l| l.split_whitespace().nth(1) == Some(check))
            .unwrap_or_else(|| panic!("no {check} line in:\n{stdout}"));
        let level = line.split_whitespace().next().unwrap();
        assert!(["ok", "warn", "fail"].contains(&level), "{line}");
    }
    // Every warn or fail is followed by its fix.
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("warn") || line.starts_with("fail") {
            assert!(lines[i + 1].trim_start().starts_with("fix: "), "{line}");
        }
    }
    let failed = lines.iter().any(|l| l.starts_with("fail"));
    let totals = lines.last().unwrap();
    assert!(totals.starts_with("doctor: "), "{totals}");
    assert_eq!(output.status.success(), !failed, "{stdout}");
    // This test runs on a kernel that serves the other tests, so io_uring works.
    assert!(
        stdout.contains("\nok    io_uring     ring created"),
        "{stdout}"
    );
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let dir = std::env::temp_dir().join(format!("shardmcp-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("json.toml");
    std::fs::write(&path, "[log]\nformat = \"json\"\nlevel = \"info\"\n").unwrap();
    let child = shardmcp()
        .args(["serve", "--shards", "1", "--http", "", "--admin", ""])
        .args(["--tcp", "127.0.0.1:0", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("tcp listening"), "{line}");
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(server.0.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = wait_with_limit(&mut server.0, common::IO_TIMEOUT).expect("exits");
    assert!(status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut server.0.stderr.take().unwrap(), &mut stderr).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["level"] == "INFO" && e["message"] == "drained; bye"),
        "{stderr}"
    );
}
