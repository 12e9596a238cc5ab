//! What the benchmarks' command-line flags share: the duration parser of their `--poll`,
//! `--warmup`, … flags.

use std::time::Duration;

/// Parses a duration flag the `humantime` way (`5ms`, `1.5s`, `10m`, `7d`).
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 5ms, 1.5s)"))
}
