//! SPIFFE federation, as SPIRE does it: the server serves its own bundle at a SPIFFE bundle
//! endpoint (`https_spiffe` or `https_web`), fetches the bundles of the trust domains it
//! federates with from theirs, keeps them in the datastore (so they survive a crash), and
//! hands them to its nodes with the entries. `agentmesh bundle set|list|delete` manage them by
//! hand (the admin API), which is also how an `https_spiffe` endpoint is bootstrapped: its
//! certificate is checked against the foreign bundle held before the first fetch.
//!
//! A fetch that fails (unreachable, not a bundle, a certificate with the wrong SPIFFE ID)
//! logs one line naming the trust domain, the URL and the reason, and the last good bundle
//! stays in force; nodes drop its roots once they expire.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentmesh_proto::v1;
use agentmesh_spiffe::{SpiffeId, TrustDomain};
use agentmesh_tls::{Jwks, RotatingCert, SpiffeBundle};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use tokio::sync::watch;

use crate::ca::unix_secs;
use crate::datastore::{DatastoreError, FederatedBundleRow};
use crate::state::ServerState;

/// The refresh hint served when `[federation.bundle_endpoint] refresh_hint` is not set, and
/// the refresh used for a foreign bundle that carries none: SPIRE's default, 5 minutes.
pub const DEFAULT_REFRESH_HINT: Duration = Duration::from_secs(300);
/// The shortest refresh a foreign publisher can ask for: a hint of 0 must not spin.
const MIN_REFRESH: Duration = Duration::from_secs(1);
/// Fetches per refresh hint, as SPIRE makes them (`attemptsPerRefreshHint`): a publisher's
/// hint says how stale a consumer may get, so one failed or slow fetch must not make it
/// staler than that.
const ATTEMPTS_PER_HINT: u32 = 4;
/// The first retry after a failed fetch; doubles up to [`MAX_RETRY`] (never past the
/// refresh interval).
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// How long one fetch may take in all.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest bundle document read: bundles are a few KiB; this bounds a hostile endpoint.
const MAX_BUNDLE_BYTES: usize = 1 << 20;
/// How long one client may hold a bundle endpoint connection (handshake and request).
const ENDPOINT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// A bundle endpoint profile (SPIFFE Federation spec, section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// The endpoint presents an X509-SVID; clients check it against the trust domain's own
    /// bundle (bootstrapped by hand) and the endpoint's SPIFFE ID.
    HttpsSpiffe,
    /// The endpoint presents an ordinary web PKI certificate.
    HttpsWeb,
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Profile::HttpsSpiffe => "https_spiffe",
            Profile::HttpsWeb => "https_web",
        })
    }
}

/// `[federation]` in the server's config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// `bundle_endpoint = { listen, profile, ... }`: serve this server's bundle.
    pub bundle_endpoint: Option<BundleEndpointConfig>,
    /// `[[federation.federates_with]]`: the foreign bundles to fetch and refresh.
    #[serde(default)]
    pub federates_with: Vec<FederatesWith>,
}

/// `[federation.bundle_endpoint]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleEndpointConfig {
    /// `IP:PORT`.
    pub listen: SocketAddr,
    /// `https_spiffe` (the server's own SVID, `spiffe://<td>/agentmesh/server`) or `https_web`.
    pub profile: Profile,
    /// `https_web`: the PEM certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// `https_web`: the PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub key_file: Option<PathBuf>,
    /// `spiffe_refresh_hint` served, e.g. `"5m"` (default 5m, SPIRE's).
    #[serde(default, deserialize_with = "de_duration")]
    pub refresh_hint: Option<Duration>,
}

/// One `[[federation.federates_with]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederatesWith {
    /// The foreign trust domain, `other.td` or `spiffe://other.td`.
    pub trust_domain: String,
    /// The bundle endpoint URL, `https://host:port/...`.
    pub url: String,
    /// How the endpoint authenticates.
    pub profile: Profile,
    /// `https_spiffe`: the SPIFFE ID the endpoint's certificate must carry (SPIRE's is
    /// `spiffe://<td>/spire/server`, ours `spiffe://<td>/agentmesh/server`).
    pub endpoint_spiffe_id: Option<String>,
    /// `https_web`: PEM roots to trust instead of the Mozilla roots compiled in.
    pub ca_file: Option<PathBuf>,
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
        .transpose()
}

/// Why federation could not start, or why a bundle was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FederationError {
    /// A `[federation]` key is wrong.
    #[error("federation.{key}: {reason}")]
    Config {
        /// The key, e.g. `federates_with[0].endpoint_spiffe_id`.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The bundle endpoint's address could not be bound.
    #[error("federation.bundle_endpoint.listen {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// A bundle document is unusable.
    #[error("bundle for {trust_domain}: {source}")]
    Bundle {
        /// The trust domain it was for.
        trust_domain: String,
        /// Why.
        source: agentmesh_tls::SpiffeBundleError,
    },
    /// A PEM bundle is unusable.
    #[error("bundle for {trust_domain}: {reason}")]
    Pem {
        /// The trust domain it was for.
        trust_domain: String,
        /// Why.
        reason: String,
    },
    /// The datastore failed.
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
}

/// A validated `[[federation.federates_with]]`.
#[derive(Debug, Clone)]
struct Peer {
    trust_domain: TrustDomain,
    url: String,
    profile: Profile,
    endpoint_id: Option<SpiffeId>,
    web_roots: Option<Vec<Vec<u8>>>,
}

impl FederationConfig {
    /// Checks every key before anything starts, so a typo stops the server with its name.
    ///
    /// # Errors
    /// [`FederationError::Config`] naming the key.
    pub fn check(&self, own: &TrustDomain) -> Result<(), FederationError> {
        self.peers(own).map(|_| ())?;
        if let Some(ep) = &self.bundle_endpoint {
            endpoint_tls(ep, None)?;
        }
        Ok(())
    }

    fn peers(&self, own: &TrustDomain) -> Result<Vec<Peer>, FederationError> {
        let mut seen = BTreeMap::new();
        let mut peers = Vec::new();
        for (i, f) in self.federates_with.iter().enumerate() {
            let bad = |key: &str, reason: String| FederationError::Config {
                key: format!("federates_with[{i}].{key}"),
                reason,
            };
            let name = f
                .trust_domain
                .strip_prefix("spiffe://")
                .unwrap_or(&f.trust_domain);
            let td = TrustDomain::new(name).map_err(|e| bad("trust_domain", e.to_string()))?;
            if &td == own {
                return Err(bad(
                    "trust_domain",
                    format!("{td} is this server's own trust domain"),
                ));
            }
            if seen.insert(td.clone(), i).is_some() {
                return Err(bad("trust_domain", format!("{td} is listed twice")));
            }
            if !f.url.starts_with("https://") {
                return Err(bad("url", format!("{:?} is not an https:// URL", f.url)));
            }
            f.url
                .parse::<hyper::Uri>()
                .map_err(|e| bad("url", format!("{:?}: {e}", f.url)))?;
            let endpoint_id = match (f.profile, &f.endpoint_spiffe_id) {
                (Profile::HttpsSpiffe, None) => {
                    return Err(bad(
                        "endpoint_spiffe_id",
                        "missing: https_spiffe needs the SPIFFE ID of the endpoint's certificate"
                            .into(),
                    ));
                }
                (Profile::HttpsSpiffe, Some(id)) => {
                    let id = SpiffeId::new(id)
                        .map_err(|e| bad("endpoint_spiffe_id", format!("{id:?}: {e}")))?;
                    Some(id)
                }
                (Profile::HttpsWeb, Some(_)) => {
                    return Err(bad(
                        "endpoint_spiffe_id",
                        "only https_spiffe endpoints have one".into(),
                    ));
                }
                (Profile::HttpsWeb, None) => None,
            };
            let web_roots = match (&f.profile, &f.ca_file) {
                (Profile::HttpsWeb, Some(path)) => {
                    let pem = std::fs::read(path)
                        .map_err(|e| bad("ca_file", format!("{}: {e}", path.display())))?;
                    let roots = pem_certs(&pem)
                        .map_err(|e| bad("ca_file", format!("{}: {e}", path.display())))?;
                    Some(roots)
                }
                (Profile::HttpsSpiffe, Some(_)) => {
                    return Err(bad(
                        "ca_file",
                        "https_spiffe endpoints are checked against the trust domain's bundle, not a CA file".into(),
                    ));
                }
                (Profile::HttpsWeb, None) => None,
                (Profile::HttpsSpiffe, None) => None,
            };
            peers.push(Peer {
                trust_domain: td,
                url: f.url.clone(),
                profile: f.profile,
                endpoint_id,
                web_roots,
            });
        }
        Ok(peers)
    }
}

/// The CERTIFICATE blocks of a PEM file, DER.
fn pem_certs(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not PEM text".to_owned())?;
    let certs = agentmesh_tls::pem_decode_all(text, "CERTIFICATE").map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block".into());
    }
    for c in &certs {
        agentmesh_tls::cert_validity(c).map_err(|e| e.to_string())?;
    }
    Ok(certs)
}

/// Parses a bundle given by hand or fetched: the SPIFFE bundle document (`spiffe`), or PEM
/// certificates (`pem`, X.509 roots only, as SPIRE's `bundle set -format pem`).
///
/// # Errors
/// [`FederationError::Bundle`] or [`FederationError::Pem`].
pub fn parse_bundle(
    trust_domain: &TrustDomain,
    data: &[u8],
    format: &str,
) -> Result<SpiffeBundle, FederationError> {
    match format {
        "pem" => pem_certs(data)
            .map(|x509_authorities| SpiffeBundle {
                x509_authorities,
                ..SpiffeBundle::default()
            })
            .map_err(|reason| FederationError::Pem {
                trust_domain: trust_domain.to_string(),
                reason,
            }),
        _ => SpiffeBundle::from_json(data).map_err(|source| FederationError::Bundle {
            trust_domain: trust_domain.to_string(),
            source,
        }),
    }
}

/// Stores `bundle` for `trust_domain` if it differs from what is held, and wakes the node
/// sync streams. Returns whether anything changed.
///
/// # Errors
/// Datastore failures.
pub fn store(
    state: &ServerState,
    trust_domain: &TrustDomain,
    bundle: &SpiffeBundle,
    source: &str,
) -> Result<bool, FederationError> {
    let held = state
        .datastore
        .get_federated_bundle(trust_domain.as_str())?;
    let jwks = Jwks::new(bundle.jwt_keys.keys.clone()).to_json();
    let same = held
        .as_ref()
        .is_some_and(|h| h.x509_authorities == bundle.x509_authorities && h.jwks == jwks);
    if same && held.as_ref().is_some_and(|h| h.source == source) {
        return Ok(false);
    }
    let row = FederatedBundleRow {
        trust_domain: trust_domain.to_string(),
        x509_authorities: bundle.x509_authorities.clone(),
        jwks,
        sequence: bundle.sequence.unwrap_or(0),
        refresh_hint: bundle.refresh_hint.unwrap_or(0),
        source: source.to_owned(),
        updated_at: unix_secs(SystemTime::now()),
    };
    state.datastore.put_federated_bundle(&row)?;
    if same {
        // The same keys from another source (the endpoint confirming a bundle set by hand):
        // remembered, but nothing for the nodes to learn.
        tracing::info!(trust_domain = %trust_domain, %source, "federated bundle confirmed");
        return Ok(false);
    }
    tracing::info!(
        trust_domain = %trust_domain,
        %source,
        roots = row.x509_authorities.len(),
        jwt_keys = bundle.jwt_keys.keys.len(),
        sequence = row.sequence,
        "federated bundle updated"
    );
    state.notify_entries_changed();
    Ok(true)
}

/// A stored foreign bundle in wire form.
pub fn to_proto(row: FederatedBundleRow) -> v1::FederatedBundle {
    v1::FederatedBundle {
        refresh_hint_seconds: row.refresh_hint,
        source: row.source,
        updated_at: row.updated_at,
        bundle: Some(v1::Bundle {
            trust_domain: row.trust_domain,
            x509_authorities: row.x509_authorities,
            jwks: row.jwks,
            sequence: row.sequence,
        }),
    }
}

/// The foreign bundles as nodes get them: only roots that have not expired, and no bundle
/// left without a root (the last good bundle is kept until it expires).
///
/// # Errors
/// Datastore failures.
pub fn for_nodes(state: &ServerState) -> Result<Vec<v1::Bundle>, DatastoreError> {
    let now = SystemTime::now();
    Ok(state
        .datastore
        .list_federated_bundles()?
        .into_iter()
        .filter_map(|mut row| {
            row.x509_authorities.retain(|der| {
                agentmesh_tls::cert_validity(der).is_ok_and(|(_, not_after)| not_after > now)
            });
            (!row.x509_authorities.is_empty()).then(|| to_proto(row).bundle.unwrap_or_default())
        })
        .collect())
}

// === The bundle endpoint ===

/// The server's bundle in the SPIFFE bundle format.
fn own_bundle_document(state: &ServerState, refresh_hint: Duration) -> String {
    let ca = state.ca.current();
    let bundle = SpiffeBundle {
        x509_authorities: ca.roots.clone(),
        jwt_keys: Jwks::new(ca.jwks.keys.clone()),
        sequence: Some(ca.sequence),
        refresh_hint: Some(refresh_hint.as_secs().max(1) as i64),
    };
    bundle.to_json().unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot serialize the own bundle");
        String::from("{\"keys\":[]}")
    })
}

/// The TLS config of the bundle endpoint. `cert` is the server's own rotating SVID
/// (`https_spiffe`); `None` only checks the config.
fn endpoint_tls(
    ep: &BundleEndpointConfig,
    cert: Option<Arc<RotatingCert>>,
) -> Result<Option<Arc<rustls::ServerConfig>>, FederationError> {
    let bad = |key: &str, reason: String| FederationError::Config {
        key: format!("bundle_endpoint.{key}"),
        reason,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad("profile", e.to_string()))?
        .with_no_client_auth();
    let mut config = match ep.profile {
        Profile::HttpsSpiffe => {
            if ep.cert_file.is_some() || ep.key_file.is_some() {
                return Err(bad(
                    "cert_file",
                    "https_spiffe presents the server's own SVID; cert_file and key_file are for https_web".into(),
                ));
            }
            let Some(cert) = cert else { return Ok(None) };
            builder.with_cert_resolver(cert)
        }
        Profile::HttpsWeb => {
            let (Some(cert_file), Some(key_file)) = (&ep.cert_file, &ep.key_file) else {
                return Err(bad(
                    "cert_file",
                    "https_web needs cert_file and key_file (PEM)".into(),
                ));
            };
            let chain = std::fs::read(cert_file)
                .map_err(|e| e.to_string())
                .and_then(|pem| pem_certs(&pem))
                .map_err(|e| bad("cert_file", format!("{}: {e}", cert_file.display())))?;
            let key = std::fs::read_to_string(key_file)
                .map_err(|e| e.to_string())
                .and_then(|pem| private_key(&pem))
                .map_err(|e| bad("key_file", format!("{}: {e}", key_file.display())))?;
            builder
                .with_single_cert(
                    chain
                        .into_iter()
                        .map(rustls::pki_types::CertificateDer::from)
                        .collect(),
                    key,
                )
                .map_err(|e| bad("key_file", format!("{}: {e}", key_file.display())))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

fn private_key(pem: &str) -> Result<rustls::pki_types::PrivateKeyDer<'static>, String> {
    use rustls::pki_types::{
        PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
    };
    let block = |label: &str| {
        agentmesh_tls::pem_decode_all(pem, label)
            .ok()
            .and_then(|blocks| blocks.into_iter().next())
    };
    if let Some(der) = block("PRIVATE KEY") {
        return Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)));
    }
    if let Some(der) = block("EC PRIVATE KEY") {
        return Ok(PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der)));
    }
    if let Some(der) = block("RSA PRIVATE KEY") {
        return Ok(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der)));
    }
    Err("no PRIVATE KEY block".into())
}

fn answer<B>(req: &Request<B>, document: String) -> Response<Full<Bytes>> {
    let builder = Response::builder();
    let response = if req.method() == Method::GET {
        builder
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(document)))
    } else {
        builder
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header("allow", "GET")
            .body(Full::new(Bytes::from_static(b"only GET is served\n")))
    };
    response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// Starts the bundle endpoint; returns its address (useful with port 0) and its task.
///
/// # Errors
/// A bad `[federation.bundle_endpoint]` or an address that cannot be bound.
pub async fn start_endpoint(
    ep: &BundleEndpointConfig,
    state: Arc<ServerState>,
    cert: Arc<RotatingCert>,
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), FederationError> {
    let tls = endpoint_tls(ep, Some(cert))?.ok_or_else(|| FederationError::Config {
        key: "bundle_endpoint".into(),
        reason: "no TLS config".into(),
    })?;
    let listener = tokio::net::TcpListener::bind(ep.listen)
        .await
        .map_err(|e| FederationError::Bind(ep.listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| FederationError::Bind(ep.listen, e))?;
    let refresh_hint = ep.refresh_hint.unwrap_or(DEFAULT_REFRESH_HINT);
    tracing::info!(listen = %addr, profile = %ep.profile, refresh_hint = ?refresh_hint, "serving the SPIFFE bundle endpoint");
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let task = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                a = listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "bundle endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let state = state.clone();
            tokio::spawn(async move {
                let serve = async {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "bundle endpoint: TLS handshake refused");
                            return;
                        }
                    };
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let doc = own_bundle_document(&state, refresh_hint);
                            let resp = answer(&req, doc);
                            async move { Ok::<_, std::convert::Infallible>(resp) }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                };
                // A bundle is a few KiB: a client that needs longer is stalling.
                if tokio::time::timeout(ENDPOINT_CONNECTION_TIMEOUT, serve)
                    .await
                    .is_err()
                {
                    tracing::debug!(%peer, "bundle endpoint: connection timed out");
                }
            });
        }
    });
    Ok((addr, task))
}

// === Fetching foreign bundles ===

/// Starts one refresh loop per `[[federation.federates_with]]`.
///
/// # Errors
/// A bad `[federation]` key.
pub fn start_fetchers(
    cfg: &FederationConfig,
    state: Arc<ServerState>,
    stop: watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, FederationError> {
    let peers = cfg.peers(state.trust_domain())?;
    Ok(peers
        .into_iter()
        .map(|peer| tokio::spawn(refresh_loop(peer, state.clone(), stop.clone())))
        .collect())
}

/// What one fetch found.
enum Fetched {
    Bundle(SpiffeBundle),
}

async fn refresh_loop(peer: Peer, state: Arc<ServerState>, mut stop: watch::Receiver<bool>) {
    tracing::info!(trust_domain = %peer.trust_domain, url = %peer.url, profile = %peer.profile, "federating with a foreign trust domain");
    let mut wait = Duration::ZERO;
    let mut retry = FIRST_RETRY;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(wait) => {}
        }
        match fetch(&peer, &state).await {
            Ok(Fetched::Bundle(bundle)) => {
                if retry != FIRST_RETRY {
                    tracing::info!(trust_domain = %peer.trust_domain, url = %peer.url, "the federated bundle endpoint answers again");
                }
                retry = FIRST_RETRY;
                wait = refresh_interval(bundle.refresh_hint);
                if let Err(e) = store(&state, &peer.trust_domain, &bundle, &peer.url) {
                    tracing::error!(trust_domain = %peer.trust_domain, error = %e, "storing the federated bundle failed");
                }
            }
            Err(reason) => {
                let kept = kept_until(&state, &peer.trust_domain);
                tracing::warn!(
                    trust_domain = %peer.trust_domain,
                    url = %peer.url,
                    error = %reason,
                    kept = %kept,
                    "fetching the federated bundle failed; keeping the last good bundle ({kept})"
                );
                wait = retry;
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}

/// The wait before the next fetch of a bundle carrying `hint` (seconds): a quarter of the
/// hint, at least [`MIN_REFRESH`]; [`DEFAULT_REFRESH_HINT`] when there is none.
fn refresh_interval(hint: Option<i64>) -> Duration {
    hint.and_then(|h| u64::try_from(h).ok())
        .map_or(DEFAULT_REFRESH_HINT, |h| {
            Duration::from_secs(h) / ATTEMPTS_PER_HINT
        })
        .max(MIN_REFRESH)
}

/// What the last good bundle of `td` is worth now, in words for the log line.
fn kept_until(state: &ServerState, td: &TrustDomain) -> String {
    let Ok(Some(row)) = state.datastore.get_federated_bundle(td.as_str()) else {
        return "none held yet".into();
    };
    let latest = row
        .x509_authorities
        .iter()
        .filter_map(|der| agentmesh_tls::cert_validity(der).ok())
        .map(|(_, not_after)| not_after)
        .max();
    match latest.map(|t| t.duration_since(SystemTime::now())) {
        Some(Ok(left)) => format!(
            "valid for {}",
            humantime::format_duration(Duration::from_secs(left.as_secs()))
        ),
        _ => "expired".into(),
    }
}

/// One fetch of `peer`'s bundle, with the reason in one sentence when it fails.
async fn fetch(peer: &Peer, state: &ServerState) -> Result<Fetched, String> {
    let tls = match peer.profile {
        Profile::HttpsSpiffe => {
            let Some(held) = state
                .datastore
                .get_federated_bundle(peer.trust_domain.as_str())
                .map_err(|e| e.to_string())?
            else {
                return Err(format!(
                    "no bundle of {} is held to authenticate its https_spiffe endpoint; bootstrap it with `agentmesh bundle set --id {}`",
                    peer.trust_domain,
                    peer.trust_domain.id_string()
                ));
            };
            let roots: Vec<_> = held
                .x509_authorities
                .into_iter()
                .map(rustls::pki_types::CertificateDer::from)
                .collect();
            let id = peer
                .endpoint_id
                .clone()
                .ok_or_else(|| "no endpoint_spiffe_id".to_owned())?;
            let cfg = agentmesh_tls::client_config(
                None,
                &roots,
                agentmesh_tls::exact([id]),
                // No ALPN here: hyper-rustls sets it (and refuses a config that has one).
                &[],
            )
            .map_err(|e| e.to_string())?;
            (*cfg).clone()
        }
        Profile::HttpsWeb => match &peer.web_roots {
            Some(roots) => agentmesh_proto::https::tls_with_roots(roots.clone()),
            None => agentmesh_proto::https::webpki_tls(),
        }
        .map_err(|e| e.to_string())?,
    };
    let mut settings = agentmesh_proto::https::ClientSettings::new(
        "agentmesh-federation",
        FETCH_TIMEOUT,
        MAX_BUNDLE_BYTES,
    );
    settings.timeout = Some(FETCH_TIMEOUT);
    let client = agentmesh_proto::https::HttpClient::new(tls, settings);
    let (status, body) = client
        .request(Method::GET, &peer.url, Vec::new(), Bytes::new())
        .await
        .map_err(|e| format!("GET {}: {e}", peer.url))?;
    if status != StatusCode::OK {
        return Err(format!("GET {} answered HTTP {status}", peer.url));
    }
    let bundle = SpiffeBundle::from_json(&body).map_err(|e| e.to_string())?;
    Ok(Fetched::Bundle(bundle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_is_fetched_four_times_per_refresh_hint_and_never_faster_than_each_second() {
        assert_eq!(refresh_interval(Some(60)), Duration::from_secs(15));
        assert_eq!(refresh_interval(Some(300)), Duration::from_secs(75));
        assert_eq!(refresh_interval(Some(2)), MIN_REFRESH);
        assert_eq!(refresh_interval(Some(0)), MIN_REFRESH);
        assert_eq!(refresh_interval(Some(-5)), DEFAULT_REFRESH_HINT);
        assert_eq!(refresh_interval(None), DEFAULT_REFRESH_HINT);
    }

    fn parse(toml_text: &str) -> Result<FederationConfig, String> {
        #[derive(Deserialize)]
        struct File {
            federation: FederationConfig,
        }
        let f: File = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        let own = TrustDomain::new("a.test").unwrap();
        f.federation.check(&own).map_err(|e| e.to_string())?;
        Ok(f.federation)
    }

    #[test]
    fn federation_config_names_the_bad_key() {
        let ok = parse(
            r#"[federation]
bundle_endpoint = { listen = "127.0.0.1:0", profile = "https_spiffe", refresh_hint = "10s" }
[[federation.federates_with]]
trust_domain = "spiffe://b.test"
url = "https://127.0.0.1:8443"
profile = "https_spiffe"
endpoint_spiffe_id = "spiffe://b.test/spire/server"
"#,
        )
        .unwrap();
        assert_eq!(
            ok.bundle_endpoint.unwrap().refresh_hint,
            Some(Duration::from_secs(10))
        );
        for (doc, want) in [
            (
                "[[federation.federates_with]]\ntrust_domain = \"b.test\"\nurl = \"https://x\"\nprofile = \"https_spiffe\"\n",
                "federates_with[0].endpoint_spiffe_id: missing",
            ),
            (
                "[[federation.federates_with]]\ntrust_domain = \"a.test\"\nurl = \"https://x\"\nprofile = \"https_web\"\n",
                "own trust domain",
            ),
            (
                "[[federation.federates_with]]\ntrust_domain = \"b.test\"\nurl = \"http://x\"\nprofile = \"https_web\"\n",
                "federates_with[0].url",
            ),
            (
                "[federation]\nbundle_endpoint = { listen = \"127.0.0.1:0\", profile = \"https_web\" }\n",
                "bundle_endpoint.cert_file",
            ),
            (
                "[[federation.federates_with]]\ntrust_domain = \"b.test\"\nurl = \"https://x\"\nprofile = \"https_webb\"\n",
                "unknown variant",
            ),
        ] {
            let err = parse(doc).unwrap_err();
            assert!(err.contains(want), "{doc}: {err}");
        }
    }
}
