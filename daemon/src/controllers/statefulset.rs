//! StatefulSet controller: pods with stable names `<set>-<ordinal>`, hostname and subdomain
//! (`spec.serviceName`, for per-pod DNS through a headless Service's Endpoints). OrderedReady
//! creates ordinal i only once 0..i are Running and Ready and removes from the highest ordinal
//! down, one at a time; Parallel does both at once. RollingUpdate replaces pods of an old
//! template in reverse ordinal order, one at a time, down to `partition`.
//!
//! Not here yet: volumeClaimTemplates (no PersistentVolumeClaims in the cluster yet), and
//! ControllerRevision objects (revisions are the `controller-revision-hash` label only, so a
//! pod below the partition that is recreated gets the current template).

use super::daemonset::HASH_LABEL;
use super::deployment::template_hash;
use super::{enqueue_owners, enqueue_self, Ctx};
use crate::controller::{
    controller_uid, meta, owner_ref, pod_available, pod_phase, pod_ready, run_workers, terminating,
    Reconciled, WorkQueue,
};
use anyhow::Context;
use flotilla_api::client::DeleteParams;
use flotilla_api::error::Reason;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

pub async fn run(ctx: Arc<Ctx>) {
    let queue = WorkQueue::new();
    enqueue_self(ctx.inf("statefulsets"), queue.clone());
    enqueue_owners(ctx.inf("pods"), "StatefulSet", queue.clone(), None, |_| {});
    run_workers("statefulset", queue, 2, move |key| {
        let ctx = ctx.clone();
        async move { reconcile(&ctx, &key).await }
    })
    .await
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Create(i64),
    Delete(String),
}

#[derive(Debug, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub status: Value,
}

fn ordinal(set: &str, pod: &Value) -> Option<i64> {
    meta(pod, "name").strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

fn running_ready(p: &Value) -> bool {
    pod_phase(p) == "Running" && pod_ready(p) && !terminating(p)
}

pub fn pod_for(sts: &Value, ordinal: i64, hash: &str) -> Value {
    let name = format!("{}-{ordinal}", meta(sts, "name"));
    let t = sts.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let mut labels = t.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
    labels[HASH_LABEL] = json!(hash);
    labels["statefulset.kubernetes.io/pod-name"] = json!(name);
    labels["apps.kubernetes.io/pod-index"] = json!(ordinal.to_string());
    let mut spec = t["spec"].clone();
    spec["hostname"] = json!(name);
    if let Some(svc) =
        sts.pointer("/spec/serviceName").and_then(Value::as_str).filter(|s| !s.is_empty())
    {
        spec["subdomain"] = json!(svc);
    }
    let mut m = json!({"name": name, "namespace": meta(sts, "namespace"), "labels": labels,
                       "ownerReferences": [owner_ref(sts)]});
    if let Some(a) = t.pointer("/metadata/annotations") {
        m["annotations"] = a.clone();
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": m, "spec": spec})
}

/// The sync as a pure function of the StatefulSet and its pods.
pub fn plan(sts: &Value, pods: &[Arc<Value>], now: jiff::Timestamp) -> Plan {
    let set = meta(sts, "name");
    let uid = meta(sts, "uid");
    let hash = template_hash(sts.pointer("/spec/template").unwrap_or(&Value::Null));
    let replicas = sts.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1).max(0);
    let parallel =
        sts.pointer("/spec/podManagementPolicy").and_then(Value::as_str) == Some("Parallel");
    let rolling =
        sts.pointer("/spec/updateStrategy/type").and_then(Value::as_str) != Some("OnDelete");
    let partition = sts
        .pointer("/spec/updateStrategy/rollingUpdate/partition")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let mut by_ord: BTreeMap<i64, Arc<Value>> = BTreeMap::new();
    for p in pods.iter().filter(|p| controller_uid(p) == uid) {
        if let Some(o) = ordinal(set, p) {
            by_ord.insert(o, p.clone());
        }
    }
    let mut steps = Vec::new();
    let mut blocked = false;
    for i in 0..replicas {
        match by_ord.get(&i) {
            None => {
                if !blocked {
                    steps.push(Step::Create(i));
                }
                blocked |= !parallel;
            }
            Some(p) if terminating(p) => blocked |= !parallel,
            Some(p) if matches!(pod_phase(p), "Failed" | "Succeeded") => {
                // Replaced under the same name once the old one is gone.
                if !blocked {
                    steps.push(Step::Delete(meta(p, "name").into()));
                }
                blocked |= !parallel;
            }
            Some(p) => blocked |= !parallel && !running_ready(p),
        }
    }
    let healthy = (0..replicas).all(|i| by_ord.get(&i).is_some_and(|p| running_ready(p)));
    // Condemned pods: highest ordinal first.
    let condemned: Vec<&Arc<Value>> = by_ord.range(replicas..).rev().map(|(_, p)| p).collect();
    for p in &condemned {
        if terminating(p) {
            if !parallel {
                break;
            }
            continue;
        }
        if parallel || healthy {
            steps.push(Step::Delete(meta(p, "name").into()));
        }
        if !parallel {
            break;
        }
    }
    // Rolling update, highest ordinal first, one at a time, once everything is healthy.
    if rolling && healthy && condemned.is_empty() && steps.is_empty() {
        if let Some(p) = (partition..replicas)
            .rev()
            .filter_map(|i| by_ord.get(&i))
            .find(|p| p["metadata"]["labels"][HASH_LABEL].as_str() != Some(hash.as_str()))
        {
            steps.push(Step::Delete(meta(p, "name").into()));
        }
    }
    let live: Vec<&Arc<Value>> = by_ord.values().filter(|p| !terminating(p)).collect();
    let min_ready = sts.pointer("/spec/minReadySeconds").and_then(Value::as_i64).unwrap_or(0);
    let updated = live
        .iter()
        .filter(|p| p["metadata"]["labels"][HASH_LABEL].as_str() == Some(hash.as_str()))
        .count();
    let current_rev = if updated == live.len() {
        hash.clone()
    } else {
        sts.pointer("/status/currentRevision").and_then(Value::as_str).unwrap_or(&hash).to_string()
    };
    let current = live
        .iter()
        .filter(|p| p["metadata"]["labels"][HASH_LABEL].as_str() == Some(current_rev.as_str()))
        .count();
    let status = json!({
        "observedGeneration": sts.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
        "replicas": live.len(),
        "readyReplicas": live.iter().filter(|p| pod_ready(p)).count(),
        "availableReplicas": live.iter().filter(|p| pod_available(p, min_ready, now)).count(),
        "currentReplicas": current,
        "updatedReplicas": updated,
        "currentRevision": current_rev,
        "updateRevision": hash,
    });
    Plan { steps, status }
}

async fn reconcile(ctx: &Ctx, key: &str) -> Reconciled {
    let Some(sts) = ctx.inf("statefulsets").get(key) else { return Ok(None) };
    if terminating(&sts) {
        return Ok(None);
    }
    let ns = meta(&sts, "namespace").to_string();
    let plan = plan(&sts, &ctx.inf("pods").list_namespace(&ns), jiff::Timestamp::now());
    let hash = template_hash(sts.pointer("/spec/template").unwrap_or(&Value::Null));
    let c = &ctx.client;
    for step in &plan.steps {
        match step {
            Step::Create(i) => match c.create("pods", &ns, &pod_for(&sts, *i, &hash)).await {
                Ok(_) => ctx.events.normal(
                    &sts,
                    "SuccessfulCreate",
                    format!(
                        "create Pod {}-{i} in StatefulSet {} successful",
                        meta(&sts, "name"),
                        meta(&sts, "name")
                    ),
                ),
                // The cache has not shown it yet, or the old one is still terminating.
                Err(e) if e.reason == Reason::AlreadyExists => {}
                Err(e) => {
                    ctx.events.warning(
                        &sts,
                        "FailedCreate",
                        format!("create Pod {}-{i} failed: {e}", meta(&sts, "name")),
                    );
                    return Err(e).context("creating a StatefulSet pod");
                }
            },
            Step::Delete(name) => {
                match c.delete("pods", &ns, name, &DeleteParams::default()).await {
                    Ok(_) => ctx.events.normal(
                        &sts,
                        "SuccessfulDelete",
                        format!(
                            "delete Pod {name} in StatefulSet {} successful",
                            meta(&sts, "name")
                        ),
                    ),
                    Err(e) if e.reason == Reason::NotFound => {}
                    Err(e) => return Err(e).context("deleting a StatefulSet pod"),
                }
            }
        }
    }
    if sts.get("status").cloned().unwrap_or(json!({})) != plan.status {
        let patch = json!({"metadata": {"uid": meta(&sts, "uid")}, "status": plan.status});
        if let Err(e) = c.patch("statefulsets", &ns, meta(&sts, "name"), &patch, false, true).await
        {
            if e.reason != Reason::NotFound {
                return Err(e).context("updating the StatefulSet status");
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts(replicas: i64, policy: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": "default", "uid": "sts-uid", "generation": 1},
            "spec": {"replicas": replicas, "serviceName": "db", "podManagementPolicy": policy,
                "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
    }

    fn pod(s: &Value, i: i64, ready: bool, hash: Option<&str>) -> Arc<Value> {
        let h = hash.map(str::to_string).unwrap_or_else(|| template_hash(&s["spec"]["template"]));
        let mut p = pod_for(s, i, &h);
        p["metadata"]["ownerReferences"][0]["uid"] = json!("sts-uid");
        p["status"] = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]});
        Arc::new(p)
    }

    #[test]
    fn ordered_ready_creates_one_ordinal_at_a_time() {
        let s = sts(3, "OrderedReady");
        assert_eq!(plan(&s, &[], jiff::Timestamp::now()).steps, vec![Step::Create(0)]);
        assert!(
            plan(&s, &[pod(&s, 0, false, None)], jiff::Timestamp::now()).steps.is_empty(),
            "waits for db-0 to be Ready"
        );
        assert_eq!(
            plan(&s, &[pod(&s, 0, true, None)], jiff::Timestamp::now()).steps,
            vec![Step::Create(1)]
        );
        let p = pod_for(&s, 2, "h");
        assert_eq!(
            (
                p["metadata"]["name"].as_str(),
                p["spec"]["hostname"].as_str(),
                p["spec"]["subdomain"].as_str()
            ),
            (Some("db-2"), Some("db-2"), Some("db"))
        );
    }

    #[test]
    fn parallel_creates_everything_and_scale_down_goes_from_the_top() {
        let s = sts(3, "Parallel");
        assert_eq!(
            plan(&s, &[], jiff::Timestamp::now()).steps,
            vec![Step::Create(0), Step::Create(1), Step::Create(2)]
        );
        let o = sts(1, "OrderedReady");
        let pods: Vec<Arc<Value>> = (0..3).map(|i| pod(&o, i, true, None)).collect();
        assert_eq!(
            plan(&o, &pods, jiff::Timestamp::now()).steps,
            vec![Step::Delete("db-2".into())]
        );
    }

    #[test]
    fn rolling_updates_go_in_reverse_ordinal_order_down_to_the_partition() {
        let mut s = sts(3, "OrderedReady");
        let pods: Vec<Arc<Value>> = (0..3).map(|i| pod(&s, i, true, Some("old"))).collect();
        assert_eq!(
            plan(&s, &pods, jiff::Timestamp::now()).steps,
            vec![Step::Delete("db-2".into())]
        );
        let mut pods2 = pods.clone();
        pods2[2] = pod(&s, 2, true, None);
        assert_eq!(
            plan(&s, &pods2, jiff::Timestamp::now()).steps,
            vec![Step::Delete("db-1".into())]
        );
        s["spec"]["updateStrategy"] =
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 2}});
        assert!(
            plan(&s, &pods2, jiff::Timestamp::now()).steps.is_empty(),
            "ordinals below the partition keep their revision"
        );
        let st = plan(&s, &pods2, jiff::Timestamp::now()).status;
        assert_eq!(
            (st["updatedReplicas"].as_i64(), st["readyReplicas"].as_i64()),
            (Some(1), Some(3))
        );
    }
}
