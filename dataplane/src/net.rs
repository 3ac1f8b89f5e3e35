//! The node's pod network, all through rtnetlink: a bridge holding the node's gateway address,
//! a veth pair per pod (the pod end is `eth0` in the pod's namespace), host-gw routes to the
//! other nodes' pod CIDRs, and `unreachable` routes fencing the cluster ranges so a packet to a
//! cluster address that nothing translated or routed fails here instead of leaving the machine.
//!
//! Every operation is idempotent: a restarted agent calls `setup` and `add_pod` again for what it
//! finds, and nothing running is disturbed.

use std::{
    collections::HashSet,
    io,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::{
    packet_route::{
        link::{InfoData, InfoVeth, LinkAttribute},
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType},
    },
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use crate::{ipam::Ipam, netns::NetNs};

/// Marks the routes Flotilla owns (as bird or zebra mark theirs), so they are found and
/// reconciled without touching anyone else's.
const ROUTE_PROTO: RouteProtocol = RouteProtocol::Other(0xf1);
/// Metric of the fences: any real route to a cluster address wins over them.
const FENCE_METRIC: u32 = 0x7fff_0000;

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    /// The node's network namespace; None for the caller's (the host, in production).
    pub netns: Option<PathBuf>,
    pub bridge: String,
    pub pod_cidr: Ipv4Net,
    pub cluster_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    pub mtu: u32,
    /// IPAM state and the pods' namespace mounts live here.
    pub state_dir: PathBuf,
}

/// A pod's network as set up: its namespace, address and host-side interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetwork {
    pub netns: PathBuf,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub host_veth: String,
}

pub struct NodeNetwork {
    cfg: NodeConfig,
    ipam: Ipam,
    /// The node namespace's connection. One request at a time: netlink replies to concurrent
    /// requests on one socket can be lost (rust-netlink/netlink-proto#24), and the kernel
    /// serialises link changes under the RTNL lock anyway.
    nl: tokio::sync::Mutex<Handle>,
    /// Ready pod networks not yet given to a pod: (address, IPAM owner).
    warm: std::sync::Mutex<Vec<(Ipv4Addr, String)>>,
    /// The bridge's index, checked again when using it fails.
    bridge: std::sync::atomic::AtomicU32,
    /// Wakes `keep_warm` when a ready network was taken.
    taken: tokio::sync::Notify,
}

/// IPAM owners of ready pod networks waiting for a pod start with this.
const WARM_OWNER: &str = "~warm-";

fn nl_err(what: impl std::fmt::Display) -> impl FnOnce(rtnetlink::Error) -> io::Error {
    let what = what.to_string();
    move |e| match &e {
        rtnetlink::Error::NetlinkError(m) => {
            let io = m.to_io();
            io::Error::new(io.kind(), format!("{what}: {io}"))
        }
        _ => io::Error::other(format!("{what}: {e}")),
    }
}

fn errno(e: &rtnetlink::Error) -> i32 {
    match e {
        rtnetlink::Error::NetlinkError(m) => -m.raw_code(),
        _ => 0,
    }
}

/// A netlink connection whose socket lives in `ns` (sockets keep the namespace they were made
/// in, so the handle can be used from any task afterwards).
pub fn netlink_in(ns: Option<&NetNs>) -> io::Result<Handle> {
    let rt = tokio::runtime::Handle::current();
    let make = || {
        let _guard = rt.enter();
        rtnetlink::new_connection()
    };
    let (conn, handle, _) = match ns {
        Some(ns) => ns.run(make)??,
        None => make()?,
    };
    tokio::spawn(conn);
    Ok(handle)
}

async fn link_index(nl: &Handle, name: &str) -> io::Result<Option<u32>> {
    let mut links = nl.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(m)) => Ok(Some(m.header.index)),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == libc::ENODEV => Ok(None),
        Err(e) => Err(nl_err(format!("looking up link {name}"))(e)),
    }
}

/// Creates the veth pair `name`–`peer` in `nl`'s namespace and moves `peer` into `ns`.
async fn veth_into(
    nl: &Handle,
    name: &str,
    peer: &str,
    mtu: Option<u32>,
    ns: &NetNs,
) -> io::Result<()> {
    let mut veth = LinkVeth::new(name, peer);
    if let Some(mtu) = mtu {
        veth = veth.mtu(mtu);
    }
    nl.link().add(veth.build()).execute().await.map_err(nl_err(format!("creating veth {name}")))?;
    let pi = link_index(nl, peer)
        .await?
        .ok_or_else(|| io::Error::other(format!("veth peer {peer} vanished")))?;
    nl.link()
        .set(LinkUnspec::new_with_index(pi).setns_by_fd(ns.as_fd().as_raw_fd()).build())
        .execute()
        .await
        .map_err(nl_err(format!("moving {peer} into {}", ns.path().display())))
}

/// Renames link `from` to `to`, returning its index.
async fn rename(nl: &Handle, from: &str, to: &str) -> io::Result<u32> {
    let i = link_index(nl, from)
        .await?
        .ok_or_else(|| io::Error::other(format!("no link {from} to rename to {to}")))?;
    nl.link()
        .set(LinkUnspec::new_with_index(i).name(to.to_string()).build())
        .execute()
        .await
        .map_err(nl_err(format!("renaming {from} to {to}")))?;
    Ok(i)
}

async fn set_up(nl: &Handle, index: u32, name: &str) -> io::Result<()> {
    nl.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl_err(format!("setting {name} up")))
}

async fn add_addr(
    nl: &Handle,
    index: u32,
    addr: Ipv4Addr,
    prefix: u8,
    name: &str,
) -> io::Result<()> {
    nl.address()
        .add(index, IpAddr::V4(addr), prefix)
        .replace()
        .execute()
        .await
        .map_err(nl_err(format!("adding {addr}/{prefix} to {name}")))
}

async fn replace_route(nl: &Handle, route: RouteMessage, what: &str) -> io::Result<()> {
    nl.route().add(route).replace().execute().await.map_err(nl_err(what))
}

fn route_dst(r: &RouteMessage) -> Option<Ipv4Net> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => {
            Ipv4Net::new(*a, r.header.destination_prefix_length).ok()
        }
        _ => None,
    })
}

/// Our routes in the main table.
async fn our_routes(nl: &Handle) -> io::Result<Vec<RouteMessage>> {
    let all: Vec<RouteMessage> = nl
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl_err("listing routes"))?;
    Ok(all.into_iter().filter(|r| r.header.protocol == ROUTE_PROTO).collect())
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

fn short_hash(s: &str) -> String {
    // Stable interface names from ids (names are limited to 15 bytes).
    format!("{:010x}", fnv1a(s) & 0xff_ffff_ffff)
}

/// The bridge's own MAC, stable per node and locally administered. A bridge without one set
/// takes the lowest of its ports' and changes it as pods come and go, and every pod's cached
/// gateway address goes stale until ARP notices (seconds of lost replies, probes included).
fn bridge_mac(node: &str) -> Vec<u8> {
    let h = fnv1a(node).to_be_bytes();
    vec![0x02, h[3], h[4], h[5], h[6], h[7]]
}

impl NodeNetwork {
    /// Creates (or adopts) the node's bridge, gateway address and fences, and enables
    /// forwarding in the node's namespace.
    pub async fn setup(cfg: NodeConfig) -> io::Result<NodeNetwork> {
        let ns = match &cfg.netns {
            Some(p) => Some(NetNs::open(p)?),
            None => None,
        };
        let nl = netlink_in(ns.as_ref())?;
        let ipam = Ipam::open(cfg.state_dir.join("ipam"), cfg.pod_cidr)?;
        let sysctl = || -> io::Result<()> {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
            // Replies to SNATed NodePort flows arrive for the node address on the external
            // interface and leave the same way; strict reverse-path filtering would drop
            // legitimate asymmetric host-gw traffic.
            std::fs::write("/proc/sys/net/ipv4/conf/all/rp_filter", "0")?;
            std::fs::write("/proc/sys/net/ipv4/conf/default/rp_filter", "0")
        };
        match &ns {
            Some(ns) => ns.run(sysctl)??,
            None => sysctl()?,
        }
        let net = NodeNetwork {
            cfg,
            ipam,
            nl: tokio::sync::Mutex::new(nl),
            warm: Default::default(),
            bridge: Default::default(),
            taken: Default::default(),
        };
        {
            let nl = net.nl.lock().await;
            let bridge = net.ensure_bridge(&nl).await?;
            nl.link()
                .set(LinkUnspec::new_with_index(bridge).address(bridge_mac(&net.cfg.name)).build())
                .execute()
                .await
                .map_err(nl_err(format!("setting the MAC of {}", net.cfg.bridge)))?;
            net.fence(&nl).await?;
        }
        // Ready networks of an earlier run go: `keep_warm` makes fresh ones.
        for (ip, owner) in net.ipam.allocated()? {
            if owner.starts_with(WARM_OWNER) {
                net.drop_slot(ip, &owner).await?;
            }
        }
        Ok(net)
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.ipam.gateway()
    }

    async fn ensure_bridge(&self, nl: &Handle) -> io::Result<u32> {
        let name = &self.cfg.bridge;
        let index = match link_index(nl, name).await? {
            Some(i) => i,
            None => {
                nl.link()
                    .add(LinkBridge::new(name).mtu(self.cfg.mtu).build())
                    .execute()
                    .await
                    .map_err(nl_err(format!("creating bridge {name}")))?;
                link_index(nl, name)
                    .await?
                    .ok_or_else(|| io::Error::other(format!("bridge {name} vanished")))?
            }
        };
        add_addr(nl, index, self.gateway(), self.cfg.pod_cidr.prefix_len(), name).await?;
        set_up(nl, index, name).await?;
        self.bridge.store(index, std::sync::atomic::Ordering::Relaxed);
        Ok(index)
    }

    async fn fence(&self, nl: &Handle) -> io::Result<()> {
        for net in [self.cfg.service_cidr, self.cfg.cluster_cidr] {
            let r = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(net.network(), net.prefix_len())
                .kind(RouteType::Unreachable)
                .protocol(ROUTE_PROTO)
                .priority(FENCE_METRIC)
                .build();
            replace_route(nl, r, &format!("fencing {net} with an unreachable route")).await?;
        }
        Ok(())
    }

    /// Makes the host-gw routes exactly `peers`: each other node's pod CIDR via its address.
    pub async fn set_peers(&self, peers: &[(Ipv4Net, Ipv4Addr)]) -> io::Result<()> {
        let nl = self.nl.lock().await;
        let want: HashSet<Ipv4Net> = peers.iter().map(|p| p.0).collect();
        for &(net, via) in peers {
            if net == self.cfg.pod_cidr {
                continue;
            }
            let r = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(net.network(), net.prefix_len())
                .gateway(via)
                .protocol(ROUTE_PROTO)
                .build();
            replace_route(&nl, r, &format!("route {net} via {via}")).await?;
        }
        for r in our_routes(&nl).await? {
            if r.header.kind != RouteType::Unicast {
                continue;
            }
            if let Some(dst) = route_dst(&r) {
                if !want.contains(&dst) {
                    nl.route()
                        .del(r)
                        .execute()
                        .await
                        .map_err(nl_err(format!("removing route {dst}")))?;
                }
            }
        }
        Ok(())
    }

    /// Pod networks are named by address, so a ready one can be handed to any pod.
    fn slot_netns(&self, ip: Ipv4Addr) -> PathBuf {
        self.cfg.state_dir.join("netns").join(ip.to_string())
    }

    fn slot_veth(&self, ip: Ipv4Addr) -> String {
        format!("fl{}", short_hash(&format!("{}/{ip}", self.cfg.name)))
    }

    fn slot(&self, ip: Ipv4Addr) -> PodNetwork {
        PodNetwork {
            netns: self.slot_netns(ip),
            ip,
            gateway: self.gateway(),
            host_veth: self.slot_veth(ip),
        }
    }

    /// Gives `pod` (a unique id, e.g. the pod's uid) a namespace, an address and an `eth0`
    /// with a default route via the bridge: a ready one from [`Self::keep_warm`] if there is
    /// one, else made now. Idempotent: an existing setup is kept as it is.
    pub async fn add_pod(&self, pod: &str) -> io::Result<PodNetwork> {
        if let Some(ip) = self.ipam.lookup(pod)? {
            return self.make_slot(ip).await;
        }
        let ready = self.warm.lock().expect("warm lock").pop();
        if let Some((ip, owner)) = ready {
            self.taken.notify_one();
            match self.ipam.reassign(ip, &owner, pod) {
                Ok(()) => return Ok(self.slot(ip)),
                Err(e) => {
                    tracing::warn!(%ip, "ready pod network not taken: {e}");
                    let _ = self.drop_slot(ip, &owner).await;
                }
            }
        }
        let ip = self.ipam.allocate(pod)?;
        self.make_slot(ip).await
    }

    /// Keeps `n` pod networks ready so that a pod start does not wait for one (a namespace, a
    /// veth pair and routes take 15 to 40 ms of kernel work here). Runs until dropped.
    pub async fn keep_warm(&self, n: usize) {
        let mut made = 0u64;
        loop {
            while self.warm.lock().expect("warm lock").len() < n {
                made += 1;
                let owner = format!("{WARM_OWNER}{}-{made}", std::process::id());
                let ip = match self.ipam.allocate(&owner) {
                    Ok(ip) => ip,
                    Err(e) => {
                        tracing::debug!("no ready pod network: {e}");
                        break;
                    }
                };
                match self.make_slot(ip).await {
                    Ok(_) => self.warm.lock().expect("warm lock").push((ip, owner)),
                    Err(e) => {
                        tracing::warn!(%ip, "making a ready pod network: {e}");
                        let _ = self.drop_slot(ip, &owner).await;
                        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    }
                }
            }
            // Also retried now and then: a full pod CIDR frees up as pods go.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.taken.notified())
                .await;
        }
    }

    /// Every address in use: pods' and ready networks'.
    pub fn slots(&self) -> io::Result<Vec<Ipv4Addr>> {
        Ok(self.ipam.allocated()?.into_iter().map(|(ip, _)| ip).collect())
    }

    /// How many pod networks are ready for the next pods.
    pub fn ready(&self) -> usize {
        self.warm.lock().expect("warm lock").len()
    }

    /// Makes (or completes) the network named by `ip`.
    async fn make_slot(&self, ip: Ipv4Addr) -> io::Result<PodNetwork> {
        let slot = self.slot(ip);
        let ns = NetNs::create(&slot.netns)?;
        let pnl = netlink_in(Some(&ns))?;
        let what = |w: &str| format!("pod network {ip}: {w}");
        let eth = link_index(&pnl, "eth0").await?;
        {
            let nl = self.nl.lock().await;
            let host = link_index(&nl, &slot.host_veth).await?;
            if let (Some(hi), Some(_)) = (host, eth) {
                let attach =
                    |bridge: u32| LinkUnspec::new_with_index(hi).controller(bridge).up().build();
                let bridge = self.bridge.load(std::sync::atomic::Ordering::Relaxed);
                if nl.link().set(attach(bridge)).execute().await.is_err() {
                    let bridge = self.ensure_bridge(&nl).await?;
                    nl.link()
                        .set(attach(bridge))
                        .execute()
                        .await
                        .map_err(nl_err(what("attaching the veth to the bridge")))?;
                }
            } else {
                // A half-made pair from an interrupted attempt is replaced.
                if let Some(hi) = host {
                    let _ = nl.link().del(hi).execute().await;
                }
                if let Some(e) = eth {
                    let _ = pnl.link().del(e).execute().await;
                }
                // One message: the pair, eth0 in the pod's namespace, the host end on the
                // bridge and up (eth0 cannot be set up in it: its peer does not exist yet).
                let make = |bridge: u32| {
                    // The MAC follows the address (0a:58 + the IPv4 bytes, as CNI bridges do):
                    // a reused address keeps its MAC, so no neighbour cache on the node or in
                    // other pods goes stale when one pod's address passes to the next.
                    let o = ip.octets();
                    let peer = LinkMessageBuilder::<LinkUnspec>::new()
                        .name("eth0")
                        .address(vec![0x0a, 0x58, o[0], o[1], o[2], o[3]])
                        .mtu(self.cfg.mtu)
                        .setns_by_fd(ns.as_fd().as_raw_fd())
                        .build();
                    LinkVeth::new(&slot.host_veth, "eth0")
                        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                        .mtu(self.cfg.mtu)
                        .controller(bridge)
                        .up()
                        .build()
                };
                let bridge = self.bridge.load(std::sync::atomic::Ordering::Relaxed);
                if nl.link().add(make(bridge)).execute().await.is_err() {
                    // The bridge may be gone (someone deleted it): make it again, once.
                    let bridge = self.ensure_bridge(&nl).await?;
                    nl.link()
                        .add(make(bridge))
                        .execute()
                        .await
                        .map_err(nl_err(what("creating the veth pair")))?;
                }
            }
        }
        let eth = link_index(&pnl, "eth0")
            .await?
            .ok_or_else(|| io::Error::other(what("eth0 vanished")))?;
        add_addr(&pnl, eth, ip, self.cfg.pod_cidr.prefix_len(), "eth0").await?;
        set_up(&pnl, eth, "eth0").await?;
        if let Some(lo) = link_index(&pnl, "lo").await? {
            set_up(&pnl, lo, "lo").await?;
        }
        let r = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(slot.gateway)
            .output_interface(eth)
            .build();
        replace_route(&pnl, r, &what(&format!("default route via {}", slot.gateway))).await?;
        Ok(slot)
    }

    /// The pod's network as `add_pod` made it, if it exists.
    pub fn pod(&self, pod: &str) -> io::Result<Option<PodNetwork>> {
        Ok(self.ipam.lookup(pod)?.map(|ip| self.slot(ip)))
    }

    /// Removes the pod's veth, namespace and address; removing twice is fine.
    pub async fn remove_pod(&self, pod: &str) -> io::Result<()> {
        match self.ipam.lookup(pod)? {
            Some(ip) => self.drop_slot(ip, pod).await,
            None => Ok(()),
        }
    }

    /// Removes the network named by `ip` and frees the address from `owner`.
    async fn drop_slot(&self, ip: Ipv4Addr, owner: &str) -> io::Result<()> {
        self.remove_slot(ip).await?;
        self.ipam.release(owner).map(drop)
    }

    async fn remove_slot(&self, ip: Ipv4Addr) -> io::Result<()> {
        let host = self.slot_veth(ip);
        {
            let nl = self.nl.lock().await;
            if let Some(i) = link_index(&nl, &host).await? {
                match nl.link().del(i).execute().await {
                    Err(e) if errno(&e) != libc::ENODEV => {
                        return Err(nl_err(format!("deleting {host}"))(e));
                    }
                    _ => {}
                }
            }
        }
        NetNs::remove(self.slot_netns(ip))
    }

    /// Pods with an address on this node (to re-adopt after a restart).
    pub fn pods(&self) -> io::Result<Vec<(Ipv4Addr, String)>> {
        let mut all = self.ipam.allocated()?;
        all.retain(|(_, owner)| !owner.starts_with(WARM_OWNER));
        Ok(all)
    }

    /// Removes every pod, the bridge, and every route this node added.
    pub async fn teardown(self) -> io::Result<()> {
        for (ip, owner) in self.ipam.allocated()? {
            self.drop_slot(ip, &owner).await?;
        }
        let nl = self.nl.lock().await;
        for r in our_routes(&nl).await? {
            let _ = nl.route().del(r).execute().await;
        }
        if let Some(i) = link_index(&nl, &self.cfg.bridge).await? {
            nl.link()
                .del(i)
                .execute()
                .await
                .map_err(nl_err(format!("deleting bridge {}", self.cfg.bridge)))?;
        }
        let _ = std::fs::remove_dir_all(self.cfg.state_dir.join("netns"));
        let _ = std::fs::remove_dir_all(self.cfg.state_dir.join("ipam"));
        Ok(())
    }
}

/// The names of the links in a namespace (for tests and diagnostics).
pub async fn links(ns: Option<&Path>) -> io::Result<Vec<String>> {
    let ns = match ns {
        Some(p) => Some(NetNs::open(p)?),
        None => None,
    };
    let nl = netlink_in(ns.as_ref())?;
    let all: Vec<_> =
        nl.link().get().execute().try_collect().await.map_err(nl_err("listing links"))?;
    Ok(all
        .into_iter()
        .filter_map(|m| {
            m.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n),
                _ => None,
            })
        })
        .collect())
}

/// Connects two namespaces with a veth pair (`a_name` in `a`, `b_name` in `b`), each end up and
/// optionally addressed, loopback up in both. For multi-node tests and benchmarks, whose
/// "hosts" are namespaces on one machine.
pub async fn wire(
    a: &NetNs,
    a_name: &str,
    a_addr: Option<Ipv4Net>,
    b: &NetNs,
    b_name: &str,
    b_addr: Option<Ipv4Net>,
) -> io::Result<()> {
    let anl = netlink_in(Some(a))?;
    let bnl = netlink_in(Some(b))?;
    let tmp = format!("w{}", short_hash(&format!("{}/{a_name}", a.path().display())));
    veth_into(&anl, a_name, &tmp, None, b).await?;
    let bi = rename(&bnl, &tmp, b_name).await?;
    let ai = link_index(&anl, a_name).await?.ok_or_else(|| io::Error::other("veth vanished"))?;
    for (nl, index, name, addr) in [(&anl, ai, a_name, a_addr), (&bnl, bi, b_name, b_addr)] {
        if let Some(net) = addr {
            add_addr(nl, index, net.addr(), net.prefix_len(), name).await?;
        }
        set_up(nl, index, name).await?;
        if let Some(lo) = link_index(nl, "lo").await? {
            set_up(nl, lo, "lo").await?;
        }
    }
    Ok(())
}

/// Creates bridge `name` in `ns` (up) and enslaves `ports`.
pub async fn bridge(ns: &NetNs, name: &str, ports: &[&str]) -> io::Result<()> {
    let nl = netlink_in(Some(ns))?;
    if link_index(&nl, name).await?.is_none() {
        nl.link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
            .map_err(nl_err(format!("creating bridge {name}")))?;
    }
    let bi = link_index(&nl, name).await?.ok_or_else(|| io::Error::other("bridge vanished"))?;
    set_up(&nl, bi, name).await?;
    for p in ports {
        let pi =
            link_index(&nl, p).await?.ok_or_else(|| io::Error::other(format!("no link {p}")))?;
        nl.link()
            .set(LinkUnspec::new_with_index(pi).controller(bi).up().build())
            .execute()
            .await
            .map_err(nl_err(format!("enslaving {p} to {name}")))?;
    }
    Ok(())
}

/// Adds (or replaces) a route to `dst` via `gateway` in `ns` (for test and benchmark hosts).
pub async fn add_route(ns: &NetNs, dst: Ipv4Net, gateway: Ipv4Addr) -> io::Result<()> {
    let nl = netlink_in(Some(ns))?;
    let r = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst.network(), dst.prefix_len())
        .gateway(gateway)
        .build();
    replace_route(&nl, r, &format!("route {dst} via {gateway}")).await
}
