//! JWT-SVIDs in the CA crate: validation of arbitrary strings against a fixed JWKS (what the
//! node's ValidateJWTSVID does), claim peeking, and JWKS documents.
//!
//! The first input byte picks what the rest is: a token, a token to peek at, a JWKS
//! document, the claims of a token signed with the fixed key (so the claim checks are
//! reached), or the header of one.
//!
//! Run with: `RUSTC_BOOTSTRAP=1 cargo fuzz run jwt_svid` (from `fuzz/`).
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentmesh_ca::{Jwks, JwtKey, peek_claims, validate_jwt_svid};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

struct Fixture {
    kid: String,
    jwks: Jwks,
    pair: EcdsaKeyPair,
    now: SystemTime,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let key = JwtKey::generate().unwrap_or_else(|e| panic!("{e}"));
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.pkcs8_der(),
            &SystemRandom::new(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Fixture {
            kid: key.kid().to_owned(),
            jwks: Jwks::new(vec![key.public_jwk()]),
            pair,
            now: SystemTime::now(),
        }
    })
}

/// A compact JWS over `header` and `claims` (raw bytes, base64url-encoded here), signed with
/// the fixture's key.
fn signed(f: &Fixture, header: &[u8], claims: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let sig = f
        .pair
        .sign(&SystemRandom::new(), input.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

fn check_valid(f: &Fixture, token: &str) {
    if let Ok(claims) = validate_jwt_svid(token, &f.jwks, "fuzz", f.now) {
        assert!(claims.aud.iter().any(|a| a == "fuzz"));
        let now = f.now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        assert!(claims.exp > i64::try_from(now.as_secs()).unwrap_or(i64::MAX));
        // What validates can also be peeked at, with the same subject.
        let peeked = peek_claims(token).unwrap_or_else(|e| panic!("valid but unpeekable: {e}"));
        assert_eq!(peeked.sub, claims.sub);
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let f = fixture();
    match mode % 5 {
        0 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                check_valid(f, text);
            }
        }
        1 => {
            if let Ok(text) = std::str::from_utf8(rest)
                && let Ok(claims) = peek_claims(text)
            {
                assert!(!claims.sub.to_string().is_empty());
            }
        }
        2 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            if let Ok(jwks) = Jwks::from_json(text) {
                // A bundle we accept is one we can publish and read back unchanged.
                let reread = Jwks::from_json(&jwks.to_json())
                    .unwrap_or_else(|e| panic!("published jwks does not read back: {e}"));
                assert_eq!(reread, jwks);
            }
        }
        3 => {
            let header = serde_json::json!({"alg": "ES256", "kid": f.kid, "typ": "JWT"});
            check_valid(f, &signed(f, header.to_string().as_bytes(), rest));
        }
        _ => {
            let exp = f
                .now
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() + 600);
            let claims =
                serde_json::json!({"sub": "spiffe://fuzz.example/a", "aud": "fuzz", "exp": exp});
            check_valid(f, &signed(f, rest, claims.to_string().as_bytes()));
        }
    }
});
