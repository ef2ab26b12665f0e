#!/usr/bin/env bash
# A real single-node Kubernetes cluster (etcd, kube-apiserver, containerd+runc, kubelet; optionally
# kube-controller-manager and kube-scheduler) for pod-checkpointer's integration tests, on one
# Debian 12 machine, without a registry and without touching the machine's real network.
#
# Design
# ------
# * "Node namespace": one holder process (`unshare --mount --net --propagation private`, then
#   `sleep infinity`) owns a private mount namespace and a private network namespace:
#     - network: lo (127.0.0.1, plus 10.96.0.1/32 = the `kubernetes` Service IP) and a port-less
#       bridge k8snode0 with 10.77.0.1/24 (the node IP). No route leaves the namespace; pods that
#       are not hostNetwork get 10.244.0.0/24 on a CNI bridge cni0 *inside* it.
#     - mounts: /run, /var/log, /var/lib/cni, /var/lib/kubelet and /etc/kubernetes are bind mounts
#       of $NODE_DIR/{run,varlog,varlib-cni,varlib-kubelet,etc-kubernetes}, so the hard-coded paths
#       of containerd, runc, CNI and kubelet (/run/containerd, /run/netns, /var/lib/cni,
#       /var/log/containers, /var/lib/kubelet/device-plugins) stay inside the state dir, and pods
#       see the usual node paths: static pod dir /etc/kubernetes/manifests (= $MANIFEST_DIR on the
#       host), CRI socket /run/containerd/containerd.sock (a symlink to the real socket
#       $NODE_DIR/containerd/containerd.sock), lock dir /var/run/lock (= $NODE_DIR/run/lock). Everything else (/tmp, /usr,
#       /etc, cgroups, ...) is the host's; the kubelet's --root-dir is $NODE_DIR/kubelet, but the
#       tmpfs/bind mounts it makes for pod volumes exist only inside the node's mount namespace.
#   etcd, kube-apiserver, containerd (its shims and so all containers) and kubelet all run inside
#   it (`nsenter --target <holder> --mount --net`). apiserver<->kubelet<->containerd traffic never
#   leaves that network namespace.
# * How the host reaches it (the agent binary and `cargo test` can run on the host, unchanged):
#     - CRI: containerd's socket is a file, $NODE_DIR/containerd/containerd.sock, usable from both
#       sides (unix sockets do not belong to a network namespace).
#     - API server and kubelet: a small forwarder (portfwd.py) listens on the host's 127.0.0.1 and
#       connects from inside the node namespace (setns): 127.0.0.1:6443 -> apiserver,
#       127.0.0.1:10250 -> kubelet https, 127.0.0.1:10255 -> kubelet read-only http. The same
#       addresses work inside the node namespace (apiserver and kubelet listen on 0.0.0.0 there),
#       so $KUBECONFIG and the kubelet URLs are identical on both sides. Only loopback is used on
#       the host: no veth, no host address, nothing reachable from outside the machine.
#     - In-cluster clients (pods, e.g. the agent's DaemonSet or a checkpointed copy) use
#       https://10.96.0.1:443: there is no kube-proxy; a second forwarder inside the node namespace
#       listens on 10.96.0.1:443 and forwards to 10.77.0.1:6443 (for hostNetwork pods and, via the
#       cni0 gateway, for pod-network pods).
#     - stop-apiserver / stop-kubelet also stop their forwarders, so clients see "connection
#       refused" exactly as they would with the real component down.
#     - Anything may also run inside the node namespace with `node.sh exec -- CMD` (like a
#       hostNetwork pod would); required for `crictl exec/attach` and `ctr run` (streaming
#       server and FIFOs live in the node namespace).
# * Images: no registry. mkimage.py writes OCI image-layout tars, imported with
#   `ctr -n k8s.io image import`: the sandbox image (static C pause, $PAUSE_IMAGE), a busybox
#   image ($BUSYBOX_IMAGE, busybox-static), and on demand `node.sh image NAME BINARY`.
#   Pods must use imagePullPolicy: Never or IfNotPresent.
# * Without kube-controller-manager (build-tools.sh does not build it) there is no DaemonSet/
#   ReplicaSet/GC/namespace controller, no ServiceAccount/root-CA publisher, no node lifecycle;
#   without kube-scheduler pods must set spec.nodeName. `up` therefore creates the `default`
#   ServiceAccount and the kube-root-ca.crt ConfigMap in default/kube-system/kube-public, and
#   `node.sh namespace NAME...` does the same for new namespaces. If $NODE_BIN (or
#   $KUBE_CONTROLLER_MANAGER / $KUBE_SCHEDULER) holds those binaries, `up` runs them too.
# * Host side effects, all undone by `down`: cgroups /sys/fs/cgroup/*/{kubepods*,k8s.io}; the
#   kernel sysctls the kubelet insists on (vm.overcommit_memory, vm.panic_on_oom, kernel.panic,
#   kernel.panic_on_oops, kernel.keys.root_max{keys,bytes}) are saved and restored; empty mount
#   points /var/lib/cni, /var/lib/kubelet, /etc/kubernetes (created only if missing). Ports 6443, 10250, 10255 on
#   the host's 127.0.0.1.
#
# * `up --self-hosted` (or SELF_HOSTED=1): after the bootstrap kube-apiserver process is up, the
#   API server becomes a checkpointed DaemonSet pod and the process exits (see selfhosted.sh).
#
# Commands: up [--self-hosted] | down | status | env | exec -- CMD... | image NAME BINARY |
#           namespace NS... | stop-apiserver | start-apiserver | stop-kubelet | start-kubelet |
#           reboot-runtime | stop-containerd | start-containerd | api-status |
#           rescue (self-hosted: bootstrap process back when no API answers) | pivot (hand over again) |
#           leftovers (after down: lists anything left behind, exit 1 if so)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NODE_DIR=${NODE_DIR:-/tmp/pod-checkpointer-node}
NODE_NAME=${NODE_NAME:-ci-node}
NODE_IP=${NODE_IP:-10.77.0.1}
NODE_PREFIX=${NODE_PREFIX:-24}
BRIDGE=${BRIDGE:-k8snode0}
POD_CIDR=${POD_CIDR:-10.244.0.0/24}
SERVICE_CIDR=${SERVICE_CIDR:-10.96.0.0/16}
SERVICE_IP=${SERVICE_IP:-10.96.0.1}
APISERVER_PORT=${APISERVER_PORT:-6443}
KUBELET_PORT=${KUBELET_PORT:-10250}
KUBELET_RO_PORT=${KUBELET_RO_PORT:-10255}
ETCD_PORT=${ETCD_PORT:-2379}
PAUSE_IMAGE=${PAUSE_IMAGE:-registry.k8s.io/pause:3.10.1} # kubeadm 1.34's pause version
BUSYBOX_IMAGE=${BUSYBOX_IMAGE:-localhost/busybox:ci}
DEADLINE=${DEADLINE:-120} # seconds, for every wait

PKI=$NODE_DIR/pki
LOGS=$NODE_DIR/logs
PIDS=$NODE_DIR/pids
SOCK=$NODE_DIR/containerd/containerd.sock
ETC_KUBERNETES=$NODE_DIR/etc-kubernetes # the node's /etc/kubernetes
MANIFESTS=$ETC_KUBERNETES/manifests
# shellcheck source=tests/node/selfhosted.sh
. "$HERE/selfhosted.sh"
KUBELET_SYSCTLS="vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes"

T0=$EPOCHREALTIME
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
log() { printf '[node.sh %7ss] %s\n' "$(elapsed "$T0")" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# prerequisites

ensure_packages() {
  local missing=() c
  for c in containerd:containerd runc:runc busybox:busybox-static etcd:etcd-server etcdctl:etcd-client \
    ip:iproute2 gcc:gcc openssl:openssl python3:python3 curl:curl; do
    command -v "${c%%:*}" >/dev/null 2>&1 || missing+=("${c#*:}")
  done
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  # self-hosted mode's API outage rejects port 6443 with nftables
  if self_hosted && ! command -v nft >/dev/null 2>&1; then missing+=(nftables); fi
  # a static libc is needed for the pause binary
  [ -e /usr/lib/x86_64-linux-gnu/libc.a ] || missing+=(libc6-dev)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "${missing[@]}" >&2
  fi
  return 0
}

# NODE_BIN: kube-apiserver, kubelet, kubectl, crictl, helm (+ kube-controller-manager, kube-scheduler
# when build-tools.sh builds them). `up` records it in $NODE_DIR/node-bin so
# that later commands (down, status, ...) do not need build-tools.sh.
tools() {
  if [ -z "${NODE_BIN:-}" ] && [ -f "$NODE_DIR/node-bin" ]; then NODE_BIN=$(cat "$NODE_DIR/node-bin"); fi
  if [ -z "${NODE_BIN:-}" ] || [ ! -x "$NODE_BIN/kubelet" ]; then
    NODE_BIN=$(bash "$HERE/build-tools.sh")
  fi
  export NODE_BIN PATH="$NODE_BIN:$PATH"
}

# bin_tool NAME: a tool from the recorded NODE_BIN, else from PATH, without building anything
bin_tool() {
  local b=${NODE_BIN:-$(cat "$NODE_DIR/node-bin" 2>/dev/null || true)}
  if [ -n "$b" ] && [ -x "$b/$1" ]; then echo "$b/$1"; else command -v "$1" || true; fi
}

# ---------------------------------------------------------------------------------------------
# process helpers

pid_of() { [ -f "$PIDS/$1.pid" ] && cat "$PIDS/$1.pid" 2>/dev/null || true; }
alive() { local p; p=$(pid_of "$1"); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }
holder() { pid_of holder; }

innode() {
  local h; h=$(holder)
  [ -n "$h" ] && kill -0 "$h" 2>/dev/null || die "node namespace is not up (run: $0 up)"
  nsenter --target "$h" --mount --net --wd="$PWD" -- "$@"
}

# start NAME [--host] CMD...: background process with stdio to $LOGS/NAME.log, pid in $PIDS/NAME.pid.
# setsid: own session, so a ^C during `up` or the caller's process group going away leaves it running.
start() {
  local name=$1; shift
  local where=node
  if [ "$1" = --host ]; then where=host; shift; fi
  if alive "$name"; then return 0; fi
  mkdir -p "$LOGS" "$PIDS"
  printf '\n==== %s start %s\n' "$(date -Is)" "$*" >>"$LOGS/$name.log"
  if [ $where = node ]; then
    setsid nsenter --target "$(holder)" --mount --net -- "$@" </dev/null >>"$LOGS/$name.log" 2>&1 &
  else
    setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1 &
  fi
  echo $! >"$PIDS/$name.pid"
}

# stop_pid PID [TIMEOUT]: SIGTERM, wait, SIGKILL
stop_pid() {
  local p=$1 t=${2:-10} i
  kill -0 "$p" 2>/dev/null || return 0
  kill -TERM "$p" 2>/dev/null || true
  for ((i = 0; i < t * 10; i++)); do
    kill -0 "$p" 2>/dev/null || return 0
    # a zombie child of ours is gone for our purposes
    [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" = Z ] && return 0
    sleep 0.1
  done
  log "pid $p did not stop in ${t}s: SIGKILL"
  kill -KILL "$p" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
}

stop() { # stop NAME [TIMEOUT]
  local p; p=$(pid_of "$1")
  if [ -n "$p" ]; then stop_pid "$p" "${2:-10}"; fi
  rm -f "$PIDS/$1.pid"
}

# wait_for WHAT CMD...: poll every 0.2s until CMD succeeds or $DEADLINE passes
wait_for() {
  local what=$1; shift
  local start=$EPOCHREALTIME
  local end=$(($(date +%s) + DEADLINE))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge $end ]; then
      log "timeout (${DEADLINE}s) waiting for $what"
      return 1
    fi
    sleep 0.2
  done
  log "$what after $(elapsed "$start")s"
}

# ---------------------------------------------------------------------------------------------
# PKI (EC P-256 everywhere: fast to generate)

cert() { # cert NAME SUBJECT EXTKEYUSAGE [SAN]
  local name=$1 subj=$2 eku=$3 san=${4:-}
  [ -f "$PKI/$name.crt" ] && return 0
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/$name.key" 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [ -n "$san" ] && echo "subjectAltName=$san"
  } >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/${CA:-ca}.crt" -CAkey "$PKI/${CA:-ca}.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

kubeconfig() { # kubeconfig FILE USER CERTNAME
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ci
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $2
  user:
    client-certificate: $PKI/$3.crt
    client-key: $PKI/$3.key
contexts:
- name: ci
  context: {cluster: ci, user: $2}
current-context: ci
EOF
}

make_pki() {
  mkdir -p "$PKI"
  chmod 700 "$PKI"
  if [ ! -f "$PKI/ca.crt" ]; then
    openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/ca.key" 2>/dev/null
    openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=pod-checkpointer-ci-ca" -days 3650 -sha256 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -out "$PKI/ca.crt" 2>/dev/null
  fi
  cert apiserver "/CN=kube-apiserver" serverAuth \
    "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$NODE_IP,IP:$SERVICE_IP"
  cert admin "/O=system:masters/CN=ci-admin" clientAuth
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  cert kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
  cert kubelet-serving "/O=system:nodes/CN=system:node:$NODE_NAME" serverAuth \
    "DNS:$NODE_NAME,DNS:localhost,IP:127.0.0.1,IP:$NODE_IP"
  # aggregation layer (front proxy): its own CA, so that no other client cert can assert identities
  if [ ! -f "$PKI/front-proxy-ca.crt" ]; then
    openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/front-proxy-ca.key" 2>/dev/null
    openssl req -x509 -new -key "$PKI/front-proxy-ca.key" -subj "/CN=pod-checkpointer-ci-front-proxy-ca" -days 3650 \
      -sha256 -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -out "$PKI/front-proxy-ca.crt" 2>/dev/null
  fi
  CA=front-proxy-ca cert front-proxy-client "/CN=front-proxy-client" clientAuth
  cert controller-manager "/CN=system:kube-controller-manager" clientAuth
  cert scheduler "/CN=system:kube-scheduler" clientAuth
  if [ ! -f "$PKI/sa.key" ]; then
    openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/sa.key" 2>/dev/null
    openssl ec -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
  kubeconfig "$NODE_DIR/admin.kubeconfig" ci-admin admin
  kubeconfig "$NODE_DIR/kubelet.kubeconfig" "system:node:$NODE_NAME" kubelet-client
  kubeconfig "$NODE_DIR/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
  kubeconfig "$NODE_DIR/scheduler.kubeconfig" system:kube-scheduler scheduler
}

# ---------------------------------------------------------------------------------------------
# node namespace

save_sysctls() {
  [ -f "$NODE_DIR/sysctl.orig" ] && return 0
  local k
  for k in $KUBELET_SYSCTLS; do echo "$k=$(cat "/proc/sys/${k//.//}")"; done >"$NODE_DIR/sysctl.orig.tmp"
  mv "$NODE_DIR/sysctl.orig.tmp" "$NODE_DIR/sysctl.orig"
}

restore_sysctls() {
  [ -f "$NODE_DIR/sysctl.orig" ] || return 0
  local kv
  while IFS= read -r kv; do
    echo "${kv#*=}" >"/proc/sys/$(echo "${kv%%=*}" | tr . /)" 2>/dev/null || log "could not restore $kv"
  done <"$NODE_DIR/sysctl.orig"
  rm -f "$NODE_DIR/sysctl.orig"
}

# Host paths hidden behind a bind mount of a state-dir directory inside the node's mount namespace:
# hard-coded paths of containerd/runc/CNI (/run/containerd, /run/netns, /var/lib/cni) and of the
# kubelet (/var/lib/kubelet/device-plugins, /var/log/containers), and /etc/kubernetes, so that
# pods (the agent's DaemonSet) find the usual /etc/kubernetes/manifests, /run/containerd/containerd.sock
# and /var/run/lock inside the node, while the host sees them under $NODE_DIR.
NODE_BINDS="/run:run /var/log:varlog /var/lib/cni:varlib-cni /var/lib/kubelet:varlib-kubelet /etc/kubernetes:etc-kubernetes"

start_holder() {
  if alive holder; then return 0; fi
  mkdir -p "$NODE_DIR"/{run/lock,cni/net.d,cni/ipam}
  local b binds=""
  for b in $NODE_BINDS; do
    mkdir -p "$NODE_DIR/${b#*:}"
    if [ ! -d "${b%%:*}" ]; then # an empty mount point on the host, removed again by `down`
      mkdir -p "${b%%:*}"
      echo "${b%%:*}" >>"$NODE_DIR/created-mountpoints"
    fi
    binds+="mount --bind '$NODE_DIR/${b#*:}' '${b%%:*}'; "
  done
  rm -f "$NODE_DIR/holder.ready"
  # shellcheck disable=SC2016
  start holder --host unshare --mount --net --propagation private -- /bin/sh -c '
    set -e
    D=$1
    eval "$6"
    mount --make-rshared /
    ip link set lo up
    ip addr add "$5/32" dev lo
    ip link add "$4" type bridge
    ip addr add "$2/$3" dev "$4"
    ip link set "$4" up
    echo ready > "$D/holder.ready"
    exec sleep infinity' sh "$NODE_DIR" "$NODE_IP" "$NODE_PREFIX" "$BRIDGE" "$SERVICE_IP" "$binds"
  local i
  for ((i = 0; i < 100; i++)); do
    [ -f "$NODE_DIR/holder.ready" ] && break
    alive holder || die "node namespace holder died: $(tail -5 "$LOGS/holder.log")"
    sleep 0.05
  done
  [ -f "$NODE_DIR/holder.ready" ] || die "node namespace holder not ready"
  local h; h=$(holder)
  readlink "/proc/$h/ns/net" >"$NODE_DIR/ns.net"
  readlink "/proc/$h/ns/mnt" >"$NODE_DIR/ns.mnt"
}

# ---------------------------------------------------------------------------------------------
# components

start_etcd() {
  mkdir -p "$NODE_DIR/etcd"
  chmod 700 "$NODE_DIR/etcd"
  start etcd etcd --name "$NODE_NAME" --data-dir "$NODE_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "$NODE_NAME=http://127.0.0.1:$((ETCD_PORT + 1))" \
    --listen-metrics-urls "http://127.0.0.1:$((ETCD_PORT + 2))" --log-level warn \
    --experimental-watch-progress-notify-interval=1s
}

etcd_healthy() { innode curl -sf "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }

apiserver_ready() {
  curl -sf --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null
}

# The API server's flags, one per line: the single list behind both the bootstrap process and the
# self-hosted DaemonSet (tests/node/selfhosted.sh), so the two cannot drift apart.
# apiserver_flags CERT_DIR SA_DIR ETCD_SERVERS ADVERTISE_ADDRESS SERVICE_CIDR SECURE_PORT
# (the DaemonSet passes "$(VAR)" references to its ConfigMap-fed environment for the last four).
apiserver_flags() {
  local c=$1 sa=$2
  cat <<EOF
--etcd-servers=$3
--bind-address=0.0.0.0
--secure-port=$6
--advertise-address=$4
--tls-cert-file=$c/apiserver.crt
--tls-private-key-file=$c/apiserver.key
--client-ca-file=$c/ca.crt
--service-account-issuer=https://kubernetes.default.svc
--service-account-key-file=$sa/sa.pub
--service-account-signing-key-file=$sa/sa.key
--service-cluster-ip-range=$5
--authorization-mode=Node,RBAC
--enable-admission-plugins=NodeRestriction
--allow-privileged=true
--kubelet-client-certificate=$c/apiserver-kubelet-client.crt
--kubelet-client-key=$c/apiserver-kubelet-client.key
--kubelet-certificate-authority=$c/ca.crt
--kubelet-preferred-address-types=InternalIP
--requestheader-client-ca-file=$c/front-proxy-ca.crt
--requestheader-allowed-names=front-proxy-client
--requestheader-username-headers=X-Remote-User
--requestheader-group-headers=X-Remote-Group
--requestheader-extra-headers-prefix=X-Remote-Extra-
--proxy-client-cert-file=$c/front-proxy-client.crt
--proxy-client-key-file=$c/front-proxy-client.key
--shutdown-watch-termination-grace-period=2s
--profiling=false
--v=1
EOF
}

# The API server as a process on the node (the only one, or the bootstrap one in --self-hosted mode).
start_apiserver_process() {
  local flags
  mapfile -t flags < <(apiserver_flags "$PKI" "$PKI" "http://127.0.0.1:$ETCD_PORT" "$NODE_IP" "$SERVICE_CIDR" "$APISERVER_PORT")
  start kube-apiserver kube-apiserver "${flags[@]}"
}

# host 127.0.0.1:6443 -> apiserver; in-cluster 10.96.0.1:443 -> apiserver. They connect per
# connection to whatever listens on 6443 in the node namespace: process, DaemonSet pod or copy.
start_apiserver_forwarders() {
  start fwd-apiserver --host python3 "$HERE/portfwd.py" --connect-netns "/proc/$(holder)/ns/net" \
    "127.0.0.1:$APISERVER_PORT=127.0.0.1:$APISERVER_PORT"
  start svc-kubernetes python3 "$HERE/portfwd.py" "$SERVICE_IP:443=$NODE_IP:$APISERVER_PORT"
}

start_apiserver() {
  start_apiserver_process
  start_apiserver_forwarders
}

stop_apiserver() {
  stop svc-kubernetes 5
  stop fwd-apiserver 5
  stop kube-apiserver 15
}

write_containerd_config() {
  mkdir -p "$NODE_DIR/containerd"
  # one template for the harness and tests/cri_containerd.rs
  sed -e "s#@DIR@#$NODE_DIR#g" -e "s#@PAUSE_IMAGE@#$PAUSE_IMAGE#g" "$HERE/containerd.toml.in" \
    >"$NODE_DIR/containerd/config.toml"
  # A CNI network is needed for the node to become Ready (runtime NetworkReady); it also gives
  # non-hostNetwork pods an address on cni0, inside the node namespace. No masquerade, no iptables.
  cat >"$NODE_DIR/cni/net.d/10-ci.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "ci-pods",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$NODE_DIR/cni/ipam",
              "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}}
  ]
}
EOF
}

start_containerd() {
  write_containerd_config
  crictl_config
  start containerd containerd --config "$NODE_DIR/containerd/config.toml"
}

containerd_ready() { ctr -a "$SOCK" version; }

# the usual socket path for pods and tools inside the node: /run/containerd/containerd.sock
link_cri_socket() {
  mkdir -p "$NODE_DIR/run/containerd"
  ln -sfn "$SOCK" "$NODE_DIR/run/containerd/containerd.sock"
}

# images: sandbox + busybox, built once per state dir
build_images() {
  local img=$NODE_DIR/images
  mkdir -p "$img"
  [ -x "$img/pause" ] || gcc -static -Os -s -o "$img/pause" "$HERE/pause.c"
  local bb=/bin/busybox srcs a
  srcs="$bb@/bin/busybox"
  for a in sh sleep cat ls echo wget nc httpd test stat id env ps kill mkdir rm touch grep sed \
    head tail date hostname true false mount umount ip ifconfig netstat nslookup vi tee wc sort \
    chmod chown cp mv ln pwd printf find xargs dd df du uname seq timeout; do
    srcs+=",/bin/$a->busybox"
  done
  python3 "$HERE/mkimage.py" "$img/base-images.tar" \
    "$PAUSE_IMAGE=/pause:$img/pause@/pause" \
    "$BUSYBOX_IMAGE=/bin/sh:$srcs"
}

import_images() {
  ctr -a "$SOCK" -n k8s.io image import "$NODE_DIR/images/base-images.tar" >/dev/null
}

crictl_config() {
  cat >"$NODE_DIR/crictl.yaml" <<EOF
runtime-endpoint: unix://$SOCK
image-endpoint: unix://$SOCK
timeout: 30
EOF
}

kubelet_config() {
  mkdir -p "$MANIFESTS" "$NODE_DIR/kubelet" "$NODE_DIR/pod-logs" "$NODE_DIR/kubelet-plugins"
  cat >"$NODE_DIR/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 0.0.0.0
port: $KUBELET_PORT
readOnlyPort: $KUBELET_RO_PORT
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true, cacheTTL: 10s}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
  webhook: {cacheAuthorizedTTL: 10s, cacheUnauthorizedTTL: 5s}
containerRuntimeEndpoint: unix://$SOCK
# no systemd, cgroup v1 (hybrid) host
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupsPerQOS: true
# -999 (default) needs CAP_SYS_RESOURCE, which this machine does not have
oomScoreAdj: 0
failSwapOn: false
staticPodPath: $MANIFESTS
fileCheckFrequency: 1s
syncFrequency: 10s
nodeStatusUpdateFrequency: 4s
nodeStatusReportFrequency: 1m
podLogsDir: $NODE_DIR/pod-logs
volumePluginDir: $NODE_DIR/kubelet-plugins
clusterDomain: cluster.local
# imported images cannot be pulled again: never garbage-collect them, never evict for disk
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
evictionPressureTransitionPeriod: 5s
serializeImagePulls: false
registerNode: true
EOF
}

start_kubelet() {
  kubelet_config
  save_sysctls
  start kubelet kubelet --config="$NODE_DIR/kubelet-config.yaml" \
    --kubeconfig="$NODE_DIR/kubelet.kubeconfig" --root-dir="$NODE_DIR/kubelet" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1
  start fwd-kubelet --host python3 "$HERE/portfwd.py" --connect-netns "/proc/$(holder)/ns/net" \
    "127.0.0.1:$KUBELET_PORT=$NODE_IP:$KUBELET_PORT" "127.0.0.1:$KUBELET_RO_PORT=$NODE_IP:$KUBELET_RO_PORT"
}

stop_kubelet() {
  stop fwd-kubelet 5
  stop kubelet 30
}

kubelet_healthy() { curl -sf --max-time 2 "http://127.0.0.1:$KUBELET_RO_PORT/healthz"; }

node_ready() {
  [ "$(kubectl --kubeconfig "$NODE_DIR/admin.kubeconfig" get node "$NODE_NAME" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

kcm_bin() { echo "${KUBE_CONTROLLER_MANAGER:-$NODE_BIN/kube-controller-manager}"; }
sched_bin() { echo "${KUBE_SCHEDULER:-$NODE_BIN/kube-scheduler}"; }

start_controllers() {
  local kcm sched
  kcm=$(kcm_bin)
  sched=$(sched_bin)
  if [ -x "$kcm" ]; then
    start kube-controller-manager "$kcm" --kubeconfig="$NODE_DIR/controller-manager.kubeconfig" \
      --authentication-kubeconfig="$NODE_DIR/controller-manager.kubeconfig" \
      --authorization-kubeconfig="$NODE_DIR/controller-manager.kubeconfig" \
      --bind-address=127.0.0.1 --secure-port=10257 --leader-elect=false \
      --use-service-account-credentials=true \
      --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
      --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
      --service-cluster-ip-range="$SERVICE_CIDR" --allocate-node-cidrs=false \
      --flex-volume-plugin-dir="$NODE_DIR/kubelet-plugins" \
      --profiling=false --v=1
  fi
  if [ -x "$sched" ]; then
    start kube-scheduler "$sched" --kubeconfig="$NODE_DIR/scheduler.kubeconfig" \
      --authentication-kubeconfig="$NODE_DIR/scheduler.kubeconfig" \
      --authorization-kubeconfig="$NODE_DIR/scheduler.kubeconfig" \
      --bind-address=127.0.0.1 --secure-port=10259 --leader-elect=false --profiling=false --v=1
  fi
}

# What kube-controller-manager creates in every namespace (the `default` ServiceAccount, which pod
# admission requires, and the kube-root-ca.crt ConfigMap that kube-api-access-* volumes read):
# create the namespaces and those objects now, skipping what exists (kube-controller-manager, when it
# runs, creates them too, only a little later).
bootstrap_namespaces() {
  local ns ca
  ca=$(sed 's/^/    /' "$PKI/ca.crt")
  for ns in "$@"; do
    cat <<EOF
---
apiVersion: v1
kind: Namespace
metadata: {name: $ns}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: default, namespace: $ns}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: kube-root-ca.crt, namespace: $ns}
data:
  ca.crt: |
$ca
EOF
  done >"$NODE_DIR/bootstrap.yaml"
  local out
  if ! out=$(kubectl --kubeconfig "$NODE_DIR/admin.kubeconfig" create -f "$NODE_DIR/bootstrap.yaml" 2>&1); then
    out=$(echo "$out" | grep -i error | grep -v AlreadyExists || true)
    [ -z "$out" ] || die "creating namespaces $*: $out"
  fi
}

# The kubelet registers its Node with the node.kubernetes.io/not-ready:NoSchedule taint and leaves
# its removal to kube-controller-manager's node lifecycle controller. Without one, remove it once.
untaint_node() {
  alive kube-controller-manager && return 0
  kubectl --kubeconfig "$NODE_DIR/admin.kubeconfig" taint node "$NODE_NAME" \
    node.kubernetes.io/not-ready:NoSchedule- >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------------------------------------
# commands

cmd_up() {
  local t0=$EPOCHREALTIME want_self_hosted=${SELF_HOSTED:-}
  [ "${1:-}" = --self-hosted ] && want_self_hosted=1
  if ! alive holder && [ -d "$NODE_DIR" ]; then
    log "stale state in $NODE_DIR (node namespace not running): cleaning it first"
    cmd_down
  fi
  # an `up` of a node that is already up keeps its mode; a plain node cannot become self-hosted
  if alive holder && [ -n "$want_self_hosted" ] && ! self_hosted; then
    die "the node is up without --self-hosted: run '$0 down' first"
  fi
  mkdir -p "$NODE_DIR"
  if [ -n "$want_self_hosted" ]; then touch "$NODE_DIR/self-hosted"; fi
  ensure_packages
  tools
  log "tools in $NODE_BIN"
  mkdir -p "$NODE_DIR" "$LOGS" "$PIDS"
  echo "$NODE_BIN" >"$NODE_DIR/node-bin"
  save_sysctls
  make_pki
  log "pki ready"
  start_holder
  log "node namespace: pid $(holder), $NODE_IP/$NODE_PREFIX on $BRIDGE"
  start_etcd
  start_containerd
  build_images &
  local img_pid=$!
  wait_for "etcd healthy" etcd_healthy || die "etcd: $(tail -5 "$LOGS/etcd.log")"
  # once pivoted, the API server is the DaemonSet's pod (or its checkpoint): no process
  if pivoted; then start_apiserver_forwarders; else start_apiserver; fi
  wait_for "containerd ready" containerd_ready || die "containerd: $(tail -5 "$LOGS/containerd.log")"
  link_cri_socket
  wait $img_pid || die "image build failed"
  import_images
  log "images imported ($PAUSE_IMAGE, $BUSYBOX_IMAGE)"
  wait_for "kube-apiserver /readyz" apiserver_ready || die "kube-apiserver: $(tail -20 "$LOGS/kube-apiserver.log")"
  start_controllers
  start_kubelet
  bootstrap_namespaces default kube-system kube-public
  wait_for "kubelet healthz" kubelet_healthy || die "kubelet: $(tail -20 "$LOGS/kubelet.log")"
  wait_for "node $NODE_NAME Ready" node_ready || die "node not Ready: $(tail -20 "$LOGS/kubelet.log")"
  untaint_node
  if self_hosted && ! pivoted; then sh_pivot; fi
  log "cluster up in $(elapsed "$t0")s"
  cmd_env >&2
}

# ns_procs: every process still in the node's network or mount namespace (but not this script)
ns_procs() {
  [ -f "$NODE_DIR/ns.net" ] || [ -f "$NODE_DIR/ns.mnt" ] || return 0
  python3 - "$(cat "$NODE_DIR/ns.net" 2>/dev/null)" "$(cat "$NODE_DIR/ns.mnt" 2>/dev/null)" $$ <<'EOF'
import os, sys
net, mnt, me = sys.argv[1], sys.argv[2], {sys.argv[3], str(os.getpid())}
for p in os.listdir("/proc"):
    if not p.isdigit() or p in me:
        continue
    try:
        if os.readlink("/proc/%s/ns/net" % p) == net or os.readlink("/proc/%s/ns/mnt" % p) == mnt:
            print(p)
    except OSError:
        pass
EOF
}

cgroup_procs() { # processes in the kubelet's/containerd's cgroups
  local d
  for d in /sys/fs/cgroup/*/kubepods* /sys/fs/cgroup/*/k8s.io /sys/fs/cgroup/kubepods* /sys/fs/cgroup/k8s.io; do
    [ -d "$d" ] || continue
    find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -un
}

kill_all() { # kill_all PIDS...: TERM, wait up to 5s, KILL
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  local i p left
  for ((i = 0; i < 50; i++)); do
    left=()
    for p in "$@"; do
      kill -0 "$p" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ] && left+=("$p")
    done
    [ ${#left[@]} -eq 0 ] && return 0
    sleep 0.1
  done
  kill -KILL "${left[@]}" 2>/dev/null || true
  sleep 0.2
}

remove_cgroups() {
  local d
  for d in /sys/fs/cgroup/*/kubepods* /sys/fs/cgroup/*/k8s.io /sys/fs/cgroup/kubepods* /sys/fs/cgroup/k8s.io; do
    [ -d "$d" ] || continue
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ -d "$d" ] && log "could not remove cgroup $d"
  done
  return 0
}

cmd_down() {
  local t0=$EPOCHREALTIME
  # 1. kubelet first: it would restart what we stop
  stop fwd-kubelet 5
  stop kubelet 30
  stop kube-scheduler 10
  stop kube-controller-manager 10
  # 2. pods, via CRI while containerd still answers
  if alive containerd && [ -S "$SOCK" ]; then
    local crictl
    crictl=$(bin_tool crictl)
    if [ -n "$crictl" ]; then
      local ids
      ids=$("$crictl" --config "$NODE_DIR/crictl.yaml" pods -q 2>/dev/null || true)
      if [ -n "$ids" ]; then
        # shellcheck disable=SC2086
        "$crictl" --config "$NODE_DIR/crictl.yaml" stopp $ids >/dev/null 2>&1 || true
        # shellcheck disable=SC2086
        "$crictl" --config "$NODE_DIR/crictl.yaml" rmp -f $ids >/dev/null 2>&1 || true
      fi
    fi
    # containers that are not CRI's (ctr run)
    local ns t
    for ns in $(ctr -a "$SOCK" namespaces ls -q 2>/dev/null); do
      for t in $(ctr -a "$SOCK" -n "$ns" task ls -q 2>/dev/null); do
        ctr -a "$SOCK" -n "$ns" task kill -s SIGKILL "$t" >/dev/null 2>&1 || true
        ctr -a "$SOCK" -n "$ns" task delete -f "$t" >/dev/null 2>&1 || true
      done
    done
  fi
  # whatever is left in the pods' cgroups (containerd gone, kill interrupted, ...)
  # shellcheck disable=SC2046
  kill_all $(cgroup_procs)
  # 3. the runtime and the control plane
  stop containerd 20
  stop svc-kubernetes 5
  stop fwd-apiserver 5
  stop kube-apiserver 15
  stop etcd 20
  # 4. anything still inside the node namespace (shims, `node.sh exec` sessions, ...), then the holder
  # shellcheck disable=SC2046
  kill_all $(ns_procs | grep -vx "$(holder || true)")
  stop holder 5
  # shellcheck disable=SC2046
  kill_all $(ns_procs)
  local p
  for p in "$PIDS"/*.pid; do
    [ -f "$p" ] || continue
    stop "$(basename "$p" .pid)" 5
  done
  # 5. mounts on the host under the state dir (normally none: they all live in the node's mount
  # namespace, which disappeared with its last process)
  local m
  if [ -d "$NODE_DIR" ]; then
    awk -v d="$NODE_DIR" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r |
      while IFS= read -r m; do umount -l "$m" 2>/dev/null || log "could not unmount $m"; done
  fi
  remove_cgroups
  restore_sysctls
  if [ -f "$NODE_DIR/created-mountpoints" ]; then
    while IFS= read -r m; do
      rmdir "$m" 2>/dev/null || log "$m is not empty: left in place"
    done <"$NODE_DIR/created-mountpoints"
  fi
  rm -rf --one-file-system "$NODE_DIR"
  log "down in $(elapsed "$t0")s"
}

# leftovers: what a `down` should have removed; prints it and fails if anything is found
cmd_leftovers() {
  local bad=0 p comm args hostnet
  hostnet=$(readlink /proc/self/ns/net)
  for p in /proc/[0-9]*; do
    comm=$(cat "$p/comm" 2>/dev/null) || continue
    # exited, waiting for PID 1 to reap it: not a leftover
    [ "$(awk '{print $3}' "$p/stat" 2>/dev/null)" = Z ] && continue
    args=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
    case $comm in
      kube-apiserver | kubelet | kube-controller | kube-scheduler | containerd | containerd-shim* | etcd | runc | pause)
        echo "process ${p#/proc/}: $args"; bad=1 ;;
      *)
        if [[ $args == *"$HERE/portfwd.py"* ]] ||
          { [ "$comm" = sleep ] && [ "$(readlink "$p/ns/net" 2>/dev/null)" != "$hostnet" ]; }; then
          echo "process ${p#/proc/}: $args"; bad=1
        fi ;;
    esac
  done
  if awk -v d="$NODE_DIR" '$5 == d || index($5, d "/") == 1 || $5 ~ /^\/run\/(containerd|netns)/ || $5 ~ /kubelet/' \
    /proc/self/mountinfo | grep -q .; then
    echo "mounts:"; awk -v d="$NODE_DIR" '$5 == d || index($5, d "/") == 1 || $5 ~ /^\/run\/(containerd|netns)/ || $5 ~ /kubelet/ {print "  " $5}' /proc/self/mountinfo
    bad=1
  fi
  local d
  for d in /sys/fs/cgroup/*/kubepods* /sys/fs/cgroup/*/k8s.io /sys/fs/cgroup/kubepods* /sys/fs/cgroup/k8s.io \
    "$NODE_DIR" /run/containerd /run/netns /var/lib/cni /var/log/containers /var/log/pods /var/lib/kubelet \
    /usr/libexec/kubernetes /etc/kubernetes; do
    if [ -e "$d" ]; then echo "path: $d"; bad=1; fi
  done
  if [ $bad = 0 ]; then echo "nothing left"; fi
  return $bad
}

cmd_status() {
  local n p rc=0
  echo "NODE_DIR=$NODE_DIR"
  for n in holder etcd kube-apiserver fwd-apiserver svc-kubernetes containerd kube-controller-manager \
    kube-scheduler kubelet fwd-kubelet; do
    p=$(pid_of "$n")
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
      printf '  %-24s running  pid %s\n' "$n" "$p"
    elif [ -n "$p" ]; then
      printf '  %-24s DEAD     pid %s (log %s)\n' "$n" "$p" "$LOGS/$n.log"
      rc=1
    else
      printf '  %-24s stopped\n' "$n"
    fi
  done
  if alive holder; then
    printf '  apiserver /readyz: %s\n' "$(apiserver_ready && echo ok || echo 'not ready')"
    printf '  kubelet /healthz:  %s\n' "$(kubelet_healthy 2>/dev/null || echo 'not healthy')"
    local kubectl crictl
    kubectl=$(bin_tool kubectl)
    crictl=$(bin_tool crictl)
    [ -n "$kubectl" ] && "$kubectl" --kubeconfig "$NODE_DIR/admin.kubeconfig" --request-timeout=3s \
      get nodes -o wide 2>/dev/null | sed 's/^/  /'
    [ -n "$crictl" ] && printf '  CRI pod sandboxes: %s\n' \
      "$("$crictl" --config "$NODE_DIR/crictl.yaml" --timeout 3s pods -q 2>/dev/null | wc -l)"
  fi
  return $rc
}

cmd_env() {
  tools
  cat <<EOF
export NODE_DIR=$NODE_DIR
export NODE_NAME=$NODE_NAME
export NODE_IP=$NODE_IP
export NODE_BIN=$NODE_BIN
export KUBECONFIG=$NODE_DIR/admin.kubeconfig
export KUBELET_KUBECONFIG=$NODE_DIR/kubelet.kubeconfig
export CRI_ENDPOINT=unix://$SOCK
export CONTAINER_RUNTIME_ENDPOINT=unix://$SOCK
export CRI_CONFIG_FILE=$NODE_DIR/crictl.yaml
export MANIFEST_DIR=$MANIFESTS
export NODE_ETC_KUBERNETES=$ETC_KUBERNETES
export NODE_RUN=$NODE_DIR/run
export KUBELET_URL=https://127.0.0.1:$KUBELET_PORT
export KUBELET_READONLY_URL=http://127.0.0.1:$KUBELET_RO_PORT
export CLUSTER_CA=$PKI/ca.crt
export PAUSE_IMAGE=$PAUSE_IMAGE
export BUSYBOX_IMAGE=$BUSYBOX_IMAGE
export NODE_EXEC="bash $HERE/node.sh exec --"
export PATH="$NODE_BIN:\$PATH"
export INACTIVE_MANIFEST_DIR=$ETC_KUBERNETES/inactive-manifests
export CHECKPOINT_SECRET_DIR=$ETC_KUBERNETES/checkpoint-secrets
export CHECKPOINT_CONFIGMAP_DIR=$ETC_KUBERNETES/checkpoint-configmaps
EOF
  if self_hosted; then
    cat <<EOF
export SELF_HOSTED=1
export APISERVER_IMAGE=$SH_APISERVER_IMAGE
export SELF_HOSTED_NAMESPACE=$SH_NS
export SELF_HOSTED_DAEMONSET=$SH_DS
export SELF_HOSTED_AGENT_RELEASE=$SH_AGENT_RELEASE
export SELF_HOSTED_AGENT_VALUES=$SH_DIR/agent-values.json
export SELF_HOSTED_AGENT_ADMIN_PORT=$SH_AGENT_ADMIN_PORT
export SELF_HOSTED_GRACE=$SH_GRACE
export SELF_HOSTED_FALLBACK_TIMEOUT=$(cat "$SH_DIR/fallback-timeout" 2>/dev/null || true)
export CHART_DIR=$(cd "$HERE/../.." && pwd)/charts/pod-checkpointer
EOF
  else
    echo "unset SELF_HOSTED"
  fi
}

cmd_image() { # image NAME BINARY: single-binary image (entrypoint = /<basename>), with its shared libs
  [ $# -eq 2 ] || die "usage: $0 image NAME BINARY"
  local name=$1 bin=$2 base srcs lib
  [ -f "$bin" ] || die "no such file: $bin"
  alive containerd || die "containerd is not running (run: $0 up)"
  base=$(basename "$bin")
  srcs="$bin@/$base"
  # a dynamically linked binary (e.g. cargo's default gnu target) gets its loader and libraries
  for lib in $(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' || true); do
    [ -f "$lib" ] && srcs+=",$lib@$lib"
  done
  mkdir -p "$NODE_DIR/images"
  local tar; tar="$NODE_DIR/images/$(echo "$name" | tr '/:' '__').tar"
  python3 "$HERE/mkimage.py" "$tar" "$name=/$base:$srcs"
  ctr -a "$SOCK" -n k8s.io image import "$tar" >/dev/null
  echo "$name"
}

main() {
  local c=${1:-}
  [ $# -gt 0 ] && shift
  case $c in
    up) cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    leftovers) cmd_leftovers ;;
    env) cmd_env ;;
    exec)
      [ "${1:-}" = -- ] && shift
      [ $# -gt 0 ] || die "usage: $0 exec -- CMD..."
      tools
      # defaults for kubectl/crictl inside (the caller's own values win)
      export KUBECONFIG=${KUBECONFIG:-$NODE_DIR/admin.kubeconfig} NODE_NAME \
        CONTAINER_RUNTIME_ENDPOINT=${CONTAINER_RUNTIME_ENDPOINT:-unix://$SOCK} \
        CRI_CONFIG_FILE=${CRI_CONFIG_FILE:-$NODE_DIR/crictl.yaml}
      innode "$@"
      ;;
    image) tools; cmd_image "$@" ;;
    namespace) tools; bootstrap_namespaces "$@" ;;
    stop-apiserver)
      if pivoted; then sh_stop_apiserver; else stop_apiserver; fi ;;
    start-apiserver)
      tools
      if pivoted; then sh_start_apiserver; else start_apiserver; fi
      wait_for "kube-apiserver /readyz" apiserver_ready || die "kube-apiserver: $(tail -20 "$LOGS/kube-apiserver.log")"
      ;;
    stop-kubelet) stop_kubelet ;;
    # containerd alone: its shims keep every container running, only the CRI socket goes away
    stop-containerd) stop containerd 10 ;;
    start-containerd)
      tools
      start_containerd
      wait_for "containerd ready" containerd_ready || die "containerd: $(tail -5 "$LOGS/containerd.log")"
      ;;
    start-kubelet)
      tools
      start_kubelet
      wait_for "kubelet healthz" kubelet_healthy || die "kubelet: $(tail -20 "$LOGS/kubelet.log")"
      ;;
    api-status) tools; sh_api_status ;;
    rescue) tools; self_hosted || die "rescue: not a self-hosted node"; sh_rescue ;;
    pivot) tools; self_hosted || die "pivot: not a self-hosted node"; sh_repivot ;;
    reboot-runtime)
      tools
      stop_kubelet
      local ids
      ids=$(crictl --config "$NODE_DIR/crictl.yaml" pods -q)
      if [ -n "$ids" ]; then
        # shellcheck disable=SC2086
        crictl --config "$NODE_DIR/crictl.yaml" stopp $ids >/dev/null
        # shellcheck disable=SC2086
        crictl --config "$NODE_DIR/crictl.yaml" rmp -f $ids >/dev/null
      fi
      log "removed $(echo "$ids" | grep -c . || true) pod sandboxes"
      # for tests that time what follows the kubelet's start
      echo "KUBELET_START_EPOCH=$EPOCHREALTIME" >&2
      start_kubelet
      wait_for "kubelet healthz" kubelet_healthy || die "kubelet: $(tail -20 "$LOGS/kubelet.log")"
      ;;
    *)
      sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2
      exit 2
      ;;
  esac
}

main "$@"
