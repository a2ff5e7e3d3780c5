//! Restart intensity: the window of recent restart times (OTP `add_restart`).

use std::collections::VecDeque;
use std::time::Duration;

/// Remembers at most `intensity + 1` restart times, so it is bounded by the
/// supervisor's own flag.
#[derive(Debug)]
pub(crate) struct IntensityWindow {
    intensity: u32,
    period: Duration,
    restarts: VecDeque<Duration>,
}

impl IntensityWindow {
    pub(crate) fn new(intensity: u32, period_ms: u64) -> Self {
        IntensityWindow {
            intensity,
            period: Duration::from_millis(period_ms),
            // Grows with actual restarts; preallocating `intensity + 1` would
            // let a large intensity reserve memory that is never used.
            restarts: VecDeque::with_capacity((intensity as usize + 1).min(16)),
        }
    }

    /// Records a restart at `now`. Returns false when this restart makes more
    /// than `intensity` within the last `period`: the supervisor must give up.
    pub(crate) fn add_restart(&mut self, now: Duration) -> bool {
        while let Some(&oldest) = self.restarts.front() {
            // A restart exactly `period` ago still counts, as in OTP.
            if now.saturating_sub(oldest) > self.period {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
        self.restarts.push_back(now);
        let allowed = self.restarts.len() <= self.intensity as usize;
        // Keep the bound even if a caller goes on after being refused.
        while self.restarts.len() > self.intensity as usize + 1 {
            self.restarts.pop_front();
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    #[test]
    fn allows_intensity_restarts_within_period_and_refuses_one_more() {
        let mut window = IntensityWindow::new(3, 1_000);
        assert!(window.add_restart(ms(0)));
        assert!(window.add_restart(ms(10)));
        assert!(window.add_restart(ms(20)));
        assert!(!window.add_restart(ms(30)));
    }

    #[test]
    fn old_restarts_fall_out_of_the_window() {
        let mut window = IntensityWindow::new(2, 1_000);
        assert!(window.add_restart(ms(0)));
        assert!(window.add_restart(ms(500)));
        assert!(window.add_restart(ms(1_001)));
        assert!(window.add_restart(ms(1_600)));
        assert!(!window.add_restart(ms(1_700)));
    }

    #[test]
    fn zero_intensity_refuses_the_first_restart() {
        let mut window = IntensityWindow::new(0, 1_000);
        assert!(!window.add_restart(ms(0)));
    }

    #[test]
    fn a_huge_intensity_reserves_nothing_up_front() {
        let mut window = IntensityWindow::new(u32::MAX, 1);
        assert!(window.restarts.capacity() <= 16);
        assert!(window.add_restart(ms(0)));
    }

    #[test]
    fn memory_stays_bounded_by_intensity() {
        let mut window = IntensityWindow::new(4, 1_000_000);
        for i in 0..1_000 {
            window.add_restart(ms(i));
        }
        assert!(window.restarts.len() <= 5);
    }
}
