//! A part of a benchmark on its own OS thread and current-thread tokio runtime (a device is
//! separate from the gateway, and must not share its scheduler): set up there, hand one value
//! back (an address, a path), then serve until stopped.

use std::future::Future;
use std::thread::JoinHandle;

use anyhow::Context as _;
use tokio::sync::oneshot;

/// The thread; [`SideThread::stop`] (or dropping it) stops the serving future and joins.
#[derive(Debug)]
pub struct SideThread {
    name: &'static str,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl SideThread {
    /// Starts thread `name`, runs `setup` on its runtime and returns the value it gives, once
    /// it is ready; the serving future it also gives then runs until [`SideThread::stop`].
    pub fn start<T, Setup, Ready, Serve>(
        name: &'static str,
        setup: Setup,
    ) -> anyhow::Result<(T, Self)>
    where
        T: Send + 'static,
        Setup: FnOnce() -> Ready + Send + 'static,
        Ready: Future<Output = anyhow::Result<(T, Serve)>>,
        Serve: Future<Output = ()>,
    {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::Error::from(e).context("its runtime")));
                        return;
                    }
                };
                rt.block_on(async move {
                    match setup().await {
                        Ok((value, serve)) => {
                            let _ = ready_tx.send(Ok(value));
                            tokio::select! {
                                () = serve => {}
                                _ = stop_rx => {}
                            }
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })
            .with_context(|| format!("spawning the {name} thread"))?;
        let value = ready_rx
            .recv()
            .with_context(|| format!("the {name} thread ended early"))?
            .with_context(|| format!("starting the {name} thread"))?;
        let side = Self {
            name,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        Ok((value, side))
    }

    /// Stops the serving future and joins the thread.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("the {} thread panicked", self.name)),
            None => Ok(()),
        }
    }
}

impl Drop for SideThread {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
