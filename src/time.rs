//! Injected time: the runtime reads the clock and sleeps only through [`Clock`],
//! so tests drive time by hand ([`ManualClock`]) instead of sleeping.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::sync::Event;

pub type Sleep = Pin<Box<dyn Future<Output = ()>>>;

/// Monotonic time as seen by one shard.
pub trait Clock {
    /// Time elapsed since this clock's origin.
    fn now(&self) -> Duration;
    /// Completes once `duration` has passed on this clock.
    fn sleep(&self, duration: Duration) -> Sleep;
}

pub type SharedClock = Rc<dyn Clock>;

/// The real monotonic clock; sleeps are glommio timers (io_uring timeouts).
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn shared() -> SharedClock {
        Rc::new(SystemClock {
            origin: Instant::now(),
        })
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        Box::pin(glommio::timer::sleep(duration))
    }
}

/// A clock that moves only when a test calls [`ManualClock::advance`].
#[derive(Default)]
pub struct ManualClock {
    now: Cell<Duration>,
    sleepers: RefCell<Vec<(Duration, Event)>>,
}

impl ManualClock {
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// Moves time forward and wakes every sleeper whose deadline has passed.
    pub fn advance(&self, by: Duration) {
        let now = self.now.get() + by;
        self.now.set(now);
        let due: Vec<Event> = {
            let mut sleepers = self.sleepers.borrow_mut();
            let mut due = Vec::new();
            sleepers.retain(|(deadline, event)| {
                if *deadline <= now {
                    due.push(event.clone());
                    false
                } else {
                    true
                }
            });
            due
        };
        for event in due {
            event.set();
        }
    }

    pub fn sleeper_count(&self) -> usize {
        self.sleepers.borrow().len()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        self.now.get()
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        let event = Event::new();
        if duration.is_zero() {
            event.set();
        } else {
            let deadline = self.now.get() + duration;
            self.sleepers.borrow_mut().push((deadline, event.clone()));
        }
        let wait = event.wait();
        Box::pin(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::settle;

    #[test]
    fn manual_clock_wakes_sleepers_only_when_advanced_past_deadline() {
        crate::sync::run_on_fresh_shard(async {
            let clock = ManualClock::new();
            let woke = Rc::new(Cell::new(false));
            let sleep = clock.sleep(Duration::from_millis(10));
            let flag = woke.clone();
            glommio::spawn_local(async move {
                sleep.await;
                flag.set(true);
            })
            .detach();
            clock.advance(Duration::from_millis(9));
            settle(4).await;
            assert!(!woke.get());
            clock.advance(Duration::from_millis(1));
            settle(4).await;
            assert!(woke.get());
            assert_eq!(clock.sleeper_count(), 0);
        });
    }
}
