//! The node's loops: entry sync, SVID minting and rotation, and node SVID renewal. They keep
//! the cache's snapshot current, and keep serving what is cached while the server is away.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentmesh_ca::{PrivateKey, pem_decode_all, pem_encode};
use agentmesh_proto::v1::node_api_client::NodeApiClient;
use agentmesh_proto::v1::{
    self, MintJwtSvidRequest, MintX509SvidsRequest, RenewNodeSvidRequest, SyncEntriesRequest,
    X509SvidParams,
};
use agentmesh_spiffe::{Selector, SelectorSet, SpiffeId, TrustDomain};
use agentmesh_tls::{RotatingCert, SvidCredentials};
use tokio::sync::{Notify, watch};
use tonic::transport::Channel;

use crate::cache::{BundleInfo, CachedSvid, EntryInfo, Snapshot};
use crate::server_client::{SharedClientConfig, client_config, describe};

mod backoff;
pub(crate) use backoff::Backoff;
use backoff::MAX_BACKOFF;

/// How many SVIDs to ask for in one call.
const MINT_BATCH: usize = 500;
/// Up to this many entries, the node mints an SVID for every entry it serves, so workloads
/// get theirs from the cache even if they first ask during a server outage. Above it, only
/// for entries a workload has asked for (then kept and rotated), so a node that serves a
/// whole fleet's entries does not hold a fleet's worth of keys. SPIRE's agent does the same
/// with its `x509_svid_cache_max_size` (default 1000).
pub const EAGER_MINT_LIMIT: usize = 1000;
/// How often the rotation loop looks for SVIDs that are due.
const ROTATION_TICK: Duration = Duration::from_millis(250);

/// A failure in the node's dealings with the server or its own files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// The server refused or could not be reached.
    #[error("server: {0}")]
    Server(String),
    /// A key or CSR could not be made.
    #[error("key: {0}")]
    Key(#[from] agentmesh_ca::KeyError),
    /// A CSR could not be made.
    #[error("csr: {0}")]
    Csr(#[from] agentmesh_ca::CsrError),
    /// What the server sent does not verify.
    #[error("the server sent an SVID that does not verify: {0}")]
    BadSvid(#[from] agentmesh_tls::CertError),
    /// TLS setup failed.
    #[error("tls: {0}")]
    Tls(#[from] agentmesh_tls::TlsError),
    /// Credentials could not be loaded.
    #[error("credentials: {0}")]
    Credentials(#[from] agentmesh_tls::CredentialsError),
    /// A stored file is unusable.
    #[error("{0}: {1}")]
    File(PathBuf, String),
}

impl From<tonic::Status> for ManagerError {
    fn from(s: tonic::Status) -> Self {
        Self::Server(describe(&s))
    }
}

/// The node's own SVID.
#[derive(Clone)]
pub struct NodeSvid {
    /// `spiffe://<td>/agentmesh/node/<id>`.
    pub spiffe_id: SpiffeId,
    /// Leaf first.
    pub chain: Vec<Vec<u8>>,
    /// PKCS#8.
    pub key_pkcs8: Vec<u8>,
    /// Validity end.
    pub not_after: SystemTime,
    /// Validity start.
    pub not_before: SystemTime,
}

impl std::fmt::Debug for NodeSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSvid")
            .field("spiffe_id", &self.spiffe_id.to_string())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl NodeSvid {
    /// The file holding the node SVID and its key, together so that they change atomically.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("node-svid.pem")
    }

    /// Loads the stored node SVID, if there is one that is still valid and chains to `roots`.
    pub fn load(data_dir: &Path, roots: &[Vec<u8>]) -> Option<Self> {
        let path = Self::path(data_dir);
        let bytes = match agentmesh_ca::read_secret_file(&path) {
            Ok(b) => b,
            Err(e) => {
                if path.exists() {
                    tracing::warn!(error = %e, "ignoring the stored node SVID");
                }
                return None;
            }
        };
        let text = String::from_utf8(bytes).ok()?;
        let chain = pem_decode_all(&text, "CERTIFICATE").ok()?;
        let key_pkcs8 = pem_decode_all(&text, "PRIVATE KEY").ok()?.pop()?;
        let now = SystemTime::now();
        match agentmesh_tls::verify_chain(&chain, roots, now) {
            Ok(spiffe_id) => {
                let (not_before, not_after) = agentmesh_tls::cert_validity(&chain[0]).ok()?;
                Some(Self {
                    spiffe_id,
                    chain,
                    key_pkcs8,
                    not_after,
                    not_before,
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "the stored node SVID is no longer usable");
                None
            }
        }
    }

    /// Stores the SVID and its key in one 0600 file, replaced atomically.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn store(&self, data_dir: &Path) -> Result<(), ManagerError> {
        let mut text = String::new();
        for c in &self.chain {
            text.push_str(&pem_encode("CERTIFICATE", c));
        }
        text.push_str(&pem_encode("PRIVATE KEY", &self.key_pkcs8));
        agentmesh_ca::write_secret_file(&Self::path(data_dir), text.as_bytes())?;
        Ok(())
    }

    /// As TLS credentials.
    ///
    /// # Errors
    /// An empty chain or key.
    pub fn credentials(&self) -> Result<SvidCredentials, ManagerError> {
        Ok(SvidCredentials::from_der(&self.chain, &self.key_pkcs8)?)
    }

    /// Builds one from what the server returned, checking it chains to `roots` and carries our
    /// key.
    ///
    /// # Errors
    /// The chain does not verify.
    pub fn from_response(
        resp: v1::NodeSvidResponse,
        key: &PrivateKey,
        roots: &[Vec<u8>],
    ) -> Result<Self, ManagerError> {
        let spiffe_id = agentmesh_tls::verify_chain(&resp.cert_chain, roots, SystemTime::now())?;
        check_leaf_key(&resp.cert_chain, key)?;
        let (not_before, not_after) = agentmesh_tls::cert_validity(&resp.cert_chain[0])?;
        Ok(Self {
            spiffe_id,
            chain: resp.cert_chain,
            key_pkcs8: key.pkcs8_der(),
            not_after,
            not_before,
        })
    }
}

fn check_leaf_key(chain: &[Vec<u8>], key: &PrivateKey) -> Result<(), ManagerError> {
    use x509_parser::prelude::FromDer;
    let leaf = chain
        .first()
        .ok_or_else(|| ManagerError::Server("empty certificate chain".into()))?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf)
        .map_err(|e| ManagerError::Server(format!("unparsable certificate: {e}")))?;
    if cert.public_key().raw != key.public_key_der().as_slice() {
        return Err(ManagerError::Server(
            "the certificate does not carry the key this node generated".into(),
        ));
    }
    Ok(())
}

struct CachedJwt {
    token: String,
    refresh_at: SystemTime,
    expires_at: SystemTime,
}

/// The node's state and the loops that keep it fresh.
pub struct Manager {
    data_dir: PathBuf,
    server_addr: String,
    server_id: SpiffeId,
    /// With x509pop, the node attests again when its SVID has expired unrenewed.
    x509pop: Option<crate::attest::X509PopCredentials>,
    client: NodeApiClient<Channel>,
    tls: SharedClientConfig,
    node_cert: Arc<RotatingCert>,
    node_svid: Mutex<NodeSvid>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    jwts: Mutex<HashMap<(String, String), CachedJwt>>,
    wake_minter: Notify,
    /// Entries a workload has asked for; minted on demand above [`EAGER_MINT_LIMIT`].
    demanded: Mutex<std::collections::HashSet<String>>,
    server_reachable: std::sync::atomic::AtomicBool,
    first_sync_applied: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("server_id", &self.server_id.to_string())
            .finish_non_exhaustive()
    }
}

fn unix_time(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

/// A uniform fraction in [0, 1) from the system RNG.
fn random_fraction() -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

/// Half of the lifetime, ±10% of the lifetime, after `not_before`.
pub fn rotation_time(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    let fraction = 0.5 + (random_fraction() * 0.2 - 0.1);
    not_before + life.mul_f64(fraction)
}

impl Manager {
    /// Creates the manager around an attested node SVID.
    ///
    /// # Errors
    /// TLS setup failed.
    pub fn new(
        data_dir: PathBuf,
        server_addr: &str,
        server_id: SpiffeId,
        node_svid: NodeSvid,
        roots: Vec<Vec<u8>>,
        x509pop: Option<crate::attest::X509PopCredentials>,
    ) -> Result<Arc<Self>, ManagerError> {
        let node_cert = Arc::new(RotatingCert::new(&node_svid.credentials()?)?);
        let tls = Arc::new(std::sync::RwLock::new(client_config(
            &roots,
            &server_id,
            Some(node_cert.clone()),
        )?));
        let client = crate::server_client::node_api_client(server_addr, tls.clone());
        let bundle = BundleInfo {
            trust_domain: server_id.trust_domain().clone(),
            roots,
            jwks_json: r#"{"keys":[]}"#.into(),
            sequence: 0,
        };
        let (snapshot, _) = watch::channel(Arc::new(Snapshot {
            entries: Arc::new(Vec::new()),
            svids: HashMap::new(),
            bundle: Arc::new(bundle),
            federated: Arc::new(Vec::new()),
            synced: false,
        }));
        Ok(Arc::new(Self {
            data_dir,
            server_addr: server_addr.to_owned(),
            server_id,
            x509pop,
            client,
            tls,
            node_cert,
            node_svid: Mutex::new(node_svid),
            snapshot,
            jwts: Mutex::new(HashMap::new()),
            wake_minter: Notify::new(),
            demanded: Mutex::new(std::collections::HashSet::new()),
            server_reachable: std::sync::atomic::AtomicBool::new(true),
            first_sync_applied: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// Records that a workload wants SVIDs for these entries, and wakes the minter if any is
    /// new. Cheap when nothing changes: the Workload API calls it on every snapshot.
    pub fn want<'a>(&self, entry_ids: impl IntoIterator<Item = &'a str>) {
        let mut demanded = self.demanded.lock().unwrap_or_else(|e| e.into_inner());
        let mut new = false;
        for id in entry_ids {
            if !demanded.contains(id) {
                demanded.insert(id.to_owned());
                new = true;
            }
        }
        drop(demanded);
        if new {
            self.wake_minter.notify_one();
        }
    }

    /// A client of the server's node API, authenticated with the node SVID.
    pub fn server_client(&self) -> NodeApiClient<Channel> {
        self.client.clone()
    }

    /// Follows every change of the cache.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.subscribe()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// The node's SPIFFE ID and SVID expiry.
    pub fn node_identity(&self) -> (SpiffeId, SystemTime) {
        let s = self.node_svid.lock().unwrap_or_else(|e| e.into_inner());
        (s.spiffe_id.clone(), s.not_after)
    }

    /// Whether the last call to the server succeeded.
    pub fn server_reachable(&self) -> bool {
        self.server_reachable
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set_reachable(&self, ok: bool) {
        let was = self
            .server_reachable
            .swap(ok, std::sync::atomic::Ordering::Relaxed);
        if was != ok && ok {
            tracing::info!("server reachable again; syncing and rotating resume");
        }
    }

    /// Records that talking to the server failed, and says why once per outage: "refused
    /// our certificate" and "connection refused" need different fixes.
    fn set_unreachable(&self, why: &dyn std::fmt::Display) {
        let was = self
            .server_reachable
            .swap(false, std::sync::atomic::Ordering::Relaxed);
        if was {
            tracing::warn!(error = %why, "cannot reach the server; serving cached SVIDs and retrying with backoff");
        }
    }

    /// Runs the loops until `stop` fires.
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let sync = tokio::spawn(self.clone().sync_loop(stop.clone()));
        let mint = tokio::spawn(self.clone().mint_loop(stop.clone()));
        let renew = tokio::spawn(self.clone().renew_loop(stop));
        let _ = tokio::join!(sync, mint, renew);
    }

    // === entry sync ===

    async fn sync_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::default();
        loop {
            let started = tokio::time::Instant::now();
            let result = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                r = self.clone().sync_once() => r,
            };
            // A stream that stayed up for a while was a success, whatever ended it: the next
            // outage starts its backoff from the beginning.
            if started.elapsed() >= MAX_BACKOFF * 2 {
                backoff.reset();
            }
            if let Err(e) = result {
                self.set_unreachable(&e);
                tracing::debug!(error = %e, "entry sync stream ended");
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(backoff.next()) => {}
            }
        }
    }

    async fn sync_once(self: Arc<Self>) -> Result<(), ManagerError> {
        let mut client = self.client.clone();
        let mut stream = client
            .sync_entries(SyncEntriesRequest {})
            .await?
            .into_inner();
        while let Some(msg) = stream.message().await? {
            self.set_reachable(true);
            self.apply_sync(msg)?;
        }
        Err(ManagerError::Server(
            "the server closed the sync stream".into(),
        ))
    }

    fn apply_sync(&self, msg: v1::SyncEntriesResponse) -> Result<(), ManagerError> {
        let current = self.snapshot();
        let mut entries = Vec::with_capacity(msg.entries.len());
        for e in msg.entries {
            let Ok(spiffe_id) = e.spiffe_id.parse::<SpiffeId>() else {
                tracing::warn!(entry = %e.id, "skipping an entry with an invalid SPIFFE ID");
                continue;
            };
            let selectors: Result<SelectorSet, _> =
                e.selectors.iter().map(|s| s.parse::<Selector>()).collect();
            let Ok(selectors) = selectors else {
                tracing::warn!(entry = %e.id, "skipping an entry with an invalid selector");
                continue;
            };
            let federates_with = e
                .federates_with
                .iter()
                .filter_map(|td| TrustDomain::new(td.strip_prefix("spiffe://").unwrap_or(td)).ok())
                .collect();
            entries.push(EntryInfo {
                id: e.id,
                spiffe_id,
                selectors,
                x509_ttl: e.x509_ttl_seconds,
                jwt_ttl: e.jwt_ttl_seconds,
                dns_names: e.dns_names,
                federates_with,
            });
        }
        let mut bundle = current.bundle.clone();
        if let Some(b) = msg.bundle
            && (b.sequence != bundle.sequence || b.x509_authorities != bundle.roots)
        {
            if b.x509_authorities.is_empty() {
                return Err(ManagerError::Server(
                    "the server sent an empty bundle".into(),
                ));
            }
            let td = TrustDomain::new(&b.trust_domain)
                .map_err(|e| ManagerError::Server(format!("bad trust domain in bundle: {e}")))?;
            let roots_changed = b.x509_authorities != bundle.roots;
            bundle = Arc::new(BundleInfo {
                trust_domain: td,
                roots: b.x509_authorities,
                jwks_json: b.jwks,
                sequence: b.sequence,
            });
            if roots_changed {
                self.store_bundle(&bundle.roots);
                let cfg =
                    client_config(&bundle.roots, &self.server_id, Some(self.node_cert.clone()))?;
                *self.tls.write().unwrap_or_else(|e| e.into_inner()) = cfg;
                tracing::info!(
                    roots = bundle.roots.len(),
                    sequence = bundle.sequence,
                    "trust bundle updated"
                );
            }
        }
        let federated = federated_bundles(&current.federated, msg.federated_bundles, &bundle);
        // Keep SVIDs only for entries that still exist with the same SPIFFE ID.
        let svids = current
            .svids
            .iter()
            .filter(|(id, svid)| {
                entries
                    .iter()
                    .any(|e| &e.id == *id && e.spiffe_id == svid.spiffe_id)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let count = entries.len();
        self.snapshot.send_replace(Arc::new(Snapshot {
            entries: Arc::new(entries),
            svids,
            bundle,
            federated,
            synced: current.synced,
        }));
        tracing::debug!(entries = count, "synced entries");
        self.first_sync_applied
            .store(true, std::sync::atomic::Ordering::Release);
        self.wake_minter.notify_one();
        Ok(())
    }

    fn store_bundle(&self, roots: &[Vec<u8>]) {
        // Federated bundles are not stored here: a node that restarts without the server has
        // no SVID for a foreign peer to check either way, and the server holds them durably.
        let text: String = roots.iter().map(|r| pem_encode("CERTIFICATE", r)).collect();
        if let Err(e) =
            agentmesh_ca::write_secret_file(&self.data_dir.join("bundle.pem"), text.as_bytes())
        {
            tracing::warn!(error = %e, "could not store the trust bundle");
        }
    }

    // === X.509-SVID minting and rotation ===

    async fn mint_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::default();
        let mut retry_at = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = self.wake_minter.notified() => {}
                () = tokio::time::sleep(ROTATION_TICK) => {}
            }
            if tokio::time::Instant::now() < retry_at {
                continue;
            }
            match self.mint_due().await {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    self.set_unreachable(&e);
                    let wait = backoff.next();
                    tracing::debug!(error = %e, retry_in = ?wait, "minting SVIDs failed");
                    retry_at = tokio::time::Instant::now() + wait;
                }
            }
        }
    }

    /// Mints SVIDs for entries that have none, whose SVID is due for rotation, or whose
    /// entry changed.
    async fn mint_due(&self) -> Result<(), ManagerError> {
        let snap = self.snapshot();
        let now = SystemTime::now();
        let eager = snap.entries.len() <= EAGER_MINT_LIMIT;
        let demanded = self
            .demanded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if !eager && snap.svids.keys().any(|id| !demanded.contains(id)) {
            // The node just crossed the limit: let go of what no workload asked for.
            self.snapshot.send_modify(|s| {
                let mut next = (**s).clone();
                next.svids.retain(|id, _| demanded.contains(id));
                *s = Arc::new(next);
            });
        }
        let due: Vec<&EntryInfo> = snap
            .entries
            .iter()
            .filter(|e| eager || demanded.contains(&e.id))
            .filter(|e| match snap.svids.get(&e.id) {
                None => true,
                Some(s) => s.rotate_at <= now || s.dns_names != e.dns_names,
            })
            .collect();
        if due.is_empty() {
            self.mark_synced();
            return Ok(());
        }
        let roots = snap.bundle.roots.clone();
        for chunk in due.chunks(MINT_BATCH) {
            let mut keys = HashMap::new();
            let mut params = Vec::with_capacity(chunk.len());
            for e in chunk {
                let key = PrivateKey::generate()?;
                params.push(X509SvidParams {
                    entry_id: e.id.clone(),
                    csr: agentmesh_ca::build_csr(&key)?,
                });
                keys.insert(e.id.clone(), key);
            }
            let mut client = self.client.clone();
            let resp = client
                .mint_x509_svids(MintX509SvidsRequest { params })
                .await?
                .into_inner();
            self.set_reachable(true);
            let mut minted = Vec::with_capacity(resp.results.len());
            for r in resp.results {
                if !r.error.is_empty() {
                    tracing::warn!(entry = %r.entry_id, error = %r.error, "the server refused an SVID");
                    continue;
                }
                let Some(key) = keys.remove(&r.entry_id) else {
                    continue;
                };
                match verify_minted(&r, &key, &roots) {
                    Ok(svid) => {
                        tracing::info!(spiffe_id = %svid.spiffe_id, serial = %svid.serial, "minted X.509-SVID");
                        minted.push(Arc::new(svid));
                    }
                    Err(e) => tracing::warn!(entry = %r.entry_id, error = %e, "discarding an SVID"),
                }
            }
            self.snapshot.send_modify(|s| {
                let mut next = (**s).clone();
                let entries = next.entries.clone();
                let live: std::collections::HashSet<&str> =
                    entries.iter().map(|e| e.id.as_str()).collect();
                for svid in minted {
                    // The entry may have gone while we were minting.
                    if live.contains(svid.entry_id.as_str()) {
                        next.svids.insert(svid.entry_id.clone(), svid);
                    }
                }
                *s = Arc::new(next);
            });
        }
        self.mark_synced();
        Ok(())
    }

    /// Ready once the first sync arrived and its SVIDs were minted.
    fn mark_synced(&self) {
        if !self
            .first_sync_applied
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return;
        }
        self.snapshot.send_if_modified(|s| {
            if s.synced {
                return false;
            }
            let mut next = (**s).clone();
            next.synced = true;
            *s = Arc::new(next);
            true
        });
    }

    // === node SVID renewal ===

    async fn renew_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::default();
        loop {
            let (renew_at, expires) = {
                let s = self.node_svid.lock().unwrap_or_else(|e| e.into_inner());
                (rotation_time(s.not_before, s.not_after), s.not_after)
            };
            let wait = renew_at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(wait) => {}
            }
            loop {
                // An expired node SVID no longer opens a connection to renew it; x509pop
                // attests afresh instead (a join token was one-time).
                let expired = SystemTime::now() >= expires;
                let result = match &self.x509pop {
                    Some(creds) if expired => self.reattest(creds).await,
                    _ => self.renew_node_svid().await,
                };
                match result {
                    Ok(()) => {
                        backoff.reset();
                        break;
                    }
                    Err(e) => {
                        let left = expires
                            .duration_since(SystemTime::now())
                            .unwrap_or_default();
                        tracing::warn!(error = %e, expires_in = ?left, "node SVID renewal failed; retrying");
                        tokio::select! {
                            _ = stop.wait_for(|s| *s) => return,
                            () = tokio::time::sleep(backoff.next()) => {}
                        }
                    }
                }
            }
        }
    }

    /// Attests again with x509pop and puts the new node SVID in force.
    async fn reattest(
        &self,
        creds: &crate::attest::X509PopCredentials,
    ) -> Result<(), ManagerError> {
        let roots = self.snapshot().bundle.roots.clone();
        let svid = crate::attest::x509pop(&self.server_addr, creds, &roots, &self.server_id)
            .await
            .map_err(|e| ManagerError::Server(e.to_string()))?;
        self.install_node_svid(svid)?;
        tracing::info!("the node SVID had expired; attested again with x509pop");
        Ok(())
    }

    /// Stores a new node SVID and presents it from the next connection on.
    fn install_node_svid(&self, svid: NodeSvid) -> Result<(), ManagerError> {
        svid.store(&self.data_dir)?;
        self.node_cert.update(&svid.credentials()?)?;
        *self.node_svid.lock().unwrap_or_else(|e| e.into_inner()) = svid;
        Ok(())
    }

    async fn renew_node_svid(&self) -> Result<(), ManagerError> {
        let key = PrivateKey::generate()?;
        let csr = agentmesh_ca::build_csr(&key)?;
        let mut client = self.client.clone();
        let resp = client
            .renew_node_svid(RenewNodeSvidRequest { csr })
            .await?
            .into_inner();
        let roots = self.snapshot().bundle.roots.clone();
        let svid = NodeSvid::from_response(resp, &key, &roots)?;
        tracing::info!(node = %svid.spiffe_id, "renewed the node SVID");
        self.install_node_svid(svid)
    }

    // === JWT-SVIDs ===

    /// A JWT-SVID for `entry` and `audience`, from the cache while it is in the first half of
    /// its life, otherwise freshly minted by the server.
    ///
    /// # Errors
    /// The server is unreachable and nothing usable is cached, or it refuses.
    pub async fn jwt_svid(
        &self,
        entry: &EntryInfo,
        audience: &[String],
    ) -> Result<String, ManagerError> {
        let mut aud = audience.to_vec();
        aud.sort();
        aud.dedup();
        let key = (entry.id.clone(), aud.join("\n"));
        let now = SystemTime::now();
        if let Some(c) = self
            .jwts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && c.refresh_at > now
        {
            return Ok(c.token.clone());
        }
        let mut client = self.client.clone();
        let minted = client
            .mint_jwt_svid(MintJwtSvidRequest {
                entry_id: entry.id.clone(),
                audience: aud,
            })
            .await;
        let resp = match minted {
            Ok(r) => {
                self.set_reachable(true);
                r.into_inner()
            }
            Err(status) => {
                if status.code() == tonic::Code::Unavailable {
                    self.set_unreachable(&crate::server_client::describe(&status));
                }
                // Better a cached token in its second half than none at all.
                if let Some(c) = self
                    .jwts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&key)
                    && c.expires_at > now
                {
                    return Ok(c.token.clone());
                }
                return Err(status.into());
            }
        };
        let expires_at = unix_time(resp.expires_at);
        let life = expires_at.duration_since(now).unwrap_or_default();
        let mut jwts = self.jwts.lock().unwrap_or_else(|e| e.into_inner());
        jwts.retain(|_, c| c.expires_at > now);
        jwts.insert(
            key,
            CachedJwt {
                token: resp.token.clone(),
                refresh_at: now + life / 2,
                expires_at,
            },
        );
        Ok(resp.token)
    }
}

fn verify_minted(
    r: &v1::X509SvidResult,
    key: &PrivateKey,
    roots: &[Vec<u8>],
) -> Result<CachedSvid, ManagerError> {
    let spiffe_id = agentmesh_tls::verify_chain(&r.cert_chain, roots, SystemTime::now())?;
    if spiffe_id.to_string() != r.spiffe_id {
        return Err(ManagerError::Server(format!(
            "asked for {}, got {spiffe_id}",
            r.spiffe_id
        )));
    }
    check_leaf_key(&r.cert_chain, key)?;
    let leaf = &r.cert_chain[0];
    let (not_before, not_after) = agentmesh_tls::cert_validity(leaf)?;
    let dns_names = leaf_dns_names(leaf);
    Ok(CachedSvid {
        entry_id: r.entry_id.clone(),
        spiffe_id,
        serial: agentmesh_tls::cert_serial_hex(leaf)?,
        chain: r.cert_chain.clone(),
        key_pkcs8: key.pkcs8_der(),
        not_before,
        not_after,
        rotate_at: rotation_time(not_before, not_after),
        dns_names,
    })
}

fn leaf_dns_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests;

/// The federated bundles of a sync message, reusing the current `Arc` when nothing changed
/// (so streams keyed on it do not wake). A bundle without a usable trust domain or roots, or
/// one for the node's own trust domain, is skipped with a warning.
fn federated_bundles(
    current: &Arc<Vec<BundleInfo>>,
    sent: Vec<v1::Bundle>,
    own: &BundleInfo,
) -> Arc<Vec<BundleInfo>> {
    let mut out = Vec::with_capacity(sent.len());
    for b in sent {
        let Ok(td) = TrustDomain::new(&b.trust_domain) else {
            tracing::warn!(trust_domain = %b.trust_domain, "skipping a federated bundle with an invalid trust domain");
            continue;
        };
        if td == own.trust_domain || b.x509_authorities.is_empty() {
            tracing::warn!(trust_domain = %td, "skipping a federated bundle for the own trust domain or without roots");
            continue;
        }
        out.push(BundleInfo {
            trust_domain: td,
            roots: b.x509_authorities,
            jwks_json: b.jwks,
            sequence: b.sequence,
        });
    }
    out.sort_by(|a, b| a.trust_domain.cmp(&b.trust_domain));
    if *current.as_ref() == out {
        return current.clone();
    }
    for b in &out {
        if !current.contains(b) {
            tracing::info!(trust_domain = %b.trust_domain, roots = b.roots.len(), sequence = b.sequence, "federated bundle updated");
        }
    }
    Arc::new(out)
}
