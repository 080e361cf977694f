//! Plain HTTP to the local proxy's outbound ports: the agents never see a certificate, the
//! proxy does mTLS and the destination's proxy decides. An agent with `[mtls]` calls each
//! upstream over mTLS itself instead, pinning the upstream's SPIFFE ID (the SDK's client).
//! What comes back is turned into one clear error, keeping the refusal's reason and intention
//! when a proxy (or an in-process intention check) refused.

use std::time::Duration;

use agentmesh_sdk::LocalConnector;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::config::UpstreamConfig;

/// How long one call may take. Generous because a real model on CPU is slow; the gateway
/// has its own, shorter provider timeouts and answers 502/503 before this fires.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Why a call to an upstream gave no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// Nothing listened, or the connection broke.
    #[error("{0} is unreachable through the local proxy ({1}): {2}")]
    Unreachable(String, String, String),
    /// A proxy (ours or the destination's) refused by intentions.
    #[error("{upstream} refused the call: {reason}{intention}", intention = intention.as_ref().map(|i| format!(" (intention {i})")).unwrap_or_default())]
    Refused {
        /// The upstream's service name.
        upstream: String,
        /// Why, as the deciding proxy said.
        reason: String,
        /// The intention that decided, if one matched.
        intention: Option<String>,
    },
    /// The upstream answered with an error.
    #[error("{upstream} answered {status}: {message}")]
    Failed {
        /// The upstream's service name.
        upstream: String,
        /// Its HTTP status.
        status: u16,
        /// Its error message.
        message: String,
    },
    /// The answer was not the JSON expected.
    #[error("{0} answered with a body that is not the expected JSON: {1}")]
    BadAnswer(String, String),
    /// No answer within [`CALL_TIMEOUT`].
    #[error("{0} did not answer within {1} s")]
    Timeout(String, u64),
}

impl CallError {
    /// The refusal details, for the agent's own error answer.
    pub fn refusal(&self) -> Option<Value> {
        match self {
            CallError::Refused {
                upstream,
                reason,
                intention,
            } => Some(serde_json::json!({
                "upstream": upstream, "reason": reason, "intention": intention,
            })),
            _ => None,
        }
    }
}

/// The message inside an error body in any of the shapes the mesh produces: the proxy's
/// `{"error": "...", "reason": ...}`, OpenAI's `{"error": {"message": ...}}`, Ollama's
/// `{"error": "..."}` and an agent's own.
fn error_message(body: &Value) -> Option<String> {
    match body.get("error")? {
        Value::String(s) => Some(match body.get("reason").and_then(Value::as_str) {
            Some(r) => format!("{s}: {r}"),
            None => s.clone(),
        }),
        Value::Object(o) => o.get("message").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// A pooled HTTP/1.1 client for the local proxy ports, and with `[mtls]` one pinned mTLS
/// client per upstream.
#[derive(Clone)]
pub struct Upstreams {
    client: Client<HttpConnector, Full<Bytes>>,
    /// One client per upstream whose sidecar port is a Unix socket.
    local: std::collections::HashMap<String, Client<LocalConnector, Full<Bytes>>>,
    mtls: std::collections::HashMap<String, agentmesh_sdk::MtlsClient>,
}

impl Default for Upstreams {
    fn default() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            local: std::collections::HashMap::new(),
            mtls: std::collections::HashMap::new(),
        }
    }
}

impl Upstreams {
    /// Clients for `upstreams`: a socket client for each `unix:///path`, the shared TCP
    /// client for the rest.
    pub fn for_upstreams(upstreams: &[UpstreamConfig]) -> Self {
        let mut me = Self::default();
        for u in upstreams {
            if let Some(addr) = u.unix_socket() {
                me.local
                    .insert(u.name.clone(), agentmesh_sdk::http_client(&addr));
            }
        }
        me
    }

    /// Calls the upstream named `name` over mTLS with `client` from now on.
    pub fn pin(&mut self, name: &str, client: agentmesh_sdk::MtlsClient) {
        self.mtls.insert(name.to_owned(), client);
    }

    /// Sends `req` to `upstream` over its pinned mTLS client, or plainly to the local proxy.
    async fn send(
        &self,
        upstream: &str,
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        if let Some(c) = self.mtls.get(upstream) {
            return c.request(req).await.map_err(|e| e.to_string());
        }
        match self.local.get(upstream) {
            Some(c) => c.request(req).await.map_err(|e| e.to_string()),
            None => self.client.request(req).await.map_err(|e| e.to_string()),
        }
    }

    /// POSTs `body` to `path` on `up` and returns the status and body as they came; the
    /// admin `/probe` uses it.
    ///
    /// # Errors
    /// Unreachable (TLS refused included), or no answer in [`CALL_TIMEOUT`].
    pub async fn forward(
        &self,
        up: &UpstreamConfig,
        path: &str,
        body: Bytes,
    ) -> Result<(http::StatusCode, Bytes), CallError> {
        let url = format!("{}{path}", up.base_url());
        let req = http::Request::post(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| CallError::Unreachable(up.name.clone(), url.clone(), e.to_string()))?;
        self.exchange(up, &url, req).await
    }

    /// POSTs `body` as JSON to `path` on `up` with `headers`, and returns the status and body
    /// as they came (an MCP answer may be SSE, and its errors are JSON-RPC, not HTTP).
    ///
    /// # Errors
    /// Unreachable, or no answer in [`CALL_TIMEOUT`].
    pub async fn post_raw(
        &self,
        up: &UpstreamConfig,
        path: &str,
        body: Bytes,
        headers: &[(&str, String)],
    ) -> Result<(http::StatusCode, Bytes), CallError> {
        let url = format!("{}{path}", up.base_url());
        let mut req =
            http::Request::post(&url).header(http::header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            req = req.header(*name, value.as_str());
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| CallError::Unreachable(up.name.clone(), url.clone(), e.to_string()))?;
        self.exchange(up, &url, req).await
    }

    /// Sends `req` and collects the whole answer within [`CALL_TIMEOUT`].
    async fn exchange(
        &self,
        up: &UpstreamConfig,
        url: &str,
        req: http::Request<Full<Bytes>>,
    ) -> Result<(http::StatusCode, Bytes), CallError> {
        let unreachable = |e: String| CallError::Unreachable(up.name.clone(), url.to_owned(), e);
        let call = async {
            let resp = self.send(&up.name, req).await.map_err(unreachable)?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, CallError>((status, bytes))
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| CallError::Timeout(up.name.clone(), CALL_TIMEOUT.as_secs()))?
    }

    /// POSTs `body` as JSON to `path` on `up`, with the trace context and `extra` headers
    /// (the user token and the delegation chain), and returns the JSON answer of a 2xx.
    ///
    /// # Errors
    /// See [`CallError`].
    pub async fn post_json(
        &self,
        up: &UpstreamConfig,
        path: &str,
        body: &Value,
        traceparent: &str,
        extra: &[(&'static str, String)],
    ) -> Result<Value, CallError> {
        let url = format!("{}{path}", up.base_url());
        let mut req = http::Request::post(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("traceparent", traceparent);
        for (name, value) in extra {
            req = req.header(*name, value.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| CallError::Unreachable(up.name.clone(), url.clone(), e.to_string()))?;
        let (status, bytes) = self.exchange(up, &url, req).await?;
        let json: Result<Value, _> = serde_json::from_slice(&bytes);
        if status.is_success() {
            return json.map_err(|e| CallError::BadAnswer(up.name.clone(), e.to_string()));
        }
        let body = json.unwrap_or(Value::Null);
        // A proxy's refusal names the deciding intention; keep it, it is the explanation.
        if status == http::StatusCode::FORBIDDEN && body.get("reason").is_some() {
            return Err(CallError::Refused {
                upstream: up.name.clone(),
                reason: body["reason"].as_str().unwrap_or_default().to_owned(),
                intention: body
                    .get("intention")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            });
        }
        let message = error_message(&body).unwrap_or_else(|| {
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
        });
        Err(CallError::Failed {
            upstream: up.name.clone(),
            status: status.as_u16(),
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_found_in_every_shape() {
        let cases = [
            (
                serde_json::json!({"error": "denied by intentions", "reason": "no intention"}),
                "denied by intentions: no intention",
            ),
            (
                serde_json::json!({"error": {"message": "model not allowed", "type": "x"}}),
                "model not allowed",
            ),
            (serde_json::json!({"error": "budget spent"}), "budget spent"),
        ];
        for (body, want) in cases {
            assert_eq!(error_message(&body).as_deref(), Some(want));
        }
        assert_eq!(error_message(&serde_json::json!({"answer": 1})), None);
    }
}
