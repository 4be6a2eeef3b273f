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
//! - [`inspect`]: the inspector contract and the pass-through.
//! - [`plugin`]: the plugin-backed inspector, [`Decider`], [`ProxyEvents`].
//! - [`transparent`]: the listener and upstream sockets.
//! - [`server`]: the accept loop and the per-connection relay.
//! - [`routing`]: the policy routing rules for the proxy mark.

pub mod inspect;
pub mod plugin;
pub mod routing;
pub mod server;
pub mod transparent;

pub use inspect::{Action, ConnInfo, Inspector, InspectorFactory, PassThrough, PassThroughFactory};
pub use plugin::{
    AllowAll, Decider, NoEvents, PluginInspector, PluginInspectorFactory, ProxyEvents, Verdict,
    field_text,
};
pub use server::{Proxy, ProxyError, ProxyStats};

use crate::policy::{L7Spec, cnp};

/// The policy flags an L7 spec adds for the datapath: [`L7_ENFORCE`] when its
/// rules restrict something (at least one rule with a condition), nothing for
/// visibility-only rules such as `http: [{}]`, which allow everything.
///
/// [`L7_ENFORCE`]: loupe_common::policy_flags::L7_ENFORCE
pub fn enforce_flag(spec: &L7Spec) -> u8 {
    let restricts = match spec {
        L7Spec::Http(rules) => rules.iter().any(|r| *r != cnp::HttpRule::default()),
        L7Spec::Kafka(rules) => rules.iter().any(|r| *r != cnp::KafkaRule::default()),
        L7Spec::Generic { rules, .. } => rules.iter().any(|r| !r.is_empty()),
    };
    if restricts {
        loupe_common::policy_flags::L7_ENFORCE
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loupe_common::policy_flags::L7_ENFORCE;

    #[test]
    fn only_restricting_rules_enforce() {
        assert_eq!(
            enforce_flag(&L7Spec::Http(vec![cnp::HttpRule::default()])),
            0
        );
        let get = cnp::HttpRule {
            method: Some("GET".into()),
            ..cnp::HttpRule::default()
        };
        assert_eq!(enforce_flag(&L7Spec::Http(vec![get])), L7_ENFORCE);
        let generic = |rules: Vec<std::collections::BTreeMap<String, String>>| L7Spec::Generic {
            protocol: "redis".into(),
            rules,
        };
        assert_eq!(enforce_flag(&generic(vec![Default::default()])), 0);
        assert_eq!(
            enforce_flag(&generic(vec![
                [("command".to_string(), "GET".to_string())].into()
            ])),
            L7_ENFORCE
        );
        assert_eq!(enforce_flag(&L7Spec::Kafka(vec![])), 0);
    }
}
