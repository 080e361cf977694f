//! What the server's APIs share: the datastore, the CA, the settings and the change signals.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_proto::v1;
use agentmesh_spiffe::{Selector, SelectorSet, SpiffeId, TrustDomain};
use base64::Engine;
use tokio::sync::watch;

use crate::ca::CaManager;
use crate::datastore::{Datastore, DatastoreError, EntryRow};

/// Tunables of the issuing side.
#[derive(Debug, Clone, Copy)]
pub struct IssuanceSettings {
    /// X.509-SVID lifetime when an entry does not set one.
    pub default_x509_ttl: Duration,
    /// JWT-SVID lifetime when an entry does not set one.
    pub default_jwt_ttl: Duration,
    /// Lifetime of node SVIDs.
    pub node_svid_ttl: Duration,
    /// Join token lifetime when the caller does not choose one.
    pub join_token_ttl: Duration,
}

impl Default for IssuanceSettings {
    fn default() -> Self {
        Self {
            default_x509_ttl: Duration::from_secs(3600),
            default_jwt_ttl: Duration::from_secs(300),
            node_svid_ttl: Duration::from_secs(3600),
            join_token_ttl: Duration::from_secs(600),
        }
    }
}

/// Shared by every API of one server.
#[derive(Debug)]
pub struct ServerState {
    /// Durable state.
    pub datastore: Arc<Datastore>,
    /// The CA.
    pub ca: Arc<CaManager>,
    /// Tunables.
    pub settings: IssuanceSettings,
    /// Bumped whenever an entry is created or deleted, so sync streams resend.
    pub entries_changed: watch::Sender<u64>,
    /// The policy revision: bumped whenever an intention or the catalog changes, so policy
    /// watch streams resend. It starts at the server's start time in milliseconds, so it
    /// keeps increasing across restarts without being stored.
    pub policy_changed: watch::Sender<u64>,
    /// `[node_attestation.x509pop]`: the CAs node certificates must chain to; `None` refuses
    /// x509pop attestation.
    pub x509pop: Option<crate::x509pop::X509PopVerifier>,
}

/// The prefix of node SPIFFE IDs.
pub const NODE_PATH_PREFIX: &str = "/agentmesh/node/";
/// The path of the server's own SPIFFE ID.
pub const SERVER_PATH: &str = "/agentmesh/server";

impl ServerState {
    /// The trust domain served.
    pub fn trust_domain(&self) -> &TrustDomain {
        self.ca.trust_domain()
    }

    /// Whether `id` has the shape of one of this server's node IDs: one segment under
    /// [`NODE_PATH_PREFIX`] (a join-token node), or an x509pop node's
    /// `x509pop/<SHA-1 fingerprint>`.
    pub fn is_node_id(&self, id: &SpiffeId) -> bool {
        if !id.is_member_of(self.trust_domain()) {
            return false;
        }
        match id.path().strip_prefix(NODE_PATH_PREFIX) {
            Some(rest) if rest.starts_with("x509pop/") => agentmesh_tls::x509pop::is_node_id(id),
            Some(rest) => !rest.is_empty() && !rest.contains('/'),
            None => false,
        }
    }

    /// The server's own SPIFFE ID, `spiffe://<td>/agentmesh/server`: the parent of node
    /// alias entries, as SPIRE's server ID is the parent of its node aliases.
    pub fn server_id(&self) -> SpiffeId {
        SpiffeId::from_path(self.trust_domain(), SERVER_PATH)
            .unwrap_or_else(|_| unreachable!("a constant, valid path"))
    }

    /// The node aliases `node` matches: the SPIFFE IDs of the alias entries (parent
    /// [`ServerState::server_id`]) whose every selector the node's attestation produced.
    ///
    /// # Errors
    /// Datastore failures.
    pub fn node_aliases(&self, node: &str) -> Result<Vec<String>, DatastoreError> {
        let have: SelectorSet = self
            .datastore
            .node_selectors(node)?
            .iter()
            .filter_map(|s| s.parse::<Selector>().ok())
            .collect();
        if have.is_empty() {
            return Ok(Vec::new());
        }
        let mut aliases: Vec<String> = self
            .datastore
            .entries_with_parent(&self.server_id().to_string())?
            .into_iter()
            .filter(|alias| {
                let want: Result<SelectorSet, _> = alias
                    .selectors
                    .iter()
                    .map(|s| s.parse::<Selector>())
                    .collect();
                want.is_ok_and(|w| !w.is_empty() && w.is_subset_of(&have))
            })
            .map(|alias| alias.spiffe_id)
            .collect();
        aliases.sort();
        aliases.dedup();
        Ok(aliases)
    }

    /// The entries `node` serves: its own, those of every node alias it matches, and those
    /// with no parent.
    ///
    /// # Errors
    /// Datastore failures.
    pub fn entries_for_node(&self, node: &str) -> Result<Vec<EntryRow>, DatastoreError> {
        let mut parents = self.node_aliases(node)?;
        parents.push(node.to_owned());
        self.datastore.entries_for_parents(&parents)
    }

    /// A fresh, random node ID.
    pub fn new_node_id(&self) -> SpiffeId {
        let path = format!("{NODE_PATH_PREFIX}{}", hex(&random_bytes::<12>()));
        SpiffeId::from_path(self.trust_domain(), &path)
            .unwrap_or_else(|_| unreachable!("hex segments are valid path segments"))
    }

    /// The current bundle as the APIs send it.
    pub fn bundle(&self) -> v1::Bundle {
        let ca = self.ca.current();
        v1::Bundle {
            trust_domain: self.trust_domain().to_string(),
            x509_authorities: ca.roots.clone(),
            jwks: ca.jwks.to_json(),
            sequence: ca.sequence,
        }
    }

    /// Tells every sync stream to resend.
    pub fn notify_entries_changed(&self) {
        self.entries_changed.send_modify(|v| *v += 1);
    }
}

impl ServerState {
    /// Tells every policy watch stream to resend.
    pub fn notify_policy_changed(&self) {
        self.policy_changed.send_modify(|v| *v += 1);
    }

    /// The current intentions and catalog, as the watch stream sends them.
    ///
    /// # Errors
    /// Datastore failures.
    pub fn policy_snapshot(&self) -> Result<v1::PolicySnapshot, DatastoreError> {
        let revision = *self.policy_changed.borrow();
        Ok(v1::PolicySnapshot {
            intentions: self
                .datastore
                .list_intentions()?
                .into_iter()
                .map(intention_to_proto)
                .collect(),
            services: self
                .datastore
                .list_services()?
                .into_iter()
                .map(|s| v1::CatalogService {
                    spiffe_id: s.spiffe_id,
                    address: s.address,
                    node_id: s.node_id,
                    updated_at: s.updated_at,
                })
                .collect(),
            revision,
        })
    }
}

/// A stored intention in its wire form.
pub fn intention_to_proto(row: crate::datastore::IntentionRow) -> v1::Intention {
    v1::Intention {
        id: row.id,
        created_at: row.created_at,
        spec_json: row.spec_json,
    }
}

/// Random bytes from the system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut buf = [0u8; N];
    // The system RNG failing is not something to carry on from.
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .unwrap_or_else(|_| panic!("the system random number generator failed"));
    buf
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new join token: 32 random bytes, base64url.
pub fn new_join_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// Tokens are stored and logged only as their SHA-256.
pub fn token_hash(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

/// A random version-4 UUID, the shape SPIRE's entry ids have.
pub fn new_entry_id() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A stored entry in its wire form.
pub fn entry_to_proto(e: EntryRow) -> v1::Entry {
    v1::Entry {
        id: e.id,
        spiffe_id: e.spiffe_id,
        parent_id: e.parent_id,
        selectors: e.selectors,
        x509_ttl_seconds: e.x509_ttl,
        jwt_ttl_seconds: e.jwt_ttl,
        dns_names: e.dns_names,
        created_at: e.created_at,
        federates_with: e.federates_with,
    }
}
