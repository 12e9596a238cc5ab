//! Serial line settings, opening a port with useful errors, and RTU character timing.
//!
//! # Which path to use
//!
//! Prefer the stable `/dev/serial/by-id/usb-<vendor>_<product>_<serial>-if00-port0` symlinks
//! that udev creates for USB adapters over `/dev/ttyUSB0`: the `ttyUSBn` number depends on the
//! order in which adapters were plugged in and changes after an unplug/replug or a reboot, the
//! by-id link always names the same adapter. The link disappears while the adapter is unplugged
//! (opening then fails with [`SerialError::is_not_found`]) and comes back when it is replugged.
//!
//! Pseudo-terminal slaves (`/dev/pts/N`, see [`crate::pty`]) open like any other port: the line
//! settings are accepted by the kernel and simply have no electrical effect.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_serial::SerialStream;

/// A serial port whose flush does not wait for the bytes to leave the UART.
///
/// tokio-serial's flush is `tcdrain(3)`, a blocking system call, made on the async
/// runtime's thread; tokio-modbus flushes every request, so on a real UART the whole agent
/// stood still for each frame's wire time (≈ 8 ms for a read at 9600 baud, ≈ 266 ms for a
/// 123-register write). A tty keeps no bytes in user space: once `write` returned, the
/// kernel sends them in order, so there is nothing to flush. Nor is the wait needed: an
/// answer cannot come before its request has left, the bus's timeout counts from before the
/// write, its inter-frame gap from the end of the answer, and RS-485 direction is switched by
/// the kernel (or the adapter), not around the flush. (A pseudo-terminal's `tcdrain` returns
/// at once, which is why no pty test could see the stall.)
#[derive(Debug)]
pub struct NoDrain<S>(pub S);

impl<S: AsyncRead + Unpin> AsyncRead for NoDrain<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for NoDrain<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Closing the descriptor (on drop) is the port's shutdown; tokio-serial's own
        // shutdown would only flush, i.e. drain.
        Poll::Ready(Ok(()))
    }
}

/// Parity of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit (the common field default, usually with one stop bit).
    #[default]
    None,
    /// Even parity (the Modbus RTU specification's default: 8E1).
    Even,
    /// Odd parity.
    Odd,
}

impl std::fmt::Display for Parity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Parity::None => "N",
            Parity::Even => "E",
            Parity::Odd => "O",
        })
    }
}

fn default_baud() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}

/// How to open one serial line.
///
/// Defaults are 9600 baud, 8 data bits, no parity, 1 stop bit (8N1), the most common setting
/// of field devices. Note that the Modbus RTU specification's default is **8E1** (even parity) and
/// that it requires 2 stop bits when parity is none (8N2); many devices ignore this, so the
/// defaults follow practice, and each bus sets what its devices are configured for.
///
/// Deserialises from e.g. `{ path = "/dev/serial/by-id/…", baud = 19200, parity = "even" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialSettings {
    /// Device path; prefer `/dev/serial/by-id/…` (see the module documentation).
    pub path: PathBuf,
    /// Baud rate in bit/s.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Parity bit.
    #[serde(default)]
    pub parity: Parity,
    /// Data bits per character: 5, 6, 7 or 8 (Modbus RTU needs 8).
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// Stop bits: 1 or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Kernel RS-485 direction control, applied on every [`open`] (`None`:
    /// leave the UART as it is; USB adapters switch direction by themselves).
    #[serde(skip)]
    pub rs485: Option<Rs485>,
}

/// Level of RTS (the transceiver's driver enable) while sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RtsLevel {
    /// RTS high while sending, low after (the usual wiring of DE/RE to RTS).
    #[default]
    High,
    /// RTS low while sending, high after (an inverting driver stage).
    Low,
}

/// Direction control of a half-duplex RS-485 transceiver by the UART driver: the kernel's
/// RS-485 mode (`TIOCSRS485`), for on-board UARTs wired to a transceiver whose driver enable
/// hangs on RTS (Raspberry Pi HATs, industrial boards). Delays have millisecond resolution
/// (the kernel's); drivers cap them (usually at 100 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rs485 {
    /// RTS level while a frame is sent.
    pub rts_on_send: RtsLevel,
    /// RTS asserted this long before the first bit (transceivers slow to enable).
    pub delay_before_send: Duration,
    /// RTS held this long after the last bit (slow receivers on the line).
    pub delay_after_send: Duration,
    /// Keep receiving while sending (full-duplex / 4-wire RS-485 or RS-422).
    pub rx_during_tx: bool,
}

impl SerialSettings {
    /// Settings for `path` with the defaults (9600 8N1).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            baud: default_baud(),
            parity: Parity::None,
            data_bits: default_data_bits(),
            stop_bits: default_stop_bits(),
            rs485: None,
        }
    }

    /// Checks the values a UART can take: baud > 0, data bits 5–8, stop bits 1–2.
    pub fn validate(&self) -> Result<(), SerialError> {
        let invalid = |reason: String| SerialError::InvalidSettings {
            path: self.path.clone(),
            reason,
        };
        if self.baud == 0 {
            return Err(invalid("baud rate must be greater than 0".into()));
        }
        if !(5..=8).contains(&self.data_bits) {
            return Err(invalid(format!(
                "data bits must be 5, 6, 7 or 8, not {}",
                self.data_bits
            )));
        }
        if !(1..=2).contains(&self.stop_bits) {
            return Err(invalid(format!(
                "stop bits must be 1 or 2, not {}",
                self.stop_bits
            )));
        }
        Ok(())
    }

    /// Bits on the wire per character: start bit + data bits + parity bit + stop bits.
    pub fn bits_per_char(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
    }

    /// Time one character takes on the wire at these settings.
    pub fn char_time(&self) -> Duration {
        char_time(self.baud, self.bits_per_char())
    }

    /// Minimum silence between two RTU frames (t3.5), see [`inter_frame_gap`].
    pub fn inter_frame_gap(&self) -> Duration {
        inter_frame_gap(self.baud, self.bits_per_char())
    }

    /// Time to transmit `bytes` characters at these settings.
    pub fn transmit_time(&self, bytes: usize) -> Duration {
        self.char_time() * u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

impl std::fmt::Display for SerialSettings {
    /// `"/dev/ttyUSB0 9600 8E1"`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}{}{}",
            self.path.display(),
            self.baud,
            self.data_bits,
            self.parity,
            self.stop_bits
        )
    }
}

/// Time one character of `bits_per_char` bits takes at `baud` bit/s (rounded up to the
/// nanosecond). `baud == 0` is treated as 1 to stay total.
pub fn char_time(baud: u32, bits_per_char: u32) -> Duration {
    let nanos = u64::from(bits_per_char) * 1_000_000_000;
    Duration::from_nanos(nanos.div_ceil(u64::from(baud.max(1))))
}

/// Baud rate above which the Modbus serial line specification fixes t1.5 and t3.5.
const FIXED_TIMING_ABOVE_BAUD: u32 = 19_200;

/// The Modbus RTU inter-frame gap t3.5: 3.5 character times, but fixed at 1.75 ms above
/// 19200 baud (Modbus over serial line V1.02, §2.5.1.1), because shorter gaps are hard for
/// UARTs and OS timers to honour.
pub fn inter_frame_gap(baud: u32, bits_per_char: u32) -> Duration {
    if baud > FIXED_TIMING_ABOVE_BAUD {
        Duration::from_micros(1750)
    } else {
        char_time(baud, bits_per_char) * 7 / 2
    }
}

/// The Modbus RTU inter-character timeout t1.5: 1.5 character times, fixed at 750 µs above
/// 19200 baud. A receiver treats a longer silence inside a frame as the end of the frame.
pub fn inter_char_timeout(baud: u32, bits_per_char: u32) -> Duration {
    if baud > FIXED_TIMING_ABOVE_BAUD {
        Duration::from_micros(750)
    } else {
        char_time(baud, bits_per_char) * 3 / 2
    }
}

/// Errors of this module; all name the port.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The settings cannot be applied to any UART.
    #[error("serial port {}: invalid settings: {reason}", path.display())]
    InvalidSettings {
        /// The port the settings were for.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Opening or configuring the port failed.
    #[error("opening serial port {}: {reason}", path.display())]
    Open {
        /// The port.
        path: PathBuf,
        /// The OS's reason, lower-cased ("permission denied", "no such file or directory").
        reason: String,
        /// The underlying error.
        #[source]
        source: tokio_serial::Error,
    },
    /// Another process has the port open exclusively (a running bus: the twinbridge service,
    /// or another program); see [`open`].
    #[error("opening serial port {}: in use by another process (the running twinbridge service?)", path.display())]
    InUse {
        /// The port.
        path: PathBuf,
    },
    /// The kernel RS-485 mode could not be set.
    #[error("serial port {}: cannot enable RS-485 direction control (TIOCSRS485): {reason}", path.display())]
    Rs485 {
        /// The port.
        path: PathBuf,
        /// Why, with what to do about it.
        reason: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl SerialError {
    /// The path does not exist (adapter unplugged, wrong by-id link): worth retrying later.
    pub fn is_not_found(&self) -> bool {
        matches!(self, SerialError::Open { source, .. }
            if source.kind == tokio_serial::ErrorKind::Io(std::io::ErrorKind::NotFound))
    }

    /// Access was denied (user not in `dialout`?).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, SerialError::Open { source, .. }
            if source.kind == tokio_serial::ErrorKind::Io(std::io::ErrorKind::PermissionDenied))
    }

    /// Another process holds the port (ports are opened exclusively: [`SerialError::InUse`]).
    pub fn is_busy(&self) -> bool {
        match self {
            SerialError::InUse { .. } => true,
            SerialError::InvalidSettings { .. }
            | SerialError::Open { .. }
            | SerialError::Rs485 { .. } => false,
        }
    }

    /// The port this error is about.
    pub fn path(&self) -> &Path {
        match self {
            SerialError::InvalidSettings { path, .. }
            | SerialError::Open { path, .. }
            | SerialError::InUse { path }
            | SerialError::Rs485 { path, .. } => path,
        }
    }
}

fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Builds the tokio-serial builder for `settings` (validated).
fn builder(settings: &SerialSettings) -> Result<tokio_serial::SerialPortBuilder, SerialError> {
    settings.validate()?;
    let data_bits = match settings.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        _ => tokio_serial::DataBits::Eight,
    };
    let stop_bits = if settings.stop_bits == 2 {
        tokio_serial::StopBits::Two
    } else {
        tokio_serial::StopBits::One
    };
    let parity = match settings.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    Ok(
        tokio_serial::new(settings.path.to_string_lossy(), settings.baud)
            .data_bits(data_bits)
            .stop_bits(stop_bits)
            .parity(parity)
            .flow_control(tokio_serial::FlowControl::None),
    )
}

/// Opens and configures the port (raw mode, the given line settings, exclusive access so that
/// two processes cannot interleave frames on one line: a second open fails with
/// [`SerialError::InUse`]), after switching it to the kernel RS-485 mode if the settings ask
/// for it ([`SerialSettings::rs485`]).
///
/// Exclusive access is two locks, both held for as long as the stream is open and dropped by
/// the kernel when the process ends, crashed or not: `TIOCEXCL` (further opens fail with
/// `EBUSY`, except for root, which it does not bind) and an advisory `flock(LOCK_EX |
/// LOCK_NB)` on the device node (which binds root too: `sudo twinbridge read` cannot
/// interleave its frames with the running service's). Both are serialport's; the flock is on
/// the device's inode, so every path to it (`/dev/serial/by-id/…`, `/dev/ttyUSB0`) meets it.
///
/// Must be called inside a tokio runtime (the stream registers with its reactor).
/// Works on pseudo-terminal slaves too.
pub fn open(settings: &SerialSettings) -> Result<SerialStream, SerialError> {
    let builder = builder(settings)?;
    if let Some(rs485) = &settings.rs485 {
        apply_rs485(&settings.path, rs485)?;
    }
    SerialStream::open(&builder).map_err(|source| {
        if source.kind == tokio_serial::ErrorKind::NoDevice {
            // EBUSY (TIOCEXCL) or the flock held: another process has the port open.
            return SerialError::InUse {
                path: settings.path.clone(),
            };
        }
        SerialError::Open {
            path: settings.path.clone(),
            reason: lower_first(&source.description),
            source,
        }
    })
}

/// Switches `path`'s UART to the kernel's RS-485 mode with `rs485` (`TIOCSRS485`, through
/// serial2's safe wrapper), on a short-lived descriptor of its own.
///
/// Called before the port is opened for use: once it is (with `TIOCEXCL`), a second
/// descriptor is refused to everyone but root. The descriptor takes a non-blocking
/// exclusive flock first, so a port another process holds is not reconfigured under it.
fn apply_rs485(path: &Path, rs485: &Rs485) -> Result<(), SerialError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    // O_NONBLOCK: a modem line without carrier would block the open; O_NOCTTY: never become
    // our controlling terminal.
    let flags = nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOCTTY;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
        .map_err(|e| open_error(path, &e))?;
    // Dropped (unlocked, closed) before the real open, whose own flock would conflict.
    let probe = match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(probe) => probe,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            return Err(SerialError::InUse {
                path: path.to_owned(),
            });
        }
        Err((_, errno)) => return Err(open_error(path, &std::io::Error::from(errno))),
    };
    let failed = |source: std::io::Error| {
        let reason = match source.raw_os_error().map(nix::errno::Errno::from_raw) {
            Some(nix::errno::Errno::ENOTTY | nix::errno::Errno::EINVAL) => format!(
                "this port has no kernel RS-485 mode ({source}); USB-RS485 adapters and \
                 auto-direction converters switch direction themselves: remove rs485 from \
                 this bus"
            ),
            _ => source.to_string(),
        };
        SerialError::Rs485 {
            path: path.to_owned(),
            reason,
            source,
        }
    };
    let fd: std::os::fd::OwnedFd = probe.try_clone().map_err(failed)?.into();
    let port = serial2::SerialPort::from(fd);
    let mut config = serial2::rs4xx::Rs485Config::new();
    config.set_invert_rts(rs485.rts_on_send == RtsLevel::Low);
    config.set_delay_before_send(rs485.delay_before_send);
    config.set_delay_after_send(rs485.delay_after_send);
    config.set_full_duplex(rs485.rx_during_tx);
    port.set_rs4xx_mode(config).map_err(failed)
}

/// An error of opening `path` in the shape [`open`] reports them.
fn open_error(path: &Path, e: &std::io::Error) -> SerialError {
    if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) {
        // Opened with TIOCEXCL by another process.
        return SerialError::InUse {
            path: path.to_owned(),
        };
    }
    let description = e.to_string();
    SerialError::Open {
        path: path.to_owned(),
        reason: lower_first(&description),
        source: tokio_serial::Error::new(tokio_serial::ErrorKind::Io(e.kind()), description),
    }
}

/// Discards bytes received but not yet read: call before sending a request, so that a late
/// answer to an earlier, timed-out request is not taken for the answer to this one.
pub fn discard_input(port: &SerialStream) -> std::io::Result<()> {
    use tokio_serial::SerialPort as _;
    port.clear(tokio_serial::ClearBuffer::Input)
        .map_err(std::io::Error::from)
}

/// Bytes received and waiting to be read.
pub fn bytes_to_read(port: &SerialStream) -> std::io::Result<u32> {
    use tokio_serial::SerialPort as _;
    port.bytes_to_read().map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port whose drain never ends (a UART that never gets its bytes out).
    struct NeverDrains(tokio::io::DuplexStream);

    impl AsyncWrite for NeverDrains {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn no_drain_writes_through_and_never_waits_for_the_port_to_drain() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (near, mut far) = tokio::io::duplex(64);
        let mut port = NoDrain(NeverDrains(near));
        let soon = Duration::from_secs(5);
        tokio::time::timeout(soon, async {
            port.write_all(b"\x01\x03\x00\x00\x00\x01\x84\x0a").await?;
            port.flush().await?;
            port.shutdown().await
        })
        .await
        .expect("flush and shutdown do not wait for a drain")
        .expect("written");
        let mut frame = [0u8; 8];
        far.read_exact(&mut frame)
            .await
            .expect("the frame went through");
        assert_eq!(frame, *b"\x01\x03\x00\x00\x00\x01\x84\x0a");
    }

    #[test]
    fn defaults_are_9600_8n1() {
        let s: SerialSettings = toml::from_str(r#"path = "/dev/ttyUSB0""#).unwrap();
        assert_eq!(s, SerialSettings::new("/dev/ttyUSB0"));
        assert_eq!(s.to_string(), "/dev/ttyUSB0 9600 8N1");
        assert_eq!(s.bits_per_char(), 10);
    }

    #[test]
    fn deserialises_all_fields_and_rejects_unknown() {
        let s: SerialSettings = toml::from_str(
            "path = \"/dev/ttyS1\"\nbaud = 19200\nparity = \"even\"\ndata_bits = 8\nstop_bits = 1",
        )
        .unwrap();
        assert_eq!(s.parity, Parity::Even);
        assert_eq!(s.baud, 19200);
        assert_eq!(s.to_string(), "/dev/ttyS1 19200 8E1");
        assert_eq!(s.bits_per_char(), 11);
        assert!(toml::from_str::<SerialSettings>("path = \"/x\"\nspeed = 1").is_err());
        assert!(toml::from_str::<SerialSettings>("path = \"/x\"\nparity = \"mark\"").is_err());
    }

    #[test]
    fn char_time_and_gap_at_9600_8e1() {
        // 11 bits at 9600 baud = 1145.833… µs, rounded up to the nanosecond.
        assert_eq!(char_time(9600, 11), Duration::from_nanos(1_145_834));
        // t3.5 = 3.5 × 1145.834 µs = 4010.419 µs.
        assert_eq!(inter_frame_gap(9600, 11), Duration::from_nanos(4_010_419));
        assert_eq!(
            inter_char_timeout(9600, 11),
            Duration::from_nanos(1_718_751)
        );
    }

    #[test]
    fn timing_is_fixed_above_19200() {
        assert_eq!(inter_frame_gap(38_400, 11), Duration::from_micros(1750));
        assert_eq!(inter_frame_gap(115_200, 10), Duration::from_micros(1750));
        assert_eq!(inter_char_timeout(115_200, 10), Duration::from_micros(750));
        // At exactly 19200 the computed value applies: 3.5 × 11 / 19200 s ≈ 2.005 ms.
        assert_eq!(inter_frame_gap(19_200, 11), Duration::from_nanos(2_005_209));
    }

    #[test]
    fn zero_baud_is_total_and_invalid() {
        assert_eq!(char_time(0, 10), Duration::from_secs(10));
        let mut s = SerialSettings::new("/dev/x");
        s.baud = 0;
        assert!(s.validate().unwrap_err().to_string().contains("baud"));
        s.baud = 9600;
        s.data_bits = 9;
        assert!(s.validate().is_err());
        s.data_bits = 8;
        s.stop_bits = 3;
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "serial port /dev/x: invalid settings: stop bits must be 1 or 2, not 3"
        );
    }

    #[test]
    fn transmit_time_scales_with_length() {
        let s = SerialSettings::new("/dev/x");
        assert_eq!(s.transmit_time(8), s.char_time() * 8);
    }

    proptest::proptest! {
        #[test]
        fn gap_is_at_least_three_chars_at_low_baud(baud in 1u32..=19_200, bits in 7u32..=12) {
            let c = char_time(baud, bits);
            let gap = inter_frame_gap(baud, bits);
            proptest::prop_assert!(gap >= c * 3);
            proptest::prop_assert!(gap <= c * 4);
            // char_time is never shorter than the exact value.
            proptest::prop_assert!(c.as_nanos() * u128::from(baud) >= u128::from(bits) * 1_000_000_000);
        }
    }

    #[tokio::test]
    async fn open_missing_port_names_path_and_reason() {
        let err = open(&SerialSettings::new("/dev/does-not-exist-twinbridge")).unwrap_err();
        assert!(err.is_not_found(), "{err:?}");
        assert_eq!(
            err.to_string(),
            "opening serial port /dev/does-not-exist-twinbridge: no such file or directory"
        );
    }

    #[tokio::test]
    async fn rs485_mode_on_a_port_without_it_says_what_to_do() {
        let master = crate::pty::PtyMaster::open().unwrap();
        let path = master.slave_path().to_owned();
        let settings = SerialSettings {
            rs485: Some(Rs485 {
                delay_after_send: Duration::from_millis(2),
                ..Rs485::default()
            }),
            ..SerialSettings::new(&path)
        };
        let err = open(&settings).unwrap_err();
        assert!(matches!(err, SerialError::Rs485 { .. }), "{err:?}");
        assert_eq!(err.path(), path);
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "serial port {}: cannot enable RS-485 direction control (TIOCSRS485): this port has no kernel RS-485 mode",
                path.display()
            )),
            "{text}"
        );
        assert!(text.ends_with("remove rs485 from this bus"), "{text}");
        // Nothing is left held: the same port opens without rs485, and then is in use.
        let _port = open(&SerialSettings::new(&path)).unwrap();
        let again = open(&settings).unwrap_err();
        assert!(again.is_busy(), "{again:?}");
    }

    #[tokio::test]
    async fn open_non_tty_fails_with_context() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = open(&SerialSettings::new(file.path())).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("opening serial port {}: ", file.path().display())),
            "{err}"
        );
    }
}
