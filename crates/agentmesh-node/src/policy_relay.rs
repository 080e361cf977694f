//! The policy relay: the node follows the server's policy watch (intentions and the service
//! catalog) and re-serves the latest snapshot to local proxies over the Workload API socket,
//! so a proxy needs only the one socket, and keeps what it has while the server is away.

use std::pin::Pin;
use std::sync::Arc;

use agentmesh_proto::v1::{self, PolicySnapshot};
use futures::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::attestor::Attestor;
use crate::manager::{Backoff, Manager};
use crate::workload_api::{check_header, peer_cred};

/// The latest policy snapshot the node has received.
#[derive(Debug)]
pub struct PolicyRelay {
    latest: watch::Sender<Option<Arc<PolicySnapshot>>>,
}

impl Default for PolicyRelay {
    fn default() -> Self {
        Self {
            latest: watch::channel(None).0,
        }
    }
}

impl PolicyRelay {
    /// Follows the server's policy watch until `stop` fires, reconnecting with backoff.
    pub async fn run(self: Arc<Self>, manager: Arc<Manager>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::default();
        loop {
            let started = tokio::time::Instant::now();
            let result = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                r = self.follow(&manager) => r,
            };
            if started.elapsed() >= std::time::Duration::from_secs(10) {
                backoff.reset();
            }
            tracing::debug!(error = %result, "policy watch ended; proxies keep the last policy");
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(backoff.next()) => {}
            }
        }
    }

    async fn follow(&self, manager: &Manager) -> String {
        let mut client = manager.server_client();
        let mut stream = match client.watch_policy(v1::WatchPolicyRequest {}).await {
            Ok(s) => s.into_inner(),
            Err(s) => return crate::server_client::describe(&s),
        };
        loop {
            match stream.message().await {
                Ok(Some(snapshot)) => {
                    tracing::debug!(
                        revision = snapshot.revision,
                        intentions = snapshot.intentions.len(),
                        services = snapshot.services.len(),
                        "policy snapshot from the server"
                    );
                    self.latest.send_replace(Some(Arc::new(snapshot)));
                }
                Ok(None) => return "the server closed the policy watch".into(),
                Err(s) => return crate::server_client::describe(&s),
            }
        }
    }
}

type PolicyStream = Pin<Box<dyn Stream<Item = Result<PolicySnapshot, Status>> + Send>>;

/// The proxy API on the Workload API socket.
#[derive(Debug, Clone)]
pub struct ProxyApi {
    manager: Arc<Manager>,
    attestor: Arc<Attestor>,
    relay: Arc<PolicyRelay>,
    stopping: watch::Receiver<bool>,
}

impl ProxyApi {
    /// Serves the relay's snapshots and forwards registrations until `stopping` is true.
    pub fn new(
        manager: Arc<Manager>,
        attestor: Arc<Attestor>,
        relay: Arc<PolicyRelay>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self {
            manager,
            attestor,
            relay,
            stopping,
        }
    }

    /// The SPIFFE IDs the caller is entitled to, or why it has none.
    async fn caller_ids<T>(&self, req: &Request<T>) -> Result<Vec<String>, Status> {
        check_header(req)?;
        let snap = self.manager.snapshot();
        if !snap.synced {
            return Err(Status::unavailable(
                "the node is not ready yet: it has not finished its first sync with the server",
            ));
        }
        let att = self.attestor.attest(peer_cred(req)?).await;
        let ids: Vec<String> = snap
            .matching(&att)
            .map(|e| e.spiffe_id.to_string())
            .collect();
        if ids.is_empty() {
            let why = self.attestor.denials().refuse(
                crate::denials::DeniedBy::ProxyApi,
                &att,
                &snap.entries,
            );
            return Err(Status::permission_denied(why));
        }
        Ok(ids)
    }
}

#[tonic::async_trait]
impl v1::proxy_api_server::ProxyApi for ProxyApi {
    type WatchPolicyStream = PolicyStream;

    async fn watch_policy(
        &self,
        req: Request<v1::WatchPolicyRequest>,
    ) -> Result<Response<PolicyStream>, Status> {
        self.caller_ids(&req).await?;
        let mut rx = self.relay.latest.subscribe();
        let mut stopping = self.stopping.clone();
        let (tx, out) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                // Nothing is sent until the node has a snapshot: an empty one would read as
                // "no intentions", which is a policy, not the absence of one.
                let current = rx.borrow_and_update().clone();
                if let Some(snapshot) = current
                    && tx.send(Ok((*snapshot).clone())).await.is_err()
                {
                    return;
                }
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return },
                    () = tx.closed() => return,
                    _ = stopping.wait_for(|s| *s) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    async fn register_service(
        &self,
        req: Request<v1::RegisterServiceRequest>,
    ) -> Result<Response<v1::RegisterServiceResponse>, Status> {
        let ids = self.caller_ids(&req).await?;
        let req = req.into_inner();
        if !ids.contains(&req.spiffe_id) {
            return Err(Status::permission_denied(format!(
                "this process holds no SVID for {}, so it cannot register that service (it holds {})",
                req.spiffe_id,
                ids.join(", ")
            )));
        }
        self.manager
            .server_client()
            .register_service(req)
            .await
            .map(|_| Response::new(v1::RegisterServiceResponse {}))
    }
}
