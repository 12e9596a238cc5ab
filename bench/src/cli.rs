//! What the benchmarks' command-line flags share: the duration parser of their `--poll`,
//! `--warmup`, … flags, and the `--binary` and `--dir` flags of those that run the agent.

use std::path::PathBuf;
use std::time::Duration;

/// Parses a duration flag the `humantime` way (`5ms`, `1.5s`, `10m`, `7d`).
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 5ms, 1.5s)"))
}

/// `--binary` and `--dir` of the benchmarks that run the agent (footprint, latency, outage,
/// scale), flattened into their flags. A benchmark with more to say about either replaces its
/// help with `#[command(mut_arg("dir", |a| a.help(…)))]` on its flags.
#[derive(Debug, clap::Args)]
pub struct AgentFlags {
    /// The agent binary; default: `twinbridge` next to this executable.
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Folder for the temporary config and state; default: the system temp folder.
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl AgentFlags {
    /// The agent binary ([`crate::rig::agent_binary`]: `--binary`, or `twinbridge` next to
    /// this executable; it must exist) and `--dir`.
    pub fn resolve(self) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
        Ok((crate::rig::agent_binary(self.binary)?, self.dir))
    }
}
