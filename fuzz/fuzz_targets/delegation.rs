//! The delegation chain: the `x-agentmesh-delegation` header and the user token it is rooted
//! in, verified against a fixed test CA.
//!
//! The first input byte picks what the rest is: the whole links header, a link after one
//! genuine link, the user token itself, the user token's claims (signed genuinely, so the
//! claim checks are reached), or a header for the splitter alone.
//!
//! Run with: `RUSTC_BOOTSTRAP=1 cargo fuzz run delegation` (from `fuzz/`).
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use agentmesh_sdk::delegation::{self, ChainConfig, MAX_LINKS};
use agentmesh_sdk::testing::{TestCa, user_token};
use agentmesh_sdk::{SpiffeId, X509Source};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    frontend: Arc<X509Source>,
    config: ChainConfig,
    token: String,
    /// One genuine link, signed by the planner and addressed to this service.
    link: String,
    /// Every check runs at this instant, so a long run never sees its certificates expire.
    now: SystemTime,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let now = SystemTime::now();
        let ca = TestCa::new("fuzz.example");
        let frontend = ca.source("spiffe://fuzz.example/frontend");
        let planner = ca.source("spiffe://fuzz.example/planner");
        let me: SpiffeId = "spiffe://fuzz.example/executor"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let token = user_token(
            &frontend,
            serde_json::json!({"sub": "alice", "aud": "fuzz"}),
            30 * 24 * 3600,
        );
        let link = delegation::add_link(&planner, &token, "", &me)
            .unwrap_or_else(|e| panic!("the fixture's link: {e}"));
        let issuer: SpiffeId = "spiffe://fuzz.example/frontend"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let config = ChainConfig::new(ca.roots(), issuer, "fuzz").with_me(me);
        // The fixture itself must verify, or the fuzzer would only ever explore refusals.
        delegation::verify_chain(&token, &link, &config, None, now)
            .unwrap_or_else(|e| panic!("the fixture's chain does not verify: {e}"));
        Fixture {
            frontend,
            config,
            token,
            link,
            now,
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
    match mode % 5 {
        0 => {
            // Links cannot be forged: a chain verifies only with genuine links, for alice.
            if let Ok(chain) = delegation::verify_chain(&f.token, text, &f.config, None, f.now) {
                assert_eq!(chain.user.sub, "alice");
                assert!(chain.hops.len() <= MAX_LINKS);
            }
        }
        1 => {
            let links = format!("{}~{text}", f.link);
            if let Ok(chain) = delegation::verify_chain(&f.token, &links, &f.config, None, f.now) {
                assert_eq!(chain.hops.len(), 2);
            }
        }
        2 => {
            if let Ok(chain) = delegation::verify_chain(text, "", &f.config, None, f.now) {
                assert_eq!(chain.issuer, f.config.issuer);
                assert!(chain.hops.is_empty());
            }
        }
        3 => {
            let Ok(claims) = serde_json::from_str::<serde_json::Value>(text) else {
                return;
            };
            let token = user_token(&f.frontend, claims.clone(), 3600);
            if let Ok(chain) = delegation::verify_chain(&token, "", &f.config, None, f.now) {
                assert_eq!(
                    claims.get("sub").and_then(|s| s.as_str()),
                    Some(&*chain.user.sub)
                );
            }
        }
        _ => {
            if let Ok(links) = delegation::split_links(text) {
                assert!(links.len() <= MAX_LINKS);
                assert!(links.iter().all(|l| !l.is_empty() && !l.contains('~')));
                assert_eq!(links.join("~"), text.trim());
            }
        }
    }
});
