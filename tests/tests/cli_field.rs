//! The technician's field tools through the real binary: `twinbridge read` / `write` / `scan`
//! refuse a port the running service polls (even as root, which `TIOCEXCL` does not stop),
//! and with the service stopped read and write the simulator's registers with the
//! configuration's types; `twinbridge simulate` serves a pty that `read` can use; a bus with
//! `rs485` on a UART without the kernel's RS-485 mode reports why in the device's link health
//! and the log instead of crashing.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Output, Stdio};

use device_protocols::sim::{RtuSim, SimMap, UnitMap};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;
use twinbridge::store::ReadOnlyStore;
use twinbridge_e2e::{DEADLINE, TestHub, agent_binary, eventually, spawn_ready, terminate};

const GATEWAY: &str = "gw-1";
const DEVICE: &str = "meter-01";

/// 21.5 as an f32 in CDAB order (low word first): 0x41AC0000 -> [0x0000, 0x41AC].
const F32_CDAB_21_5: [u16; 2] = [0x0000, 0x41AC];

async fn twinbridge(args: &[&str]) -> Output {
    Command::new(agent_binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("twinbridge runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A config with one bus on `port` (plus `bus_extra` lines) and the device polling it.
fn write_config(hub: &TestHub, port: &Path, bus_extra: &str) -> std::path::PathBuf {
    let state = hub.dir().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let mut config = hub.config_head(GATEWAY, &state.display().to_string());
    write!(
        config,
        r#"
[[bus]]
name = "line-a"
port = "{port}"
timeout = "100ms"
{bus_extra}

[[device]]
id = "{DEVICE}"
bus = "line-a"
unit = 1
poll = "100ms"
points = [{{ name = "power", table = "holding", address = 0, type = "f32", order = "CDAB" }}]
"#,
        port = port.display()
    )
    .expect("writing to a String");
    let path = hub.dir().join("config.toml");
    std::fs::write(&path, config).expect("config written");
    path
}

fn agent(config: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(agent_binary());
    command
        .args(["run", "--config"])
        .arg(config)
        .env("TWINBRIDGE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one scenario: refused while the service runs, served after
async fn field_tools_refuse_the_service_s_port_and_read_and_write_once_it_is_stopped() {
    let hub = TestHub::start(&[GATEWAY, DEVICE]).await;
    let sim = RtuSim::start(
        hub.dir().join("ttyA"),
        SimMap::new().with_unit(
            1,
            UnitMap::new()
                .with_holding(0, &F32_CDAB_21_5)
                .with_holding(10, &[200]),
        ),
    )
    .expect("line simulated");
    let config = write_config(&hub, sim.path(), "");
    let port = sim.path().display().to_string();

    let running = spawn_ready(agent(&config)).await;
    // The bus has the port open once the unit has been asked something.
    eventually("the bus polls the unit", DEADLINE, || async {
        sim.handle().requests(1) > 0
    })
    .await;
    let expected = format!(
        "port {port} is in use by the running twinbridge service; stop it first: systemctl stop twinbridge\n"
    );
    for args in [
        &[
            "read",
            &port,
            "--unit",
            "1",
            "--address",
            "0",
            "--type",
            "f32",
        ][..],
        &[
            "write",
            &port,
            "--unit",
            "1",
            "--address",
            "10",
            "--type",
            "u16",
            "7",
        ],
        &["scan", &port, "--units", "1-3"],
    ] {
        let out = twinbridge(args).await;
        assert_eq!(out.status.code(), Some(75), "{args:?}: EX_TEMPFAIL");
        assert_eq!(text(&out.stderr), expected, "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    assert_eq!(
        sim.handle().holding(1, 10),
        Some(200),
        "the refused write sent nothing"
    );
    let status = terminate(running).await;
    assert!(status.success(), "clean exit on SIGTERM: {status}");

    // With the service stopped: the simulator's value, decoded like the configured point.
    let read = twinbridge(&[
        "read",
        &port,
        "--unit",
        "1",
        "--address",
        "0",
        "--type",
        "f32",
        "--order",
        "CDAB",
        "--json",
    ])
    .await;
    assert_eq!(read.status.code(), Some(0), "{}", text(&read.stderr));
    let doc: Value = serde_json::from_slice(&read.stdout).expect("read --json prints JSON");
    assert_eq!(doc["values"][0]["value"], 21.5, "{doc}");
    assert_eq!(doc["values"][0]["raw"], serde_json::json!(F32_CDAB_21_5));
    // The same registers in the wrong order are another number: the order is applied.
    let abcd = twinbridge(&[
        "read",
        &port,
        "--unit",
        "1",
        "--address",
        "0",
        "--type",
        "f32",
    ])
    .await;
    assert!(
        !text(&abcd.stdout).contains(": 21.5 "),
        "{}",
        text(&abcd.stdout)
    );

    let write = twinbridge(&[
        "write",
        &port,
        "--unit",
        "1",
        "--address",
        "10",
        "--type",
        "u16",
        "--scale",
        "0.1",
        "23.4",
    ])
    .await;
    assert_eq!(write.status.code(), Some(0), "{}", text(&write.stderr));
    assert_eq!(
        text(&write.stdout),
        "unit 1 holding 10 u16 scale 0.1: wrote 23.4, read back 23.4\n"
    );
    assert_eq!(
        sim.handle().holding(1, 10),
        Some(234),
        "the register changed"
    );

    // A unit that is not there: a bounded wait and EX_UNAVAILABLE.
    let absent = twinbridge(&[
        "read",
        &port,
        "--unit",
        "9",
        "--address",
        "0",
        "--timeout",
        "50ms",
    ])
    .await;
    assert_eq!(absent.status.code(), Some(69), "{}", text(&absent.stderr));
    assert_eq!(text(&absent.stderr), "no answer from unit 9 within 50ms\n");

    // And scan finds the unit, with what it answers. The timeout is the wait for unit 1's
    // answers too: on a loaded machine the simulator can take longer than 50 ms.
    let scan = twinbridge(&["scan", &port, "--units", "1-3", "--timeout", "1s", "--json"]).await;
    assert_eq!(scan.status.code(), Some(0), "{}", text(&scan.stderr));
    let doc: Value = serde_json::from_slice(&scan.stdout).expect("scan --json prints JSON");
    assert_eq!(doc["units"][0]["unit"], 1, "{doc}");
    assert_eq!(doc["units"].as_array().map(Vec::len), Some(1), "{doc}");
    assert_eq!(
        doc["units"][0]["tables"]["holding"]["answer"], "data",
        "{doc}"
    );
    // The unit has no coils at all: exception 02 for coil 0.
    assert_eq!(doc["units"][0]["tables"]["coil"]["exception"], 2, "{doc}");
    assert_eq!(doc["probed"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_prints_its_pty_first_and_the_field_tools_use_it() {
    let mut sim = Command::new(agent_binary())
        .args(["simulate", "--pty", "--units", "1,7"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("twinbridge simulate starts");
    let stdout = sim.stdout.take().expect("stdout is piped");
    let first = tokio::time::timeout(DEADLINE, BufReader::new(stdout).lines().next_line())
        .await
        .expect("simulate prints its port in time")
        .expect("stdout readable")
        .expect("a first line");
    assert!(Path::new(&first).exists(), "{first:?} is the pty");

    let write = twinbridge(&[
        "write",
        &first,
        "--unit",
        "7",
        "--address",
        "3",
        "--type",
        "i32",
        "--",
        "-70000",
    ])
    .await;
    assert_eq!(write.status.code(), Some(0), "{}", text(&write.stderr));
    let read = twinbridge(&[
        "read",
        &first,
        "--unit",
        "7",
        "--address",
        "3",
        "--type",
        "i32",
    ])
    .await;
    assert_eq!(read.status.code(), Some(0), "{}", text(&read.stderr));
    assert_eq!(
        text(&read.stdout),
        "unit 7 holding 3 i32 ABCD: -70000  (raw 0xFFFE 0xEE90)\n"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(sim.id().expect("running")).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM sent");
    let status = tokio::time::timeout(DEADLINE, sim.wait())
        .await
        .expect("simulate stops on SIGTERM")
        .expect("waiting for simulate");
    assert!(status.success(), "{status}");
    assert!(!Path::new(&first).exists(), "the pty link is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs485_on_a_port_without_kernel_support_is_the_device_s_last_error() {
    let hub = TestHub::start(&[GATEWAY, DEVICE]).await;
    let sim = RtuSim::start(
        hub.dir().join("ttyA"),
        SimMap::new().with_unit(1, UnitMap::new().with_holding(0, &F32_CDAB_21_5)),
    )
    .expect("line simulated");
    let config = write_config(
        &hub,
        sim.path(),
        r#"rs485 = { rts_on_send = "high", delay_after_send = "1ms" }"#,
    );
    let log = hub.dir().join("agent.log");
    let mut command = agent(&config);
    command.stderr(std::fs::File::create(&log).expect("log file"));
    let running = spawn_ready(command).await;
    let db = hub.dir().join("state").join("twinbridge.db");
    let wanted = "remove rs485 from this bus";
    eventually(
        "the port's error in the device's link health",
        DEADLINE,
        || async {
            let Ok(store) = ReadOnlyStore::open(&db) else {
                return false;
            };
            let Ok(Some(snapshot)) = store.snapshot(DEVICE) else {
                return false;
            };
            snapshot.sync.local["gateway"]["lastError"]
                .as_str()
                .is_some_and(|e| e.contains(wanted))
        },
    )
    .await;
    let store = ReadOnlyStore::open(&db).expect("store");
    let local = store
        .snapshot(DEVICE)
        .expect("snapshot")
        .expect("device")
        .sync
        .local;
    let last_error = local["gateway"]["lastError"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        last_error.starts_with(&format!(
            "port down: serial port {}: cannot enable RS-485 direction control (TIOCSRS485): this port has no kernel RS-485 mode",
            sim.path().display()
        )),
        "{last_error}"
    );
    assert_eq!(local["gateway"]["online"], false);
    assert_eq!(sim.handle().requests(1), 0, "nothing was sent on the line");
    let status = terminate(running).await;
    assert!(
        status.success(),
        "the agent kept running and stopped cleanly: {status}"
    );
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(
        log.lines()
            .any(|l| l.contains("cannot open port") && l.contains(wanted) && l.contains("line-a")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_stopped_by_ctrl_c_prints_what_it_found_and_exits_130() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = RtuSim::start(
        dir.path().join("ttyA"),
        SimMap::new()
            .with_unit(1, UnitMap::new().with_holding(0, &[1]))
            .with_unit(2, UnitMap::new().with_holding(0, &[2])),
    )
    .expect("line simulated");
    let port = sim.path().display().to_string();
    // 247 ids at 100 ms each would take about 25 s.
    let mut scan = Command::new(agent_binary())
        .args(["scan", &port, "--timeout", "100ms", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("twinbridge scan starts");
    let mut stderr = BufReader::new(scan.stderr.take().expect("stderr is piped")).lines();
    // Not a terminal: a plain progress line every 10 %.
    let progress = tokio::time::timeout(DEADLINE, async {
        loop {
            let line = stderr
                .next_line()
                .await
                .expect("stderr readable")
                .expect("a progress line before the end");
            if line.contains("2 found") {
                return line;
            }
        }
    })
    .await
    .expect("progress within the deadline");
    assert!(progress.starts_with("scan: "), "{progress}");
    assert!(progress.contains("/247 probed"), "{progress}");
    assert!(progress.contains("ETA "), "{progress}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(scan.id().expect("running")).expect("pid")),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT sent");
    let out = tokio::time::timeout(DEADLINE, scan.wait_with_output())
        .await
        .expect("scan stops on SIGINT")
        .expect("scan output");
    assert_eq!(out.status.code(), Some(130));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("the results so far, as JSON");
    assert_eq!(doc["interrupted"], true, "{doc}");
    let units: Vec<&Value> = doc["units"].as_array().expect("units").iter().collect();
    assert_eq!(units.len(), 2, "{doc}");
    assert_eq!(
        (units[0]["unit"].as_u64(), units[1]["unit"].as_u64()),
        (Some(1), Some(2))
    );
    let probed = doc["probed"].as_u64().expect("probed");
    assert!((2..247).contains(&probed), "{doc}");
}
