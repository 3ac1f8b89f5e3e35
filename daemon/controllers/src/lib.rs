//! The controller manager: the reconciliation loops that turn declarations into pods, over
//! shared informers (one list+watch per resource type, shared by every controller). Each
//! controller is a work queue of keys, a pure `plan` function (observed objects in, intended
//! writes out; unit-tested without a cluster) and a thin `reconcile` that executes the plan.

#![forbid(unsafe_code)]

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod gc;
pub mod history;
pub mod job;
pub mod namespace;
pub mod nodelifecycle;
pub mod replicaset;
pub mod statefulset;

use anyhow::{Context, Result};
use flotilla_api::selector::LabelSelector;
use flotilla_client::runtime::events::Recorder;
use flotilla_client::runtime::{labels, on_change, Expectations, WorkQueue};
use flotilla_client::{Change, Client, Informer, WatchParams};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// A node whose Lease was not renewed for this long is NotReady (Unknown) and tainted
    /// unreachable (kube-controller-manager's --node-monitor-grace-period, 40 s).
    pub node_monitor_grace: Duration,
    /// How long pods tolerate an unreachable node before eviction when they say nothing
    /// (the DefaultTolerationSeconds admission plugin's 300 s).
    pub default_unreachable_toleration: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            node_monitor_grace: Duration::from_secs(40),
            default_unreachable_toleration: Duration::from_secs(300),
        }
    }
}

/// What every controller shares.
pub struct Ctx {
    pub client: Client,
    pub cfg: ControllerConfig,
    pub events: Recorder,
    pub informers: HashMap<&'static str, Arc<Informer>>,
}

impl Ctx {
    pub fn inf(&self, resource: &str) -> &Arc<Informer> {
        &self.informers[resource]
    }
}

/// The resources the controllers watch (the node Leases only in their namespace).
const WATCHED: &[(&str, &str)] = &[
    ("pods", ""),
    ("replicasets", ""),
    ("deployments", ""),
    ("services", ""),
    ("endpoints", ""),
    ("namespaces", ""),
    ("serviceaccounts", ""),
    ("nodes", ""),
    ("leases", "kube-node-lease"),
    ("jobs", ""),
    ("cronjobs", ""),
    ("daemonsets", ""),
    ("statefulsets", ""),
    ("controllerrevisions", ""),
    ("poddisruptionbudgets", ""),
];

pub async fn run(client: Client, cfg: ControllerConfig) -> Result<()> {
    let mut informers = HashMap::new();
    for (res, ns) in WATCHED {
        informers.insert(*res, Informer::start(client.clone(), res, ns, WatchParams::default()));
    }
    for (res, _) in WATCHED {
        while informers[res].wait_synced(Duration::from_secs(30)).await.is_err() {
            tracing::info!(resource = res, "controllers: waiting for the informer to sync");
        }
    }
    let ctx = Arc::new(Ctx {
        events: Recorder::new(client.clone(), "controller-manager"),
        client,
        cfg,
        informers,
    });
    tracing::info!("controller manager started");
    let mut set = tokio::task::JoinSet::new();
    set.spawn(replicaset::run(ctx.clone()));
    set.spawn(deployment::run(ctx.clone()));
    set.spawn(endpoints::run(ctx.clone()));
    set.spawn(namespace::run(ctx.clone()));
    set.spawn(nodelifecycle::run(ctx.clone()));
    set.spawn(gc::run(ctx.clone()));
    set.spawn(job::run(ctx.clone()));
    set.spawn(cronjob::run(ctx.clone()));
    set.spawn(daemonset::run(ctx.clone()));
    set.spawn(statefulset::run(ctx.clone()));
    set.spawn(disruption::run(ctx.clone()));
    while let Some(r) = set.join_next().await {
        r.context("a controller panicked")?;
    }
    Ok(())
}

/// `spec.selector` of a workload as a label selector; an empty one selects nothing here, as
/// for Kubernetes' workload controllers (validation requires one anyway).
pub fn workload_selector(o: &Value) -> Result<LabelSelector, String> {
    let sel = o.pointer("/spec/selector").cloned().unwrap_or(Value::Null);
    let s: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector =
        serde_json::from_value(sel).map_err(|e| format!("spec.selector: {e}"))?;
    let s = LabelSelector::from_k8s(&s).map_err(|e| format!("spec.selector: {e}"))?;
    if s.is_everything() {
        return Ok(LabelSelector { requirements: vec![], match_nothing: true });
    }
    Ok(s)
}

/// Queues the owner (of kind `kind`) of every changed object that has one, and hands orphans
/// to `orphan` (for adoption).
pub fn enqueue_owners(
    inf: &Arc<Informer>,
    kind: &'static str,
    queue: Arc<WorkQueue>,
    exp: Option<Arc<Expectations>>,
    orphan: impl Fn(&Value) + Send + 'static,
) {
    on_change(inf, move |c| {
        let owner_key = |o: &Value| {
            flotilla_client::runtime::controller_ref(o)
                .filter(|r| r["kind"] == kind)
                .and_then(|r| r["name"].as_str())
                .map(|n| format!("{}/{n}", flotilla_client::runtime::meta(o, "namespace")))
        };
        match c {
            Change::Added(o) => match owner_key(o) {
                Some(k) => {
                    if let Some(e) = &exp {
                        e.created(&k);
                    }
                    queue.add(k);
                }
                None => orphan(o),
            },
            Change::Modified { old, new } => {
                let (a, b) = (owner_key(old), owner_key(new));
                if a != b {
                    if let Some(a) = a {
                        queue.add(a);
                    }
                }
                match b {
                    Some(b) => queue.add(b),
                    None => orphan(new),
                }
                if labels(old) != labels(new) {
                    orphan(old);
                }
            }
            Change::Deleted(o) => {
                if let Some(k) = owner_key(o) {
                    if let Some(e) = &exp {
                        e.deleted(&k, &flotilla_client::object_key(o));
                    }
                    queue.add(k);
                }
            }
            Change::Resynced => {}
        }
    });
}

/// Queues every key of `inf` on every change (and all of them on a resync).
pub fn enqueue_self(inf: &Arc<Informer>, queue: Arc<WorkQueue>) {
    // Look at everything once at start: the informer synced before we subscribed.
    for k in flotilla_client::runtime::keys(inf) {
        queue.add(k);
    }
    // Weak: a handler must not keep its informer alive after the controller stops.
    let all = Arc::downgrade(inf);
    on_change(inf, move |c| match c {
        Change::Added(o) | Change::Modified { new: o, .. } | Change::Deleted(o) => {
            queue.add(flotilla_client::object_key(o))
        }
        Change::Resynced => {
            for k in all.upgrade().map(|i| flotilla_client::runtime::keys(&i)).unwrap_or_default() {
                queue.add(k);
            }
        }
    });
}
