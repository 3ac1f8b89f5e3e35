//! The API server's write path must answer every request, never panic: random bodies and
//! patches (merge and JSON, main and status paths), updates, bindings and deletes over every
//! kind, driven in process against a real store in a temp dir.
//!
//! Input: `kind op rest…`. Each input first creates a valid object of the kind (so updates
//! and patches reach admission and the per-kind rules), then runs the requests that the
//! `0xff`-separated pieces of `rest…` describe: their first byte picks the verb, the rest is the
//! body or patch.
#![no_main]

use flotilla_api::patch::PatchKind;
use flotilla_api::RESOURCES;
use flotilla_apiserver::request::User;
use flotilla_apiserver::testing::InProcess;
use flotilla_apiserver::DeleteOptions;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

struct Harness {
    rt: tokio::runtime::Runtime,
    server: InProcess,
    // Kept for the process's life: the store lives in it.
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        // tmpfs when there is one: the store fsyncs every write.
        let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
        let dir = tempfile::tempdir_in(base).expect("temp dir");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let server = rt.block_on(InProcess::start(dir.path())).expect("in-process API server");
        Harness { rt, server, _dir: dir }
    })
}

/// A valid object of each kind, named `name`.
fn seed(kind: &str, name: &str) -> Value {
    let labels = json!({"app": name});
    let pod_spec = json!({"containers": [{"name": "c", "image": "busybox"}]});
    let template = json!({"metadata": {"labels": labels}, "spec": pod_spec});
    let mut o = match kind {
        "Pod" => json!({"spec": pod_spec}),
        "Service" => json!({"spec": {"type": "NodePort", "selector": labels,
                                     "ports": [{"port": 80, "name": "http"}]}}),
        "Endpoints" => json!({"subsets": [{"addresses": [{"ip": "10.244.0.5"}],
                                           "ports": [{"port": 80}]}]}),
        "EndpointSlice" => json!({"addressType": "IPv4",
                                  "endpoints": [{"addresses": ["10.244.0.5"]}]}),
        "ConfigMap" => json!({"data": {"k": "v"}}),
        "Secret" => json!({"stringData": {"k": "v"}}),
        "Event" => json!({"involvedObject": {"kind": "Pod", "name": name, "namespace": "default"},
                          "reason": "R", "message": "m", "type": "Normal"}),
        "Lease" => json!({"spec": {"holderIdentity": "h", "leaseDurationSeconds": 10}}),
        "ReplicaSet" | "Deployment" | "DaemonSet" => json!({"spec": {
            "selector": {"matchLabels": labels}, "template": template}}),
        "StatefulSet" => json!({"spec": {"serviceName": name,
            "selector": {"matchLabels": labels}, "template": template}}),
        "ControllerRevision" => json!({"revision": 1, "data": {}}),
        "Job" => json!({"spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox"}]}}}}),
        "CronJob" => json!({"spec": {"schedule": "@every 1h", "jobTemplate": {"spec": {
            "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox"}]}}}}}}),
        _ => json!({}),
    };
    o["metadata"] = json!({"name": name, "labels": labels});
    o
}

fn with_name(body: &[u8], name: &str) -> Vec<u8> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut m)) => {
            let meta = m.entry("metadata").or_insert_with(|| json!({}));
            if let Some(meta) = meta.as_object_mut() {
                meta.insert("name".into(), json!(name));
            }
            serde_json::to_vec(&m).unwrap_or_default()
        }
        _ => body.to_vec(),
    }
}

fuzz_target!(|data: &[u8]| {
    static N: AtomicU64 = AtomicU64::new(0);
    let [kind, rest @ ..] = data else { return };
    let info = &RESOURCES[*kind as usize % RESOURCES.len()];
    let h = harness();
    let api = &h.server.api;
    let name = format!("f{}", N.fetch_add(1, Ordering::Relaxed));
    let ns = if info.namespaced { "default" } else { "" };
    let me = User::anonymous();
    h.rt.block_on(async {
        let seed = serde_json::to_vec(&seed(info.kind, &name)).unwrap_or_default();
        let _ = api.create(&me, info, ns, &seed, false, "fuzz").await;
        for piece in rest.split(|b| *b == 0xff) {
            let [op, body @ ..] = piece else { continue };
            let dry = op & 0x80 != 0;
            let _ = match op % 11 {
                0 => api
                    .create(&me, info, ns, &with_name(body, &name), dry, "fuzz")
                    .await
                    .map(|_| ()),
                1 => api
                    .update(&me, info, ns, &with_name(body, &name), "", dry, "fuzz")
                    .await
                    .map(|_| ()),
                2 => api
                    .update(&me, info, ns, &with_name(body, &name), "status", dry, "fuzz")
                    .await
                    .map(|_| ()),
                3 => api
                    .patch(&me, info, ns, &name, PatchKind::Merge, body, "", dry, "fuzz")
                    .await
                    .map(|_| ()),
                4 => api
                    .patch(&me, info, ns, &name, PatchKind::Json, body, "", dry, "fuzz")
                    .await
                    .map(|_| ()),
                5 => api
                    .patch(&me, info, ns, &name, PatchKind::Merge, body, "status", dry, "fuzz")
                    .await
                    .map(|_| ()),
                6 => api
                    .patch(&me, info, ns, &name, PatchKind::Json, body, "status", dry, "fuzz")
                    .await
                    .map(|_| ()),
                7 => {
                    let grace = body.first().map(|g| i64::from(*g) - 1).filter(|g| *g >= 0);
                    let prop = ["", "Background", "Foreground", "Orphan", "x"]
                        [body.get(1).map_or(0, |b| *b as usize % 5)];
                    api.delete(
                        &me,
                        info,
                        ns,
                        &name,
                        &DeleteOptions {
                            grace_period_seconds: grace,
                            propagation_policy: prop.to_string(),
                            dry_run: dry,
                            ..Default::default()
                        },
                    )
                    .await
                    .map(|_| ())
                }
                8 => api.bind(&me, "default", &name, body).await,
                9 => {
                    let force = op & 0x40 != 0;
                    let sub = if op & 0x20 != 0 { "status" } else { "" };
                    api.apply(&me, info, ns, &name, body, sub, dry, "fuzz", force).await.map(|_| ())
                }
                _ => api.get(info, ns, &name).await.map(|_| ()),
            };
        }
    });
});
