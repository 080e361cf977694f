//! `agentmesh intention create|list|delete|check`: who may call whom.

use std::fmt::Write as _;
use std::path::PathBuf;

use std::collections::BTreeMap;

use agentmesh_policy::{
    A2aSpec, Action, ArgumentSpec, HeaderSpec, HttpSpec, IntentionSpec, McpSpec, PermissionSpec,
    UserSpec,
};
use agentmesh_proto::v1::{
    CheckIntentionRequest, CreateIntentionRequest, DeleteIntentionRequest, HttpHeader, Intention,
    ListIntentionsRequest,
};
use agentmesh_spiffe::TrustDomain;
use clap::{Args, Subcommand};
use serde::Serialize;

use super::admin::{AdminArgs, status_error};
use super::output::{TextOrJson, print_json, rfc3339_secs};

/// The exit code of `intention check` when the answer is deny (as `consul intention check`).
pub const DENIED_EXIT_CODE: i32 = 2;

/// `agentmesh intention ...`
#[derive(Debug, Subcommand)]
pub enum IntentionCommand {
    /// Allows or denies SRC -> DST; with --method/--path-* it becomes an L7 rule, with
    /// --mcp-* an MCP rule (only the named tools, resources and prompts), with --a2a-method
    /// an A2A rule (only the named methods).
    Create(Box<IntentionCreateArgs>),
    /// Lists every intention.
    List(IntentionListArgs),
    /// Deletes one intention, by ID or by SRC DST.
    Delete(IntentionDeleteArgs),
    /// Says what the proxy would decide for SRC -> DST, which intention matched and why.
    /// Exits 0 when allowed and 2 when denied.
    Check(IntentionCheckArgs),
}

/// `agentmesh intention create` flags.
#[derive(Debug, Clone, Args)]
pub struct IntentionCreateArgs {
    /// Source: a SPIFFE ID, a service name (planner, team/planner) or '*'
    #[arg(value_name = "SRC", required_unless_present = "file")]
    pub source: Option<String>,
    /// Destination: a SPIFFE ID, a service name or '*'
    #[arg(value_name = "DST", required_unless_present = "file")]
    pub destination: Option<String>,
    /// allow or deny
    #[arg(long, value_name = "allow|deny", required_unless_present = "file")]
    pub action: Option<String>,
    /// Only these HTTP methods (repeatable); makes the intention an L7 rule
    #[arg(long = "method", value_name = "M")]
    pub methods: Vec<String>,
    /// Only paths starting with P
    #[arg(long, value_name = "P", conflicts_with_all = ["path_exact", "path_regex"])]
    pub path_prefix: Option<String>,
    /// Only exactly this path
    #[arg(long, value_name = "P", conflicts_with = "path_regex")]
    pub path_exact: Option<String>,
    /// Only paths this regex matches whole
    #[arg(long, value_name = "RE")]
    pub path_regex: Option<String>,
    /// Only requests with this header: NAME (present) or NAME=VALUE (exact); repeatable
    #[arg(long = "header", value_name = "NAME[=VALUE]")]
    pub headers: Vec<String>,
    /// Only this MCP tool, exactly as spelled ('*': every tool); repeatable. Every tool,
    /// resource and prompt not named is then refused
    #[arg(long = "mcp-tool", value_name = "NAME")]
    pub mcp_tools: Vec<String>,
    /// Only MCP resources whose URI starts with this; repeatable
    #[arg(long = "mcp-resource", value_name = "URI-PREFIX")]
    pub mcp_resources: Vec<String>,
    /// Only this MCP prompt ('*': every prompt); repeatable
    #[arg(long = "mcp-prompt", value_name = "NAME")]
    pub mcp_prompts: Vec<String>,
    /// The named tools' argument NAME must be a string starting with PREFIX; repeatable
    #[arg(long = "mcp-arg", value_name = "NAME^=PREFIX")]
    pub mcp_args: Vec<String>,
    /// Only this A2A method, exactly as A2A 1.0 spells it (SendMessage, GetTask, CancelTask,
    /// GetExtendedAgentCard, …; '*': every method); repeatable. Every method not named is
    /// then refused
    #[arg(long = "a2a-method", value_name = "NAME", conflicts_with_all = ["mcp_tools", "mcp_resources", "mcp_prompts", "mcp_args"])]
    pub a2a_methods: Vec<String>,
    /// Only for users whose verified token has claim KEY with VALUE (or a list holding it);
    /// repeatable
    #[arg(long = "require-user-claim", value_name = "KEY=VALUE")]
    pub user_claims: Vec<String>,
    /// Free text for people
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub description: String,
    /// Read the whole intention from a JSON file instead (unknown fields are refused); the
    /// way to write several permissions
    #[arg(long, value_name = "FILE", conflicts_with_all = ["source", "destination", "action", "methods", "path_prefix", "path_exact", "path_regex", "headers", "mcp_tools", "mcp_resources", "mcp_prompts", "mcp_args", "a2a_methods", "user_claims"])]
    pub file: Option<PathBuf>,
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: TextOrJson,
    /// The server to ask.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `agentmesh intention list` flags.
#[derive(Debug, Clone, Args)]
pub struct IntentionListArgs {
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: TextOrJson,
    /// The server to ask.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `agentmesh intention delete` arguments.
#[derive(Debug, Clone, Args)]
pub struct IntentionDeleteArgs {
    /// The intention's ID, or its source
    #[arg(value_name = "ID|SRC")]
    pub id_or_source: String,
    /// The destination, when the first argument is the source
    #[arg(value_name = "DST")]
    pub destination: Option<String>,
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: TextOrJson,
    /// The server to ask.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `agentmesh intention check` arguments.
#[derive(Debug, Clone, Args)]
pub struct IntentionCheckArgs {
    /// Source: a SPIFFE ID or a service name
    #[arg(value_name = "SRC")]
    pub source: String,
    /// Destination: a SPIFFE ID or a service name
    #[arg(value_name = "DST")]
    pub destination: String,
    /// Check an HTTP request with this method [default: GET when --path is given]
    #[arg(long, value_name = "M")]
    pub method: Option<String>,
    /// Check an HTTP request for this path [default: / when --method is given]
    #[arg(long, value_name = "P")]
    pub path: Option<String>,
    /// A request header NAME=VALUE; repeatable
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// Check an MCP `tools/call` of this tool (arguments and user claims are not known to a
    /// check); the request defaults to POST /mcp
    #[arg(long = "mcp-tool", value_name = "NAME", conflicts_with_all = ["mcp_resource", "mcp_prompt"])]
    pub mcp_tool: Option<String>,
    /// Check an MCP `resources/read` of this URI
    #[arg(
        long = "mcp-resource",
        value_name = "URI",
        conflicts_with = "mcp_prompt"
    )]
    pub mcp_resource: Option<String>,
    /// Check an MCP `prompts/get` of this prompt
    #[arg(long = "mcp-prompt", value_name = "NAME")]
    pub mcp_prompt: Option<String>,
    /// Check an A2A call of this method (SendMessage, GetTask, …; a user is not known to a
    /// check); the request defaults to POST /a2a
    #[arg(long = "a2a-method", value_name = "NAME", conflicts_with_all = ["mcp_tool", "mcp_resource", "mcp_prompt"])]
    pub a2a_method: Option<String>,
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: TextOrJson,
    /// The server to ask.
    #[command(flatten)]
    pub admin: AdminArgs,
}

impl IntentionCheckArgs {
    /// The MCP call to check, if one was asked for: (JSON-RPC method, item).
    fn mcp_item(&self) -> Option<(&'static str, agentmesh_policy::McpItem<'_>)> {
        use agentmesh_policy::McpItem;
        if let Some(t) = &self.mcp_tool {
            Some(("tools/call", McpItem::Tool(t)))
        } else if let Some(r) = &self.mcp_resource {
            Some(("resources/read", McpItem::Resource(r)))
        } else {
            self.mcp_prompt
                .as_deref()
                .map(|p| ("prompts/get", McpItem::Prompt(p)))
        }
    }
}

/// The JSON form of an intention: its id and time, and the document as stored.
#[derive(Debug, Serialize)]
pub struct IntentionJson {
    /// The intention's ID.
    pub id: String,
    /// When it was created, RFC 3339.
    pub created_at: String,
    /// The stored document (names resolved to SPIFFE IDs).
    #[serde(flatten)]
    pub spec: IntentionSpec,
}

impl TryFrom<Intention> for IntentionJson {
    type Error = anyhow::Error;

    fn try_from(i: Intention) -> anyhow::Result<Self> {
        let spec = IntentionSpec::from_json(&i.spec_json).map_err(|e| {
            anyhow::anyhow!(
                "the server sent intention {} that does not parse: {e}",
                i.id
            )
        })?;
        Ok(Self {
            id: i.id,
            created_at: rfc3339_secs(i.created_at),
            spec,
        })
    }
}

/// The JSON form of `intention check`.
#[derive(Debug, Serialize)]
pub struct CheckJson {
    /// The resolved source.
    pub source: String,
    /// The resolved destination.
    pub destination: String,
    /// allow or deny.
    pub decision: Action,
    /// The intention that matched; null for the default deny.
    pub intention_id: Option<String>,
    /// Why, in words.
    pub reason: String,
}

// Validation needs a trust domain to resolve names; any valid one checks the same rules,
// and the server resolves names in its own.
fn placeholder_td() -> TrustDomain {
    TrustDomain::new("agentmesh.local").unwrap_or_else(|_| unreachable!("a valid constant"))
}

fn parse_header(flag_value: &str) -> anyhow::Result<HeaderSpec> {
    let (name, value) = match flag_value.split_once('=') {
        Some((n, v)) => (n.trim(), Some(v.to_owned())),
        None => (flag_value.trim(), None),
    };
    if name.is_empty() {
        anyhow::bail!("invalid --header {flag_value:?}: no header name");
    }
    Ok(HeaderSpec {
        name: name.to_owned(),
        present: value.is_none().then_some(true),
        exact: value,
        ..HeaderSpec::default()
    })
}

/// `--mcp-*` flags into the `mcp` part of one permission; `None` when none is given.
fn mcp_from_args(args: &IntentionCreateArgs) -> anyhow::Result<Option<McpSpec>> {
    let mut arguments = BTreeMap::new();
    for a in &args.mcp_args {
        let Some((name, prefix)) = a.split_once("^=") else {
            anyhow::bail!(
                "invalid --mcp-arg {a:?}: write NAME^=PREFIX (the argument NAME must be a string starting with PREFIX)"
            );
        };
        if name.trim().is_empty() {
            anyhow::bail!("invalid --mcp-arg {a:?}: no argument name before '^='");
        }
        if arguments
            .insert(
                name.to_owned(),
                ArgumentSpec {
                    prefix: prefix.to_owned(),
                },
            )
            .is_some()
        {
            anyhow::bail!("invalid --mcp-arg {a:?}: argument {name:?} is constrained twice");
        }
    }
    if !arguments.is_empty() && args.mcp_tools.is_empty() {
        anyhow::bail!(
            "--mcp-arg constrains tool calls: name the tools it applies to with --mcp-tool"
        );
    }
    let mcp = McpSpec {
        tools: args.mcp_tools.clone(),
        resources: args.mcp_resources.clone(),
        prompts: args.mcp_prompts.clone(),
        arguments,
    };
    Ok((mcp != McpSpec::default()).then_some(mcp))
}

/// `--require-user-claim` flags into the `user` part of one permission.
fn user_from_args(args: &IntentionCreateArgs) -> anyhow::Result<Option<UserSpec>> {
    let mut claims = BTreeMap::new();
    for c in &args.user_claims {
        let Some((key, value)) = c.split_once('=') else {
            anyhow::bail!(
                "invalid --require-user-claim {c:?}: write KEY=VALUE, such as groups=finance"
            );
        };
        if key.trim().is_empty() {
            anyhow::bail!("invalid --require-user-claim {c:?}: no claim name before '='");
        }
        if claims.insert(key.to_owned(), value.to_owned()).is_some() {
            anyhow::bail!("invalid --require-user-claim {c:?}: claim {key:?} is required twice");
        }
    }
    Ok((!claims.is_empty()).then_some(UserSpec { claims }))
}

/// Builds and checks the intention locally, so malformed input never reaches the server.
///
/// # Errors
/// One line naming the first bad flag, value or field.
pub fn spec_from_args(args: &IntentionCreateArgs) -> anyhow::Result<IntentionSpec> {
    let spec = if let Some(path) = &args.file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read --file {}: {e}", path.display()))?;
        IntentionSpec::from_json(&text)
            .map_err(|e| anyhow::anyhow!("--file {}: {e}", path.display()))?
    } else {
        let action: Action = args
            .action
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|e| anyhow::anyhow!("invalid --action: {e}"))?;
        let http = HttpSpec {
            methods: args.methods.clone(),
            path_exact: args.path_exact.clone(),
            path_prefix: args.path_prefix.clone(),
            path_regex: args.path_regex.clone(),
            headers: args
                .headers
                .iter()
                .map(|h| parse_header(h))
                .collect::<anyhow::Result<_>>()?,
        };
        let mcp = mcp_from_args(args)?;
        let user = user_from_args(args)?;
        let a2a = (!args.a2a_methods.is_empty()).then(|| A2aSpec {
            methods: args.a2a_methods.clone(),
        });
        let permissions =
            if http == HttpSpec::default() && mcp.is_none() && user.is_none() && a2a.is_none() {
                Vec::new()
            } else {
                vec![PermissionSpec {
                    action: None,
                    http,
                    mcp,
                    user,
                    a2a,
                }]
            };
        IntentionSpec {
            source: args.source.clone().unwrap_or_default(),
            destination: args.destination.clone().unwrap_or_default(),
            action,
            permissions,
            description: args.description.clone(),
            owner: String::new(),
        }
    };
    spec.validate(&placeholder_td(), String::new(), 0)
        .map_err(|e| anyhow::anyhow!("invalid intention: {e}"))?;
    Ok(spec)
}

/// Renders an intention as `Key : value` lines.
pub fn intention_text(i: &IntentionJson) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| {
        let _ = writeln!(out, "{k:<13}: {v}");
    };
    line("ID", &i.id);
    line("Source", &i.spec.source);
    line("Destination", &i.spec.destination);
    line("Action", &i.spec.action.to_string());
    for (n, p) in i.spec.permissions.iter().enumerate() {
        let h = &p.http;
        let mut rule = format!("{}", p.action.unwrap_or(i.spec.action));
        if !h.methods.is_empty() {
            rule.push_str(&format!(" methods={}", h.methods.join(",")));
        }
        if let Some(v) = &h.path_exact {
            rule.push_str(&format!(" path={v}"));
        }
        if let Some(v) = &h.path_prefix {
            rule.push_str(&format!(" path-prefix={v}"));
        }
        if let Some(v) = &h.path_regex {
            rule.push_str(&format!(" path-regex={v}"));
        }
        for hd in &h.headers {
            rule.push_str(&format!(" header={}", hd.name));
        }
        if let Some(m) = &p.mcp {
            for (key, list) in [
                ("mcp-tools", &m.tools),
                ("mcp-resources", &m.resources),
                ("mcp-prompts", &m.prompts),
            ] {
                if !list.is_empty() {
                    rule.push_str(&format!(" {key}={}", list.join(",")));
                }
            }
            for (name, a) in &m.arguments {
                rule.push_str(&format!(" mcp-arg={name}^={}", a.prefix));
            }
        }
        if let Some(a) = &p.a2a {
            rule.push_str(&format!(" a2a-methods={}", a.methods.join(",")));
        }
        if let Some(u) = &p.user {
            for (k, v) in &u.claims {
                rule.push_str(&format!(" user-claim={k}={v}"));
            }
        }
        line(&format!("Permission {}", n + 1), &rule);
    }
    if !i.spec.description.is_empty() {
        line("Description", &i.spec.description);
    }
    line(
        "Owner",
        if i.spec.owner.is_empty() {
            "operator"
        } else {
            &i.spec.owner
        },
    );
    line("Created at", &i.created_at);
    out
}

fn print_intention(i: Intention, output: TextOrJson) -> anyhow::Result<()> {
    let json = IntentionJson::try_from(i)?;
    match output {
        TextOrJson::Text => {
            print!("{}", intention_text(&json));
            Ok(())
        }
        TextOrJson::Json => print_json(&json),
    }
}

/// Runs `agentmesh intention ...`. Returns the process exit code.
///
/// # Errors
/// Bad arguments, no server, or the server refusing.
pub async fn run(cmd: IntentionCommand) -> anyhow::Result<i32> {
    match cmd {
        IntentionCommand::Create(args) => create(*args).await?,
        IntentionCommand::List(args) => list(args).await?,
        IntentionCommand::Delete(args) => delete(args).await?,
        IntentionCommand::Check(args) => return check(args).await,
    }
    Ok(0)
}

async fn create(args: IntentionCreateArgs) -> anyhow::Result<()> {
    let spec = spec_from_args(&args)?;
    let mut client = args.admin.connect().await?;
    let created = client
        .create_intention(CreateIntentionRequest {
            spec_json: spec.to_json(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    print_intention(created, args.output)?;
    Ok(())
}

async fn list(args: IntentionListArgs) -> anyhow::Result<()> {
    let mut client = args.admin.connect().await?;
    let list = client
        .list_intentions(ListIntentionsRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .intentions
        .into_iter()
        .map(IntentionJson::try_from)
        .collect::<anyhow::Result<Vec<_>>>()?;
    match args.output {
        TextOrJson::Json => {
            #[derive(Serialize)]
            struct ListJson {
                intentions: Vec<IntentionJson>,
            }
            print_json(&ListJson { intentions: list })?;
        }
        TextOrJson::Text => {
            let n = list.len();
            println!(
                "Found {n} {}{}",
                if n == 1 { "intention" } else { "intentions" },
                if n == 0 {
                    " (everything is denied)"
                } else {
                    ""
                }
            );
            for i in &list {
                print!("\n{}", intention_text(i));
            }
        }
    }
    Ok(())
}

/// Deletes by ID, or by the source and destination pair when both are given.
async fn delete(args: IntentionDeleteArgs) -> anyhow::Result<()> {
    let req = match &args.destination {
        Some(dst) => DeleteIntentionRequest {
            id: String::new(),
            source: args.id_or_source.clone(),
            destination: dst.clone(),
        },
        None => DeleteIntentionRequest {
            id: args.id_or_source.clone(),
            ..Default::default()
        },
    };
    let mut client = args.admin.connect().await?;
    let deleted = client
        .delete_intention(req)
        .await
        .map_err(status_error)?
        .into_inner()
        .deleted
        .unwrap_or_default();
    match args.output {
        TextOrJson::Text => println!("Deleted intention {}", deleted.id),
        TextOrJson::Json => print_json(&IntentionJson::try_from(deleted)?)?,
    }
    Ok(())
}

/// Asks the server for its decision; a deny exits [`DENIED_EXIT_CODE`] so scripts can
/// branch on the answer without parsing it.
async fn check(args: IntentionCheckArgs) -> anyhow::Result<i32> {
    let headers = args
        .headers
        .iter()
        .map(|h| match h.split_once('=') {
            Some((n, v)) if !n.trim().is_empty() => Ok(HttpHeader {
                name: n.trim().to_owned(),
                value: v.to_owned(),
            }),
            _ => Err(anyhow::anyhow!(
                "invalid --header {h:?}: expected NAME=VALUE"
            )),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(p) = &args.path
        && !p.starts_with('/')
    {
        anyhow::bail!("invalid --path {p:?}: must start with '/'");
    }
    let mcp = args.mcp_item();
    let a2a = args.a2a_method.as_deref();
    let default_path = match (mcp, a2a) {
        (Some(_), _) => Some("/mcp"),
        (None, Some(_)) => Some("/a2a"),
        (None, None) => None,
    };
    let (method, path) = match (&args.method, &args.path, default_path) {
        (m, p, Some(default_path)) => (
            m.clone().unwrap_or_else(|| "POST".into()),
            p.clone().unwrap_or_else(|| default_path.into()),
        ),
        (m, p, None) => (m.clone().unwrap_or_default(), p.clone().unwrap_or_default()),
    };
    let mut client = args.admin.connect().await?;
    let mut r = client
        .check_intention(CheckIntentionRequest {
            source: args.source.clone(),
            destination: args.destination.clone(),
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if mcp.is_some() || a2a.is_some() {
        // The server resolved the names; the MCP or A2A call is decided here, with the same
        // evaluation as the sidecars, on the server's intentions.
        let list = client
            .list_intentions(ListIntentionsRequest {})
            .await
            .map_err(status_error)?
            .into_inner();
        let source: agentmesh_spiffe::SpiffeId = r.source.parse().map_err(|e| {
            anyhow::anyhow!("the server resolved the source to {:?}: {e}", r.source)
        })?;
        let destination: agentmesh_spiffe::SpiffeId = r.destination.parse().map_err(|e| {
            anyhow::anyhow!(
                "the server resolved the destination to {:?}: {e}",
                r.destination
            )
        })?;
        let td = destination.trust_domain().clone();
        let set = agentmesh_policy::PolicySet::new(
            list.intentions
                .iter()
                .filter_map(|i| {
                    IntentionSpec::from_json(&i.spec_json)
                        .ok()?
                        .validate(&td, i.id.clone(), i.created_at)
                        .ok()
                })
                .collect(),
        );
        let pairs: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_bytes()))
            .collect();
        let request = agentmesh_policy::HttpRequest {
            method: &method,
            path: &path,
            headers: &pairs,
        };
        let (d, note) = match (mcp, a2a) {
            (Some((mcp_method, item)), _) => (
                set.check_mcp(
                    &source,
                    &destination,
                    &request,
                    &agentmesh_policy::McpCall {
                        method: mcp_method,
                        item: Some(item),
                        arguments: None,
                        user: None,
                    },
                ),
                set.mcp_applies(&source, &destination).then_some(
                    "a check knows no tool arguments and no user: argument rules are taken to hold, user rules to fail",
                ),
            ),
            (None, a2a) => (
                set.check_a2a(
                    &source,
                    &destination,
                    &request,
                    &agentmesh_policy::A2aCall {
                        method: a2a.unwrap_or_default(),
                        user: None,
                    },
                ),
                set.a2a_applies(&source, &destination)
                    .then_some("a check knows no user: user rules are taken to fail"),
            ),
        };
        r.allowed = d.is_allowed();
        r.intention_id = d.intention_id.unwrap_or_default();
        r.reason = match note {
            Some(note) => format!("{} ({note})", d.reason),
            None => d.reason,
        };
    }
    let json = CheckJson {
        source: r.source,
        destination: r.destination,
        decision: if r.allowed {
            Action::Allow
        } else {
            Action::Deny
        },
        intention_id: (!r.intention_id.is_empty()).then_some(r.intention_id),
        reason: r.reason,
    };
    match args.output {
        TextOrJson::Json => print_json(&json)?,
        TextOrJson::Text => {
            println!("{}", if r.allowed { "Allowed" } else { "Denied" });
            println!("{:<12}: {}", "Source", json.source);
            println!("{:<12}: {}", "Destination", json.destination);
            println!(
                "{:<12}: {}",
                "Intention",
                json.intention_id
                    .as_deref()
                    .unwrap_or("(none: default deny)")
            );
            println!("{:<12}: {}", "Reason", json.reason);
        }
    }
    Ok(if r.allowed { 0 } else { DENIED_EXIT_CODE })
}
