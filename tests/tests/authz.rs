//! Authorization on a real server: the default roles, RBAC objects, service accounts, the
//! Node authorizer and NodeRestriction, escalation prevention, and impersonation.

use flotilla_api::Reason;
use flotilla_client::Client;
use flotilla_tests::cli_with as cli;
use flotilla_tests::Member;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const RBAC: &str = "rbac.authorization.k8s.io";

/// Who asks: a user name and groups (system:authenticated is added for everyone but
/// anonymous, as the authenticators do).
#[derive(Clone, Copy)]
struct Who(&'static str, &'static [&'static str]);

const ANON: Who = Who("system:anonymous", &["system:unauthenticated"]);
const ALICE: Who = Who("alice", &[]);
const BOB: Who = Who("bob", &[]); // view in team
const CAROL: Who = Who("carol", &[]); // edit in team
const DAVE: Who = Who("dave", &[]); // admin in team
const ERIN: Who = Who("erin", &[]); // get configmaps/one in team
const BUILDER: Who = Who(
    "system:serviceaccount:team:builder",
    &["system:serviceaccounts", "system:serviceaccounts:team"],
);
const N1: Who = Who("system:node:n1", &["system:nodes"]);
const SCHED: Who = Who("system:kube-scheduler", &[]);
const KCM: Who = Who("system:kube-controller-manager", &[]);
const ADMIN: Who = Who("flotilla-admin", &["system:masters"]);
const MONITOR: Who = Who("prometheus", &["system:monitoring"]);

impl Who {
    fn groups(self) -> Vec<String> {
        let mut g: Vec<String> = self.1.iter().map(|s| s.to_string()).collect();
        if self.0 != "system:anonymous" {
            g.push("system:authenticated".into());
        }
        g
    }
}

/// One case: `verb group/resource[/sub] ns/name` (or a path), with a field selector.
struct Case {
    who: Who,
    verb: &'static str,
    /// `resource`, `resource.group`, `resource/sub`, or a path starting with `/`.
    what: &'static str,
    ns: &'static str,
    name: &'static str,
    fields: &'static str,
    allowed: bool,
}

const fn c(
    who: Who,
    verb: &'static str,
    what: &'static str,
    ns: &'static str,
    name: &'static str,
    allowed: bool,
) -> Case {
    Case { who, verb, what, ns, name, fields: "", allowed }
}

#[rustfmt::skip]
const MATRIX: &[Case] = &[
    // Anonymous: health and version only.
    c(ANON, "get", "/healthz", "", "", true),
    c(ANON, "get", "/version", "", "", true),
    c(ANON, "get", "/readyz", "", "", true),
    c(ANON, "get", "/metrics", "", "", false),
    c(ANON, "get", "/api", "", "", false),
    c(ANON, "list", "pods", "default", "", false),
    c(ANON, "get", "secrets", "kube-system", "x", false),
    c(ANON, "list", "namespaces", "", "", false),
    c(ANON, "create", "selfsubjectreviews.authentication.k8s.io", "", "", false),
    // Authenticated, no bindings: discovery and self reviews only.
    c(ALICE, "get", "/api", "", "", true),
    c(ALICE, "get", "/apis/apps/v1", "", "", true),
    c(ALICE, "get", "/metrics", "", "", false),
    c(ALICE, "create", "selfsubjectaccessreviews.authorization.k8s.io", "", "", true),
    c(ALICE, "create", "selfsubjectreviews.authentication.k8s.io", "", "", true),
    c(ALICE, "list", "pods", "default", "", false),
    c(ALICE, "get", "nodes", "", "n1", false),
    // view in team.
    c(BOB, "list", "pods", "team", "", true),
    c(BOB, "watch", "configmaps", "team", "", true),
    c(BOB, "get", "pods/log", "team", "p1", true),
    c(BOB, "get", "deployments.apps", "team", "web", true),
    c(BOB, "get", "secrets", "team", "s1", false),
    c(BOB, "create", "pods", "team", "", false),
    c(BOB, "create", "pods/exec", "team", "p1", false),
    c(BOB, "update", "deployments.apps/scale", "team", "web", false),
    c(BOB, "list", "rolebindings.rbac.authorization.k8s.io", "team", "", false),
    c(BOB, "list", "pods", "default", "", false),
    // edit in team.
    c(CAROL, "create", "pods", "team", "", true),
    c(CAROL, "get", "secrets", "team", "s1", true),
    c(CAROL, "create", "pods/exec", "team", "p1", true),
    c(CAROL, "delete", "deployments.apps", "team", "web", true),
    c(CAROL, "update", "deployments.apps/scale", "team", "web", true),
    c(CAROL, "create", "serviceaccounts/token", "team", "builder", true),
    c(CAROL, "impersonate", "serviceaccounts", "team", "builder", true),
    c(CAROL, "create", "rolebindings.rbac.authorization.k8s.io", "team", "", false),
    c(CAROL, "get", "roles.rbac.authorization.k8s.io", "team", "r", false),
    c(CAROL, "list", "pods", "default", "", false),
    // admin in team.
    c(DAVE, "create", "rolebindings.rbac.authorization.k8s.io", "team", "", true),
    c(DAVE, "create", "roles.rbac.authorization.k8s.io", "team", "", true),
    c(DAVE, "get", "secrets", "team", "s1", true),
    c(DAVE, "escalate", "roles.rbac.authorization.k8s.io", "team", "r", false),
    c(DAVE, "delete", "namespaces", "", "team", false),
    c(DAVE, "list", "nodes", "", "", false),
    // resourceNames.
    c(ERIN, "get", "configmaps", "team", "one", true),
    c(ERIN, "get", "configmaps", "team", "two", false),
    c(ERIN, "list", "configmaps", "team", "", false),
    c(ERIN, "update", "configmaps", "team", "one", false),
    // A service account with a Role.
    c(BUILDER, "list", "pods", "team", "", true),
    c(BUILDER, "get", "pods", "team", "p1", true),
    c(BUILDER, "delete", "pods", "team", "p1", false),
    c(BUILDER, "list", "pods", "default", "", false),
    c(BUILDER, "get", "secrets", "team", "s1", false),
    // The Node authorizer: what node n1's pods use, its own Lease, its kube-proxy reads.
    c(N1, "get", "pods", "team", "p1", true),
    c(N1, "get", "pods", "team", "p2", false),
    Case { fields: "spec.nodeName=n1", ..c(N1, "list", "pods", "", "", true) },
    Case { fields: "spec.nodeName=n2", ..c(N1, "watch", "pods", "", "", false) },
    c(N1, "list", "pods", "", "", false),
    c(N1, "get", "secrets", "team", "s1", true),
    c(N1, "get", "secrets", "team", "s2", false),
    c(N1, "list", "secrets", "team", "", false),
    c(N1, "get", "configmaps", "team", "c1", true),
    c(N1, "get", "configmaps", "team", "c2", false),
    c(N1, "create", "serviceaccounts/token", "team", "builder", true),
    c(N1, "create", "serviceaccounts/token", "team", "other", false),
    c(N1, "update", "pods/status", "team", "p1", true),
    c(N1, "update", "nodes/status", "", "n1", true),
    c(N1, "get", "nodes", "", "n2", true),
    c(N1, "update", "leases.coordination.k8s.io", "kube-node-lease", "n1", true),
    c(N1, "update", "leases.coordination.k8s.io", "kube-node-lease", "n2", false),
    c(N1, "list", "services", "", "", true),
    c(N1, "list", "endpointslices.discovery.k8s.io", "", "", true),
    c(N1, "delete", "secrets", "team", "s1", false),
    c(N1, "create", "deployments.apps", "team", "", false),
    // The scheduler and the controllers.
    c(SCHED, "create", "pods/binding", "team", "p1", true),
    c(SCHED, "list", "nodes", "", "", true),
    c(SCHED, "patch", "pods/status", "team", "p1", true),
    c(SCHED, "update", "leases.coordination.k8s.io", "kube-system", "flotilla-scheduler", true),
    c(SCHED, "update", "leases.coordination.k8s.io", "kube-system", "flotilla-controller-manager", false),
    c(SCHED, "get", "secrets", "team", "s1", false),
    c(SCHED, "create", "deployments.apps", "team", "", false),
    c(KCM, "create", "pods", "team", "", true),
    c(KCM, "delete", "deployments.apps", "team", "web", true),
    c(KCM, "escalate", "clusterroles.rbac.authorization.k8s.io", "", "admin", false),
    c(KCM, "impersonate", "users", "", "alice", false),
    // Admins, and monitoring.
    c(ADMIN, "delete", "nodes", "", "n1", true),
    c(ADMIN, "impersonate", "users", "", "alice", true),
    c(ADMIN, "get", "/metrics", "", "", true),
    c(MONITOR, "get", "/metrics", "", "", true),
    c(MONITOR, "list", "pods", "", "", false),
];

fn review(case: &Case) -> Value {
    let Case { who, verb, what, ns, name, fields, .. } = *case;
    let attrs = if what.starts_with('/') {
        json!({"nonResourceAttributes": {"verb": verb, "path": what}})
    } else {
        let (res, sub) = what.split_once('/').unwrap_or((what, ""));
        let (res, group) = res.split_once('.').unwrap_or((res, ""));
        json!({"resourceAttributes": {"verb": verb, "group": group, "resource": res,
            "subresource": sub, "namespace": ns, "name": name,
            "fieldSelector": {"rawSelector": fields}}})
    };
    let mut spec = attrs;
    spec["user"] = json!(who.0);
    spec["groups"] = json!(who.groups());
    json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec})
}

async fn apply(c: &Client, resource: &str, ns: &str, obj: Value) {
    c.create(resource, ns, &obj).await.unwrap_or_else(|e| panic!("{resource}: {}", e.message));
}

fn binding(name: &str, role_kind: &str, role: &str, subject: Value) -> Value {
    json!({"apiVersion": format!("{RBAC}/v1"), "kind": "RoleBinding", "metadata": {"name": name},
        "roleRef": {"apiGroup": RBAC, "kind": role_kind, "name": role}, "subjects": [subject]})
}

fn user(name: &str) -> Value {
    json!({"kind": "User", "apiGroup": RBAC, "name": name})
}

async fn setup(c: &Client) {
    apply(
        c,
        "namespaces",
        "",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}),
    )
    .await;
    for n in ["n1", "n2"] {
        apply(c, "nodes", "", json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}}))
            .await;
    }
    for (k, n) in
        [("secrets", "s1"), ("secrets", "s2"), ("configmaps", "c1"), ("configmaps", "one")]
    {
        let kind = if k == "secrets" { "Secret" } else { "ConfigMap" };
        apply(c, k, "team", json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": n}}))
            .await;
    }
    for sa in ["builder", "other"] {
        apply(
            c,
            "serviceaccounts",
            "team",
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}}),
        )
        .await;
    }
    let pod = |name: &str, node: &str, secret: &str, sa: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "serviceAccountName": sa,
                "volumes": [{"name": "s", "secret": {"secretName": secret}}],
                "containers": [{"name": "c", "image": "busybox",
                    "envFrom": if node == "n1" { json!([{"configMapRef": {"name": "c1"}}]) } else { json!([]) }}]}})
    };
    apply(c, "pods", "team", pod("p1", "n1", "s1", "builder")).await;
    apply(c, "pods", "team", pod("p2", "n2", "s2", "other")).await;
    for (name, role, who) in [
        ("bob-view", "view", "bob"),
        ("carol-edit", "edit", "carol"),
        ("dave-admin", "admin", "dave"),
    ] {
        apply(c, "rolebindings", "team", binding(name, "ClusterRole", role, user(who))).await;
    }
    apply(
        c,
        "roles",
        "team",
        json!({"apiVersion": format!("{RBAC}/v1"), "kind": "Role",
        "metadata": {"name": "pod-reader"},
        "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]}),
    )
    .await;
    apply(
        c,
        "rolebindings",
        "team",
        binding(
            "builder-reads",
            "Role",
            "pod-reader",
            json!({"kind": "ServiceAccount", "name": "builder", "namespace": "team"}),
        ),
    )
    .await;
    apply(c, "roles", "team", json!({"apiVersion": format!("{RBAC}/v1"), "kind": "Role",
        "metadata": {"name": "cm-one"},
        "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["one"]}]})).await;
    apply(c, "rolebindings", "team", binding("erin-one", "Role", "cm-one", user("erin"))).await;
}

/// RBAC reads its objects from the watch cache: wait until the last binding made counts.
async fn settle(client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let probe = review(&c(ERIN, "get", "configmaps", "team", "one", true));
    loop {
        let r = client.review_access(&probe).await.unwrap();
        if r["status"]["allowed"] == true {
            return;
        }
        assert!(Instant::now() < deadline, "the bindings never took effect: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::new("authz", dir.path());
    m.start().unwrap();
    let admin = m.client().await.unwrap();
    setup(&admin).await;
    settle(&admin).await;

    assert!(MATRIX.len() >= 60, "{} cases", MATRIX.len());
    let mut wrong = Vec::new();
    for case in MATRIX {
        let r = admin.review_access(&review(case)).await.unwrap();
        let allowed = r["status"]["allowed"].as_bool().unwrap_or(false);
        if allowed != case.allowed {
            wrong.push(format!(
                "{} {} {} {}/{} [{}]: allowed={allowed}, want {} ({})",
                case.who.0,
                case.verb,
                case.what,
                case.ns,
                case.name,
                case.fields,
                case.allowed,
                r["status"]["reason"].as_str().unwrap_or("")
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n{}",
        wrong.len(),
        MATRIX.len(),
        wrong.join("\n")
    );
}

fn as_(c: &Client, who: Who) -> Client {
    let groups: Vec<String> = who.1.iter().map(|s| s.to_string()).collect();
    c.clone().impersonate(who.0, &groups).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_refused_in_kubernetes_words_and_writes_stay_in_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::new("authz", dir.path());
    m.start().unwrap();
    let admin = m.client().await.unwrap();
    setup(&admin).await;
    settle(&admin).await;

    // A denial names who, what and where.
    let e = as_(&admin, BOB).list("secrets", "team", &Default::default()).await.unwrap_err();
    assert_eq!(e.reason, Reason::Forbidden);
    assert_eq!(
        e.message,
        "secrets is forbidden: User \"bob\" cannot list resource \"secrets\" in API group \"\" in the namespace \"team\""
    );
    let e = as_(&admin, ALICE).get("nodes", "", "n1").await.unwrap_err();
    assert_eq!(
        e.message,
        "nodes \"n1\" is forbidden: User \"alice\" cannot get resource \"nodes\" in API group \"\" at the cluster scope"
    );
    // Impersonation itself needs the verb.
    let e = as_(&as_(&admin, ALICE), BOB).get("pods", "team", "p1").await;
    assert!(e.is_ok(), "an admin's impersonation is the impersonated user's: {e:?}");
    let e = admin.clone().impersonate("bob", &[]).unwrap();
    let who = e.who_am_i().await.unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], "bob");

    // NodeRestriction: n1 writes its own pods' status and its own Node, nothing else.
    let n1 = as_(&admin, N1);
    let status = json!({"status": {"phase": "Running"}});
    n1.patch("pods", "team", "p1", &status, false, true).await.unwrap();
    let e = n1.patch("pods", "team", "p2", &status, false, true).await.unwrap_err();
    assert_eq!(e.reason, Reason::Forbidden);
    assert!(
        e.message.contains(
            "node \"n1\" can only update pod status for pods with spec.nodeName set to itself"
        ),
        "{}",
        e.message
    );
    let labels = json!({"metadata": {"labels": {"x": "y"}}});
    n1.patch("nodes", "", "n1", &labels, false, false).await.unwrap();
    let e = n1.patch("nodes", "", "n2", &labels, false, false).await.unwrap_err();
    assert!(
        e.message.contains("node \"n1\" is not allowed to modify node \"n2\""),
        "{}",
        e.message
    );
    let e = n1
        .create(
            "pods",
            "team",
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}}),
        )
        .await
        .unwrap_err();
    assert!(e.message.contains("can only create mirror pods"), "{}", e.message);
    let e = n1.delete("pods", "team", "p2", &Default::default()).await.unwrap_err();
    assert!(
        e.message.contains("can only delete pods with spec.nodeName set to itself"),
        "{}",
        e.message
    );
    let e = n1.get("secrets", "team", "s2").await.unwrap_err();
    assert!(
        e.message.contains("no relationship found between node 'n1' and this object"),
        "{}",
        e.message
    );
    n1.get("secrets", "team", "s1").await.unwrap();

    // Escalation: dave (admin in team) grants what he holds, not more.
    let dave = as_(&admin, DAVE);
    dave.create(
        "rolebindings",
        "team",
        &binding("frank-edit", "ClusterRole", "edit", user("frank")),
    )
    .await
    .unwrap();
    let e = dave
        .create(
            "rolebindings",
            "team",
            &binding("frank-all", "ClusterRole", "cluster-admin", user("frank")),
        )
        .await
        .unwrap_err();
    assert_eq!(e.reason, Reason::Forbidden);
    assert!(
        e.message.contains("is attempting to grant RBAC permissions not currently held"),
        "{}",
        e.message
    );
    let role = |name: &str, res: &str| {
        json!({"apiVersion": format!("{RBAC}/v1"), "kind": "Role", "metadata": {"name": name},
            "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": [res]}]})
    };
    dave.create("roles", "team", &role("secret-reader", "secrets")).await.unwrap();
    let e = dave.create("roles", "team", &role("node-reader", "nodes")).await.unwrap_err();
    assert!(e.message.contains("Resources:[\"nodes\"], Verbs:[\"get\"]"), "{}", e.message);
    assert!(admin.get("roles", "team", "node-reader").await.is_err(), "nothing is stored");
    // With `bind` on a role, binding it needs no more.
    admin
        .create("clusterroles", "", &json!({"apiVersion": format!("{RBAC}/v1"), "kind": "ClusterRole",
            "metadata": {"name": "bind-view"},
            "rules": [{"verbs": ["bind"], "apiGroups": [RBAC], "resources": ["clusterroles"], "resourceNames": ["cluster-admin"]}]}))
        .await
        .unwrap();
    admin
        .create(
            "rolebindings",
            "team",
            &binding("dave-bind", "ClusterRole", "bind-view", user("dave")),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match dave
            .create(
                "rolebindings",
                "team",
                &binding("frank-all", "ClusterRole", "cluster-admin", user("frank")),
            )
            .await
        {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline && e.reason == Reason::Forbidden => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{}", e.message),
        }
    }
    // A binding to a role that does not exist is stored (for an admin), as in Kubernetes.
    admin
        .create("rolebindings", "team", &binding("later", "Role", "not-yet", user("frank")))
        .await
        .unwrap();
    // Invalid RBAC objects are refused, naming the field.
    let e = admin
        .create(
            "roles",
            "team",
            &json!({"apiVersion": format!("{RBAC}/v1"), "kind": "Role",
            "metadata": {"name": "bad"}, "rules": [{"verbs": [], "nonResourceURLs": ["/x"]}]}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.reason, Reason::Invalid);
    assert!(e.message.contains("rules[0].verbs"), "{}", e.message);
    assert!(
        e.message.contains("namespaced rules cannot apply to non-resource URLs"),
        "{}",
        e.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_roles_and_bindings_and_answers_can_i() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::new("authz", dir.path());
    m.start().unwrap();
    let admin = m.kubeconfig();
    let run = |args: &[&str]| {
        let (ok, out, err) = cli(&admin, args);
        assert!(ok, "{args:?}: {err}");
        out
    };
    let c = m.client().await.unwrap();
    apply(
        &c,
        "namespaces",
        "",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}),
    )
    .await;
    let out = run(&[
        "create",
        "role",
        "pod-reader",
        "-n",
        "team",
        "--verb=get,list",
        "--verb=watch",
        "--resource=pods,pods/log,deployments.apps",
    ]);
    assert_eq!(out, "role.rbac.authorization.k8s.io/pod-reader created\n");
    let role = run(&["get", "role", "pod-reader", "-n", "team", "-o", "json"]);
    let role: Value = serde_json::from_str(&role).unwrap();
    assert_eq!(
        role["rules"],
        json!([{"verbs": ["get", "list", "watch"], "apiGroups": [""], "resources": ["pods", "pods/log"]},
               {"verbs": ["get", "list", "watch"], "apiGroups": ["apps"], "resources": ["deployments"]}])
    );
    let out = run(&[
        "create",
        "rolebinding",
        "zoe-reads",
        "-n",
        "team",
        "--role=pod-reader",
        "--user=zoe",
        "--serviceaccount=team:ci",
    ]);
    assert_eq!(out, "rolebinding.rbac.authorization.k8s.io/zoe-reads created\n");
    run(&["create", "clusterrole", "metrics-reader", "--verb=get", "--non-resource-url=/metrics"]);
    run(&[
        "create",
        "clusterrolebinding",
        "zoe-metrics",
        "--clusterrole=metrics-reader",
        "--user=zoe",
    ]);
    let (ok, _, err) =
        cli(&admin, &["create", "clusterrolebinding", "x", "--role=pod-reader", "--user=zoe"]);
    assert!(!ok && err.contains("--role is for rolebindings"), "{err}");

    // can-i, as zoe through impersonation (the admin may), answered yes/no with an exit code.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out, _) =
            cli(&admin, &["auth", "can-i", "list", "pods", "-n", "team", "--as", "zoe"]);
        if ok {
            assert_eq!(out, "yes\n");
            break;
        }
        assert!(Instant::now() < deadline, "the binding never took effect: {out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, out, _) =
        cli(&admin, &["auth", "can-i", "delete", "pods", "-n", "team", "--as", "zoe"]);
    assert!(!ok);
    assert_eq!(out, "no\n");
    let (ok, out, _) = cli(&admin, &["auth", "can-i", "get", "/metrics", "--as", "zoe"]);
    assert!(ok, "{out}");
    // TYPE/NAME, as kubectl reads it: the pod named "exec", not the subresource.
    let (ok, _, _) =
        cli(&admin, &["auth", "can-i", "create", "pods/exec", "-n", "team", "--as", "zoe"]);
    assert!(!ok);
    let (ok, _, _) = cli(
        &admin,
        &["auth", "can-i", "create", "pods", "--subresource=exec", "-n", "team", "--as", "zoe"],
    );
    assert!(!ok);
    let (ok, _, _) = cli(
        &admin,
        &["auth", "can-i", "get", "pods", "--subresource=log", "-n", "team", "--as", "zoe"],
    );
    assert!(ok);
    let list = run(&["auth", "can-i", "--list", "-n", "team", "--as", "zoe"]);
    assert!(list.starts_with("Resources"), "{list}");
    assert!(
        list.lines().any(|l| l.starts_with("pods ") && l.contains("[get list watch]")),
        "{list}"
    );
    assert!(list.lines().any(|l| l.starts_with("deployments.apps ")), "{list}");
    assert!(list.contains("[/metrics]"), "{list}");
    assert!(list.contains("selfsubjectaccessreviews.authorization.k8s.io"), "{list}");

    // zoe herself, with her own certificate.
    let zoe = m.user_kubeconfig("zoe", &[], &dir.path().join("zoe.conf")).unwrap();
    let (ok, out, err) = cli(&zoe, &["get", "pods", "-n", "team"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("No resources found") || out.is_empty() || out.starts_with("NAME"),
        "{out}"
    );
    let (ok, _, err) = cli(&zoe, &["get", "secrets", "-n", "team"]);
    assert!(!ok);
    assert_eq!(
        err.trim(),
        "Error from server (Forbidden): secrets is forbidden: User \"zoe\" cannot list resource \"secrets\" in API group \"\" in the namespace \"team\""
    );
    let (ok, out, _) = cli(&zoe, &["auth", "can-i", "create", "pods", "-n", "team"]);
    assert!(!ok);
    assert_eq!(out, "no\n");
    // zoe may not impersonate.
    let (ok, _, err) = cli(&zoe, &["get", "pods", "-n", "team", "--as", "flotilla-admin"]);
    assert!(!ok);
    assert!(err.contains("cannot impersonate resource \"users\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_security_enforces_namespace_levels_and_warns() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::new("psa", dir.path());
    m.start().unwrap();
    let c = m.client().await.unwrap();
    let ns = |name: &str, enforce: &str| {
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {
            "pod-security.kubernetes.io/enforce": enforce,
            "pod-security.kubernetes.io/warn": "restricted"}}})
    };
    apply(&c, "namespaces", "", ns("base", "baseline")).await;
    apply(&c, "namespaces", "", ns("secure", "restricted")).await;
    let pod = |name: &str, spec: Value| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec});
    let bare = json!({"containers": [{"name": "c", "image": "busybox"}]});
    let privileged = json!({"hostNetwork": true, "containers": [{"name": "c", "image": "busybox",
        "securityContext": {"privileged": true}}]});
    let restricted = json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "c", "image": "busybox", "securityContext": {
            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]});
    // Namespaces' caches catch up with their labels within milliseconds.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // baseline refuses privilege, naming each check and field; restricted is a warning.
    let e = c.create("pods", "base", &pod("priv", privileged.clone())).await.unwrap_err();
    assert_eq!(e.reason, Reason::Forbidden);
    assert_eq!(
        e.message,
        "pods \"priv\" is forbidden: violates PodSecurity \"baseline:latest\": host namespaces (hostNetwork=true), \
         privileged (container \"c\" must not set securityContext.privileged=true)"
    );
    let (_, warnings) = c.create("pods", "base", &pod("bare", bare.clone())).await.unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with(
            "would violate PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false"
        ),
        "{warnings:?}"
    );
    // restricted refuses the bare pod and admits the hardened one without warnings.
    let e = c.create("pods", "secure", &pod("bare", bare.clone())).await.unwrap_err();
    assert!(e.message.contains("runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true)"), "{}", e.message);
    assert!(c.get("pods", "secure", "bare").await.is_err(), "nothing stored");
    let (_, warnings) = c.create("pods", "secure", &pod("ok", restricted)).await.unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    // Workloads are warned, not refused: their pods are.
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": privileged}}});
    let (_, warnings) = c.create("deployments", "secure", &deploy).await.unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w
                .starts_with("would violate PodSecurity \"restricted:latest\": host namespaces")),
        "{warnings:?}"
    );
    // Tightening a namespace tells about the pods that would no longer be admitted.
    let mut base = c.get("namespaces", "", "base").await.unwrap();
    base["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] = json!("restricted");
    let (_, warnings) = c.update("namespaces", "", &base).await.unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("violate the new PodSecurity enforce level \"restricted:latest\"")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.starts_with("bare: allowPrivilegeEscalation != false")),
        "{warnings:?}"
    );

    // The CLI prints the refusal and the warnings as kubectl does.
    let f = dir.path().join("p.yaml");
    std::fs::write(&f, serde_json::to_string(&pod("p2", bare)).unwrap()).unwrap();
    let (ok, _, err) = cli(&m.kubeconfig(), &["apply", "-n", "secure", "-f", f.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("Error from server (Forbidden): pods \"p2\" is forbidden: violates PodSecurity \"restricted:latest\""), "{err}");
}
