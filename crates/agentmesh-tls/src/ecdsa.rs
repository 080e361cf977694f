//! Low-S ECDSA P-256 signatures for everything this project signs (JWT-SVIDs, JWS, user
//! tokens, delegation links).
//!
//! An ECDSA signature `(r, s)` is malleable: `(r, n - s)` verifies just as well, where `n` is
//! the curve order. *ring* neither normalises the `s` it produces nor refuses a high `s` when
//! verifying, so a token's signature bytes are not unique and must never be used as its
//! identity (replay caches key on `jti`). Our own signers still emit the canonical low-S form
//! (`s <= n/2`, as Bitcoin's BIP 62 and many JOSE libraries do) so that a strict verifier
//! elsewhere accepts them. Verification stays lenient: tokens from other issuers (SPIRE
//! JWT-SVIDs, OIDC id_tokens) may carry a high `s`, which their specifications allow.
//!
//! # Examples
//! ```
//! use ring::rand::SystemRandom;
//! use ring::signature::{EcdsaKeyPair, KeyPair as _, UnparsedPublicKey,
//!     ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING};
//! let rng = SystemRandom::new();
//! let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
//! let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).unwrap();
//! let sig = agentmesh_tls::ecdsa::sign_p256_low_s(&pair, b"hello").unwrap();
//! assert!(agentmesh_tls::ecdsa::is_low_s(&sig));
//! UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, pair.public_key().as_ref())
//!     .verify(b"hello", &sig).unwrap();
//! ```

use ring::rand::SystemRandom;
use ring::signature::EcdsaKeyPair;

/// The order `n` of the P-256 group, big-endian.
pub const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// `floor(n / 2)` for P-256, big-endian: the largest low `s`.
const P256_HALF_ORDER: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
];

/// The length of a fixed (`r || s`) P-256 signature, as JOSE's ES256 uses.
pub const P256_FIXED_SIGNATURE_LEN: usize = 64;

/// Why a signature could not be made or normalised.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EcdsaError {
    /// *ring* refused to sign (the system RNG failed).
    #[error("ECDSA P-256 signing failed")]
    Sign,
    /// The signature is not 64 bytes of `r || s`.
    #[error("an ES256 signature is {P256_FIXED_SIGNATURE_LEN} bytes (r || s), not {0}")]
    BadLength(usize),
}

/// `a - b` for 256-bit big-endian unsigned integers with `a >= b` (the caller guarantees it:
/// `n - s` with `s < n`).
fn sub_be(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut borrow = 0u16;
    for i in (0..32).rev() {
        let lhs = u16::from(a[i]);
        let rhs = u16::from(b[i]) + borrow;
        if lhs >= rhs {
            out[i] = (lhs - rhs) as u8;
            borrow = 0;
        } else {
            out[i] = (lhs + 256 - rhs) as u8;
            borrow = 1;
        }
    }
    out
}

fn s_of(sig: &[u8]) -> Result<[u8; 32], EcdsaError> {
    if sig.len() != P256_FIXED_SIGNATURE_LEN {
        return Err(EcdsaError::BadLength(sig.len()));
    }
    let mut s = [0u8; 32];
    s.copy_from_slice(&sig[32..]);
    Ok(s)
}

/// Whether a fixed P-256 signature has `s <= n/2`. Not 64 bytes: `false`.
///
/// # Examples
/// ```
/// let mut sig = [0u8; 64];
/// sig[63] = 1;
/// assert!(agentmesh_tls::ecdsa::is_low_s(&sig));
/// ```
pub fn is_low_s(sig: &[u8]) -> bool {
    // Big-endian byte arrays of equal length compare like the numbers they hold.
    s_of(sig).is_ok_and(|s| s <= P256_HALF_ORDER)
}

/// The other valid signature for the same message and key: `(r, n - s)`. A high `s` becomes
/// low and a low one high; tests use it to forge the malleated twin of a token.
///
/// # Errors
/// [`EcdsaError::BadLength`] if `sig` is not 64 bytes.
///
/// # Examples
/// ```
/// let mut sig = [0u8; 64];
/// sig[63] = 1;
/// let twin = agentmesh_tls::ecdsa::mirror_s(&sig).unwrap();
/// assert!(!agentmesh_tls::ecdsa::is_low_s(&twin));
/// assert_eq!(agentmesh_tls::ecdsa::mirror_s(&twin).unwrap(), sig);
/// ```
pub fn mirror_s(sig: &[u8]) -> Result<[u8; P256_FIXED_SIGNATURE_LEN], EcdsaError> {
    let s = s_of(sig)?;
    let mut out = [0u8; P256_FIXED_SIGNATURE_LEN];
    out[..32].copy_from_slice(&sig[..32]);
    out[32..].copy_from_slice(&sub_be(&P256_ORDER, &s));
    Ok(out)
}

/// `sig` in its low-S form: unchanged if `s <= n/2`, else `(r, n - s)`.
///
/// # Errors
/// [`EcdsaError::BadLength`] if `sig` is not 64 bytes.
///
/// # Examples
/// ```
/// let mut high = [0u8; 64];
/// high[32..].copy_from_slice(&agentmesh_tls::ecdsa::P256_ORDER);
/// high[63] -= 1; // s = n - 1
/// let low = agentmesh_tls::ecdsa::to_low_s(&high).unwrap();
/// assert_eq!(low[63], 1);
/// ```
pub fn to_low_s(sig: &[u8]) -> Result<[u8; P256_FIXED_SIGNATURE_LEN], EcdsaError> {
    if is_low_s(sig) {
        let mut out = [0u8; P256_FIXED_SIGNATURE_LEN];
        out.copy_from_slice(sig);
        return Ok(out);
    }
    mirror_s(sig)
}

/// Signs `message` with a P-256 key made for `ECDSA_P256_SHA256_FIXED_SIGNING` and returns
/// the low-S `r || s`. Every signer in this project goes through here.
///
/// # Errors
/// [`EcdsaError::Sign`] if *ring* fails, [`EcdsaError::BadLength`] if the key was made for
/// the ASN.1 signature format.
///
/// # Examples
/// See the module docs.
pub fn sign_p256_low_s(
    pair: &EcdsaKeyPair,
    message: &[u8],
) -> Result<[u8; P256_FIXED_SIGNATURE_LEN], EcdsaError> {
    let sig = pair
        .sign(&SystemRandom::new(), message)
        .map_err(|_| EcdsaError::Sign)?;
    to_low_s(sig.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{
        ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, KeyPair as _, UnparsedPublicKey,
    };

    fn hex(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn subtraction_matches_known_vectors() {
        let one = hex("0000000000000000000000000000000000000000000000000000000000000001");
        let n_minus_one = hex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632550");
        assert_eq!(sub_be(&P256_ORDER, &one), n_minus_one);
        assert_eq!(sub_be(&P256_ORDER, &n_minus_one), one);
        // A borrow that runs through many bytes: n - 2^128.
        let two_128 = hex("0000000000000000000000000000000100000000000000000000000000000000");
        assert_eq!(
            sub_be(&P256_ORDER, &two_128),
            hex("ffffffff00000000fffffffffffffffebce6faada7179e84f3b9cac2fc632551")
        );
        // n = 2h + 1, so n - (h + 1) = h: the smallest high s maps to the largest low one.
        let h_plus_one = hex("7fffffff800000007fffffffffffffffde737d56d38bcf4279dce5617e3192a9");
        assert_eq!(sub_be(&P256_ORDER, &h_plus_one), P256_HALF_ORDER);
        assert_eq!(sub_be(&P256_ORDER, &P256_HALF_ORDER), h_plus_one);
    }

    #[test]
    fn half_order_is_the_boundary() {
        let mut sig = [0u8; 64];
        sig[32..].copy_from_slice(&P256_HALF_ORDER);
        assert!(is_low_s(&sig));
        sig[63] += 1;
        assert!(!is_low_s(&sig));
        assert!(!is_low_s(&sig[..63]));
        assert!(matches!(
            to_low_s(&sig[..10]),
            Err(EcdsaError::BadLength(10))
        ));
    }

    #[test]
    fn normalised_signatures_still_verify_and_their_twins_do_too() {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).unwrap();
        let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, pair.public_key().as_ref());
        let mut saw_high = false;
        // Half of ring's signatures have a high s; 64 tries miss one with probability 2^-64.
        for i in 0..64u32 {
            let msg = i.to_be_bytes();
            let raw = pair.sign(&rng, &msg).unwrap();
            let low = to_low_s(raw.as_ref()).unwrap();
            assert!(is_low_s(&low));
            public.verify(&msg, &low).unwrap();
            if !is_low_s(raw.as_ref()) {
                saw_high = true;
                assert_ne!(low.as_slice(), raw.as_ref());
                assert_eq!(mirror_s(&low).unwrap().as_slice(), raw.as_ref());
            }
            let ours = sign_p256_low_s(&pair, &msg).unwrap();
            assert!(is_low_s(&ours));
            public.verify(&msg, &ours).unwrap();
            // ring accepts the malleated twin: why nothing may key on signature bytes.
            public.verify(&msg, &mirror_s(&ours).unwrap()).unwrap();
        }
        assert!(saw_high, "ring produced no high-s signature in 64 tries");
    }
}
