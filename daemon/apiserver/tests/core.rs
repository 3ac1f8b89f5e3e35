//! The request core in process, over a store in a temp dir (no socket, no cluster, no root):
//! the per-kind strategies as a client sees them through create, update, patch and delete.

use flotilla_api::patch::PatchKind;
use flotilla_api::Reason;
use flotilla_apiserver::request::User;
use flotilla_apiserver::testing::InProcess;
use flotilla_apiserver::DeleteOptions;
use serde_json::{json, Value};

fn me() -> User {
    User::anonymous()
}

fn body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

#[tokio::test]
async fn services_keep_their_allocations_across_updates_and_release_them_on_delete() {
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path()).await.unwrap();
    let api = &s.api;
    let svcs = api.resource("services").unwrap();
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}});
    let created =
        api.create(&me(), svcs, "default", &body(&svc), false, "test").await.unwrap().json();
    let created: Value = serde_json::from_slice(&created).unwrap();
    let ip = created["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10."), "{created}");
    // Re-applying the manifest (no clusterIP, no resourceVersion) keeps the allocations.
    let (v, _) = api.update(&me(), svcs, "default", &body(&svc), "", false, "test").await.unwrap();
    assert_eq!(v["spec"]["clusterIP"], ip.as_str());
    assert_eq!(v["spec"]["ports"][0]["nodePort"], 30080);
    // The port is taken: another Service asking for it is refused by field.
    let mut other = svc.clone();
    other["metadata"]["name"] = json!("other");
    let e = api.create(&me(), svcs, "default", &body(&other), false, "test").await.err().unwrap();
    assert_eq!(e.reason, Reason::Invalid, "{e:?}");
    assert!(e.causes.iter().any(|c| c.field.contains("nodePort")), "{e:?}");
    // Deleting releases both: the other Service gets them now.
    api.delete(&me(), svcs, "default", "web", &Default::default()).await.unwrap();
    let mut again = other.clone();
    again["spec"]["clusterIP"] = json!(ip);
    let w = api.create(&me(), svcs, "default", &body(&again), false, "test").await.unwrap();
    let got: Value = serde_json::from_slice(&w.json()).unwrap();
    assert_eq!(got["spec"]["clusterIP"], ip.as_str());
    s.shutdown().await;
}

#[tokio::test]
async fn deletion_follows_each_kinds_rules() {
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path()).await.unwrap();
    let api = &s.api;
    let (nss, pods, cms) = (
        api.resource("namespaces").unwrap(),
        api.resource("pods").unwrap(),
        api.resource("configmaps").unwrap(),
    );
    // A namespace is held by its spec finalizer and shows Terminating.
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"},
                    "spec": {"finalizers": ["kubernetes"]}});
    api.create(&me(), nss, "", &body(&ns), false, "test").await.unwrap();
    let v = api.delete(&me(), nss, "", "team", &Default::default()).await.unwrap();
    assert_eq!(v["status"]["phase"], "Terminating");
    assert!(v["metadata"]["deletionTimestamp"].is_string());
    // Nothing new may be created in it.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
    let e = api.create(&me(), cms, "team", &body(&cm), false, "test").await.err().unwrap();
    assert_eq!(e.reason, Reason::Forbidden, "{e:?}");
    // Emptying spec.finalizers (the namespace controller's last step) lets it go.
    let (v, _) = api
        .update(
            &me(),
            nss,
            "",
            &body(&json!({"metadata": {"name": "team"}, "spec": {"finalizers": []}})),
            "",
            false,
            "test",
        )
        .await
        .unwrap();
    assert!(v["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(api.get(nss, "", "team").await.unwrap_err().reason, Reason::NotFound);

    // A bound pod waits for its agent; an unbound one goes at once.
    let pod = |name: &str, node: &str| {
        let mut spec = json!({"containers": [{"name": "c", "image": "busybox"}]});
        if !node.is_empty() {
            spec["nodeName"] = json!(node);
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
    };
    api.create(&me(), pods, "default", &body(&pod("bound", "n1")), false, "test").await.unwrap();
    api.create(&me(), pods, "default", &body(&pod("loose", "")), false, "test").await.unwrap();
    let v = api.delete(&me(), pods, "default", "bound", &Default::default()).await.unwrap();
    assert_eq!(v["metadata"]["deletionGracePeriodSeconds"], 30);
    assert!(api.get(pods, "default", "bound").await.is_ok(), "the agent deletes it");
    api.delete(&me(), pods, "default", "loose", &Default::default()).await.unwrap();
    assert_eq!(api.get(pods, "default", "loose").await.unwrap_err().reason, Reason::NotFound);
    // The agent's zero-grace delete removes the bound one.
    api.delete(
        &me(),
        pods,
        "default",
        "bound",
        &DeleteOptions { grace_period_seconds: Some(0), ..Default::default() },
    )
    .await
    .unwrap();
    assert_eq!(api.get(pods, "default", "bound").await.unwrap_err().reason, Reason::NotFound);
    s.shutdown().await;
}

#[tokio::test]
async fn pods_keep_their_token_volume_and_get_scheduled_through_the_core() {
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path()).await.unwrap();
    let api = &s.api;
    let pods = api.resource("pods").unwrap();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let w = api.create(&me(), pods, "default", &body(&pod), false, "test").await.unwrap();
    let created: Value = serde_json::from_slice(&w.json()).unwrap();
    assert_eq!(created["spec"]["serviceAccountName"], "default");
    assert_eq!(created["status"]["qosClass"], "BestEffort");
    let vol = created["spec"]["volumes"][0]["name"].as_str().unwrap().to_string();
    assert!(vol.starts_with("kube-api-access-"), "{created}");
    // A merge patch setting nodeName marks the pod scheduled and keeps the injected volume.
    let p = body(&json!({"spec": {"nodeName": "n1"}}));
    let (v, _) = api
        .patch(&me(), pods, "default", "p", PatchKind::Merge, &p, "", false, "test")
        .await
        .unwrap();
    assert_eq!(v["spec"]["volumes"][0]["name"], vol.as_str());
    let conds = v["status"]["conditions"].as_array().unwrap();
    assert!(conds.iter().any(|c| c["type"] == "PodScheduled" && c["status"] == "True"), "{v}");
    s.shutdown().await;
}
