//! What the chart lets the agent, and pod authors, do, checked against the real API server:
//! TokenRequests only for allow-listed accounts (issue 12.1), the admission policy that limits
//! the checkpoint annotation (12.2), and the Pod Security level the agent's pods need, including
//! for the mirror pods of static copies (12.11).
//!
//! Everything goes through `helm template` (the chart is the one source of truth) and `kubectl`
//! child processes, so no kube client is driven from a `Drop`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::chart::{chart_dir, helm, kubectl, tool};
use crate::harness::{Node, holds_for, wait_for};

const SHORT: Duration = Duration::from_secs(30);
const LONG: Duration = Duration::from_secs(120);

/// `helm template <release> <chart> --namespace <ns>` for Kubernetes 1.34 with `args`.
fn template(node: &Node, release: &str, ns: &str, args: &[&str]) -> String {
    let chart = chart_dir();
    let chart = chart.to_string_lossy();
    let mut all = vec![
        "template",
        release,
        &chart,
        "--namespace",
        ns,
        "--kube-version",
        "1.34.4",
    ];
    all.extend_from_slice(args);
    helm(node, &all).unwrap_or_else(|e| panic!("helm template: {e}"))
}

/// Cluster objects of one scenario (namespaces, policies), deleted with `kubectl` when it ends.
struct Cleanup<'a> {
    node: &'a Node,
    objects: Vec<String>,
}

impl<'a> Cleanup<'a> {
    fn new(node: &'a Node) -> Self {
        Self {
            node,
            objects: Vec::new(),
        }
    }

    /// Creates namespace `<prefix>-<pid>` with `labels` ("key=value") and returns its name.
    fn namespace(&mut self, prefix: &str, labels: &[&str]) -> String {
        let name = format!("{prefix}-{}", std::process::id() % 100_000);
        kubectl(
            self.node,
            &[
                "create",
                "namespace",
                &name,
                "--dry-run=client",
                "-o",
                "yaml",
            ],
            None,
        )
        .and_then(|yaml| kubectl(self.node, &["apply", "-f", "-"], Some(&yaml)))
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        self.objects.push(format!("namespace/{name}"));
        // The default ServiceAccount and the root CA, at once (no controller waits for them).
        self.node.sh(&["namespace", &name]);
        if !labels.is_empty() {
            let mut args = vec!["label", "namespace", name.as_str(), "--overwrite"];
            args.extend_from_slice(labels);
            kubectl(self.node, &args, None).unwrap_or_else(|e| panic!("labelling {name}: {e}"));
        }
        name
    }

    /// Applies `yaml`; the cluster-scoped objects in it are deleted at the end.
    fn apply(&mut self, yaml: &str, cluster_scoped: &[String]) {
        kubectl(self.node, &["apply", "-f", "-"], Some(yaml))
            .unwrap_or_else(|e| panic!("kubectl apply: {e}\n{yaml}"));
        self.objects.extend(cluster_scoped.iter().cloned());
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for object in self.objects.iter().rev() {
            let _ = kubectl(
                self.node,
                &["delete", object, "--wait=false", "--ignore-not-found"],
                None,
            );
        }
    }
}

/// `kubectl create token <account>` as the agent's ServiceAccount (impersonated from the admin
/// kubeconfig): the token on success, kubectl's message on refusal.
fn mint_as_agent(node: &Node, ns: &str, agent: &str, account: &str) -> Result<String, String> {
    kubectl(
        node,
        &[
            "-n",
            ns,
            "create",
            "token",
            account,
            "--duration",
            "10m",
            &format!("--as=system:serviceaccount:{ns}:{agent}"),
        ],
        None,
    )
}

/// Issue 12.1: root on any node holds the agent's credentials. With the chart's RBAC they mint
/// tokens only for the accounts in `rbac.tokenServiceAccounts` and the agent's own; a token for
/// any other account of a watched namespace is refused (403 Forbidden), and so is one in a
/// namespace the agent does not watch.
#[tokio::test]
async fn the_agent_can_mint_tokens_only_for_allow_listed_accounts() {
    let node = Node::from_env();
    let mut cleanup = Cleanup::new(&node);
    let ns = cleanup.namespace("e2e-rbac-token", &[]);
    for account in ["allowed", "powerful"] {
        kubectl(
            &node,
            &["-n", &ns, "create", "serviceaccount", account],
            None,
        )
        .unwrap_or_else(|e| panic!("creating {account}: {e}"));
    }
    let rendered = template(
        &node,
        "pc",
        &ns,
        &[
            "--set",
            &format!("namespaces={{{ns}}}"),
            "--set",
            &format!("rbac.tokenServiceAccounts={{{ns}/allowed}}"),
            "--show-only",
            "templates/rbac.yaml",
            "--show-only",
            "templates/serviceaccount.yaml",
        ],
    );
    cleanup.apply(&rendered, &[]);
    let agent = "pc-pod-checkpointer";

    // RBAC changes reach the authorizer through its informer: wait for the first grant.
    let token = wait_for(
        "the agent may mint a token for the allow-listed account",
        SHORT,
        || async { mint_as_agent(&node, &ns, agent, "allowed").ok() },
    )
    .await;
    assert_eq!(token.trim().split('.').count(), 3, "a JWT: {token}");
    let own = mint_as_agent(&node, &ns, agent, agent)
        .unwrap_or_else(|e| panic!("its own account (its static copy's token): {e}"));
    assert_eq!(own.trim().split('.').count(), 3, "a JWT: {own}");

    for (where_, account) in [(&ns, "powerful"), (&ns, "default")] {
        let refused = mint_as_agent(&node, where_, agent, account);
        let message = refused.expect_err(&format!(
            "minting a token for {where_}/{account}, on no allow-list, must be refused"
        ));
        assert!(
            message.contains("Forbidden") || message.contains("forbidden"),
            "refused as Forbidden (403): {message}"
        );
        assert!(
            message.contains("serviceaccounts/token") || message.contains("\"token\""),
            "names the subresource: {message}"
        );
    }
    // A namespace the agent does not watch: no Role at all.
    let other = kubectl(
        &node,
        &[
            "-n",
            "kube-system",
            "create",
            "token",
            "default",
            &format!("--as=system:serviceaccount:{ns}:{agent}"),
        ],
        None,
    );
    assert!(
        other.is_err_and(|m| m.contains("orbidden")),
        "kube-system/default refused"
    );
}

/// A pod manifest (JSON) in `ns`, annotated for checkpointing with `annotation` (None: no
/// annotation), running as `account`; never scheduled anywhere (the node selector matches no
/// node), so it costs nothing when created for real.
fn pod(name: &str, ns: &str, annotation: Option<&str>, account: Option<&str>) -> String {
    let mut pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "nodeSelector": {"e2e.pod-checkpointer/nowhere": "true"},
            "automountServiceAccountToken": false,
            "containers": [{"name": "main", "image": "registry.invalid/none:1"}],
        },
    });
    if let Some(value) = annotation {
        pod["metadata"]["annotations"] =
            serde_json::json!({"checkpointer.alpha.coreos.com/checkpoint": value});
    }
    if let Some(account) = account {
        pod["spec"]["serviceAccountName"] = account.into();
    }
    pod.to_string()
}

/// Issue 12.2: with `admissionPolicy.enabled`, the API server refuses a pod annotated
/// `checkpointer.alpha.coreos.com/checkpoint: "true"` in a namespace that is not allowed, on
/// create and when the annotation is added later; it admits it in an allowed namespace, for an
/// allowed service account, and admits every pod without the annotation.
#[tokio::test]
async fn the_admission_policy_refuses_the_checkpoint_annotation_outside_the_allowed_namespaces() {
    let node = Node::from_env();
    let mut cleanup = Cleanup::new(&node);
    let allowed = cleanup.namespace("e2e-vap-allowed", &[]);
    let denied = cleanup.namespace("e2e-vap-denied", &[]);
    for account in ["trusted", "other"] {
        kubectl(
            &node,
            &["-n", &denied, "create", "serviceaccount", account],
            None,
        )
        .unwrap_or_else(|e| panic!("creating {account}: {e}"));
    }
    // A release name of its own: the policy is cluster-scoped.
    let release = format!("vap{}", std::process::id() % 100_000);
    let rendered = template(
        &node,
        &release,
        &allowed,
        &[
            "--set",
            "admissionPolicy.enabled=true",
            "--set",
            &format!("namespaces={{{allowed}}}"),
            "--set",
            &format!("admissionPolicy.serviceAccounts={{{denied}/trusted}}"),
            "--show-only",
            "templates/admissionpolicy.yaml",
        ],
    );
    let name = format!("{release}-pod-checkpointer-annotation");
    cleanup.apply(
        &rendered,
        &[
            format!("validatingadmissionpolicybinding/{name}"),
            format!("validatingadmissionpolicy/{name}"),
        ],
    );
    let dry_run = |manifest: String| {
        let node = &node;
        async move {
            kubectl(
                node,
                &["create", "--dry-run=server", "-o", "name", "-f", "-"],
                Some(&manifest),
            )
        }
    };

    // The policy takes effect once the API server has compiled it: wait for the first refusal.
    let refusal = wait_for(
        "an annotated pod in a namespace that is not allowed is refused",
        SHORT,
        || async {
            dry_run(pod("annotated", &denied, Some("true"), None))
                .await
                .err()
                .filter(|e| e.contains(&name))
        },
    )
    .await;
    assert!(
        refusal.contains(&name) && refusal.contains("checkpointer.alpha.coreos.com/checkpoint"),
        "the refusal names the policy and the annotation: {refusal}"
    );
    assert!(
        refusal.contains(&format!("{denied}/other"))
            || refusal.contains(&format!("{denied}/default")),
        "and the pod's namespace/account: {refusal}"
    );
    let refused = dry_run(pod("annotated", &denied, Some("true"), Some("other"))).await;
    assert!(
        refused.is_err_and(|m| m.contains(&name)),
        "another account of that namespace is refused too"
    );

    for (what, manifest) in [
        (
            "an annotated pod in an allowed namespace",
            pod("annotated", &allowed, Some("true"), None),
        ),
        (
            "an annotated pod running as an allowed service account",
            pod("annotated", &denied, Some("true"), Some("trusted")),
        ),
        (
            "a pod without the annotation",
            pod("plain", &denied, None, None),
        ),
        (
            "a pod with the annotation set to something else than \"true\" (the agent ignores it)",
            pod("off", &denied, Some("false"), None),
        ),
    ] {
        dry_run(manifest)
            .await
            .unwrap_or_else(|e| panic!("{what} is admitted: {e}"));
    }

    // Adding the annotation to an existing pod (an UPDATE) is refused the same way.
    kubectl(
        &node,
        &["create", "-f", "-"],
        Some(&pod("later", &denied, None, None)),
    )
    .unwrap_or_else(|e| panic!("creating a plain pod: {e}"));
    let patched = kubectl(
        &node,
        &[
            "-n",
            &denied,
            "annotate",
            "pod",
            "later",
            "checkpointer.alpha.coreos.com/checkpoint=true",
        ],
        None,
    );
    assert!(
        patched.is_err_and(|m| m.contains(&name)),
        "annotating an existing pod in a namespace that is not allowed is refused"
    );
}

/// The agent's pod template, as the chart renders it, as a Pod named `name` in `ns`.
fn agent_pod(node: &Node, ns: &str, name: &str) -> String {
    let rendered = template(node, "pc", ns, &["--show-only", "templates/daemonset.yaml"]);
    let ds = daemonset_json(&rendered);
    let template = &ds["spec"]["template"];
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    })
    .to_string()
}

/// The DaemonSet of a rendered `templates/daemonset.yaml`, through `kubectl` (YAML to JSON).
fn daemonset_json(rendered: &str) -> serde_json::Value {
    let start = rendered.find("apiVersion:").expect("a rendered object");
    let json = Command::new(tool("kubectl"))
        .args([
            "create",
            "--dry-run=client",
            "-o",
            "json",
            "-f",
            "-",
            "--validate=false",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            if let Some(mut pipe) = child.stdin.take() {
                pipe.write_all(&rendered.as_bytes()[start..])?;
            }
            child.wait_with_output()
        })
        .expect("kubectl create --dry-run=client");
    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    serde_json::from_slice(&json.stdout).expect("DaemonSet as JSON")
}

/// Issue 12.11: the agent's pods use the host network and hostPath volumes, so Pod Security
/// admission lets them only into a namespace whose level is `privileged`: `baseline` refuses the
/// chart's pod and names why, `privileged` admits it. And a static pod's mirror pod goes through
/// the same admission: a copy with hostPath volumes (every checkpoint with Secrets or
/// ConfigMaps is one) in a `baseline` namespace runs on the node, but its mirror pod is refused,
/// so the API does not show it; in a `privileged` namespace it is shown.
#[tokio::test]
async fn the_agent_and_the_mirror_pods_of_copies_need_a_privileged_namespace() {
    let node = Node::from_env();
    let mut cleanup = Cleanup::new(&node);
    let baseline = cleanup.namespace(
        "e2e-psa-baseline",
        &["pod-security.kubernetes.io/enforce=baseline"],
    );
    let privileged = cleanup.namespace(
        "e2e-psa-privileged",
        &["pod-security.kubernetes.io/enforce=privileged"],
    );

    for ns in [&baseline, &privileged] {
        let account = template(
            &node,
            "pc",
            ns,
            &["--show-only", "templates/serviceaccount.yaml"],
        );
        cleanup.apply(&account, &[]);
    }
    let refused = kubectl(
        &node,
        &["create", "--dry-run=server", "-f", "-"],
        Some(&agent_pod(&node, &baseline, "agent")),
    )
    .expect_err("the agent's pod is refused in a baseline namespace");
    for why in ["baseline", "hostNetwork", "hostPath"] {
        assert!(refused.contains(why), "the refusal names {why}: {refused}");
    }
    kubectl(
        &node,
        &["create", "--dry-run=server", "-f", "-"],
        Some(&agent_pod(&node, &privileged, "agent")),
    )
    .unwrap_or_else(|e| panic!("the agent's pod is admitted in a privileged namespace: {e}"));

    // Static pods with a hostPath volume, like a checkpoint's copy, one per namespace.
    let mut files = Vec::new();
    for ns in [&baseline, &privileged] {
        let manifest = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "copy", "namespace": ns},
            "spec": {
                "hostNetwork": true,
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "main",
                    "image": node.busybox,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", "sleep 3600"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": true}],
                }],
                "volumes": [{"name": "data", "hostPath": {"path": "/etc/kubernetes", "type": "Directory"}}],
            },
        });
        let file = node.manifest_dir.join(format!("{ns}-copy.json"));
        std::fs::write(&file, manifest.to_string()).expect("writing a static pod");
        files.push(file);
    }
    struct Remove(Vec<PathBuf>);
    impl Drop for Remove {
        fn drop(&mut self) {
            for f in &self.0 {
                let _ = std::fs::remove_file(f);
            }
        }
    }
    let _remove = Remove(files);
    let mirror = format!("copy-{}", node.name);
    let shown = |ns: &str| {
        kubectl(
            &node,
            &["-n", ns, "get", "pod", &mirror, "-o", "name"],
            None,
        )
        .is_ok()
    };
    wait_for(
        "the privileged namespace shows the copy's mirror pod",
        LONG,
        || async { shown(&privileged).then_some(()) },
    )
    .await;
    let copy_key = pod_checkpointer::model::PodKey::new(&baseline, &mirror);
    wait_for(
        "the kubelet runs the copy in the baseline namespace anyway",
        LONG,
        || async { node.sandbox_ready(&copy_key).await.then_some(()) },
    )
    .await;
    holds_for(
        "the baseline namespace never shows the copy's mirror pod (Pod Security refuses it)",
        Duration::from_secs(10),
        || async { !shown(&baseline) },
    )
    .await;
}
