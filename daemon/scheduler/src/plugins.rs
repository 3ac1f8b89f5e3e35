//! What the scheduler knows about pods and nodes, and its filters and scores: pure functions of
//! a [`PodInfo`], a [`NodeInfo`] and what the cluster view precomputed for this pod. Modelled on
//! kube-scheduler's default plugins (NodeResourcesFit, NodeUnschedulable, NodeAffinity,
//! TaintToleration, NodePorts, InterPodAffinity, NodeResourcesBalancedAllocation, spreading).

use flotilla_api::quantity::Quantity;
use flotilla_api::selector::{LabelSelector, Op, Requirement};
use k8s_openapi::api::core::v1 as core;
use rustc_hash::FxHashSet as HashSet;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// kube-scheduler scores pods without requests as if they asked for this much.
const DEFAULT_MILLI_CPU: i64 = 100;
const DEFAULT_MEMORY: i64 = 200 << 20;

/// One term of a node selector: requirements on labels and on fields (`metadata.name`), ANDed.
#[derive(Debug, Clone, Default)]
pub struct NodeTerm {
    pub labels: Vec<Requirement>,
    pub fields: Vec<Requirement>,
}

impl NodeTerm {
    fn from_k8s(t: &core::NodeSelectorTerm) -> Result<Self, String> {
        let conv =
            |rs: &Option<Vec<core::NodeSelectorRequirement>>| -> Result<Vec<Requirement>, String> {
                rs.iter()
                    .flatten()
                    .map(|r| {
                        let op = match r.operator.as_str() {
                            "In" => Op::In,
                            "NotIn" => Op::NotIn,
                            "Exists" => Op::Exists,
                            "DoesNotExist" => Op::DoesNotExist,
                            "Gt" => Op::Gt,
                            "Lt" => Op::Lt,
                            o => return Err(format!("unknown node selector operator {o:?}")),
                        };
                        Ok(Requirement {
                            key: r.key.clone(),
                            op,
                            values: r.values.clone().unwrap_or_default(),
                        })
                    })
                    .collect()
            };
        Ok(NodeTerm { labels: conv(&t.match_expressions)?, fields: conv(&t.match_fields)? })
    }

    pub fn matches(&self, node: &NodeInfo) -> bool {
        // An empty term matches nothing, as in Kubernetes.
        if self.labels.is_empty() && self.fields.is_empty() {
            return false;
        }
        self.labels.iter().all(|r| r.matches(&node.labels))
            && self.fields.iter().all(|r| {
                let fields = BTreeMap::from([("metadata.name".to_string(), node.name.clone())]);
                r.matches(&fields)
            })
    }
}

/// A pod (anti-)affinity term: pods matching `selector` in `namespaces`, within `topology_key`.
#[derive(Debug, Clone)]
pub struct PodTerm {
    pub selector: LabelSelector,
    pub namespaces: Vec<String>,
    pub topology_key: String,
}

impl PodTerm {
    fn from_k8s(t: &core::PodAffinityTerm, own_ns: &str) -> Result<Self, String> {
        let selector = match &t.label_selector {
            Some(s) => LabelSelector::from_k8s(s)?,
            // A missing selector matches no pods.
            None => LabelSelector { requirements: vec![], match_nothing: true },
        };
        let mut namespaces = t.namespaces.clone().unwrap_or_default();
        if namespaces.is_empty() {
            namespaces.push(own_ns.to_string());
        }
        Ok(PodTerm { selector, namespaces, topology_key: t.topology_key.clone() })
    }

    pub fn matches(&self, ns: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespaces.iter().any(|n| n == ns) && self.selector.matches(labels)
    }

    /// Identifies terms that behave the same (pods of one controller share theirs).
    pub fn group_key(&self) -> String {
        format!("{}|{}|{}", self.namespaces.join(","), self.selector, self.topology_key)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub protocol: String,
    pub port: i32,
    pub ip: String,
}

impl HostPort {
    fn conflicts(&self, o: &HostPort) -> bool {
        let any = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
        self.protocol == o.protocol
            && self.port == o.port
            && (any(&self.ip) || any(&o.ip) || self.ip == o.ip)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Toleration {
    pub key: String,
    pub exists: bool,
    pub value: String,
    pub effect: String,
}

impl Toleration {
    pub fn tolerates(&self, t: &Taint) -> bool {
        (self.effect.is_empty() || self.effect == t.effect)
            && (self.key.is_empty() && self.exists || self.key == t.key)
            && (self.exists || self.value == t.value)
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

/// What scheduling needs from a pod, extracted once.
#[derive(Debug, Clone, Default)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub milli_cpu: i64,
    pub memory: i64,
    pub node_selector: BTreeMap<String, String>,
    /// Required node affinity: ORed terms (empty: no requirement).
    pub required: Vec<NodeTerm>,
    pub preferred: Vec<(i32, NodeTerm)>,
    pub tolerations: Vec<Toleration>,
    pub host_ports: Vec<HostPort>,
    pub anti_affinity: Vec<PodTerm>,
    /// Required pod affinity: every term must have a matching pod in the node's domain.
    pub affinity: Vec<PodTerm>,
    pub preferred_affinity: Vec<(i32, PodTerm)>,
    pub preferred_anti_affinity: Vec<(i32, PodTerm)>,
    /// The controller's uid: pods of one controller are spread.
    pub owner: String,
}

fn quantity(
    q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    milli: bool,
) -> i64 {
    q.and_then(|q| Quantity::parse(&q.0).ok())
        .map(|q| if milli { q.milli_value() } else { q.value() })
        .map(|v| v.clamp(0, i64::MAX as i128) as i64)
        .unwrap_or(0)
}

/// Requests of a container: requests, or limits where a request is missing.
fn requests(r: Option<&core::ResourceRequirements>, name: &str, milli: bool) -> i64 {
    let Some(r) = r else { return 0 };
    let q = r
        .requests
        .as_ref()
        .and_then(|m| m.get(name))
        .or_else(|| r.limits.as_ref().and_then(|m| m.get(name)));
    quantity(q, milli)
}

impl PodInfo {
    pub fn from_value(v: &Value) -> Result<Self, String> {
        let pod = core::Pod::deserialize(v).map_err(|e| format!("undecodable pod: {e}"))?;
        let m = &pod.metadata;
        let ns = m.namespace.clone().unwrap_or_default();
        let spec = pod.spec.unwrap_or_default();
        // Kubernetes' effective request: the larger of the sum over app containers (and
        // sidecars) and the largest init container, plus overhead.
        let effective = |name: &str, milli: bool| {
            let sum: i64 =
                spec.containers.iter().map(|c| requests(c.resources.as_ref(), name, milli)).sum();
            let sidecars: i64 = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"))
                .map(|c| requests(c.resources.as_ref(), name, milli))
                .sum();
            let init = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() != Some("Always"))
                .map(|c| requests(c.resources.as_ref(), name, milli))
                .max()
                .unwrap_or(0);
            let overhead = quantity(spec.overhead.as_ref().and_then(|o| o.get(name)), milli);
            (sum + sidecars).max(init + sidecars) + overhead
        };
        let aff = spec.affinity.clone().unwrap_or_default();
        let na = aff.node_affinity.unwrap_or_default();
        let required = match &na.required_during_scheduling_ignored_during_execution {
            Some(s) => {
                s.node_selector_terms.iter().map(NodeTerm::from_k8s).collect::<Result<_, _>>()?
            }
            None => vec![],
        };
        let preferred = na
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
            .map(|p| Ok((p.weight, NodeTerm::from_k8s(&p.preference)?)))
            .collect::<Result<_, String>>()?;
        let terms = |ts: &Option<Vec<core::PodAffinityTerm>>| -> Result<Vec<PodTerm>, String> {
            ts.iter().flatten().map(|t| PodTerm::from_k8s(t, &ns)).collect()
        };
        let weighted = |ts: &Option<Vec<core::WeightedPodAffinityTerm>>| -> Result<Vec<(i32, PodTerm)>, String> {
            ts.iter().flatten().map(|t| Ok((t.weight, PodTerm::from_k8s(&t.pod_affinity_term, &ns)?))).collect()
        };
        let pa = aff.pod_affinity.unwrap_or_default();
        let paa = aff.pod_anti_affinity.unwrap_or_default();
        let host_ports = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.host_port.unwrap_or(0) > 0)
            .map(|p| HostPort {
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                port: p.host_port.unwrap_or(0),
                ip: p.host_ip.clone().unwrap_or_default(),
            })
            .collect();
        let tolerations = spec
            .tolerations
            .iter()
            .flatten()
            .map(|t| Toleration {
                key: t.key.clone().unwrap_or_default(),
                exists: t.operator.as_deref() == Some("Exists"),
                value: t.value.clone().unwrap_or_default(),
                effect: t.effect.clone().unwrap_or_default(),
            })
            .collect();
        let owner = m
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true))
            .map(|r| r.uid.clone())
            .unwrap_or_default();
        Ok(PodInfo {
            uid: m.uid.clone().unwrap_or_default(),
            labels: m.labels.clone().unwrap_or_default(),
            milli_cpu: effective("cpu", true),
            memory: effective("memory", false),
            node_selector: spec.node_selector.clone().unwrap_or_default(),
            required,
            preferred,
            tolerations,
            host_ports,
            anti_affinity: terms(&paa.required_during_scheduling_ignored_during_execution)?,
            affinity: terms(&pa.required_during_scheduling_ignored_during_execution)?,
            preferred_affinity: weighted(&pa.preferred_during_scheduling_ignored_during_execution)?,
            preferred_anti_affinity: weighted(
                &paa.preferred_during_scheduling_ignored_during_execution,
            )?,
            owner,
            namespace: ns,
        })
    }
}

/// What scheduling needs from a node, plus what is placed on it.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub ready: bool,
    pub alloc_cpu: i64,
    pub alloc_memory: i64,
    pub alloc_pods: i64,
    pub req_cpu: i64,
    pub req_memory: i64,
    /// Requests as scored (pods without requests count the defaults).
    pub nonzero_cpu: i64,
    pub nonzero_memory: i64,
    pub pods: i64,
    pub ports: Vec<HostPort>,
    /// The zone label as the cluster's index of zones (set by `Cluster::set_node`), so
    /// spreading compares integers instead of looking up labels on every scored node.
    pub zone: Option<usize>,
}

impl NodeInfo {
    pub fn from_value(v: &Value) -> Result<Self, String> {
        let n = core::Node::deserialize(v).map_err(|e| format!("undecodable node: {e}"))?;
        let spec = n.spec.unwrap_or_default();
        let status = n.status.unwrap_or_default();
        let alloc = status.allocatable.or(status.capacity).unwrap_or_default();
        let ready =
            status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
        Ok(NodeInfo {
            name: n.metadata.name.unwrap_or_default(),
            labels: n.metadata.labels.unwrap_or_default(),
            taints: spec
                .taints
                .iter()
                .flatten()
                .map(|t| Taint {
                    key: t.key.clone(),
                    value: t.value.clone().unwrap_or_default(),
                    effect: t.effect.clone(),
                })
                .collect(),
            unschedulable: spec.unschedulable.unwrap_or(false),
            ready,
            alloc_cpu: quantity(alloc.get("cpu"), true),
            alloc_memory: quantity(alloc.get("memory"), false),
            alloc_pods: quantity(alloc.get("pods"), false),
            ..Default::default()
        })
    }

    /// Keeps what is placed on the node when the Node object changes.
    pub fn carry_placement(&mut self, old: &NodeInfo) {
        self.req_cpu = old.req_cpu;
        self.req_memory = old.req_memory;
        self.nonzero_cpu = old.nonzero_cpu;
        self.nonzero_memory = old.nonzero_memory;
        self.pods = old.pods;
        self.ports = old.ports.clone();
    }

    pub fn add(&mut self, p: &PodInfo, sign: i64) {
        self.req_cpu += sign * p.milli_cpu;
        self.req_memory += sign * p.memory;
        self.nonzero_cpu += sign * if p.milli_cpu == 0 { DEFAULT_MILLI_CPU } else { p.milli_cpu };
        self.nonzero_memory += sign * if p.memory == 0 { DEFAULT_MEMORY } else { p.memory };
        self.pods += sign;
        if sign > 0 {
            self.ports.extend(p.host_ports.iter().cloned());
        } else {
            for hp in &p.host_ports {
                if let Some(i) = self.ports.iter().position(|x| x == hp) {
                    self.ports.swap_remove(i);
                }
            }
        }
    }

    /// The node's value for a topology key (the hostname label defaults to the node's name).
    pub fn topology(&self, key: &str) -> Option<&str> {
        match self.labels.get(key) {
            Some(v) => Some(v),
            None if key == HOSTNAME_LABEL => Some(&self.name),
            None => None,
        }
    }
}

/// Why a node was filtered out; the text is kube-scheduler's. A taint is borrowed from its
/// node: filtering thousands of nodes must not allocate per rejection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unfit<'a> {
    NotReady,
    Unschedulable,
    InsufficientCpu,
    InsufficientMemory,
    TooManyPods,
    NodeAffinity,
    /// Key and value.
    Taint(&'a str, &'a str),
    HostPorts,
    AntiAffinity,
    ExistingAntiAffinity,
    Affinity,
}

impl std::fmt::Display for Unfit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unfit::NotReady => f.write_str("node(s) were not ready"),
            Unfit::Unschedulable => f.write_str("node(s) were unschedulable"),
            Unfit::InsufficientCpu => f.write_str("Insufficient cpu"),
            Unfit::InsufficientMemory => f.write_str("Insufficient memory"),
            Unfit::TooManyPods => f.write_str("Too many pods"),
            Unfit::NodeAffinity => f.write_str("node(s) didn't match Pod's node affinity/selector"),
            Unfit::Taint(k, v) => write!(f, "node(s) had untolerated taint {{{k}: {v}}}"),
            Unfit::HostPorts => {
                f.write_str("node(s) didn't have free ports for the requested pod ports")
            }
            Unfit::AntiAffinity => f.write_str("node(s) didn't match pod anti-affinity rules"),
            Unfit::ExistingAntiAffinity => {
                f.write_str("node(s) didn't satisfy existing pods anti-affinity rules")
            }
            Unfit::Affinity => f.write_str("node(s) didn't match pod affinity rules"),
        }
    }
}

/// A pod's topology constraints from other pods: domains (topology key, values) it may not
/// land in, from its own required anti-affinity and from existing pods' anti-affinity that
/// matches it; and, per required affinity term, the domains that have a matching pod.
#[derive(Debug, Default, Clone)]
pub struct Forbidden {
    pub own: Vec<(String, HashSet<String>)>,
    pub existing: Vec<(String, HashSet<String>)>,
    pub affinity: Vec<(String, HashSet<String>)>,
    /// No pod matches any affinity term, and the pod matches all of them itself: the first
    /// of a group that wants to be together may go anywhere with the topology keys.
    pub first_of_group: bool,
}

fn hits(domains: &[(String, HashSet<String>)], node: &NodeInfo) -> bool {
    domains.iter().any(|(k, vals)| node.topology(k).is_some_and(|v| vals.contains(v)))
}

pub fn tolerated(tolerations: &[Toleration], t: &Taint) -> bool {
    tolerations.iter().any(|x| x.tolerates(t))
}

/// The filters in kube-scheduler's order (NodeUnschedulable, TaintToleration, NodeAffinity,
/// NodePorts, NodeResourcesFit, InterPodAffinity); the first that fails names the reason.
pub fn filter<'a>(
    pod: &PodInfo,
    node: &'a NodeInfo,
    forbidden: &Forbidden,
) -> Result<(), Unfit<'a>> {
    if !node.ready {
        return Err(Unfit::NotReady);
    }
    if node.unschedulable
        && !tolerated(
            &pod.tolerations,
            &Taint {
                key: "node.kubernetes.io/unschedulable".into(),
                value: String::new(),
                effect: "NoSchedule".into(),
            },
        )
    {
        return Err(Unfit::Unschedulable);
    }
    if let Some(t) = node.taints.iter().find(|t| {
        matches!(t.effect.as_str(), "NoSchedule" | "NoExecute") && !tolerated(&pod.tolerations, t)
    }) {
        return Err(Unfit::Taint(&t.key, &t.value));
    }
    if !pod.node_selector.iter().all(|(k, v)| node.labels.get(k) == Some(v))
        || (!pod.required.is_empty() && !pod.required.iter().any(|t| t.matches(node)))
    {
        return Err(Unfit::NodeAffinity);
    }
    if pod.host_ports.iter().any(|p| node.ports.iter().any(|q| p.conflicts(q))) {
        return Err(Unfit::HostPorts);
    }
    if node.pods + 1 > node.alloc_pods {
        return Err(Unfit::TooManyPods);
    }
    if pod.milli_cpu > 0 && node.req_cpu + pod.milli_cpu > node.alloc_cpu {
        return Err(Unfit::InsufficientCpu);
    }
    if pod.memory > 0 && node.req_memory + pod.memory > node.alloc_memory {
        return Err(Unfit::InsufficientMemory);
    }
    if hits(&forbidden.own, node) {
        return Err(Unfit::AntiAffinity);
    }
    if hits(&forbidden.existing, node) {
        return Err(Unfit::ExistingAntiAffinity);
    }
    let mut together = true;
    for (key, domains) in &forbidden.affinity {
        match node.topology(key) {
            None => return Err(Unfit::Affinity),
            Some(v) => together &= domains.contains(v),
        }
    }
    if !together && !forbidden.first_of_group {
        return Err(Unfit::Affinity);
    }
    Ok(())
}

/// kube-scheduler's "0/5 nodes are available: 3 Insufficient cpu, 2 node(s) ...".
pub fn unschedulable_message(total: usize, reasons: &BTreeMap<Unfit<'_>, usize>) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    if total == 0 {
        return "0/0 nodes are available: no nodes registered.".into();
    }
    format!("0/{total} nodes are available: {}.", parts.join(", "))
}

/// LeastAllocated (0–100): free share after placing the pod, cpu and memory averaged.
pub fn least_allocated(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let free = |req: i64, cap: i64| if cap <= 0 || req > cap { 0 } else { (cap - req) * 100 / cap };
    let (cpu, mem) = nonzero(pod);
    (free(node.nonzero_cpu + cpu, node.alloc_cpu)
        + free(node.nonzero_memory + mem, node.alloc_memory))
        / 2
}

/// BalancedAllocation (0–100): how close the cpu and memory fractions are after placement.
pub fn balanced(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let (cpu, mem) = nonzero(pod);
    let frac = |req: i64, cap: i64| if cap <= 0 { 1.0 } else { (req as f64 / cap as f64).min(1.0) };
    let (a, b) = (
        frac(node.nonzero_cpu + cpu, node.alloc_cpu),
        frac(node.nonzero_memory + mem, node.alloc_memory),
    );
    // Standard deviation of two values is |a-b|/2.
    ((1.0 - (a - b).abs() / 2.0) * 100.0) as i64
}

fn nonzero(p: &PodInfo) -> (i64, i64) {
    (
        if p.milli_cpu == 0 { DEFAULT_MILLI_CPU } else { p.milli_cpu },
        if p.memory == 0 { DEFAULT_MEMORY } else { p.memory },
    )
}

/// Raw preferred node affinity: the weights of the terms the node matches.
pub fn node_affinity_raw(pod: &PodInfo, node: &NodeInfo) -> i64 {
    pod.preferred.iter().filter(|(_, t)| t.matches(node)).map(|(w, _)| *w as i64).sum()
}

/// Raw TaintToleration: PreferNoSchedule taints the pod does not tolerate (fewer is better).
pub fn intolerable_raw(pod: &PodInfo, node: &NodeInfo) -> i64 {
    node.taints
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule" && !tolerated(&pod.tolerations, t))
        .count() as i64
}

/// Scales raw scores to 0–100 by the maximum (`reverse`: fewer is better).
pub fn normalize(raw: &mut [i64], reverse: bool) {
    let max = raw.iter().copied().max().unwrap_or(0);
    for r in raw.iter_mut() {
        *r = match (max, reverse) {
            (0, true) => 100,
            (0, false) => 0,
            (m, false) => *r * 100 / m,
            (m, true) => (m - *r) * 100 / m,
        };
    }
}

/// Number of feasible nodes to find before scoring, as kube-scheduler's
/// percentageOfNodesToScore (`pct` 0: adaptive, 50% minus 1% per 125 nodes, at least 5%).
pub fn nodes_to_find(total: usize, pct: u32) -> usize {
    const MIN: usize = 100;
    if total < MIN || pct >= 100 {
        return total;
    }
    let pct = if pct == 0 { (50 - (total / 125) as i64).max(5) as usize } else { pct as usize };
    (total * pct / 100).max(MIN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cpu: &str, mem: &str) -> NodeInfo {
        NodeInfo::from_value(&json!({"metadata": {"name": name, "labels": {"zone": "a"}},
            "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}))
        .unwrap()
    }

    fn pod(spec: Value) -> PodInfo {
        PodInfo::from_value(&json!({"metadata": {"name": "p", "namespace": "default", "uid": "u1",
            "labels": {"app": "web"}}, "spec": spec}))
        .unwrap()
    }

    fn ctr(cpu: &str, mem: &str) -> Value {
        json!({"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu, "memory": mem}}})
    }

    #[test]
    fn effective_requests_take_the_larger_of_containers_and_init_containers() {
        let p = pod(json!({"containers": [ctr("100m", "64Mi"), ctr("200m", "64Mi")],
            "initContainers": [ctr("500m", "1Mi")]}));
        assert_eq!(p.milli_cpu, 500);
        assert_eq!(p.memory, 128 << 20);
    }

    #[test]
    fn resource_fit_rejects_a_pod_that_does_not_fit() {
        let mut n = node("n1", "1", "1Gi");
        let p = pod(json!({"containers": [ctr("600m", "100Mi")]}));
        assert_eq!(filter(&p, &n, &Forbidden::default()), Ok(()));
        n.add(&p, 1);
        assert_eq!(filter(&p, &n, &Forbidden::default()), Err(Unfit::InsufficientCpu));
        n.add(&p, -1);
        assert_eq!(n.req_cpu, 0);
        let big = pod(json!({"containers": [ctr("1m", "2Gi")]}));
        assert_eq!(filter(&big, &n, &Forbidden::default()), Err(Unfit::InsufficientMemory));
    }

    #[test]
    fn not_ready_and_cordoned_nodes_are_filtered() {
        let mut n = node("n1", "1", "1Gi");
        n.ready = false;
        let p = pod(json!({"containers": [ctr("1m", "1Mi")]}));
        assert_eq!(filter(&p, &n, &Forbidden::default()), Err(Unfit::NotReady));
        n.ready = true;
        n.unschedulable = true;
        assert_eq!(filter(&p, &n, &Forbidden::default()), Err(Unfit::Unschedulable));
    }

    #[test]
    fn node_selector_and_required_affinity_must_match() {
        let n = node("n1", "1", "1Gi");
        let sel = pod(json!({"containers": [ctr("1m", "1Mi")], "nodeSelector": {"zone": "b"}}));
        assert_eq!(filter(&sel, &n, &Forbidden::default()), Err(Unfit::NodeAffinity));
        let aff = pod(json!({"containers": [ctr("1m", "1Mi")], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}}}}));
        assert_eq!(filter(&aff, &n, &Forbidden::default()), Ok(()));
        let gt = pod(json!({"containers": [ctr("1m", "1Mi")], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}]}}}}));
        assert_eq!(filter(&gt, &n, &Forbidden::default()), Err(Unfit::NodeAffinity));
    }

    #[test]
    fn taints_need_a_matching_toleration() {
        let mut n = node("n1", "1", "1Gi");
        n.taints.push(Taint {
            key: "gpu".into(),
            value: "yes".into(),
            effect: "NoSchedule".into(),
        });
        let p = pod(json!({"containers": [ctr("1m", "1Mi")]}));
        assert_eq!(filter(&p, &n, &Forbidden::default()), Err(Unfit::Taint("gpu", "yes")));
        let t = pod(json!({"containers": [ctr("1m", "1Mi")], "tolerations": [
            {"key": "gpu", "operator": "Equal", "value": "yes", "effect": "NoSchedule"}]}));
        assert_eq!(filter(&t, &n, &Forbidden::default()), Ok(()));
        let wrong = pod(json!({"containers": [ctr("1m", "1Mi")], "tolerations": [
            {"key": "gpu", "operator": "Equal", "value": "no"}]}));
        assert!(filter(&wrong, &n, &Forbidden::default()).is_err());
        let all =
            pod(json!({"containers": [ctr("1m", "1Mi")], "tolerations": [{"operator": "Exists"}]}));
        assert_eq!(filter(&all, &n, &Forbidden::default()), Ok(()));
        // PreferNoSchedule only lowers the score.
        n.taints[0].effect = "PreferNoSchedule".into();
        assert_eq!(filter(&p, &n, &Forbidden::default()), Ok(()));
        assert_eq!(intolerable_raw(&p, &n), 1);
    }

    #[test]
    fn host_ports_conflict_on_the_same_protocol_and_port() {
        let mut n = node("n1", "1", "1Gi");
        let hp = |ip: &str| {
            pod(json!({"containers": [{"name": "c", "image": "i", "ports": [
            {"containerPort": 80, "hostPort": 8080, "hostIP": ip}]}]}))
        };
        n.add(&hp("10.0.0.1"), 1);
        assert_eq!(filter(&hp("10.0.0.2"), &n, &Forbidden::default()), Ok(()));
        assert_eq!(filter(&hp(""), &n, &Forbidden::default()), Err(Unfit::HostPorts));
    }

    #[test]
    fn anti_affinity_domains_are_filtered() {
        let n = node("n1", "1", "1Gi");
        let p = pod(json!({"containers": [ctr("1m", "1Mi")]}));
        let f = Forbidden {
            own: vec![("zone".into(), HashSet::from_iter(["a".to_string()]))],
            ..Default::default()
        };
        assert_eq!(filter(&p, &n, &f), Err(Unfit::AntiAffinity));
        let f = Forbidden {
            existing: vec![(HOSTNAME_LABEL.into(), HashSet::from_iter(["n1".to_string()]))],
            ..Default::default()
        };
        assert_eq!(filter(&p, &n, &f), Err(Unfit::ExistingAntiAffinity));
        // Affinity: the node's domain must hold a wanted pod, and the node the topology key.
        let f = Forbidden {
            affinity: vec![(HOSTNAME_LABEL.into(), HashSet::from_iter(["n2".to_string()]))],
            ..Default::default()
        };
        assert_eq!(filter(&p, &n, &f), Err(Unfit::Affinity));
        let f = Forbidden {
            affinity: vec![(HOSTNAME_LABEL.into(), HashSet::from_iter(["n1".to_string()]))],
            ..Default::default()
        };
        assert_eq!(filter(&p, &n, &f), Ok(()));
        let f = Forbidden {
            affinity: vec![("rack".into(), HashSet::default())],
            first_of_group: true,
            ..Default::default()
        };
        assert_eq!(filter(&p, &n, &f), Err(Unfit::Affinity), "no rack label");
    }

    #[test]
    fn the_unschedulable_message_counts_reasons_like_kube_scheduler() {
        let r = BTreeMap::from([(Unfit::InsufficientCpu, 3), (Unfit::Taint("a", "b"), 2)]);
        assert_eq!(
            unschedulable_message(5, &r),
            "0/5 nodes are available: 2 node(s) had untolerated taint {a: b}, 3 Insufficient cpu."
        );
    }

    #[test]
    fn scores_prefer_emptier_and_balanced_nodes() {
        let p = pod(json!({"containers": [ctr("500m", "512Mi")]}));
        let empty = node("a", "2", "2Gi");
        let mut busy = node("b", "2", "2Gi");
        busy.add(&p, 1);
        assert!(least_allocated(&p, &empty) > least_allocated(&p, &busy));
        let cpu_heavy = pod(json!({"containers": [ctr("1500m", "1Mi")]}));
        assert!(balanced(&p, &empty) > balanced(&cpu_heavy, &empty));
        let mut raw = vec![0, 2, 4];
        normalize(&mut raw, true);
        assert_eq!(raw, vec![100, 50, 0]);
    }

    #[test]
    fn sampling_follows_percentage_of_nodes_to_score() {
        assert_eq!(nodes_to_find(50, 0), 50);
        assert_eq!(nodes_to_find(5000, 0), 500);
        assert_eq!(nodes_to_find(100_000, 0), 5000);
        assert_eq!(nodes_to_find(1000, 100), 1000);
    }
}
