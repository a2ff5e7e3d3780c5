//! Two real shards (executors on two threads) talking over the mesh. Threads
//! coordinate through channels, never by sleeping.

use std::rc::Rc;
use std::time::Duration;

use crossbeam_channel::bounded;
use glommio::LocalExecutorBuilder;

use super::*;
use crate::time::{ManualClock, SystemClock};

fn shard<F, Fut>(name: &str, f: F) -> glommio::ExecutorJoinHandle<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::default()
        .name(name)
        .io_memory(1 << 16)
        .spawn(f)
        .expect("executor thread")
}

#[test]
fn cast_and_call_reach_the_other_shard_and_replies_come_back() {
    let mut ends = full::<u64>(2, 8);
    let ends1 = ends.pop().unwrap();
    let ends0 = ends.pop().unwrap();
    let (done_tx, done_rx) = bounded::<()>(1);
    let (cast_tx, cast_rx) = bounded::<(ShardId, u64)>(4);

    let one = shard("mesh-1", move || async move {
        let port = MeshPort::new(ShardId(1), 2, SystemClock::shared(), 16);
        let replier = Rc::downgrade(&port);
        port.set_handler(move |incoming: Incoming<u64>| match incoming.reply_to {
            None => cast_tx.send((incoming.from, incoming.body)).unwrap(),
            Some(reply_to) => {
                let port = replier.upgrade().unwrap();
                glommio::spawn_local(async move {
                    port.reply(reply_to, incoming.body * 2).await.unwrap();
                })
                .detach();
            }
        });
        port.connect(ends1).all().await;
        // Stay alive until shard 0 is finished with us.
        glommio::executor()
            .spawn_blocking(move || done_rx.recv())
            .await
            .ok();
    });
    let zero = shard("mesh-0", move || async move {
        let port = MeshPort::new(ShardId(0), 2, SystemClock::shared(), 16);
        port.connect(ends0).all().await;
        port.cast(ShardId(1), 5).await.unwrap();
        for i in 0..100u64 {
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
fn full_channel_gives_the_message_back_and_send_waits_for_room() {
    let mut ends = full::<u64>(2, 2);
    let ends1 = ends.pop().unwrap();
    let ends0 = ends.pop().unwrap();
    let (filled_tx, filled_rx) = bounded::<()>(1);
    let (drained_tx, drained_rx) = bounded::<Vec<u64>>(1);

    // Shard 1 connects its raw receiver but reads only when told to, so the
    // channel from shard 0 really fills.
    let one = shard("mesh-1", move || async move {
        let mut from = ends1.from;
        let receiver = from[0].take().unwrap().connect().await;
        let mut to = ends1.to;
        let _sender = to[0].take().unwrap().connect().await;
        glommio::executor()
            .spawn_blocking(move || filled_rx.recv())
            .await
            .unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            if let Some(Envelope::Cast { body, .. }) = receiver.recv().await {
                seen.push(body);
            }
        }
        drained_tx.send(seen).unwrap();
    });
    let zero = shard("mesh-0", move || async move {
        let port = MeshPort::new(ShardId(0), 2, SystemClock::shared(), 16);
        port.connect(ends0).all().await;
        port.try_cast(ShardId(1), 1).unwrap();
        port.try_cast(ShardId(1), 2).unwrap();
        match port.try_cast(ShardId(1), 3) {
            Err(MeshError::Full(ShardId(1), 3)) => {}
            other => panic!("expected Full with the message back, got {other:?}"),
        }
        assert_eq!(port.full_events(), 1);
        filled_tx.send(()).unwrap();
        // Waits until shard 1 has taken one message out, then goes through.
        port.cast(ShardId(1), 3).await.unwrap();
    });
    zero.join().unwrap();
    one.join().unwrap();
    assert_eq!(drained_rx.recv().unwrap(), vec![1, 2, 3]);
}

#[test]
fn call_times_out_on_injected_clock_and_fails_fast_when_peer_is_gone() {
    let mut ends = full::<u64>(2, 8);
    let ends1 = ends.pop().unwrap();
    let ends0 = ends.pop().unwrap();
    let (leave_tx, leave_rx) = bounded::<()>(1);

    let one = shard("mesh-1", move || async move {
        let port = MeshPort::new(ShardId(1), 2, SystemClock::shared(), 16);
        port.set_handler(|_incoming: Incoming<u64>| {}); // never replies
        port.connect(ends1).all().await;
        glommio::executor()
            .spawn_blocking(move || leave_rx.recv())
            .await
            .ok();
        // Dropping the port and returning drops shard 1's channel ends.
    });
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

        // Shard 1 goes away: a waiting call is failed at once, not left to time out.
        let caller = port.clone();
        let call = glommio::spawn_local(async move {
            caller
                .call(ShardId(1), 10, Duration::from_secs(3_600))
                .await
        });
        crate::sync::settle(8).await;
        leave_tx.send(()).unwrap();
        assert!(matches!(call.await, Err(MeshError::PeerGone(ShardId(1)))));
    });
    zero.join().unwrap();
    one.join().unwrap();
}

#[test]
fn rewired_peer_is_reachable_again_after_a_restart() {
    let mut ends = full::<u64>(2, 8);
    let old1 = ends.pop().unwrap();
    let ends0 = ends.pop().unwrap();
    let (own1, mut peers) = rewire::<u64>(ShardId(1), 2, 8);
    let (_, ends_for_0) = peers.pop().unwrap();
    let (old_gone_tx, old_gone_rx) = bounded::<()>(1);
    let (done_tx, done_rx) = bounded::<()>(1);

    // The first incarnation of shard 1 connects and dies at once.
    let first = shard("mesh-1a", move || async move {
        let port = MeshPort::new(ShardId(1), 2, SystemClock::shared(), 16);
        port.connect(old1).all().await;
    });
    let replier = |port: &Rc<MeshPort<u64>>| {
        let weak = Rc::downgrade(port);
        move |incoming: Incoming<u64>| {
            let port = weak.upgrade().unwrap();
            glommio::spawn_local(async move {
                port.reply(incoming.reply_to.unwrap(), incoming.body + 1)
                    .await
                    .unwrap();
            })
            .detach();
        }
    };
    let zero = shard("mesh-0", move || async move {
        let port = MeshPort::new(ShardId(0), 2, SystemClock::shared(), 16);
        port.connect(ends0).all().await;
        glommio::executor()
            .spawn_blocking(move || old_gone_rx.recv())
            .await
            .unwrap();
        port.attach(ends_for_0).await;
        assert_eq!(
            port.call(ShardId(1), 41, Duration::from_secs(10))
                .await
                .unwrap(),
            42
        );
        done_tx.send(()).unwrap();
    });
    first.join().unwrap();
    old_gone_tx.send(()).unwrap();
    let second = shard("mesh-1b", move || async move {
        let port = MeshPort::new(ShardId(1), 2, SystemClock::shared(), 16);
        port.set_handler(replier(&port));
        port.connect(own1).all().await;
        glommio::executor()
            .spawn_blocking(move || done_rx.recv())
            .await
            .ok();
    });
    zero.join().unwrap();
    second.join().unwrap();
}
