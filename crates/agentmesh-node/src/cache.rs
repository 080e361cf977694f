//! What the node knows: the entries it serves, the bundle, and the SVIDs it has minted.
//! Published as immutable snapshots, so a Workload API stream reads without locking and
//! learns of every change from a watch channel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use agentmesh_ca::Jwks;
use agentmesh_spiffe::{SelectorSet, SpiffeId, TrustDomain};

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
}

/// The trust bundle of the node's trust domain.
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
}

/// Explains why a caller matched no entry: which entry came closest and which of its
/// selectors the caller lacks.
pub fn explain_no_match(att: &Attestation, entries: &[EntryInfo]) -> String {
    let head = format!(
        "no registration entry matches this process ({})",
        att.summary
    );
    let closest = entries.iter().max_by_key(|e| {
        let missing = e.selectors.missing_from(&att.selectors).count();
        // Most selectors matched first; among those, fewest missing.
        ((e.selectors.len() - missing) as i64, -(missing as i64))
    });
    let Some(entry) = closest else {
        return format!(
            "{head}: this node serves no entries; create one with `agentmesh entry create`"
        );
    };
    let needs: Vec<String> = entry
        .selectors
        .missing_from(&att.selectors)
        .map(|want| {
            let have: Vec<String> = att
                .selectors
                .iter()
                .filter(|s| s.kind() == want.kind() && s.key() == want.key())
                .map(ToString::to_string)
                .collect();
            if have.is_empty() {
                format!(
                    "{want} (this process has no {}:{} selector)",
                    want.kind(),
                    want.key()
                )
            } else {
                format!("{want} (this process has {})", have.join(", "))
            }
        })
        .collect();
    format!(
        "{head}; closest entry {} (id {}) needs {}",
        entry.spiffe_id,
        entry.id,
        needs.join(" and ")
    )
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
        }
    }

    #[test]
    fn explanation_names_the_closest_entry_and_the_missing_selector() {
        let att = Attestation {
            selectors: set(&[
                "unix:uid:1000",
                "unix:gid:1000",
                "unix:path:/usr/bin/python3",
            ]),
            summary: "pid=7 uid=1000 gid=1000 path=/usr/bin/python3".into(),
        };
        let entries = vec![
            entry(
                "e1",
                "spiffe://td/ns/default/sa/reader",
                &["unix:uid:2000", "unix:gid:2000"],
            ),
            entry(
                "e2",
                "spiffe://td/ns/default/sa/writer",
                &["unix:uid:1001", "unix:path:/usr/bin/python3"],
            ),
        ];
        let text = explain_no_match(&att, &entries);
        assert!(
            text.starts_with("no registration entry matches this process (pid=7"),
            "{text}"
        );
        assert!(
            text.contains("closest entry spiffe://td/ns/default/sa/writer (id e2)"),
            "{text}"
        );
        assert!(
            text.contains("needs unix:uid:1001 (this process has unix:uid:1000)"),
            "{text}"
        );
        let none = explain_no_match(&att, &[]);
        assert!(none.contains("serves no entries"), "{none}");
    }

    #[test]
    fn expired_svids_are_never_served() {
        use std::time::Duration;
        let att = Attestation {
            selectors: set(&["unix:uid:1000"]),
            summary: "pid=7 uid=1000".into(),
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
