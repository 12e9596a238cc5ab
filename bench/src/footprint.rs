//! Footprint of the real agent (issue 10, workload W1): the release `twinbridge run` binary
//! against the in-process hub emulator (MQTT over TLS, a self-signed `localhost` certificate
//! as in the tests' `TestHub`) and an RTU simulator on a pty with N units × 20 holding
//! registers, two of which change every second per unit. The agent's `/proc/<pid>` figures
//! (peak and current RSS, CPU time, bytes written to disk) are sampled over a window after a
//! warm-up; Modbus requests are counted at the simulator, MQTT messages at the emulator.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use device_protocols::point::Table;
use device_protocols::sim::{RtuSim, SimMap, UnitMap};
use hub_emulator::state::{CounterSnapshot, DeviceIdentity};
use hub_emulator::{Config, Emulator, RunningEmulator};
use tokio::time::Instant;

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
    /// The agent binary (`target/release/twinbridge`).
    pub binary: PathBuf,
    /// Where the temporary folder (config, state, pty link) is made; it holds the agent's
    /// SQLite store, so it should be on the disk being measured (not a tmpfs).
    pub dir: Option<PathBuf>,
}

/// One `/proc/<pid>` reading.
#[derive(Debug, Clone, Copy, Default)]
struct ProcSample {
    vm_hwm_kb: u64,
    vm_rss_kb: u64,
    rss_anon_kb: u64,
    rss_file_kb: u64,
    cpu_ticks: u64,
    write_bytes: u64,
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

#[expect(
    clippy::cast_precision_loss,
    reason = "counters of a benchmark window are far below 2^52"
)]
fn to_f64(n: u64) -> f64 {
    n as f64
}

/// Runs the benchmark once and prints its table.
pub fn run(opts: &Options) -> anyhow::Result<Report> {
    if opts.units == 0 || opts.units > 247 {
        bail!(
            "--units must be 1..=247 (Modbus unit ids), got {}",
            opts.units
        );
    }
    if !opts.binary.is_file() {
        bail!(
            "the agent binary {} is missing: build it first with `cargo build --release -p twinbridge` \
             (same CARGO_TARGET_DIR)",
            opts.binary.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime of the hub emulator and simulator")?;
    let report = runtime.block_on(run_async(opts))?;
    print_report(&report, opts);
    Ok(report)
}

fn device_id(unit: u8) -> String {
    format!("dev-{unit:03}")
}

const GATEWAY: &str = "gw-footprint";

async fn run_async(opts: &Options) -> anyhow::Result<Report> {
    let dir = match &opts.dir {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .context("creating the benchmark's temporary folder")?;
    let mut ids: Vec<String> = vec![GATEWAY.to_owned()];
    ids.extend((1..=opts.units).map(device_id));
    let keys: Vec<(String, String)> = ids
        .iter()
        .map(|id| (id.clone(), DeviceIdentity::random_key()))
        .collect();

    let emu = start_hub(dir.path(), &keys).await?;

    let mut map = SimMap::new();
    for unit in 1..=opts.units {
        let values: Vec<u16> = (0..REGISTERS).map(|r| u16::from(unit) * 100 + r).collect();
        map = map.with_unit(unit, UnitMap::new().with_holding(0, &values));
    }
    let sim = RtuSim::start(dir.path().join("ttyBUS"), map)
        .context("starting the RTU simulator on a pty")?;

    let config = write_config(dir.path(), &emu, sim.path(), opts.units, &keys)?;
    let mut child = Command::new(&opts.binary)
        .args(["run", "--config"])
        .arg(&config)
        .env("TWINBRIDGE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", opts.binary.display()))?;
    let result = measure(opts, &mut child, &sim, &emu).await;
    stop(&mut child).await;
    emu.shutdown().await;
    let mut report = result?;
    report.binary_bytes = std::fs::metadata(&opts.binary)
        .with_context(|| format!("reading the size of {}", opts.binary.display()))?
        .len();
    Ok(report)
}

async fn start_hub(dir: &Path, keys: &[(String, String)]) -> anyhow::Result<RunningEmulator> {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .context("generating the hub's self-signed certificate")?;
    std::fs::write(dir.join("ca.pem"), ck.cert.pem()).context("writing the CA file")?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let tls = hub_emulator::tls::server_config(vec![ck.cert.der().clone()], key)
        .context("building the hub's TLS server config")?;
    let mut config = Config::ephemeral();
    config.hostname = "localhost".into();
    config.tls = Some(tls);
    config.ws_bind = None;
    for (id, key) in keys {
        config
            .devices
            .push(DeviceIdentity::new(id.clone(), key.clone(), key.clone()));
    }
    Emulator::start(config)
        .await
        .context("starting the hub emulator")
}

fn write_config(
    dir: &Path,
    emu: &RunningEmulator,
    port: &Path,
    units: u8,
    keys: &[(String, String)],
) -> anyhow::Result<PathBuf> {
    let keys_file = dir.join("keys.toml");
    let mut body = String::new();
    for (id, key) in keys {
        writeln!(body, "{id:?} = {key:?}").context("formatting the keys file")?;
    }
    std::fs::write(&keys_file, body).context("writing the keys file")?;
    std::fs::set_permissions(&keys_file, std::fs::Permissions::from_mode(0o600))
        .context("setting the keys file's mode")?;
    std::fs::create_dir(dir.join("state")).context("creating the state folder")?;

    let mut text = format!(
        r#"[gateway]
id = "{GATEWAY}"
state_dir = "state"

[hub]
host = "localhost"
port = {port_no}
ca_file = "{ca}"
keys_file = "{keys}"

[[bus]]
name = "line"
port = "{tty}"
baud = 115200
timeout = "200ms"
"#,
        port_no = emu.mqtt_addr().port(),
        ca = dir.join("ca.pem").display(),
        keys = keys_file.display(),
        tty = port.display(),
    );
    let points: Vec<String> = (0..REGISTERS)
        .map(|r| {
            format!(r#"  {{ name = "r{r:02}", table = "holding", address = {r}, type = "u16" }},"#)
        })
        .collect();
    for unit in 1..=units {
        write!(
            text,
            "\n[[device]]\nid = \"{id}\"\nbus = \"line\"\nunit = {unit}\npoll = \"1s\"\npoints = [\n{points}\n]\n",
            id = device_id(unit),
            points = points.join("\n"),
        )
        .context("formatting the config")?;
    }
    let path = dir.join("config.toml");
    std::fs::write(&path, text).context("writing the config")?;
    Ok(path)
}

async fn stop(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn read_proc(pid: u32) -> anyhow::Result<ProcSample> {
    let mut s = ProcSample::default();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    for line in status.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let kb = || -> u64 {
            rest.split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        match key {
            "VmHWM" => s.vm_hwm_kb = kb(),
            "VmRSS" => s.vm_rss_kb = kb(),
            "RssAnon" => s.rss_anon_kb = kb(),
            "RssFile" => s.rss_file_kb = kb(),
            _ => {}
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("/proc/{pid}/stat has no ')': {stat}"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // after ')': state(3) ppid(4) ... utime(14) stime(15) → indices 11 and 12 here.
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .with_context(|| format!("/proc/{pid}/stat has too few fields"))?
            .parse()
            .with_context(|| format!("/proc/{pid}/stat field {} is not a number", i + 3))
    };
    s.cpu_ticks = field(11)? + field(12)?;
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .with_context(|| format!("reading /proc/{pid}/io"))?;
    for line in io.lines() {
        if let Some(v) = line.strip_prefix("write_bytes:") {
            s.write_bytes = v
                .trim()
                .parse()
                .with_context(|| format!("/proc/{pid}/io write_bytes: {v}"))?;
        }
    }
    Ok(s)
}

fn modbus_total(sim: &RtuSim, units: u8) -> u64 {
    (1..=units).map(|u| sim.handle().requests(u)).sum()
}

fn diff(a: CounterSnapshot, b: CounterSnapshot) -> CounterSnapshot {
    CounterSnapshot {
        connects: b.connects - a.connects,
        connects_refused: b.connects_refused - a.connects_refused,
        disconnects_by_hub: b.disconnects_by_hub - a.disconnects_by_hub,
        twin_gets: b.twin_gets - a.twin_gets,
        reported_patches: b.reported_patches - a.reported_patches,
        desired_notifications: b.desired_notifications - a.desired_notifications,
        responses_2xx: b.responses_2xx - a.responses_2xx,
        responses_4xx: b.responses_4xx - a.responses_4xx,
        responses_429: b.responses_429 - a.responses_429,
        telemetry: b.telemetry - a.telemetry,
    }
}

async fn measure(
    opts: &Options,
    child: &mut Child,
    sim: &RtuSim,
    emu: &RunningEmulator,
) -> anyhow::Result<Report> {
    let pid = child.id();
    let ticks_per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .context("sysconf(CLK_TCK)")?
        .and_then(|t| u64::try_from(t).ok())
        .filter(|&t| t > 0)
        .context("sysconf(CLK_TCK) gave no positive value")?;
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
                let sample = read_proc(pid)?;
                baseline = Some((
                    now,
                    sample,
                    modbus_total(sim, opts.units),
                    emu.hub().counters.snapshot(),
                ));
            }
            None => {}
            Some((t0, p0, m0, h0)) => {
                let sample = read_proc(pid)?;
                rss_sum += sample.vm_rss_kb;
                rss_n += 1;
                if now.duration_since(*t0) >= opts.window {
                    let cpu_ticks = sample.cpu_ticks - p0.cpu_ticks;
                    return Ok(Report {
                        units: opts.units,
                        window: now.duration_since(*t0),
                        vm_hwm_kb: sample.vm_hwm_kb,
                        rss_mean_kb: rss_sum / rss_n.max(1),
                        rss_end_kb: (sample.vm_rss_kb, sample.rss_anon_kb, sample.rss_file_kb),
                        cpu: Duration::from_secs_f64(to_f64(cpu_ticks) / to_f64(ticks_per_sec)),
                        write_bytes: sample.write_bytes - p0.write_bytes,
                        modbus_requests: modbus_total(sim, opts.units) - m0,
                        hub: diff(*h0, emu.hub().counters.snapshot()),
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
