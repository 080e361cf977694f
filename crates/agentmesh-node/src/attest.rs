//! Node attestation: buying a node SVID from the server with a one-time join token, or with
//! x509pop, proving possession of the key of a certificate that chains to a CA the server
//! trusts. x509pop can attest again whenever the node needs a new SVID and cannot renew its
//! own (a restart after it expired, or a long partition).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentmesh_proto::v1::{AttestJoinTokenRequest, AttestX509PopRequest, NodeSvidResponse};
use agentmesh_spiffe::{SpiffeId, TrustDomain};
use agentmesh_tls::x509pop::PopKey;

use crate::manager::{ManagerError, NodeSvid};
use crate::server_client;

/// How long a first attestation keeps retrying an unreachable server.
const ATTEST_PATIENCE: Duration = Duration::from_secs(15);

/// Why the node could not attest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestationError {
    /// An x509pop certificate or key file is unusable.
    #[error("{flag} {path}: {reason}")]
    X509PopFile {
        /// `--x509pop-cert` or `--x509pop-key`.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The server refused.
    #[error("attestation refused by the server: {0}")]
    Refused(String),
    /// The server could not be reached.
    #[error("cannot reach the server at {0} to attest: {1}")]
    Unreachable(String, String),
    /// The server answered out of turn.
    #[error("the server broke the x509pop exchange: {0}")]
    Protocol(&'static str),
    /// The x509pop key could not sign the challenge.
    #[error("signing the x509pop challenge: {0}")]
    Sign(agentmesh_tls::x509pop::X509PopError),
    /// Making the node's key or CSR, or checking the SVID, failed.
    #[error(transparent)]
    Manager(#[from] ManagerError),
}

/// The node's x509pop certificate chain and key, checked to belong together.
#[derive(Debug, Clone)]
pub struct X509PopCredentials {
    chain: Vec<Vec<u8>>,
    key: PopKey,
}

impl X509PopCredentials {
    /// Reads `cert` (PEM: the node certificate, then any intermediates) and `key` (PEM), and
    /// checks that the key is the certificate's.
    ///
    /// # Errors
    /// [`AttestationError::X509PopFile`] naming the flag, the file and what is wrong.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, AttestationError> {
        let file_err = |flag, path: &Path, reason: String| AttestationError::X509PopFile {
            flag,
            path: path.to_owned(),
            reason,
        };
        let cert_text = std::fs::read_to_string(cert)
            .map_err(|e| file_err("--x509pop-cert", cert, e.to_string()))?;
        let chain = agentmesh_tls::pem_decode_all(&cert_text, "CERTIFICATE")
            .map_err(|e| file_err("--x509pop-cert", cert, e.to_string()))?;
        agentmesh_tls::x509::parse_cert(&chain[0], "the node certificate")
            .map_err(|e| file_err("--x509pop-cert", cert, e.to_string()))?;
        let key_text = std::fs::read_to_string(key)
            .map_err(|e| file_err("--x509pop-key", key, e.to_string()))?;
        let pop = PopKey::from_pem(&key_text)
            .map_err(|e| file_err("--x509pop-key", key, e.to_string()))?;
        pop.check_matches(&chain[0]).map_err(|e| {
            file_err(
                "--x509pop-key",
                key,
                format!("{e} in --x509pop-cert {}", cert.display()),
            )
        })?;
        Ok(Self { chain, key: pop })
    }

    /// The node ID the server gives this certificate in `td`.
    pub fn node_id(&self, td: &TrustDomain) -> SpiffeId {
        agentmesh_tls::x509pop::node_id(td, &self.chain[0])
    }
}

/// A fresh node key and its CSR.
fn new_key() -> Result<(agentmesh_ca::PrivateKey, Vec<u8>), ManagerError> {
    let key = agentmesh_ca::PrivateKey::generate()?;
    let csr = agentmesh_ca::build_csr(&key)?;
    Ok((key, csr))
}

/// How one try at attesting failed.
enum Attempt {
    /// The server answered with an error (Unavailable: it could not be reached).
    Grpc(tonic::Status),
    /// Anything else, which another try would not change.
    Failed(AttestationError),
}

impl From<tonic::Status> for Attempt {
    fn from(s: tonic::Status) -> Self {
        Self::Grpc(s)
    }
}

/// Retries `call` while the server is unreachable, for up to [`ATTEST_PATIENCE`].
async fn with_patience<F, Fut>(
    server: &str,
    mut call: F,
) -> Result<NodeSvidResponse, AttestationError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<NodeSvidResponse, Attempt>>,
{
    let deadline = tokio::time::Instant::now() + ATTEST_PATIENCE;
    loop {
        match call().await {
            Ok(resp) => return Ok(resp),
            Err(Attempt::Failed(e)) => return Err(e),
            Err(Attempt::Grpc(s))
                if s.code() == tonic::Code::Unavailable
                    && tokio::time::Instant::now() < deadline =>
            {
                tracing::warn!(server, error = %server_client::describe(&s), "server unreachable; retrying attestation");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(Attempt::Grpc(s)) if s.code() == tonic::Code::Unavailable => {
                return Err(AttestationError::Unreachable(
                    server.to_owned(),
                    server_client::describe(&s),
                ));
            }
            Err(Attempt::Grpc(s)) => return Err(AttestationError::Refused(s.message().to_owned())),
        }
    }
}

/// A node API client without a client certificate, for attestation.
fn anonymous_client(
    server: &str,
    roots: &[Vec<u8>],
    server_id: &SpiffeId,
) -> Result<
    agentmesh_proto::v1::node_api_client::NodeApiClient<tonic::transport::Channel>,
    ManagerError,
> {
    let tls = server_client::client_config(roots, server_id, None)?;
    Ok(server_client::node_api_client(
        server,
        Arc::new(std::sync::RwLock::new(tls)),
    ))
}

/// Redeems a join token for a node SVID.
///
/// # Errors
/// The server refuses or stays unreachable, or what it sends does not verify.
pub async fn join_token(
    server: &str,
    token: &str,
    roots: &[Vec<u8>],
    server_id: &SpiffeId,
) -> Result<NodeSvid, AttestationError> {
    let client = anonymous_client(server, roots, server_id)?;
    let (key, csr) = new_key()?;
    let resp = with_patience(server, || {
        let mut client = client.clone();
        let req = AttestJoinTokenRequest {
            join_token: token.to_owned(),
            csr: csr.clone(),
        };
        async move { Ok(client.attest_join_token(req).await?.into_inner()) }
    })
    .await?;
    Ok(NodeSvid::from_response(resp, &key, roots)?)
}

/// Attests with x509pop: sends the certificate chain and a CSR, signs the server's challenge
/// with the certificate's key, and gets the node SVID.
///
/// # Errors
/// The server refuses (the message says why) or stays unreachable, or what it sends does not
/// verify.
pub async fn x509pop(
    server: &str,
    creds: &X509PopCredentials,
    roots: &[Vec<u8>],
    server_id: &SpiffeId,
) -> Result<NodeSvid, AttestationError> {
    let client = anonymous_client(server, roots, server_id)?;
    let (key, csr) = new_key()?;
    let resp = with_patience(server, || {
        x509pop_exchange(client.clone(), creds, csr.clone())
    })
    .await?;
    Ok(NodeSvid::from_response(resp, &key, roots)?)
}

/// One x509pop exchange.
async fn x509pop_exchange(
    mut client: agentmesh_proto::v1::node_api_client::NodeApiClient<tonic::transport::Channel>,
    creds: &X509PopCredentials,
    csr: Vec<u8>,
) -> Result<NodeSvidResponse, Attempt> {
    let protocol = |what| Attempt::Failed(AttestationError::Protocol(what));
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let hello = AttestX509PopRequest {
        cert_chain: creds.chain.clone(),
        csr: csr.clone(),
        ..Default::default()
    };
    if tx.send(hello).await.is_err() {
        return Err(protocol("the request stream closed"));
    }
    let mut answers = client
        .attest_x509_pop(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let challenge = answers
        .message()
        .await?
        .ok_or_else(|| protocol("no challenge"))?
        .challenge;
    if challenge.len() != agentmesh_tls::x509pop::CHALLENGE_LEN {
        return Err(protocol("a challenge of the wrong length"));
    }
    let message = agentmesh_tls::x509pop::challenge_message(&challenge, &csr);
    let (scheme, signature) = creds
        .key
        .sign(&message)
        .map_err(|e| Attempt::Failed(AttestationError::Sign(e)))?;
    let answer = AttestX509PopRequest {
        signature_scheme: u32::from(scheme),
        signature,
        ..Default::default()
    };
    if tx.send(answer).await.is_err() {
        return Err(protocol("the request stream closed"));
    }
    answers
        .message()
        .await?
        .and_then(|m| m.svid)
        .ok_or_else(|| protocol("no node SVID"))
}
