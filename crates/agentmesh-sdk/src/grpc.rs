//! gRPC over mTLS for tonic: [`incoming`] turns a TCP listener into verified TLS connections
//! for `Server::serve_with_incoming`, [`IdentityInterceptor`] admits callers by SPIFFE ID, and
//! [`channel`] dials a server and pins its SPIFFE ID. No tonic TLS feature is needed: the TLS
//! is this crate's rustls configs, so there is one crypto backend.

use std::net::SocketAddr;
use std::sync::Arc;

use agentmesh_proto::limits::{Caller, ListenerLimits, TlsConn, tls_incoming};
use agentmesh_spiffe::SpiffeId;
use agentmesh_tls::Authorizer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::client::MtlsConnector;
use crate::http::PeerIdentity;
use crate::source::X509Source;
use crate::tls::{ALPN_GRPC, ServerTls};

/// Names gRPC listeners in log lines.
const LISTENER: &str = "grpc";

/// Why a gRPC connection could not be set up.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
/// let err = agentmesh_sdk::grpc::channel(
///     ca.source("spiffe://example.org/cli"), "not a uri", "spiffe://example.org/api".parse().unwrap(),
/// ).await.unwrap_err();
/// assert!(matches!(err, agentmesh_sdk::grpc::GrpcError::BadUri { .. }));
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrpcError {
    /// The endpoint URI is not valid.
    #[error("grpc endpoint {uri:?} is not a valid uri: {reason}")]
    BadUri {
        /// The URI given.
        uri: String,
        /// Why it was refused.
        reason: String,
    },
    /// The TLS config could not be built.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsConfigError),
    /// Connecting failed (including a server with an unexpected SPIFFE ID).
    #[error("connecting to grpc endpoint {uri}: {reason}")]
    Connect {
        /// The endpoint.
        uri: String,
        /// Why.
        reason: String,
    },
}

/// Who is on the other end of a served gRPC connection; tonic puts it in each request's
/// extensions.
///
/// # Examples
/// ```
/// fn caller(req: &tonic::Request<()>) -> Option<String> {
///     req.extensions().get::<agentmesh_sdk::grpc::GrpcPeer>().map(|p| p.spiffe_id.to_string())
/// }
/// ```
#[derive(Debug, Clone)]
pub struct GrpcPeer {
    /// The verified SPIFFE ID of the client's SVID.
    pub spiffe_id: SpiffeId,
    /// The client's address.
    pub remote_addr: SocketAddr,
}

/// A verified TLS connection tonic can serve; [`incoming`] yields these.
///
/// # Examples
/// ```no_run
/// # async fn run(source: std::sync::Arc<agentmesh_sdk::X509Source>) {
/// use tokio_stream::StreamExt as _;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// let mut conns = agentmesh_sdk::grpc::incoming(listener, source, agentmesh_tls::any_id()).unwrap();
/// let conn: agentmesh_sdk::grpc::GrpcConn = conns.next().await.unwrap().unwrap();
/// # let _ = conn;
/// # }
/// ```
pub type GrpcConn = TlsConn<GrpcPeer>;

/// Accepts on `listener` and yields mTLS connections whose client SVID chains to the source's
/// bundle and is admitted by `clients`; handshakes run concurrently, so a slow client cannot
/// hold up others. Feed it to `tonic::transport::Server::serve_with_incoming`, best built with
/// `agentmesh_proto::limits::grpc_server`. The default [`ListenerLimits`] apply: a handshake
/// and an HTTP/2 preface within 10 s each, and at most 512 connections per SPIFFE ID.
///
/// # Errors
/// [`GrpcError::Tls`] if no TLS config can be built from the source.
///
/// # Examples
/// ```no_run
/// # async fn run(source: std::sync::Arc<agentmesh_sdk::X509Source>) -> Result<(), Box<dyn std::error::Error>> {
/// use agentmesh_sdk::grpc::{IdentityInterceptor, incoming};
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:50051").await?;
/// let conns = incoming(listener, source, agentmesh_tls::any_id())?;
/// let check = IdentityInterceptor::member_of("example.org".parse()?);
/// // Server::builder().add_service(MyServer::with_interceptor(svc, check))
/// //     .serve_with_incoming(conns).await?;
/// # let _ = (conns, check); Ok(()) }
/// ```
pub fn incoming(
    listener: TcpListener,
    source: Arc<X509Source>,
    clients: Arc<dyn Authorizer>,
) -> Result<ReceiverStream<Result<GrpcConn, std::io::Error>>, GrpcError> {
    incoming_with_limits(listener, source, clients, ListenerLimits::default())
}

/// [`incoming`] with limits other than the defaults: the handshake and HTTP/2 preface
/// deadlines, and the connections one SPIFFE ID and the whole listener may hold.
///
/// # Errors
/// [`GrpcError::Tls`] if no TLS config can be built from the source.
pub fn incoming_with_limits(
    listener: TcpListener,
    source: Arc<X509Source>,
    clients: Arc<dyn Authorizer>,
    limits: ListenerLimits,
) -> Result<ReceiverStream<Result<GrpcConn, std::io::Error>>, GrpcError> {
    let tls = ServerTls::new(source, clients, ALPN_GRPC);
    tls.config()?;
    let config = move || {
        tls.config()
            .inspect_err(|e| tracing::error!(error = %e, "no tls config for a new grpc connection"))
            .ok()
    };
    Ok(tls_incoming(
        listener,
        LISTENER,
        limits,
        config,
        |conn, remote_addr| {
            let spiffe_id = agentmesh_tls::peer_identity(conn)?;
            let caller = Caller::Spiffe(spiffe_id.to_string());
            Some((
                GrpcPeer {
                    spiffe_id,
                    remote_addr,
                },
                caller,
            ))
        },
    ))
}

/// A tonic interceptor that admits callers by the SPIFFE ID of their TLS connection (served by
/// [`incoming`]) and refuses others with `PERMISSION_DENIED` and the reason. Admitted requests
/// carry a [`PeerIdentity`] in their extensions.
///
/// # Examples
/// ```
/// use agentmesh_sdk::grpc::IdentityInterceptor;
/// let check = IdentityInterceptor::exact(["spiffe://example.org/planner".parse().unwrap()]);
/// // MyServiceServer::with_interceptor(service, check)
/// # let _ = check;
/// ```
#[derive(Debug, Clone)]
pub struct IdentityInterceptor {
    policy: Arc<dyn Authorizer>,
}

impl IdentityInterceptor {
    /// Admits callers `policy` admits.
    ///
    /// # Examples
    /// ```
    /// let check = agentmesh_sdk::grpc::IdentityInterceptor::new(agentmesh_tls::any_id());
    /// # let _ = check;
    /// ```
    pub fn new(policy: Arc<dyn Authorizer>) -> Self {
        Self { policy }
    }

    /// Admits only the listed IDs.
    ///
    /// # Examples
    /// ```
    /// let check = agentmesh_sdk::grpc::IdentityInterceptor::exact(["spiffe://example.org/a".parse().unwrap()]);
    /// # let _ = check;
    /// ```
    pub fn exact(ids: impl IntoIterator<Item = SpiffeId>) -> Self {
        Self::new(agentmesh_tls::exact(ids))
    }

    /// Admits any ID in `trust_domain`.
    ///
    /// # Examples
    /// ```
    /// let check = agentmesh_sdk::grpc::IdentityInterceptor::member_of("example.org".parse().unwrap());
    /// # let _ = check;
    /// ```
    pub fn member_of(trust_domain: agentmesh_spiffe::TrustDomain) -> Self {
        Self::new(agentmesh_tls::member_of(trust_domain))
    }
}

impl tonic::service::Interceptor for IdentityInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(peer) = req.extensions().get::<GrpcPeer>().cloned() else {
            return Err(tonic::Status::permission_denied(
                "no verified peer identity on this connection; serve with agentmesh_sdk::grpc::incoming",
            ));
        };
        if let Err(e) = self.policy.authorize(&peer.spiffe_id) {
            tracing::info!(peer = %peer.spiffe_id, reason = %e, "grpc call refused");
            return Err(tonic::Status::permission_denied(e.to_string()));
        }
        req.extensions_mut().insert(PeerIdentity(peer.spiffe_id));
        Ok(req)
    }
}

/// A tonic channel to `uri` (`https://host:port`) over mTLS that accepts only a server
/// presenting exactly `server_id`.
///
/// # Errors
/// [`GrpcError::BadUri`], or [`GrpcError::Connect`] if the server cannot be reached or is not
/// `server_id`.
///
/// # Examples
/// ```no_run
/// # async fn run(source: std::sync::Arc<agentmesh_sdk::X509Source>) -> Result<(), agentmesh_sdk::grpc::GrpcError> {
/// let channel = agentmesh_sdk::grpc::channel(
///     source,
///     "https://127.0.0.1:50051",
///     "spiffe://example.org/executor".parse().unwrap(),
/// ).await?;
/// // let client = MyServiceClient::new(channel);
/// # Ok(()) }
/// ```
pub async fn channel(
    source: Arc<X509Source>,
    uri: &str,
    server_id: SpiffeId,
) -> Result<Channel, GrpcError> {
    let endpoint = Endpoint::from_shared(uri.to_owned()).map_err(|e| GrpcError::BadUri {
        uri: uri.to_owned(),
        reason: e.to_string(),
    })?;
    let connector = MtlsConnector::new(source, agentmesh_tls::exact([server_id]), ALPN_GRPC);
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| {
            let mut reason = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                reason = format!("{reason}: {s}");
                source = s.source();
            }
            GrpcError::Connect {
                uri: uri.to_owned(),
                reason,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor as _;

    fn request_from(peer: Option<&str>) -> tonic::Request<()> {
        let mut req = tonic::Request::new(());
        if let Some(p) = peer {
            req.extensions_mut().insert(GrpcPeer {
                spiffe_id: p.parse().unwrap(),
                remote_addr: "127.0.0.1:1".parse().unwrap(),
            });
        }
        req
    }

    #[test]
    fn interceptor_admits_the_listed_caller_and_hands_it_on() {
        let mut check = IdentityInterceptor::exact(["spiffe://td/a".parse().unwrap()]);
        let req = check.call(request_from(Some("spiffe://td/a"))).unwrap();
        assert_eq!(
            req.extensions()
                .get::<PeerIdentity>()
                .unwrap()
                .0
                .to_string(),
            "spiffe://td/a"
        );
    }

    #[test]
    fn interceptor_refuses_others_and_unverified_connections() {
        let mut check = IdentityInterceptor::member_of("td".parse().unwrap());
        let status = check
            .call(request_from(Some("spiffe://other/a")))
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(
            status.message().contains("spiffe://other/a"),
            "{}",
            status.message()
        );
        let status = check.call(request_from(None)).unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
    }
}
