use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use agentmesh_spiffe::{SpiffeId, TrustDomain};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::*;
use crate::csr::CsrPublicKey;
use crate::keys::PrivateKey;
use crate::pem_encode;
use agentmesh_tls::x509::{cert_serial_hex, cert_spiffe_id, cert_validity, verify_chain};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

struct Ca {
    td: TrustDomain,
    root_der: Vec<u8>,
    root_key: PrivateKey,
    inter_der: Vec<u8>,
    authority: Authority,
}

fn td() -> TrustDomain {
    TrustDomain::new("agentmesh.test").unwrap()
}

/// A whole-second instant, so certificate times compare exactly.
fn now() -> SystemTime {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn ca_with(inter_ttl: Duration, now: SystemTime) -> Ca {
    let td = td();
    let root_key = PrivateKey::generate().unwrap();
    let root_der = new_root(&td, &root_key, 365 * DAY, now).unwrap();
    let inter_key = PrivateKey::generate().unwrap();
    let inter_der =
        new_intermediate(&td, &inter_key, inter_ttl, now, &root_der, &root_key).unwrap();
    let authority = Authority::new(&td, inter_der.clone(), inter_key).unwrap();
    Ca {
        td,
        root_der,
        root_key,
        inter_der,
        authority,
    }
}

fn ca(now: SystemTime) -> Ca {
    ca_with(30 * DAY, now)
}

fn workload_key() -> CsrPublicKey {
    let key = PrivateKey::generate().unwrap();
    CsrPublicKey::from_spki_der(&key.public_key_der()).unwrap()
}

fn id(path: &str) -> SpiffeId {
    format!("spiffe://agentmesh.test{path}").parse().unwrap()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    cert
}

fn ski(cert: &X509Certificate<'_>) -> Vec<u8> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .expect("subjectKeyIdentifier present")
}

fn aki(cert: &X509Certificate<'_>) -> Vec<u8> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .expect("authorityKeyIdentifier present")
}

fn uris<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    cert.subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn assert_positive_128_bit_serial(cert: &X509Certificate<'_>) {
    let raw = cert.raw_serial();
    assert_eq!(raw.len(), 16, "serial {raw:02x?}");
    assert!(raw[0] & 0x80 == 0, "serial must be positive");
}

#[test]
fn minted_svid_follows_the_spiffe_profile() {
    let now = now();
    let ca = ca(now);
    let wid = id("/ns/default/sa/planner");
    let dns = vec!["planner.default.svc".to_owned()];
    let svid = ca
        .authority
        .mint_x509_svid(&wid, &workload_key(), HOUR, &dns, now)
        .unwrap();

    assert_eq!(svid.spiffe_id, wid);
    assert_eq!(svid.chain.len(), 2);
    assert_eq!(
        svid.chain[1], ca.inter_der,
        "chain is leaf first, then intermediate"
    );
    let leaf = parse(&svid.chain[0]);

    // Exactly one URI SAN, the ID, plus the DNS SAN.
    assert_eq!(uris(&leaf), vec![wid.to_string().as_str()]);
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(
        san.value
            .general_names
            .contains(&GeneralName::DNSName("planner.default.svc"))
    );
    assert_eq!(cert_spiffe_id(&svid.chain[0]).unwrap(), wid);

    let bc = leaf.basic_constraints().unwrap().expect("basicConstraints");
    assert!(bc.critical);
    assert!(!bc.value.ca);
    assert!(!leaf.is_ca());

    let ku = leaf.key_usage().unwrap().expect("keyUsage");
    assert!(ku.critical);
    assert!(ku.value.digital_signature());
    assert!(ku.value.key_encipherment());
    assert!(ku.value.key_agreement());
    assert!(!ku.value.key_cert_sign());
    assert!(!ku.value.crl_sign());

    let eku = leaf
        .extended_key_usage()
        .unwrap()
        .expect("extendedKeyUsage");
    assert!(eku.value.server_auth && eku.value.client_auth);

    let v = leaf.validity();
    assert_eq!(v.not_after.timestamp() - v.not_before.timestamp(), 3600);
    assert_eq!(svid.not_before, now, "no backdating");
    assert_eq!(svid.not_after, now + HOUR);
    assert_eq!(cert_validity(&svid.chain[0]).unwrap(), (now, now + HOUR));

    assert_positive_128_bit_serial(&leaf);
    assert_eq!(svid.serial, cert_serial_hex(&svid.chain[0]).unwrap());
    assert_eq!(svid.serial.len(), 32);
    assert!(
        svid.serial
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    );

    assert_eq!(aki(&leaf), ski(&parse(&ca.inter_der)));
    let org: Vec<_> = leaf
        .subject()
        .iter_organization()
        .map(|o| o.as_str().unwrap())
        .collect();
    assert_eq!(org, vec!["agentmesh"]);

    assert_eq!(
        verify_chain(&svid.chain, std::slice::from_ref(&ca.root_der), now).unwrap(),
        wid
    );
}

#[test]
fn hundred_serials_are_unique() {
    let now = now();
    let ca = ca(now);
    let key = workload_key();
    let serials: HashSet<String> = (0..100)
        .map(|i| {
            ca.authority
                .mint_x509_svid(&id(&format!("/w/{i}")), &key, HOUR, &[], now)
                .unwrap()
                .serial
        })
        .collect();
    assert_eq!(serials.len(), 100);
}

#[test]
fn ttl_is_capped_at_the_intermediate_expiry() {
    let now = now();
    let ca = ca_with(HOUR, now);
    assert_eq!(ca.authority.not_after(), now + HOUR);
    let svid = ca
        .authority
        .mint_x509_svid(&id("/long"), &workload_key(), 10 * HOUR, &[], now)
        .unwrap();
    assert_eq!(svid.not_after, now + HOUR);
    assert_eq!(cert_validity(&svid.chain[0]).unwrap().1, now + HOUR);
}

#[test]
fn refuses_ids_outside_the_trust_domain_and_bad_input() {
    let now = now();
    let ca = ca(now);
    let other: SpiffeId = "spiffe://other.test/w".parse().unwrap();
    let key = workload_key();
    assert!(matches!(
        ca.authority.mint_x509_svid(&other, &key, HOUR, &[], now),
        Err(CaError::TrustDomainMismatch { .. })
    ));
    assert!(matches!(
        ca.authority
            .mint_x509_svid(&id("/w"), &key, Duration::ZERO, &[], now),
        Err(CaError::ZeroTtl { .. })
    ));
    assert!(matches!(
        ca.authority
            .mint_x509_svid(&id("/w"), &key, HOUR, &["bad name".to_owned()], now),
        Err(CaError::BadDnsName(_))
    ));
    assert!(matches!(
        ca.authority
            .mint_x509_svid(&id("/w"), &key, HOUR, &[], now + 31 * DAY),
        Err(CaError::IssuerExpired { .. })
    ));
}

#[test]
fn root_certificate_profile() {
    let now = now();
    let ca = ca(now);
    let root = parse(&ca.root_der);
    let bc = root.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca);
    let ku = root.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(!ku.value.digital_signature());
    assert_eq!(uris(&root), vec!["spiffe://agentmesh.test"]);
    let cn: Vec<_> = root
        .subject()
        .iter_common_name()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(cn, vec!["agentmesh root agentmesh.test"]);
    assert_eq!(ski(&root).len(), 20);
    assert_positive_128_bit_serial(&root);
    root.verify_signature(None).unwrap();
    assert_eq!(cert_validity(&ca.root_der).unwrap(), (now, now + 365 * DAY));
}

#[test]
fn intermediate_certificate_profile_and_cap() {
    let now = now();
    // Asking for more than the root's lifetime gets the root's expiry.
    let ca = ca_with(1000 * DAY, now);
    let inter = parse(&ca.inter_der);
    let root = parse(&ca.root_der);
    let bc = inter.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = inter.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.key_cert_sign() && ku.value.crl_sign() && ku.value.digital_signature());
    assert_eq!(uris(&inter), vec!["spiffe://agentmesh.test"]);
    assert_eq!(aki(&inter), ski(&root));
    assert_eq!(inter.issuer(), root.subject());
    inter.verify_signature(Some(root.public_key())).unwrap();
    assert_eq!(
        inter.validity().not_after.timestamp(),
        root.validity().not_after.timestamp()
    );
    assert_eq!(ca.authority.not_after(), now + 365 * DAY);
}

#[test]
fn mismatched_keys_are_refused() {
    let now = now();
    let ca = ca(now);
    let stranger = PrivateKey::generate().unwrap();
    let key = PrivateKey::generate().unwrap();
    assert!(matches!(
        new_intermediate(&ca.td, &key, DAY, now, &ca.root_der, &stranger),
        Err(CaError::KeyMismatch { .. })
    ));
    assert!(matches!(
        Authority::new(&ca.td, ca.inter_der.clone(), stranger),
        Err(CaError::KeyMismatch { .. })
    ));
    let other_td = TrustDomain::new("other.test").unwrap();
    let inter_key = PrivateKey::generate().unwrap();
    let inter = new_intermediate(&ca.td, &inter_key, DAY, now, &ca.root_der, &ca.root_key).unwrap();
    assert!(matches!(
        Authority::new(&other_td, inter, inter_key),
        Err(CaError::TrustDomainMismatch { .. })
    ));
}

#[test]
fn verify_chain_refuses_bad_chains() {
    let now = now();
    let ca = ca(now);
    let roots = std::slice::from_ref(&ca.root_der);
    let svid = ca
        .authority
        .mint_x509_svid(&id("/w"), &workload_key(), HOUR, &[], now)
        .unwrap();

    // Tolerates the root appended to the chain.
    let mut with_root = svid.chain.clone();
    with_root.push(ca.root_der.clone());
    assert_eq!(verify_chain(&with_root, roots, now).unwrap(), id("/w"));

    // A chain from another root.
    let other = ca_with(30 * DAY, now);
    let err = verify_chain(&svid.chain, std::slice::from_ref(&other.root_der), now).unwrap_err();
    assert!(matches!(err, CertError::UntrustedRoot(..)), "{err}");

    // Expired leaf.
    let err = verify_chain(&svid.chain, roots, now + 2 * HOUR).unwrap_err();
    assert!(
        matches!(&err, CertError::NotValidNow { what, .. } if what == "chain[0]"),
        "{err}"
    );
    // Not yet valid.
    let err = verify_chain(&svid.chain, roots, now - HOUR).unwrap_err();
    assert!(matches!(err, CertError::NotValidNow { .. }), "{err}");

    // A leaf signed by a different intermediate of the same root.
    let key_b = PrivateKey::generate().unwrap();
    let inter_b = new_intermediate(&ca.td, &key_b, DAY, now, &ca.root_der, &ca.root_key).unwrap();
    let auth_b = Authority::new(&ca.td, inter_b, key_b).unwrap();
    let svid_b = auth_b
        .mint_x509_svid(&id("/w"), &workload_key(), HOUR, &[], now)
        .unwrap();
    verify_chain(&svid_b.chain, roots, now).unwrap();
    let spliced = vec![svid_b.chain[0].clone(), svid.chain[1].clone()];
    let err = verify_chain(&spliced, roots, now).unwrap_err();
    assert!(matches!(err, CertError::BadChainSignature { .. }), "{err}");

    // A CA certificate presented as the leaf.
    let err = verify_chain(std::slice::from_ref(&ca.inter_der), roots, now).unwrap_err();
    assert!(matches!(err, CertError::Profile { .. }), "{err}");

    assert!(matches!(
        verify_chain(&[], roots, now),
        Err(CertError::EmptyChain)
    ));
    assert!(matches!(
        verify_chain(&[b"junk".to_vec()], roots, now),
        Err(CertError::ParseCert { .. })
    ));
}

#[test]
fn cert_spiffe_id_needs_exactly_one_uri_san() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["host.test".to_owned()]).unwrap();
    let none = params.self_signed(&key).unwrap();
    assert!(matches!(
        cert_spiffe_id(none.der()),
        Err(CertError::NoUriSan(_))
    ));
    params.subject_alt_names = vec![
        uri_san("spiffe://agentmesh.test/a".into()).unwrap(),
        uri_san("spiffe://agentmesh.test/b".into()).unwrap(),
    ];
    let two = params.self_signed(&key).unwrap();
    assert!(matches!(
        cert_spiffe_id(two.der()),
        Err(CertError::MultipleUriSans { count: 2, .. })
    ));
    params.subject_alt_names = vec![uri_san("https://example.test/".into()).unwrap()];
    let bad = params.self_signed(&key).unwrap();
    assert!(matches!(
        cert_spiffe_id(bad.der()),
        Err(CertError::BadSpiffeId { .. })
    ));
}

#[test]
fn debug_shows_no_key_material() {
    let now = now();
    let ca = ca(now);
    let dbg = format!("{:?}", ca.authority);
    assert!(dbg.contains("agentmesh.test"), "{dbg}");
    assert!(!dbg.to_lowercase().contains("key"), "{dbg}");
}

#[test]
fn openssl_verifies_the_chain() {
    let now = now();
    let ca = ca(now);
    let svid = ca
        .authority
        .mint_x509_svid(
            &id("/ns/default/sa/web"),
            &workload_key(),
            HOUR,
            &["web.test".to_owned()],
            now,
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, der: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem_encode("CERTIFICATE", der)).unwrap();
        path
    };
    let root = write("root.pem", &ca.root_der);
    let inter = write("intermediate.pem", &svid.chain[1]);
    let leaf = write("leaf.pem", &svid.chain[0]);
    for strict in [false, true] {
        let mut cmd = std::process::Command::new("openssl");
        cmd.arg("verify");
        if strict {
            cmd.arg("-x509_strict");
        }
        cmd.arg("-CAfile")
            .arg(&root)
            .arg("-untrusted")
            .arg(&inter)
            .arg(&leaf);
        let out = cmd.output().unwrap_or_else(|e| {
            panic!("this test needs the `openssl` binary on PATH (e.g. /usr/bin/openssl): {e}")
        });
        assert!(
            out.status.success(),
            "openssl verify (strict: {strict}) failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
