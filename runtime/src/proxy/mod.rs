//! The transparent L7 proxy: the active path of L7 enforcement.
//!
//! The datapath steers each new TCP connection whose port carries enforcing L7
//! rules to the proxy's listener (`bpf_sk_assign` at the client's hook, local
//! routing by mark — see [`routing`]). The accepted socket keeps the original
//! destination as its local address, so neither client nor server changes: the
//! proxy opens its upstream connection from the *client's* address
//! (`IP_TRANSPARENT`) with the [`loupe_common::proxy::FROM_PROXY`] mark, which the
//! server's hook checks at L4 and never redirects again; the server's replies are
//! routed back to that socket by mark.
//!
//! Between the two sockets, bytes go through an [`Inspector`]:
//! [`PassThrough`], or the [`PluginInspector`] that frames requests with a plugin,
//! asks a [`Decider`], forwards allowed requests byte for byte and answers denied
//! ones with the plugin's deny reply, in pipeline order.
//!
//! - [`flows`]: proxy decisions as Hubble L7 flows ([`FlowEvents`]).
//! - [`inspect`]: the inspector contract and the pass-through.
//! - [`plugin`]: the plugin-backed inspector, [`Decider`], [`ProxyEvents`].
//! - [`policy`]: the L7 policy engine as a [`Decider`].
//! - [`transparent`]: the listener and upstream sockets.
//! - [`server`]: the accept loop and the per-connection relay.
//! - [`routing`]: the policy routing rules for the proxy mark.

pub mod flows;
pub mod inspect;
pub mod plugin;
pub mod policy;
pub mod routing;
pub mod server;
pub mod transparent;

pub use flows::FlowEvents;
pub use inspect::{Action, ConnInfo, Inspector, InspectorFactory, PassThrough, PassThroughFactory};
pub use plugin::{
    AllowAll, ConnEvents, Decider, NoEvents, PluginInspector, PluginInspectorFactory, ProxyEvents,
    Verdict, field_text,
};
pub use policy::PolicyDecider;
pub use server::{Proxy, ProxyError, ProxyStats};
