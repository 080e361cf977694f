//! The admin API, served on a 0600 Unix socket: entries, join tokens, the bundle, nodes,
//! intentions and the service catalog.
//!
//! Error messages repeat user input only through [`agentmesh_spiffe::echo`] (200 characters,
//! then an ellipsis), and every InvalidArgument message is capped at [`MAX_STATUS_CHARS`] as
//! a last line of defence for messages built elsewhere (the intention parser's).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentmesh_policy::{HttpRequest, IntentionSpec, NormalizeOptions, PolicySet};
use agentmesh_proto::v1::{
    self, CreateEntryRequest, DeleteEntryRequest, DeleteEntryResponse, GenerateJoinTokenRequest,
    GetBundleRequest, GetEntryRequest, JoinToken, ListEntriesRequest, ListEntriesResponse,
    ListNodesRequest, ListNodesResponse,
};
use agentmesh_spiffe::{SpiffeId, echo};
use tonic::{Request, Response, Status};

use crate::ca::unix_secs;
use crate::datastore::{DatastoreError, EntryRow, IntentionRow};
use crate::registration::{EntryLimits, validate_entry, validate_federates_with};
use crate::state::{
    ServerState, entry_to_proto, intention_to_proto, new_entry_id, new_join_token, token_hash,
};

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

/// The longest InvalidArgument message: a field name, a reason and one or two echoes.
pub const MAX_STATUS_CHARS: usize = 600;

/// `message` cut to [`MAX_STATUS_CHARS`] characters, with an ellipsis if it was longer.
fn capped(message: impl std::fmt::Display) -> String {
    let message = message.to_string();
    if message.chars().count() <= MAX_STATUS_CHARS {
        return message;
    }
    let cut: String = message.chars().take(MAX_STATUS_CHARS).collect();
    format!("{cut}…")
}

/// InvalidArgument with a [`capped`] message.
fn invalid(message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(capped(message))
}

/// The stored intentions as the evaluator sees them. A row that no longer validates (which
/// only a hand-edited database could hold) is skipped with an error log rather than
/// allowed: skipping an allow denies, and skipping a deny is logged loudly.
pub fn load_policy(state: &ServerState) -> Result<PolicySet, Status> {
    let rows = state.datastore.list_intentions().map_err(internal)?;
    let mut intentions = Vec::with_capacity(rows.len());
    for row in rows {
        match IntentionSpec::from_json(&row.spec_json)
            .and_then(|s| s.validate(state.trust_domain(), row.id.clone(), row.created_at))
        {
            Ok(i) => intentions.push(i),
            Err(e) => {
                tracing::error!(intention = %row.id, error = %e, "stored intention is invalid; ignoring it")
            }
        }
    }
    Ok(PolicySet::new(intentions))
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
        .map_err(invalid)?;
        let federates_with = validate_federates_with(self.state.trust_domain(), &e.federates_with)
            .map_err(invalid)?;
        let row = EntryRow {
            id: new_entry_id(),
            spiffe_id: valid.spiffe_id.to_string(),
            parent_id: valid.parent_id.map(|p| p.to_string()).unwrap_or_default(),
            selectors: valid.selectors.iter().map(ToString::to_string).collect(),
            x509_ttl: valid.x509_ttl,
            jwt_ttl: valid.jwt_ttl,
            dns_names: valid.dns_names,
            created_at: unix_secs(SystemTime::now()),
            federates_with,
        };
        match self.state.datastore.create_entry(&row) {
            Ok(()) => {}
            Err(DatastoreError::DuplicateEntry(existing)) => {
                return Err(Status::already_exists(capped(format!(
                    "an entry for {} with the same parent and selectors already exists (id {existing})",
                    row.spiffe_id
                ))));
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
            .ok_or_else(|| Status::not_found(format!("no entry with id {}", echo(&id))))
    }

    async fn delete_entry(
        &self,
        req: Request<DeleteEntryRequest>,
    ) -> Result<Response<DeleteEntryResponse>, Status> {
        let id = req.into_inner().id;
        if !self.state.datastore.delete_entry(&id).map_err(internal)? {
            return Err(Status::not_found(format!("no entry with id {}", echo(&id))));
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
                .map(|n| {
                    Ok(v1::AttestedNode {
                        selectors: self
                            .state
                            .datastore
                            .node_selectors(&n.spiffe_id)
                            .map_err(internal)?,
                        spiffe_id: n.spiffe_id,
                        serial: n.serial,
                        expires_at: n.expires_at,
                        attested_at: n.attested_at,
                    })
                })
                .collect::<Result<_, Status>>()?,
        }))
    }

    async fn create_intention(
        &self,
        req: Request<v1::CreateIntentionRequest>,
    ) -> Result<Response<v1::Intention>, Status> {
        let td = self.state.trust_domain();
        let spec = IntentionSpec::from_json(&req.into_inner().spec_json)
            .and_then(|s| s.normalized(td))
            .map_err(invalid)?;
        let row = IntentionRow {
            id: new_entry_id(),
            source: spec.source.clone(),
            destination: spec.destination.clone(),
            spec_json: spec.to_json(),
            created_at: unix_secs(SystemTime::now()),
        };
        match self.state.datastore.create_intention(&row) {
            Ok(()) => {}
            Err(e @ DatastoreError::DuplicateIntention { .. }) => {
                return Err(Status::already_exists(capped(e)));
            }
            Err(e) => return Err(internal(e)),
        }
        tracing::info!(intention = %row.id, source = %row.source, destination = %row.destination, action = %spec.action, "created intention");
        self.state.notify_policy_changed();
        Ok(Response::new(intention_to_proto(row)))
    }

    async fn list_intentions(
        &self,
        _: Request<v1::ListIntentionsRequest>,
    ) -> Result<Response<v1::ListIntentionsResponse>, Status> {
        let rows = self.state.datastore.list_intentions().map_err(internal)?;
        Ok(Response::new(v1::ListIntentionsResponse {
            intentions: rows.into_iter().map(intention_to_proto).collect(),
        }))
    }

    async fn delete_intention(
        &self,
        req: Request<v1::DeleteIntentionRequest>,
    ) -> Result<Response<v1::DeleteIntentionResponse>, Status> {
        let req = req.into_inner();
        let td = self.state.trust_domain();
        let target = |name: &str, what: &str| -> Result<String, Status> {
            if name == "*" {
                return Ok("*".into());
            }
            SpiffeId::from_service_name(td, name)
                .map(|id| id.to_string())
                .map_err(|e| invalid(format!("{what} {}: {e}", echo(name))))
        };
        let (source, destination) = if req.id.is_empty() {
            if req.source.is_empty() || req.destination.is_empty() {
                return Err(Status::invalid_argument(
                    "name the intention by its id, or by source and destination",
                ));
            }
            (
                target(&req.source, "source")?,
                target(&req.destination, "destination")?,
            )
        } else {
            (String::new(), String::new())
        };
        let deleted = self
            .state
            .datastore
            .delete_intention(&req.id, &source, &destination)
            .map_err(internal)?
            .ok_or_else(|| {
                Status::not_found(if req.id.is_empty() {
                    capped(format!("no intention from {source} to {destination}"))
                } else {
                    format!("no intention with id {}", echo(&req.id))
                })
            })?;
        tracing::info!(intention = %deleted.id, source = %deleted.source, destination = %deleted.destination, "deleted intention");
        self.state.notify_policy_changed();
        Ok(Response::new(v1::DeleteIntentionResponse {
            deleted: Some(intention_to_proto(deleted)),
        }))
    }

    async fn check_intention(
        &self,
        req: Request<v1::CheckIntentionRequest>,
    ) -> Result<Response<v1::CheckIntentionResponse>, Status> {
        let req = req.into_inner();
        let td = self.state.trust_domain();
        let resolve = |name: &str, what: &str| {
            SpiffeId::from_service_name(td, name).map_err(|e| {
                invalid(format!(
                    "{what} {} is not a SPIFFE ID or service name: {e}",
                    echo(name)
                ))
            })
        };
        let source = resolve(&req.source, "source")?;
        let destination = resolve(&req.destination, "destination")?;
        let policy = load_policy(&self.state)?;
        let decision = if req.method.is_empty() && req.path.is_empty() {
            policy.check_connection(&source, &destination)
        } else {
            let method = if req.method.is_empty() {
                "GET"
            } else {
                &req.method
            };
            let path = if req.path.is_empty() { "/" } else { &req.path };
            if !path.starts_with('/') {
                return Err(invalid(format!(
                    "--path {} must start with '/'",
                    echo(path)
                )));
            }
            let headers: Vec<(&str, &[u8])> = req
                .headers
                .iter()
                .map(|h| (h.name.as_str(), h.value.as_bytes()))
                .collect();
            // Decided as a sidecar with the default settings decides: on the normalised path.
            policy.check_unnormalized_request(
                &source,
                &destination,
                &HttpRequest {
                    method,
                    path,
                    headers: &headers,
                },
                &NormalizeOptions::default(),
            )
        };
        Ok(Response::new(v1::CheckIntentionResponse {
            allowed: decision.is_allowed(),
            intention_id: decision.intention_id.unwrap_or_default(),
            reason: decision.reason,
            source: source.to_string(),
            destination: destination.to_string(),
        }))
    }

    async fn list_services(
        &self,
        _: Request<v1::ListServicesRequest>,
    ) -> Result<Response<v1::ListServicesResponse>, Status> {
        let snapshot = self.state.policy_snapshot().map_err(internal)?;
        Ok(Response::new(v1::ListServicesResponse {
            services: snapshot.services,
        }))
    }

    async fn set_federated_bundle(
        &self,
        req: Request<v1::SetFederatedBundleRequest>,
    ) -> Result<Response<v1::FederatedBundle>, Status> {
        let req = req.into_inner();
        let name = req
            .trust_domain
            .strip_prefix("spiffe://")
            .unwrap_or(&req.trust_domain);
        let td = agentmesh_spiffe::TrustDomain::new(name)
            .map_err(|e| invalid(format!("invalid --id {}: {e}", echo(&req.trust_domain))))?;
        if &td == self.state.trust_domain() {
            return Err(invalid(format!(
                "{td} is this server's own trust domain; its bundle is the CA's, not set by hand"
            )));
        }
        let format = match req.format.as_str() {
            "" | "spiffe" => "spiffe",
            "pem" => "pem",
            other => {
                return Err(invalid(format!(
                    "invalid --format {}: use spiffe or pem",
                    echo(other)
                )));
            }
        };
        let bundle = crate::federation::parse_bundle(&td, &req.data, format).map_err(invalid)?;
        crate::federation::store(&self.state, &td, &bundle, "manual").map_err(internal)?;
        let row = self
            .state
            .datastore
            .get_federated_bundle(td.as_str())
            .map_err(internal)?
            .ok_or_else(|| Status::internal("the bundle just stored is gone"))?;
        Ok(Response::new(crate::federation::to_proto(row)))
    }

    async fn list_federated_bundles(
        &self,
        _: Request<v1::ListFederatedBundlesRequest>,
    ) -> Result<Response<v1::ListFederatedBundlesResponse>, Status> {
        let rows = self
            .state
            .datastore
            .list_federated_bundles()
            .map_err(internal)?;
        Ok(Response::new(v1::ListFederatedBundlesResponse {
            bundles: rows.into_iter().map(crate::federation::to_proto).collect(),
        }))
    }

    async fn delete_federated_bundle(
        &self,
        req: Request<v1::DeleteFederatedBundleRequest>,
    ) -> Result<Response<v1::DeleteFederatedBundleResponse>, Status> {
        let req = req.into_inner();
        let name = req
            .trust_domain
            .strip_prefix("spiffe://")
            .unwrap_or(&req.trust_domain);
        if !self
            .state
            .datastore
            .delete_federated_bundle(name)
            .map_err(internal)?
        {
            return Err(Status::not_found(capped(format!(
                "no federated bundle for {} is held",
                echo(&req.trust_domain)
            ))));
        }
        tracing::info!(trust_domain = %name, "federated bundle deleted");
        self.state.notify_entries_changed();
        Ok(Response::new(v1::DeleteFederatedBundleResponse {}))
    }
}
