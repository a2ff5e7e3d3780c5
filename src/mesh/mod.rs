//! The mesh: one bounded lock-free queue for every ordered pair of shards,
//! with cast and call/reply on top. It knows nothing of MCP; messages are
//! whatever `T` the runtime sends.
//!
//! Channel choice, measured in `benches/mesh.rs` (README has the figures):
//! crossbeam `ArrayQueue`s polled by a task on the receiving shard, with a
//! glommio shared channel only as a doorbell to wake a parked shard. glommio's
//! shared channel alone, for data, costs a notification round through its
//! reactor on every message: 6.5 µs per round trip even with spinning
//! executors, against under 1 µs for the polled queues. A queue alone cannot
//! wake a sleeping shard, hence the doorbell:
//!
//! - While messages flow, the receiving shard's poller drains its queues
//!   between other tasks (it yields after each pass) and keeps polling for
//!   `spin` after the last message.
//! - Then it parks: it raises `sleeping` in its inbox, checks the queues once
//!   more, and waits for a doorbell. A sender that finds `sleeping` raised
//!   rings the receiver's doorbell (an eventfd wake-up through glommio).
//!   Both sides order the flag against the queue with SeqCst fences, so a
//!   message is either seen by the re-check or rings the bell.
//! - A park also ends after `park_max` at the latest: a safety net, not the
//!   wake-up path.
//!
//! Bounds: each queue holds `capacity` messages. `try_cast` hands the message
//! back in [`MeshError::Full`]; `cast`, `call` and `reply` wait for room.
//! Outstanding calls are capped by `pending_calls_max`.
//!
//! A dead shard's pairs are marked closed by the node ([`MeshWiring::close_shard`]),
//! so callers waiting on it fail at once even if the dead shard never dropped
//! its ends. A restarted shard gets fresh pairs: the node builds them with
//! [`MeshWiring::rewire`] and hands the peers their ends, which they
//! [`MeshPort::attach`].

#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use futures_lite::future;
use glommio::channels::shared_channel::{self, ConnectedSender, SharedReceiver, SharedSender};

use crate::ids::ShardId;
use crate::sync::{oneshot, Event, OneshotSender};
use crate::time::SharedClock;

/// What travels on a mesh queue.
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

/// One ordered pair's queue.
pub struct Pair<T> {
    queue: ArrayQueue<Envelope<T>>,
    /// Set when either end's shard is gone: nothing more will be read or sent.
    closed: AtomicBool,
}

impl<T> Pair<T> {
    fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Pair {
            queue: ArrayQueue::new(capacity.max(1)),
            closed: AtomicBool::new(false),
        })
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// A receiving shard's flag: raised while its poller is parked.
#[derive(Default)]
pub struct Inbox {
    sleeping: AtomicBool,
}

/// The sending half of one pair, as the sending shard holds it.
pub struct OutLink<T: Send + 'static> {
    pair: Arc<Pair<T>>,
    inbox: Arc<Inbox>,
    bell: SharedSender<()>,
}

/// The receiving half of one pair, as the receiving shard holds it.
pub struct InLink<T: Send + 'static> {
    pair: Arc<Pair<T>>,
    bell: SharedReceiver<()>,
}

/// One shard's ends of the mesh: index `j` is the link to (or from) shard `j`.
pub struct ShardEnds<T: Send + 'static> {
    pub shard: ShardId,
    pub to: Vec<Option<OutLink<T>>>,
    pub from: Vec<Option<InLink<T>>>,
    inbox: Arc<Inbox>,
}

/// The ends a surviving shard needs to talk to a restarted `peer`.
pub struct PeerEnds<T: Send + 'static> {
    pub peer: ShardId,
    pub to: OutLink<T>,
    pub from: InLink<T>,
}

/// The node's view of the mesh: every pair and inbox, to close a dead
/// shard's pairs and to wire a restarted shard in again.
pub struct MeshWiring<T: Send + 'static> {
    shards: usize,
    capacity: usize,
    inboxes: Vec<Arc<Inbox>>,
    /// `pairs[i][j]`: the queue from shard i to shard j.
    pairs: Vec<Vec<Option<Arc<Pair<T>>>>>,
}

fn link<T: Send + 'static>(
    pair: Arc<Pair<T>>,
    receiver_inbox: Arc<Inbox>,
) -> (OutLink<T>, InLink<T>) {
    // The doorbell carries only wake-ups; one pending ring is enough.
    let (bell_tx, bell_rx) = shared_channel::new_bounded(1);
    (
        OutLink {
            pair: pair.clone(),
            inbox: receiver_inbox,
            bell: bell_tx,
        },
        InLink {
            pair,
            bell: bell_rx,
        },
    )
}

impl<T: Send + 'static> MeshWiring<T> {
    /// The full mesh for `shards` shards, and each shard's ends.
    pub fn full(shards: usize, capacity: usize) -> (MeshWiring<T>, Vec<ShardEnds<T>>) {
        let inboxes: Vec<Arc<Inbox>> = (0..shards).map(|_| Arc::default()).collect();
        let mut ends: Vec<ShardEnds<T>> = (0..shards)
            .map(|i| ShardEnds {
                shard: ShardId(i as u16),
                to: (0..shards).map(|_| None).collect(),
                from: (0..shards).map(|_| None).collect(),
                inbox: inboxes[i].clone(),
            })
            .collect();
        let mut pairs = vec![vec![None; shards]; shards];
        for i in 0..shards {
            for j in (0..shards).filter(|&j| j != i) {
                let pair = Pair::new(capacity);
                pairs[i][j] = Some(pair.clone());
                let (out, inbound) = link(pair, inboxes[j].clone());
                ends[i].to[j] = Some(out);
                ends[j].from[i] = Some(inbound);
            }
        }
        let wiring = MeshWiring {
            shards,
            capacity,
            inboxes,
            pairs,
        };
        (wiring, ends)
    }

    /// Marks every pair to and from `shard` closed: its peers stop sending to
    /// it and fail the calls waiting on it.
    pub fn close_shard(&self, shard: ShardId) {
        let k = shard.index();
        for j in 0..self.shards {
            for pair in [&self.pairs[k][j], &self.pairs[j][k]].into_iter().flatten() {
                pair.close();
            }
        }
    }

    /// Fresh pairs for a restarted shard `k`: its own ends, and each peer's.
    pub fn rewire(&mut self, shard: ShardId) -> (ShardEnds<T>, Vec<(ShardId, PeerEnds<T>)>) {
        self.close_shard(shard);
        let k = shard.index();
        self.inboxes[k] = Arc::default();
        let mut own = ShardEnds {
            shard,
            to: (0..self.shards).map(|_| None).collect(),
            from: (0..self.shards).map(|_| None).collect(),
            inbox: self.inboxes[k].clone(),
        };
        let mut peers = Vec::with_capacity(self.shards.saturating_sub(1));
        for j in (0..self.shards).filter(|&j| j != k) {
            let k_to_j = Pair::new(self.capacity);
            let j_to_k = Pair::new(self.capacity);
            self.pairs[k][j] = Some(k_to_j.clone());
            self.pairs[j][k] = Some(j_to_k.clone());
            let (k_out, j_in) = link(k_to_j, self.inboxes[j].clone());
            let (j_out, k_in) = link(j_to_k, self.inboxes[k].clone());
            own.to[j] = Some(k_out);
            own.from[j] = Some(k_in);
            peers.push((
                ShardId(j as u16),
                PeerEnds {
                    peer: shard,
                    to: j_out,
                    from: j_in,
                },
            ));
        }
        (own, peers)
    }
}

/// The full mesh for `shards` shards (see [`MeshWiring::full`]).
pub fn full<T: Send + 'static>(
    shards: usize,
    capacity: usize,
) -> (MeshWiring<T>, Vec<ShardEnds<T>>) {
    MeshWiring::full(shards, capacity)
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError<T> {
    #[error("mesh queue to shard {0} is full")]
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

/// Polling and parking of a shard's mesh poller.
#[derive(Debug, Clone, Copy)]
pub struct PollPolicy {
    /// Keep polling this long after the last message before parking.
    pub spin: Duration,
    /// Longest park before the poller looks again on its own.
    pub park_max: Duration,
    /// Messages taken from one queue per pass, so one busy peer cannot
    /// starve the others.
    pub batch_max: usize,
}

impl Default for PollPolicy {
    fn default() -> Self {
        PollPolicy {
            spin: Duration::from_micros(50),
            park_max: Duration::from_millis(10),
            batch_max: 256,
        }
    }
}

enum PushError<T> {
    /// The queue is full: the envelope comes back.
    Full(Envelope<T>),
    Failed(MeshError<T>),
}

/// How often the shard's deadline sweeper fails calls past their time,
/// while calls are pending: a call's timeout is kept to within this.
pub const CALL_SWEEP_INTERVAL: Duration = Duration::from_millis(10);

/// A call's reply was not there by its deadline.
struct Expired;

/// A call waiting for its reply.
struct Pending<T> {
    to: ShardId,
    /// Taken when the call is settled.
    reply: Option<OneshotSender<Result<T, Expired>>>,
    deadline: Duration,
}

/// How long a sender waits between looks at a full queue.
const FULL_QUEUE_BACKOFF: Duration = Duration::from_micros(20);

struct Outgoing<T: Send + 'static> {
    pair: Arc<Pair<T>>,
    inbox: Arc<Inbox>,
    /// Connected once the receiving shard has connected its end.
    bell: Rc<RefCell<Option<ConnectedSender<()>>>>,
}

/// This shard's side of the mesh.
pub struct MeshPort<T: Send + 'static> {
    me: ShardId,
    clock: SharedClock,
    policy: PollPolicy,
    pending_calls_max: usize,
    inbox: RefCell<Arc<Inbox>>,
    outgoing: RefCell<Vec<Option<Rc<Outgoing<T>>>>>,
    incoming: RefCell<Vec<Option<Arc<Pair<T>>>>>,
    pending: RefCell<HashMap<u64, Pending<T>>>,
    /// Rung when a call is made while none was pending: wakes the deadline
    /// sweeper, which sleeps while there is nothing to watch.
    sweeper_bell: Rc<LocalBell>,
    next_call_id: Cell<u64>,
    handler: RefCell<Option<Handler<T>>>,
    /// Rung by the doorbell tasks; the parked poller waits on it.
    doorbell: Rc<LocalBell>,
    /// Times a sender found a queue full (backpressure events).
    full_events: Cell<u64>,
}

impl<T: Send + 'static> MeshPort<T> {
    pub fn new(
        me: ShardId,
        shards: usize,
        clock: SharedClock,
        pending_calls_max: usize,
    ) -> Rc<Self> {
        Self::with_policy(me, shards, clock, pending_calls_max, PollPolicy::default())
    }

    pub fn with_policy(
        me: ShardId,
        shards: usize,
        clock: SharedClock,
        pending_calls_max: usize,
        policy: PollPolicy,
    ) -> Rc<Self> {
        Rc::new(MeshPort {
            me,
            clock,
            policy,
            pending_calls_max,
            inbox: RefCell::new(Arc::default()),
            outgoing: RefCell::new((0..shards).map(|_| None).collect()),
            incoming: RefCell::new((0..shards).map(|_| None).collect()),
            pending: RefCell::new(HashMap::new()),
            sweeper_bell: Rc::default(),
            next_call_id: Cell::new(0),
            handler: RefCell::new(None),
            doorbell: Rc::default(),
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

    /// Installs this shard's ends and starts its poller. Queues work at once;
    /// doorbells connect in the background (each waits for its peer), and
    /// until one does the poller's `park_max` covers for it.
    pub fn connect(self: &Rc<Self>, ends: ShardEnds<T>) -> Connecting {
        *self.inbox.borrow_mut() = ends.inbox;
        let mut connected = Vec::new();
        for (j, out) in ends.to.into_iter().enumerate() {
            if let Some(out) = out {
                connected.push(self.install_outgoing(j, out));
            }
        }
        for (j, inbound) in ends.from.into_iter().enumerate() {
            if let Some(inbound) = inbound {
                connected.push(self.install_incoming(j, inbound));
            }
        }
        glommio::spawn_local(poll_loop(Rc::downgrade(self))).detach();
        glommio::spawn_local(sweep_call_deadlines(Rc::downgrade(self))).detach();
        Connecting { connected }
    }

    /// Replaces the pairs to and from a peer that was restarted.
    pub fn attach(self: &Rc<Self>, ends: PeerEnds<T>) {
        let peer = ends.peer.index();
        if peer >= self.outgoing.borrow().len() {
            return; // not a shard of this mesh
        }
        self.fail_pending_for(ends.peer);
        self.install_outgoing(peer, ends.to);
        self.install_incoming(peer, ends.from);
    }

    fn install_outgoing(&self, j: usize, out: OutLink<T>) -> Event {
        let bell = Rc::new(RefCell::new(None));
        if let Some(slot) = self.outgoing.borrow_mut().get_mut(j) {
            *slot = Some(Rc::new(Outgoing {
                pair: out.pair,
                inbox: out.inbox,
                bell: bell.clone(),
            }));
        }
        let connected = Event::new();
        let done = connected.clone();
        let sender = out.bell;
        glommio::spawn_local(async move {
            *bell.borrow_mut() = Some(sender.connect().await);
            done.set();
        })
        .detach();
        connected
    }

    fn install_incoming(self: &Rc<Self>, j: usize, inbound: InLink<T>) -> Event {
        if let Some(slot) = self.incoming.borrow_mut().get_mut(j) {
            *slot = Some(inbound.pair);
        }
        let port = Rc::downgrade(self);
        let connected = Event::new();
        let done = connected.clone();
        let bell = inbound.bell;
        glommio::spawn_local(async move {
            let bell = bell.connect().await;
            done.set();
            while bell.recv().await.is_some() {
                let Some(port) = port.upgrade() else { return };
                port.doorbell.ring();
            }
        })
        .detach();
        connected
    }

    /// Takes up to `batch_max` messages from each incoming queue and delivers
    /// them. Returns how many were delivered.
    fn drain_incoming(&self) -> usize {
        let shards = self.incoming.borrow().len();
        let mut delivered = 0;
        for j in 0..shards {
            let Some(pair) = self.incoming.borrow().get(j).and_then(Option::clone) else {
                continue;
            };
            for _ in 0..self.policy.batch_max {
                match pair.queue.pop() {
                    Some(envelope) => {
                        self.deliver(envelope);
                        delivered += 1;
                    }
                    None => break,
                }
            }
            if pair.is_closed() && pair.queue.is_empty() {
                self.incoming.borrow_mut()[j] = None;
                self.fail_pending_for(ShardId(j as u16));
            }
        }
        delivered
    }

    fn has_incoming(&self) -> bool {
        self.incoming
            .borrow()
            .iter()
            .flatten()
            .any(|pair| !pair.queue.is_empty() || pair.is_closed())
    }

    fn deliver(&self, envelope: Envelope<T>) {
        match envelope {
            Envelope::Reply { call_id, body } => {
                let waiter = self.pending.borrow_mut().remove(&call_id);
                if let Some(reply) = waiter.and_then(|mut waiter| waiter.reply.take()) {
                    // The caller may have gone: then the reply is dropped.
                    let _ = reply.send(Ok(body));
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
        self.pending
            .borrow_mut()
            .retain(|_, pending| pending.to != peer);
    }

    fn outgoing(&self, to: ShardId) -> Result<Rc<Outgoing<T>>, MeshError<T>> {
        if to == self.me {
            return Err(MeshError::SelfSend(to));
        }
        let out = self
            .outgoing
            .borrow()
            .get(to.index())
            .and_then(Option::clone)
            .ok_or(MeshError::PeerGone(to))?;
        if out.pair.is_closed() {
            return Err(MeshError::PeerGone(to));
        }
        Ok(out)
    }

    /// Pushes without waiting; hands the envelope back when the queue is full.
    fn push(&self, to: ShardId, envelope: Envelope<T>) -> Result<(), PushError<T>> {
        let out = self.outgoing(to).map_err(PushError::Failed)?;
        match out.pair.queue.push(envelope) {
            Ok(()) => {
                // Pairs with the poller's fence: either it sees this message in
                // its re-check, or we see it sleeping and ring.
                fence(Ordering::SeqCst);
                if out.inbox.sleeping.load(Ordering::SeqCst) {
                    if let Some(bell) = out.bell.borrow().as_ref() {
                        let _ = bell.try_send(()); // full: a ring is pending already
                    }
                }
                Ok(())
            }
            Err(envelope) => {
                self.full_events.set(self.full_events.get() + 1);
                Err(PushError::Full(envelope))
            }
        }
    }

    /// Pushes, waiting while the queue is full (backpressure), until the peer
    /// is gone.
    async fn push_waiting(
        &self,
        to: ShardId,
        mut envelope: Envelope<T>,
    ) -> Result<(), MeshError<T>> {
        loop {
            match self.push(to, envelope) {
                Ok(()) => return Ok(()),
                Err(PushError::Full(back)) => {
                    envelope = back;
                    self.clock.sleep(FULL_QUEUE_BACKOFF).await;
                }
                Err(PushError::Failed(error)) => return Err(error),
            }
        }
    }

    /// Sends without waiting; a full queue hands the message back.
    pub fn try_cast(&self, to: ShardId, body: T) -> Result<(), MeshError<T>> {
        match self.push(
            to,
            Envelope::Cast {
                from: self.me,
                body,
            },
        ) {
            Ok(()) => Ok(()),
            Err(PushError::Full(Envelope::Cast { body, .. })) => Err(MeshError::Full(to, body)),
            Err(PushError::Full(_)) => Err(MeshError::PeerGone(to)), // not reached: we pushed a cast
            Err(PushError::Failed(error)) => Err(error),
        }
    }

    /// Sends, waiting while the queue is full.
    pub async fn cast(&self, to: ShardId, body: T) -> Result<(), MeshError<T>> {
        self.push_waiting(
            to,
            Envelope::Cast {
                from: self.me,
                body,
            },
        )
        .await
    }

    /// Sends a request and waits for its reply, up to `timeout` (give or
    /// take one [`CALL_SWEEP_INTERVAL`]: the shard's deadline sweeper fails
    /// calls past their time, so no call arms a timer of its own).
    pub async fn call(&self, to: ShardId, body: T, timeout: Duration) -> Result<T, MeshError<T>> {
        self.outgoing(to)?;
        if self.pending.borrow().len() >= self.pending_calls_max {
            return Err(MeshError::TooManyPending(self.pending_calls_max));
        }
        let call_id = self.next_call_id.get();
        self.next_call_id.set(call_id.wrapping_add(1));
        let (reply_tx, reply_rx) = oneshot();
        let deadline = self.clock.now() + timeout;
        let was_empty = {
            let mut pending = self.pending.borrow_mut();
            pending.insert(
                call_id,
                Pending {
                    to,
                    reply: Some(reply_tx),
                    deadline,
                },
            );
            pending.len() == 1
        };
        if was_empty {
            self.sweeper_bell.ring();
        }
        let envelope = Envelope::Call {
            from: self.me,
            call_id,
            body,
        };
        let outcome = future::or(
            async {
                match self.push_waiting(to, envelope).await {
                    Err(error) => Err(error),
                    // Sent: the reply (or the sweeper) settles it.
                    Ok(()) => future::pending().await,
                }
            },
            async {
                match reply_rx.await {
                    Ok(Ok(body)) => Ok(body),
                    Ok(Err(Expired)) => Err(MeshError::Timeout(to, timeout)),
                    Err(_) => Err(MeshError::PeerGone(to)),
                }
            },
        )
        .await;
        self.pending.borrow_mut().remove(&call_id);
        outcome
    }

    /// Fails the calls whose deadline has passed. Gives how many.
    fn expire_calls(&self) -> usize {
        let now = self.clock.now();
        let mut expired = Vec::new();
        self.pending.borrow_mut().retain(|_, pending| {
            if pending.deadline > now {
                return true;
            }
            expired.push(pending.reply.take());
            false
        });
        let count = expired.len();
        for reply in expired.into_iter().flatten() {
            let _ = reply.send(Err(Expired));
        }
        count
    }

    /// Answers a call. Waits while the queue back is full.
    pub async fn reply(&self, reply_to: ReplyTo, body: T) -> Result<(), MeshError<T>> {
        self.push_waiting(
            reply_to.to,
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

    /// Messages waiting in the queue to `to` (for metrics).
    pub fn queue_depth(&self, to: ShardId) -> usize {
        self.outgoing(to)
            .map(|out| out.pair.queue.len())
            .unwrap_or(0)
    }
}

impl<T: Send + 'static> Drop for MeshPort<T> {
    /// A shard that stops cleanly closes its pairs and rings its peers, so a
    /// parked peer learns at once. (A shard killed by an escaped panic never
    /// gets here; the node closes its pairs instead.)
    fn drop(&mut self) {
        for pair in self.incoming.get_mut().iter().flatten() {
            pair.close();
        }
        for out in self.outgoing.get_mut().iter().flatten() {
            out.pair.close();
            if let Some(bell) = out.bell.borrow().as_ref() {
                let _ = bell.try_send(());
            }
        }
        // Wake our own poller and deadline sweeper so they see the port is
        // gone and end.
        self.doorbell.ring();
        self.sweeper_bell.ring();
    }
}

/// The local side of a shard's doorbells: a flag and the parked poller's waker.
#[derive(Default)]
struct LocalBell {
    rung: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl LocalBell {
    fn ring(&self) {
        self.rung.set(true);
        let waker = self.waker.borrow_mut().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    async fn rung(&self) {
        future::poll_fn(|cx| {
            if self.rung.get() {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// The shard's mesh poller: drains incoming queues while messages flow,
/// spins for `policy.spin` after the last one, then parks until a doorbell
/// rings or `policy.park_max` passes.
async fn poll_loop<T: Send + 'static>(port: Weak<MeshPort<T>>) {
    let mut last_message = Instant::now();
    loop {
        let Some(strong) = port.upgrade() else { return };
        if strong.drain_incoming() > 0 {
            last_message = Instant::now();
        } else if last_message.elapsed() >= strong.policy.spin {
            // Park without holding the port: a shard that stops while its
            // poller sleeps must still drop its port (closing its pairs).
            let bell = strong.doorbell.clone();
            let inbox = strong.inbox.borrow().clone();
            bell.rung.set(false);
            inbox.sleeping.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if !strong.has_incoming() {
                let timer = strong.clock.sleep(strong.policy.park_max);
                drop(strong);
                future::or(bell.rung(), timer).await;
            }
            inbox.sleeping.store(false, Ordering::SeqCst);
            last_message = Instant::now();
            continue;
        }
        drop(strong);
        // Let the shard's other tasks run between passes.
        future::yield_now().await;
    }
}

/// Fails the port's calls past their deadline, one sweep every
/// [`CALL_SWEEP_INTERVAL`] while any call is pending; sleeps otherwise.
/// One sweeper per shard replaces a timer per call, which glommio would put
/// back into its reactor's tree every time the calling task woke.
async fn sweep_call_deadlines<T: Send + 'static>(port: Weak<MeshPort<T>>) {
    loop {
        let Some(strong) = port.upgrade() else { return };
        if strong.pending_calls() == 0 {
            let bell = strong.sweeper_bell.clone();
            bell.rung.set(false);
            drop(strong);
            bell.rung().await;
            continue;
        }
        let nap = strong.clock.sleep(CALL_SWEEP_INTERVAL);
        drop(strong);
        nap.await;
        let Some(strong) = port.upgrade() else { return };
        strong.expire_calls();
    }
}

/// The doorbells of a shard being connected. Queues work at once; await
/// [`Connecting::all`] to know every doorbell is up, or just drop it.
pub struct Connecting {
    connected: Vec<Event>,
}

impl Connecting {
    pub async fn all(self) {
        for event in self.connected {
            event.wait().await;
        }
    }
}
