//! What the node knows: the entries it serves, the bundle, and the SVIDs it has minted.
//! Published as immutable snapshots, so a Workload API stream reads without locking and
//! learns of every change from a watch channel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use agentmesh_spiffe::{SelectorSet, SpiffeId, TrustDomain};
use agentmesh_tls::Jwks;

use crate::attestor::Attestation;

/// A registration entry as the node uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    /// The entry id.
    pub id: String,
    /// The SPIFFE ID granted.
    pub spiffe_id: SpiffeId,
    /// What a workload must match.
    pub selectors: SelectorSet,
    /// Seconds; 0 is the server's default.
    pub x509_ttl: i64,
    /// Seconds; 0 is the server's default.
    pub jwt_ttl: i64,
    /// Extra DNS SANs.
    pub dns_names: Vec<String>,
    /// Federated trust domains whose bundles this entry's X509-SVID responses carry.
    pub federates_with: Vec<TrustDomain>,
}

/// The trust bundle of the node's trust domain, or of a federated one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleInfo {
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// Roots, DER.
    pub roots: Vec<Vec<u8>>,
    /// The JWT keys as the server published them.
    pub jwks_json: String,
    /// The server's bundle sequence number.
    pub sequence: u64,
}

impl BundleInfo {
    /// The roots concatenated, the Workload API's bundle encoding.
    pub fn roots_concat(&self) -> Vec<u8> {
        self.roots.concat()
    }

    /// The JWT bundle, parsed.
    pub fn jwks(&self) -> Jwks {
        Jwks::from_json(&self.jwks_json).unwrap_or_else(|_| Jwks::new(Vec::new()))
    }
}

/// One minted X.509-SVID with its key.
#[derive(Clone)]
pub struct CachedSvid {
    /// The entry it was minted for.
    pub entry_id: String,
    /// Its SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Leaf first, DER.
    pub chain: Vec<Vec<u8>>,
    /// Unencrypted PKCS#8 DER; never logged.
    pub key_pkcs8: Vec<u8>,
    /// Hex serial.
    pub serial: String,
    /// Validity start.
    pub not_before: SystemTime,
    /// Validity end.
    pub not_after: SystemTime,
    /// When to replace it: half its life, ±10% jitter.
    pub rotate_at: SystemTime,
    /// The DNS names it was minted with, to notice entry changes.
    pub dns_names: Vec<String>,
}

impl std::fmt::Debug for CachedSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedSvid")
            .field("spiffe_id", &self.spiffe_id.to_string())
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Everything a Workload API call needs, frozen at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Entries, in the server's order (oldest first).
    pub entries: Arc<Vec<EntryInfo>>,
    /// SVIDs by entry id.
    pub svids: HashMap<String, Arc<CachedSvid>>,
    /// The bundle.
    pub bundle: Arc<BundleInfo>,
    /// The federated trust domains' bundles, by trust domain name.
    pub federated: Arc<Vec<BundleInfo>>,
    /// Whether the node has synced with the server at least once.
    pub synced: bool,
}

impl Snapshot {
    /// The entries whose selectors all hold for the caller.
    pub fn matching<'a>(&'a self, att: &'a Attestation) -> impl Iterator<Item = &'a EntryInfo> {
        self.entries
            .iter()
            .filter(|e| e.selectors.is_subset_of(&att.selectors))
    }

    /// The caller's SVIDs, in entry order. Entries whose SVID is still being minted are left
    /// out, and so are expired ones: after a long server outage a workload gets no SVID
    /// (Unavailable) rather than a certificate every peer would refuse.
    pub fn svids_for(&self, att: &Attestation) -> Vec<Arc<CachedSvid>> {
        self.svids_for_at(att, SystemTime::now())
    }

    /// [`Self::svids_for`] as of `now`.
    pub fn svids_for_at(&self, att: &Attestation, now: SystemTime) -> Vec<Arc<CachedSvid>> {
        self.matching(att)
            .filter_map(|e| self.svids.get(&e.id).cloned())
            .filter(|s| s.not_after > now)
            .collect()
    }

    /// The federated bundles the caller's matching entries federate with (SPIRE serves an
    /// X509-SVID response only the bundles its entries name).
    pub fn federated_for(&self, att: &Attestation) -> Vec<&BundleInfo> {
        let wanted: std::collections::BTreeSet<&TrustDomain> = self
            .matching(att)
            .flat_map(|e| e.federates_with.iter())
            .collect();
        self.federated
            .iter()
            .filter(|b| wanted.contains(&b.trust_domain))
            .collect()
    }

    /// The bundle of `td`: the own one or a federated one.
    pub fn bundle_of(&self, td: &TrustDomain) -> Option<&BundleInfo> {
        if &self.bundle.trust_domain == td {
            return Some(&self.bundle);
        }
        self.federated.iter().find(|b| &b.trust_domain == td)
    }

    /// Every bundle, the own first.
    pub fn all_bundles(&self) -> Vec<&BundleInfo> {
        std::iter::once(self.bundle.as_ref())
            .chain(self.federated.iter())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> SelectorSet {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn entry(id: &str, spiffe: &str, sel: &[&str]) -> EntryInfo {
        EntryInfo {
            id: id.into(),
            spiffe_id: spiffe.parse().unwrap(),
            selectors: set(sel),
            x509_ttl: 0,
            jwt_ttl: 0,
            dns_names: vec![],
            federates_with: vec![],
        }
    }

    #[test]
    fn expired_svids_are_never_served() {
        use std::time::Duration;
        let att = Attestation {
            selectors: set(&["unix:uid:1000"]),
            summary: "pid=7 uid=1000".into(),
            docker_error: None,
            cred: crate::attestor::PeerCred {
                pid: Some(7),
                uid: 1000,
                gid: 1000,
            },
        };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let svid = CachedSvid {
            entry_id: "e1".into(),
            spiffe_id: "spiffe://td/me".parse().unwrap(),
            chain: vec![],
            key_pkcs8: vec![],
            serial: "01".into(),
            not_before: t0,
            not_after: t0 + Duration::from_secs(10),
            rotate_at: t0 + Duration::from_secs(5),
            dns_names: vec![],
        };
        let snap = Snapshot {
            entries: Arc::new(vec![entry("e1", "spiffe://td/me", &["unix:uid:1000"])]),
            svids: HashMap::from([("e1".to_owned(), Arc::new(svid))]),
            bundle: Arc::new(BundleInfo {
                trust_domain: "td".parse().unwrap(),
                roots: vec![],
                jwks_json: String::new(),
                sequence: 1,
            }),
            federated: Arc::new(Vec::new()),
            synced: true,
        };
        assert_eq!(
            snap.svids_for_at(&att, t0 + Duration::from_secs(9)).len(),
            1
        );
        assert!(
            snap.svids_for_at(&att, t0 + Duration::from_secs(10))
                .is_empty()
        );
    }
}
