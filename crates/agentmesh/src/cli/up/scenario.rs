//! Scenario files: which services a mesh runs, how they call each other, and the intentions
//! that allow it. The built-in scenarios (planner-executor, research-team, threat-pipeline) live
//! in `examples/*.toml` and are embedded here, so `agentmesh up --scenario research-team` works
//! from any directory.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;

use agentmesh_agents::Role;
use agentmesh_policy::IntentionSpec;
use agentmesh_spiffe::{SpiffeId, TrustDomain};
use serde::Deserialize;

/// The scenarios built into the binary, by name.
pub const BUILT_IN: &[(&str, &str)] = &[
    (
        "planner-executor",
        include_str!("../../../../../examples/planner-executor.toml"),
    ),
    (
        "research-team",
        include_str!("../../../../../examples/research-team.toml"),
    ),
    (
        "threat-pipeline",
        include_str!("../../../../../examples/threat-pipeline.toml"),
    ),
];

/// The scenario `up` runs without `--scenario`.
pub const DEFAULT_SCENARIO: &str = "planner-executor";

/// Why a scenario cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Neither a built-in name nor a readable file.
    #[error("no scenario {0:?}: not a built-in one ({built_in}) and not a readable file ({1})", built_in = built_in_names())]
    NotFound(String, String),
    /// Malformed TOML, an unknown key or a wrongly typed value.
    #[error("scenario {0}: {1}")]
    Parse(String, String),
    /// Inconsistent: an unknown upstream, a missing role, a bad intention...
    #[error("scenario {0}: {1}")]
    Invalid(String, String),
}

fn built_in_names() -> String {
    BUILT_IN
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a service is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    /// A built-in AI agent (`agentmesh agent run`).
    Agent,
    /// The LLM gateway (`agentmesh gateway run`).
    Gateway,
    /// The human entry point (`agentmesh frontend run`): login, user tokens, `/ask` to its
    /// first upstream.
    Frontend,
    /// Any program (`command`), for example a Python agent; it gets its ports in the
    /// environment.
    Process,
}

/// One `[[service]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// `planner` or `team/planner`: the SPIFFE ID's shorthand.
    pub name: String,
    /// What runs.
    pub kind: ServiceKind,
    /// For agents: which built-in agent. For processes: the role it plays for its callers.
    pub role: Option<String>,
    /// The services it calls (each gets a port on its sidecar).
    #[serde(default)]
    pub upstreams: Vec<String>,
    /// A fixed loopback address for the app (default: a free port).
    pub listen: Option<SocketAddr>,
    /// Researchers: `offline` or `tavily`.
    pub search: Option<String>,
    /// Processes: the program and its arguments.
    #[serde(default)]
    pub command: Vec<String>,
    /// Processes: extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Frontends: an `[oidc]` table exactly as frontend.toml takes it (issuer, client_id,
    /// client_secret, auth_method, scopes); without it, the loopback-only dev login.
    pub oidc: Option<toml::Table>,
    /// Agents: `false` runs it with no sidecar, doing mTLS and intentions in-process with the
    /// SDK, as research-team's researcher does. Default `true`.
    #[serde(default = "yes")]
    pub sidecar: bool,
}

fn yes() -> bool {
    true
}

impl ServiceSpec {
    /// What this service is to its callers: the agent role, `gateway`, or a process's role.
    pub fn plays(&self) -> Option<&str> {
        match self.kind {
            ServiceKind::Gateway => Some("gateway"),
            _ => self.role.as_deref(),
        }
    }

    /// A name safe for file names.
    pub fn file_stem(&self) -> String {
        self.name.replace('/', "_")
    }
}

/// `[self_check]`: the refusal `up` demonstrates after start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfCheck {
    /// Who tries.
    pub source: String,
    /// What it tries to reach (and must not).
    pub destination: String,
    /// The question asked through the entry point.
    pub question: Option<String>,
}

/// A whole scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Its name.
    pub name: String,
    /// The trust domain of every SPIFFE ID in it.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// Where `agentmesh ask` goes.
    pub entry: String,
    /// The services.
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceSpec>,
    /// The intentions; everything else is denied.
    #[serde(default, rename = "intention")]
    pub intentions: Vec<IntentionSpec>,
    /// The refusal to demonstrate.
    pub self_check: Option<SelfCheck>,
}

fn default_trust_domain() -> String {
    "agentmesh.local".into()
}

/// The question `up` asks when the scenario names none.
pub const DEFAULT_QUESTION: &str =
    "How does agentmesh decide whether one service may call another?";

impl Scenario {
    /// A built-in scenario by name, or a scenario file by path.
    ///
    /// # Errors
    /// Unknown, unreadable, malformed or inconsistent.
    pub fn resolve(name_or_file: &str) -> Result<Self, ScenarioError> {
        if let Some((_, text)) = BUILT_IN.iter().find(|(n, _)| *n == name_or_file) {
            return Self::parse(text, name_or_file);
        }
        let path = Path::new(name_or_file);
        let text = std::fs::read_to_string(path)
            .map_err(|e| ScenarioError::NotFound(name_or_file.into(), e.to_string()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and checks a scenario; `origin` names it in errors.
    ///
    /// # Errors
    /// Malformed or inconsistent.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ScenarioError> {
        let s: Self = toml::from_str(text).map_err(|e| {
            ScenarioError::Parse(origin.into(), super::super::one_line(&e.to_string()))
        })?;
        s.validate()
            .map_err(|e| ScenarioError::Invalid(origin.into(), e))?;
        Ok(s)
    }

    /// The trust domain (valid after `parse`).
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain::new(&self.trust_domain).unwrap_or_else(|_| unreachable!("validated"))
    }

    /// A service's SPIFFE ID (valid after `parse`).
    pub fn id_of(&self, service: &str) -> SpiffeId {
        SpiffeId::from_service_name(&self.trust_domain(), service)
            .unwrap_or_else(|_| unreachable!("validated"))
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The intentions that allow `source` → `destination` (exact pairs and wildcards), judged
    /// by the policy engine itself, so the answer agrees with the proxies.
    pub fn allows(&self, source: &str, destination: &str) -> bool {
        let td = self.trust_domain();
        let set: Vec<_> = self
            .intentions
            .iter()
            .enumerate()
            .filter_map(|(i, spec)| spec.validate(&td, format!("s{i}"), 0).ok())
            .collect();
        let set = agentmesh_policy::PolicySet::new(set);
        set.check_connection(&self.id_of(source), &self.id_of(destination))
            .is_allowed()
    }

    fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name is empty".into());
        }
        let td = TrustDomain::new(&self.trust_domain)
            .map_err(|e| format!("trust_domain {:?}: {e}", self.trust_domain))?;
        if self.services.is_empty() {
            return Err("no [[service]]".into());
        }
        let mut names = BTreeSet::new();
        for s in &self.services {
            if s.name.starts_with("spiffe://") {
                return Err(format!(
                    "service {:?}: use the short name (`planner` or `team/planner`), not a SPIFFE ID",
                    s.name
                ));
            }
            SpiffeId::from_service_name(&td, &s.name)
                .map_err(|e| format!("service name {:?}: {e}", s.name))?;
            if !names.insert(s.name.as_str()) {
                return Err(format!("service {:?} is listed twice", s.name));
            }
        }
        if !names.contains(self.entry.as_str()) {
            return Err(format!("entry {:?} is not one of the services", self.entry));
        }
        for s in &self.services {
            self.validate_service(s, &names)?;
        }
        self.validate_intentions(&td, &names)?;
        self.validate_self_check(&td, &names)
    }

    /// What holds for every kind of service, then what its kind needs.
    fn validate_service(&self, s: &ServiceSpec, names: &BTreeSet<&str>) -> Result<(), String> {
        let what = format!("service {:?}", s.name);
        if let Some(l) = s.listen
            && !l.ip().is_loopback()
        {
            return Err(format!(
                "{what}: listen = {l} is not a loopback address; apps are reached only \
                 through their sidecar"
            ));
        }
        for u in &s.upstreams {
            if !names.contains(u.as_str()) {
                return Err(format!("{what}: upstream {u:?} is not one of the services"));
            }
            if u == &s.name {
                return Err(format!("{what}: lists itself as an upstream"));
            }
        }
        if s.oidc.is_some() && s.kind != ServiceKind::Frontend {
            return Err(format!("{what}: only a frontend logs people in (oidc)"));
        }
        if !s.sidecar && s.kind != ServiceKind::Agent {
            return Err(format!(
                "{what}: sidecar = false is for built-in agents, which can do mTLS \
                 in-process; a {} always has a sidecar",
                format!("{:?}", s.kind).to_lowercase()
            ));
        }
        match s.kind {
            ServiceKind::Agent => self.validate_agent(s, &what)?,
            ServiceKind::Gateway => {
                if !s.upstreams.is_empty() {
                    return Err(format!("{what}: the gateway calls providers, not services"));
                }
            }
            ServiceKind::Frontend => validate_frontend(s, &what)?,
            ServiceKind::Process => {
                if s.command.is_empty() || s.command[0].trim().is_empty() {
                    return Err(format!(
                        "{what}: a process needs command = [\"program\", ...]"
                    ));
                }
            }
        }
        if s.kind != ServiceKind::Process && (!s.command.is_empty() || !s.env.is_empty()) {
            return Err(format!(
                "{what}: command and env are for kind = \"process\""
            ));
        }
        Ok(())
    }

    /// A known role, an upstream for everything the role needs, and a search it can use.
    fn validate_agent(&self, s: &ServiceSpec, what: &str) -> Result<(), String> {
        let role: Role = s
            .role
            .as_deref()
            .ok_or_else(|| format!("{what}: an agent needs role = \"...\""))?
            .parse()
            .map_err(|e| format!("{what}: {e}"))?;
        for need in role.needs() {
            let found = s
                .upstreams
                .iter()
                .any(|u| self.service(u).and_then(ServiceSpec::plays) == Some(need));
            if !found {
                return Err(format!(
                    "{what}: the {role} needs an upstream that is a {need}"
                ));
            }
        }
        match s.search.as_deref() {
            None | Some("offline") => Ok(()),
            Some("tavily") if role == Role::Researcher => Ok(()),
            Some(other) => Err(format!(
                "{what}: search = {other:?} (use \"offline\" or \"tavily\", researchers only)"
            )),
        }
    }

    fn validate_intentions(&self, td: &TrustDomain, names: &BTreeSet<&str>) -> Result<(), String> {
        for (i, spec) in self.intentions.iter().enumerate() {
            let what = format!(
                "intention {} ({} → {})",
                i + 1,
                spec.source,
                spec.destination
            );
            spec.validate(td, String::new(), 0)
                .map_err(|e| format!("{what}: {e}"))?;
            for end in [&spec.source, &spec.destination] {
                if end != "*" && !end.starts_with("spiffe://") && !names.contains(end.as_str()) {
                    return Err(format!("{what}: {end:?} is not one of the services"));
                }
            }
        }
        Ok(())
    }

    /// The self-check shows a refusal, so its pair must be one the intentions deny.
    fn validate_self_check(&self, td: &TrustDomain, names: &BTreeSet<&str>) -> Result<(), String> {
        let Some(c) = &self.self_check else {
            return Ok(());
        };
        for end in [&c.source, &c.destination] {
            if !names.contains(end.as_str()) {
                return Err(format!("[self_check]: {end:?} is not one of the services"));
            }
        }
        let allowed = self
            .intentions
            .iter()
            .filter_map(|spec| spec.validate(td, String::new(), 0).ok())
            .collect::<Vec<_>>();
        let set = agentmesh_policy::PolicySet::new(allowed);
        let (src, dst) = (
            SpiffeId::from_service_name(td, &c.source).map_err(|e| e.to_string())?,
            SpiffeId::from_service_name(td, &c.destination).map_err(|e| e.to_string())?,
        );
        if set.check_connection(&src, &dst).is_allowed() {
            return Err(format!(
                "[self_check]: {} → {} is allowed by the intentions; the self-check shows a \
                 refusal, so name a pair that is denied",
                c.source, c.destination
            ));
        }
        Ok(())
    }
}

/// A frontend needs an entry, and its `[oidc]` is judged by the frontend's own loader, so
/// `up` refuses exactly what the frontend would, before anything starts.
fn validate_frontend(s: &ServiceSpec, what: &str) -> Result<(), String> {
    if s.upstreams.is_empty() {
        return Err(format!(
            "{what}: the frontend needs an upstream (the agent its /ask goes to)"
        ));
    }
    let Some(oidc) = &s.oidc else {
        return Ok(());
    };
    let mut doc = toml::Table::new();
    doc.insert("oidc".into(), toml::Value::Table(oidc.clone()));
    let text = toml::to_string(&doc).map_err(|e| format!("{what}: oidc: {e}"))?;
    agentmesh_frontend::FrontendConfig::parse(&text, std::path::Path::new("oidc")).map_err(
        |e| {
            format!(
                "{what}: {}",
                e.to_string()
                    .replace("invalid frontend config oidc: ", "oidc: ")
            )
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(text: &str) -> String {
        Scenario::parse(text, "s.toml").unwrap_err().to_string()
    }

    #[test]
    fn every_built_in_scenario_parses_and_has_a_refusal_to_show() {
        for (name, _) in BUILT_IN {
            let s = Scenario::resolve(name).unwrap();
            assert_eq!(&s.name, name);
            let c = s.self_check.as_ref().expect("a self-check");
            assert!(!s.allows(&c.source, &c.destination));
            assert!(s.service(&s.entry).is_some());
        }
    }

    #[test]
    fn threat_pipeline_intentions_allow_exactly_the_pipelines_calls() {
        let s = Scenario::resolve("threat-pipeline").unwrap();
        let mut allowed = BTreeSet::new();
        for a in &s.services {
            for b in &s.services {
                if a.name != b.name && s.allows(&a.name, &b.name) {
                    allowed.insert((a.name.as_str(), b.name.as_str()));
                }
            }
        }
        let matrix: BTreeSet<_> = [
            ("orchestrator", "classifier"),
            ("orchestrator", "validator"),
            ("orchestrator", "scorer"),
            ("classifier", "gateway"),
            ("validator", "gateway"),
            ("scorer", "gateway"),
            // Besides the pipeline itself: the human entry point, the frontend.
            ("frontend", "orchestrator"),
        ]
        .into_iter()
        .collect();
        assert_eq!(allowed, matrix);
    }

    #[test]
    fn malformed_scenarios_get_one_clear_error() {
        let good = BUILT_IN[0].1;
        let cases: Vec<(String, &str)> = vec![
            ("name = \"x\"\nentry = ".into(), "s.toml"),
            ("name = \"x\"\nentry = \"a\"".into(), "no [[service]]"),
            (
                good.replace("entry = \"frontend\"", "entry = \"boss\""),
                "entry \"boss\" is not one of the services",
            ),
            (
                good.replace("upstreams = [\"executor\"]", "upstreams = [\"exec\"]"),
                "upstream \"exec\" is not one of the services",
            ),
            (
                good.replace("role = \"planner\"", "role = \"boss\""),
                "unknown role \"boss\"",
            ),
            (
                good.replace(
                    "upstreams = [\"planner\"]",
                    "upstreams = [\"planner\"]\noidc = { issuer = \"http://idp.example\", client_id = \"c\", client_secret = \"s\" }",
                ),
                "oidc: oidc.issuer \"http://idp.example\" must be https://",
            ),
            (
                good.replace(
                    "upstreams = [\"planner\"]",
                    "upstreams = [\"planner\"]\noidc = { issuer = \"https://idp.example\" }",
                ),
                "missing field `client_id`",
            ),
            (
                good.replace(
                    "upstreams = [\"planner\"]",
                    "upstreams = [\"planner\"]\nsidecar = false",
                ),
                "sidecar = false is for built-in agents",
            ),
            (
                good.replace(
                    "role = \"planner\"",
                    "role = \"planner\"\noidc = { issuer = \"https://i\", client_id = \"c\" }",
                ),
                "only a frontend logs people in",
            ),
            (
                good.replace("upstreams = [\"gateway\"]", "upstreams = []"),
                "the executor needs an upstream that is a gateway",
            ),
            (
                good.replace("kind = \"gateway\"", "kind = \"router\""),
                "unknown variant `router`",
            ),
            (
                good.replace("action = \"deny\"", "action = \"maybe\""),
                "maybe",
            ),
            (
                good.replace(
                    "source = \"planner\"\ndestination = \"executor\"",
                    "source = \"plannr\"\ndestination = \"executor\"",
                ),
                "\"plannr\" is not one of the services",
            ),
            (
                good.replace("name = \"executor\"\nkind", "name = \"planner\"\nkind"),
                "listed twice",
            ),
            (
                good.replace(
                    "trust_domain = \"agentmesh.local\"",
                    "trust_domain = \"Bad Domain\"",
                ),
                "trust_domain",
            ),
            (format!("{good}\nbogus = 1\n"), "unknown field `bogus`"),
            (
                good.replace(
                    "[self_check]\nsource = \"planner\"\ndestination = \"gateway\"",
                    "[self_check]\nsource = \"planner\"\ndestination = \"executor\"",
                ),
                "is allowed by the intentions",
            ),
            (
                good.replace(
                    "kind = \"gateway\"",
                    "kind = \"gateway\"\nlisten = \"0.0.0.0:8080\"",
                ),
                "not a loopback address",
            ),
            (
                good.replace(
                    "kind = \"gateway\"",
                    "kind = \"process\"\nrole = \"gateway\"",
                ),
                "a process needs command",
            ),
        ];
        for (text, want) in cases {
            let e = invalid(&text);
            assert!(e.contains(want), "want {want:?} in: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn scenario_intentions_carry_mcp_and_user_permissions() {
        let text = format!(
            "{}\n{}",
            BUILT_IN[0].1,
            r#"
[[intention]]
source = "executor"
destination = "planner"
action = "allow"
[[intention.permissions]]
mcp = { tools = ["search"] }
[[intention.permissions]]
mcp = { tools = ["export"], arguments = { path = { prefix = "/srv/public/" } } }
user = { claims = { groups = "finance" } }
"#
        );
        let s = Scenario::parse(&text, "s.toml").unwrap();
        let i = s.intentions.last().unwrap();
        assert_eq!(i.permissions.len(), 2);
        let export = &i.permissions[1];
        assert_eq!(export.mcp.as_ref().unwrap().tools, ["export"]);
        assert_eq!(
            export.user.as_ref().unwrap().claims["groups"],
            "finance".to_owned()
        );
        let bad = text.replace("\"search\"", "\"Search Tool\"");
        let err = Scenario::parse(&bad, "s.toml").unwrap_err().to_string();
        assert!(err.contains("is not an MCP name"), "{err}");
    }

    #[test]
    fn an_unknown_name_lists_the_built_in_scenarios() {
        let e = Scenario::resolve("no-such-scenario")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("planner-executor, research-team, threat-pipeline"),
            "{e}"
        );
    }
}
