//! `sched-bench`: the scheduler at scale. Simulated nodes (Node objects with capacity, labels,
//! some taints) are registered through the real API; then pods (mixed requests, some with node
//! selectors, tolerations and required anti-affinity) are created through the real API while
//! `flotillad scheduler` runs as its own process. Measured: pods/s from the first create to the
//! last binding, per-pod latency (create acknowledged → binding seen on a watch), and the
//! scheduler's CPU time and peak RSS. A checker then verifies every placement from the API's
//! own state: no node over-committed, every selector, toleration and anti-affinity held.
//! Run through `cargo xtask bench scheduler`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use flotilla_api::quantity::Quantity;
use flotilla_client::{Client, EventType, ListParams, WatchParams};
use flotilla_tests::{flotillad, percentile, Member, Proc};
use futures::StreamExt;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Scheduler throughput, latency and placement validity at scale")]
struct Args {
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    #[arg(long, default_value_t = 50_000)]
    pods: usize,
    /// Creates in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Give up waiting for bindings after this many seconds without progress.
    #[arg(long, default_value_t = 60)]
    stall_secs: u64,
}

const GROUPS: usize = 1000;

fn node(i: usize) -> Value {
    let name = format!("sim-{i:05}");
    let mut labels = json!({"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": format!("zone-{}", i % 10)});
    if i.is_multiple_of(3) {
        labels["disk"] = json!("ssd");
    }
    let taints = if i.is_multiple_of(10) {
        json!([{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}])
    } else {
        json!([])
    };
    let res = json!({"cpu": "32", "memory": "128Gi", "pods": "110"});
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints},
        "status": {"capacity": res, "allocatable": res,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}})
}

fn pod(i: usize) -> Value {
    let g = i % GROUPS;
    let app = format!("app-{g}");
    let cpu = ["100m", "250m", "500m", "1"][i % 4];
    let mem = ["128Mi", "256Mi", "512Mi", "1Gi"][(i / 4) % 4];
    let mut spec = json!({"containers": [{"name": "c", "image": "busybox",
        "resources": {"requests": {"cpu": cpu, "memory": mem}}}]});
    if i.is_multiple_of(5) {
        spec["nodeSelector"] = json!({"disk": "ssd"});
    }
    if i % 10 == 1 {
        spec["tolerations"] = json!([{"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}]);
    }
    if i % 10 == 2 {
        spec["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": "kubernetes.io/hostname"}]}});
    }
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("p-{i:06}"), "namespace": "default", "labels": {"app": app},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": app,
                "uid": format!("00000000-0000-0000-0000-{g:012}"), "controller": true}]},
        "spec": spec})
}

/// What the harness reads of a bound pod.
#[derive(serde::Deserialize)]
struct BoundPod {
    metadata: BoundMeta,
    spec: BoundSpec,
}

#[derive(serde::Deserialize)]
struct BoundMeta {
    name: String,
}

#[derive(serde::Deserialize)]
struct BoundSpec {
    #[serde(rename = "nodeName")]
    node_name: Option<String>,
}

fn q(v: &Value, milli: bool) -> i128 {
    v.as_str()
        .and_then(|s| Quantity::parse(s).ok())
        .map(|q| if milli { q.milli_value() } else { q.value() })
        .unwrap_or(0)
}

/// Every placement checked against the API's state; returns the violations.
fn check(nodes: &[Value], pods: &[Value]) -> Vec<String> {
    let mut bad = Vec::new();
    let by_name: HashMap<&str, &Value> =
        nodes.iter().map(|n| (n["metadata"]["name"].as_str().unwrap_or(""), n)).collect();
    let mut used: HashMap<&str, (i128, i128, i128)> = HashMap::new();
    let mut group_nodes: HashMap<(&str, &str), usize> = HashMap::new();
    for p in pods {
        let name = p["metadata"]["name"].as_str().unwrap_or("");
        let Some(nn) = p["spec"]["nodeName"].as_str() else { continue };
        let Some(n) = by_name.get(nn) else {
            bad.push(format!("{name}: bound to unknown node {nn}"));
            continue;
        };
        let r = &p["spec"]["containers"][0]["resources"]["requests"];
        let u = used.entry(nn).or_default();
        u.0 += q(&r["cpu"], true);
        u.1 += q(&r["memory"], false);
        u.2 += 1;
        if let Some(sel) = p["spec"]["nodeSelector"].as_object() {
            for (k, v) in sel {
                if n["metadata"]["labels"][k] != *v {
                    bad.push(format!("{name}: nodeSelector {k}={v} not met by {nn}"));
                }
            }
        }
        for t in n["spec"]["taints"].as_array().into_iter().flatten() {
            let tolerated = p["spec"]["tolerations"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|x| x["key"] == t["key"] && x["value"] == t["value"]);
            if !tolerated {
                bad.push(format!("{name}: on {nn} despite untolerated taint {}", t["key"]));
            }
        }
        let app = p["metadata"]["labels"]["app"].as_str().unwrap_or("");
        *group_nodes.entry((app, nn)).or_default() += 1;
    }
    for p in pods {
        if p["spec"]["affinity"]["podAntiAffinity"].is_object() {
            let (app, nn) = (
                p["metadata"]["labels"]["app"].as_str().unwrap_or(""),
                p["spec"]["nodeName"].as_str().unwrap_or(""),
            );
            if group_nodes.get(&(app, nn)).copied().unwrap_or(0) > 1 {
                bad.push(format!(
                    "{}: shares {nn} with another {app} pod despite anti-affinity",
                    p["metadata"]["name"]
                ));
            }
        }
    }
    for (nn, (cpu, mem, count)) in used {
        let a = &by_name[nn]["status"]["allocatable"];
        if cpu > q(&a["cpu"], true) || mem > q(&a["memory"], false) || count > q(&a["pods"], false)
        {
            bad.push(format!("{nn}: over-committed ({cpu}m cpu, {mem} bytes, {count} pods)"));
        }
    }
    bad
}

/// (user+system CPU seconds, peak RSS MiB) of a process.
fn usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .unwrap_or(0.0);
    (ticks / 100.0, hwm / 1024.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let dir = tempfile::Builder::new().prefix("sched-bench").tempdir_in("/var/tmp")?;
    let mut member = Member::new("srv", dir.path());
    member.extra = vec![
        "--no-scheduler".into(),
        "--no-controllers".into(),
        "--watch-ring".into(),
        "200000".into(),
    ];
    member.start()?;
    member.api_url()?;
    let clients: Vec<Client> =
        futures::future::try_join_all((0..4).map(|_| member.client())).await?;
    let c = &clients[0];
    for _ in 0..400 {
        if c.get("namespaces", "", "default").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    eprintln!("registering {} nodes…", a.nodes);
    let t = Instant::now();
    futures::stream::iter(0..a.nodes)
        .map(|i| {
            let c = clients[i % clients.len()].clone();
            async move { c.create("nodes", "", &node(i)).await }
        })
        .buffer_unordered(a.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .context("registering nodes")?;
    eprintln!("  {} nodes in {:.1} s", a.nodes, t.elapsed().as_secs_f64());

    // Bindings as a watcher sees them, on a connection of its own. Only bound pods: a pod
    // entering the selector arrives as ADDED, and the harness decodes one event per pod, not
    // two, leaving the CPU to what is measured.
    let wc = member.client().await?;
    let rv = wc
        .list("pods", "default", &ListParams { limit: 1, ..Default::default() })
        .await?
        .resource_version;
    let stream = wc
        .watch_json(
            "pods",
            "default",
            &WatchParams {
                resource_version: rv,
                field_selector: "spec.nodeName!=".into(),
                ..Default::default()
            },
        )
        .await?;
    let bound: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let bound_n = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (bound, bound_n) = (bound.clone(), bound_n.clone());
        tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(Ok(events)) = stream.next().await {
                let now = Instant::now();
                let mut b = bound.lock().unwrap();
                for (kind, json) in events {
                    // Only the two fields looked at are decoded: the harness shares the
                    // cores with what it measures.
                    let Ok(p) = serde_json::from_slice::<BoundPod>(&json) else { continue };
                    let seen = matches!(kind, EventType::Added | EventType::Modified);
                    if seen
                        && p.spec.node_name.is_some()
                        && b.insert(p.metadata.name, now).is_none()
                    {
                        bound_n.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let create = |range: std::ops::Range<usize>| {
        let (clients, created) = (clients.clone(), created.clone());
        async move {
            let t = Instant::now();
            let n = range.len();
            let results = futures::stream::iter(range)
                .map(|i| {
                    let (c, created) = (clients[i % clients.len()].clone(), created.clone());
                    async move {
                        let json = serde_json::to_vec(&pod(i)).expect("a pod encodes");
                        // The answer is not decoded: the harness shares the cores.
                        let r = c.create_json("pods", "default", json.into(), false).await;
                        created.lock().unwrap().insert(format!("p-{i:06}"), Instant::now());
                        r
                    }
                })
                .buffer_unordered(a.concurrency)
                .collect::<Vec<_>>()
                .await;
            if let Some(e) = results.into_iter().find_map(|r| r.err()) {
                bail!("creating pods: {e}");
            }
            Ok(n as f64 / t.elapsed().as_secs_f64())
        }
    };
    let wait_bound = |want: usize| {
        let bound_n = bound_n.clone();
        async move {
            let (mut last, mut last_change) = (0, Instant::now());
            loop {
                let n = bound_n.load(Ordering::Relaxed);
                if n >= want {
                    return;
                }
                if n != last {
                    (last, last_change) = (n, Instant::now());
                }
                if last_change.elapsed() > Duration::from_secs(a.stall_secs) {
                    eprintln!("  no progress for {} s: {n}/{want} bound", a.stall_secs);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    // Phase 1, a backlog: pods pending before the scheduler starts.
    let backlog = a.pods / 2;
    eprintln!("creating a backlog of {backlog} pods…");
    let server_pid = member.proc.as_ref().and_then(Proc::pid).context("server pid")?;
    let (srv0, _) = usage(server_pid);
    let create_rate = create(0..backlog).await?;
    let (srv1, _) = usage(server_pid);
    let mut cmd = std::process::Command::new(flotillad());
    let kc =
        member.user_kubeconfig("system:kube-scheduler", &[], &dir.path().join("scheduler.conf"))?;
    cmd.args(["scheduler", "--leader-elect", "false"])
        .arg("--kubeconfig")
        .arg(kc)
        .env("RUST_LOG", "info");
    let sched_log = dir.path().join("scheduler.log");
    let mut sched = Proc::spawn("scheduler", cmd, &sched_log)?;
    let pid = sched.pid().context("scheduler pid")?;
    let t = Instant::now();
    while !std::fs::read_to_string(&sched_log).unwrap_or_default().contains("scheduler started") {
        if t.elapsed() > Duration::from_secs(120) {
            bail!("the scheduler did not start; see {}", sched_log.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_start = Instant::now();
    let (cpu0, _) = usage(pid);
    let (srv2, _) = usage(server_pid);
    eprintln!("  scheduler synced in {:.1} s; draining…", t.elapsed().as_secs_f64());
    wait_bound(backlog).await;
    let drained = bound.lock().unwrap().values().max().copied().unwrap_or(drain_start);
    let (srv3, _) = usage(server_pid);
    let drain_rate = backlog as f64 / drained.duration_since(drain_start).as_secs_f64().max(1e-9);

    // Phase 2, streaming: pods created while the scheduler runs.
    let streamed = a.pods - backlog;
    eprintln!("creating {streamed} pods while scheduling…");
    let start = Instant::now();
    let (own0, _) = usage(std::process::id());
    create(backlog..a.pods).await?;
    wait_bound(a.pods).await;
    let (cpu1, rss) = usage(pid);
    let (srv4, srv_rss) = usage(server_pid);
    let (own1, _) = usage(std::process::id());
    watcher.abort();
    let b = bound.lock().unwrap().clone();
    let cr = created.lock().unwrap().clone();
    let names = |r: std::ops::Range<usize>| r.map(|i| format!("p-{i:06}")).collect::<Vec<_>>();
    let last_bound =
        names(backlog..a.pods).iter().filter_map(|n| b.get(n)).max().copied().unwrap_or(start);
    let stream_rate = streamed as f64 / last_bound.duration_since(start).as_secs_f64().max(1e-9);
    let lat = |r: std::ops::Range<usize>, from: Option<Instant>| {
        let mut v: Vec<f64> = names(r)
            .iter()
            .filter_map(|n| {
                let c = from.or_else(|| cr.get(n).copied())?;
                b.get(n).map(|t| t.saturating_duration_since(c).as_secs_f64() * 1000.0)
            })
            .collect();
        v.sort_by(|x, y| x.total_cmp(y));
        v
    };
    let drain_lat = lat(0..backlog, Some(drain_start));
    let stream_lat = lat(backlog..a.pods, None);

    eprintln!("checking every placement…");
    let nodes = c.list_all("nodes", "", &ListParams::default()).await?.items;
    let pods = c.list_all("pods", "default", &ListParams::default()).await?.items;
    let unbound = pods.iter().filter(|p| !p["spec"]["nodeName"].is_string()).count();
    let bad = check(&nodes, &pods);
    // Events are recorded as client-go records them: written one at a time, dropped when the
    // recorder's backlog is full. How many made it is part of the picture.
    let one = ListParams { limit: 1, ..Default::default() };
    let ev = c.list("events", "default", &one).await?;
    let events = ev.items.len() as i64 + ev.remaining;
    sched.terminate(Duration::from_secs(5));

    println!(
        "## Scheduler: {} nodes, {} pods (pods created through the API at {create_rate:.0}/s)",
        a.nodes, a.pods
    );
    println!();
    println!("| run | pods | pods/s to bound | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|");
    println!("| flotilla, backlog (pending before it starts; from its sync to the last binding) | {backlog} | {drain_rate:.0} | {:.1} | {:.1} |", percentile(&drain_lat, 0.5), percentile(&drain_lat, 0.99));
    println!("| flotilla, streaming (create ack → binding, created while it schedules) | {streamed} | {stream_rate:.0} | {:.1} | {:.1} |", percentile(&stream_lat, 0.5), percentile(&stream_lat, 0.99));
    println!("| kube-scheduler (published: Kubernetes scale tests, 5,000 nodes) | | ~300 | | |");
    println!("| ByteDance Godel (published) | | ~1,000 | | |");
    println!("| Nomad C1M (published, placements/s) | | ~3,750 | | |");
    println!();
    println!("scheduler process: {:.1} CPU s for {} pods ({:.0} µs/pod), peak RSS {rss:.0} MiB; the API server and the store share the same 2 cores", cpu1 - cpu0, a.pods, (cpu1 - cpu0) * 1e6 / a.pods as f64);
    let per_pod = |cpu: f64, n: usize| cpu * 1e6 / n.max(1) as f64;
    println!(
        "API server + store process: {:.0} µs/pod creating the backlog, {:.0} µs/pod binding it (bindings and events), {:.0} µs/pod streaming (both); peak RSS {srv_rss:.0} MiB",
        per_pod(srv1 - srv0, backlog),
        per_pod(srv3 - srv2, backlog),
        per_pod(srv4 - srv3, streamed)
    );
    println!(
        "this harness (creating pods, watching bindings): {:.0} µs/pod streaming",
        per_pod(own1 - own0, streamed)
    );
    println!(
        "flotilla backlog rate vs kube-scheduler's published ~300 pods/s: {:.1}x",
        drain_rate / 300.0
    );
    println!("Scheduled/FailedScheduling events recorded: {events} (a full recorder backlog drops events, as client-go's does)");
    println!("validity: {} pods bound, {unbound} unbound, {} violations", b.len(), bad.len());
    for v in bad.iter().take(20) {
        println!("  violation: {v}");
    }
    if !bad.is_empty() || unbound > 0 {
        bail!("placement check failed");
    }
    Ok(())
}
