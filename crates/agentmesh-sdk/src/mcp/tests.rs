use super::*;
use serde_json::json;

/// Header name and value pairs of one request.
type Headers = &'static [(&'static str, &'static str)];

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(*n, v.parse().unwrap());
    }
    h
}

#[test]
fn messages_are_named_for_the_rules() {
    let m = Message::parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{"q":"x"}}}"#).unwrap();
    assert_eq!(m.item(), Some(McpItem::Tool("search")));
    assert_eq!(m.id, Some(json!(1)));
    let m = Message::parse(
        br#"{"jsonrpc":"2.0","id":"a","method":"resources/read","params":{"uri":"file:///x"}}"#,
    )
    .unwrap();
    assert_eq!(m.item(), Some(McpItem::Resource("file:///x")));
    let m = Message::parse(br#"{"jsonrpc":"2.0","id":2,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"p"},"argument":{"name":"a","value":"b"}}}"#).unwrap();
    assert_eq!(m.item(), Some(McpItem::Prompt("p")));
    let m = Message::parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
    assert_eq!(m.kind, Kind::Housekeeping);
    let m = Message::parse(br#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#).unwrap();
    assert_eq!(m.kind, Kind::List(Listing::Tools));
    let m = Message::parse(br#"{"jsonrpc":"2.0","id":9,"result":{}}"#).unwrap();
    assert_eq!(m.kind, Kind::Response);
}

#[test]
fn bad_messages_are_refused_with_the_right_code() {
    let cases: &[(&[u8], StatusCode, i64, &str)] = &[
        (b"not json", StatusCode::BAD_REQUEST, PARSE_ERROR, "malformed"),
        (b"", StatusCode::BAD_REQUEST, PARSE_ERROR, "malformed"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"ping"} x"#, StatusCode::BAD_REQUEST, PARSE_ERROR, "trailing"),
        (br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#, StatusCode::BAD_REQUEST, INVALID_REQUEST, "batch"),
        (br#"[]"#, StatusCode::BAD_REQUEST, INVALID_REQUEST, "batch"),
        (br#""ping""#, StatusCode::BAD_REQUEST, INVALID_REQUEST, "not a JSON object"),
        (br#"{"id":1,"method":"ping"}"#, StatusCode::BAD_REQUEST, INVALID_REQUEST, "jsonrpc"),
        (br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#, StatusCode::BAD_REQUEST, INVALID_REQUEST, "jsonrpc"),
        (br#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#, StatusCode::BAD_REQUEST, INVALID_REQUEST, "forbids null"),
        (br#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#, StatusCode::BAD_REQUEST, INVALID_REQUEST, "integer"),
        (br#"{"jsonrpc":"2.0","id":1,"method":7}"#, StatusCode::BAD_REQUEST, INVALID_REQUEST, "string"),
        (br#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x"}}"#, StatusCode::BAD_REQUEST, INVALID_REQUEST, "needs an id"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"notifications/x"}"#, StatusCode::BAD_REQUEST, INVALID_REQUEST, "carries no id"),
        (br#"{"jsonrpc":"2.0","id":1}"#, StatusCode::BAD_REQUEST, INVALID_REQUEST, "not a response"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"admin/wipe"}"#, StatusCode::OK, METHOD_NOT_FOUND, "admin/wipe"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#, StatusCode::OK, INVALID_PARAMS, "params.name"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":["search"]}}"#, StatusCode::OK, INVALID_PARAMS, "params.name"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"s","arguments":[1]}}"#, StatusCode::OK, INVALID_PARAMS, "arguments"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[]}"#, StatusCode::OK, INVALID_PARAMS, "object"),
        // The copy a server reads is the one the rules must judge: duplicates are refused.
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","name":"delete_all"}}"#, StatusCode::BAD_REQUEST, PARSE_ERROR, "duplicate key \"name\""),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"ping","params":{"name":"x"}}"#, StatusCode::BAD_REQUEST, PARSE_ERROR, "duplicate"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"s","arguments":{"p":"/a","p":"/b"}}}"#, StatusCode::BAD_REQUEST, PARSE_ERROR, "duplicate"),
        (br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\ud800"}}"#, StatusCode::BAD_REQUEST, PARSE_ERROR, "malformed"),
        (b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\xff\"}", StatusCode::BAD_REQUEST, PARSE_ERROR, "malformed"),
    ];
    for (body, status, code, want) in cases {
        let e = Message::parse(body).unwrap_err();
        let text = e.to_string();
        assert_eq!(
            e.status_and_code(),
            (*status, *code),
            "{}: {text}",
            String::from_utf8_lossy(body)
        );
        assert!(
            text.to_lowercase().contains(&want.to_lowercase()),
            "{}: {text}",
            String::from_utf8_lossy(body)
        );
    }
    // Deeply nested input is refused, not a stack overflow.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(matches!(
        Message::parse(deep.as_bytes()),
        Err(McpError::Malformed(_))
    ));
}

#[test]
fn mcp_headers_must_match_the_body() {
    let call = Message::parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#).unwrap();
    let old = Message::parse(
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search"}}"#,
    )
    .unwrap();
    let uni = Message::parse("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"s\u{e9}arch\"}}".as_bytes()).unwrap();
    let ok: &[(&Message, Headers)] = &[
        (
            &call,
            &[("mcp-method", "tools/call"), ("mcp-name", "search")],
        ),
        (
            &call,
            &[
                ("mcp-method", "tools/call"),
                ("mcp-name", "=?base64?c2VhcmNo?="),
            ],
        ),
        (&old, &[]),
        (&old, &[("mcp-method", "tools/call")]),
        (&uni, &[("mcp-name", "=?base64?c8OpYXJjaA==?=")]),
    ];
    for (m, h) in ok {
        m.check_headers(&headers(h))
            .unwrap_or_else(|e| panic!("{h:?}: {e}"));
    }
    let bad: &[(&Message, Headers, &str)] = &[
        // The bypass this exists for: a header naming an allowed tool over a body calling another.
        (
            &call,
            &[("mcp-method", "tools/call"), ("mcp-name", "delete_all")],
            "Mcp-Name is \"delete_all\"",
        ),
        (
            &call,
            &[("mcp-method", "tools/list"), ("mcp-name", "search")],
            "Mcp-Method",
        ),
        (
            &call,
            &[("mcp-method", "Tools/Call"), ("mcp-name", "search")],
            "Mcp-Method",
        ),
        (
            &call,
            &[("mcp-method", "tools/call"), ("mcp-name", "Search")],
            "Mcp-Name",
        ),
        (
            &call,
            &[("mcp-method", "tools/call"), ("mcp-name", "search ")],
            "Mcp-Name",
        ),
        (
            &call,
            &[
                ("mcp-method", "tools/call"),
                ("mcp-name", "=?base64?ZGVsZXRlX2FsbA==?="),
            ],
            "delete_all",
        ),
        (
            &call,
            &[("mcp-method", "tools/call"), ("mcp-name", "=?base64?!!?=")],
            "not valid",
        ),
        (&call, &[("mcp-name", "search")], "Mcp-Method is missing"),
        (
            &call,
            &[("mcp-method", "tools/call")],
            "Mcp-Name is missing",
        ),
        (
            &call,
            &[
                ("mcp-method", "tools/call"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "search"),
            ],
            "more than once",
        ),
        (
            &call,
            &[
                ("mcp-method", "tools/call"),
                ("mcp-name", "search"),
                ("mcp-name", "search"),
            ],
            "more than once",
        ),
        (
            &old,
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
            ],
            "Mcp-Name is missing",
        ),
        (&old, &[("mcp-method", "ping")], "Mcp-Method"),
        (&old, &[("mcp-name", "other")], "Mcp-Name"),
    ];
    for (m, h, want) in bad {
        let e = m.check_headers(&headers(h)).unwrap_err();
        assert_eq!(
            e.status_and_code(),
            (StatusCode::BAD_REQUEST, HEADER_MISMATCH)
        );
        assert!(e.to_string().contains(want), "{h:?}: {e}");
    }
}

fn keep_search() -> Keep {
    Arc::new(|item| item == McpItem::Tool("search"))
}

#[test]
fn list_answers_are_filtered_in_json() {
    let mut msg = json!({"jsonrpc":"2.0","id":4,"result":{"tools":[
        {"name":"search"},{"name":"delete_all"},{"name":7},{"title":"no name"}
    ],"nextCursor":"c"}});
    assert_eq!(
        filter_answer(&mut msg, &json!(4), Listing::Tools, &keep_search()),
        3
    );
    assert_eq!(msg["result"]["tools"], json!([{"name":"search"}]));
    assert_eq!(msg["result"]["nextCursor"], "c");
    // Another id, or an error, is not touched.
    let mut other = json!({"jsonrpc":"2.0","id":5,"result":{"tools":[{"name":"delete_all"}]}});
    assert_eq!(
        filter_answer(&mut other, &json!(4), Listing::Tools, &keep_search()),
        0
    );
    let mut prompts = json!({"jsonrpc":"2.0","id":"p","result":{"prompts":[{"name":"search"}]}});
    assert_eq!(
        filter_answer(&mut prompts, &json!("p"), Listing::Prompts, &keep_search()),
        1
    );
}

#[tokio::test]
async fn list_answers_are_filtered_in_sse_across_chunk_boundaries() {
    let answer =
        r#"{"jsonrpc":"2.0","id":4,"result":{"tools":[{"name":"search"},{"name":"delete_all"}]}}"#;
    let sse = format!(
        ": comment\n\nevent: message\nid: e1\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{{}}}}\n\nevent: message\r\ndata: {answer}\r\n\r\n"
    );
    // Cut into 7-byte chunks, so events and lines span chunks.
    let chunks: Vec<Result<Bytes, std::convert::Infallible>> = sse
        .as_bytes()
        .chunks(7)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let out = filter_sse(
        futures::stream::iter(chunks),
        json!(4),
        Listing::Tools,
        keep_search(),
        1 << 20,
    );
    let out: Vec<_> = futures::StreamExt::collect(out).await;
    let text: String = out
        .into_iter()
        .map(|b| String::from_utf8(b.unwrap().to_vec()).unwrap())
        .collect();
    assert!(
        text.starts_with(": comment\n\nevent: message\nid: e1\ndata: {\"jsonrpc\""),
        "{text}"
    );
    assert!(text.contains("notifications/progress"), "{text}");
    assert!(text.contains(r#""tools":[{"name":"search"}]"#), "{text}");
    assert!(!text.contains("delete_all"), "{text}");
    assert!(text.ends_with("\n\n"), "{text:?}");

    // A data event that is not JSON is dropped, and an oversized event ends the stream.
    let chunks: Vec<Result<Bytes, std::convert::Infallible>> =
        vec![Ok(Bytes::from_static(b"data: {\"tools\": [\n\ndata: x"))];
    let out: Vec<_> = futures::StreamExt::collect(filter_sse(
        futures::stream::iter(chunks),
        json!(4),
        Listing::Tools,
        keep_search(),
        1 << 20,
    ))
    .await;
    assert!(out.is_empty(), "{out:?}");
    let chunks: Vec<Result<Bytes, std::convert::Infallible>> = vec![
        Ok(Bytes::from(vec![b'a'; 100])),
        Ok(Bytes::from(vec![b'a'; 100])),
    ];
    let out: Vec<_> = futures::StreamExt::collect(filter_sse(
        futures::stream::iter(chunks),
        json!(4),
        Listing::Tools,
        keep_search(),
        150,
    ))
    .await;
    assert!(out.is_empty());
}

#[test]
fn content_types() {
    assert!(is_json(Some("application/json")));
    assert!(is_json(Some("Application/JSON; charset=utf-8")));
    assert!(!is_json(Some("text/plain")));
    assert!(!is_json(Some("application/json-seq")));
    assert!(!is_json(None));
}
