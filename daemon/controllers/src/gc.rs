//! Garbage collector: cascading deletion along ownerReferences.
//! - Background: a dependent whose owners are all gone is deleted; references to owners that
//!   are gone are dropped when other owners remain.
//! - Foreground: an owner with the `foregroundDeletion` finalizer has its dependents deleted
//!   (foreground too), and loses the finalizer once none is left.
//! - Orphan: an owner with the `orphan` finalizer has its references removed from its
//!   dependents, then loses the finalizer.
//!
//! Dependents are looked for among the informed types (pods, ReplicaSets, Deployments,
//! Endpoints, node Leases, Jobs, ControllerRevisions); owners of any registered kind are looked up by uid.

use super::Ctx;
use anyhow::Context;
use flotilla_api::error::Reason;
use flotilla_api::resources;
use flotilla_client::runtime::{meta, on_change, run_workers, terminating, Reconciled, WorkQueue};
use flotilla_client::{object_key, Change, DeleteParams};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const DEPENDENTS: &[&str] =
    &["pods", "replicasets", "deployments", "endpoints", "leases", "jobs", "controllerrevisions"];
const OWNERS: &[&str] = &[
    "replicasets",
    "deployments",
    "nodes",
    "pods",
    "services",
    "jobs",
    "cronjobs",
    "daemonsets",
    "statefulsets",
];

pub async fn run(ctx: Arc<Ctx>) {
    let queue = WorkQueue::new();
    for res in DEPENDENTS {
        let q = queue.clone();
        let inf = ctx.inf(res).clone();
        // Everything once at start, then what changes.
        for o in inf.list() {
            if refs(&o).next().is_some() {
                q.add(format!("dep|{res}|{}", object_key(&o)));
            }
        }
        on_change(&inf, move |c| {
            if let Change::Added(o) | Change::Modified { new: o, .. } = c {
                if refs(o).next().is_some() {
                    q.add(format!("dep|{res}|{}", object_key(o)));
                }
            }
        });
    }
    for res in OWNERS {
        let (q, ctx2) = (queue.clone(), Arc::downgrade(&ctx));
        on_change(ctx.inf(res), move |c| match c {
            // An owner went: its dependents may be orphans now.
            Change::Deleted(o) => {
                let Some(ctx2) = ctx2.upgrade() else { return };
                let uid = meta(o, "uid");
                for d in DEPENDENTS {
                    for x in ctx2.inf(d).list() {
                        if refs(&x).any(|r| r["uid"] == uid) {
                            q.add(format!("dep|{d}|{}", object_key(&x)));
                        }
                    }
                }
            }
            Change::Added(o) | Change::Modified { new: o, .. } if has_gc_finalizer(o) => {
                q.add(format!("owner|{res}|{}", object_key(o)));
            }
            _ => {}
        });
        for o in ctx.inf(res).list() {
            if has_gc_finalizer(&o) {
                queue.add(format!("owner|{res}|{}", object_key(&o)));
            }
        }
    }
    run_workers("garbage-collector", queue, 2, move |key| {
        let ctx = ctx.clone();
        async move { reconcile(&ctx, &key).await }
    })
    .await
}

fn refs(o: &Value) -> impl Iterator<Item = &Value> {
    o.pointer("/metadata/ownerReferences").and_then(Value::as_array).into_iter().flatten()
}

fn finalizers(o: &Value) -> Vec<String> {
    o.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect()
}

fn has_gc_finalizer(o: &Value) -> bool {
    terminating(o) && finalizers(o).iter().any(|f| f == "foregroundDeletion" || f == "orphan")
}

enum Owner {
    Gone,
    Alive(Value),
}

/// The owner a reference names, if an object with that uid exists.
async fn owner(ctx: &Ctx, ns: &str, r: &Value) -> anyhow::Result<Owner> {
    let (api_version, kind) =
        (r["apiVersion"].as_str().unwrap_or(""), r["kind"].as_str().unwrap_or(""));
    let Some(info) =
        resources::by_kind(api_version, kind).or_else(|| resources::by_kind_any_version(kind))
    else {
        // A kind this cluster does not serve cannot have a living owner here.
        return Ok(Owner::Gone);
    };
    let ns = if info.namespaced { ns } else { "" };
    let name = r["name"].as_str().unwrap_or("");
    let found = match ctx.informers.get(info.plural).filter(|_| info.plural != "leases") {
        Some(inf) => inf
            .get(&if ns.is_empty() { name.to_string() } else { format!("{ns}/{name}") })
            .map(|o| (*o).clone()),
        None => match ctx.client.get(info.plural, ns, name).await {
            Ok(o) => Some(o),
            Err(e) if e.reason == Reason::NotFound => None,
            Err(e) => return Err(e.into()),
        },
    };
    Ok(match found {
        Some(o) if o["metadata"]["uid"] == r["uid"] => Owner::Alive(o),
        _ => Owner::Gone,
    })
}

async fn reconcile(ctx: &Ctx, key: &str) -> Reconciled {
    let mut parts = key.splitn(3, '|');
    let (role, res, okey) =
        (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let Some(obj) = ctx.informers.get(res).and_then(|i| i.get(okey)) else { return Ok(None) };
    let ns = meta(&obj, "namespace").to_string();
    let c = &ctx.client;
    if role == "owner" {
        return finalize_owner(ctx, res, &obj).await;
    }
    if terminating(&obj) {
        return Ok(None);
    }
    let mut alive = Vec::new();
    let mut gone = Vec::new();
    let mut foreground = false;
    for r in refs(&obj) {
        match owner(ctx, &ns, r).await? {
            Owner::Gone => gone.push(r.clone()),
            Owner::Alive(o) => {
                if terminating(&o)
                    && finalizers(&o).iter().any(|f| f == "foregroundDeletion")
                    && r["blockOwnerDeletion"] == true
                {
                    foreground = true;
                }
                alive.push(r.clone());
            }
        }
    }
    if gone.is_empty() && !foreground {
        return Ok(None);
    }
    if alive.is_empty() || foreground {
        let dp = DeleteParams {
            precondition_uid: meta(&obj, "uid").into(),
            propagation_policy: if foreground { "Foreground".into() } else { "Background".into() },
            ..Default::default()
        };
        match c.delete(res, &ns, meta(&obj, "name"), &dp).await {
            Ok(_) => tracing::debug!(%res, object = %okey, "garbage collected"),
            Err(e) if matches!(e.reason, Reason::NotFound | Reason::Conflict) => {}
            Err(e) => return Err(e).with_context(|| format!("deleting {res} {okey}")),
        }
        return Ok(None);
    }
    let patch = json!({"metadata": {"uid": meta(&obj, "uid"), "ownerReferences": alive}});
    c.patch(res, &ns, meta(&obj, "name"), &patch, false, false)
        .await
        .context("dropping dangling ownerReferences")?;
    Ok(None)
}

/// Foreground: delete the dependents, drop the finalizer when none remain. Orphan: detach the
/// dependents, then drop the finalizer.
async fn finalize_owner(ctx: &Ctx, res: &str, owner: &Value) -> Reconciled {
    let uid = meta(owner, "uid");
    let fins = finalizers(owner);
    let orphan = fins.iter().any(|f| f == "orphan");
    let c = &ctx.client;
    let mut blocking = 0;
    for d in DEPENDENTS {
        for x in ctx.inf(d).list() {
            if !refs(&x).any(|r| r["uid"] == uid) {
                continue;
            }
            let ns = meta(&x, "namespace");
            if orphan {
                let keep: Vec<Value> = refs(&x).filter(|r| r["uid"] != uid).cloned().collect();
                let patch = json!({"metadata": {"uid": meta(&x, "uid"), "ownerReferences": keep}});
                match c.patch(d, ns, meta(&x, "name"), &patch, false, false).await {
                    Ok(_) => {}
                    Err(e) if matches!(e.reason, Reason::NotFound | Reason::Conflict) => {}
                    Err(e) => return Err(e).context("orphaning a dependent"),
                }
            } else {
                blocking += 1;
                if !terminating(&x) {
                    let dp = DeleteParams {
                        precondition_uid: meta(&x, "uid").into(),
                        propagation_policy: "Foreground".into(),
                        ..Default::default()
                    };
                    match c.delete(d, ns, meta(&x, "name"), &dp).await {
                        Ok(_) => {}
                        Err(e) if matches!(e.reason, Reason::NotFound | Reason::Conflict) => {}
                        Err(e) => return Err(e).context("deleting a dependent in the foreground"),
                    }
                }
            }
        }
    }
    if blocking > 0 {
        return Ok(Some(Duration::from_millis(500)));
    }
    let drop = if orphan { "orphan" } else { "foregroundDeletion" };
    let keep: Vec<&String> = fins.iter().filter(|f| *f != drop).collect();
    let patch = json!({"metadata": {"uid": uid, "finalizers": keep}});
    match c.patch(res, meta(owner, "namespace"), meta(owner, "name"), &patch, false, false).await {
        Ok(_) => Ok(None),
        Err(e) if e.reason == Reason::NotFound => Ok(None),
        Err(e) => Err(e).context("removing the garbage collector's finalizer"),
    }
}
