//! The SPIFFE Workload API, as the SPIFFE Workload Endpoint and Workload API specs define it:
//! the `workload.spiffe.io: true` header is required (InvalidArgument otherwise), unknown
//! callers get PermissionDenied with an explanation, a node that is not ready answers
//! Unavailable, and every stream message carries the full state.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentmesh_proto::workload::{
    self, JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svidRequest, X509svidResponse,
};
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::attestor::{Attestation, Attestor, PeerCred};
use crate::cache::{BundleInfo, CachedSvid, Snapshot};
use crate::denials::DeniedBy;
use crate::manager::Manager;

/// How long a call waits for SVIDs that are being minted for a caller who has entries.
const MINT_WAIT: Duration = Duration::from_secs(10);

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The Workload API service.
#[derive(Debug, Clone)]
pub struct WorkloadApi {
    manager: Arc<Manager>,
    attestor: Arc<Attestor>,
    /// Becomes true when the node stops: streams end then, because a graceful shutdown
    /// waits for every open one and clients keep them open forever.
    stopping: watch::Receiver<bool>,
}

impl WorkloadApi {
    /// Serves the Workload API from the node's cache until `stopping` becomes true.
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

    /// Checks the header and readiness, and attests the caller.
    async fn admit<T>(
        &self,
        req: &Request<T>,
    ) -> Result<(Attestation, watch::Receiver<Arc<Snapshot>>), Status> {
        check_header(req)?;
        let rx = self.manager.subscribe();
        if !rx.borrow().synced {
            return Err(Status::unavailable(
                "the node is not ready yet: it has not finished its first sync with the server",
            ));
        }
        let cred = peer_cred(req)?;
        Ok((self.attestor.attest(cred).await, rx))
    }

    /// Refuses a caller that matches no entry, explaining why, in the answer and in the log.
    fn require_entries(&self, att: &Attestation, snap: &Snapshot) -> Result<(), Status> {
        if snap.matching(att).next().is_some() {
            return Ok(());
        }
        let why = self
            .attestor
            .denials()
            .refuse(DeniedBy::WorkloadApi, att, &snap.entries);
        Err(Status::permission_denied(why))
    }

    /// The caller's SVIDs, waiting a little if they are still being minted.
    async fn svids(
        &self,
        att: &Attestation,
        rx: &mut watch::Receiver<Arc<Snapshot>>,
    ) -> Result<(Arc<Snapshot>, Vec<Arc<CachedSvid>>), Status> {
        let deadline = tokio::time::Instant::now() + MINT_WAIT;
        loop {
            let snap = rx.borrow_and_update().clone();
            self.require_entries(att, &snap)?;
            self.manager.want(snap.matching(att).map(|e| e.id.as_str()));
            let svids = snap.svids_for(att);
            if !svids.is_empty() {
                return Ok((snap, svids));
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(Status::unavailable(
                        "this process has a registration entry, but its SVID could not be minted yet (is the server reachable?)",
                    ));
                }
            }
        }
    }
}

pub(crate) fn check_header<T>(req: &Request<T>) -> Result<(), Status> {
    match req.metadata().get(agentmesh_proto::WORKLOAD_API_HEADER) {
        Some(v) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request: workload.spiffe.io: true",
        )),
    }
}

pub(crate) fn peer_cred<T>(req: &Request<T>) -> Result<PeerCred, Status> {
    let cred = req
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .ok_or_else(|| Status::internal("the kernel did not report the caller's credentials"))?;
    Ok(PeerCred {
        pid: cred.pid().and_then(|p| u32::try_from(p).ok()),
        uid: cred.uid(),
        gid: cred.gid(),
    })
}

fn x509_response(
    snap: &Snapshot,
    svids: &[Arc<CachedSvid>],
    federated: &[&BundleInfo],
) -> X509svidResponse {
    let bundle = snap.bundle.roots_concat();
    X509svidResponse {
        svids: svids
            .iter()
            .map(|s| workload::X509svid {
                spiffe_id: s.spiffe_id.to_string(),
                x509_svid: s.chain.concat(),
                x509_svid_key: s.key_pkcs8.clone(),
                bundle: bundle.clone(),
                hint: String::new(),
            })
            .collect(),
        crl: Vec::new(),
        federated_bundles: federated
            .iter()
            .map(|b| (b.trust_domain.id_string(), b.roots_concat()))
            .collect(),
    }
}

/// What identifies a stream's state, so an unchanged state is not sent twice.
type Fingerprint = (Vec<String>, u64, usize, Vec<(String, Vec<Vec<u8>>)>);

fn fingerprint(
    snap: &Snapshot,
    svids: &[Arc<CachedSvid>],
    federated: &[&BundleInfo],
) -> Fingerprint {
    (
        svids.iter().map(|s| s.serial.clone()).collect(),
        snap.bundle.sequence,
        snap.bundle.roots.len(),
        federated
            .iter()
            .map(|b| (b.trust_domain.to_string(), b.roots.clone()))
            .collect(),
    )
}

/// What identifies the bundle streams' state: every trust domain's roots, or JWKS.
fn x509_bundles_key(snap: &Snapshot) -> (u64, Vec<Vec<Vec<u8>>>) {
    (
        snap.bundle.sequence,
        snap.all_bundles().iter().map(|b| b.roots.clone()).collect(),
    )
}

fn jwt_bundles_key(snap: &Snapshot) -> Vec<String> {
    snap.all_bundles()
        .iter()
        .map(|b| b.jwks_json.clone())
        .collect()
}

/// Sends `first`, then a fresh message built by `build` whenever the snapshot changes in a way
/// that the message's key notices. `build` returning `None` skips the change; an error ends the
/// stream with that error.
fn stream_updates<T, K>(
    first: T,
    first_key: K,
    mut rx: watch::Receiver<Arc<Snapshot>>,
    mut stopping: watch::Receiver<bool>,
    build: impl Fn(&Snapshot) -> Result<Option<(T, K)>, Status> + Send + 'static,
) -> ResponseStream<T>
where
    T: Send + 'static,
    K: PartialEq + Send + 'static,
{
    let (tx, out) = mpsc::channel(4);
    tokio::spawn(async move {
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        let mut last = first_key;
        loop {
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                () = tx.closed() => return,
                _ = stopping.wait_for(|s| *s) => return,
            }
            let snap = rx.borrow_and_update().clone();
            match build(&snap) {
                Ok(None) => {}
                Ok(Some((msg, key))) => {
                    if key == last {
                        continue;
                    }
                    last = key;
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))
}

fn x509_bundles(snap: &Snapshot) -> X509BundlesResponse {
    X509BundlesResponse {
        crl: Vec::new(),
        // Every trust domain's, whatever the caller's entries federate with, as SPIRE does.
        bundles: snap
            .all_bundles()
            .iter()
            .map(|b| (b.trust_domain.id_string(), b.roots_concat()))
            .collect(),
    }
}

fn jwt_bundles(snap: &Snapshot) -> JwtBundlesResponse {
    JwtBundlesResponse {
        bundles: snap
            .all_bundles()
            .iter()
            .map(|b| (b.trust_domain.id_string(), b.jwks_json.clone().into_bytes()))
            .collect(),
    }
}

#[tonic::async_trait]
impl workload::spiffe_workload_api_server::SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = ResponseStream<X509svidResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let (att, mut rx) = self.admit(&req).await?;
        let (snap, svids) = self.svids(&att, &mut rx).await?;
        for s in &svids {
            tracing::debug!(spiffe_id = %s.spiffe_id, serial = %s.serial, caller = %att.summary, "serving X.509-SVID");
        }
        let federated = snap.federated_for(&att);
        let first = x509_response(&snap, &svids, &federated);
        let key = fingerprint(&snap, &svids, &federated);
        let manager = self.manager.clone();
        let attestor = self.attestor.clone();
        Ok(Response::new(stream_updates(
            first,
            key,
            rx,
            self.stopping.clone(),
            move |snap| {
                // Entries that start matching later are minted on demand too.
                manager.want(snap.matching(&att).map(|e| e.id.as_str()));
                let svids = snap.svids_for(&att);
                if snap.matching(&att).next().is_none() {
                    let why =
                        attestor
                            .denials()
                            .refuse(DeniedBy::WorkloadApiStream, &att, &snap.entries);
                    return Err(Status::permission_denied(why));
                }
                if svids.is_empty() {
                    // Entries exist but their SVIDs are being re-minted: wait for the next change.
                    return Ok(None);
                }
                let federated = snap.federated_for(&att);
                Ok(Some((
                    x509_response(snap, &svids, &federated),
                    fingerprint(snap, &svids, &federated),
                )))
            },
        )))
    }

    type FetchX509BundlesStream = ResponseStream<X509BundlesResponse>;

    async fn fetch_x509_bundles(
        &self,
        req: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        // Bundles are public: any caller may have them to verify others, identity or not.
        let (_, mut rx) = self.admit(&req).await?;
        let snap = rx.borrow_and_update().clone();
        let first = x509_bundles(&snap);
        let key = x509_bundles_key(&snap);
        Ok(Response::new(stream_updates(
            first,
            key,
            rx,
            self.stopping.clone(),
            |snap| Ok(Some((x509_bundles(snap), x509_bundles_key(snap)))),
        )))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        let (att, rx) = self.admit(&req).await?;
        let req = req.into_inner();
        if req.audience.is_empty() || req.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let snap = rx.borrow().clone();
        self.require_entries(&att, &snap)?;
        let mut entries: Vec<_> = snap.matching(&att).collect();
        if !req.spiffe_id.is_empty() {
            entries.retain(|e| e.spiffe_id.to_string() == req.spiffe_id);
            if entries.is_empty() {
                return Err(Status::permission_denied(format!(
                    "this process ({}) is not entitled to {}",
                    att.summary, req.spiffe_id
                )));
            }
        }
        let mut svids = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for e in entries {
            if !seen.insert(e.spiffe_id.clone()) {
                continue;
            }
            let token = self
                .manager
                .jwt_svid(e, &req.audience)
                .await
                .map_err(|err| {
                    Status::unavailable(format!(
                        "could not get a JWT-SVID for {}: {err}",
                        e.spiffe_id
                    ))
                })?;
            svids.push(workload::Jwtsvid {
                spiffe_id: e.spiffe_id.to_string(),
                svid: token,
                hint: String::new(),
            });
        }
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    type FetchJWTBundlesStream = ResponseStream<JwtBundlesResponse>;

    async fn fetch_jwt_bundles(
        &self,
        req: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let (_, mut rx) = self.admit(&req).await?;
        let snap = rx.borrow_and_update().clone();
        let first = jwt_bundles(&snap);
        let key = jwt_bundles_key(&snap);
        Ok(Response::new(stream_updates(
            first,
            key,
            rx,
            self.stopping.clone(),
            |snap| Ok(Some((jwt_bundles(snap), jwt_bundles_key(snap)))),
        )))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        let (_, rx) = self.admit(&req).await?;
        let req = req.into_inner();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if req.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let snap = rx.borrow().clone();
        // The token's subject names the trust domain whose keys must have signed it: read
        // unverified only to pick the bundle, then checked again on the verified claims.
        let bundle = match claimed_trust_domain(&req.svid) {
            Some(td) => snap.bundle_of(&td).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "JWT-SVID is not valid: its subject is in trust domain {td}, which is not federated with {}",
                    snap.bundle.trust_domain
                ))
            })?,
            None => snap.bundle.as_ref(),
        };
        let claims = agentmesh_ca::validate_jwt_svid(
            &req.svid,
            &bundle.jwks(),
            &req.audience,
            SystemTime::now(),
        )
        .map_err(|e| Status::invalid_argument(format!("JWT-SVID is not valid: {e}")))?;
        if claims.sub.trust_domain() != &bundle.trust_domain {
            return Err(Status::invalid_argument(format!(
                "JWT-SVID is not valid: signed by a key of {} for a subject in {}",
                bundle.trust_domain,
                claims.sub.trust_domain()
            )));
        }
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: claims.sub.to_string(),
            claims: Some(to_struct(claims.raw)),
        }))
    }
}

/// The trust domain of a JWT's `sub` claim, read without verifying anything.
fn claimed_trust_domain(token: &str) -> Option<agentmesh_spiffe::TrustDomain> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let sub: agentmesh_spiffe::SpiffeId = claims.get("sub")?.as_str()?.parse().ok()?;
    Some(sub.trust_domain().clone())
}

fn to_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(to_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::claimed_trust_domain;

    fn token(claims: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"ES256"}"#), b64(claims))
    }

    #[test]
    fn the_bundle_for_a_jwt_is_chosen_by_its_subjects_trust_domain() {
        assert_eq!(
            claimed_trust_domain(&token(r#"{"sub":"spiffe://other.test/a"}"#))
                .map(|td| td.to_string()),
            Some("other.test".to_owned())
        );
        for bad in [
            token(r#"{"sub":"not an id"}"#),
            token(r#"{"aud":"x"}"#),
            "garbage".to_owned(),
        ] {
            assert_eq!(claimed_trust_domain(&bad), None, "{bad}");
        }
    }
}
