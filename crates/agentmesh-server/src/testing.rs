//! Test support (feature `testing`): a server config with every field at its test value, and
//! a running server on a temporary directory with its admin client and bundle file, so tests
//! and benchmarks do not each spell out the config or the start-up steps.
//!
//! Tests write `ServerConfig { field: x, ..ServerConfig::for_test(dir) }` for anything they
//! change; a field added to [`ServerConfig`] then needs a value here and nowhere else.

use std::path::{Path, PathBuf};

use agentmesh_proto::v1::admin_client::AdminClient;
use agentmesh_proto::v1::{GenerateJoinTokenRequest, GetBundleRequest};
use agentmesh_spiffe::TrustDomain;
use tonic::transport::Channel;

use crate::{CaLifetimes, IssuanceSettings, RunningServer, ServerConfig, ServerError};

/// The trust domain of [`ServerConfig::for_test`].
pub const TEST_TRUST_DOMAIN: &str = "example.org";

impl ServerConfig {
    /// A server of trust domain `example.org` whose data dir (`server/`) and admin socket
    /// (`admin.sock`) are under `dir`, listening on an ephemeral loopback port, with default
    /// lifetimes and limits and no upstream authority or OIDC discovery.
    pub fn for_test(dir: &Path) -> Self {
        ServerConfig {
            data_dir: dir.join("server"),
            trust_domain: TEST_TRUST_DOMAIN.parse().expect("a valid trust domain"),
            listen: "127.0.0.1:0".parse().expect("a valid address"),
            admin_socket: dir.join("admin.sock"),
            ca: CaLifetimes::default(),
            issuance: IssuanceSettings::default(),
            upstream: None,
            oidc_discovery: None,
            limits: Default::default(),
            bootstrap: Default::default(),
            x509pop: None,
            federation: crate::FederationConfig::default(),
        }
    }
}

/// Why a test server could not start or answer; tests unwrap it, benchmarks report it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// The server did not start.
    #[error("starting the server: {0}")]
    Server(#[from] ServerError),
    /// A Unix socket (admin or Workload API) could not be connected to.
    #[error(transparent)]
    Connect(#[from] agentmesh_proto::unix::UnixSocketError),
    /// An API call failed.
    #[error("rpc: {0}")]
    Rpc(#[from] tonic::Status),
    /// A file could not be written.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A server started in this process, with an admin client and its roots written to
/// `bundle.pem` under its directory (what `agentmesh bundle show` gives a node).
pub struct TestServer {
    /// The directory holding the server's data dir, admin socket and bundle file.
    pub dir: PathBuf,
    /// The server; `None` after [`TestServer::stop`].
    pub running: Option<RunningServer>,
    /// The admin API over the admin socket.
    pub admin: AdminClient<Channel>,
    /// The server's X.509 roots, DER.
    pub roots: Vec<Vec<u8>>,
    config: ServerConfig,
}

impl TestServer {
    /// Starts [`ServerConfig::for_test`]`(dir)`.
    pub async fn start(dir: &Path) -> Result<Self, HarnessError> {
        Self::start_with(ServerConfig::for_test(dir), dir).await
    }

    /// Starts `config`, writing the bundle file into `dir`.
    pub async fn start_with(config: ServerConfig, dir: &Path) -> Result<Self, HarnessError> {
        let mut config = config;
        let running = crate::start(config.clone()).await?;
        // A restart binds the port this start got, so clients keep their address.
        config.listen = running.listen_addr;
        let mut admin =
            AdminClient::new(agentmesh_proto::unix::connect(&running.admin_socket).await?);
        let roots = admin
            .get_bundle(GetBundleRequest {})
            .await?
            .into_inner()
            .x509_authorities;
        let pem: String = roots
            .iter()
            .map(|r| agentmesh_ca::pem_encode("CERTIFICATE", r))
            .collect();
        std::fs::write(dir.join("bundle.pem"), pem)?;
        Ok(Self {
            dir: dir.to_owned(),
            running: Some(running),
            admin,
            roots,
            config,
        })
    }

    /// The trust domain the server was started with.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.config.trust_domain
    }

    /// Where the node API listens.
    ///
    /// # Panics
    /// After [`TestServer::stop`].
    pub fn addr(&self) -> std::net::SocketAddr {
        self.running
            .as_ref()
            .expect("the server is running")
            .listen_addr
    }

    /// An X509-SVID for `id` minted by the server's current CA, whether or not any entry or
    /// attestation stands behind it: for tests of what the server refuses past TLS.
    ///
    /// # Panics
    /// After [`TestServer::stop`].
    pub fn mint_x509_svid(
        &self,
        id: &agentmesh_spiffe::SpiffeId,
        public_key: &agentmesh_ca::CsrPublicKey,
        ttl: std::time::Duration,
    ) -> Result<agentmesh_ca::X509Svid, agentmesh_ca::CaError> {
        let running = self.running.as_ref().expect("the server is running");
        running.state.ca.current().authority.mint_x509_svid(
            id,
            public_key,
            ttl,
            &[],
            std::time::SystemTime::now(),
        )
    }

    /// The PEM file of the server's roots.
    pub fn bundle_file(&self) -> PathBuf {
        self.dir.join("bundle.pem")
    }

    /// A join token that expires after `ttl_seconds` (0: the server's default).
    pub async fn token(&mut self, ttl_seconds: i64) -> Result<String, HarnessError> {
        Ok(self
            .admin
            .generate_join_token(GenerateJoinTokenRequest { ttl_seconds })
            .await?
            .into_inner()
            .token)
    }

    /// Stops the server, keeping its data dir, admin client and address for
    /// [`TestServer::restart`].
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }

    /// Starts the server again (stopping it first if it runs) on the same data dir and the
    /// same port it had.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop().await;
        self.running = Some(crate::start(self.config.clone()).await?);
        Ok(())
    }

    /// Stops the server.
    pub async fn shutdown(mut self) {
        self.stop().await;
    }
}
