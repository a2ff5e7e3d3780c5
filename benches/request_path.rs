//! The in-process request path, frame in → frame out: decode, dispatch,
//! handler, encode, on the embedded demo server, per method and era.
//!
//! - handshake era: one initialized session (2025-11-25) answers ping,
//!   tools/list, tools/call (echo; add, whose arguments and structured result
//!   are schema-checked), resources/read, prompts/get, completion/complete;
//! - 2026-07-28: enveloped requests (tools/call echo, server/discover) on one
//!   stateless session, and tools/call echo on a fresh session per request,
//!   as the HTTP listener serves them;
//! - the JSON-RPC codec alone: decoding a tools/call, encoding its result.
//!
//! A counting allocator (over mimalloc, the binary's allocator) then prints
//! allocations and bytes per request for every case, with the thread's CPU
//! time per request, which a busy shared machine disturbs far less than the
//! wall clock criterion reads. No transport, no I/O.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use serde_json::{json, Value};

use shardmcp::protocol::jsonrpc::{self, Id};
use shardmcp::protocol::request_state::StateKey;
use shardmcp::server::{demo, LiveServer};
use shardmcp::session::{McpSession, SessionLimits};
use shardmcp::time::SystemClock;

/// Counts every allocation (and reallocation) made on this thread: the
/// executor runs the requests here, and helper threads must not blur the
/// figures. Bytes are the sizes asked for (a realloc counts its new size).
struct Counting;

thread_local! {
    static COUNTS: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

fn count(bytes: usize) {
    // try_with: allocations during thread teardown must not panic.
    let _ = COUNTS.try_with(|counts| {
        let (allocs, total) = counts.get();
        counts.set((allocs + 1, total + bytes as u64));
    });
}

fn counts() -> (u64, u64) {
    COUNTS.try_with(Cell::get).unwrap_or((0, 0))
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        mimalloc::MiMalloc.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        mimalloc::MiMalloc.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        mimalloc::MiMalloc.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        mimalloc::MiMalloc.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn executor() -> LocalExecutor {
    let placement = match shardmcp::runtime::available_cpus().first() {
        Some(&cpu) => Placement::Fixed(cpu),
        None => Placement::Unbound,
    };
    LocalExecutorBuilder::new(placement)
        .io_memory(1 << 20)
        .make()
        .expect("executor")
}

fn frame(value: Value) -> Vec<u8> {
    serde_json::to_vec(&value).expect("frame")
}

fn request(method: &str, params: Value) -> Vec<u8> {
    frame(json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}))
}

/// A 2026-07-28 request: the envelope in `params._meta`, as a client sends it.
fn modern(method: &str, mut params: Value) -> Vec<u8> {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"}
    });
    request(method, params)
}

fn echo_params() -> Value {
    json!({"name": "echo", "arguments": {"text": "hello, world"}})
}

/// What one measured request does.
enum Work {
    /// A frame through a session that lives across requests.
    Session(Rc<McpSession>, Vec<u8>),
    /// A frame through a session made for it alone (HTTP's 2026-07-28 path).
    FreshSession(Rc<LiveServer>, StateKey, Vec<u8>),
    /// `jsonrpc::decode` alone.
    Decode(Vec<u8>),
    /// `jsonrpc::encode_result` alone.
    Encode(Id, Value),
}

struct Case {
    name: &'static str,
    work: Work,
}

impl Case {
    async fn once(&self) {
        match &self.work {
            Work::Session(session, frame) => {
                black_box(session.handle_frame(frame).await);
            }
            Work::FreshSession(server, key, frame) => {
                let session = McpSession::new(
                    server.clone(),
                    SessionLimits::default(),
                    SystemClock::shared(),
                    key.clone(),
                );
                let outbox = session.take_outbox();
                black_box(session.handle_frame(frame).await);
                drop(outbox);
            }
            Work::Decode(frame) => {
                let _ = black_box(jsonrpc::decode(black_box(frame), 4 << 20));
            }
            Work::Encode(id, result) => {
                black_box(jsonrpc::encode_result(id, black_box(result)));
            }
        }
    }

    /// The reply, for the check that every case answers with a result.
    async fn reply(&self) -> Option<Bytes> {
        match &self.work {
            Work::Session(session, frame) => session.handle_frame(frame).await,
            Work::FreshSession(server, key, frame) => {
                let session = McpSession::new(
                    server.clone(),
                    SessionLimits::default(),
                    SystemClock::shared(),
                    key.clone(),
                );
                session.handle_frame(frame).await
            }
            Work::Decode(_) | Work::Encode(..) => None,
        }
    }
}

async fn send(session: &Rc<McpSession>, frame: &[u8]) -> Option<Value> {
    session
        .handle_frame(frame)
        .await
        .map(|reply| serde_json::from_slice(&reply).expect("JSON reply"))
}

/// Every case, with its sessions set up (initialized, or fixed to 2026-07-28).
fn cases(ex: &LocalExecutor) -> Vec<Case> {
    ex.run(async {
        let server = LiveServer::new(demo::build().expect("demo server"));
        let key = StateKey::random();
        let new_session = || {
            McpSession::new(
                server.clone(),
                SessionLimits::default(),
                SystemClock::shared(),
                key.clone(),
            )
        };
        let handshake = new_session();
        let init = request(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "bench", "version": "1"}}),
        );
        let reply = send(&handshake, &init).await.expect("initialize reply");
        assert!(reply.get("result").is_some(), "initialize: {reply}");
        let initialized = frame(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        assert!(send(&handshake, &initialized).await.is_none());
        assert!(handshake.is_ready());
        let stateless = new_session();
        let on = |frame: Vec<u8>| Work::Session(handshake.clone(), frame);
        let modern_on = |frame: Vec<u8>| Work::Session(stateless.clone(), frame);
        let echo_result =
            json!({"content": [{"type": "text", "text": "hello, world"}], "isError": false});
        let cases = vec![
            Case {
                name: "handshake/ping",
                work: on(request("ping", json!({}))),
            },
            Case {
                name: "handshake/tools_list",
                work: on(request("tools/list", json!({}))),
            },
            Case {
                name: "handshake/tools_call_echo",
                work: on(request("tools/call", echo_params())),
            },
            Case {
                name: "handshake/tools_call_add",
                work: on(request(
                    "tools/call",
                    json!({"name": "add", "arguments": {"a": 2, "b": 3.5}}),
                )),
            },
            Case {
                name: "handshake/resources_read",
                work: on(request("resources/read", json!({"uri": "demo://readme"}))),
            },
            Case {
                name: "handshake/prompts_get",
                work: on(request(
                    "prompts/get",
                    json!({"name": "greeting", "arguments": {"name": "Ada"}}),
                )),
            },
            Case {
                name: "handshake/completion_complete",
                work: on(request(
                    "completion/complete",
                    json!({"ref": {"type": "ref/prompt", "name": "greeting"},
                           "argument": {"name": "name", "value": "A"}}),
                )),
            },
            Case {
                name: "stateless/tools_call_echo",
                work: modern_on(modern("tools/call", echo_params())),
            },
            Case {
                name: "stateless/server_discover",
                work: modern_on(modern("server/discover", json!({}))),
            },
            Case {
                name: "stateless/tools_call_echo_fresh_session",
                work: Work::FreshSession(
                    server.clone(),
                    key.clone(),
                    modern("tools/call", echo_params()),
                ),
            },
            Case {
                name: "codec/decode_tools_call",
                work: Work::Decode(request("tools/call", echo_params())),
            },
            Case {
                name: "codec/encode_tools_call_result",
                work: Work::Encode(Id::Int(7), echo_result),
            },
        ];
        // A bench of error replies would measure the wrong path.
        for case in &cases {
            if let Some(reply) = case.reply().await {
                let reply: Value = serde_json::from_slice(&reply).expect("JSON reply");
                assert!(
                    reply.get("result").is_some() && reply["result"]["isError"] != json!(true),
                    "{}: {reply}",
                    case.name
                );
            }
        }
        cases
    })
}

/// Runs `iters` requests inside the executor; only the loop is timed.
fn timed(ex: &LocalExecutor, case: &Case, iters: u64) -> Duration {
    ex.run(async {
        let start = Instant::now();
        for _ in 0..iters {
            case.once().await;
        }
        start.elapsed()
    })
}

/// Allocations and bytes per request, after a warm-up (scratch buffers and
/// tables have grown by then, as on a shard that has served a while).
fn allocations(ex: &LocalExecutor, case: &Case, requests: u64) -> (f64, f64) {
    ex.run(async {
        for _ in 0..requests.min(100) {
            case.once().await;
        }
        let (allocs_before, bytes_before) = counts();
        for _ in 0..requests {
            case.once().await;
        }
        let (allocs_after, bytes_after) = counts();
        (
            (allocs_after - allocs_before) as f64 / requests as f64,
            (bytes_after - bytes_before) as f64 / requests as f64,
        )
    })
}

/// This thread's CPU time: unlike the wall clock, it does not count the time
/// the thread waits for a core, so it stays steady on a shared machine.
fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let failed = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0;
    assert!(!failed, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Median CPU time per request over `batches` batches of `requests`.
fn cpu_per_request(ex: &LocalExecutor, case: &Case, batches: usize, requests: u64) -> f64 {
    let mut per_request: Vec<f64> = ex.run(async {
        let mut per_request = Vec::with_capacity(batches);
        for _ in 0..batches {
            let start = thread_cpu();
            for _ in 0..requests {
                case.once().await;
            }
            per_request.push((thread_cpu() - start).as_nanos() as f64 / requests as f64);
        }
        per_request
    });
    per_request.sort_by(f64::total_cmp);
    per_request[per_request.len() / 2]
}

fn request_path(c: &mut Criterion) {
    let ex = executor();
    let cases = cases(&ex);
    let mut group = c.benchmark_group("request_path");
    group.throughput(Throughput::Elements(1));
    for case in &cases {
        group.bench_function(case.name, |b| {
            b.iter_custom(|iters| timed(&ex, case, iters))
        });
    }
    group.finish();
    // Counts are exact in steady state: a few requests do under --test.
    let quick = std::env::args().any(|arg| arg == "--test");
    let (requests, batches) = if quick { (20, 3) } else { (2_000, 15) };
    println!(
        "\nper request: allocations and bytes ({requests} requests after warm-up), \
         thread CPU time (median of {batches} batches of {requests})"
    );
    println!("| case | allocations | bytes | CPU ns |");
    println!("| --- | ---: | ---: | ---: |");
    for case in &cases {
        let (allocs, bytes) = allocations(&ex, case, requests);
        let cpu = cpu_per_request(&ex, case, batches, requests);
        println!("| {} | {allocs:.1} | {bytes:.0} | {cpu:.0} |", case.name);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = request_path
}
criterion_main!(benches);
