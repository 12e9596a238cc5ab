//! The RTU line of the simulator.
//!
//! tokio-modbus' RTU server only accepts a `tokio_serial::SerialStream`, and dies on the first
//! undecodable request. So the server runs on an internal pty pair (the "cable", from
//! `SerialStream::pair`) and a line task bridges the cable to the client-facing port (a
//! [`VirtualPort`], a real serial port, or a TCP socket for RTU over TCP). The line task is where line faults happen (noise,
//! corrupted CRCs, unplug/replug), and it replaces the cable and server whenever the server
//! stops, so the client-facing port never notices a server restart.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_serial::SerialStream;

use super::{LineEffects, SimHandle, SimMap, SimService};
use crate::pty::{PtyMaster, VirtualPort};
use crate::serial::{self, SerialError, SerialSettings};

/// How long the line waits for the client side to take bytes before dropping them (nobody
/// is reading, e.g. no client has the pty open and its buffer is full).
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Retry period for reopening a real serial port, or rebuilding the cable after a failure.
const RETRY: Duration = Duration::from_millis(500);

enum Ctl {
    Unplug(oneshot::Sender<io::Result<()>>),
    Replug(oneshot::Sender<io::Result<PathBuf>>),
    Noise(Vec<u8>),
}

/// A simulated RTU line: the units of a [`SimMap`] answering on one serial port.
///
/// Dropping it stops the simulator (and unplugs its pty).
#[derive(Debug)]
pub struct RtuSim {
    handle: SimHandle,
    path: PathBuf,
    tcp_addr: Option<SocketAddr>,
    ctl: mpsc::UnboundedSender<Ctl>,
    task: JoinHandle<()>,
}

impl Drop for RtuSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RtuSim {
    /// Serves `map` on a fresh pseudo-terminal behind the symlink `link` (replaced if it
    /// exists). The client opens [`path`](Self::path) with any line settings.
    ///
    /// Must be called inside a tokio runtime.
    pub fn start(link: impl Into<PathBuf>, map: SimMap) -> io::Result<Self> {
        let port = VirtualPort::new(link)?;
        let path = port.path().to_owned();
        Ok(Self::spawn(Client::Pty(port), path, None, map))
    }

    /// Serves `map` as RTU frames over TCP on `addr` (port 0 picks a free one), like a
    /// transparent serial device server with the units on its RS-485 side. One connection
    /// at a time (others wait in the backlog until it closes); the client connects to
    /// [`tcp_addr`](Self::tcp_addr). [`unplug`](Self::unplug) closes the current connection.
    pub async fn start_rtu_over_tcp(addr: SocketAddr, map: SimMap) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("binding RTU-over-TCP simulator to {addr}: {e}"),
            )
        })?;
        let addr = listener.local_addr()?;
        let client = Client::Tcp {
            listener,
            conn: None,
        };
        Ok(Self::spawn(client, PathBuf::new(), Some(addr), map))
    }

    /// Serves `map` on a real serial port (e.g. a USB adapter wired to the gateway under
    /// test). The port is reopened every 500 ms while it fails.
    pub fn start_on_serial(settings: SerialSettings, map: SimMap) -> Result<Self, SerialError> {
        let port = serial::open(&settings)?;
        let path = settings.path.clone();
        Ok(Self::spawn(
            Client::Serial {
                settings,
                port: Some(port),
            },
            path,
            None,
            map,
        ))
    }

    fn spawn(client: Client, path: PathBuf, tcp_addr: Option<SocketAddr>, map: SimMap) -> Self {
        let handle = SimHandle::new(map);
        let (noise_tx, noise_rx) = mpsc::unbounded_channel();
        let line = Arc::new(LineEffects {
            noise: Some(noise_tx),
            ..LineEffects::default()
        });
        let service = SimService {
            handle: handle.clone(),
            line: Arc::clone(&line),
        };
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run_line(client, service, line, ctl_rx, noise_rx));
        Self {
            handle,
            path,
            tcp_addr,
            ctl,
            task,
        }
    }

    /// The path the client opens (the stable symlink, or the real port); empty for RTU over
    /// TCP.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The address to connect to for RTU over TCP, `None` for serial lines.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// Run-time control: values, fault switches, counters.
    pub fn handle(&self) -> &SimHandle {
        &self.handle
    }

    /// Puts raw bytes on the line now (noise between or inside frames).
    pub fn inject_noise(&self, bytes: &[u8]) {
        // The line task lives as long as `self`.
        let _ = self.ctl.send(Ctl::Noise(bytes.to_vec()));
    }

    /// Unplugs the adapter: the pty master is closed (the client's reads fail or hit EOF, its
    /// writes fail) and the symlink is removed, like a vanishing `/dev/serial/by-id` link.
    /// For RTU over TCP: closes the current connection. Answers in flight are lost. Fails for
    /// a real serial port.
    pub async fn unplug(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.ctl.send(Ctl::Unplug(tx)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Plugs a new pty in behind the same path (after [`unplug`](Self::unplug), or to
    /// force a hang-up on the current client). Returns the new `/dev/pts/N`.
    pub async fn replug(&self) -> io::Result<PathBuf> {
        let (tx, rx) = oneshot::channel();
        self.ctl.send(Ctl::Replug(tx)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

fn stopped() -> io::Error {
    io::Error::other("simulator line task has stopped")
}

/// The client-facing side of the line.
enum Client {
    Pty(VirtualPort),
    Serial {
        settings: SerialSettings,
        port: Option<SerialStream>,
    },
    Tcp {
        listener: TcpListener,
        conn: Option<TcpStream>,
    },
}

/// Reads from `io` or waits forever when there is none.
async fn read_opt<T: AsyncRead + Unpin>(io: Option<&mut T>, buf: &mut [u8]) -> io::Result<usize> {
    match io {
        Some(io) => io.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn write_opt<T: AsyncWrite + Unpin>(io: Option<&mut T>, bytes: &[u8]) {
    if let Some(io) = io {
        match tokio::time::timeout(CLIENT_WRITE_TIMEOUT, io.write_all(bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!("simulator: writing to the client side: {e}"),
            Err(_) => tracing::debug!(
                "simulator: client side not reading; dropped {} bytes",
                bytes.len()
            ),
        }
    }
}

impl Client {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Client::Pty(port) => read_opt(port.master(), buf).await,
            Client::Serial { port, .. } => read_opt(port.as_mut(), buf).await,
            Client::Tcp { listener, conn } => loop {
                // Both awaits are cancel-safe: a dropped read loses neither bytes nor a
                // connection.
                match conn {
                    Some(c) => return c.read(buf).await,
                    None => match listener.accept().await {
                        Ok((c, _peer)) => *conn = Some(c),
                        Err(e) => return Err(e),
                    },
                }
            },
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        match self {
            Client::Pty(port) => write_opt::<PtyMaster>(port.master(), bytes).await,
            Client::Serial { port, .. } => write_opt(port.as_mut(), bytes).await,
            Client::Tcp { conn, .. } => write_opt(conn.as_mut(), bytes).await,
        }
    }

    /// The client side failed (read error or EOF).
    fn failed(&mut self, why: &str) {
        match self {
            Client::Pty(port) => {
                // Should not happen (no client is not an error for a pty master); treat it as
                // an unplug rather than spin on a failing fd (the link goes too: it must never
                // point at a closed pty, see `VirtualPort::unplug`).
                tracing::warn!("simulator: pty master: {why}; unplugged");
                if let Err(e) = port.unplug() {
                    tracing::warn!("simulator: {e}");
                }
            }
            Client::Serial { settings, port } => {
                tracing::warn!(
                    "simulator: serial port {}: {why}; reopening",
                    settings.path.display()
                );
                *port = None;
            }
            Client::Tcp { conn, .. } => {
                tracing::debug!("simulator: RTU-over-TCP connection: {why}; waiting for the next");
                *conn = None;
            }
        }
    }

    /// For a real port that failed: time to try reopening.
    fn needs_reopen(&self) -> bool {
        matches!(self, Client::Serial { port: None, .. })
    }

    fn reopen(&mut self) {
        if let Client::Serial { settings, port } = self {
            match serial::open(settings) {
                Ok(p) => *port = Some(p),
                Err(e) => tracing::debug!("simulator: {e}"),
            }
        }
    }
}

/// The internal pty pair with the tokio-modbus server on one end.
struct Cable {
    io: SerialStream,
    server: JoinHandle<io::Result<()>>,
}

impl Drop for Cable {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn new_cable(service: &SimService) -> io::Result<Cable> {
    let (server_end, line_end) = SerialStream::pair().map_err(io::Error::from)?;
    let server = tokio_modbus::server::rtu::Server::new(server_end);
    let service = service.clone();
    Ok(Cable {
        io: line_end,
        server: tokio::spawn(server.serve_forever(service)),
    })
}

async fn run_line(
    mut client: Client,
    service: SimService,
    line: Arc<LineEffects>,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
    mut noise: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let mut cable: Option<Cable> = None;
    let mut from_client = vec![0u8; 1024];
    let mut from_server = vec![0u8; 1024];
    loop {
        if cable.is_none() {
            match new_cable(&service) {
                Ok(c) => cable = Some(c),
                Err(e) => {
                    tracing::warn!("simulator: creating the internal pty pair: {e}");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        if client.needs_reopen() {
            tokio::time::sleep(RETRY).await;
            client.reopen();
            continue;
        }
        let c = cable.as_mut().expect("cable created above");
        let mut reset_cable = false;
        tokio::select! {
            r = client.read(&mut from_client) => match r {
                Ok(0) => client.failed("end of file"),
                Ok(n) => {
                    if let Err(e) = c.io.write_all(&from_client[..n]).await {
                        tracing::warn!("simulator: writing to the server: {e}");
                        reset_cable = true;
                    }
                }
                Err(e) => client.failed(&e.to_string()),
            },
            r = c.io.read(&mut from_server) => match r {
                Ok(n) if n > 0 => {
                    let chunk = &mut from_server[..n];
                    if line
                        .corrupt_next
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| k.checked_sub(1))
                        .is_ok()
                    {
                        // Flip the last byte: the CRC (or, for a split frame, the data) breaks.
                        chunk[n - 1] ^= 0xA5;
                    }
                    client.write(chunk).await;
                }
                _ => reset_cable = true,
            },
            r = &mut c.server => {
                tracing::debug!("simulator: RTU server stopped ({r:?}); restarting it");
                reset_cable = true;
            }
            Some(bytes) = noise.recv() => client.write(&bytes).await,
            cmd = ctl.recv() => match cmd {
                None => return,
                Some(Ctl::Noise(bytes)) => client.write(&bytes).await,
                Some(Ctl::Unplug(ack)) => {
                    let r = match &mut client {
                        Client::Pty(port) => {
                            // Answers in flight die with the adapter: restart the server so
                            // that none reaches the next client.
                            reset_cable = true;
                            port.unplug()
                        }
                        Client::Tcp { conn, .. } => {
                            reset_cable = true;
                            *conn = None;
                            Ok(())
                        }
                        Client::Serial { .. } => Err(io::Error::other("a real serial port cannot be unplugged by software")),
                    };
                    let _ = ack.send(r);
                }
                Some(Ctl::Replug(ack)) => {
                    let r = match &mut client {
                        Client::Pty(port) => {
                            reset_cable = true;
                            port.replug().map(|m| m.slave_path().to_owned())
                        }
                        Client::Serial { .. } | Client::Tcp { .. } => Err(io::Error::other("only a pty line can be replugged")),
                    };
                    let _ = ack.send(r);
                }
            },
        }
        if reset_cable {
            cable = None;
        }
    }
}
