//! The exporter against an in-process OTLP/HTTP collector on 127.0.0.1: batches, flush and
//! the export request's shape. A test binary of its own, because export is set up once per
//! process.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_telemetry::proto::collector::trace::v1::ExportTraceServiceRequest;
use agentmesh_telemetry::proto::common::v1::any_value;
use agentmesh_telemetry::{ExportConfig, Span, SpanKind, attr};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prost::Message as _;

/// What the collector received: (path, content type, body) per POST.
type Received = Arc<Mutex<Vec<(String, String, Bytes)>>>;

async fn collector() -> (std::net::SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let seen = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let ct = req
                            .headers()
                            .get(http::header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        seen.lock().unwrap().push((path, ct, body));
                        // An empty ExportTraceServiceResponse encodes to zero bytes.
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, received)
}

#[tokio::test]
async fn spans_reach_the_collector_in_batches_with_parent_links_and_flush_waits_for_them() {
    let (addr, received) = collector().await;
    let vars = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
        // Only a full batch or the flush sends anything, so what arrives is deterministic.
        ("OTEL_BSP_SCHEDULE_DELAY", "600000".to_owned()),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "3".to_owned()),
    ];
    let config = ExportConfig::from_vars("agentmesh-test", |k| {
        vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    })
    .unwrap();
    let telemetry = agentmesh_telemetry::init_with(config).unwrap();
    assert!(telemetry.is_enabled());

    let mut incoming = HeaderMap::new();
    incoming.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    let mut server = Span::server("handle", &incoming);
    assert!(server.is_recording());
    server.set_str(attr::SPIFFE_PEER_ID, "spiffe://td/ns/default/sa/caller");
    for i in 0..4 {
        let mut call = server.child("call", SpanKind::Client);
        call.set_int("test.index", i);
        call.set_http_status(if i == 3 { 503 } else { 200 });
    }
    server.set_http_status(200);
    let server_id = server.context().span_id;
    server.end();
    // A trace the caller did not sample is not recorded.
    let mut unsampled = HeaderMap::new();
    unsampled.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
    );
    assert!(!Span::server("unsampled", &unsampled).is_recording());

    agentmesh_telemetry::flush().await;
    let posts = received.lock().unwrap().clone();
    assert_eq!(posts.len(), 2, "one full batch of 3, then the flush of 2");
    let mut spans = Vec::new();
    for (path, ct, body) in &posts {
        assert_eq!(path, "/v1/traces");
        assert_eq!(ct, "application/x-protobuf");
        let req = ExportTraceServiceRequest::decode(body.as_ref()).unwrap();
        let rs = &req.resource_spans[0];
        let service = &rs.resource.as_ref().unwrap().attributes[0];
        assert_eq!(service.key, "service.name");
        assert_eq!(
            service.value.as_ref().unwrap().value,
            Some(any_value::Value::StringValue("agentmesh-test".into()))
        );
        spans.extend(rs.scope_spans[0].spans.iter().cloned());
    }
    assert_eq!(spans.len(), 5);
    let server = spans.iter().find(|s| s.name == "handle").unwrap();
    assert_eq!(
        server.parent_span_id,
        [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
    );
    for call in spans.iter().filter(|s| s.name == "call") {
        assert_eq!(call.trace_id, server.trace_id);
        assert_eq!(call.parent_span_id, server_id.to_vec());
    }
    let failed = spans
        .iter()
        .filter(|s| s.status.as_ref().is_some_and(|st| st.code == 2))
        .count();
    assert_eq!(failed, 1, "the CLIENT span that got a 503 is an error");

    let stats = agentmesh_telemetry::stats().unwrap();
    assert_eq!((stats.exported, stats.dropped, stats.failed), (5, 0, 0));
    assert!(matches!(
        agentmesh_telemetry::init_with(
            ExportConfig::from_vars("again", |k| (k == "OTEL_EXPORTER_OTLP_ENDPOINT")
                .then(|| format!("http://{addr}")))
            .unwrap()
        ),
        Err(agentmesh_telemetry::ExportError::AlreadyInitialized)
    ));
    tokio::time::timeout(Duration::from_secs(30), telemetry.shutdown())
        .await
        .unwrap();
}
