//! Benchmarks of twinbridge that need real parts: ptys with wire time, the Modbus simulator,
//! the bus runtime. Run them with `cargo run --release -p twinbridge-bench -- <benchmark>`;
//! `BENCHMARKS.md` at the repository root holds the figures and how they were measured.
//!
//! [`wire`] (a pty-to-pty relay with real wire time) is a reusable piece for any benchmark
//! that needs a serial line that takes time; [`device`] a Modbus RTU device stand-in without
//! a pty for its far side.

pub mod bus_efficiency;
pub mod cli;
pub mod device;
pub mod footprint;
pub mod latency;
pub mod outage;
pub mod rig;
pub mod scale;
pub mod side_thread;
pub mod stats;
pub mod wire;
