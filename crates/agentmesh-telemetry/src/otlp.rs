//! The OTLP messages (generated from the vendored official protos in
//! `proto/opentelemetry/`) and the encoding of finished spans into an
//! `ExportTraceServiceRequest`.

use prost::Message as _;

use crate::span::{SpanKind, SpanRecord, Status, Value};

/// The generated OTLP protobuf messages, in their proto packages'
/// module layout (`opentelemetry.proto.trace.v1` is `proto::trace::v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    /// `opentelemetry.proto.common.v1`
    pub mod common {
        /// Version 1.
        pub mod v1 {
            include!(concat!(
                env!("OUT_DIR"),
                "/opentelemetry.proto.common.v1.rs"
            ));
        }
    }
    /// `opentelemetry.proto.resource.v1`
    pub mod resource {
        /// Version 1.
        pub mod v1 {
            include!(concat!(
                env!("OUT_DIR"),
                "/opentelemetry.proto.resource.v1.rs"
            ));
        }
    }
    /// `opentelemetry.proto.trace.v1`
    pub mod trace {
        /// Version 1.
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/opentelemetry.proto.trace.v1.rs"));
        }
    }
    /// `opentelemetry.proto.collector.trace.v1`
    pub mod collector {
        /// The trace collector service.
        pub mod trace {
            /// Version 1.
            pub mod v1 {
                include!(concat!(
                    env!("OUT_DIR"),
                    "/opentelemetry.proto.collector.trace.v1.rs"
                ));
            }
        }
    }
}

use proto::collector::trace::v1::ExportTraceServiceRequest;
use proto::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use proto::resource::v1::Resource;
use proto::trace::v1::{ResourceSpans, ScopeSpans, Span, SpanFlags, span, status};

/// The instrumentation scope every agentmesh span is recorded under.
const SCOPE: &str = "agentmesh";

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn any(v: Value) -> any_value::Value {
    match v {
        Value::Str(s) => any_value::Value::StringValue(s),
        Value::Int(i) => any_value::Value::IntValue(i),
        Value::Float(f) => any_value::Value::DoubleValue(f),
        Value::Bool(b) => any_value::Value::BoolValue(b),
    }
}

fn span(r: SpanRecord) -> Span {
    // Bits 0-7 are the W3C trace flags; bit 8 says bit 9 is known; bit 9 says the parent
    // came from another process.
    let mut flags = u32::from(r.ctx.flags) | SpanFlags::ContextHasIsRemoteMask as u32;
    if r.ctx.parent_is_remote {
        flags |= SpanFlags::ContextIsRemoteMask as u32;
    }
    let kind = match r.kind {
        SpanKind::Internal => span::SpanKind::Internal,
        SpanKind::Server => span::SpanKind::Server,
        SpanKind::Client => span::SpanKind::Client,
    };
    let status = match r.status {
        Status::Unset => None,
        Status::Error(message) => Some(proto::trace::v1::Status {
            message,
            code: status::StatusCode::Error as i32,
        }),
    };
    Span {
        trace_id: r.ctx.trace_id.to_vec(),
        span_id: r.ctx.span_id.to_vec(),
        parent_span_id: r.ctx.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        flags,
        name: r.name.into_owned(),
        kind: kind as i32,
        start_time_unix_nano: r.start_unix_nanos,
        end_time_unix_nano: r.end_unix_nanos,
        attributes: r
            .attributes
            .into_iter()
            .map(|(k, v)| kv(k, any(v)))
            .collect(),
        status,
        ..Default::default()
    }
}

/// One export request body: every span under one resource and one scope (a process is one
/// service).
pub(crate) fn encode(
    resource: &[(String, String)],
    spans: impl IntoIterator<Item = SpanRecord>,
) -> Vec<u8> {
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource
                    .iter()
                    .map(|(k, v)| kv(k, any_value::Value::StringValue(v.clone())))
                    .collect(),
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: SCOPE.to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..Default::default()
                }),
                spans: spans.into_iter().map(span).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    request.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::context::TraceContext;

    #[test]
    fn spans_encode_to_an_export_request_the_official_protos_decode() {
        let parent = TraceContext::continue_or_start(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        let record = SpanRecord {
            ctx: parent,
            name: Cow::Borrowed("proxy inbound"),
            kind: SpanKind::Server,
            start_unix_nanos: 1_000,
            end_unix_nanos: 2_000,
            attributes: vec![
                (
                    crate::attr::SPIFFE_PEER_ID,
                    Value::Str("spiffe://td/ns/default/sa/a".into()),
                ),
                (crate::attr::HTTP_STATUS, Value::Int(403)),
            ],
            status: Status::Unset,
        };
        let body = encode(
            &[("service.name".into(), "agentmesh-proxy/b".into())],
            [record],
        );
        let decoded = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        let rs = &decoded.resource_spans[0];
        let service = &rs.resource.as_ref().unwrap().attributes[0];
        assert_eq!(service.key, "service.name");
        let s = &rs.scope_spans[0].spans[0];
        assert_eq!(hex(&s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&s.parent_span_id), "00f067aa0ba902b7");
        assert_eq!(s.span_id, parent.span_id.to_vec());
        assert_eq!(s.kind, span::SpanKind::Server as i32);
        assert_eq!(s.flags, 0x301, "sampled, with a remote parent");
        assert_eq!(s.attributes[0].key, "spiffe.peer_id");
        assert_eq!(
            s.attributes[1].value.as_ref().unwrap().value,
            Some(any_value::Value::IntValue(403))
        );
    }

    fn hex(b: &[u8]) -> String {
        crate::context::hex(b)
    }
}
