//! What a server sets up for itself at start, so a deployment with no shell and no operator
//! (a Compose project of `FROM scratch` images) comes up on its own:
//!
//! - **entries and intentions** declared in the config file, created when missing, as
//!   Consul's `config_entries.bootstrap` does. One that already exists (the same entry, or an
//!   intention for the same pair) is left as it is: an operator's change made since with the
//!   CLI survives a restart.
//! - **the trust bundle** written to a file for nodes to trust the server by, and rewritten
//!   whenever the CA rotates, as SPIRE's `k8sbundle` notifier keeps a ConfigMap current.
//! - **one join token** written to a file (0600) at every start, for a node that shares the
//!   file's volume and has not attested yet.
//!
//! Everything declared is checked before anything is written: a bad entry or intention stops
//! the server with one error naming it, and the datastore is left as it was.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentmesh_policy::IntentionSpec;

use crate::ca::unix_secs;
use crate::datastore::{DatastoreError, EntryRow, IntentionRow};
use crate::registration::{EntryError, EntryLimits, validate_entry, validate_federates_with};
use crate::state::{ServerState, new_entry_id, new_join_token, token_hash};

/// `[bootstrap]` of the server's config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootstrapConfig {
    /// Where to keep the current trust bundle (PEM roots, 0644).
    pub bundle_file: Option<PathBuf>,
    /// Where to write a fresh one-time join token (0600) at every start.
    pub join_token_file: Option<PathBuf>,
    /// Entries to create when missing.
    pub entries: Vec<BootstrapEntry>,
    /// Intentions to create when their pair has none, each as the JSON model of
    /// `agentmesh intention create --file`.
    pub intentions: Vec<String>,
}

/// One declared entry, with the fields of `agentmesh entry create`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootstrapEntry {
    /// The SPIFFE ID to issue.
    pub spiffe_id: String,
    /// The only node that serves it; empty for every node.
    pub parent_id: String,
    /// `TYPE:KEY:VALUE` selectors, all of which must match.
    pub selectors: Vec<String>,
    /// X.509-SVID lifetime; `None` for the server's default.
    pub x509_ttl: Option<Duration>,
    /// JWT-SVID lifetime; `None` for the server's default.
    pub jwt_ttl: Option<Duration>,
    /// Extra DNS SANs.
    pub dns_names: Vec<String>,
    /// Foreign trust domains whose bundles the entry's workloads get, as
    /// `agentmesh entry create --federates-with`.
    pub federates_with: Vec<String>,
}

/// Why the server's bootstrap failed. The server does not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// A declared entry is invalid.
    #[error("bootstrap.entry[{index}] ({spiffe_id}): {source}")]
    Entry {
        /// Its position in the config, from 0.
        index: usize,
        /// Its SPIFFE ID as written.
        spiffe_id: String,
        /// What is wrong with it.
        source: EntryError,
    },
    /// A declared intention is invalid.
    #[error("bootstrap.intention[{index}]: {reason}")]
    Intention {
        /// Its position in the config, from 0.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The datastore failed.
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Checks every declared entry and intention, then creates the missing ones, then writes the
/// bundle and join token files.
///
/// # Errors
/// The first invalid declaration, before anything is created; or a datastore or file error.
pub fn apply(
    state: &ServerState,
    cfg: &BootstrapConfig,
    limits: EntryLimits,
) -> Result<(), BootstrapError> {
    let td = state.trust_domain();
    let mut entries = Vec::with_capacity(cfg.entries.len());
    for (index, e) in cfg.entries.iter().enumerate() {
        let secs =
            |d: Option<Duration>| d.map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let valid = validate_entry(
            td,
            limits,
            &e.spiffe_id,
            &e.parent_id,
            &e.selectors,
            secs(e.x509_ttl),
            secs(e.jwt_ttl),
            &e.dns_names,
        )
        .map_err(|source| BootstrapError::Entry {
            index,
            spiffe_id: e.spiffe_id.clone(),
            source,
        })?;
        let federates_with = validate_federates_with(td, &e.federates_with).map_err(|source| {
            BootstrapError::Entry {
                index,
                spiffe_id: e.spiffe_id.clone(),
                source,
            }
        })?;
        entries.push(EntryRow {
            id: new_entry_id(),
            spiffe_id: valid.spiffe_id.to_string(),
            parent_id: valid.parent_id.map(|p| p.to_string()).unwrap_or_default(),
            selectors: valid.selectors.iter().map(ToString::to_string).collect(),
            x509_ttl: valid.x509_ttl,
            jwt_ttl: valid.jwt_ttl,
            dns_names: valid.dns_names,
            created_at: unix_secs(SystemTime::now()),
            federates_with,
        });
    }
    let mut intentions = Vec::with_capacity(cfg.intentions.len());
    for (index, json) in cfg.intentions.iter().enumerate() {
        let spec = IntentionSpec::from_json(json)
            .and_then(|s| s.normalized(td))
            .map_err(|e| BootstrapError::Intention {
                index,
                reason: e.to_string(),
            })?;
        intentions.push(IntentionRow {
            id: new_entry_id(),
            source: spec.source.clone(),
            destination: spec.destination.clone(),
            spec_json: spec.to_json(),
            created_at: unix_secs(SystemTime::now()),
        });
    }

    let (mut created, mut kept) = (0, 0);
    for row in &entries {
        match state.datastore.create_entry(row) {
            Ok(()) => created += 1,
            Err(DatastoreError::DuplicateEntry(_)) => kept += 1,
            Err(e) => return Err(e.into()),
        }
    }
    for row in &intentions {
        match state.datastore.create_intention(row) {
            Ok(()) => created += 1,
            Err(DatastoreError::DuplicateIntention { existing, .. }) => {
                kept += 1;
                tracing::info!(
                    source = %row.source,
                    destination = %row.destination,
                    intention = %existing,
                    "bootstrap: the pair already has an intention; kept it"
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    if created > 0 {
        state.notify_entries_changed();
        state.notify_policy_changed();
    }
    if !entries.is_empty() || !intentions.is_empty() {
        tracing::info!(created, kept, "bootstrap: declared entries and intentions");
    }

    if let Some(path) = &cfg.bundle_file {
        write_bundle(state, path)?;
    }
    if let Some(path) = &cfg.join_token_file {
        let token = new_join_token();
        let hash = token_hash(&token);
        let expires_at = unix_secs(SystemTime::now() + state.settings.join_token_ttl);
        state.datastore.add_join_token(&hash, expires_at)?;
        agentmesh_ca::write_secret_file(path, token.as_bytes()).map_err(|e| {
            BootstrapError::Write {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            }
        })?;
        tracing::info!(token = &hash[..12], expires_at, file = %path.display(), "bootstrap: wrote a join token");
    }
    Ok(())
}

/// Keeps `path` equal to the current bundle while the server runs.
pub async fn follow_bundle(
    state: Arc<ServerState>,
    path: PathBuf,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut bundle_rx = state.ca.subscribe();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            changed = bundle_rx.changed() => if changed.is_err() { return },
        }
        if let Err(e) = write_bundle(&state, &path) {
            tracing::error!(error = %e, "bootstrap: the bundle file is stale");
        }
    }
}

/// The bundle's roots as PEM, written whole through a temp file and a rename, so a reader
/// never sees half a bundle.
fn write_bundle(state: &ServerState, path: &Path) -> Result<(), BootstrapError> {
    let pem: String = state
        .bundle()
        .x509_authorities
        .iter()
        .map(|der| agentmesh_ca::pem_encode("CERTIFICATE", der))
        .collect();
    write_public_file(path, pem.as_bytes()).map_err(|source| BootstrapError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn write_public_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let write = || {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    let result = write();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
