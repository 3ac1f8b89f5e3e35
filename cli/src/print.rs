//! Output as kubectl prints it: aligned tables with per-kind columns, YAML, JSON, names.

use crate::Output;
use anyhow::Result;
pub use flotilla_api::table::age;
use flotilla_api::table::{columns, row};
use flotilla_api::ResourceInfo;
use flotilla_client::{EventType, WatchEvent};
use serde_json::Value;

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
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

/// Whether `-o json|yaml` keeps `metadata.managedFields`, which kubectl hides unless
/// `--show-managed-fields`: set once, from the command line.
pub static SHOW_MANAGED_FIELDS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// `o` as `-o json|yaml` prints it.
fn shown(o: &Value) -> Value {
    let mut o = o.clone();
    if !SHOW_MANAGED_FIELDS.load(std::sync::atomic::Ordering::Relaxed) {
        if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("managedFields");
        }
    }
    o
}

/// `-o json|yaml` of what a `get` found: the object itself when one object was asked for by
/// name, else a `List` (also of one item, or none), as kubectl prints them.
pub fn json_or_yaml(items: &[Value], one_named: bool, output: Output) -> Result<()> {
    let v = match items {
        [one] if one_named => shown(one),
        _ => serde_json::json!({"apiVersion": "v1", "kind": "List",
            "items": items.iter().map(shown).collect::<Vec<_>>(),
            "metadata": {"resourceVersion": ""}}),
    };
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", serde_yaml::to_string(&v)?);
    }
    Ok(())
}

pub fn objects(
    info: &ResourceInfo,
    items: &[Value],
    output: Option<Output>,
    show_ns: bool,
    prefix_kind: bool,
) -> Result<()> {
    match output {
        Some(o @ (Output::Json | Output::Yaml)) => json_or_yaml(items, items.len() == 1, o)?,
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
            "type": format!("{:?}", ev.kind).to_ascii_uppercase(), "object": shown(&ev.object)}))?
        ),
        Some(Output::Yaml) => print!("---\n{}", serde_yaml::to_string(&shown(&ev.object))?),
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
