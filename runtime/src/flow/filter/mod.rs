//! Hubble's flow filters, compiled once per request.
//!
//! A request's result is the flows that match ANY whitelist filter (all flows
//! when there is none) and NO blacklist filter. Inside one [`FlowFilter`] every
//! non-empty field must match (AND); a field matches when any of its values does
//! (OR). Values are parsed and checked up front so a bad request is refused with
//! its reason instead of silently matching nothing.
//!
//! `compile` parses a [`FlowFilter`] into a `CompiledFilter`; `matches` runs it
//! against a flow.

mod compile;
mod matches;
#[cfg(test)]
mod tests;

use loupe_proto::flow::{Flow, FlowFilter};
use prost::Message as _;

use compile::CompiledFilter;

/// A filter value that cannot be used; the message names the field and value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid flow filter: {field}: {message}")]
pub struct FilterError {
    /// The FlowFilter field (`source_ip`, `http_status_code`, …).
    pub field: &'static str,
    /// What is wrong with the value.
    pub message: String,
}

/// Filters a request may carry in each of its lists.
pub const MAX_FILTERS: usize = 1024;
/// Size of one filter, encoded.
pub const MAX_FILTER_BYTES: usize = 64 << 10;
/// Regular expressions and wildcard patterns a request may hold in all its filters.
pub const MAX_PATTERNS: usize = 256;

/// A whitelist and a blacklist, compiled.
#[derive(Debug, Clone, Default)]
pub struct FlowFilterSet {
    whitelist: Vec<CompiledFilter>,
    blacklist: Vec<CompiledFilter>,
}

impl FlowFilterSet {
    /// Compiles a request's filters.
    pub fn new(whitelist: &[FlowFilter], blacklist: &[FlowFilter]) -> Result<Self, FilterError> {
        // What a request may cost is checked before anything is compiled.
        for (field, list) in [("whitelist", whitelist), ("blacklist", blacklist)] {
            if list.len() > MAX_FILTERS {
                return Err(FilterError {
                    field,
                    message: format!("{} filters; at most {MAX_FILTERS}", list.len()),
                });
            }
            if let Some(big) = list.iter().find(|f| f.encoded_len() > MAX_FILTER_BYTES) {
                return Err(FilterError {
                    field,
                    message: format!(
                        "a filter of {} bytes; at most {MAX_FILTER_BYTES}",
                        big.encoded_len()
                    ),
                });
            }
        }
        let patterns: usize = whitelist
            .iter()
            .chain(blacklist)
            .map(compile::pattern_count)
            .sum();
        if patterns > MAX_PATTERNS {
            return Err(FilterError {
                field: "filters",
                message: format!(
                    "{patterns} regular expressions and wildcard patterns; at most {MAX_PATTERNS} in one request"
                ),
            });
        }
        let memory = compile::pattern_memory(patterns);
        let compile = |list: &[FlowFilter]| {
            list.iter()
                .map(|f| CompiledFilter::new(f, memory))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            whitelist: compile(whitelist)?,
            blacklist: compile(blacklist)?,
        })
    }

    /// Whether a flow passes: any whitelist filter (or none given) and no blacklist filter.
    pub fn matches(&self, flow: &Flow) -> bool {
        (self.whitelist.is_empty() || self.whitelist.iter().any(|f| f.matches(flow)))
            && !self.blacklist.iter().any(|f| f.matches(flow))
    }

    /// True when every flow passes.
    pub fn is_empty(&self) -> bool {
        self.whitelist.is_empty() && self.blacklist.is_empty()
    }
}
