//! One record per `/ask`: the user token decoded, the delegation chain the request reached
//! its last agent with (verified here, link by link), the answer and its signature checks.
//! The request page joins it with the decisions of the same trace.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use agentmesh_sdk::delegation::{ChainConfig, verify_chain};
use base64::Engine as _;
use serde_json::Value;

/// How many asks the frontend remembers.
pub const KEEP: usize = 256;

/// Errors of this module: decoding for display never fails a request; the enum keeps the
/// module's shape uniform.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// A compact JWS that is not three base64url JSON parts.
    #[error("not a compact JWS")]
    NotJws,
}

/// A compact JWS's header and payload, decoded but not verified (verification is separate
/// and shown next to it).
#[derive(Debug, Clone, Default)]
pub struct Decoded {
    /// The protected header, without `x5c` (shown as the signer instead).
    pub header: Value,
    /// The payload.
    pub claims: Value,
    /// The SPIFFE ID of the `x5c` leaf.
    pub signer: Option<String>,
    /// The serial of the `x5c` leaf.
    pub signer_serial: Option<String>,
}

/// Decodes a compact JWS for display.
///
/// # Errors
/// [`RequestError::NotJws`].
pub fn decode(jws: &str) -> Result<Decoded, RequestError> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = jws.split('.');
    let (Some(h), Some(p), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::NotJws);
    };
    let json = |s: &str| -> Result<Value, RequestError> {
        let bytes = b64.decode(s).map_err(|_| RequestError::NotJws)?;
        serde_json::from_slice(&bytes).map_err(|_| RequestError::NotJws)
    };
    let mut header = json(h)?;
    let claims = json(p)?;
    let leaf = header["x5c"][0]
        .as_str()
        .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok());
    if let Some(obj) = header.as_object_mut() {
        obj.remove("x5c");
    }
    Ok(Decoded {
        header,
        claims,
        signer: leaf
            .as_deref()
            .and_then(|d| agentmesh_tls::cert_spiffe_id(d).ok())
            .map(|i| i.to_string()),
        signer_serial: leaf
            .as_deref()
            .and_then(|d| agentmesh_tls::cert_serial_hex(d).ok()),
    })
}

/// One element of the chain (the user token first, then each agent's link) and whether the
/// chain up to and including it verified.
#[derive(Debug, Clone)]
pub struct ChainElement {
    /// Decoded for display.
    pub decoded: Decoded,
    /// `Ok` or the first reason verification failed at this element.
    pub verified: Result<(), String>,
}

/// One ask, as the request page shows it.
#[derive(Debug, Clone)]
pub struct AskRecord {
    /// Its trace id.
    pub trace_id: String,
    /// When it was asked.
    pub at: SystemTime,
    /// The user's `sub` (a page is only shown to the user who asked).
    pub sub: String,
    /// The question.
    pub question: String,
    /// The HTTP status the frontend answered with.
    pub status: u16,
    /// The answer as the frontend returned it (with `verified`).
    pub answer: Value,
    /// The user token, then each link.
    pub chain: Vec<ChainElement>,
}

/// Verifies the chain one element at a time, so the page can mark each link: element `i` is
/// good when the token and the first `i` links verify together (which also checks each
/// link's place: prev, ujti, signer = act.sub).
pub fn check_chain(
    token: &str,
    links: &[String],
    config: &ChainConfig,
    now: SystemTime,
) -> Vec<ChainElement> {
    let mut out = Vec::with_capacity(links.len() + 1);
    let mut failed = false;
    for i in 0..=links.len() {
        let jws = if i == 0 { token } else { &links[i - 1] };
        let verified = if failed {
            Err("an earlier element did not verify".to_owned())
        } else {
            verify_chain(token, &links[..i].join("~"), config, None, now)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        failed |= verified.is_err();
        out.push(ChainElement {
            decoded: decode(jws).unwrap_or_default(),
            verified,
        });
    }
    out
}

/// The last asks, newest last.
#[derive(Debug, Default)]
pub struct Requests {
    list: Mutex<VecDeque<Arc<AskRecord>>>,
}

impl Requests {
    /// Keeps `r`, forgetting the oldest past [`KEEP`].
    pub fn push(&self, r: AskRecord) {
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() == KEEP {
            list.pop_front();
        }
        list.push_back(Arc::new(r));
    }

    /// The ask with this trace id, if `sub` asked it.
    pub fn get(&self, trace_id: &str, sub: &str) -> Option<Arc<AskRecord>> {
        let list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        list.iter()
            .rev()
            .find(|r| r.trace_id == trace_id && r.sub == sub)
            .cloned()
    }

    /// `sub`'s asks, newest first.
    pub fn of(&self, sub: &str) -> Vec<Arc<AskRecord>> {
        let list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        list.iter()
            .rev()
            .filter(|r| r.sub == sub)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_sdk::delegation;
    use agentmesh_sdk::testing::{TestCa, user_token};

    #[test]
    fn each_link_is_marked_and_a_swapped_chain_fails_from_the_swap_on() {
        let ca = TestCa::new("example.org");
        let token = user_token(
            &ca.source("spiffe://example.org/frontend"),
            serde_json::json!({"sub": "alice", "aud": "api"}),
            300,
        );
        let executor: agentmesh_sdk::SpiffeId = "spiffe://example.org/executor".parse().unwrap();
        let gateway: agentmesh_sdk::SpiffeId = "spiffe://example.org/gateway".parse().unwrap();
        let l1 = delegation::add_link(
            &ca.source("spiffe://example.org/planner"),
            &token,
            "",
            &executor,
        )
        .unwrap();
        let l2 = delegation::add_link(
            &ca.source("spiffe://example.org/executor"),
            &token,
            &l1,
            &gateway,
        )
        .unwrap();
        let links: Vec<String> = l2.split('~').map(str::to_owned).collect();
        let config = ChainConfig::new(
            ca.roots(),
            "spiffe://example.org/frontend".parse().unwrap(),
            "api",
        );
        let good = check_chain(&token, &links, &config, SystemTime::now());
        assert_eq!(good.len(), 3);
        assert!(good.iter().all(|e| e.verified.is_ok()));
        assert_eq!(good[0].decoded.claims["sub"], "alice");
        assert_eq!(
            good[2].decoded.signer.as_deref(),
            Some("spiffe://example.org/executor")
        );
        assert!(good[1].decoded.header.get("x5c").is_none());

        let swapped = vec![links[1].clone(), links[0].clone()];
        let bad = check_chain(&token, &swapped, &config, SystemTime::now());
        assert!(bad[0].verified.is_ok());
        assert!(bad[1].verified.is_err());
        assert!(bad[2].verified.is_err());
    }

    #[test]
    fn a_request_page_belongs_to_the_user_who_asked() {
        let r = Requests::default();
        r.push(AskRecord {
            trace_id: "t".into(),
            at: SystemTime::now(),
            sub: "alice".into(),
            question: "q".into(),
            status: 200,
            answer: Value::Null,
            chain: Vec::new(),
        });
        assert!(r.get("t", "alice").is_some());
        assert!(r.get("t", "mallory").is_none());
        assert_eq!(r.of("alice").len(), 1);
    }

    #[test]
    fn garbage_is_not_a_jws() {
        assert!(decode("a.b").is_err());
        assert!(decode("!!.!!.!!").is_err());
    }
}
