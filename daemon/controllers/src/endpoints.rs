//! Endpoints controller: for every Service with a selector, an Endpoints object of the same
//! name listing the matching pods' addresses (ready ones in `addresses`, the others in
//! `notReadyAddresses` unless `publishNotReadyAddresses`), with the Service's ports resolved
//! against each pod (named target ports may differ per pod, so pods are grouped into subsets
//! by their resolved ports). Terminating and finished pods are left out.

use super::Ctx;
use anyhow::Context;
use flotilla_api::error::Reason;
use flotilla_api::selector::LabelSelector;
use flotilla_client::runtime::{
    labels, meta, on_change, pod_active, pod_ready, run_workers, Reconciled, WorkQueue,
};
use flotilla_client::{object_key, Change, DeleteParams};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

pub async fn run(ctx: Arc<Ctx>) {
    let queue = WorkQueue::new();
    super::enqueue_self(ctx.inf("services"), queue.clone());
    // An Endpoints object changed by someone else is put back.
    super::enqueue_self(ctx.inf("endpoints"), queue.clone());
    let (q, svcs) = (queue.clone(), Arc::downgrade(ctx.inf("services")));
    on_change(ctx.inf("pods"), move |c| {
        let Some(svcs) = svcs.upgrade() else { return };
        let mut pods = vec![];
        match c {
            Change::Added(p) | Change::Deleted(p) => pods.push(p.clone()),
            Change::Modified { old, new } => {
                pods.push(new.clone());
                if labels(old) != labels(new) {
                    pods.push(old.clone());
                }
            }
            Change::Resynced => {
                for s in svcs.list() {
                    q.add(object_key(&s));
                }
            }
        }
        for p in pods {
            let l = labels(&p);
            for s in svcs.list_namespace(meta(&p, "namespace")) {
                if selector(&s).is_some_and(|sel| sel.matches(&l)) {
                    q.add(object_key(&s));
                }
            }
        }
    });
    run_workers("endpoints", queue, 2, move |key| {
        let ctx = ctx.clone();
        async move { reconcile(&ctx, &key).await }
    })
    .await
}

/// The Service's selector; `None` for a Service without one (its Endpoints are the user's).
fn selector(svc: &Value) -> Option<LabelSelector> {
    let m = svc.pointer("/spec/selector").and_then(Value::as_object).filter(|m| !m.is_empty())?;
    let reqs = m
        .iter()
        .map(|(k, v)| flotilla_api::selector::Requirement {
            key: k.clone(),
            op: flotilla_api::selector::Op::Eq,
            values: vec![v.as_str().unwrap_or("").to_string()],
        })
        .collect();
    Some(LabelSelector { requirements: reqs, match_nothing: false })
}

/// A Service port's target on one pod: a number, a container port name, or the port itself.
fn target_port(sp: &Value, pod: &Value) -> Option<i64> {
    match &sp["targetPort"] {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)?
            .iter()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .find(|p| {
                p["name"].as_str() == Some(name)
                    && p["protocol"].as_str().unwrap_or("TCP")
                        == sp["protocol"].as_str().unwrap_or("TCP")
            })
            .and_then(|p| p["containerPort"].as_i64()),
        _ => sp["port"].as_i64(),
    }
}

/// The subsets for `svc` from the pods of its namespace; `None` when the Service has no selector.
pub fn subsets(svc: &Value, pods: &[Arc<Value>]) -> Option<Vec<Value>> {
    let sel = selector(svc)?;
    let publish =
        svc.pointer("/spec/publishNotReadyAddresses").and_then(Value::as_bool).unwrap_or(false);
    let ports: Vec<Value> =
        svc.pointer("/spec/ports").and_then(Value::as_array).cloned().unwrap_or_default();
    // Resolved ports (as JSON text, to group by) → (ready, not ready) addresses.
    let mut groups: BTreeMap<String, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    for pod in pods {
        let ip = pod.pointer("/status/podIP").and_then(Value::as_str).unwrap_or("");
        if ip.is_empty() || !pod_active(pod) || !sel.matches(&labels(pod)) {
            continue;
        }
        let resolved: Vec<Value> = ports
            .iter()
            .filter_map(|sp| {
                let port = target_port(sp, pod)?;
                let mut ep =
                    json!({"port": port, "protocol": sp["protocol"].as_str().unwrap_or("TCP")});
                if let Some(n) = sp["name"].as_str().filter(|n| !n.is_empty()) {
                    ep["name"] = json!(n);
                }
                Some(ep)
            })
            .collect();
        if resolved.is_empty() && !ports.is_empty() {
            continue;
        }
        let mut addr = json!({"ip": ip, "targetRef": {"kind": "Pod", "name": meta(pod, "name"),
            "namespace": meta(pod, "namespace"), "uid": meta(pod, "uid")}});
        if let Some(n) =
            pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty())
        {
            addr["nodeName"] = json!(n);
        }
        let host = pod.pointer("/spec/hostname").and_then(Value::as_str);
        if host.is_some()
            && pod.pointer("/spec/subdomain").and_then(Value::as_str) == Some(meta(svc, "name"))
        {
            addr["hostname"] = json!(host);
        }
        let g = groups.entry(serde_json::to_string(&resolved).unwrap_or_default()).or_default();
        if publish || pod_ready(pod) {
            g.0.push(addr);
        } else {
            g.1.push(addr);
        }
    }
    Some(
        groups
            .into_iter()
            .map(|(ports, (mut ready, mut not_ready))| {
                let by_ip = |a: &Value, b: &Value| a["ip"].as_str().cmp(&b["ip"].as_str());
                ready.sort_by(by_ip);
                not_ready.sort_by(by_ip);
                let mut s = json!({});
                if !ready.is_empty() {
                    s["addresses"] = json!(ready);
                }
                if !not_ready.is_empty() {
                    s["notReadyAddresses"] = json!(not_ready);
                }
                let ports: Value = serde_json::from_str(&ports).unwrap_or(json!([]));
                if ports.as_array().is_some_and(|p| !p.is_empty()) {
                    s["ports"] = ports;
                }
                s
            })
            .collect(),
    )
}

async fn reconcile(ctx: &Ctx, key: &str) -> Reconciled {
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    let existing = ctx.inf("endpoints").get(key);
    let c = &ctx.client;
    let Some(svc) = ctx.inf("services").get(key) else {
        // The Service is gone: so are the Endpoints we made for it.
        if let Some(ep) = existing.filter(|e| labels(e).contains_key(MANAGED)) {
            let dp =
                DeleteParams { precondition_uid: meta(&ep, "uid").into(), ..Default::default() };
            match c.delete("endpoints", ns, name, &dp).await {
                Ok(_) => {}
                Err(e) if matches!(e.reason, Reason::NotFound | Reason::Conflict) => {}
                Err(e) => return Err(e).context("deleting Endpoints"),
            }
        }
        return Ok(None);
    };
    let Some(subsets) = subsets(&svc, &ctx.inf("pods").list_namespace(ns)) else { return Ok(None) };
    let mut l = labels(&svc);
    l.insert(MANAGED.into(), "endpoint-controller".into());
    let want_labels = json!(l);
    match existing {
        Some(ep)
            if ep.get("subsets").cloned().unwrap_or(json!([])) == json!(subsets)
                && ep["metadata"]["labels"] == want_labels => {}
        Some(ep) => {
            let mut ep = (*ep).clone();
            ep["subsets"] = json!(subsets);
            ep["metadata"]["labels"] = want_labels;
            c.update("endpoints", ns, &ep).await.context("updating Endpoints")?;
        }
        None => {
            let ep = json!({"apiVersion": "v1", "kind": "Endpoints",
                "metadata": {"name": name, "namespace": ns, "labels": want_labels}, "subsets": subsets});
            match c.create("endpoints", ns, &ep).await {
                Ok(_) => {}
                Err(e) if e.reason == Reason::AlreadyExists => {}
                Err(e) => return Err(e).context("creating Endpoints"),
            }
        }
    }
    Ok(None)
}

/// Marks Endpoints this controller manages (Kubernetes: `endpoints.kubernetes.io/managed-by`).
const MANAGED: &str = "endpoints.kubernetes.io/managed-by";

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ready: bool, port_name: &str, port: i64) -> Arc<Value> {
        Arc::new(
            json!({"metadata": {"name": name, "namespace": "default", "uid": name, "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": port_name, "containerPort": port}]}]},
            "status": {"phase": "Running", "podIP": ip,
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}}),
        )
    }

    fn svc(target: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": target}]}})
    }

    #[test]
    fn ready_and_not_ready_pods_land_in_their_lists() {
        let pods = vec![
            pod("a", "10.0.0.2", true, "http", 8080),
            pod("b", "10.0.0.1", false, "http", 8080),
        ];
        let s = subsets(&svc(json!(8080)), &pods).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0]["addresses"][0]["ip"], "10.0.0.2");
        assert_eq!(s[0]["notReadyAddresses"][0]["ip"], "10.0.0.1");
        assert_eq!(s[0]["ports"], json!([{"name": "http", "port": 8080, "protocol": "TCP"}]));
    }

    #[test]
    fn named_target_ports_resolve_per_pod_into_subsets() {
        let pods =
            vec![pod("a", "10.0.0.1", true, "web", 8080), pod("b", "10.0.0.2", true, "web", 9090)];
        let s = subsets(&svc(json!("web")), &pods).unwrap();
        assert_eq!(s.len(), 2);
        let ports: Vec<i64> = s.iter().map(|x| x["ports"][0]["port"].as_i64().unwrap()).collect();
        assert_eq!(ports, vec![8080, 9090]);
    }

    #[test]
    fn pods_without_ip_terminating_or_unmatched_are_left_out_and_no_selector_means_hands_off() {
        let mut gone = (*pod("g", "10.0.0.3", true, "http", 80)).clone();
        gone["metadata"]["deletionTimestamp"] = json!("2020-01-01T00:00:00Z");
        let mut other = (*pod("o", "10.0.0.4", true, "http", 80)).clone();
        other["metadata"]["labels"] = json!({"app": "db"});
        let pods = vec![pod("n", "", true, "http", 80), Arc::new(gone), Arc::new(other)];
        assert_eq!(subsets(&svc(json!(80)), &pods).unwrap(), Vec::<Value>::new());
        let mut manual = svc(json!(80));
        manual["spec"].as_object_mut().unwrap().remove("selector");
        assert!(subsets(&manual, &pods).is_none());
    }
}
