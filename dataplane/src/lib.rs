//! Flotilla's dataplane: pod networking and eBPF service load balancing.
//!
//! - [`net::NodeNetwork`]: a node's bridge, pods' namespaces and veths, IPAM, host-gw routes and
//!   the `unreachable` fences for the cluster ranges, all through rtnetlink.
//! - [`lb::LoadBalancer`]: the eBPF programs (socket-level translation in the node's cgroup
//!   subtree, NodePort/SNAT in tc on the external interface), their pinned maps and links, and
//!   services programmed as (VIP, port, protocol) → backends.
//!
//! The library is generic: callers hand it pod network requests and a table of services. The
//! node agent wires it to the API.

pub mod ipam;
pub mod lb;
pub mod maglev;
pub mod net;
pub mod netns;
pub mod service;
pub mod sockdiag;

pub use lb::{External, LbConfig, LbError, LoadBalancer};
pub use net::{NodeConfig, NodeNetwork, PodNetwork};
pub use netns::NetNs;
pub use service::{Backend, Protocol, Selection, Service, ServiceError, ServicePort};
