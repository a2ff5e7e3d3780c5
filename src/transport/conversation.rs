//! One MCP session on one connection, whatever carries its messages: the
//! loop that newline JSON (TCP, stdio) and WebSocket share. It opens the
//! session, hands the client's messages to the session actor, writes what
//! the session sends (answers, notifications, requests to the client) as it
//! comes, and ends the session with the connection. When the shard drains,
//! or the client stops sending on a transport that finishes in-flight work
//! then, it reads no more and waits for what is in flight, up to a deadline.
//! A transport only frames messages: see [`Conversation`].

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::future;
use glommio::channels::local_channel::LocalReceiver;

use crate::pool::PoolSet;
use crate::session::{self, OutFrame, SessionEnv, SessionError, SessionHandle, SessionRegistry};
use crate::sync::Event;
use crate::time::{SharedClock, Sleep};

/// What a transport got from its client.
pub(crate) enum Received {
    /// One JSON-RPC message or batch, as the client sent it.
    Message(Bytes),
    /// A message past the bound; [`Conversation::refuse_oversized`] says what next.
    Oversized,
    /// The client will send nothing more (EOF, a close, a dead connection).
    Closed,
    /// Woken without a message (say, a keepalive went out); ask again.
    Nothing,
}

/// How one transport frames a session's messages on its connection.
pub(crate) trait Conversation {
    /// The next message from the client. Must be cancel-safe: the loop drops
    /// this future whenever something else is ready first, and nothing
    /// already received may be lost with it.
    async fn receive(&mut self) -> Received;
    /// Writes one frame (a JSON-RPC message or batch) to the client.
    async fn send(&mut self, frame: Bytes) -> std::io::Result<()>;
    /// Tells the client its message was longer than `bytes_max`; true when
    /// the connection can go on (the transport could skip the message).
    async fn refuse_oversized(&mut self, bytes_max: usize) -> bool;
    /// Tells the client that no session could be opened for it.
    async fn refuse_session(&mut self, error: &SessionError);
    /// Whether in-flight requests still get their answers after the client
    /// has stopped sending (stdio: stdin closed, stdout still read), rather
    /// than ending with the input.
    fn finishes_after_close(&self) -> bool {
        false
    }
}

/// Why a conversation ended.
#[derive(Debug)]
pub(crate) enum Ending {
    /// The client stopped sending, and what was in flight is done (or its
    /// deadline passed).
    ClientClosed,
    /// The shard drained, and what was in flight is done (or its deadline passed).
    Drained,
    /// The session ended on its own (its actor stopped or its pool died).
    SessionEnded,
    /// A frame could not be written: the client is gone.
    SendFailed(std::io::Error),
    /// A message past the bound, on a transport that cannot skip it.
    Oversized,
    /// No session could be opened.
    Refused(SessionError),
}

/// What a conversation needs from its shard.
pub(crate) struct Site<'a> {
    pub registry: &'a Rc<SessionRegistry>,
    pub pools: &'a PoolSet,
    pub env: &'a Rc<SessionEnv>,
    pub clock: &'a SharedClock,
    /// Set when the shard drains.
    pub drain: &'a Event,
    pub message_bytes_max: usize,
    /// How long in-flight requests may take once reading has stopped.
    pub finish_within: Duration,
}

/// Serves one session over `io` until the client, the session or the shard
/// ends it; the session is closed on return.
pub(crate) async fn converse(io: &mut impl Conversation, site: &Site<'_>) -> Ending {
    let session = match session::open(site.registry, site.pools, site.env) {
        Ok(session) => session,
        Err(error) => {
            io.refuse_session(&error).await;
            return Ending::Refused(error);
        }
    };
    let id = session.id();
    let ending = match session.take_outbox() {
        Some(outbox) => pump(io, site, &session, &outbox).await,
        None => Ending::SessionEnded,
    };
    session::close(site.registry, &id);
    ending
}

/// What woke a conversation.
enum Wake {
    In(Received),
    Out(Bytes),
    Drain,
    Deadline,
    SessionEnded,
}

async fn pump(
    io: &mut impl Conversation,
    site: &Site<'_>,
    session: &SessionHandle,
    outbox: &LocalReceiver<Box<OutFrame>>,
) -> Ending {
    // Once reading stops: why, and the deadline for what is still in flight.
    let mut stopped: Option<(Ending, Sleep)> = None;
    loop {
        if stopped.is_none() && site.drain.is_set() {
            stopped = Some((Ending::Drained, site.clock.sleep(site.finish_within)));
        }
        if stopped.is_some() && session.in_flight() == 0 && session.outbox_len() == 0 {
            return stopped.map_or(Ending::Drained, |(ending, _)| ending);
        }
        let event = {
            let out = async {
                match outbox.recv().await {
                    Some(frame) => Wake::Out(frame.frame),
                    None => Wake::SessionEnded,
                }
            };
            let input = async {
                match &mut stopped {
                    None => {
                        future::or(async { Wake::In(io.receive().await) }, async {
                            site.drain.wait().await;
                            Wake::Drain
                        })
                        .await
                    }
                    Some((_, deadline)) => {
                        deadline.await;
                        Wake::Deadline
                    }
                }
            };
            let ended = async {
                session.ended().await;
                Wake::SessionEnded
            };
            // Writes first: a client that keeps sending must still be answered.
            future::or(out, future::or(input, ended)).await
        };
        match event {
            Wake::In(Received::Message(message)) => {
                if let Some(protect) = crate::protect::current() {
                    if let Err(shed) = protect.admit_session_message(session.id()) {
                        // Refused: its requests get the error, not the session.
                        if let Some(answer) = shed.answer_to(&message, site.message_bytes_max) {
                            if let Err(error) = io.send(answer).await {
                                return Ending::SendFailed(error);
                            }
                        }
                        continue;
                    }
                }
                // Requests run concurrently in the session; answers come
                // back through the outbox, after their notifications.
                if session.send(message).await.is_err() {
                    return Ending::SessionEnded;
                }
            }
            Wake::In(Received::Oversized) => {
                if !io.refuse_oversized(site.message_bytes_max).await {
                    return Ending::Oversized;
                }
            }
            Wake::In(Received::Closed) => {
                if !io.finishes_after_close() {
                    return Ending::ClientClosed;
                }
                let deadline = site.clock.sleep(site.finish_within);
                stopped = Some((Ending::ClientClosed, deadline));
            }
            Wake::In(Received::Nothing) | Wake::Drain => {}
            // An empty frame only asks an SSE transport to close a stream.
            Wake::Out(frame) if frame.is_empty() => {}
            Wake::Out(frame) => {
                if let Err(error) = io.send(frame).await {
                    return Ending::SendFailed(error);
                }
            }
            Wake::Deadline => {
                tracing::warn!(
                    session = %session.id(),
                    in_flight = session.in_flight(),
                    "requests still in flight at the deadline; ending the session"
                );
                return stopped.map_or(Ending::Drained, |(ending, _)| ending);
            }
            Wake::SessionEnded => return Ending::SessionEnded,
        }
    }
}

/// A JSON-RPC error with a null id: the answer to input that names no request.
pub(crate) fn error_frame(code: i64, message: &str) -> Vec<u8> {
    serde_json::json!({
        "jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}
    })
    .to_string()
    .into_bytes()
}

/// The message a transport answers an oversized message with.
pub(crate) fn oversized_message(bytes_max: usize) -> String {
    format!("message exceeds limits.message_bytes_max ({bytes_max} bytes)")
}
