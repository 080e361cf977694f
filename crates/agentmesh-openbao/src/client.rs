//! The OpenBao client: one base address, a pooled hyper client, and the few calls agentmesh
//! makes. Every failure names the call and carries OpenBao's own answer (its `errors` list),
//! because "permission denied" or "no handler for route" is what tells an operator which
//! setting is wrong.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentmesh_proto::https::{self, ClientSettings, HttpClient, HttpError};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use serde_json::{Value, json};

/// The largest answer read from OpenBao; real answers are a few KiB.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// How long one call may take before OpenBao counts as unreachable. A hung OpenBao must not
/// hold up the server's rotation loop or a gateway refresh forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an OpenBao call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenBaoError {
    /// The address is not an `http://` or `https://` URL.
    #[error("address {address:?} is not an http:// or https:// URL: {reason}")]
    BadAddress {
        /// The configured address.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA file for an https address could not be used.
    #[error("ca_file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Nothing answered, or the connection broke, or the call timed out.
    #[error("OpenBao at {address} is unreachable ({call}): {source}")]
    Unreachable {
        /// The base address.
        address: String,
        /// Which call, such as `POST /v1/pki/root/sign-intermediate`.
        call: String,
        /// The connection error.
        #[source]
        source: HttpError,
    },
    /// OpenBao answered with an error status.
    #[error("OpenBao refused {call} with {status}: {errors}")]
    Refused {
        /// Which call.
        call: String,
        /// The HTTP status.
        status: u16,
        /// OpenBao's `errors`, joined, or the body when it had none.
        errors: String,
    },
    /// OpenBao answered 2xx with something this client cannot use.
    #[error("OpenBao's answer to {call} is unusable: {reason}")]
    BadAnswer {
        /// Which call.
        call: String,
        /// What is missing or malformed.
        reason: String,
    },
}

impl OpenBaoError {
    /// The HTTP status OpenBao answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A secret string (a token, a secret ID, a provider key) that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A client token from a login, with how long it lasts.
#[derive(Debug, Clone)]
pub struct Login {
    /// The client token.
    pub token: Secret,
    /// The token's lease; zero means it does not expire (a root token).
    pub lease: Duration,
    /// The policies OpenBao attached, for the log.
    pub policies: Vec<String>,
}

/// What `sign-intermediate` returned, as PEM.
#[derive(Debug, Clone)]
pub struct SignedIntermediate {
    /// The signed intermediate.
    pub certificate: String,
    /// The CA that signed it.
    pub issuing_ca: String,
    /// The chain above (and, in OpenBao, including) the certificate, up to the root.
    pub ca_chain: Vec<String>,
}

/// A KV v2 secret's fields (`data.data`), kept only in memory.
pub struct KvSecret {
    fields: serde_json::Map<String, Value>,
    /// The version OpenBao reported.
    pub version: Option<u64>,
}

impl KvSecret {
    /// A string field of the secret.
    pub fn field(&self, name: &str) -> Option<Secret> {
        self.fields
            .get(name)
            .and_then(Value::as_str)
            .map(Secret::new)
    }

    /// The field names, never the values, for error messages.
    pub fn field_names(&self) -> Vec<String> {
        self.fields.keys().cloned().collect()
    }
}

impl fmt::Debug for KvSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvSecret")
            .field("fields", &self.field_names())
            .field("version", &self.version)
            .finish()
    }
}

/// A client for one OpenBao address.
#[derive(Clone)]
pub struct OpenBao {
    address: String,
    base: Uri,
    http: HttpClient,
}

impl fmt::Debug for OpenBao {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenBao")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl OpenBao {
    /// A client for `address` (`http://host:port` or `https://…`). For https, `ca_file` (PEM)
    /// names the CA to trust; without it the Mozilla roots are used.
    ///
    /// # Errors
    /// [`OpenBaoError::BadAddress`] or [`OpenBaoError::CaFile`].
    pub fn new(address: &str, ca_file: Option<&Path>) -> Result<Self, OpenBaoError> {
        let bad = |reason: &str| OpenBaoError::BadAddress {
            address: address.to_owned(),
            reason: reason.to_owned(),
        };
        let trimmed = address.trim_end_matches('/');
        let base: Uri = trimmed
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        match base.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err(bad("the scheme must be http or https")),
        }
        if base.host().is_none_or(str::is_empty) {
            return Err(bad("it has no host"));
        }
        if base.path() != "/" && !base.path().is_empty() {
            return Err(bad(
                "give only scheme, host and port; the /v1/... paths are added",
            ));
        }
        let settings = ClientSettings {
            timeout: Some(CALL_TIMEOUT),
            pool_idle: Some(Duration::from_secs(30)),
            ..ClientSettings::new(
                concat!("agentmesh/", env!("CARGO_PKG_VERSION")),
                CONNECT_TIMEOUT,
                MAX_ANSWER_BYTES,
            )
        };
        Ok(Self {
            address: trimmed.to_owned(),
            base,
            http: HttpClient::new(tls_config(ca_file)?, settings),
        })
    }

    /// The base address, as configured (without a trailing slash).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Logs in with AppRole at `auth/{mount}/login`.
    ///
    /// # Errors
    /// Any [`OpenBaoError`]; a wrong role ID or secret ID is [`OpenBaoError::Refused`].
    pub async fn login_approle(
        &self,
        mount: &str,
        role_id: &str,
        secret_id: &Secret,
    ) -> Result<Login, OpenBaoError> {
        let path = format!("auth/{mount}/login");
        let body = json!({"role_id": role_id, "secret_id": secret_id.expose()});
        let answer = self.call(Method::POST, &path, None, Some(body)).await?;
        login_from(&answer, &path)
    }

    /// Logs in with the JWT auth method at `auth/{mount}/login` with `{role, jwt}`.
    ///
    /// # Errors
    /// Any [`OpenBaoError`].
    pub async fn login_jwt(
        &self,
        mount: &str,
        role: &str,
        jwt: &Secret,
    ) -> Result<Login, OpenBaoError> {
        let path = format!("auth/{mount}/login");
        let body = json!({"role": role, "jwt": jwt.expose()});
        let answer = self.call(Method::POST, &path, None, Some(body)).await?;
        login_from(&answer, &path)
    }

    /// Looks the token up (`auth/token/lookup-self`): checks a configured token works and
    /// learns its remaining life.
    ///
    /// # Errors
    /// Any [`OpenBaoError`]; a bad token is [`OpenBaoError::Refused`] with 403.
    pub async fn lookup_self(&self, token: &Secret) -> Result<Login, OpenBaoError> {
        let path = "auth/token/lookup-self";
        let answer = self.call(Method::GET, path, Some(token), None).await?;
        let data = &answer["data"];
        Ok(Login {
            token: token.clone(),
            lease: Duration::from_secs(data["ttl"].as_u64().unwrap_or(0)),
            policies: strings(&data["policies"]),
        })
    }

    /// Signs an intermediate CA: `POST {mount}/root/sign-intermediate` with the CSR (PEM),
    /// the subject's common name, URI SANs and a TTL. The private key never leaves the caller;
    /// OpenBao's root key never leaves OpenBao.
    ///
    /// # Errors
    /// Any [`OpenBaoError`]; an unknown mount or a token without the policy is
    /// [`OpenBaoError::Refused`].
    pub async fn sign_intermediate(
        &self,
        mount: &str,
        token: &Secret,
        csr_pem: &str,
        common_name: &str,
        uri_sans: &str,
        ttl: Duration,
    ) -> Result<SignedIntermediate, OpenBaoError> {
        let path = format!("{mount}/root/sign-intermediate");
        let body = json!({
            "csr": csr_pem,
            "common_name": common_name,
            "uri_sans": uri_sans,
            "ttl": format!("{}s", ttl.as_secs()),
            "max_path_length": 0,
            "exclude_cn_from_sans": true,
            "format": "pem",
        });
        let answer = self
            .call(Method::POST, &path, Some(token), Some(body))
            .await?;
        let call = format!("POST /v1/{path}");
        let data = &answer["data"];
        let text = |k: &str| {
            data[k]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| OpenBaoError::BadAnswer {
                    call: call.clone(),
                    reason: format!("no data.{k}"),
                })
        };
        Ok(SignedIntermediate {
            certificate: text("certificate")?,
            issuing_ca: text("issuing_ca")?,
            ca_chain: strings(&data["ca_chain"]),
        })
    }

    /// Reads a KV v2 secret: `GET {mount}/data/{path}`.
    ///
    /// # Errors
    /// Any [`OpenBaoError`]; a token whose policy does not allow the read is
    /// [`OpenBaoError::Refused`] with 403.
    pub async fn read_kv2(
        &self,
        mount: &str,
        path: &str,
        token: &Secret,
    ) -> Result<KvSecret, OpenBaoError> {
        let api_path = format!("{mount}/data/{}", path.trim_start_matches('/'));
        let answer = self.call(Method::GET, &api_path, Some(token), None).await?;
        let fields =
            answer["data"]["data"]
                .as_object()
                .cloned()
                .ok_or_else(|| OpenBaoError::BadAnswer {
                    call: format!("GET /v1/{api_path}"),
                    reason: "no data.data object (is this a KV version 2 mount?)".to_owned(),
                })?;
        Ok(KvSecret {
            fields,
            version: answer["data"]["metadata"]["version"].as_u64(),
        })
    }

    /// One call to `/v1/{path}`; returns the JSON answer of a 2xx.
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&Secret>,
        body: Option<Value>,
    ) -> Result<Value, OpenBaoError> {
        let call = format!("{method} /v1/{path}");
        let uri = format!("{}/v1/{path}", self.address)
            .parse::<Uri>()
            .map_err(|e| OpenBaoError::BadAddress {
                address: self.address.clone(),
                reason: format!("path {path:?}: {e}"),
            })?;
        debug_assert_eq!(uri.scheme(), self.base.scheme());
        let unreachable = |source| OpenBaoError::Unreachable {
            address: self.address.clone(),
            call: call.clone(),
            source,
        };
        let json_type = HeaderValue::from_static("application/json");
        let mut headers = vec![(http::header::ACCEPT, json_type.clone())];
        if let Some(t) = token {
            let mut value = HeaderValue::from_str(t.expose()).map_err(|e| {
                unreachable(HttpError::Connection(format!(
                    "cannot build the request: {e}"
                )))
            })?;
            value.set_sensitive(true);
            headers.push((HeaderName::from_static("x-vault-token"), value));
        }
        let body = match body {
            Some(v) => {
                headers.push((http::header::CONTENT_TYPE, json_type));
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = https::build(method, uri, headers, body).map_err(unreachable)?;
        let (status, bytes) = self.http.send(req).await.map_err(unreachable)?;
        let json: Option<Value> = serde_json::from_slice(&bytes).ok();
        if !status.is_success() {
            return Err(OpenBaoError::Refused {
                call,
                status: status.as_u16(),
                errors: errors_of(json.as_ref(), &bytes, status),
            });
        }
        json.ok_or_else(|| OpenBaoError::BadAnswer {
            call,
            reason: "not JSON".to_owned(),
        })
    }
}

fn login_from(answer: &Value, path: &str) -> Result<Login, OpenBaoError> {
    let auth = &answer["auth"];
    let token = auth["client_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| OpenBaoError::BadAnswer {
            call: format!("POST /v1/{path}"),
            reason: "no auth.client_token".to_owned(),
        })?;
    Ok(Login {
        token: Secret::new(token),
        lease: Duration::from_secs(auth["lease_duration"].as_u64().unwrap_or(0)),
        policies: strings(&auth["policies"]),
    })
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// OpenBao's `errors` list on one line, or a short piece of the body when it has none.
fn errors_of(json: Option<&Value>, body: &[u8], status: StatusCode) -> String {
    let listed: Vec<String> = json
        .map(|j| strings(&j["errors"]))
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.replace('\n', " ").trim().to_owned())
        .filter(|e| !e.is_empty())
        .collect();
    if !listed.is_empty() {
        return listed.join("; ");
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no reason given")
            .to_owned()
    } else {
        text.chars()
            .take(200)
            .collect::<String>()
            .replace('\n', " ")
    }
}

fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, OpenBaoError> {
    let Some(path) = ca_file else {
        return https::webpki_tls().map_err(|e| OpenBaoError::CaFile {
            path: PathBuf::new(),
            reason: format!("TLS setup: {e}"),
        });
    };
    let err = |reason: String| OpenBaoError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let certs =
        agentmesh_tls::pem_decode_all(&text, "CERTIFICATE").map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE in it".to_owned()));
    }
    https::tls_with_roots(certs).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked() {
        for (addr, ok) in [
            ("http://127.0.0.1:8200", true),
            ("https://bao.example.com/", true),
            ("127.0.0.1:8200", false),
            ("ftp://127.0.0.1", false),
            ("http://127.0.0.1:8200/v1/pki", false),
            ("", false),
        ] {
            assert_eq!(OpenBao::new(addr, None).is_ok(), ok, "{addr}");
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hvs.verysecret");
        assert_eq!(format!("{s:?}"), "Secret(..)");
    }

    #[test]
    fn errors_come_from_openbaos_list() {
        let j: Value = serde_json::from_str(r#"{"errors":["permission denied"]}"#).unwrap();
        assert_eq!(
            errors_of(Some(&j), b"", StatusCode::FORBIDDEN),
            "permission denied"
        );
        assert_eq!(errors_of(None, b"", StatusCode::NOT_FOUND), "Not Found");
    }
}
