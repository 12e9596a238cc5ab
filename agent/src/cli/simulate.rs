//! `twinbridge simulate`: the Modbus device simulator of `device-protocols` (the one behind
//! `modbus-sim`, with the same map file and fault options) on a fresh pseudo-terminal, a real
//! serial port or a TCP port, for commissioning without hardware and for trying `scan`,
//! `read` and `write`.
//!
//! The first line on stdout is where to connect, alone: the pty's path (a symlink to the pty
//! slave), or `tcp://ADDR` / `rtu+tcp://ADDR` — so a script can read one line and pass it to
//! `twinbridge read`. A description follows on stderr. Runs until Ctrl-C or SIGTERM (exit 0).

use std::io::Write;

use device_protocols::sim::cli::{Serving, SimArgs, serve};

/// Runs `simulate`; with no `--unit` and no `--map`, simulates unit 1 with the default map.
pub fn run(mut args: SimArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    if args.units.is_empty() && args.map.is_none() {
        args.units.push(1);
    }
    let result = super::field_port::block_on(async {
        let served = serve(&args, |units, serving| {
            let (first, what) = match serving {
                Serving::Pty { link, target } => (
                    link.display().to_string(),
                    format!("a pseudo-terminal (-> {})", target.display()),
                ),
                Serving::Serial(shown) => (
                    args.port
                        .as_ref()
                        .map_or_else(|| shown.clone(), |p| p.display().to_string()),
                    format!("serial port {shown}"),
                ),
                Serving::Tcp(addr) => (format!("tcp://{addr}"), "Modbus TCP".to_owned()),
                Serving::RtuOverTcp(addr) => {
                    (format!("rtu+tcp://{addr}"), "RTU over TCP".to_owned())
                }
            };
            let _ = writeln!(out, "{first}");
            let _ = out.flush();
            let _ = writeln!(
                err,
                "simulating units {units} on {what}; Ctrl-C to stop\n  try: twinbridge read {first} --unit {} --address 0",
                units.split(',').next().unwrap_or("1")
            );
        })
        .await;
        match served {
            Ok(()) => 0,
            Err(e) => {
                let _ = writeln!(err, "simulate: {e:#}");
                super::EX_UNAVAILABLE
            }
        }
    });
    result.unwrap_or_else(|e| super::field_port::runtime_failed(&e, err))
}
