//! When each request is meant to go out. Pure: the caller passes the time,
//! so tests drive it with an injected clock.
//!
//! Open loop (`--rate`): request k of a thread is due at `start + k / rate`,
//! whether or not the previous one was answered. A free connection takes the
//! next due ticket; when all connections are busy, tickets wait, and the
//! latency is measured from the ticket's due time, not from when it was
//! finally sent. That is the correction for coordinated omission: a server
//! that stalls for a second is charged for every request it kept waiting,
//! not just the one in flight. Closed loop (no rate): a request is due the
//! moment a connection is free.

use std::time::Duration;

/// Highest rate one pacer accepts, per second (one request per nanosecond).
pub const RATE_PER_SECOND_MAX: f64 = 1e9;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ticket {
    /// Send a request now or after `wait`; its latency counts from `intended`.
    Send { intended: Duration, wait: Duration },
    /// The run is over: send nothing more.
    Done,
}

/// One thread's schedule: from `start` (the go signal) to `end`, with the
/// measured window beginning at `measure_from` (after the warmup).
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Requests per second for this pacer; None is closed loop.
    rate_per_second: Option<f64>,
    start: Duration,
    measure_from: Duration,
    end: Duration,
    /// Tickets handed out so far (open loop).
    issued: u64,
    /// A fraction of one interval by which this pacer's tickets are shifted,
    /// so threads with the same rate do not all fire at the same instants.
    phase: f64,
}

impl Pacer {
    pub fn closed(start: Duration, measure_from: Duration, end: Duration) -> Pacer {
        Pacer {
            rate_per_second: None,
            start,
            measure_from,
            end,
            issued: 0,
            phase: 0.0,
        }
    }

    /// `phase` in [0, 1): the offset of the first ticket, in intervals.
    pub fn open(
        rate_per_second: f64,
        phase: f64,
        start: Duration,
        measure_from: Duration,
        end: Duration,
    ) -> Pacer {
        let rate = rate_per_second.clamp(f64::MIN_POSITIVE, RATE_PER_SECOND_MAX);
        Pacer {
            rate_per_second: Some(rate),
            start,
            measure_from,
            end,
            issued: 0,
            phase: phase.clamp(0.0, 0.999_999),
        }
    }

    /// When the run ends (nothing is sent from then on).
    pub fn end(&self) -> Duration {
        self.end
    }

    pub fn is_open(&self) -> bool {
        self.rate_per_second.is_some()
    }

    /// When ticket `k` is due.
    fn due(&self, k: u64, rate: f64) -> Duration {
        self.start + Duration::from_secs_f64((k as f64 + self.phase) / rate)
    }

    /// The next ticket for a connection that is free at `now`.
    pub fn take(&mut self, now: Duration) -> Ticket {
        match self.rate_per_second {
            None if now >= self.end => Ticket::Done,
            None => Ticket::Send {
                intended: now,
                wait: Duration::ZERO,
            },
            Some(rate) => {
                let intended = self.due(self.issued, rate);
                if intended >= self.end {
                    return Ticket::Done;
                }
                self.issued += 1;
                Ticket::Send {
                    intended,
                    wait: intended.saturating_sub(now),
                }
            }
        }
    }

    /// Whether a request due at `intended` counts (it is in the measured window).
    pub fn measured(&self, intended: Duration) -> bool {
        intended >= self.measure_from && intended < self.end
    }

    /// Open loop: tickets due in the measured window before `now` that no
    /// connection took (the generator or the server could not keep up).
    /// Always 0 in closed loop.
    pub fn missed(&self, now: Duration) -> u64 {
        let Some(rate) = self.rate_per_second else {
            return 0;
        };
        let due_before = |t: Duration| -> u64 {
            if t <= self.start {
                return 0;
            }
            // Tickets k with start + (k + phase) / rate < t.
            let span = (t - self.start).as_secs_f64() * rate - self.phase;
            if span <= 0.0 {
                0
            } else {
                span.ceil() as u64
            }
        };
        let until = now.min(self.end);
        let in_window_due = due_before(until).saturating_sub(due_before(self.measure_from));
        let in_window_issued = self
            .issued
            .min(due_before(until))
            .saturating_sub(due_before(self.measure_from));
        in_window_due.saturating_sub(in_window_issued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// One connection against a server that answers in `service(t)`: takes
    /// tickets until Done; returns the latency of every measured request.
    fn simulate(mut pacer: Pacer, service: impl Fn(Duration) -> Duration) -> Vec<Duration> {
        let mut now = Duration::ZERO;
        let mut latencies = Vec::new();
        while let Ticket::Send { intended, wait } = pacer.take(now) {
            now += wait;
            let done = now + service(now);
            if pacer.measured(intended) {
                latencies.push(done - intended);
            }
            now = done;
        }
        latencies
    }

    #[test]
    fn open_loop_tickets_are_evenly_spaced_whenever_they_are_taken() {
        let mut pacer = Pacer::open(1_000.0, 0.0, MS * 100, MS * 100, MS * 110);
        // Taken early: each waits for its due time.
        assert_eq!(
            pacer.take(Duration::ZERO),
            Ticket::Send {
                intended: MS * 100,
                wait: MS * 100
            }
        );
        // Taken late: due in the past, no wait, latency still from due time.
        assert_eq!(
            pacer.take(MS * 105),
            Ticket::Send {
                intended: MS * 101,
                wait: Duration::ZERO
            }
        );
        let mut count = 2;
        while let Ticket::Send { intended, .. } = pacer.take(MS * 200) {
            assert_eq!(intended, MS * (100 + count));
            count += 1;
        }
        assert_eq!(count, 10, "rate × window tickets, no more");
        assert_eq!(pacer.take(MS * 300), Ticket::Done);
    }

    #[test]
    fn a_phase_shifts_every_ticket_by_a_fraction_of_the_interval() {
        let mut pacer = Pacer::open(100.0, 0.5, Duration::ZERO, Duration::ZERO, MS * 30);
        let due: Vec<_> = std::iter::from_fn(|| match pacer.take(Duration::ZERO) {
            Ticket::Send { intended, .. } => Some(intended),
            Ticket::Done => None,
        })
        .collect();
        assert_eq!(due, [MS * 5, MS * 15, MS * 25]);
    }

    #[test]
    fn a_stall_is_charged_to_every_request_it_delayed_in_open_loop_only() {
        // 1,000 req/s for 1 s; the server answers in 100 µs except for one
        // request sent at 200 ms, which takes 100 ms.
        let service = |t: Duration| {
            if t >= MS * 200 && t < MS * 201 {
                MS * 100
            } else {
                Duration::from_micros(100)
            }
        };
        let open = simulate(
            Pacer::open(1_000.0, 0.0, Duration::ZERO, Duration::ZERO, MS * 1_000),
            service,
        );
        assert_eq!(open.len(), 1_000);
        let slow = open.iter().filter(|&&l| l > MS).count();
        // The stalled request, the ~100 due during the stall, and those that
        // queued behind them while the backlog drained (0.9 ms a request).
        assert!((100..=120).contains(&slow), "{slow} slow requests");
        assert_eq!(open.iter().max(), Some(&(MS * 100)));
        // The request due just after the stall began waited almost all of it.
        assert!(open[201] >= MS * 98, "{:?}", open[201]);

        // Closed loop sees the stall once: coordinated omission.
        let closed = simulate(
            Pacer::closed(Duration::ZERO, Duration::ZERO, MS * 1_000),
            service,
        );
        let slow = closed.iter().filter(|&&l| l > MS).count();
        assert_eq!(slow, 1);
    }

    #[test]
    fn closed_loop_sends_at_once_until_the_end() {
        let mut pacer = Pacer::closed(Duration::ZERO, MS * 10, MS * 20);
        assert_eq!(
            pacer.take(MS * 5),
            Ticket::Send {
                intended: MS * 5,
                wait: Duration::ZERO
            }
        );
        assert!(!pacer.measured(MS * 5), "warmup is not measured");
        assert!(pacer.measured(MS * 10));
        assert_eq!(pacer.take(MS * 20), Ticket::Done);
        assert_eq!(pacer.missed(MS * 20), 0);
    }

    #[test]
    fn tickets_due_in_the_window_but_never_taken_are_missed() {
        // 1,000/s, warmup 0..10 ms, window 10..20 ms.
        let mut pacer = Pacer::open(1_000.0, 0.0, Duration::ZERO, MS * 10, MS * 20);
        for _ in 0..14 {
            assert!(matches!(pacer.take(Duration::ZERO), Ticket::Send { .. }));
        }
        // Tickets 0..14 taken; at the end 10..20 were due, 10..14 taken.
        assert_eq!(pacer.missed(MS * 20), 6);
        assert_eq!(pacer.missed(MS * 30), 6, "nothing is due after the end");
        assert_eq!(pacer.missed(MS * 12), 0, "10 and 11 were taken");
    }
}
