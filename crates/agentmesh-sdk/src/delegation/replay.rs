//! Single use of a user token per hop: each receiving service remembers the `jti` of every
//! token it accepted, together with the path the token came along, until the token expires.
//!
//! Why per path and not per token: a hop may legitimately receive one token more than once
//! from different callers. In threat-pipeline the orchestrator sends the same token to the
//! classifier, the validator and the scorer, and each of them calls the gateway with it, so
//! the gateway sees the token three times, each time at the end of a different chain
//! (frontend → orchestrator → classifier, … → validator, … → scorer). What is never
//! legitimate is the same token along the same path twice: the frontend mints a fresh token
//! for every question and no agent retries a call. So the key is (`jti`, the issuer and every
//! hop in order).
//!
//! Why `jti` and not the token's bytes: an ECDSA signature `(r, s)` also verifies as
//! `(r, n - s)`, so the same token exists in two spellings; its `jti` is a signed claim and
//! has one.
//!
//! Memory is bounded: an entry is forgotten once the token's `exp` (plus the leeway the
//! verifier allows) has passed, and past `max` unexpired entries a new token is refused
//! ([`ChainError::ReplayCacheFull`], a 503) rather than an old one forgotten, which would
//! reopen the replay window. Keys are SHA-256 digests, so an entry costs the same whatever
//! the lengths of the `jti` and the SPIFFE IDs.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::{ChainError, VerifiedChain, unix};
use crate::token::TokenError;

type Key = [u8; 32];

/// The tokens this service accepted, per path, until they expire.
///
/// # Examples
/// ```
/// use agentmesh_sdk::delegation::{self, ChainConfig, ChainError, ReplayCache};
/// use agentmesh_sdk::testing::{TestCa, user_token};
/// let ca = TestCa::new("example.org");
/// let token = user_token(&ca.source("spiffe://example.org/frontend"),
///     serde_json::json!({"sub": "alice", "aud": "api"}), 300);
/// let config = ChainConfig::new(ca.roots(), "spiffe://example.org/frontend".parse().unwrap(), "api");
/// let now = std::time::SystemTime::now();
/// let chain = delegation::verify_chain(&token, "", &config, None, now).unwrap();
/// let cache = ReplayCache::new(1000, config.leeway);
/// cache.admit(&chain, now).unwrap();
/// assert!(matches!(cache.admit(&chain, now), Err(ChainError::Replayed { .. })));
/// ```
#[derive(Debug)]
pub struct ReplayCache {
    max: usize,
    leeway: i64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Key → the unix second after which it is forgotten.
    seen: HashMap<Key, i64>,
    /// The same entries ordered by when they expire, so forgetting costs O(log n) each.
    expiries: BinaryHeap<Reverse<(i64, Key)>>,
}

impl ReplayCache {
    /// The default cap: at about 100 bytes an entry (a 32-byte key and its expiry, in the map
    /// and in the expiry heap), about 6 MiB when full, which a service reaches only above ~200 new requests a second sustained
    /// over a 5-minute token lifetime.
    pub const DEFAULT_MAX: usize = 65_536;

    /// Remembers at most `max` unexpired tokens; `leeway` is the clock skew the verifier
    /// allows on `exp` (a token stays acceptable, so remembered, that much longer).
    ///
    /// # Examples
    /// ```
    /// let cache = agentmesh_sdk::delegation::ReplayCache::new(10, std::time::Duration::from_secs(30));
    /// assert!(cache.is_empty());
    /// ```
    pub fn new(max: usize, leeway: Duration) -> Self {
        Self {
            max,
            leeway: i64::try_from(leeway.as_secs()).unwrap_or(i64::MAX),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Accepts `chain`'s token along its path once: remembers it, or refuses a second use.
    /// Call it after [`super::verify_chain`] succeeded, so only verified tokens take room.
    ///
    /// # Errors
    /// [`ChainError::Replayed`] for a second use, [`ChainError::ReplayCacheFull`] when `max`
    /// unexpired tokens are remembered, [`ChainError::UserToken`] for a token without `jti`.
    ///
    /// # Examples
    /// See [`ReplayCache`].
    pub fn admit(&self, chain: &VerifiedChain, now: SystemTime) -> Result<(), ChainError> {
        let jti = chain
            .user
            .jti
            .as_deref()
            .ok_or_else(|| TokenError::Malformed("claims have no 'jti'".into()))?;
        let key = key_of(jti, chain);
        let now = unix(now);
        let forget_after = chain.user.exp.saturating_add(self.leeway);
        // A poisoned lock still holds a consistent map: every change below is one insert.
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.forget_expired(now);
        if inner.seen.contains_key(&key) {
            return Err(ChainError::Replayed {
                jti: jti.to_owned(),
                caller: chain.last_hop().to_string(),
            });
        }
        if inner.seen.len() >= self.max {
            return Err(ChainError::ReplayCacheFull { max: self.max });
        }
        inner.seen.insert(key, forget_after);
        inner.expiries.push(Reverse((forget_after, key)));
        Ok(())
    }

    /// How many tokens are remembered (expired ones included until the next [`Self::admit`]).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen
            .len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for ReplayCache {
    /// [`ReplayCache::DEFAULT_MAX`] entries, 30 s leeway (the verifier's default).
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX, super::ChainConfig::DEFAULT_LEEWAY)
    }
}

impl Inner {
    fn forget_expired(&mut self, now: i64) {
        while let Some(Reverse((at, key))) = self.expiries.peek().copied() {
            if at >= now {
                break;
            }
            self.expiries.pop();
            self.seen.remove(&key);
        }
    }
}

/// SHA-256 over the `jti`, the issuer and every hop, each prefixed with its length, so two
/// different paths never share an encoding.
fn key_of(jti: &str, chain: &VerifiedChain) -> Key {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut field = |bytes: &[u8]| {
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(bytes);
    };
    field(jti.as_bytes());
    field(chain.issuer.to_string().as_bytes());
    for hop in &chain.hops {
        field(hop.to_string().as_bytes());
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}
