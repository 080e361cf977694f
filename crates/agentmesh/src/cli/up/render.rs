//! Each component's config for a planned service, built as the component's own config type
//! and written with its own `Serialize`: a key a component renames or retypes is then a
//! compile error here, not a child that refuses its config at start.

use std::time::Duration;

use agentmesh_agents::{AgentConfig, MtlsConfig, SearchConfig, SearchKind};
use agentmesh_frontend::{
    ExternalConfig, FrontendConfig, InspectorConfig, OidcConfig, ProxyFeedConfig,
};
use agentmesh_gateway::{
    ApiKey, CallerConfig, GatewayConfig, ModelConfig, ProviderConfig, ProviderKind,
};
use agentmesh_proxy::{Admin, Inbound, Protocol, ProxyConfig, Upstream};
use agentmesh_sdk::LocalAddr;
use agentmesh_sdk::delegation::service::DelegationConfig;
use anyhow::{Context, anyhow};
use serde::Serialize;

use super::layout::Layout;
use super::plan::{Llm, Plan, Planned};
use super::scenario::{Scenario, ServiceKind};

#[cfg(test)]
mod tests;

/// The model name every agent asks the gateway for; the gateway maps it to `--llm`.
pub const MODEL: &str = agentmesh_agents::DEFAULT_MODEL;

/// The first line of every generated config.
const WRITTEN_BY: &str = "# Written by `agentmesh up`.";

/// An app's config file: which component reads it and the text to write.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// The component: the `agentmesh KIND run` subcommand, and the file's middle name.
    pub kind: &'static str,
    /// The file's text.
    pub text: String,
}

/// The config of a service's app, or `None` for a `kind = "process"` app, which is told
/// everything in its environment ([`process_env`]).
///
/// # Errors
/// A scenario value the component's config type cannot hold.
pub fn app_config(
    p: &Planned,
    plan: &Plan,
    scenario: &Scenario,
    llm: &Llm,
    model: Option<&str>,
    layout: &Layout,
) -> anyhow::Result<Option<AppConfig>> {
    let (kind, text) = match p.spec.kind {
        ServiceKind::Agent => {
            let note = if p.spec.sidecar {
                WRITTEN_BY.to_owned()
            } else {
                "# Written by `agentmesh up`: no sidecar, mTLS and intentions in-process.".into()
            };
            ("agent", to_toml(&note, &agent(p, plan, scenario, layout)?)?)
        }
        ServiceKind::Gateway => {
            let key_set = std::env::var_os("OPENAI_API_KEY").is_some();
            let mut note = WRITTEN_BY.to_owned();
            if matches!(llm, Llm::Openai(_)) && !key_set {
                note.push_str("\n# $OPENAI_API_KEY is not set: no key is sent.");
            }
            let cfg = gateway(p, scenario, llm, model, layout, key_set);
            ("gateway", to_toml(&note, &cfg)?)
        }
        ServiceKind::Frontend => (
            "frontend",
            to_toml(WRITTEN_BY, &frontend(p, plan, layout, llm)?)?,
        ),
        ServiceKind::Process => return Ok(None),
    };
    Ok(Some(AppConfig { kind, text }))
}

/// The sidecar's config file ([`proxy`]) as written.
///
/// # Errors
/// As [`to_toml`].
pub fn sidecar_config(
    p: &Planned,
    plan: &Plan,
    scenario: &Scenario,
    layout: &Layout,
) -> anyhow::Result<String> {
    to_toml(WRITTEN_BY, &proxy(p, plan, scenario, layout))
}

/// `note` (comment lines), then `cfg` as TOML.
///
/// # Errors
/// `cfg` has a value TOML cannot hold.
pub fn to_toml<T: Serialize>(note: &str, cfg: &T) -> anyhow::Result<String> {
    let body = toml::to_string(cfg).context("a generated config does not serialize")?;
    Ok(format!("{note}\n{body}"))
}

/// The sidecar's config: its inbound in front of the app, one local listener per upstream
/// (the self-check's probe included), each pinned to the destination's mTLS listener. With a
/// frontend in the scenario, the sidecar verifies its user tokens for MCP user-claim rules.
pub fn proxy(p: &Planned, plan: &Plan, scenario: &Scenario, layout: &Layout) -> ProxyConfig {
    ProxyConfig {
        service: p.spec.name.clone(),
        workload_api: Some(layout.workload_api()),
        policy_api: layout.policy_api(),
        inbound: Some(Inbound {
            listen: p.inbound,
            app: p.app.to_string(),
            protocol: Protocol::Http,
            advertise: None,
            headers_with_underscores_action: Default::default(),
            path_with_escaped_slashes_action: Default::default(),
            mcp_max_body_bytes: None,
            a2a_max_body_bytes: None,
            user_token_issuer: delegation(scenario, layout).map(|d| d.issuer),
            user_token_audience: Some(scenario.trust_domain.clone()),
        }),
        upstream: p
            .upstreams
            .iter()
            .map(|(dest, listen)| Upstream {
                destination: dest.clone(),
                listen: listen.clone(),
                address: Some(
                    plan.service(dest)
                        .map(|o| o.inbound.to_string())
                        .unwrap_or_default(),
                ),
                protocol: Protocol::Http,
            })
            .collect(),
        admin: Some(Admin {
            listen: p.admin.clone(),
        }),
        limits: Default::default(),
    }
}

/// An agent's config. Behind a sidecar it listens on its app socket and calls each upstream
/// through the sidecar's port for it. With no sidecar it serves the port a sidecar's inbound
/// would have over mTLS itself, decides by the intentions, and calls each upstream's mTLS
/// listener pinning its SPIFFE ID; the self-check's probe destination is an upstream like
/// the others then.
///
/// # Errors
/// The scenario's role or search kind is not one the agent knows.
pub fn agent(
    p: &Planned,
    plan: &Plan,
    scenario: &Scenario,
    layout: &Layout,
) -> anyhow::Result<AgentConfig> {
    let role = p.spec.role.as_deref().unwrap_or_default();
    let role = role
        .parse()
        .map_err(|e| anyhow!("service {}: {e}", p.spec.name))?;
    let search = match &p.spec.search {
        Some(kind) => SearchConfig {
            kind: toml::Value::String(kind.clone())
                .try_into::<SearchKind>()
                .with_context(|| format!("service {}: search {kind:?}", p.spec.name))?,
            ..SearchConfig::default()
        },
        None => SearchConfig::default(),
    };
    let (listen, upstreams, mtls) = if p.spec.sidecar {
        let upstreams = p
            .spec
            .upstreams
            .iter()
            .filter_map(|dest| {
                let listen = p.upstream(dest)?;
                let plays = scenario.service(dest).and_then(|s| s.plays());
                Some(agent_upstream(dest, plays, upstream_url(listen), None))
            })
            .collect();
        (p.app.clone(), upstreams, None)
    } else {
        let upstreams = p
            .upstreams
            .iter()
            .filter_map(|(dest, _)| {
                let o = plan.service(dest)?;
                let url = format!("https://{}", o.inbound);
                Some(agent_upstream(
                    dest,
                    o.spec.plays(),
                    url,
                    Some(o.id.clone()),
                ))
            })
            .collect();
        let mtls = MtlsConfig {
            workload_api: layout.workload_api(),
            admin: Some(p.admin.clone()),
            advertise: None,
        };
        (LocalAddr::from(p.inbound), upstreams, Some(mtls))
    };
    let delegation = delegation(scenario, layout);
    // The A2A card signs with the [delegation] or [mtls] SVID where the scenario gives one;
    // without either (no frontend, a sidecar) the agent fetches its own, registered with the
    // same launcher selector as its sidecar, so its card is signed in every scenario.
    let a2a = (delegation.is_none() && mtls.is_none()).then(|| agentmesh_agents::A2aConfig {
        workload_api: Some(layout.workload_api()),
        url: None,
    });
    Ok(AgentConfig {
        role,
        name: Some(p.spec.name.clone()),
        listen,
        model: MODEL.to_owned(),
        upstreams,
        search,
        delegation,
        mtls,
        a2a,
        limits: Default::default(),
    })
}

fn agent_upstream(
    dest: &str,
    plays: Option<&str>,
    url: String,
    spiffe_id: Option<String>,
) -> agentmesh_agents::UpstreamConfig {
    agentmesh_agents::UpstreamConfig {
        name: dest.to_owned(),
        role: plays.unwrap_or("service").to_owned(),
        url,
        spiffe_id,
    }
}

/// The gateway's config: one provider named `llm` from `--llm`, the one model every agent
/// asks for, and a budget for each service the intentions let call it. `openai_key_set` is
/// whether `$OPENAI_API_KEY` is set.
pub fn gateway(
    p: &Planned,
    scenario: &Scenario,
    llm: &Llm,
    model: Option<&str>,
    layout: &Layout,
    openai_key_set: bool,
) -> GatewayConfig {
    let provider = match llm {
        Llm::Offline => ProviderConfig::new("llm", ProviderKind::Offline),
        Llm::Ollama(url) => ProviderConfig {
            url: Some(url.clone()),
            model: Some(model.unwrap_or("llama3.2").to_owned()),
            ..ProviderConfig::new("llm", ProviderKind::Ollama)
        },
        Llm::Openai(url) => {
            let mut provider = ProviderConfig {
                url: Some(url.clone()),
                model: Some(model.unwrap_or("gpt-4o-mini").to_owned()),
                ..ProviderConfig::new("llm", ProviderKind::Openai)
            };
            // The key stays in the environment; the config names the variable. Local
            // OpenAI-compatible servers (vLLM, llama.cpp) need none.
            if openai_key_set {
                provider.api_key_env = Some("OPENAI_API_KEY".into());
            } else {
                provider.api_key = Some(ApiKey::new(""));
            }
            provider
        }
    };
    // Who reaches the gateway is the intentions' business; the gateway adds what each caller
    // may spend. A generous budget, so a demo never runs dry, but a budget all the same.
    let callers = scenario
        .services
        .iter()
        .filter(|s| s.name != p.spec.name && scenario.allows(&s.name, &p.spec.name))
        .map(|s| CallerConfig {
            id: s.name.clone(),
            models: vec!["*".into()],
            tokens_per_window: Some(1_000_000),
            window: Some(Duration::from_secs(3600)),
            max_request_bytes: Some(262_144),
        })
        .collect();
    GatewayConfig {
        listen: p.app.clone(),
        providers: vec![provider],
        models: vec![ModelConfig {
            name: MODEL.to_owned(),
            providers: vec!["llm".into()],
            max_tokens: None,
        }],
        callers,
        dlp: Default::default(),
        delegation: delegation(scenario, layout),
        limits: Default::default(),
    }
}

/// `[delegation]` for agents and the gateway when the scenario has a frontend: each service
/// fetches its own SVID (it is registered with the same launcher selector as its sidecar),
/// verifies the user token and the chain of the agents before it, and signs its own link.
fn delegation(scenario: &Scenario, layout: &Layout) -> Option<DelegationConfig> {
    let frontend = scenario
        .services
        .iter()
        .find(|s| s.kind == ServiceKind::Frontend)?;
    Some(DelegationConfig {
        workload_api: layout.workload_api(),
        issuer: scenario.id_of(&frontend.name).to_string(),
        audience: scenario.trust_domain.clone(),
        require: true,
        replay_cache_size: agentmesh_sdk::delegation::ReplayCache::DEFAULT_MAX,
    })
}

/// The frontend's config: the entry agent and its other upstreams through its sidecar, the
/// scenario's `[oidc]` if any (without one, the loopback-only dev login, labelled as such
/// on the page and in the log), and the Security Inspector, which reads the control plane
/// over its admin sockets (same user, 0600) and follows every sidecar's decisions. Each
/// gateway's `--llm` provider is named to the inspector as an external destination, since
/// no registration entry stands for it.
///
/// # Errors
/// The frontend's listener is not TCP, or its `oidc` table is not the frontend's.
pub fn frontend(
    p: &Planned,
    plan: &Plan,
    layout: &Layout,
    llm: &Llm,
) -> anyhow::Result<FrontendConfig> {
    let listen = p.app.tcp_socket_addr().ok_or_else(|| {
        anyhow!(
            "service {}: a frontend listens on TCP, not {}",
            p.spec.name,
            p.app
        )
    })?;
    let oidc = p
        .spec
        .oidc
        .clone()
        .map(|t| toml::Value::Table(t).try_into::<OidcConfig>())
        .transpose()
        .with_context(|| format!("service {}: oidc", p.spec.name))?;
    let upstream = p
        .spec
        .upstreams
        .iter()
        .filter_map(|dest| {
            Some(agentmesh_frontend::UpstreamConfig {
                name: dest.clone(),
                url: upstream_url(p.upstream(dest)?),
            })
        })
        .collect();
    let inspector = InspectorConfig {
        server_admin_socket: Some(layout.admin_socket.clone()),
        node_admin_socket: Some(layout.node_admin_socket.clone()),
        proxy: plan
            .services
            .iter()
            .map(|o| ProxyFeedConfig {
                name: o.spec.name.clone(),
                admin: o.admin.clone(),
            })
            .collect(),
        external: plan
            .services
            .iter()
            .filter(|o| o.spec.kind == ServiceKind::Gateway)
            .map(|o| ExternalConfig {
                name: match llm {
                    Llm::Offline => "LLM (offline)",
                    Llm::Ollama(_) => "LLM (ollama)",
                    Llm::Openai(_) => "LLM (openai)",
                }
                .into(),
                from: o.spec.name.clone(),
                kind: "llm".into(),
                detail: llm.describe(),
            })
            .collect(),
    };
    Ok(FrontendConfig {
        listen,
        workload_api: Some(layout.workload_api()),
        public_url: None,
        audience: None,
        entry: p.spec.upstreams.first().cloned(),
        oidc,
        upstream,
        inspector: Some(inspector),
        limits: Default::default(),
    })
}

/// The environment of a `kind = "process"` app: its name, where to listen (also as
/// `$PORT`), the model to ask for, the scenario's own variables, and one
/// `AGENTMESH_UPSTREAM_NAME` per destination. Later entries win.
pub fn process_env(p: &Planned) -> Vec<(String, String)> {
    let port = p
        .app
        .tcp_socket_addr()
        .map(|a| a.port().to_string())
        .unwrap_or_default();
    let mut env = vec![
        ("AGENTMESH_SERVICE".to_owned(), p.spec.name.clone()),
        ("AGENTMESH_LISTEN".to_owned(), p.app.to_string()),
        ("PORT".to_owned(), port),
        ("AGENTMESH_MODEL".to_owned(), MODEL.to_owned()),
    ];
    env.extend(p.spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    for (dest, listen) in &p.upstreams {
        env.push((
            format!("AGENTMESH_UPSTREAM_{}", env_var_name(dest)),
            upstream_url(listen),
        ));
    }
    env
}

/// How an app names its sidecar's port for a destination: the socket itself, or an
/// `http://` URL for a TCP port.
fn upstream_url(listen: &LocalAddr) -> String {
    if listen.is_unix() {
        listen.to_string()
    } else {
        listen.http_base()
    }
}

fn env_var_name(service: &str) -> String {
    service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}
