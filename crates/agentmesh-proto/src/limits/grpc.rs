//! The gRPC side of the limits: a tonic server builder with them applied, the stream that
//! holds a connection's slot and cuts it without a timely HTTP/2 preface, and the Unix-socket
//! accept loop. Kept apart from the HTTP serving code, which shares only the counting.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::time::Sleep;

use super::{
    Caller, ConnectionLimiter, ConnectionSlot, Cut, H2_PREFACE_LEN, ListenerLimits, OnCut, logging,
};

/// A gRPC server builder with the limits applied: header list size, streams per connection,
/// and keepalive pings at `body_idle_timeout` that must be answered within `header_timeout`.
pub fn grpc_server(limits: &ListenerLimits) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(limits.body_idle_timeout))
        .http2_keepalive_timeout(Some(limits.header_timeout))
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
}

/// A connection that holds its [`ConnectionSlot`] while open and is cut if its HTTP/2
/// preface has not arrived within `header_timeout` of the accept.
pub struct LimitedStream<T> {
    inner: T,
    _slot: ConnectionSlot,
    preface: Option<(Pin<Box<Sleep>>, usize)>,
    peer: Caller,
    on_cut: Option<OnCut>,
}

impl<T: fmt::Debug> fmt::Debug for LimitedStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitedStream")
            .field("inner", &self.inner)
            .field("peer", &self.peer)
            .field("awaiting_preface", &self.preface.is_some())
            .finish_non_exhaustive()
    }
}

impl<T> LimitedStream<T> {
    /// Wraps an admitted connection.
    pub fn new(
        inner: T,
        slot: ConnectionSlot,
        limits: &ListenerLimits,
        peer: Caller,
        on_cut: OnCut,
    ) -> Self {
        Self {
            inner,
            _slot: slot,
            preface: Some((
                Box::pin(tokio::time::sleep(limits.header_timeout)),
                H2_PREFACE_LEN,
            )),
            peer,
            on_cut: Some(on_cut),
        }
    }

    /// Who is on the other end.
    pub fn peer(&self) -> &Caller {
        &self.peer
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected
    for LimitedStream<T>
{
    type ConnectInfo = T::ConnectInfo;
    fn connect_info(&self) -> T::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for LimitedStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if let Some((_, missing)) = &mut this.preface {
                    *missing = missing.saturating_sub(buf.filled().len() - before);
                    if *missing == 0 {
                        this.preface = None;
                    }
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if let Some((deadline, _)) = &mut this.preface
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    this.preface = None;
                    if let Some(on_cut) = this.on_cut.take() {
                        on_cut(Cut::HeaderTimeout);
                    }
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no HTTP/2 preface within limits.header_timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for LimitedStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Accepts on a Unix socket for a tonic server: each connection is counted against its uid
/// and the listener's total (over either it is closed at once), and cut if it sends no HTTP/2
/// preface within `header_timeout`. `listener` names the socket in log lines. The accept loop
/// ends when the server drops the stream.
pub fn unix_incoming(
    listener: UnixListener,
    limits: &ListenerLimits,
    name: &'static str,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<LimitedStream<UnixStream>>> {
    let (tx, rx) = mpsc::channel(64);
    let limiter = ConnectionLimiter::new(limits);
    let limits = limits.clone();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            let stream = match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let caller = Caller::of_unix(&stream);
            let on_cut = logging(name, caller.clone());
            match limiter.admit_caller(caller.clone()) {
                Ok(slot) => {
                    let conn = LimitedStream::new(stream, slot, &limits, caller, on_cut);
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Err(cut) => on_cut(cut),
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
