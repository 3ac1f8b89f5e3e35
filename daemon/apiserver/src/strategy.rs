//! Per-kind rules of the write path, one place per kind, as the Kubernetes API server's
//! registry strategies (PrepareForCreate, PrepareForUpdate, allocation, graceful deletion).
//! The generic path in `lib.rs` never asks which kind it holds: it asks the kind's strategy.
//!
//! ```text
//!  create: strip status? ─▶ admission ─▶ prepare_for_create ─▶ allocate_create ─▶ store
//!  update: keep server-owned ─▶ prepare_for_update ─▶ admission ─▶ allocate_update ─▶ store
//!  delete: deletion_grace / held_by_spec / needs_agent ─▶ mark_deleting ─▶ store ─▶ release
//! ```

use crate::alloc::{self, Plan};
use crate::kv::Op;
use crate::ApiServer;
use flotilla_api::error::ApiError;
use serde_json::{json, Value};

/// What one kind adds to the generic write path. Every method has the behaviour of a kind
/// with no rules of its own.
pub trait Strategy: Sync {
    /// Whether a create keeps the status the client sent (status is otherwise the
    /// controllers' and agents' to write).
    fn status_on_create(&self) -> bool {
        false
    }

    /// After admission of a create, before allocation: what the server adds.
    fn prepare_for_create(&self, _api: &ApiServer, _ns: &str, _obj: &mut Value) {}

    /// Before admission of an update of `current` to `new`: what the server carries over or
    /// sets (`sub`: the subresource the request came through, "" for the object).
    fn prepare_for_update(&self, _current: &Value, _new: &mut Value, _sub: &str) {}

    /// Whether creates allocate from shared pools (each attempt starts again from the
    /// admitted object, and a lost race is retried).
    fn allocates(&self) -> bool {
        false
    }

    /// The keys a create claims (`attempt` counts retries after lost races).
    fn allocate_create(
        &self,
        _api: &ApiServer,
        _obj: &mut Value,
        _attempt: usize,
    ) -> Result<Plan, ApiError> {
        Ok(Plan::default())
    }

    /// The keys an update claims and releases.
    fn allocate_update(
        &self,
        _api: &ApiServer,
        _current: &Value,
        _obj: &mut Value,
    ) -> Result<Plan, ApiError> {
        Ok(Plan::default())
    }

    /// The deletes that release what `current` holds, when it goes.
    fn release(&self, _current: &Value, _ops: &mut Vec<Op>) {}

    /// Finalizers in the spec that hold the object after deletion (a Namespace's).
    fn held_by_spec(&self, _obj: &Value) -> bool {
        false
    }

    /// The grace period a delete gives (`requested`: the request's gracePeriodSeconds).
    fn deletion_grace(&self, _obj: &Value, _requested: Option<i64>) -> i64 {
        0
    }

    /// Whether an object deleted with `grace` seconds left waits for its node's agent before
    /// it goes (and so is deleted gracefully rather than at once).
    fn needs_agent(&self, _obj: &Value, _grace: i64) -> bool {
        false
    }

    /// What a graceful deletion sets besides the deletion timestamp.
    fn mark_deleting(&self, _obj: &mut Value) {}
}

/// The strategy of `kind`: the one place the write path dispatches on a kind.
pub fn of(kind: &str) -> &'static dyn Strategy {
    match kind {
        "Pod" => &PodStrategy,
        "Service" => &ServiceStrategy,
        "Namespace" => &NamespaceStrategy,
        "Node" => &NodeStrategy,
        "CertificateSigningRequest" => &CsrStrategy,
        _ => &Default,
    }
}

struct Default;
impl Strategy for Default {}

struct NodeStrategy;
impl Strategy for NodeStrategy {
    /// A Node registers with its capacity and conditions.
    fn status_on_create(&self) -> bool {
        true
    }
}

/// Kubernetes labels every namespace with its name (`kubernetes.io/metadata.name`), so that
/// selectors (NetworkPolicy's namespaceSelector) can pick namespaces by name.
fn label_namespace_name(obj: &mut Value) {
    let Some(name) = obj.pointer("/metadata/name").and_then(Value::as_str).map(String::from) else {
        return;
    };
    let meta = &mut obj["metadata"];
    if !meta["labels"].is_object() {
        meta["labels"] = json!({});
    }
    meta["labels"]["kubernetes.io/metadata.name"] = json!(name);
}

struct NamespaceStrategy;
impl Strategy for NamespaceStrategy {
    fn prepare_for_create(&self, _api: &ApiServer, _ns: &str, obj: &mut Value) {
        label_namespace_name(obj);
    }

    fn prepare_for_update(&self, _current: &Value, new: &mut Value, _sub: &str) {
        label_namespace_name(new);
    }

    fn held_by_spec(&self, obj: &Value) -> bool {
        obj.pointer("/spec/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty())
    }

    fn mark_deleting(&self, obj: &mut Value) {
        if let Some(o) = obj.as_object_mut() {
            let status = o.entry("status").or_insert_with(|| json!({}));
            if let Some(s) = status.as_object_mut() {
                s.insert("phase".into(), json!("Terminating"));
            }
        }
    }
}

struct ServiceStrategy;
impl Strategy for ServiceStrategy {
    fn prepare_for_update(&self, current: &Value, new: &mut Value, _sub: &str) {
        alloc::keep_allocated(current, new);
    }

    fn allocates(&self) -> bool {
        true
    }

    fn allocate_create(
        &self,
        api: &ApiServer,
        obj: &mut Value,
        attempt: usize,
    ) -> Result<Plan, ApiError> {
        alloc::plan_create(api, obj, attempt)
    }

    fn allocate_update(
        &self,
        api: &ApiServer,
        current: &Value,
        obj: &mut Value,
    ) -> Result<Plan, ApiError> {
        alloc::plan_update(api, current, obj)
    }

    fn release(&self, current: &Value, ops: &mut Vec<Op>) {
        alloc::release_all(current, ops);
    }
}

/// Kubernetes' CSR strategies: approval and issuance are separate concerns. The approval
/// subresource changes only the conditions; the status subresource anything but the
/// Approved and Denied conditions; neither changes the spec.
struct CsrStrategy;
impl Strategy for CsrStrategy {
    fn prepare_for_update(&self, current: &Value, new: &mut Value, sub: &str) {
        let is_approval = |c: &Value| matches!(c["type"].as_str(), Some("Approved" | "Denied"));
        let conds = |v: &Value| v.pointer("/status/conditions").and_then(Value::as_array).cloned();
        match sub {
            "approval" => {
                let asked = conds(new).unwrap_or_default();
                let mut status = current.get("status").cloned().unwrap_or_else(|| json!({}));
                status["conditions"] = json!(asked);
                new["status"] = status;
            }
            "status" => {
                let mut out: Vec<Value> = conds(new)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|c| !is_approval(c))
                    .collect();
                out.extend(conds(current).unwrap_or_default().into_iter().filter(is_approval));
                if !new["status"].is_object() {
                    new["status"] = json!({});
                }
                new["status"]["conditions"] = json!(out);
            }
            _ => {}
        }
        // A condition's times: lastUpdateTime defaults to now; lastTransitionTime is kept
        // while its status stays, and is now when it changes.
        let now = crate::now_rfc3339();
        let old = conds(current).unwrap_or_default();
        if let Some(cs) = new.pointer_mut("/status/conditions").and_then(Value::as_array_mut) {
            if cs.is_empty() {
                if let Some(st) = new["status"].as_object_mut() {
                    st.remove("conditions");
                }
                return;
            }
            for c in cs.iter_mut() {
                let before = old.iter().find(|o| o["type"] == c["type"]);
                if c["lastUpdateTime"].as_str().is_none_or(str::is_empty) {
                    c["lastUpdateTime"] = json!(now);
                }
                if c["lastTransitionTime"].as_str().is_none_or(str::is_empty) {
                    c["lastTransitionTime"] = match before {
                        Some(b)
                            if b["status"] == c["status"]
                                && b["lastTransitionTime"].is_string() =>
                        {
                            b["lastTransitionTime"].clone()
                        }
                        _ => json!(now),
                    };
                }
            }
        }
    }
}

struct PodStrategy;
impl Strategy for PodStrategy {
    fn prepare_for_create(&self, api: &ApiServer, ns: &str, obj: &mut Value) {
        api.admit_pod_service_account(ns, obj);
    }

    fn prepare_for_update(&self, current: &Value, new: &mut Value, sub: &str) {
        if sub.is_empty() {
            crate::mark_scheduled(current, new);
            crate::tokens::keep_token_volume(current, new);
        }
    }

    /// The request's grace period, else the pod's terminationGracePeriodSeconds (30).
    fn deletion_grace(&self, obj: &Value, requested: Option<i64>) -> i64 {
        let spec = obj.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64);
        requested.unwrap_or(spec.unwrap_or(30))
    }

    /// A bound pod that has not finished is stopped by its agent, which then deletes it with
    /// a zero grace period.
    fn needs_agent(&self, pod: &Value, grace: i64) -> bool {
        let bound = !pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("").is_empty();
        let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("");
        bound && grace > 0 && !matches!(phase, "Succeeded" | "Failed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_approval_changes_only_conditions_and_status_keeps_approval() {
        let s = of("CertificateSigningRequest");
        let approved = json!({"type": "Approved", "status": "True",
            "lastUpdateTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"});
        let current = json!({"spec": {"signerName": "x/y"},
            "status": {"conditions": [approved.clone()]}});
        // Through /status: a certificate lands; dropping Approved is not the writer's to do.
        let mut new = json!({"spec": {"signerName": "x/y"},
            "status": {"certificate": "Y2VydA==", "conditions": []}});
        s.prepare_for_update(&current, &mut new, "status");
        assert_eq!(new["status"]["conditions"], json!([approved]));
        assert_eq!(new["status"]["certificate"], "Y2VydA==");
        // Through /approval: the conditions change, a certificate in the body does not land.
        let mut new = json!({"spec": {"signerName": "x/y"},
            "status": {"certificate": "Zm9yZ2Vk", "conditions": [{"type": "Denied", "status": "True"}]}});
        s.prepare_for_update(&json!({"spec": {"signerName": "x/y"}}), &mut new, "approval");
        assert!(new["status"].get("certificate").is_none());
        let c = &new["status"]["conditions"][0];
        assert_eq!(c["type"], "Denied");
        assert!(c["lastUpdateTime"].is_string() && c["lastTransitionTime"].is_string());
    }

    #[test]
    fn only_a_bound_unfinished_pod_with_grace_left_waits_for_its_agent() {
        let pod = |node: &str, phase: &str, grace: i64| {
            json!({"metadata": {"deletionGracePeriodSeconds": grace},
                   "spec": {"nodeName": node}, "status": {"phase": phase}})
        };
        let s = of("Pod");
        assert!(s.needs_agent(&pod("n1", "Running", 30), 30));
        assert!(!s.needs_agent(&pod("", "Pending", 30), 30), "unbound");
        assert!(!s.needs_agent(&pod("n1", "Succeeded", 30), 30), "finished");
        assert!(!s.needs_agent(&pod("n1", "Running", 0), 0), "no grace left");
        assert!(!of("ConfigMap").needs_agent(&pod("n1", "Running", 30), 30));
        assert_eq!(s.deletion_grace(&pod("n1", "Running", 0), None), 30);
        assert_eq!(s.deletion_grace(&pod("n1", "Running", 0), Some(5)), 5);
        assert_eq!(of("ConfigMap").deletion_grace(&json!({}), Some(5)), 0);
    }

    #[test]
    fn a_namespace_is_held_by_its_spec_finalizers_and_marked_terminating() {
        let s = of("Namespace");
        let mut ns = json!({"spec": {"finalizers": ["kubernetes"]}});
        assert!(s.held_by_spec(&ns));
        assert!(!s.held_by_spec(&json!({"spec": {"finalizers": []}})));
        assert!(!of("Pod").held_by_spec(&ns), "only a Namespace's spec finalizers hold it");
        s.mark_deleting(&mut ns);
        assert_eq!(ns["status"]["phase"], "Terminating");
    }
}
