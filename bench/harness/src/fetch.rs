//! `fetch`: how long a workload waits for the first message of a new FetchX509SVID stream,
//! served from the node's cache, against a bare gRPC round trip on the same socket.
//!
//! Server and node run in this process, the in-process `agentmesh_node::TestMesh` that
//! the node's tests use too; the benchmark process itself is the workload, registered by its
//! uid.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use agentmesh_node::{TestMesh, with_header};
use agentmesh_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use agentmesh_proto::workload::{JwtBundlesRequest, ValidateJwtsvidRequest, X509svidRequest};
use agentmesh_server::ServerConfig;
use anyhow::{Context, bail};
use tonic::transport::Channel;

use crate::report::{Table, mean, micros, quantile, ratio};

/// Samples thrown away before measuring.
const WARMUP: usize = 200;

/// Runs the benchmark with `samples` measured calls of each kind.
pub fn run(samples: usize) -> anyhow::Result<Table> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run_async(samples))
}

/// Server and node in this process, the server of trust domain `bench.example`, and this
/// process registered as `/bench` by its uid.
async fn start_mesh() -> anyhow::Result<TestMesh> {
    let tmp = tempfile::tempdir().context("a temporary directory")?;
    let config = ServerConfig {
        trust_domain: "bench.example".parse().context("the trust domain")?,
        ..ServerConfig::for_test(tmp.path())
    };
    let mut mesh = TestMesh::start_with(tmp, config)
        .await
        .context("starting the server and the node")?;
    mesh.register_self("/bench", 0)
        .await
        .context("registering this process")?;
    Ok(mesh)
}

async fn wait_for_svid(client: &mut SpiffeWorkloadApiClient<Channel>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = match client.fetch_x509svid(with_header(X509svidRequest {})).await {
            Ok(r) => r.into_inner().message().await.ok().flatten(),
            Err(_) => None,
        };
        if got.is_some_and(|m| !m.svids.is_empty()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the node served no X.509-SVID within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connect(socket: &Path) -> anyhow::Result<SpiffeWorkloadApiClient<Channel>> {
    Ok(SpiffeWorkloadApiClient::new(
        agentmesh_proto::unix::connect(socket)
            .await
            .context("connecting to the Workload API")?,
    ))
}

/// Time from opening a FetchX509SVID stream to its first message.
async fn x509_first(client: &mut SpiffeWorkloadApiClient<Channel>) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await?
        .into_inner();
    let msg = stream.message().await?.context("the stream ended empty")?;
    let elapsed = start.elapsed();
    if msg.svids.is_empty() {
        bail!("a message without SVIDs");
    }
    black_box(msg);
    Ok(elapsed)
}

/// Time from opening a FetchJWTBundles stream to its first message.
async fn jwt_bundles_first(
    client: &mut SpiffeWorkloadApiClient<Channel>,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut stream = client
        .fetch_jwt_bundles(with_header(JwtBundlesRequest {}))
        .await?
        .into_inner();
    let msg = stream.message().await?.context("the stream ended empty")?;
    let elapsed = start.elapsed();
    black_box(msg);
    Ok(elapsed)
}

/// A unary call the node refuses before any work (no security header): one bare gRPC round
/// trip over the same socket, through the same tonic server.
async fn bare_round_trip(
    client: &mut SpiffeWorkloadApiClient<Channel>,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let res = client
        .validate_jwtsvid(tonic::Request::new(ValidateJwtsvidRequest {
            audience: "bench".into(),
            svid: "not-a-jwt".into(),
        }))
        .await;
    let elapsed = start.elapsed();
    match res {
        Err(s) if s.code() == tonic::Code::InvalidArgument => Ok(elapsed),
        other => bail!("expected InvalidArgument for a call without the header, got {other:?}"),
    }
}

async fn run_async(samples: usize) -> anyhow::Result<Table> {
    let mesh = start_mesh().await?;
    let mut client = connect(&mesh.workload_socket()).await?;
    wait_for_svid(&mut client).await?;

    let mut x509 = Vec::with_capacity(samples);
    let mut bundles = Vec::with_capacity(samples);
    let mut bare = Vec::with_capacity(samples);
    // Interleaved, so drift (other load, frequency changes) hits all three alike.
    for i in 0..WARMUP + samples {
        let a = x509_first(&mut client).await?;
        let b = jwt_bundles_first(&mut client).await?;
        let c = bare_round_trip(&mut client).await?;
        if i >= WARMUP {
            x509.push(a);
            bundles.push(b);
            bare.push(c);
        }
    }
    mesh.shutdown().await;

    for v in [&mut x509, &mut bundles, &mut bare] {
        v.sort();
    }
    let us = |d: Duration| d.as_secs_f64();
    let mut t = Table::new("fetch — Workload API FetchX509SVID first-message latency");
    for (name, q, target) in [("p50", 0.50, ""), ("p99", 0.99, "< 1 ms")] {
        let (a, c) = (quantile(&x509, q), quantile(&bare, q));
        t.row(
            format!("FetchX509SVID first message, {name} (peer: bare gRPC round trip)"),
            micros(a),
            micros(c),
            ratio(us(a), us(c)),
            target,
        );
    }
    t.row(
        "FetchX509SVID first message, mean",
        micros(mean(&x509)),
        micros(mean(&bare)),
        ratio(us(mean(&x509)), us(mean(&bare))),
        "",
    );
    t.row(
        "FetchX509SVID first message, max",
        micros(x509[x509.len() - 1]),
        micros(bare[bare.len() - 1]),
        ratio(us(x509[x509.len() - 1]), us(bare[bare.len() - 1])),
        "",
    );
    for (name, q) in [("p50", 0.50), ("p99", 0.99)] {
        let (b, c) = (quantile(&bundles, q), quantile(&bare, q));
        t.row(
            format!("FetchJWTBundles first message, {name} (attested, tiny payload)"),
            micros(b),
            micros(c),
            ratio(us(b), us(c)),
            "",
        );
    }
    t.note(format!(
        "{samples} samples of each call after {WARMUP} warm-up rounds, interleaved, one \
         connected client, a new stream per sample; server, node and client in one process \
         (2 tokio workers). Peer: ValidateJWTSVID without the `workload.spiffe.io` header on \
         the same socket and node, refused with InvalidArgument before attestation — one bare \
         gRPC round trip."
    ));
    Ok(t)
}
