//! Trust: every port speaks TLS only, knows its callers by certificates from the cluster CA,
//! and refuses certificates from any other CA.

use flotilla_pki::kubeconfig::{Kubeconfig, UserInfo};
use flotilla_pki::tls::KeyHolder;
use flotilla_pki::{Ca, Request};
use flotilla_tests::cli_with as cli;
use flotilla_tests::{flotilla_cli, https, node::Node, Member};
use std::process::Command;
use std::sync::Arc;

/// A client certificate from a CA the cluster has never seen.
fn stranger(cn: &str, orgs: &[&str]) -> Arc<KeyHolder> {
    let ca = Ca::generate("not-the-cluster-ca").unwrap();
    KeyHolder::new(&ca.issue(&Request::client(cn, orgs)).unwrap()).unwrap()
}

#[tokio::test]
async fn api_port_serves_tls_only_and_knows_callers_by_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::new("m", dir.path());
    m.start().unwrap();
    let url = m.api_url().unwrap();
    let ca = m.ca_pem().unwrap();

    // Plain text gets Go's answer, and nothing else.
    let plain = https::plain_http(&m.api).await;
    assert!(plain.starts_with("HTTP/1.0 400"), "{plain}");
    assert!(plain.contains("Client sent an HTTP request to an HTTPS server."), "{plain}");
    assert!(!plain.contains("flotilla_"), "{plain}");

    // The serving certificate is the cluster CA's, for the addresses clients use.
    let (status, body) =
        https::get(&m.api, "/metrics", Some(&ca), Some(m.admin_identity().unwrap())).await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("flotilla_api_"), "{body:.300}");
    let other_ca = Ca::generate("other").unwrap();
    let e = https::get(&m.api, "/metrics", Some(other_ca.cert_pem()), None).await.unwrap_err();
    assert!(format!("{e:#}").contains("certificate"), "{e:#}");
    // A client certificate of another CA is refused in the handshake, whatever it claims.
    let e = https::get(
        &m.api,
        "/metrics",
        Some(&ca),
        Some(stranger("flotilla-admin", &["system:masters"])),
    )
    .await
    .unwrap_err();
    assert!(format!("{e:#}").contains("UnknownCA"), "{e:#}");

    // x509 authentication: CN is the user, O the groups.
    let admin = m.kubeconfig();
    let meta = std::fs::metadata(&admin).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o600);
    let (ok, out, err) = cli(&admin, &["auth", "whoami"]);
    assert!(ok, "{err}");
    assert!(out.contains("flotilla-admin") && out.contains("system:masters"), "{out}");
    let alice = m.user_kubeconfig("alice", &["dev"], &dir.path().join("alice.conf")).unwrap();
    let (ok, out, err) = cli(&alice, &["auth", "whoami"]);
    assert!(ok, "{err}");
    assert!(out.contains("alice") && out.contains("[dev system:authenticated]"), "{out}");
    assert!(!out.contains("system:masters"), "{out}");
    // A second group is refused, not dropped.
    let e = m.user_kubeconfig("bob", &["dev", "ops"], &dir.path().join("bob.conf")).unwrap_err();
    assert!(format!("{e:#}").contains("one organization (group) per certificate"), "{e:#}");
    // No credentials at all: anonymous, who may read health and version and nothing else
    // (not even who they are, as in Kubernetes).
    let anon = dir.path().join("anon.conf");
    Kubeconfig::single("c", &url, &ca, "nobody", UserInfo::default()).write(&anon).unwrap();
    let (ok, _, err) = cli(&anon, &["auth", "whoami"]);
    assert!(!ok);
    assert!(
        err.contains(
            "Error from server (Forbidden): selfsubjectreviews.authentication.k8s.io is forbidden: \
             User \"system:anonymous\" cannot create resource \"selfsubjectreviews\" in API group \
             \"authentication.k8s.io\" at the cluster scope"
        ),
        "{err}"
    );
    for (path, want) in [("/healthz", 200), ("/livez", 200), ("/version", 200), ("/metrics", 403)] {
        let (status, body) = https::get(&m.api, path, Some(&ca), None).await.unwrap();
        assert_eq!(status, want, "{path}: {body}");
        if want == 403 {
            assert!(
                body.contains("User \\\"system:anonymous\\\" cannot get path \\\"/metrics\\\""),
                "{body}"
            );
        }
    }
    let (_, version) = https::get(&m.api, "/version", Some(&ca), None).await.unwrap();
    assert!(version.contains("\"gitVersion\":\"v1.35.0-flotilla."), "{version}");
    let (ok, _, err) = cli(&anon, &["get", "secrets", "-n", "kube-system"]);
    assert!(!ok);
    assert!(err.contains("cannot list resource \"secrets\""), "{err}");
    // A kubeconfig trusting another CA does not reach the server.
    let wrong = dir.path().join("wrong.conf");
    Kubeconfig::single("c", &url, other_ca.cert_pem(), "nobody", UserInfo::default())
        .write(&wrong)
        .unwrap();
    let (ok, _, err) = cli(&wrong, &["get", "namespaces"]);
    assert!(!ok);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // A plain URL is explained.
    let (ok, _, err) = cli(&admin, &["-s", &format!("http://{}", m.api), "get", "namespaces"]);
    assert!(!ok);
    assert!(err.contains("HTTPS only") && err.contains(&url), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_api_admits_only_the_api_server() {
    let node = Node::start("trust", 40);
    let addr = format!("127.0.0.1:{}", node.node_port);
    flotilla_tests::wait_listening(&addr, std::time::Duration::from_secs(30)).unwrap();

    let plain = https::plain_http(&addr).await;
    assert!(plain.contains("Client sent an HTTP request to an HTTPS server."), "{plain}");
    // Without a certificate, with the admin's (the right CA, not the API server's name), or
    // with the API server's name from another CA: refused in the handshake.
    for (who, id) in [
        ("no certificate", None),
        ("the admin", Some(node.member.admin_identity().unwrap())),
        ("a stranger", Some(stranger("kube-apiserver-kubelet-client", &[]))),
    ] {
        let r = https::get(&addr, "/metrics", None, id).await;
        assert!(r.is_err(), "{who} got in: {r:?}");
    }
    let (status, body) =
        https::get(&addr, "/metrics", None, Some(node.member.kubelet_client_identity().unwrap()))
            .await
            .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("node_cpu_usage_seconds_total"), "{body:.300}");

    // exec still works for a user: the API server relays it with its own certificate.
    let c = node.client().await;
    let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "sh", "namespace": "default"},
        "spec": {"nodeName": format!("node-{}", node.tag), "containers": [{"name": "c",
            "image": node.image(), "command": ["sleep", "3600"]}]}});
    c.create("pods", "default", &pod).await.unwrap();
    let (mut out, mut err) = (String::new(), String::new());
    for _ in 0..60 {
        let (ok, o, e) = node.cli(&["exec", "sh", "--", "sh", "-c", "echo in-pod"]);
        (out, err) = (o, e);
        if ok {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(out, "in-pod\n", "{err}");
}

#[tokio::test]
async fn store_ports_admit_only_their_callers() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::new("m", dir.path());
    m.start().unwrap();
    m.api_url().unwrap();
    let ca = m.ca_pem().unwrap();
    let pki = m.data_dir.join("pki");
    let id = |name: &str| {
        https::identity(&pki.join(format!("{name}.crt")), &pki.join(format!("{name}.key"))).unwrap()
    };
    let node = {
        let ca = Ca::load(&pki).unwrap();
        KeyHolder::new(&ca.issue(&Request::client("system:node:n1", &["system:nodes"])).unwrap())
            .unwrap()
    };

    // The client port (2379): etcd clients with a certificate of group system:masters.
    let mut etcd = m.etcd().await.unwrap();
    etcd.put("/trust", "ok", None).await.unwrap();
    let plain = https::plain_http(&m.client).await;
    assert!(plain.contains("Client sent an HTTP request to an HTTPS server."), "{plain}");
    https::admitted(&m.client, &ca, Some(id("apiserver-etcd-client"))).await.unwrap();
    https::admitted(&m.client, &ca, Some(m.admin_identity().unwrap())).await.unwrap();
    for (who, cert) in [
        ("no certificate", None),
        ("a node", Some(node.clone())),
        ("a stranger", Some(stranger("kube-apiserver-etcd-client", &["system:masters"]))),
    ] {
        let r = https::admitted(&m.client, &ca, cert).await;
        assert!(r.is_err(), "{who} reached the store's client port");
    }
    // The peer port (2380): members' peer certificates only, not even the admin's.
    let plain = https::plain_http(&m.peer).await;
    assert!(plain.contains("Client sent an HTTP request to an HTTPS server."), "{plain}");
    https::admitted(&m.peer, &ca, Some(id("store-peer"))).await.unwrap();
    for (who, cert) in [
        ("no certificate", None),
        ("the admin", Some(m.admin_identity().unwrap())),
        ("a node", Some(node)),
        ("a stranger", Some(stranger("flotilla-store-peer", &["flotilla:store-peers"]))),
    ] {
        let r = https::admitted(&m.peer, &ca, cert).await;
        assert!(r.is_err(), "{who} reached the store's peer port");
    }
}

#[tokio::test]
async fn certificates_renew_in_place_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::new("m", dir.path());
    m.extra = vec!["--cert-lifetime".into(), "12s".into()];
    m.start().unwrap();
    m.api_url().unwrap();
    let ca = m.ca_pem().unwrap();
    let alice = m.user_kubeconfig("alice", &["dev"], &dir.path().join("alice.conf")).unwrap();
    let file = m.data_dir.join("pki/apiserver.crt");
    let (api0, store0) = (
        https::server_certificate(&m.api, &ca).await.unwrap(),
        https::server_certificate(&m.client, &ca).await.unwrap(),
    );
    let file0 = std::fs::read(&file).unwrap();
    // Past the first certificates' expiry: only renewed ones can still be verified.
    tokio::time::sleep(std::time::Duration::from_secs(14)).await;
    let api1 = https::server_certificate(&m.api, &ca).await.unwrap();
    let store1 = https::server_certificate(&m.client, &ca).await.unwrap();
    assert_ne!(api0, api1);
    assert_ne!(store0, store1);
    assert_ne!(file0, std::fs::read(&file).unwrap(), "{} was not rewritten", file.display());
    let (ok, out, err) = cli(&alice, &["auth", "whoami"]);
    assert!(ok, "{err}");
    assert!(out.contains("alice"), "{out}");
    // The store takes the renewed etcd client certificate, in the same process.
    m.etcd().await.unwrap().put("/renewed", "yes", None).await.unwrap();
    assert!(m.proc.as_mut().unwrap().running());
}

/// The raw value of a key, through the store's etcd API (what a stolen disk or backup holds).
async fn raw(m: &Member, key: &str) -> Vec<u8> {
    let mut etcd = m.etcd().await.unwrap();
    let r = etcd.get(key, None).await.unwrap();
    r.kvs().first().map(|kv| kv.value().to_vec()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_encrypted_at_rest_and_keys_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::new("enc", dir.path());
    m.start().unwrap();
    let c = m.client().await.unwrap();
    let secret = |name: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "stringData": {"password": "hunter2-plaintext"}})
    };
    c.create("secrets", "default", &secret("s1")).await.unwrap();
    let config = m.data_dir.join("pki/encryption.yaml");
    let meta = std::fs::metadata(&config).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o600);
    let has = |v: &[u8], s: &str| v.windows(s.len()).any(|w| w == s.as_bytes());
    let stored = raw(&m, "/registry/core/secrets/default/s1").await;
    assert!(
        stored.starts_with(b"k8s:enc:aesgcm:v1:key1:"),
        "{:?}",
        String::from_utf8_lossy(&stored)
    );
    // Neither the value nor its base64 is stored in the clear.
    assert!(!has(&stored, "hunter2") && !has(&stored, "aHVudGVyMi1wbGFpbnRleHQ"));
    let got = c.get("secrets", "default", "s1").await.unwrap();
    assert_eq!(got["data"]["password"], "aHVudGVyMi1wbGFpbnRleHQ=");
    // Other kinds are stored as they are.
    c.create(
        "configmaps",
        "default",
        &serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cm"}, "data": {"k": "visible"}}),
    )
    .await
    .unwrap();
    assert!(has(&raw(&m, "/registry/core/configmaps/default/cm").await, "visible"));

    // Rotation, as in Kubernetes: a new first key, restart, rewrite every Secret.
    let text = std::fs::read_to_string(&config).unwrap();
    let rotated = text.replace(
        "          keys:\n",
        "          keys:\n            - name: key2\n              secret: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n",
    );
    assert_ne!(rotated, text);
    std::fs::write(&config, rotated).unwrap();
    m.kill();
    m.start().unwrap();
    let c = m.client().await.unwrap();
    // Old values still read; new ones are written with the new key.
    let got = c.get("secrets", "default", "s1").await.unwrap();
    assert_eq!(got["data"]["password"], "aHVudGVyMi1wbGFpbnRleHQ=");
    c.create("secrets", "default", &secret("s2")).await.unwrap();
    assert!(raw(&m, "/registry/core/secrets/default/s2")
        .await
        .starts_with(b"k8s:enc:aesgcm:v1:key2:"));
    // Rewriting an unchanged Secret re-encrypts it: Kubernetes' `get -o json | replace -f -`.
    let out = Command::new(flotilla_cli())
        .args([
            "--kubeconfig",
            m.kubeconfig().to_str().unwrap(),
            "get",
            "secrets",
            "-A",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut replace = Command::new(flotilla_cli())
        .args(["--kubeconfig", m.kubeconfig().to_str().unwrap(), "replace", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    replace.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let done = replace.wait_with_output().unwrap();
    assert!(done.status.success());
    assert!(String::from_utf8_lossy(&done.stdout).contains("secret/s1 replaced"));
    let after = c.get("secrets", "default", "s1").await.unwrap();
    assert_ne!(after["metadata"]["resourceVersion"], got["metadata"]["resourceVersion"]);
    assert!(raw(&m, "/registry/core/secrets/default/s1")
        .await
        .starts_with(b"k8s:enc:aesgcm:v1:key2:"));
    // An update of an already current value writes nothing.
    let (again, _) = c.update("secrets", "default", &after).await.unwrap();
    assert_eq!(again["metadata"]["resourceVersion"], after["metadata"]["resourceVersion"]);

    // A configuration with a short key stops the server at start, naming the field.
    m.kill();
    std::fs::write(&config, text.replace("secret: ", "secret: c2hvcnQ= #")).unwrap();
    let e = m.start();
    let log = m.log();
    assert!(e.is_err(), "started with a short key");
    assert!(log.contains("an aesgcm key must be 16, 24 or 32 bytes, got 5"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_audited_per_policy() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("audit-policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n\
         - level: RequestResponse\n  resources: [{group: \"\", resources: [configmaps]}]\n\
         - level: Metadata\n  resources: [{group: \"\", resources: [secrets]}]\n\
         - level: None\n",
    )
    .unwrap();
    let mut m = Member::new("audit", dir.path());
    m.extra = vec!["--audit-policy-file".into(), policy.display().to_string()];
    m.start().unwrap();
    let c = m.client().await.unwrap();
    c.create(
        "configmaps",
        "default",
        &serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cm"}, "data": {"k": "v"}}),
    )
    .await
    .unwrap();
    c.create(
        "secrets",
        "default",
        &serde_json::json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s"}, "stringData": {"password": "do-not-log-me"}}),
    )
    .await
    .unwrap();
    let url = m.api_url().unwrap();
    let anon = dir.path().join("anon.conf");
    Kubeconfig::single("c", &url, &m.ca_pem().unwrap(), "nobody", UserInfo::default())
        .write(&anon)
        .unwrap();
    let (ok, _, _) = cli(&anon, &["get", "secret", "s"]);
    assert!(!ok);

    let log = std::fs::read_to_string(m.data_dir.join("audit.log")).unwrap();
    let events: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let find = |verb: &str, res: &str, user: &str| {
        events
            .iter()
            .find(|e| {
                e["verb"] == verb
                    && e["objectRef"]["resource"] == res
                    && e["user"]["username"] == user
            })
            .unwrap_or_else(|| panic!("no {verb} {res} by {user} in:\n{log}"))
            .clone()
    };
    let cm = find("create", "configmaps", "flotilla-admin");
    assert_eq!(cm["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(cm["kind"], "Event");
    assert_eq!(cm["level"], "RequestResponse");
    assert_eq!(cm["stage"], "ResponseComplete");
    assert_eq!(cm["responseStatus"]["code"], 201);
    assert_eq!(cm["requestURI"], "/api/v1/namespaces/default/configmaps");
    assert_eq!(cm["requestObject"]["data"]["k"], "v");
    assert_eq!(cm["responseObject"]["metadata"]["name"], "cm");
    assert_eq!(cm["sourceIPs"][0], "127.0.0.1");
    let s = find("create", "secrets", "flotilla-admin");
    assert_eq!(s["level"], "Metadata");
    assert!(s["requestObject"].is_null() && s["responseObject"].is_null());
    assert!(!log.contains("do-not-log-me"));
    let denied = find("get", "secrets", "system:anonymous");
    assert_eq!(denied["responseStatus"]["code"], 403);
    assert_eq!(denied["objectRef"]["name"], "s");
    // Everything else is level None: no lease renewals or namespace reads.
    assert!(events.iter().all(|e| e["objectRef"]["resource"] != "leases"), "{log}");
}
