//! SPIFFE Workload API requests as the node receives them: each request message decoded as
//! tonic decodes it, then what the node checks on its own: a requested SPIFFE ID, and a
//! JWT-SVID to validate against a fixed JWKS.
//!
//! The first input byte picks the message; the rest is its protobuf encoding.
//!
//! Run with: `RUSTC_BOOTSTRAP=1 cargo fuzz run workload_request` (from `fuzz/`).
#![no_main]

use std::sync::OnceLock;
use std::time::SystemTime;

use agentmesh_ca::{Jwks, JwtKey, validate_jwt_svid};
use agentmesh_proto::workload::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509BundlesRequest, X509svidRequest,
};
use agentmesh_spiffe::SpiffeId;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn jwks() -> &'static Jwks {
    static JWKS: OnceLock<Jwks> = OnceLock::new();
    JWKS.get_or_init(|| {
        let key = JwtKey::generate().unwrap_or_else(|e| panic!("{e}"));
        Jwks::new(vec![key.public_jwk()])
    })
}

/// Encoding a decoded message and decoding it again gives the same message.
fn round_trips<M: Message + Default + PartialEq + std::fmt::Debug>(message: &M) {
    let again = M::decode(message.encode_to_vec().as_slice())
        .unwrap_or_else(|e| panic!("our own encoding does not decode: {e}"));
    assert_eq!(&again, message);
}

fuzz_target!(|input: &[u8]| {
    let Some((&which, bytes)) = input.split_first() else {
        return;
    };
    match which % 5 {
        0 => {
            if let Ok(m) = X509svidRequest::decode(bytes) {
                round_trips(&m);
            }
        }
        1 => {
            if let Ok(m) = X509BundlesRequest::decode(bytes) {
                round_trips(&m);
            }
        }
        2 => {
            if let Ok(m) = JwtBundlesRequest::decode(bytes) {
                round_trips(&m);
            }
        }
        3 => {
            let Ok(m) = JwtsvidRequest::decode(bytes) else {
                return;
            };
            round_trips(&m);
            // The node compares the requested ID with its entries' IDs as strings; one that
            // parses must print back the same, or a valid request could miss its entry.
            if let Ok(id) = m.spiffe_id.parse::<SpiffeId>() {
                assert_eq!(id.to_string(), m.spiffe_id);
            }
        }
        _ => {
            let Ok(m) = ValidateJwtsvidRequest::decode(bytes) else {
                return;
            };
            round_trips(&m);
            // No token is signed by the fixed key, so nothing may validate.
            let verdict = validate_jwt_svid(&m.svid, jwks(), &m.audience, SystemTime::now());
            assert!(verdict.is_err(), "an unsigned JWT-SVID validated");
        }
    }
});
