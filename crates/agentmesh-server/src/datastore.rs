//! The server's durable state in SQLite (WAL, `synchronous=FULL`): registration entries, join
//! tokens (hashed), attested nodes and their attestation selectors, CA metadata, intentions and the service catalog.
//!
//! Every write is one transaction, so a `kill -9` at any point leaves either the whole write or
//! none of it, and an acknowledged write is on disk before the caller hears back.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

/// A failure of the datastore.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatastoreError {
    /// SQLite refused or failed.
    #[error("datastore: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// An entry with the same SPIFFE ID, parent and selectors exists.
    #[error("an entry with the same SPIFFE ID, parent ID and selectors already exists: {0}")]
    DuplicateEntry(String),
    /// An intention for the same source and destination exists.
    #[error(
        "an intention from {source_id} to {destination} already exists (id {existing}); delete it first to replace it"
    )]
    DuplicateIntention {
        /// Normalized source.
        source_id: String,
        /// Normalized destination.
        destination: String,
        /// The existing intention's id.
        existing: String,
    },
    /// A stored row did not decode.
    #[error("datastore row is corrupt: {0}")]
    Corrupt(String),
    /// The database file could not be created owner-only.
    #[error("cannot create {0} with mode 0600: {1}")]
    Create(std::path::PathBuf, std::io::Error),
}

/// A registration entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRow {
    /// Random UUID.
    pub id: String,
    /// The SPIFFE ID the entry grants.
    pub spiffe_id: String,
    /// The node that serves it, or empty for every node.
    pub parent_id: String,
    /// Sorted `type:key:value` strings.
    pub selectors: Vec<String>,
    /// Seconds; 0 is the server's default.
    pub x509_ttl: i64,
    /// Seconds; 0 is the server's default.
    pub jwt_ttl: i64,
    /// Extra DNS SANs.
    pub dns_names: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Federated trust domains (`spiffe://other.td`) whose bundles the entry's SVID
    /// responses carry.
    pub federates_with: Vec<String>,
}

/// A foreign trust domain's bundle, as last fetched or set by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedBundleRow {
    /// The trust domain's name (`other.td`).
    pub trust_domain: String,
    /// The X.509 roots, DER.
    pub x509_authorities: Vec<Vec<u8>>,
    /// The JWT keys as a JWKS document.
    pub jwks: String,
    /// The publisher's `spiffe_sequence` (0 when it set none).
    pub sequence: u64,
    /// The publisher's `spiffe_refresh_hint` in seconds (0 when it set none).
    pub refresh_hint: i64,
    /// `manual`, or the bundle endpoint URL.
    pub source: String,
    /// Unix seconds of the last change.
    pub updated_at: i64,
}

/// One CA key and certificate generation, as recorded in the datastore. The key itself is in
/// its own 0600 file; the row names the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaRow {
    /// `root`, `intermediate` or `jwt`.
    pub kind: String,
    /// The certificate serial (hex), or the JWT key id.
    pub id: String,
    /// The certificate (empty for JWT keys).
    pub cert_der: Vec<u8>,
    /// File name of the key inside the keys directory.
    pub key_file: String,
    /// For an intermediate, the id (serial) of the root that signed it; empty otherwise.
    pub parent: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
}

/// An attested node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// The node's SPIFFE ID.
    pub spiffe_id: String,
    /// Serial of the node SVID most recently issued.
    pub serial: String,
    /// When that SVID expires (unix seconds).
    pub expires_at: i64,
    /// When the node first attested (unix seconds).
    pub attested_at: i64,
}

/// An intention as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentionRow {
    /// Random UUID.
    pub id: String,
    /// Normalized source: a SPIFFE ID or `*`.
    pub source: String,
    /// Normalized destination: a SPIFFE ID or `*`.
    pub destination: String,
    /// The normalized IntentionSpec JSON.
    pub spec_json: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// A service catalog entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRow {
    /// The service's SPIFFE ID.
    pub spiffe_id: String,
    /// `host:port` of its proxy's mTLS listener.
    pub address: String,
    /// The node that registered it.
    pub node_id: String,
    /// Unix seconds.
    pub updated_at: i64,
}

/// The outcome of redeeming a join token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRedemption {
    /// The token was valid and is now spent.
    Redeemed,
    /// No token with that hash exists (never issued, or forged).
    Unknown,
    /// The token was already used once.
    AlreadyUsed,
    /// The token's TTL has passed.
    Expired,
}

/// The SQLite datastore.
#[derive(Debug)]
pub struct Datastore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entries (
    id TEXT PRIMARY KEY,
    spiffe_id TEXT NOT NULL,
    parent_id TEXT NOT NULL,
    selectors TEXT NOT NULL,
    x509_ttl INTEGER NOT NULL,
    jwt_ttl INTEGER NOT NULL,
    dns_names TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (spiffe_id, parent_id, selectors)
);
CREATE INDEX IF NOT EXISTS entries_parent ON entries (parent_id);
CREATE TABLE IF NOT EXISTS join_tokens (
    hash TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
);
CREATE TABLE IF NOT EXISTS nodes (
    spiffe_id TEXT PRIMARY KEY,
    serial TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    attested_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS node_selectors (
    spiffe_id TEXT NOT NULL,
    selector TEXT NOT NULL,
    PRIMARY KEY (spiffe_id, selector)
);
CREATE TABLE IF NOT EXISTS intentions (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (source, destination)
);
CREATE TABLE IF NOT EXISTS services (
    spiffe_id TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    node_id TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ca (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    cert_der BLOB NOT NULL,
    key_file TEXT NOT NULL,
    parent TEXT NOT NULL,
    not_before INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE IF NOT EXISTS federated_bundles (
    trust_domain TEXT PRIMARY KEY,
    x509_authorities BLOB NOT NULL,
    jwks TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    refresh_hint INTEGER NOT NULL,
    source TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
";

impl Datastore {
    /// Opens (creating if needed) the database at `path`.
    ///
    /// # Errors
    /// The file cannot be opened, is not a database, or the schema cannot be created.
    pub fn open(path: &Path) -> Result<Self, DatastoreError> {
        // Create the file owner-only before SQLite does (it would use the umask); SQLite gives
        // its -wal and -shm files the database file's mode.
        std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new().create(true).append(true),
            0o600,
        )
        .open(path)
        .map_err(|e| DatastoreError::Create(path.to_owned(), e))?;
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: an acknowledged write survives power loss too, not only a process crash.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        // Data dirs from before federation have no federates_with column; add it (an
        // empty list) rather than refusing them.
        let has_federates_with: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('entries') WHERE name = 'federates_with'")?
            .exists([])?;
        if !has_federates_with {
            conn.execute_batch(
                "ALTER TABLE entries ADD COLUMN federates_with TEXT NOT NULL DEFAULT ''",
            )?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back), so a poisoned lock is still safe to use.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    // === entries ===

    /// Stores a new entry.
    ///
    /// # Errors
    /// [`DatastoreError::DuplicateEntry`] with the existing entry's id when one has the same
    /// SPIFFE ID, parent and selectors.
    pub fn create_entry(&self, e: &EntryRow) -> Result<(), DatastoreError> {
        let conn = self.conn();
        let selectors = e.selectors.join("\n");
        let res = conn.execute(
            "INSERT INTO entries (id, spiffe_id, parent_id, selectors, x509_ttl, jwt_ttl, dns_names, created_at, federates_with)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                e.id,
                e.spiffe_id,
                e.parent_id,
                selectors,
                e.x509_ttl,
                e.jwt_ttl,
                e.dns_names.join("\n"),
                e.created_at,
                e.federates_with.join("\n")
            ],
        );
        match res {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                let existing: Option<String> = conn
                    .query_row(
                        "SELECT id FROM entries WHERE spiffe_id = ?1 AND parent_id = ?2 AND selectors = ?3",
                        params![e.spiffe_id, e.parent_id, selectors],
                        |r| r.get(0),
                    )
                    .optional()?;
                Err(DatastoreError::DuplicateEntry(existing.unwrap_or_default()))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Every entry, oldest first.
    ///
    /// # Errors
    /// SQLite failures.
    pub fn list_entries(&self) -> Result<Vec<EntryRow>, DatastoreError> {
        self.query_entries("SELECT * FROM entries ORDER BY created_at, id", params![])
    }

    /// The entries whose parent is one of `parents` (a node and the node aliases it
    /// matches), and those with no parent, which every node serves.
    ///
    /// # Errors
    /// SQLite failures.
    pub fn entries_for_parents(&self, parents: &[String]) -> Result<Vec<EntryRow>, DatastoreError> {
        let marks = vec!["?"; parents.len()].join(", ");
        self.query_entries(
            &format!(
                "SELECT * FROM entries WHERE parent_id = '' OR parent_id IN ({marks}) ORDER BY created_at, id"
            ),
            rusqlite::params_from_iter(parents),
        )
    }

    /// The entries whose parent is exactly `parent` (the node aliases, under the server's
    /// own ID).
    ///
    /// # Errors
    /// SQLite failures.
    pub fn entries_with_parent(&self, parent: &str) -> Result<Vec<EntryRow>, DatastoreError> {
        self.query_entries(
            "SELECT * FROM entries WHERE parent_id = ?1 ORDER BY created_at, id",
            params![parent],
        )
    }

    /// One entry by id.
    ///
    /// # Errors
    /// SQLite failures.
    pub fn get_entry(&self, id: &str) -> Result<Option<EntryRow>, DatastoreError> {
        Ok(self
            .query_entries("SELECT * FROM entries WHERE id = ?1", params![id])?
            .pop())
    }

    /// Deletes an entry; returns whether it existed.
    ///
    /// # Errors
    /// SQLite failures.
    pub fn delete_entry(&self, id: &str) -> Result<bool, DatastoreError> {
        Ok(self
            .conn()
            .execute("DELETE FROM entries WHERE id = ?1", params![id])?
            > 0)
    }

    // === intentions ===

    /// Stores a new intention.
    ///
    /// # Errors
    /// [`DatastoreError::DuplicateIntention`] when one with the same source and destination
    /// exists.
    pub fn create_intention(&self, row: &IntentionRow) -> Result<(), DatastoreError> {
        let conn = self.conn();
        let res = conn.execute(
            "INSERT INTO intentions (id, source, destination, spec, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![row.id, row.source, row.destination, row.spec_json, row.created_at],
        );
        match res {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                let existing: Option<String> = conn
                    .query_row(
                        "SELECT id FROM intentions WHERE source = ?1 AND destination = ?2",
                        params![row.source, row.destination],
                        |r| r.get(0),
                    )
                    .optional()?;
                Err(DatastoreError::DuplicateIntention {
                    source_id: row.source.clone(),
                    destination: row.destination.clone(),
                    existing: existing.unwrap_or_default(),
                })
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Every intention, oldest first.
    ///
    /// # Errors
    /// SQLite failures.
    pub fn list_intentions(&self) -> Result<Vec<IntentionRow>, DatastoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, source, destination, spec, created_at FROM intentions ORDER BY created_at, id",
        )?;
        let rows = stmt.query_map([], intention_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes the intention with this id, or else the one for this source and destination,
    /// in one transaction; returns what was deleted.
    ///
    /// # Errors
    /// SQLite failures.
    pub fn delete_intention(
        &self,
        id: &str,
        source: &str,
        destination: &str,
    ) -> Result<Option<IntentionRow>, DatastoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let found = tx
            .query_row(
                "SELECT id, source, destination, spec, created_at FROM intentions
                 WHERE id = ?1 OR (?1 = '' AND source = ?2 AND destination = ?3)",
                params![id, source, destination],
                intention_row,
            )
            .optional()?;
        if let Some(row) = &found {
            tx.execute("DELETE FROM intentions WHERE id = ?1", params![row.id])?;
        }
        tx.commit()?;
        Ok(found)
    }

    // === service catalog ===

    /// Records where a service's proxy listens, replacing an earlier registration.
    ///
    /// # Errors
    /// SQLite failures.
    pub fn upsert_service(&self, row: &ServiceRow) -> Result<(), DatastoreError> {
        self.conn().execute(
            "INSERT INTO services (spiffe_id, address, node_id, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (spiffe_id) DO UPDATE SET address = ?2, node_id = ?3, updated_at = ?4",
            params![row.spiffe_id, row.address, row.node_id, row.updated_at],
        )?;
        Ok(())
    }

    /// The catalog, by SPIFFE ID.
    ///
    /// # Errors
    /// SQLite failures.
    pub fn list_services(&self) -> Result<Vec<ServiceRow>, DatastoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT spiffe_id, address, node_id, updated_at FROM services ORDER BY spiffe_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ServiceRow {
                spiffe_id: r.get(0)?,
                address: r.get(1)?,
                node_id: r.get(2)?,
                updated_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn query_entries(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<EntryRow>, DatastoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map(args, |r| {
            let split = |s: String| -> Vec<String> {
                s.split('\n')
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect()
            };
            Ok(EntryRow {
                id: r.get("id")?,
                spiffe_id: r.get("spiffe_id")?,
                parent_id: r.get("parent_id")?,
                selectors: split(r.get("selectors")?),
                x509_ttl: r.get("x509_ttl")?,
                jwt_ttl: r.get("jwt_ttl")?,
                dns_names: split(r.get("dns_names")?),
                created_at: r.get("created_at")?,
                federates_with: split(r.get("federates_with")?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // === federated bundles ===

    /// Stores (or replaces) a foreign trust domain's bundle.
    ///
    /// # Errors
    /// SQLite failures.
    pub fn put_federated_bundle(&self, b: &FederatedBundleRow) -> Result<(), DatastoreError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO federated_bundles
             (trust_domain, x509_authorities, jwks, sequence, refresh_hint, source, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                b.trust_domain,
                b.x509_authorities.concat(),
                b.jwks,
                b.sequence as i64,
                b.refresh_hint,
                b.source,
                b.updated_at
            ],
        )?;
        Ok(())
    }

    /// Every foreign bundle, by trust domain.
    ///
    /// # Errors
    /// SQLite failures, or stored roots that do not split into certificates.
    pub fn list_federated_bundles(&self) -> Result<Vec<FederatedBundleRow>, DatastoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT trust_domain, x509_authorities, jwks, sequence, refresh_hint, source, updated_at
             FROM federated_bundles ORDER BY trust_domain",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (trust_domain, der, jwks, sequence, refresh_hint, source, updated_at) = row?;
            let x509_authorities = agentmesh_tls::split_der_certs(&der).map_err(|e| {
                DatastoreError::Corrupt(format!("federated bundle {trust_domain}: {e}"))
            })?;
            out.push(FederatedBundleRow {
                trust_domain,
                x509_authorities,
                jwks,
                sequence: sequence as u64,
                refresh_hint,
                source,
                updated_at,
            });
        }
        Ok(out)
    }

    /// A foreign trust domain's bundle, if held.
    ///
    /// # Errors
    /// As [`Datastore::list_federated_bundles`].
    pub fn get_federated_bundle(
        &self,
        trust_domain: &str,
    ) -> Result<Option<FederatedBundleRow>, DatastoreError> {
        Ok(self
            .list_federated_bundles()?
            .into_iter()
            .find(|b| b.trust_domain == trust_domain))
    }

    /// Forgets a foreign bundle; `false` if there was none.
    ///
    /// # Errors
    /// SQLite failures.
    pub fn delete_federated_bundle(&self, trust_domain: &str) -> Result<bool, DatastoreError> {
        Ok(self.conn().execute(
            "DELETE FROM federated_bundles WHERE trust_domain = ?1",
            params![trust_domain],
        )? > 0)
    }

    // === join tokens ===

    /// Records a join token by its hash.
    ///
    /// # Errors
    /// SQLite failures.
    pub fn add_join_token(&self, hash: &str, expires_at: i64) -> Result<(), DatastoreError> {
        self.conn().execute(
            "INSERT INTO join_tokens (hash, expires_at) VALUES (?1, ?2)",
            params![hash, expires_at],
        )?;
        Ok(())
    }

    /// Spends a join token, in one transaction so two nodes racing with the same token cannot
    /// both win.
    ///
    /// # Errors
    /// SQLite failures.
    pub fn redeem_join_token(
        &self,
        hash: &str,
        now: i64,
    ) -> Result<TokenRedemption, DatastoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let row: Option<(i64, Option<i64>)> = tx
            .query_row(
                "SELECT expires_at, used_at FROM join_tokens WHERE hash = ?1",
                params![hash],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let outcome = match row {
            None => TokenRedemption::Unknown,
            Some((_, Some(_))) => TokenRedemption::AlreadyUsed,
            Some((expires_at, None)) if expires_at <= now => TokenRedemption::Expired,
            Some(_) => {
                tx.execute(
                    "UPDATE join_tokens SET used_at = ?2 WHERE hash = ?1",
                    params![hash, now],
                )?;
                TokenRedemption::Redeemed
            }
        };
        tx.commit()?;
        Ok(outcome)
    }

    // === nodes ===

    /// Records (or updates) an attested node and its current SVID.
    ///
    /// # Errors
    /// SQLite failures.
    pub fn upsert_node(&self, node: &NodeRow) -> Result<(), DatastoreError> {
        self.conn().execute(
            "INSERT INTO nodes (spiffe_id, serial, expires_at, attested_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (spiffe_id) DO UPDATE SET serial = excluded.serial, expires_at = excluded.expires_at",
            params![node.spiffe_id, node.serial, node.expires_at, node.attested_at],
        )?;
        Ok(())
    }

    /// Replaces what a node's attestation found about it (its `x509pop:` selectors), in one
    /// transaction.
    ///
    /// # Errors
    /// SQLite failures.
    pub fn set_node_selectors(
        &self,
        spiffe_id: &str,
        selectors: &[String],
    ) -> Result<(), DatastoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM node_selectors WHERE spiffe_id = ?1",
            params![spiffe_id],
        )?;
        for s in selectors {
            tx.execute(
                "INSERT OR IGNORE INTO node_selectors (spiffe_id, selector) VALUES (?1, ?2)",
                params![spiffe_id, s],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// What a node's attestation found about it, sorted; empty for a join-token node.
    ///
    /// # Errors
    /// SQLite failures.
    pub fn node_selectors(&self, spiffe_id: &str) -> Result<Vec<String>, DatastoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT selector FROM node_selectors WHERE spiffe_id = ?1 ORDER BY selector",
        )?;
        let rows = stmt.query_map(params![spiffe_id], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One node by SPIFFE ID.
    ///
    /// # Errors
    /// SQLite failures.
    pub fn get_node(&self, spiffe_id: &str) -> Result<Option<NodeRow>, DatastoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT spiffe_id, serial, expires_at, attested_at FROM nodes WHERE spiffe_id = ?1",
                params![spiffe_id],
                node_row,
            )
            .optional()?)
    }

    /// Every attested node.
    ///
    /// # Errors
    /// SQLite failures.
    pub fn list_nodes(&self) -> Result<Vec<NodeRow>, DatastoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT spiffe_id, serial, expires_at, attested_at FROM nodes ORDER BY attested_at",
        )?;
        let rows = stmt.query_map([], node_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // === CA ===

    /// Records a CA generation whose key file has already been written.
    ///
    /// # Errors
    /// SQLite failures.
    pub fn add_ca(&self, row: &CaRow) -> Result<(), DatastoreError> {
        self.conn().execute(
            "INSERT INTO ca (kind, id, cert_der, key_file, parent, not_before, not_after) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![row.kind, row.id, row.cert_der, row.key_file, row.parent, row.not_before, row.not_after],
        )?;
        Ok(())
    }

    /// CA generations of one kind, oldest first.
    ///
    /// # Errors
    /// SQLite failures.
    pub fn list_ca(&self, kind: &str) -> Result<Vec<CaRow>, DatastoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT kind, id, cert_der, key_file, parent, not_before, not_after FROM ca WHERE kind = ?1 ORDER BY not_before, id",
        )?;
        let rows = stmt.query_map(params![kind], |r| {
            Ok(CaRow {
                kind: r.get(0)?,
                id: r.get(1)?,
                cert_der: r.get(2)?,
                key_file: r.get(3)?,
                parent: r.get(4)?,
                not_before: r.get(5)?,
                not_after: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn intention_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<IntentionRow> {
    Ok(IntentionRow {
        id: r.get(0)?,
        source: r.get(1)?,
        destination: r.get(2)?,
        spec_json: r.get(3)?,
        created_at: r.get(4)?,
    })
}

fn node_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<NodeRow> {
    Ok(NodeRow {
        spiffe_id: r.get(0)?,
        serial: r.get(1)?,
        expires_at: r.get(2)?,
        attested_at: r.get(3)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, spiffe_id: &str, parent: &str) -> EntryRow {
        EntryRow {
            id: id.into(),
            spiffe_id: spiffe_id.into(),
            parent_id: parent.into(),
            selectors: vec!["unix:uid:1000".into()],
            x509_ttl: 0,
            jwt_ttl: 0,
            dns_names: vec![],
            federates_with: Vec::new(),
            created_at: 1,
        }
    }

    #[test]
    fn duplicate_entries_are_refused_with_the_existing_id() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(&dir.path().join("db")).unwrap();
        ds.create_entry(&entry("a", "spiffe://td/x", "")).unwrap();
        let err = ds
            .create_entry(&entry("b", "spiffe://td/x", ""))
            .unwrap_err();
        assert!(
            matches!(err, DatastoreError::DuplicateEntry(ref id) if id == "a"),
            "{err}"
        );
        // Another parent is another entry.
        ds.create_entry(&entry(
            "c",
            "spiffe://td/x",
            "spiffe://td/agentmesh/node/n1",
        ))
        .unwrap();
        let for_n1 = ds
            .entries_for_parents(&["spiffe://td/agentmesh/node/n1".into()])
            .unwrap();
        assert_eq!(for_n1.len(), 2);
        let for_n2 = ds
            .entries_for_parents(&["spiffe://td/agentmesh/node/n2".into()])
            .unwrap();
        assert_eq!(for_n2.len(), 1);
        // A node alias's entries follow the node that matches it.
        ds.create_entry(&entry("d", "spiffe://td/y", "spiffe://td/alias"))
            .unwrap();
        let for_n2 = ds
            .entries_for_parents(&[
                "spiffe://td/agentmesh/node/n2".into(),
                "spiffe://td/alias".into(),
            ])
            .unwrap();
        let ids: Vec<&str> = for_n2.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["a", "d"]);
        assert_eq!(
            ds.entries_with_parent("spiffe://td/alias").unwrap().len(),
            1
        );
    }

    #[test]
    fn node_selectors_are_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(&dir.path().join("db")).unwrap();
        let n = "spiffe://td/agentmesh/node/x509pop/ab";
        assert!(ds.node_selectors(n).unwrap().is_empty());
        ds.set_node_selectors(
            n,
            &["x509pop:subject:cn:b".into(), "x509pop:subject:cn:a".into()],
        )
        .unwrap();
        assert_eq!(
            ds.node_selectors(n).unwrap(),
            ["x509pop:subject:cn:a", "x509pop:subject:cn:b"]
        );
        ds.set_node_selectors(n, &["x509pop:subject:cn:c".into()])
            .unwrap();
        assert_eq!(ds.node_selectors(n).unwrap(), ["x509pop:subject:cn:c"]);
    }

    #[test]
    fn join_tokens_are_one_time_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(&dir.path().join("db")).unwrap();
        ds.add_join_token("h1", 100).unwrap();
        ds.add_join_token("h2", 100).unwrap();
        assert_eq!(
            ds.redeem_join_token("h1", 50).unwrap(),
            TokenRedemption::Redeemed
        );
        assert_eq!(
            ds.redeem_join_token("h1", 51).unwrap(),
            TokenRedemption::AlreadyUsed
        );
        assert_eq!(
            ds.redeem_join_token("h2", 100).unwrap(),
            TokenRedemption::Expired
        );
        assert_eq!(
            ds.redeem_join_token("nope", 1).unwrap(),
            TokenRedemption::Unknown
        );
    }

    #[test]
    fn a_data_dir_from_before_federation_gets_federates_with_and_keeps_its_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE entries (id TEXT PRIMARY KEY, spiffe_id TEXT NOT NULL,
                 parent_id TEXT NOT NULL, selectors TEXT NOT NULL, x509_ttl INTEGER NOT NULL,
                 jwt_ttl INTEGER NOT NULL, dns_names TEXT NOT NULL, created_at INTEGER NOT NULL,
                 UNIQUE (spiffe_id, parent_id, selectors));
                 INSERT INTO entries VALUES ('old', 'spiffe://td/x', '', 'unix:uid:1', 0, 0, '', 1);",
            )
            .unwrap();
        }
        let ds = Datastore::open(&path).unwrap();
        let entries = ds.list_entries().unwrap();
        assert_eq!(entries.len(), 1);
        assert!(entries[0].federates_with.is_empty());
        let mut e = entry("new", "spiffe://td/y", "");
        e.federates_with = vec!["spiffe://a.test".into(), "spiffe://b.test".into()];
        ds.create_entry(&e).unwrap();
        assert_eq!(
            ds.get_entry("new").unwrap().unwrap().federates_with,
            e.federates_with
        );
        drop(ds);
        // Opening again finds the column and adds nothing.
        Datastore::open(&path).unwrap();
    }

    #[test]
    fn federated_bundles_are_stored_replaced_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(&dir.path().join("db")).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root = params.self_signed(&key).unwrap().der().to_vec();
        let mut row = FederatedBundleRow {
            trust_domain: "other.test".into(),
            x509_authorities: vec![root.clone()],
            jwks: "{\"keys\":[]}".into(),
            sequence: 1,
            refresh_hint: 300,
            source: "manual".into(),
            updated_at: 1,
        };
        ds.put_federated_bundle(&row).unwrap();
        row.x509_authorities.push(root);
        row.source = "https://127.0.0.1:8443/".into();
        ds.put_federated_bundle(&row).unwrap();
        assert_eq!(ds.list_federated_bundles().unwrap(), vec![row.clone()]);
        assert_eq!(ds.get_federated_bundle("other.test").unwrap(), Some(row));
        assert!(ds.delete_federated_bundle("other.test").unwrap());
        assert!(!ds.delete_federated_bundle("other.test").unwrap());
        assert!(ds.list_federated_bundles().unwrap().is_empty());
    }
}
