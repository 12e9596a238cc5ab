//! twinbridge: an edge gateway agent that keeps serial field devices and their Azure IoT Hub
//! device twins in sync, with a durable local replica in SQLite.

pub mod bridge;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod hub;
pub mod service;
pub mod store;
pub mod sync;
pub mod twin;
