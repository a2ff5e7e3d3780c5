//! Any sequence of SSE stream operations and any `Last-Event-ID`s against
//! one shard's event store (small bounds, a manual clock): nothing panics,
//! no stream keeps more than its bound, the byte count never wraps, and once
//! every session is forgotten nothing is left.
//!
//! Each input is a program: one byte picks an operation, the next bytes are
//! its operands (a missing byte reads as 0).
#![no_main]

use std::time::Duration;

use bytes::Bytes;
use glommio::channels::local_channel::LocalReceiver;
use glommio::{LocalExecutor, LocalExecutorBuilder};
use libfuzzer_sys::fuzz_target;
use shardmcp::ids::ShardId;
use shardmcp::protocol::jsonrpc::Id;
use shardmcp::registry::SessionId;
use shardmcp::time::ManualClock;
use shardmcp::transport::event_store::{EventStore, StoreLimits};

const SESSIONS: u8 = 3;
const EVENTS_PER_STREAM: usize = 4;
const BYTES_MAX: usize = 512;

thread_local! {
    // One shard for the whole run: an io_uring per input would be slow.
    static SHARD: LocalExecutor = LocalExecutorBuilder::default()
        .io_memory(1 << 16)
        .make()
        .expect("a glommio executor");
}

struct Program<'a>(&'a [u8]);

impl Program<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        *first
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |n, _| n << 8 | u64::from(self.byte()))
    }

    /// A length byte, then that many bytes.
    fn bytes(&mut self) -> &[u8] {
        let len = usize::from(self.byte()).min(self.0.len());
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        taken
    }

    fn session(&mut self) -> SessionId {
        SessionId::new(ShardId(0), u128::from(self.byte() % SESSIONS))
    }

    fn id(&mut self) -> Id {
        match self.byte() % 3 {
            0 => Id::Int(i64::from(self.byte() % 4)),
            1 => Id::Str(format!("r{}", self.byte() % 4).into()),
            _ => Id::Uint(u64::MAX - u64::from(self.byte() % 2)),
        }
    }
}

async fn drain(receiver: &LocalReceiver<Bytes>) -> usize {
    let mut events = 0;
    while let Some(Some(event)) = futures_lite::future::poll_once(receiver.recv()).await {
        assert!(event.starts_with(b"id: "));
        events += 1;
    }
    events
}

async fn run(data: &[u8]) {
    let clock = ManualClock::new();
    let store = EventStore::new(
        StoreLimits {
            events_per_stream: EVENTS_PER_STREAM,
            bytes_max: BYTES_MAX,
            retained_for: Duration::from_secs(10),
            retry_ms: 500,
            sink_capacity: 4,
        },
        clock.clone(),
    );
    let mut receivers: Vec<LocalReceiver<Bytes>> = Vec::new();
    let mut program = Program(data);
    while !program.0.is_empty() {
        match program.byte() % 11 {
            0 => {
                let session = program.session();
                let ids: Vec<Id> = (0..program.byte() % 3).map(|_| program.id()).collect();
                let (number, receiver) = store.open_request_stream(session, &ids);
                assert!(number > 0);
                receivers.push(receiver);
            }
            1 => {
                let session = program.session();
                let prime = program.byte() & 1 == 1;
                receivers.push(store.open_standalone(session, prime));
            }
            2 => {
                let session = program.session();
                let related = (program.byte() & 1 == 1).then(|| program.id());
                let frame = Bytes::copy_from_slice(program.bytes());
                store.route(session, related.as_ref(), frame);
            }
            3 => {
                let session = program.session();
                let number = u64::from(program.byte() % 6);
                let reply =
                    (program.byte() & 1 == 1).then(|| Bytes::copy_from_slice(program.bytes()));
                store.finish(session, number, reply);
            }
            4 => {
                let session = program.session();
                store.detach(session, u64::from(program.byte() % 6));
            }
            5 => {
                let session = program.session();
                let id = program.id();
                store.detach_request(session, &id);
            }
            6 => {
                // Any header value at all.
                let session = program.session();
                let last = String::from_utf8_lossy(program.bytes()).into_owned();
                if let Ok(receiver) = store.resume(session, &last) {
                    receivers.push(receiver);
                }
            }
            7 => {
                // An id of the server's shape, with any numbers in it.
                let session = program.session();
                let number = match program.byte() {
                    n @ 0..=250 => u64::from(n % 6),
                    _ => program.u64(),
                };
                let seq = match program.byte() {
                    n @ 0..=250 => u64::from(n % 12),
                    _ => program.u64(),
                };
                if let Ok(receiver) = store.resume(session, &format!("{number}-{seq}")) {
                    assert!(drain(&receiver).await <= EVENTS_PER_STREAM);
                    receivers.push(receiver);
                }
            }
            8 => {
                clock.advance(Duration::from_secs(u64::from(program.byte() % 16)));
                store.expire();
            }
            9 => {
                // A client reads what it has, or goes away.
                let index = usize::from(program.byte());
                if !receivers.is_empty() {
                    let receiver = receivers.swap_remove(index % receivers.len());
                    drain(&receiver).await;
                    if program.byte() & 1 == 0 {
                        receivers.push(receiver);
                    }
                }
            }
            _ => {
                let session = program.session();
                store.forget(&session);
            }
        }
        assert!(
            store.bytes() <= 1 << 20,
            "byte count wrapped: {}",
            store.bytes()
        );
    }
    for receiver in &receivers {
        drain(receiver).await;
    }
    for n in 0..SESSIONS {
        store.forget(&SessionId::new(ShardId(0), u128::from(n)));
    }
    assert_eq!((store.streams(), store.bytes()), (0, 0));
}

fuzz_target!(|data: &[u8]| {
    SHARD.with(|shard| shard.run(run(data)));
});
