//! MCP permissions: which tools, resources and prompts a permission names, what a tool's
//! arguments must look like, and which user claims it needs; and how one MCP call is matched
//! against them.
//!
//! **Exact names.** MCP tool names are case-sensitive, and the 2025-11-25 revision asks for
//! 1 to 128 characters of `A-Z a-z 0-9 _ - .`. A rule's tool or prompt name must be such a
//! name (or `*`), and so must the name in a call: a call naming `delete_all ` (a space),
//! `delete\u{200b}all` or `ｄelete_all` is refused before any permission is read, since a
//! server that trims, folds or normalises names could run `delete_all` for it. Within that
//! alphabet an **allow** matches the exact bytes, and a **deny** matches regardless of ASCII
//! case (a server that looks names up without case would otherwise run `DELETE_ALL` past a
//! deny on `delete_all`). Uncertainty resolves towards refusal, as for header rules.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::intention::Action;

/// Why an `mcp` or `user` part of a permission was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum McpRuleError {
    /// `"mcp": {}`: a permission that names nothing would match nothing.
    #[error("mcp names no tool, resource or prompt; name at least one (or drop \"mcp\")")]
    Empty,
    /// A tool or prompt name outside MCP's alphabet.
    #[error(
        "{kind} {name:?} is not an MCP name (1 to 128 of A-Z a-z 0-9 _ - .) or '*'; names are matched exactly, so a rule in another spelling could never match"
    )]
    BadName {
        /// `tool` or `prompt`.
        kind: &'static str,
        /// What was given.
        name: String,
    },
    /// A resource prefix that is empty or has characters no URI has.
    #[error("resource {0:?} is not a URI prefix (visible ASCII, not empty) or '*'")]
    BadResource(String),
    /// `arguments` without any tool to apply them to.
    #[error("arguments constrain tool calls; name the tools they apply to in \"tools\"")]
    ArgumentsWithoutTools,
    /// An argument constraint with no name or a bad prefix.
    #[error("argument {0:?}: the name must not be empty and the prefix must be visible text")]
    BadArgument(String),
    /// `user.claims` empty or with an empty key.
    #[error("user.claims needs at least one KEY: VALUE, with a non-empty key")]
    BadClaims,
}

/// The `mcp` part of a permission as written: what it names. Every list is optional; once a
/// permission has `mcp`, every tool, resource and prompt it does not name is outside it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpSpec {
    /// Tool names (`tools/call`), exactly as the server spells them; `*` is every tool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// Resource URI prefixes (`resources/read`, `resources/subscribe`); `*` is every resource.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// Prompt names (`prompts/get`); `*` is every prompt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<String>,
    /// Constraints on the arguments of the tools this permission names, by argument name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub arguments: BTreeMap<String, ArgumentSpec>,
}

/// One argument constraint as written (`--mcp-arg NAME^=PREFIX`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgumentSpec {
    /// The argument is a string that starts with this.
    pub prefix: String,
}

/// The `user` part of a permission as written: claims the verified user token must carry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    /// Claim name to value; a claim that is a list (such as `groups`) holds when the list
    /// contains the value.
    pub claims: BTreeMap<String, String>,
}

/// Names, or every name.
#[derive(Debug, Clone, Default)]
struct Names {
    any: bool,
    list: Vec<String>,
}

impl Names {
    fn is_empty(&self) -> bool {
        !self.any && self.list.is_empty()
    }
}

/// A validated `mcp` part.
#[derive(Debug, Clone)]
pub struct McpRule {
    tools: Names,
    resources: Names,
    prompts: Names,
    arguments: Vec<(String, String)>,
}

/// A validated `user` part.
#[derive(Debug, Clone)]
pub struct UserRule {
    claims: Vec<(String, String)>,
}

/// Whether `name` is an MCP name: 1 to 128 of `A-Z a-z 0-9 _ - .` (the 2025-11-25
/// revision's tool names; prompt names are held to the same so both match alike).
pub fn is_mcp_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn visible(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

impl McpSpec {
    /// Checks names and prefixes.
    ///
    /// # Errors
    /// The first bad entry.
    pub(crate) fn validate(&self) -> Result<McpRule, McpRuleError> {
        let names = |kind: &'static str, list: &[String]| -> Result<Names, McpRuleError> {
            let mut out = Names::default();
            for n in list {
                if n == "*" {
                    out.any = true;
                } else if is_mcp_name(n) {
                    out.list.push(n.clone());
                } else {
                    return Err(McpRuleError::BadName {
                        kind,
                        name: n.clone(),
                    });
                }
            }
            Ok(out)
        };
        let tools = names("tool", &self.tools)?;
        let prompts = names("prompt", &self.prompts)?;
        let mut resources = Names::default();
        for r in &self.resources {
            if r == "*" {
                resources.any = true;
            } else if visible(r) {
                resources.list.push(r.clone());
            } else {
                return Err(McpRuleError::BadResource(r.clone()));
            }
        }
        if tools.is_empty() && prompts.is_empty() && resources.is_empty() {
            return Err(McpRuleError::Empty);
        }
        if !self.arguments.is_empty() && tools.is_empty() {
            return Err(McpRuleError::ArgumentsWithoutTools);
        }
        let mut arguments = Vec::with_capacity(self.arguments.len());
        for (name, a) in &self.arguments {
            if name.is_empty() || a.prefix.chars().any(char::is_control) {
                return Err(McpRuleError::BadArgument(name.clone()));
            }
            arguments.push((name.clone(), a.prefix.clone()));
        }
        Ok(McpRule {
            tools,
            resources,
            prompts,
            arguments,
        })
    }
}

impl UserSpec {
    /// Checks the claims.
    ///
    /// # Errors
    /// No claim, or an empty claim name.
    pub(crate) fn validate(&self) -> Result<UserRule, McpRuleError> {
        if self.claims.is_empty() || self.claims.keys().any(|k| k.trim().is_empty()) {
            return Err(McpRuleError::BadClaims);
        }
        Ok(UserRule {
            claims: self
                .claims
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }
}

/// The one tool, resource or prompt an MCP call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McpItem<'a> {
    /// `tools/call` `params.name`.
    Tool(&'a str),
    /// `resources/read|subscribe|unsubscribe` `params.uri` (and a completion's resource).
    Resource(&'a str),
    /// `prompts/get` `params.name` (and a completion's prompt).
    Prompt(&'a str),
}

impl McpItem<'_> {
    /// `tool`, `resource` or `prompt`.
    pub fn kind(&self) -> &'static str {
        match self {
            McpItem::Tool(_) => "tool",
            McpItem::Resource(_) => "resource",
            McpItem::Prompt(_) => "prompt",
        }
    }

    /// The tool or prompt name, or the resource URI.
    pub fn name(&self) -> &str {
        match self {
            McpItem::Tool(n) | McpItem::Resource(n) | McpItem::Prompt(n) => n,
        }
    }

    /// Why this name or URI is refused before any permission is read, if it is: names
    /// outside MCP's alphabet, URIs with characters no URI has or with dot-segments.
    pub fn spelling_problem(&self) -> Option<String> {
        match self {
            McpItem::Tool(n) | McpItem::Prompt(n) => (!is_mcp_name(n)).then(|| {
                format!(
                    "{} name {n:?} is not an MCP name (1 to 128 of A-Z a-z 0-9 _ - .); other spellings are refused so that no server reads them as another {}",
                    self.kind(),
                    self.kind()
                )
            }),
            McpItem::Resource(uri) => {
                uri_problem(uri).map(|why| format!("resource URI {uri:?} {why}"))
            }
        }
    }
}

/// Decodes `%XX` escapes (lossily; only used to look for what a server might decode to).
fn percent_decoded(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// A `.` or `..` segment between `/` or `\` separators.
fn has_dot_segment(s: &str) -> bool {
    s.split(['/', '\\']).any(|seg| seg == "." || seg == "..")
}

fn uri_problem(uri: &str) -> Option<&'static str> {
    if !visible(uri) {
        return Some("has characters outside visible ASCII (a URI percent-encodes them)");
    }
    if uri.contains('\\') {
        return Some("has a backslash");
    }
    let Some(decoded) = percent_decoded(uri) else {
        return Some("has a '%' that is not followed by two hex digits");
    };
    if has_dot_segment(&decoded) || decoded.contains('\\') {
        return Some("has a dot-segment or an escaped separator, which a server may resolve");
    }
    None
}

/// One MCP message as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct McpCall<'a> {
    /// The JSON-RPC method (`tools/call`, `ping`, …), for reasons and logs.
    pub method: &'a str,
    /// The tool, resource or prompt called; `None` for the protocol's housekeeping
    /// (`initialize`, `ping`, `notifications/*`) and for `*/list`, which pass for an allowed
    /// pair and whose answers are filtered.
    pub item: Option<McpItem<'a>>,
    /// A tool call's `params.arguments`; `None` when unknown, as when deciding whether a
    /// listed tool is shown (an allow's argument constraints are then taken to hold, a
    /// deny's not to, since some call might satisfy either).
    pub arguments: Option<&'a Map<String, Value>>,
    /// The claims of the verified user token; `None` when the call carries none (or it was
    /// not verified).
    pub user: Option<&'a Map<String, Value>>,
}

/// Why a permission that names the item did not match, kept for the refusal's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Miss {
    /// An argument constraint failed.
    Argument(String),
    /// A user claim was missing.
    User(String),
}

impl McpRule {
    /// Whether this rule names `item`, for a permission with `action`.
    pub(crate) fn names(&self, item: &McpItem<'_>, action: Action) -> bool {
        let name_match = |set: &Names, n: &str| {
            set.any
                || set.list.iter().any(|r| match action {
                    Action::Allow => r == n,
                    Action::Deny => r.eq_ignore_ascii_case(n),
                })
        };
        match item {
            McpItem::Tool(n) => name_match(&self.tools, n),
            McpItem::Prompt(n) => name_match(&self.prompts, n),
            McpItem::Resource(uri) => {
                self.resources.any
                    || self.resources.list.iter().any(|p| match action {
                        Action::Allow => uri.starts_with(p.as_str()),
                        // A deny holds for any spelling the server might read as the prefix.
                        Action::Deny => {
                            let lower = p.to_ascii_lowercase();
                            uri.to_ascii_lowercase().starts_with(&lower)
                                || percent_decoded(uri)
                                    .is_some_and(|d| d.to_ascii_lowercase().starts_with(&lower))
                        }
                    })
            }
        }
    }

    /// Whether the argument constraints hold for a tool call (`None`: unknown arguments).
    pub(crate) fn arguments_hold(
        &self,
        arguments: Option<&Map<String, Value>>,
        action: Action,
    ) -> Result<(), Miss> {
        let Some(args) = arguments else {
            return match action {
                Action::Allow => Ok(()),
                Action::Deny if self.arguments.is_empty() => Ok(()),
                Action::Deny => Err(Miss::Argument("the arguments are not known".into())),
            };
        };
        for (name, prefix) in &self.arguments {
            let holds = match (args.get(name), action) {
                // An allow needs a plain string under the prefix that cannot climb out of it.
                (Some(Value::String(v)), Action::Allow) => {
                    v.starts_with(prefix.as_str())
                        && !has_dot_segment(v)
                        && !v.chars().any(char::is_control)
                }
                (_, Action::Allow) => false,
                // A deny holds for any spelling that might mean the prefix, and for a value
                // that is not a string (a server might take its first element, or coerce it).
                (Some(Value::String(v)), Action::Deny) => {
                    let lower = prefix.to_ascii_lowercase();
                    v.to_ascii_lowercase().starts_with(&lower)
                        || percent_decoded(v)
                            .is_some_and(|d| d.to_ascii_lowercase().starts_with(&lower))
                }
                (None | Some(Value::Null), Action::Deny) => false,
                (Some(_), Action::Deny) => true,
            };
            if !holds {
                return Err(Miss::Argument(format!(
                    "argument {name:?} must be a string starting with {prefix:?} (with no '..' segment)"
                )));
            }
        }
        Ok(())
    }
}

impl UserRule {
    /// Whether the verified user's claims hold every required claim. With no verified
    /// user, an allow does not hold and a deny does (uncertainty refuses).
    pub(crate) fn holds(
        &self,
        user: Option<&Map<String, Value>>,
        action: Action,
    ) -> Result<(), Miss> {
        let want = || {
            self.claims
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some(claims) = user else {
            return match action {
                Action::Allow => Err(Miss::User(format!(
                    "it requires a user with {} and the call carries no verified user token",
                    want()
                ))),
                Action::Deny => Ok(()),
            };
        };
        for (k, v) in &self.claims {
            let holds = match claims.get(k) {
                Some(Value::String(s)) => s == v,
                Some(Value::Array(list)) => list.iter().any(|e| e.as_str() == Some(v.as_str())),
                _ => false,
            };
            if !holds {
                return Err(Miss::User(format!(
                    "it requires a user with {} and the user's token has no {k}={v}",
                    want()
                )));
            }
        }
        Ok(())
    }
}
