//! Namespace controller: a terminating namespace has everything in it deleted, then its
//! `kubernetes` finalizer removed (the API server then removes the namespace); every active
//! namespace has a `default` ServiceAccount (the ServiceAccount controller's job in Kubernetes).

use super::Ctx;
use anyhow::Context;
use flotilla_api::error::Reason;
use flotilla_api::resources::RESOURCES;
use flotilla_client::runtime::{meta, on_change, run_workers, terminating, Reconciled, WorkQueue};
use flotilla_client::{Change, DeleteParams, ListParams};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub async fn run(ctx: Arc<Ctx>) {
    let queue = WorkQueue::new();
    super::enqueue_self(ctx.inf("namespaces"), queue.clone());
    let q = queue.clone();
    on_change(ctx.inf("serviceaccounts"), move |c| {
        if let Change::Deleted(sa) = c {
            q.add(meta(sa, "namespace").to_string());
        }
    });
    run_workers("namespace", queue, 2, move |key| {
        let ctx = ctx.clone();
        async move { reconcile(&ctx, &key).await }
    })
    .await
}

async fn reconcile(ctx: &Ctx, name: &str) -> Reconciled {
    let Some(ns) = ctx.inf("namespaces").get(name) else { return Ok(None) };
    let c = &ctx.client;
    if !terminating(&ns) {
        if ctx.inf("serviceaccounts").get(&format!("{name}/default")).is_none() {
            let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "default", "namespace": name}});
            match c.create("serviceaccounts", name, &sa).await {
                Ok(_) => {}
                Err(e) if matches!(e.reason, Reason::AlreadyExists | Reason::Forbidden) => {}
                Err(e) => return Err(e).context("creating the default ServiceAccount"),
            }
        }
        return Ok(None);
    }
    // Delete the content; pods take their grace period, so look again until all is gone.
    let mut remaining = 0;
    for info in RESOURCES.iter().filter(|r| r.namespaced) {
        let list = c
            .list_all(info.plural, name, &ListParams::default())
            .await
            .with_context(|| format!("listing {} in namespace {name}", info.plural))?;
        for o in &list.items {
            remaining += 1;
            if terminating(o) {
                continue;
            }
            let dp = DeleteParams { precondition_uid: meta(o, "uid").into(), ..Default::default() };
            match c.delete(info.plural, name, meta(o, "name"), &dp).await {
                Ok(_) => {}
                Err(e) if matches!(e.reason, Reason::NotFound | Reason::Conflict) => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("deleting {} {name}/{}", info.plural, meta(o, "name"))
                    })
                }
            }
        }
    }
    if remaining > 0 {
        return Ok(Some(Duration::from_secs(1)));
    }
    let finalizers: Vec<Value> = ns
        .pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|f| *f != "kubernetes")
        .cloned()
        .collect();
    let mut ns = (*ns).clone();
    ns["spec"]["finalizers"] = json!(finalizers);
    match c.update("namespaces", "", &ns).await {
        Ok(_) => Ok(None),
        Err(e) if e.reason == Reason::NotFound => Ok(None),
        Err(e) => Err(e).context("finalizing the namespace"),
    }
}
