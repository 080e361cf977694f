//! Several hosts, each its own network namespace: a server in one, and two nodes in two others
//! that attest with x509pop (certificates made here with rcgen), each node serving one
//! sidecar (`agentmesh proxy run`) whose entry follows a node alias. Calls go from host A's
//! app through both sidecars to host B's app over the veth link between A and B; then A's
//! link to the server, and only that link, is cut with a firewall rule in A's namespace.
//!
//! Needs root, `ip` (iproute2) and `iptables` (or `nft`): `scripts/test` installs them. The
//! namespaces and links are named after this test process and are removed on drop, also when
//! a test fails. The apps behind the sidecars are HTTP servers in this test process on Unix
//! sockets (path sockets cross network namespaces), and so are the clients.
//!
//! `x509pop_on_loopback` runs the attestation's bad inputs and re-attestation against a
//! server on loopback, without namespaces.

#[path = "support/mesh.rs"]
mod mesh;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use agentmesh_proto::v1::node_admin_client::NodeAdminClient;
use agentmesh_proto::v1::{ListNodesRequest, ListSvidsRequest, NodeStatusRequest};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh::{BIN, Mesh, PATIENCE, Proc, TD, register_launch_at, wait_for_socket};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// === certificates ===

/// A CA that signs node certificates.
struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut p = CertificateParams::new(Vec::new()).expect("CA params");
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Self {
            cert: p.self_signed(&key).expect("self-signed CA"),
            key,
        }
    }

    fn pem(&self) -> String {
        agentmesh_tls::pem_encode("CERTIFICATE", self.cert.der())
    }

    fn fingerprint(&self) -> String {
        agentmesh_tls::x509pop::fingerprint(self.cert.der())
    }

    /// Writes `<name>.pem` and `<name>.key` for a node certificate with CN `cn` under `dir`;
    /// returns the two paths and the certificate's DER.
    fn node_cert(&self, dir: &Path, name: &str, cn: &str) -> (PathBuf, PathBuf, Vec<u8>) {
        let key = KeyPair::generate().expect("node key");
        let mut p = CertificateParams::new(Vec::new()).expect("node params");
        p.distinguished_name.push(DnType::CommonName, cn);
        let issuer = Issuer::from_ca_cert_der(self.cert.der(), &self.key).expect("issuer");
        let cert = p.signed_by(&key, &issuer).expect("node certificate");
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(
            &cert_path,
            agentmesh_tls::pem_encode("CERTIFICATE", cert.der()),
        )
        .expect("write node certificate");
        std::fs::write(
            &key_path,
            agentmesh_tls::pem_encode("PRIVATE KEY", &key.serialize_der()),
        )
        .expect("write node key");
        (cert_path, key_path, cert.der().to_vec())
    }
}

fn node_id(leaf: &[u8]) -> String {
    agentmesh_tls::x509pop::node_id(&TD.parse().expect("trust domain"), leaf).to_string()
}

// === commands ===

/// `agentmesh ARGS` against the server's admin socket.
fn cli(admin: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("AGENTMESH_ADMIN_SOCKET", admin)
        .env_remove("AGENTMESH_JOIN_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run agentmesh")
}

#[track_caller]
fn cli_ok(admin: &Path, args: &[&str]) -> String {
    let out = cli(admin, args);
    assert!(
        out.status.success(),
        "agentmesh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The one line an exiting command printed on stderr.
fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

fn alias(admin: &Path, path: &str, selector: &str) -> String {
    let id = format!("spiffe://{TD}{path}");
    cli_ok(
        admin,
        &[
            "entry",
            "create",
            "--node",
            "--spiffe-id",
            &id,
            "--selector",
            selector,
        ],
    );
    id
}

fn entry(admin: &Path, service: &str, parent: &str) {
    cli_ok(
        admin,
        &[
            "entry",
            "create",
            "--spiffe-id",
            &format!("spiffe://{TD}/ns/default/sa/{service}"),
            "--parent-id",
            parent,
            "--selector",
            &format!("launcher:service:{service}"),
        ],
    );
}

// === network namespaces ===

/// Runs a command that sets up or tears down the network; panics with its output if it fails.
#[track_caller]
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `program` runs here (`program --version`).
fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Three hosts, each a network namespace: the server's (S) and two nodes' (A, B), with a veth
/// link between every two of them. A reaches the server over its own link only, so cutting
/// that link leaves the data path A–B up. Removed on drop.
struct Hosts {
    names: [String; 3],
    firewall: Firewall,
}

/// How the test cuts a link.
#[derive(Debug, Clone, Copy)]
enum Firewall {
    Iptables,
    Nft,
}

const SERVER_NS: usize = 0;
const A_NS: usize = 1;
const B_NS: usize = 2;
/// The server's address as host A sees it (the S–A link).
const SERVER_FROM_A: &str = "10.77.1.1";
/// The server's address as host B sees it (the S–B link).
const SERVER_FROM_B: &str = "10.77.2.1";
/// Host A's address on the A–B link, where its sidecar listens.
const A_DATA: &str = "10.77.3.1";
/// Host B's address on the A–B link.
const B_DATA: &str = "10.77.3.2";
/// The server's node API port (namespaces have their own ports).
const SERVER_PORT: u16 = 8081;
/// Each sidecar's mTLS port on its host.
const PROXY_PORT: u16 = 9443;

impl Hosts {
    fn new() -> Self {
        assert!(
            runs("ip", "-V"),
            "the multihost test needs `ip` (iproute2, apt-get install iproute2) to make network \
             namespaces; scripts/test installs it"
        );
        let firewall = if runs("iptables", "--version") {
            Firewall::Iptables
        } else if runs("nft", "--version") {
            Firewall::Nft
        } else {
            panic!(
                "the multihost test needs `iptables` or `nft` to cut a link (apt-get install \
                 iptables); scripts/test installs iptables"
            )
        };
        let pid = std::process::id();
        let names = [
            format!("am{pid}s"),
            format!("am{pid}a"),
            format!("am{pid}b"),
        ];
        let hosts = Self { names, firewall };
        // Leftovers of an earlier process with the same pid.
        hosts.remove();
        for ns in &hosts.names {
            run("ip", &["netns", "add", ns]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        hosts.link(SERVER_NS, "10.77.1.1", A_NS, "10.77.1.2", "sa");
        hosts.link(SERVER_NS, "10.77.2.1", B_NS, "10.77.2.2", "sb");
        hosts.link(A_NS, A_DATA, B_NS, B_DATA, "ab");
        hosts
    }

    fn ns(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// A veth pair between hosts `x` and `y`, `/24` addresses on each end.
    fn link(&self, x: usize, x_ip: &str, y: usize, y_ip: &str, tag: &str) {
        let pid = std::process::id();
        let (xi, yi) = (format!("am{pid}{tag}"), format!("am{pid}{tag}p"));
        run(
            "ip",
            &[
                "link",
                "add",
                &xi,
                "netns",
                self.ns(x),
                "type",
                "veth",
                "peer",
                "name",
                &yi,
                "netns",
                self.ns(y),
            ],
        );
        for (ns, dev, ip) in [(self.ns(x), &xi, x_ip), (self.ns(y), &yi, y_ip)] {
            run(
                "ip",
                &["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", dev],
            );
            run("ip", &["-n", ns, "link", "set", dev, "up"]);
        }
    }

    /// `ip netns exec NS agentmesh ARGS`: the agentmesh process itself (ip execs it, so the
    /// pid is agentmesh's), in host `i`'s namespace.
    fn agentmesh(&self, i: usize, args: &[&str], log: &Path) -> Proc {
        let child = Command::new("ip")
            .args(["netns", "exec", self.ns(i), BIN])
            .args(args)
            .env("AGENTMESH_LOG", "debug")
            .env_remove("AGENTMESH_JOIN_TOKEN")
            .env_remove("AGENTMESH_ADMIN_SOCKET")
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Mesh::log_file(log))
            .spawn()
            .expect("spawn ip netns exec agentmesh");
        Proc(child)
    }

    /// Drops host A's packets to the server's node API port (the link's other traffic, and A's
    /// link to B, stay up).
    fn cut_a_from_server(&self, cut: bool) {
        let port = SERVER_PORT.to_string();
        match self.firewall {
            Firewall::Iptables => run(
                "ip",
                &[
                    "netns",
                    "exec",
                    self.ns(A_NS),
                    "iptables",
                    if cut { "-A" } else { "-D" },
                    "OUTPUT",
                    "-d",
                    SERVER_FROM_A,
                    "-p",
                    "tcp",
                    "--dport",
                    &port,
                    "-j",
                    "DROP",
                ],
            ),
            Firewall::Nft if cut => {
                let rule = format!(
                    "add table inet amcut\nadd chain inet amcut out {{ type filter hook output priority 0 ; }}\nadd rule inet amcut out ip daddr {SERVER_FROM_A} tcp dport {port} drop\n"
                );
                let dir = tempfile::tempdir().expect("tempdir");
                let file = dir.path().join("cut.nft");
                std::fs::write(&file, rule).expect("write nft rules");
                run(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        self.ns(A_NS),
                        "nft",
                        "-f",
                        file.to_str().expect("path"),
                    ],
                );
            }
            Firewall::Nft => run(
                "ip",
                &[
                    "netns",
                    "exec",
                    self.ns(A_NS),
                    "nft",
                    "delete",
                    "table",
                    "inet",
                    "amcut",
                ],
            ),
        }
    }

    /// Deletes the namespaces (and with them their veth ends and firewall rules).
    fn remove(&self) {
        for ns in &self.names {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.remove();
    }
}

// === apps and clients on Unix sockets ===

/// An HTTP app on a Unix socket that answers `hello from NAME` and counts what reaches it.
fn app(socket: &Path, name: &'static str) -> Arc<AtomicU64> {
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket).expect("bind the app");
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let counter = counter.clone();
            let service =
                hyper::service::service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(format!("hello from {name}")),
                        )))
                    }
                });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), service)
                    .await;
            });
        }
    });
    seen
}

/// `GET path` over a Unix socket, HTTP/1.0: the status (0 when the connection failed) and
/// the body.
async fn get(socket: &Path, path: &str) -> (u16, String) {
    let Ok(mut s) = tokio::net::UnixStream::connect(socket).await else {
        return (0, String::new());
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: app\r\n\r\n");
    if s.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_string(&mut out)).await;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls until `check` holds, or fails with `what` and the logs in `dir`.
async fn eventually<F, Fut>(what: &str, dir: &Path, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what}\n{}",
            logs(dir)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every `*.log` under `dir`, for a failure message.
fn logs(dir: &Path) -> String {
    let mut out = String::new();
    let mut files: Vec<PathBuf> = walk(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        out.push_str(&format!("--- {} (last 40 lines)\n", f.display()));
        for l in tail.iter().rev() {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

// === one host ===

/// A node host's files and processes.
struct Host {
    dir: PathBuf,
    node: Option<Proc>,
    proxy: Option<Proc>,
}

impl Host {
    fn socket(&self) -> PathBuf {
        self.dir.join("node.sock")
    }
    fn admin_socket(&self) -> PathBuf {
        self.dir.join("node-admin.sock")
    }
    fn app_socket(&self) -> PathBuf {
        self.dir.join("app.sock")
    }
    fn upstream_socket(&self) -> PathBuf {
        self.dir.join("upstream.sock")
    }
    fn proxy_admin_socket(&self) -> PathBuf {
        self.dir.join("proxy-admin.sock")
    }

    async fn node_admin(&self) -> NodeAdminClient<tonic::transport::Channel> {
        NodeAdminClient::new(
            agentmesh_proto::unix::connect(&self.admin_socket())
                .await
                .expect("node admin socket"),
        )
    }

    async fn server_reachable(&self) -> bool {
        self.node_admin()
            .await
            .status(NodeStatusRequest {})
            .await
            .expect("node status")
            .into_inner()
            .server_reachable
    }

    /// The SPIFFE IDs the node holds valid SVIDs for.
    async fn svids(&self) -> Vec<String> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let mut ids: Vec<String> = self
            .node_admin()
            .await
            .list_svids(ListSvidsRequest {})
            .await
            .expect("list SVIDs")
            .into_inner()
            .svids
            .into_iter()
            .filter(|s| s.not_after > now)
            .map(|s| s.spiffe_id)
            .collect();
        ids.sort();
        ids
    }
}

// === the tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_two_hosts_attest_with_x509pop_and_survive_a_partition_from_the_server() {
    let hosts = Hosts::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_owned();
    let admin = dir.join("admin.sock");

    // === the server, trusting the node CA ===
    let ca = TestCa::new("agentmesh test node CA");
    std::fs::write(dir.join("node-ca.pem"), ca.pem()).expect("write CA bundle");
    std::fs::write(
        dir.join("server.toml"),
        format!(
            "[node_attestation.x509pop]\nca_bundle_path = \"{}\"\n",
            dir.join("node-ca.pem").display()
        ),
    )
    .expect("write server.toml");
    let mut server = hosts.agentmesh(
        SERVER_NS,
        &[
            "server",
            "run",
            "--data-dir",
            dir.join("server").to_str().expect("path"),
            "--listen",
            &format!("0.0.0.0:{SERVER_PORT}"),
            "--admin-socket",
            admin.to_str().expect("path"),
            "--config",
            dir.join("server.toml").to_str().expect("path"),
        ],
        &dir.join("server.log"),
    );
    wait_for_socket(&admin, "the server", &mut server, &dir.join("server.log"));
    std::fs::write(dir.join("bundle.pem"), cli_ok(&admin, &["bundle", "show"]))
        .expect("write bundle");

    // === node aliases, and one entry per sidecar parented to one ===
    let host_a = alias(&admin, "/hosts/host-a", "x509pop:subject:cn:host-a");
    let host_b = alias(&admin, "/hosts/host-b", "x509pop:subject:cn:host-b");
    let every_host = alias(
        &admin,
        "/hosts/all",
        &format!("x509pop:ca:fingerprint:{}", ca.fingerprint()),
    );
    entry(&admin, "alpha", &host_a);
    entry(&admin, "beta", &host_b);
    entry(&admin, "shared", &every_host);

    // === the nodes, attested with x509pop ===
    let mut a = Host {
        dir: dir.join("a"),
        node: None,
        proxy: None,
    };
    let mut b = Host {
        dir: dir.join("b"),
        node: None,
        proxy: None,
    };
    let mut leaves = Vec::new();
    for (host, ns, cn, server_ip) in [
        (&mut a, A_NS, "host-a", SERVER_FROM_A),
        (&mut b, B_NS, "host-b", SERVER_FROM_B),
    ] {
        std::fs::create_dir_all(&host.dir).expect("host dir");
        let (cert, key, leaf) = ca.node_cert(&host.dir, "x509pop", cn);
        leaves.push(leaf);
        let log = host.dir.join("node.log");
        let mut node = hosts.agentmesh(
            ns,
            &[
                "node",
                "run",
                "--server",
                &format!("{server_ip}:{SERVER_PORT}"),
                "--socket",
                host.socket().to_str().expect("path"),
                "--trust-bundle",
                dir.join("bundle.pem").to_str().expect("path"),
                "--data-dir",
                host.dir.join("node").to_str().expect("path"),
                "--admin-socket",
                host.admin_socket().to_str().expect("path"),
                "--x509pop-cert",
                cert.to_str().expect("path"),
                "--x509pop-key",
                key.to_str().expect("path"),
                "--docker-socket",
                "",
            ],
            &log,
        );
        wait_for_socket(&host.socket(), "a node", &mut node, &log);
        host.node = Some(node);
    }

    // Each node has its fingerprint ID and SPIRE's selectors, and serves its alias's entry
    // and the one for every host, never the other host's.
    let mut admin_client = agentmesh_proto::v1::admin_client::AdminClient::new(
        agentmesh_proto::unix::connect(&admin)
            .await
            .expect("admin socket"),
    );
    let nodes = admin_client
        .list_nodes(ListNodesRequest {})
        .await
        .expect("list nodes")
        .into_inner()
        .nodes;
    for (leaf, cn) in leaves.iter().zip(["host-a", "host-b"]) {
        let node = nodes
            .iter()
            .find(|n| n.spiffe_id == node_id(leaf))
            .unwrap_or_else(|| panic!("no node {} in {nodes:?}", node_id(leaf)));
        assert!(
            node.selectors.contains(&format!("x509pop:subject:cn:{cn}")),
            "{node:?}"
        );
        assert!(
            node.selectors
                .contains(&format!("x509pop:ca:fingerprint:{}", ca.fingerprint())),
            "{node:?}"
        );
    }
    let id = |s: &str| format!("spiffe://{TD}/ns/default/sa/{s}");
    eventually(
        "each node holds the SVIDs of its aliases' entries",
        &dir,
        || async {
            a.svids().await == [id("alpha"), id("shared")]
                && b.svids().await == [id("beta"), id("shared")]
        },
    )
    .await;

    // === a sidecar and an app on each host ===
    let seen_a = app(&a.app_socket(), "alpha");
    let seen_b = app(&b.app_socket(), "beta");
    for (host, ns, service, listen, peer) in [
        (&mut a, A_NS, "alpha", A_DATA, "beta"),
        (&mut b, B_NS, "beta", B_DATA, "alpha"),
    ] {
        let toml = format!(
            "service = \"{service}\"\nworkload_api = \"unix://{}\"\n\
             [inbound]\nlisten = \"{listen}:{PROXY_PORT}\"\napp = \"unix://{}\"\nprotocol = \"http\"\n\
             [[upstream]]\ndestination = \"{peer}\"\nlisten = \"unix://{}\"\nprotocol = \"http\"\n\
             [admin]\nlisten = \"unix://{}\"\n",
            host.socket().display(),
            host.app_socket().display(),
            host.upstream_socket().display(),
            host.proxy_admin_socket().display(),
        );
        let config = host.dir.join("proxy.toml");
        std::fs::write(&config, toml).expect("write proxy.toml");
        let log = host.dir.join("proxy.log");
        let proxy = hosts.agentmesh(
            ns,
            &["proxy", "run", "--config", config.to_str().expect("path")],
            &log,
        );
        register_launch_at(&host.admin_socket(), proxy.0.id(), service).await;
        let admin_socket = host.proxy_admin_socket();
        eventually(&format!("sidecar {service} healthy"), &dir, || {
            let admin_socket = admin_socket.clone();
            async move { get(&admin_socket, "/healthz").await.0 == 200 }
        })
        .await;
        host.proxy = Some(proxy);
    }

    // === A → B: refused by default, allowed by its intention only ===
    // Until A's sidecar has its first policy and B's address it may answer 503; never 200.
    let upstream = a.upstream_socket();
    eventually("A → B refused by intentions (403)", &dir, || {
        let upstream = upstream.clone();
        async move {
            let (status, _) = get(&upstream, "/").await;
            assert_ne!(status, 200, "A → B without an intention was allowed");
            status == 403
        }
    })
    .await;
    assert_eq!(
        seen_b.load(Ordering::SeqCst),
        0,
        "a refused call reached B's app"
    );
    cli_ok(
        &admin,
        &["intention", "create", "alpha", "beta", "--action", "allow"],
    );
    let upstream_a = a.upstream_socket();
    eventually("A → B allowed by its intention", &dir, || {
        let upstream_a = upstream_a.clone();
        async move { get(&upstream_a, "/").await == (200, "hello from beta".to_owned()) }
    })
    .await;
    let (status, _) = get(&b.upstream_socket(), "/").await;
    assert_eq!(status, 403, "B → A has no intention\n{}", logs(&dir));
    assert_eq!(
        seen_a.load(Ordering::SeqCst),
        0,
        "a refused call reached A's app"
    );

    // === the partition: A loses the server, keeps B ===
    let node_a_pid = a.node.as_ref().expect("node A").0.id();
    hosts.cut_a_from_server(true);
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut failures = Vec::new();
    let call = async |ok: &mut u64, failed: &mut u64, failures: &mut Vec<(u16, String)>| match get(
        &a.upstream_socket(),
        "/",
    )
    .await
    {
        (200, body) if body == "hello from beta" => *ok += 1,
        other => {
            *failed += 1;
            failures.push(other);
        }
    };
    // Until node A notices (its streams to the server time out), allowed calls keep going.
    let deadline = Instant::now() + PATIENCE;
    while a.server_reachable().await {
        assert!(
            Instant::now() < deadline,
            "node A did not notice the cut\n{}",
            logs(&dir)
        );
        call(&mut ok, &mut failed, &mut failures).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(b.server_reachable().await, "the cut reached B too");
    // A change during the cut: B → A allowed. A's sidecar decides it, with what its node
    // last relayed, so it keeps refusing until A is back.
    cli_ok(
        &admin,
        &["intention", "create", "beta", "alpha", "--action", "allow"],
    );
    for _ in 0..30 {
        call(&mut ok, &mut failed, &mut failures).await;
        let (status, _) = get(&b.upstream_socket(), "/").await;
        assert_eq!(
            status,
            403,
            "A's sidecar should keep its last intentions during the cut\n{}",
            logs(&dir)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!a.server_reachable().await, "the cut healed by itself");
    assert_eq!(
        a.svids().await,
        [id("alpha"), id("shared")],
        "node A lost SVIDs during the cut"
    );
    assert_eq!(
        failed,
        0,
        "allowed calls A → B failed during the cut ({ok} succeeded): {failures:?}\n{}",
        logs(&dir)
    );
    assert!(ok > 30, "only {ok} calls during the cut");

    // === the link returns: A resyncs with no restart, and the change takes effect ===
    hosts.cut_a_from_server(false);
    let upstream_b = b.upstream_socket();
    eventually("B → A allowed once A resynced", &dir, || {
        let upstream_b = upstream_b.clone();
        async move { get(&upstream_b, "/").await == (200, "hello from alpha".to_owned()) }
    })
    .await;
    eventually("node A reachable again", &dir, || a.server_reachable()).await;
    let node_a = a.node.as_mut().expect("node A");
    assert_eq!(node_a.0.id(), node_a_pid);
    assert!(
        node_a.0.try_wait().expect("node A status").is_none(),
        "node A exited\n{}",
        logs(&dir)
    );
    assert_eq!(get(&a.upstream_socket(), "/").await.0, 200);

    // Children first, then the namespaces.
    drop(a);
    drop(b);
    drop(server);
    drop(hosts);
}

/// x509pop against a server on loopback: one clear error for each bad input, join tokens
/// next to x509pop, and re-attestation with the same certificate after a restart.
#[test]
fn x509pop_on_loopback() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_owned();
    let ca = TestCa::new("agentmesh test node CA");
    std::fs::write(dir.join("node-ca.pem"), ca.pem()).expect("write CA bundle");
    let config = dir.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[node_attestation.x509pop]\nca_bundle_path = \"{}\"\n",
            dir.join("node-ca.pem").display()
        ),
    )
    .expect("write server.toml");

    // === a malformed CA bundle: the server does not start, and names the file ===
    let bad_bundle = dir.join("bad-ca.pem");
    std::fs::write(
        &bad_bundle,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .expect("write bad bundle");
    let bad_config = dir.join("bad-server.toml");
    std::fs::write(
        &bad_config,
        format!(
            "[node_attestation.x509pop]\nca_bundle_path = \"{}\"\n",
            bad_bundle.display()
        ),
    )
    .expect("write bad server.toml");
    let out = Command::new(BIN)
        .args(["server", "run", "--data-dir"])
        .arg(dir.join("bad-server"))
        .args(["--listen", "127.0.0.1:0", "--admin-socket"])
        .arg(dir.join("bad-admin.sock"))
        .arg("--config")
        .arg(&bad_config)
        .env_remove("AGENTMESH_ADMIN_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run server");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.starts_with("error: ")
            && err.contains(&format!(
                "x509pop CA bundle {} is malformed",
                bad_bundle.display()
            ))
            && !err.contains('\n'),
        "{err}"
    );
    assert!(
        !dir.join("bad-server").exists(),
        "a refused server left its data dir"
    );

    // === the server, with one node attested by a join token (they keep working) ===
    let mut mesh = Mesh::start_in(
        tempfile::tempdir().expect("tempdir"),
        vec!["--config".into(), config.into()],
    );
    assert!(mesh.node.is_some());
    let admin = mesh.admin_socket();

    // === an unknown x509pop selector key: refused by entry create ===
    let out = cli(
        &admin,
        &[
            "entry",
            "create",
            "--node",
            "--spiffe-id",
            &format!("spiffe://{TD}/hosts/ops"),
            "--selector",
            "x509pop:subject:ou:ops",
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("unknown key \"subject:ou\"")
            && err.contains("subject:cn")
            && !err.contains('\n'),
        "{err}"
    );

    let node = |name: &str, cert: &Path, key: &Path| -> (Output, PathBuf) {
        let data = mesh.dir.join(name);
        let out = mesh
            .command()
            .args([
                "node",
                "run",
                "--server",
                &format!("127.0.0.1:{}", mesh.port),
            ])
            .arg("--socket")
            .arg(mesh.dir.join(format!("{name}.sock")))
            .arg("--trust-bundle")
            .arg(mesh.dir.join("bundle.pem"))
            .arg("--data-dir")
            .arg(&data)
            .arg("--x509pop-cert")
            .arg(cert)
            .arg("--x509pop-key")
            .arg(key)
            .args(["--docker-socket", "", "--trust-domain", TD])
            // Only what the operator is told when it exits, not the logs before it.
            .env("AGENTMESH_LOG", "off")
            .output()
            .expect("run node");
        (out, data)
    };

    // === a certificate from another CA: attestation refused, the node exits saying why ===
    let other = TestCa::new("another CA");
    let (foreign_cert, foreign_key, _) = other.node_cert(&dir, "foreign", "host-x");
    let (out, _) = node("foreign", &foreign_cert, &foreign_key);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(
            "x509pop refused: the node certificate does not chain to the server's x509pop CA bundle"
        ) && !err.contains('\n'),
        "{err}"
    );

    // === a key that is not the certificate's: refused before anything is sent ===
    let (good_cert, good_key, leaf) = ca.node_cert(&dir, "host-a", "host-a");
    let (out, _) = node("mismatch", &good_cert, &foreign_key);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "--x509pop-key {}: does not match the certificate's public key in --x509pop-cert {}",
            foreign_key.display(),
            good_cert.display()
        )) && !err.contains('\n'),
        "{err}"
    );

    // === a good certificate attests, and attests again after a restart that lost its SVID ===
    for round in 0..2 {
        let data = mesh.dir.join("host-a");
        if round == 1 {
            std::fs::remove_file(agentmesh_node::node_svid_file(&data))
                .expect("remove the node SVID");
        }
        let log = mesh.dir.join("host-a.log");
        let mut proc = Proc(
            mesh.command()
                .args([
                    "node",
                    "run",
                    "--server",
                    &format!("127.0.0.1:{}", mesh.port),
                ])
                .arg("--socket")
                .arg(mesh.dir.join("host-a.sock"))
                .arg("--trust-bundle")
                .arg(mesh.dir.join("bundle.pem"))
                .arg("--data-dir")
                .arg(&data)
                .arg("--x509pop-cert")
                .arg(&good_cert)
                .arg("--x509pop-key")
                .arg(&good_key)
                .args(["--docker-socket", "", "--trust-domain", TD])
                .stdout(Stdio::null())
                .stderr(Mesh::log_file(&log))
                .spawn()
                .expect("spawn node"),
        );
        wait_for_socket(
            &mesh.dir.join("host-a.sock"),
            "the x509pop node",
            &mut proc,
            &log,
        );
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(
            text.matches("attested with x509pop").count(),
            round + 1,
            "round {round}: {text}"
        );
        drop(proc);
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let nodes = rt.block_on(async {
        agentmesh_proto::v1::admin_client::AdminClient::new(
            agentmesh_proto::unix::connect(&admin)
                .await
                .expect("admin socket"),
        )
        .list_nodes(ListNodesRequest {})
        .await
        .expect("list nodes")
        .into_inner()
        .nodes
    });
    let x509pop_nodes: Vec<_> = nodes
        .iter()
        .filter(|n| n.spiffe_id.contains("/agentmesh/node/x509pop/"))
        .collect();
    assert_eq!(x509pop_nodes.len(), 1, "{nodes:?}");
    assert_eq!(x509pop_nodes[0].spiffe_id, node_id(&leaf));
    // The join-token node is still there, and still running.
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    assert!(
        mesh.node
            .as_mut()
            .expect("join-token node")
            .0
            .try_wait()
            .expect("status")
            .is_none()
    );
}
