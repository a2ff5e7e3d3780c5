//! The session actor: one per session, in its pool, owning the session's
//! MCP state ([`McpSession`]) and answering the frames its transport hands it
//! through a bounded mailbox. Each request runs as its own task, so the
//! requests of one session run concurrently. It does no I/O itself.

mod mcp;
pub mod tasks;

use std::future::Future;
use std::rc::Rc;

use bytes::Bytes;
use futures_lite::future;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

use crate::pool::{PoolError, PoolSet};
use crate::protocol::jsonrpc::{Incoming, Refusal};
use crate::protocol::request_state::StateKey;
use crate::registry::{Registry, RegistryError, SessionId};
use crate::server::LiveServer;
use crate::supervision::{ChildContext, ChildFuture, ExitReason, StartFn};
use crate::sync::{oneshot, Event, OneshotSender};
use crate::time::SharedClock;

pub use mcp::{McpSession, OutFrame, ResumeState, SessionLimits, UpdateHook};
pub use records::SessionRecords;

mod records;

/// One frame for a session actor. The reply (`None` for a notification)
/// goes back through `reply`, or into the session's outbox when there is none.
pub struct SessionRequest {
    pub message: Frame,
    pub reply: Option<OneshotSender<Option<Bytes>>>,
}

/// A message as it reaches a session: its bytes, or already decoded by a
/// transport that had to look inside (HTTP reads the ids of a POST), so
/// that no frame is parsed twice.
pub enum Frame {
    Raw(Bytes),
    Decoded(Result<Incoming, Refusal>),
}

/// The address of a live session actor.
#[derive(Clone)]
pub struct SessionHandle {
    id: SessionId,
    mailbox: Rc<LocalSender<SessionRequest>>,
    session: Rc<McpSession>,
    /// Set to kill the actor as a crash would (chaos): its state is kept
    /// in the shard's records and a new actor takes the session up.
    kill: Event,
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
    /// Refused by overload protection (the memory guard).
    #[error("{}", .0.message)]
    Shed(crate::protect::Shed),
}

impl SessionHandle {
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Hands one message to the actor (waiting while its mailbox is full) and
    /// waits for the answer.
    pub async fn request(&self, message: Bytes) -> Result<Option<Bytes>, SessionError> {
        self.ask(Frame::Raw(message)).await
    }

    /// [`request`](Self::request) with a message the caller decoded already.
    pub async fn request_decoded(
        &self,
        message: Result<Incoming, Refusal>,
    ) -> Result<Option<Bytes>, SessionError> {
        self.ask(Frame::Decoded(message)).await
    }

    /// Queues a decoded message (waiting while the mailbox is full) and gives
    /// the wait for its answer apart, so that a caller can tell the time its
    /// request spent queued from the time its handler takes.
    pub async fn submit_decoded(
        &self,
        message: Result<Incoming, Refusal>,
    ) -> Result<impl Future<Output = Result<Option<Bytes>, SessionError>>, SessionError> {
        self.submit(Frame::Decoded(message)).await
    }

    async fn ask(&self, message: Frame) -> Result<Option<Bytes>, SessionError> {
        self.submit(message).await?.await
    }

    async fn submit(
        &self,
        message: Frame,
    ) -> Result<impl Future<Output = Result<Option<Bytes>, SessionError>>, SessionError> {
        let (reply, answer) = oneshot();
        self.mailbox
            .send(SessionRequest {
                message,
                reply: Some(reply),
            })
            .await
            .map_err(|_| SessionError::Gone(self.id))?;
        // A request still queued when the actor dies is never taken: the
        // queue (and the reply sender in it) lives on while any handle does,
        // so the end of the session answers it instead.
        let ended = self.session.ended();
        let id = self.id;
        Ok(future::or(
            async move { answer.await.map_err(|_| SessionError::Gone(id)) },
            async move {
                ended.await;
                Err(SessionError::Gone(id))
            },
        ))
    }

    /// Hands one message to the actor without waiting for its answer, which
    /// arrives in the outbox (after the request's own notifications).
    pub async fn send(&self, message: Bytes) -> Result<(), SessionError> {
        self.mailbox
            .send(SessionRequest {
                message: Frame::Raw(message),
                reply: None,
            })
            .await
            .map_err(|_| SessionError::Gone(self.id))
    }

    /// The frames for the client (notifications, and the answers to `send`);
    /// one transport connection takes it.
    pub fn take_outbox(&self) -> Option<LocalReceiver<Box<OutFrame>>> {
        self.session.take_outbox()
    }

    /// Requests of this session running now.
    pub fn in_flight(&self) -> usize {
        self.session.in_flight()
    }

    /// Completes when the session has ended (its actor stopped or died).
    pub fn ended(&self) -> crate::sync::EventWait {
        self.session.ended()
    }

    /// Frames waiting in the outbox.
    pub fn outbox_len(&self) -> usize {
        self.session.outbox_len()
    }

    /// Tasks the session holds (for metrics).
    pub fn task_count(&self) -> usize {
        self.session.task_count()
    }

    /// Initialized (so its state can outlive its actor).
    pub fn is_ready(&self) -> bool {
        self.session.is_ready()
    }

    /// Kills the actor as a crash would: requests in flight fail, the
    /// session's state goes to the shard's records, and the next request
    /// (or [`find_or_resume`]) starts a new actor that carries it on.
    pub fn kill(&self) {
        self.kill.set();
    }
}

/// What every session of a shard shares: the shard's server and the bounds.
#[derive(Clone)]
pub struct SessionEnv {
    /// The shard's server as it is now; sessions subscribe to its changes.
    pub server: Rc<LiveServer>,
    /// The shard's tasks, each owned by the session that created it.
    pub tasks: Rc<tasks::TaskStore>,
    pub limits: SessionLimits,
    pub clock: SharedClock,
    /// Seals `requestState` for stateless multi-round calls (node-wide).
    pub state_key: StateKey,
    /// Carries a resource change to every session of the node.
    pub resource_updates: UpdateHook,
    /// Frames waiting in one session's mailbox; senders wait when it is full.
    pub mailbox_capacity: usize,
    /// The transport its sessions arrive on (`tcp`, `http`...), the label
    /// they are counted under.
    pub transport: &'static str,
    /// State of sessions whose actor died, kept by the shard (outliving
    /// pools) until a new actor takes it up.
    pub records: Rc<SessionRecords>,
    /// How long a request for a dead actor's session waits for its pool to
    /// come back before it is answered as an unknown session.
    pub resume_wait: std::time::Duration,
}

impl SessionEnv {
    /// A new MCP session of this shard, announcing resource changes node-wide.
    pub fn new_session(&self) -> Rc<McpSession> {
        let session = McpSession::with_task_store(
            self.server.clone(),
            &self.tasks,
            self.limits,
            self.clock.clone(),
            self.state_key.clone(),
        );
        session.set_update_hook(self.resource_updates.clone());
        session
    }
}

/// Creates a session: a fresh id, an actor in the id's pool, an entry in the
/// registry. Ends when `close` is called or the actor dies.
pub fn open(
    registry: &Rc<SessionRegistry>,
    pools: &PoolSet,
    env: &Rc<SessionEnv>,
) -> Result<SessionHandle, SessionError> {
    if let Some(protect) = crate::protect::current() {
        protect.admit_new_session().map_err(SessionError::Shed)?;
    }
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

/// The live actor of session `id`; when its actor died with its pool (or
/// was killed) and the shard kept its state, a new actor in the session's
/// pool takes it up first, so the client never sees the loss. Waits up to
/// `env.resume_wait` for a pool that is restarting. None for a session the
/// shard does not know (never opened, closed, or its record expired).
pub async fn find_or_resume(
    registry: &Rc<SessionRegistry>,
    pools: &PoolSet,
    env: &Rc<SessionEnv>,
    id: &SessionId,
) -> Option<SessionHandle> {
    if let Some(handle) = registry.get(id) {
        return Some(handle);
    }
    if !env.records.contains(id) {
        return None;
    }
    let started = env.clock.now();
    loop {
        // Another request may have resumed it while this one waited.
        if let Some(handle) = registry.get(id) {
            return Some(handle);
        }
        match resume(registry, pools, env, id) {
            Ok(handle) => return Some(handle),
            Err(SessionError::Pool(PoolError::Down(_)))
                if env.clock.now().saturating_sub(started) < env.resume_wait =>
            {
                env.clock.sleep(RESUME_RETRY).await;
            }
            Err(_) => return None,
        }
    }
}

/// Pause between tries to resume a session whose pool is restarting.
const RESUME_RETRY: std::time::Duration = std::time::Duration::from_millis(1);

/// Starts a new actor for session `id` from its record (taken from the
/// records only once the actor runs).
pub fn resume(
    registry: &Rc<SessionRegistry>,
    pools: &PoolSet,
    env: &Rc<SessionEnv>,
    id: &SessionId,
) -> Result<SessionHandle, SessionError> {
    let Some(transport) = env.records.transport(id) else {
        return Err(SessionError::Gone(*id));
    };
    let env = if transport == env.transport {
        env.clone()
    } else {
        Rc::new(SessionEnv {
            transport,
            ..SessionEnv::clone(env)
        })
    };
    pools.start_session(id, actor(*id, registry.clone(), env))?;
    registry.get(id).ok_or(SessionError::Gone(*id))
}

/// The start function of one session actor. A session with a record (its
/// previous actor died) starts from the recorded state.
pub fn actor(id: SessionId, registry: Rc<SessionRegistry>, env: Rc<SessionEnv>) -> StartFn {
    Rc::new(move |ctx: ChildContext| -> ChildFuture {
        let (sender, receiver) = local_channel::new_bounded(env.mailbox_capacity);
        let session = env.new_session();
        session.set_session_id(id);
        let kill = Event::new();
        let handle = SessionHandle {
            id,
            mailbox: Rc::new(sender),
            session: session.clone(),
            kill: kill.clone(),
        };
        if let Err(error) = registry.insert(id, handle) {
            return Box::pin(async move { ExitReason::Error(error.to_string()) });
        }
        if let Some(state) = env.records.take(&id) {
            session.resume(state);
        }
        crate::observe::record_session_opened(env.transport);
        let cleanup = Cleanup {
            registry: registry.clone(),
            id,
            session: session.clone(),
            transport: env.transport,
            records: env.records.clone(),
            ended: std::cell::Cell::new(false),
        };
        Box::pin(async move {
            let cleanup = cleanup;
            loop {
                let next = future::or(
                    future::or(async { Some(Some(receiver.recv().await)) }, async {
                        ctx.shutdown_requested().await;
                        None
                    }),
                    async {
                        kill.wait().await;
                        Some(None)
                    },
                )
                .await;
                match next {
                    None => {
                        cleanup.ended.set(true);
                        return ExitReason::Shutdown;
                    }
                    Some(None) => {
                        // Killed: a crash, whose state the shard keeps.
                        return ExitReason::Error("killed (chaos)".to_string());
                    }
                    Some(Some(None)) => {
                        cleanup.ended.set(true);
                        return ExitReason::Normal;
                    }
                    Some(Some(Some(request))) => {
                        let session = session.clone();
                        // glommio runs the task at once up to its first await:
                        // quick requests answer without a queue hop.
                        glommio::spawn_local(async move {
                            let message = match request.message {
                                Frame::Raw(bytes) => session.decode(&bytes),
                                Frame::Decoded(message) => message,
                            };
                            match request.reply {
                                Some(reply) => {
                                    let answer = session.handle_decoded(message).await;
                                    let _ = reply.send(answer);
                                }
                                None => session.handle_decoded_into_outbox(message).await,
                            }
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
/// are cancelled. An actor that did not end on purpose (killed, its pool
/// crashed) leaves its state in the shard's records for a new actor.
struct Cleanup {
    registry: Rc<SessionRegistry>,
    id: SessionId,
    session: Rc<McpSession>,
    transport: &'static str,
    records: Rc<SessionRecords>,
    /// The actor ended normally (closed) or was asked to shut down.
    ended: std::cell::Cell<bool>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.registry.remove(&self.id);
        if !self.ended.get() && self.session.is_ready() {
            self.records
                .keep(self.id, self.session.resume_state(), self.transport);
        }
        self.session.close();
        crate::observe::record_session_closed(self.transport);
    }
}
