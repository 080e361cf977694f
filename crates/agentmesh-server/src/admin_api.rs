//! The admin API, served on a 0600 Unix socket: entries, join tokens, the bundle and nodes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentmesh_proto::v1::{
    self, CreateEntryRequest, DeleteEntryRequest, DeleteEntryResponse, GenerateJoinTokenRequest,
    GetBundleRequest, GetEntryRequest, JoinToken, ListEntriesRequest, ListEntriesResponse,
    ListNodesRequest, ListNodesResponse,
};
use tonic::{Request, Response, Status};

use crate::ca::unix_secs;
use crate::datastore::{DatastoreError, EntryRow};
use crate::registration::{EntryLimits, validate_entry};
use crate::state::{ServerState, entry_to_proto, new_entry_id, new_join_token, token_hash};

/// The longest join token TTL: a token is a bearer secret, so it must not live long.
const MAX_JOIN_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// The admin API service.
#[derive(Debug, Clone)]
pub struct AdminService {
    state: Arc<ServerState>,
    limits: EntryLimits,
}

impl AdminService {
    /// Serves the admin API from the shared server state.
    pub fn new(state: Arc<ServerState>, limits: EntryLimits) -> Self {
        Self { state, limits }
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

#[tonic::async_trait]
impl v1::admin_server::Admin for AdminService {
    async fn create_entry(
        &self,
        req: Request<CreateEntryRequest>,
    ) -> Result<Response<v1::Entry>, Status> {
        let e = req
            .into_inner()
            .entry
            .ok_or_else(|| Status::invalid_argument("the request has no entry"))?;
        let valid = validate_entry(
            self.state.trust_domain(),
            self.limits,
            &e.spiffe_id,
            &e.parent_id,
            &e.selectors,
            e.x509_ttl_seconds,
            e.jwt_ttl_seconds,
            &e.dns_names,
        )
        .map_err(|err| Status::invalid_argument(err.to_string()))?;
        let row = EntryRow {
            id: new_entry_id(),
            spiffe_id: valid.spiffe_id.to_string(),
            parent_id: valid.parent_id.map(|p| p.to_string()).unwrap_or_default(),
            selectors: valid.selectors.iter().map(ToString::to_string).collect(),
            x509_ttl: valid.x509_ttl,
            jwt_ttl: valid.jwt_ttl,
            dns_names: valid.dns_names,
            created_at: unix_secs(SystemTime::now()),
        };
        match self.state.datastore.create_entry(&row) {
            Ok(()) => {}
            Err(DatastoreError::DuplicateEntry(existing)) => {
                return Err(Status::already_exists(format!(
                    "an entry for {} with the same parent and selectors already exists (id {existing})",
                    row.spiffe_id
                )));
            }
            Err(err) => return Err(internal(err)),
        }
        tracing::info!(entry = %row.id, spiffe_id = %row.spiffe_id, "created entry");
        self.state.notify_entries_changed();
        Ok(Response::new(entry_to_proto(row)))
    }

    async fn list_entries(
        &self,
        _: Request<ListEntriesRequest>,
    ) -> Result<Response<ListEntriesResponse>, Status> {
        let entries = self.state.datastore.list_entries().map_err(internal)?;
        Ok(Response::new(ListEntriesResponse {
            entries: entries.into_iter().map(entry_to_proto).collect(),
        }))
    }

    async fn get_entry(
        &self,
        req: Request<GetEntryRequest>,
    ) -> Result<Response<v1::Entry>, Status> {
        let id = req.into_inner().id;
        self.state
            .datastore
            .get_entry(&id)
            .map_err(internal)?
            .map(|e| Response::new(entry_to_proto(e)))
            .ok_or_else(|| Status::not_found(format!("no entry with id {id}")))
    }

    async fn delete_entry(
        &self,
        req: Request<DeleteEntryRequest>,
    ) -> Result<Response<DeleteEntryResponse>, Status> {
        let id = req.into_inner().id;
        if !self.state.datastore.delete_entry(&id).map_err(internal)? {
            return Err(Status::not_found(format!("no entry with id {id}")));
        }
        tracing::info!(entry = %id, "deleted entry");
        self.state.notify_entries_changed();
        Ok(Response::new(DeleteEntryResponse {}))
    }

    async fn generate_join_token(
        &self,
        req: Request<GenerateJoinTokenRequest>,
    ) -> Result<Response<JoinToken>, Status> {
        let ttl = match req.into_inner().ttl_seconds {
            0 => self.state.settings.join_token_ttl,
            s if s < 0 || s as u64 > MAX_JOIN_TOKEN_TTL.as_secs() => {
                return Err(Status::invalid_argument(format!(
                    "--ttl must be between 1s and {}h",
                    MAX_JOIN_TOKEN_TTL.as_secs() / 3600
                )));
            }
            s => Duration::from_secs(s as u64),
        };
        let token = new_join_token();
        let hash = token_hash(&token);
        let expires_at = unix_secs(SystemTime::now() + ttl);
        self.state
            .datastore
            .add_join_token(&hash, expires_at)
            .map_err(internal)?;
        tracing::info!(token = &hash[..12], expires_at, "generated join token");
        Ok(Response::new(JoinToken { token, expires_at }))
    }

    async fn get_bundle(
        &self,
        _: Request<GetBundleRequest>,
    ) -> Result<Response<v1::Bundle>, Status> {
        Ok(Response::new(self.state.bundle()))
    }

    async fn list_nodes(
        &self,
        _: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let nodes = self.state.datastore.list_nodes().map_err(internal)?;
        Ok(Response::new(ListNodesResponse {
            nodes: nodes
                .into_iter()
                .map(|n| v1::AttestedNode {
                    spiffe_id: n.spiffe_id,
                    serial: n.serial,
                    expires_at: n.expires_at,
                    attested_at: n.attested_at,
                })
                .collect(),
        }))
    }
}
