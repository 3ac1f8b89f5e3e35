//! Node lifecycle controller: a node whose Lease in `kube-node-lease` has not been renewed for
//! the grace period (timed on our clock from when we last saw it change) gets its conditions
//! set to Unknown and the `node.kubernetes.io/unreachable` taints (NoSchedule, NoExecute); its
//! pods are evicted once their toleration of that taint runs out (pods that say nothing
//! tolerate it for the default 300 s). A node that renews again loses the taints.
//!
//! Eviction deletes the pod with no grace period: the agent that would run the graceful stop
//! is unreachable, and a returning agent tears down pods that no longer exist in the API.

use super::Ctx;
use flotilla_api::error::Reason;
use flotilla_client::runtime::{meta, pod_phase};
use flotilla_client::DeleteParams;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

pub async fn run(ctx: Arc<Ctx>) {
    // node → (renewTime last seen, when we saw it change)
    let mut seen: HashMap<String, (String, Instant)> = HashMap::new();
    let period =
        (ctx.cfg.node_monitor_grace / 8).clamp(Duration::from_millis(200), Duration::from_secs(5));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let nodes = ctx.inf("nodes").list();
        seen.retain(|n, _| nodes.iter().any(|x| meta(x, "name") == n));
        for node in nodes {
            let name = meta(&node, "name").to_string();
            let renew = ctx
                .inf("leases")
                .get(&format!("kube-node-lease/{name}"))
                .and_then(|l| {
                    l.pointer("/spec/renewTime").and_then(Value::as_str).map(str::to_string)
                })
                .unwrap_or_default();
            let e = seen.entry(name.clone()).or_insert_with(|| (renew.clone(), Instant::now()));
            if e.0 != renew {
                *e = (renew, Instant::now());
            }
            let silent = e.1.elapsed();
            let r = if silent > ctx.cfg.node_monitor_grace {
                unreachable(&ctx, &node).await
            } else {
                reachable(&ctx, &node).await
            };
            if let Err(e) = r {
                tracing::warn!(node = %name, error = %format!("{e:#}"), "node lifecycle");
            }
        }
    }
}

fn taints(node: &Value) -> Vec<Value> {
    node.pointer("/spec/taints").and_then(Value::as_array).cloned().unwrap_or_default()
}

async fn reachable(ctx: &Ctx, node: &Value) -> anyhow::Result<()> {
    let t = taints(node);
    if !t.iter().any(|x| x["key"] == UNREACHABLE) {
        return Ok(());
    }
    let keep: Vec<Value> = t.into_iter().filter(|x| x["key"] != UNREACHABLE).collect();
    let patch = json!({"metadata": {"uid": meta(node, "uid")}, "spec": {"taints": keep}});
    ctx.client.patch("nodes", "", meta(node, "name"), &patch, false, false).await?;
    tracing::info!(node = %meta(node, "name"), "node is reachable again; taints removed");
    Ok(())
}

async fn unreachable(ctx: &Ctx, node: &Value) -> anyhow::Result<()> {
    let name = meta(node, "name");
    let c = &ctx.client;
    let mut conds: Vec<Value> =
        node.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    if conds.iter().any(|x| x["status"] != "Unknown") {
        let now = flotilla_client::runtime::now_rfc3339();
        for x in conds.iter_mut().filter(|x| x["status"] != "Unknown") {
            x["status"] = json!("Unknown");
            x["reason"] = json!("NodeStatusUnknown");
            x["message"] = json!("Kubelet stopped posting node status.");
            x["lastTransitionTime"] = json!(now);
        }
        let patch =
            json!({"metadata": {"uid": meta(node, "uid")}, "status": {"conditions": conds}});
        c.patch("nodes", "", name, &patch, false, true).await?;
        ctx.events.warning(
            node,
            "NodeNotReady",
            format!("Node {name} status is now: NodeNotReady"),
        );
    }
    let mut t = taints(node);
    let added = t
        .iter()
        .find(|x| x["key"] == UNREACHABLE && x["effect"] == "NoExecute")
        .and_then(|x| x["timeAdded"].as_str())
        .and_then(|s| s.parse::<jiff::Timestamp>().ok());
    let Some(added) = added else {
        let now = flotilla_client::runtime::now_rfc3339();
        t.retain(|x| x["key"] != UNREACHABLE);
        t.push(json!({"key": UNREACHABLE, "effect": "NoSchedule", "timeAdded": now}));
        t.push(json!({"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": now}));
        let patch = json!({"metadata": {"uid": meta(node, "uid")}, "spec": {"taints": t}});
        c.patch("nodes", "", name, &patch, false, false).await?;
        tracing::warn!(node = %name, "node stopped renewing its lease; tainted unreachable");
        return Ok(());
    };
    let tainted_for = jiff::Timestamp::now().duration_since(added).as_secs().max(0) as u64;
    for pod in ctx.inf("pods").list() {
        if pod.pointer("/spec/nodeName").and_then(Value::as_str) != Some(name)
            || matches!(pod_phase(&pod), "Succeeded" | "Failed")
        {
            continue;
        }
        let Some(limit) = toleration_seconds(&pod, ctx.cfg.default_unreachable_toleration) else {
            continue;
        };
        if tainted_for < limit.as_secs() {
            continue;
        }
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            precondition_uid: meta(&pod, "uid").into(),
            ..Default::default()
        };
        match c.delete("pods", meta(&pod, "namespace"), meta(&pod, "name"), &dp).await {
            Ok(_) => ctx.events.normal(
                &pod,
                "TaintManagerEviction",
                format!(
                    "Marking for deletion Pod {}/{}",
                    meta(&pod, "namespace"),
                    meta(&pod, "name")
                ),
            ),
            Err(e) if matches!(e.reason, Reason::NotFound | Reason::Conflict) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// How long `pod` tolerates the unreachable NoExecute taint: `None` forever.
pub fn toleration_seconds(pod: &Value, default: Duration) -> Option<Duration> {
    let tols = pod.pointer("/spec/tolerations").and_then(Value::as_array);
    let matching = tols.into_iter().flatten().find(|t| {
        let key_ok = t["key"]
            .as_str()
            .is_none_or(|k| k.is_empty() && t["operator"] == "Exists" || k == UNREACHABLE);
        let effect_ok = t["effect"].as_str().is_none_or(|e| e.is_empty() || e == "NoExecute");
        key_ok && effect_ok
    });
    match matching {
        None => Some(default),
        Some(t) => t["tolerationSeconds"].as_i64().map(|s| Duration::from_secs(s.max(0) as u64)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_tolerate_unreachable_nodes_for_their_toleration_seconds() {
        let d = Duration::from_secs(300);
        assert_eq!(toleration_seconds(&json!({"spec": {}}), d), Some(d));
        let p = json!({"spec": {"tolerations": [{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]}});
        assert_eq!(toleration_seconds(&p, d), Some(Duration::from_secs(5)));
        let forever = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        assert_eq!(toleration_seconds(&forever, d), None);
        let other = json!({"spec": {"tolerations": [{"key": "gpu", "operator": "Exists"}]}});
        assert_eq!(toleration_seconds(&other, d), Some(d));
    }
}
