//! Envoy's SDS on the node, in one process: a server and a node on loopback, the test process
//! as the workload (attested from its peer credentials like Envoy would be), and the generated
//! tonic client over the Workload API socket speaking xDS as Envoy does.

use std::time::Duration;

use agentmesh_node::TestMesh;
use agentmesh_proto::xds::envoy::config::core::v3::{DataSource, data_source};
use agentmesh_proto::xds::envoy::extensions::transport_sockets::tls::v3::{
    Secret, SpiffeCertValidatorConfig, secret,
};
use agentmesh_proto::xds::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use agentmesh_proto::xds::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use agentmesh_proto::xds::google::rpc;
use prost::Message;
use tokio::sync::mpsc;
use tonic::transport::Channel;

const TYPE_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// How long to wait for something that must happen before calling the test hung. Not a timing
/// claim: under load a rotation can take much longer than its TTL says.
const PATIENCE: Duration = Duration::from_secs(120);

/// A Secret Discovery Service client on the mesh's Workload API socket, as Envoy connects.
async fn sds(mesh: &TestMesh) -> SecretDiscoveryServiceClient<Channel> {
    SecretDiscoveryServiceClient::new(
        agentmesh_proto::unix::connect(&mesh.workload_socket())
            .await
            .unwrap(),
    )
}

fn request(names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.into(),
        node: None,
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        type_url: TYPE_URL.into(),
        response_nonce: nonce.into(),
        error_detail: None,
    }
}

/// An open StreamSecrets stream, driven like Envoy drives it.
struct Stream {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

impl Stream {
    async fn open(
        client: &mut SecretDiscoveryServiceClient<Channel>,
        first: DiscoveryRequest,
    ) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(8);
        tx.send(first).await.unwrap();
        let resp = client
            .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?;
        Ok(Self {
            tx,
            rx: resp.into_inner(),
        })
    }

    async fn send(&self, req: DiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }

    async fn next(&mut self) -> Result<DiscoveryResponse, tonic::Status> {
        tokio::time::timeout(PATIENCE, self.rx.message())
            .await
            .expect("the node sent no SDS response (test hung)")
            .map(|m| m.expect("the node ended the SDS stream"))
    }
}

fn secrets(resp: &DiscoveryResponse) -> Vec<Secret> {
    assert_eq!(resp.type_url, TYPE_URL);
    resp.resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, TYPE_URL);
            Secret::decode(any.value.as_slice()).unwrap()
        })
        .collect()
}

fn inline_text(ds: &Option<DataSource>) -> String {
    match ds.as_ref().and_then(|d| d.specifier.as_ref()) {
        Some(data_source::Specifier::InlineBytes(b)) => String::from_utf8(b.clone()).unwrap(),
        other => panic!("expected inline bytes, got {other:?}"),
    }
}

/// The SPIFFE ID and serial of a `TlsCertificate` secret (and that its key is PKCS#8 PEM).
fn cert_of(s: &Secret) -> (String, String) {
    let Some(secret::Type::TlsCertificate(tls)) = &s.r#type else {
        panic!("{} is not a TLS certificate", s.name);
    };
    let chain =
        agentmesh_ca::pem_decode_all(&inline_text(&tls.certificate_chain), "CERTIFICATE").unwrap();
    assert_eq!(chain.len(), 2, "leaf and intermediate");
    let key = inline_text(&tls.private_key);
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8 PEM");
    (
        agentmesh_tls::cert_spiffe_id(&chain[0])
            .unwrap()
            .to_string(),
        agentmesh_tls::cert_serial_hex(&chain[0]).unwrap(),
    )
}

/// The trust domains of a validation-context secret, checking it names the SPIFFE validator.
fn trust_domains_of(s: &Secret) -> Vec<String> {
    let Some(secret::Type::ValidationContext(vc)) = &s.r#type else {
        panic!("{} is not a validation context", s.name);
    };
    let custom = vc.custom_validator_config.as_ref().unwrap();
    assert_eq!(custom.name, "envoy.tls.cert_validator.spiffe");
    let any = custom.typed_config.as_ref().unwrap();
    assert_eq!(
        any.type_url,
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig"
    );
    let config = SpiffeCertValidatorConfig::decode(any.value.as_slice()).unwrap();
    config
        .trust_domains
        .iter()
        .map(|td| {
            let roots = agentmesh_ca::pem_decode_all(&inline_text(&td.trust_bundle), "CERTIFICATE")
                .unwrap();
            assert!(!roots.is_empty(), "a bundle for {}", td.name);
            td.name.clone()
        })
        .collect()
}

/// Opens a stream, retrying while the node is not ready or the SVID not yet minted.
async fn first_response(
    client: &mut SecretDiscoveryServiceClient<Channel>,
    names: &[&str],
) -> (Stream, DiscoveryResponse) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let attempt = async {
            let mut s = Stream::open(client, request(names, "", "")).await?;
            let r = s.next().await?;
            Ok::<_, tonic::Status>((s, r))
        };
        match attempt.await {
            Ok(ok) => return ok,
            Err(e)
                if e.code() == tonic::Code::Unavailable
                    || e.code() == tonic::Code::PermissionDenied =>
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no SDS answer: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds_stream_follows_xds_versions_nonces_nacks_subscriptions_and_rotation() {
    let mut mesh = TestMesh::start().await.unwrap();
    // A 4 s TTL rotates about every 2 s.
    mesh.register_self("/web", 4).await.unwrap();
    let mut client = sds(&mesh).await;

    // Subscribe to `default`: the caller's own SVID, under the name it asked for.
    let (mut stream, r1) = first_response(&mut client, &["default"]).await;
    assert!(!r1.version_info.is_empty() && !r1.nonce.is_empty());
    let s1 = secrets(&r1);
    assert_eq!(s1.len(), 1);
    assert_eq!(s1[0].name, "default");
    let (id, _) = cert_of(&s1[0]);
    assert_eq!(id, "spiffe://example.org/web");

    // ACK, then change the subscription: answered at once with both resources and a new
    // version and nonce. (The ACK itself gets no answer: the next message is the new one.)
    stream
        .send(request(&["default"], &r1.version_info, &r1.nonce))
        .await;
    stream
        .send(request(&["default", "ROOTCA"], &r1.version_info, &r1.nonce))
        .await;
    let r2 = loop {
        // A rotation may land in between; what matters is that ROOTCA arrives.
        let r = stream.next().await.unwrap();
        assert_ne!(r.nonce, r1.nonce);
        if r.resources.len() == 2 {
            break r;
        }
        // A rotation of `default` alone, answered to the first subscription: ACK it.
        stream
            .send(request(&["default", "ROOTCA"], &r.version_info, &r.nonce))
            .await;
    };
    assert_ne!(r2.version_info, r1.version_info);
    let s2 = secrets(&r2);
    assert_eq!(s2[0].name, "default");
    assert_eq!(s2[1].name, "ROOTCA");
    assert_eq!(trust_domains_of(&s2[1]), ["example.org"]);
    let mut serial = cert_of(&s2[0]).1;

    // NACK r2 (keep r1's version, r2's nonce, an error): logged, and not sent again. The next
    // response is the rotation push, with a new serial, version and nonce.
    let mut nack = request(&["default", "ROOTCA"], &r1.version_info, &r2.nonce);
    nack.error_detail = Some(rpc::Status {
        code: 3,
        message: "test: refusing this version".into(),
        details: vec![],
    });
    stream.send(nack).await;
    let mut last = r2.clone();
    let mut rotations = 0;
    while rotations < 2 {
        let r = stream.next().await.unwrap();
        assert_ne!(r.nonce, last.nonce);
        assert_ne!(
            r.version_info, last.version_info,
            "an unchanged state was resent"
        );
        let s = secrets(&r);
        assert_eq!(s.len(), 2);
        let (id, new_serial) = cert_of(&s[0]);
        assert_eq!(id, "spiffe://example.org/web");
        assert_ne!(new_serial, serial, "the NACKed version was resent");
        serial = new_serial;
        rotations += 1;
        stream
            .send(request(&["default", "ROOTCA"], &r.version_info, &r.nonce))
            .await;
        last = r;
    }

    // FetchSecrets: the same resources, once, by SPIFFE ID and ALL.
    let fetched = client
        .fetch_secrets(request(&["spiffe://example.org/web", "ALL"], "", ""))
        .await
        .unwrap()
        .into_inner();
    let s = secrets(&fetched);
    assert_eq!(s[0].name, "spiffe://example.org/web");
    assert_eq!(cert_of(&s[0]).0, "spiffe://example.org/web");
    assert_eq!(s[1].name, "ALL");
    assert_eq!(trust_domains_of(&s[1]), ["example.org"]);

    drop(stream);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds_refuses_unregistered_callers_malformed_names_and_ids_not_entitled() {
    let mut mesh = TestMesh::start().await.unwrap();
    let mut client = sds(&mesh).await;

    // An entry for another uid only: PermissionDenied, explained by the closest entry.
    mesh.create_entry("/other", &["unix:uid:4242424".into()], 0)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let err = loop {
        let e = match Stream::open(&mut client, request(&["default"], "", "")).await {
            Ok(mut s) => s.next().await.unwrap_err(),
            Err(e) => e,
        };
        if e.message().contains("closest entry") {
            break e;
        }
        assert!(tokio::time::Instant::now() < deadline, "{e:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // The kind it lacks and a request id; never the entry's ID or selector values.
    assert!(
        err.message()
            .contains("no registration entry matches this process")
            && err
                .message()
                .contains("the closest entry needs a unix:uid selector")
            && err.message().contains("request id "),
        "{}",
        err.message()
    );
    assert!(
        !err.message().contains("4242424") && !err.message().contains("spiffe://"),
        "{}",
        err.message()
    );

    mesh.register_self("/web", 0).await.unwrap();
    let (_ok, _) = first_response(&mut client, &["default"]).await;

    // A SPIFFE ID this process is not entitled to.
    let err = client
        .fetch_secrets(request(&["spiffe://example.org/other"], "", ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message()
            .contains("is not entitled to spiffe://example.org/other"),
        "{}",
        err.message()
    );
    let mut s = Stream::open(
        &mut client,
        request(&["spiffe://example.org/other"], "", ""),
    )
    .await
    .unwrap();
    assert_eq!(
        s.next().await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );

    // Malformed names and a foreign type: InvalidArgument, naming the problem.
    for bad in ["rootca", "spiffe://example.org/a/../b", "web"] {
        let err = client
            .fetch_secrets(request(&[bad], "", ""))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}: {err:?}");
        assert!(
            err.message().contains("malformed SDS resource name"),
            "{}",
            err.message()
        );
        let mut s = Stream::open(&mut client, request(&["default", bad], "", ""))
            .await
            .unwrap();
        assert_eq!(
            s.next().await.unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
    let mut wrong_type = request(&["default"], "", "");
    wrong_type.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
    let err = client.fetch_secrets(wrong_type).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    // Incremental SDS is not served.
    let (tx, rx) = mpsc::channel(1);
    tx.send(DeltaDiscoveryRequest::default()).await.unwrap();
    let err = client
        .delta_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");

    mesh.shutdown().await;
}

/// Federation on the node: a foreign bundle set on the server reaches the node; SDS `ALL`
/// carries it and `ROOTCA` does not; `FetchX509Bundles` and `FetchJWTBundles` carry every trust
/// domain; an `FetchX509SVID` message carries it only once an entry of the caller federates
/// with that domain, pushed on the open stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_bundles_reach_sds_all_the_bundle_rpcs_and_federating_entries_only() {
    use agentmesh_proto::v1;
    use agentmesh_proto::workload::{JwtBundlesRequest, X509BundlesRequest, X509svidRequest};

    let mut mesh = TestMesh::start().await.unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other = agentmesh_server::TestServer::start_with(
        agentmesh_server::ServerConfig {
            trust_domain: "other.test".parse().unwrap(),
            ..agentmesh_server::ServerConfig::for_test(other_dir.path())
        },
        other_dir.path(),
    )
    .await
    .unwrap();
    let mut other_admin = other.admin.clone();
    let theirs = other_admin
        .get_bundle(v1::GetBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let doc = agentmesh_ca::SpiffeBundle {
        x509_authorities: theirs.x509_authorities.clone(),
        jwt_keys: agentmesh_ca::Jwks::from_json(&theirs.jwks).unwrap(),
        sequence: Some(theirs.sequence),
        refresh_hint: None,
    }
    .to_json()
    .unwrap();
    mesh.server
        .admin
        .set_federated_bundle(v1::SetFederatedBundleRequest {
            trust_domain: "spiffe://other.test".into(),
            data: doc.into_bytes(),
            format: "spiffe".into(),
        })
        .await
        .unwrap();
    mesh.register_self("/plain", 0).await.unwrap();

    // SDS: ALL has both trust domains, ROOTCA only ours (once the node has synced the bundle).
    let mut client = sds(&mesh).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (_stream, resp) = first_response(&mut client, &["ROOTCA", "ALL"]).await;
        let s = secrets(&resp);
        let all = trust_domains_of(&s[1]);
        if all.len() == 2 {
            assert_eq!(trust_domains_of(&s[0]), ["example.org"]);
            assert_eq!(all, ["example.org", "other.test"]);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "ALL is {all:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut wl = mesh.workload_client().await.unwrap();
    let x509 = wl
        .fetch_x509_bundles(agentmesh_node::with_header(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let mut tds: Vec<_> = x509.bundles.keys().cloned().collect();
    tds.sort();
    assert_eq!(tds, ["spiffe://example.org", "spiffe://other.test"]);
    assert_eq!(
        x509.bundles["spiffe://other.test"],
        theirs.x509_authorities.concat()
    );
    let jwt = wl
        .fetch_jwt_bundles(agentmesh_node::with_header(JwtBundlesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let their_jwks = agentmesh_ca::Jwks::from_json(
        std::str::from_utf8(&jwt.bundles["spiffe://other.test"]).unwrap(),
    )
    .unwrap();
    assert_eq!(
        their_jwks.keys,
        agentmesh_ca::Jwks::from_json(&theirs.jwks).unwrap().keys
    );

    // FetchX509SVID: nothing federated until an entry of ours federates with other.test.
    let mut stream = wl
        .fetch_x509svid(agentmesh_node::with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(
        first.federated_bundles.is_empty(),
        "{:?}",
        first.federated_bundles.keys()
    );
    let uid = agentmesh_node::my_uid();
    mesh.server
        .admin
        .create_entry(v1::CreateEntryRequest {
            entry: Some(v1::Entry {
                spiffe_id: "spiffe://example.org/fed".into(),
                selectors: vec![format!("unix:uid:{uid}")],
                federates_with: vec!["spiffe://other.test".into()],
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let msg = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("a message")
            .unwrap()
            .unwrap();
        if msg.federated_bundles.contains_key("spiffe://other.test") {
            assert_eq!(msg.federated_bundles.len(), 1);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
    }
    other.shutdown().await;
    mesh.shutdown().await;
}
