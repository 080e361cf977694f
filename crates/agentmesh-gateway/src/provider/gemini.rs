//! Google's Gemini API: `POST {base}/models/{model}:generateContent` with `x-goog-api-key`
//! (never `?key=`, so the key stays out of URLs and logs). System messages become
//! `systemInstruction`; user and assistant turns become `contents` with roles `user` and
//! `model`. The answer is `candidates[0].content.parts[].text` and `usageMetadata`
//! (<https://ai.google.dev/api/generate-content>).

use serde_json::{Value, json};

use super::{ChatRequest, ChatResponse, Unexpected, count, json_body};

/// The generateContent endpoint for `model`. A bare host gets the `v1beta` API version (the
/// one the docs use; `systemInstruction` is there); a url with a path is used as the
/// versioned base.
pub fn endpoint(base: &str, model: &str) -> String {
    let base = base.trim_end_matches('/');
    let has_path = base
        .split_once("://")
        .is_some_and(|(_, rest)| rest.contains('/'));
    let model = model.strip_prefix("models/").unwrap_or(model);
    if has_path {
        format!("{base}/models/{model}:generateContent")
    } else {
        format!("{base}/v1beta/models/{model}:generateContent")
    }
}

/// The request body.
pub fn body(req: &ChatRequest) -> Value {
    let mut system = Vec::new();
    let mut contents = Vec::new();
    for m in &req.messages {
        let role = match m.role.as_str() {
            "system" | "developer" => {
                system.push(json!({"text": m.content}));
                continue;
            }
            "assistant" | "model" => "model",
            // Gemini has only two conversational roles; a plain-text tool result is input.
            _ => "user",
        };
        contents.push(json!({"role": role, "parts": [{"text": m.content}]}));
    }
    let mut body = json!({"contents": contents});
    if !system.is_empty() {
        body["systemInstruction"] = json!({"parts": system});
    }
    body
}

/// Reads a GenerateContentResponse.
pub(crate) fn parse(body: &[u8]) -> Result<ChatResponse, Unexpected> {
    let v = json_body(body)?;
    let Some(candidate) = v["candidates"].get(0) else {
        if let Some(reason) = v["promptFeedback"]["blockReason"].as_str() {
            return Err(Unexpected::Refused(format!("prompt blocked ({reason})")));
        }
        return Err(Unexpected::Malformed("no candidates in the answer".into()));
    };
    let Some(parts) = candidate["content"]["parts"].as_array() else {
        if let Some(reason) = candidate["finishReason"].as_str() {
            return Err(Unexpected::Refused(format!(
                "no content (finishReason {reason})"
            )));
        }
        return Err(Unexpected::Malformed(
            "candidates[0].content.parts is missing".into(),
        ));
    };
    // Thought summaries, when a model sends them, are not the answer.
    let content: String = parts
        .iter()
        .filter(|p| p["thought"] != Value::Bool(true))
        .filter_map(|p| p["text"].as_str())
        .collect();
    let usage = &v["usageMetadata"];
    Ok(ChatResponse {
        content,
        prompt_tokens: count(&usage["promptTokenCount"]),
        // Thinking tokens are billed as output, so they count against the caller's budget.
        completion_tokens: count(&usage["candidatesTokenCount"])
            + count(&usage["thoughtsTokenCount"]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Message;

    #[test]
    fn endpoint_adds_the_version_to_a_bare_host() {
        assert_eq!(
            endpoint(
                "https://generativelanguage.googleapis.com",
                "gemini-2.0-flash"
            ),
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent"
        );
        assert_eq!(
            endpoint("http://127.0.0.1:9/v1/", "models/gemini-pro"),
            "http://127.0.0.1:9/v1/models/gemini-pro:generateContent"
        );
    }

    #[test]
    fn system_messages_become_the_system_instruction() {
        let m = |role: &str, content: &str| Message {
            role: role.into(),
            content: content.into(),
        };
        let b = body(&ChatRequest {
            model: "g".into(),
            messages: vec![
                m("system", "be a cat"),
                m("user", "hi"),
                m("assistant", "meow"),
            ],
        });
        assert_eq!(b["systemInstruction"]["parts"][0]["text"], "be a cat");
        assert_eq!(b["contents"][0]["role"], "user");
        assert_eq!(b["contents"][1]["role"], "model");
        assert_eq!(b["contents"].as_array().unwrap().len(), 2);
        let no_system = body(&ChatRequest {
            model: "g".into(),
            messages: vec![m("user", "hi")],
        });
        assert!(no_system.get("systemInstruction").is_none());
    }

    #[test]
    fn reads_parts_and_usage_and_names_blocks() {
        let ok = parse(br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"a"},{"text":"b"}]}}],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":2,"thoughtsTokenCount":3,"totalTokenCount":9}}"#).unwrap();
        assert_eq!(
            (ok.content.as_str(), ok.prompt_tokens, ok.completion_tokens),
            ("ab", 4, 5)
        );
        assert!(matches!(
            parse(br#"{"promptFeedback":{"blockReason":"SAFETY"}}"#),
            Err(Unexpected::Refused(r)) if r.contains("SAFETY")
        ));
        assert!(matches!(
            parse(br#"{"candidates":[{"finishReason":"SAFETY"}]}"#),
            Err(Unexpected::Refused(_))
        ));
        assert!(matches!(
            parse(br#"{"candidates":[{}]}"#),
            Err(Unexpected::Malformed(_))
        ));
        assert!(matches!(parse(b"{}"), Err(Unexpected::Malformed(_))));
    }
}
