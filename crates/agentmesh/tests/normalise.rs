//! Normalise before deciding, against real processes: `agentmesh server run`, `agentmesh node
//! run` and `agentmesh proxy run` (with real SVIDs from the node), an app in this test process
//! that records every request it receives, and hyper clients speaking HTTP/1.1 and HTTP/2
//! through the caller's TCP upstream, so the destination's inbound proxy parses the bytes the
//! client wrote.
//!
//! Each attempt is a way to spell a request so that a rule misses it: another path spelling
//! of a denied prefix, a repeated or non-ASCII header value, an underscored header name.

#[path = "support/mesh.rs"]
mod mesh;
#[path = "support/sidecar.rs"]
mod sidecar;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh::*;
use sidecar::*;
use tokio::net::{TcpListener, TcpStream};

/// One request as the app received it.
#[derive(Debug, Clone)]
struct Seen {
    path_and_query: String,
    header_names: Vec<String>,
}

/// An HTTP app that records each request and answers 200.
#[derive(Clone)]
struct App {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl App {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let app = App {
            addr: listener.local_addr().expect("addr"),
            seen: Arc::default(),
        };
        let seen = app.seen.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let seen = seen.clone();
                let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    seen.lock().expect("lock").push(Seen {
                        path_and_query: req
                            .uri()
                            .path_and_query()
                            .map(ToString::to_string)
                            .unwrap_or_default(),
                        header_names: req.headers().keys().map(|n| n.to_string()).collect(),
                    });
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"app"),
                        )))
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), service)
                        .await;
                });
            }
        });
        app
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

/// One GET over a fresh connection, HTTP/2 (prior knowledge) or HTTP/1.1; header values are
/// raw bytes so non-UTF-8 ones can be sent. `(status, body)`.
async fn get(
    addr: SocketAddr,
    h2: bool,
    path: &str,
    headers: &[(&str, &[u8])],
) -> Result<(u16, String), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let io = TokioIo::new(tcp);
    let mut req = hyper::Request::get(format!("http://svc{path}"));
    if !h2 {
        req = req.header("host", "svc");
    }
    for (n, v) in headers {
        req = req.header(
            *n,
            hyper::header::HeaderValue::from_bytes(v).map_err(|e| e.to_string())?,
        );
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

const PROTOCOLS: [(bool, &str); 2] = [(false, "HTTP/1.1"), (true, "HTTP/2")];

/// The same rules for every destination: `/admin` denied, header deny rules, an allow on
/// `/h/` that needs `x-role: reader`, and an allow on `/v1/`; nothing else is allowed.
fn rules(destination: &str) -> String {
    format!(
        r#"{{"source":"a","destination":"{destination}","action":"allow","permissions":[
        {{"action":"deny","http":{{"path_prefix":"/admin"}}}},
        {{"action":"deny","http":{{"headers":[{{"name":"x-debug","present":true}}]}}}},
        {{"action":"deny","http":{{"headers":[{{"name":"x-env","exact":"dev"}}]}}}},
        {{"action":"deny","http":{{"headers":[{{"name":"x-team","prefix":"ops-"}}]}}}},
        {{"action":"deny","http":{{"headers":[{{"name":"x-ver","regex":"v[0-9]+-beta"}}]}}}},
        {{"http":{{"path_prefix":"/h/","headers":[{{"name":"x-role","exact":"reader"}}]}}}},
        {{"http":{{"path_prefix":"/v1/"}}}}
    ]}}"#
    )
}

/// A mesh where `a` reaches each of `destinations` (service, extra `[inbound]` keys) through a
/// TCP upstream, under [`rules`]. Returns the mesh, the proxies (kept alive) and, per
/// destination, its upstream address on `a` and its app.
async fn mesh_with(
    destinations: &[(&str, &str)],
) -> (Mesh, Vec<ProxyProc>, Vec<(SocketAddr, App)>) {
    let mesh = Mesh::start();
    register(&mesh, "a", None);
    let mut proxies = Vec::new();
    let mut apps = Vec::new();
    for (service, extra) in destinations {
        register(&mesh, service, None);
        let app = App::start().await;
        let listen = loopback_addr();
        let toml = format!(
            "service = \"{service}\"\n[inbound]\nlisten = \"{listen}\"\napp = \"{}\"\nprotocol = \"http\"\n{extra}\n",
            app.addr
        );
        proxies.push(start_proxy_from_toml(&mesh, service, &toml, Some(listen), vec![]).await);
        apps.push(app);
        let file = mesh.dir.join(format!("rules-{service}.json"));
        std::fs::write(&file, rules(service)).expect("write rules");
        mesh.cli_ok(&[
            "intention",
            "create",
            "--file",
            file.to_str().expect("utf-8"),
        ]);
    }
    let upstreams: Vec<(&str, &str)> = destinations.iter().map(|(s, _)| (*s, "tcp")).collect();
    let a = start_proxy(&mesh, "a", None, &upstreams).await;
    let wired: Vec<(SocketAddr, App)> = a.upstreams.iter().copied().zip(apps).collect();
    for (addr, _) in &wired {
        let addr = *addr;
        eventually("a reaches its destination's /v1/", || async move {
            matches!(get(addr, false, "/v1/ready", &[]).await, Ok((200, _)))
        })
        .await;
    }
    proxies.push(a);
    (mesh, proxies, wired)
}

/// Denied `/admin` spelt every way a path can be spelt, over HTTP/1.1 and HTTP/2: nothing
/// reaches the app; allowed paths reach it in their normalised form, query as sent. The
/// escaped-slash setting decides between refusing, decoding and keeping; `intention check`
/// explains the normalised path.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn path_spellings_never_pass_a_deny_rule_over_http1_and_http2() {
    let (mesh, proxies, wired) = mesh_with(&[
        ("b", ""),
        (
            "c",
            "path_with_escaped_slashes_action = \"unescape_and_forward\"",
        ),
        ("d", "path_with_escaped_slashes_action = \"keep_unchanged\""),
    ])
    .await;
    let [(to_b, app_b), (to_c, app_c), (to_d, app_d)] = &wired[..] else {
        unreachable!("three destinations")
    };
    // Spellings of /admin, denied by permission 1 on every destination.
    let denied = [
        "/admin",
        "//admin",
        "///admin/x",
        "/v1/../admin",
        "/v1/./../admin",
        "/v1//..//admin",
        "/%61dmin",
        "/%61%64%6D%69%6E",
        "/v1/%2e%2e/admin",
        "/v1/%2E%2e/admin",
        "/v1/.%2E/admin",
        "/V1/../admin",
        "/V1/%2E%2E/admin?x=/v1/",
    ];
    // Refused (400) under the default reject_request: escaped slashes, backslashes, and a
    // path above the root (refused under every setting).
    let escaped = [
        "/v1%2F..%2Fadmin",
        "/v1%2f..%2fadmin",
        "/v1%5C..%5Cadmin",
        "/v1%5c..%5cadmin",
        "/v1\\..\\admin",
    ];
    for (h2, proto) in PROTOCOLS {
        for (to, app) in [(to_b, app_b), (to_c, app_c), (to_d, app_d)] {
            let before = app.seen().len();
            for path in denied {
                let (status, body) = get(*to, h2, path, &[]).await.expect(path);
                assert_eq!(status, 403, "{proto} {path}: {body}");
                assert!(
                    body.contains("permission 1 of intention"),
                    "{proto} {path}: {body}"
                );
            }
            let (status, body) = get(*to, h2, "/../admin", &[]).await.expect("above root");
            assert_eq!(status, 400, "{proto}: {body}");
            assert!(body.contains("climbs above"), "{proto}: {body}");
            assert_eq!(
                app.seen().len(),
                before,
                "{proto}: a denied spelling reached the app"
            );
        }
        for path in escaped {
            let before = (app_b.seen().len(), app_c.seen().len());
            // reject_request (the default): 400, naming the setting.
            let (status, body) = get(*to_b, h2, path, &[]).await.expect(path);
            assert_eq!(status, 400, "{proto} {path}: {body}");
            assert!(
                body.contains("path_with_escaped_slashes_action"),
                "{proto} {path}: {body}"
            );
            // unescape_and_forward: decoded, so it is /admin and permission 1 denies it.
            let (status, body) = get(*to_c, h2, path, &[]).await.expect(path);
            assert_eq!(status, 403, "{proto} {path}: {body}");
            assert_eq!(
                (app_b.seen().len(), app_c.seen().len()),
                before,
                "{proto} {path} reached an app"
            );
        }
        // keep_unchanged: one segment, not under /v1/, so no allow matches it either.
        let (status, _) = get(*to_d, h2, "/v1%2F..%2Fadmin", &[]).await.expect("keep");
        assert_eq!(status, 403, "{proto}");

        // Allowed paths still work, and the app receives the normalised form.
        let allowed: [(&SocketAddr, &App, &str, &str); 6] = [
            (
                to_b,
                app_b,
                "/v1//models/./x/../y?q=/../admin",
                "/v1/models/y?q=/../admin",
            ),
            (to_b, app_b, "/v1/%6Dodels", "/v1/models"),
            (to_b, app_b, "/admin/../v1/%7euser/", "/v1/~user/"),
            (to_b, app_b, "/v1/a%3fb", "/v1/a%3Fb"),
            (to_c, app_c, "/v1%2Fmodels%5Cx", "/v1/models/x"),
            (to_d, app_d, "/v1/a%2fb", "/v1/a%2Fb"),
        ];
        for (to, app, path, forwarded) in allowed {
            let (status, body) = get(*to, h2, path, &[]).await.expect(path);
            assert_eq!(status, 200, "{proto} {path}: {body}");
            let last = app.seen().last().cloned().expect("the app saw it");
            assert_eq!(last.path_and_query, forwarded, "{proto} {path}");
        }
    }
    // Nothing the app ever received is under /admin.
    for app in [app_b, app_c, app_d] {
        for seen in app.seen() {
            assert!(
                !seen.path_and_query.starts_with("/admin"),
                "{} reached the app",
                seen.path_and_query
            );
        }
    }
    // The access log shows the path that was decided, and the refusal of the raw one.
    let b_log = proxies[0].access();
    assert!(
        b_log
            .iter()
            .any(|l| l["path"] == "/admin" && l["decision"] == "deny" && l["status"] == 403),
        "no deny of the normalised /admin in b's access log"
    );
    assert!(
        b_log.iter().any(|l| l["status"] == 400
            && l["decision"] == "deny"
            && l["intention"].is_null()
            && l["reason"]
                .as_str()
                .is_some_and(|r| r.contains("refused before any intention"))),
        "no logged 400 refusal in b's access log"
    );
    // intention check decides on the normalised path too, and says so.
    let out = mesh.cli(&["intention", "check", "a", "b", "--path", "/v1/%2e%2e/admin"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("permission 1") && text.contains("normalised to \"/admin\""),
        "{text}"
    );
    let out = mesh.cli(&["intention", "check", "a", "b", "--path", "/v1%2Fx"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !out.status.success() && text.contains("escaped slash"),
        "{text}"
    );
}

/// Header rules read every value of a repeated header and fail closed on values they cannot
/// read (non-ASCII, non-UTF-8), over HTTP/1.1 and HTTP/2; underscored header names are
/// refused, dropped or passed as `headers_with_underscores_action` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn header_values_and_underscored_names_cannot_slip_past_header_rules() {
    let (_mesh, _proxies, wired) = mesh_with(&[
        ("b", ""),
        ("c", "headers_with_underscores_action = \"drop_header\""),
        ("d", "headers_with_underscores_action = \"allow\""),
    ])
    .await;
    let [(to_b, app_b), (to_c, app_c), (to_d, app_d)] = &wired[..] else {
        unreachable!("three destinations")
    };
    type Headers = &'static [(&'static str, &'static [u8])];
    // (path, headers, expected status, why)
    let cases: &[(&str, Headers, u16, &str)] = &[
        ("/v1/x", &[], 200, "no header rule applies"),
        ("/v1/x", &[("x-debug", b"1")], 403, "present"),
        ("/v1/x", &[("x-debug", b"")], 403, "present, empty"),
        (
            "/v1/x",
            &[("x-debug", b"\xff\xfe")],
            403,
            "present, non-UTF-8",
        ),
        (
            "/v1/x",
            &[("x-debug", b"\xc3\xa9")],
            403,
            "present, non-ASCII",
        ),
        ("/v1/x", &[("x-env", b"prod")], 200, "exact, another value"),
        ("/v1/x", &[("x-env", b"dev")], 403, "exact"),
        (
            "/v1/x",
            &[("x-env", b"prod"), ("x-env", b"dev")],
            403,
            "exact, dev second",
        ),
        (
            "/v1/x",
            &[("x-env", b"dev"), ("x-env", b"prod")],
            403,
            "exact, dev first",
        ),
        ("/v1/x", &[("x-env", b"d\xe9v")], 403, "exact, unreadable"),
        (
            "/v1/x",
            &[("x-team", b"ai-x")],
            200,
            "prefix, another value",
        ),
        (
            "/v1/x",
            &[("x-team", b"ai-x"), ("x-team", b"ops-root")],
            403,
            "prefix, second",
        ),
        (
            "/v1/x",
            &[("x-team", b"ops-\xc3\xa9")],
            403,
            "prefix, non-ASCII",
        ),
        ("/v1/x", &[("x-ver", b"v1")], 200, "regex, no match"),
        (
            "/v1/x",
            &[("x-ver", b"v1"), ("x-ver", b"v2-beta")],
            403,
            "regex, second",
        ),
        (
            "/v1/x",
            &[("x-ver", b"v2-beta\x80")],
            403,
            "regex, unreadable",
        ),
        ("/h/x", &[("x-role", b"reader")], 200, "allow exact"),
        (
            "/h/x",
            &[("x-role", b"reader"), ("x-role", b"admin")],
            403,
            "allow exact, not all",
        ),
        (
            "/h/x",
            &[("x-role", b"admin"), ("x-role", b"reader")],
            403,
            "allow exact, not first",
        ),
        (
            "/h/x",
            &[("x-role", b"reader\xff")],
            403,
            "allow exact, unreadable",
        ),
        (
            "/h/x",
            &[("x-role", b"read\xc3\xa9r")],
            403,
            "allow exact, non-ASCII",
        ),
    ];
    for (h2, proto) in PROTOCOLS {
        for (path, headers, status, why) in cases {
            let before = app_b.seen().len();
            let (got, body) = get(*to_b, h2, path, headers).await.expect(why);
            assert_eq!(got, *status, "{proto} {path} {headers:?}: {why}: {body}");
            let reached = app_b.seen().len() - before;
            assert_eq!(reached, usize::from(*status == 200), "{proto}: {why}");
        }
        // An underscored spelling of a denied header, under each setting.
        let underscored: &[(&str, &[u8])] = &[("x_debug", b"1"), ("x-ok", b"1")];
        let before = app_b.seen().len();
        let (status, body) = get(*to_b, h2, "/v1/x", underscored).await.expect("reject");
        assert_eq!(status, 400, "{proto}: {body}");
        assert!(
            body.contains("x_debug") && body.contains("headers_with_underscores_action"),
            "{proto}: {body}"
        );
        assert_eq!(
            app_b.seen().len(),
            before,
            "{proto}: reject_request reached the app"
        );

        let (status, body) = get(*to_c, h2, "/v1/x", underscored).await.expect("drop");
        assert_eq!(status, 200, "{proto}: {body}");
        let names = app_c.seen().last().cloned().expect("seen").header_names;
        assert!(
            names.contains(&"x-ok".to_owned()) && !names.contains(&"x_debug".to_owned()),
            "{proto}: drop_header forwarded {names:?}"
        );

        let (status, body) = get(*to_d, h2, "/v1/x", underscored).await.expect("allow");
        assert_eq!(status, 200, "{proto}: {body}");
        let names = app_d.seen().last().cloned().expect("seen").header_names;
        assert!(
            names.contains(&"x_debug".to_owned()),
            "{proto}: allow dropped it: {names:?}"
        );
    }
}
