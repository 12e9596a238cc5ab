//! `twinbridge demo`: see [`crate::demo`].

use std::io::Write;
use std::time::Duration;

use crate::demo::{DemoOptions, run as run_demo};

/// Runs the demo; returns the process exit code (0 when every step converged).
pub fn run(once: bool, phase: Duration, err: &mut dyn Write) -> u8 {
    let live = !once && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let options = DemoOptions { once, phase, live };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2);
    super::block_on_coded(
        builder,
        "twinbridge demo",
        async move { run_demo(options, &mut std::io::stdout()).await },
        err,
        |_| 1,
    )
}
