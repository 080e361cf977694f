//! The frontend's own identity: its X.509-SVID, followed on the Workload API's FetchX509SVID
//! stream, whose key signs user tokens. After a rotation the previous key stays in the JWKS
//! until every token it signed has expired, so verifiers never see a valid token whose `kid`
//! has vanished. This is a small follower on agentmesh-proto; the SDK's X509Source can
//! replace [`follow`] without changing [`Keys`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use agentmesh_proto::workload::X509svidRequest;
use agentmesh_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use agentmesh_spiffe::SpiffeId;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};
use tokio::sync::watch;

/// Why an SVID could not be used for signing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The Workload API could not be reached or refused.
    #[error("Workload API at {0}: {1}")]
    WorkloadApi(PathBuf, String),
    /// The response held no SVID.
    #[error("the Workload API returned no X.509-SVID")]
    NoSvid,
    /// The SVID did not parse, or its key is not P-256 (user tokens are ES256).
    #[error("unusable SVID: {0}")]
    BadSvid(String),
    /// No SVID arrived in time at startup.
    #[error("no X.509-SVID from the Workload API at {0} after {1:?}")]
    Timeout(PathBuf, Duration),
    /// Signing failed.
    #[error("signing with key {0} failed")]
    Sign(String),
}

/// One SVID and its key, ready to sign.
pub struct SigningKey {
    /// The frontend's SPIFFE ID (the user token's `iss`).
    pub id: SpiffeId,
    /// RFC 7638 thumbprint of the public key: the `kid`.
    pub kid: String,
    /// The SVID chain, leaf first, DER.
    pub chain: Vec<Vec<u8>>,
    /// The SVID's serial (hex), for logs.
    pub serial: String,
    /// When the SVID expires.
    pub not_after: SystemTime,
    /// The trust bundle that came with the SVID (DER roots), for checking the agents'
    /// answer signatures.
    pub roots: Vec<Vec<u8>>,
    pair: EcdsaKeyPair,
    jwk: Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .field("kid", &self.kid)
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A signing key from an SVID chain (leaf first) and its PKCS#8 P-256 key.
    ///
    /// # Errors
    /// [`IdentityError::BadSvid`].
    pub fn from_der(chain: Vec<Vec<u8>>, pkcs8: &[u8]) -> Result<Self, IdentityError> {
        let bad = |e: &dyn std::fmt::Display| IdentityError::BadSvid(e.to_string());
        let leaf = chain.first().ok_or_else(|| bad(&"empty chain"))?;
        let id = agentmesh_tls::cert_spiffe_id(leaf).map_err(|e| bad(&e))?;
        let serial = agentmesh_tls::cert_serial_hex(leaf).map_err(|e| bad(&e))?;
        let (_, not_after) = agentmesh_tls::cert_validity(leaf).map_err(|e| bad(&e))?;
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|e| bad(&format!("the SVID key is not P-256 PKCS#8: {e}")))?;
        let point = pair.public_key().as_ref();
        let (x, y) = (
            URL_SAFE_NO_PAD.encode(&point[1..33]),
            URL_SAFE_NO_PAD.encode(&point[33..65]),
        );
        // RFC 7638: the members in lexicographic order, no spaces.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            canonical.as_bytes(),
        ));
        let x5c: Vec<String> = chain
            .iter()
            .map(|c| base64::engine::general_purpose::STANDARD.encode(c))
            .collect();
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
            "kid": kid, "use": "sig", "alg": "ES256", "x5c": x5c,
        });
        Ok(Self {
            id,
            kid,
            chain,
            serial,
            not_after,
            roots: Vec::new(),
            pair,
            jwk,
        })
    }

    /// Signs `input` (the JWS signing input) with ES256; the fixed-size r||s signature.
    ///
    /// # Errors
    /// [`IdentityError::Sign`].
    pub fn sign(&self, input: &[u8]) -> Result<Vec<u8>, IdentityError> {
        // Low-S: a strict verifier of user tokens elsewhere accepts them.
        agentmesh_tls::ecdsa::sign_p256_low_s(&self.pair, input)
            .map(|s| s.to_vec())
            .map_err(|_| IdentityError::Sign(self.kid.clone()))
    }

    /// The public JWK (with `x5c`).
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }
}

#[derive(Default)]
struct KeyState {
    current: Option<Arc<SigningKey>>,
    /// Retired keys and when they may leave the JWKS.
    retired: Vec<(Arc<SigningKey>, SystemTime)>,
}

/// The current signing key and the retired ones still in the JWKS.
pub struct Keys {
    state: Mutex<KeyState>,
    /// How long a retired key stays: the user-token lifetime plus clock skew.
    keep: Duration,
    ready: watch::Sender<bool>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

impl Keys {
    /// No key yet; retired keys stay `keep` after their rotation.
    pub fn new(keep: Duration) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(KeyState::default()),
            keep,
            ready: watch::channel(false).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KeyState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes `key` current, retiring the previous one (kept for `keep`).
    pub fn install(&self, key: SigningKey) {
        let now = SystemTime::now();
        {
            let mut st = self.lock();
            if st.current.as_ref().is_some_and(|c| c.kid == key.kid) {
                return;
            }
            tracing::info!(spiffe_id = %key.id, serial = %key.serial, kid = %key.kid, "frontend signing key updated");
            if let Some(prev) = st.current.take() {
                st.retired.push((prev, now + self.keep));
            }
            st.retired.retain(|(_, until)| *until > now);
            st.current = Some(Arc::new(key));
        }
        self.ready.send_replace(true);
    }

    /// The key new tokens are signed with.
    pub fn current(&self) -> Option<Arc<SigningKey>> {
        self.lock().current.clone()
    }

    /// The JWKS document: the current key and the retired ones still within `keep`.
    pub fn jwks(&self) -> Value {
        let now = SystemTime::now();
        let st = self.lock();
        let keys: Vec<&Value> = st
            .current
            .iter()
            .map(|k| k.jwk())
            .chain(
                st.retired
                    .iter()
                    .filter(|(_, until)| *until > now)
                    .map(|(k, _)| k.jwk()),
            )
            .collect();
        json!({ "keys": keys })
    }

    /// Waits until a key is installed.
    ///
    /// # Errors
    /// [`IdentityError::Timeout`] after `patience`.
    pub async fn wait_ready(&self, socket: &Path, patience: Duration) -> Result<(), IdentityError> {
        let mut rx = self.ready.subscribe();
        match tokio::time::timeout(patience, rx.wait_for(|r| *r)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(IdentityError::Timeout(socket.to_owned(), patience)),
        }
    }
}

/// Follows FetchX509SVID on `socket` for ever, installing each new SVID into `keys` and
/// reconnecting after failures; the last key stays in use while the Workload API is away.
pub async fn follow(keys: Arc<Keys>, socket: PathBuf) {
    let mut delay = Duration::from_millis(100);
    loop {
        if let Err(e) = follow_once(&keys, &socket).await {
            tracing::warn!(error = %e, "Workload API stream ended; keeping the current SVID and retrying");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn follow_once(keys: &Keys, socket: &Path) -> Result<(), IdentityError> {
    let err =
        |e: &dyn std::fmt::Display| IdentityError::WorkloadApi(socket.to_owned(), e.to_string());
    let channel = agentmesh_proto::unix::connect(socket)
        .await
        .map_err(|e| err(&e))?;
    let mut client = SpiffeWorkloadApiClient::new(channel)
        .max_decoding_message_size(agentmesh_proto::MAX_MESSAGE_BYTES);
    let mut req = tonic::Request::new(X509svidRequest {});
    req.metadata_mut().insert(
        agentmesh_proto::WORKLOAD_API_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    let mut stream = client
        .fetch_x509svid(req)
        .await
        .map_err(|s| err(&s.message()))?
        .into_inner();
    loop {
        match stream.message().await {
            Ok(Some(resp)) => {
                let key = resp
                    .svids
                    .first()
                    .ok_or(IdentityError::NoSvid)
                    .and_then(|svid| {
                        let chain = agentmesh_tls::split_der_certs(&svid.x509_svid)
                            .map_err(|e| IdentityError::BadSvid(e.to_string()))?;
                        let mut key = SigningKey::from_der(chain, &svid.x509_svid_key)?;
                        key.roots = agentmesh_tls::split_der_certs(&svid.bundle)
                            .map_err(|e| IdentityError::BadSvid(e.to_string()))?;
                        Ok(key)
                    });
                match key {
                    Ok(key) => keys.install(key),
                    Err(e) => tracing::error!(error = %e, "ignoring an unusable SVID update"),
                }
            }
            Ok(None) => return Err(err(&"the stream ended")),
            Err(s) => return Err(err(&format!("{:?}: {}", s.code(), s.message()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_ca::{Authority, CsrPublicKey, PrivateKey, new_intermediate, new_root};
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
    use std::time::{Duration, SystemTime};

    #[test]
    fn user_token_signatures_are_low_s_and_verify() {
        let td: agentmesh_spiffe::TrustDomain = "agentmesh.local".parse().unwrap();
        let (now, hour) = (SystemTime::now(), Duration::from_secs(3600));
        let root_key = PrivateKey::generate().unwrap();
        let root = new_root(&td, &root_key, hour, now).unwrap();
        let int_key = PrivateKey::generate().unwrap();
        let int = new_intermediate(&td, &int_key, hour, now, &root, &root_key).unwrap();
        let ca = Authority::new(&td, int, int_key).unwrap();
        let key = PrivateKey::generate().unwrap();
        let public = CsrPublicKey::from_spki_der(&key.public_key_der()).unwrap();
        let id = "spiffe://agentmesh.local/ns/default/sa/frontend"
            .parse()
            .unwrap();
        let svid = ca.mint_x509_svid(&id, &public, hour, &[], now).unwrap();
        let signing = SigningKey::from_der(svid.chain, &key.pkcs8_der()).unwrap();
        let point = signing.pair.public_key().as_ref().to_vec();
        // Half of ring's raw signatures are high-S: 32 low ones in a row are not luck.
        for i in 0..32u8 {
            let sig = signing.sign(&[i]).unwrap();
            assert!(agentmesh_tls::ecdsa::is_low_s(&sig));
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
                .verify(&[i], &sig)
                .unwrap();
        }
    }
}
