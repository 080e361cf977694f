//! The intentions and service catalog the proxy enforces, followed on the node's proxy API.
//!
//! Until the first snapshot arrives the set is empty, so everything is denied. When the node
//! or the server is away, the last snapshot stays in force.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentmesh_policy::{IntentionSpec, PolicySet};
use agentmesh_proto::v1::proxy_api_client::ProxyApiClient;
use agentmesh_proto::v1::{PolicySnapshot, RegisterServiceRequest, WatchPolicyRequest};
use agentmesh_spiffe::TrustDomain;
use tokio::sync::watch;

use crate::identity::workload_request;

/// One version of the policy.
#[derive(Debug, Default)]
pub struct PolicyState {
    /// The intentions.
    pub set: PolicySet,
    /// SPIFFE ID -> proxy address.
    pub catalog: HashMap<String, String>,
    /// The server's revision; 0 before the first snapshot.
    pub revision: u64,
    /// Whether a snapshot has arrived at all.
    pub received: bool,
}

impl PolicyState {
    /// Builds the state from a snapshot. An intention that does not parse is dropped and
    /// logged: dropping an allow denies, which is the safe direction, and the server validated
    /// every intention with the same code, so this only happens across incompatible versions.
    pub fn from_snapshot(snapshot: &PolicySnapshot, td: &TrustDomain) -> Self {
        let mut intentions = Vec::with_capacity(snapshot.intentions.len());
        for i in &snapshot.intentions {
            match IntentionSpec::from_json(&i.spec_json)
                .and_then(|s| s.validate(td, i.id.clone(), i.created_at))
            {
                Ok(v) => intentions.push(v),
                Err(e) => {
                    tracing::error!(intention = %i.id, error = %e, "ignoring an intention this proxy cannot parse")
                }
            }
        }
        Self {
            set: PolicySet::new(intentions),
            catalog: snapshot
                .services
                .iter()
                .map(|s| (s.spiffe_id.clone(), s.address.clone()))
                .collect(),
            revision: snapshot.revision,
            received: true,
        }
    }
}

/// Follows the node's policy relay, and registers this proxy's inbound address.
#[derive(Debug)]
pub struct PolicyWatch {
    tx: watch::Sender<Arc<PolicyState>>,
}

/// What the proxy registers in the catalog.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Our SPIFFE ID.
    pub spiffe_id: String,
    /// Where other proxies reach our inbound listener.
    pub address: String,
}

impl PolicyWatch {
    /// A watch holding the empty (deny-all) policy.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            tx: watch::channel(Arc::new(PolicyState::default())).0,
        })
    }

    /// Follows every policy change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<PolicyState>> {
        self.tx.subscribe()
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<PolicyState> {
        self.tx.borrow().clone()
    }

    /// Replaces the policy in force; used by the stream and by in-process tests.
    pub fn set(&self, state: PolicyState) {
        self.tx.send_replace(Arc::new(state));
    }

    /// Follows the relay on `socket` until `stop` fires. After each (re)connection the
    /// registration, if any, is sent again, so a restarted node or server learns it anew.
    pub async fn run(
        self: Arc<Self>,
        socket: PathBuf,
        td: TrustDomain,
        registration: Option<Registration>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut delay = Duration::from_millis(100);
        loop {
            let started = tokio::time::Instant::now();
            let result = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                r = self.follow(&socket, &td, registration.as_ref()) => r,
            };
            if started.elapsed() > Duration::from_secs(10) {
                delay = Duration::from_millis(100);
            }
            tracing::warn!(error = %result, revision = self.current().revision, "policy stream ended; enforcing the last policy received and retrying");
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn follow(
        &self,
        socket: &Path,
        td: &TrustDomain,
        registration: Option<&Registration>,
    ) -> String {
        let channel = match agentmesh_proto::unix::connect(socket).await {
            Ok(c) => c,
            Err(e) => return e.to_string(),
        };
        let mut client = ProxyApiClient::new(channel)
            .max_decoding_message_size(agentmesh_proto::MAX_MESSAGE_BYTES);
        let mut stream = match client
            .watch_policy(workload_request(WatchPolicyRequest {}))
            .await
        {
            Ok(s) => s.into_inner(),
            Err(s) => return format!("{:?}: {}", s.code(), s.message()),
        };
        if let Some(reg) = registration {
            tokio::spawn(register(client.clone(), reg.clone()));
        }
        loop {
            match stream.message().await {
                Ok(Some(snapshot)) => {
                    let state = PolicyState::from_snapshot(&snapshot, td);
                    tracing::debug!(
                        revision = state.revision,
                        intentions = state.set.intentions().len(),
                        "policy updated"
                    );
                    self.set(state);
                }
                Ok(None) => return "the node closed the policy stream".into(),
                Err(s) => return format!("{:?}: {}", s.code(), s.message()),
            }
        }
    }
}

/// Registers until it succeeds or is refused for good.
async fn register(mut client: ProxyApiClient<tonic::transport::Channel>, reg: Registration) {
    let mut delay = Duration::from_millis(200);
    loop {
        let req = RegisterServiceRequest {
            spiffe_id: reg.spiffe_id.clone(),
            address: reg.address.clone(),
        };
        match client.register_service(workload_request(req)).await {
            Ok(_) => {
                tracing::info!(service = %reg.spiffe_id, address = %reg.address, "registered in the service catalog");
                return;
            }
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
                ) =>
            {
                tracing::error!(service = %reg.spiffe_id, error = %s.message(), "the service catalog refused this proxy's registration");
                return;
            }
            Err(s) => {
                tracing::debug!(error = %s.message(), "registration failed; retrying");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
