#!/usr/bin/env bash
# Checks the Helm chart and its alerts, offline:
#   - helm lint --strict, with the default values and with ci/non-default-values.yaml
#   - helm template with both, and assertions on what they render (hack/chart-assert.py):
#     DaemonSet shape (SPEC §8), least-privilege RBAC, monitoring objects
#   - the values schema rejects typo'd keys and bad values; template guards fail loudly
#   - template guards refuse what the agent would refuse at start (no node source, zero or too
#     long durations, extraArgs repeating a chart flag)
#   - the chart's kubeVersion floor is what the defaults need (helm template works without
#     --kube-version); kubelet access alone needs Kubernetes 1.33
#   - NOTES.txt renders
#   - promtool check rules + promtool test rules on files/alerts.yaml
#
# Tools: HELM and PROMTOOL env, else found (hack/lib/tools.sh). KUBE_VERSION is the Kubernetes
# version helm renders for (offline helm otherwise assumes one older than the chart's floor).
# Exits non-zero if any check fails; ends with "N passed, N failed".
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=hack/lib/tools.sh
source "$ROOT/hack/lib/tools.sh"

CHART="$ROOT/charts/pod-checkpointer"
CI_VALUES="$CHART/ci/non-default-values.yaml"
KUBE_VERSION=${KUBE_VERSION:-1.34.4}
RELEASE=pc
NAMESPACE=pod-checkpointer

HELM=$(find_helm)
PROMTOOL=$(find_promtool)
command -v python3 >/dev/null || die "python3 is needed"
python3 -c 'import yaml' 2>/dev/null || die "python3 needs PyYAML (pip install pyyaml, or apt-get install python3-yaml)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); printf 'ok - %s\n' "$*"; }
fail() { FAILED=$((FAILED + 1)); printf 'not ok - %s\n' "$*"; }

# run DESCRIPTION CMD...: the command must succeed; its output is shown only on failure.
run() {
  local what=$1; shift
  if "$@" >"$WORK/out" 2>&1; then pass "$what"; else fail "$what"; sed 's/^/    /' "$WORK/out"; fi
}

# rejects DESCRIPTION PATTERN CMD...: the command must fail with an error matching PATTERN.
rejects() {
  local what=$1 pattern=$2; shift 2
  if "$@" >"$WORK/out" 2>&1; then
    fail "$what (was accepted)"
  elif grep -Eq "$pattern" "$WORK/out"; then
    pass "$what: $(grep -Eo "$pattern" "$WORK/out" | head -1)"
  else
    fail "$what (failed, but not with /$pattern/)"; sed 's/^/    /' "$WORK/out"
  fi
}

# assert SCENARIO ARGS...: chart-assert.py's own ok/not ok lines, counted here.
assert() {
  local out rc=0
  out=$(python3 "$ROOT/hack/chart-assert.py" "$@" 2>&1) || rc=$?
  printf '%s\n' "$out" | grep -v '^# ' || true
  PASSED=$((PASSED + $(printf '%s\n' "$out" | grep -c '^ok - ' || true)))
  FAILED=$((FAILED + $(printf '%s\n' "$out" | grep -c '^not ok - ' || true)))
  if [ "$rc" != 0 ] && ! printf '%s\n' "$out" | grep -q '^not ok - '; then
    fail "chart-assert.py $1 crashed"; printf '%s\n' "$out" | sed 's/^/    /'
  fi
}

template() { "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --kube-version "$KUBE_VERSION" "$@"; }

echo "# helm: $HELM ($("$HELM" version --short 2>/dev/null || echo unknown)), rendering for Kubernetes $KUBE_VERSION"
echo "# promtool: $PROMTOOL ($("$PROMTOOL" --version 2>&1 | head -1))"

echo "# lint"
run "helm lint --strict (default values)" "$HELM" lint --strict --kube-version "$KUBE_VERSION" "$CHART"
run "helm lint --strict (ci/non-default-values.yaml)" "$HELM" lint --strict --kube-version "$KUBE_VERSION" -f "$CI_VALUES" "$CHART"
assert values-documented "$CHART/values.yaml"

echo "# render with default values"
if template >"$WORK/default.yaml" 2>"$WORK/err"; then
  pass "helm template (default values)"
  assert defaults "$WORK/default.yaml" "$NAMESPACE" "$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CHART/Chart.yaml")"
else
  fail "helm template (default values)"; sed 's/^/    /' "$WORK/err"
fi
if template --show-only templates/rbac.yaml >"$WORK/rbac.yaml" 2>"$WORK/err"; then
  pass "helm template --show-only templates/rbac.yaml (what the node tests apply)"
  assert rbac-only "$WORK/rbac.yaml"
else
  fail "helm template --show-only templates/rbac.yaml"; sed 's/^/    /' "$WORK/err"
fi

echo "# render with ci/non-default-values.yaml"
if template -f "$CI_VALUES" >"$WORK/non-default.yaml" 2>"$WORK/err"; then
  pass "helm template (ci/non-default-values.yaml)"
  assert non-default "$WORK/non-default.yaml" "$NAMESPACE" "$CI_VALUES"
else
  fail "helm template (ci/non-default-values.yaml)"; sed 's/^/    /' "$WORK/err"
fi
if template -f "$CI_VALUES" --show-only templates/rbac.yaml >"$WORK/rbac-cluster.yaml" 2>"$WORK/err"; then
  assert rbac-only "$WORK/rbac-cluster.yaml"
else
  fail "helm template --show-only templates/rbac.yaml (ci values)"; sed 's/^/    /' "$WORK/err"
fi

echo "# render other switches"
if template --set monitoring.serviceMonitor.enabled=true >"$WORK/sm.yaml" 2>"$WORK/err"; then
  assert service-monitor-only "$WORK/sm.yaml"
else
  fail "helm template (serviceMonitor only)"; sed 's/^/    /' "$WORK/err"
fi
if template --set checkpointSelf=false >"$WORK/noself.yaml" 2>"$WORK/err"; then
  assert no-self-checkpoint "$WORK/noself.yaml"
  # Without its own checkpoint the agent needs no token at all (issue 12.1).
  assert token-allow-list "$WORK/noself.yaml" "$NAMESPACE"
else
  fail "helm template (checkpointSelf=false)"; sed 's/^/    /' "$WORK/err"
fi
echo "# token scoping (issue 12.1)"
if template --set 'rbac.tokenServiceAccounts={kube-system/default,pod-checkpointer/extra,kube-system/default}' \
    >"$WORK/tokens.yaml" 2>"$WORK/err"; then
  assert token-allow-list "$WORK/tokens.yaml" "$NAMESPACE" kube-system/default pod-checkpointer/extra \
    "pod-checkpointer/$RELEASE-pod-checkpointer"
else
  fail "helm template (rbac.tokenServiceAccounts)"; sed 's/^/    /' "$WORK/err"
fi
if template --set 'rbac.tokenServiceAccounts={team-a/deployer}' --set allNamespaces=true >"$WORK/tokens-all.yaml" 2>"$WORK/err"; then
  assert token-allow-list "$WORK/tokens-all.yaml" "$NAMESPACE" team-a/deployer "pod-checkpointer/$RELEASE-pod-checkpointer"
else
  fail "helm template (rbac.tokenServiceAccounts with allNamespaces)"; sed 's/^/    /' "$WORK/err"
fi
rejects "template refuses a token account in a namespace the agent does not watch" \
  "rbac.tokenServiceAccounts: team-a/deployer is in namespace team-a, which is not watched" \
  template --set 'rbac.tokenServiceAccounts={team-a/deployer}'
rejects "schema refuses a token account without its namespace" "tokenServiceAccounts" \
  template --set 'rbac.tokenServiceAccounts={default}'

echo "# placement (issue 12.10)"
if template --set controlPlaneOnly=false >"$WORK/anywhere.yaml" 2>"$WORK/err"; then
  assert placement "$WORK/anywhere.yaml" false
else
  fail "helm template (controlPlaneOnly=false)"; sed 's/^/    /' "$WORK/err"
fi
if template --set hostPaths.manifestDirType=DirectoryOrCreate >"$WORK/create.yaml" 2>"$WORK/err" &&
   grep -A2 'path: /etc/kubernetes/manifests$' "$WORK/create.yaml" | grep -q 'type: DirectoryOrCreate'; then
  pass "hostPaths.manifestDirType=DirectoryOrCreate mounts the static pod directory with that type"
else
  fail "hostPaths.manifestDirType=DirectoryOrCreate"; sed 's/^/    /' "$WORK/err"
fi
rejects "schema refuses another hostPath type for the static pod directory" "manifestDirType" \
  template --set hostPaths.manifestDirType=File

echo "# admission policy for the checkpoint annotation (issue 12.2)"
if template --set admissionPolicy.enabled=true >"$WORK/vap.yaml" 2>"$WORK/err"; then
  assert admission-policy "$WORK/vap.yaml" kube-system "$NAMESPACE"
else
  fail "helm template (admissionPolicy.enabled)"; sed 's/^/    /' "$WORK/err"
fi
if template --set admissionPolicy.enabled=true --set 'admissionPolicy.namespaces={apps}' \
    --set 'admissionPolicy.serviceAccounts={team-a/deployer}' >"$WORK/vap2.yaml" 2>"$WORK/err"; then
  assert admission-policy "$WORK/vap2.yaml" apps "$NAMESPACE" -- team-a/deployer
else
  fail "helm template (admissionPolicy namespaces and serviceAccounts)"; sed 's/^/    /' "$WORK/err"
fi
rejects "admissionPolicy.enabled on Kubernetes 1.29 is refused" "admissionPolicy.enabled needs Kubernetes 1.30" \
  "$HELM" template "$RELEASE" "$CHART" --kube-version 1.29.9 --set admissionPolicy.enabled=true
rejects "schema refuses an unknown validation action" "validationActions" \
  template --set admissionPolicy.enabled=true --set 'admissionPolicy.validationActions={Block}'

echo "# admin address (issue 12.6)"
# The admin address (issue 12.6): dual-stack [::] by default (checked with the defaults above),
# IPv4 or loopback only on request (metrics behind a kube-rbac-proxy; the exec probes still work).
for addr in 0.0.0.0 127.0.0.1 ::1; do
  if template --set "admin.address=$addr" >"$WORK/addr.yaml" 2>"$WORK/err" &&
     python3 - "$WORK/addr.yaml" "$addr" <<'PY'
import sys, yaml
ds = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "DaemonSet"][0]
args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
addr = sys.argv[2]
want = f"--admin-addr=[{addr}]:10266" if ":" in addr else f"--admin-addr={addr}:10266"
sys.exit(0 if want in args else f"{want} not in {args}")
PY
  then pass "admin.address=$addr renders --admin-addr for that address"
  else fail "admin.address=$addr"; sed 's/^/    /' "$WORK/err"
  fi
done
run "renders with the CRI disabled (cri.socketPath empty) and the kubelet as the node source" \
  template --set cri.socketPath= --set kubelet.enabled=true
if template --set allNamespaces=true >"$WORK/all-ns.yaml" 2>"$WORK/err" &&
   python3 - "$WORK/all-ns.yaml" <<'PY'
import sys, yaml
ds = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "DaemonSet"][0]
args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
sys.exit(0 if "--all-namespaces" in args and not any(a.startswith("--namespaces") for a in args) else 1)
PY
then
  pass "allNamespaces=true passes --all-namespaces and no --namespaces"
else
  fail "allNamespaces=true passes --all-namespaces and no --namespaces"; sed 's/^/    /' "$WORK/err"
fi
run "renders with a kubelet CA file instead of skipping verification" \
  template --set kubelet.enabled=true --set kubelet.caFile=/etc/kubelet-ca/ca.crt
run "renders into an existing service account" \
  template --set serviceAccount.create=false --set serviceAccount.name=existing

echo "# values schema and guards"
rejects "schema rejects a typo'd top-level key (imageTag)" "additional properties|additionalProperties|not allowed" \
  template --set imageTag=1.2.3
rejects "schema rejects a typo'd nested key (kubelet.enable)" "additional properties|additionalProperties|not allowed" \
  template --set kubelet.enable=true
rejects "schema rejects a typo'd monitoring key (monitoring.podmonitor)" "additional properties|additionalProperties|not allowed" \
  template --set monitoring.podmonitor.enabled=true
rejects "schema rejects an unknown log format" "logFormat" template --set logFormat=xml
rejects "schema rejects a duration without unit" "gracePeriod" template --set gracePeriod=60
rejects "schema rejects a fallback timeout without unit" "fallbackTimeout" template --set fallbackTimeout=300
# What the agent refuses at start must not render (issue 12.12).
rejects "template refuses no node source (no CRI socket, no kubelet)" "cri.socketPath is empty and kubelet.enabled is false" \
  template --set cri.socketPath=
rejects "template refuses pollInterval=0s" "pollInterval .0s. must be more than zero" template --set pollInterval=0s
rejects "template refuses pollInterval=0ms" "pollInterval .0ms. must be more than zero" template --set pollInterval=0ms
rejects "template refuses pollInterval over 1h" "pollInterval .1h1s. must be at most 1h" template --set pollInterval=1h1s
rejects "template refuses gracePeriod=0s" "gracePeriod .0s. must be more than zero" template --set gracePeriod=0s
rejects "template refuses gracePeriod=0m0s" "gracePeriod .0m0s. must be more than zero" template --set gracePeriod=0m0s
rejects "template refuses fallbackTimeout=0s" "fallbackTimeout .0s. must be more than zero" template --set fallbackTimeout=0s
rejects "template refuses gracePeriod over a year" "gracePeriod .8761h. must be at most 8760h" template --set gracePeriod=8761h
rejects "template refuses extraArgs repeating a chart flag (--flag=value)" "extraArgs: --poll-interval is set by the chart; use the value pollInterval" \
  template --set 'extraArgs={--poll-interval=2s}'
rejects "template refuses extraArgs repeating a chart flag (--flag value)" "extraArgs: --grace-period is set by the chart; use the value gracePeriod" \
  template --set 'extraArgs={--grace-period,2m}'
rejects "template refuses extraArgs choosing the namespaces" "extraArgs: --all-namespaces is set by the chart; use the value allNamespaces" \
  template --set 'extraArgs={--all-namespaces}'
rejects "template refuses extraArgs repeating a kubelet flag the chart sets" "extraArgs: --kubelet-url is set by the chart; use the value kubelet.url" \
  template --set kubelet.enabled=true --set 'extraArgs={--kubelet-url=https://10.0.0.1:10250}'
run "extraArgs may pass a kubelet flag the chart does not set" \
  template --set 'extraArgs={--kubelet-url=https://10.0.0.1:10250}'
rejects "schema rejects a relative host path" "hostPaths" template --set hostPaths.stateDir=var/lib/x
rejects "schema rejects kubelet access without a URL" "url" template --set kubelet.enabled=true --set kubelet.url=
rejects "template rejects two hostPaths on one directory" "every path must be its own directory" \
  template --set hostPaths.stateDir=/etc/kubernetes/manifests
rejects "template rejects serviceAccount.create=false without a name" "serviceAccount.name" \
  template --set serviceAccount.create=false
# The floor is what the defaults need; kubelet access (off by default) needs 1.33 on its own.
run "helm template without --kube-version renders the defaults" "$HELM" template "$RELEASE" "$CHART"
run "kubeVersion: Kubernetes 1.32 is accepted with the defaults" "$HELM" template "$RELEASE" "$CHART" --kube-version 1.32.9
rejects "kubeVersion floor: Kubernetes 1.18 is refused" "incompatible with Kubernetes" \
  "$HELM" template "$RELEASE" "$CHART" --kube-version 1.18.20
rejects "kubelet.enabled on Kubernetes 1.32 is refused" "kubelet.enabled needs Kubernetes 1.33" \
  "$HELM" template "$RELEASE" "$CHART" --kube-version 1.32.9 --set kubelet.enabled=true
rejects "kubelet.enabled without --kube-version says to pass one" "kubelet.enabled needs Kubernetes 1.33.*--kube-version" \
  "$HELM" template "$RELEASE" "$CHART" --set kubelet.enabled=true
run "kubelet.enabled on Kubernetes 1.33.0 is accepted" \
  "$HELM" template "$RELEASE" "$CHART" --kube-version 1.33.0 --set kubelet.enabled=true

echo "# NOTES.txt"
# helm renders NOTES only on install (which needs a cluster here): render it through a copy of
# the chart where it is wrapped in a template.
mkdir -p "$WORK/notes-chart"
cp -r "$CHART/." "$WORK/notes-chart/"
{ echo '{{- define "notes-check" }}'; cat "$CHART/templates/NOTES.txt"; echo '{{- end }}'; } >"$WORK/notes-chart/templates/_notes-check.tpl"
rm "$WORK/notes-chart/templates/NOTES.txt"
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: {{ include "notes-check" . | quote }}\n' \
  >"$WORK/notes-chart/templates/notes-check.yaml"
for values in default "$CI_VALUES"; do
  set -- --show-only templates/notes-check.yaml
  [ "$values" = default ] || set -- "$@" -f "$values"
  if "$HELM" template "$RELEASE" "$WORK/notes-chart" -n "$NAMESPACE" --kube-version "$KUBE_VERSION" "$@" \
      >"$WORK/notes.yaml" 2>"$WORK/err" && grep -q 'is installed as DaemonSet' "$WORK/notes.yaml"; then
    pass "NOTES.txt renders ($(basename "$values"))"
  else
    fail "NOTES.txt renders ($(basename "$values"))"; sed 's/^/    /' "$WORK/err"
  fi
done

echo "# the agent accepts the rendered command line"
# Every flag the chart passes must parse: clap checks each argument (names, values, enums)
# before it acts on a trailing --help. Needs a built binary; skipped without one.
BIN=${POD_CHECKPOINTER_BIN:-}
if [ -z "$BIN" ]; then
  BIN=$(ls -t "$ROOT"/target/release/pod-checkpointer "$ROOT"/target/*/release/pod-checkpointer \
    "$ROOT"/target/debug/pod-checkpointer 2>/dev/null | head -n1 || true)
fi
if [ -n "$BIN" ] && [ -x "$BIN" ]; then
  echo "# binary: $BIN"
  for rendered in default non-default; do
    [ -f "$WORK/$rendered.yaml" ] || continue
    mapfile -t agent_args < <(python3 - "$WORK/$rendered.yaml" <<'PY'
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d.get("kind") == "DaemonSet":
        print("\n".join(d["spec"]["template"]["spec"]["containers"][0]["args"]))
PY
    )
    run "pod-checkpointer parses the $rendered command line (${#agent_args[@]} args)" "$BIN" "${agent_args[@]}" --help
    # --help stops before the checks that span flags (--namespaces or --all-namespaces). Without
    # NODE_NAME the agent stops at its first runtime check, right after parsing, touching nothing.
    if env -u NODE_NAME -u POD_NAME -u POD_NAMESPACE -u ALL_NAMESPACES -u FALLBACK_TIMEOUT \
        timeout 20 "$BIN" "${agent_args[@]}" >"$WORK/out" 2>&1; then
      fail "pod-checkpointer accepts the $rendered command line as a whole (ran without NODE_NAME)"
    elif grep -q -- '--node-name (or NODE_NAME) is required' "$WORK/out"; then
      pass "pod-checkpointer accepts the $rendered command line as a whole"
    else
      fail "pod-checkpointer accepts the $rendered command line as a whole"; sed 's/^/    /' "$WORK/out"
    fi
  done
else
  echo "# skipped: no pod-checkpointer binary (cargo build, or set POD_CHECKPOINTER_BIN)"
fi

echo "# docs"
assert doc-links "$ROOT" "$ROOT/README.md" "$ROOT"/docs/*.md

echo "# alerts"
run "promtool check rules files/alerts.yaml" "$PROMTOOL" check rules "$CHART/files/alerts.yaml"
run "promtool test rules tests/alerts_test.yaml" "$PROMTOOL" test rules "$CHART/tests/alerts_test.yaml"
src_args=()
# Once the agent's metrics module exists, the alerts' metric names must appear in its source.
[ -f "$ROOT/src/metrics.rs" ] && src_args=("$ROOT/src")
assert alerts "$CHART" "$CHART/tests/alerts_test.yaml" "${src_args[@]}"
if template -f "$CI_VALUES" --show-only templates/prometheusrule.yaml >"$WORK/rule.yaml" 2>"$WORK/err" &&
   python3 - "$WORK/rule.yaml" "$CHART/files/alerts.yaml" "$CI_VALUES" <<'PY'
import sys, yaml
rendered = yaml.safe_load(open(sys.argv[1]))
base = yaml.safe_load(open(sys.argv[3]))["monitoring"]["prometheusRule"]["runbookBaseUrl"]
text = open(sys.argv[2]).read().replace(
    "https://github.com/pod-checkpointer/pod-checkpointer/blob/main/README.md", base)
sys.exit(0 if rendered["spec"]["groups"] == yaml.safe_load(text)["groups"] else 1)
PY
then
  pass "the PrometheusRule ships files/alerts.yaml unchanged (except the runbook address)"
else
  fail "the PrometheusRule ships files/alerts.yaml unchanged"; sed 's/^/    /' "$WORK/err"
fi

echo
echo "chart-check: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
