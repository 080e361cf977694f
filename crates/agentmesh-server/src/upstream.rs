//! The upstream authority: OpenBao (or Vault) PKI signs the server's intermediate CA, so the
//! root key lives only in OpenBao. The server generates the intermediate's key itself, sends
//! only a CSR to `POST /v1/{pki_mount}/root/sign-intermediate`, and puts OpenBao's root in the
//! trust bundle.
//!
//! Nothing here writes a file: [`UpstreamAuthority::sign`] returns the key and the signed
//! certificates, and the CA manager stores them only once everything has been checked.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use agentmesh_ca::PrivateKey;
use agentmesh_openbao::{OpenBao, OpenBaoError, Secret};
use agentmesh_spiffe::TrustDomain;

/// How the server authenticates to OpenBao.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenBaoAuth {
    /// A token read from a file (re-read at every signing, so it can be replaced in place).
    /// The dev setup: `bao server -dev` prints a root token.
    Token {
        /// The file holding the token.
        token_file: PathBuf,
    },
    /// AppRole: `POST /v1/auth/{mount}/login` with a role ID and a secret ID.
    AppRole {
        /// Where AppRole is mounted (default `approle`).
        mount: String,
        /// The role ID (not secret).
        role_id: String,
        /// The file holding the secret ID.
        secret_id_file: PathBuf,
    },
}

/// `[upstream_authority.openbao]` in the server's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenBaoUpstreamConfig {
    /// `http://host:port` or `https://…`.
    pub address: String,
    /// For https: the CA to trust (PEM); otherwise the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// Where the PKI secrets engine is mounted (default `pki`).
    pub pki_mount: String,
    /// How to log in.
    pub auth: OpenBaoAuth,
}

/// Why the upstream authority did not sign. Each variant names the config key to look at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The config is unusable before any call is made.
    #[error("upstream_authority.openbao.{field}: {source}")]
    Config {
        /// The key at fault.
        field: &'static str,
        /// Why.
        #[source]
        source: OpenBaoError,
    },
    /// A secret file could not be read, or is empty.
    #[error("upstream_authority.openbao.{field} {path}: {reason}")]
    SecretFile {
        /// `token_file` or `secret_id_file`.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// OpenBao could not be reached.
    #[error("upstream_authority.openbao.address: {0}")]
    Unreachable(#[source] OpenBaoError),
    /// Login was refused.
    #[error("upstream_authority.openbao.{field}: login refused: {source}")]
    Login {
        /// The key at fault (`role_id`, `secret_id_file`, `approle_mount`).
        field: &'static str,
        /// OpenBao's answer.
        #[source]
        source: OpenBaoError,
    },
    /// OpenBao refused to sign.
    #[error("upstream_authority.openbao.{field}: {source}{hint}")]
    Sign {
        /// The key at fault.
        field: &'static str,
        /// OpenBao's answer.
        #[source]
        source: OpenBaoError,
        /// What to check.
        hint: &'static str,
    },
    /// OpenBao signed something that is not a usable intermediate for us.
    #[error("the certificate OpenBao signed (mount {mount}) is unusable: {reason}")]
    BadCertificate {
        /// The PKI mount.
        mount: String,
        /// What is wrong.
        reason: String,
    },
    /// The key or the CSR could not be made.
    #[error("intermediate key: {0}")]
    Key(String),
}

impl UpstreamError {
    /// Whether OpenBao simply could not be reached (the case where the server keeps issuing
    /// from its current intermediate and retries), rather than refusing.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable(_))
    }
}

/// A freshly signed intermediate, not yet stored anywhere.
pub struct SignedIntermediate {
    /// Its key, generated here.
    pub key: PrivateKey,
    /// The intermediate certificate, DER.
    pub cert_der: Vec<u8>,
    /// OpenBao's own intermediates between ours and the root, nearest first (usually none).
    pub chain_tail: Vec<Vec<u8>>,
    /// The self-signed root(s) at the top of OpenBao's chain: what the bundle carries.
    pub roots: Vec<Vec<u8>>,
    /// When it was signed; the rotation clock starts here (OpenBao backdates not_before).
    pub signed_at: SystemTime,
}

impl std::fmt::Debug for SignedIntermediate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedIntermediate")
            .field("cert_bytes", &self.cert_der.len())
            .field("chain_tail", &self.chain_tail.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

/// The OpenBao client plus the settings it signs with.
#[derive(Debug, Clone)]
pub struct UpstreamAuthority {
    client: OpenBao,
    cfg: OpenBaoUpstreamConfig,
}

impl UpstreamAuthority {
    /// Checks the config (no network).
    ///
    /// # Errors
    /// [`UpstreamError::Config`] naming the key.
    pub fn new(cfg: OpenBaoUpstreamConfig) -> Result<Self, UpstreamError> {
        let client = OpenBao::new(&cfg.address, cfg.ca_file.as_deref()).map_err(|source| {
            let field = match source {
                OpenBaoError::CaFile { .. } => "ca_file",
                _ => "address",
            };
            UpstreamError::Config { field, source }
        })?;
        Ok(Self { client, cfg })
    }

    /// The OpenBao address, for logs.
    pub fn address(&self) -> &str {
        self.client.address()
    }

    /// The PKI mount, for logs.
    pub fn pki_mount(&self) -> &str {
        &self.cfg.pki_mount
    }

    async fn token(&self) -> Result<Secret, UpstreamError> {
        match &self.cfg.auth {
            OpenBaoAuth::Token { token_file } => read_secret(token_file, "token_file"),
            OpenBaoAuth::AppRole {
                mount,
                role_id,
                secret_id_file,
            } => {
                let secret_id = read_secret(secret_id_file, "secret_id_file")?;
                match self.client.login_approle(mount, role_id, &secret_id).await {
                    Ok(login) => Ok(login.token),
                    Err(e @ OpenBaoError::Unreachable { .. }) => Err(UpstreamError::Unreachable(e)),
                    Err(source) => {
                        // OpenBao says "invalid role or secret ID" for either; a missing
                        // route means the mount is wrong.
                        let field = match source.status() {
                            Some(403..=405) => "approle_mount",
                            _ => "role_id",
                        };
                        Err(UpstreamError::Login { field, source })
                    }
                }
            }
        }
    }

    /// Generates an intermediate key, has OpenBao sign it for `td` with `ttl`, and checks the
    /// answer: the certificate carries our key and `spiffe://<td>`, is a CA, and chains to a
    /// self-signed root.
    ///
    /// # Errors
    /// [`UpstreamError`]; nothing has been written anywhere.
    pub async fn sign(
        &self,
        td: &TrustDomain,
        ttl: Duration,
    ) -> Result<SignedIntermediate, UpstreamError> {
        let key = PrivateKey::generate().map_err(|e| UpstreamError::Key(e.to_string()))?;
        let csr = agentmesh_ca::build_csr(&key).map_err(|e| UpstreamError::Key(e.to_string()))?;
        let csr_pem = agentmesh_ca::pem_encode("CERTIFICATE REQUEST", &csr);
        let token = self.token().await?;
        let signed_at = SystemTime::now();
        let mount = &self.cfg.pki_mount;
        let answer = self
            .client
            .sign_intermediate(
                mount,
                &token,
                &csr_pem,
                &format!("agentmesh intermediate CA {td}"),
                &td.id_string(),
                ttl,
            )
            .await
            .map_err(|source| match source {
                OpenBaoError::Unreachable { .. } => UpstreamError::Unreachable(source),
                _ => {
                    let (field, hint) = match (source.status(), &self.cfg.auth) {
                        (Some(404), _) => (
                            "pki_mount",
                            " (is a PKI secrets engine mounted there, with a root CA?)",
                        ),
                        (Some(403), OpenBaoAuth::Token { .. }) => (
                            "token_file",
                            " (the token is invalid, or its policy does not allow update on <pki_mount>/root/sign-intermediate)",
                        ),
                        (Some(403), OpenBaoAuth::AppRole { .. }) => (
                            "role_id",
                            " (the role's policy does not allow update on <pki_mount>/root/sign-intermediate)",
                        ),
                        _ => ("pki_mount", ""),
                    };
                    UpstreamError::Sign {
                        field,
                        source,
                        hint,
                    }
                }
            })?;
        check_signed(mount, td, key, &answer, signed_at)
    }
}

fn read_secret(path: &std::path::Path, field: &'static str) -> Result<Secret, UpstreamError> {
    let err = |reason: String| UpstreamError::SecretFile {
        field,
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let t = text.trim();
    if t.is_empty() {
        return Err(err("the file is empty".to_owned()));
    }
    Ok(Secret::new(t))
}

fn pem_one(mount: &str, what: &str, pem: &str) -> Result<Vec<Vec<u8>>, UpstreamError> {
    agentmesh_ca::pem_decode_all(pem, "CERTIFICATE").map_err(|e| UpstreamError::BadCertificate {
        mount: mount.to_owned(),
        reason: format!("{what}: {e}"),
    })
}

fn is_self_signed(der: &[u8]) -> bool {
    use x509_parser::prelude::FromDer;
    x509_parser::certificate::X509Certificate::from_der(der)
        .is_ok_and(|(_, c)| c.subject() == c.issuer() && c.verify_signature(None).is_ok())
}

fn check_signed(
    mount: &str,
    td: &TrustDomain,
    key: PrivateKey,
    answer: &agentmesh_openbao::SignedIntermediate,
    signed_at: SystemTime,
) -> Result<SignedIntermediate, UpstreamError> {
    let bad = |reason: String| UpstreamError::BadCertificate {
        mount: mount.to_owned(),
        reason,
    };
    let cert_der = pem_one(mount, "certificate", &answer.certificate)?
        .into_iter()
        .next()
        .ok_or_else(|| bad("no certificate in data.certificate".to_owned()))?;
    // OpenBao's ca_chain holds the certificate itself, then its issuers up to the root. Older
    // Vaults leave the root out of it and give it only as issuing_ca.
    let mut above = Vec::new();
    for pem in &answer.ca_chain {
        above.extend(pem_one(mount, "ca_chain", pem)?);
    }
    above.extend(pem_one(mount, "issuing_ca", &answer.issuing_ca)?);
    let mut chain_tail = Vec::new();
    let mut roots = Vec::new();
    for der in above {
        if der == cert_der || chain_tail.contains(&der) || roots.contains(&der) {
            continue;
        }
        if is_self_signed(&der) {
            roots.push(der);
        } else {
            chain_tail.push(der);
        }
    }
    if roots.is_empty() {
        // The mount's CA was signed by something OpenBao does not show us; its top
        // certificate is then the best anchor we have.
        match chain_tail.pop() {
            Some(top) => roots.push(top),
            None => return Err(bad("no issuing CA in the answer".to_owned())),
        }
    }
    // Authority::new checks the key, the CA flag and the SPIFFE ID; verify_chain then checks
    // the signatures up to the root, exactly as nodes will.
    let copy = PrivateKey::from_pkcs8_der(&key.pkcs8_der())
        .map_err(|e| UpstreamError::Key(e.to_string()))?;
    let authority = agentmesh_ca::Authority::new(td, cert_der.clone(), copy)
        .map_err(|e| bad(e.to_string()))?
        .with_chain_tail(chain_tail.clone());
    let probe_key = PrivateKey::generate().map_err(|e| UpstreamError::Key(e.to_string()))?;
    let probe_csr =
        agentmesh_ca::build_csr(&probe_key).map_err(|e| UpstreamError::Key(e.to_string()))?;
    let pk = agentmesh_ca::verify_csr(&probe_csr).map_err(|e| UpstreamError::Key(e.to_string()))?;
    let probe_id = agentmesh_spiffe::SpiffeId::from_path(td, "/agentmesh/upstream-check")
        .map_err(|e| bad(e.to_string()))?;
    let now = SystemTime::now();
    let probe = authority
        .mint_x509_svid(&probe_id, &pk, Duration::from_secs(60), &[], now)
        .map_err(|e| bad(e.to_string()))?;
    agentmesh_tls::verify_chain(&probe.chain, &roots, now).map_err(|e| {
        bad(format!(
            "a test SVID does not verify up to OpenBao's root: {e}"
        ))
    })?;
    Ok(SignedIntermediate {
        key,
        cert_der,
        chain_tail,
        roots,
        signed_at,
    })
}
