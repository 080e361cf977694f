//! The TLS accept loop of every tonic server over TCP (the server's node API, and services
//! built on the SDK's gRPC helpers): handshakes on their own tasks under a deadline, then the
//! connection counted against the caller its certificate names and cut without a timely
//! HTTP/2 preface.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::{Caller, ConnectionLimiter, Cut, LimitedStream, ListenerLimits, log_cut, logging};

/// A finished TLS connection tonic can serve. It holds its place in the listener's connection
/// count while open, and hands the handlers `P` (what the handshake said about the peer) as
/// tonic's connect info.
#[derive(Debug)]
pub struct TlsConn<P> {
    stream: LimitedStream<TlsStream<TcpStream>>,
    peer: P,
}

impl<P: Clone + Send + Sync + 'static> tonic::transport::server::Connected for TlsConn<P> {
    type ConnectInfo = P;
    fn connect_info(&self) -> P {
        self.peer.clone()
    }
}

impl<P: Unpin> AsyncRead for TlsConn<P> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl<P: Unpin> AsyncWrite for TlsConn<P> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Accepts TCP connections for a tonic server over TLS. Each handshake runs on its own task
/// under `limits.handshake_timeout`, so a slow client cannot stall others. `config` gives the
/// TLS config in force for each new connection (`None` refuses it: there is none yet).
/// `identify` reads the finished handshake: what the handlers see of the peer, and the
/// [`Caller`] its connections are counted against; `None` refuses the connection. `name`
/// names the listener in log lines. The accept loop ends, closing the listening socket, when
/// the server drops the stream, so a restart can bind the same port at once.
pub fn tls_incoming<P, C, I>(
    listener: TcpListener,
    name: &'static str,
    limits: ListenerLimits,
    config: C,
    identify: I,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsConn<P>>>
where
    P: Send + 'static,
    C: Fn() -> Option<Arc<rustls::ServerConfig>> + Send + 'static,
    I: Fn(&rustls::ServerConnection, SocketAddr) -> Option<(P, Caller)> + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let limiter = ConnectionLimiter::new(&limits);
    let identify = Arc::new(identify);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            let (tcp, remote_addr) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let mut slot = match limiter.admit() {
                Ok(slot) => slot,
                Err(cut) => {
                    log_cut(name, &remote_addr, cut);
                    continue;
                }
            };
            let Some(cfg) = config() else {
                tracing::error!(listener = name, peer = %remote_addr, "no TLS config for a new connection");
                continue;
            };
            let conn_tx = tx.clone();
            let limits = limits.clone();
            let identify = Arc::clone(&identify);
            tokio::spawn(async move {
                let handshake = TlsAcceptor::from(cfg).accept(tcp);
                let stream = match tokio::time::timeout(limits.handshake_timeout, handshake).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::warn!(listener = name, peer = %remote_addr, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        log_cut(name, &remote_addr, Cut::HandshakeTimeout);
                        return;
                    }
                };
                let Some((peer, caller)) = identify(stream.get_ref().1, remote_addr) else {
                    tracing::warn!(listener = name, peer = %remote_addr, "refused: no usable identity in the handshake");
                    return;
                };
                if let Err(cut) = slot.identify(caller.clone()) {
                    log_cut(name, &caller, cut);
                    return;
                }
                let on_cut = logging(name, caller.clone());
                let conn = TlsConn {
                    stream: LimitedStream::new(stream, slot, &limits, caller, on_cut),
                    peer,
                };
                let _ = conn_tx.send(Ok(conn)).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
