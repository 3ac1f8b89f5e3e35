//! Pods end to end (root): a real API server and a real agent whose node lives in a network
//! namespace of the test's own, running the probe image (busybox + flotilla-probe) imported
//! from a tarball. Each test's node is reset (`flotillad agent --reset`) and its namespace
//! removed when it ends, pass or fail.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::{path::Path, process::Command, time::Duration};

use flotilla_client::{Client, DeleteParams};
use flotilla_tests::{flotillad, https, node::Node, probe};
use serde_json::{json, Value};

async fn until<F, Fut>(what: &str, secs: u64, mut f: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn pod_where(
    c: &Client,
    name: &str,
    what: &str,
    secs: u64,
    f: impl Fn(&Value) -> bool,
) -> Value {
    until(what, secs, || async { c.get("pods", "default", name).await.ok().filter(|p| f(p)) }).await
}

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or("")
}

fn cstatus<'a>(p: &'a Value, name: &str) -> &'a Value {
    p["status"]["containerStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

fn condition(p: &Value, kind: &str) -> String {
    p["status"]["conditions"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == kind))
        .map(|c| c["status"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn pod(name: &str, image: &str, spec: Value) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": []}});
    p["spec"] = spec;
    for key in ["containers", "initContainers"] {
        for c in p["spec"][key].as_array_mut().into_iter().flatten() {
            if c["image"].is_null() {
                c["image"] = json!(image);
            }
            c["imagePullPolicy"] =
                c["imagePullPolicy"].as_str().map(|s| json!(s)).unwrap_or(json!("IfNotPresent"));
        }
    }
    p
}

fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(dir.to_str().unwrap()))
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_runs_init_containers_env_and_volumes() {
    let node = Node::start("run", 21);
    let c = node.client().await;
    let img = node.image();
    let node_name = format!("node-{}", node.tag);

    // A container that needs a missing ConfigMap waits with a reason naming it.
    let mut p = pod(
        "web",
        &img,
        json!({
            "nodeName": node_name,
            "initContainers": [{"name": "prep", "command": ["sh", "-c", "echo prepared > /work/ready; echo init-done"],
                "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
            "containers": [{"name": "app",
                "command": ["sh", "-c", "echo greeting=$GREETING pod=$POD_NAME ip=$POD_IP mode=$(MODE); cat /work/ready; cat /cfg/color; cat /sec/token; echo; cat /etc/hostname; exec /bin/flotilla-probe echo 8080"],
                "env": [
                    {"name": "MODE", "value": "fast"},
                    {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "volumeMounts": [{"name": "work", "mountPath": "/work"}, {"name": "cfg", "mountPath": "/cfg", "readOnly": true},
                    {"name": "sec", "mountPath": "/sec"}]}],
            "volumes": [{"name": "work", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "settings"}},
                {"name": "sec", "secret": {"secretName": "creds"}}]
        }),
    );
    p["metadata"]["labels"] = json!({"app": "web"});
    c.create(
        "secrets",
        "default",
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
        "data": {"token": "czNjcjN0"}}),
    )
    .await
    .unwrap();
    c.create("pods", "default", &p).await.unwrap();
    let waiting = pod_where(&c, "web", "CreateContainerConfigError", 60, |p| {
        let s = &p["status"]["initContainerStatuses"][0]["state"]["waiting"];
        s["reason"] == "CreateContainerConfigError"
            || cstatus(p, "app")["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    })
    .await;
    assert_eq!(phase(&waiting), "Pending");
    let msg = waiting.to_string();
    assert!(msg.contains("configmap") && msg.contains("settings"), "{msg}");

    // Once it exists, the pod runs.
    c.create(
        "configmaps",
        "default",
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
        "data": {"greeting": "hello", "color": "blue"}}),
    )
    .await
    .unwrap();
    let running = pod_where(&c, "web", "Running and Ready", 60, |p| {
        phase(p) == "Running" && condition(p, "Ready") == "True"
    })
    .await;
    let st = &running["status"];
    let ip = st["podIP"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10.244.21."), "{ip}");
    assert_eq!(st["hostIP"], "127.0.0.1");
    assert_eq!(condition(&running, "Initialized"), "True");
    assert_eq!(st["initContainerStatuses"][0]["state"]["terminated"]["reason"], "Completed");
    let app = cstatus(&running, "app");
    assert_eq!(app["ready"], true);
    assert_eq!(app["restartCount"], 0);
    assert!(app["state"]["running"]["startedAt"].is_string());
    assert!(app["containerID"].as_str().unwrap().starts_with("flotilla://"));
    assert!(app["imageID"].as_str().unwrap().starts_with("sha256:"));

    let logs = until("app output", 20, || async {
        let l = node.logs(&running, "app", 0);
        l.contains("listening 8080").then(|| json!(l))
    })
    .await;
    let logs = logs.as_str().unwrap();
    assert!(logs.contains(&format!("greeting=hello pod=web ip={ip} mode=fast")), "{logs}");
    for want in ["prepared", "blue", "s3cr3t", "web"] {
        assert!(logs.contains(want), "{want} in {logs}");
    }
    assert!(node.logs(&running, "prep", 0).contains(" stdout F init-done"));

    // The same through the API server: `flotilla logs` never talks to the node itself.
    let (ok, out, err) = node.cli(&["logs", "web"]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("greeting=hello pod=web ip={ip} mode=fast\n")), "{out}");
    let (ok, out, _) = node.cli(&["logs", "pod/web", "-c", "app", "--tail", "1"]);
    assert!(ok);
    assert_eq!(out, "listening 8080\n");
    let (ok, out, _) = node.cli(&["logs", "web", "-c", "app", "--tail", "1", "--limit-bytes", "9"]);
    assert!(ok);
    assert_eq!(out, "listening");
    let (ok, out, _) = node.cli(&["logs", "web", "-c", "app", "--since", "1h"]);
    assert!(ok && out.ends_with("listening 8080\n"), "{out}");
    let (ok, out, _) =
        node.cli(&["logs", "web", "-c", "app", "--since-time", "2999-01-01T00:00:00Z"]);
    assert!(ok && out.is_empty(), "{out}");
    let (ok, _, err) = node.cli(&["logs", "web", "-c", "app", "--limit-bytes", "0"]);
    assert!(!ok);
    let want =
        "PodLogOptions \"web\" is invalid: limitBytes: Invalid value: 0: must be greater than 0";
    assert!(err.contains(want), "{err}");
    let (ok, out, _) = node.cli(&["logs", "web", "-c", "prep", "--timestamps"]);
    assert!(ok);
    assert!(out.ends_with("Z init-done\n") && out.starts_with("20"), "{out}");
    let (ok, _, err) = node.cli(&["logs", "web", "-c", "nope"]);
    assert!(!ok);
    assert!(err.contains("container \"nope\" in pod \"web\" not found"), "{err}");

    // exec, relayed the same way: output streams apart, the exit code comes back, the
    // command sees the container's filesystem, environment and volumes.
    let (ok, out, err) = node.cli(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "cat /cfg/color; echo to-stderr >&2; echo pod=$POD_NAME; exit 3",
    ]);
    assert!(!ok);
    assert_eq!(out, "bluepod=web\n");
    assert!(
        err.starts_with("to-stderr\n") && err.contains("command terminated with exit code 3"),
        "{err}"
    );
    // stdin, piped through to the command until it closes.
    let mut child = Command::new(flotilla_tests::flotilla_cli())
        .arg("--kubeconfig")
        .arg(node.member.kubeconfig())
        .args(["exec", "-i", "web", "-c", "app", "--"])
        .args(["sh", "-c", "tr a-z A-Z; echo done"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello\nworld\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout), "HELLO\nWORLD\ndone\n");
    // -it under a terminal (script(1) gives the CLI one): the command gets a pty of the
    // container's own /dev/pts with the terminal's size.
    let under_tty = |setup: &str, args: &str| {
        let line = format!(
            "{setup}{} --kubeconfig {} exec -it web -- {args}",
            flotilla_tests::flotilla_cli().display(),
            node.member.kubeconfig().display()
        );
        let o = Command::new("script").args(["-qec", &line, "/dev/null"]).output().unwrap();
        (o.status, String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let (status, text) = under_tty("stty rows 33 cols 101; ", "sh -c 'tty; stty size; exit 4'");
    assert_eq!(status.code(), Some(4), "{text}");
    assert!(text.contains("/dev/pts/0") && text.contains("33 101"), "{text}");
    // With a tty, a closed stdin is typed as the terminal's EOF (twice after a partial
    // line), so a program reading lines ends as it would at a terminal.
    {
        use flotilla_api::proto::{self, exec_input::Msg as In, exec_output::Msg as Out};
        use futures::StreamExt;
        let script = "cat; echo after-eof";
        let msgs = [
            In::Start(proto::ExecStart {
                namespace: "default".into(),
                name: "web".into(),
                container: "app".into(),
                command: vec!["sh".into(), "-c".into(), script.into()],
                stdin: true,
                tty: true,
                uid: String::new(),
                size: None,
            }),
            In::Stdin(b"partial".to_vec().into()),
            In::CloseStdin(true),
        ];
        let input = futures::stream::iter(msgs.map(|m| proto::ExecInput { msg: Some(m) }));
        let session = async {
            let mut out = c.pod_exec(input).await.unwrap();
            let (mut text, mut code) = (String::new(), None);
            while let Some(m) = out.next().await {
                match m.unwrap().msg {
                    Some(Out::Stdout(b)) => text.push_str(&String::from_utf8_lossy(&b)),
                    Some(Out::ExitCode(c)) => code = Some(c),
                    _ => {}
                }
            }
            (text, code)
        };
        let (text, code) = tokio::time::timeout(Duration::from_secs(20), session)
            .await
            .expect("cat ends when stdin closes");
        assert_eq!(code, Some(0), "{text}");
        assert!(text.contains("after-eof"), "{text}");
    }
    // Errors name what is wrong.
    let (ok, _, err) = node.cli(&["exec", "web", "-c", "nope", "--", "true"]);
    assert!(!ok && err.contains("container nope is not valid for pod web"), "{err}");
    let (ok, _, err) = node.cli(&["exec", "web", "--", "/no/such/program"]);
    assert!(!ok && err.contains("/no/such/program"), "{err}");
    let (status, text) = under_tty("", "/no/such/program");
    assert!(!status.success() && text.contains("/no/such/program"), "with a tty too: {text}");
    exec_through_the_http_api(&node);

    // Volumes follow their sources (the kubelet's periodic sync, 1 s here); env does not.
    c.patch(
        "configmaps",
        "default",
        "settings",
        &json!({"data": {"color": "green"}}),
        false,
        false,
    )
    .await
    .unwrap();
    c.patch("secrets", "default", "creds", &json!({"data": {"token": "bmV3"}}), false, false)
        .await
        .unwrap();
    until("updated volumes", 20, || async {
        let (_, out, _) = node.cli(&[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "cat /cfg/color /sec/token; echo; echo $GREETING",
        ]);
        (out == "greennew\nhello\n").then_some(json!(null))
    })
    .await;

    // Usage from cgroups: a container spinning under a 200m quota shows about that much.
    c.create(
        "pods",
        "default",
        &pod(
            "burner",
            &img,
            json!({"nodeName": node_name, "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "spin", "command": ["sh", "-c", "while :; do :; done"],
                "resources": {"limits": {"cpu": "200m", "memory": "64Mi"}}}]}),
        ),
    )
    .await
    .unwrap();
    let top = until("burner in flotilla top", 30, || async {
        let (ok, out, _) = node.cli(&["top", "pods", "burner", "--containers"]);
        (ok && out.contains("spin")).then(|| json!(out))
    })
    .await;
    let line = top.as_str().unwrap().lines().nth(1).unwrap().to_string();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f[..2], ["burner", "spin"], "{line}");
    let milli: i64 = f[2].trim_end_matches('m').parse().unwrap();
    assert!((50..=260).contains(&milli), "spinning under a 200m quota: {line}");
    let (ok, out, err) = node.cli(&["top", "pods"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("NAME") && out.contains("CPU(cores)") && out.contains("burner"),
        "{out}"
    );
    let (ok, out, err) = node.cli(&["top", "nodes"]);
    assert!(ok, "{err}");
    assert!(out.contains(&node_name) && out.contains("MEMORY(%)"), "{out}");
    // The same on the agent's /metrics, in the kubelet's names.
    // The node API takes the API server's client certificate only.
    let kubelet_client = node.member.kubelet_client_identity().unwrap();
    let text = until("agent /metrics", 10, || async {
        let addr = format!("127.0.0.1:{}", node.node_port);
        let (_, body) =
            https::get(&addr, "/metrics", None, Some(kubelet_client.clone())).await.ok()?;
        body.contains("container_cpu_usage_seconds_total").then(|| json!(body))
    })
    .await;
    let text = text.as_str().unwrap();
    assert!(
        text.contains(r#"container_memory_working_set_bytes{container="spin",namespace="default",pod="burner"}"#),
        "{text}"
    );
    assert!(text.contains("node_cpu_usage_seconds_total"), "{text}");
    c.delete("pods", "default", "burner", &DeleteParams::default()).await.unwrap();

    // The pod answers on its address from the node's namespace.
    let out = Command::new("nsenter")
        .arg(format!("--net={}", node.netns.display()))
        .arg(probe())
        .args(["connect", &format!("{ip}:8080"), "1"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("reply=web peer={ip}:8080"));

    // Deleting it stops it and removes it and everything it had.
    c.delete(
        "pods",
        "default",
        "web",
        &DeleteParams { grace_period_seconds: Some(5), ..Default::default() },
    )
    .await
    .unwrap();
    until("the pods gone", 30, || async {
        let gone = c.get("pods", "default", "web").await.is_err()
            && c.get("pods", "default", "burner").await.is_err();
        gone.then_some(json!(null))
    })
    .await;
    let uid = running["metadata"]["uid"].as_str().unwrap();
    let agent_dir = node.dir.path().join("agent");
    until("pod directory removed", 10, || async {
        (!agent_dir.join("pods").join(uid).exists()).then_some(json!(null))
    })
    .await;
    // What remains are the node's pod networks made ahead, none of them the pod's.
    let left = mounts_under(&agent_dir);
    assert!(left.iter().all(|m| m.contains("/net/netns/")), "{left:?}");
    let ipam = std::fs::read_dir(agent_dir.join("net/ipam")).unwrap().flatten().next().unwrap();
    for e in std::fs::read_dir(ipam.path()).unwrap().flatten() {
        assert_ne!(
            std::fs::read_to_string(e.path()).unwrap(),
            uid,
            "the pod's address is released"
        );
    }
}

/// Runs kubectl with arguments and stdin: its exit code, stdout and stderr.
type Kubectl<'a> = dyn Fn(&[&str], &[u8]) -> (Option<i32>, String, String) + 'a;

/// `kubectl attach`: what the container writes from then on (here through its PID 1's
/// stdout and stderr, from an exec) reaches the attached client, each on its stream; stdin
/// is refused with a reason.
fn attach_follows_the_output(
    node: &Node,
    kubectl: &std::path::Path,
    home: &std::path::Path,
    run: &Kubectl<'_>,
) {
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut attached = Killed(
        Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(node.member.kubeconfig())
            .args(["attach", "web", "-c", "app"])
            .env("HOME", home)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let collect = |mut from: Box<dyn std::io::Read + Send>| {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let into = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                into.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        seen
    };
    let seen = collect(Box::new(attached.0.stdout.take().unwrap()));
    let seen_err = collect(Box::new(attached.0.stderr.take().unwrap()));
    // Written until seen: the attach may still be connecting when the first line goes out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let script = "echo attached-line >> /proc/1/fd/1; echo attached-err >> /proc/1/fd/2";
    let write = ["exec", "web", "-c", "app", "--", "sh", "-c", script];
    loop {
        let (code, _, err) = run(&write, b"");
        assert_eq!(code, Some(0), "writing to the container's stdout: {err}");
        std::thread::sleep(std::time::Duration::from_millis(500));
        let (out, err) = (seen.lock().unwrap().clone(), seen_err.lock().unwrap().clone());
        assert!(!out.contains("attached-err"), "stderr came on stdout: {out:?}");
        if out.contains("attached-line\n") && err.contains("attached-err\n") {
            break;
        }
        let status = attached.0.try_wait().unwrap();
        assert!(status.is_none(), "kubectl attach ended ({status:?}): {out:?} {err:?}");
        assert!(std::time::Instant::now() < deadline, "kubectl attach saw {out:?} {err:?}");
    }
    drop(attached);
    let (code, _, err) = run(&["attach", "-i", "web", "-c", "app"], b"");
    assert!(code != Some(0) && err.contains("attaching to the stdin of container app"), "{err}");
}

/// pods/exec over WebSocket, by clients we did not write: kubectl (v5.channel.k8s.io, with
/// its end-of-stdin signal) and the Python client (v4.channel.k8s.io), which also forwards
/// ports (pods/portforward).
fn exec_through_the_http_api(node: &Node) {
    let kubectl = flotilla_tests::kubectl();
    if flotilla_prereq::met(kubectl.is_some(), "kubectl (cargo xtask setup installs it)") {
        let kubectl = kubectl.unwrap();
        let home = node.dir.path().join("kubectl-home");
        let run = |args: &[&str], stdin: &[u8]| {
            let mut child = Command::new(&kubectl)
                .arg("--kubeconfig")
                .arg(node.member.kubeconfig())
                .args(args)
                .env("HOME", &home)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(stdin).unwrap();
            let o = child.wait_with_output().unwrap();
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            (o.status.code(), text(&o.stdout), text(&o.stderr))
        };
        let script = "cat /cfg/color; echo to-stderr >&2; echo pod=$POD_NAME; exit 3";
        let (code, out, err) = run(&["exec", "web", "--", "sh", "-c", script], b"");
        assert_eq!(code, Some(3), "kubectl exec: {out} {err}");
        assert_eq!(out, "bluepod=web\n");
        // (kubectl first says which container it picked, as against Kubernetes.)
        assert!(err.contains("Defaulted container \"app\" out of: app, prep (init)"), "{err}");
        assert!(err.contains("\nto-stderr\ncommand terminated with exit code 3"), "{err}");
        // stdin until its end (v5's CLOSE message), then the rest of the output.
        let (code, out, err) = run(
            &["exec", "-i", "web", "-c", "app", "--", "sh", "-c", "tr a-z A-Z; echo done"],
            b"hello\nworld\n",
        );
        assert_eq!((code, out.as_str()), (Some(0), "HELLO\nWORLD\ndone\n"), "{err}");
        let (code, _, err) = run(&["exec", "web", "-c", "nope", "--", "true"], b"");
        assert!(
            code != Some(0) && err.contains("container nope is not valid for pod web"),
            "{err}"
        );
        let (code, _, err) = run(&["exec", "web", "--", "/no/such/program"], b"");
        assert!(code != Some(0) && err.contains("/no/such/program"), "{err}");
        attach_follows_the_output(node, &kubectl, &home, &run);
        // Kubernetes 1.32's split log streams: what the attach test wrote to stderr, alone.
        let log = "/api/v1/namespaces/default/pods/web/log?container=app";
        let (code, out, err) = run(&["get", "--raw", &format!("{log}&stream=Stderr")], b"");
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("attached-err\n") && !out.contains("greeting="), "{out}");
        let (_, out, _) = run(&["get", "--raw", &format!("{log}&stream=Stdout")], b"");
        assert!(out.contains("greeting=") && !out.contains("attached-err"), "{out}");
        let (_, _, err) = run(&["get", "--raw", &format!("{log}&stream=Both")], b"");
        assert!(err.contains("stream: Unsupported value: \"Both\""), "{err}");
    }
    const PYTHON: &str = "/usr/bin/python3";
    let has_client = Command::new(PYTHON)
        .args(["-c", "import kubernetes.stream"])
        .output()
        .is_ok_and(|o| o.status.success());
    if flotilla_prereq::met(has_client, "python3-kubernetes (cargo xtask setup installs it)") {
        let script = r#"
import sys
from kubernetes import client, config
from kubernetes.stream import stream
config.load_kube_config()
api = client.CoreV1Api()
cmd = ["sh", "-c", "echo out-$POD_NAME; echo err >&2; read line; echo got-$line; exit 5"]
s = stream(api.connect_get_namespaced_pod_exec, "web", "default", command=cmd,
           stdin=True, stdout=True, stderr=True, tty=False, _preload_content=False)
s.write_stdin("typed\n")
out, err = "", ""
while s.is_open():
    s.update(timeout=5)
    out += s.read_stdout() if s.peek_stdout() else ""
    err += s.read_stderr() if s.peek_stderr() else ""
code = s.returncode
assert (out, err, code) == ("out-web\ngot-typed\n", "err\n", 5), (out, err, code)
print(stream(api.connect_get_namespaced_pod_exec, "web", "default",
             command=["cat", "/cfg/color"], stderr=True, stdin=False, stdout=True, tty=False))

# pods/portforward: the app's echo server on the pod's localhost, a megabyte through it and
# back, and a port nobody listens on, whose error arrives on its error channel.
import time
from kubernetes.stream import portforward
pf = portforward(api.connect_get_namespaced_pod_portforward, "web", "default", ports="8080,9")
s = pf.socket(8080)
s.settimeout(20)
def read_lines(n):
    got = b""
    while got.count(b"\n") < n:
        chunk = s.recv(1 << 16)
        assert chunk, ("closed early", got[-200:])
        got += chunk
    return got
assert read_lines(1) == b"web\n"
lines = [(b"%05d" % i) * 100 + b"\n" for i in range(2000)]
s.sendall(b"".join(lines))
echoed = read_lines(len(lines))
assert echoed == b"".join(lines), len(echoed)
s.close()
deadline = time.time() + 20
while pf.error(9) is None and time.time() < deadline:
    time.sleep(0.05)
err = pf.error(9) or ""
assert err.startswith("error forwarding port 9 to pod web, uid ") and "localhost:9" in err, err
pf.close()
"#;
        let o = Command::new(PYTHON)
            .args(["-c", script])
            .env("KUBECONFIG", node.member.kubeconfig())
            .env("HOME", node.dir.path())
            .output()
            .unwrap();
        let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "python exec: {out}\n{err}");
        assert_eq!(out, "blue\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_restart_per_policy_with_backoff() {
    let node = Node::start("restart", 22);
    let c = node.client().await;
    let img = node.image();
    let node_name = format!("node-{}", node.tag);
    let one = |name: &str, policy: &str, cmd: &str| {
        pod(
            name,
            &img,
            json!({"nodeName": node_name, "restartPolicy": policy,
            "containers": [{"name": "c", "command": ["sh", "-c", cmd]}]}),
        )
    };
    c.create("pods", "default", &one("crash", "Always", "echo run; exit 3")).await.unwrap();
    c.create("pods", "default", &one("done", "Never", "echo ok")).await.unwrap();
    c.create("pods", "default", &one("fail", "Never", "exit 7")).await.unwrap();
    c.create("pods", "default", &one("retry", "OnFailure", "exit 1")).await.unwrap();
    let mut oom = one("oom", "Never", "exec /bin/flotilla-probe hog 512");
    oom["spec"]["containers"][0]["resources"] = json!({"limits": {"memory": "64Mi"}});
    c.create("pods", "default", &oom).await.unwrap();
    let mut missing = one("missing", "Always", "true");
    missing["spec"]["containers"][0]["image"] = json!("localhost/nothing:here");
    missing["spec"]["containers"][0]["imagePullPolicy"] = json!("Never");
    c.create("pods", "default", &missing).await.unwrap();

    let done = pod_where(&c, "done", "Succeeded", 60, |p| phase(p) == "Succeeded").await;
    assert_eq!(cstatus(&done, "c")["state"]["terminated"]["exitCode"], 0);
    assert_eq!(cstatus(&done, "c")["state"]["terminated"]["reason"], "Completed");
    let failed = pod_where(&c, "fail", "Failed", 60, |p| phase(p) == "Failed").await;
    assert_eq!(cstatus(&failed, "c")["state"]["terminated"]["exitCode"], 7);
    assert_eq!(cstatus(&failed, "c")["state"]["terminated"]["reason"], "Error");
    assert_eq!(cstatus(&failed, "c")["restartCount"], 0);

    // Over its memory limit, the kernel kills it, and the status says so.
    let oom = pod_where(&c, "oom", "OOMKilled", 60, |p| phase(p) == "Failed").await;
    let t = &cstatus(&oom, "c")["state"]["terminated"];
    assert_eq!(t["reason"], "OOMKilled", "{t}");
    assert_eq!(t["exitCode"], 137);

    // Always: restarted, with the back-off showing as CrashLoopBackOff between runs.
    let looping = pod_where(&c, "crash", "CrashLoopBackOff after restarts", 60, |p| {
        let s = cstatus(p, "c");
        s["restartCount"].as_u64().unwrap_or(0) >= 2
            && s["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    })
    .await;
    let s = cstatus(&looping, "c");
    assert_eq!(s["lastState"]["terminated"]["exitCode"], 3);
    assert_eq!(s["lastState"]["terminated"]["reason"], "Error");
    assert_eq!(phase(&looping), "Running");
    assert_eq!(condition(&looping, "Ready"), "False");
    assert!(node.logs(&looping, "c", 1).contains("stdout F run"));
    let (ok, out, err) = node.cli(&["logs", "crash", "--previous"]);
    assert!(ok, "{err}");
    assert_eq!(out, "run\n");

    // -f streams until the container ends.
    c.create("pods", "default", &one("slow", "Never", "echo a; sleep 2; echo b")).await.unwrap();
    pod_where(&c, "slow", "Running", 30, |p| phase(p) == "Running").await;
    let t = std::time::Instant::now();
    let (ok, out, err) = node.cli(&["logs", "slow", "-f"]);
    assert!(ok, "{err}");
    assert_eq!(out, "a\nb\n");
    assert!(t.elapsed() >= Duration::from_millis(500), "it waited for the second line");

    // OnFailure: a failed run is restarted; the pod never reaches Succeeded.
    let retry = pod_where(&c, "retry", "a restart", 60, |p| {
        cstatus(p, "c")["restartCount"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    assert_ne!(phase(&retry), "Succeeded");

    let missing = pod_where(&c, "missing", "ErrImageNeverPull", 30, |p| {
        cstatus(p, "c")["state"]["waiting"]["reason"] == "ErrImageNeverPull"
    })
    .await;
    assert_eq!(phase(&missing), "Pending");
    assert!(cstatus(&missing, "c")["state"]["waiting"]["message"]
        .as_str()
        .unwrap()
        .contains("localhost/nothing:here"));

    // The terminal pods gave their addresses back.
    let ipam = node.dir.path().join("agent/net/ipam");
    let held = until("terminal pods' addresses released", 20, || async {
        let n = std::fs::read_dir(&ipam).map(|d| d.count()).unwrap_or(0);
        (n <= 3).then_some(json!(n))
    })
    .await;
    assert!(held.as_u64().unwrap() <= 3, "crash, retry and missing hold one each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_survive_agent_restart_and_stop_gracefully() {
    let mut node = Node::start("survive", 23);
    let hooks = node.dir.path().join("hooks");
    let c = node.client().await;
    let img = node.image();
    let node_name = format!("node-{}", node.tag);
    let p = pod(
        "calm",
        &img,
        json!({"nodeName": node_name, "terminationGracePeriodSeconds": 20,
        "volumes": [{"name": "hooks", "hostPath": {"path": hooks.to_str().unwrap(), "type": "DirectoryOrCreate"}}],
        "containers": [{"name": "c",
            "command": ["sh", "-c", "trap 'cat /hooks/prestop > /hooks/term; exit 0' TERM; echo up; while true; do sleep 0.2; done"],
            "volumeMounts": [{"name": "hooks", "mountPath": "/hooks"}],
            "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo stopping > /hooks/prestop"]}}}}]}),
    );
    c.create("pods", "default", &p).await.unwrap();
    let running = pod_where(&c, "calm", "Running", 60, |p| phase(p) == "Running").await;
    let started = cstatus(&running, "c")["state"]["running"]["startedAt"].clone();
    let id = cstatus(&running, "c")["containerID"]
        .as_str()
        .unwrap()
        .trim_start_matches("flotilla://")
        .to_string();
    let rt_root = node.dir.path().join("agent/runtime");
    let state_of = |id: &str| -> Value {
        let out = Command::new(flotillad())
            .args(["runtime", "--root", rt_root.to_str().unwrap(), "state", id])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let pid = state_of(&id)["pid"].clone();
    assert_eq!(state_of(&id)["status"], "running");

    // The agent dies; the pod keeps running; a new agent adopts it without a restart.
    node.kill_agent();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(state_of(&id)["status"], "running");
    node.start_agent();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = c.get("pods", "default", "calm").await.unwrap();
    assert_eq!(cstatus(&after, "c")["restartCount"], 0);
    assert_eq!(cstatus(&after, "c")["state"]["running"]["startedAt"], started);
    assert_eq!(state_of(&id)["pid"], pid);
    assert!(node.agent_log().contains("pods adopted"));

    // A pod created while the agent is down starts when it is back.
    node.kill_agent();
    let q = pod(
        "late",
        &img,
        json!({"nodeName": node_name, "containers": [{"name": "c", "command": ["sleep", "3600"]}]}),
    );
    c.create("pods", "default", &q).await.unwrap();
    node.start_agent();
    pod_where(&c, "late", "Running", 60, |p| phase(p) == "Running").await;

    // Graceful delete: SIGTERM reaches the process, which exits on its own.
    let t = std::time::Instant::now();
    c.delete("pods", "default", "calm", &DeleteParams::default()).await.unwrap();
    until("calm gone", 30, || async {
        c.get("pods", "default", "calm").await.is_err().then_some(json!(null))
    })
    .await;
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "the trap ended it before the grace period: {:?}",
        t.elapsed()
    );
    // The preStop hook ran, and before the TERM: the trap found its file.
    assert_eq!(std::fs::read_to_string(hooks.join("term")).unwrap(), "stopping\n");
    // `sleep` as its namespace's PID 1 has no handler, so TERM does nothing: after the
    // grace period (shortened to 1 s by this delete) the agent kills it.
    let t = std::time::Instant::now();
    let quick = DeleteParams { grace_period_seconds: Some(1), ..Default::default() };
    c.delete("pods", "default", "late", &quick).await.unwrap();
    until("late gone", 30, || async {
        c.get("pods", "default", "late").await.is_err().then_some(json!(null))
    })
    .await;
    assert!(t.elapsed() >= Duration::from_secs(1), "killed before its grace period ended");
    let listed = Command::new(flotillad())
        .args([
            "runtime",
            "--root",
            node.dir.path().join("agent/runtime").to_str().unwrap(),
            "list",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout).lines().count(),
        1,
        "only the header is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_drive_readiness_and_restarts() {
    let node = Node::start("probe", 24);
    let c = node.client().await;
    let img = node.image();
    let node_name = format!("node-{}", node.tag);
    let p = pod(
        "probed",
        &img,
        json!({"nodeName": node_name, "terminationGracePeriodSeconds": 2, "containers": [{"name": "c",
        "command": ["sh", "-c", "echo > /tmp/healthy; exec /bin/flotilla-probe http 8080"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "startupProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1, "failureThreshold": 30},
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1},
        "livenessProbe": {"exec": {"command": ["cat", "/tmp/healthy"]}, "periodSeconds": 1, "failureThreshold": 3}}]}),
    );
    c.create("pods", "default", &p).await.unwrap();
    let never = pod(
        "never-ready",
        &img,
        json!({"nodeName": node_name, "containers": [{"name": "c", "command": ["sleep", "3600"],
        "readinessProbe": {"tcpSocket": {"port": 9999}, "periodSeconds": 1}}]}),
    );
    c.create("pods", "default", &never).await.unwrap();

    let ready = pod_where(&c, "probed", "Ready", 60, |p| condition(p, "Ready") == "True").await;
    let id = cstatus(&ready, "c")["containerID"]
        .as_str()
        .unwrap()
        .trim_start_matches("flotilla://")
        .to_string();
    assert_eq!(cstatus(&ready, "c")["started"], true);

    // Unhealthy: readiness fails first (Ready False), then liveness restarts the container.
    let rm = Command::new(flotillad())
        .args(["runtime", "--root", node.dir.path().join("agent/runtime").to_str().unwrap()])
        .args(["exec", &id, "--", "busybox", "rm", "/tmp/healthy"])
        .output()
        .unwrap();
    assert!(rm.status.success(), "{}", String::from_utf8_lossy(&rm.stderr));
    let unready =
        pod_where(&c, "probed", "not Ready", 20, |p| condition(p, "Ready") == "False").await;
    assert_eq!(cstatus(&unready, "c")["ready"], false);
    let restarted = pod_where(&c, "probed", "restarted and Ready again", 60, |p| {
        cstatus(p, "c")["restartCount"] == 1 && condition(p, "Ready") == "True"
    })
    .await;
    let last = &cstatus(&restarted, "c")["lastState"]["terminated"];
    assert!(last["exitCode"].as_i64().unwrap() >= 128, "killed by a signal: {last}");
    assert!(node.agent_log().contains("failed liveness probe"));

    let never = pod_where(&c, "never-ready", "Running", 60, |p| phase(p) == "Running").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let never = c.get("pods", "default", "never-ready").await.unwrap_or(never);
    assert_eq!(condition(&never, "Ready"), "False");
    assert_eq!(cstatus(&never, "c")["ready"], false);
    assert_eq!(cstatus(&never, "c")["started"], true);

    // gRPC probes against a real health service (tonic-health) in the pod's network
    // namespace, whose statuses the test sets as an app would.
    use tonic_health::ServingStatus::{NotServing, Serving};
    let g = pod(
        "grpc",
        &img,
        json!({"nodeName": node_name, "terminationGracePeriodSeconds": 1, "containers": [{"name": "c",
        "command": ["sleep", "3600"],
        "startupProbe": {"grpc": {"port": 9090}, "periodSeconds": 1, "failureThreshold": 120},
        "readinessProbe": {"grpc": {"port": 9090, "service": "app"}, "periodSeconds": 1, "failureThreshold": 1},
        "livenessProbe": {"grpc": {"port": 9090}, "periodSeconds": 1, "failureThreshold": 2}}]}),
    );
    c.create("pods", "default", &g).await.unwrap();
    let g = pod_where(&c, "grpc", "a pod IP", 60, |p| p["status"]["podIP"].is_string()).await;
    let netns =
        node.dir.path().join("agent/net/netns").join(g["status"]["podIP"].as_str().unwrap());
    let (health, service) = tonic_health::server::health_reporter();
    health.set_service_status("app", NotServing).await;
    let listener = flotilla_dataplane::NetNs::open(&netns)
        .unwrap()
        .run(|| std::net::TcpListener::bind("0.0.0.0:9090"))
        .unwrap()
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let started =
        pod_where(&c, "grpc", "started", 60, |p| cstatus(p, "c")["started"] == true).await;
    assert_eq!(cstatus(&started, "c")["ready"], false, "service app is NOT_SERVING");
    health.set_service_status("app", Serving).await;
    pod_where(&c, "grpc", "Ready", 30, |p| condition(p, "Ready") == "True").await;
    health.set_service_status("app", NotServing).await;
    pod_where(&c, "grpc", "not Ready", 30, |p| condition(p, "Ready") == "False").await;
    health.set_service_status("app", Serving).await;
    // The server's overall health ("") failing: liveness restarts the container.
    health.set_service_status("", NotServing).await;
    pod_where(&c, "grpc", "restarted", 60, |p| cstatus(p, "c")["restartCount"] == 1).await;
    health.set_service_status("", Serving).await;
    pod_where(&c, "grpc", "Ready after the restart", 60, |p| {
        cstatus(p, "c")["restartCount"] == 1 && condition(p, "Ready") == "True"
    })
    .await;
    let log = node.agent_log();
    assert!(
        log.contains(
            "Container c failed liveness probe, will be restarted: service unhealthy (responded with \"NOT_SERVING\")"
        ),
        "{log}"
    );
    server.abort();
}

/// Proves the whole loop on a real node: a Deployment's pods are created by the controllers,
/// bound by the scheduler and run by the agent; readiness probes fill the Service's Endpoints;
/// a template change rolls out with zero unavailable replicas; deleting the Deployment stops
/// and removes its pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_is_scheduled_run_rolled_and_removed_on_a_real_node() {
    let node = Node::start("deploy", 25);
    let c = node.client().await;
    let img = node.image();
    let deploy = |version: &str| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
            // minReadySeconds gives the Endpoints controller time to add a new pod before an
            // old one goes: readiness and Endpoints are separate writes, in Kubernetes too.
            "spec": {"replicas": 2, "minReadySeconds": 2, "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"terminationGracePeriodSeconds": 2, "containers": [{"name": "c", "image": img,
                        "command": ["sh", "-c", "echo > /tmp/healthy; exec /bin/flotilla-probe http 8080"],
                        "env": [{"name": "VERSION", "value": version}],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1}}]}}}})
    };
    c.create("deployments", "default", &deploy("1")).await.unwrap();
    c.create(
        "services",
        "default",
        &json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}}),
    )
    .await
    .unwrap();
    let (ok, out, err) = node.cli(&["rollout", "status", "deployment/web", "--timeout", "90"]);
    assert!(ok, "{out}{err}\n{}", node.agent_log());
    let endpoints = |n: usize| {
        let c = c.clone();
        async move {
            until(&format!("{n} ready endpoints"), 30, || {
                let c = c.clone();
                async move {
                    let ep = c.get("endpoints", "default", "web").await.ok()?;
                    let ips: Vec<String> = ep["subsets"][0]["addresses"]
                        .as_array()?
                        .iter()
                        .filter_map(|a| a["ip"].as_str().map(str::to_string))
                        .collect();
                    (ips.len() == n && ep["subsets"][0].get("notReadyAddresses").is_none())
                        .then_some(json!(ips))
                }
            })
            .await
        }
    };
    let first = endpoints(2).await;
    assert!(
        first.as_array().unwrap().iter().all(|ip| ip.as_str().unwrap().starts_with("10.244.25.")),
        "{first}"
    );
    let pods = c.list("pods", "default", &Default::default()).await.unwrap().items;
    assert!(pods.iter().all(|p| p["spec"]["nodeName"] == "node-deploy"), "bound by the scheduler");

    // Roll: ready pods, and the Endpoints' ready addresses, never fall below 2 while the pods
    // are replaced.
    let sampling = Arc::new(AtomicBool::new(true));
    let min_ready = Arc::new(AtomicUsize::new(usize::MAX));
    let min_endpoints = Arc::new(AtomicUsize::new(usize::MAX));
    let sampler = {
        let (c, sampling) = (c.clone(), sampling.clone());
        let (min_ready, min_endpoints) = (min_ready.clone(), min_endpoints.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                if let Ok(l) = c.list("pods", "default", &Default::default()).await {
                    let n = l
                        .items
                        .iter()
                        .filter(|p| {
                            !p["metadata"]["deletionTimestamp"].is_string()
                                && condition(p, "Ready") == "True"
                        })
                        .count();
                    min_ready.fetch_min(n, Ordering::Relaxed);
                }
                if let Ok(ep) = c.get("endpoints", "default", "web").await {
                    let n = ep["subsets"][0]["addresses"].as_array().map_or(0, Vec::len);
                    min_endpoints.fetch_min(n, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut d = c.get("deployments", "default", "web").await.unwrap();
    d["spec"] = deploy("2")["spec"].clone();
    c.update("deployments", "default", &d).await.unwrap();
    let (ok, out, err) = node.cli(&["rollout", "status", "deployment/web", "--timeout", "120"]);
    assert!(ok, "{out}{err}");
    let second = until("the old pods gone", 60, || {
        let c = c.clone();
        async move {
            let pods = c.list("pods", "default", &Default::default()).await.ok()?.items;
            (pods.len() == 2
                && pods.iter().all(|p| p["spec"]["containers"][0]["env"][0]["value"] == "2"))
            .then(|| json!(pods))
        }
    })
    .await;
    sampling.store(false, Ordering::Relaxed);
    sampler.await.unwrap();
    let (pods_ready, endpoints_ready) =
        (min_ready.load(Ordering::Relaxed), min_endpoints.load(Ordering::Relaxed));
    assert!(pods_ready >= 2, "ready pods fell to {pods_ready}");
    assert!(endpoints_ready >= 2, "ready endpoint addresses fell to {endpoints_ready}");
    let new_ips = endpoints(2).await;
    assert_ne!(new_ips, first, "the Endpoints follow the new pods");
    assert_eq!(second.as_array().unwrap().len(), 2);

    let (ok, out, err) = node.cli(&["delete", "deployment", "web"]);
    assert!(ok, "{out}{err}");
    until("the pods stopped and removed", 60, || {
        let c = c.clone();
        async move {
            c.list("pods", "default", &Default::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(json!(null))
        }
    })
    .await;
}

/// Proves Services work from inside pods on a real node: the agent programs the Service's
/// ClusterIP (from the Endpoints the controller fills) into the eBPF load balancer, a client
/// pod reaches both backends through the VIP and sees the VIP as its peer, and a Service
/// without ready endpoints refuses at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_a_service_through_its_cluster_ip() {
    let mut node = Node::start("svc", 26);
    let c = node.client().await;
    let img = node.image();
    let echo = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "echo", "namespace": "default"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "echo"}},
            "template": {"metadata": {"labels": {"app": "echo"}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": img,
                    "command": ["/bin/flotilla-probe", "echo", "8080"],
                    "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "ports": [{"name": "echo", "containerPort": 8080}],
                    "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}}});
    c.create("deployments", "default", &echo).await.unwrap();
    let svc = |name: &str, app: &str| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"app": app}, "ports": [{"name": "web", "port": 80, "targetPort": "echo"}]}})
    };
    let (s, _) = c.create("services", "default", &svc("echo", "echo")).await.unwrap();
    let vip = s["spec"]["clusterIP"].as_str().unwrap().to_string();
    let (none, _) = c.create("services", "default", &svc("nobody", "nobody")).await.unwrap();
    let none_vip = none["spec"]["clusterIP"].as_str().unwrap().to_string();
    until("2 ready endpoints", 60, || {
        let c = c.clone();
        async move {
            let ep = c.get("endpoints", "default", "echo").await.ok()?;
            (ep["subsets"][0]["addresses"].as_array()?.len() == 2).then_some(ep)
        }
    })
    .await;

    let client = |name: &str, target: &str| {
        pod(
            name,
            &img,
            json!({"restartPolicy": "Never", "containers": [{"name": "c",
            "command": ["/bin/flotilla-probe", "connect", target, "20"]}]}),
        )
    };
    c.create("pods", "default", &client("client", &format!("{vip}:80"))).await.unwrap();
    // Names: the pod's resolv.conf points at the kube-dns ClusterIP, which this node's agent
    // answers; busybox's nslookup applies the search path like libc does.
    let lookups = format!("nslookup echo; nslookup -type=srv _web._tcp.echo.default.svc.cluster.local; \
        nslookup nosuch.default.svc.cluster.local; nslookup kube-dns.kube-system.svc.cluster.local; \
        nslookup {vip}; cat /etc/resolv.conf");
    c.create(
        "pods",
        "default",
        &pod(
            "dns",
            &img,
            json!({"restartPolicy": "Never",
            "containers": [{"name": "c", "command": ["sh", "-c", lookups]}]}),
        ),
    )
    .await
    .unwrap();
    c.create("pods", "default", &client("refused", &format!("{none_vip}:80"))).await.unwrap();
    let done =
        pod_where(&c, "dns", "Succeeded", 60, |p| matches!(phase(p), "Succeeded" | "Failed")).await;
    let out = node.logs(&done, "c", 0);
    let dns = c.get("services", "kube-system", "kube-dns").await.unwrap();
    let dns_ip = dns["spec"]["clusterIP"].as_str().unwrap();
    assert!(out.contains(&format!("nameserver {dns_ip}")), "{out}");
    assert!(
        out.contains(&format!("Server:\t\t{dns_ip}")),
        "answered from the kube-dns VIP:\n{out}"
    );
    assert!(
        out.contains("Name:\techo.default.svc.cluster.local")
            && out.contains(&format!("Address: {vip}")),
        "the service name resolves to its ClusterIP:\n{out}"
    );
    assert!(
        out.contains("_web._tcp.echo.default.svc.cluster.local\tservice = 0 100 80 echo.default.svc.cluster.local"),
        "named ports have SRV records:\n{out}"
    );
    assert!(out.contains("can't find nosuch.default.svc.cluster.local: NXDOMAIN"), "{out}");
    assert!(out.contains(&format!("Address: {dns_ip}")), "{out}");
    let rev: Vec<&str> = vip.split('.').rev().collect();
    assert!(
        out.contains(&format!(
            "{}.in-addr.arpa\tname = echo.default.svc.cluster.local",
            rev.join(".")
        )),
        "the ClusterIP resolves back to the service's name:\n{out}"
    );
    for name in ["client", "refused"] {
        let done = pod_where(&c, name, "Succeeded", 60, |p| phase(p) == "Succeeded").await;
        let out = node.logs(&done, "c", 0);
        if name == "client" {
            let replies: std::collections::BTreeSet<&str> = out
                .lines()
                .filter_map(|l| l.split("reply=").nth(1))
                .map(|r| r.split_whitespace().next().unwrap_or(""))
                .collect();
            assert_eq!(replies.len(), 2, "both backends answer through the VIP:\n{out}");
            assert!(replies.iter().all(|r| r.starts_with("echo-")), "{out}");
            assert!(
                out.contains(&format!("peer={vip}:80")),
                "the client sees the VIP as its peer:\n{out}"
            );
        } else {
            assert!(out.contains("error=refused ms=0"), "no endpoints: refused at once:\n{out}");
        }
    }

    // NodePorts from outside the node: a client namespace wired to the node's `ext0`, and
    // the agent restarted with the tc side on it (pods keep running across the restart).
    struct Gone(std::path::PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = flotilla_dataplane::NetNs::remove(&self.0);
        }
    }
    let outside = Gone(std::path::PathBuf::from("/run/netns/flp-svc-outside"));
    let _ = flotilla_dataplane::NetNs::remove(&outside.0);
    let client_ns = flotilla_dataplane::NetNs::create(&outside.0).unwrap();
    let node_ns = flotilla_dataplane::NetNs::open(&node.netns).unwrap();
    let addr = |a: &str| Some(a.parse().unwrap());
    flotilla_dataplane::net::wire(
        &node_ns,
        "ext0",
        addr("198.18.26.1/24"),
        &client_ns,
        "eth0",
        addr("198.18.26.100/24"),
    )
    .await
    .unwrap();
    node.restart_agent_with(&["--external-interface", "ext0", "--external-address", "198.18.26.1"]);
    let mut np = svc("echo-np", "echo");
    np["spec"]["type"] = json!("NodePort");
    let (np, _) = c.create("services", "default", &np).await.unwrap();
    let port = np["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    let out = until("answers on the NodePort", 30, || async {
        let o = Command::new("nsenter")
            .arg(format!("--net={}", outside.0.display()))
            .arg(probe())
            .args(["connect", &format!("198.18.26.1:{port}"), "20"])
            .output()
            .ok()?;
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        // Readiness restarts with the agent, as the kubelet's does: wait for both backends.
        let backends: std::collections::BTreeSet<&str> = out
            .lines()
            .filter_map(|l| l.split("reply=").nth(1)?.split_whitespace().next())
            .collect();
        (out.matches("reply=echo-").count() == 20 && backends.len() == 2).then(|| json!(out))
    })
    .await;
    let out = out.as_str().unwrap();
    assert!(out.contains(&format!("peer=198.18.26.1:{port}")), "{out}");
    let restarts = c.list("pods", "default", &Default::default()).await.unwrap().items;
    for p in
        restarts.iter().filter(|p| p["metadata"]["name"].as_str().unwrap().starts_with("echo-"))
    {
        assert_eq!(cstatus(p, "c")["restartCount"], 0, "the agent restart left the pods alone");
    }
}

/// Images from a registry that demands credentials: refused without them (ErrImagePull, then
/// ImagePullBackOff), pulled with the pod's imagePullSecrets (a dockerconfigjson Secret).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_pull_private_images_with_pull_secrets() {
    let dir = tempfile::Builder::new().prefix("pull-test").tempdir_in("/var/tmp").unwrap();
    let layout = dir.path().join("layout");
    flotilla_tests::oci::write_probe_layout(&layout, &probe(), "latest", "amd64", true).unwrap();
    let reg =
        flotilla_tests::Registry::start_with_auth(dir.path(), Some(("puller", "s3cret"))).unwrap();
    let image = format!("{}/private/probe:1", reg.addr);
    let out = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false", "--dest-creds", "puller:s3cret"])
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://{image}"))
        .output()
        .expect("skopeo");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let node = Node::start_with("pull", 27, &["--insecure-registry", &reg.addr]);
    let c = node.client().await;
    let node_name = format!("node-{}", node.tag);
    let mk = |name: &str, image: &str, secret: Option<&str>| {
        let mut spec = json!({"nodeName": node_name, "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": image, "command": ["/bin/flotilla-probe", "echo", "8080"]}]});
        if let Some(s) = secret {
            spec["imagePullSecrets"] = json!([{"name": s}]);
        }
        pod(name, image, spec)
    };
    let waiting = |p: &Value| cstatus(p, "c")["state"]["waiting"].clone();

    c.create("pods", "default", &mk("nocreds", &image, None)).await.unwrap();
    let p = pod_where(&c, "nocreds", "ErrImagePull", 60, |p| {
        matches!(waiting(p)["reason"].as_str(), Some("ErrImagePull" | "ImagePullBackOff"))
    })
    .await;
    let msg = waiting(&p)["message"].as_str().unwrap_or_default().to_lowercase();
    assert!(msg.contains("not authorized"), "{msg}");
    pod_where(&c, "nocreds", "ImagePullBackOff", 60, |p| {
        waiting(p)["reason"] == "ImagePullBackOff"
    })
    .await;

    let auths = json!({"auths": {reg.addr.clone(): {"username": "puller", "password": "s3cret"}}});
    c.create(
        "secrets",
        "default",
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred"},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": auths.to_string()}}),
    )
    .await
    .unwrap();
    c.create("pods", "default", &mk("withcreds", &image, Some("regcred"))).await.unwrap();
    let missing = format!("{}/private/nope:1", reg.addr);
    c.create("pods", "default", &mk("missing", &missing, Some("regcred"))).await.unwrap();
    let p = pod_where(&c, "withcreds", "Running", 60, |p| phase(p) == "Running").await;
    assert!(cstatus(&p, "c")["imageID"].as_str().unwrap().starts_with("sha256:"));
    let p = pod_where(&c, "missing", "ErrImagePull", 60, |p| {
        matches!(waiting(p)["reason"].as_str(), Some("ErrImagePull" | "ImagePullBackOff"))
    })
    .await;
    let msg = waiting(&p)["message"].as_str().unwrap_or_default().to_lowercase();
    assert!(msg.contains("nope"), "the message names the image: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_are_mounted_bound_and_revoked() {
    let node = Node::start("token", 28);
    let c = node.client().await;
    let node_name = format!("node-{}", node.tag);
    let sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
        "data": {"color": "blue"}});
    c.create("configmaps", "default", &cm).await.unwrap();
    let mut tok = pod(
        "tok",
        &node.image(),
        json!({"nodeName": node_name, "serviceAccountName": "robot", "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "app", "command": ["sleep", "3600"],
                "volumeMounts": [{"name": "proj", "mountPath": "/proj"}]}],
            "volumes": [{"name": "proj", "projected": {"sources": [
                {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 600, "path": "vault/token"}},
                {"configMap": {"name": "settings", "items": [{"key": "color", "path": "cfg/color"}]}},
                {"downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}}]}}]}),
    );
    tok["metadata"]["labels"] = json!({"app": "tok"});
    // Admission gives it the token volume; its service account does not exist yet, so it
    // waits with a reason that names it.
    let (created, _) = c.create("pods", "default", &tok).await.unwrap();
    let spec = &created["spec"];
    assert_eq!(spec["serviceAccountName"], "robot");
    let mount = spec["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == sa_dir)
        .cloned()
        .expect("the token volume is mounted");
    assert_eq!(mount["readOnly"], true);
    let vol = mount["name"].as_str().unwrap();
    assert!(vol.starts_with("kube-api-access-"), "{vol}");
    let waiting = pod_where(&c, "tok", "CreateContainerConfigError", 60, |p| {
        cstatus(p, "app")["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    })
    .await;
    let msg = cstatus(&waiting, "app")["state"]["waiting"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("serviceaccounts \"robot\" not found"), "{msg}");
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot"}});
    c.create("serviceaccounts", "default", &sa).await.unwrap();
    let running = pod_where(&c, "tok", "Running", 60, |p| phase(p) == "Running").await;
    let uid = running["metadata"]["uid"].as_str().unwrap().to_string();

    // A merge patch that sends the containers as the user wrote them keeps the token mount
    // (as a strategic merge patch would), instead of failing pod validation.
    let patch = json!({"spec": {"containers": tok["spec"]["containers"]}});
    let (patched, _) = c.patch("pods", "default", "tok", &patch, false, false).await.unwrap();
    assert!(
        patched["spec"]["containers"][0]["volumeMounts"].to_string().contains(sa_dir),
        "{}",
        patched["spec"]
    );

    // A pod that opts out gets no token.
    let quiet = pod(
        "quiet",
        &node.image(),
        json!({"nodeName": node_name, "automountServiceAccountToken": false,
            "containers": [{"name": "app", "command": ["sleep", "3600"]}]}),
    );
    let (created, _) = c.create("pods", "default", &quiet).await.unwrap();
    assert_eq!(created["spec"]["serviceAccountName"], "default");
    assert!(created["spec"]["volumes"].is_null(), "{}", created["spec"]);

    let exec = |cmd: &str| {
        let (ok, out, err) = node.cli(&["exec", "tok", "--", "sh", "-c", cmd]);
        assert!(ok, "{cmd}: {err}");
        out
    };
    let token = exec(&format!("cat {sa_dir}/token"));
    assert_eq!(exec(&format!("cat {sa_dir}/namespace")), "default");
    assert_eq!(
        exec("cat /proj/cfg/color; echo; cat /proj/name; echo; cat /proj/labels"),
        "blue\ntok\napp=\"tok\""
    );
    // On tmpfs, read-only in the container.
    assert!(exec(&format!("grep ' {sa_dir} ' /proc/mounts")).contains("tmpfs"));
    let (ok, _, _) =
        node.cli(&["exec", "tok", "--", "sh", "-c", &format!("echo x > {sa_dir}/token")]);
    assert!(!ok, "the token volume is read-only");

    // The token names the service account and the pod it is bound to.
    let whoami = |t: &str| node.cli(&["--token", t, "auth", "whoami", "-o", "json"]);
    let (ok, out, err) = whoami(&token);
    assert!(ok, "{err}");
    let me: Value = serde_json::from_str(&out).unwrap();
    let user = &me["status"]["userInfo"];
    assert_eq!(user["username"], "system:serviceaccount:default:robot");
    assert_eq!(user["extra"]["authentication.kubernetes.io/pod-name"], json!(["tok"]));
    assert_eq!(user["extra"]["authentication.kubernetes.io/pod-uid"], json!([uid]));
    assert_eq!(user["extra"]["authentication.kubernetes.io/node-name"], json!([node_name]));
    assert!(user["groups"].as_array().unwrap().contains(&json!("system:serviceaccounts:default")));
    let (ok, out, _) = node.cli(&["auth", "whoami"]);
    assert!(ok && out.contains("flotilla-admin"), "the kubeconfig's user again: {out}");

    // The projected token is for its audience only.
    let vault = exec("cat /proj/vault/token");
    let (ok, _, err) = whoami(&vault);
    assert!(!ok && err.contains("Unauthorized") && err.contains("audiences"), "{err}");
    let review = |t: &str, aud: Value| {
        let c = c.clone();
        let r = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": t, "audiences": aud}});
        async move { c.review_token(&r).await.unwrap()["status"].clone() }
    };
    let st = review(&vault, json!(["vault"])).await;
    assert_eq!(st["authenticated"], true, "{st}");
    assert_eq!(st["audiences"], json!(["vault"]));

    // `create token`: lifetimes are checked; a token bound to a Secret dies with it.
    let (ok, _, err) = node.cli(&["create", "token", "robot", "--duration", "5m"]);
    assert!(!ok && err.contains("less than 10 minutes"), "{err}");
    let (ok, _, err) = node.cli(&["create", "token", "nobody"]);
    assert!(!ok && err.contains("serviceaccounts \"nobody\" not found"), "{err}");
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bound"}});
    c.create("secrets", "default", &secret).await.unwrap();
    let (ok, bound, err) = node.cli(&[
        "create",
        "token",
        "robot",
        "--duration",
        "10m",
        "--bound-object-kind",
        "Secret",
        "--bound-object-name",
        "bound",
    ]);
    assert!(ok, "{err}");
    let bound = bound.trim().to_string();
    assert!(whoami(&bound).0);
    c.delete("secrets", "default", "bound", &DeleteParams::default()).await.unwrap();
    until("the secret-bound token refused", 10, || async {
        let (ok, _, err) = whoami(&bound);
        (!ok && err.contains("secret default/bound has been deleted")).then_some(json!(null))
    })
    .await;
    let (ok, _, err) = whoami("not-a-token");
    assert!(!ok && err.contains("invalid bearer token"), "{err}");

    // Deleting the pod revokes its tokens.
    c.delete("pods", "default", "tok", &DeleteParams::default()).await.unwrap();
    until("the pod gone", 30, || async {
        c.get("pods", "default", "tok").await.is_err().then_some(json!(null))
    })
    .await;
    let (ok, _, err) = whoami(&token);
    assert!(!ok && err.contains("pod default/tok has been deleted"), "{err}");
    let st = review(&token, json!([])).await;
    assert_eq!(st["authenticated"], false);
    c.delete("pods", "default", "quiet", &DeleteParams::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_pods_are_evicted_and_replaced_on_a_live_node() {
    // Node lifecycle sped up: 4 s without a Lease renewal makes a node unreachable; pods
    // tolerate that for 2 s.
    let node = Node::start_full(
        "evict-a",
        29,
        &[],
        &["--node-monitor-grace-period", "4", "--default-unreachable-toleration-seconds", "2"],
    );
    let mut peer = node.peer("evict-b", 30);
    let c = node.client().await;
    let (a, b) = ("node-evict-a".to_string(), "node-evict-b".to_string());
    let ready = |n: &Value| {
        n["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
    };
    for name in [&a, &b] {
        until("both nodes Ready", 60, || async {
            c.get("nodes", "", name).await.ok().filter(ready)
        })
        .await;
    }
    // Each node routes the other's pod CIDR to it (host-gw).
    let route = |netns: &Path| {
        let out = Command::new("ip")
            .args(["-n", netns.file_name().unwrap().to_str().unwrap(), "route"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    until("routes to the other node's pods", 20, || async {
        let (ra, rb) = (route(&node.netns), route(&peer.netns));
        (ra.contains(&format!("10.244.30.0/24 via {}", peer.ip))
            && rb.contains("10.244.29.0/24 via 127.0.0.1"))
        .then_some(json!(null))
    })
    .await;

    // Two replicas that prefer different nodes, and a bare pod on the node that will die.
    let template = json!({"metadata": {"labels": {"app": "web"}},
        "spec": {"terminationGracePeriodSeconds": 0,
            "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": {"app": "web"}}}}]}},
            "containers": [{"name": "c", "image": node.image(), "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "3600"]}]}});
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": template}});
    c.create("deployments", "default", &deploy).await.unwrap();
    let bare = pod(
        "bare",
        &node.image(),
        json!({"nodeName": b, "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "command": ["sleep", "3600"]}]}),
    );
    c.create("pods", "default", &bare).await.unwrap();
    let running_on = |c: Client| async move {
        let l = c.list("pods", "default", &Default::default()).await.ok()?;
        let mut on: Vec<(String, String)> = l
            .items
            .iter()
            .filter(|p| p["metadata"]["labels"]["app"] == "web" && phase(p) == "Running")
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| {
                let n = p["spec"]["nodeName"].as_str().unwrap_or_default().to_string();
                (n, p["metadata"]["name"].as_str().unwrap_or_default().to_string())
            })
            .collect();
        on.sort();
        Some(on)
    };
    let before = until("a web pod Running on each node", 60, || async {
        let on = running_on(c.clone()).await?;
        let nodes: std::collections::BTreeSet<&str> = on.iter().map(|(n, _)| n.as_str()).collect();
        (on.len() == 2 && nodes.len() == 2).then(|| json!(on))
    })
    .await;
    let on_b = before
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x[0] == b.as_str())
        .map(|x| x[1].as_str().unwrap().to_string())
        .unwrap();
    let bare_uid = pod_where(&c, "bare", "bare Running", 60, |p| phase(p) == "Running").await
        ["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();

    // The node dies (its containers keep running, as on a partitioned machine).
    peer.kill_agent();
    let n = until("node B unreachable", 30, || async {
        let n = c.get("nodes", "", &b).await.ok()?;
        let taints = n["spec"]["taints"].as_array()?.clone();
        let unreachable = taints.iter().filter(|t| t["key"] == "node.kubernetes.io/unreachable");
        (unreachable.count() == 2).then_some(n)
    })
    .await;
    let cond = n["status"]["conditions"].as_array().unwrap();
    assert!(cond.iter().any(|c| c["type"] == "Ready" && c["status"] == "Unknown"), "{cond:?}");
    // Its pods are evicted; the Deployment's comes back on the live node, the bare one does not.
    let after = until("both web pods Running on node A", 60, || async {
        let on = running_on(c.clone()).await?;
        (on.len() == 2 && on.iter().all(|(n, _)| *n == a)).then(|| json!(on))
    })
    .await;
    assert!(!after.to_string().contains(&on_b), "the evicted pod is gone: {after}");
    until("the bare pod evicted", 30, || async {
        c.get("pods", "default", "bare").await.is_err().then_some(json!(null))
    })
    .await;
    until("the eviction recorded as an event", 20, || async {
        let events = c.list("events", "default", &Default::default()).await.ok()?;
        events
            .items
            .iter()
            .any(|e| e["involvedObject"]["name"] == "bare" && e["reason"] == "TaintManagerEviction")
            .then_some(json!(null))
    })
    .await;
    // The node comes back: ready and untainted, it stops what was evicted meanwhile.
    peer.start_agent();
    until("node B Ready without taints", 60, || async {
        let n = c.get("nodes", "", &b).await.ok()?;
        let tainted = n["spec"]["taints"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["key"] == "node.kubernetes.io/unreachable"));
        (ready(&n) && !tainted).then_some(n)
    })
    .await;
    until("the evicted pod's sandbox removed from node B", 60, || async {
        (!peer.dir.join("agent/pods").join(&bare_uid).exists()).then_some(json!(null))
    })
    .await;
    c.delete("deployments", "default", "web", &DeleteParams::default()).await.unwrap();
}

/// The QoS class is computed once, by the API server, and the node follows it: requests
/// `cpu: 1000m` with limits `cpu: 1` are Guaranteed (they once ran as Burstable with score
/// 999), and each container's process gets the kubelet's OOM score for its class, read from
/// inside as `/proc/1/oom_score_adj`. Where the host withholds CAP_SYS_RESOURCE (so no
/// process may lower a score) the agent raises scores to its own, as containerd's
/// `restrict_oom_score_adj` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_get_the_oom_score_of_their_pods_qos_class() {
    let node = Node::start("qos", 29);
    let c = node.client().await;
    let img = node.image();
    let node_name = format!("node-{}", node.tag);
    let can_lower = flotilla_tests::can_lower_oom_scores();
    // The agent is this test's child: it starts with this process's score.
    let own: i64 =
        std::fs::read_to_string("/proc/self/oom_score_adj").unwrap().trim().parse().unwrap();
    let floor = if can_lower { -1000 } else { own };
    let cases = [
        (
            "guaranteed",
            json!({"requests": {"cpu": "1", "memory": "32Mi"},
                              "limits": {"cpu": "1", "memory": "32Mi"}}),
            "Guaranteed",
        ),
        (
            "guaranteed-milli",
            json!({"requests": {"cpu": "1000m", "memory": "33554432"},
                                    "limits": {"cpu": "1", "memory": "32Mi"}}),
            "Guaranteed",
        ),
        (
            "burstable",
            json!({"requests": {"cpu": "100m", "memory": "16Mi"},
                             "limits": {"memory": "32Mi"}}),
            "Burstable",
        ),
        ("besteffort", json!({}), "BestEffort"),
    ];
    for (name, resources, _) in &cases {
        let p = pod(
            name,
            &img,
            json!({"nodeName": node_name, "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "app", "resources": resources,
                "command": ["sh", "-c", "echo score=$(cat /proc/1/oom_score_adj); exec sleep 3600"]}]}),
        );
        c.create("pods", "default", &p).await.unwrap();
    }
    for (name, _, class) in &cases {
        let running = pod_where(&c, name, "Running", 60, |p| phase(p) == "Running").await;
        assert_eq!(running["status"]["qosClass"], *class, "{name}");
        let logs = until("the score in the log", 20, || async {
            let l = node.logs(&running, "app", 0);
            l.contains("score=").then(|| json!(l))
        })
        .await;
        let line = logs.as_str().unwrap();
        let score: i64 = line[line.find("score=").unwrap() + 6..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        match *class {
            "Guaranteed" => assert_eq!(score, (-997).max(floor), "{name}: {line}"),
            "BestEffort" => assert_eq!(score, 1000, "{name}: {line}"),
            _ => assert!((2.max(floor)..=999).contains(&score), "{name}: {line}"),
        }
    }
}
