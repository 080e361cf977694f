//! The node API's listener: TCP, then a TLS 1.3 handshake, then gRPC. The peer's SPIFFE ID
//! (if it presented a certificate) travels to the handlers as connection info.

use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use agentmesh_spiffe::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use agentmesh_proto::limits::{
    Caller, ConnectionLimiter, Cut, LimitedStream, ListenerLimits, log_cut,
};

/// Names the node API in log lines.
const LISTENER: &str = "node API";

/// Who is on the other end of a node API connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The SPIFFE ID of the verified client certificate, if one was presented.
    pub spiffe_id: Option<SpiffeId>,
}

/// A TLS connection that tonic can serve; it holds its place in the listener's connection
/// count and is cut if no HTTP/2 preface follows the handshake in time.
#[derive(Debug)]
pub struct TlsConn {
    stream: LimitedStream<TlsStream<TcpStream>>,
    peer: PeerInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The TLS config in force; swapped when the bundle or the server's certificate changes.
pub type SharedTlsConfig = Arc<RwLock<Arc<rustls::ServerConfig>>>;

/// Accepts TCP connections, runs each handshake on its own task (a slow client cannot stall
/// others), and yields the finished ones. `limits` bounds the handshake, the preface, and the
/// connections of each caller (the node's SPIFFE ID, or the address of a node still
/// attesting with a join token) and in total.
pub fn incoming(
    listener: TcpListener,
    config: SharedTlsConfig,
    limits: ListenerLimits,
) -> mpsc::Receiver<Result<TlsConn, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let limiter = ConnectionLimiter::new(&limits);
    tokio::spawn(async move {
        loop {
            // Stop (and close the listening socket) as soon as the server stops taking
            // connections, so a restart can bind the same port at once.
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            let (tcp, remote_addr) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "node API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let mut slot = match limiter.admit() {
                Ok(slot) => slot,
                Err(cut) => {
                    log_cut(LISTENER, &remote_addr, cut);
                    continue;
                }
            };
            let cfg = config.read().unwrap_or_else(|e| e.into_inner()).clone();
            let conn_tx = tx.clone();
            let limits = limits.clone();
            tokio::spawn(async move {
                let handshake = TlsAcceptor::from(cfg).accept(tcp);
                let stream = match tokio::time::timeout(limits.handshake_timeout, handshake).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::warn!(peer = %remote_addr, error = %e, "node API TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        log_cut(LISTENER, &remote_addr, Cut::HandshakeTimeout);
                        return;
                    }
                };
                let spiffe_id = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| agentmesh_tls::peer_spiffe_id(c).ok());
                let caller = spiffe_id
                    .as_ref()
                    .map_or(Caller::Ip(remote_addr.ip()), |id| {
                        Caller::Spiffe(id.to_string())
                    });
                if let Err(cut) = slot.identify(caller.clone()) {
                    log_cut(LISTENER, &caller, cut);
                    return;
                }
                let on_cut = agentmesh_proto::limits::logging(LISTENER, caller.clone());
                let conn = TlsConn {
                    stream: LimitedStream::new(stream, slot, &limits, caller, on_cut),
                    peer: PeerInfo { spiffe_id },
                };
                let _ = conn_tx.send(Ok(conn)).await;
            });
        }
    });
    rx
}
