#!/usr/bin/env bash
# Every test of the project, exactly as CI runs it (`.ci/run` calls `make test`, which calls this):
#   1. formatting and clippy (-D warnings)
#   2. unit, table and property tests; store crash tests; the CRI client against a real containerd
#   3. the Helm chart and its alerts (helm lint/template, schema, promtool check/test rules), and
#      every object it renders accepted by the real API server (kubectl apply --dry-run=server)
#   4. end-to-end scenarios on a real single-node cluster (etcd, kube-apiserver, controller-manager,
#      scheduler, containerd, kubelet) that tests/node/node.sh brings up self-hosted (kube-apiserver
#      as a checkpointed DaemonSet pod) and always tears down
# On a fresh machine it installs what it needs first (Debian packages; Kubernetes tools are built
# from the Go module proxy and cached under ~/.cache/pod-checkpointer, so later runs are fast).
set -euo pipefail
cd "$(dirname "$0")/.."
# Toolchains as this machine kind installs them, for shells that did not source a profile.
export PATH="$PATH:$HOME/.cargo/bin:/usr/local/go/bin"

started=$SECONDS
step() { printf '\n==> %s  [%s, +%ss]\n' "$*" "$(date +%T)" "$((SECONDS - started))"; }

step "Debian packages"
packages=(containerd runc busybox-static containernetworking-plugins etcd-server etcd-client
  prometheus iproute2 gcc libc6-dev openssl python3 curl util-linux)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  # The image's policy-rc.d keeps the packages' services from starting; the tests start their own.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The chart checks read YAML in Python.
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml

step "Kubernetes tools (cached after the first build)"
NODE_BIN=$(bash tests/node/build-tools.sh)
export HELM=$NODE_BIN/helm PROMTOOL
PROMTOOL=$(command -v promtool)

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets --features e2e -- -D warnings"
cargo clippy --locked --workspace --all-targets --features e2e -- -D warnings

step "unit, property, store and containerd tests"
# The containerd test must not skip itself here: CI has everything it needs.
POD_CHECKPOINTER_REQUIRE_CONTAINERD=1 cargo test --locked --workspace

step "chart and alerts"
bash hack/chart-check.sh

step "single-node cluster up"
cleanup() {
  step "single-node cluster down"
  bash tests/node/node.sh down || true
}
trap cleanup EXIT
# Self-hosted: kube-apiserver runs as a checkpointed DaemonSet pod (tests/node/README.md), so the
# end-to-end suite includes the case the tool exists for; every other scenario runs on it too.
cargo build --locked --bin pod-checkpointer
SELF_HOSTED=1 bash tests/node/node.sh up
eval "$(bash tests/node/node.sh env)"

step "every rendered chart object accepted by the real API server (dry run)"
bash hack/chart-dry-run.sh

step "end-to-end scenarios on the real node"
# --show-output: the self-hosted scenarios print their measured figures (FIGURE lines).
cargo test --locked --features e2e --test e2e -- --test-threads=1 --show-output

step "all tests passed in $((SECONDS - started))s"
