//! The two wire APIs the gateway speaks, so existing clients work unchanged: OpenAI's
//! (`/v1/chat/completions` plain and SSE, `/v1/models`) and Ollama's (`/api/chat`,
//! `/api/generate` with NDJSON streaming, `/api/tags`). Each refusal is sent in the API's own
//! error shape, which the official clients parse.

use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::provider::Message;

/// Which API a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI `/v1/...`.
    OpenAi,
    /// Ollama `/api/chat`.
    OllamaChat,
    /// Ollama `/api/generate`.
    OllamaGenerate,
}

/// A request normalized across the APIs.
#[derive(Debug, Clone)]
pub struct Chat {
    /// The model asked for.
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Whether to stream the answer.
    pub stream: bool,
    /// The most completion tokens the caller asked for: OpenAI's `max_completion_tokens` or
    /// `max_tokens`, Ollama's `options.num_predict` (a negative one means no limit).
    pub max_tokens: Option<u64>,
}

/// A refusal or failure, rendered in the API's error shape.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// In words.
    pub message: String,
    /// OpenAI's `type`.
    pub kind: &'static str,
    /// OpenAI's `code`, and the audit decision.
    pub code: &'static str,
}

impl ApiError {
    /// A 400 for a body that is not the API's JSON.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            code: "invalid_request",
        }
    }

    /// The error body in `api`'s shape.
    pub fn body(&self, api: Api) -> Value {
        match api {
            Api::OpenAi => json!({"error": {
                "message": self.message,
                "type": self.kind,
                "param": null,
                "code": self.code,
            }}),
            Api::OllamaChat | Api::OllamaGenerate => json!({"error": self.message}),
        }
    }
}

#[derive(Deserialize)]
struct OpenAiMessage {
    role: String,
    #[serde(default)]
    content: Option<OpenAiContent>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OpenAiContent {
    Text(String),
    Parts(Vec<OpenAiPart>),
}

#[derive(Deserialize)]
struct OpenAiPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct OpenAiChat {
    model: String,
    messages: Vec<OpenAiMessage>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct OllamaOptions {
    #[serde(default)]
    num_predict: Option<i64>,
}

impl OllamaOptions {
    fn max_tokens(&self) -> Option<u64> {
        self.num_predict.and_then(|n| u64::try_from(n).ok())
    }
}

#[derive(Deserialize)]
struct OllamaChatReq {
    model: String,
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    options: OllamaOptions,
}

#[derive(Deserialize)]
struct OllamaGenerateReq {
    model: String,
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    options: OllamaOptions,
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Parses a request body of `api`.
///
/// # Errors
/// Malformed JSON, missing fields, or content parts that are not text.
pub fn parse(api: Api, body: &Bytes) -> Result<Chat, ApiError> {
    let chat = match api {
        Api::OpenAi => {
            let r: OpenAiChat = parse_json(body)?;
            let mut messages = Vec::with_capacity(r.messages.len());
            for m in r.messages {
                let content = match m.content {
                    None => String::new(),
                    Some(OpenAiContent::Text(t)) => t,
                    Some(OpenAiContent::Parts(parts)) => {
                        let mut text = String::new();
                        for p in parts {
                            match (p.kind.as_str(), p.text) {
                                ("text", Some(t)) => text.push_str(&t),
                                (other, _) => {
                                    return Err(ApiError::bad_request(format!(
                                        "content part of type {other:?} is not supported; only text"
                                    )));
                                }
                            }
                        }
                        text
                    }
                };
                messages.push(Message {
                    role: m.role,
                    content,
                });
            }
            Chat {
                model: r.model,
                messages,
                stream: r.stream.unwrap_or(false),
                max_tokens: r.max_completion_tokens.or(r.max_tokens),
            }
        }
        Api::OllamaChat => {
            let r: OllamaChatReq = parse_json(body)?;
            Chat {
                model: r.model,
                messages: r.messages,
                // Ollama streams unless told not to.
                stream: r.stream.unwrap_or(true),
                max_tokens: r.options.max_tokens(),
            }
        }
        Api::OllamaGenerate => {
            let r: OllamaGenerateReq = parse_json(body)?;
            let mut messages = Vec::new();
            if let Some(system) = r.system {
                messages.push(Message {
                    role: "system".into(),
                    content: system,
                });
            }
            messages.push(Message {
                role: "user".into(),
                content: r.prompt,
            });
            Chat {
                model: r.model,
                messages,
                stream: r.stream.unwrap_or(true),
                max_tokens: r.options.max_tokens(),
            }
        }
    };
    if chat.model.trim().is_empty() {
        return Err(ApiError::bad_request("model is required"));
    }
    if chat.messages.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty"));
    }
    Ok(chat)
}

/// A finished completion, ready to render.
#[derive(Debug, Clone)]
pub struct Answer {
    /// A request id (`chatcmpl-…`).
    pub id: String,
    /// The model as the caller named it.
    pub model: String,
    /// The assistant's text.
    pub content: String,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Unix seconds.
    pub created: u64,
    /// RFC 3339, for Ollama.
    pub created_at: String,
}

/// Streaming pieces: words with their trailing space, as a model would emit tokens.
fn pieces(text: &str) -> Vec<&str> {
    text.split_inclusive(' ').collect()
}

/// The content type and body bytes for `answer` in `api`, streamed or not.
pub fn render(api: Api, stream: bool, a: &Answer) -> (&'static str, Vec<Bytes>) {
    let usage = json!({
        "prompt_tokens": a.prompt_tokens,
        "completion_tokens": a.completion_tokens,
        "total_tokens": a.prompt_tokens + a.completion_tokens,
    });
    match (api, stream) {
        (Api::OpenAi, false) => (
            "application/json",
            vec![json_bytes(&json!({
                "id": a.id,
                "object": "chat.completion",
                "created": a.created,
                "model": a.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": a.content},
                    "finish_reason": "stop",
                }],
                "usage": usage,
            }))],
        ),
        (Api::OpenAi, true) => {
            let chunk = |delta: Value, finish: Value, usage: Value| {
                let mut v = json!({
                    "id": a.id,
                    "object": "chat.completion.chunk",
                    "created": a.created,
                    "model": a.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                });
                if !usage.is_null() {
                    v["usage"] = usage;
                }
                Bytes::from(format!("data: {v}\n\n"))
            };
            let mut out = vec![chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
                Value::Null,
            )];
            for p in pieces(&a.content) {
                out.push(chunk(json!({"content": p}), Value::Null, Value::Null));
            }
            out.push(chunk(json!({}), json!("stop"), usage));
            out.push(Bytes::from_static(b"data: [DONE]\n\n"));
            ("text/event-stream", out)
        }
        (Api::OllamaChat | Api::OllamaGenerate, stream) => {
            let done = |text: &str| {
                let mut v = json!({
                    "model": a.model,
                    "created_at": a.created_at,
                    "done": true,
                    "done_reason": "stop",
                    "total_duration": 0,
                    "load_duration": 0,
                    "prompt_eval_count": a.prompt_tokens,
                    "prompt_eval_duration": 0,
                    "eval_count": a.completion_tokens,
                    "eval_duration": 0,
                });
                if api == Api::OllamaChat {
                    v["message"] = json!({"role": "assistant", "content": text});
                } else {
                    v["response"] = json!(text);
                    v["context"] = json!([]);
                }
                v
            };
            if !stream {
                return ("application/json", vec![json_bytes(&done(&a.content))]);
            }
            let mut out = Vec::new();
            for p in pieces(&a.content) {
                let mut v = json!({"model": a.model, "created_at": a.created_at, "done": false});
                if api == Api::OllamaChat {
                    v["message"] = json!({"role": "assistant", "content": p});
                } else {
                    v["response"] = json!(p);
                }
                out.push(ndjson(&v));
            }
            out.push(ndjson(&done("")));
            ("application/x-ndjson", out)
        }
    }
}

fn json_bytes(v: &Value) -> Bytes {
    Bytes::from(v.to_string())
}

fn ndjson(v: &Value) -> Bytes {
    Bytes::from(format!("{v}\n"))
}

/// `/v1/models` for the models `names`.
pub fn openai_models(names: &[String], created: u64) -> Value {
    json!({
        "object": "list",
        "data": names.iter().map(|n| json!({
            "id": n, "object": "model", "created": created, "owned_by": "agentmesh",
        })).collect::<Vec<_>>(),
    })
}

/// `/api/tags` for the models `names`.
pub fn ollama_tags(names: &[String], modified_at: &str) -> Value {
    json!({
        "models": names.iter().map(|n| json!({
            "name": n,
            "model": n,
            "modified_at": modified_at,
            "size": 0,
            "digest": "",
            "details": {
                "parent_model": "",
                "format": "agentmesh",
                "family": "agentmesh",
                "families": ["agentmesh"],
                "parameter_size": "",
                "quantization_level": "",
            },
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_api_and_refuses_malformed_bodies() {
        let c = parse(
            Api::OpenAi,
            &Bytes::from_static(br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#),
        )
        .unwrap();
        assert_eq!((c.model.as_str(), c.stream), ("m", false));
        assert_eq!(c.messages[0].content, "hi");
        let c = parse(
            Api::OllamaChat,
            &Bytes::from_static(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#),
        )
        .unwrap();
        assert!(c.stream, "ollama streams by default");
        let c = parse(
            Api::OllamaGenerate,
            &Bytes::from_static(br#"{"model":"m","prompt":"p","system":"s","stream":false}"#),
        )
        .unwrap();
        assert_eq!(c.messages.len(), 2);
        assert!(!c.stream);

        for (api, body) in [
            (Api::OpenAi, "{"),
            (Api::OpenAi, "[]"),
            (Api::OpenAi, r#"{"messages":[]}"#),
            (Api::OpenAi, r#"{"model":"m","messages":[]}"#),
            (
                Api::OpenAi,
                r#"{"model":"","messages":[{"role":"user","content":"x"}]}"#,
            ),
            (
                Api::OpenAi,
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
            ),
            (Api::OllamaChat, "not json"),
            (Api::OllamaGenerate, r#"{"prompt":"p"}"#),
        ] {
            let e = parse(api, &Bytes::from(body)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            let shaped = e.body(api);
            match api {
                Api::OpenAi => assert!(shaped["error"]["message"].is_string()),
                _ => assert!(shaped["error"].is_string()),
            }
        }
    }

    #[test]
    fn the_completion_limit_is_read_from_each_apis_own_field() {
        for (api, body, want) in [
            (Api::OpenAi, r#"{"max_tokens":50}"#, Some(50)),
            (
                Api::OpenAi,
                r#"{"max_tokens":50,"max_completion_tokens":70}"#,
                Some(70),
            ),
            (Api::OpenAi, r#"{}"#, None),
            (
                Api::OllamaChat,
                r#"{"options":{"num_predict":30}}"#,
                Some(30),
            ),
            (Api::OllamaChat, r#"{"options":{"num_predict":-1}}"#, None),
            (
                Api::OllamaGenerate,
                r#"{"options":{"num_predict":5}}"#,
                Some(5),
            ),
            (Api::OllamaGenerate, r#"{"options":{}}"#, None),
        ] {
            let mut v: Value = serde_json::from_str(body).unwrap();
            v["model"] = json!("m");
            v["messages"] = json!([{"role": "user", "content": "hi"}]);
            v["prompt"] = json!("hi");
            let c = parse(api, &Bytes::from(v.to_string())).unwrap();
            assert_eq!(c.max_tokens, want, "{api:?} {body}");
        }
        let e = parse(
            Api::OpenAi,
            &Bytes::from_static(
                br#"{"model":"m","max_tokens":-3,"messages":[{"role":"user","content":"x"}]}"#,
            ),
        )
        .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn streams_end_the_way_each_client_expects() {
        let a = Answer {
            id: "chatcmpl-1".into(),
            model: "m".into(),
            content: "one two three".into(),
            prompt_tokens: 1,
            completion_tokens: 2,
            created: 1,
            created_at: "2026-01-01T00:00:00Z".into(),
        };
        let (ct, body) = render(Api::OpenAi, true, &a);
        assert_eq!(ct, "text/event-stream");
        assert_eq!(body.last().unwrap().as_ref(), b"data: [DONE]\n\n");
        let (ct, body) = render(Api::OllamaChat, true, &a);
        assert_eq!(ct, "application/x-ndjson");
        let last: Value = serde_json::from_slice(body.last().unwrap()).unwrap();
        assert_eq!(last["done"], true);
        let text: String = body[..body.len() - 1]
            .iter()
            .map(|b| {
                let v: Value = serde_json::from_slice(b).unwrap();
                v["message"]["content"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(text, "one two three");
    }
}
