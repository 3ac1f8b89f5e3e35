//! The gRPC face of the API server, `/metrics` on the same port, and the watch streams.

use super::cache::{encode_event, CacheEvent, EventKind, Filter, Subscription, WatchCache};
use super::{encode, encode_continue, ApiServer};
use bytes::Bytes;
use flotilla_api::error::{ApiError, Reason};
use flotilla_api::patch::PatchKind;
use flotilla_api::proto::{self, api_server::Api};
use futures::Stream;
use prost::Message;
use serde_json::json;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status};

/// Events one watch response carries at most. With the queue below this bounds what a watcher
/// that does not read can hold: the ring cuts it off beyond that.
const WATCH_BATCH: usize = 64;
/// Responses queued per watcher ahead of the network.
const WATCH_QUEUE: usize = 4;
/// Initial-state events per response.
const INITIAL_BATCH: usize = 500;

#[derive(Clone)]
pub struct Service(pub Arc<ApiServer>);

type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::WatchResponse, Status>> + Send>>;
type LogStream = Pin<Box<dyn Stream<Item = Result<proto::LogChunk, Status>> + Send>>;
type ExecStream = Pin<Box<dyn Stream<Item = Result<proto::ExecOutput, Status>> + Send>>;

/// The URL of a node's agent API: its InternalIP and kubelet endpoint port.
fn node_url(n: &serde_json::Value) -> Result<String, ApiError> {
    let name = n["metadata"]["name"].as_str().unwrap_or_default();
    let addr = n["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .ok_or_else(|| {
            ApiError::new(Reason::Unavailable, format!("node {name} has no InternalIP"))
        })?;
    let port = n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64().unwrap_or(10250);
    let host = if addr.contains(':') { format!("[{addr}]") } else { addr.to_string() };
    Ok(format!("http://{host}:{port}"))
}

/// Usage as metrics-server writes it: CPU in nanocores, memory in KiB.
fn usage_json(u: &proto::Usage) -> serde_json::Value {
    json!({"cpu": format!("{}n", u.cpu_nanocores), "memory": format!("{}Ki", u.memory_working_set_bytes / 1024)})
}

fn container_names(pod: &serde_json::Value, key: &str) -> Vec<String> {
    pod["spec"][key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect()
}

/// Whether a write goes through the status subresource ("" or "status").
fn status_subresource(info: &flotilla_api::ResourceInfo, sub: &str) -> Result<bool, ApiError> {
    match sub {
        "" => Ok(false),
        "status" if info.has_status => Ok(true),
        other => Err(ApiError::new(
            Reason::NotFound,
            format!("{} has no subresource {other:?}", info.plural),
        )),
    }
}

fn obj_response(v: &serde_json::Value, warnings: Vec<String>) -> Response<proto::ObjectResponse> {
    Response::new(proto::ObjectResponse { object: encode(v), warnings })
}

impl Service {
    /// A pod and the URL of its node's agent API (the kubelet endpoint of its Node).
    async fn pod_node(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<(serde_json::Value, String), ApiError> {
        let s = &self.0;
        let ns = if ns.is_empty() { "default" } else { ns };
        let pod = s.get(s.resource("pods")?, ns, name).await?;
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        if node.is_empty() {
            return Err(ApiError::bad_request(format!(
                "pod {ns}/{name} is not scheduled to a node yet"
            )));
        }
        let n = s.get(s.resource("nodes")?, "", node).await?;
        Ok((pod, node_url(&n)?))
    }

    /// Runs one request in its span (so every line it logs says what it was for), records its
    /// latency and maps its error to a status in the one place that does.
    async fn timed<T, F>(
        &self,
        verb: &str,
        resource: &str,
        (namespace, name): (&str, &str),
        f: F,
    ) -> Result<T, Status>
    where
        F: std::future::Future<Output = Result<T, ApiError>>,
    {
        use tracing::Instrument;
        let started = Instant::now();
        let span = tracing::info_span!("request", verb, resource, namespace, name);
        let r = f.instrument(span).await;
        let res = flotilla_api::lookup(resource).map_or("unknown", |r| r.plural);
        self.0.record(verb, res, started);
        r.map_err(|e| e.to_status())
    }
}

#[tonic::async_trait]
impl Api for Service {
    async fn create(
        &self,
        req: Request<proto::CreateRequest>,
    ) -> Result<Response<proto::ObjectResponse>, Status> {
        let r = req.into_inner();
        let s = &self.0;
        self.timed("create", &r.resource, (&r.namespace, ""), async {
            let info = s.resource(&r.resource)?;
            let w = s.create(info, &r.namespace, &r.object, r.dry_run).await?;
            Ok(Response::new(proto::ObjectResponse { object: w.json(), warnings: w.warnings }))
        })
        .await
    }

    async fn get(
        &self,
        req: Request<proto::GetRequest>,
    ) -> Result<Response<proto::ObjectResponse>, Status> {
        let r = req.into_inner();
        let s = &self.0;
        self.timed("get", &r.resource, (&r.namespace, &r.name), async {
            let info = s.resource(&r.resource)?;
            let v = s.get(info, &r.namespace, &r.name).await?;
            Ok(obj_response(&v, vec![]))
        })
        .await
    }

    async fn list(
        &self,
        req: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListResponse>, Status> {
        let r = req.into_inner();
        let s = &self.0;
        self.timed("list", &r.resource, (&r.namespace, ""), async {
            let info = s.resource(&r.resource)?;
            let f = Filter::new(info, &r.namespace, &r.label_selector, &r.field_selector)?;
            let page = s.list(info, &f, r.limit, &r.continue_token).await?;
            Ok(Response::new(proto::ListResponse {
                items: page.items,
                resource_version: page.rev.to_string(),
                continue_token: page
                    .next
                    .as_deref()
                    .map(|k| encode_continue(page.rev, k))
                    .unwrap_or_default(),
                remaining_item_count: page.remaining,
            }))
        })
        .await
    }

    async fn update(
        &self,
        req: Request<proto::UpdateRequest>,
    ) -> Result<Response<proto::ObjectResponse>, Status> {
        let r = req.into_inner();
        let s = &self.0;
        let verb = if r.subresource == "status" { "update_status" } else { "update" };
        self.timed(verb, &r.resource, (&r.namespace, ""), async {
            let info = s.resource(&r.resource)?;
            let status = status_subresource(info, &r.subresource)?;
            let (v, w) = s.update(info, &r.namespace, &r.object, status, r.dry_run).await?;
            Ok(obj_response(&v, w))
        })
        .await
    }

    async fn patch(
        &self,
        req: Request<proto::PatchRequest>,
    ) -> Result<Response<proto::ObjectResponse>, Status> {
        let r = req.into_inner();
        let s = &self.0;
        self.timed("patch", &r.resource, (&r.namespace, &r.name), async {
            let info = s.resource(&r.resource)?;
            let status = status_subresource(info, &r.subresource)?;
            let kind = match proto::PatchType::try_from(r.patch_type) {
                Ok(proto::PatchType::Merge) => PatchKind::Merge,
                Ok(proto::PatchType::Json) => PatchKind::Json,
                Err(_) => return Err(ApiError::bad_request("unknown patch type")),
            };
            let (v, w) =
                s.patch(info, &r.namespace, &r.name, kind, &r.patch, status, r.dry_run).await?;
            Ok(obj_response(&v, w))
        })
        .await
    }

    async fn delete(
        &self,
        req: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::ObjectResponse>, Status> {
        let r = req.into_inner();
        let s = &self.0;
        self.timed("delete", &r.resource, (&r.namespace, &r.name), async {
            let info = s.resource(&r.resource)?;
            let v = s
                .delete(
                    info,
                    &r.namespace,
                    &r.name,
                    r.grace_period_seconds,
                    &r.propagation_policy,
                    &r.precondition_uid,
                    &r.precondition_resource_version,
                    r.dry_run,
                )
                .await?;
            Ok(obj_response(&v, vec![]))
        })
        .await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<proto::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let r = req.into_inner();
        let s = self.0.clone();
        let started = Instant::now();
        let setup = async {
            let info = s.resource(&r.resource)?;
            let f = Filter::new(info, &r.namespace, &r.label_selector, &r.field_selector)?;
            let from: i64 = match r.resource_version.as_str() {
                "" | "0" => 0,
                v => v.parse().map_err(|_| {
                    ApiError::bad_request(format!("resourceVersion {v:?} is not a revision"))
                })?,
            };
            let cache = s.cache(info).clone();
            let sub = cache.subscribe(from, &f, r.send_initial_events)?;
            Ok::<_, ApiError>((info, f, from, cache, sub))
        };
        let (info, f, from, cache, sub) = setup.await.map_err(|e| e.to_status())?;
        s.record("watch", info.plural, started);
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let w = Watch {
            s: s.clone(),
            cache,
            filter: f,
            from,
            bookmarks: r.allow_bookmarks,
            initial_end: r.send_initial_events,
            tx,
        };
        tokio::spawn(w.run(sub));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    type PodLogsStream = LogStream;

    /// Finds the pod's node and relays the stream of that node's agent (the kubelet proxy).
    async fn pod_logs(
        &self,
        req: Request<proto::PodLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let mut r = req.into_inner();
        let started = Instant::now();
        let (pod, url) = self.pod_node(&r.namespace, &r.name).await.map_err(|e| e.to_status())?;
        r.namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        if r.container.is_empty() {
            let names = container_names(&pod, "containers");
            match names.as_slice() {
                [one] => r.container = one.clone(),
                many => {
                    return Err(ApiError::bad_request(format!(
                        "a container name must be specified for pod {}, choose one of: [{}] or one of the init containers: [{}]",
                        r.name,
                        many.join(" "),
                        container_names(&pod, "initContainers").join(" ")
                    ))
                    .to_status())
                }
            }
        }
        let mut node = proto::node_client::NodeClient::connect(url.clone())
            .await
            .map_err(|e| Status::unavailable(format!("node agent at {url}: {e}")))?;
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
        let mut input = req.into_inner();
        let started = Instant::now();
        let mut start = match input.next().await {
            Some(Ok(proto::ExecInput { msg: Some(Msg::Start(s)) })) => s,
            Some(Err(e)) => return Err(e),
            _ => return Err(Status::invalid_argument("exec: the first message must be `start`")),
        };
        let (pod, url) =
            self.pod_node(&start.namespace, &start.name).await.map_err(|e| e.to_status())?;
        start.namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        start.uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_string();
        let names = container_names(&pod, "containers");
        if start.container.is_empty() {
            // kubectl's choice: the annotated default container, else the first.
            let annotated = pod["metadata"]["annotations"]
                ["kubectl.kubernetes.io/default-container"]
                .as_str()
                .filter(|c| names.iter().any(|n| n == c));
            start.container =
                annotated.or(names.first().map(|s| s.as_str())).unwrap_or_default().into();
        } else if !names.contains(&start.container)
            && !container_names(&pod, "initContainers").contains(&start.container)
        {
            return Err(ApiError::bad_request(format!(
                "container {} is not valid for pod {}",
                start.container, start.name
            ))
            .to_status());
        }
        if pod["status"]["phase"] == "Succeeded" || pod["status"]["phase"] == "Failed" {
            return Err(ApiError::bad_request(format!(
                "cannot exec into a container in a completed pod; current phase is {}",
                pod["status"]["phase"].as_str().unwrap_or_default()
            ))
            .to_status());
        }
        let mut node = proto::node_client::NodeClient::connect(url.clone())
            .await
            .map_err(|e| Status::unavailable(format!("node agent at {url}: {e}")))?;
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
        let r = req.into_inner();
        let started = Instant::now();
        let s = &self.0;
        let decode = |page: super::cache::ListPage| -> Vec<serde_json::Value> {
            page.items.iter().filter_map(|b| serde_json::from_slice(b).ok()).collect()
        };
        let fields =
            if r.name.is_empty() { String::new() } else { format!("metadata.name={}", r.name) };
        let gather = async {
            let (node_labels, pod_filter) = match r.resource.as_str() {
                "nodes" => (r.label_selector.as_str(), None),
                "pods" => {
                    let info = s.resource("pods")?;
                    let f =
                        super::cache::Filter::new(info, &r.namespace, &r.label_selector, &fields)?;
                    ("", Some(decode(s.list(info, &f, 0, "").await?)))
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "metrics are served for pods and nodes, not {other:?}"
                    )))
                }
            };
            let info = s.resource("nodes")?;
            let node_fields = if pod_filter.is_none() { fields.as_str() } else { "" };
            let f = super::cache::Filter::new(info, "", node_labels, node_fields)?;
            let mut nodes = decode(s.list(info, &f, 0, "").await?);
            if let Some(pods) = &pod_filter {
                let used: std::collections::HashSet<&str> =
                    pods.iter().filter_map(|p| p["spec"]["nodeName"].as_str()).collect();
                nodes.retain(|n| n["metadata"]["name"].as_str().is_some_and(|n| used.contains(n)));
            }
            let calls = nodes.iter().map(|n| async move {
                let name = n["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let summary = async {
                    let url = node_url(n).map_err(|e| e.message)?;
                    let mut c = proto::node_client::NodeClient::connect(url.clone())
                        .await
                        .map_err(|e| format!("node agent at {url}: {e}"))?;
                    c.stats(proto::StatsRequest {})
                        .await
                        .map(|r| r.into_inner())
                        .map_err(|e| e.message().to_string())
                };
                let res = tokio::time::timeout(std::time::Duration::from_secs(5), summary)
                    .await
                    .unwrap_or_else(|_| Err("timed out".into()));
                (name, res)
            });
            let mut warnings = Vec::new();
            let mut summaries = Vec::new();
            for (name, res) in futures::future::join_all(calls).await {
                match res {
                    Ok(sm) => summaries.push(sm),
                    Err(e) => warnings.push(format!("node {name}: metrics unavailable: {e}")),
                }
            }
            let window =
                |u: &proto::Usage| format!("{}s", (u.window_ms as f64 / 1000.0).round().max(1.0));
            let mut items = Vec::new();
            match &pod_filter {
                None => {
                    for sm in &summaries {
                        let Some(u) = sm.usage.as_ref().filter(|u| u.window_ms > 0) else {
                            continue;
                        };
                        items.push(
                            json!({"apiVersion": "metrics.k8s.io/v1beta1", "kind": "NodeMetrics",
                            "metadata": {"name": sm.node, "creationTimestamp": u.timestamp},
                            "timestamp": u.timestamp, "window": window(u), "usage": usage_json(u)}),
                        );
                    }
                }
                Some(pods) => {
                    let by_uid: std::collections::HashMap<&str, &proto::PodStats> = summaries
                        .iter()
                        .flat_map(|sm| sm.pods.iter())
                        .map(|p| (p.uid.as_str(), p))
                        .collect();
                    for pod in pods {
                        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
                        let Some(ps) = by_uid.get(uid) else { continue };
                        let Some(first) = ps.containers.first().and_then(|c| c.usage.as_ref())
                        else {
                            continue;
                        };
                        // Like metrics-server: a pod is reported once every container has a rate.
                        if ps
                            .containers
                            .iter()
                            .any(|c| c.usage.as_ref().is_none_or(|u| u.window_ms == 0))
                        {
                            continue;
                        }
                        let containers: Vec<serde_json::Value> = ps
                            .containers
                            .iter()
                            .map(|c| json!({"name": c.name, "usage": usage_json(c.usage.as_ref().expect("checked"))}))
                            .collect();
                        items.push(json!({"apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetrics",
                            "metadata": {"name": ps.name, "namespace": ps.namespace,
                                "labels": pod["metadata"]["labels"], "creationTimestamp": first.timestamp},
                            "timestamp": first.timestamp, "window": window(first), "containers": containers}));
                    }
                }
            }
            Ok::<_, ApiError>(proto::MetricsResponse {
                items: items.iter().map(encode).collect(),
                warnings,
            })
        };
        let out = gather.await.map_err(|e| e.to_status())?;
        s.record("get", "metrics", started);
        Ok(Response::new(out))
    }

    async fn bind(
        &self,
        req: Request<proto::BindRequest>,
    ) -> Result<Response<proto::ObjectResponse>, Status> {
        let r = req.into_inner();
        let s = &self.0;
        self.timed("create", "pods/binding", (&r.namespace, &r.name), async {
            s.bind(&r.namespace, &r.name, &r.object).await?;
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
        let r = req.into_inner();
        let s = &self.0;
        self.timed("create", "serviceaccounts/token", (&r.namespace, &r.name), async {
            let v = s.create_token(&r.namespace, &r.name, &r.object).await?;
            Ok(obj_response(&v, Vec::new()))
        })
        .await
    }

    async fn review_token(
        &self,
        req: Request<proto::ReviewTokenRequest>,
    ) -> Result<Response<proto::ObjectResponse>, Status> {
        let v = self.0.token_review(&req.into_inner().object).map_err(|e| e.to_status())?;
        Ok(obj_response(&v, Vec::new()))
    }

    async fn who_am_i(
        &self,
        req: Request<proto::WhoAmIRequest>,
    ) -> Result<Response<proto::ObjectResponse>, Status> {
        let user = match req.extensions().get::<Caller>() {
            Some(Caller(u)) => u.clone(),
            None => json!({"username": "system:anonymous", "groups": ["system:unauthenticated"]}),
        };
        let v = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
            "metadata": {"creationTimestamp": super::now_rfc3339()},
            "status": {"userInfo": user}});
        Ok(obj_response(&v, Vec::new()))
    }

    async fn discovery(
        &self,
        _req: Request<proto::DiscoveryRequest>,
    ) -> Result<Response<proto::DiscoveryResponse>, Status> {
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

/// One API watch: replays what it must, then follows the cache's ring.
struct Watch {
    s: Arc<ApiServer>,
    cache: Arc<WatchCache>,
    filter: Filter,
    from: i64,
    bookmarks: bool,
    /// The client asked for the initial state explicitly and wants to know where it ends.
    initial_end: bool,
    tx: mpsc::Sender<Result<proto::WatchResponse, Status>>,
}

impl Watch {
    fn bookmark(&self, rev: i64, initial_end: bool) -> Bytes {
        let info = self.cache.info;
        let mut obj = json!({"apiVersion": info.api_version(), "kind": info.kind,
            "metadata": {"resourceVersion": rev.to_string()}});
        if initial_end {
            // Tells the client the initial state is complete, as Kubernetes does.
            obj["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let ev =
            proto::WatchEvent { r#type: proto::EventType::Bookmark as i32, object: encode(&obj) };
        Bytes::from(ev.encode_to_vec())
    }

    fn push(&self, ev: &CacheEvent, out: &mut Vec<Bytes>) {
        if let Some(k) = self.filter.event_for(ev) {
            out.push(ev.encoded(k));
        }
    }

    async fn send(&self, events: Vec<Bytes>, seen: Option<Instant>) -> bool {
        if events.is_empty() {
            return true;
        }
        let plural = self.cache.info.plural;
        self.s.metrics.watch_events.with_label_values(&[plural]).inc_by(events.len() as u64);
        let ok = self.tx.send(Ok(proto::WatchResponse { events })).await.is_ok();
        if let Some(seen) = seen {
            self.s
                .metrics
                .watch_latency
                .with_label_values(&[plural])
                .observe(seen.elapsed().as_secs_f64());
        }
        ok
    }

    async fn end(&self, e: ApiError) {
        let _ = self.tx.send(Err(e.to_status())).await;
    }

    async fn run(self, mut sub: Subscription) {
        let plural = self.cache.info.plural;
        let gauge = self.s.metrics.watchers.with_label_values(&[plural]);
        gauge.inc();
        let _dec = scopeguard(move || gauge.dec());
        // Events at or below `last` are covered by the initial state or the start revision.
        let mut last = if sub.with_initial { sub.rev.max(self.from) } else { self.from };
        for chunk in std::mem::take(&mut sub.initial).chunks(INITIAL_BATCH) {
            let events = chunk.iter().map(|o| encode_event(EventKind::Added, &o.bytes)).collect();
            if !self.send(events, None).await {
                return;
            }
        }
        if sub.with_initial
            && self.initial_end
            && self.bookmarks
            && !self.send(vec![self.bookmark(last, true)], None).await
        {
            return;
        }
        let mut out = Vec::new();
        for ev in std::mem::take(&mut sub.replay) {
            self.push(&ev, &mut out);
            last = last.max(ev.rev);
            if out.len() >= WATCH_BATCH && !self.send(std::mem::take(&mut out), None).await {
                return;
            }
        }
        if !self.send(out, None).await {
            return;
        }
        let mut tick = tokio::time::interval(self.s.config.bookmark_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut bookmarked = last;
        loop {
            tokio::select! {
                r = sub.rx.recv() => {
                    let mut out = Vec::new();
                    let mut first_seen = None;
                    let mut next = r;
                    loop {
                        match next {
                            Ok(ev) => {
                                if ev.rev > last {
                                    first_seen.get_or_insert(ev.seen);
                                    self.push(&ev, &mut out);
                                    last = ev.rev;
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(n)) => {
                                self.s.metrics.watch_cutoffs.with_label_values(&[plural]).inc();
                                let _ = self.send(out, first_seen).await;
                                return self.end(ApiError::new(Reason::TooManyRequests, format!(
                                    "watch of {plural} fell {n} events behind and was cut off; resume from resourceVersion {last}"
                                ))).await;
                            }
                            Err(broadcast::error::RecvError::Closed) => {
                                let _ = self.send(out, first_seen).await;
                                return self.end(ApiError::new(Reason::Expired, format!(
                                    "the {plural} watch cache was rebuilt; relist"
                                ))).await;
                            }
                        }
                        if out.len() >= WATCH_BATCH {
                            break;
                        }
                        match sub.rx.try_recv() {
                            Ok(ev) => next = Ok(ev),
                            Err(broadcast::error::TryRecvError::Empty) => break,
                            Err(broadcast::error::TryRecvError::Lagged(n)) => next = Err(broadcast::error::RecvError::Lagged(n)),
                            Err(broadcast::error::TryRecvError::Closed) => next = Err(broadcast::error::RecvError::Closed),
                        }
                    }
                    if !self.send(out, first_seen).await {
                        return;
                    }
                }
                _ = tick.tick(), if self.bookmarks => {
                    // Read the revision before checking the ring: everything up to it was
                    // queued before it became visible.
                    let rev = self.cache.rev();
                    // Ask the cache to catch up with revisions of other types for the next tick.
                    self.cache.request_progress();
                    if sub.rx.is_empty() && rev > bookmarked.max(last) {
                        last = rev;
                        bookmarked = rev;
                        if !self.send(vec![self.bookmark(rev, false)], None).await {
                            return;
                        }
                    }
                }
                _ = self.tx.closed() => return,
            }
        }
    }
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct G<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for G<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f()
            }
        }
    }
    G(Some(f))
}

/// Who made a request, when it carried a valid bearer token (a UserInfo).
#[derive(Clone)]
struct Caller(serde_json::Value);

/// Checks the bearer token of a request that has one: a valid one names the caller, anything
/// else is refused (UNAUTHENTICATED); a request without one goes on as anonymous.
fn authenticate(server: &ApiServer, mut req: Request<()>) -> Result<Request<()>, Status> {
    let Some(h) = req.metadata().get("authorization") else { return Ok(req) };
    let token = h
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Status::unauthenticated("the authorization header is not \"Bearer <token>\"")
        })?;
    match server.review(token, &[]) {
        Ok(user) => {
            req.extensions_mut().insert(Caller(user));
            Ok(req)
        }
        Err(e) => {
            tracing::debug!(error = %e, "refused a bearer token");
            Err(ApiError::new(Reason::Unauthorized, format!("invalid bearer token: {e}"))
                .to_status())
        }
    }
}

/// Serves the API (gRPC, HTTP/2) and `/metrics` (HTTP/1.1 or 2) on one listener.
pub async fn serve(
    server: Arc<ApiServer>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let svc = proto::api_server::ApiServer::new(Service(server.clone()))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(256 << 20);
    let auth = server.clone();
    let svc = tonic::service::interceptor::InterceptedService::new(svc, move |req| {
        authenticate(&auth, req)
    });
    let mut routes = tonic::service::Routes::new(svc);
    let m = server.clone();
    let router = std::mem::take(routes.axum_router_mut()).route(
        "/metrics",
        axum::routing::get(move || {
            let m = m.clone();
            async move { m.metrics.render() }
        }),
    );
    *routes.axum_router_mut() = router;
    // The builder's tcp_nodelay applies only to listeners tonic binds itself; without it small
    // responses wait on Nagle and delayed ACKs (40 ms).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .accept_http1(true)
        .tcp_nodelay(true)
        // Fixed receive windows, not adaptive ones: h2 limits a connection's unread small DATA
        // frames (request bodies under 256 bytes, e.g. patches) to a budget of half the
        // connection window, and closes the connection with ENHANCE_YOUR_CALM
        // "too_many_data_frames" beyond it. An adaptive window starts at 64 KiB and only grows
        // with large bodies, so a client with ~160 small writes in flight to a busy server lost
        // every request on its connection. 8 MiB allows ~16k; what a connection may buffer
        // stays bounded by the window. (Lists travel the other way: the client's window.)
        .initial_connection_window_size(8 << 20)
        .initial_stream_window_size(1 << 20)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
