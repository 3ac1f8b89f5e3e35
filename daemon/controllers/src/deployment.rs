//! Deployment controller: one ReplicaSet per pod template (named `<deployment>-<hash>`, the
//! hash also in a `pod-template-hash` label so ReplicaSets never share pods), rolled over by
//! RollingUpdate (maxSurge, maxUnavailable) or Recreate; revisions in the
//! `deployment.kubernetes.io/revision` annotation (a rollback makes an old ReplicaSet the new
//! one with the next revision), history trimmed to revisionHistoryLimit, and the Available and
//! Progressing conditions (with progressDeadlineSeconds).

use super::{enqueue_owners, enqueue_self, Ctx};
use anyhow::Context;
use flotilla_api::error::Reason;
use flotilla_client::runtime::{meta, owner_ref, run_workers, terminating, Reconciled, WorkQueue};
use flotilla_client::DeleteParams;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const HASH_LABEL: &str = "pod-template-hash";

pub async fn run(ctx: Arc<Ctx>) {
    let queue = WorkQueue::new();
    enqueue_self(ctx.inf("deployments"), queue.clone());
    enqueue_owners(ctx.inf("replicasets"), "Deployment", queue.clone(), None, |_| {});
    run_workers("deployment", queue, 2, move |key| {
        let ctx = ctx.clone();
        async move { reconcile(&ctx, &key).await }
    })
    .await
}

#[derive(Debug, Clone, PartialEq)]
/// A write to one of the Deployment's ReplicaSets.
pub enum Write {
    Create(Value),
    /// New spec.replicas, and a new revision annotation when it changes.
    Scale {
        name: String,
        replicas: i64,
        revision: Option<i64>,
    },
    Delete {
        name: String,
        uid: String,
    },
}

#[derive(Debug, Default)]
pub struct Plan {
    pub writes: Vec<Write>,
    pub status: Value,
    pub recheck: Option<Duration>,
    /// The new ReplicaSet's revision, which the Deployment carries in its own
    /// `deployment.kubernetes.io/revision` (kubectl's rollout undo patches that annotation).
    pub revision: Option<i64>,
}

fn int(v: &Value, ptr: &str, default: i64) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(default)
}

pub fn revision(rs: &Value) -> i64 {
    rs.pointer("/metadata/annotations")
        .and_then(|a| a.get(REVISION))
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Sorts object keys recursively, so the hash does not depend on field order.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(keys.into_iter().map(|k| (k.clone(), canonical(&m[k]))).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// Kubernetes' ComputeHash: FNV-1a (32 bit) of the template, its decimal form mapped onto
/// the consonants-and-digits alphabet that cannot spell words.
pub fn template_hash(template: &Value) -> String {
    let bytes = serde_json::to_vec(&canonical(template)).unwrap_or_default();
    let mut h: u32 = 0x811c9dc5;
    for b in bytes {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string().bytes().map(|b| ALPHABET[b as usize % ALPHABET.len()] as char).collect()
}

/// The ReplicaSet's template without the hash label equals the Deployment's.
fn template_matches(rs: &Value, d: &Value) -> bool {
    let mut t = rs.pointer("/spec/template").cloned().unwrap_or(Value::Null);
    if let Some(l) = t.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
        l.remove(HASH_LABEL);
        if l.is_empty() {
            t["metadata"].as_object_mut().map(|m| m.remove("labels"));
        }
    }
    canonical(&t) == canonical(d.pointer("/spec/template").unwrap_or(&Value::Null))
}

/// An int-or-percent of `replicas`, rounded up (surge) or down (unavailable).
pub fn resolve(
    v: Option<&Value>,
    replicas: i64,
    round_up: bool,
    default: &str,
) -> Result<i64, String> {
    let v = v.cloned().unwrap_or_else(|| json!(default));
    match &v {
        Value::Number(n) => n.as_i64().ok_or_else(|| format!("{v} is not an integer")),
        Value::String(s) if !s.ends_with('%') => {
            s.parse().map_err(|_| format!("{s:?} is not an integer or a percentage"))
        }
        Value::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("{s:?} is not an integer or a percentage"))?;
            let x = pct * replicas;
            Ok(if round_up { (x + 99) / 100 } else { x / 100 })
        }
        _ => Err(format!("{v} is not an integer or a percentage")),
    }
}

fn new_rs(d: &Value, hash: &str, revision: i64, replicas: i64) -> Value {
    let mut template = d.pointer("/spec/template").cloned().unwrap_or(json!({}));
    template["metadata"]["labels"][HASH_LABEL] = json!(hash);
    let mut selector = d.pointer("/spec/selector").cloned().unwrap_or(json!({}));
    selector["matchLabels"][HASH_LABEL] = json!(hash);
    let mut labels = template["metadata"]["labels"].clone();
    labels[HASH_LABEL] = json!(hash);
    json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": format!("{}-{hash}", meta(d, "name")), "namespace": meta(d, "namespace"),
            "labels": labels, "ownerReferences": [owner_ref(d)],
            "annotations": {REVISION: revision.to_string(),
                "deployment.kubernetes.io/desired-replicas": int(d, "/spec/replicas", 1).to_string()}},
        "spec": {"replicas": replicas, "minReadySeconds": int(d, "/spec/minReadySeconds", 0),
                 "selector": selector, "template": template}})
}

/// Sets a Deployment condition; `bump` refreshes lastUpdateTime even when nothing else changed
/// (progress was made).
fn set_cond(
    conds: &mut Vec<Value>,
    kind: &str,
    status: &str,
    reason: &str,
    msg: &str,
    now: &str,
    bump: bool,
) {
    if let Some(c) = conds.iter_mut().find(|c| c["type"] == kind) {
        let same = c["status"] == status && c["reason"] == reason && c["message"] == msg;
        if c["status"] != status {
            c["lastTransitionTime"] = json!(now);
        }
        if !same || bump {
            c["lastUpdateTime"] = json!(now);
        }
        c["status"] = json!(status);
        c["reason"] = json!(reason);
        c["message"] = json!(msg);
        return;
    }
    conds.push(json!({"type": kind, "status": status, "reason": reason, "message": msg,
                      "lastUpdateTime": now, "lastTransitionTime": now}));
}

/// The sync as a pure function of the Deployment, its ReplicaSets and the time.
pub fn plan(d: &Value, rses: &[Arc<Value>], now: jiff::Timestamp) -> Result<Plan, String> {
    let replicas = int(d, "/spec/replicas", 1).max(0);
    let hash = template_hash(d.pointer("/spec/template").unwrap_or(&Value::Null));
    let new_name = format!("{}-{hash}", meta(d, "name"));
    let new = rses
        .iter()
        .find(|r| template_matches(r, d))
        .or_else(|| rses.iter().find(|r| meta(r, "name") == new_name))
        .cloned();
    let mut olds: Vec<Arc<Value>> = rses
        .iter()
        .filter(|r| new.as_ref().is_none_or(|n| meta(n, "uid") != meta(r, "uid")))
        .cloned()
        .collect();
    olds.sort_by(|a, b| meta(a, "creationTimestamp").cmp(meta(b, "creationTimestamp")));
    let spec = |r: &Value| int(r, "/spec/replicas", 1);
    // A ReplicaSet just scaled down still reports the pods it is deleting as available until
    // its controller catches up; those pods already left the Endpoints. Counting at most
    // spec.replicas keeps a second scale-down from going below maxUnavailable meanwhile.
    let avail = |r: &Value| int(r, "/status/availableReplicas", 0).min(spec(r));
    let max_rev = rses.iter().map(|r| revision(r)).max().unwrap_or(0);
    let paused = d.pointer("/spec/paused").and_then(Value::as_bool).unwrap_or(false);
    let recreate = d.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("Recreate");
    let ru = d.pointer("/spec/strategy/rollingUpdate");
    let surge = if recreate {
        0
    } else {
        resolve(ru.and_then(|r| r.get("maxSurge")), replicas, true, "25%")?
    };
    let mut unavail = if recreate {
        0
    } else {
        resolve(ru.and_then(|r| r.get("maxUnavailable")), replicas, false, "25%")?
    };
    if surge == 0 && unavail == 0 && !recreate {
        unavail = 1;
    }
    let min_avail = replicas - unavail;

    let mut writes = Vec::new();
    let new_spec = new.as_ref().map(|n| spec(n)).unwrap_or(0);
    let mut old_planned: Vec<i64> = olds.iter().map(|r| spec(r)).collect();
    let olds_scaled = old_planned.iter().all(|s| *s == 0);
    let mut target_new = new_spec;
    let mut recheck = None;
    if paused {
        // Only a scale: the template does not roll while paused.
        if new.is_some() && olds_scaled {
            target_new = replicas;
        }
    } else if olds_scaled {
        // No rollout in flight: the new ReplicaSet simply has the desired size (or, for
        // Recreate, once the old pods are gone).
        let old_pods: i64 = olds.iter().map(|r| int(r, "/status/replicas", 0)).sum();
        if recreate && old_pods > 0 {
            recheck = Some(Duration::from_secs(1));
        } else {
            target_new = replicas;
        }
    } else if recreate {
        old_planned.iter_mut().for_each(|s| *s = 0);
    } else {
        let total: i64 = old_planned.iter().sum::<i64>() + new_spec;
        if new_spec < replicas {
            let allowed = replicas + surge - total;
            if allowed > 0 {
                target_new = replicas.min(new_spec + allowed);
            }
        } else {
            target_new = replicas;
        }
        let new_unavail = new_spec - new.as_ref().map(|n| avail(n)).unwrap_or(0);
        let mut max_down = total - min_avail - new_unavail;
        if max_down > 0 {
            // Unhealthy old replicas go first: removing them costs no availability.
            for (i, r) in olds.iter().enumerate() {
                let s = (old_planned[i] - avail(r)).max(0).min(max_down);
                old_planned[i] -= s;
                max_down -= s;
            }
            let avail_total: i64 = rses.iter().map(|r| avail(r)).sum();
            let mut can = avail_total - min_avail;
            for p in old_planned.iter_mut() {
                if can <= 0 {
                    break;
                }
                let s = (*p).min(can);
                *p -= s;
                can -= s;
            }
        }
    }
    let mut new_revision = None;
    match &new {
        None if !paused => {
            new_revision = Some(max_rev + 1);
            writes.push(Write::Create(new_rs(d, &hash, max_rev + 1, target_new)))
        }
        None => {}
        Some(n) => {
            // A template seen before (a rollback) becomes the newest revision again.
            let rev =
                (revision(n) < max_rev || revision(n) == 0).then_some(max_rev.max(revision(n)) + 1);
            let rev = if paused { None } else { rev };
            new_revision = Some(rev.unwrap_or(revision(n)));
            if target_new != new_spec || rev.is_some() {
                writes.push(Write::Scale {
                    name: meta(n, "name").into(),
                    replicas: target_new,
                    revision: rev,
                });
            }
        }
    }
    for (r, p) in olds.iter().zip(&old_planned) {
        if *p != spec(r) {
            writes.push(Write::Scale {
                name: meta(r, "name").into(),
                replicas: *p,
                revision: None,
            });
        }
    }
    // History: scaled-down old ReplicaSets beyond revisionHistoryLimit, oldest first.
    let limit = int(d, "/spec/revisionHistoryLimit", 10).max(0) as usize;
    let idle: Vec<&Arc<Value>> = olds
        .iter()
        .zip(&old_planned)
        .filter(|(r, p)| **p == 0 && spec(r) == 0 && int(r, "/status/replicas", 0) == 0)
        .map(|(r, _)| r)
        .collect();
    if idle.len() > limit {
        for r in &idle[..idle.len() - limit] {
            writes.push(Write::Delete { name: meta(r, "name").into(), uid: meta(r, "uid").into() });
        }
    }

    // Status from what the ReplicaSets report.
    let sum = |p: &str| rses.iter().map(|r| int(r, p, 0)).sum::<i64>();
    let updated = new.as_ref().map(|n| int(n, "/status/replicas", 0)).unwrap_or(0);
    let available = sum("/status/availableReplicas");
    let now_s = jiff::Timestamp::from_second(now.as_second()).unwrap_or(now).to_string();
    let mut conds: Vec<Value> =
        d.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    if available >= min_avail {
        set_cond(
            &mut conds,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            &now_s,
            false,
        );
    } else {
        set_cond(
            &mut conds,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
            &now_s,
            false,
        );
    }
    let rs_name = new.as_ref().map(|n| meta(n, "name").to_string()).unwrap_or(new_name);
    let complete = updated == replicas
        && int(new.as_deref().unwrap_or(&Value::Null), "/status/availableReplicas", 0) >= replicas
        && sum("/status/replicas") == replicas
        && olds_scaled
        && new_spec == replicas;
    let deadline = int(d, "/spec/progressDeadlineSeconds", 600);
    let progressing = conds.iter().find(|c| c["type"] == "Progressing").cloned();
    if paused {
        set_cond(
            &mut conds,
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused",
            &now_s,
            false,
        );
    } else if complete {
        set_cond(
            &mut conds,
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            &format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            &now_s,
            false,
        );
    } else if !writes.is_empty()
        || progressing.as_ref().is_none_or(|c| {
            c["reason"] == "DeploymentPaused" || c["reason"] == "NewReplicaSetAvailable"
        })
    {
        set_cond(
            &mut conds,
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            &format!("ReplicaSet \"{rs_name}\" is progressing."),
            &now_s,
            !writes.is_empty(),
        );
        recheck = recheck.or(Some(Duration::from_secs(5)));
    } else {
        let last = progressing
            .as_ref()
            .and_then(|c| c["lastUpdateTime"].as_str())
            .and_then(|t| t.parse::<jiff::Timestamp>().ok());
        if last.is_some_and(|t| t + jiff::SignedDuration::from_secs(deadline) < now) {
            set_cond(
                &mut conds,
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                &format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                &now_s,
                false,
            );
        } else {
            recheck = recheck.or(Some(Duration::from_secs(5)));
        }
    }
    let status = json!({
        "observedGeneration": int(d, "/metadata/generation", 1),
        "replicas": sum("/status/replicas"),
        "updatedReplicas": updated,
        "readyReplicas": sum("/status/readyReplicas"),
        "availableReplicas": available,
        "unavailableReplicas": (replicas - available).max(0),
        "conditions": conds,
    });
    Ok(Plan { writes, status, recheck, revision: new_revision })
}

async fn reconcile(ctx: &Ctx, key: &str) -> Reconciled {
    let Some(d) = ctx.inf("deployments").get(key) else { return Ok(None) };
    if terminating(&d) {
        return Ok(None);
    }
    let ns = meta(&d, "namespace").to_string();
    let uid = meta(&d, "uid");
    let rses: Vec<Arc<Value>> = ctx
        .inf("replicasets")
        .list_namespace(&ns)
        .into_iter()
        .filter(|r| flotilla_client::runtime::controller_uid(r) == uid && !terminating(r))
        .collect();
    let plan = match plan(&d, &rses, jiff::Timestamp::now()) {
        Ok(p) => p,
        Err(e) => {
            ctx.events.warning(&d, "InvalidSpec", e);
            return Ok(None);
        }
    };
    let c = &ctx.client;
    for w in &plan.writes {
        match w {
            Write::Create(rs) => {
                match c.create("replicasets", &ns, rs).await {
                    Ok(_) => {}
                    // Created by an earlier sync the cache has not shown yet.
                    Err(e) if e.reason == Reason::AlreadyExists => {
                        return Ok(Some(Duration::from_millis(200)))
                    }
                    Err(e) => return Err(e).context("creating the new ReplicaSet"),
                }
                ctx.events.normal(
                    &d,
                    "ScalingReplicaSet",
                    format!(
                        "Scaled up replica set {} to {}",
                        meta(rs, "name"),
                        rs["spec"]["replicas"]
                    ),
                );
            }
            Write::Scale { name, replicas, revision } => {
                let old = rses
                    .iter()
                    .find(|r| meta(r, "name") == name)
                    .map(|r| int(r, "/spec/replicas", 1));
                let mut patch = json!({"spec": {"replicas": replicas},
                    "metadata": {"annotations": {"deployment.kubernetes.io/desired-replicas": int(&d, "/spec/replicas", 1).to_string()}}});
                if let Some(r) = revision {
                    patch["metadata"]["annotations"][REVISION] = json!(r.to_string());
                }
                c.patch("replicasets", &ns, name, &patch, false, false)
                    .await
                    .context("scaling a ReplicaSet")?;
                if old != Some(*replicas) {
                    let dir = if old.unwrap_or(0) < *replicas { "up" } else { "down" };
                    ctx.events.normal(
                        &d,
                        "ScalingReplicaSet",
                        format!(
                            "Scaled {dir} replica set {name} from {} to {replicas}",
                            old.unwrap_or(0)
                        ),
                    );
                }
            }
            Write::Delete { name, uid } => {
                let dp = DeleteParams { precondition_uid: uid.clone(), ..Default::default() };
                match c.delete("replicasets", &ns, name, &dp).await {
                    Ok(_) => {}
                    Err(e) if e.reason == Reason::NotFound => {}
                    Err(e) => return Err(e).context("deleting an old ReplicaSet"),
                }
            }
        }
    }
    if let Some(r) = plan.revision.filter(|r| *r > 0 && *r != revision(&d)) {
        let patch = json!({"metadata": {"uid": uid, "annotations": {REVISION: r.to_string()}}});
        if let Err(e) = c.patch("deployments", &ns, meta(&d, "name"), &patch, false, false).await {
            if e.reason != Reason::NotFound {
                return Err(e).context("annotating the Deployment's revision");
            }
        }
    }
    let cur = d.get("status").cloned().unwrap_or(json!({}));
    let differs = [
        "observedGeneration",
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
        "unavailableReplicas",
    ]
    .iter()
    .any(|k| cur[*k].as_i64().unwrap_or(0) != plan.status[*k].as_i64().unwrap_or(0))
        || cur["conditions"] != plan.status["conditions"];
    if differs {
        let patch = json!({"metadata": {"uid": uid}, "status": plan.status});
        if let Err(e) = c.patch("deployments", &ns, meta(&d, "name"), &patch, false, true).await {
            if e.reason != Reason::NotFound {
                return Err(e).context("updating the Deployment status");
            }
        }
    }
    Ok(plan.recheck)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": 1},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "c", "image": image}]}}}})
    }

    /// A ReplicaSet as the controller would have made it, with `ready` available pods.
    fn rs_of(d: &Value, rev: i64, spec: i64, ready: i64, created: &str) -> Arc<Value> {
        let hash = template_hash(&d["spec"]["template"]);
        let mut r = new_rs(d, &hash, rev, spec);
        r["metadata"]["uid"] = json!(format!("rs-{hash}"));
        r["metadata"]["creationTimestamp"] = json!(created);
        r["status"] = json!({"replicas": spec.max(ready), "readyReplicas": ready, "availableReplicas": ready});
        Arc::new(r)
    }

    fn replicas_of(p: &Plan, name_has: &str) -> Option<i64> {
        p.writes.iter().find_map(|w| match w {
            Write::Scale { name, replicas, .. } if name.contains(name_has) => Some(*replicas),
            Write::Create(r) if meta(r, "name").contains(name_has) => {
                r["spec"]["replicas"].as_i64()
            }
            _ => None,
        })
    }

    #[test]
    fn the_hash_is_stable_and_uses_the_safe_alphabet() {
        let d = deploy(3, "a");
        assert_eq!(
            template_hash(&d["spec"]["template"]),
            template_hash(&canonical(&d["spec"]["template"]))
        );
        assert_ne!(
            template_hash(&d["spec"]["template"]),
            template_hash(&deploy(3, "b")["spec"]["template"])
        );
        assert!(template_hash(&d["spec"]["template"])
            .chars()
            .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }

    #[test]
    fn a_new_deployment_creates_its_replicaset_at_full_size() {
        let d = deploy(3, "a");
        let p = plan(&d, &[], jiff::Timestamp::now()).unwrap();
        match &p.writes[..] {
            [Write::Create(rs)] => {
                assert_eq!(rs["spec"]["replicas"], 3);
                assert_eq!(rs["metadata"]["annotations"][REVISION], "1");
                assert_eq!(p.revision, Some(1));
                let hash = rs["metadata"]["labels"][HASH_LABEL].as_str().unwrap();
                assert_eq!(rs["spec"]["selector"]["matchLabels"][HASH_LABEL], hash);
                assert_eq!(rs["spec"]["template"]["metadata"]["labels"][HASH_LABEL], hash);
            }
            w => panic!("unexpected writes {w:?}"),
        }
    }

    #[test]
    fn a_rolling_update_with_max_unavailable_zero_never_drops_below_the_replicas() {
        let (v1, v2) = (deploy(3, "a"), deploy(3, "b"));
        let now = jiff::Timestamp::now();
        // Step 1: surge one new replica; nothing old goes yet.
        let old = rs_of(&v1, 1, 3, 3, "2020-01-01T00:00:00Z");
        let p = plan(&v2, std::slice::from_ref(&old), now).unwrap();
        assert_eq!(replicas_of(&p, &template_hash(&v2["spec"]["template"])), Some(1));
        assert_eq!(replicas_of(&p, &template_hash(&v1["spec"]["template"])), None);
        // Step 2: the new replica is not available yet: hold.
        let new = rs_of(&v2, 2, 1, 0, "2020-01-02T00:00:00Z");
        let p = plan(&v2, &[old.clone(), new], now).unwrap();
        assert!(p.writes.is_empty(), "{:?}", p.writes);
        // Step 3: it is available: one old replica goes.
        let new = rs_of(&v2, 2, 1, 1, "2020-01-02T00:00:00Z");
        let p = plan(&v2, &[old, new], now).unwrap();
        assert_eq!(replicas_of(&p, &template_hash(&v1["spec"]["template"])), Some(2));
        // Done: old at 0, new at 3 and available: complete.
        let old = rs_of(&v1, 1, 0, 0, "2020-01-01T00:00:00Z");
        let new = rs_of(&v2, 2, 3, 3, "2020-01-02T00:00:00Z");
        let p = plan(&v2, &[old, new], now).unwrap();
        assert!(p.writes.is_empty());
        let prog = p.status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Progressing")
            .unwrap();
        assert_eq!(prog["reason"], "NewReplicaSetAvailable");
        assert_eq!(p.status["updatedReplicas"], 3);
    }

    #[test]
    fn a_replicaset_still_reporting_deleted_pods_does_not_allow_a_second_scale_down() {
        let (va, vb, vnew) = (deploy(2, "a"), deploy(2, "b"), deploy(2, "c"));
        // Old A was just scaled 2 → 1 but still reports 2 available: counting them would allow
        // scaling both old sets to 0 and leave 1 available pod of the 2 required.
        let mut a = (*rs_of(&va, 1, 1, 1, "2020-01-01T00:00:00Z")).clone();
        a["status"]["availableReplicas"] = json!(2);
        let b = rs_of(&vb, 2, 1, 1, "2020-01-02T00:00:00Z");
        let new = rs_of(&vnew, 3, 1, 1, "2020-01-03T00:00:00Z");
        let p = plan(&vnew, &[Arc::new(a), b, new], jiff::Timestamp::now()).unwrap();
        let downs =
            p.writes.iter().filter(|w| matches!(w, Write::Scale { replicas: 0, .. })).count();
        assert_eq!(downs, 1, "{:?}", p.writes);
    }

    #[test]
    fn recreate_scales_old_to_zero_before_the_new_one_starts() {
        let mut v1 = deploy(2, "a");
        v1["spec"]["strategy"] = json!({"type": "Recreate"});
        let mut v2 = v1.clone();
        v2["spec"]["template"]["spec"]["containers"][0]["image"] = json!("b");
        let old = rs_of(&v1, 1, 2, 2, "2020-01-01T00:00:00Z");
        let p = plan(&v2, std::slice::from_ref(&old), jiff::Timestamp::now()).unwrap();
        assert_eq!(replicas_of(&p, &template_hash(&v1["spec"]["template"])), Some(0));
        assert_eq!(replicas_of(&p, &template_hash(&v2["spec"]["template"])), Some(0));
    }

    #[test]
    fn rolling_back_reuses_the_old_replicaset_with_the_next_revision() {
        let (v1, v2) = (deploy(2, "a"), deploy(2, "b"));
        let old = rs_of(&v1, 1, 0, 0, "2020-01-01T00:00:00Z");
        let cur = rs_of(&v2, 2, 2, 2, "2020-01-02T00:00:00Z");
        let p = plan(&v1, &[old, cur], jiff::Timestamp::now()).unwrap();
        let w =
            p.writes.iter().find(|w| matches!(w, Write::Scale { revision: Some(_), .. })).unwrap();
        assert_eq!(
            *w,
            Write::Scale {
                name: format!("web-{}", template_hash(&v1["spec"]["template"])),
                replicas: 1,
                revision: Some(3)
            }
        );
        // The Deployment's own annotation follows (kubectl rollout undo patches it).
        assert_eq!(p.revision, Some(3));
    }

    #[test]
    fn history_beyond_the_limit_is_deleted_oldest_first() {
        let mut d = deploy(1, "z");
        d["spec"]["revisionHistoryLimit"] = json!(1);
        let mut rses: Vec<Arc<Value>> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, img)| {
                rs_of(&deploy(1, img), i as i64 + 1, 0, 0, &format!("2020-01-0{}T00:00:00Z", i + 1))
            })
            .collect();
        rses.push(rs_of(&d, 4, 1, 1, "2020-01-05T00:00:00Z"));
        let p = plan(&d, &rses, jiff::Timestamp::now()).unwrap();
        let deleted: Vec<&String> = p
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::Delete { name, .. } => Some(name),
                _ => None,
            })
            .collect();
        assert_eq!(deleted.len(), 2);
        assert!(deleted[0].ends_with(&template_hash(&deploy(1, "a")["spec"]["template"])));
    }

    #[test]
    fn percentages_round_like_kubernetes() {
        assert_eq!(resolve(Some(&json!("25%")), 3, true, "25%"), Ok(1));
        assert_eq!(resolve(Some(&json!("25%")), 3, false, "25%"), Ok(0));
        assert_eq!(resolve(None, 10, false, "25%"), Ok(2));
        assert!(resolve(Some(&json!("x")), 3, true, "25%").is_err());
    }
}
