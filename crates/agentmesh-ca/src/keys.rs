//! ECDSA P-256 private keys, crash-safe secret files and PEM encoding.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData as _};

/// Why a key could not be made, loaded or stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The system RNG or the crypto backend failed to make a key.
    #[error("could not generate an ECDSA P-256 key: {0}")]
    Generate(String),
    /// The bytes are not an unencrypted PKCS#8 private key.
    #[error("private key is not valid unencrypted PKCS#8 DER ({0}); regenerate or restore the key")]
    InvalidKey(String),
    /// The key parsed but is not ECDSA P-256, the only algorithm agentmesh signs with.
    #[error("private key uses {0}, but agentmesh only accepts ECDSA P-256 keys")]
    WrongAlgorithm(String),
    /// A file operation on a secret file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done, such as "writing".
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A secret file is readable by group or others.
    #[error(
        "refusing to read {path}: mode {mode:04o} lets group/others read a secret; run `chmod 600 {path}`"
    )]
    InsecurePermissions {
        /// The offending file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The secret file path has no file name (such as `/` or `..`).
    #[error("secret file path {0} has no file name")]
    NoFileName(PathBuf),
    /// A PEM text could not be decoded.
    #[error(transparent)]
    Pem(#[from] agentmesh_tls::PemError),
}

/// An ECDSA P-256 private key, usable by rcgen to sign certificates and CSRs.
///
/// `Debug` prints only the algorithm, never key bytes.
pub struct PrivateKey {
    inner: KeyPair,
}

impl PrivateKey {
    /// Generates a fresh random P-256 key.
    ///
    /// # Errors
    /// [`KeyError::Generate`] if the system RNG fails.
    pub fn generate() -> Result<Self, KeyError> {
        let inner = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        Ok(Self { inner })
    }

    /// Loads a key from unencrypted PKCS#8 DER.
    ///
    /// # Errors
    /// [`KeyError::InvalidKey`] for bytes that are not PKCS#8, [`KeyError::WrongAlgorithm`] for
    /// any key other than P-256.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        let inner = KeyPair::try_from(der).map_err(|e| KeyError::InvalidKey(e.to_string()))?;
        if inner.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(KeyError::WrongAlgorithm(format!("{:?}", inner.algorithm())));
        }
        Ok(Self { inner })
    }

    /// The key as unencrypted PKCS#8 DER, the form the SPIFFE Workload API hands out.
    pub fn pkcs8_der(&self) -> Vec<u8> {
        self.inner.serialize_der()
    }

    /// The public key as SubjectPublicKeyInfo DER.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.inner.subject_public_key_info()
    }

    /// The rcgen key pair, for signing with rcgen directly.
    pub fn as_rcgen(&self) -> &KeyPair {
        &self.inner
    }

    pub(crate) fn into_rcgen(self) -> KeyPair {
        self.inner
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("algorithm", &"ECDSA P-256")
            .finish_non_exhaustive()
    }
}

/// Distinguishes temp files of concurrent writers in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes a secret file crash-safely with mode 0600.
///
/// The bytes go to a temp file in the same directory, created 0600 from the start so the secret
/// is never briefly world-readable, then are fsynced, renamed over `path` and the directory is
/// fsynced, so after a crash `path` holds either the old or the new contents, never a torn mix.
///
/// # Errors
/// [`KeyError::Io`] naming the file or directory that failed.
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let file_name = path
        .file_name()
        .ok_or_else(|| KeyError::NoFileName(path.to_path_buf()))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);

    let result = write_then_rename(&tmp, path, bytes);
    if result.is_err() {
        // Best effort: a leftover temp file holds a secret, so do not leave it behind.
        let _ = fs::remove_file(&tmp);
        return result;
    }
    let dir_handle = File::open(&dir).map_err(|source| KeyError::Io {
        op: "opening directory",
        path: dir.clone(),
        source,
    })?;
    dir_handle.sync_all().map_err(|source| KeyError::Io {
        op: "fsyncing directory",
        path: dir,
        source,
    })
}

fn write_then_rename(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let io = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| KeyError::Io {
            op,
            path: p,
            source,
        }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(io("creating", tmp))?;
    // The umask can only remove bits, but an explicit chmod documents and guarantees 0600.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io("setting permissions on", tmp))?;
    file.write_all(bytes).map_err(io("writing", tmp))?;
    file.sync_all().map_err(io("fsyncing", tmp))?;
    drop(file);
    fs::rename(tmp, path).map_err(io("renaming temp file over", path))
}

/// Reads a secret file, refusing it if group or others may read it.
///
/// # Errors
/// [`KeyError::InsecurePermissions`] naming the file and its mode, or [`KeyError::Io`].
pub fn read_secret_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    let mut file = File::open(path).map_err(|source| KeyError::Io {
        op: "opening",
        path: path.to_path_buf(),
        source,
    })?;
    // Check the opened file, not the path, so a swap between check and read cannot fool us.
    let mode = file
        .metadata()
        .map_err(|source| KeyError::Io {
            op: "reading metadata of",
            path: path.to_path_buf(),
            source,
        })?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).map_err(|source| KeyError::Io {
        op: "reading",
        path: path.to_path_buf(),
        source,
    })?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    #[test]
    fn key_round_trips_through_pkcs8() {
        let key = PrivateKey::generate().unwrap();
        let again = PrivateKey::from_pkcs8_der(&key.pkcs8_der()).unwrap();
        assert_eq!(key.public_key_der(), again.public_key_der());
    }

    #[test]
    fn rejects_garbage_and_p384_keys() {
        assert!(matches!(
            PrivateKey::from_pkcs8_der(b"not a key"),
            Err(KeyError::InvalidKey(_))
        ));
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        assert!(matches!(
            PrivateKey::from_pkcs8_der(&p384.serialize_der()),
            Err(KeyError::WrongAlgorithm(_))
        ));
    }

    #[test]
    fn debug_does_not_leak_key_bytes() {
        let key = PrivateKey::generate().unwrap();
        let dbg = format!("{key:?}");
        let der = key.pkcs8_der();
        assert!(!dbg.contains(&STANDARD.encode(&der)));
        assert!(!dbg.contains(&format!("{:?}", &der[der.len() - 8..])));
        assert!(!dbg.contains("serialized_der"));
    }

    #[test]
    fn secret_file_is_0600_and_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.der");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();

        write_secret_file(&path, b"new secret").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_secret_file(&path).unwrap(), b"new secret");
        // No temp file left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("key.der")]);
    }

    #[test]
    fn write_into_missing_dir_fails_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("key.der");
        let err = write_secret_file(&path, b"x").unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn read_refuses_group_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.der");
        fs::write(&path, b"secret").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret_file(&path).unwrap_err();
        assert!(
            matches!(err, KeyError::InsecurePermissions { mode: 0o644, .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.contains("key.der") && msg.contains("0644"), "{msg}");
    }
}
