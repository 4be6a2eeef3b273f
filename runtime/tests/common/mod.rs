//! Helpers shared by the runtime's integration tests (each test file that needs
//! them declares `mod common;`).

// Each test crate uses a different part of this module.
#![allow(dead_code, clippy::unwrap_used)]

/// A TCP port free on loopback right now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The lab's Python (`scripts/bootstrap` installs it into `/opt/loupe/venv`), or
/// `$LOUPE_VENV/bin/python`.
pub(crate) fn python() -> String {
    let venv = std::env::var("LOUPE_VENV").unwrap_or_else(|_| "/opt/loupe/venv".into());
    format!("{venv}/bin/python")
}
