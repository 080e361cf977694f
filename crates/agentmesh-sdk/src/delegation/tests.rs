use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::testing::{TestCa, user_token};

const FRONTEND: &str = "spiffe://example.org/frontend";
const PLANNER: &str = "spiffe://example.org/planner";
const RESEARCHER: &str = "spiffe://example.org/researcher";
const WRITER: &str = "spiffe://example.org/writer";
const GATEWAY: &str = "spiffe://example.org/gateway";

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

struct Mesh {
    ca: TestCa,
    frontend: Arc<X509Source>,
    planner: Arc<X509Source>,
    researcher: Arc<X509Source>,
    writer: Arc<X509Source>,
}

impl Mesh {
    fn new() -> Self {
        let ca = TestCa::new("example.org");
        Self {
            frontend: ca.source(FRONTEND),
            planner: ca.source(PLANNER),
            researcher: ca.source(RESEARCHER),
            writer: ca.source(WRITER),
            ca,
        }
    }

    fn config(&self) -> ChainConfig {
        ChainConfig::new(self.ca.roots(), id(FRONTEND), "research-team")
    }

    fn token(&self) -> String {
        user_token(
            &self.frontend,
            json!({"sub": "alice", "email": "alice@example.org", "name": "Alice",
                   "idp": "dev", "aud": "research-team"}),
            300,
        )
    }

    /// planner → researcher → writer → gateway.
    fn three_hops(&self, token: &str) -> String {
        let one = add_link(&self.planner, token, "", &id(RESEARCHER)).unwrap();
        let two = add_link(&self.researcher, token, &one, &id(WRITER)).unwrap();
        add_link(&self.writer, token, &two, &id(GATEWAY)).unwrap()
    }
}

fn verify(mesh: &Mesh, token: &str, links: &str) -> Result<VerifiedChain, ChainError> {
    verify_chain(token, links, &mesh.config(), None, SystemTime::now())
}

fn links_of(header: &str) -> Vec<String> {
    header.split('~').map(str::to_owned).collect()
}

#[test]
fn a_three_hop_chain_verifies_with_its_hops_in_order() {
    let mesh = Mesh::new();
    let token = mesh.token();
    let links = mesh.three_hops(&token);
    let config = mesh.config().with_me(id(GATEWAY));
    let chain = verify_chain(
        &token,
        &links,
        &config,
        Some(&id(WRITER)),
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(chain.user.sub, "alice");
    assert_eq!(chain.user.email.as_deref(), Some("alice@example.org"));
    assert_eq!(chain.issuer, id(FRONTEND));
    assert_eq!(chain.hops, vec![id(PLANNER), id(RESEARCHER), id(WRITER)]);
    assert_eq!(chain.last_hop(), &id(WRITER));

    // The same through headers.
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    headers.insert(DELEGATION_HEADER, links.parse().unwrap());
    let chain = verify_headers(&headers, &config, Some(&id(WRITER)), SystemTime::now()).unwrap();
    assert_eq!(chain.hops.len(), 3);
}

#[test]
fn the_user_token_alone_is_a_chain_ending_at_the_frontend() {
    let mesh = Mesh::new();
    let token = mesh.token();
    let chain = verify_chain(
        &token,
        "",
        &mesh.config(),
        Some(&id(FRONTEND)),
        SystemTime::now(),
    )
    .unwrap();
    assert!(chain.hops.is_empty());
    let err = verify_chain(
        &token,
        " ",
        &mesh.config(),
        Some(&id(PLANNER)),
        SystemTime::now(),
    )
    .unwrap_err();
    assert!(matches!(err, ChainError::LastHopMismatch { .. }), "{err}");
}

#[test]
fn a_removed_hop_breaks_the_chain() {
    let mesh = Mesh::new();
    let token = mesh.token();
    let l = links_of(&mesh.three_hops(&token));
    let err = verify(&mesh, &token, &format!("{}~{}", l[0], l[2])).unwrap_err();
    assert!(matches!(err, ChainError::BrokenChain { index: 2 }), "{err}");
    // Dropping the first hop breaks the link to the user token.
    let err = verify(&mesh, &token, &format!("{}~{}", l[1], l[2])).unwrap_err();
    assert!(matches!(err, ChainError::BrokenChain { index: 1 }), "{err}");
}

#[test]
fn swapped_hops_break_the_chain() {
    let mesh = Mesh::new();
    let token = mesh.token();
    let l = links_of(&mesh.three_hops(&token));
    let err = verify(&mesh, &token, &format!("{}~{}~{}", l[0], l[2], l[1])).unwrap_err();
    assert!(matches!(err, ChainError::BrokenChain { index: 2 }), "{err}");
    let err = verify(&mesh, &token, &format!("{}~{}~{}", l[1], l[0], l[2])).unwrap_err();
    assert!(matches!(err, ChainError::BrokenChain { index: 1 }), "{err}");
}

#[test]
fn a_link_replayed_from_another_request_is_refused() {
    let mesh = Mesh::new();
    let token = mesh.token();
    let other = mesh.token();
    let ours = links_of(&mesh.three_hops(&token));
    let theirs = links_of(&mesh.three_hops(&other));
    // Their whole chain with our token.
    let err = verify(&mesh, &token, &theirs.join("~")).unwrap_err();
    assert!(
        matches!(err, ChainError::ReplayedLink { index: 1, .. }),
        "{err}"
    );
    // One of their links spliced into ours.
    let err = verify(
        &mesh,
        &token,
        &format!("{}~{}~{}", ours[0], theirs[1], ours[2]),
    )
    .unwrap_err();
    assert!(
        matches!(err, ChainError::ReplayedLink { index: 2, .. }),
        "{err}"
    );
    // Another user's link, even with the same jti.
    let bob = user_token(
        &mesh.frontend,
        json!({"sub": "bob", "aud": "research-team", "jti": "shared"}),
        300,
    );
    let alice = user_token(
        &mesh.frontend,
        json!({"sub": "alice", "aud": "research-team", "jti": "shared"}),
        300,
    );
    let bobs = add_link(&mesh.planner, &bob, "", &id(RESEARCHER)).unwrap();
    let err = verify(&mesh, &alice, &bobs).unwrap_err();
    assert!(
        matches!(err, ChainError::ReplayedLink { index: 1, .. }),
        "{err}"
    );
}

#[test]
fn a_link_naming_another_identity_than_its_signer_is_refused() {
    let mesh = Mesh::new();
    let token = mesh.token();
    let user = read_user_claims(&token).unwrap();
    // Signed by the planner's SVID, claiming to be the researcher.
    let forged = sign_link(
        &mesh.planner,
        &LinkClaims {
            sub: user.sub,
            act: Act {
                sub: RESEARCHER.into(),
            },
            ujti: user.jti,
            prev: hash_of(&token),
            aud: Some(WRITER.into()),
            iat: unix(SystemTime::now()),
            exp: user.exp,
        },
    )
    .unwrap();
    let err = verify(&mesh, &token, &forged).unwrap_err();
    assert!(
        matches!(err, ChainError::SignerMismatch { index: 1, .. }),
        "{err}"
    );
}

#[test]
fn a_link_from_a_foreign_ca_is_refused() {
    let mesh = Mesh::new();
    let token = mesh.token();
    let foreign = TestCa::new("example.org");
    let link = add_link(&foreign.source(PLANNER), &token, "", &id(RESEARCHER)).unwrap();
    let err = verify(&mesh, &token, &link).unwrap_err();
    assert!(
        matches!(err, ChainError::LinkUntrusted { index: 1, .. }),
        "{err}"
    );
}

#[test]
fn an_altered_link_is_refused() {
    let mesh = Mesh::new();
    let token = mesh.token();
    let link = add_link(&mesh.planner, &token, "", &id(RESEARCHER)).unwrap();
    let (h, rest) = link.split_once('.').unwrap();
    let (c, s) = rest.split_once('.').unwrap();
    let mut claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).unwrap()).unwrap();
    claims["aud"] = json!(GATEWAY);
    let altered = format!("{h}.{}.{s}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let err = verify(&mesh, &token, &altered).unwrap_err();
    assert!(
        matches!(err, ChainError::LinkBadSignature { index: 1 }),
        "{err}"
    );
}

#[test]
fn an_expired_link_is_refused() {
    let mesh = Mesh::new();
    let token = mesh.token();
    let user = read_user_claims(&token).unwrap();
    let now = unix(SystemTime::now());
    let link = sign_link(
        &mesh.planner,
        &LinkClaims {
            sub: user.sub,
            act: Act {
                sub: PLANNER.into(),
            },
            ujti: user.jti,
            prev: hash_of(&token),
            aud: Some(RESEARCHER.into()),
            iat: now - 600,
            exp: now - 300,
        },
    )
    .unwrap();
    let err = verify(&mesh, &token, &link).unwrap_err();
    assert!(
        matches!(err, ChainError::LinkExpired { index: 1, .. }),
        "{err}"
    );
}

#[test]
fn a_link_addressed_to_someone_else_is_refused() {
    let mesh = Mesh::new();
    let token = mesh.token();
    // The planner addressed the writer, but the researcher came next.
    let one = add_link(&mesh.planner, &token, "", &id(WRITER)).unwrap();
    let two = add_link(&mesh.researcher, &token, &one, &id(GATEWAY)).unwrap();
    let err = verify(&mesh, &token, &two).unwrap_err();
    assert!(
        matches!(err, ChainError::LinkWrongAudience { index: 1, .. }),
        "{err}"
    );
    // The last link names the gateway, and this service is someone else.
    let one = add_link(&mesh.planner, &token, "", &id(GATEWAY)).unwrap();
    let config = mesh.config().with_me(id(RESEARCHER));
    let err = verify_chain(&token, &one, &config, None, SystemTime::now()).unwrap_err();
    assert!(
        matches!(err, ChainError::LinkWrongAudience { index: 1, .. }),
        "{err}"
    );
    // The gateway it names accepts it.
    let config = mesh.config().with_me(id(GATEWAY));
    verify_chain(&token, &one, &config, Some(&id(PLANNER)), SystemTime::now()).unwrap();
}

#[test]
fn the_last_hop_must_be_the_peer() {
    let mesh = Mesh::new();
    let token = mesh.token();
    let links = mesh.three_hops(&token);
    let err = verify_chain(
        &token,
        &links,
        &mesh.config(),
        Some(&id(RESEARCHER)),
        SystemTime::now(),
    )
    .unwrap_err();
    assert!(matches!(err, ChainError::LastHopMismatch { .. }), "{err}");
}

#[test]
fn each_user_token_failure_has_its_reason() {
    let mesh = Mesh::new();
    let good = mesh.token();
    let links = mesh.three_hops(&good);
    let check = |token: &str| verify(&mesh, token, &links).unwrap_err();

    // Missing.
    let err = check("");
    assert!(
        matches!(err, ChainError::UserToken(TokenError::Missing)),
        "{err}"
    );
    let err = verify_headers(
        &http::HeaderMap::new(),
        &mesh.config(),
        None,
        SystemTime::now(),
    )
    .unwrap_err();
    assert!(
        matches!(err, ChainError::UserToken(TokenError::Missing)),
        "{err}"
    );
    // Forged: signed by a foreign CA's frontend, by another mesh identity, or spliced.
    let foreign = TestCa::new("example.org");
    let claims = json!({"sub": "alice", "aud": "research-team"});
    let err = check(&user_token(&foreign.source(FRONTEND), claims.clone(), 300));
    assert!(
        matches!(err, ChainError::UserToken(TokenError::Forged(_))),
        "{err}"
    );
    let mut as_frontend = claims.clone();
    as_frontend["iss"] = json!(FRONTEND);
    let err = check(&user_token(&mesh.planner, as_frontend, 300));
    assert!(
        matches!(err, ChainError::UserToken(TokenError::Forged(_))),
        "{err}"
    );
    let (h, rest) = good.split_once('.').unwrap();
    let s = rest.rsplit_once('.').unwrap().1;
    let mut admin = claims.clone();
    admin["sub"] = json!("admin");
    let tampered = format!("{h}.{}.{s}", URL_SAFE_NO_PAD.encode(admin.to_string()));
    let err = check(&tampered);
    assert!(
        matches!(err, ChainError::UserToken(TokenError::Forged(_))),
        "{err}"
    );
    // Expired.
    let err = check(&user_token(&mesh.frontend, claims.clone(), -600));
    assert!(
        matches!(err, ChainError::UserToken(TokenError::Expired { .. })),
        "{err}"
    );
    // Wrong audience.
    let err = check(&user_token(
        &mesh.frontend,
        json!({"sub": "alice", "aud": "billing"}),
        300,
    ));
    assert!(
        matches!(err, ChainError::UserToken(TokenError::WrongAudience { .. })),
        "{err}"
    );
    // Wrong issuer claim, though signed by the frontend.
    let err = check(&user_token(
        &mesh.frontend,
        json!({"sub": "alice", "aud": "research-team", "iss": "https://evil"}),
        300,
    ));
    assert!(
        matches!(err, ChainError::UserToken(TokenError::WrongIssuer { .. })),
        "{err}"
    );
    // A token without x5c (the JWKS-only kind) cannot be checked against the bundle.
    let issuer = crate::testing::TestIssuer::new();
    let err = check(&issuer.mint(claims, 300));
    assert!(
        matches!(err, ChainError::UserToken(TokenError::Forged(_))),
        "{err}"
    );
    // Garbage.
    for bad in ["garbage", "a.b", "a.b.c.d", "!!.??.**", "\u{e9}.x.y"] {
        let err = check(bad);
        assert!(
            matches!(err, ChainError::UserToken(TokenError::Malformed(_))),
            "{bad}: {err}"
        );
    }
}

#[test]
fn malformed_headers_are_refused_without_panicking() {
    let mesh = Mesh::new();
    let token = mesh.token();
    let l = links_of(&mesh.three_hops(&token));
    let malformed_header = [
        format!("{}~~{}", l[0], l[1]),
        format!("~{}", l[0]),
        format!("{}~", l[0]),
        "~".into(),
    ];
    for links in &malformed_header {
        let err = verify(&mesh, &token, links).unwrap_err();
        assert!(
            matches!(err, ChainError::MalformedHeader(_)),
            "{links}: {err}"
        );
    }
    let malformed_link = [
        "garbage".to_owned(),
        "a.b.c".into(),
        "a.b.c.d".into(),
        format!("{}~x.y.z", l[0]),
        // A response JWS (typ JOSE) is not a link.
        crate::jws::sign(&mesh.planner, b"{}").unwrap(),
        // Right typ, wrong claims.
        crate::jws::sign_typed(&mesh.planner, LINK_TYP, b"{\"sub\":1}").unwrap(),
        crate::jws::sign_typed(&mesh.planner, LINK_TYP, b"[]").unwrap(),
    ];
    for links in &malformed_link {
        let err = verify(&mesh, &token, links).unwrap_err();
        assert!(
            matches!(err, ChainError::LinkMalformed { .. }),
            "{links}: {err}"
        );
    }
    let too_many = vec![l[0].clone(); MAX_LINKS + 1].join("~");
    let err = verify(&mesh, &token, &too_many).unwrap_err();
    assert!(
        matches!(err, ChainError::TooLong { links: 17, max: 16 }),
        "{err}"
    );
    let huge = "a".repeat(MAX_LINKS * MAX_LINK_LEN + 1);
    let err = verify(&mesh, &token, &huge).unwrap_err();
    assert!(matches!(err, ChainError::MalformedHeader(_)), "{err}");
    let err = verify(&mesh, &token, &"a".repeat(MAX_LINK_LEN + 1)).unwrap_err();
    assert!(
        matches!(err, ChainError::LinkMalformed { index: 1, .. }),
        "{err}"
    );

    // Repeated or non-ASCII delegation headers.
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    headers.append(DELEGATION_HEADER, l[0].parse().unwrap());
    headers.append(DELEGATION_HEADER, l[1].parse().unwrap());
    let err = verify_headers(&headers, &mesh.config(), None, SystemTime::now()).unwrap_err();
    assert!(matches!(err, ChainError::MalformedHeader(_)), "{err}");
    headers.insert(
        DELEGATION_HEADER,
        http::HeaderValue::from_bytes(b"\xe9t\xe9").unwrap(),
    );
    let err = verify_headers(&headers, &mesh.config(), None, SystemTime::now()).unwrap_err();
    assert!(matches!(err, ChainError::MalformedHeader(_)), "{err}");
    headers.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
    let err = verify_headers(&headers, &mesh.config(), None, SystemTime::now()).unwrap_err();
    assert!(
        matches!(err, ChainError::UserToken(TokenError::Malformed(_))),
        "{err}"
    );
}

#[test]
fn a_full_chain_cannot_grow_and_links_never_outlive_the_token() {
    let mesh = Mesh::new();
    let token = mesh.token();
    let mut links = String::new();
    for _ in 0..MAX_LINKS {
        links = add_link(&mesh.planner, &token, &links, &id(PLANNER)).unwrap();
    }
    // Sixteen links by the same agent are a valid (if odd) chain.
    assert_eq!(verify(&mesh, &token, &links).unwrap().hops.len(), MAX_LINKS);
    let err = add_link(&mesh.planner, &token, &links, &id(PLANNER)).unwrap_err();
    assert!(matches!(err, ChainError::TooLong { .. }), "{err}");

    let link = add_link(&mesh.planner, &token, "", &id(RESEARCHER)).unwrap();
    let c = link.split('.').nth(1).unwrap();
    let claims: LinkClaims = decode_json(c).unwrap();
    assert_eq!(claims.exp, read_user_claims(&token).unwrap().exp);
    assert_eq!(claims.act.sub, PLANNER);
    assert_eq!(claims.aud.as_deref(), Some(RESEARCHER));

    // add_link refuses what is not a user token.
    for bad in ["", "garbage", "a.b.c"] {
        let err = add_link(&mesh.planner, bad, "", &id(RESEARCHER)).unwrap_err();
        assert!(matches!(err, ChainError::UserToken(_)), "{bad}: {err}");
    }
}

#[test]
fn a_link_without_an_audience_is_refused() {
    let mesh = Mesh::new();
    let token = mesh.token();
    let user = read_user_claims(&token).unwrap();
    let unaddressed = sign_link(
        &mesh.planner,
        &LinkClaims {
            sub: user.sub,
            act: Act {
                sub: PLANNER.into(),
            },
            ujti: user.jti,
            prev: hash_of(&token),
            aud: None,
            iat: unix(SystemTime::now()),
            exp: user.exp,
        },
    )
    .unwrap();
    for config in [mesh.config(), mesh.config().with_me(id(RESEARCHER))] {
        let err = verify_chain(&token, &unaddressed, &config, None, SystemTime::now()).unwrap_err();
        assert!(
            matches!(err, ChainError::LinkNoAudience { index: 1 }),
            "{err}"
        );
    }
    // In the middle of a chain too.
    let two = add_link(&mesh.researcher, &token, &unaddressed, &id(WRITER)).unwrap();
    let err = verify(&mesh, &token, &two).unwrap_err();
    assert!(
        matches!(err, ChainError::LinkNoAudience { index: 1 }),
        "{err}"
    );
}

#[test]
fn a_chain_is_accepted_only_by_the_hop_its_last_link_names() {
    let mesh = Mesh::new();
    let token = mesh.token();
    let links = mesh.three_hops(&token);
    let now = SystemTime::now();
    // The writer's link names the gateway: the gateway accepts the chain ...
    let gateway = mesh.config().with_me(id(GATEWAY));
    verify_chain(&token, &links, &gateway, Some(&id(WRITER)), now).unwrap();
    // ... and nobody else the writer could forward it to does.
    for other in [PLANNER, RESEARCHER, "spiffe://example.org/executor"] {
        let config = mesh.config().with_me(id(other));
        let err = verify_chain(&token, &links, &config, Some(&id(WRITER)), now).unwrap_err();
        assert!(
            matches!(err, ChainError::LinkWrongAudience { index: 3, .. }),
            "{other}: {err}"
        );
    }
}

#[test]
fn our_links_and_tokens_are_low_s() {
    let mesh = Mesh::new();
    for _ in 0..16 {
        let token = mesh.token();
        let links = mesh.three_hops(&token);
        for jws in std::iter::once(token.as_str()).chain(links.split('~')) {
            let sig = URL_SAFE_NO_PAD
                .decode(jws.rsplit('.').next().unwrap())
                .unwrap();
            assert!(agentmesh_tls::ecdsa::is_low_s(&sig), "{jws}");
        }
    }
}

/// The token with its signature's malleated twin `(r, n - s)`: the same claims, other bytes.
fn malleated(token: &str) -> String {
    let (input, sig) = token.rsplit_once('.').unwrap();
    let twin = agentmesh_tls::ecdsa::mirror_s(&URL_SAFE_NO_PAD.decode(sig).unwrap()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(twin))
}

#[test]
fn a_hop_accepts_a_token_once_per_path() {
    let mesh = Mesh::new();
    let token = mesh.token();
    let links = mesh.three_hops(&token);
    let now = SystemTime::now();
    let config = mesh.config().with_me(id(GATEWAY));
    let chain = verify_chain(&token, &links, &config, Some(&id(WRITER)), now).unwrap();
    let cache = ReplayCache::new(16, config.leeway);
    cache.admit(&chain, now).unwrap();
    let err = cache.admit(&chain, now).unwrap_err();
    assert!(
        matches!(&err, ChainError::Replayed { caller, .. } if caller == WRITER),
        "{err}"
    );
    assert_eq!(cache.len(), 1);

    // The malleated twin of the token verifies (ring accepts a high s) but is the same jti.
    let twin = malleated(&token);
    assert_ne!(twin, token);
    let config = mesh.config().with_me(id(PLANNER));
    let direct = verify_chain(&token, "", &config, None, now).unwrap();
    let twin_chain = verify_chain(&twin, "", &config, None, now).unwrap();
    cache.admit(&direct, now).unwrap();
    let err = cache.admit(&twin_chain, now).unwrap_err();
    assert!(matches!(err, ChainError::Replayed { .. }), "{err}");
}

#[test]
fn a_fan_out_reaches_the_same_hop_along_different_paths() {
    // threat-pipeline: the orchestrator calls the classifier, the validator and the scorer
    // with one token, and each of them calls the gateway with it.
    let mesh = Mesh::new();
    let orchestrator = mesh.ca.source("spiffe://example.org/orchestrator");
    let token = mesh.token();
    let now = SystemTime::now();
    let gateway = mesh.config().with_me(id(GATEWAY));
    let cache = ReplayCache::new(16, gateway.leeway);
    for branch in ["classifier", "validator", "scorer"] {
        let branch_id = id(&format!("spiffe://example.org/{branch}"));
        let one = add_link(&orchestrator, &token, "", &branch_id).unwrap();
        let two = add_link(
            &mesh.ca.source(&branch_id.to_string()),
            &token,
            &one,
            &id(GATEWAY),
        )
        .unwrap();
        let chain = verify_chain(&token, &two, &gateway, Some(&branch_id), now).unwrap();
        cache.admit(&chain, now).unwrap();
    }
    assert_eq!(cache.len(), 3);
}

#[test]
fn the_replay_cache_forgets_expired_tokens_and_refuses_when_full() {
    let mesh = Mesh::new();
    let config = mesh.config();
    let now = SystemTime::now();
    let chain_of = |token: &str| verify_chain(token, "", &config, None, now).unwrap();
    let first = chain_of(&mesh.token());
    let second = chain_of(&mesh.token());
    let third = chain_of(&mesh.token());
    let cache = ReplayCache::new(2, config.leeway);
    cache.admit(&first, now).unwrap();
    cache.admit(&second, now).unwrap();
    let err = cache.admit(&third, now).unwrap_err();
    assert!(
        matches!(err, ChainError::ReplayCacheFull { max: 2 }),
        "{err}"
    );
    assert_eq!(
        err.into_response().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(cache.len(), 2, "a refused token is not remembered");
    // Within the leeway after exp the tokens are still acceptable, so still remembered.
    let at_exp = UNIX_EPOCH + Duration::from_secs(first.user.exp.unsigned_abs() + 30);
    assert!(matches!(
        cache.admit(&first, at_exp),
        Err(ChainError::Replayed { .. })
    ));
    // Past it they are forgotten, which makes room.
    let later = at_exp + Duration::from_secs(2);
    cache.admit(&third, later).unwrap();
    assert_eq!(cache.len(), 1);
}
