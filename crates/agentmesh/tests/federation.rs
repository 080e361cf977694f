//! Federation across trust domains with the SPIFFE bundle endpoint: two (and, for the refusal,
//! three) real `agentmesh server run` + `node run` meshes in their own trust domains, each
//! server serving its bundle at an `https_spiffe` bundle endpoint and fetching the other's,
//! bootstrapped with `agentmesh bundle show -o spiffe | agentmesh bundle set`. Real
//! `agentmesh proxy run` sidecars carry the call across.
//!
//! The SPIRE test needs `spire-server` (v1.13.3, built by scripts/test into .cache/go/bin, or
//! `$AGENTMESH_TEST_SPIRE_BIN`); without it, it fails naming the missing binary.

#[path = "support/mesh.rs"]
mod mesh;
#[path = "support/sidecar.rs"]
mod sidecar;
#[path = "support/spire.rs"]
mod spire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mesh::*;
use sidecar::*;
use spire::Spire;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const OTHER: &str = "other.test";
const THIRD: &str = "third.test";

/// One trust domain's server (with `[federation]` from `federation_toml`) and node.
fn start_domain(td: &str, extra_args: &[&str], federation_toml: &str) -> Mesh {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_owned();
    let config = dir.join("server.toml");
    std::fs::write(&config, federation_toml).expect("write server.toml");
    let mut server_args: Vec<std::ffi::OsString> = vec![
        "--trust-domain".into(),
        td.into(),
        "--config".into(),
        config.into(),
    ];
    server_args.extend(extra_args.iter().map(Into::into));
    let mut mesh = Mesh {
        _tmp: tmp,
        dir,
        port: free_port(),
        server: None,
        node: None,
        tokens: Vec::new(),
        server_args,
        node_args: Vec::new(),
    };
    mesh.start_server();
    let token = mesh.token();
    let bundle = mesh.cli_ok(&["bundle", "show"]);
    std::fs::write(mesh.dir.join("bundle.pem"), bundle).expect("write bundle");
    mesh.start_node(Some(&token));
    mesh
}

/// `[federation]`: serve at `listen` (refresh hint 1 s) and fetch `peer` from `peer_addr`.
fn federation(listen: u16, peer: Option<(&str, u16)>) -> String {
    let mut toml = format!(
        "[federation]\nbundle_endpoint = {{ listen = \"127.0.0.1:{listen}\", profile = \"https_spiffe\", refresh_hint = \"1s\" }}\n"
    );
    if let Some((td, port)) = peer {
        toml.push_str(&format!(
            "[[federation.federates_with]]\ntrust_domain = \"{td}\"\nurl = \"https://127.0.0.1:{port}/\"\nprofile = \"https_spiffe\"\nendpoint_spiffe_id = \"spiffe://{td}/agentmesh/server\"\n"
        ));
    }
    toml
}

/// Gives `to` the bundle of `from` by hand, as an operator bootstraps `https_spiffe`.
fn bootstrap(from: &Mesh, from_td: &str, to: &Mesh) {
    let doc = from.cli_ok(&["bundle", "show", "-o", "spiffe"]);
    let file = to.dir.join(format!("{from_td}.bundle.json"));
    std::fs::write(&file, doc).expect("write bundle");
    to.cli_ok(&[
        "bundle",
        "set",
        "--id",
        &format!("spiffe://{from_td}"),
        "--path",
        file.to_str().expect("UTF-8 path"),
    ]);
}

/// The federated bundles `mesh`'s server holds, from `bundle list -o json`.
fn held(mesh: &Mesh) -> Vec<serde_json::Value> {
    let out = mesh.cli_ok(&["bundle", "list", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("bundle list -o json");
    v["bundles"].as_array().cloned().unwrap_or_default()
}

fn held_roots(mesh: &Mesh, td: &str) -> Option<(usize, String)> {
    held(mesh).into_iter().find_map(|b| {
        (b["trust_domain"] == td).then(|| {
            (
                b["x509_authorities"].as_array().map_or(0, Vec::len),
                b["source"].as_str().unwrap_or_default().to_owned(),
            )
        })
    })
}

/// Registers `service` in `td` (launcher selector), federating with `federates_with`.
fn register_in(mesh: &Mesh, td: &str, service: &str, ttl: &str, federates_with: &[&str]) {
    let id = format!("spiffe://{td}/ns/default/sa/{service}");
    let selector = format!("launcher:service:{service}");
    let mut args = vec![
        "entry",
        "create",
        "--spiffe-id",
        &id,
        "--selector",
        &selector,
        "--x509-ttl",
        ttl,
    ];
    let fed: Vec<String> = federates_with
        .iter()
        .map(|f| format!("spiffe://{f}"))
        .collect();
    for f in &fed {
        args.extend(["--federates-with", f.as_str()]);
    }
    mesh.cli_ok(&args);
}

/// A TCP echo app that counts the bytes it receives.
async fn echo_app() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = listener.local_addr().expect("addr");
    let bytes = Arc::new(AtomicU64::new(0));
    let counted = bytes.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    counted.fetch_add(n as u64, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, bytes)
}

async fn tcp_works(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    if s.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await,
        Ok(Ok(_)) if &buf == b"ping"
    )
}

/// A caller proxy `service` in `mesh` with one TCP upstream to `destination` at `address`.
async fn caller(mesh: &Mesh, service: &str, destination: &str, address: SocketAddr) -> ProxyProc {
    let listen = loopback_addr();
    let toml = format!(
        "service = \"{service}\"\n[[upstream]]\ndestination = \"{destination}\"\nlisten = \"{listen}\"\nprotocol = \"tcp\"\naddress = \"{address}\"\n"
    );
    start_proxy_from_toml(mesh, service, &toml, None, vec![listen]).await
}

/// agentmesh ↔ agentmesh: the bundles cross over their endpoints once bootstrapped; a call
/// from agentmesh.local to other.test is refused with no intention and by a `*` intention,
/// allowed by one that names the foreign caller; a third, unfederated trust domain is refused
/// at the handshake; and a root rotation in other.test reaches agentmesh.local's server and
/// proxies with no restart while calls keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_across_trust_domains_needs_federation_and_an_intention_that_names_the_caller() {
    let (ep_a, ep_b, ep_c) = (free_port(), free_port(), free_port());
    let a = start_domain(TD, &[], &federation(ep_a, Some((OTHER, ep_b))));
    let b_started = std::time::Instant::now();
    // other.test's root lives 90 s, so its next root appears after 60 s (2/3) and the test
    // sees a real root rotation; everything it issues is short to fit.
    let b = start_domain(
        OTHER,
        &[
            "--root-ttl",
            "90s",
            "--intermediate-ttl",
            "40s",
            "--default-x509-ttl",
            "10s",
            "--default-jwt-ttl",
            "10s",
            "--node-svid-ttl",
            "20s",
        ],
        &federation(ep_b, Some((TD, ep_a))),
    );
    let c = start_domain(THIRD, &[], &federation(ep_c, None));

    // Before the bootstrap an https_spiffe endpoint cannot be authenticated: one clear line.
    eventually("a's server says how to bootstrap other.test", || async {
        std::fs::read_to_string(a.server_log())
            .unwrap_or_default()
            .contains("agentmesh bundle set --id spiffe://other.test")
    })
    .await;
    bootstrap(&a, TD, &b);
    bootstrap(&b, OTHER, &a);
    eventually(
        "each server fetched the other's bundle from its endpoint",
        || async {
            held_roots(&a, OTHER).is_some_and(|(_, src)| src.starts_with("https://"))
                && held_roots(&b, TD).is_some_and(|(_, src)| src.starts_with("https://"))
        },
    )
    .await;

    register_in(&a, TD, "a", "10s", &[OTHER]);
    register_in(&b, OTHER, "b", "10s", &[TD]);
    // third.test trusts other.test (a bundle set by hand), but other.test does not federate
    // with third.test: the refusal is other.test's.
    bootstrap(&b, OTHER, &c);
    register_in(&c, THIRD, "c", "10s", &[OTHER]);
    let (app_b, bytes_b) = echo_app().await;
    let proxy_b = start_proxy(&b, "b", Some((app_b, "tcp")), &[]).await;
    let b_addr = proxy_b.inbound.expect("b's inbound");
    let b_id = format!("spiffe://{OTHER}/ns/default/sa/b");
    let a_id = format!("spiffe://{TD}/ns/default/sa/a");
    let proxy_a = caller(&a, "a", &b_id, b_addr).await;
    let proxy_c = caller(&c, "c", &b_id, b_addr).await;

    // No intention: the handshake succeeds across the domains, the intention check refuses.
    eventually("b refuses a by the default deny", || async {
        let _ = tcp_works(proxy_a.upstreams[0]).await;
        proxy_b.access().iter().any(|l| {
            l["source"] == a_id.as_str()
                && l["decision"] == "deny"
                && l["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("default is deny"))
        })
    })
    .await;
    // A `*` source stands for other.test only: the foreign caller must be named.
    b.cli_ok(&["intention", "create", "*", "b", "--action", "allow"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !tcp_works(proxy_a.upstreams[0]).await,
        "a '*' intention must not admit a federated caller"
    );
    assert_eq!(bytes_b.load(Ordering::SeqCst), 0, "b's app received bytes");
    b.cli_ok(&["intention", "create", &a_id, "b", "--action", "allow"]);
    eventually("a -> b works once an intention names a", || {
        tcp_works(proxy_a.upstreams[0])
    })
    .await;
    assert!(bytes_b.load(Ordering::SeqCst) > 0);

    // third.test is not federated into other.test: b refuses c at the handshake, saying so.
    assert!(!tcp_works(proxy_c.upstreams[0]).await);
    eventually("b's proxy names the unfederated trust domain", || async {
        let _ = tcp_works(proxy_c.upstreams[0]).await;
        proxy_b
            .log_text()
            .contains("third.test, which is not federated")
    })
    .await;

    // other.test rotates its root (the next root joins its bundle at 2/3 of 90 s); a's server
    // fetches it from the endpoint and a's node and proxy follow, with no restart anywhere.
    eventually("a's server holds other.test's second root", || async {
        held_roots(&a, OTHER).is_some_and(|(n, _)| n == 2)
    })
    .await;
    let b_bundle_roots = b
        .cli_ok(&["bundle", "show"])
        .matches("BEGIN CERTIFICATE")
        .count();
    assert_eq!(b_bundle_roots, 2, "other.test itself has two roots");
    // Once other.test's first root has expired (90 s), every SVID of b chains to the new root,
    // so a's proxy can only accept b by holding it: the call keeps working throughout.
    let deadline = b_started + Duration::from_secs(95) + PATIENCE;
    loop {
        if b_started.elapsed() > Duration::from_secs(95) && tcp_works(proxy_a.upstreams[0]).await {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a -> b stopped working after other.test's root rotation; a's proxy log:\n{}\nb's proxy log:\n{}",
            proxy_a.log_text(),
            proxy_b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(tcp_works(proxy_a.upstreams[0]).await);
    drop((proxy_a, proxy_b, proxy_c));
}

/// Bad input from a bundle endpoint: garbage, a certificate with the wrong SPIFFE ID, and an
/// unreachable endpoint each get one clear line, and the bundle held before stays in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_bundle_endpoint_is_logged_and_the_last_good_bundle_is_kept() {
    let (ep_b, garbage, dead) = (free_port(), free_port(), free_port());
    let b = start_domain(OTHER, &[], &federation(ep_b, None));
    // A plain TLS-less listener that answers garbage to whatever connects.
    let listener = TcpListener::bind(("127.0.0.1", garbage))
        .await
        .expect("bind");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nnot a bundle").await;
        }
    });
    let toml = format!(
        "[[federation.federates_with]]\ntrust_domain = \"{OTHER}\"\nurl = \"https://127.0.0.1:{ep_b}/\"\nprofile = \"https_spiffe\"\nendpoint_spiffe_id = \"spiffe://{OTHER}/wrong/id\"\n\
         [[federation.federates_with]]\ntrust_domain = \"garbage.test\"\nurl = \"https://127.0.0.1:{garbage}/\"\nprofile = \"https_web\"\n\
         [[federation.federates_with]]\ntrust_domain = \"dead.test\"\nurl = \"https://127.0.0.1:{dead}/\"\nprofile = \"https_web\"\n"
    );
    let a = start_domain(TD, &[], &toml);
    bootstrap(&b, OTHER, &a);
    let log = || std::fs::read_to_string(a.server_log()).unwrap_or_default();
    eventually("each bad endpoint is named in one warning", || async {
        let log = log();
        let line = |td: &str, what: &str| {
            log.lines().any(|l| {
                l.contains("fetching the federated bundle failed")
                    && l.contains(td)
                    && l.contains(what)
            })
        };
        line(OTHER, "spiffe://other.test/wrong/id")
            && line("garbage.test", "127.0.0.1")
            && line("dead.test", "127.0.0.1")
    })
    .await;
    // The bundle set by hand is still what the server holds and serves its nodes.
    let (roots, source) = held_roots(&a, OTHER).expect("other.test still held");
    assert_eq!((roots, source.as_str()), (1, "manual"));
    assert!(log().contains("keeping the last good bundle (valid for"));
}

const SPIRE_FED_TD: &str = "spire.test";

/// The JWT key ids in a SPIFFE bundle document.
fn jwt_kids(doc: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(doc.trim())
        .unwrap_or_else(|e| panic!("not a SPIFFE bundle ({e}): {doc}"));
    v["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter(|k| k["use"] == "jwt-svid")
                .filter_map(|k| k["kid"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// agentmesh ↔ SPIRE, both directions over `https_spiffe`: each side is bootstrapped with
/// the other's X.509 roots only (PEM), so the JWT keys it ends up holding can only have come
/// from the other's bundle endpoint. `spire-server bundle list` shows ours; `agentmesh bundle
/// list` shows SPIRE's, fetched from its endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agentmesh_and_spire_read_each_others_bundle_endpoints() {
    let (ep_a, ep_s) = (free_port(), free_port());
    let a = start_domain(
        TD,
        &[],
        &format!(
            "[federation]\nbundle_endpoint = {{ listen = \"127.0.0.1:{ep_a}\", profile = \"https_spiffe\", refresh_hint = \"1s\" }}\n\
             [[federation.federates_with]]\ntrust_domain = \"{SPIRE_FED_TD}\"\nurl = \"https://127.0.0.1:{ep_s}\"\nprofile = \"https_spiffe\"\nendpoint_spiffe_id = \"spiffe://{SPIRE_FED_TD}/spire/server\"\n"
        ),
    );
    let spire = Spire::server_only(
        SPIRE_FED_TD,
        &format!(
            r#"  federation {{
    bundle_endpoint {{
      address = "127.0.0.1"
      port = {ep_s}
      refresh_hint = "1m"
    }}
    federates_with "{TD}" {{
      bundle_endpoint_url = "https://127.0.0.1:{ep_a}"
      bundle_endpoint_profile "https_spiffe" {{
        endpoint_spiffe_id = "spiffe://{TD}/agentmesh/server"
      }}
    }}
  }}"#
        ),
    );

    // Bootstrap both ways with PEM roots only.
    let spire_pem = spire.server_ok(&["bundle", "show", "-format", "pem"]);
    let spire_pem_file = a.dir.join("spire.pem");
    std::fs::write(&spire_pem_file, &spire_pem).expect("write spire.pem");
    a.cli_ok(&[
        "bundle",
        "set",
        "--id",
        &format!("spiffe://{SPIRE_FED_TD}"),
        "--format",
        "pem",
        "--path",
        spire_pem_file.to_str().expect("UTF-8"),
    ]);
    let ours = a.cli_ok(&["bundle", "show"]);
    let ours_file = spire.dir.path().join("agentmesh.pem");
    std::fs::write(&ours_file, &ours).expect("write agentmesh.pem");
    spire.server_ok(&[
        "bundle",
        "set",
        "-format",
        "pem",
        "-id",
        &format!("spiffe://{TD}"),
        "-path",
        ours_file.to_str().expect("UTF-8"),
    ]);

    // Our server reads SPIRE's endpoint: SPIRE's JWT key arrives, from the https URL.
    let spire_kids = jwt_kids(&spire.server_ok(&["bundle", "show", "-format", "spiffe"]));
    assert!(!spire_kids.is_empty(), "SPIRE publishes a JWT key");
    eventually(
        "agentmesh holds SPIRE's bundle from its endpoint",
        || async {
            held(&a).iter().any(|b| {
                b["trust_domain"] == SPIRE_FED_TD
                    && b["source"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("https://"))
                    && b["jwks"]["keys"].as_array().is_some_and(|k| {
                        k.iter()
                            .any(|k| spire_kids.iter().any(|id| k["kid"] == id.as_str()))
                    })
            })
        },
    )
    .await;

    // SPIRE reads ours (asked to refresh now rather than after its one-minute floor).
    let our_kids = jwt_kids(&a.cli_ok(&["bundle", "show", "-o", "spiffe"]));
    assert!(!our_kids.is_empty());
    let td_id = format!("spiffe://{TD}");
    eventually(
        "SPIRE holds agentmesh's bundle from its endpoint",
        || async {
            let _ = spire.server_cmd(&["federation", "refresh", "-id", &td_id]);
            let out = spire.server_cmd(&["bundle", "list", "-id", &td_id, "-format", "spiffe"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            out.status.success() && our_kids.iter().all(|k| text.contains(k.as_str()))
        },
    )
    .await;
    let listed = spire.server_ok(&["bundle", "list", "-format", "pem"]);
    assert!(listed.contains(&format!("* {TD}")), "{listed}");
    let first_root = ours.lines().nth(1).expect("a PEM body line").to_owned();
    assert!(
        listed.contains(&first_root),
        "spire-server bundle list lacks our root:\n{listed}"
    );
    assert!(
        spire.server_log().contains("Bundle refreshed"),
        "SPIRE never fetched from our endpoint:\n{}",
        spire.server_log()
    );
}

/// The `https_web` profile: other.test serves its bundle with an operator's certificate
/// (PEM files, an IP SAN for 127.0.0.1), and agentmesh.local fetches it trusting that
/// certificate's CA (`ca_file`); no bootstrap is needed, since web PKI authenticates the
/// endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_web_endpoint_needs_no_bootstrap() {
    let (ep_b, ep_a) = (free_port(), free_port());
    let certs = tempfile::tempdir().expect("tempdir");
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    let cert = params.signed_by(&key, &issuer).expect("leaf");
    let (cert_file, key_file, ca_file) = (
        certs.path().join("web.pem"),
        certs.path().join("web.key"),
        certs.path().join("ca.pem"),
    );
    std::fs::write(
        &cert_file,
        agentmesh_tls::pem_encode("CERTIFICATE", cert.der()),
    )
    .expect("write");
    std::fs::write(
        &key_file,
        agentmesh_tls::pem_encode("PRIVATE KEY", &key.serialize_der()),
    )
    .expect("write");
    std::fs::write(
        &ca_file,
        agentmesh_tls::pem_encode("CERTIFICATE", ca_cert.der()),
    )
    .expect("write");

    let b = start_domain(
        OTHER,
        &[],
        &format!(
            "[federation]\nbundle_endpoint = {{ listen = \"127.0.0.1:{ep_b}\", profile = \"https_web\", cert_file = \"{}\", key_file = \"{}\" }}\n",
            cert_file.display(),
            key_file.display()
        ),
    );
    let a = start_domain(
        TD,
        &[],
        &format!(
            "{}[[federation.federates_with]]\ntrust_domain = \"{OTHER}\"\nurl = \"https://127.0.0.1:{ep_b}/\"\nprofile = \"https_web\"\nca_file = \"{}\"\n",
            federation(ep_a, None),
            ca_file.display()
        ),
    );
    let want = b.cli_ok(&["bundle", "show"]);
    eventually(
        "agentmesh.local fetched other.test's bundle over https_web",
        || async {
            held(&a).iter().any(|h| {
                h["trust_domain"] == OTHER
                    && h["source"] == format!("https://127.0.0.1:{ep_b}/").as_str()
                    && h["x509_authorities"].as_array().is_some_and(|r| {
                        r.iter()
                            .all(|pem| want.contains(pem.as_str().unwrap_or("-")))
                    })
            })
        },
    )
    .await;
}
