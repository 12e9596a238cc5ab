//! The durable store: one SQLite file holding, per device identity, the reported replica and
//! its sync state, the desired document, per-property applied versions and acks, and the
//! every-change journal.
//!
//! # Shape
//!
//! - One writer: [`Store::open`] starts a dedicated thread that owns the only read-write
//!   [`rusqlite::Connection`]. Every method sends one command to it and returns a [`Reply`]
//!   that is both a `Future` (`.await` it in tokio) and blockable ([`Reply::wait`], outside an
//!   async context). The command is queued when the method is called, in call order; dropping
//!   the `Reply` does not cancel it.
//! - Every logical change is exactly one transaction (`BEGIN IMMEDIATE … COMMIT`):
//!   [`Store::merge_local`] (new poll results), [`Store::begin_send`] (PATCH sent),
//!   [`Store::acked`] / [`Store::rejected`] (PATCH answered), [`Store::disconnected`],
//!   [`Store::hub_reported`] (GET result), [`Store::desired_received`], [`Store::applied_ack`].
//!   The sync rules themselves are pure functions in [`sync_state`].
//! - [`ReadOnlyStore`] opens the same file read-only (the CLI `twinbridge status` while the
//!   agent runs: WAL lets it read a consistent snapshot without blocking the writer).
//! - Schema migrations are forward-only and keyed on `PRAGMA user_version` ([`schema`]).
//!
//! # Durability: `journal_mode = WAL`, `synchronous = FULL` (default)
//!
//! A commit returns only after SQLite has written the transaction to the WAL file. That alone
//! makes a committed change survive a process kill (the data is in the kernel's page cache);
//! both levels pass the kill -9 crash test (`tests/tests/store_crash.rs`). The levels differ on
//! **power loss**: `NORMAL` syncs the WAL only at checkpoints, so the last commits before a
//! power cut can be lost (the file stays consistent); `FULL` fsyncs the WAL at every commit, so
//! a committed change survives power loss too. A gateway loses power far more often than a
//! server, and a lost commit is not always harmless: a lost "applied + ack" would write a
//! desired value to the device twice, a lost journal entry is a hole in the audit trail.
//!
//! The cost was measured (`cargo bench -p twinbridge --bench store_throughput`, figures in
//! `BENCHMARKS.md`): on the development VM, 100 devices × 20 properties, `FULL` commits about
//! 2 500–5 000 poll-result transactions per second against 13 000–22 000 with `NORMAL`. A
//! gateway polling 100 devices every 2 s needs 50 (about 150 with the matching sends and
//! acks), so `FULL` is the default; [`Synchronous::Normal`] stays available for SD cards where
//! fsync latency is extreme. The busy timeout (5 s by default) covers a concurrent `status`
//! reader during checkpoints.
//!
//! # The sync model, and why the state keeps `alternatives`
//!
//! DESIGN.md's rule is "send `diff(hub_reported ⊕ in_flight, local)`, one patch in flight per
//! device". That rule silently assumes the store always knows what the hub holds. It does not
//! after a PATCH whose answer never came (link lost, process killed, or a 5xx): the hub may or
//! may not have applied it, and nothing but a GET can tell. Both guesses go wrong:
//!
//! - hub `{a: 1}`, local `{a: 2}`; the gateway sends `{a: 2}` and the link drops before the 204.
//!   Then the device reverts and `local` is `{a: 1}` again. Assuming "not applied",
//!   `diff({a: 1}, {a: 1})` is empty and nothing is sent, while the hub may show `a: 2` forever.
//! - Assuming "applied" instead fails the mirror case: `local` stays `{a: 2}`, the diff against
//!   the assumed `{a: 2}` is empty, and a hub that never got the patch keeps `a: 1` forever.
//!
//! (Pinned by `lost_ack_then_revert_still_resets_the_hub` in [`sync_state`] and by
//! `applied_but_unacked_patch_then_revert_across_a_crash` in `agent/tests/store_sync_model.rs`.)
//!
//! So [`SyncState`] keeps `hub_reported` (the document the hub is known to hold as of the last
//! ack or GET) plus `alternatives`: every other document the hub *might* hold, i.e.
//! `hub_reported` with some of the unanswered patches applied ([`SyncState::on_disconnect`],
//! and a 5xx in [`SyncState::on_reject`]). The next patch is
//! [`reconcile`](sync_state::reconcile)`([hub_reported, alternatives…], local)`: one merge patch
//! that turns *every* candidate into `local` (a key is left out only where all candidates
//! already agree with `local`). In the example above it is `{a: 1}`. When the hub acks a patch,
//! it applied it to whichever candidate it held, so [`SyncState::on_ack`] applies it to all of
//! them; after a reconciling patch they are all equal to `local` and collapse back to
//! `hub_reported` alone. A GET result ([`SyncState::on_hub_reported`]) is the truth and
//! replaces them all, whatever its `$version` (a twin recreated in the hub restarts its versions
//! at 1); only when the version went down does the previous document stay as an alternative,
//! in case the GET's answer was overtaken by an ack. With no unknown outcome (no alternatives) the patch is exactly DESIGN's diff. The set is small in practice (each unanswered reconciling patch maps every candidate to
//! the same document); it is capped at [`MAX_ALTERNATIVES`](sync_state::MAX_ALTERNATIVES), and
//! beyond that `resync_needed` stops sending until a GET result arrives. An in-flight patch
//! found at open (the previous process died waiting for its answer) becomes an unknown outcome
//! the same way. Rejected patches (400, 413, any 4xx but 408/429) are probed key by key and the bad key quarantined;
//! see [`sync_state`].
//!
//! # Bad input
//!
//! Opening never deletes or recreates anything: a store held by another writer, a missing
//! directory, a read-only directory, a file that is not SQLite, another application's SQLite
//! database, a corrupt file (`PRAGMA quick_check`) or a schema newer than this build each give
//! a [`StoreError`] that names the path and the cause. Only a missing file (or an empty one) is
//! initialised.

mod db;
mod error;
pub mod schema;
pub mod sync_state;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, mpsc};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rusqlite::Connection;
use serde_json::Value;
use tokio::sync::oneshot;

pub use error::StoreError;
pub use schema::LATEST_VERSION;
pub use sync_state::{InFlight, RejectKind, Rejection, SyncState};

/// SQLite `synchronous` level of the read-write connection (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Sync the WAL at checkpoints only: survives a process kill, may lose the latest commits
    /// on power loss.
    Normal,
    /// Sync the WAL at every commit: survives a process kill and power loss. The default.
    #[default]
    Full,
}

/// The wall clock used for journal ages (injectable so tests can age entries).
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Options of a read-write [`Store`].
#[derive(Clone)]
pub struct StoreOptions {
    /// SQLite `synchronous` level.
    pub synchronous: Synchronous,
    /// How long a statement waits for a lock held by another connection.
    pub busy_timeout: Duration,
    /// Wall clock for journal entry ages.
    pub clock: Clock,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::default(),
            busy_timeout: Duration::from_secs(5),
            clock: Arc::new(SystemTime::now),
        }
    }
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("synchronous", &self.synchronous)
            .field("busy_timeout", &self.busy_timeout)
            .finish_non_exhaustive()
    }
}

/// Bounds of a device's every-change journal (`history = "every-change"`). Oldest entries are
/// dropped first and counted in [`JournalStats::dropped`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Maximum total size of the queued patches (JSON bytes).
    pub max_bytes: u64,
    /// Maximum age of a queued patch.
    pub max_age: Duration,
}

/// A desired-properties update as received from the hub.
#[derive(Debug, Clone, PartialEq)]
pub enum DesiredUpdate {
    /// The whole desired section (from a GET of the twin); `$version`/`$metadata` are ignored.
    Full(Value),
    /// A desired-properties notification (a merge patch of the desired section).
    Patch(Value),
}

/// What [`Store::desired_received`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum DesiredOutcome {
    /// Stored; carries the new desired document.
    Applied(Value),
    /// Ignored: a notification whose version is not newer than the one held.
    Stale {
        /// The version already held.
        held: i64,
    },
    /// Not applied: a notification that does not follow the held version directly (or no
    /// version is held yet). The caller should GET the twin.
    Gap {
        /// The version held, if any.
        held: Option<i64>,
        /// The version received.
        got: i64,
    },
}

/// The applied version and ack of one writable property.
#[derive(Debug, Clone, PartialEq)]
pub struct PropertyState {
    /// Property name (top-level key in desired and reported).
    pub name: String,
    /// The desired `$version` last applied to the device.
    pub applied_version: i64,
    /// The ack object reported for it (`{"value", "ac", "av", "ad"}`).
    pub ack: Value,
}

/// Size and losses of a device's every-change journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JournalStats {
    /// Entries queued now.
    pub entries: u64,
    /// Their total JSON size.
    pub bytes: u64,
    /// Entries dropped over the device's life for exceeding the bounds.
    pub dropped: u64,
}

/// Everything stored about one device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSnapshot {
    /// Device identity.
    pub device: String,
    /// Every-change journal bounds, when that mode is on.
    pub history: Option<HistoryLimits>,
    /// Reported replica and sync state.
    pub sync: SyncState,
    /// Desired document as last received (without `$version`).
    pub desired: Value,
    /// Its `$version`.
    pub desired_version: Option<i64>,
    /// Writable properties applied so far.
    pub properties: Vec<PropertyState>,
    /// Journal size and drop counter.
    pub journal_stats: JournalStats,
    /// The queued journal patches, oldest first.
    pub journal: Vec<Value>,
}

/// One queued command. Called with `give_up` = whether the store is closing; returns the error
/// when it hit a condition worth retrying (see [`StoreError::is_out_of_space`]) and did not
/// answer, `None` once it answered.
type Job = Box<dyn FnMut(&mut db::Db, bool) -> Option<StoreError> + Send>;

/// First and longest pause between retries of a write that failed for lack of space.
const WRITE_RETRY_FIRST: Duration = Duration::from_millis(100);
const WRITE_RETRY_MAX: Duration = Duration::from_secs(5);

/// Shared between the handles and the writer thread: the write being retried, and whether the
/// store is closing (retries then give up, so a stop is not held up by a full disk).
#[derive(Debug, Default)]
struct WriteHealth {
    failing: std::sync::Mutex<Option<String>>,
    closing: std::sync::atomic::AtomicBool,
    /// Signalled on close: ends a retry pause at once.
    wake: std::sync::Condvar,
}

impl WriteHealth {
    fn set(&self, error: Option<String>) {
        *self
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = error;
    }

    fn get(&self) -> Option<String> {
        self.failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits `delay` before the next retry, or less when the store starts closing.
    fn pause(&self, delay: Duration) {
        let guard = self
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = self
            .wake
            .wait_timeout_while(guard, delay, |_| !self.closing())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }

    fn close(&self) {
        let _guard = self
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_all();
    }
}

/// Runs `job` until it answers: a write that failed for lack of space (or a read-only or
/// failing disk) is retried with backoff, in order (later commands wait behind it, so nothing
/// is reordered and nothing committed is touched); the condition is logged once when it
/// starts and once when writes resume, and is readable meanwhile through
/// [`Store::write_error`].
fn run_job(db: &mut db::Db, job: &mut Job, health: &WriteHealth) {
    let mut delay = WRITE_RETRY_FIRST;
    let mut failed = false;
    while let Some(e) = job(db, health.closing()) {
        if !failed {
            tracing::error!(error = %e,
                "store write failed (disk full or not writable); polling goes on, retrying with backoff until it succeeds");
            failed = true;
        }
        health.set(Some(e.to_string()));
        health.pause(delay);
        delay = (delay * 2).min(WRITE_RETRY_MAX);
    }
    if failed {
        health.set(None);
        if health.closing() {
            // The job answered its error: retries end with the store's life.
            tracing::warn!(
                "store write retries given up for the stop: that change is not committed"
            );
        } else {
            tracing::warn!("store writes succeed again; resumed");
        }
    }
}

enum Command {
    Run(Job),
    Close(oneshot::Sender<Result<(), StoreError>>),
}

/// Handle to the durable store; cheap to clone, all clones talk to the same writer thread.
#[derive(Debug, Clone)]
pub struct Store {
    commands: mpsc::Sender<Command>,
    path: Arc<Path>,
    health: Arc<WriteHealth>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Run(_) => "Run",
            Self::Close(_) => "Close",
        })
    }
}

/// The answer to one store command: `.await` it, or [`Reply::wait`] outside async code.
#[derive(Debug)]
#[must_use = "the command runs anyway, but its result (and any error) is in the Reply"]
pub struct Reply<T> {
    answer: oneshot::Receiver<Result<T, StoreError>>,
    path: Arc<Path>,
}

impl<T> Reply<T> {
    /// Blocks the current thread until the command has run. Panics inside an async context
    /// (use `.await` there).
    pub fn wait(self) -> Result<T, StoreError> {
        let path = self.path;
        self.answer.blocking_recv().unwrap_or_else(|_| {
            Err(StoreError::Closed {
                path: path.to_path_buf(),
            })
        })
    }
}

impl<T> Future for Reply<T> {
    type Output = Result<T, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.answer).poll(cx).map(|answer| {
            answer.unwrap_or_else(|_| {
                Err(StoreError::Closed {
                    path: self.path.to_path_buf(),
                })
            })
        })
    }
}

impl Store {
    /// Opens the store at `path` read-write, creating and initialising the file if it does
    /// not exist (the directory must exist), migrating an older schema, and starting the
    /// writer thread.
    ///
    /// Patches that were in flight when the previous process stopped are recorded as having
    /// an unknown outcome (the next patch is correct whether or not the hub applied them).
    /// Blocks for the open (milliseconds; call it before or outside the async hot path).
    ///
    /// One writer per file: an exclusive lock on `<path>-lock` (created beside the database,
    /// never removed) is held until the writer thread stops. A second open fails with
    /// [`StoreError::Locked`] (after waiting up to half a second for a lock that is only
    /// held for a moment), also within one process: dropping every handle stops the thread
    /// asynchronously, so `close().wait()` (or `.await`) before reopening.
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Self, StoreError> {
        let path: Arc<Path> = Arc::from(path.as_ref());
        let (commands, receiver) = mpsc::channel::<Command>();
        let (opened_tx, opened_rx) = mpsc::channel::<Result<(), StoreError>>();
        let thread_path = path.clone();
        let health = Arc::new(WriteHealth::default());
        let thread_health = health.clone();
        std::thread::Builder::new()
            .name("twinbridge-store".to_owned())
            .spawn(move || {
                let mut db = match db::open_rw(&thread_path, options) {
                    Ok(db) => {
                        let _ = opened_tx.send(Ok(()));
                        db
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(command) = receiver.recv() {
                    match command {
                        Command::Run(mut job) => run_job(&mut db, &mut job, &thread_health),
                        Command::Close(done) => {
                            drop(db);
                            let _ = done.send(Ok(()));
                            return;
                        }
                    }
                }
            })
            .map_err(|e| StoreError::Setup {
                path: path.to_path_buf(),
                cause: format!("starting the writer thread: {e}"),
            })?;
        opened_rx.recv().unwrap_or_else(|_| {
            Err(StoreError::Closed {
                path: path.to_path_buf(),
            })
        })?;
        Ok(Self {
            commands,
            path,
            health,
        })
    }

    /// The error of the write the store is retrying right now (disk full, read-only or failing
    /// state directory), or `None` when writes succeed.
    pub fn write_error(&self) -> Option<String> {
        self.health.get()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn run<T: Send + 'static>(
        &self,
        mut job: impl FnMut(&mut db::Db) -> Result<T, StoreError> + Send + 'static,
    ) -> Reply<T> {
        let (answer_tx, answer) = oneshot::channel();
        let mut answer_tx = Some(answer_tx);
        // If the writer is gone the job (and with it `answer_tx`) is dropped: the Reply then
        // resolves to `StoreError::Closed`.
        let _ = self
            .commands
            .send(Command::Run(Box::new(move |db, give_up| match job(db) {
                Err(e) if e.is_out_of_space() && !give_up => Some(e),
                result => {
                    if let Some(tx) = answer_tx.take() {
                        let _ = tx.send(result);
                    }
                    None
                }
            })));
        Reply {
            answer,
            path: self.path.clone(),
        }
    }

    /// A stop is coming: a write that fails for lack of space (or on a read-only or failing
    /// disk) is no longer retried but answers its error, now and from then on. Called before
    /// waiting for tasks that may be queued behind such a write, so a stop is not held up
    /// until the disk recovers; [`Store::close`] does it too.
    pub fn give_up_retries(&self) {
        self.health.close();
    }

    /// Stops the writer thread after the commands queued before this one, and closes the
    /// connection. Other clones of this handle get [`StoreError::Closed`] afterwards (as does
    /// this call if the store was already closed).
    pub fn close(self) -> Reply<()> {
        self.health.close();
        let (answer_tx, answer) = oneshot::channel();
        // On failure the command (and `answer_tx`) is dropped: the Reply resolves to Closed.
        let _ = self.commands.send(Command::Close(answer_tx));
        Reply {
            answer,
            path: self.path,
        }
    }

    /// Sets (or clears, with `None`) the every-change journal of `device`, creating the device
    /// when new. Turning it off discards queued entries: the state diff covers them.
    pub fn configure_device(&self, device: &str, history: Option<HistoryLimits>) -> Reply<()> {
        let device = device.to_owned();
        self.run(move |db| db.configure_device(&device, history))
    }

    /// Deletes everything stored about `device`. Returns whether it existed.
    pub fn remove_device(&self, device: &str) -> Reply<bool> {
        let device = device.to_owned();
        self.run(move |db| db.remove_device(&device))
    }

    /// "New poll results for `device`": merges the object `patch` into the local reported
    /// document (and queues the change in every-change mode). One transaction; nothing is
    /// written when the patch changes nothing.
    ///
    /// Returns the effective change (empty object when none).
    pub fn merge_local(&self, device: &str, patch: Value) -> Reply<Value> {
        let device = device.to_owned();
        self.run(move |db| db.merge_local(&device, &patch))
    }

    /// "PATCH sent": picks the patch to publish for `device` (the oldest journal entry in
    /// every-change mode, else [`SyncState::next_patch`]) and records it in flight under
    /// `request_id`, in one transaction. `None` when nothing is to be sent or a patch is
    /// already in flight. Publish the returned patch only after this reply.
    pub fn begin_send(&self, device: &str, request_id: &str) -> Reply<Option<Value>> {
        let device = device.to_owned();
        let request_id = request_id.to_owned();
        self.run(move |db| db.begin_send(&device, &request_id))
    }

    /// "PATCH acked": the hub answered 204 for `request_id` with reported `$version`
    /// `version`. Returns `false` (nothing changed) for a stale request id.
    pub fn acked(&self, device: &str, request_id: &str, version: i64) -> Reply<bool> {
        let device = device.to_owned();
        let request_id = request_id.to_owned();
        self.run(move |db| db.acked(&device, &request_id, version))
    }

    /// "PATCH rejected" with hub `status` (see [`RejectKind`]); `reason` is kept for `status`.
    /// Returns `None` (nothing changed) for a stale request id.
    pub fn rejected(
        &self,
        device: &str,
        request_id: &str,
        status: u16,
        reason: &str,
    ) -> Reply<Option<RejectKind>> {
        let device = device.to_owned();
        let request_id = request_id.to_owned();
        let reason = reason.to_owned();
        self.run(move |db| db.rejected(&device, &request_id, status, &reason))
    }

    /// The link of `device` went down: its in-flight patch (if any) has an unknown outcome.
    pub fn disconnected(&self, device: &str) -> Reply<()> {
        let device = device.to_owned();
        self.run(move |db| db.disconnected(&device))
    }

    /// A GET of the twin returned the hub's `reported` section with `$version` `version`.
    ///
    /// Always adopted, even with a lower version than the one held: a recreated twin restarts
    /// its versions (see [`SyncState::on_hub_reported`] for why this is safe, and why the
    /// previous document is kept as an alternative when the version went down).
    pub fn hub_reported(&self, device: &str, reported: Value, version: i64) -> Reply<()> {
        let device = device.to_owned();
        self.run(move |db| db.hub_reported(&device, &reported, version))
    }

    /// "Desired received": stores a full desired section or applies a notification patch.
    ///
    /// A notification is applied only when `version` directly follows the held one
    /// ([`VersionOrder`](crate::twin::VersionOrder)): at or below it is
    /// [`DesiredOutcome::Stale`], further ahead (or nothing held) a [`DesiredOutcome::Gap`].
    /// A full section (a GET result) is the hub's truth and is always adopted, even with a
    /// lower version than the one held: a twin recreated in the hub restarts its versions at 1.
    /// When the version went down, applied versions above it (counted by the previous twin)
    /// are forgotten, so the new twin's values are written to the device.
    ///
    /// A negative `version` is an [`StoreError::InvalidInput`] (the hub's versions are never
    /// negative).
    pub fn desired_received(
        &self,
        device: &str,
        update: DesiredUpdate,
        version: i64,
    ) -> Reply<DesiredOutcome> {
        let device = device.to_owned();
        self.run(move |db| db.desired_received(&device, &update, version))
    }

    /// "Applied + ack": records that desired `version` of `property` was written to the device
    /// and puts the ack object into the local reported document (replacing what the property
    /// held: members of an older ack do not linger), in one transaction.
    /// Returns the effective change of `local`.
    pub fn applied_ack(
        &self,
        device: &str,
        property: &str,
        version: i64,
        ack: Value,
    ) -> Reply<Value> {
        let device = device.to_owned();
        let property = property.to_owned();
        self.run(move |db| db.applied_ack(&device, &property, version, &ack))
    }

    /// A round trip through the writer thread, touching nothing: it answers only when the
    /// writer is free (not stuck behind a lock, a slow disk, a long transaction). The systemd
    /// watchdog uses it as proof that the store makes progress.
    pub fn ping(&self) -> Reply<()> {
        self.run(|_| Ok(()))
    }

    /// All device identities in the store, sorted.
    pub fn devices(&self) -> Reply<Vec<String>> {
        self.run(|db| db.devices())
    }

    /// The reported-side sync state of `device` alone (cheaper than a [`Store::snapshot`]),
    /// or `None` when unknown.
    pub fn sync_state(&self, device: &str) -> Reply<Option<SyncState>> {
        let device = device.to_owned();
        self.run(move |db| db.sync_state(&device))
    }

    /// Everything stored about `device`, or `None` when unknown.
    pub fn snapshot(&self, device: &str) -> Reply<Option<DeviceSnapshot>> {
        let device = device.to_owned();
        self.run(move |db| db.snapshot(&device))
    }
}

/// A read-only view of a store file, for `twinbridge status` while the agent runs.
///
/// Blocking; each call reads one consistent snapshot.
#[derive(Debug)]
pub struct ReadOnlyStore {
    conn: Connection,
    path: PathBuf,
}

impl ReadOnlyStore {
    /// Opens an existing, initialised store of the current schema version read-only.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let conn = db::open_ro(&path, Duration::from_secs(5))?;
        Ok(Self { conn, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All device identities in the store, sorted.
    pub fn devices(&self) -> Result<Vec<String>, StoreError> {
        db::devices(&self.conn, &self.path)
    }

    /// Everything stored about `device`, or `None` when unknown.
    pub fn snapshot(&self, device: &str) -> Result<Option<DeviceSnapshot>, StoreError> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(db::sqlite_at(&self.path))?;
        db::snapshot(&tx, &self.path, device)
    }

    /// When the oldest entry still queued in `device`'s every-change journal was queued (the
    /// wall clock of the writer), or `None` when nothing is queued: how long the hub has been
    /// behind, for `twinbridge status`.
    pub fn oldest_queued(&self, device: &str) -> Result<Option<SystemTime>, StoreError> {
        Ok(
            db::oldest_journal_ms(&self.conn, &self.path, device)?.map(|ms| {
                SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
            }),
        )
    }
}

/// Whether `dir` is on a file system that refuses writes: mounted read-only, or made read-only
/// by the kernel without the mount flag (ext4 after an error with `errors=remount-ro` on recent
/// kernels: `emergency_ro`, which `statvfs` does not show), which only a write attempt reveals.
/// The attempt is an unnamed temporary file (`O_TMPFILE`): nothing is left behind. Other
/// failures (no permission, `O_TMPFILE` unsupported) say nothing about read-only and give
/// `false`.
pub fn read_only_dir(dir: &Path) -> bool {
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    use nix::sys::statvfs::{FsFlags, statvfs};
    if statvfs(dir).is_ok_and(|s| s.flags().contains(FsFlags::ST_RDONLY)) {
        return true;
    }
    matches!(
        nix::fcntl::open(
            dir,
            OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::S_IRUSR | Mode::S_IWUSR,
        ),
        Err(nix::errno::Errno::EROFS)
    )
}
