//! The `modbus-sim` binary, run as a real process.

use std::process::Stdio;
use std::time::Duration;

use device_protocols::serial::{self, SerialSettings};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;
use tokio_modbus::Slave;
use tokio_modbus::client::{Reader, Writer};
use tokio_modbus::prelude::SlaveContext;

const DEADLINE: Duration = Duration::from_secs(10);
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sim-map.toml");

/// Starts the simulator and returns it with its first stdout line.
async fn start(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_modbus-sim"))
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the modbus-sim binary starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let line = timeout(DEADLINE, BufReader::new(stdout).lines().next_line())
        .await
        .expect("simulator prints where it serves")
        .expect("stdout is readable")
        .expect("a line");
    (child, line)
}

#[tokio::test]
async fn serves_a_map_file_on_a_pty_link() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttySIM");
    let (mut child, line) = start(&[
        "--map",
        FIXTURE,
        "--unit",
        "9",
        "--pty",
        link.to_str().unwrap(),
    ])
    .await;
    assert!(
        line.starts_with(&format!("serving units 1, 7, 9 on {}", link.display())),
        "{line}"
    );
    let port = serial::open(&SerialSettings::new(&link)).unwrap();
    let mut ctx = tokio_modbus::client::rtu::attach_slave(port, Slave(1));
    let regs = timeout(DEADLINE, ctx.read_input_registers(0, 3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(regs, Ok(vec![0x8000, 0x4366, 5000]));
    // (CDAB: words swapped → 0x4366_8000 = 230.5 V.)
    ctx.set_slave(Slave(7));
    timeout(DEADLINE, ctx.write_single_register(100, 480))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let regs = timeout(DEADLINE, ctx.read_holding_registers(100, 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(regs, Ok(vec![480]));
    // The --unit default map: 100 holding registers.
    ctx.set_slave(Slave(9));
    let regs = timeout(DEADLINE, ctx.read_holding_registers(0, 100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(regs.map(|r| r.len()), Ok(100));
    // SIGTERM: a clean exit that removes the link (like unplugging the adapter).
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = timeout(DEADLINE, child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "link left behind"
    );
}

#[tokio::test]
async fn serves_tcp_and_documents_itself() {
    let (mut child, line) = start(&["--map", FIXTURE, "--tcp", "127.0.0.1:0"]).await;
    let addr = line
        .strip_prefix("serving units 1, 7 on Modbus TCP ")
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();
    let mut ctx = tokio_modbus::client::tcp::connect_slave(addr, Slave(7))
        .await
        .unwrap();
    let coils = timeout(DEADLINE, ctx.read_coils(0, 2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(coils, Ok(vec![false, true]));
    child.kill().await.unwrap();

    // A gateway with nothing behind unit 9, and unit 7 refusing everything.
    let (mut child, line) = start(&[
        "--map",
        FIXTURE,
        "--tcp",
        "127.0.0.1:0",
        "--absent-exception",
        "0B",
        "--exception",
        "7:06",
    ])
    .await;
    let addr = line
        .strip_prefix("serving units 1, 7 on Modbus TCP ")
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();
    let mut ctx = tokio_modbus::client::tcp::connect_slave(addr, Slave(9))
        .await
        .unwrap();
    let absent = timeout(DEADLINE, ctx.read_holding_registers(0, 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        absent,
        Err(tokio_modbus::ExceptionCode::GatewayTargetDevice)
    );
    ctx.set_slave(Slave(7));
    let refused = timeout(DEADLINE, ctx.read_coils(0, 2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(refused, Err(tokio_modbus::ExceptionCode::ServerDeviceBusy));
    child.kill().await.unwrap();

    let help = Command::new(env!("CARGO_BIN_EXE_modbus-sim"))
        .arg("--help")
        .output()
        .await
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for needle in [
        "--map",
        "--unit",
        "--pty",
        "--port",
        "--tcp",
        "[[unit.generator]]",
        "--silent",
        "--slow",
        "--garbage",
        "--bad-crc",
        "--exception",
        "--absent-exception",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
}

#[tokio::test]
async fn bad_map_file_fails_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("bad.toml");
    std::fs::write(&map, "[[unit]]\nid = 300\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_modbus-sim"))
        .args(["--map", map.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("bad.toml"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_modbus-sim"))
        .output()
        .await
        .unwrap();
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("no units to simulate")
    );
}

#[tokio::test]
async fn serves_rtu_over_tcp() {
    let (mut child, line) = start(&["--unit", "3", "--rtu-over-tcp", "127.0.0.1:0"]).await;
    let addr: std::net::SocketAddr = line
        .strip_prefix("serving units 3 on RTU over TCP ")
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut ctx = tokio_modbus::client::rtu::attach_slave(stream, Slave(3));
    let regs = timeout(DEADLINE, ctx.read_holding_registers(99, 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(regs, Ok(vec![0]));
    child.kill().await.unwrap();
}

#[tokio::test]
async fn fault_switches_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyFAULTS");
    let (mut child, line) = start(&[
        "--unit",
        "1",
        "--unit",
        "2",
        "--unit",
        "3",
        "--unit",
        "4",
        "--exception",
        "1:holding:5-6:04",
        "--silent",
        "2",
        "--garbage",
        "3",
        "--slow",
        "4=400ms",
        "--unit",
        "5",
        "--bad-crc",
        "5",
        "--pty",
        link.to_str().unwrap(),
    ])
    .await;
    assert!(
        line.starts_with("serving units 1, 2, 3, 4, 5 on "),
        "{line}"
    );
    let open =
        || tokio_modbus::client::rtu::attach(serial::open(&SerialSettings::new(&link)).unwrap());
    let mut ctx = open();
    ctx.set_slave(Slave(1));
    let ok = timeout(DEADLINE, ctx.read_holding_registers(0, 5))
        .await
        .unwrap();
    assert_eq!(ok.unwrap().map(|r| r.len()), Ok(5));
    let refused = timeout(DEADLINE, ctx.read_holding_registers(4, 2))
        .await
        .unwrap();
    assert_eq!(
        refused.unwrap(),
        Err(tokio_modbus::ExceptionCode::ServerDeviceFailure)
    );
    // A silent unit never answers, however long one waits (a bounded wait suffices here).
    ctx.set_slave(Slave(2));
    assert!(
        timeout(Duration::from_millis(300), ctx.read_holding_registers(0, 1))
            .await
            .is_err()
    );
    drop(ctx);
    // Noise instead of an answer: a decode error, not a value.
    let mut ctx = open();
    ctx.set_slave(Slave(3));
    let garbled = timeout(DEADLINE, ctx.read_holding_registers(0, 1))
        .await
        .unwrap();
    assert!(garbled.is_err(), "{garbled:?}");
    drop(ctx);
    // A corrupted answer is never taken for a value (a decode error or no frame at all).
    let mut ctx = open();
    ctx.set_slave(Slave(5));
    match timeout(Duration::from_millis(300), ctx.read_holding_registers(0, 1)).await {
        Err(_) | Ok(Err(_)) => {}
        Ok(Ok(v)) => panic!("corrupted answer accepted: {v:?}"),
    }
    drop(ctx);
    // A slow unit: the answer cannot come before its delay, then it is a normal answer
    // (the same request again: whichever answer is taken, the late or the new one, is right).
    let mut ctx = open();
    ctx.set_slave(Slave(4));
    assert!(
        timeout(Duration::from_millis(100), ctx.read_holding_registers(0, 1))
            .await
            .is_err()
    );
    let late = timeout(DEADLINE, ctx.read_holding_registers(0, 1))
        .await
        .unwrap();
    assert_eq!(late.unwrap(), Ok(vec![0]));
    child.kill().await.unwrap();
}

#[tokio::test]
async fn fault_mistakes_are_named_before_anything_is_served() {
    for (args, needle) in [
        (
            &["--unit", "1", "--silent", "9"][..],
            "unit 9, which is not simulated",
        ),
        (&["--unit", "1", "--slow", "1"][..], "expected UNIT=DELAY"),
        (
            &["--unit", "1", "--exception", "1:holdings:5:04"][..],
            "is not a table",
        ),
        (
            &["--unit", "1", "--exception", "1:holding:5:zz"][..],
            "not an exception code",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_modbus-sim"))
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
