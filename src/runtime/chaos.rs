//! Chaos injection, the server's side: the admin listener's
//! `POST /admin/chaos/<kind>` (refused with 403 unless `chaos.enabled`) and
//! the actions a shard runs on its own executor. Each action answers with
//! what it hit and, once the domain accepts work again, the recovery time
//! measured here with the monotonic clock (see README "Chaos" for what
//! "accepting work" means for each kind).
//!
//! Control path only: nothing here runs unless asked for by an admin request.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{bounded, Sender};
use futures_lite::future::yield_now;

use crate::chaos::{ChaosAnswer, Kind, Params};
use crate::config::Config;
use crate::ids::ShardId;
use crate::registry::SessionId;
use crate::session;

use super::node::{NodeCommand, NodeStatus};
use super::shard::{Fault, ShardContext, ShardControl, ShardMessage};

/// A `ping` sent through a (new) actor's mailbox: it answers it once it
/// takes work.
const PROBE: &[u8] = br#"{"jsonrpc":"2.0","id":"chaos-probe","method":"ping"}"#;
/// How often the admin thread looks at the node's status while a killed
/// shard restarts.
const STATUS_POLL: Duration = Duration::from_millis(1);

/// Why a chaos request was not carried out: the HTTP status and a line.
pub type Refusal = (&'static str, String);

/// Answers one admin request under `/admin/chaos/`.
pub(super) fn answer(
    method: &str,
    path: &str,
    node: &Sender<NodeCommand>,
    config: &Config,
) -> Result<ChaosAnswer, Refusal> {
    if !config.chaos.enabled {
        return Err((
            "403 Forbidden",
            "chaos is off: start the server with --chaos (config chaos.enabled = true) to inject faults\n"
                .to_string(),
        ));
    }
    if method != "POST" {
        return Err((
            "405 Method Not Allowed",
            "chaos requests are POST\n".to_string(),
        ));
    }
    let rest = path.trim_start_matches("/admin/chaos/");
    let (name, query) = rest.split_once('?').unwrap_or((rest, ""));
    let bad = |error: String| ("400 Bad Request", format!("{error}\n"));
    let kind = Kind::parse(name)
        .ok_or_else(|| bad(crate::chaos::ParamError::UnknownKind(name.to_string()).to_string()))?;
    let params = Params::parse_query(kind, query).map_err(|e| bad(e.to_string()))?;
    let limits = &config.chaos;
    if let Some(ms) = params.ms {
        let max = if kind == Kind::Stall {
            limits.stall_ms_max
        } else {
            limits.fill_ms_max
        };
        if ms > max {
            return Err(bad(format!(
                "ms={ms} is over chaos.{}_ms_max ({max})",
                kind.name()
            )));
        }
    }
    let status = node_status(node, config)?;
    let shards = status.shards.len();
    let shard = match params.shard {
        Some(shard) if usize::from(shard) >= shards => {
            return Err(bad(format!(
                "shard={shard}: the node runs shards 0..{}",
                shards - 1
            )))
        }
        Some(shard) => ShardId(shard),
        None => {
            let running: Vec<ShardId> = status
                .shards
                .iter()
                .filter(|s| s.is_up(&status.expected_listeners))
                .map(|s| s.shard)
                .collect();
            if running.is_empty() {
                return Err(unavailable("no shard is up"));
            }
            running[rand::random_range(0..running.len())]
        }
    };
    if kind == Kind::Shard {
        return kill_shard(node, config, shard, &status);
    }
    let outcome = on_shard(node, config, shard, kind, &params);
    // A random session: when the shard picked has none, another may.
    let empty = matches!(&outcome, Err((status, _)) if status.starts_with("404"));
    if kind == Kind::Session && params.shard.is_none() && params.session.is_none() && empty {
        for other in (0..shards as u16)
            .map(ShardId)
            .filter(|&other| other != shard)
        {
            let retried = on_shard(node, config, other, kind, &params);
            if retried.is_ok() {
                return retried;
            }
        }
    }
    outcome
}

/// Runs one action on `shard` and waits for its answer.
fn on_shard(
    node: &Sender<NodeCommand>,
    config: &Config,
    shard: ShardId,
    kind: Kind,
    params: &Params,
) -> Result<ChaosAnswer, Refusal> {
    let (reply, answered) = bounded(1);
    node.send(NodeCommand::ToShard(
        shard,
        ShardControl::Chaos(kind, params.clone(), reply),
    ))
    .map_err(|_| unavailable("the node has stopped"))?;
    let wait = Duration::from_millis(
        config.chaos.recovery_timeout_ms
            + config.admin.shard_answer_timeout_ms
            + params.ms.unwrap_or(0),
    );
    answered
        .recv_timeout(wait)
        .map_err(|_| unavailable(&format!("shard {shard} did not answer within {wait:?}")))?
}

fn unavailable(reason: &str) -> Refusal {
    ("503 Service Unavailable", format!("{reason}\n"))
}

fn node_status(node: &Sender<NodeCommand>, config: &Config) -> Result<NodeStatus, Refusal> {
    let wait = Duration::from_millis(config.admin.shard_answer_timeout_ms);
    let (reply, answer) = bounded(1);
    node.send_timeout(NodeCommand::Status(reply), wait)
        .map_err(|_| unavailable("the node has stopped"))?;
    answer
        .recv_timeout(wait)
        .map_err(|_| unavailable("the node did not answer"))
}

/// Panics the shard and waits for the node to have restarted it with
/// every listener bound again; the recovery time is the node's (death seen
/// → listeners bound).
fn kill_shard(
    node: &Sender<NodeCommand>,
    config: &Config,
    shard: ShardId,
    status: &NodeStatus,
) -> Result<ChaosAnswer, Refusal> {
    let wait = Duration::from_millis(config.admin.shard_answer_timeout_ms);
    let before = &status.shards[shard.index()];
    if !before.running {
        return Err(unavailable(&format!("shard {shard} is down already")));
    }
    let restarts = before.restarts;
    let (reply, report) = bounded(1);
    node.send(NodeCommand::ToShard(shard, ShardControl::Query(reply)))
        .map_err(|_| unavailable("the node has stopped"))?;
    let sessions = report
        .recv_timeout(wait)
        .map_err(|_| unavailable(&format!("shard {shard} did not answer")))?
        .sessions;
    let (done, acted) = bounded(1);
    node.send(NodeCommand::ToShard(
        shard,
        ShardControl::Fault(Fault::PanicShard, done),
    ))
    .map_err(|_| unavailable("the node has stopped"))?;
    acted
        .recv_timeout(wait)
        .map_err(|_| unavailable(&format!("shard {shard} did not take the fault")))?;
    let deadline = Instant::now() + Duration::from_millis(config.chaos.recovery_timeout_ms);
    let mut recovery_us = None;
    while Instant::now() < deadline {
        let now = node_status(node, config)?;
        let slot = &now.shards[shard.index()];
        if slot.restarts > restarts && slot.is_up(&now.expected_listeners) {
            recovery_us = slot.last_recovery_us;
            break;
        }
        std::thread::sleep(STATUS_POLL);
    }
    Ok(ChaosAnswer {
        kind: Some(Kind::Shard),
        shard: shard.0,
        pools: config.runtime.pools,
        sessions_affected: sessions,
        recovery_us,
        accepting: Some("the node restarted the shard and it bound every listener again".into()),
        ..ChaosAnswer::default()
    })
}

/// Runs `kind` on this shard in a task of its own and sends the outcome.
pub(super) fn spawn(
    ctx: &Rc<ShardContext>,
    kind: Kind,
    params: Params,
    reply: Sender<Result<ChaosAnswer, Refusal>>,
) {
    let ctx = ctx.clone();
    glommio::spawn_local(async move {
        let outcome = run(&ctx, kind, params).await;
        let _ = reply.send(outcome);
    })
    .detach();
}

async fn run(ctx: &Rc<ShardContext>, kind: Kind, params: Params) -> Result<ChaosAnswer, Refusal> {
    let base = ChaosAnswer {
        kind: Some(kind),
        shard: ctx.shard.0,
        pools: ctx.pools.count(),
        ..ChaosAnswer::default()
    };
    match kind {
        Kind::Session => kill_session(ctx, params, base).await,
        Kind::Pool => kill_pool(ctx, params, base).await,
        Kind::Stall => Ok(stall(ctx, params, base).await),
        Kind::Drop => Ok(drop_connections(params, base)),
        Kind::Fill => fill(ctx, params, base).await,
        // The node's business: answered by the admin thread.
        Kind::Shard => Err(("400 Bad Request", "not a shard action\n".into())),
    }
}

fn recovery_timeout(ctx: &ShardContext) -> Duration {
    Duration::from_millis(ctx.config.chaos.recovery_timeout_ms)
}

fn sessions_env(ctx: &ShardContext) -> Result<Rc<session::SessionEnv>, Refusal> {
    ctx.sessions_env()
        .ok_or_else(|| unavailable("the shard is still starting"))
}

/// Kills one session actor and takes the session up again in a new actor:
/// recovered when that actor answers a ping.
async fn kill_session(
    ctx: &Rc<ShardContext>,
    params: Params,
    mut answer: ChaosAnswer,
) -> Result<ChaosAnswer, Refusal> {
    let env = sessions_env(ctx)?;
    let id = match &params.session {
        Some(text) => {
            let id = SessionId::parse(text)
                .map_err(|e| ("400 Bad Request", format!("session: {e}\n")))?;
            if id.shard() != ctx.shard {
                return Err((
                    "400 Bad Request",
                    format!(
                        "session {id} belongs to shard {}, not {}\n",
                        id.shard(),
                        ctx.shard
                    ),
                ));
            }
            id
        }
        None => {
            let count = ctx.registry.len();
            (count > 0)
                .then(|| ctx.registry.nth_id(rand::random_range(0..count)))
                .flatten()
                .ok_or_else(|| {
                    (
                        "404 Not Found",
                        format!("shard {} has no sessions\n", ctx.shard),
                    )
                })?
        }
    };
    let handle = ctx.registry.get(&id).ok_or_else(|| {
        (
            "404 Not Found",
            format!("no live session {id} on shard {}\n", ctx.shard),
        )
    })?;
    answer.session = Some(id.to_string());
    answer.pool = Some(ctx.pools.index_of(&id));
    answer.sessions_affected = 1;
    let resumable = handle.is_ready();
    let started = ctx.clock.now();
    handle.kill();
    drop(handle);
    let timeout = recovery_timeout(ctx);
    while ctx.registry.contains(&id) {
        if ctx.clock.now() - started > timeout {
            return Ok(answer);
        }
        yield_now().await;
    }
    if !resumable {
        // Not initialized yet: nothing to carry on; its client starts over.
        return Ok(answer);
    }
    answer.accepting = Some("a new actor took the session up and answered a ping".into());
    let Some(handle) = session::find_or_resume(&ctx.registry, &ctx.pools, &env, &id).await else {
        return Ok(answer);
    };
    if handle.request(Bytes::from_static(PROBE)).await.is_ok() {
        answer.recovery_us = Some(micros(ctx.clock.now() - started));
    }
    Ok(answer)
}

/// Kills a pool; recovered when its restarted supervisor has started a new
/// session actor and that actor answered a ping.
async fn kill_pool(
    ctx: &Rc<ShardContext>,
    params: Params,
    mut answer: ChaosAnswer,
) -> Result<ChaosAnswer, Refusal> {
    let env = sessions_env(ctx)?;
    let count = ctx.pools.count();
    let index = params.pool.unwrap_or_else(|| rand::random_range(0..count));
    if index >= count {
        return Err((
            "400 Bad Request",
            format!("pool={index}: the shard runs pools 0..{}\n", count - 1),
        ));
    }
    answer.pool = Some(index);
    let old = ctx
        .pools
        .pool(index)
        .ok_or_else(|| unavailable(&format!("pool {index} is not running")))?;
    answer.sessions_affected = old.child_count();
    let started = ctx.clock.now();
    if !ctx.pools.kill_pool(index) {
        return Err(unavailable(&format!("pool {index} is not running")));
    }
    answer.accepting =
        Some("the restarted pool started a new session actor that answered a ping".into());
    // A probe session placed in that pool (ids place sessions by their bits).
    let probe = (0..count.saturating_mul(64))
        .map(|_| ctx.registry.new_session_id())
        .find(|id| id.pool_index(count) == index);
    let Some(probe) = probe else {
        return Ok(answer);
    };
    let timeout = recovery_timeout(ctx);
    // The killed supervisor may take a turn to stop; its successor is the
    // one that must accept work.
    while !old.is_stopped() {
        if ctx.clock.now() - started > timeout {
            return Ok(answer);
        }
        yield_now().await;
    }
    drop(old);
    loop {
        match ctx.pools.start_session(
            &probe,
            session::actor(probe, ctx.registry.clone(), env.clone()),
        ) {
            Ok(_) => break,
            Err(_) if ctx.clock.now() - started < timeout => yield_now().await,
            Err(_) => return Ok(answer),
        }
    }
    let handle = ctx.registry.get(&probe);
    let answered = match &handle {
        Some(handle) => handle.request(Bytes::from_static(PROBE)).await.is_ok(),
        None => false,
    };
    if answered {
        answer.recovery_us = Some(micros(ctx.clock.now() - started));
    }
    drop(handle);
    session::close(&ctx.registry, &probe);
    Ok(answer)
}

/// Blocks the shard's thread as a stuck handler would; recovered when a
/// new task on the shard runs (the stall plus the catch-up).
async fn stall(ctx: &Rc<ShardContext>, params: Params, mut answer: ChaosAnswer) -> ChaosAnswer {
    let ms = params.ms.unwrap_or(1);
    answer.ms = Some(ms);
    answer.accepting = Some("a task spawned on the shard after the stall ran".into());
    let started = ctx.clock.now();
    std::thread::sleep(Duration::from_millis(ms));
    glommio::spawn_local(async {}).await;
    answer.recovery_us = Some(micros(ctx.clock.now() - started));
    answer
}

/// Shuts down a fraction of the shard's client connections (listeners
/// stay); their clients reconnect. No recovery: nothing restarts.
fn drop_connections(params: Params, mut answer: ChaosAnswer) -> ChaosAnswer {
    let fraction = params.fraction.unwrap_or(1.0);
    answer.connections_dropped = Some(crate::transport::sockets::shutdown_connections(fraction));
    answer
}

/// Holds the mesh channel to `to` full for `ms`; recovered when, after
/// that, `to` answers a mesh call from this shard (its queue has drained).
async fn fill(
    ctx: &Rc<ShardContext>,
    params: Params,
    mut answer: ChaosAnswer,
) -> Result<ChaosAnswer, Refusal> {
    let shards = ctx.shards as u16;
    if shards < 2 {
        return Err(("400 Bad Request", "fill needs at least 2 shards\n".into()));
    }
    let to = params.to.unwrap_or((ctx.shard.0 + 1) % shards);
    if to >= shards || to == ctx.shard.0 {
        return Err((
            "400 Bad Request",
            format!("to={to}: must be another shard of 0..{}\n", shards - 1),
        ));
    }
    let ms = params.ms.unwrap_or(1);
    answer.to = Some(to);
    answer.ms = Some(ms);
    let peer = ShardId(to);
    let end = ctx.clock.now() + Duration::from_millis(ms);
    let mut queued = 0u64;
    while ctx.clock.now() < end {
        while ctx.mesh.try_cast(peer, ShardMessage::Filler).is_ok() {
            queued += 1;
        }
        ctx.clock.sleep(Duration::from_millis(1)).await;
    }
    answer.messages_queued = Some(queued);
    answer.accepting = Some(format!("shard {to} answered a mesh call after the fill"));
    let released = ctx.clock.now();
    let nobody = SessionId::new(peer, rand::random::<u128>());
    let reply = ctx
        .mesh
        .call(
            peer,
            ShardMessage::DeleteSession(nobody, None),
            recovery_timeout(ctx),
        )
        .await;
    if reply.is_ok() {
        answer.recovery_us = Some(micros(ctx.clock.now() - released));
    }
    Ok(answer)
}

fn micros(duration: Duration) -> u64 {
    duration.as_micros().min(u128::from(u64::MAX)) as u64
}
