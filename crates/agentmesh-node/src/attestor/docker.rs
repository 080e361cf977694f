//! Docker workload attestation, with SPIRE's selectors and their meanings, so that entries
//! written for SPIRE's docker attestor carry over unchanged:
//!
//! - `docker:label:KEY:VALUE`: a label of the container;
//! - `docker:image_id:NAME:TAG`: the image reference the container was started from
//!   (`Config.Image`), as SPIRE means it;
//! - `docker:image_config_digest:sha256:…`: the digest of the image's config (`Image`);
//! - `docker:env:NAME=VALUE`: a variable of the container's environment.
//!
//! The caller's pid leads to its container through `/proc/PID/cgroup`; the Docker Engine API
//! on its Unix socket then gives the container's labels, image and environment. A container
//! cannot change those while it lives, so each container's answer is cached by its id until
//! it is gone.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use agentmesh_spiffe::Selector;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Deserialize;

/// Where the Docker Engine listens when `node run --docker-socket` is not given.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// How long one Docker API call may take before the caller is refused.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest container description read from the Docker API (a container with a huge
/// environment must not grow the node without bound).
const MAX_INSPECT_BYTES: usize = 1 << 20;

/// At most this many containers' selectors are cached; past it the cache starts over.
const MAX_CACHED_CONTAINERS: usize = 4096;

/// Why a caller in a container could not be attested.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DockerError {
    /// The Docker Engine did not answer on its socket.
    #[error("the Docker Engine at {socket} cannot be reached: {reason}")]
    Unreachable {
        /// The socket tried.
        socket: PathBuf,
        /// Why.
        reason: String,
    },
    /// Docker does not know the container (it stopped, or it belongs to another engine).
    #[error(
        "container {0} is not known to the Docker Engine (it is gone, or another engine runs it)"
    )]
    ContainerGone(String),
    /// The Docker Engine answered something else than a container description.
    #[error("the Docker Engine answered {status} for container {id}: {reason}")]
    BadAnswer {
        /// The container.
        id: String,
        /// The HTTP status.
        status: u16,
        /// What was wrong.
        reason: String,
    },
    /// The process's cgroups name more than one container.
    #[error("the cgroups of the process name more than one container ({0})")]
    Ambiguous(String),
}

/// The container a process runs in, from the text of its `/proc/PID/cgroup`: the 64-hex-digit
/// id Docker or containerd put in the cgroup path, under the cgroupfs driver
/// (`…/docker/ID`, `…/kubepods/…/ID`) or the systemd driver (`…/docker-ID.scope`,
/// `…/cri-containerd-ID.scope`, `…/crio-ID.scope`, `…/libpod-ID.scope`), for cgroup v1 (one
/// line per hierarchy) and v2 (the single `0::` line). `Ok(None)`: not in a container.
///
/// # Errors
/// [`DockerError::Ambiguous`] if the lines name different containers.
pub fn container_id(cgroup: &str) -> Result<Option<String>, DockerError> {
    let mut found: Option<&str> = None;
    for line in cgroup.lines() {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        // The innermost container is the last id in the path.
        let Some(id) = path.split('/').filter_map(id_in_segment).next_back() else {
            continue;
        };
        match found {
            Some(seen) if seen != id => {
                return Err(DockerError::Ambiguous(format!("{seen}, {id}")));
            }
            _ => found = Some(id),
        }
    }
    Ok(found.map(str::to_owned))
}

/// The container id in one path segment, if it is one.
fn id_in_segment(segment: &str) -> Option<&str> {
    let inner = segment.strip_suffix(".scope").map_or(segment, |s| {
        ["docker-", "cri-containerd-", "crio-", "libpod-"]
            .iter()
            .find_map(|p| s.strip_prefix(p))
            .unwrap_or(s)
    });
    (inner.len() == 64
        && inner
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    .then_some(inner)
}

/// The parts of `GET /containers/{id}/json` attestation reads.
#[derive(Debug, Deserialize)]
struct Inspect {
    /// The image config digest, `sha256:…`.
    #[serde(rename = "Image", default)]
    image: String,
    #[serde(rename = "Config", default)]
    config: InspectConfig,
}

#[derive(Debug, Default, Deserialize)]
struct InspectConfig {
    /// The image reference the container was started from.
    #[serde(rename = "Image", default)]
    image: String,
    #[serde(rename = "Labels", default)]
    labels: Option<HashMap<String, String>>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
}

/// The selectors of a container described by the Docker API's JSON. Values a selector cannot
/// hold (too long, control characters) are left out: no entry could name them anyway.
fn selectors_of(inspect: &Inspect) -> Vec<Selector> {
    let mut out = Vec::new();
    let mut add = |key: &str, value: &str| {
        if let Ok(s) = Selector::new("docker", key, value) {
            out.push(s);
        }
    };
    for (k, v) in inspect.config.labels.iter().flatten() {
        add("label", &format!("{k}:{v}"));
    }
    if !inspect.config.image.is_empty() {
        add("image_id", &inspect.config.image);
    }
    if !inspect.image.is_empty() {
        add("image_config_digest", &inspect.image);
    }
    for var in inspect.config.env.iter().flatten() {
        if var.contains('=') {
            add("env", var);
        }
    }
    out
}

/// Attests callers that run in Docker containers.
#[derive(Debug)]
pub struct DockerAttestor {
    socket: PathBuf,
    cache: Mutex<HashMap<String, Vec<Selector>>>,
}

impl DockerAttestor {
    /// Asks the Docker Engine listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The `docker:` selectors of process `pid`: `Ok(None)` when it is not in a container
    /// (or is gone), the container's selectors otherwise.
    ///
    /// # Errors
    /// Docker cannot be asked, does not know the container, or the cgroups are ambiguous.
    pub async fn selectors(
        &self,
        pid: u32,
    ) -> Result<Option<(String, Vec<Selector>)>, DockerError> {
        let Ok(cgroup) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            return Ok(None);
        };
        let Some(id) = container_id(&cgroup)? else {
            return Ok(None);
        };
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            return Ok(Some((id, hit.clone())));
        }
        let selectors = match self.inspect(&id).await {
            Ok(inspect) => selectors_of(&inspect),
            Err(e) => {
                self.cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                return Err(e);
            }
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED_CONTAINERS {
            cache.clear();
        }
        cache.insert(id.clone(), selectors.clone());
        Ok(Some((id, selectors)))
    }

    async fn inspect(&self, id: &str) -> Result<Inspect, DockerError> {
        tokio::time::timeout(DOCKER_TIMEOUT, self.inspect_now(id))
            .await
            .unwrap_or_else(|_| {
                Err(self.unreachable(format!("no answer within {DOCKER_TIMEOUT:?}")))
            })
    }

    async fn inspect_now(&self, id: &str) -> Result<Inspect, DockerError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| self.unreachable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = hyper::Request::get(format!("/containers/{id}/json"))
            .header(hyper::header::HOST, "docker")
            .body(Empty::new())
            .map_err(|e| self.unreachable(e.to_string()))?;
        let response = send
            .send_request(request)
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_INSPECT_BYTES)
            .collect()
            .await
            .map_err(|e| DockerError::BadAnswer {
                id: id.to_owned(),
                status,
                reason: e.to_string(),
            })?
            .to_bytes();
        match status {
            200 => serde_json::from_slice(&body).map_err(|e| DockerError::BadAnswer {
                id: id.to_owned(),
                status,
                reason: e.to_string(),
            }),
            404 => Err(DockerError::ContainerGone(id.to_owned())),
            _ => Err(DockerError::BadAnswer {
                id: id.to_owned(),
                status,
                reason: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            }),
        }
    }

    fn unreachable(&self, reason: String) -> DockerError {
        DockerError::Unreachable {
            socket: self.socket.clone(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests;
