//! Rate-limited logging of state changes (pure): every change of a device's or a hub link's
//! state is logged once, unless it flaps. [`StateLog`] keeps the changes of the last
//! `window`; beyond `burst` changes in that window the individual lines stop and one summary
//! follows when the window has passed since the first suppressed change ("went
//! offline/online 17 times in the last 60 s (now online)"). When the flapping stops, single
//! changes are logged again.
//!
//! The caller owns the clock (`tokio::time::Instant`, so tests run on paused time) and the
//! wording: [`StateLog::observe`] and [`StateLog::due`] only say what to log.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Default: more than 5 changes in a minute is flapping.
pub const DEFAULT_BURST: usize = 5;
/// Default window of [`DEFAULT_BURST`].
pub const DEFAULT_WINDOW: Duration = Duration::from_mins(1);

/// What to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Say<S> {
    /// One change: log it.
    Change {
        /// The previous state (`None` on the first observation).
        from: Option<S>,
        /// The new state.
        to: S,
    },
    /// Changes were suppressed: log this summary.
    Summary {
        /// Changes not logged, all within the last `window`.
        changes: usize,
        /// The window.
        window: Duration,
        /// The state now.
        now: S,
    },
}

/// The state of one thing (a device, a hub link) and its recent changes.
#[derive(Debug, Clone)]
pub struct StateLog<S> {
    burst: usize,
    window: Duration,
    current: Option<S>,
    changes: VecDeque<Instant>,
    /// When the pending summary is due (set by the first suppressed change).
    summary_due: Option<Instant>,
    /// Changes not logged since the last summary.
    suppressed: usize,
}

impl<S: Clone + PartialEq> StateLog<S> {
    /// At most `burst` change lines per `window`; then a summary per `window`.
    pub fn new(burst: usize, window: Duration) -> Self {
        Self {
            burst: burst.max(1),
            window,
            current: None,
            changes: VecDeque::new(),
            summary_due: None,
            suppressed: 0,
        }
    }

    /// The state last observed.
    pub fn current(&self) -> Option<&S> {
        self.current.as_ref()
    }

    /// Records `state` at `now`. `Some(Say::Change)` when it changed and is to be logged;
    /// `None` when unchanged or suppressed (a summary is then pending, see [`Self::due`]).
    pub fn observe(&mut self, state: S, now: Instant) -> Option<Say<S>> {
        if self.current.as_ref() == Some(&state) {
            return None;
        }
        let from = self.current.replace(state.clone());
        self.forget_before(now);
        self.changes.push_back(now);
        if self.changes.len() > self.burst {
            self.summary_due.get_or_insert(now + self.window);
            self.suppressed += 1;
            return None;
        }
        Some(Say::Change { from, to: state })
    }

    /// The summary, once it is due at `now` (then cleared).
    pub fn due(&mut self, now: Instant) -> Option<Say<S>> {
        let due = self.summary_due?;
        if now < due {
            return None;
        }
        self.summary_due = None;
        Some(Say::Summary {
            changes: std::mem::take(&mut self.suppressed),
            window: self.window,
            now: self.current.clone()?,
        })
    }

    /// When [`Self::due`] will have something to say.
    pub fn next_due(&self) -> Option<Instant> {
        self.summary_due
    }

    fn forget_before(&mut self, now: Instant) {
        while self
            .changes
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            self.changes.pop_front();
        }
    }
}

impl<S: Clone + PartialEq> Default for StateLog<S> {
    fn default() -> Self {
        Self::new(DEFAULT_BURST, DEFAULT_WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(from: Option<&'static str>, to: &'static str) -> Say<&'static str> {
        Say::Change { from, to }
    }

    #[tokio::test(start_paused = true)]
    async fn each_change_is_said_once_and_repeats_are_silent() {
        let mut log = StateLog::new(3, Duration::from_mins(1));
        let now = Instant::now();
        assert_eq!(log.observe("online", now), Some(change(None, "online")));
        assert_eq!(log.observe("online", now), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            log.observe("offline", Instant::now()),
            Some(change(Some("online"), "offline"))
        );
        assert_eq!(log.next_due(), None);
        assert_eq!(log.due(Instant::now() + Duration::from_hours(1)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn flapping_becomes_one_summary_per_window_then_single_lines_again() {
        let mut log = StateLog::new(3, Duration::from_mins(1));
        let start = Instant::now();
        let mut said = 0;
        // 20 changes, one every second: 3 lines, then silence.
        for i in 0..20 {
            let state = if i % 2 == 0 { "offline" } else { "online" };
            if log.observe(state, Instant::now()).is_some() {
                said += 1;
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(said, 3);
        // The 4th change (at 3 s) opened the summary: due one window later.
        assert_eq!(log.next_due(), Some(start + Duration::from_secs(63)));
        assert_eq!(log.due(Instant::now()), None, "not due yet at 20 s");
        tokio::time::advance(Duration::from_secs(43)).await;
        // At 63 s: the 17 changes not logged (3 s … 19 s), all within the last minute.
        assert_eq!(
            log.due(Instant::now()),
            Some(Say::Summary {
                changes: 17,
                window: Duration::from_mins(1),
                now: "online"
            })
        );
        assert_eq!(log.due(Instant::now()), None, "said once");
        // Quiet for a window: the next change is a line again.
        tokio::time::advance(Duration::from_mins(1)).await;
        assert_eq!(
            log.observe("offline", Instant::now()),
            Some(change(Some("online"), "offline"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_flap_that_continues_after_a_summary_gets_another_summary() {
        let mut log = StateLog::new(1, Duration::from_secs(10));
        assert!(log.observe(1, Instant::now()).is_some());
        assert!(log.observe(2, Instant::now()).is_none());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(matches!(
            log.due(Instant::now()),
            Some(Say::Summary {
                changes: 1,
                now: 2,
                ..
            })
        ));
        // Two changes within the window: the second is suppressed again.
        assert!(log.observe(3, Instant::now()).is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(log.observe(4, Instant::now()).is_none());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(matches!(
            log.due(Instant::now()),
            Some(Say::Summary {
                changes: 1,
                now: 4,
                ..
            })
        ));
    }
}
