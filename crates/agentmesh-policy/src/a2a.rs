//! A2A permissions: which A2A methods (`SendMessage`, `GetTask`, …) a permission names, and
//! how one A2A call, or one skill of an agent card, is matched against them.
//!
//! **Exact names.** A2A 1.0's JSON-RPC methods are PascalCase names from a fixed list
//! ([`A2A_METHODS`]). A rule naming anything else is refused when it is written (a typo such
//! as `sendMessage` would otherwise never match and read as an allow). A call naming a method
//! outside the list is refused before any permission is read, since no rule can be about it.
//! An **allow** matches the exact bytes, a **deny** matches regardless of ASCII case, as for
//! MCP tool names: uncertainty resolves towards refusal.
//!
//! **Skills.** A2A messages name no skill, so what a caller may do with a skill is what it may
//! do with the methods the skill needs. A skill names those in its `tags` as `a2a:METHOD`
//! (the built-in agents' skills do); a skill that names none needs `SendMessage`, since every
//! skill is reached by a message. [`skill_methods`] reads them.

use serde::{Deserialize, Serialize};

use crate::intention::Action;

/// The JSON-RPC methods of A2A 1.0 (the protocol's `A2AService`, by its JSON-RPC names).
pub const A2A_METHODS: &[&str] = &[
    "SendMessage",
    "SendStreamingMessage",
    "GetTask",
    "ListTasks",
    "CancelTask",
    "SubscribeToTask",
    "CreateTaskPushNotificationConfig",
    "GetTaskPushNotificationConfig",
    "ListTaskPushNotificationConfigs",
    "DeleteTaskPushNotificationConfig",
    "GetExtendedAgentCard",
];

/// The tag prefix a skill names a method it needs with (`a2a:SendMessage`).
pub const SKILL_METHOD_TAG: &str = "a2a:";

/// Why an `a2a` part of a permission was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum A2aRuleError {
    /// `"a2a": {"methods": []}`: a permission that names nothing would match nothing.
    #[error("a2a names no method; name at least one (or '*'), or drop \"a2a\"")]
    Empty,
    /// A method that A2A 1.0 does not have.
    #[error(
        "{0:?} is not an A2A method; the methods are {methods} (exact spelling) or '*'",
        methods = A2A_METHODS.join(", ")
    )]
    UnknownMethod(String),
    /// `mcp` and `a2a` in one permission.
    #[error("a permission names MCP items or A2A methods, not both; write one permission for each")]
    WithMcp,
}

/// The `a2a` part of a permission as written.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct A2aSpec {
    /// A2A methods (`SendMessage`, `GetTask`, …), exactly as A2A 1.0 spells them; `*` is
    /// every method. Once a permission has `a2a`, every method it does not name is outside it.
    pub methods: Vec<String>,
}

/// A validated `a2a` part.
#[derive(Debug, Clone)]
pub struct A2aRule {
    any: bool,
    methods: Vec<String>,
}

/// Whether `name` is one of A2A 1.0's methods, spelt exactly.
pub fn is_a2a_method(name: &str) -> bool {
    A2A_METHODS.contains(&name)
}

impl A2aSpec {
    /// Checks the method names.
    ///
    /// # Errors
    /// No method, or one A2A does not have.
    pub(crate) fn validate(&self) -> Result<A2aRule, A2aRuleError> {
        let mut rule = A2aRule {
            any: false,
            methods: Vec::new(),
        };
        for m in &self.methods {
            if m == "*" {
                rule.any = true;
            } else if is_a2a_method(m) {
                rule.methods.push(m.clone());
            } else {
                return Err(A2aRuleError::UnknownMethod(m.clone()));
            }
        }
        if !rule.any && rule.methods.is_empty() {
            return Err(A2aRuleError::Empty);
        }
        Ok(rule)
    }
}

impl A2aRule {
    /// Whether this rule names `method`, for a permission with `action`.
    pub(crate) fn names(&self, method: &str, action: Action) -> bool {
        self.any
            || self.methods.iter().any(|m| match action {
                Action::Allow => m == method,
                Action::Deny => m.eq_ignore_ascii_case(method),
            })
    }
}

/// One A2A JSON-RPC call as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct A2aCall<'a> {
    /// The JSON-RPC method (`SendMessage`, …).
    pub method: &'a str,
    /// The claims of the verified user token; `None` when the call carries none (or it was
    /// not verified).
    pub user: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

impl A2aCall<'_> {
    /// Why this method is refused before any permission is read, if it is.
    pub fn spelling_problem(&self) -> Option<String> {
        (!is_a2a_method(self.method)).then(|| {
            format!(
                "method {:?} is not an A2A 1.0 method, so no permission can be about it",
                self.method
            )
        })
    }
}

/// The A2A methods a card's skill needs, from its `tags` (`a2a:METHOD`); `SendMessage`
/// when it names none.
pub fn skill_methods<'a>(tags: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let named: Vec<&str> = tags
        .into_iter()
        .filter_map(|t| t.strip_prefix(SKILL_METHOD_TAG))
        .collect();
    if named.is_empty() {
        vec!["SendMessage"]
    } else {
        named
    }
}
