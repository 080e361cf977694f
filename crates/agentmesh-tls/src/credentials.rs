//! The X509-SVID and private key a workload presents.

use std::fmt;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Why DER input could not become [`SvidCredentials`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// No certificate at all was given.
    #[error("svid certificate chain is empty; expected the leaf first, then any intermediates")]
    EmptyChain,
    /// A certificate in the chain had no bytes.
    #[error("svid certificate chain entry {index} is empty")]
    EmptyCertificate {
        /// Position in the chain, leaf = 0.
        index: usize,
    },
    /// The private key had no bytes.
    #[error("svid private key is empty; expected a pkcs#8 der key")]
    EmptyKey,
}

/// An X509-SVID chain (leaf first) and its private key.
pub struct SvidCredentials {
    /// Leaf SVID first, then intermediates up to (not including) the root.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl SvidCredentials {
    /// Builds credentials from a DER chain (leaf first) and a PKCS#8 DER key.
    ///
    /// Whether the key matches the leaf is checked when a config or
    /// [`RotatingCert`](crate::RotatingCert) is built, since that needs the crypto provider.
    ///
    /// # Errors
    /// An empty chain, an empty certificate or an empty key.
    pub fn from_der(chain: &[Vec<u8>], pkcs8_key: &[u8]) -> Result<Self, CredentialsError> {
        if chain.is_empty() {
            return Err(CredentialsError::EmptyChain);
        }
        if let Some(index) = chain.iter().position(Vec::is_empty) {
            return Err(CredentialsError::EmptyCertificate { index });
        }
        if pkcs8_key.is_empty() {
            return Err(CredentialsError::EmptyKey);
        }
        Ok(Self {
            chain: chain
                .iter()
                .map(|der| CertificateDer::from(der.clone()))
                .collect(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8_key.to_vec())),
        })
    }
}

impl Clone for SvidCredentials {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for SvidCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key must never reach logs, so only its presence is shown.
        f.debug_struct("SvidCredentials")
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_key() {
        let creds = SvidCredentials::from_der(&[vec![1, 2, 3]], &[0xde, 0xad, 0xbe, 0xef]).unwrap();
        let shown = format!("{creds:?}");
        assert!(shown.contains("redacted"));
        // 0xde = 222, 0xad = 173: neither the bytes nor their hex may appear.
        assert!(!shown.contains("222") && !shown.contains("173"));
        assert!(!shown.contains("dead"));
    }

    #[test]
    fn rejects_empty_inputs() {
        assert_eq!(
            SvidCredentials::from_der(&[], &[1]).unwrap_err(),
            CredentialsError::EmptyChain
        );
        assert_eq!(
            SvidCredentials::from_der(&[vec![1], vec![]], &[1]).unwrap_err(),
            CredentialsError::EmptyCertificate { index: 1 }
        );
        assert_eq!(
            SvidCredentials::from_der(&[vec![1]], &[]).unwrap_err(),
            CredentialsError::EmptyKey
        );
    }
}
