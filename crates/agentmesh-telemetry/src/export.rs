//! The batched OTLP/HTTP exporter: a bounded queue that the request path only ever
//! `try_send`s into, and a thread of its own that POSTs batches to `{endpoint}/v1/traces`.
//!
//! The request path never waits for the exporter: when the queue is full, the span is dropped
//! and counted. The thread runs its own single-threaded runtime, so export works the same
//! under the proxy's per-core runtimes, the gateway's runtime, or none at all, and a slow
//! collector only ever costs the thread, never a request.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::{ConfigError, ExportConfig};
use crate::span::SpanRecord;

/// Why export could not be set up, or why one export failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The environment asks for something unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// [`init`] was called twice in one process.
    #[error("span export is already set up in this process (init called twice)")]
    AlreadyInitialized,
    /// The exporter's runtime or thread could not be started.
    #[error("cannot start the span export thread: {0}")]
    Thread(std::io::Error),
    /// The collector could not be reached.
    #[error("cannot reach the OTLP collector at {endpoint}: {source}")]
    Connect {
        /// Where.
        endpoint: String,
        /// Why.
        source: hyper_util::client::legacy::Error,
    },
    /// The collector answered with an error status.
    #[error("the OTLP collector at {endpoint} answered {status}: {body}")]
    Status {
        /// Where.
        endpoint: String,
        /// The status.
        status: StatusCode,
        /// The start of its answer.
        body: String,
    },
    /// The export took longer than the configured timeout.
    #[error("exporting to the OTLP collector at {0} timed out")]
    Timeout(String),
}

/// Counts since the exporter started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Spans the collector accepted.
    pub exported: u64,
    /// Spans dropped because the queue was full.
    pub dropped: u64,
    /// Spans lost because an export failed.
    pub failed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    exported: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ExportStats {
        ExportStats {
            exported: self.exported.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// The process's exporter, once [`init`] has found an endpoint.
#[derive(Debug)]
struct Exporter {
    spans: mpsc::Sender<SpanRecord>,
    flush: mpsc::UnboundedSender<oneshot::Sender<()>>,
    counters: Counters,
    /// How long a flush may take: one export per full batch in the queue, each within the
    /// timeout, is more than a shutdown should wait, so it is capped.
    flush_patience: Duration,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

/// Whether spans are being recorded: one atomic load, so the disabled path costs nothing.
pub(crate) fn enabled() -> bool {
    EXPORTER.get().is_some()
}

/// Queues a finished span; drops and counts it when the queue is full.
pub(crate) fn submit(span: SpanRecord) {
    if let Some(e) = EXPORTER.get() {
        e.submit(span);
    }
}

impl Exporter {
    fn submit(&self, span: SpanRecord) {
        if self.spans.try_send(span).is_err() {
            // The export thread reports drops once per interval; a log line here would put
            // stderr on the request path exactly when the process is overloaded.
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What [`init`] returns: flush it on shutdown.
#[derive(Debug)]
#[must_use = "call shutdown() on exit, or the last spans are lost"]
pub struct Telemetry {
    enabled: bool,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Exports every queued span now, waiting for the collector (bounded by the export
    /// timeout). For the shutdown path: call it after the listeners have stopped.
    pub async fn shutdown(self) {
        if !self.enabled {
            return;
        }
        flush().await;
        if let Some(s) = stats() {
            tracing::info!(
                exported = s.exported,
                dropped = s.dropped,
                failed = s.failed,
                "span export flushed"
            );
        }
    }
}

/// Sets up span export from the OpenTelemetry environment variables (see
/// [`ExportConfig::from_env`]); `default_service_name` is the component, such as
/// `agentmesh-proxy/executor`. With no endpoint set, spans are not recorded at all.
///
/// # Errors
/// A variable that cannot be used (one line naming it), a second call, or a thread that
/// cannot be started.
pub fn init(default_service_name: &str) -> Result<Telemetry, ExportError> {
    init_with(ExportConfig::from_env(default_service_name)?)
}

/// As [`init`], with the settings given (`None`: export off).
///
/// # Errors
/// A second call, or a thread that cannot be started.
pub fn init_with(config: Option<ExportConfig>) -> Result<Telemetry, ExportError> {
    let Some(config) = config else {
        return Ok(Telemetry { enabled: false });
    };
    if EXPORTER.get().is_some() {
        return Err(ExportError::AlreadyInitialized);
    }
    let (spans, spans_rx) = mpsc::channel(config.max_queue_size);
    let (flush, flush_rx) = mpsc::unbounded_channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ExportError::Thread)?;
    let exporter = Exporter {
        spans,
        flush,
        counters: Counters::default(),
        flush_patience: config.timeout.min(Duration::from_secs(5)) + Duration::from_secs(1),
    };
    if EXPORTER.set(exporter).is_err() {
        return Err(ExportError::AlreadyInitialized);
    }
    tracing::info!(
        endpoint = %redacted(&config.endpoint),
        service_name = config.service_name(),
        "exporting spans over OTLP/HTTP"
    );
    std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || runtime.block_on(run(config, spans_rx, flush_rx)))
        .map_err(ExportError::Thread)?;
    Ok(Telemetry { enabled: true })
}

/// Exports every span queued so far and waits for the collector's answer (bounded).
/// Does nothing when export is off.
pub async fn flush() {
    let Some(e) = EXPORTER.get() else {
        return;
    };
    let (done, wait) = oneshot::channel();
    if e.flush.send(done).is_ok() && tokio::time::timeout(e.flush_patience, wait).await.is_err() {
        tracing::warn!("span export did not finish flushing in time; the last spans may be lost");
    }
}

/// Counts since export started, or `None` when it is off.
pub fn stats() -> Option<ExportStats> {
    EXPORTER.get().map(|e| e.counters.snapshot())
}

/// The endpoint without any user info, for logs.
fn redacted(uri: &http::Uri) -> String {
    format!(
        "http://{}{}{}",
        uri.host().unwrap_or_default(),
        uri.port().map(|p| format!(":{p}")).unwrap_or_default(),
        uri.path()
    )
}

/// The export thread: sends a batch when it is full, when the schedule delay has passed
/// since the last export, and on flush.
async fn run(
    config: ExportConfig,
    mut spans: mpsc::Receiver<SpanRecord>,
    mut flushes: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(config.timeout));
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let mut sender = Sender {
        config: &config,
        client,
        failing: false,
        dropped_reported: 0,
    };
    let max = config.max_export_batch_size;
    let mut batch: Vec<SpanRecord> = Vec::with_capacity(max);
    let mut next = Instant::now() + config.schedule_delay;
    loop {
        let room = max - batch.len();
        tokio::select! {
            biased;
            done = flushes.recv() => {
                let Some(done) = done else { return };
                while let Ok(s) = spans.try_recv() {
                    batch.push(s);
                    if batch.len() >= max {
                        sender.export(&mut batch).await;
                    }
                }
                sender.export(&mut batch).await;
                let _ = done.send(());
            }
            n = spans.recv_many(&mut batch, room) => {
                if n == 0 {
                    // Every sender is gone (only at process teardown).
                    sender.export(&mut batch).await;
                    return;
                }
                if batch.len() >= max {
                    sender.export(&mut batch).await;
                    next = Instant::now() + config.schedule_delay;
                }
            }
            () = tokio::time::sleep_until(next) => {
                sender.export(&mut batch).await;
                next = Instant::now() + config.schedule_delay;
            }
        }
    }
}

struct Sender<'a> {
    config: &'a ExportConfig,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Whether the last export failed, so an outage is logged once, not once per batch.
    failing: bool,
    dropped_reported: u64,
}

impl Sender<'_> {
    async fn export(&mut self, batch: &mut Vec<SpanRecord>) {
        self.report_drops();
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let body = Bytes::from(crate::otlp::encode(&self.config.resource, batch.drain(..)));
        let Some(e) = EXPORTER.get() else { return };
        match self.post_with_retries(body).await {
            Ok(()) => {
                e.counters.exported.fetch_add(n, Ordering::Relaxed);
                if self.failing {
                    tracing::info!("exporting spans again");
                    self.failing = false;
                }
            }
            Err(err) => {
                e.counters.failed.fetch_add(n, Ordering::Relaxed);
                if !self.failing {
                    tracing::warn!(error = %err, spans = n, "span export failed; spans are dropped until the collector answers (logged once per outage)");
                    self.failing = true;
                }
            }
        }
    }

    fn report_drops(&mut self) {
        let Some(e) = EXPORTER.get() else { return };
        let dropped = e.counters.dropped.load(Ordering::Relaxed);
        if dropped > self.dropped_reported {
            tracing::warn!(
                dropped = dropped - self.dropped_reported,
                queue = self.config.max_queue_size,
                "the span export queue was full; spans were dropped"
            );
            self.dropped_reported = dropped;
        }
    }

    /// One POST, retried with backoff on the answers the OTLP spec calls retryable (429, 502,
    /// 503, 504) and on connection failures, all within the export timeout.
    async fn post_with_retries(&self, body: Bytes) -> Result<(), ExportError> {
        let endpoint = redacted(&self.config.endpoint);
        let deadline = Instant::now() + self.config.timeout;
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = tokio::time::timeout_at(deadline, self.post(body.clone(), &endpoint))
                .await
                .unwrap_or_else(|_| Err(ExportError::Timeout(endpoint.clone())));
            let retryable = match &attempt {
                Ok(()) => return Ok(()),
                Err(ExportError::Connect { .. }) => true,
                Err(ExportError::Status { status, .. }) => {
                    matches!(status.as_u16(), 429 | 502 | 503 | 504)
                }
                Err(_) => false,
            };
            if !retryable || Instant::now() + backoff >= deadline {
                return attempt;
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }

    async fn post(&self, body: Bytes, endpoint: &str) -> Result<(), ExportError> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = self.config.endpoint.clone();
        let h = req.headers_mut();
        h.extend(self.config.headers.clone());
        h.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/x-protobuf"),
        );
        h.insert(
            header::USER_AGENT,
            header::HeaderValue::from_static(concat!("agentmesh/", env!("CARGO_PKG_VERSION"))),
        );
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|source| ExportError::Connect {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        let status = resp.status();
        // Read the answer whole so the connection can be reused; its content (a partial
        // success count, or an error message) only matters for the log line.
        let answer = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if status.is_success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&answer[..answer.len().min(200)]);
        Err(ExportError::Status {
            endpoint: endpoint.to_owned(),
            status,
            body: text.split_whitespace().collect::<Vec<_>>().join(" "),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::context::TraceContext;
    use crate::span::{SpanKind, Status};

    fn record() -> SpanRecord {
        SpanRecord {
            ctx: TraceContext::start(),
            name: Cow::Borrowed("x"),
            kind: SpanKind::Internal,
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: Vec::new(),
            status: Status::Unset,
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (spans, _rx) = mpsc::channel(2);
        let (flush, _flush_rx) = mpsc::unbounded_channel();
        let e = Exporter {
            spans,
            flush,
            counters: Counters::default(),
            flush_patience: Duration::from_secs(1),
        };
        // Nothing drains the queue: the third span onwards must be dropped, not waited for.
        for _ in 0..5 {
            e.submit(record());
        }
        assert_eq!(
            e.counters.snapshot(),
            ExportStats {
                exported: 0,
                dropped: 3,
                failed: 0
            }
        );
    }

    #[test]
    fn logged_endpoints_carry_no_user_info() {
        let uri: http::Uri = "http://user:secret@collector:4318/v1/traces"
            .parse()
            .unwrap();
        assert_eq!(redacted(&uri), "http://collector:4318/v1/traces");
    }
}
