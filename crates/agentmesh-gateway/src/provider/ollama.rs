//! Ollama's native chat API: `POST {url}/api/chat` with `stream: false`, answered by one
//! JSON object with `message.content`, `prompt_eval_count` and `eval_count`
//! (<https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion>).

use serde_json::{Value, json};

use super::{ChatRequest, ChatResponse, Unexpected, count, json_body};

/// The chat endpoint under `base` (the server's root, e.g. `http://127.0.0.1:11434`).
pub fn endpoint(base: &str) -> String {
    format!("{base}/api/chat")
}

/// Ollama knows `system`, `user`, `assistant` and `tool`; OpenAI's `developer` is its
/// `system`.
fn role(role: &str) -> &str {
    match role {
        "developer" => "system",
        other => other,
    }
}

/// The request body.
pub fn body(req: &ChatRequest) -> Value {
    json!({
        "model": req.model,
        "messages": req.messages.iter().map(|m| json!({
            "role": role(&m.role),
            "content": m.content,
        })).collect::<Vec<_>>(),
        "stream": false,
    })
}

/// Reads a non-streamed answer.
pub(crate) fn parse(body: &[u8]) -> Result<ChatResponse, Unexpected> {
    let v = json_body(body)?;
    if let Some(e) = v["error"].as_str() {
        return Err(Unexpected::Malformed(format!(
            "an error in a success answer: {e}"
        )));
    }
    let Some(content) = v["message"]["content"].as_str() else {
        return Err(Unexpected::Malformed(
            "no message.content in the answer".into(),
        ));
    };
    Ok(ChatResponse {
        content: content.to_owned(),
        prompt_tokens: count(&v["prompt_eval_count"]),
        completion_tokens: count(&v["eval_count"]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Message;

    #[test]
    fn maps_roles_and_asks_for_one_answer() {
        let b = body(&ChatRequest {
            model: "llama3.2".into(),
            messages: vec![
                Message {
                    role: "developer".into(),
                    content: "be brief".into(),
                },
                Message {
                    role: "user".into(),
                    content: "hi".into(),
                },
            ],
        });
        assert_eq!(b["stream"], false);
        assert_eq!(b["messages"][0]["role"], "system");
        assert_eq!(b["messages"][1]["role"], "user");
        assert_eq!(endpoint("http://h:11434"), "http://h:11434/api/chat");
    }

    #[test]
    fn refuses_answers_without_a_message() {
        for bad in [
            &b"nope"[..],
            br#"{"done":true}"#,
            br#"{"error":"model not found"}"#,
        ] {
            assert!(matches!(parse(bad), Err(Unexpected::Malformed(_))));
        }
    }
}
