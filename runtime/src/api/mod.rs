//! The agent's gRPC API: Loupe's control service (and, beside it, the
//! Hubble-compatible Observer), served on a unix socket.

pub mod client;
pub mod daemon;
pub mod observer;
pub mod peer;
pub mod plugin;
pub mod policy;

/// Generated protobuf and gRPC code.
pub mod proto {
    /// `loupe.daemon.v1`: Loupe's control API.
    pub mod daemon {
        #![allow(missing_docs, unreachable_pub, clippy::all)]
        tonic::include_proto!("loupe.daemon.v1");
    }
    /// `loupe.policy.v1`: Loupe's policy API.
    pub mod policy {
        #![allow(missing_docs, unreachable_pub, clippy::all)]
        tonic::include_proto!("loupe.policy.v1");
    }
    /// `flow`: Hubble's flow model (wire-compatible subset).
    pub mod flow {
        #![allow(missing_docs, unreachable_pub, clippy::all)]
        tonic::include_proto!("flow");
    }
    /// `observer`: Hubble's Observer service.
    pub mod observer {
        #![allow(missing_docs, unreachable_pub, clippy::all)]
        tonic::include_proto!("observer");
    }
    /// `peer`: Hubble's Peer service.
    pub mod peer {
        #![allow(missing_docs, unreachable_pub, clippy::all)]
        tonic::include_proto!("peer");
    }
    /// `relay`: node status messages used by `observer`.
    pub mod relay {
        #![allow(missing_docs, unreachable_pub, clippy::all)]
        tonic::include_proto!("relay");
    }
    /// `loupe.flow.v1`: what plugins add to flows (`Flow.extensions`).
    pub mod extension {
        #![allow(missing_docs, unreachable_pub, clippy::all)]
        tonic::include_proto!("loupe.flow.v1");
    }

    /// The descriptors of every message above, for canonical JSON output.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/loupe_descriptor.bin"));
    /// `loupe.plugin.v1`: plugin lifecycle.
    pub mod plugin {
        #![allow(missing_docs, unreachable_pub, clippy::all)]
        tonic::include_proto!("loupe.plugin.v1");
    }
}

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// The socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding or securing the socket failed.
    #[error("API socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Another agent answers on the socket.
    #[error("API socket {0}: another agent is running")]
    InUse(PathBuf),
    /// The server failed.
    #[error("API server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds the unix socket with mode 0600, replacing a stale socket file left by a
/// crashed agent (but never one a live agent answers on).
pub fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, ServeError> {
    let socket_err = |source| ServeError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(socket_err)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServeError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(socket_err)?;
    }
    // Created 0600 from the start: no window where others could connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = tokio::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(socket_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(socket_err)?;
    Ok(listener)
}
