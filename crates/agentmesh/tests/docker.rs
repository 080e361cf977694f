//! Docker workload attestation against a real Docker Engine (Debian's `docker.io`; see
//! `support/docker.rs`): a container gets the SPIFFE ID of the entry its labels, image and
//! environment select, as `agentmesh svid fetch` run inside it shows, and every other one is
//! refused with the reason.

#[path = "support/docker.rs"]
mod docker;
#[path = "support/mesh.rs"]
mod mesh;

use std::process::Output;
use std::time::Instant;

use docker::{Image, docker, require_engine};
use mesh::{BIN, Mesh, PATIENCE};

/// Removes every container this test started, however it ends.
struct Containers(String);

impl Drop for Containers {
    fn drop(&mut self) {
        let out = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=agentmesh.test={}", self.0),
        ]);
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = docker(&["rm", "-f", id]);
        }
    }
}

/// `agentmesh svid fetch` in a container of `image` with the node's socket mounted, and
/// `extra` `docker run` flags (labels, environment).
fn svid_fetch_in_container(mesh: &Mesh, image: &Image, run: &str, extra: &[&str]) -> Output {
    let socket = format!("{}:/run/agentmesh/node.sock", mesh.socket().display());
    let label = format!("agentmesh.test={run}");
    let mut args = vec![
        "run",
        "--rm",
        "--network",
        "none",
        "--label",
        &label,
        "-v",
        &socket,
    ];
    args.extend_from_slice(extra);
    args.extend([
        image.tag.as_str(),
        "svid",
        "fetch",
        "--socket",
        "unix:///run/agentmesh/node.sock",
    ]);
    docker(&args)
}

/// Retries until the node has synced the entries and the container gets `want`.
fn fetch_until_issued(mesh: &Mesh, image: &Image, run: &str, extra: &[&str], want: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = svid_fetch_in_container(mesh, image, run, extra);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && stdout.contains(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {want} for a container with {extra:?}: {}\nnode log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(mesh.node_log()).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

fn refused(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a refusal, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn containers_get_the_identity_their_labels_image_and_env_select_and_others_are_refused() {
    require_engine();
    let run = std::process::id().to_string();
    let _containers = Containers(run.clone());
    let image = Image::build(
        &format!("agentmesh-test-docker:{run}"),
        std::path::Path::new(BIN),
    );
    let mut mesh = Mesh::start();
    let writer = mesh.entry(
        "/ns/agents/sa/writer",
        &["docker:label:com.docker.compose.service:writer"],
        None,
    );
    // The reader's entry also pins an image this test never runs.
    let reader = mesh.entry(
        "/ns/agents/sa/reader",
        &[
            "docker:label:com.docker.compose.service:reader",
            "docker:image_id:agentmesh:other",
        ],
        None,
    );
    let vault = mesh.entry(
        "/ns/agents/sa/vault",
        &[
            "docker:label:com.docker.compose.service:vault",
            "docker:env:VAULT_ROLE=hunter2",
        ],
        None,
    );

    // The right label: the writer's SVID, inside the container.
    let writer_label = ["--label", "com.docker.compose.service=writer"];
    fetch_until_issued(&mesh, &image, &run, &writer_label, &writer);
    // Its own image and env pass too.
    fetch_until_issued(
        &mesh,
        &image,
        &run,
        &[
            "--label",
            "com.docker.compose.service=vault",
            "-e",
            "VAULT_ROLE=hunter2",
        ],
        &vault,
    );

    // No label: refused, told which kind of selector the closest entry needs, shown no ID.
    let err = refused(&svid_fetch_in_container(&mesh, &image, &run, &[]));
    assert!(err.contains("docker:label"), "{err}");
    assert!(!err.contains(&writer) && !err.contains(&reader), "{err}");

    // The reader's label, but not its image: refused, and the missing kind is named.
    let err = refused(&svid_fetch_in_container(
        &mesh,
        &image,
        &run,
        &["--label", "com.docker.compose.service=reader"],
    ));
    assert!(err.contains("docker:image_id"), "{err}");
    assert!(!err.contains(&reader), "{err}");

    // The vault's label with another value of its variable: refused; the node log names the
    // exact selector, but never an environment value.
    let err = refused(&svid_fetch_in_container(
        &mesh,
        &image,
        &run,
        &[
            "--label",
            "com.docker.compose.service=vault",
            "-e",
            "VAULT_ROLE=guess",
        ],
    ));
    assert!(err.contains("docker:env"), "{err}");
    let log = std::fs::read_to_string(mesh.node_log()).expect("node log");
    assert!(log.contains("docker:env:VAULT_ROLE=<redacted>"), "{log}");
    assert!(
        !log.contains("hunter2") && !log.contains("guess"),
        "an env value was logged"
    );
    assert!(
        log.contains("docker:image_id:agentmesh:other"),
        "the node log names the exact selector the reader's container lacked"
    );

    // The Docker Engine unreachable (a node pointed at a socket no daemon serves, so the
    // engine the other tests share keeps running): the container is refused with the reason,
    // and the node keeps serving.
    mesh.node.take().expect("node").kill_9();
    let dead = mesh.dir.join("no-docker.sock");
    mesh.node_args
        .extend(["--docker-socket".into(), dead.clone().into_os_string()]);
    mesh.start_node(None);
    let err = refused(&svid_fetch_in_container(&mesh, &image, &run, &writer_label));
    assert!(err.contains("could not be attested"), "{err}");
    assert!(err.contains(&dead.display().to_string()), "{err}");
    assert!(
        mesh.node
            .as_mut()
            .expect("node")
            .0
            .try_wait()
            .expect("wait")
            .is_none(),
        "the node exited"
    );
}

#[test]
fn the_image_runs_every_subcommand_and_the_sidecar_executable() {
    require_engine();
    let image = Image::build(
        &format!("agentmesh-test-image:{}", std::process::id()),
        std::path::Path::new(BIN),
    );
    let version = docker(&["run", "--rm", "--network", "none", &image.tag, "--version"]);
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    assert!(version.starts_with("agentmesh 0.1.0 (build "), "{version}");
    // The sidecar executable is in the image, from the same build.
    let proxy = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/agentmesh-proxy",
        &image.tag,
        "--version",
    ]);
    let proxy = String::from_utf8_lossy(&proxy.stdout).into_owned();
    assert_eq!(
        proxy.trim_start_matches("agentmesh-proxy"),
        version.trim_start_matches("agentmesh"),
        "agentmesh-proxy is from another build"
    );
    // Every long-running subcommand is there and reads its flags (each refuses a missing
    // config the same way it does on the host).
    for sub in ["server", "node", "proxy", "gateway", "frontend", "agent"] {
        let out = docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            &image.tag,
            sub,
            "run",
            "--help",
        ]);
        assert!(
            out.status.success(),
            "{sub} run --help: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        &image.tag,
        "proxy",
        "run",
        "--config",
        "/missing.toml",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("/missing.toml"),
        "{err}"
    );
}

#[test]
fn an_unknown_docker_selector_key_is_one_clear_error() {
    let mesh = Mesh::start();
    let out = mesh.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://agentmesh.local/ns/agents/sa/writer",
        "--selector",
        "docker:labels:com.docker.compose.service:writer",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("unknown key") && err.contains("label, image_id, image_config_digest, env"),
        "{err}"
    );
}
