//! The field side of twinbridge: typed Modbus points, a read planner, the RTU/TCP bus runtime,
//! plain line-oriented serial devices, and a Modbus slave simulator.
//!
//! Knows nothing of twins or hubs.

pub mod backoff;
pub mod bus;
pub mod client;
pub mod codec;
pub mod health;
pub mod heartbeat;
pub mod line;
pub mod planner;
pub mod point;
pub mod pty;
pub mod scan;
pub mod serial;
pub mod sim;
pub mod timer;
