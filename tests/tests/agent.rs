//! The node agent against a real API server: Node registration (capacity, allocatable,
//! addresses, system info, pod CIDR, conditions), Lease renewal, and adoption after a restart.

use std::{process::Command, time::Duration};

use flotilla_tests::{flotillad, Member, Proc};
use serde_json::Value;

async fn until<F, Fut>(what: &str, mut f: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    for _ in 0..200 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// An agent whose pressure conditions follow `eviction` (kubelet's --eviction-hard): the
/// machine's real free disk and memory vary between runs, the thresholds make them definite.
fn agent(member: &Member, dir: &std::path::Path, eviction: &str) -> Proc {
    let kc = member.node_kubeconfig("node-a", dir).unwrap();
    let mut cmd = Command::new(flotillad());
    cmd.args(["agent", "--node-name", "node-a", "--node-ip", "127.0.0.1"])
        .arg("--kubeconfig")
        .arg(kc)
        .args(["--pod-cidr", "10.244.7.0/24", "--lease-renew-ms", "200", "--status-ms", "300"])
        .args(["--eviction-hard", eviction, "--no-pods"])
        .arg("--data-dir")
        .arg(dir.join("agent"));
    Proc::spawn("agent", cmd, &dir.join("agent.log")).unwrap()
}

fn meminfo_ki(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_registers_node_and_renews_lease() {
    let dir = tempfile::tempdir().unwrap();
    let mut member = Member::new("srv", dir.path());
    member.start().unwrap();
    let client = member.client().await.unwrap();
    // Nothing is below zero: no pressure, and allocatable holds back exactly 100Mi.
    let mut a =
        agent(&member, dir.path(), "memory.available<0,nodefs.available<0%,pid.available<0%");

    let node = until("a Ready node", || async {
        let n = client.get("nodes", "", "node-a").await.ok()?;
        let ready = n["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        ready.then_some(n)
    })
    .await;
    let st = &node["status"];
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(st["capacity"]["cpu"], cpus.to_string());
    assert_eq!(st["capacity"]["pods"], "110");
    let total = meminfo_ki("MemTotal");
    assert_eq!(st["capacity"]["memory"], format!("{total}Ki"));
    assert_eq!(st["allocatable"]["memory"], st["capacity"]["memory"]);
    assert_eq!(node["spec"]["podCIDR"], "10.244.7.0/24");
    assert_eq!(node["metadata"]["labels"]["kubernetes.io/hostname"], "node-a");
    assert_eq!(
        st["addresses"][0],
        serde_json::json!({"type": "InternalIP", "address": "127.0.0.1"})
    );
    let uname = nix::sys::utsname::uname().unwrap();
    assert_eq!(st["nodeInfo"]["kernelVersion"], uname.release().to_string_lossy().as_ref());
    assert_eq!(st["nodeInfo"]["operatingSystem"], "linux");
    let kinds: Vec<&str> =
        st["conditions"].as_array().unwrap().iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]);
    for c in st["conditions"].as_array().unwrap() {
        let want = if c["type"] == "Ready" { "True" } else { "False" };
        assert_eq!(c["status"], want, "{c}");
    }

    // The Lease is renewed every 200 ms, owned by the Node.
    let renew = |l: &Value| l["spec"]["renewTime"].as_str().unwrap().to_string();
    let lease = until("the lease", || async {
        client.get("leases", "kube-node-lease", "node-a").await.ok()
    })
    .await;
    assert_eq!(lease["spec"]["holderIdentity"], "node-a");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 40);
    assert_eq!(lease["metadata"]["ownerReferences"][0]["uid"], node["metadata"]["uid"]);
    let first = renew(&lease);
    let later = until("a renewal", || async {
        let l = client.get("leases", "kube-node-lease", "node-a").await.ok()?;
        (renew(&l) > first).then_some(l)
    })
    .await;

    // A stopped agent stops renewing.
    a.kill();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stopped = renew(&client.get("leases", "kube-node-lease", "node-a").await.unwrap());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(renew(&client.get("leases", "kube-node-lease", "node-a").await.unwrap()), stopped);
    assert!(stopped >= renew(&later));

    // A restarted agent adopts its Node (same uid, Ready's transition time kept) and renews.
    let ready_since = |n: &Value| {
        n["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap()
            ["lastTransitionTime"]
            .clone()
    };
    // This one reports disk pressure (no filesystem has 100% free) and holds back 100Mi.
    let mut b = agent(&member, dir.path(), "memory.available<100Mi,nodefs.available<100%");
    until("renewal after restart", || async {
        let l = client.get("leases", "kube-node-lease", "node-a").await.ok()?;
        (renew(&l) > stopped).then_some(l)
    })
    .await;
    let again = until("disk pressure", || async {
        let n = client.get("nodes", "", "node-a").await.ok()?;
        let disk =
            n["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "DiskPressure")?;
        (disk["status"] == "True").then_some(n)
    })
    .await;
    assert_eq!(again["metadata"]["uid"], node["metadata"]["uid"]);
    assert_eq!(ready_since(&again), ready_since(&node));
    let disk = again["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "DiskPressure")
        .unwrap()
        .clone();
    assert_eq!(disk["reason"], "KubeletHasDiskPressure");
    assert!(disk["message"].as_str().unwrap().contains("nodefs.available<100%"), "{disk}");
    assert_eq!(again["status"]["allocatable"]["memory"], format!("{}Ki", total - 100 * 1024));
    b.kill();

    // A bad threshold is refused at start, naming the signal.
    let out = Command::new(flotillad())
        .args(["agent", "--eviction-hard", "disk.available<5%"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown eviction signal \"disk.available\""), "{err}");
}
