//! A hub outage under load (issue 10): the release `twinbridge run` binary with N RTU devices
//! (spread over a few simulator ptys, 20 `u16` holding registers each, polled every 100 ms)
//! whose first two registers change every 100 ms. After a warm-up the hub becomes unreachable
//! the way a real outage looks (every live connection dropped, CONNECTs refused with
//! CONNACK 3) for the outage length; the devices keep changing throughout. At the end of the
//! outage the changes stop (so "the latest values" are defined) and the hub accepts
//! connections again. Measured: seconds from the hub's return to the first accepted CONNECT,
//! the first reported PATCH and full convergence (every device's twin equals the simulator's
//! latest values); reported `PATCH`es per device from the return to convergence (the twin's
//! reported `$version` delta); the agent's store size (db + WAL + shm) before, during
//! (sampled) and after; and, from `twinbridge status --json`, the every-change journal's
//! queued and dropped entries.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};
use hub_emulator::RunningEmulator;
use tokio::time::Instant;

use crate::cli::AgentFlags;
use crate::rig::{self, AgentSpec, Launched, RtuSite, SiteSpec, to_f64};

/// Registers per device.
pub const REGISTERS: u16 = 20;
const GATEWAY: &str = "gw-outage";

/// How the devices keep their history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `history = "latest"` (the default): the store coalesces.
    Latest,
    /// `history = "every-change"` with bounds.
    EveryChange {
        /// `history_max_bytes`.
        max_bytes: u64,
        /// `history_max_age`.
        max_age: Duration,
    },
}

impl Mode {
    fn config_lines(self) -> String {
        match self {
            Self::Latest => String::new(),
            Self::EveryChange { max_bytes, max_age } => format!(
                "history = \"every-change\"\nhistory_max_bytes = {max_bytes}\nhistory_max_age = \"{}\"\n",
                humantime::format_duration(max_age)
            ),
        }
    }

    fn describe(self) -> String {
        match self {
            Self::Latest => "history = \"latest\"".into(),
            Self::EveryChange { max_bytes, max_age } => format!(
                "history = \"every-change\", history_max_bytes = {max_bytes}, history_max_age = {}",
                humantime::format_duration(max_age)
            ),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Devices (one identity each).
    pub devices: usize,
    /// Simulator ptys (buses) they are spread over.
    pub buses: usize,
    /// Poll period of every device.
    pub poll: Duration,
    /// How often every device's two changing registers change.
    pub change_every: Duration,
    /// How long the hub is unreachable.
    pub outage: Duration,
    /// Running time before the outage.
    pub warmup: Duration,
    /// How long to wait for convergence after the hub's return before giving up.
    pub settle: Duration,
    /// How often the store size is sampled.
    pub sample_every: Duration,
    /// The agent's `twin_updates_per_sec`.
    pub updates_per_sec: f64,
    /// The modes to run, one full run each.
    pub modes: Vec<Mode>,
    /// The agent binary.
    pub binary: PathBuf,
    /// Folder for the temporary config and state.
    pub dir: Option<PathBuf>,
}

/// The command line of `twinbridge-bench outage`.
#[derive(Debug, clap::Args)]
pub struct Flags {
    /// Devices (RTU units, 20 u16 holding registers each).
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Simulator ptys (buses) the devices are spread over.
    #[arg(long, default_value_t = 10)]
    buses: usize,
    /// Poll period of every device.
    #[arg(long, default_value = "100ms", value_parser = crate::cli::duration)]
    poll: Duration,
    /// How often each device's two changing registers change.
    #[arg(long, default_value = "100ms", value_parser = crate::cli::duration)]
    change_every: Duration,
    /// How long the hub is unreachable.
    #[arg(long, default_value = "10m", value_parser = crate::cli::duration)]
    outage: Duration,
    /// Running time before the outage.
    #[arg(long, default_value = "30s", value_parser = crate::cli::duration)]
    warmup: Duration,
    /// How long to wait for convergence after the hub's return.
    #[arg(long, default_value = "10m", value_parser = crate::cli::duration)]
    settle: Duration,
    /// How often the store size is sampled during the outage.
    #[arg(long, default_value = "60s", value_parser = crate::cli::duration)]
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
    #[arg(long, default_value = "7d", value_parser = crate::cli::duration)]
    history_max_age: Duration,
    /// `--binary`, `--dir`.
    #[command(flatten)]
    agent: AgentFlags,
}

impl Flags {
    /// The options these flags select; fails on an unknown `--mode` or when the agent binary
    /// is missing.
    pub fn options(self) -> anyhow::Result<Options> {
        let modes = self
            .mode
            .iter()
            .map(|m| match m.as_str() {
                "latest" => Ok(Mode::Latest),
                "every-change" => Ok(Mode::EveryChange {
                    max_bytes: self.history_max_bytes,
                    max_age: self.history_max_age,
                }),
                other => bail!("--mode {other:?}: expected latest or every-change"),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (binary, dir) = self.agent.resolve()?;
        Ok(Options {
            devices: self.devices,
            buses: self.buses,
            poll: self.poll,
            change_every: self.change_every,
            outage: self.outage,
            warmup: self.warmup,
            settle: self.settle,
            sample_every: self.sample_every,
            updates_per_sec: self.updates_per_sec,
            modes,
            binary,
            dir,
        })
    }
}

/// The figures of one run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The mode run.
    pub mode: Mode,
    /// Store bytes just before the outage.
    pub store_before: u64,
    /// Store bytes sampled during the outage: (seconds into the outage, bytes).
    pub store_during: Vec<(f64, u64)>,
    /// Store bytes at the end (convergence or giving up).
    pub store_after: u64,
    /// Largest sample, any phase.
    pub store_peak: u64,
    /// Hub's return → first accepted CONNECT.
    pub first_connect: Option<Duration>,
    /// Hub's return → first reported PATCH.
    pub first_patch: Option<Duration>,
    /// Hub's return → every session connected again.
    pub all_connected: Option<Duration>,
    /// Hub's return → every device's twin equals the latest values.
    pub converged: Option<Duration>,
    /// Devices converged at the end.
    pub devices_converged: usize,
    /// Reported `PATCH`es per device from the return to the end: min, mean, max.
    pub patches_per_device: (u64, f64, u64),
    /// Devices with more than one PATCH after the return.
    pub devices_over_one: usize,
    /// Connect attempts refused during the outage.
    pub refused: u64,
    /// Journal (entries, dropped) before the outage, at the end of the outage and at the end.
    pub journal: [(u64, u64); 3],
    /// Modbus requests per second during the outage.
    pub modbus_per_sec: f64,
    /// Value changes made per second during the outage (devices × registers that changed).
    pub changes_per_sec: f64,
    /// Agent CPU during the outage, % of one core.
    pub cpu_outage: f64,
    /// Agent CPU from the return to the end, % of one core.
    pub cpu_recovery: f64,
    /// Peak RSS of the agent at the end, KiB.
    pub vm_hwm_kb: u64,
    /// Load averages at the end.
    pub load: String,
}

/// Runs every mode and prints its tables.
pub fn run(opts: &Options) -> anyhow::Result<Vec<Report>> {
    if opts.devices == 0 || opts.change_every.is_zero() || opts.poll.is_zero() {
        bail!("--devices, --change-every and --poll must be positive");
    }
    let runtime = rig::runtime()?;
    let mut reports = Vec::new();
    for &mode in &opts.modes {
        let report = runtime.block_on(run_mode(opts, mode))?;
        print_report(&report, opts);
        reports.push(report);
    }
    Ok(reports)
}

fn initial(device: usize, register: u16) -> u16 {
    u16::try_from(device % 100).expect("below 100") * 20 + register
}

/// The two changing registers of `device` at `tick`.
fn changing(device: usize, tick: u16) -> [u16; 2] {
    let d = u16::try_from(device % 1000).expect("below 1000");
    [tick, tick.wrapping_mul(7).wrapping_add(d)]
}

async fn run_mode(opts: &Options, mode: Mode) -> anyhow::Result<Report> {
    let dir = rig::temp_dir(opts.dir.as_deref())?;
    let site = Arc::new(RtuSite::start(
        dir.path(),
        opts.devices,
        opts.buses,
        REGISTERS,
        initial,
    )?);
    let spec = SiteSpec {
        gateway: GATEWAY.to_owned(),
        hub_extra: format!("twin_updates_per_sec = {:?}\n", opts.updates_per_sec),
        buses: site.bus_specs(),
        devices: site.device_specs(opts.poll, &mode.config_lines()),
    };
    let mut launched = Launched::start(dir.path(), &spec, AgentSpec::new(&opts.binary)).await?;
    let result = measure(
        opts,
        mode,
        &mut launched.child,
        &site,
        &launched.emu,
        &launched.config,
    )
    .await;
    launched.stop().await;
    result
}

/// Changes every device's two registers every `every` while `running`; `latest` holds what
/// the simulators answer now.
struct Changer {
    running: Arc<AtomicBool>,
    latest: Arc<Mutex<Vec<Vec<u16>>>>,
    ticks: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Changer {
    fn start(site: Arc<RtuSite>, every: Duration) -> Self {
        let devices = site.devices.len();
        let latest: Vec<Vec<u16>> = (0..devices)
            .map(|d| (0..REGISTERS).map(|r| initial(d, r)).collect())
            .collect();
        let latest = Arc::new(Mutex::new(latest));
        let running = Arc::new(AtomicBool::new(true));
        let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = tokio::spawn({
            let (latest, running, ticks) = (latest.clone(), running.clone(), ticks.clone());
            async move {
                let mut interval = tokio::time::interval(every);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut tick: u16 = 0;
                loop {
                    interval.tick().await;
                    // The flag is checked under the lock, so `stop` sees the final values.
                    let mut latest = latest.lock().unwrap_or_else(PoisonError::into_inner);
                    if !running.load(Ordering::SeqCst) {
                        return;
                    }
                    tick = tick.wrapping_add(1);
                    for (d, values) in latest.iter_mut().enumerate() {
                        let v = changing(d, tick);
                        site.set(d, 0, &v);
                        values[..2].copy_from_slice(&v);
                    }
                    ticks.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Self {
            running,
            latest,
            ticks,
            task,
        }
    }

    /// Stops the changes; returns the final values.
    async fn stop(self) -> Vec<Vec<u16>> {
        let values = {
            let latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
            self.running.store(false, Ordering::SeqCst);
            latest.clone()
        };
        let _ = self.task.await;
        values
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one linear script: warm-up, outage, recovery, figures"
)]
async fn measure(
    opts: &Options,
    mode: Mode,
    child: &mut Child,
    site: &Arc<RtuSite>,
    emu: &RunningEmulator,
    config: &Path,
) -> anyhow::Result<Report> {
    let hub = emu.hub();
    let state_dir = config
        .parent()
        .context("the config has a folder")?
        .join("state");
    let identities = opts.devices + 1;
    let alive = |child: &mut Child| -> anyhow::Result<()> {
        if let Some(status) = child.try_wait().context("waiting on the agent")? {
            bail!("the agent exited early with {status}");
        }
        Ok(())
    };
    let changer = Changer::start(site.clone(), opts.change_every);
    // Warm-up: every session connected, then the rest of the warm-up time.
    let started = Instant::now();
    let mut store_peak = 0;
    while hub.connected_devices().len() < identities || started.elapsed() < opts.warmup {
        alive(child)?;
        if started.elapsed() > opts.warmup + Duration::from_mins(5) {
            bail!(
                "only {} of {identities} sessions connected after the warm-up and 5 more minutes",
                hub.connected_devices().len()
            );
        }
        store_peak = store_peak.max(rig::store_bytes(&state_dir));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pid = child.id();
    let ticks_per_sec = rig::ticks_per_sec()?;
    let cpu = |a: &rig::ProcSample, b: &rig::ProcSample, d: Duration| {
        to_f64(b.cpu_ticks - a.cpu_ticks) / to_f64(ticks_per_sec) * 100.0 / d.as_secs_f64()
    };
    let journal_before = rig::journal_totals(&rig::status_json(&opts.binary, config)?);
    let store_before = rig::store_bytes(&state_dir);
    store_peak = store_peak.max(store_before);

    // The outage.
    let p0 = rig::read_proc(pid)?;
    let m0 = site.requests();
    let c0 = changer.ticks.load(Ordering::Relaxed);
    let h0 = hub.counters.snapshot();
    rig::outage(hub, true);
    let t_out = Instant::now();
    eprintln!(
        "outage: hub unreachable for {:?} ({}); store {} bytes",
        opts.outage,
        mode.describe(),
        store_before
    );
    let mut store_during = Vec::new();
    let mut next_sample = t_out + opts.sample_every;
    while t_out.elapsed() < opts.outage {
        alive(child)?;
        let now = Instant::now();
        if now >= next_sample {
            let bytes = rig::store_bytes(&state_dir);
            store_peak = store_peak.max(bytes);
            store_during.push(((now - t_out).as_secs_f64(), bytes));
            eprintln!(
                "  {:>5.0} s into the outage: store {bytes} bytes",
                (now - t_out).as_secs_f64()
            );
            next_sample += opts.sample_every;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The changes stop, then the hub comes back.
    let outage_len = t_out.elapsed();
    let changes = changer.ticks.load(Ordering::Relaxed) - c0;
    let latest = changer.stop().await;
    let modbus = site.requests() - m0;
    let p1 = rig::read_proc(pid)?;
    let store_end_outage = rig::store_bytes(&state_dir);
    store_during.push((outage_len.as_secs_f64(), store_end_outage));
    let journal_outage = rig::journal_totals(&rig::status_json(&opts.binary, config)?);
    let versions: Vec<u64> = site
        .devices
        .iter()
        .map(|d| rig::reported_version(&rig::reported(hub, &d.id)))
        .collect();
    let h1 = hub.counters.snapshot();
    rig::outage(hub, false);
    let t_back = Instant::now();
    eprintln!("hub back after {outage_len:?}; waiting for convergence");

    let mut first_connect = None;
    let mut first_patch = None;
    let mut all_connected = None;
    let mut converged_at: Vec<Option<Duration>> = vec![None; opts.devices];
    let mut last_log = t_back;
    loop {
        alive(child)?;
        let now = Instant::now();
        let since = now - t_back;
        let c = hub.counters.snapshot();
        if first_connect.is_none() && c.connects > h1.connects {
            first_connect = Some(since);
        }
        if first_patch.is_none() && c.reported_patches > h1.reported_patches {
            first_patch = Some(since);
        }
        if all_connected.is_none() && hub.connected_devices().len() >= identities {
            all_connected = Some(since);
        }
        for (d, at) in converged_at.iter_mut().enumerate() {
            if at.is_none()
                && rig::reported_equals(&rig::reported(hub, &site.devices[d].id), &latest[d])
            {
                *at = Some(since);
            }
        }
        store_peak = store_peak.max(rig::store_bytes(&state_dir));
        if converged_at.iter().all(Option::is_some) || since > opts.settle {
            break;
        }
        if now - last_log >= Duration::from_secs(10) {
            last_log = now;
            eprintln!(
                "  {:>5.0} s after the return: {} connected, {} converged",
                since.as_secs_f64(),
                hub.connected_devices().len(),
                converged_at.iter().filter(|c| c.is_some()).count()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovery = t_back.elapsed();
    let p2 = rig::read_proc(pid)?;
    let devices_converged = converged_at.iter().filter(|c| c.is_some()).count();
    let converged = if devices_converged == opts.devices {
        converged_at.iter().flatten().max().copied()
    } else {
        None
    };
    let patches: Vec<u64> = site
        .devices
        .iter()
        .zip(&versions)
        .map(|(d, &v0)| rig::reported_version(&rig::reported(hub, &d.id)).saturating_sub(v0))
        .collect();
    let journal_end = rig::journal_totals(&rig::status_json(&opts.binary, config)?);
    let store_after = rig::store_bytes(&state_dir);
    store_peak = store_peak.max(store_after);
    Ok(Report {
        mode,
        store_before,
        store_during,
        store_after,
        store_peak,
        first_connect,
        first_patch,
        all_connected,
        converged,
        devices_converged,
        patches_per_device: (
            patches.iter().copied().min().unwrap_or(0),
            to_f64(patches.iter().sum()) / to_f64(patches.len().max(1) as u64),
            patches.iter().copied().max().unwrap_or(0),
        ),
        devices_over_one: patches.iter().filter(|&&p| p > 1).count(),
        refused: h1.connects_refused - h0.connects_refused,
        journal: [journal_before, journal_outage, journal_end],
        modbus_per_sec: to_f64(modbus) / outage_len.as_secs_f64(),
        changes_per_sec: to_f64(changes * 2 * opts.devices as u64) / outage_len.as_secs_f64(),
        cpu_outage: cpu(&p0, &p1, outage_len),
        cpu_recovery: cpu(&p1, &p2, recovery),
        vm_hwm_kb: p2.vm_hwm_kb,
        load: rig::loadavg(),
    })
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(
        || "not reached".into(),
        |d| format!("{:.1} s", d.as_secs_f64()),
    )
}

fn kib(bytes: u64) -> String {
    format!("{:.0} KiB", to_f64(bytes) / 1024.0)
}

fn print_report(r: &Report, opts: &Options) {
    println!(
        "outage: {} devices x {REGISTERS} u16 holding registers on {} simulator ptys, poll {:?}, \
         2 registers/device change every {:?}; hub unreachable {:?} (connections dropped, CONNECTs refused); \
         warm-up {:?}; twin_updates_per_sec = {}; {}; load {}",
        opts.devices,
        opts.buses,
        opts.poll,
        opts.change_every,
        opts.outage,
        opts.warmup,
        opts.updates_per_sec,
        r.mode.describe(),
        r.load,
    );
    println!("| figure | value |");
    println!("| --- | ---: |");
    println!(
        "| return → first accepted CONNECT | {} |",
        secs(r.first_connect)
    );
    println!(
        "| return → first reported PATCH (target <= 10 s) | {} |",
        secs(r.first_patch)
    );
    println!(
        "| return → all {} sessions connected | {} |",
        opts.devices + 1,
        secs(r.all_connected)
    );
    println!(
        "| return → every twin equals the latest values | {} ({} of {} devices) |",
        secs(r.converged),
        r.devices_converged,
        opts.devices
    );
    println!(
        "| reported PATCHes per device after the return: min / mean / max | {} / {:.2} / {} |",
        r.patches_per_device.0, r.patches_per_device.1, r.patches_per_device.2
    );
    println!(
        "| devices with more than 1 PATCH after the return | {} |",
        r.devices_over_one
    );
    println!(
        "| store (db + WAL + shm): before / end of outage / after / peak | {} / {} / {} / {} |",
        kib(r.store_before),
        kib(r.store_during.last().map_or(0, |s| s.1)),
        kib(r.store_after),
        kib(r.store_peak)
    );
    let during: Vec<String> = r
        .store_during
        .iter()
        .map(|(t, b)| format!("{t:.0} s: {}", kib(*b)))
        .collect();
    println!("| store during the outage | {} |", during.join(", "));
    println!(
        "| journal entries / dropped: before / end of outage / end | {} / {}; {} / {}; {} / {} |",
        r.journal[0].0,
        r.journal[0].1,
        r.journal[1].0,
        r.journal[1].1,
        r.journal[2].0,
        r.journal[2].1
    );
    println!(
        "| connect attempts refused during the outage | {} |",
        r.refused
    );
    println!(
        "| during the outage: value changes/s, Modbus requests/s | {:.0}, {:.0} |",
        r.changes_per_sec, r.modbus_per_sec
    );
    println!(
        "| agent CPU: outage / recovery | {:.1} % / {:.1} % of one core |",
        r.cpu_outage, r.cpu_recovery
    );
    println!(
        "| agent peak RSS | {:.1} MiB |",
        to_f64(r.vm_hwm_kb) / 1024.0
    );
}
