//! Client certificates from CertificateSigningRequests: the approver and the signer that
//! Kubernetes' controller manager runs (`csrapproving`, `csrsigning`). Requests for
//! `kubernetes.io/kube-apiserver-client-kubelet` are approved here; those for
//! `kubernetes.io/kube-apiserver-client` once an administrator approves them; both are signed
//! with the cluster CA.
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
/// Client certificates for people and programs, approved by an administrator.
pub const API_SERVER_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";

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
    if let Verdict::Deny(why) = judge_subject_only(KUBELET_CLIENT_SIGNER, spec, pem) {
        return Verdict::Deny(why);
    }
    let (cn, _) = flotilla_pki::ca::csr_subject(pem).unwrap_or_default();
    let node = cn.strip_prefix("system:node:").unwrap_or_default();
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
    let signer = csr["spec"]["signerName"].as_str().unwrap_or_default();
    if ![KUBELET_CLIENT_SIGNER, API_SERVER_CLIENT_SIGNER].contains(&signer)
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
    let mut conds = out["status"]["conditions"].as_array().cloned().unwrap_or_default();
    if !condition(csr, "Approved") {
        // Only kubelet client certificates are approved here; the rest wait for an
        // administrator (`kubectl certificate approve`).
        if signer != KUBELET_CLIENT_SIGNER {
            return;
        }
        let (kind, reason, msg) = match judge(client, csr, &pem).await {
            Verdict::Pending => return,
            Verdict::Deny(why) => {
                tracing::warn!(csr = %name, %why, "denied a certificate signing request");
                ("Denied", "SignerValidationFailure", why)
            }
            Verdict::Approve(msg) => ("Approved", "AutoApproved", msg),
        };
        conds.push(json!({"type": kind, "status": "True", "reason": reason,
            "message": msg, "lastUpdateTime": now, "lastTransitionTime": now}));
        out["status"]["conditions"] = json!(conds);
        // Approval and issuance are separate writes, as in Kubernetes.
        match client.update_approval("certificatesigningrequests", "", &out).await {
            Ok(v) if kind == "Approved" => out = v,
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(csr = %name, error = %e.message, "CSR approval not written");
                return;
            }
        }
    }
    if let Verdict::Deny(why) = judge_subject_only(signer, &csr["spec"], &pem) {
        // Approved, but not a certificate this signer issues.
        let mut conds = out["status"]["conditions"].as_array().cloned().unwrap_or_default();
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
    out["status"]["certificate"] = json!(base64::engine::general_purpose::STANDARD.encode(cert));
    match client.update_status("certificatesigningrequests", "", &out).await {
        Ok(_) => tracing::info!(csr = %name, %cn, %signer, "signed a client certificate"),
        Err(e) => {
            tracing::debug!(csr = %name, error = %e.message, "CSR status not written (raced?)")
        }
    }
}

/// What a signer issues, whoever approved: a kubelet's CN=system:node:<name>, O=system:nodes;
/// for API server clients any subject but system:masters; client-auth usages only.
fn judge_subject_only(signer: &str, spec: &Value, pem: &str) -> Verdict {
    let (cn, orgs) = match flotilla_pki::ca::csr_subject(pem) {
        Ok(s) => s,
        Err(e) => return Verdict::Deny(format!("the request does not parse: {e}")),
    };
    let usages: Vec<&str> =
        spec["usages"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let permitted = ["digital signature", "key encipherment", "client auth"];
    if !usages.contains(&"client auth") || usages.iter().any(|u| !permitted.contains(u)) {
        return Verdict::Deny(format!(
            "usages must include \"client auth\" and only {permitted:?}, got {usages:?}"
        ));
    }
    if signer == KUBELET_CLIENT_SIGNER {
        if cn.strip_prefix("system:node:").is_none_or(str::is_empty) {
            return Verdict::Deny(format!(
                "{KUBELET_CLIENT_SIGNER} signs only CN=system:node:<name>, not CN={cn:?}"
            ));
        }
        if orgs != ["system:nodes"] {
            return Verdict::Deny(format!(
                "{KUBELET_CLIENT_SIGNER} signs only O=system:nodes, not O={orgs:?}"
            ));
        }
    }
    if cn.is_empty() || orgs.iter().any(|o| o == "system:masters") {
        return Verdict::Deny(format!("{signer} signs no empty CN and no system:masters group"));
    }
    Verdict::Approve(String::new())
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
