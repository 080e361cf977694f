//! The Kubernetes manifests in `deploy/kubernetes`, checked offline: no cluster can run here.
//! `kubernetes-validate` (PyPI, with the schemas of each Kubernetes release) validates every
//! object strictly against Kubernetes 1.31, and every component config the ConfigMaps carry
//! is loaded by that component's own loader. What this does not show: that the pods start
//! and talk on a real cluster (see deploy/kubernetes/README.md).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Kubernetes release the manifests are validated against.
const KUBERNETES: &str = "1.31.0";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv `scripts/test` fills (kubernetes-validate, PyYAML), found as the other peer tests
/// find their Python.
fn venv_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("AGENTMESH_TEST_PYTHON")
        .map(PathBuf::from)
        .and_then(|p| p.parent().map(Path::to_owned))
        .unwrap_or_else(|| root().join(".cache/venv/bin"));
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing; run the suite through scripts/test, which installs kubernetes-validate \
         into .cache/venv",
        bin.display()
    );
    bin
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn validate(files: &[PathBuf]) -> std::process::Output {
    Command::new(venv_bin("kubernetes-validate"))
        .args(["--strict", "--no-warn", "-k", KUBERNETES])
        .args(files)
        .output()
        .expect("run kubernetes-validate")
}

#[test]
fn every_manifest_is_valid_kubernetes_and_a_broken_one_is_not() {
    let files = manifests();
    assert!(files.len() >= 4, "{files:?}");
    let out = validate(&files);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    for kind in [
        "statefulset/agentmesh-server",
        "daemonset/agentmesh-node",
        "deployment/executor",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind}")),
            "{kind}: {text}"
        );
    }
    // The validator is strict: a field Kubernetes does not know fails the run.
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("broken.yaml");
    let node = std::fs::read_to_string(root().join("deploy/kubernetes/node.yaml")).expect("node");
    std::fs::write(
        &broken,
        node.replace("hostPID: true", "hostPID: true\n      hostPids: true"),
    )
    .expect("write");
    let out = validate(&[broken]);
    assert!(!out.status.success(), "an unknown field passed");
}

#[test]
fn every_config_in_the_configmaps_loads_with_its_components_loader() {
    let dir = tempfile::tempdir().expect("tempdir");
    // PyYAML (kubernetes-validate's own dependency) writes out each ConfigMap's files.
    let script = r#"
import sys, yaml, pathlib
out = pathlib.Path(sys.argv[1])
for path in sys.argv[2:]:
    for doc in yaml.safe_load_all(open(path)):
        if doc and doc.get("kind") == "ConfigMap" and doc["metadata"]["name"].endswith("-config"):
            for key, text in doc["data"].items():
                (out / (doc["metadata"]["name"] + "." + key)).write_text(text)
"#;
    let status = Command::new(venv_bin("python"))
        .args(["-c", script])
        .arg(dir.path())
        .args(manifests())
        .status()
        .expect("run python");
    assert!(status.success());
    let mut loaded = Vec::new();
    for entry in std::fs::read_dir(dir.path()).expect("configs") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_owned();
        let result = if name.ends_with(".proxy.toml") {
            agentmesh_proxy::ProxyConfig::load(&path)
                .map(drop)
                .map_err(|e| e.to_string())
        } else if name.ends_with(".agent.toml") {
            agentmesh_agents::AgentConfig::load(&path)
                .map(drop)
                .map_err(|e| e.to_string())
        } else if name.ends_with(".gateway.toml") {
            agentmesh_gateway::GatewayConfig::load(&path)
                .map(drop)
                .map_err(|e| e.to_string())
        } else if name.ends_with(".frontend.toml") {
            agentmesh_frontend::FrontendConfig::load(&path)
                .map(drop)
                .map_err(|e| e.to_string())
        } else {
            panic!("a config of no known component: {name}")
        };
        if let Err(e) = result {
            panic!("{name}: {e}");
        }
        loaded.push(name);
    }
    loaded.sort();
    assert_eq!(
        loaded,
        [
            "executor-config.agent.toml",
            "executor-config.proxy.toml",
            "frontend-config.frontend.toml",
            "frontend-config.proxy.toml",
            "gateway-config.gateway.toml",
            "gateway-config.proxy.toml",
            "planner-config.agent.toml",
            "planner-config.proxy.toml",
        ]
    );
}
