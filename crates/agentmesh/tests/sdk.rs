//! agentmesh-sdk against real processes: `agentmesh server run` and `agentmesh node run`
//! spawned from the built binary, real X509-SVIDs from the node's Workload API. The service is
//! the SDK example's (examples/sdk): one route behind `RequireIdentity`.

use std::sync::Arc;
use std::time::SystemTime;

use agentmesh_sdk::{MtlsClient, SpiffeId, X509Source};
use http_body_util::BodyExt as _;

#[path = "support/mesh.rs"]
mod mesh;
use mesh::*;

async fn source_for(mesh: &Mesh, id: &str) -> Arc<X509Source> {
    let id: SpiffeId = id.parse().expect("spiffe id");
    X509Source::connect_as(&mesh.socket(), Some(&id), PATIENCE)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "no SVID for {id}: {e}\nnode log:\n{}",
                std::fs::read_to_string(mesh.node_log()).unwrap_or_default()
            )
        })
}

async fn get(client: &MtlsClient, url: &str) -> (http::StatusCode, String) {
    let resp = client.get(url).await.expect("request");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_example_refuses_a_client_the_layer_does_not_admit_and_rotates_on_its_own() {
    let mesh = Mesh::start();
    let uid = format!("unix:uid:{}", my_uid());
    let service_id = mesh.entry("/sdk-service", &[&uid], Some(SHORT_TTL));
    let client_id = mesh.entry("/sdk-client", &[&uid], None);
    let intruder_id = mesh.entry("/sdk-intruder", &[&uid], None);

    let service = source_for(&mesh, &service_id).await;
    let client = source_for(&mesh, &client_id).await;
    let intruder = source_for(&mesh, &intruder_id).await;
    assert_eq!(service.current().svid.id.to_string(), service_id);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("https://{}/hello", listener.local_addr().expect("addr"));
    let app = agentmesh_sdk_example::app(client_id.parse().expect("id"));
    tokio::spawn(agentmesh_sdk::serve(listener, Arc::clone(&service), app));

    // The example's own client code, as the admitted client and as the intruder.
    let server: SpiffeId = service_id.parse().expect("id");
    let (status, body) = agentmesh_sdk_example::call(Arc::clone(&client), &url, server.clone())
        .await
        .expect("call as sdk-client");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&client_id), "{body}");

    let (status, body) = agentmesh_sdk_example::call(Arc::clone(&intruder), &url, server)
        .await
        .expect("call as sdk-intruder");
    assert_eq!(status, 403, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("a json reason");
    let reason = json["reason"].as_str().expect("reason");
    assert!(
        reason.contains(&intruder_id) && reason.contains(&client_id),
        "{reason}"
    );

    // A client that expects another server ID never sends the request.
    let wrong_pin = MtlsClient::pinned(Arc::clone(&client), intruder_id.parse().expect("id"));
    let err = wrong_pin.get(&url).await.expect_err("pinned to another id");
    assert!(err.to_string().contains(&service_id), "{err}");

    // A response signed by the service verifies at the client against the node's bundle.
    let jws = agentmesh_sdk::jws::sign(&service, br#"{"ok":true}"#).expect("sign");
    let verified = agentmesh_sdk::jws::verify(
        &jws,
        &client.current().roots,
        &service_id.parse().expect("id"),
        SystemTime::now(),
    )
    .expect("verify");
    assert_eq!(verified.payload, br#"{"ok":true}"#);

    // The service's 10 s SVID rotates by itself (the source follows the stream), and a new
    // connection is served with the new certificate.
    let first = service.current().svid.serial.clone();
    let mut changes = service.watch();
    tokio::time::timeout(PATIENCE, changes.wait_for(|ctx| ctx.svid.serial != first))
        .await
        .expect("the service SVID rotated in time")
        .expect("source alive");
    let rotated = service.current().svid.serial.clone();
    let mut connector = agentmesh_sdk::MtlsConnector::new(
        Arc::clone(&client),
        agentmesh_tls::exact([service_id.parse().expect("id")]),
        agentmesh_sdk::tls::ALPN_HTTP,
    );
    let stream = tower::Service::call(&mut connector, url.parse().expect("uri"))
        .await
        .expect("connect after rotation");
    assert_eq!(stream.peer_serial(), Some(rotated));
    let fresh = MtlsClient::pinned(client, service_id.parse().expect("id"));
    let (status, _) = get(&fresh, &url).await;
    assert_eq!(status, http::StatusCode::OK);
}

/// A process the node has no entry for is told so with a code it can act on, not only text:
/// `PermissionDenied` (no entry) is not worth retrying the way `Unavailable` (a node still
/// syncing) is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_without_an_entry_gets_permission_denied_as_a_code() {
    let mesh = Mesh::start();
    // An entry for another uid only, so the node is synced and serving but not for us.
    mesh.entry("/ns/default/sa/someone-else", &["unix:uid:65534"], None);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let err = X509Source::connect(&mesh.socket(), std::time::Duration::from_millis(500))
            .await
            .expect_err("no entry matches this process");
        match err {
            agentmesh_sdk::SourceError::Timeout { code, ref last, .. } => {
                if code == Some(tonic::Code::PermissionDenied) {
                    assert!(last.contains("no registration entry"), "{last}");
                    return;
                }
                // The node may still be on its first sync (Unavailable).
                assert!(
                    std::time::Instant::now() < deadline,
                    "still {code:?}: {last}"
                );
            }
            other => panic!("expected a timeout naming the last failure: {other}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
