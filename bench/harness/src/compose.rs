//! `compose`: the memory of each scenario's whole mesh under Docker Compose
//! (`deploy/compose/`), summed over its containers, against the same scenario under
//! `agentmesh up` in the same run, both with the release binaries.
//!
//! Both are read the same way: the VmRSS of every process of the mesh, once it has answered a
//! question (`up`'s self-check; one `agentmesh ask --url` for Compose) and settled. Under
//! Compose that is one process per container; under `up` it is `up` itself, the server, the
//! node and every app and sidecar. The Compose mesh has no supervisor, and each app and its
//! sidecar fetch their SVIDs as two containers rather than two child processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::report::{Table, mib, ratio};
use crate::scale::{SETTLE, free_port, memory};
use crate::startup::{SCENARIOS, one_up};

/// How long a Compose project may take to answer its first question.
const ANSWER_PATIENCE: Duration = Duration::from_secs(300);

/// Runs the benchmark with the release binary `agentmesh` (and the `agentmesh-proxy` beside
/// it), built into an image by `scripts/image`.
///
/// # Errors
/// No Docker Engine or docker-compose, an image that cannot be built, or a mesh that does not
/// answer.
pub fn run(agentmesh: &Path) -> anyhow::Result<Table> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tag = format!("agentmesh-bench-compose:{}", std::process::id());
    let out = Command::new(root.join("scripts/image"))
        .arg("--binary")
        .arg(agentmesh)
        .args(["--tag", &tag])
        .output()
        .context("running scripts/image")?;
    if !out.status.success() {
        bail!("scripts/image: {}", String::from_utf8_lossy(&out.stderr));
    }
    let _image = RemoveImage(tag.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;

    let mut table =
        Table::new("compose: the whole mesh's memory, Docker Compose vs `agentmesh up`");
    for scenario in SCENARIOS {
        let (containers, compose_rss) = compose_mesh(&root, agentmesh, &tag, scenario)?;
        let up = rt.block_on(one_up(agentmesh, scenario))?;
        table.row(
            format!(
                "{scenario}: RSS of the mesh (Compose: {containers} containers; up: {} processes)",
                up.processes
            ),
            mib(compose_rss),
            mib(up.rss),
            ratio(compose_rss, up.rss),
            "report",
        );
    }
    table.note(
        "agentmesh = the scenario's deploy/compose project (server, node, every app and sidecar \
         container); peer = the same scenario under `agentmesh up` (up itself, server, node, apps, \
         sidecars). VmRSS summed over the mesh's processes after its first answer.",
    );
    Ok(table)
}

struct RemoveImage(String);

impl Drop for RemoveImage {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

/// One Compose project, taken down with its volumes when dropped.
struct Project {
    name: String,
    file: PathBuf,
    image: String,
    port: u16,
}

impl Project {
    fn compose(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Command::new("docker-compose")
            .arg("-p")
            .arg(&self.name)
            .arg("-f")
            .arg(&self.file)
            .args(args)
            .env("AGENTMESH_IMAGE", &self.image)
            .env("AGENTMESH_PORT", self.port.to_string())
            .stdin(Stdio::null())
            .output()
            .context("running docker-compose (scripts/test installs Debian's docker-compose)")
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "--remove-orphans", "--timeout", "5"]);
    }
}

/// Brings the scenario's project up, asks until it answers, and sums its containers' RSS.
fn compose_mesh(
    root: &Path,
    agentmesh: &Path,
    image: &str,
    scenario: &str,
) -> anyhow::Result<(usize, f64)> {
    let p = Project {
        name: format!("ambench{}{}", std::process::id(), scenario.replace('-', "")),
        file: root
            .join("deploy/compose")
            .join(scenario)
            .join("docker-compose.yml"),
        image: image.to_owned(),
        port: free_port()?,
    };
    let out = p.compose(&["up", "-d"])?;
    if !out.status.success() {
        bail!(
            "docker-compose up ({scenario}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let deadline = Instant::now() + ANSWER_PATIENCE;
    loop {
        let out = Command::new(agentmesh)
            .args([
                "ask",
                "--url",
                &format!("http://127.0.0.1:{}", p.port),
                "a question",
            ])
            .stdin(Stdio::null())
            .output()
            .context("running agentmesh ask")?;
        if out.status.success() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{scenario} under Compose did not answer: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(SETTLE);
    let ids = p.compose(&["ps", "-q"])?;
    let mut containers = 0;
    let mut rss = 0.0;
    for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
        let out = Command::new("docker")
            .args(["inspect", "-f", "{{.State.Pid}}", id])
            .output()
            .context("running docker inspect")?;
        let pid: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .with_context(|| format!("the pid of container {id}"))?;
        rss += memory(pid)
            .with_context(|| format!("the memory of container {id} (pid {pid})"))?
            .rss;
        containers += 1;
    }
    Ok((containers, rss))
}
