//! What the proxy tells operators: Prometheus metrics, the JSON access log, and W3C trace
//! context.

use std::io::Write as _;
use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    direction: &'static str,
    peer: String,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The proxy's Prometheus metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    denials: Family<PeerLabels, Counter>,
    revocations: Family<PeerLabels, Counter>,
    handshake_failures: Family<ReasonLabels, Counter>,
    cert_expiry: Gauge<i64, AtomicI64>,
    policy_revision: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let denials = Family::<PeerLabels, Counter>::default();
        let revocations = Family::<PeerLabels, Counter>::default();
        let handshake_failures = Family::<ReasonLabels, Counter>::default();
        let cert_expiry = Gauge::<i64, AtomicI64>::default();
        let policy_revision = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "agentmesh_proxy_requests",
            "Requests (HTTP) and connections (TCP) decided, by direction, peer SPIFFE ID and decision",
            requests.clone(),
        );
        registry.register(
            "agentmesh_proxy_denials",
            "Requests and connections denied by intentions, by peer SPIFFE ID",
            denials.clone(),
        );
        registry.register(
            "agentmesh_proxy_revocations",
            "Open connections closed because an intention change denied their peer",
            revocations.clone(),
        );
        registry.register(
            "agentmesh_proxy_handshake_failures",
            "Inbound TLS handshakes refused, by reason (the peer is unverified, so it is in the log line, not a label)",
            handshake_failures.clone(),
        );
        registry.register(
            "agentmesh_proxy_certificate_expiry_timestamp_seconds",
            "When the proxy's current X.509-SVID expires (unix seconds)",
            cert_expiry.clone(),
        );
        registry.register(
            "agentmesh_proxy_policy_revision",
            "The server revision of the intentions in force (0: none received, all denied)",
            policy_revision.clone(),
        );
        Self {
            registry,
            requests,
            denials,
            revocations,
            handshake_failures,
            cert_expiry,
            policy_revision,
        }
    }
}

impl Metrics {
    /// Counts one decision.
    pub fn decided(&self, direction: &'static str, peer: &str, allowed: bool) {
        self.requests
            .get_or_create(&RequestLabels {
                direction,
                peer: peer.to_owned(),
                decision: if allowed { "allow" } else { "deny" },
            })
            .inc();
        if !allowed {
            self.denials
                .get_or_create(&PeerLabels {
                    peer: peer.to_owned(),
                })
                .inc();
        }
    }

    /// Counts a connection closed by revocation.
    pub fn revoked(&self, peer: &str) {
        self.revocations
            .get_or_create(&PeerLabels {
                peer: peer.to_owned(),
            })
            .inc();
    }

    /// Counts a refused handshake.
    pub fn handshake_failed(&self, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Records the current SVID's expiry.
    pub fn set_cert_expiry(&self, unix_secs: i64) {
        self.cert_expiry.set(unix_secs);
    }

    /// Records the policy revision in force.
    pub fn set_policy_revision(&self, revision: u64) {
        self.policy_revision
            .set(i64::try_from(revision).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// One access log line. Serialized as one JSON object on stdout.
#[derive(Debug, Serialize)]
pub struct AccessRecord<'a> {
    /// RFC 3339 with milliseconds, UTC.
    pub ts: String,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// `http` or `tcp`.
    pub protocol: &'static str,
    /// The caller's SPIFFE ID (inbound: verified from its certificate).
    pub source: &'a str,
    /// The callee's SPIFFE ID.
    pub destination: &'a str,
    /// `allow` or `deny` (outbound: `error` when the destination could not be reached).
    pub decision: &'a str,
    /// The intention that decided; null for the default deny.
    pub intention: Option<&'a str>,
    /// Why, in words.
    pub reason: &'a str,
    /// The W3C trace id.
    pub trace_id: &'a str,
    /// HTTP method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<&'a str>,
    /// HTTP path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<&'a str>,
    /// HTTP status returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The peer's socket address.
    pub peer_addr: String,
    /// Milliseconds from accept (or request start) to the end.
    pub duration_ms: u64,
    /// Bytes from the caller (TCP only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    /// Bytes to the caller (TCP only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
}

/// The current time as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let ms = now.millisecond();
    let base = now
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    // 2026-11-23T10:00:00Z -> 2026-11-23T10:00:00.123Z
    match base.strip_suffix('Z') {
        Some(stem) => format!("{stem}.{ms:03}Z"),
        None => base,
    }
}

/// How often buffered access log lines reach stdout. Writing each line from the request path
/// cost a syscall per request on each proxy; like Envoy's `access_log_flush_interval`, lines
/// are batched instead, and at most this much is lost if the process is killed.
pub const ACCESS_LOG_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
/// A buffer this large is written at once rather than at the next interval.
const ACCESS_LOG_HIGH_WATER: usize = 256 * 1024;

/// Lines waiting for the flusher thread.
struct AccessLog {
    pending: std::sync::Mutex<Vec<u8>>,
    full: std::sync::Condvar,
}

fn access_log_sink() -> &'static AccessLog {
    static SINK: std::sync::OnceLock<AccessLog> = std::sync::OnceLock::new();
    SINK.get_or_init(|| {
        // A thread of its own, so a slow stdout never blocks a request.
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(|| {
                loop {
                    let sink = access_log_sink();
                    let batch = {
                        let pending = sink.pending.lock().unwrap_or_else(|p| p.into_inner());
                        let (mut pending, _) = sink
                            .full
                            .wait_timeout_while(pending, ACCESS_LOG_FLUSH_INTERVAL, |p| {
                                p.len() < ACCESS_LOG_HIGH_WATER
                            })
                            .unwrap_or_else(|p| p.into_inner());
                        std::mem::take(&mut *pending)
                    };
                    write_stdout(&batch);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access log thread; lines are written on flush only");
        }
        AccessLog {
            pending: std::sync::Mutex::new(Vec::new()),
            full: std::sync::Condvar::new(),
        }
    })
}

fn write_stdout(batch: &[u8]) {
    if batch.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(batch);
    let _ = out.flush();
}

/// Queues one access log line for stdout. Lines are never split or interleaved.
pub fn access_log(record: &AccessRecord<'_>) {
    if let Ok(mut line) = serde_json::to_vec(record) {
        line.push(b'\n');
        let sink = access_log_sink();
        let mut pending = sink.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.extend_from_slice(&line);
        if pending.len() >= ACCESS_LOG_HIGH_WATER {
            sink.full.notify_one();
        }
    }
}

/// Writes every queued access log line now; called on shutdown.
pub fn flush_access_log() {
    let batch = {
        let mut pending = access_log_sink()
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *pending)
    };
    write_stdout(&batch);
}

/// A W3C trace context (`traceparent`), version 00.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// 16 bytes, never all zero.
    pub trace_id: [u8; 16],
    /// This hop's span id, 8 bytes, never all zero.
    pub span_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

/// Random non-zero bytes for trace and span ids. They come from a per-thread pool refilled
/// from the system RNG a few kilobytes at a time: one syscall per id would sit on every
/// request's path.
fn random<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    const POOL: usize = 4096;
    thread_local! {
        static POOL_BYTES: std::cell::RefCell<(Vec<u8>, usize)> =
            const { std::cell::RefCell::new((Vec::new(), 0)) };
    }
    POOL_BYTES.with(|cell| {
        let mut guard = cell.borrow_mut();
        let (pool, used) = &mut *guard;
        loop {
            if pool.len() != POOL || *used + N > POOL {
                pool.resize(POOL, 0);
                // The system RNG failing is not something to carry on from.
                ring::rand::SystemRandom::new()
                    .fill(pool)
                    .unwrap_or_else(|_| panic!("the system random number generator failed"));
                *used = 0;
            }
            let mut b = [0u8; N];
            b.copy_from_slice(&pool[*used..*used + N]);
            *used += N;
            if b.iter().any(|x| *x != 0) {
                return b;
            }
        }
    })
}

fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl TraceContext {
    /// Continues the caller's trace with a new span for this hop, or starts a new trace
    /// (sampled) when the header is missing or malformed, as the W3C spec says to.
    pub fn continue_or_start(header: Option<&str>) -> Self {
        let parsed = header.and_then(|h| {
            let mut parts = h.trim().split('-');
            let version = parts.next()?;
            let trace = parts.next()?;
            let parent = parts.next()?;
            let flags = parts.next()?;
            // Version 00 has exactly four fields; later versions may append more.
            if version == "ff" || (version == "00" && parts.next().is_some()) {
                return None;
            }
            parse_hex::<1>(version)?;
            let trace_id = parse_hex::<16>(trace)?;
            parse_hex::<8>(parent)?;
            let flags = parse_hex::<1>(flags)?[0];
            if trace_id.iter().all(|x| *x == 0) || parent.bytes().all(|x| x == b'0') {
                return None;
            }
            Some((trace_id, flags))
        });
        match parsed {
            Some((trace_id, flags)) => Self {
                trace_id,
                span_id: random(),
                flags,
            },
            None => Self {
                trace_id: random(),
                span_id: random(),
                flags: 1,
            },
        }
    }

    /// The trace id as 32 hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The `traceparent` header for the next hop.
    pub fn header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_continued_when_valid_and_started_otherwise() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::continue_or_start(Some(incoming));
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(
            hex(&t.span_id),
            "00f067aa0ba902b7",
            "a new span for this hop"
        );
        assert!(
            t.header()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        assert!(t.header().ends_with("-01"));
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            let t = TraceContext::continue_or_start(Some(bad));
            assert_ne!(
                t.trace_id_hex(),
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "{bad}"
            );
            assert_eq!(t.header().len(), 55, "{bad}");
        }
        let fresh = TraceContext::continue_or_start(None);
        assert_eq!(fresh.flags, 1);
    }

    #[test]
    fn metrics_render_in_prometheus_text() {
        let m = Metrics::default();
        m.decided("inbound", "spiffe://td/ns/default/sa/a", false);
        m.handshake_failed("no_client_certificate");
        let text = m.encode();
        assert!(
            text.contains("agentmesh_proxy_denials_total{peer=\"spiffe://td/ns/default/sa/a\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "agentmesh_proxy_handshake_failures_total{reason=\"no_client_certificate\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn timestamps_have_milliseconds() {
        let ts = now_rfc3339();
        assert_eq!(ts.len(), 24, "{ts}");
        assert!(ts.ends_with('Z'));
    }
}
