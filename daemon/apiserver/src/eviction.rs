//! pods/eviction (Kubernetes' EvictionREST): a graceful delete that a PodDisruptionBudget
//! can refuse. The budget's `disruptionsAllowed` is spent, and the pod recorded in its
//! `disruptedPods`, by a guarded status write before the pod is deleted, so concurrent
//! evictions cannot overdraw it; the disruption controller recounts the budget afterwards.

use super::request::User;
use super::{ApiServer, DeleteOptions, ListOptions};
use flotilla_api::error::{ApiError, Reason};
use flotilla_api::pod::pod_ready;
use flotilla_api::selector::LabelSelector;
use serde_json::{json, Value};

/// Kubernetes' MaxDisruptedPodSize: granted evictions the controller has not confirmed.
const MAX_DISRUPTED_PODS: usize = 2000;

fn budget_selects(pdb: &Value, labels: &std::collections::BTreeMap<String, String>) -> bool {
    LabelSelector::at(pdb, "/spec/selector").is_ok_and(|s| s.is_some_and(|s| s.matches(labels)))
}

fn too_many(message: String) -> ApiError {
    ApiError::new(Reason::TooManyRequests, message)
}

impl ApiServer {
    /// Evicts the pod `ns/name` once its budget allows it (authorization is the front's:
    /// `create` on pods/eviction).
    pub async fn evict(
        &self,
        user: &User,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<(), ApiError> {
        let pods = self.resource("pods")?;
        let budgets = self.resource("poddisruptionbudgets")?;
        for attempt in 0.. {
            let pod = self.get(pods, ns, name).await?;
            let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or_default();
            // Pods that are done, not started or already going need no budget (canIgnorePDB).
            let free = matches!(phase, "Succeeded" | "Failed" | "Pending")
                || !pod["metadata"]["deletionTimestamp"].is_null();
            if free {
                break;
            }
            let labels: std::collections::BTreeMap<String, String> =
                serde_json::from_value(pod["metadata"]["labels"].clone()).unwrap_or_default();
            let list = self.list_objects(budgets, ns, &ListOptions::default()).await?;
            let mut matching: Vec<Value> = list
                .items
                .iter()
                .filter(|b| budget_selects(&b.value, &labels))
                .map(|b| b.value.clone())
                .collect();
            let mut pdb = match matching.len() {
                0 => break,
                1 => matching.remove(0),
                _ => {
                    return Err(ApiError::internal(
                        "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                    ))
                }
            };
            let status = &pdb["status"];
            let int = |k: &str| status[k].as_i64().unwrap_or(0);
            if !pod_ready(&pod) {
                // An unready pod does not count towards the budget: AlwaysAllow lets it go,
                // IfHealthyBudget (the default) while the budget is met.
                let policy =
                    pdb.pointer("/spec/unhealthyPodEvictionPolicy").and_then(Value::as_str);
                let met =
                    int("currentHealthy") >= int("desiredHealthy") && int("desiredHealthy") > 0;
                if policy == Some("AlwaysAllow") || met {
                    break;
                }
            }
            let generation = pdb["metadata"]["generation"].as_i64().unwrap_or(0);
            let budget = pdb["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let refused = "Cannot evict pod as it would violate the pod's disruption budget.";
            if int("observedGeneration") < generation {
                return Err(too_many(format!(
                    "{refused} The disruption budget {budget} is still being processed by the server."
                )));
            }
            if int("disruptionsAllowed") < 0 {
                return Err(ApiError::forbidden("pdb disruptions allowed is negative"));
            }
            let disrupted = status["disruptedPods"].as_object().map_or(0, |m| m.len());
            if disrupted > MAX_DISRUPTED_PODS {
                return Err(ApiError::forbidden(
                    "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
                ));
            }
            if int("disruptionsAllowed") == 0 {
                return Err(too_many(format!(
                    "{refused} The disruption budget {budget} needs {} healthy pods and has {} currently",
                    int("desiredHealthy"),
                    int("currentHealthy")
                )));
            }
            if opts.dry_run {
                break;
            }
            let left = int("disruptionsAllowed") - 1;
            let now =
                jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or(jiff::Timestamp::now());
            pdb["status"]["disruptionsAllowed"] = json!(left);
            pdb["status"]["disruptedPods"][name] = json!(now.to_string());
            if left == 0 {
                if let Some(cs) = pdb["status"]["conditions"].as_array_mut() {
                    for c in cs.iter_mut().filter(|c| c["type"] == "DisruptionAllowed") {
                        c["status"] = json!("False");
                        c["reason"] = json!("InsufficientPods");
                        c["lastTransitionTime"] = json!(now.to_string());
                    }
                }
            }
            let body = serde_json::to_vec(&pdb).map_err(|e| ApiError::internal(e.to_string()))?;
            // The budget as read, or nothing: a concurrent eviction makes us read it again.
            // Written as the API server itself, as Kubernetes' loopback client does.
            let me = User::apiserver();
            match self.update(&me, budgets, ns, &body, "status", false, "kube-apiserver").await {
                Ok(_) => break,
                Err(e) if e.reason == Reason::Conflict && attempt < 20 => continue,
                Err(e) => return Err(e),
            }
        }
        self.delete(user, pods, ns, name, opts).await.map(|_| ())
    }
}
