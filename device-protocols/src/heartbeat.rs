//! Proof of progress for a supervisor (the agent's systemd watchdog): a loop stamps its
//! [`Heartbeat`] every time it goes round, and at least every [`HEARTBEAT_EVERY`] while it
//! waits legitimately (nothing due, port down and waiting to reopen). A heartbeat that stops
//! means the loop is stuck.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// At most how long a healthy loop goes without a beat while idle (a transaction in progress
/// may add its timeout).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// The time a loop last went round; cheap to clone (clones share the stamp).
#[derive(Debug, Clone)]
pub struct Heartbeat(Arc<Mutex<Instant>>);

impl Heartbeat {
    /// A heartbeat stamped now.
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(Instant::now())))
    }

    /// Stamps now.
    pub fn beat(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// When the loop last went round.
    pub fn last(&self) -> Instant {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self::new()
    }
}
