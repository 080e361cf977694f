use std::sync::Mutex as StdMutex;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;

use super::*;

fn parse(text: &str) -> Result<ListenerLimits, toml::de::Error> {
    toml::from_str(text)
}

#[test]
fn an_empty_table_is_the_documented_defaults() {
    let l = parse("").unwrap();
    assert_eq!(l, ListenerLimits::default());
    assert_eq!(l.header_timeout, Duration::from_secs(10));
    assert_eq!(l.body_idle_timeout, Duration::from_secs(30));
    assert_eq!(l.handshake_timeout, Duration::from_secs(10));
    assert_eq!(l.max_header_bytes, 65536);
    assert_eq!(l.max_headers, 100);
    assert!(l.check().is_ok());
}

#[test]
fn keys_parse_and_bad_values_are_refused_by_name() {
    let l = parse("header_timeout = \"2s\"\nbody_idle_timeout = \"500ms\"\nmax_connections = 7")
        .unwrap();
    assert_eq!(l.header_timeout, Duration::from_secs(2));
    assert_eq!(l.body_idle_timeout, Duration::from_millis(500));
    assert_eq!(l.max_connections, 7);

    let err = parse("header_timout = \"2s\"").unwrap_err().to_string();
    assert!(err.contains("unknown field `header_timout`"), "{err}");
    let err = parse("header_timeout = \"soon\"").unwrap_err().to_string();
    assert!(err.contains("not a duration like 10s"), "{err}");

    let cases = [
        ("header_timeout = \"0s\"", "limits.header_timeout"),
        ("max_header_bytes = 4096", "limits.max_header_bytes"),
        ("max_headers = 0", "limits.max_headers"),
        ("max_connections = 0", "limits.max_connections"),
        (
            "max_connections_per_caller = 0",
            "limits.max_connections_per_caller",
        ),
        (
            "max_streams_per_connection = 0",
            "limits.max_streams_per_connection",
        ),
    ];
    for (text, key) in cases {
        let err = parse(text).unwrap().check().unwrap_err().to_string();
        assert!(err.starts_with(key), "{text}: {err}");
    }
}

#[test]
fn the_limiter_bounds_callers_and_the_total_and_frees_on_drop() {
    let limiter = ConnectionLimiter::new(&ListenerLimits {
        max_connections: 3,
        max_connections_per_caller: 2,
        ..ListenerLimits::default()
    });
    let a = Caller::Spiffe("spiffe://td/a".into());
    let b = Caller::Uid(1000);
    let a1 = limiter.admit_caller(a.clone()).unwrap();
    let _a2 = limiter.admit_caller(a.clone()).unwrap();
    assert_eq!(
        limiter.admit_caller(a.clone()).unwrap_err(),
        Cut::CallerLimit
    );
    // The refused one gave its place in the total back.
    assert_eq!(limiter.open(), 2);
    let _b1 = limiter.admit_caller(b.clone()).unwrap();
    assert_eq!(limiter.admit().unwrap_err(), Cut::ConnectionLimit);
    drop(a1);
    assert_eq!(limiter.open_by(&a), 1);
    let mut pending = limiter.admit().unwrap();
    assert_eq!(pending.identify(b.clone()), Ok(()));
    assert_eq!(limiter.open_by(&b), 2);
}

/// A server on loopback that serves every connection with `limits` and records each cut.
async fn server(limits: ListenerLimits) -> (std::net::SocketAddr, Arc<StdMutex<Vec<Cut>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cuts = Arc::new(StdMutex::new(Vec::new()));
    let limits = Arc::new(limits);
    let seen = cuts.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            let on_cut: OnCut = Arc::new(move |c| seen.lock().unwrap().push(c));
            let service = hyper::service::service_fn(|req: Request<RequestBody>| async move {
                let body = req.into_body().collect().await?.to_bytes();
                Ok::<_, BodyError>(Response::new(Full::new(Bytes::from(format!(
                    "got {} bytes",
                    body.len()
                )))))
            });
            tokio::spawn(serve_http(
                tcp,
                service,
                limits.clone(),
                on_cut,
                std::future::pending(),
            ));
        }
    });
    (addr, cuts)
}

fn small() -> ListenerLimits {
    ListenerLimits {
        header_timeout: Duration::from_secs(2),
        body_idle_timeout: Duration::from_secs(1),
        max_headers: 20,
        max_header_bytes: MIN_HEADER_BYTES,
        ..ListenerLimits::default()
    }
}

/// Reads until the server closes; what it sent before.
async fn read_to_close(tcp: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn get(addr: std::net::SocketAddr, extra: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{extra}\r\n").as_bytes(),
    )
    .await
    .unwrap();
    read_to_close(&mut tcp).await
}

#[tokio::test]
async fn a_head_trickled_one_line_a_second_is_cut_at_the_head_deadline() {
    let (addr, cuts) = server(small()).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // Each line arrives well inside any per-read timeout; only a deadline on the whole head
    // stops this. Twenty lines would take 20 s.
    let mut sent = 0;
    let mut closed = false;
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if tcp
            .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        sent += 1;
    }
    if !closed {
        let rest = read_to_close(&mut tcp).await;
        assert!(!rest.contains("200 OK"), "{rest}");
    }
    assert!(sent < 20, "the server kept a trickling head open");
    assert!(cuts.lock().unwrap().contains(&Cut::HeaderTimeout));
    // A normal request still works.
    assert!(get(addr, "").await.contains("200 OK"));
}

#[tokio::test]
async fn a_connection_that_never_sends_a_byte_is_cut() {
    let (addr, cuts) = server(small()).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    assert_eq!(read_to_close(&mut tcp).await, "");
    assert_eq!(*cuts.lock().unwrap(), vec![Cut::HeaderTimeout]);
}

#[tokio::test]
async fn a_body_that_stops_sending_is_cut_at_the_idle_timeout() {
    let (addr, cuts) = server(small()).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let answer = read_to_close(&mut tcp).await;
    assert!(!answer.contains("got 100 bytes"), "{answer}");
    assert_eq!(*cuts.lock().unwrap(), vec![Cut::BodyIdleTimeout]);
    // A slow body that keeps sending within the idle timeout is fine.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"POST / HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 4\r\n\r\n")
        .await
        .unwrap();
    for b in [b"a", b"b", b"c", b"d"] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        tcp.write_all(b).await.unwrap();
    }
    assert!(read_to_close(&mut tcp).await.contains("got 4 bytes"));
}

#[tokio::test]
async fn too_many_or_too_large_headers_get_431_and_are_counted() {
    let (addr, cuts) = server(small()).await;
    let many: String = (0..30).map(|i| format!("x-h{i}: 1\r\n")).collect();
    let answer = get(addr, &many).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let large = format!("x-big: {}\r\n", "a".repeat(MIN_HEADER_BYTES * 2));
    let answer = get(addr, &large).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(
        *cuts.lock().unwrap(),
        vec![Cut::HeadersTooLarge, Cut::HeadersTooLarge]
    );
    // Under the limits is fine.
    assert!(get(addr, "x-a: 1\r\nx-b: 2\r\n").await.contains("200 OK"));
}

#[tokio::test]
async fn http2_heads_over_the_count_get_431() {
    let (addr, cuts) = server(small()).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder().uri("http://x/");
    for i in 0..30 {
        req = req.header(format!("x-h{i}"), "1");
    }
    let resp = send
        .send_request(req.body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(*cuts.lock().unwrap(), vec![Cut::HeadersTooLarge]);
    let ok = send
        .send_request(Request::get("http://x/").body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_unix_client_that_never_sends_its_preface_is_cut_and_each_uid_is_bounded() {
    let dir = std::env::temp_dir().join(format!("am-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let limits = ListenerLimits {
        header_timeout: Duration::from_secs(1),
        max_connections_per_caller: 2,
        ..ListenerLimits::default()
    };
    let mut incoming = unix_incoming(listener, &limits, "test socket");
    // Play the server: hold every admitted connection and keep reading it.
    tokio::spawn(async move {
        use tokio_stream::StreamExt;
        while let Some(Ok(mut conn)) = incoming.next().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    let mut first = UnixStream::connect(&path).await.unwrap();
    let mut second = UnixStream::connect(&path).await.unwrap();
    // Over this uid's share: closed at once.
    let mut third = UnixStream::connect(&path).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(third.read_to_end(&mut buf).await.unwrap_or(0), 0);
    // Silent ones are cut at the deadline.
    assert_eq!(first.read_to_end(&mut buf).await.unwrap_or(0), 0);
    assert_eq!(second.read_to_end(&mut buf).await.unwrap_or(0), 0);
    // And their places are free again.
    let mut fourth = UnixStream::connect(&path).await.unwrap();
    fourth
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // It sent its preface: still open after the deadline.
    let mut one = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(2500), fourth.read(&mut one))
            .await
            .is_err()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads until `want` has arrived.
async fn read_until(tcp: &mut TcpStream, want: &str) {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&out).contains(want) {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before {want:?}");
        out.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn hyper_bounds_every_later_head_too_and_an_idle_keep_alive_is_closed_quietly() {
    let (addr, cuts) = server(small()).await;
    // After a fast first request only hyper's own deadline is armed: it must bound the
    // whole second head, not each read.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut tcp, "got 0 bytes").await;
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut sent = 0;
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if tcp
            .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            break;
        }
        sent += 1;
    }
    if sent == 20 {
        let rest = read_to_close(&mut tcp).await;
        assert!(!rest.contains("200 OK"), "{rest}");
    }
    assert!(sent < 20, "hyper reset its head deadline on each read");
    assert_eq!(*cuts.lock().unwrap(), vec![Cut::HeaderTimeout]);

    // A keep-alive connection that just sits idle is closed too, but that is no attack:
    // nothing more is reported.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut tcp, "got 0 bytes").await;
    assert_eq!(read_to_close(&mut tcp).await, "");
    assert_eq!(*cuts.lock().unwrap(), vec![Cut::HeaderTimeout]);
}

#[tokio::test]
async fn an_http2_body_that_stops_sending_ends_its_stream_not_the_connection() {
    let (addr, cuts) = server(small()).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake::<
        _,
        _,
        http_body_util::StreamBody<_>,
    >(TokioExecutor::new(), TokioIo::new(tcp))
    .await
    .unwrap();
    tokio::spawn(conn);
    // A body that sends one chunk and then nothing, ever.
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
    tx.send(Ok(Frame::data(Bytes::from_static(b"0123456789"))))
        .await
        .unwrap();
    let stalled = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let req = Request::post("http://x/").body(stalled).unwrap();
    let answer = send.send_request(req).await;
    // The handler saw the body fail; the stream ends without the whole body being answered.
    if let Ok(resp) = answer {
        let body = resp.into_body().collect().await;
        assert!(
            body.map(|b| b.to_bytes()).ok().as_deref() != Some(&b"got 10 bytes"[..]),
            "a stalled body was answered as complete"
        );
    }
    assert_eq!(*cuts.lock().unwrap(), vec![Cut::BodyIdleTimeout]);
    // The same connection still serves another stream.
    let (tx2, rx2) = mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
    drop(tx2);
    let empty = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx2));
    let ok = send
        .send_request(Request::get("http://x/").body(empty).unwrap())
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    drop(tx);
}

/// A self-signed `localhost` certificate: the server's TLS 1.3 config, and a client config
/// that trusts it.
fn self_signed() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

#[tokio::test]
async fn a_tls_client_that_stalls_its_handshake_or_preface_is_cut_and_each_caller_is_bounded() {
    let (server_tls, client_tls) = self_signed();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = ListenerLimits {
        handshake_timeout: Duration::from_secs(1),
        header_timeout: Duration::from_secs(1),
        max_connections_per_caller: 1,
        ..ListenerLimits::default()
    };
    let mut incoming = tls_incoming(
        listener,
        "test TLS listener",
        limits,
        move || Some(server_tls.clone()),
        |_, remote: std::net::SocketAddr| Some((remote, Caller::Ip(remote.ip()))),
    );
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    // Play the server: note who each admitted connection is, hold it and keep reading it.
    tokio::spawn(async move {
        use tokio_stream::StreamExt;
        use tonic::transport::server::Connected;
        while let Some(Ok(mut conn)) = incoming.next().await {
            let _ = seen_tx.send(conn.connect_info());
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    let connector = tokio_rustls::TlsConnector::from(client_tls);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let dial = || async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        connector.connect(name.clone(), tcp).await.unwrap()
    };
    let mut buf = Vec::new();

    // Never starts its handshake: closed at the handshake deadline, never handed on.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert_eq!(silent.read_to_end(&mut buf).await.unwrap_or(0), 0);
    assert!(
        seen.try_recv().is_err(),
        "a connection without a handshake was served"
    );

    // Finishes its handshake and sends nothing: handed on with its address, then cut at the
    // preface deadline. While it is open, a second one from the same caller is over the
    // caller's share and is closed at once.
    let mut quiet = dial().await;
    let local = quiet.get_ref().0.local_addr().unwrap();
    assert_eq!(seen.recv().await, Some(local));
    let mut second = dial().await;
    assert_eq!(second.read_to_end(&mut buf).await.unwrap_or(0), 0);
    assert_eq!(quiet.read_to_end(&mut buf).await.unwrap_or(0), 0);
    assert!(buf.is_empty());

    // Its place is free again, and one that sends its preface stays open past the deadline.
    let mut talking = dial().await;
    talking
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut one = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(2500), talking.read(&mut one))
            .await
            .is_err(),
        "a connection that sent its preface was cut"
    );
}
