# shellcheck shell=bash
# Self-hosted control plane for node.sh (`node.sh up --self-hosted`); sourced by node.sh, not run.
#
# The way bootkube pivoted: a bootstrap kube-apiserver *process* starts the cluster; then the API
# server becomes a DaemonSet pod in kube-system, checkpointed by pod-checkpointer (installed with
# the project's Helm chart), and the bootstrap process exits. etcd, controller-manager and
# scheduler stay processes. Every client keeps its address (127.0.0.1:6443 in the node namespace,
# the same through the host's loopback forwarder, 10.96.0.1:443 in-cluster): the forwarders connect
# per connection to whatever listens on 6443 in the node namespace.
#
# Why the pivot is ordered the way it is:
# * Port 6443 cannot be shared. SO_REUSEPORT (kube-apiserver --permit-port-sharing) only lets a
#   second socket bind if *every* socket on the port set it (and they have the same effective
#   uid); measured here: listener with SO_REUSEPORT + second bind without it -> EADDRINUSE, with
#   it -> ok. The DaemonSet's flags must not rely on --permit-port-sharing (most clusters do not
#   set it), so setting it on the bootstrap alone buys nothing, and it is not set.
# * Letting the pod crash-loop on bind until the bootstrap exits works, but the kubelet's restart
#   backoff (10 s, 20 s, ... 5 min) then decides how long the API stays down after the bootstrap
#   exits. Instead the DaemonSet is created while its image is not imported yet: the kubelet
#   creates the pod's sandbox and waits on ErrImageNeverPull, the agent sees the parent and writes
#   its checkpoint (the sandbox is READY, so it is "running": nothing is activated), then the
#   bootstrap stops, the image is imported, and the pod's container starts for the first time on
#   a free port at the kubelet's next retry of the pod. No fight, no crash loop.
# * The API outage of `stop-apiserver` in this mode: the API server is a pod, and stopping the
#   pod would just make the kubelet restart it, so the harness rejects TCP to port 6443 inside the
#   node namespace (nftables, `tcp reset`: clients get "connection refused" as with a stopped
#   process) and stops the forwarders; `start-apiserver` lifts it. The pod keeps running.

SH_DIR=$NODE_DIR/selfhosted
SH_NS=kube-system
SH_DS=kube-apiserver
SH_APISERVER_IMAGE=${SH_APISERVER_IMAGE:-localhost/kube-apiserver:ci}
SH_AGENT_IMAGE=${SH_AGENT_IMAGE:-localhost/pod-checkpointer:selfhosted}
SH_AGENT_RELEASE=${SH_AGENT_RELEASE:-pod-checkpointer}
SH_AGENT_ADMIN_PORT=${SH_AGENT_ADMIN_PORT:-9809} # not the chart's default 10266: the chart e2e uses that one
SH_GRACE=${SH_GRACE:-15s}
SH_FALLBACK_TIMEOUT=${SH_FALLBACK_TIMEOUT:-30s}
# Inside the API server's container.
SH_CERT_DIR=/etc/kubernetes/apiserver/certs
SH_SA_DIR=/etc/kubernetes/apiserver/sa

self_hosted() { [ -f "$NODE_DIR/self-hosted" ]; }
pivoted() { [ -f "$SH_DIR/pivoted" ]; }

kc() { kubectl --kubeconfig "$NODE_DIR/admin.kubeconfig" --request-timeout=10s "$@"; }

# The agent binary for the chart's image: $AGENT_BIN, else the workspace's debug build (built if
# missing: `cargo test` builds the same binary).
agent_bin() {
  local repo
  repo=$(cd "$HERE/../.." && pwd)
  if [ -n "${AGENT_BIN:-}" ]; then
    [ -x "$AGENT_BIN" ] || die "AGENT_BIN=$AGENT_BIN is not an executable"
    echo "$AGENT_BIN"
    return
  fi
  if [ ! -x "$repo/target/debug/pod-checkpointer" ]; then
    log "building the agent (cargo build --bin pod-checkpointer)"
    (cd "$repo" && PATH="$PATH:$HOME/.cargo/bin" cargo build --bin pod-checkpointer >&2)
  fi
  echo "$repo/target/debug/pod-checkpointer"
}

# build_image_tar NAME BINARY TAR: single-binary image (entrypoint /<basename>) with its shared
# libraries, written as an OCI tar but not imported.
build_image_tar() {
  local name=$1 bin=$2 tar=$3 base srcs lib
  base=$(basename "$bin")
  srcs="$bin@/$base"
  for lib in $(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' || true); do
    [ -f "$lib" ] && srcs+=",$lib@$lib"
  done
  mkdir -p "$(dirname "$tar")"
  python3 "$HERE/mkimage.py" "$tar" "$name=/$base:$srcs"
}

import_image_tar() { ctr -a "$SOCK" -n k8s.io image import "$1" >/dev/null; }

# --- objects ----------------------------------------------------------------------------------

# Certificates and service-account keys in Secrets, settings in a ConfigMap (kubectl create
# --dry-run | apply: idempotent).
sh_apply_config() {
  local f certs=()
  for f in ca.crt apiserver.crt apiserver.key apiserver-kubelet-client.crt apiserver-kubelet-client.key \
    front-proxy-ca.crt front-proxy-client.crt front-proxy-client.key; do
    certs+=("--from-file=$f=$PKI/$f")
  done
  kc -n "$SH_NS" create secret generic kube-apiserver-certs "${certs[@]}" --dry-run=client -o yaml | kc apply -f - >/dev/null
  kc -n "$SH_NS" create secret generic kube-apiserver-sa --from-file=sa.key="$PKI/sa.key" \
    --from-file=sa.pub="$PKI/sa.pub" --dry-run=client -o yaml | kc apply -f - >/dev/null
  kc -n "$SH_NS" create configmap kube-apiserver-config \
    --from-literal=etcd-servers="http://127.0.0.1:$ETCD_PORT" --from-literal=advertise-address="$NODE_IP" \
    --from-literal=service-cluster-ip-range="$SERVICE_CIDR" --from-literal=secure-port="$APISERVER_PORT" \
    --dry-run=client -o yaml | kc apply -f - >/dev/null
}

# The DaemonSet, with the same flags as the bootstrap process (apiserver_flags), its paths in the
# container, its settings from the ConfigMap through $(VAR) references.
sh_daemonset_yaml() {
  local flag
  cat <<EOF
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: $SH_DS
  namespace: $SH_NS
  labels: {app: $SH_DS}
spec:
  selector:
    matchLabels: {app: $SH_DS}
  updateStrategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 1}}
  template:
    metadata:
      labels: {app: $SH_DS}
      annotations:
        checkpointer.alpha.coreos.com/checkpoint: "true"
    spec:
      hostNetwork: true
      dnsPolicy: ClusterFirstWithHostNet
      enableServiceLinks: false
      automountServiceAccountToken: false
      priorityClassName: system-node-critical
      tolerations: [{operator: Exists}]
      terminationGracePeriodSeconds: 10
      containers:
      - name: kube-apiserver
        image: $SH_APISERVER_IMAGE
        imagePullPolicy: Never
        command: [/kube-apiserver]
        args:
EOF
  # shellcheck disable=SC2016 # $(VAR) is Kubernetes' expansion, not the shell's
  apiserver_flags "$SH_CERT_DIR" "$SH_SA_DIR" '$(ETCD_SERVERS)' '$(ADVERTISE_ADDRESS)' \
    '$(SERVICE_CLUSTER_IP_RANGE)' '$(SECURE_PORT)' | while IFS= read -r flag; do
    printf '        - "%s"\n' "$flag"
  done
  cat <<EOF
        env:
        - {name: ETCD_SERVERS, valueFrom: {configMapKeyRef: {name: kube-apiserver-config, key: etcd-servers}}}
        - {name: ADVERTISE_ADDRESS, valueFrom: {configMapKeyRef: {name: kube-apiserver-config, key: advertise-address}}}
        - {name: SERVICE_CLUSTER_IP_RANGE, valueFrom: {configMapKeyRef: {name: kube-apiserver-config, key: service-cluster-ip-range}}}
        - {name: SECURE_PORT, valueFrom: {configMapKeyRef: {name: kube-apiserver-config, key: secure-port}}}
        readinessProbe:
          httpGet: {scheme: HTTPS, port: $APISERVER_PORT, path: /readyz}
          periodSeconds: 1
          timeoutSeconds: 2
          failureThreshold: 3
        volumeMounts:
        - {name: certs, mountPath: $SH_CERT_DIR, readOnly: true}
        - {name: sa, mountPath: $SH_SA_DIR, readOnly: true}
      volumes:
      - {name: certs, secret: {secretName: kube-apiserver-certs, defaultMode: 0400}}
      - {name: sa, secret: {secretName: kube-apiserver-sa, defaultMode: 0400}}
EOF
}

# The agent, with the project's chart: the image of the agent binary, the harness's CRI socket,
# its paths under the node's /etc/kubernetes.
# The agent gets both node views: the runtime (CRI socket) and the kubelet's read-only /pods
# (which it needs to tell a parent the kubelet restarts by itself, and a successor's readiness,
# while the API is down).
sh_install_agent() {
  local bin copy
  bin=$(agent_bin)
  copy=$SH_DIR/pod-checkpointer
  mkdir -p "$SH_DIR"
  strip -o "$copy" "$bin" 2>/dev/null || cp "$bin" "$copy"
  build_image_tar "$SH_AGENT_IMAGE" "$copy" "$SH_DIR/agent-image.tar"
  import_image_tar "$SH_DIR/agent-image.tar"
  echo "$SH_FALLBACK_TIMEOUT" >"$SH_DIR/fallback-timeout"
  cat >"$SH_DIR/agent-values.json" <<EOF
{
  "image": {"repository": "${SH_AGENT_IMAGE%:*}", "tag": "${SH_AGENT_IMAGE##*:}", "pullPolicy": "Never"},
  "namespaces": ["$SH_NS"],
  "gracePeriod": "$SH_GRACE",
  "pollInterval": "500ms",
  "logFormat": "json",
  "logLevel": "info,pod_checkpointer=debug",
  "adminPort": $SH_AGENT_ADMIN_PORT,
  "apiServer": {"host": "127.0.0.1", "port": $APISERVER_PORT},
  "cri": {"socketPath": "$SOCK"},
  "kubelet": {"enabled": true, "url": "http://127.0.0.1:$KUBELET_RO_PORT", "tokenFile": "", "caFile": ""},
  "fallbackTimeout": "$SH_FALLBACK_TIMEOUT",
  "hostPaths": {"stateDir": "/etc/kubernetes/pod-checkpointer-state"},
  "extraArgs": []
}
EOF
  # The chart runs on control-plane nodes only (controlPlaneOnly): this node is one, labelled as
  # kubeadm would.
  kc label node "$NODE_NAME" node-role.kubernetes.io/control-plane= --overwrite >/dev/null
  local helm_bin; helm_bin=$(bin_tool helm)
  "$helm_bin" --kubeconfig "$NODE_DIR/admin.kubeconfig" upgrade --install "$SH_AGENT_RELEASE" \
    "$HERE/../../charts/pod-checkpointer" --namespace "$SH_NS" --values "$SH_DIR/agent-values.json" \
    --wait --timeout "${DEADLINE}s" >"$LOGS/helm-agent.log" 2>&1 || die "helm install of the agent: $(tail -20 "$LOGS/helm-agent.log")"
}

# --- what runs -------------------------------------------------------------------------------

# The DaemonSet's pod (not a mirror pod of a static copy, not being deleted).
sh_daemon_pod() {
  kc -n "$SH_NS" get pods -l "app=$SH_DS" -o json 2>/dev/null | python3 -c '
import json, sys
for p in json.load(sys.stdin)["items"]:
    m = p["metadata"]
    if "kubernetes.io/config.mirror" in m.get("annotations", {}) or m.get("deletionTimestamp"):
        continue
    if p["spec"].get("nodeName"):
        print(m["name"])
        sys.exit(0)
sys.exit(1)'
}

# checkpoint_written POD: inactive manifest and the Secret files it mounts are on the node.
checkpoint_written() {
  [ -f "$ETC_KUBERNETES/inactive-manifests/$SH_NS-$1.json" ] &&
    find "$ETC_KUBERNETES/checkpoint-secrets/$SH_NS/$1" -name apiserver.crt 2>/dev/null | grep -q . &&
    find "$ETC_KUBERNETES/checkpoint-secrets/$SH_NS/$1" -name sa.key 2>/dev/null | grep -q .
}

agent_self_checkpoint_active() { compgen -G "$MANIFESTS/$SH_NS-$SH_AGENT_RELEASE-*.json" >/dev/null; }

# Exited kube-apiserver containers of the DaemonSet's pods: removed so that the kubelet starts the
# container at its next look at the pod instead of waiting out a crash-loop backoff.
sh_forget_exited_containers() {
  local crictl ids
  crictl=$(bin_tool crictl)
  ids=$("$crictl" --config "$NODE_DIR/crictl.yaml" ps -a -q --state exited --name '^kube-apiserver$' \
    --label "io.kubernetes.pod.namespace=$SH_NS" 2>/dev/null || true)
  # shellcheck disable=SC2086
  [ -z "$ids" ] || "$crictl" --config "$NODE_DIR/crictl.yaml" rm $ids >/dev/null 2>&1 || true
}

# --- the pivot -------------------------------------------------------------------------------

sh_pivot() {
  local t0=$EPOCHREALTIME pod
  mkdir -p "$SH_DIR"
  alive kube-apiserver || die "pivot: no bootstrap kube-apiserver process to hand over from"
  build_image_tar "$SH_APISERVER_IMAGE" "$NODE_BIN/kube-apiserver" "$SH_DIR/apiserver-image.tar"
  sh_apply_config
  sh_install_agent
  log "agent installed (helm release $SH_NS/$SH_AGENT_RELEASE) in $(elapsed "$t0")s"
  wait_for "the agent's own checkpoint active" agent_self_checkpoint_active || die "the agent did not checkpoint itself"
  sh_daemonset_yaml >"$SH_DIR/kube-apiserver-daemonset.yaml"
  kc apply -f "$SH_DIR/kube-apiserver-daemonset.yaml" >/dev/null
  wait_for "the DaemonSet's pod bound to $NODE_NAME" sh_daemon_pod || die "no kube-apiserver pod"
  pod=$(sh_daemon_pod) || die "the DaemonSet's pod went away"
  wait_for "checkpoint of $SH_NS/$pod written" checkpoint_written "$pod" ||
    die "no checkpoint of $pod: $(kc -n "$SH_NS" logs -l app.kubernetes.io/name=pod-checkpointer --tail 20 2>&1)"
  sh_handover "$pod"
  touch "$SH_DIR/pivoted"
  log "self-hosted: $SH_NS/$pod serves the API; pivot took $(elapsed "$t0")s"
}

# sh_handover POD: the bootstrap process exits, the pod takes over; logs how long no API answered.
sh_handover() {
  local pod=$1 down up
  apiserver_ready || die "handover: the bootstrap API server is not ready"
  down=$EPOCHREALTIME
  stop kube-apiserver 15
  log "bootstrap kube-apiserver stopped in $(elapsed "$down")s"
  [ -f "$SH_DIR/apiserver-image.tar" ] && import_image_tar "$SH_DIR/apiserver-image.tar"
  sh_forget_exited_containers
  local end=$(($(date +%s) + DEADLINE))
  until apiserver_ready; do
    [ "$(date +%s)" -lt $end ] || die "the DaemonSet's pod did not serve the API within ${DEADLINE}s"
    sleep 0.1
  done
  up=$EPOCHREALTIME
  awk -v a="$down" -v b="$up" 'BEGIN { printf "%.2f\n", b - a }' >"$SH_DIR/pivot-downtime"
  log "PIVOT: API down $(cat "$SH_DIR/pivot-downtime")s (bootstrap SIGTERM -> first /readyz 200 from $pod)"
}

# rescue: a node left without any API server (e.g. a failed scenario) gets the bootstrap process
# back; `pivot` hands over to the DaemonSet's pod again.
sh_rescue() {
  if apiserver_ready; then log "rescue: the API answers; nothing to do"; return 0; fi
  sh_unblock
  start_apiserver_forwarders
  if apiserver_ready; then log "rescue: the API answers once unblocked"; return 0; fi
  start_apiserver_process
  wait_for "bootstrap kube-apiserver /readyz" apiserver_ready || die "rescue: $(tail -20 "$LOGS/kube-apiserver.log")"
  rm -f "$SH_DIR/pivoted"
}

sh_repivot() {
  pivoted && { log "already self-hosted"; return 0; }
  local pod
  wait_for "the DaemonSet's pod bound to $NODE_NAME" sh_daemon_pod || die "no kube-apiserver pod"
  pod=$(sh_daemon_pod) || die "the DaemonSet's pod went away"
  wait_for "checkpoint of $SH_NS/$pod written" checkpoint_written "$pod" || die "no checkpoint of $pod"
  sh_handover "$pod"
  touch "$SH_DIR/pivoted"
}

# --- outage (stop-apiserver / start-apiserver) -------------------------------------------------

sh_block() {
  innode nft -f - <<EOF
table inet node-sh-outage {
  chain input {
    type filter hook input priority filter; policy accept;
    tcp dport $APISERVER_PORT reject with tcp reset
  }
}
EOF
}

sh_unblock() { innode nft delete table inet node-sh-outage 2>/dev/null || true; }

sh_stop_apiserver() {
  stop svc-kubernetes 5
  stop fwd-apiserver 5
  sh_block
  log "API outage: TCP to :$APISERVER_PORT rejected in the node namespace (the pod keeps running)"
}

# After an outage that outlived the API server's pod (stop-apiserver, reboot-runtime,
# start-apiserver), the API first comes back from the checkpoint's static copy, which then yields
# to the DaemonSet's pod; the API is down again until that pod's container gets the port. Callers
# of start-apiserver want a settled API: wait until no copy is active, none still runs (the
# kubelet stops a copy a moment after its manifest goes, and it answers until then), and the API
# answers.
apiserver_copy_active() { compgen -G "$MANIFESTS/$SH_NS-$SH_DS-*.json" >/dev/null; }
apiserver_copy_running() {
  "$(bin_tool crictl)" --config "$NODE_DIR/crictl.yaml" --timeout 3s ps --state running \
    --name '^kube-apiserver$' -o json 2>/dev/null | python3 -c '
import json, sys
pods = [c.get("labels", {}).get("io.kubernetes.pod.name", "") for c in json.load(sys.stdin).get("containers", [])]
sys.exit(0 if any(p.endswith("-" + sys.argv[1]) for p in pods) else 1)' "$NODE_NAME"
}
api_settled() { ! apiserver_copy_active && ! apiserver_copy_running && apiserver_ready; }

sh_start_apiserver() {
  sh_unblock
  start_apiserver_forwarders
  wait_for "kube-apiserver /readyz" apiserver_ready || die "no API server answers"
  if apiserver_copy_active || apiserver_copy_running; then
    wait_for "the API served by the DaemonSet's pod again (checkpoint copy gone)" api_settled ||
      die "the API did not settle: $(sh_api_status)"
  fi
}

# --- status ----------------------------------------------------------------------------------

# Which API servers run: the bootstrap process, and kube-apiserver containers per CRI (the
# DaemonSet's pod or a checkpoint's static copy, `<pod>-<node>`).
sh_api_status() {
  printf 'api /readyz: %s\n' "$(apiserver_ready && echo up || echo down)"
  if alive kube-apiserver; then echo "bootstrap process: running (pid $(pid_of kube-apiserver))"; fi
  if self_hosted; then
    printf 'mode: self-hosted (%s)\n' "$(pivoted && echo 'pivoted' || echo 'bootstrap serving')"
    [ -f "$SH_DIR/pivot-downtime" ] && echo "last pivot: API down $(cat "$SH_DIR/pivot-downtime")s"
    innode nft list table inet node-sh-outage >/dev/null 2>&1 && echo "outage: port $APISERVER_PORT blocked (stop-apiserver)"
  fi
  local crictl; crictl=$(bin_tool crictl)
  [ -n "$crictl" ] && "$crictl" --config "$NODE_DIR/crictl.yaml" --timeout 3s ps -a --name '^kube-apiserver$' \
    -o json 2>/dev/null | python3 -c '
import json, sys
for c in json.load(sys.stdin).get("containers", []):
    l = c.get("labels", {})
    print("container %s %-18s pod %s/%s attempt %s" % (c["id"][:12], c["state"], l.get("io.kubernetes.pod.namespace"),
          l.get("io.kubernetes.pod.name"), c.get("metadata", {}).get("attempt")))' || true
}
