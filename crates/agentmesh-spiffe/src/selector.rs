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
    // A trusted launcher chooses its own keys.
    ("launcher", None),
];

/// Why a string is not a valid `TYPE:KEY:VALUE` selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectorError {
    /// Not three colon-separated, non-empty parts.
    #[error("selector {0:?} is not TYPE:KEY:VALUE (for example unix:uid:1000)")]
    Malformed(String),
    /// A type that no attestor produces.
    #[error("selector {0:?} has unknown type {1:?} (known: unix, launcher)")]
    UnknownType(String, String),
    /// A key that the type's attestor never produces.
    #[error("selector {0:?} has unknown key {1:?} for its type (known: {2})")]
    UnknownKey(String, String, String),
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
    /// An empty part, an unknown type or an unknown key.
    pub fn new(kind: &str, key: &str, value: &str) -> Result<Self, SelectorError> {
        let text = format!("{kind}:{key}:{value}");
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
                keys.join(", "),
            ));
        }
        Ok(Self {
            kind: kind.to_owned(),
            key: key.to_owned(),
            value: value.to_owned(),
        })
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
            ("", false),
        ];
        for (input, ok) in cases {
            assert_eq!(input.parse::<Selector>().is_ok(), *ok, "input {input:?}");
        }
        let s: Selector = "launcher:scenario:a:b".parse().unwrap();
        assert_eq!(s.value(), "a:b");
        assert_eq!(s.to_string(), "launcher:scenario:a:b");
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
