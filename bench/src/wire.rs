//! A serial line with wire time: a relay between two pseudo-terminals that delivers every
//! byte when it would have finished arriving on a real line at the configured baud rate.
//!
//! A pty moves bytes instantly, so a bus over a bare pty has no wire time and a benchmark of
//! line efficiency would measure nothing real. [`WireRelay`] sits between two pty pairs:
//!
//! ```text
//! bus ──opens──▶ near slave (stable symlink) ══ near master ◀─relay─▶ far slave ══ far master ◀── device
//! ```
//!
//! The relay owns the near pair (the client opens [`WireRelay::path`], like a USB adapter's
//! `/dev/serial/by-id/…` link) and opens the far side as a client itself (e.g. the simulator's
//! pty path), or connects to it over TCP ([`WireRelay::start_tcp`], a device stand-in without
//! a pty: see [`crate::device`]). Each direction is a half of the wire: a byte read at time `a` starts on the wire
//! at `max(a, end of the previous byte)` and is delivered at `start + char_time` (the end of
//! its stop bit), so a frame of `n` bytes written at once arrives `n` character times later,
//! byte by byte. The schedule is absolute, so a late wake-up never accumulates.
//!
//! Precision: each direction runs on its own OS thread (independent of any tokio runtime),
//! sleeps on a `timerfd` (a high-resolution timer, no 1 ms tick) until shortly before a byte
//! is due, and spins the last stretch before the *last* byte queued (the end of a frame, the
//! instant that gap timing is measured from). Bytes within a frame are delivered on the
//! timer's wake-up. Every delivery's lateness is recorded ([`WireRelay::pacing`]), so a
//! benchmark reports how exact its own wire was.
//!
//! Frames are told apart by silence: a byte that starts more than `frame_silence` (t1.5 by
//! default) after the previous byte of the same direction ended begins a new frame. Every
//! frame is logged with the instants a bus or device would care about ([`Frame`]).
//!
//! The relay runs on OS threads against the real monotonic clock (`std::time::Instant`, the
//! clock `timerfd` counts in), never tokio's pausable one: a wire must not stop with a test's
//! clock.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use device_protocols::serial::SerialSettings;
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::stat::Mode;
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

/// How the wire behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireConfig {
    /// Time one character takes on the wire (start + data + parity + stop bits / baud).
    pub char_time: Duration,
    /// Silence within one direction that ends a frame (for the frame log only).
    pub frame_silence: Duration,
    /// How long before the end of a frame the relay stops sleeping and spins, so that the
    /// last byte is delivered on time despite the wake-up latency of the timer.
    pub spin: Duration,
}

impl WireConfig {
    /// The wire of `settings` (baud rate, bits per character), frames split at t1.5, a
    /// 150 µs spin before each frame end.
    pub fn for_serial(settings: &SerialSettings) -> Self {
        Self {
            char_time: settings.char_time(),
            frame_silence: device_protocols::serial::inter_char_timeout(
                settings.baud,
                settings.bits_per_char(),
            ),
            spin: Duration::from_micros(150),
        }
    }
}

/// Which way bytes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client of the near side (the bus) to the far side (the device): requests.
    NearToFar,
    /// From the far side (the device) to the near side's client (the bus): answers.
    FarToNear,
}

/// One frame as it crossed the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Direction.
    pub dir: Direction,
    /// When the relay read the first byte from the sender (the sender's write, plus the
    /// relay's wake-up latency): the first byte starts on the wire then.
    pub start: Instant,
    /// When the last byte's stop bit ended on the ideal wire.
    pub end: Instant,
    /// When the relay actually handed the last byte to the receiver (≥ `end`).
    pub delivered: Instant,
    /// Bytes in the frame.
    pub bytes: usize,
}

/// Lateness of deliveries against the ideal wire, in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pacing {
    /// Lateness of the last byte of each frame (what gap and turnaround timing depend on).
    pub frame_end_ns: Vec<u64>,
    /// Lateness of every byte.
    pub byte_ns: Vec<u64>,
}

#[derive(Debug, Default)]
struct Log {
    frames: Vec<Frame>,
    pacing: Pacing,
}

/// A running relay; stops (and removes its symlink) when dropped.
#[derive(Debug)]
pub struct WireRelay {
    link: PathBuf,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Log>>,
    threads: Vec<JoinHandle<anyhow::Result<()>>>,
    /// Kept open so that the near master never reads `EIO` while the client has the port
    /// closed (between reopens); the relay never reads from it.
    _near_slave: OwnedFd,
}

impl WireRelay {
    /// Opens a pty pair for the client behind the symlink `link`, opens `far` (a tty path,
    /// e.g. the simulator's pty) and starts relaying with wire time.
    pub fn start(link: impl Into<PathBuf>, far: &Path, config: WireConfig) -> anyhow::Result<Self> {
        let far_fd = nix::fcntl::open(
            far,
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .with_context(|| format!("wire relay: opening the far side {}", far.display()))?;
        make_raw(&far_fd).with_context(|| format!("wire relay: raw mode on {}", far.display()))?;
        Self::start_on(link.into(), &far_fd, false, config)
    }

    /// Like [`start`](Self::start), with the far side a TCP connection to `far` (a device
    /// stand-in speaking RTU frames over TCP, see [`crate::device`]). Its end of stream is an
    /// error of the relay.
    pub fn start_tcp(
        link: impl Into<PathBuf>,
        far: SocketAddr,
        config: WireConfig,
    ) -> anyhow::Result<Self> {
        let stream = std::net::TcpStream::connect(far)
            .with_context(|| format!("wire relay: connecting to {far}"))?;
        // The relay writes byte by byte as each one's wire time ends: Nagle's algorithm would
        // hold every byte after the first back until the previous one is acknowledged.
        stream
            .set_nodelay(true)
            .context("wire relay: TCP_NODELAY")?;
        stream
            .set_nonblocking(true)
            .context("wire relay: non-blocking socket")?;
        Self::start_on(link.into(), &OwnedFd::from(stream), true, config)
    }

    fn start_on(
        link: PathBuf,
        far_fd: &OwnedFd,
        far_is_stream: bool,
        config: WireConfig,
    ) -> anyhow::Result<Self> {
        if config.char_time.is_zero() {
            bail!("wire relay: the character time must be greater than zero");
        }
        let pair = nix::pty::openpty(None, None).context("wire relay: openpty")?;
        make_raw(&pair.slave).context("wire relay: raw mode on the near pty")?;
        let slave_path =
            nix::unistd::ttyname(&pair.slave).context("wire relay: ttyname of the near pty")?;
        set_nonblocking(&pair.master).context("wire relay: near master")?;
        match std::fs::remove_file(&link) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("wire relay: removing {}", link.display()));
            }
            _ => {}
        }
        std::os::unix::fs::symlink(&slave_path, &link).with_context(|| {
            format!(
                "wire relay: linking {} to {}",
                link.display(),
                slave_path.display()
            )
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Log::default()));
        let mut threads = Vec::new();
        for (dir, src, dst, eof_is_end) in [
            (Direction::NearToFar, &pair.master, far_fd, false),
            (Direction::FarToNear, far_fd, &pair.master, far_is_stream),
        ] {
            let half = Half {
                dir,
                src: src.try_clone().context("wire relay: dup")?,
                dst: dst.try_clone().context("wire relay: dup")?,
                eof_is_end,
                timer: TimerFd::new(
                    ClockId::CLOCK_MONOTONIC,
                    TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
                )
                .context("wire relay: timerfd_create")?,
                config,
                stop: Arc::clone(&stop),
                log: Arc::clone(&log),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("wire-{dir:?}"))
                    .spawn(move || half.run())
                    .context("wire relay: spawning a thread")?,
            );
        }
        Ok(Self {
            link,
            stop,
            log,
            threads,
            _near_slave: pair.slave,
        })
    }

    /// The path the client opens (a symlink to the near pty's slave).
    pub fn path(&self) -> &Path {
        &self.link
    }

    /// The frames completed so far, in the order they ended per direction (merge by
    /// [`Frame::start`] to get the line's order).
    pub fn frames(&self) -> Vec<Frame> {
        self.lock().frames.clone()
    }

    /// Forgets the frames and pacing samples recorded so far (e.g. after a warm-up).
    pub fn reset(&self) {
        let mut log = self.lock();
        log.frames.clear();
        log.pacing = Pacing::default();
    }

    /// The lateness samples recorded so far.
    pub fn pacing(&self) -> Pacing {
        self.lock().pacing.clone()
    }

    /// Stops the relay threads and reports the first error one of them ended with.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let mut first = Ok(());
        for t in self.threads.drain(..) {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("wire relay thread panicked")));
            if first.is_ok() {
                first = r;
            }
        }
        let _ = std::fs::remove_file(&self.link);
        first
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for WireRelay {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn make_raw(fd: &OwnedFd) -> nix::Result<()> {
    let mut t = tcgetattr(fd)?;
    cfmakeraw(&mut t);
    tcsetattr(fd, SetArg::TCSANOW, &t)
}

fn set_nonblocking(fd: &OwnedFd) -> nix::Result<()> {
    let flags = fcntl(fd, FcntlArg::F_GETFL)?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map(drop)
}

/// A byte on its way.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    byte: u8,
    due: Instant,
}

/// One direction of the wire.
struct Half {
    dir: Direction,
    src: OwnedFd,
    dst: OwnedFd,
    /// `src` is a socket: a read of 0 bytes is the peer's close, not "nothing yet".
    eof_is_end: bool,
    timer: TimerFd,
    config: WireConfig,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Log>>,
}

/// How often an idle relay thread checks whether it should stop.
const IDLE_POLL_MS: u16 = 50;

impl Half {
    fn run(self) -> anyhow::Result<()> {
        // Sleeps of this thread end as exactly as the kernel can (the default slack is 50 µs).
        let _ = nix::sys::prctl::set_timerslack(1);
        let mut queue: VecDeque<InFlight> = VecDeque::new();
        let mut open: Option<Frame> = None;
        let mut wire_free = Instant::now();
        let mut buf = [0u8; 512];
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            // Sleep until the next byte is due (less the spin margin before a frame end) or
            // bytes arrive; never longer than the idle period.
            let wake = queue.front().map(|b| {
                if queue.len() == 1 {
                    b.due.checked_sub(self.config.spin).unwrap_or(b.due)
                } else {
                    b.due
                }
            });
            let timeout = match wake {
                Some(w) if w <= now => PollTimeout::ZERO,
                Some(w) => {
                    self.arm(w - now)?;
                    PollTimeout::NONE
                }
                None => PollTimeout::from(IDLE_POLL_MS),
            };
            let (src_ready, timer_ready) = {
                let mut fds = [
                    PollFd::new(self.src.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.timer.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(e).context("wire relay: poll"),
                }
                let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
                (ready(&fds[0]), ready(&fds[1]))
            };
            let arrived = Instant::now();
            if timer_ready {
                // Clear the expiry count (EAGAIN if it was already read: fine).
                let _ = nix::unistd::read(self.timer.as_fd(), &mut [0u8; 8]);
            }
            if src_ready {
                loop {
                    match nix::unistd::read(self.src.as_fd(), &mut buf) {
                        Ok(0) if self.eof_is_end => {
                            bail!(
                                "wire relay {:?}: the far side closed the connection",
                                self.dir
                            );
                        }
                        Ok(0) | Err(Errno::EAGAIN) => break,
                        Ok(n) => {
                            for &byte in &buf[..n] {
                                let start = arrived.max(wire_free);
                                let due = start + self.config.char_time;
                                wire_free = due;
                                match open.as_mut() {
                                    Some(f) if start <= f.end + self.config.frame_silence => {
                                        f.end = due;
                                        f.bytes += 1;
                                    }
                                    _ => {
                                        if let Some(done) = open.take() {
                                            self.log_frame(done);
                                        }
                                        open = Some(Frame {
                                            dir: self.dir,
                                            start,
                                            end: due,
                                            delivered: due,
                                            bytes: 1,
                                        });
                                    }
                                }
                                queue.push_back(InFlight { byte, due });
                            }
                        }
                        // No one has the far pty's other end open (device restarting): the
                        // bytes are lost, as on a line without a listener; wait a little.
                        Err(Errno::EIO) => {
                            std::thread::sleep(Duration::from_millis(5));
                            break;
                        }
                        Err(e) => {
                            return Err(e).context(format!("wire relay {:?}: reading", self.dir));
                        }
                    }
                }
            }
            self.deliver(&mut queue, &mut open)?;
            // A frame whose silence has lasted long enough is complete.
            if queue.is_empty()
                && open.is_some_and(|f| Instant::now() > f.end + self.config.frame_silence)
                && let Some(done) = open.take()
            {
                self.log_frame(done);
            }
        }
        Ok(())
    }

    fn arm(&self, after: Duration) -> anyhow::Result<()> {
        // A zero expiry would disarm the timer.
        let after = after.max(Duration::from_nanos(1));
        self.timer
            .set(
                Expiration::OneShot(TimeSpec::from_duration(after)),
                TimerSetTimeFlags::empty(),
            )
            .context("wire relay: timerfd_settime")
    }

    /// Hands over every byte that is due; spins for the last byte queued (a frame end).
    fn deliver(
        &self,
        queue: &mut VecDeque<InFlight>,
        open: &mut Option<Frame>,
    ) -> anyhow::Result<()> {
        let mut out = Vec::new();
        let mut lateness = Vec::new();
        let mut frame_end = None;
        while let Some(&next) = queue.front() {
            let mut now = Instant::now();
            if next.due > now {
                if queue.len() == 1 && next.due - now <= self.config.spin {
                    while now < next.due {
                        std::hint::spin_loop();
                        now = Instant::now();
                    }
                } else {
                    break;
                }
            }
            queue.pop_front();
            out.push(next.byte);
            lateness.push(now.saturating_duration_since(next.due));
            if queue.is_empty() {
                frame_end = Some(now);
                // Write at once: the next byte may not come for a while.
                break;
            }
        }
        if out.is_empty() {
            return Ok(());
        }
        // Timestamped before the write: a thread preempted inside `write` must not make the
        // receiver seem to have answered before it had the bytes.
        if let (Some(f), Some(at)) = (open.as_mut(), frame_end) {
            f.delivered = at;
        }
        write_all(self.dst.as_fd(), &out)
            .with_context(|| format!("wire relay {:?}: writing", self.dir))?;
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.pacing
            .byte_ns
            .extend(lateness.iter().map(|&late| nanos(late)));
        if frame_end.is_some()
            && let Some(&late) = lateness.last()
        {
            log.pacing.frame_end_ns.push(nanos(late));
        }
        Ok(())
    }

    fn log_frame(&self, frame: Frame) {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .frames
            .push(frame);
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Writes all of `bytes` to a non-blocking fd, waiting for room when the receiver's buffer is
/// full.
fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> nix::Result<()> {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EAGAIN) => {
                let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
                poll(&mut fds, PollTimeout::from(IDLE_POLL_MS))?;
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
