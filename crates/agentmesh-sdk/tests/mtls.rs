//! mTLS end to end in one process: real SVIDs from an in-process CA, real TLS 1.3 handshakes
//! on loopback, for the axum server, the pinned HTTP client and the tonic pieces.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use agentmesh_proto::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use agentmesh_proto::workload::{self as wl};
use agentmesh_sdk::grpc::{self, IdentityInterceptor};
use agentmesh_sdk::testing::TestCa;
use agentmesh_sdk::{ClientError, MtlsClient, PeerIdentity, RequireIdentity, X509Source};
use axum::Router;
use axum::routing::get;
use http::StatusCode;
use http_body_util::BodyExt as _;

async fn start_http(source: Arc<X509Source>) -> SocketAddr {
    let app = Router::new().route(
        "/hello",
        get(|PeerIdentity(peer): PeerIdentity| async move { format!("hello {peer}") }).route_layer(
            RequireIdentity::exact(["spiffe://td/client".parse().unwrap()]),
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(agentmesh_sdk::serve(listener, source, app));
    addr
}

async fn body(resp: http::Response<hyper::body::Incoming>) -> String {
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

#[tokio::test]
async fn the_route_admits_the_listed_client_and_refuses_another_with_403() {
    let ca = TestCa::new("td");
    let addr = start_http(ca.source("spiffe://td/server")).await;
    let url = format!("https://{addr}/hello");

    let client = MtlsClient::pinned(
        ca.source("spiffe://td/client"),
        "spiffe://td/server".parse().unwrap(),
    );
    let resp = client.get(&url).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body(resp).await, "hello spiffe://td/client");

    let intruder = MtlsClient::pinned(
        ca.source("spiffe://td/intruder"),
        "spiffe://td/server".parse().unwrap(),
    );
    let resp = intruder.get(&url).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let json: serde_json::Value = serde_json::from_str(&body(resp).await).unwrap();
    assert!(
        json["reason"]
            .as_str()
            .unwrap()
            .contains("spiffe://td/intruder"),
        "{json}"
    );
}

#[tokio::test]
async fn the_client_refuses_a_server_with_another_id_or_from_another_ca() {
    let ca = TestCa::new("td");
    let addr = start_http(ca.source("spiffe://td/impostor")).await;
    let client = MtlsClient::pinned(
        ca.source("spiffe://td/client"),
        "spiffe://td/server".parse().unwrap(),
    );
    let err = client
        .get(&format!("https://{addr}/hello"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Connect {
                kind: std::io::ErrorKind::InvalidData,
                ..
            }
        ),
        "a refused peer is InvalidData: {err:?}"
    );
    assert!(err.to_string().contains("spiffe://td/impostor"), "{err}");

    // Nothing listening is told apart from a refused peer.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = client
        .get(&format!("https://{closed}/hello"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Connect {
                kind: std::io::ErrorKind::ConnectionRefused,
                ..
            }
        ),
        "{err:?}"
    );

    let foreign = TestCa::new("td");
    let addr = start_http(foreign.source("spiffe://td/server")).await;
    let err = client
        .get(&format!("https://{addr}/hello"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
}

#[tokio::test]
async fn a_client_from_a_foreign_ca_never_reaches_the_route() {
    let ca = TestCa::new("td");
    let addr = start_http(ca.source("spiffe://td/server")).await;
    let foreign = TestCa::new("td");
    // It trusts our server (our roots) but its own SVID is from a foreign CA.
    let (svid, _) = foreign.svid("spiffe://td/client");
    let source = Arc::new(X509Source::from_svid(svid, ca.roots()).unwrap());
    let client = MtlsClient::pinned(source, "spiffe://td/server".parse().unwrap());
    assert!(client.get(&format!("https://{addr}/hello")).await.is_err());
}

#[tokio::test]
async fn a_rotated_svid_is_presented_on_the_next_connection_without_rebuilding() {
    let ca = TestCa::new("td");
    let server = ca.source("spiffe://td/server");
    let addr = start_http(Arc::clone(&server)).await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let check = {
        let seen = Arc::clone(&seen);
        agentmesh_tls::from_fn(move |id| {
            seen.lock().unwrap().push(id.to_string());
            Ok(())
        })
    };
    let before = server.current().svid.serial.clone();
    let (next, roots) = ca.svid("spiffe://td/server");
    server.update(next, roots).unwrap();
    assert_ne!(server.current().svid.serial, before);
    // A fresh client (fresh pool) makes a new connection and must see the new certificate.
    let mut connector = agentmesh_sdk::MtlsConnector::new(
        ca.source("spiffe://td/client"),
        check,
        agentmesh_sdk::tls::ALPN_HTTP,
    );
    let stream = tower::Service::call(&mut connector, format!("https://{addr}").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(stream.peer_id().unwrap().to_string(), "spiffe://td/server");
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(
        stream.peer_serial(),
        Some(server.current().svid.serial.clone())
    );
}

#[derive(Debug)]
struct Echo;

#[tonic::async_trait]
impl SpiffeWorkloadApi for Echo {
    type FetchX509SVIDStream = tokio_stream::Empty<Result<wl::X509svidResponse, tonic::Status>>;
    type FetchX509BundlesStream =
        tokio_stream::Empty<Result<wl::X509BundlesResponse, tonic::Status>>;
    type FetchJWTBundlesStream = tokio_stream::Empty<Result<wl::JwtBundlesResponse, tonic::Status>>;

    async fn fetch_x509svid(
        &self,
        _: tonic::Request<wl::X509svidRequest>,
    ) -> Result<tonic::Response<Self::FetchX509SVIDStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("test"))
    }
    async fn fetch_x509_bundles(
        &self,
        _: tonic::Request<wl::X509BundlesRequest>,
    ) -> Result<tonic::Response<Self::FetchX509BundlesStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("test"))
    }
    async fn fetch_jwt_bundles(
        &self,
        _: tonic::Request<wl::JwtBundlesRequest>,
    ) -> Result<tonic::Response<Self::FetchJWTBundlesStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("test"))
    }
    async fn validate_jwtsvid(
        &self,
        _: tonic::Request<wl::ValidateJwtsvidRequest>,
    ) -> Result<tonic::Response<wl::ValidateJwtsvidResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("test"))
    }
    /// Echoes the caller's verified SPIFFE ID back.
    async fn fetch_jwtsvid(
        &self,
        req: tonic::Request<wl::JwtsvidRequest>,
    ) -> Result<tonic::Response<wl::JwtsvidResponse>, tonic::Status> {
        let peer = req
            .extensions()
            .get::<PeerIdentity>()
            .expect("interceptor sets it");
        Ok(tonic::Response::new(wl::JwtsvidResponse {
            svids: vec![wl::Jwtsvid {
                spiffe_id: peer.0.to_string(),
                ..Default::default()
            }],
        }))
    }
}

async fn start_grpc(ca: &TestCa, id: &str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = grpc::incoming(listener, ca.source(id), agentmesh_tls::any_id()).unwrap();
    let svc = SpiffeWorkloadApiServer::with_interceptor(
        Echo,
        IdentityInterceptor::exact(["spiffe://td/planner".parse().unwrap()]),
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming),
    );
    addr
}

#[tokio::test]
async fn grpc_admits_the_listed_caller_and_refuses_another_with_permission_denied() {
    let ca = TestCa::new("td");
    let addr = start_grpc(&ca, "spiffe://td/executor").await;
    let uri = format!("https://{addr}");

    let channel = grpc::channel(
        ca.source("spiffe://td/planner"),
        &uri,
        "spiffe://td/executor".parse().unwrap(),
    )
    .await
    .unwrap();
    let resp = SpiffeWorkloadApiClient::new(channel)
        .fetch_jwtsvid(wl::JwtsvidRequest::default())
        .await
        .unwrap();
    assert_eq!(resp.into_inner().svids[0].spiffe_id, "spiffe://td/planner");

    let channel = grpc::channel(
        ca.source("spiffe://td/other"),
        &uri,
        "spiffe://td/executor".parse().unwrap(),
    )
    .await
    .unwrap();
    let status = SpiffeWorkloadApiClient::new(channel)
        .fetch_jwtsvid(wl::JwtsvidRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("spiffe://td/other"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn the_grpc_channel_refuses_a_server_with_another_id() {
    let ca = TestCa::new("td");
    let addr = start_grpc(&ca, "spiffe://td/impostor").await;
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        grpc::channel(
            ca.source("spiffe://td/planner"),
            &format!("https://{addr}"),
            "spiffe://td/executor".parse().unwrap(),
        ),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(err.to_string().contains("spiffe://td/impostor"), "{err}");
}
