//! `store-bench`: our store and etcd, both single-member and durable, started here on loopback
//! and driven by the same etcd-client harness in the same run. Prints each figure for both and
//! their ratio. Run through `cargo xtask bench store`.

use anyhow::{bail, Context, Result};
use clap::Parser;
use etcd_client::{EventType, WatchOptions};
use flotilla_tests::{etcd_connect, free_port, wait_listening, EtcdTls, Proc};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Store benchmark: flotilla store vs etcd over the etcd v3 API")]
struct Args {
    /// The flotillad binary (release build).
    #[arg(long)]
    flotillad: PathBuf,
    /// The etcd binary.
    #[arg(long, default_value = "etcd")]
    etcd: String,
    /// Seconds per put row.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Seconds of steady writes per watch row.
    #[arg(long, default_value_t = 4)]
    watch_seconds: u64,
    /// Only these sections (put, watch, memory); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Wait this many seconds before each flotilla measurement (to attach a profiler).
    #[arg(long, default_value_t = 0)]
    pause_before_ours: u64,
    /// Watcher counts for the watch rows.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 100, 1000])]
    watchers: Vec<usize>,
}

struct Server {
    name: &'static str,
    endpoint: String,
    tls: EtcdTls,
    proc: Proc,
    _dir: tempfile::TempDir,
}

/// One CA for both servers, with a serving certificate for etcd and one client certificate
/// (group `system:masters`, which our store's client port admits) that the harness presents
/// to both: the same TLS work on both sides.
struct BenchPki {
    dir: tempfile::TempDir,
    client: EtcdTls,
}

fn bench_pki() -> Result<BenchPki> {
    let dir = tempfile::Builder::new().prefix("bench-pki").tempdir_in("/var/tmp")?;
    let ca = flotilla_pki::Ca::load_or_create(dir.path())?;
    let write = |name: &str, req: &flotilla_pki::Request| -> Result<()> {
        let issued = ca.issue(req)?;
        let (crt, key) = flotilla_pki::ca::pair_paths(dir.path(), name);
        flotilla_pki::write_private(&key, issued.key_pem.as_bytes())?;
        flotilla_pki::write_public(&crt, issued.cert_pem.as_bytes())?;
        Ok(())
    };
    let ips = vec![std::net::IpAddr::from([127, 0, 0, 1])];
    write("etcd-server", &flotilla_pki::Request::server("etcd", vec!["localhost".into()], ips))?;
    write("client", &flotilla_pki::Request::client("bench", &["system:masters"]))?;
    let client = EtcdTls::in_dir(dir.path(), "client");
    Ok(BenchPki { dir, client })
}

fn start_etcd(bin: &str, pki: &BenchPki) -> Result<Server> {
    let dir = tempfile::Builder::new().prefix("bench-etcd").tempdir_in("/var/tmp")?;
    let (c, p) = (free_port(), free_port());
    let (crt, key) = flotilla_pki::ca::pair_paths(pki.dir.path(), "etcd-server");
    let mut cmd = Command::new(bin);
    cmd.args(["--name", "bench", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg(format!("--listen-client-urls=https://127.0.0.1:{c}"))
        .arg(format!("--advertise-client-urls=https://127.0.0.1:{c}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{p}"))
        .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{p}"))
        .arg(format!("--initial-cluster=bench=http://127.0.0.1:{p}"))
        .arg(format!("--cert-file={}", crt.display()))
        .arg(format!("--key-file={}", key.display()))
        .arg(format!("--trusted-ca-file={}", pki.client.ca.display()))
        .arg("--client-cert-auth")
        .arg("--log-level=error");
    let proc = Proc::spawn("etcd", cmd, &dir.path().join("etcd.log"))
        .context("starting etcd (Debian package etcd-server; `cargo xtask setup` installs it)")?;
    let addr = format!("127.0.0.1:{c}");
    wait_listening(&addr, Duration::from_secs(20))?;
    let tls = pki.client.clone();
    Ok(Server { name: "etcd", endpoint: format!("https://{addr}"), tls, proc, _dir: dir })
}

fn start_flotilla(bin: &PathBuf, pki: &BenchPki) -> Result<Server> {
    let dir = tempfile::Builder::new().prefix("bench-flotilla").tempdir_in("/var/tmp")?;
    let (c, p, a) = (free_port(), free_port(), free_port());
    // The bench's CA, so that the same client certificate works on both servers.
    let own = dir.path().join("data/pki");
    std::fs::create_dir_all(&own)?;
    for f in ["ca.crt", "ca.key"] {
        std::fs::copy(pki.dir.path().join(f), own.join(f))?;
    }
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
        .env("RUST_LOG", "warn");
    let proc = Proc::spawn("flotillad", cmd, &dir.path().join("flotillad.log"))?;
    let addr = format!("127.0.0.1:{c}");
    wait_listening(&addr, Duration::from_secs(20))?;
    let tls = pki.client.clone();
    Ok(Server { name: "flotilla", endpoint: format!("https://{addr}"), tls, proc, _dir: dir })
}

async fn ready(srv: &Server) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut c) = etcd_connect(&[srv.endpoint.as_str()], &srv.tls).await {
            if c.put("/bench/ready", "1", None).await.is_ok() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{} never accepted a write", srv.endpoint);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

use flotilla_tests::percentile as pct;

struct PutResult {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn bench_put(srv: &Server, clients: usize, secs: u64) -> Result<PutResult> {
    let value = vec![b'v'; 256];
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    // At most 16 connections; more clients multiplex over them (as many real clients do).
    let mut conns = Vec::new();
    for _ in 0..clients.min(16) {
        conns.push(etcd_connect(&[srv.endpoint.as_str()], &srv.tls).await?);
    }
    let start = Instant::now();
    for i in 0..clients {
        let mut c = conns[i % conns.len()].clone();
        let stop = stop.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                c.put(format!("/bench/put/{i}/{}", n % 1000), value.clone(), None).await?;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                n += 1;
            }
            anyhow::Ok(lat)
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok(PutResult {
        per_sec: all.len() as f64 / elapsed,
        p50_ms: pct(&all, 0.5),
        p99_ms: pct(&all, 0.99),
    })
}

struct WatchResult {
    /// Put acknowledged → event received (an event that beats the ack counts 0).
    p50_ms: f64,
    p99_ms: f64,
    /// Put sent → event received: end to end, and unaffected by how late the ack is.
    e2e_p50_ms: f64,
    e2e_p99_ms: f64,
    missing: usize,
}

/// `watchers` watch one prefix while one writer puts at `rate`/s; latency is from the put's
/// acknowledgement to each watcher receiving the event (an event that beats the ack counts 0).
async fn bench_watch(srv: &Server, watchers: usize, rate: u64, secs: u64) -> Result<WatchResult> {
    let prefix = format!("/bench/watch/{watchers}/");
    let conns_n = watchers.div_ceil(100).max(1);
    let mut conns = Vec::new();
    for _ in 0..conns_n {
        conns.push(etcd_connect(&[srv.endpoint.as_str()], &srv.tls).await?);
    }
    type Seen = Vec<(i64, Instant)>;
    let mut handles = Vec::new();
    for i in 0..watchers {
        let mut c = conns[i % conns_n].clone();
        let mut stream = c.watch(prefix.clone(), Some(WatchOptions::new().with_prefix())).await?;
        handles.push(tokio::spawn(async move {
            let mut seen: Seen = Vec::new();
            while let Ok(Some(resp)) = stream.message().await {
                let now = Instant::now();
                if resp.canceled() {
                    break;
                }
                for ev in resp.events() {
                    if ev.event_type() == EventType::Put {
                        if let Some(kv) = ev.kv() {
                            if kv.value() == b"stop" {
                                return seen;
                            }
                            seen.push((kv.mod_revision(), now));
                        }
                    }
                }
            }
            seen
        }));
    }
    // Let every watch register before writing.
    tokio::time::sleep(Duration::from_millis(500 + watchers as u64)).await;
    let mut w = etcd_connect(&[srv.endpoint.as_str()], &srv.tls).await?;
    let acks: Arc<Mutex<HashMap<i64, (Instant, Instant)>>> = Arc::default();
    let total = rate * secs;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let value = vec![b'v'; 256];
    for n in 0..total {
        tokio::time::sleep_until(start + interval * n as u32).await;
        let sent = Instant::now();
        let r = w.put(format!("{prefix}{}", n % 100), value.clone(), None).await?;
        let now = Instant::now();
        acks.lock().unwrap().insert(r.header().context("header")?.revision(), (sent, now));
    }
    w.put(format!("{prefix}stop"), "stop", None).await?;
    let acks = acks.lock().unwrap().clone();
    let mut lat = Vec::with_capacity(acks.len() * watchers);
    let mut e2e = Vec::with_capacity(acks.len() * watchers);
    let mut missing = 0;
    for h in handles {
        let seen = tokio::time::timeout(Duration::from_secs(30), h).await??;
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
        p50_ms: pct(&lat, 0.5),
        p99_ms: pct(&lat, 0.99),
        e2e_p50_ms: pct(&e2e, 0.5),
        e2e_p99_ms: pct(&e2e, 0.99),
        missing,
    })
}

fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).context("VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
}

/// RSS before and after opening `n` idle watches (100 per connection).
async fn bench_memory(server: &Server, n: usize) -> Result<(u64, u64)> {
    let pid = server.proc.pid().context("pid")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid)?;
    let mut conns = Vec::new();
    for _ in 0..n.div_ceil(100) {
        conns.push(etcd_connect(&[server.endpoint.as_str()], &server.tls).await?);
    }
    let mut streams = Vec::new();
    for i in 0..n {
        let mut c = conns[i / 100].clone();
        streams.push(c.watch(format!("/bench/idle/{}", i % 1000), None).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid)?;
    drop(streams);
    Ok((before, after))
}

/// Prints the comparison table row by row, as each figure is measured.
struct Table;

impl Table {
    /// `higher_better`: throughput; otherwise latency/memory.
    fn row(&mut self, name: &str, etcd: f64, ours: f64, higher_better: bool) {
        Self::print_row(name, etcd, ours, higher_better);
    }

    fn print_row(name: &str, etcd: f64, ours: f64, higher_better: bool) {
        // Ratio is always "how many times better flotilla is" (>1: flotilla better). A zero
        // latency (event before the ack) has no meaningful ratio.
        let ratio = if higher_better { ours / etcd } else { etcd / ours };
        let ratio = if ratio.is_finite() && ratio > 0.0 {
            format!("{ratio:>8.2}x")
        } else {
            format!("{:>9}", "—")
        };
        println!("| {name:<48} | {etcd:>12.3} | {ours:>12.3} | {ratio} |");
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let want = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let pki = bench_pki()?;
    let etcd = start_etcd(&args.etcd, &pki)?;
    let ours = start_flotilla(&args.flotillad, &pki)?;
    ready(&etcd).await?;
    ready(&ours).await?;
    println!(
        "store benchmark: {} 3.4 ({}) vs {} ({}), single member, durable, TLS with client certificates on both, same client harness",
        etcd.name, etcd.endpoint, ours.name, ours.endpoint
    );
    println!("ratio: how many times better flotilla is than etcd (>1 = flotilla better)\n");
    println!("| {:<48} | {:>12} | {:>12} | {:>9} |", "row", "etcd", "flotilla", "ratio");
    println!("|{:-<50}|{:-<14}|{:-<14}|{:-<11}|", "", "", "", "");
    let mut t = Table;
    if want("put") {
        for clients in [1usize, 16, 256] {
            // Interleave: each system runs on a machine in the same state.
            let e = bench_put(&etcd, clients, args.seconds).await?;
            let o = bench_put(&ours, clients, args.seconds).await?;
            t.row(&format!("put, {clients} clients: writes/s"), e.per_sec, o.per_sec, true);
            t.row(&format!("put, {clients} clients: p50 ms"), e.p50_ms, o.p50_ms, false);
            t.row(&format!("put, {clients} clients: p99 ms"), e.p99_ms, o.p99_ms, false);
        }
    }
    if want("watch") {
        for &watchers in &args.watchers {
            let e = bench_watch(&etcd, watchers, 1000, args.watch_seconds).await?;
            if args.pause_before_ours > 0 {
                eprintln!("flotilla (pid {:?}) next", ours.proc.pid());
                tokio::time::sleep(Duration::from_secs(args.pause_before_ours)).await;
            }
            let o = bench_watch(&ours, watchers, 1000, args.watch_seconds).await?;
            let rows = [
                ("ack→event p50 ms", e.p50_ms, o.p50_ms),
                ("ack→event p99 ms", e.p99_ms, o.p99_ms),
                ("put→event p50 ms", e.e2e_p50_ms, o.e2e_p50_ms),
                ("put→event p99 ms", e.e2e_p99_ms, o.e2e_p99_ms),
            ];
            for (what, ev, ov) in rows {
                t.row(&format!("watch, {watchers} watchers @1000 w/s: {what}"), ev, ov, false);
            }
            if e.missing + o.missing > 0 {
                println!("  (events not received: etcd {}, flotilla {})", e.missing, o.missing);
            }
        }
    }
    if want("memory") {
        // Fresh servers: RSS after the load rows above would measure allocator leftovers.
        drop(etcd);
        drop(ours);
        let etcd = start_etcd(&args.etcd, &pki)?;
        let ours = start_flotilla(&args.flotillad, &pki)?;
        ready(&etcd).await?;
        ready(&ours).await?;
        let n = 10_000;
        let (eb, ea) = bench_memory(&etcd, n).await?;
        let (ob, oa) = bench_memory(&ours, n).await?;
        t.row("memory: RSS before watchers, MiB", eb as f64 / 1024.0, ob as f64 / 1024.0, false);
        t.row(
            "memory: RSS with 10,000 idle watchers, MiB",
            ea as f64 / 1024.0,
            oa as f64 / 1024.0,
            false,
        );
        let per = |b: u64, a: u64| (a.saturating_sub(b)) as f64 * 1024.0 / n as f64;
        t.row("memory: per idle watcher, bytes", per(eb, ea), per(ob, oa), false);
    }
    Ok(())
}
