//! Loupe's runtime: the agent and everything the `loupe` CLI drives.
#![warn(missing_docs)]

pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod endpoint;
pub mod lab;
pub mod labels;
pub mod plugin;

/// Loupe's version, as reported by the API and the CLI.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
