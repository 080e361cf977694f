//! The gateway's listener with a small `[limits]` table: a trickled head and a stalled body
//! are cut, too many headers get 431, and a normal request is answered alongside.

use std::path::Path;

use agentmesh_gateway::GatewayConfig;
use agentmesh_proto::limits::testing::{get, many_headers, stalled_body, trickle_head};
use tokio::net::TcpStream;

const CONFIG: &str = r#"
listen = "127.0.0.1:0"
[[provider]]
name = "offline"
kind = "offline"
[[model]]
name = "m"
providers = ["offline"]
[[caller]]
id = "*"
models = ["*"]
[limits]
header_timeout = "2s"
body_idle_timeout = "1s"
max_headers = 20
"#;

#[tokio::test]
async fn the_gateway_cuts_slow_heads_and_slow_bodies_and_refuses_large_heads() {
    let cfg = GatewayConfig::parse(CONFIG, Path::new("gateway.toml")).unwrap();
    let gateway = agentmesh_gateway::start(cfg).await.unwrap();
    let addr = gateway.addr.tcp_socket_addr().expect("a TCP listener");

    let mut c = TcpStream::connect(addr).await.unwrap();
    assert!(
        trickle_head(&mut c).await < 20,
        "a trickled head kept its connection"
    );

    let mut c = TcpStream::connect(addr).await.unwrap();
    let answer = stalled_body(&mut c, "/v1/chat/completions").await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");

    let mut c = TcpStream::connect(addr).await.unwrap();
    let answer = get(&mut c, "/v1/models", &many_headers(30)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // A normal request is answered (403: no verified caller, as the gateway says without
    // its sidecar's XFCC), which proves the listener still serves.
    let mut c = TcpStream::connect(addr).await.unwrap();
    let answer = get(&mut c, "/v1/models", "").await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("no_identity"), "{answer}");
    gateway.shutdown().await;
}

#[test]
fn a_bad_limit_is_refused_by_key() {
    let text = CONFIG.replace("max_headers = 20", "max_headers = 0");
    let err = GatewayConfig::parse(&text, Path::new("gateway.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("limits.max_headers"), "{err}");
    let text = CONFIG.replace("max_headers = 20", "max_heders = 20");
    let err = GatewayConfig::parse(&text, Path::new("gateway.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_heders"), "{err}");
}
