//! The admin client for chaos requests: one blocking POST per action (the
//! admin listener answers `Connection: close`), used by `shardmcp chaos`
//! and by `load --chaos` (off its measuring threads).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::{ChaosAnswer, Kind, Params};

/// Largest admin answer read.
const ANSWER_BYTES_MAX: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot resolve admin address {0}")]
    Resolve(String),
    #[error("admin {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("admin {addr} answered {status}: {body}")]
    Refused {
        addr: String,
        status: u16,
        body: String,
    },
    #[error("admin {addr} sent an answer that is not HTTP/JSON: {reason}")]
    Malformed { addr: String, reason: String },
}

/// Resolves `addr` (HOST:PORT).
pub fn resolve(addr: &str) -> Result<SocketAddr, ClientError> {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| ClientError::Resolve(addr.to_string()))
}

/// Asks the server at `admin` for one chaos action and waits (up to
/// `timeout`) for its answer.
pub fn inject(
    admin: SocketAddr,
    kind: Kind,
    params: &Params,
    timeout: Duration,
) -> Result<ChaosAnswer, ClientError> {
    let addr = admin.to_string();
    let io = |source| ClientError::Io {
        addr: addr.clone(),
        source,
    };
    let mut stream = TcpStream::connect_timeout(&admin, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let _ = stream.set_nodelay(true);
    let query = params.to_query();
    let path = if query.is_empty() {
        format!("/admin/chaos/{}", kind.name())
    } else {
        format!("/admin/chaos/{}?{query}", kind.name())
    };
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut answer = Vec::new();
    stream
        .take(ANSWER_BYTES_MAX)
        .read_to_end(&mut answer)
        .map_err(io)?;
    let (status, body) = split_answer(&answer).ok_or_else(|| ClientError::Malformed {
        addr: addr.clone(),
        reason: "no status line and head".to_string(),
    })?;
    if status != 200 {
        return Err(ClientError::Refused {
            addr,
            status,
            body: String::from_utf8_lossy(body).trim().to_string(),
        });
    }
    serde_json::from_slice(body).map_err(|error| ClientError::Malformed {
        addr,
        reason: error.to_string(),
    })
}

/// The status code and body of a whole HTTP/1.1 answer.
fn split_answer(answer: &[u8]) -> Option<(u16, &[u8])> {
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&answer[..end]).ok()?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, &answer[end + 4..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_split_into_status_and_body() {
        let (status, body) =
            split_answer(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nno\n").unwrap();
        assert_eq!(status, 403);
        assert_eq!(body, b"no\n");
        assert!(split_answer(b"garbage").is_none());
        assert!(split_answer(b"HTTP/1.1 abc\r\n\r\n").is_none());
    }
}
