//! RBAC (`rbac.authorization.k8s.io/v1`): the authorizer, escalation prevention, and the
//! default roles, after Kubernetes' `plugin/pkg/auth/authorizer/rbac` and its bootstrap
//! policy.
//!
//! The authorizer reads the four kinds from the watch caches. Bindings are few and change
//! rarely, so their rules are compiled into an index that is rebuilt when any of the four
//! caches changes, not per request: a request walks only the bindings whose subjects name
//! its user, its groups or its service account.

use crate::cache::WatchCache;
use crate::request::{Attributes, Decision, User};
use flotilla_api::error::ApiError;
use flotilla_api::selector::LabelSelector;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

/// One PolicyRule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect()
}

impl Rule {
    pub fn from_json(v: &Value) -> Rule {
        Rule {
            verbs: strings(&v["verbs"]),
            api_groups: strings(&v["apiGroups"]),
            resources: strings(&v["resources"]),
            resource_names: strings(&v["resourceNames"]),
            non_resource_urls: strings(&v["nonResourceURLs"]),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut r = json!({"verbs": self.verbs});
        for (k, v) in [
            ("apiGroups", &self.api_groups),
            ("resources", &self.resources),
            ("resourceNames", &self.resource_names),
            ("nonResourceURLs", &self.non_resource_urls),
        ] {
            if !v.is_empty() {
                r[k] = json!(v);
            }
        }
        r
    }

    fn verb(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == "*" || v == verb)
    }

    /// Kubernetes' `RuleAllows`.
    pub fn allows(&self, a: &Attributes<'_>) -> bool {
        if !self.verb(a.verb) {
            return false;
        }
        if !a.is_resource() {
            return self.non_resource_urls.iter().any(|u| url_matches(u, a.path));
        }
        self.api_groups.iter().any(|g| g == "*" || g == a.group)
            && self.resources.iter().any(|r| resource_matches(r, a.resource, a.subresource))
            && (self.resource_names.is_empty() || self.resource_names.iter().any(|n| n == a.name))
    }
}

fn url_matches(rule: &str, path: &str) -> bool {
    rule == "*"
        || rule == path
        || rule.strip_suffix('*').is_some_and(|prefix| path.starts_with(prefix))
}

/// `pods` matches pods only; `pods/log` the subresource; `*` everything; `*/scale` the scale
/// subresource of any resource.
fn resource_matches(rule: &str, resource: &str, sub: &str) -> bool {
    if rule == "*" {
        return true;
    }
    if sub.is_empty() {
        return rule == resource;
    }
    match rule.split_once('/') {
        Some((r, s)) => s == sub && (r == "*" || r == resource),
        None => false,
    }
}

/// A binding compiled: who, and the role's rules (resolved when the index is built).
struct Binding {
    name: String,
    subjects: Vec<Subject>,
    rules: Arc<Vec<Rule>>,
}

#[derive(Clone, Debug)]
enum Subject {
    User(String),
    Group(String),
    /// `system:serviceaccount:<ns>:<name>`, precomputed.
    ServiceAccount(String),
}

impl Subject {
    fn applies(&self, u: &User) -> bool {
        match self {
            Subject::User(n) | Subject::ServiceAccount(n) => *n == u.name,
            Subject::Group(g) => u.groups.iter().any(|x| x == g),
        }
    }
}

#[derive(Default)]
struct Index {
    cluster_roles: HashMap<String, Arc<Vec<Rule>>>,
    roles: HashMap<(String, String), Arc<Vec<Rule>>>,
    cluster_bindings: Vec<Binding>,
    /// Per namespace.
    bindings: HashMap<String, Vec<Binding>>,
}

fn rules_of(v: &Value) -> Vec<Rule> {
    v["rules"].as_array().into_iter().flatten().map(Rule::from_json).collect()
}

fn labels_of(v: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(v["metadata"]["labels"].clone()).unwrap_or_default()
}

fn subjects_of(v: &Value, binding_ns: &str) -> Vec<Subject> {
    let mut out = Vec::new();
    for s in v["subjects"].as_array().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or_default().to_string();
        match s["kind"].as_str() {
            Some("User") => out.push(Subject::User(name)),
            Some("Group") => out.push(Subject::Group(name)),
            Some("ServiceAccount") => {
                let ns = s["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or(binding_ns);
                out.push(Subject::ServiceAccount(format!("system:serviceaccount:{ns}:{name}")));
            }
            _ => {}
        }
    }
    out
}

impl Index {
    fn build(crs: &WatchCache, roles: &WatchCache, crbs: &WatchCache, rbs: &WatchCache) -> Index {
        let mut ix = Index::default();
        let all_crs: Vec<(String, Value)> =
            crs.objects().iter().map(|o| (o.key.clone(), o.value.clone())).collect();
        // Aggregated ClusterRoles take the rules of every ClusterRole their selectors match
        // (the clusterrole-aggregation controller's union), transitively.
        let own: HashMap<&str, Vec<Rule>> =
            all_crs.iter().map(|(k, v)| (k.as_str(), rules_of(v))).collect();
        let mut effective = own.clone();
        let selectors: Vec<(&str, Vec<LabelSelector>)> = all_crs
            .iter()
            .filter_map(|(k, v)| {
                let sels = v["aggregationRule"]["clusterRoleSelectors"].as_array()?;
                let parsed = sels
                    .iter()
                    .filter_map(|s| serde_json::from_value(s.clone()).ok())
                    .filter_map(|s| LabelSelector::from_k8s(&s).ok())
                    .collect();
                Some((k.as_str(), parsed))
            })
            .collect();
        for _ in 0..8 {
            let mut changed = false;
            for (name, sels) in &selectors {
                let mut rules = own[name].clone();
                for (k, v) in &all_crs {
                    if k != name && sels.iter().any(|s| s.matches(&labels_of(v))) {
                        for r in &effective[k.as_str()] {
                            if !rules.contains(r) {
                                rules.push(r.clone());
                            }
                        }
                    }
                }
                if effective[name] != rules {
                    effective.insert(name, rules);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        ix.cluster_roles =
            effective.into_iter().map(|(k, v)| (k.to_string(), Arc::new(v))).collect();
        for o in roles.objects() {
            let (ns, name) = o.key.split_once('/').unwrap_or(("", &o.key));
            ix.roles.insert((ns.into(), name.into()), Arc::new(rules_of(&o.value)));
        }
        let none = Arc::new(Vec::new());
        for o in crbs.objects() {
            let r = &o.value["roleRef"];
            let rules = match r["kind"].as_str() {
                Some("ClusterRole") => ix.cluster_roles.get(r["name"].as_str().unwrap_or("")),
                _ => None,
            };
            ix.cluster_bindings.push(Binding {
                name: o.key.clone(),
                subjects: subjects_of(&o.value, ""),
                rules: rules.cloned().unwrap_or_else(|| none.clone()),
            });
        }
        for o in rbs.objects() {
            let ns = o.namespace.clone();
            let r = &o.value["roleRef"];
            let role = r["name"].as_str().unwrap_or("").to_string();
            let rules = match r["kind"].as_str() {
                Some("ClusterRole") => ix.cluster_roles.get(&role).cloned(),
                Some("Role") => ix.roles.get(&(ns.clone(), role)).cloned(),
                _ => None,
            };
            ix.bindings.entry(ns.clone()).or_default().push(Binding {
                name: o.key.clone(),
                subjects: subjects_of(&o.value, &ns),
                rules: rules.unwrap_or_else(|| none.clone()),
            });
        }
        ix
    }
}

type Versions = [(u64, i64); 4];

pub struct Rbac {
    caches: [Arc<WatchCache>; 4],
    index: RwLock<(Versions, Arc<Index>)>,
}

impl Rbac {
    /// Over the caches of clusterroles, roles, clusterrolebindings and rolebindings.
    pub fn new(caches: [Arc<WatchCache>; 4]) -> Rbac {
        Rbac { caches, index: RwLock::new(([(u64::MAX, -1); 4], Arc::new(Index::default()))) }
    }

    fn index(&self) -> Arc<Index> {
        let now: Versions = std::array::from_fn(|i| self.caches[i].version());
        {
            let g = self.index.read().expect("rbac lock");
            if g.0 == now {
                return g.1.clone();
            }
        }
        let [crs, roles, crbs, rbs] = &self.caches;
        let ix = Arc::new(Index::build(crs, roles, crbs, rbs));
        *self.index.write().expect("rbac lock") = (now, ix.clone());
        ix
    }

    /// Allow when a binding that applies to the user grants the request; otherwise no
    /// opinion (RBAC never denies).
    pub fn authorize(&self, a: &Attributes<'_>) -> Decision {
        let ix = self.index();
        let hit = |bs: &[Binding]| {
            bs.iter()
                .find(|b| {
                    b.subjects.iter().any(|s| s.applies(a.user))
                        && b.rules.iter().any(|r| r.allows(a))
                })
                .map(|b| b.name.clone())
        };
        let found = hit(&ix.cluster_bindings).or_else(|| {
            (!a.namespace.is_empty())
                .then(|| ix.bindings.get(a.namespace).and_then(|bs| hit(bs)))
                .flatten()
        });
        match found {
            Some(binding) => {
                tracing::trace!(user = %a.user.name, %binding, "RBAC: allowed");
                Decision::Allow
            }
            None => Decision::NoOpinion,
        }
    }

    /// Every rule the user holds in `ns` ("" for cluster-wide only): what escalation checks
    /// and SelfSubjectRulesReview read.
    pub fn rules_for(&self, user: &User, ns: &str) -> Vec<Rule> {
        let ix = self.index();
        let mut out = Vec::new();
        let bindings = ix
            .cluster_bindings
            .iter()
            .chain((!ns.is_empty()).then(|| ix.bindings.get(ns)).flatten().into_iter().flatten());
        for b in bindings {
            if b.subjects.iter().any(|s| s.applies(user)) {
                out.extend(b.rules.iter().cloned());
            }
        }
        out
    }

    /// The rules of a binding's roleRef (`Role` in `ns`, or `ClusterRole`), None when it
    /// does not exist.
    pub fn role_rules(&self, kind: &str, ns: &str, name: &str) -> Option<Vec<Rule>> {
        let ix = self.index();
        match kind {
            "ClusterRole" => ix.cluster_roles.get(name).map(|r| r.to_vec()),
            "Role" => ix.roles.get(&(ns.to_string(), name.to_string())).map(|r| r.to_vec()),
            _ => None,
        }
    }
}

/// One verb on one resource (or URL) and name: what a rule is broken into to compare.
#[derive(Debug)]
struct Atom<'a> {
    verb: &'a str,
    group: &'a str,
    resource: &'a str,
    name: &'a str,
    url: &'a str,
}

fn atoms(r: &Rule) -> Vec<Atom<'_>> {
    let mut out = Vec::new();
    for verb in &r.verbs {
        for url in &r.non_resource_urls {
            out.push(Atom { verb, group: "", resource: "", name: "", url });
        }
        for group in &r.api_groups {
            for resource in &r.resources {
                if r.resource_names.is_empty() {
                    out.push(Atom { verb, group, resource, name: "", url: "" });
                }
                for name in &r.resource_names {
                    out.push(Atom { verb, group, resource, name, url: "" });
                }
            }
        }
    }
    out
}

/// Whether `owner` holds everything `atom` grants (Kubernetes' `ruleCovers`: a `*` covers
/// any value, `*/scale` any scale subresource, an owner rule without names every name).
fn covered(owner: &Rule, atom: &Atom<'_>) -> bool {
    let has = |set: &[String], v: &str| set.iter().any(|s| s == "*" || s == v);
    if !has(&owner.verbs, atom.verb) {
        return false;
    }
    if !atom.url.is_empty() {
        return owner.non_resource_urls.iter().any(|u| {
            u == "*"
                || u == atom.url
                || u.strip_suffix('*').is_some_and(|p| atom.url.starts_with(p))
        });
    }
    let resource_ok = owner.resources.iter().any(|o| {
        o == "*"
            || o == atom.resource
            || match (o.split_once('/'), atom.resource.split_once('/')) {
                (Some(("*", s)), Some((_, sub))) => s == sub,
                _ => false,
            }
    });
    has(&owner.api_groups, atom.group)
        && resource_ok
        && (owner.resource_names.is_empty()
            || (!atom.name.is_empty() && owner.resource_names.iter().any(|n| n == atom.name)))
}

/// Kubernetes' `ConfirmNoEscalation`: every permission in `wanted` must be one the user
/// holds; the error lists those that are not, in Kubernetes' words.
pub fn confirm_no_escalation(
    user: &User,
    held: &[Rule],
    wanted: &[Rule],
    what: &str,
) -> Result<(), ApiError> {
    let mut missing = Vec::new();
    for r in wanted {
        for atom in atoms(r) {
            if !held.iter().any(|o| covered(o, &atom)) {
                missing.push(describe(&atom));
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    missing.dedup();
    Err(ApiError::forbidden(format!(
        "{what} is forbidden: user {:?} (groups={:?}) is attempting to grant RBAC permissions not currently held:\n{}",
        user.name,
        user.groups,
        missing.join("\n")
    )))
}

fn describe(a: &Atom<'_>) -> String {
    if !a.url.is_empty() {
        return format!("{{NonResourceURLs:[{:?}], Verbs:[{:?}]}}", a.url, a.verb);
    }
    let names =
        if a.name.is_empty() { String::new() } else { format!(", ResourceNames:[{:?}]", a.name) };
    format!(
        "{{APIGroups:[{:?}], Resources:[{:?}]{names}, Verbs:[{:?}]}}",
        a.group, a.resource, a.verb
    )
}

// ---- the default roles (Kubernetes' bootstrap policy, for the resources Flotilla serves) ----

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const ALL_EDIT: &[&str] =
    &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

fn url_rule(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"verbs": verbs, "nonResourceURLs": urls})
}

fn cluster_role(name: &str, labels: Value, rules: Vec<Value>) -> Value {
    let mut l = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    for (k, v) in labels.as_object().into_iter().flatten() {
        l[k] = v.clone();
    }
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "labels": l,
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "rules": rules})
}

fn aggregated(name: &str, labels: Value, to: &str) -> Value {
    let mut r = cluster_role(name, labels, vec![]);
    r["aggregationRule"] = json!({"clusterRoleSelectors": [
        {"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{to}"): "true"}}]});
    r
}

fn binding(name: &str, role: &str, subjects: &[(&str, &str)]) -> Value {
    let subjects: Vec<Value> = subjects
        .iter()
        .map(|(kind, n)| json!({"kind": kind, "apiGroup": "rbac.authorization.k8s.io", "name": n}))
        .collect();
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects})
}

/// What a node's identity may do beyond what the Node authorizer decides from the graph
/// (Kubernetes' `NodeRules`, for the resources Flotilla serves). NodeRestriction then keeps
/// the writes to the node's own objects.
pub fn node_rules() -> Vec<Rule> {
    [
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews", "localsubjectaccessreviews"],
        ),
        rule(&["get", "list", "watch", "create", "update", "patch"], &[""], &["nodes"]),
        rule(&["update", "patch"], &[""], &["nodes/status"]),
        rule(&["create", "update", "patch"], &[""], &["events"]),
        rule(&["create", "delete"], &[""], &["pods"]),
        rule(&["update", "patch"], &[""], &["pods/status"]),
        rule(&["create"], &[""], &["pods/eviction"]),
        rule(&["get", "list", "watch"], &[""], &["services"]),
        rule(
            &["create", "get", "list", "watch"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
        ),
    ]
    .iter()
    .map(Rule::from_json)
    .collect()
}

/// The default ClusterRoles and ClusterRoleBindings, created at start-up when absent and
/// brought back to these rules when marked `autoupdate` (Kubernetes' RBAC reconciliation).
pub fn bootstrap_policy() -> Vec<(&'static str, Value)> {
    let core = &[""];
    let apps = &["apps"];
    let batch = &["batch"];
    let view_core = &[
        "configmaps",
        "endpoints",
        "persistentvolumeclaims",
        "persistentvolumeclaims/status",
        "pods",
        "replicationcontrollers",
        "replicationcontrollers/scale",
        "serviceaccounts",
        "services",
        "services/status",
        "bindings",
        "events",
        "limitranges",
        "namespaces/status",
        "pods/log",
        "pods/status",
        "replicationcontrollers/status",
        "resourcequotas",
        "resourcequotas/status",
        "namespaces",
    ];
    let view_apps = &[
        "controllerrevisions",
        "daemonsets",
        "daemonsets/status",
        "deployments",
        "deployments/scale",
        "deployments/status",
        "replicasets",
        "replicasets/scale",
        "replicasets/status",
        "statefulsets",
        "statefulsets/scale",
        "statefulsets/status",
    ];
    let crs = vec![
        cluster_role(
            "cluster-admin",
            json!({}),
            vec![rule(&["*"], &["*"], &["*"]), url_rule(&["*"], &["*"])],
        ),
        aggregated("admin", json!({}), "admin"),
        aggregated("edit", json!({"rbac.authorization.k8s.io/aggregate-to-admin": "true"}), "edit"),
        aggregated("view", json!({"rbac.authorization.k8s.io/aggregate-to-edit": "true"}), "view"),
        cluster_role(
            "system:aggregate-to-view",
            json!({"rbac.authorization.k8s.io/aggregate-to-view": "true"}),
            vec![
                rule(READ, core, view_core),
                rule(READ, apps, view_apps),
                rule(READ, batch, &["cronjobs", "cronjobs/status", "jobs", "jobs/status"]),
                rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
                rule(
                    READ,
                    &["autoscaling"],
                    &["horizontalpodautoscalers", "horizontalpodautoscalers/status"],
                ),
                rule(READ, &["policy"], &["poddisruptionbudgets", "poddisruptionbudgets/status"]),
                rule(
                    READ,
                    &["networking.k8s.io"],
                    &["ingresses", "ingresses/status", "networkpolicies"],
                ),
            ],
        ),
        cluster_role(
            "system:aggregate-to-edit",
            json!({"rbac.authorization.k8s.io/aggregate-to-edit": "true"}),
            vec![
                rule(
                    READ,
                    core,
                    &[
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "secrets",
                        "services/proxy",
                    ],
                ),
                rule(&["impersonate"], core, &["serviceaccounts"]),
                rule(
                    WRITE,
                    core,
                    &["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"],
                ),
                rule(&["create"], core, &["pods/eviction"]),
                rule(
                    WRITE,
                    core,
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                ),
                rule(&["create"], core, &["serviceaccounts/token"]),
                rule(
                    WRITE,
                    apps,
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                ),
                rule(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
                rule(WRITE, batch, &["cronjobs", "jobs"]),
                rule(WRITE, &["discovery.k8s.io"], &["endpointslices"]),
                rule(WRITE, &["policy"], &["poddisruptionbudgets"]),
                rule(WRITE, &["networking.k8s.io"], &["ingresses", "networkpolicies"]),
                rule(WRITE, &["coordination.k8s.io"], &["leases"]),
                rule(READ, &["coordination.k8s.io"], &["leases"]),
            ],
        ),
        cluster_role(
            "system:aggregate-to-admin",
            json!({"rbac.authorization.k8s.io/aggregate-to-admin": "true"}),
            vec![
                rule(&["create"], &["authorization.k8s.io"], &["localsubjectaccessreviews"]),
                rule(ALL_EDIT, &["rbac.authorization.k8s.io"], &["rolebindings", "roles"]),
            ],
        ),
        cluster_role(
            "system:basic-user",
            json!({}),
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(&["create"], &["authentication.k8s.io"], &["selfsubjectreviews"]),
            ],
        ),
        cluster_role(
            "system:discovery",
            json!({}),
            vec![url_rule(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        cluster_role(
            "system:public-info-viewer",
            json!({}),
            vec![url_rule(&["get"], &["/healthz", "/livez", "/readyz", "/version", "/version/"])],
        ),
        cluster_role(
            "system:monitoring",
            json!({}),
            vec![url_rule(
                &["get"],
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/metrics",
                    "/metrics/slis",
                    "/readyz",
                    "/readyz/*",
                ],
            )],
        ),
        cluster_role(
            "system:node",
            json!({}),
            node_rules()
                .iter()
                .map(Rule::to_json)
                .chain([
                    rule(
                        &["get"],
                        core,
                        &["secrets", "configmaps", "persistentvolumeclaims", "persistentvolumes"],
                    ),
                    rule(&["create"], core, &["serviceaccounts/token"]),
                    rule(
                        &["get", "create", "update", "patch", "delete"],
                        &["coordination.k8s.io"],
                        &["leases"],
                    ),
                ])
                .collect(),
        ),
        // The agent is kube-proxy too: it reads Services and their endpoints on every node.
        cluster_role(
            "system:node-proxier",
            json!({}),
            vec![
                rule(&["list", "watch"], core, &["services", "endpoints"]),
                rule(&["get", "list", "watch"], core, &["nodes"]),
                rule(&["create", "patch", "update"], core, &["events"]),
                rule(&["list", "watch"], &["discovery.k8s.io"], &["endpointslices"]),
            ],
        ),
        cluster_role(
            "system:node-bootstrapper",
            json!({}),
            vec![rule(
                &["create", "get", "list", "watch"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
            )],
        ),
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            json!({}),
            vec![rule(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/nodeclient"],
            )],
        ),
        cluster_role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            json!({}),
            vec![rule(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/selfnodeclient"],
            )],
        ),
        cluster_role(
            "system:kube-scheduler",
            json!({}),
            vec![
                rule(&["create", "patch", "update"], core, &["events"]),
                rule(&["create", "patch", "update"], &["events.k8s.io"], &["events"]),
                rule(&["create"], &["coordination.k8s.io"], &["leases"]),
                json!({"verbs": ["get", "update"], "apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                "resourceNames": ["kube-scheduler", "flotilla-scheduler"]}),
                rule(&["delete", "get", "list", "watch"], core, &["pods"]),
                rule(&["create"], core, &["bindings", "pods/binding"]),
                rule(&["patch", "update"], core, &["pods/status"]),
                rule(
                    READ,
                    core,
                    &[
                        "nodes",
                        "namespaces",
                        "persistentvolumeclaims",
                        "persistentvolumes",
                        "replicationcontrollers",
                        "services",
                    ],
                ),
                rule(READ, apps, &["replicasets", "statefulsets"]),
                rule(READ, &["policy"], &["poddisruptionbudgets"]),
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(&["create"], &["authorization.k8s.io"], &["subjectaccessreviews"]),
            ],
        ),
        // One identity runs every controller; Kubernetes' garbage collector and namespace
        // controller alone need this much (read and delete everything), the others less.
        cluster_role(
            "system:kube-controller-manager",
            json!({}),
            vec![
                rule(
                    &[
                        "get",
                        "list",
                        "watch",
                        "create",
                        "update",
                        "patch",
                        "delete",
                        "deletecollection",
                    ],
                    &["*"],
                    &["*"],
                ),
                // The CSR approver and signer (Kubernetes' csrapproving and csrsigning).
                rule(&["approve", "sign"], &["certificates.k8s.io"], &["signers"]),
            ],
        ),
    ];
    let crbs = vec![
        binding("cluster-admin", "cluster-admin", &[("Group", "system:masters")]),
        binding("system:basic-user", "system:basic-user", &[("Group", "system:authenticated")]),
        binding("system:discovery", "system:discovery", &[("Group", "system:authenticated")]),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &[("Group", "system:authenticated"), ("Group", "system:unauthenticated")],
        ),
        binding("system:monitoring", "system:monitoring", &[("Group", "system:monitoring")]),
        binding("system:node-proxier", "system:node-proxier", &[("Group", "system:nodes")]),
        binding(
            "system:kube-scheduler",
            "system:kube-scheduler",
            &[("User", "system:kube-scheduler")],
        ),
        binding(
            "system:kube-controller-manager",
            "system:kube-controller-manager",
            &[("User", "system:kube-controller-manager")],
        ),
        binding(
            "system:node-bootstrapper",
            "system:node-bootstrapper",
            &[("Group", "system:bootstrappers")],
        ),
        binding(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            &[("Group", "system:bootstrappers")],
        ),
        binding(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            &[("Group", "system:nodes")],
        ),
    ];
    crs.into_iter()
        .map(|v| ("clusterroles", v))
        .chain(crbs.into_iter().map(|v| ("clusterrolebindings", v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::RequestInfo;

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            uid: String::new(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            extra: Default::default(),
        }
    }

    #[test]
    fn rules_match_as_kubernetes_does() {
        let u = user("u", &[]);
        let r =
            Rule::from_json(&json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}));
        assert!(r.allows(&RequestInfo::new("get", "pods").at("d", "x").by(&u)));
        assert!(!r.allows(&RequestInfo::new("list", "pods").by(&u)));
        // A resource does not cover its subresources.
        assert!(!r.allows(&RequestInfo::new("get", "pods").subresource("log").by(&u)));
        assert!(!r.allows(&RequestInfo::new("get", "deployments").by(&u)));
        let sub =
            Rule::from_json(&json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*/scale"]}));
        assert!(sub.allows(&RequestInfo::new("update", "deployments").subresource("scale").by(&u)));
        assert!(!sub.allows(&RequestInfo::new("update", "deployments").by(&u)));
        let named = Rule::from_json(
            &json!({"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["a"]}),
        );
        assert!(named.allows(&RequestInfo::new("get", "secrets").at("d", "a").by(&u)));
        assert!(!named.allows(&RequestInfo::new("get", "secrets").at("d", "b").by(&u)));
        assert!(!named.allows(&RequestInfo::new("list", "secrets").at("d", "").by(&u)));
        let url =
            Rule::from_json(&json!({"verbs": ["get"], "nonResourceURLs": ["/apis/*", "/version"]}));
        assert!(url.allows(&RequestInfo::non_resource("get", "/apis/apps/v1").by(&u)));
        assert!(url.allows(&RequestInfo::non_resource("get", "/version").by(&u)));
        assert!(!url.allows(&RequestInfo::non_resource("get", "/metrics").by(&u)));
    }

    #[test]
    fn escalation_needs_every_permission_held() {
        let u = user("u", &["g"]);
        let held = vec![Rule::from_json(
            &json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "*/scale"]}),
        )];
        let ok = vec![Rule::from_json(
            &json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods", "deployments/scale"]}),
        )];
        confirm_no_escalation(&u, &held, &ok, "roles \"r\"").unwrap();
        let more = vec![Rule::from_json(
            &json!({"verbs": ["get", "delete"], "apiGroups": [""], "resources": ["pods"]}),
        )];
        let e = confirm_no_escalation(&u, &held, &more, "roles \"r\"").unwrap_err();
        assert!(e.message.contains("Resources:[\"pods\"], Verbs:[\"delete\"]"), "{}", e.message);
        assert!(!e.message.contains("\"get\""), "{}", e.message);
        let star = vec![Rule::from_json(
            &json!({"verbs": ["get"], "apiGroups": [""], "resources": ["*"]}),
        )];
        assert!(confirm_no_escalation(&u, &held, &star, "r").is_err());
    }
}
