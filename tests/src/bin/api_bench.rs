//! `api-bench`: the API server against the raw store it runs on, in the same run, on the same
//! writes. Watch rows: N watchers on pods through the API (gRPC watch, JSON objects) and N
//! watchers on the same keys through the store's etcd v3 watch, while pods are updated at a
//! fixed rate through the API; latency runs from the write's acknowledgement to the event at
//! each watcher. List rows: 10,000 pods, all, by label and by spec.nodeName. Run through
//! `cargo xtask bench api`.

use anyhow::{Context, Result};
use clap::Parser;
use flotilla_api::proto::{api_client::ApiClient, WatchRequest};
use flotilla_client::{Client, ListParams};
use flotilla_store::proto::etcdserverpb::{kv_client::KvClient, RangeRequest};
use flotilla_tests::h2::H2;
use flotilla_tests::{free_port, wait_listening, Proc};
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "API benchmark: watch latency and lists through the API server vs the raw store")]
struct Args {
    /// The flotillad binary (release build).
    #[arg(long)]
    flotillad: PathBuf,
    /// Pods in the cluster for the list rows.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Nodes the pods are spread over.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Pod updates per second during the watch rows.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of updates per watch row.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 100, 1000, 10000])]
    watchers: Vec<usize>,
    /// Events per second all watchers of a row may receive together: rows with many watchers
    /// write slower (the client and server share the machine's cores). The rate used is shown.
    #[arg(long, default_value_t = 1_000_000)]
    max_fanout: u64,
    /// List repetitions per list row.
    #[arg(long, default_value_t = 20)]
    list_reps: usize,
    /// The largest watch row that also runs through the HTTP front.
    #[arg(long, default_value_t = 1000)]
    max_http_watchers: usize,
    /// Gets and creates per front in the front rows.
    #[arg(long, default_value_t = 1000)]
    front_ops: usize,
    /// Requests per operation and round in the trust rows (TLS, authentication and RBAC on
    /// against the same build with them off).
    #[arg(long, default_value_t = 1000)]
    trust_ops: usize,
}

struct Server {
    api: String,
    kubeconfig: PathBuf,
    store: String,
    etcd_tls: flotilla_tests::EtcdTls,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

fn start(bin: &PathBuf) -> Result<Server> {
    start_with(bin, &[])
}

fn start_with(bin: &PathBuf, extra: &[&str]) -> Result<Server> {
    let dir = tempfile::Builder::new().prefix("bench-api").tempdir_in("/var/tmp")?;
    let (a, c, p) = (free_port(), free_port(), free_port());
    let mut cmd = Command::new(bin);
    cmd.arg("server")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{a}")])
        .args([
            "--store-listen",
            &format!("127.0.0.1:{c}"),
            "--peer-listen",
            &format!("127.0.0.1:{p}"),
        ])
        // Room for the largest row's burst; cut-offs are counted as missing events.
        .args(["--watch-ring", "65536"])
        .args(extra)
        .env("RUST_LOG", "warn");
    let proc = Proc::spawn("flotillad", cmd, &dir.path().join("flotillad.log"))?;
    let api = format!("127.0.0.1:{a}");
    wait_listening(&api, Duration::from_secs(30))?;
    let kubeconfig = dir.path().join("data/admin.conf");
    let etcd_tls =
        flotilla_tests::EtcdTls::in_dir(&dir.path().join("data/pki"), "apiserver-etcd-client");
    Ok(Server {
        api,
        kubeconfig,
        store: format!("127.0.0.1:{c}"),
        etcd_tls,
        _proc: proc,
        _dir: dir,
    })
}

/// A new connection with the admin kubeconfig's credentials.
async fn admin(s: &Server) -> Result<Client> {
    for _ in 0..100 {
        if s.kubeconfig.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let conn = flotilla_client::Kubeconfig::read(&s.kubeconfig)?.connection(None)?;
    Ok(Client::connect_to(&conn).await?)
}

use flotilla_tests::percentile as pct;

fn pod(i: usize, nodes: usize) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{i:05}"), "labels": {"app": format!("app-{}", i % 10), "bench": "yes"}},
        "spec": {"nodeName": format!("node-{:03}", i % nodes),
            "containers": [{"name": "app", "image": "registry.local/app:1.0",
                "ports": [{"containerPort": 8080, "name": "http"}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}}]}})
}

/// The resourceVersion inside an encoded object, without parsing the JSON.
fn rv_of(b: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"resourceVersion\":\"";
    let i = b.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let end = b[i..].iter().position(|c| *c == b'"')? + i;
    std::str::from_utf8(&b[i..end]).ok()?.parse().ok()
}

/// Creates `n` pods from 32 clients; returns creates/s and each create's latency (ms).
async fn preload(c: &Client, n: usize, nodes: usize) -> Result<(f64, Vec<f64>)> {
    c.create(
        "namespaces",
        "",
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}),
    )
    .await
    .ok();
    let start = Instant::now();
    let mut tasks = Vec::new();
    let workers = 32;
    for w in 0..workers {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = w;
            while i < n {
                let t = Instant::now();
                c.create("pods", "bench", &pod(i, nodes)).await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                i += workers;
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::with_capacity(n);
    for t in tasks {
        lat.extend(t.await??);
    }
    Ok((n as f64 / start.elapsed().as_secs_f64(), lat))
}

/// Lists through the raw gRPC client: objects stay bytes, as the etcd client's do, so both
/// rows time the server and the wire, not JSON parsing in the client.
async fn list_row(
    c: &mut ApiClient<tonic::transport::Channel>,
    reps: usize,
    label: &str,
    field: &str,
) -> Result<(usize, f64, f64)> {
    let mut lat = Vec::new();
    let mut n = 0;
    for _ in 0..reps {
        let t = Instant::now();
        let req = flotilla_api::proto::ListRequest {
            resource: "pods".into(),
            namespace: "bench".into(),
            label_selector: label.into(),
            field_selector: field.into(),
            ..Default::default()
        };
        let l = c.list(req).await?.into_inner();
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        n = l.items.len();
    }
    lat.sort_by(f64::total_cmp);
    Ok((n, pct(&lat, 0.5), pct(&lat, 0.99)))
}

type Seen = Vec<(i64, Instant)>;

/// Opens `n` watchers of one kind; each collects (revision, arrival) until `stop` is seen.
async fn open_watchers(
    kind: &str,
    s: &Server,
    n: usize,
    from: i64,
) -> Result<Vec<tokio::task::JoinHandle<Seen>>> {
    let conns = n.div_ceil(100).max(1);
    let mut handles = Vec::new();
    if kind == "api" {
        let mut clients = Vec::new();
        for _ in 0..conns {
            let ch = admin(s).await?.channel();
            clients.push(ApiClient::new(ch).max_decoding_message_size(64 << 20));
        }
        for i in 0..n {
            let mut c = clients[i % conns].clone();
            let req = WatchRequest {
                resource: "pods".into(),
                namespace: "bench".into(),
                resource_version: from.to_string(),
                ..Default::default()
            };
            let mut stream = c.watch(req).await?.into_inner();
            handles.push(tokio::spawn(async move {
                let mut seen = Seen::new();
                loop {
                    let resp = match stream.message().await {
                        Ok(Some(r)) => r,
                        Ok(None) => break,
                        Err(e) => {
                            eprintln!("API watch ended: {}", e.message());
                            break;
                        }
                    };
                    let now = Instant::now();
                    for raw in resp.events {
                        use prost::Message;
                        let Ok(ev) = flotilla_api::proto::WatchEvent::decode(raw) else { continue };
                        if ev.object.windows(6).any(|w| w == b"\"stop\"") {
                            return seen;
                        }
                        if let Some(rv) = rv_of(&ev.object) {
                            seen.push((rv, now));
                        }
                    }
                }
                seen
            }));
        }
    } else if kind == "http" {
        let mut clients = Vec::new();
        for _ in 0..conns {
            clients.push(H2::connect(&s.kubeconfig).await?);
        }
        let path = format!("/api/v1/namespaces/bench/pods?watch=true&resourceVersion={from}");
        for i in 0..n {
            let mut body = clients[i % conns].stream(&path).await?;
            handles.push(tokio::spawn(async move {
                use http_body_util::BodyExt;
                let mut seen = Seen::new();
                // One JSON event per line; a chunk may hold several or part of one.
                let mut buf = Vec::new();
                while let Some(Ok(frame)) = body.frame().await {
                    let Ok(data) = frame.into_data() else { continue };
                    let now = Instant::now();
                    buf.extend_from_slice(&data);
                    while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=end).collect();
                        if line.windows(6).any(|w| w == b"\"stop\"") {
                            return seen;
                        }
                        if let Some(rv) = rv_of(&line) {
                            seen.push((rv, now));
                        }
                    }
                }
                seen
            }));
        }
    } else {
        let mut clients = Vec::new();
        for _ in 0..conns {
            clients.push(
                flotilla_tests::etcd_connect(&[format!("https://{}", s.store)], &s.etcd_tls)
                    .await?,
            );
        }
        for i in 0..n {
            let mut c = clients[i % conns].clone();
            let opts = etcd_client::WatchOptions::new().with_prefix().with_start_revision(from + 1);
            let mut stream = c.watch("/registry/core/pods/bench/", Some(opts)).await?;
            handles.push(tokio::spawn(async move {
                let mut seen = Seen::new();
                while let Ok(Some(resp)) = stream.message().await {
                    let now = Instant::now();
                    for ev in resp.events() {
                        if let Some(kv) = ev.kv() {
                            if kv.value().windows(6).any(|w| w == b"\"stop\"") {
                                return seen;
                            }
                            seen.push((kv.mod_revision(), now));
                        }
                    }
                }
                seen
            }));
        }
    }
    Ok(handles)
}

struct WatchResult {
    p50: f64,
    p99: f64,
    /// Write sent → event: unaffected by how late the acknowledgement arrives.
    e2e_p99: f64,
    delivered: usize,
    missing: usize,
    achieved_rate: f64,
}

async fn watch_row(
    kind: &str,
    s: &Server,
    c: &Client,
    n: usize,
    rate: u64,
    secs: u64,
    pods: usize,
) -> Result<WatchResult> {
    let from: i64 = c
        .list("pods", "bench", &ListParams { limit: 1, ..Default::default() })
        .await?
        .resource_version
        .parse()?;
    let handles = open_watchers(kind, s, n, from).await?;
    tokio::time::sleep(Duration::from_millis(300 + n as u64 / 5)).await;
    let acks: Arc<Mutex<HashMap<i64, (Instant, Instant)>>> = Arc::default();
    let total = rate * secs;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for k in 0..total {
        tokio::time::sleep_until(start + interval * k as u32).await;
        let permit = sem.clone().acquire_owned().await?;
        let (c, acks) = (c.clone(), acks.clone());
        // Unique per row: a patch that changes nothing is not written (and has no event).
        let seq = format!("{kind}-{n}-{k}");
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let patch = json!({"metadata": {"annotations": {"bench/seq": seq}}});
            let r = c
                .patch(
                    "pods",
                    "bench",
                    &format!("pod-{:05}", k as usize % pods),
                    &patch,
                    false,
                    false,
                )
                .await;
            let now = Instant::now();
            drop(permit);
            if let Err(e) = &r {
                eprintln!("write failed: {}", e.message);
            }
            if let Ok((v, _)) = r {
                if let Some(rv) =
                    v["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok())
                {
                    acks.lock().unwrap().insert(rv, (sent, now));
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let achieved = total as f64 / start.elapsed().as_secs_f64();
    // The stop marker: an annotation whose value is "stop".
    let (stop, _) = c
        .patch(
            "pods",
            "bench",
            "pod-00000",
            &json!({"metadata": {"annotations": {"bench/seq": "stop"}}}),
            false,
            false,
        )
        .await?;
    let acks = acks.lock().unwrap().clone();
    anyhow::ensure!(
        stop["metadata"]["resourceVersion"].as_str().is_some(),
        "stop marker not written"
    );
    let mut lat = Vec::with_capacity(acks.len() * n);
    let mut e2e = Vec::with_capacity(acks.len() * n);
    let mut missing = 0;
    let mut delivered = 0;
    for h in handles {
        let seen = match tokio::time::timeout(Duration::from_secs(60), h).await {
            Ok(r) => r?,
            Err(_) => Seen::new(),
        };
        delivered += seen.len();
        let got: HashMap<i64, Instant> = seen.into_iter().collect();
        for (rev, (sent, ack)) in &acks {
            match got.get(rev) {
                Some(t) => {
                    lat.push(t.saturating_duration_since(*ack).as_secs_f64() * 1e3);
                    e2e.push(t.saturating_duration_since(*sent).as_secs_f64() * 1e3);
                }
                None => missing += 1,
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    e2e.sort_by(f64::total_cmp);
    Ok(WatchResult {
        p50: pct(&lat, 0.5),
        p99: pct(&lat, 0.99),
        e2e_p99: pct(&e2e, 0.99),
        delivered,
        missing,
        achieved_rate: achieved,
    })
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// One row of the fronts' table: gRPC and HTTP samples of the same operation.
fn front_row(name: &str, grpc: &mut [f64], http: &mut [f64]) {
    grpc.sort_by(f64::total_cmp);
    http.sort_by(f64::total_cmp);
    let (g50, g99, h50, h99) = (pct(grpc, 0.5), pct(grpc, 0.99), pct(http, 0.5), pct(http, 0.99));
    println!("| {name} | {g50:.2} | {g99:.2} | {h50:.2} | {h99:.2} | {:.2}x |", h99 / g99);
}

/// The same work through both fronts of one server, interleaved so that both see the same
/// noise: lists of every pod (HTTP as JSON and as a Table), gets and creates. Both clients
/// keep bodies as bytes over one TLS HTTP/2 connection with the admin's certificate.
async fn front_rows(
    s: &Server,
    raw: &mut ApiClient<tonic::transport::Channel>,
    pods: usize,
    reps: usize,
    ops: usize,
) -> Result<()> {
    use flotilla_api::proto::{CreateRequest, GetRequest, ListRequest};
    let h2 = H2::connect(&s.kubeconfig).await?;
    const JSON: &str = "application/json";
    const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
    println!("\n| the same operation through both fronts | gRPC p50 ms | gRPC p99 ms | HTTP p50 ms | HTTP p99 ms | HTTP/gRPC p99 |");
    println!("|---|---:|---:|---:|---:|---:|");
    let (mut g, mut h, mut t) = (Vec::new(), Vec::new(), Vec::new());
    let list =
        ListRequest { resource: "pods".into(), namespace: "bench".into(), ..Default::default() };
    for _ in 0..reps {
        let t0 = Instant::now();
        let l = raw.list(list.clone()).await?.into_inner();
        g.push(ms(t0));
        anyhow::ensure!(l.items.len() >= pods, "gRPC list: {} pods", l.items.len());
        let t0 = Instant::now();
        let (code, body) = h2.call("GET", "/api/v1/namespaces/bench/pods", JSON, None).await?;
        h.push(ms(t0));
        anyhow::ensure!(code == 200 && body.len() > pods * 100, "HTTP list: {code}");
        let t0 = Instant::now();
        let (code, body) = h2.call("GET", "/api/v1/namespaces/bench/pods", TABLE, None).await?;
        t.push(ms(t0));
        anyhow::ensure!(
            code == 200 && body.windows(14).any(|w| w == b"\"kind\":\"Table\""),
            "HTTP table: {code}"
        );
    }
    front_row(&format!("list {pods} pods (HTTP: JSON)"), &mut g.clone(), &mut h);
    front_row(&format!("list {pods} pods (HTTP: Table; gRPC: objects)"), &mut g, &mut t);
    let (mut g, mut h) = (Vec::new(), Vec::new());
    for i in 0..ops {
        let name = format!("pod-{:05}", (i * 7919) % pods);
        let t0 = Instant::now();
        let req =
            GetRequest { resource: "pods".into(), namespace: "bench".into(), name: name.clone() };
        raw.get(req).await?;
        g.push(ms(t0));
        let t0 = Instant::now();
        let (code, _) =
            h2.call("GET", &format!("/api/v1/namespaces/bench/pods/{name}"), JSON, None).await?;
        h.push(ms(t0));
        anyhow::ensure!(code == 200, "HTTP get {name}: {code}");
    }
    front_row("get a pod", &mut g, &mut h);
    let (mut g, mut h) = (Vec::new(), Vec::new());
    for i in 0..ops {
        let mut p = pod(i, 100);
        p["metadata"]["name"] = json!(format!("front-grpc-{i:05}"));
        let t0 = Instant::now();
        let req = CreateRequest {
            resource: "pods".into(),
            namespace: "bench".into(),
            object: serde_json::to_vec(&p)?.into(),
            ..Default::default()
        };
        raw.create(req).await?;
        g.push(ms(t0));
        p["metadata"]["name"] = json!(format!("front-http-{i:05}"));
        let body = serde_json::to_vec(&p)?;
        let t0 = Instant::now();
        let (code, _) =
            h2.call("POST", "/api/v1/namespaces/bench/pods", JSON, Some((JSON, body))).await?;
        h.push(ms(t0));
        anyhow::ensure!(code == 201, "HTTP create: {code}");
    }
    front_row("create a pod", &mut g, &mut h);
    Ok(())
}

/// Encode + decode of one typed Pod (the bench's pod, defaulted by admission) in each candidate
/// encoding: the per-object cost the store, the watch cache and every client pay.
fn encoding_rows() -> Result<()> {
    use k8s_openapi::api::core::v1::Pod;
    let info = flotilla_api::lookup("pods").context("pods")?;
    let mut obj = pod(1, 100);
    obj["metadata"]["namespace"] = json!("bench");
    let admitted = (info.admit)(&obj, None, info).map_err(|e| anyhow::anyhow!(e.message))?.object;
    let typed: Pod = serde_json::from_value(admitted)?;
    let n = 20_000;
    println!("| encoding of one Pod | bytes | encode+decode µs | vs JSON |");
    println!("|---|---:|---:|---:|");
    let time = |f: &dyn Fn() -> Result<usize>| -> Result<(usize, f64)> {
        let size = f()?;
        let t = Instant::now();
        for _ in 0..n {
            f()?;
        }
        Ok((size, t.elapsed().as_secs_f64() * 1e6 / n as f64))
    };
    let json = time(&|| {
        let b = serde_json::to_vec(&typed)?;
        let _: Pod = serde_json::from_slice(&b)?;
        Ok(b.len())
    })?;
    let cbor = time(&|| {
        let mut b = Vec::new();
        ciborium::into_writer(&typed, &mut b)?;
        let _: Pod = ciborium::from_reader(b.as_slice())?;
        Ok(b.len())
    })?;
    let msgpack = time(&|| {
        let b = rmp_serde::to_vec_named(&typed)?;
        let _: Pod = rmp_serde::from_slice(&b)?;
        Ok(b.len())
    })?;
    for (name, (size, us)) in [
        ("JSON (serde_json)", json),
        ("CBOR (ciborium)", cbor),
        ("MessagePack (rmp-serde)", msgpack),
    ] {
        println!("| {name} | {size} | {us:.2} | {:.2}x |", json.1 / us);
    }
    println!();
    Ok(())
}

/// One operation's latencies (ms) per mode.
#[derive(Default)]
struct TrustSamples {
    get: Vec<f64>,
    create: Vec<f64>,
    list: Vec<f64>,
    watch: Vec<f64>,
}

/// get, create, list and watch delivery through one client, `ops` times each.
async fn trust_round(c: &Client, round: usize, ops: usize, out: &mut TrustSamples) -> Result<()> {
    let cm = |name: String, labels: serde_json::Value| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
    };
    for i in 0..ops {
        let t = Instant::now();
        c.create("configmaps", "trust", &cm(format!("r{round}-{i}"), json!({"set": "churn"})))
            .await?;
        out.create.push(t.elapsed().as_secs_f64() * 1e3);
    }
    for _ in 0..ops {
        let t = Instant::now();
        c.get("configmaps", "trust", "fixed-0").await?;
        out.get.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let p = ListParams { label_selector: "set=fixed".into(), ..Default::default() };
    for _ in 0..(ops / 10).max(10) {
        let t = Instant::now();
        let l = c.list("configmaps", "trust", &p).await?;
        out.list.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(l.items.len() == 100, "listed {} configmaps", l.items.len());
    }
    // Watch delivery: a write, then its event at a watcher of that one object.
    let wp = flotilla_client::WatchParams {
        field_selector: "metadata.name=watched".into(),
        resource_version: c.get("configmaps", "trust", "watched").await?["metadata"]
            ["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        ..Default::default()
    };
    let mut events = Box::pin(c.watch("configmaps", "trust", &wp).await?);
    use futures::StreamExt;
    for i in 0..(ops / 5).max(20) {
        let t = Instant::now();
        let (v, _) = c
            .patch(
                "configmaps",
                "trust",
                "watched",
                &json!({"data": {"n": format!("{round}-{i}")}}),
                false,
                false,
            )
            .await?;
        let rv = v["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_string();
        'wait: loop {
            let batch = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await?
                .context("the watch ended")??;
            for e in batch {
                if e.resource_version() == rv {
                    break 'wait;
                }
            }
        }
        out.watch.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(())
}

/// The price of trust: the same build, the same requests, with TLS, x509 authentication and
/// RBAC (as a user bound to `edit`, not `system:masters`, which RBAC never evaluates) and
/// with all three off (`--bench-insecure-api`: plain HTTP/2, AlwaysAllow). Rounds alternate
/// which server goes first.
async fn trust_rows(bin: &PathBuf, ops: usize) -> Result<()> {
    let secure = start_with(bin, &[])?;
    let open = start_with(bin, &["--bench-insecure-api"])?;
    let admin_c = admin(&secure).await?;
    let open_c = Client::connect(&format!("http://{}", open.api)).await?;
    let user_conf = secure._dir.path().join("user.conf");
    let status = Command::new(bin)
        .args(["kubeconfig", "user", "--pki-dir"])
        .arg(secure._dir.path().join("data/pki"))
        .args([
            "--server",
            &format!("https://{}", secure.api),
            "--client-name",
            "bench-user",
            "--out",
        ])
        .arg(&user_conf)
        .status()?;
    anyhow::ensure!(status.success(), "flotillad kubeconfig user failed");
    for c in [&admin_c, &open_c] {
        for _ in 0..200 {
            if c.get("namespaces", "", "default").await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c.create(
            "namespaces",
            "",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "trust"}}),
        )
        .await?;
        for i in 0..100 {
            c.create(
                "configmaps",
                "trust",
                &json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("fixed-{i}"), "labels": {"set": "fixed"}}}),
            )
            .await?;
        }
        c.create(
            "configmaps",
            "trust",
            &json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "watched"}}),
        )
        .await?;
    }
    admin_c
        .create("rolebindings", "trust", &json!({"apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding", "metadata": {"name": "bench-user-edit"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bench-user"}]}))
        .await?;
    let conn = flotilla_client::Kubeconfig::read(&user_conf)?.connection(None)?;
    let user = Client::connect_to(&conn).await?;
    for _ in 0..200 {
        if user.get("configmaps", "trust", "fixed-0").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let who = user.who_am_i().await?;
    anyhow::ensure!(who["status"]["userInfo"]["username"] == "bench-user", "not bench-user: {who}");
    let (mut on, mut off) = (TrustSamples::default(), TrustSamples::default());
    for round in 0..4 {
        if round % 2 == 0 {
            trust_round(&user, round, ops, &mut on).await?;
            trust_round(&open_c, round, ops, &mut off).await?;
        } else {
            trust_round(&open_c, round, ops, &mut off).await?;
            trust_round(&user, round, ops, &mut on).await?;
        }
    }
    println!("trust: TLS + x509 authentication + RBAC (user bound to `edit`) against the same build with them off (`--bench-insecure-api`: plain HTTP/2, AlwaysAllow); 4 alternating rounds of {ops} requests per operation, one client, sequential");
    println!("| operation | on p50 ms | on p99 ms | off p50 ms | off p99 ms | cost at p50 | cost at p99 |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, a, b) in [
        ("get", &mut on.get, &mut off.get),
        ("create", &mut on.create, &mut off.create),
        ("list (100 of 100+ in the namespace)", &mut on.list, &mut off.list),
        ("watch delivery (write sent → event)", &mut on.watch, &mut off.watch),
    ] {
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        let (a50, a99, b50, b99) = (pct(a, 0.5), pct(a, 0.99), pct(b, 0.5), pct(b, 0.99));
        println!(
            "| {name} | {a50:.3} | {a99:.3} | {b50:.3} | {b99:.3} | {:+.1}% | {:+.1}% |",
            (a50 / b50 - 1.0) * 100.0,
            (a99 / b99 - 1.0) * 100.0
        );
    }
    println!();
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(a: Args) -> Result<()> {
    encoding_rows()?;
    trust_rows(&a.flotillad, a.trust_ops).await.context("the trust rows")?;
    let s = start(&a.flotillad)?;
    let c = admin(&s).await?;
    for _ in 0..200 {
        if c.get("namespaces", "", "default").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (rate, mut lat) = preload(&c, a.pods, a.nodes).await.context("creating the pods")?;
    lat.sort_by(f64::total_cmp);
    println!(
        "created {} pods through the API: {rate:.0} creates/s (32 clients), create p50 {:.2} ms, p99 {:.2} ms\n",
        a.pods,
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );

    println!("| list of {} pods (API, from the watch cache) | items | p50 ms | p99 ms |", a.pods);
    println!("|---|---:|---:|---:|");
    let node = format!("spec.nodeName=node-{:03}", 7 % a.nodes);
    let ch = admin(&s).await?.channel();
    let mut raw = ApiClient::new(ch).max_decoding_message_size(256 << 20);
    for (name, label, field) in [
        ("all", "", ""),
        ("label app=app-3", "app=app-3", ""),
        ("field spec.nodeName", "", node.as_str()),
    ] {
        let (n, p50, p99) = list_row(&mut raw, a.list_reps, label, field).await?;
        println!("| {name} | {n} | {p50:.2} | {p99:.2} |");
    }
    // The same objects read straight from the store (an etcd range, linearizable).
    let tls = &s.etcd_tls;
    let cfg = flotilla_pki::tls::client_config(
        Some(&std::fs::read_to_string(&tls.ca)?),
        Some(flotilla_tests::https::identity(&tls.cert, &tls.key)?),
    )?;
    let ch = tonic::transport::Endpoint::from_shared(format!("https://{}", s.store))?
        .tcp_nodelay(true)
        .http2_adaptive_window(true)
        .connect_with_connector(flotilla_pki::tls::Connector::new(cfg, None))
        .await?;
    let mut kv = KvClient::new(ch).max_decoding_message_size(256 << 20);
    let mut lat = Vec::new();
    for _ in 0..a.list_reps {
        let t = Instant::now();
        let req = RangeRequest {
            key: b"/registry/core/pods/bench/".to_vec(),
            range_end: b"/registry/core/pods/bench0".to_vec(),
            ..Default::default()
        };
        let r = kv.range(req).await?.into_inner();
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(r.kvs.len() == a.pods, "store range returned {} pods", r.kvs.len());
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "| all, raw store range (etcd API) | {} | {:.2} | {:.2} |",
        a.pods,
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );

    front_rows(&s, &mut raw, a.pods, a.list_reps, a.front_ops).await.context("the front rows")?;

    println!("\nwatch: pods updated through the API for {} s; latency = write acknowledged → event at watcher (an event that beats the ack counts 0); e2e = write sent → event", a.seconds);
    println!("| watchers | updates/s | store p50 ms | store p99 ms | API p50 ms | API p99 ms | API/store p99 | store e2e p99 | API e2e p99 | API/store e2e p99 | API events | missing (store/API) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut fronts = Vec::new();
    for &n in &a.watchers {
        let rate = a.rate.min((a.max_fanout / n as u64).max(1));
        let st = watch_row("store", &s, &c, n, rate, a.seconds, a.pods).await?;
        let api = watch_row("api", &s, &c, n, rate, a.seconds, a.pods).await?;
        println!(
            "| {n} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}x | {:.2} | {:.2} | {:.2}x | {} | {}/{} |",
            api.achieved_rate, st.p50, st.p99, api.p50, api.p99, api.p99 / st.p99, st.e2e_p99, api.e2e_p99,
            api.e2e_p99 / st.e2e_p99, api.delivered, st.missing, api.missing
        );
        // The HTTP front's watch (chunked JSON lines) at the same rate, beside gRPC's.
        if n <= a.max_http_watchers {
            let http = watch_row("http", &s, &c, n, rate, a.seconds, a.pods).await?;
            fronts.push((n, api, http));
        }
    }
    println!("\nwatch through both fronts (the rows above, and an HTTP watch at the same rate)");
    println!("| watchers | gRPC p50 ms | gRPC p99 ms | HTTP p50 ms | HTTP p99 ms | HTTP/gRPC p99 | missing (gRPC/HTTP) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for (n, g, h) in fronts {
        println!(
            "| {n} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}x | {}/{} |",
            g.p50,
            g.p99,
            h.p50,
            h.p99,
            h.p99 / g.p99,
            g.missing,
            h.missing
        );
    }
    Ok(())
}
