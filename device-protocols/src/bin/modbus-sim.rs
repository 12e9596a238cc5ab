//! `modbus-sim`: serve simulated Modbus units on a fresh pty, a real serial port, or TCP.
//! The options and the serving live in `device_protocols::sim::cli` (shared with
//! `twinbridge simulate`).

use clap::Parser;
use device_protocols::sim::cli::{Serving, SimArgs, serve};

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
    #[command(flatten)]
    sim: SimArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    serve(&args.sim, |units, serving| match serving {
        Serving::Tcp(addr) => println!("serving units {units} on Modbus TCP {addr}"),
        Serving::RtuOverTcp(addr) => println!("serving units {units} on RTU over TCP {addr}"),
        Serving::Serial(shown) => println!("serving units {units} on {shown}"),
        Serving::Pty { link, target } => println!(
            "serving units {units} on {} (-> {})",
            link.display(),
            target.display()
        ),
    })
    .await
}
