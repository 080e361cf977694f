//! Run with: `SPIFFE_ENDPOINT_SOCKET=unix:/tmp/am/node.sock cargo run -p agentmesh-sdk-example --bin client -- https://127.0.0.1:8443/hello spiffe://agentmesh.local/sdk-service spiffe://agentmesh.local/sdk-client`
//!
//! Calls the URL over mTLS as the given client ID, accepting only a server that presents the
//! given server ID, and prints the status and body.

use anyhow::Context as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "https://127.0.0.1:8443/hello".into());
    let server = args
        .next()
        .unwrap_or_else(|| "spiffe://agentmesh.local/sdk-service".into());
    let me = args
        .next()
        .unwrap_or_else(|| "spiffe://agentmesh.local/sdk-client".into());

    let source = agentmesh_sdk_example::source(me.parse().context("client spiffe id")?).await?;
    let (status, body) =
        agentmesh_sdk_example::call(source, &url, server.parse().context("server spiffe id")?)
            .await?;
    println!("{status} {body}");
    if !(200..300).contains(&status) {
        std::process::exit(1);
    }
    Ok(())
}
