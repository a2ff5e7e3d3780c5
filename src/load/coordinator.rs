//! Brings the workers of one run together: waits until all are set up,
//! gives the go, prints one progress line a second, samples the server's
//! memory, and merges the final statistics. Workers are threads of this
//! process or child processes; both speak in [`Event`]s.

use std::io::Write;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::report::{progress_line, ServerUsage};
use super::stats::{Stats, Tick};
use super::worker::Event;
use super::LoadError;

/// How long after the expected end the coordinator waits for the last
/// worker's report before it gives up (in-flight requests are bounded by
/// the request timeout, clean-up is not waited for).
pub const FINISH_GRACE: Duration = Duration::from_secs(30);

pub struct Coordination<'a, 'w> {
    pub sources: usize,
    pub sessions: u64,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
    pub operations: usize,
    /// Where progress lines go; None for quiet.
    pub progress: Option<&'a mut (dyn Write + 'w)>,
    /// The server's pid and memory, when it is local.
    pub memory: Option<&'a mut ServerUsage>,
}

impl Coordination<'_, '_> {
    /// Runs to the end; `go` tells every worker to start.
    pub fn run(
        mut self,
        events: &Receiver<Event>,
        mut go: impl FnMut() -> Result<(), LoadError>,
    ) -> Result<Stats, LoadError> {
        let started = Instant::now();
        let mut ready = 0usize;
        let mut go_at: Option<Instant> = None;
        let mut finals = 0usize;
        let mut total = Stats::new(self.operations);
        let mut interval = Tick::new();
        let mut sessions_ready = 0u64;
        let mut next_line = started + Duration::from_secs(1);
        let mut end_sampled = false;
        let mut cpu_started = false;
        while finals < self.sources {
            let now = Instant::now();
            if now >= next_line {
                self.second(started, go_at, &mut interval, sessions_ready);
                next_line += Duration::from_secs(1);
                if next_line < now {
                    next_line = now + Duration::from_secs(1);
                }
            }
            if let Some(go_at) = go_at {
                if !cpu_started && now >= go_at + self.warmup {
                    cpu_started = true;
                    if let Some(usage) = self.memory.as_deref_mut() {
                        usage.cpu_start_seconds = super::host::cpu_seconds(usage.pid);
                    }
                }
                let end = go_at + self.warmup + self.duration;
                if !end_sampled && now >= end {
                    end_sampled = true;
                    self.sample_end();
                }
                if now > end + self.timeout + FINISH_GRACE {
                    return Err(LoadError::Unfinished {
                        missing: self.sources - finals,
                    });
                }
            }
            let mut wake = next_line;
            if let (Some(go_at), false) = (go_at, cpu_started) {
                wake = wake.min(go_at + self.warmup);
            }
            let wait = wake.saturating_duration_since(now);
            match events.recv_timeout(wait) {
                Ok(Event::Ready { .. }) => {
                    ready += 1;
                    if ready == self.sources {
                        if let Some(memory) = self.memory.as_deref_mut() {
                            memory.ready_bytes = super::host::rss_bytes(memory.pid);
                            memory.sample(memory.ready_bytes);
                        }
                        // Taken before the go, so no worker's window ends
                        // before the coordinator's.
                        let now = Instant::now();
                        go()?;
                        go_at = Some(now);
                        // Progress lines count seconds from the go.
                        next_line = now + Duration::from_secs(1);
                        interval = Tick::new();
                    }
                }
                Ok(Event::Tick { tick, .. }) => {
                    sessions_ready += tick.sessions_ready;
                    interval.merge(&tick);
                }
                Ok(Event::Final { stats, .. }) => {
                    if !end_sampled {
                        end_sampled = true;
                        self.sample_end();
                    }
                    total.merge(&stats)?;
                    finals += 1;
                }
                Ok(Event::Failed { source, message }) => {
                    return Err(LoadError::Worker {
                        worker: source,
                        message,
                    })
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(LoadError::Unfinished {
                        missing: self.sources - finals,
                    })
                }
            }
        }
        // The last partial second, if anything happened in it.
        if interval.ok + interval.failed > 0 {
            self.second(started, go_at, &mut interval, sessions_ready);
        }
        Ok(total)
    }

    fn sample_end(&mut self) {
        if let Some(memory) = self.memory.as_deref_mut() {
            memory.end_bytes = super::host::rss_bytes(memory.pid);
            memory.sample(memory.end_bytes);
            if let (Some(start), Some(end)) = (
                memory.cpu_start_seconds,
                super::host::cpu_seconds(memory.pid),
            ) {
                memory.cpu_seconds = Some((end - start).max(0.0));
            }
        }
    }

    fn second(
        &mut self,
        started: Instant,
        go_at: Option<Instant>,
        interval: &mut Tick,
        sessions_ready: u64,
    ) {
        if let Some(memory) = self.memory.as_deref_mut() {
            memory.sample(super::host::rss_bytes(memory.pid));
        }
        let tick = interval.take();
        let Some(out) = self.progress.as_deref_mut() else {
            return;
        };
        let (second, phase) = match go_at {
            None => (started.elapsed().as_secs_f64().round() as u64, "setup"),
            Some(go_at) => {
                let since = go_at.elapsed();
                let phase = if since < self.warmup {
                    "warmup"
                } else if since < self.warmup + self.duration {
                    "run"
                } else {
                    "finish"
                };
                (since.as_secs_f64().round() as u64, phase)
            }
        };
        let _ = writeln!(
            out,
            "{}",
            progress_line(second, phase, &tick, sessions_ready, self.sessions)
        );
        let _ = out.flush();
    }
}
