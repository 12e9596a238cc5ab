//! Latency of the whole agent (issue 10): a register changes in a simulator → the new value is
//! in the hub's twin. The release `twinbridge run` binary runs against the in-process hub
//! emulator (MQTT/TLS) with N RTU devices spread over a few simulator ptys ([`RtuSite`]),
//! 20 `u16` holding registers each, polled every `poll`. The bench changes one register of
//! one device at a time, staggered at a fixed rate over the devices (so consecutive changes
//! land on different buses and a device changes again only after every other one did), and
//! watches the emulator's twin of that device in process for the new value: latency = first
//! time the hub holds it − the instant the simulator started answering with it.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use anyhow::{Context as _, bail};
use hub_emulator::RunningEmulator;
use hub_emulator::state::CounterSnapshot;
use tokio::time::Instant;

use crate::cli::AgentFlags;
use crate::rig::{self, AgentSpec, Launched, RtuSite, SiteSpec, to_f64};
use crate::stats::{self, Summary};

/// Registers per device.
pub const REGISTERS: u16 = 20;
const GATEWAY: &str = "gw-latency";
/// A change not seen in the twin within this long counts as missed.
const GIVE_UP: Duration = Duration::from_secs(30);
/// How often the twins of the devices with a change in flight are read.
const WATCH_EVERY: Duration = Duration::from_millis(2);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Devices (one identity each).
    pub devices: usize,
    /// Simulator ptys (buses) they are spread over.
    pub buses: usize,
    /// Poll period of every device.
    pub poll: Duration,
    /// Register changes per second (across all devices).
    pub rate: f64,
    /// Changes measured.
    pub changes: usize,
    /// The agent's `twin_updates_per_sec` (gateway-wide reported `PATCH`es).
    pub updates_per_sec: f64,
    /// The agent binary.
    pub binary: PathBuf,
    /// Folder for the temporary config and state.
    pub dir: Option<PathBuf>,
}

/// The command line of `twinbridge-bench latency`.
#[derive(Debug, clap::Args)]
pub struct Flags {
    /// Devices (RTU units, 20 u16 holding registers each).
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Simulator ptys (buses) the devices are spread over.
    #[arg(long, default_value_t = 4)]
    buses: usize,
    /// Poll period of every device.
    #[arg(long, default_value = "1s", value_parser = crate::cli::duration)]
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
    /// `--binary`, `--dir`.
    #[command(flatten)]
    agent: AgentFlags,
}

impl Flags {
    /// The options these flags select; fails when the agent binary is missing.
    pub fn options(self) -> anyhow::Result<Options> {
        let (binary, dir) = self.agent.resolve()?;
        Ok(Options {
            devices: self.devices,
            buses: self.buses,
            poll: self.poll,
            rate: self.rate,
            changes: self.changes,
            updates_per_sec: self.updates_per_sec,
            binary,
            dir,
        })
    }
}

/// The measured figures.
#[derive(Debug, Clone)]
pub struct Report {
    /// Change → visible in the hub, nanoseconds.
    pub latency: Summary,
    /// Changes never seen within [`GIVE_UP`].
    pub missed: usize,
    /// Hub counters over the measurement.
    pub hub: CounterSnapshot,
    /// Modbus requests per second over the measurement.
    pub modbus_per_sec: f64,
    /// Agent CPU over the measurement, % of one core.
    pub cpu_percent: f64,
    /// How long the warm-up (all twins holding the initial values) took.
    pub warmup: Duration,
    /// Load averages at the end.
    pub load: String,
}

/// One change in flight.
struct Change {
    device: usize,
    register: u16,
    value: u16,
    at: Instant,
}

/// Runs the benchmark once and prints its table.
pub fn run(opts: &Options) -> anyhow::Result<Report> {
    if opts.devices == 0 || opts.changes == 0 || opts.rate.is_nan() || opts.rate <= 0.0 {
        bail!("--devices, --changes and --rate must be positive");
    }
    if opts.changes > 50_000 {
        bail!("--changes is at most 50000 (values must stay distinct u16s)");
    }
    let report = rig::runtime()?.block_on(run_async(opts))?;
    print_report(&report, opts);
    Ok(report)
}

fn initial(device: usize, register: u16) -> u16 {
    // Distinct from every measured value (those are 10000 + k).
    u16::try_from(device % 100).expect("below 100") * 20 + register
}

async fn run_async(opts: &Options) -> anyhow::Result<Report> {
    let dir = rig::temp_dir(opts.dir.as_deref())?;
    let site = RtuSite::start(dir.path(), opts.devices, opts.buses, REGISTERS, initial)?;
    let spec = SiteSpec {
        gateway: GATEWAY.to_owned(),
        hub_extra: format!("twin_updates_per_sec = {:?}\n", opts.updates_per_sec),
        buses: site.bus_specs(),
        devices: site.device_specs(opts.poll, ""),
    };
    let mut launched = Launched::start(dir.path(), &spec, AgentSpec::new(&opts.binary)).await?;
    let result = measure(opts, &mut launched.child, &site, &launched.emu).await;
    launched.stop().await;
    result
}

async fn measure(
    opts: &Options,
    child: &mut Child,
    site: &RtuSite,
    emu: &RunningEmulator,
) -> anyhow::Result<Report> {
    let hub = emu.hub();
    // Warm-up: every twin holds the initial values.
    let started = Instant::now();
    let initial_values: Vec<Vec<u16>> = (0..opts.devices)
        .map(|d| (0..REGISTERS).map(|r| initial(d, r)).collect())
        .collect();
    let mut waiting: Vec<usize> = (0..opts.devices).collect();
    while !waiting.is_empty() {
        if let Some(status) = child.try_wait().context("waiting on the agent")? {
            bail!("the agent exited early with {status}");
        }
        if started.elapsed() > Duration::from_mins(5) {
            bail!(
                "{} twins still lack their initial values after 5 minutes",
                waiting.len()
            );
        }
        waiting.retain(|&d| {
            !rig::reported_equals(&rig::reported(hub, &site.devices[d].id), &initial_values[d])
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let warmup = started.elapsed();
    // A few quiet seconds so the start-up PATCHes (gateway summary, link health) are done.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let pid = child.id();
    let p0 = rig::read_proc(pid)?;
    let h0 = hub.counters.snapshot();
    let m0 = site.requests();
    let t0 = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / opts.rate);
    let mut next_change = t0;
    let mut made = 0usize;
    let mut in_flight: Vec<Change> = Vec::new();
    let mut samples: Vec<u64> = Vec::with_capacity(opts.changes);
    let mut missed = 0usize;
    while made < opts.changes || !in_flight.is_empty() {
        let now = Instant::now();
        if made < opts.changes && now >= next_change {
            // Round-robin over devices (so over buses too); the register walks through all.
            let device = made % opts.devices;
            let register = u16::try_from((made / opts.devices) % usize::from(REGISTERS))
                .expect("below REGISTERS");
            let value = 10_000 + u16::try_from(made).expect("at most 50000 changes, checked");
            site.set(device, register, &[value]);
            in_flight.push(Change {
                device,
                register,
                value,
                at: Instant::now(),
            });
            made += 1;
            next_change += interval;
        }
        let mut i = 0;
        while i < in_flight.len() {
            let c = &in_flight[i];
            let reported = rig::reported(hub, &site.devices[c.device].id);
            let seen = reported
                .get(format!("r{:02}", c.register))
                .and_then(serde_json::Value::as_u64)
                == Some(u64::from(c.value));
            let now = Instant::now();
            if seen {
                samples.push(u64::try_from((now - c.at).as_nanos()).unwrap_or(u64::MAX));
                in_flight.swap_remove(i);
            } else if now - c.at > GIVE_UP {
                missed += 1;
                in_flight.swap_remove(i);
            } else {
                i += 1;
            }
        }
        if let Some(status) = child.try_wait().context("waiting on the agent")? {
            bail!("the agent exited early with {status}");
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
    let window = t0.elapsed();
    let p1 = rig::read_proc(pid)?;
    let ticks = rig::ticks_per_sec()?;
    Ok(Report {
        latency: Summary::of(&samples),
        missed,
        hub: rig::diff(h0, hub.counters.snapshot()),
        modbus_per_sec: to_f64(site.requests() - m0) / window.as_secs_f64(),
        cpu_percent: to_f64(p1.cpu_ticks - p0.cpu_ticks) / to_f64(ticks) * 100.0
            / window.as_secs_f64(),
        warmup,
        load: rig::loadavg(),
    })
}

fn print_report(r: &Report, opts: &Options) {
    let target = opts.poll + Duration::from_millis(100);
    println!(
        "latency: {} devices x {REGISTERS} u16 holding registers on {} simulator ptys, poll {:?}; \
         {} changes at {}/s (one register of one device each, round-robin), \
         twin_updates_per_sec = {}; hub over MQTT/TLS (in-process emulator); warm-up {:.1} s; load {}",
        opts.devices,
        opts.buses,
        opts.poll,
        opts.changes,
        opts.rate,
        opts.updates_per_sec,
        r.warmup.as_secs_f64(),
        r.load,
    );
    println!("| figure | value |");
    println!("| --- | ---: |");
    println!("| changes seen in the twin | {} |", r.latency.n);
    println!("| missed (not seen within {GIVE_UP:?}) | {} |", r.missed);
    println!("| min | {} ms |", stats::ms(r.latency.min));
    println!("| p50 | {} ms |", stats::ms(r.latency.median));
    println!("| mean | {} ms |", stats::ms(r.latency.mean));
    println!("| p99 | {} ms |", stats::ms(r.latency.p99));
    println!("| max | {} ms |", stats::ms(r.latency.max));
    println!(
        "| target: p99 <= poll + 100 ms = {} ms | {} |",
        target.as_millis(),
        if r.latency.p99 <= u64::try_from(target.as_nanos()).unwrap_or(u64::MAX) && r.missed == 0 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "| reported PATCHes (hub) / 429s | {} / {} |",
        r.hub.reported_patches, r.hub.responses_429
    );
    println!("| Modbus requests/s | {:.1} |", r.modbus_per_sec);
    println!("| agent CPU | {:.1} % of one core |", r.cpu_percent);
}
