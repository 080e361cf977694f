//! The Docker Engine for the container tests: Debian's `docker.io`, which `scripts/test`
//! installs and starts. Images are built offline, `FROM scratch`, from the `agentmesh` binary
//! under test and the shared libraries it needs (there is no registry to pull from).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
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
    /// Builds `tag` from `binary` (entrypoint `/agentmesh`) and the libraries `ldd` names.
    pub fn build(tag: &str, binary: &Path) -> Self {
        let ctx = tempfile::tempdir().expect("build context");
        let ldd = Command::new("ldd").arg(binary).output().expect("ldd");
        for lib in String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            let inside = ctx.path().join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(inside.parent().expect("lib dir")).expect("mkdir");
            std::fs::copy(lib, &inside).expect("copy a shared library");
        }
        std::fs::copy(binary, ctx.path().join("agentmesh")).expect("copy the binary");
        std::fs::write(
            ctx.path().join("Dockerfile"),
            "FROM scratch\nCOPY . /\nENTRYPOINT [\"/agentmesh\"]\n",
        )
        .expect("Dockerfile");
        let context: PathBuf = ctx.path().to_owned();
        let out = docker(&["build", "-q", "-t", tag, &context.display().to_string()]);
        assert!(
            out.status.success(),
            "docker build {tag}: {}",
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
