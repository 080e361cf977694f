//! Process-level tests of the `agentmesh` binary: a real `agentmesh server run` in a temporary
//! data dir, driven by the real CLI (and, for the crash test, by the admin API directly).
//!
//! Needs `openssl` on the PATH (scripts/test installs it).

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentmesh_proto::v1::admin_client::AdminClient;
use agentmesh_proto::v1::{CreateEntryRequest, Entry, ListEntriesRequest};

const BIN: &str = env!("CARGO_BIN_EXE_agentmesh");
/// Environment that would point the CLI somewhere other than the test's own server.
const SCRUBBED_ENV: [&str; 4] = [
    "AGENTMESH_ADMIN_SOCKET",
    "SPIFFE_ENDPOINT_SOCKET",
    "AGENTMESH_JOIN_TOKEN",
    "AGENTMESH_LOG",
];

// === test helpers ===

/// Kills and reaps a spawned process when the test ends, however it ends.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `agentmesh server run`.
struct Server {
    proc: Reaper,
    data_dir: PathBuf,
    socket: PathBuf,
    stderr: PathBuf,
}

fn command() -> Command {
    let mut cmd = Command::new(BIN);
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// A port that was free a moment ago; the server binds it in another process.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

impl Server {
    /// Starts a server on `data_dir` and waits (up to 30 s) until its admin socket accepts
    /// connections. Fails with the server's stderr if it does not.
    fn start(data_dir: &Path) -> Self {
        std::fs::create_dir_all(data_dir).expect("create data dir");
        let stderr = data_dir.with_extension(format!("stderr.{}", free_port()));
        let socket = data_dir.join("admin.sock");
        let child = command()
            .args(["server", "run", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).expect("create stderr file"))
            .spawn()
            .expect("spawn agentmesh server run");
        let mut server = Self {
            proc: Reaper(child),
            data_dir: data_dir.to_owned(),
            socket,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = server.proc.0.try_wait() {
                panic!(
                    "agentmesh server run exited with {status} before serving; stderr:\n{}",
                    server.stderr_text()
                );
            }
            if UnixStream::connect(&server.socket).is_ok() {
                return server;
            }
            if Instant::now() > deadline {
                panic!(
                    "the admin socket {} did not accept connections within 30s; server stderr:\n{}",
                    server.socket.display(),
                    server.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Runs the CLI against this server.
    fn cli(&self, args: &[&str]) -> Output {
        command()
            .args(args)
            .arg("--admin-socket")
            .arg(&self.socket)
            .output()
            .expect("run agentmesh")
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "expected success, got {}; stdout: {}; stderr: {}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

/// Asserts the command failed with exit code 1 and exactly one stderr line, `error: ...`
/// containing `want`.
#[track_caller]
fn assert_one_line_error(out: &Output, want: &str) {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit code 1; stdout: {}; stderr: {err}",
        stdout(out)
    );
    assert_eq!(
        err.lines().count(),
        1,
        "expected one stderr line, got:\n{err}"
    );
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(want), "expected {want:?} in: {err}");
}

fn list_json(server: &Server) -> serde_json::Value {
    let out = server.cli(&["entry", "list", "-o", "json"]);
    assert_ok(&out);
    serde_json::from_str(&stdout(&out)).expect("entry list -o json is JSON")
}

// === tests ===

#[test]
fn admin_commands_work_against_a_running_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("server"));

    // token generate: just the token, one line.
    let out = server.cli(&["token", "generate"]);
    assert_ok(&out);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.trim().len() >= 20, "{text}");
    let out = server.cli(&["token", "generate", "--ttl", "2m", "-o", "json"]);
    assert_ok(&out);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("token json");
    assert!(
        json["token"].is_string() && json["expires_at"].is_string(),
        "{json}"
    );

    // entry create, twice: the second is refused by the server.
    let create = [
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://agentmesh.local/ns/default/sa/planner",
        "--selector",
        "unix:uid:1000",
        "--selector",
        "unix:gid:1000",
    ];
    let out = server.cli(&create);
    assert_ok(&out);
    assert!(stdout(&out).contains("Entry ID"), "{}", stdout(&out));
    let out = server.cli(&create);
    assert_one_line_error(&out, "already exists");

    // Malformed IDs from the SPIFFE spec never reach the server.
    for id in [
        "spiffe://example.org/",
        "spiffe://Example.org/x",
        "http://example.org/x",
        "spiffe://example.org//x",
        "spiffe://example.org/./x",
        "spiffe://example.org:8080/x",
        "spiffe://example.org/x?y",
    ] {
        let out = server.cli(&[
            "entry",
            "create",
            "--spiffe-id",
            id,
            "--selector",
            "unix:uid:1",
        ]);
        assert_one_line_error(&out, &format!("invalid --spiffe-id {id:?}"));
    }
    let json = list_json(&server);
    let entries = json["entries"].as_array().expect("entries array");
    assert_eq!(entries.len(), 1, "{json}");
    assert_eq!(
        entries[0]["spiffe_id"],
        "spiffe://agentmesh.local/ns/default/sa/planner"
    );
    assert_eq!(entries[0]["selectors"].as_array().map(Vec::len), Some(2));
    let id = entries[0]["id"].as_str().expect("id").to_owned();

    // show, delete of an unknown id, delete of a known one.
    let out = server.cli(&["entry", "show", &id, "-o", "json"]);
    assert_ok(&out);
    let shown: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("show json");
    assert_eq!(shown["id"], id.as_str());
    let out = server.cli(&["entry", "delete", "no-such-entry"]);
    assert_one_line_error(&out, "no-such-entry");
    let out = server.cli(&["entry", "delete", &id]);
    assert_ok(&out);
    assert_eq!(
        list_json(&server)["entries"].as_array().map(Vec::len),
        Some(0)
    );

    // bundle show: PEM that openssl parses, and a JWKS with an EC key.
    let out = server.cli(&["bundle", "show"]);
    assert_ok(&out);
    let pem = stdout(&out);
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let mut openssl = match Command::new("openssl")
        .args(["x509", "-noout", "-text"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("openssl is needed for this test (scripts/test installs it): {e}"),
    };
    {
        use std::io::Write;
        let mut stdin = openssl.stdin.take().expect("openssl stdin");
        stdin.write_all(pem.as_bytes()).expect("write to openssl");
    }
    let parsed = openssl.wait_with_output().expect("openssl output");
    assert_ok(&parsed);
    assert!(
        stdout(&parsed).contains("URI:spiffe://agentmesh.local"),
        "{}",
        stdout(&parsed)
    );

    let out = server.cli(&["bundle", "show", "-o", "jwks"]);
    assert_ok(&out);
    let jwks: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("jwks json");
    let keys = jwks["keys"].as_array().expect("keys array");
    assert!(keys.iter().any(|k| k["kty"] == "EC"), "{jwks}");

    let out = server.cli(&["bundle", "show", "-o", "json"]);
    assert_ok(&out);
    let bundle: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("bundle json");
    assert_eq!(bundle["trust_domain"], "agentmesh.local");
    assert!(bundle["sequence"].is_u64(), "{bundle}");
}

#[test]
fn bad_config_files_give_one_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let malformed = dir.path().join("malformed.toml");
    std::fs::write(&malformed, "data_dir = \"/x\"\nlisten = \n").expect("write config");
    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "listen = \"127.0.0.1:1\"\nlisten_addr = \"x\"\n").expect("write");
    let bad_ttl = dir.path().join("ttl.toml");
    std::fs::write(&bad_ttl, "default_x509_ttl = \"an hour\"\n").expect("write");

    let run = |config: &Path| {
        command()
            .args(["server", "run", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(config)
            .output()
            .expect("run agentmesh")
    };
    assert_one_line_error(&run(&malformed), &malformed.display().to_string());
    let out = run(&unknown);
    assert_one_line_error(&out, "listen_addr");
    assert!(stderr(&out).contains(&unknown.display().to_string()));
    let out = run(&bad_ttl);
    assert_one_line_error(&out, "default_x509_ttl");
    assert_one_line_error(&run(&dir.path().join("missing.toml")), "missing.toml");
    // Nothing was started.
    assert!(!dir.path().join("data").exists());
}

#[test]
fn a_missing_admin_socket_is_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("nowhere/admin.sock");
    let out = command()
        .args(["entry", "list", "--admin-socket"])
        .arg(&socket)
        .output()
        .expect("run agentmesh");
    assert_one_line_error(&out, &socket.display().to_string());
    assert!(
        stderr(&out).contains("agentmesh server run"),
        "{}",
        stderr(&out)
    );

    // The default: <data-dir>/admin.sock.
    let out = command()
        .args(["entry", "list", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run agentmesh");
    assert_one_line_error(&out, &dir.path().join("admin.sock").display().to_string());
}

#[test]
fn usage_errors_keep_clap_exit_code() {
    let out = command()
        .args(["entry", "create", "--spiffe-id", "spiffe://a/b"])
        .output()
        .expect("run agentmesh");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_entries_survive_kill_9() {
    const TOTAL: usize = 200;
    const KILL_AFTER: usize = 100;
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("server");
    let server = Server::start(&data_dir);
    let pid = server.proc.0.id();

    let channel = agentmesh_proto::unix::connect(&server.socket)
        .await
        .expect("connect to the admin socket");
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let (count_tx, mut count_rx) = tokio::sync::watch::channel(0usize);

    // Another task kills the server once ~100 creates are acknowledged.
    let killer = tokio::spawn(async move {
        let _ = count_rx.wait_for(|n| *n >= KILL_AFTER).await;
        let status = tokio::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -9 {pid} failed");
    });

    let limit = Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..TOTAL {
        let channel = channel.clone();
        let acked = acked.clone();
        let count_tx = count_tx.clone();
        let limit = limit.clone();
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("semaphore");
            let spiffe_id = format!("spiffe://agentmesh.local/ns/crash/sa/svc{i}");
            let req = CreateEntryRequest {
                entry: Some(Entry {
                    spiffe_id: spiffe_id.clone(),
                    selectors: vec![format!("unix:uid:{}", 10_000 + i)],
                    ..Default::default()
                }),
            };
            let res = tokio::time::timeout(
                Duration::from_secs(10),
                AdminClient::new(channel).create_entry(req),
            )
            .await;
            if let Ok(Ok(_)) = res {
                acked.lock().expect("lock").push(spiffe_id);
                count_tx.send_modify(|n| *n += 1);
            }
        });
    }
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(r) = tasks.join_next().await {
            r.expect("create task");
        }
    })
    .await
    .expect("the burst finished");
    drop(count_tx);
    killer.await.expect("killer task");
    drop(channel);

    // The killed server is gone; make sure before reusing its data dir.
    let mut server = server;
    let status = server.proc.0.wait().expect("wait for the killed server");
    assert!(!status.success(), "the server was not killed: {status}");
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() >= KILL_AFTER,
        "only {} acknowledged",
        acked.len()
    );
    eprintln!(
        "{} of {TOTAL} creates acknowledged before kill -9",
        acked.len()
    );

    // Restart on the same data dir: the datastore opens, and every acknowledged entry is there.
    let restarted = Server::start(&server.data_dir);
    let channel = agentmesh_proto::unix::connect(&restarted.socket)
        .await
        .expect("connect after restart");
    let listed = AdminClient::new(channel)
        .list_entries(ListEntriesRequest {})
        .await
        .expect("list entries after restart")
        .into_inner()
        .entries;
    let stored: std::collections::HashSet<_> =
        listed.iter().map(|e| e.spiffe_id.as_str()).collect();
    let lost: Vec<_> = acked
        .iter()
        .filter(|id| !stored.contains(id.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged entries were lost after kill -9: {lost:?}",
        lost.len()
    );
    assert!(listed.len() <= TOTAL, "{} entries listed", listed.len());

    // The CLI reads the same store.
    let json = list_json(&restarted);
    assert_eq!(
        json["entries"].as_array().map(Vec::len),
        Some(listed.len()),
        "{json}"
    );
}

#[test]
fn intention_commands_validate_store_and_explain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("server"));

    // With no intentions, everything is denied: exit code 2, and the reason says so.
    let out = server.cli(&["intention", "check", "a", "b"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stdout(&out).contains("default is deny"), "{}", stdout(&out));

    let out = server.cli(&[
        "intention",
        "create",
        "a",
        "b",
        "--action",
        "allow",
        "-o",
        "json",
    ]);
    assert_ok(&out);
    let created: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    let ab_id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(
        created["source"],
        "spiffe://agentmesh.local/ns/default/sa/a"
    );

    // The same pair in another spelling is a conflict, named with the existing id.
    let out = server.cli(&[
        "intention",
        "create",
        "spiffe://agentmesh.local/ns/default/sa/a",
        "b",
        "--action",
        "deny",
    ]);
    assert_one_line_error(&out, &ab_id);

    let out = server.cli(&[
        "intention",
        "create",
        "planner",
        "executor",
        "--action",
        "allow",
        "--method",
        "GET",
        "--path-prefix",
        "/v1/",
    ]);
    assert_ok(&out);

    // check: allowed exits 0 and names the intention; L7 is explained per request.
    let out = server.cli(&["intention", "check", "a", "b", "-o", "json"]);
    assert_ok(&out);
    let check: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(check["decision"], "allow");
    assert_eq!(check["intention_id"], ab_id.as_str());
    let out = server.cli(&["intention", "check", "b", "a"]);
    assert_eq!(out.status.code(), Some(2));
    let out = server.cli(&[
        "intention",
        "check",
        "planner",
        "executor",
        "--method",
        "GET",
        "--path",
        "/v1/models",
    ]);
    assert_ok(&out);
    assert!(stdout(&out).contains("permission 1"), "{}", stdout(&out));
    let out = server.cli(&[
        "intention",
        "check",
        "planner",
        "executor",
        "--method",
        "POST",
        "--path",
        "/admin",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).contains("no permission"), "{}", stdout(&out));

    // Malformed input: one line each, nothing stored.
    let file = dir.path().join("typo.json");
    std::fs::write(
        &file,
        r#"{"source":"x","destination":"y","action":"allow","permissions":[{"http":{"path_prefx":"/"}}]}"#,
    )
    .expect("write");
    let file = file.to_str().expect("utf-8 path");
    let bad: &[(&[&str], &str)] = &[
        (
            &["intention", "create", "x", "y", "--action", "maybe"],
            "--action",
        ),
        (
            &["intention", "create", "--file", file],
            "unknown field `path_prefx`",
        ),
        (
            &[
                "intention",
                "create",
                "x",
                "y",
                "--action",
                "allow",
                "--path-prefix",
                "v1",
            ],
            "must start with '/'",
        ),
        (
            &[
                "intention",
                "create",
                "x",
                "y",
                "--action",
                "allow",
                "--path-regex",
                "([",
            ],
            "does not compile",
        ),
        (
            &["intention", "create", "Bad Name", "y", "--action", "allow"],
            "source",
        ),
        (
            &[
                "intention",
                "create",
                "x",
                "y",
                "--action",
                "allow",
                "--method",
                "G T",
            ],
            "method",
        ),
        (
            &[
                "intention",
                "create",
                "x",
                "y",
                "--action",
                "allow",
                "--header",
                "=v",
            ],
            "--header",
        ),
        (
            &["intention", "check", "x", "y", "--path", "nope"],
            "--path",
        ),
        (&["intention", "check", "a/b/c", "y"], "source"),
        (
            &["intention", "delete", "no-such-id"],
            "no intention with id",
        ),
        (&["intention", "delete", "x", "y"], "no intention from"),
    ];
    for (args, want) in bad {
        assert_one_line_error(&server.cli(args), want);
    }
    let out = server.cli(&["intention", "list", "-o", "json"]);
    assert_ok(&out);
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(
        list["intentions"].as_array().map(Vec::len),
        Some(2),
        "{list}"
    );

    // Delete by pair; the pair is then denied again.
    assert_ok(&server.cli(&["intention", "delete", "a", "b"]));
    let out = server.cli(&["intention", "check", "a", "b"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!server.stderr_text().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_intentions_survive_kill_9() {
    const TOTAL: usize = 120;
    const KILL_AFTER: usize = 50;
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("server");
    let server = Server::start(&data_dir);
    let pid = server.proc.0.id();
    let channel = agentmesh_proto::unix::connect(&server.socket)
        .await
        .expect("connect to the admin socket");
    let mut acked = Vec::new();
    for i in 0..TOTAL {
        let req = agentmesh_proto::v1::CreateIntentionRequest {
            spec_json: format!(r#"{{"source":"src{i}","destination":"dst","action":"allow"}}"#),
        };
        if i == KILL_AFTER {
            // kill -9 while the next create is in flight.
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .spawn();
        }
        match tokio::time::timeout(
            Duration::from_secs(5),
            AdminClient::new(channel.clone()).create_intention(req),
        )
        .await
        {
            Ok(Ok(r)) => acked.push(r.into_inner().id),
            _ => break,
        }
    }
    let mut server = server;
    let status = server.proc.0.wait().expect("wait for the killed server");
    assert!(!status.success(), "the server was not killed: {status}");
    assert!(
        acked.len() >= KILL_AFTER,
        "only {} acknowledged",
        acked.len()
    );
    drop(channel);

    let restarted = Server::start(&server.data_dir);
    let out = restarted.cli(&["intention", "list", "-o", "json"]);
    assert_ok(&out);
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    let stored: Vec<&str> = list["intentions"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    for id in &acked {
        assert!(
            stored.contains(&id.as_str()),
            "acknowledged intention {id} lost after kill -9"
        );
    }
}

#[test]
fn mcp_flags_build_one_permission_and_bad_values_are_one_line_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("server"));
    let out = server.cli(&[
        "intention",
        "create",
        "executor",
        "tools",
        "--action",
        "allow",
        "--mcp-tool",
        "search",
        "--mcp-tool",
        "read_file",
        "--mcp-resource",
        "file:///srv/public/",
        "--mcp-prompt",
        "summary",
        "--mcp-arg",
        "path^=/srv/public/",
        "--require-user-claim",
        "groups=finance",
        "-o",
        "json",
    ]);
    assert_ok(&out);
    let created: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(
        created["permissions"],
        serde_json::json!([{
            "http": {},
            "mcp": {
                "tools": ["search", "read_file"],
                "resources": ["file:///srv/public/"],
                "prompts": ["summary"],
                "arguments": {"path": {"prefix": "/srv/public/"}}
            },
            "user": {"claims": {"groups": "finance"}}
        }]),
        "{created}"
    );
    let out = server.cli(&["intention", "list"]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains(
            "mcp-tools=search,read_file mcp-resources=file:///srv/public/ mcp-prompts=summary mcp-arg=path^=/srv/public/ user-claim=groups=finance"
        ),
        "{}",
        stdout(&out)
    );

    let create = |extra: &[&str]| {
        let mut args = vec!["intention", "create", "a", "b", "--action", "allow"];
        args.extend_from_slice(extra);
        server.cli(&args)
    };
    let bad: &[(&[&str], &str)] = &[
        (&["--mcp-tool", "Delete All"], "is not an MCP name"),
        (&["--mcp-tool", ""], "is not an MCP name"),
        (&["--mcp-tool", "ｓearch"], "is not an MCP name"),
        (&["--mcp-prompt", "a b"], "prompt \"a b\""),
        (&["--mcp-resource", ""], "not a URI prefix"),
        (
            &["--mcp-tool", "t", "--mcp-arg", "path=/srv"],
            "NAME^=PREFIX",
        ),
        (
            &["--mcp-tool", "t", "--mcp-arg", "^=/srv"],
            "no argument name",
        ),
        (
            &[
                "--mcp-tool",
                "t",
                "--mcp-arg",
                "p^=/a",
                "--mcp-arg",
                "p^=/b",
            ],
            "constrained twice",
        ),
        (&["--mcp-arg", "p^=/a"], "name the tools it applies to"),
        (&["--require-user-claim", "groups"], "KEY=VALUE"),
        (&["--require-user-claim", "=finance"], "no claim name"),
    ];
    for (extra, want) in bad {
        assert_one_line_error(&create(extra), want);
    }
    let file = dir.path().join("i.json");
    std::fs::write(&file, "{}").expect("write");
    let out = server.cli(&[
        "intention",
        "create",
        "--file",
        file.to_str().expect("utf-8"),
        "--mcp-tool",
        "x",
    ]);
    assert!(!out.status.success());
    // Nothing malformed was stored: only the first intention is there.
    let out = server.cli(&["intention", "list", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(list["intentions"].as_array().map(Vec::len), Some(1));

    // intention check answers for one MCP tool, resource or prompt.
    assert_ok(&server.cli(&[
        "intention",
        "create",
        "planner",
        "tools",
        "--action",
        "allow",
        "--mcp-tool",
        "search",
    ]));
    let check = |extra: &[&str]| {
        let mut args = vec!["intention", "check", "planner", "tools", "-o", "json"];
        args.extend_from_slice(extra);
        let out = server.cli(&args);
        let json: serde_json::Value = serde_json::from_str(&stdout(&out))
            .unwrap_or_else(|e| panic!("{e}: {} {}", stdout(&out), stderr(&out)));
        (out.status.code(), json)
    };
    let (code, ok) = check(&["--mcp-tool", "search"]);
    assert_eq!(code, Some(0), "{ok}");
    assert!(
        ok["reason"]
            .as_str()
            .unwrap()
            .contains("allows tools/call tool \"search\""),
        "{ok}"
    );
    let (code, no) = check(&["--mcp-tool", "delete_all"]);
    assert_eq!(code, Some(2), "{no}");
    assert!(
        no["reason"]
            .as_str()
            .unwrap()
            .contains("no permission names is refused"),
        "{no}"
    );
    let (code, odd) = check(&["--mcp-tool", "search "]);
    assert_eq!(code, Some(2), "{odd}");
    assert!(
        odd["reason"]
            .as_str()
            .unwrap()
            .contains("is not an MCP name"),
        "{odd}"
    );
    let (code, res) = check(&["--mcp-resource", "file:///etc/passwd"]);
    assert_eq!(code, Some(2), "{res}");
    // The rule that needs a user: a check has none, and says so.
    let out = server.cli(&[
        "intention",
        "check",
        "executor",
        "tools",
        "--mcp-tool",
        "search",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stdout(&out).contains("no verified user token"),
        "{}",
        stdout(&out)
    );
    assert!(!server.stderr_text().contains("panicked"));
}

/// `bundle set|list|delete`, SPIRE's shape: a bundle from a file or stdin, SPIFFE or PEM,
/// listed as text and JSON, still there after `kill -9`, and each mistake one line.
#[test]
fn federated_bundles_are_set_listed_deleted_and_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other = Server::start(&dir.path().join("other"));
    let data_dir = dir.path().join("server");
    let mut server = Server::start(&data_dir);

    // The other server's bundle in the SPIFFE format, set from a file; PEM from stdin.
    let out = other.cli(&["bundle", "show", "-o", "spiffe"]);
    assert_ok(&out);
    let doc = dir.path().join("other.json");
    std::fs::write(&doc, stdout(&out)).expect("write bundle");
    let out = server.cli(&[
        "bundle",
        "set",
        "--id",
        "spiffe://agentmesh.local",
        "--path",
        doc.to_str().expect("UTF-8"),
    ]);
    assert_one_line_error(&out, "own trust domain");
    // `other` is agentmesh.local too: set its bundle under another name, as a test may.
    let out = server.cli(&[
        "bundle",
        "set",
        "--id",
        "spiffe://other.test",
        "--path",
        doc.to_str().expect("UTF-8"),
    ]);
    assert_ok(&out);
    let pem = stdout(&other.cli(&["bundle", "show"]));
    let mut child = command()
        .args([
            "bundle",
            "set",
            "--id",
            "pem.test",
            "--format",
            "pem",
            "--admin-socket",
        ])
        .arg(&server.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bundle set");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), pem.as_bytes())
        .expect("write stdin");
    drop(child.stdin.take());
    assert_ok(&child.wait_with_output().expect("bundle set"));

    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "<html>").expect("write");
    let out = server.cli(&[
        "bundle",
        "set",
        "--id",
        "spiffe://bad.test",
        "--path",
        garbage.to_str().expect("UTF-8"),
    ]);
    assert_one_line_error(&out, "not a SPIFFE bundle");

    let list = |server: &Server| -> serde_json::Value {
        let out = server.cli(&["bundle", "list", "-o", "json"]);
        assert_ok(&out);
        serde_json::from_str(&stdout(&out)).expect("bundle list -o json")
    };
    let json = list(&server);
    let names: Vec<&str> = json["bundles"]
        .as_array()
        .expect("bundles")
        .iter()
        .filter_map(|b| b["trust_domain"].as_str())
        .collect();
    assert_eq!(names, ["other.test", "pem.test"], "{json}");
    assert_eq!(json["bundles"][0]["source"], "manual");
    let text = stdout(&server.cli(&["bundle", "list"]));
    assert!(text.contains("* spiffe://other.test\n"), "{text}");
    assert!(text.contains("BEGIN CERTIFICATE"), "{text}");

    // kill -9, restart on the same data dir: both bundles are still held.
    let pid = server.proc.0.id();
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let _ = server.proc.0.wait();
    let _ = std::fs::remove_file(&server.socket);
    server = Server::start(&data_dir);
    assert_eq!(list(&server)["bundles"].as_array().map(Vec::len), Some(2));

    let out = server.cli(&["bundle", "delete", "--id", "spiffe://pem.test"]);
    assert_ok(&out);
    let out = server.cli(&["bundle", "delete", "--id", "spiffe://pem.test"]);
    assert_one_line_error(&out, "no federated bundle");
    assert_eq!(list(&server)["bundles"].as_array().map(Vec::len), Some(1));
}

#[test]
fn intention_check_decides_one_a2a_method_or_mcp_tool_as_the_sidecars_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("server"));
    // researcher → writer: SendMessage and GetTask, never CancelTask; planner → tools: search.
    let out = server.cli(&[
        "intention",
        "create",
        "researcher",
        "writer",
        "--action",
        "allow",
        "--a2a-method",
        "SendMessage",
        "--a2a-method",
        "GetTask",
        "-o",
        "json",
    ]);
    assert_ok(&out);
    let a2a: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    let a2a_id = a2a["id"].as_str().expect("id").to_owned();
    let out = server.cli(&[
        "intention",
        "create",
        "planner",
        "tools",
        "--action",
        "allow",
        "--mcp-tool",
        "search",
        "-o",
        "json",
    ]);
    assert_ok(&out);
    let mcp: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    let mcp_id = mcp["id"].as_str().expect("id").to_owned();
    let check = |args: &[&str]| {
        let mut all = vec!["intention", "check"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = server.cli(&all);
        let json: serde_json::Value = serde_json::from_str(&stdout(&out))
            .unwrap_or_else(|e| panic!("{e}: {} {}", stdout(&out), stderr(&out)));
        (out.status.code(), json)
    };

    // A2A: per method, default deny inside A2A, exact spelling.
    let (code, ok) = check(&["researcher", "writer", "--a2a-method", "SendMessage"]);
    assert_eq!(code, Some(0), "{ok}");
    assert_eq!(ok["decision"], "allow");
    assert_eq!(ok["intention_id"], a2a_id.as_str());
    let (code, no) = check(&["researcher", "writer", "--a2a-method", "CancelTask"]);
    assert_eq!(code, Some(2), "{no}");
    assert_eq!(no["decision"], "deny");
    assert_eq!(no["intention_id"], a2a_id.as_str());
    let reason = no["reason"].as_str().expect("reason");
    assert!(reason.contains("CancelTask"), "{no}");
    assert!(
        reason.contains("every method no permission names is refused"),
        "{no}"
    );
    let (code, odd) = check(&["researcher", "writer", "--a2a-method", "sendMessage"]);
    assert_eq!(code, Some(2), "{odd}");
    assert!(
        odd["reason"]
            .as_str()
            .expect("reason")
            .contains("is not an A2A 1.0 method"),
        "{odd}"
    );
    // Another pair has no intention at all: the default deny, whatever the method.
    let (code, none) = check(&["writer", "researcher", "--a2a-method", "SendMessage"]);
    assert_eq!(code, Some(2), "{none}");
    assert!(none["intention_id"].is_null(), "{none}");
    // An A2A rule says nothing about MCP tools: its pair reads POSTs as A2A only.
    let (code, cross) = check(&["researcher", "writer", "--mcp-tool", "search"]);
    assert_eq!(code, Some(2), "{cross}");

    // MCP: the allowed tool, a tool no permission names, and the text output.
    let (code, ok) = check(&["planner", "tools", "--mcp-tool", "search"]);
    assert_eq!((code, &ok["intention_id"]), (Some(0), &json_str(&mcp_id)));
    let (code, no) = check(&["planner", "tools", "--mcp-tool", "delete_all"]);
    assert_eq!((code, &no["intention_id"]), (Some(2), &json_str(&mcp_id)));
    let out = server.cli(&[
        "intention",
        "check",
        "planner",
        "tools",
        "--mcp-tool",
        "delete_all",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let text = stdout(&out);
    assert!(text.starts_with("Denied"), "{text}");
    assert!(text.contains(&mcp_id), "{text}");
    assert!(text.contains("delete_all"), "{text}");

    // The flags name one call each: MCP and A2A together is a usage error.
    let out = server.cli(&[
        "intention",
        "check",
        "planner",
        "tools",
        "--mcp-tool",
        "search",
        "--a2a-method",
        "SendMessage",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
    assert!(!server.stderr_text().contains("panicked"));
}

fn json_str(s: &str) -> serde_json::Value {
    serde_json::Value::String(s.to_owned())
}
