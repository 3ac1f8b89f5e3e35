//! The write path is total: inputs that once panicked a handler (and reset the client's
//! stream) are refused with InvalidArgument naming the field, and nothing is stored. Drives the
//! API server in process, over a store in a temp dir: no socket, no cluster, no root.

use flotilla_api::patch::PatchKind;
use flotilla_api::{ApiError, Reason};
use flotilla_apiserver::request::User;
use flotilla_apiserver::testing::InProcess;
use flotilla_apiserver::ApiServer;
use serde_json::{json, Value};

fn me() -> User {
    User::anonymous()
}

fn body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn assert_invalid(r: Result<impl std::fmt::Debug, ApiError>, field: &str) {
    let e = r.expect_err("the request should be refused");
    assert!(matches!(e.reason, Reason::Invalid | Reason::BadRequest), "{e:?}");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let named = e.causes.iter().any(|c| c.field == field) || e.message.contains(field);
    assert!(named, "the error should name {field}: {e:?}");
}

async fn get(api: &ApiServer, resource: &str, name: &str) -> Value {
    let info = api.resource(resource).unwrap();
    api.get(info, "default", name).await.unwrap()
}

#[tokio::test]
async fn inputs_that_panicked_the_write_path_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(dir.path()).await.unwrap();
    let api = &s.api;
    let cms = api.resource("configmaps").unwrap();
    let svcs = api.resource("services").unwrap();
    let cjs = api.resource("cronjobs").unwrap();

    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                    "data": {"k": "v"}});
    api.create(&me(), cms, "default", &body(&cm), false, "test").await.unwrap();
    let before = get(api, "configmaps", "c").await;
    // A JSON patch that replaces the whole document with an array.
    let patch = br#"[{"op":"replace","path":"","value":[]}]"#;
    let r = api.patch(&me(), cms, "default", "c", PatchKind::Json, patch, "", false, "test").await;
    assert_invalid(r, "<root>");
    // Merge patches cannot do it, but a JSON patch to a scalar is refused the same way.
    let patch = br#"[{"op":"replace","path":"","value":"x"}]"#;
    let r = api.patch(&me(), cms, "default", "c", PatchKind::Json, patch, "", false, "test").await;
    assert_invalid(r, "<root>");
    assert_eq!(get(api, "configmaps", "c").await, before, "nothing is stored");

    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                     "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
    api.create(&me(), svcs, "default", &body(&svc), false, "test").await.unwrap();
    let before = get(api, "services", "s").await;
    for bad in [json!("x"), json!([]), json!(7)] {
        // Update, with and without a resourceVersion.
        let mut upd = svc.clone();
        upd["spec"] = bad.clone();
        let r = api.update(&me(), svcs, "default", &body(&upd), "", false, "test").await;
        assert_invalid(r, "spec");
        upd["metadata"]["resourceVersion"] = before["metadata"]["resourceVersion"].clone();
        let r = api.update(&me(), svcs, "default", &body(&upd), "", false, "test").await;
        assert_invalid(r, "spec");
        // Merge patch and JSON patch.
        let p = body(&json!({"spec": bad}));
        let r =
            api.patch(&me(), svcs, "default", "s", PatchKind::Merge, &p, "", false, "test").await;
        assert_invalid(r, "spec");
        let p = body(&json!([{"op": "replace", "path": "/spec", "value": bad}]));
        let r =
            api.patch(&me(), svcs, "default", "s", PatchKind::Json, &p, "", false, "test").await;
        assert_invalid(r, "spec");
    }
    // Ports of the wrong shape are the validation's to name, not a panic.
    let p = body(&json!({"spec": {"ports": [1, "x"]}}));
    let r = api.patch(&me(), svcs, "default", "s", PatchKind::Merge, &p, "", false, "test").await;
    assert_invalid(r, "spec.ports[0]");
    assert_eq!(get(api, "services", "s").await, before, "nothing is stored");

    for schedule in ["@every 100000000h", "@every 99999999999999999999h", "@every banana"] {
        let cj = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "j"},
            "spec": {"schedule": schedule, "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "c", "image": "busybox"}]}}}}}});
        let r =
            api.create(&me(), cjs, "default", &body(&cj), false, "test").await.map(|w| w.object);
        assert_invalid(r, "spec.schedule");
    }
    let info = api.resource("cronjobs").unwrap();
    let e = api.get(info, "default", "j").await.unwrap_err();
    assert_eq!(e.reason, Reason::NotFound, "no CronJob was stored");
    s.shutdown().await;
}
