//! Output as kubectl prints it: aligned tables with per-kind columns, YAML, JSON, names.

use crate::Output;
use anyhow::Result;
use flotilla_api::ResourceInfo;
use flotilla_client::{EventType, WatchEvent};
use serde_json::Value;

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn i(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

/// `5s`, `3m`, `2h`, `4d`, like kubectl's ages.
pub fn age(ts: &str) -> String {
    let Ok(t) = ts.parse::<jiff::Timestamp>() else { return "<unknown>".into() };
    let secs = (jiff::Timestamp::now().as_second() - t.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 3 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

pub fn table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|x| x.chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[c]));
            }
        }
        println!("{}", line.trim_end());
    }
}

fn pod_status(p: &Value) -> String {
    if !s(p, "/metadata/deletionTimestamp").is_empty() {
        return "Terminating".into();
    }
    let mut reason = s(p, "/status/reason").to_string();
    if reason.is_empty() {
        reason = s(p, "/status/phase").to_string();
    }
    for c in p.pointer("/status/containerStatuses").and_then(Value::as_array).into_iter().flatten()
    {
        let w = s(c, "/state/waiting/reason");
        let t = s(c, "/state/terminated/reason");
        if !w.is_empty() {
            reason = w.to_string();
        } else if !t.is_empty() {
            reason = t.to_string();
        }
    }
    reason
}

fn columns(info: &ResourceInfo, wide: bool) -> Vec<&'static str> {
    let mut c = match info.kind {
        "Pod" => vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "Deployment" => vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "ReplicaSet" => vec!["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
        "StatefulSet" => vec!["NAME", "READY", "AGE"],
        "DaemonSet" => {
            vec!["NAME", "DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
        }
        "Service" => vec!["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"],
        "Namespace" => vec!["NAME", "STATUS", "AGE"],
        "Node" => vec!["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
        "ConfigMap" => vec!["NAME", "DATA", "AGE"],
        "Secret" => vec!["NAME", "TYPE", "DATA", "AGE"],
        "Job" => vec!["NAME", "STATUS", "COMPLETIONS", "AGE"],
        "CronJob" => vec!["NAME", "SCHEDULE", "SUSPEND", "ACTIVE", "LAST SCHEDULE", "AGE"],
        "Endpoints" => vec!["NAME", "ENDPOINTS", "AGE"],
        "ControllerRevision" => vec!["NAME", "CONTROLLER", "REVISION", "AGE"],
        "Event" => vec!["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        _ => vec!["NAME", "AGE"],
    };
    if wide {
        match info.kind {
            "Pod" => c.extend(["IP", "NODE"]),
            "Deployment" | "ReplicaSet" => c.extend(["CONTAINERS", "IMAGES", "SELECTOR"]),
            "Service" => c.push("SELECTOR"),
            "Node" => c.extend(["INTERNAL-IP", "KERNEL-VERSION"]),
            _ => {}
        }
    }
    c
}

fn row(info: &ResourceInfo, o: &Value, wide: bool) -> Vec<String> {
    let name = s(o, "/metadata/name").to_string();
    let a = age(s(o, "/metadata/creationTimestamp"));
    let mut r = match info.kind {
        "Pod" => {
            let cs = o
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let total = o.pointer("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len);
            let ready =
                cs.iter().filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true)).count();
            let restarts: i64 = cs.iter().map(|c| i(c, "/restartCount")).sum();
            vec![name, format!("{ready}/{total}"), pod_status(o), restarts.to_string(), a]
        }
        "Deployment" => vec![
            name,
            format!("{}/{}", i(o, "/status/readyReplicas"), i(o, "/spec/replicas")),
            i(o, "/status/updatedReplicas").to_string(),
            i(o, "/status/availableReplicas").to_string(),
            a,
        ],
        "ReplicaSet" => vec![
            name,
            i(o, "/spec/replicas").to_string(),
            i(o, "/status/replicas").to_string(),
            i(o, "/status/readyReplicas").to_string(),
            a,
        ],
        "StatefulSet" => {
            vec![name, format!("{}/{}", i(o, "/status/readyReplicas"), i(o, "/spec/replicas")), a]
        }
        "DaemonSet" => vec![
            name,
            i(o, "/status/desiredNumberScheduled").to_string(),
            i(o, "/status/currentNumberScheduled").to_string(),
            i(o, "/status/numberReady").to_string(),
            i(o, "/status/updatedNumberScheduled").to_string(),
            i(o, "/status/numberAvailable").to_string(),
            a,
        ],
        "Service" => {
            let ports: Vec<String> = o
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| {
                    let np = i(p, "/nodePort");
                    let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                    if np > 0 {
                        format!("{}:{np}/{proto}", i(p, "/port"))
                    } else {
                        format!("{}/{proto}", i(p, "/port"))
                    }
                })
                .collect();
            let ip = s(o, "/spec/clusterIP");
            vec![
                name,
                s(o, "/spec/type").to_string(),
                if ip.is_empty() { "<none>".into() } else { ip.to_string() },
                "<none>".into(),
                if ports.is_empty() { "<none>".into() } else { ports.join(",") },
                a,
            ]
        }
        "Namespace" => vec![name, s(o, "/status/phase").to_string(), a],
        "ControllerRevision" => {
            let owner = o
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
                .map(|r| {
                    // kubectl's form: statefulset.apps/web.
                    let kind = s(r, "/kind").to_lowercase();
                    match s(r, "/apiVersion").split_once('/') {
                        Some((group, _)) => format!("{kind}.{group}/{}", s(r, "/name")),
                        None => format!("{kind}/{}", s(r, "/name")),
                    }
                })
                .unwrap_or_else(|| "<none>".into());
            vec![name, owner, i(o, "/revision").to_string(), a]
        }
        "Node" => {
            let ready = o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|c| s(c, "/type") == "Ready")
                .map(|c| if s(c, "/status") == "True" { "Ready" } else { "NotReady" })
                .unwrap_or("Unknown");
            let mut st = ready.to_string();
            if o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
                st.push_str(",SchedulingDisabled");
            }
            let roles: Vec<&str> = o
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
                .collect();
            let roles = if roles.is_empty() { "<none>".to_string() } else { roles.join(",") };
            vec![name, st, roles, a, s(o, "/status/nodeInfo/kubeletVersion").to_string()]
        }
        "ConfigMap" => {
            let n = o.get("data").and_then(Value::as_object).map_or(0, |m| m.len())
                + o.get("binaryData").and_then(Value::as_object).map_or(0, |m| m.len());
            vec![name, n.to_string(), a]
        }
        "Secret" => {
            let n = o.get("data").and_then(Value::as_object).map_or(0, |m| m.len());
            vec![name, s(o, "/type").to_string(), n.to_string(), a]
        }
        "Job" => {
            let done = o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|c| {
                    s(c, "/status") == "True" && matches!(s(c, "/type"), "Complete" | "Failed")
                })
                .map(|c| s(c, "/type").to_string())
                .unwrap_or_else(|| "Running".into());
            let want = o.pointer("/spec/completions").and_then(Value::as_i64).unwrap_or(1);
            vec![name, done, format!("{}/{want}", i(o, "/status/succeeded")), a]
        }
        "CronJob" => {
            let active = o.pointer("/status/active").and_then(Value::as_array).map_or(0, Vec::len);
            let last = s(o, "/status/lastScheduleTime");
            vec![
                name,
                s(o, "/spec/schedule").to_string(),
                o.pointer("/spec/suspend")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    .to_string()
                    .replace("true", "True")
                    .replace("false", "False"),
                active.to_string(),
                if last.is_empty() { "<none>".into() } else { age(last) },
                a,
            ]
        }
        "Endpoints" => {
            let mut eps = Vec::new();
            for sub in o.get("subsets").and_then(Value::as_array).into_iter().flatten() {
                for addr in sub.get("addresses").and_then(Value::as_array).into_iter().flatten() {
                    for p in sub.get("ports").and_then(Value::as_array).into_iter().flatten() {
                        eps.push(format!("{}:{}", s(addr, "/ip"), i(p, "/port")));
                    }
                }
            }
            vec![name, if eps.is_empty() { "<none>".into() } else { eps.join(",") }, a]
        }
        "Event" => {
            let last =
                [s(o, "/lastTimestamp"), s(o, "/eventTime"), s(o, "/metadata/creationTimestamp")]
                    .into_iter()
                    .find(|t| !t.is_empty())
                    .unwrap_or("");
            vec![
                age(last),
                s(o, "/type").to_string(),
                s(o, "/reason").to_string(),
                format!(
                    "{}/{}",
                    s(o, "/involvedObject/kind").to_ascii_lowercase(),
                    s(o, "/involvedObject/name")
                ),
                s(o, "/message").to_string(),
            ]
        }
        _ => vec![name, a],
    };
    if wide {
        match info.kind {
            "Pod" => {
                let ip = s(o, "/status/podIP");
                let node = s(o, "/spec/nodeName");
                r.push(if ip.is_empty() { "<none>".into() } else { ip.into() });
                r.push(if node.is_empty() { "<none>".into() } else { node.into() });
            }
            "Deployment" | "ReplicaSet" => {
                let cs = o
                    .pointer("/spec/template/spec/containers")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                r.push(cs.iter().map(|c| s(c, "/name")).collect::<Vec<_>>().join(","));
                r.push(cs.iter().map(|c| s(c, "/image")).collect::<Vec<_>>().join(","));
                let sel = o
                    .pointer("/spec/selector/matchLabels")
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                r.push(sel);
            }
            "Service" => {
                let sel = o
                    .pointer("/spec/selector")
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_else(|| "<none>".into());
                r.push(sel);
            }
            "Node" => {
                let ip = o
                    .pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|a| s(a, "/type") == "InternalIP")
                    .map(|a| s(a, "/address").to_string())
                    .unwrap_or_else(|| "<none>".into());
                r.push(ip);
                r.push(s(o, "/status/nodeInfo/kernelVersion").to_string());
            }
            _ => {}
        }
    }
    r
}

/// `deployment.apps`, `pod`: how kubectl names a kind in its messages.
pub fn kind_ref(info: &ResourceInfo) -> String {
    let k = info.kind.to_ascii_lowercase();
    if info.group.is_empty() {
        k
    } else {
        format!("{k}.{}", info.group)
    }
}

/// `deployment.apps/web`.
pub fn ref_name(info: &ResourceInfo, name: &str) -> String {
    format!("{}/{name}", kind_ref(info))
}

fn obj_ref(info: &ResourceInfo, o: &Value) -> String {
    ref_name(info, s(o, "/metadata/name"))
}

pub fn objects(
    info: &ResourceInfo,
    items: &[Value],
    output: Option<Output>,
    show_ns: bool,
    prefix_kind: bool,
) -> Result<()> {
    match output {
        Some(Output::Json | Output::Yaml) => {
            // One object prints as itself, several as a List, as kubectl does.
            let v = if items.len() == 1 {
                items[0].clone()
            } else {
                serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
            };
            if output == Some(Output::Json) {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", serde_yaml::to_string(&v)?);
            }
        }
        Some(Output::Name) => {
            for o in items {
                println!("{}", obj_ref(info, o));
            }
        }
        None | Some(Output::Wide) => {
            let wide = output == Some(Output::Wide);
            let mut rows = Vec::new();
            let mut head: Vec<String> = columns(info, wide).iter().map(|c| c.to_string()).collect();
            if show_ns {
                head.insert(0, "NAMESPACE".into());
            }
            rows.push(head);
            for o in items {
                let mut r = row(info, o, wide);
                if prefix_kind && info.kind != "Event" {
                    r[0] = obj_ref(info, o);
                }
                if show_ns {
                    r.insert(0, s(o, "/metadata/namespace").to_string());
                }
                rows.push(r);
            }
            table(&rows);
        }
    }
    Ok(())
}

/// One watch event as `get -w` prints it: a row per change (no re-alignment, as kubectl).
pub fn watch_row(
    info: &ResourceInfo,
    ev: &WatchEvent,
    output: Option<Output>,
    show_ns: bool,
    header: bool,
) -> Result<()> {
    match output {
        Some(Output::Json) => println!(
            "{}",
            serde_json::to_string(&serde_json::json!({
            "type": format!("{:?}", ev.kind).to_ascii_uppercase(), "object": ev.object}))?
        ),
        Some(Output::Yaml) => print!("---\n{}", serde_yaml::to_string(&ev.object)?),
        Some(Output::Name) => println!("{}", obj_ref(info, &ev.object)),
        None | Some(Output::Wide) => {
            let wide = output == Some(Output::Wide);
            let mut r = row(info, &ev.object, wide);
            if ev.kind == EventType::Deleted && info.kind == "Pod" {
                r[2] = "Terminated".into();
            }
            if show_ns {
                r.insert(0, s(&ev.object, "/metadata/namespace").to_string());
            }
            if header {
                let mut head: Vec<String> =
                    columns(info, wide).iter().map(|c| c.to_string()).collect();
                if show_ns {
                    head.insert(0, "NAMESPACE".into());
                }
                println!("{}", head.join("   "));
            }
            println!("{}", r.join("   "));
        }
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    Ok(())
}

pub fn describe(info: &ResourceInfo, o: &Value, events: &[Value]) -> Result<()> {
    let mut lines = vec![("Name:", s(o, "/metadata/name").to_string())];
    if info.namespaced {
        lines.push(("Namespace:", s(o, "/metadata/namespace").to_string()));
    }
    let kv = |ptr: &str| {
        o.pointer(ptr)
            .and_then(Value::as_object)
            .filter(|m| !m.is_empty())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join("\n              ")
            })
            .unwrap_or_else(|| "<none>".into())
    };
    lines.push(("Labels:", kv("/metadata/labels")));
    lines.push(("Annotations:", kv("/metadata/annotations")));
    lines.push(("CreationTimestamp:", s(o, "/metadata/creationTimestamp").to_string()));
    if !s(o, "/metadata/deletionTimestamp").is_empty() {
        lines.push(("DeletionTimestamp:", s(o, "/metadata/deletionTimestamp").to_string()));
    }
    for (k, v) in &lines {
        println!("{k:<14}{v}");
    }
    for part in ["spec", "data", "status"] {
        if let Some(v) = o.get(part) {
            let title = format!("{}{}:", part[..1].to_ascii_uppercase(), &part[1..]);
            println!("{title}");
            for l in serde_yaml::to_string(v)?.lines() {
                println!("  {l}");
            }
        }
    }
    if events.is_empty() {
        println!("Events:       <none>");
    } else {
        println!("Events:");
        let mut rows = vec![vec![
            "  Type".to_string(),
            "Reason".into(),
            "Age".into(),
            "From".into(),
            "Message".into(),
        ]];
        for e in events {
            let last =
                [s(e, "/lastTimestamp"), s(e, "/eventTime"), s(e, "/metadata/creationTimestamp")]
                    .into_iter()
                    .find(|t| !t.is_empty())
                    .unwrap_or("");
            rows.push(vec![
                format!("  {}", s(e, "/type")),
                s(e, "/reason").into(),
                age(last),
                s(e, "/source/component").into(),
                s(e, "/message").into(),
            ]);
        }
        table(&rows);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_like_kubectl() {
        let now = jiff::Timestamp::now();
        let ago = |secs: i64| (now - jiff::SignedDuration::from_secs(secs)).to_string();
        assert_eq!(age(&ago(5)), "5s");
        assert_eq!(age(&ago(300)), "5m");
        assert_eq!(age(&ago(5 * 3600)), "5h");
        assert_eq!(age(&ago(3 * 86400)), "3d");
        assert_eq!(age("garbage"), "<unknown>");
    }

    #[test]
    fn service_rows() {
        let info = flotilla_api::lookup("svc").unwrap();
        let svc = serde_json::json!({"metadata": {"name": "web", "creationTimestamp": jiff::Timestamp::now().to_string()},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]}});
        let r = row(info, &svc, false);
        assert_eq!(r[..5], ["web", "NodePort", "10.96.0.10", "<none>", "80:30080/TCP"]);
    }
}
