//! OpenAI's Chat Completions API, which most servers copy (vLLM, llama.cpp, LM Studio, Groq,
//! Ollama's `/v1`): `POST {base}/chat/completions` with `Authorization: Bearer`, answered by
//! `choices[0].message.content` and `usage`
//! (<https://platform.openai.com/docs/api-reference/chat/create>).

use serde_json::{Value, json};

use super::{ChatRequest, ChatResponse, Unexpected, count, json_body};

/// The chat endpoint for a configured url. The official SDKs take a base URL that includes
/// the version (`https://api.openai.com/v1`) and append `/chat/completions`; people also
/// write the bare host. So: a url with a path is an SDK base URL, a bare host gets `/v1`, and
/// a url that already names the endpoint is used as is.
pub fn endpoint(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/chat/completions") {
        return base.to_owned();
    }
    let has_path = base
        .split_once("://")
        .is_some_and(|(_, rest)| rest.contains('/'));
    if has_path {
        format!("{base}/chat/completions")
    } else {
        format!("{base}/v1/chat/completions")
    }
}

/// The request body. Roles pass through: every OpenAI-compatible server knows `system`,
/// `user` and `assistant`, and OpenAI itself also `developer`.
pub fn body(req: &ChatRequest) -> Value {
    json!({
        "model": req.model,
        "messages": req.messages.iter().map(|m| json!({
            "role": m.role,
            "content": m.content,
        })).collect::<Vec<_>>(),
        "stream": false,
    })
}

/// Reads a chat completion.
pub(crate) fn parse(body: &[u8]) -> Result<ChatResponse, Unexpected> {
    let v = json_body(body)?;
    let Some(choice) = v["choices"].get(0) else {
        return Err(Unexpected::Malformed("no choices in the answer".into()));
    };
    let message = &choice["message"];
    let content = match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Null => {
            if let Some(refusal) = message["refusal"].as_str() {
                return Err(Unexpected::Refused(refusal.to_owned()));
            }
            if message.get("tool_calls").is_some_and(|t| !t.is_null()) {
                return Err(Unexpected::Malformed(
                    "the answer is a tool call, which the gateway does not relay".into(),
                ));
            }
            return Err(Unexpected::Malformed(
                "choices[0].message.content is missing".into(),
            ));
        }
        // Some compatible servers answer with content parts.
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<String>(),
        other => {
            return Err(Unexpected::Malformed(format!(
                "choices[0].message.content is {other}, not text"
            )));
        }
    };
    Ok(ChatResponse {
        content,
        prompt_tokens: count(&v["usage"]["prompt_tokens"]),
        completion_tokens: count(&v["usage"]["completion_tokens"]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_accepts_a_base_with_or_without_the_version() {
        for (url, want) in [
            (
                "https://api.openai.com",
                "https://api.openai.com/v1/chat/completions",
            ),
            (
                "https://api.openai.com/",
                "https://api.openai.com/v1/chat/completions",
            ),
            (
                "https://api.openai.com/v1",
                "https://api.openai.com/v1/chat/completions",
            ),
            (
                "http://127.0.0.1:11434/v1/",
                "http://127.0.0.1:11434/v1/chat/completions",
            ),
            (
                "https://api.groq.com/openai/v1",
                "https://api.groq.com/openai/v1/chat/completions",
            ),
            (
                "https://generativelanguage.googleapis.com/v1beta/openai",
                "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions",
            ),
            (
                "http://h:8000/v1/chat/completions",
                "http://h:8000/v1/chat/completions",
            ),
        ] {
            assert_eq!(endpoint(url), want, "{url}");
        }
    }

    #[test]
    fn reads_text_refusals_and_refuses_other_shapes() {
        let ok = parse(br#"{"choices":[{"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#).unwrap();
        assert_eq!(
            (ok.content.as_str(), ok.prompt_tokens, ok.completion_tokens),
            ("hi", 3, 1)
        );
        let no_usage = parse(br#"{"choices":[{"message":{"content":"hi"}}]}"#).unwrap();
        assert_eq!(no_usage.prompt_tokens, 0, "the caller estimates");
        assert!(matches!(
            parse(br#"{"choices":[{"message":{"content":null,"refusal":"no"}}]}"#),
            Err(Unexpected::Refused(r)) if r == "no"
        ));
        for bad in [
            &b"<html>"[..],
            br#"{"choices":[]}"#,
            br#"{"object":"chat.completion"}"#,
            br#"{"choices":[{"message":{"content":42}}]}"#,
            br#"{"choices":[{"message":{"content":null,"tool_calls":[{}]}}]}"#,
        ] {
            assert!(
                matches!(parse(bad), Err(Unexpected::Malformed(_))),
                "{bad:?}"
            );
        }
    }
}
