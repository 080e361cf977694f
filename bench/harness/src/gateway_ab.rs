//! `gateway-ab`: `agentmesh gateway run` from two builds, the current one and a baseline (an
//! older commit), in front of one upstream in one run, so that a change's cost can be told
//! from the machine's noise (the method of `proxy-ab`, whose measurement loop it shares).
//!
//! ```text
//! load ─▶ upstream                                  (direct, measured every round)
//! load ─▶ agentmesh gateway (current)  ─▶ upstream
//! load ─▶ agentmesh gateway (baseline) ─▶ upstream
//! ```
//!
//! As in `gateway`, the load tool sets the `x-forwarded-client-cert` the gateway's inbound
//! proxy would set, straight to the gateway's plain listener: a Unix socket, the only kind on
//! which the gateway trusts that header.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use hyper::header::{HeaderName, HeaderValue};

use crate::gateway::{XFCC, first_answer, gateway_toml, tree_memory};
use crate::load::{Call, Endpoint};
use crate::proxy::Sizes;
use crate::proxy_ab::{RATE_CONNECTIONS, SATURATION_CONNECTIONS, ab_rows, alternate};
use crate::report::{Table, mib, ratio};
use crate::scale::{Proc, free_port};

/// Runs the comparison: a gateway from `current` and one from `baseline`; `baseline_label`
/// names the baseline in the table (its commit).
///
/// # Errors
/// Any process failing to start or answer, or a gateway failing requests.
pub fn run(
    current: &Path,
    baseline: &Path,
    baseline_label: &str,
    sizes: Sizes,
    rounds: usize,
) -> anyhow::Result<Table> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run_async(current, baseline, baseline_label, sizes, rounds))
}

async fn run_async(
    current: &Path,
    baseline: &Path,
    baseline_label: &str,
    sizes: Sizes,
    rounds: usize,
) -> anyhow::Result<Table> {
    let builds = [current, baseline].map(|b| {
        b.canonicalize()
            .with_context(|| format!("no agentmesh binary at {}", b.display()))
    });
    let [current, baseline] = builds;
    let builds = [current?, baseline?];
    let tmp = tempfile::tempdir().context("a temporary directory")?;
    let dir = tmp.path();
    let addr =
        || -> anyhow::Result<SocketAddr> { Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?))) };
    let chat = Call::chat(vec![(
        HeaderName::from_static("x-forwarded-client-cert"),
        HeaderValue::from_static(XFCC),
    )]);

    let upstream = addr()?;
    let me = std::env::current_exe().context("the bench binary's path")?;
    let log = dir.join("upstream.log");
    let mut upstream_proc = Proc::spawn(
        "upstream",
        &me,
        &["app", "--listen", &upstream.to_string()],
        &log,
    )?;
    first_answer(
        "the upstream",
        upstream,
        &chat,
        Instant::now(),
        &mut upstream_proc,
        &log,
    )
    .await?;

    let mut gateways = Vec::new();
    for (bin, (tag, name)) in builds.iter().zip([
        ("current", "current agentmesh gateway"),
        ("baseline", "baseline agentmesh gateway"),
    ]) {
        // On a Unix socket, as behind its sidecar: on TCP it trusts no caller's XFCC.
        let listen = Endpoint::Unix(dir.join(format!("{tag}-gateway.sock")));
        let config = dir.join(format!("{tag}-gateway.toml"));
        std::fs::write(&config, gateway_toml(&listen, upstream))?;
        let log = dir.join(format!("{tag}-gateway.log"));
        let mut proc = Proc::spawn(
            name,
            bin,
            &["gateway", "run", "--config", &config.display().to_string()],
            &log,
        )?;
        first_answer(
            &format!("the {tag} gateway"),
            listen.clone(),
            &chat,
            Instant::now(),
            &mut proc,
            &log,
        )
        .await?;
        gateways.push((listen, proc));
    }
    let figures = alternate(
        [gateways[0].0.clone(), gateways[1].0.clone()],
        upstream.into(),
        &chat,
        sizes,
        rounds,
    )
    .await?;
    let after = [gateways[0].1.pid(), gateways[1].1.pid()].map(tree_memory);
    let [now, base] = after;
    let (now, base) = (now?, base?);

    let mut table = Table::new(format!(
        "gateway-ab: agentmesh gateway run, this build vs {baseline_label}, same run"
    ));
    ab_rows(&mut table, &figures, sizes, rounds);
    table.row(
        "RSS of the gateway after the load (VmRSS)",
        mib(now.rss),
        mib(base.rss),
        ratio(now.rss, base.rss),
        "",
    );
    table.note(format!(
        "Peer: the same gateway run from the baseline build ({baseline_label}), next to this \
         build's, both in front of one upstream (the bench app's fixed chat completion) with \
         the same config. {rounds} rounds of {} s each, alternating which build goes first; \
         each round measures saturation ({SATURATION_CONNECTIONS} connections) and then \
         latency at a fixed rate ({RATE_CONNECTIONS} connections), with the upstream called \
         directly in the same round, so added = gateway − direct of that round. Spread = \
         (max − min) / median over one build's rounds: a ratio whose distance from 1.00× is \
         within both spreads is noise.",
        sizes.seconds
    ));
    Ok(table)
}
