//! JWS parsing and verification in the sdk: signed responses (attached and detached, `x5c`
//! against a fixed test CA) and user tokens verified against a JWKS.
//!
//! The first input byte picks what the rest is: a JWS, a detached JWS, a JWS for any signer
//! of the trust domain, a payload spliced between a genuine header and signature, a user
//! token, or the claims of a genuinely signed user token.
//!
//! Run with: `RUSTC_BOOTSTRAP=1 cargo fuzz run jws` (from `fuzz/`).
#![no_main]

use std::sync::OnceLock;
use std::time::SystemTime;

use agentmesh_sdk::jws;
use agentmesh_sdk::testing::TestIssuer;
use agentmesh_sdk::{SpiffeId, TrustDomain};
use agentmesh_sdk::{UserTokenConfig, UserTokenVerifier};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;

const PAYLOAD: &[u8] = br#"{"answer":42}"#;

struct Fixture {
    roots: Vec<CertificateDer<'static>>,
    writer: SpiffeId,
    td: TrustDomain,
    /// A genuine attached JWS over [`PAYLOAD`], signed by the writer.
    signed: String,
    issuer: TestIssuer,
    verifier: UserTokenVerifier,
    runtime: tokio::runtime::Runtime,
    /// Every check runs at this instant, so a long run never sees its certificates expire.
    now: SystemTime,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let ca = agentmesh_sdk::testing::TestCa::new("fuzz.example");
        let writer: SpiffeId = "spiffe://fuzz.example/writer"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let source = ca.source(&writer.to_string());
        let signed = jws::sign(&source, PAYLOAD).unwrap_or_else(|e| panic!("{e}"));
        let issuer = TestIssuer::new();
        let verifier = UserTokenVerifier::new(UserTokenConfig::new("fuzz"), issuer.fetcher());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        Fixture {
            roots: ca.roots(),
            td: writer.trust_domain().clone(),
            writer,
            signed,
            issuer,
            verifier,
            runtime,
            now: SystemTime::now(),
        }
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let f = fixture();
    match mode % 6 {
        0 => {
            if let Ok(ok) = jws::verify(text, &f.roots, &f.writer, f.now) {
                assert_eq!(ok.signer, f.writer);
            }
        }
        1 => {
            if let Ok(ok) = jws::verify_detached(text, PAYLOAD, &f.roots, &f.writer, f.now) {
                assert_eq!(ok.payload, PAYLOAD);
            }
        }
        2 => {
            let signers = agentmesh_tls::member_of(f.td.clone());
            if let Ok(ok) = jws::verify_with(text, None, &f.roots, &*signers, f.now) {
                assert!(ok.signer.is_member_of(&f.td));
            }
        }
        3 => {
            // Another payload under a genuine header and signature: the signature covers the
            // payload, so only the signed bytes may come out.
            let mut parts = f.signed.split('.');
            let (header, _, sig) = (parts.next(), parts.next(), parts.next());
            let spliced = format!(
                "{}.{}.{}",
                header.unwrap_or_default(),
                URL_SAFE_NO_PAD.encode(rest),
                sig.unwrap_or_default()
            );
            if let Ok(ok) = jws::verify(&spliced, &f.roots, &f.writer, f.now) {
                assert_eq!(ok.payload, PAYLOAD, "a spliced payload verified");
            }
        }
        4 => {
            if let Ok(claims) = f.runtime.block_on(f.verifier.verify(text)) {
                assert!(!claims.sub.is_empty() || claims.raw.contains_key("sub"));
            }
        }
        _ => {
            let Ok(claims) = serde_json::from_str::<serde_json::Value>(text) else {
                return;
            };
            let token = f.issuer.mint(claims.clone(), 3600);
            if let Ok(verified) = f.runtime.block_on(f.verifier.verify(&token)) {
                assert_eq!(
                    claims.get("sub").and_then(|s| s.as_str()),
                    Some(&*verified.sub)
                );
            }
        }
    }
});
