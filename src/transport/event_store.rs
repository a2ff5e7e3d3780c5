//! The SSE streams of the HTTP sessions a shard owns, and the bounded history
//! that lets a client resume one after a dropped connection (SEP-1699).
//!
//! Every POST answered with SSE opens a stream for its request; a GET opens
//! the session's standalone stream (number 0). Each event gets the id
//! `STREAM-SEQ`, unique within the session, so a `Last-Event-ID` names both
//! the stream to resume and where in it. Events are kept while the stream
//! may still be resumed; the connection that shows them is only a sink that
//! can come and go. A sink that cannot keep up is dropped (the client
//! resumes from the history) rather than allowed to hold memory or stall
//! the session.
//!
//! Everything is shard-local and synchronous: routing a frame never waits.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::time::Duration;

use bytes::Bytes;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

use crate::protocol::jsonrpc::Id;
use crate::registry::{IdHasher, SessionId};
use crate::time::SharedClock;

/// The standalone stream a GET opens.
pub const STANDALONE: u64 = 0;

/// Bounds of the store (from `limits.*` in the configuration).
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// Events one stream keeps for resumption; older ones are dropped.
    pub events_per_stream: usize,
    /// Bytes of history the whole shard keeps.
    pub bytes_max: usize,
    /// How long a stream nobody is connected to is kept for resumption.
    pub retained_for: Duration,
    /// The `retry` hint, in ms, sent with each stream's first event.
    pub retry_ms: u64,
    /// Events queued for one connection before it counts as too slow.
    pub sink_capacity: usize,
}

/// Why a stream could not be resumed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    #[error("Last-Event-ID {0:?} is not an event id this server issued")]
    Malformed(String),
    #[error("no stream {0} in this session (it ended, or its history expired)")]
    UnknownStream(u64),
    #[error("event {0:?} is no longer in the stream's history")]
    Evicted(String),
}

struct Event {
    seq: u64,
    bytes: Bytes,
}

struct Stream {
    log: VecDeque<Event>,
    next_seq: u64,
    sink: Option<LocalSender<Bytes>>,
    /// Its request was answered: nothing more will be added.
    finished: bool,
    /// When it last had a sink or got an event (for expiry).
    touched: Duration,
}

#[derive(Default)]
struct SessionStreams {
    next_stream: u64,
    streams: HashMap<u64, Stream>,
    /// The stream each running request answers on.
    by_request: HashMap<Id, u64>,
    /// The other way round: the requests of each request stream, so that
    /// ending a stream costs its own requests, not a scan of every request
    /// running on the session (many, when one session is shared widely).
    requests_of: HashMap<u64, StreamRequests>,
    /// A legacy HTTP+SSE session: every frame goes to the standalone stream.
    legacy: bool,
    /// Connection ends of request streams that a related frame opened
    /// before their POST's connection took them (see `attach_request_stream`).
    unattached: HashMap<u64, LocalReceiver<Bytes>>,
}

/// The request ids a request stream answers: nearly always one (a POST of
/// one request), so that case needs no allocation.
enum StreamRequests {
    One(Id),
    Many(Vec<Id>),
}

impl StreamRequests {
    fn ids(&self) -> &[Id] {
        match self {
            StreamRequests::One(id) => std::slice::from_ref(id),
            StreamRequests::Many(ids) => ids,
        }
    }
}

impl SessionStreams {
    /// Forgets which requests stream `number` answers. An id that a later
    /// POST reused for another stream keeps that stream.
    fn forget_requests(&mut self, number: u64) {
        let Some(requests) = self.requests_of.remove(&number) else {
            return;
        };
        for id in requests.ids() {
            if self.by_request.get(id) == Some(&number) {
                self.by_request.remove(id);
            }
        }
    }
}

/// What became of a frame handed to [`EventStore::route`].
#[derive(Debug, PartialEq, Eq)]
pub enum Routed {
    /// Shown to a connected client (and kept for resumption).
    Delivered,
    /// Kept for a client that will resume.
    Kept,
    /// No stream wanted it.
    Dropped,
}

pub struct EventStore {
    limits: StoreLimits,
    clock: SharedClock,
    sessions: RefCell<HashMap<SessionId, SessionStreams, BuildHasherDefault<IdHasher>>>,
    bytes: Cell<usize>,
    /// Sinks dropped because their client read too slowly.
    slow_sinks: Cell<u64>,
}

impl EventStore {
    pub fn new(limits: StoreLimits, clock: SharedClock) -> Self {
        EventStore {
            limits,
            clock,
            sessions: RefCell::new(HashMap::default()),
            bytes: Cell::new(0),
            slow_sinks: Cell::new(0),
        }
    }

    /// Bytes of history kept on this shard.
    pub fn bytes(&self) -> usize {
        self.bytes.get()
    }

    /// Streams open or kept on this shard.
    pub fn streams(&self) -> usize {
        self.sessions
            .borrow()
            .values()
            .map(|session| session.streams.len())
            .sum()
    }

    pub fn slow_sinks(&self) -> u64 {
        self.slow_sinks.get()
    }

    /// Whether `session` has a stream someone is connected to.
    pub fn has_sink(&self, session: &SessionId) -> bool {
        self.sessions
            .borrow()
            .get(session)
            .is_some_and(|streams| streams.streams.values().any(|stream| stream.sink.is_some()))
    }

    /// Marks `session` as a legacy HTTP+SSE session (2024-11-05): all its
    /// frames, replies included, go to its standalone stream.
    pub fn set_legacy(&self, session: SessionId) {
        self.sessions
            .borrow_mut()
            .entry(session)
            .or_default()
            .legacy = true;
    }

    /// Opens the stream for the requests `ids` of one POST; their related
    /// frames go there. Gives the stream's number and the connection's end.
    /// The first event primes the client with an id and the retry hint.
    pub fn open_request_stream(
        &self,
        session: SessionId,
        ids: &[Id],
    ) -> (u64, LocalReceiver<Bytes>) {
        let number = self.reserve_request_stream(session, ids);
        (number, self.attach_request_stream(session, number))
    }

    /// Numbers a stream for the requests `ids` of one POST without opening
    /// it: the first frame related to them opens it (`route`), else
    /// [`attach_request_stream`](Self::attach_request_stream) does, or
    /// [`take_unused`](Self::take_unused) drops the number when the answer
    /// can go as plain JSON. Most quick requests never need their stream.
    pub fn reserve_request_stream(&self, session: SessionId, ids: &[Id]) -> u64 {
        let mut sessions = self.sessions.borrow_mut();
        let streams = sessions.entry(session).or_default();
        streams.next_stream += 1;
        let number = streams.next_stream;
        for id in ids {
            streams.by_request.insert(id.clone(), number);
        }
        let requests = match ids {
            [] => None,
            [id] => Some(StreamRequests::One(id.clone())),
            ids => Some(StreamRequests::Many(ids.to_vec())),
        };
        if let Some(requests) = requests {
            streams.requests_of.insert(number, requests);
        }
        number
    }

    /// The connection's end of request stream `number`, opened now if no
    /// related frame opened it yet. A session that ended meanwhile gives an
    /// end that is closed at once.
    pub fn attach_request_stream(&self, session: SessionId, number: u64) -> LocalReceiver<Bytes> {
        let mut sessions = self.sessions.borrow_mut();
        let Some(streams) = sessions.get_mut(&session) else {
            return local_channel::new_bounded(1).1;
        };
        if let Some(receiver) = streams.unattached.remove(&number) {
            return receiver;
        }
        self.open_stream(streams, number)
    }

    /// Opens stream `number` with a sink and its priming event; gives the
    /// sink's other end.
    fn open_stream(&self, streams: &mut SessionStreams, number: u64) -> LocalReceiver<Bytes> {
        let (sink, receiver) = local_channel::new_bounded(self.limits.sink_capacity.max(2));
        let _ = sink.try_send(self.priming(number));
        streams.streams.insert(
            number,
            Stream {
                log: VecDeque::new(),
                next_seq: 1,
                sink: Some(sink),
                finished: false,
                touched: self.clock.now(),
            },
        );
        receiver
    }

    /// Opens reserved request stream `number` if nothing did yet (a related
    /// frame came, or a handler closes the stream, before the POST's
    /// connection attached); false when `number` is not a stream of the
    /// session's.
    fn open_reserved(&self, streams: &mut SessionStreams, number: u64) -> bool {
        if streams.streams.contains_key(&number) {
            return true;
        }
        let reserved = number != STANDALONE && streams.requests_of.contains_key(&number);
        if reserved {
            let receiver = self.open_stream(streams, number);
            streams.unattached.insert(number, receiver);
        }
        reserved
    }

    /// Opens (or takes over) the session's standalone stream for a GET
    /// without `Last-Event-ID`. A client keeps one such stream; a new GET
    /// replaces the old connection, which then ends.
    /// Legacy HTTP+SSE clients get no priming event (`prime` false): their
    /// first event must be the endpoint.
    pub fn open_standalone(&self, session: SessionId, prime: bool) -> LocalReceiver<Bytes> {
        let now = self.clock.now();
        let mut sessions = self.sessions.borrow_mut();
        let streams = sessions.entry(session).or_default();
        let (sink, receiver) = local_channel::new_bounded(self.limits.sink_capacity.max(2));
        if prime {
            let _ = sink.try_send(self.priming(STANDALONE));
        }
        let stream = streams.streams.entry(STANDALONE).or_insert_with(|| Stream {
            log: VecDeque::new(),
            next_seq: 1,
            sink: None,
            finished: false,
            touched: now,
        });
        stream.sink = Some(sink);
        stream.touched = now;
        receiver
    }

    /// Resumes the stream `last_event_id` names: the events after it, then
    /// whatever comes next, until the stream ends.
    pub fn resume(
        &self,
        session: SessionId,
        last_event_id: &str,
    ) -> Result<LocalReceiver<Bytes>, ResumeError> {
        let (number, seq) = parse_event_id(last_event_id)
            .ok_or_else(|| ResumeError::Malformed(last_event_id.to_string()))?;
        let now = self.clock.now();
        let mut sessions = self.sessions.borrow_mut();
        let streams = sessions
            .get_mut(&session)
            .ok_or(ResumeError::UnknownStream(number))?;
        let stream = streams
            .streams
            .get_mut(&number)
            .ok_or(ResumeError::UnknownStream(number))?;
        // An event the stream has not had yet was never issued. (This also
        // keeps `seq + 1` below from overflowing: found by fuzz/sse_resume.)
        if seq >= stream.next_seq {
            return Err(ResumeError::Malformed(last_event_id.to_string()));
        }
        // What was missed must all still be here: the event right after the
        // last one seen, or nothing missed at all.
        let oldest = stream
            .log
            .front()
            .map_or(stream.next_seq, |event| event.seq);
        if seq + 1 < oldest {
            return Err(ResumeError::Evicted(last_event_id.to_string()));
        }
        let missed: Vec<Bytes> = stream
            .log
            .iter()
            .filter(|event| event.seq > seq)
            .map(|event| event.bytes.clone())
            .collect();
        let (sink, receiver) =
            local_channel::new_bounded(self.limits.sink_capacity.max(missed.len() + 1));
        for event in missed {
            let _ = sink.try_send(event);
        }
        stream.touched = now;
        if stream.finished {
            // Everything is in the replay: the stream ends after it.
            self.remove_stream(streams, number);
        } else {
            stream.sink = Some(sink);
        }
        Ok(receiver)
    }

    /// Adds a frame for the client: to the stream of the request it relates
    /// to, else to the standalone stream.
    pub fn route(&self, session: SessionId, related: Option<&Id>, frame: Bytes) -> Routed {
        let mut sessions = self.sessions.borrow_mut();
        let Some(streams) = sessions.get_mut(&session) else {
            return Routed::Dropped;
        };
        let number = match related.and_then(|id| streams.by_request.get(id)) {
            Some(number) if !streams.legacy => *number,
            _ => STANDALONE,
        };
        if !self.open_reserved(streams, number) {
            return Routed::Dropped;
        }
        self.append(streams, number, frame)
    }

    /// Adds the answer to the requests of stream `number`; the stream then
    /// ends (for a connected client at once, else once it resumes).
    pub fn finish(&self, session: SessionId, number: u64, reply: Option<Bytes>) -> Routed {
        let mut sessions = self.sessions.borrow_mut();
        let Some(streams) = sessions.get_mut(&session) else {
            return Routed::Dropped;
        };
        streams.forget_requests(number);
        let routed = match reply {
            Some(reply) => self.append(streams, number, reply),
            None => Routed::Kept,
        };
        let Some(stream) = streams.streams.get_mut(&number) else {
            return Routed::Dropped;
        };
        stream.finished = true;
        if stream.sink.take().is_some() && routed == Routed::Delivered {
            // The client has it all; nothing is left to resume. (The
            // session's entry stays: its stream numbers never repeat.)
            self.remove_stream(streams, number);
        }
        routed
    }

    /// Drops reserved request stream `number` if nothing opened it: its
    /// request is then answered as plain JSON instead. False when the
    /// stream is needed (a related frame went into it, or a handler closed
    /// it for the client to resume).
    pub fn take_unused(&self, session: SessionId, number: u64) -> bool {
        let mut sessions = self.sessions.borrow_mut();
        let Some(streams) = sessions.get_mut(&session) else {
            return false;
        };
        if streams.streams.contains_key(&number) {
            return false;
        }
        streams.forget_requests(number);
        true
    }

    /// Ends the connection showing stream `number` without ending the
    /// stream: the client may resume it (a handler asked to close it, or
    /// the connection went away).
    pub fn detach(&self, session: SessionId, number: u64) {
        let now = self.clock.now();
        let mut sessions = self.sessions.borrow_mut();
        let Some(streams) = sessions.get_mut(&session) else {
            return;
        };
        if !self.open_reserved(streams, number) {
            return;
        }
        if let Some(stream) = streams.streams.get_mut(&number) {
            stream.sink = None;
            stream.touched = now;
        }
    }

    /// Closes the connection of the stream request `id` answers on.
    pub fn detach_request(&self, session: SessionId, id: &Id) {
        let number = self
            .sessions
            .borrow()
            .get(&session)
            .and_then(|streams| streams.by_request.get(id).copied());
        if let Some(number) = number {
            self.detach(session, number);
        }
    }

    /// Drops everything of a session that ended.
    pub fn forget(&self, session: &SessionId) {
        if let Some(streams) = self.sessions.borrow_mut().remove(session) {
            let bytes: usize = streams
                .streams
                .values()
                .flat_map(|stream| stream.log.iter())
                .map(|event| event.bytes.len())
                .sum();
            self.bytes.set(self.bytes.get() - bytes);
        }
    }

    /// Drops streams nobody has been connected to for longer than
    /// `retained_for`; gives how many went.
    pub fn expire(&self) -> usize {
        let now = self.clock.now();
        let retained_for = self.limits.retained_for;
        let mut expired = Vec::new();
        let mut sessions = self.sessions.borrow_mut();
        for (session, streams) in sessions.iter() {
            for (number, stream) in &streams.streams {
                if stream.sink.is_none() && now.saturating_sub(stream.touched) >= retained_for {
                    expired.push((*session, *number));
                }
            }
        }
        for (session, number) in &expired {
            if let Some(streams) = sessions.get_mut(session) {
                self.remove_stream(streams, *number);
            }
        }
        expired.len()
    }

    fn append(&self, streams: &mut SessionStreams, number: u64, frame: Bytes) -> Routed {
        let Some(stream) = streams.streams.get_mut(&number) else {
            return Routed::Dropped;
        };
        let seq = stream.next_seq;
        stream.next_seq += 1;
        let event = format_event(number, seq, &frame);
        stream.touched = self.clock.now();
        let delivered = match &stream.sink {
            Some(sink) => match sink.try_send(event.clone()) {
                Ok(()) => true,
                Err(error) => {
                    if matches!(error, glommio::GlommioError::WouldBlock(_)) {
                        self.slow_sinks.set(self.slow_sinks.get() + 1);
                        tracing::debug!(stream = number, "SSE client too slow; it can resume");
                    }
                    stream.sink = None;
                    false
                }
            },
            None => false,
        };
        self.bytes.set(self.bytes.get() + event.len());
        stream.log.push_back(Event { seq, bytes: event });
        while stream.log.len() > self.limits.events_per_stream
            || (self.bytes.get() > self.limits.bytes_max && stream.log.len() > 1)
        {
            if let Some(old) = stream.log.pop_front() {
                self.bytes.set(self.bytes.get() - old.bytes.len());
            }
        }
        if delivered {
            Routed::Delivered
        } else {
            Routed::Kept
        }
    }

    fn remove_stream(&self, streams: &mut SessionStreams, number: u64) {
        streams.unattached.remove(&number);
        if let Some(stream) = streams.streams.remove(&number) {
            let bytes: usize = stream.log.iter().map(|event| event.bytes.len()).sum();
            self.bytes.set(self.bytes.get() - bytes);
        }
        streams.forget_requests(number);
    }

    fn priming(&self, number: u64) -> Bytes {
        Bytes::from(format!(
            "id: {number}-0\nretry: {}\ndata: \n\n",
            self.limits.retry_ms
        ))
    }
}

/// One SSE event carrying a JSON-RPC message (compact JSON has no newlines).
fn format_event(number: u64, seq: u64, frame: &[u8]) -> Bytes {
    let mut event = Vec::with_capacity(frame.len() + 48);
    event.extend_from_slice(format!("id: {number}-{seq}\nevent: message\ndata: ").as_bytes());
    event.extend_from_slice(frame);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

fn parse_event_id(text: &str) -> Option<(u64, u64)> {
    let (stream, seq) = text.trim().split_once('-')?;
    Some((stream.parse().ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::ManualClock;

    fn store(clock: &std::rc::Rc<ManualClock>) -> EventStore {
        EventStore::new(
            StoreLimits {
                events_per_stream: 4,
                bytes_max: 1 << 20,
                retained_for: Duration::from_secs(10),
                retry_ms: 500,
                sink_capacity: 8,
            },
            clock.clone(),
        )
    }

    fn session(n: u8) -> SessionId {
        SessionId::parse(&format!("0000{}", format!("{n:02x}").repeat(16))).expect("valid id")
    }

    async fn drain(receiver: &LocalReceiver<Bytes>) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(Some(event)) = futures_lite::future::poll_once(receiver.recv()).await {
            out.push(String::from_utf8_lossy(&event).into_owned());
        }
        out
    }

    fn run(test: impl std::future::Future<Output = ()> + 'static) {
        crate::sync::run_on_fresh_shard(test);
    }

    #[test]
    fn a_request_stream_primes_then_carries_its_frames_and_reply() {
        run(async {
            let clock = ManualClock::new();
            let store = store(&clock);
            let s = session(1);
            let (number, receiver) = store.open_request_stream(s, &[Id::Int(7)]);
            assert_eq!(number, 1);
            assert_eq!(
                store.route(s, Some(&Id::Int(7)), Bytes::from_static(b"{\"n\":1}")),
                Routed::Delivered
            );
            // Unrelated frames have no standalone stream to go to yet.
            assert_eq!(
                store.route(s, None, Bytes::from_static(b"{}")),
                Routed::Dropped
            );
            assert_eq!(
                store.finish(s, number, Some(Bytes::from_static(b"{\"r\":1}"))),
                Routed::Delivered
            );
            let events = drain(&receiver).await;
            assert_eq!(
                events,
                [
                    "id: 1-0\nretry: 500\ndata: \n\n",
                    "id: 1-1\nevent: message\ndata: {\"n\":1}\n\n",
                    "id: 1-2\nevent: message\ndata: {\"r\":1}\n\n",
                ]
            );
            // Delivered in full: nothing kept, and the sink is closed.
            assert_eq!(store.streams(), 0);
            assert_eq!(store.bytes(), 0);
            assert!(receiver.recv().await.is_none());
        });
    }

    #[test]
    fn a_reserved_stream_nothing_opened_is_dropped_for_a_plain_answer() {
        run(async {
            let clock = ManualClock::new();
            let store = store(&clock);
            let s = session(9);
            let number = store.reserve_request_stream(s, &[Id::Int(1)]);
            assert_eq!(store.streams(), 0, "reserving opens nothing");
            assert!(store.take_unused(s, number));
            // The request's id no longer leads anywhere: a late related
            // frame finds no stream.
            assert_eq!(
                store.route(s, Some(&Id::Int(1)), Bytes::from_static(b"late")),
                Routed::Dropped
            );
            assert_eq!(store.streams(), 0);
            // Stream numbers are not reused.
            assert_eq!(store.reserve_request_stream(s, &[Id::Int(2)]), number + 1);
        });
    }

    #[test]
    fn ending_one_stream_of_a_shared_session_leaves_the_others_requests_routed() {
        run(async {
            let clock = ManualClock::new();
            let store = store(&clock);
            let s = session(11);
            let one = store.reserve_request_stream(s, &[Id::Int(1)]);
            let batch = store.reserve_request_stream(s, &[Id::Int(2), Id::Int(3)]);
            let three = store.reserve_request_stream(s, &[Id::Int(4)]);
            assert!(store.take_unused(s, one));
            assert_eq!(
                store.route(s, Some(&Id::Int(1)), Bytes::from_static(b"gone")),
                Routed::Dropped
            );
            // The batch's second request still leads to its stream.
            let _batch_end = store.attach_request_stream(s, batch);
            assert_eq!(
                store.route(s, Some(&Id::Int(3)), Bytes::from_static(b"{\"p\":3}")),
                Routed::Delivered
            );
            assert_eq!(store.finish(s, batch, None), Routed::Kept);
            // A POST that reuses a running request's id takes it over; ending
            // the older stream does not take it back.
            let reused = store.reserve_request_stream(s, &[Id::Int(4)]);
            assert!(store.take_unused(s, three));
            assert_eq!(
                store.route(s, Some(&Id::Int(4)), Bytes::from_static(b"{\"p\":4}")),
                Routed::Delivered
            );
            assert!(!store.take_unused(s, reused), "a related frame opened it");
        });
    }

    #[test]
    fn a_related_frame_opens_a_reserved_stream_and_the_connection_gets_it_all() {
        run(async {
            let clock = ManualClock::new();
            let store = store(&clock);
            let s = session(10);
            let number = store.reserve_request_stream(s, &[Id::Int(3)]);
            assert_eq!(
                store.route(s, Some(&Id::Int(3)), Bytes::from_static(b"{\"p\":1}")),
                Routed::Delivered
            );
            assert!(!store.take_unused(s, number), "the stream is needed now");
            let receiver = store.attach_request_stream(s, number);
            store.finish(s, number, Some(Bytes::from_static(b"{\"r\":1}")));
            let events = drain(&receiver).await;
            assert_eq!(
                events,
                [
                    format!("id: {number}-0\nretry: 500\ndata: \n\n"),
                    format!("id: {number}-1\nevent: message\ndata: {{\"p\":1}}\n\n"),
                    format!("id: {number}-2\nevent: message\ndata: {{\"r\":1}}\n\n"),
                ]
            );
            assert!(receiver.recv().await.is_none());
            assert_eq!(store.streams(), 0);
        });
    }

    #[test]
    fn a_reserved_stream_its_handler_closed_is_resumable_not_plain() {
        run(async {
            let clock = ManualClock::new();
            let store = store(&clock);
            let s = session(11);
            let number = store.reserve_request_stream(s, &[Id::Int(4)]);
            store.detach_request(s, &Id::Int(4));
            assert!(!store.take_unused(s, number));
            let receiver = store.attach_request_stream(s, number);
            assert_eq!(
                store.finish(s, number, Some(Bytes::from_static(b"reply"))),
                Routed::Kept
            );
            let events = drain(&receiver).await;
            assert_eq!(events.len(), 1, "only the priming event: {events:?}");
            assert!(receiver.recv().await.is_none(), "the connection ends");
            let resumed = store.resume(s, &format!("{number}-0")).expect("resumable");
            let replay = drain(&resumed).await;
            assert_eq!(replay.len(), 1);
            assert!(replay[0].contains("data: reply\n"));
        });
    }

    #[test]
    fn attaching_to_a_session_that_ended_gives_a_closed_end() {
        run(async {
            let clock = ManualClock::new();
            let store = store(&clock);
            let s = session(12);
            let number = store.reserve_request_stream(s, &[Id::Int(5)]);
            store.forget(&s);
            let receiver = store.attach_request_stream(s, number);
            assert!(receiver.recv().await.is_none());
            assert_eq!(store.streams(), 0);
        });
    }

    #[test]
    fn a_detached_stream_keeps_its_events_and_resumes_after_the_last_seen() {
        run(async {
            let clock = ManualClock::new();
            let store = store(&clock);
            let s = session(2);
            let (number, first) = store.open_request_stream(s, &[Id::Str("a".into())]);
            store.route(s, Some(&Id::Str("a".into())), Bytes::from_static(b"1"));
            store.detach(s, number);
            assert!(first.recv().await.is_some(), "priming");
            assert!(first.recv().await.is_some(), "event 1");
            assert!(first.recv().await.is_none(), "the connection ends");
            assert_eq!(
                store.route(s, Some(&Id::Str("a".into())), Bytes::from_static(b"2")),
                Routed::Kept
            );
            assert_eq!(
                store.finish(s, number, Some(Bytes::from_static(b"reply"))),
                Routed::Kept
            );
            let resumed = store.resume(s, "1-1").expect("resumable");
            let events = drain(&resumed).await;
            assert_eq!(events.len(), 2);
            assert!(events[0].starts_with("id: 1-2\n") && events[0].contains("data: 2\n"));
            assert!(events[1].starts_with("id: 1-3\n") && events[1].contains("data: reply\n"));
            assert!(
                resumed.recv().await.is_none(),
                "a finished stream ends after its replay"
            );
            assert!(matches!(
                store.resume(s, "1-1"),
                Err(ResumeError::UnknownStream(1))
            ));
        });
    }

    #[test]
    fn resuming_a_running_stream_attaches_the_new_connection() {
        run(async {
            let clock = ManualClock::new();
            let store = store(&clock);
            let s = session(3);
            let (number, _first) = store.open_request_stream(s, &[Id::Int(1)]);
            store.detach(s, number);
            let resumed = store.resume(s, "1-0").expect("resumable");
            assert_eq!(
                store.route(s, Some(&Id::Int(1)), Bytes::from_static(b"x")),
                Routed::Delivered
            );
            assert_eq!(
                store.finish(s, number, Some(Bytes::from_static(b"y"))),
                Routed::Delivered
            );
            assert_eq!(drain(&resumed).await.len(), 2);
            assert!(resumed.recv().await.is_none());
        });
    }

    #[test]
    fn bad_and_stale_event_ids_are_refused_by_kind() {
        run(async {
            let clock = ManualClock::new();
            let store = store(&clock);
            let s = session(4);
            assert!(matches!(
                store.resume(s, "nonsense"),
                Err(ResumeError::Malformed(_))
            ));
            assert!(matches!(
                store.resume(s, "9-1"),
                Err(ResumeError::UnknownStream(9))
            ));
            let (number, _first) = store.open_request_stream(s, &[Id::Int(1)]);
            store.detach(s, number);
            for n in 0..10u8 {
                store.route(s, Some(&Id::Int(1)), Bytes::from(vec![b'0' + n]));
            }
            // Four events kept (seq 7..=10): after 2 the client missed 3..=6.
            assert!(matches!(
                store.resume(s, "1-2"),
                Err(ResumeError::Evicted(_))
            ));
            let resumed = store.resume(s, "1-6").expect("7.. still kept");
            assert_eq!(drain(&resumed).await.len(), 4);
        });
    }

    #[test]
    fn event_ids_past_the_last_issued_are_refused_not_overflowed() {
        // Found by fuzz/sse_resume: `u64::MAX` as the sequence overflowed
        // `seq + 1`.
        run(async {
            let clock = ManualClock::new();
            let store = store(&clock);
            let s = session(9);
            let (number, _first) = store.open_request_stream(s, &[Id::Int(1)]);
            store.route(s, Some(&Id::Int(1)), Bytes::from_static(b"e"));
            store.detach(s, number);
            for last in ["1-18446744073709551615", "1-2", " 1-9 "] {
                assert!(
                    matches!(store.resume(s, last), Err(ResumeError::Malformed(_))),
                    "{last}"
                );
            }
            let resumed = store.resume(s, "1-1").expect("the last issued event");
            assert_eq!(drain(&resumed).await.len(), 0);
        });
    }

    #[test]
    fn the_standalone_stream_takes_unrelated_frames_and_a_new_get_replaces_the_old() {
        run(async {
            let clock = ManualClock::new();
            let store = store(&clock);
            let s = session(5);
            let first = store.open_standalone(s, true);
            assert_eq!(
                store.route(s, None, Bytes::from_static(b"n1")),
                Routed::Delivered
            );
            // A frame of a request answered with JSON goes there too.
            assert_eq!(
                store.route(s, Some(&Id::Int(3)), Bytes::from_static(b"n2")),
                Routed::Delivered
            );
            let second = store.open_standalone(s, true);
            assert_eq!(drain(&first).await.len(), 3);
            assert!(first.recv().await.is_none(), "the old connection ends");
            store.route(s, None, Bytes::from_static(b"n3"));
            let events = drain(&second).await;
            assert_eq!(events.len(), 2, "priming and n3: {events:?}");
            assert!(events[1].starts_with("id: 0-3\n"));
        });
    }

    #[test]
    fn a_slow_sink_is_dropped_and_its_events_kept() {
        run(async {
            let clock = ManualClock::new();
            let store = store(&clock);
            let s = session(6);
            let (number, receiver) = store.open_request_stream(s, &[Id::Int(1)]);
            for _ in 0..20 {
                store.route(s, Some(&Id::Int(1)), Bytes::from_static(b"e"));
            }
            assert_eq!(store.slow_sinks(), 1);
            assert_eq!(drain(&receiver).await.len(), 8, "what fit in the sink");
            assert!(receiver.recv().await.is_none());
            assert_eq!(
                store.finish(s, number, Some(Bytes::from_static(b"r"))),
                Routed::Kept
            );
        });
    }

    #[test]
    fn unwatched_streams_expire_and_their_bytes_are_released() {
        run(async {
            let clock = ManualClock::new();
            let store = store(&clock);
            let s = session(7);
            let (number, _receiver) = store.open_request_stream(s, &[Id::Int(1)]);
            store.route(s, Some(&Id::Int(1)), Bytes::from_static(b"e"));
            store.detach(s, number);
            assert!(store.bytes() > 0);
            clock.advance(Duration::from_secs(5));
            assert_eq!(store.expire(), 0);
            clock.advance(Duration::from_secs(5));
            assert_eq!(store.expire(), 1);
            assert_eq!((store.streams(), store.bytes()), (0, 0));
            // A watched stream never expires.
            let _watched = store.open_standalone(s, true);
            clock.advance(Duration::from_secs(60));
            assert_eq!(store.expire(), 0);
            store.forget(&s);
            assert_eq!(store.streams(), 0);
        });
    }

    #[test]
    fn legacy_sessions_send_everything_to_the_standalone_stream() {
        run(async {
            let clock = ManualClock::new();
            let store = store(&clock);
            let s = session(8);
            store.set_legacy(s);
            let receiver = store.open_standalone(s, true);
            assert_eq!(
                store.route(s, Some(&Id::Int(1)), Bytes::from_static(b"r")),
                Routed::Delivered
            );
            assert_eq!(drain(&receiver).await.len(), 2);
        });
    }
}
