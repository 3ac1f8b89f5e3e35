//! kube-proxy's half of the agent: Services and Endpoints from the API, programmed into the
//! eBPF load balancer (socket-level translation for every process of this node's pods).
//!
//! ```text
//!  services, endpoints informers ─► build() ─► LoadBalancer::sync (atomic per service)
//!                                                   │ cgroup sock_addr programs attached at
//!                                                   ▼ <cgroup2>/<cgroup-parent>
//!  agent (moved into <cgroup-parent>/agent) ─► runtime ─► containers inherit the cgroup
//! ```
//!
//! On hybrid hosts the runtime places containers in v1 controllers only, so in the cgroup2
//! tree they stay where the agent put itself: under the directory the programs are attached
//! to. On unified hosts the runtime creates their cgroups under the same parent.

use anyhow::{Context, Result};
use flotilla_client::{object_key, Client, Informer, WatchParams};
use flotilla_dataplane::{
    Backend, LbConfig, LoadBalancer, Protocol, Selection, Service, ServicePort,
};
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The cgroup2 mount: `/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on hybrid.
pub fn cgroup2_root() -> PathBuf {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/unified")
    }
}

pub fn pin_dir(node: &str) -> PathBuf {
    PathBuf::from("/sys/fs/bpf/flotilla").join(node)
}

/// Moves this process into `<cgroup2>/<parent>/agent`; returns `<cgroup2>/<parent>`.
fn join_node_cgroup(parent: &str) -> Result<PathBuf> {
    let dir = cgroup2_root().join(parent);
    let agent = dir.join("agent");
    std::fs::create_dir_all(&agent).with_context(|| format!("creating {}", agent.display()))?;
    std::fs::write(agent.join("cgroup.procs"), std::process::id().to_string())
        .with_context(|| format!("joining {}", agent.display()))?;
    Ok(dir)
}

/// Detaches the node's programs, removes its pins and its cgroup2 directories (`--reset`).
pub fn reset(node: &str, parent: &str) {
    let pins = pin_dir(node);
    if let Err(e) = flotilla_dataplane::lb::remove_pins(&pins) {
        tracing::warn!(error = %e, "removing the load balancer's pins");
    }
    // The last node of this host takes the shared parent with it (another node's stays).
    if let Some(parent) = pins.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    let dir = cgroup2_root().join(parent);
    let _ = std::fs::remove_dir(dir.join("agent"));
    let _ = std::fs::remove_dir(&dir);
}

/// The load balancer's view of the Services with a ClusterIP, backends from their Endpoints'
/// ready addresses. A Service the dataplane would refuse is left out and named in the log.
pub fn build(
    services: &[Arc<Value>],
    endpoints: impl Fn(&str) -> Option<Arc<Value>>,
) -> Vec<Service> {
    let mut out = Vec::new();
    for svc in services {
        let key = object_key(svc);
        let spec = &svc["spec"];
        let Some(ip) = spec["clusterIP"].as_str().and_then(|s| s.parse::<Ipv4Addr>().ok()) else {
            continue; // headless ("None") or not allocated yet
        };
        if matches!(spec["type"].as_str(), Some("ExternalName")) {
            continue;
        }
        let ep = endpoints(&key);
        let mut ports = Vec::new();
        for sp in spec["ports"].as_array().into_iter().flatten() {
            let protocol = match sp["protocol"].as_str().unwrap_or("TCP") {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                _ => continue,
            };
            let name = sp["name"].as_str().unwrap_or("").to_string();
            let mut backends = Vec::new();
            for subset in ep.iter().flat_map(|e| e["subsets"].as_array().into_iter().flatten()) {
                let Some(port) = subset["ports"].as_array().into_iter().flatten().find(|p| {
                    p["name"].as_str().unwrap_or("") == name
                        && p["protocol"].as_str().unwrap_or("TCP")
                            == sp["protocol"].as_str().unwrap_or("TCP")
                }) else {
                    continue;
                };
                let Some(port) = port["port"].as_u64().and_then(|p| u16::try_from(p).ok()) else {
                    continue;
                };
                for a in subset["addresses"].as_array().into_iter().flatten() {
                    if let Some(addr) = a["ip"].as_str().and_then(|s| s.parse().ok()) {
                        backends.push(Backend::new(addr, port));
                    }
                }
            }
            backends.sort_by_key(|b| (b.addr, b.port));
            backends.dedup();
            ports.push(ServicePort {
                name,
                protocol,
                port: sp["port"].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(0),
                node_port: sp["nodePort"].as_u64().and_then(|p| u16::try_from(p).ok()),
                backends,
            });
        }
        let affinity = (spec["sessionAffinity"] == "ClientIP").then(|| {
            spec.pointer("/sessionAffinityConfig/clientIP/timeoutSeconds")
                .and_then(Value::as_u64)
                .unwrap_or(10800) as u32
        });
        let s = Service {
            name: key.clone(),
            cluster_ip: ip,
            ports,
            affinity_timeout: affinity,
            selection: Selection::Random,
        };
        match s.validate() {
            Ok(()) => out.push(s),
            Err(e) => tracing::warn!(service = %key, error = %e, "not programming the service"),
        }
    }
    out
}

/// The node's cluster DNS: the address pods are given (the kube-dns Service's ClusterIP) and
/// where this agent serves it.
pub struct Dns {
    pub vip: Ipv4Addr,
    pub server: Ipv4Addr,
    pub domain: String,
    pub zone: super::dns::ZoneHandle,
}

/// Points the DNS address at this node's own server, replacing the (endpoint-less)
/// kube-dns Service if the API has one: every agent answers its own pods.
fn local_dns(services: &mut Vec<Service>, dns: &Dns) {
    services.retain(|s| s.cluster_ip != dns.vip);
    let port = |name: &str, protocol| ServicePort {
        name: name.into(),
        protocol,
        port: 53,
        node_port: None,
        backends: vec![Backend::new(dns.server, 53)],
    };
    services.push(Service {
        name: "kube-system/kube-dns".into(),
        cluster_ip: dns.vip,
        ports: vec![port("dns", Protocol::Udp), port("dns-tcp", Protocol::Tcp)],
        affinity_timeout: None,
        selection: Selection::Random,
    });
}

/// Keeps the node's load balancer and DNS zone in step with the API for as long as the agent
/// runs.
pub async fn run(
    client: Client,
    node: String,
    cgroup_parent: String,
    external: Option<flotilla_dataplane::External>,
    dns: Dns,
) -> Result<()> {
    let cgroup = join_node_cgroup(&cgroup_parent)?;
    if let Some(e) = &external {
        tracing::info!(%node, interface = %e.interface, address = %e.node_addr, "NodePorts and egress SNAT on the external interface");
    }
    let mut lb =
        LoadBalancer::start(LbConfig { pin_dir: pin_dir(&node), cgroup: cgroup.clone(), external })
            .with_context(|| {
                format!("starting the service load balancer on {}", cgroup.display())
            })?;
    let svcs = Informer::start(client.clone(), "services", "", WatchParams::default());
    let eps = Informer::start(client, "endpoints", "", WatchParams::default());
    let (mut a, mut b) = (svcs.subscribe(), eps.subscribe());
    while svcs.wait_synced(Duration::from_secs(30)).await.is_err()
        || eps.wait_synced(Duration::from_secs(30)).await.is_err()
    {
        tracing::warn!(%node, "waiting for services and endpoints");
    }
    tracing::info!(%node, cgroup = %cgroup.display(), "service load balancer ready");
    loop {
        let list = svcs.list();
        let zone = super::dns::Zone::build(&dns.domain, &list, |k| eps.get(k));
        *dns.zone.write().expect("dns zone lock") = Arc::new(zone);
        let mut services = build(&list, |k| eps.get(k));
        local_dns(&mut services, &dns);
        if let Err(e) = lb.sync(&services) {
            tracing::error!(error = %e, "programming services failed; retrying on the next change");
        }
        // Wait for a change, then let a burst settle so one sync covers it.
        tokio::select! {
            r = a.recv() => if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) { anyhow::bail!("service informer stopped") },
            r = b.recv() => if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) { anyhow::bail!("endpoints informer stopped") },
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        while a.try_recv().is_ok() || b.try_recv().is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn services_take_their_ready_endpoints_per_named_port() {
        let svc = Arc::new(json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "sessionAffinity": "ClientIP", "ports": [
                {"name": "http", "port": 80, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}]}}));
        let headless = Arc::new(json!({"metadata": {"name": "db", "namespace": "default"},
            "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}}));
        let ep = Arc::new(json!({"subsets": [
            {"addresses": [{"ip": "10.244.1.3"}, {"ip": "10.244.1.2"}], "notReadyAddresses": [{"ip": "10.244.1.9"}],
             "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}]}]}));
        let out = build(&[svc, headless], |k| (k == "default/web").then(|| ep.clone()));
        assert_eq!(out.len(), 1, "the headless service has no ClusterIP to program");
        let s = &out[0];
        assert_eq!(s.affinity_timeout, Some(10800));
        assert_eq!(
            s.ports[0].backends,
            vec![
                Backend::new("10.244.1.2".parse().unwrap(), 8080),
                Backend::new("10.244.1.3".parse().unwrap(), 8080)
            ]
        );
        assert_eq!((s.ports[1].protocol, s.ports[1].backends[0].port), (Protocol::Udp, 5353));
    }

    #[test]
    fn a_service_without_endpoints_has_no_backends() {
        let svc = Arc::new(json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.11", "ports": [{"port": 80}]}}));
        let out = build(&[svc], |_| None);
        assert!(out[0].ports[0].backends.is_empty());
    }
}
