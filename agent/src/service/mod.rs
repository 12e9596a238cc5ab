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
                // A reload runs to its end; a SIGTERM meanwhile is handled right after.
                if let Err(e) = reload::on_hangup(&mut runtime, reload.as_ref()).await {
                    break Some(e);
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
