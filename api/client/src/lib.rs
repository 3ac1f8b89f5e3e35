//! The client every component uses: generic calls over JSON values, typed helpers over
//! k8s-openapi types, and an [`Informer`] (list, then watch; resume after disconnects; relist
//! when the watch expires; a local cache and a change feed).

#![forbid(unsafe_code)]

pub mod informer;
pub mod runtime;

pub use informer::{Change, Informer};

use flotilla_api::error::{ApiError, Reason};
use flotilla_api::proto::{self, api_client::ApiClient};
use flotilla_api::prune::Keep;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

pub use flotilla_pki::{Connection, KeyHolder, Kubeconfig};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

#[derive(Clone)]
pub struct Client {
    inner: ApiClient<InterceptedService<Channel, Credentials>>,
    channel: Channel,
    credentials: Credentials,
    /// The field manager the server records for this client's writes (`managedFields`).
    field_manager: String,
}

/// Headers every call carries: `authorization` when the client has a bearer token, and
/// `impersonate-user` / `impersonate-group` when it acts as someone else.
#[derive(Clone, Default)]
pub struct Credentials(Vec<(&'static str, MetadataValue<Ascii>)>);

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        for (k, v) in &self.0 {
            req.metadata_mut().append(*k, v.clone());
        }
        Ok(req)
    }
}

/// The executable's name, as client-go derives a field manager from its user agent.
fn default_field_manager() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "flotilla".into())
}

fn header_value(what: &str, v: &str) -> Result<MetadataValue<Ascii>, ApiError> {
    v.parse().map_err(|_| {
        ApiError::bad_request(format!("the {what} has characters a header cannot carry"))
    })
}

#[derive(Debug, Clone, Default)]
pub struct ListParams {
    pub label_selector: String,
    pub field_selector: String,
    pub limit: i64,
    pub continue_token: String,
}

#[derive(Debug, Clone)]
pub struct ObjectList {
    pub items: Vec<Value>,
    pub resource_version: String,
    pub continue_token: String,
    pub remaining: i64,
}

#[derive(Debug, Clone, Default)]
pub struct DeleteParams {
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: String,
    pub precondition_uid: String,
    pub precondition_resource_version: String,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Default)]
pub struct WatchParams {
    pub label_selector: String,
    pub field_selector: String,
    /// "": the current state as ADDED events first.
    pub resource_version: String,
    pub send_initial_events: bool,
    pub allow_bookmarks: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
    Bookmark,
}

#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub kind: EventType,
    pub object: Value,
}

impl WatchEvent {
    pub fn resource_version(&self) -> &str {
        self.object.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("")
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<bytes::Bytes, ApiError> {
    serde_json::to_vec(v)
        .map(Into::into)
        .map_err(|e| ApiError::bad_request(format!("cannot encode the object: {e}")))
}

fn decode(b: &[u8], keep: &Keep) -> Result<Value, ApiError> {
    flotilla_api::prune::decode(b, keep)
        .map_err(|e| ApiError::internal(format!("undecodable object from the server: {e}")))
}

fn unreachable_err(url: &str, e: tonic::transport::Error) -> ApiError {
    // The transport error's own text is "transport error"; the cause says what happened.
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    ApiError::new(Reason::Unavailable, format!("cannot reach the API server at {url}: {msg}"))
}

fn from_json<T: DeserializeOwned>(b: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(b)
        .map_err(|e| ApiError::internal(format!("undecodable object from the server: {e}")))
}

/// A namespaced key as the informer keeps it: `namespace/name`, or `name`.
pub fn object_key(v: &Value) -> String {
    let ns = v.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("");
    let name = v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    if ns.is_empty() {
        name.to_string()
    } else {
        format!("{ns}/{name}")
    }
}

/// How a client reaches the API server over TLS.
#[derive(Clone, Debug, Default)]
pub struct Tls {
    /// The CA to verify the server against (PEM); `None`: any server (kubeconfig's
    /// `insecure-skip-tls-verify`).
    pub ca_pem: Option<String>,
    /// The client certificate, renewed in place by its owner.
    pub identity: Option<Arc<KeyHolder>>,
    pub server_name: Option<String>,
}

impl Tls {
    /// From a kubeconfig's connection.
    pub fn from_connection(c: &Connection) -> Result<Tls, ApiError> {
        let identity = match &c.client_cert {
            Some(i) => Some(KeyHolder::new(i).map_err(|e| {
                ApiError::bad_request(format!("context \"{}\": client certificate: {e}", c.context))
            })?),
            None => None,
        };
        if c.ca_pem.is_none() && !c.insecure && c.server.starts_with("https://") {
            return Err(ApiError::bad_request(format!(
                "context \"{}\": the cluster has neither certificate-authority(-data) nor insecure-skip-tls-verify",
                c.context
            )));
        }
        Ok(Tls {
            ca_pem: if c.insecure { None } else { c.ca_pem.clone() },
            identity,
            server_name: c.tls_server_name.clone(),
        })
    }
}

impl Client {
    /// Connects now over plain HTTP/2 (`http://` URLs): a wrong address is reported at once.
    /// Servers only speak TLS; see [`Client::connect_to`].
    pub async fn connect(url: &str) -> Result<Self, ApiError> {
        let ep = Self::endpoint(url)?;
        let ch = ep.connect().await.map_err(|e| unreachable_err(url, e))?;
        Ok(Self::from_channel(ch))
    }

    /// Connects on first use and reconnects as needed, over plain HTTP/2.
    pub fn connect_lazy(url: &str) -> Result<Self, ApiError> {
        Ok(Self::from_channel(Self::endpoint(url)?.connect_lazy()))
    }

    /// Connects now to a kubeconfig's cluster, with its credentials.
    pub async fn connect_to(c: &Connection) -> Result<Self, ApiError> {
        let tls = Tls::from_connection(c)?;
        let client = Self::connect_tls(&c.server, tls).await?;
        match &c.token {
            Some(t) => client.with_token(t),
            None => Ok(client),
        }
    }

    /// Connects now over TLS.
    pub async fn connect_tls(url: &str, tls: Tls) -> Result<Self, ApiError> {
        let (ep, conn) = Self::tls_endpoint(url, tls)?;
        let ch = ep.connect_with_connector(conn).await.map_err(|e| unreachable_err(url, e))?;
        Ok(Self::from_channel(ch))
    }

    /// Connects on first use and reconnects as needed, over TLS: for long-running
    /// components, whose certificates renew in `tls.identity`.
    pub fn connect_lazy_tls(url: &str, tls: Tls) -> Result<Self, ApiError> {
        let (ep, conn) = Self::tls_endpoint(url, tls)?;
        Ok(Self::from_channel(ep.connect_with_connector_lazy(conn)))
    }

    fn tls_endpoint(
        url: &str,
        tls: Tls,
    ) -> Result<(Endpoint, flotilla_pki::tls::Connector), ApiError> {
        let url = if url.contains("://") { url.to_string() } else { format!("https://{url}") };
        if !url.starts_with("https://") {
            return Err(ApiError::bad_request(format!(
                "server {url:?}: the API server only serves https://"
            )));
        }
        let config = flotilla_pki::tls::client_config(tls.ca_pem.as_deref(), tls.identity)
            .map_err(|e| ApiError::bad_request(format!("TLS configuration: {e}")))?;
        Ok((Self::endpoint(&url)?, flotilla_pki::tls::Connector::new(config, tls.server_name)))
    }

    fn endpoint(url: &str) -> Result<Endpoint, ApiError> {
        let url = if url.contains("://") { url.to_string() } else { format!("http://{url}") };
        Ok(Endpoint::from_shared(url.clone())
            .map_err(|e| ApiError::bad_request(format!("invalid server address {url:?}: {e}")))?
            .tcp_nodelay(true)
            // Fixed receive windows, not adaptive ones (which start at 64 KiB): h2 closes a
            // connection whose unread small DATA frames exceed half the connection window
            // (ENHANCE_YOUR_CALM "too_many_data_frames"), and a busy client whose window is
            // exhausted gets responses and events in window-sized fragments. 8 MiB allows
            // ~16k of them. A stream's window stays at 1 MiB: enough for lists to stream on a
            // LAN, small enough that a watch the client does not read soon holds the server's
            // queue for it (which cuts it off) rather than megabytes here.
            .initial_connection_window_size(8 << 20)
            .initial_stream_window_size(1 << 20)
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true))
    }

    fn from_channel(ch: Channel) -> Self {
        Self::with_credentials(ch, Credentials::default())
    }

    fn with_credentials(ch: Channel, creds: Credentials) -> Self {
        Client {
            inner: ApiClient::with_interceptor(ch.clone(), creds.clone())
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(64 << 20),
            channel: ch,
            credentials: creds,
            field_manager: default_field_manager(),
        }
    }

    /// This client, writing as field manager `name` (kubectl's `--field-manager`).
    pub fn with_field_manager(mut self, name: &str) -> Self {
        self.field_manager = name.to_string();
        self
    }

    /// A GET of a path of the API server's HTTP API (`/version`, `/api/v1/pods`, `/metrics`)
    /// on this client's connection and with its credentials: `kubectl get --raw`. Answers the
    /// status code and the body.
    pub async fn raw_get(&self, path: &str) -> Result<(u16, bytes::Bytes), ApiError> {
        use http_body_util::BodyExt;
        use tonic::codegen::Service;
        let mut req = http::Request::builder().method("GET").uri(path);
        for (k, v) in &self.credentials.0 {
            req = req.header(*k, v.as_bytes());
        }
        let req = req
            .body(tonic::body::Body::empty())
            .map_err(|e| ApiError::bad_request(format!("{path}: {e}")))?;
        let mut ch = self.channel.clone();
        futures::future::poll_fn(|cx| ch.poll_ready(cx))
            .await
            .map_err(|e| ApiError::new(flotilla_api::Reason::Unavailable, e.to_string()))?;
        let resp = ch
            .call(req)
            .await
            .map_err(|e| ApiError::new(flotilla_api::Reason::Unavailable, e.to_string()))?;
        let code = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ApiError::new(flotilla_api::Reason::Unavailable, e.to_string()))?
            .to_bytes();
        Ok((code, body))
    }

    pub async fn create(
        &self,
        resource: &str,
        ns: &str,
        obj: &Value,
    ) -> Result<(Value, Vec<String>), ApiError> {
        self.create_opts(resource, ns, obj, false).await
    }

    pub async fn create_opts(
        &self,
        resource: &str,
        ns: &str,
        obj: &Value,
        dry_run: bool,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let r = self.create_json(resource, ns, to_json(obj)?, dry_run).await?;
        Ok((from_json(&r.object)?, r.warnings))
    }

    /// A create of an object already encoded as JSON, answered undecoded: for load generators
    /// that need neither step done for them.
    pub async fn create_json(
        &self,
        resource: &str,
        ns: &str,
        object: bytes::Bytes,
        dry_run: bool,
    ) -> Result<proto::ObjectResponse, ApiError> {
        let r = proto::CreateRequest {
            resource: resource.into(),
            namespace: ns.into(),
            object,
            dry_run,
            field_manager: self.field_manager.clone(),
        };
        Ok(self.inner.clone().create(r).await?.into_inner())
    }

    pub async fn get(&self, resource: &str, ns: &str, name: &str) -> Result<Value, ApiError> {
        let r = self
            .inner
            .clone()
            .get(proto::GetRequest {
                resource: resource.into(),
                namespace: ns.into(),
                name: name.into(),
            })
            .await?
            .into_inner();
        from_json(&r.object)
    }

    pub async fn list(
        &self,
        resource: &str,
        ns: &str,
        p: &ListParams,
    ) -> Result<ObjectList, ApiError> {
        self.list_with(resource, ns, p, &Keep::All).await
    }

    /// A list page keeping `keep` of each item.
    async fn list_with(
        &self,
        resource: &str,
        ns: &str,
        p: &ListParams,
        keep: &Keep,
    ) -> Result<ObjectList, ApiError> {
        let r = self
            .inner
            .clone()
            .list(proto::ListRequest {
                resource: resource.into(),
                namespace: ns.into(),
                label_selector: p.label_selector.clone(),
                field_selector: p.field_selector.clone(),
                limit: p.limit,
                continue_token: p.continue_token.clone(),
            })
            .await?
            .into_inner();
        let items = r.items.iter().map(|b| decode(b, keep)).collect::<Result<_, _>>()?;
        Ok(ObjectList {
            items,
            resource_version: r.resource_version,
            continue_token: r.continue_token,
            remaining: r.remaining_item_count,
        })
    }

    /// Every page of a list.
    pub async fn list_all(
        &self,
        resource: &str,
        ns: &str,
        p: &ListParams,
    ) -> Result<ObjectList, ApiError> {
        self.list_all_with(resource, ns, p, &Keep::All).await
    }

    async fn list_all_with(
        &self,
        resource: &str,
        ns: &str,
        p: &ListParams,
        keep: &Keep,
    ) -> Result<ObjectList, ApiError> {
        let mut p = p.clone();
        if p.limit == 0 {
            p.limit = 500;
        }
        let mut all = self.list_with(resource, ns, &p, keep).await?;
        while !all.continue_token.is_empty() {
            p.continue_token = std::mem::take(&mut all.continue_token);
            let page = match self.list_with(resource, ns, &p, keep).await {
                Ok(page) => page,
                // The pages' snapshot was compacted: one unpaginated list instead (client-go's
                // pager does the same).
                Err(e) if e.reason == Reason::Expired => {
                    let p = ListParams { limit: 0, continue_token: String::new(), ..p };
                    return self.list_with(resource, ns, &p, keep).await;
                }
                Err(e) => return Err(e),
            };
            all.items.extend(page.items);
            all.continue_token = page.continue_token;
            // Every page is of the first page's snapshot: `all.resource_version` stays.
        }
        Ok(all)
    }

    pub async fn update(
        &self,
        resource: &str,
        ns: &str,
        obj: &Value,
    ) -> Result<(Value, Vec<String>), ApiError> {
        self.update_sub(resource, ns, obj, "").await
    }

    pub async fn update_status(
        &self,
        resource: &str,
        ns: &str,
        obj: &Value,
    ) -> Result<Value, ApiError> {
        Ok(self.update_sub(resource, ns, obj, "status").await?.0)
    }

    /// Approves or denies a CertificateSigningRequest: only its conditions change.
    pub async fn update_approval(
        &self,
        resource: &str,
        ns: &str,
        obj: &Value,
    ) -> Result<Value, ApiError> {
        Ok(self.update_sub(resource, ns, obj, "approval").await?.0)
    }

    async fn update_sub(
        &self,
        resource: &str,
        ns: &str,
        obj: &Value,
        sub: &str,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let r = self
            .inner
            .clone()
            .update(proto::UpdateRequest {
                resource: resource.into(),
                namespace: ns.into(),
                object: to_json(obj)?,
                subresource: sub.into(),
                dry_run: false,
                field_manager: self.field_manager.clone(),
            })
            .await?
            .into_inner();
        Ok((from_json(&r.object)?, r.warnings))
    }

    /// A JSON merge patch (`json: false`) or a JSON patch.
    pub async fn patch(
        &self,
        resource: &str,
        ns: &str,
        name: &str,
        patch: &Value,
        json: bool,
        status: bool,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let kind = if json { proto::PatchType::Json } else { proto::PatchType::Merge };
        let sub = if status { "status" } else { "" };
        self.send_patch(resource, ns, name, kind, patch, sub, false, false).await
    }

    /// Server-side apply of `config` (the fields this client's field manager owns), creating
    /// the object when it does not exist; `force` takes fields other managers own.
    pub async fn apply(
        &self,
        resource: &str,
        ns: &str,
        config: &Value,
        force: bool,
        dry_run: bool,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let name = config.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        let kind = proto::PatchType::Apply;
        self.send_patch(resource, ns, name, kind, config, "", dry_run, force).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn send_patch(
        &self,
        resource: &str,
        ns: &str,
        name: &str,
        kind: proto::PatchType,
        patch: &Value,
        subresource: &str,
        dry_run: bool,
        force: bool,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let r = self
            .inner
            .clone()
            .patch(proto::PatchRequest {
                resource: resource.into(),
                namespace: ns.into(),
                name: name.into(),
                patch_type: kind as i32,
                patch: to_json(patch)?,
                subresource: subresource.into(),
                dry_run,
                field_manager: self.field_manager.clone(),
                force,
            })
            .await?
            .into_inner();
        Ok((from_json(&r.object)?, r.warnings))
    }

    pub async fn delete(
        &self,
        resource: &str,
        ns: &str,
        name: &str,
        p: &DeleteParams,
    ) -> Result<Value, ApiError> {
        let r = self
            .inner
            .clone()
            .delete(proto::DeleteRequest {
                resource: resource.into(),
                namespace: ns.into(),
                name: name.into(),
                grace_period_seconds: p.grace_period_seconds,
                propagation_policy: p.propagation_policy.clone(),
                precondition_uid: p.precondition_uid.clone(),
                precondition_resource_version: p.precondition_resource_version.clone(),
                dry_run: p.dry_run,
            })
            .await?
            .into_inner();
        from_json(&r.object)
    }

    /// A watch as a stream of events; it ends with an error telling the caller to resume
    /// (TooManyRequests, Unavailable) or relist (Expired).
    pub async fn watch(
        &self,
        resource: &str,
        ns: &str,
        p: &WatchParams,
    ) -> Result<
        impl futures::Stream<Item = Result<Vec<WatchEvent>, ApiError>> + Send + 'static,
        ApiError,
    > {
        use futures::StreamExt;
        let stream = self.watch_json(resource, ns, p).await?;
        Ok(stream.map(|batch| {
            batch?
                .into_iter()
                .map(|(kind, object)| Ok(WatchEvent { kind, object: from_json(&object)? }))
                .collect()
        }))
    }

    /// [`Client::watch`] with each object left as the JSON the server sent, for a caller that
    /// decodes only what it needs.
    pub async fn watch_json(
        &self,
        resource: &str,
        ns: &str,
        p: &WatchParams,
    ) -> Result<
        impl futures::Stream<Item = Result<Vec<(EventType, bytes::Bytes)>, ApiError>> + Send + 'static,
        ApiError,
    > {
        use futures::StreamExt;
        let stream = self
            .inner
            .clone()
            .watch(proto::WatchRequest {
                resource: resource.into(),
                namespace: ns.into(),
                label_selector: p.label_selector.clone(),
                field_selector: p.field_selector.clone(),
                resource_version: p.resource_version.clone(),
                send_initial_events: p.send_initial_events,
                allow_bookmarks: p.allow_bookmarks,
            })
            .await?
            .into_inner();
        Ok(stream.map(|r| {
            let r = r.map_err(ApiError::from)?;
            r.events
                .into_iter()
                .map(|raw| {
                    use prost::Message;
                    let e = proto::WatchEvent::decode(raw)
                        .map_err(|e| ApiError::internal(format!("undecodable watch event: {e}")))?;
                    let kind = match proto::EventType::try_from(e.r#type) {
                        Ok(proto::EventType::Added) => EventType::Added,
                        Ok(proto::EventType::Modified) => EventType::Modified,
                        Ok(proto::EventType::Deleted) => EventType::Deleted,
                        _ => EventType::Bookmark,
                    };
                    Ok((kind, e.object))
                })
                .collect()
        }))
    }

    /// A container's log (kubectl logs), relayed by the API server from the pod's node: the
    /// stream's chunks in order; it ends with the log (or, following, with the container).
    pub async fn pod_logs(
        &self,
        r: proto::PodLogsRequest,
    ) -> Result<
        impl futures::Stream<Item = Result<bytes::Bytes, ApiError>> + Send + 'static,
        ApiError,
    > {
        use futures::StreamExt;
        let stream = self.inner.clone().pod_logs(r).await?.into_inner();
        Ok(stream.map(|c| c.map(|c| c.data).map_err(ApiError::from)))
    }

    /// A command in a running container (kubectl exec), relayed by the API server to the
    /// pod's node: `input` starts with an `ExecStart`; the output ends with the exit code.
    pub async fn pod_exec(
        &self,
        input: impl futures::Stream<Item = proto::ExecInput> + Send + 'static,
    ) -> Result<
        impl futures::Stream<Item = Result<proto::ExecOutput, ApiError>> + Send + 'static,
        ApiError,
    > {
        use futures::StreamExt;
        let stream = self.inner.clone().pod_exec(input).await?.into_inner();
        Ok(stream.map(|m| m.map_err(ApiError::from)))
    }

    /// Usage of pods or nodes (metrics.k8s.io PodMetrics / NodeMetrics), and warnings naming
    /// nodes that did not answer.
    pub async fn metrics(
        &self,
        r: proto::MetricsRequest,
    ) -> Result<(Vec<Value>, Vec<String>), ApiError> {
        let out = self.inner.clone().metrics(r).await?.into_inner();
        let items = out.items.iter().map(|b| from_json(b)).collect::<Result<Vec<_>, _>>()?;
        Ok((items, out.warnings))
    }

    /// The HTTP/2 channel under this client (TLS and credentials included), for callers
    /// that speak the generated gRPC clients directly (benchmarks).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// This client, sending `token` as its bearer token on every call.
    pub fn with_token(self, token: &str) -> Result<Self, ApiError> {
        let v = header_value("bearer token", &format!("Bearer {}", token.trim()))?;
        let mut c = self.credentials.clone();
        c.0.retain(|(k, _)| *k != "authorization");
        c.0.push(("authorization", v));
        Ok(Self::with_credentials(self.channel, c).with_field_manager(&self.field_manager))
    }

    /// This client, acting as `user` (and `groups`): Kubernetes' impersonation, which the
    /// server allows to holders of the `impersonate` verb (`kubectl --as`, `--as-group`).
    pub fn impersonate(self, user: &str, groups: &[String]) -> Result<Self, ApiError> {
        let mut c = self.credentials.clone();
        c.0.retain(|(k, _)| !k.starts_with("impersonate-"));
        c.0.push(("impersonate-user", header_value("user to impersonate", user)?));
        for g in groups {
            c.0.push(("impersonate-group", header_value("group to impersonate", g)?));
        }
        Ok(Self::with_credentials(self.channel, c).with_field_manager(&self.field_manager))
    }

    /// Binds a pod to a node through the pods/binding subresource; `uid`, when not empty, is a
    /// precondition (a pod re-created under the same name is not bound).
    pub async fn bind(&self, ns: &str, name: &str, uid: &str, node: &str) -> Result<(), ApiError> {
        let mut meta = serde_json::json!({"name": name, "namespace": ns});
        if !uid.is_empty() {
            meta["uid"] = Value::String(uid.into());
        }
        let binding = serde_json::json!({"apiVersion": "v1", "kind": "Binding", "metadata": meta,
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
        let r = proto::BindRequest {
            namespace: ns.to_string(),
            name: name.to_string(),
            object: to_json(&binding)?,
        };
        // The answer is a Status, as Kubernetes' binding returns: the pod comes by the watch.
        self.inner.clone().bind(r).await?;
        Ok(())
    }

    /// A bound token for service account `ns/name` (`kubectl create token`): `request` is an
    /// authentication.k8s.io/v1 TokenRequest; the answer has `status.token`.
    pub async fn create_token(
        &self,
        ns: &str,
        name: &str,
        request: &Value,
    ) -> Result<Value, ApiError> {
        let r = proto::CreateTokenRequest {
            namespace: ns.to_string(),
            name: name.to_string(),
            object: to_json(request)?,
        };
        from_json(&self.inner.clone().create_token(r).await?.into_inner().object)
    }

    /// A TokenReview with its status filled in.
    pub async fn review_token(&self, review: &Value) -> Result<Value, ApiError> {
        let r = proto::ReviewTokenRequest { object: to_json(review)? };
        from_json(&self.inner.clone().review_token(r).await?.into_inner().object)
    }

    /// The caller's identity (a SelfSubjectReview).
    pub async fn who_am_i(&self) -> Result<Value, ApiError> {
        from_json(&self.inner.clone().who_am_i(proto::WhoAmIRequest {}).await?.into_inner().object)
    }

    /// A SelfSubjectAccessReview, SelfSubjectRulesReview or SubjectAccessReview answered.
    pub async fn review_access(&self, review: &Value) -> Result<Value, ApiError> {
        let r = proto::ReviewAccessRequest { object: to_json(review)? };
        from_json(&self.inner.clone().review_access(r).await?.into_inner().object)
    }

    pub async fn discovery(&self) -> Result<proto::DiscoveryResponse, ApiError> {
        Ok(self.inner.clone().discovery(proto::DiscoveryRequest {}).await?.into_inner())
    }

    // ---- typed helpers over k8s-openapi types ----

    pub async fn get_typed<K: k8s_openapi::Resource + DeserializeOwned>(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<K, ApiError> {
        let v = self.get(K::URL_PATH_SEGMENT, ns, name).await?;
        serde_json::from_value(v).map_err(|e| ApiError::internal(e.to_string()))
    }

    pub async fn create_typed<K: k8s_openapi::Resource + Serialize + DeserializeOwned>(
        &self,
        ns: &str,
        obj: &K,
    ) -> Result<K, ApiError> {
        let v = serde_json::to_value(obj).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let (out, _) = self.create(K::URL_PATH_SEGMENT, ns, &v).await?;
        serde_json::from_value(out).map_err(|e| ApiError::internal(e.to_string()))
    }

    pub async fn list_typed<K: k8s_openapi::Resource + DeserializeOwned>(
        &self,
        ns: &str,
        p: &ListParams,
    ) -> Result<Vec<K>, ApiError> {
        let l = self.list_all(K::URL_PATH_SEGMENT, ns, p).await?;
        l.items
            .into_iter()
            .map(|v| serde_json::from_value(v).map_err(|e| ApiError::internal(e.to_string())))
            .collect()
    }
}
