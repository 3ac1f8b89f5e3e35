//! kube-rs (crates `kube` and `kube-runtime`), a client we did not write, against Flotilla's
//! Kubernetes HTTP API with the admin kubeconfig the server writes: typed lists (pages,
//! selectors) and watches, `kube::runtime::watcher` carrying on across a server restart,
//! server-side apply through `Patch::Apply` (managed fields, a conflict between managers,
//! force), and a `Controller` that reconciles ConfigMaps.

use flotilla_tests::Member;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Config, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

async fn client(member: &Member) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(member.kubeconfig()).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
    Client::try_from(config).unwrap()
}

fn config_map(name: &str, labels: &[(&str, &str)], data: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        },
        "data": data.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
    }))
    .unwrap()
}

/// Polls `f` every 100 ms until it gives a value, for at most `secs`.
async fn until<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_lists_watches_applies_and_reconciles() {
    let dir = tempfile::tempdir().unwrap();
    let mut member = Member::new("kube-rs", dir.path());
    member.start().unwrap();
    member.api_url().unwrap();
    let client = client(&member).await;
    let info = client.apiserver_version().await.unwrap();
    assert_eq!(info.major, "1", "{info:?}");

    // Typed create, list with a selector and in pages.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for i in 0..5 {
        let tier = if i % 2 == 0 { "web" } else { "db" };
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("p{i}"), "labels": {"tier": tier}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    let web = pods.list(&ListParams::default().labels("tier=web")).await.unwrap();
    let names: Vec<String> = web.items.iter().map(|p| p.name_any()).collect();
    assert_eq!(names, ["p0", "p2", "p4"]);
    let page = pods.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(page.items.len(), 2);
    let token = page.metadata.continue_.clone().expect("a continue token");
    let rest = pods.list(&ListParams::default().limit(10).continue_token(&token)).await.unwrap();
    assert_eq!(rest.items.len(), 3);
    assert_eq!(rest.items[0].name_any(), "p2");
    // A missing object is kube's typed 404.
    match pods.get("nope").await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (404, "NotFound")),
        other => panic!("get of a missing pod: {other:?}"),
    }

    // A raw watch from the list's resourceVersion sees a change as MODIFIED.
    let rv = web.metadata.resource_version.clone().unwrap();
    let mut events = pods
        .watch(&kube::api::WatchParams::default().labels("tier=web").timeout(30), &rv)
        .await
        .unwrap()
        .boxed();
    let patch = json!({"metadata": {"annotations": {"seen": "yes"}}});
    pods.patch("p2", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(e) = events.next().await {
            // (The scheduler marks the pods unschedulable meanwhile: no node here.)
            match e.unwrap() {
                WatchEvent::Modified(p) if p.name_any() == "p2" => return p,
                _ => {}
            }
        }
        panic!("the watch ended");
    })
    .await
    .expect("a MODIFIED event");
    assert_eq!(seen.annotations()["seen"], "yes");
    drop(events);

    // Server-side apply: managed fields per manager, a conflict, then force.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let applied = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "applied"},
        "data": {"owner": "first", "shared": "a"},
    });
    let first = PatchParams::apply("first-manager");
    let cm = cms.patch("applied", &first, &Patch::Apply(&applied)).await.unwrap();
    let managers: Vec<(String, String)> = cm
        .managed_fields()
        .iter()
        .map(|m| (m.manager.clone().unwrap(), m.operation.clone().unwrap()))
        .collect();
    assert_eq!(managers, [("first-manager".to_string(), "Apply".to_string())]);
    let rival = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "applied"},
        "data": {"shared": "b"},
    });
    let second = PatchParams::apply("second-manager");
    match cms.patch("applied", &second, &Patch::Apply(&rival)).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"), "{s:?}");
            assert!(
                s.message.contains("first-manager") && s.message.contains(".data.shared"),
                "{s:?}"
            );
        }
        other => panic!("a conflicting apply: {other:?}"),
    }
    let cm = cms.patch("applied", &second.clone().force(), &Patch::Apply(&rival)).await.unwrap();
    assert_eq!(cm.data.as_ref().unwrap()["shared"], "b");
    assert_eq!(cm.data.as_ref().unwrap()["owner"], "first");

    // A controller: every ConfigMap labelled app=mirror gets a "<name>-copy" with its data,
    // owned by it.
    struct Ctx {
        client: Client,
    }
    async fn reconcile(cm: Arc<ConfigMap>, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), "default");
        let copy = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": format!("{}-copy", cm.name_any()),
                "ownerReferences": [{
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "name": cm.name_any(), "uid": cm.uid().unwrap(),
                }],
            },
            "data": cm.data.clone().unwrap_or_default(),
        });
        let name = format!("{}-copy", cm.name_any());
        api.patch(&name, &PatchParams::apply("mirror").force(), &Patch::Apply(&copy)).await?;
        Ok(Action::await_change())
    }
    fn retry(_: Arc<ConfigMap>, _: &kube::Error, _: Arc<Ctx>) -> Action {
        Action::requeue(Duration::from_millis(200))
    }
    let controller = Controller::new(cms.clone(), watcher::Config::default().labels("app=mirror"))
        .run(reconcile, retry, Arc::new(Ctx { client: client.clone() }))
        .for_each(|_| async {});
    let controller = tokio::spawn(controller);
    cms.create(&PostParams::default(), &config_map("src", &[("app", "mirror")], &[("k", "v1")]))
        .await
        .unwrap();
    let copy_has = |want: &'static str| {
        let cms = cms.clone();
        move || {
            let cms = cms.clone();
            async move {
                let c = cms.get_opt("src-copy").await.unwrap()?;
                (c.data.as_ref()?.get("k").map(String::as_str) == Some(want)).then_some(c)
            }
        }
    };
    let copy = until("the controller's copy", 20, copy_has("v1")).await;
    assert_eq!(copy.owner_references()[0].name, "src");
    let change = json!({"data": {"k": "v2"}});
    cms.patch("src", &PatchParams::default(), &Patch::Merge(&change)).await.unwrap();
    until("the copy to follow a change", 20, copy_has("v2")).await;

    // watcher() keeps going across a server restart: it relists or resumes, and objects
    // created after the restart arrive.
    let seen = Arc::new(std::sync::Mutex::new(BTreeMap::<String, String>::new()));
    let watching = {
        let seen = seen.clone();
        let stream = watcher(cms.clone(), watcher::Config::default().labels("watched=yes"))
            .default_backoff()
            .applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(e) = stream.next().await {
                if let Ok(cm) = e {
                    let v = cm.data.as_ref().and_then(|d| d.get("v")).cloned().unwrap_or_default();
                    seen.lock().unwrap().insert(cm.name_any(), v);
                }
            }
        })
    };
    let seen_has = |name: &'static str, v: &'static str| {
        let seen = seen.clone();
        move || {
            let seen = seen.clone();
            async move { (seen.lock().unwrap().get(name).map(String::as_str) == Some(v)).then_some(()) }
        }
    };
    cms.create(&PostParams::default(), &config_map("before", &[("watched", "yes")], &[("v", "1")]))
        .await
        .unwrap();
    until("the watcher to see `before`", 20, seen_has("before", "1")).await;
    member.kill();
    member.start().unwrap();
    member.api_url().unwrap();
    let after = config_map("after", &[("watched", "yes")], &[("v", "1")]);
    until("the restarted server to take a create", 30, || {
        let cms = cms.clone();
        let after = after.clone();
        async move { cms.create(&PostParams::default(), &after).await.ok() }
    })
    .await;
    until("the watcher to see `after` across the restart", 60, seen_has("after", "1")).await;
    let change = json!({"data": {"v": "2"}});
    cms.patch("before", &PatchParams::default(), &Patch::Merge(&change)).await.unwrap();
    until("the watcher to see a change after the restart", 30, seen_has("before", "2")).await;

    watching.abort();
    controller.abort();
    cms.delete("src", &DeleteParams::default()).await.unwrap();
    member.kill();
}
