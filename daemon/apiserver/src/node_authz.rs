//! The Node authorizer and NodeRestriction admission, after Kubernetes'
//! `plugin/pkg/auth/authorizer/node` and `plugin/pkg/admission/noderestriction`.
//!
//! A node's identity (`system:node:<name>`, group `system:nodes`) reads the pods bound to it
//! and the Secrets, ConfigMaps, claims and service accounts those pods use: the graph is the
//! pods cache's node index, walked per request (a node asks only when it starts a pod). Its
//! other permissions are `rbac::node_rules`; NodeRestriction keeps its writes to its own Node,
//! its own Lease and its own pods.

use crate::cache::WatchCache;
use crate::rbac::{node_rules, Rule};
use crate::request::{Attributes, Decision, User};
use flotilla_api::error::ApiError;
use flotilla_api::selector::FieldSelector;
use serde_json::Value;
use std::sync::Arc;

/// The node a caller is, if it is one (Kubernetes' `NodeIdentity`).
pub fn node_identity(u: &User) -> Option<&str> {
    let name = u.name.strip_prefix("system:node:")?;
    u.groups.iter().any(|g| g == "system:nodes").then_some(name)
}

pub struct NodeAuthorizer {
    pods: Arc<WatchCache>,
    rules: Vec<Rule>,
}

/// Names a pod's spec refers to, of one kind.
fn referenced(pod: &Value, kind: &str) -> Vec<String> {
    let spec = &pod["spec"];
    let mut out = Vec::new();
    let mut push = |v: &Value| {
        if let Some(s) = v.as_str().filter(|s| !s.is_empty()) {
            out.push(s.to_string());
        }
    };
    let containers = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec[k].as_array().into_iter().flatten());
    match kind {
        "secrets" | "configmaps" => {
            let (vol, vol_key, env_ref, env_from) = if kind == "secrets" {
                ("secret", "secretName", "secretKeyRef", "secretRef")
            } else {
                ("configMap", "name", "configMapKeyRef", "configMapRef")
            };
            for v in spec["volumes"].as_array().into_iter().flatten() {
                push(&v[vol][vol_key]);
                for s in v["projected"]["sources"].as_array().into_iter().flatten() {
                    push(&s[vol]["name"]);
                }
            }
            for c in containers {
                for e in c["env"].as_array().into_iter().flatten() {
                    push(&e["valueFrom"][env_ref]["name"]);
                }
                for e in c["envFrom"].as_array().into_iter().flatten() {
                    push(&e[env_from]["name"]);
                }
            }
            if kind == "secrets" {
                for s in spec["imagePullSecrets"].as_array().into_iter().flatten() {
                    push(&s["name"]);
                }
            }
        }
        "persistentvolumeclaims" => {
            let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
            for v in spec["volumes"].as_array().into_iter().flatten() {
                push(&v["persistentVolumeClaim"]["claimName"]);
                if v["ephemeral"].is_object() {
                    let claim = format!("{pod_name}-{}", v["name"].as_str().unwrap_or_default());
                    push(&Value::String(claim));
                }
            }
        }
        "serviceaccounts" => {
            let sa = spec["serviceAccountName"].as_str().filter(|s| !s.is_empty());
            out.push(sa.unwrap_or("default").to_string());
        }
        _ => {}
    }
    out
}

impl NodeAuthorizer {
    pub fn new(pods: Arc<WatchCache>) -> NodeAuthorizer {
        NodeAuthorizer { pods, rules: node_rules() }
    }

    /// Whether a pod bound to `node` in `ns` uses `kind` `name`.
    fn related(&self, node: &str, kind: &str, ns: &str, name: &str) -> bool {
        self.pods
            .on_node(node)
            .iter()
            .filter(|p| p.namespace == ns)
            .any(|p| referenced(&p.value, kind).iter().any(|n| n == name))
    }

    fn no_relationship(node: &str) -> Decision {
        Decision::Deny(format!("no relationship found between node '{node}' and this object"))
    }

    pub fn authorize(&self, a: &Attributes<'_>) -> Decision {
        let Some(node) = node_identity(a.user) else { return Decision::NoOpinion };
        if node.is_empty() {
            return Decision::Deny("unknown node".into());
        }
        if !a.is_resource() {
            return Decision::NoOpinion;
        }
        match (a.group, a.resource, a.subresource) {
            ("", "secrets" | "configmaps" | "persistentvolumeclaims", "") => {
                if a.verb != "get" || a.name.is_empty() {
                    return Decision::Deny("can only get individual resources of this type".into());
                }
                if self.related(node, a.resource, a.namespace, a.name) {
                    Decision::Allow
                } else {
                    Self::no_relationship(node)
                }
            }
            ("", "serviceaccounts", "token") => {
                if a.verb != "create" {
                    return Decision::Deny(
                        "can only create tokens for individual service accounts".into(),
                    );
                }
                if self.related(node, "serviceaccounts", a.namespace, a.name) {
                    Decision::Allow
                } else {
                    Self::no_relationship(node)
                }
            }
            ("", "pods", "") if matches!(a.verb, "list" | "watch") => {
                let own = FieldSelector::parse(a.field_selector)
                    .ok()
                    .and_then(|f| f.exact("spec.nodeName").map(|n| n == node))
                    .unwrap_or(false);
                if own {
                    Decision::Allow
                } else {
                    Decision::Deny(format!(
                        "can only {} pods with spec.nodeName field selector set to '{node}'",
                        a.verb
                    ))
                }
            }
            ("", "pods", "") if a.verb == "get" => {
                let bound = self
                    .pods
                    .get(&format!("{}/{}", a.namespace, a.name))
                    .is_some_and(|p| p.node_name == node);
                if bound {
                    Decision::Allow
                } else {
                    Self::no_relationship(node)
                }
            }
            ("coordination.k8s.io", "leases", "") => {
                let own = a.namespace == "kube-node-lease"
                    && (a.name == node || (a.verb == "create" && a.name.is_empty()));
                if own && matches!(a.verb, "get" | "create" | "update" | "patch" | "delete") {
                    Decision::Allow
                } else {
                    Decision::Deny(
                        "can only access node lease with the same name as the requesting node"
                            .into(),
                    )
                }
            }
            _ if self.rules.iter().any(|r| r.allows(a)) => Decision::Allow,
            _ => Decision::NoOpinion,
        }
    }
}

/// NodeRestriction: a node writes only its own Node, its own Lease and the status of its
/// own pods, and deletes only its own pods. `object` is None for a delete.
pub fn node_restriction(
    a: &Attributes<'_>,
    object: Option<&Value>,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let Some(node) = node_identity(a.user) else { return Ok(()) };
    let deny = |msg: String| Err(ApiError::forbidden(msg));
    let node_name = |v: Option<&Value>| {
        v.and_then(|v| v["spec"]["nodeName"].as_str()).unwrap_or_default().to_string()
    };
    let obj_name =
        object.or(old).and_then(|v| v["metadata"]["name"].as_str()).unwrap_or(a.name).to_string();
    match (a.group, a.resource) {
        ("", "pods") => match (a.verb, a.subresource) {
            ("create", "") => {
                let mirror = object
                    .and_then(|o| o["metadata"]["annotations"]["kubernetes.io/config.mirror"].as_str())
                    .is_some();
                if !mirror {
                    return deny(format!(
                        "pod does not have \"kubernetes.io/config.mirror\" annotation, node \"{node}\" can only create mirror pods"
                    ));
                }
                if node_name(object) != node {
                    return deny(format!(
                        "node \"{node}\" can only create pods with spec.nodeName set to itself"
                    ));
                }
                Ok(())
            }
            ("update" | "patch", "status") if node_name(old) != node => deny(format!(
                "node \"{node}\" can only update pod status for pods with spec.nodeName set to itself"
            )),
            ("delete", _) if node_name(old) != node => deny(format!(
                "node \"{node}\" can only delete pods with spec.nodeName set to itself"
            )),
            ("create", "eviction") if node_name(old) != node => deny(format!(
                "node \"{node}\" can only evict pods with spec.nodeName set to itself"
            )),
            _ => Ok(()),
        },
        ("coordination.k8s.io", "leases") if obj_name != node => deny(format!(
            "node \"{node}\" can only access node lease with the same name as the requesting node"
        )),
        ("", "nodes") => {
            if obj_name != node {
                return deny(format!("node \"{node}\" is not allowed to modify node \"{obj_name}\""));
            }
            if let (Some(new), Some(old)) = (object, old) {
                if a.subresource.is_empty() && new["spec"]["taints"] != old["spec"]["taints"] {
                    return deny(format!("node \"{node}\" is not allowed to modify taints"));
                }
            }
            let labels = |v: Option<&Value>| v.map(|v| v["metadata"]["labels"].clone()).unwrap_or_default();
            let (new_l, old_l) = (labels(object), labels(old));
            let restricted = |l: &Value| -> Vec<(String, Value)> {
                l.as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(k, _)| {
                        k.split_once('/').is_some_and(|(p, _)| {
                            p == "node-restriction.kubernetes.io"
                                || p.ends_with(".node-restriction.kubernetes.io")
                        })
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            };
            if restricted(&new_l) != restricted(&old_l) {
                return deny(format!(
                    "is not allowed to modify labels with the node-restriction.kubernetes.io/ prefix (node \"{node}\")"
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pod_refers_to_what_it_mounts_and_reads() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {
            "serviceAccountName": "sa",
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [{"name": "v", "secret": {"secretName": "vol"}},
                {"name": "c", "configMap": {"name": "cm"}},
                {"name": "pr", "projected": {"sources": [{"secret": {"name": "proj"}}]}},
                {"name": "d", "persistentVolumeClaim": {"claimName": "claim"}}],
            "containers": [{"name": "a", "env": [{"name": "X",
                "valueFrom": {"secretKeyRef": {"name": "env", "key": "k"}}}],
                "envFrom": [{"configMapRef": {"name": "cm2"}}]}]}});
        let mut s = referenced(&pod, "secrets");
        s.sort();
        assert_eq!(s, ["env", "proj", "pull", "vol"]);
        let mut c = referenced(&pod, "configmaps");
        c.sort();
        assert_eq!(c, ["cm", "cm2"]);
        assert_eq!(referenced(&pod, "persistentvolumeclaims"), ["claim"]);
        assert_eq!(referenced(&pod, "serviceaccounts"), ["sa"]);
    }
}
