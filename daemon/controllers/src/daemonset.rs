//! DaemonSet controller: one pod on every node the template's node selector, required node
//! affinity and tolerations allow (plus the tolerations Kubernetes adds to daemon pods). Pods
//! are pinned with a `metadata.name` node-affinity term and placed by the scheduler, as in
//! Kubernetes; extra, failed and misplaced pods go; RollingUpdate replaces pods of an old
//! template (the `controller-revision-hash` label) at most maxUnavailable at a time. Templates
//! are recorded as ControllerRevisions `<ds>-<hash>`, as the StatefulSet's are.

use super::deployment::template_hash;
use super::history::{
    history_of, owned_revisions, prune_history, record_history, PodLabel, HASH_LABEL,
};
use super::{enqueue_owners, enqueue_self, Ctx};
use anyhow::Context;
use flotilla_api::error::Reason;
use flotilla_client::runtime::{
    controller_uid, meta, on_change, owner_ref, pod_available, pod_phase, run_workers, terminating,
    Expectations, Reconciled, WorkQueue,
};
use flotilla_client::{object_key, Change, DeleteParams};
use flotilla_scheduler::plugins::{self, NodeInfo, PodInfo};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

pub async fn run(ctx: Arc<Ctx>) {
    let queue = WorkQueue::new();
    let exp = Arc::new(Expectations::default());
    enqueue_self(ctx.inf("daemonsets"), queue.clone());
    enqueue_owners(ctx.inf("pods"), "DaemonSet", queue.clone(), Some(exp.clone()), |_| {});
    enqueue_owners(ctx.inf("controllerrevisions"), "DaemonSet", queue.clone(), None, |_| {});
    // A node coming, going or changing labels/taints may change where daemons run.
    let (q, dss) = (queue.clone(), Arc::downgrade(ctx.inf("daemonsets")));
    on_change(ctx.inf("nodes"), move |c| {
        let interesting = match c {
            Change::Modified { old, new } => {
                old["metadata"]["labels"] != new["metadata"]["labels"] || old["spec"] != new["spec"]
            }
            _ => true,
        };
        if let (true, Some(dss)) = (interesting, dss.upgrade()) {
            for d in dss.list() {
                q.add(object_key(&d));
            }
        }
    });
    run_workers("daemonset", queue, 2, move |key| {
        let (ctx, exp) = (ctx.clone(), exp.clone());
        async move { reconcile(&ctx, &exp, &key).await }
    })
    .await
}

/// The tolerations the DaemonSet controller adds to every daemon pod.
fn daemon_tolerations() -> Vec<Value> {
    let mut t: Vec<Value> = ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"]
        .iter()
        .map(|k| json!({"key": k, "operator": "Exists", "effect": "NoExecute"}))
        .collect();
    for k in [
        "node.kubernetes.io/disk-pressure",
        "node.kubernetes.io/memory-pressure",
        "node.kubernetes.io/pid-pressure",
        "node.kubernetes.io/unschedulable",
    ] {
        t.push(json!({"key": k, "operator": "Exists", "effect": "NoSchedule"}));
    }
    t
}

/// The pod a DaemonSet runs on `node`.
pub fn pod_for(ds: &Value, node: &str, hash: &str) -> Value {
    let t = ds.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let mut spec = t["spec"].clone();
    let mut tol: Vec<Value> = spec["tolerations"].as_array().cloned().unwrap_or_default();
    for d in daemon_tolerations() {
        if !tol.iter().any(|x| x["key"] == d["key"] && x["effect"] == d["effect"]) {
            tol.push(d);
        }
    }
    spec["tolerations"] = json!(tol);
    spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!({
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]});
    let mut labels = t.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
    labels[HASH_LABEL] = json!(hash);
    let mut m = json!({"generateName": format!("{}-", meta(ds, "name")), "namespace": meta(ds, "namespace"),
        "labels": labels, "ownerReferences": [owner_ref(ds)]});
    if let Some(a) = t.pointer("/metadata/annotations") {
        m["annotations"] = a.clone();
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": m, "spec": spec})
}

/// The node a daemon pod is for: its binding, or the node its affinity pins it to.
fn target(pod: &Value) -> String {
    if let Some(n) = pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty())
    {
        return n.to_string();
    }
    pod.pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchFields/0/values/0")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// Whether the daemon pod may run on the node: selector, required affinity, taints.
fn should_run(pod: &PodInfo, node: &NodeInfo) -> bool {
    pod.node_selector.iter().all(|(k, v)| node.labels.get(k) == Some(v))
        && (pod.required.is_empty() || pod.required.iter().any(|t| t.matches(node)))
        && node
            .taints
            .iter()
            .filter(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"))
            .all(|t| plugins::tolerated(&pod.tolerations, t))
}

#[derive(Debug, Default)]
pub struct Plan {
    pub create: Vec<String>,
    pub delete: Vec<Arc<Value>>,
    pub status: Value,
}

pub fn plan(
    ds: &Value,
    nodes: &[Arc<Value>],
    pods: &[Arc<Value>],
    now: jiff::Timestamp,
) -> Result<Plan, String> {
    let hash = template_hash(ds.pointer("/spec/template").unwrap_or(&Value::Null));
    // The template's own constraints, without the per-node pin.
    let mut probe = pod_for(ds, "", &hash);
    probe["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] =
        ds.pointer("/spec/template/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution").cloned().unwrap_or(Value::Null);
    let info = PodInfo::from_value(&probe)?;
    let uid = meta(ds, "uid");
    let mut by_node: BTreeMap<String, Vec<Arc<Value>>> = BTreeMap::new();
    let mut p = Plan::default();
    for pod in pods.iter().filter(|x| controller_uid(x) == uid && !terminating(x)) {
        if matches!(pod_phase(pod), "Failed" | "Succeeded") {
            p.delete.push(pod.clone());
            continue;
        }
        by_node.entry(target(pod)).or_default().push(pod.clone());
    }
    let min_ready = ds.pointer("/spec/minReadySeconds").and_then(Value::as_i64).unwrap_or(0);
    let rolling =
        ds.pointer("/spec/updateStrategy/type").and_then(Value::as_str) != Some("OnDelete");
    let (mut desired, mut current, mut ready, mut available, mut updated, mut misscheduled) =
        (0, 0, 0, 0, 0, 0);
    let mut old: Vec<(bool, Arc<Value>)> = Vec::new();
    let mut unavailable = 0i64;
    for n in nodes {
        let name = meta(n, "name").to_string();
        let node = NodeInfo::from_value(n)?;
        let mut here = by_node.remove(&name).unwrap_or_default();
        if !should_run(&info, &node) {
            misscheduled += here
                .iter()
                .filter(|x| x.pointer("/spec/nodeName").is_some_and(|v| v.is_string()))
                .count();
            p.delete.extend(here);
            continue;
        }
        desired += 1;
        if here.is_empty() {
            p.create.push(name);
            unavailable += 1;
            continue;
        }
        here.sort_by(|a, b| meta(a, "creationTimestamp").cmp(meta(b, "creationTimestamp")));
        p.delete.extend(here.drain(1..));
        let pod = &here[0];
        current += 1;
        let is_ready = flotilla_client::runtime::pod_ready(pod);
        let is_avail = pod_available(pod, min_ready, now);
        ready += is_ready as i64;
        available += is_avail as i64;
        if !is_avail {
            unavailable += 1;
        }
        if pod["metadata"]["labels"][HASH_LABEL].as_str() == Some(hash.as_str()) {
            updated += 1;
        } else {
            old.push((is_avail, pod.clone()));
        }
    }
    // Pods for nodes that are gone.
    for (_, rest) in by_node {
        p.delete.extend(rest);
    }
    if rolling {
        let max_unavail = super::deployment::resolve(
            ds.pointer("/spec/updateStrategy/rollingUpdate/maxUnavailable"),
            desired,
            false,
            "1",
        )?
        .max(1);
        // Old pods that are down anyway go first; then available ones within the budget.
        let mut budget = max_unavail - unavailable;
        for (_, pod) in old.iter().filter(|(a, _)| !*a) {
            p.delete.push(pod.clone());
        }
        for (_, pod) in old.iter().filter(|(a, _)| *a) {
            if budget <= 0 {
                break;
            }
            p.delete.push(pod.clone());
            budget -= 1;
        }
    }
    p.status = json!({
        "desiredNumberScheduled": desired, "currentNumberScheduled": current,
        "numberMisscheduled": misscheduled, "numberReady": ready, "numberAvailable": available,
        "numberUnavailable": (desired - available).max(0), "updatedNumberScheduled": updated,
        "observedGeneration": ds.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
    });
    Ok(p)
}

async fn reconcile(ctx: &Ctx, exp: &Expectations, key: &str) -> Reconciled {
    let Some(ds) = ctx.inf("daemonsets").get(key) else {
        exp.forget(key);
        return Ok(None);
    };
    if terminating(&ds) {
        return Ok(None);
    }
    let ns = meta(&ds, "namespace").to_string();
    let pods = ctx.inf("pods").list_namespace(&ns);
    let plan = match plan(&ds, &ctx.inf("nodes").list(), &pods, jiff::Timestamp::now()) {
        Ok(p) => p,
        Err(e) => {
            ctx.events.warning(&ds, "InvalidSpec", e);
            return Ok(None);
        }
    };
    // Templates are recorded as ControllerRevisions (`flotilla rollout history|undo`); the
    // pods carry the template hash, as in Kubernetes.
    let (_, history) = history_of(&ds, &owned_revisions(ctx, &ds), &pods, PodLabel::Hash);
    record_history(ctx, &ns, &history).await?;
    let c = &ctx.client;
    if exp.satisfied(key) {
        let hash = template_hash(ds.pointer("/spec/template").unwrap_or(&Value::Null));
        exp.expect(key, plan.create.len(), plan.delete.iter().map(|p| object_key(p)));
        for node in &plan.create {
            if let Err(e) = c.create("pods", &ns, &pod_for(&ds, node, &hash)).await {
                exp.created(key);
                ctx.events.warning(&ds, "FailedCreate", format!("Error creating: {e}"));
                return Err(e).context("creating a daemon pod");
            }
            ctx.events.normal(&ds, "SuccessfulCreate", format!("Created pod for node {node}"));
        }
        for pod in &plan.delete {
            let dp =
                DeleteParams { precondition_uid: meta(pod, "uid").into(), ..Default::default() };
            if let Err(e) = c.delete("pods", &ns, meta(pod, "name"), &dp).await {
                exp.deleted(key, &object_key(pod));
                if !matches!(e.reason, Reason::NotFound | Reason::Conflict) {
                    return Err(e).context("deleting a daemon pod");
                }
            }
        }
    }
    prune_history(ctx, &ns, &history).await?;
    let cur = ds.get("status").cloned().unwrap_or(json!({}));
    let differs = plan.status.as_object().is_some_and(|m| {
        m.iter().any(|(k, v)| cur[k].as_i64().unwrap_or(0) != v.as_i64().unwrap_or(0))
    });
    if differs {
        let patch = json!({"metadata": {"uid": meta(&ds, "uid")}, "status": plan.status});
        if let Err(e) = c.patch("daemonsets", &ns, meta(&ds, "name"), &patch, false, true).await {
            if e.reason != Reason::NotFound {
                return Err(e).context("updating the DaemonSet status");
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(extra: Value) -> Value {
        let mut spec = json!({"containers": [{"name": "c", "image": "i"}]});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "agent", "namespace": "kube-system", "uid": "ds-uid", "generation": 1},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                "template": {"metadata": {"labels": {"app": "agent"}}, "spec": spec}}})
    }

    fn node(name: &str, labels: Value, taints: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints},
            "status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "10"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}))
    }

    fn pod_on(d: &Value, n: &str, hash: &str, ready: bool) -> Arc<Value> {
        let mut p = pod_for(d, n, hash);
        p["metadata"]["name"] = json!(format!("agent-{n}"));
        p["metadata"]["uid"] = json!(format!("u-{n}"));
        p["metadata"]["ownerReferences"][0]["uid"] = json!("ds-uid");
        p["spec"]["nodeName"] = json!(n);
        p["status"] = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]});
        Arc::new(p)
    }

    #[test]
    fn one_pod_per_eligible_node() {
        let d = ds(json!({"nodeSelector": {"role": "edge"}}));
        let nodes = vec![
            node("a", json!({"role": "edge"}), json!([])),
            node("b", json!({"role": "edge"}), json!([{"key": "gpu", "effect": "NoSchedule"}])),
            node("c", json!({"role": "core"}), json!([])),
            node(
                "d",
                json!({"role": "edge"}),
                json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
            ),
        ];
        let p = plan(&d, &nodes, &[], jiff::Timestamp::now()).unwrap();
        assert_eq!(
            p.create,
            vec!["a".to_string(), "d".to_string()],
            "tainted b and unselected c are skipped; cordoned d is tolerated"
        );
        assert_eq!(p.status["desiredNumberScheduled"], 2);
        let pod = pod_for(&d, "a", "h");
        assert_eq!(
            pod["spec"]["affinity"]["nodeAffinity"]
                ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
                ["matchFields"][0]["values"][0],
            "a"
        );
    }

    #[test]
    fn pods_on_ineligible_nodes_and_duplicates_are_deleted() {
        let d = ds(json!({"nodeSelector": {"role": "edge"}}));
        let hash = template_hash(&d["spec"]["template"]);
        let nodes = vec![
            node("a", json!({"role": "edge"}), json!([])),
            node("c", json!({"role": "core"}), json!([])),
        ];
        let mut dup = (*pod_on(&d, "a", &hash, true)).clone();
        dup["metadata"]["name"] = json!("agent-a2");
        dup["metadata"]["creationTimestamp"] = json!("2030-01-01T00:00:00Z");
        let pods = vec![pod_on(&d, "a", &hash, true), Arc::new(dup), pod_on(&d, "c", &hash, true)];
        let p = plan(&d, &nodes, &pods, jiff::Timestamp::now()).unwrap();
        let names: Vec<&str> = p.delete.iter().map(|x| meta(x, "name")).collect();
        assert_eq!(names, vec!["agent-a2", "agent-c"]);
        assert_eq!(p.status["numberMisscheduled"], 1);
    }

    #[test]
    fn a_rolling_update_replaces_one_available_pod_at_a_time() {
        let d = ds(json!({}));
        let nodes: Vec<Arc<Value>> =
            ["a", "b", "c"].iter().map(|n| node(n, json!({}), json!([]))).collect();
        let pods: Vec<Arc<Value>> =
            ["a", "b", "c"].iter().map(|n| pod_on(&d, n, "old", true)).collect();
        let p = plan(&d, &nodes, &pods, jiff::Timestamp::now()).unwrap();
        assert_eq!(p.delete.len(), 1);
        assert_eq!(p.status["updatedNumberScheduled"], 0);
        // One node is already without a pod: the budget is spent.
        let p = plan(&d, &nodes, &pods[..2], jiff::Timestamp::now()).unwrap();
        assert_eq!((p.create.len(), p.delete.len()), (1, 0));
    }
}
