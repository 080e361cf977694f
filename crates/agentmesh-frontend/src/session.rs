//! Server-side state of logins: started logins (by `state`), used nonces, and sessions (by a
//! random id that is the only thing the browser holds). All in memory: a restart logs
//! everyone out, which for a 5-minute user token and a dev-sized deployment is the safe side.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

use crate::token::User;
use crate::{LOGIN_TTL, SESSION_TTL};

/// A login between `/login` and `/callback`.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The `state` sent to the issuer, also in the browser's login cookie.
    pub state: String,
    /// The `nonce` the id_token must carry.
    pub nonce: String,
    /// The PKCE verifier.
    pub verifier: String,
    started: Instant,
}

impl Pending {
    /// Fresh random state, nonce and verifier.
    pub fn new() -> Self {
        Self {
            state: crate::oidc::random_token(),
            nonce: crate::oidc::random_token(),
            verifier: crate::oidc::random_token(),
            started: Instant::now(),
        }
    }
}

impl Default for Pending {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug)]
struct Session {
    user: User,
    /// May use the Security Inspector (decided at login).
    admin: bool,
    expires: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    pending: HashMap<String, Pending>,
    /// Nonce → its id_token's `exp`: after that the token itself is refused as expired, so
    /// the nonce can be forgotten.
    used_nonces: HashMap<String, i64>,
    sessions: HashMap<String, Session>,
}

/// The store.
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<Inner>,
}

/// Bounds on what an anonymous client can make the store hold.
const MAX_PENDING: usize = 10_000;

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers a started login.
    pub fn start_login(&self, p: Pending) {
        let mut g = self.lock();
        g.pending.retain(|_, p| p.started.elapsed() < LOGIN_TTL);
        if g.pending.len() >= MAX_PENDING {
            // Anyone can start logins; drop the oldest rather than grow without bound.
            if let Some(oldest) = g
                .pending
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(k, _)| k.clone())
            {
                g.pending.remove(&oldest);
            }
        }
        g.pending.insert(p.state.clone(), p);
    }

    /// Takes (removes) the login started with `state`, if it is still fresh.
    pub fn take_login(&self, state: &str) -> Option<Pending> {
        self.lock()
            .pending
            .remove(state)
            .filter(|p| p.started.elapsed() < LOGIN_TTL)
    }

    /// Records `nonce` as used; false if it was used before (a replay).
    pub fn use_nonce(&self, nonce: &str, exp: i64) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let mut g = self.lock();
        let leeway = crate::oidc::id_token::LEEWAY_SECS;
        g.used_nonces.retain(|_, exp| *exp + leeway > now);
        if g.used_nonces.contains_key(nonce) {
            return false;
        }
        g.used_nonces.insert(nonce.to_owned(), exp);
        true
    }

    /// Whether `nonce` was used by an earlier login.
    pub fn nonce_used(&self, nonce: &str) -> bool {
        self.lock().used_nonces.contains_key(nonce)
    }

    /// A new session for `user`, an administrator or not; returns its id.
    pub fn create(&self, user: User, admin: bool) -> String {
        let id = crate::oidc::random_token();
        let mut g = self.lock();
        g.sessions.retain(|_, s| s.expires > Instant::now());
        g.sessions.insert(
            id.clone(),
            Session {
                user,
                admin,
                expires: Instant::now() + SESSION_TTL,
            },
        );
        id
    }

    /// The user of a live session and whether they are an administrator.
    pub fn get(&self, id: &str) -> Option<(User, bool)> {
        self.lock()
            .sessions
            .get(id)
            .filter(|s| s.expires > Instant::now())
            .map(|s| (s.user.clone(), s.admin))
    }

    /// Ends a session.
    pub fn remove(&self, id: &str) {
        self.lock().sessions.remove(id);
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_good_once() {
        let s = Sessions::default();
        let exp = i64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap()
            + 300;
        assert!(s.use_nonce("n", exp));
        assert!(!s.use_nonce("n", exp));
    }

    #[test]
    fn a_state_is_good_once() {
        let s = Sessions::default();
        let p = Pending::new();
        let state = p.state.clone();
        s.start_login(p);
        assert!(s.take_login(&state).is_some());
        assert!(s.take_login(&state).is_none());
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            "a=1; am_session=xyz; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, "am_session").as_deref(), Some("xyz"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
