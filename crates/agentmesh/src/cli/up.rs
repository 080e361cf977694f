//! `agentmesh up`: one command from a fresh clone to a working mesh. It starts the server and
//! the node, then every service of the scenario and its sidecar as child processes, vouches
//! for each child over the node's admin socket (`launcher:service:NAME`), applies the
//! scenario's intentions, prints a status table, and shows one question answered and one call
//! refused on purpose. Ctrl-C stops every child.
//!
//! The rooms, in the order [`run`] uses them: [`scenario`] (what to run), [`layout`] (where
//! in the data dir), [`plan`] (ports, identities, who calls whom), [`render`] (each
//! component's config), [`start`] (bringing it up in order), [`report`] (what is told),
//! [`self_check`] (one answer, one refusal) and [`supervise`] (children, restarts, stop).

pub mod layout;
pub mod plan;
pub mod render;
pub mod report;
pub mod scenario;
pub mod self_check;
pub mod start;
pub mod supervise;

use std::path::PathBuf;

use anyhow::{anyhow, bail};
use clap::Args;

pub use self::layout::mesh_file;
pub use self::report::MeshInfo;
pub use self::self_check::{agents_path, ask_entry};

use self::layout::{Layout, write_file};
use self::plan::{Llm, Plan};
use self::scenario::{DEFAULT_SCENARIO, Scenario};
use self::start::Mesh;
use self::supervise::Supervisor;
use super::DEFAULT_DATA_DIR;
use agentmesh::Signals;

/// `agentmesh up` flags.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// A built-in scenario (planner-executor, research-team, threat-pipeline) or a scenario file
    #[arg(long, value_name = "NAME|FILE", default_value = DEFAULT_SCENARIO)]
    pub scenario: String,
    /// Where inference comes from: offline (embedded), ollama:URL or openai:URL
    /// (key from $OPENAI_API_KEY)
    #[arg(
        long,
        value_name = "offline|ollama:URL|openai:URL",
        default_value = "offline"
    )]
    pub llm: String,
    /// The provider's model for ollama/openai [default: llama3.2 / gpt-4o-mini]
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// The mesh's data dir: the server's state, the node's, configs, logs, env
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Where every service takes its SVID: agentmesh (the node `up` starts) or
    /// spire:unix:///PATH (a running SPIRE agent's Workload API; `up` prints the
    /// `spire-server entry create` lines to run, and needs root to give each service a gid of
    /// its own for SPIRE's unix attestor)
    #[arg(
        long,
        value_name = "agentmesh|spire:unix:///PATH",
        default_value = "agentmesh"
    )]
    pub identity: String,
}

/// `--identity`: the SPIRE agent's socket, or `None` for agentmesh's own node.
fn spire_socket(identity: &str) -> anyhow::Result<Option<PathBuf>> {
    if identity == "agentmesh" {
        return Ok(None);
    }
    let Some(addr) = identity.strip_prefix("spire:") else {
        bail!("invalid --identity {identity:?}: expected agentmesh or spire:unix:///PATH");
    };
    let path = addr.strip_prefix("unix://").unwrap_or(addr);
    if !path.starts_with('/') {
        bail!(
            "invalid --identity {identity:?}: the SPIRE agent's socket must be unix:///absolute/path"
        );
    }
    Ok(Some(PathBuf::from(path)))
}

/// Runs `agentmesh up` until Ctrl-C.
///
/// # Errors
/// A bad scenario or flag, a port in use, or any part failing to start; every child started
/// so far is stopped first.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let scenario = Scenario::resolve(&args.scenario)?;
    let llm = Llm::parse(&args.llm)?;
    let mut layout = Layout::new(&args.data_dir)?;
    layout.spire_socket = spire_socket(&args.identity)?;
    if layout.spire_socket.is_some() {
        start::check_spire_preconditions(&scenario)?;
    }
    let (plan, ports) = Plan::holding_ports(&scenario, &layout)?;
    layout.create_dirs(plan.services.iter().map(|p| p.spec.name.as_str()))?;
    layout.check_not_running()?;
    write_file(&layout.pid_file, &format!("{}\n", std::process::id()))?;
    let _ = std::fs::remove_file(&layout.mesh_file);

    println!(
        "agentmesh up: scenario {} ({} services), LLM {}, data dir {}",
        scenario.name,
        plan.services.len(),
        llm.describe(),
        layout.data.display()
    );
    let mut sup = Supervisor::default();
    let mut signals = Signals::new()?;
    let mesh = Mesh {
        scenario: &scenario,
        llm: &llm,
        model: args.model.as_deref(),
        layout: &layout,
        plan: &plan,
        ports: &ports,
    };
    let started = tokio::select! {
        r = start::start_all(&mesh, &mut sup) => r,
        s = signals.recv() => Err(anyhow!("interrupted by {s} while starting")),
    };
    let intentions = match started {
        Ok(intentions) => intentions,
        Err(e) => {
            eprintln!("  stopping the {} processes started so far", sup.len());
            sup.stop_all().await;
            let _ = std::fs::remove_file(&layout.pid_file);
            return Err(e.context(format!(
                "the mesh did not start (logs in {})",
                layout.logs.display()
            )));
        }
    };

    let expiries = report::svid_expiries(&plan).await;
    println!("\n{}", report::status_table(&plan, &expiries, &intentions));
    let env = report::write_mesh_files(&layout, &scenario, &plan)?;

    println!("  SELF-CHECK");
    let (lines, ok) = self_check::run(&scenario, &plan, &intentions).await;
    print!("{lines}");
    if !ok {
        println!(
            "  the mesh is up, but the self-check failed; the logs are in {}",
            layout.logs.display()
        );
    }
    report::print_how_to_use(&layout, plan.entry(&scenario), &env, &args.data_dir);

    supervise::keep_running(&mut sup, &mut signals, &layout).await;
    sup.stop_all().await;
    let _ = std::fs::remove_file(&layout.mesh_file);
    let _ = std::fs::remove_file(&layout.pid_file);
    println!("stopped");
    Ok(())
}

#[cfg(test)]
mod identity_tests {
    use super::spire_socket;

    #[test]
    fn identity_is_agentmesh_or_a_spire_agents_absolute_socket() {
        assert_eq!(spire_socket("agentmesh").unwrap(), None);
        assert_eq!(
            spire_socket("spire:unix:///run/spire/agent.sock").unwrap(),
            Some("/run/spire/agent.sock".into())
        );
        for bad in [
            "spire",
            "spire:unix://relative.sock",
            "spire:tcp://1.2.3.4:1",
            "vault",
        ] {
            let err = spire_socket(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid --identity"), "{bad}: {err}");
        }
    }
}
