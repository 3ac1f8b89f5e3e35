//! `flotillad`: one binary for every Flotilla process. This file parses flags and wires the
//! libraries together; the work is in the libraries (see ARCHITECTURE.md).

#![forbid(unsafe_code)]

mod server;

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
                // server answers (it retries until then).
                let agent = agent::AgentArgs {
                    server: format!("http://{}", a.listen),
                    data_dir: a.data_dir.join("agent"),
                    image_root: a.data_dir.clone(),
                    ..agent::AgentArgs::defaults()
                };
                tokio::spawn(async move {
                    if let Err(e) = agent::run(agent).await {
                        tracing::error!("node agent: {e:#}");
                    }
                });
                server::run(server::ServerArgs {
                    name: "default".into(),
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
            Cmd::Scheduler(a) => server::run_scheduler(a).await,
            Cmd::Controllers(a) => server::run_controllers(a).await,
            Cmd::Runtime(_) | Cmd::Image(_) => unreachable!("handled above"),
        }
    })
}
