//! Helpers for tests that drive a real node over real sockets.
#![allow(dead_code)]

pub mod http;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use shardmcp::config::Config;
use shardmcp::runtime::{NodeEvent, NodeHandle};

/// A safety net so a broken server fails a test instead of hanging it; no
/// test asserts on timing.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub fn test_config(shards: usize, pools: usize) -> Config {
    let mut config = Config::default();
    config.runtime.shards = shards;
    config.runtime.pools = pools;
    config.runtime.control_poll_ms = 1;
    config.runtime.drain_deadline_ms = 5_000;
    config.listen.tcp = "127.0.0.1:0".to_string();
    config.listen.http = "127.0.0.1:0".to_string();
    // Every test node has its own admin port, so tests can run side by side.
    config.listen.admin = "127.0.0.1:0".to_string();
    config
}

/// One TCP client: one session on the server.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    next_id: u64,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            next_id: 0,
        })
    }

    /// Sends one line without waiting for anything. One write: a server
    /// that refuses the line and closes must not find half of it sent (the
    /// newline's write would then fail with EPIPE).
    pub fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .expect("sent");
    }

    /// Reads the next frame the server sends.
    pub fn read_frame(&mut self) -> std::io::Result<serde_json::Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        serde_json::from_str(&line).map_err(std::io::Error::other)
    }

    /// Sends one line and reads one line back.
    pub fn exchange(&mut self, line: &str) -> std::io::Result<serde_json::Value> {
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        let mut reply = String::new();
        if self.reader.read_line(&mut reply)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        serde_json::from_str(&reply).map_err(std::io::Error::other)
    }

    /// The initialize handshake (2025-11-25); returns the initialize reply.
    pub fn initialize(&mut self) -> serde_json::Value {
        let reply = self
            .exchange(r#"{"jsonrpc":"2.0","id":"init","method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"test","version":"0"}}}"#)
            .expect("initialize answered");
        self.writer
            .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n")
            .expect("initialized sent");
        reply
    }

    /// A ping with a fresh id; Ok(true) when answered correctly.
    pub fn ping(&mut self) -> bool {
        self.next_id += 1;
        let id = self.next_id;
        match self.exchange(&format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#)) {
            Ok(reply) => reply == serde_json::json!({"jsonrpc":"2.0","id":id,"result":{}}),
            Err(_) => false,
        }
    }
}

/// Forgets the events seen so far, so a later wait sees only new ones.
pub fn forget_events(node: &NodeHandle) {
    while node.events().try_recv().is_ok() {}
}

/// Waits for the first event matching `wanted`, up to IO_TIMEOUT.
pub fn wait_for(node: &NodeHandle, wanted: impl Fn(&NodeEvent) -> bool) -> NodeEvent {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match node.events().recv_timeout(left) {
            Ok(event) if wanted(&event) => return event,
            Ok(_) => continue,
            Err(_) => panic!("no matching node event within {IO_TIMEOUT:?}"),
        }
    }
}
