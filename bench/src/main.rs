//! `twinbridge-bench`: benchmarks that need real parts. See `BENCHMARKS.md`.

use clap::{Parser, Subcommand};

use twinbridge_bench::{bus_efficiency, footprint, latency, outage, scale};

/// Benchmarks of twinbridge on real parts (ptys with wire time, the simulator, the bus).
#[derive(Debug, Parser)]
#[command(name = "twinbridge-bench")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

/// The benchmarks; each one's flags are declared next to its options, in its module.
#[derive(Debug, Subcommand)]
enum Command {
    /// Transactions per second of the bus on a line with wire time, against the ideal for
    /// the same frames with t3.5 gaps (issue 10).
    BusEfficiency(bus_efficiency::Flags),
    /// Footprint of the real release agent (RSS, CPU, disk writes, Modbus and MQTT rates)
    /// against the hub emulator and an RTU simulator (issue 10, workload W1).
    Footprint(footprint::Flags),
    /// Register change → visible in the hub's twin, p50/p99/max, with many devices on
    /// several simulator ptys (issue 10).
    Latency(latency::Flags),
    /// A hub outage with many devices changing every 100 ms: time to the first message and
    /// to convergence after the hub returns, `PATCH`es per device, store size, journal drops
    /// (issue 10).
    Outage(outage::Flags),
    /// Scale of the real release agent: N devices on RTU buses (N + 1 MQTT/TLS sessions to
    /// the hub emulator): time to READY=1 and to all twins in sync, RSS, CPU, shutdown
    /// (issue 10). Several device counts give the RSS per session.
    Scale(scale::Flags),
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::BusEfficiency(flags) => {
            bus_efficiency::run(&flags.options())?;
        }
        Command::Footprint(flags) => {
            footprint::run(&flags.options()?)?;
        }
        Command::Latency(flags) => {
            latency::run(&flags.options()?)?;
        }
        Command::Outage(flags) => {
            outage::run(&flags.options()?)?;
        }
        Command::Scale(flags) => {
            scale::run(&flags.options()?)?;
        }
    }
    Ok(())
}
