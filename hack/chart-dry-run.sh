#!/usr/bin/env bash
# Every object the chart renders, with default and with non-default values, must be accepted by
# a real kube-apiserver: `kubectl apply --dry-run=server`. Needs the local node up
# (tests/node/node.sh up) and KUBECONFIG pointing at it; hack/test-all.sh runs it there.
# The Prometheus Operator CRDs (for PodMonitor, ServiceMonitor, PrometheusRule) come from the
# operator's Go module, the way Go distributes it.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=hack/lib/tools.sh
. hack/lib/tools.sh

HELM=$(find_helm)
PROM_OPERATOR=${PROM_OPERATOR:-v0.85.0}
CHART=charts/pod-checkpointer
NAMESPACE=pc-dry-run
passed=0

crd_dir=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json \
  "github.com/prometheus-operator/prometheus-operator@$PROM_OPERATOR" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')/example/prometheus-operator-crd
for crd in podmonitors servicemonitors prometheusrules; do
  kubectl apply --server-side --force-conflicts -f "$crd_dir/monitoring.coreos.com_$crd.yaml" >/dev/null
done
kubectl wait --for condition=established --timeout=60s \
  crd/podmonitors.monitoring.coreos.com crd/servicemonitors.monitoring.coreos.com \
  crd/prometheusrules.monitoring.coreos.com >/dev/null

# Namespaces the rendered objects live in must exist for a server-side dry run.
for ns in "$NAMESPACE" kube-system monitoring ingress; do
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
done

# Render for the server's own version (helm's offline default is far older than kubeVersion).
server_version=$(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')

check() { # description, helm template args...
  local what=$1 out
  shift
  out=$("$HELM" template pc "$CHART" --namespace "$NAMESPACE" --kube-version "$server_version" "$@" |
    kubectl apply --dry-run=server -f - 2>&1) || {
    echo "not ok - $what"
    echo "$out" | sed 's/^/    /'
    exit 1
  }
  echo "ok - $what: $(echo "$out" | wc -l) objects accepted by the API server"
  passed=$((passed + 1))
}

check "default values"
check "ci/non-default-values.yaml" -f "$CHART/ci/non-default-values.yaml"
echo "chart-dry-run: $passed passed, 0 failed"
