//! The real `twinbridge run` as systemd sees it: `WATCHDOG=1` only while the store writer
//! makes progress (the test blocks it for real with an exclusive SQLite lock), `STATUS=`
//! lines that follow the devices on a pty RS-485 line with the real Modbus simulator, and
//! logging: readable lines on stderr by default, journald's native protocol with `DEVICE=`,
//! `BUS=`, `IDENTITY=` fields under systemd (a real `systemd-journald` in a private mount
//! namespace), and stderr with one notice when journald is unreachable.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use device_protocols::sim::{RtuSim, SimMap, UnitMap};
use serde_json::{Value, json};
use tokio::net::UnixDatagram;
use tokio::time::{Instant, timeout};
use twinbridge_e2e::{DEADLINE, TestHub, agent_binary, eventually, terminate};

const GATEWAY: &str = "gw-1";
const DEVICES: [(&str, u8); 2] = [("meter-01", 1), ("meter-02", 2)];

struct Site {
    hub: TestHub,
    line: RtuSim,
    config: PathBuf,
    db: PathBuf,
    stderr: PathBuf,
}

impl Site {
    async fn start() -> Self {
        let hub = TestHub::start(&[GATEWAY, DEVICES[0].0, DEVICES[1].0]).await;
        let unit = || UnitMap::new().with_input(0, &[215]);
        let line = RtuSim::start(
            hub.dir().join("ttyA"),
            SimMap::new().with_unit(1, unit()).with_unit(2, unit()),
        )
        .expect("line simulated");
        let state = hub.dir().join("state");
        std::fs::create_dir(&state).expect("state dir");
        let mut text = hub.config_head(GATEWAY, "state");
        write!(
            text,
            "\n[[bus]]\nname = \"line-a\"\nport = \"{}\"\nbaud = 38400\ntimeout = \"300ms\"\n",
            line.path().display()
        )
        .expect("writing to a String");
        for (id, unit) in DEVICES {
            write!(
                text,
                "\n[[device]]\nid = \"{id}\"\nbus = \"line-a\"\nunit = {unit}\npoll = \"200ms\"\n\
                 points = [{{ name = \"t\", table = \"input\", address = 0, type = \"u16\" }}]\n"
            )
            .expect("writing to a String");
        }
        let config = hub.dir().join("config.toml");
        std::fs::write(&config, text).expect("config written");
        Self {
            config,
            db: state.join("twinbridge.db"),
            stderr: hub.dir().join("agent.stderr"),
            hub,
            line,
        }
    }

    /// Sets `[gateway] log_level` in the configuration.
    fn set_log_level(&self, level: &str) {
        let text = std::fs::read_to_string(&self.config).expect("config readable");
        let text = text.replacen(
            "state_dir = \"state\"\n",
            &format!("state_dir = \"state\"\nlog_level = \"{level}\"\n"),
            1,
        );
        assert!(text.contains("log_level"), "the head has a state_dir line");
        std::fs::write(&self.config, text).expect("config written");
    }

    /// `twinbridge run` with stderr into [`Site::stderr`] and the given log filter
    /// (`TWINBRIDGE_LOG`; empty: none, the configuration's then applies).
    fn command(&self, log: &str) -> Command {
        let mut command = Command::new(agent_binary());
        command.args(["run", "--config"]).arg(&self.config);
        if log.is_empty() {
            command.env_remove("TWINBRIDGE_LOG");
        } else {
            command.env("TWINBRIDGE_LOG", log);
        }
        command
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.stderr).expect("stderr file"));
        command
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// The test's own `$NOTIFY_SOCKET`: what the agent tells systemd.
struct Notifications {
    socket: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Notifications {
    fn bind() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).expect("notify socket binds");
        Self {
            socket,
            path,
            _dir: dir,
        }
    }

    /// The lines of the next datagram, or `None` after `wait` without one.
    async fn next(&self, wait: Duration) -> Option<Vec<String>> {
        let mut buf = vec![0u8; 4096];
        let n = timeout(wait, self.socket.recv(&mut buf))
            .await
            .ok()?
            .expect("notify socket readable");
        Some(
            String::from_utf8_lossy(&buf[..n])
                .lines()
                .map(str::to_owned)
                .collect(),
        )
    }

    /// Waits (with [`DEADLINE`]) for a line `wanted` accepts; returns it.
    async fn until(&self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        while let Some(wait) = end.checked_duration_since(Instant::now()) {
            let Some(lines) = self.next(wait).await else {
                break;
            };
            if let Some(line) = lines.iter().find(|l| wanted(l)) {
                return line.clone();
            }
            seen.extend(lines);
        }
        panic!("no {what} within {DEADLINE:?}; got {seen:?}");
    }
}

fn spawn(mut command: Command, notify: &Notifications) -> Child {
    command
        .env("NOTIFY_SOCKET", &notify.path)
        .spawn()
        .expect("the agent starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_pings_stop_while_the_store_writer_is_blocked_and_resume_after() {
    const INTERVAL: Duration = Duration::from_secs(1);
    let site = Site::start().await;
    let notify = Notifications::bind();
    let mut command = site.command("info");
    // WATCHDOG_PID unset: the pings are for whoever runs us (systemd's rule).
    command.env("WATCHDOG_USEC", INTERVAL.as_micros().to_string());
    let child = spawn(command, &notify);
    notify.until("READY=1", |l| l == "READY=1").await;
    for _ in 0..3 {
        notify.until("WATCHDOG=1", |l| l == "WATCHDOG=1").await;
    }

    // Block the writer for real: hold SQLite's write lock from another connection, then make
    // the agent write (a desired update is stored as soon as it arrives).
    let db = rusqlite::Connection::open(&site.db).expect("the agent's store opens");
    db.busy_timeout(DEADLINE).expect("busy timeout");
    db.execute_batch("BEGIN EXCLUSIVE")
        .expect("write lock taken");
    let locked = Instant::now();
    site.hub.set_desired(GATEWAY, &json!({"probe": 1}));

    // The agent's busy timeout is 5 s (then the store reports an error): the silence must
    // show well within it. Silence = 3 half-intervals without a ping.
    let silence = INTERVAL * 3 / 2;
    let mut pings_while_locked = 0;
    loop {
        assert!(
            locked.elapsed() < Duration::from_millis(3900),
            "WATCHDOG=1 kept coming while the store writer was blocked \
             ({pings_while_locked} pings)"
        );
        match notify.next(silence).await {
            Some(lines) => {
                if lines.iter().any(|l| l == "WATCHDOG=1") {
                    pings_while_locked += 1;
                }
            }
            None => break,
        }
    }
    db.execute_batch("ROLLBACK").expect("write lock released");
    drop(db);

    notify
        .until("WATCHDOG=1 after the release", |l| l == "WATCHDOG=1")
        .await;
    notify
        .until("another WATCHDOG=1", |l| l == "WATCHDOG=1")
        .await;
    let stderr = site.stderr();
    assert!(
        stderr.contains("the store's writer has not answered"),
        "the agent says why it withheld the pings: {stderr}"
    );
    assert!(
        stderr.contains("watchdog pings resumed"),
        "and when they resume: {stderr}"
    );
    let status = terminate(child).await;
    assert!(status.success(), "clean exit after the stall: {status:?}");
    // The desired update stored once the lock was gone.
    eventually("the desired update is stored", DEADLINE, || async {
        twinbridge::store::ReadOnlyStore::open(&site.db)
            .ok()
            .and_then(|s| s.snapshot(GATEWAY).ok().flatten())
            .is_some_and(|s| s.desired["probe"] == 1)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_devices_online_and_one_fewer_when_a_unit_falls_silent() {
    let site = Site::start().await;
    let notify = Notifications::bind();
    let child = spawn(site.command("info"), &notify);
    notify
        .until("STATUS= with every device online", |l| {
            l == "STATUS=2/2 devices online, hub connected, all in sync"
        })
        .await;

    site.line.handle().set_silent(2, true);
    let line = notify
        .until("STATUS= with meter-02 offline", |l| {
            l.starts_with("STATUS=1/2 devices online")
        })
        .await;
    assert!(line.contains("hub connected"), "{line}");

    site.line.handle().set_silent(2, false);
    notify
        .until("STATUS= with both online again", |l| {
            l.starts_with("STATUS=2/2 devices online")
        })
        .await;

    // A hub outage: every identity's link down, then back.
    site.hub.outage(true);
    notify
        .until("STATUS= with the hub down", |l| {
            l.starts_with("STATUS=2/2 devices online, hub disconnected")
        })
        .await;
    site.hub.outage(false);
    notify
        .until("STATUS= with the hub back", |l| {
            l.starts_with("STATUS=2/2 devices online, hub connected")
        })
        .await;
    let status = terminate(child).await;
    assert!(status.success(), "{status:?}");

    // The state changes were logged once each (a state is never logged twice in a row: a
    // loaded machine may add a real flap of its own), readable, with the device and bus named.
    let stderr = site.stderr();
    let states = |id: &str, words: [&'static str; 2]| states_of(&stderr, id, words);
    // (A first poll that times out on a loaded machine may log "offline" before "online":
    // the order asserted is the one the test drives, as a subsequence.)
    for (id, _) in DEVICES {
        let seen = states(id, ["device online", "device offline"]);
        assert!(seen.contains(&"device online"), "{id}: {stderr}");
        assert!(seen.windows(2).all(|w| w[0] != w[1]), "{id}: {seen:?}");
    }
    let meter_02 = states("meter-02", ["device online", "device offline"]);
    assert!(
        is_subsequence(
            &["device online", "device offline", "device online"],
            &meter_02
        ),
        "online, offline, online again: {meter_02:?}"
    );
    let offline = stderr
        .lines()
        .find(|l| l.contains("device offline") && l.contains("meter-02"))
        .expect("counted above");
    assert!(
        offline.contains("WARN") && offline.contains("line-a"),
        "{offline}"
    );
    for id in [GATEWAY, DEVICES[0].0, DEVICES[1].0] {
        let seen = states(id, ["hub connected", "hub disconnected"]);
        assert!(seen.windows(2).all(|w| w[0] != w[1]), "{id}: {seen:?}");
        assert!(
            is_subsequence(
                &["hub connected", "hub disconnected", "hub connected"],
                &seen
            ),
            "{id}: connected, disconnected by the outage, back: {seen:?}"
        );
    }
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour codes in a file: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_log_level_applies_when_the_environment_sets_none() {
    let site = Site::start().await;
    site.set_log_level("warn");
    let notify = Notifications::bind();
    let child = spawn(site.command(""), &notify);
    notify
        .until("STATUS= with every device online", |l| {
            l.starts_with("STATUS=2/2 devices online")
        })
        .await;
    site.line.handle().set_silent(1, true);
    notify
        .until("STATUS= with meter-01 offline", |l| {
            l.starts_with("STATUS=1/2 devices online")
        })
        .await;
    eventually("the warning on stderr", DEADLINE, || async {
        site.stderr().contains("device offline")
    })
    .await;
    let status = terminate(child).await;
    assert!(status.success(), "{status:?}");
    let stderr = site.stderr();
    assert!(
        !stderr.contains("device online") && !stderr.contains(" INFO "),
        "info lines filtered out by log_level = \"warn\": {stderr}"
    );
}

/// Whether this machine can run a private journald: root, `unshare`, `systemd-journald`.
fn journald_available() -> Option<PathBuf> {
    let journald = [
        "/lib/systemd/systemd-journald",
        "/usr/lib/systemd/systemd-journald",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())?;
    // /proc/self belongs to the process's effective uid.
    let root = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata("/proc/self").expect("/proc is mounted"),
    ) == 0;
    let tools = ["unshare", "journalctl"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    (root && tools).then_some(journald)
}

/// The agent command run in a private mount namespace with a tmpfs on `/run` (so the host's
/// journald, if any, is out of reach), stderr set up as systemd does it (`JOURNAL_STREAM`
/// naming stderr's device and inode), and — with `journald` — a real `systemd-journald` of
/// its own started there first (its pid written to `pid_file`).
fn in_namespace(agent: &Command, journald: Option<&Path>, pid_file: &Path) -> Command {
    let mut script = String::from(
        "set -e\nmount -t tmpfs tmpfs /run\nmount -t tmpfs tmpfs /var/log\n\
         mkdir -p /run/systemd/journal\n",
    );
    if let Some(journald) = journald {
        write!(
            script,
            "{} & echo $! > {}\n\
             i=0; while [ ! -S /run/systemd/journal/socket ] && [ $i -lt 300 ]; do \
             sleep 0.1; i=$((i+1)); done\n",
            journald.display(),
            pid_file.display()
        )
        .expect("writing to a String");
    }
    script.push_str("export JOURNAL_STREAM=$(stat -L -c '%d:%i' /proc/self/fd/2)\nexec \"$@\"\n");
    let mut command = Command::new("unshare");
    command
        .args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"])
        .arg(agent.get_program())
        .args(agent.get_args());
    for (key, value) in agent.get_envs() {
        match value {
            Some(v) => command.env(key, v),
            None => command.env_remove(key),
        };
    }
    command
}

/// Entries of the private journal matching `filter` (`KEY=value`), as JSON objects.
fn journal(journald_pid: &str, filter: &str) -> Vec<Value> {
    // The namespace's /run, seen through the journald process.
    let directory = format!("/proc/{journald_pid}/root/run/log/journal");
    let out = Command::new("journalctl")
        .args([
            "--directory",
            &directory,
            "--no-pager",
            "-o",
            "json",
            filter,
        ])
        .output()
        .expect("journalctl runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_lines_go_to_journald_with_device_bus_and_identity_fields() {
    let Some(journald) = journald_available() else {
        eprintln!("skipped: needs root, unshare, journalctl and systemd-journald");
        return;
    };
    let site = Site::start().await;
    let notify = Notifications::bind();
    let pid_file = site.hub.dir().join("journald.pid");
    // The session's debug lines too: they carry IDENTITY= from the session's span.
    let agent = site.command("info,twinbridge::hub=debug");
    let command = in_namespace(&agent, Some(&journald), &pid_file);
    let child = command_with_stderr(command, &site, &notify);
    notify
        .until("STATUS= with every device online", |l| {
            l.starts_with("STATUS=2/2 devices online")
        })
        .await;
    let journald_pid = std::fs::read_to_string(&pid_file)
        .expect("journald's pid")
        .trim()
        .to_owned();

    eventually("meter-01 online in the journal", DEADLINE, || async {
        journal(&journald_pid, "DEVICE=meter-01")
            .iter()
            .any(|e| e["MESSAGE"] == "device online")
    })
    .await;
    let entries = journal(&journald_pid, "DEVICE=meter-01");
    let online = entries
        .iter()
        .find(|e| e["MESSAGE"] == "device online")
        .expect("found above");
    assert_eq!(online["SYSLOG_IDENTIFIER"], "twinbridge");
    assert_eq!(online["BUS"], "line-a");
    assert_eq!(online["PRIORITY"], "5", "info is notice");
    eventually(
        "the gateway's hub link in the journal",
        DEADLINE,
        || async {
            journal(&journald_pid, &format!("IDENTITY={GATEWAY}"))
                .iter()
                .any(|e| e["MESSAGE"] == "hub connected")
        },
    )
    .await;
    eventually(
        "a session line of meter-02 in the journal",
        DEADLINE,
        || async {
            journal(&journald_pid, "IDENTITY=meter-02").iter().any(|e| {
                e["MESSAGE"] == "connected to the hub"
                    && e["SPAN_NAME"] == "hub"
                    && e["DEVICE"] == "meter-02"
                    && e["PRIORITY"] == "6"
            })
        },
    )
    .await;

    let status = terminate(child).await;
    assert!(status.success(), "{status:?}");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(journald_pid.parse().expect("a pid")),
        nix::sys::signal::Signal::SIGTERM,
    );
    let stderr = site.stderr();
    assert!(
        !stderr.contains("device online"),
        "nothing went to stderr: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_without_journald_lines_fall_back_to_stderr_and_say_so_once() {
    if journald_available().is_none() {
        eprintln!("skipped: needs root, unshare (and journalctl, systemd-journald)");
        return;
    }
    let site = Site::start().await;
    let notify = Notifications::bind();
    let pid_file = site.hub.dir().join("unused.pid");
    let command = in_namespace(&site.command("info"), None, &pid_file);
    let child = command_with_stderr(command, &site, &notify);
    notify
        .until("STATUS= with every device online", |l| {
            l.starts_with("STATUS=2/2 devices online")
        })
        .await;
    eventually("device lines on stderr", DEADLINE, || async {
        site.stderr().contains("device online")
    })
    .await;
    let status = terminate(child).await;
    assert!(status.success(), "{status:?}");
    let stderr = site.stderr();
    assert_eq!(
        stderr.matches("journald is not reachable").count(),
        1,
        "{stderr}"
    );
}

/// Spawns `command` with stderr into [`Site::stderr`] and the test's notify socket.
fn command_with_stderr(mut command: Command, site: &Site, notify: &Notifications) -> Child {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&site.stderr).expect("stderr file"));
    spawn(command, notify)
}

/// Whether `want` occurs in `seen` in order (not necessarily adjacent).
fn is_subsequence(want: &[&str], seen: &[&str]) -> bool {
    let mut rest = seen.iter();
    want.iter().all(|w| rest.any(|s| s == w))
}

/// The state words (`words`) of the log lines about `id`, in order.
fn states_of(log: &str, id: &str, words: [&'static str; 2]) -> Vec<&'static str> {
    log.lines()
        .filter(|l| l.contains(&format!("\"{id}\"")))
        .filter_map(|l| words.into_iter().find(|w| l.contains(w)))
        .collect()
}
