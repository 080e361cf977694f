//! `[delegation]` for the gateway and the agents: where the service gets its own SVID (to
//! sign its link and to read the trust bundle), whose user tokens it accepts, and whether a
//! request without a verified user and chain is refused. The chain itself is
//! [`crate::delegation`].
//!
//! ```toml
//! [delegation]
//! workload_api = "unix:///tmp/agentmesh/node.sock"
//! issuer = "spiffe://agentmesh.local/ns/default/sa/frontend"   # who signs user tokens
//! audience = "agentmesh.local"                                 # the tokens' aud
//! require = true                                               # 401 without a valid chain
//! replay_cache_size = 65536                                    # tokens remembered (default)
//! ```
//!
//! Each service accepts a user token once per path (the `jti` and the chain's hops, see
//! [`ReplayCache`]): a second identical request, or a captured
//! token and chain sent again by the same caller, is a 401 `already used`. The links this
//! service adds name the hop they go to (`aud`), one link per callee, so a link sent to the
//! gateway is refused by any other service.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentmesh_spiffe::SpiffeIdError;

use crate::delegation::ReplayCache;
use crate::source::SourceError;
use crate::{ChainConfig, ChainError, SpiffeId, VerifiedChain, X509Source};
use http::HeaderMap;
use serde::{Deserialize, Serialize};

/// Why delegation cannot be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DelegationError {
    /// `workload_api` is not `unix:///path`.
    #[error("[delegation] workload_api {0:?} is not unix:///path")]
    BadSocket(String),
    /// `issuer` is not a SPIFFE ID.
    #[error("[delegation] issuer {0:?}: {1}")]
    BadIssuer(String, #[source] SpiffeIdError),
    /// No SVID from the Workload API in time.
    #[error("[delegation] no SVID from the Workload API: {0}")]
    Source(#[source] SourceError),
}

/// `[delegation]` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// How many unexpired user tokens this service remembers to refuse a second use (default
    /// 65,536); past it, new tokens get a 503 until old ones expire.
    #[serde(default = "default_replay_cache_size")]
    pub replay_cache_size: usize,
}

fn yes() -> bool {
    true
}

fn default_replay_cache_size() -> usize {
    ReplayCache::DEFAULT_MAX
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
    replay: ReplayCache,
}

/// A request's verified chain, and what this service needs to pass it on.
#[derive(Clone)]
pub struct Forward {
    /// The verified user and hops.
    pub chain: VerifiedChain,
    token: String,
    links: String,
    source: Arc<X509Source>,
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself: its `jti` is what logs carry.
        f.debug_struct("Forward")
            .field("chain", &self.chain)
            .finish_non_exhaustive()
    }
}

impl Forward {
    /// `Authorization` and the delegation header for one call to `next_hop`: the incoming
    /// links plus this service's link addressed to `next_hop`, which only it accepts. A
    /// fan-out calls this once per callee.
    ///
    /// # Errors
    /// Signing the link.
    pub fn headers_for(
        &self,
        next_hop: &SpiffeId,
    ) -> Result<Vec<(&'static str, String)>, ChainError> {
        let links = crate::delegation::add_link(&self.source, &self.token, &self.links, next_hop)?;
        Ok(vec![
            ("authorization", format!("Bearer {}", self.token)),
            (crate::DELEGATION_HEADER, links),
        ])
    }
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
        let issuer: SpiffeId = cfg
            .issuer
            .parse()
            .map_err(|e| DelegationError::BadIssuer(cfg.issuer.clone(), e))?;
        let source = X509Source::connect(&PathBuf::from(path), SOURCE_PATIENCE)
            .await
            .map_err(DelegationError::Source)?;
        Ok(Self::with_source(source, issuer, cfg))
    }

    /// A service's delegation state with an identity source it already has (`workload_api`
    /// in `cfg` is not read).
    pub fn with_source(source: Arc<X509Source>, issuer: SpiffeId, cfg: &DelegationConfig) -> Self {
        Self {
            source,
            issuer,
            audience: cfg.audience.clone(),
            require: cfg.require,
            replay: ReplayCache::new(cfg.replay_cache_size, ChainConfig::DEFAULT_LEEWAY),
        }
    }

    /// Signs `payload` (a response) as a JWS with this service's SVID key and `x5c`.
    ///
    /// # Errors
    /// The key cannot sign.
    pub fn sign(&self, payload: &[u8]) -> Result<String, crate::JwsError> {
        crate::jws::sign(&self.source, payload)
    }

    /// The identity source this service signs with (its SVID and trust bundle).
    pub fn source(&self) -> &Arc<X509Source> {
        &self.source
    }

    /// This service's SPIFFE ID.
    pub fn me(&self) -> SpiffeId {
        self.source.current().svid.id.clone()
    }

    /// Verifies the incoming user token and chain (the last hop must be `peer`, the caller
    /// the sidecar verified, and the last link must be addressed to this service), admits it
    /// once per path, and returns it, or `None` when there is no token and none is required.
    ///
    /// # Errors
    /// The chain does not verify, this service already accepted the token along this path,
    /// or it is missing and required.
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
        // The own trust domain's roots only: the user token and every link are signed by
        // SVIDs of this mesh, and a federated CA must not vouch for one of our IDs here either.
        let config = ChainConfig::new(
            ctx.bundle.as_ref().clone(),
            self.issuer.clone(),
            &self.audience,
        )
        .with_me(ctx.svid.id.clone());
        let now = SystemTime::now();
        match crate::delegation::verify_headers(headers, &config, peer, now) {
            Ok(c) => {
                self.replay.admit(&c, now)?;
                Ok(Some(c))
            }
            Err(ChainError::UserToken(crate::TokenError::Missing)) if !self.require => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Verifies the incoming chain and keeps what [`Forward::headers_for`] needs to add this
    /// service's link to each call it makes.
    ///
    /// # Errors
    /// As [`Delegation::verify`].
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
            .get(crate::DELEGATION_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        Ok(Some(Forward {
            chain,
            token,
            links: links.to_owned(),
            source: self.source.clone(),
        }))
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TestCa, user_token};

    const TD: &str = "spiffe://example.org";

    fn id(name: &str) -> SpiffeId {
        format!("{TD}/{name}").parse().unwrap()
    }

    fn service(ca: &TestCa, name: &str, replay_cache_size: usize) -> Delegation {
        let cfg = DelegationConfig {
            workload_api: "unix:///unused".into(),
            issuer: id("frontend").to_string(),
            audience: "example.org".into(),
            require: true,
            replay_cache_size,
        };
        Delegation::with_source(ca.source(&id(name).to_string()), id("frontend"), &cfg)
    }

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, value.parse().unwrap());
        }
        h
    }

    fn token(ca: &TestCa) -> String {
        user_token(
            &ca.source(&id("frontend").to_string()),
            serde_json::json!({"sub": "alice", "aud": "example.org"}),
            300,
        )
    }

    #[test]
    fn a_fan_out_signs_one_link_per_callee_and_each_callee_accepts_only_its_own() {
        let ca = TestCa::new("example.org");
        let orchestrator = service(&ca, "orchestrator", 16);
        let classifier = service(&ca, "classifier", 16);
        let token = token(&ca);
        let from_frontend = headers(&[("authorization", format!("Bearer {token}"))]);
        let forward = orchestrator
            .forward(&from_frontend, Some(&id("frontend")))
            .unwrap()
            .unwrap();
        let to_classifier = headers(&forward.headers_for(&id("classifier")).unwrap());
        let to_validator = headers(&forward.headers_for(&id("validator")).unwrap());
        assert_ne!(
            to_classifier.get(crate::DELEGATION_HEADER),
            to_validator.get(crate::DELEGATION_HEADER)
        );
        // The validator's link is refused by the classifier: it names another hop.
        let err = classifier
            .verify(&to_validator, Some(&id("orchestrator")))
            .unwrap_err();
        assert!(
            matches!(err, ChainError::LinkWrongAudience { index: 1, .. }),
            "{err}"
        );
        let chain = classifier
            .verify(&to_classifier, Some(&id("orchestrator")))
            .unwrap()
            .unwrap();
        assert_eq!(chain.hops, vec![id("orchestrator")]);
        // And only once.
        let err = classifier
            .verify(&to_classifier, Some(&id("orchestrator")))
            .unwrap_err();
        assert!(matches!(err, ChainError::Replayed { .. }), "{err}");
    }

    #[test]
    fn the_gateway_takes_one_token_from_each_branch_once() {
        let ca = TestCa::new("example.org");
        let gateway = service(&ca, "gateway", 16);
        let orchestrator = service(&ca, "orchestrator", 16);
        let token = token(&ca);
        let from_frontend = headers(&[("authorization", format!("Bearer {token}"))]);
        let forward = orchestrator
            .forward(&from_frontend, Some(&id("frontend")))
            .unwrap()
            .unwrap();
        for branch in ["classifier", "validator", "scorer"] {
            let agent = service(&ca, branch, 16);
            let incoming = headers(&forward.headers_for(&id(branch)).unwrap());
            let onward = agent
                .forward(&incoming, Some(&id("orchestrator")))
                .unwrap()
                .unwrap();
            let to_gateway = headers(&onward.headers_for(&id("gateway")).unwrap());
            gateway
                .verify(&to_gateway, Some(&id(branch)))
                .unwrap()
                .unwrap();
            let again = gateway.verify(&to_gateway, Some(&id(branch))).unwrap_err();
            assert!(matches!(again, ChainError::Replayed { .. }), "{again}");
        }
    }

    #[test]
    fn a_full_replay_cache_refuses_new_tokens() {
        let ca = TestCa::new("example.org");
        let planner = service(&ca, "planner", 1);
        planner
            .verify(
                &headers(&[("authorization", format!("Bearer {}", token(&ca)))]),
                Some(&id("frontend")),
            )
            .unwrap();
        let err = planner
            .verify(
                &headers(&[("authorization", format!("Bearer {}", token(&ca)))]),
                Some(&id("frontend")),
            )
            .unwrap_err();
        assert!(
            matches!(err, ChainError::ReplayCacheFull { max: 1 }),
            "{err}"
        );
    }
}
