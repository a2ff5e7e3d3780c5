//! Circuit breakers, one per tool on each shard: a tool whose handler keeps
//! failing (an `isError` result, a protocol error, a panic, a timeout) is
//! not run for a cooldown; its callers get a fast error instead. After the
//! cooldown one call runs as a probe (half-open): success closes the
//! breaker, failure opens it again.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use crate::sync::Event;
use crate::time::SharedClock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Failing, not yet open: consecutive failures so far.
    Closed(u32),
    /// Refusing calls until this time.
    Open(Duration),
    /// One probe call is running; others are refused until it ends.
    HalfOpen,
}

/// The breakers of one shard. Only tools that are failing have an entry
/// (a closed breaker with no failures is no entry), so the map is bounded
/// by the shard's tools.
pub struct Breakers {
    /// Consecutive failures that open a breaker; 0 turns breakers off.
    failures_max: u32,
    cooldown: Duration,
    clock: SharedClock,
    states: RefCell<HashMap<String, State>>,
    opens: Cell<u64>,
}

/// Why a call was not run, and when to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub retry_after: Duration,
}

impl Breakers {
    pub fn new(failures_max: u32, cooldown: Duration, clock: SharedClock) -> Rc<Breakers> {
        Rc::new(Breakers {
            failures_max,
            cooldown,
            clock,
            states: RefCell::new(HashMap::new()),
            opens: Cell::new(0),
        })
    }

    /// Lets a call of `tool` run (the returned call must be told how it
    /// ended), or refuses it while the breaker is open. `cancel` is the
    /// request's cancellation: a call dropped after the client cancelled it
    /// counts neither way; one dropped otherwise (a timeout, a panic) failed.
    pub fn admit<'a>(
        self: &Rc<Self>,
        tool: &'a str,
        cancel: Event,
    ) -> Result<BreakerCall<'a>, Refused> {
        let mut probe = false;
        let mut states = self.states.borrow_mut();
        // Usually no tool is failing: no hashing on the request path then.
        if self.failures_max > 0 && !states.is_empty() {
            if let Some(state) = states.get_mut(tool) {
                match *state {
                    State::Closed(_) => {}
                    State::Open(until) => {
                        let now = self.clock.now();
                        if now < until {
                            return Err(Refused {
                                retry_after: until - now,
                            });
                        }
                        *state = State::HalfOpen;
                        probe = true;
                    }
                    State::HalfOpen => {
                        return Err(Refused {
                            retry_after: self.cooldown,
                        })
                    }
                }
            }
        }
        drop(states);
        Ok(BreakerCall {
            breakers: self.clone(),
            tool,
            probe,
            cancel,
            done: false,
        })
    }

    fn ended(&self, tool: &str, probe: bool, outcome: Option<bool>) {
        if self.failures_max == 0 {
            return;
        }
        let mut states = self.states.borrow_mut();
        if outcome == Some(true) && states.is_empty() {
            return;
        }
        let state = states.get(tool).copied();
        match (outcome, state) {
            // Success closes it (a probe's success included).
            (Some(true), Some(State::Closed(_))) => {
                states.remove(tool);
            }
            (Some(true), Some(State::HalfOpen)) if probe => {
                tracing::info!(tool, "probe call succeeded; circuit closed");
                states.remove(tool);
            }
            (Some(true), _) => {}
            (Some(false), None) | (Some(false), Some(State::Closed(_))) => {
                let failures = match state {
                    Some(State::Closed(failures)) => failures + 1,
                    _ => 1,
                };
                if failures >= self.failures_max {
                    tracing::warn!(tool, failures, "tool keeps failing; circuit opened");
                    self.open(&mut states, tool);
                } else {
                    states.insert(tool.to_string(), State::Closed(failures));
                }
            }
            (Some(false), Some(State::HalfOpen)) if probe => {
                tracing::warn!(tool, "probe call failed; circuit opened again");
                self.open(&mut states, tool);
            }
            // A call that began before the breaker opened changes nothing.
            (Some(false), _) => {}
            // A cancelled probe: the next call probes instead.
            (None, Some(State::HalfOpen)) if probe => {
                states.insert(tool.to_string(), State::Open(self.clock.now()));
            }
            (None, _) => {}
        }
    }

    fn open(&self, states: &mut HashMap<String, State>, tool: &str) {
        self.opens.set(self.opens.get() + 1);
        crate::observe::record_breaker_opened();
        states.insert(
            tool.to_string(),
            State::Open(self.clock.now() + self.cooldown),
        );
    }

    /// Breakers open or half-open now.
    pub fn open_count(&self) -> usize {
        self.states
            .borrow()
            .values()
            .filter(|state| !matches!(state, State::Closed(_)))
            .count()
    }

    /// Times a breaker of this shard opened.
    pub fn opens(&self) -> u64 {
        self.opens.get()
    }

    /// Whether `tool`'s breaker refuses calls now.
    pub fn is_open(&self, tool: &str) -> bool {
        match self.states.borrow().get(tool) {
            Some(State::Open(until)) => self.clock.now() < *until,
            Some(State::HalfOpen) => true,
            _ => false,
        }
    }
}

/// One admitted call; tell it how the call ended with [`BreakerCall::finish`].
/// Dropped unfinished, it counts as a failure (the handler panicked or ran
/// out of time) unless the client cancelled the request.
pub struct BreakerCall<'a> {
    breakers: Rc<Breakers>,
    tool: &'a str,
    probe: bool,
    cancel: Event,
    done: bool,
}

impl BreakerCall<'_> {
    pub fn finish(mut self, succeeded: bool) {
        self.done = true;
        self.breakers.ended(self.tool, self.probe, Some(succeeded));
    }
}

impl Drop for BreakerCall<'_> {
    fn drop(&mut self) {
        if !self.done {
            let outcome = (!self.cancel.is_set()).then_some(false);
            self.breakers.ended(self.tool, self.probe, outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::ManualClock;

    fn breakers(clock: &Rc<ManualClock>) -> Rc<Breakers> {
        Breakers::new(3, Duration::from_secs(5), clock.clone())
    }

    fn fail(b: &Rc<Breakers>) {
        b.admit("t", Event::new()).expect("admitted").finish(false);
    }

    #[test]
    fn opens_after_consecutive_failures_and_refuses_fast_until_the_cooldown() {
        let clock = ManualClock::new();
        let b = breakers(&clock);
        fail(&b);
        fail(&b);
        // A success in between resets the count.
        b.admit("t", Event::new()).unwrap().finish(true);
        fail(&b);
        fail(&b);
        assert!(!b.is_open("t"));
        fail(&b);
        assert!(b.is_open("t"));
        assert_eq!(b.opens(), 1);
        let refused = b.admit("t", Event::new()).err().expect("refused");
        assert_eq!(refused.retry_after, Duration::from_secs(5));
        assert!(b.admit("other", Event::new()).is_ok(), "per tool");
        clock.advance(Duration::from_secs(2));
        let refused = b.admit("t", Event::new()).err().expect("refused");
        assert_eq!(refused.retry_after, Duration::from_secs(3));
    }

    #[test]
    fn one_probe_after_the_cooldown_closes_on_success() {
        let clock = ManualClock::new();
        let b = breakers(&clock);
        for _ in 0..3 {
            fail(&b);
        }
        clock.advance(Duration::from_secs(5));
        let probe = b.admit("t", Event::new()).expect("the probe runs");
        assert!(
            b.admit("t", Event::new()).is_err(),
            "one probe at a time: others are refused while it runs"
        );
        probe.finish(true);
        assert!(!b.is_open("t"));
        assert_eq!(b.open_count(), 0);
        assert!(b.states.borrow().is_empty(), "closed and clean: no entry");
        fail(&b);
        assert!(!b.is_open("t"), "the count starts over");
    }

    #[test]
    fn a_failed_probe_opens_it_again_for_another_cooldown() {
        let clock = ManualClock::new();
        let b = breakers(&clock);
        for _ in 0..3 {
            fail(&b);
        }
        clock.advance(Duration::from_secs(5));
        fail(&b);
        assert!(b.is_open("t"));
        assert_eq!(b.opens(), 2);
        clock.advance(Duration::from_secs(4));
        assert!(b.admit("t", Event::new()).is_err());
        clock.advance(Duration::from_secs(1));
        assert!(b.admit("t", Event::new()).is_ok());
    }

    #[test]
    fn a_dropped_call_is_a_failure_unless_the_client_cancelled_it() {
        let clock = ManualClock::new();
        let b = breakers(&clock);
        for _ in 0..3 {
            let cancel = Event::new();
            let call = b.admit("t", cancel.clone()).unwrap();
            cancel.set();
            drop(call);
        }
        assert!(!b.is_open("t"), "cancelled calls count neither way");
        for _ in 0..3 {
            // Dropped unfinished: a timeout or a panic.
            drop(b.admit("t", Event::new()).unwrap());
        }
        assert!(b.is_open("t"));
        // A cancelled probe lets the next call probe at once.
        clock.advance(Duration::from_secs(5));
        let cancel = Event::new();
        let probe = b.admit("t", cancel.clone()).unwrap();
        cancel.set();
        drop(probe);
        assert!(b.admit("t", Event::new()).is_ok());
    }

    #[test]
    fn zero_failures_max_turns_breakers_off() {
        let clock = ManualClock::new();
        let b = Breakers::new(0, Duration::from_secs(5), clock.clone());
        for _ in 0..100 {
            fail(&b);
        }
        assert!(!b.is_open("t"));
        assert!(b.states.borrow().is_empty());
    }
}
