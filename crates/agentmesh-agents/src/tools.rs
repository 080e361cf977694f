//! The executor's MCP tools. When its scenario gives it an upstream playing `mcp` (an MCP
//! server behind its own sidecar), the executor calls tools there before it asks the model,
//! and hands the model what they returned.
//!
//! Which tools: `search` with `{"query": <question>}` on every question, then each tool the
//! question names as `@name` (with no arguments), in order. A model choosing tools would be
//! the real thing; this keeps the offline scenario deterministic, and lets a user try a tool
//! the intentions refuse (`@delete_all`) and watch the sidecar stop it.
//!
//! Each call is one stateless MCP 2026-07-28 `tools/call` (no `initialize`, `Mcp-Method` and
//! `Mcp-Name` headers that match the body), so the server's sidecar can decide it from the
//! request alone. The user token rides in `x-agentmesh-user-token`, not `Authorization`,
//! which on an MCP route belongs to the MCP server's own OAuth; the delegation link names the
//! MCP server as the next hop, as for any other upstream.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::client::Upstreams;
use crate::config::UpstreamConfig;

/// The role an upstream plays when it is an MCP server.
pub const MCP_ROLE: &str = "mcp";

/// The revision the executor speaks: stateless, so one request is one decision.
const PROTOCOL_VERSION: &str = "2026-07-28";
// Where the MCP route takes the user token, and the JSON-RPC code a refused tool gets: the
// SDK's, which the sidecar answers with.
use agentmesh_sdk::delegation::USER_TOKEN_HEADER;
use agentmesh_sdk::mcp::DENIED;
/// The tool every question is looked up with.
const SEARCH_TOOL: &str = "search";
/// The most `@tool` mentions one question may make: a question is not a script.
const MAX_MENTIONS: usize = 8;
/// The longest tool name taken from a mention (MCP's own limit for names is 128).
const MAX_TOOL_NAME: usize = 128;

/// One tool call an executor made, as its answer reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolUse {
    /// The MCP server's service name.
    pub server: String,
    /// The tool called.
    pub tool: String,
    /// Whether the tool answered (a refusal or a tool error is `false`).
    pub ok: bool,
    /// The tool's text, or why there is none.
    pub text: String,
    /// The intention that refused the call, when the sidecar named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intention: Option<String>,
}

impl ToolUse {
    /// One line for the model's context and the answer: `search ✓ found: …`.
    pub fn line(&self) -> String {
        let mark = if self.ok { "✓" } else { "✗" };
        let text = self.text.replace('\n', " ");
        format!("{} {mark} {text}", self.tool)
    }
}

/// The tools a question asks for: `search`, then each `@name` in order, without repeats.
pub fn tools_for(question: &str) -> Vec<String> {
    let mut tools = vec![SEARCH_TOOL.to_owned()];
    for word in question.split_whitespace() {
        let Some(name) = word.strip_prefix('@') else {
            continue;
        };
        // Trailing punctuation belongs to the sentence, not the name.
        let name = name.trim_end_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        let valid = !name.is_empty()
            && name.len() <= MAX_TOOL_NAME
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if valid && !tools.iter().any(|t| t == name) {
            tools.push(name.to_owned());
            if tools.len() > MAX_MENTIONS {
                break;
            }
        }
    }
    tools
}

/// The `tools/call` request for `tool`, as id `id`.
fn call_body(id: u64, tool: &str, question: &str) -> Value {
    let arguments = if tool == SEARCH_TOOL {
        json!({ "query": question })
    } else {
        json!({})
    };
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "tools/call",
        "params": {
            "name": tool,
            "arguments": arguments,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": PROTOCOL_VERSION,
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    })
}

/// Calls `tool` on the MCP server `up`. `delegation` is what the agent sends any upstream
/// (`authorization: Bearer <user token>` and the links); the token moves to
/// [`USER_TOKEN_HEADER`].
pub(crate) async fn call(
    upstreams: &Upstreams,
    up: &UpstreamConfig,
    id: u64,
    tool: &str,
    question: &str,
    traceparent: &str,
    delegation: &[(&'static str, String)],
) -> ToolUse {
    let mut headers: Vec<(&str, String)> = vec![
        ("accept", "application/json, text/event-stream".into()),
        ("mcp-protocol-version", PROTOCOL_VERSION.into()),
        ("mcp-method", "tools/call".into()),
        ("mcp-name", tool.to_owned()),
        ("traceparent", traceparent.to_owned()),
    ];
    for (name, value) in delegation {
        match value.strip_prefix("Bearer ") {
            Some(token) if *name == "authorization" => {
                headers.push((USER_TOKEN_HEADER, token.to_owned()));
            }
            _ => headers.push((name, value.clone())),
        }
    }
    let body = Bytes::from(call_body(id, tool, question).to_string());
    let outcome = upstreams.post_raw(up, "/mcp", body, &headers).await;
    let (ok, text, intention) = match outcome {
        Ok((status, bytes)) => read_answer(id, status, &bytes),
        Err(e) => (false, e.to_string(), None),
    };
    ToolUse {
        server: up.name.clone(),
        tool: tool.to_owned(),
        ok,
        text,
        intention,
    }
}

/// What one `tools/call` answer says: (answered, text, refusing intention). The answer is
/// JSON, or SSE whose `data:` lines carry JSON-RPC messages (progress first, ours last).
fn read_answer(id: u64, status: http::StatusCode, bytes: &[u8]) -> (bool, String, Option<String>) {
    let text = String::from_utf8_lossy(bytes);
    let ours = |v: &Value| v.get("id").and_then(Value::as_u64) == Some(id);
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .filter(ours)
        .or_else(|| {
            text.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
                .find(ours)
        });
    let Some(message) = message else {
        let head: String = text.chars().take(200).collect();
        return (
            false,
            format!("no JSON-RPC answer (HTTP {}): {head}", status.as_u16()),
            None,
        );
    };
    if let Some(err) = message.get("error") {
        let msg = err["message"].as_str().unwrap_or("error").to_owned();
        let intention = (err["code"].as_i64() == Some(DENIED))
            .then(|| err.pointer("/data/intention").and_then(Value::as_str))
            .flatten()
            .map(str::to_owned);
        return (false, msg, intention);
    }
    let result = &message["result"];
    let joined = result["content"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    (result["isError"].as_bool() != Some(true), joined, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_names_its_tools_with_at_signs() {
        assert_eq!(tools_for("what is agentmesh?"), ["search"]);
        assert_eq!(
            tools_for("please @export, then @delete_all. And @export again; @search too"),
            ["search", "export", "delete_all"]
        );
        // An address or a bare @ is no tool.
        assert_eq!(tools_for("mail a@b.c or @ or @!"), ["search"]);
        let many: String = (0..50).map(|i| format!("@t{i} ")).collect();
        assert_eq!(tools_for(&many).len(), MAX_MENTIONS + 1);
    }

    #[test]
    fn answers_are_read_from_json_and_sse_and_refusals_keep_their_intention() {
        let ok = json!({"jsonrpc": "2.0", "id": 3, "result": {"content": [
            {"type": "text", "text": "found: x"}]}});
        assert_eq!(
            read_answer(3, http::StatusCode::OK, ok.to_string().as_bytes()),
            (true, "found: x".into(), None)
        );
        let sse = format!(
            "event: message\ndata: {}\n\nevent: message\ndata: {}\n\n",
            json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {}}),
            ok
        );
        assert_eq!(
            read_answer(3, http::StatusCode::OK, sse.as_bytes()).1,
            "found: x"
        );
        let denied = json!({"jsonrpc": "2.0", "id": 4, "error": {"code": -32003,
            "message": "denied by intentions: no", "data": {"intention": "abc"}}});
        assert_eq!(
            read_answer(4, http::StatusCode::OK, denied.to_string().as_bytes()),
            (false, "denied by intentions: no".into(), Some("abc".into()))
        );
        let tool_error = json!({"jsonrpc": "2.0", "id": 5, "result": {"isError": true,
            "content": [{"type": "text", "text": "boom"}]}});
        assert!(!read_answer(5, http::StatusCode::OK, tool_error.to_string().as_bytes()).0);
        let (ok, why, _) = read_answer(6, http::StatusCode::BAD_GATEWAY, b"upstream down");
        assert!(
            !ok && why.contains("HTTP 502") && why.contains("upstream down"),
            "{why}"
        );
        // Someone else's id is not our answer.
        assert!(!read_answer(9, http::StatusCode::OK, ok_json(8).as_bytes()).0);
    }

    fn ok_json(id: u64) -> String {
        json!({"jsonrpc": "2.0", "id": id, "result": {"content": []}}).to_string()
    }
}
