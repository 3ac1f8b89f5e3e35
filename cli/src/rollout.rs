//! `flotilla rollout status|history|undo|restart|pause|resume`, as kubectl's: Deployments
//! (revisions are their ReplicaSets), StatefulSets and DaemonSets (revisions are
//! ControllerRevisions). Pause and resume are for Deployments only, as in kubectl.

use crate::{server_error, Ctx};
use anyhow::{bail, Result};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const REVISION: &str = "deployment.kubernetes.io/revision";
const HASH_LABEL: &str = "pod-template-hash";

#[derive(clap::Subcommand)]
pub enum Rollout {
    /// Wait until the rollout finishes (or fails its progress deadline).
    Status {
        /// KIND/NAME or `KIND NAME`: deployment, statefulset or daemonset.
        target: String,
        name: Option<String>,
        /// Give up after this many seconds (0: wait forever).
        #[arg(long, default_value_t = 0)]
        timeout: u64,
        /// Print the state once and exit instead of waiting.
        #[arg(long, short = 'w', default_value_t = true, action = clap::ArgAction::Set)]
        watch: bool,
    },
    /// The revisions kept: a Deployment's ReplicaSets, the ControllerRevisions of the others.
    History {
        target: String,
        name: Option<String>,
    },
    /// Roll back to the previous revision, or to --to-revision.
    Undo {
        target: String,
        name: Option<String>,
        #[arg(long, default_value_t = 0)]
        to_revision: i64,
    },
    /// Restart every pod through a rollout (a new template annotation).
    Restart {
        target: String,
        name: Option<String>,
    },
    /// Stop rolling out template changes.
    Pause {
        target: String,
        name: Option<String>,
    },
    Resume {
        target: String,
        name: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl Kind {
    fn plural(self) -> &'static str {
        match self {
            Kind::Deployment => "deployments",
            Kind::StatefulSet => "statefulsets",
            Kind::DaemonSet => "daemonsets",
        }
    }

    /// As kubectl prints the object: `statefulset.apps/db`.
    fn show(self, name: &str) -> String {
        let k = match self {
            Kind::Deployment => "deployment",
            Kind::StatefulSet => "statefulset",
            Kind::DaemonSet => "daemonset",
        };
        format!("{k}.apps/{name}")
    }
}

/// `KIND/NAME` or `KIND NAME`, with kubectl's names and short names for the kind.
pub fn target_of(target: &str, name: Option<&str>) -> Result<(Kind, String)> {
    let (kind, n) = match (target.split_once('/'), name) {
        (Some((k, n)), None) => (k, n.to_string()),
        (None, Some(n)) => (target, n.to_string()),
        _ => bail!("expected KIND/NAME or `KIND NAME` (deployment, statefulset or daemonset)"),
    };
    let kind = kind.to_ascii_lowercase();
    let kind = kind.strip_suffix(".apps").unwrap_or(&kind);
    let k = match kind {
        "deployment" | "deployments" | "deploy" => Kind::Deployment,
        "statefulset" | "statefulsets" | "sts" => Kind::StatefulSet,
        "daemonset" | "daemonsets" | "ds" => Kind::DaemonSet,
        _ => bail!("no rollouts for {kind:?}: deployment, statefulset and daemonset have them"),
    };
    if n.is_empty() {
        bail!("a name is required");
    }
    Ok((k, n))
}

/// Only Deployments pause; kubectl says so for the others.
fn pausable(target: &str, name: Option<&str>, verb: &str) -> Result<String> {
    match target_of(target, name)? {
        (Kind::Deployment, name) => Ok(name),
        (kind, name) => bail!("{}.apps {name:?} {verb} is not supported", kind.plural()),
    }
}

fn int(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

/// kubectl's status viewer for the kind: a message, and whether the rollout is done.
pub fn status_of(kind: Kind, obj: &Value) -> Result<(String, bool)> {
    match kind {
        Kind::Deployment => status_message(obj),
        Kind::StatefulSet => statefulset_status(obj),
        Kind::DaemonSet => daemonset_status(obj),
    }
}

fn rolling_update(obj: &Value) -> Result<()> {
    match obj.pointer("/spec/updateStrategy/type").and_then(Value::as_str) {
        None | Some("RollingUpdate") => Ok(()),
        Some(_) => bail!("rollout status is only available for RollingUpdate strategy type"),
    }
}

/// kubectl's StatefulSetStatusViewer.
fn statefulset_status(s: &Value) -> Result<(String, bool)> {
    rolling_update(s)?;
    let observed = int(s, "/status/observedGeneration");
    if observed == 0 || int(s, "/metadata/generation") > observed {
        return Ok(("Waiting for statefulset spec update to be observed...".into(), false));
    }
    let want = s.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
    let ready = int(s, "/status/readyReplicas");
    if ready < want {
        return Ok((format!("Waiting for {} pods to be ready...", want - ready), false));
    }
    let updated = int(s, "/status/updatedReplicas");
    if s.pointer("/spec/updateStrategy/rollingUpdate").is_some_and(|r| !r.is_null()) {
        if let Some(partition) =
            s.pointer("/spec/updateStrategy/rollingUpdate/partition").and_then(Value::as_i64)
        {
            if updated < want - partition {
                return Ok((format!("Waiting for partitioned roll out to finish: {updated} out of {} new pods have been updated...", want - partition), false));
            }
        }
        return Ok((
            format!("partitioned roll out complete: {updated} new pods have been updated..."),
            true,
        ));
    }
    let rev = |k: &str| s.pointer(&format!("/status/{k}")).and_then(Value::as_str).unwrap_or("");
    if rev("updateRevision") != rev("currentRevision") {
        return Ok((format!("waiting for statefulset rolling update to complete {updated} pods at revision {}...", rev("updateRevision")), false));
    }
    Ok((
        format!(
            "statefulset rolling update complete {} pods at revision {}...",
            int(s, "/status/currentReplicas"),
            rev("currentRevision")
        ),
        true,
    ))
}

/// kubectl's DaemonSetStatusViewer.
fn daemonset_status(d: &Value) -> Result<(String, bool)> {
    rolling_update(d)?;
    let name = d["metadata"]["name"].as_str().unwrap_or("");
    if int(d, "/metadata/generation") > int(d, "/status/observedGeneration") {
        return Ok(("Waiting for daemon set spec update to be observed...".into(), false));
    }
    let desired = int(d, "/status/desiredNumberScheduled");
    let updated = int(d, "/status/updatedNumberScheduled");
    let available = int(d, "/status/numberAvailable");
    Ok(if updated < desired {
        (format!("Waiting for daemon set {name:?} rollout to finish: {updated} out of {desired} new pods have been updated..."), false)
    } else if available < desired {
        (format!("Waiting for daemon set {name:?} rollout to finish: {available} of {desired} updated pods are available..."), false)
    } else {
        (format!("daemon set {name:?} successfully rolled out"), true)
    })
}

/// kubectl's DeploymentStatusViewer: a message, and whether the rollout is done.
pub fn status_message(d: &Value) -> Result<(String, bool)> {
    let name = d["metadata"]["name"].as_str().unwrap_or("");
    if int(d, "/metadata/generation") > int(d, "/status/observedGeneration") {
        return Ok(("Waiting for deployment spec update to be observed...".into(), false));
    }
    let conds =
        d.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    if conds.iter().any(|c| c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded")
    {
        bail!("deployment {name:?} exceeded its progress deadline");
    }
    let want = d.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
    let (updated, replicas, available) = (
        int(d, "/status/updatedReplicas"),
        int(d, "/status/replicas"),
        int(d, "/status/availableReplicas"),
    );
    Ok(if updated < want {
        (format!("Waiting for deployment {name:?} rollout to finish: {updated} out of {want} new replicas have been updated..."), false)
    } else if replicas > updated {
        (format!("Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...", replicas - updated), false)
    } else if available < updated {
        (format!("Waiting for deployment {name:?} rollout to finish: {available} of {updated} updated replicas are available..."), false)
    } else {
        (format!("deployment {name:?} successfully rolled out"), true)
    })
}

fn controlled_by(o: &Value, uid: &str) -> bool {
    o.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| refs.iter().any(|x| x["uid"] == uid && x["controller"] == true))
}

/// The revisions kept, oldest first, each with its pod template: a Deployment's ReplicaSets
/// (numbered by annotation), a StatefulSet's or DaemonSet's ControllerRevisions.
async fn revisions(ctx: &Ctx, kind: Kind, obj: &Value) -> Result<Vec<Revision>> {
    let uid = obj["metadata"]["uid"].as_str().unwrap_or("");
    let resource = if kind == Kind::Deployment { "replicasets" } else { "controllerrevisions" };
    let list = ctx
        .client
        .list_all(resource, &ctx.namespace, &Default::default())
        .await
        .map_err(server_error)?;
    let mut out: Vec<Revision> = list
        .items
        .into_iter()
        .filter(|r| controlled_by(r, uid))
        .map(|r| {
            let annotation = |k: &str| {
                r.pointer("/metadata/annotations").and_then(|a| a.get(k)).and_then(Value::as_str)
            };
            let (number, template) = if kind == Kind::Deployment {
                let n = annotation(REVISION).and_then(|s| s.parse().ok()).unwrap_or(0);
                let mut t = r["spec"]["template"].clone();
                if let Some(l) = t.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
                    l.remove(HASH_LABEL);
                }
                (n, t)
            } else {
                (r["revision"].as_i64().unwrap_or(0), r["data"]["spec"]["template"].clone())
            };
            let cause = annotation("kubernetes.io/change-cause").unwrap_or("<none>").to_string();
            Revision { number, template, cause }
        })
        .collect();
    out.sort_by_key(|r| r.number);
    Ok(out)
}

struct Revision {
    number: i64,
    template: Value,
    cause: String,
}

pub async fn run(ctx: &Ctx, cmd: Rollout) -> Result<()> {
    let c = &ctx.client;
    let ns = ctx.namespace.clone();
    let get = |kind: Kind, name: String| async move {
        c.get(kind.plural(), &ctx.namespace, &name).await.map_err(server_error)
    };
    let patch = |kind: Kind, name: String, p: Value| async move {
        c.patch(kind.plural(), &ns, &name, &p, false, false).await.map_err(server_error)
    };
    match cmd {
        Rollout::Status { target, name, timeout, watch } => {
            let (kind, name) = target_of(&target, name.as_deref())?;
            let started = Instant::now();
            let mut last = String::new();
            loop {
                let (msg, done) = status_of(kind, &get(kind, name.clone()).await?)?;
                if msg != last {
                    println!("{msg}");
                    last = msg;
                }
                if done || !watch {
                    return Ok(());
                }
                if timeout > 0 && started.elapsed() > Duration::from_secs(timeout) {
                    bail!("timed out waiting for the condition");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        Rollout::History { target, name } => {
            let (kind, name) = target_of(&target, name.as_deref())?;
            let obj = get(kind, name.clone()).await?;
            println!("{}", kind.show(&name));
            println!("REVISION  CHANGE-CAUSE");
            for r in revisions(ctx, kind, &obj).await? {
                println!("{:<9} {}", r.number, r.cause);
            }
            Ok(())
        }
        Rollout::Undo { target, name, to_revision } => {
            let (kind, name) = target_of(&target, name.as_deref())?;
            let obj = get(kind, name.clone()).await?;
            let revs = revisions(ctx, kind, &obj).await?;
            let pick = if to_revision > 0 {
                revs.iter().find(|r| r.number == to_revision)
            } else {
                revs.iter().rev().nth(1)
            };
            let Some(rev) = pick else {
                if to_revision > 0 {
                    bail!("unable to find the specified revision {to_revision}");
                }
                bail!("no rollout history found for {}", kind.show(&name));
            };
            if rev.template == obj["spec"]["template"] {
                println!(
                    "{} skipped rollback (current template already matches revision {})",
                    kind.show(&name),
                    rev.number
                );
                return Ok(());
            }
            let mut next = obj.clone();
            next["spec"]["template"] = rev.template.clone();
            c.update(kind.plural(), &ctx.namespace, &next).await.map_err(server_error)?;
            println!("{} rolled back (to revision {})", kind.show(&name), rev.number);
            Ok(())
        }
        Rollout::Restart { target, name } => {
            let (kind, name) = target_of(&target, name.as_deref())?;
            let now = jiff::Timestamp::now();
            let now = jiff::Timestamp::from_second(now.as_second()).unwrap_or(now).to_string();
            patch(kind, name.clone(), json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": now}}}}})).await?;
            println!("{} restarted", kind.show(&name));
            Ok(())
        }
        Rollout::Pause { target, name } => {
            let name = pausable(&target, name.as_deref(), "pausing")?;
            patch(Kind::Deployment, name.clone(), json!({"spec": {"paused": true}})).await?;
            println!("deployment.apps/{name} paused");
            Ok(())
        }
        Rollout::Resume { target, name } => {
            let name = pausable(&target, name.as_deref(), "resuming")?;
            patch(Kind::Deployment, name.clone(), json!({"spec": {"paused": null}})).await?;
            println!("deployment.apps/{name} resumed");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_messages_follow_kubectl() {
        let d = |gen: i64, obs: i64, upd: i64, rep: i64, avail: i64| {
            json!({"metadata": {"name": "web", "generation": gen}, "spec": {"replicas": 3},
                "status": {"observedGeneration": obs, "updatedReplicas": upd, "replicas": rep, "availableReplicas": avail}})
        };
        assert!(status_message(&d(2, 1, 3, 3, 3)).unwrap().0.contains("spec update"));
        assert!(status_message(&d(1, 1, 1, 4, 3)).unwrap().0.contains("1 out of 3 new replicas"));
        assert!(status_message(&d(1, 1, 3, 4, 3))
            .unwrap()
            .0
            .contains("1 old replicas are pending"));
        assert!(status_message(&d(1, 1, 3, 3, 2)).unwrap().0.contains("2 of 3 updated replicas"));
        assert_eq!(
            status_message(&d(1, 1, 3, 3, 3)).unwrap(),
            ("deployment \"web\" successfully rolled out".into(), true)
        );
        let mut bad = d(1, 1, 1, 3, 3);
        bad["status"]["conditions"] =
            json!([{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}]);
        assert!(status_message(&bad).is_err());
    }

    #[test]
    fn targets_take_kubectl_kind_names() {
        assert_eq!(target_of("sts/db", None).unwrap(), (Kind::StatefulSet, "db".into()));
        assert_eq!(target_of("daemonsets.apps", Some("a")).unwrap(), (Kind::DaemonSet, "a".into()));
        assert_eq!(target_of("deploy/web", None).unwrap(), (Kind::Deployment, "web".into()));
        assert!(target_of("replicaset/x", None).is_err());
        assert!(target_of("sts/", None).is_err());
        assert!(pausable("sts/db", None, "pausing")
            .unwrap_err()
            .to_string()
            .contains("not supported"));
    }

    #[test]
    fn statefulset_and_daemonset_status_follow_kubectl() {
        let sts = |ready: i64, updated: i64, strategy: Value, cur: &str, upd: &str| {
            json!({"metadata": {"name": "db", "generation": 2}, "spec": {"replicas": 3, "updateStrategy": strategy},
                "status": {"observedGeneration": 2, "readyReplicas": ready, "updatedReplicas": updated,
                    "currentReplicas": 3, "currentRevision": cur, "updateRevision": upd}})
        };
        let rolling = json!({"type": "RollingUpdate"});
        let msg = |v: &Value| statefulset_status(v).unwrap();
        assert_eq!(
            msg(&sts(2, 3, rolling.clone(), "a", "a")).0,
            "Waiting for 1 pods to be ready..."
        );
        assert_eq!(
            msg(&sts(3, 1, rolling.clone(), "a", "b")),
            (
                "waiting for statefulset rolling update to complete 1 pods at revision b...".into(),
                false
            )
        );
        assert_eq!(
            msg(&sts(3, 3, rolling.clone(), "b", "b")),
            ("statefulset rolling update complete 3 pods at revision b...".into(), true)
        );
        let part = json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 1}});
        assert!(!msg(&sts(3, 1, part.clone(), "a", "b")).1);
        assert_eq!(
            msg(&sts(3, 2, part, "a", "b")),
            ("partitioned roll out complete: 2 new pods have been updated...".into(), true)
        );
        let mut unseen = sts(3, 3, rolling, "b", "b");
        unseen["metadata"]["generation"] = json!(3);
        assert!(msg(&unseen).0.contains("spec update to be observed"));
        assert!(statefulset_status(&sts(3, 3, json!({"type": "OnDelete"}), "a", "a")).is_err());

        let ds = |updated: i64, available: i64| {
            json!({"metadata": {"name": "agent", "generation": 1}, "spec": {},
                "status": {"observedGeneration": 1, "desiredNumberScheduled": 3,
                    "updatedNumberScheduled": updated, "numberAvailable": available}})
        };
        assert!(daemonset_status(&ds(1, 3)).unwrap().0.contains("1 out of 3 new pods"));
        assert!(daemonset_status(&ds(3, 2)).unwrap().0.contains("2 of 3 updated pods"));
        assert_eq!(
            daemonset_status(&ds(3, 3)).unwrap(),
            ("daemon set \"agent\" successfully rolled out".into(), true)
        );
    }
}
