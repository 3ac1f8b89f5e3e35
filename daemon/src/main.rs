//! `flotillad`: one binary for every Flotilla process. This file parses flags and wires the
//! libraries together; the work is in the libraries (see ARCHITECTURE.md).

#![forbid(unsafe_code)]

mod csr;
mod server;
mod token;
mod trust;

use flotilla_agent as agent;
use flotilla_daemon::{image, runtime};

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tracing_subscriber::EnvFilter;

// The API server and the scheduler build and drop many small JSON trees; under glibc's malloc
// a profile of `cargo xtask bench scheduler` spent a third of their CPU in malloc/free and in
// faulting trimmed pages back in. jemalloc's fork handlers keep the runtime's fork() safe.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "flotillad", version, about = "Flotilla: control plane, node agent and runtime")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A whole single-node cluster in one process: the store, the API server, the scheduler,
    /// the controllers and the node agent (pods and services).
    Up(UpArgs),
    /// A control-plane member: the API server (--listen) over the Raft store (etcd v3 API on
    /// --store-listen).
    Server(server::ServerArgs),
    /// An OCI runtime with runc's command line (create, start, state, kill, delete).
    Runtime(runtime::RuntimeArgs),
    /// The node's image store: pull, import, list, rm, gc, mount.
    Image(image::ImageArgs),
    /// The node agent: registers the Node and renews its Lease, runs the node's pods, programs
    /// Services into the eBPF load balancer.
    Agent(agent::AgentArgs),
    /// The scheduler on its own (`server` and `up` run it in-process unless --no-scheduler).
    Scheduler(server::SchedulerArgs),
    /// The controller manager on its own (`server` and `up` run it unless --no-controllers).
    Controllers(server::ControllersArgs),
    /// Kubeconfig files signed by the cluster CA (kubeadm's `kubeconfig user`).
    #[command(subcommand)]
    Kubeconfig(KubeconfigCmd),
    /// Bootstrap tokens that let nodes join (kubeadm's `token create | list | delete`).
    Token(token::TokenArgs),
}

#[derive(Subcommand)]
enum KubeconfigCmd {
    /// A kubeconfig with a client certificate for a user, on stdout or in --out.
    User {
        /// The cluster's PKI directory (ca.crt, ca.key).
        #[arg(long, default_value = "/var/lib/flotilla/pki")]
        pki_dir: PathBuf,
        /// The API server's URL.
        #[arg(long, default_value = "https://127.0.0.1:6443")]
        server: String,
        /// The user name (the certificate's CN).
        #[arg(long)]
        client_name: String,
        /// The group (the certificate's O; one per certificate).
        #[arg(long)]
        org: Vec<String>,
        /// Certificate lifetime.
        #[arg(long, default_value = "8760h", value_parser = trust::parse_lifetime)]
        validity_period: std::time::Duration,
        /// Write here (mode 0600) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct UpArgs {
    /// Where the cluster keeps its state.
    #[arg(long, default_value = "/var/lib/flotilla")]
    data_dir: PathBuf,
    /// The API server (gRPC and /metrics).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: String,
    /// etcd v3 API of the embedded store.
    #[arg(long, default_value = "127.0.0.1:2379")]
    store_listen: String,
    /// Raft peer address of the embedded store.
    #[arg(long, default_value = "127.0.0.1:2380")]
    peer_listen: String,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn,sled=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let cmd = match cli.cmd {
        // No async runtime: create forks and must stay single-threaded.
        Cmd::Runtime(a) => {
            // runc prints the error chain on one line and exits 1; so do we.
            if let Err(e) = runtime::run(a) {
                eprintln!("flotillad runtime: {e:#}");
                std::process::exit(1);
            }
            return Ok(());
        }
        Cmd::Kubeconfig(KubeconfigCmd::User {
            pki_dir,
            server,
            client_name,
            org,
            validity_period,
            out,
        }) => {
            let ca = flotilla_pki::Ca::load(&pki_dir)?;
            let orgs: Vec<&str> = org.iter().map(String::as_str).collect();
            let req = flotilla_pki::Request::client(&client_name, &orgs).lifetime(validity_period);
            let kc = trust::kubeconfig(&ca, &server, &client_name, &ca.issue(&req)?);
            match out {
                Some(p) => kc.write(&p)?,
                None => print!("{}", serde_yaml::to_string(&kc)?),
            }
            return Ok(());
        }
        Cmd::Image(a) => {
            if let Err(e) = image::run(a) {
                eprintln!("flotillad image: {e:#}");
                std::process::exit(1);
            }
            return Ok(());
        }
        other => other,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cmd {
            Cmd::Up(a) => {
                // The node agent registers this machine as the cluster's node once the API
                // server answers (it retries until then), with credentials issued here as
                // kubeadm issues a control-plane node's kubelet.conf.
                let ips: Vec<std::net::IpAddr> =
                    [a.listen.parse::<std::net::SocketAddr>().ok().map(|s| s.ip())]
                        .into_iter()
                        .flatten()
                        .collect();
                let lifetime = server::ServerArgs::defaults().cert_lifetime;
                let cp = trust::ControlPlane::init(&a.data_dir.join("pki"), &ips, &[], lifetime)?;
                let url = format!("https://{}", a.listen);
                let mut agent = agent::AgentArgs {
                    data_dir: a.data_dir.join("agent"),
                    image_root: a.data_dir.clone(),
                    ..agent::AgentArgs::defaults()
                };
                agent_credentials(&cp, &mut agent, &url)?;
                let home = a.data_dir.clone();
                tokio::spawn(async move {
                    if let Err(e) = agent::run(agent).await {
                        tracing::error!("node agent: {e:#}");
                    }
                });
                server::run(server::ServerArgs {
                    name: "default".into(),
                    home: Some(home),
                    control_plane: Some(cp),
                    data_dir: a.data_dir.join("store"),
                    listen: a.listen,
                    store_listen: a.store_listen,
                    peer_listen: a.peer_listen,
                    ..server::ServerArgs::defaults()
                })
                .await
            }
            Cmd::Server(a) => server::run(a).await,
            Cmd::Agent(a) => agent::run(a).await,
            Cmd::Token(a) => token::run(a).await,
            Cmd::Scheduler(a) => server::run_scheduler(a).await,
            Cmd::Controllers(a) => server::run_controllers(a).await,
            Cmd::Runtime(_) | Cmd::Image(_) | Cmd::Kubeconfig(_) => {
                unreachable!("handled above")
            }
        }
    })
}

/// The node's kubeconfig (`system:node:<name>`, group `system:nodes`) and its node API serving
/// certificate, in the agent's data dir.
fn agent_credentials(cp: &trust::ControlPlane, a: &mut agent::AgentArgs, url: &str) -> Result<()> {
    let name = agent::node_name(a)?;
    let ip = agent::node_address(a);
    let dir = a.data_dir.join("pki");
    let kubeconfig = a.data_dir.join("kubelet.conf");
    cp.write_kubeconfig(&kubeconfig, url, &format!("system:node:{name}"), &["system:nodes"])?;
    let mut ips = vec![std::net::IpAddr::from([127, 0, 0, 1])];
    ips.extend(ip.parse::<std::net::IpAddr>().ok());
    let serving = cp.ca.issue(&flotilla_pki::Request::server(&name, vec![name.clone()], ips))?;
    let (crt, key) = flotilla_pki::ca::pair_paths(&dir, "kubelet");
    flotilla_pki::write_private(&key, serving.key_pem.as_bytes())?;
    flotilla_pki::write_public(&crt, serving.cert_pem.as_bytes())?;
    a.kubeconfig = Some(kubeconfig);
    a.tls_cert_file = Some(crt);
    a.tls_private_key_file = Some(key);
    Ok(())
}
