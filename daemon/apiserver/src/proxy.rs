//! The pods/log, pods/exec and pods/portforward subresources' rules: which node serves the pod and which
//! container is meant. The fronts only relay the streams to the node's agent.

use super::ApiServer;
use flotilla_api::error::{ApiError, Errors, Reason};
use serde_json::Value;

/// Where a log or exec request goes.
pub struct ProxyTarget {
    /// The node agent's API.
    pub url: String,
    pub namespace: String,
    pub uid: String,
    pub container: String,
}

/// The URL of a node's agent API: its InternalIP and kubelet endpoint port.
pub fn node_url(n: &Value) -> Result<String, ApiError> {
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
    Ok(format!("https://{host}:{port}"))
}

impl ApiServer {
    /// A connection to a node agent's API as the API server's kubelet client.
    pub(crate) async fn node_client(
        &self,
        url: &str,
    ) -> Result<flotilla_api::proto::node_client::NodeClient<tonic::transport::Channel>, String>
    {
        let Some(tls) = self.config.node_client.clone() else {
            return Err("this API server has no client certificate for node agents".into());
        };
        let ep = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|e| format!("node agent at {url}: {e}"))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .tcp_nodelay(true);
        let ch = ep
            .connect_with_connector(flotilla_pki::tls::Connector::new(tls, None))
            .await
            .map_err(|e| {
                let cause =
                    std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
                format!("node agent at {url}: {e}{cause}")
            })?;
        Ok(flotilla_api::proto::node_client::NodeClient::new(ch)
            .max_decoding_message_size(64 << 20))
    }
}

fn container_names(pod: &Value, key: &str) -> Vec<String> {
    pod["spec"][key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect()
}

impl ApiServer {
    /// A pod and the URL of its node's agent API (the kubelet endpoint of its Node).
    async fn pod_node(&self, ns: &str, name: &str) -> Result<(Value, String), ApiError> {
        let ns = if ns.is_empty() { "default" } else { ns };
        let pod = self.get(self.resource("pods")?, ns, name).await?;
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        if node.is_empty() {
            return Err(ApiError::bad_request(format!(
                "pod {ns}/{name} is not scheduled to a node yet"
            )));
        }
        let n = self.get(self.resource("nodes")?, "", node).await?;
        Ok((pod, node_url(&n)?))
    }

    fn target(pod: &Value, url: String, container: String) -> ProxyTarget {
        let meta = |k: &str| pod["metadata"][k].as_str().unwrap_or_default().to_string();
        ProxyTarget { url, namespace: meta("namespace"), uid: meta("uid"), container }
    }

    /// pods/log: the container defaults to the pod's only one (kubectl's rule).
    pub async fn log_target(
        &self,
        ns: &str,
        name: &str,
        container: &str,
    ) -> Result<ProxyTarget, ApiError> {
        let (pod, url) = self.pod_node(ns, name).await?;
        if !container.is_empty() {
            return Ok(Self::target(&pod, url, container.to_string()));
        }
        match container_names(&pod, "containers").as_slice() {
            [one] => Ok(Self::target(&pod, url, one.clone())),
            many => Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}] or one of the init containers: [{}]",
                many.join(" "),
                container_names(&pod, "initContainers").join(" ")
            ))),
        }
    }

    /// pods/exec: the container defaults to the annotated default container, else the first;
    /// a completed pod runs nothing.
    pub async fn exec_target(
        &self,
        ns: &str,
        name: &str,
        container: &str,
    ) -> Result<ProxyTarget, ApiError> {
        let (pod, url) = self.pod_node(ns, name).await?;
        let names = container_names(&pod, "containers");
        let container = if container.is_empty() {
            let annotated = pod["metadata"]["annotations"]
                ["kubectl.kubernetes.io/default-container"]
                .as_str()
                .filter(|c| names.iter().any(|n| n == c));
            annotated.or(names.first().map(|s| s.as_str())).unwrap_or_default().to_string()
        } else if !names.iter().any(|n| n == container)
            && !container_names(&pod, "initContainers").iter().any(|n| n == container)
        {
            return Err(ApiError::bad_request(format!(
                "container {container} is not valid for pod {name}"
            )));
        } else {
            container.to_string()
        };
        let phase = pod["status"]["phase"].as_str().unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            return Err(ApiError::bad_request(format!(
                "cannot exec into a container in a completed pod; current phase is {phase}"
            )));
        }
        Ok(Self::target(&pod, url, container))
    }

    /// pods/portforward: the pod's node; the agent dials the port in the pod's network.
    pub async fn forward_target(&self, ns: &str, name: &str) -> Result<ProxyTarget, ApiError> {
        let (pod, url) = self.pod_node(ns, name).await?;
        let phase = pod["status"]["phase"].as_str().unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            return Err(ApiError::bad_request(format!(
                "cannot port-forward to a completed pod; current phase is {phase}"
            )));
        }
        Ok(Self::target(&pod, url, String::new()))
    }
}

/// Kubernetes' ValidatePodLogOptions, for both fronts: `tailLines` is checked by the HTTP
/// front (in gRPC a negative value means every line).
pub fn validate_log_options(
    name: &str,
    r: &flotilla_api::proto::PodLogsRequest,
) -> Result<(), ApiError> {
    let mut e = Errors::default();
    if let Some(b) = r.limit_bytes.filter(|b| *b < 1) {
        e.invalid("limitBytes", b, "must be greater than 0");
    }
    match (r.since_seconds, r.since_time.is_empty()) {
        (Some(_), false) => {
            e.forbidden("", "at most one of `sinceTime` or `sinceSeconds` may be specified")
        }
        (Some(s), true) if s < 1 => e.invalid("sinceSeconds", s, "must be greater than 0"),
        (None, false) if r.since_time.parse::<jiff::Timestamp>().is_err() => {
            return Err(ApiError::bad_request(format!(
                "sinceTime {:?}: not an RFC 3339 time",
                r.since_time
            )))
        }
        _ => {}
    }
    if !r.stream.is_empty() && r.tail_lines >= 0 {
        e.forbidden("", "`tailLines` and specific `stream` are mutually exclusive for now");
    }
    if e.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid("PodLogOptions", name, e.0))
    }
}
