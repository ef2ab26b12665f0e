#!/usr/bin/env bash
# Builds the real Kubernetes node components the integration tests and the demo run on
# (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl; helm, crictl), from the
# Go module proxy, and caches them outside the work tree keyed by version, so a second run is instant.
# Prints the cache's bin directory on stdout; progress goes to stderr.
set -euo pipefail
export PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "build-tools: Go is required (https://go.dev/doc/install)" >&2; exit 1; }

K8S_VERSION=${K8S_VERSION:-v1.34.4}
HELM_VERSION=${HELM_VERSION:-v3.19.0}
CRICTL_VERSION=${CRICTL_VERSION:-v1.34.0}
CACHE=${POD_CHECKPOINTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pod-checkpointer}
BIN="$CACHE/bin/k8s-$K8S_VERSION-static-helm-$HELM_VERSION-crictl-$CRICTL_VERSION"
log() { printf '[build-tools %s] %s\n' "$(date +%T)" "$*" >&2; }

mkdir -p "$BIN"
staging_tag="v0.${K8S_VERSION#v1.}"

K8S_CMDS="kube-apiserver kubelet kubectl kube-controller-manager kube-scheduler"

build_kubernetes() { # the commands to build
  local work="$CACHE/src/kubernetes-$K8S_VERSION"
  mkdir -p "$work"
  log "fetching k8s.io/kubernetes $K8S_VERSION go.mod"
  local gomod
  gomod=$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    echo "module podcheckpointer.local/nodebuild"
    echo "go 1.24"
    echo "require k8s.io/kubernetes $K8S_VERSION"
    # The staging modules are "replace => ./staging/..." upstream; point each at its published tag.
    sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#replace \1 => \1 '"$staging_tag"'#p' "$gomod"
  } > "$work/go.mod"
  cat > "$work/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
  log "resolving modules (go mod tidy)"
  (cd "$work" && go mod tidy >&2)
  for cmd in "$@"; do
    log "building $cmd $K8S_VERSION (cold: several minutes each on 2 cores)"
    # Static like upstream's release builds (the self-hosted harness runs kube-apiserver from an
    # image with nothing but the binary); the kubelet stays dynamic, as upstream ships it.
    local cgo=0
    [ "$cmd" = kubelet ] && cgo=1
    (cd "$work" && CGO_ENABLED=$cgo go build -trimpath -ldflags "-s -w \
      -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
      -X k8s.io/component-base/version.gitMajor=1 \
      -X k8s.io/component-base/version.gitMinor=${K8S_VERSION#v1.} \
      -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION" \
      -o "$BIN/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd" >&2)
    mv "$BIN/$cmd.tmp" "$BIN/$cmd"
  done
}

build_go_install() { # name module@version
  local name=$1 pkg=$2
  log "building $name from $pkg"
  GOBIN="$BIN/.gobin" go install -trimpath -ldflags "-s -w" "$pkg" >&2
  mv "$BIN/.gobin/$name" "$BIN/$name"
}

missing=()
for cmd in $K8S_CMDS; do
  [ -x "$BIN/$cmd" ] || missing+=("$cmd")
done
[ ${#missing[@]} -eq 0 ] || build_kubernetes "${missing[@]}"
[ -x "$BIN/helm" ] || build_go_install helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
[ -x "$BIN/crictl" ] || build_go_install crictl "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
log "tools ready in $BIN"
echo "$BIN"
