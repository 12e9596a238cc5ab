//! `twinbridge-bench`: benchmarks that need real parts. See `BENCHMARKS.md`.

use std::time::Duration;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

use twinbridge_bench::{bus_efficiency, footprint};

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
        /// The device's answer delay (e.g. 2ms).
        #[arg(long, default_value = "0s", value_parser = humantime_duration)]
        sim_delay: Duration,
        /// The device stand-in: `direct` (tokio-modbus' RTU server over loopback TCP, no pty
        /// on the device side) or `sim` (the RTU simulator on its pty, as the tests use it).
        #[arg(long, value_enum, default_value = "direct")]
        device: bus_efficiency::Device,
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
            device,
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
                device,
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
    }
    Ok(())
}
