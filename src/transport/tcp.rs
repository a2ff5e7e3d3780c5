//! Newline-delimited JSON-RPC over TCP: one session per connection.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::sync::{Gate, Semaphore};

use crate::config::LimitsConfig;
use crate::pool::PoolSet;
use crate::session::{self, SessionRegistry};
use crate::supervision::{ChildContext, ChildSpec, ExitReason, Restart, Shutdown};
use crate::sync::Event;
use crate::time::SharedClock;

use super::sockets;

/// Accept errors in a row (EMFILE, ENOBUFS...) before the listener gives up
/// and lets its supervisor restart it.
const ACCEPT_ERRORS_MAX: u32 = 64;
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const READ_CHUNK_BYTES: usize = 16 << 10;

/// What the TCP listener needs from its shard.
pub struct TcpService {
    pub registry: Rc<SessionRegistry>,
    pub pools: Rc<PoolSet>,
    pub limits: LimitsConfig,
    /// Pending connections the kernel queues for this shard's listener.
    pub listen_backlog: i32,
    pub clock: SharedClock,
    /// Set when the node drains: stop accepting, finish what is in flight.
    pub drain: Event,
    /// Every connection task runs inside this gate, so a drain can wait for them.
    pub connections: Rc<Gate>,
    /// One permit per open connection (`limits.connections_per_shard_max`).
    pub permits: Rc<Semaphore>,
    /// Told where the listener is bound, each time it binds.
    pub on_listening: Rc<dyn Fn(SocketAddr)>,
}

/// The listener as a transient child: restarted only if it fails.
pub fn listener_spec(addr: SocketAddr, service: Rc<TcpService>) -> ChildSpec {
    ChildSpec::worker("tcp", move |ctx| accept_loop(addr, service.clone(), ctx))
        .restart(Restart::Transient)
        .shutdown(Shutdown::TimeoutMs(1_000))
}

async fn accept_loop(addr: SocketAddr, service: Rc<TcpService>, ctx: ChildContext) -> ExitReason {
    let (listener, _tracked) = match sockets::listen(addr, service.listen_backlog) {
        Ok(bound) => bound,
        Err(error) => return ExitReason::Error(format!("cannot listen on tcp {addr}: {error}")),
    };
    match listener.local_addr() {
        Ok(local) => (service.on_listening)(local),
        Err(error) => return ExitReason::Error(format!("tcp listener has no address: {error}")),
    }
    let mut errors_in_a_row = 0u32;
    loop {
        // Take the permit before accepting: at the cap, clients wait in the
        // kernel backlog instead of costing us memory.
        let stopping = future::or(ctx.shutdown_requested(), service.drain.wait());
        let permit = future::or(
            async { service.permits.acquire_static_permit(1).await.ok() },
            async {
                stopping.await;
                None
            },
        )
        .await;
        let Some(permit) = permit else {
            return ExitReason::Shutdown;
        };
        let stopping = future::or(ctx.shutdown_requested(), service.drain.wait());
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            stopping.await;
            None
        })
        .await;
        match accepted {
            None => return ExitReason::Shutdown,
            Some(Ok(stream)) => {
                errors_in_a_row = 0;
                // Nagle plus delayed ACKs would add 40 ms to every reply.
                let _ = stream.set_nodelay(true);
                let service_for_connection = service.clone();
                let spawned = service.connections.spawn(async move {
                    serve_connection(stream, service_for_connection).await;
                    drop(permit);
                });
                match spawned {
                    Ok(task) => task.detach(),
                    Err(_) => return ExitReason::Shutdown, // gate closed: draining
                };
            }
            Some(Err(error)) => {
                errors_in_a_row += 1;
                tracing::warn!(%error, errors_in_a_row, "tcp accept failed");
                if errors_in_a_row >= ACCEPT_ERRORS_MAX {
                    return ExitReason::Error(format!("tcp accept keeps failing: {error}"));
                }
                service.clock.sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn serve_connection(mut stream: TcpStream, service: Rc<TcpService>) {
    let tracked = sockets::track(stream.as_raw_fd());
    let session = match session::open(
        &service.registry,
        &service.pools,
        service.limits.session_mailbox_capacity,
    ) {
        Ok(session) => session,
        Err(error) => {
            let reply = error_line(-32000, &format!("cannot open a session: {error}"));
            let _ = stream.write_all(&reply).await;
            drop(tracked);
            return;
        }
    };
    let id = session.id();
    let mut buffer = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let request_timeout = Duration::from_millis(service.limits.request_timeout_ms);
    'connection: loop {
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            if end > service.limits.line_bytes_max {
                break;
            }
            let mut line = buffer.split_to(end + 1).freeze();
            line.truncate(trim_line_end(&line));
            if line.is_empty() {
                continue;
            }
            let timer = service.clock.sleep(request_timeout);
            let answer = future::or(async { Some(session.request(line).await) }, async {
                timer.await;
                None
            })
            .await;
            let reply = match answer {
                Some(Ok(Some(reply))) => reply,
                Some(Ok(None)) => continue,        // a notification
                Some(Err(_)) => break 'connection, // the session ended (its pool died)
                None => {
                    let timeout = error_line(-32603, "request timed out");
                    let _ = stream.write_all(&timeout).await;
                    break 'connection;
                }
            };
            if write_line(&mut stream, &reply).await.is_err() {
                break 'connection;
            }
            if service.drain.is_set() {
                break 'connection;
            }
        }
        let pending_line = buffer
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(buffer.len());
        if pending_line > service.limits.line_bytes_max {
            let message = format!(
                "message exceeds limits.line_bytes_max ({} bytes)",
                service.limits.line_bytes_max
            );
            let _ = stream.write_all(&error_line(-32600, &message)).await;
            break;
        }
        if service.drain.is_set() {
            break;
        }
        let start = buffer.len();
        buffer.resize(start + READ_CHUNK_BYTES, 0);
        let read = future::or(
            async { Some(stream.read(&mut buffer[start..]).await) },
            async {
                service.drain.wait().await;
                None
            },
        )
        .await;
        match read {
            Some(Ok(read)) if read > 0 => buffer.truncate(start + read),
            _ => break, // EOF, error, or drain
        }
    }
    session::close(&service.registry, &id);
    // Shut down while the fd is certainly still ours, then close it.
    drop(tracked);
    let _ = stream.close().await;
}

fn trim_line_end(line: &[u8]) -> usize {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    end
}

async fn write_line(stream: &mut TcpStream, reply: &Bytes) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(reply.len() + 1);
    out.extend_from_slice(reply);
    out.push(b'\n');
    stream.write_all(&out).await
}

fn error_line(code: i64, message: &str) -> Vec<u8> {
    let mut line = serde_json::json!({
        "jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}
    })
    .to_string()
    .into_bytes();
    line.push(b'\n');
    line
}
