//! Run with: `cargo run -p agentmesh-sdk-example --bin service` (see README.md for the setup).
//!
//! The example's service: one route, `GET /hello`, that only the SPIFFE ID `allowed` may call.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use agentmesh_sdk::{MtlsClient, PeerIdentity, RequireIdentity, SpiffeId, X509Source};
use axum::Router;
use axum::routing::get;
use http_body_util::BodyExt as _;

/// How long to wait for the first SVID: a launcher may still be registering us.
///
/// # Examples
/// ```
/// assert_eq!(agentmesh_sdk_example::PATIENCE.as_secs(), 30);
/// ```
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The service's router: `GET /hello` admits only `allowed`, and greets it by SPIFFE ID.
///
/// # Examples
/// ```
/// let app = agentmesh_sdk_example::app("spiffe://agentmesh.local/sdk-client".parse().unwrap());
/// # let _ = app;
/// ```
pub fn app(allowed: SpiffeId) -> Router {
    Router::new().route(
        "/hello",
        get(|PeerIdentity(peer): PeerIdentity| async move {
            // axum's `json` feature is off in this workspace; the body is small enough to build.
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                serde_json::json!({ "hello": peer.to_string() }).to_string(),
            )
        })
        .route_layer(RequireIdentity::exact([allowed])),
    )
}

/// The identity source for `me`, from `SPIFFE_ENDPOINT_SOCKET`.
///
/// # Errors
/// No endpoint, or no SVID for `me` within [`PATIENCE`].
///
/// # Examples
/// ```no_run
/// # async fn run() -> anyhow::Result<()> {
/// let source = agentmesh_sdk_example::source("spiffe://agentmesh.local/sdk-service".parse()?).await?;
/// # Ok(()) }
/// ```
pub async fn source(me: SpiffeId) -> Result<Arc<X509Source>, agentmesh_sdk::SourceError> {
    X509Source::from_env_as(Some(&me), PATIENCE).await
}

/// The example client's call: GET `url` over mTLS as `source`'s identity, accepting only a
/// server that presents `server`; returns the status and body.
///
/// # Errors
/// The handshake failed (including a server that is not `server`) or the body broke off.
///
/// # Examples
/// ```no_run
/// # async fn run(source: std::sync::Arc<agentmesh_sdk::X509Source>) -> anyhow::Result<()> {
/// let (status, body) = agentmesh_sdk_example::call(
///     source,
///     "https://127.0.0.1:8443/hello",
///     "spiffe://agentmesh.local/sdk-service".parse()?,
/// ).await?;
/// println!("{status} {body}");
/// # Ok(()) }
/// ```
pub async fn call(
    source: Arc<X509Source>,
    url: &str,
    server: SpiffeId,
) -> anyhow::Result<(u16, String)> {
    let resp = MtlsClient::pinned(source, server).get(url).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
