//! Envoy's Secret Discovery Service (SDS, xDS v3), the interface the SPIRE agent offers Envoy:
//! an Envoy attested like any workload gets its certificates and validation contexts from the
//! node, and rotation is pushed on the stream.
//!
//! It is served on the Workload API socket by the same tonic server (SPIRE does the same), so
//! an operator points Envoy at `SPIFFE_ENDPOINT_SOCKET` and needs no second socket, and the
//! caller is attested from the same peer credentials. Unlike the Workload API, no
//! `workload.spiffe.io` header is required: Envoy does not send it, and SPIRE does not ask.
//!
//! Resource names:
//! - `default`: the caller's own X.509-SVID (its first entry's), as a `TlsCertificate`;
//! - a SPIFFE ID: that SVID, if one of the caller's entries grants it (PermissionDenied otherwise);
//! - `ROOTCA`: a validation context for the caller's trust domain;
//! - `ALL`: a validation context for every trust domain the node holds a bundle of.
//!
//! Validation contexts name Envoy's SPIFFE validator (`envoy.tls.cert_validator.spiffe`) with
//! one `trust_domains` entry per trust domain, so Envoy checks a peer against the bundle of the
//! trust domain in the peer's SPIFFE ID, not against a flat list of roots.
//!
//! xDS semantics (state of the world): every response carries all subscribed resources, a
//! `version_info` derived from their content (serials, bundle), and a fresh nonce. A request
//! that repeats the last nonce is an ACK, or a NACK when it carries `error_detail`: a NACK is
//! logged and the same version is not sent again. A request with an older nonce is stale and
//! ignored, as the xDS protocol says. A changed `resource_names` is a new subscription and is
//! answered at once. Key material is only ever in responses, never in a log line.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_proto::xds::envoy::config::core::v3::{
    DataSource, TypedExtensionConfig, data_source,
};
use agentmesh_proto::xds::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
    spiffe_cert_validator_config,
};
use agentmesh_proto::xds::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use agentmesh_proto::xds::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use agentmesh_spiffe::{SpiffeId, TrustDomain};
use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::attestor::{Attestation, Attestor};
use crate::cache::{BundleInfo, CachedSvid, Snapshot};
use crate::denials::DeniedBy;
use crate::manager::Manager;
use crate::workload_api::peer_cred;

/// The xDS type URL of an SDS resource.
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// The name Envoy knows its SPIFFE certificate validator by.
pub const SPIFFE_VALIDATOR: &str = "envoy.tls.cert_validator.spiffe";

const SPIFFE_VALIDATOR_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig";

/// How long FetchSecrets waits for SVIDs that are being minted for a caller who has entries.
const MINT_WAIT: Duration = Duration::from_secs(10);

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Why an SDS request was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SdsError {
    /// The resource name is none of `default`, `ROOTCA`, `ALL` or a SPIFFE ID.
    #[error(
        "malformed SDS resource name {0:?}: use \"default\", \"ROOTCA\", \"ALL\" or a SPIFFE ID ({1})"
    )]
    MalformedName(String, String),
    /// The request is for another xDS type.
    #[error("this SDS server serves only {SECRET_TYPE_URL}, not {0:?}")]
    WrongType(String),
    /// The caller asked for a SPIFFE ID that none of its entries grants.
    #[error("this process ({caller}) is not entitled to {id}")]
    NotEntitled {
        /// Who asked.
        caller: String,
        /// What it asked for.
        id: SpiffeId,
    },
    /// The caller matches no entry; the text names the selector kinds the closest entry
    /// needs and a request id (the full explanation is in the node log).
    #[error("{0}")]
    NoEntry(String),
    /// The node has not finished its first sync.
    #[error("the node is not ready yet: it has not finished its first sync with the server")]
    NotReady,
    /// The caller has entries but an SVID it asked for is not minted yet.
    #[error(
        "this process has a registration entry, but its SVID could not be minted yet (is the server reachable?)"
    )]
    NotMinted,
}

impl From<SdsError> for Status {
    fn from(e: SdsError) -> Self {
        let msg = e.to_string();
        match e {
            SdsError::MalformedName(..) | SdsError::WrongType(_) => Status::invalid_argument(msg),
            SdsError::NotEntitled { .. } | SdsError::NoEntry(_) => Status::permission_denied(msg),
            SdsError::NotReady | SdsError::NotMinted => Status::unavailable(msg),
        }
    }
}

/// One SDS resource name, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceName {
    /// `default`: the caller's own SVID.
    Default,
    /// A SPIFFE ID the caller must be entitled to.
    Svid(SpiffeId),
    /// `ROOTCA`: the caller's trust domain's validation context.
    RootCa,
    /// `ALL`: every trust domain's bundle in one validation context.
    All,
}

impl std::str::FromStr for ResourceName {
    type Err = SdsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "default" => Ok(Self::Default),
            "ROOTCA" => Ok(Self::RootCa),
            "ALL" => Ok(Self::All),
            _ => SpiffeId::new(s)
                .map(Self::Svid)
                .map_err(|e| SdsError::MalformedName(s.to_owned(), e.to_string())),
        }
    }
}

/// The SDS service, on the Workload API socket.
#[derive(Debug, Clone)]
pub struct Sds {
    manager: Arc<Manager>,
    attestor: Arc<Attestor>,
    /// Becomes true when the node stops: streams end then, because a graceful shutdown waits
    /// for every open one and Envoy keeps them open forever.
    stopping: watch::Receiver<bool>,
}

impl Sds {
    /// Serves SDS from the node's cache until `stopping` becomes true.
    pub fn new(
        manager: Arc<Manager>,
        attestor: Arc<Attestor>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self {
            manager,
            attestor,
            stopping,
        }
    }

    /// Checks readiness and attests the caller. The watch is subscribed here, before any
    /// snapshot is read, so a rotation that lands while the first response is being built
    /// still marks the receiver changed and is pushed.
    async fn admit<T>(
        &self,
        req: &Request<T>,
    ) -> Result<(Attestation, watch::Receiver<Arc<Snapshot>>), Status> {
        let rx = self.manager.subscribe();
        if !rx.borrow().synced {
            return Err(SdsError::NotReady.into());
        }
        let cred = peer_cred(req)?;
        Ok((self.attestor.attest(cred).await, rx))
    }
}

/// The subscribed names, parsed; duplicates are dropped (Envoy gets each resource once).
fn parse_names(names: &[String]) -> Result<Vec<(String, ResourceName)>, SdsError> {
    let mut out: Vec<(String, ResourceName)> = Vec::new();
    for n in names {
        let parsed = n.parse()?;
        if !out.iter().any(|(seen, _)| seen == n) {
            out.push((n.clone(), parsed));
        }
    }
    Ok(out)
}

fn check_type(type_url: &str) -> Result<(), SdsError> {
    if type_url.is_empty() || type_url == SECRET_TYPE_URL {
        Ok(())
    } else {
        Err(SdsError::WrongType(type_url.to_owned()))
    }
}

/// The resources for `names` as of `snap`, with the fingerprint their version is derived
/// from. `Ok(None)` means an SVID the caller is entitled to is still being minted.
fn build(
    snap: &Snapshot,
    att: &Attestation,
    names: &[(String, ResourceName)],
    manager: &Manager,
    attestor: &Attestor,
) -> Result<Option<(Vec<Secret>, String)>, SdsError> {
    if snap.matching(att).next().is_none() {
        let why = attestor.denials().refuse(DeniedBy::Sds, att, &snap.entries);
        return Err(SdsError::NoEntry(why));
    }
    // Entries served on demand (past EAGER_MINT_LIMIT) are minted once someone asks.
    manager.want(snap.matching(att).map(|e| e.id.as_str()));
    let svids = snap.svids_for(att);
    let mut secrets = Vec::with_capacity(names.len());
    let mut fingerprint = String::new();
    for (name, parsed) in names {
        let svid = match parsed {
            ResourceName::Default => match svids.first() {
                Some(s) => s,
                None => return Ok(None),
            },
            ResourceName::Svid(id) => {
                if !snap.matching(att).any(|e| &e.spiffe_id == id) {
                    tracing::warn!(caller = %att.summary, spiffe_id = %id, "SDS request for a SPIFFE ID the caller is not entitled to");
                    return Err(SdsError::NotEntitled {
                        caller: att.summary.clone(),
                        id: id.clone(),
                    });
                }
                match svids.iter().find(|s| &s.spiffe_id == id) {
                    Some(s) => s,
                    None => return Ok(None),
                }
            }
            ResourceName::RootCa | ResourceName::All => {
                // ROOTCA is the own trust domain's bundle; ALL adds every federated one.
                let bundles = if matches!(parsed, ResourceName::All) {
                    snap.all_bundles()
                } else {
                    vec![snap.bundle.as_ref()]
                };
                for b in &bundles {
                    fingerprint.push_str(&format!(
                        "{name}={}:{}:{};",
                        b.trust_domain,
                        b.sequence,
                        hex_digest(&b.roots_concat())
                    ));
                }
                secrets.push(validation_context(name, &bundles));
                continue;
            }
        };
        fingerprint.push_str(&format!("{name}={}:{};", svid.spiffe_id, svid.serial));
        secrets.push(tls_certificate(name, svid));
    }
    Ok(Some((secrets, fingerprint)))
}

fn tls_certificate(name: &str, svid: &CachedSvid) -> Secret {
    let chain: String = svid
        .chain
        .iter()
        .map(|der| agentmesh_ca::pem_encode("CERTIFICATE", der))
        .collect();
    let key = agentmesh_ca::pem_encode("PRIVATE KEY", &svid.key_pkcs8);
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(chain.into_bytes())),
            private_key: Some(inline(key.into_bytes())),
        })),
    }
}

fn validation_context(name: &str, bundles: &[&BundleInfo]) -> Secret {
    let config = SpiffeCertValidatorConfig {
        trust_domains: bundles
            .iter()
            .map(|b| spiffe_cert_validator_config::TrustDomain {
                name: trust_domain_name(&b.trust_domain),
                trust_bundle: Some(inline(
                    b.roots
                        .iter()
                        .map(|der| agentmesh_ca::pem_encode("CERTIFICATE", der))
                        .collect::<String>()
                        .into_bytes(),
                )),
            })
            .collect(),
    };
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: None,
                custom_validator_config: Some(TypedExtensionConfig {
                    name: SPIFFE_VALIDATOR.to_owned(),
                    typed_config: Some(prost_types::Any {
                        type_url: SPIFFE_VALIDATOR_TYPE_URL.to_owned(),
                        value: config.encode_to_vec(),
                    }),
                }),
            },
        )),
    }
}

fn trust_domain_name(td: &TrustDomain) -> String {
    td.as_str().to_owned()
}

fn inline(bytes: Vec<u8>) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes)),
    }
}

fn hex_digest(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The version of a set of resources: derived from their content, so the same resources are
/// the same version on every stream and after a reconnect.
fn version_of(fingerprint: &str) -> String {
    hex_digest(fingerprint.as_bytes())
}

fn response(secrets: Vec<Secret>, version: String, nonce: String) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version,
        resources: secrets
            .into_iter()
            .map(|s| prost_types::Any {
                type_url: SECRET_TYPE_URL.to_owned(),
                value: s.encode_to_vec(),
            })
            .collect(),
        canary: false,
        type_url: SECRET_TYPE_URL.to_owned(),
        nonce,
    }
}

/// One StreamSecrets stream's state.
struct StreamState {
    att: Attestation,
    names: Option<Vec<(String, ResourceName)>>,
    /// The fingerprint of what was last sent (or NACKed), so an unchanged state is not resent.
    sent: Option<String>,
    last_nonce: String,
    nonces: u64,
    manager: Arc<Manager>,
    attestor: Arc<Attestor>,
}

impl StreamState {
    /// Builds and returns a response if the subscribed resources differ from what was sent.
    fn refresh(&mut self, snap: &Snapshot) -> Result<Option<DiscoveryResponse>, SdsError> {
        let Some(names) = &self.names else {
            return Ok(None);
        };
        let Some((secrets, fingerprint)) =
            build(snap, &self.att, names, &self.manager, &self.attestor)?
        else {
            return Ok(None);
        };
        if self.sent.as_deref() == Some(fingerprint.as_str()) {
            return Ok(None);
        }
        self.nonces += 1;
        self.last_nonce = self.nonces.to_string();
        let version = version_of(&fingerprint);
        for s in &secrets {
            tracing::debug!(resource = %s.name, version = %version, caller = %self.att.summary, "sending SDS secret");
        }
        self.sent = Some(fingerprint);
        Ok(Some(response(secrets, version, self.last_nonce.clone())))
    }

    /// Handles one request: `true` if the subscription may need a (new) response.
    fn request(&mut self, req: &DiscoveryRequest) -> Result<bool, SdsError> {
        check_type(&req.type_url)?;
        if !req.response_nonce.is_empty() && req.response_nonce != self.last_nonce {
            // An answer to an older response, overtaken by a newer one (xDS: ignore it).
            tracing::debug!(nonce = %req.response_nonce, latest = %self.last_nonce, "ignoring a stale SDS request");
            return Ok(false);
        }
        let names = parse_names(&req.resource_names)?;
        if let Some(err) = &req.error_detail {
            // A NACK: Envoy keeps its previous version. Sending the same again would be refused
            // again, so it is not resent; the next change (rotation, subscription) is.
            tracing::warn!(
                caller = %self.att.summary,
                version = %req.version_info,
                nonce = %req.response_nonce,
                code = err.code,
                error = %err.message,
                "Envoy rejected an SDS response (NACK)"
            );
        } else if !req.response_nonce.is_empty() {
            tracing::debug!(caller = %self.att.summary, version = %req.version_info, "SDS response acknowledged");
        }
        let changed = self.names.as_ref() != Some(&names);
        if changed {
            // A new subscription is answered even if its resources equal what was sent.
            self.sent = None;
            self.names = Some(names);
        }
        Ok(changed)
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for Sds {
    type DeltaSecretsStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn delta_secrets(
        &self,
        _req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented(
            "incremental SDS (DeltaSecrets) is not served; use StreamSecrets (state of the world)",
        ))
    }

    type StreamSecretsStream = ResponseStream<DiscoveryResponse>;

    async fn stream_secrets(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let (att, mut rx) = self.admit(&req).await?;
        tracing::debug!(caller = %att.summary, "SDS stream opened");
        let mut inbound = req.into_inner();
        let mut stopping = self.stopping.clone();
        let mut state = StreamState {
            att,
            names: None,
            sent: None,
            last_nonce: String::new(),
            nonces: 0,
            manager: self.manager.clone(),
            attestor: self.attestor.clone(),
        };
        let (tx, out) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let step = tokio::select! {
                    msg = inbound.next() => match msg {
                        Some(Ok(req)) => state.request(&req),
                        // The client closed its side, or the connection broke.
                        Some(Err(_)) | None => return,
                    },
                    r = rx.changed() => {
                        if r.is_err() {
                            return;
                        }
                        Ok(true)
                    },
                    () = tx.closed() => return,
                    _ = stopping.wait_for(|s| *s) => return,
                };
                let result = match step {
                    Ok(false) => continue,
                    // Marking the snapshot seen before building from it: a change after this
                    // line wakes the loop again, so no rotation is missed.
                    Ok(true) => {
                        let snap = rx.borrow_and_update().clone();
                        state.refresh(&snap)
                    }
                    Err(e) => Err(e),
                };
                match result {
                    Ok(None) => {}
                    Ok(Some(resp)) => {
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    async fn fetch_secrets(
        &self,
        req: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let (att, mut rx) = self.admit(&req).await?;
        let req = req.into_inner();
        check_type(&req.type_url)?;
        let names = parse_names(&req.resource_names)?;
        let deadline = tokio::time::Instant::now() + MINT_WAIT;
        loop {
            let snap = rx.borrow_and_update().clone();
            if let Some((secrets, fingerprint)) =
                build(&snap, &att, &names, &self.manager, &self.attestor)?
            {
                return Ok(Response::new(response(
                    secrets,
                    version_of(&fingerprint),
                    String::new(),
                )));
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(SdsError::NotMinted.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_parse_as_sds_defines_them() {
        let cases: &[(&str, Option<ResourceName>)] = &[
            ("default", Some(ResourceName::Default)),
            ("ROOTCA", Some(ResourceName::RootCa)),
            ("ALL", Some(ResourceName::All)),
            (
                "spiffe://td/ns/default/sa/web",
                Some(ResourceName::Svid(
                    "spiffe://td/ns/default/sa/web".parse().unwrap(),
                )),
            ),
            ("rootca", None),
            ("", None),
            ("spiffe://", None),
            ("web", None),
            ("spiffe://td/a/../b", None),
        ];
        for (name, want) in cases {
            match (name.parse::<ResourceName>(), want) {
                (Ok(got), Some(want)) => assert_eq!(&got, want, "{name}"),
                (Err(SdsError::MalformedName(n, _)), None) => assert_eq!(&n, name),
                (got, want) => panic!("{name:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn refusals_map_to_the_grpc_codes_envoy_and_operators_expect() {
        let code = |e: SdsError| Status::from(e).code();
        assert_eq!(
            code(SdsError::MalformedName("x".into(), "y".into())),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            code(SdsError::NotEntitled {
                caller: "pid=1".into(),
                id: "spiffe://td/x".parse().unwrap()
            }),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            code(SdsError::NoEntry("no".into())),
            tonic::Code::PermissionDenied
        );
        assert_eq!(code(SdsError::NotReady), tonic::Code::Unavailable);
    }
}
