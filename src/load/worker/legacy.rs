//! Legacy HTTP+SSE sessions (the 2024-11-05 transport). Each session holds a
//! `GET /sse` stream of its own: its first event (`endpoint`) names where to
//! POST, and every answer comes back on it. Requests are POSTed over the
//! thread's ordinary keep-alive connections and answered 202; a task per
//! session reads its stream and hands each response to the request waiting
//! for its id. Closing the stream ends the session; a stream that ends, or a
//! POST answered 404, makes the session be opened again.

use std::rc::Rc;
use std::time::Duration;

use glommio::channels::local_channel::{self, LocalSender};

use super::{
    initialize_request, note_setup, owned_slots, setup_connect, with_timeout, Claim, Phase,
    SlotState, Wire, Worker, INITIALIZED, RECONNECT_BACKOFF, SESSION_WAIT, SETUP_ATTEMPTS_MAX,
};
use crate::load::conn::{Conn, EventStream};
use crate::load::http::RequestHead;
use crate::load::pacer::Ticket;
use crate::load::reply::{classify_incoming, Incoming, Outcome};
use crate::load::stats::ErrorKind;

/// A request waiting for its answer on the stream of session `slot`.
pub(in crate::load) struct Waiter {
    slot: usize,
    answer: LocalSender<Result<Outcome, ErrorKind>>,
}

/// One connection's whole life: it sets up the sessions it owns, POSTs the
/// mix, and at the end closes its sessions' streams.
pub(super) async fn sse_connection(worker: &Rc<Worker>, index: usize) {
    let mut conn = setup_connect(worker).await;
    for slot in owned_slots(index, worker.plan.connections, worker.plan.sessions) {
        worker.slots.borrow_mut()[slot].state = SlotState::Initializing;
        let mut ready = false;
        for _ in 0..SETUP_ATTEMPTS_MAX {
            if init_slot(worker, &mut conn, slot).await.is_ok() {
                ready = true;
                break;
            }
            worker.slots.borrow_mut()[slot].state = SlotState::Initializing;
        }
        if !ready {
            worker.slots.borrow_mut()[slot].state = SlotState::Empty;
        }
        note_setup(worker, ready);
    }
    worker.setup_done.finish_one();
    worker.go.wait().await;
    if worker.plan.idle {
        super::idle_until_end(worker).await;
    } else {
        run(worker, &mut conn, index).await;
    }
    worker.run_done.finish_one();
    worker.cleanup.wait().await;
    if !worker.plan.keep_sessions {
        for slot in owned_slots(index, worker.plan.connections, worker.plan.sessions) {
            // Dropping the reader closes the stream: the server ends the session.
            let stream = worker.slots.borrow_mut()[slot].stream.take();
            drop(stream);
        }
    }
    if let Some(conn) = conn {
        conn.reset();
    }
}

fn post_head<'a>(worker: &'a Worker, endpoint: &'a str) -> RequestHead<'a> {
    let host = match &worker.plan.wire {
        Wire::Sse { host, .. } => host.as_str(),
        _ => "",
    };
    RequestHead {
        method: "POST",
        path: endpoint,
        host,
        session: None,
        protocol_version: None,
    }
}

/// Opens session `slot` (already marked Initializing): its stream, then
/// initialize and notifications/initialized.
async fn init_slot(
    worker: &Rc<Worker>,
    conn: &mut Option<Conn>,
    slot: usize,
) -> Result<(), ErrorKind> {
    let started = worker.now();
    let phase = worker.phase(started);
    let result = open_session(worker, conn, slot).await;
    let outcome = {
        let mut slots = worker.slots.borrow_mut();
        let entry = &mut slots[slot];
        match result {
            Ok((endpoint, version)) => {
                entry.state = SlotState::Ready {
                    id: Some(endpoint),
                    version,
                };
                entry.inits += 1;
                if entry.inits > 1 && phase == Phase::Measured {
                    worker.stats().reinitializations += 1;
                }
                Ok(())
            }
            Err(kind) => {
                entry.state = SlotState::Empty;
                entry.stream = None;
                Err(kind)
            }
        }
    };
    worker.record_init(started, &outcome, phase);
    outcome
}

async fn open_session(
    worker: &Rc<Worker>,
    conn: &mut Option<Conn>,
    slot: usize,
) -> Result<(Rc<str>, Rc<str>), ErrorKind> {
    let Wire::Sse { host, path, .. } = &worker.plan.wire else {
        return Err(ErrorKind::BadResponse);
    };
    let head = RequestHead {
        method: "GET",
        path,
        host,
        session: None,
        protocol_version: None,
    };
    let opening = async {
        let mut events = worker.connect().await?.open_event_stream(&head).await?;
        loop {
            let (kind, data) = events.next_event().await?;
            if kind == b"endpoint" {
                let endpoint = String::from_utf8(data).map_err(|_| ErrorKind::BadResponse)?;
                return Ok::<_, ErrorKind>((events, endpoint));
            }
        }
    };
    let (events, endpoint) = with_timeout(worker.plan.timeout, opening)
        .await
        .ok_or(ErrorKind::Timeout)??;
    let endpoint: Rc<str> = endpoint_path(endpoint.trim()).into();
    let generation = {
        let mut slots = worker.slots.borrow_mut();
        slots[slot].generation += 1;
        slots[slot].generation
    };
    let reader = glommio::spawn_local(read_stream(worker.clone(), slot, generation, events));
    // Replacing an old reader cancels it (and closes its stream).
    worker.slots.borrow_mut()[slot].stream = Some(reader);

    let id = worker.next_id();
    let version: Rc<str> =
        match post_and_wait(worker, conn, &endpoint, &initialize_request(id), id, slot).await? {
            Outcome::Result { protocol_version } => protocol_version
                .as_deref()
                .unwrap_or(super::PROTOCOL_VERSION)
                .into(),
            Outcome::Failed(kind) => return Err(kind),
        };
    let answer = worker
        .http_call(conn, &post_head(worker, &endpoint), INITIALIZED, None)
        .await?;
    match answer.status {
        200 | 202 | 204 => Ok((endpoint, version)),
        404 => Err(ErrorKind::SessionNotFound),
        status => Err(ErrorKind::HttpStatus(status)),
    }
}

/// The endpoint event may carry a path or a whole URL; requests go to its
/// path on the same server.
fn endpoint_path(endpoint: &str) -> &str {
    match endpoint.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |at| &rest[at..]),
        None => endpoint,
    }
}

/// POSTs one request and waits for its answer on the session's stream, all
/// within the request timeout.
async fn post_and_wait(
    worker: &Worker,
    conn: &mut Option<Conn>,
    endpoint: &str,
    body: &[u8],
    id: u64,
    slot: usize,
) -> Result<Outcome, ErrorKind> {
    let started = worker.now();
    let (answer_tx, answer_rx) = local_channel::new_bounded(1);
    worker.waiters.borrow_mut().insert(
        id,
        Waiter {
            slot,
            answer: answer_tx,
        },
    );
    let posted = worker
        .http_call(conn, &post_head(worker, endpoint), body, None)
        .await;
    let refused = match posted {
        Ok(answer) => match answer.status {
            200 | 202 | 204 => None,
            404 => Some(ErrorKind::SessionNotFound),
            status => Some(ErrorKind::HttpStatus(status)),
        },
        Err(kind) => Some(kind),
    };
    if let Some(kind) = refused {
        worker.waiters.borrow_mut().remove(&id);
        return Err(kind);
    }
    let left = worker
        .plan
        .timeout
        .saturating_sub(worker.now().saturating_sub(started))
        .max(Duration::from_micros(1));
    match with_timeout(left, answer_rx.recv()).await {
        Some(Some(answer)) => answer,
        Some(None) => Err(ErrorKind::Closed),
        None => {
            worker.waiters.borrow_mut().remove(&id);
            Err(ErrorKind::Timeout)
        }
    }
}

/// Reads session `slot`'s stream until it ends: responses go to their
/// waiters; then the session is marked for opening again and the requests
/// still waiting on it fail.
async fn read_stream(worker: Rc<Worker>, slot: usize, generation: u64, mut events: EventStream) {
    let mut received = events.bytes_received();
    loop {
        let next = events.next_event().await;
        let now = events.bytes_received();
        worker.stats().bytes_received += now - received;
        received = now;
        let (kind, data) = match next {
            Ok(event) => event,
            Err(_) => break,
        };
        if kind != b"message" || data.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let at = worker.now();
        match classify_incoming(&data) {
            Ok(Incoming::Response {
                id: Some(id),
                outcome,
            }) => {
                let waiter = worker.waiters.borrow_mut().remove(&id);
                if let Some(waiter) = waiter {
                    let _ = waiter.answer.try_send(Ok(outcome));
                }
            }
            Ok(Incoming::Notification) => worker.count_frames(at, 1, 0),
            Ok(Incoming::ServerRequest) => worker.count_frames(at, 0, 1),
            Ok(Incoming::Response { id: None, .. }) | Err(_) => {}
        }
    }
    // The stream ended: the session is gone.
    {
        let mut slots = worker.slots.borrow_mut();
        if slots[slot].generation == generation {
            if let SlotState::Ready { .. } = slots[slot].state {
                slots[slot].state = SlotState::Empty;
            }
        }
    }
    fail_waiters(&worker, slot, ErrorKind::Closed);
}

/// Fails every request still waiting for an answer from session `slot`.
fn fail_waiters(worker: &Worker, slot: usize, kind: ErrorKind) {
    let failed: Vec<Waiter> = {
        let mut waiters = worker.waiters.borrow_mut();
        let ids: Vec<u64> = waiters
            .iter()
            .filter(|(_, waiter)| waiter.slot == slot)
            .map(|(id, _)| *id)
            .collect();
        ids.iter().filter_map(|id| waiters.remove(id)).collect()
    };
    for waiter in failed {
        let _ = waiter.answer.try_send(Err(kind));
    }
}

async fn run(worker: &Rc<Worker>, conn: &mut Option<Conn>, index: usize) {
    let mut body = Vec::with_capacity(256);
    let mut turn = 0usize;
    loop {
        let ticket = worker.pacer.borrow_mut().take(worker.now());
        let Ticket::Send { intended, wait } = ticket else {
            return;
        };
        if !wait.is_zero() {
            glommio::timer::sleep(wait).await;
        }
        let claim = loop {
            match worker.claim(index, &mut turn) {
                Some(claim) => break claim,
                None => glommio::timer::sleep(SESSION_WAIT).await,
            }
        };
        let (slot, endpoint) = match claim {
            Claim::Use {
                slot, id: Some(id), ..
            } => (slot, id),
            Claim::Use { .. } => continue,
            Claim::Init(slot) => {
                if init_slot(worker, conn, slot).await.is_err() {
                    glommio::timer::sleep(RECONNECT_BACKOFF).await;
                    continue;
                }
                match &worker.slots.borrow()[slot].state {
                    SlotState::Ready { id: Some(id), .. } => (slot, id.clone()),
                    _ => continue,
                }
            }
        };
        let op = worker.plan.mix.pick(&mut *worker.rng.borrow_mut());
        let id = worker.next_id();
        body.clear();
        worker.plan.mix.operations[op].render(id, &mut body);
        let result = match post_and_wait(worker, conn, &endpoint, &body, id, slot).await {
            Ok(Outcome::Result { .. }) => Ok(()),
            Ok(Outcome::Failed(kind)) => Err(kind),
            Err(ErrorKind::SessionNotFound) => {
                worker.forget(slot, &Some(endpoint.clone()));
                let stream = worker.slots.borrow_mut()[slot].stream.take();
                drop(stream);
                // Requests it accepted before it was lost will not be answered.
                fail_waiters(worker, slot, ErrorKind::SessionNotFound);
                Err(ErrorKind::SessionNotFound)
            }
            Err(kind) => Err(kind),
        };
        let connect_failed = result == Err(ErrorKind::Connect);
        worker.record_request(op, intended, result, None);
        if connect_failed {
            glommio::timer::sleep(RECONNECT_BACKOFF).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_paths_or_urls_on_the_same_server() {
        assert_eq!(
            endpoint_path("/messages?sessionId=1"),
            "/messages?sessionId=1"
        );
        assert_eq!(
            endpoint_path("http://127.0.0.1:8080/messages?sessionId=1"),
            "/messages?sessionId=1"
        );
        assert_eq!(endpoint_path("http://127.0.0.1:8080"), "/");
    }
}
