//! `shardmcp tree`: fetches `/admin/tree` from a running server's admin
//! listener and prints it as an indented tree.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::TreeArgs;

/// How long connecting, sending and reading may each take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read (a node of 1,024 shards with thousands of pools
/// stays well below it).
const ANSWER_BYTES_MAX: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("`{0}` is not an address (host:port)")]
    Address(String),
    #[error("cannot reach the admin listener at {addr}: {source} (is `shardmcp serve` running with listen.admin = \"{addr}\"?)")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("reading from the admin listener at {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("the admin listener at {addr} answered {status}: {body}")]
    Status {
        addr: String,
        status: String,
        body: String,
    },
    #[error("the admin listener at {addr} sent something that is not a tree: {reason}")]
    Malformed { addr: String, reason: String },
}

/// GETs `/admin/tree` from `addr` and returns its JSON.
pub fn fetch_tree(addr: &str) -> Result<serde_json::Value, TreeError> {
    let target: SocketAddr = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| TreeError::Address(addr.to_string()))?;
    let connect = |source| TreeError::Connect {
        addr: addr.to_string(),
        source,
    };
    let io = |source| TreeError::Io {
        addr: addr.to_string(),
        source,
    };
    let mut stream = TcpStream::connect_timeout(&target, IO_TIMEOUT).map_err(connect)?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    write!(
        stream,
        "GET /admin/tree HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut answer = Vec::new();
    stream
        .take(ANSWER_BYTES_MAX)
        .read_to_end(&mut answer)
        .map_err(io)?;
    let malformed = |reason: &str| TreeError::Malformed {
        addr: addr.to_string(),
        reason: reason.to_string(),
    };
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| malformed("no HTTP head"))?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let body = &answer[split + 4..];
    let status = head.lines().next().unwrap_or("").to_string();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(TreeError::Status {
            addr: addr.to_string(),
            status,
            body: String::from_utf8_lossy(body).trim().to_string(),
        });
    }
    let tree: serde_json::Value =
        serde_json::from_slice(body).map_err(|error| malformed(&error.to_string()))?;
    if tree.get("children").and_then(|c| c.as_array()).is_none() {
        return Err(malformed("no children"));
    }
    Ok(tree)
}

pub fn tree(args: &TreeArgs) -> Result<(), TreeError> {
    let tree = fetch_tree(&args.admin)?;
    let text = if args.json {
        format!("{tree}\n")
    } else {
        crate::observe::tree_text::render(&tree)
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    Ok(())
}
