//! The frontend's outgoing HTTP(S) client: the issuer (discovery, JWKS, token endpoint) and the
//! entry upstream. It is `agentmesh_proto::https`, the client the gateway and OpenBao calls
//! use, so login adds no second HTTP or TLS stack to the tree.

use std::time::Duration;

use agentmesh_proto::https::{self, ClientSettings};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use http_body_util::Full;

pub use agentmesh_proto::https::HttpError;

/// The largest answer read: discovery documents, JWKS and token responses are a few KiB, an
/// agent's answer some more; this bounds what a hostile server can make us buffer.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// How long one request may take in all.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

const USER_AGENT: &str = concat!("agentmesh-frontend/", env!("CARGO_PKG_VERSION"));

/// A pooled HTTP(S) client.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: https::HttpClient,
}

impl HttpClient {
    /// A client trusting the Mozilla roots for https URLs.
    ///
    /// # Errors
    /// Only if the *ring* provider lacks the default protocol versions (a bug).
    pub fn new() -> Result<Self, rustls::Error> {
        let settings = ClientSettings {
            timeout: Some(REQUEST_TIMEOUT),
            ..ClientSettings::new(USER_AGENT, Duration::from_secs(10), MAX_ANSWER_BYTES)
        };
        Ok(Self {
            inner: https::HttpClient::new(https::webpki_tls()?, settings),
        })
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
        self.inner.request(method, url, headers, body).await
    }

    /// Sends one request over a local address (the sidecar's outbound listener, a Unix
    /// socket) to `path`, and reads the whole answer like [`HttpClient::send`].
    ///
    /// # Errors
    /// [`HttpError`].
    pub async fn send_local(
        &self,
        target: &agentmesh_sdk::LocalAddr,
        method: Method,
        path: &str,
        mut headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        let url = format!("{}{path}", target.http_base());
        let uri: Uri = url.parse().map_err(|_| HttpError::BadUrl(url.clone()))?;
        headers.insert(
            0,
            (
                http::header::USER_AGENT,
                HeaderValue::from_static(USER_AGENT),
            ),
        );
        let req = https::build(method, uri, headers, body)?;
        let client = agentmesh_sdk::http_client::<Full<Bytes>>(target);
        https::exchange(&client, req, MAX_ANSWER_BYTES, Some(REQUEST_TIMEOUT)).await
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
