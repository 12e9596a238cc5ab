//! Where log lines go, and how much is logged.
//!
//! - Under systemd (`$JOURNAL_STREAM` names the device and inode of our stderr, so stderr *is*
//!   the journal stream) lines go to journald natively, with structured fields:
//!   `device`, `bus`, `identity` (and every other field) become `DEVICE=`, `BUS=`,
//!   `IDENTITY=`… (upper case, no prefix), `SYSLOG_IDENTIFIER=twinbridge`; so
//!   `journalctl -u twinbridge DEVICE=meter-01` shows one device (its field side and its hub
//!   identity: hub-side lines carry `device` too, plus `IDENTITY=`). If journald cannot be
//!   reached, lines go to stderr, and one line says so.
//! - Otherwise readable lines on stderr.
//! - The filter: `$TWINBRIDGE_LOG` (the agent's own), else `$RUST_LOG`, else the configuration's
//!   `[gateway] log_level` (applied once the configuration is loaded, and again on reload,
//!   through [`apply_config`]), else `info`. A level (`debug`) or directives
//!   (`info,twinbridge::hub=debug`).

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// Environment variables that set the filter, in order of precedence.
const FILTER_VARS: [&str; 2] = ["TWINBRIDGE_LOG", "RUST_LOG"];
/// The filter when nothing sets one.
pub const DEFAULT_LEVEL: &str = "info";
/// `SYSLOG_IDENTIFIER=` of journald entries.
const SYSLOG_IDENTIFIER: &str = "twinbridge";

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// journald's native socket.
    Journald,
    /// stderr, readable lines.
    Stderr,
}

/// The installed logger's filter, changeable while running.
struct Installed {
    filter: reload::Handle<EnvFilter, Registry>,
    /// Set by an environment variable: the configuration does not override it.
    from_env: bool,
    /// The fallback filter (`info`, or the demo's `warn`).
    default: String,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Whether `$JOURNAL_STREAM` (`"<dev>:<inode>"`) names the file whose device and inode are
/// `dev` and `ino` (stderr's): systemd connected stderr to the journal.
pub fn is_journal_stream(journal_stream: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>().is_ok_and(|d| d == dev) && i.parse::<u64>().is_ok_and(|i| i == ino)
}

/// Whether stderr is the journal stream systemd set up.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd as _;
    use std::os::unix::fs::MetadataExt as _;
    let Some(var) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some(var) = var.to_str() else {
        return false;
    };
    // A duplicate of fd 2 as a File, only to fstat it (std has no fstat on a raw fd).
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|m| is_journal_stream(var, m.dev(), m.ino()))
}

/// The filter from the environment, if a variable sets one (an unparsable value is
/// reported on stderr and ignored).
fn env_filter() -> Option<EnvFilter> {
    for var in FILTER_VARS {
        if let Ok(text) = std::env::var(var)
            && !text.trim().is_empty()
        {
            match EnvFilter::builder().parse(&text) {
                Ok(filter) => return Some(filter),
                Err(e) => eprintln!("twinbridge: ignoring ${var}={text:?}: {e}"),
            }
        }
    }
    None
}

/// Installs the global logger (see the module docs); `default_level` when nothing sets a
/// filter. Returns where lines go. Call once, first thing in `main`.
pub fn init(default_level: &str) -> Output {
    let from_env = env_filter();
    let env_set = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::builder().parse_lossy(default_level));
    let (filter, handle) = reload::Layer::new(filter);
    let (journald, fallback) = if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(layer) => (
                Some(
                    layer
                        .with_field_prefix(None)
                        .with_syslog_identifier(SYSLOG_IDENTIFIER.to_owned()),
                ),
                None,
            ),
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, None)
    };
    let output = if journald.is_some() {
        Output::Journald
    } else {
        Output::Stderr
    };
    let stderr = journald.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            // The journal stream (fallback) stamps lines itself, and colours do not belong in it.
            .with_ansi(fallback.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr()))
    });
    let installed = Registry::default()
        .with(filter)
        .with(journald)
        .with(stderr)
        .try_init();
    if let Err(e) = installed {
        eprintln!("twinbridge: logging not set up: {e}");
        return output;
    }
    let _ = INSTALLED.set(Installed {
        filter: handle,
        from_env: env_set,
        default: default_level.to_owned(),
    });
    if let Some(e) = fallback {
        tracing::warn!(error = %e, "journald is not reachable; logging to stderr instead");
    }
    output
}

/// Applies the configuration's `log_level` (`None`: the default) unless `$RUST_LOG` or
/// `$TWINBRIDGE_LOG` set the filter; call after loading the configuration and after each
/// reload. A no-op before [`init`] (library use, tests).
pub fn apply_config(log_level: Option<&str>) -> Result<(), String> {
    let Some(installed) = INSTALLED.get() else {
        return Ok(());
    };
    if installed.from_env {
        return Ok(());
    }
    let text = log_level.unwrap_or(&installed.default);
    // The configuration's rule (a bare word must be a level), not only the parser's.
    if !crate::config::is_log_filter(text) {
        return Err(format!(
            "log filter {text:?}: not a level or filter directives"
        ));
    }
    let filter = EnvFilter::builder()
        .parse(text)
        .map_err(|e| format!("log filter {text:?}: {e}"))?;
    installed
        .filter
        .reload(filter)
        .map_err(|e| format!("changing the log filter to {text:?}: {e}"))?;
    tracing::debug!(filter = text, "log filter set");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_configuration_accepts_the_filter_takes() {
        for text in [
            "WARN",
            "debug",
            "off",
            "info,twinbridge::hub=debug",
            "twinbridge=trace",
        ] {
            assert!(crate::config::is_log_filter(text), "{text}");
            assert!(EnvFilter::builder().parse(text).is_ok(), "{text}");
        }
        assert!(!crate::config::is_log_filter("inof"));
    }

    #[test]
    fn journal_stream_must_name_stderrs_device_and_inode() {
        assert!(is_journal_stream("8:12345", 8, 12345));
        assert!(is_journal_stream("8:12345\n", 8, 12345));
        assert!(!is_journal_stream("8:12346", 8, 12345), "another inode");
        assert!(!is_journal_stream("9:12345", 8, 12345), "another device");
        assert!(!is_journal_stream("", 8, 12345));
        assert!(!is_journal_stream("8-12345", 8, 12345));
        assert!(!is_journal_stream("x:12345", 8, 12345));
    }
}
