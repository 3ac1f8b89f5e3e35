//! `flotilla rollout status|history|undo|restart|pause|resume`, as kubectl's, for Deployments.

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
        /// deployment/NAME, or `deployment NAME`.
        target: String,
        name: Option<String>,
        /// Give up after this many seconds (0: wait forever).
        #[arg(long, default_value_t = 0)]
        timeout: u64,
        /// Print the state once and exit instead of waiting.
        #[arg(long, short = 'w', default_value_t = true, action = clap::ArgAction::Set)]
        watch: bool,
    },
    /// The revisions kept (ReplicaSets of the Deployment).
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

fn deployment_name(target: &str, name: Option<&str>) -> Result<String> {
    let (kind, n) = match (target.split_once('/'), name) {
        (Some((k, n)), None) => (k, n.to_string()),
        (None, Some(n)) => (target, n.to_string()),
        _ => bail!("expected deployment/NAME or `deployment NAME`"),
    };
    if !matches!(
        kind.to_ascii_lowercase().as_str(),
        "deployment" | "deployments" | "deploy" | "deployment.apps" | "deployments.apps"
    ) {
        bail!("rollout supports Deployments only, not {kind:?}");
    }
    Ok(n)
}

fn int(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
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

async fn revisions(ctx: &Ctx, d: &Value) -> Result<Vec<(i64, Value)>> {
    let uid = d["metadata"]["uid"].as_str().unwrap_or("");
    let list = ctx
        .client
        .list_all("replicasets", &ctx.namespace, &Default::default())
        .await
        .map_err(server_error)?;
    let mut out: Vec<(i64, Value)> = list
        .items
        .into_iter()
        .filter(|r| {
            r.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|refs| refs.iter().any(|x| x["uid"] == uid && x["controller"] == true))
        })
        .map(|r| {
            let rev = r
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(REVISION))
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            (rev, r)
        })
        .collect();
    out.sort_by_key(|(r, _)| *r);
    Ok(out)
}

pub async fn run(ctx: &Ctx, cmd: Rollout) -> Result<()> {
    let c = &ctx.client;
    let ns = ctx.namespace.clone();
    let patch = |name: String, p: Value| async move {
        c.patch("deployments", &ns, &name, &p, false, false).await.map_err(server_error)
    };
    match cmd {
        Rollout::Status { target, name, timeout, watch } => {
            let name = deployment_name(&target, name.as_deref())?;
            let started = Instant::now();
            let mut last = String::new();
            loop {
                let d = c.get("deployments", &ctx.namespace, &name).await.map_err(server_error)?;
                let (msg, done) = status_message(&d)?;
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
            let name = deployment_name(&target, name.as_deref())?;
            let d = c.get("deployments", &ctx.namespace, &name).await.map_err(server_error)?;
            println!("deployment.apps/{name}");
            println!("REVISION  CHANGE-CAUSE");
            for (rev, r) in revisions(ctx, &d).await? {
                let cause = r
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get("kubernetes.io/change-cause"))
                    .and_then(Value::as_str)
                    .unwrap_or("<none>");
                println!("{rev:<9} {cause}");
            }
            Ok(())
        }
        Rollout::Undo { target, name, to_revision } => {
            let name = deployment_name(&target, name.as_deref())?;
            let d = c.get("deployments", &ctx.namespace, &name).await.map_err(server_error)?;
            let revs = revisions(ctx, &d).await?;
            let pick = if to_revision > 0 {
                revs.iter().find(|(r, _)| *r == to_revision)
            } else {
                revs.iter().rev().nth(1)
            };
            let Some((rev, rs)) = pick else {
                if to_revision > 0 {
                    bail!("unable to find the specified revision {to_revision}");
                }
                bail!("no rollout history found for deployment {name:?}");
            };
            let mut template = rs["spec"]["template"].clone();
            if let Some(l) = template.pointer_mut("/metadata/labels").and_then(Value::as_object_mut)
            {
                l.remove(HASH_LABEL);
            }
            let mut d2 = d.clone();
            d2["spec"]["template"] = template;
            c.update("deployments", &ctx.namespace, &d2).await.map_err(server_error)?;
            println!("deployment.apps/{name} rolled back (to revision {rev})");
            Ok(())
        }
        Rollout::Restart { target, name } => {
            let name = deployment_name(&target, name.as_deref())?;
            let now = jiff::Timestamp::now();
            let now = jiff::Timestamp::from_second(now.as_second()).unwrap_or(now).to_string();
            patch(name.clone(), json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": now}}}}})).await?;
            println!("deployment.apps/{name} restarted");
            Ok(())
        }
        Rollout::Pause { target, name } => {
            let name = deployment_name(&target, name.as_deref())?;
            patch(name.clone(), json!({"spec": {"paused": true}})).await?;
            println!("deployment.apps/{name} paused");
            Ok(())
        }
        Rollout::Resume { target, name } => {
            let name = deployment_name(&target, name.as_deref())?;
            patch(name.clone(), json!({"spec": {"paused": null}})).await?;
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
}
