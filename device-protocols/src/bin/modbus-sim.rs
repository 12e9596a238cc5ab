//! `modbus-sim`: serve simulated Modbus units on a fresh pty, a real serial port, or TCP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use device_protocols::point::Table;
use device_protocols::serial::{Parity, SerialSettings};
use device_protocols::sim::{ExceptionRule, Generator, RtuSim, SimHandle, SimMap, TcpSim, UnitMap};
use serde::Deserialize as _;
use serde::de::value::StrDeserializer;
use tokio::signal::unix::{SignalKind, signal};
use tokio_modbus::ExceptionCode;

/// Modbus slave simulator: several units (unit ids) answering on one RTU line or one Modbus
/// TCP endpoint, for commissioning, demos and tests.
///
/// Examples:
///
///   modbus-sim --unit 1 --unit 7                 # fresh pty, prints the path to open
///
///   modbus-sim --map units.toml --pty ./ttyBUS   # stable symlink to the pty
///
///   modbus-sim --map units.toml --port /dev/ttyUSB1 --baud 19200 --parity even
///
///   modbus-sim --map units.toml --tcp 127.0.0.1:5020
///
///   modbus-sim --map units.toml --rtu-over-tcp 127.0.0.1:4001   # like a serial device server
///
/// Map file (TOML):
///
///   [[unit]]
///   id = 1
///   holding = { 0 = [2305, 0, 17], 100 = 215 }   # address = value or consecutive values
///   input = { "0x10" = 42 }
///   coils = { 0 = [true, false] }
///   discrete_inputs = { 3 = true }
///   fill = [{ table = "holding", start = 1000, count = 125, value = 0 }]
///
///   [[unit.generator]]                           # counter | ramp | sine | toggle
///   table = "input"
///   address = 5
///   kind = "sine"
///   center = 200
///   amplitude = 50
///   period = "60s"
///
/// Addresses absent from the map answer exception 02 (illegal data address).
///
/// Faults, to see how a gateway copes (UNIT = unit id; repeat the option for several):
///
///   --silent 7                        # unit 7 never answers (a dead or unwired device)
///
///   --slow 7=800ms                    # unit 7 answers 800 ms late (the line waits for it)
///
///   --garbage 7                       # unit 7 answers line noise (wrong baud, bad wiring)
///
///   --bad-crc 7                       # unit 7's answers arrive corrupted (noise, termination)
///
///   --exception 7:holding:100-109:04  # exception 04 for reads/writes touching 100..=109
///
///   --exception 7:04                  # exception 04 for every request to unit 7
///
///   --absent-exception 0B             # ids without a unit get exception 0B, like a Modbus
///                                     # TCP gateway with nothing answering behind that id
///
/// On a pty any baud rate and parity work: open the printed path like a serial port.
/// Runs until interrupted (Ctrl-C / SIGINT) or terminated (SIGTERM); then removes its pty link.
// The doc comment is the `--help` text, not rustdoc.
#[allow(clippy::doc_markdown)]
#[derive(Debug, Parser)]
#[command(name = "modbus-sim", version, verbatim_doc_comment)]
struct Args {
    /// Register map file (TOML, see above).
    #[arg(long, value_name = "FILE")]
    map: Option<PathBuf>,

    /// Add a unit with a default map: 100 coils, discrete inputs, holding and input registers
    /// at 0..=99 (all 0), input register 0 counting up every second. Repeatable.
    #[arg(long = "unit", value_name = "ID", value_parser = clap::value_parser!(u8).range(1..=247))]
    units: Vec<u8>,

    /// Serve on a fresh pseudo-terminal behind this symlink (the default mode; default link:
    /// $TMPDIR/modbus-sim-PID.tty).
    #[arg(long, value_name = "LINK", conflicts_with_all = ["port", "tcp", "rtu_over_tcp"])]
    pty: Option<PathBuf>,

    /// Serve on a real serial port (e.g. a USB RS-485 adapter).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["tcp", "rtu_over_tcp"])]
    port: Option<PathBuf>,

    /// Baud rate of --port.
    #[arg(long, default_value_t = 9600, requires = "port")]
    baud: u32,

    /// Parity of --port: none, even, odd.
    #[arg(long, default_value = "none", value_parser = parse_parity, requires = "port")]
    parity: Parity,

    /// Stop bits of --port (1 or 2).
    #[arg(long, default_value_t = 1, requires = "port")]
    stop_bits: u8,

    /// Serve Modbus TCP on this address (e.g. 127.0.0.1:5020; port 0 picks a free one).
    #[arg(long, value_name = "ADDR", conflicts_with = "rtu_over_tcp")]
    tcp: Option<SocketAddr>,

    /// Serve RTU frames over TCP on this address (a transparent serial device server with
    /// the units on its serial side; one connection at a time).
    #[arg(long, value_name = "ADDR")]
    rtu_over_tcp: Option<SocketAddr>,

    /// Fault: this unit never answers. Repeatable.
    #[arg(long, value_name = "UNIT")]
    silent: Vec<u8>,

    /// Fault: this unit answers late, e.g. 7=800ms. Repeatable.
    #[arg(long, value_name = "UNIT=DELAY", value_parser = parse_slow)]
    slow: Vec<(u8, Duration)>,

    /// Fault: this unit answers line noise instead of its answer (on Modbus TCP: nothing).
    /// Repeatable.
    #[arg(long, value_name = "UNIT")]
    garbage: Vec<u8>,

    /// Fault: this unit's answers arrive with a corrupted CRC (RTU only). Repeatable.
    #[arg(long, value_name = "UNIT")]
    bad_crc: Vec<u8>,

    /// Fault: exception answers for requests touching some addresses, as
    /// UNIT:TABLE:FROM[-TO]:CODE with TABLE holding, input, coil or discrete_input and CODE
    /// in hex (01 illegal function, 02 illegal address, 03 illegal value, 04 device failure,
    /// 06 busy, 0B gateway target failed); UNIT:CODE for every request. Repeatable.
    #[arg(long, value_name = "RULE", value_parser = parse_exception)]
    exception: Vec<(u8, ExceptionRule)>,

    /// Answer requests for ids without a unit with this exception (hex: 0A gateway path
    /// unavailable, 0B gateway target device failed to respond) instead of staying silent.
    #[arg(long, value_name = "CODE", value_parser = parse_code)]
    absent_exception: Option<ExceptionCode>,
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
fn check_faults(args: &Args, map: &SimMap) -> anyhow::Result<()> {
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
fn apply_faults(args: &Args, handle: &SimHandle) {
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

fn build_map(args: &Args) -> anyhow::Result<SimMap> {
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let map = build_map(&args)?;
    check_faults(&args, &map)?;
    let units = ids(&map);
    // Handlers first: whoever reads the "serving" line may signal us at once, and a signal
    // that arrives before its handler kills the process without removing the pty link.
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    // Keep the simulator alive until the end of main.
    let _guard: Box<dyn std::fmt::Debug> = if let Some(addr) = args.tcp {
        let sim = TcpSim::bind(addr, map).await?;
        apply_faults(&args, sim.handle());
        println!("serving units {units} on Modbus TCP {}", sim.addr());
        Box::new(sim)
    } else if let Some(addr) = args.rtu_over_tcp {
        let sim = RtuSim::start_rtu_over_tcp(addr, map).await?;
        apply_faults(&args, sim.handle());
        let addr = sim
            .tcp_addr()
            .expect("an RTU-over-TCP simulator has an address");
        println!("serving units {units} on RTU over TCP {addr}");
        Box::new(sim)
    } else if let Some(path) = args.port.clone() {
        let settings = SerialSettings {
            path,
            baud: args.baud,
            parity: args.parity,
            data_bits: 8,
            stop_bits: args.stop_bits,
        };
        let shown = settings.to_string();
        let sim = RtuSim::start_on_serial(settings, map)?;
        apply_faults(&args, sim.handle());
        println!("serving units {units} on {shown}");
        Box::new(sim)
    } else {
        let link = args.pty.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("modbus-sim-{}.tty", std::process::id()))
        });
        let sim = RtuSim::start(&link, map)
            .with_context(|| format!("creating a pty behind {}", link.display()))?;
        apply_faults(&args, sim.handle());
        let target = std::fs::read_link(sim.path()).unwrap_or_default();
        println!(
            "serving units {units} on {} (-> {})",
            sim.path().display(),
            target.display()
        );
        Box::new(sim)
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
