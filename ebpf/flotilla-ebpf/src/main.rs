//! Flotilla's eBPF programs.
//!
//! - Socket-level service translation (cgroup sock_addr): `connect4` and `sendmsg4` rewrite a
//!   service address to a backend once per connection (or datagram); `recvmsg4` and
//!   `getpeername4` show the application the service address again. Pod-to-service traffic is
//!   never translated per packet.
//! - The NodePort and SNAT path (tc on the node's external interface): DNAT to a backend with
//!   connection tracking in an LRU map, SNAT to the node address when the backend is on another
//!   node (so its reply comes back here) and for pod egress to outside the cluster, reverse
//!   translation of replies, checksums fixed incrementally.
//!
//! Map layouts live in `flotilla-ebpf-common`; every map is pinned by name so an agent restart
//! reuses the same maps and established flows keep their translation.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, bpf_redir_neigh, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT,
        BPF_FIB_LOOKUP_SKIP_NEIGH, BPF_F_MARK_MANGLED_0, BPF_F_NO_PREALLOC, BPF_F_PSEUDO_HDR,
        BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT,
    },
    helpers::{
        bpf_fib_lookup as fib_lookup, bpf_get_netns_cookie, bpf_get_prandom_u32,
        bpf_get_socket_cookie, bpf_ktime_get_coarse_ns, bpf_redirect_neigh, bpf_set_retval,
    },
    macros::{cgroup_sock_addr, classifier, map},
    maps::{Array, HashMap, LruHashMap},
    programs::{SockAddrContext, TcContext},
    EbpfContext,
};
use flotilla_ebpf_common::*;

#[map]
static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(SERVICES_MAX, 0);
#[map]
static BACKENDS: HashMap<BackendKey, Backend> = HashMap::pinned(BACKENDS_MAX, 0);
#[map]
static MEMBERS: HashMap<MemberKey, u8> = HashMap::pinned(BACKENDS_MAX, 0);
#[map]
static MAGLEV: HashMap<u32, [u16; MAGLEV_SIZE]> = HashMap::pinned(MAGLEV_MAX, BPF_F_NO_PREALLOC);
#[map]
static SOCK_REVNAT: LruHashMap<u64, RevNat> = LruHashMap::pinned(SOCK_REVNAT_MAX, 0);
#[map]
static UDP_REVNAT: LruHashMap<UdpRevKey, RevNat> = LruHashMap::pinned(SOCK_REVNAT_MAX, 0);
#[map]
static AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(AFFINITY_MAX, 0);
#[map]
static NAT: LruHashMap<Tuple, NatValue> = LruHashMap::pinned(NAT_MAX, 0);
#[map]
static CONFIG: Array<Config> = Array::pinned(1, 0);

const ECONNREFUSED: i32 = 111;

/// The clock for flow and affinity ages: the coarse monotonic clock (one tick's resolution) is
/// plenty for timeouts of seconds and, unlike the precise one, costs no clock-source read on
/// every packet. Ages are computed with `saturating_sub`, so a stamp a tick ahead (from the
/// precise clock of an earlier program version sharing the maps) is just "fresh".
#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper available to every program type.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Picks a backend for a new connection: the client's affinity entry while it is fresh and its
/// backend still active, else Maglev (`hash` is the flow hash) or uniform random.
#[inline(always)]
fn select(key: &ServiceKey, svc: &ServiceValue, client: u64, hash: u32) -> Option<Backend> {
    let affinity = svc.flags & SVC_AFFINITY != 0;
    let akey = AffinityKey { service: *key, client };
    if affinity {
        let now = now();
        if let Some(a) = AFFINITY.get_ptr_mut(akey) {
            // SAFETY: a pointer into the map's value, valid for this program run.
            let a = unsafe { &mut *a };
            let fresh =
                now.saturating_sub(a.last_ns) <= svc.affinity_timeout as u64 * 1_000_000_000;
            let member = MemberKey { service: *key, backend: a.backend };
            // SAFETY: the value is only tested for presence.
            if fresh && unsafe { MEMBERS.get(member) }.is_some() {
                a.last_ns = now;
                return Some(a.backend);
            }
        }
    }
    let index = if svc.flags & SVC_MAGLEV != 0 {
        // SAFETY: read-only use of the table for this run.
        let table = unsafe { MAGLEV.get(svc.slot) }?;
        let i = table[hash as usize & (MAGLEV_SIZE - 1)] as u32;
        if i >= svc.active as u32 {
            return None;
        }
        i
    } else {
        rem(hash, svc.active as u32)
    };
    // SAFETY: copied out at once.
    let backend = *unsafe { BACKENDS.get(BackendKey { slot: svc.slot, index }) }?;
    if affinity {
        let _ = AFFINITY.insert(akey, AffinityValue { backend, pad: 0, last_ns: now() }, 0);
    }
    Some(backend)
}

/// `a % b` without the divide-by-zero panic path (eBPF objects must not contain one).
#[inline(always)]
fn rem(a: u32, b: u32) -> u32 {
    if b == 0 {
        0
    } else {
        a % b
    }
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Hook {
    Connect,
    Sendmsg,
}

#[inline(always)]
fn sock_forward(ctx: &SockAddrContext, hook: Hook) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the kernel's context; 4-byte loads of fields the verifier allows here.
    let (proto, addr, port) = unsafe {
        (
            core::ptr::read_volatile(&(*sa).protocol) as u8,
            core::ptr::read_volatile(&(*sa).user_ip4),
            core::ptr::read_volatile(&(*sa).user_port) as u16,
        )
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return 1;
    }
    let key = ServiceKey { addr, port, proto, pad: 0 };
    // SAFETY: copied out at once.
    let Some(svc) = (unsafe { SERVICES.get(key) }).copied() else {
        return 1;
    };
    if svc.active == 0 {
        // A service without ready endpoints refuses at once, as kube-proxy's REJECT rule does.
        // SAFETY: sets the syscall's return value; always valid in cgroup programs.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return 0;
    }
    // SAFETY: helpers valid for sock_addr programs.
    let (client, hash) = unsafe { (bpf_get_netns_cookie(ctx.as_ptr()), bpf_get_prandom_u32()) };
    let Some(backend) = select(&key, &svc, client, hash) else {
        return 1;
    };
    // SAFETY: user_ip4/user_port are writable in connect4 and sendmsg4 (4-byte stores).
    unsafe {
        core::ptr::write_volatile(&mut (*sa).user_ip4, backend.addr);
        core::ptr::write_volatile(&mut (*sa).user_port, backend.port as u32);
    }
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let rev = RevNat { addr, port, pad: 0 };
    if proto == PROTO_UDP {
        let ukey = UdpRevKey { cookie, addr: backend.addr, port: backend.port, pad: 0 };
        let _ = UDP_REVNAT.insert(ukey, rev, 0);
    }
    if hook == Hook::Connect {
        let _ = SOCK_REVNAT.insert(cookie, rev, 0);
    }
    1
}

#[cgroup_sock_addr(connect4)]
pub fn flotilla_connect4(ctx: SockAddrContext) -> i32 {
    sock_forward(&ctx, Hook::Connect)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn flotilla_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_forward(&ctx, Hook::Sendmsg)
}

/// UDP replies from a backend appear to come from the service address the socket sent to.
#[cgroup_sock_addr(recvmsg4)]
pub fn flotilla_recvmsg4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: kernel context; helper valid here.
    let (addr, port, cookie) = unsafe {
        (
            core::ptr::read_volatile(&(*sa).user_ip4),
            core::ptr::read_volatile(&(*sa).user_port) as u16,
            bpf_get_socket_cookie(ctx.as_ptr()),
        )
    };
    let key = UdpRevKey { cookie, addr, port, pad: 0 };
    // SAFETY: copied out at once.
    if let Some(rev) = unsafe { UDP_REVNAT.get(key) }.copied() {
        // SAFETY: user_ip4/user_port are writable in recvmsg4.
        unsafe {
            core::ptr::write_volatile(&mut (*sa).user_ip4, rev.addr);
            core::ptr::write_volatile(&mut (*sa).user_port, rev.port as u32);
        }
    }
    1
}

/// A connected socket's peer is the service address the application connected to.
#[cgroup_sock_addr(getpeername4)]
pub fn flotilla_getpeername4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out at once.
    if let Some(rev) = unsafe { SOCK_REVNAT.get(cookie) }.copied() {
        // SAFETY: user_ip4/user_port are writable in getpeername4.
        unsafe {
            core::ptr::write_volatile(&mut (*sa).user_ip4, rev.addr);
            core::ptr::write_volatile(&mut (*sa).user_port, rev.port as u32);
        }
    }
    1
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const AF_INET: u8 = 2;
const IP_CSUM: usize = 10;
const IP_SADDR: usize = 12;
const TCP_FLAGS: usize = 13;
const TCP_CSUM: usize = 16;
const UDP_CSUM: usize = 6;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

struct Packet {
    l3: usize,
    l4: usize,
    t: Tuple,
    /// TCP flags (0 for UDP).
    tcp: u8,
}

impl Packet {
    /// The first packet of a new TCP connection.
    fn syn(&self) -> bool {
        self.tcp & (TCP_SYN | TCP_ACK) == TCP_SYN
    }
}

/// A header at `offset` by direct packet access, bounds-checked for the verifier.
#[inline(always)]
fn at<T>(ctx: &TcContext, offset: usize) -> Option<*const T> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// `at` for writing: the packet bounds are loaded afresh (volatile), so the compiler cannot
/// reuse a check made on an earlier load of them, which the verifier does not connect to
/// the pointer written through.
#[inline(always)]
fn at_mut<T>(ctx: &TcContext, offset: usize) -> Option<*mut T> {
    let skb = ctx.skb.skb;
    // SAFETY: reads of the context's packet bounds.
    let (start, end) = unsafe {
        (
            core::ptr::read_volatile(&(*skb).data) as usize,
            core::ptr::read_volatile(&(*skb).data_end) as usize,
        )
    };
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

#[inline(always)]
fn parse(ctx: &TcContext, dir: u8) -> Option<Packet> {
    // Ethernet (14) + the largest IPv4 header (60) + the TCP fields used (14); headers that are
    // not in the linear area are pulled in first.
    if at::<[u8; 34]>(ctx, 0).is_none() {
        let _ = ctx.pull_data(34);
    }
    // SAFETY (all reads below): `at` checked the bounds against data_end.
    let proto = u16::from_be(unsafe { *at::<u16>(ctx, 12)? });
    if proto != ETH_P_IP {
        return None;
    }
    let l3 = ETH_HLEN;
    let vihl: u8 = unsafe { *at::<u8>(ctx, l3)? };
    if vihl >> 4 != 4 {
        return None;
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return None;
    }
    // Later fragments carry no ports; they are left to the stack.
    let frag = u16::from_be(unsafe { *at::<u16>(ctx, l3 + 6)? });
    if frag & 0x1fff != 0 {
        return None;
    }
    let l4proto: u8 = unsafe { *at::<u8>(ctx, l3 + 9)? };
    if l4proto != PROTO_TCP && l4proto != PROTO_UDP {
        return None;
    }
    let l4 = l3 + ihl;
    if at::<[u8; 14]>(ctx, l4).is_none() {
        let _ = ctx.pull_data((l4 + 14) as u32);
    }
    let addrs = unsafe { *at::<[u32; 2]>(ctx, l3 + IP_SADDR)? };
    let ports = unsafe { *at::<[u16; 2]>(ctx, l4)? };
    let tcp = if l4proto == PROTO_TCP { unsafe { *at::<u8>(ctx, l4 + TCP_FLAGS)? } } else { 0 };
    let t = Tuple {
        saddr: addrs[0],
        daddr: addrs[1],
        sport: ports[0],
        dport: ports[1],
        proto: l4proto,
        dir,
        pad: 0,
    };
    Some(Packet { l3, l4, t, tcp })
}

/// Rewrites addresses and ports to `to`, fixing the IPv4 and L4 checksums incrementally.
#[inline(always)]
fn rewrite(ctx: &mut TcContext, p: &Packet, to: &NatValue) -> Result<(), i64> {
    let (csum, mangled) = if p.t.proto == PROTO_TCP {
        (p.l4 + TCP_CSUM, 0)
    } else {
        (p.l4 + UDP_CSUM, BPF_F_MARK_MANGLED_0 as u64)
    };
    let pseudo = BPF_F_PSEUDO_HDR as u64 | mangled;
    // The fields are written by direct packet access, all before the checksum helpers (which
    // invalidate packet pointers): a store helper per field cost more than the rest of the
    // rewrite. The helpers, one per changed field, keep CHECKSUM_PARTIAL and
    // CHECKSUM_COMPLETE packets right.
    let addrs = at_mut::<[u32; 2]>(ctx, p.l3 + IP_SADDR).ok_or(-1i64)?;
    // SAFETY: `at_mut` checked it against data_end; tc programs may write packet data.
    unsafe { *addrs = [to.saddr, to.daddr] };
    let ports = at_mut::<[u16; 2]>(ctx, p.l4).ok_or(-1i64)?;
    // SAFETY: as above.
    unsafe { *ports = [to.sport, to.dport] };
    if to.saddr != p.t.saddr {
        ctx.l4_csum_replace(csum, p.t.saddr as u64, to.saddr as u64, pseudo | 4)?;
        ctx.l3_csum_replace(p.l3 + IP_CSUM, p.t.saddr as u64, to.saddr as u64, 4)?;
    }
    if to.daddr != p.t.daddr {
        ctx.l4_csum_replace(csum, p.t.daddr as u64, to.daddr as u64, pseudo | 4)?;
        ctx.l3_csum_replace(p.l3 + IP_CSUM, p.t.daddr as u64, to.daddr as u64, 4)?;
    }
    if to.sport != p.t.sport {
        ctx.l4_csum_replace(csum, p.t.sport as u64, to.sport as u64, mangled | 2)?;
    }
    if to.dport != p.t.dport {
        ctx.l4_csum_replace(csum, p.t.dport as u64, to.dport as u64, mangled | 2)?;
    }
    Ok(())
}

/// Whether a flow's entry may be taken over by a new flow.
#[inline(always)]
fn reusable(e: &NatValue, proto: u8, now: u64) -> bool {
    let idle = now.saturating_sub(e.last_ns);
    if e.flags & NAT_CLOSING != 0 {
        return idle > NAT_CLOSED_GRACE_NS;
    }
    idle > if proto == PROTO_TCP { NAT_IDLE_TCP_NS } else { NAT_IDLE_UDP_NS }
}

/// Marks both directions of a flow closing (a FIN or RST may only ever cross one of them).
#[inline(always)]
fn mark_closing(e: &mut NatValue, t: &Tuple) {
    e.flags |= NAT_CLOSING;
    for dir in [DIR_INGRESS, DIR_EGRESS] {
        let back = Tuple {
            saddr: e.daddr,
            daddr: e.saddr,
            sport: e.dport,
            dport: e.sport,
            proto: t.proto,
            dir,
            pad: 0,
        };
        if let Some(r) = NAT.get_ptr_mut(back) {
            // SAFETY: a pointer into the map's value, valid for this program run.
            unsafe { (*r).flags |= NAT_CLOSING };
        }
    }
}

enum Flow {
    /// A tracked flow: rewrite to this.
    Hit(NatValue),
    /// A SYN on a closed flow's tuple (the client reused its port): a new flow, whose entry is
    /// rewritten in place (no LRU allocation), as conntrack reopens a TIME_WAIT entry.
    Reopen(*mut NatValue),
    Miss,
}

/// Looks up the packet's flow and keeps its state (closing, last seen).
#[inline(always)]
fn tracked(p: &Packet, now: u64) -> Flow {
    let Some(e) = NAT.get_ptr_mut(p.t) else { return Flow::Miss };
    // SAFETY: a pointer into the map's value, valid for this program run.
    let v = unsafe { &mut *e };
    if p.syn() && v.flags & NAT_CLOSING != 0 {
        return Flow::Reopen(e);
    }
    if p.tcp & (TCP_FIN | TCP_RST) != 0 && v.flags & NAT_CLOSING == 0 {
        mark_closing(v, &p.t);
    }
    if now.saturating_sub(v.last_ns) > 1_000_000_000 {
        v.last_ns = now;
    }
    Flow::Hit(*v)
}

/// Stores a new flow's forward entry: in place over a reopened one, else a new entry.
#[inline(always)]
fn store_flow(key: &Tuple, fwd: &NatValue, reopen: Option<*mut NatValue>) -> bool {
    match reopen {
        Some(e) => {
            // SAFETY: a pointer into the map's value, valid for this program run.
            unsafe { *e = *fwd };
            true
        }
        None => NAT.insert(key, fwd, 0).is_ok(),
    }
}

/// Allocates a source port on the node address for a SNATed flow to `peer:peer_port` by
/// claiming its reverse entry; `BPF_NOEXIST` makes a collision visible instead of overwriting,
/// and a closed or long idle flow's entry is taken over.
#[inline(always)]
fn snat_port(
    cfg: &Config,
    peer: u32,
    peer_port: u16,
    proto: u8,
    rev: &NatValue,
    now: u64,
) -> Option<u16> {
    let span = (cfg.snat_port_max as u32).saturating_sub(cfg.snat_port_min as u32) + 1;
    // Enough tries that a busy node (a third of its ports in their closed-flow grace) almost
    // never fails: 0.33^32.
    for _ in 0..32 {
        // SAFETY: helper valid in tc programs.
        let port = (cfg.snat_port_min as u32 + rem(unsafe { bpf_get_prandom_u32() }, span)) as u16;
        let key = Tuple {
            saddr: peer,
            daddr: cfg.node_addr,
            sport: peer_port,
            dport: port.to_be(),
            proto,
            dir: DIR_INGRESS,
            pad: 0,
        };
        if NAT.insert(key, rev, BPF_NOEXIST as u64).is_ok() {
            return Some(port.to_be());
        }
        // Taken: reuse it in place if its flow is over (no LRU allocation).
        if let Some(old) = NAT.get_ptr_mut(key) {
            // SAFETY: a pointer into the map's value, valid for this program run.
            let old = unsafe { &mut *old };
            if reusable(old, proto, now) {
                *old = *rev;
                return Some(port.to_be());
            }
        }
    }
    None
}

#[inline(always)]
fn flow_hash(t: &Tuple) -> u32 {
    // murmur3's finaliser over the client side of the tuple: cheap and well mixed.
    let mut h =
        t.saddr ^ ((t.sport as u32) << 16 | t.dport as u32).rotate_left(13) ^ t.proto as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
fn in_net(addr: u32, net: u32, mask: u32) -> bool {
    mask != 0 && addr & mask == net
}

/// NodePort ingress: translate tracked flows; start new ones to a NodePort on the node address.
#[classifier]
pub fn flotilla_ingress(mut ctx: TcContext) -> i32 {
    let Some(p) = parse(&ctx, DIR_INGRESS) else {
        return TC_ACT_OK;
    };
    let Some(cfg) = CONFIG.get(0).copied() else {
        return TC_ACT_OK;
    };
    let now = now();
    let reopen = match tracked(&p, now) {
        Flow::Hit(to) => return finish_ingress(&mut ctx, &p, &to, &cfg),
        Flow::Reopen(e) => Some(e),
        Flow::Miss => None,
    };
    if in_net(p.t.daddr, cfg.local_pods, cfg.local_pods_mask) {
        if reopen.is_some() {
            let _ = NAT.remove(p.t);
        }
        remember_inbound(&p.t, &cfg, now);
        return TC_ACT_OK;
    }
    if p.t.daddr != cfg.node_addr || cfg.node_addr == 0 {
        if reopen.is_some() {
            let _ = NAT.remove(p.t);
        }
        return TC_ACT_OK;
    }
    // Only a connection's first packet picks a backend; a stray mid-flow TCP segment for an
    // unknown flow is left to the stack (which resets it).
    if p.t.proto == PROTO_TCP && !p.syn() {
        return TC_ACT_OK;
    }
    let key = ServiceKey { addr: 0, port: p.t.dport, proto: p.t.proto, pad: 0 };
    // SAFETY: copied out at once.
    let svc = unsafe { SERVICES.get(key) }.copied();
    let Some(svc) = svc.filter(|s| s.active != 0) else {
        if reopen.is_some() {
            let _ = NAT.remove(p.t);
        }
        // No service, or no endpoints: the stack has no socket on the port and refuses at
        // once (TCP RST, ICMP port unreachable), as kube-proxy's REJECT rule does.
        return TC_ACT_OK;
    };
    let hash = if svc.flags & SVC_MAGLEV != 0 {
        flow_hash(&p.t)
    } else {
        // SAFETY: helper valid in tc programs.
        unsafe { bpf_get_prandom_u32() }
    };
    let Some(be) = select(&key, &svc, p.t.saddr as u64, hash) else {
        return TC_ACT_SHOT;
    };
    let rev = NatValue::new(p.t.daddr, p.t.saddr, p.t.dport, p.t.sport, now);
    let fwd = if in_net(be.addr, cfg.local_pods, cfg.local_pods_mask) {
        // Local backend: DNAT only; the reply leaves through this interface's egress.
        let back = Tuple {
            saddr: be.addr,
            daddr: p.t.saddr,
            sport: be.port,
            dport: p.t.sport,
            proto: p.t.proto,
            dir: DIR_EGRESS,
            pad: 0,
        };
        match NAT.get_ptr_mut(back) {
            // SAFETY: a pointer into the map's value, valid for this program run.
            Some(e) => unsafe { *e = rev },
            None if NAT.insert(back, rev, 0).is_err() => return TC_ACT_SHOT,
            None => {}
        }
        NatValue::new(p.t.saddr, be.addr, p.t.sport, be.port, now)
    } else {
        // Remote backend: also SNAT to the node so the reply returns through this node.
        let Some(port) = snat_port(&cfg, be.addr, be.port, p.t.proto, &rev, now) else {
            return TC_ACT_SHOT;
        };
        NatValue::new(cfg.node_addr, be.addr, port, be.port, now)
    };
    if !store_flow(&p.t, &fwd, reopen) {
        return TC_ACT_SHOT;
    }
    finish_ingress(&mut ctx, &p, &fwd, &cfg)
}

/// A flow that a client outside the cluster opened to a local pod (e.g. a NodePort flow SNATed
/// by another node): its replies must leave unchanged, not be masqueraded like traffic the pod
/// starts. An identity entry for the reply direction makes egress leave them alone.
#[inline(always)]
fn remember_inbound(t: &Tuple, cfg: &Config, now: u64) {
    if cfg.flags & CONFIG_MASQUERADE == 0
        || in_net(t.saddr, cfg.cluster_pods, cfg.cluster_pods_mask)
    {
        return;
    }
    let back = Tuple {
        saddr: t.daddr,
        daddr: t.saddr,
        sport: t.dport,
        dport: t.sport,
        proto: t.proto,
        dir: DIR_EGRESS,
        pad: 0,
    };
    if NAT.get_ptr(back).is_none() {
        let same = NatValue::new(back.saddr, back.daddr, back.sport, back.dport, now);
        let _ = NAT.insert(back, same, 0);
    }
}

/// Rewrites an ingress packet. One that now comes from the node's own address (SNAT towards a
/// remote backend, or a reply being returned to an outside client) would be dropped by the
/// stack as a martian source, so it is sent out directly: `bpf_redirect_neigh` routes it and
/// resolves the next hop's MAC.
#[inline(always)]
fn finish_ingress(ctx: &mut TcContext, p: &Packet, to: &NatValue, cfg: &Config) -> i32 {
    if rewrite(ctx, p, to).is_err() {
        return TC_ACT_SHOT;
    }
    if to.saddr == cfg.node_addr {
        return redirect_out(ctx, to);
    }
    TC_ACT_OK
}

/// Sends a rewritten packet out of the interface it came in on, to the next hop the routing
/// table names for it. A FIB lookup (no neighbour check) finds the next hop and the neighbour
/// code resolves it as the stack would; that skips the per-packet output route (and dst)
/// that `bpf_redirect_neigh` without a next hop builds. Kernels without
/// `BPF_FIB_LOOKUP_SKIP_NEIGH` (before 6.5), or a route elsewhere, take that slower way.
#[inline(always)]
fn redirect_out(ctx: &mut TcContext, to: &NatValue) -> i32 {
    // SAFETY: reading the context's ifindex.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain data, all-zero is a valid value.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.ifindex = ifindex;
    fib.__bindgen_anon_3.ipv4_src = to.saddr;
    fib.__bindgen_anon_4.ipv4_dst = to.daddr;
    let flags = BPF_FIB_LOOKUP_OUTPUT | BPF_FIB_LOOKUP_SKIP_NEIGH;
    // SAFETY: the helper reads and writes `fib`, which lives for the call.
    let rc = unsafe {
        fib_lookup(ctx.as_ptr(), &mut fib, core::mem::size_of::<bpf_fib_lookup>() as i32, flags)
    };
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 && fib.ifindex == ifindex {
        // SAFETY: plain data, all-zero is a valid value.
        let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
        nh.nh_family = AF_INET as u32;
        // The lookup left the gateway (or the destination, if on-link) in ipv4_dst.
        // SAFETY: an IPv4 lookup fills the IPv4 member.
        nh.__bindgen_anon_1.ipv4_nh = unsafe { fib.__bindgen_anon_4.ipv4_dst };
        // SAFETY: `nh` lives for the call.
        return unsafe {
            bpf_redirect_neigh(ifindex, &mut nh, core::mem::size_of::<bpf_redir_neigh>() as i32, 0)
        } as i32;
    }
    // SAFETY: the helper is valid at tc with NULL params.
    unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

/// Egress: reverse translation of NodePort replies from local backends, and SNAT of pod
/// traffic to outside the cluster to the node address.
#[classifier]
pub fn flotilla_egress(mut ctx: TcContext) -> i32 {
    let Some(p) = parse(&ctx, DIR_EGRESS) else {
        return TC_ACT_OK;
    };
    let Some(cfg) = CONFIG.get(0).copied() else {
        return TC_ACT_OK;
    };
    // Every egress entry is for a flow from a local pod (a local backend's replies, pod SNAT,
    // inbound flows to pods), so anything else (e.g. NodePort traffic this node forwards
    // elsewhere) leaves without a lookup.
    if !in_net(p.t.saddr, cfg.local_pods, cfg.local_pods_mask) {
        return TC_ACT_OK;
    }
    let now = now();
    let reopen = match tracked(&p, now) {
        Flow::Hit(to) => {
            return match rewrite(&mut ctx, &p, &to) {
                Ok(()) => TC_ACT_OK,
                Err(_) => TC_ACT_SHOT,
            }
        }
        Flow::Reopen(e) => Some(e),
        Flow::Miss => None,
    };
    if cfg.flags & CONFIG_MASQUERADE == 0
        || cfg.node_addr == 0
        || in_net(p.t.daddr, cfg.cluster_pods, cfg.cluster_pods_mask)
        || in_net(p.t.daddr, cfg.services, cfg.services_mask)
    {
        if reopen.is_some() {
            let _ = NAT.remove(p.t);
        }
        return TC_ACT_OK;
    }
    let rev = NatValue::new(p.t.daddr, p.t.saddr, p.t.dport, p.t.sport, now);
    let Some(port) = snat_port(&cfg, p.t.daddr, p.t.dport, p.t.proto, &rev, now) else {
        return TC_ACT_SHOT;
    };
    let fwd = NatValue::new(cfg.node_addr, p.t.daddr, port, p.t.dport, now);
    if !store_flow(&p.t, &fwd, reopen) {
        return TC_ACT_SHOT;
    }
    match rewrite(&mut ctx, &p, &fwd) {
        Ok(()) => TC_ACT_OK,
        Err(_) => TC_ACT_SHOT,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
