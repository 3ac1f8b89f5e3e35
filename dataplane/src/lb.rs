//! The eBPF service load balancer: loads the programs, pins maps and links under a per-node
//! bpffs directory, and programs services into the maps.
//!
//! Restart safety: maps are pinned by name and reused by the next load, and every program is
//! attached through a pinned bpf_link. A new process replaces the program inside the existing link
//! (`BPF_LINK_UPDATE`), so there is no moment without a program and no translation state is lost;
//! an agent that stops without `teardown` leaves the node's load balancing running.
//!
//! Atomic updates: a service's backends are written under a fresh slot, then the service's one
//! map value is replaced to point at it; a program sees the old set or the new one, never a mix.
//! The old slot is freed on the next update, long after any program that read it has finished.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    fs, io,
    net::Ipv4Addr,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, MapError},
    programs::{
        links::{CgroupAttachMode, FdLink, LinkOrder, PinnedLink},
        tc::TcAttachOptions,
        CgroupSockAddr, SchedClassifier, TcAttachType,
    },
    Ebpf, EbpfLoader,
};
use flotilla_ebpf_common as abi;
use ipnet::Ipv4Net;
use nix::{
    mount::{mount, MsFlags},
    sys::statfs::{statfs, BPF_FS_MAGIC},
};

use crate::{
    maglev,
    netns::NetNs,
    service::{Backend, Selection, Service, ServiceError},
};

/// The eBPF object built by `build.rs`.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flotilla-ebpf"));

const SOCK_PROGRAMS: [&str; 4] =
    ["flotilla_connect4", "flotilla_sendmsg4", "flotilla_recvmsg4", "flotilla_getpeername4"];

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error(transparent)]
    Invalid(#[from] ServiceError),
    #[error("loading eBPF programs: {0}")]
    Load(#[from] Box<aya::EbpfError>),
    #[error("{what}: {source}")]
    Program {
        what: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("{what}: {source}")]
    Map {
        what: String,
        #[source]
        source: Box<MapError>,
    },
    #[error("{0}")]
    Io(#[from] io::Error),
}

fn map_err(what: impl Into<String>) -> impl FnOnce(MapError) -> LbError {
    let what = what.into();
    move |source| LbError::Map { what, source: Box::new(source) }
}

fn prog_err(what: impl Into<String>) -> impl FnOnce(aya::programs::ProgramError) -> LbError {
    let what = what.into();
    move |source| LbError::Program { what, source: Box::new(source) }
}

/// The tc side: NodePort and SNAT on the node's external interface.
#[derive(Clone, Debug)]
pub struct External {
    /// The node's network namespace (None: the caller's).
    pub netns: Option<PathBuf>,
    pub interface: String,
    pub node_addr: Ipv4Addr,
    /// This node's pod CIDR (backends in it are local: DNAT only).
    pub local_pods: Ipv4Net,
    pub cluster_pods: Ipv4Net,
    pub services: Ipv4Net,
    /// SNAT pod traffic to outside the cluster to `node_addr`.
    pub masquerade: bool,
}

#[derive(Clone, Debug)]
pub struct LbConfig {
    /// bpffs directory for this node's maps and links, e.g. `/sys/fs/bpf/flotilla/<node>`.
    pub pin_dir: PathBuf,
    /// cgroup v2 directory whose processes get socket-level translation.
    pub cgroup: PathBuf,
    pub external: Option<External>,
}

type Map<K, V> = BpfHashMap<MapData, K, V>;

pub struct LoadBalancer {
    config: LbConfig,
    _ebpf: Ebpf,
    services: Map<abi::ServiceKey, abi::ServiceValue>,
    backends: Map<abi::BackendKey, abi::Backend>,
    members: Map<abi::MemberKey, u8>,
    maglev: Map<u32, [u16; abi::MAGLEV_SIZE]>,
    nat: Map<abi::Tuple, abi::NatValue>,
    /// (socket cookie, backend) → service address of UDP sockets the socket path translated.
    udp_revnat: Map<abi::UdpRevKey, abi::RevNat>,
    /// UDP backends that left a service since the last flush: their tracked flows are dropped,
    /// as kube-proxy clears conntrack, or datagrams would keep going to a gone endpoint.
    gone_udp: HashSet<abi::Backend>,
    /// Keys each service owns, by service name (rebuilt by `sync` after a restart).
    owned: HashMap<String, HashSet<abi::ServiceKey>>,
    key_owner: HashMap<abi::ServiceKey, String>,
    used_slots: HashSet<u32>,
    next_slot: u32,
    /// Slots replaced by the last update, with their entry counts, freed on the next one.
    retired: Vec<(u32, u32)>,
}

fn ip(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

fn port(p: u16) -> u16 {
    p.to_be()
}

/// SNAT source ports: outside the node's ephemeral range, so a translated flow never takes the
/// tuple of a connection the node's own sockets open (their replies meet the tc program first).
/// With Linux's default range (32768–60999) that is 1024–32767.
fn snat_range(ns: &NetNs) -> io::Result<(u16, u16)> {
    let range = ns.run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range"))??;
    let mut it = range.split_whitespace().map(|v| v.parse::<u32>().unwrap_or(0));
    let (lo, hi) = (it.next().unwrap_or(32768), it.next().unwrap_or(60999));
    if lo > 1024 + 4096 {
        Ok((1024, (lo - 1) as u16))
    } else if hi + 4096 < 65535 {
        Ok(((hi + 1) as u16, 65535))
    } else {
        Err(io::Error::other(format!(
            "ip_local_port_range {lo}-{hi} leaves no room for SNAT ports; narrow it"
        )))
    }
}

/// Makes sure a bpffs is mounted at `/sys/fs/bpf` (it is not on every host).
fn ensure_bpffs() -> io::Result<()> {
    let root = Path::new("/sys/fs/bpf");
    fs::create_dir_all(root)?;
    if statfs(root).map(|s| s.filesystem_type() == BPF_FS_MAGIC).unwrap_or(false) {
        return Ok(());
    }
    mount(Some("bpf"), root, Some("bpf"), MsFlags::empty(), None::<&str>)
        .map_err(|e| io::Error::other(format!("mount bpffs on /sys/fs/bpf: {e}")))
}

/// `create_dir_all` that tries again when a shared parent (e.g. `/sys/fs/bpf/flotilla`, which
/// the last node to leave removes) vanishes between its steps.
fn create_dirs(dir: &Path) -> io::Result<()> {
    let mut tries = 0;
    loop {
        match fs::create_dir_all(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 3 => tries += 1,
            r => return r,
        }
    }
}

// The two bpf(2) commands aya exposes only for tc and XDP links: cgroup links are updated here
// the same way. Numbers from include/uapi/linux/bpf.h (enum bpf_cmd).
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

fn bpf_obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // union bpf_attr, obj_get member: { u64 pathname; u32 bpf_fd; u32 file_flags; ... }.
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64;
    // SAFETY: attr is a zeroed, correctly sized bpf_attr; `c` outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_mut_ptr(), 128usize) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Atomically replaces the program inside the pinned link at `pin`.
fn link_update(pin: &Path, prog: BorrowedFd<'_>) -> io::Result<()> {
    let link = bpf_obj_get(pin)?;
    // link_update member: { u32 link_fd; u32 new_prog_fd; u32 flags; u32 old_prog_fd }.
    let mut attr = [0u32; 32];
    attr[0] = link.as_raw_fd() as u32;
    attr[1] = prog.as_raw_fd() as u32;
    // SAFETY: attr is a zeroed, correctly sized bpf_attr; both fds are open for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_UPDATE, attr.as_mut_ptr(), 128usize) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Replaces the program inside the link pinned at `pin` (an earlier instance's), returning
/// false when there is none yet.
fn replace_pinned(pin: &Path, name: &str, prog: BorrowedFd<'_>) -> Result<bool, LbError> {
    if !pin.exists() {
        return Ok(false);
    }
    link_update(pin, prog)
        .map_err(|e| io::Error::new(e.kind(), format!("replacing {name}: {e}")))?;
    Ok(true)
}

/// Pins a newly attached program's link, so it outlives this process.
fn pin_link<L>(link: L, pin: &Path, name: &str) -> Result<(), LbError>
where
    L: TryInto<FdLink>,
    L::Error: std::fmt::Display,
{
    let link: FdLink =
        link.try_into().map_err(|e| io::Error::other(format!("{name}: not an fd link: {e}")))?;
    link.pin(pin).map_err(|e| io::Error::other(format!("pinning {name}: {e}")))?;
    Ok(())
}

impl LoadBalancer {
    /// Loads the programs and attaches them, adopting the maps and links a previous instance
    /// pinned (its services stay programmed until the next `sync`).
    pub fn start(config: LbConfig) -> Result<LoadBalancer, LbError> {
        ensure_bpffs()?;
        let maps_dir = config.pin_dir.join("maps");
        let links_dir = config.pin_dir.join("links");
        create_dirs(&maps_dir)?;
        create_dirs(&links_dir)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(PROGRAMS)
            .map_err(Box::new)?;

        let cgroup = fs::File::open(&config.cgroup).map_err(|e| {
            io::Error::new(e.kind(), format!("cgroup {}: {e}", config.cgroup.display()))
        })?;
        for name in SOCK_PROGRAMS {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or_else(|| io::Error::other(format!("program {name} missing from the object")))?
                .try_into()
                .map_err(prog_err(name))?;
            prog.load().map_err(prog_err(format!("verifying {name}")))?;
            let pin = links_dir.join(name);
            if !replace_pinned(&pin, name, prog.fd().map_err(prog_err(name))?.as_fd())? {
                // A cgroup bpf_link always coexists with other programs; BPF_LINK_CREATE
                // rejects the legacy attach flags, so the mode must be the default (0).
                let id = prog.attach(&cgroup, CgroupAttachMode::Single).map_err(prog_err(
                    format!("attaching {name} to {}", config.cgroup.display()),
                ))?;
                pin_link(prog.take_link(id).map_err(prog_err(name))?, &pin, name)?;
            }
        }

        if let Some(ext) = &config.external {
            let mut cfg: Array<MapData, abi::Config> = Array::try_from(
                ebpf.take_map("CONFIG").ok_or_else(|| io::Error::other("CONFIG map missing"))?,
            )
            .map_err(map_err("CONFIG"))?;
            let ns = match &ext.netns {
                Some(p) => NetNs::open(p)?,
                None => NetNs::current()?,
            };
            let (snat_port_min, snat_port_max) = snat_range(&ns)?;
            let net = |n: &Ipv4Net| (ip(n.network()), ip(n.netmask()));
            let (local_pods, local_pods_mask) = net(&ext.local_pods);
            let (cluster_pods, cluster_pods_mask) = net(&ext.cluster_pods);
            let (services, services_mask) = net(&ext.services);
            let value = abi::Config {
                node_addr: ip(ext.node_addr),
                local_pods,
                local_pods_mask,
                cluster_pods,
                cluster_pods_mask,
                services,
                services_mask,
                snat_port_min,
                snat_port_max,
                flags: if ext.masquerade { abi::CONFIG_MASQUERADE } else { 0 },
            };
            cfg.set(0, value, 0).map_err(map_err("CONFIG"))?;
            for (name, kind) in [
                ("flotilla_ingress", TcAttachType::Ingress),
                ("flotilla_egress", TcAttachType::Egress),
            ] {
                let prog: &mut SchedClassifier = ebpf
                    .program_mut(name)
                    .ok_or_else(|| io::Error::other(format!("program {name} missing")))?
                    .try_into()
                    .map_err(prog_err(name))?;
                prog.load().map_err(prog_err(format!("verifying {name}")))?;
                let pin = links_dir.join(format!("{name}_{}", ext.interface));
                if replace_pinned(&pin, name, prog.fd().map_err(prog_err(name))?.as_fd())? {
                    continue;
                }
                // tcx resolves the interface in the calling thread's namespace.
                let iface = ext.interface.clone();
                let id = ns.run(|| {
                    prog.attach_with_options(
                        &iface,
                        kind,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                })?;
                let id = id.map_err(prog_err(format!("attaching {name} to {}", ext.interface)))?;
                pin_link(prog.take_link(id).map_err(prog_err(name))?, &pin, name)?;
            }
        }

        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name).ok_or_else(|| io::Error::other(format!("map {name} missing")))
        };
        let services = Map::try_from(take(&mut ebpf, "SERVICES")?).map_err(map_err("SERVICES"))?;
        let backends = Map::try_from(take(&mut ebpf, "BACKENDS")?).map_err(map_err("BACKENDS"))?;
        let members = Map::try_from(take(&mut ebpf, "MEMBERS")?).map_err(map_err("MEMBERS"))?;
        let maglev = Map::try_from(take(&mut ebpf, "MAGLEV")?).map_err(map_err("MAGLEV"))?;
        let nat = Map::try_from(take(&mut ebpf, "NAT")?).map_err(map_err("NAT"))?;
        let udp_revnat =
            Map::try_from(take(&mut ebpf, "UDP_REVNAT")?).map_err(map_err("UDP_REVNAT"))?;
        let mut lb = LoadBalancer {
            config,
            _ebpf: ebpf,
            services,
            backends,
            members,
            maglev,
            nat,
            udp_revnat,
            gone_udp: HashSet::new(),
            owned: HashMap::new(),
            key_owner: HashMap::new(),
            used_slots: HashSet::new(),
            next_slot: 1,
            retired: Vec::new(),
        };
        lb.adopt()?;
        Ok(lb)
    }

    /// Rebuilds slot bookkeeping from the pinned maps and drops entries no service points at
    /// (left by an instance that died between writing a slot and swapping it in).
    fn adopt(&mut self) -> Result<(), LbError> {
        for entry in self.services.iter() {
            let (_, v) = entry.map_err(map_err("reading SERVICES"))?;
            self.used_slots.insert(v.slot);
            self.next_slot = self.next_slot.max(v.slot.wrapping_add(1));
        }
        let stale: Vec<abi::BackendKey> = self
            .backends
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !self.used_slots.contains(&k.slot))
            .collect();
        for k in stale {
            let _ = self.backends.remove(&k);
        }
        let stale: Vec<u32> = self
            .maglev
            .keys()
            .filter_map(Result::ok)
            .filter(|s| !self.used_slots.contains(s))
            .collect();
        for s in stale {
            let _ = self.maglev.remove(&s);
        }
        Ok(())
    }

    pub fn pin_dir(&self) -> &Path {
        &self.config.pin_dir
    }

    fn alloc_slot(&mut self) -> u32 {
        loop {
            let s = self.next_slot;
            self.next_slot = self.next_slot.wrapping_add(1).max(1);
            if !self.used_slots.contains(&s) {
                self.used_slots.insert(s);
                return s;
            }
        }
    }

    fn free_retired(&mut self) {
        for (slot, total) in std::mem::take(&mut self.retired) {
            for index in 0..total {
                let _ = self.backends.remove(&abi::BackendKey { slot, index });
            }
            let _ = self.maglev.remove(&slot);
            self.used_slots.remove(&slot);
        }
    }

    /// Programs one service (all its ports, ClusterIP and NodePort), replacing what it had.
    /// Invalid input is refused before any map is written; a failed write leaves the previous
    /// state of the affected key in place.
    pub fn apply(&mut self, svc: &Service) -> Result<(), LbError> {
        let r = self.apply_one(svc);
        self.flush_udp_flows();
        r
    }

    fn apply_one(&mut self, svc: &Service) -> Result<(), LbError> {
        svc.validate()?;
        self.free_retired();
        let flags = svc.affinity_timeout.map_or(0, |_| abi::SVC_AFFINITY)
            | if svc.selection == Selection::Maglev { abi::SVC_MAGLEV } else { 0 };
        let mut plan = Vec::new();
        for (i, p) in svc.ports.iter().enumerate() {
            let proto = p.protocol.number();
            plan.push((
                abi::ServiceKey { addr: ip(svc.cluster_ip), port: port(p.port), proto, pad: 0 },
                i,
            ));
            if let Some(np) = p.node_port {
                plan.push((abi::ServiceKey { addr: 0, port: port(np), proto, pad: 0 }, i));
            }
        }
        // Every conflict is found before anything is written.
        for (key, i) in &plan {
            if let Some(owner) = self.owner_of(key, &svc.name) {
                let field = if key.addr == 0 { "nodePort" } else { "port" };
                return Err(svc
                    .error(
                        &format!("ports[{i}].{field}"),
                        format!("{} is already used by service {owner}", describe(key)),
                    )
                    .into());
            }
        }
        let old = self.owned.remove(&svc.name).unwrap_or_default();
        let mut keys = HashSet::new();
        let mut result = Ok(());
        for (key, i) in plan {
            let written = self.write_key(
                key,
                &svc.ports[i].backends,
                flags,
                svc.affinity_timeout.unwrap_or(0),
            );
            if let Err(e) = written {
                result = Err(e);
                break;
            }
            keys.insert(key);
        }
        if result.is_err() {
            // Keys written so far stay owned, as do the old ones: nothing is orphaned, and the
            // next apply or sync converges.
            keys.extend(old.iter().copied());
        } else {
            for key in old.difference(&keys) {
                self.key_owner.remove(key);
                self.remove_key(key)?;
            }
        }
        for key in &keys {
            self.key_owner.insert(*key, svc.name.clone());
        }
        self.owned.insert(svc.name.clone(), keys);
        result
    }

    fn owner_of(&self, key: &abi::ServiceKey, except: &str) -> Option<&str> {
        self.key_owner.get(key).map(String::as_str).filter(|o| *o != except)
    }

    /// Removes a service's keys; unknown names are fine.
    pub fn remove(&mut self, name: &str) -> Result<(), LbError> {
        self.free_retired();
        for key in self.owned.remove(name).unwrap_or_default() {
            self.key_owner.remove(&key);
            self.remove_key(&key)?;
        }
        self.flush_udp_flows();
        Ok(())
    }

    /// Makes the maps hold exactly `services` (after a restart, or a relist).
    pub fn sync(&mut self, services: &[Service]) -> Result<(), LbError> {
        for s in services {
            s.validate()?;
        }
        self.owned.clear();
        self.key_owner.clear();
        let mut errors = Vec::new();
        for s in services {
            if let Err(e) = self.apply_one(s) {
                errors.push(e);
            }
        }
        let want: HashSet<abi::ServiceKey> = self.owned.values().flatten().copied().collect();
        let stale: Vec<abi::ServiceKey> =
            self.services.keys().filter_map(Result::ok).filter(|k| !want.contains(k)).collect();
        for k in stale {
            self.remove_key(&k)?;
        }
        // Affinity checks membership: drop entries of backends no longer active anywhere.
        let mut active = HashSet::new();
        for key in &want {
            if let Ok(v) = self.services.get(key, 0) {
                for index in 0..v.active as u32 {
                    if let Ok(b) = self.backends.get(&abi::BackendKey { slot: v.slot, index }, 0) {
                        active.insert(abi::MemberKey { service: *key, backend: b });
                    }
                }
            }
        }
        let stale: Vec<abi::MemberKey> =
            self.members.keys().filter_map(Result::ok).filter(|m| !active.contains(m)).collect();
        for m in stale {
            let _ = self.members.remove(&m);
        }
        self.flush_udp_flows();
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn current(&self, key: &abi::ServiceKey) -> Option<(abi::ServiceValue, Vec<abi::Backend>)> {
        let v = self.services.get(key, 0).ok()?;
        let list = (0..v.total as u32)
            .map(|index| self.backends.get(&abi::BackendKey { slot: v.slot, index }, 0).ok())
            .collect::<Option<Vec<_>>>()?;
        Some((v, list))
    }

    fn write_key(
        &mut self,
        key: abi::ServiceKey,
        backends: &[Backend],
        flags: u16,
        affinity_timeout: u32,
    ) -> Result<(), LbError> {
        // Active first (sorted: every node builds the same Maglev table), then terminating.
        let mut active: Vec<&Backend> = backends.iter().filter(|b| !b.terminating).collect();
        let mut terminating: Vec<&Backend> = backends.iter().filter(|b| b.terminating).collect();
        active.sort_by_key(|b| (b.addr, b.port));
        terminating.sort_by_key(|b| (b.addr, b.port));
        let list: Vec<abi::Backend> = active
            .iter()
            .chain(&terminating)
            .map(|b| abi::Backend { addr: ip(b.addr), port: port(b.port), pad: 0 })
            .collect();
        let maglev = flags & abi::SVC_MAGLEV != 0 && !active.is_empty();
        let old = self.current(&key);
        if let Some((v, old_list)) = &old {
            if old_list == &list
                && v.active as usize == active.len()
                && v.flags == flags
                && v.affinity_timeout == affinity_timeout
                && (!maglev || self.maglev.get(&v.slot, 0).is_ok())
            {
                return Ok(());
            }
        }
        let slot = self.alloc_slot();
        let written = (|| -> Result<(), LbError> {
            for (index, b) in list.iter().enumerate() {
                let k = abi::BackendKey { slot, index: index as u32 };
                self.backends
                    .insert(k, b, 0)
                    .map_err(map_err(format!("{}: BACKENDS", describe(&key))))?;
            }
            if maglev {
                let pairs: Vec<(Ipv4Addr, u16)> = active.iter().map(|b| (b.addr, b.port)).collect();
                let t = maglev::table(&pairs, abi::MAGLEV_SIZE);
                let mut arr = [0u16; abi::MAGLEV_SIZE];
                arr.copy_from_slice(&t);
                self.maglev
                    .insert(slot, arr, 0)
                    .map_err(map_err(format!("{}: MAGLEV", describe(&key))))?;
            }
            for b in &list[..active.len()] {
                let m = abi::MemberKey { service: key, backend: *b };
                self.members
                    .insert(m, 1, 0)
                    .map_err(map_err(format!("{}: MEMBERS", describe(&key))))?;
            }
            Ok(())
        })();
        let value = abi::ServiceValue {
            slot,
            active: active.len() as u16,
            total: list.len() as u16,
            flags,
            pad: 0,
            affinity_timeout,
        };
        let swapped = written.and_then(|()| {
            self.services
                .insert(key, value, 0)
                .map_err(map_err(format!("{}: SERVICES", describe(&key))))
        });
        if let Err(e) = swapped {
            // Undo the new slot; the key keeps pointing at its previous backends.
            for index in 0..list.len() as u32 {
                let _ = self.backends.remove(&abi::BackendKey { slot, index });
            }
            let _ = self.maglev.remove(&slot);
            self.used_slots.remove(&slot);
            return Err(e);
        }
        if let Some((v, old_list)) = old {
            if key.proto == abi::PROTO_UDP {
                let kept: HashSet<&abi::Backend> = list.iter().collect();
                self.gone_udp.extend(old_list.iter().filter(|b| !kept.contains(b)));
            }
            let now: HashSet<&abi::Backend> = list[..active.len()].iter().collect();
            for b in &old_list[..v.active as usize] {
                if !now.contains(b) {
                    let _ = self.members.remove(&abi::MemberKey { service: key, backend: *b });
                }
            }
            self.retired.push((v.slot, v.total as u32));
        }
        Ok(())
    }

    fn remove_key(&mut self, key: &abi::ServiceKey) -> Result<(), LbError> {
        let Some((v, list)) = self.current(key) else {
            let _ = self.services.remove(key);
            return Ok(());
        };
        self.services.remove(key).map_err(map_err(format!("{}: SERVICES", describe(key))))?;
        if key.proto == abi::PROTO_UDP {
            self.gone_udp.extend(list.iter().copied());
        }
        for b in &list[..v.active as usize] {
            let _ = self.members.remove(&abi::MemberKey { service: *key, backend: *b });
        }
        self.retired.push((v.slot, v.total as u32));
        Ok(())
    }

    /// Drops the tc path's tracked UDP flows to backends that left their service, and
    /// destroys the UDP sockets the socket path connected to one of them (the kernel keeps a
    /// connected socket's destination for good: the application would keep sending to a gone
    /// endpoint; destroyed, its next call fails and it connects again, to a live backend).
    fn flush_udp_flows(&mut self) {
        if self.gone_udp.is_empty() {
            return;
        }
        let gone = std::mem::take(&mut self.gone_udp);
        if let Err(e) = self.destroy_udp_sockets(&gone) {
            tracing::warn!(error = %e, "destroying UDP sockets connected to removed backends");
        }
        let hit = |addr: u32, port: u16| gone.contains(&abi::Backend { addr, port, pad: 0 });
        let stale: Vec<abi::Tuple> = self
            .nat
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| {
                k.proto == abi::PROTO_UDP && (hit(v.daddr, v.dport) || hit(k.saddr, k.sport))
            })
            .map(|(k, _)| k)
            .collect();
        for k in stale {
            let _ = self.nat.remove(&k);
        }
    }

    /// Destroys the connected UDP sockets of this node's processes (its cgroup subtree, in
    /// whatever network namespaces they are) that the socket path translated to a backend in
    /// `gone`; sockets the application connected to that address itself are left alone.
    fn destroy_udp_sockets(&self, gone: &HashSet<abi::Backend>) -> io::Result<usize> {
        let mut destroyed = 0;
        for ns in namespaces_of(&self.config.cgroup)? {
            let Ok(ns) = NetNs::open(&ns) else { continue }; // the process has exited
            let stale: Vec<crate::sockdiag::UdpSocket> = ns
                .run(crate::sockdiag::connected_udp)??
                .into_iter()
                .filter(|s| {
                    let (addr, port) = (ip(*s.peer.ip()), self::port(s.peer.port()));
                    let backend = abi::Backend { addr, port, pad: 0 };
                    if !gone.contains(&backend) {
                        return false;
                    }
                    let key = abi::UdpRevKey { cookie: s.cookie, addr, port, pad: 0 };
                    let Ok(vip) = self.udp_revnat.get(&key, 0) else {
                        return false; // not connected through a service
                    };
                    // The same backend may still serve the service this socket went through
                    // (it left another one); terminating backends keep their flows too.
                    let svc = abi::ServiceKey {
                        addr: vip.addr,
                        port: vip.port,
                        proto: abi::PROTO_UDP,
                        pad: 0,
                    };
                    !self.current(&svc).is_some_and(|(_, list)| list.contains(&backend))
                })
                .collect();
            if stale.is_empty() {
                continue;
            }
            ns.run(|| stale.iter().try_for_each(crate::sockdiag::destroy))??;
            destroyed += stale.len();
        }
        if destroyed > 0 {
            tracing::info!(
                sockets = destroyed,
                "destroyed UDP sockets connected to removed backends"
            );
        }
        Ok(destroyed)
    }

    /// Tracked tc-path flows (either direction) to or from a backend, by protocol.
    pub fn flows_to(&self, addr: Ipv4Addr, port: u16, protocol: crate::Protocol) -> usize {
        let (a, p, proto) = (ip(addr), self::port(port), protocol.number());
        self.nat
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| {
                k.proto == proto
                    && ((v.daddr == a && v.dport == p) || (k.saddr == a && k.sport == p))
            })
            .count()
    }

    /// The attached programs as (pinned link name, link id, program id): the link ids stay
    /// across restarts while the program ids change, which is what "replaced in place" means.
    pub fn links(&self) -> Result<Vec<(String, u32, u32)>, LbError> {
        let mut out = Vec::new();
        for e in fs::read_dir(self.config.pin_dir.join("links"))? {
            let e = e?;
            let link = PinnedLink::from_pin(e.path())
                .map_err(|err| io::Error::other(format!("{}: {err}", e.path().display())))?;
            let info = FdLink::from(link)
                .info()
                .map_err(|err| io::Error::other(format!("{}: {err}", e.path().display())))?;
            out.push((e.file_name().to_string_lossy().into_owned(), info.id(), info.program_id()));
        }
        out.sort();
        Ok(out)
    }

    /// Number of service keys programmed (ClusterIP and NodePort entries).
    pub fn key_count(&self) -> usize {
        self.services.keys().count()
    }

    /// Detaches every program and removes every pinned map and link of this node.
    pub fn teardown(self) -> Result<(), LbError> {
        let dir = self.config.pin_dir.clone();
        drop(self);
        remove_pins(&dir)
    }
}

/// Removes a node's pinned links (which detaches their programs) and maps, e.g. after a crashed
/// test or for a node that leaves for good.
pub fn remove_pins(dir: &Path) -> Result<(), LbError> {
    for sub in ["links", "maps"] {
        let d = dir.join(sub);
        if let Ok(entries) = fs::read_dir(&d) {
            for e in entries.flatten() {
                fs::remove_file(e.path())?;
            }
        }
        let _ = fs::remove_dir(&d);
    }
    let _ = fs::remove_dir(dir);
    Ok(())
}

fn describe(key: &abi::ServiceKey) -> String {
    let proto = match key.proto {
        abi::PROTO_TCP => "TCP",
        abi::PROTO_UDP => "UDP",
        _ => "?",
    };
    let p = u16::from_be(key.port);
    if key.addr == 0 {
        format!("NodePort {p}/{proto}")
    } else {
        format!("{}:{p}/{proto}", Ipv4Addr::from(key.addr.to_ne_bytes()))
    }
}

/// One `/proc/<pid>/ns/net` per distinct network namespace of the processes in `cgroup` and
/// its descendants.
fn namespaces_of(cgroup: &Path) -> io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let procs = match fs::read_to_string(dir.join("cgroup.procs")) {
            Ok(p) => p,
            // Removed while we walked: nothing left in it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for pid in procs.lines() {
            let ns = PathBuf::from(format!("/proc/{pid}/ns/net"));
            if let Ok(m) = fs::metadata(&ns) {
                if seen.insert((m.dev(), m.ino())) {
                    out.push(ns);
                }
            }
        }
        // A child cgroup removed meanwhile just ends that branch.
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            }
        }
    }
    Ok(out)
}
