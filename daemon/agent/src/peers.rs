//! Routes between nodes (host-gw, as flannel's backend of that name): every other node's pod
//! CIDR via that node's InternalIP, kept in step with the Node objects as nodes come and go.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use flotilla_client::{Client, Informer, WatchParams};
use flotilla_dataplane::NodeNetwork;
use ipnet::Ipv4Net;
use serde_json::Value;

/// (pod CIDR, InternalIP) of every node but `own` that has both.
pub fn peers(nodes: &[Arc<Value>], own: &str) -> Vec<(Ipv4Net, Ipv4Addr)> {
    let mut out: Vec<(Ipv4Net, Ipv4Addr)> = nodes
        .iter()
        .filter(|n| n["metadata"]["name"] != own)
        .filter_map(|n| {
            let cidr = n["spec"]["podCIDR"].as_str()?.parse().ok()?;
            let ip =
                n["status"]["addresses"].as_array()?.iter().find(|a| a["type"] == "InternalIP")?
                    ["address"]
                    .as_str()?
                    .parse()
                    .ok()?;
            Some((cidr, ip))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Keeps the node network's host-gw routes equal to [`peers`]; a failed sync is retried on
/// the next change or after a few seconds.
pub async fn run(client: Client, own: String, net: &NodeNetwork) -> Result<()> {
    let nodes = Informer::start(client, "nodes", "", WatchParams::default());
    let mut changes = nodes.subscribe();
    while nodes.wait_synced(Duration::from_secs(30)).await.is_err() {
        tracing::warn!(node = %own, "waiting for nodes");
    }
    let mut last = None;
    loop {
        let want = peers(&nodes.list(), &own);
        if last.as_ref() != Some(&want) {
            match net.set_peers(&want).await {
                Ok(()) => {
                    tracing::info!(node = %own, peers = want.len(), "routes to other nodes' pods");
                    last = Some(want);
                }
                Err(e) => tracing::error!(error = %e, "routing to other nodes' pods"),
            }
        }
        let retry = if last.is_some() { Duration::from_secs(3600) } else { Duration::from_secs(5) };
        tokio::select! {
            r = changes.recv() => if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                anyhow::bail!("node informer stopped")
            },
            _ = tokio::time::sleep(retry) => {}
        }
        // Lease renewals and status updates come in bursts: one sync covers them.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while changes.try_recv().is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_other_node_with_a_cidr_and_an_address_is_a_peer() {
        let node = |name: &str, cidr: Option<&str>, ip: Option<&str>| {
            let mut n = json!({"metadata": {"name": name}, "spec": {}, "status": {"addresses": [
                {"type": "Hostname", "address": name}]}});
            if let Some(c) = cidr {
                n["spec"]["podCIDR"] = json!(c);
            }
            if let Some(ip) = ip {
                n["status"]["addresses"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"type": "InternalIP", "address": ip}));
            }
            Arc::new(n)
        };
        let nodes = [
            node("a", Some("10.244.1.0/24"), Some("192.0.2.1")),
            node("b", Some("10.244.2.0/24"), Some("192.0.2.2")),
            node("c", None, Some("192.0.2.3")),
            node("d", Some("10.244.4.0/24"), None),
        ];
        assert_eq!(
            peers(&nodes, "a"),
            vec![("10.244.2.0/24".parse().unwrap(), "192.0.2.2".parse().unwrap())]
        );
    }
}
