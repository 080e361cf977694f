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
//! [[model]]
//! name = "llama3.2"
//! providers = ["local"]              # tried in order
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

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::dlp::DlpConfig;

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

/// Which provider implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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

/// `[[provider]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// How models refer to it.
    pub name: String,
    /// The implementation.
    pub kind: ProviderKind,
    /// Base URL (not for `offline`).
    #[serde(default)]
    pub url: Option<String>,
    /// The API key, inline. Prefer `api_key_env`.
    #[serde(default)]
    pub api_key: Option<String>,
    /// The environment variable holding the API key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The provider's own name for the model, when it differs from the gateway's.
    #[serde(default)]
    pub model: Option<String>,
}

/// `[[model]]`: a model name callers use, and the providers that serve it, in order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name in API requests.
    pub name: String,
    /// Provider names; the first that answers wins.
    pub providers: Vec<String>,
}

/// `[[caller]]`: what one caller may do.
#[derive(Debug, Clone, Deserialize)]
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

mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| {
            humantime::parse_duration(&s).map_err(|e| {
                serde::de::Error::custom(format!("window {s:?} is not a duration like 1h: {e}"))
            })
        })
        .transpose()
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The plain HTTP listener (loopback; the inbound proxy is its only client).
    pub listen: SocketAddr,
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
    #[serde(default)]
    pub dlp: DlpConfig,
}

/// The default largest request.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// The default budget window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);

impl GatewayConfig {
    /// Reads and validates `path`.
    ///
    /// # Errors
    /// Unreadable, malformed or inconsistent files.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text`; `origin` names it in errors.
    ///
    /// # Errors
    /// Malformed or inconsistent text.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text)
            .map_err(|e| ConfigError::Parse(origin.to_owned(), e.message().to_owned()))?;
        cfg.validate()
            .map_err(|m| ConfigError::Invalid(origin.to_owned(), m))?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        if !self.listen.ip().is_loopback() {
            return Err(format!(
                "listen = \"{}\": the gateway trusts the caller identity its proxy adds, so it must listen on loopback only",
                self.listen
            ));
        }
        let mut names = std::collections::HashSet::new();
        for p in &self.providers {
            if !names.insert(p.name.as_str()) {
                return Err(format!("provider {:?} is defined twice", p.name));
            }
            if p.kind != ProviderKind::Offline && p.url.is_none() && p.kind != ProviderKind::Gemini
            {
                return Err(format!("provider {:?} needs url", p.name));
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
    pub fn offline(listen: SocketAddr, models: &[&str]) -> Self {
        Self {
            listen,
            providers: vec![ProviderConfig {
                name: "offline".into(),
                kind: ProviderKind::Offline,
                url: None,
                api_key: None,
                api_key_env: None,
                model: None,
            }],
            models: models
                .iter()
                .map(|m| ModelConfig {
                    name: (*m).into(),
                    providers: vec!["offline".into()],
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
        }
    }
}

#[cfg(test)]
mod tests {
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
        ];
        for (text, want) in cases {
            let e = GatewayConfig::parse(text, Path::new("g.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.starts_with("g.toml"), "{e}");
        }
    }
}
