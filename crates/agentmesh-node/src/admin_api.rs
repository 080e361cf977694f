//! The node's admin API (a 0600 Unix socket): launchers vouch for the children they start,
//! and tools read the node's status and the full explanation of each refused caller.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

use agentmesh_proto::v1::{
    self, ListDenialsRequest, ListDenialsResponse, ListSvidsRequest, ListSvidsResponse, NodeStatus,
    NodeStatusRequest, RegisterLaunchRequest, RegisterLaunchResponse, ServedSvid,
};
use tonic::{Request, Response, Status};

use crate::attestor::Attestor;
use crate::manager::Manager;

/// The node admin service.
#[derive(Debug, Clone)]
pub struct NodeAdminService {
    manager: Arc<Manager>,
    attestor: Arc<Attestor>,
}

impl NodeAdminService {
    /// Serves the node's admin API.
    pub fn new(manager: Arc<Manager>, attestor: Arc<Attestor>) -> Self {
        Self { manager, attestor }
    }
}

#[tonic::async_trait]
impl v1::node_admin_server::NodeAdmin for NodeAdminService {
    async fn register_launch(
        &self,
        req: Request<RegisterLaunchRequest>,
    ) -> Result<Response<RegisterLaunchResponse>, Status> {
        let req = req.into_inner();
        self.attestor
            .register_launch(req.pid, req.start_time, &req.selectors)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Secret-valued selectors (key `env`) by name only.
        let shown: Vec<String> = req
            .selectors
            .iter()
            .filter_map(|s| s.parse::<agentmesh_spiffe::Selector>().ok())
            .map(|s| crate::denials::shown(&s))
            .collect();
        tracing::info!(pid = req.pid, selectors = ?shown, "registered a launched workload");
        Ok(Response::new(RegisterLaunchResponse {}))
    }

    async fn status(&self, _: Request<NodeStatusRequest>) -> Result<Response<NodeStatus>, Status> {
        let (id, expires) = self.manager.node_identity();
        let snap = self.manager.snapshot();
        Ok(Response::new(NodeStatus {
            spiffe_id: id.to_string(),
            expires_at: unix(expires),
            server_reachable: self.manager.server_reachable(),
            entries: snap.entries.len() as u32,
            cached_svids: snap.svids.len() as u32,
        }))
    }

    async fn list_svids(
        &self,
        _: Request<ListSvidsRequest>,
    ) -> Result<Response<ListSvidsResponse>, Status> {
        let snap = self.manager.snapshot();
        // In entry order, so every reader lists them the same way.
        let svids = snap
            .entries
            .iter()
            .filter_map(|e| snap.svids.get(&e.id))
            .map(|s| ServedSvid {
                entry_id: s.entry_id.clone(),
                spiffe_id: s.spiffe_id.to_string(),
                cert_chain: s.chain.clone(),
                serial: s.serial.clone(),
                not_before: unix(s.not_before),
                not_after: unix(s.not_after),
            })
            .collect();
        Ok(Response::new(ListSvidsResponse { svids }))
    }

    async fn list_denials(
        &self,
        req: Request<ListDenialsRequest>,
    ) -> Result<Response<ListDenialsResponse>, Status> {
        let want = req.into_inner().request_id;
        let want = want.trim();
        let denials = self
            .attestor
            .denials()
            .list((!want.is_empty()).then_some(want));
        if !want.is_empty() && denials.is_empty() {
            return Err(Status::not_found(format!(
                "no denial with request id {}; the node remembers the last {} (and logs every one)",
                agentmesh_spiffe::echo(want),
                crate::denials::KEEP
            )));
        }
        Ok(Response::new(ListDenialsResponse {
            denials: denials
                .iter()
                .map(|d| v1::Denial {
                    request_id: d.request_id.clone(),
                    at: unix(d.at),
                    api: d.api.as_str().to_owned(),
                    pid: d.pid.unwrap_or_default(),
                    uid: d.uid,
                    explanation: d.explanation.clone(),
                    missing_kinds: d.missing_kinds.clone(),
                    closest_entry_id: d
                        .closest
                        .as_ref()
                        .map(|(id, _)| id.clone())
                        .unwrap_or_default(),
                    closest_spiffe_id: d
                        .closest
                        .as_ref()
                        .map(|(_, sid)| sid.to_string())
                        .unwrap_or_default(),
                })
                .collect(),
        }))
    }
}
