//! The node's admin API (a 0600 Unix socket): launchers vouch for the children they start,
//! and tools read the node's status.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

use agentmesh_proto::v1::{
    self, ListSvidsRequest, ListSvidsResponse, NodeStatus, NodeStatusRequest,
    RegisterLaunchRequest, RegisterLaunchResponse, ServedSvid,
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
        tracing::info!(pid = req.pid, selectors = ?req.selectors, "registered a launched workload");
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
}
