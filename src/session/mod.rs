//! The session actor: one per session, in its pool, owning the session's
//! MCP state ([`McpSession`]) and answering the frames its transport hands it
//! through a bounded mailbox. Each request runs as its own task, so the
//! requests of one session run concurrently. It does no I/O itself.

mod mcp;

use std::rc::Rc;

use bytes::Bytes;
use futures_lite::future;
use glommio::channels::local_channel::{self, LocalSender};

use crate::pool::{PoolError, PoolSet};
use crate::registry::{Registry, RegistryError, SessionId};
use crate::server::Server;
use crate::supervision::{ChildContext, ChildFuture, ExitReason, StartFn};
use crate::sync::{oneshot, OneshotSender};

pub use mcp::{McpSession, SessionLimits};

/// One request for a session actor; the reply is `None` for a notification.
pub struct SessionRequest {
    pub message: Bytes,
    pub reply: OneshotSender<Option<Bytes>>,
}

/// The address of a live session actor.
#[derive(Clone)]
pub struct SessionHandle {
    id: SessionId,
    mailbox: Rc<LocalSender<SessionRequest>>,
}

pub type SessionRegistry = Registry<SessionHandle>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("session {0} has ended")]
    Gone(SessionId),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl SessionHandle {
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Hands one message to the actor (waiting while its mailbox is full) and
    /// waits for the answer.
    pub async fn request(&self, message: Bytes) -> Result<Option<Bytes>, SessionError> {
        let (reply, answer) = oneshot();
        self.mailbox
            .send(SessionRequest { message, reply })
            .await
            .map_err(|_| SessionError::Gone(self.id))?;
        answer.await.map_err(|_| SessionError::Gone(self.id))
    }
}

/// What every session of a shard shares: the shard's server and the bounds.
pub struct SessionEnv {
    pub server: Rc<Server>,
    pub limits: SessionLimits,
    /// Frames waiting in one session's mailbox; senders wait when it is full.
    pub mailbox_capacity: usize,
}

/// Creates a session: a fresh id, an actor in the id's pool, an entry in the
/// registry. Ends when `close` is called or the actor dies.
pub fn open(
    registry: &Rc<SessionRegistry>,
    pools: &PoolSet,
    env: &Rc<SessionEnv>,
) -> Result<SessionHandle, SessionError> {
    let id = registry.new_session_id();
    pools.start_session(&id, actor(id, registry.clone(), env.clone()))?;
    // The start function ran inside start_child and registered the actor.
    registry.get(&id).ok_or(SessionError::Gone(id))
}

/// Ends a session: once the last handle is dropped the actor's mailbox closes
/// and it exits normally.
pub fn close(registry: &SessionRegistry, id: &SessionId) {
    registry.remove(id);
}

/// The start function of one session actor.
pub fn actor(id: SessionId, registry: Rc<SessionRegistry>, env: Rc<SessionEnv>) -> StartFn {
    Rc::new(move |ctx: ChildContext| -> ChildFuture {
        let (sender, receiver) = local_channel::new_bounded(env.mailbox_capacity);
        let handle = SessionHandle {
            id,
            mailbox: Rc::new(sender),
        };
        if let Err(error) = registry.insert(id, handle) {
            return Box::pin(async move { ExitReason::Error(error.to_string()) });
        }
        let session = McpSession::new(env.server.clone(), env.limits);
        let cleanup = Cleanup {
            registry: registry.clone(),
            id,
            session: session.clone(),
        };
        Box::pin(async move {
            let _cleanup = cleanup;
            loop {
                let next = future::or(async { Some(receiver.recv().await) }, async {
                    ctx.shutdown_requested().await;
                    None
                })
                .await;
                match next {
                    None => return ExitReason::Shutdown,
                    Some(None) => return ExitReason::Normal,
                    Some(Some(request)) => {
                        let session = session.clone();
                        // glommio runs the task at once up to its first await:
                        // quick requests answer without a queue hop.
                        glommio::spawn_local(async move {
                            let reply = session.handle_frame(&request.message).await;
                            let _ = request.reply.send(reply);
                        })
                        .detach();
                    }
                }
            }
        })
    })
}

/// However the actor ends (exit, panic or kill: its future is dropped in
/// every case), the session leaves the registry and its running requests
/// are cancelled.
struct Cleanup {
    registry: Rc<SessionRegistry>,
    id: SessionId,
    session: Rc<McpSession>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.registry.remove(&self.id);
        self.session.close();
    }
}
