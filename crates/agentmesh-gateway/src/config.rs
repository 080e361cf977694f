//! `gateway.toml`: where the gateway listens, its providers and models, what each caller may
//! do, and DLP. Unknown keys are refused so a misspelt limit cannot silently be no limit.
//!
//! ```toml
//! listen = "127.0.0.1:8090"          # plain HTTP, behind the gateway's inbound proxy
//!
//! [[provider]]
//! name = "local"
//! kind = "offline"                   # offline | ollama | openai | gemini
//!
//! [[provider]]
//! name = "cloud"
//! kind = "openai"                    # any OpenAI-compatible server
//! url = "https://api.openai.com/v1"  # with or without /v1 (see below)
//! api_key_env = "OPENAI_API_KEY"     # or api_key = "..." inline
//! model = "gpt-4o-mini"              # the provider's name for the model, if different
//! timeout = "120s"                   # per attempt, request sent to answer read
//! connect_timeout = "5s"
//! retries = 2                        # extra attempts on timeout, connection error, 5xx
//! retry_backoff = "500ms"            # exponential with full jitter, from this base ...
//! retry_backoff_max = "8s"           # ... up to this cap
//! circuit_failures = 5               # consecutive failures that open the circuit; 0 = never
//! circuit_cooldown = "30s"           # open this long, then one probe (half-open)
//!
//! [[model]]
//! name = "llama3.2"
//! providers = ["local", "cloud"]     # tried in order; the next one when one fails
//! max_tokens = 4096                  # completion tokens reserved when a request names none
//!
//! [[caller]]
//! id = "executor"                    # service name, SPIFFE ID or "*"
//! models = ["llama3.2"]              # or ["*"]
//! tokens_per_window = 100000
//! window = "1h"
//! max_request_bytes = 65536
//!
//! [dlp]
//! email = "redact"                   # redact | block | log, per kind
//! ```
//!
//! ## Providers
//!
//! | kind | url | request | key |
//! |---|---|---|---|
//! | `ollama` | required, e.g. `http://127.0.0.1:11434` | `POST {url}/api/chat` | optional (`Authorization: Bearer`, for Ollama behind an authenticating proxy) |
//! | `openai` | default `https://api.openai.com/v1` | `POST {base}/chat/completions` | `Authorization: Bearer`; default env `OPENAI_API_KEY` |
//! | `gemini` | default `https://generativelanguage.googleapis.com` | `POST {base}/models/{model}:generateContent` | `x-goog-api-key`; default env `GEMINI_API_KEY` |
//!
//! For `openai` the url is what the official SDKs call the base URL: a url with a path
//! (`https://api.openai.com/v1`, `http://localhost:11434/v1`, `https://api.groq.com/openai/v1`)
//! is used as given, and a bare host (`https://api.openai.com`) gets `/v1` added. A url that
//! already ends in `/chat/completions` is used as is. For `gemini` a bare host gets `/v1beta`.
//!
//! The key comes from `api_key` (inline) or from the variable `api_key_env` names, read once
//! at load; with neither, from the kind's default variable. `openai` and `gemini` refuse to
//! load without a key, except that `api_key = ""` on `openai` sends no `Authorization` header
//! (for local servers such as vLLM or llama.cpp started without a key). Keys are never
//! logged, never put in errors or audit lines, and `Debug` prints `<redacted>`.
//!
//! Or the key stays out of files and the environment altogether: `api_key_openbao = {
//! address = "http://127.0.0.1:8200", role = "gateway", path = "llm/openai" }` (see
//! [`OpenBaoKeyConfig`] for the other keys and their defaults) reads it from OpenBao KV v2
//! after logging in to OpenBao's JWT auth method with the gateway's JWT-SVID, keeps it in
//! memory and re-reads it when the token's lease ends ([`crate::secret_key`]). At most one of
//! `api_key`, `api_key_env` and `api_key_openbao` may be set.
//!
//! ## Failures
//!
//! Each attempt has `timeout` (default 120 s; LLM answers are slow, and local models on a CPU
//! slower still) and `connect_timeout` (default 5 s, Envoy's). Timeouts, connection errors and
//! 5xx are retried `retries` times (default 2, the OpenAI and Anthropic SDKs' default) after a
//! random delay between 0 and `min(retry_backoff_max, retry_backoff * 2^n)` ("full jitter";
//! defaults 500 ms and 8 s, the OpenAI SDK's). A 4xx or a malformed answer is not retried: the
//! same request would fail the same way. Then the model's next provider is tried. After
//! `circuit_failures` consecutive failed attempts (default 5, Envoy's `consecutive_5xx`) a
//! provider is skipped for `circuit_cooldown` (default 30 s, Envoy's `base_ejection_time`);
//! then one request probes it, and its outcome closes or reopens the circuit. A 4xx counts as
//! the provider being alive. The caller gets 502 `provider_failed` when providers failed, or
//! 503 `provider_unavailable` when every provider of the model was skipped by its circuit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentmesh_sdk::LocalAddr;
use serde::{Deserialize, Serialize};

use crate::dlp::DlpConfig;

mod durations;
use durations::{duration, humantime_serde_opt};

/// Why a gateway config is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// Malformed TOML, an unknown key or a wrongly typed value.
    #[error("{0}: {1}")]
    Parse(PathBuf, String),
    /// A value is out of range or inconsistent.
    #[error("{0}: {1}")]
    Invalid(PathBuf, String),
}

impl From<agentmesh_proto::config::LoadError> for ConfigError {
    fn from(e: agentmesh_proto::config::LoadError) -> Self {
        match e {
            agentmesh_proto::config::LoadError::Read { path, source } => Self::Read(path, source),
            agentmesh_proto::config::LoadError::Parse { path, message } => {
                Self::Parse(path, message)
            }
            // LoadError is non_exhaustive; a new kind still names its file.
            other => Self::Parse(PathBuf::new(), other.to_string()),
        }
    }
}

/// Which provider implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// The embedded, deterministic provider: no network, says it is offline.
    Offline,
    /// An Ollama server (`/api/chat`).
    Ollama,
    /// Any OpenAI-compatible server (`/v1/chat/completions`).
    Openai,
    /// Google Gemini (`generateContent`).
    Gemini,
}

impl ProviderKind {
    /// The name used in config files and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Offline => "offline",
            ProviderKind::Ollama => "ollama",
            ProviderKind::Openai => "openai",
            ProviderKind::Gemini => "gemini",
        }
    }

    /// The variable a key is read from when the config names none.
    pub fn default_key_env(self) -> Option<&'static str> {
        match self {
            ProviderKind::Openai => Some("OPENAI_API_KEY"),
            ProviderKind::Gemini => Some("GEMINI_API_KEY"),
            ProviderKind::Offline | ProviderKind::Ollama => None,
        }
    }

    /// The url used when the config gives none.
    pub fn default_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::Openai => Some("https://api.openai.com/v1"),
            ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com"),
            ProviderKind::Offline | ProviderKind::Ollama => None,
        }
    }
}

/// A provider API key. Its `Debug` and `Display` never show it, so it cannot leak through a
/// log line or an error message by accident; [`ApiKey::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key itself, for the request header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is empty (which means: send no key).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// `[[provider]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// How models refer to it.
    pub name: String,
    /// The implementation.
    pub kind: ProviderKind,
    /// Base URL (not for `offline`; `openai` and `gemini` have defaults).
    #[serde(default)]
    pub url: Option<String>,
    /// The API key, inline. Prefer `api_key_env`.
    #[serde(default)]
    pub api_key: Option<ApiKey>,
    /// The environment variable holding the API key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Read the key from OpenBao KV v2 after a JWT-SVID login (see [`OpenBaoKeyConfig`]).
    #[serde(default)]
    pub api_key_openbao: Option<OpenBaoKeyConfig>,
    /// The provider's own name for the model, when it differs from the gateway's.
    #[serde(default)]
    pub model: Option<String>,
    /// Per-attempt timeout, from sending the request to reading the whole answer.
    #[serde(
        default,
        deserialize_with = "duration::timeout",
        serialize_with = "duration::write"
    )]
    pub timeout: Option<Duration>,
    /// Timeout for the TCP connection (and the TLS handshake).
    #[serde(
        default,
        deserialize_with = "duration::connect_timeout",
        serialize_with = "duration::write"
    )]
    pub connect_timeout: Option<Duration>,
    /// Extra attempts after the first, on timeouts, connection errors and 5xx.
    #[serde(default)]
    pub retries: Option<u32>,
    /// Base of the exponential backoff between attempts.
    #[serde(
        default,
        deserialize_with = "duration::retry_backoff",
        serialize_with = "duration::write"
    )]
    pub retry_backoff: Option<Duration>,
    /// Cap of the backoff.
    #[serde(
        default,
        deserialize_with = "duration::retry_backoff_max",
        serialize_with = "duration::write"
    )]
    pub retry_backoff_max: Option<Duration>,
    /// Consecutive failed attempts that open the circuit; 0 disables the breaker.
    #[serde(default)]
    pub circuit_failures: Option<u32>,
    /// How long an open circuit skips the provider before one probe.
    #[serde(
        default,
        deserialize_with = "duration::circuit_cooldown",
        serialize_with = "duration::write"
    )]
    pub circuit_cooldown: Option<Duration>,
    /// The key in effect after loading: `api_key`, or read from `api_key_env` or the kind's
    /// default variable. Not a config key.
    #[serde(skip)]
    pub resolved_api_key: Option<ApiKey>,
}

/// Default per-attempt timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of retries.
pub const DEFAULT_RETRIES: u32 = 2;
/// Default backoff base.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// Default backoff cap.
pub const DEFAULT_RETRY_BACKOFF_MAX: Duration = Duration::from_secs(8);
/// Default consecutive failures that open a circuit.
pub const DEFAULT_CIRCUIT_FAILURES: u32 = 5;
/// Default time a circuit stays open.
pub const DEFAULT_CIRCUIT_COOLDOWN: Duration = Duration::from_secs(30);
/// More retries than this only delay the failover to the next provider.
pub const MAX_RETRIES: u32 = 10;

impl ProviderConfig {
    /// A provider of `kind` named `name` with every optional key unset.
    pub fn new(name: impl Into<String>, kind: ProviderKind) -> Self {
        Self {
            name: name.into(),
            kind,
            url: None,
            api_key: None,
            api_key_env: None,
            api_key_openbao: None,
            model: None,
            timeout: None,
            connect_timeout: None,
            retries: None,
            retry_backoff: None,
            retry_backoff_max: None,
            circuit_failures: None,
            circuit_cooldown: None,
            resolved_api_key: None,
        }
    }

    /// The url in effect: the configured one, or the kind's default.
    pub fn effective_url(&self) -> Option<&str> {
        self.url.as_deref().or(self.kind.default_url())
    }

    fn validate(&mut self, env: &dyn Env) -> Result<(), String> {
        let name = &self.name;
        if self.kind == ProviderKind::Offline {
            return Ok(());
        }
        let Some(url) = self.effective_url() else {
            return Err(format!("provider {name:?} needs url"));
        };
        check_url(url).map_err(|why| format!("provider {name:?}: url {url:?} {why}"))?;
        for (key, d) in [
            ("timeout", self.timeout),
            ("connect_timeout", self.connect_timeout),
            ("retry_backoff_max", self.retry_backoff_max),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                return Err(format!("provider {name:?}: {key} must be longer than 0"));
            }
        }
        if self.retries.is_some_and(|r| r > MAX_RETRIES) {
            return Err(format!(
                "provider {name:?}: retries must be at most {MAX_RETRIES}; more only delay the next provider"
            ));
        }
        let backoff = self.retry_backoff.unwrap_or(DEFAULT_RETRY_BACKOFF);
        let backoff_max = self.retry_backoff_max.unwrap_or(DEFAULT_RETRY_BACKOFF_MAX);
        if backoff > backoff_max {
            return Err(format!(
                "provider {name:?}: retry_backoff ({}) is longer than retry_backoff_max ({})",
                humantime::format_duration(backoff),
                humantime::format_duration(backoff_max)
            ));
        }
        if self.circuit_cooldown.is_some_and(|d| d.is_zero()) && self.circuit_failures != Some(0) {
            return Err(format!(
                "provider {name:?}: circuit_cooldown must be longer than 0 (circuit_failures = 0 disables the breaker)"
            ));
        }
        self.resolved_api_key = self.resolve_key(env)?;
        Ok(())
    }

    fn resolve_key(&mut self, env: &dyn Env) -> Result<Option<ApiKey>, String> {
        let name = self.name.clone();
        let name = &name;
        let kind = self.kind.as_str();
        if let Some(bao) = &mut self.api_key_openbao {
            if self.api_key.is_some() || self.api_key_env.is_some() {
                return Err(format!(
                    "provider {name:?}: set one of api_key, api_key_env and api_key_openbao"
                ));
            }
            bao.validate(env)
                .map_err(|why| format!("provider {name:?}: api_key_openbao: {why}"))?;
            return Ok(None);
        }
        match (&self.api_key, &self.api_key_env) {
            (Some(_), Some(_)) => Err(format!(
                "provider {name:?}: set api_key or api_key_env, not both"
            )),
            (Some(key), None) => {
                if key.is_empty() && self.kind != ProviderKind::Openai {
                    return Err(format!(
                        "provider {name:?}: api_key is empty; remove it or set the {kind} key"
                    ));
                }
                Ok(Some(key.clone()))
            }
            (None, Some(var)) => match env.var(var).filter(|v| !v.is_empty()) {
                Some(v) => Ok(Some(ApiKey(v))),
                None => Err(format!(
                    "provider {name:?}: api_key_env names {var}, which is not set or empty"
                )),
            },
            (None, None) => match self.kind.default_key_env() {
                None => Ok(None),
                Some(var) => match env.var(var).filter(|v| !v.is_empty()) {
                    Some(v) => Ok(Some(ApiKey(v))),
                    None => Err(format!(
                        "provider {name:?} ({kind}) has no API key: set {var}, or api_key_env to the variable that holds it{}",
                        if self.kind == ProviderKind::Openai {
                            " (api_key = \"\" for a server that needs none)"
                        } else {
                            ""
                        }
                    )),
                },
            },
        }
    }
}

/// Why a provider url is unusable, or nothing. Credentials in the url are refused so that the
/// url can appear in messages.
fn check_url(url: &str) -> Result<(), &'static str> {
    let uri: http::Uri = url.parse().map_err(|_| "is not a URL")?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("must start with http:// or https://"),
    }
    let Some(authority) = uri.authority() else {
        return Err("has no host");
    };
    if authority.as_str().contains('@') {
        return Err("must not hold credentials; use api_key or api_key_env");
    }
    if uri.query().is_some() {
        return Err("must not have a query; keys go in api_key or api_key_env");
    }
    Ok(())
}

/// `api_key_openbao = { address = "http://127.0.0.1:8200", role = "gateway", path = "llm/openai" }`
/// on a `[[provider]]`: the key lives in OpenBao KV v2, and the gateway reads it with a token
/// from OpenBao's JWT auth method, logging in with its own JWT-SVID.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OpenBaoKeyConfig {
    /// OpenBao's address, `http://host:port` or `https://…`.
    pub address: String,
    /// For https: the CA (PEM) to trust; otherwise the Mozilla roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Where the JWT auth method is mounted [default: jwt].
    #[serde(default = "default_auth_mount")]
    pub auth_mount: String,
    /// The JWT auth role to log in as.
    pub role: String,
    /// Where the KV v2 engine is mounted [default: secret].
    #[serde(default = "default_kv_mount")]
    pub kv_mount: String,
    /// The secret's path inside the mount, e.g. `llm/openai`.
    pub path: String,
    /// The field holding the key [default: api_key].
    #[serde(default = "default_field")]
    pub field: String,
    /// The JWT-SVID's audience, which the role's `bound_audiences` must name [default: openbao].
    #[serde(default = "default_audience")]
    pub audience: String,
    /// The Workload API, `unix:///path` [default: $SPIFFE_ENDPOINT_SOCKET].
    #[serde(default)]
    pub workload_api: Option<String>,
}

fn default_auth_mount() -> String {
    "jwt".to_owned()
}
fn default_kv_mount() -> String {
    "secret".to_owned()
}
fn default_field() -> String {
    "api_key".to_owned()
}
fn default_audience() -> String {
    "openbao".to_owned()
}

impl OpenBaoKeyConfig {
    fn validate(&mut self, env: &dyn Env) -> Result<(), String> {
        for (key, v) in [
            ("address", &self.address),
            ("role", &self.role),
            ("path", &self.path),
            ("auth_mount", &self.auth_mount),
            ("kv_mount", &self.kv_mount),
            ("field", &self.field),
            ("audience", &self.audience),
        ] {
            if v.trim().is_empty() {
                return Err(format!("{key} is empty"));
            }
        }
        if !(self.address.starts_with("http://") || self.address.starts_with("https://")) {
            return Err(format!(
                "address {:?} is not an http:// or https:// URL",
                self.address
            ));
        }
        let socket = match self.workload_api.clone() {
            Some(s) => s,
            None => env.var("SPIFFE_ENDPOINT_SOCKET").filter(|s| !s.is_empty()).ok_or_else(
                || "no workload_api and $SPIFFE_ENDPOINT_SOCKET is not set; the JWT-SVID comes from the node's Workload API".to_owned(),
            )?,
        };
        if !socket
            .strip_prefix("unix://")
            .or_else(|| socket.strip_prefix("unix:"))
            .is_some_and(|p| p.starts_with('/'))
        {
            return Err(format!("workload_api {socket:?} is not unix:///path"));
        }
        self.workload_api = Some(socket);
        Ok(())
    }

    /// The Workload API socket's path (after loading, always set).
    pub fn workload_socket(&self) -> PathBuf {
        let s = self.workload_api.as_deref().unwrap_or_default();
        PathBuf::from(
            s.strip_prefix("unix://")
                .or_else(|| s.strip_prefix("unix:"))
                .unwrap_or(s),
        )
    }
}

/// Where `api_key_env` variables are read: the process environment, or a map in tests (so
/// tests need not change the environment of the whole test process).
pub trait Env {
    /// The variable's value, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// `[[model]]`: a model name callers use, and the providers that serve it, in order.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name in API requests.
    pub name: String,
    /// Provider names; the first that answers wins.
    pub providers: Vec<String>,
    /// The completion tokens a call is assumed to need when its request names no
    /// `max_tokens` (or `num_predict`): its budget reservation is the prompt's bound plus
    /// this. Default 4096 (`DEFAULT_MAX_TOKENS`).
    #[serde(default)]
    pub max_tokens: Option<u64>,
}

/// `[[caller]]`: what one caller may do.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CallerConfig {
    /// A service name, a SPIFFE ID, or `*` for any caller without an entry of its own.
    pub id: String,
    /// Model names it may use; `*` for all.
    pub models: Vec<String>,
    /// Prompt plus completion tokens per window; none means unlimited.
    #[serde(default)]
    pub tokens_per_window: Option<u64>,
    /// The budget window (`1h`, `24h`); default one hour.
    #[serde(default, with = "humantime_serde_opt")]
    pub window: Option<Duration>,
    /// The largest request body, in bytes; default 1 MiB.
    #[serde(default)]
    pub max_request_bytes: Option<usize>,
}

/// Whether `v` is its type's default, so a written config leaves the key to the component's
/// own default instead of pinning today's.
fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The plain HTTP listener; the inbound proxy is its only client. `unix:///path`: peers
    /// of another uid are refused, so `x-forwarded-client-cert` is the sidecar's and names
    /// the caller. A loopback `ip:port` can be reached by any local process, which could
    /// write that header itself, so on TCP the gateway trusts no caller identity (every
    /// request is refused with `no_identity`).
    pub listen: LocalAddr,
    /// Providers.
    #[serde(default, rename = "provider")]
    pub providers: Vec<ProviderConfig>,
    /// Models.
    #[serde(default, rename = "model")]
    pub models: Vec<ModelConfig>,
    /// Caller policies. A caller with no entry (and no `*` entry) is refused.
    #[serde(default, rename = "caller")]
    pub callers: Vec<CallerConfig>,
    /// DLP actions.
    #[serde(default, skip_serializing_if = "is_default")]
    pub dlp: DlpConfig,
    /// The delegation chain: verify the user and the agents before answering, and audit them.
    #[serde(default)]
    pub delegation: Option<agentmesh_sdk::delegation::service::DelegationConfig>,
    /// `[limits]`: head deadline, body idle timeout, head sizes and connection counts of the
    /// listener.
    #[serde(
        default,
        skip_serializing_if = "agentmesh_proto::limits::ListenerLimits::is_default"
    )]
    pub limits: agentmesh_proto::limits::ListenerLimits,
}

/// The default largest request.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// The completion tokens reserved for a call that names no limit, when its `[[model]]` sets
/// no `max_tokens`: 4096, the output limit many hosted chat models shipped with.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;
/// The default budget window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);

impl GatewayConfig {
    /// Reads and validates `path`.
    ///
    /// # Errors
    /// Unreadable, malformed or inconsistent files.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = agentmesh_proto::config::read(path)?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text`; `origin` names it in errors. API keys named by
    /// `api_key_env` are read from the process environment.
    ///
    /// # Errors
    /// Malformed or inconsistent text.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        Self::parse_with_env(text, origin, &ProcessEnv)
    }

    /// Like [`GatewayConfig::parse`], reading API keys from `env`.
    ///
    /// # Errors
    /// Malformed or inconsistent text, or a key that is not set.
    pub fn parse_with_env(text: &str, origin: &Path, env: &dyn Env) -> Result<Self, ConfigError> {
        let mut cfg: Self = agentmesh_proto::config::parse_toml(text, origin)?;
        cfg.validate(env)
            .map_err(|m| ConfigError::Invalid(origin.to_owned(), m))?;
        Ok(cfg)
    }

    fn validate(&mut self, env: &dyn Env) -> Result<(), String> {
        self.limits.check().map_err(|e| e.to_string())?;
        if !self.listen.is_host_local() {
            return Err(format!(
                "listen = \"{}\": the gateway serves only its own proxy, so it must listen on a unix:///path or on loopback",
                self.listen
            ));
        }
        for p in &mut self.providers {
            p.validate(env)?;
        }
        let mut names = std::collections::HashSet::new();
        for p in &self.providers {
            if !names.insert(p.name.as_str()) {
                return Err(format!("provider {:?} is defined twice", p.name));
            }
        }
        let mut models = std::collections::HashSet::new();
        for m in &self.models {
            if !models.insert(m.name.as_str()) {
                return Err(format!("model {:?} is defined twice", m.name));
            }
            if m.providers.is_empty() {
                return Err(format!("model {:?} has no providers", m.name));
            }
            if m.max_tokens == Some(0) {
                return Err(format!("model {:?}: max_tokens must be at least 1", m.name));
            }
            for p in &m.providers {
                if !names.contains(p.as_str()) {
                    return Err(format!(
                        "model {:?} names provider {p:?}, which is not defined",
                        m.name
                    ));
                }
            }
        }
        let mut callers = std::collections::HashSet::new();
        for c in &self.callers {
            if !callers.insert(c.id.as_str()) {
                return Err(format!("caller {:?} is defined twice", c.id));
            }
            for m in &c.models {
                if m != "*" && !models.contains(m.as_str()) {
                    return Err(format!(
                        "caller {:?} may use model {m:?}, which is not defined",
                        c.id
                    ));
                }
            }
            if c.window.is_some_and(|w| w.is_zero()) {
                return Err(format!("caller {:?}: window must be longer than 0", c.id));
            }
            if c.max_request_bytes == Some(0) {
                return Err(format!(
                    "caller {:?}: max_request_bytes must be at least 1",
                    c.id
                ));
            }
        }
        Ok(())
    }

    /// The largest body any caller may send, which bounds what the listener reads.
    pub fn max_body(&self) -> usize {
        self.callers
            .iter()
            .map(|c| c.max_request_bytes.unwrap_or(DEFAULT_MAX_REQUEST_BYTES))
            .max()
            .unwrap_or(DEFAULT_MAX_REQUEST_BYTES)
    }

    /// An offline gateway that lets every caller use every model: what `up` starts with
    /// `--llm offline`.
    pub fn offline(listen: impl Into<LocalAddr>, models: &[&str]) -> Self {
        Self {
            listen: listen.into(),
            providers: vec![ProviderConfig::new("offline", ProviderKind::Offline)],
            models: models
                .iter()
                .map(|m| ModelConfig {
                    name: (*m).into(),
                    providers: vec!["offline".into()],
                    max_tokens: None,
                })
                .collect(),
            callers: vec![CallerConfig {
                id: "*".into(),
                models: vec!["*".into()],
                tokens_per_window: None,
                window: None,
                max_request_bytes: None,
            }],
            dlp: DlpConfig::default(),
            delegation: None,
            limits: agentmesh_proto::limits::ListenerLimits::default(),
        }
    }
}

#[cfg(test)]
mod tests;
