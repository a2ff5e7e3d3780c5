//! The mesh: one bounded single-producer/single-consumer channel for every
//! ordered pair of shards, with cast and call/reply on top. It knows nothing
//! of MCP; messages are whatever `T` the runtime sends.
//!
//! Channel choice: glommio's `shared_channel`, not crossbeam. Both are bounded
//! lock-free ring buffers, but a crossbeam queue gives the receiving shard no
//! way to sleep: it must poll, which burns its core when idle or adds a timer's
//! latency. glommio's channel parks the receiver on its io_uring and wakes it
//! through an eventfd only when it sleeps. `benches/mesh.rs` measures both
//! round trips side by side (README has the figures): crossbeam with a spinning
//! receiver wins only while both cores spin, so we keep glommio's.
//!
//! Bounds: each channel holds `capacity` messages. `send` waits while the
//! channel is full (backpressure); `try_send` hands the message back in
//! [`MeshError::Full`]. Outstanding calls are capped by `pending_calls_max`.
//!
//! A restarted shard gets fresh channels: the node makes new pairs with
//! [`rewire`] and hands the peers their ends, which they [`MeshPort::attach`].

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use glommio::channels::shared_channel::{self, ConnectedSender, SharedReceiver, SharedSender};
use glommio::{GlommioError, ResourceType};

use crate::ids::ShardId;
use crate::sync::{oneshot, OneshotSender};
use crate::time::SharedClock;

/// What travels on a mesh channel.
pub enum Envelope<T> {
    Cast {
        from: ShardId,
        body: T,
    },
    Call {
        from: ShardId,
        call_id: u64,
        body: T,
    },
    Reply {
        call_id: u64,
        body: T,
    },
}

/// One shard's ends of the mesh before they are connected: index `j` holds
/// the channel to (or from) shard `j`; its own index is empty.
pub struct ShardEnds<T: Send + 'static> {
    pub shard: ShardId,
    pub to: Vec<Option<SharedSender<Envelope<T>>>>,
    pub from: Vec<Option<SharedReceiver<Envelope<T>>>>,
}

/// The ends a surviving shard needs to talk to a restarted `peer`.
pub struct PeerEnds<T: Send + 'static> {
    pub peer: ShardId,
    pub to: SharedSender<Envelope<T>>,
    pub from: SharedReceiver<Envelope<T>>,
}

/// Builds the full mesh for `shards` shards.
pub fn full<T: Send + 'static>(shards: usize, capacity: usize) -> Vec<ShardEnds<T>> {
    let mut ends: Vec<ShardEnds<T>> = (0..shards)
        .map(|i| ShardEnds {
            shard: ShardId(i as u16),
            to: (0..shards).map(|_| None).collect(),
            from: (0..shards).map(|_| None).collect(),
        })
        .collect();
    for i in 0..shards {
        for j in 0..shards {
            if i != j {
                let (tx, rx) = shared_channel::new_bounded(capacity);
                ends[i].to[j] = Some(tx);
                ends[j].from[i] = Some(rx);
            }
        }
    }
    ends
}

/// Fresh channels for a restarted shard `k`: its own ends, and each peer's.
pub fn rewire<T: Send + 'static>(
    k: ShardId,
    shards: usize,
    capacity: usize,
) -> (ShardEnds<T>, Vec<(ShardId, PeerEnds<T>)>) {
    let mut own = ShardEnds {
        shard: k,
        to: (0..shards).map(|_| None).collect(),
        from: (0..shards).map(|_| None).collect(),
    };
    let mut peers = Vec::with_capacity(shards.saturating_sub(1));
    for j in (0..shards).filter(|&j| j != k.index()) {
        let (k_to_j, j_from_k) = shared_channel::new_bounded(capacity);
        let (j_to_k, k_from_j) = shared_channel::new_bounded(capacity);
        own.to[j] = Some(k_to_j);
        own.from[j] = Some(k_from_j);
        peers.push((
            ShardId(j as u16),
            PeerEnds {
                peer: k,
                to: j_to_k,
                from: j_from_k,
            },
        ));
    }
    (own, peers)
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError<T> {
    #[error("mesh channel to shard {0} is full")]
    Full(ShardId, T),
    #[error("shard {0} is not reachable (down or restarting)")]
    PeerGone(ShardId),
    #[error("no reply from shard {0} within {1:?}")]
    Timeout(ShardId, Duration),
    #[error("too many calls waiting for replies ({0})")]
    TooManyPending(usize),
    #[error("shard {0} is this shard")]
    SelfSend(ShardId),
}

/// A message delivered to this shard.
pub struct Incoming<T> {
    pub from: ShardId,
    pub body: T,
    /// Present for calls: pass it to [`MeshPort::reply`].
    pub reply_to: Option<ReplyTo>,
}

#[derive(Debug, Clone, Copy)]
pub struct ReplyTo {
    pub to: ShardId,
    pub call_id: u64,
}

type Handler<T> = Rc<dyn Fn(Incoming<T>)>;
type PeerSender<T> = Rc<ConnectedSender<Envelope<T>>>;

/// The senders of a shard being connected; await [`Connecting::all`] or let
/// them finish in the background with [`Connecting::detach`].
pub struct Connecting {
    tasks: Vec<glommio::Task<()>>,
}

impl Connecting {
    pub async fn all(self) {
        for task in self.tasks {
            task.await;
        }
    }

    pub fn detach(self) {
        for task in self.tasks {
            task.detach();
        }
    }
}

/// This shard's side of the mesh.
pub struct MeshPort<T: Send + 'static> {
    me: ShardId,
    clock: SharedClock,
    pending_calls_max: usize,
    peers: RefCell<Vec<Option<PeerSender<T>>>>,
    pending: RefCell<HashMap<u64, (ShardId, OneshotSender<T>)>>,
    next_call_id: Cell<u64>,
    handler: RefCell<Option<Handler<T>>>,
    /// Times a sender found its channel full (backpressure events).
    full_events: Cell<u64>,
}

impl<T: Send + 'static> MeshPort<T> {
    pub fn new(
        me: ShardId,
        shards: usize,
        clock: SharedClock,
        pending_calls_max: usize,
    ) -> Rc<Self> {
        Rc::new(MeshPort {
            me,
            clock,
            pending_calls_max,
            peers: RefCell::new((0..shards).map(|_| None).collect()),
            pending: RefCell::new(HashMap::new()),
            next_call_id: Cell::new(0),
            handler: RefCell::new(None),
            full_events: Cell::new(0),
        })
    }

    pub fn shard(&self) -> ShardId {
        self.me
    }

    /// Where casts and calls from other shards go. Replies never reach it.
    pub fn set_handler(&self, handler: impl Fn(Incoming<T>) + 'static) {
        *self.handler.borrow_mut() = Some(Rc::new(handler));
    }

    pub fn full_events(&self) -> u64 {
        self.full_events.get()
    }

    /// Connects every end. Each connect waits for the peer to connect its own
    /// end, so each runs as its own task: a shard never waits on a peer that
    /// is down (it gets `PeerGone` until the peer is back).
    pub fn connect(self: &Rc<Self>, ends: ShardEnds<T>) -> Connecting {
        let mut tasks = Vec::new();
        for (j, sender) in ends.to.into_iter().enumerate() {
            if let Some(sender) = sender {
                let port = self.clone();
                tasks.push(glommio::spawn_local(async move {
                    port.install_sender(j, sender).await;
                }));
            }
        }
        for (j, receiver) in ends.from.into_iter().enumerate() {
            if let Some(receiver) = receiver {
                self.spawn_receiver(ShardId(j as u16), receiver);
            }
        }
        Connecting { tasks }
    }

    /// Replaces the channels to a peer that was restarted.
    pub async fn attach(self: &Rc<Self>, ends: PeerEnds<T>) {
        let peer = ends.peer;
        match self.peers.borrow_mut().get_mut(peer.index()) {
            Some(slot) => *slot = None,
            None => return, // not a shard of this mesh
        }
        self.fail_pending_for(peer);
        self.spawn_receiver(peer, ends.from);
        self.install_sender(peer.index(), ends.to).await;
    }

    async fn install_sender(&self, j: usize, sender: SharedSender<Envelope<T>>) {
        let connected = sender.connect().await;
        if let Some(slot) = self.peers.borrow_mut().get_mut(j) {
            *slot = Some(Rc::new(connected));
        }
    }

    fn spawn_receiver(self: &Rc<Self>, peer: ShardId, receiver: SharedReceiver<Envelope<T>>) {
        let port = Rc::downgrade(self);
        glommio::spawn_local(async move {
            let receiver = receiver.connect().await;
            while let Some(envelope) = receiver.recv().await {
                let Some(port) = port.upgrade() else { return };
                port.deliver(envelope);
            }
            // The peer's sender is gone: that shard died or was rewired.
            if let Some(port) = port.upgrade() {
                port.fail_pending_for(peer);
            }
        })
        .detach();
    }

    fn deliver(&self, envelope: Envelope<T>) {
        match envelope {
            Envelope::Reply { call_id, body } => {
                let waiter = self.pending.borrow_mut().remove(&call_id);
                if let Some((_, reply)) = waiter {
                    // The caller may have timed out: then the reply is dropped.
                    let _ = reply.send(body);
                }
            }
            Envelope::Cast { from, body } => self.dispatch(Incoming {
                from,
                body,
                reply_to: None,
            }),
            Envelope::Call {
                from,
                call_id,
                body,
            } => self.dispatch(Incoming {
                from,
                body,
                reply_to: Some(ReplyTo { to: from, call_id }),
            }),
        }
    }

    fn dispatch(&self, incoming: Incoming<T>) {
        let handler = self.handler.borrow().clone();
        if let Some(handler) = handler {
            handler(incoming);
        }
    }

    /// Callers waiting on `peer` learn at once that it is gone.
    fn fail_pending_for(&self, peer: ShardId) {
        let mut pending = self.pending.borrow_mut();
        pending.retain(|_, (to, _)| *to != peer);
    }

    fn sender(&self, to: ShardId) -> Result<PeerSender<T>, MeshError<T>> {
        if to == self.me {
            return Err(MeshError::SelfSend(to));
        }
        self.peers
            .borrow()
            .get(to.index())
            .and_then(Option::clone)
            .ok_or(MeshError::PeerGone(to))
    }

    /// Sends without waiting; a full channel hands the message back.
    pub fn try_cast(&self, to: ShardId, body: T) -> Result<(), MeshError<T>> {
        let sender = self.sender(to)?;
        match sender.try_send(Envelope::Cast {
            from: self.me,
            body,
        }) {
            Ok(()) => Ok(()),
            Err(GlommioError::WouldBlock(ResourceType::Channel(Envelope::Cast {
                body, ..
            }))) => {
                self.full_events.set(self.full_events.get() + 1);
                Err(MeshError::Full(to, body))
            }
            Err(_) => Err(MeshError::PeerGone(to)),
        }
    }

    /// Sends, waiting while the channel is full.
    pub async fn cast(&self, to: ShardId, body: T) -> Result<(), MeshError<T>> {
        let sender = self.sender(to)?;
        self.send_envelope(
            to,
            &sender,
            Envelope::Cast {
                from: self.me,
                body,
            },
        )
        .await
    }

    async fn send_envelope(
        &self,
        to: ShardId,
        sender: &ConnectedSender<Envelope<T>>,
        envelope: Envelope<T>,
    ) -> Result<(), MeshError<T>> {
        match sender.try_send(envelope) {
            Ok(()) => Ok(()),
            Err(GlommioError::WouldBlock(ResourceType::Channel(envelope))) => {
                // Full: wait for room. glommio re-checks the room in the same
                // poll that sends, so several local waiters cannot overfill it.
                self.full_events.set(self.full_events.get() + 1);
                sender
                    .send(envelope)
                    .await
                    .map_err(|_| MeshError::PeerGone(to))
            }
            Err(_) => Err(MeshError::PeerGone(to)),
        }
    }

    /// Sends a request and waits for its reply, up to `timeout`.
    pub async fn call(&self, to: ShardId, body: T, timeout: Duration) -> Result<T, MeshError<T>> {
        let sender = self.sender(to)?;
        if self.pending.borrow().len() >= self.pending_calls_max {
            return Err(MeshError::TooManyPending(self.pending_calls_max));
        }
        let call_id = self.next_call_id.get();
        self.next_call_id.set(call_id.wrapping_add(1));
        let (reply_tx, reply_rx) = oneshot();
        self.pending.borrow_mut().insert(call_id, (to, reply_tx));
        let sent = self
            .send_envelope(
                to,
                &sender,
                Envelope::Call {
                    from: self.me,
                    call_id,
                    body,
                },
            )
            .await;
        if let Err(error) = sent {
            self.pending.borrow_mut().remove(&call_id);
            return Err(error);
        }
        let timer = self.clock.sleep(timeout);
        let outcome = future::or(async { Some(reply_rx.await) }, async {
            timer.await;
            None
        })
        .await;
        match outcome {
            Some(Ok(reply)) => Ok(reply),
            Some(Err(_)) => Err(MeshError::PeerGone(to)),
            None => {
                self.pending.borrow_mut().remove(&call_id);
                Err(MeshError::Timeout(to, timeout))
            }
        }
    }

    /// Answers a call. Waits while the channel back is full.
    pub async fn reply(&self, reply_to: ReplyTo, body: T) -> Result<(), MeshError<T>> {
        let sender = self.sender(reply_to.to)?;
        self.send_envelope(
            reply_to.to,
            &sender,
            Envelope::Reply {
                call_id: reply_to.call_id,
                body,
            },
        )
        .await
    }

    pub fn pending_calls(&self) -> usize {
        self.pending.borrow().len()
    }
}

#[cfg(test)]
mod tests;
