//! Test support (feature `testing`): a node config with every field at its test value, and
//! the in-process mesh (a server and a node on loopback, sharing a temporary directory) that
//! node tests and the `fetch` benchmark run against, with the calling process as the workload.
//!
//! Tests write `NodeConfig { field: x, ..NodeConfig::for_test(dir, server, token) }` for
//! anything they change; a field added to [`NodeConfig`] then needs a value here only.

use std::path::{Path, PathBuf};

use agentmesh_proto::v1::{self, CreateEntryRequest};
use agentmesh_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use agentmesh_server::{HarnessError, TestServer};
use tonic::transport::Channel;

use crate::{NodeConfig, NodeError, RunningNode};

impl NodeConfig {
    /// A node of `server` whose data dir (`node/`), Workload API socket (`workload.sock`)
    /// and admin socket (`node-admin.sock`) are under `dir`, trusting the roots of
    /// `server.bundle_file()`, with default limits and no Docker attestation. `token` is the join token, if any.
    pub fn for_test(dir: &Path, server: &TestServer, token: Option<String>) -> Self {
        NodeConfig {
            server: server.addr().to_string(),
            join_token: token,
            x509pop: None,
            socket: dir.join("workload.sock"),
            trust_bundle: server.bundle_file(),
            data_dir: dir.join("node"),
            admin_socket: dir.join("node-admin.sock"),
            trust_domain: None,
            limits: Default::default(),
            docker_socket: None,
            workload_api: true,
        }
    }
}

/// Why the in-process mesh could not start or answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The server side failed.
    #[error(transparent)]
    Server(#[from] HarnessError),
    /// The node did not start.
    #[error("starting the node: {0}")]
    Node(#[from] NodeError),
    /// An API call failed.
    #[error("rpc: {0}")]
    Rpc(#[from] tonic::Status),
    /// A Unix socket could not be connected to.
    #[error(transparent)]
    Connect(#[from] agentmesh_proto::unix::UnixSocketError),
    /// The temporary directory could not be made.
    #[error("temporary directory: {0}")]
    TempDir(std::io::Error),
}

/// A server and one node attested to it with a join token, in this process, under one
/// temporary directory (removed on drop).
pub struct TestMesh {
    _tmp: tempfile::TempDir,
    /// The directory holding both data dirs and all sockets.
    pub dir: PathBuf,
    /// The server, with its admin client.
    pub server: TestServer,
    /// The node; `None` after [`TestMesh::stop_node`].
    pub node: Option<RunningNode>,
}

impl TestMesh {
    /// A mesh of trust domain `example.org`, with logs in the test output
    /// ([`init_logs`]).
    pub async fn start() -> Result<Self, MeshError> {
        init_logs();
        let tmp = tempfile::tempdir().map_err(MeshError::TempDir)?;
        let dir = tmp.path().to_owned();
        let server = TestServer::start(&dir).await?;
        Self::with_server(tmp, server).await
    }

    /// A mesh whose server runs `config` (its data dir and admin socket should be under
    /// `tmp`, as [`agentmesh_server::ServerConfig::for_test`] puts them); no logs are set up.
    pub async fn start_with(
        tmp: tempfile::TempDir,
        config: agentmesh_server::ServerConfig,
    ) -> Result<Self, MeshError> {
        let server = TestServer::start_with(config, tmp.path()).await?;
        Self::with_server(tmp, server).await
    }

    async fn with_server(
        tmp: tempfile::TempDir,
        mut server: TestServer,
    ) -> Result<Self, MeshError> {
        let dir = tmp.path().to_owned();
        let token = server.token(0).await?;
        let node = crate::start(NodeConfig::for_test(&dir, &server, Some(token))).await?;
        Ok(Self {
            _tmp: tmp,
            dir,
            server,
            node: Some(node),
        })
    }

    /// The Workload API (and SDS) socket.
    pub fn workload_socket(&self) -> PathBuf {
        self.dir.join("workload.sock")
    }

    /// The node's admin socket.
    pub fn node_admin_socket(&self) -> PathBuf {
        self.dir.join("node-admin.sock")
    }

    /// The running node.
    ///
    /// # Panics
    /// After [`TestMesh::stop_node`].
    pub fn node(&self) -> &RunningNode {
        self.node.as_ref().expect("the node is running")
    }

    /// Registers `path` (in the server's trust domain) for `selectors`, with an X.509-SVID
    /// TTL of `x509_ttl` seconds (0: the server's default).
    pub async fn create_entry(
        &mut self,
        path: &str,
        selectors: &[String],
        x509_ttl: i64,
    ) -> Result<v1::Entry, MeshError> {
        let spiffe_id = format!("spiffe://{}{path}", self.server.trust_domain());
        Ok(self
            .server
            .admin
            .create_entry(CreateEntryRequest {
                entry: Some(v1::Entry {
                    spiffe_id,
                    selectors: selectors.to_vec(),
                    x509_ttl_seconds: x509_ttl,
                    ..Default::default()
                }),
            })
            .await?
            .into_inner())
    }

    /// Registers `path` for this process's uid (`unix:uid:N`), the way the tests' workload
    /// (the test process itself) is attested.
    pub async fn register_self(
        &mut self,
        path: &str,
        x509_ttl: i64,
    ) -> Result<v1::Entry, MeshError> {
        self.create_entry(path, &[format!("unix:uid:{}", my_uid())], x509_ttl)
            .await
    }

    /// A Workload API client on the node's socket.
    pub async fn workload_client(&self) -> Result<SpiffeWorkloadApiClient<Channel>, MeshError> {
        Ok(SpiffeWorkloadApiClient::new(
            agentmesh_proto::unix::connect(&self.workload_socket()).await?,
        ))
    }

    /// Stops the node, keeping its data dir.
    pub async fn stop_node(&mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
    }

    /// Starts the node again (stopping it first if it runs) on the same data dir, with no
    /// join token: it must reuse its stored node SVID.
    pub async fn restart_node(&mut self) -> Result<(), MeshError> {
        self.stop_node().await;
        let config = NodeConfig::for_test(&self.dir, &self.server, None);
        self.node = Some(crate::start(config).await?);
        Ok(())
    }

    /// Stops the node, then the server.
    pub async fn shutdown(mut self) {
        self.stop_node().await;
        self.server.stop().await;
    }
}

/// This process's effective uid, the `unix:uid` selector the node attests it by.
///
/// # Panics
/// If `/proc/self/status` has no readable `Uid:` line (not Linux).
pub fn my_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|u| u.parse().ok())
        .expect("an effective uid in /proc/self/status")
}

/// A Workload API request with the header every SPIFFE Workload API call must carry.
pub fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        agentmesh_proto::WORKLOAD_API_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    req
}

/// Node and server logs in the test output (shown for failing tests); `RUST_LOG` filters.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}
