//! The one outgoing HTTP(S) client for calls that leave the mesh (LLM providers, Tavily, the
//! OIDC issuer, OpenBao): hyper's pooled client over rustls with the *ring* provider, and the
//! Mozilla roots compiled in (webpki-roots) unless a caller names its own, so it needs no
//! system trust store and never pulls in aws-lc-rs.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Why a request got no complete answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The URL is not a valid URI.
    #[error("invalid URL {0:?}")]
    BadUrl(String),
    /// Connecting, the TLS handshake, sending or reading failed; the text holds every cause
    /// ([`error_chain`]), because hyper's own message says little without the OS error.
    #[error("{0}")]
    Connection(String),
    /// The answer is larger than the client's limit.
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    /// No complete answer within the client's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// How a client connects and how much it reads.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Sent as `User-Agent` unless a request sets its own.
    pub user_agent: &'static str,
    /// The TCP connect timeout.
    pub connect_timeout: Duration,
    /// The largest answer read: this bounds the memory a broken or hostile server can make
    /// the caller use.
    pub max_answer_bytes: usize,
    /// How long one request may take in all; `None` leaves it to the caller.
    pub timeout: Option<Duration>,
    /// Offer HTTP/2 by ALPN as well as HTTP/1.1.
    pub http2: bool,
    /// Set `TCP_NODELAY` on connections.
    pub nodelay: bool,
    /// How long an idle pooled connection is kept; `None` is hyper's default.
    pub pool_idle: Option<Duration>,
}

impl ClientSettings {
    /// HTTP/1.1 only, hyper's pool defaults and no overall timeout.
    pub fn new(
        user_agent: &'static str,
        connect_timeout: Duration,
        max_answer_bytes: usize,
    ) -> Self {
        Self {
            user_agent,
            connect_timeout,
            max_answer_bytes,
            timeout: None,
            http2: false,
            nodelay: false,
            pool_idle: None,
        }
    }
}

/// A pooled HTTP(S) client.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    user_agent: HeaderValue,
    max_answer_bytes: usize,
    timeout: Option<Duration>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

/// rustls' safe defaults (TLS 1.3 and 1.2, since these servers are outside the mesh and some
/// proxies in front of them still speak only 1.2) with the *ring* provider and the Mozilla
/// roots.
///
/// # Errors
/// Only if the *ring* provider lacks the default protocol versions, which would be a bug.
pub fn webpki_tls() -> Result<rustls::ClientConfig, rustls::Error> {
    use hyper_rustls::ConfigBuilderExt;
    Ok(builder()?.with_webpki_roots().with_no_client_auth())
}

/// As [`webpki_tls`], trusting only `roots` (DER certificates).
///
/// # Errors
/// A root rustls cannot use.
pub fn tls_with_roots(roots: Vec<Vec<u8>>) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut store = rustls::RootCertStore::empty();
    for c in roots {
        store
            .add(rustls::pki_types::CertificateDer::from(c))
            .map_err(|e| rustls::Error::General(e.to_string()))?;
    }
    Ok(builder()?
        .with_root_certificates(store)
        .with_no_client_auth())
}

fn builder()
-> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, rustls::Error> {
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
}

impl HttpClient {
    /// A client using `tls` for https URLs.
    pub fn new(tls: rustls::ClientConfig, settings: ClientSettings) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(settings.nodelay);
        http.set_connect_timeout(Some(settings.connect_timeout));
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let https = if settings.http2 {
            https.enable_all_versions().wrap_connector(http)
        } else {
            https.enable_http1().wrap_connector(http)
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_timer(TokioTimer::new());
        if let Some(idle) = settings.pool_idle {
            builder.pool_idle_timeout(idle);
        }
        Self {
            inner: builder.build(https),
            user_agent: HeaderValue::from_static(settings.user_agent),
            max_answer_bytes: settings.max_answer_bytes,
            timeout: settings.timeout,
        }
    }

    /// Sends `req` and reads the whole answer.
    ///
    /// # Errors
    /// [`HttpError`].
    pub async fn send(
        &self,
        mut req: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        req.headers_mut()
            .entry(http::header::USER_AGENT)
            .or_insert_with(|| self.user_agent.clone());
        exchange(&self.inner, req, self.max_answer_bytes, self.timeout).await
    }

    /// Sends `body` to `url` with `method` and `headers`, and reads the whole answer.
    ///
    /// # Errors
    /// [`HttpError`].
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        let uri: Uri = url.parse().map_err(|_| HttpError::BadUrl(url.to_owned()))?;
        self.send(build(method, uri, headers, body)?).await
    }

    /// POSTs `body` as JSON to `uri` with `headers`, and reads the whole answer.
    ///
    /// # Errors
    /// [`HttpError`].
    pub async fn post_json(
        &self,
        uri: &Uri,
        mut headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        let json = HeaderValue::from_static("application/json");
        headers.splice(
            0..0,
            [
                (http::header::CONTENT_TYPE, json.clone()),
                (http::header::ACCEPT, json),
            ],
        );
        self.send(build(Method::POST, uri.clone(), headers, body)?)
            .await
    }
}

/// A request to `uri` with `headers` and `body`.
///
/// # Errors
/// [`HttpError::Connection`] when hyper refuses to build it.
pub fn build(
    method: Method,
    uri: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, HttpError> {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(body))
        .map_err(|e| HttpError::Connection(format!("cannot build the request: {e}")))?;
    // `append`, not `extend`: a caller may send one header name twice.
    for (name, value) in headers {
        req.headers_mut().append(name, value);
    }
    Ok(req)
}

/// Sends `req` on any hyper client (an HTTPS pool, or one to a local socket) and reads at most
/// `max_answer_bytes` of the answer, all within `timeout` if one is given.
///
/// # Errors
/// [`HttpError`].
pub async fn exchange<C>(
    client: &Client<C, Full<Bytes>>,
    req: Request<Full<Bytes>>,
    max_answer_bytes: usize,
    timeout: Option<Duration>,
) -> Result<(StatusCode, Bytes), HttpError>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let call = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| HttpError::Connection(error_chain(&e)))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), max_answer_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    HttpError::TooLarge(max_answer_bytes)
                } else {
                    HttpError::Connection(format!("reading the answer: {}", error_chain(&*e)))
                }
            })?
            .to_bytes();
        Ok((status, body))
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, call)
            .await
            .map_err(|_| HttpError::Timeout(t))?,
        None => call.await,
    }
}

/// An error and its causes on one line, each cause once: hyper's own messages ("client error
/// (Connect)") say little without the OS error underneath.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_names_each_cause_once() {
        let e = Outer(std::io::Error::other("connection refused"));
        assert_eq!(error_chain(&e), "outer: connection refused");
    }

    #[test]
    fn a_bad_url_is_named() {
        let client = HttpClient::new(
            webpki_tls().unwrap(),
            ClientSettings::new("test", Duration::from_secs(1), 1024),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt
            .block_on(client.request(Method::GET, "not a url", vec![], Bytes::new()))
            .unwrap_err();
        assert_eq!(err, HttpError::BadUrl("not a url".into()));
    }
}
