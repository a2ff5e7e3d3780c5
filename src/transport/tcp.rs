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
use crate::session::{self, SessionEnv, SessionRegistry};
use crate::supervision::{ChildContext, ChildSpec, ExitReason, Restart, Shutdown};
use crate::sync::Event;
use crate::time::SharedClock;

use super::sockets;

/// Accept errors in a row (EMFILE, ENOBUFS...) before the listener gives up
/// and lets its supervisor restart it.
const ACCEPT_ERRORS_MAX: u32 = 64;
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// Room offered to each read. An idle connection holds this much while it
/// waits, so it is kept small.
const READ_CHUNK_BYTES: usize = 4 << 10;

/// What a listener speaks on its connections.
pub enum Wire {
    /// Newline-delimited JSON-RPC, one session per connection.
    NewlineJson,
    /// Streamable HTTP at `/mcp` (sessions by `Mcp-Session-Id`).
    Http(Rc<super::http::HttpSessions>),
}

impl Wire {
    pub fn name(&self) -> &'static str {
        match self {
            Wire::NewlineJson => "tcp",
            Wire::Http(_) => "http",
        }
    }
}

/// What a listener needs from its shard.
pub struct TcpService {
    pub wire: Wire,
    /// Host names HTTP requests may carry in `Host` and `Origin`.
    pub allowed_hosts: Vec<String>,
    pub registry: Rc<SessionRegistry>,
    pub pools: Rc<PoolSet>,
    pub sessions: Rc<SessionEnv>,
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
    let name = service.wire.name();
    ChildSpec::worker(name, move |ctx| accept_loop(addr, service.clone(), ctx))
        .restart(Restart::Transient)
        .shutdown(Shutdown::TimeoutMs(1_000))
}

async fn accept_loop(addr: SocketAddr, service: Rc<TcpService>, ctx: ChildContext) -> ExitReason {
    let (listener, _tracked) = match sockets::listen(addr, service.listen_backlog) {
        Ok(bound) => bound,
        Err(error) => return ExitReason::Error(format!("cannot listen on tcp {addr}: {error}")),
    };
    let local = match listener.local_addr() {
        Ok(local) => local,
        Err(error) => return ExitReason::Error(format!("tcp listener has no address: {error}")),
    };
    crate::observe::declare_transport(service.wire.name());
    (service.on_listening)(local);
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
                // Counted open until the task ends or is dropped.
                let counted = crate::observe::connection_opened(service.wire.name());
                let spawned = service.connections.spawn(async move {
                    match &service_for_connection.wire {
                        Wire::NewlineJson => {
                            serve_connection(stream, service_for_connection.clone()).await
                        }
                        Wire::Http(sessions) => {
                            let sessions = sessions.clone();
                            super::http::serve_connection(
                                stream,
                                service_for_connection.clone(),
                                sessions,
                            )
                            .await
                        }
                    }
                    drop(counted);
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
    let opened = session::open(&service.registry, &service.pools, &service.sessions);
    let (session, outbox) = match opened.map(|s| {
        let outbox = s.take_outbox();
        (s, outbox)
    }) {
        Ok((session, Some(outbox))) => (session, outbox),
        Ok((session, None)) => {
            session::close(&service.registry, &session.id());
            drop(tracked);
            return;
        }
        Err(error) => {
            let reply = error_line(-32000, &format!("cannot open a session: {error}"));
            let _ = stream.write_all(&reply).await;
            drop(tracked);
            return;
        }
    };
    let id = session.id();
    let mut lines = Lines::new(service.limits.message_bytes_max);
    let mut reading = true;
    loop {
        if reading {
            match lines.next_line() {
                NextLine::Line(line) => {
                    // Requests run concurrently in the session; answers come
                    // back through the outbox, after their notifications.
                    if session.send(line).await.is_err() {
                        break;
                    }
                    continue;
                }
                NextLine::TooLong => {
                    let message = format!(
                        "message exceeds limits.message_bytes_max ({} bytes)",
                        service.limits.message_bytes_max
                    );
                    // The rest of the line is skipped; the session goes on.
                    if stream
                        .write_all(&error_line(-32600, &message))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    continue;
                }
                NextLine::NeedMore => {}
            }
        }
        if service.drain.is_set() {
            // Draining: read nothing more; finish what is in flight.
            reading = false;
            if session.in_flight() == 0 && session.outbox_len() == 0 {
                break;
            }
        }
        let event = {
            let read = async {
                if reading {
                    Wake::Read(stream.read(lines.read_space()).await)
                } else {
                    futures_lite::future::pending().await
                }
            };
            let out = async {
                match outbox.recv().await {
                    Some(frame) => Wake::Out(frame.frame),
                    None => Wake::SessionEnded,
                }
            };
            let ended = async {
                session.ended().await;
                Wake::SessionEnded
            };
            let drain = async {
                if reading {
                    service.drain.wait().await;
                    Wake::Drain
                } else {
                    futures_lite::future::pending().await
                }
            };
            // Writes first: a client that keeps sending must still be answered.
            future::or(out, future::or(read, future::or(drain, ended))).await
        };
        if !matches!(event, Wake::Read(_)) {
            lines.abandon_read();
        }
        match event {
            Wake::Read(Ok(read)) if read > 0 => lines.filled(read),
            Wake::Read(_) => break, // EOF or error
            // An empty frame only asks an SSE transport to close a stream.
            Wake::Out(frame) if frame.is_empty() => {}
            Wake::Out(frame) => {
                if write_line(&mut stream, &frame).await.is_err() {
                    break;
                }
            }
            Wake::Drain => {}
            Wake::SessionEnded => break,
        }
    }
    session::close(&service.registry, &id);
    // Shut down while the fd is certainly still ours, then close it.
    drop(tracked);
    let _ = stream.close().await;
}

/// What woke a connection.
enum Wake {
    Read(std::io::Result<usize>),
    Out(Bytes),
    Drain,
    SessionEnded,
}

/// Splits newline-delimited messages out of what a connection has read,
/// looking at each byte once however the line arrives.
struct Lines {
    buffer: BytesMut,
    /// Bytes at the front of `buffer` already known to hold no newline.
    scanned: usize,
    /// Bytes of `buffer` that were really read (the rest is room for a read).
    committed: usize,
    line_bytes_max: usize,
    /// Inside a line that was too long: its bytes are skipped up to its end,
    /// and the next line is read as usual.
    discarding: bool,
}

#[derive(Debug, PartialEq)]
enum NextLine {
    Line(Bytes),
    NeedMore,
    TooLong,
}

impl Lines {
    fn new(line_bytes_max: usize) -> Self {
        Lines {
            buffer: BytesMut::with_capacity(READ_CHUNK_BYTES),
            scanned: 0,
            committed: 0,
            line_bytes_max,
            discarding: false,
        }
    }

    /// The next non-empty line without its line ending. A line past the
    /// bound is reported once, as soon as it is known, and then skipped.
    fn next_line(&mut self) -> NextLine {
        loop {
            let Some(offset) = self.buffer[self.scanned..].iter().position(|&b| b == b'\n') else {
                if self.discarding || self.buffer.len() > self.line_bytes_max {
                    let reported = self.discarding;
                    self.discarding = true;
                    self.buffer.clear();
                    self.committed = 0;
                    self.scanned = 0;
                    if !reported {
                        return NextLine::TooLong;
                    }
                } else {
                    self.scanned = self.buffer.len();
                }
                return NextLine::NeedMore;
            };
            let end = self.scanned + offset;
            self.scanned = 0;
            if self.discarding || end > self.line_bytes_max {
                let reported = self.discarding;
                self.discarding = false;
                let _ = self.buffer.split_to(end + 1);
                self.committed -= end + 1;
                if !reported {
                    return NextLine::TooLong;
                }
                continue;
            }
            let mut line = self.buffer.split_to(end + 1).freeze();
            self.committed -= end + 1;
            line.truncate(trim_line_end(&line));
            if !line.is_empty() {
                return NextLine::Line(line);
            }
        }
    }

    /// Room for the next read; follow with `filled` (what the read returned)
    /// or `abandon_read` (the read was dropped before it finished).
    fn read_space(&mut self) -> &mut [u8] {
        self.buffer.truncate(self.committed);
        self.buffer.resize(self.committed + READ_CHUNK_BYTES, 0);
        &mut self.buffer[self.committed..]
    }

    fn filled(&mut self, read: usize) {
        self.committed += read.min(READ_CHUNK_BYTES);
        self.buffer.truncate(self.committed);
    }

    /// Forgets the room offered to a read that never completed.
    fn abandon_read(&mut self) {
        self.buffer.truncate(self.committed);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &mut Lines, bytes: &[u8]) {
        let space = lines.read_space();
        space[..bytes.len()].copy_from_slice(bytes);
        lines.filled(bytes.len());
    }

    #[test]
    fn splits_lines_across_reads_and_drops_line_endings_and_blank_lines() {
        let mut lines = Lines::new(1_024);
        assert_eq!(lines.next_line(), NextLine::NeedMore);
        feed(&mut lines, b"{\"a\":1}\r\n\n{\"b\"");
        assert_eq!(
            lines.next_line(),
            NextLine::Line(Bytes::from_static(b"{\"a\":1}"))
        );
        assert_eq!(lines.next_line(), NextLine::NeedMore);
        feed(&mut lines, b":2}\n");
        assert_eq!(
            lines.next_line(),
            NextLine::Line(Bytes::from_static(b"{\"b\":2}"))
        );
        assert_eq!(lines.next_line(), NextLine::NeedMore);
    }

    #[test]
    fn an_abandoned_read_leaves_no_trace() {
        let mut lines = Lines::new(1_024);
        feed(&mut lines, b"{\"a\"");
        assert_eq!(lines.next_line(), NextLine::NeedMore);
        let _ = lines.read_space(); // offered to a read that is then dropped
        lines.abandon_read();
        feed(&mut lines, b":1}\n");
        assert_eq!(
            lines.next_line(),
            NextLine::Line(Bytes::from_static(b"{\"a\":1}"))
        );
    }

    #[test]
    fn refuses_a_line_past_the_bound_whether_complete_or_still_arriving() {
        let mut lines = Lines::new(8);
        feed(&mut lines, b"0123456789\nok\n");
        assert_eq!(lines.next_line(), NextLine::TooLong);
        assert_eq!(lines.next_line(), NextLine::Line(Bytes::from_static(b"ok")));

        // Still arriving: reported once, then skipped to its end.
        let mut lines = Lines::new(8);
        feed(&mut lines, b"01234");
        assert_eq!(lines.next_line(), NextLine::NeedMore);
        feed(&mut lines, b"56789");
        assert_eq!(lines.next_line(), NextLine::TooLong);
        feed(&mut lines, b"abcdefghijkl");
        assert_eq!(lines.next_line(), NextLine::NeedMore);
        feed(&mut lines, b"mn\nnext\n");
        assert_eq!(
            lines.next_line(),
            NextLine::Line(Bytes::from_static(b"next"))
        );

        let mut lines = Lines::new(8);
        feed(&mut lines, b"01234567\n");
        assert_eq!(
            lines.next_line(),
            NextLine::Line(Bytes::from_static(b"01234567"))
        );
    }
}
