//! `flotillad server`: a control-plane member: the Raft store (etcd v3 API, Raft peers) and the
//! API server in front of it.

use crate::trust::ControlPlane;
use anyhow::{bail, Context, Result};
use flotilla_apiserver::{self as apiserver, ApiConfig, ApiServer};
use flotilla_client::runtime::leader::{run_elected, LeaderConfig};
use flotilla_client::{Client, Kubeconfig, Tls};
use flotilla_controllers::{self as controllers, ControllerConfig};
use flotilla_scheduler::{self as scheduler, SchedulerConfig};
use flotilla_store::etcd::{bind, serve};
use flotilla_store::{StoreConfig, StoreNode};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Clone)]
pub struct ServerArgs {
    /// This member's name (unique in the cluster; its id derives from it).
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Where this member keeps its Raft log and state.
    #[arg(long, default_value = "/var/lib/flotilla/store")]
    pub data_dir: PathBuf,
    /// API server address: gRPC, and Prometheus `/metrics` over HTTP on the same port.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: String,
    /// ClusterIPs of Services are allocated from this range.
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cidr: String,
    /// The ClusterIP of kube-system/kube-dns, which agents serve (and give pods as their
    /// nameserver); default: the service range's tenth address, kubeadm's choice.
    #[arg(long)]
    pub cluster_dns: Option<std::net::Ipv4Addr>,
    /// NodePorts are allocated from this range.
    #[arg(long, default_value = "30000-32767")]
    pub node_port_range: String,
    /// Milliseconds between watch bookmarks (for watches that allow them).
    #[arg(long, default_value_t = 10_000)]
    pub watch_bookmark_ms: u64,
    /// Events a watcher may fall behind before it is cut off (per resource type).
    #[arg(long, default_value_t = 8192)]
    pub watch_ring: usize,
    /// Events kept per resource type for watches resuming from an older resourceVersion;
    /// older ones get "expired" and relist.
    #[arg(long, default_value_t = 10_000)]
    pub watch_history: usize,
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
    /// Do not run the scheduler in this process (run `flotillad scheduler` instead).
    #[arg(long)]
    pub no_scheduler: bool,
    /// Do not run the controller manager in this process.
    #[arg(long)]
    pub no_controllers: bool,
    #[command(flatten)]
    pub scheduling: SchedulingArgs,
    #[command(flatten)]
    pub node_lifecycle: NodeLifecycleArgs,
    /// Lifetime of the certificates this member issues for itself and its components
    /// (renewed at 80%): a duration such as 8760h (kubeadm's one year) or 90s.
    #[arg(long, default_value = "8760h", value_parser = crate::trust::parse_lifetime)]
    pub cert_lifetime: Duration,
    /// More names or addresses for the serving certificate (k3s's --tls-san).
    #[arg(long, value_delimiter = ',')]
    pub tls_san: Vec<String>,
    /// Lifetime of the certificates the CSR signer issues to nodes (kube-controller-manager's
    /// flag); nodes renew theirs at 80%.
    #[arg(long, default_value = "8760h", value_parser = crate::trust::parse_lifetime)]
    pub cluster_signing_duration: Duration,
    /// Benchmarks only: the API port speaks plain HTTP/2 and authorizes everything
    /// (AlwaysAllow), so `cargo xtask bench api` can price TLS, authentication and RBAC.
    #[arg(long, hide = true)]
    pub bench_insecure_api: bool,
    /// An audit policy (`audit.k8s.io/v1` Policy): requests are logged as JSON lines in
    /// audit.k8s.io/v1 Event format at the level its first matching rule gives. Off without it.
    #[arg(long)]
    pub audit_policy_file: Option<PathBuf>,
    /// Where audit events go (`-`: standard output); default `<data-dir>/audit.log`.
    #[arg(long, requires = "audit_policy_file")]
    pub audit_log_path: Option<PathBuf>,
    /// Encryption at rest (Kubernetes' EncryptionConfiguration). Default
    /// `<data-dir>/pki/encryption.yaml`, created on first start with a random AES-GCM key
    /// for Secrets.
    #[arg(long)]
    pub encryption_provider_config: Option<PathBuf>,
    /// Where the PKI (`pki/`) and the admin kubeconfig (`admin.conf`) live; default
    /// --data-dir. `flotillad up` keeps them beside its store, agent and images.
    #[arg(skip)]
    pub home: Option<PathBuf>,
    /// Certificates already set up (by `flotillad up`, which needs them for its agent first).
    #[arg(skip)]
    pub control_plane: Option<Arc<ControlPlane>>,
}

#[derive(clap::Args, Clone, Debug)]
pub struct SchedulingArgs {
    /// Share of nodes to find feasible before scoring (kube-scheduler's
    /// percentageOfNodesToScore; 0: adaptive, 50% down to 5% as the cluster grows).
    #[arg(long, default_value_t = 0)]
    pub percentage_of_nodes_to_score: u32,
    /// Bindings in flight at once.
    #[arg(long, default_value_t = 64)]
    pub bind_concurrency: usize,
}

#[derive(clap::Args, Clone, Debug)]
pub struct SchedulerArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Campaign for the `flotilla-scheduler` Lease and act only while holding it.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    #[command(flatten)]
    pub scheduling: SchedulingArgs,
    /// The control-plane member this runs in (part of the leader identity).
    #[arg(skip)]
    pub member: Option<String>,
}

#[derive(clap::Args, Clone, Debug)]
pub struct ControllersArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Campaign for the `flotilla-controller-manager` Lease and act only while holding it.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    #[command(flatten)]
    pub node_lifecycle: NodeLifecycleArgs,
    #[arg(skip)]
    pub member: Option<String>,
}

#[derive(clap::Args, Clone, Debug)]
pub struct NodeLifecycleArgs {
    /// Seconds without a node Lease renewal before the node is NotReady and tainted
    /// unreachable (kube-controller-manager's --node-monitor-grace-period).
    #[arg(long, default_value_t = 40)]
    pub node_monitor_grace_period: u64,
    /// Seconds pods without their own toleration stay on an unreachable node before eviction.
    #[arg(long, default_value_t = 300)]
    pub default_unreachable_toleration_seconds: u64,
}

/// How a standalone component reaches the API server (kube-scheduler's and
/// kube-controller-manager's flags).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ConnectArgs {
    /// The API server (default: the kubeconfig's).
    #[arg(long)]
    pub server: Option<String>,
    /// The component's credentials.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Credentials given in process (`server` and `up`).
    #[arg(skip)]
    pub tls: Option<Tls>,
}

/// A long-running component's client: in-process credentials, else its kubeconfig's.
fn component_client(c: &ConnectArgs) -> Result<Client> {
    if let Some(tls) = c.tls.clone() {
        let server =
            c.server.as_deref().context("an in-process component needs the server's URL")?;
        return Ok(Client::connect_lazy_tls(server, tls)?);
    }
    let path =
        c.kubeconfig.as_deref().context("give --kubeconfig with this component's credentials")?;
    let conn = Kubeconfig::read(path)?.connection(None)?;
    let server = c.server.as_deref().unwrap_or(&conn.server);
    let client = Client::connect_lazy_tls(server, Tls::from_connection(&conn)?)?;
    Ok(match &conn.token {
        Some(t) => client.with_token(t)?,
        None => client,
    })
}

pub async fn run_scheduler(a: SchedulerArgs) -> Result<()> {
    let client = component_client(&a.connect)?;
    let cfg = SchedulerConfig {
        percentage_to_score: a.scheduling.percentage_of_nodes_to_score.min(100),
        bind_concurrency: a.scheduling.bind_concurrency.max(1),
        ..SchedulerConfig::default()
    };
    if !a.leader_elect {
        return scheduler::run(client, cfg).await;
    }
    let c = client.clone();
    run_elected(client, LeaderConfig::new("flotilla-scheduler", a.member.as_deref()), move || {
        scheduler::run(c.clone(), cfg.clone())
    })
    .await
}

pub async fn run_controllers(a: ControllersArgs) -> Result<()> {
    let client = component_client(&a.connect)?;
    let cfg = ControllerConfig {
        node_monitor_grace: Duration::from_secs(a.node_lifecycle.node_monitor_grace_period.max(1)),
        default_unreachable_toleration: Duration::from_secs(
            a.node_lifecycle.default_unreachable_toleration_seconds,
        ),
    };
    if !a.leader_elect {
        return controllers::run(client, cfg).await;
    }
    let c = client.clone();
    run_elected(
        client,
        LeaderConfig::new("flotilla-controller-manager", a.member.as_deref()),
        move || controllers::run(c.clone(), cfg.clone()),
    )
    .await
}

/// The address this process's own components reach the API server at.
fn local_url(listen: &str) -> String {
    let port = listen.rsplit(':').next().unwrap_or("6443");
    match listen.rsplit_once(':').map(|(h, _)| h) {
        Some("0.0.0.0") | Some("[::]") | Some("") | None => format!("https://127.0.0.1:{port}"),
        Some(h) => format!("https://{h}:{port}"),
    }
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

    let mut api_config = api_config(&a)?;
    let home = a.home.clone().unwrap_or_else(|| a.data_dir.clone());
    let url = local_url(&a.listen);
    let cp = match a.control_plane.clone() {
        Some(cp) => cp,
        None => {
            ControlPlane::init(&home.join("pki"), &listen_ips(&a), &a.tls_san, a.cert_lifetime)?
        }
    };
    cp.write_admin_conf(&home.join("admin.conf"), &url)?;
    let enc_path = match &a.encryption_provider_config {
        Some(p) => p.clone(),
        None => {
            let p = home.join("pki").join("encryption.yaml");
            if !p.exists() {
                apiserver::encryption::Encryption::write_default(&p)?;
                tracing::info!(path = %p.display(), "created an encryption configuration for Secrets");
            }
            p
        }
    };
    api_config.encryption = Some(Arc::new(apiserver::encryption::Encryption::load(&enc_path)?));
    if let Some(policy) = &a.audit_policy_file {
        let log = a.audit_log_path.clone().unwrap_or_else(|| home.join("audit.log"));
        api_config.audit = Some(Arc::new(apiserver::audit::Auditor::open(policy, &log)?));
    }
    config.tls = Some(cp.store_tls()?);
    api_config.node_client = Some(cp.node_client_tls()?);
    let info = flotilla_pki::Kubeconfig::single(
        "flotilla",
        &url,
        cp.ca.cert_pem(),
        "",
        flotilla_pki::kubeconfig::UserInfo::default(),
    );
    api_config.cluster_info = Some(serde_yaml::to_string(&info)?);
    let api_tls = if a.bench_insecure_api {
        tracing::warn!(
            "--bench-insecure-api: the API port is plain text and authorizes everything"
        );
        api_config.authorization = apiserver::Authorization::AlwaysAllow;
        None
    } else {
        Some(cp.api_server_tls()?)
    };
    // Bind first so a port conflict fails before anything is written.
    let client = bind(&a.store_listen).await?;
    let peer = bind(&a.peer_listen).await?;
    let api_listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("binding the API server to --listen {}", a.listen))?;
    let node = StoreNode::start(config).await.context("starting the store")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let api_task = {
        let node = node.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            // The API server needs a leader to create the system namespaces.
            node.wait_for_leader(Duration::from_secs(3600)).await?;
            let api = ApiServer::start(node, api_config).await?;
            apiserver::serve(api, api_listener, api_tls, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
        })
    };
    if !a.no_scheduler {
        let sa = SchedulerArgs {
            connect: ConnectArgs {
                server: Some(url.clone()),
                kubeconfig: None,
                tls: Some(cp.client_tls(cp.identity("system:kube-scheduler", &[])?)),
            },
            leader_elect: true,
            scheduling: a.scheduling.clone(),
            member: Some(a.name.clone()),
        };
        tokio::spawn(async move {
            if let Err(e) = run_scheduler(sa).await {
                tracing::error!("scheduler: {e:#}");
            }
        });
    }
    {
        // Node client certificates for agents that join with a bootstrap token.
        let id = cp.identity("system:kube-controller-manager", &[])?;
        let client = Client::connect_lazy_tls(&url, cp.client_tls(id))?;
        tokio::spawn(crate::csr::run(client, cp.ca.clone(), a.cluster_signing_duration));
    }
    if !a.no_controllers {
        let ca = ControllersArgs {
            connect: ConnectArgs {
                server: Some(url),
                kubeconfig: None,
                tls: Some(cp.client_tls(cp.identity("system:kube-controller-manager", &[])?)),
            },
            leader_elect: true,
            node_lifecycle: a.node_lifecycle.clone(),
            member: Some(a.name.clone()),
        };
        tokio::spawn(async move {
            if let Err(e) = run_controllers(ca).await {
                tracing::error!("controller manager: {e:#}");
            }
        });
    }
    tracing::info!(
        name = %a.name,
        api = %a.listen,
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
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    serve(node.clone(), client, peer, shutdown).await?;
    match tokio::time::timeout(Duration::from_secs(5), api_task).await {
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "API server failed"),
        Ok(Err(e)) => tracing::error!(error = %e, "API server task failed"),
        _ => {}
    }
    node.shutdown().await;
    Ok(())
}

/// The addresses this member listens on, for its serving certificate.
fn listen_ips(a: &ServerArgs) -> Vec<std::net::IpAddr> {
    [&a.listen, &a.store_listen, &a.peer_listen]
        .iter()
        .filter_map(|l| l.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .collect()
}

fn api_config(a: &ServerArgs) -> Result<ApiConfig> {
    let (ip, len) = a
        .service_cidr
        .split_once('/')
        .and_then(|(ip, len)| Some((ip.parse().ok()?, len.parse::<u8>().ok()?)))
        .filter(|(_, len)| (8..=30).contains(len))
        .with_context(|| {
            format!("--service-cidr {:?} is not an IPv4 CIDR between /8 and /30", a.service_cidr)
        })?;
    let (lo, hi) = a
        .node_port_range
        .split_once('-')
        .and_then(|(lo, hi)| Some((lo.parse::<i32>().ok()?, hi.parse::<i32>().ok()?)))
        .filter(|(lo, hi)| 0 < *lo && lo <= hi && *hi <= 65535)
        .with_context(|| format!("--node-port-range {:?} is not LOW-HIGH", a.node_port_range))?;
    let ip: std::net::Ipv4Addr = ip;
    let cluster_dns = a.cluster_dns.or_else(|| {
        (len <= 28).then(|| std::net::Ipv4Addr::from(u32::from(ip) & (u32::MAX << (32 - len)) | 10))
    });
    Ok(ApiConfig {
        service_cidr: (ip, len),
        cluster_dns,
        node_port_range: (lo, hi),
        bookmark_interval: Duration::from_millis(a.watch_bookmark_ms.max(10)),
        watch_ring: a.watch_ring.max(16),
        watch_history: a.watch_history.max(1),
        ..ApiConfig::default()
    })
}
