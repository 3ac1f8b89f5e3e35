//! The API server: Kubernetes objects over gRPC, stored in the Raft store, listed and watched
//! from one watch cache per resource type. It is the only component that touches the store.
//!
//! Writes go to the store as transactions guarded by revisions (create: the key is absent;
//! update: it was last written at the revision read), so a stale resourceVersion is a Conflict
//! and nothing is ever half-written. Reads of single objects go to the store; lists and
//! watches to the caches, after the cache has caught up with the store's current revision.
#![recursion_limit = "256"]
#![forbid(unsafe_code)]

mod alloc;
pub mod audit;
pub mod cache;
mod certificates;
pub mod encryption;
mod eviction;
mod http;
mod k8s_proto;
pub mod kv;
pub mod metrics;
pub mod node_authz;
mod openapi;
pub mod podsecurity;
mod proto_table;
pub mod proxy;
pub mod rbac;
mod remotecommand;
pub mod request;
mod resource_metrics;
pub mod scale;
mod service;
pub mod strategy;
pub mod testing;
pub mod tokens;
mod watch;

use bytes::Bytes;
use cache::{Filter, WatchCache};
use flotilla_api::error::{ApiError, Errors, Reason};
use flotilla_api::managed;
use flotilla_api::patch::PatchKind;
use flotilla_api::{ResourceInfo, RESOURCES};
use flotilla_store::StoreNode;
use kv::{Cond, Kv, Op};
use request::{Attributes, Credentials, Decision, RequestInfo, Seams, User};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use service::serve;

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// ClusterIPs are allocated from here.
    pub service_cidr: (std::net::Ipv4Addr, u8),
    pub node_port_range: (i32, i32),
    /// The kubeconfig (server and CA, no credentials) published as kube-public/cluster-info
    /// for nodes that join with a bootstrap token (kubeadm's discovery).
    pub cluster_info: Option<String>,
    /// kube-system/kube-dns gets this ClusterIP (served by the agents).
    pub cluster_dns: Option<std::net::Ipv4Addr>,
    /// Events each resource's watchers may fall behind before they are cut off.
    pub watch_ring: usize,
    /// Events kept per resource for watches that resume from an older resourceVersion.
    pub watch_history: usize,
    pub bookmark_interval: Duration,
    /// How long a list waits for its cache to reach the store's revision.
    pub sync_timeout: Duration,
    /// TLS to the node agents' API (10250), with the API server's client certificate
    /// (`kube-apiserver-kubelet-client`), the only one the agents accept. `None`: log, exec
    /// and stats requests fail.
    pub node_client: Option<Arc<rustls::ClientConfig>>,
    pub authorization: Authorization,
    /// The audit log (`--audit-policy-file`, `--audit-log-path`); None: off.
    pub audit: Option<Arc<audit::Auditor>>,
    /// Encryption at rest (`--encryption-provider-config`); None stores values as they are.
    pub encryption: Option<Arc<encryption::Encryption>>,
}

/// How requests are authorized (Kubernetes' `--authorization-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization {
    /// `Node,RBAC`: what every server runs.
    NodeRbac,
    /// Everyone may do everything: only the API benchmark's "off" rows, to price RBAC.
    AlwaysAllow,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            service_cidr: (std::net::Ipv4Addr::new(10, 96, 0, 0), 12),
            node_port_range: (30000, 32767),
            cluster_dns: Some(std::net::Ipv4Addr::new(10, 96, 0, 10)),
            watch_ring: 8192,
            watch_history: 10_000,
            bookmark_interval: Duration::from_secs(10),
            sync_timeout: Duration::from_secs(5),
            node_client: None,
            cluster_info: None,
            authorization: Authorization::NodeRbac,
            audit: None,
            encryption: None,
        }
    }
}

/// Namespaces every cluster has, created at start-up like Kubernetes' system namespaces.
const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];
/// Retries of an unconditional write (update without resourceVersion, patch) that lost a race.
const WRITE_RETRIES: usize = 16;

pub struct ApiServer {
    kv: Kv,
    caches: HashMap<&'static str, Arc<WatchCache>>,
    signer: tokens::Signer,
    pub config: ApiConfig,
    pub metrics: metrics::Metrics,
    seams: Seams,
    rbac: rbac::Rbac,
    nodes: node_authz::NodeAuthorizer,
}

/// A delete's options (Kubernetes' DeleteOptions).
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    /// Orphan, Background or Foreground ("": Background).
    pub propagation_policy: String,
    pub precondition_uid: String,
    pub precondition_resource_version: String,
    pub dry_run: bool,
}

/// A list's options (Kubernetes' ListOptions).
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    pub label_selector: String,
    pub field_selector: String,
    /// At most this many items (0: all).
    pub limit: i64,
    pub continue_token: String,
    /// `resourceVersionMatch=Exact`: the list as of this revision (0: the newest).
    pub exact_revision: i64,
}

/// A list as served: the items' JSON, the list's resourceVersion, and where the next page
/// starts ("" when this is the last).
pub struct List {
    pub items: Vec<Arc<cache::CachedObject>>,
    pub resource_version: String,
    pub continue_token: String,
    pub remaining_item_count: i64,
}

/// Whether a write goes through the status subresource ("" or "status").
pub fn status_subresource(info: &ResourceInfo, sub: &str) -> Result<bool, ApiError> {
    match sub {
        "" => Ok(false),
        "status" if info.has_status => Ok(true),
        // Kubernetes' CSR approval: a status-like path that changes only the conditions.
        "approval" if info.plural == "certificatesigningrequests" => Ok(true),
        other => Err(ApiError::new(
            Reason::NotFound,
            format!("{} has no subresource {other:?}", info.plural),
        )),
    }
}

fn meta_mut(v: &mut Value) -> &mut Map<String, Value> {
    if !v.get("metadata").is_some_and(Value::is_object) {
        v["metadata"] = json!({});
    }
    v["metadata"].as_object_mut().expect("metadata is an object")
}

fn meta_str<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str).unwrap_or("")
}

/// The field manager a write is recorded for: the one asked for, else the client's user
/// agent up to its first "/" (Kubernetes' managerOrUserAgent: `kubectl/v1.32.0 (linux/amd64)
/// …` is "kubectl"); validated as Kubernetes validates it. `options` names the options kind
/// in errors (CreateOptions, UpdateOptions, PatchOptions).
pub fn field_manager(asked: &str, user_agent: &str, options: &str) -> Result<String, ApiError> {
    let mut e = Errors::default();
    if asked.len() > 128 {
        e.push(
            "fieldManager",
            flotilla_api::error::FieldErrorType::TooLong,
            "may not be more than 128 bytes",
        );
    }
    if let Some((i, c)) = asked.chars().enumerate().find(|(_, c)| c.is_control()) {
        let msg = format!("invalid character U+{:04X} (at position {i})", c as u32);
        e.invalid_str("fieldManager", asked, &msg);
    }
    if !e.is_empty() {
        return Err(ApiError::invalid(&format!("{options}.meta.k8s.io"), "", e.0));
    }
    if !asked.is_empty() {
        return Ok(asked.to_string());
    }
    let product = user_agent.split('/').next().unwrap_or("");
    Ok(product.chars().filter(|c| !c.is_control()).take(128).collect())
}

/// The field manager of the API server's own writes (Kubernetes': its user agent's).
pub const APISERVER_MANAGER: &str = "flotilla-apiserver";

fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    // metav1.Time has second precision.
    jiff::Timestamp::from_second(now.as_second()).unwrap_or(now).to_string()
}

/// An object's store form: no resourceVersion (the store's mod revision is the truth).
/// The object a write goes to, and who writes it.
#[derive(Clone, Copy)]
struct Target<'a> {
    user: &'a User,
    verb: &'static str,
    subresource: &'a str,
    info: &'static ResourceInfo,
    ns: &'a str,
    name: &'a str,
    /// The resourceVersion the write is conditional on.
    rv: Option<i64>,
    /// The field manager recorded in managedFields.
    manager: &'a str,
    /// The transform recorded the managers itself (server-side apply).
    applied: bool,
}

impl<'a> Target<'a> {
    fn attributes(&self) -> Attributes<'a> {
        RequestInfo::new(self.verb, self.info.plural)
            .subresource(self.subresource)
            .at(self.ns, self.name)
            .by(self.user)
    }
}

/// An object as stored: metadata first and without resourceVersion (the store's revision is
/// the version), so the served form is the stored bytes with the version spliced in
/// (`served`) rather than a second serialization. Written without copying the object.
fn to_store(v: &Value) -> Vec<u8> {
    use serde::ser::{Serialize, SerializeMap, Serializer};
    struct Meta<'a>(&'a Map<String, Value>);
    impl Serialize for Meta<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(None)?;
            for (k, v) in self.0.iter().filter(|(k, _)| *k != "resourceVersion") {
                m.serialize_entry(k, v)?;
            }
            m.end()
        }
    }
    struct Stored<'a>(&'a Map<String, Value>);
    impl Serialize for Stored<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(Some(self.0.len()))?;
            if let Some(Value::Object(meta)) = self.0.get("metadata") {
                m.serialize_entry("metadata", &Meta(meta))?;
            }
            for (k, v) in self.0.iter().filter(|(k, v)| *k != "metadata" || !v.is_object()) {
                m.serialize_entry(k, v)?;
            }
            m.end()
        }
    }
    match v {
        Value::Object(o) => serde_json::to_vec(&Stored(o)),
        v => serde_json::to_vec(v),
    }
    .unwrap_or_default()
}

/// How `to_store`'s output starts when the object has metadata.
const STORED_HEAD: &[u8] = br#"{"metadata":{"#;

/// Stored bytes as served: metadata.resourceVersion set to `rv`. `None` when the bytes are not
/// in `to_store`'s layout (written by an older version), and the caller re-encodes.
pub(crate) fn served(stored: &[u8], rv: i64) -> Option<Bytes> {
    let rest = stored.strip_prefix(STORED_HEAD)?;
    let mut out = Vec::with_capacity(stored.len() + 32);
    out.extend_from_slice(STORED_HEAD);
    out.extend_from_slice(br#""resourceVersion":""#);
    out.extend_from_slice(rv.to_string().as_bytes());
    out.push(b'"');
    if rest.first() != Some(&b'}') {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Some(Bytes::from(out))
}

/// A written object, with its served encoding when the write produced it. `object` is Null
/// when it was handed to the watch cache: `json` is the object then.
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
    json: Option<Bytes>,
}

impl Written {
    fn new(object: Value, json: Option<Bytes>, warnings: Vec<String>) -> Self {
        Written { object, warnings, json }
    }

    /// The object as JSON, as clients get it.
    pub fn json(&self) -> Bytes {
        self.json.clone().unwrap_or_else(|| encode(&self.object))
    }
}

fn with_rv(mut v: Value, rv: i64) -> Value {
    meta_mut(&mut v).insert("resourceVersion".into(), Value::String(rv.to_string()));
    v
}

fn encode(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// Everything but metadata and status: what `generation` counts changes of.
fn spec_part(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

/// The namespace an object is written to: the request's and the object's must agree; neither
/// means "default"; cluster-scoped objects have none.
fn object_namespace(info: &ResourceInfo, request: &str, object: &str) -> Result<String, ApiError> {
    if !info.namespaced {
        return Ok(String::new());
    }
    match (request, object) {
        ("", "") => Ok("default".to_string()),
        ("", o) => Ok(o.to_string()),
        (n, o) if o.is_empty() || o == n => Ok(n.to_string()),
        (n, o) => Err(ApiError::bad_request(format!(
            "the namespace of the object ({o}) does not match the namespace of the request ({n})"
        ))),
    }
}

fn parse_object(info: &ResourceInfo, body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("{}: the object is not valid JSON: {e}", info.kind))
    })?;
    if !v.is_object() {
        return Err(ApiError::bad_request(format!("{}: the object must be a JSON map", info.kind)));
    }
    Ok(v)
}

/// A JSON value's type, as error messages name it.
fn kind_of_json(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn random_suffix(n: usize) -> String {
    // Kubernetes' alphabet for generated names: no vowels, no look-alikes.
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes.iter().take(n).map(|b| ALPHA[*b as usize % ALPHA.len()] as char).collect()
}

impl ApiServer {
    /// Starts the caches (one store watch per resource type) and creates the system
    /// namespaces.
    pub async fn start(store: Arc<StoreNode>, config: ApiConfig) -> Result<Arc<Self>, ApiError> {
        Self::start_with(store, config, Seams::default()).await
    }

    /// `start`, with the authentication, authorization and admission stages given.
    pub async fn start_with(
        store: Arc<StoreNode>,
        config: ApiConfig,
        seams: Seams,
    ) -> Result<Arc<Self>, ApiError> {
        let kv = Kv(store, config.encryption.clone());
        let mut caches = HashMap::new();
        for r in RESOURCES {
            let c = WatchCache::new(r, config.watch_ring, config.watch_history);
            tokio::spawn(c.clone().run(kv.clone()));
            caches.insert(r.plural, c);
        }
        let signer = tokens::Signer::load_or_create(&kv).await?;
        let rbac = rbac::Rbac::new(
            ["clusterroles", "roles", "clusterrolebindings", "rolebindings"]
                .map(|r| caches[r].clone()),
        );
        let nodes = node_authz::NodeAuthorizer::new(caches["pods"].clone());
        let server = Arc::new(ApiServer {
            kv,
            caches,
            signer,
            config,
            metrics: metrics::Metrics::new(),
            seams,
            rbac,
            nodes,
        });
        let me = User::apiserver();
        let ns = flotilla_api::lookup("namespaces").expect("namespaces are registered");
        for name in SYSTEM_NAMESPACES {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            match server.create(&me, ns, "", encode(&obj).as_ref(), false, APISERVER_MANAGER).await
            {
                Ok(_) => tracing::info!(namespace = name, "created system namespace"),
                Err(e) if e.reason == Reason::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        server.reconcile_bootstrap_policy(&me).await?;
        if let Some(kc) = server.config.cluster_info.clone() {
            server.publish_cluster_info(&me, &kc).await?;
        }
        if let Some(ip) = server.config.cluster_dns {
            // Selector-less: no Endpoints controller touches it; each agent points it at its
            // own DNS server.
            let svc = json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "kube-dns", "namespace": "kube-system",
                    "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "Flotilla-DNS"},
                    "annotations": {"flotilla.dev/served-by": "node agents"}},
                "spec": {"clusterIP": ip.to_string(), "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}});
            let info = flotilla_api::lookup("services").expect("services are registered");
            match server
                .create(&me, info, "kube-system", encode(&svc).as_ref(), false, APISERVER_MANAGER)
                .await
            {
                Ok(_) => tracing::info!(%ip, "created kube-system/kube-dns"),
                Err(e) if e.reason == Reason::AlreadyExists => {}
                Err(e) => {
                    tracing::warn!(%ip, error = %e.message, "not creating kube-system/kube-dns")
                }
            }
        }
        Ok(server)
    }

    /// The first stages of every request, whatever its front: who the caller is (and whom
    /// they impersonate), and whether they may do this. Returns the caller, whom the write
    /// stages see.
    pub fn admit_request(
        &self,
        credentials: &Credentials,
        request: RequestInfo<'_>,
    ) -> Result<User, ApiError> {
        let user = self.authenticate(credentials)?;
        let user = self.impersonate(user, credentials)?;
        self.authorize(&request.by(&user))?;
        Ok(user)
    }

    /// Kubernetes' authorizer chain: the `system:masters` group, the Node authorizer, any
    /// configured authorizers, then RBAC. The first Allow or Deny decides.
    pub fn decide(&self, a: &Attributes<'_>) -> Decision {
        if self.config.authorization == Authorization::AlwaysAllow
            || a.user.groups.iter().any(|g| g == "system:masters")
        {
            return Decision::Allow;
        }
        match self.nodes.authorize(a) {
            Decision::NoOpinion => {}
            d => return d,
        }
        match self.seams.decide(a) {
            Decision::NoOpinion => self.rbac.authorize(a),
            d => d,
        }
    }

    pub fn authorize(&self, a: &Attributes<'_>) -> Result<(), ApiError> {
        match self.decide(a) {
            Decision::Allow => Ok(()),
            Decision::Deny(why) => Err(request::forbidden(a, &why)),
            Decision::NoOpinion => Err(request::forbidden(a, "")),
        }
    }

    /// `Impersonate-User` / `Impersonate-Group`: allowed by the `impersonate` verb on
    /// `users`, `groups` or the service account, as in Kubernetes.
    fn impersonate(&self, real: User, c: &Credentials) -> Result<User, ApiError> {
        let Some(name) = c.impersonate_user.as_deref() else {
            if !c.impersonate_groups.is_empty() {
                return Err(ApiError::bad_request(
                    "requested [group impersonation] without impersonating a user",
                ));
            }
            return Ok(real);
        };
        let sa = name.strip_prefix("system:serviceaccount:").and_then(|r| r.split_once(':'));
        let check = match sa {
            Some((ns, n)) => RequestInfo::new("impersonate", "serviceaccounts").at(ns, n),
            None => RequestInfo::new("impersonate", "users").at("", name),
        };
        self.authorize(&check.by(&real))?;
        let mut groups = Vec::new();
        for g in &c.impersonate_groups {
            self.authorize(&RequestInfo::new("impersonate", "groups").at("", g).by(&real))?;
            groups.push(g.clone());
        }
        if let Some((ns, _)) = sa {
            groups.push("system:serviceaccounts".into());
            groups.push(format!("system:serviceaccounts:{ns}"));
        }
        if name != "system:anonymous" && !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        Ok(User { name: name.to_string(), uid: String::new(), groups, extra: Default::default() })
    }

    /// The admission stages after the strategy: NodeRestriction, RBAC's escalation check,
    /// Pod Security, then the configured plugins. Warnings go with the answer.
    fn validate_write(
        &self,
        a: &Attributes<'_>,
        object: Option<&Value>,
        old: Option<&Value>,
        warnings: &mut Vec<String>,
    ) -> Result<(), ApiError> {
        if self.config.authorization == Authorization::NodeRbac {
            node_authz::node_restriction(a, object, old)?;
            if let Some(obj) = object {
                self.no_escalation(a, obj)?;
            }
        }
        if let Some(obj) = object {
            self.pod_security(a, obj, old, warnings)?;
        }
        certificates::admit(self, a, object, old)?;
        self.seams.validate(a, object, old)
    }

    /// Pod Security admission: the namespace's labels decide (see `podsecurity`).
    fn pod_security(
        &self,
        a: &Attributes<'_>,
        obj: &Value,
        old: Option<&Value>,
        warnings: &mut Vec<String>,
    ) -> Result<(), ApiError> {
        if !matches!(a.verb, "create" | "update" | "patch") || !a.subresource.is_empty() {
            return Ok(());
        }
        let namespaces = flotilla_api::lookup("namespaces").expect("registered");
        if a.resource == "namespaces" {
            // A stricter enforce level is not applied to running pods: their owner is told.
            let labels = |v: Option<&Value>| -> std::collections::BTreeMap<String, String> {
                v.and_then(|v| serde_json::from_value(v["metadata"]["labels"].clone()).ok())
                    .unwrap_or_default()
            };
            let new = podsecurity::Policy::from_labels(&labels(Some(obj)));
            let before = podsecurity::Policy::from_labels(&labels(old));
            let (Some((level, version)), true) = (&new.enforce, new.enforce != before.enforce)
            else {
                return Ok(());
            };
            let ns = meta_str(obj, "name");
            let pods = flotilla_api::lookup("pods").expect("registered");
            for p in self.cache(pods).objects().iter().filter(|p| p.namespace == ns) {
                let v = podsecurity::violations(*level, &p.value["metadata"], &p.value["spec"]);
                if !v.is_empty() {
                    let name = meta_str(&p.value, "name");
                    warnings.push(format!(
                        "existing pods in namespace {ns:?} violate the new PodSecurity enforce level \"{}:{version}\"",
                        format!("{level:?}").to_lowercase()
                    ));
                    warnings.push(format!("{name}: {}", v.join(", ")));
                }
            }
            return Ok(());
        }
        if a.namespace.is_empty() || podsecurity::pod_of(a.resource, obj).is_none() {
            return Ok(());
        }
        // Updates that leave the pod (template) alone are not evaluated, as upstream.
        if let Some(old) = old {
            let same = podsecurity::pod_of(a.resource, old)
                .map(|(m, s, _)| (m["annotations"].clone(), s.clone()))
                == podsecurity::pod_of(a.resource, obj)
                    .map(|(m, s, _)| (m["annotations"].clone(), s.clone()));
            if same {
                return Ok(());
            }
        }
        let labels = self
            .cache(namespaces)
            .get(a.namespace)
            .and_then(|n| serde_json::from_value(n.value["metadata"]["labels"].clone()).ok())
            .unwrap_or_default();
        let policy = podsecurity::Policy::from_labels(&labels);
        if policy.is_empty() {
            return Ok(());
        }
        let name = meta_str(obj, "name");
        match podsecurity::admit(&policy, a.resource, name, obj) {
            Err(msg) => Err(ApiError::forbidden(msg)),
            Ok((w, audit)) => {
                warnings.extend(w);
                for au in audit {
                    tracing::info!(target: "audit", resource = a.resource, namespace = a.namespace,
                        name, user = %a.user.name, "pod-security.kubernetes.io/audit-violations: {au}");
                }
                Ok(())
            }
        }
    }

    /// Nobody creates a role or a binding that grants more than they hold, unless they may
    /// `escalate` (roles) or `bind` (the binding's role), or are `system:masters`.
    fn no_escalation(&self, a: &Attributes<'_>, obj: &Value) -> Result<(), ApiError> {
        if a.group != "rbac.authorization.k8s.io"
            || a.user.groups.iter().any(|g| g == "system:masters")
        {
            return Ok(());
        }
        let name = meta_str(obj, "name");
        let what = format!("{}.rbac.authorization.k8s.io {name:?}", a.resource);
        let ns = a.namespace;
        match a.resource {
            "roles" | "clusterroles" => {
                let esc = RequestInfo::new("escalate", a.resource).at(ns, name).by(a.user);
                if self.decide(&esc) == Decision::Allow {
                    return Ok(());
                }
                if obj.get("aggregationRule").is_some_and(|r| !r.is_null()) {
                    return Err(ApiError::forbidden(format!(
                        "{what} is forbidden: must have cluster-admin privileges to use the aggregationRule"
                    )));
                }
                let wanted: Vec<rbac::Rule> = obj["rules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(rbac::Rule::from_json)
                    .collect();
                rbac::confirm_no_escalation(
                    a.user,
                    &self.rbac.rules_for(a.user, ns),
                    &wanted,
                    &what,
                )
            }
            "rolebindings" | "clusterrolebindings" => {
                let kind = obj["roleRef"]["kind"].as_str().unwrap_or_default();
                let role = obj["roleRef"]["name"].as_str().unwrap_or_default();
                let resource = if kind == "Role" { "roles" } else { "clusterroles" };
                let bind = RequestInfo::new("bind", resource).at(ns, role).by(a.user);
                if self.decide(&bind) == Decision::Allow {
                    return Ok(());
                }
                let Some(wanted) = self.rbac.role_rules(kind, ns, role) else {
                    return Err(ApiError::forbidden(format!(
                        "{what} is forbidden: {} {role:?} not found: binding a role that does not exist needs the \"bind\" verb on it",
                        if kind == "Role" { "role" } else { "clusterrole" },
                    )));
                };
                rbac::confirm_no_escalation(
                    a.user,
                    &self.rbac.rules_for(a.user, ns),
                    &wanted,
                    &what,
                )
            }
            _ => Ok(()),
        }
    }

    /// The rules `user` holds in `ns` (SelfSubjectRulesReview): RBAC's, or everything for
    /// `system:masters`.
    pub fn rules_for(&self, user: &User, ns: &str) -> Vec<rbac::Rule> {
        if user.groups.iter().any(|g| g == "system:masters")
            || self.config.authorization == Authorization::AlwaysAllow
        {
            let all = json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]});
            let urls = json!({"verbs": ["*"], "nonResourceURLs": ["*"]});
            return vec![rbac::Rule::from_json(&all), rbac::Rule::from_json(&urls)];
        }
        self.rbac.rules_for(user, ns)
    }

    /// Answers a SelfSubjectAccessReview or SubjectAccessReview (may `spec`'s subject do
    /// this?) or a SelfSubjectRulesReview (what may the caller do in a namespace?).
    pub fn access_review(&self, caller: &User, review: &Value) -> Result<Value, ApiError> {
        let kind = review["kind"].as_str().unwrap_or_default();
        let spec = &review["spec"];
        let mut out = review.clone();
        out["apiVersion"] = json!("authorization.k8s.io/v1");
        if kind == "SelfSubjectRulesReview" {
            let ns = spec["namespace"].as_str().unwrap_or_default();
            let rules = self.rules_for(caller, ns);
            let (urls, res): (Vec<_>, Vec<_>) =
                rules.iter().partition(|r| !r.non_resource_urls.is_empty());
            let res: Vec<Value> = res.iter().map(|r| r.to_json()).collect();
            let urls: Vec<Value> = urls
                .iter()
                .map(|r| json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}))
                .collect();
            // The Node authorizer's graph permissions are not rules: a node's list is partial.
            let incomplete = node_authz::node_identity(caller).is_some();
            out["status"] =
                json!({"resourceRules": res, "nonResourceRules": urls, "incomplete": incomplete});
            return Ok(out);
        }
        let subject = if kind == "SubjectAccessReview" {
            let strings = |v: &Value| -> Vec<String> {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            };
            User {
                name: spec["user"].as_str().unwrap_or_default().to_string(),
                uid: spec["uid"].as_str().unwrap_or_default().to_string(),
                groups: strings(&spec["groups"]),
                extra: Default::default(),
            }
        } else {
            caller.clone()
        };
        let ra = &spec["resourceAttributes"];
        let na = &spec["nonResourceAttributes"];
        let s = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
        let (verb, group, resource, sub, ns, name, path) = if ra.is_object() {
            (
                s(ra, "verb"),
                s(ra, "group"),
                s(ra, "resource"),
                s(ra, "subresource"),
                s(ra, "namespace"),
                s(ra, "name"),
                String::new(),
            )
        } else if na.is_object() {
            (
                s(na, "verb"),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                s(na, "path"),
            )
        } else {
            let mut e = Errors::default();
            e.required(
                "spec.resourceAttributes",
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            );
            return Err(ApiError::invalid(&format!("{kind}.authorization.k8s.io"), "", e.0));
        };
        let fields = s(&ra["fieldSelector"], "rawSelector");
        let info = RequestInfo {
            verb: &verb,
            group: &group,
            resource: &resource,
            subresource: &sub,
            namespace: &ns,
            name: &name,
            field_selector: &fields,
            path: &path,
        };
        // A group left empty means the core group, not "the resource's group".
        let mut a = info.by(&subject);
        a.group = &group;
        let (allowed, denied, reason) = match self.decide(&a) {
            Decision::Allow => (true, false, String::new()),
            Decision::Deny(why) => (false, true, why),
            Decision::NoOpinion => (false, false, String::new()),
        };
        let mut status = json!({"allowed": allowed});
        if denied {
            status["denied"] = json!(true);
        }
        if !reason.is_empty() {
            status["reason"] = json!(reason);
        }
        out["status"] = status;
        Ok(out)
    }

    /// kube-public/cluster-info (the cluster's kubeconfig without credentials), readable by
    /// anyone: a joining node reads it and trusts it only if the CA matches its pinned hash.
    /// Every member publishes at start; the first one's server address stays (members would
    /// otherwise overwrite each other's), and the CA is brought up to date.
    async fn publish_cluster_info(&self, me: &User, kubeconfig: &str) -> Result<(), ApiError> {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cluster-info", "namespace": "kube-public"},
            "data": {"kubeconfig": kubeconfig}});
        let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "flotilla:bootstrap-signer-clusterinfo", "namespace": "kube-public"},
            "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"],
                "resourceNames": ["cluster-info"]}]});
        let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "flotilla:bootstrap-signer-clusterinfo", "namespace": "kube-public"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                "name": "flotilla:bootstrap-signer-clusterinfo"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:anonymous"}]});
        let ca_of = |text: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with("certificate-authority-data:"))
                .map(str::to_string)
        };
        for (plural, obj) in [("configmaps", cm), ("roles", role), ("rolebindings", binding)] {
            let info = flotilla_api::lookup(plural).expect("registered");
            match self
                .create(me, info, "kube-public", encode(&obj).as_ref(), false, APISERVER_MANAGER)
                .await
            {
                Ok(_) => {}
                Err(e) if e.reason == Reason::AlreadyExists && plural == "configmaps" => {
                    let mut cur = self.get(info, "kube-public", "cluster-info").await?;
                    let published = cur["data"]["kubeconfig"].as_str().unwrap_or_default();
                    if ca_of(published) != ca_of(kubeconfig) {
                        cur["data"]["kubeconfig"] = json!(kubeconfig);
                        match self
                            .update(
                                me,
                                info,
                                "kube-public",
                                encode(&cur).as_ref(),
                                "",
                                false,
                                APISERVER_MANAGER,
                            )
                            .await
                        {
                            Ok(_) => {}
                            // Another member published at the same moment: theirs stands.
                            Err(e) if e.reason == Reason::Conflict => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) if e.reason == Reason::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Creates the default roles and bindings that are missing, and brings back those marked
    /// `rbac.authorization.kubernetes.io/autoupdate: "true"` that were changed (Kubernetes'
    /// RBAC bootstrap reconciliation: new releases may add permissions).
    async fn reconcile_bootstrap_policy(&self, me: &User) -> Result<(), ApiError> {
        for (plural, obj) in rbac::bootstrap_policy() {
            let info = flotilla_api::lookup(plural).expect("registered");
            let name = meta_str(&obj, "name").to_string();
            match self.create(me, info, "", encode(&obj).as_ref(), false, APISERVER_MANAGER).await {
                Ok(_) => continue,
                Err(e) if e.reason == Reason::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            let current = self.get(info, "", &name).await?;
            let auto = current
                .pointer("/metadata/annotations/rbac.authorization.kubernetes.io~1autoupdate")
                .and_then(Value::as_str)
                == Some("true");
            let fields = ["rules", "aggregationRule", "roleRef", "subjects"];
            if !auto || fields.iter().all(|f| current.get(f) == obj.get(f) || obj.get(f).is_none())
            {
                continue;
            }
            let mut new = current.clone();
            for f in fields {
                if let Some(v) = obj.get(f) {
                    new[f] = v.clone();
                }
            }
            tracing::info!(%plural, %name, "reconciling a default RBAC object");
            match self
                .update(me, info, "", encode(&new).as_ref(), "", false, APISERVER_MANAGER)
                .await
            {
                Ok(_) => {}
                // Members start together and reconcile the same objects: one write wins.
                Err(e) if e.reason == Reason::Conflict => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The configured authenticators first, then service-account tokens (built in, as in
    /// Kubernetes); no credentials make an anonymous caller, wrong ones an error.
    fn authenticate(&self, credentials: &Credentials) -> Result<User, ApiError> {
        // Kubernetes' order: x509 client certificates, then tokens.
        if let Some((cn, orgs)) = &credentials.client_cert {
            let mut groups = orgs.clone();
            groups.push("system:authenticated".into());
            return Ok(User {
                name: cn.clone(),
                uid: String::new(),
                groups,
                extra: Default::default(),
            });
        }
        if let Some(user) = self.seams.authenticate(credentials)? {
            return Ok(user);
        }
        let Some(token) = credentials.bearer.as_deref() else {
            return Ok(User::anonymous());
        };
        if let Some((id, secret)) = flotilla_pki::bootstrap_token_parts(token) {
            return tokens::bootstrap_user(&self.caches["secrets"], id, secret)
                .map_err(|why| ApiError::new(Reason::Unauthorized, why));
        }
        match self.review(token, &[]) {
            Ok(u) => Ok(User {
                name: u["username"].as_str().unwrap_or_default().into(),
                uid: u["uid"].as_str().unwrap_or_default().into(),
                groups: u["groups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|g| g.as_str().map(String::from))
                    .collect(),
                extra: serde_json::from_value(u["extra"].clone()).unwrap_or_default(),
            }),
            Err(e) => {
                tracing::debug!(error = %e, "refused a bearer token");
                Err(ApiError::new(Reason::Unauthorized, format!("invalid bearer token: {e}")))
            }
        }
    }

    pub fn resource(&self, name: &str) -> Result<&'static ResourceInfo, ApiError> {
        flotilla_api::lookup(name).ok_or_else(|| {
            ApiError::new(
                Reason::NotFound,
                format!("the server doesn't have a resource type \"{name}\""),
            )
        })
    }

    pub fn cache(&self, info: &ResourceInfo) -> &Arc<WatchCache> {
        &self.caches[info.plural]
    }

    fn check_namespace_arg(info: &ResourceInfo, ns: &str) -> Result<(), ApiError> {
        if info.namespaced && ns.is_empty() {
            return Err(ApiError::bad_request(format!(
                "{} are namespaced: a namespace is required",
                info.plural
            )));
        }
        Ok(())
    }

    /// The namespace must exist and not be terminating for anything to be created in it.
    async fn ensure_namespace(&self, ns: &str) -> Result<(), ApiError> {
        let info = flotilla_api::lookup("namespaces").expect("registered");
        let obj = match self.cache(info).get(ns) {
            Some(o) => o.value.clone(),
            None => match self.kv.get(&info.key("", ns)).await? {
                Some(kv) => serde_json::from_slice(&kv.value).unwrap_or(Value::Null),
                None => return Err(ApiError::not_found("namespaces", ns)),
            },
        };
        let terminating = obj.pointer("/status/phase").and_then(Value::as_str)
            == Some("Terminating")
            || !meta_str(&obj, "deletionTimestamp").is_empty();
        if terminating {
            return Err(ApiError::forbidden(format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            )));
        }
        Ok(())
    }

    /// Reads one object from the store: its value and mod revision.
    async fn read(
        &self,
        info: &ResourceInfo,
        ns: &str,
        name: &str,
    ) -> Result<(Value, i64), ApiError> {
        self.read_checked(info, ns, name).await.map(|(v, rev, _)| (v, rev))
    }

    /// `read`, and whether the stored value was encrypted with a key that no longer writes.
    async fn read_checked(
        &self,
        info: &ResourceInfo,
        ns: &str,
        name: &str,
    ) -> Result<(Value, i64, bool), ApiError> {
        let (kv, stale) = self
            .kv
            .get_checked(&info.key(ns, name))
            .await?
            .ok_or_else(|| ApiError::not_found(&info.qualified_plural(), name))?;
        let v: Value = serde_json::from_slice(&kv.value).map_err(|e| {
            ApiError::internal(format!("stored {} {ns}/{name} is corrupt: {e}", info.kind))
        })?;
        Ok((v, kv.mod_revision, stale))
    }

    /// Create: mutating admission, the kind's strategy (defaults, prepare, validation,
    /// allocation), validating admission, storage.
    pub async fn create(
        &self,
        user: &User,
        info: &'static ResourceInfo,
        ns: &str,
        body: &[u8],
        dry_run: bool,
        manager: &str,
    ) -> Result<Written, ApiError> {
        let v = parse_object(info, body)?;
        self.create_value(user, info, ns, v, dry_run, Some(manager)).await
    }

    /// Create of a parsed object. `manager`: the field manager this create is recorded for;
    /// `None` when the object's managedFields are recorded already (server-side apply).
    async fn create_value(
        &self,
        user: &User,
        info: &'static ResourceInfo,
        ns: &str,
        mut v: Value,
        dry_run: bool,
        manager: Option<&str>,
    ) -> Result<Written, ApiError> {
        // The request's own managedFields, if it sets valid ones, are where ownership starts.
        let requested = managed::starting_entries(None, &v, "");
        v["apiVersion"] = Value::String(info.api_version());
        v["kind"] = Value::String(info.kind.into());
        let obj_ns = meta_str(&v, "namespace").to_string();
        let ns = object_namespace(info, ns, &obj_ns)?;
        let m = meta_mut(&mut v);
        if info.namespaced {
            m.insert("namespace".into(), Value::String(ns.clone()));
        }
        let name = m.get("name").and_then(Value::as_str).unwrap_or("").to_string();
        if name.is_empty() {
            let gen = m.get("generateName").and_then(Value::as_str).unwrap_or("").to_string();
            if !gen.is_empty() {
                m.insert("name".into(), Value::String(format!("{gen}{}", random_suffix(5))));
            }
        }
        for server_owned in
            ["resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"]
        {
            m.remove(server_owned);
        }
        m.insert("uid".into(), Value::String(uuid::Uuid::new_v4().to_string()));
        m.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
        m.insert("generation".into(), json!(1));
        let strategy = strategy::of(info.kind);
        // Status is the controllers' and agents' to write (unless the kind says otherwise).
        if info.has_status && !strategy.status_on_create() {
            if let Some(o) = v.as_object_mut() {
                o.remove("status");
            }
        }
        if let Some(manager) = manager {
            let (api_version, now) = (info.api_version(), now_rfc3339());
            let who = managed::Manager {
                name: manager,
                subresource: "",
                api_version: &api_version,
                now: &now,
            };
            managed::track_update(&json!({}), &mut v, requested, &who);
        }
        let attrs_name = meta_str(&v, "name").to_string();
        let attrs = RequestInfo::new("create", info.plural).at(&ns, &attrs_name).by(user);
        self.seams.mutate(&attrs, &mut v, None)?;
        if info.plural == "certificatesigningrequests" && v["spec"].is_object() {
            // Who asks is the server's to say: signers and approvers trust these fields.
            let spec = &mut v["spec"];
            spec["username"] = json!(user.name);
            spec["groups"] = json!(user.groups);
            spec["uid"] = if user.uid.is_empty() { Value::Null } else { json!(user.uid) };
            spec["extra"] = if user.extra.is_empty() { Value::Null } else { json!(user.extra) };
        }
        let mut admitted = (info.admit)(&v, None, info)?;
        let name = meta_str(&admitted.object, "name").to_string();
        if info.namespaced {
            self.ensure_namespace(&ns).await?;
        }
        strategy.prepare_for_create(self, &ns, &mut admitted.object);
        self.validate_write(&attrs, Some(&admitted.object), None, &mut admitted.warnings)?;
        let key = info.key(&ns, &name);
        let allocates = strategy.allocates();
        for attempt in 0..32 {
            // Each attempt allocates a Service's addresses afresh from the admitted object;
            // nothing else is allocated, so nothing else needs a copy.
            let mut obj = if allocates { admitted.object.clone() } else { admitted.object.take() };
            let plan = if allocates {
                strategy.allocate_create(self, &mut obj, attempt)?
            } else {
                alloc::Plan::default()
            };
            if dry_run {
                // A dry run fails as the write would: an existing name is AlreadyExists.
                if self.kv.get(&key).await?.is_some() {
                    return Err(ApiError::already_exists(&info.qualified_plural(), &name));
                }
                return Ok(Written::new(obj, None, admitted.warnings));
            }
            let stored = Bytes::from(to_store(&obj));
            let mut conds = vec![Cond::Absent(key.clone())];
            let mut ops = vec![Op::Put(key.clone(), stored.to_vec())];
            plan.add_to(&key, &mut conds, &mut ops);
            // The response is the stored bytes: the object itself goes to the cache.
            let (outcome, kept) =
                self.write_handing_over(info, &key, &stored, obj, conds, ops).await;
            match outcome? {
                Some(rev) => {
                    let object = kept.map(|o| with_rv(o, rev)).unwrap_or(Value::Null);
                    return Ok(Written::new(object, served(&stored, rev), admitted.warnings));
                }
                None => {
                    if !allocates {
                        // Taken by a concurrent write of the same key: this one lost anyway.
                        let Some(obj) = kept else {
                            return Err(ApiError::already_exists(&info.qualified_plural(), &name));
                        };
                        admitted.object = obj;
                    }
                    if self.kv.get(&key).await?.is_some() {
                        return Err(ApiError::already_exists(&info.qualified_plural(), &name));
                    }
                    // An allocation raced another service: a user-chosen one is an error,
                    // a random one is picked again.
                    plan.check_taken(self, info, &name).await?;
                }
            }
        }
        Err(ApiError::new(Reason::Unavailable, "could not allocate service addresses; retry"))
    }

    pub async fn get(
        &self,
        info: &'static ResourceInfo,
        ns: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        Self::check_namespace_arg(info, ns)?;
        let (v, rev) = self.read(info, if info.namespaced { ns } else { "" }, name).await?;
        Ok(with_rv(v, rev))
    }

    /// The list verb: selectors parsed, one page from the watch cache (or the store, for a
    /// continued list whose snapshot the cache no longer has).
    pub async fn list_objects(
        &self,
        info: &'static ResourceInfo,
        ns: &str,
        opts: &ListOptions,
    ) -> Result<List, ApiError> {
        let f = Filter::new(info, ns, &opts.label_selector, &opts.field_selector)?;
        let exact;
        let token = if opts.exact_revision > 0 && opts.continue_token.is_empty() {
            let current = self.kv.current_revision().await?;
            if opts.exact_revision > current {
                return Err(ApiError::new(
                    Reason::Timeout,
                    format!(
                        "Too large resource version: {}, current: {current}",
                        opts.exact_revision
                    ),
                ));
            }
            // An exact list is a list continued from before its first key at that revision.
            exact = encode_continue(opts.exact_revision, "");
            &exact
        } else {
            &opts.continue_token
        };
        let page = self.list(info, &f, opts.limit, token).await?;
        Ok(List {
            items: page.items,
            resource_version: page.rev.to_string(),
            continue_token: page
                .next
                .as_deref()
                .map(|k| encode_continue(page.rev, k))
                .unwrap_or_default(),
            remaining_item_count: page.remaining,
        })
    }

    /// The watch verb's start: selectors and resourceVersion parsed, a subscription to the
    /// resource's cache from that revision (0: now, after the initial state if asked for).
    #[allow(clippy::type_complexity)]
    pub fn watch_start(
        &self,
        info: &'static ResourceInfo,
        ns: &str,
        label_selector: &str,
        field_selector: &str,
        resource_version: &str,
        send_initial_events: bool,
    ) -> Result<(Filter, i64, Arc<WatchCache>, cache::Subscription), ApiError> {
        let f = Filter::new(info, ns, label_selector, field_selector)?;
        let from: i64 = match resource_version {
            "" | "0" => 0,
            v => v.parse().map_err(|_| {
                ApiError::bad_request(format!("resourceVersion {v:?} is not a revision"))
            })?,
        };
        let cache = self.cache(info).clone();
        let sub = cache.subscribe(from, &f, send_initial_events)?;
        Ok((f, from, cache, sub))
    }

    pub async fn list(
        &self,
        info: &'static ResourceInfo,
        f: &Filter,
        limit: i64,
        continue_token: &str,
    ) -> Result<cache::ListPage, ApiError> {
        let limit = limit.max(0) as usize;
        let token =
            if continue_token.is_empty() { None } else { Some(decode_continue(continue_token)?) };
        let target = self.kv.current_revision().await?;
        let cache = self.cache(info);
        cache.wait_for(target, self.config.sync_timeout).await?;
        let Some(token) = token else {
            return Ok(cache.list(f, limit, None));
        };
        // Every page shows the first page's snapshot, as in Kubernetes. The cache serves it
        // while nothing of this type has changed since; otherwise the store does, at that
        // revision.
        if let Some(page) = cache.list_at(f, limit, &token.start, token.rv) {
            return Ok(page);
        }
        let prefix = info.key_prefix();
        let mut from = format!("{prefix}{}", token.start).into_bytes();
        from.push(0);
        let end = match f.namespace.as_str() {
            "" => kv::prefix_end(prefix.as_bytes()),
            ns => kv::prefix_end(format!("{prefix}{ns}/").as_bytes()),
        };
        let kvs = self.kv.range_at(&from, &end, token.rv).await?;
        let mut page = cache::PageBuilder::new(limit, token.rv);
        for kv in kvs {
            let Ok(v) = serde_json::from_slice::<Value>(&kv.value) else { continue };
            let key = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
            let o = cache::CachedObject::stored(key, v, kv.mod_revision, &kv.value);
            page.offer(f, &Arc::new(o));
        }
        Ok(page.finish())
    }

    /// Replaces an object (or only its status). Without a resourceVersion the write is
    /// unconditional (retried against the newest version); with one, a stale one conflicts.
    #[allow(clippy::too_many_arguments)]
    pub async fn update(
        &self,
        user: &User,
        info: &'static ResourceInfo,
        ns: &str,
        body: &[u8],
        subresource: &str,
        dry_run: bool,
        manager: &str,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let status = status_subresource(info, subresource)?;
        let input = parse_object(info, body)?;
        let name = meta_str(&input, "name").to_string();
        if name.is_empty() {
            let mut e = Errors::default();
            e.required("metadata.name", "");
            return Err(ApiError::invalid(&info.qualified_kind(), "", e.0));
        }
        let ns = object_namespace(info, ns, meta_str(&input, "namespace"))?;
        let rv: Option<i64> = match meta_str(&input, "resourceVersion") {
            "" => None,
            s => Some(s.parse().map_err(|_| {
                ApiError::bad_request(format!("metadata.resourceVersion {s:?} is not a revision"))
            })?),
        };
        let w = Target {
            user,
            verb: "update",
            subresource,
            info,
            ns: &ns,
            name: &name,
            rv,
            manager,
            applied: false,
        };
        self.write_loop(
            w,
            dry_run,
            |current| {
                Ok(Some(if status {
                    let mut new = current.clone();
                    new["status"] = input.get("status").cloned().unwrap_or(Value::Null);
                    new
                } else {
                    input.clone()
                }))
            },
            status,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        user: &User,
        info: &'static ResourceInfo,
        ns: &str,
        name: &str,
        kind: PatchKind,
        patch: &[u8],
        subresource: &str,
        dry_run: bool,
        manager: &str,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let status = status_subresource(info, subresource)?;
        Self::check_namespace_arg(info, ns)?;
        let ns = if info.namespaced { ns } else { "" };
        // A resourceVersion in the patch makes it conditional, as in Kubernetes.
        let rv = serde_json::from_slice::<Value>(patch)
            .ok()
            .and_then(|p| {
                p.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(String::from)
            })
            .and_then(|s| s.parse::<i64>().ok());
        let w = Target {
            user,
            verb: "patch",
            subresource,
            info,
            ns,
            name,
            rv,
            manager,
            applied: false,
        };
        self.write_loop(
            w,
            dry_run,
            |current| {
                let mut cur = current.clone();
                meta_mut(&mut cur).remove("resourceVersion");
                let mut out = flotilla_api::patch::apply(&cur, kind, patch)?;
                if status {
                    // Through the status path only status changes.
                    let st = out.get("status").cloned().unwrap_or(Value::Null);
                    out = current.clone();
                    out["status"] = st;
                }
                Ok(Some(out))
            },
            status,
        )
        .await
    }

    /// Server-side apply (`application/apply-patch+yaml`): `body`, a partial object in YAML or
    /// JSON, is merged into the object (created when missing) as `manager`'s configuration:
    /// the fields it sets become that manager's, the ones it applied before and leaves out now
    /// go unless someone else owns them, and a changed value another manager owns is a
    /// conflict unless `force`. Answers the object, warnings, and whether it was created.
    #[allow(clippy::too_many_arguments)]
    pub async fn apply(
        &self,
        user: &User,
        info: &'static ResourceInfo,
        ns: &str,
        name: &str,
        body: &[u8],
        subresource: &str,
        dry_run: bool,
        manager: &str,
        force: bool,
    ) -> Result<(Value, Vec<String>, bool), ApiError> {
        let status = status_subresource(info, subresource)?;
        Self::check_namespace_arg(info, ns)?;
        let ns = if info.namespaced { ns } else { "" };
        let mut config: Value = serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
        let Some(obj) = config.as_object_mut() else {
            return Err(ApiError::bad_request("the apply patch must be a map"));
        };
        let api_version = info.api_version();
        let sent_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        if sent_version != api_version {
            return Err(ApiError::bad_request(format!(
                "Incorrect version specified in apply patch. Specified patch version: {sent_version}, expected: {api_version}"
            )));
        }
        let sent_kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        if sent_kind != info.kind {
            return Err(ApiError::bad_request(format!(
                "Incorrect kind specified in apply patch. Specified patch kind: {sent_kind}, expected: {}",
                info.kind
            )));
        }
        // Status is the controllers' (through /status), the rest is not written there.
        if info.has_status {
            if status {
                obj.retain(|k, _| {
                    matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status")
                });
            } else {
                obj.remove("status");
            }
        }
        let meta = obj.entry("metadata").or_insert_with(|| json!({}));
        let Some(meta) = meta.as_object_mut() else {
            return Err(ApiError::bad_request("metadata: must be a map"));
        };
        if meta.get("managedFields").is_some_and(|m| !m.is_null()) {
            return Err(ApiError::bad_request("metadata.managedFields must be nil"));
        }
        meta.remove("managedFields");
        match meta.get("name").and_then(Value::as_str) {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )))
            }
            _ => {
                meta.insert("name".into(), json!(name));
            }
        }
        if info.namespaced {
            match meta.get("namespace").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
                _ => {
                    meta.insert("namespace".into(), json!(ns));
                }
            }
        }
        let rv = match meta.get("resourceVersion").and_then(Value::as_str) {
            None | Some("") => None,
            Some(s) => Some(s.parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!("metadata.resourceVersion {s:?} is not a revision"))
            })?),
        };
        meta.remove("resourceVersion");
        let now = now_rfc3339();
        let who =
            managed::Manager { name: manager, subresource, api_version: &api_version, now: &now };
        for _ in 0..2 {
            let w = Target {
                user,
                verb: "patch",
                subresource,
                info,
                ns,
                name,
                rv,
                manager,
                applied: true,
            };
            let out = self
                .write_loop(
                    w,
                    dry_run,
                    |current| managed::apply(Some(current), &config, &who, force).map(Some),
                    status,
                )
                .await;
            match out {
                Err(e) if e.reason == Reason::NotFound && !status && rv.is_none() => {}
                other => return other.map(|(v, w)| (v, w, false)),
            }
            // Apply creates what is missing.
            let obj = managed::apply(None, &config, &who, force)?;
            match self.create_value(user, info, ns, obj, dry_run, None).await {
                Ok(w) => {
                    let object = match w.object {
                        Value::Null => serde_json::from_slice(&w.json()).unwrap_or(Value::Null),
                        _ => w.object.clone(),
                    };
                    return Ok((object, w.warnings, true));
                }
                // Created meanwhile: apply to it.
                Err(e) if e.reason == Reason::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::conflict(
            &info.qualified_plural(),
            name,
            "too many concurrent writers; retry",
        ))
    }

    /// Read, transform, admit, write guarded by the read revision; retried when unconditional.
    async fn write_loop<F>(
        &self,
        target: Target<'_>,
        dry_run: bool,
        transform: F,
        status: bool,
    ) -> Result<(Value, Vec<String>), ApiError>
    where
        F: Fn(&Value) -> Result<Option<Value>, ApiError>,
    {
        let Target { info, ns, name, rv, .. } = target;
        let attrs = target.attributes();
        let what = info.qualified_plural();
        let strategy = strategy::of(info.kind);
        for _ in 0..WRITE_RETRIES {
            let (current, cur_rev, stale) = self.read_checked(info, ns, name).await?;
            if let Some(rv) = rv {
                if rv != cur_rev {
                    return Err(ApiError::conflict(&what, name, "the object has been modified; please apply your changes to the latest version and try again"));
                }
            }
            let Some(mut new) = transform(&current)? else {
                return Ok((with_rv(current, cur_rev), vec![]));
            };
            if !new.is_object() {
                // A JSON patch may replace the whole document ("path": "") with anything.
                let mut e = Errors::default();
                e.invalid("<root>", kind_of_json(&new), "the object must be a JSON map");
                return Err(ApiError::invalid(&info.qualified_kind(), name, e.0));
            }
            new["apiVersion"] = Value::String(info.api_version());
            new["kind"] = Value::String(info.kind.into());
            uid_precondition(&what, name, meta_str(&new, "uid"), &current)?;
            {
                let cm = current.get("metadata").cloned().unwrap_or(json!({}));
                let m = meta_mut(&mut new);
                m.insert("name".into(), Value::String(name.into()));
                if info.namespaced {
                    m.insert("namespace".into(), Value::String(ns.into()));
                }
                m.remove("resourceVersion");
                // Server-owned metadata always comes from the stored object.
                for k in [
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                ] {
                    match cm.get(k) {
                        Some(v) => m.insert(k.into(), v.clone()),
                        None => m.remove(k),
                    };
                }
            }
            if info.has_status && !status {
                match current.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(o) = new.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
            }
            if !target.applied {
                let entries = managed::starting_entries(Some(&current), &new, target.subresource);
                let (api_version, now) = (info.api_version(), now_rfc3339());
                let who = managed::Manager {
                    name: target.manager,
                    subresource: target.subresource,
                    api_version: &api_version,
                    now: &now,
                };
                managed::track_update(&current, &mut new, entries, &who);
            }
            self.seams.mutate(&attrs, &mut new, Some(&current))?;
            strategy.prepare_for_update(&current, &mut new, target.subresource);
            let mut admitted = (info.admit)(&new, Some(&current), info)?;
            let w = &mut admitted.warnings;
            self.validate_write(&attrs, Some(&admitted.object), Some(&current), w)?;
            let mut obj = admitted.object;
            if spec_part(&obj) != spec_part(&current) {
                let g =
                    current.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
                meta_mut(&mut obj).insert("generation".into(), json!(g + 1));
            }
            if obj == current && !stale {
                // Nothing changed: no write, the resourceVersion stays (apply is idempotent).
                // A value under an old key is written anyway: that is how keys rotate.
                return Ok((with_rv(obj, cur_rev), admitted.warnings));
            }
            if dry_run {
                return Ok((with_rv(obj, cur_rev), admitted.warnings));
            }
            let key = info.key(ns, name);
            let terminating = !meta_str(&obj, "deletionTimestamp").is_empty();
            let finalized = obj
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_none_or(|f| f.is_empty())
                && !strategy.held_by_spec(&obj);
            let mut conds = vec![Cond::ModRev(key.clone(), cur_rev)];
            let mut ops = Vec::new();
            let grace_left =
                obj.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64);
            if terminating && finalized && !strategy.needs_agent(&obj, grace_left.unwrap_or(0)) {
                // The last finalizer is gone: the object goes.
                ops.push(Op::Delete(key.clone()));
                strategy.release(&current, &mut ops);
            } else {
                ops.push(Op::Put(key.clone(), to_store(&obj)));
                if strategy.allocates() {
                    strategy
                        .allocate_update(self, &current, &mut obj)?
                        .add_to(&key, &mut conds, &mut ops);
                    ops[0] = Op::Put(key.clone(), to_store(&obj));
                }
            }
            match self.kv.txn(conds, ops).await? {
                Some(rev) => return Ok((with_rv(obj, rev), admitted.warnings)),
                None if rv.is_some() => {
                    return Err(ApiError::conflict(&what, name, "the object has been modified; please apply your changes to the latest version and try again"))
                }
                None => continue,
            }
        }
        Err(ApiError::conflict(&what, name, "too many concurrent writers; retry"))
    }

    /// Writes `stored` (the encoding of `obj`), handing `obj` to the watch cache so that its
    /// event needs no decoding. `obj` comes back when the write did not happen, or when its
    /// bytes are not in the servable layout and the cache was not given it.
    async fn write_handing_over(
        &self,
        info: &ResourceInfo,
        key: &str,
        stored: &Bytes,
        obj: Value,
        conds: Vec<Cond>,
        ops: Vec<Op>,
    ) -> (Result<Option<i64>, ApiError>, Option<Value>) {
        if !stored.starts_with(STORED_HEAD) {
            return (self.kv.txn(conds, ops).await, Some(obj));
        }
        let cache = self.cache(info);
        cache.expect(key, stored.clone(), obj);
        let outcome = self.kv.txn(conds, ops).await;
        let back = match outcome {
            Ok(Some(_)) => None,
            _ => cache.forget(key, stored),
        };
        (outcome, back)
    }

    /// The pods/binding subresource, as Kubernetes' BindingREST: spec.nodeName and
    /// PodScheduled=True are set on the stored pod in one guarded write. The pod was admitted
    /// when it was created and binding changes nothing else, so there is no second admission;
    /// that makes a binding a fraction of a patch's cost, and the scheduler makes one per pod.
    pub async fn bind(
        &self,
        user: &User,
        ns: &str,
        name: &str,
        body: &[u8],
    ) -> Result<(), ApiError> {
        let info = flotilla_api::lookup("pods").expect("registered");
        let attrs = RequestInfo::new("create", "pods").subresource("binding").at(ns, name).by(user);
        let b: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("Binding {name}: {e}")))?;
        let s = |ptr: &str| b.pointer(ptr).and_then(Value::as_str).unwrap_or("").to_string();
        let (kind, node, uid) = (s("/target/kind"), s("/target/name"), s("/metadata/uid"));
        if !s("/metadata/name").is_empty() && s("/metadata/name") != name {
            return Err(ApiError::bad_request(format!(
                "Binding {}: the name does not match the pod {name}",
                s("/metadata/name")
            )));
        }
        let mut errs = Errors::default();
        if !kind.is_empty() && kind != "Node" {
            errs.not_supported("target.kind", &kind, &["Node", ""]);
        }
        if node.is_empty() {
            errs.required("target.name", "");
        }
        if !errs.is_empty() {
            return Err(ApiError::invalid("Binding", name, errs.0));
        }
        let what = info.qualified_plural();
        // The first attempt starts from the watch cache's copy, already decoded: the write's
        // revision precondition refuses it if it is stale, and any refusal is decided again on
        // the store's copy, so a lagging cache can cost a retry but never change an answer.
        let cache_key = if ns.is_empty() { name.to_string() } else { format!("{ns}/{name}") };
        let mut cached = self.cache(info).get(&cache_key).and_then(|o| {
            let rv = meta_str(&o.value, "resourceVersion").parse::<i64>().ok()?;
            Some((o, rv))
        });
        for _ in 0..WRITE_RETRIES {
            let attempt = cached.take();
            let read;
            let (current, cur_rev) = match &attempt {
                Some((o, rv)) => (&o.value, *rv),
                None => {
                    read = self.read(info, ns, name).await?;
                    (&read.0, read.1)
                }
            };
            if let Some(e) = binding_refused(&what, name, &uid, current) {
                if attempt.is_some() {
                    continue;
                }
                return Err(e);
            }
            let mut pod = current.clone();
            pod["spec"]["nodeName"] = Value::String(node.clone());
            mark_scheduled(current, &mut pod);
            self.validate_write(&attrs, Some(&pod), Some(current), &mut Vec::new())?;
            let key = info.key(ns, name);
            let stored = Bytes::from(to_store(&pod));
            let put = vec![Op::Put(key.clone(), stored.to_vec())];
            let conds = vec![Cond::ModRev(key.clone(), cur_rev)];
            // Nobody needs the bound pod back: the cache takes it instead of decoding it.
            let (outcome, _) = self.write_handing_over(info, &key, &stored, pod, conds, put).await;
            if outcome?.is_some() {
                return Ok(());
            }
        }
        Err(ApiError::conflict(&what, name, "too many concurrent writers; retry"))
    }

    pub async fn delete(
        &self,
        user: &User,
        info: &'static ResourceInfo,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let (grace, dry_run) = (opts.grace_period_seconds, opts.dry_run);
        let (pre_uid, pre_rv) = (&opts.precondition_uid, &opts.precondition_resource_version);
        let propagation = opts.propagation_policy.as_str();
        Self::check_namespace_arg(info, ns)?;
        let ns = if info.namespaced { ns } else { "" };
        let attrs = RequestInfo::new("delete", info.plural).at(ns, name).by(user);
        let what = info.qualified_plural();
        let strategy = strategy::of(info.kind);
        let finalizer = match propagation {
            "" | "Background" => None,
            "Foreground" => Some("foregroundDeletion"),
            "Orphan" => Some("orphan"),
            other => {
                return Err(ApiError::bad_request(format!(
                    "propagationPolicy {other:?} is not one of Orphan, Background, Foreground"
                )))
            }
        };
        if grace.is_some_and(|g| g < 0) {
            return Err(ApiError::bad_request("gracePeriodSeconds must be >= 0"));
        }
        for _ in 0..WRITE_RETRIES {
            let (current, cur_rev) = self.read(info, ns, name).await?;
            if !pre_uid.is_empty() && pre_uid != meta_str(&current, "uid") {
                return Err(ApiError::conflict(
                    &what,
                    name,
                    &format!(
                    "Precondition failed: UID in precondition: {pre_uid}, UID in object meta: {}",
                    meta_str(&current, "uid")
                ),
                ));
            }
            if !pre_rv.is_empty() && *pre_rv != cur_rev.to_string() {
                return Err(ApiError::conflict(&what, name, &format!(
                    "Precondition failed: ResourceVersion in precondition: {pre_rv}, ResourceVersion in object meta: {cur_rev}"
                )));
            }
            self.validate_write(&attrs, None, Some(&current), &mut Vec::new())?;
            let key = info.key(ns, name);
            let mut obj = current.clone();
            let mut finalizers: Vec<Value> = obj
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if let Some(f) = finalizer {
                if !finalizers.iter().any(|x| x == f) {
                    finalizers.push(Value::String(f.into()));
                }
            }
            let held_by_spec = strategy.held_by_spec(&obj);
            let grace_period = strategy.deletion_grace(&obj, grace);
            let already = !meta_str(&obj, "deletionTimestamp").is_empty();
            let graceful =
                !finalizers.is_empty() || held_by_spec || strategy.needs_agent(&obj, grace_period);
            if dry_run {
                return Ok(with_rv(obj, cur_rev));
            }
            let ops;
            if graceful {
                let m = meta_mut(&mut obj);
                if !finalizers.is_empty() {
                    m.insert("finalizers".into(), Value::Array(finalizers));
                }
                let old_grace = m.get("deletionGracePeriodSeconds").and_then(Value::as_i64);
                // A second delete may shorten the grace period, never lengthen it.
                let g = match old_grace {
                    Some(o) if already => o.min(grace_period),
                    _ => grace_period,
                };
                if !already || old_grace != Some(g) {
                    let when = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(g);
                    m.insert(
                        "deletionTimestamp".into(),
                        Value::String(
                            jiff::Timestamp::from_second(when.as_second())
                                .unwrap_or(when)
                                .to_string(),
                        ),
                    );
                    m.insert("deletionGracePeriodSeconds".into(), json!(g));
                }
                strategy.mark_deleting(&mut obj);
                if obj == current {
                    return Ok(with_rv(obj, cur_rev));
                }
                // Nothing left to wait for (no grace, no finalizers): the object goes now.
                if g == 0
                    && !held_by_spec
                    && obj
                        .pointer("/metadata/finalizers")
                        .and_then(Value::as_array)
                        .is_none_or(|f| f.is_empty())
                {
                    let mut o = vec![Op::Delete(key.clone())];
                    strategy.release(&current, &mut o);
                    ops = o;
                } else {
                    ops = vec![Op::Put(key.clone(), to_store(&obj))];
                }
            } else {
                let mut o = vec![Op::Delete(key.clone())];
                strategy.release(&current, &mut o);
                ops = o;
            }
            match self.kv.txn(vec![Cond::ModRev(key.clone(), cur_rev)], ops).await? {
                Some(rev) => return Ok(with_rv(obj, rev)),
                None => continue,
            }
        }
        Err(ApiError::conflict(&what, name, "too many concurrent writers; retry"))
    }

    pub fn record(&self, verb: &str, resource: &str, started: Instant) {
        self.metrics.observe_request(verb, resource, started.elapsed());
    }
}

/// A uid in a write is a precondition: the stored object must be that one, not a namesake
/// created since.
/// Why `pod` cannot be bound: a uid precondition it fails, deletion, or a node it already has.
fn binding_refused(what: &str, name: &str, uid: &str, pod: &Value) -> Option<ApiError> {
    if let Err(e) = uid_precondition(what, name, uid, pod) {
        return Some(e);
    }
    if !meta_str(pod, "deletionTimestamp").is_empty() {
        let why = format!("pod {name} is being deleted, cannot be assigned to a host");
        return Some(ApiError::conflict(what, name, &why));
    }
    let bound = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("");
    (!bound.is_empty()).then(|| {
        let why = format!("pod {name} is already assigned to node {bound:?}");
        ApiError::conflict(what, name, &why)
    })
}

fn uid_precondition(what: &str, name: &str, want: &str, current: &Value) -> Result<(), ApiError> {
    let have = meta_str(current, "uid");
    if want.is_empty() || want == have {
        return Ok(());
    }
    let why =
        format!("Precondition failed: UID in precondition: {want}, UID in object meta: {have}");
    Err(ApiError::conflict(what, name, &why))
}

/// Binding a pod (its first spec.nodeName) sets PodScheduled=True, as Kubernetes' binding
/// subresource does, in the same write.
pub(crate) fn mark_scheduled(current: &Value, new: &mut Value) {
    let node =
        |v: &Value| v.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("").to_string();
    if !node(current).is_empty() || node(new).is_empty() {
        return;
    }
    let cond = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null,
                      "lastTransitionTime": now_rfc3339()});
    let status = new
        .as_object_mut()
        .and_then(|o| o.entry("status").or_insert_with(|| json!({})).as_object_mut());
    if let Some(st) = status {
        let conds = st.entry("conditions").or_insert_with(|| json!([]));
        if let Some(a) = conds.as_array_mut() {
            a.retain(|c| c["type"] != "PodScheduled");
            a.push(cond);
        }
    }
}

/// Where a paginated list goes on: the snapshot revision of its first page, and the last key
/// returned (relative to the resource's prefix).
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Continue {
    pub rv: i64,
    pub start: String,
}

/// Continue tokens are opaque to clients: base64 of `{"rv":…,"start":…}` (Kubernetes' shape).
pub fn encode_continue(rv: i64, key: &str) -> String {
    use base64::Engine;
    let json = serde_json::to_vec(&Continue { rv, start: key.to_string() }).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode_continue(token: &str) -> Result<Continue, ApiError> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| serde_json::from_slice::<Continue>(&b).ok())
        .filter(|c| c.rv > 0)
        .ok_or_else(|| ApiError::bad_request("invalid continue token: list again without it"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_bytes_are_served_with_the_revision_spliced_in() {
        let obj = json!({"apiVersion": "v1", "kind": "ControllerRevision",
            // A nested "metadata" sorted before the top-level one must not confuse the splice.
            "data": {"spec": {"template": {"metadata": {"labels": {"a": "b"}}}}},
            "metadata": {"name": "x", "namespace": "ns", "resourceVersion": "7",
                         "labels": {"app": "\"metadata\":{"}},
            "revision": 1});
        let stored = to_store(&obj);
        assert!(stored.starts_with(br#"{"metadata":{"#), "{}", String::from_utf8_lossy(&stored));
        let kept: Value = serde_json::from_slice(&stored).unwrap();
        assert!(kept["metadata"].get("resourceVersion").is_none());
        let out: Value = serde_json::from_slice(&served(&stored, 42).unwrap()).unwrap();
        assert_eq!(out, with_rv(obj.clone(), 42));

        // Empty metadata: no dangling comma.
        let bare = to_store(&json!({"metadata": {}, "kind": "X"}));
        let v: Value = serde_json::from_slice(&served(&bare, 3).unwrap()).unwrap();
        assert_eq!(v, json!({"metadata": {"resourceVersion": "3"}, "kind": "X"}));
        // An older layout (keys sorted) is not spliced: the caller re-encodes.
        assert!(served(&serde_json::to_vec(&obj).unwrap(), 1).is_none());
    }
}
