//! `twinbridge scan PORT`: which unit ids answer on a line, and what each answers.
//!
//! Every id in `--units` gets one probe (read holding register 0, see
//! [`device_protocols::scan`]); each unit that answers is then asked for one value of each
//! table, so the result says which tables it has. Progress goes to stderr: a bar with an ETA
//! on a terminal, a plain line every 10 % otherwise. Ctrl-C (or SIGTERM) stops the scan: what
//! was found so far is printed and the exit code is 130 (128 + SIGINT, as a shell reports an
//! interrupted command). Results go to stdout, as text or `--json`.

use std::io::{IsTerminal as _, Write};
use std::ops::RangeInclusive;
use std::time::Duration;

use tokio::time::Instant;

use device_protocols::point::Table;
use device_protocols::scan::{self, ProbeOutcome, ScanProgress, ScanSettings};
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};
use tokio_modbus::ExceptionCode;

use super::field_port::{self, PortArgs};
use super::{EX_UNAVAILABLE, EX_USAGE};

/// Exit code of a scan stopped by Ctrl-C or SIGTERM (its results so far are printed).
pub const EX_INTERRUPTED: u8 = 130;

/// The least time to wait for a table probe of a unit that answered the scan.
const TABLE_TIMEOUT: Duration = Duration::from_millis(500);

/// `scan`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct ScanArgs {
    #[command(flatten)]
    pub port: PortArgs,
    /// Unit ids to probe: FROM-TO or one id.
    #[arg(long, default_value = "1-247", value_parser = parse_units)]
    pub units: RangeInclusive<u8>,
    /// Time to wait for each answer (at 9600 baud a short answer takes about 8 ms on the
    /// wire, plus the device's reaction time).
    #[arg(long, default_value = "100ms", value_parser = field_port::parse_duration)]
    pub timeout: Duration,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

fn parse_units(s: &str) -> Result<RangeInclusive<u8>, String> {
    let id = |t: &str| {
        t.trim()
            .parse::<u8>()
            .ok()
            .filter(|u| (1..=247).contains(u))
            .ok_or_else(|| format!("`{t}` is not a unit id 1..247"))
    };
    let (from, to) = match s.split_once('-') {
        Some((a, b)) => (id(a)?, id(b)?),
        None => (id(s)?, id(s)?),
    };
    if from > to {
        return Err(format!("`{s}`: FROM must not exceed TO"));
    }
    Ok(from..=to)
}

fn exception_text(code: ExceptionCode) -> String {
    format!("exception {:02X} ({code})", u8::from(code))
}

fn outcome_text(outcome: ProbeOutcome) -> String {
    match outcome {
        ProbeOutcome::Answered => "answered".into(),
        ProbeOutcome::Exception(code) | ProbeOutcome::GatewayNoResponse(code) => {
            exception_text(code)
        }
        ProbeOutcome::Garbled => "garbled answer".into(),
        ProbeOutcome::Silent => "no answer".into(),
    }
}

/// Progress on stderr: a redrawn bar on a terminal, a line every 10 % otherwise.
struct Progress<'e> {
    err: &'e mut dyn Write,
    terminal: bool,
    started: Instant,
    found: usize,
    last_decile: usize,
}

impl Progress<'_> {
    fn update(&mut self, p: &ScanProgress) {
        if p.outcome.is_present() {
            self.found += 1;
        }
        let elapsed = self.started.elapsed();
        let eta = elapsed.mul_f64((p.total - p.done) as f64 / p.done.max(1) as f64);
        let eta = humantime::format_duration(Duration::from_secs(eta.as_secs()));
        if self.terminal {
            const WIDTH: usize = 30;
            let filled = WIDTH * p.done / p.total.max(1);
            let _ = write!(
                self.err,
                "\r\x1b[2K[{}{}] {}/{} unit {} · found {} · ETA {eta}",
                "#".repeat(filled),
                "-".repeat(WIDTH - filled),
                p.done,
                p.total,
                p.unit,
                self.found
            );
            let _ = self.err.flush();
        } else {
            let decile = 10 * p.done / p.total.max(1);
            if decile > self.last_decile || p.done == p.total {
                self.last_decile = decile;
                let _ = writeln!(
                    self.err,
                    "scan: {}/{} probed (unit {}), {} found, ETA {eta}",
                    p.done, p.total, p.unit, self.found
                );
            }
        }
    }

    fn finish(&mut self) {
        if self.terminal {
            let _ = write!(self.err, "\r\x1b[2K");
            let _ = self.err.flush();
        }
    }
}

/// One answering unit.
struct Found {
    unit: u8,
    outcome: ProbeOutcome,
    tables: Vec<(Table, ProbeOutcome)>,
}

/// The units that answered, with their probe's outcome.
fn answering(outcomes: &[(u8, ProbeOutcome)]) -> impl Iterator<Item = (u8, ProbeOutcome)> + '_ {
    outcomes.iter().copied().filter(|(_, o)| o.is_present())
}

/// Asks every answering unit for one value of each table, on a fresh connection: the scan's
/// last probe may have been abandoned mid-answer (a timeout), and its late bytes must not meet
/// these.
async fn probe_found(
    transport: &device_protocols::bus::Transport,
    outcomes: &[(u8, ProbeOutcome)],
    timeout: Duration,
    err: &mut dyn Write,
) -> Result<Vec<Found>, u8> {
    let mut ctx = field_port::connect(transport, err).await?;
    let mut found = Vec::new();
    for (unit, outcome) in answering(outcomes) {
        let tables = scan::probe_tables(&mut ctx, unit, 0, timeout)
            .await
            .map_err(|e| {
                let _ = writeln!(err, "{e}");
                EX_UNAVAILABLE
            })?;
        found.push(Found {
            unit,
            outcome,
            tables,
        });
    }
    Ok(found)
}

/// Runs `scan`; returns the exit code (see [`super::field_port`]; 130 when interrupted).
pub fn run(args: &ScanArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let transport = match args.port.transport() {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            return EX_USAGE;
        }
    };
    let terminal = std::io::stderr().is_terminal();
    field_port::block_on(async {
        let (mut int, mut term) = match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(i), Ok(t)) => (i, t),
            (Err(e), _) | (_, Err(e)) => {
                let _ = writeln!(err, "installing the signal handlers: {e}");
                return super::EX_SOFTWARE;
            }
        };
        let mut ctx = match field_port::connect(&transport, err).await {
            Ok(ctx) => ctx,
            Err(code) => return code,
        };
        let settings = ScanSettings {
            units: args.units.clone(),
            timeout: args.timeout,
            ..ScanSettings::default()
        };
        let mut outcomes = Vec::new();
        let stop = async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        };
        let started = Instant::now();
        let mut progress = Progress {
            err: &mut *err,
            terminal,
            started,
            found: 0,
            last_decile: 0,
        };
        let result = scan::scan_until(&mut ctx, &settings, stop, |p| {
            outcomes.push((p.unit, p.outcome));
            progress.update(&p);
        })
        .await;
        progress.finish();
        let report = match result {
            Ok(report) => report,
            Err(e) => {
                let _ = writeln!(err, "{e}");
                return EX_UNAVAILABLE;
            }
        };
        drop(ctx);
        let found = if report.interrupted || report.found.is_empty() {
            // After Ctrl-C the technician wants out, not four more requests per unit.
            answering(&outcomes)
                .map(|(unit, outcome)| Found {
                    unit,
                    outcome,
                    tables: Vec::new(),
                })
                .collect()
        } else {
            // These units answered: a short scan timeout must not call their tables absent,
            // so they get at least the bus's default timeout.
            let timeout = args.timeout.max(TABLE_TIMEOUT);
            match probe_found(&transport, &outcomes, timeout, err).await {
                Ok(found) => found,
                Err(code) => return code,
            }
        };
        let probed = outcomes.len();
        if args.json {
            print_json(args, &found, &report, probed, out);
        } else {
            print_text(&found, &report, out);
        }
        let _ = writeln!(
            err,
            "{}{} unit{} found, {} garbled, {probed} of {} ids probed in {}",
            if report.interrupted {
                "interrupted: "
            } else {
                ""
            },
            found.len(),
            if found.len() == 1 { "" } else { "s" },
            report.garbled.len(),
            args.units.clone().count(),
            humantime::format_duration(Duration::from_millis(started.elapsed().as_millis() as u64))
        );
        if report.interrupted {
            EX_INTERRUPTED
        } else {
            0
        }
    })
    .unwrap_or_else(|e| field_port::runtime_failed(&e, err))
}

fn print_text(found: &[Found], report: &scan::ScanReport, out: &mut dyn Write) {
    for f in found {
        let mut line = format!("unit {:>3}: {}", f.unit, outcome_text(f.outcome));
        if !f.tables.is_empty() {
            let tables: Vec<String> = f
                .tables
                .iter()
                .map(|(t, o)| format!("{t} {}", outcome_text(*o)))
                .collect();
            line = format!("{line} (at address 0: {})", tables.join(", "));
        }
        let _ = writeln!(out, "{line}");
    }
    for unit in &report.garbled {
        let _ = writeln!(
            out,
            "unit {unit:>3}: garbled answer (check baud rate, parity, wiring, duplicate ids)"
        );
    }
}

fn outcome_json(outcome: ProbeOutcome) -> serde_json::Value {
    match outcome {
        ProbeOutcome::Answered => json!({"answer": "data"}),
        ProbeOutcome::Exception(code) | ProbeOutcome::GatewayNoResponse(code) => {
            json!({"answer": "exception", "exception": u8::from(code), "meaning": code.to_string()})
        }
        ProbeOutcome::Garbled => json!({"answer": "garbled"}),
        ProbeOutcome::Silent => json!({"answer": "none"}),
    }
}

fn print_json(
    args: &ScanArgs,
    found: &[Found],
    report: &scan::ScanReport,
    probed: usize,
    out: &mut dyn Write,
) {
    let units: Vec<serde_json::Value> = found
        .iter()
        .map(|f| {
            let tables: serde_json::Map<String, serde_json::Value> = f
                .tables
                .iter()
                .map(|(t, o)| (t.to_string(), outcome_json(*o)))
                .collect();
            json!({"unit": f.unit, "probe": outcome_json(f.outcome), "tables": tables})
        })
        .collect();
    let doc = json!({
        "port": args.port.port,
        "units": units,
        "garbled": report.garbled,
        "probed": probed,
        "interrupted": report.interrupted,
    });
    let _ = writeln!(out, "{doc}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_ranges_parse() {
        assert_eq!(parse_units("1-247"), Ok(1..=247));
        assert_eq!(parse_units("7"), Ok(7..=7));
        assert!(parse_units("0-3").is_err());
        assert!(parse_units("9-3").is_err());
        assert!(parse_units("248").is_err());
    }
}
