//! go-spiffe v2, the most used SPIFFE client library, against a real `agentmesh node`: the
//! test peer in `interop/go/` (built by `scripts/test` from the Go module proxy into
//! `.cache/go/bin/spiffe-interop`; `$AGENTMESH_TEST_GO_INTEROP` names another build) uses
//! `workloadapi.X509Source`, `JWTSource`, `ValidateJWTSVID` and `spiffetls` with
//! `tlsconfig.AuthorizeID`, in the shape of the Ephemos echo server and client.
//!
//! Each Go process waits for a line on stdin, so the test registers its pid with the node
//! (`launcher:service:NAME`) before it asks for anything.

#[path = "support/mesh.rs"]
mod mesh;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use mesh::{Mesh, Proc, SHORT_TTL, free_port, register_launch};
use serde_json::Value;

/// The go-spiffe peer, or a failure that names what is missing.
fn interop_binary() -> PathBuf {
    let path = std::env::var_os("AGENTMESH_TEST_GO_INTEROP")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/go/bin/spiffe-interop")
        });
    assert!(
        path.is_file(),
        "the go-spiffe peer is missing at {}; scripts/test builds it from interop/go (Go and \
         the Go module proxy), or set AGENTMESH_TEST_GO_INTEROP",
        path.display()
    );
    path
}

/// A Go workload, registered with the node as `service` and told to go.
struct GoWorkload {
    proc: Proc,
    stdout: BufReader<std::process::ChildStdout>,
    // Open while the workload lives: the echo server serves until its stdin closes.
    _stdin: std::process::ChildStdin,
}

impl GoWorkload {
    async fn launch(mesh: &Mesh, service: &str, args: &[&str]) -> Self {
        let mut child: Child = Command::new(interop_binary())
            .args(args)
            .env("SPIFFE_ENDPOINT_SOCKET", mesh.endpoint())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the go-spiffe peer");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        register_launch(mesh, child.id(), service).await;
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "go").expect("tell the workload to go");
        Self {
            proc: Proc(child),
            stdout,
            _stdin: stdin,
        }
    }

    fn line(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read stdout");
        serde_json::from_str(&line).unwrap_or_else(|e| {
            let status = self.proc.0.try_wait();
            panic!("not a JSON line from the go-spiffe peer ({e}): {line:?}; process: {status:?}")
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_spiffe_x509_source_gets_the_svid_and_follows_a_rotation_on_the_open_stream() {
    let mesh = Mesh::start();
    let id = mesh.entry(
        "/ns/default/sa/go-x509",
        &["launcher:service:go-x509"],
        Some(SHORT_TTL),
    );
    let mut go = GoWorkload::launch(&mesh, "go-x509", &["x509", "1"]).await;
    let out = go.line();
    assert_eq!(out["spiffe_id"], id.as_str(), "{out}");
    assert_eq!(out["chain_len"], 2, "leaf and intermediate: {out}");
    assert!(out["roots"].as_u64() >= Some(1), "{out}");
    // A 10 s SVID rotates at about half its life; the source sees it without reconnecting.
    assert_eq!(out["rotated_id"], id.as_str(), "{out}");
    assert_ne!(out["rotated_serial"], out["serial"], "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_spiffe_jwt_source_gets_a_jwt_svid_the_node_validates() {
    let mesh = Mesh::start();
    let id = mesh.entry("/ns/default/sa/go-jwt", &["launcher:service:go-jwt"], None);
    let mut go = GoWorkload::launch(
        &mesh,
        "go-jwt",
        &["jwt", "spiffe://agentmesh.local/ns/default/sa/db"],
    )
    .await;
    let out = go.line();
    assert_eq!(out["spiffe_id"], id.as_str(), "{out}");
    assert_eq!(out["validated_locally"], id.as_str(), "{out}");
    assert_eq!(out["validated_by_node"], id.as_str(), "{out}");
    assert_eq!(out["wrong_audience_refused"], true, "{out}");
}

/// The echo server allows only the client's ID; the client pins the server's. A client that
/// pins someone else refuses the server, and a workload with another identity is refused by
/// the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_spiffe_spiffetls_echo_authorizes_each_side_by_id_and_refuses_the_wrong_one() {
    let mesh = Mesh::start();
    let server_id = mesh.entry(
        "/ns/default/sa/go-echo-server",
        &["launcher:service:go-echo-server"],
        None,
    );
    let client_id = mesh.entry(
        "/ns/default/sa/go-echo-client",
        &["launcher:service:go-echo-client"],
        None,
    );
    let intruder_id = mesh.entry(
        "/ns/default/sa/go-intruder",
        &["launcher:service:go-intruder"],
        None,
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let mut server =
        GoWorkload::launch(&mesh, "go-echo-server", &["echo-server", &addr, &client_id]).await;
    let ready = server.line();
    assert_eq!(ready["spiffe_id"], server_id.as_str(), "{ready}");

    let mut client = GoWorkload::launch(
        &mesh,
        "go-echo-client",
        &["echo-client", &addr, &server_id, &intruder_id],
    )
    .await;
    let out = client.line();
    assert_eq!(out["spiffe_id"], client_id.as_str(), "{out}");
    assert_eq!(
        out["reply"],
        format!("echo:hello from {client_id}").as_str(),
        "{out}"
    );
    assert_eq!(out["wrong_server_refused"], true, "{out}");

    let mut intruder = GoWorkload::launch(
        &mesh,
        "go-intruder",
        &["echo-client", &addr, &server_id, &intruder_id],
    )
    .await;
    let out = intruder.line();
    assert_eq!(out["spiffe_id"], intruder_id.as_str(), "{out}");
    assert!(
        out.get("reply").is_none() && out["error"].is_string(),
        "the server answered a client it does not allow: {out}"
    );
}
