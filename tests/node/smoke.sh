#!/usr/bin/env bash
# Smoke test of the CI node brought up by node.sh: proves pods really run (API pods, static pods,
# pod network, exec/logs through apiserver->kubelet, in-cluster API access, node.sh image, crictl
# from the host, and DaemonSet/scheduling when kube-controller-manager/kube-scheduler run).
# usage: bash tests/node/smoke.sh        (the node must be up: bash tests/node/node.sh up)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
node_sh() { bash "$HERE/node.sh" "$@"; }
eval "$(node_sh env)"
NS=smoke-$(date +%s) # unique: without kube-controller-manager a deleted namespace never goes away
T0=$EPOCHREALTIME
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
ok() { printf '[smoke %6ss] ok: %s\n' "$(elapsed "$T0")" "$*"; }
fail() { printf '[smoke %6ss] FAILED: %s\n' "$(elapsed "$T0")" "$*"; exit 1; }
until_true() { # until_true SECONDS CMD...: poll every 0.2s
  local end=$(($(date +%s) + $1)); shift
  until "$@" >/dev/null 2>&1; do [ "$(date +%s)" -lt $end ] || return 1; sleep 0.2; done
}
phase() { kubectl -n "$1" get pod "$2" -o 'jsonpath={.status.phase}' 2>/dev/null; }
running() { [ "$(phase "$1" "$2")" = Running ]; }

cleanup() {
  rm -f "$MANIFEST_DIR/smoke-static.yaml"
  kubectl -n "$NS" delete daemonsets,pods --all --grace-period=1 --wait=false >/dev/null 2>&1 || true
  kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

node_sh namespace "$NS" # namespace + default ServiceAccount + kube-root-ca.crt

pod() { # pod NAME HOSTNET IMAGE CMD...  (bound to the node directly: no scheduler needed)
  # FIELD=args: pass CMD as args to the image's entrypoint instead of replacing it
  local name=$1 hostnet=$2 image=$3; shift 3
  local args=""
  for a in "$@"; do args+="\"$a\", "; done
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $name, namespace: $NS}
spec:
  nodeName: $NODE_NAME
  hostNetwork: $hostnet
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: $image
    imagePullPolicy: Never
    ${FIELD:-command}: [${args%, }]
EOF
}

# 1. hostNetwork pod from the API
pod hostnet true "$BUSYBOX_IMAGE" sleep 3600
until_true 60 running "$NS" hostnet || fail "hostNetwork pod not Running: $(kubectl -n "$NS" describe pod hostnet | tail -5)"
ok "hostNetwork pod Running"
[ "$(kubectl -n "$NS" get pod hostnet -o jsonpath='{.status.podIP}')" = "$NODE_IP" ] || fail "pod IP is not the node IP"
kubectl -n "$NS" exec hostnet -- sh -c 'ip -4 addr show k8snode0' | grep -q "$NODE_IP" || fail "exec"
ok "kubectl exec (apiserver -> kubelet -> containerd streaming)"

# 2. in-cluster API access from the node network (what a hostNetwork agent pod does)
TOKEN=$(kubectl -n "$NS" exec hostnet -- cat /var/run/secrets/kubernetes.io/serviceaccount/token)
code=$(node_sh exec -- curl -s -o /dev/null -w '%{http_code}' --cacert "$CLUSTER_CA" \
  -H "Authorization: Bearer $TOKEN" "https://10.96.0.1/api/v1/namespaces/$NS/pods")
[ "$code" = 403 ] || fail "in-cluster API via 10.96.0.1:443: HTTP $code (want 403 for the default SA)"
ok "in-cluster API at https://10.96.0.1:443 with the projected SA token (403 as expected)"

# 3. static pod -> mirror pod
cat >"$MANIFEST_DIR/smoke-static.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata: {name: smoke-static, namespace: $NS}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: $BUSYBOX_IMAGE
    imagePullPolicy: Never
    command: [httpd, -f, -p, "18081", -h, /etc]
EOF
t=$EPOCHREALTIME
until_true 60 running "$NS" "smoke-static-$NODE_NAME" || fail "mirror pod not Running"
ok "static pod: mirror pod smoke-static-$NODE_NAME Running after $(elapsed "$t")s"
until_true 10 node_sh exec -- curl -sf http://127.0.0.1:18081/hostname || fail "static pod not serving"
curl -sf "$KUBELET_READONLY_URL/pods" | grep -q "\"smoke-static-$NODE_NAME\"" || fail "kubelet /pods (read-only port)"
curl -sf --cacert "$CLUSTER_CA" --cert "$NODE_DIR/pki/admin.crt" --key "$NODE_DIR/pki/admin.key" \
  "$KUBELET_URL/pods" | grep -q '"hostnet"' || fail "kubelet /pods (https port)"
ok "kubelet /pods from the host on $KUBELET_READONLY_URL and $KUBELET_URL"
crictl pods --name "smoke-static-$NODE_NAME" -q | grep -q . || fail "crictl from the host"
ok "crictl from the host over $CRI_ENDPOINT"
rm -f "$MANIFEST_DIR/smoke-static.yaml"
until_true 60 sh -c "! kubectl -n $NS get pod smoke-static-$NODE_NAME" || fail "mirror pod not removed"
ok "static manifest removed -> mirror pod gone"

# 4. pod network (CNI bridge inside the node namespace)
pod podnet false "$BUSYBOX_IMAGE" httpd -f -p 8080 -h /etc
until_true 60 running "$NS" podnet || fail "pod-network pod not Running"
ip=$(kubectl -n "$NS" get pod podnet -o jsonpath='{.status.podIP}')
until_true 10 node_sh exec -- curl -sf "http://$ip:8080/hostname" || fail "pod IP $ip not reachable from the node"
kubectl -n "$NS" exec podnet -- nc -w 2 10.96.0.1 443 </dev/null || fail "10.96.0.1:443 from the pod network"
ok "pod network: $ip reachable, 10.96.0.1:443 reachable from it"

# 5. node.sh image: a dynamically linked host binary packaged with its libraries
node_sh image localhost/smoke-echo:ci /bin/echo >/dev/null
FIELD=args pod echo false localhost/smoke-echo:ci hello-from-image
until_true 60 sh -c "kubectl -n $NS logs echo 2>/dev/null | grep -q hello-from-image" || fail "node.sh image"
ok "node.sh image (dynamic binary + its libs) runs"

# 6. controllers, if present
if kubectl -n kube-system get lease kube-controller-manager >/dev/null 2>&1 ||
  [ -f "$NODE_DIR/pids/kube-controller-manager.pid" ]; then
  echo "written on the host" >"$NODE_ETC_KUBERNETES/smoke-probe"
  kubectl apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: ds, namespace: $NS}
spec:
  selector: {matchLabels: {app: ds}}
  template:
    metadata: {labels: {app: ds}}
    spec:
      hostNetwork: true
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: $BUSYBOX_IMAGE
        imagePullPolicy: Never
        command: [sh, -c, "test -S /run/containerd/containerd.sock && test -d /etc/kubernetes/manifests && exec sleep 3600"]
        volumeMounts:
        - {name: cri, mountPath: /run/containerd/containerd.sock}
        - {name: etc, mountPath: /etc/kubernetes}
      volumes:
      - {name: cri, hostPath: {path: /run/containerd/containerd.sock, type: Socket}}
      - {name: etc, hostPath: {path: /etc/kubernetes, type: Directory}}
EOF
  until_true 90 sh -c "[ \"\$(kubectl -n $NS get ds ds -o jsonpath='{.status.numberReady}')\" = 1 ]" ||
    fail "DaemonSet pod not ready"
  kubectl -n "$NS" exec ds/ds -- cat /etc/kubernetes/smoke-probe | grep -q "written on the host" ||
    fail "node's /etc/kubernetes is not \$NODE_ETC_KUBERNETES"
  rm -f "$NODE_ETC_KUBERNETES/smoke-probe"
  ok "DaemonSet pod Ready (kube-controller-manager + kube-scheduler), with hostPaths /run/containerd/containerd.sock and /etc/kubernetes"
fi

ok "all smoke checks passed"
