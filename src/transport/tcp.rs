//! The accept loop every listener shares, and newline-delimited JSON-RPC
//! over TCP: one session per connection ([`super::lines`]).

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::sync::{Gate, Semaphore};

use crate::config::LimitsConfig;
use crate::pool::PoolSet;
use crate::session::{SessionEnv, SessionRegistry};
use crate::supervision::{ChildContext, ChildSpec, ExitReason, Restart, Shutdown};
use crate::sync::Event;
use crate::time::SharedClock;

use super::conversation::{self, Site};
use super::lines::LineConversation;
use super::sockets;

/// Accept errors in a row (EMFILE, ENOBUFS...) before the listener gives up
/// and lets its supervisor restart it.
const ACCEPT_ERRORS_MAX: u32 = 64;
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

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
    /// How long in-flight work may take once a drain starts
    /// (`runtime.drain_deadline_ms`).
    pub drain_deadline: Duration,
    /// Every connection task runs inside this gate, so a drain can wait for them.
    pub connections: Rc<Gate>,
    /// One permit per open connection, shared by the shard's listeners
    /// (`limits.connections_per_shard_max`, `protect.connections_max`).
    pub permits: Rc<Semaphore>,
    /// Told where the listener is bound, each time it binds.
    pub on_listening: Rc<dyn Fn(SocketAddr)>,
}

impl TcpService {
    /// What a session-per-connection transport needs from this shard.
    pub(crate) fn site(&self) -> Site<'_> {
        Site {
            registry: &self.registry,
            pools: &self.pools,
            env: &self.sessions,
            clock: &self.clock,
            drain: &self.drain,
            message_bytes_max: self.limits.message_bytes_max,
            finish_within: self.drain_deadline,
        }
    }
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
                // Past the cap, or too fast from its address: answered and
                // closed, so the client learns why instead of hanging in
                // the backlog.
                let permit = match admit_connection(&service, &stream) {
                    Ok(permit) => permit,
                    Err(shed) => {
                        refuse_connection(stream, shed, &service);
                        continue;
                    }
                };
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

/// A connection's permit, or why it is refused.
fn admit_connection(
    service: &TcpService,
    stream: &TcpStream,
) -> Result<glommio::sync::StaticPermit, crate::protect::Shed> {
    let protect = crate::protect::current();
    if let (Some(protect), Wire::NewlineJson) = (&protect, &service.wire) {
        // HTTP counts each request instead (in `http`).
        if let Ok(peer) = stream.peer_addr() {
            protect.admit_address(peer.ip())?;
        }
    }
    match service.permits.try_acquire_static_permit(1) {
        Ok(permit) => Ok(permit),
        Err(_) => Err(match &protect {
            Some(protect) => protect.connection_refused(),
            None => crate::protect::Shed {
                reason: crate::protect::Reason::Connections,
                retry_after: Duration::from_secs(1),
                message: "too many connections".into(),
            },
        }),
    }
}

/// Answers a refused connection (HTTP 503/429, or a JSON-RPC error line)
/// and closes it once the client has closed or `http_read_timeout_ms` has
/// passed: closing with its request unread would reset the connection and
/// could lose the answer. At most `protect.refusals_in_flight_max` at once;
/// past that it is closed unanswered.
fn refuse_connection(mut stream: TcpStream, shed: crate::protect::Shed, service: &Rc<TcpService>) {
    let Some(slot) = crate::protect::current().and_then(|protect| protect.refusal_slot()) else {
        drop(stream);
        return;
    };
    let answer = match service.wire {
        Wire::Http(_) => {
            let body = shed.http_body(None);
            let mut out = format!(
                "HTTP/1.1 {}\r\nRetry-After: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                shed.reason.status(),
                shed.retry_after_secs(),
                body.len()
            )
            .into_bytes();
            out.extend_from_slice(&body);
            out
        }
        Wire::NewlineJson => {
            let mut out = shed.http_body(None).to_vec();
            out.push(b'\n');
            out
        }
    };
    let linger = service
        .clock
        .sleep(Duration::from_millis(service.limits.http_read_timeout_ms));
    let _ = stream.set_write_timeout(Some(Duration::from_millis(
        service.limits.http_write_timeout_ms,
    )));
    glommio::spawn_local(async move {
        let tracked = sockets::track(stream.as_raw_fd());
        if stream.write_all(&answer).await.is_ok() {
            let _ = stream.shutdown(std::net::Shutdown::Write).await;
            let mut sink = [0u8; 1_024];
            future::or(
                async { while matches!(stream.read(&mut sink).await, Ok(read) if read > 0) {} },
                linger,
            )
            .await;
        }
        drop(tracked);
        let _ = stream.close().await;
        drop(slot);
    })
    .detach();
}

async fn serve_connection(mut stream: TcpStream, service: Rc<TcpService>) {
    let tracked = sockets::track(stream.as_raw_fd());
    let mut lines = LineConversation::new(&mut stream, service.limits.message_bytes_max, false);
    conversation::converse(&mut lines, &service.site()).await;
    // Shut down while the fd is certainly still ours, then close it.
    drop(tracked);
    let _ = stream.close().await;
}
