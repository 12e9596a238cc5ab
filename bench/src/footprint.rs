//! Footprint of the real agent (issue 10, workload W1): the release `twinbridge run` binary
//! against the in-process hub emulator (MQTT over TLS, a self-signed `localhost` certificate
//! as in the tests' `TestHub`) and an RTU simulator on a pty with N units × 20 holding
//! registers, two of which change every second per unit. The agent's `/proc/<pid>` figures
//! (peak and current RSS, CPU time, bytes written to disk) are sampled over a window after a
//! warm-up; Modbus requests are counted at the simulator, MQTT messages at the emulator.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use anyhow::{Context as _, bail};
use device_protocols::point::Table;
use device_protocols::sim::{RtuSim, SimMap, UnitMap};
use hub_emulator::RunningEmulator;
use hub_emulator::state::CounterSnapshot;
use tokio::time::Instant;

use crate::cli::AgentFlags;
use crate::rig::{self, AgentSpec, BusSpec, DeviceSpec, Launched, ProcSample, SiteSpec, to_f64};

/// Registers per unit (contiguous `u16` holding registers from address 0).
pub const REGISTERS: u16 = 20;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Units on the line (1..=247), one device each, polled every second.
    pub units: u8,
    /// Measuring window.
    pub window: Duration,
    /// Warm-up before the window (connects, first twin GETs, first full reports).
    pub warmup: Duration,
    /// The agent binary (`target/release/twinbridge`, or `target/dist/twinbridge` as packaged).
    pub binary: PathBuf,
    /// Where the temporary folder (config, state, pty link) is made; it holds the agent's
    /// SQLite store, so it should be on the disk being measured (not a tmpfs).
    pub dir: Option<PathBuf>,
}

/// The command line of `twinbridge-bench footprint`.
#[derive(Debug, clap::Args)]
#[command(
    mut_arg("binary", |a| a.help(
        "The agent binary; default: `twinbridge` next to this executable \
         (`$CARGO_TARGET_DIR/release/twinbridge`, built by `cargo build --release -p twinbridge`). \
         What the packages ship: `$CARGO_TARGET_DIR/dist/twinbridge`, built by \
         `cargo build --profile dist -p twinbridge --no-default-features`"
    )),
    mut_arg("dir", |a| a.help(
        "Folder for the temporary config and state (the agent's SQLite store is written \
         there); default: the system temp folder"
    )),
)]
pub struct Flags {
    /// Units (devices) on the line, 20 u16 holding registers each, polled every second.
    #[arg(long, default_value_t = 10)]
    units: u8,
    /// Measuring window, in seconds.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// Warm-up before the window, in seconds.
    #[arg(long, default_value_t = 10)]
    warmup: u64,
    /// `--binary`, `--dir`, with the help texts above.
    #[command(flatten)]
    agent: AgentFlags,
}

impl Flags {
    /// The options these flags select (a window of at least 1 s); fails when the agent binary
    /// is missing.
    pub fn options(self) -> anyhow::Result<Options> {
        let (binary, dir) = self.agent.resolve()?;
        Ok(Options {
            units: self.units,
            window: Duration::from_secs(self.seconds.max(1)),
            warmup: Duration::from_secs(self.warmup),
            binary,
            dir,
        })
    }
}

/// The measured figures.
#[derive(Debug, Clone)]
pub struct Report {
    /// Units (devices) on the line.
    pub units: u8,
    /// Length of the window actually measured.
    pub window: Duration,
    /// Peak RSS of the agent process at the end (`VmHWM`), KiB.
    pub vm_hwm_kb: u64,
    /// Mean RSS over the window (`VmRSS`), KiB.
    pub rss_mean_kb: u64,
    /// RSS at the end of the window, KiB, and its anonymous and file-backed parts.
    pub rss_end_kb: (u64, u64, u64),
    /// Of the file-backed RSS at the end, the agent binary's own mapped pages, KiB (the rest
    /// is libc and the other shared libraries).
    pub binary_rss_kb: u64,
    /// CPU time of the agent during the window (user + system).
    pub cpu: Duration,
    /// Bytes written to disk by the agent during the window (`/proc/<pid>/io` `write_bytes`).
    pub write_bytes: u64,
    /// Modbus requests received by the simulator during the window.
    pub modbus_requests: u64,
    /// Hub emulator counters over the window (end − start).
    pub hub: CounterSnapshot,
    /// Size of the agent binary on disk.
    pub binary_bytes: u64,
}

impl Report {
    fn secs(&self) -> f64 {
        self.window.as_secs_f64()
    }

    /// CPU time per minute of wall time.
    pub fn cpu_per_minute(&self) -> Duration {
        Duration::from_secs_f64(self.cpu.as_secs_f64() * 60.0 / self.secs())
    }

    /// CPU as a percentage of one core.
    pub fn cpu_percent(&self) -> f64 {
        self.cpu.as_secs_f64() * 100.0 / self.secs()
    }

    /// Bytes written to disk per hour, extrapolated from the window.
    pub fn write_bytes_per_hour(&self) -> f64 {
        to_f64(self.write_bytes) * 3600.0 / self.secs()
    }

    /// Modbus requests per second.
    pub fn modbus_per_sec(&self) -> f64 {
        to_f64(self.modbus_requests) / self.secs()
    }

    /// A counter of the hub per minute.
    pub fn per_minute(&self, count: u64) -> f64 {
        to_f64(count) * 60.0 / self.secs()
    }
}

/// Runs the benchmark once and prints its table.
pub fn run(opts: &Options) -> anyhow::Result<Report> {
    if opts.units == 0 || opts.units > 247 {
        bail!(
            "--units must be 1..=247 (Modbus unit ids), got {}",
            opts.units
        );
    }
    let runtime = rig::runtime()?;
    let report = runtime.block_on(run_async(opts))?;
    print_report(&report, opts);
    Ok(report)
}

fn device_id(unit: u8) -> String {
    format!("dev-{unit:03}")
}

const GATEWAY: &str = "gw-footprint";

async fn run_async(opts: &Options) -> anyhow::Result<Report> {
    let dir = rig::temp_dir(opts.dir.as_deref())?;
    let mut map = SimMap::new();
    for unit in 1..=opts.units {
        let values: Vec<u16> = (0..REGISTERS).map(|r| u16::from(unit) * 100 + r).collect();
        map = map.with_unit(unit, UnitMap::new().with_holding(0, &values));
    }
    let sim = RtuSim::start(dir.path().join("ttyBUS"), map)
        .context("starting the RTU simulator on a pty")?;

    let site = SiteSpec {
        gateway: GATEWAY.to_owned(),
        hub_extra: String::new(),
        buses: vec![BusSpec {
            name: "line".to_owned(),
            port: sim.path().to_path_buf(),
            baud: 115_200,
            timeout: Duration::from_millis(200),
        }],
        devices: (1..=opts.units)
            .map(|unit| DeviceSpec {
                id: device_id(unit),
                bus: "line".to_owned(),
                unit,
                poll: Duration::from_secs(1),
                registers: REGISTERS,
                extra: String::new(),
            })
            .collect(),
    };
    let mut launched = Launched::start(dir.path(), &site, AgentSpec::new(&opts.binary)).await?;
    let result = measure(opts, &mut launched.child, &sim, &launched.emu).await;
    launched.stop().await;
    let mut report = result?;
    report.binary_bytes = std::fs::metadata(&opts.binary)
        .with_context(|| format!("reading the size of {}", opts.binary.display()))?
        .len();
    Ok(report)
}

fn modbus_total(sim: &RtuSim, units: u8) -> u64 {
    (1..=units).map(|u| sim.handle().requests(u)).sum()
}

async fn measure(
    opts: &Options,
    child: &mut Child,
    sim: &RtuSim,
    emu: &RunningEmulator,
) -> anyhow::Result<Report> {
    let pid = child.id();
    let ticks_per_sec = rig::ticks_per_sec()?;
    let start = Instant::now();
    let mut tick: u16 = 0;
    let mut baseline: Option<(Instant, ProcSample, u64, CounterSnapshot)> = None;
    let mut rss_sum: u64 = 0;
    let mut rss_n: u64 = 0;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        if let Some(status) = child.try_wait().context("waiting on the agent")? {
            bail!("the agent exited early with {status}");
        }
        // Two registers per unit change every second.
        tick = tick.wrapping_add(1);
        for unit in 1..=opts.units {
            sim.handle().set_values(
                unit,
                Table::Holding,
                0,
                &[tick, tick.wrapping_mul(3).wrapping_add(u16::from(unit))],
            );
        }
        let now = Instant::now();
        let elapsed = now - start;
        match &baseline {
            None if elapsed >= opts.warmup => {
                let sample = rig::read_proc(pid)?;
                baseline = Some((
                    now,
                    sample,
                    modbus_total(sim, opts.units),
                    emu.hub().counters.snapshot(),
                ));
            }
            None => {}
            Some((t0, p0, m0, h0)) => {
                let sample = rig::read_proc(pid)?;
                rss_sum += sample.vm_rss_kb;
                rss_n += 1;
                if now.duration_since(*t0) >= opts.window {
                    let cpu_ticks = sample.cpu_ticks - p0.cpu_ticks;
                    let binary_rss_kb = rig::mapped_rss_kb(pid, &opts.binary)?;
                    return Ok(Report {
                        units: opts.units,
                        window: now.duration_since(*t0),
                        vm_hwm_kb: sample.vm_hwm_kb,
                        rss_mean_kb: rss_sum / rss_n.max(1),
                        rss_end_kb: (sample.vm_rss_kb, sample.rss_anon_kb, sample.rss_file_kb),
                        binary_rss_kb,
                        cpu: Duration::from_secs_f64(to_f64(cpu_ticks) / to_f64(ticks_per_sec)),
                        write_bytes: sample.write_bytes - p0.write_bytes,
                        modbus_requests: modbus_total(sim, opts.units) - m0,
                        hub: rig::diff(*h0, emu.hub().counters.snapshot()),
                        binary_bytes: 0,
                    });
                }
            }
        }
    }
}

fn print_report(r: &Report, opts: &Options) {
    let mib = |kb: u64| to_f64(kb) / 1024.0;
    println!(
        "footprint W1: {} units x {REGISTERS} u16 holding registers, poll 1 s, 2 registers/unit change every 1 s; \
         warm-up {:?}, window {:.1} s; hub over MQTT/TLS (in-process emulator)",
        r.units,
        opts.warmup,
        r.secs()
    );
    println!("| figure | value |");
    println!("| --- | ---: |");
    println!("| peak RSS (VmHWM) | {:.1} MiB |", mib(r.vm_hwm_kb));
    println!(
        "| mean RSS over the window (VmRSS) | {:.1} MiB |",
        mib(r.rss_mean_kb)
    );
    println!(
        "| RSS at the end: anon / file-backed | {:.1} / {:.1} MiB |",
        mib(r.rss_end_kb.1),
        mib(r.rss_end_kb.2)
    );
    println!(
        "| of the file-backed RSS: the agent binary's own pages | {:.1} MiB |",
        mib(r.binary_rss_kb)
    );
    println!(
        "| binary size on disk | {:.1} MiB |",
        to_f64(r.binary_bytes) / 1024.0 / 1024.0
    );
    println!(
        "| CPU time per minute (user+sys) | {:.2} s ({:.2} % of one core) |",
        r.cpu_per_minute().as_secs_f64(),
        r.cpu_percent()
    );
    println!(
        "| bytes written to disk per hour (extrapolated) | {:.1} MiB |",
        r.write_bytes_per_hour() / 1024.0 / 1024.0
    );
    println!(
        "| Modbus requests/s (simulator counter) | {:.2} |",
        r.modbus_per_sec()
    );
    println!(
        "| MQTT reported patches / min | {:.1} |",
        r.per_minute(r.hub.reported_patches)
    );
    println!(
        "| MQTT telemetry / min | {:.1} |",
        r.per_minute(r.hub.telemetry)
    );
    println!(
        "| MQTT twin GETs / min | {:.1} |",
        r.per_minute(r.hub.twin_gets)
    );
    println!(
        "| hub responses 2xx / min | {:.1} |",
        r.per_minute(r.hub.responses_2xx)
    );
    println!(
        "| connects / disconnects by hub in window | {} / {} |",
        r.hub.connects, r.hub.disconnects_by_hub
    );
}
