//! Exponential backoff with jitter, capped. Used for dead Modbus units, reopening serial
//! ports, and by the agent for hub reconnects.
//!
//! Each failure doubles (by `multiplier`) the base delay from `initial` up to `max`; the delay
//! handed out is the base scaled by a random factor in `[1 - jitter, 1]` ("subtractive"
//! jitter keeps the cap a true upper bound). A success resets the sequence.

use std::time::Duration;

use rand::Rng as _;
use serde::Deserialize;

/// Backoff parameters.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    /// First delay.
    #[serde(with = "humantime_serde_compat")]
    pub initial: Duration,
    /// Upper bound for every delay.
    #[serde(with = "humantime_serde_compat")]
    pub max: Duration,
    /// Growth factor per failure (≥ 1).
    pub multiplier: f64,
    /// Fraction of the delay that is randomised, `0.0..=1.0`.
    pub jitter: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_mins(1),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl BackoffConfig {
    /// A config with the given bounds, multiplier 2 and 20 % jitter.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            ..Self::default()
        }
    }
}

/// `delay` scaled by a random factor in `[1 - jitter, 1]` (`jitter` clamped to `0..=1`):
/// spreads out waits that would otherwise line up across tasks or machines, and never
/// exceeds `delay`.
pub fn jittered(delay: Duration, jitter: f64) -> Duration {
    let jitter = jitter.clamp(0.0, 1.0);
    if jitter > 0.0 {
        delay.mul_f64(rand::rng().random_range((1.0 - jitter)..=1.0))
    } else {
        delay
    }
}

/// Backoff state: how many failures in a row, and the next delay.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    failures: u32,
}

impl Backoff {
    /// A fresh backoff (no failures yet).
    pub fn new(config: BackoffConfig) -> Self {
        Self {
            config,
            failures: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }

    /// Failures since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.base_delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        jittered(base, self.config.jitter)
    }

    /// The un-jittered delay after `failures` earlier failures.
    pub fn base_delay(&self, failures: u32) -> Duration {
        let max = self.config.max.as_secs_f64();
        let exp = i32::try_from(failures).unwrap_or(i32::MAX);
        let secs = self.config.initial.as_secs_f64() * self.config.multiplier.max(1.0).powi(exp);
        Duration::from_secs_f64(if secs.is_finite() { secs.min(max) } else { max })
    }

    /// Records a success: the next failure starts again from `initial`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Sleeps for [`Backoff::next_delay`] (tokio time, so paused-time tests can drive it).
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

/// `"300ms"`-style durations in serde (humantime), also accepting plain seconds as numbers.
pub mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Deserialises `"1s"`, `"250ms"`, `"2m"` or a number of seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Secs(f64),
        }
        match Repr::deserialize(d)? {
            Repr::Text(s) => humantime::parse_duration(&s).map_err(serde::de::Error::custom),
            Repr::Secs(s) if s.is_finite() && s >= 0.0 => Ok(Duration::from_secs_f64(s)),
            Repr::Secs(s) => Err(serde::de::Error::custom(format!(
                "duration {s} must be a non-negative number of seconds"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn cfg(jitter: f64) -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            multiplier: 2.0,
            jitter,
        }
    }

    #[test]
    fn grows_exponentially_and_caps() {
        let mut b = Backoff::new(cfg(0.0));
        let delays: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_stays_within_bounds_and_varies() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut b = Backoff::new(cfg(0.5));
            for n in 0..6 {
                let base = b.base_delay(n);
                let d = b.next_delay();
                assert!(d <= base && d >= base.mul_f64(0.5), "{d:?} vs {base:?}");
                assert!(d <= Duration::from_secs(2));
                seen.insert(d);
            }
        }
        assert!(seen.len() > 50, "jitter should spread delays");
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        let b = Backoff::new(cfg(0.0));
        assert_eq!(b.base_delay(u32::MAX), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_sleeps_on_the_tokio_clock() {
        let mut b = Backoff::new(cfg(0.0));
        let start = Instant::now();
        b.wait().await;
        b.wait().await;
        b.wait().await;
        assert_eq!(start.elapsed(), Duration::from_millis(700));
    }

    #[test]
    fn deserialises_humantime() {
        let c: BackoffConfig =
            toml::from_str("initial = \"250ms\"\nmax = 30\njitter = 0.1").unwrap();
        assert_eq!(c.initial, Duration::from_millis(250));
        assert_eq!(c.max, Duration::from_secs(30));
        assert!((c.multiplier - 2.0).abs() < f64::EPSILON);
    }
}
