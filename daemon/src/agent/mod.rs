//! `flotillad agent`: the node agent (kubelet and kube-proxy of a node in one process). Today it
//! registers the Node, keeps its Lease renewed and reports its conditions; running pods and
//! programming the dataplane build on this (issue: node agent).

pub mod node;

use std::{path::PathBuf, time::Duration};

use anyhow::Result;
use flotilla_api::client::Client;

#[derive(clap::Args, Clone, Debug)]
pub struct AgentArgs {
    /// The API server.
    #[arg(long, default_value = "http://127.0.0.1:6443", env = "FLOTILLA_SERVER")]
    pub server: String,
    /// This node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The node's address (default: the source address of the default route).
    #[arg(long)]
    pub node_ip: Option<String>,
    /// This node's pod CIDR.
    #[arg(long, default_value = "10.244.0.0/24")]
    pub pod_cidr: String,
    /// Where the agent keeps its state (its filesystem's free space is DiskPressure).
    #[arg(long, default_value = "/var/lib/flotilla/agent")]
    pub data_dir: PathBuf,
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// Lease renewal period, and the lease's duration (kubelet: 10 s and 40 s).
    #[arg(long, default_value_t = 10_000)]
    pub lease_renew_ms: u64,
    #[arg(long, default_value_t = 40)]
    pub lease_seconds: u32,
    /// Hard eviction thresholds, as the kubelet's flag: they set the pressure conditions and
    /// what allocatable holds back.
    #[arg(long, default_value = "memory.available<100Mi,nodefs.available<10%,pid.available<10%")]
    pub eviction_hard: node::Eviction,
    /// How often the Node's status is re-posted.
    #[arg(long, default_value_t = 10_000)]
    pub status_ms: u64,
}

impl AgentArgs {
    pub fn defaults() -> AgentArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            a: AgentArgs,
        }
        Wrap::parse_from(["agent"]).a
    }
}

/// The address the kernel would use as source towards the outside: a UDP socket's connect
/// sends nothing, it only routes (192.0.2.1 is TEST-NET-1, never contacted).
fn default_address() -> String {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".into())
}

pub async fn run(a: AgentArgs) -> Result<()> {
    std::fs::create_dir_all(&a.data_dir)?;
    let name = match &a.node_name {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()?.to_string_lossy().to_lowercase(),
    };
    let spec = node::NodeSpec {
        name,
        address: a.node_ip.clone().unwrap_or_else(default_address),
        pod_cidr: a.pod_cidr.clone(),
        data_dir: a.data_dir.clone(),
        max_pods: a.max_pods,
        lease_seconds: a.lease_seconds,
        eviction: a.eviction_hard.clone(),
    };
    let client = Client::connect_lazy(&a.server)?;
    node::run(
        client,
        spec,
        Duration::from_millis(a.lease_renew_ms.max(100)),
        Duration::from_millis(a.status_ms.max(100)),
    )
    .await
}
