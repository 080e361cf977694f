//! agentmesh-node: the per-host daemon. It attests to the server with a join token or x509pop
//! (then renews its node SVID), attests local workloads by their Unix credentials, launcher
//! registrations and Docker containers, keeps their SVIDs cached and rotated, and serves them on the SPIFFE Workload
//! API and Envoy's SDS, plus the policy relay that hands intentions to local proxies. Not the
//! authority (agentmesh-server registers entries and signs) and not an enforcer (the proxies
//! decide intentions): the node only carries identities and policy to what runs on its host.
//!
//! [`start`] with a [`NodeConfig`] is the entry point; with the `testing` feature,
//! `NodeConfig::for_test` and `TestMesh` run a server and a node in the test's process.
#![forbid(unsafe_code)]

mod admin_api;
mod attest;
mod attestor;
mod cache;
mod denials;
mod manager;
mod policy_relay;
mod sds;
mod server_client;
#[cfg(feature = "testing")]
mod testing;
mod workload_api;

pub use attest::{AttestationError, X509PopCredentials};
pub use attestor::{AttestError, DEFAULT_DOCKER_SOCKET, DockerError, process_start_time};
pub use manager::{EAGER_MINT_LIMIT, ManagerError};
pub use sds::{ResourceName, SdsError};
pub use server_client::{SharedClientConfig, client_config, node_api_client};
#[cfg(feature = "testing")]
pub use testing::{MeshError, TestMesh, init_logs, my_uid, with_header};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use agentmesh_proto::v1::node_admin_server::NodeAdminServer;
use agentmesh_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use agentmesh_proto::xds::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
use agentmesh_spiffe::SpiffeId;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::attestor::Attestor;
use crate::manager::{Manager, NodeSvid};

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The server's node API address, `host:port`.
    pub server: String,
    /// A one-time join token; not needed while a stored node SVID is valid, or with
    /// `x509pop`.
    pub join_token: Option<String>,
    /// `--x509pop-cert` and `--x509pop-key`: attest with x509pop instead of a join token, and
    /// again whenever the node SVID cannot be renewed.
    pub x509pop: Option<X509PopFiles>,
    /// Where to serve the Workload API and Envoy SDS.
    pub socket: PathBuf,
    /// PEM file with the roots to trust the server by, from `agentmesh bundle show`.
    pub trust_bundle: PathBuf,
    /// Where the node keeps its SVID, key and bundle.
    pub data_dir: PathBuf,
    /// The node's admin socket (launchers register children here).
    pub admin_socket: PathBuf,
    /// The trust domain, when the bundle's roots do not name it (an upstream CA's root, such
    /// as OpenBao's, has no SPIFFE ID); otherwise taken from the first root that has one.
    pub trust_domain: Option<agentmesh_spiffe::TrustDomain>,
    /// The limits of the Workload API (and SDS) socket and the admin socket: the HTTP/2
    /// preface deadline, head size, streams, and connections per uid and in total.
    pub limits: agentmesh_proto::limits::ListenerLimits,
    /// The Docker Engine's socket, asked about callers that run in containers; `None` turns
    /// Docker attestation off.
    pub docker_socket: Option<PathBuf>,
    /// Whether `socket` serves the Workload API and SDS (identities). Off, it serves only
    /// the policy relay to proxies whose identities come from another Workload API, such as
    /// a SPIRE agent's (`node run --no-workload-api`).
    pub workload_api: bool,
}

/// The files of x509pop node attestation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509PopFiles {
    /// PEM: the node certificate, then any intermediates.
    pub cert: PathBuf,
    /// PEM: the certificate's private key.
    pub key: PathBuf,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The trust bundle file is unusable.
    #[error("--trust-bundle {0}: {1}")]
    TrustBundle(PathBuf, String),
    /// The data dir is unusable.
    #[error("data dir {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    /// No stored SVID, no token and no x509pop certificate.
    #[error(
        "no valid node SVID in {0}, and neither --join-token nor --x509pop-cert/--x509pop-key; generate a join token with `agentmesh token generate`, or give the node an x509pop certificate"
    )]
    NeedJoinToken(PathBuf),
    /// The server refused the join token or the x509pop proof.
    #[error("attestation refused by the server: {0}")]
    AttestationRefused(String),
    /// The server could not be reached for attestation.
    #[error("cannot reach the server at {0} to attest: {1}")]
    Unreachable(String, String),
    /// Setup of the node's state failed.
    #[error(transparent)]
    Manager(#[from] ManagerError),
    /// Attestation failed otherwise (an unusable x509pop file, a broken exchange).
    #[error(transparent)]
    Attestation(AttestationError),
    /// A socket could not be bound.
    #[error(transparent)]
    Socket(#[from] agentmesh_proto::unix::UnixSocketError),
}

/// A running node.
#[derive(Debug)]
pub struct RunningNode {
    manager: Arc<Manager>,
    /// The Workload API socket.
    pub socket: PathBuf,
    admin_socket: PathBuf,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningNode {
    /// The node's own SPIFFE ID, from its current node SVID.
    pub fn node_id(&self) -> SpiffeId {
        self.manager.node_identity().0
    }

    /// Whether the node's last call to the server succeeded.
    pub fn server_reachable(&self) -> bool {
        self.manager.server_reachable()
    }

    /// Whether the node has its entries from the server (since it started).
    pub fn synced(&self) -> bool {
        self.manager.snapshot().synced
    }

    /// How many registration entries the node holds for its workloads.
    pub fn entry_count(&self) -> usize {
        self.manager.snapshot().entries.len()
    }

    /// How many workload SVIDs the node has minted and holds.
    pub fn svid_count(&self) -> usize {
        self.manager.snapshot().svids.len()
    }

    /// Stops the node and removes its sockets.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(&self.admin_socket);
    }
}

/// Where a node whose data dir is `data_dir` keeps its node SVID and key: present while it
/// needs no join token.
pub fn node_svid_file(data_dir: &std::path::Path) -> PathBuf {
    NodeSvid::path(data_dir)
}

impl From<AttestationError> for NodeError {
    fn from(e: AttestationError) -> Self {
        match e {
            AttestationError::Refused(m) => Self::AttestationRefused(m),
            AttestationError::Unreachable(server, why) => Self::Unreachable(server, why),
            AttestationError::Manager(m) => Self::Manager(m),
            other => Self::Attestation(other),
        }
    }
}

/// Starts a node: attests (or reuses the stored node SVID), then serves the Workload API.
///
/// # Errors
/// Any [`NodeError`]; nothing keeps running after an error.
pub async fn start(cfg: NodeConfig) -> Result<RunningNode, NodeError> {
    agentmesh_proto::unix::create_private_dir(&cfg.data_dir)
        .map_err(|e| NodeError::DataDir(cfg.data_dir.clone(), e))?;
    // Checked first: a key that does not match its certificate is a mistake to say at once,
    // even while a stored node SVID would let the node start.
    let x509pop = cfg
        .x509pop
        .as_ref()
        .map(|f| X509PopCredentials::load(&f.cert, &f.key))
        .transpose()?;
    let (roots, server_id, node_svid) = node_identity(&cfg, x509pop.as_ref()).await?;

    let manager = Manager::new(
        cfg.data_dir.clone(),
        &cfg.server,
        server_id,
        node_svid,
        roots,
        x509pop,
    )?;
    let attestor = Arc::new(match &cfg.docker_socket {
        Some(socket) => Attestor::with_docker(socket),
        None => Attestor::new(),
    });
    // The Workload API socket is for every local workload, whatever its user; attestation,
    // not file permissions, decides who gets what.
    let workload_listener = agentmesh_proto::unix::bind(&cfg.socket, 0o777).await?;
    let admin_listener = agentmesh_proto::unix::bind(&cfg.admin_socket, 0o600).await?;

    let (stop, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(manager.clone().run(stop_rx.clone())));
    let policy = Arc::new(policy_relay::PolicyRelay::default());
    tasks.push(tokio::spawn(
        policy.clone().run(manager.clone(), stop_rx.clone()),
    ));
    let proxy_api =
        agentmesh_proto::v1::proxy_api_server::ProxyApiServer::new(policy_relay::ProxyApi::new(
            manager.clone(),
            attestor.clone(),
            policy.clone(),
            stop_rx.clone(),
        ));

    let workload = SpiffeWorkloadApiServer::new(workload_api::WorkloadApi::new(
        manager.clone(),
        attestor.clone(),
        stop_rx.clone(),
    ));
    // SDS shares the Workload API socket and server (see sds.rs for why).
    let sds = SecretDiscoveryServiceServer::new(sds::Sds::new(
        manager.clone(),
        attestor.clone(),
        stop_rx.clone(),
    ));
    let rx = stop_rx.clone();
    let workload_limits = cfg.limits.clone();
    let incoming = agentmesh_proto::limits::unix_incoming(
        workload_listener,
        &cfg.limits,
        "workload API socket",
    );
    // Without the Workload API the socket relays policy only: a caller still has to be
    // attested against an agentmesh entry to read it, but is handed no SVID here.
    let identities = cfg.workload_api;
    tasks.push(tokio::spawn(async move {
        let mut server = agentmesh_proto::limits::grpc_server(&workload_limits);
        let served = if identities {
            server
                .add_service(workload)
                .add_service(sds)
                .add_service(proxy_api)
        } else {
            server.add_service(proxy_api)
        };
        if let Err(e) = served
            .serve_with_incoming_shutdown(incoming, stopped(rx))
            .await
        {
            tracing::error!(error = %e, "Workload API stopped");
        }
    }));
    let admin = NodeAdminServer::new(admin_api::NodeAdminService::new(manager.clone(), attestor));
    let rx = stop_rx;
    let admin_limits = cfg.limits.clone();
    let incoming =
        agentmesh_proto::limits::unix_incoming(admin_listener, &cfg.limits, "node admin socket");
    tasks.push(tokio::spawn(async move {
        if let Err(e) = agentmesh_proto::limits::grpc_server(&admin_limits)
            .add_service(admin)
            .serve_with_incoming_shutdown(incoming, stopped(rx))
            .await
        {
            tracing::error!(error = %e, "node admin API stopped");
        }
    }));
    if cfg.workload_api {
        tracing::info!(socket = %cfg.socket.display(), admin_socket = %cfg.admin_socket.display(), "node serving the Workload API and SDS");
    } else {
        tracing::info!(socket = %cfg.socket.display(), admin_socket = %cfg.admin_socket.display(), "node relaying policy only (--no-workload-api): identities come from another Workload API");
    }
    Ok(RunningNode {
        manager,
        socket: cfg.socket,
        admin_socket: cfg.admin_socket,
        stop,
        tasks,
    })
}

/// The roots this node trusts (the operator's bundle and any stored later), the server's
/// SPIFFE ID, and the node's own SVID: the stored one if still good (and, with x509pop, the
/// one of this certificate), else one bought with x509pop or the join token.
async fn node_identity(
    cfg: &NodeConfig,
    x509pop: Option<&X509PopCredentials>,
) -> Result<(Vec<Vec<u8>>, SpiffeId, NodeSvid), NodeError> {
    let mut roots = read_roots(&cfg.trust_bundle)?;
    // A bundle stored by an earlier run may know roots the operator's file does not yet.
    if let Ok(text) = std::fs::read_to_string(cfg.data_dir.join("bundle.pem"))
        && let Ok(stored) = agentmesh_ca::pem_decode_all(&text, "CERTIFICATE")
    {
        for r in stored {
            if !roots.contains(&r) {
                roots.push(r);
            }
        }
    }
    let td = match &cfg.trust_domain {
        Some(td) => td.clone(),
        None => roots
            .iter()
            .find_map(|r| agentmesh_tls::cert_spiffe_id(r).ok())
            .map(|id| id.trust_domain().clone())
            .ok_or_else(|| {
                NodeError::TrustBundle(
                    cfg.trust_bundle.clone(),
                    "no root carries a SPIFFE ID (an upstream CA's root, such as OpenBao's, does not); pass --trust-domain".to_owned(),
                )
            })?,
    };
    let server_id = SpiffeId::from_path(&td, "/agentmesh/server")
        .unwrap_or_else(|_| unreachable!("a constant, valid path"));

    let stored = NodeSvid::load(&cfg.data_dir, &roots).filter(|svid| {
        let Some(creds) = x509pop else { return true };
        let want = creds.node_id(&td);
        if svid.spiffe_id != want {
            tracing::info!(stored = %svid.spiffe_id, x509pop = %want, "the stored node SVID is not this --x509pop-cert's; attesting again");
        }
        svid.spiffe_id == want
    });
    let node_svid = match (stored, x509pop) {
        (Some(svid), _) => {
            tracing::info!(node = %svid.spiffe_id, "reusing the stored node SVID; no attestation needed");
            svid
        }
        (None, Some(creds)) => {
            let svid = attest::x509pop(&cfg.server, creds, &roots, &server_id).await?;
            svid.store(&cfg.data_dir)?;
            tracing::info!(node = %svid.spiffe_id, "attested with x509pop");
            svid
        }
        (None, None) => {
            let token = cfg
                .join_token
                .as_deref()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| NodeError::NeedJoinToken(cfg.data_dir.clone()))?;
            let svid = attest::join_token(&cfg.server, token, &roots, &server_id).await?;
            svid.store(&cfg.data_dir)?;
            tracing::info!(node = %svid.spiffe_id, "attested with a join token");
            svid
        }
    };

    Ok((roots, server_id, node_svid))
}

fn read_roots(path: &std::path::Path) -> Result<Vec<Vec<u8>>, NodeError> {
    let err = |m: String| NodeError::TrustBundle(path.to_owned(), m);
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let roots =
        agentmesh_ca::pem_decode_all(&text, "CERTIFICATE").map_err(|e| err(e.to_string()))?;
    let now = SystemTime::now();
    for r in &roots {
        agentmesh_tls::cert_validity(r)
            .map_err(|e| err(format!("not a certificate: {e}")))
            .and_then(|(_, na)| {
                if na <= now {
                    Err(err("holds an expired root".into()))
                } else {
                    Ok(())
                }
            })?;
    }
    if roots.is_empty() {
        return Err(err("holds no CERTIFICATE blocks".into()));
    }
    Ok(roots)
}
