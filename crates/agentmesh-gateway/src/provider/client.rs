//! The HTTP(S) client the network providers share: hyper's pooled client over rustls with
//! the *ring* provider and the Mozilla roots compiled in (webpki-roots), so it needs no system
//! trust store and never pulls in aws-lc-rs. HTTP/2 is used when the server offers it (ALPN).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// The largest answer read from a provider. A chat completion is a few KiB; this bounds the
/// memory a broken or hostile upstream can make the gateway use.
pub const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// How long an idle pooled connection is kept. Providers close idle connections after about
/// a minute; closing ours first avoids sending on a connection the far side is closing.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// Why a request got no complete answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// Connecting, the TLS handshake, sending or reading failed.
    #[error("{0}")]
    Connection(String),
    /// The answer is larger than [`MAX_ANSWER_BYTES`].
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
}

/// A pooled client for one provider (the connect timeout is per provider).
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

/// The TLS settings for providers: rustls' safe defaults (TLS 1.3 and 1.2, since providers
/// are outside the mesh and some proxies in front of local models still speak only 1.2) with
/// the *ring* provider and the Mozilla roots.
///
/// # Errors
/// Only if the *ring* provider lacks the default protocol versions, which would be a bug.
pub fn tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    use hyper_rustls::ConfigBuilderExt;
    Ok(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_webpki_roots()
        .with_no_client_auth(),
    )
}

impl HttpClient {
    /// A client using `tls` for https URLs, with `connect_timeout` for the TCP connect.
    pub fn new(tls: rustls::ClientConfig, connect_timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(https);
        Self { inner }
    }

    /// POSTs `body` as JSON to `uri` with `headers`, and reads the whole answer.
    ///
    /// # Errors
    /// [`HttpError`].
    pub async fn post_json(
        &self,
        uri: &Uri,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("agentmesh-gateway/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|e| HttpError::Connection(format!("cannot build the request: {e}")))?;
        req.headers_mut().extend(headers);
        let resp = self
            .inner
            .request(req)
            .await
            .map_err(|e| HttpError::Connection(chain(&e)))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    HttpError::TooLarge(MAX_ANSWER_BYTES)
                } else {
                    HttpError::Connection(format!("reading the answer: {}", chain(&*e)))
                }
            })?
            .to_bytes();
        Ok((status, body))
    }
}

/// An error and its causes on one line: hyper's own messages ("client error (Connect)") say
/// little without the OS error underneath.
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
