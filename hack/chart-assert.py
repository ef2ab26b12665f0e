#!/usr/bin/env python3
"""Assertions on the rendered pod-checkpointer chart (used by hack/chart-check.sh).

usage: chart-assert.py SCENARIO RENDERED.yaml [ARG...]

Each scenario checks what the chart promises for one set of values (SPEC.md §8 and the agent's
interface), printing one "ok - ..." or "not ok - ..." line per check. Exit status 1 if any
check failed.

Scenarios:
  defaults RENDERED RELEASE_NAMESPACE APP_VERSION
  non-default RENDERED RELEASE_NAMESPACE VALUES.yaml
  rbac-only RENDERED                 (the output of --show-only templates/rbac.yaml)
  token-allow-list RENDERED RELEASE_NAMESPACE ACCOUNT...  (ns/name the agent may mint tokens for)
  placement RENDERED CONTROL_PLANE_ONLY(true|false) [VALUES.yaml]
  admission-policy RENDERED NAMESPACE... [-- NS/SA...]
  service-monitor-only RENDERED
  no-self-checkpoint RENDERED
  alerts CHART_DIR TEST_FILE [SRC_DIR] (alerts.yaml: metric names, runbooks, a test per alert)
  values-documented VALUES.yaml
  doc-links REPO_ROOT FILE.md...     (every link stays inside the repository and resolves)
"""

import pathlib
import re
import sys

import yaml

FAILED = 0
PASSED = 0


def check(cond, what):
    global FAILED, PASSED
    if cond:
        PASSED += 1
        print(f"ok - {what}")
    else:
        FAILED += 1
        print(f"not ok - {what}")
    return cond


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind):
    found = by_kind(docs, kind)
    check(len(found) == 1, f"exactly one {kind} (found {len(found)})")
    return found[0] if found else {}


# The rules the agent needs inside each namespace it works in; each is used by the agent.
NAMESPACED_RULES = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["secrets", "configmaps"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
]
SELF_RULES = [{"apiGroups": ["apps"], "resources": ["daemonsets"], "verbs": ["get", "list", "watch"]}]
KUBELET_RULES = [{"apiGroups": [""], "resources": ["nodes/pods"], "verbs": ["get"]}]

# Metrics the agent exports (the interface the alerts may use), without the prefix.
METRICS = {
    "checkpoints", "checkpoint_activated_timestamp_seconds", "activations_total",
    "deactivations_total", "removals_total", "api_reachable", "runtime_poll_errors_total",
    "kubelet_poll_errors_total", "reconcile_duration_seconds", "last_sync_timestamp_seconds",
    "refused_pods", "api_errors_total", "write_errors_total", "lock_held", "build_info",
    "fallbacks_total", "disk_readable", "own_copy_running",
}

CHECKPOINT_ANNOTATION = "checkpointer.alpha.coreos.com/checkpoint"
CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"


def token_rule(names):
    """The only form of the TokenRequest permission: create, for named accounts (issue 12.1)."""
    return {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"],
            "resourceNames": sorted(names)}


def token_grants(docs):
    """{namespace: [account names]} the rendered RBAC lets the agent mint tokens for; "*" for a
    rule without resourceNames; cluster-wide rules under the key "*"."""
    out = {}
    for d in by_kind(docs, "Role") + by_kind(docs, "ClusterRole"):
        ns = d["metadata"].get("namespace", "*") if d["kind"] == "Role" else "*"
        for r in d.get("rules", []):
            if "serviceaccounts/token" in r.get("resources", []) or "*" in r.get("resources", []):
                out.setdefault(ns, []).extend(r.get("resourceNames") or ["*"])
    return {k: sorted(v) for k, v in out.items()}
CAPS = {"CHOWN", "FOWNER", "DAC_OVERRIDE"}


def default_values():
    with open(pathlib.Path(__file__).resolve().parent.parent / "charts/pod-checkpointer/values.yaml") as f:
        return yaml.safe_load(f)


def args_of(container):
    out = {}
    for a in container.get("args", []):
        k, _, v = a.partition("=")
        out[k] = v
    return out


def check_rbac_bindings(docs, sa_name, sa_namespace):
    for b in by_kind(docs, "RoleBinding") + by_kind(docs, "ClusterRoleBinding"):
        name = f'{b["kind"]} {b["metadata"].get("namespace", "")}/{b["metadata"]["name"]}'
        check(b["subjects"] == [{"kind": "ServiceAccount", "name": sa_name, "namespace": sa_namespace}],
              f"{name} binds only the agent's service account {sa_namespace}/{sa_name}")
        role_kind = "Role" if b["kind"] == "RoleBinding" else "ClusterRole"
        check(b["roleRef"]["kind"] == role_kind and any(
            r["metadata"]["name"] == b["roleRef"]["name"] and
            r["metadata"].get("namespace") == b["metadata"].get("namespace")
            for r in by_kind(docs, role_kind)), f"{name} refers to a {role_kind} rendered with it")


def check_daemonset(ds, namespace, namespaces_arg, values):
    """Invariants of the DaemonSet for any values. namespaces_arg None = all namespaces."""
    spec = ds["spec"]
    pod = spec["template"]["spec"]
    meta = spec["template"]["metadata"]
    check(ds["metadata"]["namespace"] == namespace, "DaemonSet is in the release namespace")
    check(spec["selector"]["matchLabels"].items() <= meta["labels"].items(),
          "pod template labels match the selector")
    check(pod.get("hostNetwork") is True, "pod uses the host network")
    check(pod.get("dnsPolicy") == "ClusterFirstWithHostNet", "dnsPolicy is ClusterFirstWithHostNet")
    check(pod.get("automountServiceAccountToken") is True, "pod mounts its service-account token")
    check(pod.get("priorityClassName") == values["priorityClassName"],
          f"priorityClassName is {values['priorityClassName']}")
    check(pod.get("tolerations") == values["tolerations"], "tolerations are the configured ones")
    us = spec.get("updateStrategy", {})
    check(us == values["updateStrategy"], f"updateStrategy is {values['updateStrategy']}")
    (c,) = pod["containers"]
    check("ports" not in c, "no container port declared (would become a hostPort on a host-network pod)")
    env = {e["name"]: e for e in c.get("env", [])}
    for name, field in [("NODE_NAME", "spec.nodeName"), ("POD_NAME", "metadata.name"),
                        ("POD_NAMESPACE", "metadata.namespace")]:
        check(env.get(name, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == field,
              f"env {name} comes from the downward API ({field})")
    sc = c.get("securityContext", {})
    check(sc.get("runAsUser") == 0 and sc.get("runAsNonRoot") is False, "runs as root (uid 0)")
    check(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation is false")
    check(sc.get("readOnlyRootFilesystem") is True, "root filesystem is read-only")
    check(sc.get("privileged") in (None, False), "not privileged")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], "drops ALL capabilities")
    check(set(sc.get("capabilities", {}).get("add", [])) == CAPS,
          "adds back only CHOWN, FOWNER, DAC_OVERRIDE")
    check(sc.get("seccompProfile") == {"type": "RuntimeDefault"}, "seccomp profile RuntimeDefault")
    port = values["adminPort"]
    lock_file = values["hostPaths"]["lockFile"]
    # Exec probes (issue 12.4): an httpGet probe on a host-network port asks whichever copy holds
    # the port; the exec probe asks the copy in its own container (holder or standby).
    for probe, kind in [("startupProbe", "startup"), ("livenessProbe", "live"), ("readinessProbe", "ready")]:
        p = c.get(probe, {})
        check(p.get("exec", {}).get("command") == ["/pod-checkpointer", "probe", kind, f"--lock-file={lock_file}"]
              and "httpGet" not in p,
              f"{probe} is the exec probe 'pod-checkpointer probe {kind}' on the lock {lock_file}")
    startup = c.get("startupProbe", {})
    check(startup.get("periodSeconds", 0) * startup.get("failureThreshold", 0) >= 300,
          "the startup probe allows 5 minutes (a first pass in an API brownout is not a restart)")
    check(port != 9808, "the admin port is not 9808 (the CSI livenessprobe's default)")

    args = args_of(c)
    address = values.get("admin", {}).get("address", "::")
    want = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    check(args.get("--admin-addr") == want, f"--admin-addr binds {want} (admin.address {address})")
    if namespaces_arg is None:
        check("--all-namespaces" in args and "--namespaces" not in args,
              "--all-namespaces and no --namespaces flag (all namespaces)")
    else:
        check(namespaces_arg and args.get("--namespaces") == namespaces_arg and "--all-namespaces" not in args,
              f"--namespaces={namespaces_arg} (never empty) and no --all-namespaces")
    for flag, key in [("--poll-interval", "pollInterval"), ("--grace-period", "gracePeriod"),
                      ("--fallback-timeout", "fallbackTimeout"), ("--log-format", "logFormat"),
                      ("--log-level", "logLevel")]:
        check(args.get(flag) == values[key], f"{flag}={values[key]} ({key})")
    names = [a.partition("=")[0] for a in c.get("args", []) if a.startswith("--")]
    check(len(names) == len(set(names)), f"no flag is passed twice (clap refuses repeats): {names}")

    # hostPath mounts: same path inside and out (manifests name these paths for the kubelet).
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    for m in c.get("volumeMounts", []):
        hp = volumes.get(m["name"], {}).get("hostPath")
        if hp:
            check(hp["path"] == m["mountPath"], f"hostPath {hp['path']} is mounted at the same path")
    paths = values["hostPaths"]
    for flag, key in [("--manifest-dir", "manifestDir"), ("--inactive-manifest-dir", "inactiveManifestDir"),
                      ("--secret-dir", "secretDir"), ("--configmap-dir", "configmapDir"),
                      ("--state-dir", "stateDir")]:
        check(args.get(flag) == paths[key], f"{flag}={paths[key]}")
        m = mounts.get(paths[key])
        check(m is not None and not m.get("readOnly") and "hostPath" in volumes.get(m["name"], {}),
              f"{paths[key]} is a writable hostPath mount")
    check(volumes.get(mounts.get(paths["manifestDir"], {}).get("name"), {}).get("hostPath", {}).get("type")
          == "Directory", "the kubelet's static-pod directory must already exist (type Directory)")
    lock_dir = paths["lockFile"].rsplit("/", 1)[0]
    check(args.get("--lock-file") == paths["lockFile"] and lock_dir in mounts,
          f"--lock-file={paths['lockFile']} and its directory is mounted")
    sock = values["cri"]["socketPath"]
    if sock:
        sock_dir = sock.rsplit("/", 1)[0]
        m = mounts.get(sock_dir, {})
        check(args.get("--cri-endpoint") == f"unix://{sock}", f"--cri-endpoint=unix://{sock}")
        check(m.get("readOnly") is True and m.get("mountPropagation") == "HostToContainer",
              f"CRI socket directory {sock_dir} is mounted read-only, HostToContainer")
    else:
        check(args.get("--cri-endpoint") == "", "--cri-endpoint is empty (runtime view disabled)")
    return pod, c, args


def scenario_defaults(rendered, namespace, app_version):
    docs = load(rendered)
    values = default_values()
    kinds = sorted(d["kind"] for d in docs)
    expected_ns = sorted(set(values["namespaces"]) | {namespace})
    # One Role+RoleBinding per watched namespace, and one more pair in the release namespace for
    # the agent's own token (issue 12.1).
    check(kinds == sorted(["ServiceAccount", "DaemonSet"] + ["Role", "RoleBinding"] * (len(expected_ns) + 1)),
          f"renders only ServiceAccount, DaemonSet, a Role+RoleBinding per namespace and the token Role: {kinds}")
    check(not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding"),
          "no cluster-wide RBAC by default")
    sa = one(docs, "ServiceAccount")
    token_roles = [r for r in by_kind(docs, "Role") if any(
        "serviceaccounts/token" in rule["resources"] for rule in r["rules"])]
    main_roles = [r for r in by_kind(docs, "Role") if r not in token_roles]
    check(sorted(r["metadata"]["namespace"] for r in main_roles) == expected_ns,
          f"Roles in {expected_ns} (values.namespaces + release namespace)")
    for r in main_roles:
        want = NAMESPACED_RULES + (SELF_RULES if r["metadata"]["namespace"] == namespace else [])
        check(r["rules"] == want, f"Role in {r['metadata']['namespace']} has exactly the agent's rules")
    check(token_grants(docs) == {namespace: [sa["metadata"]["name"]]},
          f"by default tokens may be minted only for the agent's own account {namespace}/{sa['metadata']['name']}"
          f" (issue 12.1): {token_grants(docs)}")
    check([r["rules"] for r in token_roles] == [[token_rule([sa["metadata"]["name"]])]],
          "the token Role has exactly create on serviceaccounts/token with resourceNames")
    check(not by_kind(docs, "ValidatingAdmissionPolicy"), "no admission policy by default")
    check_rbac_bindings(docs, sa["metadata"]["name"], namespace)
    ds = one(docs, "DaemonSet")
    pod, c, args = check_daemonset(ds, namespace, ",".join(expected_ns), values)
    check(pod.get("serviceAccountName") == sa["metadata"]["name"], "pod runs as the chart's service account")
    check(pod["tolerations"] == [{"operator": "Exists"}], "tolerates every taint by default")
    check(pod["priorityClassName"] == "system-node-critical", "system-node-critical by default")
    check(ds["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
          "RollingUpdate with maxUnavailable 1 by default")
    check(ds["spec"]["template"]["metadata"].get("annotations", {}).get(CHECKPOINT_ANNOTATION) == "true",
          f'own pod template carries {CHECKPOINT_ANNOTATION}: "true"')
    check(c["image"].endswith(f":{app_version}"), f"image tag defaults to appVersion {app_version}")
    check(not any(a.startswith("--kubelet") for a in args), "kubelet access off by default")
    check(args.get("--cri-endpoint") == "unix:///run/containerd/containerd.sock", "containerd socket by default")
    check(c.get("resources", {}).get("requests") and c["resources"].get("limits", {}).get("memory"),
          "resources: requests and a memory limit by default")
    check_control_plane_only(pod, {})
    manifests = [v for v in pod["volumes"] if v.get("hostPath", {}).get("path") == values["hostPaths"]["manifestDir"]]
    check([v["hostPath"]["type"] for v in manifests] == ["Directory"],
          "the static pod directory is mounted with type Directory by default (never created where the kubelet reads none)")


def check_control_plane_only(pod, user_affinity):
    """The pod goes only to nodes labelled node-role.kubernetes.io/control-plane (any value: k3s
    and RKE2 set "true", kubeadm ""), on top of every required term the user gave (issue 12.10)."""
    want = {"key": CONTROL_PLANE_LABEL, "operator": "Exists"}
    terms = (pod.get("affinity", {}).get("nodeAffinity", {})
             .get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", []))
    user_terms = (user_affinity.get("nodeAffinity", {})
                  .get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", []))
    check(terms and all(want in t.get("matchExpressions", []) for t in terms),
          f"every required node selector term asks for the {CONTROL_PLANE_LABEL} label (control-plane nodes only)")
    if user_terms:
        check(len(terms) == len(user_terms) and all(
            [e for e in t["matchExpressions"] if e != want] == u.get("matchExpressions", [])
            for t, u in zip(terms, user_terms)), "the user's required terms are kept, each narrowed to control-plane nodes")
    rest = {k: v for k, v in pod.get("affinity", {}).items() if k != "nodeAffinity"}
    check(rest == {k: v for k, v in user_affinity.items() if k != "nodeAffinity"},
          "the rest of the user's affinity is kept as given")


def scenario_non_default(rendered, namespace, values_file):
    docs = load(rendered)
    values = default_values()
    with open(values_file) as f:
        override = yaml.safe_load(f)

    def merge(a, b):
        for k, v in b.items():
            a[k] = merge(dict(a[k]), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a
    values = merge(values, override)
    check(values["allNamespaces"] is True and values["kubelet"]["enabled"] is True,
          "non-default values enable allNamespaces and kubelet access")
    check(all(r["metadata"]["name"].endswith("-token") for r in by_kind(docs, "Role") + by_kind(docs, "RoleBinding")),
          "allNamespaces: no namespaced Roles but the token ones")
    crs = {r["metadata"]["name"]: r for r in by_kind(docs, "ClusterRole")}
    check(len(crs) == 2 and len(by_kind(docs, "ClusterRoleBinding")) == 2,
          "allNamespaces + kubelet: two ClusterRoles and two ClusterRoleBindings")
    kubelet = [r for r in crs.values() if r["rules"] == KUBELET_RULES]
    main = [r for r in crs.values() if r["rules"] == NAMESPACED_RULES + SELF_RULES]
    check(len(kubelet) == 1, "a ClusterRole with exactly nodes/pods get (kubelet fine-grained authz)")
    check(len(main) == 1, "a ClusterRole with exactly the agent's namespaced rules")
    sa = one(docs, "ServiceAccount")
    # allNamespaces: the token permission still only per namespace, for the listed accounts.
    want = {}
    for entry in values["rbac"]["tokenServiceAccounts"] + [f'{namespace}/{sa["metadata"]["name"]}']:
        ns, name = entry.split("/")
        want.setdefault(ns, []).append(name)
    check(token_grants(docs) == {k: sorted(v) for k, v in want.items()},
          f"allNamespaces: tokens only for the listed accounts, no cluster-wide token rule: {token_grants(docs)}")
    check(sa["metadata"]["name"] == values["serviceAccount"]["name"], "service account name from values")
    check_rbac_bindings(docs, sa["metadata"]["name"], namespace)
    ds = one(docs, "DaemonSet")
    pod, c, args = check_daemonset(ds, namespace, None, values)
    check(args.get("--kubelet-url") == values["kubelet"]["url"], "--kubelet-url from values")
    check(args.get("--kubelet-token-file") == "/var/run/secrets/kubernetes.io/serviceaccount/token",
          "kubelet bearer token is the pod's service-account token")
    check("--kubelet-insecure-skip-tls-verify" in args and "--kubelet-ca-file" not in args,
          "insecureSkipTLSVerify passes the flag and no CA file")
    check(c["args"][-len(values["extraArgs"]):] == values["extraArgs"], "extraArgs are appended last")
    check(c["resources"] == values["resources"], "resources from values")
    check(pod["nodeSelector"] == values["nodeSelector"], "nodeSelector from values")
    check_control_plane_only(pod, values["affinity"])
    vap = one(docs, "ValidatingAdmissionPolicy")
    check(vap.get("apiVersion") == "admissionregistration.k8s.io/v1", "the admission policy is admissionregistration.k8s.io/v1")
    env = {e["name"]: e.get("value") for e in c["env"]}
    check(env.get("KUBERNETES_SERVICE_HOST") == values["apiServer"]["host"] and
          env.get("KUBERNETES_SERVICE_PORT") == str(values["apiServer"]["port"]),
          "apiServer host/port become KUBERNETES_SERVICE_HOST/PORT")
    check(c["image"] == f'{values["image"]["repository"]}:{values["image"]["tag"]}@{values["image"]["digest"]}',
          "image reference is repository:tag@digest")
    pm = one(docs, "PodMonitor")
    sm = one(docs, "ServiceMonitor")
    svc = one(docs, "Service")
    pr = one(docs, "PrometheusRule")
    for obj in (pm, sm, pr):
        check(obj.get("apiVersion") == "monitoring.coreos.com/v1", f"{obj.get('kind')} is monitoring.coreos.com/v1")
    check(svc.get("spec", {}).get("clusterIP") == "None", "the metrics Service is headless")
    check(svc["spec"]["ports"][0]["targetPort"] == values["adminPort"], "Service targets the admin port by number")
    check(svc["spec"]["selector"] == ds["spec"]["selector"]["matchLabels"], "Service selects the agent's pods")
    for mon, eps in [(pm, "podMetricsEndpoints"), (sm, "endpoints")]:
        ep = mon["spec"][eps][0]
        check(any(r.get("action") == "drop" and "config_mirror" in r["sourceLabels"][0]
                  for r in ep.get("relabelings", [])),
              f"{mon['kind']} drops the mirror pod of the agent's own checkpoint (no duplicate series)")
        check(mon["spec"]["selector"]["matchLabels"] == ds["spec"]["selector"]["matchLabels"],
              f"{mon['kind']} selects the agent's pods")
        check({"targetLabel": "job", "replacement": "pod-checkpointer", "action": "replace"} in ep.get("relabelings", []),
              f'{mon["kind"]} sets job="pod-checkpointer" (the up/absent alerts select it, whatever the release is called)')
    addr = [r for r in pm["spec"]["podMetricsEndpoints"][0]["relabelings"] if r.get("targetLabel") == "__address__"]
    check(len(addr) == 2 and all(r["replacement"].endswith(f":{values['adminPort']}") for r in addr),
          "PodMonitor points port-less targets at the admin port (IPv4 and IPv6)")
    base = values["monitoring"]["prometheusRule"]["runbookBaseUrl"]
    urls = [r["annotations"]["runbook_url"] for g in pr["spec"]["groups"] for r in g["rules"]]
    check(urls and all(u.startswith(base + "#") for u in urls), "runbookBaseUrl replaces the runbook address")


def scenario_rbac_only(rendered):
    docs = load(rendered)
    kinds = {d["kind"] for d in docs}
    check(kinds <= {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} and kinds,
          f"templates/rbac.yaml holds only RBAC objects: {sorted(kinds)}")
    for d in docs:
        for rule in d.get("rules", []):
            check("*" not in rule.get("verbs", []) + rule.get("resources", []) + rule.get("apiGroups", []),
                  f"{d['kind']} {d['metadata']['name']}: no wildcard in {rule['resources']}")
            if "serviceaccounts/token" in rule.get("resources", []):
                check(rule.get("resourceNames"),
                      f"{d['kind']} {d['metadata'].get('namespace', '')}/{d['metadata']['name']}: serviceaccounts/token"
                      " only with resourceNames (no minting tokens for any account, issue 12.1)")
                check(d["kind"] == "Role", "the token permission is never cluster-wide")


def scenario_token_allow_list(rendered, namespace, *accounts):
    """rbac.tokenServiceAccounts (plus the agent's own account) becomes resourceNames, one Role per
    namespace, and nothing else may mint tokens."""
    docs = load(rendered)
    want = {}
    for entry in accounts:
        ns, name = entry.split("/")
        want.setdefault(ns, []).append(name)
    want = {k: sorted(set(v)) for k, v in want.items()}
    check(token_grants(docs) == want, f"tokens may be minted exactly for {want}: {token_grants(docs)}")
    for r in by_kind(docs, "Role"):
        for rule in r["rules"]:
            if "serviceaccounts/token" in rule["resources"]:
                check(rule == token_rule(want.get(r["metadata"]["namespace"], [])),
                      f"token rule in {r['metadata']['namespace']} is create with resourceNames only")


def scenario_placement(rendered, control_plane_only, values_file=None):
    docs = load(rendered)
    pod = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    user = {}
    if values_file:
        with open(values_file) as f:
            user = (yaml.safe_load(f) or {}).get("affinity") or {}
    if control_plane_only == "true":
        check_control_plane_only(pod, user)
    else:
        check(pod.get("affinity", {}) == user, "controlPlaneOnly false: the affinity is the user's, unchanged")


def scenario_admission_policy(rendered, *rest):
    """The ValidatingAdmissionPolicy that limits who may carry the checkpoint annotation."""
    rest = list(rest)
    namespaces = rest[:rest.index("--")] if "--" in rest else rest
    accounts = rest[rest.index("--") + 1:] if "--" in rest else []
    docs = load(rendered)
    vap = one(docs, "ValidatingAdmissionPolicy")
    binding = one(docs, "ValidatingAdmissionPolicyBinding")
    for obj in (vap, binding):
        check(obj.get("apiVersion") == "admissionregistration.k8s.io/v1", f"{obj.get('kind')} is admissionregistration.k8s.io/v1")
    spec = vap.get("spec", {})
    rules = spec.get("matchConstraints", {}).get("resourceRules", [])
    check(rules == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                     "resources": ["pods"]}], "the policy checks pods on CREATE and UPDATE")
    check(spec.get("failurePolicy") == "Fail", "failurePolicy Fail (a broken policy does not let pods through)")
    check(binding["spec"].get("policyName") == vap["metadata"]["name"], "the binding names the policy")
    check(binding["spec"].get("validationActions") == ["Deny"], "the binding denies by default")
    params = {v["name"]: v["expression"] for v in spec.get("variables", [])}
    check(yaml.safe_load(params.get("allowedNamespaces", "null")) == sorted(namespaces),
          f"allowed namespaces are {sorted(namespaces)}: {params.get('allowedNamespaces')}")
    check(yaml.safe_load(params.get("allowedServiceAccounts", "null")) == sorted(accounts),
          f"allowed service accounts are {sorted(accounts)}: {params.get('allowedServiceAccounts')}")
    check(CHECKPOINT_ANNOTATION in params.get("annotated", ""), "the policy looks at the checkpoint annotation")


def scenario_service_monitor_only(rendered):
    docs = load(rendered)
    check(len(by_kind(docs, "ServiceMonitor")) == 1 and len(by_kind(docs, "Service")) == 1,
          "serviceMonitor alone renders the ServiceMonitor and its headless Service")
    check(not by_kind(docs, "PodMonitor") and not by_kind(docs, "PrometheusRule"),
          "podMonitor and prometheusRule stay off")


def scenario_no_self_checkpoint(rendered):
    docs = load(rendered)
    ds = one(docs, "DaemonSet")
    ann = ds["spec"]["template"]["metadata"].get("annotations") or {}
    check(CHECKPOINT_ANNOTATION not in ann, "checkpointSelf: false removes the checkpoint annotation")
    check(not by_kind(docs, "Service"), "no Service without ServiceMonitor")


def scenario_alerts(chart_dir, test_file, src_dir=None):
    with open(f"{chart_dir}/files/alerts.yaml") as f:
        rules = yaml.safe_load(f)
    with open(test_file) as f:
        tests = yaml.safe_load(f)
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    names = [a["alert"] for a in alerts]
    expected = ["PodCheckpointerCheckpointActiveLong", "PodCheckpointerAPIUnreachable",
                "PodCheckpointerRuntimePollFailing", "PodCheckpointerKubeletPollFailing",
                "PodCheckpointerPodRefused", "PodCheckpointerWriteErrors",
                # Issue 12.13: alerts that do not depend on the agent exporting anything.
                "PodCheckpointerAgentDown", "PodCheckpointerAgentAbsent",
                "PodCheckpointerControlPlaneNodeUnprotected", "PodCheckpointerRuntimePollStale",
                "PodCheckpointerStaticCopyNotRunning"]
    check(sorted(names) == sorted(expected), f"alerts are exactly {expected}: {sorted(names)}")
    src = ""
    if src_dir:
        src = "\n".join(p.read_text() for p in pathlib.Path(src_dir).rglob("*.rs"))
    for a in alerts:
        n = a["alert"]
        used = set(re.findall(r"pod_checkpointer_([a-z_]+)", a["expr"]))
        # Whether the agent runs at all: Prometheus' own `up` of its scrape job (the chart's
        # monitors set job="pod-checkpointer"), which exists without the agent exporting anything.
        scrape = 'up{job="pod-checkpointer"}' in a["expr"]
        check((used or scrape) and used <= METRICS, f"{n} uses only exported metrics or the scrape's up: {sorted(used)}")
        if src:
            missing = [m for m in used if m not in src]
            check(not missing, f"{n}: the agent's source names its metrics {sorted(used)}")
        check(a.get("labels", {}).get("severity") in ("warning", "critical"), f"{n} has a severity")
        ann = a.get("annotations", {})
        check(ann.get("summary") and ann.get("description"), f"{n} has summary and description")
        check(ann.get("runbook_url", "").endswith("README.md#" + n.lower()),
              f"{n} runbook_url points at README.md#{n.lower()}")
        cases = [t for g in tests["tests"] for t in g.get("alert_rule_test", []) if t["alertname"] == n]
        check(any(t.get("exp_alerts") for t in cases) and any(not t.get("exp_alerts") for t in cases),
              f"{n} has a promtool case where it fires and one where it does not")


def scenario_values_documented(values_file):
    """Every key of values.yaml has a comment line directly above it."""
    with open(values_file) as f:
        lines = f.read().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z0-9_./-]+):", line)
        if not m:
            continue
        prev = lines[i - 1].strip() if i else ""
        if not prev.startswith("#"):
            undocumented.append(f"{i + 1}:{m.group(2)}")
    check(not undocumented, f"every key in values.yaml has a comment above it {undocumented or ''}")


def scenario_doc_links(root, *files):
    """Every Markdown link of the given files points into the repository at something that
    exists: no web addresses, no absolute paths, nothing above the repository root."""
    root = pathlib.Path(root).resolve()
    for name in files:
        path = pathlib.Path(name).resolve()
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        links = re.findall(r"\]\(([^)\s]+)\)", text)
        bad = []
        for link in links:
            target = link.split("#", 1)[0]
            if not target:
                continue
            resolved = (path.parent / target).resolve()
            if re.match(r"^[a-z]+:", target) or target.startswith("/") or \
                    root not in resolved.parents or not resolved.exists():
                bad.append(link)
        check(not bad, f"{path.relative_to(root)}: {len(links)} links, all to files in the repository {bad or ''}")


def main():
    scenario, *rest = sys.argv[1:]
    fn = {
        "defaults": scenario_defaults,
        "non-default": scenario_non_default,
        "rbac-only": scenario_rbac_only,
        "service-monitor-only": scenario_service_monitor_only,
        "token-allow-list": scenario_token_allow_list,
        "placement": scenario_placement,
        "admission-policy": scenario_admission_policy,
        "no-self-checkpoint": scenario_no_self_checkpoint,
        "alerts": scenario_alerts,
        "values-documented": scenario_values_documented,
        "doc-links": scenario_doc_links,
    }[scenario]
    fn(*rest)
    print(f"# {scenario}: {PASSED} passed, {FAILED} failed")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
