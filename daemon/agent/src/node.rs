//! The node's own objects: its Node (capacity, allocatable, addresses, system info, pod CIDR,
//! conditions) and its Lease in `kube-node-lease`, renewed every few seconds as the kubelet's
//! node lease is. The node lifecycle controller reads the Lease to tell a live node from a dead
//! one; the Node's conditions say whether it can take pods.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use flotilla_api::{ApiError, Reason};
use flotilla_client::Client;
use serde_json::{json, Value};

/// How the node describes itself.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub address: String,
    pub pod_cidr: String,
    /// The filesystem whose free space is DiskPressure (the agent's data dir).
    pub data_dir: PathBuf,
    pub max_pods: u32,
    pub lease_seconds: u32,
    pub eviction: Eviction,
    /// The node API's port (daemonEndpoints.kubeletEndpoint).
    pub port: u16,
}

/// A hard eviction threshold: an absolute amount (bytes, or a count for pids) or a share of
/// the total.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    Absolute(u64),
    Percent(f64),
}

impl Threshold {
    /// Whether `available` of `total` is below the threshold.
    fn crossed(self, available: u64, total: u64) -> bool {
        match self {
            Threshold::Absolute(n) => available < n,
            Threshold::Percent(p) => (available as f64) < total as f64 * p / 100.0,
        }
    }

    fn amount(self, total: u64) -> u64 {
        match self {
            Threshold::Absolute(n) => n,
            Threshold::Percent(p) => (total as f64 * p / 100.0) as u64,
        }
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threshold::Absolute(n) => write!(f, "{n}"),
            Threshold::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// The kubelet's `--eviction-hard` signals that drive the pressure conditions.
#[derive(Clone, Debug, PartialEq)]
pub struct Eviction {
    pub memory: Threshold,
    pub nodefs: Threshold,
    pub pids: Threshold,
}

impl Default for Eviction {
    /// The kubelet's defaults (memory.available<100Mi, nodefs.available<10%), and pids at 10%.
    fn default() -> Eviction {
        Eviction {
            memory: Threshold::Absolute(100 << 20),
            nodefs: Threshold::Percent(10.0),
            pids: Threshold::Percent(10.0),
        }
    }
}

impl std::str::FromStr for Eviction {
    type Err = String;

    /// `memory.available<100Mi,nodefs.available<10%,pid.available<5%`, as the kubelet's flag;
    /// signals not named keep their defaults.
    fn from_str(s: &str) -> Result<Eviction, String> {
        let mut e = Eviction::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (signal, value) = item
                .split_once('<')
                .ok_or_else(|| format!("eviction threshold {item:?}: expected SIGNAL<VALUE"))?;
            let threshold = match value.strip_suffix('%') {
                Some(p) => {
                    let p: f64 =
                        p.parse().map_err(|_| format!("{signal}: bad percentage {value:?}"))?;
                    if !(0.0..=100.0).contains(&p) {
                        return Err(format!("{signal}: {value} is not between 0% and 100%"));
                    }
                    Threshold::Percent(p)
                }
                None => {
                    let q = flotilla_api::quantity::Quantity::parse(value)
                        .map_err(|m| format!("{signal}: {m}"))?;
                    Threshold::Absolute(
                        u64::try_from(q.value())
                            .map_err(|_| format!("{signal}: {value} is negative or too large"))?,
                    )
                }
            };
            match signal {
                "memory.available" => e.memory = threshold,
                "nodefs.available" => e.nodefs = threshold,
                "pid.available" => e.pids = threshold,
                other => {
                    return Err(format!(
                        "unknown eviction signal {other:?} (memory.available, nodefs.available, pid.available)"
                    ))
                }
            }
        }
        Ok(e)
    }
}

/// One condition's observed state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub kind: &'static str,
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default().trim().to_string()
}

/// `/proc/meminfo` fields in KiB.
fn meminfo() -> BTreeMap<String, u64> {
    read("/proc/meminfo")
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_string(), v.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

fn disk(path: &Path) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let frag = s.fragment_size() as u64;
    Some((s.blocks() as u64 * frag, s.blocks_available() as u64 * frag))
}

fn cpus() -> u64 {
    std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1)
}

fn os_image() -> String {
    read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// One reading of the machine, shared by a status post's capacity and its conditions.
struct Machine {
    mem_total_ki: u64,
    mem_available_ki: u64,
    disk_total: u64,
    disk_free: u64,
    pids: u64,
    pid_max: u64,
}

impl Machine {
    fn read(spec: &NodeSpec) -> Machine {
        let mem = meminfo();
        let (disk_total, disk_free) = disk(&spec.data_dir).unwrap_or((0, 0));
        let pids = std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                    .count()
            })
            .unwrap_or(0) as u64;
        Machine {
            mem_total_ki: mem.get("MemTotal").copied().unwrap_or(0),
            mem_available_ki: mem.get("MemAvailable").copied().unwrap_or(u64::MAX),
            disk_total,
            disk_free,
            pids,
            pid_max: read("/proc/sys/kernel/pid_max").parse().unwrap_or(u64::MAX),
        }
    }
}

/// A pressure condition: True with `yes` (reason, message) under pressure, else False with `no`.
fn pressure(
    kind: &'static str,
    under: bool,
    yes: (&'static str, String),
    no: (&'static str, &str),
) -> Condition {
    let ((reason, message), status) =
        if under { (yes, "True") } else { ((no.0, no.1.to_string()), "False") };
    Condition { kind, status, reason, message }
}

/// The pressure conditions: the machine against the node's hard eviction thresholds.
fn conditions(spec: &NodeSpec, m: &Machine) -> Vec<Condition> {
    let ev = &spec.eviction;
    let mem_total = m.mem_total_ki * 1024;
    let mem_available = m.mem_available_ki.saturating_mul(1024);
    vec![
        pressure(
            "MemoryPressure",
            ev.memory.crossed(mem_available, mem_total),
            (
                "KubeletHasInsufficientMemory",
                format!("{}Ki available, under memory.available<{}", m.mem_available_ki, ev.memory),
            ),
            ("KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ),
        pressure(
            "DiskPressure",
            ev.nodefs.crossed(m.disk_free, m.disk_total),
            (
                "KubeletHasDiskPressure",
                format!(
                    "{} has {} bytes free, under nodefs.available<{}",
                    spec.data_dir.display(),
                    m.disk_free,
                    ev.nodefs
                ),
            ),
            ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ),
        pressure(
            "PIDPressure",
            ev.pids.crossed(m.pid_max.saturating_sub(m.pids), m.pid_max),
            (
                "KubeletHasInsufficientPID",
                format!(
                    "{} processes of at most {}, under pid.available<{}",
                    m.pids, m.pid_max, ev.pids
                ),
            ),
            ("KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ),
        Condition {
            kind: "Ready",
            status: "True",
            reason: "KubeletReady",
            message: "flotilla agent is posting ready status".into(),
        },
    ]
}

fn now() -> String {
    let t = jiff::Timestamp::now();
    jiff::Timestamp::from_second(t.as_second()).unwrap_or(t).to_string()
}

fn now_micro() -> String {
    // metav1.MicroTime: RFC 3339 with microseconds.
    let t = jiff::Timestamp::now();
    t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The Node's status: capacity and allocatable from the machine, conditions carrying their
/// previous transition times when unchanged.
pub fn status(spec: &NodeSpec, previous: Option<&Value>) -> Value {
    let machine = Machine::read(spec);
    let (mem_ki, disk_total) = (machine.mem_total_ki, machine.disk_total);
    let heartbeat = now();
    let conditions: Vec<Value> = conditions(spec, &machine)
        .into_iter()
        .map(|c| {
            let old = previous
                .and_then(|s| s["conditions"].as_array())
                .and_then(|cs| cs.iter().find(|o| o["type"] == c.kind));
            let transition = match old {
                Some(o) if o["status"] == c.status => {
                    o["lastTransitionTime"].as_str().unwrap_or(&heartbeat).to_string()
                }
                _ => heartbeat.clone(),
            };
            json!({"type": c.kind, "status": c.status, "reason": c.reason, "message": c.message,
                "lastHeartbeatTime": heartbeat, "lastTransitionTime": transition})
        })
        .collect();
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| spec.name.clone());
    let machine_id = read("/etc/machine-id");
    let version = env!("CARGO_PKG_VERSION");
    let cpu = cpus().to_string();
    json!({
        "capacity": {
            "cpu": cpu,
            "memory": format!("{mem_ki}Ki"),
            "pods": spec.max_pods.to_string(),
            "ephemeral-storage": format!("{}Ki", disk_total / 1024),
        },
        "allocatable": {
            "cpu": cpu,
            // Allocatable holds back the hard eviction thresholds, as the kubelet's does.
            "memory": format!("{}Ki", mem_ki.saturating_sub(spec.eviction.memory.amount(mem_ki * 1024) / 1024)),
            "pods": spec.max_pods.to_string(),
            "ephemeral-storage": format!("{}Ki", disk_total.saturating_sub(spec.eviction.nodefs.amount(disk_total)) / 1024),
        },
        "conditions": conditions,
        "addresses": [
            {"type": "InternalIP", "address": spec.address},
            {"type": "Hostname", "address": hostname},
        ],
        "nodeInfo": {
            "machineID": machine_id,
            "systemUUID": machine_id,
            "bootID": read("/proc/sys/kernel/random/boot_id"),
            "kernelVersion": nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            "osImage": os_image(),
            "containerRuntimeVersion": format!("flotilla://{version}"),
            "kubeletVersion": format!("v1.35.0-flotilla.{version}"),
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": arch(),
        },
        "daemonEndpoints": {"kubeletEndpoint": {"Port": spec.port}},
    })
}

fn is(e: &ApiError, r: Reason) -> bool {
    e.reason == r
}

/// Creates the Node, or adopts an existing one (a restarted agent), and posts its status.
pub async fn register(client: &Client, spec: &NodeSpec) -> Result<Value> {
    let labels = json!({
        "kubernetes.io/hostname": spec.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": arch(),
    });
    let node = match client.get("nodes", "", &spec.name).await {
        Ok(mut n) => {
            // Keep what others set (labels, taints); make sure ours are there.
            let mut changed = false;
            for (k, v) in labels.as_object().into_iter().flatten() {
                if n["metadata"]["labels"][k] != *v {
                    n["metadata"]["labels"][k] = v.clone();
                    changed = true;
                }
            }
            if n["spec"]["podCIDR"].as_str().unwrap_or("").is_empty() {
                n["spec"]["podCIDR"] = json!(spec.pod_cidr);
                n["spec"]["podCIDRs"] = json!([spec.pod_cidr]);
                changed = true;
            }
            if changed {
                client.update("nodes", "", &n).await.context("updating the Node")?.0
            } else {
                n
            }
        }
        Err(e) if is(&e, Reason::NotFound) => {
            let n = json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": spec.name, "labels": labels},
                "spec": {"podCIDR": spec.pod_cidr, "podCIDRs": [spec.pod_cidr]}});
            client.create("nodes", "", &n).await.context("creating the Node")?.0
        }
        Err(e) => return Err(e).context("reading the Node"),
    };
    post_status(client, spec, node).await
}

/// Writes the Node's status through the status path, retrying on conflicts.
pub async fn post_status(client: &Client, spec: &NodeSpec, mut node: Value) -> Result<Value> {
    for _ in 0..5 {
        node["status"] = status(spec, node.get("status"));
        match client.update_status("nodes", "", &node).await {
            Ok(n) => return Ok(n),
            Err(e) if is(&e, Reason::Conflict) => {
                node = client.get("nodes", "", &spec.name).await.context("re-reading the Node")?;
            }
            Err(e) => return Err(e).context("posting the Node status"),
        }
    }
    anyhow::bail!("node {}: status update kept conflicting", spec.name)
}

/// Creates or renews the node's Lease (owned by the Node, so it goes with it).
pub async fn renew_lease(client: &Client, spec: &NodeSpec, node_uid: &str) -> Result<Value> {
    let ns = "kube-node-lease";
    match client.get("leases", ns, &spec.name).await {
        Ok(mut l) => {
            l["spec"]["holderIdentity"] = json!(spec.name);
            l["spec"]["leaseDurationSeconds"] = json!(spec.lease_seconds);
            l["spec"]["renewTime"] = json!(now_micro());
            Ok(client.update("leases", ns, &l).await.context("renewing the Lease")?.0)
        }
        Err(e) if is(&e, Reason::NotFound) => {
            let l = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": spec.name, "namespace": ns,
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": spec.name, "uid": node_uid}]},
                "spec": {"holderIdentity": spec.name, "leaseDurationSeconds": spec.lease_seconds,
                    "renewTime": now_micro()}});
            Ok(client.create("leases", ns, &l).await.context("creating the Lease")?.0)
        }
        Err(e) => Err(e).context("reading the Lease"),
    }
}

/// Keeps the node registered: registers (retrying until the API answers), then renews the
/// Lease every `renew` and re-posts the status every `status_every`, for as long as it runs.
pub async fn run(
    client: Client,
    spec: NodeSpec,
    renew: Duration,
    status_every: Duration,
) -> Result<()> {
    let mut backoff = Duration::from_millis(100);
    let node = loop {
        match register(&client, &spec).await {
            Ok(n) => break n,
            Err(e) => {
                tracing::warn!(node = %spec.name, "registering: {e:#}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    let uid = node["metadata"]["uid"].as_str().unwrap_or("").to_string();
    tracing::info!(node = %spec.name, pod_cidr = %spec.pod_cidr, "node registered");
    let mut lease = tokio::time::interval(renew);
    let mut report = tokio::time::interval(status_every);
    report.tick().await;
    loop {
        tokio::select! {
            _ = lease.tick() => {
                if let Err(e) = renew_lease(&client, &spec, &uid).await {
                    tracing::warn!(node = %spec.name, "lease: {e:#}");
                }
            }
            _ = report.tick() => {
                let posted = match client.get("nodes", "", &spec.name).await {
                    Ok(n) => post_status(&client, &spec, n).await.map(|_| ()),
                    Err(e) if is(&e, Reason::NotFound) => register(&client, &spec).await.map(|_| ()),
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = posted {
                    tracing::warn!(node = %spec.name, "node status: {e:#}");
                }
            }
        }
    }
}
