//! The node's admin API (a 0600 Unix socket): launchers vouch for the children they start,
//! and tools read the node's status.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use agentmesh_proto::v1::{
    self, NodeStatus, NodeStatusRequest, RegisterLaunchRequest, RegisterLaunchResponse,
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
            expires_at: expires
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or_default(),
            server_reachable: self.manager.server_reachable(),
            entries: snap.entries.len() as u32,
            cached_svids: snap.svids.len() as u32,
        }))
    }
}
