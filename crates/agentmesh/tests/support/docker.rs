//! The Docker Engine for the container tests: Debian's `docker.io`, which `scripts/test`
//! installs and starts. Images are built offline by `scripts/image`, `FROM scratch`, from the
//! `agentmesh` binary under test and the shared libraries it needs (there is no registry).
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Fails the test, naming what is missing, unless a Docker Engine answers.
pub fn require_engine() {
    let answer = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .output();
    match answer {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "no Docker Engine answers ({}); run the suite through scripts/test, which installs \
             docker.io and starts dockerd",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "the docker command is missing ({e}); run the suite through scripts/test, which \
             installs docker.io and starts dockerd"
        ),
    }
}

/// `docker ARGS`, its output.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run docker")
}

/// An image built for one test, removed when dropped.
pub struct Image {
    pub tag: String,
}

impl Image {
    /// Builds `tag` from `binary` with `scripts/image` (the way users build `agentmesh:dev`):
    /// `FROM scratch`, the binary and `agentmesh-proxy` beside it, their shared libraries.
    pub fn build(tag: &str, binary: &Path) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/image");
        let out = Command::new(&script)
            .arg("--binary")
            .arg(binary)
            .args(["--tag", tag])
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/image");
        assert!(
            out.status.success(),
            "scripts/image --tag {tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            tag: tag.to_owned(),
        }
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", &self.tag]);
    }
}
