//! The node's connection to the server: TLS 1.3 to the node API, pinned to the server's SPIFFE
//! ID, with the node SVID as the client certificate once the node has one.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use agentmesh_proto::v1::node_api_client::NodeApiClient;
use agentmesh_spiffe::SpiffeId;
use agentmesh_tls::RotatingCert;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

/// The client TLS config in force; replaced when the bundle changes.
pub type SharedClientConfig = Arc<RwLock<Arc<rustls::ClientConfig>>>;

/// Builds the client TLS config: trust `roots`, accept only `server_id`, and present the node
/// SVID from `cert` if there is one.
///
/// # Errors
/// Empty roots or an unusable certificate.
pub fn client_config(
    roots: &[Vec<u8>],
    server_id: &SpiffeId,
    cert: Option<Arc<RotatingCert>>,
) -> Result<Arc<rustls::ClientConfig>, agentmesh_tls::TlsError> {
    let roots: Vec<CertificateDer<'static>> = roots
        .iter()
        .map(|r| CertificateDer::from(r.clone()))
        .collect();
    let server = agentmesh_tls::exact([server_id.clone()]);
    match cert {
        Some(cert) => agentmesh_tls::client_config_rotating(cert, &roots, server, &[b"h2"]),
        None => agentmesh_tls::client_config(None, &roots, server, &[b"h2"]),
    }
}

/// A lazily connecting gRPC client of the node API. It reconnects by itself after the server
/// goes away, reading the TLS config afresh for every connection.
pub fn node_api_client(addr: &str, tls: SharedClientConfig) -> NodeApiClient<Channel> {
    let addr = addr.to_owned();
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|_| Endpoint::from_static("http://agentmesh-server"))
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
        let cfg = tls.read().unwrap_or_else(|e| e.into_inner()).clone();
        let addr = addr.clone();
        async move {
            let tcp = TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            // The name is not checked: the verifier pins the server's SPIFFE ID instead.
            let name = ServerName::try_from("agentmesh-server")
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let tls = TlsConnector::from(cfg).connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    }));
    NodeApiClient::new(channel)
        .max_decoding_message_size(agentmesh_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(agentmesh_proto::MAX_MESSAGE_BYTES)
}

/// A short description of a gRPC failure, with the transport cause when there is one.
pub fn describe(status: &tonic::Status) -> String {
    let mut s = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        s.push_str(&format!(": {e}"));
        source = e.source();
    }
    s
}
