//! Hub-wide throttling of twin operations: a token bucket.
//!
//! IoT Hub throttles twin reads and updates per hub (S1: 50 updates/s, 100 reads/s) and answers
//! 429 above the limit. The emulator keeps one configurable rate for all twin operations. The
//! bucket holds at most `max(rate, 1)` tokens (one second's worth) and refills continuously; a
//! new bucket starts full.

use tokio::time::Instant;

/// A token bucket for twin operations; `rate = None` never throttles.
#[derive(Debug, Clone)]
pub struct Throttle {
    rate: Option<f64>,
    tokens: f64,
    last: Option<Instant>,
}

impl Throttle {
    /// A full bucket refilling at `rate` operations per second (`None` or a non-positive or
    /// non-finite rate = unlimited).
    pub fn new(rate: Option<f64>) -> Self {
        let rate = rate.filter(|r| r.is_finite() && *r > 0.0);
        Self {
            rate,
            tokens: rate.map_or(0.0, capacity),
            last: None,
        }
    }

    /// The configured rate, `None` when unlimited.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// Takes one token at `now`; `false` when the bucket is empty (answer 429).
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        let Some(rate) = self.rate else {
            return true;
        };
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * rate).min(capacity(rate));
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn capacity(rate: f64) -> f64 {
    rate.max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn burst_then_refill() {
        let mut t = Throttle::new(Some(5.0));
        let start = Instant::now();
        let granted = (0..10).filter(|_| t.try_acquire(start)).count();
        assert_eq!(granted, 5, "a full bucket grants one second's worth");
        assert!(!t.try_acquire(start));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(t.try_acquire(Instant::now()));
        assert!(!t.try_acquire(Instant::now()));
        // A long pause refills only up to the capacity.
        tokio::time::advance(Duration::from_mins(1)).await;
        let now = Instant::now();
        assert_eq!((0..10).filter(|_| t.try_acquire(now)).count(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn fractional_rate_holds_one_token() {
        let mut t = Throttle::new(Some(0.5));
        let now = Instant::now();
        assert!(t.try_acquire(now));
        assert!(!t.try_acquire(now));
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(!t.try_acquire(Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(t.try_acquire(Instant::now()));
    }

    #[test]
    fn unlimited() {
        for rate in [None, Some(0.0), Some(-1.0), Some(f64::NAN)] {
            let mut t = Throttle::new(rate);
            assert!(t.rate().is_none());
            let now = Instant::now();
            assert!((0..1000).all(|_| t.try_acquire(now)));
        }
    }

    proptest::proptest! {
        /// Over any schedule, grants never exceed capacity + rate × elapsed time.
        #[test]
        fn never_exceeds_rate(rate in 0.1f64..50.0, gaps_ms in proptest::collection::vec(0u64..500, 1..200)) {
            let mut t = Throttle::new(Some(rate));
            let start = Instant::now();
            let mut now = start;
            let mut granted = 0u32;
            for g in gaps_ms {
                now += Duration::from_millis(g);
                if t.try_acquire(now) {
                    granted += 1;
                }
            }
            let bound = rate.max(1.0) + rate * (now - start).as_secs_f64();
            proptest::prop_assert!(f64::from(granted) <= bound + 1e-9);
        }
    }
}
