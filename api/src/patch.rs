//! Patches: JSON merge patch (RFC 7386, what `kubectl patch --type merge` sends) and JSON patch
//! (RFC 6902), both with the `json-patch` crate.

use crate::error::ApiError;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
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
        PatchKind::Json => {
            let p: json_patch::Patch = serde_json::from_value(patch_value)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(&mut out, &p)
                .map_err(|e| ApiError::bad_request(format!("the JSON patch failed: {e}")))?;
        }
    }
    Ok(out)
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
}
