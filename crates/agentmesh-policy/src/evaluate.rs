//! Evaluation: the one place that decides, so the proxy, the CLI and the inspector agree.
//!
//! Precedence follows Consul's intention table: an exact destination beats a wildcard one,
//! then an exact source beats a wildcard one. When two intentions match equally, deny wins.
//! With nothing matching, the answer is deny.

use std::fmt;
use std::sync::Arc;

use agentmesh_spiffe::SpiffeId;

use crate::intention::{Action, HeaderMatchKind, Intention, PathMatch, Permission};

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
    /// The path; a query string, if present, is ignored.
    pub path: &'a str,
    /// Header names (any case) and values.
    pub headers: &'a [(&'a str, &'a str)],
}

impl HttpRequest<'_> {
    fn path_only(&self) -> &str {
        self.path.split_once('?').map_or(self.path, |(p, _)| p)
    }

    fn header(&self, lower_name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(lower_name))
            .map(|(_, v)| *v)
    }
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
            .filter(|i| i.source.matches(source) && i.destination.matches(destination));
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

    /// The decision for one HTTP request.
    pub fn check_request(
        &self,
        source: &SpiffeId,
        destination: &SpiffeId,
        request: &HttpRequest<'_>,
    ) -> Decision {
        let what = format!("{} {}", request.method, request.path_only());
        match self.top(source, destination) {
            Top::None => Self::default_deny(source, destination),
            Top::Winner {
                intention,
                tied_with,
            } => {
                if intention.permissions.is_empty() || intention.action == Action::Deny {
                    return Self::whole(intention, tied_with, &what);
                }
                match intention
                    .permissions
                    .iter()
                    .position(|p| p.matches(request))
                {
                    Some(n) => {
                        let p = &intention.permissions[n];
                        let verb = match p.action {
                            Action::Allow => "allows",
                            Action::Deny => "denies",
                        };
                        Decision {
                            action: p.action,
                            intention_id: Some(intention.id.clone()),
                            reason: format!(
                                "permission {} of intention {} {verb} {what}",
                                n + 1,
                                intention.id
                            ),
                        }
                    }
                    None => Decision {
                        action: Action::Deny,
                        intention_id: Some(intention.id.clone()),
                        reason: format!(
                            "no permission of intention {} matches {what}; a request no permission matches is denied",
                            intention.id
                        ),
                    },
                }
            }
        }
    }
}

impl Permission {
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
        self.headers.iter().all(|h| {
            let value = request.header(&h.name);
            let hit = match (&h.kind, value) {
                (_, None) => false,
                (HeaderMatchKind::Present, Some(_)) => true,
                (HeaderMatchKind::Exact(e), Some(v)) => v == e,
                (HeaderMatchKind::Prefix(p), Some(v)) => v.starts_with(p.as_str()),
                (HeaderMatchKind::Suffix(s), Some(v)) => v.ends_with(s.as_str()),
                (HeaderMatchKind::Regex(r), Some(v)) => r.is_match(v),
            };
            hit != h.invert
        })
    }
}

#[cfg(test)]
mod tests;
