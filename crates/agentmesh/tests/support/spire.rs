//! A real SPIRE server and agent (v1.13.3, built by `scripts/test` from the Go module proxy
//! into `.cache/go/bin`; `$AGENTMESH_TEST_SPIRE_BIN` names another directory), on loopback in
//! a temporary directory: sqlite datastore, in-memory keys, join-token node attestation and
//! the unix workload attestor, as SPIRE's quickstart has them. Both are killed on drop.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::mesh::{PATIENCE, Proc, free_port};

/// The trust domain of the SPIRE deployments in tests (the same as agentmesh's default, so
/// configs carry over).
pub const SPIRE_TD: &str = "agentmesh.local";

/// Where `spire-server` and `spire-agent` are, or a failure naming what is missing.
pub fn spire_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("AGENTMESH_TEST_SPIRE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/go/bin"));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{name} is missing at {}; scripts/test builds SPIRE v1.13.3 from the Go module proxy, \
         or set AGENTMESH_TEST_SPIRE_BIN",
        path.display()
    );
    path
}

/// A running SPIRE server and one agent attested with a join token, whose alias is
/// `spiffe://agentmesh.local/host`.
pub struct Spire {
    pub dir: tempfile::TempDir,
    server: Option<Proc>,
    agent: Option<Proc>,
}

impl Spire {
    /// Starts the server, then the agent, and waits until the agent serves its Workload API.
    pub fn start() -> Self {
        let (mut spire, port) = Self::start_server(SPIRE_TD, "", "INFO");
        let bundle = spire.server_ok(&["bundle", "show"]);
        std::fs::write(spire.dir.path().join("bundle.pem"), bundle).expect("bundle.pem");
        let token = spire.server_ok(&[
            "token",
            "generate",
            "-spiffeID",
            &format!("spiffe://{SPIRE_TD}/host"),
        ]);
        let token = token
            .split_whitespace()
            .nth(1)
            .expect("`Token: …`")
            .to_owned();
        let d = spire.dir.path();
        std::fs::write(
            d.join("agent.conf"),
            format!(
                r#"agent {{
  data_dir = "{data}"
  log_level = "INFO"
  server_address = "127.0.0.1"
  server_port = "{port}"
  socket_path = "{sock}"
  trust_bundle_path = "{bundle}"
  trust_domain = "{SPIRE_TD}"
}}
plugins {{
  NodeAttestor "join_token" {{ plugin_data {{}} }}
  KeyManager "memory" {{ plugin_data {{}} }}
  WorkloadAttestor "unix" {{ plugin_data {{}} }}
}}
"#,
                data = d.join("agent-data").display(),
                sock = d.join("agent.sock").display(),
                bundle = d.join("bundle.pem").display(),
            ),
        )
        .expect("agent.conf");
        let agent = Command::new(spire_bin("spire-agent"))
            .args(["run", "-config"])
            .arg(d.join("agent.conf"))
            .args(["-joinToken", &token])
            .stdin(Stdio::null())
            .stdout(log(d, "agent.log"))
            .stderr(log(d, "agent.log"))
            .spawn()
            .expect("spawn spire-agent");
        spire.agent = Some(Proc(agent));
        spire.wait("the SPIRE agent", || {
            Command::new(spire_bin("spire-agent"))
                .args(["healthcheck", "-socketPath"])
                .arg(spire.socket())
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success())
        });
        spire
    }

    /// A SPIRE server alone (no agent) of trust domain `trust_domain`, with `server_block`
    /// (say, a `federation { … }` block) added inside its `server { … }`.
    pub fn server_only(trust_domain: &str, server_block: &str) -> Self {
        Self::start_server(trust_domain, server_block, "DEBUG").0
    }

    /// A SPIRE server of `trust_domain` (with `server_block` inside `server { … }`), once it
    /// answers its health check, and the port it serves agents on.
    fn start_server(trust_domain: &str, server_block: &str, log_level: &str) -> (Self, u16) {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let port = free_port();
        std::fs::write(
            d.join("server.conf"),
            format!(
                r#"server {{
  bind_address = "127.0.0.1"
  bind_port = "{port}"
  socket_path = "{sock}"
  trust_domain = "{trust_domain}"
  data_dir = "{data}"
  log_level = "{log_level}"
{server_block}
}}
plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "sqlite3"
      connection_string = "{data}/datastore.sqlite3"
    }}
  }}
  KeyManager "memory" {{ plugin_data {{}} }}
  NodeAttestor "join_token" {{ plugin_data {{}} }}
}}
"#,
                sock = d.join("server.sock").display(),
                data = d.join("server-data").display(),
            ),
        )
        .expect("server.conf");
        let mut spire = Self {
            server: None,
            agent: None,
            dir,
        };
        let server = Command::new(spire_bin("spire-server"))
            .args(["run", "-config"])
            .arg(spire.dir.path().join("server.conf"))
            .stdin(Stdio::null())
            .stdout(log(spire.dir.path(), "server.log"))
            .stderr(log(spire.dir.path(), "server.log"))
            .spawn()
            .expect("spawn spire-server");
        spire.server = Some(Proc(server));
        spire.wait("the SPIRE server", || {
            spire.server_cmd(&["healthcheck"]).status.success()
        });
        (spire, port)
    }

    /// The server's log so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The agent's Workload API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// `spire-server ARGS -socketPath …`.
    pub fn server_cmd(&self, args: &[&str]) -> Output {
        Command::new(spire_bin("spire-server"))
            .args(args)
            .arg("-socketPath")
            .arg(self.dir.path().join("server.sock"))
            .stdin(Stdio::null())
            .output()
            .expect("run spire-server")
    }

    /// As [`Spire::server_cmd`], failing the test unless it succeeds; its stdout.
    pub fn server_ok(&self, args: &[&str]) -> String {
        let out = self.server_cmd(args);
        assert!(
            out.status.success(),
            "spire-server {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `spire-server entry create` under the agent's alias, as an operator would type it.
    pub fn entry(&self, spiffe_id: &str, selectors: &[&str], x509_ttl: Option<Duration>) {
        let parent = format!("spiffe://{SPIRE_TD}/host");
        let mut args = vec![
            "entry",
            "create",
            "-parentID",
            &parent,
            "-spiffeID",
            spiffe_id,
        ];
        for s in selectors {
            args.extend(["-selector", s]);
        }
        let ttl;
        if let Some(t) = x509_ttl {
            ttl = t.as_secs().to_string();
            args.extend(["-x509SVIDTTL", &ttl]);
        }
        self.server_ok(&args);
    }

    fn wait(&self, what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !ready() {
            assert!(
                Instant::now() < deadline,
                "{what} did not become ready; logs:\n{}\n{}",
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default(),
                std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The agent's log so far.
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

fn log(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .expect("log file")
}
