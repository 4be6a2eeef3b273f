//! What the agent reads from the cluster's API server besides its own node's pods
//! (those are an endpoint source, `endpoint::kubernetes`): the policies of the
//! cluster, as `CiliumNetworkPolicy` / `CiliumClusterwideNetworkPolicy` objects and
//! Loupe's own kinds with the same schema plus plugin rules; and the cluster-wide
//! security identities, allocated through the API server so every node agrees.

pub mod identities;
pub mod policies;
