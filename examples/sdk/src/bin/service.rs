//! Run with: `SPIFFE_ENDPOINT_SOCKET=unix:/tmp/am/node.sock cargo run -p agentmesh-sdk-example --bin service -- 127.0.0.1:8443 spiffe://agentmesh.local/sdk-service [allowed-client-id]`
//!
//! Serves `GET /hello` over mTLS as the given SPIFFE ID; only the allowed client (default
//! `spiffe://agentmesh.local/sdk-client`) gets in, everyone else gets a 403 with the reason.

use anyhow::Context as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8443".into());
    let me = args
        .next()
        .unwrap_or_else(|| "spiffe://agentmesh.local/sdk-service".into());
    let allowed = args
        .next()
        .unwrap_or_else(|| "spiffe://agentmesh.local/sdk-client".into());

    let source = agentmesh_sdk_example::source(me.parse().context("service spiffe id")?).await?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    eprintln!(
        "serving https://{} as {me}; admitting {allowed}",
        listener.local_addr()?
    );
    let app = agentmesh_sdk_example::app(allowed.parse().context("allowed spiffe id")?);
    agentmesh_sdk::serve(listener, source, app).await?;
    Ok(())
}
