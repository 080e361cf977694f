//! The hop between an app and its sidecar, authenticated by the kernel.
//!
//! Loopback TCP is open to every process on the host, so an app that listens on
//! `127.0.0.1:PORT` can be reached past its sidecar, and a sidecar's outbound port lends the
//! service's identity to anyone who connects. Here both ends of that hop can be a Unix socket
//! instead: created 0600 in a directory of its own, and every accepted connection's peer
//! credentials (SO_PEERCRED) are checked against the uid this process runs as, so a process
//! of another user is refused before it sends a byte, even if the file mode were loosened.
//! This is what Consul offers as `local_service_socket_path` and `local_bind_socket_path`.
//!
//! The boundary is the uid: processes of the same user can read each other's memory anyway
//! (ptrace, `/proc/PID/mem`), so they are one principal, as a `unix:uid` selector says.
//!
//! [`LocalAddr`] is the spelling in configs (`unix:///path` or `host:port`), [`LocalListener`]
//! accepts (and serves axum routers, see [`LocalPeer`]), and [`LocalConnector`] dials for
//! hyper clients.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// The longest socket path the kernel accepts (`sun_path` is 108 bytes with the final NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Why a local address cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    /// The text is neither `unix:///absolute/path` nor `host:port`.
    #[error("{0:?} is neither unix:///absolute/path nor host:port")]
    Malformed(String),
    /// A socket path longer than the kernel allows.
    #[error("socket path {0} is {1} bytes; the kernel allows at most {MAX_SOCKET_PATH}")]
    PathTooLong(PathBuf, usize),
    /// Binding failed.
    #[error("cannot listen on {0}: {1}")]
    Bind(String, io::Error),
    /// A live process already serves the socket.
    #[error("{0} is in use by another running process")]
    InUse(PathBuf),
}

/// Where an app or a sidecar listens, or dials, on this host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LocalAddr {
    /// `host:port` over TCP: open to every local user (and to the network unless loopback).
    Tcp(String),
    /// `unix:///absolute/path`: only this uid (and root) gets through.
    Unix(PathBuf),
}

impl LocalAddr {
    /// Whether this is a Unix socket, whose peers are checked.
    pub fn is_unix(&self) -> bool {
        matches!(self, LocalAddr::Unix(_))
    }

    /// Whether only this host can reach it: a Unix socket, or TCP on a loopback IP (a name
    /// is not resolved, so it does not count).
    pub fn is_host_local(&self) -> bool {
        match self {
            LocalAddr::Unix(_) => true,
            LocalAddr::Tcp(_) => self.tcp_socket_addr().is_some_and(|a| a.ip().is_loopback()),
        }
    }

    /// The Unix socket path, if it is one.
    pub fn unix_path(&self) -> Option<&Path> {
        match self {
            LocalAddr::Unix(p) => Some(p),
            LocalAddr::Tcp(_) => None,
        }
    }

    /// The TCP socket address, if this is `ip:port` (no name to resolve).
    pub fn tcp_socket_addr(&self) -> Option<SocketAddr> {
        match self {
            LocalAddr::Tcp(a) => a.parse().ok(),
            LocalAddr::Unix(_) => None,
        }
    }

    /// A base URL for HTTP clients: `http://host:port`, or `http://localhost` for a socket
    /// (the connector ignores the host then, and the app sees `Host: localhost`).
    pub fn http_base(&self) -> String {
        match self {
            LocalAddr::Tcp(a) => format!("http://{a}"),
            LocalAddr::Unix(_) => "http://localhost".to_owned(),
        }
    }
}

impl fmt::Display for LocalAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalAddr::Tcp(a) => f.write_str(a),
            LocalAddr::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

impl FromStr for LocalAddr {
    type Err = LocalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || LocalError::Malformed(s.to_owned());
        if let Some(rest) = s.strip_prefix("unix:") {
            // unix:///abs (URL form, as SPIFFE_ENDPOINT_SOCKET) or unix:/abs.
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if !path.starts_with('/') || path.contains('\0') || path.ends_with('/') {
                return Err(malformed());
            }
            if path.len() > MAX_SOCKET_PATH {
                return Err(LocalError::PathTooLong(path.into(), path.len()));
            }
            return Ok(LocalAddr::Unix(PathBuf::from(path)));
        }
        match s.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty()
                    && port.parse::<u16>().is_ok()
                    && !host.contains(['/', '\\', '@', '?', '#', ' ']) =>
            {
                Ok(LocalAddr::Tcp(s.to_owned()))
            }
            _ => Err(malformed()),
        }
    }
}

impl From<SocketAddr> for LocalAddr {
    fn from(a: SocketAddr) -> Self {
        LocalAddr::Tcp(a.to_string())
    }
}

impl serde::Serialize for LocalAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for LocalAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The effective uid of this process, read once from `/proc/self/status` (std has no
/// `geteuid` and this crate has no `unsafe`).
pub fn own_uid() -> Option<u32> {
    static UID: OnceLock<Option<u32>> = OnceLock::new();
    *UID.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("Uid:"))?;
        // Uid: real effective saved filesystem
        line.split_whitespace().nth(2)?.parse().ok()
    })
}

/// Whether a peer of uid `uid` may use this process's local sockets: the same user, or root
/// (which can bypass every file permission anyway).
pub fn uid_allowed(uid: u32) -> bool {
    uid == 0 || Some(uid) == own_uid()
}

/// Who is on the other end of an accepted local connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalPeer {
    /// A TCP peer: any local user could be behind it.
    Tcp(SocketAddr),
    /// A Unix socket peer whose uid the kernel reported and [`uid_allowed`] admitted.
    Unix {
        /// The peer's uid.
        uid: u32,
        /// The peer's pid, when the kernel reports one.
        pid: Option<i32>,
    },
}

impl LocalPeer {
    /// Whether the kernel vouched for this peer (a checked Unix socket peer).
    pub fn is_verified(&self) -> bool {
        matches!(self, LocalPeer::Unix { .. })
    }
}

impl fmt::Display for LocalPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalPeer::Tcp(a) => write!(f, "{a}"),
            LocalPeer::Unix { uid, pid: Some(p) } => write!(f, "uid={uid} pid={p}"),
            LocalPeer::Unix { uid, pid: None } => write!(f, "uid={uid}"),
        }
    }
}

/// A connection accepted by, or dialled to, a [`LocalAddr`].
#[derive(Debug)]
pub enum LocalStream {
    /// Over TCP.
    Tcp(TcpStream),
    /// Over a Unix socket.
    Unix(UnixStream),
}

impl LocalStream {
    /// Connects to `addr`.
    ///
    /// # Errors
    /// Nothing listens there, or the connection is refused.
    pub async fn connect(addr: &LocalAddr) -> io::Result<Self> {
        match addr {
            LocalAddr::Tcp(a) => {
                let s = TcpStream::connect(a.as_str()).await?;
                let _ = s.set_nodelay(true);
                Ok(LocalStream::Tcp(s))
            }
            LocalAddr::Unix(p) => Ok(LocalStream::Unix(UnixStream::connect(p).await?)),
        }
    }
}

impl AsyncRead for LocalStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LocalStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            LocalStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for LocalStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            LocalStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            LocalStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LocalStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            LocalStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LocalStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            LocalStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            LocalStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            LocalStream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            LocalStream::Tcp(s) => s.is_write_vectored(),
            LocalStream::Unix(s) => s.is_write_vectored(),
        }
    }
}

/// A bound [`LocalAddr`]. On a Unix socket, peers of another uid are refused at accept (and
/// logged), so everything [`LocalListener::accept`] returns passed the check.
#[derive(Debug)]
pub enum LocalListener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A Unix socket listener, and its path.
    Unix(UnixListener, PathBuf),
}

/// Binds a Unix socket 0600, replacing a stale file from a process that died but never a
/// socket a live process serves. The parent directory is created 0700 if missing.
fn bind_unix(path: &Path) -> Result<UnixListener, LocalError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |e| LocalError::Bind(format!("unix://{}", path.display()), e);
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(LocalError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

impl LocalListener {
    /// Binds `addr` (a Unix socket is created 0600).
    ///
    /// # Errors
    /// The address is in use or cannot be bound.
    pub async fn bind(addr: &LocalAddr) -> Result<Self, LocalError> {
        match addr {
            LocalAddr::Tcp(a) => TcpListener::bind(a.as_str())
                .await
                .map(LocalListener::Tcp)
                .map_err(|e| LocalError::Bind(a.clone(), e)),
            LocalAddr::Unix(p) => Ok(LocalListener::Unix(bind_unix(p)?, p.clone())),
        }
    }

    /// What was bound (a TCP port 0 resolved to the real port).
    pub fn local_addr(&self) -> LocalAddr {
        match self {
            LocalListener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| LocalAddr::Tcp(String::new()), LocalAddr::from),
            LocalListener::Unix(_, p) => LocalAddr::Unix(p.clone()),
        }
    }

    /// The next connection that passed the peer check. A refused Unix peer is logged with its
    /// uid and pid and dropped unread.
    ///
    /// # Errors
    /// The accept call itself failed (out of file descriptors, for one).
    pub async fn accept(&self) -> io::Result<(LocalStream, LocalPeer)> {
        match self {
            LocalListener::Tcp(l) => {
                let (s, a) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((LocalStream::Tcp(s), LocalPeer::Tcp(a)))
            }
            LocalListener::Unix(l, path) => loop {
                let (s, _) = l.accept().await?;
                match check_unix_peer(&s) {
                    Ok(peer) => return Ok((LocalStream::Unix(s), peer)),
                    Err(why) => {
                        tracing::warn!(socket = %path.display(), %why, "local connection refused: another user's process");
                    }
                }
            },
        }
    }
}

/// Admits a Unix socket peer of this uid (or root).
///
/// # Errors
/// The kernel gave no credentials, or they name another uid.
pub fn check_unix_peer(s: &UnixStream) -> Result<LocalPeer, String> {
    let cred = s
        .peer_cred()
        .map_err(|e| format!("no peer credentials: {e}"))?;
    let peer = LocalPeer::Unix {
        uid: cred.uid(),
        pid: cred.pid(),
    };
    if uid_allowed(cred.uid()) {
        Ok(peer)
    } else {
        Err(format!(
            "peer {peer} is not uid {}",
            own_uid().map_or_else(|| "?".to_owned(), |u| u.to_string())
        ))
    }
}

/// A [`LocalListener`] outside any runtime, so one bound socket can be handed to several
/// single-threaded runtimes (the proxy's workers): the kernel gives each connection to
/// whichever accepts first.
#[derive(Debug)]
pub enum StdLocalListener {
    /// A TCP listener.
    Tcp(std::net::TcpListener),
    /// A Unix socket listener and its path.
    Unix(std::os::unix::net::UnixListener, PathBuf),
}

impl LocalListener {
    /// Leaves the runtime (non-blocking mode stays set).
    ///
    /// # Errors
    /// The descriptor cannot be taken out of the reactor.
    pub fn into_std(self) -> io::Result<StdLocalListener> {
        match self {
            LocalListener::Tcp(l) => l.into_std().map(StdLocalListener::Tcp),
            LocalListener::Unix(l, p) => l.into_std().map(|l| StdLocalListener::Unix(l, p)),
        }
    }
}

impl StdLocalListener {
    /// Another handle on the same socket.
    ///
    /// # Errors
    /// Out of file descriptors.
    pub fn try_clone(&self) -> io::Result<Self> {
        match self {
            StdLocalListener::Tcp(l) => l.try_clone().map(StdLocalListener::Tcp),
            StdLocalListener::Unix(l, p) => {
                l.try_clone().map(|l| StdLocalListener::Unix(l, p.clone()))
            }
        }
    }

    /// Joins the current runtime.
    ///
    /// # Errors
    /// Not called within a runtime, or the reactor refuses the descriptor.
    pub fn into_tokio(self) -> io::Result<LocalListener> {
        match self {
            StdLocalListener::Tcp(l) => TcpListener::from_std(l).map(LocalListener::Tcp),
            StdLocalListener::Unix(l, p) => {
                UnixListener::from_std(l).map(|l| LocalListener::Unix(l, p))
            }
        }
    }
}

impl agentmesh_proto::limits::Accept for LocalListener {
    type Io = LocalStream;
    type Peer = LocalPeer;

    async fn accept_caller(
        &self,
    ) -> io::Result<(Self::Io, Self::Peer, agentmesh_proto::limits::Caller)> {
        use agentmesh_proto::limits::Caller;
        let (io, peer) = self.accept().await?;
        let caller = match &peer {
            LocalPeer::Tcp(a) => Caller::Ip(a.ip()),
            LocalPeer::Unix { uid, .. } => Caller::Uid(*uid),
        };
        Ok((io, peer, caller))
    }
}

impl axum::serve::Listener for LocalListener {
    type Io = LocalStream;
    type Addr = LocalPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match LocalListener::accept(self).await {
                Ok(a) => return a,
                Err(e) => {
                    // As axum's own listeners do: out of descriptors is worth a pause.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        match self {
            LocalListener::Tcp(l) => l.local_addr().map(LocalPeer::Tcp),
            LocalListener::Unix(..) => Ok(LocalPeer::Unix {
                uid: own_uid().unwrap_or(u32::MAX),
                pid: None,
            }),
        }
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, LocalListener>>
    for LocalPeer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, LocalListener>) -> Self {
        stream.remote_addr().clone()
    }
}

impl Connection for LocalStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// A hyper-util connector that dials one [`LocalAddr`] whatever the request's URI says (a
/// socket has no host), or, for [`LocalConnector::by_uri`], the URI's `host:port`.
#[derive(Debug, Clone)]
pub struct LocalConnector {
    target: Option<LocalAddr>,
}

impl LocalConnector {
    /// Always dials `target`.
    pub fn to(target: LocalAddr) -> Self {
        Self {
            target: Some(target),
        }
    }

    /// Dials the URI's authority over TCP, like hyper's `HttpConnector`.
    pub fn by_uri() -> Self {
        Self { target: None }
    }
}

impl tower::Service<http::Uri> for LocalConnector {
    type Response = TokioIo<LocalStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let target = self.target.clone();
        Box::pin(async move {
            let addr = match target {
                Some(t) => t,
                None => {
                    let host = uri.host().ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidInput, format!("{uri} has no host"))
                    })?;
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    let port = uri.port_u16().unwrap_or(80);
                    let a = if host.contains(':') {
                        format!("[{host}]:{port}")
                    } else {
                        format!("{host}:{port}")
                    };
                    LocalAddr::Tcp(a)
                }
            };
            LocalStream::connect(&addr).await.map(TokioIo::new)
        })
    }
}

/// A pooled plain HTTP client (HTTP/1.1) for one local address: an app's sidecar port, or a
/// sidecar's app.
pub fn http_client<B>(target: &LocalAddr) -> hyper_util::client::legacy::Client<LocalConnector, B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(LocalConnector::to(target.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print_back() {
        for (text, unix) in [
            ("unix:///run/agentmesh/app.sock", true),
            ("unix:/run/a.sock", true),
            ("127.0.0.1:8080", false),
            ("[::1]:8080", false),
            ("localhost:80", false),
        ] {
            let a: LocalAddr = text.parse().unwrap();
            assert_eq!(a.is_unix(), unix, "{text}");
            let again: LocalAddr = a.to_string().parse().unwrap();
            assert_eq!(again, a, "{text}");
        }
    }

    #[test]
    fn malformed_addresses_get_one_clear_error() {
        for bad in [
            "",
            "unix://relative/path",
            "unix:///dir/",
            "127.0.0.1",
            "127.0.0.1:99999",
            ":80",
            "http://127.0.0.1:80",
            "unix:///a\0b",
        ] {
            let e = bad.parse::<LocalAddr>().unwrap_err();
            assert!(matches!(e, LocalError::Malformed(_)), "{bad:?}: {e}");
        }
        let long = format!("unix:///{}", "a".repeat(120));
        assert!(matches!(
            long.parse::<LocalAddr>(),
            Err(LocalError::PathTooLong(..))
        ));
    }

    #[test]
    fn this_process_knows_its_uid() {
        let uid = own_uid().expect("/proc/self/status has a Uid line");
        assert!(uid_allowed(uid));
        assert!(uid_allowed(0));
    }

    #[tokio::test]
    async fn a_unix_listener_is_private_and_admits_its_own_user() {
        use std::os::unix::fs::PermissionsExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let addr = LocalAddr::Unix(dir.path().join("sub/app.sock"));
        let listener = LocalListener::bind(&addr).await.unwrap();
        let mode = std::fs::metadata(addr.unix_path().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(dir.path().join("sub"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let client = tokio::spawn({
            let addr = addr.clone();
            async move {
                let mut s = LocalStream::connect(&addr).await.unwrap();
                s.write_all(b"hi").await.unwrap();
            }
        });
        let (mut s, peer) = listener.accept().await.unwrap();
        assert!(peer.is_verified());
        assert!(matches!(peer, LocalPeer::Unix { uid, .. } if Some(uid) == own_uid()));
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        client.await.unwrap();
        // A second bind while the first serves is refused, not stolen.
        assert!(matches!(
            LocalListener::bind(&addr).await,
            Err(LocalError::InUse(_))
        ));
    }
}
