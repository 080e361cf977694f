//! Spans: a [`TraceContext`] that is always there (for headers and log lines), and a
//! recording that exists only while export is on and the trace is sampled.

use std::borrow::Cow;
use std::time::{Instant, SystemTime};

use http::{HeaderMap, HeaderValue};

use crate::context::{TRACEPARENT, TraceContext};

/// What side of a call a span describes (OpenTelemetry's `SpanKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpanKind {
    /// Work inside one process.
    Internal,
    /// Handling a request that came in.
    Server,
    /// Making a request to another service.
    Client,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

/// A span's outcome (OpenTelemetry's status).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Status {
    /// Nothing said: the default, and right for a refusal that was the correct answer.
    #[default]
    Unset,
    /// The operation failed, with a message.
    Error(String),
}

/// A finished span, as handed to the exporter.
#[derive(Debug)]
pub(crate) struct SpanRecord {
    pub ctx: TraceContext,
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, Value)>,
    pub status: Status,
}

/// What a recording span holds while it is open.
#[derive(Debug)]
struct Recording {
    record: SpanRecord,
    started: Instant,
}

/// One span. It always carries its [`TraceContext`], so headers and log lines have a trace id
/// whether or not anything is exported. It records name, times and attributes only when
/// export is on (see [`init`](crate::init)) and the trace is sampled; otherwise every setter
/// is a branch on `None` and nothing is allocated. The span ends, and is queued for export,
/// when it is dropped or [`end`](Self::end)ed.
#[derive(Debug)]
pub struct Span {
    ctx: TraceContext,
    recording: Option<Box<Recording>>,
}

impl Span {
    /// Starts a span at `ctx` (which already holds this span's id and its parent).
    pub fn start(name: impl Into<Cow<'static, str>>, kind: SpanKind, ctx: TraceContext) -> Self {
        let recording = (ctx.is_sampled() && crate::export::enabled()).then(|| {
            let start = SystemTime::now();
            Box::new(Recording {
                record: SpanRecord {
                    ctx,
                    name: name.into(),
                    kind,
                    start_unix_nanos: unix_nanos(start),
                    end_unix_nanos: 0,
                    // Enough for every attribute the proxy and the gateway set, so the vector
                    // is allocated once.
                    attributes: Vec::with_capacity(16),
                    status: Status::Unset,
                },
                started: Instant::now(),
            })
        });
        Self { ctx, recording }
    }

    /// A SERVER span for a request that came in with `headers`: it continues the caller's
    /// `traceparent` (the caller's span becomes the parent) or starts a new trace when the
    /// header is missing or malformed.
    pub fn server(name: impl Into<Cow<'static, str>>, headers: &HeaderMap) -> Self {
        Self::start(name, SpanKind::Server, extract(headers))
    }

    /// A span for work this one does, in the same trace with this span as the parent: use
    /// [`SpanKind::Client`] for each outgoing call and [`inject`](Self::inject) its context.
    pub fn child(&self, name: impl Into<Cow<'static, str>>, kind: SpanKind) -> Self {
        Self::start(name, kind, self.ctx.child())
    }

    /// This span's trace context.
    pub fn context(&self) -> &TraceContext {
        &self.ctx
    }

    /// Whether attributes set now will be exported.
    pub fn is_recording(&self) -> bool {
        self.recording.is_some()
    }

    /// Sets `traceparent` in `headers` to this span, so the next hop's span is its child.
    pub fn inject(&self, headers: &mut HeaderMap) {
        inject(&self.ctx, headers);
    }

    fn set(&mut self, key: &'static str, value: impl FnOnce() -> Value) {
        if let Some(r) = &mut self.recording {
            let value = value();
            let attrs = &mut r.record.attributes;
            match attrs.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => attrs.push((key, value)),
            }
        }
    }

    /// Sets a string attribute (copied only when recording).
    pub fn set_str(&mut self, key: &'static str, value: &str) {
        self.set(key, || Value::Str(value.to_owned()));
    }

    /// Sets an integer attribute.
    pub fn set_int(&mut self, key: &'static str, value: i64) {
        self.set(key, || Value::Int(value));
    }

    /// Sets a float attribute.
    pub fn set_float(&mut self, key: &'static str, value: f64) {
        self.set(key, || Value::Float(value));
    }

    /// Sets a boolean attribute.
    pub fn set_bool(&mut self, key: &'static str, value: bool) {
        self.set(key, || Value::Bool(value));
    }

    /// Records the HTTP status and, as the semantic conventions say, marks the span failed
    /// for a 5xx on a SERVER span and for any 4xx or 5xx on a CLIENT span.
    pub fn set_http_status(&mut self, status: u16) {
        self.set_int(crate::attr::HTTP_STATUS, i64::from(status));
        let failed = match self.recording.as_ref().map(|r| r.record.kind) {
            Some(SpanKind::Server) => status >= 500,
            Some(SpanKind::Client) => status >= 400,
            _ => false,
        };
        if failed {
            self.set_error(&format!("HTTP {status}"));
        }
    }

    /// Marks the span failed.
    pub fn set_error(&mut self, message: &str) {
        if let Some(r) = &mut self.recording {
            r.record.status = Status::Error(message.to_owned());
        }
    }

    /// Ends the span now (dropping it does the same).
    pub fn end(self) {}
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(mut r) = self.recording.take() {
            // The wall clock gives the start; the monotonic clock the duration, so a clock
            // step during the span cannot make it end before it began.
            let elapsed = u64::try_from(r.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            r.record.end_unix_nanos = r.record.start_unix_nanos.saturating_add(elapsed);
            crate::export::submit(r.record);
        }
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The trace context for a request that came in with `headers`: the caller's `traceparent`
/// continued, or a new trace when it is missing or malformed.
pub fn extract(headers: &HeaderMap) -> TraceContext {
    TraceContext::continue_or_start(headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()))
}

/// Sets `traceparent` in `headers` to `ctx`, replacing any there.
pub fn inject(ctx: &TraceContext, headers: &mut HeaderMap) {
    // Always valid: the header is made of ASCII hex digits and dashes.
    if let Ok(v) = HeaderValue::from_str(&ctx.header()) {
        headers.insert(TRACEPARENT, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_without_export_records_nothing_but_keeps_its_context() {
        let mut headers = HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let mut span = Span::server("inbound", &headers);
        assert!(!span.is_recording(), "export was never initialised");
        span.set_str(crate::attr::SPIFFE_PEER_ID, "spiffe://td/ns/default/sa/a");
        assert_eq!(
            span.context().trace_id_hex(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let call = span.child("call", SpanKind::Client);
        let mut out = HeaderMap::new();
        call.inject(&mut out);
        let sent = out.get(TRACEPARENT).unwrap().to_str().unwrap();
        assert_eq!(
            sent,
            format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
                call.context().span_id_hex()
            )
        );
        assert_eq!(call.context().parent_span_id, Some(span.context().span_id));
    }

    #[test]
    fn an_invalid_traceparent_header_starts_a_new_trace() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static("00-nothex-01"));
        let span = Span::server("inbound", &headers);
        assert_eq!(span.context().parent_span_id, None);
        assert!(span.context().is_sampled());
    }
}
