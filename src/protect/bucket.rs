//! Token buckets: a rate with a burst, kept per key in a bounded map.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

/// Requests per second and how many may come at once; `per_s == 0` is off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_s: f64,
    pub burst: f64,
}

impl Rate {
    pub fn new(per_s: u32, burst: u32) -> Rate {
        Rate {
            per_s: f64::from(per_s),
            burst: f64::from(burst.max(1)),
        }
    }

    pub fn is_off(&self) -> bool {
        self.per_s <= 0.0
    }
}

/// One key's tokens, refilled lazily when it is next touched.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    last: Duration,
}

impl TokenBucket {
    pub fn full(rate: Rate, now: Duration) -> TokenBucket {
        TokenBucket {
            tokens: rate.burst,
            last: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Duration) {
        let elapsed = now.saturating_sub(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_s).min(rate.burst);
        self.last = self.last.max(now);
    }

    /// Takes one token, or says how long until one is there.
    pub fn take(&mut self, rate: Rate, now: Duration) -> Result<(), Duration> {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate.per_s))
        }
    }

    /// A bucket refilled to its burst is the same as a new one, so it can be
    /// dropped without loosening the limit.
    pub fn is_full(&self, rate: Rate, now: Duration) -> bool {
        let elapsed = now.saturating_sub(self.last).as_secs_f64();
        self.tokens + elapsed * rate.per_s >= rate.burst
    }
}

/// Buckets by key (a session, an address), at most `max` of them.
pub struct Buckets<K> {
    rate: Rate,
    max: usize,
    map: RefCell<HashMap<K, TokenBucket>>,
}

impl<K: Hash + Eq + Copy> Buckets<K> {
    pub fn new(rate: Rate, max: usize) -> Self {
        Buckets {
            rate,
            max: max.max(1),
            map: RefCell::new(HashMap::new()),
        }
    }

    pub fn is_off(&self) -> bool {
        self.rate.is_off()
    }

    /// Takes a token from `key`'s bucket, or says how long until one is there.
    pub fn take(&self, key: K, now: Duration) -> Result<(), Duration> {
        if self.rate.is_off() {
            return Ok(());
        }
        let mut map = self.map.borrow_mut();
        if map.len() >= self.max && !map.contains_key(&key) {
            self.evict(&mut map, now);
        }
        map.entry(key)
            .or_insert_with(|| TokenBucket::full(self.rate, now))
            .take(self.rate, now)
    }

    /// Makes room: drops refilled buckets (lossless); if every bucket is in
    /// use, drops an eighth of them (those keys start afresh: the limit is
    /// loosened for them rather than refusing keys never seen), so that the
    /// next insertions do not each scan the whole map.
    fn evict(&self, map: &mut HashMap<K, TokenBucket>, now: Duration) {
        map.retain(|_, bucket| !bucket.is_full(self.rate, now));
        if map.len() >= self.max {
            let drop: Vec<K> = map.keys().take(self.max / 8 + 1).copied().collect();
            for key in drop {
                map.remove(&key);
            }
        }
    }

    /// Drops the buckets that have refilled (the shard's protect worker
    /// calls it now and then, so idle keys cost nothing).
    pub fn sweep(&self, now: Duration) {
        let rate = self.rate;
        self.map
            .borrow_mut()
            .retain(|_, bucket| !bucket.is_full(rate, now));
    }

    pub fn len(&self) -> usize {
        self.map.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.borrow().is_empty()
    }
}

/// Whole seconds to announce in `Retry-After`: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let rate = Rate::new(10, 3);
        let mut bucket = TokenBucket::full(rate, Duration::ZERO);
        for _ in 0..3 {
            assert_eq!(bucket.take(rate, Duration::ZERO), Ok(()));
        }
        let wait = bucket.take(rate, Duration::ZERO).unwrap_err();
        assert_eq!(wait, 100 * MS, "one token every 100 ms at 10/s");
        assert!(bucket.take(rate, 50 * MS).is_err());
        assert_eq!(bucket.take(rate, 100 * MS), Ok(()));
        assert!(bucket.take(rate, 100 * MS).is_err());
        // A long pause refills only up to the burst.
        for _ in 0..3 {
            assert_eq!(bucket.take(rate, Duration::from_secs(60)), Ok(()));
        }
        assert!(bucket.take(rate, Duration::from_secs(60)).is_err());
    }

    #[test]
    fn keys_have_their_own_buckets_and_off_allows_everything() {
        let buckets = Buckets::new(Rate::new(1, 1), 16);
        assert_eq!(buckets.take(1u32, Duration::ZERO), Ok(()));
        assert!(buckets.take(1u32, Duration::ZERO).is_err());
        assert_eq!(buckets.take(2u32, Duration::ZERO), Ok(()), "another key");
        let off = Buckets::new(Rate::new(0, 1), 16);
        for _ in 0..1_000 {
            assert_eq!(off.take(1u32, Duration::ZERO), Ok(()));
        }
        assert!(off.is_empty(), "off keeps no state");
    }

    #[test]
    fn the_map_is_bounded_and_drops_refilled_buckets_first() {
        let rate = Rate::new(1, 1);
        let buckets = Buckets::new(rate, 4);
        for key in 0..4u32 {
            assert_eq!(buckets.take(key, Duration::ZERO), Ok(()));
        }
        assert_eq!(buckets.len(), 4);
        // Key 0 is still empty at 0.5 s; the others too: all in use, so a
        // new key evicts an eighth (one) and gets in.
        assert_eq!(buckets.take(9, 500 * MS), Ok(()));
        assert!(buckets.len() <= 4);
        // After a second every bucket has refilled: a sweep drops them all.
        buckets.sweep(Duration::from_secs(2));
        assert!(buckets.is_empty());
        // Many keys never grow the map past its bound.
        for key in 100..10_000u32 {
            let _ = buckets.take(key, Duration::from_secs(3));
            assert!(buckets.len() <= 4);
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(100 * MS), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(1_001 * MS), 2);
    }
}
