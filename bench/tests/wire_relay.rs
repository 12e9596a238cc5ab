//! The wire relay on real ptys: bytes cross intact both ways, frames are logged with the wire
//! time of their bytes, and nothing is delivered before its stop bit would have ended.
#![allow(clippy::disallowed_types)] // the relay's frame log is in std `Instant`s

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use device_protocols::serial::SerialSettings;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::stat::Mode;
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
use twinbridge_bench::wire::{Direction, WireConfig, WireRelay};

const DEADLINE: Duration = Duration::from_secs(10);

fn raw(fd: &OwnedFd) {
    let mut t = tcgetattr(fd).expect("tcgetattr");
    cfmakeraw(&mut t);
    tcsetattr(fd, SetArg::TCSANOW, &t).expect("tcsetattr");
}

/// Reads exactly `n` bytes from `fd`, with a deadline.
fn read_n(fd: &OwnedFd, n: usize) -> Vec<u8> {
    let start = Instant::now();
    let mut out = Vec::new();
    while out.len() < n {
        assert!(start.elapsed() < DEADLINE, "only {out:?} arrived");
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::from(100u16)).expect("poll");
        let mut buf = [0u8; 256];
        match nix::unistd::read(fd.as_fd(), &mut buf) {
            Ok(k) => out.extend_from_slice(&buf[..k]),
            Err(nix::errno::Errno::EAGAIN) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    out
}

fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::park_timeout(Duration::from_millis(5));
    }
}

#[test]
fn bytes_cross_both_ways_with_wire_time_and_are_logged_as_frames() {
    let dir = tempfile::tempdir().unwrap();
    // The "device": a pty whose slave the relay opens as its far side.
    let device = nix::pty::openpty(None, None).unwrap();
    raw(&device.slave);
    let far_path = nix::unistd::ttyname(&device.slave).unwrap();
    let settings = {
        let mut s = SerialSettings::new("/dev/null");
        s.baud = 9600;
        s
    };
    let config = WireConfig::for_serial(&settings);
    let relay = WireRelay::start(dir.path().join("line"), &far_path, config).unwrap();
    // The "bus": opens the relay's stable path like a serial port.
    let bus = nix::fcntl::open(
        relay.path(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .unwrap();
    raw(&bus);

    let request: Vec<u8> = (1..=8).collect();
    nix::unistd::write(&bus, &request).unwrap();
    assert_eq!(read_n(&device.master, request.len()), request);
    let answer: Vec<u8> = (100..120).collect();
    nix::unistd::write(&device.master, &answer).unwrap();
    assert_eq!(read_n(&bus, answer.len()), answer);

    until("both frames logged", || relay.frames().len() == 2);
    let frames = relay.frames();
    let req = frames
        .iter()
        .find(|f| f.dir == Direction::NearToFar)
        .unwrap();
    let ans = frames
        .iter()
        .find(|f| f.dir == Direction::FarToNear)
        .unwrap();
    assert_eq!((req.bytes, ans.bytes), (8, 20));
    // A frame's bytes follow each other on the wire: n character times from its start.
    assert_eq!(req.end - req.start, config.char_time * 8);
    assert_eq!(ans.end - ans.start, config.char_time * 20);
    // Nothing is delivered before its wire time is over, and the answer follows the request.
    assert!(req.delivered >= req.end && ans.delivered >= ans.end);
    assert!(ans.start >= req.delivered);
    let pacing = relay.pacing();
    assert_eq!(pacing.byte_ns.len(), 28);
    assert_eq!(pacing.frame_end_ns.len(), 2);
    relay.stop().unwrap();
}

#[test]
fn the_far_side_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let err = WireRelay::start(
        dir.path().join("line"),
        &dir.path().join("no-such-tty"),
        WireConfig::for_serial(&SerialSettings::new("/dev/null")),
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("opening the far side"),
        "{err:#}"
    );
}
