//! Node attestation on loopback, server and nodes in one process: join tokens are one-time,
//! expire and cannot be forged; a node SVID from another CA (same trust domain) opens nothing
//! on this server; and every private key on disk is 0600 inside 0700 data dirs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use agentmesh_node::{NodeConfig, NodeError, RunningNode, init_logs, node_svid_file};
use agentmesh_proto::v1::node_api_client::NodeApiClient;
use agentmesh_proto::v1::{RenewNodeSvidRequest, SyncEntriesRequest};
use agentmesh_proto::workload::X509svidRequest;
use agentmesh_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use agentmesh_server::TestServer;
use agentmesh_spiffe::SpiffeId;
use tonic::transport::Channel;

/// A server under `dir`, with node and server logs in the test output.
async fn start_server(dir: &Path) -> TestServer {
    init_logs();
    TestServer::start(dir).await.unwrap()
}

async fn start_node(dir: &Path, server: &TestServer, token: Option<String>) -> RunningNode {
    agentmesh_node::start(NodeConfig::for_test(dir, server, token))
        .await
        .unwrap()
}

/// Starts a node that must be refused, and returns the server's reason.
async fn refused(dir: &Path, server: &TestServer, token: String) -> String {
    match agentmesh_node::start(NodeConfig::for_test(dir, server, Some(token))).await {
        Err(NodeError::AttestationRefused(msg)) => msg,
        Err(other) => panic!("expected AttestationRefused, got {other}"),
        Ok(node) => {
            node.shutdown().await;
            panic!("the node was admitted")
        }
    }
}

/// A refused node leaves nothing behind: no SVID (not even a temp file) and no sockets.
fn assert_left_nothing(dir: &Path) {
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("node"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        leftovers.is_empty(),
        "a refused node wrote {leftovers:?} to its data dir"
    );
    assert!(!node_svid_file(&dir.join("node")).exists());
    assert!(!dir.join("workload.sock").exists());
    assert!(!dir.join("node-admin.sock").exists());
}

/// A string with the shape of a real join token (32 random bytes, base64url) that the server
/// never issued.
fn forged_token() -> String {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut b).unwrap();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_are_refused_when_reused_expired_or_forged() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = start_server(&tmp.path().join("a")).await;

    // A fresh token admits a node, which stores its SVID.
    let token = server.token(0).await.unwrap();
    let first_dir = tmp.path().join("n1");
    let first = start_node(&first_dir, &server, Some(token.clone())).await;
    assert!(node_svid_file(&first_dir.join("node")).exists());
    let nodes = server
        .admin
        .list_nodes(agentmesh_proto::v1::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].spiffe_id, first.node_id().to_string());

    // The same token again, from another node: refused as spent.
    let reused_dir = tmp.path().join("n2");
    let msg = refused(&reused_dir, &server, token).await;
    assert!(
        msg.contains("already used") && msg.contains("one-time"),
        "{msg}"
    );
    assert_left_nothing(&reused_dir);

    // A token past its TTL: refused as expired, and not as unknown.
    let short = server.token(1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let expired_dir = tmp.path().join("n3");
    let msg = refused(&expired_dir, &server, short).await;
    assert!(msg.contains("expired"), "{msg}");
    assert_left_nothing(&expired_dir);

    // A token of the right shape that the server never issued.
    let forged = forged_token();
    assert_eq!(forged.len(), server.token(0).await.unwrap().len());
    let forged_dir = tmp.path().join("n4");
    let msg = refused(&forged_dir, &server, forged).await;
    assert!(msg.contains("never issued"), "{msg}");
    assert_left_nothing(&forged_dir);

    // No refused attempt became a node.
    let nodes = server
        .admin
        .list_nodes(agentmesh_proto::v1::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(nodes.len(), 1, "{nodes:?}");

    first.shutdown().await;
    server.shutdown().await;
}

/// The node SVID (chain and key) stored in a node's data dir, read without checking whom it
/// chains to.
fn stored_node_svid(data_dir: &Path) -> (Vec<Vec<u8>>, Vec<u8>) {
    let bytes = agentmesh_ca::read_secret_file(&node_svid_file(data_dir)).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let chain = agentmesh_ca::pem_decode_all(&text, "CERTIFICATE").unwrap();
    let key = agentmesh_ca::pem_decode_all(&text, "PRIVATE KEY")
        .unwrap()
        .pop()
        .unwrap();
    (chain, key)
}

/// A node API client of `server` that trusts its roots, pins its SPIFFE ID, and presents
/// `chain` + `key` as the client certificate: what a node's manager builds.
fn node_api_as(server: &TestServer, chain: &[Vec<u8>], key: &[u8]) -> NodeApiClient<Channel> {
    let creds = agentmesh_tls::SvidCredentials::from_der(chain, key).unwrap();
    let cert = Arc::new(agentmesh_tls::RotatingCert::new(&creds).unwrap());
    let server_id: SpiffeId = "spiffe://example.org/agentmesh/server".parse().unwrap();
    let tls = agentmesh_node::client_config(&server.roots, &server_id, Some(cert)).unwrap();
    agentmesh_node::node_api_client(&server.addr().to_string(), Arc::new(RwLock::new(tls)))
}

/// Calls that need a node identity; returns their errors (`None` for success).
async fn node_calls(
    client: &mut NodeApiClient<Channel>,
) -> (Option<tonic::Status>, Option<tonic::Status>) {
    let sync = match client.sync_entries(SyncEntriesRequest {}).await {
        Ok(resp) => {
            // The first message comes at once and carries the bundle.
            let first = resp.into_inner().message().await.unwrap().unwrap();
            assert!(first.bundle.is_some());
            None
        }
        Err(e) => Some(e),
    };
    let key = agentmesh_ca::PrivateKey::generate().unwrap();
    let csr = agentmesh_ca::build_csr(&key).unwrap();
    let renew = client
        .renew_node_svid(RenewNodeSvidRequest { csr })
        .await
        .err();
    (sync, renew)
}

/// Whether `status` is a connection the server cut during the TLS handshake, as a refused
/// client certificate is. The client then sees a transport error: the server's fatal alert,
/// or a reset or closed connection if that comes first, under a code that depends on how far
/// the call had got (Unavailable, Unknown, Cancelled). A status that the server's handlers
/// sent, such as PermissionDenied, never has a transport error as its source.
fn is_tls_refusal(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_svid_from_another_ca_of_the_same_trust_domain_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = start_server(&tmp.path().join("a")).await;
    let mut b = start_server(&tmp.path().join("b")).await;
    assert_ne!(a.roots, b.roots, "two servers, two CAs");

    // A node attested to B, then stopped: its SVID is valid, but B's.
    let b_node_dir = tmp.path().join("node-of-b");
    let token = b.token(0).await.unwrap();
    let node = start_node(&b_node_dir, &b, Some(token)).await;
    let b_node_id = node.node_id();
    node.shutdown().await;
    let (b_chain, b_key) = stored_node_svid(&b_node_dir.join("node"));
    assert_eq!(
        agentmesh_tls::verify_chain(&b_chain, &b.roots, SystemTime::now()).unwrap(),
        b_node_id
    );

    // Control: a node attested to A, in the same harness, is served by A ...
    let a_node_dir = tmp.path().join("node-of-a");
    let token = a.token(0).await.unwrap();
    let node = start_node(&a_node_dir, &a, Some(token)).await;
    node.shutdown().await;
    let (a_chain, a_key) = stored_node_svid(&a_node_dir.join("node"));
    let (sync, renew) = node_calls(&mut node_api_as(&a, &a_chain, &a_key)).await;
    assert!(sync.is_none(), "A refused its own node: {sync:?}");
    assert!(renew.is_none(), "A refused its own node: {renew:?}");

    // ... and B's node, presenting B's SVID to A, is refused at every call.
    let (sync, renew) = node_calls(&mut node_api_as(&a, &b_chain, &b_key)).await;
    let sync = sync.expect("A synced entries to a node of B");
    let renew = renew.expect("A renewed the SVID of a node of B");
    assert!(is_tls_refusal(&sync), "{sync:?}");
    assert!(is_tls_refusal(&renew), "{renew:?}");

    // Past TLS, the datastore decides: an SVID that A's own CA minted for a node path A
    // never attested, or for a workload, opens nothing either.
    for (path, why) in [
        ("/agentmesh/node/never-attested", "not an attested node"),
        // The x509pop shape passes the shape check; only attestation admits it.
        (
            "/agentmesh/node/x509pop/0123456789abcdef0123456789abcdef01234567",
            "not an attested node",
        ),
        (
            "/agentmesh/node/x509pop/not-a-fingerprint",
            "not a node identity",
        ),
        ("/agentmesh/node/a/b", "not a node identity"),
        ("/ns/default/sa/planner", "not a node identity"),
    ] {
        let key = agentmesh_ca::PrivateKey::generate().unwrap();
        let pk = agentmesh_ca::verify_csr(&agentmesh_ca::build_csr(&key).unwrap()).unwrap();
        let id: SpiffeId = format!("spiffe://example.org{path}").parse().unwrap();
        let svid = a
            .mint_x509_svid(&id, &pk, Duration::from_secs(600))
            .unwrap();
        let mut client = node_api_as(&a, &svid.chain, &key.pkcs8_der());
        let (sync, renew) = node_calls(&mut client).await;
        for status in [sync.expect("sync admitted"), renew.expect("renew admitted")] {
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
            assert!(status.message().contains(why), "{status:?}");
        }
    }

    // The process path: B's node data dir, pointed at A with A's bundle and no token. The
    // stored SVID does not chain to A's roots, so it is not used: a token is asked for, and
    // the stored file is left as it was.
    let before = std::fs::read(node_svid_file(&b_node_dir.join("node"))).unwrap();
    let err = agentmesh_node::start(NodeConfig::for_test(&b_node_dir, &a, None))
        .await
        .expect_err("a node started on A with B's node SVID");
    assert!(matches!(err, NodeError::NeedJoinToken(_)), "{err}");
    assert!(
        err.to_string().contains("agentmesh token generate"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(node_svid_file(&b_node_dir.join("node"))).unwrap(),
        before
    );

    // If the data dir also holds a bundle stored from B (the node keeps one when B's roots
    // change), the node trusts B's roots too and reuses B's SVID. A still refuses it, so the
    // node must never become ready: it serves nothing it got from B.
    let b_pem: String = b
        .roots
        .iter()
        .map(|r| agentmesh_ca::pem_encode("CERTIFICATE", r))
        .collect();
    agentmesh_ca::write_secret_file(
        &b_node_dir.join("node").join("bundle.pem"),
        b_pem.as_bytes(),
    )
    .unwrap();
    let node = start_node(&b_node_dir, &a, None).await;
    assert_eq!(node.node_id(), b_node_id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while node.server_reachable() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A kept accepting B's node SVID"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!node.synced());
    assert!(node.entry_count() == 0);
    let mut workload = SpiffeWorkloadApiClient::new(
        agentmesh_proto::unix::connect(&b_node_dir.join("workload.sock"))
            .await
            .unwrap(),
    );
    let mut req = tonic::Request::new(X509svidRequest {});
    req.metadata_mut().insert(
        agentmesh_proto::WORKLOAD_API_HEADER,
        "true".parse().unwrap(),
    );
    let err = workload.fetch_x509svid(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    node.shutdown().await;

    a.shutdown().await;
    b.shutdown().await;
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            out.extend(files_under(&path));
        } else if kind.is_file() {
            out.push(path);
        }
    }
    out
}

/// Whether a file holds a private key: it is a CA key file, or it has a PEM key block.
fn holds_private_key(path: &Path) -> bool {
    if path
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|d| d == "keys")
    {
        return true;
    }
    let bytes = std::fs::read(path).unwrap();
    bytes.windows(11).any(|w| w == b"PRIVATE KEY")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_keys_on_disk_are_0600_in_0700_data_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = start_server(tmp.path()).await;
    let token = server.token(0).await.unwrap();
    let node = start_node(tmp.path(), &server, Some(token)).await;

    let server_dir = tmp.path().join("server");
    let node_dir = tmp.path().join("node");
    assert_eq!(mode(&server_dir), 0o700, "server data dir");
    assert_eq!(mode(&node_dir), 0o700, "node data dir");

    let mut keys = Vec::new();
    for file in files_under(&server_dir)
        .into_iter()
        .chain(files_under(&node_dir))
    {
        if holds_private_key(&file) {
            assert_eq!(mode(&file), 0o600, "{} holds a private key", file.display());
            keys.push(file);
        }
    }
    // What must be there: the root, intermediate and JWT keys, and the node SVID's key.
    let in_keys = keys
        .iter()
        .filter(|k| k.starts_with(server_dir.join("keys")))
        .count();
    assert_eq!(in_keys, 3, "{keys:?}");
    assert!(keys.contains(&node_svid_file(&node_dir)), "{keys:?}");

    // The admin sockets let only their owner in.
    assert_eq!(mode(&tmp.path().join("admin.sock")), 0o600);
    assert_eq!(mode(&tmp.path().join("node-admin.sock")), 0o600);

    node.shutdown().await;
    server.shutdown().await;
}
