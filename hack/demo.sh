#!/usr/bin/env bash
# The pod-checkpointer demo: a self-hosted control plane survives a reboot with no API anywhere.
#
#   bash hack/demo.sh                (or: make demo)           the self-hosted chapter, ~2 min
#   DEMO=basic bash hack/demo.sh     (or: DEMO=basic make demo) a busybox checkpoint's whole life
#   DEMO=all bash hack/demo.sh       both, one after the other (each on its own node)
#
# Self-hosted chapter (the agent's headline use):
# 1. Builds the agent (debug build) and brings the test node up self-hosted
#    (tests/node/node.sh up --self-hosted): the agent installed with the project's chart, then
#    kube-apiserver pivoted from a bootstrap process to an annotated DaemonSet pod, checkpointed by
#    the agent. The first run on a machine builds Kubernetes from source, ~12 min.
# 2. Reboots the node (node.sh reboot-runtime: kubelet stopped, every pod sandbox removed, kubelet
#    started; the kubelet knows no API pods and there is no API anywhere) while the host watches:
#    /readyz of https://127.0.0.1:6443 every 100 ms, who listens on port 6443 in the node (the
#    checkpoint copy or the DaemonSet's pod, by the listening process's container), and the
#    kubelet's static pod directory. It prints the timeline: API gone at t, checkpoint active,
#    API back served by the checkpoint copy, the parent (the DaemonSet's pod) serving again,
#    checkpoint deactivated, nothing left over (no copy in the static pod directory, the parent's
#    inactive checkpoint kept for the next reboot).
# 3. Takes the node down; `node.sh leftovers` must find nothing. Also on failure or Ctrl-C.
# The basic chapter is hack/demo-basic.sh (see its header for what it adds).
#
# Every wait polls with a deadline; a failure says what it waited for and exits non-zero.
#
# Settings (environment):
#   DEMO=selfhosted|basic|all   which chapters (default selfhosted)
#   DEMO_KEEP=1      leave the cluster up at the end (and keep this run's logs)
#   DEMO_VERBOSE=1   show node.sh's own output (it always goes to the run directory's node.log)
#   DEMO_TIMEOUT=N   deadline of each wait in seconds (default 120)
#   NODE_DIR=DIR     the cluster's state directory (default /tmp/pod-checkpointer-demo). Only one
#                    cluster can run per machine (fixed ports 6443/10250/10255): the demo refuses to
#                    start while another one is up, unless NODE_DIR names it; a cluster that was
#                    already up (in the chapter's mode) is reused and left up.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=hack/demo-lib.sh
. "$ROOT/hack/demo-lib.sh"
# shellcheck source=hack/demo-basic.sh
. "$ROOT/hack/demo-basic.sh"

SH_NS=kube-system   # where node.sh puts the self-hosted API server and the agent
SH_DS=kube-apiserver
API_PORT=6443
EVENTS=""           # the observer's record: "EPOCH_US api=up|down owner=POD|- active=NAME,...|-"
OBSERVER_PID=""
PARENT=""           # the DaemonSet's pod that serves the API before the reboot
declare -A POD_OF=() # container id -> pod name (top level: a `declare` in a function is local)

# ---------------------------------------------------------------------------------------------
# what the self-hosted chapter looks at, from the host

api_ready() {
  curl -sf --max-time 0.9 --cacert "$NODE_DIR/pki/ca.crt" --cert "$NODE_DIR/pki/admin.crt" \
    --key "$NODE_DIR/pki/admin.key" "https://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1
}

# active_copies: the kube-apiserver checkpoints in the kubelet's static pod directory, as
# comma-separated manifest names (kube-system-<pod>), empty if none.
active_copies() {
  local f names=()
  for f in "$MANIFEST_DIR/$SH_NS-$SH_DS"-*.json; do
    [ -e "$f" ] && names+=("$(basename "$f" .json)")
  done
  (IFS=,; echo "${names[*]}")
}

# port_owner: the pod whose process listens on the API port in the node's network namespace: the
# checkpoint copy (static pod `<parent>-<node>`) or the DaemonSet's pod; empty if nothing listens.
# /readyz alone cannot tell them apart: both are the same kube-apiserver with the same flags.
port_owner() {
  local line pid cid
  line=$(nsenter --target "$HOLDER" --net ss -Hltnp "sport = :$API_PORT" 2>/dev/null) || return 0
  pid=$(grep -o 'pid=[0-9]*' <<<"$line" | head -n 1) || return 0
  pid=${pid#pid=}
  cid=$(grep -o '[0-9a-f]\{64\}' "/proc/$pid/cgroup" 2>/dev/null | head -n 1) || true
  if [ -z "$cid" ]; then # not in a container: the bootstrap process
    echo "process-$pid"
    return 0
  fi
  if [ -z "${POD_OF[$cid]:-}" ]; then
    POD_OF[$cid]=$(crictl --config "$CRI_CONFIG_FILE" --timeout 3s inspect "$cid" 2>/dev/null |
      grep -o '"io.kubernetes.pod.name": *"[^"]*"' | head -n 1 | sed 's/.*: *"//; s/"$//') || true
  fi
  echo "${POD_OF[$cid]:-container-${cid:0:12}}"
}

# observe: until killed, every 100 ms, appends a line to $EVENTS whenever /readyz, the port's
# owner or the active copies change. One loop for all three, so a line is one consistent sample.
observe() {
  set +e # a failed probe is a sample ("down", "-"), never the end of the observer
  local last="" now t0 spent api owner active
  while :; do
    t0=$(now_us)
    if api_ready; then api=up; else api=down; fi
    owner=$(port_owner)
    active=$(active_copies)
    now="api=$api owner=${owner:--} active=${active:--}"
    if [ "$now" != "$last" ]; then
      echo "$t0 $now" >>"$EVENTS"
      last=$now
    fi
    spent=$(($(now_us) - t0))
    if [ "$spent" -lt 100000 ]; then sleep "0.$(printf %06d $((100000 - spent)))"; fi
  done
}

start_observer() {
  EVENTS=$WORK/selfhosted/events
  : >"$EVENTS"
  observe &
  OBSERVER_PID=$!
}

stop_observer() {
  [ -n "$OBSERVER_PID" ] || return 0
  kill "$OBSERVER_PID" 2>/dev/null || true
  wait "$OBSERVER_PID" 2>/dev/null || true
  OBSERVER_PID=""
}

observer_alive() { # the wait guard
  if [ -n "$OBSERVER_PID" ] && ! kill -0 "$OBSERVER_PID" 2>/dev/null; then
    fail "the observer exited while waiting for: $1"
  fi
}

note() { echo "$1 note $2" >>"$EVENTS"; } # note EPOCH_US TEXT: a line of the timeline

# event_time FROM_US REGEX: the time of the first sample at or after FROM matching REGEX
event_time() {
  awk -v from="$1" -v re="$2" '$2 != "note" && $1 >= from && $0 ~ re { print $1; found = 1; exit }
    END { exit !found }' "$EVENTS"
}
event_seen() { event_time "$@" >/dev/null; }

# wait_event VAR WHAT FROM_US REGEX: waits until a sample matches; VAR gets its time
wait_event() {
  local var=$1 what=$2 from=$3 re=$4
  wait_until "$what" event_seen "$from" "$re"
  printf -v "$var" %s "$(event_time "$from" "$re")"
}

# ready_daemon_pod: the DaemonSet's pod, Ready, not being deleted (a copy's mirror pod left out)
ready_daemon_pod() {
  kubectl -n "$SH_NS" get pods -l "app=$SH_DS" -o json --request-timeout=3s 2>/dev/null | python3 -c '
import json, sys
live = []
for p in json.load(sys.stdin)["items"]:
    m = p["metadata"]
    if "kubernetes.io/config.mirror" in m.get("annotations", {}) or m.get("deletionTimestamp"):
        continue
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", []))
    live.append((m["name"], ready))
if len(live) == 1 and live[0][1]:
    print(live[0][0])
else:
    sys.exit(1)'
}

daemon_pod_ready() { ready_daemon_pod >/dev/null; }

inactive_checkpoint() { echo "$INACTIVE_MANIFEST_DIR/$SH_NS-$1.json"; }

# healthy: the DaemonSet's pod is Ready and holds the port, it has its checkpoint, no copy runs
healthy() {
  PARENT=$(ready_daemon_pod) || return 1
  [ -f "$(inactive_checkpoint "$PARENT")" ] && [ -z "$(active_copies)" ] &&
    [ "$(port_owner)" = "$PARENT" ]
}

copy_sandbox_ready() { # crictl answered and lists a READY sandbox of the copy
  local ids
  ids=$(crictl --config "$CRI_CONFIG_FILE" --timeout 3s pods --namespace "^$SH_NS\$" \
    --name "^$PARENT-$NODE_NAME\$" --state ready -q 2>/dev/null) || return 0
  [ -n "$ids" ]
}

# nothing_left: no copy in the static pod directory, no copy running; the parent's inactive
# checkpoint (and its Secret files) kept for the next reboot, and no other API server checkpoint.
nothing_left() {
  local others
  [ -z "$(active_copies)" ] && ! copy_sandbox_ready &&
    [ -f "$(inactive_checkpoint "$PARENT")" ] &&
    [ -n "$(find "$CHECKPOINT_SECRET_DIR/$SH_NS/$PARENT" -name apiserver.crt 2>/dev/null)" ] || return 1
  others=$(find "$INACTIVE_MANIFEST_DIR" -name "$SH_NS-$SH_DS-*.json" ! -name "$SH_NS-$PARENT.json")
  [ -z "$others" ]
}

who() { # who OWNER: the port's owner in words
  case $1 in
    "$PARENT-$NODE_NAME") echo "the checkpoint copy (static pod $SH_NS/$1)" ;;
    "$PARENT") echo "the parent (DaemonSet pod $SH_NS/$1)" ;;
    -) echo "nothing" ;;
    *) echo "$1" ;;
  esac
}

# narrate ZERO_US FROM_US: the samples and notes since FROM in words, times relative to ZERO
narrate() {
  local zero=$1 from=$2 t kind rest api owner active papi="" powner="" pactive="" n rel suffix
  while read -r t kind rest; do
    if [ "$kind" = note ]; then
      [ "$t" -ge "$from" ] && printf '   t%-8s %s\n' "$(rel "$t" "$zero")" "$rest"
      continue
    fi
    api=${kind#api=}
    read -r owner active <<<"$rest"
    owner=${owner#owner=}
    active=${active#active=}
    if [ "$t" -ge "$from" ]; then
      rel=$(rel "$t" "$zero")
      for n in ${active//,/ }; do
        [[ ",$pactive," == *",$n,"* ]] || [ "$n" = - ] ||
          printf '   t%-8s %s\n' "$rel" "checkpoint active: $n.json in the static pod directory"
      done
      for n in ${pactive//,/ }; do
        [[ ",$active," == *",$n,"* ]] || [ "$n" = - ] ||
          printf '   t%-8s %s\n' "$rel" "checkpoint deactivated: $n.json out of the static pod directory"
      done
      if [ "$api" != "$papi" ] && [ "$api" = up ]; then
        printf '   t%-8s %s\n' "$rel" "API up (/readyz 200), served by $(who "$owner")"
      elif [ "$api" != "$papi" ] && [ "$owner" = - ]; then
        printf '   t%-8s %s\n' "$rel" "API gone (/readyz fails): nothing listens on port $API_PORT"
      elif [ "$api" != "$papi" ]; then
        printf '   t%-8s %s\n' "$rel" "API gone (/readyz fails); $(who "$owner") still holds port $API_PORT"
      elif [ "$owner" != "$powner" ] && [ "$owner" = - ]; then
        printf '   t%-8s %s\n' "$rel" "nothing listens on port $API_PORT"
      elif [ "$owner" != "$powner" ]; then
        suffix=""
        [ "$api" = down ] && suffix=" (not ready yet)"
        printf '   t%-8s %s\n' "$rel" "$(who "$owner") listens on port $API_PORT$suffix"
      fi
    fi
    papi=$api powner=$owner pactive=$active
  done < <(sort -s -n -k1,1 "$EVENTS")
}
rel() { # rel T ZERO: "+1.2s", "-0.3s", "" for 0
  local d=$(($1 - $2))
  if [ "$d" -eq 0 ]; then echo ""; elif [ "$d" -gt 0 ]; then echo "+$(us_to_s "$d")"; else us_to_s "$d"; fi
}

# api_down_total FROM TO: how long /readyz failed between two times (TO: a sample with the API up),
# and the longest stretch. The demo starts its record with the API up.
api_down_total() {
  sort -s -n -k1,1 "$EVENTS" | awk -v from="$1" -v to="$2" '
    BEGIN { was = 1; down = from }
    $2 == "note" { next }
    { t = $1; up = ($2 == "api=up") }
    t < from { was = up; next }
    t > to { exit }
    { if (was && !up) down = t
      if (!was && up) { d = t - down; total += d; if (d > longest) longest = d }
      was = up }
    END { printf "%.1fs in all, longest %.1fs\n", total / 1e6, longest / 1e6 }'
}

# agent_actions: what the agent logged about the API server's checkpoint, from every agent
# container (its DaemonSet pod and its own static copy), in time order
agent_actions() {
  local cid
  for cid in $(crictl --config "$CRI_CONFIG_FILE" --timeout 3s ps -a -q --name '^pod-checkpointer$' 2>/dev/null); do
    crictl --config "$CRI_CONFIG_FILE" --timeout 3s logs "$cid" 2>&1 |
      grep -E "\"action\":\"(activate|deactivate)\"" | grep -F "$PARENT" |
      sed "s/^/$(crictl --config "$CRI_CONFIG_FILE" inspect "$cid" 2>/dev/null |
        grep -o '"io.kubernetes.pod.name": *"[^"]*"' | head -n 1 | sed 's/.*: *"//; s/"$//') /" || true
  done | python3 -c '
import json, sys
rows = []
for line in sys.stdin:
    pod, _, raw = line.partition(" ")
    try:
        e = json.loads(raw)
    except ValueError:
        continue
    f = dict(e, **e.get("fields", {}))
    what = f.get("action", "?") + (" (" + f["reason"] + ")" if f.get("reason") else "")
    rows.append((f.get("timestamp", ""), "%s  %-24s by %s" % (f.get("timestamp", "")[11:23], what, pod)))
for _, r in sorted(rows):
    print(r)'
}

selfhosted_fail_info() { # what a failure of this chapter prints
  [ -n "$EVENTS" ] && [ -s "$EVENTS" ] || return 0
  echo "---- the observer's last samples ($EVENTS)"
  sort -s -n -k1,1 "$EVENTS" | tail -n 15
  echo "---- node.sh api-status"
  timeout 20 bash "$NODE_SH" api-status 2>&1
}

# =============================================================================================

chapter_selfhosted() {
  local first_us reboot_us kubelet_us gone_us active_us back_us back_owner parent_us deact_us sandboxes
  mkdir -p "$WORK/selfhosted"
  STOP_HOOKS+=(stop_observer)
  FAIL_HOOKS+=(selfhosted_fail_info)
  WAIT_GUARD=""

  title "self-hosted: kube-apiserver is a checkpointed DaemonSet pod"
  node_up self-hosted
  HOLDER=$(cat "$NODE_DIR/pids/holder.pid")
  step "node up self-hosted: the bootstrap kube-apiserver process handed over to the DaemonSet's pod"
  [ -f "$NODE_DIR/selfhosted/pivot-downtime" ] &&
    say "(the pivot left the cluster without an API for $(cat "$NODE_DIR/selfhosted/pivot-downtime")s)"
  wait_until "the DaemonSet's pod Ready, holding port $API_PORT, with its checkpoint" healthy
  step "$SH_NS/$PARENT serves the API; the agent wrote its checkpoint:"
  say "  $(inactive_checkpoint "$PARENT")"
  say "  and its Secrets (certificates, service-account keys) under $CHECKPOINT_SECRET_DIR/$SH_NS/$PARENT"
  say "\$ node.sh api-status"
  bash "$NODE_SH" api-status 2>&1 | indent

  title "self-hosted: the node reboots (node.sh reboot-runtime)"
  start_observer
  WAIT_GUARD=observer_alive
  # the record starts from a known state: the parent serving
  wait_event first_us "the observer's first sample" 0 "api=up owner=$PARENT active=-\$"
  reboot_us=$(now_us)
  note "$reboot_us" "node.sh reboot-runtime: kubelet stopped, every pod sandbox being removed"
  node_sh reboot-runtime
  kubelet_us=$(grep -o 'KUBELET_START_EPOCH=[0-9.]*' "$WORK/node.log" | tail -n 1 | cut -d= -f2)
  kubelet_us=${kubelet_us//./}
  [ -n "$kubelet_us" ] || fail "node.sh reboot-runtime did not say when the kubelet started"
  note "$kubelet_us" "kubelet started again: it knows no API pods, no API server anywhere"
  sandboxes=$(grep -o 'removed [0-9]* pod sandboxes' "$WORK/node.log" | tail -n 1) || true
  step "rebooted: kubelet stopped, ${sandboxes:-every pod sandbox removed}, kubelet started"

  wait_event gone_us "the API to go away" "$reboot_us" 'api=down'
  step "API gone"
  wait_event active_us "the API server's checkpoint in the static pod directory" "$reboot_us" \
    "active=([^ ]*,)?$SH_NS-$PARENT(,|\$)"
  step "checkpoint active: $MANIFEST_DIR/$SH_NS-$PARENT.json"
  wait_event back_us "the API to answer again" "$gone_us" 'api=up owner=[^-]'
  back_owner=$(awk -v t="$back_us" '$1 == t && $2 != "note" { sub("owner=", "", $3); print $3; exit }' "$EVENTS")
  [ "$back_owner" = "$PARENT-$NODE_NAME" ] ||
    fail "the API came back served by $(who "$back_owner"), not by the checkpoint copy $PARENT-$NODE_NAME"
  step "API back, served by $(who "$back_owner")"
  wait_event parent_us "the parent serving the API again, no copy active" "$back_us" \
    "api=up owner=$PARENT active=-\$"
  step "parent serving again: $(who "$PARENT")"
  deact_us=$(event_time "$active_us" 'active=-$') || fail "no sample without the copy active"
  wait_until "$SH_NS/$PARENT Ready in the API" daemon_pod_ready
  [ "$(ready_daemon_pod)" = "$PARENT" ] || fail "a different pod serves: $(ready_daemon_pod)"
  step "the API says: $SH_NS/$PARENT Ready (the same pod, restarted by the kubelet)"
  wait_until "nothing left over (no copy active or running; the parent's checkpoint kept)" nothing_left
  step "nothing left over"
  stop_observer
  WAIT_GUARD=""

  title "self-hosted: the timeline (host clock; /readyz polled every 100 ms; t = the API went away)"
  narrate "$gone_us" "$reboot_us"
  echo
  printf '   %-62s %s\n' \
    "API gone" "t" \
    "checkpoint active" "t+$(us_to_s $((active_us - gone_us)))" \
    "API back, served by the checkpoint copy" "t+$(us_to_s $((back_us - gone_us)))" \
    "checkpoint deactivated (the parent started; the copy yields)" "t+$(us_to_s $((deact_us - gone_us)))" \
    "parent (the DaemonSet's pod) serving again" "t+$(us_to_s $((parent_us - gone_us)))" \
    "API down between the reboot and the parent serving" "$(api_down_total "$reboot_us" "$parent_us")" \
    "kubelet start -> API back" "$(us_to_s $((back_us - kubelet_us)))"
  echo
  say "nothing left over:"
  say "  static pod directory: $(cd "$MANIFEST_DIR" && ls | tr '\n' ' ')(the agent's own copy: it always runs one)"
  say "  inactive checkpoints: $(cd "$INACTIVE_MANIFEST_DIR" && ls | tr '\n' ' ')(kept for the next reboot)"
  say "what the agent did (its log, every agent container on the node):"
  agent_actions | indent
  say "\$ node.sh api-status"
  bash "$NODE_SH" api-status 2>&1 | indent

  if ! keep_node selfhosted; then
    title "self-hosted: teardown"
    node_down || fail "the node did not come down clean"
  fi
}

# =============================================================================================

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

case ${DEMO:-selfhosted} in
  selfhosted) CHAPTERS=(selfhosted) ;;
  basic) CHAPTERS=(basic) ;;
  all) CHAPTERS=(selfhosted basic) ;;
  *) fail "DEMO=${DEMO:-} is not selfhosted, basic or all" ;;
esac
# keep_node CHAPTER: DEMO_KEEP=1 leaves the last chapter's node up (an earlier chapter's node has
# to go: the next chapter needs the ports)
keep_node() { [ "${DEMO_KEEP:-}" = 1 ] && [ "$1" = "${CHAPTERS[-1]}" ]; }
[ "$(id -u)" = 0 ] || fail "run as root: the test node needs namespaces, mounts and cgroups"
cd "$ROOT"
WORK=$(mktemp -d /tmp/pod-checkpointer-demo-run.XXXXXX)

title "pod-checkpointer demo (${CHAPTERS[*]})"
build_agent
step "agent built: $AGENT"
for chapter in "${CHAPTERS[@]}"; do
  "chapter_$chapter"
done
PASSED=1
