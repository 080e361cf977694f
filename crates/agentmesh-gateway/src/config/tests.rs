use super::*;

const GOOD: &str = r#"
listen = "127.0.0.1:8090"
[[provider]]
name = "local"
kind = "offline"
[[model]]
name = "llama3.2"
providers = ["local"]
[[caller]]
id = "executor"
models = ["llama3.2"]
tokens_per_window = 1000
window = "10m"
max_request_bytes = 4096
[dlp]
card = "block"
"#;

#[test]
fn parses_the_documented_shape() {
    let c = GatewayConfig::parse(GOOD, Path::new("g.toml")).unwrap();
    assert_eq!(c.callers[0].window, Some(Duration::from_secs(600)));
    assert_eq!(c.dlp.card, crate::dlp::Action::Block);
    assert_eq!(c.max_body(), 4096);
}

#[test]
fn refuses_bad_files_with_one_clear_error() {
    let cases: &[(&str, &str)] = &[
        ("listen = \"127.0.0.1:1\"\nbogus = 1\n", "unknown field"),
        ("listen = \"0.0.0.0:8090\"\n", "loopback"),
        (
            "listen = \"127.0.0.1:1\"\n[[model]]\nname = \"m\"\nproviders = [\"nope\"]\n",
            "not defined",
        ),
        (
            "listen = \"127.0.0.1:1\"\n[[caller]]\nid = \"x\"\nmodels = [\"ghost\"]\n",
            "not defined",
        ),
        (
            "listen = \"127.0.0.1:1\"\n[[caller]]\nid = \"x\"\nmodels = []\nwindow = \"soon\"\n",
            "window",
        ),
        (
            "listen = \"127.0.0.1:1\"\n[dlp]\nemail = \"shred\"\n",
            "unknown variant",
        ),
        (
            "listen = \"127.0.0.1:1\"\n[[provider]]\nname = \"o\"\nkind = \"ollama\"\n",
            "needs url",
        ),
        ("listen = [", "unclosed array"),
        (
            "listen = \"127.0.0.1:1\"\n[[provider]]\nname = \"p\"\nkind = \"claude\"\n",
            "unknown variant `claude`, expected one of `offline`, `ollama`, `openai`, `gemini`",
        ),
        (
            &provider("kind = \"ollama\"\nurl = \"http://h:1\"\ntimeout = \"soon\""),
            "timeout \"soon\" is not a duration like 30s",
        ),
        (
            &provider("kind = \"ollama\"\nurl = \"http://h:1\"\ncircuit_cooldown = 30"),
            "invalid type: integer `30`, expected a string",
        ),
        (
            &provider("kind = \"ollama\"\nurl = \"http://h:1\"\ntimeout = \"0s\""),
            "timeout must be longer than 0",
        ),
        (
            &provider("kind = \"ollama\"\nurl = \"http://h:1\"\nretries = 50"),
            "retries must be at most 10",
        ),
        (
            &provider("kind = \"ollama\"\nurl = \"http://h:1\"\nretry_backoff = \"10s\""),
            "retry_backoff (10s) is longer than retry_backoff_max (8s)",
        ),
        (
            &provider("kind = \"ollama\"\nurl = \"ftp://h:1\""),
            "must start with http:// or https://",
        ),
        (
            &provider("kind = \"ollama\"\nurl = \"https://me:pw@h\""),
            "must not hold credentials",
        ),
        (
            &provider("kind = \"gemini\"\nurl = \"https://h/?key=abc\"\napi_key = \"k\""),
            "must not have a query",
        ),
        (
            &provider("kind = \"openai\""),
            "provider \"p\" (openai) has no API key: set OPENAI_API_KEY, or api_key_env",
        ),
        (
            &provider("kind = \"gemini\""),
            "provider \"p\" (gemini) has no API key: set GEMINI_API_KEY",
        ),
        (
            &provider("kind = \"openai\"\napi_key_env = \"MY_KEY\""),
            "api_key_env names MY_KEY, which is not set or empty",
        ),
        (
            &provider("kind = \"openai\"\napi_key = \"k\"\napi_key_env = \"MY_KEY\""),
            "set api_key or api_key_env, not both",
        ),
        (
            &provider("kind = \"gemini\"\napi_key = \"\""),
            "api_key is empty",
        ),
    ];
    let no_env = HashMap::new();
    for (text, want) in cases {
        let e = GatewayConfig::parse_with_env(text, Path::new("g.toml"), &no_env)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{text:?}: {e}");
        assert!(e.starts_with("g.toml"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

fn provider(body: &str) -> String {
    format!("listen = \"127.0.0.1:1\"\n[[provider]]\nname = \"p\"\n{body}\n")
}

#[test]
fn keys_come_from_the_named_or_default_variable_and_never_print() {
    let env: HashMap<String, String> = [
        ("OPENAI_API_KEY".to_owned(), "sk-default-secret".to_owned()),
        ("TEAM_KEY".to_owned(), "sk-team-secret".to_owned()),
    ]
    .into();
    let text = format!(
        "{}[[provider]]\nname = \"q\"\nkind = \"openai\"\napi_key_env = \"TEAM_KEY\"\n[[provider]]\nname = \"local\"\nkind = \"openai\"\nurl = \"http://127.0.0.1:8000/v1\"\napi_key = \"\"\n",
        provider("kind = \"openai\"")
    );
    let c = GatewayConfig::parse_with_env(&text, Path::new("g.toml"), &env).unwrap();
    let key = |i: usize| c.providers[i].resolved_api_key.as_ref().map(ApiKey::expose);
    assert_eq!(key(0), Some("sk-default-secret"));
    assert_eq!(key(1), Some("sk-team-secret"));
    assert_eq!(key(2), Some(""), "an explicit empty key means: send none");
    assert_eq!(
        c.providers[0].effective_url(),
        Some("https://api.openai.com/v1")
    );
    let debug = format!("{c:?}");
    assert!(!debug.contains("secret"), "{debug}");
    assert!(debug.contains("<redacted>"));
}

#[test]
fn api_key_openbao_takes_defaults_and_refuses_mixed_or_incomplete_settings() {
    let env: HashMap<String, String> = [(
        "SPIFFE_ENDPOINT_SOCKET".to_owned(),
        "unix:///run/agentmesh/node.sock".to_owned(),
    )]
    .into();
    let bao = "api_key_openbao = { address = \"http://127.0.0.1:8200\", role = \"gateway\", path = \"llm/openai\" }";
    let c = GatewayConfig::parse_with_env(
        &provider(&format!("kind = \"openai\"\n{bao}")),
        Path::new("g.toml"),
        &env,
    )
    .unwrap();
    let o = c.providers[0].api_key_openbao.as_ref().unwrap();
    assert_eq!(
        (
            o.auth_mount.as_str(),
            o.kv_mount.as_str(),
            o.field.as_str(),
            o.audience.as_str()
        ),
        ("jwt", "secret", "api_key", "openbao")
    );
    assert_eq!(
        o.workload_socket(),
        PathBuf::from("/run/agentmesh/node.sock")
    );
    assert!(c.providers[0].resolved_api_key.is_none(), "no key at load");

    for (body, env, want) in [
            (
                format!("kind = \"openai\"\napi_key = \"k\"\n{bao}"),
                env.clone(),
                "set one of api_key, api_key_env and api_key_openbao",
            ),
            (
                format!("kind = \"openai\"\n{bao}"),
                HashMap::new(),
                "$SPIFFE_ENDPOINT_SOCKET is not set",
            ),
            (
                "kind = \"openai\"\napi_key_openbao = { address = \"127.0.0.1:8200\", role = \"r\", path = \"p\" }".to_owned(),
                env.clone(),
                "is not an http:// or https:// URL",
            ),
            (
                "kind = \"openai\"\napi_key_openbao = { address = \"http://h:1\", path = \"p\" }".to_owned(),
                env.clone(),
                "missing field `role`",
            ),
            (
                "kind = \"openai\"\napi_key_openbao = { address = \"http://h:1\", role = \"r\", path = \"p\", secret = \"x\" }".to_owned(),
                env.clone(),
                "unknown field `secret`",
            ),
        ] {
            let e = GatewayConfig::parse_with_env(&provider(&body), Path::new("g.toml"), &env)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{body}: {e}");
        }
}

#[test]
fn provider_defaults_are_envoy_and_openai_sdk_like() {
    let c = GatewayConfig::parse_with_env(
        &provider("kind = \"ollama\"\nurl = \"http://127.0.0.1:11434\""),
        Path::new("g.toml"),
        &HashMap::new(),
    )
    .unwrap();
    let p = crate::provider::resilience::Policy::from_config(&c.providers[0]);
    assert_eq!(p.timeout, Duration::from_secs(120));
    assert_eq!(p.connect_timeout, Duration::from_secs(5));
    assert_eq!(p.retries, 2);
    assert_eq!(p.retry_backoff, Duration::from_millis(500));
    assert_eq!(p.retry_backoff_max, Duration::from_secs(8));
    assert_eq!(p.circuit_failures, 5);
    assert_eq!(p.circuit_cooldown, Duration::from_secs(30));
    assert!(c.providers[0].resolved_api_key.is_none());
}
