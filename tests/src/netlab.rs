//! A network lab on one machine for the dataplane tests and benchmark: "nodes" and a "client" as
//! network namespaces on a shared LAN (a bridge in its own namespace, 198.18.0.0/24, the
//! benchmarking range), each node with the real dataplane (bridge, pods, routes, eBPF load
//! balancer attached to its own cgroup v2 directory and its own `eth0`). Nothing is reachable
//! from the LAN but the namespaces themselves.
//!
//! Dropping the lab removes everything it made, even after a failed assertion: processes,
//! pinned links and maps, namespaces (and with them every veth, bridge and route), cgroups.

use std::{
    fs::{File, OpenOptions},
    io::{BufRead, BufReader},
    net::Ipv4Addr,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result};
use flotilla_dataplane::{
    lb::remove_pins, net, External, LbConfig, LoadBalancer, NetNs, NodeConfig, NodeNetwork,
    PodNetwork,
};
use ipnet::Ipv4Net;

pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

pub fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, i as u8 + 1)
}

/// The cgroup v2 hierarchy: `/sys/fs/cgroup/unified` on hybrid hosts, else `/sys/fs/cgroup`.
pub fn cgroup2_root() -> PathBuf {
    let hybrid = Path::new("/sys/fs/cgroup/unified");
    if hybrid.join("cgroup.procs").exists() {
        hybrid.into()
    } else {
        "/sys/fs/cgroup".into()
    }
}

pub struct LabNode {
    pub name: String,
    pub netns: PathBuf,
    pub addr: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub cgroup: PathBuf,
    pub net: NodeNetwork,
    pub lb: Option<LoadBalancer>,
    pub lb_config: LbConfig,
}

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub client: PathBuf,
    pub nodes: Vec<LabNode>,
    cgroup_root: PathBuf,
    pin_root: PathBuf,
    netns: Vec<PathBuf>,
    children: Vec<Child>,
}

fn mk_ns(dir: &Path, name: &str, list: &mut Vec<PathBuf>) -> Result<NetNs> {
    let p = dir.join(name);
    list.push(p.clone());
    NetNs::create(&p).with_context(|| format!("creating netns {name}"))
}

impl Lab {
    /// The LAN's namespace: the bridge `br0` with one port per machine (`c`, `n0`, `n1`, …).
    pub fn lan(&self) -> PathBuf {
        self.dir.path().join("lan")
    }

    /// A lab with `nodes` nodes; `tag` keeps concurrent labs (tests) apart.
    pub async fn new(tag: &str, nodes: usize) -> Result<Lab> {
        let tag = format!("{tag}-{}", std::process::id());
        let dir = tempfile::Builder::new().prefix(&format!("flotilla-lab-{tag}-")).tempdir()?;
        let cgroup_root = cgroup2_root().join(format!("flotilla-lab-{tag}"));
        let pin_root = PathBuf::from("/sys/fs/bpf/flotilla-lab").join(&tag);
        let mut lab = Lab {
            client: dir.path().join("client"),
            dir,
            nodes: Vec::new(),
            cgroup_root,
            pin_root,
            netns: Vec::new(),
            children: Vec::new(),
        };
        let root = lab.dir.path().to_path_buf();
        let lan = mk_ns(&root, "lan", &mut lab.netns)?;
        let client = mk_ns(&root, "client", &mut lab.netns)?;
        let lan_net = |a: Ipv4Addr| Ipv4Net::new(a, 24).ok();
        net::wire(&lan, "c", None, &client, "eth0", lan_net(CLIENT_ADDR)).await?;
        let mut ports = vec!["c".to_string()];
        let mut ns_list = Vec::new();
        for i in 0..nodes {
            let ns = mk_ns(&root, &format!("node{i}"), &mut lab.netns)?;
            net::wire(&lan, &format!("n{i}"), None, &ns, "eth0", lan_net(node_addr(i))).await?;
            ports.push(format!("n{i}"));
            ns_list.push(ns);
        }
        let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
        net::bridge(&lan, "br0", &ports).await?;
        std::fs::create_dir_all(&lab.cgroup_root)?;
        for (i, ns) in ns_list.iter().enumerate() {
            let name = format!("n{i}");
            let pod_cidr: Ipv4Net = format!("10.244.{}.0/24", i + 1).parse()?;
            let cfg = NodeConfig {
                name: format!("{tag}-{name}"),
                netns: Some(ns.path().to_path_buf()),
                bridge: "flotilla0".into(),
                pod_cidr,
                cluster_cidr: "10.244.0.0/16".parse()?,
                service_cidr: "10.96.0.0/12".parse()?,
                mtu: 1500,
                state_dir: root.join(format!("state-{name}")),
            };
            let node_net = NodeNetwork::setup(cfg).await?;
            let cgroup = lab.cgroup_root.join(&name);
            std::fs::create_dir_all(&cgroup)?;
            let lb_config = LbConfig {
                pin_dir: lab.pin_root.join(&name),
                cgroup: cgroup.clone(),
                external: Some(External {
                    netns: Some(ns.path().to_path_buf()),
                    interface: "eth0".into(),
                    node_addr: node_addr(i),
                    local_pods: pod_cidr,
                    cluster_pods: "10.244.0.0/16".parse()?,
                    services: "10.96.0.0/12".parse()?,
                    masquerade: true,
                }),
            };
            lab.nodes.push(LabNode {
                name,
                netns: ns.path().to_path_buf(),
                addr: node_addr(i),
                pod_cidr,
                cgroup,
                net: node_net,
                lb: None,
                lb_config,
            });
        }
        let peers: Vec<(Ipv4Net, Ipv4Addr)> =
            lab.nodes.iter().map(|n| (n.pod_cidr, n.addr)).collect();
        for n in &lab.nodes {
            n.net.set_peers(&peers).await?;
        }
        Ok(lab)
    }

    /// Starts (or restarts, adopting pinned state) node `i`'s load balancer.
    pub fn start_lb(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        node.lb = None;
        node.lb = Some(LoadBalancer::start(node.lb_config.clone())?);
        Ok(())
    }

    pub fn lb(&mut self, i: usize) -> &mut LoadBalancer {
        self.nodes[i].lb.as_mut().expect("load balancer started")
    }

    pub async fn pod(&self, node: usize, name: &str) -> Result<PodNetwork> {
        Ok(self.nodes[node].net.add_pod(name).await?)
    }

    /// Spawns `probe args…` in namespace `netns` and, if given, cgroup `cgroup` (before exec, so
    /// its first connect is already under the node's programs).
    pub fn spawn(
        &mut self,
        netns: &Path,
        cgroup: Option<&Path>,
        pod_name: &str,
        args: &[&str],
    ) -> Result<usize> {
        self.spawn_exe(&crate::probe(), netns, cgroup, pod_name, args)
    }

    /// [`Lab::spawn`] of any executable.
    pub fn spawn_exe(
        &mut self,
        exe: &Path,
        netns: &Path,
        cgroup: Option<&Path>,
        pod_name: &str,
        args: &[&str],
    ) -> Result<usize> {
        let ns = File::open(netns)?;
        let procs = match cgroup {
            Some(c) => Some(OpenOptions::new().write(true).open(c.join("cgroup.procs"))?),
            None => None,
        };
        let (nsfd, pfd) = (ns.as_raw_fd(), procs.as_ref().map_or(-1, |f| f.as_raw_fd()));
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .env("POD_NAME", pod_name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: only async-signal-safe syscalls between fork and exec, on fds the parent keeps
        // open until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(nsfd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if pfd >= 0 && libc::write(pfd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("spawning probe")?;
        drop((ns, procs));
        self.children.push(child);
        Ok(self.children.len() - 1)
    }

    /// Writes a line to a spawned process's stdin.
    pub fn write_line(&mut self, child: usize, line: &str) -> Result<()> {
        use std::io::Write;
        let input = self.children[child].stdin.as_mut().context("stdin")?;
        writeln!(input, "{line}")?;
        input.flush()?;
        Ok(())
    }

    /// Reads one line of a spawned process's stdout.
    pub fn read_line(&mut self, child: usize) -> Result<String> {
        let out = self.children[child].stdout.as_mut().context("stdout")?;
        let mut line = String::new();
        let mut byte = [0u8; 1];
        use std::io::Read;
        while out.read(&mut byte)? == 1 && byte[0] != b'\n' {
            line.push(byte[0] as char);
        }
        Ok(line)
    }

    /// Closes a process's stdin and collects the rest of its output.
    pub fn finish(&mut self, child: usize) -> Result<Vec<String>> {
        let c = &mut self.children[child];
        drop(c.stdin.take());
        let out = c.stdout.take().context("stdout")?;
        let lines = BufReader::new(out).lines().collect::<Result<Vec<_>, _>>()?;
        c.wait()?;
        Ok(lines)
    }

    /// An echo server (`$POD_NAME`, TCP and UDP) in `pod` on `port`, ready when this returns.
    pub fn serve(&mut self, pod: &PodNetwork, name: &str, port: u16) -> Result<()> {
        let c = self.spawn(&pod.netns, None, name, &["echo", &port.to_string()])?;
        let line = self.read_line(c)?;
        anyhow::ensure!(line.starts_with("listening"), "echo server {name}: {line:?}");
        Ok(())
    }

    /// Runs a probe client in `pod` on `node` (inside the node's cgroup) to completion.
    pub fn run_in_pod(
        &mut self,
        node: usize,
        pod: &PodNetwork,
        args: &[&str],
    ) -> Result<Vec<String>> {
        let cg = self.nodes[node].cgroup.clone();
        let c = self.spawn(&pod.netns, Some(&cg), "client", args)?;
        self.finish(c)
    }

    /// Runs a probe client in the client namespace (outside every node).
    pub fn run_in_client(&mut self, args: &[&str]) -> Result<Vec<String>> {
        let ns = self.client.clone();
        let c = self.spawn(&ns, None, "client", args)?;
        self.finish(c)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &mut self.nodes {
            n.lb = None;
            let _ = remove_pins(&n.lb_config.pin_dir);
            for (_, pod) in n.net.pods().unwrap_or_default() {
                if let Ok(Some(p)) = n.net.pod(&pod) {
                    let _ = NetNs::remove(p.netns);
                }
            }
            let _ = std::fs::remove_dir(&n.cgroup);
        }
        let _ = std::fs::remove_dir(&self.pin_root);
        if let Some(parent) = self.pin_root.parent() {
            let _ = std::fs::remove_dir(parent); // only when no other lab is running
        }
        for p in &self.netns {
            let _ = NetNs::remove(p);
        }
        let _ = std::fs::remove_dir(&self.cgroup_root);
    }
}

/// Counts of each distinct value of `key=` in probe output lines.
pub fn tally(lines: &[String], key: &str) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for l in lines {
        for field in l.split_whitespace() {
            if let Some(v) = field.strip_prefix(&format!("{key}=")) {
                *m.entry(v.to_string()).or_insert(0) += 1;
            }
        }
    }
    m
}
