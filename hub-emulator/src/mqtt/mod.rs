//! The device-side MQTT 3.1.1 server: over TCP or TLS, and over WebSocket (plain or TLS).

pub mod session;
pub mod topics;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::state::SharedState;

/// A TLS handshake that takes longer than this is abandoned.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a listener carries MQTT in, inside the optional TLS layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The MQTT byte stream directly (IoT Hub's port 8883).
    Raw,
    /// Binary WebSocket frames after an upgrade on [`ws::WS_PATH`] (IoT Hub's port 443).
    WebSocket,
}

/// Accepts device connections on `listener` until the task is dropped or aborted; dropping it
/// also aborts every connection it accepted.
pub async fn accept_loop(
    listener: TcpListener,
    hub: SharedState,
    tls: Option<Arc<rustls::ServerConfig>>,
    transport: Transport,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connection tasks so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
        let (tcp, peer) = match listener.accept().await {
            Ok(ok) => ok,
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accepting an MQTT connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let hub = hub.clone();
        let acceptor = acceptor.clone();
        connections.spawn(async move {
            match acceptor {
                None => serve(tcp, transport, hub, peer, None).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let cert = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| c.clone().into_owned());
                            serve(tls, transport, hub, peer, cert).await;
                        }
                        Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Serves one accepted (and TLS-terminated) stream in `transport`.
async fn serve<S>(
    stream: S,
    transport: Transport,
    hub: SharedState,
    peer: SocketAddr,
    cert: Option<CertificateDer<'static>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    match transport {
        Transport::Raw => session::serve(stream, hub, peer, cert).await,
        Transport::WebSocket => {
            if let Some(ws) = ws::upgrade(stream, peer).await {
                session::serve(ws, hub, peer, cert).await;
            }
        }
    }
}
