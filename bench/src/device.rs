//! A device stand-in for line benchmarks: the units of a [`SimMap`] answering RTU frames on a
//! loopback TCP connection, through tokio-modbus' RTU server (its request decoding, framing
//! and CRC) and the simulator's [`handle_request`] (its data model and exceptions).
//!
//! Why not the simulator's pty: [`RtuSim`](device_protocols::sim::RtuSim) forwards every
//! frame across an internal pty pair to its server (its line task is where line faults
//! happen), and every pty hop costs a kernel worker wake-up (the tty layer hands received
//! bytes to the reader from a workqueue, a thread that real-time priority of the benchmark
//! does not cover), so its answer latency is 1–2 ms at 115200 and the least stable figure of
//! the line. Here the relay's far side is a TCP socket on loopback, whose receiver is woken
//! from the sender's own system call, and the server answers as soon as the request decodes,
//! the device the ideal assumes. A real device also has to detect the end of the
//! request (t3.5 of silence) before it answers; that is not in the ideal either.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use device_protocols::sim::{SimMap, UnitMap, handle_request};
use tokio_modbus::server::rtu_over_tcp::Server;

use crate::side_thread::SideThread;
use tokio_modbus::{ExceptionCode, Response, SlaveRequest};

/// The units' data and the answer delay, shared by the connections.
#[derive(Debug)]
struct Shared {
    started: Instant,
    units: Mutex<BTreeMap<u8, UnitMap>>,
    delay: Duration,
    answered: AtomicU64,
}

#[derive(Debug, Clone)]
struct MapService(Arc<Shared>);

type Answer = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

impl tokio_modbus::server::Service for MapService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Answer;

    fn call(&self, req: Self::Request) -> Self::Future {
        let result = {
            let mut units = self.0.units.lock().unwrap_or_else(PoisonError::into_inner);
            // Nobody at that id (or a broadcast): no answer, as on a real line.
            units
                .get_mut(&req.slave)
                .filter(|_| req.slave != 0)
                .map(|u| handle_request(u, &req.request, self.0.started.elapsed()))
        };
        if result.is_some() {
            self.0.answered.fetch_add(1, Ordering::Relaxed);
        }
        let delay = self.0.delay;
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            result.transpose()
        })
    }
}

/// A running responder on its own thread and current-thread runtime (a device is separate
/// from the gateway); stops when dropped.
#[derive(Debug)]
pub struct Responder {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: SideThread,
}

impl Responder {
    /// Serves `map` on `127.0.0.1` (a free port), each answer `delay` late.
    pub fn start(map: SimMap, delay: Duration) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            started: Instant::now(),
            units: Mutex::new(map.units),
            delay,
            answered: AtomicU64::new(0),
        });
        let service = MapService(Arc::clone(&shared));
        let (addr, thread) = SideThread::start("device", move || async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .context("binding 127.0.0.1:0")?;
            let addr = listener.local_addr().context("its local address")?;
            let serve = async move {
                let server = Server::new(listener);
                let on_connected = |stream: tokio::net::TcpStream, _peer| {
                    let service = service.clone();
                    async move {
                        // Answers are written whole; never hold one back for an ACK.
                        stream.set_nodelay(true)?;
                        Ok(Some((service, stream)))
                    }
                };
                let on_error = |e: std::io::Error| eprintln!("device: connection failed: {e}");
                if let Err(e) = server.serve(&on_connected, on_error).await {
                    eprintln!("device: server stopped: {e}");
                }
            };
            Ok((addr, serve))
        })?;
        Ok(Self {
            addr,
            shared,
            thread,
        })
    }

    /// Where the relay connects.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers sent so far (exceptions included).
    pub fn answered(&self) -> u64 {
        self.shared.answered.load(Ordering::Relaxed)
    }

    /// Stops the server and joins its thread.
    pub fn stop(self) -> anyhow::Result<()> {
        self.thread.stop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{WireConfig, WireRelay};
    use device_protocols::serial::{self, SerialSettings};
    use tokio_modbus::client::Reader as _;
    use tokio_modbus::prelude::SlaveContext as _;

    async fn read(
        ctx: &mut tokio_modbus::client::Context,
        addr: u16,
        n: u16,
    ) -> tokio_modbus::Result<Vec<u16>> {
        tokio::time::timeout(Duration::from_secs(5), ctx.read_holding_registers(addr, n))
            .await
            .expect("answered within 5 s")
    }

    #[tokio::test]
    async fn answers_through_the_wire_relay_over_tcp() {
        let map = SimMap::new()
            .with_unit(1, UnitMap::new().with_holding(0, &[10, 11, 12]))
            .with_unit(2, UnitMap::new().with_holding(5, &[25]));
        let device = Responder::start(map, Duration::ZERO).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut settings = SerialSettings::new(dir.path().join("line"));
        settings.baud = 115_200;
        let relay = WireRelay::start_tcp(
            settings.path.clone(),
            device.addr(),
            WireConfig::for_serial(&settings),
        )
        .unwrap();
        let port = serial::open(&settings).unwrap();
        let mut ctx = tokio_modbus::client::rtu::attach_slave(port, tokio_modbus::Slave(1));
        assert_eq!(read(&mut ctx, 0, 3).await.unwrap(), Ok(vec![10, 11, 12]));
        ctx.set_slave(tokio_modbus::Slave(2));
        assert_eq!(read(&mut ctx, 5, 1).await.unwrap(), Ok(vec![25]));
        // A missing address is the simulator's exception 02, through tokio-modbus' framing.
        assert_eq!(
            read(&mut ctx, 0, 1).await.unwrap(),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(device.answered(), 3);
        relay.stop().unwrap();
        device.stop().unwrap();
    }
}
