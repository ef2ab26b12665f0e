#!/usr/bin/env bash
# The pod-checkpointer demo: one checkpoint's whole life on a real single-node cluster.
#
#   bash hack/demo.sh          (or: make demo)
#
# 1. Builds the agent (cargo build --release) and brings up the test node (tests/node/node.sh up:
#    etcd, kube-apiserver, containerd, kubelet; the first run on a machine builds Kubernetes from
#    source, ~12 min).
# 2. Creates namespace `demo` with a Secret, a ConfigMap and an annotated hostNetwork busybox pod
#    `parent` that mounts both, starts the agent on the host, and follows its checkpoint:
#      written (inactive manifest + files) -> API server stopped -> node rebooted (every pod sandbox
#      gone) -> checkpoint activated, the kubelet runs the static copy `parent-<node>` -> API server
#      back -> parent running again -> checkpoint deactivated -> parent deleted -> checkpoint
#      removed after the grace period.
#    Each line says how long its step took. Every wait polls with a deadline; a failure prints the
#    agent's last log lines and exits non-zero.
# 3. Stops the agent (SIGTERM; it must exit 0) and takes the node down, also on failure or Ctrl-C.
#
# Settings (environment):
#   DEMO_KEEP=1      leave the cluster up at the end (and keep the agent's files and log)
#   DEMO_VERBOSE=1   show node.sh's own output (it always goes to the run directory's node.log)
#   DEMO_TIMEOUT=N   deadline of each wait in seconds (default 120)
#   NODE_DIR=DIR     the cluster's state directory (default /tmp/pod-checkpointer-demo). Only one
#                    cluster can run per machine (fixed ports 6443/10250/10255): the demo refuses to
#                    start while another one is up, unless NODE_DIR names it; a cluster that was
#                    already up is reused and left up.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NODE_SH=$ROOT/tests/node/node.sh
export NODE_DIR=${NODE_DIR:-/tmp/pod-checkpointer-demo}
TIMEOUT=${DEMO_TIMEOUT:-120}
GRACE=5s # the agent's --grace-period: how long a deleted parent's checkpoint is kept

NS=demo
POD=parent
ANNOTATION=checkpointer.alpha.coreos.com/checkpoint

AGENT_PID=""    # set while the agent runs
AGENT_RC=""     # its exit status once stopped
NODE_STARTED="" # 1 when this run brought the node up (and so takes it down)
REUSED=""       # 1 when the node was already up (it stays up)
WORK=""         # this run's directory: agent root, logs
PASSED=""       # 1 once every step succeeded

# ---------------------------------------------------------------------------------------------
# output and timing

now_us() { echo "${EPOCHREALTIME//[!0-9]/}"; } # microseconds, whatever the locale's decimal mark
DEMO_T0=$(now_us)
STEP_T0=$DEMO_T0

secs_since() { # secs_since T0_US: "12.3s"
  local us=$(($(now_us) - $1))
  echo "$((us / 1000000)).$((us / 100000 % 10))s"
}

# step MESSAGE: prints MESSAGE with how long the step took, and starts the next step
step() {
  printf '[%6s] %s\n' "$(secs_since "$STEP_T0")" "$*"
  STEP_T0=$(now_us)
}

say() { printf '         %s\n' "$*"; }
indent() { sed 's/^/           /'; }
title() { # title TEXT: a new part of the story (the step timer restarts)
  printf '\n== %s\n' "$*"
  STEP_T0=$(now_us)
}

fail() {
  printf '\n[%6s] FAILED: %s\n' "$(secs_since "$STEP_T0")" "$*" >&2
  if [ -n "$WORK" ] && [ -s "$WORK/agent.log" ]; then
    echo "---- last agent log lines ($WORK/agent.log)" >&2
    tail -n 25 "$WORK/agent.log" >&2
  fi
  exit 1
}

# ---------------------------------------------------------------------------------------------
# polling

# wait_until WHAT CHECK...: runs CHECK every 0.2 s until it succeeds; fails the demo after
# $TIMEOUT seconds, or at once if the agent died.
wait_until() {
  local what=$1; shift
  local deadline=$(($(now_us) + TIMEOUT * 1000000))
  until "$@"; do
    if [ -n "$AGENT_PID" ] && ! kill -0 "$AGENT_PID" 2>/dev/null; then
      fail "the agent exited while waiting for: $what"
    fi
    [ "$(now_us)" -lt "$deadline" ] || fail "timed out after ${TIMEOUT}s waiting for: $what"
    sleep 0.2
  done
}

# ---------------------------------------------------------------------------------------------
# the node (tests/node/node.sh)

node_sh() { # node_sh ARGS...: output to $WORK/node.log (and the terminal with DEMO_VERBOSE=1)
  echo "+ node.sh $*" >>"$WORK/node.log"
  if [ "${DEMO_VERBOSE:-}" = 1 ]; then
    bash "$NODE_SH" "$@" 2>&1 | tee -a "$WORK/node.log" | indent || fail "node.sh $* failed"
  elif ! bash "$NODE_SH" "$@" >>"$WORK/node.log" 2>&1; then
    tail -n 15 "$WORK/node.log" >&2
    fail "node.sh $* failed (log: $WORK/node.log)"
  fi
}

our_node_up() { # the holder of $NODE_DIR's node namespace runs
  local pid
  pid=$(cat "$NODE_DIR/pids/holder.pid" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

port_open() { (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

other_node_up() { # the fixed ports are taken, or a control plane runs (the API may be down)
  local p comm
  for p in 6443 10250 10255; do port_open "$p" && return 0; done
  for p in /proc/[0-9]*; do
    comm=$(cat "$p/comm" 2>/dev/null) || continue
    case $comm in etcd | kube-apiserver | kubelet) return 0 ;; esac
  done
  return 1
}

# ---------------------------------------------------------------------------------------------
# what the demo looks at

inactive_manifest() { echo "$AGENT_ROOT/etc/kubernetes/inactive-manifests/$NS-$POD.json"; }
active_manifest() { echo "$MANIFEST_DIR/$NS-$POD.json"; }
secret_dir() { echo "$AGENT_ROOT/etc/kubernetes/checkpoint-secrets/$NS/$POD"; }
configmap_dir() { echo "$AGENT_ROOT/etc/kubernetes/checkpoint-configmaps/$NS/$POD"; }

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
    pods --namespace "^$NS\$" --name "^$1\$" --state ready -q 2>/dev/null
}

api_phase_running() {
  [ "$(kubectl -n "$NS" get pod "$POD" -o 'jsonpath={.status.phase}' 2>/dev/null)" = Running ]
}
parent_running() { api_phase_running && sandbox_ready "$POD"; }

# seen_by NAME: what the pod NAME last wrote to $WORK/out/seen (it reads its mounts every second)
seen_by() { grep -q "^$1 read " "$WORK/out/seen" 2>/dev/null; }

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
# the agent

start_agent() {
  env -u POD_NAME -u POD_NAMESPACE "$AGENT" \
    --node-name "$NODE_NAME" --kubeconfig "$KUBECONFIG" \
    --cri-endpoint "$CRI_ENDPOINT" --kubelet-url "$KUBELET_READONLY_URL" \
    --root "$AGENT_ROOT" --manifest-dir "$MANIFEST_DIR" \
    --namespaces "$NS" --grace-period "$GRACE" --poll-interval 500ms \
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

# ---------------------------------------------------------------------------------------------
# teardown: on success, failure, Ctrl-C

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  stop_agent
  if [ "${DEMO_KEEP:-}" = 1 ]; then
    title "DEMO_KEEP=1: the cluster stays up"
    echo "  export NODE_DIR=$NODE_DIR; eval \"\$(bash $NODE_SH env)\"; kubectl -n $NS get pods"
    echo "  take it down: NODE_DIR=$NODE_DIR bash $NODE_SH down"
    [ -n "$WORK" ] && echo "  this run's files (agent root, agent.log, node.log): $WORK"
  elif [ -n "$NODE_STARTED" ]; then
    local t0
    t0=$(now_us)
    if bash "$NODE_SH" down >>"$WORK/node.log" 2>&1; then
      printf '[%6s] node down\n' "$(secs_since "$t0")"
    else
      echo "node.sh down failed; see $WORK/node.log" >&2
      rc=1
    fi
  elif [ -n "$REUSED" ]; then
    echo "the cluster in $NODE_DIR was up before the demo: left up"
  fi
  if [ "$rc" = 0 ] && [ -z "$PASSED" ]; then rc=1; fi # an `exit 0` before the end is no success
  if [ "$rc" = 0 ]; then
    printf '\n== demo passed in %s\n' "$(secs_since "$DEMO_T0")"
  elif [ "$rc" -gt 128 ]; then
    printf '\n== demo interrupted after %s\n' "$(secs_since "$DEMO_T0")" >&2
  else
    printf '\n== demo FAILED (exit %s) after %s\n' "$rc" "$(secs_since "$DEMO_T0")" >&2
  fi
  if [ -n "$WORK" ]; then
    if [ "$rc" = 0 ] && [ "${DEMO_KEEP:-}" != 1 ]; then
      rm -rf "$WORK"
    elif [ "$rc" != 0 ] && [ -e "$WORK/node.log" ]; then
      echo "logs kept in $WORK (agent.log, node.log)" >&2
    elif [ "$rc" != 0 ]; then
      rm -rf "$WORK"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# =============================================================================================
# 1. build, node up, the parent pod

[ "$(id -u)" = 0 ] || fail "run as root: the test node needs namespaces, mounts and cgroups"
cd "$ROOT"
WORK=$(mktemp -d /tmp/pod-checkpointer-demo-run.XXXXXX)
AGENT_ROOT=$WORK/root
AGENT_LOG=$WORK/agent.log
mkdir -p "$AGENT_ROOT" "$WORK/out"

title "pod-checkpointer demo: one checkpoint's whole life"
if our_node_up; then
  REUSED=1
elif other_node_up; then
  fail "another cluster is up on this machine (ports 6443/10250/10255 are fixed: only one can run).
  Take it down (NODE_DIR=<its dir> bash tests/node/node.sh down; the tests use /tmp/pod-checkpointer-node),
  or run the demo on it: NODE_DIR=<its dir> bash hack/demo.sh"
fi
command -v cargo >/dev/null || PATH=$HOME/.cargo/bin:$PATH
command -v cargo >/dev/null || fail "cargo not found (install Rust: https://rustup.rs)"
cargo build --release --locked --bin pod-checkpointer
AGENT=${CARGO_TARGET_DIR:-$ROOT/target}/release/pod-checkpointer
[ -x "$AGENT" ] || fail "no agent binary at $AGENT"
step "agent built: $AGENT"

if [ -n "$REUSED" ]; then
  say "reusing the cluster already up in $NODE_DIR"
else
  NODE_STARTED=1
  say "bringing the node up (NODE_DIR=$NODE_DIR; log: $WORK/node.log)"
  say "(the first time on a machine this builds Kubernetes from source: ~12 min)"
fi
node_sh up
NODE_ENV=$(bash "$NODE_SH" env 2>/dev/null) || fail "node.sh env failed"
eval "$NODE_ENV" # NODE_NAME KUBECONFIG CRI_ENDPOINT MANIFEST_DIR BUSYBOX_IMAGE ...; PATH += kubectl crictl
step "node up: $NODE_NAME (kubelet static pod dir $MANIFEST_DIR)"

node_sh namespace "$NS" # namespace + default ServiceAccount + kube-root-ca.crt, at once
# left over from a run with DEMO_KEEP=1
kubectl -n "$NS" delete pod "$POD" --ignore-not-found --grace-period=0 --force >/dev/null 2>&1 || true
rm -f "$(active_manifest)"
kubectl apply -f - >/dev/null <<EOF || fail "kubectl apply (Secret, ConfigMap, Pod)"
apiVersion: v1
kind: Secret
metadata: {name: demo-creds, namespace: $NS}
stringData: {password: s3cret}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: demo-settings, namespace: $NS}
data: {mode: safe}
---
# The parent: bound to this node, annotated, hostNetwork (like a control-plane component). Every
# second it writes what it reads from its Secret and ConfigMap to a host directory, under its own
# pod name, so we can tell which copy is running.
apiVersion: v1
kind: Pod
metadata:
  name: $POD
  namespace: $NS
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
  - {name: out, hostPath: {path: $WORK/out, type: Directory}}
EOF
wait_until "the parent running and reading its mounts" seen_by "$POD"
step "parent running: $NS/$POD, annotated $ANNOTATION=\"true\""
say "it writes: $(cat "$WORK/out/seen")"

# =============================================================================================
# 2. one checkpoint's life

title "the agent writes a checkpoint"
ADMIN_ADDR=127.0.0.1:$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start_agent
wait_until "the agent's initial sync (/readyz)" agent_ready
step "agent ready: pid $AGENT_PID, admin http://$ADMIN_ADDR, log $AGENT_LOG"
wait_until "the inactive checkpoint and its files" checkpoint_written
step "checkpoint written: $(inactive_manifest)"
say "secrets (and the service-account token) under $(secret_dir), configmaps under $(configmap_dir)"
show_status
show_log write

title "the API server goes away, then the node reboots"
node_sh stop-apiserver
step "API server stopped"
wait_until "the agent to notice the API server is gone" metric_is pod_checkpointer_api_reachable 0
step "agent noticed: pod_checkpointer_api_reachable 0"
node_sh reboot-runtime
step "node rebooted: kubelet restarted, every pod sandbox removed; the kubelet knows no API pods"
wait_until "the checkpoint in the kubelet's static pod dir" is_active
step "checkpoint activated: $(active_manifest)"
wait_until "a READY sandbox $NS/$POD-$NODE_NAME" sandbox_ready "$POD-$NODE_NAME"
step "served by the kubelet: static pod $NS/$POD-$NODE_NAME, sandbox $(ready_sandbox "$POD-$NODE_NAME" | cut -c1-13) READY"
wait_until "the static copy reading its checkpointed files" seen_by "$POD-$NODE_NAME"
step "the copy reads the checkpointed Secret and ConfigMap: $(cat "$WORK/out/seen")"
show_status
show_log activate

title "the API server comes back"
node_sh start-apiserver
step "API server back (/readyz ok)"
wait_until "the agent to reconnect" metric_is pod_checkpointer_api_reachable 1
step "agent reconnected: pod_checkpointer_api_reachable 1"
wait_until "the parent running again (API phase Running, sandbox READY)" parent_running
step "parent running again: phase Running, sandbox $(ready_sandbox "$POD" | cut -c1-13) READY"
wait_until "the checkpoint out of the static pod dir" not_active
step "checkpoint deactivated: $(active_manifest) gone"
wait_until "the kubelet to stop the static copy" sandbox_not_ready "$POD-$NODE_NAME"
step "kubelet stopped the static copy $NS/$POD-$NODE_NAME"
show_log deactivate

title "the parent is deleted"
kubectl -n "$NS" delete pod "$POD" --grace-period=0 --timeout=60s >/dev/null || fail "kubectl delete pod"
step "parent deleted (kubectl delete pod --grace-period=0)"
wait_until "the checkpoint removed after the grace period" checkpoint_gone
step "checkpoint removed after the ${GRACE} grace period: inactive manifest, secret and configmap dirs gone"
show_status
show_log grace_start remove

# =============================================================================================
# 3. teardown (the rest happens in cleanup)

title "teardown"
stop_agent
[ "$AGENT_RC" = 0 ] || fail "the agent exited with status $AGENT_RC on SIGTERM (expected 0)"
step "agent stopped by SIGTERM: exit 0"
PASSED=1
