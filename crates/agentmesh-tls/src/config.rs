//! TLS 1.3-only rustls configurations for mesh servers and clients.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, InconsistentKeys, ServerConfig, SignatureScheme};

use crate::authorize::Authorizer;
use crate::credentials::SvidCredentials;
use crate::verifier::{Federation, SpiffeClientVerifier, SpiffeServerVerifier, VerifierError};

/// Why a TLS configuration or certificate resolver could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// No trust bundle roots were given; every peer would fail, so fail now instead.
    #[error(
        "trust bundle has no root certificates; refusing to build a tls config that trusts nothing"
    )]
    NoRoots,
    /// The SVID chain is empty.
    #[error("svid certificate chain is empty; expected the leaf first")]
    EmptyChain,
    /// The private key is not the leaf certificate's key.
    #[error("svid private key does not match the public key of the leaf certificate")]
    KeyMismatch,
    /// The key or certificate could not be loaded.
    #[error("svid credentials are unusable: {0}")]
    Credentials(#[source] rustls::Error),
    /// The trust bundle could not be turned into a verifier.
    #[error("building the peer verifier: {0}")]
    Verifier(#[from] VerifierError),
    /// rustls refused the protocol setup itself.
    #[error("building the rustls config: {0}")]
    Rustls(#[source] rustls::Error),
}

/// How a server treats client certificates.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// Every client must present an SVID that verifies and that the authorizer admits.
    Required(Arc<dyn Authorizer>),
    /// Clients may omit a certificate (e.g. before attestation), but one that is
    /// presented must verify and be admitted just as in `Required`.
    Optional(Arc<dyn Authorizer>),
    /// No client certificate is requested.
    None,
}

fn load_key(creds: &SvidCredentials, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    if creds.chain.is_empty() {
        return Err(TlsError::EmptyChain);
    }
    CertifiedKey::from_der(creds.chain.clone(), creds.key.clone_key(), provider).map_err(|err| {
        match err {
            rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => TlsError::KeyMismatch,
            other => TlsError::Credentials(other),
        }
    })
}

// Resumption is off on both sides: a resumed session skips chain and authorizer
// checks, so it could outlive a short-lived SVID and would keep presenting the
// pre-rotation certificate. Mesh connections are long-lived, so a full handshake
// per connection costs little.
fn finish_server(mut config: ServerConfig, alpn: &[&[u8]]) -> Arc<ServerConfig> {
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

fn finish_client(mut config: ClientConfig, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

fn server_builder(
    provider: Arc<CryptoProvider>,
    roots: &[CertificateDer<'static>],
    federation: &Federation,
    client_auth: ClientAuth,
) -> Result<rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert>, TlsError> {
    // Checked in every mode, even `None`, so a missing bundle is caught where the
    // config is built rather than on the first authenticated connection.
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let verifier: Arc<dyn ClientCertVerifier> = match client_auth {
        ClientAuth::Required(authz) => Arc::new(SpiffeClientVerifier::federated(
            roots, federation, authz, true,
        )?),
        ClientAuth::Optional(authz) => Arc::new(SpiffeClientVerifier::federated(
            roots, federation, authz, false,
        )?),
        ClientAuth::None => Arc::new(rustls::server::NoClientAuth),
    };
    Ok(ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Rustls)?
        .with_client_cert_verifier(verifier))
}

fn client_builder(
    provider: Arc<CryptoProvider>,
    roots: &[CertificateDer<'static>],
    federation: &Federation,
    server: Arc<dyn Authorizer>,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, TlsError> {
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let verifier = SpiffeServerVerifier::federated(roots, federation, server)?;
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Rustls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier)))
}

/// A TLS 1.3-only server config presenting `creds` and checking clients per `client_auth`.
///
/// # Errors
/// Empty or unusable `roots`, an empty chain, or a key that does not match the leaf.
pub fn server_config(
    creds: &SvidCredentials,
    roots: &[CertificateDer<'static>],
    client_auth: ClientAuth,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = crate::provider();
    let key = load_key(creds, &provider)?;
    let config = server_builder(provider, roots, &Federation::default(), client_auth)?
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
    Ok(finish_server(config, alpn))
}

/// Like [`server_config`], but presents whatever `cert` currently holds, so rotation
/// needs no rebuild. Roots stay fixed: rebuild the config when the bundle changes.
///
/// # Errors
/// Empty or unusable `roots`.
pub fn server_config_rotating(
    cert: Arc<RotatingCert>,
    roots: &[CertificateDer<'static>],
    client_auth: ClientAuth,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_federated(cert, roots, &Federation::default(), client_auth, alpn)
}

/// Like [`server_config_rotating`], also trusting clients of federated trust domains, each
/// only against its own trust domain's roots (see [`Federation`]).
///
/// # Errors
/// Empty or unusable `roots`.
pub fn server_config_federated(
    cert: Arc<RotatingCert>,
    roots: &[CertificateDer<'static>],
    federation: &Federation,
    client_auth: ClientAuth,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let config =
        server_builder(crate::provider(), roots, federation, client_auth)?.with_cert_resolver(cert);
    Ok(finish_server(config, alpn))
}

/// A TLS 1.3-only client config that verifies the server's SVID against `roots` and
/// asks `server` whether its ID is acceptable. The server name passed at connect time
/// is ignored for verification. With `creds == None` no client certificate is sent.
///
/// # Errors
/// Empty or unusable `roots`, an empty chain, or a key that does not match the leaf.
pub fn client_config(
    creds: Option<&SvidCredentials>,
    roots: &[CertificateDer<'static>],
    server: Arc<dyn Authorizer>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = crate::provider();
    let key = creds.map(|c| load_key(c, &provider)).transpose()?;
    let builder = client_builder(provider, roots, &Federation::default(), server)?;
    let config = match key {
        Some(key) => {
            builder.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)))
        }
        None => builder.with_no_client_auth(),
    };
    Ok(finish_client(config, alpn))
}

/// Like [`client_config`], but always presents whatever `cert` currently holds.
///
/// # Errors
/// Empty or unusable `roots`.
pub fn client_config_rotating(
    cert: Arc<RotatingCert>,
    roots: &[CertificateDer<'static>],
    server: Arc<dyn Authorizer>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_federated(cert, roots, &Federation::default(), server, alpn)
}

/// Like [`client_config_rotating`], also trusting servers of federated trust domains, each
/// only against its own trust domain's roots (see [`Federation`]).
///
/// # Errors
/// Empty or unusable `roots`.
pub fn client_config_federated(
    cert: Arc<RotatingCert>,
    roots: &[CertificateDer<'static>],
    federation: &Federation,
    server: Arc<dyn Authorizer>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let config = client_builder(crate::provider(), roots, federation, server)?
        .with_client_cert_resolver(cert);
    Ok(finish_client(config, alpn))
}

/// The current SVID for long-lived configs; [`RotatingCert::update`] swaps it in place
/// and every later handshake presents the new one.
pub struct RotatingCert {
    current: RwLock<Arc<CertifiedKey>>,
    provider: Arc<CryptoProvider>,
}

impl RotatingCert {
    /// Starts out presenting `creds`.
    ///
    /// # Errors
    /// An empty chain, an unloadable key, or a key that does not match the leaf.
    pub fn new(creds: &SvidCredentials) -> Result<Self, TlsError> {
        let provider = crate::provider();
        let key = load_key(creds, &provider)?;
        Ok(Self {
            current: RwLock::new(Arc::new(key)),
            provider,
        })
    }

    /// Replaces the presented SVID. On error the previous one stays in use.
    ///
    /// # Errors
    /// An empty chain, an unloadable key, or a key that does not match the leaf.
    pub fn update(&self, creds: &SvidCredentials) -> Result<(), TlsError> {
        let key = Arc::new(load_key(creds, &self.provider)?);
        // A poisoned lock still holds a complete Arc (the write is a single move),
        // so recovering it is safe and keeps rotation working after a panic elsewhere.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = key;
        Ok(())
    }

    /// The SVID handshakes present right now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }
}

impl fmt::Debug for RotatingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is deliberately left out.
        f.debug_struct("RotatingCert")
            .field("chain_len", &self.current().cert.len())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for RotatingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for RotatingCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
