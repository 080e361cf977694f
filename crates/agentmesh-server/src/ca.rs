//! The server's CA: loads or creates the root, the intermediate and the JWT signing key,
//! rotates them before they expire, and publishes the bundle.
//!
//! Key files live in `<data-dir>/keys/` with mode 0600 and are written before the datastore
//! row that names them, so a crash leaves at worst an unused key file, never a row without
//! its key.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentmesh_ca::{Authority, Jwks, JwtKey, PrivateKey};
use agentmesh_spiffe::TrustDomain;
use tokio::sync::watch;

use crate::datastore::{CaRow, Datastore, DatastoreError};

/// A failure of the server's CA.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaManagerError {
    /// The datastore failed.
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    /// Minting failed.
    #[error("ca: {0}")]
    Ca(#[from] agentmesh_ca::CaError),
    /// A stored certificate could not be read; same prefix as before the parsing moved out.
    #[error("ca: {0}")]
    Cert(#[from] agentmesh_tls::CertError),
    /// A key could not be generated, read or written.
    #[error("ca key: {0}")]
    Key(#[from] agentmesh_ca::KeyError),
    /// A JWT key could not be used.
    #[error("jwt key: {0}")]
    Jwt(#[from] agentmesh_ca::JwtError),
    /// A CSR could not be built or verified.
    #[error("csr: {0}")]
    Csr(#[from] agentmesh_ca::CsrError),
    /// A datastore row names a key file that is gone.
    #[error(
        "ca key file {0} is missing; restore it from backup or move the data dir aside to start a new CA"
    )]
    MissingKey(PathBuf),
    /// In upstream mode there is no intermediate from the upstream authority to sign with.
    #[error(
        "no valid intermediate from the upstream authority in the datastore; the server must reach OpenBao to get one"
    )]
    NoUpstreamIntermediate,
}

/// Lifetimes of the CA's keys.
#[derive(Debug, Clone, Copy)]
pub struct CaLifetimes {
    /// The self-signed root.
    pub root: Duration,
    /// The intermediate that signs SVIDs. Rotated at half its life.
    pub intermediate: Duration,
}

impl Default for CaLifetimes {
    fn default() -> Self {
        Self {
            root: Duration::from_secs(365 * 24 * 3600),
            intermediate: Duration::from_secs(24 * 3600),
        }
    }
}

/// What signs right now, and what verifiers should trust.
#[derive(Debug)]
pub struct CaState {
    /// The active intermediate.
    pub authority: Authority,
    /// Every root that is still valid (DER), the X.509 bundle.
    pub roots: Vec<Vec<u8>>,
    /// The active JWT signing key.
    pub jwt_key: JwtKey,
    /// Every JWT key that is still valid, the JWT bundle.
    pub jwks: Jwks,
    /// Increases whenever the bundle changes.
    pub sequence: u64,
}

/// Owns the CA's keys and their rotation.
#[derive(Debug)]
pub struct CaManager {
    trust_domain: TrustDomain,
    keys_dir: PathBuf,
    datastore: Arc<Datastore>,
    lifetimes: CaLifetimes,
    /// Whether an upstream authority (OpenBao) signs the intermediate: then there is no local
    /// root, and intermediates come only through [`CaManager::store_upstream`].
    upstream: bool,
    state: RwLock<Arc<CaState>>,
    bundle_changed: watch::Sender<u64>,
}

/// The datastore kind of a root that belongs to the upstream authority (certificate only).
const UPSTREAM_ROOT: &str = "upstream_root";

fn create_keys_dir(keys_dir: &std::path::Path) -> Result<(), CaManagerError> {
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(keys_dir)
        .map_err(|source| agentmesh_ca::KeyError::Io {
            op: "creating",
            path: keys_dir.to_owned(),
            source,
        })?;
    Ok(())
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Rotate once this fraction of the lifetime has passed.
fn past_fraction(row: &CaRow, num: i64, den: i64, now: i64) -> bool {
    now >= row.not_before + (row.not_after - row.not_before) * num / den
}

impl CaManager {
    /// Loads the CA from the datastore, creating whatever is missing or expired.
    ///
    /// # Errors
    /// Key files that cannot be read or written, or datastore failures.
    pub fn load_or_init(
        trust_domain: TrustDomain,
        keys_dir: PathBuf,
        datastore: Arc<Datastore>,
        lifetimes: CaLifetimes,
        now: SystemTime,
    ) -> Result<Self, CaManagerError> {
        Self::load(trust_domain, keys_dir, datastore, lifetimes, false, now)
    }

    /// Loads a CA whose intermediate an upstream authority signs. The datastore must already
    /// hold a valid upstream intermediate ([`CaManager::store_upstream`]); no root is created.
    ///
    /// # Errors
    /// [`CaManagerError::NoUpstreamIntermediate`], or as [`CaManager::load_or_init`].
    pub fn load_upstream(
        trust_domain: TrustDomain,
        keys_dir: PathBuf,
        datastore: Arc<Datastore>,
        lifetimes: CaLifetimes,
        now: SystemTime,
    ) -> Result<Self, CaManagerError> {
        Self::load(trust_domain, keys_dir, datastore, lifetimes, true, now)
    }

    fn load(
        trust_domain: TrustDomain,
        keys_dir: PathBuf,
        datastore: Arc<Datastore>,
        lifetimes: CaLifetimes,
        upstream: bool,
        now: SystemTime,
    ) -> Result<Self, CaManagerError> {
        let state = Self::build_state(
            &trust_domain,
            &keys_dir,
            &datastore,
            lifetimes,
            upstream,
            now,
        )?;
        let (bundle_changed, _) = watch::channel(state.sequence);
        Ok(Self {
            trust_domain,
            keys_dir,
            datastore,
            lifetimes,
            upstream,
            state: RwLock::new(Arc::new(state)),
            bundle_changed,
        })
    }

    /// The newest valid upstream intermediate's row, if any.
    fn upstream_intermediate(ds: &Datastore, now: i64) -> Result<Option<CaRow>, CaManagerError> {
        let roots: Vec<String> = ds
            .list_ca(UPSTREAM_ROOT)?
            .into_iter()
            .filter(|r| r.not_after > now)
            .map(|r| r.id)
            .collect();
        Ok(ds
            .list_ca("intermediate")?
            .into_iter()
            .rfind(|i| i.not_after > now && roots.contains(&i.parent)))
    }

    /// Whether the datastore needs a new upstream intermediate now (none, or the newest is
    /// past half of its life), and how long the newest one still has.
    ///
    /// # Errors
    /// Datastore failures.
    pub fn upstream_due(
        ds: &Datastore,
        now_t: SystemTime,
    ) -> Result<(bool, Option<Duration>), CaManagerError> {
        let now = unix(now_t);
        Ok(match Self::upstream_intermediate(ds, now)? {
            None => (true, None),
            Some(row) => (
                past_fraction(&row, 1, 2, now),
                Some(Duration::from_secs((row.not_after - now).max(0) as u64)),
            ),
        })
    }

    /// The datastore this CA keeps its rows in.
    pub fn datastore(&self) -> &Arc<Datastore> {
        &self.datastore
    }

    /// Stores an intermediate the upstream authority signed: its root(s) as bundle rows (no
    /// key: the root key never exists here), the key file (0600), then the intermediate's row.
    /// The key file is written before the row that names it, as everywhere in this module.
    ///
    /// # Errors
    /// Key file or datastore failures.
    pub fn store_upstream(
        ds: &Datastore,
        keys_dir: &std::path::Path,
        signed: &crate::upstream::SignedIntermediate,
    ) -> Result<(), CaManagerError> {
        create_keys_dir(keys_dir)?;
        let known: Vec<Vec<u8>> = ds
            .list_ca(UPSTREAM_ROOT)?
            .into_iter()
            .map(|r| r.cert_der)
            .collect();
        let mut parent = String::new();
        for root in &signed.roots {
            let serial = agentmesh_tls::cert_serial_hex(root)?;
            if parent.is_empty() {
                parent = serial.clone();
            }
            if known.contains(root) {
                continue;
            }
            let (not_before, not_after) = agentmesh_tls::cert_validity(root)?;
            ds.add_ca(&CaRow {
                kind: UPSTREAM_ROOT.into(),
                id: serial.clone(),
                cert_der: root.clone(),
                key_file: String::new(),
                parent: String::new(),
                not_before: unix(not_before),
                not_after: unix(not_after),
            })?;
            tracing::info!(serial = %serial, "the upstream authority's root joined the trust bundle");
        }
        let serial = agentmesh_tls::cert_serial_hex(&signed.cert_der)?;
        let (_, not_after) = agentmesh_tls::cert_validity(&signed.cert_der)?;
        let row = CaRow {
            kind: "intermediate".into(),
            id: serial.clone(),
            // The upstream's own intermediates ride along after ours, so every minted chain
            // reaches the bundle root.
            cert_der: [vec![signed.cert_der.clone()], signed.chain_tail.clone()]
                .concat()
                .concat(),
            key_file: format!("intermediate-{serial}.key"),
            parent,
            // OpenBao backdates notBefore; the rotation clock starts when we got it.
            not_before: unix(signed.signed_at),
            not_after: unix(not_after),
        };
        agentmesh_ca::write_secret_file(&keys_dir.join(&row.key_file), &signed.key.pkcs8_der())?;
        ds.add_ca(&row)?;
        tracing::info!(serial = %serial, root = %row.parent, "activated a new intermediate CA signed by the upstream authority");
        Ok(())
    }

    /// The current signing state.
    pub fn current(&self) -> Arc<CaState> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Notified with the new sequence whenever the bundle changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.bundle_changed.subscribe()
    }

    /// The trust domain the CA signs for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Rotates whatever is due; returns whether anything changed.
    ///
    /// # Errors
    /// As [`CaManager::load_or_init`]. On error the previous state stays in force, so SVIDs
    /// keep being issued from the current intermediate.
    pub fn rotate_if_due(&self, now: SystemTime) -> Result<bool, CaManagerError> {
        let before = self.current();
        let state = Self::build_state(
            &self.trust_domain,
            &self.keys_dir,
            &self.datastore,
            self.lifetimes,
            self.upstream,
            now,
        )?;
        let changed = state.authority.cert_der() != before.authority.cert_der()
            || state.sequence != before.sequence
            || state.jwt_key.kid() != before.jwt_key.kid();
        if changed {
            let seq = state.sequence;
            *self.state.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(state);
            if seq != before.sequence {
                tracing::info!(sequence = seq, "trust bundle changed");
            }
            self.bundle_changed.send_replace(seq);
        }
        Ok(changed)
    }

    fn build_state(
        td: &TrustDomain,
        keys_dir: &std::path::Path,
        ds: &Datastore,
        lifetimes: CaLifetimes,
        upstream: bool,
        now_t: SystemTime,
    ) -> Result<CaState, CaManagerError> {
        let now = unix(now_t);
        create_keys_dir(keys_dir)?;
        let valid = |rows: Vec<CaRow>| -> Vec<CaRow> {
            rows.into_iter().filter(|r| r.not_after > now).collect()
        };
        let (roots, authority) = if upstream {
            // The upstream's roots are the bundle; signing keys for them do not exist here.
            let roots = valid(ds.list_ca(UPSTREAM_ROOT)?);
            let row = Self::upstream_intermediate(ds, now)?
                .ok_or(CaManagerError::NoUpstreamIntermediate)?;
            let mut certs = agentmesh_tls::split_der_certs(&row.cert_der)?;
            let tail = certs.split_off(1.min(certs.len()));
            let cert = certs.pop().ok_or(CaManagerError::NoUpstreamIntermediate)?;
            let authority =
                Authority::new(td, cert, Self::load_key(keys_dir, &row)?)?.with_chain_tail(tail);
            (roots, authority)
        } else {
            Self::build_local(td, keys_dir, ds, lifetimes, now_t)?
        };
        Self::finish_state(keys_dir, ds, lifetimes, now_t, roots, authority)
    }

    /// The self-signed root and the intermediate it signs, rotated as the module says.
    fn build_local(
        td: &TrustDomain,
        keys_dir: &std::path::Path,
        ds: &Datastore,
        lifetimes: CaLifetimes,
        now_t: SystemTime,
    ) -> Result<(Vec<CaRow>, Authority), CaManagerError> {
        let now = unix(now_t);

        // --- roots: prepare the next one at 2/3 of the newest root's life -------------------
        let valid = |rows: Vec<CaRow>| -> Vec<CaRow> {
            rows.into_iter().filter(|r| r.not_after > now).collect()
        };
        let mut roots = valid(ds.list_ca("root")?);
        if roots.last().is_none_or(|r| past_fraction(r, 2, 3, now)) {
            let key = PrivateKey::generate()?;
            let cert = agentmesh_ca::new_root(td, &key, lifetimes.root, now_t)?;
            let row = Self::store(ds, keys_dir, "root", &cert, key.pkcs8_der(), "")?;
            tracing::info!(serial = %row.id, "created a new root CA");
            roots.push(row);
        }
        // Sign with the oldest root that is not yet in its last sixth, so a prepared root has
        // been in every bundle for a while before anything chains to it.
        let active_root = roots
            .iter()
            .find(|r| !past_fraction(r, 5, 6, now))
            .or(roots.last())
            .ok_or_else(|| CaManagerError::MissingKey(keys_dir.to_owned()))?
            .clone();

        // --- intermediate: rotate at half its life, or when the active root changed --------
        let intermediates = valid(ds.list_ca("intermediate")?);
        let current = intermediates
            .last()
            .filter(|i| i.parent == active_root.id && !past_fraction(i, 1, 2, now))
            .cloned();
        let intermediate = match current {
            Some(i) => i,
            None => {
                let root_key = Self::load_key(keys_dir, &active_root)?;
                let key = PrivateKey::generate()?;
                let cert = agentmesh_ca::new_intermediate(
                    td,
                    &key,
                    lifetimes.intermediate,
                    now_t,
                    &active_root.cert_der,
                    &root_key,
                )?;
                let row = Self::store(
                    ds,
                    keys_dir,
                    "intermediate",
                    &cert,
                    key.pkcs8_der(),
                    &active_root.id,
                )?;
                tracing::info!(serial = %row.id, root = %active_root.id, "activated a new intermediate CA");
                row
            }
        };
        let authority = Authority::new(
            td,
            intermediate.cert_der.clone(),
            Self::load_key(keys_dir, &intermediate)?,
        )?;
        Ok((roots, authority))
    }

    /// The JWT keys (same rhythm in both modes) and the bundle sequence.
    fn finish_state(
        keys_dir: &std::path::Path,
        ds: &Datastore,
        lifetimes: CaLifetimes,
        now_t: SystemTime,
        roots: Vec<CaRow>,
        authority: Authority,
    ) -> Result<CaState, CaManagerError> {
        let now = unix(now_t);
        let valid = |rows: Vec<CaRow>| -> Vec<CaRow> {
            rows.into_iter().filter(|r| r.not_after > now).collect()
        };

        // --- JWT keys: same rhythm as the intermediate; published until they expire -------
        let mut jwt_rows = valid(ds.list_ca("jwt")?);
        if jwt_rows.last().is_none_or(|k| past_fraction(k, 1, 2, now)) {
            let key = JwtKey::generate()?;
            let row = CaRow {
                kind: "jwt".into(),
                id: key.kid().to_owned(),
                cert_der: Vec::new(),
                key_file: format!("jwt-{}.key", key.kid()),
                parent: String::new(),
                not_before: now,
                not_after: now + lifetimes.intermediate.as_secs() as i64,
            };
            agentmesh_ca::write_secret_file(&keys_dir.join(&row.key_file), &key.pkcs8_der())?;
            ds.add_ca(&row)?;
            tracing::info!(kid = %row.id, "activated a new JWT signing key");
            jwt_rows.push(row);
        }
        let mut jwks = Jwks::new(Vec::new());
        let mut jwt_key = None;
        for row in &jwt_rows {
            let der = Self::read_key_file(keys_dir, row)?;
            let key = JwtKey::from_pkcs8_der(row.id.clone(), &der)?;
            jwks.keys.push(key.public_jwk());
            jwt_key = Some(key);
        }
        let jwt_key = jwt_key.ok_or_else(|| CaManagerError::MissingKey(keys_dir.to_owned()))?;

        // Rows are never deleted, so this count only grows, and it grows exactly when a root
        // or a JWT key is added: a bundle sequence number for free.
        let sequence = (ds.list_ca("root")?.len()
            + ds.list_ca(UPSTREAM_ROOT)?.len()
            + ds.list_ca("jwt")?.len()) as u64;
        Ok(CaState {
            authority,
            roots: roots.into_iter().map(|r| r.cert_der).collect(),
            jwt_key,
            jwks,
            sequence,
        })
    }

    fn store(
        ds: &Datastore,
        keys_dir: &std::path::Path,
        kind: &str,
        cert: &[u8],
        key_der: Vec<u8>,
        parent: &str,
    ) -> Result<CaRow, CaManagerError> {
        let serial = agentmesh_tls::cert_serial_hex(cert)?;
        let (not_before, not_after) = agentmesh_tls::cert_validity(cert)?;
        let row = CaRow {
            kind: kind.into(),
            id: serial.clone(),
            cert_der: cert.to_vec(),
            key_file: format!("{kind}-{serial}.key"),
            parent: parent.into(),
            not_before: unix(not_before),
            not_after: unix(not_after),
        };
        agentmesh_ca::write_secret_file(&keys_dir.join(&row.key_file), &key_der)?;
        ds.add_ca(&row)?;
        Ok(row)
    }

    fn read_key_file(keys_dir: &std::path::Path, row: &CaRow) -> Result<Vec<u8>, CaManagerError> {
        let path = keys_dir.join(&row.key_file);
        if !path.exists() {
            return Err(CaManagerError::MissingKey(path));
        }
        Ok(agentmesh_ca::read_secret_file(&path)?)
    }

    fn load_key(keys_dir: &std::path::Path, row: &CaRow) -> Result<PrivateKey, CaManagerError> {
        let der = Self::read_key_file(keys_dir, row)?;
        Ok(PrivateKey::from_pkcs8_der(&der)?)
    }
}

/// Unix seconds of `t`.
pub(crate) fn unix_secs(t: SystemTime) -> i64 {
    unix(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(dir: &std::path::Path, lifetimes: CaLifetimes, now: SystemTime) -> CaManager {
        let ds = Arc::new(Datastore::open(&dir.join("db")).unwrap());
        CaManager::load_or_init(
            TrustDomain::new("example.org").unwrap(),
            dir.join("keys"),
            ds,
            lifetimes,
            now,
        )
        .unwrap()
    }

    #[test]
    fn intermediate_rotates_at_half_life_and_old_svids_still_verify() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = SystemTime::now();
        let lifetimes = CaLifetimes {
            root: Duration::from_secs(3600),
            intermediate: Duration::from_secs(100),
        };
        let ca = manager(dir.path(), lifetimes, t0);
        let first = ca.current();
        let key = PrivateKey::generate().unwrap();
        let pk = agentmesh_ca::verify_csr(&agentmesh_ca::build_csr(&key).unwrap()).unwrap();
        let id = "spiffe://example.org/w".parse().unwrap();
        let old_svid = first
            .authority
            .mint_x509_svid(&id, &pk, Duration::from_secs(60), &[], t0)
            .unwrap();

        assert!(!ca.rotate_if_due(t0 + Duration::from_secs(10)).unwrap());
        assert!(ca.rotate_if_due(t0 + Duration::from_secs(51)).unwrap());
        let second = ca.current();
        assert_ne!(first.authority.cert_der(), second.authority.cert_der());
        // The roots did not change, so nothing that verifies SVIDs needs an update ...
        assert_eq!(first.roots, second.roots);
        // ... and an SVID from the old intermediate still verifies while it is valid.
        let at = t0 + Duration::from_secs(52);
        agentmesh_tls::verify_chain(&old_svid.chain, &second.roots, at).unwrap();

        // A restart loads the same state instead of making a new CA.
        drop(ca);
        let again = manager(dir.path(), lifetimes, t0 + Duration::from_secs(52));
        assert_eq!(
            again.current().authority.cert_der(),
            second.authority.cert_der()
        );
    }

    /// Mints a leaf from the current intermediate and says which of `roots` it verifies to.
    fn chains_to(ca: &CaManager, roots: &[Vec<u8>], at: SystemTime) -> bool {
        let key = PrivateKey::generate().unwrap();
        let pk = agentmesh_ca::verify_csr(&agentmesh_ca::build_csr(&key).unwrap()).unwrap();
        let id = "spiffe://example.org/w".parse().unwrap();
        let svid = ca
            .current()
            .authority
            .mint_x509_svid(&id, &pk, Duration::from_secs(5), &[], at)
            .unwrap();
        agentmesh_tls::verify_chain(&svid.chain, roots, at).is_ok()
    }

    #[test]
    fn a_new_root_is_published_before_it_signs() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = SystemTime::now();
        let lifetimes = CaLifetimes {
            root: Duration::from_secs(600),
            intermediate: Duration::from_secs(60),
        };
        let ca = manager(dir.path(), lifetimes, t0);
        let seq = ca.current().sequence;
        // At 2/3 of the root's life the next root joins the bundle, but does not sign yet.
        let at = t0 + Duration::from_secs(401);
        ca.rotate_if_due(at).unwrap();
        let s = ca.current();
        assert_eq!(s.roots.len(), 2);
        assert!(s.sequence > seq);
        assert!(
            chains_to(&ca, &s.roots[..1], at),
            "still signs under the old root"
        );
        assert!(!chains_to(&ca, &s.roots[1..], at));
        // In the old root's last sixth, intermediates come from the new root.
        let at = t0 + Duration::from_secs(510);
        ca.rotate_if_due(at).unwrap();
        let s = ca.current();
        assert!(
            chains_to(&ca, &s.roots[1..], at),
            "signs under the new root"
        );
        // Once the old root expires it leaves the bundle.
        let at = t0 + Duration::from_secs(601);
        ca.rotate_if_due(at).unwrap();
        assert_eq!(ca.current().roots.len(), 1);
    }

    /// A stand-in for what OpenBao returns: an intermediate for our key, signed by a root whose
    /// key only the caller holds (and drops).
    fn upstream_signed(
        td: &TrustDomain,
        root: &[u8],
        root_key: &PrivateKey,
        ttl: Duration,
        at: SystemTime,
    ) -> crate::upstream::SignedIntermediate {
        let key = PrivateKey::generate().unwrap();
        let cert = agentmesh_ca::new_intermediate(td, &key, ttl, at, root, root_key).unwrap();
        crate::upstream::SignedIntermediate {
            key,
            cert_der: cert,
            chain_tail: Vec::new(),
            roots: vec![root.to_vec()],
            signed_at: at,
        }
    }

    #[test]
    fn an_upstream_intermediate_signs_rotates_at_half_life_and_no_root_key_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let t0 = SystemTime::now();
        let root_key = PrivateKey::generate().unwrap();
        let root = agentmesh_ca::new_root(&td, &root_key, Duration::from_secs(3600), t0).unwrap();
        let ds = Arc::new(Datastore::open(&dir.path().join("db")).unwrap());
        let keys = dir.path().join("keys");
        let lifetimes = CaLifetimes {
            root: Duration::from_secs(7200),
            intermediate: Duration::from_secs(100),
        };
        // Nothing stored yet: the CA cannot load, and signing is due.
        assert!(matches!(
            CaManager::load_upstream(td.clone(), keys.clone(), ds.clone(), lifetimes, t0),
            Err(CaManagerError::NoUpstreamIntermediate)
        ));
        assert_eq!(CaManager::upstream_due(&ds, t0).unwrap(), (true, None));

        let first = upstream_signed(&td, &root, &root_key, lifetimes.intermediate, t0);
        CaManager::store_upstream(&ds, &keys, &first).unwrap();
        let ca =
            CaManager::load_upstream(td.clone(), keys.clone(), ds.clone(), lifetimes, t0).unwrap();
        assert_eq!(
            ca.current().roots,
            vec![root.clone()],
            "the bundle is the upstream root"
        );
        assert!(chains_to(&ca, std::slice::from_ref(&root), t0));
        let (due, left) = CaManager::upstream_due(&ds, t0 + Duration::from_secs(10)).unwrap();
        assert!(!due);
        assert_eq!(left, Some(Duration::from_secs(90)));
        assert!(
            CaManager::upstream_due(&ds, t0 + Duration::from_secs(51))
                .unwrap()
                .0
        );

        // The next intermediate, same root: the bundle stays, signing moves to it.
        let at = t0 + Duration::from_secs(51);
        let second = upstream_signed(&td, &root, &root_key, lifetimes.intermediate, at);
        CaManager::store_upstream(&ds, &keys, &second).unwrap();
        assert!(ca.rotate_if_due(at).unwrap());
        assert_eq!(
            ca.current().authority.cert_der(),
            second.cert_der.as_slice()
        );
        assert_eq!(ca.current().roots, vec![root.clone()]);
        assert!(!CaManager::upstream_due(&ds, at).unwrap().0);

        // Only intermediate and JWT keys are on disk, none of them the root's.
        let root_pub = root_key.public_key_der();
        for f in std::fs::read_dir(&keys).unwrap() {
            let f = f.unwrap();
            let name = f.file_name().to_string_lossy().into_owned();
            assert!(
                name.starts_with("intermediate-") || name.starts_with("jwt-"),
                "{name}"
            );
            if name.starts_with("intermediate-") {
                let k = agentmesh_ca::read_secret_file(&f.path()).unwrap();
                let k = PrivateKey::from_pkcs8_der(&k).unwrap();
                assert_ne!(k.public_key_der(), root_pub);
            }
        }
    }

    #[test]
    fn key_files_are_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        manager(dir.path(), CaLifetimes::default(), SystemTime::now());
        let mut n = 0;
        for f in std::fs::read_dir(dir.path().join("keys")).unwrap() {
            let mode = f.unwrap().metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            n += 1;
        }
        assert_eq!(n, 3, "root, intermediate and JWT key");
    }
}
