//! The pty pair and `serial::open` on its slave: real bytes through the kernel tty layer.

use std::time::Duration;

mod common;
use common::until;

use device_protocols::pty::{PtyMaster, VirtualPort};
use device_protocols::serial::{self, Parity, SerialSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(5);

async fn read_exact_within<R: AsyncReadExt + Unpin>(r: &mut R, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    timeout(DEADLINE, r.read_exact(&mut buf))
        .await
        .expect("bytes arrive before the deadline")
        .expect("read succeeds");
    buf
}

#[tokio::test]
async fn bytes_flow_both_ways_for_every_line_setting() {
    for (baud, parity, data_bits, stop_bits) in [
        (9600, Parity::None, 8, 1),
        (9600, Parity::Even, 8, 1),
        (19_200, Parity::Odd, 7, 2),
        (115_200, Parity::None, 8, 2),
        (1200, Parity::Even, 8, 1),
        // Not a standard rate: termios2/BOTHER must still be accepted on a pty.
        (250_000, Parity::None, 8, 1),
    ] {
        let mut master = PtyMaster::open().unwrap();
        let settings = SerialSettings {
            path: master.slave_path().to_owned(),
            baud,
            parity,
            data_bits,
            stop_bits,
            rs485: None,
        };
        let mut port = serial::open(&settings).unwrap_or_else(|e| panic!("{settings}: {e}"));
        // Every byte value passes unchanged (raw mode: no CR/LF mapping, no XON/XOFF, no echo).
        let all: Vec<u8> = (0..=255).collect();
        master.write_all(&all).await.unwrap();
        assert_eq!(read_exact_within(&mut port, 256).await, all, "{settings}");
        port.write_all(&all).await.unwrap();
        assert_eq!(read_exact_within(&mut master, 256).await, all, "{settings}");
    }
}

#[tokio::test]
async fn device_may_start_before_the_client_and_survives_client_reopen() {
    let mut master = PtyMaster::open().unwrap();
    let settings = SerialSettings::new(master.slave_path());
    // Nobody has the slave open: a read waits instead of failing.
    let mut buf = [0u8; 1];
    assert!(
        timeout(Duration::from_millis(50), master.read(&mut buf))
            .await
            .is_err(),
        "read with no client must wait"
    );
    for round in 0..3u8 {
        let mut port = serial::open(&settings).unwrap();
        port.write_all(&[round, 0x55]).await.unwrap();
        assert_eq!(read_exact_within(&mut master, 2).await, [round, 0x55]);
        master.write_all(&[0xAA, round]).await.unwrap();
        assert_eq!(read_exact_within(&mut port, 2).await, [0xAA, round]);
        drop(port);
    }
}

#[tokio::test]
async fn unplug_fails_the_client_and_replug_behind_the_link_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut vport = VirtualPort::new(dir.path().join("ttyBUS")).unwrap();
    let settings = SerialSettings::new(vport.path());
    let mut port = serial::open(&settings).unwrap();
    vport.master().unwrap().write_all(b"hi").await.unwrap();
    assert_eq!(read_exact_within(&mut port, 2).await, b"hi");

    vport.unplug().unwrap();
    // The client's next read ends: an error (EIO) or EOF, never a hang.
    let mut buf = [0u8; 8];
    let outcome = timeout(DEADLINE, port.read(&mut buf))
        .await
        .expect("a read on an unplugged port returns");
    assert!(matches!(outcome, Ok(0) | Err(_)), "{outcome:?}");
    // The stable path is gone while unplugged, like a by-id link.
    let err = serial::open(&settings).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    drop(port);

    vport.replug().unwrap();
    let mut port = serial::open(&settings).unwrap();
    port.write_all(b"back").await.unwrap();
    assert_eq!(read_exact_within(vport.master().unwrap(), 4).await, b"back");
}

#[tokio::test]
async fn bytes_written_before_the_client_opens() {
    let mut master = PtyMaster::open().unwrap();
    // Writing with no client does not fail or block …
    timeout(DEADLINE, master.write_all(b"early\n"))
        .await
        .expect("write with no client returns")
        .unwrap();
    let mut port = serial::open(&SerialSettings::new(master.slave_path())).unwrap();
    master.write_all(b"late\n").await.unwrap();
    // … and the bytes wait in the kernel buffer for the first client (Linux).
    let mut got = Vec::new();
    while !got.ends_with(b"late\n") {
        let mut buf = [0u8; 64];
        let n = timeout(DEADLINE, port.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"early\nlate\n");
}

#[tokio::test]
async fn stale_input_can_be_discarded_and_second_open_is_refused() {
    let mut master = PtyMaster::open().unwrap();
    let settings = SerialSettings::new(master.slave_path());
    let mut port = serial::open(&settings).unwrap();
    master.write_all(b"stale answer").await.unwrap();
    until("stale bytes arrived", || {
        serial::bytes_to_read(&port).unwrap() >= 12
    })
    .await;
    serial::discard_input(&port).unwrap();
    assert_eq!(serial::bytes_to_read(&port).unwrap(), 0);
    master.write_all(b"fresh").await.unwrap();
    assert_eq!(read_exact_within(&mut port, 5).await, b"fresh");

    let err = serial::open(&settings).unwrap_err();
    assert!(err.is_busy(), "{err}");
    assert!(err.to_string().starts_with(&format!(
        "opening serial port {}: ",
        settings.path.display()
    )));
}
