//! A gateway-wide token bucket.
//!
//! The core (`Bucket`) is plain arithmetic on `tokio::time::Instant`s. Each `acquire` takes
//! its token at once, letting the balance go negative: the debt is the caller's place in the
//! queue, so concurrent waiters are served exactly at the rate, in arrival order, without a
//! thundering herd of wake-ups. A caller that gives up before its turn pays the token back.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The bucket's arithmetic.
#[derive(Debug, Clone)]
struct Bucket {
    rate: f64,
    burst: f64,
    /// Tokens available at `at`; negative = owed to callers already waiting.
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
    }

    /// Takes a token and returns how long the caller must wait before using it.
    fn take(&mut self, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Returns a token taken by a caller that gave up waiting.
    fn give_back(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens + 1.0).min(self.burst);
    }
}

/// A token bucket shared by clones: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    /// `None` = unlimited.
    inner: Option<Arc<Mutex<Bucket>>>,
}

impl RateLimiter {
    /// A limiter of `rate_per_sec` (> 0) with a bucket of `burst` (≥ 1) tokens, full at start.
    /// An infinite (or non-finite) rate never waits; a rate ≤ 0 is taken as the smallest
    /// positive rate rather than a limiter that never yields.
    pub fn new(rate_per_sec: f64, burst: u32) -> Self {
        if !rate_per_sec.is_finite() || rate_per_sec.is_nan() {
            return Self::unlimited();
        }
        let rate = rate_per_sec.max(f64::MIN_POSITIVE.max(1e-6));
        Self {
            inner: Some(Arc::new(Mutex::new(Bucket::new(
                rate,
                burst,
                Instant::now(),
            )))),
        }
    }

    /// A limiter that never waits.
    pub fn unlimited() -> Self {
        Self { inner: None }
    }

    /// Whether `other` was made with the same rate and burst (a reload compares pacing this
    /// way; the balance of tokens is not compared).
    pub fn same_settings(&self, other: &Self) -> bool {
        match (&self.inner, &other.inner) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                // One lock at a time: both may be the same bucket.
                let a = lock(a).clone();
                let b = lock(b).clone();
                a.rate.to_bits() == b.rate.to_bits() && a.burst.to_bits() == b.burst.to_bits()
            }
            _ => false,
        }
    }

    /// Waits (on tokio time) until a token is available and takes it.
    pub async fn acquire(&self) {
        let Some(inner) = &self.inner else {
            return;
        };
        let wait = lock(inner).take(Instant::now());
        if wait.is_zero() {
            return;
        }
        // Pays the token back if this future is dropped before its turn.
        let mut refund = Refund(Some(inner));
        tokio::time::sleep(wait).await;
        refund.0 = None;
    }
}

fn lock(m: &Mutex<Bucket>) -> std::sync::MutexGuard<'_, Bucket> {
    // The bucket holds plain numbers that are valid whatever a panicking holder left.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Refund<'a>(Option<&'a Arc<Mutex<Bucket>>>);

impl Drop for Refund<'_> {
    fn drop(&mut self) {
        if let Some(inner) = self.0 {
            lock(inner).give_back(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_rate() {
        let l = RateLimiter::new(10.0, 5);
        let start = Instant::now();
        for _ in 0..5 {
            l.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst is free");
        for _ in 0..10 {
            l.acquire().await;
        }
        let e = start.elapsed();
        assert!(
            e >= Duration::from_millis(999) && e <= Duration::from_millis(1001),
            "{e:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn clones_share_the_bucket() {
        let a = RateLimiter::new(2.0, 1);
        let b = a.clone();
        let start = Instant::now();
        a.acquire().await;
        b.acquire().await;
        a.acquire().await;
        let e = start.elapsed();
        assert!(
            e >= Duration::from_millis(999) && e <= Duration::from_millis(1001),
            "{e:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_waiters_are_served_at_the_rate() {
        let l = RateLimiter::new(20.0, 1);
        let start = Instant::now();
        let tasks: Vec<_> = (0..41)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move {
                    l.acquire().await;
                    start.elapsed()
                })
            })
            .collect();
        let mut done = Vec::new();
        for t in tasks {
            done.push(t.await.expect("task runs"));
        }
        done.sort();
        // One free token, then one every 50 ms: the last of 41 gets its turn at 2 s.
        let last = *done.last().expect("41 tasks");
        assert!(
            last >= Duration::from_millis(1999) && last <= Duration::from_millis(2001),
            "{last:?}"
        );
        // No two served within less than the interval (beyond the burst).
        for w in done.windows(2).skip(1) {
            assert!(
                w[1].saturating_sub(w[0]) >= Duration::from_millis(49),
                "{done:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn refills_up_to_burst_only() {
        let l = RateLimiter::new(1.0, 3);
        tokio::time::sleep(Duration::from_secs(100)).await;
        let start = Instant::now();
        for _ in 0..4 {
            l.acquire().await;
        }
        // Three saved up, the fourth waits a full second.
        let e = start.elapsed();
        assert!(
            e >= Duration::from_millis(999) && e <= Duration::from_millis(1001),
            "{e:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_gives_its_token_back() {
        let l = RateLimiter::new(1.0, 1);
        l.acquire().await;
        // Gives up after 0.5 s of its 1 s wait.
        let gave_up = tokio::time::timeout(Duration::from_millis(500), l.acquire()).await;
        assert!(gave_up.is_err());
        let start = Instant::now();
        l.acquire().await;
        // Had the token been lost, this would wait 1.5 s.
        let e = start.elapsed();
        assert!(e <= Duration::from_millis(501), "{e:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits() {
        let l = RateLimiter::unlimited();
        let start = Instant::now();
        for _ in 0..10_000 {
            l.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        let inf = RateLimiter::new(f64::INFINITY, u32::MAX);
        inf.acquire().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
