use super::*;

#[test]
fn a_link_names_the_upstreams_spiffe_id_or_its_service_name_in_our_trust_domain() {
    let me: agentmesh_sdk::SpiffeId = "spiffe://agentmesh.local/ns/default/sa/orchestrator"
        .parse()
        .unwrap();
    let up = |name: &str, spiffe_id: Option<&str>| config::UpstreamConfig {
        name: name.into(),
        role: "classifier".into(),
        url: "http://127.0.0.1:1".into(),
        spiffe_id: spiffe_id.map(str::to_owned),
    };
    assert_eq!(
        next_hop_of(&up("classifier", None), &me)
            .unwrap()
            .to_string(),
        "spiffe://agentmesh.local/ns/default/sa/classifier"
    );
    assert_eq!(
        next_hop_of(&up("c", Some("spiffe://agentmesh.local/team/c")), &me)
            .unwrap()
            .to_string(),
        "spiffe://agentmesh.local/team/c"
    );
    assert!(next_hop_of(&up("a/b/c", None), &me).is_err());
}
