//! Disruption controller (Kubernetes' DisruptionController): each PodDisruptionBudget's
//! status from the pods its selector matches — how many are expected, healthy and must stay
//! healthy, how many disruptions are allowed now, and the DisruptionAllowed condition. The API
//! server's eviction subresource spends `disruptionsAllowed` and records the pod in
//! `disruptedPods`; such a pod counts as gone until it is deleted or two minutes pass.

use super::Ctx;
use flotilla_api::selector::LabelSelector;
use flotilla_client::object_key;
use flotilla_client::runtime::{
    controller_ref, labels, meta, on_change, pod_ready, run_workers, Reconciled, WorkQueue,
};
use flotilla_client::Change;
use jiff::Timestamp;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// How long an eviction the API server granted waits for its pod to go (Kubernetes'
/// DeletionTimeout).
pub const DELETION_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn run(ctx: Arc<Ctx>) {
    let queue = WorkQueue::new();
    super::enqueue_self(ctx.inf("poddisruptionbudgets"), queue.clone());
    let (q, pdbs) = (queue.clone(), Arc::downgrade(ctx.inf("poddisruptionbudgets")));
    on_change(ctx.inf("pods"), move |c| {
        let Some(pdbs) = pdbs.upgrade() else { return };
        let pods = match c {
            Change::Added(p) | Change::Deleted(p) => vec![p.clone()],
            Change::Modified { old, new } => vec![old.clone(), new.clone()],
            Change::Resynced => {
                pdbs.list().iter().for_each(|b| q.add(object_key(b)));
                return;
            }
        };
        for p in pods {
            let l = labels(&p);
            for b in pdbs.list_namespace(meta(&p, "namespace")) {
                if selector(&b).is_ok_and(|s| s.is_some_and(|s| s.matches(&l))) {
                    q.add(object_key(&b));
                }
            }
        }
    });
    run_workers("disruption", queue, 1, move |key| {
        let ctx = ctx.clone();
        async move { reconcile(&ctx, &key).await }
    })
    .await
}

/// The budget's selector: None (no pods) when unset; in policy/v1 an empty one selects every
/// pod in the namespace.
pub fn selector(pdb: &Value) -> Result<Option<LabelSelector>, String> {
    LabelSelector::at(pdb, "/spec/selector")
}

/// An int-or-percent of `total`, rounded up (Kubernetes' GetScaledValueFromIntOrPercent).
fn scaled(v: &Value, total: i64) -> Result<i64, String> {
    match v {
        Value::Number(n) => n.as_i64().ok_or_else(|| format!("{n} is not an integer")),
        Value::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: {s:?}"))?;
            Ok((pct * total + 99) / 100)
        }
        _ => Err(format!("invalid value for IntOrString: {v}")),
    }
}

/// What the budget's status should say, and when to look again (an eviction expiring).
#[derive(Debug, PartialEq)]
pub struct Plan {
    pub expected: i64,
    pub current_healthy: i64,
    pub desired_healthy: i64,
    pub disruptions_allowed: i64,
    pub disrupted: Map<String, Value>,
    pub recheck: Option<Duration>,
}

/// `scale(pod)`: the replicas of the pod's controller and its identity (uid), for budgets
/// counted against the controllers' scale (maxUnavailable, or a percentage minAvailable).
pub fn plan(
    pdb: &Value,
    pods: &[&Value],
    scale: impl Fn(&Value) -> Result<(String, i64), String>,
    now: Timestamp,
) -> Result<Plan, String> {
    let spec = &pdb["spec"];
    let (min, max) = (&spec["minAvailable"], &spec["maxUnavailable"]);
    let by_scale = || -> Result<i64, String> {
        let mut seen = std::collections::HashMap::new();
        for p in pods {
            let (uid, replicas) = scale(p)?;
            seen.insert(uid, replicas);
        }
        Ok(seen.values().sum())
    };
    let (expected, desired) = if !max.is_null() {
        let expected = by_scale()?;
        (expected, (expected - scaled(max, expected)?).max(0))
    } else if let Value::Number(_) = min {
        (pods.len() as i64, scaled(min, 0)?)
    } else if !min.is_null() {
        let expected = by_scale()?;
        (expected, scaled(min, expected)?)
    } else {
        (0, 0)
    };
    // Granted evictions whose pods have not gone yet, until they expire.
    let mut disrupted = Map::new();
    let mut recheck: Option<Duration> = None;
    let granted = pdb.pointer("/status/disruptedPods").and_then(Value::as_object);
    for (name, at) in granted.into_iter().flatten() {
        let Some(pod) = pods.iter().find(|p| meta(p, "name") == name) else { continue };
        if !pod["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let Some(t) = at.as_str().and_then(|t| t.parse::<Timestamp>().ok()) else { continue };
        let expires = t + jiff::SignedDuration::try_from(DELETION_TIMEOUT).unwrap_or_default();
        if expires <= now {
            continue;
        }
        let left = Duration::try_from(expires.duration_since(now)).unwrap_or_default();
        recheck = Some(recheck.map_or(left, |r| r.min(left)));
        disrupted.insert(name.clone(), at.clone());
    }
    let current_healthy = pods
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| !disrupted.contains_key(meta(p, "name")))
        .filter(|p| pod_ready(p))
        .count() as i64;
    let allowed = current_healthy - desired;
    let disruptions_allowed = if expected <= 0 || allowed <= 0 { 0 } else { allowed };
    Ok(Plan {
        expected,
        current_healthy,
        desired_healthy: desired,
        disruptions_allowed,
        disrupted,
        recheck,
    })
}

/// The replicas of the workload that controls `pod`: its StatefulSet, its ReplicaSet's
/// Deployment, or its ReplicaSet (Kubernetes' finders, in that order of meaning).
fn controller_scale(ctx: &Ctx, pod: &Value) -> Result<(String, i64), String> {
    let ns = meta(pod, "namespace");
    let missing = || format!("found no controllers for pod {:?}", meta(pod, "name"));
    let r = controller_ref(pod).ok_or_else(missing)?;
    let name = r["name"].as_str().unwrap_or_default();
    let replicas = |o: &Value| o.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
    let key = |n: &str| format!("{ns}/{n}");
    match r["kind"].as_str() {
        Some("StatefulSet") => {
            let s = ctx.inf("statefulsets").get(&key(name)).ok_or_else(missing)?;
            Ok((meta(&s, "uid").to_string(), replicas(&s)))
        }
        Some("ReplicaSet") => {
            let rs = ctx.inf("replicasets").get(&key(name)).ok_or_else(missing)?;
            if let Some(d) = controller_ref(&rs).filter(|d| d["kind"] == "Deployment") {
                let dn = d["name"].as_str().unwrap_or_default();
                let d = ctx.inf("deployments").get(&key(dn)).ok_or_else(missing)?;
                return Ok((meta(&d, "uid").to_string(), replicas(&d)));
            }
            Ok((meta(&rs, "uid").to_string(), replicas(&rs)))
        }
        _ => Err(missing()),
    }
}

fn condition(allowed: bool, generation: i64, old: &Value, message: &str) -> Value {
    let (status, reason) = match (allowed, message.is_empty()) {
        (_, false) => ("False", "SyncFailed"),
        (true, true) => ("True", "SufficientPods"),
        (false, true) => ("False", "InsufficientPods"),
    };
    let prev = old
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "DisruptionAllowed"));
    let since = match prev {
        Some(c) if c["status"] == status => c["lastTransitionTime"].clone(),
        _ => json!(Timestamp::now()
            .round(jiff::Unit::Second)
            .unwrap_or(Timestamp::now())
            .to_string()),
    };
    json!({"type": "DisruptionAllowed", "status": status, "reason": reason, "message": message,
        "observedGeneration": generation, "lastTransitionTime": since})
}

async fn reconcile(ctx: &Ctx, key: &str) -> Reconciled {
    let Some(pdb) = ctx.inf("poddisruptionbudgets").get(key) else { return Ok(None) };
    let ns = meta(&pdb, "namespace");
    let generation = pdb["metadata"]["generation"].as_i64().unwrap_or(0);
    let all = ctx.inf("pods").list_namespace(ns);
    let (pods, planned) = match selector(&pdb) {
        Ok(sel) => {
            let pods: Vec<&Value> = all
                .iter()
                .map(|p| p.as_ref())
                .filter(|p| sel.as_ref().is_some_and(|s| s.matches(&labels(p))))
                .collect();
            let planned = plan(&pdb, &pods, |p| controller_scale(ctx, p), Timestamp::now());
            (pods.len(), planned)
        }
        Err(e) => (0, Err(e)),
    };
    let mut status = pdb["status"].clone();
    if !status.is_object() {
        status = json!({});
    }
    let recheck = match &planned {
        Ok(p) => {
            status["expectedPods"] = json!(p.expected);
            status["currentHealthy"] = json!(p.current_healthy);
            status["desiredHealthy"] = json!(p.desired_healthy);
            status["disruptionsAllowed"] = json!(p.disruptions_allowed);
            match p.disrupted.is_empty() {
                true => drop(status.as_object_mut().map(|m| m.remove("disruptedPods"))),
                false => status["disruptedPods"] = Value::Object(p.disrupted.clone()),
            }
            status["conditions"] =
                json!([condition(p.disruptions_allowed > 0, generation, &pdb, "")]);
            p.recheck
        }
        Err(e) => {
            // Fail safe, as Kubernetes: nothing may be disrupted while the budget is unknown.
            tracing::warn!(pdb = key, pods, "disruption budget: {e}");
            status["disruptionsAllowed"] = json!(0);
            status["conditions"] = json!([condition(false, generation, &pdb, e)]);
            Some(Duration::from_secs(30))
        }
    };
    status["observedGeneration"] = json!(generation);
    if status != pdb["status"] {
        let mut new = (*pdb).clone();
        new["status"] = status;
        ctx.client.update_status("poddisruptionbudgets", ns, &new).await?;
    }
    Ok(recheck)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: bool, rs: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "d", "labels": {"app": "web"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": rs, "controller": true, "uid": rs}]},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
    }

    fn budget(spec: Value, disrupted: Value) -> Value {
        json!({"metadata": {"name": "b", "namespace": "d", "generation": 1}, "spec": spec,
            "status": {"disruptedPods": disrupted}})
    }

    #[test]
    fn counts_follow_the_disruption_controller() {
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let pods = [pod("a", true, "rs"), pod("b", true, "rs"), pod("c", false, "rs")];
        let refs: Vec<&Value> = pods.iter().collect();
        let scale = |_: &Value| Ok(("rs".to_string(), 4));
        // minAvailable 2 of the 2 ready pods: none may go.
        let p = plan(&budget(json!({"minAvailable": 2}), json!({})), &refs, scale, now).unwrap();
        assert_eq!((p.expected, p.current_healthy, p.desired_healthy), (3, 2, 2));
        assert_eq!(p.disruptions_allowed, 0);
        // maxUnavailable counts against the controller's 4 replicas: 4 - 1 = 3 must stay.
        let p = plan(&budget(json!({"maxUnavailable": 1}), json!({})), &refs, scale, now).unwrap();
        assert_eq!((p.expected, p.desired_healthy, p.disruptions_allowed), (4, 3, 0));
        // 50% of 4, rounded up, is 2: one of the two healthy pods may go.
        let p =
            plan(&budget(json!({"minAvailable": "50%"}), json!({})), &refs, scale, now).unwrap();
        assert_eq!((p.desired_healthy, p.disruptions_allowed), (2, 0));
        let p = plan(&budget(json!({"minAvailable": 1}), json!({})), &refs, scale, now).unwrap();
        assert_eq!(p.disruptions_allowed, 1);
        // A granted eviction counts the pod as gone until it expires.
        let granted = json!({"a": "2026-01-01T00:09:00Z", "b": "2026-01-01T00:01:00Z"});
        let p = plan(&budget(json!({"minAvailable": 1}), granted), &refs, scale, now).unwrap();
        assert_eq!((p.current_healthy, p.disruptions_allowed), (1, 0));
        assert_eq!(p.disrupted.keys().collect::<Vec<_>>(), ["a"], "b's grant expired");
        assert_eq!(p.recheck, Some(Duration::from_secs(60)));
        // Budgets by scale need each pod's controller.
        let orphan = |_: &Value| Err("found no controllers for pod \"a\"".to_string());
        assert!(plan(&budget(json!({"maxUnavailable": 1}), json!({})), &refs, orphan, now).is_err());
        // Neither field: nothing is expected and nothing may go.
        let p = plan(&budget(json!({}), json!({})), &refs, scale, now).unwrap();
        assert_eq!((p.expected, p.disruptions_allowed), (0, 0));
    }
}
