//! Subcommand implementations; argument parsing lives in the binary (`main.rs`).
//!
//! Each subcommand is a function that writes to the given streams and returns the process
//! exit code, so tests can run it in-process as well as through the binary.

pub mod check_config;
pub mod run;

/// `EX_CONFIG` from sysexits.h: the configuration is invalid.
pub const EX_CONFIG: u8 = 78;
