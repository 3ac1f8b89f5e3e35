//! The resource metrics API (metrics.k8s.io/v1beta1 NodeMetrics and PodMetrics, what
//! metrics-server serves): the latest sample of every node concerned, asked on demand.

use crate::proxy::node_url;
use crate::ApiServer;
use flotilla_api::error::ApiError;
use flotilla_api::proto;
use serde_json::{json, Value};

/// Usage as metrics-server writes it: CPU in nanocores, memory in KiB.
fn usage_json(u: &proto::Usage) -> Value {
    json!({"cpu": format!("{}n", u.cpu_nanocores), "memory": format!("{}Ki", u.memory_working_set_bytes / 1024)})
}

impl ApiServer {
    /// NodeMetrics (`resource` "nodes") or PodMetrics ("pods") matching the selector and
    /// name, with a warning per node whose agent did not answer.
    pub async fn resource_metrics(
        &self,
        resource: &str,
        namespace: &str,
        label_selector: &str,
        name: &str,
    ) -> Result<(Vec<Value>, Vec<String>), ApiError> {
        let s = self;
        let decode = |page: crate::cache::ListPage| -> Vec<serde_json::Value> {
            page.items.iter().map(|o| o.value.clone()).collect()
        };
        let fields = if name.is_empty() { String::new() } else { format!("metadata.name={name}") };
        let (node_labels, pod_filter) = match resource {
            "nodes" => (label_selector, None),
            "pods" => {
                let info = s.resource("pods")?;
                let f = crate::cache::Filter::new(info, namespace, label_selector, &fields)?;
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
        let f = crate::cache::Filter::new(info, "", node_labels, node_fields)?;
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
                let mut c = s.node_client(&url).await?;
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
                    let Some(first) = ps.containers.first().and_then(|c| c.usage.as_ref()) else {
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
        Ok((items, warnings))
    }
}
