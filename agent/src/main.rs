//! The `twinbridge` binary.

use clap::Parser;

/// twinbridge: serial field devices <-> IoT Hub device twins, durable across outages.
#[derive(Debug, Parser)]
#[command(name = "twinbridge", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
