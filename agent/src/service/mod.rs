//! Start-up and shutdown of the agent: the [`runtime`] wired together, run until SIGTERM or
//! SIGINT, then stopped cleanly.
//!
//! systemd: `READY=1` once every identity's session and driver are running, `STOPPING=1` on
//! the way out (a no-op outside systemd, where `$NOTIFY_SOCKET` is unset); meanwhile
//! `STATUS=` lines ([`status_line`]) and, when `WatchdogSec=` is set, `WATCHDOG=1` on proof
//! of progress ([`watchdog`]). Logging: [`logging`].

pub mod logging;
pub mod runtime;
pub mod state_log;
pub mod status_line;
pub mod watchdog;

pub use runtime::{HandleError, IdentitySpec, Runtime, RuntimeError, RuntimeHandle, RuntimeSpec};

use tokio::signal::unix::{SignalKind, signal};

/// Starts the runtime and runs it until SIGTERM/SIGINT (clean stop: `Ok`) or until a task
/// fails (`Err`).
pub async fn run_until_signal(spec: RuntimeSpec) -> Result<(), RuntimeError> {
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|e| RuntimeError::Task(format!("installing the SIGTERM handler: {e}")))?;
    let mut interrupt = signal(SignalKind::interrupt())
        .map_err(|e| RuntimeError::Task(format!("installing the SIGINT handler: {e}")))?;
    let mut runtime = Runtime::start(spec).await?;
    notify(&[sd_notify::NotifyState::Ready]);
    let operations = operations(&runtime.handle());
    let failure = tokio::select! {
        _ = terminate.recv() => { tracing::info!("SIGTERM: stopping"); None }
        _ = interrupt.recv() => { tracing::info!("SIGINT: stopping"); None }
        e = runtime.failed() => Some(e),
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
