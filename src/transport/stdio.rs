//! The MCP stdio transport: one session on the process's stdin and stdout,
//! newline-delimited JSON-RPC (one message per line, UTF-8, no embedded
//! newlines). Nothing but the session's messages is written to stdout.
//!
//! glommio's streams speak io_uring recv/send, which need a socket, and its
//! file API is for random-access files, not pipes or terminals; a blocking
//! read on the shard would stall every task on the core. So two small
//! threads copy between stdin/stdout and one end of a Unix socket pair
//! ([`attach`]), and the shard serves the other end like any connection,
//! through the same newline-JSON conversation as TCP. The copy is bounded:
//! each thread holds one chunk, and the socket buffers (the kernel's) make a
//! writer wait when the reader falls behind.
//!
//! When stdin closes, the session reads no more, finishes what is in flight
//! (up to `runtime.drain_deadline_ms`) and ends; the runtime then drains the
//! node. A line past `limits.message_bytes_max` gets the -32600 error and is
//! skipped, and the session goes on: it is the server's whole life here.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::thread::JoinHandle;
use std::time::Duration;

use futures_lite::{future, AsyncWriteExt};
use glommio::sync::Gate;

use crate::config::LimitsConfig;
use crate::pool::PoolSet;
use crate::session::{SessionEnv, SessionRegistry};
use crate::supervision::{ChildContext, ChildSpec, ExitReason, Restart, Shutdown as Stop};
use crate::sync::Event;
use crate::time::SharedClock;

use super::conversation::{self, Ending, Site};
use super::lines::LineConversation;
use super::sockets;

/// Bytes one copy thread moves at a time.
const PUMP_CHUNK_BYTES: usize = 16 << 10;

/// The shard's end of the bridge to stdin and stdout.
#[derive(Debug)]
pub struct StdioLink {
    socket: UnixStream,
}

impl StdioLink {
    /// Serves the session over `socket` instead of the process's stdin and
    /// stdout (embedding, tests): what the peer writes is the client's input,
    /// and its shutdown for writing is the end of it.
    pub fn from_socket(socket: UnixStream) -> Self {
        StdioLink { socket }
    }
}

/// The copy threads on the process's side.
pub struct StdioPumps {
    /// Signalled (by dropping) when everything the session wrote is on stdout.
    written: crossbeam_channel::Receiver<()>,
    writer: Option<JoinHandle<()>>,
}

impl StdioPumps {
    /// Waits, at most `limit`, until all the session wrote has reached stdout;
    /// false when the time ran out (the client stopped reading).
    pub fn finish(mut self, limit: Duration) -> bool {
        let done = matches!(
            self.written.recv_timeout(limit),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        );
        if done {
            if let Some(writer) = self.writer.take() {
                let _ = writer.join();
            }
        }
        done
    }
}

/// Starts the copy threads: stdin into the socket pair, the socket pair
/// into stdout. The stdin thread may stay blocked in a read until the
/// process exits; nothing waits for it.
pub fn attach() -> std::io::Result<(StdioLink, StdioPumps)> {
    let (shard_end, pump_end) = UnixStream::pair()?;
    let from_stdin = pump_end.try_clone()?;
    std::thread::Builder::new()
        .name("shardmcp-stdin".into())
        .spawn(move || copy_stdin(from_stdin))?;
    let (written_tx, written) = crossbeam_channel::bounded::<()>(1);
    let writer = std::thread::Builder::new()
        .name("shardmcp-stdout".into())
        .spawn(move || {
            copy_to_stdout(pump_end);
            drop(written_tx);
        })?;
    Ok((
        StdioLink { socket: shard_end },
        StdioPumps {
            written,
            writer: Some(writer),
        },
    ))
}

fn copy_stdin(mut socket: UnixStream) {
    let mut stdin = std::io::stdin().lock();
    let mut chunk = vec![0u8; PUMP_CHUNK_BYTES];
    loop {
        match stdin.read(&mut chunk) {
            Ok(0) => break,
            Ok(read) => {
                if socket.write_all(&chunk[..read]).is_err() {
                    return; // the session is over
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => {
                tracing::warn!(%error, "cannot read stdin; ending the session's input");
                break;
            }
        }
    }
    // The shard reads EOF: the client has no more to say.
    let _ = socket.shutdown(Shutdown::Write);
}

fn copy_to_stdout(mut socket: UnixStream) {
    let mut stdout = std::io::stdout().lock();
    let mut chunk = vec![0u8; PUMP_CHUNK_BYTES];
    loop {
        match socket.read(&mut chunk) {
            Ok(0) => break,
            Ok(read) => {
                if stdout
                    .write_all(&chunk[..read])
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    // Nobody reads stdout: let the session's writes fail.
                    let _ = socket.shutdown(Shutdown::Read);
                    break;
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// What the stdio session needs from its shard.
pub struct StdioService {
    pub registry: Rc<SessionRegistry>,
    pub pools: Rc<PoolSet>,
    pub sessions: Rc<SessionEnv>,
    pub limits: LimitsConfig,
    pub clock: SharedClock,
    /// Set when the node drains: read no more, finish what is in flight.
    pub drain: Event,
    /// How long in-flight work may take once stdin closes or a drain starts.
    pub drain_deadline: Duration,
    /// The shard's connections gate: a drain waits for the session in it.
    pub connections: Rc<Gate>,
    /// Told once how the session ended: `None` when stdin closed or the node
    /// drained, otherwise why it failed (a phrase about "it", the session).
    pub on_end: Rc<dyn Fn(Option<String>)>,
}

/// The stdio session as a temporary child of the listeners: never
/// restarted, since a fresh session mid-stream would break the client's
/// handshake; the runtime ends the node with it instead.
pub fn session_spec(link: StdioLink, service: Rc<StdioService>) -> ChildSpec {
    let link = RefCell::new(Some(link));
    ChildSpec::worker("stdio", move |ctx| {
        let link = link.borrow_mut().take();
        serve(link, service.clone(), ctx)
    })
    .restart(Restart::Temporary)
    .shutdown(Stop::TimeoutMs(1_000))
}

/// Tells the runtime how the session ended, however it ends: a panic in the
/// session drops this with nothing recorded.
struct EndReport {
    on_end: Rc<dyn Fn(Option<String>)>,
    failure: Option<Option<String>>,
}

impl Drop for EndReport {
    fn drop(&mut self) {
        let failure = self
            .failure
            .take()
            .unwrap_or_else(|| Some("it crashed".to_string()));
        (self.on_end)(failure);
    }
}

async fn serve(
    link: Option<StdioLink>,
    service: Rc<StdioService>,
    ctx: ChildContext,
) -> ExitReason {
    let mut report = EndReport {
        on_end: service.on_end.clone(),
        failure: None,
    };
    let Some(link) = link else {
        report.failure = Some(Some("stdio can be served only once".into()));
        return ExitReason::Error("stdio can be served only once".into());
    };
    let Ok(_pass) = service.connections.enter() else {
        report.failure = Some(None); // already draining
        return ExitReason::Shutdown;
    };
    let fd = link.socket.into_raw_fd();
    let tracked = sockets::track(fd);
    // SAFETY: `fd` is a connected Unix stream socket we own; ownership moves
    // into the glommio stream, which closes it on drop.
    let mut stream = unsafe { glommio::net::UnixStream::from_raw_fd(fd) };
    let site = Site {
        registry: &service.registry,
        pools: &service.pools,
        env: &service.sessions,
        clock: &service.clock,
        drain: &service.drain,
        message_bytes_max: service.limits.message_bytes_max,
        finish_within: service.drain_deadline,
    };
    let mut lines = LineConversation::new(&mut stream, service.limits.message_bytes_max, true);
    let ending = future::or(
        async { Some(conversation::converse(&mut lines, &site).await) },
        async {
            ctx.shutdown_requested().await;
            None
        },
    )
    .await;
    let (failure, exit) = match ending {
        Some(Ending::ClientClosed | Ending::Drained) => (None, ExitReason::Normal),
        Some(Ending::SessionEnded) => (
            Some("it ended unexpectedly (its actor or pool stopped)".to_string()),
            ExitReason::Normal,
        ),
        Some(Ending::SendFailed(error)) => (
            Some(format!("cannot write to stdout: {error}")),
            ExitReason::Normal,
        ),
        Some(Ending::Oversized) => (
            Some("an oversized message ended it".to_string()),
            ExitReason::Normal,
        ),
        Some(Ending::Refused(error)) => (
            Some(format!("cannot open it: {error}")),
            ExitReason::Error(error.to_string()),
        ),
        None => (
            Some("it was stopped before it finished".to_string()),
            ExitReason::Shutdown,
        ),
    };
    // The stdout thread copies what is left, sees the end and finishes.
    let _ = stream.close().await;
    drop(tracked);
    drop(stream);
    report.failure = Some(failure);
    exit
}
