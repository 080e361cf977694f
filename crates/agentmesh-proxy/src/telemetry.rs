//! What the proxy tells operators: Prometheus metrics, the JSON access log, and the
//! attributes of its OpenTelemetry spans (the spans themselves are `agentmesh-telemetry`'s).

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use agentmesh_proto::limits::{Cut, OnCut};

use agentmesh_telemetry::{Span, attr};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CutLabels {
    listener: &'static str,
    reason: &'static str,
}

/// The span exporter's counts, read at each scrape: the exporter counts on its own (it exists
/// before and apart from any proxy), so they are reported rather than mirrored.
#[derive(Debug)]
struct SpanExport(fn() -> Option<agentmesh_telemetry::ExportStats>);

impl Collector for SpanExport {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Nothing when export is off, so /metrics does not claim an exporter that is not there.
        let Some(s) = (self.0)() else {
            return Ok(());
        };
        for (name, help, value) in [
            (
                "agentmesh_proxy_spans_exported",
                "Spans the OTLP collector accepted",
                s.exported,
            ),
            (
                "agentmesh_proxy_spans_dropped",
                "Spans dropped because the export queue was full (requests never wait for export)",
                s.dropped,
            ),
            (
                "agentmesh_proxy_spans_failed",
                "Spans lost because an export to the OTLP collector failed",
                s.failed,
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// The proxy's Prometheus metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    denials: Family<PeerLabels, Counter>,
    revocations: Family<PeerLabels, Counter>,
    handshake_failures: Family<ReasonLabels, Counter>,
    connections_closed: Family<CutLabels, Counter>,
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
        let connections_closed = Family::<CutLabels, Counter>::default();
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
            "agentmesh_proxy_connections_closed",
            "Connections (HTTP/2: streams) cut or refused by a listener limit, by listener (inbound, outbound, admin) and limit",
            connections_closed.clone(),
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
        registry.register_collector(Box::new(SpanExport(agentmesh_telemetry::stats)));
        Self {
            registry,
            requests,
            denials,
            revocations,
            handshake_failures,
            connections_closed,
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

    /// Counts a connection or stream a listener limit cut.
    pub fn cut(&self, listener: &'static str, cut: Cut) {
        self.connections_closed
            .get_or_create(&CutLabels {
                listener,
                reason: cut.as_str(),
            })
            .inc();
    }

    /// What a listener calls for each cut on a connection from `peer`: one log line and
    /// the counter.
    pub fn on_cut(
        self: &Arc<Self>,
        listener: &'static str,
        peer: impl std::fmt::Display + Send + Sync + 'static,
    ) -> OnCut {
        let me = self.clone();
        Arc::new(move |cut| {
            agentmesh_proto::limits::log_cut(listener, &peer, cut);
            me.cut(listener, cut);
        })
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
    /// The MCP call, on a pair whose intention has MCP permissions.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpLog<'a>>,
    /// The A2A call, on a pair whose intention has A2A permissions.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub a2a: Option<A2aLog<'a>>,
}

/// What an access-log line says about an A2A call: its method and the verified user behind
/// it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct A2aLog<'a> {
    /// The A2A method (`SendMessage`, `GetTask`, …).
    pub a2a_method: &'a str,
    /// The verified user token's `sub`; absent when none was verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
}

/// What an access-log line says about an MCP message: its method, the tool, resource or
/// prompt it names, and the verified user behind it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct McpLog<'a> {
    /// The JSON-RPC method (`tools/call`, `tools/list`, …).
    pub mcp_method: &'a str,
    /// `tools/call`'s tool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_tool: Option<&'a str>,
    /// The resource URI read, subscribed or completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_resource: Option<&'a str>,
    /// The prompt got or completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_prompt: Option<&'a str>,
    /// The verified user token's `sub`; absent when none was verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
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
        // Live subscribers (the inspector) get it now, not at the next flush.
        agentmesh_telemetry::decisions::publish(&line);
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

/// The W3C trace context now lives in `agentmesh-telemetry`, shared with the gateway and the
/// AI agents; re-exported here for the proxy's existing users.
pub use agentmesh_telemetry::TraceContext;

/// What every proxy span says about the call: who is calling whom, over what, and (inbound)
/// from which address. Only called on a recording span, so the disabled path formats nothing.
pub(crate) fn span_identities(
    span: &mut Span,
    own: &str,
    source: &str,
    destination: &str,
    peer: &str,
    protocol: &'static str,
    peer_addr: Option<std::net::SocketAddr>,
) {
    span.set_str(attr::SPIFFE_ID, own);
    span.set_str(attr::SPIFFE_PEER_ID, peer);
    span.set_str(attr::SOURCE, source);
    span.set_str(attr::DESTINATION, destination);
    span.set_str(attr::PROTOCOL, protocol);
    // Outbound, the socket peer is the local app, not the span's peer (the destination), so
    // only inbound spans carry it.
    if let Some(a) = peer_addr {
        span.set_str(attr::NETWORK_PEER_ADDRESS, &a.ip().to_string());
        span.set_int(attr::NETWORK_PEER_PORT, i64::from(a.port()));
    }
}

/// Puts a decision on a span, next to the access log line that reports the same one, so a
/// trace explains every allow and deny as the log does.
pub(crate) fn span_outcome(
    span: &mut Span,
    decision: &str,
    intention: Option<&str>,
    reason: &str,
    status: Option<u16>,
) {
    if !span.is_recording() {
        return;
    }
    span.set_str(attr::DECISION, decision);
    if let Some(id) = intention {
        span.set_str(attr::INTENTION_ID, id);
    }
    span.set_str(attr::REASON, reason);
    if let Some(status) = status {
        span.set_http_status(status);
    }
    if decision == "error" {
        span.set_error(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn span_export_counts_are_counters_and_absent_when_export_is_off() {
        fn some() -> Option<agentmesh_telemetry::ExportStats> {
            Some(agentmesh_telemetry::ExportStats {
                exported: 7,
                dropped: 2,
                failed: 1,
            })
        }
        fn none() -> Option<agentmesh_telemetry::ExportStats> {
            None
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(SpanExport(some)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "agentmesh_proxy_spans_exported_total 7",
            "agentmesh_proxy_spans_dropped_total 2",
            "agentmesh_proxy_spans_failed_total 1",
            "# TYPE agentmesh_proxy_spans_dropped counter",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(SpanExport(none)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(!text.contains("spans"), "{text}");
    }

    #[test]
    fn timestamps_have_milliseconds() {
        let ts = agentmesh_telemetry::clock::now_rfc3339_millis();
        assert_eq!(ts.len(), 24, "{ts}");
        assert!(ts.ends_with('Z'));
    }
}
