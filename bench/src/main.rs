//! `twinbridge-bench`: benchmarks that need real parts. See `BENCHMARKS.md`.

use std::time::Duration;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

use twinbridge_bench::{bus_efficiency, footprint, latency, outage, scale};

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
        /// What the packages ship: `$CARGO_TARGET_DIR/dist/twinbridge`, built by
        /// `cargo build --profile dist -p twinbridge --no-default-features`.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Folder for the temporary config and state (the agent's SQLite store is written
        /// there); default: the system temp folder.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Register change → visible in the hub's twin, p50/p99/max, with many devices on
    /// several simulator ptys (issue 10).
    Latency {
        /// Devices (RTU units, 20 u16 holding registers each).
        #[arg(long, default_value_t = 100)]
        devices: usize,
        /// Simulator ptys (buses) the devices are spread over.
        #[arg(long, default_value_t = 4)]
        buses: usize,
        /// Poll period of every device.
        #[arg(long, default_value = "1s", value_parser = humantime_duration)]
        poll: Duration,
        /// Register changes per second, staggered round-robin over the devices.
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
        /// Changes measured.
        #[arg(long, default_value_t = 600)]
        changes: usize,
        /// The agent's `twin_updates_per_sec` (gateway-wide reported `PATCH`es).
        #[arg(long, default_value_t = 10.0)]
        updates_per_sec: f64,
        /// The agent binary; default: `twinbridge` next to this executable.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Folder for the temporary config and state; default: the system temp folder.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// A hub outage with many devices changing every 100 ms: time to the first message and
    /// to convergence after the hub returns, `PATCH`es per device, store size, journal drops
    /// (issue 10).
    Outage {
        /// Devices (RTU units, 20 u16 holding registers each).
        #[arg(long, default_value_t = 100)]
        devices: usize,
        /// Simulator ptys (buses) the devices are spread over.
        #[arg(long, default_value_t = 10)]
        buses: usize,
        /// Poll period of every device.
        #[arg(long, default_value = "100ms", value_parser = humantime_duration)]
        poll: Duration,
        /// How often each device's two changing registers change.
        #[arg(long, default_value = "100ms", value_parser = humantime_duration)]
        change_every: Duration,
        /// How long the hub is unreachable.
        #[arg(long, default_value = "10m", value_parser = humantime_duration)]
        outage: Duration,
        /// Running time before the outage.
        #[arg(long, default_value = "30s", value_parser = humantime_duration)]
        warmup: Duration,
        /// How long to wait for convergence after the hub's return.
        #[arg(long, default_value = "10m", value_parser = humantime_duration)]
        settle: Duration,
        /// How often the store size is sampled during the outage.
        #[arg(long, default_value = "60s", value_parser = humantime_duration)]
        sample_every: Duration,
        /// The agent's `twin_updates_per_sec`.
        #[arg(long, default_value_t = 10.0)]
        updates_per_sec: f64,
        /// History modes to run, one run each: `latest`, `every-change`.
        #[arg(long, value_delimiter = ',', default_value = "latest,every-change")]
        mode: Vec<String>,
        /// `history_max_bytes` of the every-change run (the agent's default: 1 MiB).
        #[arg(long, default_value_t = 1024 * 1024)]
        history_max_bytes: u64,
        /// `history_max_age` of the every-change run (the agent's default: 7 days).
        #[arg(long, default_value = "7d", value_parser = humantime_duration)]
        history_max_age: Duration,
        /// The agent binary; default: `twinbridge` next to this executable.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Folder for the temporary config and state; default: the system temp folder.
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

#[expect(
    clippy::too_many_lines,
    reason = "one match arm per benchmark, mapping its flags to its options"
)]
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
        Command::Latency {
            devices,
            buses,
            poll,
            rate,
            changes,
            updates_per_sec,
            binary,
            dir,
        } => {
            let opts = latency::Options {
                devices,
                buses,
                poll,
                rate,
                changes,
                updates_per_sec,
                binary: twinbridge_bench::rig::agent_binary(binary)?,
                dir,
            };
            latency::run(&opts)?;
        }
        Command::Outage {
            devices,
            buses,
            poll,
            change_every,
            outage,
            warmup,
            settle,
            sample_every,
            updates_per_sec,
            mode,
            history_max_bytes,
            history_max_age,
            binary,
            dir,
        } => {
            let modes = mode
                .iter()
                .map(|m| match m.as_str() {
                    "latest" => Ok(outage::Mode::Latest),
                    "every-change" => Ok(outage::Mode::EveryChange {
                        max_bytes: history_max_bytes,
                        max_age: history_max_age,
                    }),
                    other => Err(anyhow::anyhow!(
                        "--mode {other:?}: expected latest or every-change"
                    )),
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let opts = outage::Options {
                devices,
                buses,
                poll,
                change_every,
                outage,
                warmup,
                settle,
                sample_every,
                updates_per_sec,
                modes,
                binary: twinbridge_bench::rig::agent_binary(binary)?,
                dir,
            };
            outage::run(&opts)?;
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
