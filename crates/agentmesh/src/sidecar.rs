//! Running the sidecar, from either executable, and finding `agentmesh-proxy`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use crate::Signals;

/// The environment variable naming the Workload API socket (the SPIFFE standard name).
pub const WORKLOAD_SOCKET_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

/// The file name of the sidecar-only executable, built next to `agentmesh`.
pub const PROXY_EXECUTABLE: &str = "agentmesh-proxy";

/// Which build this is: a digest of the workspace's sources and lock file, taken by the
/// build script. Both executables of one build carry the same one, so `up` can tell an
/// `agentmesh-proxy` left over from an older build (`cargo run` rebuilds only `agentmesh`)
/// from its own.
pub const BUILD_ID: &str = env!("AGENTMESH_BUILD_ID");

/// What `--version` prints after the executable's name, in both executables:
/// `0.1.0 (build 0123456789abcdef)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (build ",
    env!("AGENTMESH_BUILD_ID"),
    ")"
);

/// `proxy run` flags, the same for `agentmesh proxy run` and `agentmesh-proxy run`.
#[derive(Debug, Clone, Args)]
pub struct ProxyRunArgs {
    // clap prints this doc comment as the flag's --help, where the table names read best in
    // TOML's own brackets; rustdoc would take them for links.
    #[allow(rustdoc::broken_intra_doc_links)]
    /// The proxy.toml (service, [inbound], [[upstream]], [admin])
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// Runs the sidecar a proxy.toml describes until SIGINT, SIGTERM or (under `up`) stdin's end.
///
/// # Errors
/// A bad config, no SVID, or a listener that cannot be bound.
pub async fn run_sidecar(args: ProxyRunArgs) -> anyhow::Result<()> {
    let cfg = agentmesh_proxy::ProxyConfig::load(&args.config)?;
    let env = std::env::var(WORKLOAD_SOCKET_ENV).ok();
    let socket = cfg.workload_socket(&args.config, env.as_deref())?;
    // Before anything listens, so a bad OTEL_* variable is one error at startup.
    let telemetry = agentmesh_telemetry::init(&format!("agentmesh-proxy/{}", cfg.service))?;
    let mut signals = Signals::new()?;
    let proxy = agentmesh_proxy::start(cfg, socket.clone())
        .await
        .with_context(|| format!("proxy did not start (Workload API {})", socket.display()))?;
    let signal = signals.recv().await;
    tracing::info!(signal, "shutting down");
    proxy.shutdown().await;
    telemetry.shutdown().await;
    Ok(())
}

/// The `agentmesh-proxy` beside `exe`, if there is one and it comes from this build.
///
/// It is asked for its [`BUILD_ID`] (`agentmesh-proxy build-id`); one that does not answer
/// with ours is from another build, whose config format may differ, and is not used.
pub fn proxy_executable_beside(exe: &Path) -> Option<PathBuf> {
    let candidate = exe.with_file_name(PROXY_EXECUTABLE);
    let out = std::process::Command::new(&candidate)
        .arg("build-id")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    (out.status.success() && out.stdout.trim_ascii() == BUILD_ID.as_bytes()).then_some(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Puts an executable script named `agentmesh-proxy` that prints `build_id` beside a
    /// (never run) `agentmesh` in a fresh directory.
    fn beside(build_id: Option<&str>) -> (tempfile::TempDir, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = dir.path().join("agentmesh");
        if let Some(id) = build_id {
            let script = dir.path().join(PROXY_EXECUTABLE);
            std::fs::write(&script, format!("#!/bin/sh\necho {id}\n")).expect("script");
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        (dir, exe)
    }

    // One test, not two: a script written by one test thread while another forks can be
    // still open for writing in that child, and exec-ing it then fails with ETXTBSY.
    #[test]
    fn only_the_proxy_executable_of_this_build_is_used() {
        let (dir, exe) = beside(Some(BUILD_ID));
        assert_eq!(
            proxy_executable_beside(&exe),
            Some(dir.path().join(PROXY_EXECUTABLE))
        );
        let (_dir, exe) = beside(Some("0123456789abcdef"));
        assert_eq!(proxy_executable_beside(&exe), None, "another build's");
        let (_dir, exe) = beside(None);
        assert_eq!(proxy_executable_beside(&exe), None, "none");
    }

    #[test]
    fn the_build_id_is_a_digest_and_the_version_names_it() {
        assert_eq!(BUILD_ID.len(), 16, "{BUILD_ID}");
        assert!(
            BUILD_ID.bytes().all(|b| b.is_ascii_hexdigit()),
            "{BUILD_ID}"
        );
        assert!(
            VERSION.ends_with(&format!("(build {BUILD_ID})")),
            "{VERSION}"
        );
    }
}
