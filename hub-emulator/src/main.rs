//! The `hub-emulator` binary.

use clap::Parser;

/// A local stand-in for Azure IoT Hub's device twin surface.
#[derive(Debug, Parser)]
#[command(name = "hub-emulator", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
