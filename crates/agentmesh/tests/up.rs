//! `agentmesh up` and `agentmesh ask` as a user runs them: `up` is a child process of the
//! test, with its own data dir; everything it starts (server, node, agents, gateway, sidecars)
//! is real. The refusal checks use each service's real SVID, fetched from the node by a
//! process the test vouches for exactly as `up` vouches for its children.

#[path = "support/mesh.rs"]
mod mesh;
#[path = "support/otlp.rs"]
mod otlp;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh::{BIN, PATIENCE, Proc, register_launch_at};
use serde_json::Value;
use std::io::Write as _;
use tokio::net::TcpStream;

/// A running `agentmesh up`.
struct Up {
    proc: Option<Proc>,
    _tmp: tempfile::TempDir,
    data: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Up {
    fn output(&self) -> String {
        format!(
            "{}{}",
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    fn mesh(&self) -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(self.data.join("mesh.json")).expect("mesh.json"),
        )
        .expect("mesh.json is JSON")
    }

    fn service(&self, name: &str) -> Value {
        self.mesh()["services"]
            .as_array()
            .expect("services")
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no service {name} in mesh.json"))
            .clone()
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .env_remove("AGENTMESH_ADMIN_SOCKET")
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .stdin(Stdio::null())
            .output()
            .expect("run agentmesh")
    }

    fn ask(&self, question: &str) -> Value {
        let data = self.data.to_str().expect("utf-8 path");
        let out = self.cli(&["ask", question, "--data-dir", data, "-o", "json"]);
        assert!(
            out.status.success(),
            "ask failed: {}\nup's output:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.output()
        );
        serde_json::from_slice(&out.stdout).expect("ask -o json")
    }

    /// Sends SIGTERM (as Ctrl-C would, to `up` alone) and waits for it to exit.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut proc = self.proc.take().expect("running");
        let pid = proc.0.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = proc.0.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "up did not stop:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Starts `agentmesh up ARGS --data-dir <tmp>` and waits until it says the mesh is up.
fn up(args: &[&str]) -> Up {
    up_with_env(args, &[])
}

/// [`up`] with extra environment for `up` (and so for its children).
fn up_with_env(args: &[&str], env: &[(&str, &str)]) -> Up {
    launch(tempfile::tempdir().expect("tempdir"), args, env)
}

impl Up {
    /// Starts `up ARGS` again on the same data dir, after [`Up::stop`].
    fn restart(self, args: &[&str]) -> Up {
        assert!(self.proc.is_none(), "stop it first");
        launch(self._tmp, args, &[])
    }
}

/// Starts `up` with its data dir (`mesh`) and output files in `tmp`.
fn launch(tmp: tempfile::TempDir, args: &[&str], env: &[(&str, &str)]) -> Up {
    let data = tmp.path().join("mesh");
    let runs = std::fs::read_dir(tmp.path()).map_or(0, Iterator::count);
    let stdout = tmp.path().join(format!("up-{runs}.out"));
    let stderr = tmp.path().join(format!("up-{runs}.err"));
    let child = Command::new(BIN)
        .arg("up")
        .args(args)
        .arg("--data-dir")
        .arg(&data)
        .env_remove("AGENTMESH_ADMIN_SOCKET")
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).expect("stdout"))
        .stderr(std::fs::File::create(&stderr).expect("stderr"))
        .spawn()
        .expect("spawn agentmesh up");
    let mut up = Up {
        proc: Some(Proc(child)),
        _tmp: tmp,
        data,
        stdout,
        stderr,
    };
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        if let Some(status) = up.proc.as_mut().expect("proc").0.try_wait().expect("wait") {
            panic!("up exited with {status}:\n{}", up.output());
        }
        if up.output().contains("Ctrl-C stops the mesh.") {
            return up;
        }
        assert!(
            Instant::now() < deadline,
            "up did not come up:\n{}",
            up.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `agentmesh up ARGS` expecting it to fail before the mesh is up; returns stderr.
fn up_fails(args: &[&str], data: &Path) -> String {
    let out = Command::new(BIN)
        .arg("up")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null())
        .output()
        .expect("run agentmesh up");
    assert!(
        !out.status.success(),
        "up should have failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every process whose command line mentions `dir`.
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(&needle) {
            found.push(format!("{}: {text}", name.to_string_lossy()));
        }
    }
    found
}

fn assert_no_strays(dir: &Path) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = processes_under(dir);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stray processes left behind: {left:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

// === real SVIDs for the refusal checks ===

/// The SVID (chain, key, bundle) of `service`, fetched over the Workload API by a child that
/// the test registers with the node as `launcher:service:<service>`, just as `up` does.
async fn svid_of(up: &Up, service: &str) -> (Vec<Vec<u8>>, Vec<u8>, Vec<Vec<u8>>) {
    let dir = up
        .data
        .parent()
        .expect("tmp")
        .join(format!("svid-{service}"));
    std::fs::create_dir_all(&dir).expect("svid dir");
    // sh waits for a line on stdin, then execs the fetch in place: same pid, same start time,
    // so the registration made in between applies to the fetch.
    let mut child = Command::new("sh")
        .args([
            "-c",
            "read go; exec \"$0\" svid fetch --write \"$1\" --timeout 30s",
            BIN,
        ])
        .arg(&dir)
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{}", up.data.join("node.sock").display()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let pid = child.id();
    register_launch_at(&up.data.join("node-admin.sock"), pid, service).await;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("release the fetcher");
    let out = child.wait_with_output().expect("svid fetch");
    assert!(
        out.status.success(),
        "svid fetch as {service} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |f: &str, label: &str| {
        let text = std::fs::read_to_string(dir.join(f)).expect(f);
        agentmesh_ca::pem_decode_all(&text, label).expect(f)
    };
    let chain = read("svid.0.pem", "CERTIFICATE");
    let key = read("svid.0.key", "PRIVATE KEY").remove(0);
    let bundle = read("bundle.0.pem", "CERTIFICATE");
    (chain, key, bundle)
}

/// POST /ask to a sidecar's mTLS listener presenting `creds`: the HTTP status, or None when
/// the connection was refused during or right after the handshake.
async fn call_as(
    addr: SocketAddr,
    creds: &(Vec<Vec<u8>>, Vec<u8>, Vec<Vec<u8>>),
) -> Option<(u16, String)> {
    call_as_with(
        addr,
        creds,
        "/ask",
        r#"{"question":"who may call whom?"}"#,
        &[],
    )
    .await
}

/// [`call_as`] with any path, JSON body and extra headers.
async fn call_as_with(
    addr: SocketAddr,
    creds: &(Vec<Vec<u8>>, Vec<u8>, Vec<Vec<u8>>),
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String)> {
    let roots: Vec<rustls::pki_types::CertificateDer<'static>> =
        creds.2.iter().map(|r| r.clone().into()).collect();
    let svid = agentmesh_tls::SvidCredentials::from_der(&creds.0, &creds.1).expect("creds");
    let mut config =
        agentmesh_tls::client_config(Some(&svid), &roots, agentmesh_tls::any_id(), &[])
            .expect("client config");
    Arc::make_mut(&mut config).alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from("sidecar").expect("name");
    let tls = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .ok()?
    .ok()?;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .ok()?;
    tokio::spawn(conn);
    let mut req = hyper::Request::post(format!("http://sidecar{path}"))
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(60), send.send_request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Brings up `scenario`, asks a question, then tries every ordered pair of services with the
/// source's real SVID: each pair the intentions do not allow is refused at the destination's
/// sidecar; each allowed pair (the control) gets through.
async fn scenario_answers_and_refuses_what_is_not_allowed(scenario: &str, want_agents: &[&str]) {
    let mut up = up(&["--scenario", scenario]);
    let out = up.output();
    assert!(
        out.contains("✓ ask"),
        "the self-check question failed:\n{out}"
    );
    assert!(
        out.contains("✓ refused on purpose"),
        "no refusal shown:\n{out}"
    );

    let answer = up.ask("Which identity does each service get?");
    let agents: Vec<&str> = answer["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(agents, want_agents, "{answer}");
    assert!(
        answer["answer"]
            .as_str()
            .is_some_and(|a| a.contains("[offline]"))
    );
    // Every agent signed, and the frontend verified each signature: in the threat pipeline,
    // the analysts' over their own findings inside the orchestrator's report.
    let verified = answer["verified"].as_array().expect("verified");
    let signers = want_agents.iter().filter(|a| **a != "gateway").count();
    assert_eq!(verified.len(), signers, "{answer}");
    assert!(verified.iter().all(|v| v["ok"] == true), "{answer}");

    let scenario_text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../examples/{scenario}.toml")),
    )
    .expect("scenario file");
    let doc: toml::Table = scenario_text.parse().expect("scenario TOML");
    let services: Vec<String> = doc["service"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| s["name"].as_str().expect("name").to_owned())
        .collect();
    let allowed: Vec<(String, String)> = doc["intention"]
        .as_array()
        .expect("intentions")
        .iter()
        .filter(|i| i["action"].as_str() == Some("allow"))
        .map(|i| {
            (
                i["source"].as_str().expect("source").to_owned(),
                i["destination"].as_str().expect("destination").to_owned(),
            )
        })
        .collect();
    let mut refused = 0;
    for src in &services {
        let creds = svid_of(&up, src).await;
        for dst in services.iter().filter(|d| *d != src) {
            let inbound: SocketAddr = up.service(dst)["inbound"]
                .as_str()
                .expect("inbound")
                .parse()
                .expect("addr");
            let result = call_as(inbound, &creds).await;
            let is_allowed = allowed.contains(&(src.clone(), dst.clone()));
            match result {
                Some((403, body)) => {
                    assert!(
                        !is_allowed,
                        "{src} → {dst} is allowed but was refused: {body}"
                    );
                    assert!(
                        body.contains("denied by intentions"),
                        "{src} → {dst}: {body}"
                    );
                    refused += 1;
                }
                None => {
                    assert!(
                        !is_allowed,
                        "{src} → {dst} is allowed but the connection failed"
                    );
                    refused += 1;
                }
                Some((status, body)) => assert!(
                    is_allowed,
                    "{src} → {dst} is not allowed, yet the sidecar let it through ({status}): {body}"
                ),
            }
        }
    }
    let n = services.len();
    assert_eq!(
        refused,
        n * (n - 1) - allowed.len(),
        "every other pair is refused"
    );

    let data = up.data.clone();
    let status = up.stop();
    assert!(
        status.success(),
        "up exited with {status}:\n{}",
        up.output()
    );
    assert_no_strays(&data);
}

// === tests ===

/// The README's first command: `up` with no flags runs planner-executor on the offline LLM,
/// prints its status and self-check, writes `env` for the CLI, and `ask` answers with the
/// trace id. SIGTERM stops every child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_the_default_scenario_and_ask_answers_with_its_trace_id() {
    let mut up = up(&[]);
    let out = up.output();
    for want in [
        "scenario planner-executor (4 services)",
        "spiffe://agentmesh.local/ns/default/sa/frontend",
        "spiffe://agentmesh.local/ns/default/sa/planner",
        "SVID EXPIRES",
        "planner → executor  allow",
        "✓ ask",
        "answered by planner → executor → gateway",
        "✓ refused on purpose: planner → gateway",
        "decided by intention",
        "planner must never reach inference directly",
        "export AGENTMESH_ADMIN_SOCKET=",
    ] {
        assert!(
            out.contains(want),
            "{want:?} missing from up's output:\n{out}"
        );
    }
    // The sidecars run from the data-plane executable built with this `agentmesh`.
    let sidecars: Vec<String> = processes_under(&up.data)
        .into_iter()
        .filter(|p| p.contains(".proxy.toml"))
        .collect();
    assert_eq!(
        sidecars.len(),
        4,
        "frontend, planner, executor, gateway: {sidecars:#?}"
    );
    let proxy_executable = format!("{} run --config", env!("CARGO_BIN_EXE_agentmesh-proxy"));
    for sidecar in &sidecars {
        assert!(sidecar.contains(&proxy_executable), "{sidecar}");
    }
    assert!(!out.contains("from another build"), "{out}");

    // `ask` in text form, as a user types it.
    let data = up.data.to_str().expect("utf-8").to_owned();
    let text = up.cli(&["ask", "What is an intention?", "--data-dir", &data]);
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("[offline]") && text.contains("What is an intention?"),
        "{text}"
    );
    assert!(
        text.contains("handled by: planner → executor → gateway"),
        "{text}"
    );
    assert!(text.contains("signed by:  planner ✓, executor ✓"), "{text}");
    let trace = text
        .lines()
        .find_map(|l| l.strip_prefix("trace id:"))
        .expect("a trace id line")
        .trim()
        .to_owned();
    assert!(
        trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()),
        "{trace}"
    );
    // The same trace id is in the sidecars' access logs: one trace across the hops.
    std::thread::sleep(Duration::from_millis(400));
    for log in ["executor.access.jsonl", "gateway.access.jsonl"] {
        let text = std::fs::read_to_string(up.data.join("logs").join(log)).expect(log);
        assert!(
            text.contains(&trace),
            "{log} has no line for trace {trace}:\n{text}"
        );
    }

    // The env file makes every other command work against this mesh.
    let env = std::fs::read_to_string(up.data.join("env")).expect("env file");
    let admin = env
        .lines()
        .find_map(|l| l.strip_prefix("export AGENTMESH_ADMIN_SOCKET="))
        .expect("admin socket line");
    let list = Command::new(BIN)
        .args(["intention", "list", "-o", "json"])
        .env("AGENTMESH_ADMIN_SOCKET", admin)
        .output()
        .expect("intention list");
    let list: Value = serde_json::from_slice(&list.stdout).expect("intention list -o json");
    assert_eq!(list["intentions"].as_array().map(Vec::len), Some(4));
    assert!(env.contains("export SPIFFE_ENDPOINT_SOCKET=unix://"));

    // A second `up` on the same data dir is refused and disturbs nothing.
    let err = up_fails(&[], &up.data);
    assert!(err.contains("a mesh is already running"), "{err}");
    assert!(up.ask("still there?")["answer"].is_string());

    let data = up.data.clone();
    let status = up.stop();
    assert!(
        status.success(),
        "up exited with {status}:\n{}",
        up.output()
    );
    assert!(up.output().contains("stopped"));
    assert_no_strays(&data);
    assert!(
        !data.join("mesh.json").exists(),
        "mesh.json outlived the mesh"
    );
    // With the mesh gone, ask says so in one line.
    let out = up.cli(&[
        "ask",
        "anyone?",
        "--data-dir",
        data.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no running mesh"));
}

/// planner-executor: planner → executor → gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planner_executor_refuses_every_pair_its_intentions_do_not_allow() {
    scenario_answers_and_refuses_what_is_not_allowed(
        "planner-executor",
        &["planner", "executor", "gateway"],
    )
    .await;
}

/// research-team: researcher → writer → gateway, with no sidecars.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn research_team_refuses_every_pair_its_intentions_do_not_allow() {
    scenario_answers_and_refuses_what_is_not_allowed(
        "research-team",
        &["researcher", "writer", "gateway"],
    )
    .await;
}

/// threat-pipeline: the orchestrator's answer combines all three analysts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_pipeline_refuses_every_pair_its_intentions_do_not_allow() {
    scenario_answers_and_refuses_what_is_not_allowed(
        "threat-pipeline",
        &[
            "orchestrator",
            "classifier",
            "gateway",
            "validator",
            "gateway",
            "scorer",
            "gateway",
        ],
    )
    .await;
}

/// Bad input to `up` gets one clear error, and nothing it started is left running: before
/// anything starts (malformed scenario, unknown --llm, a port in use) and after the server
/// and node are already up (a service whose program does not exist).
#[test]
fn bad_input_to_up_gets_one_clear_error_and_leaves_no_children() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("mesh");
    let planner_executor = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/planner-executor.toml"),
    )
    .expect("scenario");
    let write = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).expect("write scenario");
        p.to_str().expect("utf-8").to_owned()
    };
    let malformed = write("malformed.toml", "name = \"x\"\nentry = [\n");
    let bad_upstream = write(
        "bad-upstream.toml",
        &planner_executor.replace("upstreams = [\"executor\"]", "upstreams = [\"nobody\"]"),
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let port_in_use = write(
        "port.toml",
        &planner_executor.replace(
            "name = \"executor\"\nkind = \"agent\"",
            &format!("name = \"executor\"\nkind = \"agent\"\nlisten = \"{taken_addr}\""),
        ),
    );
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["--scenario", &malformed],
            format!("scenario {malformed}"),
        ),
        (
            vec!["--scenario", &bad_upstream],
            "upstream \"nobody\" is not one of the services".into(),
        ),
        (
            vec!["--scenario", "no-such-scenario"],
            "no scenario \"no-such-scenario\"".into(),
        ),
        (
            vec!["--llm", "claude:http://127.0.0.1:1"],
            "unknown scheme \"claude\"".into(),
        ),
        (
            vec!["--scenario", &port_in_use],
            format!("service executor: listen address {taken_addr} is not available"),
        ),
    ];
    for (args, want) in cases {
        let err = up_fails(&args, &data);
        assert!(err.contains(&want), "{args:?}: want {want:?} in: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
        assert_no_strays(&data);
    }

    // A failure after children exist: the server and node are stopped again.
    let missing_program = write(
        "missing.toml",
        &planner_executor.replace(
            "name = \"executor\"\nkind = \"agent\"\nrole = \"executor\"",
            "name = \"executor\"\nkind = \"process\"\nrole = \"executor\"\ncommand = [\"/nonexistent/agent\"]",
        ),
    );
    let err = up_fails(&["--scenario", &missing_program], &data);
    assert!(err.contains("cannot start executor"), "{err}");
    assert!(err.contains("stopping the"), "{err}");
    assert_no_strays(&data);
    drop(taken);
}

/// `kill -9` of `up` itself: its children see their stdin close and stop on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_stop_when_up_is_killed_with_sigkill() {
    let mut up = up(&[]);
    let data = up.data.clone();
    assert!(!processes_under(&data).is_empty());
    up.proc.take().expect("running").kill_9();
    assert_no_strays(&data);
}

/// examples/python-agent: a Flask agent with no SPIFFE code joins the planner-executor mesh
/// as the executor (`kind = "process"`); its sidecar holds its identity, and the question
/// goes planner → py-executor → gateway over mTLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_agent_joins_a_scenario_through_its_sidecar() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("examples/python-agent/scenario.toml"))
        .expect("the example's scenario");
    let app = root.join("examples/python-agent/app.py");
    let text = text.replace(
        "command = [\"python3\", \"examples/python-agent/app.py\"]",
        &format!(
            "command = [{:?}, {:?}]",
            mesh::python().display().to_string(),
            app.display().to_string()
        ),
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let scenario = tmp.path().join("python.toml");
    std::fs::write(&scenario, text).expect("write scenario");
    let mut up = up(&["--scenario", scenario.to_str().expect("utf-8")]);
    let out = up.output();
    assert!(
        out.contains("answered by planner → py-executor → gateway"),
        "{out}"
    );
    assert!(
        out.contains("✓ refused on purpose: planner → gateway"),
        "{out}"
    );

    let answer = up.ask("What does the sidecar do for a Python agent?");
    assert_eq!(
        answer["agents"],
        serde_json::json!(["planner", "py-executor", "gateway"]),
        "{answer}"
    );
    let text = answer["answer"].as_str().expect("answer");
    // The offline provider echoes what reached it: the Python agent's own role prompt.
    assert!(
        text.contains("[offline]") && text.contains("Python executor agent"),
        "{text}"
    );
    // No frontend, so no [delegation]: `up` still gives the built-in planner an [a2a]
    // workload_api, and its A2A card is signed with its own SVID (x5c in the JWS header).
    let planner_app = up.service("planner")["app"]
        .as_str()
        .expect("planner app")
        .to_owned();
    let card = http_get_text(&planner_app, "/.well-known/agent-card.json").await;
    let card: Value = serde_json::from_str(&card).unwrap_or_else(|e| panic!("{e}: {card}"));
    let header = card["signatures"][0]["protected"]
        .as_str()
        .unwrap_or_else(|| panic!("the card is not signed: {card}"));
    let header: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header)
            .expect("base64url header"),
    )
    .expect("JSON header");
    assert!(
        header["x5c"].as_array().is_some_and(|c| !c.is_empty()),
        "{header}"
    );

    // The gateway saw the Python agent's SPIFFE ID (from its sidecar), not the planner's.
    std::thread::sleep(Duration::from_millis(400));
    let audit = std::fs::read_to_string(up.data.join("logs/gateway.audit.jsonl")).expect("audit");
    assert!(
        audit.contains("spiffe://agentmesh.local/ns/default/sa/py-executor"),
        "{audit}"
    );
    let data = up.data.clone();
    assert!(up.stop().success());
    assert_no_strays(&data);
}

/// examples/mcp-tools: the executor calls tools on an MCP server written with the official
/// MCP Python SDK (`kind = "process"`), through its sidecar, and the tools' sidecar decides
/// each `tools/call` by the scenario's intention: `search` for every question, `export` only
/// for users whose user token (minted by the real frontend at its dev login) says
/// `groups: finance`, and `delete_all` for nobody. The server's own log shows that what was
/// refused never arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mcp_tools_scenario_decides_each_tool_by_intention_and_user_group() {
    let import = Command::new(mesh::python())
        .args(["-c", "import mcp.server.mcpserver, uvicorn"])
        .output()
        .expect("run python");
    assert!(
        import.status.success(),
        "{} lacks the official MCP SDK (mcp on PyPI; scripts/test installs it from \
         scripts/requirements-test.txt): {}",
        mesh::python().display(),
        String::from_utf8_lossy(&import.stderr)
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("examples/mcp-tools/scenario.toml"))
        .expect("the example's scenario");
    let server = root.join("examples/mcp-tools/server.py");
    let text = text.replace(
        "command = [\"python3\", \"examples/mcp-tools/server.py\"]",
        &format!(
            "command = [{:?}, {:?}]",
            mesh::python().display().to_string(),
            server.display().to_string()
        ),
    );
    assert!(text.contains(&server.display().to_string()), "{text}");
    let tmp = tempfile::tempdir().expect("tempdir");
    let scenario = tmp.path().join("mcp-tools.toml");
    std::fs::write(&scenario, text).expect("write scenario");
    let log = tmp.path().join("tools.jsonl");
    let mut up = up_with_env(
        &["--scenario", scenario.to_str().expect("utf-8")],
        &[("MCP_TOOLS_LOG", log.to_str().expect("utf-8"))],
    );
    let out = up.output();
    assert!(
        out.contains("answered by planner → executor → tools → gateway"),
        "{out}"
    );

    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let question = "Which books are public? Please @export them, then @delete_all.";
    for (form, user, export_allowed) in [
        ("name=alice&groups=finance", "alice", true),
        ("name=bob&groups=engineering", "bob", false),
    ] {
        let (frontend, cookie) = frontend_session(&up, form).await;
        let ask = hyper::Request::post(format!("http://{frontend}/ask"))
            .header("content-type", "application/json")
            .header("cookie", cookie)
            .body(Full::new(Bytes::from(
                serde_json::json!({ "question": question }).to_string(),
            )))
            .expect("ask request");
        let resp = client.request(ask).await.expect("POST /ask");
        assert_eq!(resp.status(), 200, "{user}");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let answer: Value = serde_json::from_slice(&body).expect("the answer is JSON");
        let tools = answer["tools"].as_array().expect("tools").clone();
        let named: Vec<&str> = tools.iter().filter_map(|t| t["tool"].as_str()).collect();
        assert_eq!(named, ["search", "export", "delete_all"], "{answer}");
        assert_eq!(
            tools[0]["ok"], true,
            "{user}: search is for everyone: {answer}"
        );
        assert_eq!(tools[1]["ok"], export_allowed, "{user}'s export: {answer}");
        assert_eq!(tools[2]["ok"], false, "{user}'s delete_all: {answer}");
        let why = tools[2]["text"].as_str().unwrap_or_default();
        assert!(
            why.contains("denied by intentions") && tools[2]["intention"].is_string(),
            "{answer}"
        );
        if !export_allowed {
            let why = tools[1]["text"].as_str().unwrap_or_default();
            assert!(why.contains("groups=finance"), "{answer}");
        }
        // The outcomes end the answer, so the agents' signatures cover them.
        let text = answer["answer"].as_str().unwrap_or_default();
        assert!(text.contains("delete_all ✗ denied by intentions"), "{text}");
        let verified = answer["verified"].as_array().expect("verified");
        assert!(
            !verified.is_empty() && verified.iter().all(|v| v["ok"] == true),
            "{answer}"
        );
    }
    // What the tools' sidecar refused never reached the MCP server.
    let ran: Vec<Value> = std::fs::read_to_string(&log)
        .expect("the MCP server's log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let count = |tool: &str| ran.iter().filter(|r| r["tool"] == tool).count();
    assert_eq!(count("export"), 1, "only alice's export ran: {ran:?}");
    assert_eq!(count("delete_all"), 0, "{ran:?}");
    assert!(count("search") >= 2, "{ran:?}");
    let data = up.data.clone();
    assert!(up.stop().success());
    assert_no_strays(&data);
}

/// One `ask` is one trace: with OTEL_EXPORTER_OTLP_ENDPOINT set for `up`, every agent, sidecar
/// and the gateway export spans that the official `opentelemetry-proto` package decodes, and
/// they form one chain frontend's sidecar → planner's sidecar → planner → planner's sidecar →
/// executor's sidecar → executor →
/// executor's sidecar → gateway's sidecar → gateway, each span the parent of the next, with
/// the callers' SPIFFE IDs on the sidecars' inbound spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ask_is_one_trace_from_the_planner_through_the_sidecars_to_the_gateway() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let receiver = otlp::Receiver::start(tmp.path());
    let endpoint = receiver.endpoint();
    let mut up = up_with_env(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            // Must not rename every child: each names itself.
            ("OTEL_SERVICE_NAME", "everyone"),
        ],
    );
    let answer = up.ask("Follow this question through the mesh.");
    let trace_id = answer["trace_id"].as_str().expect("trace id").to_owned();
    let chain = [
        ("agentmesh-proxy/frontend", "SPAN_KIND_CLIENT"),
        ("agentmesh-proxy/planner", "SPAN_KIND_SERVER"),
        ("agentmesh-agent/planner", "SPAN_KIND_SERVER"),
        ("agentmesh-agent/planner", "SPAN_KIND_CLIENT"),
        ("agentmesh-proxy/planner", "SPAN_KIND_CLIENT"),
        ("agentmesh-proxy/executor", "SPAN_KIND_SERVER"),
        ("agentmesh-agent/executor", "SPAN_KIND_SERVER"),
        ("agentmesh-agent/executor", "SPAN_KIND_CLIENT"),
        ("agentmesh-proxy/executor", "SPAN_KIND_CLIENT"),
        ("agentmesh-proxy/gateway", "SPAN_KIND_SERVER"),
        ("agentmesh-gateway", "SPAN_KIND_SERVER"),
    ];
    let trace = receiver.wait_for(&trace_id, "every hop's span", |spans| {
        chain.iter().all(|(svc, kind)| otlp::has(spans, svc, kind))
    });
    for pair in chain.windows(2) {
        let (parent, child) = (
            otlp::span(&trace, pair[0].0, pair[0].1),
            otlp::span(&trace, pair[1].0, pair[1].1),
        );
        assert_eq!(
            child["parent_span_id"], parent["span_id"],
            "{:?} should be the child of {:?}: {trace:#?}",
            pair[1], pair[0]
        );
    }
    let attrs = |svc: &str, kind: &str| otlp::span(&trace, svc, kind)["attributes"].clone();
    let id = |s: &str| format!("spiffe://agentmesh.local/ns/default/sa/{s}");
    assert_eq!(
        attrs("agentmesh-proxy/executor", "SPAN_KIND_SERVER")["spiffe.peer_id"],
        id("planner")
    );
    assert_eq!(
        attrs("agentmesh-proxy/gateway", "SPAN_KIND_SERVER")["spiffe.peer_id"],
        id("executor")
    );
    assert_eq!(
        attrs("agentmesh-proxy/gateway", "SPAN_KIND_SERVER")["agentmesh.decision"],
        "allow"
    );
    assert!(
        attrs("agentmesh-proxy/gateway", "SPAN_KIND_SERVER")["agentmesh.intention_id"].is_string(),
        "the deciding intention is on the span"
    );
    assert_eq!(
        attrs("agentmesh-gateway", "SPAN_KIND_SERVER")["gen_ai.request.model"],
        "agentmesh-default"
    );
    let data = up.data.clone();
    assert!(up.stop().success());
    assert_no_strays(&data);
}

/// The running frontend's address and a session cookie from its dev login with `form`
/// (`name=…`, and `&groups=…` for a user in groups).
async fn frontend_session(up: &Up, form: &str) -> (String, String) {
    let frontend = up.service("frontend")["app"]
        .as_str()
        .expect("app")
        .to_owned();
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let login = hyper::Request::post(format!("http://{frontend}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form.to_owned())))
        .expect("login request");
    let resp = client.request(login).await.expect("POST /login");
    let cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_owned))
        .collect::<Vec<_>>()
        .join("; ");
    assert!(
        !cookie.is_empty(),
        "dev login gave no session ({})",
        resp.status()
    );
    (frontend, cookie)
}

/// A user token from the running frontend: dev login, then `GET /token` with the session.
async fn user_token(up: &Up, name: &str) -> String {
    let (frontend, cookie) = frontend_session(up, &format!("name={name}")).await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let get = hyper::Request::get(format!("http://{frontend}/token"))
        .header("cookie", cookie)
        .body(Full::new(Bytes::new()))
        .expect("token request");
    let body = client
        .request(get)
        .await
        .expect("GET /token")
        .into_body()
        .collect()
        .await
        .expect("token body")
        .to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "GET /token is not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    v["token"].as_str().expect("token").to_owned()
}

/// The delegation chain end to end: the gateway's audit line names the user and the chain
/// frontend → planner → executor; and with the agents' real SVIDs and a real user token from
/// the frontend, the gateway refuses a chain with a hop removed, two hops swapped, a link
/// replayed from another request, or no user token at all, and accepts the intact chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delegation_chain_is_audited_and_a_broken_chain_is_refused() {
    use agentmesh_sdk::delegation::{DELEGATION_HEADER, add_link};
    let mut up = up(&[]);
    let answer = up.ask("Whose question is this?");
    std::thread::sleep(Duration::from_millis(400));
    let audit = std::fs::read_to_string(up.data.join("logs/gateway.audit.jsonl")).expect("audit");
    let last: Value = serde_json::from_str(audit.lines().last().expect("a line")).expect("JSON");
    let id = |s: &str| format!("spiffe://agentmesh.local/ns/default/sa/{s}");
    assert!(
        last["user"].as_str().is_some_and(|u| u.starts_with("dev:")),
        "{last}"
    );
    assert_eq!(
        last["chain"],
        serde_json::json!([id("frontend"), id("planner"), id("executor")]),
        "{last}"
    );

    let source = |creds: &(Vec<Vec<u8>>, Vec<u8>, Vec<Vec<u8>>)| {
        let svid = agentmesh_sdk::Svid::from_der(&creds.0, &creds.1).expect("svid");
        let roots = creds.2.iter().map(|r| r.clone().into()).collect();
        agentmesh_sdk::X509Source::from_svid(svid, roots).expect("source")
    };
    let planner_creds = svid_of(&up, "planner").await;
    let planner = source(&planner_creds);

    // Every agent signed the answer: one JWS per hop, each verified against the bundle with
    // the signer's expected SPIFFE ID, over the answer's SHA-256 and the trace id.
    let roots: Vec<rustls::pki_types::CertificateDer<'static>> =
        planner_creds.2.iter().map(|r| r.clone().into()).collect();
    let signatures = answer["signatures"].as_array().expect("signatures");
    assert_eq!(signatures.len(), 2, "{answer}");
    // The frontend checked them too, and says so with the answer.
    assert_eq!(
        answer["verified"],
        serde_json::json!([
            {"agent": id("planner"), "ok": true},
            {"agent": id("executor"), "ok": true},
        ]),
        "{answer}"
    );
    let text = answer["answer"].as_str().expect("answer");
    let digest: String = ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    for (jws, who) in signatures.iter().zip(["planner", "executor"]) {
        let expected: agentmesh_sdk::SpiffeId = id(who).parse().expect("id");
        let v = agentmesh_sdk::jws::verify(
            jws.as_str().expect("compact JWS"),
            &roots,
            &expected,
            std::time::SystemTime::now(),
        )
        .unwrap_or_else(|e| panic!("{who}'s signature: {e}"));
        let payload: Value = serde_json::from_slice(&v.payload).expect("payload JSON");
        assert_eq!(payload["agent"], id(who));
        assert_eq!(payload["answer_sha256"], digest.as_str());
        assert_eq!(payload["trace_id"], answer["trace_id"]);
        // And not as anyone else.
        let other: agentmesh_sdk::SpiffeId = id("gateway").parse().expect("id");
        assert!(
            agentmesh_sdk::jws::verify(
                jws.as_str().expect("jws"),
                &roots,
                &other,
                std::time::SystemTime::now()
            )
            .is_err()
        );
    }
    let executor_creds = svid_of(&up, "executor").await;
    let executor = source(&executor_creds);
    let token = user_token(&up, "alice").await;
    let other_token = user_token(&up, "bob").await;
    let sid = |s: &str| -> agentmesh_sdk::SpiffeId { id(s).parse().expect("id") };
    let link_p = add_link(&planner, &token, "", &sid("executor")).expect("planner's link");
    let both = add_link(&executor, &token, &link_p, &sid("gateway")).expect("executor's link");
    let link_e = both.split('~').nth(1).expect("two links").to_owned();
    // The executor's link addressed to someone other than the gateway.
    let misaddressed =
        add_link(&executor, &token, &link_p, &sid("planner")).expect("executor's link");

    let gateway: SocketAddr = up.service("gateway")["inbound"]
        .as_str()
        .expect("inbound")
        .parse()
        .expect("addr");
    let body = r#"{"model":"agentmesh-default","messages":[{"role":"user","content":"hi"}]}"#;
    let bearer = format!("Bearer {token}");
    let other_bearer = format!("Bearer {other_token}");
    let swapped = format!("{link_e}~{link_p}");
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "the intact chain",
            vec![("authorization", &bearer), (DELEGATION_HEADER, &both)],
            200,
            "",
        ),
        (
            "the intact chain again (a replay)",
            vec![("authorization", &bearer), (DELEGATION_HEADER, &both)],
            401,
            "already used",
        ),
        (
            "a last link addressed to another hop",
            vec![
                ("authorization", &bearer),
                (DELEGATION_HEADER, &misaddressed),
            ],
            401,
            "was addressed to",
        ),
        (
            "a hop removed",
            vec![("authorization", &bearer), (DELEGATION_HEADER, &link_e)],
            401,
            "delegation chain refused",
        ),
        (
            "two hops swapped",
            vec![("authorization", &bearer), (DELEGATION_HEADER, &swapped)],
            401,
            "delegation chain refused",
        ),
        (
            "links replayed with another request's token",
            vec![("authorization", &other_bearer), (DELEGATION_HEADER, &both)],
            401,
            "delegation chain refused",
        ),
        ("no user token", vec![], 401, "delegation chain refused"),
    ];
    for (what, headers, want, text) in cases {
        let (status, body) = call_as_with(
            gateway,
            &executor_creds,
            "/v1/chat/completions",
            body,
            &headers,
        )
        .await
        .unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(status, want, "{what}: {body}");
        assert!(body.contains(text), "{what}: {body}");
    }
    // An agent checks the same way: the executor refuses the planner's call when the chain
    // does not end at the planner (its link is missing), and takes it with the link.
    let executor_in: SocketAddr = up.service("executor")["inbound"]
        .as_str()
        .expect("inbound")
        .parse()
        .expect("addr");
    let ask = r#"{"question":"who is asking?"}"#;
    // A fresh token: the gateway already accepted `token` along planner → executor.
    let token = user_token(&up, "carol").await;
    let bearer = format!("Bearer {token}");
    let link_p = add_link(&planner, &token, "", &sid("executor")).expect("planner's link");
    let (status, body) = call_as_with(
        executor_in,
        &planner_creds,
        "/ask",
        ask,
        &[("authorization", &bearer)],
    )
    .await
    .expect("an answer");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("delegation chain refused"), "{body}");
    let (status, body) = call_as_with(
        executor_in,
        &planner_creds,
        "/ask",
        ask,
        &[("authorization", &bearer), (DELEGATION_HEADER, &link_p)],
    )
    .await
    .expect("an answer");
    assert_eq!(status, 200, "{body}");

    let data = up.data.clone();
    assert!(up.stop().success());
    assert_no_strays(&data);
}

/// In research-team the researcher and the writer run with no sidecar. Each gets
/// its SVID from the node, serves mTLS itself, calls its upstream pinning the upstream's
/// SPIFFE ID, and decides every request by the intentions it follows on the node: removing
/// researcher → writer refuses the next ask at the writer (with the default deny's reason),
/// putting it back lets the next one through, and each decision is on the writer's live feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn research_team_agents_do_mtls_in_process_and_follow_intention_changes() {
    let mut up = up(&["--scenario", "research-team"]);
    let out = up.output();
    for who in ["researcher", "writer"] {
        assert!(
            out.contains(&format!(
                "✓ {who:<11} spiffe://agentmesh.local/ns/default/sa/{who} (in-process mTLS"
            )),
            "{who} should run in-process:\n{out}"
        );
        assert!(
            !up.data.join(format!("services/{who}.proxy.toml")).exists(),
            "{who} got a sidecar config"
        );
        let agent_toml =
            std::fs::read_to_string(up.data.join(format!("services/{who}.agent.toml")))
                .expect("agent.toml");
        assert!(agent_toml.contains("[mtls]"), "{agent_toml}");
    }
    // The refusal is made by the researcher itself, pinning the gateway's identity.
    assert!(
        out.contains(
            "✓ refused on purpose: researcher → gateway (researcher's own in-process mTLS)"
        ),
        "{out}"
    );
    let sidecars = processes_under(&up.data)
        .into_iter()
        .filter(|p| p.contains("proxy run"))
        .count();
    assert_eq!(
        sidecars, 2,
        "only the frontend and the gateway have sidecars"
    );

    let answer = up.ask("Which identity does each service get?");
    assert_eq!(
        answer["agents"],
        serde_json::json!(["researcher", "writer", "gateway"]),
        "{answer}"
    );
    // Both in-process agents signed, and the frontend verified both.
    assert_eq!(
        answer["signatures"].as_array().map(Vec::len),
        Some(2),
        "{answer}"
    );

    let writer_admin = up.service("writer")["admin"]
        .as_str()
        .expect("admin")
        .to_owned();
    assert!(writer_admin.starts_with("unix://"), "{writer_admin}");
    let health = http_get_text(&writer_admin, "/healthz").await;
    assert!(
        health.starts_with("ok spiffe://agentmesh.local/ns/default/sa/writer serial="),
        "{health}"
    );

    // Remove researcher → writer: the writer refuses the next request itself.
    let admin_socket = up.data.join("admin.sock");
    let intention = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("intention")
            .args(args)
            .env("AGENTMESH_ADMIN_SOCKET", &admin_socket)
            .stdin(Stdio::null())
            .output()
            .expect("agentmesh intention");
        assert!(
            out.status.success(),
            "intention {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    intention(&["delete", "researcher", "writer"]);
    let data = up.data.to_str().expect("utf-8").to_owned();
    let refused = wait_for(|| {
        let out = up.cli(&["ask", "still there?", "--data-dir", &data, "-o", "json"]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (!out.status.success() && text.contains("refused the call")).then_some(text)
    });
    assert!(refused.contains("writer refused the call"), "{refused}");

    // The writer's live feed has the deny, from the researcher, with the default deny.
    let feed = http_get_text_until(&writer_admin, "/decisions", |t| {
        t.lines().any(|l| l.contains("\"decision\":\"deny\""))
    })
    .await;
    let deny: Value = feed
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .rfind(|l| l["decision"] == "deny")
        .expect("a deny line");
    assert_eq!(
        deny["source"], "spiffe://agentmesh.local/ns/default/sa/researcher",
        "{deny}"
    );
    assert_eq!(
        deny["destination"],
        "spiffe://agentmesh.local/ns/default/sa/writer"
    );
    assert!(deny["intention"].is_null(), "the default deny: {deny}");
    assert!(deny["seq"].as_u64().is_some(), "{deny}");

    // Put it back: the next ask gets through again.
    intention(&["create", "researcher", "writer", "--action", "allow"]);
    let again = wait_for(|| {
        let out = up.cli(&["ask", "back again?", "--data-dir", &data, "-o", "json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&out.stdout).expect("json"))
    });
    assert_eq!(
        again["agents"],
        serde_json::json!(["researcher", "writer", "gateway"]),
        "{again}"
    );

    let status = up.stop();
    assert!(
        status.success(),
        "up exited with {status}:\n{}",
        up.output()
    );
}

/// Polls `f` until it gives a value, for at most [`PATIENCE`].
fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// GET `path` on a plain admin listener (`unix:///path` or `ip:port`); the body as text.
async fn http_get_text(addr: &str, path: &str) -> String {
    http_get_text_until(addr, path, |_| true).await
}

/// GET a (possibly endless) plain HTTP response and read it until `done` says enough or
/// the server closes it; the raw body (chunk framing included, which no JSON line matches).
async fn http_get_text_until(addr: &str, path: &str, done: impl Fn(&str) -> bool) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr: agentmesh_sdk::LocalAddr = addr.parse().expect("admin address");
    let mut tcp = agentmesh_sdk::LocalStream::connect(&addr)
        .await
        .expect("connect admin");
    let head = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.expect("write");
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + PATIENCE;
    loop {
        let body = |t: &str| t.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
        match tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return body(&text),
            Ok(Ok(n)) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
        if done(&body(&text)) {
            return body(&text);
        }
        assert!(
            Instant::now() < deadline,
            "{path} never had what was waited for: {text}"
        );
    }
}

// === the attacker next door ===

/// The uid the attacker runs as: `nobody`, another user on the same host.
const ATTACKER_UID: &str = "65534";

/// Runs `tests/py/attacker.py` as uid 65534 with `setpriv`, the Python standard library and
/// nothing else (no certificate, no access to the data dir), one HTTP request per attempt.
/// Returns each attempt's outcome by name.
fn attack(attempts: &[Value]) -> std::collections::BTreeMap<String, Value> {
    // The system interpreter: one under /root (pyenv, the test venv) is out of nobody's reach.
    let python = Path::new("/usr/bin/python3");
    assert!(
        python.exists(),
        "the attacker needs /usr/bin/python3 (Debian's python3)"
    );
    let mut child = Command::new("setpriv")
        .args([
            &format!("--reuid={ATTACKER_UID}"),
            &format!("--regid={ATTACKER_UID}"),
            "--clear-groups",
        ])
        .arg(python)
        .arg("-c")
        .arg(include_str!("py/attacker.py"))
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux) runs the attacker as another uid");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(serde_json::to_string(attempts).expect("json").as_bytes())
        .expect("send the attempts");
    let out = child.wait_with_output().expect("the attacker ran");
    assert!(
        out.status.success(),
        "the attacker script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("one JSON object per attempt");
            (v["name"].as_str().expect("name").to_owned(), v)
        })
        .collect()
}

/// Every local address of `up`'s mesh that an attacker could try, with the request that
/// would hurt most: a user token, a hand-written `x-forwarded-client-cert` naming a caller
/// the destination trusts, and the path it serves.
fn attempts_against(up: &Up, token: &str) -> Vec<Value> {
    let mesh = up.mesh();
    let services = mesh["services"].as_array().expect("services");
    let td = "spiffe://agentmesh.local/ns/default/sa";
    let mut attempts = Vec::new();
    let post = |name: String, target: &str, path: &str, forged_caller: &str| {
        serde_json::json!({
            "name": name,
            "target": target,
            "path": path,
            "headers": {
                "authorization": format!("Bearer {token}"),
                "x-forwarded-client-cert": format!("By={td}/gateway;URI={td}/{forged_caller}"),
            },
            "body": r#"{"question":"hello from next door","model":"agentmesh-default","messages":[{"role":"user","content":"hi"}]}"#,
        })
    };
    for s in services {
        let name = s["name"].as_str().expect("name");
        let kind = s["kind"].as_str().expect("kind");
        let path = if kind == "gateway" {
            "/v1/chat/completions"
        } else {
            "/ask"
        };
        // Whoever calls this service legitimately, as a forged XFCC would claim.
        let caller = services
            .iter()
            .filter_map(|o| o["upstreams"].as_object().map(|u| (o, u)))
            .find(|(_, u)| u.contains_key(name))
            .map_or("planner", |(o, _)| o["name"].as_str().expect("name"));
        if kind != "frontend" {
            attempts.push(post(
                format!("{name}: app, past its sidecar"),
                s["app"].as_str().expect("app"),
                path,
                caller,
            ));
        }
        // The mTLS listener spoken to in plain HTTP, XFCC and all: no certificate, no answer.
        attempts.push(post(
            format!("{name}: mTLS listener without a certificate"),
            s["inbound"].as_str().expect("inbound"),
            path,
            caller,
        ));
        let admin = s["admin"].as_str().expect("admin");
        attempts.push(serde_json::json!({
            "name": format!("{name}: admin /decisions feed"),
            "target": admin, "path": "/decisions", "method": "GET",
        }));
        attempts.push(post(
            format!("{name}: admin /probe to the gateway"),
            admin,
            "/probe/gateway/v1/chat/completions",
            name,
        ));
        for (dest, listen) in s["upstreams"].as_object().expect("upstreams") {
            let dest_path = if dest == "gateway" {
                "/v1/chat/completions"
            } else {
                "/ask"
            };
            attempts.push(post(
                format!("{name}: outbound listener to {dest}, borrowing {name}'s identity"),
                listen.as_str().expect("listen"),
                dest_path,
                name,
            ));
        }
    }
    attempts
}

/// The attack that worked before app ↔ sidecar hops were authenticated, and every variant of
/// it: as another uid with a real user token, no app answers past its sidecar, no outbound
/// listener lends its service's identity, no admin feed or probe answers, and a forged
/// `x-forwarded-client-cert` gets no chat completion, tool call or delegation link anywhere.
async fn the_attacker_next_door_gets_nothing(scenario: &str) {
    let mut up = up(&["--scenario", scenario]);
    let token = user_token(&up, "mallory").await;
    let attempts = attempts_against(&up, &token);
    assert!(attempts.len() > 10, "{attempts:#?}");
    let outcomes = attack(&attempts);
    assert_eq!(outcomes.len(), attempts.len(), "{outcomes:#?}");
    for (name, outcome) in &outcomes {
        assert_ne!(
            outcome["outcome"], "answered",
            "hole in {scenario}: {name} answered the attacker: {outcome}"
        );
        // The local ones are not even reachable: the data dir is the operator's alone.
        if !name.contains("mTLS listener") {
            assert_eq!(
                outcome["outcome"], "refused",
                "{scenario}: {name}: {outcome}"
            );
            assert!(
                outcome["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("Permission denied")),
                "{scenario}: {name}: {outcome}"
            );
        }
    }
    // The control: the same script as the operator's own uid does get through a sidecar
    // port, so "refused" above is the uid, not a broken script.
    let mesh = up.mesh();
    let own = mesh["services"]
        .as_array()
        .expect("services")
        .iter()
        .find_map(|s| {
            s["upstreams"]
                .as_object()
                .and_then(|u| u.values().next().cloned())
        })
        .expect("some upstream");
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(include_str!("py/attacker.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().expect("stdin").write_all(
                serde_json::json!([{"name": "own", "target": own, "path": "/healthz", "method": "GET"}])
                    .to_string()
                    .as_bytes(),
            )?;
            c.wait_with_output()
        })
        .expect("run the script as the operator");
    let own: Value = serde_json::from_slice(&out.stdout).expect("one outcome");
    assert_eq!(own["outcome"], "answered", "{own}");
    let data = up.data.clone();
    assert!(up.stop().success());
    assert_no_strays(&data);
}

/// Intentions say who owns them, and a restart of `up` on the same data dir replaces only
/// the scenario's own: an operator's intention survives, and so does an operator's intention
/// for a pair the scenario also names (the scenario's is then not applied, and `up` says so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_of_up_keeps_an_operators_intentions() {
    let mut up = up(&[]);
    let admin = up.data.join("admin.sock");
    let admin = admin.to_str().expect("utf-8");
    let cli = |up: &Up, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--admin-socket", admin]);
        let out = up.cli(&all);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    cli(
        &up,
        &[
            "intention",
            "create",
            "executor",
            "planner",
            "--action",
            "allow",
        ],
    );
    let list = cli(&up, &["intention", "list"]);
    assert!(
        list.contains("Owner        : up:planner-executor"),
        "{list}"
    );
    assert!(list.contains("Owner        : operator"), "{list}");
    // An operator takes over one of the scenario's pairs.
    let listed: Value =
        serde_json::from_str(&cli(&up, &["intention", "list", "-o", "json"])).expect("json");
    let pe = listed["intentions"]
        .as_array()
        .expect("intentions")
        .iter()
        .find(|i| {
            // Stored resolved: service names become SPIFFE IDs.
            let ends = |k: &str, name: &str| {
                i[k].as_str()
                    .is_some_and(|s| s.ends_with(&format!("/sa/{name}")))
            };
            ends("source", "planner") && ends("destination", "executor")
        })
        .expect("planner → executor")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    cli(&up, &["intention", "delete", &pe]);
    cli(
        &up,
        &[
            "intention",
            "create",
            "planner",
            "executor",
            "--action",
            "allow",
            "--description",
            "the operator's own",
        ],
    );
    assert!(up.stop().success());

    let mut up = up.restart(&[]);
    let out = up.output();
    assert!(
        out.contains("2 of an operator's kept"),
        "the restart should keep the operator's two:
{out}"
    );
    assert!(
        out.contains("intention planner → executor of the scenario not applied"),
        "{out}"
    );
    let listed: Value =
        serde_json::from_str(&cli(&up, &["intention", "list", "-o", "json"])).expect("json");
    let all = listed["intentions"].as_array().expect("intentions");
    let owned_by = |owner: &str| {
        all.iter()
            .filter(|i| i["owner"].as_str().unwrap_or("") == owner)
            .count()
    };
    assert_eq!(owned_by(""), 2, "{listed}");
    // planner-executor has four intentions; the operator holds one of their pairs.
    assert_eq!(owned_by("up:planner-executor"), 3, "{listed}");
    assert!(
        all.iter().any(|i| i["description"] == "the operator's own"),
        "{listed}"
    );
    // And the mesh still answers through the operator's intention.
    let answer = up.ask("Who owns this intention?");
    assert_eq!(
        answer["agents"],
        serde_json::json!(["planner", "executor", "gateway"]),
        "{answer}"
    );
    let data = up.data.clone();
    assert!(up.stop().success());
    assert_no_strays(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planner_executor_gives_the_attacker_next_door_nothing() {
    the_attacker_next_door_gets_nothing("planner-executor").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn research_team_gives_the_attacker_next_door_nothing() {
    the_attacker_next_door_gets_nothing("research-team").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_pipeline_gives_the_attacker_next_door_nothing() {
    the_attacker_next_door_gets_nothing("threat-pipeline").await;
}

/// File permissions are the first wall (0700 directories, 0600 sockets); the peer-credential
/// check is the second. With the walls opened on purpose, an attacker's connection to an app,
/// a sidecar's outbound listener or an admin socket is accepted by the kernel and then
/// dropped unread by the process, which logs who it refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_credentials_refuse_another_uid_even_when_the_socket_is_world_writable() {
    use std::os::unix::fs::PermissionsExt;
    let mut up = up(&[]);
    let open = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    // Every directory from / down to the sockets must let nobody through.
    let mut dir = up.data.join("run/executor");
    loop {
        let mode = std::fs::metadata(&dir).expect("dir").permissions().mode();
        open(&dir, mode | 0o711);
        if !dir.pop() || dir.as_os_str().is_empty() || dir == Path::new("/") {
            break;
        }
    }
    open(&up.data.join("run/planner"), 0o711);
    let gateway_dir = up.data.join("run/gateway");
    open(&gateway_dir, 0o711);
    let targets = [
        (
            "executor app",
            up.data.join("run/executor/app.sock"),
            "/ask",
        ),
        (
            "executor outbound to the gateway",
            up.data.join("run/executor/to-gateway.sock"),
            "/v1/chat/completions",
        ),
        (
            "gateway app",
            gateway_dir.join("app.sock"),
            "/v1/chat/completions",
        ),
        (
            "planner sidecar admin",
            up.data.join("run/planner/admin.sock"),
            "/decisions",
        ),
    ];
    let mut attempts = Vec::new();
    for (name, sock, path) in &targets {
        open(sock, 0o666);
        attempts.push(serde_json::json!({
            "name": name,
            "target": format!("unix://{}", sock.display()),
            "path": path,
            "headers": {"x-forwarded-client-cert": "By=spiffe://agentmesh.local/ns/default/sa/gateway;URI=spiffe://agentmesh.local/ns/default/sa/executor"},
            "body": r#"{"question":"hi","model":"agentmesh-default","messages":[{"role":"user","content":"hi"}]}"#,
        }));
    }
    let outcomes = attack(&attempts);
    for (name, _, _) in &targets {
        let o = &outcomes[*name];
        assert_eq!(
            o["outcome"], "no_answer",
            "{name}: the kernel let nobody connect, so the process must drop it: {o}"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    for log in [
        "executor.log",
        "executor.proxy.log",
        "gateway.log",
        "planner.proxy.log",
    ] {
        let text = std::fs::read_to_string(up.data.join("logs").join(log)).unwrap_or_default();
        assert!(
            text.contains("local connection refused") && text.contains("uid=65534"),
            "{log} does not name the refused uid:\n{text}"
        );
    }
    let data = up.data.clone();
    assert!(up.stop().success());
    assert_no_strays(&data);
}

// === up survives its children ===

impl Up {
    /// [`Up::ask`] that reports a failure instead of panicking.
    fn try_ask(&self, question: &str) -> Result<Value, String> {
        let data = self.data.to_str().expect("utf-8 path");
        let out = self.cli(&["ask", question, "--data-dir", data, "-o", "json"]);
        if out.status.success() {
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The pid of the one child whose command line contains `needle` (`node run`,
    /// `planner.proxy.toml`, ...).
    fn pid_of(&self, needle: &str) -> u32 {
        let found: Vec<u32> = processes_under(&self.data)
            .into_iter()
            .filter(|p| p.contains(needle))
            .filter_map(|p| p.split(':').next()?.parse().ok())
            .collect();
        assert_eq!(found.len(), 1, "{needle}: {found:?}");
        found[0]
    }
}

/// `kill -9` of each kind of child while questions keep coming: `up` starts it again, the
/// rest of the mesh keeps serving (with the node or the server gone, the sidecars answer from
/// what they hold), a sidecar restarted after the node's own restart gets its identity (the
/// node got its registrations back), and the mesh answers after every kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_any_child_is_survived_and_only_in_flight_requests_fail() {
    let mut up = up(&[]);
    let expected = serde_json::json!(["planner", "executor", "gateway"]);
    for (victim, needle, data_plane_keeps_serving) in [
        ("node", "node run", true),
        ("executor sidecar", "executor.proxy.toml", false),
        ("server", "server run", true),
        ("gateway", "gateway.gateway.toml", false),
        ("planner", "planner.agent.toml", false),
        ("frontend", "frontend.frontend.toml", false),
    ] {
        let before = up.pid_of(needle);
        let killed = Command::new("kill")
            .args(["-9", &before.to_string()])
            .status()
            .expect("kill -9");
        assert!(killed.success());
        if data_plane_keeps_serving {
            // Nothing in the request path depends on the control plane.
            let answer = up.try_ask("Does the mesh serve while the control plane is down?");
            assert_eq!(
                answer.as_ref().map(|a| a["agents"].clone()),
                Ok(expected.clone()),
                "with the {victim} killed: {answer:?}\n{}",
                up.output()
            );
        }
        let deadline = Instant::now() + PATIENCE * 2;
        let mut failures = 0;
        loop {
            match up.try_ask("Are you back?") {
                Ok(a) if a["agents"] == expected => break,
                other => {
                    failures += 1;
                    assert!(
                        Instant::now() < deadline,
                        "no answer since the {victim} was killed ({failures} tries): {other:?}\n{}",
                        up.output()
                    );
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
        let after = wait_for(|| {
            processes_under(&up.data)
                .iter()
                .find(|p| p.contains(needle))
                .and_then(|p| p.split(':').next()?.parse::<u32>().ok())
        });
        assert_ne!(before, after, "{victim} was not started again");
        assert!(
            up.output().contains(&format!("↻ {victim} restarted")),
            "{}",
            up.output()
        );
    }
    let data = up.data.clone();
    assert!(up.stop().success(), "{}", up.output());
    assert_no_strays(&data);
}
