//! Policy routing for the redirect: packets the datapath marks
//! [`TO_PROXY`](loupe_common::proxy::TO_PROXY) are delivered locally, whatever
//! their destination, so they reach the proxy's sockets (as Cilium's and any
//! TPROXY setup do):
//!
//! ```text
//! ip rule add pref 95 fwmark 0xc00/0xf00 lookup 2046
//! ip route replace local 0.0.0.0/0 dev lo table 2046
//! (and the same with -6, local ::/0)
//! ```
//!
//! Installing is idempotent; [`remove`] undoes it (agent shutdown, `loupe cleanup`).

use loupe_common::proxy::{MARK_MASK, ROUTE_TABLE, RULE_PRIORITY, TO_PROXY};

use crate::host::{HostError, ip};

fn fwmark() -> String {
    format!("{TO_PROXY:#x}/{MARK_MASK:#x}")
}

/// The rule's selector as `ip rule show` prints it.
fn rule_present(family: &str) -> Result<bool, HostError> {
    let rules = ip(&[family, "rule", "show", "pref", &RULE_PRIORITY.to_string()])?;
    Ok(rules.contains(&format!("fwmark {}", fwmark()))
        && rules.contains(&format!("lookup {ROUTE_TABLE}")))
}

/// Installs the rule and the `local` default routes for IPv4 and IPv6 (IPv6 is
/// skipped with a warning on a host without it).
pub fn install() -> Result<(), HostError> {
    let table = ROUTE_TABLE.to_string();
    let pref = RULE_PRIORITY.to_string();
    let mark = fwmark();
    for (family, default) in [("-4", "0.0.0.0/0"), ("-6", "::/0")] {
        let result = (|| {
            ip(&[
                family, "route", "replace", "local", default, "dev", "lo", "table", &table,
            ])?;
            if !rule_present(family)? {
                ip(&[
                    family, "rule", "add", "pref", &pref, "fwmark", &mark, "lookup", &table,
                ])?;
            }
            Ok(())
        })();
        match result {
            Err(e) if family == "-6" => {
                tracing::warn!(error = %e, "no IPv6 policy routing for the L7 proxy");
            }
            other => other?,
        }
    }
    Ok(())
}

/// Removes what [`install`] added (absent pieces are fine).
pub fn remove() {
    let table = ROUTE_TABLE.to_string();
    let pref = RULE_PRIORITY.to_string();
    let mark = fwmark();
    for family in ["-4", "-6"] {
        while rule_present(family).unwrap_or(false) {
            if ip(&[
                family, "rule", "del", "pref", &pref, "fwmark", &mark, "lookup", &table,
            ])
            .is_err()
            {
                break;
            }
        }
        let _ = ip(&[family, "route", "flush", "table", &table]);
    }
}
