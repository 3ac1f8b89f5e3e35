//! Job controller: runs pods until `completions` succeed (or, with no completions, until one
//! succeeds and none is left running), at most `parallelism` at a time; failures count toward
//! `backoffLimit` (restarts too, with restartPolicy OnFailure) and recreation backs off
//! exponentially (10 s doubling, up to 6 min); `activeDeadlineSeconds` ends it; suspend stops
//! its pods; the Complete or Failed condition is final; `ttlSecondsAfterFinished` deletes it.

use super::{enqueue_owners, enqueue_self, Ctx};
use anyhow::Context;
use flotilla_api::error::Reason;
use flotilla_client::runtime::rfc3339_seconds as ts;
use flotilla_client::runtime::{
    controller_uid, meta, pod_active, pod_phase, pod_ready, run_workers, terminating, Expectations,
    Reconciled, WorkQueue,
};
use flotilla_client::{object_key, DeleteParams};
use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub async fn run(ctx: Arc<Ctx>) {
    let queue = WorkQueue::new();
    let exp = Arc::new(Expectations::default());
    enqueue_self(ctx.inf("jobs"), queue.clone());
    enqueue_owners(ctx.inf("pods"), "Job", queue.clone(), Some(exp.clone()), |_| {});
    run_workers("job", queue, 2, move |key| {
        let (ctx, exp) = (ctx.clone(), exp.clone());
        async move { reconcile(&ctx, &exp, &key).await }
    })
    .await
}

fn int(v: &Value, ptr: &str) -> Option<i64> {
    v.pointer(ptr).and_then(Value::as_i64)
}

fn time(v: &Value, ptr: &str) -> Option<Timestamp> {
    v.pointer(ptr).and_then(Value::as_str).and_then(|s| s.parse().ok())
}

/// The Job's final condition, if it has one.
pub fn finished(job: &Value) -> Option<&str> {
    job.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
        .and_then(|c| c["type"].as_str())
}

#[derive(Debug, Default)]
pub struct Plan {
    pub create: usize,
    pub delete: Vec<Arc<Value>>,
    pub status: Value,
    /// (condition type, reason, message) reached in this sync.
    pub finish: Option<(&'static str, &'static str, String)>,
    pub delete_job: bool,
    pub recheck: Option<Duration>,
}

/// The sync as a pure function of the Job, its pods and the time.
pub fn plan(job: &Value, pods: &[Arc<Value>], now: Timestamp) -> Plan {
    let uid = meta(job, "uid");
    let owned: Vec<&Arc<Value>> = pods.iter().filter(|p| controller_uid(p) == uid).collect();
    let active: Vec<Arc<Value>> =
        owned.iter().filter(|p| pod_active(p)).map(|p| (*p).clone()).collect();
    let succeeded = owned.iter().filter(|p| pod_phase(p) == "Succeeded").count() as i64;
    let failed_pods: Vec<&&Arc<Value>> =
        owned.iter().filter(|p| pod_phase(p) == "Failed").collect();
    let on_failure = job.pointer("/spec/template/spec/restartPolicy").and_then(Value::as_str)
        == Some("OnFailure");
    let restarts: i64 = if on_failure {
        active
            .iter()
            .flat_map(|p| {
                p.pointer("/status/containerStatuses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
            })
            .map(|c| c["restartCount"].as_i64().unwrap_or(0))
            .sum()
    } else {
        0
    };
    let failed = failed_pods.len() as i64 + restarts;
    let mut p = Plan::default();
    let mut status = job.get("status").cloned().unwrap_or(json!({}));
    status["active"] = json!(active.len());
    status["succeeded"] = json!(succeeded);
    status["failed"] = json!(failed);
    status["ready"] = json!(active.iter().filter(|p| pod_ready(p)).count());

    if let Some(done) = finished(job) {
        // Final: only the time-to-live is left.
        if let Some(ttl) = int(job, "/spec/ttlSecondsAfterFinished") {
            let at = time(job, "/status/completionTime")
                .or_else(|| {
                    job.pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .and_then(|cs| cs.iter().find(|c| c["type"] == done))
                        .and_then(|c| c["lastTransitionTime"].as_str())
                        .and_then(|s| s.parse().ok())
                })
                .unwrap_or(now)
                + SignedDuration::from_secs(ttl);
            if at <= now {
                p.delete_job = true;
            } else {
                p.recheck = Some(at.duration_since(now).unsigned_abs());
            }
        }
        p.delete = active;
        p.status = status;
        return p;
    }
    let suspended = job.pointer("/spec/suspend").and_then(Value::as_bool).unwrap_or(false);
    if suspended {
        p.delete = active;
        status["active"] = json!(0);
        p.status = status;
        return p;
    }
    let start = time(job, "/status/startTime").unwrap_or(now);
    if status.get("startTime").is_none_or(|s| s.is_null()) {
        status["startTime"] = json!(ts(now));
    }
    let backoff_limit = int(job, "/spec/backoffLimit").unwrap_or(6);
    let completions = int(job, "/spec/completions");
    let parallelism = int(job, "/spec/parallelism").unwrap_or(1).max(0);
    let deadline =
        int(job, "/spec/activeDeadlineSeconds").map(|s| start + SignedDuration::from_secs(s));
    let complete = match completions {
        Some(c) => succeeded >= c,
        None => succeeded > 0 && active.is_empty(),
    };
    if complete {
        p.finish = Some(("Complete", "", String::new()));
        status["completionTime"] = json!(ts(now));
        p.delete = active;
    } else if failed > backoff_limit {
        p.finish = Some((
            "Failed",
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit".into(),
        ));
        p.delete = active;
    } else if deadline.is_some_and(|d| d <= now) {
        p.finish = Some((
            "Failed",
            "DeadlineExceeded",
            "Job was active longer than specified deadline".into(),
        ));
        p.delete = active;
    } else {
        let want = match completions {
            Some(c) => parallelism.min(c - succeeded),
            None if succeeded > 0 => 0,
            None => parallelism,
        };
        let have = active.len() as i64;
        if want > have {
            // Back off after failures: 10 s doubling per failure, capped at 6 minutes.
            let last_failure = failed_pods
                .iter()
                .flat_map(|p| {
                    p.pointer("/status/containerStatuses")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                })
                .filter_map(|c| c.pointer("/state/terminated/finishedAt").and_then(Value::as_str))
                .filter_map(|s| s.parse::<Timestamp>().ok())
                .max();
            let delay = if failed > 0 {
                Duration::from_secs(10u64 << (failed - 1).min(6)).min(Duration::from_secs(360))
            } else {
                Duration::ZERO
            };
            match last_failure.map(|t| t + SignedDuration::try_from(delay).unwrap_or_default()) {
                Some(at) if at > now => p.recheck = Some(at.duration_since(now).unsigned_abs()),
                _ => p.create = (want - have) as usize,
            }
        } else if want < have {
            let mut extra = active.clone();
            extra.sort_by(|a, b| crate::replicaset::deletion_cmp(a, b));
            p.delete = extra[..(have - want) as usize].to_vec();
        }
        if let Some(d) = deadline {
            let left = d.duration_since(now).unsigned_abs();
            p.recheck = Some(p.recheck.map_or(left, |r| r.min(left)));
        }
    }
    p.status = status;
    p
}

async fn reconcile(ctx: &Ctx, exp: &Expectations, key: &str) -> Reconciled {
    let Some(job) = ctx.inf("jobs").get(key) else {
        exp.forget(key);
        return Ok(None);
    };
    if terminating(&job) {
        return Ok(None);
    }
    let ns = meta(&job, "namespace").to_string();
    let name = meta(&job, "name").to_string();
    let c = &ctx.client;
    let pods = ctx.inf("pods").list_namespace(&ns);
    let mut plan = plan(&job, &pods, Timestamp::now());
    if plan.delete_job {
        let dp = DeleteParams {
            precondition_uid: meta(&job, "uid").into(),
            propagation_policy: "Background".into(),
            ..Default::default()
        };
        return match c.delete("jobs", &ns, &name, &dp).await {
            Ok(_) => Ok(None),
            Err(e) if matches!(e.reason, Reason::NotFound | Reason::Conflict) => Ok(None),
            Err(e) => Err(e).context("deleting a finished Job (ttlSecondsAfterFinished)"),
        };
    }
    if !exp.satisfied(key) {
        plan.create = 0;
        plan.delete.clear();
    }
    if plan.create > 0 {
        exp.expect(key, plan.create, []);
        let pod = super::replicaset::pod_from_template(&job);
        let results =
            futures::future::join_all((0..plan.create).map(|_| c.create("pods", &ns, &pod))).await;
        let mut err = None;
        for r in results {
            if let Err(e) = r {
                exp.created(key);
                err.get_or_insert(e);
            }
        }
        if let Some(e) = err {
            ctx.events.warning(&job, "FailedCreate", format!("Error creating: {e}"));
            return Err(e).context("creating Job pods");
        }
        ctx.events.normal(&job, "SuccessfulCreate", format!("Created {} pod(s)", plan.create));
    }
    if !plan.delete.is_empty() {
        exp.expect(key, 0, plan.delete.iter().map(|p| object_key(p)));
        for p in &plan.delete {
            let dp = DeleteParams { precondition_uid: meta(p, "uid").into(), ..Default::default() };
            if let Err(e) = c.delete("pods", &ns, meta(p, "name"), &dp).await {
                exp.deleted(key, &object_key(p));
                if !matches!(e.reason, Reason::NotFound | Reason::Conflict) {
                    return Err(e).context("deleting Job pods");
                }
            }
        }
    }
    let mut status = plan.status.clone();
    if let Some((kind, reason, msg)) = &plan.finish {
        let mut conds: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
        let now = ts(Timestamp::now());
        conds.push(json!({"type": kind, "status": "True", "reason": reason, "message": msg,
                          "lastProbeTime": now, "lastTransitionTime": now}));
        status["conditions"] = json!(conds);
        if *kind == "Complete" {
            ctx.events.normal(&job, "Completed", "Job completed");
        } else {
            ctx.events.warning(&job, reason, msg.clone());
        }
    }
    if job.get("status").cloned().unwrap_or(json!({})) != status {
        let patch = json!({"metadata": {"uid": meta(&job, "uid")}, "status": status});
        if let Err(e) = c.patch("jobs", &ns, &name, &patch, false, true).await {
            if e.reason != Reason::NotFound {
                return Err(e).context("updating the Job status");
            }
        }
    }
    if plan.finish.is_some() && int(&job, "/spec/ttlSecondsAfterFinished").is_some() {
        return Ok(Some(Duration::from_millis(200)));
    }
    Ok(plan.recheck)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(spec: Value) -> Value {
        let mut s = json!({"completions": 3, "parallelism": 2, "backoffLimit": 1,
            "template": {"spec": {"restartPolicy": "Never", "containers": []}}});
        if let (Some(o), Some(e)) = (s.as_object_mut(), spec.as_object()) {
            o.extend(e.clone());
        }
        json!({"metadata": {"name": "j", "namespace": "default", "uid": "job-uid"}, "spec": s, "status": {}})
    }

    fn pod(name: &str, phase: &str) -> Arc<Value> {
        Arc::new(json!({"metadata": {"name": name, "namespace": "default", "uid": name,
            "ownerReferences": [{"kind": "Job", "name": "j", "uid": "job-uid", "controller": true}]},
            "status": {"phase": phase, "containerStatuses": [{"state": {"terminated": {"finishedAt": "2020-01-01T00:00:00Z"}}}]}}))
    }

    #[test]
    fn a_job_runs_parallelism_pods_until_completions_succeed() {
        let now = Timestamp::now();
        let p = plan(&job(json!({})), &[], now);
        assert_eq!(p.create, 2);
        assert!(p.status["startTime"].is_string());
        let p = plan(&job(json!({})), &[pod("a", "Succeeded"), pod("b", "Running")], now);
        assert_eq!(p.create, 1, "one more to reach 3 with 2 at a time");
        let p = plan(
            &job(json!({})),
            &[pod("a", "Succeeded"), pod("b", "Succeeded"), pod("c", "Succeeded")],
            now,
        );
        assert_eq!(p.finish.map(|f| f.0), Some("Complete"));
        assert!(p.status["completionTime"].is_string());
    }

    #[test]
    fn failures_beyond_the_backoff_limit_fail_the_job() {
        let p = plan(
            &job(json!({})),
            &[pod("a", "Failed"), pod("b", "Failed"), pod("c", "Running")],
            Timestamp::now(),
        );
        assert_eq!(p.finish.as_ref().map(|f| f.1), Some("BackoffLimitExceeded"));
        assert_eq!(p.delete.len(), 1, "the running pod is stopped");
    }

    #[test]
    fn recreation_after_a_failure_backs_off() {
        let failed_at: Timestamp = "2020-01-01T00:00:00Z".parse().unwrap();
        let p = plan(
            &job(json!({"parallelism": 1})),
            &[pod("a", "Failed")],
            failed_at + SignedDuration::from_secs(3),
        );
        assert_eq!(p.create, 0);
        assert_eq!(p.recheck, Some(Duration::from_secs(7)));
        let p = plan(
            &job(json!({"parallelism": 1})),
            &[pod("a", "Failed")],
            failed_at + SignedDuration::from_secs(11),
        );
        assert_eq!(p.create, 1);
    }

    #[test]
    fn the_active_deadline_fails_the_job_and_ttl_deletes_it_once_finished() {
        let mut j = job(json!({"activeDeadlineSeconds": 5, "ttlSecondsAfterFinished": 0}));
        j["status"]["startTime"] = json!("2020-01-01T00:00:00Z");
        let p = plan(&j, &[pod("a", "Running")], "2020-01-01T00:00:06Z".parse().unwrap());
        assert_eq!(p.finish.as_ref().map(|f| f.1), Some("DeadlineExceeded"));
        j["status"]["conditions"] = json!([{"type": "Failed", "status": "True", "lastTransitionTime": "2020-01-01T00:00:06Z"}]);
        assert!(plan(&j, &[], "2020-01-01T00:00:07Z".parse().unwrap()).delete_job);
    }

    #[test]
    fn a_work_queue_job_completes_when_one_succeeded_and_none_runs() {
        let j = job(json!({"completions": null, "parallelism": 2}));
        let p = plan(&j, &[pod("a", "Succeeded"), pod("b", "Running")], Timestamp::now());
        assert_eq!((p.create, p.finish.is_none()), (0, true));
        let p = plan(&j, &[pod("a", "Succeeded"), pod("b", "Succeeded")], Timestamp::now());
        assert_eq!(p.finish.map(|f| f.0), Some("Complete"));
    }
}
