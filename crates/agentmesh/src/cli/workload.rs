//! Reaching a node's SPIFFE Workload API over its Unix socket.

use std::path::Path;

use agentmesh_proto::unix::UnixSocketError;
use agentmesh_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use super::WORKLOAD_SOCKET_ENV;

/// Connects to the Workload API at `path`.
///
/// # Errors
/// One line naming the socket and saying what usually serves it.
pub async fn connect(path: &Path) -> anyhow::Result<SpiffeWorkloadApiClient<Channel>> {
    match agentmesh_proto::unix::connect(path).await {
        Ok(channel) => Ok(SpiffeWorkloadApiClient::new(channel)
            .max_decoding_message_size(agentmesh_proto::MAX_MESSAGE_BYTES)),
        Err(e) => {
            let detail = match e {
                UnixSocketError::Connect(_, detail) => detail,
                other => other.to_string(),
            };
            anyhow::bail!(
                "cannot reach the Workload API at {}: {detail}; is `agentmesh node run` serving \
                 there? (set --socket or ${WORKLOAD_SOCKET_ENV})",
                path.display()
            )
        }
    }
}

/// Wraps a message in a request carrying `workload.spiffe.io: true`, which the Workload API
/// requires on every call.
pub fn request<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert(
        agentmesh_proto::WORKLOAD_API_HEADER,
        MetadataValue::from_static("true"),
    );
    req
}

/// A Workload API error as the user sees it: `<Code>: <message>`. The node's messages
/// (PermissionDenied says which entry came closest) are printed whole.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    if status.message().is_empty() {
        anyhow::anyhow!("{:?}", status.code())
    } else {
        anyhow::anyhow!("{:?}: {}", status.code(), status.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_the_workload_header() {
        let req = request(());
        assert_eq!(
            req.metadata()
                .get(agentmesh_proto::WORKLOAD_API_HEADER)
                .unwrap(),
            "true"
        );
    }

    #[test]
    fn status_errors_print_code_and_message() {
        let e = status_error(tonic::Status::permission_denied(
            "no registration entry matches this process (uid=1000)",
        ));
        assert_eq!(
            e.to_string(),
            "PermissionDenied: no registration entry matches this process (uid=1000)"
        );
    }
}
