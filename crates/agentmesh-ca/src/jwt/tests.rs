use super::*;

const HOUR: Duration = Duration::from_secs(3600);

fn sub() -> SpiffeId {
    "spiffe://agentmesh.test/ns/default/sa/planner"
        .parse()
        .unwrap()
}

fn aud() -> Vec<String> {
    vec![
        "spiffe://agentmesh.test/api".to_owned(),
        "billing".to_owned(),
    ]
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

fn setup() -> (JwtKey, Jwks, String) {
    let key = JwtKey::generate().unwrap();
    let jwks = Jwks::new(vec![key.public_jwk()]);
    let token = sign_jwt_svid(&key, &sub(), &aud(), HOUR, now()).unwrap();
    (key, jwks, token)
}

fn b64json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// Re-signs arbitrary header and claims with `key`, for forging test tokens.
fn forge(key: &JwtKey, header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64json(header), b64json(claims));
    let sig = key
        .pair
        .sign(&SystemRandom::new(), input.as_bytes())
        .unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

#[test]
fn round_trip() {
    let (key, jwks, token) = setup();
    let claims = validate_jwt_svid(&token, &jwks, "billing", now()).unwrap();
    assert_eq!(claims.sub, sub());
    assert_eq!(claims.aud, aud());
    assert_eq!(claims.iat, Some(1_750_000_000));
    assert_eq!(claims.exp, 1_750_003_600);
    assert!(claims.raw["aud"].is_array());

    let header = decode_json_object(token.split('.').next().unwrap(), "header").unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["kid"], key.kid());
    // Raw r||s, not DER.
    let sig = URL_SAFE_NO_PAD
        .decode(token.rsplit('.').next().unwrap())
        .unwrap();
    assert_eq!(sig.len(), 64);

    assert_eq!(peek_claims(&token).unwrap(), claims);
}

#[test]
fn key_reloads_from_pkcs8() {
    let (key, jwks, token) = setup();
    let again = JwtKey::from_pkcs8_der(key.kid(), &key.pkcs8_der()).unwrap();
    assert_eq!(again.public_jwk(), key.public_jwk());
    let token2 = sign_jwt_svid(&again, &sub(), &aud(), HOUR, now()).unwrap();
    validate_jwt_svid(&token2, &jwks, "billing", now()).unwrap();
    validate_jwt_svid(&token, &jwks, "billing", now()).unwrap();
    assert!(matches!(
        JwtKey::from_pkcs8_der("", &key.pkcs8_der()),
        Err(JwtError::Key(_))
    ));
    assert!(matches!(
        JwtKey::from_pkcs8_der("k", b"junk"),
        Err(JwtError::Key(_))
    ));
}

#[test]
fn tampered_payload_is_bad_signature() {
    let (_, jwks, token) = setup();
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims = decode_json_object(parts[1], "claims").unwrap();
    claims.insert(
        "sub".into(),
        Value::String("spiffe://agentmesh.test/admin".into()),
    );
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64json(&Value::Object(claims)),
        parts[2]
    );
    assert!(matches!(
        validate_jwt_svid(&forged, &jwks, "billing", now()),
        Err(JwtError::BadSignature)
    ));
}

#[test]
fn wrong_audience() {
    let (_, jwks, token) = setup();
    match validate_jwt_svid(&token, &jwks, "someone-else", now()) {
        Err(JwtError::AudienceMismatch { want, got }) => {
            assert_eq!(want, "someone-else");
            assert_eq!(got, aud());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn string_audience_is_accepted() {
    let key = JwtKey::generate().unwrap();
    let jwks = Jwks::new(vec![key.public_jwk()]);
    let token = forge(
        &key,
        &serde_json::json!({"alg":"ES256","kid":key.kid()}),
        &serde_json::json!({"sub": sub().to_string(), "aud": "billing", "exp": 1_750_000_100}),
    );
    let claims = validate_jwt_svid(&token, &jwks, "billing", now()).unwrap();
    assert_eq!(claims.aud, vec!["billing".to_owned()]);
    assert_eq!(claims.iat, None);
}

#[test]
fn expired() {
    let (_, jwks, token) = setup();
    // exp == now is already expired: no leeway.
    let at_exp = now() + HOUR;
    assert!(matches!(
        validate_jwt_svid(&token, &jwks, "billing", at_exp),
        Err(JwtError::Expired { exp: 1_750_003_600 })
    ));
    validate_jwt_svid(&token, &jwks, "billing", at_exp - Duration::from_secs(1)).unwrap();
}

#[test]
fn unknown_kid() {
    let (_, _, token) = setup();
    let other = Jwks::new(vec![JwtKey::generate().unwrap().public_jwk()]);
    assert!(matches!(
        validate_jwt_svid(&token, &other, "billing", now()),
        Err(JwtError::UnknownKid(_))
    ));
}

#[test]
fn none_and_hs256_are_refused() {
    let (key, jwks, token) = setup();
    let payload = token.split('.').nth(1).unwrap();
    for alg in ["none", "HS256", "RS256", "ES384"] {
        let header = b64json(&serde_json::json!({"alg": alg, "kid": key.kid(), "typ": "JWT"}));
        for sig in ["", "AAAA"] {
            let forged = format!("{header}.{payload}.{sig}");
            match validate_jwt_svid(&forged, &jwks, "billing", now()) {
                Err(JwtError::UnsupportedAlg(a)) => assert_eq!(a, alg),
                other => panic!("alg {alg}: {other:?}"),
            }
        }
    }
}

#[test]
fn another_key_under_the_same_kid_is_refused() {
    let (key, jwks, _) = setup();
    let impostor_der = JwtKey::generate().unwrap().pkcs8_der();
    let impostor = JwtKey::from_pkcs8_der(key.kid(), &impostor_der).unwrap();
    let token = sign_jwt_svid(&impostor, &sub(), &aud(), HOUR, now()).unwrap();
    assert!(matches!(
        validate_jwt_svid(&token, &jwks, "billing", now()),
        Err(JwtError::BadSignature)
    ));
}

#[test]
fn malformed_tokens_and_bad_subjects() {
    let (key, jwks, token) = setup();
    for bad in ["", "a.b", "a.b.c.d", "!!!.x.y", &format!("{token}.")] {
        assert!(
            matches!(
                validate_jwt_svid(bad, &jwks, "billing", now()),
                Err(JwtError::Malformed(_))
            ),
            "{bad:?}"
        );
    }
    let no_kid = forge(
        &key,
        &serde_json::json!({"alg":"ES256"}),
        &serde_json::json!({"sub": sub().to_string(), "aud": ["billing"], "exp": 1_750_000_100}),
    );
    assert!(matches!(
        validate_jwt_svid(&no_kid, &jwks, "billing", now()),
        Err(JwtError::MissingKid)
    ));
    let bad_sub = forge(
        &key,
        &serde_json::json!({"alg":"ES256","kid":key.kid()}),
        &serde_json::json!({"sub": "https://evil", "aud": ["billing"], "exp": 1_750_000_100}),
    );
    assert!(matches!(
        validate_jwt_svid(&bad_sub, &jwks, "billing", now()),
        Err(JwtError::BadSubject(_))
    ));
    let no_exp = forge(
        &key,
        &serde_json::json!({"alg":"ES256","kid":key.kid()}),
        &serde_json::json!({"sub": sub().to_string(), "aud": ["billing"]}),
    );
    assert!(matches!(
        validate_jwt_svid(&no_exp, &jwks, "billing", now()),
        Err(JwtError::Malformed(_))
    ));
}

#[test]
fn sign_refuses_empty_audience_and_zero_ttl() {
    let key = JwtKey::generate().unwrap();
    assert!(matches!(
        sign_jwt_svid(&key, &sub(), &[], HOUR, now()),
        Err(JwtError::EmptyAudience)
    ));
    assert!(matches!(
        sign_jwt_svid(&key, &sub(), &aud(), Duration::ZERO, now()),
        Err(JwtError::ZeroTtl)
    ));
}

#[test]
fn jwks_json_round_trip_and_spiffe_fields() {
    let key = JwtKey::generate().unwrap();
    let jwks = Jwks::new(vec![key.public_jwk()]);
    let json = jwks.to_json();
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["keys"][0]["kty"], "EC");
    assert_eq!(v["keys"][0]["crv"], "P-256");
    assert_eq!(v["keys"][0]["use"], "jwt-svid");
    assert_eq!(v["keys"][0]["kid"], key.kid());
    assert!(v.get("spiffe_sequence").is_none());
    assert_eq!(Jwks::from_json(&json).unwrap(), jwks);

    // A full SPIFFE bundle: X.509 roots and foreign key types are skipped.
    let mut doc: Value = serde_json::from_str(&json).unwrap();
    doc["spiffe_sequence"] = 7.into();
    doc["spiffe_refresh_hint"] = 300.into();
    doc["keys"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"kty":"EC","crv":"P-256","use":"x509-svid","x5c":["AAAA"],"x":"AA","y":"AA"}));
    doc["keys"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"kty":"RSA","use":"jwt-svid","kid":"r","n":"AQAB","e":"AQAB"}));
    let parsed = Jwks::from_json(&doc.to_string()).unwrap();
    assert_eq!(parsed.keys, jwks.keys);
    assert_eq!(parsed.spiffe_sequence, Some(7));
    assert_eq!(parsed.spiffe_refresh_hint, Some(300));
    assert!(parsed.to_json().contains("\"spiffe_sequence\":7"));

    assert!(matches!(
        Jwks::from_json("not json"),
        Err(JwkError::BadJwks(_))
    ));
    let bad_point =
        r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k","use":"jwt-svid","x":"AA","y":"AA"}]}"#;
    assert!(matches!(
        Jwks::from_json(bad_point),
        Err(JwkError::BadJwk { .. })
    ));
}

#[test]
fn debug_shows_only_the_kid() {
    let key = JwtKey::generate().unwrap();
    let dbg = format!("{key:?}");
    assert!(dbg.contains(key.kid()));
    assert!(!dbg.contains(&URL_SAFE_NO_PAD.encode(key.pkcs8_der())));
    assert!(!dbg.contains("pkcs8"));
}

fn with_signature(token: &str, sig: &[u8]) -> String {
    let input = token.rsplit_once('.').unwrap().0;
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn signature_of(token: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(token.rsplit('.').next().unwrap())
        .unwrap()
}

#[test]
fn our_jwt_svids_are_low_s() {
    let key = JwtKey::generate().unwrap();
    // Half of ring's raw signatures are high-S; 32 low-S tokens in a row would be 2^-32 luck.
    for _ in 0..32 {
        let token = sign_jwt_svid(&key, &sub(), &aud(), HOUR, now()).unwrap();
        assert!(crate::ecdsa::is_low_s(&signature_of(&token)));
    }
}

#[test]
fn a_high_s_jwt_svid_from_another_issuer_is_accepted() {
    // SPIRE (Go's crypto/ecdsa) emits high-S signatures half the time; JOSE allows them.
    let (_key, jwks, token) = setup();
    let high = crate::ecdsa::mirror_s(&signature_of(&token)).unwrap();
    assert!(!crate::ecdsa::is_low_s(&high));
    let spire_style = with_signature(&token, &high);
    assert_ne!(spire_style, token);
    let claims = validate_jwt_svid(&spire_style, &jwks, "billing", now()).unwrap();
    assert_eq!(claims.sub, sub());
}
