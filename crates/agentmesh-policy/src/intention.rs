//! The intention model: what a user writes ([`IntentionSpec`], strict JSON) and what the
//! evaluator uses ([`Intention`], validated, names resolved to SPIFFE IDs, regexes compiled).

use std::fmt;

use agentmesh_spiffe::{SpiffeId, SpiffeIdError, TrustDomain};
use serde::{Deserialize, Serialize};

use crate::a2a::{A2aRule, A2aRuleError, A2aSpec};
use crate::mcp::{McpRule, McpRuleError, McpSpec, UserRule, UserSpec};

/// Why an intention was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IntentionError {
    /// The document is not valid JSON, has an unknown field, or a value of the wrong type.
    #[error("intention document: {0}")]
    Document(#[from] serde_json::Error),
    /// `source` is not a SPIFFE ID, a service name or `*`.
    #[error("source {name:?} is not a SPIFFE ID, a service name or '*': {error}")]
    BadSource {
        /// What was given.
        name: String,
        /// Why it is not an ID.
        error: SpiffeIdError,
    },
    /// `destination` is not a SPIFFE ID, a service name or `*`.
    #[error("destination {name:?} is not a SPIFFE ID, a service name or '*': {error}")]
    BadDestination {
        /// What was given.
        name: String,
        /// Why it is not an ID.
        error: SpiffeIdError,
    },
    /// A method that is not an HTTP token.
    #[error("permission {index}: method {method:?} is not an HTTP method token")]
    BadMethod {
        /// 1-based position of the permission.
        index: usize,
        /// What was given.
        method: String,
    },
    /// More than one of `path_exact`, `path_prefix`, `path_regex`.
    #[error("permission {index}: set at most one of path_exact, path_prefix and path_regex")]
    ManyPathMatches {
        /// 1-based position of the permission.
        index: usize,
    },
    /// An exact or prefix path that does not start with `/`.
    #[error("permission {index}: path {path:?} must start with '/'")]
    RelativePath {
        /// 1-based position of the permission.
        index: usize,
        /// What was given.
        path: String,
    },
    /// A header match with no name.
    #[error("permission {index}: a header match needs a name")]
    EmptyHeaderName {
        /// 1-based position of the permission.
        index: usize,
    },
    /// A header match with zero or several of present/exact/prefix/suffix/regex.
    #[error(
        "permission {index}: header {name:?} must set exactly one of present, exact, prefix, suffix and regex"
    )]
    HeaderMatchCount {
        /// 1-based position of the permission.
        index: usize,
        /// The header name.
        name: String,
    },
    /// `present: false`, which would read as "absent" but is spelled `present` + `invert`.
    #[error(
        "permission {index}: header {name:?}: write `present: true, invert: true` to require that a header is absent"
    )]
    PresentFalse {
        /// 1-based position of the permission.
        index: usize,
        /// The header name.
        name: String,
    },
    /// A regex that does not compile.
    #[error("permission {index}: regex {pattern:?} does not compile: {error}")]
    BadRegex {
        /// 1-based position of the permission.
        index: usize,
        /// What was given.
        pattern: String,
        /// The compiler's message.
        error: String,
    },
    /// A description longer than 1024 bytes.
    #[error("description is {0} bytes; the limit is 1024")]
    DescriptionTooLong(usize),
    /// An owner that is too long or has control characters.
    #[error("owner must be at most {OWNER_MAX} printable characters")]
    BadOwner,
    /// A bad `mcp` or `user` part.
    #[error("permission {index}: {error}")]
    Mcp {
        /// 1-based position of the permission.
        index: usize,
        /// What is wrong with it.
        error: McpRuleError,
    },
    /// A bad `a2a` part.
    #[error("permission {index}: {error}")]
    A2a {
        /// 1-based position of the permission.
        index: usize,
        /// What is wrong with it.
        error: A2aRuleError,
    },
    /// Some permissions name MCP items and others A2A methods: the sidecar reads each
    /// request body as one protocol, so one intention is about one of them.
    #[error(
        "permissions {mcp} and {a2a}: an intention's permissions name MCP items or A2A methods, not both; a destination's POST bodies are read as one protocol"
    )]
    McpAndA2a {
        /// 1-based position of a permission with `mcp`.
        mcp: usize,
        /// 1-based position of a permission with `a2a`.
        a2a: usize,
    },
}

/// The longest `owner` accepted.
pub const OWNER_MAX: usize = 128;

/// The owner `agentmesh up` gives the intentions it applies from scenario `name`: a restart of
/// `up` replaces exactly those, and keeps every intention an operator made.
pub fn scenario_owner(name: &str) -> String {
    format!("up:{name}")
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the traffic through.
    Allow,
    /// Refuse it.
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

impl std::str::FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(Action::Allow),
            "deny" => Ok(Action::Deny),
            other => Err(format!("action {other:?} is not 'allow' or 'deny'")),
        }
    }
}

/// An intention as written: the JSON document `intention create --file` reads and the
/// server stores. Unknown fields are refused rather than ignored, so a typo such as
/// `path_prefx` cannot silently widen what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentionSpec {
    /// A SPIFFE ID, a service name (`planner`, `team/planner`) or `*`.
    pub source: String,
    /// A SPIFFE ID, a service name or `*`.
    pub destination: String,
    /// What happens when this intention is the one that matches (and, with permissions,
    /// the default action of each permission).
    pub action: Action,
    /// L7 rules, checked top to bottom; the first that matches decides. A request that
    /// matches none is denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<PermissionSpec>,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Who manages it: `up:SCENARIO` for the intentions `agentmesh up` applied from a
    /// scenario ([`scenario_owner`]); empty for an operator's (the CLI, the admin API).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
}

/// One L7 permission as written.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionSpec {
    /// Defaults to the intention's action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// What the request must look like.
    #[serde(default)]
    pub http: HttpSpec,
    /// The MCP tools, resources and prompts this permission is about; with it, the
    /// permission matches only MCP calls to what it names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpSpec>,
    /// Claims the verified user token must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserSpec>,
    /// The A2A methods this permission is about; with it, the permission matches only A2A
    /// calls to the methods it names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a2a: Option<A2aSpec>,
}

/// HTTP request criteria; every one that is set must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// Any of these methods; empty means any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// The path (without the query) equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_exact: Option<String>,
    /// The path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// The whole path matches this regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// Every header match must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderSpec>,
}

/// One header criterion as written: a name and exactly one way to match.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderSpec {
    /// Case-insensitive header name.
    pub name: String,
    /// The header is present (with any value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// The value equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The value starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The value ends with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// The whole value matches this regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Negates the match.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
}

/// Who an intention is about: one identity, or everyone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// `*`.
    Any,
    /// Exactly this SPIFFE ID.
    Id(SpiffeId),
}

impl Target {
    fn parse(td: &TrustDomain, name: &str) -> Result<Self, SpiffeIdError> {
        if name == "*" {
            return Ok(Target::Any);
        }
        SpiffeId::from_service_name(td, name).map(Target::Id)
    }

    /// Whether `id` is covered.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Target::Any => true,
            Target::Id(own) => own == id,
        }
    }

    /// Whether this is a single identity rather than the wildcard.
    pub fn is_exact(&self) -> bool {
        matches!(self, Target::Id(_))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Any => f.write_str("*"),
            Target::Id(id) => id.fmt(f),
        }
    }
}

/// A validated intention.
#[derive(Debug, Clone)]
pub struct Intention {
    /// Assigned by the server.
    pub id: String,
    /// Who may (or may not) call.
    pub source: Target,
    /// Who is called.
    pub destination: Target,
    /// Allow or deny.
    pub action: Action,
    /// L7 rules; empty means the intention decides whole connections.
    pub permissions: Vec<Permission>,
    /// Free text.
    pub description: String,
    /// Unix seconds.
    pub created_at: i64,
}

impl Intention {
    /// Whether a permission names MCP items, so the proxy must read each MCP message to
    /// decide (and every item no permission names is refused).
    pub fn has_mcp(&self) -> bool {
        self.permissions.iter().any(|p| p.mcp.is_some())
    }

    /// Whether a permission names A2A methods, so the proxy must read each A2A call to
    /// decide (and every method no permission names is refused).
    pub fn has_a2a(&self) -> bool {
        self.permissions.iter().any(|p| p.a2a.is_some())
    }
}

/// A validated L7 permission.
#[derive(Debug, Clone)]
pub struct Permission {
    /// What a matching request gets.
    pub action: Action,
    /// Uppercase; empty means any.
    pub methods: Vec<String>,
    /// At most one path criterion.
    pub path: Option<PathMatch>,
    /// All must hold.
    pub headers: Vec<HeaderMatch>,
    /// MCP items; `None` for a plain HTTP permission.
    pub mcp: Option<McpRule>,
    /// Required user claims.
    pub user: Option<UserRule>,
    /// A2A methods; `None` for a permission that is not about A2A.
    pub a2a: Option<A2aRule>,
}

/// How a path is matched.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// The whole path matches (the pattern is anchored at both ends, as Envoy's safe_regex is).
    Regex(regex::Regex),
}

/// A validated header criterion.
#[derive(Debug, Clone)]
pub struct HeaderMatch {
    /// Lowercase.
    pub name: String,
    /// How the value is matched.
    pub kind: HeaderMatchKind,
    /// Negate the result.
    pub invert: bool,
}

/// How a header value is matched.
#[derive(Debug, Clone)]
pub enum HeaderMatchKind {
    /// Present with any value.
    Present,
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// The whole value matches.
    Regex(regex::Regex),
}

fn anchored(index: usize, pattern: &str) -> Result<regex::Regex, IntentionError> {
    // The pattern alone is compiled first so the error points into what the user wrote,
    // and only the last line of regex's multi-line message (the cause) is kept.
    let bad = |e: regex::Error| {
        let msg = e.to_string();
        let cause = msg.lines().last().unwrap_or_default();
        IntentionError::BadRegex {
            index,
            pattern: pattern.to_owned(),
            error: cause.trim_start_matches("error: ").to_owned(),
        }
    };
    regex::Regex::new(pattern).map_err(bad)?;
    regex::Regex::new(&format!("^(?:{pattern})$")).map_err(bad)
}

// RFC 9110 token characters.
fn is_method_token(m: &str) -> bool {
    !m.is_empty()
        && m.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl IntentionSpec {
    /// Parses a JSON document, refusing unknown fields.
    ///
    /// # Errors
    /// Invalid JSON, an unknown field or a wrongly typed value.
    pub fn from_json(json: &str) -> Result<Self, IntentionError> {
        Ok(serde_json::from_str(json)?)
    }

    /// The document as stored and sent, compact JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| unreachable!("the spec is plain data"))
    }

    /// Validates the spec and resolves service names in `trust_domain`.
    ///
    /// # Errors
    /// The first problem found, naming the field.
    pub fn validate(
        &self,
        trust_domain: &TrustDomain,
        id: String,
        created_at: i64,
    ) -> Result<Intention, IntentionError> {
        let source = Target::parse(trust_domain, &self.source).map_err(|error| {
            IntentionError::BadSource {
                name: self.source.clone(),
                error,
            }
        })?;
        let destination = Target::parse(trust_domain, &self.destination).map_err(|error| {
            IntentionError::BadDestination {
                name: self.destination.clone(),
                error,
            }
        })?;
        if self.description.len() > 1024 {
            return Err(IntentionError::DescriptionTooLong(self.description.len()));
        }
        if self.owner.len() > OWNER_MAX || self.owner.chars().any(char::is_control) {
            return Err(IntentionError::BadOwner);
        }
        let permissions: Vec<Permission> = self
            .permissions
            .iter()
            .enumerate()
            .map(|(i, p)| p.validate(i + 1, self.action))
            .collect::<Result<_, _>>()?;
        let first = |f: fn(&Permission) -> bool| permissions.iter().position(f).map(|i| i + 1);
        if let (Some(mcp), Some(a2a)) = (first(|p| p.mcp.is_some()), first(|p| p.a2a.is_some())) {
            return Err(IntentionError::McpAndA2a { mcp, a2a });
        }
        Ok(Intention {
            id,
            source,
            destination,
            action: self.action,
            permissions,
            description: self.description.clone(),
            created_at,
        })
    }

    /// The same spec with source and destination written as full SPIFFE IDs (or `*`), so
    /// two spellings of one pair compare equal.
    ///
    /// # Errors
    /// As [`IntentionSpec::validate`].
    pub fn normalized(&self, trust_domain: &TrustDomain) -> Result<Self, IntentionError> {
        let valid = self.validate(trust_domain, String::new(), 0)?;
        Ok(Self {
            source: valid.source.to_string(),
            destination: valid.destination.to_string(),
            ..self.clone()
        })
    }
}

impl PermissionSpec {
    fn validate(&self, index: usize, default: Action) -> Result<Permission, IntentionError> {
        let http = &self.http;
        let mut methods = Vec::with_capacity(http.methods.len());
        for m in &http.methods {
            if !is_method_token(m) {
                return Err(IntentionError::BadMethod {
                    index,
                    method: m.clone(),
                });
            }
            methods.push(m.to_ascii_uppercase());
        }
        let paths = [&http.path_exact, &http.path_prefix, &http.path_regex];
        if paths.iter().filter(|p| p.is_some()).count() > 1 {
            return Err(IntentionError::ManyPathMatches { index });
        }
        let relative = |p: &String| -> Result<String, IntentionError> {
            if p.starts_with('/') {
                Ok(p.clone())
            } else {
                Err(IntentionError::RelativePath {
                    index,
                    path: p.clone(),
                })
            }
        };
        let path = if let Some(p) = &http.path_exact {
            Some(PathMatch::Exact(relative(p)?))
        } else if let Some(p) = &http.path_prefix {
            Some(PathMatch::Prefix(relative(p)?))
        } else if let Some(p) = &http.path_regex {
            Some(PathMatch::Regex(anchored(index, p)?))
        } else {
            None
        };
        let headers = http
            .headers
            .iter()
            .map(|h| h.validate(index))
            .collect::<Result<_, _>>()?;
        let mcp_err = |error| IntentionError::Mcp { index, error };
        let mcp = self
            .mcp
            .as_ref()
            .map(McpSpec::validate)
            .transpose()
            .map_err(mcp_err)?;
        let user = self
            .user
            .as_ref()
            .map(UserSpec::validate)
            .transpose()
            .map_err(mcp_err)?;
        let a2a_err = |error| IntentionError::A2a { index, error };
        if self.a2a.is_some() && self.mcp.is_some() {
            return Err(a2a_err(A2aRuleError::WithMcp));
        }
        let a2a = self
            .a2a
            .as_ref()
            .map(A2aSpec::validate)
            .transpose()
            .map_err(a2a_err)?;
        Ok(Permission {
            action: self.action.unwrap_or(default),
            methods,
            path,
            headers,
            mcp,
            user,
            a2a,
        })
    }
}

impl HeaderSpec {
    fn validate(&self, index: usize) -> Result<HeaderMatch, IntentionError> {
        if self.name.trim().is_empty() {
            return Err(IntentionError::EmptyHeaderName { index });
        }
        let count = [
            self.present.is_some(),
            self.exact.is_some(),
            self.prefix.is_some(),
            self.suffix.is_some(),
            self.regex.is_some(),
        ]
        .into_iter()
        .filter(|set| *set)
        .count();
        if count != 1 {
            return Err(IntentionError::HeaderMatchCount {
                index,
                name: self.name.clone(),
            });
        }
        let kind = if let Some(present) = self.present {
            if !present {
                return Err(IntentionError::PresentFalse {
                    index,
                    name: self.name.clone(),
                });
            }
            HeaderMatchKind::Present
        } else if let Some(v) = &self.exact {
            HeaderMatchKind::Exact(v.clone())
        } else if let Some(v) = &self.prefix {
            HeaderMatchKind::Prefix(v.clone())
        } else if let Some(v) = &self.suffix {
            HeaderMatchKind::Suffix(v.clone())
        } else if let Some(v) = &self.regex {
            HeaderMatchKind::Regex(anchored(index, v)?)
        } else {
            unreachable!("exactly one kind is set")
        };
        Ok(HeaderMatch {
            name: self.name.trim().to_ascii_lowercase(),
            kind,
            invert: self.invert,
        })
    }
}
