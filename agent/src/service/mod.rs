//! Start-up and shutdown of the agent: the [`runtime`] wired together, run until SIGTERM or
//! SIGINT, then stopped cleanly; SIGHUP reloads the configuration ([`reload`]).
//!
//! systemd: `READY=1` once every identity's session and driver are running, `RELOADING=1`
//! (with `MONOTONIC_USEC`) when a reload starts and `READY=1` again when it is done (applied
//! or refused), `STOPPING=1` on the way out (a no-op outside systemd, where `$NOTIFY_SOCKET`
//! is unset); meanwhile `STATUS=` lines ([`status_line`]) and, when `WatchdogSec=` is set,
//! `WATCHDOG=1` on proof of progress ([`watchdog`]). Logging: [`logging`].

pub mod logging;
pub mod reload;
pub mod runtime;
pub mod state_log;
pub mod status_line;
pub mod watchdog;

pub use reload::{Changes, Plan, ReloadError, SpecSource};
pub use runtime::{HandleError, IdentitySpec, Runtime, RuntimeError, RuntimeHandle, RuntimeSpec};

use tokio::signal::unix::{SignalKind, signal};

/// Starts the runtime and runs it until SIGTERM/SIGINT (clean stop: `Ok`) or until a task
/// fails (`Err`). On SIGHUP the configuration is re-read through `reload` and applied (see
/// [`reload`]); without a source SIGHUP is logged and ignored.
pub async fn run_until_signal(
    spec: RuntimeSpec,
    reload: Option<SpecSource>,
) -> Result<(), RuntimeError> {
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|e| RuntimeError::Task(format!("installing the SIGTERM handler: {e}")))?;
    let mut interrupt = signal(SignalKind::interrupt())
        .map_err(|e| RuntimeError::Task(format!("installing the SIGINT handler: {e}")))?;
    // Before start-up: SIGHUP's default action would end the process.
    let mut hangup = signal(SignalKind::hangup())
        .map_err(|e| RuntimeError::Task(format!("installing the SIGHUP handler: {e}")))?;
    let mut runtime = Runtime::start(spec).await?;
    notify(&[sd_notify::NotifyState::Ready]);
    let operations = operations(&runtime.handle());
    let failure = loop {
        tokio::select! {
            _ = terminate.recv() => { tracing::info!("SIGTERM: stopping"); break None }
            _ = interrupt.recv() => { tracing::info!("SIGINT: stopping"); break None }
            _ = hangup.recv() => {
                let store = runtime.handle().store().clone();
                let reloading = reload::on_hangup(&mut runtime, reload.as_ref());
                match until_stop_requested(reloading, &store, &mut terminate, &mut interrupt).await {
                    (Ok(()), None) => {}
                    (Err(e), None) => break Some(e),
                    (outcome, Some(signal)) => {
                        if let Err(e) = outcome {
                            tracing::warn!(error = %e, "the reload did not finish before the stop");
                        }
                        tracing::info!("{signal}: stopping");
                        break None;
                    }
                }
            }
            e = runtime.failed() => break Some(e),
        }
    };
    notify(&[sd_notify::NotifyState::Stopping]);
    drop(operations);
    let stopped = runtime.shutdown().await;
    match failure {
        Some(e) => Err(e),
        None => stopped,
    }
}

/// Runs `reloading` to its end (a reload is not cancelled half-way), noting a SIGTERM or
/// SIGINT that comes meanwhile: the stop is handled right after. Such a signal also gives up
/// the store's retries at once, as the stop would: a reload waiting on a write to a full or
/// read-only disk would otherwise hold the stop until the disk recovers.
async fn until_stop_requested<T>(
    reloading: impl std::future::Future<Output = T>,
    store: &crate::store::Store,
    terminate: &mut tokio::signal::unix::Signal,
    interrupt: &mut tokio::signal::unix::Signal,
) -> (T, Option<&'static str>) {
    tokio::pin!(reloading);
    let mut stop = None;
    loop {
        tokio::select! {
            outcome = &mut reloading => return (outcome, stop),
            _ = terminate.recv(), if stop.is_none() => stop = Some("SIGTERM"),
            _ = interrupt.recv(), if stop.is_none() => stop = Some("SIGINT"),
        }
        if let Some(signal) = stop {
            tracing::info!("{signal} during a reload: stopping once it ends");
            store.give_up_retries();
        }
    }
}

/// Starts the systemd side of operations: `STATUS=` lines and state-change logs, and the
/// watchdog when systemd asks for it. They stop when the returned guard is dropped.
fn operations(handle: &RuntimeHandle) -> tokio_util::sync::DropGuard {
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(status_line::observe(handle.clone(), stop.clone(), |line| {
        notify(&[sd_notify::NotifyState::Status(line)]);
    }));
    if let Some(interval) = watchdog::interval() {
        tracing::info!(interval = %humantime::format_duration(interval), "systemd watchdog on");
        tokio::spawn(watchdog::run(
            handle.store().clone(),
            handle.progress().clone(),
            interval,
            stop.clone(),
            || notify(&[sd_notify::NotifyState::Watchdog]),
        ));
    }
    stop.drop_guard()
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}
