//! The scheduler and the controllers against a real `flotillad server`, with simulated nodes
//! (Node objects without agents; where a test needs running pods, a small fake kubelet in the
//! test marks bound pods Running and Ready, and finishes their graceful deletion).

use flotilla_client::{Client, DeleteParams, ListParams};
use flotilla_tests::{flotilla_cli, Member};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Server {
    member: Member,
    _dir: tempfile::TempDir,
    client: Client,
}

async fn server(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut member = Member::new("sched", dir.path());
    member.extra = extra.iter().map(|s| s.to_string()).collect();
    member.start().unwrap();
    let client = member.client().await.unwrap();
    for _ in 0..400 {
        if client.get("namespaces", "", "default").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Server { member, _dir: dir, client }
}

impl Server {
    fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = std::process::Command::new(flotilla_cli())
            .arg("--kubeconfig")
            .arg(self.member.kubeconfig())
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

fn node(name: &str, cpu: &str, labels: Value, spec: Value) -> Value {
    let mut l = labels;
    l["kubernetes.io/hostname"] = json!(name);
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": l}, "spec": spec,
        "status": {"capacity": {"cpu": cpu, "memory": "16Gi", "pods": "110"},
                   "allocatable": {"cpu": cpu, "memory": "16Gi", "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}})
}

fn pod(name: &str, cpu: &str, extra: Value) -> Value {
    let mut spec = json!({"containers": [{"name": "c", "image": "busybox",
        "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
}

/// Polls `f` until it returns Some, or panics with `what` after `secs`.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn node_of(c: &Client, name: &str) -> Option<String> {
    let p = c.get("pods", "default", name).await.ok()?;
    p["spec"]["nodeName"].as_str().map(str::to_string)
}

fn condition<'a>(p: &'a Value, kind: &str) -> Option<&'a Value> {
    p["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == kind)
}

/// Proves the filters hold on a live cluster, that an unschedulable pod says which filters
/// failed, and that it is placed as soon as a node that fits appears.
#[tokio::test]
async fn pods_are_placed_within_every_constraint_and_unschedulable_ones_wait_for_capacity() {
    let s = server(&["--node-monitor-grace-period", "3600"]).await;
    let c = &s.client;
    c.create("nodes", "", &node("n1", "4", json!({"zone": "a"}), json!({}))).await.unwrap();
    c.create(
        "nodes",
        "",
        &node(
            "n2",
            "4",
            json!({"zone": "b"}),
            json!({"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}),
        ),
    )
    .await
    .unwrap();
    c.create("nodes", "", &node("n3", "4", json!({"zone": "b"}), json!({"unschedulable": true})))
        .await
        .unwrap();

    c.create("pods", "default", &pod("big", "3", json!({}))).await.unwrap();
    c.create("pods", "default", &pod("db", "3", json!({"nodeSelector": {"zone": "b"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]}))).await.unwrap();
    assert_eq!(eventually(10, "big bound", || node_of(c, "big")).await, "n1");
    assert_eq!(eventually(10, "db bound", || node_of(c, "db")).await, "n2");
    let big = c.get("pods", "default", "big").await.unwrap();
    assert_eq!(condition(&big, "PodScheduled").unwrap()["status"], "True");

    c.create("pods", "default", &pod("huge", "2", json!({}))).await.unwrap();
    let msg = eventually(10, "PodScheduled=False", || async {
        let p = c.get("pods", "default", "huge").await.ok()?;
        let cond = condition(&p, "PodScheduled")?;
        (cond["status"] == "False").then(|| cond["message"].as_str().unwrap_or("").to_string())
    })
    .await;
    assert_eq!(
        msg,
        "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: db}, 1 node(s) were unschedulable."
    );
    let (_, describe) = s.cli(&["describe", "pod", "huge"]);
    assert!(describe.contains("FailedScheduling"), "{describe}");
    let (ok, events) = s.cli(&["events", "--for", "pod/huge", "--types", "Warning"]);
    assert!(ok && events.contains("FailedScheduling") && !events.contains("pod/big"), "{events}");

    // Capacity arrives: the waiting pod is placed without anyone touching it.
    c.create("nodes", "", &node("n4", "8", json!({}), json!({}))).await.unwrap();
    assert_eq!(eventually(10, "huge bound", || node_of(c, "huge")).await, "n4");
    let (_, events) = s.cli(&["get", "events"]);
    assert!(events.contains("Successfully assigned default/huge to n4"), "{events}");

    // Required pod affinity: a pod that wants to be in the zone of a cache waits until a
    // cache pod exists, then goes to that zone.
    let near = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "zone"}]}}});
    c.create("pods", "default", &pod("near", "100m", near)).await.unwrap();
    let msg = eventually(10, "near waits for a cache pod", || async {
        let p = c.get("pods", "default", "near").await.ok()?;
        let cond = condition(&p, "PodScheduled")?;
        (cond["status"] == "False").then(|| cond["message"].as_str().unwrap_or("").to_string())
    })
    .await;
    assert!(msg.contains("didn't match pod affinity rules"), "{msg}");
    let mut cache = pod("cache", "100m", json!({"nodeSelector": {"zone": "a"}}));
    cache["metadata"]["labels"] = json!({"app": "cache"});
    c.create("pods", "default", &cache).await.unwrap();
    assert_eq!(eventually(10, "cache bound", || node_of(c, "cache")).await, "n1");
    assert_eq!(eventually(10, "near bound next to it", || node_of(c, "near")).await, "n1");
    drop(s.member);
}

/// A fake kubelet for simulated nodes: bound pods become Running and Ready with an address;
/// pods being deleted are finished off.
fn fake_kubelet(c: Client, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ip = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let pods = c
                .list("pods", "default", &ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            for p in pods {
                let name = p["metadata"]["name"].as_str().unwrap_or("").to_string();
                if p["spec"]["nodeName"].as_str().unwrap_or("").is_empty() {
                    continue;
                }
                if p["metadata"]["deletionTimestamp"].is_string() {
                    let dp = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
                    let _ = c.delete("pods", "default", &name, &dp).await;
                } else if p["metadata"]["labels"]["batch.kubernetes.io/job-name"].is_string() {
                    // Job pods run to completion at once.
                    if p["status"]["phase"] != "Succeeded" {
                        let mut st = p.clone();
                        st["status"]["phase"] = json!("Succeeded");
                        st["status"]["containerStatuses"] = json!([{"name": "c", "ready": false, "restartCount": 0,
                            "image": "busybox", "imageID": "", "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                            "finishedAt": "2020-01-01T00:00:00Z"}}}]);
                        let _ = c.update_status("pods", "default", &st).await;
                    }
                } else if p["status"]["phase"] != "Running" {
                    ip += 1;
                    let mut st = p.clone();
                    st["status"]["phase"] = json!("Running");
                    st["status"]["podIP"] = json!(format!("10.244.0.{}", ip % 250 + 2));
                    let mut conds: Vec<Value> =
                        st["status"]["conditions"].as_array().cloned().unwrap_or_default();
                    conds.retain(|c| c["type"] != "Ready");
                    conds.push(json!({"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}));
                    st["status"]["conditions"] = json!(conds);
                    if let Err(e) = c.update_status("pods", "default", &st).await {
                        eprintln!("fake kubelet: {name}: {e}");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

fn ready_pods(pods: &[Value]) -> usize {
    pods.iter()
        .filter(|p| !p["metadata"]["deletionTimestamp"].is_string())
        .filter(|p| condition(p, "Ready").is_some_and(|c| c["status"] == "True"))
        .count()
}

/// Proves a Deployment rolls to a new template and back with zero unavailable replicas (every
/// sample of ready pods during both rollouts is at least the replica count), that revisions
/// and history follow kubectl's, that the Service's Endpoints track the ready pods, and that
/// deleting the Deployment cascades to its ReplicaSets and pods.
// Multi-threaded: the CLI runs blocking while the fake kubelet and the sampler keep going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_rolls_with_zero_unavailable_rolls_back_and_cascades() {
    let s = server(&["--node-monitor-grace-period", "3600"]).await;
    let c = &s.client;
    for n in ["n1", "n2", "n3"] {
        c.create("nodes", "", &node(n, "8", json!({}), json!({}))).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let kubelet = fake_kubelet(c.clone(), stop.clone());
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox:1",
                    "ports": [{"name": "http", "containerPort": 8080}]}]}}}});
    c.create("deployments", "default", &d).await.unwrap();
    c.create(
        "services",
        "default",
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}}),
    )
    .await
    .unwrap();
    let (ok, out) = s.cli(&["rollout", "status", "deployment/web", "--timeout", "30"]);
    assert!(ok && out.contains("successfully rolled out"), "{out}");
    let ep = eventually(10, "3 endpoints", || async {
        let ep = c.get("endpoints", "default", "web").await.ok()?;
        (ep["subsets"][0]["addresses"].as_array()?.len() == 3).then_some(ep)
    })
    .await;
    assert_eq!(ep["subsets"][0]["ports"][0]["port"], 8080, "named targetPort resolved");

    // Sample readiness through both rollouts.
    let min_ready = Arc::new(AtomicUsize::new(usize::MAX));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (c, min_ready, sampling) = (c.clone(), min_ready.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                if let Ok(l) = c.list("pods", "default", &ListParams::default()).await {
                    min_ready.fetch_min(ready_pods(&l.items), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let (ok, out) = s.cli(&["patch", "deployment", "web", "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"c","image":"busybox:2","ports":[{"name":"http","containerPort":8080}]}]}}}}"#]);
    assert!(ok, "{out}");
    let (ok, out) = s.cli(&["rollout", "status", "deployment/web", "--timeout", "20"]);
    assert!(ok && out.contains("successfully rolled out"), "{out}");
    let rs = c.list("replicasets", "default", &ListParams::default()).await.unwrap().items;
    assert_eq!(rs.len(), 2);
    let newest = rs.iter().find(|r| r["spec"]["replicas"] == 3).unwrap();
    assert_eq!(newest["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "2");
    assert_eq!(newest["spec"]["template"]["spec"]["containers"][0]["image"], "busybox:2");

    let (ok, out) = s.cli(&["rollout", "undo", "deployment/web"]);
    assert!(ok && out.contains("rolled back"), "{out}");
    let (ok, out) = s.cli(&["rollout", "status", "deployment/web", "--timeout", "60"]);
    assert!(ok && out.contains("successfully rolled out"), "{out}");
    sampling.store(false, Ordering::Relaxed);
    sampler.await.unwrap();
    assert!(
        min_ready.load(Ordering::Relaxed) >= 3,
        "ready pods dropped to {} during a rollout",
        min_ready.load(Ordering::Relaxed)
    );
    let dep = c.get("deployments", "default", "web").await.unwrap();
    assert_eq!(dep["spec"]["template"]["spec"]["containers"][0]["image"], "busybox:1");
    let (_, hist) = s.cli(&["rollout", "history", "deployment/web"]);
    let revs: Vec<&str> =
        hist.lines().skip(2).map(|l| l.split_whitespace().next().unwrap_or("")).collect();
    assert_eq!(revs, vec!["2", "3"], "{hist}");
    let (_, events) = s.cli(&["get", "events"]);
    assert!(events.contains("ScalingReplicaSet"), "{events}");

    // Delete: the ReplicaSets and pods follow (garbage collector), then the Endpoints empty.
    let (ok, out) = s.cli(&["delete", "deployment", "web"]);
    assert!(ok, "{out}");
    eventually(20, "ReplicaSets and pods gone", || async {
        let rs = c.list("replicasets", "default", &ListParams::default()).await.ok()?.items;
        let pods = c.list("pods", "default", &ListParams::default()).await.ok()?.items;
        (rs.is_empty() && pods.is_empty()).then_some(())
    })
    .await;
    eventually(10, "empty Endpoints", || async {
        let ep = c.get("endpoints", "default", "web").await.ok()?;
        ep.get("subsets").is_none_or(|s| s.as_array().is_some_and(|a| a.is_empty())).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    kubelet.await.unwrap();
}

async fn renew(c: &Client, node: &str) {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    match c.get("leases", "kube-node-lease", node).await {
        Ok(mut l) => {
            l["spec"]["renewTime"] = json!(now);
            let _ = c.update("leases", "kube-node-lease", &l).await;
        }
        Err(_) => {
            let l = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": node, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now}});
            let _ = c.create("leases", "kube-node-lease", &l).await;
        }
    }
}

/// Proves a node that stops renewing its Lease goes NotReady (Unknown) with the unreachable
/// taints, and that its pods are evicted and replaced on the node that is still alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_node_is_tainted_and_its_pods_move_elsewhere() {
    let s = server(&[
        "--node-monitor-grace-period",
        "2",
        "--default-unreachable-toleration-seconds",
        "1",
    ])
    .await;
    let c = &s.client;
    for n in ["alive", "dying"] {
        c.create("nodes", "", &node(n, "8", json!({}), json!({}))).await.unwrap();
        renew(c, n).await;
    }
    let dying_alive = Arc::new(AtomicBool::new(true));
    let renewer = {
        let (c, dying_alive) = (c.clone(), dying_alive.clone());
        tokio::spawn(async move {
            loop {
                renew(&c, "alive").await;
                if dying_alive.load(Ordering::Relaxed) {
                    renew(&c, "dying").await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "app"},
        "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {"labels": {"app": "x"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
    c.create("replicasets", "default", &rs).await.unwrap();
    let placement = || async {
        let pods = c.list("pods", "default", &ListParams::default()).await.ok()?.items;
        let nodes: Vec<String> = pods
            .iter()
            .filter(|p| !p["metadata"]["deletionTimestamp"].is_string())
            .filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_string))
            .collect();
        Some(nodes)
    };
    eventually(10, "4 pods spread over both nodes", || async {
        let n = placement().await?;
        (n.len() == 4 && n.iter().any(|x| x == "dying") && n.iter().any(|x| x == "alive"))
            .then_some(())
    })
    .await;

    dying_alive.store(false, Ordering::Relaxed);
    let node = eventually(15, "the dying node tainted", || async {
        let n = c.get("nodes", "", "dying").await.ok()?;
        n["spec"]["taints"]
            .as_array()?
            .iter()
            .any(|t| t["key"] == "node.kubernetes.io/unreachable")
            .then_some(n)
    })
    .await;
    assert_eq!(condition(&node, "Ready").unwrap()["status"], "Unknown");
    eventually(20, "all 4 pods on the live node", || async {
        let n = placement().await?;
        (n.len() == 4 && n.iter().all(|x| x == "alive")).then_some(())
    })
    .await;
    renewer.abort();
}

/// Proves the other workload controllers on simulated nodes: a DaemonSet covers every eligible
/// node (and a node that joins), a StatefulSet comes up in ordinal order with stable names and
/// hostnames, a Job runs to completion, and a CronJob fires on schedule and trims its history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonsets_statefulsets_jobs_and_cronjobs_do_their_work() {
    let s = server(&["--node-monitor-grace-period", "3600"]).await;
    let c = &s.client;
    c.create("nodes", "", &node("n1", "8", json!({}), json!({}))).await.unwrap();
    c.create("nodes", "", &node("n2", "8", json!({}), json!({}))).await.unwrap();
    c.create(
        "nodes",
        "",
        &node(
            "n3",
            "8",
            json!({}),
            json!({"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}),
        ),
    )
    .await
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let kubelet = fake_kubelet(c.clone(), stop.clone());
    // Everything that happens to pods, in order.
    let rv = c.list("pods", "default", &ListParams::default()).await.unwrap().resource_version;
    let stream = c
        .watch(
            "pods",
            "default",
            &flotilla_client::WatchParams { resource_version: rv, ..Default::default() },
        )
        .await
        .unwrap();
    let log: Arc<std::sync::Mutex<Vec<(String, String, bool)>>> = Arc::default();
    let recorder = {
        let log = log.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            futures::pin_mut!(stream);
            while let Some(Ok(evs)) = stream.next().await {
                for e in evs {
                    let ready =
                        condition(&e.object, "Ready").is_some_and(|c| c["status"] == "True");
                    let name = e.object["metadata"]["name"].as_str().unwrap_or("").to_string();
                    log.lock().unwrap().push((format!("{:?}", e.kind), name, ready));
                }
            }
        })
    };

    let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
    c.create("daemonsets", "default", &ds).await.unwrap();
    let agent_pods = || async {
        let app = ListParams { label_selector: "app=agent".into(), ..Default::default() };
        c.list("pods", "default", &app).await.ok().map(|l| l.items)
    };
    let daemon_nodes = || async {
        let pods = agent_pods().await?;
        let mut n: Vec<String> = pods
            .iter()
            .filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_string))
            .collect();
        n.sort();
        Some(n)
    };
    eventually(15, "a daemon on n1 and n2 (not on tainted n3)", || async {
        (daemon_nodes().await? == ["n1", "n2"]).then_some(())
    })
    .await;
    c.create("nodes", "", &node("n4", "8", json!({}), json!({}))).await.unwrap();
    eventually(15, "a daemon on the new node", || async {
        (daemon_nodes().await? == ["n1", "n2", "n4"]).then_some(())
    })
    .await;
    eventually(10, "DaemonSet status", || async {
        let d = c.get("daemonsets", "default", "agent").await.ok()?;
        (d["status"]["desiredNumberScheduled"] == 3 && d["status"]["numberReady"] == 3)
            .then_some(())
    })
    .await;

    let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {"replicas": 3, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
    c.create("statefulsets", "default", &sts).await.unwrap();
    eventually(30, "db-0..2 ready", || async {
        let d = c.get("statefulsets", "default", "db").await.ok()?;
        (d["status"]["readyReplicas"] == 3).then_some(())
    })
    .await;
    let db2 = c.get("pods", "default", "db-2").await.unwrap();
    assert_eq!(
        (db2["spec"]["hostname"].as_str(), db2["spec"]["subdomain"].as_str()),
        (Some("db-2"), Some("db"))
    );
    {
        // db-i+1 was created only after db-i was seen Ready.
        let log = log.lock().unwrap();
        for i in 1..3 {
            let added =
                log.iter().position(|(k, n, _)| k == "Added" && *n == format!("db-{i}")).unwrap();
            let prev_ready =
                log.iter().position(|(_, n, r)| *n == format!("db-{}", i - 1) && *r).unwrap();
            assert!(prev_ready < added, "db-{i} created before db-{} was Ready", i - 1);
        }
    }
    // A partitioned rolling update: only db-2 moves to the new template, recorded as a second
    // ControllerRevision; db-0, deleted, comes back at the old one.
    let image = |p: &Value| p["spec"]["containers"][0]["image"].as_str().unwrap_or("").to_string();
    let patch = json!({"spec": {"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}},
        "template": {"spec": {"containers": [{"name": "c", "image": "busybox:v2"}]}}}});
    c.patch("statefulsets", "default", "db", &patch, false, false).await.unwrap();
    let st = eventually(30, "db-2 at the new template, db-0 and db-1 not", || async {
        let d = c.get("statefulsets", "default", "db").await.ok()?;
        let pods = c.list("pods", "default", &ListParams::default()).await.ok()?.items;
        let img = |n: &str| pods.iter().find(|p| p["metadata"]["name"] == n).map(image);
        (d["status"]["updatedReplicas"] == 1
            && d["status"]["readyReplicas"] == 3
            && img("db-2")? == "busybox:v2"
            && img("db-1")? == "busybox"
            && img("db-0")? == "busybox")
            .then_some(d["status"].clone())
    })
    .await;
    let (current, update) = (st["currentRevision"].clone(), st["updateRevision"].clone());
    assert_ne!(current, update);
    let mut revs: Vec<(i64, String)> = c
        .list(
            "controllerrevisions",
            "default",
            &ListParams { label_selector: "app=db".into(), ..Default::default() },
        )
        .await
        .unwrap()
        .items
        .iter()
        .map(|r| {
            (r["revision"].as_i64().unwrap_or(0), r["metadata"]["name"].as_str().unwrap().into())
        })
        .collect();
    revs.sort();
    assert_eq!(
        revs,
        vec![(1, current.as_str().unwrap().into()), (2, update.as_str().unwrap().into())]
    );
    let old_uid = c.get("pods", "default", "db-0").await.unwrap()["metadata"]["uid"].clone();
    c.delete("pods", "default", "db-0", &DeleteParams::default()).await.unwrap();
    let db0 = eventually(30, "db-0 recreated", || async {
        let p = c.get("pods", "default", "db-0").await.ok()?;
        (p["metadata"]["uid"] != old_uid && p["metadata"]["deletionTimestamp"].is_null())
            .then_some(p)
    })
    .await;
    assert_eq!(
        (image(&db0), &db0["metadata"]["labels"]["controller-revision-hash"]),
        ("busybox".to_string(), &current),
        "below the partition a pod is recreated at the current revision"
    );
    // kubectl's rollout verbs for StatefulSets and DaemonSets.
    let (ok, out) = s.cli(&["rollout", "status", "statefulset/db", "--timeout", "30"]);
    assert!(ok && out.contains("partitioned roll out complete: 1 new pods"), "{out}");
    // A DaemonSet's templates are ControllerRevisions too: roll to a new image, then undo.
    let ds_images = || async {
        let pods = agent_pods().await?;
        let live = pods.iter().filter(|p| p["metadata"]["deletionTimestamp"].is_null());
        let mut v: Vec<String> = live.map(image).collect();
        v.sort();
        Some(v)
    };
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:v2"}]}}}});
    c.patch("daemonsets", "default", "agent", &patch, false, false).await.unwrap();
    let (ok, out) = s.cli(&["rollout", "status", "ds/agent", "--timeout", "30"]);
    assert!(ok && out.contains("daemon set \"agent\" successfully rolled out"), "{out}");
    assert_eq!(ds_images().await.unwrap(), ["busybox:v2"; 3]);
    let ds_history = || {
        let (ok, out) = s.cli(&["rollout", "history", "daemonset", "agent"]);
        assert!(ok && out.starts_with("daemonset.apps/agent"), "{out}");
        out.lines()
            .skip(2)
            .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ds_history(), ["1", "2"]);
    let (ok, out) = s.cli(&["rollout", "undo", "ds/agent"]);
    assert!(ok && out.contains("daemonset.apps/agent rolled back (to revision 1)"), "{out}");
    eventually(30, "every daemon back at the first image", || async {
        (ds_images().await? == ["busybox"; 3]).then_some(())
    })
    .await;
    assert_eq!(ds_history(), ["2", "3"]);
    let history = || {
        let (ok, out) = s.cli(&["rollout", "history", "sts/db"]);
        assert!(ok && out.starts_with("statefulset.apps/db"), "{out}");
        out.lines()
            .skip(2)
            .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(history(), ["1", "2"]);
    let (ok, out) = s.cli(&["rollout", "undo", "sts/db"]);
    assert!(ok && out.contains("statefulset.apps/db rolled back (to revision 1)"), "{out}");
    eventually(30, "db-2 back at the first template", || async {
        let p = c.get("pods", "default", "db-2").await.ok()?;
        (image(&p) == "busybox" && p["metadata"]["deletionTimestamp"].is_null()).then_some(())
    })
    .await;
    assert_eq!(history(), ["2", "3"], "the restored revision is renumbered as the newest");
    let (ok, out) = s.cli(&["rollout", "undo", "sts/db", "--to-revision", "3"]);
    assert!(ok && out.contains("skipped rollback"), "{out}");
    let (ok, out) = s.cli(&["rollout", "pause", "sts/db"]);
    assert!(!ok && out.contains("not supported"), "{out}");

    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once"},
        "spec": {"completions": 3, "parallelism": 2,
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}});
    c.create("jobs", "default", &job).await.unwrap();
    let done = eventually(30, "the Job Complete", || async {
        let j = c.get("jobs", "default", "once").await.ok()?;
        j["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Complete" && c["status"] == "True")
            .then_some(j)
    })
    .await;
    assert_eq!(done["status"]["succeeded"], 3);
    assert!(done["status"]["completionTime"].is_string());

    let cj = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "tick"},
        "spec": {"schedule": "@every 2s", "successfulJobsHistoryLimit": 1,
            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure",
                "containers": [{"name": "c", "image": "busybox"}]}}}}}});
    c.create("cronjobs", "default", &cj).await.unwrap();
    let seen: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>> = Arc::default();
    eventually(30, "the CronJob fired three times", || async {
        let jobs = c.list("jobs", "default", &ListParams::default()).await.ok()?.items;
        let mut seen = seen.lock().unwrap();
        for j in &jobs {
            let n = j["metadata"]["name"].as_str().unwrap_or("");
            if n.starts_with("tick-") {
                seen.insert(n.to_string());
            }
        }
        (seen.len() >= 3).then_some(())
    })
    .await;
    eventually(10, "history trimmed to one successful Job", || async {
        let jobs = c.list("jobs", "default", &ListParams::default()).await.ok()?.items;
        let done = jobs
            .iter()
            .filter(|j| j["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("tick-")))
            .filter(|j| j["status"]["succeeded"] == 1)
            .count();
        (done <= 1).then_some(())
    })
    .await;
    let tick = c.get("cronjobs", "default", "tick").await.unwrap();
    assert!(tick["status"]["lastScheduleTime"].is_string());
    assert!(tick["status"]["lastSuccessfulTime"].is_string());
    stop.store(true, Ordering::Relaxed);
    kubelet.await.unwrap();
    recorder.abort();
}

fn leader_member(lease: &Value) -> Option<String> {
    // Identities are <host>_<member>_<uuid>.
    lease["spec"]["holderIdentity"].as_str()?.split('_').nth(1).map(str::to_string)
}

/// Proves leader election across control-plane members: of three members, each running a
/// scheduler and a controller manager, one of each holds its Lease; a ReplicaSet gets exactly
/// its replicas (no second controller manager acts); killing the leading member hands both
/// roles to a survivor, which carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_scheduler_and_one_controller_manager_lead_among_three_members() {
    let dir = tempfile::tempdir().unwrap();
    let mut members =
        flotilla_tests::cluster(3, dir.path(), &["--node-monitor-grace-period", "3600"]).unwrap();
    let c = members[0].client().await.unwrap();
    let leases = |c: Client| async move {
        let s = c.get("leases", "kube-system", "flotilla-scheduler").await.ok()?;
        let m = c.get("leases", "kube-system", "flotilla-controller-manager").await.ok()?;
        Some((leader_member(&s)?, leader_member(&m)?))
    };
    let (sched, cm) = eventually(60, "both leases held", || leases(c.clone())).await;
    c.create("nodes", "", &node("n1", "8", json!({}), json!({}))).await.unwrap();
    let rs = |n: i64| {
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "app", "namespace": "default"},
            "spec": {"replicas": n, "selector": {"matchLabels": {"app": "x"}},
                "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}})
    };
    c.create("replicasets", "default", &rs(5)).await.unwrap();
    let bound = |c: Client| async move {
        let pods = c.list("pods", "default", &ListParams::default()).await.ok()?.items;
        Some((pods.len(), pods.iter().filter(|p| p["spec"]["nodeName"].is_string()).count()))
    };
    eventually(30, "5 pods bound", || async { (bound(c.clone()).await? == (5, 5)).then_some(()) })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        bound(c.clone()).await,
        Some((5, 5)),
        "exactly the replicas, from exactly one controller manager"
    );

    // The leading member goes; a survivor takes both roles over and keeps working.
    let gone: Vec<String> = [sched.clone(), cm.clone()].into();
    for m in members.iter_mut().filter(|m| gone.contains(&m.name)) {
        m.kill();
    }
    let survivor = members.iter().find(|m| !gone.contains(&m.name)).unwrap();
    let c = survivor.client().await.unwrap();
    let (s2, c2) = eventually(90, "both roles taken over", || async {
        let (s, m) = leases(c.clone()).await?;
        (!gone.contains(&s) && !gone.contains(&m)).then_some((s, m))
    })
    .await;
    assert!(!gone.contains(&s2) && !gone.contains(&c2));
    let mut r = c.get("replicasets", "default", "app").await.unwrap();
    r["spec"]["replicas"] = json!(7);
    eventually(30, "scaled under the new leaders", || async {
        let _ = c.update("replicasets", "default", &r).await;
        (bound(c.clone()).await? == (7, 7)).then_some(())
    })
    .await;
}
