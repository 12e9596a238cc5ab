//! The test bench around the real agent binary, shared by the whole-agent benchmarks
//! (footprint, latency, outage, scale): identities with SAS keys, the in-process hub emulator
//! over MQTT/TLS, a generated config (buses on simulator ptys, devices with N contiguous `u16`
//! holding registers; [`RtuSite`] spreads many devices over several simulator ptys) and the
//! `twinbridge run` child process, launched and torn down together by [`Launched`];
//! `/proc/<pid>` sampling, and what the latency and outage benchmarks read: the hub's twins,
//! an outage switch, the store's size on disk and `twinbridge status --json`.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use device_protocols::point::Table;
use device_protocols::sim::{RtuSim, SimMap, UnitMap};
use hub_emulator::state::{CloseReason, CounterSnapshot, DeviceIdentity, SharedState};
use hub_emulator::{Config, Emulator, RunningEmulator};
use serde_json::Value;
use tokio::time::Instant;

/// The agent binary to measure: `explicit`, or `twinbridge` next to this executable
/// (`$CARGO_TARGET_DIR/release/twinbridge`, built by `cargo build --release -p twinbridge`).
pub fn agent_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let binary = match explicit {
        Some(b) => b,
        None => std::env::current_exe()
            .context("locating this executable")?
            .parent()
            .context("this executable has no folder")?
            .join("twinbridge"),
    };
    if !binary.is_file() {
        bail!(
            "the agent binary {} is missing: build it first with `cargo build --release -p twinbridge` \
             (same CARGO_TARGET_DIR)",
            binary.display()
        );
    }
    Ok(binary)
}

/// A multi-threaded tokio runtime for the emulator, simulators and the bench's own loop.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime of the hub emulator and simulator")
}

/// The benchmark's temporary folder: in `base` (on the disk being measured) or the system's.
pub fn temp_dir(base: Option<&Path>) -> anyhow::Result<tempfile::TempDir> {
    match base {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .context("creating the benchmark's temporary folder")
}

/// Identities with fresh random SAS keys: `(device id, base64 key)`.
fn identities<I: IntoIterator<Item = String>>(ids: I) -> Vec<(String, String)> {
    ids.into_iter()
        .map(|id| (id, DeviceIdentity::random_key()))
        .collect()
}

/// Starts the hub emulator over MQTT/TLS with a self-signed `localhost` certificate (written
/// to `dir/ca.pem` for the agent's `ca_file`) and `keys` registered.
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

/// One `[[bus]]` of the generated config: an RTU line on `port` (a simulator's pty).
#[derive(Debug, Clone)]
pub struct BusSpec {
    /// The bus name.
    pub name: String,
    /// The serial port (pty path).
    pub port: PathBuf,
    /// Baud rate (a pty has no wire time; it sets the t3.5 pacing).
    pub baud: u32,
    /// Request timeout.
    pub timeout: Duration,
}

/// One `[[device]]` of the generated config: `registers` contiguous `u16` holding registers
/// from address 0, points named `r00`, `r01`, ….
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// Identity (twin) id.
    pub id: String,
    /// The bus it is on.
    pub bus: String,
    /// Modbus unit id.
    pub unit: u8,
    /// Poll period.
    pub poll: Duration,
    /// Registers read.
    pub registers: u16,
    /// Extra `key = value` lines for the device (e.g. `history = "every-change"`).
    pub extra: String,
}

/// The generated agent configuration.
#[derive(Debug, Clone)]
pub struct SiteSpec {
    /// The gateway's identity id (must be in the keys).
    pub gateway: String,
    /// Extra lines of the `[hub]` section (e.g. `twin_updates_per_sec = 50.0`).
    pub hub_extra: String,
    /// The buses.
    pub buses: Vec<BusSpec>,
    /// The devices.
    pub devices: Vec<DeviceSpec>,
}

/// Writes `dir/keys.toml` (mode 0600), `dir/state/` and `dir/config.toml` for `site` against
/// `emu`; returns the config's path.
fn write_config(
    dir: &Path,
    emu: &RunningEmulator,
    site: &SiteSpec,
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
    std::fs::create_dir_all(dir.join("state")).context("creating the state folder")?;

    let mut text = format!(
        "[gateway]\nid = {gw:?}\nstate_dir = \"state\"\n\n[hub]\nhost = \"localhost\"\n\
         port = {port_no}\nca_file = {ca:?}\nkeys_file = {keys:?}\n{hub_extra}\n",
        gw = site.gateway,
        port_no = emu.mqtt_addr().port(),
        ca = dir.join("ca.pem").display().to_string(),
        keys = keys_file.display().to_string(),
        hub_extra = site.hub_extra,
    );
    for bus in &site.buses {
        write!(
            text,
            "\n[[bus]]\nname = {name:?}\nport = {port:?}\nbaud = {baud}\ntimeout = \"{timeout}ms\"\n",
            name = bus.name,
            port = bus.port.display().to_string(),
            baud = bus.baud,
            timeout = bus.timeout.as_millis(),
        )
        .context("formatting the config")?;
    }
    for dev in &site.devices {
        let points: Vec<String> = (0..dev.registers)
            .map(|r| {
                format!(
                    r#"  {{ name = "r{r:02}", table = "holding", address = {r}, type = "u16" }},"#
                )
            })
            .collect();
        write!(
            text,
            "\n[[device]]\nid = {id:?}\nbus = {bus:?}\nunit = {unit}\npoll = \"{poll}ms\"\n{extra}\npoints = [\n{points}\n]\n",
            id = dev.id,
            bus = dev.bus,
            unit = dev.unit,
            poll = dev.poll.as_millis(),
            extra = dev.extra,
            points = points.join("\n"),
        )
        .context("formatting the config")?;
    }
    let path = dir.join("config.toml");
    std::fs::write(&path, text).context("writing the config")?;
    Ok(path)
}

/// Starts `binary run --config config` with `TWINBRIDGE_LOG` = `log` and the given extra
/// environment; stdout is discarded, stderr inherited.
fn spawn_agent(
    binary: &Path,
    config: &Path,
    log: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<Child> {
    let mut cmd = Command::new(binary);
    cmd.args(["run", "--config"])
        .arg(config)
        .env("TWINBRIDGE_LOG", log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// SIGTERM, then up to 10 s for the agent to exit (SIGKILL after that). Returns how long it
/// took to exit and its exit status, `None` when it had to be killed.
async fn stop(child: &mut Child) -> (Duration, Option<ExitStatus>) {
    let start = Instant::now();
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let end = start + Duration::from_secs(10);
    while Instant::now() < end {
        if let Ok(Some(status)) = child.try_wait() {
            return (start.elapsed(), Some(status));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    (start.elapsed(), None)
}

/// Raises this process's soft open-files limit to at least `want` (up to the hard limit);
/// the agent started afterwards inherits it. Each hub session is a socket in the agent and
/// another in the in-process emulator. Returns the soft limit now in force.
pub fn raise_fd_limit(want: u64) -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(RLIMIT_NOFILE)")?;
    if soft >= want {
        return Ok(soft);
    }
    let new = want.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, new, hard).context("setrlimit(RLIMIT_NOFILE)")?;
    if new < want {
        bail!(
            "the open-files hard limit {hard} is below the {want} this run needs (raise it: ulimit -Hn)"
        );
    }
    Ok(new)
}

/// A `$NOTIFY_SOCKET` for the agent (as systemd gives it): a unix datagram socket drained by a
/// background task, so the agent's `sd_notify` never blocks on a full queue, which records
/// when the first `READY=1` came.
#[derive(Debug)]
pub struct NotifySocket {
    path: PathBuf,
    ready: tokio::sync::watch::Receiver<Option<Instant>>,
    reader: tokio::task::JoinHandle<()>,
}

impl NotifySocket {
    /// Binds `dir/notify` and starts draining it (needs a tokio runtime).
    pub fn bind(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("notify");
        let socket = tokio::net::UnixDatagram::bind(&path)
            .with_context(|| format!("binding the notify socket {}", path.display()))?;
        let (tx, ready) = tokio::sync::watch::channel(None);
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf).await {
                let message = String::from_utf8_lossy(buf.get(..n).unwrap_or_default());
                if tx.borrow().is_none() && message.lines().any(|l| l == "READY=1") {
                    tx.send_replace(Some(Instant::now()));
                }
            }
        });
        Ok(Self {
            path,
            ready,
            reader,
        })
    }

    /// The value of `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// When the first `READY=1` arrived, if it has.
    pub fn ready_at(&self) -> Option<Instant> {
        *self.ready.borrow()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// How [`Launched::start`] runs the agent.
#[derive(Debug, Clone, Copy)]
pub struct AgentSpec<'a> {
    /// The agent binary.
    pub binary: &'a Path,
    /// Its log filter (`TWINBRIDGE_LOG`).
    pub log: &'a str,
    /// Whether it gets a `NOTIFY_SOCKET` ([`NotifySocket`], which records its `READY=1`).
    pub notify: bool,
}

impl<'a> AgentSpec<'a> {
    /// `binary` as most benchmarks run it: log filter `warn`, no `NOTIFY_SOCKET`.
    pub fn new(binary: &'a Path) -> Self {
        Self {
            binary,
            log: "warn",
            notify: false,
        }
    }
}

/// The agent launched on a [`SiteSpec`] against the hub emulator: the emulator over MQTT/TLS
/// knowing the gateway and every device of the site, the keys and config written in the
/// benchmark's folder, and `twinbridge run` started on them. The folder (a [`temp_dir`]) and
/// the simulators the site's buses point at stay with the caller: they are made before the
/// launch and outlive it. [`Launched::stop`] tears the launch down.
#[derive(Debug)]
pub struct Launched {
    /// The hub emulator.
    pub emu: RunningEmulator,
    /// The agent's config file (its state folder is `state/` next to it).
    pub config: PathBuf,
    /// The agent process.
    pub child: Child,
    /// The agent's `NOTIFY_SOCKET`, when [`AgentSpec::notify`] asked for one.
    pub notify: Option<NotifySocket>,
    /// Just before the agent was spawned.
    pub spawned: Instant,
    /// The hub's counters just before the agent was spawned.
    pub hub_at_spawn: CounterSnapshot,
}

impl Launched {
    /// Makes fresh SAS keys for `site`'s gateway and devices, starts the hub emulator with
    /// them, writes the keys and config into `dir`, binds the notify socket when asked, and
    /// spawns the agent (needs a tokio runtime).
    pub async fn start(dir: &Path, site: &SiteSpec, agent: AgentSpec<'_>) -> anyhow::Result<Self> {
        let keys = identities(
            std::iter::once(site.gateway.clone()).chain(site.devices.iter().map(|d| d.id.clone())),
        );
        let emu = start_hub(dir, &keys).await?;
        let config = write_config(dir, &emu, site, &keys)?;
        let notify = agent.notify.then(|| NotifySocket::bind(dir)).transpose()?;
        let notify_path = notify.as_ref().map(|n| n.path().display().to_string());
        let env: Vec<(&str, &str)> = notify_path
            .iter()
            .map(|path| ("NOTIFY_SOCKET", path.as_str()))
            .collect();
        let hub_at_spawn = emu.hub().counters.snapshot();
        let spawned = Instant::now();
        let child = spawn_agent(agent.binary, &config, agent.log, &env)?;
        Ok(Self {
            emu,
            config,
            child,
            notify,
            spawned,
            hub_at_spawn,
        })
    }

    /// Stops the agent (SIGTERM, SIGKILL after 10 s), then the hub emulator. Returns how long
    /// the agent took to exit and its exit status, `None` when it had to be killed.
    pub async fn stop(mut self) -> (Duration, Option<ExitStatus>) {
        let stopped = stop(&mut self.child).await;
        self.emu.shutdown().await;
        stopped
    }
}

/// One `/proc/<pid>` reading.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// Peak RSS (`VmHWM`), KiB.
    pub vm_hwm_kb: u64,
    /// RSS (`VmRSS`), KiB.
    pub vm_rss_kb: u64,
    /// Anonymous RSS, KiB.
    pub rss_anon_kb: u64,
    /// File-backed RSS, KiB.
    pub rss_file_kb: u64,
    /// User + system CPU time, clock ticks.
    pub cpu_ticks: u64,
    /// Bytes written to disk (`/proc/<pid>/io` `write_bytes`).
    pub write_bytes: u64,
}

/// Reads `/proc/<pid>/{status,stat,io}`.
pub fn read_proc(pid: u32) -> anyhow::Result<ProcSample> {
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

/// Resident KiB of the mappings of `file` (its text, read-only data, relocated data) in
/// `/proc/<pid>/smaps`: the part of `RssFile` that is the program itself rather than libc
/// and the other shared libraries. `file` is matched after canonicalisation, as the kernel
/// shows it.
pub fn mapped_rss_kb(pid: u32, file: &Path) -> anyhow::Result<u64> {
    let file =
        std::fs::canonicalize(file).with_context(|| format!("resolving {}", file.display()))?;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("reading /proc/{pid}/smaps"))?;
    let mut total = 0;
    let mut in_file = false;
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("Rss:") {
            if in_file {
                total += kb
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .with_context(|| format!("/proc/{pid}/smaps: bad Rss line {line:?}"))?;
            }
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|f| f.contains('-'))
        {
            // A mapping header: `start-end perms offset dev inode [path]`.
            in_file = line.split_whitespace().nth(5).map(Path::new) == Some(file.as_path());
        }
    }
    Ok(total)
}

/// Clock ticks per second (`sysconf(CLK_TCK)`), for [`ProcSample::cpu_ticks`].
pub fn ticks_per_sec() -> anyhow::Result<u64> {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .context("sysconf(CLK_TCK)")?
        .and_then(|t| u64::try_from(t).ok())
        .filter(|&t| t > 0)
        .context("sysconf(CLK_TCK) gave no positive value")
}

/// The hub's counters from `a` to `b`.
pub fn diff(a: CounterSnapshot, b: CounterSnapshot) -> CounterSnapshot {
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

/// `n` as `f64` (benchmark counters are far below 2^52).
#[expect(
    clippy::cast_precision_loss,
    reason = "counters of a benchmark window are far below 2^52"
)]
pub fn to_f64(n: u64) -> f64 {
    n as f64
}

/// One device of an [`RtuSite`]: its identity, the simulator (bus) it is on and its unit id.
#[derive(Debug, Clone)]
pub struct SiteDevice {
    /// Identity (twin) id.
    pub id: String,
    /// Index of its simulator (and bus) in [`RtuSite::sims`].
    pub sim: usize,
    /// Modbus unit id on that bus.
    pub unit: u8,
}

/// Many RTU devices spread round-robin over several simulator ptys (one bus each): device
/// `i` is on bus `i % buses`, unit `i / buses + 1`, id `dev-NNN`, with `registers`
/// contiguous `u16` holding registers from address 0.
pub struct RtuSite {
    /// The simulators, one per bus.
    pub sims: Vec<RtuSim>,
    /// The devices, in index order.
    pub devices: Vec<SiteDevice>,
    /// Registers per device.
    pub registers: u16,
}

impl std::fmt::Debug for RtuSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtuSite")
            .field("buses", &self.sims.len())
            .field("devices", &self.devices.len())
            .field("registers", &self.registers)
            .finish()
    }
}

impl RtuSite {
    /// Starts `buses` simulators in `dir` (`ttyBUS0`, …) holding `devices` units;
    /// `initial(device, register)` is each register's starting value.
    pub fn start(
        dir: &Path,
        devices: usize,
        buses: usize,
        registers: u16,
        initial: impl Fn(usize, u16) -> u16,
    ) -> anyhow::Result<Self> {
        // No device, no bus (a baseline run); else 1..=devices buses.
        let buses = if devices == 0 {
            0
        } else {
            buses.clamp(1, devices)
        };
        if devices > 0 && devices.div_ceil(buses) > 247 {
            bail!("{devices} devices on {buses} buses: more than 247 units on a bus");
        }
        let site_devices: Vec<SiteDevice> = (0..devices)
            .map(|i| SiteDevice {
                id: format!("dev-{i:03}"),
                sim: i % buses,
                unit: u8::try_from(i / buses + 1).expect("at most 247 units per bus, checked"),
            })
            .collect();
        let mut sims = Vec::with_capacity(buses);
        for bus in 0..buses {
            let mut map = SimMap::new();
            for (i, d) in site_devices
                .iter()
                .enumerate()
                .filter(|(_, d)| d.sim == bus)
            {
                let values: Vec<u16> = (0..registers).map(|r| initial(i, r)).collect();
                map = map.with_unit(d.unit, UnitMap::new().with_holding(0, &values));
            }
            sims.push(
                RtuSim::start(dir.join(format!("ttyBUS{bus}")), map)
                    .with_context(|| format!("starting the RTU simulator of bus {bus} on a pty"))?,
            );
        }
        Ok(Self {
            sims,
            devices: site_devices,
            registers,
        })
    }

    /// Sets holding registers of device `index` from `address`.
    pub fn set(&self, index: usize, address: u16, values: &[u16]) {
        let d = &self.devices[index];
        self.sims[d.sim]
            .handle()
            .set_values(d.unit, Table::Holding, address, values);
    }

    /// Modbus requests received by all simulators so far.
    pub fn requests(&self) -> u64 {
        self.devices
            .iter()
            .map(|d| self.sims[d.sim].handle().requests(d.unit))
            .sum()
    }

    /// The `[[bus]]` sections: bus `i` is `bus{i}` on simulator `i`'s pty, 115200 baud, the
    /// agent's default 500 ms timeout (a pty has no wire time, but a loaded machine can
    /// delay an answer by a few hundred ms).
    pub fn bus_specs(&self) -> Vec<BusSpec> {
        self.sims
            .iter()
            .enumerate()
            .map(|(i, sim)| BusSpec {
                name: format!("bus{i}"),
                port: sim.path().to_path_buf(),
                baud: 115_200,
                timeout: Duration::from_millis(500),
            })
            .collect()
    }

    /// The `[[device]]` sections, every device polled every `poll`, with `extra` lines.
    pub fn device_specs(&self, poll: Duration, extra: &str) -> Vec<DeviceSpec> {
        self.devices
            .iter()
            .map(|d| DeviceSpec {
                id: d.id.clone(),
                bus: format!("bus{}", d.sim),
                unit: d.unit,
                poll,
                registers: self.registers,
                extra: extra.to_owned(),
            })
            .collect()
    }
}

/// Makes the hub unreachable the way a real outage looks (`on`): every live connection is
/// dropped and CONNECTs are refused (CONNACK 3, server unavailable) until `outage(hub, false)`.
pub fn outage(hub: &SharedState, on: bool) {
    hub.set_faults(|f| {
        f.refuse_until = on.then(|| Instant::now() + Duration::from_hours(24 * 365));
    });
    if on {
        hub.drop_connections(None, CloseReason::Dropped);
    }
}

/// The reported section of `id`'s twin as the hub holds it (`Null` for an unknown id).
pub fn reported(hub: &SharedState, id: &str) -> Value {
    hub.twin_json(id)
        .ok()
        .and_then(|mut t| t.pointer_mut("/properties/reported").map(Value::take))
        .unwrap_or(Value::Null)
}

/// Whether `reported` holds `values` at `r00`, `r01`, ….
pub fn reported_equals(reported: &Value, values: &[u16]) -> bool {
    values.iter().enumerate().all(|(r, &v)| {
        reported
            .get(format!("r{r:02}"))
            .and_then(Value::as_u64)
            .is_some_and(|got| got == u64::from(v))
    })
}

/// The reported `$version` in a reported section (0 when absent).
pub fn reported_version(reported: &Value) -> u64 {
    reported
        .get("$version")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Bytes of the agent's store in `state_dir`: `twinbridge.db` and its `-wal` and `-shm` files.
pub fn store_bytes(state_dir: &Path) -> u64 {
    ["twinbridge.db", "twinbridge.db-wal", "twinbridge.db-shm"]
        .iter()
        .filter_map(|f| std::fs::metadata(state_dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// `binary --config config status --json`, parsed (read-only on the store; safe while the
/// agent runs).
pub fn status_json(binary: &Path, config: &Path) -> anyhow::Result<Value> {
    let out = Command::new(binary)
        .arg("--config")
        .arg(config)
        .args(["status", "--json"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} status --json", binary.display()))?;
    if !out.status.success() {
        bail!(
            "{} status --json failed ({}): {}",
            binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("parsing the output of status --json")
}

/// Sums of the every-change journal figures of `status --json` over every identity:
/// `(journalEntries, journalDropped)`.
pub fn journal_totals(status: &Value) -> (u64, u64) {
    let devices = status
        .get("devices")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let sum = |key: &str| -> u64 {
        devices
            .iter()
            .filter_map(|d| d.pointer(&format!("/sync/{key}")).and_then(Value::as_u64))
            .sum()
    };
    (sum("journalEntries"), sum("journalDropped"))
}

/// The system load averages (`/proc/loadavg`, first three fields), for the report.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "?".into(),
        |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}
