//! Line devices over a real pty: a "device" writes lines on the master, the reader opens
//! the slave like a serial port.

use std::time::Duration;

use device_protocols::line::{
    self, LineEnding, LineFormat, LineReader, LineSettings, Template, spawn_reader,
};
use device_protocols::pty::PtyMaster;
use device_protocols::serial::{self, SerialSettings};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(5);

fn settings(format: LineFormat, ending: LineEnding) -> LineSettings {
    LineSettings {
        format,
        ending,
        max_line: 256,
    }
}

#[tokio::test]
async fn key_value_device_with_noise_keeps_reading() {
    let mut device = PtyMaster::open().unwrap();
    let port = serial::open(&SerialSettings::new(device.slave_path())).unwrap();
    let mut reader = LineReader::new(port, &settings(LineFormat::KeyValue, LineEnding::Crlf));
    // A good line, split across writes; then junk; a line too long; then a good line.
    device.write_all(b"temp=21.5 ").await.unwrap();
    device.write_all(b"hum=40\r\n").await.unwrap();
    device
        .write_all(b"\xff\xfe garbage\r\nnot-a-pair\r\n")
        .await
        .unwrap();
    device.write_all(&[b'x'; 300]).await.unwrap();
    device
        .write_all(b"\r\n\r\ntemp=22 state=\"door open\"\r\n")
        .await
        .unwrap();

    let first = timeout(DEADLINE, reader.next_reading())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        serde_json::Value::Object(first.fields),
        json!({"temp": 21.5, "hum": 40})
    );
    let second = timeout(DEADLINE, reader.next_reading())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        serde_json::Value::Object(second.fields),
        json!({"temp": 22, "state": "door open"})
    );
    let c = reader.counters();
    assert_eq!((c.readings, c.malformed, c.lines), (2, 3, 5), "{c:?}");

    // Writes go out on the same port as rendered lines.
    let t = Template::parse("SET {name} {value}\r\n").unwrap();
    let mut vars = serde_json::Map::new();
    vars.insert("name".into(), json!("setpoint"));
    vars.insert("value".into(), json!(19.5));
    line::write_command(reader.get_mut(), &t, &vars)
        .await
        .unwrap();
    let mut buf = vec![0u8; "SET setpoint 19.5\r\n".len()];
    timeout(DEADLINE, device.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(buf, b"SET setpoint 19.5\r\n");
}

#[tokio::test]
async fn json_lines_reader_task_reports_readings_counters_and_unplug() {
    let mut device = PtyMaster::open().unwrap();
    let port = serial::open(&SerialSettings::new(device.slave_path())).unwrap();
    let mut task = spawn_reader(port, &settings(LineFormat::JsonLines, LineEnding::Lf), 16);
    device
        .write_all(b"{\"t\": 1}\n[1]\n{bad json\n{\"t\": 2, \"ok\": true}\n")
        .await
        .unwrap();
    for expect in [json!({"t": 1}), json!({"t": 2, "ok": true})] {
        let r = timeout(DEADLINE, task.readings.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(serde_json::Value::Object(r.fields), expect);
    }
    let counters = timeout(
        DEADLINE,
        task.counters
            .wait_for(|c| c.readings == 2 && c.malformed == 2),
    )
    .await
    .expect("counters reach 2 readings, 2 malformed")
    .unwrap()
    .clone();
    assert!(counters.last_error.is_some());

    // Unplug: the task ends (EIO or EOF), it does not hang or panic.
    drop(device);
    let ended = timeout(DEADLINE, task.task)
        .await
        .expect("reader ends on unplug");
    assert!(ended.is_ok(), "task did not panic");
    assert!(task.readings.recv().await.is_none());
}
