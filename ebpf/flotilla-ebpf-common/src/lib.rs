//! Map key and value layouts shared by the eBPF programs (`no_std`) and the dataplane loader.
//!
//! Addresses and ports are kept in network byte order, exactly as the kernel hands them to the
//! programs, so the hot path never swaps bytes. Every type is `repr(C)` with explicit padding:
//! the kernel hashes keys bytewise, so padding must be zeroed, never left undefined.
#![no_std]

/// IANA protocol numbers, as in `bpf_sock_addr.protocol` and the IPv4 header.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Backends one service may have (active + terminating); bounds the eBPF selection loop.
pub const MAX_BACKENDS_PER_SERVICE: u32 = 1024;
/// Entries of the Maglev lookup table, well above the backend count (Maglev §3.4). A power of
/// two (with odd skips, which are coprime with it) instead of the paper's prime: the program
/// indexes with a mask the verifier can bound, where a modulo compiles to multiplications.
pub const MAGLEV_SIZE: usize = 4096;

/// Map capacities; userspace rejects what would not fit instead of leaving a map half-written.
pub const SERVICES_MAX: u32 = 65_536;
pub const BACKENDS_MAX: u32 = 262_144;
pub const MAGLEV_MAX: u32 = 2_048;
pub const SOCK_REVNAT_MAX: u32 = 262_144;
pub const NAT_MAX: u32 = 262_144;
pub const AFFINITY_MAX: u32 = 65_536;

/// `ServiceValue.flags`.
pub const SVC_AFFINITY: u16 = 1;
pub const SVC_MAGLEV: u16 = 2;

/// Service lookup key: a ClusterIP (`addr` = VIP) or a NodePort (`addr` = 0, matched for the
/// node's address on the tc path).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKey {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub pad: u8,
}

/// A service's current backend set: `slot` names the generation of `BACKENDS` entries; the first
/// `active` are eligible for new connections, the rest up to `total` are terminating.
/// Replacing this one value is what makes a backend-set update atomic.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    pub slot: u32,
    pub active: u16,
    pub total: u16,
    pub flags: u16,
    pub pad: u16,
    /// Session affinity timeout in seconds (ClientIP).
    pub affinity_timeout: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct BackendKey {
    pub slot: u32,
    pub index: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Backend {
    pub addr: u32,
    pub port: u16,
    pub pad: u16,
}

/// A service's membership of one backend, so affinity entries can be checked for staleness.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MemberKey {
    pub service: ServiceKey,
    pub backend: Backend,
}

/// Reverse translation for one socket: the address the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RevNat {
    pub addr: u32,
    pub port: u16,
    pub pad: u16,
}

/// Reverse translation of UDP datagrams: (socket, backend) → service address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct UdpRevKey {
    pub cookie: u64,
    pub addr: u32,
    pub port: u16,
    pub pad: u16,
}

/// Session affinity: client (netns cookie on the socket path, IPv4 address on the tc path).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AffinityKey {
    pub service: ServiceKey,
    pub client: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityValue {
    pub backend: Backend,
    pub pad: u32,
    /// `bpf_ktime_get_coarse_ns` of the last use.
    pub last_ns: u64,
}

/// `Tuple.dir`.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// A packet's 5-tuple as seen at one hook (tc ingress or egress of the external interface).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Tuple {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
    pub pad: u16,
}

/// What to rewrite a tracked packet's addresses to, and the flow's state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatValue {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// `NAT_CLOSING` once a FIN or RST went through.
    pub flags: u16,
    pub pad: u16,
    /// `bpf_ktime_get_coarse_ns` of the last packet (refreshed at most once a second).
    pub last_ns: u64,
}

impl NatValue {
    pub const fn new(saddr: u32, daddr: u32, sport: u16, dport: u16, now: u64) -> NatValue {
        NatValue { saddr, daddr, sport, dport, flags: 0, pad: 0, last_ns: now }
    }
}

pub const NAT_CLOSING: u16 = 1;
/// A closed TCP flow's entries may be reused this long after its last packet.
pub const NAT_CLOSED_GRACE_NS: u64 = 2_000_000_000;
/// Idle flows' entries may be reused after this long (UDP, and TCP that never closed).
pub const NAT_IDLE_UDP_NS: u64 = 60_000_000_000;
pub const NAT_IDLE_TCP_NS: u64 = 3_600_000_000_000;

/// Node-wide settings for the tc programs (index 0 of `CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// The node's address on its external interface.
    pub node_addr: u32,
    /// This node's pod CIDR (network, mask), e.g. 10.244.1.0/24.
    pub local_pods: u32,
    pub local_pods_mask: u32,
    /// The whole cluster's pod range and service range: not SNATed on egress.
    pub cluster_pods: u32,
    pub cluster_pods_mask: u32,
    pub services: u32,
    pub services_mask: u32,
    /// Host-order port range for SNAT (NodePort to remote backends, pod egress).
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// Bit 0: SNAT pod egress to outside the cluster to `node_addr`.
    pub flags: u32,
}

pub const CONFIG_MASQUERADE: u32 = 1;

#[cfg(feature = "user")]
mod user {
    use super::*;
    macro_rules! pod {
        ($($t:ty),*) => {
            $(
                // SAFETY: a repr(C) struct of integers with explicit padding fields: valid for
                // any bit pattern, no implicit padding.
                unsafe impl aya::Pod for $t {}
            )*
        };
    }
    pod!(
        DeviceRule,
        DeviceRules,
        ServiceKey,
        ServiceValue,
        BackendKey,
        Backend,
        MemberKey,
        RevNat,
        UdpRevKey,
        AffinityKey,
        AffinityValue,
        Tuple,
        NatValue,
        Config
    );
}

/// Device rules one container's cgroup v2 device program holds (runc and crun generate one
/// instruction block per rule; ours reads a table, so its size is bounded here).
pub const MAX_DEVICE_RULES: usize = 128;

/// `DeviceRule.kind`: which devices a rule covers (the kernel's `BPF_DEVCG_DEV_*`; 0 = all).
pub const DEV_ALL: u8 = 0;
pub const DEV_BLOCK: u8 = 1;
pub const DEV_CHAR: u8 = 2;
/// `DeviceRule.access` bits (the kernel's `BPF_DEVCG_ACC_*`).
pub const ACC_MKNOD: u8 = 1;
pub const ACC_READ: u8 = 2;
pub const ACC_WRITE: u8 = 4;
/// `DeviceRule.flags`: any major, any minor.
pub const ANY_MAJOR: u8 = 1;
pub const ANY_MINOR: u8 = 2;

/// One OCI `linux.resources.devices` entry, as the cgroup v2 device program reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DeviceRule {
    pub major: u32,
    pub minor: u32,
    pub kind: u8,
    pub access: u8,
    pub allow: u8,
    pub flags: u8,
}

/// The program's table: the rules in spec order; the last one that matches decides.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceRules {
    pub count: u32,
    pub rules: [DeviceRule; MAX_DEVICE_RULES],
}

impl Default for DeviceRules {
    fn default() -> Self {
        Self { count: 0, rules: [DeviceRule::default(); MAX_DEVICE_RULES] }
    }
}
