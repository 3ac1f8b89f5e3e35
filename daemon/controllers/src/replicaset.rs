//! ReplicaSet controller: keeps `spec.replicas` active pods matching the selector, adopting
//! matching orphans and releasing owned pods that stopped matching; scale-down deletes the
//! least valuable pods first (unscheduled, pending, not ready, most restarted, newest).

use super::{enqueue_owners, enqueue_self, workload_selector, Ctx};
use anyhow::Context;
use flotilla_api::error::Reason;
use flotilla_client::runtime::{
    controller_uid, labels, meta, owner_ref, pod_active, pod_available, pod_phase, pod_ready,
    run_workers, terminating, Expectations, Reconciled, WorkQueue,
};
use flotilla_client::{object_key, DeleteParams};
use serde_json::{json, Value};
use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Most pods created per sync, as the ReplicaSet controller's burstReplicas.
const BURST: usize = 500;

pub async fn run(ctx: Arc<Ctx>) {
    let queue = WorkQueue::new();
    let exp = Arc::new(Expectations::default());
    enqueue_self(ctx.inf("replicasets"), queue.clone());
    let (q, rs) = (queue.clone(), Arc::downgrade(ctx.inf("replicasets")));
    enqueue_owners(ctx.inf("pods"), "ReplicaSet", queue.clone(), Some(exp.clone()), move |pod| {
        // An orphan: every ReplicaSet whose selector matches may adopt it.
        if terminating(pod) {
            return;
        }
        let l = labels(pod);
        let Some(rs) = rs.upgrade() else { return };
        for r in rs.list_namespace(meta(pod, "namespace")) {
            if workload_selector(&r).is_ok_and(|s| s.matches(&l)) {
                q.add(object_key(&r));
            }
        }
    });
    run_workers("replicaset", queue, 4, move |key| {
        let (ctx, exp) = (ctx.clone(), exp.clone());
        async move { reconcile(&ctx, &exp, &key).await }
    })
    .await
}

/// What a sync intends.
#[derive(Debug, Default)]
pub struct Plan {
    pub adopt: Vec<Arc<Value>>,
    pub release: Vec<Arc<Value>>,
    pub create: usize,
    pub delete: Vec<Arc<Value>>,
    pub status: Value,
    /// Look again then (a pod becomes available after minReadySeconds).
    pub recheck: Option<Duration>,
}

/// Kubernetes' ActivePods ordering: the pods to delete first sort first.
pub fn deletion_cmp(a: &Value, b: &Value) -> Ordering {
    let assigned =
        |p: &Value| !p.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("").is_empty();
    let phase = |p: &Value| match pod_phase(p) {
        "Pending" => 0,
        "Unknown" => 1,
        "Running" => 2,
        _ => 3,
    };
    let restarts = |p: &Value| -> i64 {
        p.pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .map(|cs| cs.iter().map(|c| c["restartCount"].as_i64().unwrap_or(0)).max().unwrap_or(0))
            .unwrap_or(0)
    };
    let created = |p: &Value| meta(p, "creationTimestamp").to_string();
    assigned(a)
        .cmp(&assigned(b))
        .then(phase(a).cmp(&phase(b)))
        .then(pod_ready(a).cmp(&pod_ready(b)))
        .then(restarts(b).cmp(&restarts(a)))
        .then(created(b).cmp(&created(a)))
}

/// The sync, as a pure function of the ReplicaSet, the pods of its namespace and the time.
pub fn plan(
    rs: &Value,
    pods: &[Arc<Value>],
    now: jiff::Timestamp,
    may_act: bool,
) -> Result<Plan, String> {
    let sel = workload_selector(rs)?;
    let uid = meta(rs, "uid");
    let mut p = Plan::default();
    let mut owned: Vec<Arc<Value>> = Vec::new();
    for pod in pods {
        let l = labels(pod);
        let owner = controller_uid(pod);
        if owner == uid {
            if sel.matches(&l) {
                owned.push(pod.clone());
            } else if !terminating(rs) {
                p.release.push(pod.clone());
            }
        } else if owner.is_empty()
            && sel.matches(&l)
            && !terminating(rs)
            && !terminating(pod)
            && pod_active(pod)
        {
            p.adopt.push(pod.clone());
            owned.push(pod.clone());
        }
    }
    let mut active: Vec<Arc<Value>> = owned.iter().filter(|p| pod_active(p)).cloned().collect();
    let want = rs.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1).max(0) as usize;
    if may_act && !terminating(rs) {
        if active.len() < want {
            p.create = (want - active.len()).min(BURST);
        } else if active.len() > want {
            active.sort_by(|a, b| deletion_cmp(a, b));
            p.delete = active[..active.len() - want].to_vec();
        }
    }
    let min_ready = rs.pointer("/spec/minReadySeconds").and_then(Value::as_i64).unwrap_or(0);
    let template_labels = labels(
        &json!({"metadata": rs.pointer("/spec/template/metadata").cloned().unwrap_or(json!({}))}),
    );
    let fully = active.iter().filter(|p| {
        let l = labels(p);
        template_labels.iter().all(|(k, v)| l.get(k) == Some(v))
    });
    let ready = active.iter().filter(|p| pod_ready(p)).count();
    let available = active.iter().filter(|p| pod_available(p, min_ready, now)).count();
    if min_ready > 0 && ready > available {
        p.recheck = Some(Duration::from_secs(1));
    }
    let mut status = json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": fully.count(),
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": rs.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
    });
    if let Some(c) = rs.pointer("/status/conditions") {
        status["conditions"] = c.clone();
    }
    p.status = status;
    Ok(p)
}

/// A pod from `owner`'s `spec.template`, named `<owner>-<random>` and controlled by it (the
/// ReplicaSet's and the Job's pods alike).
pub fn pod_from_template(rs: &Value) -> Value {
    let t = rs.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let mut m = json!({
        "generateName": format!("{}-", meta(rs, "name")),
        "namespace": meta(rs, "namespace"),
        "ownerReferences": [owner_ref(rs)],
    });
    for k in ["labels", "annotations"] {
        if let Some(v) = t.pointer(&format!("/metadata/{k}")) {
            m[k] = v.clone();
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": m, "spec": t["spec"]})
}

fn status_differs(rs: &Value, status: &Value) -> bool {
    let cur = rs.get("status").cloned().unwrap_or(json!({}));
    ["replicas", "fullyLabeledReplicas", "readyReplicas", "availableReplicas", "observedGeneration"]
        .iter()
        .any(|k| cur[*k].as_i64().unwrap_or(0) != status[*k].as_i64().unwrap_or(0))
}

async fn reconcile(ctx: &Ctx, exp: &Expectations, key: &str) -> Reconciled {
    let Some(rs) = ctx.inf("replicasets").get(key) else {
        exp.forget(key);
        return Ok(None);
    };
    let ns = meta(&rs, "namespace").to_string();
    let pods = ctx.inf("pods").list_namespace(&ns);
    let may_act = exp.satisfied(key);
    let plan = match plan(&rs, &pods, jiff::Timestamp::now(), may_act) {
        Ok(p) => p,
        Err(e) => {
            ctx.events.warning(&rs, "InvalidSelector", e);
            return Ok(None);
        }
    };
    let c = &ctx.client;
    for pod in &plan.adopt {
        let mut refs: Vec<Value> = pod
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        refs.push(owner_ref(&rs));
        let patch = json!({"metadata": {"uid": meta(pod, "uid"), "ownerReferences": refs}});
        c.patch("pods", &ns, meta(pod, "name"), &patch, false, false)
            .await
            .context("adopting a pod")?;
    }
    for pod in &plan.release {
        let refs: Vec<Value> = pod
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|r| r["uid"] != meta(&rs, "uid"))
            .cloned()
            .collect();
        let patch = json!({"metadata": {"uid": meta(pod, "uid"), "ownerReferences": refs}});
        if let Err(e) = c.patch("pods", &ns, meta(pod, "name"), &patch, false, false).await {
            if e.reason != Reason::NotFound {
                return Err(e).context("releasing a pod");
            }
        }
    }
    if plan.create > 0 {
        exp.expect(key, plan.create, []);
        let template = pod_from_template(&rs);
        // Slow start (1, 2, 4, …) so a quota or a bad template fails one create, not hundreds.
        let (mut done, mut batch) = (0, 1);
        let mut failed = None;
        while done < plan.create && failed.is_none() {
            let n = batch.min(plan.create - done);
            let results =
                futures::future::join_all((0..n).map(|_| c.create("pods", &ns, &template))).await;
            for r in results {
                if let Err(e) = r {
                    exp.created(key);
                    failed.get_or_insert(e);
                }
            }
            done += n;
            batch *= 2;
        }
        for _ in done..plan.create {
            exp.created(key);
        }
        if let Some(e) = failed {
            ctx.events.warning(&rs, "FailedCreate", format!("Error creating: {e}"));
            return Err(e).context("creating pods");
        }
        ctx.events.normal(&rs, "SuccessfulCreate", format!("Created {} pod(s)", plan.create));
    }
    if !plan.delete.is_empty() {
        exp.expect(key, 0, plan.delete.iter().map(|p| object_key(p)));
        let ns = ns.as_str();
        let results = futures::future::join_all(plan.delete.iter().map(|p| {
            let dp =
                DeleteParams { precondition_uid: meta(p, "uid").to_string(), ..Default::default() };
            async move { (p, c.delete("pods", ns, meta(p, "name"), &dp).await) }
        }))
        .await;
        let mut failed = None;
        for (p, r) in results {
            match r {
                Ok(_) => {}
                Err(e) if e.reason == Reason::NotFound => exp.deleted(key, &object_key(p)),
                Err(e) => {
                    exp.deleted(key, &object_key(p));
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            return Err(e).context("deleting pods");
        }
        let names: Vec<&str> = plan.delete.iter().map(|p| meta(p, "name")).collect();
        ctx.events.normal(&rs, "SuccessfulDelete", format!("Deleted pod(s): {}", names.join(", ")));
    }
    if status_differs(&rs, &plan.status) {
        let patch = json!({"metadata": {"uid": meta(&rs, "uid")}, "status": plan.status});
        match c.patch("replicasets", &ns, meta(&rs, "name"), &patch, false, true).await {
            Ok(_) => {}
            Err(e) if e.reason == Reason::NotFound => {}
            Err(e) => return Err(e).context("updating the ReplicaSet status"),
        }
    }
    Ok(plan.recheck)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(replicas: i64) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web", "namespace": "default", "uid": "rs-uid", "generation": 2},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}}}})
    }

    fn pod(
        name: &str,
        owner: Option<&str>,
        node: &str,
        phase: &str,
        ready: bool,
        created: &str,
    ) -> Arc<Value> {
        let refs = owner
            .map(|u| json!([{"kind": "ReplicaSet", "name": "web", "uid": u, "controller": true}]));
        Arc::new(
            json!({"metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}"),
            "labels": {"app": "web"}, "ownerReferences": refs, "creationTimestamp": created},
            "spec": {"nodeName": node},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"},
                "lastTransitionTime": "2020-01-01T00:00:00Z"}]}}),
        )
    }

    #[test]
    fn a_replicaset_creates_the_missing_replicas_and_adopts_orphans() {
        let pods = vec![
            pod("a", Some("rs-uid"), "n1", "Running", true, "2020-01-01T00:00:00Z"),
            pod("b", None, "n1", "Running", true, "2020-01-01T00:00:00Z"),
            pod("c", Some("other"), "n1", "Running", true, "2020-01-01T00:00:00Z"),
        ];
        let p = plan(&rs(5), &pods, jiff::Timestamp::now(), true).unwrap();
        assert_eq!(p.adopt.len(), 1);
        assert_eq!(p.create, 3);
        assert_eq!(p.status["replicas"], 2);
        assert_eq!(p.status["readyReplicas"], 2);
        // With expectations pending it only reports.
        let p = plan(&rs(5), &pods, jiff::Timestamp::now(), false).unwrap();
        assert_eq!(p.create, 0);
    }

    #[test]
    fn scale_down_deletes_unscheduled_then_not_ready_then_newest_pods() {
        let pods = vec![
            pod("old-ready", Some("rs-uid"), "n1", "Running", true, "2020-01-01T00:00:00Z"),
            pod("new-ready", Some("rs-uid"), "n1", "Running", true, "2021-01-01T00:00:00Z"),
            pod("not-ready", Some("rs-uid"), "n1", "Running", false, "2019-01-01T00:00:00Z"),
            pod("unscheduled", Some("rs-uid"), "", "Pending", false, "2019-01-01T00:00:00Z"),
        ];
        let p = plan(&rs(1), &pods, jiff::Timestamp::now(), true).unwrap();
        let names: Vec<&str> = p.delete.iter().map(|p| meta(p, "name")).collect();
        assert_eq!(names, vec!["unscheduled", "not-ready", "new-ready"]);
    }

    #[test]
    fn finished_and_terminating_pods_do_not_count() {
        let mut gone =
            (*pod("gone", Some("rs-uid"), "n1", "Running", true, "2020-01-01T00:00:00Z")).clone();
        gone["metadata"]["deletionTimestamp"] = json!("2020-01-01T00:00:00Z");
        let pods = vec![
            pod("done", Some("rs-uid"), "n1", "Succeeded", false, "2020-01-01T00:00:00Z"),
            Arc::new(gone),
        ];
        let p = plan(&rs(2), &pods, jiff::Timestamp::now(), true).unwrap();
        assert_eq!(p.create, 2);
    }

    #[test]
    fn pods_that_stop_matching_are_released() {
        let mut moved =
            (*pod("m", Some("rs-uid"), "n1", "Running", true, "2020-01-01T00:00:00Z")).clone();
        moved["metadata"]["labels"] = json!({"app": "debug"});
        let p = plan(&rs(0), &[Arc::new(moved)], jiff::Timestamp::now(), true).unwrap();
        assert_eq!(p.release.len(), 1);
        assert_eq!(p.status["replicas"], 0);
    }

    #[test]
    fn available_waits_for_min_ready_seconds() {
        let mut r = rs(1);
        r["spec"]["minReadySeconds"] = json!(10);
        let pods = vec![pod("a", Some("rs-uid"), "n1", "Running", true, "2020-01-01T00:00:00Z")];
        let t0: jiff::Timestamp = "2020-01-01T00:00:05Z".parse().unwrap();
        let p = plan(&r, &pods, t0, true).unwrap();
        assert_eq!(
            (p.status["readyReplicas"].as_i64(), p.status["availableReplicas"].as_i64()),
            (Some(1), Some(0))
        );
        assert!(p.recheck.is_some());
        let p = plan(&r, &pods, "2020-01-01T00:00:11Z".parse().unwrap(), true).unwrap();
        assert_eq!(p.status["availableReplicas"], 1);
    }
}
