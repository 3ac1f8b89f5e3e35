//! Cluster DNS, served by every agent for its own pods (the kube-dns/CoreDNS `kubernetes`
//! plugin's records, after the Kubernetes DNS specification), with hickory-server.
//!
//! ```text
//!  pod ─► 10.96.0.10:53 (kube-system/kube-dns) ─socket LB─► <node gateway>:53 ─► ClusterDns
//!                     names under <domain>: answered from the Services and Endpoints informers
//!                     other names: forwarded to the node's own resolvers
//! ```
//! Records: `<svc>.<ns>.svc.<domain>` A (the ClusterIP, or a headless service's ready
//! addresses), `<host>.<svc>.<ns>.svc.<domain>` A for headless endpoints, SRV
//! `_<port>._<proto>.<svc>.<ns>.svc.<domain>` for named ports, CNAME for ExternalName, and
//! `<a-b-c-d>.<ns>.pod.<domain>` A; PTR `<d.c.b.a>.in-addr.arpa` for ClusterIPs and headless
//! endpoints (other reverse names go upstream, CoreDNS's `fallthrough`). Unknown names are
//! NXDOMAIN with the zone's SOA.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::proto::op::{Edns, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, CNAME, PTR, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::forwarder::ForwardZoneHandler;
use hickory_server::zone_handler::{Catalog, MessageResponseBuilder};
use serde_json::Value;

/// CoreDNS's `kubernetes` plugin default: records change as pods come and go.
const TTL: u32 = 5;

#[derive(Default, Debug, Clone, PartialEq)]
struct Entry {
    a: Vec<Ipv4Addr>,
    /// (port, target)
    srv: Vec<(u16, String)>,
    cname: Option<String>,
}

/// The cluster's names at one moment; rebuilt whole on every Service or Endpoints change.
#[derive(Debug)]
pub struct Zone {
    /// `cluster.local.`
    domain: String,
    names: HashMap<String, Entry>,
    /// Ancestors of the names under the domain: empty non-terminals (`svc.<domain>`,
    /// `<ns>.svc.<domain>`) exist without records. Kept so a query never scans every name.
    parents: std::collections::HashSet<String>,
    /// `d.c.b.a.in-addr.arpa.` → the names with that address.
    ptr: HashMap<String, Vec<String>>,
}

fn reverse(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("{d}.{c}.{b}.{a}.in-addr.arpa.")
}

fn fqdn(s: &str) -> String {
    let s = s.to_ascii_lowercase();
    if s.ends_with('.') {
        s
    } else {
        format!("{s}.")
    }
}

fn dashed(ip: &str) -> String {
    ip.replace('.', "-")
}

impl Zone {
    pub fn build(
        domain: &str,
        services: &[Arc<Value>],
        endpoints: impl Fn(&str) -> Option<Arc<Value>>,
    ) -> Zone {
        let domain = fqdn(domain);
        let mut names: HashMap<String, Entry> = HashMap::new();
        let mut ptr: HashMap<String, Vec<String>> = HashMap::new();
        for svc in services {
            let (Some(name), Some(ns)) =
                (svc["metadata"]["name"].as_str(), svc["metadata"]["namespace"].as_str())
            else {
                continue;
            };
            let base = format!("{name}.{ns}.svc.{domain}");
            let spec = &svc["spec"];
            if spec["type"] == "ExternalName" {
                if let Some(target) = spec["externalName"].as_str() {
                    names.entry(base).or_default().cname = Some(fqdn(target));
                }
                continue;
            }
            let ports: Vec<(String, String, u16)> = spec["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    let name = p["name"].as_str().filter(|n| !n.is_empty())?;
                    let proto = p["protocol"].as_str().unwrap_or("TCP").to_ascii_lowercase();
                    Some((name.to_string(), proto, p["port"].as_u64()? as u16))
                })
                .collect();
            match spec["clusterIP"].as_str() {
                Some("None") => {
                    let ep = endpoints(&format!("{ns}/{name}"));
                    let publish_not_ready = spec["publishNotReadyAddresses"] == true;
                    for subset in
                        ep.iter().flat_map(|e| e["subsets"].as_array().into_iter().flatten())
                    {
                        let mut addrs: Vec<&Value> =
                            subset["addresses"].as_array().into_iter().flatten().collect();
                        if publish_not_ready {
                            addrs.extend(
                                subset["notReadyAddresses"].as_array().into_iter().flatten(),
                            );
                        }
                        for a in addrs {
                            let Some(ip) = a["ip"].as_str() else { continue };
                            let Ok(addr) = ip.parse::<Ipv4Addr>() else { continue };
                            let host = a["hostname"]
                                .as_str()
                                .map(String::from)
                                .unwrap_or_else(|| dashed(ip));
                            let own = format!("{}.{base}", host.to_ascii_lowercase());
                            names.entry(base.clone()).or_default().a.push(addr);
                            names.entry(own.clone()).or_default().a.push(addr);
                            ptr.entry(reverse(addr)).or_default().push(own.clone());
                            for p in subset["ports"].as_array().into_iter().flatten() {
                                let (Some(pn), Some(port)) =
                                    (p["name"].as_str(), p["port"].as_u64())
                                else {
                                    continue;
                                };
                                if pn.is_empty() {
                                    continue;
                                }
                                let proto =
                                    p["protocol"].as_str().unwrap_or("TCP").to_ascii_lowercase();
                                names
                                    .entry(format!("_{pn}._{proto}.{base}"))
                                    .or_default()
                                    .srv
                                    .push((port as u16, own.clone()));
                            }
                        }
                    }
                    // A headless service with no ready endpoints still exists: NODATA.
                    names.entry(base).or_default();
                }
                Some(ip) => {
                    let Ok(ip) = ip.parse::<Ipv4Addr>() else { continue };
                    names.entry(base.clone()).or_default().a.push(ip);
                    ptr.entry(reverse(ip)).or_default().push(base.clone());
                    for (pn, proto, port) in ports {
                        names
                            .entry(format!("_{pn}._{proto}.{base}"))
                            .or_default()
                            .srv
                            .push((port, base.clone()));
                    }
                }
                None => {}
            }
        }
        for e in names.values_mut() {
            e.a.sort();
            e.a.dedup();
            e.srv.sort();
            e.srv.dedup();
        }
        for targets in ptr.values_mut() {
            targets.sort();
            targets.dedup();
        }
        let mut parents = std::collections::HashSet::new();
        for n in names.keys() {
            let mut rest = n.as_str();
            while let Some((_, up)) = rest.split_once('.') {
                if up.len() <= domain.len() {
                    break;
                }
                parents.insert(up.to_string());
                rest = up;
            }
        }
        Zone { domain, names, parents, ptr }
    }

    /// Whether the zone answers for `name`: names under the domain, and the reverse names of
    /// the addresses it knows.
    fn contains(&self, name: &str) -> bool {
        name == self.domain
            || name.ends_with(&format!(".{}", self.domain))
            || self.ptr.contains_key(name)
    }

    /// A pod record: `<a-b-c-d>.<ns>.pod.<domain>` (kube-dns's "insecure" pods mode: the
    /// address is the name).
    fn pod(&self, name: &str) -> Option<Ipv4Addr> {
        let rest = name.strip_suffix(&format!(".pod.{}", self.domain))?;
        let (ip, _ns) = rest.split_once('.')?;
        ip.replace('-', ".").parse().ok()
    }

    fn exists(&self, name: &str) -> bool {
        self.names.contains_key(name)
            || self.parents.contains(name)
            || self.pod(name).is_some()
            || name == self.domain
    }

    fn soa(&self) -> Record {
        let n = |s: &str| Name::from_str(s).unwrap_or_else(|_| Name::root());
        Record::from_rdata(
            n(&self.domain),
            TTL,
            RData::SOA(SOA::new(
                n(&format!("ns.dns.{}", self.domain)),
                n(&format!("hostmaster.{}", self.domain)),
                1,
                7200,
                1800,
                86400,
                TTL,
            )),
        )
    }

    /// The answer to (name, type): response code, answers, additionals, and the SOA when
    /// there is no answer (negative caching).
    pub fn answer(
        &self,
        qname: &str,
        qtype: RecordType,
    ) -> (ResponseCode, Vec<Record>, Vec<Record>) {
        let name = fqdn(qname);
        let owner = Name::from_str(&name).unwrap_or_else(|_| Name::root());
        let mut answers = Vec::new();
        let mut extra = Vec::new();
        if let Some(targets) = self.ptr.get(&name) {
            if qtype == RecordType::PTR || qtype == RecordType::ANY {
                for t in targets.iter().filter_map(|t| Name::from_str(t).ok()) {
                    answers.push(Record::from_rdata(owner.clone(), TTL, RData::PTR(PTR(t))));
                }
                return (ResponseCode::NoError, answers, vec![]);
            }
            return (ResponseCode::NoError, answers, vec![self.soa()]);
        }
        if !self.exists(&name) {
            return (ResponseCode::NXDomain, answers, vec![self.soa()]);
        }
        let a = |n: &Name, ip: Ipv4Addr| Record::from_rdata(n.clone(), TTL, RData::A(A(ip)));
        let entry = self.names.get(&name).cloned().unwrap_or_else(|| Entry {
            a: self.pod(&name).into_iter().collect(),
            ..Default::default()
        });
        if let Some(target) = &entry.cname {
            if let Ok(t) = Name::from_str(target) {
                answers.push(Record::from_rdata(owner.clone(), TTL, RData::CNAME(CNAME(t))));
            }
            return (ResponseCode::NoError, answers, vec![]);
        }
        let want = |t: RecordType| qtype == t || qtype == RecordType::ANY;
        if want(RecordType::A) {
            answers.extend(entry.a.iter().map(|ip| a(&owner, *ip)));
        }
        if want(RecordType::SRV) {
            for (port, target) in &entry.srv {
                let Ok(t) = Name::from_str(target) else { continue };
                let weight = (100 / entry.srv.len().max(1)) as u16;
                answers.push(Record::from_rdata(
                    owner.clone(),
                    TTL,
                    RData::SRV(SRV::new(0, weight, *port, t.clone())),
                ));
                if let Some(e) = self.names.get(target) {
                    extra.extend(e.a.iter().map(|ip| a(&t, *ip)));
                }
            }
        }
        if want(RecordType::SOA) && name == self.domain {
            answers.push(self.soa());
        }
        if answers.is_empty() {
            extra = vec![self.soa()];
        }
        (ResponseCode::NoError, answers, extra)
    }
}

/// The zone the handler answers from, swapped whole on each rebuild.
pub type ZoneHandle = Arc<RwLock<Arc<Zone>>>;

pub fn empty_zone(domain: &str) -> ZoneHandle {
    Arc::new(RwLock::new(Arc::new(Zone::build(domain, &[], |_| None))))
}

pub struct ClusterDns {
    zone: ZoneHandle,
    /// Everything outside the cluster domain: the node's own resolvers.
    forward: Option<Catalog>,
}

impl ClusterDns {
    pub fn new(zone: ZoneHandle) -> Self {
        let forward = match ForwardZoneHandler::builder(TokioRuntimeProvider::default())
            .and_then(|b| b.build())
        {
            Ok(f) => {
                let mut c = Catalog::new();
                c.upsert(LowerName::from(Name::root()), vec![Arc::new(f)]);
                Some(c)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no upstream resolvers: names outside the cluster will be refused");
                None
            }
        };
        Self { zone, forward }
    }
}

#[tonic::async_trait]
impl RequestHandler for ClusterDns {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.recursion_available = self.forward.is_some();
        let Ok(info) = request.request_info() else {
            meta.response_code = ResponseCode::FormErr;
            return send(&mut response, request, meta, &[], &[], &[]).await;
        };
        let qname = info.query.name().to_string().to_ascii_lowercase();
        let zone = self.zone.read().expect("dns zone lock").clone();
        if !zone.contains(&fqdn(&qname)) {
            return match &self.forward {
                Some(f) => f.handle_request::<R, T>(request, response).await,
                None => {
                    meta.response_code = ResponseCode::Refused;
                    send(&mut response, request, meta, &[], &[], &[]).await
                }
            };
        }
        let (code, answers, extra) = zone.answer(&qname, info.query.query_type());
        meta.authoritative = true;
        meta.response_code = code;
        // SOA records go to the authority section, addresses of SRV targets to additionals.
        let (soa, additionals): (Vec<Record>, Vec<Record>) =
            extra.into_iter().partition(|r| r.record_type() == RecordType::SOA);
        send(&mut response, request, meta, &answers, &soa, &additionals).await
    }
}

async fn send<R: ResponseHandler>(
    response: &mut R,
    request: &Request,
    meta: Metadata,
    answers: &[Record],
    soa: &[Record],
    additionals: &[Record],
) -> ResponseInfo {
    let edns = request.edns.as_ref().map(|req| {
        let mut e = Edns::new();
        e.set_max_payload(req.max_payload().max(512));
        e
    });
    let mut builder = MessageResponseBuilder::from_message_request(request);
    if let Some(e) = &edns {
        builder.edns(e);
    }
    let msg =
        builder.build(meta, answers.iter(), std::iter::empty(), soa.iter(), additionals.iter());
    match response.send_response(msg).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "sending a DNS response");
            let mut metadata = meta;
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(hickory_server::proto::op::Header {
                metadata,
                counts: Default::default(),
            })
        }
    }
}

/// Serves `zone` on `ip`:53 (UDP and TCP) inside the node's network namespace (`None`: ours).
pub async fn serve(netns: Option<PathBuf>, ip: Ipv4Addr, zone: ZoneHandle) -> Result<()> {
    let bind = move || -> std::io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
        let udp = std::net::UdpSocket::bind((ip, 53))?;
        let tcp = std::net::TcpListener::bind((ip, 53))?;
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        Ok((udp, tcp))
    };
    let (udp, tcp) = match &netns {
        Some(p) => flotilla_dataplane::netns::NetNs::open(p)
            .and_then(|ns| ns.run(bind))
            .with_context(|| format!("entering {}", p.display()))?,
        None => bind(),
    }
    .with_context(|| format!("binding the cluster DNS on {ip}:53"))?;
    let mut server = hickory_server::Server::new(ClusterDns::new(zone));
    server.register_socket(tokio::net::UdpSocket::from_std(udp)?);
    server.register_listener(
        tokio::net::TcpListener::from_std(tcp)?,
        Duration::from_secs(5),
        64 * 1024,
    );
    tracing::info!(%ip, "cluster DNS serving");
    server.block_until_done().await.context("cluster DNS")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn zone() -> Zone {
        let web = Arc::new(json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"port": 81}]}}));
        let db = Arc::new(json!({"metadata": {"name": "db", "namespace": "prod"},
            "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}));
        let ext = Arc::new(json!({"metadata": {"name": "ext", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "example.com"}}));
        let db_ep = Arc::new(json!({"subsets": [{"addresses": [
                {"ip": "10.244.1.5", "hostname": "db-0"}, {"ip": "10.244.1.6"}],
            "notReadyAddresses": [{"ip": "10.244.1.7", "hostname": "db-2"}],
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}]}));
        Zone::build("cluster.local", &[web, db, ext], |k| (k == "prod/db").then(|| db_ep.clone()))
    }

    fn ips(r: &[Record]) -> Vec<String> {
        r.iter().map(|r| r.data.to_string()).collect()
    }

    #[test]
    fn services_resolve_to_their_cluster_ip_and_named_ports_to_srv() {
        let z = zone();
        let (code, ans, _) = z.answer("web.default.svc.cluster.local.", RecordType::A);
        assert_eq!((code, ips(&ans)), (ResponseCode::NoError, vec!["10.96.0.20".to_string()]));
        let (_, ans, _) = z.answer("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV);
        assert_eq!(ips(&ans), ["0 100 80 web.default.svc.cluster.local."]);
        // An existing name without that type is NODATA with the SOA.
        let (code, ans, extra) = z.answer("web.default.svc.cluster.local.", RecordType::AAAA);
        assert_eq!(
            (code, ans.len(), extra[0].record_type()),
            (ResponseCode::NoError, 0, RecordType::SOA)
        );
        // Empty non-terminals exist; unknown names do not.
        assert_eq!(z.answer("default.svc.cluster.local.", RecordType::A).0, ResponseCode::NoError);
        let (code, _, extra) = z.answer("nope.default.svc.cluster.local.", RecordType::A);
        assert_eq!((code, extra[0].record_type()), (ResponseCode::NXDomain, RecordType::SOA));
    }

    #[test]
    fn addresses_of_services_and_headless_endpoints_resolve_back_to_their_names() {
        let z = zone();
        let (code, ans, _) = z.answer("20.0.96.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(
            (code, ips(&ans)),
            (ResponseCode::NoError, vec!["web.default.svc.cluster.local.".to_string()])
        );
        let (_, ans, _) = z.answer("5.1.244.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(ips(&ans), ["db-0.db.prod.svc.cluster.local."]);
        let (_, ans, _) = z.answer("6.1.244.10.in-addr.arpa", RecordType::PTR);
        assert_eq!(ips(&ans), ["10-244-1-6.db.prod.svc.cluster.local."]);
        // Not-ready endpoints and unknown addresses are not ours: they go upstream.
        assert!(!z.contains("7.1.244.10.in-addr.arpa."));
        assert!(!z.contains("1.0.0.127.in-addr.arpa."));
        let (code, ans, extra) = z.answer("20.0.96.10.in-addr.arpa.", RecordType::A);
        assert_eq!((code, ans.len(), extra.len()), (ResponseCode::NoError, 0, 1));
    }

    #[test]
    fn headless_services_resolve_to_ready_endpoints_and_their_hostnames() {
        let z = zone();
        let (_, ans, _) = z.answer("DB.prod.svc.cluster.local", RecordType::A);
        assert_eq!(ips(&ans), ["10.244.1.5", "10.244.1.6"]);
        let (_, ans, _) = z.answer("db-0.db.prod.svc.cluster.local.", RecordType::A);
        assert_eq!(ips(&ans), ["10.244.1.5"]);
        let (_, ans, _) = z.answer("10-244-1-6.db.prod.svc.cluster.local.", RecordType::A);
        assert_eq!(ips(&ans), ["10.244.1.6"]);
        assert_eq!(
            z.answer("db-2.db.prod.svc.cluster.local.", RecordType::A).0,
            ResponseCode::NXDomain
        );
        let (_, ans, extra) = z.answer("_pg._tcp.db.prod.svc.cluster.local.", RecordType::SRV);
        assert_eq!(
            ips(&ans),
            [
                "0 50 5432 10-244-1-6.db.prod.svc.cluster.local.",
                "0 50 5432 db-0.db.prod.svc.cluster.local."
            ]
        );
        assert_eq!(extra.len(), 2, "the targets' addresses come along");
    }

    #[test]
    fn external_names_and_pods() {
        let z = zone();
        let (_, ans, _) = z.answer("ext.default.svc.cluster.local.", RecordType::A);
        assert_eq!(ips(&ans), ["example.com."]);
        let (_, ans, _) = z.answer("10-244-3-4.default.pod.cluster.local.", RecordType::A);
        assert_eq!(ips(&ans), ["10.244.3.4"]);
        assert!(z.contains("cluster.local.") && !z.contains("example.com."));
        assert!(!z.contains("notcluster.local."));
    }
}
