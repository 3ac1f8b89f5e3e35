//! The dataplane's view of a service: addresses, ports and backends, already resolved from
//! Service and Endpoints objects by the caller. Validation happens here, before any map is touched.

use std::{collections::HashSet, fmt, net::Ipv4Addr};

use flotilla_ebpf_common::{MAX_BACKENDS_PER_SERVICE, PROTO_TCP, PROTO_UDP};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = ServiceError;
    fn from_str(s: &str) -> Result<Self, ServiceError> {
        match s {
            "TCP" | "tcp" => Ok(Protocol::Tcp),
            "UDP" | "udp" => Ok(Protocol::Udp),
            other => Err(ServiceError::new(
                "protocol",
                format!("unsupported protocol {other:?}: supported values: \"TCP\", \"UDP\""),
            )),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// How the tc path picks a backend for a new flow (the socket path always picks at random).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Selection {
    #[default]
    Random,
    /// Consistent hashing of the flow: every node picks the same backend for a flow, and a
    /// backend change moves few flows.
    Maglev,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    pub addr: Ipv4Addr,
    pub port: u16,
    /// Terminating backends keep their established flows but get no new ones.
    pub terminating: bool,
}

impl Backend {
    pub fn new(addr: Ipv4Addr, port: u16) -> Backend {
        Backend { addr, port, terminating: false }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
    pub backends: Vec<Backend>,
}

/// A service as the dataplane programs it: one ClusterIP, its ports, and each port's backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// `namespace/name`, for errors and logs.
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub ports: Vec<ServicePort>,
    /// ClientIP session affinity with this timeout in seconds.
    pub affinity_timeout: Option<u32>,
    pub selection: Selection,
}

/// Invalid service input: names the service and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service {service}: {field}: {message}")]
pub struct ServiceError {
    pub service: String,
    pub field: String,
    pub message: String,
}

impl ServiceError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> ServiceError {
        ServiceError { service: String::new(), field: field.into(), message: message.into() }
    }
}

fn bad_addr(a: Ipv4Addr) -> Option<&'static str> {
    if a.is_unspecified() {
        Some("must not be 0.0.0.0")
    } else if a.is_broadcast() {
        Some("must not be the broadcast address")
    } else if a.is_multicast() {
        Some("must not be a multicast address")
    } else if a.is_loopback() {
        Some("must not be a loopback address")
    } else {
        None
    }
}

impl Service {
    /// Checks everything the maps need, so a bad service is refused before anything is written.
    pub fn validate(&self) -> Result<(), ServiceError> {
        let err = |field: String, message: String| ServiceError {
            service: self.name.clone(),
            field,
            message,
        };
        if let Some(why) = bad_addr(self.cluster_ip) {
            return Err(err("clusterIP".into(), format!("{}: {why}", self.cluster_ip)));
        }
        if self.ports.is_empty() {
            return Err(err("ports".into(), "at least one port is required".into()));
        }
        if self.affinity_timeout == Some(0) {
            return Err(err(
                "sessionAffinityConfig.clientIP.timeoutSeconds".into(),
                "must be > 0".into(),
            ));
        }
        let mut seen = HashSet::new();
        let mut node_ports = HashSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            let f = |name: &str| format!("ports[{i}].{name}");
            if p.port == 0 {
                return Err(err(f("port"), "must be between 1 and 65535".into()));
            }
            if !seen.insert((p.port, p.protocol)) {
                return Err(err(f("port"), format!("duplicate {}/{}", p.port, p.protocol)));
            }
            if let Some(np) = p.node_port {
                if np == 0 {
                    return Err(err(f("nodePort"), "must be between 1 and 65535".into()));
                }
                if !node_ports.insert((np, p.protocol)) {
                    return Err(err(f("nodePort"), format!("duplicate {np}/{}", p.protocol)));
                }
            }
            if p.backends.len() > MAX_BACKENDS_PER_SERVICE as usize {
                return Err(err(
                    f("backends"),
                    format!(
                        "{} backends, more than the {} one service port can have",
                        p.backends.len(),
                        MAX_BACKENDS_PER_SERVICE
                    ),
                ));
            }
            let mut uniq = HashSet::new();
            for (j, b) in p.backends.iter().enumerate() {
                if let Some(why) = bad_addr(b.addr) {
                    return Err(err(
                        format!("{}[{j}].ip", f("backends")),
                        format!("{}: {why}", b.addr),
                    ));
                }
                if b.port == 0 {
                    return Err(err(
                        format!("{}[{j}].port", f("backends")),
                        "must be between 1 and 65535".into(),
                    ));
                }
                if !uniq.insert((b.addr, b.port)) {
                    return Err(err(
                        format!("{}[{j}]", f("backends")),
                        format!("duplicate backend {}:{}", b.addr, b.port),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Builds a ServiceError naming this service (for parse errors the caller detects).
    pub fn error(&self, field: &str, message: impl Into<String>) -> ServiceError {
        ServiceError { service: self.name.clone(), field: field.into(), message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> Service {
        Service {
            name: "default/web".into(),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: Some(30080),
                backends: vec![Backend::new(Ipv4Addr::new(10, 244, 0, 2), 8080)],
            }],
            affinity_timeout: None,
            selection: Selection::Random,
        }
    }

    #[test]
    fn valid_and_invalid() {
        svc().validate().unwrap();
        let mut s = svc();
        s.cluster_ip = Ipv4Addr::UNSPECIFIED;
        assert_eq!(s.validate().unwrap_err().field, "clusterIP");
        let mut s = svc();
        s.ports[0].port = 0;
        let e = s.validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "service default/web: ports[0].port: must be between 1 and 65535"
        );
        let mut s = svc();
        s.ports[0].backends[0].port = 0;
        assert_eq!(s.validate().unwrap_err().field, "ports[0].backends[0].port");
        let mut s = svc();
        s.ports[0].backends = (0..=MAX_BACKENDS_PER_SERVICE)
            .map(|i| Backend::new(Ipv4Addr::from(0x0af4_0000 + i), 80))
            .collect();
        assert!(s.validate().unwrap_err().message.contains("more than"));
        let mut s = svc();
        s.ports.push(s.ports[0].clone());
        assert!(s.validate().unwrap_err().message.contains("duplicate"));
        assert_eq!("SCTP".parse::<Protocol>().unwrap_err().field, "protocol");
    }
}
