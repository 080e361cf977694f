//! [`X509Source`]: the workload's X509-SVID and trust bundle, followed on the Workload API's
//! `FetchX509SVID` stream so it rotates on its own.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentmesh_proto::workload::X509svidRequest;
use agentmesh_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use agentmesh_spiffe::SpiffeId;
use agentmesh_tls::{RotatingCert, SvidCredentials};
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;

/// The environment variable SPIFFE clients read the Workload API address from.
///
/// # Examples
/// ```
/// assert_eq!(agentmesh_sdk::ENDPOINT_ENV, "SPIFFE_ENDPOINT_SOCKET");
/// ```
pub const ENDPOINT_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

/// Why an identity source could not start or an update was refused.
///
/// # Examples
/// ```
/// let err = agentmesh_sdk::Svid::from_der(&[b"not der".to_vec()], b"key").unwrap_err();
/// assert!(matches!(err, agentmesh_sdk::SourceError::BadSvid(_)));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// `SPIFFE_ENDPOINT_SOCKET` is unset, or not a `unix:` address.
    #[error("{ENDPOINT_ENV} is {0}; set it to unix:/path/to/workload.sock or pass the path")]
    NoEndpoint(String),
    /// The Workload API could not be reached or refused.
    #[error("workload api at {socket}: {reason}")]
    WorkloadApi {
        /// The socket.
        socket: PathBuf,
        /// What went wrong.
        reason: String,
        /// The node's gRPC status code when it answered with one, so a caller can tell a
        /// process with no entry (`PermissionDenied`) from a node that is not ready yet
        /// (`Unavailable`); `None` when the socket could not be reached or the stream ended.
        code: Option<tonic::Code>,
    },
    /// The response held no SVID.
    #[error("the workload api returned no x509-svid; is this process registered?")]
    NoSvid,
    /// The response held SVIDs, but not for the SPIFFE ID this source was asked to follow.
    #[error(
        "the workload api offered [{offered}] but not {wanted}; is an entry for it registered?"
    )]
    NotOffered {
        /// The ID asked for.
        wanted: SpiffeId,
        /// The IDs offered, comma separated.
        offered: String,
    },
    /// The SVID, key or bundle did not parse.
    #[error("unusable x509-svid: {0}")]
    BadSvid(String),
    /// No SVID arrived in time at startup.
    #[error("no x509-svid from the workload api at {socket} after {waited:?}: {last}")]
    Timeout {
        /// The socket.
        socket: PathBuf,
        /// How long it waited.
        waited: Duration,
        /// The last failure seen.
        last: String,
        /// The node's gRPC status code in the last failure, if it answered with one:
        /// `PermissionDenied` means no entry matches this process, `Unavailable` a node that
        /// is not ready.
        code: Option<tonic::Code>,
    },
}

/// One X509-SVID as the source holds it. The private key is kept but never shown.
///
/// # Examples
/// ```
/// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
/// let (svid, _) = ca.svid("spiffe://example.org/api");
/// assert!(format!("{svid:?}").contains("<redacted>"));
/// ```
#[derive(Clone)]
pub struct Svid {
    /// The SPIFFE ID in the leaf's URI SAN.
    pub id: SpiffeId,
    /// Leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's serial number, lowercase hex.
    pub serial: String,
    /// When the leaf expires.
    pub not_after: SystemTime,
    pub(crate) key_pkcs8: Arc<Vec<u8>>,
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key must never reach logs.
        f.debug_struct("Svid")
            .field("id", &self.id.to_string())
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Svid {
    /// Builds an SVID from a DER chain (leaf first) and its PKCS#8 DER key.
    ///
    /// # Errors
    /// [`SourceError::BadSvid`] for an empty or unparseable chain, a leaf without a single
    /// SPIFFE ID, or an empty key.
    ///
    /// # Examples
    /// ```
    /// use agentmesh_sdk::Svid;
    /// let err = Svid::from_der(&[], b"key").unwrap_err();
    /// assert!(err.to_string().contains("empty"));
    /// ```
    pub fn from_der(chain: &[Vec<u8>], pkcs8_key: &[u8]) -> Result<Self, SourceError> {
        let bad = |e: &dyn fmt::Display| SourceError::BadSvid(e.to_string());
        let creds = SvidCredentials::from_der(chain, pkcs8_key).map_err(|e| bad(&e))?;
        let leaf = &chain[0];
        let id = agentmesh_tls::spiffe_id_from_cert(leaf).map_err(|e| bad(&e))?;
        let (_, not_after) = agentmesh_tls::cert_validity(leaf).map_err(|e| bad(&e))?;
        let serial = agentmesh_tls::cert_serial_hex(leaf).map_err(|e| bad(&e))?;
        Ok(Self {
            id,
            chain: creds.chain,
            serial,
            not_after,
            key_pkcs8: Arc::new(pkcs8_key.to_vec()),
        })
    }

    /// The SVID's private key, PKCS#8 DER, for a caller that signs with it in a format the
    /// SDK does not offer (the frontend's user tokens). Never log or persist it.
    ///
    /// # Examples
    /// ```
    /// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
    /// let (svid, _) = ca.svid("spiffe://example.org/api");
    /// assert!(!svid.private_key_pkcs8_der().is_empty());
    /// ```
    pub fn private_key_pkcs8_der(&self) -> &[u8] {
        &self.key_pkcs8
    }

    pub(crate) fn credentials(&self) -> Result<SvidCredentials, SourceError> {
        let chain: Vec<Vec<u8>> = self.chain.iter().map(|c| c.to_vec()).collect();
        SvidCredentials::from_der(&chain, &self.key_pkcs8)
            .map_err(|e| SourceError::BadSvid(e.to_string()))
    }
}

/// One version of the workload's identity: its SVID and every trusted root.
///
/// # Examples
/// ```
/// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
/// let ctx = ca.source("spiffe://example.org/api").current();
/// println!("{} serial {} expires {:?}", ctx.svid.id, ctx.svid.serial, ctx.svid.not_after);
/// assert_eq!(ctx.roots_revision, 0);
/// ```
#[derive(Debug, Clone)]
pub struct X509Context {
    /// The SVID this workload presents.
    pub svid: Svid,
    /// Every trusted root, of every trust domain the Workload API sent.
    pub roots: Arc<Vec<CertificateDer<'static>>>,
    /// The roots of the SVID's own trust domain only (the response's `bundle`, without the
    /// federated ones), for checks that must not accept another trust domain's signers.
    pub bundle: Arc<Vec<CertificateDer<'static>>>,
    /// The federated trust domains' roots, each trusted only for its own trust domain's
    /// IDs, and the trust domain `bundle` vouches for (`None` for roots given by hand, which
    /// vouch for any ID). TLS configs from the SDK verify peers with it.
    pub federation: Arc<agentmesh_tls::Federation>,
    /// Bumped whenever `roots` changes, so cached TLS configs know to rebuild.
    pub roots_revision: u64,
}

struct Shared {
    tx: watch::Sender<Arc<X509Context>>,
    cert: Arc<RotatingCert>,
}

impl Shared {
    fn apply(&self, svid: Svid, roots: Roots) -> Result<(), SourceError> {
        let Roots {
            all: roots,
            own,
            federation,
        } = roots;
        let creds = svid.credentials()?;
        self.cert
            .update(&creds)
            .map_err(|e| SourceError::BadSvid(e.to_string()))?;
        let prev = self.tx.borrow().clone();
        let (roots, roots_revision) = if *prev.roots == roots {
            (prev.roots.clone(), prev.roots_revision)
        } else {
            (Arc::new(roots), prev.roots_revision + 1)
        };
        let bundle = if *prev.bundle == own {
            prev.bundle.clone()
        } else {
            Arc::new(own)
        };
        if prev.svid.serial != svid.serial {
            tracing::info!(spiffe_id = %svid.id, serial = %svid.serial, "x509-svid rotated");
        }
        let federation = if *prev.federation == federation {
            prev.federation.clone()
        } else {
            Arc::new(federation)
        };
        self.tx.send_replace(Arc::new(X509Context {
            svid,
            roots,
            bundle,
            federation,
            roots_revision,
        }));
        Ok(())
    }
}

/// The workload's X509-SVID and trust bundle, kept current.
///
/// Built with [`X509Source::connect`] (or [`X509Source::from_env`]) it follows the Workload
/// API stream in a background task and swaps each new SVID in; TLS configs made from it
/// present the new certificate on their next handshake without being rebuilt. The task stops
/// when the source is dropped. While the Workload API is away the last SVID stays in use.
///
/// # Examples
/// ```no_run
/// # async fn run() -> Result<(), agentmesh_sdk::SourceError> {
/// let source = agentmesh_sdk::X509Source::from_env(std::time::Duration::from_secs(10)).await?;
/// let mut changes = source.watch();
/// while changes.changed().await.is_ok() {
///     println!("now serial {}", changes.borrow().svid.serial);
/// }
/// # Ok(()) }
/// ```
pub struct X509Source {
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl fmt::Debug for X509Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ctx = self.current();
        f.debug_struct("X509Source")
            .field("id", &ctx.svid.id.to_string())
            .field("serial", &ctx.svid.serial)
            .field("roots", &ctx.roots.len())
            .field("following", &self.task.is_some())
            .finish()
    }
}

impl Drop for X509Source {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The trust bundles of one Workload API response.
struct Roots {
    /// Every root, the SVID's trust domain's first, then the federated ones.
    all: Vec<CertificateDer<'static>>,
    /// The SVID's own trust domain's roots only.
    own: Vec<CertificateDer<'static>>,
    /// Which roots vouch for which trust domain.
    federation: agentmesh_tls::Federation,
}

impl Roots {
    /// Roots given by hand: all of them count as the SVID's own trust domain's.
    fn unfederated(roots: Vec<CertificateDer<'static>>) -> Self {
        Self {
            own: roots.clone(),
            all: roots,
            federation: agentmesh_tls::Federation::default(),
        }
    }
}

/// Which of a workload's SVIDs a source follows when the Workload API offers several.
#[derive(Debug, Clone)]
enum Select {
    /// The first (the Workload API's default).
    First,
    /// Exactly this ID; a response without it is refused.
    Exactly(SpiffeId),
    /// The SVID of this service name (its ID is the name, or ends in `/<name>`), else the
    /// first, chosen afresh on every response: the trust domain, and so the exact ID, is not
    /// known before the first SVID, and a node may mint the service's SVID after another.
    Service(String),
}

fn parse_response(
    resp: agentmesh_proto::workload::X509svidResponse,
    select: &Select,
) -> Result<(Svid, Roots), SourceError> {
    // A workload registered under several IDs gets several SVIDs; the first is the default.
    let svid = match select {
        Select::First => resp.svids.first().ok_or(SourceError::NoSvid)?,
        Select::Service(name) => {
            let suffix = format!("/{name}");
            resp.svids
                .iter()
                .find(|s| s.spiffe_id == *name || s.spiffe_id.ends_with(&suffix))
                .or_else(|| resp.svids.first())
                .ok_or(SourceError::NoSvid)?
        }
        Select::Exactly(w) => resp
            .svids
            .iter()
            .find(|s| s.spiffe_id == w.to_string())
            .ok_or_else(|| SourceError::NotOffered {
                wanted: w.clone(),
                offered: resp
                    .svids
                    .iter()
                    .map(|s| s.spiffe_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?,
    };
    let bad = |e: &dyn fmt::Display| SourceError::BadSvid(e.to_string());
    let chain = agentmesh_tls::split_der_certs(&svid.x509_svid).map_err(|e| bad(&e))?;
    let parsed = Svid::from_der(&chain, &svid.x509_svid_key)?;
    let own: Vec<CertificateDer<'static>> = agentmesh_tls::split_der_certs(&svid.bundle)
        .map_err(|e| bad(&e))?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let mut all = own.clone();
    let mut federation = agentmesh_tls::Federation {
        trust_domain: Some(parsed.id.trust_domain().clone()),
        ..agentmesh_tls::Federation::default()
    };
    for (name, der) in &resp.federated_bundles {
        let federated: Vec<CertificateDer<'static>> = agentmesh_tls::split_der_certs(der)
            .map_err(|e| bad(&e))?
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        all.extend(federated.iter().cloned());
        // The map is keyed by trust domain ID (`spiffe://other.td`); a key that is not one
        // names no domain its roots could vouch for, so they verify nobody.
        match agentmesh_spiffe::TrustDomain::new(name.strip_prefix("spiffe://").unwrap_or(name)) {
            Ok(td) => {
                federation.bundles.insert(td, federated);
            }
            Err(e) => {
                tracing::warn!(trust_domain = %name, error = %e, "ignoring a federated bundle")
            }
        }
    }
    Ok((
        parsed,
        Roots {
            all,
            own,
            federation,
        },
    ))
}

fn request() -> tonic::Request<X509svidRequest> {
    let mut req = tonic::Request::new(X509svidRequest {});
    req.metadata_mut().insert(
        agentmesh_proto::WORKLOAD_API_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    req
}

async fn open_stream(
    socket: &Path,
) -> Result<tonic::Streaming<agentmesh_proto::workload::X509svidResponse>, SourceError> {
    let err = |reason: String, code: Option<tonic::Code>| SourceError::WorkloadApi {
        socket: socket.to_owned(),
        reason,
        code,
    };
    let channel = agentmesh_proto::unix::connect(socket)
        .await
        .map_err(|e| err(e.to_string(), None))?;
    let mut client = SpiffeWorkloadApiClient::new(channel)
        .max_decoding_message_size(agentmesh_proto::MAX_MESSAGE_BYTES);
    Ok(client
        .fetch_x509svid(request())
        .await
        .map_err(|s| err(format!("{:?}: {}", s.code(), s.message()), Some(s.code())))?
        .into_inner())
}

async fn next_update(
    socket: &Path,
    stream: &mut tonic::Streaming<agentmesh_proto::workload::X509svidResponse>,
    select: &Select,
) -> Result<(Svid, Roots), SourceError> {
    let err = |reason: String, code: Option<tonic::Code>| SourceError::WorkloadApi {
        socket: socket.to_owned(),
        reason,
        code,
    };
    match stream.message().await {
        Ok(Some(resp)) => parse_response(resp, select),
        Ok(None) => Err(err("the stream ended".into(), None)),
        Err(s) => Err(err(
            format!("{:?}: {}", s.code(), s.message()),
            Some(s.code()),
        )),
    }
}

/// Follows the stream until it breaks, then reconnects with backoff, forever.
async fn follow(
    shared: Arc<Shared>,
    socket: PathBuf,
    select: Select,
    mut stream: tonic::Streaming<agentmesh_proto::workload::X509svidResponse>,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        loop {
            match next_update(&socket, &mut stream, &select).await {
                Ok((svid, roots)) => {
                    delay = Duration::from_millis(100);
                    if let Err(e) = shared.apply(svid, roots) {
                        tracing::error!(error = %e, "ignoring an unusable x509-svid update");
                    }
                }
                Err(SourceError::WorkloadApi { reason, .. }) => {
                    tracing::warn!(%reason, "workload api stream ended; keeping the current svid and reconnecting");
                    break;
                }
                Err(e) => tracing::error!(error = %e, "ignoring an unusable x509-svid update"),
            }
        }
        loop {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
            match open_stream(&socket).await {
                Ok(s) => {
                    stream = s;
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "workload api still unreachable"),
            }
        }
    }
}

/// The socket path in a `SPIFFE_ENDPOINT_SOCKET` value (`unix:/path`, `unix:///path` or a
/// bare path).
fn socket_from_endpoint(value: &str) -> Result<PathBuf, SourceError> {
    let path = value
        .strip_prefix("unix://")
        .or_else(|| value.strip_prefix("unix:"))
        .unwrap_or(value);
    if !path.starts_with('/') {
        return Err(SourceError::NoEndpoint(format!("{value:?}")));
    }
    Ok(PathBuf::from(path))
}

impl X509Source {
    /// Connects to the Workload API at `socket`, waits up to `patience` for the first SVID,
    /// then follows the stream in the background, staying with that SVID's SPIFFE ID.
    ///
    /// # Errors
    /// [`SourceError::Timeout`] naming the last failure if no usable SVID arrived in time.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn run() -> Result<(), agentmesh_sdk::SourceError> {
    /// use std::time::Duration;
    /// let source = agentmesh_sdk::X509Source::connect(
    ///     "/run/agentmesh/workload.sock".as_ref(),
    ///     Duration::from_secs(10),
    /// ).await?;
    /// println!("I am {}", source.current().svid.id);
    /// # Ok(()) }
    /// ```
    pub async fn connect(socket: &Path, patience: Duration) -> Result<Arc<Self>, SourceError> {
        Self::connect_as(socket, None, patience).await
    }

    /// Like [`X509Source::connect`], but follows the SVID for `wanted` when the workload is
    /// entitled to several (`None` takes the first, the Workload API's default). Waits for
    /// `wanted` to be offered, since a node may mint a workload's SVIDs one by one.
    ///
    /// # Errors
    /// [`SourceError::Timeout`] naming the last failure (for example the IDs offered instead).
    ///
    /// # Examples
    /// ```no_run
    /// # async fn run() -> Result<(), agentmesh_sdk::SourceError> {
    /// let me: agentmesh_sdk::SpiffeId = "spiffe://example.org/api".parse().unwrap();
    /// let source = agentmesh_sdk::X509Source::connect_as(
    ///     "/run/agentmesh/workload.sock".as_ref(),
    ///     Some(&me),
    ///     std::time::Duration::from_secs(10),
    /// ).await?;
    /// assert_eq!(source.current().svid.id, me);
    /// # Ok(()) }
    /// ```
    pub async fn connect_as(
        socket: &Path,
        wanted: Option<&SpiffeId>,
        patience: Duration,
    ) -> Result<Arc<Self>, SourceError> {
        let select = wanted.map_or(Select::First, |w| Select::Exactly(w.clone()));
        Self::connect_select(socket, select, patience).await
    }

    /// Like [`X509Source::connect`], but follows the SVID of the service `name` (an ID that
    /// is `name` or ends in `/name`) when the workload is entitled to several, and the first
    /// otherwise. Unlike [`X509Source::connect_as`] it needs no trust domain up front and
    /// never waits for the service's SVID: every update is chosen afresh, so one minted later
    /// takes over. For a sidecar, which is configured with a service name, not an ID.
    ///
    /// # Errors
    /// [`SourceError::Timeout`] naming the last failure if no usable SVID arrived in time.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn run() -> Result<(), agentmesh_sdk::SourceError> {
    /// let source = agentmesh_sdk::X509Source::connect_for_service(
    ///     "/run/agentmesh/workload.sock".as_ref(),
    ///     "planner",
    ///     std::time::Duration::from_secs(60),
    /// ).await?;
    /// println!("I am {}", source.current().svid.id);
    /// # Ok(()) }
    /// ```
    pub async fn connect_for_service(
        socket: &Path,
        name: &str,
        patience: Duration,
    ) -> Result<Arc<Self>, SourceError> {
        Self::connect_select(socket, Select::Service(name.to_owned()), patience).await
    }

    async fn connect_select(
        socket: &Path,
        select: Select,
        patience: Duration,
    ) -> Result<Arc<Self>, SourceError> {
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            let mut last_offer = None;
            let attempt = async {
                let mut stream = open_stream(socket).await?;
                loop {
                    match next_update(socket, &mut stream, &select).await {
                        Ok((svid, roots)) => return Ok::<_, SourceError>((stream, svid, roots)),
                        // Not minted yet: later messages on the same stream may bring it.
                        Err(e @ SourceError::NotOffered { .. }) => last_offer = Some(e),
                        Err(e) => return Err(e),
                    }
                }
            };
            let left = patience.saturating_sub(started.elapsed());
            let (last, code) = match tokio::time::timeout(left, attempt).await {
                Ok(Ok((stream, svid, roots))) => {
                    // Keep following the identity we started with, even if the Workload API
                    // later lists this workload's SVIDs in another order.
                    let follow = match &select {
                        Select::First => Select::Exactly(svid.id.clone()),
                        other => other.clone(),
                    };
                    let mut source = Self::from_roots(svid, roots)?;
                    let shared = Arc::clone(&source.shared);
                    source.task = Some(tokio::spawn(self::follow(
                        shared,
                        socket.to_owned(),
                        follow,
                        stream,
                    )));
                    return Ok(Arc::new(source));
                }
                Ok(Err(e)) => {
                    let code = match &e {
                        SourceError::WorkloadApi { code, .. } => *code,
                        _ => None,
                    };
                    (e.to_string(), code)
                }
                Err(_) => (
                    last_offer.map_or_else(|| "no answer".to_owned(), |e| e.to_string()),
                    None,
                ),
            };
            // A launcher may still be registering this workload: retry until patience runs out.
            if started.elapsed() + delay >= patience {
                return Err(SourceError::Timeout {
                    socket: socket.to_owned(),
                    waited: patience,
                    last,
                    code,
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    /// Like [`X509Source::connect`], with the socket from `SPIFFE_ENDPOINT_SOCKET`.
    ///
    /// # Errors
    /// [`SourceError::NoEndpoint`] if the variable is unset or not a Unix socket path, else as
    /// [`X509Source::connect`].
    ///
    /// # Examples
    /// ```no_run
    /// # async fn run() -> Result<(), agentmesh_sdk::SourceError> {
    /// let source = agentmesh_sdk::X509Source::from_env(std::time::Duration::from_secs(10)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_env(patience: Duration) -> Result<Arc<Self>, SourceError> {
        Self::from_env_as(None, patience).await
    }

    /// Like [`X509Source::connect_as`], with the socket from `SPIFFE_ENDPOINT_SOCKET`.
    ///
    /// # Errors
    /// As [`X509Source::from_env`].
    ///
    /// # Examples
    /// ```no_run
    /// # async fn run() -> Result<(), agentmesh_sdk::SourceError> {
    /// let me: agentmesh_sdk::SpiffeId = "spiffe://example.org/api".parse().unwrap();
    /// let source = agentmesh_sdk::X509Source::from_env_as(Some(&me), std::time::Duration::from_secs(10)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_env_as(
        wanted: Option<&SpiffeId>,
        patience: Duration,
    ) -> Result<Arc<Self>, SourceError> {
        let value =
            std::env::var(ENDPOINT_ENV).map_err(|_| SourceError::NoEndpoint("unset".into()))?;
        Self::connect_as(&socket_from_endpoint(&value)?, wanted, patience).await
    }

    /// A source that holds a fixed SVID and bundle and follows nothing; [`X509Source::update`]
    /// rotates it by hand. For tests, and for SVIDs that come from somewhere else.
    ///
    /// # Errors
    /// [`SourceError::BadSvid`] if the key does not match the leaf.
    ///
    /// # Examples
    /// ```
    /// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
    /// let (svid, roots) = ca.svid("spiffe://example.org/api");
    /// let source = agentmesh_sdk::X509Source::from_svid(svid, roots).unwrap();
    /// assert_eq!(source.current().svid.id.to_string(), "spiffe://example.org/api");
    /// ```
    pub fn from_svid(svid: Svid, roots: Vec<CertificateDer<'static>>) -> Result<Self, SourceError> {
        Self::from_roots(svid, Roots::unfederated(roots))
    }

    fn from_roots(svid: Svid, roots: Roots) -> Result<Self, SourceError> {
        let cert = RotatingCert::new(&svid.credentials()?)
            .map_err(|e| SourceError::BadSvid(e.to_string()))?;
        let (tx, _) = watch::channel(Arc::new(X509Context {
            svid,
            roots: Arc::new(roots.all),
            bundle: Arc::new(roots.own),
            federation: Arc::new(roots.federation),
            roots_revision: 0,
        }));
        Ok(Self {
            shared: Arc::new(Shared {
                tx,
                cert: Arc::new(cert),
            }),
            task: None,
        })
    }

    /// Swaps in a new SVID and bundle, exactly as a Workload API update would.
    ///
    /// # Errors
    /// [`SourceError::BadSvid`]; the previous SVID then stays in use.
    ///
    /// # Examples
    /// ```
    /// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
    /// let (svid, roots) = ca.svid("spiffe://example.org/api");
    /// let source = agentmesh_sdk::X509Source::from_svid(svid, roots.clone()).unwrap();
    /// let (next, _) = ca.svid("spiffe://example.org/api");
    /// let serial = next.serial.clone();
    /// source.update(next, roots).unwrap();
    /// assert_eq!(source.current().svid.serial, serial);
    /// ```
    pub fn update(
        &self,
        svid: Svid,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<(), SourceError> {
        self.shared.apply(svid, Roots::unfederated(roots))
    }

    /// The identity in use right now.
    ///
    /// # Examples
    /// ```
    /// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
    /// let source = ca.source("spiffe://example.org/api");
    /// assert_eq!(source.current().svid.id.trust_domain().as_str(), "example.org");
    /// ```
    pub fn current(&self) -> Arc<X509Context> {
        self.shared.tx.borrow().clone()
    }

    /// Follows every identity change (rotation or a new bundle).
    ///
    /// # Examples
    /// ```
    /// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
    /// let source = ca.source("spiffe://example.org/api");
    /// let mut changes = source.watch();
    /// let (next, roots) = ca.svid("spiffe://example.org/api");
    /// source.update(next, roots).unwrap();
    /// assert!(changes.has_changed().unwrap());
    /// ```
    pub fn watch(&self) -> watch::Receiver<Arc<X509Context>> {
        self.shared.tx.subscribe()
    }

    /// The certificate holder every config made from this source presents; rotation updates
    /// it in place.
    pub(crate) fn rotating_cert(&self) -> Arc<RotatingCert> {
        Arc::clone(&self.shared.cert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_values_parse_to_socket_paths() {
        for (value, want) in [
            ("unix:/run/w.sock", Some("/run/w.sock")),
            ("unix:///run/w.sock", Some("/run/w.sock")),
            ("/run/w.sock", Some("/run/w.sock")),
            ("tcp://127.0.0.1:1", None),
            ("relative.sock", None),
        ] {
            let got = socket_from_endpoint(value).ok();
            assert_eq!(got.as_deref(), want.map(Path::new), "{value}");
        }
    }

    fn offered(ca: &crate::testing::TestCa, id: &str) -> agentmesh_proto::workload::X509svid {
        let (svid, roots) = ca.svid(id);
        agentmesh_proto::workload::X509svid {
            spiffe_id: id.to_owned(),
            x509_svid: svid.chain.iter().flat_map(|c| c.to_vec()).collect(),
            x509_svid_key: svid.private_key_pkcs8_der().to_vec(),
            bundle: roots.iter().flat_map(|c| c.to_vec()).collect(),
            hint: String::new(),
        }
    }

    #[test]
    fn a_service_takes_its_own_svid_else_the_first_and_keeps_its_own_bundle_apart() {
        let ca = crate::testing::TestCa::new("example.org");
        let other = crate::testing::TestCa::new("other.org");
        let resp = |ids: &[&str]| agentmesh_proto::workload::X509svidResponse {
            svids: ids.iter().map(|id| offered(&ca, id)).collect(),
            federated_bundles: [(
                "spiffe://other.org".to_owned(),
                other.roots().iter().flat_map(|c| c.to_vec()).collect(),
            )]
            .into(),
            ..Default::default()
        };
        let ids = [
            "spiffe://example.org/ns/default/sa/web",
            "spiffe://example.org/ns/default/sa/api",
        ];
        let service = Select::Service("api".into());
        let (svid, roots) = parse_response(resp(&ids), &service).unwrap();
        assert_eq!(svid.id.to_string(), ids[1]);
        assert_eq!(roots.own, ca.roots());
        assert_eq!(roots.all.len(), ca.roots().len() + other.roots().len());
        let (svid, _) = parse_response(resp(&ids[..1]), &service).unwrap();
        assert_eq!(
            svid.id.to_string(),
            ids[0],
            "no SVID of the service: the first"
        );
    }

    #[tokio::test]
    async fn connect_to_a_missing_socket_times_out_naming_the_socket() {
        let err = X509Source::connect(Path::new("/nonexistent/w.sock"), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, SourceError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/w.sock"), "{err}");
    }
}
