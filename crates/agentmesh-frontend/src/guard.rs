//! Checks in front of every route, before any handler runs.
//!
//! - **`Host` allow-list** (DNS rebinding): a page on `evil.example` whose name is made to
//!   resolve to 127.0.0.1 reaches the frontend with `Host: evil.example`, and its script is
//!   then same-origin with everything it reads. Only the `public_url`'s host and loopback
//!   names (`localhost`, 127.0.0.0/8, `[::1]`) on the port the frontend is bound to (or with
//!   no port) are served; anything else is 421 Misdirected Request with the reason.
//! - **Origin check** (CSRF) on every state-changing request (`POST`, `PUT`, `PATCH`,
//!   `DELETE`: login, logout, ask): its `Origin`, or its `Referer` when there is no
//!   `Origin`, must be the frontend's own origin (the `public_url`'s, or `http://` with a
//!   loopback name and the bound port); else 403 with the reason. `Origin: null` (a sandboxed
//!   frame, a page with `Referrer-Policy: no-referrer`) is refused.
//!
//!   A request with neither header is let through: every browser sends `Origin` on a
//!   cross-origin `POST` (the Fetch standard requires it, for forms and `fetch` alike), so a
//!   forged cross-site request always carries one. What sends neither is a non-browser client
//!   (curl, `agentmesh ask`, `up`'s self-check), which has no victim's cookies to ride on.
//!   The session cookie stays `SameSite=Lax` as a second, independent defence.
//!
//! The pages send `Referrer-Policy: same-origin`: under `no-referrer` a browser sends
//! `Origin: null` even on the frontend's own form posts, which this check must refuse.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderMap, Method, StatusCode, header};

use crate::{Frontend, page};

/// Why a request was refused before reaching a handler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError {
    /// No `Host` header and no authority in the request line.
    #[error("the request names no host (no Host header)")]
    NoHost,
    /// A `Host` that is not the frontend's.
    #[error(
        "host {got:?} is not served here: only {allowed} reach this frontend (a defence against DNS rebinding; set public_url to the address browsers use)"
    )]
    ForeignHost {
        /// The `Host` sent.
        got: String,
        /// What is allowed, in words.
        allowed: String,
    },
    /// `Origin` (or `Referer`) names another origin.
    #[error(
        "cross-origin request refused: its {header} is {got:?}, not this frontend's origin ({allowed}); state-changing requests must come from the frontend's own pages"
    )]
    CrossOrigin {
        /// `Origin` or `Referer`.
        header: &'static str,
        /// Its value (shortened).
        got: String,
        /// This frontend's origin.
        allowed: String,
    },
}

/// A parsed `scheme://host:port`, host lowercased, IPv6 in brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" { 443 } else { 80 }
}

/// Splits `host[:port]` (IPv6 in brackets); the port is None when absent.
fn split_authority(authority: &str) -> Option<(String, Option<u16>)> {
    let authority = authority.rsplit('@').next()?;
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        (format!("[{h}]"), port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p.parse().ok()?)),
            None => (authority.to_owned(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}

/// Reads the origin of a URL (`Origin` is one; a `Referer` starts with one).
fn parse_origin(url: &str) -> Option<Origin> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    let (host, port) = split_authority(authority)?;
    Some(Origin {
        port: port.unwrap_or_else(|| default_port(&scheme)),
        scheme,
        host,
    })
}

fn is_loopback_host(host: &str) -> bool {
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What this frontend answers to.
#[derive(Debug)]
pub struct Allowed {
    /// The configured `public_url`'s origin; without one, the listen address's.
    configured: Option<Origin>,
    listen_host: String,
    /// The port the listener is bound to (the configured one until [`Allowed::bound_to`]).
    port: AtomicU16,
}

impl Allowed {
    /// For a frontend whose browsers use `public_url` (default `http://<listen>`) and which
    /// listens on `listen`.
    pub fn new(public_url: Option<&str>, listen: SocketAddr) -> Self {
        let listen_host = match listen.ip() {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        };
        Self {
            configured: public_url.and_then(parse_origin),
            listen_host,
            port: AtomicU16::new(listen.port()),
        }
    }

    /// Records the port actually bound (a configured port 0 becomes a real one).
    pub fn bound_to(&self, port: u16) {
        self.port.store(port, Ordering::Relaxed);
    }

    fn port(&self) -> u16 {
        self.port.load(Ordering::Relaxed)
    }

    fn public(&self) -> Origin {
        self.configured.clone().unwrap_or_else(|| Origin {
            scheme: "http".into(),
            host: self.listen_host.clone(),
            port: self.port(),
        })
    }

    fn describe(&self) -> String {
        let p = self.public();
        format!(
            "{}://{}:{}, or http:// with a loopback name on port {}",
            p.scheme,
            p.host,
            p.port,
            self.port()
        )
    }

    /// Checks a `Host` value (`host[:port]`).
    ///
    /// # Errors
    /// [`GuardError::ForeignHost`].
    pub fn check_host(&self, value: &str) -> Result<(), GuardError> {
        let public = self.public();
        let foreign = || GuardError::ForeignHost {
            got: shorten(value),
            allowed: format!(
                "{}:{} and loopback names on port {}",
                public.host,
                public.port,
                self.port()
            ),
        };
        let (host, port) = split_authority(value.trim()).ok_or_else(foreign)?;
        // Without a port, a browser is using the scheme's default one.
        let public_port = port.unwrap_or_else(|| default_port(&public.scheme));
        let public = host == public.host && public_port == public.port;
        // A loopback name without a port is no rebinding (an attacker's name is never a
        // loopback one), and local probes write it that way (`up` sends `Host: localhost`).
        let loopback = is_loopback_host(&host) && port.is_none_or(|p| p == self.port());
        if public || loopback {
            Ok(())
        } else {
            Err(foreign())
        }
    }

    /// Checks the origin of a state-changing request.
    ///
    /// # Errors
    /// [`GuardError::CrossOrigin`].
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), GuardError> {
        let (name, value) = match (headers.get(header::ORIGIN), headers.get(header::REFERER)) {
            (Some(o), _) => ("Origin", o),
            (None, Some(r)) => ("Referer", r),
            // Not a browser: see the module documentation.
            (None, None) => return Ok(()),
        };
        let text = value.to_str().unwrap_or("");
        let public = self.public();
        let ours = parse_origin(text).is_some_and(|o| {
            o == public
                || (o.scheme == "http" && is_loopback_host(&o.host) && o.port == self.port())
        });
        if ours {
            Ok(())
        } else {
            Err(GuardError::CrossOrigin {
                header: name,
                got: shorten(text),
                allowed: self.describe(),
            })
        }
    }
}

fn shorten(s: &str) -> String {
    let s: String = s.chars().filter(|c| !c.is_control()).collect();
    match s.char_indices().nth(120) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s,
    }
}

/// The `Host` of a request: its header, or the authority an HTTP/2 request carries instead.
fn request_host(req: &Request) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))
}

/// The middleware: the Host allow-list on every request, the origin check on state-changing
/// ones.
pub async fn check(State(fe): State<Arc<Frontend>>, req: Request, next: Next) -> Response {
    let allowed = &fe.allowed;
    let host = request_host(&req);
    let host_ok = match host.as_deref() {
        None => Err(GuardError::NoHost),
        Some(h) => allowed.check_host(h),
    };
    if let Err(e) = host_ok {
        let status = if e == GuardError::NoHost {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::MISDIRECTED_REQUEST
        };
        tracing::warn!(reason = %e, "request refused: foreign host");
        return page::html(status, &page::error("request", &e.to_string()));
    }
    let changes_state = matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if changes_state && let Err(e) = allowed.check_origin(req.headers()) {
        tracing::warn!(reason = %e, path = %req.uri().path(), "request refused: cross-origin");
        return page::html(
            StatusCode::FORBIDDEN,
            &page::error("request", &e.to_string()),
        );
    }
    next.run(req).await
}

#[cfg(test)]
#[path = "guard_tests.rs"]
mod tests;
