//! The gRPC face of the API server, and the request runner both fronts share; the listener
//! that serves both.

use super::cache::Wire;
use super::request::{Credentials, RequestInfo, User};
use super::watch::{Watch, WATCH_QUEUE};
use super::{encode, ApiServer, DeleteOptions, ListOptions};
use flotilla_api::error::{ApiError, Reason};
use flotilla_api::patch::PatchKind;
use flotilla_api::proto::{self, api_server::Api};
use futures::Stream;
use serde_json::json;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct Service(pub Arc<ApiServer>);

type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::WatchResponse, Status>> + Send>>;
type LogStream = Pin<Box<dyn Stream<Item = Result<proto::LogChunk, Status>> + Send>>;
type ExecStream = Pin<Box<dyn Stream<Item = Result<proto::ExecOutput, Status>> + Send>>;

fn obj_response(v: &serde_json::Value, warnings: Vec<String>) -> Response<proto::ObjectResponse> {
    Response::new(proto::ObjectResponse { object: encode(v), warnings })
}

/// One request through the core's first stages (authenticate, authorize), then `f` with the
/// caller, in its span (so every line it logs says what it was for); records its latency and
/// its audit event. Both fronts run every non-streaming request through here.
pub(crate) async fn run<T: Audited, F, Fut>(
    server: &ApiServer,
    credentials: Result<Credentials, ApiError>,
    source: Option<std::net::SocketAddr>,
    r: RequestInfo<'_>,
    body: Option<&[u8]>,
    f: F,
) -> Result<T, ApiError>
where
    F: FnOnce(User) -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    use tracing::Instrument;
    let started = Instant::now();
    let auditor = server.config.audit.clone();
    let received = auditor.as_ref().map(|_| jiff::Timestamp::now());
    let RequestInfo { verb, resource, subresource, namespace, name, .. } = r;
    let span = tracing::info_span!(
        "request",
        verb,
        resource,
        subresource,
        namespace,
        name,
        user = tracing::field::Empty
    );
    let mut who = None;
    let out = async {
        let user = server.admit_request(&credentials?, r)?;
        tracing::Span::current().record("user", user.name.as_str());
        if auditor.is_some() {
            who = Some(user.clone());
        }
        f(user).await
    }
    .instrument(span)
    .await;
    let res = flotilla_api::lookup(resource).map_or("unknown", |r| r.plural);
    let label = match (verb, subresource) {
        ("update", "status") => "update_status",
        (v, _) => v,
    };
    server.record(label, res, started);
    if let (Some(aud), Some(received)) = (auditor, received) {
        let user = who.unwrap_or_else(User::anonymous);
        let attrs = r.by(&user);
        let (code, message) = match &out {
            Ok(_) if verb == "create" => (201, None),
            Ok(_) => (200, None),
            Err(e) => (e.reason.http_code(), Some(e.message.as_str())),
        };
        aud.log(crate::audit::Record {
            attributes: &attrs,
            code,
            message,
            request: body,
            response: out.as_ref().ok().and_then(Audited::audit_body),
            received,
            source,
        });
    }
    out
}

/// A request that streams (watch, logs, exec) or answers outside `run`, authenticated and
/// authorized: audited when admitted or refused (Kubernetes' ResponseStarted stage).
pub(crate) fn admit_logged(
    server: &ApiServer,
    credentials: Result<Credentials, ApiError>,
    source: Option<std::net::SocketAddr>,
    r: RequestInfo<'_>,
) -> Result<User, ApiError> {
    let out = credentials.and_then(|c| server.admit_request(&c, r));
    if let Some(aud) = &server.config.audit {
        let user = out.as_ref().map_or_else(|_| User::anonymous(), User::clone);
        let (code, message) = match &out {
            Ok(_) => (200, None),
            Err(e) => (e.reason.http_code(), Some(e.message.as_str())),
        };
        aud.log(crate::audit::Record {
            attributes: &r.by(&user),
            code,
            message,
            request: None,
            response: None,
            received: jiff::Timestamp::now(),
            source,
        });
    }
    out
}

impl Service {
    /// `run` for a gRPC call: maps its error to a status in the one place that does.
    async fn timed<T: Audited, F, Fut>(
        &self,
        meta: &Call,
        r: RequestInfo<'_>,
        f: F,
    ) -> Result<T, Status>
    where
        F: FnOnce(User) -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        self.timed_body(meta, r, None, f).await
    }

    /// `timed`, for a request with a body (the audit log's `requestObject`).
    async fn timed_body<T: Audited, F, Fut>(
        &self,
        meta: &Call,
        r: RequestInfo<'_>,
        body: Option<&[u8]>,
        f: F,
    ) -> Result<T, Status>
    where
        F: FnOnce(User) -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let source = meta.1.get::<flotilla_pki::tls::Peer>().and_then(|p| p.addr);
        run(&self.0, credentials(meta), source, r, body, f).await.map_err(|e| e.to_status())
    }

    /// Authenticates and authorizes a request that streams (watch, logs, exec) or answers
    /// outside `timed`: audited when admitted or refused.
    fn caller_logged(&self, meta: &Call, r: RequestInfo<'_>) -> Result<User, ApiError> {
        let source = meta.1.get::<flotilla_pki::tls::Peer>().and_then(|p| p.addr);
        admit_logged(&self.0, credentials(meta), source, r)
    }
}

/// A request's headers and what the connection knows (its TLS client certificate).
struct Call(tonic::metadata::MetadataMap, tonic::Extensions);

/// The field manager of a gRPC write: the one asked for, else the user agent's.
fn grpc_manager(meta: &Call, asked: &str, options: &str) -> Result<String, ApiError> {
    let ua = meta.0.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or("");
    super::field_manager(asked, ua, options)
}

/// What the audit log records of an answer at the RequestResponse level.
pub trait Audited {
    fn audit_body(&self) -> Option<&[u8]> {
        None
    }
}

impl Audited for Response<proto::ObjectResponse> {
    fn audit_body(&self) -> Option<&[u8]> {
        Some(&self.get_ref().object)
    }
}

/// Lists are recorded without their items (they can be the whole cluster).
impl Audited for Response<proto::ListResponse> {}

/// Request headers, whichever front they came by.
pub trait Headers {
    fn all(&self, name: &str) -> Vec<&str>;
    fn one(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }
}

impl Headers for tonic::metadata::MetadataMap {
    fn all(&self, name: &str) -> Vec<&str> {
        self.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect()
    }
}

impl Headers for axum::http::HeaderMap {
    fn all(&self, name: &str) -> Vec<&str> {
        self.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect()
    }
}

/// The credentials a request carries: the connection's client certificate (verified against
/// the cluster CA in the handshake), `authorization: Bearer <token>`, and Kubernetes'
/// `Impersonate-User` / `Impersonate-Group` headers.
pub fn credentials_of(
    headers: &impl Headers,
    peer: Option<&flotilla_pki::tls::Peer>,
) -> Result<Credentials, ApiError> {
    let client_cert = peer.and_then(|p| p.subject.clone());
    let impersonate_user = headers.one("impersonate-user").map(String::from);
    let impersonate_groups =
        headers.all("impersonate-group").into_iter().map(String::from).collect();
    let mut c = Credentials { client_cert, impersonate_user, impersonate_groups, bearer: None };
    let Some(h) = headers.one("authorization") else { return Ok(c) };
    let token =
        h.strip_prefix("Bearer ").map(str::trim).filter(|t| !t.is_empty()).ok_or_else(|| {
            ApiError::new(
                Reason::Unauthorized,
                "the authorization header is not \"Bearer <token>\"",
            )
        })?;
    c.bearer = Some(token.to_string());
    Ok(c)
}

fn credentials(call: &Call) -> Result<Credentials, ApiError> {
    credentials_of(&call.0, call.1.get::<flotilla_pki::tls::Peer>())
}

#[tonic::async_trait]
impl Api for Service {
    async fn create(
        &self,
        req: Request<proto::CreateRequest>,
    ) -> Result<Response<proto::ObjectResponse>, Status> {
        let (meta, ext, r) = req.into_parts();
        let meta = Call(meta, ext);
        let r = &r;
        let s = &self.0;
        let manager = grpc_manager(&meta, &r.field_manager, "CreateOptions");
        self.timed_body(
            &meta,
            RequestInfo::new("create", &r.resource).at(&r.namespace, ""),
            Some(&r.object),
            |user| async move {
                let info = s.resource(&r.resource)?;
                let manager = manager?;
                let w = s.create(&user, info, &r.namespace, &r.object, r.dry_run, &manager).await?;
                Ok(Response::new(proto::ObjectResponse { object: w.json(), warnings: w.warnings }))
            },
        )
        .await
    }

    async fn get(
        &self,
        req: Request<proto::GetRequest>,
    ) -> Result<Response<proto::ObjectResponse>, Status> {
        let (meta, ext, r) = req.into_parts();
        let meta = Call(meta, ext);
        let r = &r;
        let s = &self.0;
        self.timed(
            &meta,
            RequestInfo::new("get", &r.resource).at(&r.namespace, &r.name),
            |_| async {
                let info = s.resource(&r.resource)?;
                let v = s.get(info, &r.namespace, &r.name).await?;
                Ok(obj_response(&v, vec![]))
            },
        )
        .await
    }

    async fn list(
        &self,
        req: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListResponse>, Status> {
        let (meta, ext, r) = req.into_parts();
        let meta = Call(meta, ext);
        let r = &r;
        let s = &self.0;
        let what =
            RequestInfo::new("list", &r.resource).at(&r.namespace, "").fields(&r.field_selector);
        self.timed(&meta, what, |_| async {
            let info = s.resource(&r.resource)?;
            let opts = ListOptions {
                label_selector: r.label_selector.clone(),
                field_selector: r.field_selector.clone(),
                limit: r.limit,
                continue_token: r.continue_token.clone(),
                exact_revision: 0,
            };
            let page = s.list_objects(info, &r.namespace, &opts).await?;
            Ok(Response::new(proto::ListResponse {
                items: page.items.iter().map(|o| o.bytes.clone()).collect(),
                resource_version: page.resource_version,
                continue_token: page.continue_token,
                remaining_item_count: page.remaining_item_count,
            }))
        })
        .await
    }

    async fn update(
        &self,
        req: Request<proto::UpdateRequest>,
    ) -> Result<Response<proto::ObjectResponse>, Status> {
        let (meta, ext, r) = req.into_parts();
        let meta = Call(meta, ext);
        let r = &r;
        let s = &self.0;
        let what = RequestInfo::new("update", &r.resource).subresource(&r.subresource);
        // Authorization names the object (resourceNames, the node authorizer): it is in the body.
        let name = object_name(&r.object);
        let manager = grpc_manager(&meta, &r.field_manager, "UpdateOptions");
        self.timed_body(&meta, what.at(&r.namespace, &name), Some(&r.object), |user| async move {
            let info = s.resource(&r.resource)?;
            let manager = manager?;
            let (ns, sub) = (&r.namespace, &r.subresource);
            let (v, w) = s.update(&user, info, ns, &r.object, sub, r.dry_run, &manager).await?;
            Ok(obj_response(&v, w))
        })
        .await
    }

    async fn patch(
        &self,
        req: Request<proto::PatchRequest>,
    ) -> Result<Response<proto::ObjectResponse>, Status> {
        let (meta, ext, r) = req.into_parts();
        let meta = Call(meta, ext);
        let r = &r;
        let s = &self.0;
        let what = RequestInfo::new("patch", &r.resource).subresource(&r.subresource);
        let manager = grpc_manager(&meta, &r.field_manager, "PatchOptions");
        self.timed_body(&meta, what.at(&r.namespace, &r.name), Some(&r.patch), |user| async move {
            let info = s.resource(&r.resource)?;
            let manager = manager?;
            let (ns, name, sub) = (&r.namespace, &r.name, &r.subresource);
            let kind = match proto::PatchType::try_from(r.patch_type) {
                Ok(proto::PatchType::Merge) => PatchKind::Merge,
                Ok(proto::PatchType::Json) => PatchKind::Json,
                Ok(proto::PatchType::Strategic) => PatchKind::Strategic,
                Ok(proto::PatchType::Apply) => {
                    if r.field_manager.is_empty() {
                        let mut e = flotilla_api::error::Errors::default();
                        e.required("fieldManager", "is required for apply patch");
                        return Err(ApiError::invalid("PatchOptions.meta.k8s.io", "", e.0));
                    }
                    let (v, w, _) = s
                        .apply(&user, info, ns, name, &r.patch, sub, r.dry_run, &manager, r.force)
                        .await?;
                    return Ok(obj_response(&v, w));
                }
                Err(_) => return Err(ApiError::bad_request("unknown patch type")),
            };
            if r.force {
                let mut e = flotilla_api::error::Errors::default();
                e.forbidden("force", "may not be specified for non-apply patch");
                return Err(ApiError::invalid("PatchOptions.meta.k8s.io", "", e.0));
            }
            let (v, w) =
                s.patch(&user, info, ns, name, kind, &r.patch, sub, r.dry_run, &manager).await?;
            Ok(obj_response(&v, w))
        })
        .await
    }

    async fn delete(
        &self,
        req: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::ObjectResponse>, Status> {
        let (meta, ext, r) = req.into_parts();
        let meta = Call(meta, ext);
        let r = &r;
        let s = &self.0;
        self.timed(
            &meta,
            RequestInfo::new("delete", &r.resource).at(&r.namespace, &r.name),
            |user| async move {
                let info = s.resource(&r.resource)?;
                let opts = DeleteOptions {
                    grace_period_seconds: r.grace_period_seconds,
                    propagation_policy: r.propagation_policy.clone(),
                    precondition_uid: r.precondition_uid.clone(),
                    precondition_resource_version: r.precondition_resource_version.clone(),
                    dry_run: r.dry_run,
                };
                let v = s.delete(&user, info, &r.namespace, &r.name, &opts).await?;
                Ok(obj_response(&v, vec![]))
            },
        )
        .await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<proto::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let (meta, ext, r) = req.into_parts();
        let meta = Call(meta, ext);
        let r = &r;
        let s = self.0.clone();
        let started = Instant::now();
        let setup = async {
            let what = RequestInfo::new("watch", &r.resource).at(&r.namespace, "");
            self.caller_logged(&meta, what.fields(&r.field_selector))?;
            let info = s.resource(&r.resource)?;
            let (f, from, cache, sub) = s.watch_start(
                info,
                &r.namespace,
                &r.label_selector,
                &r.field_selector,
                &r.resource_version,
                r.send_initial_events,
            )?;
            Ok::<_, ApiError>((info, f, from, cache, sub))
        };
        let (info, f, from, cache, sub) = setup.await.map_err(|e| e.to_status())?;
        s.record("watch", info.plural, started);
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let w = Watch {
            wire: Wire::Proto,
            table_headers_sent: Default::default(),
            s: s.clone(),
            cache,
            filter: f,
            from,
            bookmarks: r.allow_bookmarks,
            initial_end: r.send_initial_events,
            tx,
        };
        tokio::spawn(w.run(sub));
        let stream =
            futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |b| match b {
                Ok(events) => Ok(proto::WatchResponse { events }),
                Err(e) => Err(e.to_status()),
            });
        Ok(Response::new(Box::pin(stream)))
    }

    type PodLogsStream = LogStream;

    /// Finds the pod's node and relays the stream of that node's agent (the kubelet proxy).
    async fn pod_logs(
        &self,
        req: Request<proto::PodLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let (meta, ext, mut r) = req.into_parts();
        let meta = Call(meta, ext);
        let started = Instant::now();
        let target = async {
            self.caller_logged(
                &meta,
                RequestInfo::new("get", "pods").subresource("log").at(&r.namespace, &r.name),
            )?;
            crate::proxy::validate_log_options(&r.name, &r)?;
            self.0.log_target(&r.namespace, &r.name, &r.container).await
        };
        let t = target.await.map_err(|e| e.to_status())?;
        let url = t.url;
        (r.namespace, r.container) = (t.namespace, t.container);
        let mut node = self.0.node_client(&url).await.map_err(Status::unavailable)?;
        let stream = node.container_logs(r).await?.into_inner();
        self.0.record("logs", "pods", started);
        Ok(Response::new(Box::pin(stream)))
    }

    type PodExecStream = ExecStream;

    /// Resolves the pod's node and container, then relays both directions to its agent.
    async fn pod_exec(
        &self,
        req: Request<tonic::Streaming<proto::ExecInput>>,
    ) -> Result<Response<ExecStream>, Status> {
        use futures::StreamExt;
        use proto::exec_input::Msg;
        let (meta, ext, mut input) = req.into_parts();
        let meta = Call(meta, ext);
        let started = Instant::now();
        let mut start = match input.next().await {
            Some(Ok(proto::ExecInput { msg: Some(Msg::Start(s)) })) => s,
            Some(Err(e)) => return Err(e),
            _ => return Err(Status::invalid_argument("exec: the first message must be `start`")),
        };
        let target = async {
            let what = RequestInfo::new("create", "pods").subresource("exec");
            self.caller_logged(&meta, what.at(&start.namespace, &start.name))?;
            self.0.exec_target(&start.namespace, &start.name, &start.container).await
        };
        let t = target.await.map_err(|e| e.to_status())?;
        let url = t.url;
        (start.namespace, start.container, start.uid) = (t.namespace, t.container, t.uid);
        let mut node = self.0.node_client(&url).await.map_err(Status::unavailable)?;
        let first = proto::ExecInput { msg: Some(Msg::Start(start)) };
        // A broken client stream ends the relay like a close would.
        let rest = input
            .take_while(|m| futures::future::ready(m.is_ok()))
            .filter_map(|m| futures::future::ready(m.ok()));
        let outbound = futures::stream::once(futures::future::ready(first)).chain(rest);
        let stream = node.container_exec(outbound).await?.into_inner();
        self.0.record("exec", "pods", started);
        Ok(Response::new(Box::pin(stream)))
    }

    /// metrics-server's work on demand: the latest sample of every node concerned.
    async fn metrics(
        &self,
        req: Request<proto::MetricsRequest>,
    ) -> Result<Response<proto::MetricsResponse>, Status> {
        let (meta, ext, r) = req.into_parts();
        let meta = Call(meta, ext);
        let started = Instant::now();
        let s = &self.0;
        let verb = if r.name.is_empty() { "list" } else { "get" };
        let what = RequestInfo::new(verb, &r.resource).group("metrics.k8s.io");
        self.caller_logged(&meta, what.at(&r.namespace, &r.name)).map_err(|e| e.to_status())?;
        let (items, warnings) = s
            .resource_metrics(&r.resource, &r.namespace, &r.label_selector, &r.name)
            .await
            .map_err(|e| e.to_status())?;
        let out = proto::MetricsResponse { items: items.iter().map(encode).collect(), warnings };
        s.record("get", "metrics", started);
        Ok(Response::new(out))
    }

    async fn bind(
        &self,
        req: Request<proto::BindRequest>,
    ) -> Result<Response<proto::ObjectResponse>, Status> {
        let (meta, ext, r) = req.into_parts();
        let meta = Call(meta, ext);
        let r = &r;
        let s = &self.0;
        self.timed(&meta, RequestInfo::new("create", "pods").subresource("binding").at(&r.namespace, &r.name), |user| async move {
            s.bind(&user, &r.namespace, &r.name, &r.object).await?;
            // Kubernetes' BindingREST answers with a Status, not the pod: nobody pays for
            // encoding and decoding a pod the binder already has.
            const SUCCESS: &[u8] =
                br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success","code":201}"#;
            Ok(Response::new(proto::ObjectResponse {
                object: bytes::Bytes::from_static(SUCCESS),
                warnings: Vec::new(),
            }))
        })
        .await
    }

    async fn create_token(
        &self,
        req: Request<proto::CreateTokenRequest>,
    ) -> Result<Response<proto::ObjectResponse>, Status> {
        let (meta, ext, r) = req.into_parts();
        let meta = Call(meta, ext);
        let r = &r;
        let s = &self.0;
        let what = RequestInfo::new("create", "serviceaccounts").subresource("token");
        self.timed(&meta, what.at(&r.namespace, &r.name), |_| async {
            let v = s.create_token(&r.namespace, &r.name, &r.object).await?;
            Ok(obj_response(&v, Vec::new()))
        })
        .await
    }

    async fn review_token(
        &self,
        req: Request<proto::ReviewTokenRequest>,
    ) -> Result<Response<proto::ObjectResponse>, Status> {
        let (meta, ext, r) = req.into_parts();
        let meta = Call(meta, ext);
        let r = &r;
        let what = RequestInfo::new("create", "tokenreviews").group("authentication.k8s.io");
        self.timed(&meta, what, |_| async {
            Ok(obj_response(&self.0.token_review(&r.object)?, Vec::new()))
        })
        .await
    }

    async fn who_am_i(
        &self,
        req: Request<proto::WhoAmIRequest>,
    ) -> Result<Response<proto::ObjectResponse>, Status> {
        let what = RequestInfo::new("create", "selfsubjectreviews").group("authentication.k8s.io");
        let (meta, ext, _) = req.into_parts();
        self.timed(&Call(meta, ext), what, |user| async move {
            let v = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
                "metadata": {"creationTimestamp": super::now_rfc3339()},
                "status": {"userInfo": user.to_json()}});
            Ok(obj_response(&v, Vec::new()))
        })
        .await
    }

    async fn review_access(
        &self,
        req: Request<proto::ReviewAccessRequest>,
    ) -> Result<Response<proto::ObjectResponse>, Status> {
        let (meta, ext, r) = req.into_parts();
        let review: serde_json::Value = serde_json::from_slice(&r.object).map_err(|e| {
            ApiError::bad_request(format!("the review is not JSON: {e}")).to_status()
        })?;
        let resource = match review["kind"].as_str().unwrap_or_default() {
            "SelfSubjectAccessReview" => "selfsubjectaccessreviews",
            "SelfSubjectRulesReview" => "selfsubjectrulesreviews",
            "SubjectAccessReview" => "subjectaccessreviews",
            k => {
                let msg = format!(
                    "kind {k:?}: expected SelfSubjectAccessReview, SelfSubjectRulesReview or SubjectAccessReview"
                );
                return Err(ApiError::bad_request(msg).to_status());
            }
        };
        let what = RequestInfo::new("create", resource).group("authorization.k8s.io");
        let review = &review;
        self.timed(&Call(meta, ext), what, |user| async move {
            Ok(obj_response(&self.0.access_review(&user, review)?, Vec::new()))
        })
        .await
    }

    async fn discovery(
        &self,
        req: Request<proto::DiscoveryRequest>,
    ) -> Result<Response<proto::DiscoveryResponse>, Status> {
        let (meta, ext, _) = req.into_parts();
        let what = RequestInfo::non_resource("get", "/api");
        self.caller_logged(&Call(meta, ext), what).map_err(|e| e.to_status())?;
        let resources = flotilla_api::RESOURCES
            .iter()
            .map(|r| proto::ApiResource {
                kind: r.kind.into(),
                group: r.group.into(),
                version: r.version.into(),
                plural: r.plural.into(),
                short_names: r.short_names.iter().map(|s| s.to_string()).collect(),
                namespaced: r.namespaced,
                has_status: r.has_status,
            })
            .collect();
        Ok(Response::new(proto::DiscoveryResponse {
            resources,
            server_version: env!("CARGO_PKG_VERSION").into(),
        }))
    }
}

/// `metadata.name` of a JSON object, without decoding the rest into values.
pub(crate) fn object_name(body: &[u8]) -> String {
    #[derive(serde::Deserialize, Default)]
    struct Meta {
        #[serde(default)]
        name: String,
    }
    #[derive(serde::Deserialize)]
    struct Obj {
        #[serde(default)]
        metadata: Meta,
    }
    serde_json::from_slice::<Obj>(body).map(|o| o.metadata.name).unwrap_or_default()
}

/// Serves the API (gRPC, HTTP/2) and `/metrics` (HTTP/1.1 or 2) on one listener, TLS only:
/// `tls` verifies client certificates against the cluster CA when a caller presents one.
///
/// `tls` None serves plain HTTP/2 with no client certificates: only for the API benchmark's
/// "trust off" rows (`flotillad server --bench-insecure-api`, a hidden flag).
pub async fn serve(
    server: Arc<ApiServer>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let svc = proto::api_server::ApiServer::new(Service(server.clone()))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(256 << 20);
    let mut routes = tonic::service::Routes::new(svc);
    // Everything that is not a gRPC method is Kubernetes' HTTP API.
    let router = std::mem::take(routes.axum_router_mut());
    let http = server.clone();
    *routes.axum_router_mut() = router.fallback(move |req: axum::extract::Request| {
        let s = http.clone();
        async move { super::http::handle(s, req).await }
    });
    let router = routes.prepare().into_axum_router();
    // Our own accept loop rather than tonic's: tonic serves connections without HTTP/1.1
    // upgrades, which exec and port-forward need (WebSocket).
    let mut conn =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    // As tonic's server had it: hyper enforces HTTP/1's 30 s header read timeout only with a
    // timer, and its default limit of 200 streams per HTTP/2 connection would stall a client
    // that multiplexes more watches than that over one connection (informers, the benches).
    conn.http1().timer(hyper_util::rt::TokioTimer::new());
    conn.http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(None)
        // Fixed receive windows, not adaptive ones: h2 limits a connection's unread small DATA
        // frames (request bodies under 256 bytes, e.g. patches) to a budget of half the
        // connection window, and closes the connection with ENHANCE_YOUR_CALM
        // "too_many_data_frames" beyond it. An adaptive window starts at 64 KiB and only grows
        // with large bodies, so a client with ~160 small writes in flight to a busy server lost
        // every request on its connection. 8 MiB allows ~16k; what a connection may buffer
        // stays bounded by the window. (Lists travel the other way: the client's window.)
        .initial_connection_window_size(8 << 20)
        .initial_stream_window_size(1 << 20);
    let conn = Arc::new(conn);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Accepted connections get TCP_NODELAY: small responses must not wait on Nagle and
    // delayed ACKs (40 ms). (`incoming` sets it for TLS.)
    let mut accepted: futures::stream::BoxStream<'static, Conn> = match tls {
        Some(tls) => flotilla_pki::tls::incoming(listener, tls)
            .filter_map(|c| async move { c.ok() })
            .map(|c| {
                let peer = c.peer().clone();
                (Box::new(c) as Box<dyn Io>, peer)
            })
            .boxed(),
        None => tokio_stream::wrappers::TcpListenerStream::new(listener)
            .filter_map(|c| async move {
                let c = c.ok()?;
                let _ = c.set_nodelay(true);
                let peer = flotilla_pki::tls::Peer { addr: c.peer_addr().ok(), subject: None };
                Some((Box::new(c) as Box<dyn Io>, peer))
            })
            .boxed(),
    };
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            c = accepted.next() => match c {
                Some(c) => c,
                None => break,
            },
            _ = &mut shutdown => break,
        };
        let router = router.clone();
        // Each request carries its connection's peer, which authentication reads.
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(peer.clone());
                tower::ServiceExt::oneshot(router.clone(), req)
            });
        let conn = conn.clone();
        let serving = graceful.watch(
            conn.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), svc).into_owned(),
        );
        tokio::spawn(async move {
            if let Err(e) = serving.await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
    drop(accepted);
    // Open watches and exec sessions would hold a graceful end forever: they get a few seconds.
    if tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await.is_err() {
        tracing::debug!("connections still open at shutdown");
    }
    Ok(())
}

/// A connection's byte stream: TLS or plain TCP.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}
type Conn = (Box<dyn Io>, flotilla_pki::tls::Peer);
