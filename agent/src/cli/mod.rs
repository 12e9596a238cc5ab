//! Subcommand implementations; argument parsing lives in the binary (`main.rs`).
//!
//! Each subcommand is a function that writes to the given streams and returns the process
//! exit code, so tests can run it in-process as well as through the binary.

pub mod check_config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod forget;
pub mod run;

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
