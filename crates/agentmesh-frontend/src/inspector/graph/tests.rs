use super::*;
use crate::inspector::mesh::{MeshError, ServerRow, ServiceRow};

fn id(name: &str) -> String {
    format!("spiffe://agentmesh.local/ns/default/sa/{name}")
}

fn intention(i: &str, source: &str, destination: &str, action: &str) -> IntentionRow {
    IntentionRow {
        id: i.into(),
        spec: serde_json::json!({"source": source, "destination": destination, "action": action}),
    }
}

fn mesh(services: &[&str], intentions: Vec<IntentionRow>) -> MeshView {
    MeshView {
        server: Ok(ServerRow {
            trust_domain: "agentmesh.local".into(),
            entries: services.len(),
            nodes: 1,
        }),
        node: Err(MeshError::NotConfigured("node_admin_socket")),
        services: Ok(services
            .iter()
            .map(|s| ServiceRow {
                spiffe_id: id(s),
                svid: None,
            })
            .collect()),
        svids_error: None,
        intentions: Ok(intentions),
        denials: Ok(Vec::new()),
    }
}

/// The default scenario: frontend → planner → executor → gateway, and planner ↛ gateway.
fn planner_executor() -> MeshView {
    mesh(
        &["planner", "executor", "gateway", "frontend"],
        vec![
            intention("i1", "frontend", "planner", "allow"),
            intention("i2", "planner", "executor", "allow"),
            intention("i3", "executor", "gateway", "allow"),
            intention("i4", "planner", "gateway", "deny"),
        ],
    )
}

fn layer_of(g: &Graph, label: &str) -> usize {
    g.nodes.iter().find(|n| n.label == label).unwrap().layer
}

#[test]
fn the_entry_point_is_left_and_the_provider_right_of_every_agent() {
    let externals = [ExternalConfig {
        name: "LLM (offline)".into(),
        from: "gateway".into(),
        kind: "llm".into(),
        detail: "offline (embedded, deterministic)".into(),
    }];
    let g = Graph::build(&planner_executor(), &externals, &HashMap::new());
    assert_eq!(layer_of(&g, "frontend"), 0);
    assert_eq!(layer_of(&g, "planner"), 1);
    assert_eq!(layer_of(&g, "executor"), 2);
    assert_eq!(layer_of(&g, "gateway"), 3);
    assert_eq!(layer_of(&g, "LLM (offline)"), 4);
    assert_eq!(g.nodes.len(), 5);
    assert_eq!(g.edges.len(), 5);
}

#[test]
fn the_svg_has_one_node_per_service_and_one_edge_per_intention_with_deny_marked() {
    let counts = HashMap::from([("i4".to_owned(), (0, 2))]);
    let svg = Graph::build(&planner_executor(), &[], &counts).render();
    for s in ["frontend", "planner", "executor", "gateway"] {
        assert_eq!(
            svg.matches(&format!("data-spiffe-id=\"{}\"", id(s)))
                .count(),
            1,
            "{s}"
        );
    }
    assert_eq!(svg.matches("data-intention=").count(), 4);
    assert!(
        svg.contains(
            "data-intention=\"i4\" data-action=\"deny\" data-allowed=\"0\" data-denied=\"2\""
        ),
        "{svg}"
    );
    assert!(svg.contains("marker-end=\"url(#arrow-deny)\""));
    // Every node and edge opens a panel of the page, so it works by keyboard and unscripted.
    for target in ["#panel-node-0", "#panel-edge-3"] {
        assert!(svg.contains(&format!("href=\"{target}\"")), "{target}");
        assert!(
            svg.contains(&format!("id=\"{}\"", &target[1..])),
            "{target}"
        );
    }
    // The deny edge's panel offers the check, filled in.
    assert!(svg.contains(&format!("name=\"source\" value=\"{}\"", id("planner"))));
}

#[test]
fn a_wildcard_and_an_unregistered_name_get_nodes_of_their_own() {
    let m = mesh(
        &["planner"],
        vec![
            intention("a", "*", "planner", "deny"),
            intention("b", "planner", "team/ghost", "allow"),
        ],
    );
    let g = Graph::build(&m, &[], &HashMap::new());
    let any = g.nodes.iter().find(|n| n.kind == NodeKind::Any).unwrap();
    assert_eq!(any.label, "*");
    let ghost = g
        .nodes
        .iter()
        .find(|n| n.kind == NodeKind::Unregistered)
        .unwrap();
    assert_eq!(
        ghost.spiffe_id.as_deref(),
        Some("spiffe://agentmesh.local/ns/team/sa/ghost")
    );
    let svg = g.render();
    // Only registered services carry data-spiffe-id.
    assert_eq!(svg.matches("data-spiffe-id=").count(), 1);
    assert!(svg.contains("data-kind=\"any\""));
}

#[test]
fn a_cycle_and_a_self_loop_are_laid_out_without_looping() {
    let m = mesh(
        &["a", "b", "c"],
        vec![
            intention("1", "a", "b", "allow"),
            intention("2", "b", "c", "allow"),
            intention("3", "c", "a", "allow"),
            intention("4", "b", "b", "deny"),
        ],
    );
    let g = Graph::build(&m, &[], &HashMap::new());
    assert_eq!(layer_of(&g, "a"), 0);
    assert_eq!(layer_of(&g, "b"), 1);
    assert_eq!(layer_of(&g, "c"), 2);
    assert_eq!(g.render().matches("class=\"edge ").count(), 4);
}

#[test]
fn names_are_escaped_in_the_svg() {
    let m = mesh(&[], vec![intention("<x>", "a\"b", "*", "allow")]);
    let svg = Graph::build(&m, &[], &HashMap::new()).render();
    assert!(!svg.contains("<x>"), "{svg}");
    assert!(svg.contains("data-intention=\"&lt;x&gt;\""));
}

#[test]
fn decisions_are_counted_per_intention() {
    let d = |decision: &str, intention: Option<&str>| -> crate::inspector::feed::Decision {
        serde_json::from_value(serde_json::json!({
            "ts": "2026-12-03T10:00:00Z", "direction": "inbound", "source": "a",
            "destination": "b", "decision": decision, "reason": "r", "intention": intention,
        }))
        .unwrap()
    };
    let list = [
        d("allow", Some("i1")),
        d("allow", Some("i1")),
        d("deny", Some("i4")),
        d("deny", None),
        d("error", Some("i1")),
    ];
    let c = counts(list.iter());
    assert_eq!(c["i1"], (2, 0));
    assert_eq!(c["i4"], (0, 1));
    assert_eq!(c.len(), 2);
}
