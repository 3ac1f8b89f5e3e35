//! The API server, end to end: a real `flotillad server` and the Rust client.

use flotilla_api::{ApiError, Reason};
use flotilla_client::{
    Client, DeleteParams, EventType, Informer, ListParams, WatchEvent, WatchParams,
};
use flotilla_tests::{https, Member};
use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;

struct Server {
    member: Member,
    _dir: tempfile::TempDir,
    client: Client,
}

async fn server(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut member = Member::new("api", dir.path());
    // API semantics alone: no scheduler or controllers writing to the same objects.
    member.extra =
        ["--no-scheduler", "--no-controllers"].iter().chain(extra).map(|s| s.to_string()).collect();
    member.start().unwrap();
    let client = member.client().await.unwrap();
    // The system namespaces are created once the server is up.
    for _ in 0..200 {
        if client.get("namespaces", "", "default").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Server { member, _dir: dir, client }
}

fn rv(v: &Value) -> i64 {
    v["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()
}

fn deployment(name: &str, replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}})
}

fn pod(name: &str, labels: Value, node: Option<&str>) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox:1.36"}]}})
}

/// The next events of a watch, failing the test if they do not come within a few seconds.
async fn next_events<S>(s: &mut S) -> Result<Vec<WatchEvent>, ApiError>
where
    S: Stream<Item = Result<Vec<WatchEvent>, ApiError>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("watch event in time")
        .expect("watch still open")
}

/// Collects `n` non-bookmark events.
async fn collect<S>(s: &mut S, n: usize) -> Vec<WatchEvent>
where
    S: Stream<Item = Result<Vec<WatchEvent>, ApiError>> + Unpin,
{
    let mut out = Vec::new();
    while out.len() < n {
        out.extend(
            next_events(s).await.unwrap().into_iter().filter(|e| e.kind != EventType::Bookmark),
        );
    }
    out
}

#[tokio::test]
async fn create_update_conflict_generation_and_status_path() {
    let s = server(&[]).await;
    let c = &s.client;
    let (d, warnings) = c.create("deployments", "default", &deployment("web", 2)).await.unwrap();
    assert!(warnings.is_empty());
    assert_eq!(d["metadata"]["generation"], 1);
    assert!(d["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));
    assert!(d["metadata"]["creationTimestamp"].is_string());
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate", "defaults applied");
    let e = c.create("deployments", "default", &deployment("web", 2)).await.unwrap_err();
    assert_eq!(e.reason, Reason::AlreadyExists, "{}", e.message);

    // A spec change bumps generation; a stale resourceVersion conflicts.
    let mut v1 = d.clone();
    v1["spec"]["replicas"] = json!(3);
    let (d2, _) = c.update("deployments", "default", &v1).await.unwrap();
    assert_eq!(d2["metadata"]["generation"], 2);
    assert!(rv(&d2) > rv(&d));
    let e = c.update("deployments", "default", &v1).await.unwrap_err();
    assert_eq!(e.reason, Reason::Conflict, "{}", e.message);
    assert!(e.message.contains("the object has been modified"), "{}", e.message);

    // A metadata-only change does not bump generation; a no-op keeps the resourceVersion.
    let mut v2 = d2.clone();
    v2["metadata"]["labels"]["tier"] = json!("front");
    let (d3, _) = c.update("deployments", "default", &v2).await.unwrap();
    assert_eq!(d3["metadata"]["generation"], 2);
    let (d4, _) = c.update("deployments", "default", &d3).await.unwrap();
    assert_eq!(rv(&d4), rv(&d3), "a no-op update writes nothing");

    // Status goes only through the status path, and the status path changes nothing else.
    let mut with_status = d4.clone();
    with_status["status"] = json!({"replicas": 3, "readyReplicas": 1});
    with_status["spec"]["replicas"] = json!(9);
    let (ignored, _) = c.update("deployments", "default", &with_status).await.unwrap();
    assert!(
        ignored.get("status").is_none_or(|s| s.get("readyReplicas").is_none()),
        "main path must not write status"
    );
    assert_eq!(ignored["spec"]["replicas"], 9);
    let mut st = ignored.clone();
    st["status"] = json!({"replicas": 3, "readyReplicas": 1});
    st["spec"]["replicas"] = json!(1);
    let after = c.update_status("deployments", "default", &st).await.unwrap();
    assert_eq!(after["status"]["readyReplicas"], 1);
    assert_eq!(after["spec"]["replicas"], 9, "status path must not write spec");
    assert_eq!(after["metadata"]["generation"], ignored["metadata"]["generation"]);

    // Merge and JSON patches.
    let (p, _) = c
        .patch("deployments", "default", "web", &json!({"spec": {"replicas": 4}}), false, false)
        .await
        .unwrap();
    assert_eq!(p["spec"]["replicas"], 4);
    let jp = json!([{"op": "test", "path": "/spec/replicas", "value": 5}]);
    assert_eq!(
        c.patch("deployments", "default", "web", &jp, true, false).await.unwrap_err().reason,
        Reason::BadRequest
    );
    // A patch that makes the object invalid is rejected and nothing changes.
    let bad = json!({"spec": {"selector": {"matchLabels": {"app": "other"}}}});
    let e = c.patch("deployments", "default", "web", &bad, false, false).await.unwrap_err();
    assert_eq!(e.reason, Reason::Invalid, "{}", e.message);
    assert_eq!(
        c.get("deployments", "default", "web").await.unwrap()["spec"]["selector"]["matchLabels"]
            ["app"],
        "web"
    );
    drop(s.member);
}

/// The pods/binding subresource, as the scheduler uses it: a pod is bound once, to one node,
/// with PodScheduled=True in the same write; a stale uid, a bound or a terminating pod, and a
/// binding without a node are refused, and nothing changes.
#[tokio::test]
async fn pods_are_bound_once_through_the_binding_subresource() {
    let s = server(&[]).await;
    let c = &s.client;
    let (p, _) = c.create("pods", "default", &pod("web", json!({}), None)).await.unwrap();
    let uid = p["metadata"]["uid"].as_str().unwrap();

    let e = c.bind("default", "web", uid, "").await.unwrap_err();
    assert_eq!(e.reason, Reason::Invalid, "{}", e.message);
    assert!(e.message.contains("target.name"), "{}", e.message);
    let e = c.bind("default", "web", "0000-stale", "n1").await.unwrap_err();
    assert_eq!(e.reason, Reason::Conflict, "{}", e.message);
    assert!(e.message.contains("UID in precondition"), "{}", e.message);
    let e = c.bind("default", "nope", "", "n1").await.unwrap_err();
    assert_eq!(e.reason, Reason::NotFound, "{}", e.message);
    assert!(c.get("pods", "default", "web").await.unwrap()["spec"]["nodeName"].is_null());

    c.bind("default", "web", uid, "n1").await.unwrap();
    let got = c.get("pods", "default", "web").await.unwrap();
    assert_eq!(got["spec"]["nodeName"], "n1");
    assert!(rv(&got) > rv(&p));
    let scheduled = got["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "PodScheduled")
        .cloned()
        .unwrap();
    assert_eq!(scheduled["status"], "True");

    let e = c.bind("default", "web", uid, "n2").await.unwrap_err();
    assert_eq!(e.reason, Reason::Conflict, "{}", e.message);
    assert!(e.message.contains("already assigned to node \"n1\""), "{}", e.message);
    assert_eq!(c.get("pods", "default", "web").await.unwrap()["spec"]["nodeName"], "n1");

    // A terminating pod is not bound (a finalizer keeps it terminating).
    let mut held = pod("held", json!({}), None);
    held["metadata"]["finalizers"] = json!(["example.com/hold"]);
    c.create("pods", "default", &held).await.unwrap();
    c.delete("pods", "default", "held", &DeleteParams::default()).await.unwrap();
    let e = c.bind("default", "held", "", "n1").await.unwrap_err();
    assert_eq!(e.reason, Reason::Conflict, "{}", e.message);
    assert!(e.message.contains("being deleted"), "{}", e.message);

    // Deleted and re-created under the same name, back to back (the server's cache may still
    // hold the old pod): the binding answers from the pod that exists, whichever uid it names.
    for round in 0..20 {
        let name = format!("again-{round}");
        let (old, _) = c.create("pods", "default", &pod(&name, json!({}), None)).await.unwrap();
        let old_uid = old["metadata"]["uid"].as_str().unwrap().to_string();
        let zero = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
        c.delete("pods", "default", &name, &zero).await.unwrap();
        let (new, _) = c.create("pods", "default", &pod(&name, json!({}), None)).await.unwrap();
        let e = c.bind("default", &name, &old_uid, "n1").await.unwrap_err();
        assert_eq!(e.reason, Reason::Conflict, "{}", e.message);
        c.bind("default", &name, new["metadata"]["uid"].as_str().unwrap(), "n1").await.unwrap();
        assert_eq!(c.get("pods", "default", &name).await.unwrap()["spec"]["nodeName"], "n1");
    }
    drop(s.member);
}

#[tokio::test]
async fn invalid_objects_are_rejected_with_field_paths_and_nothing_is_stored() {
    let s = server(&[]).await;
    let c = &s.client;
    let mut bad = deployment("bad", -1);
    bad["spec"]["template"]["spec"]["containers"][0]["image"] = json!("");
    let e = c.create("deployments", "default", &bad).await.unwrap_err();
    assert_eq!(e.reason, Reason::Invalid);
    let fields: Vec<&str> = e.causes.iter().map(|c| c.field.as_str()).collect();
    assert!(fields.contains(&"spec.replicas"), "{fields:?}");
    assert!(fields.contains(&"spec.template.spec.containers[0].image"), "{fields:?}");
    assert_eq!(c.get("deployments", "default", "bad").await.unwrap_err().reason, Reason::NotFound);

    let e = c.create("pods", "nosuch", &pod("p", json!({}), None)).await.unwrap_err();
    assert_eq!(e.reason, Reason::NotFound);
    assert!(e.message.contains("namespaces \"nosuch\" not found"), "{}", e.message);

    let mut unknown = pod("p", json!({}), None);
    unknown["spec"]["containers"][0]["imagePullPolicyy"] = json!("Always");
    let (_, w) = c.create("pods", "default", &unknown).await.unwrap();
    assert_eq!(w, ["unknown field \"spec.containers[0].imagePullPolicyy\""]);

    let typed = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "t"}, "spec": {"containers": "nope"}});
    let e = c.create("pods", "default", &typed).await.unwrap_err();
    assert_eq!(e.causes[0].field, "spec.containers", "{}", e.message);
    let e = c
        .list(
            "pods",
            "default",
            &ListParams { label_selector: "a in (".into(), ..Default::default() },
        )
        .await
        .unwrap_err();
    assert_eq!(e.reason, Reason::BadRequest);
    let e = c
        .list(
            "pods",
            "default",
            &ListParams { field_selector: "spec.bogus=x".into(), ..Default::default() },
        )
        .await
        .unwrap_err();
    assert!(e.message.contains("field label not supported"), "{}", e.message);
    let e = c.get("widgets", "default", "x").await.unwrap_err();
    assert_eq!(e.reason, Reason::NotFound);
    // generateName.
    let mut g = pod("", json!({}), None);
    g["metadata"] = json!({"generateName": "web-"});
    let (gp, _) = c.create("pods", "default", &g).await.unwrap();
    assert!(gp["metadata"]["name"].as_str().unwrap().starts_with("web-"));
}

#[tokio::test]
async fn finalizers_graceful_pod_deletion_and_terminating_namespaces() {
    let s = server(&[]).await;
    let c = &s.client;
    let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "held", "finalizers": ["example.com/hold"]}, "data": {"a": "b"}});
    c.create("configmaps", "default", &cm).await.unwrap();
    let d = c.delete("configmaps", "default", "held", &DeleteParams::default()).await.unwrap();
    assert!(d["metadata"]["deletionTimestamp"].is_string());
    let held = c.get("configmaps", "default", "held").await.unwrap();
    assert!(held["metadata"]["deletionTimestamp"].is_string(), "a finalizer holds the object");
    cm = held.clone();
    cm["metadata"]["finalizers"] = json!([]);
    c.update("configmaps", "default", &cm).await.unwrap();
    assert_eq!(c.get("configmaps", "default", "held").await.unwrap_err().reason, Reason::NotFound);

    // A bound pod is deleted gracefully: the agent finishes it with a zero grace period.
    c.create("pods", "default", &pod("bound", json!({}), Some("node-1"))).await.unwrap();
    let p = c
        .delete(
            "pods",
            "default",
            "bound",
            &DeleteParams { grace_period_seconds: Some(20), ..Default::default() },
        )
        .await
        .unwrap();
    assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 20);
    assert!(c.get("pods", "default", "bound").await.is_ok());
    c.delete(
        "pods",
        "default",
        "bound",
        &DeleteParams { grace_period_seconds: Some(0), ..Default::default() },
    )
    .await
    .unwrap();
    assert_eq!(c.get("pods", "default", "bound").await.unwrap_err().reason, Reason::NotFound);
    // An unbound one goes at once.
    c.create("pods", "default", &pod("unbound", json!({}), None)).await.unwrap();
    c.delete("pods", "default", "unbound", &DeleteParams::default()).await.unwrap();
    assert_eq!(c.get("pods", "default", "unbound").await.unwrap_err().reason, Reason::NotFound);

    // Preconditions.
    let (x, _) = c
        .create(
            "configmaps",
            "default",
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}),
        )
        .await
        .unwrap();
    let stale = DeleteParams {
        precondition_resource_version: (rv(&x) - 1).to_string(),
        ..Default::default()
    };
    assert_eq!(
        c.delete("configmaps", "default", "x", &stale).await.unwrap_err().reason,
        Reason::Conflict
    );

    // A deleted namespace is terminating (the namespace controller empties it) and takes no
    // new content.
    c.create(
        "namespaces",
        "",
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}),
    )
    .await
    .unwrap();
    c.create(
        "configmaps",
        "team",
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}),
    )
    .await
    .unwrap();
    let ns = c.delete("namespaces", "", "team", &DeleteParams::default()).await.unwrap();
    assert_eq!(ns["status"]["phase"], "Terminating");
    let e = c
        .create(
            "configmaps",
            "team",
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.reason, Reason::Forbidden, "{}", e.message);
    assert!(e.message.contains("being terminated"), "{}", e.message);
}

#[tokio::test]
async fn lists_paginate_and_filter_by_labels_and_fields() {
    let s = server(&[]).await;
    let c = &s.client;
    for i in 0..25 {
        let node = if i % 5 == 0 { Some("node-a") } else { None };
        let tier = if i % 2 == 0 { "front" } else { "back" };
        c.create(
            "pods",
            "default",
            &pod(&format!("p{i:02}"), json!({"app": "web", "tier": tier}), node),
        )
        .await
        .unwrap();
    }
    c.create(
        "namespaces",
        "",
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}),
    )
    .await
    .unwrap();
    c.create("pods", "other", &pod("elsewhere", json!({"app": "web"}), None)).await.unwrap();

    let mut names = Vec::new();
    let mut p = ListParams { limit: 10, ..Default::default() };
    let mut pages = 0;
    loop {
        let l = c.list("pods", "default", &p).await.unwrap();
        pages += 1;
        assert!(l.items.len() <= 10);
        names.extend(l.items.iter().map(|i| i["metadata"]["name"].as_str().unwrap().to_string()));
        if l.continue_token.is_empty() {
            assert_eq!(l.remaining, 0);
            break;
        }
        assert!(l.remaining > 0);
        p.continue_token = l.continue_token;
    }
    assert_eq!(pages, 3);
    let want: Vec<String> = (0..25).map(|i| format!("p{i:02}")).collect();
    assert_eq!(names, want, "every pod once, in order");

    // Pages after the first show the first page's snapshot, whatever is written meanwhile
    // (served from the store at that revision once the cache has moved on).
    let first = c.list("pods", "default", &ListParams { limit: 10, ..Default::default() }).await;
    let first = first.unwrap();
    c.delete("pods", "default", "p21", &DeleteParams::default()).await.unwrap();
    c.create("pods", "default", &pod("p15a", json!({"app": "web"}), None)).await.unwrap();
    let (mut token, mut names) = (first.continue_token.clone(), Vec::new());
    while !token.is_empty() {
        let p = ListParams { limit: 10, continue_token: token, ..Default::default() };
        let l = c.list("pods", "default", &p).await.unwrap();
        assert_eq!(l.resource_version, first.resource_version, "a page of another snapshot");
        names.extend(l.items.iter().map(|i| i["metadata"]["name"].as_str().unwrap().to_string()));
        token = l.continue_token;
    }
    let want: Vec<String> = (10..25).map(|i| format!("p{i:02}")).collect();
    assert_eq!(names, want, "the snapshot: p21 still there, p15a not yet");
    // With a selector too: the filtered snapshot.
    let p = ListParams { limit: 2, label_selector: "tier=front".into(), ..Default::default() };
    let l = c.list("pods", "default", &p).await.unwrap();
    c.delete("pods", "default", "p04", &DeleteParams::default()).await.unwrap();
    let p = ListParams { continue_token: l.continue_token, ..p };
    let l2 = c.list("pods", "default", &p).await.unwrap();
    let got: Vec<&str> =
        l.items.iter().chain(&l2.items).map(|i| i["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(got, ["p00", "p02", "p04", "p06"]);
    assert_eq!(l2.remaining, 9, "p08..p24 even, as of the snapshot");
    // A snapshot the store has compacted away is Expired: the client lists again.
    let mut etcd =
        flotilla_tests::etcd_connect(&[s.member.endpoint()], &s.member.etcd_tls()).await.unwrap();
    let now = etcd.get("/", None).await.unwrap().header().unwrap().revision();
    etcd.compact(now, None).await.unwrap();
    let e = c.list("pods", "default", &p).await.unwrap_err();
    assert_eq!(e.reason, Reason::Expired, "{}", e.message);
    c.create("pods", "default", &pod("p21", json!({"app": "web", "tier": "back"}), None))
        .await
        .unwrap();
    c.create("pods", "default", &pod("p04", json!({"app": "web", "tier": "front"}), None))
        .await
        .unwrap();
    c.delete("pods", "default", "p15a", &DeleteParams::default()).await.unwrap();

    let count = |ns: &'static str, l: &'static str, f: &'static str| {
        let c = c.clone();
        async move {
            c.list(
                "pods",
                ns,
                &ListParams {
                    label_selector: l.into(),
                    field_selector: f.into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .items
            .len()
        }
    };
    assert_eq!(count("", "", "").await, 26, "all namespaces");
    assert_eq!(count("default", "tier=front", "").await, 13);
    assert_eq!(count("default", "tier in (front,back),tier!=front", "").await, 12);
    assert_eq!(count("", "app=web,!tier", "").await, 1);
    assert_eq!(count("default", "", "spec.nodeName=node-a").await, 5);
    assert_eq!(count("default", "tier=front", "spec.nodeName=node-a").await, 3);
    assert_eq!(
        count("", "", "spec.nodeName=").await,
        21,
        "unbound pods, as the scheduler lists them"
    );
    assert_eq!(count("", "", "metadata.namespace=other").await, 1);
    assert_eq!(count("default", "", "status.phase=Pending,metadata.name!=p00").await, 24);

    // A list reflects a write acknowledged just before it.
    c.delete("pods", "default", "p01", &DeleteParams::default()).await.unwrap();
    assert_eq!(count("default", "", "").await, 24);
}

#[tokio::test]
async fn watches_resume_filter_bookmark_and_expire() {
    let s = server(&["--watch-history", "40", "--watch-bookmark-ms", "100"]).await;
    let c = &s.client;
    c.create(
        "configmaps",
        "default",
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "pre"}}),
    )
    .await
    .unwrap();

    // From "": the current state as ADDED, then changes.
    let mut w = Box::pin(c.watch("configmaps", "default", &WatchParams::default()).await.unwrap());
    let first = collect(&mut w, 1).await;
    assert_eq!(
        (first[0].kind, first[0].object["metadata"]["name"].as_str()),
        (EventType::Added, Some("pre"))
    );

    let mut revs = Vec::new();
    for i in 0..5 {
        let (o, _) = c
            .create(
                "configmaps",
                "default",
                &json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("cm{i}"), "labels": {"watched": "yes"}}}),
            )
            .await
            .unwrap();
        revs.push(rv(&o));
    }
    let evs = collect(&mut w, 5).await;
    let got: Vec<i64> = evs.iter().map(|e| rv(&e.object)).collect();
    assert_eq!(got, revs, "ordered, no gaps, no duplicates");

    // Resume from the middle: exactly what came after.
    let mut r = Box::pin(
        c.watch(
            "configmaps",
            "default",
            &WatchParams { resource_version: revs[1].to_string(), ..Default::default() },
        )
        .await
        .unwrap(),
    );
    let evs = collect(&mut r, 3).await;
    assert_eq!(evs.iter().map(|e| rv(&e.object)).collect::<Vec<_>>(), revs[2..]);

    // A selector watch sees an object that stops matching as DELETED, and one that starts as ADDED.
    let mut sel = Box::pin(
        c.watch(
            "configmaps",
            "default",
            &WatchParams {
                label_selector: "watched=yes".into(),
                resource_version: revs[4].to_string(),
                ..Default::default()
            },
        )
        .await
        .unwrap(),
    );
    c.patch(
        "configmaps",
        "default",
        "cm0",
        &json!({"metadata": {"labels": {"watched": null}}}),
        false,
        false,
    )
    .await
    .unwrap();
    c.patch(
        "configmaps",
        "default",
        "pre",
        &json!({"metadata": {"labels": {"watched": "yes"}}}),
        false,
        false,
    )
    .await
    .unwrap();
    let evs = collect(&mut sel, 2).await;
    assert_eq!(
        (evs[0].kind, evs[0].object["metadata"]["name"].as_str()),
        (EventType::Deleted, Some("cm0"))
    );
    assert_eq!(
        (evs[1].kind, evs[1].object["metadata"]["name"].as_str()),
        (EventType::Added, Some("pre"))
    );

    // Bookmarks carry the newest revision, even when this type had no change.
    let mut bm = Box::pin(
        c.watch(
            "configmaps",
            "default",
            &WatchParams {
                resource_version: rv(&evs[1].object).to_string(),
                allow_bookmarks: true,
                ..Default::default()
            },
        )
        .await
        .unwrap(),
    );
    let (other, _) = c
        .create(
            "secrets",
            "default",
            &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}),
        )
        .await
        .unwrap();
    let mut bookmark_rv = 0;
    for _ in 0..50 {
        for e in next_events(&mut bm).await.unwrap() {
            assert_eq!(e.kind, EventType::Bookmark);
            bookmark_rv = e.resource_version().parse().unwrap();
        }
        if bookmark_rv >= rv(&other) {
            break;
        }
    }
    assert!(bookmark_rv >= rv(&other), "bookmark {bookmark_rv} < {}", rv(&other));

    // Deletes carry the deletion's revision.
    let before = rv(&c.get("configmaps", "default", "cm1").await.unwrap());
    c.delete("configmaps", "default", "cm1", &DeleteParams::default()).await.unwrap();
    let del = collect(&mut w, 3).await;
    let d = del.iter().find(|e| e.kind == EventType::Deleted).expect("delete event");
    assert!(rv(&d.object) > before);

    // Watches nobody reads hold the shared HTTP/2 connection's flow-control window: close them.
    drop((w, r, sel, bm));

    // Far behind the kept history: expired.
    for i in 0..60 {
        c.patch(
            "configmaps",
            "default",
            "cm2",
            &json!({"data": {"i": i.to_string()}}),
            false,
            false,
        )
        .await
        .unwrap();
    }
    let old = c
        .watch(
            "configmaps",
            "default",
            &WatchParams { resource_version: revs[0].to_string(), ..Default::default() },
        )
        .await;
    let err = match old {
        Err(e) => e,
        Ok(st) => {
            futures::pin_mut!(st);
            next_events(&mut st).await.unwrap_err()
        }
    };
    assert_eq!(err.reason, Reason::Expired, "{}", err.message);
    assert!(err.message.contains("too old resource version"), "{}", err.message);
}

#[tokio::test]
async fn slow_watchers_are_cut_off_without_stalling_others() {
    let s = server(&["--watch-ring", "32"]).await;
    let c = &s.client;
    let writers = 8;
    let per_writer = 100;
    for w in 0..writers {
        c.create("configmaps", "default", &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("hot{w}")}})).await.unwrap();
    }
    // The slow client has its own connection, as a real one would: unread data on a shared
    // HTTP/2 connection would hold its flow-control window for everyone on it.
    let slow_client = s.member.client().await.unwrap();
    let slow = slow_client.watch("configmaps", "default", &WatchParams::default()).await.unwrap();
    let fast = c.watch("configmaps", "default", &WatchParams::default()).await.unwrap();
    futures::pin_mut!(slow);
    futures::pin_mut!(fast);
    let big = "x".repeat(4000);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (c, big) = (c.clone(), big.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let patch = json!({"data": {"i": i.to_string(), "pad": big}});
                c.patch("configmaps", "default", &format!("hot{w}"), &patch, false, false)
                    .await
                    .unwrap();
            }
        }));
    }
    let writes = writers * per_writer;
    // The fast watcher keeps up and sees every write.
    let mut seen = 0;
    while seen < writes + writers {
        seen += next_events(&mut fast).await.unwrap().len();
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The slow one, read only now, ends with a resumable "fell behind" error.
    let mut got = 0;
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.next()).await.unwrap() {
            Some(Ok(evs)) => got += evs.len(),
            Some(Err(e)) => break e,
            None => panic!("slow watch ended without an error after {got} events"),
        }
    };
    assert_eq!(err.reason, Reason::TooManyRequests, "{}", err.message);
    assert!(err.message.contains("resume from resourceVersion"), "{}", err.message);
    assert!(got < writes, "the slow watcher was cut off ({got} events)");
    let metrics = reqwest_metrics(&s.member).await;
    assert!(
        metrics.contains("flotilla_api_watch_cutoffs_total{resource=\"configmaps\"} 1"),
        "{metrics}"
    );
}

/// `/metrics` over HTTPS on the API port, as the admin.
async fn reqwest_metrics(m: &flotilla_tests::Member) -> String {
    let ca = m.ca_pem().unwrap();
    let (status, body) =
        https::get(&m.api, "/metrics", Some(&ca), Some(m.admin_identity().unwrap())).await.unwrap();
    assert_eq!(status, 200, "{}", &body[..body.len().min(200)]);
    body
}

#[tokio::test]
async fn services_get_unique_cluster_ips_and_node_ports() {
    let s = server(&["--service-cidr", "10.96.0.0/28", "--node-port-range", "30000-30003"]).await;
    let c = &s.client;
    let svc = |name: &str, ty: &str, ip: Option<&str>| {
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name}, "spec": {"type": ty, "clusterIP": ip, "selector": {"app": name}, "ports": [{"port": 80}]}})
    };
    let mut ips = std::collections::HashSet::new();
    for i in 0..8 {
        let (v, _) = c
            .create("services", "default", &svc(&format!("s{i}"), "ClusterIP", None))
            .await
            .unwrap();
        let ip = v["spec"]["clusterIP"].as_str().unwrap().to_string();
        assert!(ip.starts_with("10.96.0."), "{ip}");
        assert!(ips.insert(ip), "duplicate ClusterIP");
        assert_eq!(v["spec"]["ports"][0]["targetPort"], 80);
    }
    let taken = ips.iter().next().unwrap().clone();
    let e =
        c.create("services", "default", &svc("dup", "ClusterIP", Some(&taken))).await.unwrap_err();
    assert_eq!(e.reason, Reason::Invalid, "{}", e.message);
    assert!(e.message.contains("already allocated"), "{}", e.message);
    let e = c
        .create("services", "default", &svc("far", "ClusterIP", Some("10.200.0.1")))
        .await
        .unwrap_err();
    assert!(e.message.contains("not in the valid range"), "{}", e.message);
    // Deleting frees the address.
    c.delete("services", "default", "s0", &DeleteParams::default()).await.unwrap();
    let freed = c.list("services", "default", &ListParams::default()).await.unwrap().items.len();
    assert_eq!(freed, 7);

    let (np, _) = c.create("services", "default", &svc("np", "NodePort", None)).await.unwrap();
    let port = np["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    assert!((30000..=30003).contains(&port));
    // Re-applying a manifest without the allocated values keeps them.
    let mut again = svc("np", "NodePort", None);
    again["metadata"]["resourceVersion"] = np["metadata"]["resourceVersion"].clone();
    let (kept, _) = c.update("services", "default", &again).await.unwrap();
    assert_eq!(kept["spec"]["clusterIP"], np["spec"]["clusterIP"]);
    assert_eq!(kept["spec"]["ports"][0]["nodePort"], port);
    let mut others = Vec::new();
    for i in 0..3 {
        let (v, _) = c
            .create("services", "default", &svc(&format!("np{i}"), "NodePort", None))
            .await
            .unwrap();
        others.push(v["spec"]["ports"][0]["nodePort"].as_i64().unwrap());
    }
    others.push(port);
    others.sort();
    assert_eq!(others, [30000, 30001, 30002, 30003]);
    let e = c.create("services", "default", &svc("np9", "NodePort", None)).await.unwrap_err();
    assert!(e.message.contains("no free node ports"), "{}", e.message);
}

/// Many small writes in flight on one connection to a server that falls behind (here: stopped,
/// so they all arrive at once when it resumes) all succeed: the server's budget for unread
/// small DATA frames must not end the connection (h2's ENHANCE_YOUR_CALM
/// "too_many_data_frames", which failed every request on it).
#[tokio::test]
async fn small_writes_queued_at_a_stalled_server_all_succeed() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    /// Resumes the server even when the test fails while it is stopped.
    struct Resume(Pid);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = kill(self.0, Signal::SIGCONT);
        }
    }
    let s = server(&[]).await;
    // Below the server's 200 concurrent streams, above the ~155 patch bodies (~45 bytes, so
    // ~211 bytes of framing overhead each) that a 64 KiB window's budget (32 KiB) allows.
    const WRITES: usize = 190;
    let name = |i: usize| format!("cm-{i}");
    let creates = (0..WRITES).map(|i| {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name(i)}});
        let c = s.client.clone();
        async move { c.create("configmaps", "default", &cm).await }
    });
    for r in futures::future::join_all(creates).await {
        r.unwrap();
    }
    let pid = Pid::from_raw(s.member.proc.as_ref().unwrap().pid().unwrap() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let resume = Resume(pid);
    // One patch per object, so they do not contend with each other.
    let writes: Vec<_> = (0..WRITES)
        .map(|i| {
            let (c, name) = (s.client.clone(), name(i));
            tokio::spawn(async move {
                let patch = json!({"data": {"k": "v"}});
                c.patch("configmaps", "default", &name, &patch, false, false).await
            })
        })
        .collect();
    // Every request reaches the stopped server's socket.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(resume);
    for (i, w) in writes.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(10), w).await.expect("write answered");
        if let Err(e) = r.unwrap() {
            panic!("write {i} failed: {e}");
        }
    }
    let all = s.client.list("configmaps", "default", &ListParams::default()).await.unwrap();
    assert_eq!(all.items.iter().filter(|cm| cm["data"]["k"] == "v").count(), WRITES);
}

#[tokio::test]
async fn informer_lists_watches_and_survives_a_server_restart() {
    let mut s = server(&[]).await;
    let c = s.client.clone();
    for i in 0..3 {
        c.create("configmaps", "default", &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("c{i}")}})).await.unwrap();
    }
    let inf = Informer::start(
        s.member.client_lazy().unwrap(),
        "configmaps",
        "default",
        WatchParams::default(),
    );
    inf.wait_synced(Duration::from_secs(10)).await.unwrap();
    assert_eq!(inf.list().len(), 3);
    let mut changes = inf.subscribe();
    c.delete("configmaps", "default", "c0", &DeleteParams::default()).await.unwrap();
    let ch = tokio::time::timeout(Duration::from_secs(10), changes.recv()).await.unwrap().unwrap();
    assert!(matches!(ch, flotilla_client::Change::Deleted(_)), "{ch:?}");
    assert!(inf.get("default/c0").is_none());

    // Restart the server (same data): the informer reconnects and catches up.
    s.member.kill();
    s.member.start().unwrap();
    let c = s.member.client().await.unwrap();
    let mut created = false;
    for _ in 0..100 {
        if c.create(
            "configmaps",
            "default",
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "after"}}),
        )
        .await
        .is_ok()
        {
            created = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(created);
    for _ in 0..200 {
        if inf.get("default/after").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(inf.get("default/after").is_some(), "informer caught up after the restart");
    assert_eq!(inf.list().len(), 3);
}

#[tokio::test]
async fn every_member_of_a_three_member_cluster_serves_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let members = flotilla_tests::cluster(3, dir.path(), &[]).unwrap();
    let mut clients = Vec::new();
    for m in &members {
        clients.push(m.client().await.unwrap());
    }
    for _ in 0..400 {
        if clients[0].get("namespaces", "", "default").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // A watch on member 2, writes through member 1, a consistent list on member 3.
    let mut w =
        Box::pin(clients[2].watch("configmaps", "default", &WatchParams::default()).await.unwrap());
    for i in 0..5 {
        let cm =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("c{i}")}});
        clients[1].create("configmaps", "default", &cm).await.unwrap();
        let listed =
            clients[0].list("configmaps", "default", &ListParams::default()).await.unwrap();
        assert_eq!(
            listed.items.len(),
            i + 1,
            "a list on another member sees the acknowledged write"
        );
    }
    let evs = collect(&mut w, 5).await;
    assert!(evs.iter().all(|e| e.kind == EventType::Added));
    // The system namespaces exist once, whichever member created them first.
    let ns = clients[2].list("namespaces", "", &ListParams::default()).await.unwrap();
    assert_eq!(ns.items.len(), 4);
}
