//! The request core's stages in process: authentication, authorization and admission
//! plugins around the per-kind strategy, in Kubernetes' order, whatever the front.

use flotilla_api::Reason;
use flotilla_apiserver::request::{
    Admission, Attributes, Authorizer, Credentials, Decision, RequestInfo, Seams, User,
};
use flotilla_apiserver::testing::InProcess;
use flotilla_apiserver::DeleteOptions;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

/// Denies deleting ConfigMaps; has no opinion on anything else.
struct NoConfigMapDeletes;

impl Authorizer for NoConfigMapDeletes {
    fn authorize(&self, a: &Attributes<'_>) -> Decision {
        if a.verb == "delete" && a.resource == "configmaps" {
            Decision::Deny("configmaps are kept".into())
        } else {
            Decision::NoOpinion
        }
    }
}

/// Labels what it admits; refuses objects labelled `bad`; records what validation saw.
struct Labeller(Arc<Mutex<Vec<Value>>>);

impl Admission for Labeller {
    fn name(&self) -> &'static str {
        "Labeller"
    }

    fn mutate(
        &self,
        a: &Attributes<'_>,
        object: &mut Value,
        _old: Option<&Value>,
    ) -> Result<(), flotilla_api::ApiError> {
        object["metadata"]["labels"]["admitted-by"] = json!(a.user.name.replace(':', "-"));
        Ok(())
    }

    fn validate(
        &self,
        a: &Attributes<'_>,
        object: Option<&Value>,
        _old: Option<&Value>,
    ) -> Result<(), flotilla_api::ApiError> {
        if let Some(o) = object {
            self.0.lock().unwrap().push(o.clone());
            if o["metadata"]["labels"]["bad"].is_string() {
                return Err(flotilla_api::ApiError::new(
                    Reason::Forbidden,
                    format!("{} {}: refused by Labeller", a.resource, a.name),
                ));
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn authorization_and_admission_surround_the_strategy() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut seams = Seams::default();
    seams.authorizers.insert(0, Box::new(NoConfigMapDeletes));
    seams.admission.push(Box::new(Labeller(seen.clone())));
    let s = InProcess::start_with(dir.path(), seams).await.unwrap();
    let api = &s.api;
    let anon = Credentials::default();
    let alice = Credentials {
        client_cert: Some(("alice".into(), vec!["devs".into()])),
        ..Default::default()
    };

    // Authentication: no credentials make the anonymous user, whom RBAC lets do nothing but
    // read health and version; a bad token is refused.
    let e =
        api.admit_request(&anon, RequestInfo::new("create", "pods").at("default", "")).unwrap_err();
    assert_eq!(
        e.message,
        "pods is forbidden: User \"system:anonymous\" cannot create resource \"pods\" in API \
         group \"\" in the namespace \"default\""
    );
    let health = RequestInfo::non_resource("get", "/healthz");
    assert_eq!(api.admit_request(&anon, health).unwrap(), User::anonymous());
    let bad = Credentials { bearer: Some("not-a-token".into()), ..Default::default() };
    let e =
        api.admit_request(&bad, RequestInfo::new("get", "pods").at("default", "p")).unwrap_err();
    assert_eq!(e.reason, Reason::Unauthorized, "{e:?}");

    // Authorization: the first authorizer with an opinion decides, in Kubernetes' words.
    // alice's group may edit in "default" (RBAC), but the configured authorizer, asked
    // before RBAC, keeps ConfigMaps.
    let admin = User::apiserver();
    let rb = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "devs-edit"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"kind": "Group", "name": "devs"}]});
    let rbs = api.resource("rolebindings").unwrap();
    api.create(&admin, rbs, "default", &serde_json::to_vec(&rb).unwrap(), false, "test")
        .await
        .unwrap();
    let get_cm = RequestInfo::new("get", "configmaps").at("default", "c");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    // RBAC reads the binding from the watch cache: eventually consistent, as in Kubernetes.
    while api.admit_request(&alice, get_cm).is_err() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let user = api.admit_request(&alice, get_cm).unwrap();
    assert_eq!(user.name, "alice");
    let e = api
        .admit_request(&alice, RequestInfo::new("delete", "configmaps").at("default", "c"))
        .unwrap_err();
    assert_eq!(e.reason, Reason::Forbidden);
    assert_eq!(
        e.message,
        "configmaps \"c\" is forbidden: User \"alice\" cannot delete resource \
         \"configmaps\" in API group \"\" in the namespace \"default\": configmaps are kept"
    );
    assert!(api
        .admit_request(&alice, RequestInfo::new("get", "configmaps").at("kube-system", "c"))
        .is_err());

    // Mutating admission runs before the strategy, validating admission after it: the
    // validator sees the label added and the Pod's defaults (its service account).
    let pods = api.resource("pods").unwrap();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let w =
        api.create(&user, pods, "default", &serde_json::to_vec(&pod).unwrap(), false, "test").await;
    let created: Value = serde_json::from_slice(&w.unwrap().json()).unwrap();
    assert_eq!(created["metadata"]["labels"]["admitted-by"], "alice");
    let validated = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(validated["spec"]["serviceAccountName"], "default", "{validated}");
    assert_eq!(validated["metadata"]["labels"]["admitted-by"], "alice");

    // A validating refusal stores nothing, on create and on update.
    let mut bad_pod = pod.clone();
    bad_pod["metadata"] = json!({"name": "q", "labels": {"bad": "yes"}});
    let body = serde_json::to_vec(&bad_pod).unwrap();
    let e = api.create(&user, pods, "default", &body, false, "test").await.err().unwrap();
    assert_eq!(e.reason, Reason::Forbidden, "{e:?}");
    assert_eq!(api.get(pods, "default", "q").await.unwrap_err().reason, Reason::NotFound);
    let patch = br#"{"metadata": {"labels": {"bad": "yes"}}}"#;
    let kind = flotilla_api::patch::PatchKind::Merge;
    let e =
        api.patch(&user, pods, "default", "p", kind, patch, "", false, "test").await.unwrap_err();
    assert_eq!(e.reason, Reason::Forbidden, "{e:?}");
    let stored = api.get(pods, "default", "p").await.unwrap();
    assert!(stored["metadata"]["labels"]["bad"].is_null(), "{stored}");

    // Deletes pass validating admission with the old object only.
    let n = seen.lock().unwrap().len();
    let opts = DeleteOptions { grace_period_seconds: Some(0), ..Default::default() };
    api.delete(&user, pods, "default", "p", &opts).await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), n, "a delete has no new object to validate");
    s.shutdown().await;
}
