//! The test mesh shared by the process-level tests: a real `agentmesh server run` and
//! `agentmesh node run` on 127.0.0.1 with temporary data dirs, the Python peers, and launcher
//! registration of child processes. Included with `#[path]` so it is not a test crate itself.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use agentmesh_proto::v1::RegisterLaunchRequest;
use agentmesh_proto::v1::node_admin_client::NodeAdminClient;

pub const BIN: &str = env!("CARGO_BIN_EXE_agentmesh");
pub const TD: &str = "agentmesh.local";
/// Short enough that a rotation (at ½ TTL ± 10%) happens within a test.
pub const SHORT_TTL: Duration = Duration::from_secs(10);
/// How long anything that should happen "soon" may take before the test gives up. Generous:
/// CI machines are shared and slow, and this is a hang guard, not a performance claim.
pub const PATIENCE: Duration = Duration::from_secs(60);

// === peers ===

/// The Python with py-spiffe and spiffe-tls installed.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("AGENTMESH_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/venv/bin/python");
    assert!(
        venv.exists(),
        "py-spiffe is missing: neither $AGENTMESH_TEST_PYTHON nor {} exists; run the suite \
         through scripts/test, which installs spiffe and spiffe-tls into .cache/venv",
        venv.display()
    );
    venv
}

pub fn workload_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/workload.py")
}

// === processes ===

/// Kills and reaps a spawned process when dropped, however the test ends.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn kill_9(mut self) {
        // Child::kill is SIGKILL: no shutdown path runs.
        self.0.kill().expect("kill -9");
        self.0.wait().expect("reap");
    }
}

/// This test process's effective uid, for `unix:uid:` selectors that match it.
pub fn my_uid() -> String {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    line.split_whitespace().nth(2).expect("euid").to_owned()
}

/// A free loopback port, never one this test process was handed before: the kernel may give
/// `bind(0)` the same port again once the probe is closed, and two listeners of one config
/// must not collide.
pub fn free_port() -> u16 {
    static ISSUED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut issued = ISSUED.lock().unwrap_or_else(|e| e.into_inner());
        if !issued.contains(&port) {
            issued.push(port);
            return port;
        }
    }
}

/// A server and a node, as processes, plus the paths a user would export.
pub struct Mesh {
    pub _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub port: u16,
    pub server: Option<Proc>,
    pub node: Option<Proc>,
    /// Every join token handed out, so the secrets test can look for them.
    pub tokens: Vec<String>,
    /// Extra `server run` arguments (such as `--config FILE`).
    pub server_args: Vec<std::ffi::OsString>,
    /// Extra `node run` arguments (such as `--trust-domain TD`).
    pub node_args: Vec<std::ffi::OsString>,
}

pub fn wait_for_socket(path: &Path, what: &str, proc: &mut Proc, log: &Path) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(Some(status)) = proc.0.try_wait() {
            panic!(
                "{what} exited with {status} before serving; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if UnixStream::connect(path).is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not serve {} in time; its log:\n{}",
            path.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Mesh {
    pub fn start() -> Self {
        Self::start_in(tempfile::tempdir().expect("tempdir"), Vec::new())
    }

    /// A mesh in `tmp` whose server gets `server_args` too.
    pub fn start_in(tmp: tempfile::TempDir, server_args: Vec<std::ffi::OsString>) -> Self {
        let dir = tmp.path().to_owned();
        let mut mesh = Self {
            _tmp: tmp,
            dir,
            port: free_port(),
            server: None,
            node: None,
            tokens: Vec::new(),
            node_args: if server_args.is_empty() {
                Vec::new()
            } else {
                // A server with an upstream CA publishes a root without a SPIFFE ID.
                vec!["--trust-domain".into(), TD.into()]
            },
            server_args,
        };
        mesh.start_server();
        let token = mesh.token();
        let bundle = mesh.cli_ok(&["bundle", "show"]);
        std::fs::write(mesh.dir.join("bundle.pem"), bundle).expect("write bundle");
        mesh.start_node(Some(&token));
        mesh
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("node.sock")
    }
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }
    pub fn node_admin_socket(&self) -> PathBuf {
        self.dir.join("node-admin.sock")
    }
    pub fn server_log(&self) -> PathBuf {
        self.dir.join("server.log")
    }
    pub fn node_log(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env("AGENTMESH_ADMIN_SOCKET", self.admin_socket())
            .env("SPIFFE_ENDPOINT_SOCKET", self.endpoint())
            .env_remove("AGENTMESH_JOIN_TOKEN")
            // Debug logging everywhere, so the secrets test sees the most that is ever logged.
            .env("AGENTMESH_LOG", "debug")
            .stdin(Stdio::null());
        cmd
    }

    /// Appends, so a restarted process's log follows the first one's.
    pub fn log_file(path: &Path) -> File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open log")
    }

    pub fn start_server(&mut self) {
        let child = self
            .command()
            .args(["server", "run", "--data-dir"])
            .arg(self.dir.join("server"))
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(&self.server_args)
            .stdout(Stdio::null())
            .stderr(Self::log_file(&self.server_log()))
            .spawn()
            .expect("spawn agentmesh server run");
        let mut proc = Proc(child);
        wait_for_socket(
            &self.admin_socket(),
            "the server",
            &mut proc,
            &self.server_log(),
        );
        self.server = Some(proc);
    }

    pub fn start_node(&mut self, token: Option<&str>) {
        let mut cmd = self.command();
        cmd.args([
            "node",
            "run",
            "--server",
            &format!("127.0.0.1:{}", self.port),
        ])
        .arg("--socket")
        .arg(self.socket())
        .arg("--trust-bundle")
        .arg(self.dir.join("bundle.pem"))
        .arg("--data-dir")
        .arg(self.dir.join("node"))
        .arg("--admin-socket")
        .arg(self.node_admin_socket())
        .args(&self.node_args)
        .stdout(Stdio::null())
        .stderr(Self::log_file(&self.node_log()));
        if let Some(t) = token {
            cmd.env("AGENTMESH_JOIN_TOKEN", t);
        }
        let mut proc = Proc(cmd.spawn().expect("spawn agentmesh node run"));
        wait_for_socket(&self.socket(), "the node", &mut proc, &self.node_log());
        self.node = Some(proc);
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run agentmesh")
    }

    #[track_caller]
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "agentmesh {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    pub fn token(&mut self) -> String {
        let t = self.cli_ok(&["token", "generate"]).trim().to_owned();
        self.tokens.push(t.clone());
        t
    }

    pub fn entry(&self, path: &str, selectors: &[&str], x509_ttl: Option<Duration>) -> String {
        let id = format!("spiffe://{TD}{path}");
        let mut args = vec!["entry", "create", "--spiffe-id", &id];
        for s in selectors {
            args.extend(["--selector", s]);
        }
        let ttl;
        if let Some(t) = x509_ttl {
            ttl = format!("{}s", t.as_secs());
            args.extend(["--x509-ttl", &ttl]);
        }
        self.cli_ok(&args);
        id
    }

    /// `svid fetch -o json` until the node serves this process an SVID.
    pub fn wait_for_svid(&self) -> serde_json::Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let out = self.cli(&["svid", "fetch", "-o", "json"]);
            if out.status.success() {
                return serde_json::from_slice(&out.stdout).expect("svid fetch -o json");
            }
            assert!(
                Instant::now() < deadline,
                "no SVID in time: {}\nnode log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(self.node_log()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn python(&self) -> Command {
        let mut cmd = Command::new(python());
        cmd.arg(workload_py())
            .env("SPIFFE_ENDPOINT_SOCKET", self.endpoint())
            .env("PYTHONUNBUFFERED", "1");
        cmd
    }
}

/// Field 22 of /proc/PID/stat, as the node's launcher API wants it.
pub fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/pid/stat");
    let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
    after_name
        .split_whitespace()
        .nth(19)
        .expect("field 22")
        .parse()
        .expect("a number")
}

/// Tells the node that `pid` (a child this test started) is the launcher's `service`.
pub async fn register_launch(mesh: &Mesh, pid: u32, service: &str) {
    register_launch_at(&mesh.node_admin_socket(), pid, service).await;
}

/// [`register_launch`] for the node whose admin socket is `socket`.
pub async fn register_launch_at(socket: &Path, pid: u32, service: &str) {
    let mut admin = NodeAdminClient::new(
        agentmesh_proto::unix::connect(socket)
            .await
            .expect("node admin socket"),
    );
    admin
        .register_launch(RegisterLaunchRequest {
            pid,
            start_time: start_time(pid),
            selectors: vec![format!("launcher:service:{service}")],
        })
        .await
        .expect("register the launch");
}
