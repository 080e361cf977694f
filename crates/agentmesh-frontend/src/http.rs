//! The frontend's outgoing HTTP(S) client: the issuer (discovery, JWKS, token endpoint) and the
//! entry upstream. hyper over rustls with *ring* and the Mozilla roots (webpki-roots), the
//! same stack the gateway uses, so login adds no second HTTP or TLS stack to the tree.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// The largest answer read: discovery documents, JWKS and token responses are a few KiB, an
/// agent's answer some more; this bounds what a hostile server can make us buffer.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// How long one request may take in all.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request got no complete answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The URL is not a valid URI.
    #[error("invalid URL {0:?}")]
    BadUrl(String),
    /// Connecting, the TLS handshake, sending or reading failed.
    #[error("{0}")]
    Connection(String),
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// A pooled HTTP(S) client.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client trusting the Mozilla roots for https URLs.
    ///
    /// # Errors
    /// Only if the *ring* provider lacks the default protocol versions (a bug).
    pub fn new() -> Result<Self, rustls::Error> {
        use hyper_rustls::ConfigBuilderExt;
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_webpki_roots()
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .build(https);
        Ok(Self { inner })
    }

    /// Sends one request and reads the whole answer.
    ///
    /// # Errors
    /// [`HttpError`].
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        let uri: Uri = url.parse().map_err(|_| HttpError::BadUrl(url.to_owned()))?;
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(
                http::header::USER_AGENT,
                concat!("agentmesh-frontend/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|e| HttpError::Connection(format!("cannot build the request: {e}")))?;
        req.headers_mut().extend(headers);
        let call = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| HttpError::Connection(chain(&e)))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| HttpError::Connection(format!("reading the answer: {}", chain(&*e))))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, call)
            .await
            .map_err(|_| HttpError::Timeout(REQUEST_TIMEOUT))?
    }

    /// Sends one request over a local address (the sidecar's outbound listener, a Unix
    /// socket) to `path`, and reads the whole answer like [`HttpClient::send`].
    ///
    /// # Errors
    /// [`HttpError`].
    pub async fn send_local(
        &self,
        target: &agentmesh_sdk::local::LocalAddr,
        method: Method,
        path: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        let url = format!("{}{path}", target.http_base());
        let uri: Uri = url.parse().map_err(|_| HttpError::BadUrl(url.clone()))?;
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(
                http::header::USER_AGENT,
                concat!("agentmesh-frontend/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|e| HttpError::Connection(format!("cannot build the request: {e}")))?;
        req.headers_mut().extend(headers);
        let client = agentmesh_sdk::local::http_client::<Full<Bytes>>(target);
        let call = async {
            let resp = client
                .request(req)
                .await
                .map_err(|e| HttpError::Connection(chain(&e)))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| HttpError::Connection(format!("reading the answer: {}", chain(&*e))))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, call)
            .await
            .map_err(|_| HttpError::Timeout(REQUEST_TIMEOUT))?
    }

    /// GETs `url`.
    ///
    /// # Errors
    /// [`HttpError`].
    pub async fn get(&self, url: &str) -> Result<(StatusCode, Bytes), HttpError> {
        let accept = (
            http::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        self.send(Method::GET, url, vec![accept], Bytes::new())
            .await
    }
}

/// An error and its causes on one line: hyper's own messages say little without the OS error.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
