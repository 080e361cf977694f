//! An mTLS HTTP client that presents the workload's SVID and accepts only the server SPIFFE
//! ID it was told to expect: a pooled hyper-util client over tokio-rustls.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use agentmesh_spiffe::SpiffeId;
use agentmesh_tls::Authorizer;
use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::source::X509Source;
use crate::tls::{ALPN_HTTP, ClientTls, HANDSHAKE_TIMEOUT};

/// Why a request could not be made.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
/// let client = agentmesh_sdk::MtlsClient::pinned(
///     ca.source("spiffe://example.org/cli"), "spiffe://example.org/api".parse().unwrap());
/// let err = client.get("/relative").await.unwrap_err();
/// assert!(matches!(err, agentmesh_sdk::ClientError::Request { .. } | agentmesh_sdk::ClientError::BadUri(_)));
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URI has no host or port to connect to.
    #[error("uri {0} has no host; use https://host:port/...")]
    BadUri(String),
    /// The TLS config could not be built from the source.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsConfigError),
    /// Connecting or the handshake failed, including a server with the wrong SPIFFE ID.
    #[error("connecting to {uri}: {reason}")]
    Connect {
        /// Where.
        uri: String,
        /// Why, as the TLS or socket layer said.
        reason: String,
        /// The kind of failure, for a caller that handles them differently:
        /// `ConnectionRefused` (nothing listens), `TimedOut` (no handshake within
        /// [`HANDSHAKE_TIMEOUT`](crate::tls::HANDSHAKE_TIMEOUT)), `InvalidData` (the TLS layer
        /// refused the peer, a wrong SPIFFE ID among the reasons), `InvalidInput` (no usable
        /// server name), ...
        kind: std::io::ErrorKind,
    },
    /// The request failed after connecting.
    #[error("request to {uri}: {reason}")]
    Request {
        /// Where.
        uri: String,
        /// Why.
        reason: String,
    },
}

/// A tower connector (`Service<Uri>`) that dials TCP and completes an mTLS handshake that
/// admits only the servers its authorizer admits. Usable by hyper-util's client and by
/// tonic's `Endpoint::connect_with_connector`.
///
/// # Examples
/// ```
/// use agentmesh_sdk::{MtlsConnector, tls::ALPN_GRPC};
/// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
/// let connector = MtlsConnector::new(
///     ca.source("spiffe://example.org/cli"),
///     agentmesh_tls::exact(["spiffe://example.org/api".parse().unwrap()]),
///     ALPN_GRPC,
/// );
/// # let _ = connector;
/// ```
#[derive(Debug, Clone)]
pub struct MtlsConnector {
    tls: Arc<ClientTls>,
}

impl MtlsConnector {
    /// A connector presenting `source`'s SVID and admitting servers `server` admits.
    ///
    /// # Examples
    /// ```
    /// use agentmesh_sdk::{MtlsConnector, tls::ALPN_HTTP};
    /// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
    /// let c = MtlsConnector::new(ca.source("spiffe://example.org/cli"), agentmesh_tls::any_id(), ALPN_HTTP);
    /// # let _ = c;
    /// ```
    pub fn new(source: Arc<X509Source>, server: Arc<dyn Authorizer>, alpn: &[&[u8]]) -> Self {
        Self {
            tls: Arc::new(ClientTls::new(source, server, alpn)),
        }
    }
}

/// One mTLS connection made by [`MtlsConnector`].
///
/// # Examples
/// ```no_run
/// # async fn run(mut c: agentmesh_sdk::MtlsConnector) {
/// use tower::Service;
/// let stream: agentmesh_sdk::MtlsStream =
///     c.call("https://127.0.0.1:8443".parse().unwrap()).await.unwrap();
/// # let _ = stream;
/// # }
/// ```
#[derive(Debug)]
pub struct MtlsStream {
    io: TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
}

impl MtlsStream {
    /// The server's verified SPIFFE ID.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn run(mut c: agentmesh_sdk::MtlsConnector) {
    /// use tower::Service;
    /// let stream = c.call("https://127.0.0.1:8443".parse().unwrap()).await.unwrap();
    /// println!("{:?}", stream.peer_id());
    /// # }
    /// ```
    pub fn peer_id(&self) -> Option<SpiffeId> {
        agentmesh_tls::peer_identity(self.io.inner().get_ref().1)
    }
}

impl MtlsStream {
    /// The serial number (lowercase hex) of the server's leaf certificate, to see which SVID
    /// it presented.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn run(mut c: agentmesh_sdk::MtlsConnector) {
    /// use tower::Service;
    /// let stream = c.call("https://127.0.0.1:8443".parse().unwrap()).await.unwrap();
    /// println!("{:?}", stream.peer_serial());
    /// # }
    /// ```
    pub fn peer_serial(&self) -> Option<String> {
        let leaf = self.io.inner().get_ref().1.peer_certificates()?.first()?;
        agentmesh_tls::cert_serial_hex(leaf).ok()
    }
}

impl Connection for MtlsStream {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.io.inner().get_ref().1.alpn_protocol() == Some(b"h2") {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl hyper::rt::Read for MtlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for MtlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tower::Service<Uri> for MtlsConnector {
    type Response = MtlsStream;
    type Error = ClientError;
    type Future = Pin<Box<dyn Future<Output = Result<MtlsStream, ClientError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = Arc::clone(&self.tls);
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| ClientError::BadUri(uri.to_string()))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let config = tls.config()?;
            let err = |reason: String, kind: std::io::ErrorKind| ClientError::Connect {
                uri: uri.to_string(),
                reason,
                kind,
            };
            let io_err = |e: std::io::Error| err(e.to_string(), e.kind());
            // The name is only SNI; the server is identified by its SPIFFE ID, not by it.
            let name = ServerName::try_from(host.clone())
                .map_err(|e| err(e.to_string(), std::io::ErrorKind::InvalidInput))?;
            let dial = async {
                let tcp = TcpStream::connect((host.as_str(), port))
                    .await
                    .map_err(io_err)?;
                // Nodelay: request/response RPCs should not wait on Nagle.
                let _ = tcp.set_nodelay(true);
                tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(io_err)
            };
            let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, dial)
                .await
                .map_err(|_| {
                    err(
                        format!("no tls handshake within {HANDSHAKE_TIMEOUT:?}"),
                        std::io::ErrorKind::TimedOut,
                    )
                })??;
            Ok(MtlsStream {
                io: TokioIo::new(stream),
            })
        })
    }
}

/// A pooled HTTP/1.1 + HTTP/2 client over mTLS that pins the server's SPIFFE ID.
///
/// # Examples
/// ```no_run
/// # async fn run(source: std::sync::Arc<agentmesh_sdk::X509Source>) -> Result<(), agentmesh_sdk::ClientError> {
/// let client = agentmesh_sdk::MtlsClient::pinned(source, "spiffe://example.org/api".parse().unwrap());
/// let resp = client.get("https://127.0.0.1:8443/hello").await?;
/// println!("{}", resp.status());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MtlsClient {
    inner: Client<MtlsConnector, Full<Bytes>>,
}

impl MtlsClient {
    /// A client that accepts only a server presenting exactly `server_id`.
    ///
    /// # Examples
    /// ```
    /// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
    /// let client = agentmesh_sdk::MtlsClient::pinned(
    ///     ca.source("spiffe://example.org/cli"),
    ///     "spiffe://example.org/api".parse().unwrap(),
    /// );
    /// # let _ = client;
    /// ```
    pub fn pinned(source: Arc<X509Source>, server_id: SpiffeId) -> Self {
        Self::new(source, agentmesh_tls::exact([server_id]))
    }

    /// A client that accepts any server `server` admits.
    ///
    /// # Examples
    /// ```
    /// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
    /// let client = agentmesh_sdk::MtlsClient::new(
    ///     ca.source("spiffe://example.org/cli"),
    ///     agentmesh_tls::member_of("example.org".parse().unwrap()),
    /// );
    /// # let _ = client;
    /// ```
    pub fn new(source: Arc<X509Source>, server: Arc<dyn Authorizer>) -> Self {
        let connector = MtlsConnector::new(source, server, ALPN_HTTP);
        Self {
            inner: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Sends a request; the URI must be absolute (`https://host:port/path`).
    ///
    /// # Errors
    /// [`ClientError::Connect`] when the handshake fails (a server with an unexpected ID among
    /// the reasons), [`ClientError::Request`] after that.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn run(client: agentmesh_sdk::MtlsClient) -> Result<(), agentmesh_sdk::ClientError> {
    /// let req = http::Request::post("https://127.0.0.1:8443/jobs")
    ///     .header("content-type", "application/json")
    ///     .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
    ///     .unwrap();
    /// let resp = client.request(req).await?;
    /// # Ok(()) }
    /// ```
    pub async fn request(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let uri = req.uri().to_string();
        self.inner.request(req).await.map_err(|e| {
            // Surface the connector's own error (which names the TLS failure) when there is one.
            let mut source: Option<&(dyn std::error::Error + 'static)> =
                std::error::Error::source(&e);
            while let Some(s) = source {
                if let Some(ours) = s.downcast_ref::<ClientError>() {
                    let kind = match ours {
                        ClientError::Connect { kind, .. } => *kind,
                        _ => std::io::ErrorKind::Other,
                    };
                    return ClientError::Connect {
                        uri: uri.clone(),
                        reason: ours.to_string(),
                        kind,
                    };
                }
                source = s.source();
            }
            ClientError::Request {
                uri: uri.clone(),
                reason: e.to_string(),
            }
        })
    }

    /// A GET request.
    ///
    /// # Errors
    /// As [`MtlsClient::request`], or [`ClientError::BadUri`].
    ///
    /// # Examples
    /// ```no_run
    /// # async fn run(client: agentmesh_sdk::MtlsClient) -> Result<(), agentmesh_sdk::ClientError> {
    /// let resp = client.get("https://127.0.0.1:8443/hello").await?;
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, uri: &str) -> Result<Response<Incoming>, ClientError> {
        let req = Request::get(uri)
            .body(Full::new(Bytes::new()))
            .map_err(|_| ClientError::BadUri(uri.to_owned()))?;
        self.request(req).await
    }
}
