//! agentmesh's data plane on a real SPIRE (see `support/spire.rs`): SPIRE v1.13.3's server and
//! agent, built from the Go module proxy, with entries made by `spire-server entry create`
//! as an operator would make them.

#[path = "support/mesh.rs"]
mod mesh;
#[path = "support/spire.rs"]
mod spire;

use std::time::{Duration, Instant};

use mesh::{PATIENCE, SHORT_TTL, my_uid};
use spire::{SPIRE_TD, Spire};

/// The SDK's X509Source on a SPIRE agent's socket: the SVID SPIRE issues, then SPIRE's own
/// rotation of a 10 s SVID, on the stream the source keeps open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_x509_source_follows_a_spire_rotation() {
    let spire = Spire::start();
    let id = format!("spiffe://{SPIRE_TD}/ns/default/sa/sdk");
    spire.entry(&id, &[&format!("unix:uid:{}", my_uid())], Some(SHORT_TTL));

    // SPIRE's agent syncs entries every few seconds: the source waits for the SVID.
    let source = agentmesh_sdk::X509Source::connect(&spire.socket(), PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("no SVID from SPIRE: {e}\n{}", spire.agent_log()));
    let first = source.current();
    assert_eq!(first.svid.id.to_string(), id);
    assert_eq!(
        first.svid.chain.len(),
        1,
        "SPIRE signs SVIDs with its root CA: {:?}",
        first.svid
    );
    assert!(!first.roots.is_empty());

    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = source.current();
        if now.svid.serial != first.svid.serial {
            assert_eq!(now.svid.id.to_string(), id);
            assert!(
                now.svid.not_after > first.svid.not_after,
                "{:?} after {:?}",
                now.svid,
                first.svid
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SPIRE's rotation never reached the source\n{}",
            spire.agent_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
