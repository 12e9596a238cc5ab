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
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_serial::SerialStream;

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

    /// Another process holds the port (ports are opened exclusively).
    pub fn is_busy(&self) -> bool {
        matches!(self, SerialError::Open { source, .. }
            if source.kind == tokio_serial::ErrorKind::NoDevice)
    }

    /// The port this error is about.
    pub fn path(&self) -> &Path {
        match self {
            SerialError::InvalidSettings { path, .. } | SerialError::Open { path, .. } => path,
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
/// [`SerialError::is_busy`]).
///
/// Must be called inside a tokio runtime (the stream registers with its reactor).
/// Works on pseudo-terminal slaves too.
pub fn open(settings: &SerialSettings) -> Result<SerialStream, SerialError> {
    let builder = builder(settings)?;
    SerialStream::open(&builder).map_err(|source| SerialError::Open {
        path: settings.path.clone(),
        reason: lower_first(&source.description),
        source,
    })
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
