//! Patches: JSON merge patch (RFC 7386, what `kubectl patch --type merge` sends) and JSON patch
//! (RFC 6902), both with the `json-patch` crate; and Kubernetes' strategic merge patch
//! (`strategic`).

use crate::error::ApiError;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    /// Kubernetes' strategic merge patch (`strategic`).
    Strategic,
}

pub fn apply(target: &Value, kind: PatchKind, patch: &[u8]) -> Result<Value, ApiError> {
    let patch_value: Value = serde_json::from_slice(patch)
        .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
    let mut out = target.clone();
    match kind {
        PatchKind::Merge => {
            if !patch_value.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            json_patch::merge(&mut out, &patch_value);
        }
        PatchKind::Strategic => out = crate::strategic::apply(target, &patch_value)?,
        PatchKind::Json => {
            let p: json_patch::Patch = serde_json::from_value(patch_value)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(&mut out, &p)
                .map_err(|e| ApiError::bad_request(format!("the JSON patch failed: {e}")))?;
        }
    }
    Ok(out)
}

/// The merge patch that turns `from` into `to` (RFC 7386: removed keys become null, arrays
/// are replaced whole). `kubectl apply` sends this from the last applied manifest to the new one.
pub fn merge_diff(from: &Value, to: &Value) -> Value {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            let mut out = serde_json::Map::new();
            for (k, av) in a {
                match b.get(k) {
                    None => {
                        out.insert(k.clone(), Value::Null);
                    }
                    Some(bv) if bv != av => {
                        let d = merge_diff(av, bv);
                        // An object diff that is empty means no change below it.
                        if !(d.is_object()
                            && d.as_object().is_some_and(|m| m.is_empty())
                            && av.is_object())
                        {
                            out.insert(k.clone(), d);
                        }
                    }
                    Some(_) => {}
                }
            }
            for (k, bv) in b {
                if !a.contains_key(k) {
                    out.insert(k.clone(), bv.clone());
                }
            }
            Value::Object(out)
        }
        (_, b) => b.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_and_json_patches() {
        let obj = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 1}});
        let m = apply(
            &obj,
            PatchKind::Merge,
            br#"{"metadata":{"labels":{"a":null,"c":"3"}},"spec":{"replicas":3}}"#,
        )
        .unwrap();
        assert_eq!(
            m,
            json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "spec": {"replicas": 3}})
        );
        let j = apply(
            &obj,
            PatchKind::Json,
            br#"[{"op":"replace","path":"/spec/replicas","value":5}]"#,
        )
        .unwrap();
        assert_eq!(j["spec"]["replicas"], 5);
        assert!(apply(
            &obj,
            PatchKind::Json,
            br#"[{"op":"test","path":"/spec/replicas","value":9}]"#
        )
        .is_err());
        assert!(apply(&obj, PatchKind::Merge, b"[1]").is_err());
        assert!(apply(&obj, PatchKind::Merge, b"{").is_err());
    }

    #[test]
    fn merge_diff_round_trips() {
        let a = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"replicas": 1, "ports": [1, 2]}});
        let b = json!({"metadata": {"labels": {"a": "1", "c": "3"}}, "spec": {"ports": [1]}});
        let d = merge_diff(&a, &b);
        assert_eq!(
            d,
            json!({"metadata": {"labels": {"b": null, "c": "3"}}, "spec": {"replicas": null, "ports": [1]}})
        );
        let applied = apply(&a, PatchKind::Merge, &serde_json::to_vec(&d).unwrap()).unwrap();
        assert_eq!(applied, b);
        assert_eq!(merge_diff(&a, &a), json!({}));
    }
}
