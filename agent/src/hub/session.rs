//! The session task of one identity, on rumqttc (`AsyncClient` + `EventLoop`).
//!
//! Each connection attempt gets a fresh `EventLoop` (fresh token, no state carried over:
//! `clean_session`, and the store is the source of truth), driven by a small task that
//! forwards its events and stops at the first error, so rumqttc never retries on its own:
//! this task owns the retry loop, its backoff and its pacing.
//!
//! The sessions of a gateway share one uplink ([`Uplink`]). Each session's backoff grows to
//! minutes, and after a long hub outage the sessions' retries bunch up (they all failed at the
//! same instant and their jitter only trims each delay), so without help the first one back
//! would come minutes after the hub. So:
//! - while no session is connected, one of the sleeping sessions retries whenever the gateway
//!   made no attempt for [`OUTAGE_PROBE`] (less up to a fifth, at random, so gateways that
//!   lost the hub together do not probe in step): one CONNECT per probe period for the whole
//!   gateway, not per identity. A session whose credentials the hub refused does not probe:
//!   its key will not get better by asking again;
//! - when a session connects after failing, every session sleeping out a backoff retries at
//!   once, through the connect pacing.
//!
//! Requests go straight from the handles to the `AsyncClient` of the live connection; their
//! answers are routed back here by `$rid` through the shared pending map.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use device_protocols::backoff::Backoff;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet, Proxy,
    ProxyAuth, ProxyType, QoS, SubscribeFilter, SubscribeReasonCode, TlsConfiguration,
};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};

use super::response::{RawResponse, desired_event};
use super::topics::{self, Incoming};
use super::{
    Credential, HubLink, LinkSettings, RequestError, SessionEvent, Transport, clock, sas, tls,
};

/// How often the wall clock is rechecked while it is implausible.
pub const CLOCK_RECHECK: Duration = Duration::from_secs(2);
/// How long a clean DISCONNECT may take to be written before the connection is just dropped.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);
/// Events buffered between rumqttc's loop and this task.
const DRIVER_CHANNEL: usize = 32;
/// Requests queued in rumqttc's channel.
const CLIENT_CHANNEL: usize = 16;
/// In-flight `QoS` 1 packets (only the SUBSCRIBE, in practice): small keeps rumqttc's table small.
const INFLIGHT: u16 = 8;
/// Events held for the driver beyond the channel, before they are counted as lost.
const MAX_QUEUED_EVENTS: usize = 4096;
/// Capacity of the event channel handed to the driver.
pub const EVENT_CHANNEL: usize = 64;

/// While no session of the gateway is connected, the longest the gateway goes without a
/// connect attempt: one sleeping session then retries, whatever its own backoff.
pub const OUTAGE_PROBE: Duration = Duration::from_secs(5);
/// Each probe period is [`OUTAGE_PROBE`] shortened by up to this fraction, at random: a
/// fleet of gateways that lost the hub at the same instant does not keep probing in step.
const OUTAGE_PROBE_JITTER: f64 = 0.2;

/// What the sessions of one gateway know together about their shared uplink.
#[derive(Debug)]
pub(super) struct Uplink {
    /// Bumped when a session connects after failing: the uplink is back.
    recovered: watch::Sender<u64>,
    /// Sessions connected now.
    connected: AtomicUsize,
    /// When the next outage probe is due: a jittered [`OUTAGE_PROBE`] after the gateway's
    /// last connect attempt (any session).
    next_probe: Mutex<Instant>,
}

impl Uplink {
    pub(super) fn new() -> Self {
        Self {
            recovered: watch::Sender::new(0),
            connected: AtomicUsize::new(0),
            next_probe: Mutex::new(Instant::now() + probe_period()),
        }
    }

    fn next_probe(&self) -> MutexGuard<'_, Instant> {
        // A plain instant: valid whatever a panicking holder left.
        self.next_probe
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn attempting(&self) {
        *self.next_probe() = Instant::now() + probe_period();
    }

    /// When the next outage probe is due, if the uplink looks down (no session connected).
    fn probe_due(&self) -> Option<Instant> {
        (self.connected.load(Ordering::SeqCst) == 0).then(|| *self.next_probe())
    }

    /// Whether the caller may probe now: true for exactly one of the sessions woken together.
    fn claim_probe(&self) -> bool {
        let mut next = self.next_probe();
        let now = Instant::now();
        if self.connected.load(Ordering::SeqCst) == 0 && now >= *next {
            *next = now + probe_period();
            true
        } else {
            false
        }
    }
}

/// One outage probe period: [`OUTAGE_PROBE`], jittered.
fn probe_period() -> Duration {
    device_protocols::backoff::jittered(OUTAGE_PROBE, OUTAGE_PROBE_JITTER)
}

/// Counts a session as connected while it lives.
struct ConnectedGuard(Arc<Uplink>);

impl ConnectedGuard {
    fn new(uplink: &Arc<Uplink>) -> Self {
        uplink.connected.fetch_add(1, Ordering::SeqCst);
        Self(uplink.clone())
    }
}

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::SeqCst);
    }
}

/// When to renew a SAS token of `lifetime`: at 80 % of it, and at least two seconds before it
/// ends (never sooner than one second after connecting, so a tiny lifetime cannot spin).
pub fn renew_after(lifetime: Duration) -> Duration {
    let eighty = lifetime.mul_f64(0.8);
    let margin = lifetime.saturating_sub(Duration::from_secs(2));
    eighty.min(margin).max(Duration::from_secs(1))
}

/// State shared by the task and its handles.
pub(super) struct Shared {
    pub(super) request_timeout: Duration,
    state: Mutex<LinkState>,
    /// Signalled when a pending request goes away (answered, timed out, cancelled).
    settled: Notify,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("Shared")
            .field("connected", &st.client.is_some())
            .field("pending", &st.pending.len())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct LinkState {
    /// The live connection's client, while it accepts requests.
    client: Option<AsyncClient>,
    /// Requests waiting for their answer, by `$rid`.
    pending: HashMap<String, oneshot::Sender<RawResponse>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, LinkState> {
        // The state stays consistent whatever a panicking holder did (plain inserts/removes).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes a request and waits for its answer, bounded by the request timeout.
    pub(super) async fn request(
        &self,
        rid: &str,
        topic: String,
        payload: Vec<u8>,
    ) -> Result<RawResponse, RequestError> {
        let (client, rx) = {
            let mut st = self.lock();
            let Some(client) = st.client.clone() else {
                return Err(RequestError::NotConnected);
            };
            let (tx, rx) = oneshot::channel();
            // A reused rid replaces the older waiter, which then resolves to LinkLost.
            st.pending.insert(rid.to_owned(), tx);
            (client, rx)
        };
        let _guard = PendingGuard { shared: self, rid };
        let exchange = async {
            client
                .publish(topic, QoS::AtMostOnce, false, payload)
                .await
                .map_err(|_| RequestError::NotConnected)?;
            rx.await.map_err(|_| RequestError::LinkLost)
        };
        timeout(self.request_timeout, exchange)
            .await
            .unwrap_or(Err(RequestError::Timeout))
    }

    /// Delivers an answer to its waiter; false when nobody waits for `rid` (any more).
    fn answer(&self, rid: &str, response: RawResponse) -> bool {
        let tx = self.lock().pending.remove(rid);
        self.settled.notify_one();
        tx.is_some_and(|tx| tx.send(response).is_ok())
    }

    fn set_client(&self, client: Option<AsyncClient>) {
        self.lock().client = client;
    }

    /// Ends every pending request with `LinkLost` and stops accepting new ones.
    fn lose_link(&self) -> usize {
        let mut st = self.lock();
        st.client = None;
        let n = st.pending.len();
        st.pending.clear();
        n
    }

    fn pending(&self) -> usize {
        self.lock().pending.len()
    }
}

/// Removes a request from the pending map when its caller stops waiting (answer, timeout,
/// error or a dropped future).
struct PendingGuard<'a> {
    shared: &'a Shared,
    rid: &'a str,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().pending.remove(self.rid);
        self.shared.settled.notify_one();
    }
}

/// What handles ask of the task.
#[derive(Debug)]
pub(super) enum Command {
    /// Disconnect cleanly and stop; the sender is dropped when done.
    Shutdown(oneshot::Sender<()>),
}

/// Starts the task; returns the shared state, the command sender and the event receiver.
pub(super) fn spawn(
    link: &HubLink,
    device_id: Arc<str>,
    credential: Credential,
) -> (
    Arc<Shared>,
    mpsc::Sender<Command>,
    mpsc::Receiver<SessionEvent>,
) {
    let shared = Arc::new(Shared {
        request_timeout: link.settings.request_timeout,
        state: Mutex::new(LinkState::default()),
        settled: Notify::new(),
    });
    let (cmd_tx, cmd_rx) = mpsc::channel(4);
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_CHANNEL);
    let task = Task {
        link: link.clone(),
        device_id,
        credential,
        shared: shared.clone(),
        ctl: Ctl {
            commands: cmd_rx,
            handles_gone: false,
            stop: false,
            replies: Vec::new(),
            events: ev_tx,
            queue: VecDeque::new(),
            dropped_events: 0,
        },
        backoff: Backoff::new(link.settings.backoff),
        failures: 0,
    };
    // Every line of the session carries IDENTITY= in the journal.
    let span = tracing::info_span!("hub", identity = %task.device_id);
    tokio::spawn(tracing::Instrument::instrument(task.run(), span));
    (shared, cmd_tx, ev_rx)
}

/// The task's control side: commands, the event channel, when to stop. Every wait of the task
/// goes through [`Ctl::run`], so it stays responsive to shutdown and keeps events flowing.
struct Ctl {
    commands: mpsc::Receiver<Command>,
    handles_gone: bool,
    stop: bool,
    /// Shutdown callers, answered (by dropping) when the task ends.
    replies: Vec<oneshot::Sender<()>>,
    events: mpsc::Sender<SessionEvent>,
    /// Events the receiver has no room for yet: buffered so that routing answers never waits
    /// on a driver that is busy awaiting one of those answers.
    queue: VecDeque<SessionEvent>,
    dropped_events: u64,
}

impl Ctl {
    fn should_stop(&self) -> bool {
        self.stop || (self.handles_gone && self.events.is_closed())
    }

    fn emit(&mut self, event: SessionEvent) {
        if self.events.is_closed() {
            return;
        }
        if self.queue.is_empty() {
            match self.events.try_send(event) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                Err(mpsc::error::TrySendError::Full(event)) => self.queue.push_back(event),
            }
        } else if self.queue.len() < MAX_QUEUED_EVENTS {
            self.queue.push_back(event);
        } else {
            // The driver stopped reading; the next GET after a reconnect resynchronises.
            self.dropped_events += 1;
            if self.dropped_events == 1 {
                tracing::warn!("session events not read by the driver; dropping");
            }
        }
    }

    /// Runs `fut` to completion while serving commands and the event queue; `None` when the
    /// task must stop instead.
    async fn run<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            if self.should_stop() {
                return None;
            }
            let flush = !self.queue.is_empty();
            let watch_receiver = self.handles_gone && !self.events.is_closed();
            tokio::select! {
                out = &mut fut => return Some(out),
                cmd = self.commands.recv(), if !self.handles_gone => match cmd {
                    Some(Command::Shutdown(reply)) => {
                        self.stop = true;
                        self.replies.push(reply);
                    }
                    None => self.handles_gone = true,
                },
                permit = self.events.reserve(), if flush => match permit {
                    Ok(permit) => {
                        if let Some(event) = self.queue.pop_front() {
                            permit.send(event);
                        }
                    }
                    Err(_) => self.queue.clear(),
                },
                () = self.events.closed(), if watch_receiver => {}
            }
        }
    }
}

/// One live MQTT connection.
struct Conn {
    client: AsyncClient,
    events: mpsc::Receiver<Result<Event, ConnectionError>>,
    driver: AbortOnDrop,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a connection attempt did not give a usable session.
enum AttemptError {
    /// The task must stop.
    Stop,
    /// The attempt failed (for logs; never holds a secret).
    Failed(String),
    /// The hub refused this identity's credentials (CONNACK 4 or 5): the uplink works, so
    /// this session sleeps out its own backoff and takes no part in the outage probe.
    Credentials(String),
}

/// How a connected phase ended.
enum Ended {
    Stop,
    Renew,
    Lost(String),
}

struct Task {
    link: HubLink,
    device_id: Arc<str>,
    credential: Credential,
    shared: Arc<Shared>,
    ctl: Ctl,
    backoff: Backoff,
    /// Failed attempts in the current streak (the first is logged as a warning).
    failures: u32,
}

impl Task {
    fn settings(&self) -> &LinkSettings {
        &self.link.settings
    }

    async fn run(mut self) {
        loop {
            if self.wait_for_clock().await.is_none() {
                break;
            }
            let pacing = self.link.pacing.connects.clone();
            if self.ctl.run(pacing.acquire()).await.is_none() {
                break;
            }
            let started = Instant::now();
            self.link.uplink.attempting();
            let conn = match self.attempt().await {
                Ok(conn) => conn,
                Err(failure) => {
                    let (reason, may_probe) = match failure {
                        AttemptError::Stop => break,
                        AttemptError::Failed(reason) => (reason, true),
                        AttemptError::Credentials(reason) => (reason, false),
                    };
                    self.failures += 1;
                    if self.failures == 1 {
                        tracing::warn!(device = %self.device_id, error = %reason,
                            "hub connect failed; retrying with backoff (logged once per streak)");
                    } else {
                        tracing::debug!(device = %self.device_id, error = %reason,
                            failures = self.failures, "hub connect failed again");
                    }
                    let delay = self.backoff.next_delay();
                    if self.backoff_sleep(delay, may_probe).await.is_none() {
                        break;
                    }
                    continue;
                }
            };
            if self.failures > 0 {
                // Debug: the service logs link changes per identity, rate-limited.
                tracing::debug!(device = %self.device_id, failed_attempts = self.failures,
                    "connected to the hub after failed attempts");
            } else {
                tracing::debug!(device = %self.device_id, "connected to the hub");
            }
            let connected = ConnectedGuard::new(&self.link.uplink);
            if self.backoff.failures() > 0 {
                // The uplink works again: wake the sessions still sleeping out a backoff.
                self.link
                    .uplink
                    .recovered
                    .send_modify(|generation| *generation += 1);
            }
            self.failures = 0;
            self.backoff.reset();
            self.shared.set_client(Some(conn.client.clone()));
            self.ctl.emit(SessionEvent::Connected);
            let ended = self.connected(conn, started).await;
            drop(connected);
            match ended {
                Ended::Stop => break,
                Ended::Renew => {
                    tracing::debug!(device = %self.device_id, "reconnecting to renew the SAS token");
                    self.ctl.emit(SessionEvent::Disconnected {
                        reason: "renewing SAS token".into(),
                    });
                }
                Ended::Lost(reason) => {
                    let lost = self.shared.lose_link();
                    tracing::debug!(device = %self.device_id, %reason, pending_requests = lost,
                        "disconnected from the hub");
                    self.ctl.emit(SessionEvent::Disconnected { reason });
                    // Jittered, so that a hub-wide drop does not bring every identity back at
                    // the same instant.
                    let delay = self.backoff.next_delay();
                    if self.backoff_sleep(delay, true).await.is_none() {
                        break;
                    }
                }
            }
        }
        self.shared.lose_link();
        // Let the driver see the last events (Disconnected) if it still reads.
        while let Some(event) = self.ctl.queue.pop_front() {
            if self.ctl.events.try_send(event).is_err() {
                break;
            }
        }
        tracing::debug!(device = %self.device_id, "session task ended");
    }

    /// Sleeps out a backoff `delay`, or less: until another session of the gateway connects
    /// after failures, or (if `may_probe`) until this session takes the gateway's outage probe
    /// (`None` = stop). A session refused for its credentials does not probe: the hub answered,
    /// so the uplink is not what failed, and a wrong key must not be retried every few seconds.
    async fn backoff_sleep(&mut self, delay: Duration, may_probe: bool) -> Option<()> {
        let until = Instant::now() + delay;
        // Subscribing marks the current generation as seen: only a later recovery wakes.
        let mut recovered = self.link.uplink.recovered.subscribe();
        let uplink = self.link.uplink.clone();
        let why = self
            .ctl
            .run(async {
                loop {
                    let probe_at = uplink.probe_due().filter(|_| may_probe);
                    tokio::select! {
                        () = sleep_until(until) => return "backoff",
                        changed = recovered.changed() => {
                            if changed.is_err() {
                                // The link (and its sender) outlives this task; never happens.
                                std::future::pending::<()>().await;
                            }
                            return "another session reconnected";
                        }
                        () = sleep_until(probe_at.unwrap_or(until)), if probe_at.is_some() => {
                            if uplink.claim_probe() {
                                return "outage probe";
                            }
                        }
                    }
                }
            })
            .await?;
        if why != "backoff" {
            tracing::debug!(device = %self.device_id, reason = why,
                "retrying before the backoff is over");
        }
        Some(())
    }

    /// Returns once the wall clock is plausible (`None` = stop).
    async fn wait_for_clock(&mut self) -> Option<()> {
        let mut waiting = false;
        while !clock::is_plausible((self.settings().wall_clock)()) {
            if !waiting {
                waiting = true;
                tracing::warn!(device = %self.device_id,
                    earliest = ?clock::earliest_plausible(),
                    "wall clock is before this build was made; waiting for it to be set");
                self.ctl.emit(SessionEvent::WaitingForClock);
            }
            self.ctl.run(sleep(CLOCK_RECHECK)).await?;
        }
        Some(())
    }

    /// Connects and subscribes.
    async fn attempt(&mut self) -> Result<Conn, AttemptError> {
        let options = self.options().map_err(AttemptError::Failed)?;
        let (client, eventloop) = AsyncClient::new(options, CLIENT_CHANNEL);
        let (tx, mut events) = mpsc::channel(DRIVER_CHANNEL);
        let driver = AbortOnDrop(tokio::spawn(drive(eventloop, tx)));

        match self.ctl.run(events.recv()).await {
            None => return Err(AttemptError::Stop),
            Some(Some(Ok(Event::Incoming(Packet::ConnAck(_))))) => {}
            Some(Some(Err(e))) => return Err(attempt_error(&e)),
            Some(Some(Ok(other))) => {
                return Err(AttemptError::Failed(format!(
                    "unexpected first event {other:?}"
                )));
            }
            Some(None) => return Err(AttemptError::Failed("MQTT event loop ended".into())),
        }
        let filters = [topics::RESPONSE_FILTER, topics::DESIRED_FILTER]
            .map(|f| SubscribeFilter::new(f.to_owned(), QoS::AtLeastOnce));
        if client.subscribe_many(filters).await.is_err() {
            return Err(AttemptError::Failed("MQTT event loop ended".into()));
        }
        let deadline = Instant::now() + self.settings().request_timeout;
        loop {
            let next = async {
                tokio::select! {
                    ev = events.recv() => Some(ev),
                    () = sleep_until(deadline) => None,
                }
            };
            match self.ctl.run(next).await {
                None => return Err(AttemptError::Stop),
                Some(None) => {
                    return Err(AttemptError::Failed(
                        "no SUBACK within the request timeout".into(),
                    ));
                }
                Some(Some(Some(Ok(Event::Incoming(Packet::SubAck(ack)))))) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure))
                    {
                        return Err(AttemptError::Failed(format!(
                            "hub refused a subscription: {:?}",
                            ack.return_codes
                        )));
                    }
                    return Ok(Conn {
                        client,
                        events,
                        driver,
                    });
                }
                Some(Some(Some(Ok(Event::Incoming(Packet::Publish(p)))))) => {
                    self.route(&p);
                }
                Some(Some(Some(Ok(_)))) => {}
                Some(Some(Some(Err(e)))) => return Err(AttemptError::Failed(describe(&e))),
                Some(Some(None)) => {
                    return Err(AttemptError::Failed("MQTT event loop ended".into()));
                }
            }
        }
    }

    /// Serves a live connection until it ends.
    async fn connected(&mut self, mut conn: Conn, started: Instant) -> Ended {
        let renew_at = match self.credential {
            Credential::SymmetricKey(_) => {
                Some(started + renew_after(self.settings().token_lifetime))
            }
            Credential::X509 { .. } => None,
        };
        loop {
            let next = async {
                tokio::select! {
                    ev = conn.events.recv() => Some(ev),
                    () = sleep_until(renew_at.unwrap_or_else(Instant::now)), if renew_at.is_some() => None,
                }
            };
            match self.ctl.run(next).await {
                None => {
                    self.disconnect(conn).await;
                    return Ended::Stop;
                }
                Some(None) => break,
                Some(Some(ev)) => {
                    if let Err(reason) = self.on_event(ev) {
                        return Ended::Lost(reason);
                    }
                }
            }
        }
        // Renewal: no new requests; let the pending ones be answered, but not past the point
        // where the token would run out.
        self.shared.set_client(None);
        let lifetime = self.settings().token_lifetime;
        let expiry_margin = started + lifetime.saturating_sub(Duration::from_millis(1500));
        let drain_until = (Instant::now() + self.settings().request_timeout)
            .min(expiry_margin.max(Instant::now()));
        while self.shared.pending() > 0 {
            let settled = self.shared.settled.notified();
            let next = async {
                tokio::select! {
                    ev = conn.events.recv() => Some(Some(ev)),
                    () = settled => Some(None),
                    () = sleep_until(drain_until) => None,
                }
            };
            match self.ctl.run(next).await {
                None => {
                    self.disconnect(conn).await;
                    return Ended::Stop;
                }
                Some(None) => break,
                Some(Some(None)) => {}
                Some(Some(Some(ev))) => {
                    if let Err(reason) = self.on_event(ev) {
                        return Ended::Lost(reason);
                    }
                }
            }
        }
        self.disconnect(conn).await;
        Ended::Renew
    }

    /// Handles one event of a live connection; `Err` = the connection is gone.
    fn on_event(&mut self, ev: Option<Result<Event, ConnectionError>>) -> Result<(), String> {
        match ev {
            None => Err("MQTT event loop ended".into()),
            Some(Err(e)) => Err(describe(&e)),
            Some(Ok(Event::Incoming(Packet::Publish(p)))) => {
                self.route(&p);
                Ok(())
            }
            Some(Ok(Event::Incoming(Packet::Disconnect))) => Err("hub sent DISCONNECT".into()),
            Some(Ok(_)) => Ok(()),
        }
    }

    /// Routes an incoming publish by its topic.
    fn route(&mut self, p: &rumqttc::Publish) {
        match topics::route(&p.topic) {
            Incoming::Response {
                status,
                rid,
                version,
            } => {
                let response = RawResponse {
                    status,
                    version,
                    body: p.payload.to_vec(),
                };
                if !self.shared.answer(&rid, response) {
                    tracing::debug!(device = %self.device_id, %rid, status,
                        "twin response nobody waits for (timed out or unknown)");
                }
            }
            Incoming::Desired { version } => {
                let event = desired_event(version, &p.payload);
                if let SessionEvent::BadDesired { reason } = &event {
                    tracing::warn!(device = %self.device_id, %reason, "unusable desired notification");
                }
                self.ctl.emit(event);
            }
            Incoming::Other => {
                tracing::debug!(device = %self.device_id, topic = %p.topic, "ignoring publish");
            }
        }
    }

    /// Sends DISCONNECT (bounded by a grace period), then drops the connection. Pending
    /// requests resolve to `LinkLost`.
    async fn disconnect(&mut self, conn: Conn) {
        self.shared.lose_link();
        let Conn {
            client,
            mut events,
            driver,
        } = conn;
        if client.try_disconnect().is_ok() {
            let flushed = async {
                while let Some(ev) = events.recv().await {
                    match ev {
                        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            };
            let _ = timeout(DISCONNECT_GRACE, flushed).await;
        }
        drop(driver);
    }

    /// MQTT options of a fresh attempt: a fresh token (SAS) or the client certificate (X.509).
    fn options(&self) -> Result<MqttOptions, String> {
        let s = self.settings();
        let id: &str = &self.device_id;
        if id.is_empty() || id.starts_with(' ') {
            return Err(format!("device id {id:?} is not a valid MQTT client id"));
        }
        let (password, tls) = match &self.credential {
            Credential::SymmetricKey(key) => {
                // Rounded up, so the token lives at least `token_lifetime` and the renewal
                // (timed from before this) keeps its margin.
                let now = (s.wall_clock)();
                let expiry = now
                    .checked_add(s.token_lifetime.max(Duration::from_secs(1)))
                    .ok_or("token lifetime out of range")?;
                let token =
                    sas::device_token(&s.host, id, key.expose(), clock::epoch_secs_ceil(expiry))
                        .map_err(|e| e.to_string())?;
                (token, self.link.tls.clone())
            }
            Credential::X509 {
                cert_file,
                key_file,
            } => {
                let tls =
                    tls::client_config_with_cert(self.link.roots.clone(), cert_file, key_file)
                        .map_err(|e| e.to_string())?;
                (String::new(), tls)
            }
        };
        let port = s.port.unwrap_or_else(|| s.transport.default_port());
        let mut o = match s.transport {
            Transport::Mqtt => {
                let mut o = MqttOptions::new(id, s.host.clone(), port);
                o.set_transport(rumqttc::Transport::tls_with_config(
                    TlsConfiguration::Rustls(tls),
                ));
                o
            }
            Transport::MqttWs => {
                let url = format!("wss://{}:{port}/$iothub/websocket", s.host);
                let mut o = MqttOptions::new(id, url, port);
                o.set_transport(rumqttc::Transport::wss_with_config(
                    TlsConfiguration::Rustls(tls),
                ));
                o
            }
        };
        o.set_credentials(sas::username(&s.host, id), password);
        let keep_alive = if s.keep_alive.is_zero() {
            Duration::ZERO
        } else {
            s.keep_alive.max(Duration::from_secs(1))
        };
        o.set_keep_alive(keep_alive);
        o.set_max_packet_size(s.max_packet_size, s.max_packet_size);
        o.set_clean_session(true);
        o.set_inflight(INFLIGHT);
        if let Some(proxy) = &s.proxy {
            o.set_proxy(Proxy {
                ty: ProxyType::Http,
                auth: match &proxy.auth {
                    None => ProxyAuth::None,
                    Some((username, password)) => ProxyAuth::Basic {
                        username: username.clone(),
                        password: password.expose().to_owned(),
                    },
                },
                addr: proxy.host.clone(),
                port: proxy.port,
            });
        }
        Ok(o)
    }
}

/// Polls rumqttc's event loop and forwards its events, stopping at the first error (so it
/// never reconnects by itself) or when nobody listens.
async fn drive(mut eventloop: EventLoop, tx: mpsc::Sender<Result<Event, ConnectionError>>) {
    loop {
        let event = eventloop.poll().await;
        let failed = event.is_err();
        if tx.send(event).await.is_err() || failed {
            break;
        }
    }
}

/// A failed connect: a refusal of the credentials, or anything else.
fn attempt_error(e: &ConnectionError) -> AttemptError {
    match e {
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
        ) => AttemptError::Credentials(describe(e)),
        _ => AttemptError::Failed(describe(e)),
    }
}

/// A connection error for logs and `Disconnected` (rumqttc's errors never echo the password).
fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => format!("hub refused the connection: {code:?}"),
        ConnectionError::Io(io) => format!("network: {io}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctl(capacity: usize) -> (Ctl, mpsc::Sender<Command>, mpsc::Receiver<SessionEvent>) {
        let (cmd_tx, commands) = mpsc::channel(4);
        let (events, ev_rx) = mpsc::channel(capacity);
        let ctl = Ctl {
            commands,
            handles_gone: false,
            stop: false,
            replies: Vec::new(),
            events,
            queue: VecDeque::new(),
            dropped_events: 0,
        };
        (ctl, cmd_tx, ev_rx)
    }

    fn desired(version: i64) -> SessionEvent {
        SessionEvent::Desired {
            patch: serde_json::json!({}),
            version,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn events_beyond_the_channel_are_queued_in_order() {
        let (mut ctl, _cmd, mut rx) = ctl(2);
        for v in 1..=5 {
            ctl.emit(desired(v));
        }
        assert_eq!(ctl.queue.len(), 3);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..5 {
                got.push(rx.recv().await.expect("event"));
            }
            got
        });
        // Any wait of the task flushes the queue as the receiver makes room.
        assert!(ctl.run(sleep(Duration::from_secs(1))).await.is_some());
        assert!(ctl.queue.is_empty());
        assert_eq!(
            reader.await.expect("reader"),
            (1..=5).map(desired).collect::<Vec<_>>()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stops_on_shutdown_or_when_everyone_is_gone() {
        let (mut ctl, cmd, rx) = ctl(2);
        let (reply, done) = oneshot::channel();
        cmd.send(Command::Shutdown(reply)).await.expect("queued");
        assert!(ctl.run(std::future::pending::<()>()).await.is_none());
        drop(ctl);
        assert!(
            done.await.is_err(),
            "the reply is dropped when the task ends"
        );

        let (mut ctl, cmd, rx2) = self::ctl(2);
        drop(cmd);
        // Handles gone, events still read: keeps running.
        assert!(ctl.run(sleep(Duration::from_secs(1))).await.is_some());
        drop(rx2);
        assert!(ctl.run(std::future::pending::<()>()).await.is_none());
        drop(rx);
    }

    #[tokio::test(start_paused = true)]
    async fn one_outage_probe_per_period_and_none_while_a_session_is_connected() {
        let uplink = Arc::new(Uplink::new());
        assert!(
            !uplink.claim_probe(),
            "the link's start counts as an attempt"
        );
        sleep(OUTAGE_PROBE).await;
        assert!(uplink.probe_due().is_some());
        assert!(uplink.claim_probe());
        assert!(
            !uplink.claim_probe(),
            "one session per period for the whole gateway"
        );
        sleep(OUTAGE_PROBE).await;
        let connected = ConnectedGuard::new(&uplink);
        assert_eq!(uplink.probe_due(), None, "the uplink works");
        assert!(!uplink.claim_probe());
        drop(connected);
        assert!(uplink.claim_probe());
        sleep(OUTAGE_PROBE).await;
        // Any session's own attempt is as good as a probe.
        uplink.attempting();
        sleep(OUTAGE_PROBE / 2).await;
        assert!(!uplink.claim_probe());
    }

    #[test]
    fn outage_probe_periods_are_jittered_within_the_probe_period() {
        let periods: Vec<Duration> = (0..200).map(|_| probe_period()).collect();
        let shortest = OUTAGE_PROBE.mul_f64(1.0 - OUTAGE_PROBE_JITTER);
        assert!(
            periods.iter().all(|p| *p >= shortest && *p <= OUTAGE_PROBE),
            "{periods:?}"
        );
        // 200 draws from a continuous range: all equal only if there is no jitter.
        assert!(periods.iter().any(|p| *p != periods[0]), "{periods:?}");
    }

    #[test]
    fn renewal_times() {
        assert_eq!(
            renew_after(Duration::from_hours(1)),
            Duration::from_mins(48)
        );
        assert_eq!(renew_after(Duration::from_secs(10)), Duration::from_secs(8));
        // Short lifetimes: two seconds before the end.
        assert_eq!(renew_after(Duration::from_secs(5)), Duration::from_secs(3));
        // Never sooner than a second.
        assert_eq!(
            renew_after(Duration::from_millis(500)),
            Duration::from_secs(1)
        );
        assert_eq!(renew_after(Duration::ZERO), Duration::from_secs(1));
    }
}
