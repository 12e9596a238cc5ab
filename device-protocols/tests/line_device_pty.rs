//! The line-device runtime over real ptys behind a stable symlink (like
//! `/dev/serial/by-id/…`): readings, malformed lines, commands, unplug and replug without a
//! restart. Conditions are awaited with deadlines, never slept for.

use std::path::Path;
use std::time::Duration;

use device_protocols::backoff::BackoffConfig;
use device_protocols::health::PortState;
use device_protocols::line::{
    LineDevice, LineDeviceConfig, LineDeviceHandle, LineEnding, LineFormat, LineHealth,
    LineSettings, LineWriteError, Reading, Template,
};
use device_protocols::pty::{PtyMaster, VirtualPort};
use device_protocols::serial::SerialSettings;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// How long any awaited condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

fn config(path: &Path, format: LineFormat) -> LineDeviceConfig {
    let mut c = LineDeviceConfig::new(
        "thermo",
        SerialSettings::new(path),
        LineSettings {
            format,
            ending: LineEnding::Lf,
            max_line: 256,
        },
    );
    // Short, so that reopening is quick.
    c.reopen_backoff = BackoffConfig::new(Duration::from_millis(5), Duration::from_millis(50));
    c
}

fn by_id(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("usb-Acme_Thermo_0042-if00-port0")
}

async fn health_until(
    dev: &LineDeviceHandle,
    what: &str,
    cond: impl FnMut(&LineHealth) -> bool,
) -> LineHealth {
    let mut rx = dev.watch_health();
    match timeout(DEADLINE, rx.wait_for(cond)).await {
        Ok(Ok(h)) => h.clone(),
        _ => panic!(
            "timed out waiting for: {what}\nlast health: {:#?}",
            dev.health()
        ),
    }
}

async fn next_reading(readings: &mut mpsc::Receiver<Reading>) -> Value {
    let r = timeout(DEADLINE, readings.recv())
        .await
        .expect("a reading in time")
        .expect("device running");
    Value::Object(r.fields)
}

/// Reads exactly `expected.len()` bytes on the device side and compares.
async fn device_receives(master: &mut PtyMaster, expected: &[u8]) {
    let mut buf = vec![0u8; expected.len()];
    timeout(DEADLINE, master.read_exact(&mut buf))
        .await
        .expect("command bytes in time")
        .expect("reading the pty master");
    assert_eq!(
        String::from_utf8_lossy(&buf),
        String::from_utf8_lossy(expected)
    );
}

fn is_open(h: &LineHealth) -> bool {
    h.port == PortState::Open
}

fn down_attempts(h: &LineHealth) -> u32 {
    match &h.port {
        PortState::Down { attempts, .. } => *attempts,
        _ => 0,
    }
}

#[tokio::test]
async fn readings_and_commands_survive_unplug_and_replug_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut port = VirtualPort::new(by_id(&dir)).unwrap();
    let path = port.path().display().to_string();
    let (dev, mut readings) =
        LineDevice::spawn(config(port.path(), LineFormat::JsonLines)).unwrap();
    let set = Template::parse("SET {name} {value}\r\n").unwrap();

    health_until(&dev, "port open", is_open).await;
    port.master()
        .unwrap()
        .write_all(b"{\"t\": 1}\nnot json\n{\"t\": 2}\n")
        .await
        .unwrap();
    assert_eq!(next_reading(&mut readings).await, json!({"t": 1}));
    assert_eq!(next_reading(&mut readings).await, json!({"t": 2}));
    let h = health_until(&dev, "2 readings, 1 malformed", |h| {
        h.counters.readings == 2 && h.counters.malformed == 1
    })
    .await;
    assert!(h.last_reading.is_some());
    assert!(h.counters.last_error.is_some());

    // A command while the port is open reaches the device.
    dev.write_set(&set, "setpoint", &json!(21.5)).await.unwrap();
    device_receives(port.master().unwrap(), b"SET setpoint 21.5\r\n").await;

    // Unplug: reported down, naming the port, and reopening keeps failing (no panic, no exit).
    port.unplug().unwrap();
    let h = health_until(&dev, "port down, reopen attempts failing", |h| {
        down_attempts(h) >= 2
    })
    .await;
    let PortState::Down { error, .. } = &h.port else {
        unreachable!()
    };
    assert!(error.contains(&path), "{error}");
    let loss = h.last_loss.as_deref().expect("the loss is reported");
    assert!(loss.contains(&path), "{loss}");
    assert!(h.open_failures >= 2);
    assert_eq!(h.opens, 1);

    // A command while unplugged fails fast with the typed error.
    let err = timeout(DEADLINE, dev.write_set(&set, "setpoint", &json!(22)))
        .await
        .expect("fails fast")
        .unwrap_err();
    assert!(matches!(err, LineWriteError::PortDown { .. }), "{err:?}");
    assert!(err.to_string().contains(&path), "{err}");

    // Replug: the same runtime reopens the port and readings resume.
    port.replug().unwrap();
    health_until(&dev, "port reopened", |h| is_open(h) && h.opens == 2).await;
    port.master()
        .unwrap()
        .write_all(b"[1, 2]\n{\"t\": 3}\n")
        .await
        .unwrap();
    assert_eq!(next_reading(&mut readings).await, json!({"t": 3}));
    // Counters carry on across the reopen.
    health_until(&dev, "3 readings, 2 malformed", |h| {
        h.counters.readings == 3 && h.counters.malformed == 2
    })
    .await;

    // The same command now succeeds and its bytes arrive on the new master.
    dev.write_set(&set, "setpoint", &json!(22)).await.unwrap();
    device_receives(port.master().unwrap(), b"SET setpoint 22\r\n").await;
    let h = dev.health();
    assert_eq!((h.writes, h.write_errors), (2, 1), "{h:#?}");
    assert_eq!(h.readings_dropped, 0);

    dev.shutdown().await;
    assert_eq!(dev.health().port, PortState::Stopped);
    assert_eq!(
        dev.write_line("SET x 1\r\n").await,
        Err(LineWriteError::Stopped)
    );
}

#[tokio::test]
async fn starts_while_unplugged_then_reads_when_plugged_in() {
    let dir = tempfile::tempdir().unwrap();
    let mut port = VirtualPort::new(by_id(&dir)).unwrap();
    port.unplug().unwrap();
    let (dev, mut readings) = LineDevice::spawn(config(port.path(), LineFormat::KeyValue)).unwrap();

    let h = health_until(&dev, "open attempts failing", |h| down_attempts(h) >= 1).await;
    let PortState::Down { error, .. } = &h.port else {
        unreachable!()
    };
    assert!(
        error.contains("no such file or directory")
            && error.contains(&*port.path().to_string_lossy()),
        "{error}"
    );
    let err = dev.write_line("PING\n").await.unwrap_err();
    assert!(matches!(err, LineWriteError::PortDown { .. }), "{err:?}");

    port.replug().unwrap();
    health_until(&dev, "port open", is_open).await;
    port.master()
        .unwrap()
        .write_all(b"temp=21.5 hum=40\nbroken\n")
        .await
        .unwrap();
    assert_eq!(
        next_reading(&mut readings).await,
        json!({"temp": 21.5, "hum": 40})
    );
    health_until(&dev, "1 malformed", |h| h.counters.malformed == 1).await;
    // A template error is typed and sends nothing.
    let t = Template::parse("SET {name} {value} {unit}\n").unwrap();
    assert!(matches!(
        dev.write_set(&t, "x", &json!(1)).await,
        Err(LineWriteError::Template(_))
    ));
}

#[tokio::test]
async fn slow_consumer_loses_counted_readings_not_commands() {
    let dir = tempfile::tempdir().unwrap();
    let mut port = VirtualPort::new(by_id(&dir)).unwrap();
    let mut cfg = config(port.path(), LineFormat::JsonLines);
    cfg.capacity = 1;
    let (dev, mut readings) = LineDevice::spawn(cfg).unwrap();
    health_until(&dev, "port open", is_open).await;
    let lines = b"{\"n\": 1}\n{\"n\": 2}\n{\"n\": 3}\n{\"n\": 4}\n{\"n\": 5}\n";
    port.master().unwrap().write_all(lines).await.unwrap();
    let h = health_until(&dev, "5 readings", |h| h.counters.readings == 5).await;
    assert_eq!(h.readings_dropped, 4, "{h:#?}");
    // The queue kept the oldest reading; commands still go through meanwhile.
    dev.write_line("ACK\n").await.unwrap();
    device_receives(port.master().unwrap(), b"ACK\n").await;
    assert_eq!(next_reading(&mut readings).await, json!({"n": 1}));
}

#[tokio::test]
async fn a_device_that_does_not_drain_times_the_write_out() {
    let dir = tempfile::tempdir().unwrap();
    let port = VirtualPort::new(by_id(&dir)).unwrap();
    let mut cfg = config(port.path(), LineFormat::JsonLines);
    cfg.write_timeout = Duration::from_millis(200);
    let (dev, _readings) = LineDevice::spawn(cfg).unwrap();
    health_until(&dev, "port open", is_open).await;
    // The master never reads: far more than the pty buffers holds cannot be written.
    let err = timeout(DEADLINE, dev.write_line("x".repeat(4 << 20)))
        .await
        .expect("the write timeout fires")
        .unwrap_err();
    assert!(matches!(err, LineWriteError::Timeout { .. }), "{err:?}");
    assert!(is_open(&dev.health()), "a timeout does not close the port");
}

#[tokio::test]
async fn invalid_settings_are_rejected_at_spawn() {
    let mut cfg = config(Path::new("/dev/ttyUSB-none"), LineFormat::JsonLines);
    cfg.serial.data_bits = 9;
    let err = LineDevice::spawn(cfg).unwrap_err();
    assert!(err.to_string().contains("data bits"), "{err}");
}
