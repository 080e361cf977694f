//! The admin API's input limits against a real server on a temporary data dir: every
//! malformed entry gets InvalidArgument with its own reason, no message repeats more than a
//! bounded slice of the input, and nothing is written.

use agentmesh_proto::v1::admin_client::AdminClient;
use agentmesh_proto::v1::{self, CreateEntryRequest, ListEntriesRequest};
use agentmesh_server::ServerConfig;

fn entry(spiffe_id: &str, selectors: Vec<String>, dns_names: Vec<String>) -> CreateEntryRequest {
    CreateEntryRequest {
        entry: Some(v1::Entry {
            spiffe_id: spiffe_id.to_owned(),
            selectors,
            dns_names,
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn malformed_entries_are_refused_with_a_short_specific_message_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let server = agentmesh_server::start(ServerConfig::for_test(dir.path()))
        .await
        .unwrap();
    let mut admin = AdminClient::new(
        agentmesh_proto::unix::connect(&server.admin_socket)
            .await
            .unwrap(),
    );
    let id = "spiffe://example.org/w";
    let uid = || vec!["unix:uid:1000".to_owned()];
    let megabyte = "x".repeat(1 << 20);
    let cases: Vec<(&str, CreateEntryRequest, &str)> = vec![
        (
            "a megabyte SPIFFE ID",
            entry(&format!("spiffe://example.org/{megabyte}"), uid(), vec![]),
            "too long",
        ),
        (
            "NUL in the SPIFFE ID",
            entry("spiffe://example.org/w\0", uid(), vec![]),
            "'\\0'",
        ),
        (
            "a megabyte selector value",
            entry(id, vec![format!("unix:path:/{megabyte}")], vec![]),
            "at most 1024 are allowed",
        ),
        (
            "a control character in a selector",
            entry(id, vec!["launcher:service:a\u{1b}[2J".to_owned()], vec![]),
            "control character",
        ),
        (
            "33 selectors",
            entry(
                id,
                (0..33).map(|i| format!("unix:uid:{i}")).collect(),
                vec![],
            ),
            "at most 32 selectors",
        ),
        (
            "a wildcard over a TLD",
            entry(id, uid(), vec!["*.com".to_owned()]),
            "wildcard",
        ),
        (
            "a wildcard inside a name",
            entry(id, uid(), vec!["api.*.example.com".to_owned()]),
            "wildcard",
        ),
        (
            "a megabyte DNS name",
            entry(id, uid(), vec![megabyte.clone()]),
            "--dns-name",
        ),
    ];
    for (what, req, want) in cases {
        let status = admin.create_entry(req).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{what}: {status:?}"
        );
        let message = status.message();
        assert!(message.contains(want), "{what}: {message}");
        // At most 200 characters of any one input value, plus the sentence around it.
        assert!(
            message.chars().count() < 500,
            "{what}: {} characters",
            message.chars().count()
        );
        assert!(
            !message.chars().any(char::is_control),
            "{what}: {message:?}"
        );
    }
    let entries = admin
        .list_entries(ListEntriesRequest {})
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(entries.is_empty(), "nothing may be written: {entries:?}");

    // The same request made valid is accepted, so the refusals above were the limits.
    admin
        .create_entry(entry(id, uid(), vec!["*.example.com".to_owned()]))
        .await
        .unwrap();
    server.shutdown().await;
}
