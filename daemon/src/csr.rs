//! Node client certificates from CertificateSigningRequests: the approver and the signer that
//! Kubernetes' controller manager runs (`csrapproving`, `csrsigning`) for the signer
//! `kubernetes.io/kube-apiserver-client-kubelet`.
//!
//! A request is approved when its requester may ask for it, checked with a
//! SubjectAccessReview as Kubernetes does: a bootstrap token's user for a new node
//! (`certificatesigningrequests/nodeclient`), a node for its own renewal
//! (`certificatesigningrequests/selfnodeclient`). The subject must be
//! `CN=system:node:<name>, O=system:nodes`; anything else (another node's name, a group such
//! as `system:masters`) is denied with the reason, and never signed. It runs in every server
//! member: two signing the same request race on its resourceVersion and one write wins.

use flotilla_client::{Change, Client, Informer, WatchParams};
use flotilla_pki::{Ca, Request};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

enum Verdict {
    Approve(String),
    Deny(String),
    /// Not ours to decide (another signer, or a requester with no permission): left for an
    /// administrator, as in Kubernetes.
    Pending,
}

fn condition(csr: &Value, kind: &str) -> bool {
    csr["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == kind)
}

async fn allowed(client: &Client, spec: &Value, sub: &str) -> bool {
    let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": spec["username"], "groups": spec["groups"], "uid": spec["uid"],
            "resourceAttributes": {"group": "certificates.k8s.io", "resource": "certificatesigningrequests",
                "verb": "create", "subresource": sub}}});
    match client.review_access(&review).await {
        Ok(r) => r["status"]["allowed"] == true,
        Err(e) => {
            tracing::warn!(error = %e.message, "SubjectAccessReview for a CSR failed");
            false
        }
    }
}

async fn judge(client: &Client, csr: &Value, pem: &str) -> Verdict {
    let spec = &csr["spec"];
    let (cn, orgs) = match flotilla_pki::ca::csr_subject(pem) {
        Ok(s) => s,
        Err(e) => return Verdict::Deny(format!("the request does not parse: {e}")),
    };
    let Some(node) = cn.strip_prefix("system:node:").filter(|n| !n.is_empty()) else {
        return Verdict::Deny(format!(
            "{KUBELET_CLIENT_SIGNER} signs only CN=system:node:<name>, not CN={cn:?}"
        ));
    };
    if orgs != ["system:nodes"] {
        return Verdict::Deny(format!(
            "{KUBELET_CLIENT_SIGNER} signs only O=system:nodes, not O={orgs:?}"
        ));
    }
    let usages: Vec<&str> =
        spec["usages"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let permitted = ["digital signature", "key encipherment", "client auth"];
    if !usages.contains(&"client auth") || usages.iter().any(|u| !permitted.contains(u)) {
        return Verdict::Deny(format!(
            "usages must include \"client auth\" and only {permitted:?}, got {usages:?}"
        ));
    }
    let requester = spec["username"].as_str().unwrap_or_default();
    let groups: Vec<&str> =
        spec["groups"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if requester == cn {
        return if allowed(client, spec, "selfnodeclient").await {
            Verdict::Approve(
                "Auto approving self kubelet client certificate after SubjectAccessReview.".into(),
            )
        } else {
            Verdict::Pending
        };
    }
    if let Some(other) = requester.strip_prefix("system:node:") {
        return Verdict::Deny(format!(
            "node {other:?} may not request a certificate for node {node:?}"
        ));
    }
    if groups.contains(&"system:bootstrappers") && allowed(client, spec, "nodeclient").await {
        return Verdict::Approve(
            "Auto approving kubelet client certificate after SubjectAccessReview.".into(),
        );
    }
    Verdict::Pending
}

async fn handle(client: &Client, ca: &Ca, lifetime: Duration, csr: &Value) {
    if csr["spec"]["signerName"] != KUBELET_CLIENT_SIGNER
        || condition(csr, "Denied")
        || condition(csr, "Failed")
        || csr["status"]["certificate"].is_string()
    {
        return;
    }
    let name = csr["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let pem = csr["spec"]["request"]
        .as_str()
        .and_then(|b| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(b).ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default();
    let now = jiff::Timestamp::now().to_string();
    let mut out = csr.clone();
    let conds = out["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let mut conds = conds;
    let approved = condition(csr, "Approved");
    if !approved {
        match judge(client, csr, &pem).await {
            Verdict::Pending => return,
            Verdict::Deny(why) => {
                tracing::warn!(csr = %name, %why, "denied a certificate signing request");
                conds.push(
                    json!({"type": "Denied", "status": "True", "reason": "SignerValidationFailure",
                    "message": why, "lastUpdateTime": now, "lastTransitionTime": now}),
                );
                out["status"]["conditions"] = json!(conds);
                let _ = client.update_status("certificatesigningrequests", "", &out).await;
                return;
            }
            Verdict::Approve(msg) => {
                conds.push(json!({"type": "Approved", "status": "True", "reason": "AutoApproved",
                    "message": msg, "lastUpdateTime": now, "lastTransitionTime": now}));
            }
        }
    } else if let Verdict::Deny(why) = judge_subject_only(&pem) {
        // Approved by someone, but not a certificate this signer issues.
        conds.push(json!({"type": "Failed", "status": "True", "reason": "SignerValidationFailure",
            "message": why, "lastUpdateTime": now, "lastTransitionTime": now}));
        out["status"]["conditions"] = json!(conds);
        let _ = client.update_status("certificatesigningrequests", "", &out).await;
        return;
    }
    let (cn, orgs) = flotilla_pki::ca::csr_subject(&pem).unwrap_or_default();
    let want = csr["spec"]["expirationSeconds"].as_u64().map(Duration::from_secs);
    let life = want.map_or(lifetime, |w| w.min(lifetime));
    let orgs: Vec<&str> = orgs.iter().map(String::as_str).collect();
    let cert = match ca.sign_csr(&pem, &Request::client(&cn, &orgs).lifetime(life)) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(csr = %name, error = %e, "signing failed");
            return;
        }
    };
    use base64::Engine;
    out["status"]["conditions"] = json!(conds);
    out["status"]["certificate"] = json!(base64::engine::general_purpose::STANDARD.encode(cert));
    match client.update_status("certificatesigningrequests", "", &out).await {
        Ok(_) => tracing::info!(csr = %name, %cn, "approved and signed a node client certificate"),
        Err(e) => {
            tracing::debug!(csr = %name, error = %e.message, "CSR status not written (raced?)")
        }
    }
}

/// The subject rules alone (for requests an administrator approved by hand).
fn judge_subject_only(pem: &str) -> Verdict {
    match flotilla_pki::ca::csr_subject(pem) {
        Ok((cn, orgs)) if cn.starts_with("system:node:") && orgs == ["system:nodes"] => {
            Verdict::Approve(String::new())
        }
        Ok((cn, orgs)) => Verdict::Deny(format!(
            "{KUBELET_CLIENT_SIGNER} signs only CN=system:node:<name>, O=system:nodes, not CN={cn:?} O={orgs:?}"
        )),
        Err(e) => Verdict::Deny(format!("the request does not parse: {e}")),
    }
}

/// Runs for as long as the server does.
pub async fn run(client: Client, ca: Arc<Ca>, lifetime: Duration) {
    let inf =
        Informer::start(client.clone(), "certificatesigningrequests", "", WatchParams::default());
    let mut changes = inf.subscribe();
    while inf.wait_synced(Duration::from_secs(30)).await.is_err() {
        tracing::warn!("waiting for the CertificateSigningRequest list");
    }
    for csr in inf.list() {
        handle(&client, &ca, lifetime, &csr).await;
    }
    loop {
        match changes.recv().await {
            Ok(Change::Added(csr)) | Ok(Change::Modified { new: csr, .. }) => {
                handle(&client, &ca, lifetime, &csr).await
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                for csr in inf.list() {
                    handle(&client, &ca, lifetime, &csr).await;
                }
            }
            Err(_) => return,
        }
    }
}
