//! Resource usage of the node and its containers, sampled from cgroups (the kubelet's
//! cadvisor part): served to the API server as `Stats` (for `flotilla top`, like
//! metrics-server scraping kubelets) and to Prometheus on the node API's `/metrics`
//! (the kubelet's `/metrics/resource` names).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use flotilla_api::proto;
use flotilla_isolation::Status as RunStatus;
use prometheus::{CounterVec, Encoder, GaugeVec, Opts, Registry, TextEncoder};

use super::pods::Ctx;

pub type Latest = Arc<RwLock<Arc<proto::StatsSummary>>>;

/// Splits `<uid>-<container>-<attempt>` (the agent's container ids; uids are 36 characters).
fn parse_id(id: &str) -> Option<(&str, &str)> {
    let uid = id.get(..36)?;
    let rest = id.get(37..)?;
    let (name, attempt) = rest.rsplit_once('-')?;
    attempt.parse::<u32>().ok()?;
    Some((uid, name))
}

/// Busy CPU time of the whole machine from /proc/stat, in nanoseconds.
fn host_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else { return 0 };
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
    let busy: u64 = f.iter().take(8).sum::<u64>()
        - f.get(3).copied().unwrap_or(0)
        - f.get(4).copied().unwrap_or(0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|h| *h > 0)
        .unwrap_or(100) as u64;
    busy * (1_000_000_000 / hz)
}

/// MemTotal - MemAvailable: what the machine cannot give back without swapping.
fn host_memory_working_set() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |k: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    field("MemTotal:").saturating_sub(field("MemAvailable:"))
}

struct Sampler {
    prev: HashMap<String, (u64, Instant)>,
}

impl Sampler {
    fn usage(&mut self, key: &str, cpu_ns: u64, mem: u64, now: Instant, ts: &str) -> proto::Usage {
        let (nanocores, window) = match self.prev.get(key) {
            Some((c, t)) if now > *t && cpu_ns >= *c => {
                let dt = now.duration_since(*t);
                (((cpu_ns - c) as f64 / dt.as_secs_f64()) as u64, dt.as_millis() as u64)
            }
            _ => (0, 0),
        };
        self.prev.insert(key.to_string(), (cpu_ns, now));
        proto::Usage {
            cpu_nanocores: nanocores,
            cpu_usage_ns: cpu_ns,
            memory_working_set_bytes: mem,
            timestamp: ts.to_string(),
            window_ms: window,
        }
    }

    fn sample(&mut self, ctx: &Ctx) -> proto::StatsSummary {
        let now = Instant::now();
        let ts = jiff::Timestamp::now().to_string();
        let names = ctx.pod_names.read().expect("pod names lock").clone();
        let mut pods: HashMap<String, proto::PodStats> = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for (st, status) in ctx.runtime.list().unwrap_or_default() {
            if status != RunStatus::Running {
                continue;
            }
            let Some((uid, cname)) = parse_id(&st.id) else { continue };
            let Some((ns, name)) = names.get(uid) else { continue };
            let Ok(s) = ctx.runtime.stats(&st.id) else { continue };
            let usage = self.usage(&st.id, s.cpu_usage_ns, s.memory_working_set_bytes, now, &ts);
            seen.insert(st.id.clone());
            let pod = pods.entry(uid.to_string()).or_insert_with(|| proto::PodStats {
                namespace: ns.clone(),
                name: name.clone(),
                uid: uid.to_string(),
                containers: vec![],
            });
            pod.containers
                .push(proto::ContainerStats { name: cname.to_string(), usage: Some(usage) });
        }
        let node = self.usage("", host_cpu_ns(), host_memory_working_set(), now, &ts);
        seen.insert(String::new());
        self.prev.retain(|k, _| seen.contains(k));
        let mut pods: Vec<proto::PodStats> = pods.into_values().collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        for p in &mut pods {
            p.containers.sort_by(|a, b| a.name.cmp(&b.name));
        }
        proto::StatsSummary { node: ctx.node.clone(), usage: Some(node), pods }
    }
}

/// Samples every `interval` into `latest` for as long as the agent runs.
pub async fn run(ctx: Arc<Ctx>, interval: Duration, latest: Latest) -> anyhow::Result<()> {
    let sampler = Arc::new(std::sync::Mutex::new(Sampler { prev: HashMap::new() }));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (ctx, sampler) = (ctx.clone(), sampler.clone());
        let summary =
            tokio::task::spawn_blocking(move || sampler.lock().expect("sampler lock").sample(&ctx))
                .await?;
        *latest.write().expect("stats lock") = Arc::new(summary);
    }
}

/// The latest sample in Prometheus' text format.
pub fn render(s: &proto::StatsSummary) -> String {
    let registry = Registry::new();
    let labels = &["namespace", "pod", "container"];
    let cpu = CounterVec::new(
        Opts::new(
            "container_cpu_usage_seconds_total",
            "Cumulative cpu time consumed by the container in core-seconds",
        ),
        labels,
    )
    .expect("valid metric");
    let mem = GaugeVec::new(
        Opts::new(
            "container_memory_working_set_bytes",
            "Current working set of the container in bytes",
        ),
        labels,
    )
    .expect("valid metric");
    let node_cpu = CounterVec::new(
        Opts::new(
            "node_cpu_usage_seconds_total",
            "Cumulative cpu time consumed by the node in core-seconds",
        ),
        &[],
    )
    .expect("valid metric");
    let node_mem = GaugeVec::new(
        Opts::new("node_memory_working_set_bytes", "Current working set of the node in bytes"),
        &[],
    )
    .expect("valid metric");
    let pods = GaugeVec::new(
        Opts::new("flotilla_agent_running_pods", "Pods with a running container"),
        &[],
    )
    .expect("valid metric");
    for c in [&cpu, &node_cpu] {
        registry.register(Box::new(c.clone())).expect("unique metric");
    }
    for g in [&mem, &node_mem, &pods] {
        registry.register(Box::new(g.clone())).expect("unique metric");
    }
    for p in &s.pods {
        for c in &p.containers {
            let u = c.usage.clone().unwrap_or_default();
            let l = [p.namespace.as_str(), p.name.as_str(), c.name.as_str()];
            cpu.with_label_values(&l).inc_by(u.cpu_usage_ns as f64 / 1e9);
            mem.with_label_values(&l).set(u.memory_working_set_bytes as f64);
        }
    }
    let n = s.usage.clone().unwrap_or_default();
    node_cpu.with_label_values(&[] as &[&str]).inc_by(n.cpu_usage_ns as f64 / 1e9);
    node_mem.with_label_values(&[] as &[&str]).set(n.memory_working_set_bytes as f64);
    pods.with_label_values(&[] as &[&str]).set(s.pods.len() as f64);
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_split_into_pod_uid_and_container() {
        let id = "8d5612de-3dda-4515-95f5-9854f1bccf1c-my-app-3";
        assert_eq!(parse_id(id), Some(("8d5612de-3dda-4515-95f5-9854f1bccf1c", "my-app")));
        assert_eq!(parse_id("short-1"), None);
        assert_eq!(parse_id("8d5612de-3dda-4515-95f5-9854f1bccf1c-app-x"), None);
    }

    #[test]
    fn cpu_rates_come_from_two_samples() {
        let mut s = Sampler { prev: HashMap::new() };
        let t0 = Instant::now();
        let first = s.usage("c", 1_000_000_000, 10, t0, "t");
        assert_eq!((first.cpu_nanocores, first.window_ms), (0, 0), "one sample has no rate");
        let second = s.usage("c", 1_500_000_000, 10, t0 + Duration::from_secs(1), "t");
        assert_eq!((second.cpu_nanocores, second.window_ms), (500_000_000, 1000));
    }

    #[test]
    fn renders_kubelet_resource_metric_names() {
        let usage = |ns| {
            Some(proto::Usage {
                cpu_usage_ns: ns,
                memory_working_set_bytes: 4096,
                ..Default::default()
            })
        };
        let s = proto::StatsSummary {
            node: "n".into(),
            usage: usage(3_000_000_000),
            pods: vec![proto::PodStats {
                namespace: "default".into(),
                name: "web".into(),
                uid: "u".into(),
                containers: vec![proto::ContainerStats {
                    name: "app".into(),
                    usage: usage(1_500_000_000),
                }],
            }],
        };
        let text = render(&s);
        assert!(text.contains(r#"container_cpu_usage_seconds_total{container="app",namespace="default",pod="web"} 1.5"#), "{text}");
        assert!(text.contains(r#"container_memory_working_set_bytes{container="app",namespace="default",pod="web"} 4096"#), "{text}");
        assert!(text.contains("node_cpu_usage_seconds_total 3"), "{text}");
    }
}
