//! Loupe's runtime: the agent and everything the `loupe` CLI drives.
#![warn(missing_docs)]

pub mod agent;
pub mod api;
pub mod capture;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod datapath;
pub mod endpoint;
pub mod export;
pub mod flow;
pub mod health;
pub mod host;
pub mod identity;
pub mod l7;
pub mod lab;
pub mod labels;
pub mod metrics;
pub mod plugin;
pub mod policy;
pub mod proxy;
pub mod reassembly;
pub mod relay;

/// Loupe's version, as reported by the API and the CLI.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
