//! The scheduler: binds unbound pods to nodes. One task owns the cluster view and the queue
//! (decisions are sequential, so two pods never take the same free capacity); bindings go to
//! the API concurrently and a failed one un-assumes its pod and re-queues it.
//!
//! ```text
//!  pods, nodes informers ─► events ─► Cluster (nodes + placed/assumed pods) ◄─┐
//!                                  └► Queue (priority, FIFO) ─► schedule ─► assume ─► bind (API)
//!  unschedulable pods wait until the cluster changes (or a minute passes)       │
//!                                                                              └ Bound(result)
//! ```

#![forbid(unsafe_code)]

pub mod cluster;
pub mod plugins;

use anyhow::Result;
use cluster::{Cluster, Decision};
use flotilla_api::error::{ApiError, Reason};
use flotilla_api::prune::Keep;
use flotilla_client::runtime::events::Recorder;
use flotilla_client::runtime::{on_change, pod_phase, terminating};
use flotilla_client::{object_key, Change, Client, Informer, WatchParams};
use plugins::{NodeInfo, PodInfo};
use serde_json::{json, Value};
use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Pods whose spec.schedulerName is this (or empty) are ours.
    pub name: String,
    /// percentageOfNodesToScore (0: adaptive, as kube-scheduler).
    pub percentage_to_score: u32,
    /// Bindings in flight at once.
    pub bind_concurrency: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            name: "default-scheduler".into(),
            percentage_to_score: 0,
            bind_concurrency: 64,
        }
    }
}

enum Ev {
    Pod(Change),
    Node(Change),
    Bound { key: String, pod: Arc<Value>, node: String, result: Result<(), ApiError> },
    Retry(String),
}

/// Active pods by (priority, arrival); unschedulable ones parked until something changes.
#[derive(Default)]
struct Queue {
    active: BTreeSet<(Reverse<i32>, u64, String)>,
    queued: HashMap<String, (i32, u64)>,
    parked: HashMap<String, Instant>,
    /// Parked pods with required pod affinity: a pod placed anywhere may be what they wait for.
    parked_affinity: std::collections::HashSet<String>,
    attempts: HashMap<String, u32>,
    seq: u64,
}

impl Queue {
    fn add(&mut self, key: &str, priority: i32) {
        if self.queued.contains_key(key) {
            return;
        }
        self.parked.remove(key);
        self.parked_affinity.remove(key);
        self.seq += 1;
        self.active.insert((Reverse(priority), self.seq, key.to_string()));
        self.queued.insert(key.to_string(), (priority, self.seq));
    }

    fn pop(&mut self) -> Option<String> {
        let (_, _, key) = self.active.pop_first()?;
        self.queued.remove(&key);
        Some(key)
    }

    fn park(&mut self, key: &str, wants_pods: bool) {
        self.parked.insert(key.to_string(), Instant::now());
        if wants_pods {
            self.parked_affinity.insert(key.to_string());
        }
    }

    /// A pod was placed: pods waiting for company may fit now.
    fn unpark_affinity(&mut self, pods: &Informer) {
        for key in std::mem::take(&mut self.parked_affinity) {
            let prio = pods.get(&key).map(|p| priority(&p)).unwrap_or(0);
            self.add(&key, prio);
        }
    }

    /// The cluster changed: parked pods may fit now.
    fn unpark_all(&mut self, pods: &Informer) {
        for key in std::mem::take(&mut self.parked).into_keys() {
            let prio = pods.get(&key).map(|p| priority(&p)).unwrap_or(0);
            self.add(&key, prio);
        }
    }

    fn unpark_older_than(&mut self, age: Duration, pods: &Informer) {
        let old: Vec<String> = self
            .parked
            .iter()
            .filter(|(_, t)| t.elapsed() >= age)
            .map(|(k, _)| k.clone())
            .collect();
        for key in old {
            self.parked.remove(&key);
            let prio = pods.get(&key).map(|p| priority(&p)).unwrap_or(0);
            self.add(&key, prio);
        }
    }
}

/// What the scheduler keeps of a pod: what it schedules by and writes back (its conditions),
/// a fraction of the whole (command, env, volumes, probes and annotations go), so a large
/// cluster's pods fit in a small scheduler. The informer skips the rest while decoding.
pub static SCHEDULING_VIEW: Keep = Keep::Fields(&[
    ("apiVersion", Keep::All),
    ("kind", Keep::All),
    (
        "metadata",
        Keep::Fields(&[
            ("name", Keep::All),
            ("namespace", Keep::All),
            ("uid", Keep::All),
            ("labels", Keep::All),
            ("ownerReferences", Keep::All),
            ("deletionTimestamp", Keep::All),
            ("resourceVersion", Keep::All),
        ]),
    ),
    (
        "spec",
        Keep::Fields(&[
            ("nodeName", Keep::All),
            ("schedulerName", Keep::All),
            ("priority", Keep::All),
            ("nodeSelector", Keep::All),
            ("affinity", Keep::All),
            ("tolerations", Keep::All),
            ("overhead", Keep::All),
            ("containers", CONTAINER_VIEW),
            ("initContainers", CONTAINER_VIEW),
        ]),
    ),
    ("status", Keep::Fields(&[("phase", Keep::All), ("conditions", Keep::All)])),
]);

const CONTAINER_VIEW: Keep = Keep::Fields(&[
    ("name", Keep::All),
    ("resources", Keep::All),
    ("ports", Keep::All),
    ("restartPolicy", Keep::All),
]);

fn priority(p: &Value) -> i32 {
    p.pointer("/spec/priority").and_then(Value::as_i64).unwrap_or(0) as i32
}

fn node_name(p: &Value) -> &str {
    p.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("")
}

/// Whether two views of a node differ in anything that can make a pod fit.
fn schedulable_changed(a: &NodeInfo, b: &NodeInfo) -> bool {
    a.labels != b.labels
        || a.taints != b.taints
        || a.unschedulable != b.unschedulable
        || a.ready != b.ready
        || (a.alloc_cpu, a.alloc_memory, a.alloc_pods)
            != (b.alloc_cpu, b.alloc_memory, b.alloc_pods)
}

struct Scheduler {
    cfg: SchedulerConfig,
    client: Client,
    pods: Arc<Informer>,
    nodes: Arc<Informer>,
    cluster: Cluster,
    queue: Queue,
    tx: mpsc::UnboundedSender<Ev>,
    binds: Arc<Semaphore>,
    events: Recorder,
}

/// Runs the scheduler until the process stops (run it under leader election).
pub async fn run(client: Client, cfg: SchedulerConfig) -> Result<()> {
    let pods =
        Informer::start_with(client.clone(), "pods", "", WatchParams::default(), &SCHEDULING_VIEW);
    let nodes = Informer::start(client.clone(), "nodes", "", WatchParams::default());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let t = tx.clone();
    on_change(&pods, move |c| {
        let _ = t.send(Ev::Pod(c.clone()));
    });
    let t = tx.clone();
    on_change(&nodes, move |c| {
        let _ = t.send(Ev::Node(c.clone()));
    });
    loop {
        let synced = pods.wait_synced(Duration::from_secs(30)).await.is_ok()
            && nodes.wait_synced(Duration::from_secs(30)).await.is_ok();
        if synced {
            break;
        }
        tracing::info!("scheduler: waiting for the API server");
    }
    let mut s = Scheduler {
        binds: Arc::new(Semaphore::new(cfg.bind_concurrency.max(1))),
        events: Recorder::new(client.clone(), &cfg.name),
        cluster: Cluster::new(cfg.percentage_to_score),
        queue: Queue::default(),
        cfg,
        client,
        pods,
        nodes,
        tx,
    };
    s.rebuild();
    tracing::info!(
        nodes = s.cluster.node_count(),
        pods = s.cluster.pod_count(),
        pending = s.queue.active.len(),
        "scheduler started"
    );
    let mut flush = tokio::time::interval(Duration::from_secs(15));
    let mut since_yield = 0u32;
    loop {
        while let Ok(ev) = rx.try_recv() {
            s.handle(ev);
        }
        if let Some(key) = s.queue.pop() {
            s.schedule_one(&key).await;
            since_yield += 1;
            if since_yield >= 64 {
                since_yield = 0;
                tokio::task::yield_now().await;
            }
            continue;
        }
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => s.handle(ev),
                None => return Ok(()),
            },
            _ = flush.tick() => s.queue.unpark_older_than(Duration::from_secs(60), &s.pods),
        }
    }
}

impl Scheduler {
    fn ours(&self, p: &Value) -> bool {
        let name = p.pointer("/spec/schedulerName").and_then(Value::as_str).unwrap_or("");
        name.is_empty() || name == self.cfg.name
    }

    /// Starts over from the informers' caches, keeping pods whose binding is in flight.
    fn rebuild(&mut self) {
        let assumed = self.cluster.assumed();
        let mut c = Cluster::new(self.cfg.percentage_to_score);
        for n in self.nodes.list() {
            match NodeInfo::from_value(&n) {
                Ok(info) => c.set_node(info),
                Err(e) => tracing::warn!(node = %object_key(&n), error = %e, "ignoring node"),
            }
        }
        self.cluster = c;
        for p in self.pods.list() {
            self.pod_changed(&p);
        }
        for (node, info) in assumed {
            if self.cluster.placed_on(&info.uid).is_none() {
                self.cluster.add_pod(&node, info, true);
            }
        }
    }

    fn pod_changed(&mut self, p: &Value) {
        let uid = p["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let node = node_name(p);
        if matches!(pod_phase(p), "Succeeded" | "Failed") {
            // A finished pod holds no resources.
            if self.cluster.placed_on(&uid).is_some() {
                self.cluster.remove_pod(&uid);
                self.queue.unpark_all(&self.pods);
            }
            return;
        }
        if !node.is_empty() {
            if self.cluster.placed_on(&uid) == Some(node) {
                // Our own binding coming back: no need to look at the pod again.
                self.cluster.confirm(&uid);
                return;
            }
            match PodInfo::from_value(p) {
                Ok(info) => {
                    self.cluster.add_pod(node, Arc::new(info), false);
                    self.queue.unpark_affinity(&self.pods);
                }
                Err(e) => {
                    tracing::warn!(pod = %object_key(p), error = %e, "cannot account a bound pod")
                }
            }
            return;
        }
        if self.ours(p) && !terminating(p) && !self.cluster.is_assumed(&uid) {
            self.queue.add(&object_key(p), priority(p));
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Pod(Change::Added(p)) | Ev::Pod(Change::Modified { new: p, .. }) => {
                self.pod_changed(&p)
            }
            Ev::Pod(Change::Deleted(p)) => {
                let uid = p["metadata"]["uid"].as_str().unwrap_or("");
                if self.cluster.placed_on(uid).is_some() {
                    self.cluster.remove_pod(uid);
                    self.queue.unpark_all(&self.pods);
                }
            }
            Ev::Pod(Change::Resynced) | Ev::Node(Change::Resynced) => self.rebuild(),
            Ev::Node(Change::Added(n)) | Ev::Node(Change::Modified { new: n, .. }) => {
                match NodeInfo::from_value(&n) {
                    Ok(info) => {
                        let changed = self
                            .cluster
                            .node(&info.name)
                            .is_none_or(|old| schedulable_changed(old, &info));
                        self.cluster.set_node(info);
                        if changed {
                            self.queue.unpark_all(&self.pods);
                        }
                    }
                    Err(e) => tracing::warn!(node = %object_key(&n), error = %e, "ignoring node"),
                }
            }
            Ev::Node(Change::Deleted(n)) => {
                self.cluster.remove_node(n["metadata"]["name"].as_str().unwrap_or(""));
            }
            Ev::Bound { key, pod, node, result } => match result {
                Ok(()) => {
                    self.queue.attempts.remove(&key);
                    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
                    let name = pod["metadata"]["name"].as_str().unwrap_or("");
                    self.events.normal(
                        &pod,
                        "Scheduled",
                        format!("Successfully assigned {ns}/{name} to {node}"),
                    );
                }
                Err(e) => {
                    // Not bound: give the capacity back (the watch brings the truth if someone
                    // else bound it).
                    let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
                    if self.cluster.is_assumed(uid) {
                        self.cluster.remove_pod(uid);
                    }
                    if matches!(e.reason, Reason::NotFound | Reason::Conflict | Reason::Invalid) {
                        tracing::debug!(pod = %key, error = %e, "binding refused; not retrying");
                        return;
                    }
                    let n = self.queue.attempts.entry(key.clone()).or_insert(0);
                    *n += 1;
                    // kube-scheduler's pod back-off: 1 s doubling to 10 s.
                    let delay =
                        Duration::from_secs(1 << (*n - 1).min(3)).min(Duration::from_secs(10));
                    tracing::warn!(pod = %key, %node, error = %e, ?delay, "binding failed; retrying");
                    let tx = self.tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = tx.send(Ev::Retry(key));
                    });
                }
            },
            Ev::Retry(key) => {
                if let Some(p) = self.pods.get(&key) {
                    self.pod_changed(&p);
                }
            }
        }
    }

    async fn schedule_one(&mut self, key: &str) {
        let Some(p) = self.pods.get(key) else { return };
        let uid = p["metadata"]["uid"].as_str().unwrap_or("").to_string();
        if !node_name(&p).is_empty()
            || terminating(&p)
            || !self.ours(&p)
            || self.cluster.is_assumed(&uid)
        {
            return;
        }
        let info = match PodInfo::from_value(&p) {
            Ok(i) => i,
            Err(e) => {
                self.unschedulable(&p, &format!("the pod cannot be scheduled: {e}"));
                self.queue.park(key, false);
                return;
            }
        };
        match self.cluster.schedule(&info) {
            Decision::Node(node) => {
                self.cluster.add_pod(&node, Arc::new(info), true);
                self.queue.unpark_affinity(&self.pods);
                let permit = self.binds.clone().acquire_owned().await.expect("bind semaphore");
                let (client, tx, key) = (self.client.clone(), self.tx.clone(), key.to_string());
                let pod = p.clone();
                let ns = p["metadata"]["namespace"].as_str().unwrap_or("").to_string();
                let name = p["metadata"]["name"].as_str().unwrap_or("").to_string();
                tokio::spawn(async move {
                    // The uid makes the binding a precondition: a pod deleted and re-created
                    // under the same name is not bound by a decision made for the old one.
                    let result = client.bind(&ns, &name, &uid, &node).await;
                    drop(permit);
                    let _ = tx.send(Ev::Bound { key, pod, node, result });
                });
            }
            Decision::Unschedulable(msg) => {
                tracing::debug!(pod = %key, %msg, "unschedulable");
                self.unschedulable(&p, &msg);
                self.queue.park(key, !info.affinity.is_empty());
            }
        }
    }

    /// PodScheduled=False with the reasons, and a FailedScheduling event, when they changed.
    fn unschedulable(&self, p: &Value, msg: &str) {
        let mut conds: Vec<Value> =
            p.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
        if !flotilla_client::runtime::set_condition(
            &mut conds,
            "PodScheduled",
            "False",
            "Unschedulable",
            msg,
        ) {
            return;
        }
        self.events.warning(p, "FailedScheduling", msg);
        let (client, p) = (self.client.clone(), p.clone());
        tokio::spawn(async move {
            let ns = p["metadata"]["namespace"].as_str().unwrap_or("");
            let name = p["metadata"]["name"].as_str().unwrap_or("");
            let patch =
                json!({"metadata": {"uid": p["metadata"]["uid"]}, "status": {"conditions": conds}});
            if let Err(e) = client.patch("pods", ns, name, &patch, false, true).await {
                tracing::debug!(pod = %name, error = %e, "recording PodScheduled=False failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::plugins::PodInfo;
    use flotilla_api::prune;
    use serde_json::json;

    #[test]
    fn the_scheduling_view_keeps_everything_scheduling_reads() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "web"},
                "annotations": {"big": "x".repeat(4096)}, "resourceVersion": "7",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                    "uid": "o", "controller": true}]},
            "spec": {"priority": 5, "nodeSelector": {"disk": "ssd"}, "schedulerName": "default-scheduler",
                "tolerations": [{"key": "k", "operator": "Exists"}],
                "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "zone"}]}},
                "overhead": {"cpu": "10m"},
                "initContainers": [{"name": "i", "image": "x", "restartPolicy": "Always",
                    "resources": {"requests": {"cpu": "2"}}}],
                "containers": [{"name": "c", "image": "x", "command": ["sh", "-c", "x".repeat(4096)],
                    "env": [{"name": "A", "value": "b"}],
                    "ports": [{"containerPort": 80, "hostPort": 8080}],
                    "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}],
                "volumes": [{"name": "v", "emptyDir": {}}]},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False"}],
                "containerStatuses": []}});
        let view = prune::decode(pod.to_string().as_bytes(), &super::SCHEDULING_VIEW).unwrap();
        let (a, b) = (PodInfo::from_value(&pod).unwrap(), PodInfo::from_value(&view).unwrap());
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert_eq!(view["status"]["conditions"], pod["status"]["conditions"]);
        assert!(view.to_string().len() < pod.to_string().len() / 8, "{view}");
    }
}
