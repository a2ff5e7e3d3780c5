//! Runs a [`Spec`] against a server's admin listener during a load run's
//! measured window: one thread per kind, each injecting on its period and
//! recording what happened ([`Kill`]). Off the generator's executors: an
//! injection waits for the domain to recover, which must not hold up load.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use super::classify::Kill;
use super::client;
use super::spec::{Entry, Spec};
use super::Params;

/// Wall-clock µs since the Unix epoch: what failures and kills are lined
/// up by, across the generator's processes.
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            since.as_micros().min(u128::from(u64::MAX)) as u64
        })
}

/// A running schedule; [`Running::finish`] stops it and returns its kills.
pub struct Running {
    /// Dropped to stop the threads early.
    stop: Option<Sender<()>>,
    threads: Vec<JoinHandle<Vec<Kill>>>,
}

/// Starts the schedule now: injections fall every period after `delay`
/// (the warmup), within `window`. Each admin request may take `timeout`.
pub fn start(
    spec: &Spec,
    admin: SocketAddr,
    delay: Duration,
    window: Duration,
    timeout: Duration,
) -> std::io::Result<Running> {
    let (stop, stopped) = bounded::<()>(0);
    let origin = Instant::now() + delay;
    let mut threads = Vec::new();
    for entry in &spec.entries {
        let times = spec.times(entry, window);
        let entry = *entry;
        let stopped = stopped.clone();
        let thread = std::thread::Builder::new()
            .name(format!("chaos-{}", entry.kind.name()))
            .spawn(move || run_entry(entry, times, origin, admin, timeout, stopped))?;
        threads.push(thread);
    }
    Ok(Running {
        stop: Some(stop),
        threads,
    })
}

fn run_entry(
    entry: Entry,
    times: Vec<Duration>,
    origin: Instant,
    admin: SocketAddr,
    timeout: Duration,
    stopped: Receiver<()>,
) -> Vec<Kill> {
    let params = Params {
        ms: entry.length.map(|length| length.as_millis().max(1) as u64),
        ..Params::default()
    };
    let mut kills = Vec::with_capacity(times.len());
    for at in times {
        let wait = (origin + at).saturating_duration_since(Instant::now());
        match stopped.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            // Stopped (the run ended early).
            _ => break,
        }
        let sent_us = unix_us();
        let result = client::inject(admin, entry.kind, &params, timeout);
        let answered_us = unix_us();
        let (answer, error) = match result {
            Ok(answer) => (Some(answer), None),
            Err(error) => (None, Some(error.to_string())),
        };
        kills.push(Kill {
            kind: entry.kind,
            sent_us,
            answered_us,
            answer,
            error,
        });
    }
    kills
}

impl Running {
    /// Stops what is still to come and returns every injection made.
    pub fn finish(mut self) -> Vec<Kill> {
        drop(self.stop.take());
        let mut kills: Vec<Kill> = self
            .threads
            .drain(..)
            .filter_map(|thread| thread.join().ok())
            .flatten()
            .collect();
        kills.sort_by_key(|kill| kill.sent_us);
        kills
    }
}
