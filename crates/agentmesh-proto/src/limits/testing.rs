//! Clients that misbehave on purpose, for listener-limit tests: each speaks raw HTTP/1.1 on
//! any stream and reports what the server did. None asserts on how long anything took.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long a test waits for a server to close before calling it a hang.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Reads until the server closes (EOF or reset) and returns what arrived before.
///
/// # Panics
/// The server keeps the connection open for [`PATIENCE`].
pub async fn read_to_close<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server never closed the connection"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends a request head one header line every 500 ms (each line well inside any per-read
/// timeout) and returns how many of 20 lines went out before the server closed; 20 means
/// it never closed early. The server's answer, if any, must not be a 200.
///
/// # Panics
/// The request line cannot be written, or a trickled head was answered with 200.
pub async fn trickle_head<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> usize {
    s.write_all(b"GET / HTTP/1.1\r\nhost: svc\r\n")
        .await
        .expect("request line");
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if s.write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
            .await
            .is_err()
            || s.flush().await.is_err()
        {
            return i;
        }
    }
    // Writes can land in a closed socket's buffer; the close shows on read.
    let rest = read_to_close(s).await;
    assert!(
        !rest.contains(" 200 "),
        "a trickled head was answered: {rest}"
    );
    20
}

/// A `POST path` that declares 100 body bytes and stops after 10; returns what came back
/// before the server closed.
///
/// # Panics
/// The request cannot be written.
pub async fn stalled_body<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, path: &str) -> String {
    s.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nhost: svc\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"a\":\"012"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    s.flush().await.expect("flush");
    read_to_close(s).await
}

/// `GET path` with `extra` header lines (each ending in `\r\n`) and `connection: close`;
/// returns the whole answer.
///
/// # Panics
/// The request cannot be written.
pub async fn get<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, path: &str, extra: &str) -> String {
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n{extra}\r\n").as_bytes(),
    )
    .await
    .expect("write");
    s.flush().await.expect("flush");
    read_to_close(s).await
}

/// `count` distinct header lines, to go over `max_headers`.
pub fn many_headers(count: usize) -> String {
    (0..count).map(|i| format!("x-h{i}: 1\r\n")).collect()
}
