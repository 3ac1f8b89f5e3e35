//! `flotilla top pods|nodes`: kubectl top over the API's metrics (gathered from the agents).

use anyhow::{bail, Result};
use flotilla_api::proto::MetricsRequest;
use flotilla_api::quantity::Quantity;
use serde_json::Value;

use crate::print::table;
use crate::{server_error, Ctx};

#[derive(clap::Subcommand)]
pub enum Top {
    /// CPU and memory of pods (and with --containers, of each container).
    Pods {
        name: Option<String>,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short = 'l', long, default_value = "")]
        selector: String,
        /// One line per container.
        #[arg(long)]
        containers: bool,
        /// Sort by "cpu" or "memory" (highest first).
        #[arg(long)]
        sort_by: Option<String>,
    },
    /// CPU and memory of nodes, also as a share of their allocatable.
    Nodes {
        name: Option<String>,
        #[arg(short = 'l', long, default_value = "")]
        selector: String,
        #[arg(long)]
        sort_by: Option<String>,
    },
}

/// (millicores, bytes) of a usage object.
fn usage(u: &Value) -> (i128, i128) {
    let q = |k: &str| u[k].as_str().and_then(|s| Quantity::parse(s).ok());
    (q("cpu").map_or(0, |c| c.milli_value()), q("memory").map_or(0, |m| m.value()))
}

fn cpu(m: i128) -> String {
    format!("{m}m")
}

fn mem(b: i128) -> String {
    format!("{}Mi", b / (1024 * 1024))
}

fn sort(rows: &mut [(Vec<String>, (i128, i128))], by: &Option<String>) -> Result<()> {
    match by.as_deref() {
        None => {}
        Some("cpu") => rows.sort_by_key(|r| std::cmp::Reverse(r.1 .0)),
        Some("memory") => rows.sort_by_key(|r| std::cmp::Reverse(r.1 .1)),
        Some(o) => bail!("--sort-by takes cpu or memory, not {o:?}"),
    }
    Ok(())
}

pub async fn run(ctx: &Ctx, t: Top) -> Result<()> {
    let (resource, name, ns, selector) = match &t {
        Top::Pods { name, all_namespaces, selector, .. } => (
            "pods",
            name.clone(),
            if *all_namespaces { String::new() } else { ctx.namespace.clone() },
            selector.clone(),
        ),
        Top::Nodes { name, selector, .. } => {
            ("nodes", name.clone(), String::new(), selector.clone())
        }
    };
    let req = MetricsRequest {
        resource: resource.into(),
        namespace: ns,
        label_selector: selector,
        name: name.clone().unwrap_or_default(),
    };
    let (items, warnings) = ctx.client.metrics(req).await.map_err(server_error)?;
    for w in &warnings {
        eprintln!("Warning: {w}");
    }
    if items.is_empty() {
        match name {
            Some(n) => bail!("metrics not available yet for {resource} {n}"),
            None => bail!("metrics not available yet"),
        }
    }
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    match t {
        Top::Pods { all_namespaces, containers, sort_by, .. } => {
            let mut head = Vec::new();
            if all_namespaces {
                head.push("NAMESPACE".to_string());
            }
            head.push(if containers { "POD" } else { "NAME" }.to_string());
            if containers {
                head.push("NAME".into());
            }
            head.extend(["CPU(cores)".to_string(), "MEMORY(bytes)".to_string()]);
            let mut rows = Vec::new();
            for p in &items {
                let mut prefix = Vec::new();
                if all_namespaces {
                    prefix.push(s(&p["metadata"]["namespace"]));
                }
                prefix.push(s(&p["metadata"]["name"]));
                let cs = p["containers"].as_array().cloned().unwrap_or_default();
                if containers {
                    for c in &cs {
                        let u = usage(&c["usage"]);
                        let mut r = prefix.clone();
                        r.extend([s(&c["name"]), cpu(u.0), mem(u.1)]);
                        rows.push((r, u));
                    }
                } else {
                    let u = cs
                        .iter()
                        .map(|c| usage(&c["usage"]))
                        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
                    prefix.extend([cpu(u.0), mem(u.1)]);
                    rows.push((prefix, u));
                }
            }
            sort(&mut rows, &sort_by)?;
            let mut out = vec![head];
            out.extend(rows.into_iter().map(|r| r.0));
            table(&out);
        }
        Top::Nodes { sort_by, .. } => {
            let nodes = ctx
                .client
                .list_all("nodes", "", &Default::default())
                .await
                .map_err(server_error)?
                .items;
            let alloc = |name: &str| -> (i128, i128) {
                nodes
                    .iter()
                    .find(|n| n["metadata"]["name"] == name)
                    .map(|n| usage(&n["status"]["allocatable"]))
                    .unwrap_or((0, 0))
            };
            let pct = |used: i128, of: i128| {
                if of > 0 {
                    format!("{}%", used * 100 / of)
                } else {
                    "<unknown>".into()
                }
            };
            let mut rows = Vec::new();
            for n in &items {
                let name = s(&n["metadata"]["name"]);
                let u = usage(&n["usage"]);
                let a = alloc(&name);
                rows.push((vec![name, cpu(u.0), pct(u.0, a.0), mem(u.1), pct(u.1, a.1)], u));
            }
            sort(&mut rows, &sort_by)?;
            let mut out = vec![vec![
                "NAME".to_string(),
                "CPU(cores)".into(),
                "CPU(%)".into(),
                "MEMORY(bytes)".into(),
                "MEMORY(%)".into(),
            ]];
            out.extend(rows.into_iter().map(|r| r.0));
            table(&out);
        }
    }
    Ok(())
}
