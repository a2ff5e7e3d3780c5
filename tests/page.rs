//! The live admin page: served and framed over plain HTTP, its stream limit,
//! and the page itself run in headless Chromium (Debian package `chromium`,
//! which .ci/run installs): the dumped DOM must show the tree and the figures
//! the page's script filled in from the SSE snapshots. The screenshot is kept
//! at target/admin-page.png.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{test_config, Client, IO_TIMEOUT};
use serde_json::Value;
use shardmcp::runtime::{self, NodeHandle};
use shardmcp::server::demo;

/// Longest one Chromium run may take before the test kills it and fails.
const BROWSER_DEADLINE: Duration = Duration::from_secs(90);

/// Drains and joins the node when the test ends, failed or not.
struct Node(Option<NodeHandle>);

impl Node {
    fn start(streams: usize) -> Node {
        let mut config = test_config(2, 3);
        config.admin.page_interval_ms = 200;
        config.admin.page_streams_max = streams;
        Node(Some(runtime::start(config, demo::factory()).unwrap()))
    }

    fn handle(&self) -> &NodeHandle {
        self.0.as_ref().unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(node) = self.0.take() {
            node.drain();
            let _ = node.join();
        }
    }
}

/// Status, head and body of a plain GET (Connection: close).
fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

/// An open `/admin/events` stream: its status line, then its events.
struct Stream {
    status: u16,
    reader: BufReader<TcpStream>,
}

impl Stream {
    fn open(addr: SocketAddr) -> Stream {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        write!(stream, "GET /admin/events HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let status = line.split(' ').nth(1).unwrap().parse().unwrap();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        Stream { status, reader }
    }

    /// The next event's fields (`event`, `data`, `retry`), data lines joined.
    fn event(&mut self) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        loop {
            let mut line = String::new();
            assert!(
                self.reader.read_line(&mut line).unwrap() > 0,
                "stream ended"
            );
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if fields.is_empty() {
                    continue;
                }
                return fields;
            }
            let (name, value) = line.split_once(": ").unwrap_or((line, ""));
            fields.push((name.to_string(), value.to_string()));
        }
    }

    /// The next data event's JSON.
    fn snapshot(&mut self) -> Value {
        loop {
            let event = self.event();
            if let Some((_, data)) = event.iter().find(|(name, _)| name == "data") {
                return serde_json::from_str(data).unwrap();
            }
        }
    }
}

#[test]
fn the_page_and_its_stream_are_served_framed_and_bounded() {
    let node = Node::start(2);
    let admin = node.handle().admin_addr().unwrap();
    let (status, head, body) = get(admin, "/");
    assert_eq!(status, 200);
    assert!(head.contains("Content-Type: text/html"), "{head}");
    assert!(head.contains("Content-Security-Policy: default-src 'none'"));
    assert!(body.contains("<script src=\"/admin/page.js\">"));
    assert!(
        !body.contains("http://") && !body.contains("https://"),
        "nothing fetched from elsewhere"
    );
    let (status, head, js) = get(admin, "/admin/page.js");
    assert_eq!(status, 200);
    assert!(head.contains("text/javascript"));
    assert!(js.contains("new EventSource(\"/admin/events\")"));
    assert_eq!(get(admin, "/admin/page.css").0, 200);

    let mut first = Stream::open(admin);
    assert_eq!(first.status, 200);
    assert_eq!(first.event(), [("retry".to_string(), "3000".to_string())]);
    let one = first.snapshot();
    assert_eq!(one["interval_ms"], 200);
    assert_eq!(one["tree"]["id"], "node");
    assert_eq!(one["shards"].as_array().unwrap().len(), 2);
    assert_eq!(one["shards"][0]["rps"], Value::Null);
    let two = first.snapshot();
    assert!(two["shards"][0]["rps"].is_number(), "{two}");

    // The limit: two streams open, a third is refused before any thread.
    let second = Stream::open(admin);
    assert_eq!(second.status, 200);
    let (status, head, _) = get(admin, "/admin/events");
    assert_eq!(status, 503);
    assert!(head.contains("Retry-After:"));
    // Scrapes still answer while every stream slot is taken.
    assert_eq!(get(admin, "/health/live").0, 200);
    // A closed stream gives its slot back once its next write fails.
    drop(second);
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut again = loop {
        let again = Stream::open(admin);
        if again.status == 200 {
            break again;
        }
        assert!(Instant::now() < deadline, "the slot never came back");
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(first);

    // Stopping the node ends the open stream (with `event: stopped` when the
    // stream saw the node stop before the listener did), not hangs it.
    let mut node = node;
    let handle = node.0.take().unwrap();
    handle.drain();
    handle.join().unwrap();
    let mut rest = String::new();
    again
        .reader
        .read_to_string(&mut rest)
        .expect("the stream ends before the read timeout");
    assert!(
        rest.ends_with("\n\n") || rest.is_empty(),
        "whole events only: {rest}"
    );
    for line in rest.lines().filter(|line| !line.is_empty()) {
        assert!(
            ["retry: ", "data: ", "event: stopped"]
                .iter()
                .any(|field| line.starts_with(field)),
            "{line}"
        );
    }
}

/// Chromium's binary: `SHARDMCP_CHROMIUM`, else the usual names on PATH.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("SHARDMCP_CHROMIUM") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "\n\n*** Chromium not found: this test runs the admin page in headless Chromium. ***\n\
         *** Install it (`apt-get install -y chromium`, as .ci/run does) or set SHARDMCP_CHROMIUM. ***\n\n"
    );
}

/// Runs headless Chromium with `args` on `url`; its stdout. Killed and
/// failed after [`BROWSER_DEADLINE`].
fn browse(args: &[String], url: &str) -> String {
    let profile = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "chromium-profile-{}-{}",
        std::process::id(),
        args.len()
    ));
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BROWSER_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {BROWSER_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let _ = std::fs::remove_dir_all(&profile);
    assert!(status.success(), "chromium failed: {status}\n{stderr}");
    reader.join().unwrap()
}

/// The text of the element with `id` in a dumped DOM (no markup inside).
fn cell<'a>(dom: &'a str, id: &str) -> &'a str {
    let marker = format!("id=\"{id}\">");
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no element {id} in the page:\n{dom}"))
        + marker.len();
    let end = dom[start..].find('<').unwrap() + start;
    &dom[start..end]
}

#[test]
fn the_page_shows_the_live_tree_and_figures_in_headless_chromium() {
    let node = Node::start(2);
    let admin = node.handle().admin_addr().unwrap();
    let mut client = Client::connect(node.handle().tcp_addr().unwrap()).unwrap();
    client.initialize();
    // Traffic all along, so every push's window has requests to rate.
    let stop = Arc::new(AtomicBool::new(false));
    let pinger = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut pings = 0u64;
            while !stop.load(Ordering::SeqCst) && client.ping() {
                pings += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            (client, pings)
        })
    };
    // Stops the pinger even when an assertion below fails.
    struct Stop(Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let stopper = Stop(stop);

    // Three pushes, then the page closes its stream (`?pushes=3`), so the
    // browser's virtual time can run out and it prints the page.
    let url = format!("http://{admin}/?pushes=3");
    let dom = browse(
        &["--virtual-time-budget=5000".into(), "--dump-dom".into()],
        &url,
    );
    assert!(
        dom.contains("data-snapshots=\"3\""),
        "the script consumed three snapshots:\n{dom}"
    );
    for id in [
        "node",
        "shard-0",
        "shard-1",
        "pools",
        "listeners",
        "control",
    ] {
        assert!(
            dom.contains(&format!("<span class=\"node-id\">{id}</span>")),
            "{id} in the tree:\n{dom}"
        );
    }
    for pool in 0..3 {
        assert!(dom.contains(&format!("<span class=\"node-id\">pool-{pool}</span>")));
    }
    let sessions: u64 = (0..2)
        .map(|shard| {
            cell(&dom, &format!("sessions-{shard}"))
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(sessions, 1, "the TCP session is counted:\n{dom}");
    let pool_sessions: u64 = (0..2)
        .flat_map(|shard| (0..3).map(move |pool| (shard, pool)))
        .map(|(shard, pool)| {
            cell(&dom, &format!("pool-sessions-{shard}-{pool}"))
                .trim_start_matches("sessions=")
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(pool_sessions, 1, "the session's pool shows it");
    let busy = (0..2)
        .find(|shard| cell(&dom, &format!("sessions-{shard}")) == "1")
        .unwrap();
    for shard in 0..2 {
        // Filled in from the second push on: a rate needs two.
        let rps = cell(&dom, &format!("rps-{shard}"));
        let rps: f64 = rps
            .parse()
            .unwrap_or_else(|_| panic!("req/s of shard {shard}: {rps:?}\n{dom}"));
        let p50 = cell(&dom, &format!("p50-{shard}"));
        let p99 = cell(&dom, &format!("p99-{shard}"));
        if shard == busy {
            assert!(rps > 0.0, "the pinged shard has a rate:\n{dom}");
            assert!(p50.ends_with(" ms") && p99.ends_with(" ms"), "{p50} {p99}");
            let p50: f64 = p50.trim_end_matches(" ms").parse().unwrap();
            assert!(p50 > 0.0 && p50 < 30_000.0, "{p50}");
            assert!(
                cell(&dom, &format!("requests-{shard}"))
                    .parse::<u64>()
                    .unwrap()
                    > 1
            );
        }
    }

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("admin-page.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &[
            "--virtual-time-budget=5000".into(),
            "--window-size=1280,900".into(),
            format!("--screenshot={}", shot.display()),
        ],
        &url,
    );
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 1_000, "screenshot at {}", shot.display());
    drop(stopper);
    let (_client, pings) = pinger.join().unwrap();
    assert!(pings > 0);
}
