//! The one table of resources every layer uses: the API server (keys, status subresource,
//! admission), the CLI (short names, `api-resources`) and the client.

use crate::admit::admit;
pub use crate::info::{NameRule, ResourceInfo};
use k8s_openapi::api::certificates::v1 as certificates;
use k8s_openapi::api::policy::v1 as policy;
use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, coordination::v1 as coord};
use k8s_openapi::api::{core::v1 as core, discovery::v1 as discovery, rbac::v1 as rbac};

macro_rules! resources {
    ($( $ty:ty => { $kind:literal, $group:literal, $plural:literal, [$($short:literal),*],
        namespaced: $ns:literal, status: $st:literal, name: $rule:ident,
        fields: [$($field:literal),*] } ),* $(,)?) => {
        /// Every resource the API serves.
        pub static RESOURCES: &[ResourceInfo] = &[$(
            ResourceInfo {
                kind: $kind,
                group: $group,
                version: "v1",
                plural: $plural,
                short_names: &[$($short),*],
                namespaced: $ns,
                has_status: $st,
                name_rule: NameRule::$rule,
                field_selectors: &[$($field),*],
                admit: admit::<$ty>,
            }
        ),*];
    };
}

resources! {
    core::Namespace => { "Namespace", "", "namespaces", ["ns"], namespaced: false, status: true,
        name: Label, fields: ["status.phase"] },
    core::Node => { "Node", "", "nodes", ["no"], namespaced: false, status: true,
        name: Subdomain, fields: ["spec.unschedulable"] },
    core::Pod => { "Pod", "", "pods", ["po"], namespaced: true, status: true, name: Subdomain,
        fields: ["spec.nodeName", "status.phase", "spec.restartPolicy", "spec.schedulerName",
            "spec.serviceAccountName", "status.podIP", "status.nominatedNodeName"] },
    core::Service => { "Service", "", "services", ["svc"], namespaced: true, status: true,
        name: Label1035, fields: ["spec.clusterIP", "spec.type"] },
    core::Endpoints => { "Endpoints", "", "endpoints", ["ep"], namespaced: true, status: false,
        name: Subdomain, fields: [] },
    core::ConfigMap => { "ConfigMap", "", "configmaps", ["cm"], namespaced: true, status: false,
        name: Subdomain, fields: [] },
    core::Secret => { "Secret", "", "secrets", [], namespaced: true, status: false,
        name: Subdomain, fields: ["type"] },
    core::ServiceAccount => { "ServiceAccount", "", "serviceaccounts", ["sa"], namespaced: true,
        status: false, name: Subdomain, fields: [] },
    core::Event => { "Event", "", "events", ["ev"], namespaced: true, status: false,
        name: Subdomain, fields: ["involvedObject.kind", "involvedObject.name",
            "involvedObject.namespace", "involvedObject.uid", "reason", "type", "source"] },
    coord::Lease => { "Lease", "coordination.k8s.io", "leases", [], namespaced: true,
        status: false, name: Subdomain, fields: [] },
    discovery::EndpointSlice => { "EndpointSlice", "discovery.k8s.io", "endpointslices", [],
        namespaced: true, status: false, name: Subdomain, fields: [] },
    apps::ReplicaSet => { "ReplicaSet", "apps", "replicasets", ["rs"], namespaced: true,
        status: true, name: Subdomain, fields: [] },
    apps::Deployment => { "Deployment", "apps", "deployments", ["deploy"], namespaced: true,
        status: true, name: Subdomain, fields: [] },
    apps::DaemonSet => { "DaemonSet", "apps", "daemonsets", ["ds"], namespaced: true,
        status: true, name: Subdomain, fields: [] },
    apps::StatefulSet => { "StatefulSet", "apps", "statefulsets", ["sts"], namespaced: true,
        status: true, name: Subdomain, fields: [] },
    apps::ControllerRevision => { "ControllerRevision", "apps", "controllerrevisions", [],
        namespaced: true, status: false, name: Subdomain, fields: [] },
    batch::Job => { "Job", "batch", "jobs", [], namespaced: true, status: true,
        name: Subdomain, fields: ["status.successful"] },
    batch::CronJob => { "CronJob", "batch", "cronjobs", ["cj"], namespaced: true, status: true,
        name: Subdomain, fields: [] },
    policy::PodDisruptionBudget => { "PodDisruptionBudget", "policy", "poddisruptionbudgets",
        ["pdb"], namespaced: true, status: true, name: Subdomain, fields: [] },
    rbac::Role => { "Role", "rbac.authorization.k8s.io", "roles", [], namespaced: true,
        status: false, name: PathSegment, fields: [] },
    rbac::ClusterRole => { "ClusterRole", "rbac.authorization.k8s.io", "clusterroles", [],
        namespaced: false, status: false, name: PathSegment, fields: [] },
    rbac::RoleBinding => { "RoleBinding", "rbac.authorization.k8s.io", "rolebindings", [],
        namespaced: true, status: false, name: PathSegment, fields: [] },
    rbac::ClusterRoleBinding => { "ClusterRoleBinding", "rbac.authorization.k8s.io",
        "clusterrolebindings", [], namespaced: false, status: false, name: PathSegment,
        fields: [] },
    certificates::CertificateSigningRequest => { "CertificateSigningRequest",
        "certificates.k8s.io", "certificatesigningrequests", ["csr"], namespaced: false,
        status: true, name: Subdomain, fields: ["spec.signerName"] },
}

/// Finds a resource the way kubectl does: by plural, singular (kind, any case), short name,
/// or `plural.group`.
pub fn lookup(name: &str) -> Option<&'static ResourceInfo> {
    // Every request resolves its plural here (authorization's API group): that exact match
    // allocates nothing.
    if let Some(r) = RESOURCES.iter().find(|r| r.plural == name) {
        return Some(r);
    }
    let lower = name.to_ascii_lowercase();
    let (base, group) = match lower.split_once('.') {
        Some((b, g)) => (b.to_string(), Some(g.to_string())),
        None => (lower.clone(), None),
    };
    RESOURCES.iter().find(|r| {
        let name_ok = r.plural == base
            || r.kind.to_ascii_lowercase() == base
            || r.short_names.contains(&base.as_str());
        name_ok
            && group.as_deref().is_none_or(|g| g == r.group || (g == "core" && r.group.is_empty()))
    })
}

/// The resource of a manifest's `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES.iter().find(|r| r.kind == kind && r.api_version() == api_version)
}

/// The resource of a kind with any version, for "did you mean" errors.
pub fn by_kind_any_version(kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES.iter().find(|r| r.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_like_kubectl() {
        for (q, plural) in [
            ("po", "pods"),
            ("pod", "pods"),
            ("Pods", "pods"),
            ("deploy", "deployments"),
            ("deployment.apps", "deployments"),
            ("deployments.apps", "deployments"),
            ("svc", "services"),
            ("ns", "namespaces"),
            ("cj", "cronjobs"),
            ("leases.coordination.k8s.io", "leases"),
        ] {
            assert_eq!(lookup(q).map(|r| r.plural), Some(plural), "{q}");
        }
        assert!(lookup("deploy.batch").is_none());
        assert!(lookup("widgets").is_none());
        assert_eq!(by_kind("apps/v1", "Deployment").unwrap().plural, "deployments");
        assert!(by_kind("extensions/v1beta1", "Deployment").is_none());
    }

    #[test]
    fn table_is_consistent_with_k8s_openapi() {
        let mut plurals = std::collections::HashSet::new();
        for r in RESOURCES {
            assert!(plurals.insert(r.plural), "duplicate plural {}", r.plural);
            // The typed decoder checks apiVersion and kind: an empty object of this kind must
            // admit up to validation (a missing name), not fail on the type.
            let obj = serde_json::json!({"apiVersion": r.api_version(), "kind": r.kind});
            let err = (r.admit)(&obj, None, r).unwrap_err();
            assert!(err.message.contains("metadata.name"), "{}: {}", r.kind, err.message);
        }
        assert_eq!(
            lookup("pods").unwrap().key("default", "web"),
            "/registry/core/pods/default/web"
        );
        assert_eq!(lookup("nodes").unwrap().key("", "n1"), "/registry/core/nodes/n1");
    }
}
