//! Mesh between two shards (two executors pinned to two cores): one-way casts
//! and call/reply round trips through `MeshPort` (crossbeam queues polled by
//! each shard, glommio doorbells to wake a parked one), with its poller
//! parking at once (every message rings a doorbell) and spinning 50 µs after
//! the last message (the default). Baselines: glommio's shared channel alone,
//! with executors parking and with `spin_before_park`, and a crossbeam
//! `ArrayQueue` between two spinning threads.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use crossbeam_channel::{bounded, Receiver, Sender};
use crossbeam_queue::ArrayQueue;
use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};

use shardmcp::ids::ShardId;
use shardmcp::mesh::{self, Incoming, MeshPort, PollPolicy};
use shardmcp::time::SystemClock;

const CAPACITY: usize = 1_024;

fn cores() -> (Placement, Placement) {
    let cpus = shardmcp::runtime::available_cpus();
    if cpus.len() >= 2 {
        (Placement::Fixed(cpus[0]), Placement::Fixed(cpus[1]))
    } else {
        (Placement::Unbound, Placement::Unbound)
    }
}

fn builder(placement: Placement, spin: Duration) -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(placement)
        .io_memory(1 << 20)
        .spin_before_park(spin)
}

/// Two shards connected by the mesh; the caller shard runs `iters` operations
/// per command and reports the elapsed time.
struct MeshPair {
    commands: Sender<(u64, bool)>,
    elapsed: Receiver<Duration>,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
}

impl MeshPair {
    fn start(policy: PollPolicy) -> MeshPair {
        let (_wiring, mut ends) = mesh::full::<u64>(2, CAPACITY);
        let ends1 = ends.pop().unwrap();
        let ends0 = ends.pop().unwrap();
        let (place0, place1) = cores();
        let (commands, commands_rx) = bounded::<(u64, bool)>(1);
        let (elapsed_tx, elapsed) = bounded(1);
        let (stop_tx, stop_rx) = bounded::<()>(1);

        let responder = builder(place1, Duration::ZERO)
            .spawn(move || async move {
                let port =
                    MeshPort::with_policy(ShardId(1), 2, SystemClock::shared(), 1 << 16, policy);
                let weak = Rc::downgrade(&port);
                port.set_handler(move |incoming: Incoming<u64>| {
                    if let Some(reply_to) = incoming.reply_to {
                        let port = weak.upgrade().unwrap();
                        glommio::spawn_local(async move {
                            let _ = port.reply(reply_to, incoming.body).await;
                        })
                        .detach();
                    }
                });
                port.connect(ends1).all().await;
                let _ = glommio::executor()
                    .spawn_blocking(move || stop_rx.recv())
                    .await;
            })
            .unwrap();
        let caller = builder(place0, Duration::ZERO)
            .spawn(move || async move {
                let port =
                    MeshPort::with_policy(ShardId(0), 2, SystemClock::shared(), 1 << 16, policy);
                port.connect(ends0).all().await;
                loop {
                    let rx = commands_rx.clone();
                    let Ok((iters, round_trip)) =
                        glommio::executor().spawn_blocking(move || rx.recv()).await
                    else {
                        break;
                    };
                    if iters == 0 {
                        break;
                    }
                    let start = Instant::now();
                    if round_trip {
                        for i in 0..iters {
                            let reply = port.call(ShardId(1), i, Duration::from_secs(10)).await;
                            assert_eq!(reply.ok(), Some(i));
                        }
                    } else {
                        for i in 0..iters {
                            port.cast(ShardId(1), i).await.unwrap();
                        }
                        // One call at the end: all casts have been received.
                        port.call(ShardId(1), 0, Duration::from_secs(10))
                            .await
                            .unwrap();
                    }
                    elapsed_tx.send(start.elapsed()).unwrap();
                }
                let _ = stop_tx.send(());
            })
            .unwrap();
        MeshPair {
            commands,
            elapsed,
            threads: vec![caller, responder],
        }
    }

    fn run(&self, iters: u64, round_trip: bool) -> Duration {
        self.commands.send((iters, round_trip)).unwrap();
        self.elapsed.recv().unwrap()
    }

    fn stop(self) {
        self.commands.send((0, false)).unwrap();
        for thread in self.threads {
            thread.join().unwrap();
        }
    }
}

/// The bare glommio shared channel, ping-pong, no MeshPort on top.
fn raw_glommio_round_trips(spin: Duration, iters: u64) -> Duration {
    let (ping_tx, ping_rx) = shared_channel::new_bounded::<u64>(CAPACITY);
    let (pong_tx, pong_rx) = shared_channel::new_bounded::<u64>(CAPACITY);
    let (place0, place1) = cores();
    let echo = builder(place1, spin)
        .spawn(move || async move {
            let rx = ping_rx.connect().await;
            let tx = pong_tx.connect().await;
            while let Some(v) = rx.recv().await {
                if tx.send(v).await.is_err() {
                    break;
                }
            }
        })
        .unwrap();
    let caller = builder(place0, spin)
        .spawn(move || async move {
            let tx = ping_tx.connect().await;
            let rx = pong_rx.connect().await;
            let start = Instant::now();
            for i in 0..iters {
                tx.send(i).await.unwrap();
                assert_eq!(rx.recv().await, Some(i));
            }
            start.elapsed()
        })
        .unwrap();
    let elapsed = caller.join().unwrap();
    echo.join().unwrap();
    elapsed
}

/// crossbeam ArrayQueue both ways, both threads spinning (no way to park).
fn crossbeam_spin_round_trips(iters: u64) -> Duration {
    let ping = Arc::new(ArrayQueue::<u64>::new(CAPACITY));
    let pong = Arc::new(ArrayQueue::<u64>::new(CAPACITY));
    let (ping2, pong2) = (ping.clone(), pong.clone());
    let echo = std::thread::spawn(move || {
        let mut seen = 0;
        while seen < iters {
            if let Some(v) = ping2.pop() {
                while pong2.push(v).is_err() {
                    std::hint::spin_loop();
                }
                seen += 1;
            } else {
                std::hint::spin_loop();
            }
        }
    });
    let start = Instant::now();
    for i in 0..iters {
        while ping.push(i).is_err() {
            std::hint::spin_loop();
        }
        loop {
            if let Some(v) = pong.pop() {
                assert_eq!(v, i);
                break;
            }
            std::hint::spin_loop();
        }
    }
    let elapsed = start.elapsed();
    echo.join().unwrap();
    elapsed
}

fn mesh_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("mesh");
    group.throughput(Throughput::Elements(1));
    let parking = PollPolicy {
        spin: Duration::ZERO,
        ..PollPolicy::default()
    };
    for (label, policy) in [
        ("park_at_once", parking),
        ("spin50us", PollPolicy::default()),
    ] {
        let pair = MeshPair::start(policy);
        group.bench_function(format!("round_trip/meshport_call/{label}"), |b| {
            b.iter_custom(|iters| pair.run(iters, true))
        });
        group.bench_function(format!("one_way/meshport_cast/{label}"), |b| {
            b.iter_custom(|iters| pair.run(iters, false))
        });
        pair.stop();
    }
    for (label, spin) in [
        ("parked", Duration::ZERO),
        ("spin50us", Duration::from_micros(50)),
    ] {
        group.bench_function(format!("round_trip/glommio_channel_only/{label}"), |b| {
            b.iter_custom(|iters| raw_glommio_round_trips(spin, iters))
        });
    }
    group.bench_function("round_trip/crossbeam_spinning_threads", |b| {
        b.iter_custom(crossbeam_spin_round_trips)
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = mesh_benches
}
criterion_main!(benches);
