//! The scheduler's own view of the cluster: nodes with what is placed on them, including pods
//! it has bound but not yet seen come back through the watch (assumed pods), and the indexes
//! that keep pod (anti-)affinity and spreading from scanning every pod per decision.

use super::plugins::{self, Forbidden, NodeInfo, PodInfo, PodTerm, Unfit};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A node's slot: ids are never reused, so pods can name a node (seen before its Node object,
/// or after its deletion) by id and hot loops index a Vec instead of hashing names.
type NodeId = usize;

struct Placed {
    node: NodeId,
    info: Arc<PodInfo>,
    assumed: bool,
}

/// Existing pods' required anti-affinity terms, grouped: pods of one controller share theirs.
struct AntiGroup {
    term: PodTerm,
    /// Topology value → number of pods with this term there.
    domains: HashMap<String, usize>,
}

#[derive(Default)]
pub struct Cluster {
    ids: HashMap<String, NodeId>,
    names: Vec<String>,
    nodes: Vec<Option<NodeInfo>>,
    /// The live nodes, in the order sampling walks them.
    order: Vec<NodeId>,
    pods: HashMap<String, Placed>,
    /// (namespace, label key, label value) → uids of placed pods carrying it.
    labels: HashMap<(String, String, String), HashSet<String>>,
    anti: HashMap<String, AntiGroup>,
    /// Controller uid → node → pods of it there.
    owners: HashMap<String, HashMap<NodeId, usize>>,
    /// Zone label values, interned: `NodeInfo::zone` indexes this.
    zones: HashMap<String, usize>,
    /// Round-robin start for sampling, as kube-scheduler's nextStartNodeIndex.
    next_start: usize,
    pub percentage_to_score: u32,
}

pub enum Decision {
    Node(String),
    Unschedulable(String),
}

impl Cluster {
    pub fn new(percentage_to_score: u32) -> Self {
        Cluster { percentage_to_score, ..Default::default() }
    }

    pub fn node_count(&self) -> usize {
        self.order.len()
    }

    fn id(&mut self, name: &str) -> NodeId {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = self.names.len();
        self.ids.insert(name.to_string(), id);
        self.names.push(name.to_string());
        self.nodes.push(None);
        id
    }

    fn live(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.get(id).and_then(Option::as_ref)
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.ids.get(name).and_then(|id| self.live(*id))
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    pub fn set_node(&mut self, mut n: NodeInfo) {
        let id = self.id(&n.name);
        n.zone = n.labels.get(plugins::ZONE_LABEL).map(|z| {
            let next = self.zones.len();
            *self.zones.entry(z.clone()).or_insert(next)
        });
        match &self.nodes[id] {
            Some(old) => n.carry_placement(old),
            None => {
                // Pods seen before their node (watch order across types is not guaranteed).
                for p in self.pods.values().filter(|p| p.node == id) {
                    n.add(&p.info, 1);
                }
                self.order.push(id);
            }
        }
        self.nodes[id] = Some(n);
    }

    pub fn remove_node(&mut self, name: &str) {
        if let Some(id) = self.ids.get(name).copied() {
            if self.nodes[id].take().is_some() {
                self.order.retain(|x| *x != id);
            }
        }
    }

    pub fn is_assumed(&self, uid: &str) -> bool {
        self.pods.get(uid).is_some_and(|p| p.assumed)
    }

    /// Pods whose binding is in flight.
    pub fn assumed(&self) -> Vec<(String, Arc<PodInfo>)> {
        self.pods
            .values()
            .filter(|p| p.assumed)
            .map(|p| (self.names[p.node].clone(), p.info.clone()))
            .collect()
    }

    pub fn placed_on(&self, uid: &str) -> Option<&str> {
        self.pods.get(uid).map(|p| self.names[p.node].as_str())
    }

    /// The binding of an assumed pod was seen: it is placed for good.
    pub fn confirm(&mut self, uid: &str) {
        if let Some(p) = self.pods.get_mut(uid) {
            p.assumed = false;
        }
    }

    /// Places a pod (bound, or `assumed` while its binding is in flight).
    pub fn add_pod(&mut self, node: &str, info: Arc<PodInfo>, assumed: bool) {
        let id = self.id(node);
        if let Some(p) = self.pods.get_mut(&info.uid) {
            if p.node == id {
                p.assumed &= assumed;
                return;
            }
            let uid = info.uid.clone();
            self.remove_pod(&uid);
        }
        if let Some(n) = self.nodes[id].as_mut() {
            n.add(&info, 1);
        }
        for (k, v) in &info.labels {
            self.labels
                .entry((info.namespace.clone(), k.clone(), v.clone()))
                .or_default()
                .insert(info.uid.clone());
        }
        if !info.owner.is_empty() {
            *self.owners.entry(info.owner.clone()).or_default().entry(id).or_default() += 1;
        }
        for t in &info.anti_affinity {
            if let Some(v) =
                self.live(id).and_then(|n| n.topology(&t.topology_key)).map(str::to_string)
            {
                let g = self
                    .anti
                    .entry(t.group_key())
                    .or_insert_with(|| AntiGroup { term: t.clone(), domains: HashMap::default() });
                *g.domains.entry(v).or_default() += 1;
            }
        }
        self.pods.insert(info.uid.clone(), Placed { node: id, info, assumed });
    }

    pub fn remove_pod(&mut self, uid: &str) {
        let Some(p) = self.pods.remove(uid) else { return };
        let info = &p.info;
        for t in &info.anti_affinity {
            let v = self.live(p.node).and_then(|n| n.topology(&t.topology_key)).map(str::to_string);
            if let (Some(v), Some(g)) = (v, self.anti.get_mut(&t.group_key())) {
                if let Some(c) = g.domains.get_mut(&v) {
                    *c -= 1;
                    if *c == 0 {
                        g.domains.remove(&v);
                    }
                }
                if g.domains.is_empty() {
                    self.anti.remove(&t.group_key());
                }
            }
        }
        if let Some(n) = self.nodes[p.node].as_mut() {
            n.add(info, -1);
        }
        for (k, v) in &info.labels {
            let key = (info.namespace.clone(), k.clone(), v.clone());
            if let Some(s) = self.labels.get_mut(&key) {
                s.remove(uid);
                if s.is_empty() {
                    self.labels.remove(&key);
                }
            }
        }
        if let Some(m) = self.owners.get_mut(&info.owner) {
            if let Some(c) = m.get_mut(&p.node) {
                *c -= 1;
                if *c == 0 {
                    m.remove(&p.node);
                }
            }
            if m.is_empty() {
                self.owners.remove(&info.owner);
            }
        }
    }

    /// Placed pods matching `term` (through the label index when the selector has an equality).
    fn matching(&self, term: &PodTerm) -> Vec<&Placed> {
        let eq = term.selector.requirements.iter().find(|r| {
            matches!(r.op, flotilla_api::selector::Op::Eq | flotilla_api::selector::Op::In)
                && r.values.len() == 1
        });
        let mut out = Vec::new();
        match eq {
            Some(r) => {
                for ns in &term.namespaces {
                    let key = (ns.clone(), r.key.clone(), r.values[0].clone());
                    for uid in self.labels.get(&key).into_iter().flatten() {
                        if let Some(p) = self.pods.get(uid) {
                            if term.matches(&p.info.namespace, &p.info.labels) {
                                out.push(p);
                            }
                        }
                    }
                }
            }
            None => out.extend(
                self.pods.values().filter(|p| term.matches(&p.info.namespace, &p.info.labels)),
            ),
        }
        out
    }

    /// Topology values of pods matching `term`, with counts.
    fn domains_of(&self, term: &PodTerm) -> HashMap<String, usize> {
        let mut d = HashMap::default();
        for p in self.matching(term) {
            if let Some(v) = self.live(p.node).and_then(|n| n.topology(&term.topology_key)) {
                *d.entry(v.to_string()).or_default() += 1;
            }
        }
        d
    }

    fn forbidden(&self, pod: &PodInfo) -> Forbidden {
        let own = pod
            .anti_affinity
            .iter()
            .map(|t| (t.topology_key.clone(), self.domains_of(t).into_keys().collect()))
            .collect();
        let existing = self
            .anti
            .values()
            .filter(|g| g.term.matches(&pod.namespace, &pod.labels))
            .map(|g| (g.term.topology_key.clone(), g.domains.keys().cloned().collect()))
            .collect();
        let affinity: Vec<(String, HashSet<String>)> = pod
            .affinity
            .iter()
            .map(|t| (t.topology_key.clone(), self.domains_of(t).into_keys().collect()))
            .collect();
        // kube-scheduler's rule for a group's first pod (affinity to its own kind).
        let first_of_group = affinity.iter().all(|(_, d)| d.is_empty())
            && pod.affinity.iter().all(|t| t.matches(&pod.namespace, &pod.labels));
        Forbidden { own, existing, affinity, first_of_group }
    }

    /// One scheduling decision: filter nodes round-robin until enough are feasible, score
    /// those, pick the best (ties at random).
    pub fn schedule(&mut self, pod: &PodInfo) -> Decision {
        let total = self.order.len();
        let forbidden = self.forbidden(pod);
        let want = plugins::nodes_to_find(total, self.percentage_to_score);
        let mut feasible: Vec<(NodeId, &NodeInfo)> = Vec::with_capacity(want.min(total));
        let mut reasons: BTreeMap<Unfit, usize> = BTreeMap::new();
        let mut checked = 0;
        for i in 0..total {
            let id = self.order[(self.next_start + i) % total];
            let Some(n) = self.nodes[id].as_ref() else { continue };
            checked += 1;
            match plugins::filter(pod, n, &forbidden) {
                Ok(()) => {
                    feasible.push((id, n));
                    if feasible.len() >= want {
                        break;
                    }
                }
                Err(r) => *reasons.entry(r).or_default() += 1,
            }
        }
        self.next_start = if total == 0 { 0 } else { (self.next_start + checked) % total };
        if feasible.is_empty() {
            return Decision::Unschedulable(plugins::unschedulable_message(total, &reasons));
        }
        if feasible.len() == 1 {
            return Decision::Node(feasible[0].1.name.clone());
        }
        let scores = self.score(pod, &feasible);
        let best = scores.iter().copied().max().unwrap_or(0);
        let ties: Vec<usize> = (0..scores.len()).filter(|i| scores[*i] == best).collect();
        Decision::Node(feasible[ties[fastrand::usize(..ties.len())]].1.name.clone())
    }

    /// kube-scheduler's default weights: resources 1, balance 1, node affinity 2, taints 3,
    /// spreading 2, inter-pod affinity 2.
    fn score(&self, pod: &PodInfo, feasible: &[(NodeId, &NodeInfo)]) -> Vec<i64> {
        let nodes: Vec<&NodeInfo> = feasible.iter().map(|(_, n)| *n).collect();
        let mut total: Vec<i64> = nodes
            .iter()
            .map(|n| plugins::least_allocated(pod, n) + plugins::balanced(pod, n))
            .collect();
        let mut spread_total = vec![0i64; nodes.len()];
        let mut add = |raw: &mut Vec<i64>, reverse: bool, weight: i64| {
            plugins::normalize(raw, reverse);
            for (t, r) in total.iter_mut().zip(raw.iter()) {
                *t += weight * r;
            }
        };
        if !pod.preferred.is_empty() {
            let mut raw = nodes.iter().map(|n| plugins::node_affinity_raw(pod, n)).collect();
            add(&mut raw, false, 2);
        }
        if nodes.iter().any(|n| !n.taints.is_empty()) {
            let mut raw = nodes.iter().map(|n| plugins::intolerable_raw(pod, n)).collect();
            add(&mut raw, true, 3);
        }
        if let Some(per_node) = self.owners.get(&pod.owner).filter(|_| !pod.owner.is_empty()) {
            // Spread a controller's pods: by node, and by zone where nodes have zones (zone
            // weighs 2/3, as the SelectorSpread plugin did).
            let mut by_zone = vec![0i64; self.zones.len()];
            let mut zoned = false;
            for (node, c) in per_node {
                if let Some(z) = self.live(*node).and_then(|n| n.zone) {
                    by_zone[z] += *c as i64;
                    zoned = true;
                }
            }
            let mut raw: Vec<i64> = feasible
                .iter()
                .map(|(id, _)| per_node.get(id).copied().unwrap_or(0) as i64)
                .collect();
            plugins::normalize(&mut raw, true);
            if zoned {
                let mut zr: Vec<i64> =
                    nodes.iter().map(|n| n.zone.map_or(0, |z| by_zone[z])).collect();
                plugins::normalize(&mut zr, true);
                for (r, z) in raw.iter_mut().zip(zr) {
                    *r = (*r + 2 * z) / 3;
                }
            }
            add(&mut raw, false, 0);
            for (t, r) in spread_total.iter_mut().zip(raw) {
                *t += 2 * r;
            }
        }
        if !pod.preferred_affinity.is_empty() || !pod.preferred_anti_affinity.is_empty() {
            let terms = pod
                .preferred_affinity
                .iter()
                .map(|(w, t)| (*w as i64, t))
                .chain(pod.preferred_anti_affinity.iter().map(|(w, t)| (-(*w as i64), t)));
            let mut raw = vec![0i64; nodes.len()];
            for (w, t) in terms {
                let d = self.domains_of(t);
                for (i, n) in nodes.iter().enumerate() {
                    if let Some(c) = n.topology(&t.topology_key).and_then(|v| d.get(v)) {
                        raw[i] += w * *c as i64;
                    }
                }
            }
            // Shift to non-negative before scaling: anti-affinity weights are negative.
            let min = raw.iter().copied().min().unwrap_or(0);
            raw.iter_mut().for_each(|r| *r -= min);
            add(&mut raw, false, 2);
        }
        total.iter().zip(spread_total).map(|(t, s)| t + s).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn node(name: &str, zone: &str) -> NodeInfo {
        NodeInfo::from_value(
            &json!({"metadata": {"name": name, "labels": {plugins::ZONE_LABEL: zone}},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}),
        )
        .unwrap()
    }

    fn pod(name: &str, owner: &str, extra: Value) -> Arc<PodInfo> {
        let mut spec = json!({"containers": [{"name": "c", "image": "i",
            "resources": {"requests": {"cpu": "100m", "memory": "100Mi"}}}]});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        Arc::new(
            PodInfo::from_value(
                &json!({"metadata": {"name": name, "namespace": "default", "uid": name,
                "labels": {"app": "web"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                    "uid": owner, "controller": true}]}, "spec": spec}),
            )
            .unwrap(),
        )
    }

    fn decide(c: &mut Cluster, p: &PodInfo) -> String {
        match c.schedule(p) {
            Decision::Node(n) => n,
            Decision::Unschedulable(m) => panic!("unschedulable: {m}"),
        }
    }

    #[test]
    fn pods_of_one_controller_spread_across_nodes() {
        let mut c = Cluster::default();
        for n in ["a", "b", "c"] {
            c.set_node(node(n, "z1"));
        }
        let mut used = std::collections::HashSet::new();
        for i in 0..3 {
            let p = pod(&format!("p{i}"), "rs1", json!({}));
            let n = decide(&mut c, &p);
            c.add_pod(&n, p, true);
            used.insert(n);
        }
        assert_eq!(used.len(), 3, "three replicas land on three nodes");
    }

    #[test]
    fn required_anti_affinity_holds_against_assumed_pods() {
        let mut c = Cluster::default();
        for n in ["a", "b"] {
            c.set_node(node(n, "z1"));
        }
        let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": plugins::HOSTNAME_LABEL}]}}});
        let mut placed = Vec::new();
        for i in 0..2 {
            let p = pod(&format!("p{i}"), "rs1", anti.clone());
            let n = decide(&mut c, &p);
            c.add_pod(&n, p, true);
            placed.push(n);
        }
        assert_ne!(placed[0], placed[1]);
        let third = pod("p2", "rs1", anti);
        match c.schedule(&third) {
            Decision::Unschedulable(m) => {
                assert_eq!(
                    m,
                    "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules."
                )
            }
            Decision::Node(n) => panic!("placed on {n} despite anti-affinity"),
        }
        // Removing one frees its node.
        c.remove_pod("p0");
        assert_eq!(decide(&mut c, &third), placed[0]);
    }

    #[test]
    fn required_affinity_places_pods_in_the_domain_of_the_pods_they_want() {
        let mut c = Cluster::default();
        for (n, z) in [("a1", "z1"), ("a2", "z1"), ("b1", "z2"), ("b2", "z2")] {
            c.set_node(node(n, z));
        }
        let near_db = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": plugins::ZONE_LABEL}]}}});
        // No db pod anywhere, and the pod is not one itself: nowhere fits.
        let web = pod("web", "rs1", near_db.clone());
        match c.schedule(&web) {
            Decision::Unschedulable(m) => {
                assert_eq!(m, "0/4 nodes are available: 4 node(s) didn't match pod affinity rules.")
            }
            Decision::Node(n) => panic!("placed on {n} with no db pod to be near"),
        }
        // A db pod in z2 draws it there, whichever node it picks.
        let mut db = (*pod("db", "rs2", json!({}))).clone();
        db.labels = [("app".to_string(), "db".to_string())].into();
        c.add_pod("b1", Arc::new(db), false);
        for _ in 0..8 {
            assert!(decide(&mut c, &web).starts_with('b'));
        }
        // The first of a group with affinity to its own kind may go anywhere; the rest follow.
        let together = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": plugins::HOSTNAME_LABEL}]}}});
        let first = pod("w0", "rs3", together.clone());
        let n = decide(&mut c, &first);
        c.add_pod(&n, first, true);
        for i in 1..4 {
            assert_eq!(decide(&mut c, &pod(&format!("w{i}"), "rs3", together.clone())), n);
        }
    }

    #[test]
    fn existing_pods_anti_affinity_keeps_matching_pods_away() {
        let mut c = Cluster::default();
        c.set_node(node("a", "z1"));
        c.set_node(node("b", "z2"));
        let loner = pod(
            "loner",
            "x",
            json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": plugins::ZONE_LABEL}]}}}),
        );
        c.add_pod("a", loner, false);
        for i in 0..5 {
            let p = pod(&format!("w{i}"), "rs2", json!({}));
            assert_eq!(decide(&mut c, &p), "b");
        }
    }

    #[test]
    fn resources_are_accounted_until_the_cluster_is_full() {
        let mut c = Cluster::default();
        c.set_node(node("a", "z1"));
        // 4 cpu / 100m = 40 pods.
        for i in 0..40 {
            let p = pod(&format!("p{i}"), "rs", json!({}));
            let n = decide(&mut c, &p);
            c.add_pod(&n, p, true);
        }
        match c.schedule(&pod("p40", "rs", json!({}))) {
            Decision::Unschedulable(m) => {
                assert_eq!(m, "0/1 nodes are available: 1 Insufficient cpu.")
            }
            Decision::Node(_) => panic!("over-committed"),
        }
        assert_eq!(c.node("a").unwrap().req_cpu, 4000);
        c.remove_pod("p0");
        assert_eq!(c.node("a").unwrap().req_cpu, 3900);
        // A pod seen before its node is accounted once the node appears.
        c.add_pod("late", pod("early", "rs", json!({})), false);
        c.set_node(node("late", "z1"));
        assert_eq!(c.node("late").unwrap().req_cpu, 100);
    }
}
