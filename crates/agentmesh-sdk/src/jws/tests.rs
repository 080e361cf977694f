use std::time::{Duration, SystemTime};

use super::*;
use crate::testing::TestCa;

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

fn now() -> SystemTime {
    SystemTime::now()
}

#[test]
fn a_signed_body_verifies_for_the_expected_signer() {
    let ca = TestCa::new("td");
    let source = ca.source("spiffe://td/writer");
    let jws = sign(&source, br#"{"a":1}"#).unwrap();
    let ok = verify(&jws, &ca.roots(), &id("spiffe://td/writer"), now()).unwrap();
    assert_eq!(ok.payload, br#"{"a":1}"#);
    assert_eq!(ok.signer, id("spiffe://td/writer"));
    assert_eq!(ok.serial, source.current().svid.serial);
}

#[test]
fn a_tampered_body_fails() {
    let ca = TestCa::new("td");
    let source = ca.source("spiffe://td/writer");
    let jws = sign(&source, br#"{"a":1}"#).unwrap();
    let mut parts: Vec<String> = jws.split('.').map(str::to_owned).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(br#"{"a":2}"#);
    let err = verify(
        &parts.join("."),
        &ca.roots(),
        &id("spiffe://td/writer"),
        now(),
    )
    .unwrap_err();
    assert!(matches!(err, JwsError::BadSignature), "{err}");

    let detached = sign_detached(&source, br#"{"a":1}"#).unwrap();
    let err = verify_detached(
        &detached,
        br#"{"a":2}"#,
        &ca.roots(),
        &id("spiffe://td/writer"),
        now(),
    )
    .unwrap_err();
    assert!(matches!(err, JwsError::BadSignature), "{err}");
}

#[test]
fn a_different_signer_fails_naming_both_ids() {
    let ca = TestCa::new("td");
    let jws = sign(&ca.source("spiffe://td/mallory"), b"{}").unwrap();
    let err = verify(&jws, &ca.roots(), &id("spiffe://td/writer"), now()).unwrap_err();
    assert!(matches!(err, JwsError::WrongSigner(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("spiffe://td/mallory") && msg.contains("spiffe://td/writer"),
        "{msg}"
    );
}

#[test]
fn a_signer_from_a_foreign_ca_fails_even_with_the_expected_id() {
    let ours = TestCa::new("td");
    let foreign = TestCa::new("td");
    let jws = sign(&foreign.source("spiffe://td/writer"), b"{}").unwrap();
    let err = verify(&jws, &ours.roots(), &id("spiffe://td/writer"), now()).unwrap_err();
    assert!(matches!(err, JwsError::UntrustedChain(_)), "{err}");
}

#[test]
fn an_expired_signer_certificate_fails() {
    let ca = TestCa::new("td");
    let old = ca
        .svid_valid(
            "spiffe://td/writer",
            now() - Duration::from_secs(7200),
            Duration::from_secs(60),
        )
        .unwrap();
    let source = X509Source::from_svid(old, ca.roots()).unwrap();
    let jws = sign(&source, b"{}").unwrap();
    let err = verify(&jws, &ca.roots(), &id("spiffe://td/writer"), now()).unwrap_err();
    assert!(matches!(err, JwsError::SignerExpired { .. }), "{err}");
}

#[test]
fn header_substitution_to_another_valid_signer_fails() {
    // Swap in Mallory's header (her valid x5c) over the writer's signature.
    let ca = TestCa::new("td");
    let good = sign(&ca.source("spiffe://td/writer"), b"{}").unwrap();
    let evil = sign(&ca.source("spiffe://td/mallory"), b"{}").unwrap();
    let forged = format!(
        "{}.{}",
        evil.split('.').next().unwrap(),
        good.split_once('.').unwrap().1
    );
    let err = verify(&forged, &ca.roots(), &id("spiffe://td/mallory"), now()).unwrap_err();
    assert!(matches!(err, JwsError::BadSignature), "{err}");
}

#[test]
fn malformed_input_gets_a_specific_error_and_no_panic() {
    let ca = TestCa::new("td");
    let want = id("spiffe://td/w");
    let none_alg = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","x5c":[]}"#),
        URL_SAFE_NO_PAD.encode(b"{}")
    );
    let no_x5c = format!("{}.e30.AAAA", URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256"}"#));
    let bad_x5c = format!(
        "{}.e30.AAAA",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","x5c":["AAAA"]}"#)
    );
    let crit = format!(
        "{}.e30.AAAA",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","crit":["b64"],"b64":false,"x5c":["AAAA"]}"#)
    );
    for (input, check) in [
        (crit.as_str(), "critical"),
        ("", "segments"),
        ("a.b", "segments"),
        ("a.b.c.d", "segments"),
        ("!!.e30.AAAA", "base64url"),
        ("e30.e30.AAAA", "json"),
        (none_alg.as_str(), "only ES256"),
        (no_x5c.as_str(), "no x5c"),
        (bad_x5c.as_str(), "x5c leaf"),
    ] {
        let err = verify(input, &ca.roots(), &want, now())
            .unwrap_err()
            .to_string();
        assert!(err.contains(check), "{input:?}: {err}");
    }
}

#[test]
fn a_detached_jws_must_not_carry_a_payload() {
    let ca = TestCa::new("td");
    let jws = sign(&ca.source("spiffe://td/w"), b"{}").unwrap();
    let err = verify_detached(&jws, b"{}", &ca.roots(), &id("spiffe://td/w"), now()).unwrap_err();
    assert!(matches!(err, JwsError::DetachedMismatch(_)), "{err}");
}
