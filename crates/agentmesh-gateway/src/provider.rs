//! Where completions come from. `offline` is embedded and deterministic; the network
//! providers (ollama, openai-compatible, gemini) are configured the same way and tried in the
//! order a model lists them.

use crate::config::{ProviderConfig, ProviderKind};

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

/// Why a provider gave no answer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// This provider kind is not built into this binary yet.
    #[error("provider {0:?}: the {1} provider is not available in this build")]
    Unsupported(String, &'static str),
}

/// A configured provider.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Its name in the config.
    pub name: String,
    kind: ProviderKind,
    /// The model name to send instead of the gateway's, if configured.
    pub model_override: Option<String>,
}

/// Roughly four characters per token, the usual rule of thumb for English text; used where
/// a provider reports no counts.
pub fn estimate_tokens(text: &str) -> u64 {
    let chars = text.chars().count() as u64;
    chars.div_ceil(4)
}

impl Provider {
    /// Builds the provider described by `cfg`.
    pub fn new(cfg: &ProviderConfig) -> Self {
        Self {
            name: cfg.name.clone(),
            kind: cfg.kind,
            model_override: cfg.model.clone(),
        }
    }

    /// Asks for a completion.
    ///
    /// # Errors
    /// The provider failed or is not available.
    pub async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        match self.kind {
            ProviderKind::Offline => Ok(offline(req)),
            ProviderKind::Ollama => Err(ProviderError::Unsupported(self.name.clone(), "ollama")),
            ProviderKind::Openai => Err(ProviderError::Unsupported(self.name.clone(), "openai")),
            ProviderKind::Gemini => Err(ProviderError::Unsupported(self.name.clone(), "gemini")),
        }
    }
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
