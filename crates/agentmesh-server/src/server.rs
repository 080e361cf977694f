//! Starting and stopping a server: the datastore, the CA, the node API listener, the admin
//! socket and the rotation loop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use agentmesh_proto::v1::{admin_server::AdminServer, node_api_server::NodeApiServer};
use agentmesh_spiffe::{SpiffeId, TrustDomain};
use agentmesh_tls::{ClientAuth, RotatingCert, SvidCredentials};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin_api::AdminService;
use crate::bootstrap::{BootstrapConfig, BootstrapError};
use crate::ca::{CaLifetimes, CaManager, CaManagerError};
use crate::datastore::{Datastore, DatastoreError};
use crate::federation::{FederationConfig, FederationError};
use crate::node_api::NodeApiService;
use crate::oidc_discovery::{OidcDiscoveryConfig, OidcDiscoveryError};
use crate::registration::EntryLimits;
use crate::state::{IssuanceSettings, SERVER_PATH, ServerState};
use crate::tls_incoming::{self, SharedTlsConfig};
use crate::upstream::{OpenBaoUpstreamConfig, UpstreamAuthority, UpstreamError};
use crate::x509pop::{X509PopAttestError, X509PopConfig, X509PopVerifier};

/// Everything a server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the datastore and the keys live.
    pub data_dir: PathBuf,
    /// The trust domain this server is the authority of.
    pub trust_domain: TrustDomain,
    /// The node API's TCP address.
    pub listen: SocketAddr,
    /// The admin API's Unix socket.
    pub admin_socket: PathBuf,
    /// CA key lifetimes.
    pub ca: CaLifetimes,
    /// SVID and token lifetimes.
    pub issuance: IssuanceSettings,
    /// `[upstream_authority.openbao]`: OpenBao signs the intermediate and holds the root.
    pub upstream: Option<OpenBaoUpstreamConfig>,
    /// `[oidc_discovery]`: the JWKS and discovery document for JWT-SVID verifiers.
    pub oidc_discovery: Option<OidcDiscoveryConfig>,
    /// `[limits]`: the node API's handshake and preface deadlines, head size, streams, and
    /// connections per caller (node SPIFFE ID, or address before attestation) and in total;
    /// the admin socket's per uid.
    pub limits: agentmesh_proto::limits::ListenerLimits,
    /// `[bootstrap]`: entries, intentions, the bundle file and a join token file, set up at
    /// start.
    pub bootstrap: BootstrapConfig,
    /// `[node_attestation.x509pop]`: the CA bundle x509pop node certificates must chain to;
    /// `None` refuses x509pop (join tokens always work).
    pub x509pop: Option<X509PopConfig>,
    /// `[federation]`: the bundle endpoint and the foreign bundles to fetch.
    pub federation: FederationConfig,
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The data dir is unusable.
    #[error("data dir {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    /// The datastore failed.
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    /// The CA failed.
    #[error(transparent)]
    Ca(#[from] CaManagerError),
    /// The data dir holds another trust domain's CA.
    #[error(
        "data dir {dir} holds the CA of trust domain {found}, not {wanted}; use another --data-dir"
    )]
    TrustDomainMismatch {
        /// The data dir.
        dir: PathBuf,
        /// What the stored root says.
        found: String,
        /// What was asked for.
        wanted: String,
    },
    /// TLS setup failed.
    #[error("tls: {0}")]
    Tls(#[from] agentmesh_tls::TlsError),
    /// The server's own certificate could not be loaded.
    #[error("server certificate: {0}")]
    Credentials(#[from] agentmesh_tls::CredentialsError),
    /// The node API address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    /// The admin socket could not be bound.
    #[error(transparent)]
    AdminSocket(#[from] agentmesh_proto::unix::UnixSocketError),
    /// The upstream authority is misconfigured, unreachable or refused.
    #[error("upstream authority OpenBao: {0}")]
    Upstream(#[from] UpstreamError),
    /// The OIDC discovery listener could not start.
    #[error(transparent)]
    OidcDiscovery(#[from] OidcDiscoveryError),
    /// `[bootstrap]` declares something invalid, or its files could not be written.
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    /// The x509pop CA bundle is unreadable or malformed.
    #[error(transparent)]
    X509Pop(#[from] X509PopAttestError),
    /// `[federation]` is misconfigured, or its bundle endpoint cannot listen.
    #[error(transparent)]
    Federation(#[from] FederationError),
}

/// A running server. Dropping it does not stop it; call [`RunningServer::shutdown`].
#[derive(Debug)]
pub struct RunningServer {
    /// Where the node API listens (useful with port 0).
    pub listen_addr: SocketAddr,
    /// The admin socket.
    pub admin_socket: PathBuf,
    /// Where OIDC discovery listens, when configured.
    pub oidc_discovery_addr: Option<SocketAddr>,
    /// Where the SPIFFE bundle endpoint listens, when configured.
    pub bundle_endpoint_addr: Option<SocketAddr>,
    /// Shared state, for `TestServer::mint_x509_svid`.
    #[cfg(feature = "testing")]
    pub(crate) state: Arc<ServerState>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// Stops serving and waits for the listeners to close.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = std::fs::remove_file(&self.admin_socket);
    }
}

/// How often the rotation loop looks at the CA and the server's own certificate.
const ROTATION_TICK: Duration = Duration::from_secs(1);
/// Lifetime of the server's own TLS certificate.
const SERVER_SVID_TTL: Duration = Duration::from_secs(3600);

/// Starts a server.
///
/// # Errors
/// Any [`ServerError`]; nothing keeps running after an error.
pub async fn start(cfg: ServerConfig) -> Result<RunningServer, ServerError> {
    // Checked first, so a bad bundle leaves nothing behind.
    let x509pop = cfg
        .x509pop
        .as_ref()
        .map(X509PopVerifier::load)
        .transpose()?;
    cfg.federation.check(&cfg.trust_domain)?;
    if let (Some(c), Some(v)) = (&cfg.x509pop, &x509pop) {
        tracing::info!(ca_bundle_path = %c.ca_bundle_path.display(), cas = v.len(), "x509pop node attestation on");
    }
    let upstream = cfg
        .upstream
        .clone()
        .map(UpstreamAuthority::new)
        .transpose()?;
    let db_path = cfg.data_dir.join("server.db");
    let keys_dir = cfg.data_dir.join("keys");
    let (datastore, ca) = open_ca(&cfg, upstream.as_ref(), &db_path, &keys_dir).await?;
    let state = new_state(datastore, ca, cfg.issuance, x509pop);
    let limits = EntryLimits {
        max_x509_ttl: cfg.ca.intermediate / 2,
        max_jwt_ttl: cfg.ca.intermediate / 2,
    };
    // Before any listener: a node or a workload never sees the server without its declared
    // entries and intentions, and a bad declaration stops the server before it serves.
    crate::bootstrap::apply(&state, &cfg.bootstrap, limits)?;

    // The server's own identity for the node API.
    let server_id = SpiffeId::from_path(&cfg.trust_domain, SERVER_PATH)
        .unwrap_or_else(|_| unreachable!("a constant, valid path"));
    let (creds, server_svid_renew_at) = mint_server_svid(&state, &server_id)?;
    let rotating = Arc::new(RotatingCert::new(&creds)?);
    let tls: SharedTlsConfig = Arc::new(RwLock::new(tls_config(&state, &rotating)?));

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| ServerError::Listen(cfg.listen, e))?;
    let listen_addr = listener
        .local_addr()
        .map_err(|e| ServerError::Listen(cfg.listen, e))?;
    let admin_listener = agentmesh_proto::unix::bind(&cfg.admin_socket, 0o600).await?;

    let (stop, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = Vec::new();

    let incoming = tls_incoming::incoming(listener, tls.clone(), cfg.limits.clone());
    let node_api = NodeApiServer::new(NodeApiService::new(state.clone(), stop_rx.clone()))
        .max_decoding_message_size(agentmesh_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(agentmesh_proto::MAX_MESSAGE_BYTES);
    let rx = stop_rx.clone();
    let node_api_limits = cfg.limits.clone();
    tasks.push(tokio::spawn(async move {
        let res = agentmesh_proto::limits::grpc_server(&node_api_limits)
            .add_service(node_api)
            .serve_with_incoming_shutdown(incoming, stopped(rx))
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "node API stopped");
        }
    }));

    let admin = AdminServer::new(AdminService::new(state.clone(), limits));
    let rx = stop_rx.clone();
    let admin_limits = cfg.limits.clone();
    let incoming =
        agentmesh_proto::limits::unix_incoming(admin_listener, &cfg.limits, "server admin socket");
    tasks.push(tokio::spawn(async move {
        let res = agentmesh_proto::limits::grpc_server(&admin_limits)
            .add_service(admin)
            .serve_with_incoming_shutdown(incoming, stopped(rx))
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "admin API stopped");
        }
    }));

    let mut oidc_discovery_addr = None;
    if let Some(oidc) = &cfg.oidc_discovery {
        let (addr, task) =
            crate::oidc_discovery::start(oidc, state.clone(), cfg.limits.clone(), stop_rx.clone())
                .await?;
        oidc_discovery_addr = Some(addr);
        tasks.push(task);
    }
    let mut bundle_endpoint_addr = None;
    if let Some(ep) = &cfg.federation.bundle_endpoint {
        let (addr, task) =
            crate::federation::start_endpoint(ep, state.clone(), rotating.clone(), stop_rx.clone())
                .await?;
        bundle_endpoint_addr = Some(addr);
        tasks.push(task);
    }
    tasks.extend(crate::federation::start_fetchers(
        &cfg.federation,
        state.clone(),
        stop_rx.clone(),
    )?);
    if let Some(up) = upstream {
        tasks.push(tokio::spawn(upstream_loop(
            up,
            state.clone(),
            keys_dir,
            cfg.ca.intermediate,
            stop_rx.clone(),
        )));
    }

    if let Some(path) = cfg.bootstrap.bundle_file.clone() {
        tasks.push(tokio::spawn(crate::bootstrap::follow_bundle(
            state.clone(),
            path,
            stop_rx.clone(),
        )));
    }

    // Rotation: the CA's keys, the bundle the TLS listener trusts, and our own certificate.
    tasks.push(tokio::spawn(rotation_loop(
        state.clone(),
        rotating,
        tls,
        server_id,
        server_svid_renew_at,
        stop_rx,
    )));

    tracing::info!(
        trust_domain = %cfg.trust_domain,
        listen = %listen_addr,
        admin_socket = %cfg.admin_socket.display(),
        "server ready"
    );
    Ok(RunningServer {
        listen_addr,
        admin_socket: cfg.admin_socket,
        oidc_discovery_addr,
        bundle_endpoint_addr,
        #[cfg(feature = "testing")]
        state,
        stop,
        tasks,
    })
}

/// The state the APIs share. Policy revisions count up from the wall clock in milliseconds, so
/// they keep growing across a restart of the server.
fn new_state(
    datastore: Arc<Datastore>,
    ca: CaManager,
    settings: IssuanceSettings,
    x509pop: Option<X509PopVerifier>,
) -> Arc<ServerState> {
    let (entries_changed, _) = watch::channel(0);
    let revision_base = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let (policy_changed, _) = watch::channel(revision_base);
    Arc::new(ServerState {
        datastore,
        ca: Arc::new(ca),
        settings,
        entries_changed,
        policy_changed,
        x509pop,
    })
}

/// Opens the datastore and the CA: a new one, a stored one, or (with an upstream) one whose
/// intermediate OpenBao signs, and refuses a data dir of another trust domain.
async fn open_ca(
    cfg: &ServerConfig,
    upstream: Option<&UpstreamAuthority>,
    db_path: &Path,
    keys_dir: &Path,
) -> Result<(Arc<Datastore>, CaManager), ServerError> {
    // A new data dir with an upstream: have OpenBao sign first, so a bad address, role or
    // mount leaves nothing behind.
    let mut signed = None;
    if let Some(up) = upstream
        && !db_path.exists()
    {
        signed = Some(up.sign(&cfg.trust_domain, cfg.ca.intermediate).await?);
    }
    agentmesh_proto::unix::create_private_dir(&cfg.data_dir)
        .map_err(|e| ServerError::DataDir(cfg.data_dir.clone(), e))?;
    let datastore = Arc::new(Datastore::open(db_path)?);
    let now = SystemTime::now();
    let ca = match upstream {
        None => CaManager::load_or_init(
            cfg.trust_domain.clone(),
            keys_dir.to_owned(),
            datastore.clone(),
            cfg.ca,
            now,
        )?,
        Some(up) => {
            // A restart reuses a stored intermediate that still has more than half its life,
            // so the server can start while OpenBao is down.
            let (due, left) = CaManager::upstream_due(&datastore, now)?;
            if signed.is_none() && due {
                match up.sign(&cfg.trust_domain, cfg.ca.intermediate).await {
                    Ok(s) => signed = Some(s),
                    // A stored intermediate that is past half its life still signs; the
                    // rotation loop keeps trying OpenBao.
                    Err(e) if e.is_unreachable() && left.is_some() => {
                        let left = humantime::format_duration(left.unwrap_or_default());
                        tracing::warn!(error = %e, intermediate_remaining = %left, "OpenBao did not sign a new intermediate; still issuing from the current one, which expires in {left}");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if let Some(s) = &signed {
                CaManager::store_upstream(&datastore, keys_dir, s)?;
            }
            tracing::info!(address = %up.address(), pki_mount = %up.pki_mount(), "the intermediate CA is signed by OpenBao; its root key never leaves OpenBao");
            CaManager::load_upstream(
                cfg.trust_domain.clone(),
                keys_dir.to_owned(),
                datastore.clone(),
                cfg.ca,
                now,
            )?
        }
    };
    let first_root = ca.current().roots.first().cloned().unwrap_or_default();
    if let Ok(root_id) = agentmesh_tls::cert_spiffe_id(&first_root)
        && root_id.trust_domain() != &cfg.trust_domain
    {
        return Err(ServerError::TrustDomainMismatch {
            dir: cfg.data_dir.clone(),
            found: root_id.trust_domain().to_string(),
            wanted: cfg.trust_domain.to_string(),
        });
    }
    Ok((datastore, ca))
}

/// Every [`ROTATION_TICK`]: rotates the CA's keys when due, rebuilds the node API's TLS config
/// when the bundle changed, and renews the server's own certificate, until `stop`.
async fn rotation_loop(
    state: Arc<ServerState>,
    rotating: Arc<RotatingCert>,
    tls: SharedTlsConfig,
    server_id: SpiffeId,
    mut server_svid_renew_at: SystemTime,
    mut rx: watch::Receiver<bool>,
) {
    let mut bundle_rx = state.ca.subscribe();
    loop {
        tokio::select! {
            _ = rx.wait_for(|s| *s) => return,
            () = tokio::time::sleep(ROTATION_TICK) => {}
        }
        let now = SystemTime::now();
        if let Err(e) = state.ca.rotate_if_due(now) {
            tracing::error!(error = %e, "CA rotation failed; still issuing from the current intermediate");
        }
        if bundle_rx.has_changed().unwrap_or(false) {
            bundle_rx.mark_unchanged();
            match tls_config(&state, &rotating) {
                Ok(c) => *tls.write().unwrap_or_else(|e| e.into_inner()) = c,
                Err(e) => tracing::error!(error = %e, "rebuilding the TLS config failed"),
            }
        }
        if now >= server_svid_renew_at {
            match mint_server_svid(&state, &server_id)
                .and_then(|(c, at)| Ok((rotating.update(&c)?, at)))
            {
                Ok(((), at)) => server_svid_renew_at = at,
                Err(e) => tracing::error!(error = %e, "renewing the server certificate failed"),
            }
        }
    }
}

/// First retry after a failed upstream signing; doubles up to [`UPSTREAM_BACKOFF_MAX`].
const UPSTREAM_BACKOFF: Duration = Duration::from_secs(1);
const UPSTREAM_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Has OpenBao sign the next intermediate once the current one is past half its life. While
/// OpenBao is unreachable or refuses, SVIDs keep coming from the current intermediate, and
/// each failed try logs how long that intermediate still has; tries back off exponentially.
async fn upstream_loop(
    up: UpstreamAuthority,
    state: Arc<ServerState>,
    keys_dir: PathBuf,
    ttl: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = UPSTREAM_BACKOFF;
    let mut wait = ROTATION_TICK;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = ROTATION_TICK;
        let now = SystemTime::now();
        let remaining = match CaManager::upstream_due(state.ca.datastore(), now) {
            Ok((false, _)) => continue,
            Ok((true, remaining)) => remaining.unwrap_or(Duration::ZERO),
            Err(e) => {
                tracing::error!(error = %e, "reading the CA rows failed");
                continue;
            }
        };
        let result = match up.sign(state.trust_domain(), ttl).await {
            Ok(signed) => CaManager::store_upstream(state.ca.datastore(), &keys_dir, &signed)
                .and_then(|()| state.ca.rotate_if_due(SystemTime::now()))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(_) => backoff = UPSTREAM_BACKOFF,
            Err(error) => {
                let left = humantime::format_duration(Duration::from_secs(remaining.as_secs()));
                if remaining.is_zero() {
                    tracing::error!(%error, address = %up.address(), "OpenBao did not sign a new intermediate and the current one has expired; no SVIDs can be issued until it does");
                } else {
                    tracing::warn!(%error, address = %up.address(), intermediate_remaining = %left, "OpenBao did not sign a new intermediate; still issuing from the current one, which expires in {left}");
                }
                wait = backoff;
                backoff = (backoff * 2).min(UPSTREAM_BACKOFF_MAX);
            }
        }
    }
}

fn tls_config(
    state: &ServerState,
    cert: &Arc<RotatingCert>,
) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let roots: Vec<_> = state
        .ca
        .current()
        .roots
        .iter()
        .map(|r| rustls::pki_types::CertificateDer::from(r.clone()))
        .collect();
    // Optional: the join-token call comes without a certificate. A certificate that is
    // presented must still verify; the handlers then require a known node.
    let client_auth = ClientAuth::Optional(agentmesh_tls::member_of(state.trust_domain().clone()));
    Ok(agentmesh_tls::server_config_rotating(
        cert.clone(),
        &roots,
        client_auth,
        &[b"h2"],
    )?)
}

fn mint_server_svid(
    state: &ServerState,
    id: &SpiffeId,
) -> Result<(SvidCredentials, SystemTime), ServerError> {
    let key = agentmesh_ca::PrivateKey::generate().map_err(CaManagerError::from)?;
    let csr = agentmesh_ca::build_csr(&key).map_err(CaManagerError::from)?;
    let pk = agentmesh_ca::verify_csr(&csr).map_err(CaManagerError::from)?;
    let now = SystemTime::now();
    let svid = state
        .ca
        .current()
        .authority
        .mint_x509_svid(id, &pk, SERVER_SVID_TTL, &[], now)
        .map_err(CaManagerError::from)?;
    let lifetime = svid.not_after.duration_since(now).unwrap_or(Duration::ZERO);
    let creds = SvidCredentials::from_der(&svid.chain, &key.pkcs8_der())?;
    Ok((creds, now + lifetime / 2))
}
