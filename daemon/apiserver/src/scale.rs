//! The scale subresource (`autoscaling/v1` Scale) of Deployments, ReplicaSets and
//! StatefulSets: what `kubectl scale` and autoscalers read and write. A view over the object:
//! writing it changes only `spec.replicas`.

use super::{ApiServer, Target};
use crate::request::User;
use flotilla_api::error::{ApiError, Errors, Reason};
use flotilla_api::patch::PatchKind;
use flotilla_api::ResourceInfo;
use serde_json::{json, Value};

/// Whether `info` has a scale subresource.
pub fn scalable(info: &ResourceInfo) -> bool {
    matches!(info.plural, "deployments" | "replicasets" | "statefulsets")
}

/// A label selector as a string (`app=web,tier in (a,b)`), as Scale's status carries it.
fn selector_string(sel: &Value) -> String {
    let mut parts: Vec<String> = sel["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> =
            e["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        parts.push(match e["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            _ => format!("!{key}"),
        });
    }
    parts.join(",")
}

/// The object's Scale.
pub fn to_scale(obj: &Value) -> Value {
    let m = &obj["metadata"];
    json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
            "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": selector_string(&obj["spec"]["selector"])}})
}

/// How a write changes the Scale.
pub enum ScaleChange<'a> {
    /// PUT: the Scale as sent (its resourceVersion, if any, is a precondition).
    Replace(&'a [u8]),
    Patch(PatchKind, &'a [u8]),
}

impl ApiServer {
    pub async fn get_scale(
        &self,
        info: &'static ResourceInfo,
        ns: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        check(info)?;
        Ok(to_scale(&self.get(info, ns, name).await?))
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn update_scale(
        &self,
        user: &User,
        info: &'static ResourceInfo,
        ns: &str,
        name: &str,
        change: ScaleChange<'_>,
        dry_run: bool,
        manager: &str,
    ) -> Result<Value, ApiError> {
        check(info)?;
        let what = "Scale.autoscaling";
        let sent: Option<Value> = match change {
            ScaleChange::Replace(body) => Some(serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!("{what}: the object is not valid JSON: {e}"))
            })?),
            ScaleChange::Patch(..) => None,
        };
        if let Some(s) = &sent {
            let n = s["metadata"]["name"].as_str().unwrap_or(name);
            if n != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
        }
        let rv = sent
            .as_ref()
            .and_then(|s| s["metadata"]["resourceVersion"].as_str())
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "metadata.resourceVersion {s:?} is not a revision"
                    ))
                })
            })
            .transpose()?;
        let ns = if info.namespaced { ns } else { "" };
        let target = Target {
            user,
            verb: if sent.is_some() { "update" } else { "patch" },
            subresource: "scale",
            info,
            ns,
            name,
            rv,
            manager,
            applied: false,
        };
        let (obj, _) = self
            .write_loop(
                target,
                dry_run,
                |current| {
                    let scale = match (&sent, &change) {
                        (Some(s), _) => s.clone(),
                        (None, ScaleChange::Patch(kind, p)) => {
                            flotilla_api::patch::apply(&to_scale(current), *kind, p)?
                        }
                        (None, ScaleChange::Replace(_)) => unreachable!("parsed above"),
                    };
                    let replicas = &scale["spec"]["replicas"];
                    let mut errs = Errors::default();
                    match replicas.as_i64() {
                        Some(n) if (0..=i32::MAX as i64).contains(&n) => {
                            let mut out = current.clone();
                            out["spec"]["replicas"] = json!(n);
                            Ok(Some(out))
                        }
                        _ => {
                            errs.invalid(
                                "spec.replicas",
                                replicas,
                                "must be greater than or equal to 0",
                            );
                            Err(ApiError::invalid(what, name, errs.0))
                        }
                    }
                },
                false,
            )
            .await?;
        Ok(to_scale(&obj))
    }
}

fn check(info: &ResourceInfo) -> Result<(), ApiError> {
    if scalable(info) {
        Ok(())
    } else {
        Err(ApiError::new(
            Reason::NotFound,
            format!("{} has no subresource \"scale\"", info.plural),
        ))
    }
}
