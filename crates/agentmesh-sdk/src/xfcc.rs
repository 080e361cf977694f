//! Envoy's `x-forwarded-client-cert` (XFCC): how a service behind its sidecar learns which
//! SPIFFE ID the sidecar verified for the caller.

use agentmesh_spiffe::SpiffeId;
use http::HeaderMap;

/// The header the sidecar sets with the verified caller.
pub const XFCC: &str = "x-forwarded-client-cert";

/// The identity the sidecar verified, from Envoy's XFCC format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The caller's SPIFFE ID (`URI=`).
    pub id: SpiffeId,
    /// The proxy's own ID (`By=`), whose trust domain resolves service names.
    pub by: Option<SpiffeId>,
}

/// Reads the last element of an `x-forwarded-client-cert` value: the one the service's own
/// proxy added (any earlier ones were stripped by it, but the last is the nearest hop).
pub fn parse_xfcc(value: &str) -> Option<Caller> {
    let element = value.rsplit(',').next()?;
    let mut uri = None;
    let mut by = None;
    for pair in element.split(';') {
        let (k, v) = pair.split_once('=')?;
        let v = v.trim().trim_matches('"');
        match k.trim().to_ascii_lowercase().as_str() {
            "uri" => uri = v.parse::<SpiffeId>().ok(),
            "by" => by = v.parse::<SpiffeId>().ok(),
            _ => {}
        }
    }
    Some(Caller { id: uri?, by })
}

/// The caller's SPIFFE ID from the sidecar's `x-forwarded-client-cert`.
pub fn peer(headers: &HeaderMap) -> Option<SpiffeId> {
    headers
        .get(XFCC)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_xfcc)
        .map(|c| c.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfcc_is_read_from_the_nearest_element() {
        let c = parse_xfcc(
            "By=spiffe://td/ns/default/sa/gateway;URI=spiffe://td/ns/default/sa/executor",
        )
        .unwrap();
        assert_eq!(c.id.to_string(), "spiffe://td/ns/default/sa/executor");
        let c = parse_xfcc("URI=spiffe://x/evil,By=spiffe://td/g;URI=\"spiffe://td/a\"").unwrap();
        assert_eq!(c.id.to_string(), "spiffe://td/a");
        for bad in ["", "URI=", "URI=https://x", "garbage", "By=spiffe://td/g"] {
            assert!(parse_xfcc(bad).is_none(), "{bad:?}");
        }
    }
}
