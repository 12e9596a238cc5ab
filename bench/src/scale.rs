//! Scale of the real agent (issue 10): the release `twinbridge run` binary with N Modbus RTU
//! devices on ⌈N / per-bus⌉ buses (one `RtuSim` pty per bus, 20 `u16` holding registers per
//! unit) against the in-process hub emulator over MQTT/TLS: N device identities plus the
//! gateway's, i.e. N + 1 MQTT sessions.
//!
//! Each run measures, from the moment the process is spawned: the time to `READY=1` (on a
//! `NOTIFY_SOCKET` the bench binds), to all N + 1 sessions connected, and to every twin in
//! sync (each device's reported `rNN` equals the simulator's register, the gateway's reported
//! `identities.configured` is N + 1), with the CPU time and peak RSS spent getting there;
//! then a steady-state window (values unchanged: polling, keep-alives) with RSS, CPU per
//! minute and the Modbus and MQTT rates; then SIGTERM → exit. Several device counts in one
//! command give the RSS slope per session.

use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::time::Duration;

use anyhow::{Context as _, bail};
use hub_emulator::RunningEmulator;
use hub_emulator::state::CounterSnapshot;
use tokio::time::Instant;

use crate::cli::AgentFlags;
use crate::rig::{self, AgentSpec, Launched, NotifySocket, ProcSample, RtuSite, SiteSpec, to_f64};

/// Registers per unit (contiguous `u16` holding registers from address 0).
pub const REGISTERS: u16 = 20;

const GATEWAY: &str = "gw-scale";

/// The agent's default pacing (`[hub]` `connects_per_sec`, `twin_reads_per_sec`,
/// `twin_updates_per_sec`; `agent/src/config/mod.rs`).
pub const DEFAULT_PACING: Pacing = Pacing {
    connects_per_sec: 5.0,
    twin_reads_per_sec: 20.0,
    twin_updates_per_sec: 10.0,
};

/// The gateway-wide pacing the agent is configured with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pacing {
    /// MQTT connects per second.
    pub connects_per_sec: f64,
    /// Twin GETs per second.
    pub twin_reads_per_sec: f64,
    /// Reported `PATCH`es per second.
    pub twin_updates_per_sec: f64,
}

impl Pacing {
    /// The least time for `sessions` identities to each connect, GET and PATCH once: the
    /// agent's buckets start full with one second of tokens (`burst = ceil(rate)`) and then
    /// refill at the rate, and every identity needs one token of each, connect first; the
    /// slowest bucket sets the pace (the others refill faster than it hands out work).
    pub fn min_sync_time(&self, sessions: u32) -> Duration {
        let stage = |rate: f64| {
            let burst = rate.ceil().max(1.0);
            ((f64::from(sessions) - burst) / rate).max(0.0)
        };
        Duration::from_secs_f64(
            stage(self.connects_per_sec)
                .max(stage(self.twin_reads_per_sec))
                .max(stage(self.twin_updates_per_sec)),
        )
    }

    /// The `[hub]` lines that set it.
    fn config_lines(&self) -> String {
        format!(
            "connects_per_sec = {:?}\ntwin_reads_per_sec = {:?}\ntwin_updates_per_sec = {:?}\n",
            self.connects_per_sec, self.twin_reads_per_sec, self.twin_updates_per_sec
        )
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Device counts; one agent run each, in this order.
    pub devices: Vec<u32>,
    /// Units per bus (1..=247); buses = ⌈devices / `per_bus`⌉.
    pub per_bus: u8,
    /// Poll period of every device.
    pub poll: Duration,
    /// The agent's hub pacing.
    pub pacing: Pacing,
    /// Steady-state window after everything is in sync.
    pub window: Duration,
    /// Give up a run when the twins are not all in sync by then (counted from the spawn).
    pub sync_timeout: Duration,
    /// The agent binary (`target/release/twinbridge`).
    pub binary: PathBuf,
    /// Where the temporary folders (config, state, ptys, notify socket) are made.
    pub dir: Option<PathBuf>,
    /// The agent's log filter (`TWINBRIDGE_LOG`).
    pub log: String,
}

/// The command line of `twinbridge-bench scale`.
#[derive(Debug, clap::Args)]
#[command(mut_arg("dir", |a| a.help(
    "Folder for the temporary config, state and ptys; default: the system temp folder"
)))]
pub struct Flags {
    /// Device counts, comma separated; one agent run each.
    #[arg(long, value_delimiter = ',', default_value = "500")]
    devices: Vec<u32>,
    /// Units (devices) per RTU bus; buses = devices / per-bus, rounded up.
    #[arg(long, default_value_t = 50)]
    per_bus: u8,
    /// Poll period of every device (e.g. 5s).
    #[arg(long, default_value = "5s", value_parser = crate::cli::duration)]
    poll: Duration,
    /// The agent's `[hub]` `connects_per_sec` (its default).
    #[arg(long, default_value_t = DEFAULT_PACING.connects_per_sec)]
    connects_per_sec: f64,
    /// The agent's `[hub]` `twin_reads_per_sec` (its default).
    #[arg(long, default_value_t = DEFAULT_PACING.twin_reads_per_sec)]
    twin_reads_per_sec: f64,
    /// The agent's `[hub]` `twin_updates_per_sec` (its default).
    #[arg(long, default_value_t = DEFAULT_PACING.twin_updates_per_sec)]
    twin_updates_per_sec: f64,
    /// Steady-state window after all twins are in sync, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Give up a run when the twins are not all in sync this long after the spawn.
    #[arg(long, default_value = "10m", value_parser = crate::cli::duration)]
    sync_timeout: Duration,
    /// `--binary`, `--dir` (with the help text above).
    #[command(flatten)]
    agent: AgentFlags,
    /// The agent's log filter (`TWINBRIDGE_LOG`).
    #[arg(long, default_value = "warn")]
    log: String,
}

impl Flags {
    /// The options these flags select (a window of at least 1 s); fails when the agent binary
    /// is missing.
    pub fn options(self) -> anyhow::Result<Options> {
        let (binary, dir) = self.agent.resolve()?;
        Ok(Options {
            devices: self.devices,
            per_bus: self.per_bus,
            poll: self.poll,
            pacing: Pacing {
                connects_per_sec: self.connects_per_sec,
                twin_reads_per_sec: self.twin_reads_per_sec,
                twin_updates_per_sec: self.twin_updates_per_sec,
            },
            window: Duration::from_secs(self.seconds.max(1)),
            sync_timeout: self.sync_timeout,
            binary,
            dir,
            log: self.log,
        })
    }
}

/// The figures of one run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Devices (device identities).
    pub devices: u32,
    /// RTU buses (simulator ptys).
    pub buses: usize,
    /// Spawn → `READY=1`.
    pub ready: Option<Duration>,
    /// Spawn → all sessions connected at the emulator.
    pub connected: Option<Duration>,
    /// Spawn → every twin in sync.
    pub in_sync: Duration,
    /// CPU time (user + system) from spawn to in sync.
    pub startup_cpu: Duration,
    /// `/proc` at the moment everything was in sync.
    pub at_sync: ProcSample,
    /// Length of the steady-state window.
    pub window: Duration,
    /// CPU time during the window.
    pub window_cpu: Duration,
    /// Mean `VmRSS` over the window, KiB.
    pub rss_mean_kb: u64,
    /// `/proc` at the end of the window (`VmHWM` = the run's peak).
    pub at_end: ProcSample,
    /// Modbus requests answered by the simulators during the window.
    pub modbus_requests: u64,
    /// Hub counters during the window.
    pub hub: CounterSnapshot,
    /// Hub counters from spawn to in sync.
    pub hub_startup: CounterSnapshot,
    /// Device twins showing read errors at the end of the window.
    pub unhealthy_at_end: u32,
    /// SIGTERM → exit.
    pub shutdown: Duration,
    /// Exit status; `None` = still running 10 s after SIGTERM, killed.
    pub exit: Option<ExitStatus>,
}

impl Report {
    /// Sessions (device identities + the gateway's).
    pub fn sessions(&self) -> u32 {
        self.devices + 1
    }

    /// CPU time per minute of steady state.
    pub fn cpu_per_minute(&self) -> Duration {
        Duration::from_secs_f64(self.window_cpu.as_secs_f64() * 60.0 / self.window.as_secs_f64())
    }
}

/// Runs the benchmark for every device count, printing each run's table and the summary.
pub fn run(opts: &Options) -> anyhow::Result<Vec<Report>> {
    if opts.per_bus == 0 || opts.per_bus > 247 {
        bail!(
            "--per-bus must be 1..=247 (Modbus unit ids), got {}",
            opts.per_bus
        );
    }
    if opts.devices.is_empty() {
        bail!("--devices needs at least one count");
    }
    let most = opts.devices.iter().copied().max().unwrap_or(0);
    // Per session: a socket in the agent and one in the emulator (this process); plus ptys,
    // the store, the runtime's own.
    let fds = rig::raise_fd_limit(u64::from(most) * 2 + 512)?;
    let uptime_before = load_average();
    let runtime = rig::runtime()?;
    let mut reports = Vec::new();
    for &devices in &opts.devices {
        let report = runtime.block_on(run_one(opts, devices))?;
        print_report(&report, opts);
        reports.push(report);
    }
    print_summary(&reports, opts, fds, &uptime_before);
    Ok(reports)
}

/// The simulator's value of `register` of the device at `index`: distinct across devices, so
/// a report that lands on the wrong twin is caught.
fn value(index: usize, register: u16) -> u16 {
    u16::try_from((index * usize::from(REGISTERS) + usize::from(register) + 1) % 65_536)
        .expect("reduced modulo 2^16")
}

async fn run_one(opts: &Options, devices: u32) -> anyhow::Result<Report> {
    let dir = rig::temp_dir(opts.dir.as_deref())?;
    let buses = usize::try_from(devices.div_ceil(u32::from(opts.per_bus)))
        .context("bus count out of range")?;
    // Round robin over the buses: at most `per_bus` units each.
    let rtu = RtuSite::start(
        dir.path(),
        usize::try_from(devices).context("device count out of range")?,
        buses,
        REGISTERS,
        value,
    )?;
    let site = SiteSpec {
        gateway: GATEWAY.to_owned(),
        hub_extra: opts.pacing.config_lines(),
        buses: rtu.bus_specs(),
        devices: rtu.device_specs(opts.poll, ""),
    };
    let agent = AgentSpec {
        log: &opts.log,
        notify: true,
        ..AgentSpec::new(&opts.binary)
    };
    let mut launched = Launched::start(dir.path(), &site, agent).await?;
    let run = Run {
        opts,
        devices,
        site: &rtu,
        emu: &launched.emu,
        notify: launched.notify.as_ref(),
        spawned: launched.spawned,
        counters0: launched.hub_at_spawn,
    };
    let result = run.measure(&mut launched.child).await;
    let (shutdown, exit) = launched.stop().await;
    let mut report = result?;
    report.buses = buses;
    report.shutdown = shutdown;
    report.exit = exit;
    Ok(report)
}

struct Run<'a> {
    opts: &'a Options,
    devices: u32,
    site: &'a RtuSite,
    emu: &'a RunningEmulator,
    notify: Option<&'a NotifySocket>,
    spawned: Instant,
    counters0: CounterSnapshot,
}

impl Run<'_> {
    fn modbus_total(&self) -> u64 {
        self.site.requests()
    }

    /// How many twins are in sync: devices whose reported `rNN` all equal the simulator's,
    /// plus the gateway's when it reports every identity configured.
    fn twins_in_sync(&self) -> u32 {
        let mut n = 0;
        for twin in self.emu.hub().all_twins() {
            let Some(id) = twin["deviceId"].as_str() else {
                continue;
            };
            let reported = &twin["properties"]["reported"];
            if id == GATEWAY {
                if reported["identities"]["configured"].as_u64()
                    == Some(u64::from(self.devices) + 1)
                {
                    n += 1;
                }
                continue;
            }
            // `RtuSite` names the device at index `i` `dev-{i}`.
            let Some(index) = id
                .strip_prefix("dev-")
                .and_then(|s| s.parse::<usize>().ok())
            else {
                continue;
            };
            let all = (0..REGISTERS)
                .all(|r| reported[format!("r{r:02}")].as_u64() == Some(u64::from(value(index, r))));
            if all {
                n += 1;
            }
        }
        n
    }

    /// Device twins whose reported `gateway` health object shows read errors (not online, or
    /// `consecutiveErrors` > 0): each such change is a PATCH from the shared budget.
    fn unhealthy_twins(&self) -> u32 {
        let mut n = 0;
        for twin in self.emu.hub().all_twins() {
            let health = &twin["properties"]["reported"]["gateway"];
            if health.is_object()
                && (health["online"].as_bool() != Some(true)
                    || health["consecutiveErrors"].as_u64().unwrap_or(0) > 0)
            {
                n += 1;
            }
        }
        n
    }

    async fn measure(&self, child: &mut Child) -> anyhow::Result<Report> {
        let pid = child.id();
        let ticks = to_f64(rig::ticks_per_sec()?);
        let cpu = |t: u64| Duration::from_secs_f64(to_f64(t) / ticks);
        let sessions = self.devices + 1;
        let deadline = self.spawned + self.opts.sync_timeout;

        // Start-up: poll every 100 ms for connections and sync.
        let mut connected = None;
        let mut last_progress = Instant::now();
        let (in_sync, at_sync) = loop {
            if let Some(status) = child.try_wait().context("waiting on the agent")? {
                bail!("the agent exited early with {status}");
            }
            let now = Instant::now();
            if connected.is_none()
                && self.emu.hub().connected_devices().len() >= usize::try_from(sessions)?
            {
                connected = Some(now - self.spawned);
            }
            let synced = self.twins_in_sync();
            if synced == sessions {
                break (now - self.spawned, rig::read_proc(pid)?);
            }
            if now >= deadline {
                bail!(
                    "{devices} devices: only {synced} of {sessions} twins in sync after {:?}",
                    self.opts.sync_timeout,
                    devices = self.devices
                );
            }
            if now - last_progress >= Duration::from_secs(10) {
                last_progress = now;
                eprintln!(
                    "  {:>5.0} s: {} of {sessions} connected, {synced} in sync",
                    (now - self.spawned).as_secs_f64(),
                    self.emu.hub().connected_devices().len()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let hub_startup = rig::diff(self.counters0, self.emu.hub().counters.snapshot());

        // Steady state: values unchanged, one sample a second.
        let t0 = Instant::now();
        let p0 = rig::read_proc(pid)?;
        let m0 = self.modbus_total();
        let h0 = self.emu.hub().counters.snapshot();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        let mut rss_sum = 0;
        let mut rss_n = 0;
        loop {
            ticker.tick().await;
            if let Some(status) = child.try_wait().context("waiting on the agent")? {
                bail!("the agent exited early with {status}");
            }
            let sample = rig::read_proc(pid)?;
            rss_sum += sample.vm_rss_kb;
            rss_n += 1;
            let window = t0.elapsed();
            if window >= self.opts.window {
                return Ok(Report {
                    devices: self.devices,
                    buses: 0,
                    ready: self
                        .notify
                        .and_then(NotifySocket::ready_at)
                        .map(|t| t - self.spawned),
                    connected,
                    in_sync,
                    startup_cpu: cpu(at_sync.cpu_ticks),
                    at_sync,
                    window,
                    window_cpu: cpu(sample.cpu_ticks - p0.cpu_ticks),
                    rss_mean_kb: rss_sum / rss_n,
                    at_end: sample,
                    modbus_requests: self.modbus_total() - m0,
                    hub: rig::diff(h0, self.emu.hub().counters.snapshot()),
                    hub_startup,
                    unhealthy_at_end: self.unhealthy_twins(),
                    shutdown: Duration::ZERO,
                    exit: None,
                });
            }
        }
    }
}

/// `/proc/loadavg`'s first three fields, for the record.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |e| format!("unknown ({e})"),
        |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}

fn mib(kb: u64) -> f64 {
    to_f64(kb) / 1024.0
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "—".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
}

fn print_report(r: &Report, opts: &Options) {
    let w = r.window.as_secs_f64();
    println!(
        "\nscale: {} devices on {} RTU buses ({} units/bus, {REGISTERS} u16 holding registers each, poll {:?}), {} MQTT/TLS sessions; load {}",
        r.devices,
        r.buses,
        opts.per_bus,
        opts.poll,
        r.sessions(),
        load_average()
    );
    println!("| figure | value |");
    println!("| --- | ---: |");
    println!("| spawn → READY=1 | {} |", secs(r.ready));
    println!(
        "| spawn → all {} sessions connected | {} |",
        r.sessions(),
        secs(r.connected)
    );
    println!(
        "| spawn → all {} twins in sync (expected minimum from pacing) | {:.1} s ({:.1} s) |",
        r.sessions(),
        r.in_sync.as_secs_f64(),
        opts.pacing.min_sync_time(r.sessions()).as_secs_f64()
    );
    println!(
        "| CPU spawn → in sync (user+sys) | {:.2} s |",
        r.startup_cpu.as_secs_f64()
    );
    println!(
        "| hub traffic spawn → in sync: connects / GETs / PATCHes / 429s | {} / {} / {} / {} |",
        r.hub_startup.connects,
        r.hub_startup.twin_gets,
        r.hub_startup.reported_patches,
        r.hub_startup.responses_429
    );
    println!("| VmHWM at in sync | {:.1} MiB |", mib(r.at_sync.vm_hwm_kb));
    println!(
        "| steady state ({w:.0} s): mean VmRSS | {:.1} MiB |",
        mib(r.rss_mean_kb)
    );
    println!(
        "| steady state: VmRSS at the end, anon / file-backed | {:.1} MiB: {:.1} / {:.1} MiB |",
        mib(r.at_end.vm_rss_kb),
        mib(r.at_end.rss_anon_kb),
        mib(r.at_end.rss_file_kb)
    );
    println!(
        "| VmHWM at the end (the run's peak) | {:.1} MiB |",
        mib(r.at_end.vm_hwm_kb)
    );
    println!(
        "| steady state: CPU per minute (user+sys) | {:.2} s ({:.1} % of one core) |",
        r.cpu_per_minute().as_secs_f64(),
        r.window_cpu.as_secs_f64() * 100.0 / w
    );
    println!(
        "| steady state: Modbus requests/s | {:.1} |",
        to_f64(r.modbus_requests) / w
    );
    println!(
        "| steady state: hub connects / PATCHes / GETs per min | {:.1} / {:.1} / {:.1} |",
        to_f64(r.hub.connects) * 60.0 / w,
        to_f64(r.hub.reported_patches) * 60.0 / w,
        to_f64(r.hub.twin_gets) * 60.0 / w
    );
    println!(
        "| device twins showing read errors at the end | {} |",
        r.unhealthy_at_end
    );
    println!(
        "| SIGTERM → exit (status) | {:.2} s ({}) |",
        r.shutdown.as_secs_f64(),
        r.exit
            .map_or_else(|| "killed after 10 s".to_owned(), |s| s.to_string())
    );
}

/// Least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = to_f64(u64::try_from(points.len()).ok()?);
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

fn print_summary(reports: &[Report], opts: &Options, fds: u64, load_before: &str) {
    let p = opts.pacing;
    println!(
        "\nscale summary: pacing connects_per_sec = {}, twin_reads_per_sec = {}, twin_updates_per_sec = {}; \
         poll {:?}; steady window {:?}; open-files limit {fds}; load before {load_before}, after {}",
        p.connects_per_sec,
        p.twin_reads_per_sec,
        p.twin_updates_per_sec,
        opts.poll,
        opts.window,
        load_average()
    );
    println!(
        "| devices | sessions | READY=1 | in sync (min) | VmHWM | mean VmRSS | anon / file | CPU/min | shutdown |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in reports {
        println!(
            "| {} | {} | {} | {:.1} s ({:.1} s) | {:.1} MiB | {:.1} MiB | {:.1} / {:.1} MiB | {:.2} s | {:.2} s |",
            r.devices,
            r.sessions(),
            secs(r.ready),
            r.in_sync.as_secs_f64(),
            p.min_sync_time(r.sessions()).as_secs_f64(),
            mib(r.at_end.vm_hwm_kb),
            mib(r.rss_mean_kb),
            mib(r.at_end.rss_anon_kb),
            mib(r.at_end.rss_file_kb),
            r.cpu_per_minute().as_secs_f64(),
            r.shutdown.as_secs_f64()
        );
    }
    let per = |f: fn(&Report) -> u64| {
        let points: Vec<(f64, f64)> = reports
            .iter()
            .map(|r| (f64::from(r.devices), to_f64(f(r))))
            .collect();
        slope(&points)
    };
    if let (Some(rss), Some(anon), Some(hwm)) = (
        per(|r| r.rss_mean_kb),
        per(|r| r.at_end.rss_anon_kb),
        per(|r| r.at_end.vm_hwm_kb),
    ) {
        println!(
            "per device (session + its bus share), least-squares slope: mean VmRSS {rss:.1} KiB, anon {anon:.1} KiB, VmHWM {hwm:.1} KiB"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_sync_time_is_set_by_the_slowest_bucket() {
        // 501 connects at 5/s with 5 up front: the last one starts 99.2 s in.
        let t = DEFAULT_PACING.min_sync_time(501);
        assert!((t.as_secs_f64() - 99.2).abs() < 1e-9, "{t:?}");
        assert_eq!(DEFAULT_PACING.min_sync_time(1), Duration::ZERO);
    }

    #[test]
    fn devices_have_distinct_values() {
        assert_ne!(value(0, 19), value(1, 0));
        assert_eq!(value(1, 0), 21);
    }

    #[test]
    fn slope_of_a_line() {
        let s = slope(&[(0.0, 10.0), (100.0, 60.0), (500.0, 260.0)]).expect("two x values");
        assert!((s - 0.5).abs() < 1e-9);
        assert!(slope(&[(1.0, 1.0)]).is_none());
    }
}
