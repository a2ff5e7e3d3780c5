//! Supervision on one shard (one glommio executor), real clock:
//! - spawning a session actor into a pool (id, mailbox, registry entry, task);
//! - restarting a permanent actor after a panic, and after an error exit;
//! - killing a pool that holds 1,500 session actors until its replacement
//!   runs, and until every old actor is gone as well.
//!
//! The panic hook is silenced here: the restart figure is the runtime's cost,
//! not the cost of printing a panic message.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_lite::future::yield_now;
use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};

use shardmcp::ids::ShardId;
use shardmcp::registry::Registry;
use shardmcp::server::demo;
use shardmcp::session::{self, SessionEnv, SessionLimits, SessionRegistry};
use shardmcp::supervision::{
    ChildKind, ChildSpec, DynamicTemplate, ExitReason, Restart, RunningSupervisor, Shutdown,
    Strategy, SupFlags, Supervisor, SupervisorEnv, SupervisorSpec,
};
use shardmcp::sync::Event;
use shardmcp::time::SystemClock;

const POOL_ACTORS: usize = 1_500;
const SPAWN_CHUNK: u64 = 10_000;

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

fn pool_spec(id: &str, children_max: usize) -> SupervisorSpec {
    SupervisorSpec::new(
        id,
        SupFlags::new(Strategy::SimpleOneForOne).intensity(1_000_000, 1_000),
    )
    .template(
        DynamicTemplate {
            id: Rc::from("session"),
            restart: Restart::Temporary,
            shutdown: Shutdown::BrutalKill,
            kind: ChildKind::Worker,
        },
        children_max,
    )
}

fn session_env() -> Rc<SessionEnv> {
    Rc::new(SessionEnv {
        server: shardmcp::server::LiveServer::new(demo::build().expect("demo server")),
        tasks: shardmcp::session::tasks::TaskStore::new(64, 64, std::time::Duration::from_secs(60)),
        limits: SessionLimits::default(),
        clock: shardmcp::time::SystemClock::shared(),
        state_key: shardmcp::protocol::request_state::StateKey::random(),
        resource_updates: Rc::new(|_uri: &str| {}),
        mailbox_capacity: 64,
        transport: "bench",
        records: Rc::new(shardmcp::session::SessionRecords::new(
            1 << 20,
            std::time::Duration::from_secs(60),
            shardmcp::time::SystemClock::shared(),
        )),
        resume_wait: std::time::Duration::ZERO,
    })
}

/// Spawns `iters` session actors, timing only the spawns.
fn spawn_actors(ex: &LocalExecutor, iters: u64) -> Duration {
    ex.run(async move {
        let sessions = session_env();
        let mut timed = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let chunk = left.min(SPAWN_CHUNK);
            left -= chunk;
            let env = SupervisorEnv::new(SystemClock::shared());
            let pool = pool_spec("pool", SPAWN_CHUNK as usize).build(env).unwrap();
            let RunningSupervisor { stop, task } = pool.spawn();
            let registry: Rc<SessionRegistry> =
                Rc::new(Registry::new(ShardId(0), SPAWN_CHUNK as usize));
            let start = Instant::now();
            for _ in 0..chunk {
                let id = registry.new_session_id();
                pool.start_child(session::actor(id, registry.clone(), sessions.clone()))
                    .unwrap();
            }
            timed += start.elapsed();
            stop.set();
            task.await;
        }
        timed
    })
}

/// Restarts a permanent worker `iters` times, from the poke that makes it
/// fail to the replacement's first poll.
fn restart_actor(ex: &LocalExecutor, iters: u64, panics: bool) -> (Duration, u64) {
    ex.run(async move {
        let started = Rc::new(Cell::new(0u64));
        let poke: Rc<RefCell<Event>> = Rc::new(RefCell::new(Event::new()));
        let (s, p) = (started.clone(), poke.clone());
        let worker = ChildSpec::worker("actor", move |_ctx| {
            s.set(s.get() + 1);
            let fresh = Event::new();
            *p.borrow_mut() = fresh.clone();
            async move {
                fresh.wait().await;
                if panics {
                    panic!("poked");
                }
                ExitReason::Error("poked".into())
            }
        })
        // It never answers a stop request; don't wait 5 s for it at teardown.
        .shutdown(Shutdown::BrutalKill);
        let env = SupervisorEnv::new(SystemClock::shared());
        let sup = SupervisorSpec::new(
            "sup",
            SupFlags::new(Strategy::OneForOne).intensity(u32::MAX, 1),
        )
        .child(worker)
        .build(env)
        .unwrap();
        let RunningSupervisor { stop, task } = sup.spawn();
        yield_now().await;
        let start = Instant::now();
        for _ in 0..iters {
            let before = started.get();
            let current = poke.borrow().clone();
            current.set();
            while started.get() == before {
                yield_now().await;
            }
        }
        let elapsed = start.elapsed();
        let p50 = sup.env().stats.summary().p50_ns;
        stop.set();
        task.await;
        (elapsed, p50)
    })
}

/// Kills a pool holding 1,500 session actors, `iters` times. Returns the time
/// until the replacement pool runs and until the old actors are all gone.
fn restart_pool(ex: &LocalExecutor, iters: u64) -> (Duration, Duration) {
    ex.run(async move {
        let sessions = session_env();
        let current: Rc<RefCell<Option<Supervisor>>> = Rc::default();
        let slot = current.clone();
        let pool = pool_spec("pool-0", POOL_ACTORS)
            .on_start(move |sup| *slot.borrow_mut() = Some(sup.clone()))
            .into_child_spec()
            .unwrap();
        let env = SupervisorEnv::new(SystemClock::shared());
        let pools = SupervisorSpec::new(
            "pools",
            SupFlags::new(Strategy::OneForOne).intensity(u32::MAX, 1),
        )
        .child(pool)
        .build(env)
        .unwrap();
        let RunningSupervisor { stop, task } = pools.spawn();
        yield_now().await;
        let registry: Rc<SessionRegistry> = Rc::new(Registry::new(ShardId(0), POOL_ACTORS * 2));
        let key = pools.child_key("pool-0").unwrap();
        let (mut ready, mut gone) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..iters {
            let old = current.borrow().clone().unwrap();
            for _ in 0..POOL_ACTORS {
                let id = registry.new_session_id();
                old.start_child(session::actor(id, registry.clone(), sessions.clone()))
                    .unwrap();
            }
            yield_now().await;
            let start = Instant::now();
            pools.kill_child(key);
            loop {
                let replaced = current.borrow().as_ref().is_some_and(|now| {
                    !now.is_stopped() && now.child_count() == 0 && old.is_stopped()
                });
                if replaced {
                    break;
                }
                yield_now().await;
            }
            ready += start.elapsed();
            while !registry.is_empty() {
                yield_now().await;
            }
            gone += start.elapsed();
        }
        stop.set();
        task.await;
        (ready, gone)
    })
}

fn supervision_benches(c: &mut Criterion) {
    std::panic::set_hook(Box::new(|_| {}));
    let ex = executor();
    let mut group = c.benchmark_group("supervision");
    group.throughput(Throughput::Elements(1));
    group.bench_function("session_actor_spawn", |b| {
        b.iter_custom(|iters| spawn_actors(&ex, iters))
    });
    let mut histogram_p50 = (0, 0);
    group.bench_function("actor_restart_after_panic", |b| {
        b.iter_custom(|iters| {
            let (elapsed, p50) = restart_actor(&ex, iters, true);
            histogram_p50.0 = p50;
            elapsed
        })
    });
    group.bench_function("actor_restart_after_error", |b| {
        b.iter_custom(|iters| {
            let (elapsed, p50) = restart_actor(&ex, iters, false);
            histogram_p50.1 = p50;
            elapsed
        })
    });
    group.bench_function("pool_1500_restart/replacement_running", |b| {
        b.iter_custom(|iters| restart_pool(&ex, iters).0)
    });
    group.bench_function("pool_1500_restart/old_actors_gone", |b| {
        b.iter_custom(|iters| restart_pool(&ex, iters).1)
    });
    group.finish();
    let _ = std::panic::take_hook();
    eprintln!(
        "restart histogram (death noticed -> first poll), last run p50: panic {} ns, error {} ns",
        histogram_p50.0, histogram_p50.1
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = supervision_benches
}
criterion_main!(benches);
