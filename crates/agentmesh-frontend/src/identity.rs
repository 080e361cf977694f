//! The frontend's own identity: its X.509-SVID, followed on the Workload API's FetchX509SVID
//! stream, whose key signs user tokens. After a rotation the previous key stays in the JWKS
//! until every token it signed has expired, so verifiers never see a valid token whose `kid`
//! has vanished. The SVID is followed by the SDK's [`X509Source`]; [`follow`] turns each
//! version into a [`SigningKey`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use agentmesh_sdk::X509Context;
use agentmesh_sdk::X509Source;
use agentmesh_spiffe::SpiffeId;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};

/// Why an SVID could not be used for signing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The SVID did not parse, or its key is not P-256 (user tokens are ES256).
    #[error("unusable SVID: {0}")]
    BadSvid(String),
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

    /// A signing key from one version of the source's identity, with the roots of its own
    /// trust domain (not the federated ones: only this mesh's agents sign answers).
    ///
    /// # Errors
    /// [`IdentityError::BadSvid`].
    pub fn from_context(ctx: &X509Context) -> Result<Self, IdentityError> {
        let chain = ctx.svid.chain.iter().map(|c| c.to_vec()).collect();
        let mut key = Self::from_der(chain, ctx.svid.private_key_pkcs8_der())?;
        key.roots = ctx.bundle.iter().map(|c| c.to_vec()).collect();
        Ok(key)
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
}

/// Installs the source's SVID into `keys` now, so tokens can be signed before the first
/// update arrives.
///
/// # Errors
/// [`IdentityError::BadSvid`] if the SVID's key cannot sign user tokens (not P-256).
pub fn install_current(keys: &Keys, source: &X509Source) -> Result<(), IdentityError> {
    keys.install(SigningKey::from_context(&source.current())?);
    Ok(())
}

/// Installs every SVID `source` holds, now and after each rotation, into `keys`, until the
/// task running it is aborted (which drops `source` and so stops following the Workload API).
/// The source keeps the last SVID while the Workload API is away and reconnects on its own.
pub async fn follow(keys: Arc<Keys>, source: Arc<X509Source>) {
    let mut changes = source.watch();
    loop {
        // The current version first: a rotation between startup and this task is not missed,
        // and installing the same key twice is a no-op.
        let ctx = changes.borrow_and_update().clone();
        match SigningKey::from_context(&ctx) {
            Ok(key) => keys.install(key),
            Err(e) => tracing::error!(error = %e, "ignoring an unusable SVID update"),
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_ca::{Authority, CsrPublicKey, PrivateKey, new_intermediate, new_root};
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
    use std::time::{Duration, SystemTime};

    #[tokio::test]
    async fn follow_installs_each_rotation_and_keeps_the_previous_key_in_the_jwks() {
        let ca = agentmesh_sdk::testing::TestCa::new("example.org");
        let id = "spiffe://example.org/ns/default/sa/frontend";
        let source = ca.source(id);
        let keys = Keys::new(Duration::from_secs(360));
        install_current(&keys, &source).unwrap();
        let first = keys.current().unwrap();
        assert_eq!(
            first.roots,
            ca.roots().iter().map(|r| r.to_vec()).collect::<Vec<_>>()
        );
        let follower = tokio::spawn(follow(keys.clone(), source.clone()));
        let (next, roots) = ca.svid(id);
        let serial = next.serial.clone();
        source.update(next, roots).unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while keys.current().unwrap().serial != serial {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the rotation was not installed");
        assert_eq!(keys.jwks()["keys"].as_array().unwrap().len(), 2);
        follower.abort();
    }

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
