//! The sync driver: per identity, drives the store ↔ hub until both sides agree.
//!
//! One [`Driver`] task per identity, wrapping the pure sync state kept by the store
//! ([`crate::store::SyncState`]) and the identity's hub [`Session`]:
//!
//! - On every (re)connect the session has already subscribed; the driver GETs the full twin
//!   and adopts both sections ([`Store::hub_reported`], [`Store::desired_received`]) whatever
//!   their `$version`.
//! - Reported: at most one request in flight per identity (the hub does not order concurrent
//!   `PATCH`es). The patch is whatever the store computes ([`Store::begin_send`]) when it is
//!   sent, so any number of local changes made while offline leave as one `PATCH`. A 204
//!   advances the state; 429 and 5xx back off (jittered, exponential) and retry; other 4xx
//!   (400, 403, 413, …) are quarantined by the store (logged once with the offending path,
//!   surfaced in [`IdentityStatus`]) and never retried in a loop; an unanswered request is an
//!   unknown outcome ([`Store::disconnected`]), never a success.
//! - Desired: notifications in `$version` order; a gap asks for a GET; the document is stored
//!   before anything acts on it and then published on the identity's [`DesiredState`] watch
//!   (the bridge's interface to desired properties). A notification that breaks the hub's
//!   rules (deeper than 10 levels, …) or is not JSON is refused with one warning; the agent
//!   keeps running.
//!
//! The loop is a `select!` over the session's events, local-change notifications, the one
//! pending request and a retry timer, so desired notifications are handled while a request
//! waits for its answer.

pub mod status;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use device_protocols::backoff::{Backoff, BackoffConfig};
use serde_json::Value;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::hub::{Pacing, RequestError, SessionEvent, SessionHandle, TwinDocument};
use crate::store::{DesiredOutcome, DesiredUpdate, RejectKind, Store, StoreError};
use crate::twin::{Section, validate_patch};

pub use status::{IdentityStatus, QuarantinedKey, gateway_summary};

/// The desired document of one identity as last stored, for the bridge.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredState {
    /// The desired section (without `$version`).
    pub document: Value,
    /// Its `$version`.
    pub version: i64,
}

/// Everything one identity's driver works with.
#[derive(Debug)]
pub struct Driver {
    /// The identity (device id in the hub).
    pub device: String,
    /// The durable store.
    pub store: Store,
    /// The identity's hub session (requests).
    pub session: SessionHandle,
    /// The identity's hub session (events).
    pub events: mpsc::Receiver<SessionEvent>,
    /// Gateway-wide pacing of GETs and `PATCH`es.
    pub pacing: Pacing,
    /// Notified when the local reported document changed (the bridge merged poll results).
    pub local_changed: Arc<Notify>,
    /// Where the driver publishes its state, for the gateway twin and `status`.
    pub status: watch::Sender<IdentityStatus>,
    /// Poked whenever `status` changed (shared by every driver of a gateway).
    pub status_changed: Arc<Notify>,
    /// Where the driver publishes the stored desired document.
    pub desired: watch::Sender<Option<DesiredState>>,
    /// Backoff after 429, 5xx, unanswered requests and failed GETs.
    pub retry: BackoffConfig,
}

/// A request on its way: the one GET or `PATCH` the driver has in flight.
type Pending = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// What a finished request came back with.
enum Answer {
    Get(Result<TwinDocument, RequestError>),
    /// The store had nothing to send.
    NothingToSend,
    /// A `PATCH` was sent under `request_id`.
    Sent {
        request_id: String,
        result: Result<i64, RequestError>,
    },
    /// The store failed while picking the patch.
    StoreFailed(StoreError),
}

/// Why [`Driver::online`] returned.
enum Leave {
    Disconnected,
    Stopped,
}

impl Driver {
    /// Runs until `stop` is cancelled or the session goes away. Returns an error only when the
    /// store fails (the agent cannot keep its promises without it).
    pub async fn run(self, stop: CancellationToken) -> Result<(), StoreError> {
        // Every line of the driver carries IDENTITY= in the journal.
        let span = tracing::info_span!("sync", identity = %self.device);
        tracing::Instrument::instrument(self.drive(stop), span).await
    }

    async fn drive(mut self, stop: CancellationToken) -> Result<(), StoreError> {
        self.publish_stored_desired().await?;
        self.refresh_status().await?;
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = self.local_changed.notified() => {
                    self.refresh_status().await?;
                    continue;
                }
                event = self.events.recv() => event,
            };
            match event {
                None => return Ok(()),
                Some(SessionEvent::Connected) => {
                    self.set_status(|s| {
                        s.connected = true;
                        s.waiting_for_clock = false;
                    });
                    let leave = self.online(&stop).await;
                    self.set_status(|s| s.connected = false);
                    match leave? {
                        Leave::Disconnected => {}
                        Leave::Stopped => return Ok(()),
                    }
                }
                Some(other) => {
                    let _ = self.on_event(other).await?;
                }
            }
        }
    }

    /// Connected: GET, then keep both sides in sync until the link drops or `stop`.
    async fn online(&mut self, stop: &CancellationToken) -> Result<Leave, StoreError> {
        let mut need_get = true;
        let mut dirty = true;
        let mut pending: Option<Pending> = None;
        let mut retry_at: Option<Instant> = None;
        let mut backoff = Backoff::new(self.retry);
        loop {
            if pending.is_none() && retry_at.is_none() {
                if need_get {
                    pending = Some(self.start_get());
                } else if dirty {
                    dirty = false;
                    pending = Some(self.start_patch());
                }
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(Leave::Stopped),
                event = self.events.recv() => match event {
                    None => return Ok(Leave::Stopped),
                    Some(SessionEvent::Disconnected { reason }) => {
                        // A request still pending has an unknown outcome (the store's rule).
                        drop(pending);
                        self.store.disconnected(&self.device).await?;
                        self.on_disconnected(reason);
                        self.refresh_status().await?;
                        return Ok(Leave::Disconnected);
                    }
                    Some(SessionEvent::Connected) => need_get = true,
                    Some(other) => need_get |= self.on_event(other).await?,
                },
                () = self.local_changed.notified() => {
                    dirty = true;
                    self.refresh_status().await?;
                }
                answer = async { pending.as_mut().expect("guarded by the select condition").await },
                    if pending.is_some() =>
                {
                    pending = None;
                    let outcome = self.on_answer(answer).await?;
                    need_get = (need_get && !outcome.got_twin) || outcome.need_get;
                    dirty |= outcome.more;
                    match outcome.pace {
                        Pace::Retry => retry_at = Some(Instant::now() + backoff.next_delay()),
                        Pace::Reset => backoff.reset(),
                        Pace::Keep => {}
                    }
                    self.refresh_status().await?;
                }
                () = sleep_until(retry_at), if retry_at.is_some() => retry_at = None,
            }
        }
    }

    fn start_get(&self) -> Pending {
        let session = self.session.clone();
        let gets = self.pacing.gets.clone();
        Box::pin(async move {
            gets.acquire().await;
            Answer::Get(session.get_twin().await)
        })
    }

    fn start_patch(&self) -> Pending {
        let session = self.session.clone();
        let store = self.store.clone();
        let updates = self.pacing.updates.clone();
        let device = self.device.clone();
        Box::pin(async move {
            let request_id = session.next_request_id();
            // Recorded in flight before it is published: a crash in between is an unknown
            // outcome, which the next patch covers either way.
            let patch = match store.begin_send(&device, &request_id).await {
                Ok(Some(patch)) => patch,
                Ok(None) => return Answer::NothingToSend,
                Err(e) => return Answer::StoreFailed(e),
            };
            updates.acquire().await;
            let result = session.patch_reported(&request_id, &patch).await;
            Answer::Sent { request_id, result }
        })
    }

    /// Applies a finished request to the store and says what to do next.
    async fn on_answer(&mut self, answer: Answer) -> Result<Next, StoreError> {
        let device = self.device.clone();
        match answer {
            Answer::Get(Ok(twin)) => {
                self.store
                    .hub_reported(&device, twin.reported, twin.reported_version)
                    .await?;
                self.adopt_desired(DesiredUpdate::Full(twin.desired), twin.desired_version)
                    .await?;
                tracing::debug!(device, "twin fetched and adopted");
                Ok(Next {
                    got_twin: true,
                    more: true,
                    pace: Pace::Reset,
                    ..Next::default()
                })
            }
            Answer::Get(Err(e)) => {
                tracing::warn!(device, error = %e, "twin GET failed; retrying");
                Ok(Next {
                    pace: Pace::Retry,
                    ..Next::default()
                })
            }
            Answer::StoreFailed(e) => Err(e),
            Answer::NothingToSend => {
                let resync = self
                    .store
                    .sync_state(&device)
                    .await?
                    .is_some_and(|s| s.resync_needed);
                Ok(Next {
                    need_get: resync,
                    ..Next::default()
                })
            }
            Answer::Sent {
                request_id,
                result: Ok(version),
            } => {
                self.store.acked(&device, &request_id, version).await?;
                Ok(Next {
                    more: true,
                    pace: Pace::Reset,
                    ..Next::default()
                })
            }
            Answer::Sent {
                request_id,
                result: Err(RequestError::Status { status, message }),
            } => {
                let before = self.quarantined_keys().await?;
                let kind = self
                    .store
                    .rejected(&device, &request_id, status, &message)
                    .await?;
                match kind {
                    Some(RejectKind::Bad) => {
                        self.log_new_quarantine(&before, status, &message).await?;
                        Ok(Next {
                            more: true,
                            ..Next::default()
                        })
                    }
                    Some(RejectKind::Throttled | RejectKind::Unknown) => {
                        tracing::info!(device, status, "reported PATCH not applied; backing off");
                        Ok(Next {
                            more: true,
                            pace: Pace::Retry,
                            need_get: self.resync_needed().await?,
                            ..Next::default()
                        })
                    }
                    None => Ok(Next {
                        more: true,
                        ..Next::default()
                    }),
                }
            }
            Answer::Sent { result: Err(e), .. } => {
                // Sent (or maybe sent) without an answer: the hub may hold it or not.
                self.store.disconnected(&device).await?;
                tracing::info!(device, error = %e, "reported PATCH outcome unknown; will reconcile");
                Ok(Next {
                    more: true,
                    pace: Pace::Retry,
                    need_get: self.resync_needed().await?,
                    ..Next::default()
                })
            }
        }
    }

    /// Handles an event other than `Connected`/`Disconnected` in the online loop. Returns
    /// whether a GET is needed.
    async fn on_event(&mut self, event: SessionEvent) -> Result<bool, StoreError> {
        match event {
            SessionEvent::Desired { patch, version } => self.on_desired(patch, version).await,
            SessionEvent::BadDesired { reason } => {
                self.refuse_desired(&reason);
                Ok(false)
            }
            SessionEvent::WaitingForClock => {
                tracing::warn!(
                    device = self.device,
                    "waiting for a valid clock before connecting (the wall clock is earlier \
                     than this build)"
                );
                self.set_status(|s| s.waiting_for_clock = true);
                Ok(false)
            }
            SessionEvent::Disconnected { reason } => {
                self.store.disconnected(&self.device).await?;
                self.on_disconnected(reason);
                Ok(false)
            }
            SessionEvent::Connected => Ok(true),
        }
    }

    async fn on_desired(&mut self, patch: Value, version: i64) -> Result<bool, StoreError> {
        if let Err(e) = validate_patch(Section::Desired, &patch) {
            self.refuse_desired(&format!("version {version}: {e}"));
            return Ok(false);
        }
        self.adopt_desired(DesiredUpdate::Patch(patch), version)
            .await
            .map(|gap| gap.is_some())
    }

    /// Stores a desired update and publishes the result. Returns `Some` on a version gap.
    async fn adopt_desired(
        &mut self,
        update: DesiredUpdate,
        version: i64,
    ) -> Result<Option<()>, StoreError> {
        match self
            .store
            .desired_received(&self.device, update, version)
            .await
        {
            Ok(DesiredOutcome::Applied(document)) => {
                self.desired
                    .send_replace(Some(DesiredState { document, version }));
                Ok(None)
            }
            Ok(DesiredOutcome::Stale { .. }) => Ok(None),
            Ok(DesiredOutcome::Gap { held, got }) => {
                tracing::info!(
                    device = self.device,
                    ?held,
                    got,
                    "gap in desired versions; fetching the twin"
                );
                Ok(Some(()))
            }
            Err(StoreError::InvalidInput { .. }) => {
                self.refuse_desired(&format!("version {version} is not a valid twin version"));
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn refuse_desired(&self, reason: &str) {
        tracing::warn!(
            device = self.device,
            reason,
            "ignoring a desired-properties notification the hub rules do not allow"
        );
        self.set_status(|s| s.bad_desired += 1);
    }

    fn on_disconnected(&self, reason: String) {
        // Debug: the service logs link changes per identity, rate-limited.
        tracing::debug!(device = self.device, reason, "hub link down");
        self.set_status(|s| {
            s.connected = false;
            s.last_disconnect = Some(reason);
        });
    }

    async fn publish_stored_desired(&self) -> Result<(), StoreError> {
        if let Some(snapshot) = self.store.snapshot(&self.device).await?
            && let Some(version) = snapshot.desired_version
        {
            self.desired.send_replace(Some(DesiredState {
                document: snapshot.desired,
                version,
            }));
        }
        Ok(())
    }

    async fn resync_needed(&self) -> Result<bool, StoreError> {
        Ok(self
            .store
            .sync_state(&self.device)
            .await?
            .is_some_and(|s| s.resync_needed))
    }

    async fn quarantined_keys(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .store
            .sync_state(&self.device)
            .await?
            .map(|s| s.quarantined.into_keys().collect())
            .unwrap_or_default())
    }

    /// Logs each key newly quarantined by a 4xx (once: it is not retried until its value
    /// changes).
    async fn log_new_quarantine(
        &self,
        before: &[String],
        status: u16,
        message: &str,
    ) -> Result<(), StoreError> {
        for key in self.quarantined_keys().await? {
            if !before.contains(&key) {
                tracing::warn!(
                    device = self.device,
                    path = format!("reported.{key}"),
                    status,
                    message,
                    "the hub refused this reported property; withheld until its value changes"
                );
            }
        }
        Ok(())
    }

    /// Changes the published [`IdentityStatus`]; when that changed anything, pokes
    /// `status_changed` (the gateway summary listens).
    fn set_status(&self, change: impl FnOnce(&mut IdentityStatus)) {
        let modified = self.status.send_if_modified(|s| {
            let before = s.clone();
            change(s);
            *s != before
        });
        if modified {
            self.status_changed.notify_one();
        }
    }

    /// Re-reads the sync state into the published [`IdentityStatus`].
    async fn refresh_status(&self) -> Result<(), StoreError> {
        let Some(state) = self.store.sync_state(&self.device).await? else {
            return Ok(());
        };
        let quarantined = status::quarantined_keys(&state);
        let converged = state.converged();
        self.set_status(|s| {
            s.quarantined.clone_from(&quarantined);
            if converged {
                s.unsynced_since = None;
            } else if s.unsynced_since.is_none() {
                s.unsynced_since = Some(SystemTime::now());
            }
        });
        Ok(())
    }
}

/// What to do after an answer.
#[derive(Debug, Default)]
struct Next {
    /// The twin was fetched (the pending GET need is satisfied).
    got_twin: bool,
    /// A GET is needed (version gap, too many unknown outcomes).
    need_get: bool,
    /// Something more may be sendable.
    more: bool,
    /// What the answer means for the retry backoff.
    pace: Pace,
}

/// What an answer means for the retry backoff.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// Leave it as it is.
    #[default]
    Keep,
    /// Back off before the next request.
    Retry,
    /// The hub answered with success: start over from the shortest delay.
    Reset,
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
