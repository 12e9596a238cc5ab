//! The simulator's command line, shared by the `modbus-sim` binary and `twinbridge simulate`:
//! which units, where to serve them, which faults; [`serve`] runs it until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize as _;
use serde::de::value::StrDeserializer;
use tokio::signal::unix::{SignalKind, signal};
use tokio_modbus::ExceptionCode;

use super::{ExceptionRule, Generator, RtuSim, SimHandle, SimMap, TcpSim, UnitMap};
use crate::point::Table;
use crate::serial::{Parity, SerialSettings};

/// What to simulate and where (see `modbus-sim --help` for the map file and fault syntax).
// The field doc comments are `--help` text, not rustdoc.
#[allow(clippy::doc_markdown)]
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Register map file (TOML, see above).
    #[arg(long, value_name = "FILE")]
    pub map: Option<PathBuf>,

    /// Add a unit with a default map: 100 coils, discrete inputs, holding and input registers
    /// at 0..=99 (all 0), input register 0 counting up every second. Repeatable.
    #[arg(long = "unit", visible_alias = "units", value_name = "ID", value_delimiter = ',',
          value_parser = clap::value_parser!(u8).range(1..=247))]
    pub units: Vec<u8>,

    /// Serve on a fresh pseudo-terminal behind a symlink (the default mode; default link:
    /// $TMPDIR/modbus-sim-PID.tty).
    #[arg(long, value_name = "LINK", num_args = 0..=1,
          conflicts_with_all = ["port", "tcp", "rtu_over_tcp"])]
    pub pty: Option<Option<PathBuf>>,

    /// Serve on a real serial port (e.g. a USB RS-485 adapter).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["tcp", "rtu_over_tcp"])]
    pub port: Option<PathBuf>,

    /// Baud rate of --port.
    #[arg(long, default_value_t = 9600, requires = "port")]
    pub baud: u32,

    /// Parity of --port: none, even, odd.
    #[arg(long, default_value = "none", value_parser = parse_parity, requires = "port")]
    pub parity: Parity,

    /// Stop bits of --port (1 or 2).
    #[arg(long, default_value_t = 1, requires = "port")]
    pub stop_bits: u8,

    /// Serve Modbus TCP on this address (e.g. 127.0.0.1:5020; port 0 picks a free one).
    #[arg(long, value_name = "ADDR", conflicts_with = "rtu_over_tcp")]
    pub tcp: Option<SocketAddr>,

    /// Serve RTU frames over TCP on this address (a transparent serial device server with
    /// the units on its serial side; one connection at a time).
    #[arg(long, value_name = "ADDR")]
    pub rtu_over_tcp: Option<SocketAddr>,

    /// Fault: this unit never answers. Repeatable.
    #[arg(long, value_name = "UNIT")]
    pub silent: Vec<u8>,

    /// Fault: this unit answers late, e.g. 7=800ms. Repeatable.
    #[arg(long, value_name = "UNIT=DELAY", value_parser = parse_slow)]
    pub slow: Vec<(u8, Duration)>,

    /// Fault: this unit answers line noise instead of its answer (on Modbus TCP: nothing).
    /// Repeatable.
    #[arg(long, value_name = "UNIT")]
    pub garbage: Vec<u8>,

    /// Fault: this unit's answers arrive with a corrupted CRC (RTU only). Repeatable.
    #[arg(long, value_name = "UNIT")]
    pub bad_crc: Vec<u8>,

    /// Fault: exception answers for requests touching some addresses, as
    /// UNIT:TABLE:FROM[-TO]:CODE with TABLE holding, input, coil or discrete_input and CODE
    /// in hex (01 illegal function, 02 illegal address, 03 illegal value, 04 device failure,
    /// 06 busy, 0B gateway target failed); UNIT:CODE for every request. Repeatable.
    #[arg(long, value_name = "RULE", value_parser = parse_exception)]
    pub exception: Vec<(u8, ExceptionRule)>,

    /// Answer requests for ids without a unit with this exception (hex: 0A gateway path
    /// unavailable, 0B gateway target device failed to respond) instead of staying silent.
    #[arg(long, value_name = "CODE", value_parser = parse_code)]
    pub absent_exception: Option<ExceptionCode>,
}

/// Where a started simulator serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serving {
    /// A pseudo-terminal: open `link` (a symlink to `target`, the pty slave) like a serial port.
    Pty {
        /// The symlink.
        link: PathBuf,
        /// The pty slave it points to.
        target: PathBuf,
    },
    /// A real serial port, e.g. `/dev/ttyUSB1 19200 8E1`.
    Serial(String),
    /// Modbus TCP.
    Tcp(SocketAddr),
    /// RTU frames over TCP.
    RtuOverTcp(SocketAddr),
}

fn parse_code(code: &str) -> Result<ExceptionCode, String> {
    u8::from_str_radix(code.trim_start_matches("0x"), 16)
        .ok()
        .filter(|&c| c != 0)
        .map(ExceptionCode::new)
        .ok_or_else(|| format!("`{code}` is not an exception code in hex (02, 04, 0B, …)"))
}

fn parse_slow(s: &str) -> Result<(u8, Duration), String> {
    let (unit, delay) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected UNIT=DELAY, e.g. 7=800ms"))?;
    let unit = unit
        .parse()
        .map_err(|_| format!("`{unit}` is not a unit id"))?;
    let delay = humantime::parse_duration(delay).map_err(|e| format!("`{delay}`: {e}"))?;
    Ok((unit, delay))
}

fn parse_exception(s: &str) -> Result<(u8, ExceptionRule), String> {
    let usage = || {
        format!(
            "`{s}`: expected UNIT:TABLE:FROM[-TO]:CODE (e.g. 7:holding:100-109:04) or UNIT:CODE"
        )
    };
    if let [unit, code] = s.split(':').collect::<Vec<_>>()[..] {
        let unit: u8 = unit
            .parse()
            .map_err(|_| format!("`{unit}` is not a unit id"))?;
        return Ok((unit, ExceptionRule::always(parse_code(code)?)));
    }
    let [unit, table, addresses, code] = s.split(':').collect::<Vec<_>>()[..] else {
        return Err(usage());
    };
    let unit: u8 = unit
        .parse()
        .map_err(|_| format!("`{unit}` is not a unit id"))?;
    let table = Table::deserialize(StrDeserializer::<serde::de::value::Error>::new(table))
        .map_err(|_| format!("`{table}` is not a table (holding, input, coil, discrete_input)"))?;
    let address = |a: &str| {
        a.parse::<u16>()
            .map_err(|_| format!("`{a}` is not an address 0..=65535"))
    };
    let (from, to) = match addresses.split_once('-') {
        Some((from, to)) => (address(from)?, address(to)?),
        None => (address(addresses)?, address(addresses)?),
    };
    if from > to {
        return Err(usage());
    }
    Ok((unit, ExceptionRule::at(table, from..=to, parse_code(code)?)))
}

/// Every unit a fault names must be simulated.
fn check_faults(args: &SimArgs, map: &SimMap) -> anyhow::Result<()> {
    let named = args
        .silent
        .iter()
        .chain(&args.garbage)
        .chain(&args.bad_crc)
        .chain(args.slow.iter().map(|(u, _)| u))
        .chain(args.exception.iter().map(|(u, _)| u));
    for unit in named {
        if !map.units.contains_key(unit) {
            bail!("a fault names unit {unit}, which is not simulated");
        }
    }
    Ok(())
}

/// Switches the faults given on the command line on.
fn apply_faults(args: &SimArgs, handle: &SimHandle) {
    for &unit in &args.silent {
        handle.set_silent(unit, true);
    }
    for &unit in &args.garbage {
        handle.set_garbage(unit, true);
    }
    for &unit in &args.bad_crc {
        handle.set_bad_crc(unit, true);
    }
    for &(unit, delay) in &args.slow {
        handle.set_delay(unit, Some(delay));
    }
    for (unit, rule) in &args.exception {
        handle.add_exception(*unit, rule.clone());
    }
    handle.set_absent_exception(args.absent_exception);
}

fn parse_parity(s: &str) -> Result<Parity, String> {
    match s.to_ascii_lowercase().as_str() {
        "none" | "n" => Ok(Parity::None),
        "even" | "e" => Ok(Parity::Even),
        "odd" | "o" => Ok(Parity::Odd),
        _ => Err(format!("`{s}` is not none, even or odd")),
    }
}

fn default_unit() -> UnitMap {
    UnitMap::new()
        .with_coils(0, &[false; 100])
        .with_discrete_inputs(0, &[false; 100])
        .with_holding(0, &[0; 100])
        .with_input(0, &[0; 100])
        .with_generator(
            Table::Input,
            0,
            Generator::Counter {
                start: 0,
                step: 1,
                every: Duration::from_secs(1),
            },
        )
}

fn build_map(args: &SimArgs) -> anyhow::Result<SimMap> {
    let mut map = match &args.map {
        Some(path) => SimMap::load(path)?,
        None => SimMap::new(),
    };
    for id in &args.units {
        if map.units.contains_key(id) {
            bail!("unit {id} is given by --unit and by the map file");
        }
        map.units.insert(*id, default_unit());
    }
    if map.units.is_empty() {
        bail!("no units to simulate: give --map FILE and/or --unit ID");
    }
    Ok(map)
}

fn ids(map: &SimMap) -> String {
    map.units
        .keys()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The ids simulated, `1, 7`.
pub fn unit_list(map: &SimMap) -> String {
    ids(map)
}

/// Starts the simulator `args` describe, calls `started` with the unit ids (`"1, 7"`) and
/// where it serves, and serves until SIGINT or SIGTERM. The signal handlers are installed
/// before `started` runs: whoever learns the address from it may signal at once, and a
/// signal before its handler would kill the process without removing the pty link.
pub async fn serve(args: &SimArgs, started: impl FnOnce(&str, &Serving)) -> anyhow::Result<()> {
    let map = build_map(args)?;
    check_faults(args, &map)?;
    let units = ids(&map);
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    // Keep the simulator alive until the end.
    let (_guard, serving): (Box<dyn std::fmt::Debug>, Serving) = if let Some(addr) = args.tcp {
        let sim = TcpSim::bind(addr, map)
            .await
            .with_context(|| format!("serving Modbus TCP on {addr}"))?;
        apply_faults(args, sim.handle());
        let serving = Serving::Tcp(sim.addr());
        (Box::new(sim), serving)
    } else if let Some(addr) = args.rtu_over_tcp {
        let sim = RtuSim::start_rtu_over_tcp(addr, map)
            .await
            .with_context(|| format!("serving RTU over TCP on {addr}"))?;
        apply_faults(args, sim.handle());
        let addr = sim
            .tcp_addr()
            .context("the RTU-over-TCP simulator has no address")?;
        (Box::new(sim), Serving::RtuOverTcp(addr))
    } else if let Some(path) = args.port.clone() {
        let settings = SerialSettings {
            baud: args.baud,
            parity: args.parity,
            stop_bits: args.stop_bits,
            ..SerialSettings::new(path)
        };
        let shown = settings.to_string();
        let sim = RtuSim::start_on_serial(settings, map)?;
        apply_faults(args, sim.handle());
        (Box::new(sim), Serving::Serial(shown))
    } else {
        let link = args.pty.clone().flatten().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("modbus-sim-{}.tty", std::process::id()))
        });
        let sim = RtuSim::start(&link, map)
            .with_context(|| format!("creating a pty behind {}", link.display()))?;
        apply_faults(args, sim.handle());
        let target = std::fs::read_link(sim.path()).unwrap_or_default();
        let serving = Serving::Pty {
            link: sim.path().to_owned(),
            target,
        };
        (Box::new(sim), serving)
    };
    started(&units, &serving);
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
