use super::*;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, v.parse().unwrap());
    }
    h
}

#[test]
fn hosts_are_the_public_url_or_loopback_on_the_bound_port() {
    let a = Allowed::new(
        Some("https://mesh.example.com"),
        "127.0.0.1:0".parse().unwrap(),
    );
    a.bound_to(8080);
    for (host, ok) in [
        ("mesh.example.com", true),
        ("MESH.example.com", true),
        ("mesh.example.com:443", true),
        ("mesh.example.com:8443", false),
        ("127.0.0.1:8080", true),
        ("127.3.4.5:8080", true),
        ("localhost:8080", true),
        ("app.localhost:8080", true),
        ("[::1]:8080", true),
        ("127.0.0.1:9090", false),
        ("127.0.0.1", true),
        ("localhost", true),
        ("evil.example", false),
        ("evil.example:8080", false),
        ("10.0.0.1:8080", false),
        ("mesh.example.com.evil.example", false),
        ("", false),
        ("[::1", false),
        ("127.0.0.1:notaport", false),
    ] {
        assert_eq!(a.check_host(host).is_ok(), ok, "{host:?}");
    }
    let e = a.check_host("evil.example:8080").unwrap_err().to_string();
    assert!(
        e.contains("\"evil.example:8080\" is not served here"),
        "{e}"
    );
    assert!(e.contains("DNS rebinding"), "{e}");
}

#[test]
fn the_default_public_url_is_the_listen_address() {
    let a = Allowed::new(None, "127.0.0.1:0".parse().unwrap());
    a.bound_to(8080);
    assert!(a.check_host("127.0.0.1:8080").is_ok());
    assert!(a.check_host("localhost:8080").is_ok());
    assert!(a.check_host("rebound.example:8080").is_err());
}

#[test]
fn state_changes_need_the_frontends_own_origin() {
    let a = Allowed::new(
        Some("https://mesh.example.com"),
        "127.0.0.1:8080".parse().unwrap(),
    );
    for (pairs, ok) in [
        (vec![("origin", "https://mesh.example.com")], true),
        (vec![("origin", "https://mesh.example.com:443")], true),
        (vec![("origin", "http://127.0.0.1:8080")], true),
        (vec![("origin", "http://localhost:8080")], true),
        (vec![("origin", "http://mesh.example.com")], false),
        (vec![("origin", "https://evil.example")], false),
        (
            vec![("origin", "https://mesh.example.com.evil.example")],
            false,
        ),
        (vec![("origin", "http://127.0.0.1:9999")], false),
        (vec![("origin", "null")], false),
        (vec![("origin", "")], false),
        // Origin decides even when the Referer looks right.
        (
            vec![
                ("origin", "https://evil.example"),
                ("referer", "https://mesh.example.com/"),
            ],
            false,
        ),
        (vec![("referer", "https://mesh.example.com/ask?x=1")], true),
        (
            vec![("referer", "https://evil.example/mesh.example.com")],
            false,
        ),
        // No browser: nothing to ride on.
        (vec![], true),
    ] {
        assert_eq!(a.check_origin(&headers(&pairs)).is_ok(), ok, "{pairs:?}");
    }
    let e = a
        .check_origin(&headers(&[("origin", "https://evil.example")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("its Origin is \"https://evil.example\", not this frontend's origin"),
        "{e}"
    );
}
