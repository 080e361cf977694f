//! agentmesh-telemetry: end-to-end tracing for agentmesh: the W3C trace context every hop
//! carries in `traceparent`, OpenTelemetry spans, a batched OTLP/HTTP exporter, the live
//! decisions feed and the RFC 3339 timestamps of log lines. Not for deciding anything,
//! metrics or log formatting: it records and ships what the components tell it.
//!
//! Every component (the proxy, the gateway, the AI agents) records one span per request it
//! handles and one per call it makes. Each span continues the incoming `traceparent` (the
//! caller's span becomes its parent) and sends a `traceparent` naming itself to the next hop,
//! so one user question becomes one trace: planner → its proxy → the executor's proxy →
//! executor → … → gateway.
//!
//! # Turning export on
//! Set `OTEL_EXPORTER_OTLP_ENDPOINT` (for example `http://127.0.0.1:4318`; spans go to
//! `{endpoint}/v1/traces` as protobuf) or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as it
//! is). `OTEL_SERVICE_NAME` overrides the component's default `service.name`; see
//! [`ExportConfig::from_env`] for the rest. Without an endpoint nothing is recorded:
//! [`Span`] then only carries ids, and its setters do nothing.
//!
//! Export never slows a request: finished spans go into a bounded queue with `try_send`
//! (a full queue drops and counts the span) and a thread of its own sends them in batches.
//! Call [`Telemetry::shutdown`] on the way out to send what is still queued.
//!
//! # Tracing an HTTP service (the AI agents)
//! An agent is an axum service that talks to other services through its local proxy ports.
//! For each request it handles it starts a SERVER span from the incoming headers; for each
//! call it makes, a CLIENT child span whose context goes out in `traceparent`:
//!
//! ```
//! use agentmesh_telemetry::{Span, SpanKind, attr};
//! use http::HeaderMap;
//!
//! # async fn send(_: HeaderMap) -> u16 { 200 }
//! async fn handle(incoming: &HeaderMap) {
//!     // Continues the caller's trace (or starts one when there is no valid traceparent).
//!     let mut span = Span::server("planner ask", incoming);
//!     span.set_str(attr::HTTP_ROUTE, "/ask");
//!
//!     // One CLIENT span per outgoing call, its context injected into the call's headers.
//!     let mut call = span.child("call executor", SpanKind::Client);
//!     let mut headers = HeaderMap::new();
//!     call.inject(&mut headers); // traceparent: 00-<trace id>-<call's span id>-01
//!     let status = send(headers).await; // e.g. POST http://127.0.0.1:9001/run via the proxy
//!     call.set_http_status(status);
//!     call.end();
//!
//!     span.set_http_status(200);
//!     // Dropping (or end()) finishes the span and queues it for export.
//! }
//!
//! # async fn main_() -> Result<(), agentmesh_telemetry::ExportError> {
//! // Once per process, at startup; flush on the way out.
//! let telemetry = agentmesh_telemetry::init("agentmesh-agent/planner")?;
//! # handle(&HeaderMap::new()).await;
//! telemetry.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! The attribute names agentmesh uses are the constants in [`attr`].
#![forbid(unsafe_code)]

// A namespace of attribute-name constants, used as `attr::HTTP_ROUTE`.
pub mod attr;
// A namespace of timestamp helpers, called as `clock::now_rfc3339()`.
pub mod clock;
mod config;
mod context;
// A namespace for the process's one live feed, called as `decisions::publish(..)`.
pub mod decisions;
mod export;
mod otlp;
mod span;

pub use config::{
    ConfigError, ENDPOINT_ENV, ExportConfig, HEADERS_ENV, MAX_EXPORT_BATCH_SIZE_ENV,
    MAX_QUEUE_SIZE_ENV, PROTOCOL_ENV, RESOURCE_ATTRIBUTES_ENV, SCHEDULE_DELAY_ENV,
    SDK_DISABLED_ENV, SERVICE_NAME_ENV, TIMEOUT_ENV, TRACES_ENDPOINT_ENV, TRACES_EXPORTER_ENV,
    TRACES_HEADERS_ENV, TRACES_PROTOCOL_ENV, TRACES_TIMEOUT_ENV,
};
pub use context::{TRACEPARENT, TraceContext};
pub use export::{ExportError, ExportStats, Telemetry, flush, init, init_with, stats};
// The generated OTLP messages, a namespace in the protos' package layout, for decoding what
// the exporter sends (the crate's tests, a test collector).
pub use otlp::proto;
pub use span::{Span, SpanKind, Status, Value, extract, inject};
