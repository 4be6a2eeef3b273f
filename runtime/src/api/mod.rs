//! The agent's gRPC API: Loupe's control services (daemon, policy, plugins) and the
//! Hubble-compatible Observer and Peer, served on a unix socket (Observer and Peer
//! also on TCP when `hubble.listenAddress` is set).
//!
//! Each service is built from exactly what it reads: the observer from the flow
//! store, the endpoint snapshot and [`NodeInfo`]; peer from [`NodeInfo`]; policy from
//! the control plane and the plugin manager; daemon from the control plane and the
//! status sources; plugins from the plugin manager. None knows the agent.

pub mod authority;
pub mod client;
pub mod daemon;
pub mod observer;
pub mod peer;
pub mod plugin;
pub mod policy;

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// This node as Hubble's clients see it (`GetNodes`, `peer.Notify`, `ServerStatus`).
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The node's name.
    pub name: String,
    /// Where its Observer answers: `host:port` when `hubble.listenAddress` is set,
    /// else the agent's socket path.
    pub address: String,
    /// Whether that address serves TLS.
    pub tls: bool,
    /// When the agent started.
    pub started: Instant,
}

/// Longest error message a client is sent: longer ones (a huge bad pattern
/// echoed back) are cut, so standard clients never hit their metadata limits.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// A gRPC error with its message bounded to [`MAX_ERROR_MESSAGE`] bytes.
pub fn error(code: tonic::Code, message: impl Into<String>) -> tonic::Status {
    let mut message = message.into();
    if message.len() > MAX_ERROR_MESSAGE {
        let total = message.len();
        let mut cut = MAX_ERROR_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str(&format!("… ({total} bytes, cut)"));
    }
    tonic::Status::new(code, message)
}

impl NodeInfo {
    /// Nanoseconds since the agent started.
    pub fn uptime_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

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
    /// Something other than a socket is at the path: never removed.
    #[error(
        "API socket {0}: exists and is not a socket; refusing to replace it (check socketPath)"
    )]
    NotASocket(PathBuf),
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
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ServeError::NotASocket(path.to_path_buf()));
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServeError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(socket_err)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(socket_err(e)),
    }
    // Created 0600 from the start: no window where others could connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = tokio::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(socket_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(socket_err)?;
    Ok(listener)
}

#[cfg(test)]
mod error_tests {
    use super::*;

    #[tokio::test]
    async fn the_socket_replaces_only_a_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        // A file (a mistyped socketPath) is never removed.
        let file = dir.path().join("passwd");
        std::fs::write(&file, "root:x:0:0\n").unwrap();
        let err = bind_socket(&file).unwrap_err();
        assert!(matches!(err, ServeError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "root:x:0:0\n");
        // Nor is a symbolic link, whatever it points to.
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(matches!(bind_socket(&link), Err(ServeError::NotASocket(_))));
        // A live socket is another agent's; a stale one is replaced, mode 0600.
        let path = dir.path().join("loupe.sock");
        let live = bind_socket(&path).unwrap();
        assert!(matches!(bind_socket(&path), Err(ServeError::InUse(_))));
        drop(live);
        let _again = bind_socket(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let short = error(tonic::Code::InvalidArgument, "bad filter");
        assert_eq!(short.message(), "bad filter");
        let long = error(tonic::Code::InvalidArgument, "é".repeat(1 << 20));
        assert!(
            long.message().len() <= MAX_ERROR_MESSAGE + 32,
            "{}",
            long.message().len()
        );
        assert!(long.message().ends_with("… (2097152 bytes, cut)"));
        assert_eq!(long.code(), tonic::Code::InvalidArgument);
    }
}
