//! Validation of registration entries before they are stored.
//!
//! Input limits: at most [`MAX_SELECTORS`] selectors per entry (each bounded by the selector
//! parser: type and key 64 bytes, value 1024, no control characters), SPIFFE IDs of at most
//! 2048 bytes (the SPIFFE ID spec's limit; control characters and NUL are not path
//! characters), at most [`MAX_DNS_NAMES`] DNS names, each a valid hostname whose only wildcard
//! is a whole leftmost label over at least two more labels (`*.example.com`, never
//! `*.com`, `a*.example.com` or `foo.*.example.com`). Every message repeats user input only
//! through [`agentmesh_spiffe::echo`] (at most 200 characters, cut with an ellipsis).

use std::time::Duration;

use agentmesh_spiffe::{Selector, SelectorSet, SpiffeId, TrustDomain, echo};

use crate::state::SERVER_PATH;

/// The most selectors one entry may have.
pub const MAX_SELECTORS: usize = 32;

/// The most DNS names one entry may have.
pub const MAX_DNS_NAMES: usize = 32;

/// Why an entry was refused. Each message names the field and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// The SPIFFE ID is malformed.
    #[error("invalid --spiffe-id {}: {source}", echo(.id))]
    BadSpiffeId {
        /// What was given.
        id: String,
        /// The spec rule it breaks.
        source: agentmesh_spiffe::SpiffeIdError,
    },
    /// The SPIFFE ID is in another trust domain.
    #[error("--spiffe-id {} is not in this server's trust domain {}", echo(.0), .1)]
    ForeignTrustDomain(String, String),
    /// The SPIFFE ID is one agentmesh itself issues to its nodes and server.
    #[error("--spiffe-id {} is reserved: paths under /agentmesh/ belong to nodes and the server", echo(.0))]
    Reserved(String),
    /// The parent ID is malformed or foreign.
    #[error("invalid --parent-id {}: {reason}", echo(.id))]
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
    /// More selectors than `MAX_SELECTORS` (32).
    #[error("an entry has at most {max} selectors; this one has {count}")]
    TooManySelectors {
        /// How many were given.
        count: usize,
        /// The cap.
        max: usize,
    },
    /// More DNS names than `MAX_DNS_NAMES` (32).
    #[error("an entry has at most {max} --dns-name values; this one has {count}")]
    TooManyDnsNames {
        /// How many were given.
        count: usize,
        /// The cap.
        max: usize,
    },
    /// A wildcard DNS name where wildcards are not allowed.
    #[error(
        "invalid --dns-name {}: a wildcard must be the whole leftmost label over at least two more (*.example.com)", echo(.0)
    )]
    BadWildcard(String),
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
    /// A node alias (parent: the server's ID) with a selector that describes a workload.
    #[error(
        "a node alias (--node, or --parent-id {server_id}) matches nodes, so every --selector must describe a node (x509pop:subject:cn:NAME, x509pop:ca:fingerprint:HEX, x509pop:serialnumber:HEX); {} describes a workload", echo(.selector)
    )]
    AliasWorkloadSelector {
        /// The server's ID.
        server_id: String,
        /// The offending selector.
        selector: String,
    },
    /// A workload entry with a selector that describes a node.
    #[error(
        "--selector {} describes a node, not a workload; put it on a node alias (`entry create --node`) and give that alias's SPIFFE ID as this entry's --parent-id", echo(.0)
    )]
    NodeSelectorOnWorkload(String),
    /// A DNS name that is not one.
    #[error(
        "invalid --dns-name {}: use letters, digits, '-' and '.' labels of 1 to 63 characters, at most 253 in all", echo(.0)
    )]
    BadDnsName(String),
    /// A `--federates-with` value that is not another trust domain.
    #[error("invalid --federates-with {}: {reason}", echo(value))]
    BadFederatesWith {
        /// The value given.
        value: String,
        /// What is wrong.
        reason: String,
    },
}

/// A validated entry, ready to store.
#[derive(Debug, Clone)]
pub struct ValidEntry {
    /// The SPIFFE ID granted.
    pub spiffe_id: SpiffeId,
    /// The node that serves it, if only one; a node alias, whose nodes serve it; or the
    /// server's own ID, which makes this entry a node alias.
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
    // Counted before parsing, so a million selectors cost nothing.
    if selectors.len() > MAX_SELECTORS {
        return Err(EntryError::TooManySelectors {
            count: selectors.len(),
            max: MAX_SELECTORS,
        });
    }
    let selectors = selectors
        .iter()
        .map(|s| s.parse::<Selector>())
        .collect::<Result<SelectorSet, _>>()?;
    let server_id = SpiffeId::from_path(td, SERVER_PATH)
        .unwrap_or_else(|_| unreachable!("a constant, valid path"));
    if parent.as_ref() == Some(&server_id) {
        if let Some(s) = selectors.iter().find(|s| !s.is_node_selector()) {
            return Err(EntryError::AliasWorkloadSelector {
                server_id: server_id.to_string(),
                selector: s.to_string(),
            });
        }
    } else if let Some(s) = selectors.iter().find(|s| s.is_node_selector()) {
        return Err(EntryError::NodeSelectorOnWorkload(s.to_string()));
    }
    check_ttl("--x509-ttl", x509_ttl, limits.max_x509_ttl)?;
    check_ttl("--jwt-ttl", jwt_ttl, limits.max_jwt_ttl)?;
    if dns_names.len() > MAX_DNS_NAMES {
        return Err(EntryError::TooManyDnsNames {
            count: dns_names.len(),
            max: MAX_DNS_NAMES,
        });
    }
    for name in dns_names {
        check_dns_name(name)?;
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

/// The most `--federates-with` trust domains one entry may name.
pub const MAX_FEDERATES_WITH: usize = 32;

/// Checks an entry's `--federates-with` list: trust domain IDs (`spiffe://other.td`, or the
/// bare name), never the entry's own. Returns them as `spiffe://` IDs, sorted and deduplicated.
///
/// # Errors
/// [`EntryError::BadFederatesWith`] naming the first bad value.
pub fn validate_federates_with(
    td: &TrustDomain,
    federates_with: &[String],
) -> Result<Vec<String>, EntryError> {
    if federates_with.len() > MAX_FEDERATES_WITH {
        return Err(EntryError::BadFederatesWith {
            value: format!("{} values", federates_with.len()),
            reason: format!("at most {MAX_FEDERATES_WITH}"),
        });
    }
    let mut out = Vec::with_capacity(federates_with.len());
    for value in federates_with {
        let bad = |reason: String| EntryError::BadFederatesWith {
            value: value.clone(),
            reason,
        };
        let name = value.strip_prefix("spiffe://").unwrap_or(value);
        let other = TrustDomain::new(name).map_err(|e| bad(e.to_string()))?;
        if &other == td {
            return Err(bad(format!("{td} is this server's own trust domain")));
        }
        out.push(other.id_string());
    }
    out.sort();
    out.dedup();
    Ok(out)
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

/// A hostname of 1-63 character labels of letters, digits and inner `-`, at most 253
/// characters; a wildcard only as the whole leftmost label, with at least two labels after
/// it, so it never covers a whole TLD (`*.com`) or every name (`*`).
fn check_dns_name(name: &str) -> Result<(), EntryError> {
    let bad = || EntryError::BadDnsName(name.to_owned());
    if name.len() > 253 {
        return Err(bad());
    }
    let (wildcard, rest) = match name.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, name),
    };
    if rest.contains('*') || name == "*" {
        return Err(EntryError::BadWildcard(name.to_owned()));
    }
    let labels: Vec<&str> = rest.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if rest.is_empty() || !labels.iter().all(label_ok) {
        return Err(bad());
    }
    if wildcard && labels.len() < 2 {
        return Err(EntryError::BadWildcard(name.to_owned()));
    }
    Ok(())
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

    #[test]
    fn node_aliases_take_node_selectors_and_workload_entries_do_not() {
        let td = TrustDomain::new("example.org").unwrap();
        let limits = EntryLimits {
            max_x509_ttl: Duration::from_secs(3600),
            max_jwt_ttl: Duration::from_secs(3600),
        };
        let server = "spiffe://example.org/agentmesh/server";
        let check = |parent: &str, sel: &str| {
            validate_entry(
                &td,
                limits,
                "spiffe://example.org/hosts/a",
                parent,
                &[sel.to_owned()],
                0,
                0,
                &[],
            )
        };
        let alias = check(server, "x509pop:subject:cn:host-a").unwrap();
        assert_eq!(alias.parent_id.unwrap().to_string(), server);
        check(
            server,
            "x509pop:ca:fingerprint:0123456789abcdef0123456789abcdef01234567",
        )
        .unwrap();
        let err = check(server, "unix:uid:0").unwrap_err();
        assert!(
            matches!(err, EntryError::AliasWorkloadSelector { .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("\"unix:uid:0\" describes a workload"),
            "{err}"
        );
        for parent in ["", "spiffe://example.org/hosts/a"] {
            let err = check(parent, "x509pop:subject:cn:host-a").unwrap_err();
            assert!(
                matches!(err, EntryError::NodeSelectorOnWorkload(_)),
                "{err}"
            );
        }
        let err = check(server, "x509pop:subject:ou:x").unwrap_err();
        assert!(
            err.to_string().contains("unknown key \"subject:ou\""),
            "{err}"
        );
    }

    // One piece: the cases are one table of every malformed input and its own message, then
    // the inputs right at the limits that must pass; split, the two halves would not be seen
    // against each other.
    #[test]
    fn each_malformed_input_gets_its_own_bounded_error() {
        use agentmesh_spiffe::{SelectorError, SpiffeIdError};
        let td = TrustDomain::new("example.org").unwrap();
        let limits = EntryLimits {
            max_x509_ttl: Duration::from_secs(3600),
            max_jwt_ttl: Duration::from_secs(3600),
        };
        let good_id = "spiffe://example.org/w".to_owned();
        let sel = vec!["unix:uid:1000".to_owned()];
        let long_path = format!("spiffe://example.org/{}", "a".repeat(2048));
        let longest = format!("spiffe://example.org/{}", "a".repeat(2048 - 21));
        assert_eq!(longest.len(), 2048);
        let many_selectors: Vec<String> = (0..=MAX_SELECTORS)
            .map(|i| format!("unix:uid:{i}"))
            .collect();
        let exactly_max: Vec<String> = many_selectors[..MAX_SELECTORS].to_vec();
        let many_dns: Vec<String> = (0..=MAX_DNS_NAMES)
            .map(|i| format!("h{i}.example.com"))
            .collect();
        let huge_value = vec![format!("unix:path:/{}", "p".repeat(1_000_000))];
        type Check = fn(&EntryError) -> bool;
        struct Case {
            what: &'static str,
            id: String,
            selectors: Vec<String>,
            dns: Vec<String>,
            want: Check,
        }
        let case = |what, id: &str, selectors: &[String], dns: &[&str], want: Check| Case {
            what,
            id: id.to_owned(),
            selectors: selectors.to_vec(),
            dns: dns.iter().map(|d| (*d).to_owned()).collect(),
            want,
        };
        let cases = vec![
            case("id over 2048 bytes", &long_path, &sel, &[], |e| {
                matches!(
                    e,
                    EntryError::BadSpiffeId {
                        source: SpiffeIdError::TooLong(2069),
                        ..
                    }
                )
            }),
            case(
                "NUL in the id",
                "spiffe://example.org/w\0x",
                &sel,
                &[],
                |e| {
                    matches!(
                        e,
                        EntryError::BadSpiffeId {
                            source: SpiffeIdError::BadPathSegmentChar('\0'),
                            ..
                        }
                    )
                },
            ),
            case(
                "newline in the id",
                "spiffe://example.org/w\nx",
                &sel,
                &[],
                |e| {
                    matches!(
                        e,
                        EntryError::BadSpiffeId {
                            source: SpiffeIdError::BadPathSegmentChar('\n'),
                            ..
                        }
                    )
                },
            ),
            case(
                "escape in the trust domain",
                "spiffe://exa\u{1b}mple.org/w",
                &sel,
                &[],
                |e| {
                    matches!(
                        e,
                        EntryError::BadSpiffeId {
                            source: SpiffeIdError::BadTrustDomainChar('\u{1b}'),
                            ..
                        }
                    )
                },
            ),
            case("too many selectors", &good_id, &many_selectors, &[], |e| {
                matches!(e, EntryError::TooManySelectors { count: 33, max: 32 })
            }),
            case(
                "a selector value over 1024 bytes",
                &good_id,
                &huge_value,
                &[],
                |e| {
                    matches!(
                        e,
                        EntryError::BadSelector(SelectorError::TooLong { part: "value", .. })
                    )
                },
            ),
            case(
                "NUL in a selector",
                &good_id,
                &["unix:uid:1\u{0}".to_owned()],
                &[],
                |e| {
                    matches!(
                        e,
                        EntryError::BadSelector(SelectorError::ControlChar { ch: '\0', .. })
                    )
                },
            ),
            case(
                "DEL in a selector",
                &good_id,
                &["launcher:service:a\u{7f}".to_owned()],
                &[],
                |e| {
                    matches!(
                        e,
                        EntryError::BadSelector(SelectorError::ControlChar { ch: '\u{7f}', .. })
                    )
                },
            ),
            case("too many DNS names", &good_id, &sel, &[], |e| {
                matches!(e, EntryError::TooManyDnsNames { count: 33, max: 32 })
            }),
            case("wildcard over a TLD", &good_id, &sel, &["*.com"], |e| {
                matches!(e, EntryError::BadWildcard(_))
            }),
            case("bare wildcard", &good_id, &sel, &["*"], |e| {
                matches!(e, EntryError::BadWildcard(_))
            }),
            case(
                "wildcard inside a label",
                &good_id,
                &sel,
                &["a*.example.com"],
                |e| matches!(e, EntryError::BadWildcard(_)),
            ),
            case(
                "wildcard not leftmost",
                &good_id,
                &sel,
                &["foo.*.example.com"],
                |e| matches!(e, EntryError::BadWildcard(_)),
            ),
            case(
                "double wildcard",
                &good_id,
                &sel,
                &["*.*.example.com"],
                |e| matches!(e, EntryError::BadWildcard(_)),
            ),
            case(
                "NUL in a DNS name",
                &good_id,
                &sel,
                &["a\0.example.com"],
                |e| matches!(e, EntryError::BadDnsName(_)),
            ),
            case("trailing dot", &good_id, &sel, &["example.com."], |e| {
                matches!(e, EntryError::BadDnsName(_))
            }),
            case("label over 63", &good_id, &sel, &[], |e| {
                matches!(e, EntryError::BadDnsName(_))
            }),
        ];
        let long_label = format!("{}.example.com", "l".repeat(64));
        for mut c in cases {
            if c.what == "too many DNS names" {
                c.dns = many_dns.clone();
            }
            if c.what == "label over 63" {
                c.dns = vec![long_label.clone()];
            }
            let err =
                validate_entry(&td, limits, &c.id, "", &c.selectors, 0, 0, &c.dns).unwrap_err();
            assert!((c.want)(&err), "{}: {err:?}", c.what);
            let message = err.to_string();
            assert!(
                message.chars().count() <= 2 * agentmesh_spiffe::MAX_ECHO_CHARS + 200,
                "{}: message of {} chars",
                c.what,
                message.chars().count()
            );
            assert!(
                !message.chars().any(char::is_control),
                "{}: {message:?}",
                c.what
            );
        }

        // What is allowed right at the limits.
        let ok = |id: &str, sel: &[String], dns: &[&str]| {
            let dns: Vec<String> = dns.iter().map(|d| (*d).to_owned()).collect();
            validate_entry(&td, limits, id, "", sel, 0, 0, &dns)
        };
        ok(&longest, &sel, &[]).unwrap();
        ok(&good_id, &exactly_max, &[]).unwrap();
        ok(
            &good_id,
            &sel,
            &["*.example.com", "api.example.com", "localhost"],
        )
        .unwrap();
    }
}
