//! Component health, for `loupe status` and `loupe_component_up`: each part of the
//! agent reports its own state here; the status service and the metrics read it.

use std::collections::BTreeMap;
use std::sync::RwLock;

/// Health of one component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentStatus {
    /// Current state.
    pub state: ComponentState,
    /// A line for humans.
    pub detail: String,
}

/// Component states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentState {
    /// Working.
    Ok,
    /// Turned off by configuration.
    Disabled,
    /// Working, with something an operator should look at (`detail` says
    /// what), such as an invalid object whose previous version stays in force.
    /// Not a failure of the agent: readiness holds.
    Warning,
    /// Failing; `detail` says why.
    Error,
}

impl ComponentState {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Disabled => "disabled",
            Self::Warning => "warning",
            Self::Error => "error",
        }
    }
}

/// Every component's health by name. Writers and readers hold the lock only to
/// copy a small map, never across an await.
#[derive(Debug, Default)]
pub struct Health {
    components: RwLock<BTreeMap<String, ComponentStatus>>,
}

impl Health {
    /// Records a component's health.
    pub fn set(&self, name: &str, state: ComponentState, detail: impl Into<String>) {
        let status = ComponentStatus {
            state,
            detail: detail.into(),
        };
        // A poisoned lock only means a writer panicked mid-insert of a whole value.
        let mut components = self
            .components
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        components.insert(name.to_string(), status);
    }

    /// Forgets a component (one that no longer exists).
    pub fn remove(&self, name: &str) {
        self.components
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
    }

    /// Every component, by name.
    pub fn components(&self) -> Vec<(String, ComponentStatus)> {
        self.components
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(name, status)| (name.clone(), status.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_report_wins_and_names_sort() {
        let health = Health::default();
        health.set("proxy", ComponentState::Error, "bind failed");
        health.set("datapath", ComponentState::Ok, "loaded");
        health.set("proxy", ComponentState::Ok, "listening");
        let names: Vec<_> = health
            .components()
            .into_iter()
            .map(|(n, s)| (n, s.state))
            .collect();
        assert_eq!(
            names,
            [
                ("datapath".to_string(), ComponentState::Ok),
                ("proxy".to_string(), ComponentState::Ok)
            ]
        );
    }
}
