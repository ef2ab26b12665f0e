//! End-to-end scenarios on a real single-node cluster (etcd, kube-apiserver, containerd, kubelet)
//! brought up by `tests/node/node.sh`. Each scenario gets its own namespace, drives the real agent
//! binary, and asserts on real files, the real kubelet and the real API. They change the node
//! (stop the API server, "reboot" the runtime), so they run one at a time (`--test-threads=1`).

mod chart;
mod collision;
mod harness;
mod lifecycle;
mod rbac;
mod selfhosted;
mod view;
mod volumes;

use std::time::Duration;

use harness::*;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};

const SHORT: Duration = Duration::from_secs(30);
const LONG: Duration = Duration::from_secs(120);

/// A parent that mounts a Secret, a ConfigMap and its service-account token, and keeps writing
/// its own pod name and what it reads to `out` (a host directory), so the test can see which copy
/// (the parent, or the static copy `<name>-<node>`) read what.
fn reading_parent(node: &Node, name: &str, out: &std::path::Path) -> Pod {
    let script = "while true; do { printf '%s:' \"$POD_NAME\"; cat /secret/password /config/mode /var/run/secrets/kubernetes.io/serviceaccount/namespace; } > /out/seen.tmp 2>/out/err && mv /out/seen.tmp /out/seen; sleep 0.5; done";
    busybox_pod(
        node,
        name,
        true,
        script,
        serde_json::json!({"spec": {
            "volumes": [
                {"name": "secret", "secret": {"secretName": "creds", "defaultMode": 0o400}},
                {"name": "config", "configMap": {"name": "settings"}},
                {"name": "out", "hostPath": {"path": out.to_string_lossy(), "type": "Directory"}},
            ],
            "containers": [{
                "name": "main",
                "image": node.busybox,
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", script],
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "volumeMounts": [
                    {"name": "secret", "mountPath": "/secret"},
                    {"name": "config", "mountPath": "/config"},
                    {"name": "out", "mountPath": "/out"},
                ],
            }],
        }}),
    )
}

async fn create_objects(ns: &TestNamespace, password: &str) {
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "creds"},
        "stringData": {"password": password},
    }))
    .expect("secret");
    ns.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "settings"},
        "data": {"mode": "safe"},
    }))
    .expect("configmap");
    ns.api::<ConfigMap>()
        .create(&PostParams::default(), &cm)
        .await
        .expect("create configmap");
}

/// What every scenario starts from: its own namespace holding the Secret `creds` and the
/// ConfigMap `settings`, a host directory its parents write to, and an agent watching it.
struct Scene {
    ns: TestNamespace,
    out: tempfile::TempDir,
    agent: Agent,
}

impl Scene {
    async fn start(node: &Node, prefix: &str, password: &str, grace: &str) -> Self {
        let ns = TestNamespace::create(node, prefix).await;
        create_objects(&ns, password).await;
        let out = tempfile::tempdir_in("/tmp").expect("out dir");
        let agent = Agent::start(
            node,
            AgentOptions {
                namespaces: &[&ns.name],
                grace,
                ..Default::default()
            },
        );
        Self { ns, out, agent }
    }
}

/// Creates a [`reading_parent`] in the scenario's namespace.
async fn create_parent(ns: &TestNamespace, node: &Node, name: &str, out: &std::path::Path) {
    ns.pods()
        .create(&PostParams::default(), &reading_parent(node, name, out))
        .await
        .expect("create parent");
}

/// `promtool check metrics` on a live scrape: names, types and help follow Prometheus rules.
fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) on PATH");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read(path: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Scenario 1: an annotated running pod gets an inactive checkpoint with its Secret, ConfigMap
/// and projected token files, in the right modes; an unannotated pod gets nothing.
#[tokio::test]
async fn annotated_pod_gets_an_inactive_checkpoint_with_its_files() {
    let node = Node::from_env();
    let Scene { ns, out, mut agent } = Scene::start(&node, "e2e-write", "s3cret", "3s").await;
    let pods = ns.pods();
    create_parent(&ns, &node, "parent", out.path()).await;
    pods.create(
        &PostParams::default(),
        &busybox_pod(&node, "plain", false, "sleep 3600", serde_json::json!({})),
    )
    .await
    .expect("create plain pod");
    let key = ns.key("parent");

    let manifest = wait_for("inactive checkpoint", LONG, || async {
        read(&agent.inactive_manifest(&key))
    })
    .await;
    let cp: Pod = serde_json::from_str(&manifest).expect("checkpoint is a v1 Pod");
    let annotations = cp.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("checkpointer.alpha.coreos.com/checkpoint-of")
            .map(String::as_str),
        Some("parent")
    );
    assert_eq!(
        annotations.len(),
        1,
        "only checkpoint-of survives: {annotations:?}"
    );
    let spec = cp.spec.expect("spec");
    assert_eq!(spec.service_account_name, None);
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert!(cp.status.is_none());
    assert_eq!(mode(&agent.inactive_manifest(&key)), 0o600);

    // Secret (defaultMode 0400), ConfigMap (kubelet default 0644), token volume.
    let secret_file = agent.secret_dir(&key).join("_volume-secret/password");
    let secret_file = if secret_file.exists() {
        secret_file
    } else {
        agent.secret_dir(&key).join("creds/password")
    };
    assert_eq!(read(&secret_file).as_deref(), Some("s3cret"));
    assert_eq!(mode(&secret_file), 0o400);
    // The volume's own directory looks as the kubelet's Secret volume would (1777); the
    // directories above it stay root's (SPEC §2).
    assert_eq!(mode(secret_file.parent().expect("dir")), 0o1777);
    assert_eq!(mode(&agent.secret_dir(&key)), 0o700);
    let config_file = agent.configmap_dir(&key).join("settings/mode");
    assert_eq!(read(&config_file).as_deref(), Some("safe"));
    assert_eq!(mode(&config_file), 0o644);
    let volumes = spec.volumes.unwrap_or_default();
    let api_access = volumes
        .iter()
        .find(|v| v.name.starts_with("kube-api-access-"))
        .expect("the service-account volume is kept, as a hostPath");
    let token_dir =
        std::path::PathBuf::from(&api_access.host_path.as_ref().expect("hostPath").path);
    let token = wait_for("projected token file", SHORT, || async {
        read(&token_dir.join("token"))
    })
    .await;
    assert_eq!(token.split('.').count(), 3, "a JWT");
    assert_eq!(
        read(&token_dir.join("namespace")).as_deref(),
        Some(ns.name.as_str())
    );
    assert!(read(&token_dir.join("ca.crt")).is_some_and(|c| c.contains("BEGIN CERTIFICATE")));

    // Nothing for the unannotated pod, and nothing activated while the parent runs.
    wait_for("unannotated pod running", LONG, || async {
        pod_running(&pods, "plain").await.then_some(())
    })
    .await;
    assert!(!agent.inactive_manifest(&ns.key("plain")).exists());
    assert!(!node.active_manifest(&key).exists());
    assert_eq!(agent.metric("pod_checkpointer_api_reachable"), Some(1.0));
    let (status, metrics) = agent.get("/metrics").expect("metrics answer");
    assert_eq!(status, 200);
    promtool_check_metrics(&metrics);
    assert_eq!(agent.get("/healthz").map(|r| r.0), Some(200));
    assert_eq!(agent.get("/readyz").map(|r| r.0), Some(200));
    assert!(
        agent
            .log()
            .lines()
            .any(|l| l.contains("\"action\":\"write\"") && l.contains("\"pod\":\"parent\""))
    );
    assert!(
        !agent.log().contains("s3cret"),
        "secret data never reaches the logs"
    );

    let status = agent.stop();
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
    assert!(
        agent.inactive_manifest(&key).exists(),
        "checkpoints stay on stop"
    );
}

/// Scenarios 2 and 3: node reboot with the API server down; the kubelet runs the activated
/// checkpoint as a static pod that reads its files; when the API server is back and the parent
/// runs again, the checkpoint is deactivated and the kubelet stops the copy.
#[tokio::test]
async fn reboot_with_api_down_runs_the_checkpoint_until_the_parent_returns() {
    let node = Node::from_env();
    let Scene { ns, out, agent } = Scene::start(&node, "e2e-reboot", "s3cret", "3s").await;
    create_parent(&ns, &node, "parent", out.path()).await;
    let key = ns.key("parent");
    let copy = key.static_pod_key(&node.name);
    let seen = wait_for("parent reads its files", LONG, || async {
        read(&out.path().join("seen"))
    })
    .await;
    assert_eq!(seen, format!("parent:s3cretsafe{}", ns.name));
    wait_for("inactive checkpoint with token", LONG, || async {
        read(&agent.inactive_manifest(&key))?;
        let dir = agent.secret_dir(&key);
        std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .find(|e| e.path().join("token").exists())
    })
    .await;

    // The "reboot": API server down, kubelet restarted with every sandbox gone.
    let outage = node.stop_apiserver();
    wait_for("agent sees the API server gone", SHORT, || async {
        (agent.metric("pod_checkpointer_api_reachable") == Some(0.0)).then_some(())
    })
    .await;
    node.sh(&["reboot-runtime"]);

    wait_for("checkpoint activated", SHORT, || async {
        node.active_manifest(&key).exists().then_some(())
    })
    .await;
    wait_for("kubelet runs the static copy", LONG, || async {
        node.sandbox_ready(&copy).await.then_some(())
    })
    .await;
    let seen = wait_for("static copy reads its files", LONG, || async {
        read(&out.path().join("seen")).filter(|s| s.starts_with(&format!("{}:", copy.name)))
    })
    .await;
    assert_eq!(
        seen,
        format!("{}:s3cretsafe{}", copy.name, ns.name),
        "the static copy read the secret, the configmap and its namespace"
    );
    assert!(
        !node.sandbox_ready(&key).await,
        "the parent itself is not running"
    );

    // API back: the kubelet starts the parent again; the agent deactivates the checkpoint.
    outage.end();
    wait_for("parent running again", LONG, || async {
        node.sandbox_ready(&key).await.then_some(())
    })
    .await;
    wait_for("checkpoint deactivated", SHORT, || async {
        (!node.active_manifest(&key).exists()).then_some(())
    })
    .await;
    wait_for("kubelet stops the static copy", LONG, || async {
        (!node.sandbox_ready(&copy).await).then_some(())
    })
    .await;
    assert!(
        agent.inactive_manifest(&key).exists(),
        "the inactive checkpoint stays"
    );
    assert_eq!(
        agent.metric("pod_checkpointer_activations_total"),
        Some(1.0)
    );
    assert_eq!(
        agent.metric("pod_checkpointer_deactivations_total{reason=\"parent_running\"}"),
        Some(1.0)
    );
}

/// Scenario 4: a parent deleted while the API is up loses its checkpoint after the grace
/// period; while the API is down nothing is removed, however long it stays down.
#[tokio::test]
async fn deleted_parent_is_removed_after_grace_but_never_during_an_outage() {
    let node = Node::from_env();
    let Scene { ns, out, agent } = Scene::start(&node, "e2e-remove", "s3cret", "4s").await;
    let pods = ns.pods();
    for name in ["gone", "outage"] {
        create_parent(&ns, &node, name, out.path()).await;
    }
    let (gone, outage) = (ns.key("gone"), ns.key("outage"));
    for key in [&gone, &outage] {
        wait_for("inactive checkpoint", LONG, || async {
            read(&agent.inactive_manifest(key))
        })
        .await;
    }

    // API up: deleted parent, removed after the grace period, files and all.
    pods.delete("gone", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete");
    wait_for("checkpoint of deleted parent removed", SHORT, || async {
        (!agent.inactive_manifest(&gone).exists()
            && !agent.secret_dir(&gone).exists()
            && !agent.configmap_dir(&gone).exists())
        .then_some(())
    })
    .await;
    assert!(
        !node.active_manifest(&gone).exists(),
        "never activated: the API said it was gone"
    );
    assert!(agent.log().contains("\"action\":\"grace_start\""));

    // API down right after a deletion: the deadline passes during the outage, nothing goes.
    pods.delete("outage", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete");
    wait_for("grace period started", SHORT, || async {
        agent
            .log()
            .lines()
            .any(|l| l.contains("grace_start") && l.contains("\"pod\":\"outage\""))
            .then_some(())
    })
    .await;
    let api_down = node.stop_apiserver();
    holds_for(
        "checkpoint kept while the API is down",
        Duration::from_secs(12),
        || async {
            agent.inactive_manifest(&outage).exists() && agent.secret_dir(&outage).exists()
        },
    )
    .await;
    api_down.end();
    wait_for(
        "removed once the API confirms the parent is gone",
        SHORT,
        || async { (!agent.inactive_manifest(&outage).exists()).then_some(()) },
    )
    .await;
}

/// Scenario 5: a changed Secret reaches the checkpoint within seconds, through a watch.
#[tokio::test]
async fn changed_secret_is_rewritten_within_seconds() {
    let node = Node::from_env();
    let Scene { ns, out, agent } = Scene::start(&node, "e2e-secret", "first", "3s").await;
    create_parent(&ns, &node, "parent", out.path()).await;
    let key = ns.key("parent");
    let file = wait_for("secret file", LONG, || async {
        std::fs::read_dir(agent.secret_dir(&key))
            .ok()?
            .flatten()
            .map(|e| e.path().join("password"))
            .find(|p| p.exists())
    })
    .await;
    assert_eq!(read(&file).as_deref(), Some("first"));

    let patch = serde_json::json!({"stringData": {"password": "second"}});
    ns.api::<Secret>()
        .patch("creds", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch secret");
    wait_for("rewritten secret", Duration::from_secs(5), || async {
        (read(&file).as_deref() == Some("second")).then_some(())
    })
    .await;
    assert_eq!(mode(&file), 0o400, "mode kept on rewrite");
}

/// Scenario 8: with the runtime gone while parents run, nothing is activated: an unanswered
/// question is not "stopped".
#[tokio::test]
async fn runtime_gone_activates_nothing() {
    let node = Node::from_env();
    let Scene { ns, out, agent } = Scene::start(&node, "e2e-nocri", "s3cret", "3s").await;
    create_parent(&ns, &node, "parent", out.path()).await;
    let key = ns.key("parent");
    wait_for("inactive checkpoint", LONG, || async {
        read(&agent.inactive_manifest(&key))
    })
    .await;

    // containerd stops; its shims keep the containers running, its socket goes away.
    let _restart = RuntimeStopped::stop(&node);
    wait_for("runtime polls failing", SHORT, || async {
        agent
            .metric("pod_checkpointer_runtime_poll_errors_total")
            .filter(|n| *n >= 3.0)
    })
    .await;
    holds_for(
        "nothing activated while the runtime is unknown",
        Duration::from_secs(5),
        || async { !node.active_manifest(&key).exists() },
    )
    .await;
    assert_eq!(
        agent.metric("pod_checkpointer_activations_total"),
        Some(0.0)
    );
    assert!(agent.log().contains("\"action\":\"source_down\""));
}

/// Starts containerd again however the scenario ends, so later scenarios find a working node.
struct RuntimeStopped<'a>(&'a Node);

impl<'a> RuntimeStopped<'a> {
    fn stop(node: &'a Node) -> Self {
        node.sh(&["stop-containerd"]);
        Self(node)
    }
}

impl Drop for RuntimeStopped<'_> {
    fn drop(&mut self) {
        self.0.sh(&["start-containerd"]);
    }
}
