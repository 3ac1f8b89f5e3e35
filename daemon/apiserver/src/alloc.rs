//! ClusterIP and NodePort allocation. Each allocated address or port is a key in the store,
//! written in the same transaction as its Service with a "must not exist" guard, so two
//! services can never get the same one, even through different API servers.

use super::kv::{Cond, Op};
use super::ApiServer;
use flotilla_api::error::{ApiError, Errors};
use flotilla_api::ResourceInfo;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::Ipv4Addr;

const IP_PREFIX: &str = "/registry/core/serviceips/";
const PORT_PREFIX: &str = "/registry/core/servicenodeports/";

fn ip_key(ip: &str) -> String {
    format!("{IP_PREFIX}{ip}")
}

fn port_key(port: i64) -> String {
    format!("{PORT_PREFIX}{port}")
}

/// Keys to claim (with whether the user chose them) and keys to release.
#[derive(Default)]
pub struct Plan {
    claims: Vec<(String, bool, String)>,
    releases: Vec<String>,
}

impl Plan {
    pub fn add_to(&self, svc_key: &str, conds: &mut Vec<Cond>, ops: &mut Vec<Op>) {
        for (k, _, _) in &self.claims {
            conds.push(Cond::Absent(k.clone()));
            ops.push(Op::Put(k.clone(), svc_key.as_bytes().to_vec()));
        }
        for k in &self.releases {
            ops.push(Op::Delete(k.clone()));
        }
    }

    /// After a failed transaction: a user-chosen address that is taken is the user's error.
    pub async fn check_taken(
        &self,
        s: &ApiServer,
        info: &ResourceInfo,
        name: &str,
    ) -> Result<(), ApiError> {
        let mut errs = Errors::default();
        for (k, user, field) in &self.claims {
            if *user && s.kv.get(k).await?.is_some() {
                let what = k.rsplit('/').next().unwrap_or("");
                errs.invalid_str(field.clone(), what, "provided value is already allocated");
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(&info.qualified_kind(), name, errs.0))
        }
    }
}

fn needs_ip(spec: &Value) -> bool {
    spec.get("type").and_then(Value::as_str) != Some("ExternalName")
        && spec.get("clusterIP").and_then(Value::as_str) != Some("None")
}

fn needs_node_ports(spec: &Value) -> bool {
    matches!(spec.get("type").and_then(Value::as_str), Some("NodePort") | Some("LoadBalancer"))
}

fn in_cidr(ip: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(net) & mask
}

/// A random address of the range that no cached Service holds (the store's guard catches
/// races with writes the cache has not seen yet).
fn random_ip(s: &ApiServer) -> Result<Ipv4Addr, ApiError> {
    let (net, len) = s.config.service_cidr;
    let size = 1u64 << (32 - len as u64);
    let used: HashSet<String> = services(s)
        .iter()
        .filter_map(|o| {
            o.value.pointer("/spec/clusterIP").and_then(Value::as_str).map(String::from)
        })
        .collect();
    // Skip the network address, .1 (the API's own service in Kubernetes) and broadcast.
    let usable = size.saturating_sub(3).max(1);
    let start = fastrand::u64(0..usable);
    for i in 0..usable {
        let off = 2 + (start + i) % usable;
        let ip = Ipv4Addr::from(u32::from(net).wrapping_add(off as u32));
        if !used.contains(&ip.to_string()) {
            return Ok(ip);
        }
    }
    Err(ApiError::forbidden(format!("no free ClusterIPs in {net}/{len}")))
}

/// The cached Services, already decoded.
fn services(s: &ApiServer) -> Vec<std::sync::Arc<super::cache::CachedObject>> {
    s.cache(flotilla_api::lookup("services").expect("registered")).objects()
}

fn used_node_ports(s: &ApiServer) -> HashSet<i64> {
    let mut used = HashSet::new();
    for o in services(s) {
        for p in o.value.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten() {
            if let Some(n) = p.get("nodePort").and_then(Value::as_i64) {
                used.insert(n);
            }
        }
    }
    used
}

fn pick_port(s: &ApiServer, taken: &HashSet<i64>) -> Result<i64, ApiError> {
    let (lo, hi) = s.config.node_port_range;
    let used = used_node_ports(s);
    let free: Vec<i64> =
        (lo as i64..=hi as i64).filter(|p| !used.contains(p) && !taken.contains(p)).collect();
    if free.is_empty() {
        return Err(ApiError::forbidden(format!("no free node ports in {lo}-{hi}")));
    }
    Ok(free[fastrand::usize(0..free.len())])
}

fn claim_ip(s: &ApiServer, spec: &mut Value, plan: &mut Plan) -> Result<(), ApiError> {
    let given = spec.get("clusterIP").and_then(Value::as_str).unwrap_or("").to_string();
    let cidr = s.config.service_cidr;
    let ip = if given.is_empty() {
        let ip = random_ip(s)?.to_string();
        plan.claims.push((ip_key(&ip), false, "spec.clusterIP".into()));
        ip
    } else {
        let ok = given.parse::<Ipv4Addr>().is_ok_and(|ip| in_cidr(ip, cidr));
        if !ok {
            let mut e = Errors::default();
            e.invalid_str(
                "spec.clusterIP",
                &given,
                &format!(
                    "provided IP is not in the valid range. The range of valid IPs is {}/{}",
                    cidr.0, cidr.1
                ),
            );
            return Err(ApiError::invalid("Service", "", e.0));
        }
        plan.claims.push((ip_key(&given), true, "spec.clusterIP".into()));
        given
    };
    spec["clusterIP"] = json!(ip);
    spec["clusterIPs"] = json!([ip]);
    spec["ipFamilies"] = json!(["IPv4"]);
    spec["ipFamilyPolicy"] = json!("SingleStack");
    Ok(())
}

fn claim_ports(
    s: &ApiServer,
    spec: &mut Value,
    old: &HashSet<i64>,
    plan: &mut Plan,
) -> Result<(), ApiError> {
    let (lo, hi) = s.config.node_port_range;
    let mut chosen = HashSet::new();
    let n = spec.get("ports").and_then(Value::as_array).map_or(0, Vec::len);
    for i in 0..n {
        let field = format!("spec.ports[{i}].nodePort");
        let given = spec["ports"][i].get("nodePort").and_then(Value::as_i64).unwrap_or(0);
        let port = if given == 0 {
            let p = pick_port(s, &chosen)?;
            plan.claims.push((port_key(p), false, field));
            p
        } else {
            if !(lo as i64..=hi as i64).contains(&given) {
                let mut e = Errors::default();
                e.invalid(field, given, &format!("provided port is not in the valid range. The range of valid ports is {lo}-{hi}"));
                return Err(ApiError::invalid("Service", "", e.0));
            }
            if !old.contains(&given) && !chosen.contains(&given) {
                plan.claims.push((port_key(given), true, field));
            }
            given
        };
        chosen.insert(port);
        spec["ports"][i]["nodePort"] = json!(port);
    }
    Ok(())
}

fn allocated(v: &Value) -> (Option<String>, HashSet<i64>) {
    let spec = v.get("spec").cloned().unwrap_or(Value::Null);
    let ip = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .filter(|ip| ip.parse::<Ipv4Addr>().is_ok())
        .map(String::from);
    let ports = spec
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
        .collect();
    (ip, ports)
}

pub fn plan_create(s: &ApiServer, obj: &mut Value, _attempt: usize) -> Result<Plan, ApiError> {
    let mut plan = Plan::default();
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
    let spec = &mut obj["spec"];
    let named = |e: ApiError| ApiError::invalid("Service", &name, e.causes);
    if needs_ip(spec) {
        claim_ip(s, spec, &mut plan).map_err(named)?;
    } else if spec.get("clusterIP").and_then(Value::as_str) == Some("None") {
        spec["clusterIPs"] = json!(["None"]);
    }
    if needs_node_ports(spec) {
        claim_ports(s, spec, &HashSet::new(), &mut plan).map_err(|e| {
            if e.causes.is_empty() {
                e
            } else {
                named(e)
            }
        })?;
    }
    Ok(plan)
}

/// An update that leaves out allocated values keeps them (as Kubernetes'
/// `patchAllocatedValues` does), so re-applying a manifest without clusterIP works.
pub fn keep_allocated(current: &Value, new: &mut Value) {
    // Before validation: a spec or port of the wrong type is left for validation to name.
    let cs = current.get("spec").filter(|s| s.is_object());
    let ns = new.get_mut("spec").filter(|s| s.is_object());
    let (Some(cs), Some(ns)) = (cs, ns) else { return };
    if needs_ip(cs)
        && needs_ip(ns)
        && ns.get("clusterIP").and_then(Value::as_str).unwrap_or("").is_empty()
    {
        for k in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            if let Some(v) = cs.get(k) {
                ns[k] = v.clone();
            }
        }
    }
    if needs_node_ports(cs) && needs_node_ports(ns) {
        let old: Vec<Value> =
            cs.get("ports").and_then(Value::as_array).cloned().unwrap_or_default();
        if let Some(ports) = ns.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut().filter(|p| p.is_object()) {
                if p.get("nodePort").and_then(Value::as_i64).unwrap_or(0) != 0 {
                    continue;
                }
                let proto = |v: &Value| {
                    v.get("protocol").and_then(Value::as_str).unwrap_or("TCP").to_string()
                };
                if let Some(o) =
                    old.iter().find(|o| o.get("port") == p.get("port") && proto(o) == proto(p))
                {
                    if let Some(np) = o.get("nodePort") {
                        p["nodePort"] = np.clone();
                    }
                }
            }
        }
    }
}

pub fn plan_update(s: &ApiServer, current: &Value, obj: &mut Value) -> Result<Plan, ApiError> {
    let mut plan = Plan::default();
    let (old_ip, old_ports) = allocated(current);
    let spec = &mut obj["spec"];
    if needs_ip(spec) {
        // A kept address needs no claim (keep_allocated copied it; it is immutable).
        if old_ip.is_none() {
            claim_ip(s, spec, &mut plan)?;
        }
    } else if let Some(ip) = &old_ip {
        plan.releases.push(ip_key(ip));
        if let Some(m) = spec.as_object_mut() {
            if m.get("clusterIP").and_then(Value::as_str) != Some("None") {
                m.remove("clusterIP");
                m.remove("clusterIPs");
            }
        }
    }
    if needs_node_ports(spec) {
        claim_ports(s, spec, &old_ports, &mut plan)?;
    } else if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            if let Some(m) = p.as_object_mut() {
                m.remove("nodePort");
            }
        }
    }
    let (_, new_ports) = allocated(obj);
    for p in old_ports.difference(&new_ports) {
        plan.releases.push(port_key(*p));
    }
    Ok(plan)
}

pub fn release_all(current: &Value, ops: &mut Vec<Op>) {
    let (ip, ports) = allocated(current);
    if let Some(ip) = ip {
        ops.push(Op::Delete(ip_key(&ip)));
    }
    for p in ports {
        ops.push(Op::Delete(port_key(p)));
    }
}
