//! Two real shards (executors on two threads) talking over the mesh. Threads
//! coordinate through channels, never by sleeping.

use std::rc::Rc;
use std::time::Duration;

use crossbeam_channel::bounded;
use glommio::LocalExecutorBuilder;

use super::*;
use crate::time::{ManualClock, SystemClock};

fn shard<F, Fut, R>(name: &str, f: F) -> glommio::ExecutorJoinHandle<R>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R> + 'static,
    R: Send + 'static,
{
    LocalExecutorBuilder::default()
        .name(name)
        .io_memory(1 << 16)
        .spawn(f)
        .expect("executor thread")
}

/// Blocks this executor's thread until told to go on (or the sender is gone).
async fn hold(until: crossbeam_channel::Receiver<()>) {
    let _ = glommio::executor()
        .spawn_blocking(move || until.recv())
        .await;
}

/// Shard 1 of a two-shard mesh that takes calls and never replies, until
/// told to leave; dropping its port then closes its pairs and rings shard 0.
fn silent_peer(
    ends: ShardEnds<u64>,
    leave: crossbeam_channel::Receiver<()>,
) -> glommio::ExecutorJoinHandle<()> {
    shard("mesh-1", move || async move {
        let port = MeshPort::new(ShardId(1), 2, SystemClock::shared(), 16);
        port.set_handler(|_incoming: Incoming<u64>| {}); // never replies
        port.connect(ends).all().await;
        hold(leave).await;
    })
}

fn echo_doubled(port: &Rc<MeshPort<u64>>) -> impl Fn(Incoming<u64>) + 'static {
    let weak = Rc::downgrade(port);
    move |incoming: Incoming<u64>| {
        if let (Some(reply_to), Some(port)) = (incoming.reply_to, weak.upgrade()) {
            glommio::spawn_local(async move {
                port.reply(reply_to, incoming.body * 2).await.unwrap();
            })
            .detach();
        }
    }
}

#[test]
fn cast_and_call_reach_the_other_shard_and_replies_come_back() {
    let (_wiring, mut ends) = full::<u64>(2, 8);
    let ends1 = ends.pop().unwrap();
    let ends0 = ends.pop().unwrap();
    let (done_tx, done_rx) = bounded::<()>(1);
    let (cast_tx, cast_rx) = bounded::<(ShardId, u64)>(4);

    let one = shard("mesh-1", move || async move {
        let port = MeshPort::new(ShardId(1), 2, SystemClock::shared(), 16);
        let doubled = echo_doubled(&port);
        port.set_handler(move |incoming: Incoming<u64>| match incoming.reply_to {
            None => cast_tx.send((incoming.from, incoming.body)).unwrap(),
            Some(_) => doubled(incoming),
        });
        port.connect(ends1).all().await;
        hold(done_rx).await;
    });
    let zero = shard("mesh-0", move || async move {
        let port = MeshPort::new(ShardId(0), 2, SystemClock::shared(), 16);
        port.connect(ends0).all().await;
        port.cast(ShardId(1), 5).await.unwrap();
        for i in 0..1_000u64 {
            let reply = port.call(ShardId(1), i, Duration::from_secs(10)).await;
            assert_eq!(reply.unwrap(), i * 2);
        }
        assert!(matches!(
            port.call(ShardId(0), 1, Duration::from_secs(1)).await,
            Err(MeshError::SelfSend(_))
        ));
        assert_eq!(port.pending_calls(), 0);
        done_tx.send(()).unwrap();
    });
    zero.join().unwrap();
    one.join().unwrap();
    assert_eq!(cast_rx.try_recv().unwrap(), (ShardId(0), 5));
}

#[test]
fn a_parked_shard_is_woken_by_its_doorbell() {
    let (_wiring, mut ends) = full::<u64>(2, 8);
    let ends1 = ends.pop().unwrap();
    let ends0 = ends.pop().unwrap();
    let (done_tx, done_rx) = bounded::<()>(1);
    // Shard 1 parks after 0 spin and would sleep an hour without its doorbell.
    let policy = PollPolicy {
        spin: Duration::ZERO,
        park_max: Duration::from_secs(3_600),
        batch_max: 256,
    };
    let one = shard("mesh-1", move || async move {
        let port = MeshPort::with_policy(ShardId(1), 2, SystemClock::shared(), 16, policy);
        port.set_handler(echo_doubled(&port));
        port.connect(ends1).all().await;
        hold(done_rx).await;
    });
    let zero = shard("mesh-0", move || async move {
        let port = MeshPort::with_policy(ShardId(0), 2, SystemClock::shared(), 16, policy);
        port.connect(ends0).all().await;
        for i in 0..50u64 {
            // Give shard 1 time to park between calls (real time, not asserted).
            glommio::timer::sleep(Duration::from_millis(1)).await;
            assert_eq!(
                port.call(ShardId(1), i, Duration::from_secs(60))
                    .await
                    .unwrap(),
                i * 2
            );
        }
        done_tx.send(()).unwrap();
    });
    zero.join().unwrap();
    one.join().unwrap();
}

#[test]
fn full_queue_gives_the_message_back_and_send_waits_for_room() {
    let (_wiring, mut ends) = full::<u64>(2, 2);
    let ends1 = ends.pop().unwrap();
    let ends0 = ends.pop().unwrap();
    let (held_tx, held_rx) = bounded::<()>(1);
    let (filled_tx, filled_rx) = bounded::<()>(1);
    let (seen_tx, seen_rx) = bounded::<u64>(8);
    let (done_tx, done_rx) = bounded::<()>(1);

    // Shard 1's thread is held (its poller cannot run) until shard 0 has
    // filled the queue, so the queue really fills.
    let one = shard("mesh-1", move || async move {
        let port = MeshPort::new(ShardId(1), 2, SystemClock::shared(), 16);
        port.set_handler(move |incoming: Incoming<u64>| seen_tx.send(incoming.body).unwrap());
        port.connect(ends1).all().await;
        // No await between these two: the poller cannot run once shard 0
        // hears we are held.
        held_tx.send(()).unwrap();
        let _ = filled_rx.recv(); // blocks the whole shard on purpose
        hold(done_rx).await;
    });
    let zero = shard("mesh-0", move || async move {
        let port = MeshPort::new(ShardId(0), 2, SystemClock::shared(), 16);
        port.connect(ends0).all().await;
        hold(held_rx).await;
        port.try_cast(ShardId(1), 1).unwrap();
        port.try_cast(ShardId(1), 2).unwrap();
        match port.try_cast(ShardId(1), 3) {
            Err(MeshError::Full(ShardId(1), 3)) => {}
            other => panic!("expected Full with the message back, got {other:?}"),
        }
        assert_eq!(port.full_events(), 1);
        assert_eq!(port.queue_depth(ShardId(1)), 2);
        filled_tx.send(()).unwrap();
        // Waits until shard 1 has taken messages out, then goes through.
        port.cast(ShardId(1), 3).await.unwrap();
    });
    zero.join().unwrap();
    let seen: Vec<u64> = (0..3).map(|_| seen_rx.recv().unwrap()).collect();
    done_tx.send(()).unwrap();
    one.join().unwrap();
    assert_eq!(seen, vec![1, 2, 3]);
}

#[test]
fn call_times_out_on_injected_clock_and_fails_fast_when_peer_is_gone() {
    let (_wiring, mut ends) = full::<u64>(2, 8);
    let ends1 = ends.pop().unwrap();
    let ends0 = ends.pop().unwrap();
    let (leave_tx, leave_rx) = bounded::<()>(1);

    let one = silent_peer(ends1, leave_rx);
    let zero = shard("mesh-0", move || async move {
        let clock = ManualClock::new();
        let port = MeshPort::new(ShardId(0), 2, clock.clone(), 16);
        port.connect(ends0).all().await;
        let caller = port.clone();
        let call = glommio::spawn_local(async move {
            caller.call(ShardId(1), 9, Duration::from_millis(250)).await
        });
        crate::sync::settle(8).await;
        assert_eq!(port.pending_calls(), 1);
        clock.advance(Duration::from_millis(250));
        assert!(matches!(call.await, Err(MeshError::Timeout(ShardId(1), _))));
        assert_eq!(port.pending_calls(), 0);

        // Shard 1 goes away: a waiting call fails at once, not after an hour.
        let caller = port.clone();
        let call = glommio::spawn_local(async move {
            caller
                .call(ShardId(1), 10, Duration::from_secs(3_600))
                .await
        });
        crate::sync::settle(8).await;
        leave_tx.send(()).unwrap();
        assert!(matches!(call.await, Err(MeshError::PeerGone(ShardId(1)))));
        assert!(matches!(
            port.try_cast(ShardId(1), 11),
            Err(MeshError::PeerGone(ShardId(1)))
        ));
    });
    zero.join().unwrap();
    one.join().unwrap();
}

#[test]
fn the_deadline_sweeper_clears_abandoned_calls_and_sleeps_when_none_is_pending() {
    let (_wiring, mut ends) = full::<u64>(2, 8);
    let ends1 = ends.pop().unwrap();
    let ends0 = ends.pop().unwrap();
    let (leave_tx, leave_rx) = bounded::<()>(1);

    let one = silent_peer(ends1, leave_rx);
    let zero = shard("mesh-0", move || async move {
        let clock = ManualClock::new();
        // A poller that never parks, so the clock's only sleeper can be the
        // deadline sweeper.
        let never_park = PollPolicy {
            spin: Duration::from_secs(3_600),
            ..PollPolicy::default()
        };
        let port = MeshPort::with_policy(ShardId(0), 2, clock.clone(), 16, never_park);
        port.connect(ends0).all().await;
        crate::sync::settle(8).await;
        // Nothing pending: the sweeper waits on its bell, not on a timer.
        assert_eq!(clock.sleeper_count(), 0);

        // A caller that goes away before its reply leaves its call
        // pending; the sweeper clears it once its deadline passes.
        let caller = port.clone();
        let call = glommio::spawn_local(async move {
            caller.call(ShardId(1), 1, Duration::from_millis(100)).await
        });
        crate::sync::settle(8).await;
        drop(call);
        crate::sync::settle(8).await;
        assert_eq!(port.pending_calls(), 1);
        clock.advance(CALL_SWEEP_INTERVAL * 5);
        crate::sync::settle(8).await;
        assert_eq!(port.pending_calls(), 1, "not yet at its deadline");
        assert_eq!(
            clock.sleeper_count(),
            1,
            "one sweeper nap, not a timer per call"
        );
        for _ in 0..10 {
            clock.advance(CALL_SWEEP_INTERVAL);
            crate::sync::settle(8).await;
        }
        assert_eq!(port.pending_calls(), 0);
        crate::sync::settle(8).await;
        clock.advance(CALL_SWEEP_INTERVAL);
        crate::sync::settle(8).await;
        assert_eq!(clock.sleeper_count(), 0, "back to waiting on its bell");
        leave_tx.send(()).unwrap();
    });
    zero.join().unwrap();
    one.join().unwrap();
}

#[test]
fn node_closing_a_dead_shard_fails_its_callers_without_the_shard_doing_anything() {
    let (wiring, mut ends) = full::<u64>(2, 8);
    let _ends1 = ends.pop().unwrap(); // shard 1 never runs: as if it died leaking its port
    let ends0 = ends.pop().unwrap();
    let (calling_tx, calling_rx) = bounded::<()>(1);
    let zero = shard("mesh-0", move || async move {
        let port = MeshPort::new(ShardId(0), 2, SystemClock::shared(), 16);
        drop(port.connect(ends0));
        let caller = port.clone();
        let call = glommio::spawn_local(async move {
            caller.call(ShardId(1), 1, Duration::from_secs(3_600)).await
        });
        crate::sync::settle(8).await;
        calling_tx.send(()).unwrap();
        assert!(matches!(call.await, Err(MeshError::PeerGone(ShardId(1)))));
    });
    calling_rx.recv().unwrap();
    wiring.close_shard(ShardId(1));
    zero.join().unwrap();
}

#[test]
fn rewired_peer_is_reachable_again_after_a_restart() {
    let (mut wiring, mut ends) = full::<u64>(2, 8);
    let old1 = ends.pop().unwrap();
    let ends0 = ends.pop().unwrap();
    let (attach_tx, attach_rx) = bounded::<PeerEnds<u64>>(1);
    let (done_tx, done_rx) = bounded::<()>(1);

    // The first incarnation of shard 1 connects and stops at once.
    let first = shard("mesh-1a", move || async move {
        let port = MeshPort::new(ShardId(1), 2, SystemClock::shared(), 16);
        port.connect(old1).all().await;
    });
    let zero = shard("mesh-0", move || async move {
        let port = MeshPort::new(ShardId(0), 2, SystemClock::shared(), 16);
        port.connect(ends0).all().await;
        let ends = glommio::executor()
            .spawn_blocking(move || attach_rx.recv())
            .await
            .unwrap();
        port.attach(ends);
        assert_eq!(
            port.call(ShardId(1), 21, Duration::from_secs(10))
                .await
                .unwrap(),
            42
        );
        done_tx.send(()).unwrap();
    });
    first.join().unwrap();
    let (own1, mut peers) = wiring.rewire(ShardId(1));
    let (peer, ends_for_0) = peers.pop().unwrap();
    assert_eq!(peer, ShardId(0));
    attach_tx.send(ends_for_0).unwrap();
    let second = shard("mesh-1b", move || async move {
        let port = MeshPort::new(ShardId(1), 2, SystemClock::shared(), 16);
        port.set_handler(echo_doubled(&port));
        port.connect(own1).all().await;
        hold(done_rx).await;
    });
    zero.join().unwrap();
    second.join().unwrap();
}
