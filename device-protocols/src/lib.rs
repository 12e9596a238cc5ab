//! The field side of twinbridge: typed Modbus points, a read planner, the RTU/TCP bus runtime,
//! plain line-oriented serial devices, and a Modbus slave simulator.
//!
//! Knows nothing of twins or hubs.
