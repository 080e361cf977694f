//! Validation of registration entries before they are stored.

use std::time::Duration;

use agentmesh_spiffe::{Selector, SelectorSet, SpiffeId, TrustDomain};

/// Why an entry was refused. Each message names the field and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// The SPIFFE ID is malformed.
    #[error("invalid --spiffe-id {id:?}: {source}")]
    BadSpiffeId {
        /// What was given.
        id: String,
        /// The spec rule it breaks.
        source: agentmesh_spiffe::SpiffeIdError,
    },
    /// The SPIFFE ID is in another trust domain.
    #[error("--spiffe-id {0} is not in this server's trust domain {1}")]
    ForeignTrustDomain(String, String),
    /// The SPIFFE ID is one agentmesh itself issues to its nodes and server.
    #[error("--spiffe-id {0} is reserved: paths under /agentmesh/ belong to nodes and the server")]
    Reserved(String),
    /// The parent ID is malformed or foreign.
    #[error("invalid --parent-id {id:?}: {reason}")]
    BadParentId {
        /// What was given.
        id: String,
        /// Why it is refused.
        reason: String,
    },
    /// No selectors: the entry could never be matched safely.
    #[error("an entry needs at least one --selector (for example unix:uid:1000)")]
    NoSelectors,
    /// A selector is malformed.
    #[error("invalid --selector: {0}")]
    BadSelector(#[from] agentmesh_spiffe::SelectorError),
    /// A TTL out of range.
    #[error("invalid {field}: {seconds}s is outside 1s..={max}s")]
    BadTtl {
        /// `--x509-ttl` or `--jwt-ttl`.
        field: &'static str,
        /// What was given.
        seconds: i64,
        /// The largest allowed value.
        max: u64,
    },
    /// A DNS name that is not one.
    #[error(
        "invalid --dns-name {0:?}: use letters, digits, '-' and '.' labels of 1 to 63 characters"
    )]
    BadDnsName(String),
}

/// A validated entry, ready to store.
#[derive(Debug, Clone)]
pub struct ValidEntry {
    /// The SPIFFE ID granted.
    pub spiffe_id: SpiffeId,
    /// The node that serves it, if only one.
    pub parent_id: Option<SpiffeId>,
    /// Sorted, deduplicated selectors.
    pub selectors: SelectorSet,
    /// 0 means the server's default.
    pub x509_ttl: i64,
    /// 0 means the server's default.
    pub jwt_ttl: i64,
    /// Extra DNS SANs.
    pub dns_names: Vec<String>,
}

/// Limits that depend on the server's configuration.
#[derive(Debug, Clone, Copy)]
pub struct EntryLimits {
    /// The longest X.509-SVID TTL: half the intermediate's life, so an SVID is never cut short
    /// by the intermediate it chains to.
    pub max_x509_ttl: Duration,
    /// The longest JWT-SVID TTL.
    pub max_jwt_ttl: Duration,
}

/// The prefix of IDs agentmesh assigns itself.
pub const RESERVED_PREFIX: &str = "/agentmesh/";

/// Checks an entry as the admin API received it.
///
/// # Errors
/// The first field that is invalid, as an [`EntryError`].
#[allow(clippy::too_many_arguments)]
pub fn validate_entry(
    td: &TrustDomain,
    limits: EntryLimits,
    spiffe_id: &str,
    parent_id: &str,
    selectors: &[String],
    x509_ttl: i64,
    jwt_ttl: i64,
    dns_names: &[String],
) -> Result<ValidEntry, EntryError> {
    let id = SpiffeId::new(spiffe_id).map_err(|source| EntryError::BadSpiffeId {
        id: spiffe_id.to_owned(),
        source,
    })?;
    if !id.is_member_of(td) {
        return Err(EntryError::ForeignTrustDomain(
            id.to_string(),
            td.to_string(),
        ));
    }
    if id.path().starts_with(RESERVED_PREFIX) || id.path() == "/agentmesh" {
        return Err(EntryError::Reserved(id.to_string()));
    }
    let parent = if parent_id.is_empty() {
        None
    } else {
        let p = SpiffeId::new(parent_id).map_err(|e| EntryError::BadParentId {
            id: parent_id.to_owned(),
            reason: e.to_string(),
        })?;
        if !p.is_member_of(td) {
            return Err(EntryError::BadParentId {
                id: parent_id.to_owned(),
                reason: format!("not in trust domain {td}"),
            });
        }
        Some(p)
    };
    if selectors.is_empty() {
        return Err(EntryError::NoSelectors);
    }
    let selectors = selectors
        .iter()
        .map(|s| s.parse::<Selector>())
        .collect::<Result<SelectorSet, _>>()?;
    check_ttl("--x509-ttl", x509_ttl, limits.max_x509_ttl)?;
    check_ttl("--jwt-ttl", jwt_ttl, limits.max_jwt_ttl)?;
    for name in dns_names {
        if !is_dns_name(name) {
            return Err(EntryError::BadDnsName(name.clone()));
        }
    }
    Ok(ValidEntry {
        spiffe_id: id,
        parent_id: parent,
        selectors,
        x509_ttl,
        jwt_ttl,
        dns_names: dns_names.to_vec(),
    })
}

fn check_ttl(field: &'static str, seconds: i64, max: Duration) -> Result<(), EntryError> {
    if seconds == 0 || (1..=max.as_secs() as i64).contains(&seconds) {
        Ok(())
    } else {
        Err(EntryError::BadTtl {
            field,
            seconds,
            max: max.as_secs(),
        })
    }
}

fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_entries_with_the_field_named() {
        let td = TrustDomain::new("example.org").unwrap();
        let limits = EntryLimits {
            max_x509_ttl: Duration::from_secs(3600),
            max_jwt_ttl: Duration::from_secs(3600),
        };
        let sel = vec!["unix:uid:1000".to_string()];
        let ok = |id: &str, parent: &str, sel: &[String], ttl: i64, dns: &[String]| {
            validate_entry(&td, limits, id, parent, sel, ttl, 0, dns).map_err(|e| e.to_string())
        };
        assert!(ok("spiffe://example.org/w", "", &sel, 0, &[]).is_ok());
        type Case<'a> = (&'a str, &'a str, &'a [String], i64, &'a [String], &'a str);
        let cases: &[Case] = &[
            ("spiffe://example.org/w/", "", &sel, 0, &[], "--spiffe-id"),
            ("spiffe://other.org/w", "", &sel, 0, &[], "trust domain"),
            (
                "spiffe://example.org/agentmesh/node/x",
                "",
                &sel,
                0,
                &[],
                "reserved",
            ),
            (
                "spiffe://example.org/w",
                "nope",
                &sel,
                0,
                &[],
                "--parent-id",
            ),
            ("spiffe://example.org/w", "", &[], 0, &[], "--selector"),
            (
                "spiffe://example.org/w",
                "",
                &["unix:uid".into()],
                0,
                &[],
                "--selector",
            ),
            ("spiffe://example.org/w", "", &sel, -5, &[], "--x509-ttl"),
            (
                "spiffe://example.org/w",
                "",
                &sel,
                999_999,
                &[],
                "--x509-ttl",
            ),
            (
                "spiffe://example.org/w",
                "",
                &sel,
                0,
                &["bad_name".into()],
                "--dns-name",
            ),
        ];
        for (id, parent, sel, ttl, dns, want) in cases {
            let err = ok(id, parent, sel, *ttl, dns).unwrap_err();
            assert!(err.contains(want), "{id}: {err}");
        }
    }
}
