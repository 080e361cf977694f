//! Evaluation: the one place that decides, so the proxy, the CLI and the inspector agree.
//!
//! Precedence follows Consul's intention table: an exact destination beats a wildcard one,
//! then an exact source beats a wildcard one. When two intentions match equally, deny wins.
//! With nothing matching, the answer is deny. A `*` source matches only identities of the
//! destination's trust domain: a federated peer must be named.

use std::fmt;
use std::sync::Arc;

use agentmesh_spiffe::SpiffeId;

use crate::a2a::A2aCall;
use crate::intention::{Action, HeaderMatch, HeaderMatchKind, Intention, PathMatch, Permission};
use crate::mcp::{McpCall, McpItem, Miss};
use crate::normalize::{
    HeadersWithUnderscoresAction, NormalizeOptions, header_name_has_underscore,
    normalize_path_and_query,
};

/// What was decided, which intention decided it and why, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allow or deny.
    pub action: Action,
    /// The intention that matched; `None` for the default deny.
    pub intention_id: Option<String>,
    /// One sentence for logs, `intention check` and the inspector.
    pub reason: String,
}

impl Decision {
    /// Whether the traffic may pass.
    pub fn is_allowed(&self) -> bool {
        self.action == Action::Allow
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (intention {}): {}",
            self.action,
            self.intention_id.as_deref().unwrap_or("none"),
            self.reason
        )
    }
}

/// The parts of an HTTP request that permissions look at.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    /// The method, any case.
    pub method: &'a str,
    /// The path, already through [`normalize_path`](crate::normalize_path) so it is the one
    /// the app will see; a query string, if present, is ignored.
    pub path: &'a str,
    /// Header names (any case) and raw values, one pair per field line: a repeated header
    /// appears once per value, and values are bytes because HTTP allows non-UTF-8 ones.
    pub headers: &'a [(&'a str, &'a [u8])],
}

impl HttpRequest<'_> {
    fn path_only(&self) -> &str {
        self.path.split_once('?').map_or(self.path, |(p, _)| p)
    }

    fn header_values<'r>(&'r self, lower_name: &'r str) -> impl Iterator<Item = &'r [u8]> + 'r {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(lower_name))
            .map(|(_, v)| *v)
    }
}

/// A header value as a rule may read it: visible ASCII, spaces and tabs. Anything else is
/// unreadable, because apps disagree on what such bytes say (WSGI decodes them as Latin-1,
/// most Rust and Go servers as UTF-8 or not at all), so no rule can know what the app sees.
fn readable(value: &[u8]) -> Option<&str> {
    if value.iter().all(|b| matches!(b, b'\t' | 0x20..=0x7e)) {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// What one header criterion can be, for every way the app might read the request: from
/// any one of its values (the first, the last, or an unreadable one read either way).
#[derive(Debug, Clone, Copy, Default)]
struct Outcomes {
    can_hold: bool,
    can_fail: bool,
}

impl Outcomes {
    fn add(&mut self, holds: Option<bool>) {
        match holds {
            Some(true) => self.can_hold = true,
            Some(false) => self.can_fail = true,
            None => {
                self.can_hold = true;
                self.can_fail = true;
            }
        }
    }

    fn inverted(self) -> Self {
        Self {
            can_hold: self.can_fail,
            can_fail: self.can_hold,
        }
    }
}

/// The protocol message a request carries, when it was read.
#[derive(Debug, Clone, Copy)]
enum Call<'a> {
    Mcp(&'a McpCall<'a>),
    A2a(&'a A2aCall<'a>),
}

/// A set of validated intentions. Cheap to clone and share.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    intentions: Arc<Vec<Intention>>,
}

fn precedence(i: &Intention) -> u8 {
    u8::from(i.destination.is_exact()) * 2 + u8::from(i.source.is_exact())
}

/// What the connection-level match found.
enum Top<'a> {
    None,
    Winner {
        intention: &'a Intention,
        tied_with: Option<&'a Intention>,
    },
}

impl PolicySet {
    /// Builds a set; order does not matter.
    pub fn new(intentions: Vec<Intention>) -> Self {
        Self {
            intentions: Arc::new(intentions),
        }
    }

    /// The intentions, in the order given.
    pub fn intentions(&self) -> &[Intention] {
        &self.intentions
    }

    fn top(&self, source: &SpiffeId, destination: &SpiffeId) -> Top<'_> {
        let matching = self
            .intentions
            .iter()
            .filter(|i| i.source.matches(source) && i.destination.matches(destination))
            // A peer of another (federated) trust domain is admitted only by an intention
            // that names it: a `*` source stands for the destination's own trust domain, so
            // federating never opens what `* -> x` allowed before.
            .filter(|i| i.source.is_exact() || source.trust_domain() == destination.trust_domain());
        let Some(best) = matching.clone().map(precedence).max() else {
            return Top::None;
        };
        let mut tied: Vec<&Intention> = matching.filter(|i| precedence(i) == best).collect();
        // Deny first, then the oldest, then by id, so the choice never depends on order given.
        tied.sort_by(|a, b| {
            (a.action != Action::Deny, a.created_at, &a.id).cmp(&(
                b.action != Action::Deny,
                b.created_at,
                &b.id,
            ))
        });
        Top::Winner {
            intention: tied[0],
            tied_with: tied.get(1).copied(),
        }
    }

    fn default_deny(source: &SpiffeId, destination: &SpiffeId) -> Decision {
        Decision {
            action: Action::Deny,
            intention_id: None,
            reason: format!("no intention matches {source} -> {destination}; the default is deny"),
        }
    }

    fn whole(intention: &Intention, tied_with: Option<&Intention>, what: &str) -> Decision {
        let verb = match intention.action {
            Action::Allow => "allows",
            Action::Deny => "denies",
        };
        let mut reason = format!(
            "intention {} ({} -> {}) {verb} {what}",
            intention.id, intention.source, intention.destination
        );
        if let Some(other) = tied_with
            && other.action != intention.action
        {
            reason.push_str(&format!(
                "; it ties with intention {} at the same precedence and deny wins a tie",
                other.id
            ));
        }
        Decision {
            action: intention.action,
            intention_id: Some(intention.id.clone()),
            reason,
        }
    }

    /// The L4 decision; `l7` is what an intention with L7 permissions yields, since
    /// permissions cannot be checked without a request.
    fn check_l4(
        &self,
        source: &SpiffeId,
        destination: &SpiffeId,
        l7: fn(&Intention) -> Decision,
    ) -> Decision {
        match self.top(source, destination) {
            Top::None => Self::default_deny(source, destination),
            Top::Winner {
                intention,
                tied_with,
            } if intention.permissions.is_empty() || intention.action == Action::Deny => {
                Self::whole(intention, tied_with, "the connection")
            }
            Top::Winner { intention, .. } => l7(intention),
        }
    }

    /// Whether a connection from `source` to `destination` may be opened at all. An
    /// intention with L7 permissions admits the connection; each request is then checked
    /// with [`PolicySet::check_request`].
    pub fn check_connection(&self, source: &SpiffeId, destination: &SpiffeId) -> Decision {
        self.check_l4(source, destination, |i| Decision {
            action: Action::Allow,
            intention_id: Some(i.id.clone()),
            reason: format!(
                "intention {} has L7 permissions; the connection is admitted and each request is checked",
                i.id
            ),
        })
    }

    /// The decision for raw TCP, where L7 permissions cannot be checked: an intention with
    /// permissions denies.
    pub fn check_tcp(&self, source: &SpiffeId, destination: &SpiffeId) -> Decision {
        self.check_l4(source, destination, |i| Decision {
            action: Action::Deny,
            intention_id: Some(i.id.clone()),
            reason: format!(
                "intention {} has L7 permissions, which need HTTP, but this is raw TCP",
                i.id
            ),
        })
    }

    /// The decision for a request as it was sent, for callers that do not forward it
    /// (`intention check`): the request is normalised as a sidecar with `options` would
    /// normalise it, then decided. A request the normalisation refuses is denied, with no
    /// intention and the refusal as the reason; a path that normalises to another spelling is
    /// decided on the normalised one, and the reason says so.
    pub fn check_unnormalized_request(
        &self,
        source: &SpiffeId,
        destination: &SpiffeId,
        request: &HttpRequest<'_>,
        options: &NormalizeOptions,
    ) -> Decision {
        let refused = |why: String| Decision {
            action: Action::Deny,
            intention_id: None,
            reason: format!("the request is refused before any intention is checked: {why}"),
        };
        let path = match normalize_path_and_query(request.path, options) {
            Ok(p) => p,
            Err(e) => return refused(format!("path {:?}: {e}", request.path)),
        };
        let mut headers = Vec::with_capacity(request.headers.len());
        for (name, value) in request.headers {
            if header_name_has_underscore(name) {
                match options.headers_with_underscores {
                    HeadersWithUnderscoresAction::RejectRequest => {
                        return refused(format!(
                            "header {name:?} has an underscore, which headers_with_underscores_action = \"reject_request\" refuses"
                        ));
                    }
                    HeadersWithUnderscoresAction::DropHeader => continue,
                    HeadersWithUnderscoresAction::Allow => {}
                }
            }
            headers.push((*name, *value));
        }
        let mut decision = self.check_request(
            source,
            destination,
            &HttpRequest {
                method: request.method,
                path: &path,
                headers: &headers,
            },
        );
        if path != request.path {
            decision.reason.push_str(&format!(
                " (the path was sent as {:?} and normalised to {path:?})",
                request.path
            ));
        }
        decision
    }

    /// The decision for one HTTP request, whose path is already normalised. On a pair whose
    /// intention has MCP permissions this decides only requests that carry no MCP message
    /// (an SSE `GET`, a session `DELETE`), as housekeeping; any other method is denied, since
    /// its body must be decided with [`PolicySet::check_mcp`].
    pub fn check_request(
        &self,
        source: &SpiffeId,
        destination: &SpiffeId,
        request: &HttpRequest<'_>,
    ) -> Decision {
        self.check(source, destination, request, None)
    }

    /// Whether the pair's deciding intention is an allow with MCP permissions, so each MCP
    /// message must be read and decided with [`PolicySet::check_mcp`].
    pub fn mcp_applies(&self, source: &SpiffeId, destination: &SpiffeId) -> bool {
        match self.top(source, destination) {
            Top::Winner { intention, .. } => {
                intention.action == Action::Allow && intention.has_mcp()
            }
            Top::None => false,
        }
    }

    /// The decision for one MCP message carried by `request` (whose path is normalised).
    /// Inside an intention with MCP permissions, the first permission that matches decides:
    /// a permission with `mcp` matches only calls to what it names (with its argument and
    /// user rules holding), one without matches on HTTP alone. Housekeeping and listings
    /// (`call.item` is `None`) pass where an allow permission's HTTP criteria match; deny
    /// permissions with `mcp` are about their items only and are skipped for them. A name
    /// outside MCP's alphabet is refused before any permission is read.
    pub fn check_mcp(
        &self,
        source: &SpiffeId,
        destination: &SpiffeId,
        request: &HttpRequest<'_>,
        call: &McpCall<'_>,
    ) -> Decision {
        self.check(source, destination, request, Some(Call::Mcp(call)))
    }

    /// Whether the pair's deciding intention is an allow with A2A permissions, so each A2A
    /// call must be read and decided with [`PolicySet::check_a2a`].
    pub fn a2a_applies(&self, source: &SpiffeId, destination: &SpiffeId) -> bool {
        match self.top(source, destination) {
            Top::Winner { intention, .. } => {
                intention.action == Action::Allow && intention.has_a2a()
            }
            Top::None => false,
        }
    }

    /// The decision for one A2A JSON-RPC call carried by `request` (whose path is
    /// normalised). Inside an intention with A2A permissions, the first permission that
    /// matches decides: a permission with `a2a` matches only the methods it names (with its
    /// user rule holding), one without matches on HTTP alone. A method A2A 1.0 does not have
    /// is refused before any permission is read.
    pub fn check_a2a(
        &self,
        source: &SpiffeId,
        destination: &SpiffeId,
        request: &HttpRequest<'_>,
        call: &A2aCall<'_>,
    ) -> Decision {
        self.check(source, destination, request, Some(Call::A2a(call)))
    }

    fn check(
        &self,
        source: &SpiffeId,
        destination: &SpiffeId,
        request: &HttpRequest<'_>,
        call: Option<Call<'_>>,
    ) -> Decision {
        let mcp = match call {
            Some(Call::Mcp(c)) => Some(c),
            _ => None,
        };
        let what = match (call, mcp.and_then(|c| c.item.map(|i| (c.method, i)))) {
            (_, Some((method, item))) => format!("{method} {} {:?}", item.kind(), item.name()),
            (Some(Call::Mcp(c)), None) => format!(
                "MCP {} ({} {})",
                c.method,
                request.method,
                request.path_only()
            ),
            (Some(Call::A2a(c)), None) => format!("A2A {}", c.method),
            (None, None) => format!("{} {}", request.method, request.path_only()),
        };
        let (intention, tied_with) = match self.top(source, destination) {
            Top::None => return Self::default_deny(source, destination),
            Top::Winner {
                intention,
                tied_with,
            } => (intention, tied_with),
        };
        if intention.permissions.is_empty() || intention.action == Action::Deny {
            return Self::whole(intention, tied_with, &what);
        }
        let deny = |reason: String| Decision {
            action: Action::Deny,
            intention_id: Some(intention.id.clone()),
            reason,
        };
        let protocol = if intention.has_mcp() {
            Some("MCP")
        } else if intention.has_a2a() {
            Some("A2A")
        } else {
            None
        };
        if call.is_none()
            && let Some(protocol) = protocol
            && !["GET", "HEAD", "DELETE", "OPTIONS"]
                .iter()
                .any(|m| m.eq_ignore_ascii_case(request.method))
        {
            // A body on an MCP or A2A route may carry any call; deciding it unread would
            // admit every tool or method (this is what a caller that cannot read the
            // protocol, such as `intention check` without `--mcp-tool`, gets).
            return deny(format!(
                "intention {} has {protocol} permissions, so {what} must be decided on the {protocol} message it carries, which this check does not read",
                intention.id
            ));
        }
        let item = mcp.and_then(|c| c.item);
        let spelling = match call {
            Some(Call::A2a(c)) if intention.has_a2a() => c.spelling_problem(),
            _ if intention.has_mcp() => item.and_then(|i| i.spelling_problem()),
            _ => None,
        };
        if let Some(why) = spelling {
            return deny(format!(
                "intention {} refuses {what}: the {why}",
                intention.id
            ));
        }
        let mut first_miss: Option<(usize, Miss)> = None;
        for (n, p) in intention.permissions.iter().enumerate() {
            if !p.matches(request) {
                continue;
            }
            let matched = match call {
                Some(Call::A2a(c)) => p.a2a_match(c),
                _ if p.a2a.is_some() => Ok(matches!((call, p.action), (None, Action::Allow))),
                _ => p.mcp_match(mcp, item),
            };
            match matched {
                Ok(true) => {}
                Ok(false) => continue,
                Err(miss) => {
                    first_miss.get_or_insert((n, miss));
                    continue;
                }
            }
            let verb = match p.action {
                Action::Allow => "allows",
                Action::Deny => "denies",
            };
            return Decision {
                action: p.action,
                intention_id: Some(intention.id.clone()),
                reason: format!(
                    "permission {} of intention {} {verb} {what}",
                    n + 1,
                    intention.id
                ),
            };
        }
        let near = first_miss.map_or_else(String::new, |(n, miss)| {
            let why = match miss {
                Miss::Argument(w) | Miss::User(w) => w,
            };
            format!(" (permission {} names it, but {why})", n + 1)
        });
        let rule = if intention.has_mcp() && item.is_some() {
            "inside MCP, every tool, resource and prompt no permission names is refused"
        } else if intention.has_a2a() && matches!(call, Some(Call::A2a(_))) {
            "inside A2A, every method no permission names is refused"
        } else {
            "a request no permission matches is denied"
        };
        deny(format!(
            "no permission of intention {} matches {what}{near}; {rule}",
            intention.id
        ))
    }
}

impl Permission {
    /// The A2A and user part of a match for an A2A call, once the HTTP part matched:
    /// `Ok(false)` when the permission is about other methods (or about MCP), `Err` when it
    /// names the method but its user rule does not hold.
    fn a2a_match(&self, call: &A2aCall<'_>) -> Result<bool, Miss> {
        if self.mcp.is_some() {
            return Ok(false);
        }
        if let Some(rule) = &self.a2a
            && !rule.names(call.method, self.action)
        {
            return Ok(false);
        }
        if let Some(u) = &self.user {
            u.holds(call.user, self.action)?;
        }
        Ok(true)
    }

    /// The MCP and user part of a match, once the HTTP part matched: `Ok(false)` when the
    /// permission is not about this message, `Err` when it names the item but an argument
    /// or user rule does not hold (kept for the reason).
    fn mcp_match(
        &self,
        call: Option<&McpCall<'_>>,
        item: Option<McpItem<'_>>,
    ) -> Result<bool, Miss> {
        let user = call.and_then(|c| c.user);
        let Some(item) = item else {
            // Housekeeping, a listing or a request with no MCP call: a deny about MCP items
            // is not about it, an allow about MCP items admits it whoever the user is.
            return match (&self.mcp, self.action) {
                (Some(_), Action::Deny) => Ok(false),
                (Some(_), Action::Allow) => Ok(true),
                (None, _) => match &self.user {
                    Some(u) => u.holds(user, self.action).map(|()| true),
                    None => Ok(true),
                },
            };
        };
        if let Some(rule) = &self.mcp {
            if !rule.names(&item, self.action) {
                return Ok(false);
            }
            if let McpItem::Tool(_) = item {
                rule.arguments_hold(call.and_then(|c| c.arguments), self.action)?;
            }
        }
        if let Some(u) = &self.user {
            u.holds(user, self.action)?;
        }
        Ok(true)
    }

    fn matches(&self, request: &HttpRequest<'_>) -> bool {
        if !self.methods.is_empty()
            && !self
                .methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(request.method))
        {
            return false;
        }
        let path = request.path_only();
        let path_ok = match &self.path {
            None => true,
            Some(PathMatch::Exact(p)) => path == p,
            Some(PathMatch::Prefix(p)) => path.starts_with(p.as_str()),
            Some(PathMatch::Regex(r)) => r.is_match(path),
        };
        if !path_ok {
            return false;
        }
        // Uncertainty about what the app reads always resolves towards refusing: an allow
        // needs each criterion to hold however the app reads the request, a deny needs it to
        // hold in just one reading.
        self.headers.iter().all(|h| {
            let outcomes = h.outcomes(request);
            match self.action {
                Action::Allow => outcomes.can_hold && !outcomes.can_fail,
                Action::Deny => outcomes.can_hold,
            }
        })
    }
}

impl HeaderMatch {
    /// Every value of a repeated header counts: a value match (exact, prefix, suffix, regex)
    /// holds for sure only if all values match, `present` holds for any value, readable or
    /// not, and an unreadable value could be read as matching or not.
    fn outcomes(&self, request: &HttpRequest<'_>) -> Outcomes {
        let mut outcomes = Outcomes::default();
        let mut any = false;
        for value in request.header_values(&self.name) {
            any = true;
            let holds = match &self.kind {
                HeaderMatchKind::Present => Some(true),
                kind => readable(value).map(|v| match kind {
                    HeaderMatchKind::Present => true,
                    HeaderMatchKind::Exact(e) => v == e,
                    HeaderMatchKind::Prefix(p) => v.starts_with(p.as_str()),
                    HeaderMatchKind::Suffix(s) => v.ends_with(s.as_str()),
                    HeaderMatchKind::Regex(r) => r.is_match(v),
                }),
            };
            outcomes.add(holds);
        }
        if !any {
            // Absent: nothing matches, and an inverted criterion holds (Envoy's semantics).
            outcomes.add(Some(false));
        }
        if self.invert {
            outcomes.inverted()
        } else {
            outcomes
        }
    }
}

#[cfg(test)]
mod tests;
