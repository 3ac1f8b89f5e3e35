#!/usr/bin/env bash
# kubectl against Flotilla's Kubernetes HTTP API, as a user would type it. Run by
# tests/tests/kubectl.rs with KUBECTL (the binary) and KUBECONFIG (the admin kubeconfig)
# set, in a scratch directory. Every step checks what kubectl printed; the first failure
# stops the script with the step that failed.
set -euo pipefail

k() { "$KUBECTL" "$@"; }
step() { echo "=== $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
# want TEXT PATTERN: TEXT matches the extended regex PATTERN.
want() { grep -Eq -- "$2" <<<"$1" || fail "expected /$2/ in:
$1"; }
# same A B WHAT
same() { [ "$1" = "$2" ] || fail "$3: got '$1', want '$2'"; }

step version
out=$(k version -o json)
want "$out" '"gitVersion": "v1\.35\.0-flotilla'
# Steps that need a newer kubectl than Debian's 1.20 check this.
minor=$(k version --client -o json | grep -Eo '"minor": "[0-9]+' | grep -Eo '[0-9]+$')
echo "kubectl 1.$minor"

step api-resources
out=$(k api-resources)
want "$out" 'deployments +deploy +apps/v1 +true +Deployment'
want "$out" 'pods +po +v1 +true +Pod'
want "$out" 'clusterroles +rbac.authorization.k8s.io/v1 +false +ClusterRole'
out=$(k api-resources --api-group=apps -o name)
want "$out" '^deployments.apps$|
deployments.apps'

step get namespaces
out=$(k get namespaces)
want "$out" '^NAME +STATUS +AGE'
want "$out" 'kube-system +Active'

cat > app.yaml <<'YAML'
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
  labels:
    app: web
data:
  greeting: hello
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
    tier: frontend
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: app
        image: registry.invalid/web:1
        ports:
        - containerPort: 8080
        env:
        - name: MODE
          value: one
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: web
  ports:
  - port: 80
    targetPort: 8080
YAML

step apply -f, twice
out=$(k apply -f app.yaml)
want "$out" 'configmap/web-config created'
want "$out" 'deployment.apps/web created'
want "$out" 'service/web created'
out=$(k apply -f app.yaml)
want "$out" 'deployment.apps/web unchanged'

step apply with a changed field and a removed one
sed -e 's/replicas: 2/replicas: 3/' -e '/tier: frontend/d' app.yaml > app2.yaml
out=$(k apply -f app2.yaml)
want "$out" 'deployment.apps/web configured'
same "$(k get deploy web -o jsonpath='{.spec.replicas}')" 3 "replicas after apply"
same "$(k get deploy web -o jsonpath='{.metadata.labels.tier}')" "" "removed label"
same "$(k get deploy web -o jsonpath='{.spec.template.spec.containers[0].ports[0].containerPort}')" 8080 "ports kept"

step get -o wide, yaml, json, jsonpath, custom-columns
out=$(k get deploy web)
want "$out" '^NAME +READY +UP-TO-DATE +AVAILABLE +AGE'
want "$out" '^web +0/3'
out=$(k get deploy -o wide)
want "$out" 'CONTAINERS +IMAGES +SELECTOR'
want "$out" 'registry.invalid/web:1 +app=web'
out=$(k get cm web-config -o yaml)
want "$out" 'greeting: hello'
out=$(k get cm -o json)
want "$out" '"kind": "List"'
want "$out" '"name": "web-config"'
out=$(k get deploy web -o custom-columns=NAME:.metadata.name,REPLICAS:.spec.replicas)
want "$out" '^web +3$|
web +3'
out=$(k get svc web -o jsonpath='{.spec.clusterIP}')
want "$out" '^10\.'
out=$(k get all)
want "$out" 'deployment.apps/web'
want "$out" 'service/web'
out=$(k get deploy,cm -l app=web -o name)
want "$out" 'deployment.apps/web'
want "$out" 'configmap/web-config'

step patch: json, merge, strategic
k patch deploy web --type json -p '[{"op":"replace","path":"/spec/replicas","value":4}]' >/dev/null
same "$(k get deploy web -o jsonpath='{.spec.replicas}')" 4 "json patch"
k patch deploy web --type merge -p '{"metadata":{"labels":{"patched":"merge"}}}' >/dev/null
same "$(k get deploy web -o jsonpath='{.metadata.labels.patched}')" merge "merge patch"
k patch deploy web -p '{"spec":{"template":{"spec":{"containers":[{"name":"app","env":[{"name":"EXTRA","value":"two"}]}]}}}}' >/dev/null
same "$(k get deploy web -o jsonpath='{.spec.template.spec.containers[0].env[*].name}')" "MODE EXTRA" "strategic patch merges env by name"
same "$(k get deploy web -o jsonpath='{.spec.template.spec.containers[0].image}')" "registry.invalid/web:1" "strategic patch keeps the image"

step scale
out=$(k scale deploy web --replicas=2)
want "$out" 'deployment.apps/web scaled'
same "$(k get deploy web -o jsonpath='{.spec.replicas}')" 2 "scaled"

step label, annotate
k label cm web-config tier=backend >/dev/null
same "$(k get cm web-config -o jsonpath='{.metadata.labels.tier}')" backend "label"
k label cm web-config tier- >/dev/null
same "$(k get cm web-config -o jsonpath='{.metadata.labels.tier}')" "" "label removed"
k annotate cm web-config note=hi >/dev/null
same "$(k get cm web-config -o jsonpath='{.metadata.annotations.note}')" hi "annotate"

step edit
EDITOR="sed -i s/greeting:\ hello/greeting:\ edited/" k edit cm web-config >/dev/null
same "$(k get cm web-config -o jsonpath='{.data.greeting}')" edited "edit"

step get -w sees a change
k get cm web-config -w --output-watch-events > watch.out 2>&1 &
watcher=$!
sleep 2
k patch cm web-config --type merge -p '{"data":{"greeting":"watched"}}' >/dev/null
for _ in $(seq 50); do grep -q MODIFIED watch.out && break; sleep 0.2; done
kill $watcher 2>/dev/null || true
wait $watcher 2>/dev/null || true
want "$(cat watch.out)" 'ADDED +web-config'
want "$(cat watch.out)" 'MODIFIED +web-config'

step describe
out=$(k describe deploy web)
want "$out" 'Name: +web'
want "$out" 'Replicas: +2 desired'

step errors name the object and field
out=$(k get deploy nope 2>&1 || true)
want "$out" 'deployments.apps "nope" not found'
out=$(k create configmap bad --from-literal=a=b --dry-run=client -o json | sed 's/"bad"/"Bad_Name"/' | k create -f - 2>&1 || true)
want "$out" 'is invalid'
want "$out" 'metadata.name'
out=$(k apply -f - 2>&1 <<'YAML' || true
apiVersion: v1
kind: ConfigMap
metadata:
  name: strict
data: {a: b}
unknownField: 1
YAML
)
want "$out" 'unknown field "unknownField"'
out=$(k get cm strict 2>&1 || true)
want "$out" 'not found'

step auth can-i, create token, whoami
same "$(k auth can-i create pods)" yes "admin can create pods"
same "$(k auth can-i list secrets --as jane 2>/dev/null || true)" no "jane cannot list secrets"
if [ "$minor" -ge 24 ]; then
  out=$(k create token default)
  want "$out" '^ey'
fi
if [ "$minor" -ge 28 ]; then
  out=$(k auth whoami -o jsonpath='{.status.userInfo.username}')
  same "$out" flotilla-admin "whoami"
fi

step generators: typed clients send protobuf bodies
out=$(k create deployment gen --image=busybox --replicas=3 --port=8080)
want "$out" 'deployment.apps/gen created'
same "$(k get deploy gen -o jsonpath='{.spec.replicas}/{.spec.template.spec.containers[0].ports[0].containerPort}')" 3/8080 "create deployment"
k create service clusterip gen --tcp=80:8080 >/dev/null
same "$(k get svc gen -o jsonpath='{.spec.ports[0].targetPort}')" 8080 "create service"
k create secret generic gen --from-literal=k=v >/dev/null
same "$(k get secret gen -o jsonpath='{.data.k}')" dg== "create secret"
k create role gen --verb=get --resource=pods >/dev/null
k create rolebinding gen --role=gen --user=jane >/dev/null
same "$(k auth can-i get pods --as jane)" yes "jane after the rolebinding"
want "$(k get rolebinding gen -o wide)" 'gen +Role/gen +[0-9]+s +jane'
k create cronjob gen --image=busybox --schedule='*/5 * * * *' -- true >/dev/null
same "$(k get cronjob gen -o jsonpath='{.spec.schedule}')" '*/5 * * * *' "create cronjob"
k delete deploy,svc,secret,role,rolebinding,cronjob gen >/dev/null

step a user certificate: CSR, approval by a signer approver only, then use
openssl req -new -newkey rsa:2048 -nodes -keyout carol.key -subj "/CN=carol/O=dev" -out carol.csr 2>/dev/null
csr() {
  k apply -f - <<YAML
apiVersion: certificates.k8s.io/v1
kind: CertificateSigningRequest
metadata: {name: $1}
spec:
  request: $(base64 -w0 < "$2")
  signerName: kubernetes.io/kube-apiserver-client
  expirationSeconds: 86400
  usages: [client auth]
YAML
}
csr carol carol.csr >/dev/null
want "$(k get csr carol)" 'carol +[0-9]+s +kubernetes.io/kube-apiserver-client +flotilla-admin +24h +Pending'
# jane may write the approval subresource, but does not approve for the signer.
k create clusterrole csr-approval --verb=get,update --resource=certificatesigningrequests,certificatesigningrequests/approval >/dev/null
k create clusterrolebinding jane-csr-approval --clusterrole=csr-approval --user=jane >/dev/null
out=$(k certificate approve carol --as jane 2>&1 || true)
want "$out" 'user not permitted to approve requests with signerName "kubernetes.io/kube-apiserver-client"'
k certificate approve carol >/dev/null
for _ in $(seq 50); do [ -n "$(k get csr carol -o jsonpath='{.status.certificate}')" ] && break; sleep 0.2; done
want "$(k get csr carol)" 'Approved,Issued'
out=$(k certificate deny carol 2>&1 || true)
want "$out" 'already Approved'
k get csr carol -o jsonpath='{.status.certificate}' | base64 -d > carol.crt
cp "$KUBECONFIG" carol.conf
cluster=$(k config view -o jsonpath='{.contexts[0].context.cluster}')
k --kubeconfig carol.conf config set-credentials carol --client-certificate=carol.crt --client-key=carol.key --embed-certs >/dev/null
k --kubeconfig carol.conf config set-context carol --cluster="$cluster" --user=carol >/dev/null
out=$(k --kubeconfig carol.conf --context carol get pods 2>&1 || true)
want "$out" 'User "carol" cannot list resource "pods"'
if [ "$minor" -ge 28 ]; then
  same "$(k --kubeconfig carol.conf --context carol auth whoami -o jsonpath='{.status.userInfo.username}')" carol "whoami as carol"
fi
openssl req -new -newkey rsa:2048 -nodes -keyout m.key -subj "/CN=mallory/O=system:masters" -out m.csr 2>/dev/null
out=$(csr mallory m.csr 2>&1 || true)
want "$out" 'use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed'
k delete csr carol >/dev/null

step rollout: status, undo, restart, history
k create deployment ro --image=busybox:1 --replicas=0 >/dev/null
want "$(k rollout status deploy/ro --timeout=20s)" 'successfully rolled out'
k set image deploy/ro busybox=busybox:2 >/dev/null
want "$(k rollout status deploy/ro --timeout=20s)" 'successfully rolled out'
want "$(k rollout undo deploy/ro)" 'rolled back'
# The rollback makes revision 1's template revision 3.
for _ in $(seq 50); do [ "$(k get deploy ro -o jsonpath='{.metadata.annotations.deployment\.kubernetes\.io/revision}')" = 3 ] && break; sleep 0.2; done
same "$(k get deploy ro -o jsonpath='{.spec.template.spec.containers[0].image}')" busybox:1 "rollout undo"
want "$(k rollout restart deploy/ro)" 'restarted'
want "$(k rollout status deploy/ro --timeout=20s)" 'successfully rolled out'
for _ in $(seq 50); do k rollout history deploy/ro | grep -Eq '^4 ' && break; sleep 0.2; done
want "$(k rollout history deploy/ro)" '^4 +<none>'
k delete deploy ro >/dev/null

step drain: cordon, then evictions
k apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Node
metadata: {name: drained}
---
apiVersion: v1
kind: Pod
metadata: {name: on-drained}
spec:
  nodeName: drained
  containers: [{name: c, image: busybox}]
YAML
# The node has no agent: a zero grace period lets the pod go without one.
out=$(k drain drained --force --grace-period=0 --timeout=30s 2>&1)
want "$out" 'pod/on-drained evicted'
want "$out" 'node/drained drained'
want "$(k get node drained)" 'SchedulingDisabled'
want "$(k get pod on-drained 2>&1 || true)" 'not found'
k uncordon drained >/dev/null
k delete node drained >/dev/null

step poddisruptionbudget: counted by the controller, spent by evictions
k apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Node
metadata: {name: guarded}
---
apiVersion: v1
kind: Pod
metadata: {name: g1, labels: {app: guarded}}
spec: {nodeName: guarded, containers: [{name: c, image: busybox}]}
---
apiVersion: v1
kind: Pod
metadata: {name: g2, labels: {app: guarded}}
spec: {nodeName: guarded, containers: [{name: c, image: busybox}]}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: guarded}
spec: {minAvailable: 1, selector: {matchLabels: {app: guarded}}}
YAML
out=$(k create pdb bad --selector=app=x --min-available=1 --max-unavailable=1 2>&1 || true)
want "$out" 'min-available and max-unavailable cannot be both specified|minAvailable and maxUnavailable cannot be both set'
out=$(k apply -f - 2>&1 <<'YAML' || true
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: bad}
spec: {minAvailable: 1, maxUnavailable: "150%", selector: {matchLabels: {app: x}}}
YAML
)
want "$out" 'spec: Invalid value.*minAvailable and maxUnavailable cannot be both set'
want "$out" 'spec.maxUnavailable: Invalid value: "150%": must not be greater than 100%'
# No agent runs these pods: their status says Running and Ready as an agent's would.
for p in g1 g2; do
  k patch pod $p --subresource=status --type=merge \
    -p '{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}' >/dev/null
done
for _ in $(seq 50); do
  [ "$(k get pdb guarded -o jsonpath='{.status.disruptionsAllowed}')" = 1 ] && break
  sleep 0.2
done
want "$(k get pdb guarded)" 'guarded +1 +N/A +1 '
want "$(k get pdb guarded -o jsonpath='{.status.conditions[0].reason}')" '^SufficientPods$'
# Both evictions run at once: the budget lets exactly one pod go.
out=$(k drain guarded --force --grace-period=0 --timeout=6s 2>&1 || true)
want "$out" "Cannot evict pod as it would violate the pod's disruption budget"
left=$(k get pods -l app=guarded -o name | wc -l)
same "$left" 1 "pods left by the budget"
for _ in $(seq 50); do
  [ "$(k get pdb guarded -o jsonpath='{.status.currentHealthy}')" = 1 ] && break
  sleep 0.2
done
want "$(k get pdb guarded -o jsonpath='{.status.disruptionsAllowed} {.status.conditions[0].reason}')" '^0 InsufficientPods$'
k delete pdb guarded >/dev/null
out=$(k drain guarded --force --grace-period=0 --timeout=20s 2>&1)
want "$out" 'node/guarded drained'
k delete node guarded >/dev/null

step server-side apply: create, no-op, conflicts, force, pruning
cat > ssa.yaml <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: ssa
  labels: {app: ssa, tier: web}
spec:
  replicas: 0
  selector: {matchLabels: {app: ssa}}
  template:
    metadata: {labels: {app: ssa}}
    spec:
      containers:
      - name: c
        image: busybox:1
        env: [{name: A, value: "1"}, {name: B, value: "2"}]
YAML
want "$(k apply --server-side -f ssa.yaml)" 'deployment.apps/ssa serverside-applied'
rv=$(k get deploy ssa -o jsonpath='{.metadata.resourceVersion}')
k apply --server-side -f ssa.yaml >/dev/null
same "$(k get deploy ssa -o jsonpath='{.metadata.resourceVersion}')" "$rv" "re-applying the same configuration writes nothing"
out=$(k get deploy ssa -o yaml --show-managed-fields)
want "$out" 'manager: kubectl'
want "$out" 'operation: Apply'
want "$out" 'k:\{"name":"B"\}'
sed 's/replicas: 0/replicas: 1/' ssa.yaml > ssa-other.yaml
out=$(k apply --server-side --field-manager=other -f ssa-other.yaml 2>&1 || true)
want "$out" 'Apply failed with 1 conflict: conflict with "kubectl": \.spec\.replicas'
want "$(k apply --server-side --field-manager=other --force-conflicts -f ssa-other.yaml)" 'serverside-applied'
same "$(k get deploy ssa -o jsonpath='{.spec.replicas}')" 1 "forced apply"
k scale deploy ssa --replicas=0 >/dev/null
out=$(k apply --server-side --field-manager=other -f ssa-other.yaml 2>&1 || true)
want "$out" 'conflict with "kubectl" with subresource "scale" using apps/v1: \.spec\.replicas'
# Fields the manager alone owned go when its configuration drops them; shared ones stay.
k apply --server-side --field-manager=other --force-conflicts -f ssa-other.yaml >/dev/null
sed -e '/replicas:/d' -e 's/, {name: B, value: "2"}//' -e 's/labels: {app: ssa, tier: web}/labels: {app: ssa}/' ssa.yaml > ssa2.yaml
k apply --server-side -f ssa2.yaml >/dev/null
same "$(k get deploy ssa -o jsonpath='{.spec.replicas}')" 1 "replicas, which kubectl no longer owns, stay"
same "$(k get deploy ssa -o jsonpath='{.spec.template.spec.containers[0].env[*].name}')" "A B" "env B is still other's"
same "$(k get deploy ssa -o jsonpath='{.metadata.labels.tier}')" "web" "label tier is still other's"
sed -e 's/, {name: B, value: "2"}//' -e 's/labels: {app: ssa, tier: web}/labels: {app: ssa}/' ssa-other.yaml > ssa-other2.yaml
k apply --server-side --field-manager=other -f ssa-other2.yaml >/dev/null
same "$(k get deploy ssa -o jsonpath='{.spec.template.spec.containers[0].env[*].name}')" "A" "env B pruned"
same "$(k get deploy ssa -o jsonpath='{.metadata.labels.tier}')" "" "label tier pruned"
want "$(k diff --server-side --force-conflicts -f ssa.yaml || true)" '\+ +- name: B'
k apply --server-side --force-conflicts -f ssa.yaml --dry-run=server >/dev/null
same "$(k get deploy ssa -o jsonpath='{.spec.template.spec.containers[0].env[*].name}')" "A" "dry-run apply stores nothing"
out=$(k apply --server-side -f - 2>&1 <<'YAML' || true
apiVersion: apps/v1
kind: Deployment
metadata: {name: ssa}
spec:
  template:
    spec:
      containers: [{image: busybox}]
YAML
)
want "$out" 'name'
k delete deploy ssa >/dev/null

step delete
out=$(k delete cm web-config)
want "$out" 'configmap "web-config" deleted'
out=$(k delete deploy web --cascade=foreground)
want "$out" 'deployment.apps "web" deleted'
out=$(k delete -f app.yaml --ignore-not-found)
want "$out" 'service "web" deleted'
out=$(k get cm,deploy,svc -l app=web 2>&1)
want "$out" 'No resources found'

echo "kubectl scenario passed"
