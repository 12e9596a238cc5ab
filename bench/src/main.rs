//! `twinbridge-bench`: benchmarks that need real parts. See `BENCHMARKS.md`.

use std::time::Duration;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

use twinbridge_bench::{bus_efficiency, footprint, scale};

/// Benchmarks of twinbridge on real parts (ptys with wire time, the simulator, the bus).
#[derive(Debug, Parser)]
#[command(name = "twinbridge-bench")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Transactions per second of the bus on a line with wire time, against the ideal for
    /// the same frames with t3.5 gaps (issue 10).
    BusEfficiency {
        /// Baud rates (8N1), comma separated.
        #[arg(long, value_delimiter = ',', default_value = "9600,115200")]
        baud: Vec<u32>,
        /// Measuring window of each run, in seconds.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Warm-up before each window, in seconds.
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        /// Runs per baud rate.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Units on the line.
        #[arg(long, default_value_t = 4)]
        units: u8,
        /// Contiguous u16 holding registers read from each unit.
        #[arg(long, default_value_t = 20)]
        registers: u16,
        /// The bus's turnaround (silence after each answer, e.g. 5ms; t3.5 is always kept).
        #[arg(long, default_value = "0s", value_parser = humantime_duration)]
        turnaround: Duration,
        /// The simulator's answer delay (e.g. 2ms).
        #[arg(long, default_value = "0s", value_parser = humantime_duration)]
        sim_delay: Duration,
    },
    /// Footprint of the real release agent (RSS, CPU, disk writes, Modbus and MQTT rates)
    /// against the hub emulator and an RTU simulator (issue 10, workload W1).
    Footprint {
        /// Units (devices) on the line, 20 u16 holding registers each, polled every second.
        #[arg(long, default_value_t = 10)]
        units: u8,
        /// Measuring window, in seconds.
        #[arg(long, default_value_t = 120)]
        seconds: u64,
        /// Warm-up before the window, in seconds.
        #[arg(long, default_value_t = 10)]
        warmup: u64,
        /// The agent binary; default: `twinbridge` next to this executable
        /// (`$CARGO_TARGET_DIR/release/twinbridge`, built by `cargo build --release -p twinbridge`).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Folder for the temporary config and state (the agent's SQLite store is written
        /// there); default: the system temp folder.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Scale of the real release agent: N devices on RTU buses (N + 1 MQTT/TLS sessions to
    /// the hub emulator): time to READY=1 and to all twins in sync, RSS, CPU, shutdown
    /// (issue 10). Several device counts give the RSS per session.
    Scale {
        /// Device counts, comma separated; one agent run each.
        #[arg(long, value_delimiter = ',', default_value = "500")]
        devices: Vec<u32>,
        /// Units (devices) per RTU bus; buses = devices / per-bus, rounded up.
        #[arg(long, default_value_t = 50)]
        per_bus: u8,
        /// Poll period of every device (e.g. 5s).
        #[arg(long, default_value = "5s", value_parser = humantime_duration)]
        poll: Duration,
        /// The agent's `[hub]` `connects_per_sec` (its default).
        #[arg(long, default_value_t = scale::DEFAULT_PACING.connects_per_sec)]
        connects_per_sec: f64,
        /// The agent's `[hub]` `twin_reads_per_sec` (its default).
        #[arg(long, default_value_t = scale::DEFAULT_PACING.twin_reads_per_sec)]
        twin_reads_per_sec: f64,
        /// The agent's `[hub]` `twin_updates_per_sec` (its default).
        #[arg(long, default_value_t = scale::DEFAULT_PACING.twin_updates_per_sec)]
        twin_updates_per_sec: f64,
        /// Steady-state window after all twins are in sync, in seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Give up a run when the twins are not all in sync this long after the spawn.
        #[arg(long, default_value = "10m", value_parser = humantime_duration)]
        sync_timeout: Duration,
        /// The agent binary; default: `twinbridge` next to this executable.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Folder for the temporary config, state and ptys; default: the system temp folder.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The agent's log filter (`TWINBRIDGE_LOG`).
        #[arg(long, default_value = "warn")]
        log: String,
    },
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 5ms, 1.5s)"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Command::BusEfficiency {
            baud,
            seconds,
            warmup,
            runs,
            units,
            registers,
            turnaround,
            sim_delay,
        } => {
            let opts = bus_efficiency::Options {
                bauds: baud,
                window: Duration::from_secs(seconds),
                warmup: Duration::from_secs(warmup),
                runs: runs.max(1),
                units,
                registers,
                turnaround,
                sim_delay,
            };
            bus_efficiency::run(&opts)?;
        }
        Command::Footprint {
            units,
            seconds,
            warmup,
            binary,
            dir,
        } => {
            let binary = twinbridge_bench::rig::agent_binary(binary)?;
            let opts = footprint::Options {
                units,
                window: Duration::from_secs(seconds.max(1)),
                warmup: Duration::from_secs(warmup),
                binary,
                dir,
            };
            footprint::run(&opts)?;
        }
        Command::Scale {
            devices,
            per_bus,
            poll,
            connects_per_sec,
            twin_reads_per_sec,
            twin_updates_per_sec,
            seconds,
            sync_timeout,
            binary,
            dir,
            log,
        } => {
            let binary = twinbridge_bench::rig::agent_binary(binary)?;
            let opts = scale::Options {
                devices,
                per_bus,
                poll,
                pacing: scale::Pacing {
                    connects_per_sec,
                    twin_reads_per_sec,
                    twin_updates_per_sec,
                },
                window: Duration::from_secs(seconds.max(1)),
                sync_timeout,
                binary,
                dir,
                log,
            };
            scale::run(&opts)?;
        }
    }
    Ok(())
}
