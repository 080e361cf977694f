//! Server and node in one process on loopback: the identity plane end to end, with the test
//! process itself as the workload. The Workload API is exercised with the generated client
//! and with the `spiffe` crate's `X509Source`, a client no one here wrote.

use std::time::{Duration, SystemTime};

use agentmesh_node::{TestMesh, my_uid, with_header};
use agentmesh_proto::v1;
use agentmesh_proto::workload::{JwtsvidRequest, ValidateJwtsvidRequest, X509svidRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_process_gets_its_svid_and_an_unregistered_one_is_told_why() {
    let mut mesh = TestMesh::start().await.unwrap();
    let mut client = mesh.workload_client().await.unwrap();

    // No header: InvalidArgument, whatever else.
    let err = client
        .fetch_x509svid(tonic::Request::new(X509svidRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    // Wait for readiness (the first sync), then: no entry matches this process.
    let err = loop {
        match client.fetch_x509svid(with_header(X509svidRequest {})).await {
            Err(e) if e.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => break e,
            Ok(_) => panic!("an unregistered process got an SVID"),
        }
    };
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message()
            .contains("no registration entry matches this process"),
        "{}",
        err.message()
    );

    let wrong = mesh
        .create_entry("/wrong", &["unix:uid:4242424".into()], 0)
        .await
        .unwrap();
    let err = loop {
        let e = client
            .fetch_x509svid(with_header(X509svidRequest {}))
            .await
            .unwrap_err();
        if e.message().contains("closest entry") {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The caller learns the kind it lacks and a request id, nothing about the entry.
    let message = err.message();
    assert!(
        message.contains("the closest entry needs a unix:uid selector that this process lacks"),
        "{message}"
    );
    for foreign in ["4242424", "spiffe://", "/wrong", wrong.id.as_str()] {
        assert!(!message.contains(foreign), "{foreign:?} leaked: {message}");
    }
    let request_id = message
        .split("request id ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("a request id");
    // The operator, on the node's 0600 admin socket, gets the whole explanation.
    let mut node_admin = agentmesh_proto::v1::node_admin_client::NodeAdminClient::new(
        agentmesh_proto::unix::connect(&mesh.node_admin_socket())
            .await
            .unwrap(),
    );
    let denials = node_admin
        .list_denials(v1::ListDenialsRequest {
            request_id: request_id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .denials;
    assert_eq!(denials.len(), 1, "{denials:?}");
    let d = &denials[0];
    assert_eq!(d.api, "workload_api");
    assert_eq!(d.uid, my_uid());
    assert_eq!(d.closest_entry_id, wrong.id);
    assert_eq!(d.closest_spiffe_id, "spiffe://example.org/wrong");
    assert_eq!(d.missing_kinds, ["unix:uid"]);
    assert!(
        d.explanation.contains(&format!(
            "closest entry spiffe://example.org/wrong (id {}) needs unix:uid:4242424 (this process has unix:uid:{})",
            wrong.id,
            my_uid()
        )),
        "{}",
        d.explanation
    );
    let unknown = node_admin
        .list_denials(v1::ListDenialsRequest {
            request_id: "0000000000000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");

    mesh.register_self("/me", 0).await.unwrap();
    let resp = loop {
        match client.fetch_x509svid(with_header(X509svidRequest {})).await {
            Ok(r) => break r.into_inner().message().await.unwrap().unwrap(),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert_eq!(resp.svids.len(), 1);
    assert_eq!(resp.svids[0].spiffe_id, "spiffe://example.org/me");

    // JWT: fetch, then validate through the same API.
    let jwt = client
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["db".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let token = jwt.svids[0].svid.clone();
    let ok = client
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "db".into(),
            svid: token.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.spiffe_id, "spiffe://example.org/me");
    let wrong = client
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "other".into(),
            svid: token,
        }))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::InvalidArgument);

    mesh.shutdown().await;
}

fn serial_of(svid: &spiffe::X509Svid) -> String {
    agentmesh_tls::cert_serial_hex(svid.leaf().as_bytes()).unwrap()
}

/// The `spiffe` crate's sources, which no one here wrote, against an in-process node: the
/// X509Source sees a 4 s TTL rotate on its open stream, keeps its SVID while the server is
/// down, and sees rotation resume when the server comes back on the same data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spiffe_crate_sees_rotation_and_survives_a_server_outage() {
    let mut mesh = TestMesh::start().await.unwrap();
    mesh.register_self("/rotating", 4).await.unwrap();
    let endpoint = format!("unix://{}", mesh.workload_socket().display());
    let source = loop {
        match spiffe::X509Source::builder()
            .endpoint(&endpoint)
            .build()
            .await
        {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let svid = source.svid().unwrap();
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://example.org/rotating"
    );
    let first = serial_of(&svid);

    // Rotation arrives on the open stream.
    let mut updates = source.updated();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let rotated = loop {
        tokio::time::timeout_at(deadline, updates.changed())
            .await
            .expect("no rotation within 30 s")
            .unwrap();
        let s = serial_of(&source.svid().unwrap());
        if s != first {
            break s;
        }
    };

    // Server down: the node keeps serving what it has to new clients.
    mesh.server.stop().await;
    let mut client = mesh.workload_client().await.unwrap();
    let resp = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.svids[0].spiffe_id, "spiffe://example.org/rotating");

    // Server back (same data dir, same port): rotation resumes on the same open stream.
    mesh.server.restart().await.unwrap();
    let seen = serial_of(&source.svid().unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::timeout_at(deadline, updates.changed())
            .await
            .expect("rotation did not resume")
            .unwrap();
        let s = serial_of(&source.svid().unwrap());
        if s != seen && s != rotated {
            break;
        }
    }
    source.shutdown().await;
    mesh.shutdown().await;
}

/// A restarted node reuses its stored node SVID: no token, and workloads get SVIDs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_needs_no_new_token() {
    let mut mesh = TestMesh::start().await.unwrap();
    mesh.register_self("/me", 0).await.unwrap();
    mesh.restart_node().await.unwrap();
    let mut client = mesh.workload_client().await.unwrap();
    let resp = loop {
        match client.fetch_x509svid(with_header(X509svidRequest {})).await {
            Ok(r) => break r.into_inner().message().await.unwrap().unwrap(),
            Err(e) if e.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    assert_eq!(resp.svids[0].spiffe_id, "spiffe://example.org/me");
    let _ = SystemTime::now();
    mesh.shutdown().await;
}

/// Above `EAGER_MINT_LIMIT` entries the node mints only what workloads ask for: nothing is
/// cached after the sync, a fetch gets its SVID on demand, and only that one is cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_the_eager_limit_svids_are_minted_on_demand() {
    let mut mesh = TestMesh::start().await.unwrap();
    let others = agentmesh_node::EAGER_MINT_LIMIT;
    for i in 0..others {
        mesh.create_entry(
            &format!("/other/{i}"),
            &[format!("unix:uid:{}", 100_000 + i)],
            0,
        )
        .await
        .unwrap();
    }
    mesh.register_self("/me", 0).await.unwrap();
    let node = mesh.node();
    // Patience, not a speed claim: up to the limit the node mints each entry's SVID as the
    // entries arrive (about 18 s alone in a debug build). This wait also caught the server
    // marking an entry change seen before it was sent (fixed in its sync stream).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while node.entry_count() < others + 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "entries did not sync"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give an eager minter every chance to show itself.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        node.svid_count() == 0,
        "minted {} SVIDs nobody asked for",
        node.svid_count()
    );

    let mut client = mesh.workload_client().await.unwrap();
    let resp = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.svids[0].spiffe_id, "spiffe://example.org/me");
    assert_eq!(node.svid_count(), 1);
    mesh.shutdown().await;
}
