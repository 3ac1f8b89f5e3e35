//! Nodes join with a bootstrap token: the CA pinned by its hash, a CertificateSigningRequest
//! approved and signed by the server, the certificate kept and renewed. Wrong, expired and
//! deleted tokens and a wrong CA hash are refused, each with its reason.

use flotilla_api::Reason;
use flotilla_tests::{flotillad, node::Node};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

/// `flotillad token …` with the admin kubeconfig.
fn token(node: &Node, args: &[&str]) -> String {
    let o = Command::new(flotillad())
        .arg("token")
        .args(args)
        .arg("--kubeconfig")
        .arg(node.member.kubeconfig())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// The flags after `flotillad agent` in a join command.
fn join_flags(cmd: &str) -> Vec<String> {
    let line = cmd.trim();
    assert!(line.starts_with("flotillad agent --server https://"), "{line}");
    line.split_whitespace().skip(2).map(String::from).collect()
}

fn flag<'a>(flags: &'a [String], name: &str) -> &'a str {
    let i = flags.iter().position(|f| f == name).unwrap();
    &flags[i + 1]
}

/// Runs the agent with `flags`; it must fail, and its log must say `why`.
fn refused(node: &mut Node, flags: Vec<String>, why: &str) {
    node.start_agent_as(&flags);
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.agent.as_mut().unwrap().running() {
        assert!(Instant::now() < deadline, "the agent did not give up: {}", node.agent_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = node.agent_log();
    assert!(log.contains(why), "expected {why:?} in:\n{log}");
    node.agent = None;
}

async fn wait_ready(node: &Node, name: &str) -> Value {
    let c = node.client().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = c.get("nodes", "", name).await;
        if let Ok(n) = &got {
            let ready = n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            if ready {
                return n.clone();
            }
        }
        assert!(Instant::now() < deadline, "node {name} never became Ready: {got:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_with_a_token_and_renew_their_certificate() {
    // Node certificates live 20 s, so renewal (at 80%) happens during the test.
    let mut node = Node::server_only("join", 45, &[], &["--cluster-signing-duration", "20s"]);
    let admin = node.client().await;
    let good = join_flags(&token(&node, &["create", "--ttl", "1h", "--description", "test"]));
    let tok = flag(&good, "--token").to_string();
    let (id, secret) = tok.split_once('.').unwrap();
    assert!(id.len() == 6 && secret.len() == 16, "{tok}");
    assert!(flag(&good, "--ca-cert-hash").starts_with("sha256:"));
    let list = token(&node, &["list"]);
    assert!(list.contains(&format!("{id}.<redacted>")) && !list.contains(secret), "{list}");
    assert!(list.contains("authentication,signing") && list.contains("test"), "{list}");

    // A wrong CA hash: the server is not trusted, nothing is sent to it.
    let mut f = good.clone();
    let i = f.iter().position(|x| x == "--ca-cert-hash").unwrap();
    f[i + 1] = format!("sha256:{}", "0".repeat(64));
    refused(&mut node, f, "refusing to trust");
    // A wrong secret.
    let mut f = good.clone();
    let i = f.iter().position(|x| x == "--token").unwrap();
    f[i + 1] = format!("{id}.{}", "x".repeat(16));
    refused(&mut node, f, "the secret does not match");
    // An expired token.
    let expired = json!({"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
        "metadata": {"name": "bootstrap-token-old000", "namespace": "kube-system"},
        "stringData": {"token-id": "old000", "token-secret": "0123456789abcdef",
            "expiration": "2020-01-01T00:00:00Z", "usage-bootstrap-authentication": "true"}});
    admin.create("secrets", "kube-system", &expired).await.unwrap();
    let mut f = good.clone();
    f[i + 1] = "old000.0123456789abcdef".into();
    refused(&mut node, f, "expired at 2020-01-01T00:00:00Z");
    // A deleted one.
    let gone = join_flags(&token(&node, &["create"]));
    let gone_id = flag(&gone, "--token").split('.').next().unwrap().to_string();
    token(&node, &["delete", &gone_id]);
    refused(&mut node, gone, "does not exist");
    assert!(!node.dir.path().join("agent/kubelet.conf").exists(), "nothing is kept from a refusal");

    // The right token: the node gets a certificate for its own name and becomes Ready.
    node.start_agent_as(&good);
    wait_ready(&node, "node-join").await;
    let kc = node.dir.path().join("agent/kubelet.conf");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&kc).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let csrs = admin.list("certificatesigningrequests", "", &Default::default()).await.unwrap();
    let csr = csrs
        .items
        .iter()
        .find(|c| c["spec"]["username"] == format!("system:bootstrap:{id}"))
        .unwrap();
    assert_eq!(csr["spec"]["signerName"], "kubernetes.io/kube-apiserver-client-kubelet");
    assert!(csr["spec"]["groups"].as_array().unwrap().contains(&json!("system:bootstrappers")));
    assert_eq!(csr["status"]["conditions"][0]["type"], "Approved");
    let first = std::fs::read_to_string(&kc).unwrap();

    // Renewal: a new certificate before the first expires, with no restart; the node stays
    // Ready past the first certificate's end.
    tokio::time::sleep(Duration::from_secs(24)).await;
    assert!(node.agent_log().contains("client certificate renewed"), "{}", node.agent_log());
    assert_ne!(std::fs::read_to_string(&kc).unwrap(), first);
    let renewals = admin.list("certificatesigningrequests", "", &Default::default()).await.unwrap();
    assert!(
        renewals.items.iter().any(|c| c["spec"]["username"] == "system:node:node-join"
            && c["status"]["conditions"][0]["type"] == "Approved"),
        "no self renewal"
    );
    let lease = admin.get("leases", "kube-node-lease", "node-join").await.unwrap();
    let renewed = lease["spec"]["renewTime"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lease = admin.get("leases", "kube-node-lease", "node-join").await.unwrap();
    assert_ne!(lease["spec"]["renewTime"].as_str().unwrap(), renewed, "the lease stopped renewing");

    // A restart without the token uses the kept certificate.
    node.kill_agent();
    node.start_agent_as(&[]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(node.agent.as_mut().unwrap().running(), "{}", node.agent_log());
    wait_ready(&node, "node-join").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signer_issues_only_node_certificates_to_their_owners() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = flotilla_tests::Member::new("csr", dir.path());
    m.start().unwrap();
    let admin = m.client().await.unwrap();
    let csr = |cn: &str, orgs: &[&str]| {
        use base64::Engine;
        let (pem, _) = flotilla_pki::ca::new_csr(&flotilla_pki::Request::client(cn, orgs)).unwrap();
        json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"generateName": "t-"},
            "spec": {"request": base64::engine::general_purpose::STANDARD.encode(pem),
                "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                "usages": ["digital signature", "client auth"]}})
    };
    let outcome = |name: String| {
        let admin = admin.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let c = admin.get("certificatesigningrequests", "", &name).await.unwrap();
                if let Some(cond) = c["status"]["conditions"][0].as_object() {
                    if c["status"]["certificate"].is_string() || cond["type"] != "Approved" {
                        return c;
                    }
                }
                assert!(Instant::now() < deadline, "{name}: no decision: {c}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let node_a = admin.clone().impersonate("system:node:a", &["system:nodes".into()]).unwrap();
    // A node renewing its own certificate: approved and signed.
    let (c, _) = node_a
        .create("certificatesigningrequests", "", &csr("system:node:a", &["system:nodes"]))
        .await
        .unwrap();
    let done = outcome(c["metadata"]["name"].as_str().unwrap().into()).await;
    assert!(done["status"]["certificate"].is_string(), "{done}");
    // The requester is the server's to record, whatever the body says.
    assert_eq!(done["spec"]["username"], "system:node:a");
    // A node asking for another node's name: denied, with the reason.
    let (c, _) = node_a
        .create("certificatesigningrequests", "", &csr("system:node:b", &["system:nodes"]))
        .await
        .unwrap();
    let done = outcome(c["metadata"]["name"].as_str().unwrap().into()).await;
    assert_eq!(done["status"]["conditions"][0]["type"], "Denied", "{done}");
    assert!(done["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap()
        .contains("may not request a certificate for node \"b\""));
    assert!(done["status"]["certificate"].is_null());
    // system:masters is never issued, even to an administrator's request.
    let (c, _) = admin
        .create("certificatesigningrequests", "", &csr("system:node:x", &["system:masters"]))
        .await
        .unwrap();
    let done = outcome(c["metadata"]["name"].as_str().unwrap().into()).await;
    assert_eq!(done["status"]["conditions"][0]["type"], "Denied", "{done}");
    assert!(done["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap()
        .contains("signs only O=system:nodes"));
    // Not a CSR at all: refused before anything is stored.
    let mut bad = csr("system:node:a", &["system:nodes"]);
    bad["spec"]["request"] = json!("bm90IGEgY3Ny");
    let e = admin.create("certificatesigningrequests", "", &bad).await.unwrap_err();
    assert_eq!(e.reason, Reason::Invalid);
    assert!(e.message.contains("spec.request"), "{}", e.message);
}
