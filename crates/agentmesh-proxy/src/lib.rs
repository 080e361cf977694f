//! The sidecar proxy. Inbound, it terminates mutual TLS (1.3 only, client SVID required) and
//! checks intentions on the verified peer ID before anything reaches the app: per connection
//! for raw TCP, per request for HTTP/1.1 and HTTP/2. Outbound, it takes plain connections
//! from the app and carries them over mutual TLS to the destination service, accepting only
//! that service's SPIFFE ID.
//!
//! Identity comes from the SPIFFE Workload API, so any compliant agent works. Intentions and
//! the service catalog come from the node's relay; the last ones received stay in force when
//! the node or server is away, and nothing is allowed before the first arrive.
//!
//! Not a library of mesh primitives: the API is [`start`] with a [`ProxyConfig`] (what
//! `agentmesh-proxy run` and `agentmesh up` do). Deciding intentions is agentmesh-policy's,
//! issuing SVIDs the node's; apps that do mTLS themselves use agentmesh-sdk instead.
#![forbid(unsafe_code)]

mod admin;
mod config;
mod http_util;
mod inbound;
mod outbound;
mod policy;
mod telemetry;

use std::net::SocketAddr;

use agentmesh_sdk::{LocalAddr, LocalListener, LocalPeer, LocalStream, StdLocalListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentmesh_sdk::X509Source;
use agentmesh_spiffe::SpiffeId;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{Admin, ConfigError, Inbound, Protocol, ProxyConfig, Upstream};

/// Why a proxy could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The config is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No SVID.
    #[error(transparent)]
    Identity(#[from] agentmesh_sdk::SourceError),
    /// A listener could not be bound.
    #[error("cannot listen on {0} ({1}): {2}")]
    Listen(String, &'static str, std::io::Error),
    /// A local (app-side) listener could not be bound.
    #[error("{1} listener: {0}")]
    LocalListen(agentmesh_sdk::LocalError, &'static str),
    /// A data-plane worker thread could not be started.
    #[error("cannot start a proxy worker thread: {0}")]
    Worker(std::io::Error),
    /// A name in the config does not resolve in the proxy's trust domain.
    #[error("{0}: {1}")]
    Name(String, agentmesh_spiffe::SpiffeIdError),
}

/// A running proxy.
#[derive(Debug)]
pub struct RunningProxy {
    /// The bound inbound listener.
    pub inbound_addr: Option<SocketAddr>,
    /// The bound upstream listeners, in config order.
    pub upstream_addrs: Vec<LocalAddr>,
    /// The bound admin listener.
    pub admin_addr: Option<LocalAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningProxy {
    /// Stops accepting and ends the background tasks.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        telemetry::flush_access_log();
    }
}

/// The next connection `next` accepts, or `None` once `stop` fires. Accept errors (such as
/// running out of file descriptors) are logged and retried after a pause rather than ending
/// the loop.
async fn accept_until<T, F, Fut>(stop: &mut watch::Receiver<bool>, mut next: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => None,
            r = next() => Some(r),
        };
        match accepted {
            None => return None,
            Some(Ok(a)) => return Some(a),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The next accepted TCP connection, or `None` once `stop` fires.
pub(crate) async fn accept(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    accept_until(stop, || listener.accept()).await
}

/// The next accepted local connection (a Unix socket peer has passed the uid check), or
/// `None` once `stop` fires.
pub(crate) async fn accept_local(
    listener: &LocalListener,
    stop: &mut watch::Receiver<bool>,
) -> Option<(LocalStream, LocalPeer)> {
    accept_until(stop, || listener.accept()).await
}

/// The per-caller key of a local connection: the uid behind a Unix socket, the address
/// on TCP.
pub(crate) fn local_caller(peer: &LocalPeer) -> agentmesh_proto::limits::Caller {
    match peer {
        LocalPeer::Tcp(a) => agentmesh_proto::limits::Caller::Ip(a.ip()),
        LocalPeer::Unix { uid, .. } => agentmesh_proto::limits::Caller::Uid(*uid),
    }
}

/// What one data-plane worker serves: its own [`inbound::Inbound`] and
/// [`outbound::Upstream`]s (so its own pools) on its copies of the shared listeners.
#[derive(Default)]
struct WorkerPlan {
    inbound: Vec<(inbound::Inbound, std::net::TcpListener)>,
    upstream: Vec<(outbound::Upstream, StdLocalListener)>,
}

impl WorkerPlan {
    /// Serves on a single-threaded runtime of its own until `stop` fires; open connections
    /// end with the runtime.
    fn run(self, stop: watch::Receiver<bool>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot start a proxy worker runtime");
                return;
            }
        };
        runtime.block_on(async move {
            let mut serving = tokio::task::JoinSet::new();
            for (inbound, listener) in self.inbound {
                let listener = match TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "a proxy worker cannot use the inbound listener");
                        continue;
                    }
                };
                serving.spawn(inbound.clone().revoke_on_change(stop.clone()));
                serving.spawn(inbound.serve(listener, stop.clone()));
            }
            for (upstream, listener) in self.upstream {
                match listener.into_tokio() {
                    Ok(l) => {
                        serving.spawn(upstream.serve(l, stop.clone()));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "a proxy worker cannot use an upstream listener");
                    }
                }
            }
            while serving.join_next().await.is_some() {}
        });
    }
}

/// `n` handles on one bound listener (`first` and `n - 1` clones), one per worker; the kernel
/// hands each connection to whichever worker accepts first.
fn clones<T>(
    first: T,
    n: usize,
    try_clone: impl Fn(&T) -> std::io::Result<T>,
) -> std::io::Result<Vec<T>> {
    let mut all = Vec::with_capacity(n);
    for _ in 1..n {
        all.push(try_clone(&first)?);
    }
    all.push(first);
    Ok(all)
}

/// [`clones`] of the inbound TCP listener.
fn share(
    listener: TcpListener,
    n: usize,
    addr: SocketAddr,
    what: &'static str,
) -> Result<Vec<std::net::TcpListener>, ProxyError> {
    listener
        .into_std()
        .and_then(|l| clones(l, n, std::net::TcpListener::try_clone))
        .map_err(|e| ProxyError::Listen(addr.to_string(), what, e))
}

/// [`clones`] of a local (app-side) listener, TCP or Unix socket.
fn share_local(
    listener: LocalListener,
    n: usize,
    what: &'static str,
) -> Result<Vec<StdLocalListener>, ProxyError> {
    let addr = listener.local_addr().to_string();
    listener
        .into_std()
        .and_then(|l| clones(l, n, StdLocalListener::try_clone))
        .map_err(|e| ProxyError::Listen(addr, what, e))
}

/// How long startup waits for the first SVID.
const IDENTITY_PATIENCE: Duration = Duration::from_secs(60);

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| ProxyError::Listen(addr.to_string(), what, e))
}

async fn bind_local(addr: &LocalAddr, what: &'static str) -> Result<LocalListener, ProxyError> {
    LocalListener::bind(addr)
        .await
        .map_err(|e| ProxyError::LocalListen(e, what))
}

/// Starts a proxy with the Workload API at `socket`, and the policy relay at `policy_api`
/// (or on `socket`, as an agentmesh node serves both).
///
/// # Errors
/// No SVID within a minute, a listener that cannot be bound, or a name that does not resolve.
pub async fn start(cfg: ProxyConfig, socket: PathBuf) -> Result<RunningProxy, ProxyError> {
    let policy_socket = cfg.policy_socket(Path::new("proxy config"), &socket)?;
    // The source follows the Workload API until the last handle on it is dropped, which
    // shutdown brings about by ending every task and worker that holds one.
    let identity =
        X509Source::connect_for_service(&socket, &cfg.service, IDENTITY_PATIENCE).await?;
    let own = identity.current().svid.clone();
    tracing::info!(spiffe_id = %own.id, serial = %own.serial, "proxy identity updated");
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let td = own.id.trust_domain().clone();
    let service_id = SpiffeId::from_service_name(&td, &cfg.service)
        .map_err(|e| ProxyError::Name(format!("service {:?}", cfg.service), e))?;
    if service_id != own.id {
        tracing::warn!(service = %service_id, svid = %own.id, "the SVID from the Workload API is not the configured service's ID; the proxy acts as the SVID's identity");
    }
    let metrics = Arc::new(telemetry::Metrics::default());
    let policy = policy::PolicyWatch::new();

    // The data plane runs like Envoy's workers: one single-threaded runtime per core, each
    // accepting from the same listeners and keeping its own connection pools, so a request
    // and the connections it uses stay on one thread (no cross-thread wake-ups per hop).
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut plans: Vec<WorkerPlan> = (0..workers).map(|_| WorkerPlan::default()).collect();
    let handlers = Handlers {
        identity: &identity,
        policy: &policy,
        metrics: &metrics,
        limits: Arc::new(cfg.limits.clone()),
        workers,
    };
    let mut inbound_addr = None;
    let mut registration = None;
    if let Some(ib) = &cfg.inbound {
        let (addr, registered) = plan_inbound(ib, &own.id, &handlers, &mut plans).await?;
        inbound_addr = Some(addr);
        registration = Some(registered);
    }
    let mut upstream_addrs = Vec::new();
    for u in &cfg.upstream {
        upstream_addrs.push(plan_upstream(u, &td, &handlers, &mut plans).await?);
    }
    spawn_workers(plans, &stop_rx, &mut tasks)?;
    tasks.push(tokio::spawn(policy.clone().run(
        policy_socket,
        td,
        registration,
        stop_rx.clone(),
    )));
    tasks.push(keep_cert_expiry_current(
        metrics.clone(),
        &identity,
        stop_rx.clone(),
    ));

    let mut admin_addr = None;
    if let Some(a) = &cfg.admin {
        let listener = bind_local(&a.listen, "admin").await?;
        admin_addr = Some(listener.local_addr());
        let state = admin::AdminState {
            metrics: metrics.clone(),
            identity: identity.clone(),
            policy: policy.clone(),
        };
        tasks.push(tokio::spawn(state.serve(
            listener,
            handlers.limits.clone(),
            stop_rx.clone(),
        )));
    }
    Ok(RunningProxy {
        inbound_addr,
        upstream_addrs,
        admin_addr,
        stop,
        tasks,
    })
}

/// What every worker's listener handlers share.
struct Handlers<'a> {
    identity: &'a Arc<X509Source>,
    policy: &'a Arc<policy::PolicyWatch>,
    metrics: &'a Arc<telemetry::Metrics>,
    limits: Arc<agentmesh_proto::limits::ListenerLimits>,
    workers: usize,
}

/// Binds the inbound mTLS listener and gives every worker a handler on it. Returns the bound
/// address and the registration that tells the server where this service is reached.
async fn plan_inbound(
    ib: &config::Inbound,
    own: &SpiffeId,
    h: &Handlers<'_>,
    plans: &mut [WorkerPlan],
) -> Result<(SocketAddr, policy::Registration), ProxyError> {
    let listener = bind(ib.listen, "inbound").await?;
    let addr = listener
        .local_addr()
        .map_err(|e| ProxyError::Listen(ib.listen.to_string(), "inbound", e))?;
    let registration = policy::Registration {
        spiffe_id: own.to_string(),
        address: ib.advertise.clone().unwrap_or_else(|| addr.to_string()),
    };
    let listener = share(listener, h.workers, ib.listen, "inbound")?;
    // One limiter for all workers: the limits are the listener's, not each thread's.
    let limiter = agentmesh_proto::limits::ConnectionLimiter::new(&h.limits);
    for (plan, l) in plans.iter_mut().zip(listener) {
        plan.inbound.push((
            inbound::Inbound::new(
                h.identity.clone(),
                h.policy.clone(),
                h.metrics.clone(),
                ib.app_addr()?,
                ib.protocol,
            )
            .with_normalize_options(ib.normalize_options())
            .with_mcp_max_body(ib.mcp_max_body())
            .with_a2a_max_body(ib.a2a_max_body())
            .with_user_tokens(ib.user_token_issuer.clone(), ib.user_token_audience.clone())
            .with_limits(h.limits.clone(), limiter.clone()),
            l,
        ));
    }
    tracing::info!(listen = %addr, app = %ib.app, protocol = ?ib.protocol, workers = h.workers, "inbound mTLS listener ready");
    Ok((addr, registration))
}

/// Binds one upstream's app-side listener and gives every worker a handler on it. Returns the
/// bound address.
async fn plan_upstream(
    u: &config::Upstream,
    td: &agentmesh_spiffe::TrustDomain,
    h: &Handlers<'_>,
    plans: &mut [WorkerPlan],
) -> Result<LocalAddr, ProxyError> {
    let dest = SpiffeId::from_service_name(td, &u.destination)
        .map_err(|e| ProxyError::Name(format!("upstream destination {:?}", u.destination), e))?;
    let listener = bind_local(&u.listen, "upstream").await?;
    let addr = listener.local_addr();
    let listener = share_local(listener, h.workers, "upstream")?;
    let limiter = agentmesh_proto::limits::ConnectionLimiter::new(&h.limits);
    for (plan, l) in plans.iter_mut().zip(listener) {
        plan.upstream.push((
            outbound::Upstream::new(
                dest.clone(),
                u.address.clone(),
                u.protocol,
                h.identity.clone(),
                h.policy.clone(),
                h.metrics.clone(),
            )
            .with_limits(h.limits.clone(), limiter.clone()),
            l,
        ));
    }
    tracing::info!(listen = %addr, destination = %dest, protocol = ?u.protocol, workers = h.workers, "upstream listener ready");
    Ok(addr)
}

/// Starts a thread for every worker with something to serve; each is joined by a task in
/// `tasks`, so [`RunningProxy`] waits for them like for its other tasks.
fn spawn_workers(
    plans: Vec<WorkerPlan>,
    stop_rx: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<(), ProxyError> {
    for (i, plan) in plans.into_iter().enumerate() {
        if plan.inbound.is_empty() && plan.upstream.is_empty() {
            continue;
        }
        let stop = stop_rx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("proxy-worker-{i}"))
            .spawn(move || plan.run(stop))
            .map_err(ProxyError::Worker)?;
        tasks.push(tokio::task::spawn_blocking(move || {
            let _ = thread.join();
        }));
    }
    Ok(())
}

/// Keeps the certificate expiry gauge at the current SVID's `not_after` until `stop`.
fn keep_cert_expiry_current(
    metrics: Arc<telemetry::Metrics>,
    identity: &X509Source,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let mut rx = identity.watch();
    tokio::spawn(async move {
        loop {
            let secs = rx
                .borrow_and_update()
                .svid
                .not_after
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            metrics.set_cert_expiry(secs);
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                r = rx.changed() => if r.is_err() { return },
            }
        }
    })
}
