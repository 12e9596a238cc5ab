//! Start-up and shutdown of the agent: the [`runtime`] wired together, run until SIGTERM or
//! SIGINT, then stopped cleanly.
//!
//! systemd: `READY=1` once every identity's session and driver are running, `STOPPING=1` on
//! the way out (a no-op outside systemd, where `$NOTIFY_SOCKET` is unset).

pub mod runtime;

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
    let failure = tokio::select! {
        _ = terminate.recv() => { tracing::info!("SIGTERM: stopping"); None }
        _ = interrupt.recv() => { tracing::info!("SIGINT: stopping"); None }
        e = runtime.failed() => Some(e),
    };
    notify(&[sd_notify::NotifyState::Stopping]);
    let stopped = runtime.shutdown().await;
    match failure {
        Some(e) => Err(e),
        None => stopped,
    }
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}
