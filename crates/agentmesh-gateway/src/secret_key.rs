//! Secret-less provider keys: the gateway proves its SPIFFE identity to OpenBao with a
//! JWT-SVID from its node's Workload API, logs in to OpenBao's JWT auth method, reads the
//! provider key from KV v2, and keeps it only in memory. No key is in any config file or
//! environment variable.
//!
//! One refresher task per provider re-reads the key when the OpenBao token's lease runs out
//! (with a fresh JWT-SVID and login each time). When OpenBao refuses (the policy or the role
//! was removed), the key is dropped, the error is logged, and requests for that provider get
//! 503 with the reason until a later refresh succeeds. When OpenBao is only unreachable, the
//! key already read is kept (it is still the provider's key) and the refresh retries.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use agentmesh_openbao::{OpenBao, OpenBaoError, Secret};
use agentmesh_proto::workload::JwtsvidRequest;
use agentmesh_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

use crate::config::{ApiKey, OpenBaoKeyConfig};

/// Why the key could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretKeyError {
    /// The Workload API could not be reached or gave no JWT-SVID.
    #[error("no JWT-SVID (audience {audience:?}) from the Workload API at {socket}: {reason}")]
    NoJwtSvid {
        /// The socket.
        socket: PathBuf,
        /// The audience asked for.
        audience: String,
        /// What went wrong.
        reason: String,
    },
    /// OpenBao refused or was unreachable.
    #[error("{0}")]
    OpenBao(#[from] OpenBaoError),
    /// The secret has no such field.
    #[error("OpenBao secret {kv_mount}/{path} has no string field {field:?} (fields: {fields:?})")]
    NoField {
        /// The KV mount.
        kv_mount: String,
        /// The secret's path.
        path: String,
        /// The field asked for.
        field: String,
        /// The fields it has (names only).
        fields: Vec<String>,
    },
    /// The refresher needs a tokio runtime, and there is none (a bug in the caller).
    #[error("BugNoRuntime: api_key_openbao needs a tokio runtime to refresh the key in")]
    BugNoRuntime,
}

impl SecretKeyError {
    /// Whether OpenBao (or the node) could simply not be reached, as opposed to refusing.
    fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Self::OpenBao(OpenBaoError::Unreachable { .. }) | Self::NoJwtSvid { .. }
        )
    }
}

#[derive(Debug)]
enum KeyState {
    Pending,
    Ready(ApiKey),
    Refused(String),
}

/// The provider key as the refresher last read it, shared with the provider.
#[derive(Debug)]
pub struct KeyCell {
    state: RwLock<KeyState>,
}

impl KeyCell {
    /// The key, or why there is none (for the 503's reason).
    pub fn current(&self) -> Result<ApiKey, String> {
        match &*self.state.read().unwrap_or_else(|e| e.into_inner()) {
            KeyState::Ready(k) => Ok(k.clone()),
            KeyState::Pending => {
                Err("the provider key has not been read from OpenBao yet".to_owned())
            }
            KeyState::Refused(reason) => Err(reason.clone()),
        }
    }

    fn set(&self, s: KeyState) {
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = s;
    }
}

/// First retry after a failed refresh; doubles up to [`RETRY_MAX`].
const RETRY: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How often to re-read when the token never expires (a root token).
const NO_LEASE_REFRESH: Duration = Duration::from_secs(300);
/// The Workload API's answer must come within this.
const WORKLOAD_API_PATIENCE: Duration = Duration::from_secs(10);

/// Starts the refresher for `provider`. Needs a tokio runtime.
///
/// # Errors
/// A bad OpenBao address or CA file, or no runtime.
pub fn spawn(provider: &str, cfg: &OpenBaoKeyConfig) -> Result<Arc<KeyCell>, SecretKeyError> {
    let runtime =
        tokio::runtime::Handle::try_current().map_err(|_| SecretKeyError::BugNoRuntime)?;
    let client = OpenBao::new(&cfg.address, cfg.ca_file.as_deref())?;
    let cell = Arc::new(KeyCell {
        state: RwLock::new(KeyState::Pending),
    });
    let task_cell = cell.clone();
    let provider = provider.to_owned();
    let cfg = cfg.clone();
    tracing::info!(
        provider = %provider,
        address = %client.address(),
        kv = %format!("{}/{}", cfg.kv_mount, cfg.path),
        "provider key comes from OpenBao (JWT-SVID login); it is kept only in memory"
    );
    runtime.spawn(async move {
        let mut retry = RETRY;
        loop {
            let wait = match read_once(&client, &cfg).await {
                Ok((key, lease, version)) => {
                    task_cell.set(KeyState::Ready(key));
                    retry = RETRY;
                    let lease_text = humantime::format_duration(lease).to_string();
                    tracing::info!(provider = %provider, version, token_lease = %lease_text, "read the provider key from OpenBao");
                    if lease.is_zero() {
                        NO_LEASE_REFRESH
                    } else {
                        lease
                    }
                }
                Err(e) => {
                    let reason = format!("provider key from OpenBao: {e}");
                    if e.is_unreachable() && task_cell.current().is_ok() {
                        tracing::warn!(provider = %provider, error = %e, "refreshing the provider key from OpenBao failed; keeping the key read last");
                    } else {
                        tracing::error!(provider = %provider, error = %e, "refreshing the provider key from OpenBao failed; requests for this provider get 503 until a refresh succeeds");
                        task_cell.set(KeyState::Refused(reason));
                    }
                    let w = retry;
                    retry = (retry * 2).min(RETRY_MAX);
                    w
                }
            };
            tokio::time::sleep(wait).await;
        }
    });
    Ok(cell)
}

async fn read_once(
    client: &OpenBao,
    cfg: &OpenBaoKeyConfig,
) -> Result<(ApiKey, Duration, Option<u64>), SecretKeyError> {
    let socket = cfg.workload_socket();
    let jwt = fetch_jwt_svid(&socket, &cfg.audience).await?;
    let login = client.login_jwt(&cfg.auth_mount, &cfg.role, &jwt).await?;
    let secret = client
        .read_kv2(&cfg.kv_mount, &cfg.path, &login.token)
        .await?;
    let key = secret
        .field(&cfg.field)
        .ok_or_else(|| SecretKeyError::NoField {
            kv_mount: cfg.kv_mount.clone(),
            path: cfg.path.clone(),
            field: cfg.field.clone(),
            fields: secret.field_names(),
        })?;
    Ok((ApiKey::new(key.expose()), login.lease, secret.version))
}

async fn fetch_jwt_svid(
    socket: &std::path::Path,
    audience: &str,
) -> Result<Secret, SecretKeyError> {
    let err = |reason: String| SecretKeyError::NoJwtSvid {
        socket: socket.to_owned(),
        audience: audience.to_owned(),
        reason,
    };
    let fetch = async {
        let channel = agentmesh_proto::unix::connect(socket)
            .await
            .map_err(|e| err(e.to_string()))?;
        let mut client = SpiffeWorkloadApiClient::new(channel)
            .max_decoding_message_size(agentmesh_proto::MAX_MESSAGE_BYTES);
        let mut req = tonic::Request::new(JwtsvidRequest {
            audience: vec![audience.to_owned()],
            spiffe_id: String::new(),
        });
        req.metadata_mut().insert(
            agentmesh_proto::WORKLOAD_API_HEADER,
            tonic::metadata::MetadataValue::from_static("true"),
        );
        let resp = client
            .fetch_jwtsvid(req)
            .await
            .map_err(|s| err(format!("{:?}: {}", s.code(), s.message())))?
            .into_inner();
        resp.svids
            .into_iter()
            .next()
            .map(|s| Secret::new(s.svid))
            .ok_or_else(|| err("the node sent no JWT-SVID".to_owned()))
    };
    tokio::time::timeout(WORKLOAD_API_PATIENCE, fetch)
        .await
        .map_err(|_| {
            err(format!(
                "no answer within {}s",
                WORKLOAD_API_PATIENCE.as_secs()
            ))
        })?
}
