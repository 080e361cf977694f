//! Where completions come from. `offline` is embedded and deterministic; `ollama`,
//! `openai` (any OpenAI-compatible server) and `gemini` are HTTP(S) providers. A [`Provider`]
//! makes one attempt within its timeout; [`resilience`] adds retries, the circuit breaker and
//! failover across the providers a model lists.
//!
//! Upstream calls are not streamed: the gateway runs DLP over the whole answer (a redaction
//! can span what would be two chunks, and `block` must refuse before the first byte reaches
//! the caller), then renders SSE or NDJSON to its own clients from the full text.

pub mod gemini;
pub mod ollama;
pub mod openai;
pub mod resilience;

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode, Uri};

use crate::config::{ApiKey, ProviderConfig, ProviderKind};
use agentmesh_proto::https::{ClientSettings, HttpClient, HttpError};

/// The largest answer read from a provider. A chat completion is a few KiB; this bounds the
/// memory a broken or hostile upstream can make the gateway use.
pub const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// How long an idle pooled connection is kept. Providers close idle connections after about
/// a minute; closing ours first avoids sending on a connection the far side is closing.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// One pooled client per provider, since the connect timeout is per provider; HTTP/2 when the
/// server offers it. The provider's own timeout bounds each attempt ([`Provider::chat`]).
fn client_settings(cfg: &ProviderConfig) -> ClientSettings {
    let connect = cfg
        .connect_timeout
        .unwrap_or(crate::config::DEFAULT_CONNECT_TIMEOUT);
    ClientSettings {
        http2: true,
        nodelay: true,
        pool_idle: Some(POOL_IDLE),
        ..ClientSettings::new(
            concat!("agentmesh-gateway/", env!("CARGO_PKG_VERSION")),
            connect,
            MAX_ANSWER_BYTES,
        )
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` (or `tool`).
    pub role: String,
    /// The text.
    pub content: String,
}

/// What the gateway asks a provider for.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The provider's name for the model.
    pub model: String,
    /// The conversation, already through DLP.
    pub messages: Vec<Message>,
}

/// A provider's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatResponse {
    /// The assistant's text.
    pub content: String,
    /// Prompt tokens (the provider's count, or the gateway's estimate).
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

/// Why a provider gave no answer. Messages name the provider and never hold its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// No complete answer within the attempt's timeout.
    #[error("provider {provider:?}: no answer within {}", humantime::format_duration(*after))]
    Timeout {
        /// The provider.
        provider: String,
        /// The timeout.
        after: Duration,
    },
    /// The connection could not be made or broke (refused, DNS, TLS, reset).
    #[error("provider {provider:?}: connection to {endpoint} failed: {detail}")]
    Connection {
        /// The provider.
        provider: String,
        /// `scheme://host:port`.
        endpoint: String,
        /// The cause.
        detail: String,
    },
    /// The provider answered with an error status.
    #[error("provider {provider:?} answered HTTP {status}: {message}")]
    Status {
        /// The provider.
        provider: String,
        /// The HTTP status.
        status: u16,
        /// The provider's own error message, shortened.
        message: String,
    },
    /// The answer is not what the provider's API documents.
    #[error("provider {provider:?} sent a malformed answer: {detail}")]
    Malformed {
        /// The provider.
        provider: String,
        /// What was wrong.
        detail: String,
    },
    /// The provider declined to answer this prompt (a safety block or a refusal).
    #[error("provider {provider:?} refused the request: {reason}")]
    Refused {
        /// The provider.
        provider: String,
        /// Its reason.
        reason: String,
    },
    /// The provider's key is not available (OpenBao refused, or has not answered yet).
    #[error("provider {provider:?} has no API key: {reason}")]
    KeyUnavailable {
        /// The provider.
        provider: String,
        /// Why, from the last refresh.
        reason: String,
    },
    /// The provider was not tried: its circuit is open after repeated failures.
    #[error(
        "provider {provider:?} skipped: circuit open after {failures} consecutive failures; {}",
        next_probe(*retry_in)
    )]
    CircuitOpen {
        /// The provider.
        provider: String,
        /// The failures that opened it.
        failures: u32,
        /// Until the next probe (rounded up); zero while a probe is in flight.
        retry_in: Duration,
    },
}

fn next_probe(retry_in: Duration) -> String {
    if retry_in.is_zero() {
        "a probe is in flight".into()
    } else {
        format!("next probe in {}", humantime::format_duration(retry_in))
    }
}

impl ProviderError {
    /// Whether the same request may succeed when sent again: timeouts, connection errors and
    /// 5xx. A 4xx, a refusal or a malformed answer would come back the same.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::Timeout { .. } | ProviderError::Connection { .. } => true,
            ProviderError::Status { status, .. } => *status >= 500,
            ProviderError::Malformed { .. }
            | ProviderError::Refused { .. }
            | ProviderError::KeyUnavailable { .. }
            | ProviderError::CircuitOpen { .. } => false,
        }
    }

    /// Whether this says the provider is unhealthy, for its circuit breaker. A 4xx or a
    /// refusal means it is up and answering (and a caller must not be able to open a circuit
    /// for everyone by sending bad requests).
    pub fn counts_against_circuit(&self) -> bool {
        match self {
            ProviderError::Timeout { .. }
            | ProviderError::Connection { .. }
            | ProviderError::Malformed { .. } => true,
            ProviderError::Status { status, .. } => *status >= 500,
            ProviderError::Refused { .. }
            | ProviderError::KeyUnavailable { .. }
            | ProviderError::CircuitOpen { .. } => false,
        }
    }
}

/// A configured provider: one attempt, no retries (see [`resilience`]).
#[derive(Debug)]
pub struct Provider {
    /// Its name in the config.
    pub name: String,
    /// The model name to send instead of the gateway's, if configured.
    pub model_override: Option<String>,
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Offline,
    Http(Box<HttpBackend>),
}

#[derive(Debug)]
struct HttpBackend {
    kind: ProviderKind,
    /// The url with any trailing `/` removed.
    base: String,
    key: KeySource,
    timeout: Duration,
    client: HttpClient,
}

/// Where a provider's key comes from at request time.
#[derive(Debug)]
enum KeySource {
    /// Loaded with the config (`api_key` or `api_key_env`), or none.
    Fixed(Option<ApiKey>),
    /// Read from OpenBao by a refresher (see [`crate::secret_key`]).
    OpenBao(std::sync::Arc<crate::secret_key::KeyCell>),
}

impl KeySource {
    fn current(&self) -> Result<Option<ApiKey>, String> {
        match self {
            KeySource::Fixed(k) => Ok(k.clone()),
            KeySource::OpenBao(cell) => cell.current().map(Some),
        }
    }
}

/// How much of a provider's own error message goes into ours: enough to read, not a page.
const ERROR_MESSAGE_CHARS: usize = 300;

/// Roughly four characters per token, the usual rule of thumb for English text; used where
/// a provider reports no counts.
pub fn estimate_tokens(text: &str) -> u64 {
    let chars = text.chars().count() as u64;
    chars.div_ceil(4)
}

impl Provider {
    /// Builds the provider described by `cfg` (already validated), sharing `tls`.
    pub fn new(cfg: &ProviderConfig, tls: &rustls::ClientConfig) -> Self {
        Self::with_key(
            cfg,
            tls,
            KeySource::Fixed(cfg.resolved_api_key.clone().filter(|k| !k.is_empty())),
        )
    }

    /// Builds a provider whose key a refresher reads from OpenBao into `cell`.
    pub fn with_openbao_key(
        cfg: &ProviderConfig,
        tls: &rustls::ClientConfig,
        cell: std::sync::Arc<crate::secret_key::KeyCell>,
    ) -> Self {
        Self::with_key(cfg, tls, KeySource::OpenBao(cell))
    }

    fn with_key(cfg: &ProviderConfig, tls: &rustls::ClientConfig, key: KeySource) -> Self {
        let backend = match (cfg.kind, cfg.effective_url()) {
            (ProviderKind::Offline, _) | (_, None) => Backend::Offline,
            (kind, Some(url)) => Backend::Http(Box::new(HttpBackend {
                kind,
                base: url.trim_end_matches('/').to_owned(),
                key,
                timeout: cfg.timeout.unwrap_or(crate::config::DEFAULT_TIMEOUT),
                client: HttpClient::new(tls.clone(), client_settings(cfg)),
            })),
        };
        Self {
            name: cfg.name.clone(),
            model_override: cfg.model.clone(),
            backend,
        }
    }

    /// Asks for a completion: one attempt, bounded by the provider's timeout.
    ///
    /// # Errors
    /// The provider timed out, could not be reached, answered with an error or with
    /// something that is not its API's answer.
    pub async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let Backend::Http(http) = &self.backend else {
            return Ok(offline(req));
        };
        let HttpBackend {
            kind,
            base,
            key,
            timeout,
            client,
        } = &**http;
        let key = &key
            .current()
            .map_err(|reason| ProviderError::KeyUnavailable {
                provider: self.name.clone(),
                reason,
            })?;
        type Parse = fn(&[u8]) -> Result<ChatResponse, Unexpected>;
        let (url, body, parse): (String, serde_json::Value, Parse) = match kind {
            ProviderKind::Ollama => (ollama::endpoint(base), ollama::body(req), ollama::parse),
            ProviderKind::Openai => (openai::endpoint(base), openai::body(req), openai::parse),
            ProviderKind::Gemini => (
                gemini::endpoint(base, &req.model),
                gemini::body(req),
                gemini::parse,
            ),
            ProviderKind::Offline => return Ok(offline(req)),
        };
        let uri: Uri = url.parse().map_err(|_| ProviderError::Malformed {
            provider: self.name.clone(),
            detail: format!("cannot form a request URL from {url:?}"),
        })?;
        let mut headers = Vec::with_capacity(1);
        if let Some(key) = key {
            let (name, value) = match kind {
                ProviderKind::Gemini => (
                    HeaderName::from_static("x-goog-api-key"),
                    key.expose().to_owned(),
                ),
                _ => (
                    http::header::AUTHORIZATION,
                    format!("Bearer {}", key.expose()),
                ),
            };
            let mut value =
                HeaderValue::from_str(&value).map_err(|_| ProviderError::Malformed {
                    provider: self.name.clone(),
                    detail: "the API key holds characters an HTTP header cannot carry".into(),
                })?;
            value.set_sensitive(true);
            headers.push((name, value));
        }
        let body = Bytes::from(body.to_string());
        let sent = tokio::time::timeout(*timeout, client.post_json(&uri, headers, body)).await;
        let (status, answer) = match sent {
            Err(_) => {
                return Err(ProviderError::Timeout {
                    provider: self.name.clone(),
                    after: *timeout,
                });
            }
            Ok(Err(HttpError::Connection(detail))) => {
                return Err(ProviderError::Connection {
                    provider: self.name.clone(),
                    endpoint: endpoint_of(&uri),
                    detail: self.scrub(&detail),
                });
            }
            Ok(Err(e)) => {
                return Err(ProviderError::Malformed {
                    provider: self.name.clone(),
                    detail: e.to_string(),
                });
            }
            Ok(Ok(answer)) => answer,
        };
        if !status.is_success() {
            return Err(ProviderError::Status {
                provider: self.name.clone(),
                status: status.as_u16(),
                message: self.scrub(&error_message(status, &answer)),
            });
        }
        let parsed = parse(&answer);
        let mut resp = parsed.map_err(|e| match e {
            Unexpected::Malformed(detail) => ProviderError::Malformed {
                provider: self.name.clone(),
                detail: self.scrub(&detail),
            },
            Unexpected::Refused(reason) => ProviderError::Refused {
                provider: self.name.clone(),
                reason: self.scrub(&reason),
            },
        })?;
        if resp.prompt_tokens == 0 {
            resp.prompt_tokens = req
                .messages
                .iter()
                .map(|m| estimate_tokens(&m.content))
                .sum();
        }
        if resp.completion_tokens == 0 {
            resp.completion_tokens = estimate_tokens(&resp.content);
        }
        Ok(resp)
    }

    /// Removes this provider's key from text that came from elsewhere (an upstream error
    /// message may quote the key it refused).
    fn scrub(&self, text: &str) -> String {
        match &self.backend {
            Backend::Http(http) => match http.key.current() {
                Ok(Some(k)) if !k.is_empty() => text.replace(k.expose(), "[REDACTED:api_key]"),
                _ => text.to_owned(),
            },
            Backend::Offline => text.to_owned(),
        }
    }
}

/// What a provider module found wrong with a 2xx answer.
#[derive(Debug)]
pub(crate) enum Unexpected {
    /// Not the documented shape.
    Malformed(String),
    /// A well-formed refusal.
    Refused(String),
}

fn endpoint_of(uri: &Uri) -> String {
    format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map_or("", |a| a.as_str())
    )
}

/// The provider's error message from an error answer: `error.message` (OpenAI, Gemini),
/// `error` (Ollama), `message`, or else the start of the body.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    let from_json = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v["error"]["message"]
                .as_str()
                .or_else(|| v["error"].as_str())
                .or_else(|| v["message"].as_str())
                .map(str::to_owned)
        });
    let text = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let text = text.trim();
    if text.is_empty() {
        return status
            .canonical_reason()
            .unwrap_or("no error message")
            .to_owned();
    }
    match text.char_indices().nth(ERROR_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Parses a 2xx body as JSON, or says why not.
pub(crate) fn json_body(body: &[u8]) -> Result<serde_json::Value, Unexpected> {
    serde_json::from_slice(body).map_err(|e| {
        let start: String = String::from_utf8_lossy(body).chars().take(60).collect();
        Unexpected::Malformed(format!("not JSON ({e}); it starts with {start:?}"))
    })
}

/// A token count field, when present and a non-negative integer.
pub(crate) fn count(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// The offline provider: says plainly that no model ran and shows what it received (after
/// DLP), so a caller, a test or a demo can see exactly what would have reached a real model.
pub fn offline(req: &ChatRequest) -> ChatResponse {
    let mut content = format!(
        "[offline] agentmesh's offline provider answered for model \"{}\"; no LLM was called. It received:",
        req.model
    );
    for m in &req.messages {
        content.push_str(&format!("\n{}: {}", m.role, m.content));
    }
    let prompt: u64 = req
        .messages
        .iter()
        .map(|m| estimate_tokens(&m.content))
        .sum();
    ChatResponse {
        completion_tokens: estimate_tokens(&content),
        prompt_tokens: prompt,
        content,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_is_deterministic_and_shows_its_input() {
        let req = ChatRequest {
            model: "m".into(),
            messages: vec![Message {
                role: "user".into(),
                content: "hello [REDACTED:email]".into(),
            }],
        };
        let a = offline(&req);
        assert_eq!(a, offline(&req));
        assert!(a.content.contains("no LLM was called"));
        assert!(a.content.contains("user: hello [REDACTED:email]"));
        assert_eq!(a.prompt_tokens, 6);
        assert!(a.completion_tokens > 0);
    }

    #[test]
    fn token_estimate_rounds_up() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abc"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
    }
}
