//! Connecting the CLI to a running agent.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// The agent could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the Loupe agent at {path}: {source} (is `loupe agent` running?)")]
pub struct ConnectError {
    path: PathBuf,
    source: tonic::transport::Error,
}

/// A gRPC channel to the agent's unix socket.
pub async fn connect(path: &Path) -> Result<Channel, ConnectError> {
    let socket = path.to_path_buf();
    // The URI is required by tonic but unused: the connector dials the socket.
    Endpoint::from_static("http://loupe.agent")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|source| ConnectError {
            path: path.to_path_buf(),
            source,
        })
}
