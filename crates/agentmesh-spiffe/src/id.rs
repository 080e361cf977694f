use std::fmt;
use std::str::FromStr;

const SCHEME: &str = "spiffe://";
/// The SPIFFE ID spec caps a SPIFFE ID at 2048 bytes and a trust domain at 255.
const MAX_ID_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not a valid SPIFFE ID or trust domain, in the spec's own terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// The input was empty.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// The scheme was not exactly `spiffe://`.
    #[error("scheme must be exactly 'spiffe://' (lowercase)")]
    WrongScheme,
    /// Nothing between `spiffe://` and the path.
    #[error("trust domain is missing")]
    MissingTrustDomain,
    /// A character outside `[a-z0-9.-_]` in the trust domain.
    #[error(
        "trust domain has the character {0:?}; only lowercase letters, digits, '.', '-' and '_' are allowed (no port, user info or uppercase)"
    )]
    BadTrustDomainChar(char),
    /// A character outside `[a-zA-Z0-9.-_]` in a path segment.
    #[error(
        "path has the character {0:?}; only letters, digits, '.', '-' and '_' are allowed (no percent-encoding, query or fragment)"
    )]
    BadPathSegmentChar(char),
    /// `//` in the path.
    #[error("path has an empty segment ('//')")]
    EmptySegment,
    /// A `.` or `..` segment.
    #[error("path has a '.' or '..' segment")]
    DotSegment,
    /// The path ends in `/`.
    #[error("path has a trailing '/'")]
    TrailingSlash,
    /// A path that does not start with `/`.
    #[error("path must start with '/'")]
    NoLeadingSlash,
    /// Longer than the spec allows.
    #[error("too long: {0} bytes (SPIFFE IDs are at most 2048 bytes, trust domains 255)")]
    TooLong(usize),
    /// A service name that is not `name` or `namespace/name`.
    #[error("service name {} is not 'name' or 'namespace/name'", crate::echo(.0))]
    BadServiceName(String),
}

/// A validated SPIFFE trust domain name, such as `agentmesh.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a trust domain name, with or without the `spiffe://` prefix.
    ///
    /// # Errors
    /// Any violation of the SPIFFE ID spec's trust domain rules.
    ///
    /// # Examples
    /// ```
    /// let td = agentmesh_spiffe::TrustDomain::new("spiffe://agentmesh.local").unwrap();
    /// assert_eq!(td.as_str(), "agentmesh.local");
    /// ```
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        let name = name.strip_prefix(SCHEME).unwrap_or(name);
        if name.is_empty() {
            return Err(SpiffeIdError::MissingTrustDomain);
        }
        if name.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(SpiffeIdError::TooLong(name.len()));
        }
        if let Some(c) = name.chars().find(|c| !is_trust_domain_char(*c)) {
            return Err(SpiffeIdError::BadTrustDomainChar(c));
        }
        Ok(Self(name.to_owned()))
    }

    /// The bare name, such as `agentmesh.local`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID string, `spiffe://<name>`, which keys bundle maps.
    pub fn id_string(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A validated SPIFFE ID: `spiffe://<trust-domain><path>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    path: String,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID against the SPIFFE ID spec.
    ///
    /// # Errors
    /// The first rule of the spec that the input breaks.
    ///
    /// # Examples
    /// ```
    /// use agentmesh_spiffe::SpiffeId;
    /// let id: SpiffeId = "spiffe://agentmesh.local/ns/default/sa/planner".parse().unwrap();
    /// assert_eq!(id.path(), "/ns/default/sa/planner");
    /// assert!("spiffe://agentmesh.local/ns/../sa".parse::<SpiffeId>().is_err());
    /// ```
    pub fn new(id: &str) -> Result<Self, SpiffeIdError> {
        if id.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if id.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong(id.len()));
        }
        let rest = id.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let trust_domain = TrustDomain::new(td)?;
        validate_path(path)?;
        Ok(Self {
            trust_domain,
            path: path.to_owned(),
        })
    }

    /// Builds an ID from a trust domain and a path, validating the path.
    ///
    /// # Errors
    /// The first path rule of the spec that `path` breaks.
    pub fn from_path(trust_domain: &TrustDomain, path: &str) -> Result<Self, SpiffeIdError> {
        if !path.is_empty() && !path.starts_with('/') {
            return Err(SpiffeIdError::NoLeadingSlash);
        }
        let len = SCHEME.len() + trust_domain.as_str().len() + path.len();
        if len > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong(len));
        }
        validate_path(path)?;
        Ok(Self {
            trust_domain: trust_domain.clone(),
            path: path.to_owned(),
        })
    }

    /// Resolves a service name to its SPIFFE ID: `planner` is
    /// `spiffe://<td>/ns/default/sa/planner` and `team/planner` is
    /// `spiffe://<td>/ns/team/sa/planner`. A full SPIFFE ID is accepted as it is.
    ///
    /// # Errors
    /// A name that is neither a SPIFFE ID nor `name` / `namespace/name` made of valid segments.
    ///
    /// # Examples
    /// ```
    /// use agentmesh_spiffe::{SpiffeId, TrustDomain};
    /// let td = TrustDomain::new("agentmesh.local").unwrap();
    /// let id = SpiffeId::from_service_name(&td, "team/planner").unwrap();
    /// assert_eq!(id.to_string(), "spiffe://agentmesh.local/ns/team/sa/planner");
    /// ```
    pub fn from_service_name(
        trust_domain: &TrustDomain,
        name: &str,
    ) -> Result<Self, SpiffeIdError> {
        if name.starts_with(SCHEME) {
            return Self::new(name);
        }
        let (ns, sa) = match name.split_once('/') {
            Some((ns, sa)) => (ns, sa),
            None => ("default", name),
        };
        if ns.is_empty() || sa.is_empty() || sa.contains('/') {
            return Err(SpiffeIdError::BadServiceName(name.to_owned()));
        }
        Self::from_path(trust_domain, &format!("/ns/{ns}/sa/{sa}"))
    }

    /// The trust domain the ID belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether the ID belongs to `trust_domain`.
    pub fn is_member_of(&self, trust_domain: &TrustDomain) -> bool {
        &self.trust_domain == trust_domain
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}{}", self.trust_domain, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for SpiffeId {
    type Error = SpiffeIdError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

fn is_trust_domain_char(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_')
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err(SpiffeIdError::TrailingSlash);
    }
    for segment in path[1..].split('/') {
        if segment.is_empty() {
            return Err(SpiffeIdError::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        if let Some(c) = segment.chars().find(|c| !is_path_char(*c)) {
            return Err(SpiffeIdError::BadPathSegmentChar(c));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Valid and invalid IDs, most of them the examples of the SPIFFE ID spec
    /// (standards/SPIFFE-ID.md) and of go-spiffe's `spiffeid` tests.
    #[test]
    fn parses_ids_as_the_spec_says() {
        use SpiffeIdError::*;
        /// The trust domain and path an ID should split into, or the error it should give.
        type Expected = Result<(&'static str, &'static str), SpiffeIdError>;
        let cases: &[(&str, Expected)] = &[
            ("spiffe://example.org", Ok(("example.org", ""))),
            (
                "spiffe://example.org/workload",
                Ok(("example.org", "/workload")),
            ),
            (
                "spiffe://example.org/ns/default/sa/web",
                Ok(("example.org", "/ns/default/sa/web")),
            ),
            ("spiffe://a-b_c.d/P.a-t_h/0", Ok(("a-b_c.d", "/P.a-t_h/0"))),
            (
                "spiffe://example.org/..a/b..",
                Ok(("example.org", "/..a/b..")),
            ),
            ("", Err(Empty)),
            ("http://example.org/workload", Err(WrongScheme)),
            ("SPIFFE://example.org/workload", Err(WrongScheme)),
            ("spiffe:/example.org", Err(WrongScheme)),
            ("example.org/workload", Err(WrongScheme)),
            ("spiffe://", Err(MissingTrustDomain)),
            ("spiffe:///workload", Err(MissingTrustDomain)),
            (
                "spiffe://Example.org/workload",
                Err(BadTrustDomainChar('E')),
            ),
            (
                "spiffe://example.org:8080/workload",
                Err(BadTrustDomainChar(':')),
            ),
            (
                "spiffe://user:pass@example.org/workload",
                Err(BadTrustDomainChar(':')),
            ),
            (
                "spiffe://user@example.org/workload",
                Err(BadTrustDomainChar('@')),
            ),
            ("spiffe://example.org/", Err(TrailingSlash)),
            ("spiffe://example.org/workload/", Err(TrailingSlash)),
            ("spiffe://example.org//workload", Err(EmptySegment)),
            ("spiffe://example.org/./workload", Err(DotSegment)),
            ("spiffe://example.org/../workload", Err(DotSegment)),
            ("spiffe://example.org/workload/..", Err(DotSegment)),
            (
                "spiffe://example.org/work%20load",
                Err(BadPathSegmentChar('%')),
            ),
            (
                "spiffe://example.org/workload?query=1",
                Err(BadPathSegmentChar('?')),
            ),
            (
                "spiffe://example.org/workload#fragment",
                Err(BadPathSegmentChar('#')),
            ),
            ("spiffe://example.org/wörk", Err(BadPathSegmentChar('ö'))),
            ("spiffe://exa mple.org", Err(BadTrustDomainChar(' '))),
        ];
        for (input, want) in cases {
            let got = SpiffeId::new(input)
                .map(|id| (id.trust_domain().as_str().to_owned(), id.path().to_owned()));
            let want = want.clone().map(|(t, p)| (t.to_owned(), p.to_owned()));
            assert_eq!(got, want, "input {input:?}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["spiffe://example.org", "spiffe://example.org/a/b"] {
            assert_eq!(SpiffeId::new(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn rejects_overlong_ids_and_trust_domains() {
        let long_path = format!("spiffe://example.org/{}", "a".repeat(2100));
        assert!(matches!(
            SpiffeId::new(&long_path),
            Err(SpiffeIdError::TooLong(_))
        ));
        let long_td = format!("spiffe://{}/x", "a".repeat(256));
        assert!(matches!(
            SpiffeId::new(&long_td),
            Err(SpiffeIdError::TooLong(_))
        ));
    }

    #[test]
    fn service_names_resolve_to_ids() {
        let td = TrustDomain::new("agentmesh.local").unwrap();
        let cases = [
            (
                "planner",
                Some("spiffe://agentmesh.local/ns/default/sa/planner"),
            ),
            (
                "team/planner",
                Some("spiffe://agentmesh.local/ns/team/sa/planner"),
            ),
            ("spiffe://other.td/x", Some("spiffe://other.td/x")),
            ("a/b/c", None),
            ("/planner", None),
            ("plan ner", None),
            ("", None),
        ];
        for (name, want) in cases {
            let got = SpiffeId::from_service_name(&td, name)
                .ok()
                .map(|i| i.to_string());
            assert_eq!(got.as_deref(), want, "name {name:?}");
        }
    }
}
