"""Kubernetes' Python client (PyPI/Debian `kubernetes`) against Flotilla's HTTP API: typed
create, get, list with limit/continue and selectors, watch from a resourceVersion with
bookmarks, strategic and JSON patches, errors as ApiException with Kubernetes' codes, reasons
and causes, delete with propagation. Run by tests/tests/python_client.rs with KUBECONFIG set.
Each step prints its name; the first failed assertion stops the script."""
import json
import threading

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def step(name):
    print("===", name, flush=True)


config.load_kube_config()
core = client.CoreV1Api()
apps = client.AppsV1Api()
NS = "py"

step("version and discovery")
version = client.VersionApi().get_code()
assert version.git_version.startswith("v1."), version
groups = [g.name for g in client.ApisApi().get_api_versions().groups]
assert "apps" in groups and "rbac.authorization.k8s.io" in groups, groups

step("create a namespace and ConfigMaps")
core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
first = core.create_namespaced_config_map(
    NS,
    client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="c0", labels={"app": "py"}), data={"a": "1"}
    ),
)
start_rv = first.metadata.resource_version
assert first.metadata.uid and start_rv, first.metadata

# A watch from the first object's resourceVersion sees only what follows it.
events = []
watching = threading.Event()


def watcher():
    w = watch.Watch()
    watching.set()
    for ev in w.stream(
        core.list_namespaced_config_map,
        NS,
        label_selector="app=py",
        resource_version=start_rv,
        allow_watch_bookmarks=True,
        timeout_seconds=10,
    ):
        obj = ev["object"]
        name = obj.metadata.name if hasattr(obj, "metadata") else obj["metadata"].get("name")
        events.append((ev["type"], name))
        if ev["type"] == "DELETED" and name == "c0":
            w.stop()


t = threading.Thread(target=watcher)
t.start()
watching.wait()
for i in range(1, 5):
    core.create_namespaced_config_map(
        NS,
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": f"c{i}", "labels": {"app": "py"}}, "data": {"i": str(i)}},
    )

step("list with limit and continue, selectors")
names, token = [], None
pages = 0
while True:
    page = core.list_namespaced_config_map(NS, label_selector="app=py", limit=2, _continue=token)
    pages += 1
    names += [c.metadata.name for c in page.items]
    token = page.metadata._continue
    if not token:
        break
assert names == ["c0", "c1", "c2", "c3", "c4"], names
assert pages == 3, pages
odd = core.list_namespaced_config_map(NS, field_selector="metadata.name=c3")
assert [c.metadata.name for c in odd.items] == ["c3"], odd.items

step("patch: strategic (the client's type for a dict) and JSON patch (for a list)")
core.patch_namespaced_config_map("c0", NS, {"data": {"b": "2"}})
got = core.read_namespaced_config_map("c0", NS)
assert got.data == {"a": "1", "b": "2"}, got.data
core.patch_namespaced_config_map("c0", NS, [{"op": "remove", "path": "/data/a"}])
got = core.read_namespaced_config_map("c0", NS)
assert got.data == {"b": "2"}, got.data
dep = apps.create_namespaced_deployment(NS, {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
    "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
             "template": {"metadata": {"labels": {"app": "web"}},
                          "spec": {"containers": [
                              {"name": "a", "image": "busybox", "env": [{"name": "X", "value": "1"}]},
                              {"name": "b", "image": "busybox"}]}}}})
# Containers merge by name: only b's image changes, a keeps its env.
apps.patch_namespaced_deployment("web", NS, {"spec": {"template": {"spec": {"containers": [
    {"name": "b", "image": "busybox:1.36"}]}}}})
cs = apps.read_namespaced_deployment("web", NS).spec.template.spec.containers
assert [(c.name, c.image) for c in cs] == [("a", "busybox"), ("b", "busybox:1.36")], cs
assert cs[0].env[0].name == "X", cs[0].env
scale = apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": 0}})
assert scale.spec.replicas == 0, scale

step("list at an exact resourceVersion: the first ConfigMap as it was")
then = core.list_namespaced_config_map(
    NS, label_selector="app=py", resource_version=start_rv, resource_version_match="Exact"
)
assert [(c.metadata.name, c.data) for c in then.items] == [("c0", {"a": "1"})], then.items
assert then.metadata.resource_version == start_rv, then.metadata

step("errors: codes, reasons and causes")
try:
    core.read_namespaced_config_map("nope", NS)
    raise AssertionError("a missing ConfigMap was found")
except ApiException as e:
    assert e.status == 404, e.status
    body = json.loads(e.body)
    assert body["reason"] == "NotFound" and body["details"]["name"] == "nope", body
try:
    core.create_namespaced_config_map(NS, {"apiVersion": "v1", "kind": "ConfigMap",
                                           "metadata": {"name": "Bad_Name"}})
    raise AssertionError("an invalid name was accepted")
except ApiException as e:
    assert e.status == 422, e.status
    body = json.loads(e.body)
    assert body["reason"] == "Invalid", body
    assert body["details"]["causes"][0]["field"] == "metadata.name", body
try:
    core.create_namespaced_config_map(NS, {"apiVersion": "v1", "kind": "ConfigMap",
                                           "metadata": {"name": "c1"}})
    raise AssertionError("a second c1 was created")
except ApiException as e:
    assert e.status == 409 and json.loads(e.body)["reason"] == "AlreadyExists", e.body

step("delete with propagation; the watch saw everything in order")
core.delete_namespaced_config_map("c0", NS, propagation_policy="Background")
apps.delete_namespaced_deployment("web", NS, propagation_policy="Foreground")
t.join(timeout=15)
assert not t.is_alive(), "the watch did not end"
seen = [e for e in events if e[0] != "BOOKMARK"]
want = [("ADDED", f"c{i}") for i in range(1, 5)] + [("MODIFIED", "c0")] * 2 + [("DELETED", "c0")]
assert seen == want, seen
core.delete_namespace(NS)
print("python client scenario passed")
