//! `pod-bench`: pod startup, created (API acknowledged) → Running with its container
//! started, observed through a watch; the image already on the node, each pod in its own
//! network namespace. One pod at a time, then a burst created at once. In the same run, the
//! peers on the same image: containerd + runc (`ctr run --rm`, a new network namespace) and
//! the bare `flotilla-runtime` (create + start + delete of the same container), so the
//! orchestration overhead shows. Run through `cargo xtask bench pod-startup`.

use std::{
    collections::HashMap,
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use flotilla_client::{Change, Client, DeleteParams, Informer, WatchParams};
use flotilla_tests::{bundle, flotillad, node::Node, percentile, Proc};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Pod startup: flotilla vs containerd+runc vs the bare runtime")]
struct Args {
    /// Pods started one at a time.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Pods created at once.
    #[arg(long, default_value_t = 100)]
    burst: usize,
    /// Leave containerd out.
    #[arg(long)]
    no_containerd: bool,
}

fn running(p: &Value) -> bool {
    p["status"]["phase"] == "Running"
        && p["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|c| c["state"]["running"].is_object()))
}

fn stats(name: &str, ms: &mut [f64]) -> (f64, f64, f64) {
    ms.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99) = (percentile(ms, 0.5), percentile(ms, 0.99));
    let mean = ms.iter().sum::<f64>() / ms.len().max(1) as f64;
    println!("| {name} | {} | {p50:.1} | {p99:.1} | {mean:.1} |", ms.len());
    (p50, p99, mean)
}

fn pod(name: &str, image: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": image, "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "3600"]}]}})
}

/// When each pod was first seen Running, from one watch.
struct Seen {
    at: Arc<Mutex<HashMap<String, Instant>>>,
    notify: Arc<tokio::sync::Notify>,
}

impl Seen {
    fn start(client: Client) -> Seen {
        let inf = Informer::start(client, "pods", "default", WatchParams::default());
        let mut rx = inf.subscribe();
        let at: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
        let notify = Arc::new(tokio::sync::Notify::new());
        let (at2, n2) = (at.clone(), notify.clone());
        tokio::spawn(async move {
            let _keep = inf;
            while let Ok(ch) = rx.recv().await {
                let p = match ch {
                    Change::Added(p) | Change::Modified { new: p, .. } => p,
                    _ => continue,
                };
                if running(&p) {
                    let name = p["metadata"]["name"].as_str().unwrap_or_default().to_string();
                    at2.lock().unwrap().entry(name).or_insert_with(Instant::now);
                    n2.notify_waiters();
                }
            }
        });
        Seen { at, notify }
    }

    async fn wait(&self, names: &[String], timeout: Duration) -> Result<Vec<Instant>> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            {
                let at = self.at.lock().unwrap();
                if names.iter().all(|n| at.contains_key(n)) {
                    return Ok(names.iter().map(|n| at[n]).collect());
                }
            }
            if Instant::now() > deadline {
                bail!("pods not Running after {timeout:?}");
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
    }
}

async fn delete_all(c: &Client, names: &[String], pods_dir: &Path) -> Result<()> {
    let p = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
    for n in names {
        c.delete("pods", "default", n, &p).await?;
    }
    // Wait for the node to have torn them down, so the next figure starts clean.
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_dir(pods_dir).map(|d| d.count()).unwrap_or(0) > 0 {
        if Instant::now() > deadline {
            bail!("pods not torn down");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// `flotilla-runtime run` + `delete -f` of `sleep` on the image's rootfs in a new network
/// namespace: the runtime's share of a pod start (the agent starts containers with the same
/// binary).
fn bare_runtime(dir: &Path, store: &Path, image: &str, rounds: usize) -> Result<Vec<f64>> {
    let b = dir.join("bare-bundle");
    std::fs::create_dir_all(&b)?;
    run_ok(
        Command::new(flotillad())
            .args(["image", "--root"])
            .arg(store)
            .args(["mount", image])
            .arg(b.join("overlay")),
    )?;
    let mut cfg = bundle::runc_default_config(&["sleep", "3600"]);
    cfg["root"] = json!({"path": b.join("overlay/merged"), "readonly": false});
    bundle::write_config(&b, &cfg)?;
    let root = dir.join("bare-runtime");
    let exe = flotillad().with_file_name("flotilla-runtime");
    let rt = |args: &[&str]| {
        let mut c = Command::new(&exe);
        c.arg("--root").arg(&root).args(args);
        c
    };
    let mut ms = Vec::new();
    for i in 0..rounds + 3 {
        let id = format!("bare{i}");
        let t = Instant::now();
        // The container's output to a log, as the agent has it (and so it holds no pipe of ours).
        let log = dir.join(format!("bare-{i}.log"));
        run_ok(&mut rt(&[
            "run",
            "--bundle",
            b.to_str().unwrap(),
            "--log-path",
            log.to_str().unwrap(),
            &id,
        ]))?;
        let took = t.elapsed();
        run_ok(&mut rt(&["delete", "-f", &id]))?;
        if i >= 3 {
            ms.push(took.as_secs_f64() * 1e3);
        }
    }
    let _ = Command::new(flotillad())
        .args(["image", "--root"])
        .arg(store)
        .arg("unmount")
        .arg(b.join("overlay"))
        .status();
    Ok(ms)
}

/// containerd (its own state dirs and socket) with runc: `ctr run --rm` of `/bin/true`, a
/// new network namespace per container, as the calibration.
fn containerd(dir: &Path, tarball: &Path, image: &str, rounds: usize) -> Result<Vec<f64>> {
    let d = dir.join("containerd");
    std::fs::create_dir_all(&d)?;
    let sock = d.join("containerd.sock");
    std::fs::write(
        d.join("config.toml"),
        format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{1}\"\n",
            d.display(),
            sock.display()
        ),
    )?;
    let mut cmd = Command::new("containerd");
    cmd.arg("--config").arg(d.join("config.toml"));
    let _proc = Proc::spawn("containerd", cmd, &d.join("containerd.log"))
        .context("containerd (apt install containerd)")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        if Instant::now() > deadline {
            bail!("containerd did not start; see {}", d.join("containerd.log").display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let ctr = || {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(&sock).args(["--namespace", "bench"]);
        c
    };
    run_ok(ctr().args(["images", "import", "--all-platforms"]).arg(tarball))?;
    let mut ms = Vec::new();
    for i in 0..rounds + 3 {
        let t = Instant::now();
        run_ok(
            ctr().args(["run", "--rm", image, &format!("c{i}"), "/bin/true"]).stdout(Stdio::null()),
        )?;
        if i >= 3 {
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    // Containers went with --rm; containerd stops when `_proc` drops, its state with `dir`.
    Ok(ms)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let node = Node::start("bench", 30);
    let client = node.member.client().await?;
    let image = node.image();
    let node_name = format!("node-{}", node.tag);
    let pods_dir = node.dir.path().join("agent/pods");
    let seen = Seen::start(client.clone());
    // The agent is up once its Node is Ready.
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get("nodes", "", &node_name).await.is_err() {
        if Instant::now() > deadline {
            bail!("the agent did not register");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Warm-up: unpacks the image's layers once, as any node has after its first pod.
    let warm: Vec<String> = (0..3).map(|i| format!("warm-{i}")).collect();
    for n in &warm {
        client.create("pods", "default", &pod(n, &image, &node_name)).await?;
        seen.wait(std::slice::from_ref(n), Duration::from_secs(60)).await?;
    }
    delete_all(&client, &warm, &pods_dir).await?;

    let mut single = Vec::new();
    for i in 0..args.pods {
        let name = format!("one-{i}");
        let t = Instant::now();
        client.create("pods", "default", &pod(&name, &image, &node_name)).await?;
        let at = seen.wait(std::slice::from_ref(&name), Duration::from_secs(60)).await?;
        single.push(at[0].duration_since(t).as_secs_f64() * 1e3);
        delete_all(&client, &[name], &pods_dir).await?;
    }

    let names: Vec<String> = (0..args.burst).map(|i| format!("burst-{i}")).collect();
    let t0 = Instant::now();
    let mut created = Vec::new();
    let creates = names.iter().map(|n| {
        let (c, p) = (client.clone(), pod(n, &image, &node_name));
        async move {
            let t = Instant::now();
            c.create("pods", "default", &p).await.map(|_| t)
        }
    });
    for r in futures::future::join_all(creates).await {
        created.push(r?);
    }
    let at = seen.wait(&names, Duration::from_secs(300)).await?;
    let all_running = at.iter().max().map(|t| t.duration_since(t0)).unwrap_or_default();
    let mut burst: Vec<f64> =
        at.iter().zip(&created).map(|(a, c)| a.duration_since(*c).as_secs_f64() * 1e3).collect();
    let agent_pid = node.agent.as_ref().and_then(|a| a.pid()).unwrap_or(0);
    let rss = rss_kib(agent_pid);
    delete_all(&client, &names, &pods_dir).await?;
    let idle_rss = rss_kib(agent_pid);

    if let Ok(to) = std::env::var("POD_BENCH_AGENT_LOG") {
        // For a look at the agent's own timings (FLOTILLA_TEST_LOG=flotillad=debug).
        std::fs::write(to, node.agent_log())?;
    }
    let store = node.dir.path().join("images-store");
    let bare = bare_runtime(node.dir.path(), &store, &image, args.pods.min(50))?;
    let ctr = if args.no_containerd {
        None
    } else {
        Some(containerd(
            node.dir.path(),
            &node.dir.path().join("images/probe.tar"),
            &image,
            args.pods.min(50),
        )?)
    };

    println!("\npod startup: created → Running (watch), ms\n");
    println!("| what | n | p50 | p99 | mean |\n|---|---|---|---|---|");
    let (s50, s99, _) = stats("flotilla pod, one at a time", &mut single);
    let (b50, b99, _) = stats(&format!("flotilla pod, burst of {}", args.burst), &mut burst);
    let (r50, _, _) =
        stats("bare `flotilla-runtime run` (create+start, new netns)", &mut bare.clone());
    let peer =
        ctr.map(|mut c| stats("containerd + runc `ctr run --rm` /bin/true (new netns)", &mut c));
    println!();
    println!(
        "burst of {}: all Running after {:.0} ms",
        args.burst,
        all_running.as_secs_f64() * 1e3
    );
    println!(
        "agent RSS: {} KiB with {} pods running, {} KiB after they are gone",
        rss, args.burst, idle_rss
    );
    println!("orchestration overhead (pod p50 − bare runtime p50): {:.1} ms", s50 - r50);
    // A kernel-wide setting the agent makes (--cgroup-favordynmods): every row above ran with it.
    let favor = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains(" - cgroup2 ") && l.contains("favordynmods"));
    println!("cgroup favordynmods (kernel-wide, all rows): {}", if favor { "on" } else { "off" });
    if let Some((c50, c99, _)) = peer {
        println!("containerd+runc / flotilla pod: p50 {:.2}x, p99 {:.2}x", c50 / s50, c99 / s99);
    }
    println!("targets: single p50 < 30 ms ({s50:.1}), p99 < 100 ms ({s99:.1}), burst all Running < 2 s ({:.2} s); burst p50 {b50:.1}, p99 {b99:.1}",
        all_running.as_secs_f64());
    Ok(())
}
