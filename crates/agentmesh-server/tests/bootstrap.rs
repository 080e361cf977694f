//! `[bootstrap]` against a real server on a temporary data dir: declared entries and
//! intentions appear before the admin socket answers, a restart keeps what an operator
//! changed, a bad declaration stops the server with nothing written, and the bundle and join
//! token files hold what a node needs.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use agentmesh_proto::v1::admin_client::AdminClient;
use agentmesh_proto::v1::{self, ListEntriesRequest, ListIntentionsRequest};
use agentmesh_server::{BootstrapConfig, BootstrapEntry, ServerConfig, ServerError};
use tonic::transport::Channel;

const WRITER: &str = "spiffe://example.org/ns/agents/sa/writer";

fn declared(dir: &Path) -> BootstrapConfig {
    BootstrapConfig {
        bundle_file: Some(dir.join("bootstrap/bundle.pem")),
        join_token_file: Some(dir.join("bootstrap/join-token")),
        entries: vec![BootstrapEntry {
            spiffe_id: WRITER.into(),
            selectors: vec!["docker:label:com.docker.compose.service:writer".into()],
            federates_with: vec!["spiffe://partner.test".into(), "partner.test".into()],
            ..Default::default()
        }],
        intentions: vec![
            r#"{"source":"researcher","destination":"writer","action":"allow"}"#.into(),
        ],
    }
}

async fn admin(socket: &Path) -> AdminClient<Channel> {
    AdminClient::new(agentmesh_proto::unix::connect(socket).await.unwrap())
}

async fn state(admin: &mut AdminClient<Channel>) -> (Vec<v1::Entry>, Vec<v1::Intention>) {
    let entries = admin
        .list_entries(ListEntriesRequest {})
        .await
        .unwrap()
        .into_inner()
        .entries;
    let intentions = admin
        .list_intentions(ListIntentionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .intentions;
    (entries, intentions)
}

#[tokio::test]
async fn declared_entries_and_intentions_exist_at_start_and_a_restart_keeps_an_operators_change() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("bootstrap")).unwrap();
    let cfg = ServerConfig {
        bootstrap: declared(dir.path()),
        ..ServerConfig::for_test(dir.path())
    };
    let server = agentmesh_server::start(cfg.clone()).await.unwrap();
    let mut a = admin(&server.admin_socket).await;
    let (entries, intentions) = state(&mut a).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].spiffe_id, WRITER);
    assert_eq!(
        entries[0].selectors,
        ["docker:label:com.docker.compose.service:writer"]
    );
    assert_eq!(
        entries[0].federates_with,
        ["spiffe://partner.test"],
        "federates_with is normalised and deduplicated as by `entry create`"
    );
    assert_eq!(intentions.len(), 1);
    assert!(intentions[0].spec_json.contains(r#""action":"allow""#));

    // The bundle file is the bundle `bundle show` gives, readable by all; the token is 0600
    // and a node can redeem it once.
    let bundle = a
        .get_bundle(v1::GetBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let pem = std::fs::read_to_string(dir.path().join("bootstrap/bundle.pem")).unwrap();
    assert_eq!(
        pem.matches("BEGIN CERTIFICATE").count(),
        bundle.x509_authorities.len()
    );
    let token_file = dir.path().join("bootstrap/join-token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let first_token = std::fs::read_to_string(&token_file).unwrap();
    assert!(first_token.len() >= 32, "{first_token:?}");

    // The operator replaces the declared intention with a deny, then the server restarts.
    a.delete_intention(v1::DeleteIntentionRequest {
        id: intentions[0].id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    a.create_intention(v1::CreateIntentionRequest {
        spec_json: r#"{"source":"researcher","destination":"writer","action":"deny"}"#.into(),
    })
    .await
    .unwrap();
    drop(a);
    server.shutdown().await;

    let server = agentmesh_server::start(cfg).await.unwrap();
    let mut a = admin(&server.admin_socket).await;
    let (entries, intentions) = state(&mut a).await;
    assert_eq!(entries.len(), 1, "the declared entry is not created twice");
    assert_eq!(intentions.len(), 1);
    assert!(
        intentions[0].spec_json.contains(r#""action":"deny""#),
        "the operator's deny survives the restart: {}",
        intentions[0].spec_json
    );
    assert_ne!(
        std::fs::read_to_string(&token_file).unwrap(),
        first_token,
        "every start writes a fresh token"
    );
    drop(a);
    server.shutdown().await;
}

#[tokio::test]
async fn a_bad_declaration_stops_the_server_naming_it_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("bootstrap")).unwrap();
    let mut bad_entry = declared(dir.path());
    bad_entry.entries.push(BootstrapEntry {
        spiffe_id: "spiffe://example.org/ns/agents/sa/reader".into(),
        selectors: vec!["nosuchkind".into()],
        ..Default::default()
    });
    let mut own_domain = declared(dir.path());
    own_domain.entries[0].federates_with = vec!["spiffe://example.org".into()];
    let mut bad_intention = declared(dir.path());
    bad_intention
        .intentions
        .push(r#"{"source":"a","destination":"b","action":"perhaps"}"#.into());
    for (bootstrap, want) in [
        (bad_entry, "bootstrap.entry[1]"),
        (own_domain, "bootstrap.entry[0]"),
        (bad_intention, "bootstrap.intention[1]"),
    ] {
        let cfg = ServerConfig {
            bootstrap,
            ..ServerConfig::for_test(dir.path())
        };
        let err = agentmesh_server::start(cfg).await.unwrap_err();
        assert!(matches!(err, ServerError::Bootstrap(_)), "{err:?}");
        assert!(err.to_string().contains(want), "{err}");
    }
    assert!(!dir.path().join("bootstrap/join-token").exists());
    assert!(!dir.path().join("bootstrap/bundle.pem").exists());

    // Nothing was created: a server without [bootstrap] on the same data dir has no entries.
    let server = agentmesh_server::start(ServerConfig::for_test(dir.path()))
        .await
        .unwrap();
    let mut a = admin(&server.admin_socket).await;
    let (entries, intentions) = state(&mut a).await;
    assert!(entries.is_empty() && intentions.is_empty());
    drop(a);
    server.shutdown().await;
}
