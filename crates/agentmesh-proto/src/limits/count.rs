//! Who holds a connection and how many each caller and the whole listener may hold: the
//! counting both the HTTP and the gRPC listeners share, and the one rate-limited log line
//! for a cut.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UnixStream;

use super::ListenerLimits;

/// Who holds a connection, for the per-caller limit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Caller {
    /// The SPIFFE ID of a verified mTLS peer.
    Spiffe(String),
    /// The uid behind a Unix socket (`SO_PEERCRED`).
    Uid(u32),
    /// A plain TCP peer's address.
    Ip(IpAddr),
    /// A Unix socket peer whose credentials the kernel did not give.
    Unknown,
}

impl Caller {
    /// The uid of a Unix socket peer (every process of one user is one caller: a user can
    /// start processes at will, so a per-pid limit would bound nothing).
    pub fn of_unix(stream: &UnixStream) -> Self {
        stream
            .peer_cred()
            .map_or(Self::Unknown, |c| Self::Uid(c.uid()))
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Spiffe(id) => f.write_str(id),
            Self::Uid(uid) => write!(f, "uid {uid}"),
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Unknown => f.write_str("an unidentified local peer"),
        }
    }
}

/// Why a connection or stream was cut; [`Cut::as_str`] is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cut {
    /// The request head (or the HTTP/2 preface, or the first request) did not arrive in time.
    HeaderTimeout,
    /// A request body sent nothing for `body_idle_timeout`.
    BodyIdleTimeout,
    /// The TLS handshake did not finish in time.
    HandshakeTimeout,
    /// The listener already held `max_connections`.
    ConnectionLimit,
    /// The caller already held `max_connections_per_caller`.
    CallerLimit,
    /// The head was larger than `max_header_bytes` or had more than `max_headers` fields (431).
    HeadersTooLarge,
}

impl Cut {
    /// The stable name used as the metric label and in the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HeaderTimeout => "header_timeout",
            Self::BodyIdleTimeout => "body_idle_timeout",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::ConnectionLimit => "connection_limit",
            Self::CallerLimit => "caller_limit",
            Self::HeadersTooLarge => "headers_too_large",
        }
    }
}

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Called once for every cut connection or stream.
pub type OnCut = Arc<dyn Fn(Cut) + Send + Sync>;

/// At most this many cut lines are logged per second (per process), so a flood of refused
/// connections cannot flood the log too; the counters still count every cut.
pub const CUT_LINES_PER_SECOND: u64 = 20;

static CUT_LOG_SECOND: AtomicU64 = AtomicU64::new(0);
static CUT_LOG_LINES: AtomicU64 = AtomicU64::new(0);
static CUT_LOG_SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// The one log line for a cut: the listener, the peer and the limit. Past
/// [`CUT_LINES_PER_SECOND`] the lines of that second are left out, and the next line says how
/// many were.
pub fn log_cut(listener: &str, peer: &dyn fmt::Display, cut: Cut) {
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let current = CUT_LOG_SECOND.load(Ordering::Relaxed);
    if current != second
        && CUT_LOG_SECOND
            .compare_exchange(current, second, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        CUT_LOG_LINES.store(0, Ordering::Relaxed);
        let left_out = CUT_LOG_SUPPRESSED.swap(0, Ordering::Relaxed);
        if left_out > 0 {
            tracing::warn!(
                left_out,
                "more connections were cut by listener limits than are logged (at most {CUT_LINES_PER_SECOND} lines a second); the counters have them all"
            );
        }
    }
    if CUT_LOG_LINES.fetch_add(1, Ordering::Relaxed) < CUT_LINES_PER_SECOND {
        tracing::warn!(listener, peer = %peer, limit = cut.as_str(), "connection cut by a listener limit");
    } else {
        CUT_LOG_SUPPRESSED.fetch_add(1, Ordering::Relaxed);
    }
}

/// An [`OnCut`] that only logs, for components without metrics.
pub fn logging(listener: &'static str, peer: impl fmt::Display + Send + Sync + 'static) -> OnCut {
    Arc::new(move |cut| log_cut(listener, &peer, cut))
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_caller: HashMap<Caller, usize>,
}

/// Counts one listener's open connections, in total and per caller. Shared by every thread
/// that accepts on the listener.
#[derive(Debug)]
pub struct ConnectionLimiter {
    max_total: usize,
    max_per_caller: usize,
    counts: Mutex<Counts>,
}

impl ConnectionLimiter {
    /// A limiter with the listener's `max_connections` and `max_connections_per_caller`.
    pub fn new(limits: &ListenerLimits) -> Arc<Self> {
        Arc::new(Self {
            max_total: limits.max_connections,
            max_per_caller: limits.max_connections_per_caller,
            counts: Mutex::default(),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot in the total before the caller is known (a TLS peer is known only after
    /// its handshake); [`ConnectionSlot::identify`] adds the caller.
    ///
    /// # Errors
    /// [`Cut::ConnectionLimit`] when the listener is full.
    pub fn admit(self: &Arc<Self>) -> Result<ConnectionSlot, Cut> {
        let mut c = self.counts();
        if c.total >= self.max_total {
            return Err(Cut::ConnectionLimit);
        }
        c.total += 1;
        Ok(ConnectionSlot {
            limiter: self.clone(),
            caller: None,
        })
    }

    /// Takes a slot for a caller known at accept time (Unix socket uid, plain TCP peer).
    ///
    /// # Errors
    /// [`Cut::ConnectionLimit`] or [`Cut::CallerLimit`].
    pub fn admit_caller(self: &Arc<Self>, caller: Caller) -> Result<ConnectionSlot, Cut> {
        let mut slot = self.admit()?;
        slot.identify(caller)?;
        Ok(slot)
    }

    /// Open connections, all callers together.
    pub fn open(&self) -> usize {
        self.counts().total
    }

    /// Open connections of one caller.
    pub fn open_by(&self, caller: &Caller) -> usize {
        self.counts().per_caller.get(caller).copied().unwrap_or(0)
    }
}

/// One open connection's place in a [`ConnectionLimiter`]; dropping it frees the place.
#[derive(Debug)]
pub struct ConnectionSlot {
    limiter: Arc<ConnectionLimiter>,
    caller: Option<Caller>,
}

impl ConnectionSlot {
    /// Counts the connection against `caller` too.
    ///
    /// # Errors
    /// [`Cut::CallerLimit`] when the caller already holds its share; the slot then still
    /// holds only its place in the total, freed when it is dropped.
    pub fn identify(&mut self, caller: Caller) -> Result<(), Cut> {
        if self.caller.is_some() {
            return Ok(());
        }
        let mut c = self.limiter.counts();
        let n = c.per_caller.entry(caller.clone()).or_insert(0);
        if *n >= self.limiter.max_per_caller {
            if *n == 0 {
                c.per_caller.remove(&caller);
            }
            return Err(Cut::CallerLimit);
        }
        *n += 1;
        drop(c);
        self.caller = Some(caller);
        Ok(())
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut c = self.limiter.counts();
        c.total = c.total.saturating_sub(1);
        if let Some(caller) = self.caller.take()
            && let Some(n) = c.per_caller.get_mut(&caller)
        {
            *n -= 1;
            if *n == 0 {
                c.per_caller.remove(&caller);
            }
        }
    }
}
