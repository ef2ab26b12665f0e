#!/usr/bin/env bash
# Vendors the CRI v1 proto of k8s.io/cri-api VERSION (default v0.34.4, the cri-api of Kubernetes
# v1.34.4) from the Go module proxy into proto/cri-api/VERSION/, byte for byte as upstream ships
# it (license header included), plus the module's LICENSE. build.rs compiles the vendored copy, so
# the build itself never goes online; this script is the only thing that does.
#
#   hack/update-cri-proto.sh [VERSION]
#
# Older cri-api versions import gogoproto options; for those the gogo.proto of the
# github.com/gogo/protobuf version that cri-api's go.mod requires is vendored beside it, at the
# import path the proto uses. After vendoring a new version, point CRI_API_VERSION in build.rs at
# it and delete the old directory.
#
# Needs go (GO env, else `go` on PATH, else /usr/local/go/bin/go) and network access to the module
# proxy (GOPROXY as go sees it).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=${1:-v0.34.4}
case "$VERSION" in
  v[0-9]*.[0-9]*.[0-9]*) ;;
  *) echo "usage: $0 [vX.Y.Z]  (a k8s.io/cri-api module version)" >&2; exit 2 ;;
esac

GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
if [ ! -x "$GO" ]; then
  echo "go not found (set GO=/path/to/go)" >&2
  exit 1
fi

# `go mod download` wants a module to run in; an empty throwaway one does.
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && "$GO" mod init update-cri-proto >/dev/null 2>&1)

# Prints the extracted directory of module@version (verified against go.sum's checksum database).
module_dir() {
  (cd "$WORK" && "$GO" mod download -json "$1") \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p'
}

CRI=$(module_dir "k8s.io/cri-api@$VERSION")
SRC="$CRI/pkg/apis/runtime/v1/api.proto"
if [ -z "$CRI" ] || [ ! -f "$SRC" ]; then
  echo "k8s.io/cri-api@$VERSION has no pkg/apis/runtime/v1/api.proto" >&2
  exit 1
fi

DEST="$ROOT/proto/cri-api/$VERSION"
rm -rf "$DEST"
mkdir -p "$DEST"
install -m 0644 "$SRC" "$DEST/api.proto"
install -m 0644 "$CRI/LICENSE" "$DEST/LICENSE"

GOGO_IMPORT=github.com/gogo/protobuf/gogoproto/gogo.proto
if grep -q "^import \"$GOGO_IMPORT\"" "$DEST/api.proto"; then
  GOGO_VERSION=$(awk '$1 == "github.com/gogo/protobuf" { print $2; exit }' "$CRI/go.mod")
  if [ -z "$GOGO_VERSION" ]; then
    echo "api.proto imports $GOGO_IMPORT but cri-api's go.mod does not require gogo" >&2
    exit 1
  fi
  GOGO=$(module_dir "github.com/gogo/protobuf@$GOGO_VERSION")
  mkdir -p "$DEST/$(dirname "$GOGO_IMPORT")"
  install -m 0644 "$GOGO/gogoproto/gogo.proto" "$DEST/$GOGO_IMPORT"
  install -m 0644 "$GOGO/LICENSE" "$DEST/$(dirname "$GOGO_IMPORT")/LICENSE"
fi

echo "vendored k8s.io/cri-api@$VERSION into ${DEST#"$ROOT"/}"
