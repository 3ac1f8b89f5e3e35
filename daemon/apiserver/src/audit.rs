//! The audit log: one JSON line per request in `audit.k8s.io/v1` Event format, at the level
//! the policy file's first matching rule gives (None, Metadata, Request, RequestResponse), as
//! Kubernetes' `--audit-policy-file` and `--audit-log-path`. Off unless a policy is given.

use crate::request::{Attributes, User};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum Level {
    None,
    Metadata,
    Request,
    RequestResponse,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GroupResources {
    #[serde(default)]
    group: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Rule {
    level: Level,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    #[serde(default)]
    omit_stages: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Policy {
    api_version: String,
    kind: String,
    #[serde(default)]
    metadata: Option<serde_yaml::Value>,
    rules: Vec<Rule>,
    #[serde(default)]
    omit_stages: Vec<String>,
    #[serde(default)]
    omit_managed_fields: bool,
}

pub struct Auditor {
    policy: Policy,
    out: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Auditor({} rules)", self.policy.rules.len())
    }
}

/// A finished request, as the audit log records it.
pub struct Record<'a> {
    pub attributes: &'a Attributes<'a>,
    pub code: u16,
    pub message: Option<&'a str>,
    pub request: Option<&'a [u8]>,
    pub response: Option<&'a [u8]>,
    pub received: jiff::Timestamp,
    pub source: Option<std::net::SocketAddr>,
}

impl Rule {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        let u: &User = a.user;
        if !self.users.is_empty() && !self.users.contains(&u.name) {
            return false;
        }
        if !self.user_groups.is_empty() && !self.user_groups.iter().any(|g| u.groups.contains(g)) {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.iter().any(|v| v == a.verb) {
            return false;
        }
        if !a.is_resource() {
            if !self.resources.is_empty() || !self.namespaces.is_empty() {
                return false;
            }
            return self.non_resource_urls.is_empty()
                || self.non_resource_urls.iter().any(|p| {
                    p == a.path || p.strip_suffix('*').is_some_and(|pre| a.path.starts_with(pre))
                });
        }
        if !self.non_resource_urls.is_empty() {
            return false;
        }
        if !self.namespaces.is_empty() && !self.namespaces.iter().any(|n| n == a.namespace) {
            return false;
        }
        let full = if a.subresource.is_empty() {
            a.resource.to_string()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        self.resources.is_empty()
            || self.resources.iter().any(|g| {
                g.group == a.group
                    && (g.resources.is_empty()
                        || g.resources.iter().any(|r| {
                            *r == full
                                || *r == "*"
                                || (r.starts_with("*/") && a.subresource == &r[2..])
                                || (r.ends_with("/*") && a.resource == &r[..r.len() - 2])
                        }))
                    && (g.resource_names.is_empty() || g.resource_names.iter().any(|n| n == a.name))
            })
    }
}

impl Auditor {
    /// The policy file, and where to write (`-` for standard output).
    pub fn open(policy: &Path, log: &Path) -> Result<Auditor> {
        let text = std::fs::read_to_string(policy)
            .with_context(|| format!("reading the audit policy {}", policy.display()))?;
        let p: Policy = serde_yaml::from_str(&text)
            .with_context(|| format!("audit policy {}", policy.display()))?;
        if p.kind != "Policy" || p.api_version != "audit.k8s.io/v1" {
            bail!(
                "audit policy {}: expected apiVersion audit.k8s.io/v1, kind Policy",
                policy.display()
            );
        }
        let _ = (&p.metadata, p.omit_managed_fields);
        let out: Box<dyn Write + Send> = if log == Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .with_context(|| format!("opening the audit log {}", log.display()))?;
            Box::new(std::io::LineWriter::new(f))
        };
        Ok(Auditor { policy: p, out: Mutex::new(out) })
    }

    pub fn level(&self, a: &Attributes<'_>) -> Level {
        self.policy.rules.iter().find(|r| r.matches(a)).map_or(Level::None, |r| r.level)
    }

    /// Writes the ResponseComplete event of a request (unless the policy omits that stage).
    pub fn log(&self, r: Record<'_>) {
        let a = r.attributes;
        let rule = self.policy.rules.iter().find(|x| x.matches(a));
        let Some(rule) = rule.filter(|x| x.level > Level::None) else { return };
        let omitted =
            |s: &str| self.policy.omit_stages.iter().chain(&rule.omit_stages).any(|o| o == s);
        if omitted("ResponseComplete") {
            return;
        }
        let mut ev = json!({"kind": "Event", "apiVersion": "audit.k8s.io/v1",
            "level": format!("{:?}", rule.level), "auditID": uuid::Uuid::new_v4().to_string(),
            "stage": "ResponseComplete", "verb": a.verb,
            "user": a.user.to_json(),
            "sourceIPs": r.source.map(|s| vec![s.ip().to_string()]).unwrap_or_default(),
            "responseStatus": {"metadata": {}, "code": r.code},
            "requestReceivedTimestamp": r.received.to_string(),
            "stageTimestamp": jiff::Timestamp::now().to_string()});
        if a.is_resource() {
            let info = flotilla_api::lookup(a.resource);
            let mut o = json!({"resource": a.resource, "apiGroup": a.group,
                "apiVersion": info.map_or("v1".to_string(), |i| i.version.to_string())});
            for (k, v) in
                [("namespace", a.namespace), ("name", a.name), ("subresource", a.subresource)]
            {
                if !v.is_empty() {
                    o[k] = json!(v);
                }
            }
            ev["objectRef"] = o;
            ev["requestURI"] = json!(request_uri(a));
        } else {
            ev["requestURI"] = json!(a.path);
        }
        if let Some(m) = r.message {
            ev["responseStatus"]["message"] = json!(m);
            ev["responseStatus"]["status"] = json!("Failure");
        }
        let body = |b: Option<&[u8]>| b.and_then(|b| serde_json::from_slice::<Value>(b).ok());
        if rule.level >= Level::Request {
            if let Some(v) = body(r.request) {
                ev["requestObject"] = v;
            }
        }
        if rule.level >= Level::RequestResponse {
            if let Some(v) = body(r.response) {
                ev["responseObject"] = v;
            }
        }
        let mut line = ev.to_string();
        line.push('\n');
        let mut out = self.out.lock().expect("audit log lock");
        if let Err(e) = out.write_all(line.as_bytes()).and_then(|_| out.flush()) {
            tracing::error!(error = %e, "writing the audit log");
        }
    }
}

/// The URL the request would have had on Kubernetes' REST API.
fn request_uri(a: &Attributes<'_>) -> String {
    let base = if a.group.is_empty() {
        "/api/v1".to_string()
    } else {
        let v = flotilla_api::lookup(a.resource).map_or("v1", |i| i.version);
        format!("/apis/{}/{v}", a.group)
    };
    let mut u = base;
    if !a.namespace.is_empty() {
        u.push_str(&format!("/namespaces/{}", a.namespace));
    }
    u.push_str(&format!("/{}", a.resource));
    if !a.name.is_empty() {
        u.push_str(&format!("/{}", a.name));
    }
    if !a.subresource.is_empty() {
        u.push_str(&format!("/{}", a.subresource));
    }
    if a.verb == "watch" {
        u.push_str("?watch=true");
    }
    u
}
