//! `cargo xtask bench …`: release builds, our component and its peer in the same run.

use crate::util::{cargo, workspace_root};
use anyhow::Result;
use clap::Subcommand;
use std::process::Command;

#[derive(Subcommand)]
pub enum Bench {
    /// Our store vs etcd (Debian etcd-server), both single-member and durable, over etcd v3 gRPC.
    Store {
        /// Seconds each put-throughput row runs.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Extra arguments for the harness (see `store-bench --help`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The API server vs the raw store under it: watch event latency with 1 to 10,000 watchers
    /// while pods are updated, and lists of 10,000 pods.
    Api {
        /// Pod updates per second during the watch rows.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Extra arguments for the harness (see `api-bench --help`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Service load balancing: our eBPF programs vs kube-proxy-style iptables rules vs the pod
    /// IP, with 1, 1,000 and 10,000 services: ClusterIP connection rate and latency, NodePort
    /// requests/s and UDP request/replies/s (root; builds a two-node lab of network namespaces).
    Dataplane {
        /// Seconds per measured figure.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Extra arguments for the harness (see `dataplane-bench --help`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Pod startup (created → Running through a watch), one at a time and in a burst, with
    /// the agent's RSS; peers in the same run: containerd + runc (`ctr run --rm`) and the bare
    /// `flotillad runtime` (root).
    PodStartup {
        /// Pods started one at a time.
        #[arg(long, default_value_t = 100)]
        pods: usize,
        /// Pods created at once.
        #[arg(long, default_value_t = 100)]
        burst: usize,
        /// Extra arguments for the harness (see `pod-bench --help`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The scheduler at scale: simulated nodes and pods through the real API, pods/s from
    /// creation to binding, latency, CPU and RSS, and a check of every placement.
    Scheduler {
        #[arg(long, default_value_t = 5000)]
        nodes: usize,
        #[arg(long, default_value_t = 50_000)]
        pods: usize,
        /// Extra arguments for the harness (see `sched-bench --help`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// `flotilla-runtime` and `flotillad runtime` vs runc and crun: create && start && delete -f of busybox /bin/true.
    Runtime {
        /// Measured rounds per runtime.
        #[arg(long, default_value_t = 200)]
        rounds: usize,
        /// Run in a pure cgroup v2 guest of `cargo xtask vm` (software emulation), where crun
        /// runs too (crun refuses hybrid hosts). Figures there compare runtimes with each
        /// other, not with the host's.
        #[arg(long)]
        vm: bool,
        /// Extra arguments for the harness (see `runtime-bench --help`).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

pub fn run(what: Bench) -> Result<()> {
    match what {
        Bench::Store { seconds, args } => {
            crate::setup::setup()?;
            cargo(&["build", "--release", "-p", "flotilla-daemon", "-p", "flotilla-tests"])?;
            let root = workspace_root();
            let mut cmd = Command::new(root.join("target/release/store-bench"));
            cmd.arg("--flotillad")
                .arg(root.join("target/release/flotillad"))
                .arg("--seconds")
                .arg(seconds.to_string())
                .args(&args);
            crate::util::run(cmd)
        }
        Bench::Api { rate, args } => {
            crate::setup::setup()?;
            cargo(&["build", "--release", "-p", "flotilla-daemon", "-p", "flotilla-tests"])?;
            let root = workspace_root();
            let mut cmd = Command::new(root.join("target/release/api-bench"));
            cmd.arg("--flotillad")
                .arg(root.join("target/release/flotillad"))
                .arg("--rate")
                .arg(rate.to_string())
                .args(&args);
            crate::util::run(cmd)
        }
        Bench::Dataplane { seconds, args } => {
            crate::setup::setup()?;
            cargo(&["build", "--release", "-p", "flotilla-tests", "--bin", "dataplane-bench"])?;
            let root = workspace_root();
            let mut cmd = Command::new(root.join("target/release/dataplane-bench"));
            cmd.arg("--seconds").arg(seconds.to_string()).args(&args);
            crate::util::run(cmd)
        }
        Bench::PodStartup { pods, burst, args } => {
            crate::setup::setup()?;
            cargo(&["build", "--release", "-p", "flotilla-daemon", "-p", "flotilla-tests"])?;
            let root = workspace_root();
            let mut cmd = Command::new(root.join("target/release/pod-bench"));
            cmd.arg("--pods")
                .arg(pods.to_string())
                .arg("--burst")
                .arg(burst.to_string())
                .args(&args);
            crate::util::run(cmd)
        }
        Bench::Scheduler { nodes, pods, args } => {
            crate::setup::setup()?;
            cargo(&["build", "--release", "-p", "flotilla-daemon", "-p", "flotilla-tests"])?;
            let root = workspace_root();
            let mut cmd = Command::new(root.join("target/release/sched-bench"));
            cmd.arg("--nodes")
                .arg(nodes.to_string())
                .arg("--pods")
                .arg(pods.to_string())
                .args(&args);
            crate::util::run(cmd)
        }
        Bench::Runtime { rounds, vm, args } => {
            crate::setup::setup()?;
            cargo(&["build", "--release", "-p", "flotilla-daemon", "-p", "flotilla-tests"])?;
            let root = workspace_root();
            if vm {
                let bin = |name: &str| root.join("target/release").join(name).display().to_string();
                let mut cmd = vec![bin("runtime-bench"), "--flotillad".into(), bin("flotillad")];
                cmd.extend(["--rounds".into(), rounds.to_string()]);
                cmd.extend(args);
                return crate::vm::run(4096, 2, false, &cmd);
            }
            let mut cmd = Command::new(root.join("target/release/runtime-bench"));
            cmd.arg("--flotillad")
                .arg(root.join("target/release/flotillad"))
                .arg("--rounds")
                .arg(rounds.to_string())
                .args(&args);
            crate::util::run(cmd)
        }
    }
}
