//! `agentmesh jwt fetch`: JWT-SVIDs for an audience from the Workload API.

use agentmesh_proto::workload::JwtsvidRequest;
use agentmesh_spiffe::SpiffeId;
use clap::{Args, Subcommand};
use serde::Serialize;

use super::output::{TextOrJson, print_json, rfc3339_secs};
use super::{WORKLOAD_SOCKET_ENV, parse_duration, require_workload_socket, workload};

/// `agentmesh jwt ...`
#[derive(Debug, Subcommand)]
pub enum JwtCommand {
    /// Fetches JWT-SVIDs for this process, bound to the audiences given.
    Fetch(JwtFetchArgs),
}

/// `agentmesh jwt fetch` flags.
#[derive(Debug, Clone, Args)]
pub struct JwtFetchArgs {
    /// An audience the token is for; repeatable
    #[arg(long = "audience", value_name = "AUD", required = true)]
    pub audiences: Vec<String>,
    /// Only the SVID with this SPIFFE ID [default: every SPIFFE ID this process has]
    #[arg(long, value_name = "ID")]
    pub spiffe_id: Option<String>,
    /// The Workload API: unix:///path, unix:/path or a path [default: $SPIFFE_ENDPOINT_SOCKET]
    #[arg(long, value_name = "PATH", env = WORKLOAD_SOCKET_ENV)]
    pub socket: Option<String>,
    /// Output format; text prints one token per line
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: TextOrJson,
    /// How long to wait for the node
    #[arg(long, value_name = "DUR", default_value = "10s")]
    pub timeout: String,
}

/// One token in `jwt fetch -o json`.
#[derive(Debug, Serialize)]
pub struct JwtJson {
    /// The token's subject.
    pub spiffe_id: String,
    /// The token itself.
    pub token: String,
    /// Its `exp` claim, RFC 3339; null if the token's claims cannot be read.
    pub expires_at: Option<String>,
}

/// Runs `agentmesh jwt ...`.
///
/// # Errors
/// Bad arguments, no node, a refusal from the node (printed as `<Code>: <message>`) or a
/// timeout.
pub async fn run(cmd: JwtCommand) -> anyhow::Result<()> {
    let JwtCommand::Fetch(args) = cmd;
    if let Some(bad) = args.audiences.iter().find(|a| a.trim().is_empty()) {
        anyhow::bail!("invalid --audience {bad:?}: empty");
    }
    let spiffe_id = match &args.spiffe_id {
        Some(id) => SpiffeId::new(id)
            .map_err(|e| anyhow::anyhow!("invalid --spiffe-id {id:?}: {e}"))?
            .to_string(),
        None => String::new(),
    };
    let socket = require_workload_socket(args.socket.as_deref())?;
    let timeout = parse_duration("--timeout", &args.timeout)?;
    let fetch = async {
        let mut client = workload::connect(&socket).await?;
        Ok::<_, anyhow::Error>(
            client
                .fetch_jwtsvid(workload::request(JwtsvidRequest {
                    audience: args.audiences.clone(),
                    spiffe_id,
                }))
                .await
                .map_err(workload::status_error)?
                .into_inner(),
        )
    };
    let response = tokio::time::timeout(timeout, fetch).await.map_err(|_| {
        anyhow::anyhow!(
            "no JWT-SVID from {} within {}; is the node attested and ready? (raise --timeout to wait longer)",
            socket.display(),
            humantime::format_duration(timeout)
        )
    })??;
    if response.svids.is_empty() {
        anyhow::bail!("the node at {} sent no JWT-SVIDs", socket.display());
    }
    match args.output {
        TextOrJson::Text => {
            for s in &response.svids {
                println!("{}", s.svid);
            }
            Ok(())
        }
        TextOrJson::Json => print_json(
            &response
                .svids
                .into_iter()
                .map(|s| JwtJson {
                    expires_at: agentmesh_ca::peek_claims(&s.svid)
                        .ok()
                        .map(|c| rfc3339_secs(c.exp)),
                    spiffe_id: s.spiffe_id,
                    token: s.svid,
                })
                .collect::<Vec<_>>(),
        ),
    }
}
