//! The node API: join-token and x509pop attestation, node SVID renewal, entry sync, SVID
//! minting, and the policy watch (intentions and the service catalog) with service
//! registration.
//!
//! Every call but `AttestJoinToken` and `AttestX509Pop` needs a client certificate: the node
//! SVID, verified against the bundle during the handshake, of a node the datastore knows.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentmesh_proto::v1::{
    self, AttestJoinTokenRequest, AttestX509PopRequest, AttestX509PopResponse, MintJwtSvidRequest,
    MintJwtSvidResponse, MintX509SvidsRequest, MintX509SvidsResponse, NodeSvidResponse,
    RenewNodeSvidRequest, SyncEntriesRequest, SyncEntriesResponse, X509SvidResult,
};
use agentmesh_spiffe::SpiffeId;
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::ca::unix_secs;
use crate::datastore::{EntryRow, NodeRow, TokenRedemption};
use crate::state::ServerState;
use crate::tls_incoming::PeerInfo;

/// The node API service.
#[derive(Debug, Clone)]
pub struct NodeApiService {
    state: Arc<ServerState>,
    /// Becomes true when the server stops. Sync streams never end on their own, and a
    /// graceful shutdown waits for every open stream, so they must watch this.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl NodeApiService {
    /// Serves the node API from the shared server state until `stopping` becomes true.
    pub fn new(state: Arc<ServerState>, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        Self { state, stopping }
    }

    /// The calling node, or the reason it is refused.
    fn node<T>(&self, req: &Request<T>) -> Result<SpiffeId, Status> {
        let id = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.spiffe_id.clone())
            .ok_or_else(|| {
                Status::unauthenticated(
                    "this call needs mutual TLS with a node SVID; attest with a join token or x509pop first",
                )
            })?;
        if !self.state.is_node_id(&id) {
            return Err(Status::permission_denied(format!(
                "{id} is not a node identity"
            )));
        }
        match self.state.datastore.get_node(&id.to_string()) {
            Ok(Some(_)) => Ok(id),
            Ok(None) => Err(Status::permission_denied(format!(
                "{id} is not an attested node of this server"
            ))),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }

    fn issue_node_svid(
        &self,
        id: &SpiffeId,
        csr: &[u8],
        attested_at: i64,
    ) -> Result<NodeSvidResponse, Status> {
        let pk = agentmesh_ca::verify_csr(csr)
            .map_err(|e| Status::invalid_argument(format!("node CSR refused: {e}")))?;
        let now = SystemTime::now();
        let ca = self.state.ca.current();
        let svid = ca
            .authority
            .mint_x509_svid(id, &pk, self.state.settings.node_svid_ttl, &[], now)
            .map_err(|e| Status::internal(format!("minting the node SVID failed: {e}")))?;
        self.state
            .datastore
            .upsert_node(&NodeRow {
                spiffe_id: id.to_string(),
                serial: svid.serial.clone(),
                expires_at: unix_secs(svid.not_after),
                attested_at,
            })
            .map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(node = %id, serial = %svid.serial, "issued node SVID");
        Ok(NodeSvidResponse {
            spiffe_id: id.to_string(),
            cert_chain: svid.chain,
            bundle: Some(self.state.bundle()),
        })
    }

    fn entry_for_node(&self, node: &SpiffeId, entry_id: &str) -> Result<EntryRow, Status> {
        let entry = self
            .state
            .datastore
            .get_entry(entry_id)
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| Status::not_found(format!("no entry with id {entry_id}")))?;
        let node_id = node.to_string();
        if !entry.parent_id.is_empty()
            && entry.parent_id != node_id
            && !self
                .state
                .node_aliases(&node_id)
                .map_err(|e| Status::internal(e.to_string()))?
                .contains(&entry.parent_id)
        {
            return Err(Status::permission_denied(format!(
                "entry {entry_id} belongs to node {}, not {node}",
                entry.parent_id
            )));
        }
        Ok(entry)
    }
}

type SyncStream = Pin<Box<dyn Stream<Item = Result<SyncEntriesResponse, Status>> + Send>>;
type X509PopStream = Pin<Box<dyn Stream<Item = Result<AttestX509PopResponse, Status>> + Send>>;

/// How long the server waits for each of a node's two x509pop messages.
const X509POP_STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest certificate chain a node may send for x509pop.
const MAX_X509POP_CHAIN: usize = 8;

/// The node's next x509pop message, within [`X509POP_STEP_TIMEOUT`].
async fn next_x509pop_step(
    inbound: &mut Streaming<AttestX509PopRequest>,
    what: &str,
) -> Result<AttestX509PopRequest, Status> {
    tokio::time::timeout(X509POP_STEP_TIMEOUT, inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded(format!("x509pop refused: no {what} in time")))??
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "x509pop refused: the stream ended before the {what}"
            ))
        })
}

// === impl NodeApiService: x509pop ===

impl NodeApiService {
    /// The x509pop exchange on one stream: certificate and CSR in, challenge out, signature
    /// in, node SVID out.
    async fn x509pop_exchange(
        &self,
        verifier: &crate::x509pop::X509PopVerifier,
        inbound: &mut Streaming<AttestX509PopRequest>,
        tx: &tokio::sync::mpsc::Sender<Result<AttestX509PopResponse, Status>>,
    ) -> Result<(), Status> {
        let hello = next_x509pop_step(inbound, "certificate").await?;
        if hello.cert_chain.is_empty() || hello.cert_chain.len() > MAX_X509POP_CHAIN {
            return Err(Status::invalid_argument(format!(
                "x509pop refused: send the node certificate and its intermediates (1 to \
                 {MAX_X509POP_CHAIN} certificates), not {}",
                hello.cert_chain.len()
            )));
        }
        let fingerprint = agentmesh_tls::x509pop::fingerprint(&hello.cert_chain[0]);
        let challenge = crate::state::random_bytes::<{ agentmesh_tls::x509pop::CHALLENGE_LEN }>();
        tx.send(Ok(AttestX509PopResponse {
            challenge: challenge.to_vec(),
            svid: None,
        }))
        .await
        .map_err(|_| Status::cancelled("the node went away"))?;
        let answer = next_x509pop_step(inbound, "signature").await?;
        let scheme = u16::try_from(answer.signature_scheme).unwrap_or(u16::MAX);
        let now = SystemTime::now();
        let attested = verifier
            .verify(
                self.state.trust_domain(),
                &hello.cert_chain,
                &challenge,
                &hello.csr,
                scheme,
                &answer.signature,
                now,
            )
            .map_err(|e| {
                tracing::warn!(fingerprint = %fingerprint, reason = %e, "x509pop refused");
                Status::permission_denied(format!("x509pop refused: {e}"))
            })?;
        let node = attested.node_id.to_string();
        let before = self
            .state
            .datastore
            .node_selectors(&node)
            .map_err(|e| Status::internal(e.to_string()))?;
        if before != attested.selectors {
            self.state
                .datastore
                .set_node_selectors(&node, &attested.selectors)
                .map_err(|e| Status::internal(e.to_string()))?;
            // A sync stream of this node (an earlier attestation's) recomputes its aliases.
            self.state.notify_entries_changed();
        }
        let svid = self.issue_node_svid(&attested.node_id, &hello.csr, unix_secs(now))?;
        tracing::info!(node = %node, selectors = ?attested.selectors, "attested with x509pop");
        tx.send(Ok(AttestX509PopResponse {
            challenge: Vec::new(),
            svid: Some(svid),
        }))
        .await
        .map_err(|_| Status::cancelled("the node went away"))
    }
}
type PolicyStream = Pin<Box<dyn Stream<Item = Result<v1::PolicySnapshot, Status>> + Send>>;

/// The longest `host:port` a service may register.
const MAX_ADDRESS_LEN: usize = 262;

#[tonic::async_trait]
impl v1::node_api_server::NodeApi for NodeApiService {
    async fn attest_join_token(
        &self,
        req: Request<AttestJoinTokenRequest>,
    ) -> Result<Response<NodeSvidResponse>, Status> {
        let req = req.into_inner();
        let hash = crate::state::token_hash(&req.join_token);
        // Only a prefix of the hash is logged: enough to correlate, useless to an attacker.
        let token_ref = &hash[..12];
        let now = unix_secs(SystemTime::now());
        let outcome = self
            .state
            .datastore
            .redeem_join_token(&hash, now)
            .map_err(|e| Status::internal(e.to_string()))?;
        let refuse = |why: &str| {
            tracing::warn!(token = token_ref, reason = why, "join token refused");
            Err(Status::permission_denied(format!(
                "join token refused: {why}"
            )))
        };
        match outcome {
            TokenRedemption::Redeemed => {}
            TokenRedemption::Unknown => {
                return refuse(
                    "this server never issued it; generate one with `agentmesh token generate`",
                );
            }
            TokenRedemption::AlreadyUsed => {
                return refuse("it was already used; join tokens are one-time");
            }
            TokenRedemption::Expired => return refuse("it has expired; generate a new one"),
        }
        let id = self.state.new_node_id();
        Ok(Response::new(self.issue_node_svid(&id, &req.csr, now)?))
    }

    type AttestX509PopStream = X509PopStream;

    async fn attest_x509_pop(
        &self,
        req: Request<Streaming<AttestX509PopRequest>>,
    ) -> Result<Response<X509PopStream>, Status> {
        let Some(verifier) = self.state.x509pop.clone() else {
            return Err(Status::failed_precondition(
                "x509pop refused: this server trusts no x509pop CA; name one in its config file \
                 as [node_attestation.x509pop] ca_bundle_path",
            ));
        };
        let mut inbound = req.into_inner();
        let this = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            if let Err(status) = this.x509pop_exchange(&verifier, &mut inbound, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn renew_node_svid(
        &self,
        req: Request<RenewNodeSvidRequest>,
    ) -> Result<Response<NodeSvidResponse>, Status> {
        let node = self.node(&req)?;
        let attested_at = self
            .state
            .datastore
            .get_node(&node.to_string())
            .ok()
            .flatten()
            .map(|n| n.attested_at)
            .unwrap_or_default();
        Ok(Response::new(self.issue_node_svid(
            &node,
            &req.into_inner().csr,
            attested_at,
        )?))
    }

    type SyncEntriesStream = SyncStream;

    async fn sync_entries(
        &self,
        req: Request<SyncEntriesRequest>,
    ) -> Result<Response<SyncStream>, Status> {
        let node = self.node(&req)?.to_string();
        let state = self.state.clone();
        let mut entries_rx = state.entries_changed.subscribe();
        let mut bundle_rx = state.ca.subscribe();
        let mut stopping = self.stopping.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                // Marked seen before the read, never after: a change that lands while this
                // snapshot is read or waits in a full channel then wakes the loop again,
                // instead of being marked seen unsent (the node missed the last entry once).
                entries_rx.mark_unchanged();
                bundle_rx.mark_unchanged();
                let msg = state
                    .entries_for_node(&node)
                    .and_then(|entries| {
                        Ok(SyncEntriesResponse {
                            entries: entries
                                .into_iter()
                                .map(crate::state::entry_to_proto)
                                .collect(),
                            bundle: Some(state.bundle()),
                            federated_bundles: crate::federation::for_nodes(&state)?,
                        })
                    })
                    .map_err(|e| Status::internal(e.to_string()));
                if tx.send(msg).await.is_err() {
                    return;
                }
                tokio::select! {
                    r = entries_rx.changed() => if r.is_err() { return },
                    r = bundle_rx.changed() => if r.is_err() { return },
                    () = tx.closed() => return,
                    _ = stopping.wait_for(|s| *s) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn mint_x509_svids(
        &self,
        req: Request<MintX509SvidsRequest>,
    ) -> Result<Response<MintX509SvidsResponse>, Status> {
        let node = self.node(&req)?;
        let ca = self.state.ca.current();
        let now = SystemTime::now();
        let mut results = Vec::new();
        for p in req.into_inner().params {
            let result = self.entry_for_node(&node, &p.entry_id).and_then(|entry| {
                let id: SpiffeId = entry
                    .spiffe_id
                    .parse()
                    .map_err(|e| Status::internal(format!("stored entry is invalid: {e}")))?;
                let pk = agentmesh_ca::verify_csr(&p.csr)
                    .map_err(|e| Status::invalid_argument(format!("CSR refused: {e}")))?;
                let ttl = match entry.x509_ttl {
                    0 => self.state.settings.default_x509_ttl,
                    s => Duration::from_secs(s as u64),
                };
                let svid = ca
                    .authority
                    .mint_x509_svid(&id, &pk, ttl, &entry.dns_names, now)
                    .map_err(|e| Status::internal(e.to_string()))?;
                tracing::debug!(spiffe_id = %id, serial = %svid.serial, node = %node, "minted X.509-SVID");
                Ok(X509SvidResult {
                    entry_id: p.entry_id.clone(),
                    spiffe_id: id.to_string(),
                    cert_chain: svid.chain,
                    expires_at: unix_secs(svid.not_after),
                    error: String::new(),
                })
            });
            results.push(result.unwrap_or_else(|status| X509SvidResult {
                entry_id: p.entry_id,
                error: status.message().to_owned(),
                ..Default::default()
            }));
        }
        Ok(Response::new(MintX509SvidsResponse { results }))
    }

    async fn mint_jwt_svid(
        &self,
        req: Request<MintJwtSvidRequest>,
    ) -> Result<Response<MintJwtSvidResponse>, Status> {
        let node = self.node(&req)?;
        let req = req.into_inner();
        if req.audience.is_empty() || req.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument(
                "a JWT-SVID needs at least one non-empty audience",
            ));
        }
        let entry = self.entry_for_node(&node, &req.entry_id)?;
        let id: SpiffeId = entry
            .spiffe_id
            .parse()
            .map_err(|e| Status::internal(format!("stored entry is invalid: {e}")))?;
        let ttl = match entry.jwt_ttl {
            0 => self.state.settings.default_jwt_ttl,
            s => Duration::from_secs(s as u64),
        };
        let now = SystemTime::now();
        let ca = self.state.ca.current();
        let token = agentmesh_ca::sign_jwt_svid(&ca.jwt_key, &id, &req.audience, ttl, now)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(MintJwtSvidResponse {
            token,
            expires_at: unix_secs(now + ttl),
        }))
    }

    type WatchPolicyStream = PolicyStream;

    async fn watch_policy(
        &self,
        req: Request<v1::WatchPolicyRequest>,
    ) -> Result<Response<PolicyStream>, Status> {
        let node = self.node(&req)?;
        let state = self.state.clone();
        let mut changed = state.policy_changed.subscribe();
        let mut stopping = self.stopping.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tracing::debug!(node = %node, "policy watch opened");
        tokio::spawn(async move {
            loop {
                changed.mark_unchanged();
                let msg = state
                    .policy_snapshot()
                    .map_err(|e| Status::internal(e.to_string()));
                if tx.send(msg).await.is_err() {
                    return;
                }
                tokio::select! {
                    r = changed.changed() => if r.is_err() { return },
                    () = tx.closed() => return,
                    _ = stopping.wait_for(|s| *s) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn register_service(
        &self,
        req: Request<v1::RegisterServiceRequest>,
    ) -> Result<Response<v1::RegisterServiceResponse>, Status> {
        let node = self.node(&req)?;
        let req = req.into_inner();
        let id: SpiffeId = req.spiffe_id.parse().map_err(|e| {
            Status::invalid_argument(format!("service SPIFFE ID {:?}: {e}", req.spiffe_id))
        })?;
        if req.address.len() > MAX_ADDRESS_LEN
            || req.address.rsplit_once(':').is_none_or(|(host, port)| {
                host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0)
            })
        {
            return Err(Status::invalid_argument(format!(
                "service address {:?} is not host:port",
                req.address
            )));
        }
        // A node may only place services whose identity it can issue, so one compromised
        // node cannot redirect another node's services to itself.
        let serves = self
            .state
            .entries_for_node(&node.to_string())
            .map_err(|e| Status::internal(e.to_string()))?
            .iter()
            .any(|e| e.spiffe_id == id.to_string());
        if !serves {
            return Err(Status::permission_denied(format!(
                "node {node} serves no entry for {id}, so it cannot register that service"
            )));
        }
        let row = crate::datastore::ServiceRow {
            spiffe_id: id.to_string(),
            address: req.address,
            node_id: node.to_string(),
            updated_at: unix_secs(SystemTime::now()),
        };
        let unchanged = self
            .state
            .datastore
            .list_services()
            .map_err(|e| Status::internal(e.to_string()))?
            .iter()
            .any(|s| {
                s.spiffe_id == row.spiffe_id && s.address == row.address && s.node_id == row.node_id
            });
        self.state
            .datastore
            .upsert_service(&row)
            .map_err(|e| Status::internal(e.to_string()))?;
        if !unchanged {
            tracing::info!(service = %row.spiffe_id, address = %row.address, node = %node, "registered service");
            self.state.notify_policy_changed();
        }
        Ok(Response::new(v1::RegisterServiceResponse {}))
    }
}
