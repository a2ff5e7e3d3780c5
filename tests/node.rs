//! The node seen from outside: real shards, real sockets, injected faults.

mod common;

use common::{forget_events, test_config, wait_for, Client};
use shardmcp::ids::ShardId;
use shardmcp::runtime::{self, Fault, NodeError, NodeEvent, ShardEvent, ShardExit};
use shardmcp::server::demo;

#[test]
fn node_restarts_a_dead_shard_while_the_other_keeps_serving() {
    let node = runtime::start(test_config(2, 4), demo::factory()).expect("node starts");
    let addr = node.tcp_addr().expect("tcp listener");
    let mut clients = Vec::new();
    // Enough connections that both shards hold some (SO_REUSEPORT hashes them).
    let (mut on_zero, mut on_one) = (0, 0);
    while clients.len() < 200 && (clients.len() < 24 || on_zero == 0 || on_one == 0) {
        let mut client = Client::connect(addr).expect("connect");
        assert!(client.ping());
        clients.push(client);
        on_zero = node.query(ShardId(0)).unwrap().sessions;
        on_one = node.query(ShardId(1)).unwrap().sessions;
    }
    assert_eq!(on_zero + on_one, clients.len());
    assert!(
        on_zero > 0 && on_one > 0,
        "connections never reached both shards"
    );

    forget_events(&node);
    node.inject(ShardId(0), Fault::PanicShard).unwrap();
    let exit = wait_for(&node, |e| {
        matches!(
            e,
            NodeEvent::Shard(ShardEvent::Exited {
                shard: ShardId(0),
                ..
            })
        )
    });
    assert!(matches!(
        exit,
        NodeEvent::Shard(ShardEvent::Exited {
            exit: ShardExit::Panicked(_),
            ..
        })
    ));
    wait_for(&node, |e| {
        matches!(
            e,
            NodeEvent::ShardRestarted {
                shard: ShardId(0),
                restarts: 1
            }
        )
    });
    wait_for(&node, |e| {
        matches!(
            e,
            NodeEvent::Shard(ShardEvent::Listening {
                shard: ShardId(0),
                ..
            })
        )
    });

    // Shard 1's sessions never noticed; shard 0's died with it.
    let answered = clients
        .iter_mut()
        .map(|c| c.ping())
        .filter(|&ok| ok)
        .count();
    assert_eq!(answered, on_one);
    assert_eq!(node.query(ShardId(1)).unwrap().sessions, on_one);

    // The restarted shard serves new connections with a fresh tree.
    let report = node.query(ShardId(0)).unwrap();
    assert_eq!(report.tree.id, "shard-0");
    for _ in 0..16 {
        assert!(Client::connect(addr).unwrap().ping());
    }
    node.drain();
    node.join().expect("clean drain");
}

#[test]
fn killing_one_pool_ends_only_that_pools_sessions() {
    let node = runtime::start(test_config(1, 4), demo::factory()).expect("node starts");
    let addr = node.tcp_addr().unwrap();
    let mut clients: Vec<Client> = (0..40).map(|_| Client::connect(addr).unwrap()).collect();
    assert!(clients.iter_mut().all(|c| c.ping()));
    let before = node.query(ShardId(0)).unwrap().pool_sessions;
    assert_eq!(before.iter().sum::<usize>(), 40);
    let (victim, &doomed) = before.iter().enumerate().max_by_key(|(_, &n)| n).unwrap();

    node.inject(ShardId(0), Fault::KillPool(victim)).unwrap();
    let answered = clients
        .iter_mut()
        .map(|c| c.ping())
        .filter(|&ok| ok)
        .count();
    assert_eq!(
        answered,
        40 - doomed,
        "exactly the killed pool's sessions ended"
    );

    let report = node.query(ShardId(0)).unwrap();
    assert_eq!(report.pool_sessions[victim], 0);
    for (index, &count) in before.iter().enumerate().filter(|&(i, _)| i != victim) {
        assert_eq!(report.pool_sessions[index], count, "pool {index} untouched");
    }
    let pool = report
        .tree
        .find(&["pools", &format!("pool-{victim}")])
        .unwrap();
    assert_eq!(pool.restarts, 1, "the pools supervisor restarted it");
    assert!(pool.running);
    // The restarted pool takes new sessions again.
    let mut fresh: Vec<Client> = (0..16).map(|_| Client::connect(addr).unwrap()).collect();
    assert!(fresh.iter_mut().all(|c| c.ping()));
    node.drain();
    node.join().unwrap();
}

#[test]
fn a_shard_whose_root_supervisor_gives_up_is_restarted_by_the_node() {
    let mut config = test_config(1, 2);
    config.supervision.pools_intensity = 0;
    config.supervision.shard_intensity = 0;
    let node = runtime::start(config, demo::factory()).unwrap();
    let addr = node.tcp_addr().unwrap();
    forget_events(&node);
    node.inject(ShardId(0), Fault::KillPool(1)).unwrap();
    let exit = wait_for(&node, |e| {
        matches!(e, NodeEvent::Shard(ShardEvent::Exited { .. }))
    });
    assert_eq!(
        exit,
        NodeEvent::Shard(ShardEvent::Exited {
            shard: ShardId(0),
            exit: ShardExit::GaveUp("reached max restart intensity".into())
        })
    );
    wait_for(&node, |e| {
        matches!(e, NodeEvent::Shard(ShardEvent::Listening { .. }))
    });
    assert!(Client::connect(addr).unwrap().ping());
    node.drain();
    node.join().unwrap();
}

#[test]
fn a_shard_that_keeps_dying_makes_the_node_give_up_with_a_clear_error() {
    let mut config = test_config(1, 1);
    config.runtime.shard_restarts_max = 1;
    config.runtime.shard_restart_period_ms = 3_600_000;
    let node = runtime::start(config, demo::factory()).unwrap();
    forget_events(&node);
    node.inject(ShardId(0), Fault::PanicShard).unwrap();
    wait_for(&node, |e| matches!(e, NodeEvent::ShardRestarted { .. }));
    wait_for(&node, |e| {
        matches!(e, NodeEvent::Shard(ShardEvent::Listening { .. }))
    });
    node.inject(ShardId(0), Fault::PanicShard).unwrap();
    match node.join() {
        Err(NodeError::ShardRestartIntensity {
            shard, restarts, ..
        }) => {
            assert_eq!((shard, restarts), (ShardId(0), 1));
        }
        other => panic!("expected the node to give up, got {other:?}"),
    }
}

#[test]
fn a_tcp_client_initializes_lists_and_calls_tools() {
    let node = runtime::start(test_config(2, 2), demo::factory()).unwrap();
    let mut client = Client::connect(node.tcp_addr().unwrap()).unwrap();
    let init = client.initialize();
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25");
    assert_eq!(init["result"]["serverInfo"]["name"], "shardmcp");
    let tools = client
        .exchange(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#)
        .unwrap();
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names[..3], ["echo", "add", "slow"]);
    assert!(
        names.contains(&"test_simple_text"),
        "conformance fixtures too"
    );
    let sum = client
        .exchange(r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"add","arguments":{"a":2,"b":40}}}"#)
        .unwrap();
    assert_eq!(sum["result"]["structuredContent"]["sum"], 42.0);
    node.drain();
    node.join().unwrap();
}

#[test]
fn over_tcp_progress_precedes_the_result_and_cancellation_is_read_mid_call() {
    let node = runtime::start(test_config(1, 2), demo::factory()).unwrap();
    let mut client = Client::connect(node.tcp_addr().unwrap()).unwrap();
    client.initialize();
    client.send(r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"slow","arguments":{"ms":40},"_meta":{"progressToken":"tok"}}}"#);
    let mut progress = Vec::new();
    let result = loop {
        let frame = client.read_frame().expect("a frame");
        match frame["method"].as_str() {
            Some("notifications/progress") => {
                progress.push(frame["params"]["progress"].as_f64().unwrap())
            }
            Some("notifications/message") => assert_eq!(frame["params"]["logger"], "slow"),
            Some(other) => panic!("unexpected {other}"),
            None => break frame,
        }
    };
    assert_eq!(progress, [1.0, 2.0, 3.0, 4.0]);
    assert_eq!(result["id"], 5);
    assert_eq!(result["result"]["content"][0]["text"], "waited 40 ms");

    // A long call, then its cancellation on the same connection: no answer
    // for it, and the session keeps answering.
    client.send(r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"slow","arguments":{"ms":60000}}}"#);
    client.send(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":6}}"#);
    let pong = client
        .exchange(r#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#)
        .unwrap();
    assert_eq!(pong["id"], 7, "the cancelled call sent nothing before this");
    // The demo's tally: the first call ran to its end, the cancelled one stopped.
    client.send(r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"slow","arguments":{"ms":0}}}"#);
    // Its log lines come first.
    let probe = loop {
        let frame = client.read_frame().expect("a frame");
        if frame["id"] == 8 {
            break frame;
        }
    };
    assert_eq!(
        probe["result"]["structuredContent"],
        serde_json::json!({"waitedMs": 0, "othersRunning": 0, "completed": 1, "stopped": 1}),
        "{probe}"
    );
    node.drain();
    node.join().unwrap();
}

#[test]
fn a_resource_change_reaches_subscribers_on_every_shard_through_the_mesh() {
    let node = runtime::start(test_config(2, 2), demo::factory()).unwrap();
    let addr = node.tcp_addr().unwrap();
    let mut subscribers = Vec::new();
    // Subscribers until both shards hold some, so whichever shard the change
    // is made on, some subscriber sits on the other one.
    while subscribers.len() < 64
        && (subscribers.len() < 8
            || node.query(ShardId(0)).unwrap().sessions == 0
            || node.query(ShardId(1)).unwrap().sessions == 0)
    {
        let mut client = Client::connect(addr).unwrap();
        client.initialize();
        let reply = client
            .exchange(r#"{"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":"demo://notes/shared"}}"#)
            .unwrap();
        assert_eq!(reply["result"], serde_json::json!({}));
        subscribers.push(client);
    }
    let mut toucher = Client::connect(addr).unwrap();
    toucher.initialize();
    let touched = toucher
        .exchange(r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"touch_note","arguments":{"name":"shared"}}}"#)
        .unwrap();
    assert_eq!(
        touched["result"]["content"][0]["text"],
        "touched demo://notes/shared"
    );
    for subscriber in &mut subscribers {
        let update = subscriber.read_frame().expect("an update on every shard");
        assert_eq!(update["method"], "notifications/resources/updated");
        assert_eq!(update["params"]["uri"], "demo://notes/shared");
    }
    node.drain();
    node.join().unwrap();
}

#[test]
fn drain_closes_idle_connections_stops_accepting_and_exits_cleanly() {
    let node = runtime::start(test_config(2, 2), demo::factory()).unwrap();
    let addr = node.tcp_addr().unwrap();
    let mut idle = Client::connect(addr).unwrap();
    assert!(idle.ping());
    node.drain();
    node.join().expect("drained");
    assert!(!idle.ping(), "connection closed by the drain");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "no longer accepting"
    );
}

#[test]
fn oversized_and_malformed_lines_get_clear_errors_and_the_session_lives_on() {
    let mut config = test_config(1, 1);
    config.limits.message_bytes_max = 1_024;
    let node = runtime::start(config, demo::factory()).unwrap();
    let addr = node.tcp_addr().unwrap();
    let mut client = Client::connect(addr).unwrap();
    let reply = client.exchange("{oops").unwrap();
    assert_eq!(reply["error"]["code"], -32700);
    let reply = client
        .exchange(r#"{"jsonrpc":"2.0","id":"s","method":"tools/list"}"#)
        .unwrap();
    assert_eq!(
        (reply["id"].as_str(), reply["error"]["code"].as_i64()),
        (Some("s"), Some(-32600))
    );
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not initialized"));
    client.initialize();
    let reply = client
        .exchange(r#"{"jsonrpc":"2.0","id":"t","method":"nope"}"#)
        .unwrap();
    assert_eq!(
        (reply["id"].as_str(), reply["error"]["code"].as_i64()),
        (Some("t"), Some(-32601))
    );
    assert!(client.ping(), "still usable after bad input");

    let huge = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"pad":"{}"}}}}"#,
        "x".repeat(4_096)
    );
    let reply = client.exchange(&huge).unwrap();
    assert_eq!(reply["error"]["code"], -32600);
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("message_bytes_max"));
    assert!(
        client.ping(),
        "the session lives on after an oversized line"
    );
    node.drain();
    node.join().unwrap();
}
