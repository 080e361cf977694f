use std::path::Path;

use super::*;
use crate::cli::up::scenario;

#[test]
fn llm_flags_parse_and_unknown_schemes_are_refused() {
    assert_eq!(Llm::parse("offline").unwrap(), Llm::Offline);
    assert_eq!(
        Llm::parse("ollama:http://127.0.0.1:11434/").unwrap(),
        Llm::Ollama("http://127.0.0.1:11434".into())
    );
    assert_eq!(
        Llm::parse("openai:https://api.openai.com/v1").unwrap(),
        Llm::Openai("https://api.openai.com/v1".into())
    );
    for (bad, want) in [
        ("claude:http://x", "unknown scheme \"claude\""),
        ("ollama", "needs an http:// or https:// URL"),
        ("ollama:ftp://host:1", "needs an http:// or https:// URL"),
        ("", "unknown scheme"),
    ] {
        let e = Llm::parse(bad).unwrap_err().to_string();
        assert!(e.contains(want), "{bad}: {e}");
    }
}

#[test]
fn every_port_in_a_plan_is_distinct() {
    let s = Scenario::resolve("threat-pipeline").unwrap();
    let layout = Layout::new(Path::new("/tmp/x")).unwrap();
    let plan = Plan::new(&s, &layout).unwrap();
    let mut all = vec![LocalAddr::from(plan.server)];
    for p in &plan.services {
        all.extend([p.app.clone(), p.inbound.into(), p.admin.clone()]);
        all.extend(p.upstreams.iter().map(|(_, a)| a.clone()));
    }
    let n = all.len();
    let distinct: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), n);
    // The self-check's probe gets a port on the orchestrator's sidecar.
    let orch = plan.service("orchestrator").unwrap();
    assert!(orch.upstream("gateway").is_some());
}

/// The hole this layout closes: an app port on loopback TCP is reachable by every local
/// user past its sidecar, and a sidecar's outbound port lends its identity to anyone.
#[test]
fn only_listeners_meant_for_people_are_tcp() {
    for name in ["planner-executor", "research-team", "threat-pipeline"] {
        let s = Scenario::resolve(name).unwrap();
        let layout = Layout::new(Path::new("/tmp/x")).unwrap();
        let plan = Plan::new(&s, &layout).unwrap();
        for p in &plan.services {
            assert!(
                p.admin.is_unix(),
                "{name}/{}: admin {}",
                p.spec.name,
                p.admin
            );
            for (d, a) in &p.upstreams {
                assert!(a.is_unix(), "{name}/{}: upstream {d} at {a}", p.spec.name);
            }
            let people = p.spec.kind == ServiceKind::Frontend;
            assert_eq!(
                p.app.is_unix(),
                !people,
                "{name}/{}: app {}",
                p.spec.name,
                p.app
            );
            if let Some(path) = p.app.unix_path() {
                assert!(path.starts_with(layout.service_run_dir(&p.spec.name)));
            }
        }
    }
}

#[test]
fn planned_ports_stay_below_the_ephemeral_range() {
    let mut pool = PortPool(Vec::new());
    let floor = ephemeral_floor();
    for _ in 0..20 {
        let port = pool.take().unwrap().port();
        assert!(
            port < floor,
            "{port} is in the ephemeral range from {floor}"
        );
    }
    let mut ports: Vec<u16> = pool
        .0
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 20, "a port was handed out twice");
}

#[test]
fn a_too_long_data_dir_is_one_clear_error() {
    let s = Scenario::resolve("planner-executor").unwrap();
    let deep = format!("/tmp/{}", "d".repeat(100));
    let layout = Layout::new(Path::new(&deep)).unwrap();
    let e = Plan::new(&s, &layout).err().unwrap().to_string();
    assert!(e.contains("choose a shorter --data-dir"), "{e}");
}

#[test]
fn a_fixed_port_in_use_is_found_before_anything_starts() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let text = scenario::BUILT_IN[0].1.replace(
        "name = \"planner\"\nkind = \"agent\"",
        &format!("name = \"planner\"\nkind = \"agent\"\nlisten = \"{addr}\""),
    );
    let s = Scenario::parse(&text, "s.toml").unwrap();
    let layout = Layout::new(Path::new("/tmp/x")).unwrap();
    let e = Plan::new(&s, &layout).err().unwrap().to_string();
    assert!(
        e.contains(&format!(
            "service planner: listen address {addr} is not available"
        )),
        "{e}"
    );
}

#[test]
fn planned_ports_stay_bound_until_their_child_starts() {
    let s = Scenario::resolve("planner-executor").unwrap();
    let layout = Layout::new(Path::new("/tmp/x")).unwrap();
    let (plan, ports) = Plan::holding_ports(&s, &layout).unwrap();
    let frontend = plan.service("frontend").unwrap();
    let taken = |a: SocketAddr| std::net::TcpListener::bind(a).is_err();
    assert!(taken(plan.server) && taken(frontend.inbound), "not held");
    ports.release(plan.server);
    assert!(!taken(plan.server), "the server's port is still held");
    assert!(taken(frontend.inbound), "released more than one port");
    ports.release_service(frontend);
    assert!(
        !taken(frontend.inbound),
        "the frontend's sidecar port is still held"
    );
    let LocalAddr::Tcp(app) = &frontend.app else {
        panic!("the frontend's app is on loopback TCP")
    };
    assert!(
        !taken(app.parse().unwrap()),
        "the frontend's port is still held"
    );
}
