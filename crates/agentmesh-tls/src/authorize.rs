//! Which peer SPIFFE IDs a connection accepts once the chain itself is valid.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use agentmesh_spiffe::{SpiffeId, TrustDomain};

/// Why a peer with a valid SVID was still refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorizeError {
    /// The peer's ID is not in the allowed set.
    #[error("peer spiffe id {peer} is not allowed; expected one of [{expected}]")]
    NotAllowed {
        /// The ID the peer presented.
        peer: SpiffeId,
        /// The allowed IDs, comma separated.
        expected: String,
    },
    /// The peer belongs to another trust domain.
    #[error("peer spiffe id {peer} is not a member of trust domain {expected}")]
    WrongTrustDomain {
        /// The ID the peer presented.
        peer: SpiffeId,
        /// The trust domain the peer had to belong to.
        expected: TrustDomain,
    },
    /// A custom policy refused the peer.
    #[error("peer spiffe id {peer} refused: {reason}")]
    Denied {
        /// The ID the peer presented.
        peer: SpiffeId,
        /// What the policy expected instead.
        reason: String,
    },
}

impl AuthorizeError {
    /// A refusal from a custom policy; `reason` should say what was expected.
    pub fn denied(peer: &SpiffeId, reason: impl Into<String>) -> Self {
        Self::Denied {
            peer: peer.clone(),
            reason: reason.into(),
        }
    }
}

/// Decides whether a peer whose SVID chain already verified may connect.
pub trait Authorizer: Send + Sync + fmt::Debug {
    /// `Ok(())` admits the peer; an error aborts the handshake and says why.
    ///
    /// # Errors
    /// The peer is not acceptable to this policy.
    fn authorize(&self, peer: &SpiffeId) -> Result<(), AuthorizeError>;
}

#[derive(Debug)]
struct Exact(BTreeSet<SpiffeId>);

impl Authorizer for Exact {
    fn authorize(&self, peer: &SpiffeId) -> Result<(), AuthorizeError> {
        if self.0.contains(peer) {
            return Ok(());
        }
        Err(AuthorizeError::NotAllowed {
            peer: peer.clone(),
            expected: self
                .0
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

#[derive(Debug)]
struct MemberOf(TrustDomain);

impl Authorizer for MemberOf {
    fn authorize(&self, peer: &SpiffeId) -> Result<(), AuthorizeError> {
        if peer.is_member_of(&self.0) {
            return Ok(());
        }
        Err(AuthorizeError::WrongTrustDomain {
            peer: peer.clone(),
            expected: self.0.clone(),
        })
    }
}

#[derive(Debug)]
struct AnyId;

impl Authorizer for AnyId {
    fn authorize(&self, _peer: &SpiffeId) -> Result<(), AuthorizeError> {
        Ok(())
    }
}

struct FromFn<F>(F);

impl<F> fmt::Debug for FromFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FromFn(<closure>)")
    }
}

impl<F> Authorizer for FromFn<F>
where
    F: Fn(&SpiffeId) -> Result<(), AuthorizeError> + Send + Sync,
{
    fn authorize(&self, peer: &SpiffeId) -> Result<(), AuthorizeError> {
        (self.0)(peer)
    }
}

/// Admits only the listed IDs. An empty list admits nobody.
pub fn exact(ids: impl IntoIterator<Item = SpiffeId>) -> Arc<dyn Authorizer> {
    Arc::new(Exact(ids.into_iter().collect()))
}

/// Admits any ID in the given trust domain.
pub fn member_of(td: TrustDomain) -> Arc<dyn Authorizer> {
    Arc::new(MemberOf(td))
}

/// Admits any valid SPIFFE ID; the chain must still verify against the bundle.
pub fn any_id() -> Arc<dyn Authorizer> {
    Arc::new(AnyId)
}

/// Admits whatever the closure admits; use [`AuthorizeError::denied`] to refuse.
pub fn from_fn<F>(f: F) -> Arc<dyn Authorizer>
where
    F: Fn(&SpiffeId) -> Result<(), AuthorizeError> + Send + Sync + 'static,
{
    Arc::new(FromFn(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    #[test]
    fn exact_lists_expected_ids_in_error() {
        let a = exact([id("spiffe://td/a"), id("spiffe://td/b")]);
        a.authorize(&id("spiffe://td/a")).unwrap();
        let err = a.authorize(&id("spiffe://td/c")).unwrap_err().to_string();
        assert!(err.contains("spiffe://td/c"), "{err}");
        assert!(err.contains("spiffe://td/a, spiffe://td/b"), "{err}");
        assert!(exact([]).authorize(&id("spiffe://td/a")).is_err());
    }

    #[test]
    fn member_of_checks_trust_domain() {
        let a = member_of("td".parse().unwrap());
        a.authorize(&id("spiffe://td/x")).unwrap();
        let err = a
            .authorize(&id("spiffe://other/x"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spiffe://other/x") && err.contains("td"),
            "{err}"
        );
    }

    #[test]
    fn any_and_closure() {
        any_id().authorize(&id("spiffe://x/y")).unwrap();
        let f = from_fn(|p| {
            if p.path().starts_with("/ns/prod/") {
                Ok(())
            } else {
                Err(AuthorizeError::denied(p, "expected a path under /ns/prod/"))
            }
        });
        f.authorize(&id("spiffe://td/ns/prod/a")).unwrap();
        let err = f
            .authorize(&id("spiffe://td/ns/dev/a"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/ns/dev/a") && err.contains("/ns/prod/"),
            "{err}"
        );
        assert_eq!(format!("{f:?}"), "FromFn(<closure>)");
    }
}
