//! `flotillad server`: a store member serving the etcd v3 API and Raft peers.

use anyhow::{bail, Context, Result};
use flotilla_store::etcd::{bind, serve};
use flotilla_store::{StoreConfig, StoreNode};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Clone)]
pub struct ServerArgs {
    /// This member's name (unique in the cluster; its id derives from it).
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Where this member keeps its Raft log and state.
    #[arg(long, default_value = "/var/lib/flotilla/store")]
    pub data_dir: PathBuf,
    /// API server address (gRPC). Reserved: the API server is not built yet.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: String,
    /// etcd v3 client API (KV, Watch, Lease, Cluster, Maintenance).
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub store_listen: String,
    /// Raft traffic between members.
    #[arg(long, default_value = "127.0.0.1:2380")]
    pub peer_listen: String,
    /// Every initial member: n1=HOST:PORT,n2=HOST:PORT,n3=HOST:PORT (their peer addresses).
    #[arg(long, value_delimiter = ',')]
    pub initial_cluster: Vec<String>,
    /// Join a running cluster through one of its members. Not supported yet: list every member
    /// in --initial-cluster instead.
    #[arg(long)]
    pub join: Option<String>,
    /// Keep this many revisions of history and compact older ones automatically (0: never).
    #[arg(long, default_value_t = 0)]
    pub retention_revisions: i64,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// Applied entries between Raft snapshots.
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_every: u64,
    /// Seconds between progress notifications for idle watches that ask for them.
    #[arg(long, default_value_t = 600)]
    pub progress_notify_secs: u64,
}

impl ServerArgs {
    pub fn defaults() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct W {
            #[command(flatten)]
            a: ServerArgs,
        }
        W::parse_from(["flotillad"]).a
    }
}

pub async fn run(a: ServerArgs) -> Result<()> {
    if a.join.is_some() {
        bail!("--join is not supported yet; start every member with the same --initial-cluster");
    }
    let mut initial = Vec::new();
    for m in &a.initial_cluster {
        let (name, addr) = m
            .split_once('=')
            .with_context(|| format!("--initial-cluster entry {m:?} is not NAME=HOST:PORT"))?;
        let addr = addr.trim_start_matches("http://").to_string();
        initial.push((name.to_string(), addr));
    }
    let peer_addr = initial
        .iter()
        .find(|(n, _)| *n == a.name)
        .map(|(_, addr)| addr.clone())
        .unwrap_or_else(|| a.peer_listen.clone());
    if !initial.is_empty() && !initial.iter().any(|(n, _)| *n == a.name) {
        bail!("--name {} is not one of the --initial-cluster members", a.name);
    }
    let mut config = StoreConfig::single(&a.name, a.data_dir.clone(), &peer_addr, &a.store_listen);
    config.initial_cluster = initial;
    config.retention_revisions = a.retention_revisions;
    config.heartbeat_ms = a.heartbeat_ms;
    config.election_timeout_ms = (a.heartbeat_ms * 5, a.heartbeat_ms * 10);
    config.snapshot_every = a.snapshot_every;
    config.progress_notify_interval = Duration::from_secs(a.progress_notify_secs.max(1));

    // Bind first so a port conflict fails before anything is written.
    let client = bind(&a.store_listen).await?;
    let peer = bind(&a.peer_listen).await?;
    let node = StoreNode::start(config).await.context("starting the store")?;
    tracing::info!(
        name = %a.name,
        store = %a.store_listen,
        peer = %a.peer_listen,
        data_dir = %a.data_dir.display(),
        "flotillad server ready"
    );
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    serve(node.clone(), client, peer, shutdown).await?;
    node.shutdown().await;
    Ok(())
}
