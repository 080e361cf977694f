use std::collections::HashMap;
use std::path::{Path, PathBuf};

use agentmesh_agents::AgentConfig;
use agentmesh_frontend::FrontendConfig;
use agentmesh_gateway::GatewayConfig;
use agentmesh_proxy::ProxyConfig;

use super::*;
use crate::cli::up::scenario::{self, DEFAULT_SCENARIO};

/// Every scenario file in `examples/`, and the one `up` runs by default.
fn every_scenario() -> Vec<(String, Scenario)> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut all: Vec<(String, Scenario)> = files
        .iter()
        .map(|f| {
            let path = f.to_str().unwrap();
            (path.to_owned(), Scenario::resolve(path).unwrap())
        })
        .collect();
    for name in ["planner-executor", "research-team", "threat-pipeline"] {
        assert!(
            all.iter().any(|(_, s)| s.name == name),
            "examples/ lost {name}"
        );
    }
    all.push((
        DEFAULT_SCENARIO.to_owned(),
        Scenario::resolve(DEFAULT_SCENARIO).unwrap(),
    ));
    all
}

/// The text after the comment lines `to_toml` puts first.
fn body(text: &str) -> String {
    text.lines()
        .skip_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `text` is what `to_toml` wrote for `rendered`, and what the component loaded from it
/// serializes to exactly that again: nothing was renamed, dropped or defaulted differently.
fn assert_round_trip<T: Serialize>(what: &str, text: &str, rendered: &T, loaded: &T) {
    let want = toml::to_string(rendered).unwrap();
    assert_eq!(
        body(text),
        want,
        "{what}: the file is not the rendered config"
    );
    let got = toml::to_string(loaded).unwrap();
    assert_eq!(got, want, "{what}: loading changed the config:\n{text}");
}

#[test]
fn every_generated_config_loads_with_its_component_and_round_trips() {
    let layout = Layout::new(Path::new("/tmp/x")).unwrap();
    let llms = [
        Llm::Offline,
        Llm::Ollama("http://127.0.0.1:11434".into()),
        Llm::Openai("https://api.openai.com/v1".into()),
    ];
    let mut rendered = 0;
    for (origin, s) in every_scenario() {
        let plan = Plan::new(&s, &layout).unwrap();
        for p in &plan.services {
            let what = format!("{origin}: {}", p.spec.name);
            if p.spec.sidecar {
                let cfg = proxy(p, &plan, &s, &layout);
                let text = to_toml(WRITTEN_BY, &cfg).unwrap();
                let loaded = ProxyConfig::parse(Path::new("p.toml"), &text)
                    .unwrap_or_else(|e| panic!("{what}: {e}\n{text}"));
                assert_round_trip(&what, &text, &cfg, &loaded);
                // With a frontend, sidecars verify its user tokens (MCP user-claim rules).
                let has_frontend = s.services.iter().any(|x| x.kind == ServiceKind::Frontend);
                let issuer = loaded
                    .inbound
                    .as_ref()
                    .unwrap()
                    .user_token_issuer
                    .as_deref();
                assert_eq!(issuer.is_some(), has_frontend, "{what}");
                assert_eq!(loaded.upstream.len(), p.upstreams.len(), "{what}");
                rendered += 1;
            }
            match p.spec.kind {
                ServiceKind::Agent => {
                    let cfg = agent(p, &plan, &s, &layout).unwrap();
                    let text = app_config(p, &plan, &s, &Llm::Offline, None, &layout)
                        .unwrap()
                        .unwrap()
                        .text;
                    let loaded = AgentConfig::parse(&text, Path::new("a.toml"))
                        .unwrap_or_else(|e| panic!("{what}: {e}\n{text}"));
                    assert_round_trip(&what, &text, &cfg, &loaded);
                    assert_eq!(loaded.name(), p.spec.name, "{what}");
                }
                ServiceKind::Gateway => {
                    for (llm, key_set) in llms.iter().flat_map(|l| [(l, true), (l, false)]) {
                        let cfg = gateway(p, &s, llm, None, &layout, key_set);
                        let text = to_toml(WRITTEN_BY, &cfg).unwrap();
                        let env: HashMap<String, String> = key_set
                            .then(|| ("OPENAI_API_KEY".to_owned(), "k".to_owned()))
                            .into_iter()
                            .collect();
                        let loaded =
                            GatewayConfig::parse_with_env(&text, Path::new("g.toml"), &env)
                                .unwrap_or_else(|e| panic!("{what} {llm:?}: {e}\n{text}"));
                        assert_round_trip(&what, &text, &cfg, &loaded);
                        // Only the services the intentions let call the gateway get a budget.
                        let callers: Vec<&str> =
                            loaded.callers.iter().map(|c| c.id.as_str()).collect();
                        for other in &s.services {
                            let allowed =
                                other.name != p.spec.name && s.allows(&other.name, &p.spec.name);
                            assert_eq!(callers.contains(&other.name.as_str()), allowed, "{what}");
                        }
                    }
                }
                ServiceKind::Frontend => {
                    let cfg = frontend(p, &plan, &layout, &Llm::Offline).unwrap();
                    let text = to_toml(WRITTEN_BY, &cfg).unwrap();
                    let loaded = FrontendConfig::parse(&text, Path::new("f.toml"))
                        .unwrap_or_else(|e| panic!("{what}: {e}\n{text}"));
                    assert_round_trip(&what, &text, &cfg, &loaded);
                    let ins = loaded.inspector.expect("[inspector]");
                    assert_eq!(ins.proxy.len(), plan.services.len(), "{what}");
                    assert_eq!(ins.server_admin_socket, Some(layout.admin_socket.clone()));
                    // Each gateway's provider is an external node of the inspector's graph.
                    let gateways: Vec<&str> = plan
                        .services
                        .iter()
                        .filter(|o| o.spec.kind == ServiceKind::Gateway)
                        .map(|o| o.spec.name.as_str())
                        .collect();
                    let from: Vec<&str> = ins.external.iter().map(|e| e.from.as_str()).collect();
                    assert_eq!(from, gateways, "{what}");
                    assert!(ins.external.iter().all(|e| e.kind == "llm"), "{what}");
                }
                ServiceKind::Process => {
                    assert!(
                        app_config(p, &plan, &s, &Llm::Offline, None, &layout)
                            .unwrap()
                            .is_none()
                    );
                }
            }
            rendered += 1;
        }
    }
    assert!(rendered > 20, "only {rendered} configs rendered");
}

#[test]
fn planner_executor_gives_the_executor_alone_a_gateway_budget() {
    let s = Scenario::resolve("planner-executor").unwrap();
    let layout = Layout::new(Path::new("/tmp/x")).unwrap();
    let plan = Plan::new(&s, &layout).unwrap();
    let gw = plan
        .services
        .iter()
        .find(|p| p.spec.kind == ServiceKind::Gateway)
        .unwrap();
    let text = to_toml(
        WRITTEN_BY,
        &gateway(gw, &s, &Llm::Offline, None, &layout, false),
    )
    .unwrap();
    assert!(text.contains("id = \"executor\""), "{text}");
    assert!(!text.contains("id = \"planner\""), "{text}");
    assert!(text.contains("window = \"1h\""), "{text}");
}

/// research-team's agents have no sidecar: their configs do the mTLS themselves, with the
/// self-check's probe destination as one more pinned upstream.
#[test]
fn agents_without_a_sidecar_pin_every_upstream() {
    let s = Scenario::resolve("research-team").unwrap();
    let layout = Layout::new(Path::new("/tmp/x")).unwrap();
    let plan = Plan::new(&s, &layout).unwrap();
    for p in plan.services.iter().filter(|p| !p.spec.sidecar) {
        let cfg = agent(p, &plan, &s, &layout).unwrap();
        assert!(cfg.mtls.is_some());
        assert_eq!(cfg.listen, p.inbound.into());
        assert!(
            cfg.upstreams.iter().all(|u| u.url.starts_with("https://")
                && u.spiffe_id
                    .as_deref()
                    .is_some_and(|id| id.starts_with("spiffe://"))),
            "{cfg:?}"
        );
    }
    let researcher = plan.service("researcher").unwrap();
    assert!(!researcher.spec.sidecar);
    let cfg = agent(researcher, &plan, &s, &layout).unwrap();
    assert!(
        cfg.upstreams.iter().any(|u| u.name == "gateway"),
        "the probe's upstream: {cfg:?}"
    );
}

#[test]
fn a_scenario_oidc_table_reaches_the_frontend_config() {
    let text = scenario::BUILT_IN[0].1.replace(
        "upstreams = [\"planner\"]",
        "upstreams = [\"planner\"]\noidc = { issuer = \"http://127.0.0.1:4000\", client_id = \"agentmesh\", client_secret = \"s\" }",
    );
    let s = Scenario::parse(&text, "s.toml").unwrap();
    let layout = Layout::new(Path::new("/tmp/x")).unwrap();
    let plan = Plan::new(&s, &layout).unwrap();
    let fe = plan
        .services
        .iter()
        .find(|p| p.spec.kind == ServiceKind::Frontend)
        .unwrap();
    let cfg = frontend(fe, &plan, &layout, &Llm::Offline).unwrap();
    let f = to_toml(WRITTEN_BY, &cfg).unwrap();
    let loaded =
        FrontendConfig::parse(&f, Path::new("f.toml")).unwrap_or_else(|e| panic!("{e}\n{f}"));
    assert_round_trip("oidc", &f, &cfg, &loaded);
    let oidc = loaded.oidc.expect("[oidc]");
    assert_eq!(oidc.issuer, "http://127.0.0.1:4000");
    assert_eq!(oidc.client_id, "agentmesh");
}

/// The hand-written halves of the configs' serde (durations, `[limits]`) write what the
/// loaders read back, for values `up` itself leaves at their defaults.
#[test]
fn durations_and_limits_round_trip_through_the_loaders() {
    let s = Scenario::resolve("planner-executor").unwrap();
    let layout = Layout::new(Path::new("/tmp/x")).unwrap();
    let plan = Plan::new(&s, &layout).unwrap();
    let gw = plan
        .services
        .iter()
        .find(|p| p.spec.kind == ServiceKind::Gateway)
        .unwrap();
    let llm = Llm::Ollama("http://127.0.0.1:11434".into());
    let mut cfg = gateway(gw, &s, &llm, None, &layout, false);
    let provider = &mut cfg.providers[0];
    provider.timeout = Some(Duration::from_millis(1500));
    provider.connect_timeout = Some(Duration::from_millis(250));
    provider.retry_backoff = Some(Duration::from_millis(100));
    provider.retry_backoff_max = Some(Duration::from_secs(3));
    provider.circuit_cooldown = Some(Duration::from_secs(90));
    cfg.callers[0].window = Some(Duration::from_secs(86_400));
    cfg.limits.header_timeout = Duration::from_millis(2500);
    cfg.limits.max_headers = 50;
    let text = to_toml(WRITTEN_BY, &cfg).unwrap();
    let loaded = GatewayConfig::parse_with_env(&text, Path::new("g.toml"), &HashMap::new())
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_round_trip("gateway", &text, &cfg, &loaded);
    assert_eq!(
        loaded.providers[0].timeout,
        Some(Duration::from_millis(1500))
    );
    assert_eq!(loaded.callers[0].window, Some(Duration::from_secs(86_400)));
    assert_eq!(loaded.limits, cfg.limits);

    let mut cfg = proxy(gw, &plan, &s, &layout);
    cfg.limits.body_idle_timeout = Duration::from_secs(5);
    let text = to_toml(WRITTEN_BY, &cfg).unwrap();
    let loaded =
        ProxyConfig::parse(Path::new("p.toml"), &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_round_trip("proxy", &text, &cfg, &loaded);
    assert_eq!(loaded.limits, cfg.limits);
}
