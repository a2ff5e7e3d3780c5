//! The session actor: one per session, in its pool, owning the session's
//! state and answering the requests its transport hands it through a bounded
//! mailbox. It does no I/O itself.
//!
//! What it answers today is the JSON-RPC envelope and `ping`; the MCP methods
//! arrive with the protocol layer.

mod answer;

use std::rc::Rc;

use bytes::Bytes;
use futures_lite::future;
use glommio::channels::local_channel::{self, LocalSender};

use crate::pool::{PoolError, PoolSet};
use crate::registry::{Registry, RegistryError, SessionId};
use crate::supervision::{ChildContext, ChildFuture, ExitReason, StartFn};
use crate::sync::{oneshot, OneshotSender};

pub use answer::answer;

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

/// Creates a session: a fresh id, an actor in the id's pool, an entry in the
/// registry. Ends when `close` is called or the actor dies.
pub fn open(
    registry: &Rc<SessionRegistry>,
    pools: &PoolSet,
    mailbox_capacity: usize,
) -> Result<SessionHandle, SessionError> {
    let id = registry.new_session_id();
    pools.start_session(&id, actor(id, registry.clone(), mailbox_capacity))?;
    // The start function ran inside start_child and registered the actor.
    registry.get(&id).ok_or(SessionError::Gone(id))
}

/// Ends a session: once the last handle is dropped the actor's mailbox closes
/// and it exits normally.
pub fn close(registry: &SessionRegistry, id: &SessionId) {
    registry.remove(id);
}

/// The start function of one session actor.
pub fn actor(id: SessionId, registry: Rc<SessionRegistry>, mailbox_capacity: usize) -> StartFn {
    Rc::new(move |ctx: ChildContext| -> ChildFuture {
        let (sender, receiver) = local_channel::new_bounded(mailbox_capacity);
        let handle = SessionHandle {
            id,
            mailbox: Rc::new(sender),
        };
        if let Err(error) = registry.insert(id, handle) {
            return Box::pin(async move { ExitReason::Error(error.to_string()) });
        }
        let deregister = Deregister {
            registry: registry.clone(),
            id,
        };
        Box::pin(async move {
            let _deregister = deregister;
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
                        let _ = request.reply.send(answer(&request.message));
                    }
                }
            }
        })
    })
}

/// Takes the session out of the registry however the actor ends: exit,
/// panic or kill (the future is dropped in every case).
struct Deregister {
    registry: Rc<SessionRegistry>,
    id: SessionId,
}

impl Drop for Deregister {
    fn drop(&mut self) {
        self.registry.remove(&self.id);
    }
}
