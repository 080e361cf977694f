//! agentmesh-policy: deciding intentions, i.e. which source may reach which destination, at L4
//! and per HTTP request. Not for networking, I/O, storage or certificates: callers hand it
//! intentions and requests, it hands back decisions.
//!
//! The crate has no networking, so the server (which validates and stores intentions), the
//! proxy (which enforces them) and `agentmesh intention check` (which explains them) all decide
//! with the same code. With no intentions, everything is denied. Requests are decided in the
//! form the app will see ([`normalize_path`]), and header rules read every value of a header.
//! MCP calls are decided per tool, resource and prompt ([`PolicySet::check_mcp`]), with
//! exact names and default deny once a permission names any MCP item; A2A calls per method
//! ([`PolicySet::check_a2a`]), the same way.
#![forbid(unsafe_code)]

mod a2a;
mod evaluate;
mod intention;
mod mcp;
mod normalize;

pub use a2a::{
    A2A_METHODS, A2aCall, A2aRule, A2aRuleError, A2aSpec, SKILL_METHOD_TAG, is_a2a_method,
    skill_methods,
};
pub use evaluate::{Decision, HttpRequest, PolicySet};
pub use intention::{
    Action, HeaderMatch, HeaderMatchKind, HeaderSpec, HttpSpec, Intention, IntentionError,
    IntentionSpec, OWNER_MAX, PathMatch, Permission, PermissionSpec, Target, scenario_owner,
};
pub use mcp::{
    ArgumentSpec, McpCall, McpItem, McpRule, McpRuleError, McpSpec, UserRule, UserSpec, is_mcp_name,
};
pub use normalize::{
    EscapedSlashesAction, HeadersWithUnderscoresAction, NormalizeOptions, PathError,
    header_name_has_underscore, normalize_path, normalize_path_and_query,
};
