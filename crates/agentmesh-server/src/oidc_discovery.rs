//! OIDC discovery for JWT-SVIDs, as SPIRE's oidc-discovery-provider serves it: a loopback
//! HTTP listener with `/.well-known/openid-configuration` and `/keys` (the JWKS). Verifiers
//! that know only OIDC, such as OpenBao's JWT auth method (`jwks_url`), check JWT-SVIDs
//! against it. Each request reads the CA's current keys, so a JWT key rotation shows up at
//! once and retired keys stay published for as long as they are valid.
//!
//! Plain HTTP, so the listener must be a loopback address: the keys are public, but a
//! verifier must not fetch them over a network an attacker can write to.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::sync::watch;

use crate::state::ServerState;

/// `[oidc_discovery]` in the server's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcDiscoveryConfig {
    /// Where to listen; must be loopback.
    pub listen: SocketAddr,
    /// The `issuer` in the discovery document (default `http://<listen>`).
    pub issuer: Option<String>,
}

/// Why the discovery listener could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OidcDiscoveryError {
    /// The address is not loopback.
    #[error(
        "oidc_discovery.listen {0} is not a loopback address; it serves plain HTTP, so put it on 127.0.0.0/8 or ::1 (behind a TLS proxy if others must reach it)"
    )]
    NotLoopback(SocketAddr),
    /// Binding failed.
    #[error("oidc_discovery.listen {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// Binds the listener; returns its address (useful with port 0) and the serving task.
///
/// # Errors
/// [`OidcDiscoveryError`].
pub async fn start(
    cfg: &OidcDiscoveryConfig,
    state: Arc<ServerState>,
    limits: agentmesh_proto::limits::ListenerLimits,
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), OidcDiscoveryError> {
    if !cfg.listen.ip().is_loopback() {
        return Err(OidcDiscoveryError::NotLoopback(cfg.listen));
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| OidcDiscoveryError::Bind(cfg.listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| OidcDiscoveryError::Bind(cfg.listen, e))?;
    let issuer = cfg
        .issuer
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"))
        .trim_end_matches('/')
        .to_owned();
    tracing::info!(listen = %addr, %issuer, "serving OIDC discovery for JWT-SVIDs");
    let svc = hyper::service::service_fn(move |req| {
        let answer = answer(&state, &issuer, &req);
        async move { Ok::<_, Infallible>(answer) }
    });
    let task = tokio::spawn(agentmesh_proto::limits::serve_tcp(
        listener,
        svc,
        limits,
        "OIDC discovery",
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
    ));
    Ok((addr, task))
}

fn answer<B>(state: &ServerState, issuer: &str, req: &Request<B>) -> Response<Full<Bytes>> {
    let json_response = |status: StatusCode, body: serde_json::Value| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            // Verifiers cache; a short max-age keeps a rotated key visible within minutes.
            .header("cache-control", "max-age=60")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": "only GET is served"}),
        );
    }
    match req.uri().path() {
        "/.well-known/openid-configuration" => json_response(
            StatusCode::OK,
            json!({
                "issuer": issuer,
                "jwks_uri": format!("{issuer}/keys"),
                "authorization_endpoint": "",
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES256"],
            }),
        ),
        "/keys" => {
            let keys: Vec<serde_json::Value> = state
                .ca
                .current()
                .jwks
                .keys
                .iter()
                .map(|k| {
                    // Plain OIDC JWKS: `use` is "sig" here, not SPIFFE's "jwt-svid".
                    json!({"kty": k.kty, "crv": k.crv, "x": k.x, "y": k.y, "kid": k.kid,
                           "use": "sig", "alg": "ES256"})
                })
                .collect();
            json_response(StatusCode::OK, json!({ "keys": keys }))
        }
        other => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no such path {other:?}; try /.well-known/openid-configuration or /keys")}),
        ),
    }
}
