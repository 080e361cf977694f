//! rustls server and client configs built from an [`X509Source`]: TLS 1.3 only, peers
//! verified against the source's trust bundle and then authorized by SPIFFE ID.
//!
//! A rotated SVID needs no rebuild (the configs present whatever the source holds now); a
//! changed trust bundle does, so [`ServerTls`] and [`ClientTls`] keep the config for the
//! current bundle revision and rebuild it when the revision moves.

use std::sync::{Arc, Mutex, PoisonError};

use agentmesh_tls::{Authorizer, ClientAuth};
use rustls::{ClientConfig, ServerConfig};

use crate::source::X509Source;

/// The ALPN protocols HTTP servers and clients offer: HTTP/2 first, then HTTP/1.1.
///
/// # Examples
/// ```
/// assert_eq!(agentmesh_sdk::tls::ALPN_HTTP[0], b"h2");
/// ```
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The ALPN protocol gRPC runs on.
///
/// # Examples
/// ```
/// assert_eq!(agentmesh_sdk::tls::ALPN_GRPC, &[b"h2"]);
/// ```
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];

/// How long a TCP connect plus TLS handshake may take, on either side. Without it a peer that
/// opens a connection and never finishes the handshake would hold a task forever.
///
/// # Examples
/// ```
/// assert_eq!(agentmesh_sdk::tls::HANDSHAKE_TIMEOUT.as_secs(), 10);
/// ```
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a TLS config could not be built from the source.
///
/// # Examples
/// ```
/// use agentmesh_sdk::tls::{ServerTls, ALPN_HTTP};
/// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
/// let (svid, _) = ca.svid("spiffe://example.org/api");
/// // An empty bundle trusts nobody, so no config is built.
/// let source = std::sync::Arc::new(agentmesh_sdk::X509Source::from_svid(svid, vec![]).unwrap());
/// let err = ServerTls::new(source, agentmesh_tls::any_id(), ALPN_HTTP).config().unwrap_err();
/// assert!(err.to_string().contains("no root"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// The SVID or bundle could not make a rustls config (for example an empty bundle).
    #[error("building a tls config from the x509 source: {0}")]
    Tls(#[from] agentmesh_tls::TlsError),
}

type Cache<T> = Mutex<Option<(u64, Arc<T>)>>;

/// The roots that vouch for the own trust domain: the bundle alone when the federated ones
/// are kept apart by trust domain, else (roots given by hand) all of them.
fn own_roots(ctx: &crate::X509Context) -> &[rustls::pki_types::CertificateDer<'static>] {
    if ctx.federation.trust_domain.is_some() {
        &ctx.bundle
    } else {
        &ctx.roots
    }
}

fn cached<T>(
    cache: &Cache<T>,
    revision: u64,
    build: impl FnOnce() -> Result<Arc<T>, TlsConfigError>,
) -> Result<Arc<T>, TlsConfigError> {
    let mut slot = cache.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((rev, config)) = slot.as_ref()
        && *rev == revision
    {
        return Ok(Arc::clone(config));
    }
    let config = build()?;
    *slot = Some((revision, Arc::clone(&config)));
    Ok(config)
}

/// Server configs for one source: clients must present an SVID that chains to the bundle
/// and that `clients` admits.
///
/// # Examples
/// ```
/// use agentmesh_sdk::tls::{ServerTls, ALPN_HTTP};
/// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
/// let source = ca.source("spiffe://example.org/api");
/// let tls = ServerTls::new(source, agentmesh_tls::any_id(), ALPN_HTTP);
/// let config = tls.config().unwrap();
/// assert_eq!(config.alpn_protocols[0], b"h2");
/// ```
#[derive(Debug)]
pub struct ServerTls {
    source: Arc<X509Source>,
    clients: Arc<dyn Authorizer>,
    alpn: Vec<Vec<u8>>,
    cache: Cache<ServerConfig>,
}

impl ServerTls {
    /// Server configs that require a client SVID admitted by `clients`.
    ///
    /// # Examples
    /// ```
    /// use agentmesh_sdk::tls::{ServerTls, ALPN_GRPC};
    /// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
    /// let clients = agentmesh_tls::member_of("example.org".parse().unwrap());
    /// let tls = ServerTls::new(ca.source("spiffe://example.org/api"), clients, ALPN_GRPC);
    /// # let _ = tls;
    /// ```
    pub fn new(source: Arc<X509Source>, clients: Arc<dyn Authorizer>, alpn: &[&[u8]]) -> Self {
        Self {
            source,
            clients,
            alpn: alpn.iter().map(|p| p.to_vec()).collect(),
            cache: Mutex::new(None),
        }
    }

    /// The config for the current trust bundle.
    ///
    /// # Errors
    /// [`TlsConfigError::Tls`], for example when the bundle is empty.
    ///
    /// # Examples
    /// ```
    /// use agentmesh_sdk::tls::{ServerTls, ALPN_HTTP};
    /// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
    /// let tls = ServerTls::new(ca.source("spiffe://example.org/api"), agentmesh_tls::any_id(), ALPN_HTTP);
    /// let acceptor = tokio_rustls::TlsAcceptor::from(tls.config().unwrap());
    /// # let _ = acceptor;
    /// ```
    pub fn config(&self) -> Result<Arc<ServerConfig>, TlsConfigError> {
        let ctx = self.source.current();
        cached(&self.cache, ctx.roots_revision, || {
            let alpn: Vec<&[u8]> = self.alpn.iter().map(Vec::as_slice).collect();
            Ok(agentmesh_tls::server_config_federated(
                self.source.rotating_cert(),
                own_roots(&ctx),
                &ctx.federation,
                ClientAuth::Required(Arc::clone(&self.clients)),
                &alpn,
            )?)
        })
    }
}

/// Client configs for one source: the client presents its SVID and accepts only a server
/// whose SVID chains to the bundle and that `server` admits (pin one ID with
/// `agentmesh_tls::exact([id])`).
///
/// # Examples
/// ```
/// use agentmesh_sdk::tls::{ClientTls, ALPN_HTTP};
/// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
/// let server = agentmesh_tls::exact(["spiffe://example.org/api".parse().unwrap()]);
/// let tls = ClientTls::new(ca.source("spiffe://example.org/cli"), server, ALPN_HTTP);
/// assert!(tls.config().is_ok());
/// ```
#[derive(Debug)]
pub struct ClientTls {
    source: Arc<X509Source>,
    server: Arc<dyn Authorizer>,
    alpn: Vec<Vec<u8>>,
    cache: Cache<ClientConfig>,
}

impl ClientTls {
    /// Client configs that accept only servers `server` admits.
    ///
    /// # Examples
    /// ```
    /// use agentmesh_sdk::tls::{ClientTls, ALPN_GRPC};
    /// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
    /// let tls = ClientTls::new(ca.source("spiffe://example.org/cli"), agentmesh_tls::any_id(), ALPN_GRPC);
    /// # let _ = tls;
    /// ```
    pub fn new(source: Arc<X509Source>, server: Arc<dyn Authorizer>, alpn: &[&[u8]]) -> Self {
        Self {
            source,
            server,
            alpn: alpn.iter().map(|p| p.to_vec()).collect(),
            cache: Mutex::new(None),
        }
    }

    /// The config for the current trust bundle.
    ///
    /// # Errors
    /// [`TlsConfigError::Tls`], for example when the bundle is empty.
    ///
    /// # Examples
    /// ```
    /// use agentmesh_sdk::tls::{ClientTls, ALPN_HTTP};
    /// let ca = agentmesh_sdk::testing::TestCa::new("example.org");
    /// let tls = ClientTls::new(ca.source("spiffe://example.org/cli"), agentmesh_tls::any_id(), ALPN_HTTP);
    /// let connector = tokio_rustls::TlsConnector::from(tls.config().unwrap());
    /// # let _ = connector;
    /// ```
    pub fn config(&self) -> Result<Arc<ClientConfig>, TlsConfigError> {
        let ctx = self.source.current();
        cached(&self.cache, ctx.roots_revision, || {
            let alpn: Vec<&[u8]> = self.alpn.iter().map(Vec::as_slice).collect();
            Ok(agentmesh_tls::client_config_federated(
                self.source.rotating_cert(),
                own_roots(&ctx),
                &ctx.federation,
                Arc::clone(&self.server),
                &alpn,
            )?)
        })
    }
}
