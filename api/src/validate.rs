//! Name, label and metadata rules, as Kubernetes' apimachinery validation defines them.

use crate::error::Errors;
use crate::info::{NameRule, ResourceInfo};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name', or '123-abc')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name', or 'abc-123')";
/// Annotations of one object, keys and values together.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

fn lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

pub fn dns1123_label_error(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 63 {
        return Some(format!("must be 1 to 63 characters; {DNS1123_LABEL_MSG}"));
    }
    let b = s.as_bytes();
    let ok = lower_alnum(b[0])
        && lower_alnum(b[b.len() - 1])
        && b.iter().all(|&c| lower_alnum(c) || c == b'-');
    (!ok).then(|| DNS1123_LABEL_MSG.to_string())
}

pub fn dns1123_subdomain_error(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 253 {
        return Some(format!("must be 1 to 253 characters; {DNS1123_SUBDOMAIN_MSG}"));
    }
    let ok = s.split('.').all(|part| {
        let b = part.as_bytes();
        !b.is_empty()
            && lower_alnum(b[0])
            && lower_alnum(b[b.len() - 1])
            && b.iter().all(|&c| lower_alnum(c) || c == b'-')
    });
    (!ok).then(|| DNS1123_SUBDOMAIN_MSG.to_string())
}

pub fn dns1035_label_error(s: &str) -> Option<String> {
    if let Some(e) = dns1123_label_error(s) {
        return Some(e.replace(DNS1123_LABEL_MSG, DNS1035_LABEL_MSG));
    }
    (!s.as_bytes()[0].is_ascii_lowercase()).then(|| DNS1035_LABEL_MSG.to_string())
}

fn name_part_error(s: &str) -> Option<String> {
    const MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName', or 'my.name', or '123-abc')";
    if s.is_empty() || s.len() > 63 {
        return Some(format!("name part must be 1 to 63 characters; {MSG}"));
    }
    let b = s.as_bytes();
    let ok = b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    (!ok).then(|| format!("name part {MSG}"))
}

/// `[prefix/]name`: label and annotation keys, finalizers.
pub fn qualified_name_error(s: &str) -> Option<String> {
    match s.split_once('/') {
        Some((prefix, name)) => {
            if let Some(e) = dns1123_subdomain_error(prefix) {
                return Some(format!("prefix part {e}"));
            }
            name_part_error(name)
        }
        None => name_part_error(s),
    }
}

pub fn label_key_error(s: &str) -> Option<String> {
    qualified_name_error(s)
}

pub fn label_value_error(s: &str) -> Option<String> {
    if s.is_empty() {
        return None;
    }
    if s.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    let b = s.as_bytes();
    let ok = b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    (!ok).then(|| "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".into())
}

/// IANA service names: port names.
pub fn port_name_error(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if s.is_empty() || s.len() > 15 {
        return Some("must be no more than 15 characters".into());
    }
    if !b.iter().all(|&c| lower_alnum(c) || c == b'-') {
        return Some(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into(),
        );
    }
    if s.contains("--") || b[0] == b'-' || b[b.len() - 1] == b'-' {
        return Some("must not contain consecutive hyphens or begin or end with a hyphen".into());
    }
    if !b.iter().any(|c| c.is_ascii_lowercase()) {
        return Some("must contain at least one letter (a-z)".into());
    }
    None
}

/// ConfigMap and Secret keys.
pub fn config_key_error(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 253 {
        return Some("must be 1 to 253 characters".into());
    }
    if s == "." || s == ".." || s.starts_with("..") {
        return Some("must not be '.' or '..' or start with '..'".into());
    }
    (!s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))).then(|| {
        "a valid config key must consist of alphanumeric characters, '-', '_' or '.'".into()
    })
}

/// Kubernetes' `path.IsValidPathSegmentName`.
pub fn path_segment_error(name: &str) -> Option<String> {
    if name == "." || name == ".." {
        return Some(format!("may not be '{name}'"));
    }
    ["/", "%"].iter().find(|c| name.contains(*c)).map(|c| format!("may not contain '{c}'"))
}

pub fn validate_name(rule: NameRule, name: &str, field: &str, errs: &mut Errors) {
    let e = match rule {
        NameRule::Subdomain => dns1123_subdomain_error(name),
        NameRule::Label => dns1123_label_error(name),
        NameRule::Label1035 => dns1035_label_error(name),
        NameRule::PathSegment => path_segment_error(name),
    };
    if let Some(e) = e {
        errs.invalid_str(field, name, &e);
    }
}

pub fn validate_labels(labels: &BTreeMap<String, String>, field: &str, errs: &mut Errors) {
    for (k, v) in labels {
        if let Some(e) = label_key_error(k) {
            errs.invalid_str(field, k, &e);
        }
        if let Some(e) = label_value_error(v) {
            errs.invalid_str(format!("{field}[{k}]"), v, &e);
        }
    }
}

pub fn validate_meta(m: &ObjectMeta, info: &ResourceInfo, errs: &mut Errors) {
    match m.name.as_deref() {
        None | Some("") => errs.required("metadata.name", "name or generateName is required"),
        Some(n) => validate_name(info.name_rule, n, "metadata.name", errs),
    }
    if info.namespaced {
        match m.namespace.as_deref() {
            None | Some("") => errs.required("metadata.namespace", ""),
            Some(ns) => validate_name(NameRule::Label, ns, "metadata.namespace", errs),
        }
    } else if m.namespace.as_deref().is_some_and(|n| !n.is_empty()) {
        errs.forbidden("metadata.namespace", "not allowed on this type (it is cluster-scoped)");
    }
    if let Some(labels) = &m.labels {
        validate_labels(labels, "metadata.labels", errs);
    }
    if let Some(ann) = &m.annotations {
        let mut total = 0;
        for (k, v) in ann {
            if let Some(e) = qualified_name_error(&k.to_ascii_lowercase()) {
                errs.invalid_str("metadata.annotations", k, &e);
            }
            total += k.len() + v.len();
        }
        if total > MAX_ANNOTATIONS_BYTES {
            errs.push(
                "metadata.annotations",
                crate::error::FieldErrorType::TooLong,
                format!("may not be more than {MAX_ANNOTATIONS_BYTES} bytes"),
            );
        }
    }
    for (i, f) in m.finalizers.iter().flatten().enumerate() {
        if let Some(e) = qualified_name_error(f) {
            errs.invalid_str(format!("metadata.finalizers[{i}]"), f, &e);
        }
    }
    let mut controllers = 0;
    for (i, o) in m.owner_references.iter().flatten().enumerate() {
        let p = format!("metadata.ownerReferences[{i}]");
        for (field, v) in
            [("apiVersion", &o.api_version), ("kind", &o.kind), ("name", &o.name), ("uid", &o.uid)]
        {
            if v.is_empty() {
                errs.required(format!("{p}.{field}"), "");
            }
        }
        if o.controller == Some(true) {
            controllers += 1;
        }
    }
    if controllers > 1 {
        errs.invalid(
            "metadata.ownerReferences",
            controllers,
            "only one reference can have Controller set to true",
        );
    }
    if let Some(g) = m.generation {
        if g < 0 {
            errs.invalid("metadata.generation", g, "must be greater than or equal to 0");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "web-1", "0abc", "a.b.c"] {
            assert!(dns1123_subdomain_error(ok).is_none(), "{ok}");
        }
        for bad in ["", "Web", "-a", "a-", "a..b", "a_b", &"x".repeat(254)] {
            assert!(dns1123_subdomain_error(bad).is_some(), "{bad}");
        }
        assert!(dns1123_label_error("a.b").is_some());
        assert!(dns1123_label_error(&"x".repeat(64)).is_some());
        assert!(dns1035_label_error("1web").is_some());
        assert!(dns1035_label_error("web1").is_none());
    }

    #[test]
    fn labels_and_keys() {
        for ok in ["app", "app.kubernetes.io/name", "a_b.C-d", "example.com/X"] {
            assert!(label_key_error(ok).is_none(), "{ok}");
        }
        for bad in ["", "-a", "a/", "/a", "Example.com/a", "a/b/c", &"x".repeat(64)] {
            assert!(label_key_error(bad).is_some(), "{bad}");
        }
        assert!(label_value_error("").is_none());
        assert!(label_value_error("v1.2_x").is_none());
        assert!(label_value_error("a b").is_some());
        assert!(label_value_error(&"x".repeat(64)).is_some());
    }

    #[test]
    fn ports_and_keys() {
        assert!(port_name_error("http").is_none());
        assert!(port_name_error("http-alt").is_none());
        for bad in ["", "HTTP", "a--b", "-a", "123", "sixteen-chars-xx"] {
            assert!(port_name_error(bad).is_some(), "{bad}");
        }
        assert!(config_key_error("app.properties").is_none());
        assert!(config_key_error("..data").is_some());
        assert!(config_key_error("a/b").is_some());
    }
}
