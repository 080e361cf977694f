//! The node API's listener: TCP, then a TLS 1.3 handshake, then gRPC, through the accept loop
//! every TLS gRPC listener shares ([`agentmesh_proto::limits::tls_incoming`]). A node may
//! connect without a certificate (to attest with a join token), so the peer's SPIFFE ID is
//! optional here; it travels to the handlers as connection info.

use std::sync::{Arc, RwLock};

use agentmesh_proto::limits::{Caller, ListenerLimits, TlsConn, tls_incoming};
use agentmesh_spiffe::SpiffeId;
use tokio::net::TcpListener;

/// Names the node API in log lines.
const LISTENER: &str = "node API";

/// Who is on the other end of a node API connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The SPIFFE ID of the verified client certificate, if one was presented.
    pub spiffe_id: Option<SpiffeId>,
}

/// The TLS config in force; swapped when the bundle or the server's certificate changes.
pub type SharedTlsConfig = Arc<RwLock<Arc<rustls::ServerConfig>>>;

/// Accepts node API connections. `limits` bounds the handshake, the preface, and the
/// connections of each caller (the node's SPIFFE ID, or the address of a node still
/// attesting with a join token) and in total.
pub fn incoming(
    listener: TcpListener,
    config: SharedTlsConfig,
    limits: ListenerLimits,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsConn<PeerInfo>>> {
    let current = move || Some(config.read().unwrap_or_else(|e| e.into_inner()).clone());
    tls_incoming(listener, LISTENER, limits, current, |conn, remote_addr| {
        let spiffe_id = conn
            .peer_certificates()
            .and_then(|c| agentmesh_tls::peer_spiffe_id(c).ok());
        let caller = spiffe_id
            .as_ref()
            .map_or(Caller::Ip(remote_addr.ip()), |id| {
                Caller::Spiffe(id.to_string())
            });
        Some((PeerInfo { spiffe_id }, caller))
    })
}
