//! The `flotilla` CLI against a real `flotillad server`: a Kubernetes manifest applies
//! unchanged, reads back, updates with conflict detection and is watched with `get -w`.

use flotilla_tests::{flotilla_cli, Member};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A Deployment, Service and ConfigMap exactly as written for Kubernetes.
const APP: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
  labels:
    app.kubernetes.io/name: web
data:
  nginx.conf: |
    server { listen 80; }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app.kubernetes.io/name: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app.kubernetes.io/name: web
  template:
    metadata:
      labels:
        app.kubernetes.io/name: web
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
        ports:
        - name: http
          containerPort: 80
        resources:
          requests:
            cpu: 100m
            memory: 64Mi
          limits:
            memory: 128Mi
        readinessProbe:
          httpGet:
            path: /
            port: http
        volumeMounts:
        - name: config
          mountPath: /etc/nginx/conf.d
      volumes:
      - name: config
        configMap:
          name: web-config
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app.kubernetes.io/name: web
  ports:
  - name: http
    port: 80
    targetPort: http
"#;

struct Cluster {
    _member: Member,
    dir: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
}

fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let mut member = Member::new("cli", dir.path());
    // The CLI against the API alone: no controllers acting on what it applies.
    member.extra = vec!["--no-scheduler".into(), "--no-controllers".into()];
    member.start().unwrap();
    member.api_url().unwrap();
    let kubeconfig = member.kubeconfig();
    let c = Cluster { _member: member, dir, kubeconfig };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.run(&["get", "ns", "default"]).status.success() {
        assert!(Instant::now() < deadline, "API server not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    c
}

impl Cluster {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(flotilla_cli());
        c.args(args).env("KUBECONFIG", &self.kubeconfig).env("HOME", self.dir.path());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "flotilla {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    fn fail(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(!o.status.success(), "flotilla {args:?} should fail");
        String::from_utf8(o.stderr).unwrap()
    }

    fn apply_stdin(&self, text: &str) -> Output {
        let mut child = self
            .cmd(&["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }
}

#[test]
fn kubernetes_manifest_applies_reads_back_updates_and_watches() {
    let c = cluster();
    let file = c.dir.path().join("app.yaml");
    std::fs::write(&file, APP).unwrap();
    let f = file.to_str().unwrap();
    let out = c.ok(&["apply", "-f", f]);
    assert_eq!(
        out,
        "configmap/web-config created\ndeployment.apps/web created\nservice/web created\n"
    );
    let out = c.ok(&["apply", "-f", f]);
    assert_eq!(
        out,
        "configmap/web-config unchanged\ndeployment.apps/web unchanged\nservice/web unchanged\n"
    );

    // Reads back as YAML with defaults and server fields.
    let y = c.ok(&["get", "deploy", "web", "-o", "yaml"]);
    for want in [
        "replicas: 2",
        "maxSurge: 25%",
        "imagePullPolicy: IfNotPresent",
        "resourceVersion:",
        "uid:",
        "generation: 1",
        "terminationGracePeriodSeconds: 30",
    ] {
        assert!(y.contains(want), "missing {want:?} in\n{y}");
    }
    let svc = c.ok(&["get", "svc", "web", "-o", "json"]);
    let svc: serde_json::Value = serde_json::from_str(&svc).unwrap();
    assert!(svc["spec"]["clusterIP"].as_str().unwrap().starts_with("10."));
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");

    // Tables, like kubectl's.
    let t = c.ok(&["get", "deploy,svc,cm"]);
    assert!(t.contains("NAME                  READY   UP-TO-DATE   AVAILABLE   AGE"), "{t}");
    assert!(
        t.lines().any(|l| l.starts_with("service/web")
            && l.contains("ClusterIP")
            && l.contains("80/TCP")),
        "{t}"
    );
    assert!(c.ok(&["get", "po"]).is_empty());
    assert!(c.ok(&["get", "deployments.apps", "-A", "-o", "name"]).contains("deployment.apps/web"));

    // An edited manifest configures; a field the manifest no longer has is removed.
    let edited = APP.replace("replicas: 2", "replicas: 3").replace(
        "      - name: config\n        configMap:\n          name: web-config\n",
        "      - name: config\n        emptyDir: {}\n",
    );
    let o = c.apply_stdin(&edited);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("deployment.apps/web configured"));
    let d: serde_json::Value =
        serde_json::from_str(&c.ok(&["get", "deploy", "web", "-o", "json"])).unwrap();
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["metadata"]["generation"], 2);
    assert!(d["spec"]["template"]["spec"]["volumes"][0].get("configMap").is_none());

    // get -w prints the current row, then each change as it happens.
    let mut w = c
        .cmd(&["get", "deploy", "web", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = w.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let header = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(header.starts_with("NAME"), "{header}");
    let row = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(row.starts_with("web") && row.contains("0/3"), "{row}");
    c.ok(&["scale", "deploy", "web", "--replicas", "5"]);
    let changed = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(changed.starts_with("web") && changed.contains("0/5"), "{changed}");
    let _ = w.kill();
    let _ = w.wait();

    // Conflict detection: an edit based on a stale version is refused.
    let stale = c.ok(&["get", "cm", "web-config", "-o", "yaml"]);
    c.ok(&["label", "cm", "web-config", "tier=front"]);
    let stale_file = c.dir.path().join("stale.yaml");
    std::fs::write(&stale_file, stale.replace("server { listen 80; }", "server { listen 81; }"))
        .unwrap();
    let editor = format!("cp {} ", stale_file.display());
    let o = c.cmd(&["edit", "cm", "web-config"]).env("EDITOR", &editor).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Error from server (Conflict)")
            && err.contains("the object has been modified"),
        "{err}"
    );
    // Editing the current version works.
    let o = c
        .cmd(&["edit", "cm", "web-config"])
        .env("EDITOR", "sed -i s/listen.80/listen\\ 82/")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(c.ok(&["get", "cm", "web-config", "-o", "yaml"]).contains("listen 82"));

    // Patch, annotate, describe, delete.
    c.ok(&["patch", "deploy", "web", "-p", r#"{"spec":{"paused":true}}"#]);
    c.ok(&["annotate", "deploy", "web", "owner=team-a"]);
    let desc = c.ok(&["describe", "deploy", "web"]);
    assert!(
        desc.contains("Name:         web")
            && desc.contains("owner=team-a")
            && desc.contains("paused: true"),
        "{desc}"
    );
    // Server-side apply: a manifest applied by two field managers is co-owned where they
    // agree and conflicts where they differ, until forced; managedFields shows when asked.
    let current = c.dir.path().join("current.yaml");
    std::fs::write(&current, &edited).unwrap();
    let current = current.to_str().unwrap();
    let ops =
        ["apply", "--server-side", "--force-conflicts", "--field-manager", "ops", "-f", current];
    assert_eq!(c.ok(&ops).lines().nth(1), Some("deployment.apps/web serverside-applied"));
    let three = c.dir.path().join("three.yaml");
    std::fs::write(&three, edited.replace("replicas: 3", "replicas: 4")).unwrap();
    let three = three.to_str().unwrap();
    let err = c.fail(&["apply", "--server-side", "--field-manager", "other", "-f", three]);
    let want = "Apply failed with 1 conflict: conflict with \"ops\": .spec.replicas";
    assert!(err.contains(&format!("Error from server (Conflict): {want}")), "{err}");
    c.ok(&["apply", "--server-side", "--force-conflicts", "--field-manager", "other", "-f", three]);
    let d: serde_json::Value =
        serde_json::from_str(&c.ok(&["get", "deploy", "web", "-o", "json"])).unwrap();
    assert_eq!(d["spec"]["replicas"], 4);
    assert!(d["metadata"].get("managedFields").is_none(), "{d}");
    let y = c.ok(&["get", "deploy", "web", "-o", "yaml", "--show-managed-fields"]);
    assert!(y.contains("manager: other") && y.contains("manager: ops"), "{y}");

    assert!(c.ok(&["delete", "-f", f]).contains("deployment.apps \"web\" deleted"));
    assert!(c
        .fail(&["get", "deploy", "web"])
        .contains("Error from server (NotFound): deployments.apps \"web\" not found"));
}

#[test]
fn errors_tell_the_user_what_to_fix() {
    let c = cluster();
    let e = c.fail(&["get", "widgets"]);
    assert!(e.contains("doesn't have a resource type \"widgets\""), "{e}");
    let o = c.apply_stdin("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: Bad}\nspec:\n  replicas: -1\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: c}}\n    spec: {containers: [{name: c, image: x}]}\n");
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    for want in [
        "Error from server (Invalid)",
        "metadata.name",
        "spec.replicas",
        "spec.template.metadata.labels",
    ] {
        assert!(e.contains(want), "missing {want:?}: {e}");
    }
    let o =
        c.apply_stdin("apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {name: x}\n");
    assert!(String::from_utf8_lossy(&o.stderr).contains("served as apiVersion apps/v1"));
    let o = c.apply_stdin(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: w}\nspecc: {}\ndata: {a: b}\n",
    );
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("Warning: unknown field \"specc\""));
    let e = c.fail(&["get", "po", "-l", "app in ("]);
    assert!(e.contains("invalid label selector"), "{e}");
    let e = Command::new(flotilla_cli())
        .args(["get", "po", "--server", "https://127.0.0.1:1"])
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&e.stderr)
        .contains("cannot reach the API server at https://127.0.0.1:1"));
    let res = c.ok(&["api-resources"]);
    assert!(
        res.lines().any(|l| l.starts_with("deployments ")
            && l.contains(" deploy ")
            && l.contains("apps/v1")),
        "{res}"
    );
    assert!(c.ok(&["completion", "bash"]).contains("flotilla"));
}

/// kubectl's conventions where `flotilla` used to differ: a query by type prints a `List`
/// even of one item, generators make the objects kubectl makes, and `get --raw` reads the
/// HTTP API.
#[test]
fn kubectl_conventions_lists_generators_and_raw() {
    let c = cluster();
    // One namespace asked for by type is still a List; by name it is the object.
    let list: serde_json::Value = serde_json::from_str(&c.ok(&[
        "get",
        "ns",
        "-l",
        "kubernetes.io/metadata.name=default",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
    let one: serde_json::Value =
        serde_json::from_str(&c.ok(&["get", "ns", "default", "-o", "json"])).unwrap();
    assert_eq!(one["kind"], "Namespace");
    let none: serde_json::Value =
        serde_json::from_str(&c.ok(&["get", "cm", "-l", "nothing=here", "-o", "json"])).unwrap();
    assert_eq!(none["items"], serde_json::json!([]));

    // Generators, with --dry-run=client printing what would be sent and nothing stored.
    let y = c.ok(&[
        "create",
        "configmap",
        "web",
        "--from-literal=a=1",
        "--dry-run=client",
        "-o",
        "yaml",
    ]);
    assert!(y.contains("kind: ConfigMap") && y.contains("a: '1'"), "{y}");
    assert!(c.fail(&["get", "cm", "web"]).contains("not found"));
    assert_eq!(
        c.ok(&["create", "configmap", "web", "--from-literal=a=1"]).trim(),
        "configmap/web created"
    );
    assert!(c
        .fail(&["create", "configmap", "web", "--from-literal=a=1", "--dry-run=server"])
        .contains("already exists"));
    assert!(c
        .fail(&["create", "configmap", "dup", "--from-literal=a=1", "--from-literal=a=2"])
        .contains("another key by that name already exists"));
    let secret = c.dir.path().join("pw.txt");
    std::fs::write(&secret, "hunter2").unwrap();
    let from_file = format!("--from-file=password={}", secret.display());
    c.ok(&["create", "secret", "generic", "db", &from_file]);
    let s: serde_json::Value =
        serde_json::from_str(&c.ok(&["get", "secret", "db", "-o", "json"])).unwrap();
    assert_eq!(
        (s["type"].as_str(), s["data"]["password"].as_str()),
        (Some("Opaque"), Some("aHVudGVyMg=="))
    );
    c.ok(&["create", "namespace", "team"]);
    c.ok(&["create", "serviceaccount", "bot", "-n", "team"]);
    assert_eq!(
        c.ok(&[
            "create",
            "deployment",
            "web",
            "--image=registry.invalid/nginx:1.27",
            "--replicas=2",
            "--port=80"
        ])
        .trim(),
        "deployment.apps/web created"
    );
    let d: serde_json::Value =
        serde_json::from_str(&c.ok(&["get", "deploy", "web", "-o", "json"])).unwrap();
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["name"], "nginx");
    assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "web");
    c.ok(&["create", "job", "once", "--image=registry.invalid/busybox", "--", "echo", "hi"]);
    c.ok(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    let svc: serde_json::Value =
        serde_json::from_str(&c.ok(&["get", "svc", "web", "-o", "json"])).unwrap();
    assert_eq!(svc["spec"]["ports"][0]["name"], "80-8080");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    c.ok(&["create", "service", "nodeport", "np", "--tcp=80"]);

    // get --raw: the HTTP API on the same connection and credentials.
    let v: serde_json::Value = serde_json::from_str(&c.ok(&["get", "--raw", "/version"])).unwrap();
    assert!(v["gitVersion"].as_str().unwrap().starts_with("v1.35.0-flotilla"));
    let pods = c.ok(&["get", "--raw", "/api/v1/namespaces/default/configmaps/web"]);
    assert!(pods.contains("\"kind\":\"ConfigMap\""), "{pods}");
    assert!(c
        .fail(&["get", "--raw", "/api/v1/namespaces/default/configmaps/nope"])
        .contains("configmaps \"nope\" not found"));
}
