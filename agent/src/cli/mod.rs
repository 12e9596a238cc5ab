//! Subcommand implementations; argument parsing lives in the binary (`main.rs`).
//!
//! Each subcommand is a function that writes to the given streams and returns the process
//! exit code, so tests can run it in-process as well as through the binary.

pub mod check_config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod field_port;
pub mod forget;
pub mod read_write;
pub mod run;
pub mod scan;
pub mod simulate;
pub mod status;
pub mod twin_show;

/// `EX_USAGE` from sysexits.h: the command was used wrongly (a bad argument, or a question
/// that cannot be asked: `forget` without a terminal or `--yes`).
pub const EX_USAGE: u8 = 64;

/// `EX_UNAVAILABLE` from sysexits.h: something needed is not there (no store yet, a port
/// that cannot be opened, a device that does not answer).
pub const EX_UNAVAILABLE: u8 = 69;

/// `EX_SOFTWARE` from sysexits.h: an internal error (the async runtime did not start).
pub const EX_SOFTWARE: u8 = 70;

/// `EX_CANTCREAT` from sysexits.h: an output file cannot be created or written (the state
/// directory is on a read-only file system).
pub const EX_CANTCREAT: u8 = 73;

/// `EX_TEMPFAIL` from sysexits.h: try again later — the serial port is held by the running
/// service (stop it, then retry).
pub const EX_TEMPFAIL: u8 = 75;

/// `EX_NOPERM` from sysexits.h: permission denied.
pub const EX_NOPERM: u8 = 77;

/// `EX_CONFIG` from sysexits.h: the configuration is invalid.
pub const EX_CONFIG: u8 = 78;

/// Prints every configuration error (one per line) and a count line that starts with
/// `lead` (e.g. "not starting: 2 errors in the configuration starting at /etc/…").
pub(crate) fn print_config_errors(
    err: &mut dyn std::io::Write,
    errors: &crate::config::ConfigErrors,
    path: &std::path::Path,
    lead: &str,
) {
    let _ = writeln!(err, "{errors}");
    let _ = writeln!(
        err,
        "{lead}{} error{} in the configuration starting at {}",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" },
        path.display()
    );
}

/// Runs `future` on a tokio runtime made by `builder`; returns the exit code: 0 on `Ok`,
/// `code(&error)` with `"{what}: {error}"` on `err` otherwise (1 when the runtime cannot
/// start).
pub(crate) fn block_on_coded<E: std::fmt::Display>(
    mut builder: tokio::runtime::Builder,
    what: &str,
    future: impl std::future::Future<Output = Result<(), E>>,
    err: &mut dyn std::io::Write,
    code: impl Fn(&E) -> u8,
) -> u8 {
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = writeln!(err, "starting the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(future) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "{what}: {e}");
            code(&e)
        }
    }
}
