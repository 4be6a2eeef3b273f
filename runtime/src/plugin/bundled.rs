//! The parser plugins Loupe ships, embedded in the binary (built from `plugins/`
//! by `runtime/build.rs`) and installed on an agent's first start, as Cilium
//! ships its HTTP and Kafka parsers. An operator's own plugin of the same name is
//! never replaced.

use super::manager::PluginManager;

#[cfg(feature = "bundled-plugins")]
macro_rules! bundled {
    ($file:literal) => {
        include_bytes!(concat!(env!("LOUPE_BUNDLED_PLUGINS"), "/", $file))
    };
}

/// Name and component of each shipped plugin (none without the
/// `bundled-plugins` feature).
#[cfg(feature = "bundled-plugins")]
pub const BUNDLED: &[(&str, &[u8])] = &[
    ("http", bundled!("loupe_plugin_http.wasm")),
    ("redis", bundled!("loupe_plugin_redis.wasm")),
    ("kafka", bundled!("loupe_plugin_kafka.wasm")),
    ("memcached", bundled!("loupe_plugin_memcached.wasm")),
];

/// Name and component of each shipped plugin (none without the
/// `bundled-plugins` feature).
#[cfg(not(feature = "bundled-plugins"))]
pub const BUNDLED: &[(&str, &[u8])] = &[];

/// Installs every shipped plugin not installed yet; returns what was installed
/// and what failed (a failure is logged, never fatal).
pub fn install_missing(manager: &PluginManager) -> Vec<String> {
    let mut installed = Vec::new();
    for (name, wasm) in BUNDLED {
        if manager.get(name).is_some() {
            continue;
        }
        match manager.install(wasm, Some(name), None) {
            Ok(_) => installed.push((*name).to_string()),
            Err(e) => tracing::error!(plugin = name, error = %e, "bundled plugin refused"),
        }
    }
    installed
}
