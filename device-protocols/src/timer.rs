//! Precise waits for frame pacing: sub-millisecond wake-ups that never come early.
//!
//! tokio's timer counts in whole milliseconds: `sleep_until(t)` wakes at the first 1 ms tick at
//! or after `t`, so a 1.75 ms RTU inter-frame gap (t3.5 above 19200 baud) becomes 2–3 ms, on
//! average ≈ 1.4 ms more than asked. At 115200 baud that is a fifth of every transaction.
//!
//! [`PreciseTimer::sleep_until`] waits in two parts:
//!
//! 1. **coarse**: while more than [`COARSE_MARGIN`] is left, tokio's own sleep to
//!    `deadline − COARSE_MARGIN` (cheap, and driven by paused time in tests);
//! 2. **fine**: the rest on a Linux `timerfd` (a high-resolution kernel timer) registered with
//!    tokio's reactor through [`AsyncFd`], raced against tokio's sleep to the deadline itself,
//!    which bounds the wait if the timerfd misbehaves and drives the wait under paused time.
//!
//! It returns only once `tokio::time::Instant::now() >= deadline`, whichever part woke it: a
//! wait is never shorter than asked, only (by the wake-up latency) longer. If no timerfd can be
//! created (not on Linux, out of descriptors, no reactor) the timer falls back to tokio's sleep
//! alone, i.e. to the old precision, and says so once in the log.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

/// Left of a wait when the coarse (tokio, 1 ms resolution) part hands over to the fine part:
/// tokio wakes at the first tick at or after `deadline − COARSE_MARGIN`, so between 2 and 1 ms
/// before the deadline plus its wake-up latency.
pub const COARSE_MARGIN: Duration = Duration::from_millis(2);

/// A `TimerFd` that tokio's reactor can watch.
#[derive(Debug)]
struct Fd(TimerFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

#[derive(Debug)]
enum Fine {
    /// Not needed yet (created on the first fine wait).
    Unopened,
    Open(AsyncFd<Fd>),
    /// Could not be created or failed: tokio's sleep only.
    Unavailable,
}

/// A reusable precise timer (one `timerfd`, created on first use). See the module docs.
#[derive(Debug)]
pub struct PreciseTimer {
    fine: Fine,
}

impl Default for PreciseTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl PreciseTimer {
    /// A timer; its `timerfd` is created on the first wait that needs it.
    pub fn new() -> Self {
        Self {
            fine: Fine::Unopened,
        }
    }

    /// A timer that only uses tokio's sleep (millisecond precision): the fallback, and the
    /// behaviour before precise pacing existed.
    pub fn coarse_only() -> Self {
        Self {
            fine: Fine::Unavailable,
        }
    }

    /// Whether waits use the precise `timerfd` part (false once it failed or was never
    /// available). Creates the `timerfd` if needed; must be called inside a tokio runtime.
    pub fn is_precise(&mut self) -> bool {
        self.fd().is_some()
    }

    /// Waits until `deadline` (tokio's clock): returns at or after it, never before.
    pub async fn sleep_until(&mut self, deadline: Instant) {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            let left = deadline - now;
            if left > COARSE_MARGIN {
                tokio::time::sleep_until(deadline - COARSE_MARGIN).await;
                continue;
            }
            let Some(fd) = self.fd() else {
                tokio::time::sleep_until(deadline).await;
                continue;
            };
            let failed = tokio::select! {
                biased;
                r = expiry(fd, left) => r.err(),
                () = tokio::time::sleep_until(deadline) => None,
            };
            if let Some(e) = failed {
                tracing::warn!(error = %e, "precise timer failed; frame gaps fall back to \
                    tokio's 1 ms timer (up to 1 ms longer)");
                self.fine = Fine::Unavailable;
            }
        }
    }

    /// Waits for `duration` (see [`sleep_until`](Self::sleep_until)).
    pub async fn sleep(&mut self, duration: Duration) {
        self.sleep_until(Instant::now() + duration).await;
    }

    fn fd(&mut self) -> Option<&AsyncFd<Fd>> {
        if matches!(self.fine, Fine::Unopened) {
            self.fine = match open() {
                Ok(fd) => Fine::Open(fd),
                Err(e) => {
                    tracing::warn!(error = %e, "no precise timer; frame gaps use tokio's 1 ms \
                        timer (up to 1 ms longer)");
                    Fine::Unavailable
                }
            };
        }
        match &self.fine {
            Fine::Open(fd) => Some(fd),
            Fine::Unopened | Fine::Unavailable => None,
        }
    }
}

/// Waits until `deadline` with a one-off [`PreciseTimer`] (one `timerfd` per call; keep a
/// [`PreciseTimer`] to wait repeatedly).
pub async fn precise_sleep_until(deadline: Instant) {
    PreciseTimer::new().sleep_until(deadline).await;
}

fn open() -> io::Result<AsyncFd<Fd>> {
    let fd = TimerFd::new(
        ClockId::CLOCK_MONOTONIC,
        TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
    )
    .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("timerfd_create: {e}")))?;
    // `AsyncFd::new` is deprecated because a borrowed or shared fd could be closed behind the
    // reactor's back; here the `TimerFd` owns its fd, moves into the `AsyncFd` and is only
    // closed when the `AsyncFd` (and with it the registration) is dropped.
    #[allow(deprecated)]
    AsyncFd::new(Fd(fd))
        .map_err(|e| io::Error::new(e.kind(), format!("registering the timerfd: {e}")))
}

/// Arms `fd` to expire once after `after` (`CLOCK_MONOTONIC`, the clock of `Instant`) and waits
/// for the expiry. Armed relative to a moment after `after` was computed, so it never expires
/// before the deadline `after` was computed for.
async fn expiry(fd: &AsyncFd<Fd>, after: Duration) -> io::Result<()> {
    // A zero expiry would disarm the timer.
    let after = after.max(Duration::from_nanos(1));
    fd.get_ref()
        .0
        .set(
            Expiration::OneShot(TimeSpec::from_duration(after)),
            TimerSetTimeFlags::empty(),
        )
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("timerfd_settime: {e}")))?;
    loop {
        let mut guard = fd.readable().await?;
        // Re-arming reset the expiry count; readiness left over from an earlier expiry reads
        // EAGAIN here, which clears it, and the wait goes on.
        match guard.try_io(|fd| {
            nix::unistd::read(fd.get_ref().0.as_fd(), &mut [0u8; 8]).map_err(io::Error::from)
        }) {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("reading the timerfd: {e}"),
                ));
            }
            Err(_would_block) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn never_returns_before_the_deadline() {
        let mut timer = PreciseTimer::new();
        assert!(timer.is_precise(), "timerfd available on Linux");
        for micros in [
            0u64, 1, 50, 300, 900, 1_750, 1_999, 2_000, 2_001, 3_646, 6_000,
        ] {
            for _ in 0..3 {
                let deadline = Instant::now() + Duration::from_micros(micros);
                timer.sleep_until(deadline).await;
                assert!(Instant::now() >= deadline, "woke early for {micros} µs");
            }
        }
        assert!(timer.is_precise(), "no failure fell back to tokio's timer");
    }

    #[tokio::test]
    async fn a_stale_expiry_does_not_end_a_later_wait() {
        let mut timer = PreciseTimer::new();
        // Arm and let it expire unread (the wait is abandoned when tokio's sleep wins, or
        // simply not awaited to the end).
        let fd = timer.fd().expect("timerfd");
        let _ = tokio::time::timeout(Duration::ZERO, expiry(fd, Duration::from_micros(1))).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
        let deadline = Instant::now() + Duration::from_micros(1_500);
        timer.sleep_until(deadline).await;
        assert!(Instant::now() >= deadline);
    }

    #[tokio::test]
    async fn the_fallback_never_returns_early_either() {
        let mut timer = PreciseTimer::coarse_only();
        assert!(!timer.is_precise());
        for micros in [0u64, 700, 1_750, 2_500] {
            let deadline = Instant::now() + Duration::from_micros(micros);
            timer.sleep_until(deadline).await;
            assert!(Instant::now() >= deadline);
        }
        let deadline = Instant::now() + Duration::from_micros(300);
        precise_sleep_until(deadline).await;
        assert!(Instant::now() >= deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn long_waits_follow_tokio_time_to_the_deadline() {
        let mut timer = PreciseTimer::new();
        let start = Instant::now();
        let deadline = start + Duration::from_hours(1);
        timer.sleep_until(deadline).await;
        // The coarse part slept (virtually) to 2 ms before the deadline, the rest ended on
        // tokio's sleep to the deadline itself: not a tick early, at most one late.
        let now = Instant::now();
        assert!(now >= deadline);
        assert!(
            now - deadline <= Duration::from_millis(1),
            "{:?}",
            now - deadline
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_past_deadline_returns_at_once() {
        let mut timer = PreciseTimer::new();
        let start = Instant::now();
        timer.sleep_until(start).await;
        timer
            .sleep_until(start.checked_sub(Duration::from_secs(1)).unwrap_or(start))
            .await;
        assert_eq!(Instant::now(), start, "no time passed");
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_waits_the_duration_on_paused_time() {
        let mut timer = PreciseTimer::coarse_only();
        let start = Instant::now();
        timer.sleep(Duration::from_millis(7)).await;
        let waited = Instant::now() - start;
        assert!(waited >= Duration::from_millis(7) && waited <= Duration::from_millis(8));
    }
}
