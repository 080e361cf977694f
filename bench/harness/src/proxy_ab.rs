//! `proxy-ab`: the agentmesh proxy pair from two builds of agentmesh, the current one and a
//! baseline (an older commit), in one run against one app and one control plane, so that a
//! change's cost can be told from the machine's noise.
//!
//! ```text
//! load ─▶ client sidecar ─(mTLS, HTTP/2)─▶ server sidecar ─▶ app     (current build)
//! load ─▶ client sidecar ─(mTLS, HTTP/2)─▶ server sidecar ─▶ app     (baseline build)
//! ```
//!
//! Each measurement runs `rounds` times per build, alternating which build goes first, and
//! every round also measures the app called directly, so each added latency is taken against
//! the direct figure of its own round. The table reports each build's median with its
//! spread, (max − min) / median over its rounds: a difference between the builds that is
//! smaller than the spread of one build against itself is noise, not cost.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::load::{self, Call, Endpoint};
use crate::propagation::ControlPlane;
use crate::proxy::{MeshPair, SidecarCommand, Sizes, register, start_app, start_pair};
use crate::report::{Table, count, mib, micros, quantile, ratio};
use crate::scale::memory;

/// Keep-alive connections for the saturation runs (as in `proxy`; `gateway-ab` too).
pub(crate) const SATURATION_CONNECTIONS: usize = 32;
/// Keep-alive connections the fixed rate is spread over (as in `proxy`).
pub(crate) const RATE_CONNECTIONS: usize = 8;

/// Runs the comparison: sidecars from `current` and from `baseline`; the control plane and
/// the app from `current`. `baseline_label` names the baseline in the table (its commit).
///
/// # Errors
/// Any process failing to start or answer, or a pair failing requests.
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

/// One build's figures over all rounds.
#[derive(Default)]
pub(crate) struct Figures {
    per_second: Vec<f64>,
    added_p50: Vec<f64>,
    added_p99: Vec<f64>,
}

/// The median of `v` (NaN when empty).
pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// (max − min) / median, as a percentage.
fn spread(v: &[f64]) -> f64 {
    let max = v.iter().copied().fold(f64::MIN, f64::max);
    let min = v.iter().copied().fold(f64::MAX, f64::min);
    (max - min) / median(v).abs().max(1e-12) * 100.0
}

/// p50 and p99 (µs) of `call` on `target` at `sizes.rate`, over [`RATE_CONNECTIONS`].
///
/// # Errors
/// Any failed request, or no answer at all.
pub(crate) async fn latency(
    target: Endpoint,
    call: &Call,
    sizes: Sizes,
) -> anyhow::Result<[f64; 2]> {
    let secs = Duration::from_secs_f64(sizes.seconds);
    let (samples, errors) =
        load::fixed_rate(target.clone(), call, RATE_CONNECTIONS, sizes.rate, secs).await?;
    if samples.is_empty() || errors > 0 {
        bail!(
            "{target}: {} answers and {errors} errors at {} req/s",
            samples.len(),
            sizes.rate
        );
    }
    Ok([
        quantile(&samples, 0.50).as_secs_f64() * 1e6,
        quantile(&samples, 0.99).as_secs_f64() * 1e6,
    ])
}

async fn run_async(
    current: &Path,
    baseline: &Path,
    baseline_label: &str,
    sizes: Sizes,
    rounds: usize,
) -> anyhow::Result<Table> {
    let baseline = baseline
        .canonicalize()
        .with_context(|| format!("no baseline agentmesh binary at {}", baseline.display()))?;
    let mut plane = ControlPlane::start(current).await?;
    register(&mut plane).await?;
    let (app, _app) = start_app(&plane)?;
    let pairs: [MeshPair; 2] = [
        start_pair(
            &plane,
            SidecarCommand::agentmesh(&plane.lay.bin),
            app,
            "current-",
        )
        .await?,
        start_pair(
            &plane,
            SidecarCommand::agentmesh(&baseline),
            app,
            "baseline-",
        )
        .await?,
    ];
    let mut table = compare_pairs(
        &pairs,
        app,
        sizes,
        rounds,
        format!("proxy-ab: the agentmesh proxy pair, this build vs {baseline_label}, same run"),
    )
    .await?;
    table.note(format!(
        "Peer: the same pair run from the baseline build ({baseline_label}), started next to this \
         build's pair against one app and one control plane (this build's server and node). \
         {rounds} rounds of {} s each, alternating which build goes first; each round measures \
         saturation ({SATURATION_CONNECTIONS} connections) and then latency at a fixed rate \
         ({RATE_CONNECTIONS} connections), with the app called directly in the same round, so \
         added = pair − direct of that round. Spread = (max − min) / median over one build's \
         rounds: a ratio whose distance from 1.00× is within both spreads is noise.",
        sizes.seconds
    ));
    Ok(table)
}

/// The A/B table of two pairs in front of `app`: throughput and added latency measured by
/// [`alternate`], then each sidecar's RSS after the load; the caller adds its note.
///
/// # Errors
/// A pair failing requests, or a sidecar gone before its memory is read.
pub(crate) async fn compare_pairs(
    pairs: &[MeshPair; 2],
    app: std::net::SocketAddr,
    sizes: Sizes,
    rounds: usize,
    title: String,
) -> anyhow::Result<Table> {
    let figures = alternate(
        [pairs[0].client.into(), pairs[1].client.into()],
        app.into(),
        &Call::get_ok(),
        sizes,
        rounds,
    )
    .await?;
    let after: Vec<_> = pairs
        .iter()
        .flat_map(|p| p.pids)
        .map(memory)
        .collect::<Result<_, _>>()?;
    let mut table = Table::new(title);
    ab_rows(&mut table, &figures, sizes, rounds);
    for (i, side) in ["client", "server"].into_iter().enumerate() {
        table.row(
            format!("RSS of the {side} sidecar after the load (VmRSS)"),
            mib(after[i].rss),
            mib(after[2 + i].rss),
            ratio(after[i].rss, after[2 + i].rss),
            "",
        );
    }
    Ok(table)
}

/// Measures two builds' targets `rounds` times, alternating which goes first: saturation
/// throughput, then latency at `sizes.rate` with `direct` (what both stand in front of)
/// measured in the same round, so each added latency is against its own round's direct one.
///
/// # Errors
/// A target failing requests.
pub(crate) async fn alternate(
    targets: [Endpoint; 2],
    direct: Endpoint,
    call: &Call,
    sizes: Sizes,
    rounds: usize,
) -> anyhow::Result<[Figures; 2]> {
    let secs = Duration::from_secs_f64(sizes.seconds);
    let mut figures = [Figures::default(), Figures::default()];
    for round in 0..rounds {
        // Alternate which build goes first, so a slow start of a round is shared.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let t = load::saturate(targets[i].clone(), call, SATURATION_CONNECTIONS, secs).await?;
            if t.errors > 0 {
                bail!("{} errors at saturation", t.errors);
            }
            figures[i].per_second.push(t.per_second);
        }
        let base = latency(direct.clone(), call, sizes).await?;
        for i in order {
            let through = latency(targets[i].clone(), call, sizes).await?;
            figures[i].added_p50.push(through[0] - base[0]);
            figures[i].added_p99.push(through[1] - base[1]);
        }
    }
    Ok(figures)
}

/// The throughput and added-latency rows of an A/B table: each build's median with its
/// spread, and the ratio of the medians.
pub(crate) fn ab_rows(table: &mut Table, figures: &[Figures; 2], sizes: Sizes, rounds: usize) {
    let us = |v: f64| micros(Duration::from_secs_f64(v.max(0.0) / 1e6));
    let with_spread = |v: &[f64], show: &dyn Fn(f64) -> String| {
        format!("{} (spread {:.0} %)", show(median(v)), spread(v))
    };
    let [now, base] = figures;
    table.row(
        format!("requests/s at saturation, {SATURATION_CONNECTIONS} keep-alive connections, median of {rounds}"),
        with_spread(&now.per_second, &count),
        with_spread(&base.per_second, &count),
        ratio(median(&now.per_second), median(&base.per_second)),
        "",
    );
    for (name, now, base) in [
        ("p50", &now.added_p50, &base.added_p50),
        ("p99", &now.added_p99, &base.added_p99),
    ] {
        table.row(
            format!(
                "added latency {name} at {} req/s, median of {rounds}",
                count(sizes.rate)
            ),
            with_spread(now, &us),
            with_spread(base, &us),
            ratio(median(now), median(base)),
            "",
        );
    }
}
