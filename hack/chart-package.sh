#!/usr/bin/env bash
# Packages charts/pod-checkpointer into DIR (default dist/) as pod-checkpointer-<version>.tgz.
# Run hack/chart-check.sh first (`make chart` does both). HELM env or found like chart-check.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=hack/lib/tools.sh
source "$ROOT/hack/lib/tools.sh"

DIST=${1:-$ROOT/dist}
HELM=$(find_helm)
mkdir -p "$DIST"
"$HELM" package "$ROOT/charts/pod-checkpointer" --destination "$DIST"
