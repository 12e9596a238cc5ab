//! The Modbus TCP variant of the simulator (tokio-modbus' TCP server).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{LineEffects, SimHandle, SimMap, SimService};

/// The units of a [`SimMap`] behind one Modbus TCP endpoint (unit id = MBAP unit id).
///
/// Faults work as on RTU except `garbage` and `bad_crc`, which make the unit silent (TCP has
/// no line noise). Dropping it (or [`stop`](Self::stop)) closes the listener and every
/// connection.
#[derive(Debug)]
pub struct TcpSim {
    handle: SimHandle,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for TcpSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpSim {
    /// Serves `map` on `127.0.0.1` at a free port.
    pub async fn start(map: SimMap) -> io::Result<Self> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), map).await
    }

    /// Serves `map` on `addr`.
    pub async fn bind(addr: SocketAddr, map: SimMap) -> io::Result<Self> {
        let handle = SimHandle::new(map);
        let (addr, task) = serve(addr, &handle).await?;
        Ok(Self { handle, addr, task })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Run-time control: values, fault switches, counters.
    pub fn handle(&self) -> &SimHandle {
        &self.handle
    }

    /// Stops serving: the listener and all connections close (clients see a reset/EOF).
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Stops (if running) and serves again on the same address with the same units, values
    /// and faults: the endpoint "reboots".
    pub async fn restart(&mut self) -> io::Result<()> {
        self.task.abort();
        // Wait until the old listener is really closed before binding its address again.
        let _ = (&mut self.task).await;
        let (_, task) = serve(self.addr, &self.handle).await?;
        self.task = task;
        Ok(())
    }
}

async fn serve(addr: SocketAddr, handle: &SimHandle) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("binding Modbus TCP simulator to {addr}: {e}"),
        )
    })?;
    let addr = listener.local_addr()?;
    let service = SimService {
        handle: handle.clone(),
        // No noise channel: a `garbage` unit is silent on TCP.
        line: Arc::new(LineEffects::default()),
    };
    let server = tokio_modbus::server::tcp::Server::new(listener);
    let task = tokio::spawn(async move {
        let on_connected = |stream: TcpStream, _peer: SocketAddr| {
            let service = service.clone();
            async move { io::Result::Ok(Some((service, stream))) }
        };
        let on_error = |e: io::Error| tracing::debug!("Modbus TCP simulator connection: {e}");
        if let Err(e) = server.serve(&on_connected, on_error).await {
            tracing::warn!("Modbus TCP simulator stopped: {e}");
        }
    });
    Ok((addr, task))
}
