//! Admission of one object: decode it into its k8s-openapi type (type errors name the field
//! path), report fields the type does not know, apply defaults, validate (and, on update,
//! check immutable fields against the stored object). Pure: the API server does the I/O.

use crate::error::{ApiError, Errors, FieldError, FieldErrorType};
use crate::info::ResourceInfo;
use crate::validate::validate_meta;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

pub use crate::info::{AdmitFn, Admitted};

/// What each kind adds to the generic pipeline. Defaults and checks follow Kubernetes'
/// `SetDefaults_*` and `Validate*` functions for the fields Flotilla supports.
pub trait Kind: Serialize + DeserializeOwned + k8s_openapi::Metadata<Ty = ObjectMeta> {
    fn set_defaults(&mut self) {}
    fn validate(&self, _errs: &mut Errors) {}
    fn validate_update(&self, _old: &Self, _errs: &mut Errors) {}
}

/// Decodes `v` as `T`; an error names the JSON path of the field that failed.
pub fn decode<T: DeserializeOwned>(v: &Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        FieldError {
            field: if path == "." { "<object>".into() } else { path },
            kind: FieldErrorType::Invalid,
            message: e.into_inner().to_string(),
        }
    })
}

pub fn admit<K: Kind>(
    input: &Value,
    old: Option<&Value>,
    info: &'static ResourceInfo,
) -> Result<Admitted, ApiError> {
    let name = input.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
    let what = info.qualified_kind();
    if !input.is_object() {
        return Err(ApiError::bad_request(format!("{what}: the object must be a JSON/YAML map")));
    }
    let mut obj: K = decode(input).map_err(|e| ApiError::invalid(&what, &name, vec![e]))?;
    let decoded = serde_json::to_value(&obj).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut warnings = Vec::new();
    unknown_fields(input, &decoded, "", &mut warnings);
    obj.set_defaults();
    let mut errs = Errors::default();
    validate_meta(obj.metadata(), info, &mut errs);
    obj.validate(&mut errs);
    if let Some(old) = old {
        let old: K = decode(old).map_err(|e| ApiError::internal(format!("stored {what}: {e}")))?;
        obj.validate_update(&old, &mut errs);
    }
    if !errs.is_empty() {
        return Err(ApiError::invalid(&what, &name, errs.0));
    }
    let object = serde_json::to_value(&obj).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Admitted { object, warnings })
}

/// Fields present in `input` that did not survive decoding: unknown to Kubernetes or not
/// supported by this version of the type.
fn unknown_fields(input: &Value, decoded: &Value, path: &str, out: &mut Vec<String>) {
    match (input, decoded) {
        (Value::Object(i), Value::Object(d)) => {
            for (k, v) in i {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match d.get(k) {
                    None if !v.is_null() => out.push(format!("unknown field \"{p}\"")),
                    None => {}
                    Some(dv) => unknown_fields(v, dv, &p, out),
                }
            }
        }
        (Value::Array(i), Value::Array(d)) => {
            for (n, (iv, dv)) in i.iter().zip(d).enumerate() {
                unknown_fields(iv, dv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use crate::resources::lookup;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_warnings_with_paths() {
        let pods = lookup("pods").unwrap();
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default", "bogus": 1},
            "spec": {"containers": [{"name": "c", "image": "busybox", "imagePullPolicyy": "x"}],
                     "nodeName": null}});
        let a = (pods.admit)(&pod, None, pods).unwrap();
        assert_eq!(
            a.warnings,
            vec![
                "unknown field \"metadata.bogus\"",
                "unknown field \"spec.containers[0].imagePullPolicyy\""
            ]
        );
        assert!(a.object["metadata"].get("bogus").is_none());
    }

    #[test]
    fn type_errors_name_the_path() {
        let deploys = lookup("deployments").unwrap();
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"replicas": "three"}});
        let e = (deploys.admit)(&d, None, deploys).unwrap_err();
        assert_eq!(e.causes[0].field, "spec.replicas");
        assert!(
            e.message.starts_with("Deployment.apps \"web\" is invalid: spec.replicas: "),
            "{}",
            e.message
        );
    }
}
