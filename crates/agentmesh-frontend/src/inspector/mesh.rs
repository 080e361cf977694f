//! What the inspector asks the control plane: the server's admin socket (entries,
//! intentions, `intention check`, its nodes) and the node's (its status and the SVIDs it
//! holds). Every answer is read fresh for each page, so the page shows the mesh as it is;
//! a part that cannot be reached is shown with the reason instead of failing the page.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentmesh_proto::v1::admin_client::AdminClient;
use agentmesh_proto::v1::node_admin_client::NodeAdminClient;
use agentmesh_proto::v1::{
    CheckIntentionRequest, CheckIntentionResponse, GetBundleRequest, ListDenialsRequest,
    ListEntriesRequest, ListIntentionsRequest, ListNodesRequest, ListSvidsRequest,
    NodeStatusRequest,
};
use serde_json::Value;
use tokio::sync::RwLock;
use tonic::transport::Channel;

/// How long a Unix-socket call may take before the page shows it as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a part of the mesh could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The inspector was not told where this part is.
    #[error("not configured (set inspector.{0} in the frontend config)")]
    NotConfigured(&'static str),
    /// The socket did not answer.
    #[error("cannot reach {0}: {1}")]
    Unreachable(String, String),
    /// The call was refused or failed.
    #[error("{0}")]
    Call(String),
}

/// One certificate of a chain, as the page shows it.
#[derive(Debug, Clone)]
pub struct CertSummary {
    /// The SPIFFE ID in its URI SAN, if it has one.
    pub spiffe_id: Option<String>,
    /// Hex serial.
    pub serial: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// One SVID the node holds.
#[derive(Debug, Clone)]
pub struct HeldSvid {
    /// Hex serial of the leaf.
    pub serial: String,
    /// Unix seconds.
    pub not_after: i64,
    /// Leaf first.
    pub chain: Vec<CertSummary>,
}

/// One service: a registration entry, and the SVID the node holds for it.
#[derive(Debug, Clone)]
pub struct ServiceRow {
    /// The entry's SPIFFE ID.
    pub spiffe_id: String,
    /// None: the node holds no SVID for it (no workload of it has asked yet).
    pub svid: Option<HeldSvid>,
}

/// The node's own state.
#[derive(Debug, Clone)]
pub struct NodeRow {
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// Its SVID's expiry (unix seconds).
    pub expires_at: i64,
    /// Whether its last call to the server worked.
    pub server_reachable: bool,
    /// Entries it serves.
    pub entries: u32,
    /// SVIDs it holds.
    pub cached_svids: u32,
}

/// The server as seen over its admin socket.
#[derive(Debug, Clone)]
pub struct ServerRow {
    /// Its trust domain.
    pub trust_domain: String,
    /// How many entries it has.
    pub entries: usize,
    /// How many nodes attested.
    pub nodes: usize,
}

/// One intention, as listed.
#[derive(Debug, Clone)]
pub struct IntentionRow {
    /// Its id.
    pub id: String,
    /// Its document (agentmesh-policy's IntentionSpec).
    pub spec: Value,
}

impl IntentionRow {
    /// `source → destination action`, with the description if there is one.
    pub fn summary(&self) -> String {
        let s = |k: &str| short(self.spec[k].as_str().unwrap_or("?"));
        let mut out = format!("{} → {} {}", s("source"), s("destination"), s("action"));
        if let Some(d) = self.spec["description"].as_str().filter(|d| !d.is_empty()) {
            out.push_str(": ");
            out.push_str(d);
        }
        out
    }
}

/// `spiffe://td/ns/default/sa/planner` → `planner`, `…/ns/team/sa/x` → `team/x`; anything
/// else as it is.
pub fn short(id: &str) -> String {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return id.to_owned();
    };
    let path = rest.split_once('/').map_or("", |(_, p)| p);
    match path.strip_prefix("ns/").and_then(|p| p.split_once("/sa/")) {
        Some(("default", svc)) if !svc.contains('/') => svc.to_owned(),
        Some((ns, svc)) if !svc.contains('/') => format!("{ns}/{svc}"),
        _ => id.to_owned(),
    }
}

/// Everything the Mesh and Intentions sections show.
#[derive(Debug, Clone)]
pub struct MeshView {
    /// The server.
    pub server: Result<ServerRow, MeshError>,
    /// The node.
    pub node: Result<NodeRow, MeshError>,
    /// Every entry with its SVID.
    pub services: Result<Vec<ServiceRow>, MeshError>,
    /// Why SVIDs are missing from `services`, if the node could not be read.
    pub svids_error: Option<MeshError>,
    /// The intentions.
    pub intentions: Result<Vec<IntentionRow>, MeshError>,
    /// The node's recent refusals to issue an identity, newest first.
    pub denials: Result<Vec<DenialRow>, MeshError>,
}

/// One caller the node refused an identity, with the full explanation that the caller itself
/// was not given (it learns only the missing selector kinds and the request id).
#[derive(Debug, Clone)]
pub struct DenialRow {
    /// The id the refused caller was given, to find this row by.
    pub request_id: String,
    /// Unix seconds.
    pub at: i64,
    /// Which API refused: `workload_api`, `sds` or `proxy_api`.
    pub api: String,
    /// The caller's pid (0 when the kernel did not say).
    pub pid: u32,
    /// The caller's uid.
    pub uid: u32,
    /// The closest entry, what it needs and what the caller has (secret values left out).
    pub explanation: String,
    /// The selector kinds (`TYPE:KEY`) the caller was told it lacks.
    pub missing_kinds: Vec<String>,
    /// The closest entry's SPIFFE ID; empty when the node serves no entries.
    pub closest_spiffe_id: String,
}

/// Where the control plane is.
#[derive(Debug, Clone)]
pub struct MeshSources {
    /// The server's admin socket.
    pub server: Option<PathBuf>,
    /// The node's admin socket.
    pub node: Option<PathBuf>,
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn summarize(der: &[u8]) -> CertSummary {
    CertSummary {
        spiffe_id: agentmesh_tls::cert_spiffe_id(der)
            .ok()
            .map(|i| i.to_string()),
        serial: agentmesh_tls::cert_serial_hex(der).unwrap_or_default(),
        not_after: agentmesh_tls::cert_validity(der)
            .map(|(_, na)| unix_secs(na))
            .unwrap_or_default(),
    }
}

fn call_error(s: &tonic::Status) -> MeshError {
    MeshError::Call(if s.message().is_empty() {
        format!("{:?}", s.code())
    } else {
        s.message().to_owned()
    })
}

async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, MeshError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(call_error(&s)),
        Err(_) => Err(MeshError::Unreachable(
            what.to_owned(),
            format!("no answer in {}s", CALL_TIMEOUT.as_secs()),
        )),
    }
}

impl MeshSources {
    async fn channel(&self, which: &'static str) -> Result<Channel, MeshError> {
        let path = match which {
            "server_admin_socket" => self.server.as_ref(),
            _ => self.node.as_ref(),
        }
        .ok_or(MeshError::NotConfigured(which))?;
        match tokio::time::timeout(CALL_TIMEOUT, agentmesh_proto::unix::connect(path)).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(MeshError::Unreachable(
                path.display().to_string(),
                e.to_string(),
            )),
            Err(_) => Err(MeshError::Unreachable(
                path.display().to_string(),
                "timed out".into(),
            )),
        }
    }

    async fn admin(&self) -> Result<AdminClient<Channel>, MeshError> {
        Ok(AdminClient::new(self.channel("server_admin_socket").await?)
            .max_decoding_message_size(agentmesh_proto::MAX_MESSAGE_BYTES))
    }

    async fn node_admin(&self) -> Result<NodeAdminClient<Channel>, MeshError> {
        Ok(
            NodeAdminClient::new(self.channel("node_admin_socket").await?)
                .max_decoding_message_size(agentmesh_proto::MAX_MESSAGE_BYTES),
        )
    }

    /// The intentions, as the server lists them.
    ///
    /// # Errors
    /// [`MeshError`] when the server cannot be asked.
    pub async fn intentions(&self) -> Result<Vec<IntentionRow>, MeshError> {
        let mut admin = self.admin().await?;
        let list = timed("server", admin.list_intentions(ListIntentionsRequest {})).await?;
        Ok(list
            .intentions
            .into_iter()
            .map(|i| IntentionRow {
                id: i.id,
                spec: serde_json::from_str(&i.spec_json).unwrap_or(Value::Null),
            })
            .collect())
    }

    /// The server's own decision for a call, exactly what `agentmesh intention check`
    /// prints.
    ///
    /// # Errors
    /// [`MeshError`] when the server cannot be asked or refuses the question (a bad name).
    pub async fn check(
        &self,
        req: CheckIntentionRequest,
    ) -> Result<CheckIntentionResponse, MeshError> {
        let mut admin = self.admin().await?;
        timed("server", admin.check_intention(req)).await
    }

    /// The whole Mesh view.
    pub async fn view(&self) -> MeshView {
        let server = async {
            let mut admin = self.admin().await?;
            let entries = timed("server", admin.list_entries(ListEntriesRequest {})).await?;
            let nodes = timed("server", admin.list_nodes(ListNodesRequest {})).await?;
            let bundle = timed("server", admin.get_bundle(GetBundleRequest {})).await?;
            Ok::<_, MeshError>((entries.entries, nodes.nodes.len(), bundle.trust_domain))
        }
        .await;
        let node = async {
            let mut node = self.node_admin().await?;
            let status = timed("node", node.status(NodeStatusRequest {})).await?;
            let svids = timed("node", node.list_svids(ListSvidsRequest {})).await?;
            Ok::<_, MeshError>((status, svids.svids))
        }
        .await;
        let denials = async {
            let mut node = self.node_admin().await?;
            let listed = timed(
                "node",
                node.list_denials(ListDenialsRequest {
                    request_id: String::new(),
                }),
            )
            .await?;
            Ok::<_, MeshError>(
                listed
                    .denials
                    .into_iter()
                    .map(|d| DenialRow {
                        request_id: d.request_id,
                        at: d.at,
                        api: d.api,
                        pid: d.pid,
                        uid: d.uid,
                        explanation: d.explanation,
                        missing_kinds: d.missing_kinds,
                        closest_spiffe_id: d.closest_spiffe_id,
                    })
                    .collect(),
            )
        }
        .await;
        let intentions = self.intentions().await;

        let (svids, svids_error) = match &node {
            Ok((_, svids)) => (svids.clone(), None),
            Err(e) => (Vec::new(), Some(e.clone())),
        };
        let held: HashMap<&str, HeldSvid> = svids
            .iter()
            .map(|s| {
                (
                    s.entry_id.as_str(),
                    HeldSvid {
                        serial: s.serial.clone(),
                        not_after: s.not_after,
                        chain: s.cert_chain.iter().map(|c| summarize(c)).collect(),
                    },
                )
            })
            .collect();
        let services = server
            .as_ref()
            .map_err(Clone::clone)
            .map(|(entries, _, _)| {
                entries
                    .iter()
                    .map(|e| ServiceRow {
                        spiffe_id: e.spiffe_id.clone(),
                        svid: held.get(e.id.as_str()).cloned(),
                    })
                    .collect()
            });
        MeshView {
            server: server.map(|(entries, nodes, td)| ServerRow {
                trust_domain: td,
                entries: entries.len(),
                nodes,
            }),
            node: node.map(|(s, _)| NodeRow {
                spiffe_id: s.spiffe_id,
                expires_at: s.expires_at,
                server_reachable: s.server_reachable,
                entries: s.entries,
                cached_svids: s.cached_svids,
            }),
            services,
            svids_error,
            intentions,
            denials,
        }
    }
}

/// Intention ids → words, for decisions as they arrive. Read again from the server when an
/// id is unknown, at most once a second.
#[derive(Debug)]
pub struct IntentionNames {
    sources: MeshSources,
    known: RwLock<(Option<Instant>, HashMap<String, String>)>,
}

impl IntentionNames {
    /// Names from `sources`' server.
    pub fn new(sources: MeshSources) -> Self {
        Self {
            sources,
            known: RwLock::new((None, HashMap::new())),
        }
    }

    /// `source → destination action: description` for intention `id`, if the server knows it.
    pub async fn summary(&self, id: &str) -> Option<String> {
        {
            let known = self.known.read().await;
            if let Some(s) = known.1.get(id) {
                return Some(s.clone());
            }
            if known
                .0
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
            {
                return None;
            }
        }
        let mut known = self.known.write().await;
        if let Ok(list) = self.sources.intentions().await {
            known.1 = list.iter().map(|i| (i.id.clone(), i.summary())).collect();
        }
        known.0 = Some(Instant::now());
        known.1.get(id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_shortened_like_the_cli_accepts_them() {
        assert_eq!(short("spiffe://td/ns/default/sa/planner"), "planner");
        assert_eq!(short("spiffe://td/ns/team/sa/x"), "team/x");
        assert_eq!(
            short("spiffe://td/agentmesh/node/1"),
            "spiffe://td/agentmesh/node/1"
        );
        assert_eq!(short("*"), "*");
    }

    #[tokio::test]
    async fn an_unconfigured_or_absent_control_plane_is_a_reason_not_a_failure() {
        let view = MeshSources {
            server: None,
            node: Some(PathBuf::from("/nonexistent/node-admin.sock")),
        }
        .view()
        .await;
        assert!(matches!(view.server, Err(MeshError::NotConfigured(_))));
        let node = view.node.unwrap_err().to_string();
        assert!(node.contains("/nonexistent/node-admin.sock"), "{node}");
        assert!(view.intentions.is_err());
    }
}
