//! An agent's listener with a small `[limits]` table: a trickled head and a stalled body are
//! cut, too many headers get 431, and a normal request is answered alongside.

use std::path::Path;

use agentmesh_agents::AgentConfig;
use agentmesh_proto::limits::testing::{get, many_headers, stalled_body, trickle_head};
use tokio::net::TcpStream;

const CONFIG: &str = r#"
role = "executor"
listen = "127.0.0.1:0"
[[upstream]]
name = "gateway"
role = "gateway"
url = "http://127.0.0.1:9"
[limits]
header_timeout = "2s"
body_idle_timeout = "1s"
max_headers = 20
"#;

#[tokio::test]
async fn an_agent_cuts_slow_heads_and_slow_bodies_and_refuses_large_heads() {
    let cfg = AgentConfig::parse(CONFIG, Path::new("agent.toml")).unwrap();
    let agent = agentmesh_agents::start(cfg).await.unwrap();
    let addr = agent.addr.tcp_socket_addr().expect("a TCP listener");

    let mut c = TcpStream::connect(addr).await.unwrap();
    assert!(
        trickle_head(&mut c).await < 20,
        "a trickled head kept its connection"
    );

    let mut c = TcpStream::connect(addr).await.unwrap();
    let answer = stalled_body(&mut c, "/ask").await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");

    let mut c = TcpStream::connect(addr).await.unwrap();
    let answer = get(&mut c, "/ask", &many_headers(30)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // A normal request is answered (405: /ask takes POST), so the listener still serves.
    let mut c = TcpStream::connect(addr).await.unwrap();
    let answer = get(&mut c, "/ask", "").await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    agent.shutdown().await;
}

#[test]
fn a_bad_limit_is_refused_by_key() {
    let text = CONFIG.replace("body_idle_timeout = \"1s\"", "body_idle_timeout = \"0s\"");
    let err = AgentConfig::parse(&text, Path::new("agent.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("limits.body_idle_timeout"), "{err}");
}
