//! CronJob controller: creates a Job for each scheduled time (standard five-field cron via the
//! `croner` crate, the `@hourly`-style macros, and `@every <duration>`), in UTC or the IANA
//! zone of `spec.timeZone` (daylight saving included, via `chrono-tz`); honours
//! concurrencyPolicy (Allow, Forbid, Replace), startingDeadlineSeconds, suspend, and the
//! successful/failed history limits. Job names are `<cronjob>-<minutes since the epoch>` as in
//! Kubernetes (seconds for sub-minute `@every`), so a retried sync never starts a time twice.

use super::job::finished;
use super::{enqueue_owners, enqueue_self, Ctx};
use anyhow::Context;
use flotilla_api::error::Reason;
use flotilla_client::runtime::rfc3339_seconds as ts;
use flotilla_client::runtime::{
    controller_uid, meta, owner_ref, run_workers, terminating, Reconciled, WorkQueue,
};
use flotilla_client::DeleteParams;
use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub async fn run(ctx: Arc<Ctx>) {
    let queue = WorkQueue::new();
    enqueue_self(ctx.inf("cronjobs"), queue.clone());
    enqueue_owners(ctx.inf("jobs"), "CronJob", queue.clone(), None, |_| {});
    run_workers("cronjob", queue, 2, move |key| {
        let ctx = ctx.clone();
        async move { reconcile(&ctx, &key).await }
    })
    .await
}

pub enum Schedule {
    Cron(Box<croner::Cron>, chrono_tz::Tz),
    Every(SignedDuration),
}

impl Schedule {
    /// `s` read in `time_zone` (an IANA name; none: UTC).
    pub fn parse(s: &str, time_zone: Option<&str>) -> Result<Self, String> {
        let tz = match time_zone {
            None => chrono_tz::UTC,
            Some(z) => z.parse().map_err(|_| format!("unknown time zone {z:?}"))?,
        };
        let s = s.trim();
        if let Some(d) = s.strip_prefix("@every ") {
            let d: SignedDuration = flotilla_api::quantity::parse_go_duration(d.trim())
                .ok_or_else(|| format!("invalid duration in {s:?}"))?;
            if d <= SignedDuration::ZERO {
                return Err(format!("{s:?}: the interval must be positive"));
            }
            return Ok(Schedule::Every(d));
        }
        let expr = match s {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let cron: croner::Cron =
            expr.parse().map_err(|e| format!("invalid schedule {s:?}: {e}"))?;
        Ok(Schedule::Cron(Box::new(cron), tz))
    }

    /// The latest scheduled time in (`after`, `now`], if any.
    pub fn latest_due(&self, after: Timestamp, now: Timestamp) -> Option<Timestamp> {
        match self {
            Schedule::Every(d) => {
                let n = now.duration_since(after).as_nanos() / d.as_nanos();
                let since = SignedDuration::from_nanos(i64::try_from(d.as_nanos() * n).ok()?);
                (n >= 1).then(|| after.checked_add(since).ok()).flatten()
            }
            Schedule::Cron(c, tz) => {
                let t = chrono::DateTime::from_timestamp(now.as_second(), 0)?.with_timezone(tz);
                let prev = c.find_previous_occurrence(&t, true).ok()?;
                let prev = Timestamp::from_second(prev.timestamp()).ok()?;
                (prev > after).then_some(prev)
            }
        }
    }

    /// The first scheduled time after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        match self {
            Schedule::Every(d) => t.checked_add(*d).ok(),
            Schedule::Cron(c, tz) => {
                let dt = chrono::DateTime::from_timestamp(t.as_second(), 0)?.with_timezone(tz);
                let next = c.find_next_occurrence(&dt, false).ok()?;
                Timestamp::from_second(next.timestamp()).ok()
            }
        }
    }
}

async fn reconcile(ctx: &Ctx, key: &str) -> Reconciled {
    let Some(cj) = ctx.inf("cronjobs").get(key) else { return Ok(None) };
    if terminating(&cj) {
        return Ok(None);
    }
    let (ns, name) = (meta(&cj, "namespace").to_string(), meta(&cj, "name").to_string());
    let c = &ctx.client;
    let schedule = match Schedule::parse(
        cj.pointer("/spec/schedule").and_then(Value::as_str).unwrap_or(""),
        cj.pointer("/spec/timeZone").and_then(Value::as_str),
    ) {
        Ok(s) => s,
        Err(e) => {
            ctx.events.warning(&cj, "UnparseableSchedule", e);
            return Ok(None);
        }
    };
    let uid = meta(&cj, "uid");
    let mut jobs: Vec<Arc<Value>> = ctx
        .inf("jobs")
        .list_namespace(&ns)
        .into_iter()
        .filter(|j| controller_uid(j) == uid)
        .collect();
    jobs.sort_by(|a, b| meta(a, "creationTimestamp").cmp(meta(b, "creationTimestamp")));
    let active: Vec<&Arc<Value>> =
        jobs.iter().filter(|j| finished(j).is_none() && !terminating(j)).collect();

    // History limits: the oldest finished Jobs beyond them go (their pods with them).
    for (kind, limit) in [
        (
            "Complete",
            cj.pointer("/spec/successfulJobsHistoryLimit").and_then(Value::as_i64).unwrap_or(3),
        ),
        ("Failed", cj.pointer("/spec/failedJobsHistoryLimit").and_then(Value::as_i64).unwrap_or(1)),
    ] {
        let done: Vec<&Arc<Value>> =
            jobs.iter().filter(|j| finished(j) == Some(kind) && !terminating(j)).collect();
        for j in done.iter().take(done.len().saturating_sub(limit.max(0) as usize)) {
            delete_job(c, j).await?;
        }
    }

    let now = Timestamp::now();
    let last = cj
        .pointer("/status/lastScheduleTime")
        .and_then(Value::as_str)
        .or_else(|| cj.pointer("/metadata/creationTimestamp").and_then(Value::as_str))
        .and_then(|s| s.parse::<Timestamp>().ok())
        .unwrap_or(now);
    let mut status = cj.get("status").cloned().unwrap_or(json!({}));
    status["active"] = json!(active
        .iter()
        .map(|j| json!({"apiVersion": "batch/v1", "kind": "Job", "name": meta(j, "name"),
                         "namespace": ns, "uid": meta(j, "uid")}))
        .collect::<Vec<_>>());
    if let Some(t) = jobs
        .iter()
        .filter(|j| finished(j) == Some("Complete"))
        .filter_map(|j| j.pointer("/status/completionTime").and_then(Value::as_str))
        .max()
    {
        status["lastSuccessfulTime"] = json!(t);
    }
    let suspended = cj.pointer("/spec/suspend").and_then(Value::as_bool).unwrap_or(false);
    if let (false, Some(due)) = (suspended, schedule.latest_due(last, now)) {
        let deadline = cj.pointer("/spec/startingDeadlineSeconds").and_then(Value::as_i64);
        let policy =
            cj.pointer("/spec/concurrencyPolicy").and_then(Value::as_str).unwrap_or("Allow");
        // A deadline too far to represent never passes.
        let missed = |d: i64| due.checked_add(SignedDuration::from_secs(d)).is_ok_and(|t| t < now);
        if deadline.is_some_and(missed) {
            ctx.events.warning(
                &cj,
                "MissSchedule",
                format!("Missed scheduled time to start a job: {}", ts(due)),
            );
        } else if policy == "Forbid" && !active.is_empty() {
            // Skipped, and counted as handled so it is not retried.
            tracing::debug!(cronjob = %key, "skipping a run: the previous one is still active (Forbid)");
        } else {
            if policy == "Replace" {
                for j in &active {
                    delete_job(c, j).await?;
                }
            }
            // Minutes since the epoch, as Kubernetes names them; seconds for sub-minute
            // `@every` schedules, which would otherwise reuse one name within a minute.
            let stamp = match &schedule {
                Schedule::Every(d) if d.as_secs() < 60 => due.as_second(),
                _ => due.as_second() / 60,
            };
            let job_name = format!("{name}-{stamp}");
            let t = cj.pointer("/spec/jobTemplate").cloned().unwrap_or(json!({}));
            let mut m = json!({"name": job_name, "namespace": ns, "ownerReferences": [owner_ref(&cj)],
                "annotations": {"batch.kubernetes.io/cronjob-scheduled-timestamp": ts(due)}});
            if let Some(l) = t.pointer("/metadata/labels") {
                m["labels"] = l.clone();
            }
            if let Some(a) = t.pointer("/metadata/annotations").and_then(Value::as_object) {
                for (k, v) in a {
                    m["annotations"][k] = v.clone();
                }
            }
            let job =
                json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": m, "spec": t["spec"]});
            match c.create("jobs", &ns, &job).await {
                Ok(_) => {
                    ctx.events.normal(&cj, "SuccessfulCreate", format!("Created job {job_name}"))
                }
                Err(e) if e.reason == Reason::AlreadyExists => {}
                Err(e) => {
                    ctx.events.warning(&cj, "FailedCreate", format!("Error creating job: {e}"));
                    return Err(e).context("creating the Job");
                }
            }
        }
        status["lastScheduleTime"] = json!(ts(due));
    }
    if cj.get("status").cloned().unwrap_or(json!({})) != status {
        let patch = json!({"metadata": {"uid": uid}, "status": status});
        if let Err(e) = c.patch("cronjobs", &ns, &name, &patch, false, true).await {
            if e.reason != Reason::NotFound {
                return Err(e).context("updating the CronJob status");
            }
        }
    }
    let next = schedule
        .next_after(now)
        .map(|t| t.duration_since(now).unsigned_abs() + Duration::from_millis(50));
    Ok(Some(next.unwrap_or(Duration::from_secs(60)).min(Duration::from_secs(300))))
}

async fn delete_job(c: &flotilla_client::Client, j: &Value) -> anyhow::Result<()> {
    let dp = DeleteParams {
        precondition_uid: meta(j, "uid").into(),
        propagation_policy: "Background".into(),
        ..Default::default()
    };
    match c.delete("jobs", meta(j, "namespace"), meta(j, "name"), &dp).await {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.reason, Reason::NotFound | Reason::Conflict) => Ok(()),
        Err(e) => Err(e).context("deleting a Job"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn cron_schedules_find_the_latest_due_time() {
        let s = Schedule::parse("*/5 * * * *", None).unwrap();
        assert_eq!(
            s.latest_due(t("2024-01-01T00:00:00Z"), t("2024-01-01T00:12:30Z")),
            Some(t("2024-01-01T00:10:00Z"))
        );
        assert_eq!(s.latest_due(t("2024-01-01T00:10:00Z"), t("2024-01-01T00:12:30Z")), None);
        assert_eq!(s.next_after(t("2024-01-01T00:12:30Z")), Some(t("2024-01-01T00:15:00Z")));
        let h = Schedule::parse("@hourly", None).unwrap();
        assert_eq!(h.next_after(t("2024-01-01T00:12:30Z")), Some(t("2024-01-01T01:00:00Z")));
        assert!(Schedule::parse("61 * * * *", None).is_err());
    }

    #[test]
    fn schedules_follow_their_time_zone_through_daylight_saving() {
        let s = Schedule::parse("30 9 * * *", Some("Europe/Berlin")).unwrap();
        // 09:30 in Berlin is 08:30 UTC in winter (CET) and 07:30 UTC in summer (CEST).
        assert_eq!(s.next_after(t("2024-01-15T00:00:00Z")), Some(t("2024-01-15T08:30:00Z")));
        assert_eq!(s.next_after(t("2024-07-15T00:00:00Z")), Some(t("2024-07-15T07:30:00Z")));
        assert_eq!(
            s.latest_due(t("2024-07-14T00:00:00Z"), t("2024-07-15T07:45:00Z")),
            Some(t("2024-07-15T07:30:00Z"))
        );
        assert!(Schedule::parse("0 * * * *", Some("Mars/Olympus")).is_err());
    }

    #[test]
    fn every_schedules_count_from_the_last_run() {
        let s = Schedule::parse("@every 1m30s", None).unwrap();
        assert_eq!(s.latest_due(t("2024-01-01T00:00:00Z"), t("2024-01-01T00:01:00Z")), None);
        assert_eq!(
            s.latest_due(t("2024-01-01T00:00:00Z"), t("2024-01-01T00:04:00Z")),
            Some(t("2024-01-01T00:03:00Z"))
        );
        assert!(Schedule::parse("@every 0s", None).is_err());
        assert!(Schedule::parse("@every soon", None).is_err());
    }
}
