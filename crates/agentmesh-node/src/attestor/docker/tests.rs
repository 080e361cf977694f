//! The cgroup fixtures follow the paths each runtime writes: Docker's cgroupfs driver
//! (`/docker/ID`) and systemd driver (`/system.slice/docker-ID.scope`), containerd under
//! Kubernetes (`/kubepods/…/ID` on v1, `cri-containerd-ID.scope` on v2), CRI-O and Podman.
//! Only cgroup v1 runs on this machine: its file is recorded below, and
//! `crates/agentmesh/tests/docker.rs` attests real containers through it; the v2 shapes are
//! fixtures only.

use super::*;

const ID: &str = "3f4e8c1d2b5a69788f0e1d2c3b4a5968778695a4b3c2d1e0f9e8d7c6b5a49382";
const OTHER: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// As this machine's Docker Engine 20.10 writes it (cgroup v1 with the v2 hierarchy
/// mounted too), recorded from a running container.
fn v1_cgroupfs(id: &str) -> String {
    [
        "9:name=systemd",
        "8:pids",
        "7:blkio",
        "6:freezer",
        "5:devices",
        "4:memory",
        "3:cpuset",
        "2:cpuacct",
        "1:cpu",
        "0:",
    ]
    .iter()
    .map(|h| format!("{h}:/docker/{id}\n"))
    .collect()
}

#[test]
fn docker_on_cgroup_v1_names_the_container_in_every_hierarchy() {
    assert_eq!(container_id(&v1_cgroupfs(ID)).unwrap().as_deref(), Some(ID));
}

#[test]
fn the_systemd_driver_and_cgroup_v2_name_it_in_a_scope() {
    for text in [
        format!("0::/system.slice/docker-{ID}.scope\n"),
        format!("0::/docker/{ID}\n"),
        format!(
            "4:memory:/system.slice/docker-{ID}.scope\n1:name=systemd:/system.slice/docker-{ID}.scope\n"
        ),
        format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod6d1b.slice/cri-containerd-{ID}.scope\n"
        ),
        format!("11:memory:/kubepods/besteffort/pod6d1b2c3d-aaaa-bbbb-cccc-0123456789ab/{ID}\n"),
        format!("0::/machine.slice/libpod-{ID}.scope/container\n"),
        format!("0::/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope\n"),
    ] {
        assert_eq!(container_id(&text).unwrap().as_deref(), Some(ID), "{text}");
    }
}

#[test]
fn host_processes_are_in_no_container() {
    for text in [
        "0::/user.slice/user-1000.slice/session-2.scope\n",
        "0::/init.scope\n",
        "0::/\n",
        "12:pids:/\n11:memory:/process_api/ada99208addb72a12d4773db5b180a92\n0::/\n",
        "",
        "garbage without colons\n",
        // Close to an id, but not one: 63 digits, and upper case.
        "0::/docker/3f4e8c1d2b5a69788f0e1d2c3b4a5968778695a4b3c2d1e0f9e8d7c6b5a4938\n",
        "0::/docker/3F4E8C1D2B5A69788F0E1D2C3B4A5968778695A4B3C2D1E0F9E8D7C6B5A49382\n",
    ] {
        assert_eq!(container_id(text).unwrap(), None, "{text:?}");
    }
}

#[test]
fn nested_containers_resolve_to_the_innermost_and_disagreeing_lines_are_refused() {
    let nested = format!("0::/docker/{OTHER}/docker/{ID}\n");
    assert_eq!(container_id(&nested).unwrap().as_deref(), Some(ID));
    let split = format!("11:memory:/docker/{ID}\n10:pids:/docker/{OTHER}\n");
    assert!(matches!(
        container_id(&split),
        Err(DockerError::Ambiguous(_))
    ));
}

/// Trimmed from `GET /containers/ID/json` of Docker Engine 20.10 for a Compose service.
const INSPECT: &str = r#"{
  "Id": "3f4e8c1d2b5a69788f0e1d2c3b4a5968778695a4b3c2d1e0f9e8d7c6b5a49382",
  "Image": "sha256:7b1a6ab2e44dbac178598dabe7cff59bd67233dba0b27e4fbd1f9d4b3c877a54",
  "State": {"Status": "running", "Running": true, "Pid": 4242},
  "Config": {
    "Hostname": "3f4e8c1d2b5a",
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin", "ROLE=writer", "NOEQUALS"],
    "Image": "agentmesh:dev",
    "Labels": {
      "com.docker.compose.project": "research",
      "com.docker.compose.service": "writer"
    }
  }
}"#;

#[test]
fn a_container_description_becomes_spires_selectors() {
    let inspect: Inspect = serde_json::from_str(INSPECT).unwrap();
    let got: Vec<String> = selectors_of(&inspect)
        .iter()
        .map(ToString::to_string)
        .collect();
    for want in [
        "docker:label:com.docker.compose.service:writer",
        "docker:label:com.docker.compose.project:research",
        "docker:image_id:agentmesh:dev",
        "docker:image_config_digest:sha256:7b1a6ab2e44dbac178598dabe7cff59bd67233dba0b27e4fbd1f9d4b3c877a54",
        "docker:env:ROLE=writer",
        "docker:env:PATH=/usr/local/sbin:/usr/local/bin",
    ] {
        assert!(
            got.contains(&want.to_owned()),
            "{want} missing from {got:?}"
        );
    }
    assert!(!got.iter().any(|s| s.contains("NOEQUALS")), "{got:?}");
    // Every one of them is a selector an entry may use.
    for s in &got {
        assert!(s.parse::<Selector>().is_ok(), "{s}");
    }
}

#[test]
fn a_container_without_labels_or_env_still_has_its_image() {
    let inspect: Inspect = serde_json::from_str(
        r#"{"Image":"sha256:ab","Config":{"Image":"scratch-app:1","Labels":null,"Env":null}}"#,
    )
    .unwrap();
    let got: Vec<String> = selectors_of(&inspect)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        got,
        [
            "docker:image_id:scratch-app:1",
            "docker:image_config_digest:sha256:ab"
        ]
    );
}

#[tokio::test]
async fn an_unreachable_engine_is_one_clear_error_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let docker = DockerAttestor::new(&socket);
    let err = docker.inspect(ID).await.unwrap_err();
    assert!(matches!(err, DockerError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string().contains(&socket.display().to_string()),
        "{err}"
    );
}
