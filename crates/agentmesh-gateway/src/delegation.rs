//! `[delegation]` for the gateway and the agents: where the service gets its own SVID (to
//! sign its link and to read the trust bundle), whose user tokens it accepts, and whether a
//! request without a verified user and chain is refused. The chain itself is
//! `agentmesh_sdk::delegation`.
//!
//! ```toml
//! [delegation]
//! workload_api = "unix:///tmp/agentmesh/node.sock"
//! issuer = "spiffe://agentmesh.local/ns/default/sa/frontend"   # who signs user tokens
//! audience = "agentmesh.local"                                 # the tokens' aud
//! require = true                                               # 401 without a valid chain
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentmesh_sdk::{ChainConfig, ChainError, SpiffeId, VerifiedChain, X509Source};
use http::HeaderMap;
use serde::Deserialize;

/// Why delegation cannot be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DelegationError {
    /// `workload_api` is not `unix:///path`.
    #[error("[delegation] workload_api {0:?} is not unix:///path")]
    BadSocket(String),
    /// `issuer` is not a SPIFFE ID.
    #[error("[delegation] issuer {0:?}: {1}")]
    BadIssuer(String, String),
    /// No SVID from the Workload API in time.
    #[error("[delegation] no SVID from the Workload API: {0}")]
    Source(String),
}

/// `[delegation]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelegationConfig {
    /// The Workload API (`unix:///path`).
    pub workload_api: String,
    /// The frontend's SPIFFE ID.
    pub issuer: String,
    /// The user tokens' audience.
    pub audience: String,
    /// Refuse requests without a valid user token and chain (default true).
    #[serde(default = "yes")]
    pub require: bool,
}

fn yes() -> bool {
    true
}

/// How long to wait for the first SVID.
const SOURCE_PATIENCE: Duration = Duration::from_secs(60);

/// A service's delegation state: its identity source and what it checks.
pub struct Delegation {
    source: Arc<X509Source>,
    issuer: SpiffeId,
    audience: String,
    /// Refuse requests without a valid chain.
    pub require: bool,
}

/// A request's verified chain and what to send on with the next call.
#[derive(Debug, Clone)]
pub struct Forward {
    /// The verified user and hops.
    pub chain: VerifiedChain,
    /// `Authorization` and the delegation header, this service's link added.
    pub headers: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for Delegation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delegation")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("require", &self.require)
            .finish_non_exhaustive()
    }
}

impl Delegation {
    /// Connects to the Workload API and waits for this service's SVID.
    ///
    /// # Errors
    /// [`DelegationError`].
    pub async fn connect(cfg: &DelegationConfig) -> Result<Self, DelegationError> {
        let path = cfg
            .workload_api
            .strip_prefix("unix://")
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| DelegationError::BadSocket(cfg.workload_api.clone()))?;
        let issuer: SpiffeId =
            cfg.issuer
                .parse()
                .map_err(|e: agentmesh_spiffe::SpiffeIdError| {
                    DelegationError::BadIssuer(cfg.issuer.clone(), e.to_string())
                })?;
        let source = X509Source::connect(&PathBuf::from(path), SOURCE_PATIENCE)
            .await
            .map_err(|e| DelegationError::Source(e.to_string()))?;
        Ok(Self {
            source,
            issuer,
            audience: cfg.audience.clone(),
            require: cfg.require,
        })
    }

    /// Signs `payload` (a response) as a JWS with this service's SVID key and `x5c`.
    ///
    /// # Errors
    /// The key cannot sign.
    pub fn sign(&self, payload: &[u8]) -> Result<String, agentmesh_sdk::JwsError> {
        agentmesh_sdk::jws::sign(&self.source, payload)
    }

    /// This service's SPIFFE ID.
    pub fn me(&self) -> SpiffeId {
        self.source.current().svid.id.clone()
    }

    /// Verifies the incoming user token and chain (the last hop must be `peer`, the caller
    /// the sidecar verified) and returns it, or `None` when there is no token and none is
    /// required.
    ///
    /// # Errors
    /// The chain does not verify, or it is missing and required.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        peer: Option<&SpiffeId>,
    ) -> Result<Option<VerifiedChain>, ChainError> {
        if peer.is_none() {
            // Without a verified caller a copied token and chain could be replayed by anyone
            // who can reach this service; only a request with no token at all, where none is
            // required, goes on.
            if !self.require && bearer(headers).is_none() {
                return Ok(None);
            }
            return Err(ChainError::NoVerifiedCaller);
        }
        let ctx = self.source.current();
        let config = ChainConfig::new(
            ctx.roots.as_ref().clone(),
            self.issuer.clone(),
            &self.audience,
        )
        .with_me(ctx.svid.id.clone());
        match agentmesh_sdk::delegation::verify_headers(headers, &config, peer, SystemTime::now()) {
            Ok(c) => Ok(Some(c)),
            Err(ChainError::UserToken(agentmesh_sdk::TokenError::Missing)) if !self.require => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Verifies the incoming chain and adds this service's link for the calls it makes.
    ///
    /// # Errors
    /// As [`Delegation::verify`], and signing the link.
    pub fn forward(
        &self,
        headers: &HeaderMap,
        peer: Option<&SpiffeId>,
    ) -> Result<Option<Forward>, ChainError> {
        let Some(chain) = self.verify(headers, peer)? else {
            return Ok(None);
        };
        let token = bearer(headers).unwrap_or_default().to_owned();
        let links = headers
            .get(agentmesh_sdk::DELEGATION_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let links = agentmesh_sdk::delegation::add_link(&self.source, &token, links, None)?;
        Ok(Some(Forward {
            chain,
            headers: vec![
                ("authorization", format!("Bearer {token}")),
                (agentmesh_sdk::DELEGATION_HEADER, links),
            ],
        }))
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
}

/// The caller's SPIFFE ID from the sidecar's `x-forwarded-client-cert`.
pub fn xfcc_peer(headers: &HeaderMap) -> Option<SpiffeId> {
    headers
        .get(crate::XFCC)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::policy::parse_xfcc)
        .map(|c| c.id)
}
