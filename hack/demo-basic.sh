# shellcheck shell=bash
# The demo's basic chapter (DEMO=basic or DEMO=all): one busybox checkpoint's whole life, on a
# plain node (the API server a process) with the agent run on the host. Sourced by hack/demo.sh.
#
# What it shows that the self-hosted chapter does not: the checkpointed Secret, ConfigMap and
# service-account token are what the static copy reads (the pod prints them), and a deleted
# parent's checkpoint and files are removed after the grace period.

BASIC_NS=demo
BASIC_POD=parent
BASIC_GRACE=5s # the agent's --grace-period: how long a deleted parent's checkpoint is kept
ANNOTATION=checkpointer.alpha.coreos.com/checkpoint

AGENT_PID="" # set while the host-run agent runs
AGENT_RC=""  # its exit status once stopped

# ---------------------------------------------------------------------------------------------
# what the chapter looks at

inactive_manifest() { echo "$AGENT_ROOT/etc/kubernetes/inactive-manifests/$BASIC_NS-$BASIC_POD.json"; }
active_manifest() { echo "$MANIFEST_DIR/$BASIC_NS-$BASIC_POD.json"; }
secret_dir() { echo "$AGENT_ROOT/etc/kubernetes/checkpoint-secrets/$BASIC_NS/$BASIC_POD"; }
configmap_dir() { echo "$AGENT_ROOT/etc/kubernetes/checkpoint-configmaps/$BASIC_NS/$BASIC_POD"; }

has_file() { [ -n "$(find "$1" -type f -name "$2" 2>/dev/null)" ]; } # has_file DIR NAME

checkpoint_written() { # manifest, the Secret and ConfigMap keys, the service-account token
  [ -f "$(inactive_manifest)" ] && has_file "$(secret_dir)" password &&
    has_file "$(secret_dir)" token && has_file "$(configmap_dir)" mode
}
checkpoint_gone() {
  [ ! -e "$(inactive_manifest)" ] && [ ! -e "$(secret_dir)" ] && [ ! -e "$(configmap_dir)" ]
}
is_active() { [ -f "$(active_manifest)" ]; }
not_active() { [ ! -e "$(active_manifest)" ]; }

# sandbox_ready NAME: the runtime has a READY pod sandbox demo/NAME (exact name)
sandbox_ready() { [ -n "$(ready_sandbox "$1")" ]; }
sandbox_not_ready() { local ids; ids=$(ready_sandbox "$1") && [ -z "$ids" ]; } # crictl answered
ready_sandbox() {
  crictl --config "$CRI_CONFIG_FILE" --runtime-endpoint "$CRI_ENDPOINT" --timeout 5s \
    pods --namespace "^$BASIC_NS\$" --name "^$1\$" --state ready -q 2>/dev/null
}

api_phase_running() {
  [ "$(kubectl -n "$BASIC_NS" get pod "$BASIC_POD" -o 'jsonpath={.status.phase}' 2>/dev/null)" = Running ]
}
parent_running() { api_phase_running && sandbox_ready "$BASIC_POD"; }

# seen_by NAME: what the pod NAME last wrote to $OUT/seen (it reads its mounts every second)
seen_by() { grep -q "^$1 read " "$OUT/seen" 2>/dev/null; }

metric_is() { # metric_is SAMPLE VALUE
  local text
  text=$(curl -sf --max-time 2 "http://$ADMIN_ADDR/metrics") || return 1
  grep -qx "$1 $2" <<<"$text"
}
agent_ready() { curl -sf --max-time 2 "http://$ADMIN_ADDR/readyz" >/dev/null; }

show_status() {
  say "\$ pod-checkpointer status --root $AGENT_ROOT --manifest-dir $MANIFEST_DIR"
  "$AGENT" status --root "$AGENT_ROOT" --manifest-dir "$MANIFEST_DIR" | indent ||
    fail "pod-checkpointer status failed"
}

show_log() { # show_log ACTION...: the agent's log lines for these actions
  local a pattern=""
  for a in "$@"; do pattern+="${pattern:+|}\"action\":\"$a\""; done
  say "agent log ($*):"
  grep -E "$pattern" "$AGENT_LOG" | tail -n 4 | indent || true
}

# ---------------------------------------------------------------------------------------------
# the agent, run on the host

start_agent() {
  env -u POD_NAME -u POD_NAMESPACE "$AGENT" \
    --node-name "$NODE_NAME" --kubeconfig "$KUBECONFIG" \
    --cri-endpoint "$CRI_ENDPOINT" --kubelet-url "$KUBELET_READONLY_URL" \
    --root "$AGENT_ROOT" --manifest-dir "$MANIFEST_DIR" \
    --namespaces "$BASIC_NS" --grace-period "$BASIC_GRACE" --poll-interval 500ms \
    --admin-addr "$ADMIN_ADDR" --log-format json --log-level info \
    </dev/null >/dev/null 2>"$AGENT_LOG" &
  AGENT_PID=$!
}

stop_agent() { # SIGTERM, up to 10 s, then SIGKILL; sets AGENT_RC
  [ -n "$AGENT_PID" ] || return 0
  local pid=$AGENT_PID deadline=$(($(now_us) + 10000000))
  AGENT_PID=""
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$(now_us)" -ge "$deadline" ]; then
      echo "the agent did not exit within 10s of SIGTERM: SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
      deadline=$((deadline + 10000000))
    fi
    sleep 0.1
  done
  AGENT_RC=0
  wait "$pid" || AGENT_RC=$?
}

agent_alive() { # the wait guard: a dead agent will not do what we wait for
  if [ -n "$AGENT_PID" ] && ! kill -0 "$AGENT_PID" 2>/dev/null; then
    fail "the agent exited while waiting for: $1"
  fi
}

agent_log_tail() {
  if [ -n "${AGENT_LOG:-}" ] && [ -s "$AGENT_LOG" ]; then
    echo "---- last agent log lines ($AGENT_LOG)"
    tail -n 25 "$AGENT_LOG"
  fi
}

# =============================================================================================

chapter_basic() {
  AGENT_ROOT=$WORK/basic/root
  AGENT_LOG=$WORK/basic/agent.log
  OUT=$WORK/basic/out
  mkdir -p "$AGENT_ROOT" "$OUT"
  STOP_HOOKS+=(stop_agent)
  FAIL_HOOKS+=(agent_log_tail)
  WAIT_GUARD=agent_alive

  title "basic: a busybox checkpoint's whole life (plain node, the agent on the host)"
  node_up plain
  step "node up: $NODE_NAME (kubelet static pod dir $MANIFEST_DIR)"

  node_sh namespace "$BASIC_NS" # namespace + default ServiceAccount + kube-root-ca.crt, at once
  # left over from a run with DEMO_KEEP=1
  kubectl -n "$BASIC_NS" delete pod "$BASIC_POD" --ignore-not-found --grace-period=0 --force >/dev/null 2>&1 || true
  rm -f "$(active_manifest)"
  kubectl apply -f - >/dev/null <<EOF || fail "kubectl apply (Secret, ConfigMap, Pod)"
apiVersion: v1
kind: Secret
metadata: {name: demo-creds, namespace: $BASIC_NS}
stringData: {password: s3cret}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: demo-settings, namespace: $BASIC_NS}
data: {mode: safe}
---
# The parent: bound to this node, annotated, hostNetwork (like a control-plane component). Every
# second it writes what it reads from its Secret and ConfigMap to a host directory, under its own
# pod name, so we can tell which copy is running.
apiVersion: v1
kind: Pod
metadata:
  name: $BASIC_POD
  namespace: $BASIC_NS
  annotations: {$ANNOTATION: "true"}
spec:
  nodeName: $NODE_NAME
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  tolerations: [{operator: Exists}]
  containers:
  - name: main
    image: $BUSYBOX_IMAGE
    imagePullPolicy: Never
    env:
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    command:
    - /bin/sh
    - -c
    - |
      while true; do
        echo "\$POD_NAME read password=\$(cat /secret/password) mode=\$(cat /config/mode)" >/out/seen.tmp
        mv /out/seen.tmp /out/seen
        sleep 1
      done
    volumeMounts:
    - {name: secret, mountPath: /secret, readOnly: true}
    - {name: config, mountPath: /config, readOnly: true}
    - {name: out, mountPath: /out}
  volumes:
  - {name: secret, secret: {secretName: demo-creds, defaultMode: 0400}}
  - {name: config, configMap: {name: demo-settings}}
  - {name: out, hostPath: {path: $OUT, type: Directory}}
EOF
  wait_until "the parent running and reading its mounts" seen_by "$BASIC_POD"
  step "parent running: $BASIC_NS/$BASIC_POD, annotated $ANNOTATION=\"true\""
  say "it writes: $(cat "$OUT/seen")"

  title "basic: the agent writes a checkpoint"
  ADMIN_ADDR=127.0.0.1:$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  start_agent
  wait_until "the agent's initial sync (/readyz)" agent_ready
  step "agent ready: pid $AGENT_PID, admin http://$ADMIN_ADDR, log $AGENT_LOG"
  wait_until "the inactive checkpoint and its files" checkpoint_written
  step "checkpoint written: $(inactive_manifest)"
  say "secrets (and the service-account token) under $(secret_dir), configmaps under $(configmap_dir)"
  show_status
  show_log write

  title "basic: the API server goes away, then the node reboots"
  node_sh stop-apiserver
  step "API server stopped"
  wait_until "the agent to notice the API server is gone" metric_is pod_checkpointer_api_reachable 0
  step "agent noticed: pod_checkpointer_api_reachable 0"
  node_sh reboot-runtime
  step "node rebooted: kubelet restarted, every pod sandbox removed; the kubelet knows no API pods"
  wait_until "the checkpoint in the kubelet's static pod dir" is_active
  step "checkpoint activated: $(active_manifest)"
  wait_until "a READY sandbox $BASIC_NS/$BASIC_POD-$NODE_NAME" sandbox_ready "$BASIC_POD-$NODE_NAME"
  step "served by the kubelet: static pod $BASIC_NS/$BASIC_POD-$NODE_NAME, sandbox $(ready_sandbox "$BASIC_POD-$NODE_NAME" | cut -c1-13) READY"
  wait_until "the static copy reading its checkpointed files" seen_by "$BASIC_POD-$NODE_NAME"
  step "the copy reads the checkpointed Secret and ConfigMap: $(cat "$OUT/seen")"
  show_status
  show_log activate

  title "basic: the API server comes back"
  node_sh start-apiserver
  step "API server back (/readyz ok)"
  wait_until "the agent to reconnect" metric_is pod_checkpointer_api_reachable 1
  step "agent reconnected: pod_checkpointer_api_reachable 1"
  wait_until "the parent running again (API phase Running, sandbox READY)" parent_running
  step "parent running again: phase Running, sandbox $(ready_sandbox "$BASIC_POD" | cut -c1-13) READY"
  wait_until "the checkpoint out of the static pod dir" not_active
  step "checkpoint deactivated: $(active_manifest) gone"
  wait_until "the kubelet to stop the static copy" sandbox_not_ready "$BASIC_POD-$NODE_NAME"
  step "kubelet stopped the static copy $BASIC_NS/$BASIC_POD-$NODE_NAME"
  show_log deactivate

  title "basic: the parent is deleted"
  kubectl -n "$BASIC_NS" delete pod "$BASIC_POD" --grace-period=0 --timeout=60s >/dev/null || fail "kubectl delete pod"
  step "parent deleted (kubectl delete pod --grace-period=0)"
  wait_until "the checkpoint removed after the grace period" checkpoint_gone
  step "checkpoint removed after the ${BASIC_GRACE} grace period: inactive manifest, secret and configmap dirs gone"
  show_status
  show_log grace_start remove

  title "basic: teardown"
  stop_agent
  [ "$AGENT_RC" = 0 ] || fail "the agent exited with status $AGENT_RC on SIGTERM (expected 0)"
  step "agent stopped by SIGTERM: exit 0"
  WAIT_GUARD=""
  if ! keep_node basic; then node_down || fail "the node did not come down clean"; fi
}
