//! Real TLS handshakes over in-memory pipes, proving what the mesh configs accept and refuse.

use std::sync::Arc;

use agentmesh_spiffe::SpiffeId;
use agentmesh_tls::{
    ClientAuth, Federation, RotatingCert, SvidCredentials, TlsError, any_id, client_config,
    client_config_rotating, exact, member_of, peer_identity, server_config,
    server_config_federated, server_config_rotating,
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ProtocolVersion, ServerConfig, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const SERVER_ID: &str = "spiffe://agentmesh.test/agentmesh/server";
const CLIENT_ID: &str = "spiffe://agentmesh.test/ns/default/sa/planner";

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("test root {name}"));
        params.distinguished_name = dn;
        let der = params.self_signed(&key).unwrap().der().clone();
        Self {
            issuer: Issuer::new(params, key),
            der,
        }
    }

    fn roots(&self) -> Vec<CertificateDer<'static>> {
        vec![self.der.clone()]
    }

    fn leaf_with(
        &self,
        uris: &[&str],
        serial: u64,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> SvidCredentials {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(SerialNumber::from(serial));
        params.use_authority_key_identifier_extension = true;
        edit(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        SvidCredentials::from_der(&[cert.der().to_vec()], &key.serialize_der()).unwrap()
    }

    fn leaf(&self, id: &str, serial: u64) -> SvidCredentials {
        self.leaf_with(&[id], serial, |_| {})
    }
}

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

fn serial_of(der: &[u8]) -> u64 {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    // DER may prefix a zero byte to keep the integer positive.
    cert.raw_serial()
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// What each side saw: on success the peer's ID, the leaf it presented, and the version.
#[derive(Debug)]
struct Seen {
    peer: Option<SpiffeId>,
    peer_leaf: Option<Vec<u8>>,
    version: Option<ProtocolVersion>,
    alpn: Option<Vec<u8>>,
}

fn seen(conn: &rustls::CommonState) -> Seen {
    Seen {
        peer: peer_identity(conn),
        peer_leaf: conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec()),
        version: conn.protocol_version(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
    }
}

struct Outcome {
    server: std::io::Result<Seen>,
    client: std::io::Result<Seen>,
}

impl Outcome {
    fn ok(self) -> (Seen, Seen) {
        let server = self.server.expect("server side failed");
        let client = self.client.expect("client side failed");
        (server, client)
    }

    /// Both sides must fail: the refusing side with its verifier error, the other from the alert.
    fn refused(self) -> (String, String) {
        let server = self.server.expect_err("server side unexpectedly succeeded");
        let client = self.client.expect_err("client side unexpectedly succeeded");
        (server.to_string(), client.to_string())
    }
}

/// One handshake plus one application byte each way, so a refusal by the server
/// after the client's TLS 1.3 Finished still shows up as a client failure.
async fn connect(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Outcome {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(server);
    let connector = TlsConnector::from(client);

    let server_side = async move {
        let mut tls = acceptor.accept(server_io).await?;
        let mut buf = [0u8; 1];
        tls.read_exact(&mut buf).await?;
        tls.write_all(b"s").await?;
        tls.flush().await?;
        Ok(seen(tls.get_ref().1))
    };
    let client_side = async move {
        // Deliberately unrelated to any SAN: the verifier must ignore it.
        let name = ServerName::try_from("not-the-server.invalid").unwrap();
        let mut tls = connector.connect(name, client_io).await?;
        tls.write_all(b"c").await?;
        tls.flush().await?;
        let mut buf = [0u8; 1];
        tls.read_exact(&mut buf).await?;
        Ok(seen(tls.get_ref().1))
    };
    let (server, client) = tokio::join!(server_side, client_side);
    Outcome { server, client }
}

struct Mesh {
    ca: Ca,
    server_creds: SvidCredentials,
    client_creds: SvidCredentials,
}

impl Mesh {
    fn new() -> Self {
        let ca = Ca::new("mesh");
        let server_creds = ca.leaf(SERVER_ID, 1);
        let client_creds = ca.leaf(CLIENT_ID, 2);
        Self {
            ca,
            server_creds,
            client_creds,
        }
    }

    fn server(&self, auth: ClientAuth) -> Arc<ServerConfig> {
        server_config(&self.server_creds, &self.ca.roots(), auth, &[b"h2"]).unwrap()
    }

    fn client(&self, creds: Option<&SvidCredentials>) -> Arc<ClientConfig> {
        client_config(creds, &self.ca.roots(), exact([id(SERVER_ID)]), &[b"h2"]).unwrap()
    }
}

#[tokio::test]
async fn mutual_tls_both_sides_see_peer_id() {
    let mesh = Mesh::new();
    let (server, client) = connect(
        mesh.server(ClientAuth::Required(exact([id(CLIENT_ID)]))),
        mesh.client(Some(&mesh.client_creds)),
    )
    .await
    .ok();
    assert_eq!(server.peer, Some(id(CLIENT_ID)));
    assert_eq!(client.peer, Some(id(SERVER_ID)));
    assert_eq!(server.version, Some(ProtocolVersion::TLSv1_3));
    assert_eq!(client.version, Some(ProtocolVersion::TLSv1_3));
    assert_eq!(client.alpn.as_deref(), Some(&b"h2"[..]));
}

#[tokio::test]
async fn server_authorizer_refuses_client() {
    let mesh = Mesh::new();
    let other = id("spiffe://agentmesh.test/ns/default/sa/other");
    let (server_err, _) = connect(
        mesh.server(ClientAuth::Required(exact([other]))),
        mesh.client(Some(&mesh.client_creds)),
    )
    .await
    .refused();
    assert!(server_err.contains("not authorized"), "{server_err}");
    assert!(server_err.contains(CLIENT_ID), "{server_err}");
    assert!(server_err.contains("sa/other"), "{server_err}");
}

#[tokio::test]
async fn client_authorizer_refuses_server() {
    let mesh = Mesh::new();
    let client = client_config(
        Some(&mesh.client_creds),
        &mesh.ca.roots(),
        member_of("elsewhere.test".parse().unwrap()),
        &[],
    )
    .unwrap();
    let (_, client_err) = connect(mesh.server(ClientAuth::Required(any_id())), client)
        .await
        .refused();
    assert!(client_err.contains("not authorized"), "{client_err}");
    assert!(client_err.contains(SERVER_ID), "{client_err}");
    assert!(client_err.contains("elsewhere.test"), "{client_err}");
}

#[tokio::test]
async fn client_cert_from_foreign_root_is_refused() {
    let mesh = Mesh::new();
    let foreign = Ca::new("foreign").leaf(CLIENT_ID, 2);
    let (server_err, _) = connect(
        mesh.server(ClientAuth::Required(any_id())),
        mesh.client(Some(&foreign)),
    )
    .await
    .refused();
    assert!(server_err.contains("UnknownIssuer"), "{server_err}");
}

#[tokio::test]
async fn server_cert_from_foreign_root_is_refused() {
    let mesh = Mesh::new();
    let foreign = Ca::new("foreign").leaf(SERVER_ID, 1);
    let server = server_config(&foreign, &mesh.ca.roots(), ClientAuth::None, &[]).unwrap();
    let (_, client_err) = connect(server, mesh.client(None)).await.refused();
    assert!(client_err.contains("UnknownIssuer"), "{client_err}");
}

#[tokio::test]
async fn expired_client_cert_is_refused() {
    let mesh = Mesh::new();
    let expired = mesh.ca.leaf_with(&[CLIENT_ID], 3, |p| {
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    });
    let (server_err, _) = connect(
        mesh.server(ClientAuth::Required(any_id())),
        mesh.client(Some(&expired)),
    )
    .await
    .refused();
    assert!(server_err.contains("expired"), "{server_err}");
}

#[tokio::test]
async fn required_mode_refuses_client_without_cert() {
    let mesh = Mesh::new();
    let (server_err, _) = connect(
        mesh.server(ClientAuth::Required(any_id())),
        mesh.client(None),
    )
    .await
    .refused();
    assert!(server_err.contains("no certificates"), "{server_err}");
}

#[tokio::test]
async fn optional_mode_accepts_client_without_cert() {
    let mesh = Mesh::new();
    let (server, client) = connect(
        mesh.server(ClientAuth::Optional(any_id())),
        mesh.client(None),
    )
    .await
    .ok();
    assert_eq!(server.peer, None);
    assert_eq!(server.peer_leaf, None);
    assert_eq!(client.peer, Some(id(SERVER_ID)));
}

#[tokio::test]
async fn optional_mode_still_verifies_presented_cert() {
    let mesh = Mesh::new();
    // A valid client that the optional authorizer admits is identified...
    let (server, _) = connect(
        mesh.server(ClientAuth::Optional(exact([id(CLIENT_ID)]))),
        mesh.client(Some(&mesh.client_creds)),
    )
    .await
    .ok();
    assert_eq!(server.peer, Some(id(CLIENT_ID)));

    // ...but a presented cert from another root is refused, not downgraded to anonymous.
    let foreign = Ca::new("foreign").leaf(CLIENT_ID, 2);
    let (server_err, _) = connect(
        mesh.server(ClientAuth::Optional(any_id())),
        mesh.client(Some(&foreign)),
    )
    .await
    .refused();
    assert!(server_err.contains("UnknownIssuer"), "{server_err}");

    // ...and so is a valid cert the authorizer refuses.
    let (server_err, _) = connect(
        mesh.server(ClientAuth::Optional(exact([id(SERVER_ID)]))),
        mesh.client(Some(&mesh.client_creds)),
    )
    .await
    .refused();
    assert!(server_err.contains("not authorized"), "{server_err}");
}

#[tokio::test]
async fn no_client_auth_mode_ignores_client_cert() {
    let mesh = Mesh::new();
    let (server, _) = connect(
        mesh.server(ClientAuth::None),
        mesh.client(Some(&mesh.client_creds)),
    )
    .await
    .ok();
    assert_eq!(server.peer, None);
}

#[derive(Debug)]
struct TrustEverything;

impl ServerCertVerifier for TrustEverything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test]
async fn tls12_only_client_is_refused() {
    let mesh = Mesh::new();
    let tls12 =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(TrustEverything))
            .with_no_client_auth();
    let (server_err, client_err) = connect(mesh.server(ClientAuth::None), Arc::new(tls12))
        .await
        .refused();
    assert!(server_err.contains("incompatible"), "{server_err}");
    assert!(client_err.contains("ProtocolVersion"), "{client_err}");
}

#[tokio::test]
async fn client_leaf_with_two_uri_sans_is_refused() {
    let mesh = Mesh::new();
    let two = mesh
        .ca
        .leaf_with(&[CLIENT_ID, "spiffe://agentmesh.test/second"], 4, |_| {});
    let (server_err, _) = connect(
        mesh.server(ClientAuth::Required(any_id())),
        mesh.client(Some(&two)),
    )
    .await
    .refused();
    assert!(server_err.contains("2 uri sans"), "{server_err}");
}

#[tokio::test]
async fn client_leaf_without_uri_san_is_refused() {
    let mesh = Mesh::new();
    let none = mesh.ca.leaf_with(&[], 5, |_| {});
    let (server_err, _) = connect(
        mesh.server(ClientAuth::Required(any_id())),
        mesh.client(Some(&none)),
    )
    .await
    .refused();
    assert!(server_err.contains("no uri san"), "{server_err}");
}

#[tokio::test]
async fn server_leaf_without_or_with_two_uri_sans_is_refused() {
    let mesh = Mesh::new();
    for (uris, expect) in [
        (&[][..], "no uri san"),
        (&[SERVER_ID, "spiffe://agentmesh.test/x"][..], "2 uri sans"),
    ] {
        let bad = mesh.ca.leaf_with(uris, 6, |_| {});
        let server = server_config(&bad, &mesh.ca.roots(), ClientAuth::None, &[]).unwrap();
        let client = client_config(None, &mesh.ca.roots(), any_id(), &[]).unwrap();
        let (_, client_err) = connect(server, client).await.refused();
        assert!(client_err.contains(expect), "{client_err}");
    }
}

#[tokio::test]
async fn ca_leaf_is_refused() {
    let mesh = Mesh::new();
    let ca_leaf = mesh.ca.leaf_with(&[CLIENT_ID], 7, |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages.push(KeyUsagePurpose::KeyCertSign);
    });
    let (server_err, _) = connect(
        mesh.server(ClientAuth::Required(any_id())),
        mesh.client(Some(&ca_leaf)),
    )
    .await
    .refused();
    assert!(server_err.contains("CaUsedAsEndEntity"), "{server_err}");
}

#[tokio::test]
async fn rotating_server_cert_presents_new_serial_after_update() {
    let mesh = Mesh::new();
    let rotating = Arc::new(RotatingCert::new(&mesh.ca.leaf(SERVER_ID, 100)).unwrap());
    let server = server_config_rotating(
        Arc::clone(&rotating),
        &mesh.ca.roots(),
        ClientAuth::Required(any_id()),
        &[],
    )
    .unwrap();
    // The same client config is reused so a resumed session could not hide the change.
    let client = mesh.client(Some(&mesh.client_creds));

    let (_, before) = connect(Arc::clone(&server), Arc::clone(&client)).await.ok();
    assert_eq!(serial_of(&before.peer_leaf.unwrap()), 100);

    let rotated = mesh.ca.leaf(SERVER_ID, 101);
    rotating.update(&rotated).unwrap();
    let (_, after) = connect(server, client).await.ok();
    let leaf = after.peer_leaf.unwrap();
    assert_eq!(serial_of(&leaf), 101);
    assert_eq!(leaf, rotated.chain[0].to_vec());
    assert_eq!(after.peer, Some(id(SERVER_ID)));
}

#[tokio::test]
async fn rotating_client_cert_presents_new_serial_after_update() {
    let mesh = Mesh::new();
    let rotating = Arc::new(RotatingCert::new(&mesh.ca.leaf(CLIENT_ID, 200)).unwrap());
    let client = client_config_rotating(
        Arc::clone(&rotating),
        &mesh.ca.roots(),
        exact([id(SERVER_ID)]),
        &[],
    )
    .unwrap();
    let server = mesh.server(ClientAuth::Required(exact([id(CLIENT_ID)])));

    let (before, _) = connect(Arc::clone(&server), Arc::clone(&client)).await.ok();
    assert_eq!(serial_of(&before.peer_leaf.unwrap()), 200);

    rotating.update(&mesh.ca.leaf(CLIENT_ID, 201)).unwrap();
    let (after, _) = connect(server, client).await.ok();
    assert_eq!(serial_of(&after.peer_leaf.unwrap()), 201);
}

#[test]
fn rotating_update_rejects_bad_creds_and_keeps_old() {
    let mesh = Mesh::new();
    let rotating = RotatingCert::new(&mesh.server_creds).unwrap();
    let mismatched = SvidCredentials {
        chain: mesh.server_creds.chain.clone(),
        key: mesh.client_creds.key.clone_key(),
    };
    assert!(matches!(
        rotating.update(&mismatched),
        Err(TlsError::KeyMismatch)
    ));
    assert_eq!(rotating.current().cert, mesh.server_creds.chain);
    assert!(!format!("{rotating:?}").contains("key:"));
}

#[test]
fn configs_fail_closed() {
    let mesh = Mesh::new();
    assert!(matches!(
        server_config(&mesh.server_creds, &[], ClientAuth::Required(any_id()), &[]),
        Err(TlsError::NoRoots)
    ));
    assert!(matches!(
        server_config(&mesh.server_creds, &[], ClientAuth::None, &[]),
        Err(TlsError::NoRoots)
    ));
    assert!(matches!(
        client_config(None, &[], any_id(), &[]),
        Err(TlsError::NoRoots)
    ));
    let mismatched = SvidCredentials {
        chain: mesh.server_creds.chain.clone(),
        key: mesh.client_creds.key.clone_key(),
    };
    let err = server_config(&mismatched, &mesh.ca.roots(), ClientAuth::None, &[]).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch), "{err}");
    let err = client_config(Some(&mismatched), &mesh.ca.roots(), any_id(), &[]).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch), "{err}");
    let garbage_root = vec![CertificateDer::from(vec![0x30, 0x00])];
    assert!(matches!(
        client_config(None, &garbage_root, any_id(), &[]),
        Err(TlsError::Verifier(_))
    ));
}

#[test]
fn spiffe_id_from_cert_rules() {
    let ca = Ca::new("unit");
    let good = ca.leaf(CLIENT_ID, 1);
    assert_eq!(
        agentmesh_tls::spiffe_id_from_cert(&good.chain[0]).unwrap(),
        id(CLIENT_ID)
    );
    assert_eq!(
        agentmesh_tls::peer_spiffe_id(&good.chain).unwrap(),
        id(CLIENT_ID)
    );
    assert!(agentmesh_tls::peer_spiffe_id(&[]).is_err());
    let not_spiffe = ca.leaf_with(&["https://example.com/x"], 2, |_| {});
    let err = agentmesh_tls::spiffe_id_from_cert(&not_spiffe.chain[0]).unwrap_err();
    assert!(err.to_string().contains("not a valid spiffe id"), "{err}");
    // The root itself is a CA and must never pass as a leaf.
    let err = agentmesh_tls::spiffe_id_from_cert(&ca.der).unwrap_err();
    assert!(matches!(err, agentmesh_tls::PeerError::LeafIsCa), "{err}");
    assert!(agentmesh_tls::spiffe_id_from_cert(b"junk").is_err());
    // Not a CA, but allowed to sign certificates: the X509-SVID spec forbids that too.
    let signer = ca.leaf_with(&[CLIENT_ID], 3, |p| {
        p.key_usages.push(KeyUsagePurpose::KeyCertSign);
    });
    let err = agentmesh_tls::spiffe_id_from_cert(&signer.chain[0]).unwrap_err();
    assert!(
        matches!(err, agentmesh_tls::PeerError::LeafCanSign),
        "{err}"
    );
}

/// A verifier remembers chains that verified, so a peer's SVID is not re-verified on every
/// connection. The cache must never outlive a certificate, skip the authorizer, or admit
/// other bytes with the same ID.
#[test]
fn verified_chain_cache_still_expires_and_still_asks_the_authorizer() {
    use rustls::server::danger::ClientCertVerifier;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    let ca = Ca::new("cache");
    let creds = ca.leaf_with(&[CLIENT_ID], 41, |p| {
        p.not_before = rcgen::date_time_ymd(2030, 1, 1);
        p.not_after = rcgen::date_time_ymd(2030, 1, 3);
    });
    let leaf = &creds.chain[0];
    let allow = Arc::new(AtomicBool::new(true));
    let switch = allow.clone();
    let verifier = agentmesh_tls::SpiffeClientVerifier::new(
        &ca.roots(),
        agentmesh_tls::from_fn(move |peer| {
            if switch.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(agentmesh_tls::AuthorizeError::denied(peer, "switched off"))
            }
        }),
        true,
    )
    .unwrap();
    // 2030-01-02T00:00:00Z, inside the window; the day after it ends; the day before it starts.
    let at = |secs: u64| UnixTime::since_unix_epoch(Duration::from_secs(secs));
    let (inside, after, before) = (at(1_893_542_400), at(1_893_715_200), at(1_893_369_600));

    for round in 0..2 {
        assert!(
            verifier.verify_client_cert(leaf, &[], inside).is_ok(),
            "round {round}"
        );
    }
    allow.store(false, Ordering::SeqCst);
    let refused = verifier
        .verify_client_cert(leaf, &[], inside)
        .unwrap_err()
        .to_string();
    assert!(refused.contains("switched off"), "{refused}");
    allow.store(true, Ordering::SeqCst);

    let expired = verifier.verify_client_cert(leaf, &[], after).unwrap_err();
    assert!(
        matches!(
            expired,
            rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext { .. })
        ),
        "{expired:?}"
    );
    let early = verifier.verify_client_cert(leaf, &[], before).unwrap_err();
    assert!(
        matches!(
            early,
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYetContext { .. })
        ),
        "{early:?}"
    );

    // Same SPIFFE ID and serial from a foreign root: different bytes, verified in full.
    let foreign = Ca::new("other").leaf_with(&[CLIENT_ID], 41, |p| {
        p.not_before = rcgen::date_time_ymd(2030, 1, 1);
        p.not_after = rcgen::date_time_ymd(2030, 1, 3);
    });
    assert!(
        verifier
            .verify_client_cert(&foreign.chain[0], &[], inside)
            .is_err()
    );
    // And the cached one is still fine afterwards.
    assert!(verifier.verify_client_cert(leaf, &[], inside).is_ok());
}

/// Federation: each trust domain's roots vouch for its own IDs only. A federated client is
/// admitted against its own domain's bundle; the federated CA signing one of *our* IDs is
/// refused (the chain must end at our roots); a domain with no bundle is refused by name.
#[tokio::test]
async fn federated_roots_vouch_only_for_their_own_trust_domain() {
    let mesh = Mesh::new();
    let other = Ca::new("other.test");
    let federation = Federation {
        trust_domain: Some("agentmesh.test".parse().unwrap()),
        bundles: [("other.test".parse().unwrap(), other.roots())].into(),
    };
    let server = |auth| {
        let cert = Arc::new(RotatingCert::new(&mesh.server_creds).unwrap());
        server_config_federated(cert, &mesh.ca.roots(), &federation, auth, &[]).unwrap()
    };
    let client_with = |creds: &SvidCredentials| {
        client_config(Some(creds), &mesh.ca.roots(), any_id(), &[]).unwrap()
    };

    let foreign = other.leaf("spiffe://other.test/ns/default/sa/planner", 7);
    let (server_seen, _) = connect(
        server(ClientAuth::Required(any_id())),
        client_with(&foreign),
    )
    .await
    .ok();
    assert_eq!(
        server_seen.peer,
        Some(id("spiffe://other.test/ns/default/sa/planner"))
    );

    let impostor = other.leaf(CLIENT_ID, 8);
    let (server_err, _) = connect(
        server(ClientAuth::Required(any_id())),
        client_with(&impostor),
    )
    .await
    .refused();
    assert!(server_err.contains("UnknownIssuer"), "{server_err}");

    let third = Ca::new("third.test").leaf("spiffe://third.test/x", 9);
    let (server_err, _) = connect(server(ClientAuth::Required(any_id())), client_with(&third))
        .await
        .refused();
    assert!(
        server_err.contains("third.test, which is not federated with agentmesh.test"),
        "{server_err}"
    );
}
