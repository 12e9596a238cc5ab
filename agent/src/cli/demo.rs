//! `twinbridge demo`: see [`crate::demo`].

use std::io::Write;
use std::time::Duration;

use crate::demo::{DemoOptions, run as run_demo};

/// Runs the demo; returns the process exit code (0 when every step converged).
pub fn run(once: bool, phase: Duration, err: &mut dyn Write) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = writeln!(err, "starting the async runtime: {e}");
            return 1;
        }
    };
    let live = !once && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let options = DemoOptions { once, phase, live };
    let mut out = std::io::stdout();
    match runtime.block_on(run_demo(options, &mut out)) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "twinbridge demo: {e}");
            1
        }
    }
}
