use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// The selector types agentmesh attests, with the keys each one knows. Entries are refused
/// when they use anything else, because a selector no attestor produces can never match and
/// would fail silently.
const KNOWN: &[(&str, Option<&[&str]>)] = &[
    (
        "unix",
        Some(&[
            "uid",
            "gid",
            "user",
            "group",
            "path",
            "sha256",
            "supplementary_gid",
            "supplementary_group",
        ]),
    ),
    // SPIRE's docker attestor's selectors, with SPIRE's meanings.
    (
        "docker",
        Some(&["label", "image_id", "image_config_digest", "env"]),
    ),
    // A trusted launcher chooses its own keys.
    ("launcher", None),
    // SPIRE's x509pop node attestor's selectors, with SPIRE's meanings. They describe nodes,
    // not workloads: only node alias entries use them (see [`NODE_SELECTOR_TYPES`]).
    ("x509pop", Some(&["subject", "ca", "serialnumber"])),
];

/// Keys whose value starts with a sub-key of its own, as SPIRE spells them
/// (`x509pop:subject:cn:NAME`, `x509pop:ca:fingerprint:HEX`): type, key, the sub-keys known.
const SUBKEYS: &[(&str, &str, &[&str])] = &[
    ("x509pop", "subject", &["cn"]),
    ("x509pop", "ca", &["fingerprint"]),
];

/// The selector types that describe a node (from its attestation), not a workload. An entry
/// with these is a node alias; an entry for workloads never carries them.
pub const NODE_SELECTOR_TYPES: &[&str] = &["x509pop"];

/// The longest selector type or key, in bytes (launchers choose their own keys).
pub const MAX_SELECTOR_KEY_LEN: usize = 64;

/// The longest selector value, in bytes: room for any realistic executable path
/// (`unix:path`) or digest, far below what would let one entry bloat every sync message.
pub const MAX_SELECTOR_VALUE_LEN: usize = 1024;

/// Why a string is not a valid `TYPE:KEY:VALUE` selector. The selector is repeated in the
/// message only through [`crate::echo`], so at most 200 characters of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectorError {
    /// Not three colon-separated, non-empty parts.
    #[error("selector {} is not TYPE:KEY:VALUE (for example unix:uid:1000)", crate::echo(.0))]
    Malformed(String),
    /// A type that no attestor produces.
    #[error("selector {} has unknown type {} (known: unix, docker, launcher, x509pop)", crate::echo(.0), crate::echo(.1))]
    UnknownType(String, String),
    /// A key that the type's attestor never produces.
    #[error("selector {} has unknown key {} for its type (known: {})", crate::echo(.0), crate::echo(.1), .2)]
    UnknownKey(String, String, String),
    /// A value the type's attestor never produces in this form.
    #[error("selector {} has a malformed value: {reason}", crate::echo(.selector))]
    BadValue {
        /// The selector as given.
        selector: String,
        /// What the value must look like.
        reason: &'static str,
    },
    /// A part longer than [`MAX_SELECTOR_KEY_LEN`] (type, key) or [`MAX_SELECTOR_VALUE_LEN`]
    /// (value).
    #[error("selector {} has a {part} of {len} bytes; at most {max} are allowed", crate::echo(.selector))]
    TooLong {
        /// The selector as given.
        selector: String,
        /// `type`, `key` or `value`.
        part: &'static str,
        /// Its length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A NUL or other control character: no attestor produces one, and it would corrupt logs
    /// and terminals.
    #[error("selector {} has the control character {ch:?} in its {part}; selectors are printable text", crate::echo(.selector))]
    ControlChar {
        /// The selector as given.
        selector: String,
        /// `type`, `key` or `value`.
        part: &'static str,
        /// The character.
        ch: char,
    },
}

/// One attested fact about a workload, such as `unix:uid:1000`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    kind: String,
    key: String,
    value: String,
}

impl Selector {
    /// Builds a selector from its parts, validating them.
    ///
    /// # Errors
    /// An empty part, a part too long, a control character, an unknown type or an unknown
    /// key.
    pub fn new(kind: &str, key: &str, value: &str) -> Result<Self, SelectorError> {
        // Only the first bytes of a huge value are kept for the message.
        let text = {
            let mut end = value.len().min(4 * crate::MAX_ECHO_CHARS + 4);
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            format!("{kind}:{key}:{}", &value[..end])
        };
        for (part, s, max) in [
            ("type", kind, MAX_SELECTOR_KEY_LEN),
            ("key", key, MAX_SELECTOR_KEY_LEN),
            ("value", value, MAX_SELECTOR_VALUE_LEN),
        ] {
            if s.len() > max {
                return Err(SelectorError::TooLong {
                    selector: text,
                    part,
                    len: s.len(),
                    max,
                });
            }
            if let Some(ch) = s.chars().find(|c| c.is_control()) {
                return Err(SelectorError::ControlChar {
                    selector: text,
                    part,
                    ch,
                });
            }
        }
        if kind.is_empty() || key.is_empty() || value.is_empty() || key.contains(':') {
            return Err(SelectorError::Malformed(text));
        }
        let Some((_, keys)) = KNOWN.iter().find(|(k, _)| *k == kind) else {
            return Err(SelectorError::UnknownType(text, kind.to_owned()));
        };
        if let Some(keys) = keys
            && !keys.contains(&key)
        {
            return Err(SelectorError::UnknownKey(
                text,
                key.to_owned(),
                known_keys(kind, keys),
            ));
        }
        check_value(kind, key, value, &text)?;
        Ok(Self {
            kind: kind.to_owned(),
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }

    /// Whether this selector describes a node ([`NODE_SELECTOR_TYPES`]) rather than a
    /// workload.
    pub fn is_node_selector(&self) -> bool {
        NODE_SELECTOR_TYPES.contains(&self.kind.as_str())
    }

    /// The attestor type, such as `unix`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The key within the type, such as `uid`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value, such as `1000`. It may itself contain colons.
    pub fn value(&self) -> &str {
        &self.value
    }
}

/// The keys of `kind` as the error lists them: with their sub-keys where they have some.
fn known_keys(kind: &str, keys: &[&str]) -> String {
    keys.iter()
        .map(
            |k| match SUBKEYS.iter().find(|(t, key, _)| *t == kind && key == k) {
                Some((_, _, subs)) => subs
                    .iter()
                    .map(|s| format!("{k}:{s}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                None => (*k).to_owned(),
            },
        )
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks the sub-key of a value that has one, and the shape of values an attestor produces
/// in one exact form (hex digests), so an entry that could never match is refused.
fn check_value(kind: &str, key: &str, value: &str, text: &str) -> Result<(), SelectorError> {
    if let Some((_, _, subs)) = SUBKEYS.iter().find(|(t, k, _)| *t == kind && *k == key) {
        let (sub, rest) = value.split_once(':').unwrap_or((value, ""));
        if !subs.contains(&sub) || rest.is_empty() {
            let keys = KNOWN
                .iter()
                .find(|(t, _)| *t == kind)
                .and_then(|(_, k)| *k)
                .unwrap_or_default();
            return Err(SelectorError::UnknownKey(
                text.to_owned(),
                format!("{key}:{sub}"),
                known_keys(kind, keys),
            ));
        }
        if (kind, key, sub) == ("x509pop", "ca", "fingerprint") && !is_lower_hex(rest, 40) {
            return Err(SelectorError::BadValue {
                selector: text.to_owned(),
                reason: "x509pop:ca:fingerprint takes the SHA-1 of the CA certificate as 40 \
                         lowercase hex digits, without colons",
            });
        }
    }
    if (kind, key) == ("x509pop", "serialnumber")
        && !value
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    {
        return Err(SelectorError::BadValue {
            selector: text.to_owned(),
            reason: "x509pop:serialnumber takes the serial number as lowercase hex digits",
        });
    }
    Ok(())
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.kind, self.key, self.value)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    /// # Examples
    /// ```
    /// let s: agentmesh_spiffe::Selector = "unix:path:/usr/bin/python3".parse().unwrap();
    /// assert_eq!((s.kind(), s.key(), s.value()), ("unix", "path", "/usr/bin/python3"));
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(kind), Some(key), Some(value)) => Self::new(kind, key, value),
            _ => Err(SelectorError::Malformed(s.to_owned())),
        }
    }
}

/// The selectors of one workload or one entry, in a stable order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct SelectorSet(BTreeSet<Selector>);

impl SelectorSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one selector.
    pub fn insert(&mut self, selector: Selector) {
        self.0.insert(selector);
    }

    /// Whether every selector of `self` is in `other`: SPIRE's "subset" match, by which an
    /// entry matches a workload.
    pub fn is_subset_of(&self, other: &SelectorSet) -> bool {
        self.0.is_subset(&other.0)
    }

    /// The selectors of `self` that `other` lacks.
    pub fn missing_from<'a>(
        &'a self,
        other: &'a SelectorSet,
    ) -> impl Iterator<Item = &'a Selector> {
        self.0.difference(&other.0)
    }

    /// Iterates in sorted order.
    pub fn iter(&self) -> impl Iterator<Item = &Selector> {
        self.0.iter()
    }

    /// How many selectors there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<Selector> for SelectorSet {
    fn from_iter<I: IntoIterator<Item = Selector>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl fmt::Display for SelectorSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_selectors() {
        let cases: &[(&str, bool)] = &[
            ("unix:uid:1000", true),
            ("unix:path:/usr/bin/python3", true),
            ("unix:sha256:ab12", true),
            ("launcher:service:planner", true),
            ("launcher:scenario:a:b", true),
            ("unix:uid", false),
            ("unix::1000", false),
            ("unix:uid:", false),
            (":uid:1000", false),
            ("k8s:ns:default", false),
            ("unix:shoe:1", false),
            ("x509pop:subject:cn:host-a", true),
            ("x509pop:subject:cn:a:b", true),
            (
                "x509pop:ca:fingerprint:0123456789abcdef0123456789abcdef01234567",
                true,
            ),
            ("x509pop:serialnumber:0a1b", true),
            ("x509pop:subject:ou:x", false),
            ("x509pop:subject:cn:", false),
            ("x509pop:subject:cn", false),
            ("x509pop:ca:fingerprint:AB:CD", false),
            ("x509pop:ca:subject:x", false),
            ("x509pop:san:dns:x", false),
            ("x509pop:serialnumber:0A", false),
            ("", false),
        ];
        for (input, ok) in cases {
            assert_eq!(input.parse::<Selector>().is_ok(), *ok, "input {input:?}");
        }
        let longest_value = format!("unix:path:/{}", "a".repeat(MAX_SELECTOR_VALUE_LEN - 1));
        assert!(longest_value.parse::<Selector>().is_ok());
        let longest_key = format!("launcher:{}:v", "k".repeat(MAX_SELECTOR_KEY_LEN));
        assert!(longest_key.parse::<Selector>().is_ok());
        let s: Selector = "launcher:scenario:a:b".parse().unwrap();
        assert_eq!(s.value(), "a:b");
        assert_eq!(s.to_string(), "launcher:scenario:a:b");
    }

    #[test]
    fn malformed_selectors_get_one_specific_bounded_error() {
        let huge = format!("unix:path:/{}", "a".repeat(100_000));
        let long_key = format!("launcher:{}:x", "k".repeat(MAX_SELECTOR_KEY_LEN + 1));
        let long_type = format!("{}:k:x", "t".repeat(MAX_SELECTOR_KEY_LEN + 1));
        type Check = fn(&SelectorError) -> bool;
        let cases: Vec<(&str, Check)> = vec![
            (&huge, |e| {
                matches!(
                    e,
                    SelectorError::TooLong {
                        part: "value",
                        len: 100_001,
                        max: 1024,
                        ..
                    }
                )
            }),
            (&long_key, |e| {
                matches!(e, SelectorError::TooLong { part: "key", .. })
            }),
            (&long_type, |e| {
                matches!(e, SelectorError::TooLong { part: "type", .. })
            }),
            ("unix:uid:10\u{0}00", |e| {
                matches!(
                    e,
                    SelectorError::ControlChar {
                        part: "value",
                        ch: '\0',
                        ..
                    }
                )
            }),
            ("launcher:serv\nice:x", |e| {
                matches!(
                    e,
                    SelectorError::ControlChar {
                        part: "key",
                        ch: '\n',
                        ..
                    }
                )
            }),
            ("unix:path:/bin/\u{1b}[31m", |e| {
                matches!(e, SelectorError::ControlChar { ch: '\u{1b}', .. })
            }),
            ("unix:path:/bin/x\u{7f}", |e| {
                matches!(e, SelectorError::ControlChar { ch: '\u{7f}', .. })
            }),
            ("unix:uid", |e| matches!(e, SelectorError::Malformed(_))),
            ("k8s:ns:default", |e| {
                matches!(e, SelectorError::UnknownType(..))
            }),
            ("unix:shoe:1", |e| {
                matches!(e, SelectorError::UnknownKey(..))
            }),
            ("x509pop:agent:x", |e| {
                matches!(e, SelectorError::UnknownKey(..))
            }),
            (
                "x509pop:subject:o:acme",
                |e| matches!(e, SelectorError::UnknownKey(_, k, known) if k == "subject:o" && known == "subject:cn, ca:fingerprint, serialnumber"),
            ),
            ("x509pop:ca:fingerprint:AB:CD:EF", |e| {
                matches!(e, SelectorError::BadValue { .. })
            }),
        ];
        for (input, want) in cases {
            let err = input.parse::<Selector>().unwrap_err();
            assert!(want(&err), "{}: {err:?}", crate::echo(input));
            let message = err.to_string();
            assert!(
                message.chars().count() < crate::MAX_ECHO_CHARS + 150,
                "message too long: {message}"
            );
            assert!(!message.chars().any(|c| c.is_control()), "{message}");
        }
        // The unknown type of a huge selector is echoed bounded too.
        let err = format!("{}:k:v", "t".repeat(60))
            .parse::<Selector>()
            .unwrap_err();
        assert!(matches!(err, SelectorError::UnknownType(..)), "{err}");
    }

    #[test]
    fn only_x509pop_selectors_describe_nodes() {
        let node: Selector = "x509pop:subject:cn:host-a".parse().unwrap();
        let workload: Selector = "unix:uid:0".parse().unwrap();
        assert!(node.is_node_selector());
        assert!(!workload.is_node_selector());
        let err = "x509pop:subject:o:acme".parse::<Selector>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "selector \"x509pop:subject:o:acme\" has unknown key \"subject:o\" for its type (known: \
             subject:cn, ca:fingerprint, serialnumber)"
        );
    }

    #[test]
    fn subset_matching_and_missing() {
        let set = |v: &[&str]| {
            v.iter()
                .map(|s| s.parse::<Selector>().unwrap())
                .collect::<SelectorSet>()
        };
        let workload = set(&["unix:uid:1000", "unix:gid:1000", "unix:user:me"]);
        assert!(set(&["unix:uid:1000"]).is_subset_of(&workload));
        assert!(set(&[]).is_subset_of(&workload));
        let entry = set(&["unix:uid:1000", "unix:uid:1001"]);
        assert!(!entry.is_subset_of(&workload));
        let missing: Vec<String> = entry
            .missing_from(&workload)
            .map(|s| s.to_string())
            .collect();
        assert_eq!(missing, ["unix:uid:1001"]);
    }
}
