//! Kubernetes name and label syntax: DNS labels, keys `[prefix/]name`, values up to
//! 63 characters.

/// An RFC 1123 label: lowercase alphanumerics and '-', starting and ending
/// alphanumeric, at most 63 characters (namespace and object names, protocols).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Checks a label key and value against Kubernetes' rules; the error says which rule.
pub fn validate_label(key: &str, value: &str) -> Result<(), String> {
    validate_key(key)?;
    validate_value(value)
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name.
pub fn validate_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && (prefix.is_empty() || prefix.len() > 253 || !prefix.split('.').all(is_dns_label))
    {
        return Err(format!(
            "label key prefix {prefix:?} is not a DNS subdomain"
        ));
    }
    if name.is_empty() {
        return Err(format!("label key {key:?} has an empty name"));
    }
    if !is_qualified_name(name) {
        return Err(format!(
            "label key {key:?}: the name must be at most 63 characters of [A-Za-z0-9._-], \
             starting and ending alphanumeric"
        ));
    }
    Ok(())
}

/// A label value: empty, or a name of at most 63 characters.
pub fn validate_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_qualified_name(value) {
        Ok(())
    } else {
        Err(format!(
            "label value {value:?} must be at most 63 characters of [A-Za-z0-9._-], \
             starting and ending alphanumeric"
        ))
    }
}

fn is_qualified_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_rules() {
        for (k, v) in [
            ("app", "frontend"),
            ("app.kubernetes.io/name", "api"),
            ("k8s:io.kubernetes.pod.namespace", ""),
            ("tier", "a.b_c-d"),
        ] {
            let ok = validate_label(k, v);
            // Cilium's source prefix "k8s:" is not a Kubernetes key; it is refused.
            if k.starts_with("k8s:") {
                assert!(ok.is_err());
            } else {
                assert!(ok.is_ok(), "{k}={v}: {ok:?}");
            }
        }
        assert!(validate_label("bad key", "x").is_err());
        assert!(validate_label("-x", "x").is_err());
        assert!(validate_label("x", "-bad").is_err());
        assert!(validate_label("x", &"a".repeat(64)).is_err());
        assert!(validate_label("Example.COM/x", "y").is_err());
        assert!(validate_label("/x", "y").is_err());
    }
}
