//! A gateway-wide token bucket (INTERFACE SKELETON: being written).

use std::sync::Arc;

/// A token bucket shared by clones: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    inner: Arc<()>,
    rate: f64,
    burst: u32,
}

impl RateLimiter {
    /// A limiter of `rate_per_sec` (> 0) with a bucket of `burst` (≥ 1) tokens, full at start.
    pub fn new(rate_per_sec: f64, burst: u32) -> Self {
        Self {
            inner: Arc::new(()),
            rate: rate_per_sec,
            burst,
        }
    }

    /// A limiter that never waits.
    pub fn unlimited() -> Self {
        Self::new(f64::INFINITY, u32::MAX)
    }

    /// Waits (on tokio time) until a token is available and takes it.
    pub async fn acquire(&self) {
        let _ = (&self.inner, self.rate, self.burst);
        todo!("token bucket")
    }
}
