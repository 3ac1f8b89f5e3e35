//! Pod networking (bridge, veth, routes, IPAM) and the loader for the eBPF service load balancer.
//! Knows services as (VIP, port, proto) → backends. (Filled in by the dataplane work.)
