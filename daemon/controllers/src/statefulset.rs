//! StatefulSet controller: pods with stable names `<set>-<ordinal>`, hostname and subdomain
//! (`spec.serviceName`, for per-pod DNS through a headless Service's Endpoints). OrderedReady
//! creates ordinal i only once 0..i are Running and Ready and removes from the highest ordinal
//! down, one at a time; Parallel does both at once. RollingUpdate replaces pods of an old
//! template in reverse ordinal order, one at a time, down to `partition`.
//!
//! Templates are recorded as ControllerRevisions named `<set>-<hash>`, numbered in the order
//! they became the update revision (a rollback renumbers the old one as the newest); pods carry
//! the revision's name in `controller-revision-hash`. A pod below the partition that has to be
//! recreated gets the current revision's template, not the new one, as in Kubernetes.
//! Revisions no pod uses beyond `revisionHistoryLimit` (default 10) are deleted.
//!
//! Not here yet: volumeClaimTemplates (no PersistentVolumeClaims in the cluster yet).

use super::history::{
    history_of, label_revision, owned_revisions, prune_history, record_history, History, PodLabel,
    Revision, Revisions, HASH_LABEL,
};
use super::{enqueue_owners, enqueue_self, Ctx};
use anyhow::Context;
use flotilla_api::error::Reason;
use flotilla_client::runtime::{
    controller_uid, meta, owner_ref, pod_available, pod_phase, pod_ready, run_workers, terminating,
    Reconciled, WorkQueue,
};
use flotilla_client::DeleteParams;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

pub async fn run(ctx: Arc<Ctx>) {
    let queue = WorkQueue::new();
    enqueue_self(ctx.inf("statefulsets"), queue.clone());
    enqueue_owners(ctx.inf("pods"), "StatefulSet", queue.clone(), None, |_| {});
    enqueue_owners(ctx.inf("controllerrevisions"), "StatefulSet", queue.clone(), None, |_| {});
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

/// The set's revisions from the ControllerRevisions it owns (and, for pruning, its pods).
pub fn history(sts: &Value, owned: &[Arc<Value>], pods: &[Arc<Value>]) -> (Revisions, History) {
    history_of(sts, owned, pods, PodLabel::Name)
}

/// The revision a pod at `ordinal` is created from: below the partition of a rolling update,
/// the current one; otherwise the set's template.
pub fn revision_for(sts: &Value, revs: &Revisions, ordinal: i64) -> Revision {
    if rolling(sts) && ordinal < partition(sts) {
        revs.current.clone()
    } else {
        revs.update.clone()
    }
}

fn rolling(sts: &Value) -> bool {
    sts.pointer("/spec/updateStrategy/type").and_then(Value::as_str) != Some("OnDelete")
}

fn partition(sts: &Value) -> i64 {
    sts.pointer("/spec/updateStrategy/rollingUpdate/partition").and_then(Value::as_i64).unwrap_or(0)
}

pub fn pod_for(sts: &Value, ordinal: i64, revision: &Revision) -> Value {
    let name = format!("{}-{ordinal}", meta(sts, "name"));
    let t = &revision.template;
    let mut labels = t.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
    labels[HASH_LABEL] = json!(revision.name);
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

/// The sync as a pure function of the StatefulSet, its revisions and its pods.
pub fn plan(sts: &Value, revs: &Revisions, pods: &[Arc<Value>], now: jiff::Timestamp) -> Plan {
    let set = meta(sts, "name");
    let uid = meta(sts, "uid");
    let hash = &revs.update.name;
    let replicas = sts.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1).max(0);
    let parallel =
        sts.pointer("/spec/podManagementPolicy").and_then(Value::as_str) == Some("Parallel");
    let rolling = rolling(sts);
    let partition = partition(sts);
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
            .find(|p| label_revision(p) != Some(hash.as_str()))
        {
            steps.push(Step::Delete(meta(p, "name").into()));
        }
    }
    let live: Vec<&Arc<Value>> = by_ord.values().filter(|p| !terminating(p)).collect();
    let min_ready = sts.pointer("/spec/minReadySeconds").and_then(Value::as_i64).unwrap_or(0);
    let updated = live.iter().filter(|p| label_revision(p) == Some(hash.as_str())).count();
    // The rollout is complete once every pod is at the update revision.
    let current_rev = if updated == live.len() { hash } else { &revs.current.name };
    let current = live.iter().filter(|p| label_revision(p) == Some(current_rev.as_str())).count();
    let status = json!({
        "observedGeneration": sts.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
        "replicas": live.len(),
        "readyReplicas": live.iter().filter(|p| pod_ready(p)).count(),
        "availableReplicas": live.iter().filter(|p| pod_available(p, min_ready, now)).count(),
        "currentReplicas": current,
        "updatedReplicas": updated,
        "currentRevision": current_rev,
        "updateRevision": hash,
        "collisionCount": sts.pointer("/status/collisionCount").cloned().unwrap_or(json!(0)),
    });
    Plan { steps, status }
}

async fn reconcile(ctx: &Ctx, key: &str) -> Reconciled {
    let Some(sts) = ctx.inf("statefulsets").get(key) else { return Ok(None) };
    if terminating(&sts) {
        return Ok(None);
    }
    let (ns, set, uid) = (meta(&sts, "namespace"), meta(&sts, "name"), meta(&sts, "uid"));
    let c = &ctx.client;
    let pods = ctx.inf("pods").list_namespace(ns);
    let (revs, history) = history(&sts, &owned_revisions(ctx, &sts), &pods);
    record_history(ctx, ns, &history).await?;
    let plan = plan(&sts, &revs, &pods, jiff::Timestamp::now());
    for step in &plan.steps {
        match step {
            Step::Create(i) => {
                let pod = pod_for(&sts, *i, &revision_for(&sts, &revs, *i));
                match c.create("pods", ns, &pod).await {
                    Ok(_) => ctx.events.normal(
                        &sts,
                        "SuccessfulCreate",
                        format!("create Pod {set}-{i} in StatefulSet {set} successful"),
                    ),
                    // The cache has not shown it yet, or the old one is still terminating.
                    Err(e) if e.reason == Reason::AlreadyExists => {}
                    Err(e) => {
                        ctx.events.warning(
                            &sts,
                            "FailedCreate",
                            format!("create Pod {set}-{i} failed: {e}"),
                        );
                        return Err(e).context("creating a StatefulSet pod");
                    }
                }
            }
            Step::Delete(name) => {
                match c.delete("pods", ns, name, &DeleteParams::default()).await {
                    Ok(_) => ctx.events.normal(
                        &sts,
                        "SuccessfulDelete",
                        format!("delete Pod {name} in StatefulSet {set} successful"),
                    ),
                    Err(e) if e.reason == Reason::NotFound => {}
                    Err(e) => return Err(e).context("deleting a StatefulSet pod"),
                }
            }
        }
    }
    prune_history(ctx, ns, &history).await?;
    if sts.get("status").cloned().unwrap_or(json!({})) != plan.status {
        let patch = json!({"metadata": {"uid": uid}, "status": plan.status});
        if let Err(e) = c.patch("statefulsets", ns, set, &patch, false, true).await {
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
    use crate::deployment::template_hash;

    fn sts(replicas: i64, policy: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": "default", "uid": "sts-uid", "generation": 1},
            "spec": {"replicas": replicas, "serviceName": "db", "podManagementPolicy": policy,
                "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
    }

    fn with_image(s: &Value, image: &str) -> Value {
        let mut s = s.clone();
        s["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
        s
    }

    /// The set's revisions when nothing is recorded yet: current and update are its template.
    fn fresh(s: &Value) -> Revisions {
        history(s, &[], &[]).0
    }

    /// The ControllerRevision `history` would create for `s`, stored with `number`.
    fn recorded(s: &Value, number: i64) -> Arc<Value> {
        let mut cr = history(s, &[], &[]).1.create.expect("a revision to create");
        cr["revision"] = json!(number);
        cr["metadata"]["ownerReferences"][0]["uid"] = json!("sts-uid");
        Arc::new(cr)
    }

    fn pod(s: &Value, i: i64, ready: bool, rev: &Revision) -> Arc<Value> {
        let mut p = pod_for(s, i, rev);
        p["metadata"]["ownerReferences"][0]["uid"] = json!("sts-uid");
        p["status"] = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]});
        Arc::new(p)
    }

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::now()
    }

    #[test]
    fn ordered_ready_creates_one_ordinal_at_a_time() {
        let s = sts(3, "OrderedReady");
        let r = fresh(&s);
        assert_eq!(plan(&s, &r, &[], now()).steps, vec![Step::Create(0)]);
        assert!(
            plan(&s, &r, &[pod(&s, 0, false, &r.update)], now()).steps.is_empty(),
            "waits for db-0 to be Ready"
        );
        assert_eq!(
            plan(&s, &r, &[pod(&s, 0, true, &r.update)], now()).steps,
            vec![Step::Create(1)]
        );
        let p = pod_for(&s, 2, &r.update);
        assert_eq!(
            (
                p["metadata"]["name"].as_str(),
                p["spec"]["hostname"].as_str(),
                p["spec"]["subdomain"].as_str(),
                p["metadata"]["labels"][HASH_LABEL].as_str(),
            ),
            (Some("db-2"), Some("db-2"), Some("db"), Some(r.update.name.as_str()))
        );
    }

    #[test]
    fn parallel_creates_everything_and_scale_down_goes_from_the_top() {
        let s = sts(3, "Parallel");
        assert_eq!(
            plan(&s, &fresh(&s), &[], now()).steps,
            vec![Step::Create(0), Step::Create(1), Step::Create(2)]
        );
        let o = sts(1, "OrderedReady");
        let r = fresh(&o);
        let pods: Vec<Arc<Value>> = (0..3).map(|i| pod(&o, i, true, &r.update)).collect();
        assert_eq!(plan(&o, &r, &pods, now()).steps, vec![Step::Delete("db-2".into())]);
    }

    #[test]
    fn rolling_updates_go_in_reverse_ordinal_order_down_to_the_partition() {
        let old_set = sts(3, "OrderedReady");
        let mut s = with_image(&old_set, "new");
        let old = fresh(&old_set).update;
        let r = Revisions { current: old.clone(), update: fresh(&s).update };
        let pods: Vec<Arc<Value>> = (0..3).map(|i| pod(&old_set, i, true, &old)).collect();
        assert_eq!(plan(&s, &r, &pods, now()).steps, vec![Step::Delete("db-2".into())]);
        let mut pods2 = pods.clone();
        pods2[2] = pod(&s, 2, true, &r.update);
        assert_eq!(plan(&s, &r, &pods2, now()).steps, vec![Step::Delete("db-1".into())]);
        s["spec"]["updateStrategy"] =
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 2}});
        assert!(
            plan(&s, &r, &pods2, now()).steps.is_empty(),
            "ordinals below the partition keep their revision"
        );
        let st = plan(&s, &r, &pods2, now()).status;
        assert_eq!(
            (
                st["updatedReplicas"].as_i64(),
                st["currentReplicas"].as_i64(),
                st["readyReplicas"].as_i64()
            ),
            (Some(1), Some(2), Some(3))
        );
        assert_eq!(
            (st["currentRevision"].as_str(), st["updateRevision"].as_str()),
            (Some(old.name.as_str()), Some(r.update.name.as_str()))
        );
        // db-0 fails and is replaced: below the partition it comes back at the old template.
        assert_eq!(revision_for(&s, &r, 0), old);
        assert_eq!(revision_for(&s, &r, 2), r.update);
        let again = pod_for(&s, 0, &revision_for(&s, &r, 0));
        assert_eq!(again["spec"]["containers"][0]["image"], "i");
        assert_eq!(again["metadata"]["labels"][HASH_LABEL].as_str(), Some(old.name.as_str()));
        // Without a partition every pod is at the update revision at the end.
        s["spec"]["updateStrategy"] = json!({"type": "RollingUpdate"});
        let done: Vec<Arc<Value>> = (0..3).map(|i| pod(&s, i, true, &r.update)).collect();
        let st = plan(&s, &r, &done, now()).status;
        assert_eq!(st["currentRevision"].as_str(), Some(r.update.name.as_str()));
    }

    #[test]
    fn a_new_template_is_recorded_as_the_next_revision() {
        let a = sts(3, "OrderedReady");
        let (r, h) = history(&a, &[], &[]);
        let cr = h.create.as_ref().expect("the first revision is recorded");
        assert_eq!(
            (cr["revision"].as_i64(), cr["metadata"]["name"].as_str(), r.update.number),
            (Some(1), Some(r.update.name.as_str()), 1)
        );
        assert!(r.update.name.starts_with("db-"));
        assert_eq!(cr["data"]["spec"]["template"], a["spec"]["template"]);
        assert_eq!(r.current, r.update, "nothing older: current is the update revision");
        // Recorded already: nothing to write.
        assert_eq!(history(&a, &[recorded(&a, 1)], &[]).1, History::default());

        let mut b = with_image(&a, "new");
        b["status"] = json!({"currentRevision": r.update.name});
        let (r2, h2) = history(&b, &[recorded(&a, 1)], &[]);
        assert_eq!(h2.create.as_ref().and_then(|c| c["revision"].as_i64()), Some(2));
        assert_eq!((r2.current.number, r2.update.number), (1, 2));
        assert_eq!(r2.current.template, a["spec"]["template"]);
    }

    #[test]
    fn a_rollback_renumbers_the_old_revision_and_history_is_pruned() {
        let a = sts(3, "OrderedReady");
        let mut b = with_image(&a, "b");
        let name_b = fresh(&b).update.name;
        // Back to a's template while b is current.
        let mut back = a.clone();
        back["status"] = json!({"currentRevision": name_b});
        let (r, h) = history(&back, &[recorded(&a, 1), recorded(&b, 2)], &[]);
        assert_eq!(h.create, None);
        assert_eq!(h.renumber, Some((fresh(&a).update.name, 3)));
        assert_eq!((r.update.number, r.current.name.as_str()), (3, name_b.as_str()));

        // Five revisions with a limit of 1: the newest (update and current) is kept, as is the
        // one a pod still runs, and one more; the two oldest unused go.
        let sets: Vec<Value> = (1..=5).map(|i| with_image(&a, &format!("v{i}"))).collect();
        let owned: Vec<Arc<Value>> =
            sets.iter().enumerate().map(|(i, s)| recorded(s, i as i64 + 1)).collect();
        b = sets[4].clone();
        b["spec"]["revisionHistoryLimit"] = json!(1);
        let v2 = fresh(&sets[1]).update;
        let (_, h) = history(&b, &owned, &[pod(&sets[1], 0, true, &v2)]);
        assert_eq!(h.prune, vec![fresh(&sets[0]).update.name, fresh(&sets[2]).update.name]);

        // A DaemonSet's pods carry the bare hash: the same pod keeps the same revision.
        let mut daemon = (*pod(&sets[1], 0, true, &v2)).clone();
        let hash = v2.name.strip_prefix("db-").unwrap().to_string();
        daemon["metadata"]["labels"][HASH_LABEL] = json!(hash);
        let (_, h) = history_of(&b, &owned, &[Arc::new(daemon)], PodLabel::Hash);
        assert_eq!(h.prune, vec![fresh(&sets[0]).update.name, fresh(&sets[2]).update.name]);
        let (_, fresh_ds) = history_of(&sets[0], &[], &[], PodLabel::Hash);
        let cr = fresh_ds.create.unwrap();
        assert_eq!(
            cr["metadata"]["labels"][HASH_LABEL],
            json!(template_hash(&sets[0]["spec"]["template"]))
        );
    }
}
