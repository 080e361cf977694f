//! Reaching the server's admin API over its Unix socket.

use std::path::PathBuf;

use agentmesh_proto::unix::UnixSocketError;
use agentmesh_proto::v1::admin_client::AdminClient;
use clap::Args;
use tonic::transport::Channel;

use super::{ADMIN_SOCKET_ENV, DEFAULT_DATA_DIR, default_admin_socket};

/// Where to find the server's admin socket.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// The server's admin socket [default: $AGENTMESH_ADMIN_SOCKET, then <DATA_DIR>/admin.sock]
    #[arg(long, value_name = "PATH", env = ADMIN_SOCKET_ENV)]
    pub admin_socket: Option<PathBuf>,
    /// The server's data dir, used to find the admin socket.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

impl AdminArgs {
    /// The socket to dial: `--admin-socket`, else `$AGENTMESH_ADMIN_SOCKET`, else
    /// `<data-dir>/admin.sock`.
    pub fn socket(&self) -> PathBuf {
        self.admin_socket
            .clone()
            .unwrap_or_else(|| default_admin_socket(&self.data_dir))
    }

    /// Connects to the admin API.
    ///
    /// # Errors
    /// One line naming the socket and saying how to start a server.
    pub async fn connect(&self) -> anyhow::Result<AdminClient<Channel>> {
        let path = self.socket();
        match agentmesh_proto::unix::connect(&path).await {
            Ok(channel) => Ok(AdminClient::new(channel)
                .max_decoding_message_size(agentmesh_proto::MAX_MESSAGE_BYTES)),
            Err(e) => {
                let detail = match e {
                    UnixSocketError::Connect(_, detail) => detail,
                    other => other.to_string(),
                };
                let hint = if path.exists() {
                    "is the server running, and may this user open the socket (mode 0600)?"
                } else {
                    "no server is listening there."
                };
                anyhow::bail!(
                    "cannot reach the server's admin socket {}: {detail}; {hint} Start one with \
                     `agentmesh server run`, or point at it with --admin-socket or ${ADMIN_SOCKET_ENV}",
                    path.display()
                )
            }
        }
    }
}

/// An admin API error as the user sees it: the server's own message, which is written for
/// humans already.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    if status.message().is_empty() {
        anyhow::anyhow!("the server answered {:?}", status.code())
    } else {
        anyhow::anyhow!("{}", status.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_socket_defaults_to_the_data_dir() {
        let args = AdminArgs {
            admin_socket: None,
            data_dir: PathBuf::from("/var/lib/agentmesh"),
        };
        assert_eq!(
            args.socket(),
            PathBuf::from("/var/lib/agentmesh/admin.sock")
        );
        let args = AdminArgs {
            admin_socket: Some(PathBuf::from("/run/a.sock")),
            ..args
        };
        assert_eq!(args.socket(), PathBuf::from("/run/a.sock"));
    }

    #[tokio::test]
    async fn a_missing_socket_is_one_line_naming_it_and_the_fix() {
        let args = AdminArgs {
            admin_socket: Some(PathBuf::from("/nonexistent/agentmesh/admin.sock")),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
        };
        let err = args.connect().await.unwrap_err().to_string();
        assert!(err.contains("/nonexistent/agentmesh/admin.sock"), "{err}");
        assert!(err.contains("agentmesh server run"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn status_errors_print_the_servers_message() {
        let e = status_error(tonic::Status::not_found("no entry with id abc"));
        assert_eq!(e.to_string(), "no entry with id abc");
    }
}
