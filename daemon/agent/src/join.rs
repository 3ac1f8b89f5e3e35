//! Joining a cluster with a bootstrap token, as kubeadm's `join` and the kubelet's TLS
//! bootstrap do it:
//!
//! 1. discovery: read `kube-public/cluster-info` without trusting the server yet, and trust
//!    its CA only if the CA's public key hashes to `--ca-cert-hash` (a server in between
//!    cannot substitute its own);
//! 2. with the token, over TLS verified by that CA, post a CertificateSigningRequest for
//!    `system:node:<name>` (signer `kubernetes.io/kube-apiserver-client-kubelet`), wait for a
//!    server to approve and sign it, and keep key and certificate in
//!    `<data-dir>/kubelet.conf` (mode 0600); later starts use it and need no token;
//! 3. renew: 80% into the certificate's life, the node asks again with its current
//!    certificate (a self renewal), swaps the new one in without a restart, and rewrites the
//!    file.

use anyhow::{bail, Context, Result};
use base64::Engine;
use flotilla_client::{Client, Connection, Kubeconfig};
use flotilla_pki::{Issued, KeyHolder, Request};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
const WAIT: Duration = Duration::from_secs(60);

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The kubeconfig a joined node keeps.
pub fn kubeconfig_path(data_dir: &Path) -> PathBuf {
    data_dir.join("kubelet.conf")
}

/// Whether `path` holds a client certificate that is still valid.
pub fn usable(path: &Path) -> bool {
    let Ok(kc) = Kubeconfig::read(path) else { return false };
    let Ok(conn) = kc.connection(None) else { return false };
    conn.client_cert
        .as_ref()
        .and_then(|i| KeyHolder::new(i).ok())
        .is_some_and(|h| h.validity().1 > SystemTime::now())
}

/// Steps 1 and 2: returns the kubeconfig written.
pub async fn bootstrap(
    server: &str,
    token: &str,
    ca_hash: &str,
    node: &str,
    data_dir: &Path,
) -> Result<PathBuf> {
    let ok_token = flotilla_pki::bootstrap_token_parts(token).is_some();
    if !ok_token {
        bail!("--token must be <id>.<secret>: 6 and 16 characters of [a-z0-9] (`flotillad token create` makes one)");
    }
    let hex = ca_hash.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("--ca-cert-hash must be sha256:<64 hex digits> (`flotillad token create` prints it), got {ca_hash:?}");
    }
    // Discovery: nothing is trusted until the CA matches the pin.
    let insecure = Connection { server: server.into(), insecure: true, ..Default::default() };
    let anon = Client::connect_to(&insecure)
        .await
        .map_err(|e| anyhow::anyhow!("reaching {server}: {}", e.message))?;
    let info = anon.get("configmaps", "kube-public", "cluster-info").await.map_err(|e| {
        anyhow::anyhow!("reading kube-public/cluster-info from {server}: {}", e.message)
    })?;
    let text = info["data"]["kubeconfig"].as_str().context("cluster-info has no kubeconfig")?;
    let published = Kubeconfig::parse(text, Path::new("cluster-info"))?.connection(None)?;
    let ca_pem = published.ca_pem.context("cluster-info has no certificate-authority-data")?;
    let actual = flotilla_pki::ca::ca_hash(&ca_pem)?;
    if !actual.eq_ignore_ascii_case(ca_hash) {
        bail!(
            "the cluster CA's public key hash is {actual}, not the --ca-cert-hash {ca_hash}: \
             refusing to trust {server} (a different cluster, or someone in between)"
        );
    }
    let conn = Connection {
        server: server.into(),
        ca_pem: Some(ca_pem.clone()),
        token: Some(token.into()),
        ..Default::default()
    };
    let client = Client::connect_to(&conn)
        .await
        .map_err(|e| anyhow::anyhow!("reaching {server}: {}", e.message))?
        .with_token(token)
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let issued = request_certificate(&client, node, None).await.map_err(|e| {
        if e.to_string().contains("Unauthorized") || e.to_string().contains("bootstrap token") {
            anyhow::anyhow!("the bootstrap token was refused: {e:#}")
        } else {
            e
        }
    })?;
    let path = kubeconfig_path(data_dir);
    let user = format!("system:node:{node}");
    Kubeconfig::single("flotilla", server, &ca_pem, &user, Kubeconfig::cert_user(&issued))
        .write(&path)?;
    tracing::info!(%node, path = %path.display(), "joined the cluster: client certificate issued");
    Ok(path)
}

/// Posts a CSR for `system:node:<node>` and waits for its certificate.
async fn request_certificate(
    client: &Client,
    node: &str,
    lifetime: Option<Duration>,
) -> Result<Issued> {
    let (csr_pem, key_pem) = flotilla_pki::ca::new_csr(&Request::client(
        &format!("system:node:{node}"),
        &["system:nodes"],
    ))?;
    let mut spec = json!({"request": b64(&csr_pem), "signerName": SIGNER,
        "usages": ["digital signature", "client auth"]});
    if let Some(l) = lifetime {
        spec["expirationSeconds"] = json!(l.as_secs().max(600));
    }
    let csr = json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "node-csr-"}, "spec": spec});
    let (created, _) =
        client.create("certificatesigningrequests", "", &csr).await.map_err(|e| {
            anyhow::anyhow!("posting a CertificateSigningRequest: {:?}: {}", e.reason, e.message)
        })?;
    let name = created["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let c: Value = client.get("certificatesigningrequests", "", &name).await.map_err(|e| {
            anyhow::anyhow!("reading CertificateSigningRequest {name}: {}", e.message)
        })?;
        for cond in c["status"]["conditions"].as_array().into_iter().flatten() {
            if cond["type"] == "Denied" || cond["type"] == "Failed" {
                bail!(
                    "CertificateSigningRequest {name} was {}: {}",
                    cond["type"].as_str().unwrap_or_default().to_lowercase(),
                    cond["message"].as_str().unwrap_or_default()
                );
            }
        }
        if let Some(cert) = c["status"]["certificate"].as_str() {
            let cert_pem =
                String::from_utf8(base64::engine::general_purpose::STANDARD.decode(cert)?)?;
            return Ok(Issued { cert_pem, key_pem });
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "CertificateSigningRequest {name} has no certificate after {}s: is a server running its signer? \
                 (`flotilla get csr {name}`)",
                WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Step 3: renews the node's client certificate 80% into its life, for as long as the agent
/// runs. The client keeps working across the swap: `holder` is what its TLS presents.
pub fn spawn_renewal(client: Client, holder: Arc<KeyHolder>, node: String, path: PathBuf) {
    tokio::spawn(async move {
        loop {
            let wait = holder.renew_at().duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::sleep(wait).await;
            let (from, to) = holder.validity();
            let life = to.duration_since(from).unwrap_or(Duration::from_secs(3600));
            match request_certificate(&client, &node, Some(life)).await {
                Ok(issued) => {
                    if let Err(e) = holder.set(&issued) {
                        tracing::error!(error = %e, "the renewed client certificate does not load");
                    } else if let Err(e) = rewrite(&path, &issued) {
                        tracing::error!(error = %e, "writing the renewed client certificate");
                    } else {
                        tracing::info!(%node, "client certificate renewed");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "renewing the client certificate; retrying");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    });
}

fn rewrite(path: &Path, issued: &Issued) -> Result<()> {
    let mut kc = Kubeconfig::read_raw(path)?;
    for u in &mut kc.users {
        u.value.user = Kubeconfig::cert_user(issued);
    }
    kc.write(path)?;
    Ok(())
}
