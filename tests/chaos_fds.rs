//! A dead shard gives its connections' fds back (alone in its binary:
//! it counts the process's open fds, which tests beside it would change).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{test_config, IO_TIMEOUT};
use shardmcp::runtime::{self, NodeHandle};
use shardmcp::server::demo;

fn kill_shard(node: &NodeHandle, shard: usize) {
    let admin = node.admin_addr().unwrap();
    let mut stream = TcpStream::connect(admin).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
        .write_all(
            format!("POST /admin/chaos/shard?shard={shard} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"recovery_us\":"), "{answer}");
    assert!(!answer.contains("\"recovery_us\":null"), "{answer}");
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

#[test]
fn a_killed_shard_gives_its_connections_fds_back() {
    let mut config = test_config(2, 2);
    config.chaos.enabled = true;
    let node = runtime::start(config, demo::factory()).unwrap();
    let http = node.http_addr().unwrap();
    // A dead shard's executor leaks a few fds of its own (its rings): once
    // each first, so the count below is of connections only.
    kill_shard(&node, 0);
    kill_shard(&node, 1);
    let base = open_fds();
    // Answered, so each is held open (keep-alive) by the shard that took it.
    let mut clients: Vec<TcpStream> = (0..60)
        .map(|_| {
            let mut stream = TcpStream::connect(http).unwrap();
            stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            stream
                .write_all(format!("GET /nothing HTTP/1.1\r\nHost: {http}\r\n\r\n").as_bytes())
                .unwrap();
            let mut answer = [0u8; 512];
            assert!(stream.read(&mut answer).unwrap() > 0);
            stream
        })
        .collect();
    // Client and server ends are both this process's.
    let peak = open_fds();
    kill_shard(&node, 0);
    kill_shard(&node, 1);
    clients.clear();
    // 120 ends closed (a dead shard's executor still leaks a dozen fds of
    // its own); without the dead shards' sockets closed, only the 60
    // client ends would be.
    let left = open_fds();
    assert!(
        left + 80 <= peak,
        "{left} fds open, {peak} with the connections, {base} before them"
    );
}
