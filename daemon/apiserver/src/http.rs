//! Kubernetes' HTTP API: the second front over the request core, on the same port as gRPC.
//! kubectl, client-go, kube-rs and the Python client speak it. Like the gRPC front it only
//! decodes and encodes: every request goes through `service::run` (authentication,
//! authorization, audit, metrics) and the core's verbs, so both fronts give the same objects
//! and the same errors.
//!
//! Paths as Kubernetes' RequestInfo parses them:
//! `/api/v1[/namespaces/NS]/RESOURCE[/NAME[/SUBRESOURCE]]` and the same under
//! `/apis/GROUP/VERSION`; everything else is a non-resource path (discovery, health, version,
//! metrics, OpenAPI).

use super::cache::{json_event, Wire};
use super::request::{RequestInfo, User};
use super::scale::ScaleChange;
use super::service::{admit_logged, credentials_of, run, Audited};
use super::watch::{Watch, WATCH_QUEUE};
use super::{encode, ApiServer, DeleteOptions, ListOptions};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use flotilla_api::error::{ApiError, Errors, Reason};
use flotilla_api::patch::PatchKind;
use flotilla_api::table::{write_partial, write_table};
use flotilla_api::{ResourceInfo, RESOURCES};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// Request bodies larger than this are refused (as the gRPC front's message limit).
const MAX_BODY: usize = 64 << 20;

const JSON: &str = "application/json";

/// What an answer is: a body with its status code, content type and warnings.
struct Answer {
    code: StatusCode,
    body: Bytes,
    content_type: &'static str,
    warnings: Vec<String>,
    /// The audit log records the body (not for lists, which can be the whole cluster).
    audited: bool,
}

impl Answer {
    fn json(code: StatusCode, body: Bytes) -> Self {
        Answer { code, body, content_type: JSON, warnings: Vec::new(), audited: true }
    }

    fn value(code: StatusCode, v: &Value) -> Self {
        Self::json(code, encode(v))
    }

    fn unaudited(mut self) -> Self {
        self.audited = false;
        self
    }

    fn warn(mut self, warnings: Vec<String>) -> Self {
        self.warnings = warnings;
        self
    }

    fn into_response(self) -> Response {
        let mut r = Response::new(Body::from(self.body));
        *r.status_mut() = self.code;
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        add_warnings(r.headers_mut(), &self.warnings);
        r
    }
}

impl Audited for Answer {
    fn audit_body(&self) -> Option<&[u8]> {
        self.audited.then_some(&self.body[..])
    }
}

/// `Warning: 299 - "text"` headers, as Kubernetes sends warnings (kubectl prints them).
fn add_warnings(h: &mut HeaderMap, warnings: &[String]) {
    for w in warnings {
        let text = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{text}\"")) {
            h.append(header::WARNING, v);
        }
    }
}

/// An error as Kubernetes answers it: a `Status` object with the reason's HTTP code.
fn error_response(e: &ApiError, name: &str, group: &str, kind: &str) -> Response {
    let status = e.status_object(name, group, kind);
    let code = StatusCode::from_u16(e.reason.http_code()).unwrap_or(StatusCode::BAD_REQUEST);
    Answer::value(code, &status).into_response()
}

/// The query string, decoded.
struct Query(HashMap<String, String>);

impl Query {
    fn parse(q: Option<&str>) -> Self {
        Query(form_urlencoded::parse(q.unwrap_or("").as_bytes()).into_owned().collect())
    }

    fn get(&self, k: &str) -> &str {
        self.0.get(k).map_or("", String::as_str)
    }

    /// Go's strconv.ParseBool, as Kubernetes' query decoding: the Python client sends "True".
    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), "1" | "t" | "T" | "true" | "TRUE" | "True")
    }

    fn int(&self, k: &str) -> Result<Option<i64>, ApiError> {
        match self.get(k) {
            "" => Ok(None),
            v => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("{k}: {v:?} is not an integer"))),
        }
    }

    /// `dryRun=All` (the only value Kubernetes knows).
    fn dry_run(&self) -> Result<bool, ApiError> {
        match self.get("dryRun") {
            "" => Ok(false),
            "All" => Ok(true),
            v => Err(ApiError::bad_request(format!(
                "Invalid dry run value: {v:?}: supported values: \"All\""
            ))),
        }
    }
}

/// A resource request's path, as Kubernetes' RequestInfo parses it.
#[derive(Debug, Default, PartialEq)]
struct Target {
    group: String,
    version: String,
    /// The namespace in the path (for `/api/v1/namespaces/NAME` too, as upstream).
    namespace: String,
    resource: String,
    name: String,
    subresource: String,
    /// `/api/v1/watch/...` (deprecated, still served).
    watch_path: bool,
}

fn decode_segment(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// The resource a path names, or None for a non-resource path.
fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<String> =
        path.trim_matches('/').split('/').filter(|p| !p.is_empty()).map(decode_segment).collect();
    let (group, version, mut rest) = match parts.as_slice() {
        [api, v, rest @ ..] if api == "api" && !rest.is_empty() => (String::new(), v.clone(), rest),
        [apis, g, v, rest @ ..] if apis == "apis" && !rest.is_empty() => {
            (g.clone(), v.clone(), rest)
        }
        _ => return None,
    };
    let mut t = Target { group, version, ..Default::default() };
    if rest[0] == "watch" {
        t.watch_path = true;
        rest = &rest[1..];
        if rest.is_empty() {
            return None;
        }
    }
    if rest[0] == "namespaces" && rest.len() > 1 {
        t.namespace = rest[1].clone();
        if rest.len() > 2 && !matches!(rest[2].as_str(), "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    t.resource = rest[0].clone();
    t.name = rest.get(1).cloned().unwrap_or_default();
    t.subresource = rest.get(2).cloned().unwrap_or_default();
    Some(t)
}

/// The kinds of answer a client accepts, in its order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Object,
    Table,
    /// `PartialObjectMetadata` / `PartialObjectMetadataList`.
    Metadata,
}

fn accepted_form(headers: &HeaderMap) -> Form {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    for media in accept.split(',') {
        let mut params = media.split(';').map(str::trim);
        let ty = params.next().unwrap_or("");
        if !matches!(ty, "application/json" | "*/*" | "application/*" | "") {
            continue;
        }
        let p: HashMap<&str, &str> = params.filter_map(|p| p.split_once('=')).collect();
        match (p.get("as").copied(), p.get("g").copied()) {
            (None, _) => return Form::Object,
            (Some("Table"), Some("meta.k8s.io")) if p.get("v") == Some(&"v1") => {
                return Form::Table
            }
            (Some("PartialObjectMetadata" | "PartialObjectMetadataList"), Some("meta.k8s.io"))
                if p.get("v") == Some(&"v1") =>
            {
                return Form::Metadata
            }
            _ => continue,
        }
    }
    Form::Object
}

/// Resources that are only ever created (reviews): answered, never stored.
struct Virtual {
    group: &'static str,
    plural: &'static str,
    kind: &'static str,
}

const VIRTUAL: &[Virtual] = &[
    Virtual { group: "authentication.k8s.io", plural: "tokenreviews", kind: "TokenReview" },
    Virtual {
        group: "authentication.k8s.io",
        plural: "selfsubjectreviews",
        kind: "SelfSubjectReview",
    },
    Virtual {
        group: "authorization.k8s.io",
        plural: "selfsubjectaccessreviews",
        kind: "SelfSubjectAccessReview",
    },
    Virtual {
        group: "authorization.k8s.io",
        plural: "selfsubjectrulesreviews",
        kind: "SelfSubjectRulesReview",
    },
    Virtual {
        group: "authorization.k8s.io",
        plural: "subjectaccessreviews",
        kind: "SubjectAccessReview",
    },
];

/// The subresources each resource serves, with their verbs (discovery lists exactly these).
fn subresources(info: &ResourceInfo) -> Vec<(&'static str, &'static [&'static str])> {
    let mut out: Vec<(&'static str, &'static [&'static str])> = Vec::new();
    if info.has_status {
        out.push(("status", &["get", "patch", "update"]));
    }
    if super::scale::scalable(info) {
        out.push(("scale", &["get", "patch", "update"]));
    }
    match info.plural {
        "pods" => {
            out.push(("attach", &["create", "get"]));
            out.push(("binding", &["create"]));
            out.push(("eviction", &["create"]));
            out.push(("exec", &["create", "get"]));
            out.push(("log", &["get"]));
            out.push(("portforward", &["create", "get"]));
        }
        "serviceaccounts" => out.push(("token", &["create"])),
        "certificatesigningrequests" => out.push(("approval", &["get", "patch", "update"])),
        _ => {}
    }
    out
}

/// The group, version and kind of a subresource whose kind is not its resource's.
fn sub_kind(sub: &str) -> Option<(&'static str, &'static str, &'static str)> {
    match sub {
        "binding" => Some(("", "v1", "Binding")),
        "eviction" => Some(("policy", "v1", "Eviction")),
        "token" => Some(("authentication.k8s.io", "v1", "TokenRequest")),
        "scale" => Some(("autoscaling", "v1", "Scale")),
        _ => None,
    }
}

/// Kubernetes' categories: `kubectl get all` shows these.
fn categories(info: &ResourceInfo) -> &'static [&'static str] {
    match info.plural {
        "pods" | "services" | "deployments" | "replicasets" | "statefulsets" | "daemonsets"
        | "jobs" | "cronjobs" => &["all"],
        _ => &[],
    }
}

const VERBS: &[&str] =
    &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

/// The API group/versions served, in discovery order: the core group first.
fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    let all = RESOURCES
        .iter()
        .map(|r| (r.group, r.version))
        .chain(VIRTUAL.iter().map(|v| (v.group, "v1")));
    for gv in all {
        if !out.contains(&gv) {
            out.push(gv);
        }
    }
    out
}

fn gv_string(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// `/api/v1`, `/apis/apps/v1`: an APIResourceList.
fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == group && r.version == version) {
        let mut e = json!({"name": r.plural, "singularName": r.kind.to_ascii_lowercase(),
            "namespaced": r.namespaced, "kind": r.kind, "verbs": VERBS});
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !categories(r).is_empty() {
            e["categories"] = json!(categories(r));
        }
        resources.push(e);
        for (sub, verbs) in subresources(r) {
            let mut e = json!({"name": format!("{}/{sub}", r.plural), "singularName": "",
                "namespaced": r.namespaced, "kind": r.kind, "verbs": verbs});
            // A subresource of another kind names its group and version (kubectl drain
            // looks for policy/v1 Eviction here).
            if let Some((g, v, kind)) = sub_kind(sub) {
                e["kind"] = json!(kind);
                e["group"] = json!(g);
                e["version"] = json!(v);
            }
            resources.push(e);
        }
    }
    for v in VIRTUAL.iter().filter(|v| v.group == group && version == "v1") {
        resources.push(json!({"name": v.plural, "singularName": v.kind.to_ascii_lowercase(),
            "namespaced": false, "kind": v.kind, "verbs": ["create"]}));
    }
    if resources.is_empty() {
        return None;
    }
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": gv_string(group, version), "resources": resources}))
}

fn api_group(group: &str) -> Value {
    let versions: Vec<Value> = group_versions()
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(g, v)| json!({"groupVersion": gv_string(g, v), "version": v}))
        .collect();
    json!({"name": group, "versions": versions, "preferredVersion": versions[0]})
}

/// `/apis`: an APIGroupList.
fn group_list() -> Value {
    let mut groups: Vec<&str> = Vec::new();
    for (g, _) in group_versions() {
        if !g.is_empty() && !groups.contains(&g) {
            groups.push(g);
        }
    }
    let groups: Vec<Value> = groups.into_iter().map(api_group).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// Aggregated discovery (`apidiscovery.k8s.io/v2`): every group's resources in one document,
/// for `/api` (the core group) or `/apis` (the others). kubectl 1.26+ asks for it first.
fn aggregated(core: bool, api_version: &str) -> Value {
    let mut items = Vec::new();
    let mut groups: Vec<&str> = Vec::new();
    for (g, _) in group_versions() {
        if g.is_empty() == core && !groups.contains(&g) {
            groups.push(g);
        }
    }
    for g in groups {
        let versions: Vec<Value> = group_versions()
            .into_iter()
            .filter(|(gg, _)| *gg == g)
            .map(|(_, v)| {
                let mut resources = Vec::new();
                for r in RESOURCES.iter().filter(|r| r.group == g && r.version == v) {
                    let kind = json!({"group": g, "version": v, "kind": r.kind});
                    let subs: Vec<Value> = subresources(r)
                        .into_iter()
                        .map(|(sub, verbs)| {
                            let k = match sub_kind(sub) {
                                Some((g, v, k)) => json!({"group": g, "version": v, "kind": k}),
                                None => kind.clone(),
                            };
                            json!({"subresource": sub, "responseKind": k, "verbs": verbs})
                        })
                        .collect();
                    let mut e = json!({"resource": r.plural, "responseKind": kind,
                        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": r.kind.to_ascii_lowercase(), "verbs": VERBS});
                    if !r.short_names.is_empty() {
                        e["shortNames"] = json!(r.short_names);
                    }
                    if !categories(r).is_empty() {
                        e["categories"] = json!(categories(r));
                    }
                    if !subs.is_empty() {
                        e["subresources"] = Value::Array(subs);
                    }
                    resources.push(e);
                }
                for vr in VIRTUAL.iter().filter(|vr| vr.group == g && v == "v1") {
                    resources.push(json!({"resource": vr.plural,
                        "responseKind": {"group": g, "version": v, "kind": vr.kind},
                        "scope": "Cluster", "singularResource": vr.kind.to_ascii_lowercase(),
                        "verbs": ["create"]}));
                }
                json!({"version": v, "resources": resources, "freshness": "Current"})
            })
            .collect();
        let mut meta = json!({"creationTimestamp": null});
        if !g.is_empty() {
            meta["name"] = json!(g);
        }
        items.push(json!({"metadata": meta, "versions": versions}));
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": api_version, "metadata": {},
        "items": items})
}

/// The aggregated discovery version the client accepts, if any.
fn wants_aggregated(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    for media in accept.split(',') {
        let p: HashMap<&str, &str> =
            media.split(';').skip(1).filter_map(|p| p.trim().split_once('=')).collect();
        if p.get("g") == Some(&"apidiscovery.k8s.io")
            && p.get("as") == Some(&"APIGroupDiscoveryList")
        {
            match p.get("v") {
                Some(&"v2") => return Some("v2"),
                Some(&"v2beta1") => return Some("v2beta1"),
                _ => {}
            }
        }
    }
    None
}

fn peer(req: &Request) -> Option<&flotilla_pki::tls::Peer> {
    req.extensions().get::<flotilla_pki::tls::Peer>()
}

/// Every request that is not gRPC.
pub async fn handle(s: Arc<ApiServer>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    match parse_path(&path) {
        Some(t) => resource(&s, req, t).await,
        None => non_resource(&s, &path, req).await,
    }
}

/// Discovery, health, version and metrics: authorized as non-resource requests.
async fn non_resource(s: &Arc<ApiServer>, path: &str, req: Request) -> Response {
    let verb = req.method().as_str().to_ascii_lowercase();
    let creds = credentials_of(req.headers(), peer(&req));
    let source = peer(&req).and_then(|p| p.addr);
    let r = RequestInfo::non_resource(&verb, path);
    let s2 = s.clone();
    let headers = req.headers().clone();
    let query = Query::parse(req.uri().query());
    let is_get = verb == "get";
    let out = run(s, creds, source, r, None, |_| async move {
        if !is_get {
            return Err(ApiError::new(
                Reason::NotFound,
                "the server could not find the requested resource",
            ));
        }
        non_resource_body(&s2, path, &headers, &query).await
    })
    .await;
    match out {
        Ok(a) => a.into_response(),
        Err(e) => error_response(&e, "", "", ""),
    }
}

async fn non_resource_body(
    s: &ApiServer,
    path: &str,
    headers: &HeaderMap,
    query: &Query,
) -> Result<Answer, ApiError> {
    let not_found =
        || ApiError::new(Reason::NotFound, "the server could not find the requested resource");
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ok = |v: Value| Ok(Answer::value(StatusCode::OK, &v));
    match parts.as_slice() {
        ["api"] | ["apis"] => {
            if let Some(v) = wants_aggregated(headers) {
                let doc = aggregated(parts[0] == "api", &format!("apidiscovery.k8s.io/{v}"));
                let mut a = Answer::value(StatusCode::OK, &doc);
                a.content_type = if v == "v2" {
                    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
                } else {
                    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
                };
                return Ok(a);
            }
            if parts[0] == "api" {
                ok(json!({"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": []}))
            } else {
                ok(group_list())
            }
        }
        ["api", v] => resource_list("", v).map_or_else(|| Err(not_found()), ok),
        ["apis", g] => {
            if group_versions().iter().any(|(gg, _)| gg == g) {
                let mut doc = api_group(g);
                doc["kind"] = json!("APIGroup");
                doc["apiVersion"] = json!("v1");
                ok(doc)
            } else {
                Err(not_found())
            }
        }
        ["apis", g, v] => resource_list(g, v).map_or_else(|| Err(not_found()), ok),
        ["version"] => ok(json!({"major": "1", "minor": "35",
            "gitVersion": concat!("v1.35.0-flotilla.", env!("CARGO_PKG_VERSION")),
            "gitCommit": "", "gitTreeState": "clean", "buildDate": "",
            "goVersion": "", "compiler": "rustc",
            "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH)})),
        ["openapi", "v2"] => {
            Ok(Answer::json(StatusCode::OK, Bytes::from_static(super::openapi::v2())).unaudited())
        }
        ["openapi", "v3"] => ok(super::openapi::v3_root()),
        ["openapi", "v3", rest @ ..] => super::openapi::v3(&rest.join("/"))
            .map(|d| Answer::json(StatusCode::OK, Bytes::from_static(d)).unaudited())
            .ok_or_else(not_found),
        ["metrics"] => {
            let mut a = Answer::json(StatusCode::OK, Bytes::from(s.metrics.render()));
            a.content_type = "text/plain; version=0.0.4";
            a.audited = false;
            Ok(a)
        }
        [check @ ("healthz" | "livez" | "readyz"), rest @ ..] => {
            // Two checks, both real: this process answers, and the store serves a read.
            let store = s.kv.current_revision().await.map(|_| ()).map_err(|e| e.message);
            let (code, body) = match (rest, &store) {
                ([], Ok(())) if query.0.contains_key("verbose") => {
                    (StatusCode::OK, format!("[+]ping ok\n[+]etcd ok\n{check} check passed\n"))
                }
                ([], Err(e)) if query.0.contains_key("verbose") => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("[+]ping ok\n[-]etcd failed: {e}\n{check} check failed\n"),
                ),
                ([] | ["etcd"], Err(e)) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, format!("[-]etcd failed: {e}\n"))
                }
                ([] | ["ping"] | ["etcd"], _) => (StatusCode::OK, "ok".to_string()),
                _ => return Err(not_found()),
            };
            let mut a = Answer::json(code, Bytes::from(body));
            a.content_type = "text/plain; charset=utf-8";
            Ok(a)
        }
        _ => Err(not_found()),
    }
}

/// What a resource request asks, once its path and method are read.
struct Ask<'a> {
    verb: &'static str,
    t: &'a Target,
    info: Option<&'static ResourceInfo>,
    /// The namespace the core sees ("" for cluster-scoped resources).
    ns: &'a str,
}

async fn resource(s: &Arc<ApiServer>, req: Request, t: Target) -> Response {
    let info = RESOURCES
        .iter()
        .find(|r| r.group == t.group && r.version == t.version && r.plural == t.resource);
    let group = t.group.clone();
    let kind_name = t.resource.clone();
    let name = t.name.clone();
    let virt = VIRTUAL.iter().find(|v| v.group == t.group && v.plural == t.resource);
    if info.is_none() && (virt.is_none() || t.version != "v1") {
        let e = ApiError::new(Reason::NotFound, "the server could not find the requested resource");
        return error_response(&e, &name, &group, &kind_name);
    }
    if t.group.is_empty()
        && t.resource == "pods"
        && !t.name.is_empty()
        && matches!(t.subresource.as_str(), "exec" | "attach" | "portforward")
    {
        let (ns, sub) = (t.namespace.clone(), t.subresource.clone());
        return match super::remotecommand::handle(s, req, &ns, &name, &sub).await {
            Ok(r) => r,
            Err(e) => {
                // kubectl retries a failed WebSocket upgrade with SPDY and hides this answer.
                tracing::debug!(pod = %name, error = %e.message, "pods/{sub} refused");
                error_response(&e, &name, "", "pods")
            }
        };
    }
    let query = Query::parse(req.uri().query());
    let watching = t.watch_path || query.flag("watch");
    let verb = match (req.method().clone(), t.name.is_empty(), t.subresource.as_str()) {
        (Method::GET, true, _) if watching => "watch",
        (Method::GET, true, _) => "list",
        (Method::GET, false, _) if watching => "watch",
        (Method::GET, false, _) => "get",
        (Method::POST, _, _) => "create",
        (Method::PUT, false, _) => "update",
        (Method::PATCH, false, _) => "patch",
        (Method::DELETE, false, _) => "delete",
        (Method::DELETE, true, _) => "deletecollection",
        _ => {
            let e = ApiError::new(
                Reason::NotFound,
                "the server does not allow this method on the requested resource",
            );
            let mut r = error_response(&e, &name, &group, &kind_name);
            *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            return r;
        }
    };
    let ns = match info {
        Some(i) if !i.namespaced => "",
        _ => t.namespace.as_str(),
    };
    let ask = Ask { verb, t: &t, info, ns };
    let out = match (verb, t.subresource.as_str()) {
        ("watch", _) => return watch(s, req, &ask, &query).await,
        ("get", "log") => return logs(s, req, &ask, &query).await,
        _ => answer(s, req, &ask, &query).await,
    };
    match out {
        Ok(a) => a.into_response(),
        Err(e) => error_response(&e, &name, &group, &kind_name),
    }
}

/// A body in JSON (YAML is turned into JSON: `kubectl create --raw`, curl users).
async fn read_body(req: Request) -> Result<(HeaderMap, Bytes), ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
    let ct = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if ct.starts_with("application/yaml") {
        let v: Value = serde_yaml::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid YAML: {e}")))?;
        return Ok((parts.headers, encode(&v)));
    }
    if ct.starts_with("application/vnd.kubernetes.protobuf") {
        return Ok((parts.headers, encode(&super::k8s_proto::to_json(&bytes)?)));
    }
    Ok((parts.headers, bytes))
}

/// `fieldValidation`: Strict refuses unknown fields, Ignore drops their warnings, Warn (the
/// default) returns them.
fn field_validation(q: &Query) -> Result<&str, ApiError> {
    match q.get("fieldValidation") {
        "" | "Warn" => Ok("Warn"),
        v @ ("Strict" | "Ignore") => Ok(v),
        v => Err(ApiError::bad_request(format!(
            "fieldValidation: {v:?}: supported values: \"Ignore\", \"Warn\", \"Strict\""
        ))),
    }
}

/// Strict field validation, before anything is written: the fields admission would drop.
fn strict_check(info: &'static ResourceInfo, body: &[u8]) -> Result<(), ApiError> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else { return Ok(()) };
    let admitted = (info.admit)(&v, None, info);
    let unknown: Vec<String> = admitted
        .map(|a| a.warnings)
        .unwrap_or_default()
        .into_iter()
        .filter(|w| w.starts_with("unknown field"))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(ApiError::bad_request(format!("strict decoding error: {}", unknown.join(", "))))
}

fn filter_warnings(validation: &str, w: Vec<String>) -> Vec<String> {
    if validation == "Ignore" {
        w.into_iter().filter(|w| !w.starts_with("unknown field")).collect()
    } else {
        w
    }
}

/// Every request that answers with one body: authorized and audited in `run`.
async fn answer(
    s: &Arc<ApiServer>,
    req: Request,
    ask: &Ask<'_>,
    q: &Query,
) -> Result<Answer, ApiError> {
    let t = ask.t;
    let creds = credentials_of(req.headers(), peer(&req));
    let source = peer(&req).and_then(|p| p.addr);
    let form = accepted_form(req.headers());
    let (headers, body) = match ask.verb {
        "create" | "update" | "patch" | "delete" | "deletecollection" => read_body(req).await?,
        _ => (req.headers().clone(), Bytes::new()),
    };
    // Updates name their object in the body; the URL must agree.
    if ask.verb == "update" {
        let in_body = super::service::object_name(&body);
        if !in_body.is_empty() && in_body != t.name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({in_body}) does not match the name on the URL ({})",
                t.name
            )));
        }
    }
    let plural = ask.info.map_or(t.resource.as_str(), |i| i.plural);
    let group = t.group.as_str();
    let selector = q.get("fieldSelector");
    let r = RequestInfo::new(ask.verb, plural)
        .group(group)
        .subresource(&t.subresource)
        .at(&t.namespace, &t.name)
        .fields(selector);
    let audit_body = matches!(ask.verb, "create" | "update" | "patch").then_some(&body[..]);
    let (body, headers) = (&body, &headers);
    run(s, creds, source, r, audit_body, |user| async move {
        let Some(info) = ask.info else {
            return review(s, &user, t, ask.verb, body);
        };
        verb(s, &user, info, ask, q, form, headers, body).await
    })
    .await
}

/// The reviews: created, answered, never stored.
fn review(
    s: &ApiServer,
    user: &User,
    t: &Target,
    verb: &str,
    body: &[u8],
) -> Result<Answer, ApiError> {
    if verb != "create" || !t.name.is_empty() {
        return Err(ApiError::new(
            Reason::NotFound,
            format!("{}.{} only supports create", t.resource, t.group),
        ));
    }
    let v = match t.resource.as_str() {
        "tokenreviews" => s.token_review(body)?,
        "selfsubjectreviews" => json!({"apiVersion": "authentication.k8s.io/v1",
            "kind": "SelfSubjectReview",
            "metadata": {"creationTimestamp": super::now_rfc3339()},
            "status": {"userInfo": user.to_json()}}),
        _ => {
            let review: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("the review is not JSON: {e}")))?;
            s.access_review(user, &review)?
        }
    };
    Ok(Answer::value(StatusCode::CREATED, &v))
}

#[allow(clippy::too_many_arguments)]
async fn verb(
    s: &ApiServer,
    user: &User,
    info: &'static ResourceInfo,
    ask: &Ask<'_>,
    q: &Query,
    form: Form,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Answer, ApiError> {
    let t = ask.t;
    let ns = ask.ns;
    let sub = t.subresource.as_str();
    match (ask.verb, sub) {
        ("get", "" | "status" | "approval") => {
            if !sub.is_empty() {
                super::status_subresource(info, sub)?;
            }
            let v = s.get(info, ns, &t.name).await?;
            Ok(shaped(info, &[&v], None, form, q))
        }
        ("list", "") => list(s, info, ns, q, form).await,
        ("create", "") => {
            let validation = field_validation(q)?;
            if validation == "Strict" {
                strict_check(info, body)?;
            }
            if info.namespaced && ns.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "{}: create needs a namespace in the URL (/namespaces/NAME/{})",
                    info.plural, info.plural
                )));
            }
            let manager = field_manager(q, headers, "CreateOptions")?;
            let w = s.create(user, info, ns, body, q.dry_run()?, &manager).await?;
            Ok(Answer::json(StatusCode::CREATED, w.json())
                .warn(filter_warnings(validation, w.warnings)))
        }
        ("create", "binding") if info.plural == "pods" => {
            s.bind(user, ns, &t.name, body).await?;
            Ok(Answer::value(
                StatusCode::CREATED,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Success", "code": 201}),
            ))
        }
        ("create", "eviction") if info.plural == "pods" => {
            // Kubernetes' EvictionREST: a graceful delete with the Eviction's DeleteOptions,
            // once the pod's PodDisruptionBudget allows it (the core's `evict`).
            let e: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("Eviction: not valid JSON: {e}")))?;
            let named = e.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
            if !named.is_empty() && named != t.name {
                return Err(ApiError::bad_request(format!(
                    "name in URL does not match name in Eviction object: {} != {named}",
                    t.name
                )));
            }
            let opts = delete_options_of(q, e.get("deleteOptions").unwrap_or(&Value::Null))?;
            s.evict(user, ns, &t.name, &opts).await?;
            Ok(Answer::value(
                StatusCode::CREATED,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Success", "code": 201}),
            ))
        }
        ("create", "token") if info.plural == "serviceaccounts" => {
            let v = s.create_token(ns, &t.name, body).await?;
            Ok(Answer::value(StatusCode::CREATED, &v))
        }
        ("update", "" | "status" | "approval") => {
            let validation = field_validation(q)?;
            if validation == "Strict" {
                strict_check(info, body)?;
            }
            let manager = field_manager(q, headers, "UpdateOptions")?;
            let (v, w) = s.update(user, info, ns, body, sub, q.dry_run()?, &manager).await?;
            Ok(Answer::value(StatusCode::OK, &v).warn(filter_warnings(validation, w)))
        }
        ("get", "scale") => {
            Ok(Answer::value(StatusCode::OK, &s.get_scale(info, ns, &t.name).await?))
        }
        ("update", "scale") => {
            let change = ScaleChange::Replace(body);
            let manager = field_manager(q, headers, "UpdateOptions")?;
            let v = s.update_scale(user, info, ns, &t.name, change, q.dry_run()?, &manager).await?;
            Ok(Answer::value(StatusCode::OK, &v))
        }
        ("patch", "scale") => {
            let change = ScaleChange::Patch(patch_kind(headers)?, body);
            let manager = field_manager(q, headers, "PatchOptions")?;
            forbid_force(q)?;
            let v = s.update_scale(user, info, ns, &t.name, change, q.dry_run()?, &manager).await?;
            Ok(Answer::value(StatusCode::OK, &v))
        }
        ("patch", "" | "status") if is_apply(headers) => {
            let validation = field_validation(q)?;
            let manager = field_manager(q, headers, "PatchOptions")?;
            if q.get("fieldManager").is_empty() {
                let mut e = Errors::default();
                e.required("fieldManager", "is required for apply patch");
                return Err(ApiError::invalid("PatchOptions.meta.k8s.io", "", e.0));
            }
            let force = q.flag("force");
            let (v, w, created) =
                s.apply(user, info, ns, &t.name, body, sub, q.dry_run()?, &manager, force).await?;
            let code = if created { StatusCode::CREATED } else { StatusCode::OK };
            Ok(Answer::value(code, &v).warn(filter_warnings(validation, w)))
        }
        ("patch", "" | "status" | "approval") => {
            let kind = patch_kind(headers)?;
            let validation = field_validation(q)?;
            let manager = field_manager(q, headers, "PatchOptions")?;
            forbid_force(q)?;
            let (v, w) =
                s.patch(user, info, ns, &t.name, kind, body, sub, q.dry_run()?, &manager).await?;
            Ok(Answer::value(StatusCode::OK, &v).warn(filter_warnings(validation, w)))
        }
        ("delete", "") => {
            let opts = delete_options(q, body)?;
            let v = s.delete(user, info, ns, &t.name, &opts).await?;
            Ok(Answer::value(StatusCode::OK, &v))
        }
        ("deletecollection", "") => {
            let opts = delete_options(q, body)?;
            let list_opts = ListOptions {
                label_selector: q.get("labelSelector").to_string(),
                field_selector: q.get("fieldSelector").to_string(),
                ..Default::default()
            };
            let page = s.list_objects(info, ns, &list_opts).await?;
            for item in &page.items {
                let v = &item.value;
                let item_ns = v["metadata"]["namespace"].as_str().unwrap_or_default();
                let name = v["metadata"]["name"].as_str().unwrap_or_default();
                match s.delete(user, info, item_ns, name, &opts).await {
                    Ok(_) => {}
                    Err(e) if e.reason == Reason::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(Answer::value(
                StatusCode::OK,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Success"}),
            ))
        }
        (verb, sub) => Err(ApiError::new(
            Reason::NotFound,
            format!("{} has no subresource {sub:?} that supports {verb}", info.plural),
        )),
    }
}

/// Whether a PATCH is a server-side apply.
fn is_apply(headers: &HeaderMap) -> bool {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    ct.split(';').next().unwrap_or("").trim() == "application/apply-patch+yaml"
}

/// `force` is apply's alone.
fn forbid_force(q: &Query) -> Result<(), ApiError> {
    if q.get("force").is_empty() {
        return Ok(());
    }
    let mut e = Errors::default();
    e.forbidden("force", "may not be specified for non-apply patch");
    Err(ApiError::invalid("PatchOptions.meta.k8s.io", "", e.0))
}

/// The field manager of a write: `fieldManager`, else the client's user agent's.
fn field_manager(q: &Query, headers: &HeaderMap, options: &str) -> Result<String, ApiError> {
    let ua = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
    super::field_manager(q.get("fieldManager"), ua, options)
}

/// The patch type a PATCH's content type names.
fn patch_kind(headers: &HeaderMap) -> Result<PatchKind, ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    match ct.split(';').next().unwrap_or("").trim() {
        "application/json-patch+json" => Ok(PatchKind::Json),
        "application/merge-patch+json" => Ok(PatchKind::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
        other => Err(ApiError::new(
            Reason::UnsupportedMediaType,
            format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"),
        )),
    }
}

/// Kubernetes' DeleteOptions, from the body (kubectl sends them there) or the query.
fn delete_options(q: &Query, body: &[u8]) -> Result<DeleteOptions, ApiError> {
    let b: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("DeleteOptions: not valid JSON: {e}")))?
    };
    delete_options_of(q, &b)
}

/// DeleteOptions from a decoded body (Null: none), the query filling what it leaves out.
fn delete_options_of(q: &Query, b: &Value) -> Result<DeleteOptions, ApiError> {
    let grace = match b.get("gracePeriodSeconds").and_then(Value::as_i64) {
        Some(g) => Some(g),
        None => q.int("gracePeriodSeconds")?,
    };
    let policy = b
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .unwrap_or(q.get("propagationPolicy"))
        .to_string();
    // `orphanDependents` is the older form of the Orphan policy.
    let policy = match (policy.as_str(), b.get("orphanDependents").and_then(Value::as_bool)) {
        ("", Some(true)) => "Orphan".to_string(),
        _ => policy,
    };
    let dry_run = match b.get("dryRun").and_then(Value::as_array) {
        Some(a) => a.iter().any(|v| v == "All"),
        None => q.dry_run()?,
    };
    let pre = |k: &str| b["preconditions"][k].as_str().unwrap_or_default().to_string();
    Ok(DeleteOptions {
        grace_period_seconds: grace,
        propagation_policy: policy,
        precondition_uid: pre("uid"),
        precondition_resource_version: pre("resourceVersion"),
        dry_run,
    })
}

/// `resourceVersion` with `resourceVersionMatch`, validated as Kubernetes' ListOptions: the
/// revision of an Exact list (0 otherwise). Any other list is served at the newest revision,
/// which is never older than the one asked for.
fn exact_revision(q: &Query) -> Result<i64, ApiError> {
    let (rv, rv_match) = (q.get("resourceVersion"), q.get("resourceVersionMatch"));
    let invalid = |field: &str, msg: String| {
        let mut e = Errors::default();
        e.forbidden(field, msg);
        Err(ApiError::invalid("ListOptions.meta.k8s.io", "", e.0))
    };
    if rv_match.is_empty() {
        return Ok(0);
    }
    if !matches!(rv_match, "Exact" | "NotOlderThan") {
        let mut e = Errors::default();
        e.not_supported("resourceVersionMatch", rv_match, &["Exact", "NotOlderThan"]);
        return Err(ApiError::invalid("ListOptions.meta.k8s.io", "", e.0));
    }
    if rv.is_empty() {
        return invalid(
            "resourceVersionMatch",
            "resourceVersionMatch is forbidden unless resourceVersion is provided".into(),
        );
    }
    if !q.get("continue").is_empty() {
        return invalid(
            "resourceVersionMatch",
            "resourceVersionMatch is forbidden when continue is provided".into(),
        );
    }
    if rv_match == "NotOlderThan" {
        return Ok(0);
    }
    match rv.parse::<i64>() {
        Ok(0) => invalid(
            "resourceVersionMatch",
            "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"".into(),
        ),
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ApiError::bad_request(format!("resourceVersion {rv:?} is not a revision"))),
    }
}

async fn list(
    s: &ApiServer,
    info: &'static ResourceInfo,
    ns: &str,
    q: &Query,
    form: Form,
) -> Result<Answer, ApiError> {
    let opts = ListOptions {
        label_selector: q.get("labelSelector").to_string(),
        field_selector: q.get("fieldSelector").to_string(),
        limit: q.int("limit")?.unwrap_or(0),
        continue_token: q.get("continue").to_string(),
        exact_revision: exact_revision(q)?,
    };
    let page = s.list_objects(info, ns, &opts).await?;
    let mut meta = json!({"resourceVersion": page.resource_version});
    if !page.continue_token.is_empty() {
        meta["continue"] = json!(page.continue_token);
        if page.remaining_item_count > 0 {
            meta["remainingItemCount"] = json!(page.remaining_item_count);
        }
    }
    if form != Form::Object {
        let items: Vec<&Value> = page.items.iter().map(|o| &o.value).collect();
        return Ok(shaped(info, &items, Some(meta), form, q));
    }
    // The items' bytes as the cache holds them: no decoding, no re-encoding.
    let head = json!({"kind": format!("{}List", info.kind), "apiVersion": info.api_version(),
        "metadata": meta});
    let out = list_body(&head, &page.items, |item, out| out.extend_from_slice(&item.bytes));
    let mut a = Answer::json(StatusCode::OK, Bytes::from(out));
    a.audited = false;
    Ok(a)
}

/// A list's JSON: `head` (kind, apiVersion, metadata) with `items`, each written by `item`.
fn list_body<T>(head: &Value, items: &[T], item: impl Fn(&T, &mut Vec<u8>)) -> Vec<u8> {
    let mut out = serde_json::to_vec(head).unwrap_or_default();
    out.pop();
    out.extend_from_slice(b",\"items\":[");
    for (n, o) in items.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        item(o, &mut out);
    }
    out.extend_from_slice(b"]}");
    out
}

fn metadata_of(o: &Value) -> &Value {
    o.get("metadata").unwrap_or(&Value::Null)
}

/// One object or a list's items in the form the client asked: as they are, as a Table, or as
/// metadata only. `list_meta` is Some for a list.
fn shaped(
    info: &ResourceInfo,
    items: &[&Value],
    list_meta: Option<Value>,
    form: Form,
    q: &Query,
) -> Answer {
    let is_list = list_meta.is_some();
    let meta = list_meta.unwrap_or_else(|| {
        json!({"resourceVersion": items.first().map(|o| o["metadata"]["resourceVersion"].clone())})
    });
    let mut out = Vec::new();
    match form {
        Form::Object if is_list => unreachable!("lists of objects are assembled from bytes"),
        Form::Object => {
            return Answer::value(StatusCode::OK, items.first().unwrap_or(&&Value::Null))
        }
        Form::Table => {
            let include = match q.get("includeObject") {
                "" => "Metadata",
                v => v,
            };
            write_table(info, items.iter().copied(), &meta, include, true, &mut out);
        }
        Form::Metadata if is_list => {
            let head = json!({"kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1", "metadata": meta});
            out = list_body(&head, items, |o, out| write_partial(metadata_of(o), out));
        }
        Form::Metadata => {
            write_partial(items.first().map_or(&Value::Null, |o| metadata_of(o)), &mut out)
        }
    }
    let mut a = Answer::json(StatusCode::OK, Bytes::from(out));
    a.audited = !is_list;
    a
}

/// `?watch=true`: chunked JSON events, one per line, until the client goes, the timeout
/// passes, or an ERROR event (410 Gone when the version is too old) ends it.
async fn watch(s: &Arc<ApiServer>, req: Request, ask: &Ask<'_>, q: &Query) -> Response {
    let t = ask.t;
    let started = Instant::now();
    let form = accepted_form(req.headers());
    let creds = credentials_of(req.headers(), peer(&req));
    let source = peer(&req).and_then(|p| p.addr);
    let (group, plural) = (t.group.as_str(), t.resource.as_str());
    // A watch of one object is a watch with a name field selector, as in Kubernetes.
    let by_name;
    let fields = if t.name.is_empty() {
        q.get("fieldSelector")
    } else {
        by_name = match q.get("fieldSelector") {
            "" => format!("metadata.name={}", t.name),
            f => format!("{f},metadata.name={}", t.name),
        };
        &by_name
    };
    let r = RequestInfo::new("watch", plural).group(group).at(&t.namespace, &t.name).fields(fields);
    let setup = || {
        admit_logged(s, creds, source, r)?;
        let Some(info) = ask.info else {
            return Err(ApiError::new(Reason::NotFound, format!("{plural} cannot be watched")));
        };
        if !t.subresource.is_empty() {
            return Err(ApiError::bad_request(format!(
                "{plural}/{} cannot be watched",
                t.subresource
            )));
        }
        let (f, from, cache, sub) = s.watch_start(
            info,
            ask.ns,
            q.get("labelSelector"),
            fields,
            q.get("resourceVersion"),
            q.flag("sendInitialEvents"),
        )?;
        let timeout = q.int("timeoutSeconds")?;
        Ok((info, f, from, cache, sub, timeout))
    };
    let (info, f, from, cache, sub, timeout) = match setup() {
        Ok(x) => x,
        Err(e) if e.reason == Reason::Expired => {
            // Upstream answers 200 and an ERROR event: reflectors relist on it.
            let ev = json_event("ERROR", &encode(&e.status_object("", group, plural)));
            let mut r = Response::new(Body::from(ev));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
            return r;
        }
        Err(e) => return error_response(&e, &t.name, group, plural),
    };
    s.record("watch", info.plural, started);
    let (tx, rx) = tokio::sync::mpsc::channel(WATCH_QUEUE);
    let w = Watch {
        s: s.clone(),
        cache,
        filter: f,
        from,
        bookmarks: q.flag("allowWatchBookmarks"),
        initial_end: q.flag("sendInitialEvents"),
        wire: if form == Form::Table { Wire::Table } else { Wire::Json },
        tx,
        table_headers_sent: Default::default(),
    };
    tokio::spawn(w.run(sub));
    let (g, p) = (group.to_string(), plural.to_string());
    let events = tokio_stream::wrappers::ReceiverStream::new(rx).scan(false, move |ended, b| {
        if *ended {
            return futures::future::ready(None);
        }
        let chunk = match b {
            Ok(events) => {
                let mut out = Vec::with_capacity(events.iter().map(Bytes::len).sum());
                for e in &events {
                    out.extend_from_slice(e);
                }
                Bytes::from(out)
            }
            Err(e) => {
                *ended = true;
                json_event("ERROR", &encode(&e.status_object("", &g, &p)))
            }
        };
        futures::future::ready(Some(Ok::<_, std::convert::Infallible>(chunk)))
    });
    let body = match timeout {
        Some(secs) if secs > 0 => {
            let until = tokio::time::sleep(std::time::Duration::from_secs(secs as u64));
            Body::from_stream(events.take_until(until))
        }
        _ => Body::from_stream(events),
    };
    let mut r = Response::new(body);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    r
}

/// pods/log: the node agent's stream, relayed as text.
async fn logs(s: &Arc<ApiServer>, req: Request, ask: &Ask<'_>, q: &Query) -> Response {
    let t = ask.t;
    let creds = credentials_of(req.headers(), peer(&req));
    let source = peer(&req).and_then(|p| p.addr);
    let r = RequestInfo::new("get", "pods").subresource("log").at(&t.namespace, &t.name);
    let started = Instant::now();
    let open = async {
        admit_logged(s, creds, source, r)?;
        let tail_lines = q.int("tailLines")?;
        if let Some(n) = tail_lines.filter(|n| *n < 0) {
            let mut e = Errors::default();
            e.invalid("tailLines", n, "must be greater than or equal to 0");
            return Err(ApiError::invalid("PodLogOptions", &t.name, e.0));
        }
        let mut request = flotilla_api::proto::PodLogsRequest {
            namespace: t.namespace.clone(),
            name: t.name.clone(),
            container: q.get("container").to_string(),
            follow: q.flag("follow"),
            previous: q.flag("previous"),
            tail_lines: tail_lines.unwrap_or(-1),
            timestamps: q.flag("timestamps"),
            since_seconds: q.int("sinceSeconds")?,
            since_time: q.get("sinceTime").to_string(),
            limit_bytes: q.int("limitBytes")?,
            // PodLogOptions.stream (Kubernetes 1.32's split streams).
            stream: match q.get("stream") {
                "" | "All" => String::new(),
                "Stdout" => "stdout".into(),
                "Stderr" => "stderr".into(),
                other => {
                    let mut e = Errors::default();
                    e.not_supported("stream", other, &["All", "Stderr", "Stdout"]);
                    return Err(ApiError::invalid("PodLogOptions", &t.name, e.0));
                }
            },
        };
        crate::proxy::validate_log_options(&t.name, &request)?;
        let target = s.log_target(&t.namespace, &t.name, &request.container).await?;
        let mut node =
            s.node_client(&target.url).await.map_err(|e| ApiError::new(Reason::Unavailable, e))?;
        (request.namespace, request.container) = (target.namespace, target.container);
        let stream = node.container_logs(request).await.map_err(ApiError::from)?.into_inner();
        Ok(stream)
    };
    match open.await {
        Ok(stream) => {
            s.record("logs", "pods", started);
            let body = stream.map(|c| c.map(|c| c.data).map_err(std::io::Error::other));
            let mut r = Response::new(Body::from_stream(body));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            r
        }
        Err(e) => error_response(&e, &t.name, "", "pods"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_resource_version_matches_validate_as_kubernetes() {
        let q = |s: &str| Query::parse(Some(s));
        assert_eq!(exact_revision(&q("resourceVersion=7")).unwrap(), 0);
        assert_eq!(exact_revision(&q("resourceVersion=7&resourceVersionMatch=Exact")).unwrap(), 7);
        assert_eq!(
            exact_revision(&q("resourceVersion=7&resourceVersionMatch=NotOlderThan")).unwrap(),
            0
        );
        for bad in [
            "resourceVersionMatch=Exact",
            "resourceVersion=0&resourceVersionMatch=Exact",
            "resourceVersion=7&resourceVersionMatch=Newest",
            "resourceVersion=7&resourceVersionMatch=Exact&continue=abc",
        ] {
            assert_eq!(exact_revision(&q(bad)).unwrap_err().reason, Reason::Invalid, "{bad}");
        }
        assert!(q("watch=True").flag("watch") && q("watch=1").flag("watch"));
        assert!(!q("watch=false").flag("watch") && !q("").flag("watch"));
    }

    #[test]
    fn paths_parse_as_kubernetes_does() {
        let t = parse_path("/api/v1/namespaces/default/pods/web/log").unwrap();
        assert_eq!(
            (t.namespace.as_str(), t.resource.as_str(), t.name.as_str(), t.subresource.as_str()),
            ("default", "pods", "web", "log")
        );
        let t = parse_path("/api/v1/namespaces/kube-system").unwrap();
        assert_eq!((t.resource.as_str(), t.name.as_str()), ("namespaces", "kube-system"));
        let t = parse_path("/api/v1/namespaces/x/status").unwrap();
        assert_eq!((t.resource.as_str(), t.subresource.as_str()), ("namespaces", "status"));
        let t = parse_path("/apis/apps/v1/deployments").unwrap();
        assert_eq!(
            (t.group.as_str(), t.resource.as_str(), t.namespace.as_str()),
            ("apps", "deployments", "")
        );
        let t =
            parse_path("/apis/rbac.authorization.k8s.io/v1/clusterroles/system%3Anode").unwrap();
        assert_eq!(t.name, "system:node");
        let t = parse_path("/api/v1/watch/namespaces/a/pods").unwrap();
        assert!(t.watch_path);
        assert!(parse_path("/api/v1").is_none());
        assert!(parse_path("/apis/apps/v1").is_none());
        assert!(parse_path("/healthz").is_none());
    }

    #[test]
    fn accept_headers_choose_the_form() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"),
        );
        assert_eq!(accepted_form(&h), Form::Table);
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static(
                "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json",
            ),
        );
        assert_eq!(accepted_form(&h), Form::Object);
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"));
        assert_eq!(wants_aggregated(&h), Some("v2"));
    }

    #[test]
    fn discovery_lists_every_resource_once() {
        let core = resource_list("", "v1").unwrap();
        let names: Vec<&str> = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"pods")
                && names.contains(&"pods/status")
                && names.contains(&"pods/log")
        );
        let agg = aggregated(false, "apidiscovery.k8s.io/v2");
        let groups: Vec<&str> = agg["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap())
            .collect();
        assert!(groups.contains(&"apps") && groups.contains(&"authorization.k8s.io"));
        assert!(!groups.contains(&""));
    }
}
