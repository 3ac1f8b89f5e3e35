//! Kubernetes' certificate admission plugins, on by default there:
//! - CertificateApproval: approving or denying (the `approval` subresource) needs the `approve`
//!   verb on the request's signer (`signers` in certificates.k8s.io, named by signerName or by
//!   its domain's wildcard `example.com/*`);
//! - CertificateSigning: writing `status.certificate` needs `sign` on the signer;
//! - CertificateSubjectRestriction: no request to `kubernetes.io/kube-apiserver-client` for
//!   the `system:masters` group, which would bypass authorization altogether.

use crate::request::{Attributes, Decision, RequestInfo};
use crate::ApiServer;
use flotilla_api::error::ApiError;
use serde_json::Value;

pub const API_SERVER_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";

fn signer_allowed(api: &ApiServer, a: &Attributes<'_>, verb: &str, signer: &str) -> bool {
    let wildcard = signer.split_once('/').map(|(domain, _)| format!("{domain}/*"));
    std::iter::once(signer.to_string()).chain(wildcard).any(|name| {
        let attrs =
            RequestInfo::new(verb, "signers").group("certificates.k8s.io").at("", &name).by(a.user);
        api.decide(&attrs) == Decision::Allow
    })
}

pub(crate) fn admit(
    api: &ApiServer,
    a: &Attributes<'_>,
    obj: Option<&Value>,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let Some(obj) = obj.filter(|_| a.resource == "certificatesigningrequests") else {
        return Ok(());
    };
    let signer = obj.pointer("/spec/signerName").and_then(Value::as_str).unwrap_or_default();
    let forbid = |what: &str| {
        Err(ApiError::forbidden(format!(
            "certificatesigningrequests.certificates.k8s.io {:?} is forbidden: user not permitted to {what} requests with signerName {signer:?}",
            a.name
        )))
    };
    match (a.verb, a.subresource) {
        ("update" | "patch", "approval") => {
            let conds = |v: Option<&Value>| {
                v.and_then(|v| v.pointer("/status/conditions")).cloned().unwrap_or(Value::Null)
            };
            if conds(Some(obj)) != conds(old) && !signer_allowed(api, a, "approve", signer) {
                return forbid("approve");
            }
        }
        ("update" | "patch", "status") => {
            let cert =
                |v: Option<&Value>| v.and_then(|v| v.pointer("/status/certificate")).cloned();
            if cert(Some(obj)) != cert(old) && !signer_allowed(api, a, "sign", signer) {
                return forbid("sign");
            }
        }
        ("create", _) if signer == API_SERVER_CLIENT_SIGNER => {
            let pem = obj.pointer("/spec/request").and_then(Value::as_str).and_then(|b| {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.decode(b).ok()
            });
            let subject = pem
                .and_then(|p| String::from_utf8(p).ok())
                .and_then(|p| flotilla_pki::ca::csr_subject(&p).ok());
            if let Some((_, orgs)) = subject {
                if orgs.iter().any(|o| o == "system:masters") {
                    return Err(ApiError::forbidden(format!(
                        "certificatesigningrequests.certificates.k8s.io {:?} is forbidden: use of {signer} signer with system:masters group is not allowed",
                        a.name
                    )));
                }
            }
        }
        _ => {}
    }
    Ok(())
}
