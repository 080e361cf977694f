//! Live decisions: the inspector follows each configured sidecar's `/decisions` (NDJSON, see
//! agentmesh-proxy's admin listener) and keeps the recent ones in one log, numbered in the
//! order they arrived, for the Live decisions table, its event stream and the request pages.

use agentmesh_sdk::{LocalAddr, LocalStream};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use http_body_util::BodyExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::mesh::IntentionNames;

/// How many decisions the inspector remembers.
pub const KEEP: usize = 4096;
/// The longest decision line accepted from a sidecar.
const MAX_LINE: usize = 64 * 1024;

/// Why following one sidecar's feed stopped (it is retried).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    /// No TCP connection.
    #[error("cannot connect to {0}: {1}")]
    Connect(LocalAddr, std::io::Error),
    /// HTTP failed.
    #[error("{0}: {1}")]
    Http(LocalAddr, String),
    /// The sidecar answered something else than 200.
    #[error("{0} answered {1} to /decisions")]
    Status(LocalAddr, u16),
    /// A line without an end.
    #[error("{0} sent a decision line over {MAX_LINE} bytes")]
    LineTooLong(LocalAddr),
}

/// One decision, as a sidecar's access log line has it, plus where it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    /// The inspector's own number for it (arrival order across all sidecars).
    #[serde(default)]
    pub id: u64,
    /// The sidecar's number for it.
    #[serde(default)]
    pub seq: u64,
    /// The service whose sidecar decided.
    #[serde(default)]
    pub proxy: String,
    /// When the sidecar logged it (RFC 3339, at the end of the request).
    pub ts: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// The caller's SPIFFE ID.
    pub source: String,
    /// The callee's SPIFFE ID.
    pub destination: String,
    /// `allow`, `deny` or `error`.
    pub decision: String,
    /// The intention that decided (none: the default deny).
    #[serde(default)]
    pub intention: Option<String>,
    /// The intention in words (`planner → gateway deny: …`), looked up on arrival.
    #[serde(default)]
    pub intention_summary: Option<String>,
    /// Why.
    pub reason: String,
    /// The W3C trace id.
    #[serde(default)]
    pub trace_id: String,
    /// HTTP method.
    #[serde(default)]
    pub method: Option<String>,
    /// HTTP path.
    #[serde(default)]
    pub path: Option<String>,
    /// HTTP status.
    #[serde(default)]
    pub status: Option<u16>,
    /// How long the request took at that sidecar.
    #[serde(default)]
    pub duration_ms: u64,
    /// The MCP method, on a route with MCP permissions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_method: Option<String>,
    /// The MCP tool, resource or prompt called (whichever the line has).
    #[serde(
        default,
        alias = "mcp_resource",
        alias = "mcp_prompt",
        skip_serializing_if = "Option::is_none"
    )]
    pub mcp_tool: Option<String>,
    /// The verified user behind an MCP call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl Decision {
    /// What the request column shows: the MCP call when there is one (`MCP tools/call
    /// search`), else the HTTP method and path, else `(connection)`.
    pub fn request_text(&self) -> String {
        match (&self.mcp_method, &self.method, &self.path) {
            (Some(m), _, _) => {
                let mut t = format!("MCP {m}");
                if let Some(item) = &self.mcp_tool {
                    t.push(' ');
                    t.push_str(item);
                }
                if let Some(u) = &self.user {
                    t.push_str(&format!(" (user {u})"));
                }
                t
            }
            (None, Some(m), Some(p)) => format!("{m} {p}"),
            _ => "(connection)".into(),
        }
    }
}

impl Decision {
    /// When the request started at the sidecar, unix milliseconds (the line is written at
    /// the end, so ordering hops by `ts` would put the innermost first).
    pub fn started_ms(&self) -> i128 {
        time::OffsetDateTime::parse(&self.ts, &time::format_description::well_known::Rfc3339)
            .map(|t| t.unix_timestamp_nanos() / 1_000_000 - i128::from(self.duration_ms))
            .unwrap_or_default()
    }
}

/// The decisions seen so far and a channel of the ones to come.
#[derive(Debug)]
pub struct DecisionLog {
    recent: Mutex<(u64, VecDeque<Arc<Decision>>)>,
    live: broadcast::Sender<Arc<Decision>>,
}

impl Default for DecisionLog {
    fn default() -> Self {
        Self {
            recent: Mutex::new((0, VecDeque::with_capacity(KEEP))),
            live: broadcast::channel(1024).0,
        }
    }
}

impl DecisionLog {
    /// Numbers and keeps `d`, and hands it to live readers.
    pub fn push(&self, mut d: Decision) -> Arc<Decision> {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.0 += 1;
        d.id = recent.0;
        let d = Arc::new(d);
        if recent.1.len() == KEEP {
            recent.1.pop_front();
        }
        recent.1.push_back(d.clone());
        // Under the lock: a reader never gets one both from `since` and live.
        let _ = self.live.send(d.clone());
        d
    }

    /// The kept decisions after `after`, oldest first, and the live ones from now.
    pub fn since(&self, after: u64) -> (Vec<Arc<Decision>>, broadcast::Receiver<Arc<Decision>>) {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let list = recent.1.iter().filter(|d| d.id > after).cloned().collect();
        (list, self.live.subscribe())
    }

    /// Every kept decision, oldest first.
    pub fn all(&self) -> Vec<Arc<Decision>> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.1.iter().cloned().collect()
    }

    /// Every kept decision of one trace, in the order the requests started.
    pub fn for_trace(&self, trace_id: &str) -> Vec<Arc<Decision>> {
        let mut list: Vec<Arc<Decision>> = {
            let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            recent
                .1
                .iter()
                .filter(|d| d.trace_id == trace_id)
                .cloned()
                .collect()
        };
        // Outbound before inbound at the same instant: the caller's sidecar sends first.
        list.sort_by_key(|d| (d.started_ms(), d.direction != "outbound", d.id));
        list
    }
}

/// Follows one sidecar's feed for as long as the frontend runs, reconnecting with backoff
/// and asking only for what it has not seen.
pub async fn follow(
    name: String,
    addr: LocalAddr,
    log: Arc<DecisionLog>,
    names: Arc<IntentionNames>,
) {
    let mut after = 0u64;
    let mut backoff = Duration::from_millis(100);
    loop {
        match follow_once(&name, &addr, &mut after, &log, &names).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::debug!(proxy = %name, error = %e, "decision feed interrupted");
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

async fn follow_once(
    name: &str,
    addr: &LocalAddr,
    after: &mut u64,
    log: &DecisionLog,
    names: &IntentionNames,
) -> Result<(), FeedError> {
    let tcp = LocalStream::connect(addr)
        .await
        .map_err(|e| FeedError::Connect(addr.clone(), e))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Empty<bytes::Bytes>,
    >(hyper_util::rt::TokioIo::new(tcp))
    .await
    .map_err(|e| FeedError::Http(addr.clone(), e.to_string()))?;
    let driver = tokio::spawn(conn);
    let req = http::Request::get(format!("/decisions?after={after}"))
        .header(http::header::HOST, "localhost")
        .body(http_body_util::Empty::new())
        .map_err(|e| FeedError::Http(addr.clone(), e.to_string()))?;
    let result = async {
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| FeedError::Http(addr.clone(), e.to_string()))?;
        if resp.status() != http::StatusCode::OK {
            return Err(FeedError::Status(addr.clone(), resp.status().as_u16()));
        }
        let mut body = resp.into_body();
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| FeedError::Http(addr.clone(), e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line = buf.split_to(nl + 1);
                match serde_json::from_slice::<Decision>(line.chunk()) {
                    Ok(mut d) => {
                        *after = d.seq;
                        d.proxy = name.to_owned();
                        if let Some(id) = &d.intention {
                            d.intention_summary = names.summary(id).await;
                        }
                        log.push(d);
                    }
                    Err(e) => {
                        tracing::warn!(proxy = %name, error = %e, "ignoring a decision line that does not parse");
                    }
                }
            }
            if buf.len() > MAX_LINE {
                return Err(FeedError::LineTooLong(addr.clone()));
            }
        }
        Ok(())
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcp_lines_show_the_call_and_the_user() {
        let line = |extra: serde_json::Value| -> Decision {
            let mut v = serde_json::json!({
                "ts": "2026-12-03T10:00:00.000Z", "direction": "inbound",
                "source": "spiffe://td/ns/default/sa/a", "destination": "spiffe://td/ns/default/sa/b",
                "decision": "deny", "reason": "r", "method": "POST", "path": "/mcp",
            });
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value(v).unwrap()
        };
        let tool = line(
            serde_json::json!({"mcp_method": "tools/call", "mcp_tool": "delete_all", "user": "alice"}),
        );
        assert_eq!(
            tool.request_text(),
            "MCP tools/call delete_all (user alice)"
        );
        let res =
            line(serde_json::json!({"mcp_method": "resources/read", "mcp_resource": "file:///x"}));
        assert_eq!(res.request_text(), "MCP resources/read file:///x");
        assert_eq!(line(serde_json::json!({})).request_text(), "POST /mcp");
    }

    fn decision(trace: &str, ts: &str, duration_ms: u64, direction: &str) -> Decision {
        serde_json::from_value(serde_json::json!({
            "seq": 1, "ts": ts, "direction": direction, "protocol": "http",
            "source": "spiffe://td/ns/default/sa/a", "destination": "spiffe://td/ns/default/sa/b",
            "decision": "allow", "intention": "i1", "reason": "r", "trace_id": trace,
            "peer_addr": "127.0.0.1:1", "duration_ms": duration_ms,
        }))
        .unwrap()
    }

    #[test]
    fn a_trace_is_ordered_by_when_each_hop_started_not_when_it_was_logged() {
        let log = DecisionLog::default();
        // The inner hop ends (and is logged) first.
        log.push(decision("t", "2026-12-02T10:00:00.050Z", 10, "inbound"));
        log.push(decision("t", "2026-12-02T10:00:00.060Z", 60, "outbound"));
        log.push(decision("other", "2026-12-02T10:00:00.000Z", 1, "inbound"));
        let hops = log.for_trace("t");
        assert_eq!(hops.len(), 2);
        assert_eq!(hops[0].direction, "outbound");
        assert_eq!(hops[1].direction, "inbound");
    }

    #[test]
    fn since_returns_only_what_a_reader_has_not_seen() {
        let log = DecisionLog::default();
        let a = log.push(decision("t", "2026-12-02T10:00:00Z", 0, "inbound"));
        log.push(decision("t", "2026-12-02T10:00:01Z", 0, "inbound"));
        let (after_a, _) = log.since(a.id);
        assert_eq!(after_a.len(), 1);
        assert_eq!(log.all().last().unwrap().id, a.id + 1);
    }

    #[test]
    fn a_line_with_unknown_fields_still_parses_and_a_broken_one_does_not() {
        assert!(serde_json::from_str::<Decision>(r#"{"ts":"x","direction":"inbound","source":"a","destination":"b","decision":"deny","reason":"r","bytes_in":3}"#).is_ok());
        assert!(serde_json::from_str::<Decision>(r#"{"ts":"x"}"#).is_err());
    }
}
