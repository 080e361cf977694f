//! PEM, as certificate chains, bundles and keys are written to files and configs: only what
//! reading and writing a certificate needs, so that crates which only parse PEM do not pull in
//! the certificate authority and its signer.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Why a PEM text could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    /// A PEM block's body is not valid base64.
    #[error("PEM block '{label}' has malformed base64: {source}")]
    Base64 {
        /// The PEM label being decoded.
        label: String,
        /// The decoder's complaint.
        #[source]
        source: base64::DecodeError,
    },
    /// A `BEGIN` line without its `END` line.
    #[error("PEM block '{label}' has a BEGIN line but no matching END line")]
    Unterminated {
        /// The PEM label being decoded.
        label: String,
    },
    /// No block with the wanted label was found.
    #[error("no '-----BEGIN {label}-----' block found in the PEM text")]
    NoBlocks {
        /// The PEM label that was looked for.
        label: String,
    },
}

/// Encodes DER as a PEM block with 64-character lines and a trailing newline.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    // Base64 output is ASCII, so splitting by bytes never cuts a character.
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Decodes every PEM block labelled `label`, in order, skipping blocks with other labels.
///
/// # Errors
/// [`PemError::NoBlocks`] if there is none, [`PemError::Base64`] for a malformed body,
/// [`PemError::Unterminated`] for a block without its END line.
pub fn pem_decode_all(text: &str, label: &str) -> Result<Vec<Vec<u8>>, PemError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut blocks = Vec::new();
    let mut body: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        match body.as_mut() {
            None => {
                if line == begin {
                    body = Some(String::new());
                }
            }
            Some(b) => {
                if line == end {
                    let der = STANDARD
                        .decode(b.as_bytes())
                        .map_err(|source| PemError::Base64 {
                            label: label.to_owned(),
                            source,
                        })?;
                    blocks.push(der);
                    body = None;
                } else if line.starts_with("-----") {
                    return Err(PemError::Unterminated {
                        label: label.to_owned(),
                    });
                } else {
                    b.push_str(line);
                }
            }
        }
    }
    if body.is_some() {
        return Err(PemError::Unterminated {
            label: label.to_owned(),
        });
    }
    if blocks.is_empty() {
        return Err(PemError::NoBlocks {
            label: label.to_owned(),
        });
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_multiple_blocks() {
        let a: Vec<u8> = (0..=255u8).collect();
        let b = vec![1u8, 2, 3];
        let text = format!(
            "junk\n{}{}{}",
            pem_encode("CERTIFICATE", &a),
            pem_encode("PRIVATE KEY", b"skip me"),
            pem_encode("CERTIFICATE", &b)
        );
        assert!(
            text.lines()
                .all(|l| l.len() <= 64 || l.starts_with("-----"))
        );
        assert_eq!(pem_decode_all(&text, "CERTIFICATE").unwrap(), vec![a, b]);
        assert_eq!(
            pem_decode_all(&text, "PRIVATE KEY").unwrap(),
            vec![b"skip me".to_vec()]
        );
    }

    #[test]
    fn pem_errors() {
        assert!(matches!(
            pem_decode_all("nothing here", "CERTIFICATE"),
            Err(PemError::NoBlocks { .. })
        ));
        let bad = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            pem_decode_all(bad, "CERTIFICATE"),
            Err(PemError::Base64 { .. })
        ));
        let open = "-----BEGIN CERTIFICATE-----\nAAAA\n";
        assert!(matches!(
            pem_decode_all(open, "CERTIFICATE"),
            Err(PemError::Unterminated { .. })
        ));
    }
}
