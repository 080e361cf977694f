//! gRPC over Unix sockets: binding with safe permissions, and connecting.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::{Channel, Endpoint};

/// A Unix socket could not be bound or reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnixSocketError {
    /// Binding failed.
    #[error("cannot listen on {0}: {1}")]
    Bind(PathBuf, std::io::Error),
    /// Another process is serving on the socket.
    #[error("{0} is in use by another running process; stop it or choose another path")]
    InUse(PathBuf),
    /// Connecting failed.
    #[error("cannot connect to {0}: {1} (is the daemon running, and is this the right socket?)")]
    Connect(PathBuf, String),
}

/// Binds a Unix socket at `path` with permissions `mode`, replacing a stale socket file left
/// by a process that died, but never one that a live process still serves.
///
/// # Errors
/// The directory cannot be created, the socket is in use, or binding fails.
pub async fn bind(path: &Path, mode: u32) -> Result<UnixListener, UnixSocketError> {
    let err = |e| UnixSocketError::Bind(path.to_owned(), e);
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(UnixSocketError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(listener)
}

/// Connects a gRPC channel to a Unix socket. The URI is a placeholder: only the socket counts.
///
/// # Errors
/// The socket does not exist or refuses the connection.
pub async fn connect(path: &Path) -> Result<Channel, UnixSocketError> {
    let owned = path.to_owned();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let p = owned.clone();
            async move { UnixStream::connect(p).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|e| {
            let detail = std::error::Error::source(&e)
                .map(ToString::to_string)
                .unwrap_or_else(|| e.to_string());
            UnixSocketError::Connect(path.to_owned(), detail)
        })
}

/// Creates `dir` (and its parents) owner-only, and tightens it if it already exists with
/// looser permissions: such directories hold private keys and the sockets beside them.
///
/// # Errors
/// Creating the directory or setting its mode failed.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}
