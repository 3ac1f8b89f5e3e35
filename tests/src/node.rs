//! One node of a test cluster: a `flotillad server` and a `flotillad agent` whose node lives
//! in a network namespace of its own, with the probe image (busybox + flotilla-probe)
//! preloaded from a tarball. Dropped, it kills the agent, resets the node
//! (`flotillad agent --reset`: containers, mounts, sandboxes, cgroups) and removes the
//! namespace, pass or fail.

use std::{path::PathBuf, process::Command};

use flotilla_client::Client;
use flotilla_dataplane::netns::NetNs;
use serde_json::Value;

use crate::{flotillad, oci, probe, Member, Proc};

pub struct Node {
    pub dir: tempfile::TempDir,
    pub member: Member,
    pub agent: Option<Proc>,
    pub netns: PathBuf,
    pub tag: String,
    cidr: String,
    starts: usize,
    extra: Vec<String>,
    /// The agent's node API (logs), on loopback.
    pub node_port: u16,
}

impl Node {
    /// A server, and an agent for node `node-<tag>` with pod CIDR 10.244.<n>.0/24; `extra`
    /// agent flags after the defaults.
    pub fn start(tag: &str, n: u8) -> Node {
        Node::start_with(tag, n, &[])
    }

    pub fn start_with(tag: &str, n: u8, extra: &[&str]) -> Node {
        Node::start_full(tag, n, extra, &[])
    }

    /// As [`Node::start_with`], with `server_extra` flags for the server too.
    pub fn start_full(tag: &str, n: u8, extra: &[&str], server_extra: &[&str]) -> Node {
        let mut node = Node::server_only(tag, n, extra, server_extra);
        node.start_agent();
        node
    }

    /// The server and the node's namespace and image, but no agent yet (a node that joins).
    pub fn server_only(tag: &str, n: u8, extra: &[&str], server_extra: &[&str]) -> Node {
        let dir = tempfile::Builder::new().prefix("pods-test").tempdir_in("/var/tmp").unwrap();
        // The probe image, preloaded as an air-gapped node would get it.
        let layout = dir.path().join("layout");
        oci::write_probe_layout(&layout, &probe(), tag, "amd64", false).unwrap();
        std::fs::create_dir_all(dir.path().join("images")).unwrap();
        oci::tar_layout(&layout, &dir.path().join("images/probe.tar")).unwrap();
        let netns = PathBuf::from(format!("/run/netns/flp-{tag}"));
        let _ = NetNs::remove(&netns);
        NetNs::create(&netns).unwrap();
        loopback_up(&netns);
        let mut member = Member::new("srv", dir.path());
        member.extra = server_extra.iter().map(|s| s.to_string()).collect();
        member.start().unwrap();
        Node {
            dir,
            member,
            agent: None,
            netns,
            tag: tag.into(),
            cidr: format!("10.244.{n}.0/24"),
            starts: 0,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            node_port: crate::free_port(),
        }
    }

    fn agent_args(&self) -> Vec<String> {
        let d = self.dir.path();
        let node = AgentNode {
            tag: &self.tag,
            ip: "127.0.0.1",
            cidr: &self.cidr,
            data_dir: &d.join("agent"),
            image_root: d,
            netns: &self.netns,
            port: self.node_port,
        };
        node.args().into_iter().chain(self.extra.iter().cloned()).collect()
    }

    pub fn start_agent(&mut self) {
        let kc =
            self.member.node_kubeconfig(&format!("node-{}", self.tag), self.dir.path()).unwrap();
        self.start_agent_as(&["--kubeconfig".into(), kc.display().to_string()]);
    }

    /// Starts the agent with these credential flags (`--token …`, or none: what it kept).
    pub fn start_agent_as(&mut self, credentials: &[String]) {
        let mut cmd = Command::new(flotillad());
        cmd.args(self.agent_args()).args(credentials);
        cmd.env("RUST_LOG", std::env::var("FLOTILLA_TEST_LOG").unwrap_or_else(|_| "info".into()));
        self.starts += 1;
        let log = self.dir.path().join(format!("agent-{}.log", self.starts));
        self.agent = Some(Proc::spawn("agent", cmd, &log).unwrap());
    }

    /// Restarts the agent with `extra` flags instead of the ones it had.
    pub fn restart_agent_with(&mut self, extra: &[&str]) {
        self.kill_agent();
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        self.start_agent();
    }

    pub fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.kill();
        }
    }

    pub async fn client(&self) -> Client {
        self.member.client().await.unwrap()
    }

    pub fn image(&self) -> String {
        format!("localhost/probe:{}", self.tag)
    }

    pub fn logs(&self, pod: &Value, container: &str, attempt: u32) -> String {
        let m = &pod["metadata"];
        let p = self.dir.path().join("agent/logs").join(format!(
            "{}_{}_{}",
            m["namespace"].as_str().unwrap(),
            m["name"].as_str().unwrap(),
            m["uid"].as_str().unwrap()
        ));
        std::fs::read_to_string(p.join(container).join(format!("{attempt}.log")))
            .unwrap_or_default()
    }

    /// `flotilla ARGS` against this node's server: (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        crate::cli_with(&self.member.kubeconfig(), args)
    }

    pub fn agent_log(&self) -> String {
        (1..=self.starts)
            .map(|i| {
                std::fs::read_to_string(self.dir.path().join(format!("agent-{i}.log")))
                    .unwrap_or_default()
            })
            .collect()
    }
}

/// A node's namespace is its host: loopback up, as on a machine (other nodes' 127.0.0.<n>
/// addresses are reached through it, the stand-in for a LAN).
fn loopback_up(netns: &std::path::Path) {
    let name = netns.file_name().unwrap().to_str().unwrap();
    let ok = Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]).status().unwrap();
    assert!(ok.success(), "ip -n {name} link set lo up");
}

/// What makes one test agent's node its own.
struct AgentNode<'a> {
    tag: &'a str,
    ip: &'a str,
    cidr: &'a str,
    data_dir: &'a std::path::Path,
    image_root: &'a std::path::Path,
    netns: &'a std::path::Path,
    port: u16,
}

impl AgentNode<'_> {
    fn args(&self) -> Vec<String> {
        [
            "agent",
            "--node-name",
            &format!("node-{}", self.tag),
            "--node-ip",
            self.ip,
            "--pod-cidr",
            self.cidr,
            "--data-dir",
            self.data_dir.to_str().unwrap(),
            "--image-root",
            self.image_root.to_str().unwrap(),
            "--netns",
            self.netns.to_str().unwrap(),
            "--bridge",
            "flp0",
            "--cgroup-parent",
            &format!("flotilla-test/{}", self.tag),
            "--restart-backoff-ms",
            "1000",
            "--restart-backoff-max-ms",
            "2000",
            "--lease-renew-ms",
            "1000",
            "--metrics-interval-ms",
            "1000",
            "--volume-sync-ms",
            "1000",
            "--node-listen",
            &format!("{}:{}", self.ip, self.port),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

/// A second node of a [`Node`]'s cluster: an agent with its own data, network namespace,
/// cgroups, address (127.0.0.<n>) and node API port, with the same image preloaded. Dropped,
/// it is killed and reset like the first.
pub struct Peer {
    pub dir: PathBuf,
    pub tag: String,
    pub netns: PathBuf,
    pub ip: String,
    cidr: String,
    port: u16,
    kubeconfig: PathBuf,
    agent: Option<Proc>,
    starts: usize,
}

impl Node {
    pub fn peer(&self, tag: &str, n: u8) -> Peer {
        let dir = self.dir.path().join(format!("peer-{tag}"));
        std::fs::create_dir_all(dir.join("images")).unwrap();
        std::fs::copy(self.dir.path().join("images/probe.tar"), dir.join("images/probe.tar"))
            .unwrap();
        let netns = PathBuf::from(format!("/run/netns/flp-{tag}"));
        let _ = NetNs::remove(&netns);
        NetNs::create(&netns).unwrap();
        loopback_up(&netns);
        let mut p = Peer {
            dir,
            tag: tag.into(),
            netns,
            ip: format!("127.0.0.{n}"),
            cidr: format!("10.244.{n}.0/24"),
            port: crate::free_port(),
            kubeconfig: self
                .member
                .node_kubeconfig(&format!("node-{tag}"), &self.dir.path().join("peers"))
                .unwrap(),
            agent: None,
            starts: 0,
        };
        p.start_agent();
        p
    }
}

impl Peer {
    fn args(&self) -> Vec<String> {
        AgentNode {
            tag: &self.tag,
            ip: &self.ip,
            cidr: &self.cidr,
            data_dir: &self.dir.join("agent"),
            image_root: &self.dir,
            netns: &self.netns,
            port: self.port,
        }
        .args()
    }

    pub fn start_agent(&mut self) {
        let mut cmd = Command::new(flotillad());
        cmd.args(self.args()).arg("--kubeconfig").arg(&self.kubeconfig);
        cmd.env("RUST_LOG", std::env::var("FLOTILLA_TEST_LOG").unwrap_or_else(|_| "info".into()));
        self.starts += 1;
        let log = self.dir.join(format!("agent-{}.log", self.starts));
        self.agent = Some(Proc::spawn("agent", cmd, &log).unwrap());
    }

    /// SIGKILL, as a crashed node: its containers keep running.
    pub fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.kill();
        }
    }

    pub fn agent_log(&self) -> String {
        (1..=self.starts)
            .map(|i| {
                std::fs::read_to_string(self.dir.join(format!("agent-{i}.log"))).unwrap_or_default()
            })
            .collect()
    }
}

/// `flotillad agent --reset` of a node (containers, mounts, sandboxes, cgroups), then its
/// namespace.
fn reset(agent_args: Vec<String>, netns: &std::path::Path) {
    let out = Command::new(flotillad()).args(agent_args).arg("--reset").output();
    if let Ok(o) = out {
        if !o.status.success() {
            eprintln!("agent --reset: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
    let _ = NetNs::remove(netns);
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill_agent();
        reset(self.args(), &self.netns);
        if std::thread::panicking() {
            eprintln!("--- agent {} log ---\n{}", self.tag, self.agent_log());
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_agent();
        reset(self.agent_args(), &self.netns);
        // The shared parent of every test node's cgroups goes with the last of them.
        for h in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir(h.path().join("flotilla-test"));
        }
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.agent_log());
        }
        // For looking into a run afterwards (benchmarks, passing tests).
        if let Some(dir) = std::env::var_os("FLOTILLA_KEEP_AGENT_LOG") {
            let _ = std::fs::write(
                std::path::Path::new(&dir).join(format!("agent-{}.log", self.tag)),
                self.agent_log(),
            );
        }
    }
}
