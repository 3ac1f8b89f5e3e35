//! The columns `flotilla get` prints and the API server's Table responses carry (kubectl's
//! printers, per kind): one definition for both, so the CLI and kubectl show the same thing.

use crate::ResourceInfo;
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
    human((jiff::Timestamp::now().as_second() - t.as_second()).max(0))
}

fn human(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 3 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
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

pub fn columns(info: &ResourceInfo, wide: bool) -> Vec<&'static str> {
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
        "CertificateSigningRequest" => {
            vec!["NAME", "AGE", "SIGNERNAME", "REQUESTOR", "REQUESTEDDURATION", "CONDITION"]
        }
        "RoleBinding" | "ClusterRoleBinding" => vec!["NAME", "ROLE", "AGE"],
        "Role" | "ClusterRole" => vec!["NAME", "CREATED AT"],
        "ServiceAccount" => vec!["NAME", "SECRETS", "AGE"],
        "Lease" => vec!["NAME", "HOLDER", "AGE"],
        "PodDisruptionBudget" => {
            vec!["NAME", "MIN AVAILABLE", "MAX UNAVAILABLE", "ALLOWED DISRUPTIONS", "AGE"]
        }
        _ => vec!["NAME", "AGE"],
    };
    if wide {
        match info.kind {
            "Pod" => c.extend(["IP", "NODE"]),
            "Deployment" | "ReplicaSet" => c.extend(["CONTAINERS", "IMAGES", "SELECTOR"]),
            "Service" => c.push("SELECTOR"),
            "Node" => c.extend(["INTERNAL-IP", "KERNEL-VERSION"]),
            "RoleBinding" | "ClusterRoleBinding" => {
                c.extend(["USERS", "GROUPS", "SERVICEACCOUNTS"])
            }
            _ => {}
        }
    }
    c
}

pub fn row(info: &ResourceInfo, o: &Value, wide: bool) -> Vec<String> {
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
        "CertificateSigningRequest" => {
            let mut conds: Vec<&str> = o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| s(c, "/type"))
                .collect();
            if !s(o, "/status/certificate").is_empty() {
                conds.push("Issued");
            }
            let exp = o.pointer("/spec/expirationSeconds").and_then(Value::as_i64);
            vec![
                name,
                a,
                s(o, "/spec/signerName").to_string(),
                s(o, "/spec/username").to_string(),
                exp.map_or("<none>".into(), human),
                if conds.is_empty() { "Pending".into() } else { conds.join(",") },
            ]
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let mut r =
                vec![name, format!("{}/{}", s(o, "/roleRef/kind"), s(o, "/roleRef/name")), a];
            if wide {
                let subjects =
                    o.get("subjects").and_then(Value::as_array).cloned().unwrap_or_default();
                let of = |kind: &str| -> String {
                    let names: Vec<String> = subjects
                        .iter()
                        .filter(|x| s(x, "/kind") == kind)
                        .map(|x| match s(x, "/namespace") {
                            "" => s(x, "/name").to_string(),
                            ns => format!("{ns}/{}", s(x, "/name")),
                        })
                        .collect();
                    names.join(", ")
                };
                r.extend([of("User"), of("Group"), of("ServiceAccount")]);
            }
            return r;
        }
        "Role" | "ClusterRole" => vec![name, s(o, "/metadata/creationTimestamp").to_string()],
        "ServiceAccount" => {
            let n = o.get("secrets").and_then(Value::as_array).map_or(0, Vec::len);
            vec![name, n.to_string(), a]
        }
        "Lease" => vec![name, s(o, "/spec/holderIdentity").to_string(), a],
        "PodDisruptionBudget" => {
            // An int-or-string, "N/A" when unset (kubectl's printer).
            let n = |p: &str| match o.pointer(p) {
                Some(Value::String(v)) => v.clone(),
                Some(Value::Number(v)) => v.to_string(),
                _ => "N/A".into(),
            };
            let allowed = i(o, "/status/disruptionsAllowed").to_string();
            vec![name, n("/spec/minAvailable"), n("/spec/maxUnavailable"), allowed, a]
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

/// `items` as a `meta.k8s.io/v1` Table (kubectl's server-side printing), written as JSON
/// to `out`. Columns beyond the default ones have priority 1: `-o wide` shows them. Each row
/// carries the object as `include` asks: "Object", "None", or its metadata (the default,
/// PartialObjectMetadata). Without `with_columns` the definitions are left empty, as a
/// watch sends them only once.
///
/// Written straight to bytes: building a Value per row and serializing it again was most of
/// a large table's time.
pub fn write_table<'a>(
    info: &ResourceInfo,
    items: impl IntoIterator<Item = &'a Value>,
    list_meta: &Value,
    include: &str,
    with_columns: bool,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(br#"{"kind":"Table","apiVersion":"meta.k8s.io/v1","metadata":"#);
    write_json(out, list_meta);
    out.extend_from_slice(br#","columnDefinitions":"#);
    write_json(out, &if with_columns { column_definitions(info) } else { Vec::new() });
    out.extend_from_slice(br#","rows":["#);
    for (n, o) in items.into_iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"cells":"#);
        write_json(out, &row(info, o, true));
        out.extend_from_slice(br#","object":"#);
        match include {
            "Object" => write_json(out, o),
            "None" => out.extend_from_slice(b"null"),
            _ => write_partial(o.get("metadata").unwrap_or(&Value::Null), out),
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
}

fn column_definitions(info: &ResourceInfo) -> Vec<Value> {
    let narrow = columns(info, false).len();
    columns(info, true)
        .iter()
        .enumerate()
        .map(|(n, c)| {
            let name = c.chars().next().map_or_else(String::new, |f| {
                f.to_string() + &c[f.len_utf8()..].to_ascii_lowercase()
            });
            let format = if *c == "NAME" { "name" } else { "" };
            serde_json::json!({"name": name, "type": "string", "format": format,
                "description": "", "priority": i32::from(n >= narrow)})
        })
        .collect()
}

/// An object's metadata as a `meta.k8s.io/v1` PartialObjectMetadata, written to `out`.
pub fn write_partial(metadata: &Value, out: &mut Vec<u8>) {
    out.extend_from_slice(
        br#"{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":"#,
    );
    write_json(out, metadata);
    out.push(b'}');
}

fn write_json(out: &mut Vec<u8>, v: &impl serde::Serialize) {
    // Values and strings serialize into a Vec without error.
    let _ = serde_json::to_writer(&mut *out, v);
}
