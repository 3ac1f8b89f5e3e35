//! `flotillad agent`: the node agent (kubelet and kube-proxy of a node in one process). It
//! registers the Node, keeps its Lease renewed and reports its conditions, and runs the pods
//! bound to the node (sandbox, images, containers, restarts, status, graceful deletion).

pub mod dns;
pub mod exec;
pub mod join;
pub mod logs;
pub mod metrics;
pub mod node;
mod peers;
pub mod pods;
pub mod portforward;
pub mod services;

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use flotilla_client::Client;
use flotilla_dataplane::net::{NodeConfig, NodeNetwork};
use flotilla_isolation::image::store::ImageStore;

#[derive(clap::Args, Clone, Debug)]
pub struct AgentArgs {
    /// The API server (default: the kubeconfig's).
    #[arg(long)]
    pub server: Option<String>,
    /// The node's credentials and the cluster CA (the kubelet's --kubeconfig): a client
    /// certificate for `system:node:<name>` in group `system:nodes`.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Join with a bootstrap token (`flotillad token create`): the node asks the cluster for
    /// its client certificate and keeps it in `<data-dir>/kubelet.conf`. Needs --server and
    /// --ca-cert-hash.
    #[arg(long, requires_all = ["server", "ca_cert_hash"], conflicts_with = "kubeconfig")]
    pub token: Option<String>,
    /// The cluster CA's pin, `sha256:<hex>` of its public key (kubeadm's
    /// --discovery-token-ca-cert-hash): the server is trusted only if its CA matches.
    #[arg(long, requires = "token")]
    pub ca_cert_hash: Option<String>,
    /// The node API's serving certificate (PEM); without one the agent makes a self-signed
    /// certificate in `<data-dir>/pki`, as the kubelet does.
    #[arg(long, requires = "tls_private_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    #[arg(long, requires = "tls_cert_file")]
    pub tls_private_key_file: Option<PathBuf>,
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
    /// The node's network namespace (a path under /run/netns or any nsfs mount); default the
    /// agent's own. Several agents on one machine (tests) each get their own.
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// The pods' bridge.
    #[arg(long, default_value = "flotilla0")]
    pub bridge: String,
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: String,
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cidr: String,
    /// The cluster DNS address pods' resolv.conf points at.
    #[arg(long, default_value = "10.96.0.10")]
    pub cluster_dns: std::net::Ipv4Addr,
    #[arg(long, default_value_t = 1500)]
    pub mtu: u32,
    /// Pod networks (namespace, veth, address, routes) kept made ahead, so a pod start does
    /// not wait for the kernel to build one; each holds an address of the pod CIDR.
    #[arg(long, default_value_t = 8)]
    pub warm_pod_networks: usize,
    /// Attach the tc programs for NodePorts and pod egress SNAT to this interface of the
    /// node's network namespace (kube-proxy's NodePort side). Without it only ClusterIPs
    /// (socket level) are served.
    #[arg(long)]
    pub external_interface: Option<String>,
    /// The address NodePorts answer on and pod egress is SNATed to (default: --node-ip).
    #[arg(long)]
    pub external_address: Option<std::net::Ipv4Addr>,
    /// How often configMap and secret volumes are refreshed from their sources (the kubelet's
    /// sync frequency).
    #[arg(long, default_value_t = 60_000)]
    pub volume_sync_ms: u64,
    /// How often container and node usage is sampled (the window `flotilla top` rates cover).
    #[arg(long, default_value_t = 10_000)]
    pub metrics_interval_ms: u64,
    /// Pods' cgroups go under this path in each hierarchy (default flotilla/<node>).
    #[arg(long)]
    pub cgroup_parent: Option<String>,
    /// Switch the kernel's cgroup core to `favordynmods` (cgroup2 mount option, Linux 6.0+):
    /// placing a container in its cgroup then skips an RCU grace period (6–25 ms per
    /// container on the development machines), at a small cost to every fork and exit.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub cgroup_favordynmods: bool,
    /// host:port of a registry spoken to over plain HTTP; repeatable.
    #[arg(long)]
    pub insecure_registry: Vec<String>,
    /// Container restart (and image pull) back-off: first delay and cap, as the kubelet's
    /// 10 s doubling to 5 min.
    #[arg(long, default_value_t = 10_000)]
    pub restart_backoff_ms: u64,
    #[arg(long, default_value_t = 300_000)]
    pub restart_backoff_max_ms: u64,
    /// The node API (container logs for the API server), as the kubelet's port.
    #[arg(long, default_value = "0.0.0.0:10250")]
    pub node_listen: std::net::SocketAddr,
    /// Register the Node only; run no pods (a control-plane-only member).
    #[arg(long)]
    pub no_pods: bool,
    /// Where image tarballs to import at start-up (`images/`) and the image store
    /// (`images-store/`) live; `flotillad image` uses the same store by default.
    #[arg(long, default_value = "/var/lib/flotilla")]
    pub image_root: PathBuf,
    /// Remove every pod and the node network from this machine, then exit (the API is not
    /// needed; running containers are killed).
    #[arg(long)]
    pub reset: bool,
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

/// The node's name: --node-name, else the host name in lower case (the kubelet's rule).
pub fn node_name(a: &AgentArgs) -> Result<String> {
    Ok(match &a.node_name {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()?.to_string_lossy().to_lowercase(),
    })
}

/// The node's InternalIP: --node-ip, else the address of the default route.
pub fn node_address(a: &AgentArgs) -> String {
    a.node_ip.clone().unwrap_or_else(default_address)
}

/// The API client (from --kubeconfig, --server overriding its URL) and the cluster CA the
/// node API verifies the API server's client certificate against.
fn api_client(a: &AgentArgs) -> Result<(Client, String, Option<Arc<flotilla_pki::KeyHolder>>)> {
    let path = a.kubeconfig.as_ref().context(
        "the agent needs credentials: --kubeconfig with a certificate for system:node:<name>, \
         or --token to join (`flotillad token create` prints the command)",
    )?;
    let conn = flotilla_client::Kubeconfig::read(path)?
        .connection(None)
        .with_context(|| format!("--kubeconfig {}", path.display()))?;
    let ca = conn.ca_pem.clone().with_context(|| {
        format!("--kubeconfig {}: the cluster has no certificate-authority-data", path.display())
    })?;
    let server = a.server.clone().unwrap_or_else(|| conn.server.clone());
    let tls = flotilla_client::Tls::from_connection(&conn)?;
    let identity = tls.identity.clone();
    let client = Client::connect_lazy_tls(&server, tls)?;
    let client = match &conn.token {
        Some(t) => client.with_token(t)?,
        None => client,
    };
    Ok((client, ca, identity))
}

/// The node API's serving certificate: the given files, else a self-signed one kept in
/// `<data-dir>/pki` (renewed when expired).
fn serving_cert(a: &AgentArgs, name: &str, address: &str) -> Result<flotilla_pki::Issued> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    if let (Some(c), Some(k)) = (&a.tls_cert_file, &a.tls_private_key_file) {
        return Ok(flotilla_pki::Issued { cert_pem: read(c)?, key_pem: read(k)? });
    }
    let (crt, key) = flotilla_pki::ca::pair_paths(&a.data_dir.join("pki"), "kubelet");
    if let (Ok(cert_pem), Ok(key_pem)) = (read(&crt), read(&key)) {
        let issued = flotilla_pki::Issued { cert_pem, key_pem };
        if flotilla_pki::KeyHolder::new(&issued)
            .is_ok_and(|h| h.validity().1 > std::time::SystemTime::now())
        {
            return Ok(issued);
        }
    }
    let mut ips = vec![std::net::IpAddr::from([127, 0, 0, 1])];
    ips.extend(address.parse::<std::net::IpAddr>().ok());
    let issued = flotilla_pki::self_signed(name, ips)?;
    flotilla_pki::write_private(&key, issued.key_pem.as_bytes())?;
    flotilla_pki::write_public(&crt, issued.cert_pem.as_bytes())?;
    Ok(issued)
}

/// The only client the node API accepts: the API server's (kubeadm's
/// `apiserver-kubelet-client`). Users reach logs, exec and stats through the API server.
pub const API_SERVER_CLIENT: &str = "kube-apiserver-kubelet-client";

pub async fn run(a: AgentArgs) -> Result<()> {
    std::fs::create_dir_all(&a.data_dir)?;
    let name = node_name(&a)?;
    let spec = node::NodeSpec {
        name,
        address: node_address(&a),
        pod_cidr: a.pod_cidr.clone(),
        data_dir: a.data_dir.clone(),
        max_pods: a.max_pods,
        lease_seconds: a.lease_seconds,
        eviction: a.eviction_hard.clone(),
        port: a.node_listen.port(),
    };
    if a.reset {
        // Reset talks to no API server; the client is never used.
        let client = Client::connect_lazy("http://127.0.0.1:1")?;
        let ctx = Arc::new(pods_context(&a, client, &spec).await?);
        pods::reset(ctx.clone()).await;
        services::reset(&spec.name, &ctx.cgroup_parent);
        pods::remove_cgroup_parent(&ctx.cgroup_parent);
        let ctx = Arc::into_inner(ctx).context("reset still in use")?;
        ctx.net.teardown().await.context("removing the node network")?;
        return Ok(());
    }
    // A node that joined with a token keeps (and renews) its own kubeconfig.
    let mut a = a;
    let managed = join::kubeconfig_path(&a.data_dir);
    let joined = a.kubeconfig.is_none() && (a.token.is_some() || join::usable(&managed));
    if joined {
        if !join::usable(&managed) {
            let (server, token, hash) = (
                a.server.clone().context("--token needs --server")?,
                a.token.clone().unwrap_or_default(),
                a.ca_cert_hash.clone().context("--token needs --ca-cert-hash")?,
            );
            join::bootstrap(&server, &token, &hash, &spec.name, &a.data_dir).await?;
        }
        a.kubeconfig = Some(managed.clone());
    }
    let (client, ca_pem, identity) = api_client(&a)?;
    if let (true, Some(holder)) = (joined, identity) {
        join::spawn_renewal(client.clone(), holder, spec.name.clone(), managed);
    }
    let serving = serving_cert(&a, &spec.name, &spec.address)?;
    let node_tls = flotilla_pki::tls::server_config(
        &ca_pem,
        flotilla_pki::KeyHolder::new(&serving)?,
        flotilla_pki::ClientAuth::Names(vec![API_SERVER_CLIENT.into()]),
    )?;
    let registration = node::run(
        client.clone(),
        spec.clone(),
        Duration::from_millis(a.lease_renew_ms.max(100)),
        Duration::from_millis(a.status_ms.max(100)),
    );
    if a.no_pods {
        return registration.await;
    }
    if a.cgroup_favordynmods {
        match flotilla_isolation::cgroups::favor_dynmods() {
            Ok(Some(at)) => {
                tracing::info!(mount = %at.display(), "cgroup2 remounted with favordynmods")
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(
                "cgroup favordynmods not set, container creates wait an RCU grace period: {e}"
            ),
        }
    }
    let ctx = Arc::new(pods_context(&a, client, &spec).await?);
    let listener = tokio::net::TcpListener::bind(a.node_listen)
        .await
        .with_context(|| format!("binding the node API on {}", a.node_listen))?;
    let stats = metrics::Latest::default();
    let mut routes =
        tonic::service::Routes::new(flotilla_api::proto::node_server::NodeServer::new(
            logs::NodeApi { ctx: ctx.clone(), stats: stats.clone() },
        ));
    let latest = stats.clone();
    let router = std::mem::take(routes.axum_router_mut()).route(
        "/metrics",
        axum::routing::get(move || {
            let s = latest.read().expect("stats lock").clone();
            async move { metrics::render(&s) }
        }),
    );
    *routes.axum_router_mut() = router;
    let node_api = tonic::transport::Server::builder()
        .accept_http1(true)
        .add_routes(routes)
        .serve_with_incoming(flotilla_pki::tls::incoming(listener, node_tls));
    let sampler =
        metrics::run(ctx.clone(), Duration::from_millis(a.metrics_interval_ms.max(100)), stats);
    let node_api = async { node_api.await.context("node API") };
    let zone = dns::empty_zone(&ctx.domain);
    // A node whose port 53 is taken still runs pods; their names just do not resolve.
    let dns_server = {
        let (netns, gw, zone) = (a.netns.clone(), ctx.net.gateway(), zone.clone());
        async move {
            if let Err(e) = dns::serve(netns, gw, zone).await {
                tracing::error!(error = %format!("{e:#}"), "cluster DNS is not served on this node");
            }
            Ok::<_, anyhow::Error>(())
        }
    };
    let external = match &a.external_interface {
        None => None,
        Some(interface) => {
            let node_addr = match a.external_address {
                Some(ip) => ip,
                None => spec.address.parse().with_context(|| {
                    format!("--external-interface needs an IPv4 node address, not {:?}; set --external-address", spec.address)
                })?,
            };
            let cidr = |what: &str, s: &str| -> Result<ipnet::Ipv4Net> {
                s.parse().with_context(|| format!("--{what} {s:?} is not an IPv4 CIDR"))
            };
            Some(flotilla_dataplane::External {
                netns: a.netns.clone(),
                interface: interface.clone(),
                node_addr,
                local_pods: cidr("pod-cidr", &a.pod_cidr)?,
                cluster_pods: cidr("cluster-cidr", &a.cluster_cidr)?,
                services: cidr("service-cidr", &a.service_cidr)?,
                masquerade: true,
            })
        }
    };
    let proxy = services::run(
        ctx.client.clone(),
        spec.name.clone(),
        ctx.cgroup_parent.clone(),
        external,
        services::Dns {
            vip: a.cluster_dns,
            server: ctx.net.gateway(),
            domain: ctx.domain.clone(),
            zone,
        },
    );
    let warm = {
        let (ctx, n) = (ctx.clone(), a.warm_pod_networks);
        async move {
            ctx.net.keep_warm(n).await;
            Ok::<_, anyhow::Error>(())
        }
    };
    let routes = {
        let (ctx, name) = (ctx.clone(), spec.name.clone());
        async move { peers::run(ctx.client.clone(), name, &ctx.net).await }
    };
    tokio::try_join!(
        registration,
        proxy,
        pods::run(ctx),
        node_api,
        dns_server,
        sampler,
        warm,
        routes
    )?;
    Ok(())
}

async fn pods_context(a: &AgentArgs, client: Client, spec: &node::NodeSpec) -> Result<pods::Ctx> {
    let cidr = |what: &str, s: &str| -> Result<ipnet::Ipv4Net> {
        s.parse().with_context(|| format!("--{what} {s:?} is not an IPv4 CIDR"))
    };
    let net = NodeNetwork::setup(NodeConfig {
        name: spec.name.clone(),
        netns: a.netns.clone(),
        bridge: a.bridge.clone(),
        pod_cidr: cidr("pod-cidr", &a.pod_cidr)?,
        cluster_cidr: cidr("cluster-cidr", &a.cluster_cidr)?,
        service_cidr: cidr("service-cidr", &a.service_cidr)?,
        mtu: a.mtu,
        state_dir: a.data_dir.join("net"),
    })
    .await
    .context("setting up the node network")?;
    if !a.reset {
        preload_images(&a.image_root).await?;
    }
    let images = ImageStore::open(&a.image_root.join("images-store"))?;
    let mut ctx = pods::Ctx::new(
        client,
        spec.name.clone(),
        spec.address.clone(),
        net,
        images,
        &a.data_dir,
        a.cgroup_parent.clone().unwrap_or_else(|| format!("flotilla/{}", spec.name)),
        a.cluster_dns,
        a.insecure_registry.clone(),
        (
            Duration::from_millis(a.restart_backoff_ms),
            Duration::from_millis(a.restart_backoff_max_ms.max(a.restart_backoff_ms)),
        ),
    )?;
    ctx.volume_sync = Duration::from_millis(a.volume_sync_ms.max(100));
    Ok(ctx)
}

/// Imports every tarball in `<data-dir>/images/` into `<data-dir>/images-store` (how an
/// air-gapped node gets its images). A bad tarball is logged and skipped.
async fn preload_images(data_dir: &std::path::Path) -> Result<()> {
    let (dir, root) = (data_dir.join("images"), data_dir.join("images-store"));
    if !dir.is_dir() {
        return Ok(());
    }
    tokio::task::spawn_blocking(move || -> Result<()> {
        let store = ImageStore::open(&root)?;
        for (path, r) in store.import_dir(&dir) {
            match r {
                Ok(refs) => tracing::info!(tarball = %path.display(), ?refs, "imported images"),
                Err(e) => tracing::error!(tarball = %path.display(), %e, "image import failed"),
            }
        }
        Ok(())
    })
    .await?
}
