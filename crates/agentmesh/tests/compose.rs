//! The Compose deployments in `deploy/compose/`, brought up as users bring them up: Debian's
//! `docker-compose` (1.29) against a real Docker Engine (see `support/docker.rs`), on an image
//! `scripts/image` builds from the binaries under test. For each scenario, `agentmesh ask
//! --url` gets an answer through every hop with every agent's signature verified, the
//! scenario's refused call is refused by the intentions from inside the calling container's
//! network namespace, a container with a label no entry names gets no identity and the node
//! logs why, and `docker-compose down -v` leaves no container, network or volume behind.

#[path = "support/docker.rs"]
mod docker;
#[path = "support/mesh.rs"]
mod mesh;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use docker::{Image, docker, require_engine};
use mesh::{BIN, PATIENCE, free_port};
use serde_json::Value;

/// Fails the test, naming what is missing, unless `docker-compose` runs.
fn require_compose() {
    match Command::new("docker-compose").arg("version").output() {
        Ok(out) if out.status.success() => {}
        other => panic!(
            "docker-compose does not run ({other:?}); run the suite through scripts/test, which \
             installs Debian's docker-compose"
        ),
    }
}

/// One scenario's Compose project, taken down with its volumes however the test ends.
struct Project {
    name: String,
    file: PathBuf,
    port: u16,
    image: String,
}

impl Project {
    fn compose(&self, args: &[&str]) -> Output {
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
            .expect("run docker-compose")
    }

    fn up(scenario: &str, image: &Image) -> Self {
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/compose")
            .join(scenario)
            .join("docker-compose.yml");
        let p = Self {
            // Any project name works: the entries select on the service label only.
            name: format!("amtest{}{}", std::process::id(), scenario.replace('-', "")),
            file,
            port: free_port(),
            image: image.tag.clone(),
        };
        let out = p.compose(&["up", "-d"]);
        assert!(
            out.status.success(),
            "docker-compose up ({scenario}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        p
    }

    fn logs(&self, service: &str) -> String {
        let out = self.compose(&["logs", "--no-color", service]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The host pid of a service's container, for entering its network namespace.
    fn pid(&self, service: &str) -> String {
        let container = format!("{}_{service}_1", self.name);
        let out = docker(&["inspect", "-f", "{{.State.Pid}}", &container]);
        assert!(out.status.success(), "no container {container}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// What Docker still holds of the project: containers, networks, volumes.
    fn leftovers(&self) -> String {
        let filter = format!("label=com.docker.compose.project={}", self.name);
        let mut left = String::new();
        for kind in [
            &["ps", "-aq", "--filter", &filter][..],
            &["network", "ls", "-q", "--filter", &filter],
            &["volume", "ls", "-q", "--filter", &filter],
        ] {
            left.push_str(&String::from_utf8_lossy(&docker(kind).stdout));
        }
        left.trim().to_owned()
    }

    fn down(&self) -> Output {
        self.compose(&["down", "-v", "--remove-orphans", "--timeout", "5"])
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.down();
    }
}

/// `agentmesh ask --url … -o json` until the mesh answers (its containers start in any
/// order and retry until they have their identities).
fn ask_until_answered(p: &Project, question: &str) -> Value {
    let deadline = Instant::now() + PATIENCE * 3;
    loop {
        let out = Command::new(BIN)
            .args(["ask", "--url", &format!("http://127.0.0.1:{}", p.port)])
            .args(["-o", "json", question])
            .stdin(Stdio::null())
            .output()
            .expect("run agentmesh ask");
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).expect("ask -o json prints JSON");
        }
        assert!(
            Instant::now() < deadline,
            "no answer from {}: {}\n{}",
            p.name,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&p.compose(&["logs", "--no-color", "--tail", "20"]).stdout)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A POST from inside `service`'s network namespace (as its app would make it), with curl.
/// `unix_as` makes it on a Unix socket inside the container, as that uid.
fn post_inside(
    p: &Project,
    service: &str,
    target: &str,
    unix_as: Option<u32>,
    path: &str,
) -> Value {
    let pid = p.pid(service);
    let body = r#"{"model":"agentmesh-default","messages":[{"role":"user","content":"probe"}],"question":"probe"}"#;
    let mut cmd = match unix_as {
        None => {
            let mut c = Command::new("nsenter");
            c.args(["-t", &pid, "-n", "curl"]);
            c.arg(format!("http://{target}{path}"));
            c
        }
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .args(["--clear-groups", "curl", "--unix-socket"])
                .arg(format!("/proc/{pid}/root{target}"))
                .arg(format!("http://localhost{path}"));
            c
        }
    };
    let out = cmd
        .args([
            "-sS",
            "-m",
            "60",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            body,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl in {service}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "not JSON from {target}{path}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// One scenario, end to end.
fn scenario(
    image: &Image,
    name: &str,
    question: &str,
    agents: &[&str],
    refused: (&str, &str, Option<u32>, &str),
) {
    let p = Project::up(name, image);

    // An answer through every hop, every agent's signature checked by the frontend.
    let answer = ask_until_answered(&p, question);
    let handled: Vec<&str> = answer["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for a in agents {
        assert!(
            handled.contains(a),
            "{name}: {a} did not handle it: {answer}"
        );
    }
    let verified = answer["verified"].as_array().expect("verified");
    let signers = handled.iter().filter(|a| **a != "gateway").count();
    assert_eq!(
        verified.len(),
        signers,
        "{name}: one signature per agent: {answer}"
    );
    for v in verified {
        assert_eq!(v["ok"], true, "{name}: a signature did not verify: {v}");
    }

    // The scenario's refused call, made where its source runs.
    let (source, target, unix_as, path) = refused;
    let refusal = post_inside(&p, source, target, unix_as, path);
    assert_eq!(
        refusal["error"], "denied by intentions",
        "{name}: {refusal}"
    );
    assert!(
        refusal["source"]
            .as_str()
            .unwrap_or_default()
            .ends_with(source)
            && refusal["destination"]
                .as_str()
                .unwrap_or_default()
                .ends_with("/gateway"),
        "{name}: {refusal}"
    );

    // A container of the project whose service label no entry names: no identity, and the
    // node says why.
    let volume = format!("{}_node-socket:/run/agentmesh/node:ro", p.name);
    let project_label = format!("com.docker.compose.project={}", p.name);
    let out = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--label",
        &project_label,
        "--label",
        "com.docker.compose.service=intruder",
        "-v",
        &volume,
        &image.tag,
        "svid",
        "fetch",
        "--socket",
        "unix:///run/agentmesh/node/node.sock",
    ]);
    assert!(
        !out.status.success(),
        "{name}: the intruder got an identity"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PermissionDenied") && err.contains("docker:label"),
        "{err}"
    );
    let node_log = p.logs("node");
    assert!(
        node_log.contains("com.docker.compose.service:intruder")
            && node_log.contains("no identity issued"),
        "{name}: the node log does not say why: {node_log}"
    );

    // Down leaves nothing behind.
    let out = p.down();
    assert!(
        out.status.success(),
        "{name}: docker-compose down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        p.leftovers(),
        "",
        "{name}: docker-compose down -v left these"
    );
}

#[test]
fn every_scenario_comes_up_on_compose_answers_signed_refuses_its_denied_call_and_goes_away() {
    require_engine();
    require_compose();
    let image = Image::build(
        &format!("agentmesh-test-compose:{}", std::process::id()),
        Path::new(BIN),
    );
    scenario(
        &image,
        "planner-executor",
        "What is a SPIFFE ID?",
        &["planner", "executor", "gateway"],
        ("planner", "127.0.0.1:9002", None, "/v1/chat/completions"),
    );
    scenario(
        &image,
        "research-team",
        "What does agentmesh do?",
        &["researcher", "writer", "gateway"],
        (
            "researcher",
            "/run/app/admin.sock",
            Some(10001),
            "/probe/gateway/v1/chat/completions",
        ),
    );
    scenario(
        &image,
        "threat-pipeline",
        "Event: 40 failed logins for admin from 203.0.113.7 in 2 minutes, then one success.",
        &[
            "orchestrator",
            "classifier",
            "validator",
            "scorer",
            "gateway",
        ],
        (
            "orchestrator",
            "127.0.0.1:9004",
            None,
            "/v1/chat/completions",
        ),
    );
}
