//! `agentmesh entry create|list|show|delete`: registration entries.

use std::fmt::Write as _;

use agentmesh_proto::v1::{
    CreateEntryRequest, DeleteEntryRequest, Entry, GetEntryRequest, ListEntriesRequest,
};
use agentmesh_spiffe::{Selector, SpiffeId};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::admin::{AdminArgs, status_error};
use super::output::{TextOrJson, print_json, rfc3339_secs, ttl};
use super::parse_seconds;

/// `agentmesh entry ...`
#[derive(Debug, Subcommand)]
pub enum EntryCommand {
    /// Registers a SPIFFE ID for the workloads that match every selector.
    Create(EntryCreateArgs),
    /// Lists every entry.
    List(EntryListArgs),
    /// Shows one entry.
    Show(EntryIdArgs),
    /// Deletes one entry.
    Delete(EntryIdArgs),
}

/// `agentmesh entry create` flags.
#[derive(Debug, Clone, Args)]
pub struct EntryCreateArgs {
    /// The SPIFFE ID to issue, e.g. spiffe://agentmesh.local/ns/default/sa/planner
    #[arg(long, value_name = "ID")]
    pub spiffe_id: String,
    /// A selector the workload must match, TYPE:KEY:VALUE (e.g. unix:uid:1000); repeatable,
    /// and every one must match
    #[arg(long = "selector", value_name = "TYPE:KEY:VALUE", required = true)]
    pub selectors: Vec<String>,
    /// Only this node serves the entry, or every node that matches this node alias
    /// [default: every node of the trust domain]
    #[arg(long, value_name = "ID")]
    pub parent_id: Option<String>,
    /// Make the entry a node alias, as SPIRE's `entry create -node`: its selectors are node
    /// selectors (x509pop:subject:cn:NAME, x509pop:ca:fingerprint:HEX,
    /// x509pop:serialnumber:HEX), and its SPIFFE ID, given as another entry's --parent-id, has
    /// that entry served by every node that matches them. Same as --parent-id
    /// spiffe://<td>/agentmesh/server
    #[arg(long, conflicts_with = "parent_id")]
    pub node: bool,
    /// X.509-SVID lifetime [default: the server's --default-x509-ttl]
    #[arg(long, value_name = "DUR")]
    pub x509_ttl: Option<String>,
    /// JWT-SVID lifetime [default: the server's --default-jwt-ttl]
    #[arg(long, value_name = "DUR")]
    pub jwt_ttl: Option<String>,
    /// A DNS SAN to add to the X.509-SVID; repeatable
    #[arg(long = "dns-name", value_name = "NAME")]
    pub dns_names: Vec<String>,
    /// A federated trust domain (spiffe://other.td) whose bundle this entry's X509-SVID
    /// responses carry, as SPIRE's -federatesWith; repeatable
    #[arg(long = "federates-with", value_name = "TRUST_DOMAIN")]
    pub federates_with: Vec<String>,
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: TextOrJson,
    /// The server to ask.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `agentmesh entry list` flags.
#[derive(Debug, Clone, Args)]
pub struct EntryListArgs {
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: TextOrJson,
    /// The server to ask.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `agentmesh entry show|delete` arguments.
#[derive(Debug, Clone, Args)]
pub struct EntryIdArgs {
    /// The entry's ID, as `entry list` shows it
    #[arg(value_name = "ID")]
    pub id: String,
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: TextOrJson,
    /// The server to ask.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// The JSON form of an entry. Timestamps are RFC 3339; TTLs are seconds, 0 meaning the
/// server's default; `parent_id` is empty when every node serves the entry.
#[derive(Debug, Serialize)]
pub struct EntryJson {
    /// The entry's ID.
    pub id: String,
    /// The SPIFFE ID it issues.
    pub spiffe_id: String,
    /// The node that serves it, or empty for every node.
    pub parent_id: String,
    /// TYPE:KEY:VALUE selectors, all of which must match.
    pub selectors: Vec<String>,
    /// X.509-SVID lifetime in seconds; 0 is the server's default.
    pub x509_ttl_seconds: i64,
    /// JWT-SVID lifetime in seconds; 0 is the server's default.
    pub jwt_ttl_seconds: i64,
    /// Extra DNS SANs.
    pub dns_names: Vec<String>,
    /// Federated trust domains whose bundles the entry's SVID responses carry.
    pub federates_with: Vec<String>,
    /// When it was created, RFC 3339.
    pub created_at: String,
}

impl From<Entry> for EntryJson {
    fn from(e: Entry) -> Self {
        Self {
            id: e.id,
            spiffe_id: e.spiffe_id,
            parent_id: e.parent_id,
            selectors: e.selectors,
            x509_ttl_seconds: e.x509_ttl_seconds,
            jwt_ttl_seconds: e.jwt_ttl_seconds,
            dns_names: e.dns_names,
            federates_with: e.federates_with,
            created_at: rfc3339_secs(e.created_at),
        }
    }
}

/// The JSON form of `entry list`.
#[derive(Debug, Serialize)]
pub struct EntryListJson {
    /// Every entry.
    pub entries: Vec<EntryJson>,
}

/// The JSON form of `entry delete`.
#[derive(Debug, Serialize)]
pub struct EntryDeletedJson {
    /// The entry that is gone.
    pub id: String,
    /// Always true.
    pub deleted: bool,
}

/// Checks `entry create`'s arguments locally and builds the entry to send, so that
/// malformed input never reaches the server.
///
/// # Errors
/// One line naming the first bad flag and value.
pub fn entry_from_args(args: &EntryCreateArgs) -> anyhow::Result<Entry> {
    let spiffe_id = parse_id("--spiffe-id", &args.spiffe_id)?;
    let parent_id = match &args.parent_id {
        Some(p) => parse_id("--parent-id", p)?,
        // A node alias's parent is the server, as in SPIRE.
        None if args.node => SpiffeId::new(&spiffe_id)
            .and_then(|id| SpiffeId::from_path(id.trust_domain(), agentmesh_server::SERVER_PATH))
            .map(|id| id.to_string())
            .map_err(|e| anyhow::anyhow!("invalid --spiffe-id {spiffe_id:?}: {e}"))?,
        None => String::new(),
    };
    let selectors = args
        .selectors
        .iter()
        .map(|s| {
            s.parse::<Selector>()
                .map(|sel| sel.to_string())
                .map_err(|e| anyhow::anyhow!("invalid --selector {s:?}: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let x509_ttl_seconds = match &args.x509_ttl {
        Some(v) => parse_seconds("--x509-ttl", v)?,
        None => 0,
    };
    let jwt_ttl_seconds = match &args.jwt_ttl {
        Some(v) => parse_seconds("--jwt-ttl", v)?,
        None => 0,
    };
    if let Some(bad) = args.dns_names.iter().find(|d| d.trim().is_empty()) {
        anyhow::bail!("invalid --dns-name {bad:?}: empty");
    }
    Ok(Entry {
        id: String::new(),
        spiffe_id,
        parent_id,
        selectors,
        x509_ttl_seconds,
        jwt_ttl_seconds,
        dns_names: args.dns_names.clone(),
        created_at: 0,
        federates_with: args.federates_with.clone(),
    })
}

fn parse_id(flag: &str, value: &str) -> anyhow::Result<String> {
    SpiffeId::new(value)
        .map(|id| id.to_string())
        .map_err(|e| anyhow::anyhow!("invalid {flag} {value:?}: {e}"))
}

/// Renders an entry as `Key : value` lines, the way `spire-server entry show` does.
pub fn entry_text(e: &Entry) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| {
        let _ = writeln!(out, "{k:<17}: {v}");
    };
    line("Entry ID", &e.id);
    line("SPIFFE ID", &e.spiffe_id);
    if e.parent_id.is_empty() {
        line("Parent ID", "(every node)");
    } else if SpiffeId::new(&e.parent_id).is_ok_and(|p| p.path() == agentmesh_server::SERVER_PATH) {
        line("Parent ID", &format!("{} (a node alias)", e.parent_id));
    } else {
        line("Parent ID", &e.parent_id);
    }
    line("X509-SVID TTL", &ttl(e.x509_ttl_seconds));
    line("JWT-SVID TTL", &ttl(e.jwt_ttl_seconds));
    for s in &e.selectors {
        line("Selector", s);
    }
    for d in &e.dns_names {
        line("DNS name", d);
    }
    for f in &e.federates_with {
        line("FederatesWith", f);
    }
    line("Created at", &rfc3339_secs(e.created_at));
    out
}

/// Runs `agentmesh entry ...`.
///
/// # Errors
/// Bad arguments, no server, or the server refusing.
pub async fn run(cmd: EntryCommand) -> anyhow::Result<()> {
    match cmd {
        EntryCommand::Create(args) => {
            let entry = entry_from_args(&args)?;
            let mut client = args.admin.connect().await?;
            let created = client
                .create_entry(CreateEntryRequest { entry: Some(entry) })
                .await
                .map_err(status_error)?
                .into_inner();
            print_entry(created, args.output)
        }
        EntryCommand::List(args) => {
            let mut client = args.admin.connect().await?;
            let entries = client
                .list_entries(ListEntriesRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .entries;
            match args.output {
                TextOrJson::Json => print_json(&EntryListJson {
                    entries: entries.into_iter().map(EntryJson::from).collect(),
                }),
                TextOrJson::Text => {
                    let n = entries.len();
                    println!("Found {n} {}", if n == 1 { "entry" } else { "entries" });
                    for e in &entries {
                        print!("\n{}", entry_text(e));
                    }
                    Ok(())
                }
            }
        }
        EntryCommand::Show(args) => {
            let mut client = args.admin.connect().await?;
            let entry = client
                .get_entry(GetEntryRequest { id: args.id })
                .await
                .map_err(status_error)?
                .into_inner();
            print_entry(entry, args.output)
        }
        EntryCommand::Delete(args) => {
            let mut client = args.admin.connect().await?;
            client
                .delete_entry(DeleteEntryRequest {
                    id: args.id.clone(),
                })
                .await
                .map_err(status_error)?;
            match args.output {
                TextOrJson::Text => {
                    println!("Deleted entry {}", args.id);
                    Ok(())
                }
                TextOrJson::Json => print_json(&EntryDeletedJson {
                    id: args.id,
                    deleted: true,
                }),
            }
        }
    }
}

fn print_entry(e: Entry, output: TextOrJson) -> anyhow::Result<()> {
    match output {
        TextOrJson::Text => {
            print!("{}", entry_text(&e));
            Ok(())
        }
        TextOrJson::Json => print_json(&EntryJson::from(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn create_args(args: &[&str]) -> Result<EntryCreateArgs, clap::Error> {
        let cli = crate::cli::Cli::try_parse_from(
            ["agentmesh", "entry", "create"].iter().chain(args.iter()),
        )?;
        match cli.command {
            crate::cli::Command::Entry(EntryCommand::Create(a)) => Ok(a),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn node_makes_a_node_alias_under_the_server_of_the_ids_trust_domain() {
        let a = create_args(&[
            "--spiffe-id",
            "spiffe://example.org/hosts/a",
            "--selector",
            "x509pop:subject:cn:host-a",
            "--node",
        ])
        .unwrap();
        let e = entry_from_args(&a).unwrap();
        assert_eq!(e.parent_id, "spiffe://example.org/agentmesh/server");
        assert!(
            entry_text(&e).contains("(a node alias)"),
            "{}",
            entry_text(&e)
        );
        // An alias has no parent node of its own.
        assert!(
            create_args(&[
                "--spiffe-id",
                "spiffe://example.org/hosts/a",
                "--selector",
                "x509pop:subject:cn:host-a",
                "--node",
                "--parent-id",
                "spiffe://example.org/x",
            ])
            .is_err()
        );
        // An unknown x509pop key is refused before anything is sent.
        let a = create_args(&[
            "--spiffe-id",
            "spiffe://example.org/hosts/a",
            "--selector",
            "x509pop:subject:ou:ops",
            "--node",
        ])
        .unwrap();
        let err = entry_from_args(&a).unwrap_err().to_string();
        assert!(err.contains("unknown key \"subject:ou\""), "{err}");
    }

    #[test]
    fn a_good_entry_is_built_from_repeated_flags() {
        let a = create_args(&[
            "--spiffe-id",
            "spiffe://agentmesh.local/ns/default/sa/planner",
            "--selector",
            "unix:uid:1000",
            "--selector",
            "unix:path:/usr/bin/python3",
            "--x509-ttl",
            "30m",
            "--dns-name",
            "planner.local",
        ])
        .unwrap();
        let e = entry_from_args(&a).unwrap();
        assert_eq!(e.selectors, ["unix:uid:1000", "unix:path:/usr/bin/python3"]);
        assert_eq!(e.x509_ttl_seconds, 1800);
        assert_eq!(e.jwt_ttl_seconds, 0);
        assert_eq!(e.parent_id, "");
        assert_eq!(e.dns_names, ["planner.local"]);
    }

    #[test]
    fn at_least_one_selector_is_required() {
        let err = create_args(&["--spiffe-id", "spiffe://agentmesh.local/x"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn malformed_spiffe_ids_are_refused_locally_in_one_line() {
        let cases = [
            ("spiffe://example.org/", "trailing '/'"),
            ("spiffe://Example.org/x", "character 'E'"),
            ("http://example.org/x", "scheme"),
            ("spiffe://example.org//x", "empty segment"),
            ("spiffe://example.org/./x", "'.' or '..'"),
            ("spiffe://example.org:8080/x", "character ':'"),
            ("spiffe://example.org/x?y", "character '?'"),
        ];
        for (id, why) in cases {
            let a = create_args(&["--spiffe-id", id, "--selector", "unix:uid:1"]).unwrap();
            let err = entry_from_args(&a).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("invalid --spiffe-id {id:?}: ")),
                "{id}: {err}"
            );
            assert!(err.contains(why), "{id}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let err = entry_from_args(
            &create_args(&[
                "--spiffe-id",
                "spiffe://example.org/x",
                "--selector",
                "unix:uid:1",
                "--parent-id",
                "spiffe://example.org/",
            ])
            .unwrap(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("invalid --parent-id"), "{err}");
    }

    #[test]
    fn malformed_selectors_and_ttls_are_refused_locally() {
        for (flags, want) in [
            (
                &["--selector", "uid=1000"][..],
                "invalid --selector \"uid=1000\"",
            ),
            (&["--selector", "k8s:ns:default"][..], "invalid --selector"),
            (
                &["--selector", "unix:uid:1", "--x509-ttl", "1 fortnight"][..],
                "invalid --x509-ttl",
            ),
            (
                &["--selector", "unix:uid:1", "--jwt-ttl", "0s"][..],
                "invalid --jwt-ttl",
            ),
        ] {
            let mut args = vec!["--spiffe-id", "spiffe://example.org/x"];
            args.extend_from_slice(flags);
            let err = entry_from_args(&create_args(&args).unwrap())
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(want), "{flags:?}: {err}");
        }
    }

    #[test]
    fn entries_render_like_spire() {
        let e = Entry {
            id: "e1".into(),
            spiffe_id: "spiffe://agentmesh.local/ns/default/sa/planner".into(),
            parent_id: String::new(),
            selectors: vec!["unix:uid:1000".into(), "unix:gid:1000".into()],
            x509_ttl_seconds: 3600,
            jwt_ttl_seconds: 0,
            dns_names: vec!["planner".into()],
            created_at: 0,
            federates_with: vec![],
        };
        let text = entry_text(&e);
        assert!(text.starts_with("Entry ID         : e1\n"), "{text}");
        assert!(text.contains("Parent ID        : (every node)\n"), "{text}");
        assert!(text.contains("X509-SVID TTL    : 1h\n"), "{text}");
        assert!(text.contains("JWT-SVID TTL     : default\n"), "{text}");
        assert_eq!(text.matches("Selector         : ").count(), 2, "{text}");
        assert!(text.contains("DNS name         : planner\n"), "{text}");
        let json = serde_json::to_value(EntryJson::from(e)).unwrap();
        assert_eq!(json["created_at"], "1970-01-01T00:00:00Z");
        assert_eq!(json["x509_ttl_seconds"], 3600);
        assert_eq!(json["selectors"][1], "unix:gid:1000");
    }
}
