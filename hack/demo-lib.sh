# shellcheck shell=bash
# What hack/demo.sh's chapters share: output and timing, polling with deadlines, the agent build,
# the test node (tests/node/node.sh) up and down, and the teardown that runs on success, failure
# and Ctrl-C. Sourced by hack/demo.sh (which sets ROOT), not run.

NODE_SH=$ROOT/tests/node/node.sh
export NODE_DIR=${NODE_DIR:-/tmp/pod-checkpointer-demo}
TIMEOUT=${DEMO_TIMEOUT:-120}

NODE_STARTED="" # 1 while a node this run brought up is up (so this run takes it down)
REUSED=""       # 1 when the node was up before the demo (it stays up)
WORK=""         # this run's directory: logs, the basic chapter's agent root
PASSED=""       # 1 once every chapter succeeded
STOP_HOOKS=()   # functions the teardown calls first (a chapter's background processes)
FAIL_HOOKS=()   # functions a failure calls to print what explains it

# ---------------------------------------------------------------------------------------------
# output and timing

now_us() { echo "${EPOCHREALTIME//[!0-9]/}"; } # microseconds, whatever the locale's decimal mark
DEMO_T0=$(now_us)
STEP_T0=$DEMO_T0

us_to_s() { # us_to_s MICROSECONDS: "12.3s" (signed)
  local us=$1 sign=""
  if [ "$us" -lt 0 ]; then sign=-; us=$((-us)); fi
  echo "$sign$((us / 1000000)).$((us / 100000 % 10))s"
}
secs_since() { us_to_s $(($(now_us) - $1)); } # secs_since T0_US: "12.3s"

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
  local hook
  printf '\n[%6s] FAILED: %s\n' "$(secs_since "$STEP_T0")" "$*" >&2
  for hook in "${FAIL_HOOKS[@]}"; do "$hook" >&2 || true; done
  exit 1
}

# ---------------------------------------------------------------------------------------------
# polling

# wait_until WHAT CHECK...: runs CHECK every 0.2 s until it succeeds; fails the demo after
# $TIMEOUT seconds. $WAIT_GUARD (a command, if set) runs first each time and fails the demo at
# once when something the wait depends on died.
WAIT_GUARD=""
wait_until() {
  local what=$1; shift
  local deadline=$(($(now_us) + TIMEOUT * 1000000))
  until "$@"; do
    if [ -n "$WAIT_GUARD" ]; then $WAIT_GUARD "$what"; fi
    [ "$(now_us)" -lt "$deadline" ] || fail "timed out after ${TIMEOUT}s waiting for: $what"
    sleep 0.2
  done
}

# ---------------------------------------------------------------------------------------------
# the agent binary

# A debug build: it is what the self-hosted harness images by default (tests/node/selfhosted.sh)
# and what `cargo test` builds, so on a machine that ran the tests this takes seconds, where a
# release build took ~5 minutes; the demo measures the node, not the agent's speed.
build_agent() {
  command -v cargo >/dev/null || PATH=$HOME/.cargo/bin:$PATH
  command -v cargo >/dev/null || fail "cargo not found (install Rust: https://rustup.rs)"
  cargo build --locked --bin pod-checkpointer
  AGENT=${CARGO_TARGET_DIR:-$ROOT/target}/debug/pod-checkpointer
  [ -x "$AGENT" ] || fail "no agent binary at $AGENT"
  export AGENT_BIN=$AGENT # the binary node.sh up --self-hosted puts in the agent's image
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

# node_up plain|self-hosted: brings the node in $NODE_DIR up (or reuses it if it is already up in
# that mode), then loads its environment (node.sh env: NODE_NAME KUBECONFIG CRI_ENDPOINT
# MANIFEST_DIR ...; PATH gets kubectl and crictl).
node_up() {
  local mode=$1 args=()
  [ "$mode" = self-hosted ] && args=(--self-hosted)
  if our_node_up; then
    local have=plain
    [ -f "$NODE_DIR/self-hosted" ] && have=self-hosted
    [ "$have" = "$mode" ] || fail "the node in $NODE_DIR is up $have, this chapter needs it $mode.
  Take it down first: NODE_DIR=$NODE_DIR bash $NODE_SH down"
    REUSED=1
    say "reusing the $mode node already up in $NODE_DIR (it stays up)"
  elif other_node_up; then
    fail "another cluster is up on this machine (ports 6443/10250/10255 are fixed: only one can run).
  Take it down (NODE_DIR=<its dir> bash tests/node/node.sh down; the tests use /tmp/pod-checkpointer-node),
  or run the demo on it: NODE_DIR=<its dir> bash hack/demo.sh"
  else
    NODE_STARTED=1
    say "bringing the node up $mode (NODE_DIR=$NODE_DIR; log: $WORK/node.log)"
    say "(the first time on a machine this builds Kubernetes from source: ~12 min)"
  fi
  node_sh up "${args[@]}"
  local env
  env=$(bash "$NODE_SH" env 2>/dev/null) || fail "node.sh env failed"
  eval "$env"
}

# node_down: `node.sh down`, then `node.sh leftovers` must find nothing (processes, mounts,
# cgroups, paths): the demo leaves the machine as it found it. Only for a node this run started.
node_down() {
  [ -n "$NODE_STARTED" ] || return 0
  NODE_STARTED=""
  local t0
  t0=$(now_us)
  echo "+ node.sh down" >>"$WORK/node.log"
  if ! bash "$NODE_SH" down >>"$WORK/node.log" 2>&1; then
    echo "node.sh down failed; see $WORK/node.log" >&2
    return 1
  fi
  if ! bash "$NODE_SH" leftovers >"$WORK/leftovers" 2>&1; then
    echo "node.sh leftovers after down:" >&2
    indent <"$WORK/leftovers" >&2
    return 1
  fi
  printf '[%6s] node down; node.sh leftovers: %s\n' "$(secs_since "$t0")" "$(tail -n 1 "$WORK/leftovers")"
}

# ---------------------------------------------------------------------------------------------
# teardown: on success, failure, Ctrl-C

cleanup() {
  local rc=$? hook
  trap - EXIT INT TERM
  set +e
  for hook in "${STOP_HOOKS[@]}"; do "$hook"; done
  if [ "${DEMO_KEEP:-}" = 1 ] && { [ -n "$NODE_STARTED" ] || [ -n "$REUSED" ]; }; then
    title "DEMO_KEEP=1: the cluster stays up"
    echo "  export NODE_DIR=$NODE_DIR; eval \"\$(bash $NODE_SH env)\"; bash $NODE_SH api-status"
    echo "  take it down: NODE_DIR=$NODE_DIR bash $NODE_SH down"
    [ -n "$WORK" ] && echo "  this run's files (logs, agent root): $WORK"
  elif [ -n "$NODE_STARTED" ]; then
    node_down || rc=1
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
    else
      echo "logs kept in $WORK" >&2
    fi
  fi
  exit "$rc"
}
