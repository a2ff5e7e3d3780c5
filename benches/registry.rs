//! Registry: O(1) lookups of session ids on one shard, with 15,000 sessions
//! registered (the load the issue sizes for), plus id minting and parsing.

use std::hint::black_box;
use std::rc::Rc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use shardmcp::ids::ShardId;
use shardmcp::registry::{Registry, SessionId};

const SESSIONS: usize = 15_000;

fn registry_benches(c: &mut Criterion) {
    let registry: Registry<Rc<u64>> = Registry::new(ShardId(3), SESSIONS);
    let ids: Vec<SessionId> = (0..SESSIONS)
        .map(|i| {
            let id = registry.new_session_id();
            registry.insert(id, Rc::new(i as u64)).unwrap();
            id
        })
        .collect();
    let missing: Vec<SessionId> = (0..SESSIONS)
        .map(|i| SessionId::new(ShardId(3), i as u128))
        .collect();

    let mut group = c.benchmark_group("registry");
    group.throughput(Throughput::Elements(SESSIONS as u64));
    group.bench_function("lookup_hit_15k", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for id in &ids {
                sum += registry.with(black_box(id), |handle| **handle).unwrap_or(0);
            }
            sum
        })
    });
    group.bench_function("lookup_miss_15k", |b| {
        b.iter(|| {
            missing
                .iter()
                .filter(|id| registry.contains(black_box(id)))
                .count()
        })
    });
    group.bench_function("get_clone_handle_15k", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for id in &ids {
                sum += registry.get(black_box(id)).map_or(0, |handle| *handle);
            }
            sum
        })
    });
    group.finish();

    let mut group = c.benchmark_group("session_id");
    group.throughput(Throughput::Elements(1));
    group.bench_function("mint", |b| b.iter(|| registry.new_session_id()));
    let text = ids[0].to_string();
    group.bench_function("parse", |b| {
        b.iter(|| SessionId::parse(black_box(&text)).unwrap())
    });
    group.bench_function("encode", |b| b.iter(|| black_box(ids[0]).encode()));
    group.bench_function("insert_remove", |b| {
        let spare: Registry<Rc<u64>> = Registry::new(ShardId(3), 1);
        let handle = Rc::new(0);
        b.iter(|| {
            let id = spare.new_session_id();
            spare.insert(id, handle.clone()).unwrap();
            spare.remove(&id)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = registry_benches
}
criterion_main!(benches);
