//! The proxy's own identity, followed on the Workload API's FetchX509SVID stream. Any SPIFFE
//! Workload API works (an agentmesh node or a SPIRE agent): the SVID, its key and the trust
//! bundles all come from there, and the bundles alone decide which peers are trusted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentmesh_proto::workload::X509svidRequest;
use agentmesh_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use agentmesh_spiffe::SpiffeId;
use agentmesh_tls::{RotatingCert, SvidCredentials};
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;

/// Why an identity update could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The Workload API could not be reached or refused.
    #[error("Workload API at {0}: {1}")]
    WorkloadApi(PathBuf, String),
    /// The response held no SVID.
    #[error("the Workload API returned no X.509-SVID")]
    NoSvid,
    /// The SVID or bundle did not parse.
    #[error("the Workload API returned an unusable SVID: {0}")]
    BadSvid(String),
    /// No SVID arrived in time at startup.
    #[error("no X.509-SVID from the Workload API at {socket} after {waited:?}: {last}")]
    Timeout {
        /// The socket.
        socket: PathBuf,
        /// How long it waited.
        waited: Duration,
        /// The last failure.
        last: String,
    },
}

/// One version of the proxy's identity.
#[derive(Debug)]
pub struct IdentityState {
    /// Our SPIFFE ID.
    pub id: SpiffeId,
    /// The certificate every new handshake presents; updated in place on rotation.
    pub cert: Arc<RotatingCert>,
    /// Every trusted root, of every trust domain the Workload API sent.
    pub roots: Arc<Vec<CertificateDer<'static>>>,
    /// When the current SVID expires.
    pub not_after: SystemTime,
    /// The current SVID's serial (hex).
    pub serial: String,
    /// Changes whenever the roots change, so cached TLS configs know to rebuild.
    pub roots_revision: u64,
}

/// A TLS config built for one identity version: keyed by the roots revision and the
/// certificate holder, so it is rebuilt only when the trust bundle or the identity changes
/// (a rotation updates the holder in place and needs no rebuild).
pub type ConfigCache<T> = Arc<std::sync::Mutex<Option<(u64, usize, Arc<T>)>>>;

/// Follows the Workload API and publishes each new identity.
#[derive(Debug)]
pub struct IdentityWatch {
    tx: watch::Sender<Option<Arc<IdentityState>>>,
}

/// Prefers the SVID for `preferred` when the caller holds several.
fn choose<'a>(
    svids: &'a [agentmesh_proto::workload::X509svid],
    preferred: &str,
) -> Option<&'a agentmesh_proto::workload::X509svid> {
    svids
        .iter()
        .find(|s| s.spiffe_id == preferred || s.spiffe_id.ends_with(&format!("/{preferred}")))
        .or_else(|| svids.first())
}

impl IdentityWatch {
    /// A watch with no identity yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            tx: watch::channel(None).0,
        })
    }

    /// Follows every identity change.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<IdentityState>>> {
        self.tx.subscribe()
    }

    /// The current identity, if one has arrived.
    pub fn current(&self) -> Option<Arc<IdentityState>> {
        self.tx.borrow().clone()
    }

    fn apply(
        &self,
        resp: agentmesh_proto::workload::X509svidResponse,
        service: &str,
    ) -> Result<(), IdentityError> {
        let svid = choose(&resp.svids, service).ok_or(IdentityError::NoSvid)?;
        let bad = |e: &dyn std::fmt::Display| IdentityError::BadSvid(e.to_string());
        let chain = agentmesh_tls::split_der_certs(&svid.x509_svid).map_err(|e| bad(&e))?;
        let id: SpiffeId = svid.spiffe_id.parse().map_err(|e| bad(&e))?;
        let creds = SvidCredentials::from_der(&chain, &svid.x509_svid_key).map_err(|e| bad(&e))?;
        let (_, not_after) = agentmesh_tls::cert_validity(&chain[0]).map_err(|e| bad(&e))?;
        let serial = agentmesh_tls::cert_serial_hex(&chain[0]).map_err(|e| bad(&e))?;
        let mut roots = agentmesh_tls::split_der_certs(&svid.bundle).map_err(|e| bad(&e))?;
        for der in resp.federated_bundles.values() {
            roots.extend(agentmesh_tls::split_der_certs(der).map_err(|e| bad(&e))?);
        }
        let roots: Vec<CertificateDer<'static>> =
            roots.into_iter().map(CertificateDer::from).collect();
        let previous = self.current();
        let (cert, roots_revision, roots) = match &previous {
            Some(prev) if prev.id == id => {
                prev.cert.update(&creds).map_err(|e| bad(&e))?;
                if *prev.roots == roots {
                    (prev.cert.clone(), prev.roots_revision, prev.roots.clone())
                } else {
                    (prev.cert.clone(), prev.roots_revision + 1, Arc::new(roots))
                }
            }
            _ => (
                Arc::new(RotatingCert::new(&creds).map_err(|e| bad(&e))?),
                previous.as_ref().map_or(0, |p| p.roots_revision + 1),
                Arc::new(roots),
            ),
        };
        if previous.as_ref().is_none_or(|p| p.serial != serial) {
            tracing::info!(spiffe_id = %id, serial = %serial, "proxy identity updated");
        }
        self.tx.send_replace(Some(Arc::new(IdentityState {
            id,
            cert,
            roots,
            not_after,
            serial,
            roots_revision,
        })));
        Ok(())
    }

    /// Follows FetchX509SVID on `socket` until `stop` fires, reconnecting after failures.
    /// The last identity stays in use while the Workload API is away.
    pub async fn run(
        self: Arc<Self>,
        socket: PathBuf,
        service: String,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut delay = Duration::from_millis(100);
        loop {
            let result = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                r = self.follow(&socket, &service) => r,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "Workload API stream ended; keeping the current SVID and retrying");
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(delay) => {}
            }
            // Before the first SVID (a launcher may still be registering us) retry quickly.
            let cap = if self.current().is_some() { 5 } else { 1 };
            delay = (delay * 2).min(Duration::from_secs(cap));
        }
    }

    async fn follow(&self, socket: &Path, service: &str) -> Result<(), IdentityError> {
        let err = |e: &dyn std::fmt::Display| {
            IdentityError::WorkloadApi(socket.to_owned(), e.to_string())
        };
        let channel = agentmesh_proto::unix::connect(socket)
            .await
            .map_err(|e| err(&e))?;
        let mut client = SpiffeWorkloadApiClient::new(channel)
            .max_decoding_message_size(agentmesh_proto::MAX_MESSAGE_BYTES);
        let mut stream = client
            .fetch_x509svid(workload_request(X509svidRequest {}))
            .await
            .map_err(|s| err(&s.message()))?
            .into_inner();
        loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    if let Err(e) = self.apply(resp, service) {
                        tracing::error!(error = %e, "ignoring an unusable SVID update");
                    }
                }
                Ok(None) => return Err(err(&"the stream ended")),
                Err(s) => return Err(err(&format!("{:?}: {}", s.code(), s.message()))),
            }
        }
    }

    /// Waits for the first identity, or fails after `patience` naming the last problem.
    ///
    /// # Errors
    /// [`IdentityError::Timeout`].
    pub async fn first(
        &self,
        socket: &Path,
        patience: Duration,
    ) -> Result<Arc<IdentityState>, IdentityError> {
        let mut rx = self.subscribe();
        match tokio::time::timeout(patience, rx.wait_for(Option::is_some)).await {
            Ok(Ok(v)) => Ok(v.clone().unwrap_or_else(|| unreachable!("waited for Some"))),
            _ => {
                // Ask once more, directly, to report why.
                let last = match agentmesh_proto::unix::connect(socket).await {
                    Err(e) => e.to_string(),
                    Ok(ch) => match SpiffeWorkloadApiClient::new(ch)
                        .fetch_x509svid(workload_request(X509svidRequest {}))
                        .await
                    {
                        Err(s) => format!("{:?}: {}", s.code(), s.message()),
                        Ok(_) => "the stream sent nothing".into(),
                    },
                };
                Err(IdentityError::Timeout {
                    socket: socket.to_owned(),
                    waited: patience,
                    last,
                })
            }
        }
    }
}

/// A request carrying the Workload API's required `workload.spiffe.io: true` header.
pub fn workload_request<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert(
        agentmesh_proto::WORKLOAD_API_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    req
}
