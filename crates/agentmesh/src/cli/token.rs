//! `agentmesh token generate`: one-time join tokens for nodes.

use agentmesh_proto::v1::GenerateJoinTokenRequest;
use clap::{Args, Subcommand};
use serde::Serialize;

use super::admin::{AdminArgs, status_error};
use super::output::{TextOrJson, print_json, rfc3339_secs};
use super::parse_seconds;

/// `agentmesh token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Generates a join token and prints it (only the token, on one line).
    Generate(TokenGenerateArgs),
}

/// `agentmesh token generate` flags.
#[derive(Debug, Clone, Args)]
pub struct TokenGenerateArgs {
    /// How long the token stays valid [default: the server's --join-token-ttl, 10m]
    #[arg(long, value_name = "DUR")]
    pub ttl: Option<String>,
    /// Output format; json adds the expiry
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: TextOrJson,
    /// The server to ask.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// The JSON form of a join token.
#[derive(Debug, Serialize)]
pub struct TokenJson {
    /// The token itself.
    pub token: String,
    /// When it stops being accepted, RFC 3339.
    pub expires_at: String,
}

/// Runs `agentmesh token ...`.
///
/// # Errors
/// A bad `--ttl`, no server, or the server refusing.
pub async fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Generate(args) = cmd;
    let ttl_seconds = match &args.ttl {
        Some(v) => parse_seconds("--ttl", v)?,
        None => 0,
    };
    let mut client = args.admin.connect().await?;
    let token = client
        .generate_join_token(GenerateJoinTokenRequest { ttl_seconds })
        .await
        .map_err(status_error)?
        .into_inner();
    match args.output {
        TextOrJson::Text => println!("{}", token.token),
        TextOrJson::Json => print_json(&TokenJson {
            token: token.token,
            expires_at: rfc3339_secs(token.expires_at),
        })?,
    }
    Ok(())
}
