//! The Helm chart on the real node: `helm install` runs the agent as a DaemonSet pod from an image
//! of the very binary these tests built, the agent checkpoints itself, cleans the node when its
//! DaemonSet goes, and runs with exactly the RBAC the chart grants.
//!
//! Each scenario has its own namespace and release, and its own checkpoint directories under
//! `/etc/kubernetes/<namespace>/` on the node (= `$NODE_ETC_KUBERNETES/<namespace>/` on the host,
//! where the test reads them). Only the kubelet's static pod directory and the admin port 10266 in
//! the node's network namespace are shared, which is why these scenarios run one at a time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use pod_checkpointer::model::PodKey;

use crate::harness::{Agent, AgentOptions, Node, busybox_pod, holds_for, pod_running, wait_for};

const SHORT: Duration = Duration::from_secs(30);
const LONG: Duration = Duration::from_secs(120);
/// Grace period given to the chart's agent: how long its own pod must be gone from the API.
const GRACE: &str = "5s";
/// How long a cleanup may take once the agent's pod is gone: the grace period, the reconcile
/// resync (10 s) between "the others are gone" and "now myself", the kubelet stopping the copy.
const CLEANUP: Duration = Duration::from_secs(60);

const IMAGE_REPOSITORY: &str = "localhost/pod-checkpointer";
const IMAGE_TAG: &str = "e2e";
/// The chart's default `adminPort`, bound in the node's network namespace (hostNetwork).
const ADMIN_PORT: u16 = 10266;
const CHECKPOINT_OF: &str = "checkpointer.alpha.coreos.com/checkpoint-of";

fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub(crate) fn chart_dir() -> PathBuf {
    repo_path("charts/pod-checkpointer")
}

/// A tool from `$NODE_BIN` (helm, kubectl), or from `PATH`.
pub(crate) fn tool(name: &str) -> PathBuf {
    std::env::var_os("NODE_BIN")
        .map(|d| PathBuf::from(d).join(name))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Runs a command to completion; its stdout, or a message with everything it printed.
fn run(program: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", program.display()))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(input.as_bytes())
            .map_err(|e| format!("writing to {}: {e}", program.display()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {}: {e}", program.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{} {args:?} failed ({}):\n{stdout}\n{}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub(crate) fn helm(node: &Node, args: &[&str]) -> Result<String, String> {
    let kubeconfig = node.kubeconfig.to_string_lossy().into_owned();
    let mut all = vec!["--kubeconfig", kubeconfig.as_str()];
    all.extend_from_slice(args);
    run(&tool("helm"), &all, None)
}

pub(crate) fn kubectl(node: &Node, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let kubeconfig = node.kubeconfig.to_string_lossy().into_owned();
    let mut all = vec!["--kubeconfig", kubeconfig.as_str()];
    all.extend_from_slice(args);
    run(&tool("kubectl"), &all, stdin)
}

/// Runs a command inside the node's namespaces (like a hostNetwork pod); its stdout on success.
fn in_node(args: &[&str]) -> Option<String> {
    let node_sh = repo_path("tests/node/node.sh");
    let mut all = vec![node_sh.to_str()?, "exec", "--"];
    all.extend_from_slice(args);
    run(Path::new("bash"), &all, None).ok()
}

/// GET on the agent's admin port inside the node's network namespace.
fn node_admin_get(path: &str) -> Option<String> {
    in_node(&[
        "curl",
        "-sf",
        "--max-time",
        "2",
        &format!("http://127.0.0.1:{ADMIN_PORT}{path}"),
    ])
}

/// The value of one sample in Prometheus text, e.g. `("pod_checkpointer_lock_held", "")` or
/// `("pod_checkpointer_api_errors_total", r#"{reason="forbidden",resource="pods"}"#)` (labels
/// in the exporter's sorted order).
fn sample(metrics: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{labels} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// The image of the agent: the binary `cargo test` built (stripped, so the import stays quick),
/// packed with its shared libraries by `node.sh image`, imported into the node's containerd.
/// Done once per test process.
fn agent_image(node: &Node) -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let started = Instant::now();
        let bin = Path::new(env!("CARGO_BIN_EXE_pod-checkpointer"));
        let dir = tempfile::Builder::new()
            .prefix("pc-image-")
            .tempdir_in("/tmp")
            .expect("image build dir");
        // The image's entrypoint is /<basename of the binary>.
        let copy = dir.path().join("pod-checkpointer");
        let stripped = Command::new("strip")
            .arg("-o")
            .arg(&copy)
            .arg(bin)
            .status()
            .is_ok_and(|s| s.success());
        if !stripped {
            std::fs::copy(bin, &copy).expect("copying the agent binary");
        }
        let name = format!("{IMAGE_REPOSITORY}:{IMAGE_TAG}");
        node.sh(&["image", &name, &copy.to_string_lossy()]);
        eprintln!(
            "[chart] image {name} from {} in {:.1}s",
            bin.display(),
            started.elapsed().as_secs_f64()
        );
        name
    })
}

/// A namespace of one scenario, deleted when the scenario ends.
///
/// Not `harness::TestNamespace`: its `Drop` drives the test's kube `Client` from another thread
/// while the test's current-thread runtime, which runs that client's request worker, is blocked
/// joining it, and hangs forever. This one deletes with `kubectl`, a plain child process.
struct ChartNamespace {
    name: String,
    client: Client,
    kubeconfig: PathBuf,
}

impl ChartNamespace {
    async fn create(node: &Node, prefix: &str) -> Self {
        let name = format!("{prefix}-{}", std::process::id() % 100_000);
        let client = node.client().await;
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
            .expect("namespace");
        let _ = Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await;
        // The default ServiceAccount and the root CA, at once.
        node.sh(&["namespace", &name]);
        Self {
            name,
            client,
            kubeconfig: node.kubeconfig.clone(),
        }
    }

    fn pods(&self) -> Api<Pod> {
        self.api()
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    fn key(&self, pod: &str) -> PodKey {
        PodKey::new(&self.name, pod)
    }
}

impl Drop for ChartNamespace {
    fn drop(&mut self) {
        let kubeconfig = self.kubeconfig.to_string_lossy().into_owned();
        let _ = run(
            &tool("kubectl"),
            &[
                "--kubeconfig",
                &kubeconfig,
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ],
            None,
        );
    }
}

/// Container logs of the pods of one namespace, as the kubelet writes them
/// (`$NODE_DIR/pod-logs/<ns>_<pod>_<uid>/<container>/<n>.log`). Every log file seen is
/// hard-linked into a private directory, so it stays readable after the kubelet removes the
/// container (a static copy's log goes with it).
struct PodLogs {
    pod_logs: PathBuf,
    namespace: String,
    keep: tempfile::TempDir,
    /// Pod directory name -> linked files, in the order seen.
    seen: Mutex<BTreeMap<String, Vec<PathBuf>>>,
}

impl PodLogs {
    fn new(node: &Node, namespace: &str) -> Self {
        let node_dir = std::env::var_os("NODE_DIR")
            .map(PathBuf::from)
            .or_else(|| {
                node.manifest_dir
                    .parent()
                    .and_then(Path::parent)
                    .map(Path::to_path_buf)
            })
            .expect("NODE_DIR");
        let pod_logs = node_dir.join("pod-logs");
        // Same file system as the logs, so hard links work.
        let keep = tempfile::Builder::new()
            .prefix(".chart-logs-")
            .tempdir_in(&node_dir)
            .expect("log keep dir");
        Self {
            pod_logs,
            namespace: namespace.to_string(),
            keep,
            seen: Mutex::new(BTreeMap::new()),
        }
    }

    /// Links every log file of the namespace not linked yet.
    fn snapshot(&self) {
        let prefix = format!("{}_", self.namespace);
        let Ok(pods) = std::fs::read_dir(&self.pod_logs) else {
            return;
        };
        let mut seen = self.seen.lock().expect("log index");
        for pod in pods.flatten() {
            let pod_dir = pod.file_name().to_string_lossy().into_owned();
            if !pod_dir.starts_with(&prefix) {
                continue;
            }
            let Ok(containers) = std::fs::read_dir(pod.path()) else {
                continue;
            };
            for container in containers.flatten() {
                let Ok(files) = std::fs::read_dir(container.path()) else {
                    continue;
                };
                for file in files.flatten() {
                    let link = self.keep.path().join(format!(
                        "{pod_dir}__{}__{}",
                        container.file_name().to_string_lossy(),
                        file.file_name().to_string_lossy()
                    ));
                    if link.exists() {
                        continue;
                    }
                    if std::fs::hard_link(file.path(), &link).is_ok() {
                        seen.entry(pod_dir.clone()).or_default().push(link);
                    }
                }
            }
        }
    }

    /// Everything pod `name` (of this namespace) logged so far, as the agent's JSON lines.
    fn of(&self, name: &str) -> String {
        self.snapshot();
        let prefix = format!("{}_{name}_", self.namespace);
        let seen = self.seen.lock().expect("log index");
        let mut out = String::new();
        for (_, files) in seen.iter().filter(|(dir, _)| dir.starts_with(&prefix)) {
            for file in files {
                for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
                    // CRI log format: "<time> <stream> <tag> <message>".
                    if let Some(at) = line.find('{') {
                        out.push_str(&line[at..]);
                        out.push('\n');
                    }
                }
            }
        }
        out
    }

    /// The agent's own lines of every pod, for a failure report.
    fn dump(&self) {
        self.snapshot();
        let names: Vec<String> = self
            .seen
            .lock()
            .expect("log index")
            .keys()
            .cloned()
            .collect();
        for dir in names {
            let pod = dir
                .strip_prefix(&format!("{}_", self.namespace))
                .and_then(|r| r.rsplit_once('_'))
                .map(|(p, _)| p.to_string())
                .unwrap_or(dir.clone());
            let all = self.of(&pod);
            let retries = all.matches("pod watch still failing").count();
            let lines: Vec<&str> = all
                .lines()
                .filter(|l| l.contains("\"target\":\"pod_checkpointer"))
                .filter(|l| !l.contains("pod watch still failing"))
                .collect();
            let from = lines.len().saturating_sub(150);
            eprintln!(
                "---- log of {pod} (agent lines, last {}; {retries} debug lines \"pod watch still failing\" left out) ----\n{}",
                lines.len() - from,
                lines[from..].join("\n")
            );
        }
    }
}

/// The `action` of each agent log line about `pod`, in order: write, activate, remove, ...
fn actions_on(log: &str, pod: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["pod"] == pod)
        .filter_map(|v| v["action"].as_str().map(str::to_string))
        .collect()
}

/// Index of the first log line about `pod` with `action`.
fn line_of(log: &str, pod: &str, action: &str) -> Option<usize> {
    log.lines().position(|l| {
        serde_json::from_str::<serde_json::Value>(l)
            .is_ok_and(|v| v["pod"] == pod && v["action"] == action)
    })
}

/// A `helm install` of the chart into one test namespace, with checkpoint directories of its own.
struct Release<'a> {
    node: &'a Node,
    client: Client,
    name: String,
    namespace: String,
    /// This release's checkpoint directories, `/etc/kubernetes/<namespace>` on the node, as the
    /// test (on the host) sees them.
    host_root: PathBuf,
    installed: bool,
    logs: PodLogs,
    /// What was still on the node at the last look, for a failure report.
    last_leftovers: Mutex<Vec<String>>,
}

impl<'a> Release<'a> {
    async fn install(node: &'a Node, ns: &ChartNamespace, name: &str) -> Self {
        let image = agent_image(node);
        let node_root = format!("/etc/kubernetes/{}", ns.name);
        let host_root = node
            .manifest_dir
            .parent()
            .expect("manifest dir has a parent")
            .join(&ns.name);
        // node.sh's /run/containerd/containerd.sock is a symlink to the real socket under
        // $NODE_DIR, which a container mounting only /run/containerd cannot follow; the real
        // socket's directory is visible at the same path in the node's mount namespace.
        let socket = node
            .cri_endpoint
            .strip_prefix("unix://")
            .unwrap_or(&node.cri_endpoint);
        let (repository, tag) = image.rsplit_once(':').expect("image with a tag");
        let values = serde_json::json!({
            "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
            "namespaces": [ns.name],
            "gracePeriod": GRACE,
            "pollInterval": "500ms",
            "logFormat": "json",
            "logLevel": "info,pod_checkpointer=debug",
            "cri": {"socketPath": socket},
            // The parents of these scenarios run as their namespace's default account and get
            // its token (the chart allows tokens only for listed accounts).
            "rbac": {"tokenServiceAccounts": [format!("{}/default", ns.name)]},
            "hostPaths": {
                "inactiveManifestDir": format!("{node_root}/inactive-manifests"),
                "secretDir": format!("{node_root}/checkpoint-secrets"),
                "configmapDir": format!("{node_root}/checkpoint-configmaps"),
                "stateDir": format!("{node_root}/state"),
                "lockFile": format!("{node_root}/lock/pod-checkpointer.lock"),
            },
        });
        let values_file = tempfile::Builder::new()
            .prefix("pc-values-")
            .suffix(".json")
            .tempfile_in("/tmp")
            .expect("values file");
        std::fs::write(values_file.path(), values.to_string()).expect("writing values");
        let release = Self {
            node,
            client: node.client().await,
            name: name.to_string(),
            namespace: ns.name.clone(),
            host_root,
            installed: true,
            logs: PodLogs::new(node, &ns.name),
            last_leftovers: Mutex::new(Vec::new()),
        };
        // The chart runs on control-plane nodes only (controlPlaneOnly); this node is the
        // cluster's control plane, labelled as kubeadm would.
        kubectl(
            node,
            &[
                "label",
                "node",
                &node.name,
                "node-role.kubernetes.io/control-plane=",
                "--overwrite",
            ],
            None,
        )
        .unwrap_or_else(|e| panic!("labelling the node: {e}"));
        let started = Instant::now();
        let chart = chart_dir();
        let out = helm(
            node,
            &[
                "install",
                name,
                &chart.to_string_lossy(),
                "--namespace",
                &ns.name,
                "--values",
                &values_file.path().to_string_lossy(),
                "--wait",
                "--timeout",
                "120s",
            ],
        );
        if let Err(e) = out {
            release.logs.dump();
            panic!("helm install: {e}");
        }
        eprintln!(
            "[chart] helm install --wait {name} in {}: {:.1}s",
            ns.name,
            started.elapsed().as_secs_f64()
        );
        release
    }

    /// Object name of everything the chart creates ("<release>-pod-checkpointer").
    fn fullname(&self) -> String {
        format!("{}-pod-checkpointer", self.name)
    }

    fn instance_selector(&self) -> ListParams {
        ListParams::default().labels(&format!("app.kubernetes.io/instance={}", self.name))
    }

    fn inactive(&self, key: &PodKey) -> PathBuf {
        self.host_root
            .join("inactive-manifests")
            .join(key.manifest_file_name())
    }

    fn secret_dir(&self, key: &PodKey) -> PathBuf {
        self.host_root
            .join("checkpoint-secrets")
            .join(&key.namespace)
            .join(&key.name)
    }

    fn configmap_dir(&self, key: &PodKey) -> PathBuf {
        self.host_root
            .join("checkpoint-configmaps")
            .join(&key.namespace)
            .join(&key.name)
    }

    /// The DaemonSet's pod (not a mirror pod of a static copy), when it exists and is not
    /// being deleted.
    async fn daemon_pod(&self) -> Option<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        pods.list(&self.instance_selector())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|p| {
                let mirror = p
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
                !mirror && p.metadata.deletion_timestamp.is_none()
            })
    }

    /// Names of the agent's pods the runtime runs (READY sandboxes); None when it does not answer.
    async fn agent_sandboxes(&self) -> Option<Vec<String>> {
        let prefix = self.fullname();
        let sandboxes = self.node.cri().list_sandboxes().await.ok()?;
        Some(
            sandboxes
                .into_iter()
                .filter(|s| {
                    s.ready && s.key.namespace == self.namespace && s.key.name.starts_with(&prefix)
                })
                .map(|s| s.key.name)
                .collect(),
        )
    }

    /// Everything of the agent still on the node or in the API: checkpoint files in the static
    /// pod directory and in this release's directories, agent sandboxes, agent pods (the
    /// DaemonSet's and the mirror pods of static copies). Empty when the node is clean.
    async fn leftovers(&self) -> Vec<String> {
        self.logs.snapshot();
        let mut left = Vec::new();
        let ours = format!("{}-", self.namespace);
        for entry in std::fs::read_dir(&self.node.manifest_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&ours) {
                left.push(format!("active manifest {name}"));
            }
        }
        for entry in std::fs::read_dir(self.host_root.join("inactive-manifests"))
            .into_iter()
            .flatten()
            .flatten()
        {
            left.push(format!(
                "inactive manifest {}",
                entry.file_name().to_string_lossy()
            ));
        }
        for tree in ["checkpoint-secrets", "checkpoint-configmaps"] {
            let base = self.host_root.join(tree).join(&self.namespace);
            for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
                left.push(format!(
                    "{tree}/{}/{}",
                    self.namespace,
                    entry.file_name().to_string_lossy()
                ));
            }
        }
        match self.agent_sandboxes().await {
            Some(running) => left.extend(running.into_iter().map(|s| format!("sandbox {s}"))),
            None => left.push("runtime did not answer".into()),
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        match pods.list(&self.instance_selector()).await {
            Ok(list) => left.extend(
                list.items
                    .into_iter()
                    .map(|p| format!("pod {}", p.metadata.name.unwrap_or_default())),
            ),
            Err(e) => left.push(format!("API did not answer: {e}")),
        }
        *self.last_leftovers.lock().expect("leftovers") = left.clone();
        left
    }

    /// The release's API objects that still exist (namespaced and cluster-wide). Pods are not
    /// among them: the static copy's mirror pod goes with the copy, see `leftovers`.
    async fn objects_left(&self) -> Vec<String> {
        let ns = &self.namespace;
        let c = &self.client;
        let sel = self.instance_selector();
        let mut left = Vec::new();
        macro_rules! collect {
            ($api:expr, $kind:literal) => {
                match $api.list(&sel).await {
                    Ok(l) => left.extend(
                        l.items
                            .into_iter()
                            .map(|o| format!("{} {}", $kind, o.metadata.name.unwrap_or_default())),
                    ),
                    Err(e) => left.push(format!("{}: API did not answer: {e}", $kind)),
                }
            };
        }
        collect!(Api::<DaemonSet>::namespaced(c.clone(), ns), "DaemonSet");
        collect!(
            Api::<ServiceAccount>::namespaced(c.clone(), ns),
            "ServiceAccount"
        );
        collect!(Api::<Role>::namespaced(c.clone(), ns), "Role");
        collect!(Api::<RoleBinding>::namespaced(c.clone(), ns), "RoleBinding");
        collect!(Api::<ClusterRole>::all(c.clone()), "ClusterRole");
        collect!(
            Api::<ClusterRoleBinding>::all(c.clone()),
            "ClusterRoleBinding"
        );
        // Helm's own record of the release.
        match Api::<Secret>::namespaced(c.clone(), ns)
            .list(&ListParams::default().labels(&format!("owner=helm,name={}", self.name)))
            .await
        {
            Ok(l) => left.extend(l.items.into_iter().map(|o| {
                format!(
                    "helm release Secret {}",
                    o.metadata.name.unwrap_or_default()
                )
            })),
            Err(e) => left.push(format!("helm Secrets: API did not answer: {e}")),
        }
        left
    }

    fn uninstall(&mut self) {
        let started = Instant::now();
        let out = helm(
            self.node,
            &[
                "uninstall",
                &self.name,
                "--namespace",
                &self.namespace,
                "--wait",
                "--timeout",
                "60s",
            ],
        )
        .unwrap_or_else(|e| panic!("helm uninstall: {e}"));
        self.installed = false;
        eprintln!(
            "[chart] helm uninstall --wait: {:.1}s: {}",
            started.elapsed().as_secs_f64(),
            out.trim()
        );
    }
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- left on the node at the last look ----\n{}",
                self.last_leftovers
                    .lock()
                    .map(|l| l.join("\n"))
                    .unwrap_or_default()
            );
            self.logs.dump();
        }
        if self.installed {
            let _ = helm(
                self.node,
                &[
                    "uninstall",
                    &self.name,
                    "--namespace",
                    &self.namespace,
                    "--wait",
                    "--timeout",
                    "60s",
                ],
            );
        }
        // Whatever the agent left: its files in the static pod directory make the kubelet run
        // copies, which would write again. Take them out until no agent sandbox is left (bounded),
        // then remove this release's directories.
        let ours = format!("{}-", self.namespace);
        let started = Instant::now();
        loop {
            for entry in std::fs::read_dir(&self.node.manifest_dir)
                .into_iter()
                .flatten()
                .flatten()
            {
                if entry.file_name().to_string_lossy().starts_with(&ours) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
            let running = run(
                &tool("crictl"),
                &[
                    "--runtime-endpoint",
                    &self.node.cri_endpoint,
                    "pods",
                    "--namespace",
                    &self.namespace,
                    "--name",
                    &self.fullname(),
                    "--state",
                    "ready",
                    "-q",
                ],
                None,
            );
            let clean = running.as_deref().is_ok_and(|out| out.trim().is_empty());
            if clean || started.elapsed() > Duration::from_secs(60) {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let _ = std::fs::remove_dir_all(&self.host_root);
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The first `token` file in a checkpointed pod's secret directory (its projected
/// service-account volume).
fn token_in(dir: &Path) -> Option<String> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find_map(|e| read(&e.path().join("token")))
}

/// Issue: a real `helm install` on the node: the agent pod starts from the locally built image
/// and becomes ready; `helm uninstall` then leaves nothing behind, on the API or on the node.
#[tokio::test]
async fn helm_install_runs_the_agent_as_a_pod_and_uninstall_leaves_nothing() {
    let node = Node::from_env();
    let ns = ChartNamespace::create(&node, "e2e-chart-install").await;
    let mut release = Release::install(&node, &ns, "pc").await;
    let image = agent_image(&node);

    let pod = wait_for("the DaemonSet's pod is Ready", LONG, || async {
        release.daemon_pod().await.filter(is_ready)
    })
    .await;
    let spec = pod.spec.as_ref().expect("pod spec");
    let container = &spec.containers[0];
    assert_eq!(container.image.as_deref(), Some(image), "the local image");
    assert_eq!(container.image_pull_policy.as_deref(), Some("Never"));
    assert_eq!(spec.host_network, Some(true));
    let pod_name = pod.metadata.name.clone().expect("pod name");

    // The admin server answers on the node's network, and this copy is the one that works.
    let metrics = wait_for(
        "/metrics on the node says the pod holds the lock",
        SHORT,
        || async {
            node_admin_get("/metrics").filter(|m| {
                sample(m, "pod_checkpointer_lock_held", "") == Some(1.0)
                    && sample(m, "pod_checkpointer_api_reachable", "") == Some(1.0)
            })
        },
    )
    .await;
    assert!(
        sample(
            &metrics,
            "pod_checkpointer_build_info",
            &format!(r#"{{version="{}"}}"#, env!("CARGO_PKG_VERSION"))
        )
        .is_some(),
        "build info exported"
    );
    assert!(node_admin_get("/readyz").is_some(), "/readyz answers 200");

    // Something to clean up: the agent's own checkpoint, active, and the kubelet's copy of it.
    let me = ns.key(&pod_name);
    let copy = me.static_pod_key(&node.name);
    wait_for("the agent's own checkpoint is active", SHORT, || async {
        (release.inactive(&me).exists() && node.active_manifest(&me).exists()).then_some(())
    })
    .await;
    wait_for("the kubelet runs the agent's static copy", LONG, || async {
        node.sandbox_ready(&copy).await.then_some(())
    })
    .await;
    wait_for("the static copy stands by on the lock", SHORT, || async {
        release
            .logs
            .of(&copy.name)
            .contains("\"action\":\"standby\"")
            .then_some(())
    })
    .await;

    release.uninstall();
    let uninstalled = Instant::now();
    let objects = wait_for("no API object of the release is left", SHORT, || async {
        let left = release.objects_left().await;
        left.is_empty().then_some(left)
    })
    .await;
    assert!(objects.is_empty());
    // The agent's static copy outlives the DaemonSet; it has to find out it is no longer
    // scheduled here and remove everything, itself last.
    wait_for(
        "nothing of the agent is left on the node (files, sandboxes, mirror pods)",
        CLEANUP,
        || async { release.leftovers().await.is_empty().then_some(()) },
    )
    .await;
    eprintln!(
        "[chart] node clean {:.1}s after uninstall",
        uninstalled.elapsed().as_secs_f64()
    );
}

/// Scenario 6: the agent runs as a pod from its own image, checkpoints itself (its own
/// checkpoint is always active; the static copy stands by on the lock), and when its DaemonSet is
/// deleted the copy takes the lock, removes every checkpoint on the node, its own last, and the
/// kubelet stops it.
#[tokio::test]
async fn agent_pod_checkpoints_itself_and_cleans_up_when_its_daemonset_goes() {
    let node = Node::from_env();
    let ns = ChartNamespace::create(&node, "e2e-chart-self").await;
    let release = Release::install(&node, &ns, "pc").await;

    let pod = wait_for("the DaemonSet's pod is Ready", LONG, || async {
        release.daemon_pod().await.filter(is_ready)
    })
    .await;
    let me = ns.key(pod.metadata.name.as_deref().expect("pod name"));
    let copy = me.static_pod_key(&node.name);

    // Its own checkpoint: inactive and, always, active; the kubelet runs the copy, which waits.
    let manifest = wait_for(
        "the agent's own checkpoint, inactive and active",
        SHORT,
        || async {
            let inactive = read(&release.inactive(&me))?;
            let active = read(&node.active_manifest(&me))?;
            (inactive == active).then_some(inactive)
        },
    )
    .await;
    let cp: Pod = serde_json::from_str(&manifest).expect("checkpoint is a v1 Pod");
    assert_eq!(
        cp.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CHECKPOINT_OF))
            .map(String::as_str),
        Some(me.name.as_str())
    );
    let cp_spec = cp.spec.expect("spec");
    assert_eq!(cp_spec.service_account_name, None);
    assert_eq!(cp_spec.host_network, Some(true));
    assert!(
        token_in(&release.secret_dir(&me)).is_some_and(|t| t.split('.').count() == 3),
        "the copy gets a service-account token (JWT) to talk to the API"
    );
    wait_for("the kubelet runs the static copy", LONG, || async {
        node.sandbox_ready(&copy).await.then_some(())
    })
    .await;
    wait_for("the static copy stands by on the lock", SHORT, || async {
        release
            .logs
            .of(&copy.name)
            .contains("\"action\":\"standby\"")
            .then_some(())
    })
    .await;
    let metrics = node_admin_get("/metrics").unwrap_or_default();
    assert_eq!(
        sample(&metrics, "pod_checkpointer_lock_held", ""),
        Some(1.0),
        "the DaemonSet's pod works, the copy waits"
    );

    // A parent of the same namespace.
    let pods = ns.pods();
    pods.create(
        &PostParams::default(),
        &busybox_pod(&node, "parent", true, "sleep 3600", serde_json::json!({})),
    )
    .await
    .expect("create parent");
    let parent = ns.key("parent");
    wait_for("the parent's checkpoint with its token", LONG, || async {
        read(&release.inactive(&parent))?;
        token_in(&release.secret_dir(&parent))
    })
    .await;
    wait_for("the parent runs", LONG, || async {
        pod_running(&pods, "parent").await.then_some(())
    })
    .await;
    assert!(
        !node.active_manifest(&parent).exists(),
        "a running parent's checkpoint stays inactive"
    );

    // The DaemonSet goes. The agent pod sees it through its watch on its own DaemonSet (while
    // its credentials still work) and removes every checkpoint, its own last; its SIGTERM waits
    // for that. (Were it gone first, the copy would do the same after the grace period.)
    let deleted = Instant::now();
    Api::<DaemonSet>::namespaced(node.client().await, &ns.name)
        .delete(&release.fullname(), &DeleteParams::background())
        .await
        .expect("delete the DaemonSet");
    let own_files = [
        release.inactive(&me),
        node.active_manifest(&me),
        release.secret_dir(&me),
        release.configmap_dir(&me),
    ];
    let parent_files = [
        release.inactive(&parent),
        node.active_manifest(&parent),
        release.secret_dir(&parent),
        release.configmap_dir(&parent),
    ];
    wait_for(
        "every checkpoint removed, the agent's own last",
        CLEANUP,
        || async {
            release.logs.snapshot();
            let own_left = own_files.iter().any(|p| p.exists());
            let parent_left = parent_files.iter().any(|p| p.exists());
            assert!(
                own_left || !parent_left,
                "the agent removed its own checkpoint while the parent's was still there"
            );
            (!own_left && !parent_left).then_some(())
        },
    )
    .await;
    let cleaned = deleted.elapsed();
    wait_for("no agent sandbox runs", LONG, || async {
        release
            .agent_sandboxes()
            .await
            .filter(|s| s.is_empty())
            .map(|_| ())
    })
    .await;
    let stopped = deleted.elapsed();

    // The account of whichever copy did it, in order: the parent's checkpoint, then its own
    // files, then its own active manifest (which makes the kubelet stop the static copy).
    let log = [release.logs.of(&me.name), release.logs.of(&copy.name)]
        .into_iter()
        .find(|log| line_of(log, "parent", "remove").is_some())
        .expect("an agent log shows the parent's checkpoint removed");
    let parent_removed = line_of(&log, "parent", "remove").expect("the parent's removed");
    let own_removed = line_of(&log, &me.name, "remove").expect("its own removed");
    let own_deactivated = line_of(&log, &me.name, "deactivate").expect("its own deactivated");
    assert!(
        parent_removed < own_removed && own_removed < own_deactivated,
        "order: parent {parent_removed}, own files {own_removed}, own active {own_deactivated}"
    );
    assert_eq!(
        actions_on(&log, &me.name).last().map(String::as_str),
        Some("deactivate"),
        "nothing is done to its own checkpoint after it is taken out of the static pod directory"
    );
    assert!(
        pod_running(&pods, "parent").await,
        "the parent itself is left alone"
    );
    wait_for("no agent pod left in the API", SHORT, || async {
        let left = Api::<Pod>::namespaced(node.client().await, &ns.name)
            .list(&release.instance_selector())
            .await
            .ok()?;
        left.items.is_empty().then_some(())
    })
    .await;
    eprintln!(
        "[chart] after the DaemonSet delete: checkpoints gone {:.1}s, copies stopped {:.1}s",
        cleaned.as_secs_f64(),
        stopped.as_secs_f64()
    );
}

/// The chart's ServiceAccount and RBAC, rendered by `helm template` (the one source of truth),
/// applied to the cluster; a kubeconfig with a token of that ServiceAccount.
struct ChartIdentity {
    kubeconfig: tempfile::NamedTempFile,
}

impl ChartIdentity {
    fn apply(node: &Node, release: &str, ns: &str) -> Self {
        let chart = chart_dir();
        let rendered = helm(
            node,
            &[
                "template",
                release,
                &chart.to_string_lossy(),
                "--namespace",
                ns,
                "--kube-version",
                "1.34.4",
                "--set",
                &format!("namespaces={{{ns}}}"),
                "--set",
                &format!("rbac.tokenServiceAccounts={{{ns}/default}}"),
                "--show-only",
                "templates/rbac.yaml",
                "--show-only",
                "templates/serviceaccount.yaml",
            ],
        )
        .unwrap_or_else(|e| panic!("helm template: {e}"));
        for kind in ["kind: Role", "kind: RoleBinding", "kind: ServiceAccount"] {
            assert!(rendered.contains(kind), "{kind} rendered:\n{rendered}");
        }
        assert!(!rendered.contains("kind: DaemonSet"));
        kubectl(node, &["apply", "-f", "-"], Some(&rendered))
            .unwrap_or_else(|e| panic!("kubectl apply: {e}"));
        let sa = format!("{release}-pod-checkpointer");
        let token = kubectl(
            node,
            &["-n", ns, "create", "token", &sa, "--duration", "1h"],
            None,
        )
        .unwrap_or_else(|e| panic!("kubectl create token: {e}"));
        let admin =
            kube::config::Kubeconfig::read_from(&node.kubeconfig).expect("admin kubeconfig");
        let server = admin
            .clusters
            .first()
            .and_then(|c| c.cluster.as_ref())
            .and_then(|c| c.server.clone())
            .expect("API server address");
        let ca = std::env::var("CLUSTER_CA").expect("CLUSTER_CA");
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "node", "cluster": {"server": server, "certificate-authority": ca}}],
            "users": [{"name": sa, "user": {"token": token.trim()}}],
            "contexts": [{"name": "agent", "context": {"cluster": "node", "user": sa, "namespace": ns}}],
            "current-context": "agent",
        });
        let kubeconfig = tempfile::Builder::new()
            .prefix("pc-sa-")
            .suffix(".kubeconfig")
            .tempfile_in("/tmp")
            .expect("kubeconfig file");
        std::fs::write(kubeconfig.path(), config.to_string()).expect("writing kubeconfig");
        Self { kubeconfig }
    }
}

/// Scenario 7: the agent runs under a ServiceAccount with exactly the RBAC the chart grants.
/// A namespace the chart did not grant makes the pod watch forbidden: the agent says so clearly
/// (an error log line naming RBAC, once; `api_errors_total{reason="forbidden",resource="pods"}`),
/// and treats the API view as unknown, so nothing is removed on a partial view. Within the granted
/// namespace the chart's RBAC is enough for everything: the pod watch, the Secret and ConfigMap
/// watches, the TokenRequest for the projected token, and Events.
#[tokio::test]
async fn agent_with_the_charts_rbac_reports_a_missing_permission() {
    let node = Node::from_env();
    let ns = ChartNamespace::create(&node, "e2e-chart-rbac").await;
    let other = ChartNamespace::create(&node, "e2e-chart-norbac").await;
    let identity = ChartIdentity::apply(&node, "pc", &ns.name);
    let kubeconfig = identity.kubeconfig.path();
    let roles: Vec<String> = Api::<Role>::namespaced(node.client().await, &other.name)
        .list(&ListParams::default())
        .await
        .expect("list roles")
        .items
        .into_iter()
        .filter_map(|r| r.metadata.name)
        .collect();
    assert!(
        roles.is_empty(),
        "nothing granted in {}: {roles:?}",
        other.name
    );

    // A parent in the granted namespace, with a Secret, a ConfigMap and its token.
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "creds"}, "stringData": {"password": "s3cret"},
    }))
    .expect("secret");
    ns.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "settings"}, "data": {"mode": "safe"},
    }))
    .expect("configmap");
    ns.api::<ConfigMap>()
        .create(&PostParams::default(), &cm)
        .await
        .expect("create configmap");
    let pods = ns.pods();
    pods.create(
        &PostParams::default(),
        &busybox_pod(
            &node,
            "parent",
            true,
            "sleep 3600",
            serde_json::json!({"spec": {
                "volumes": [
                    {"name": "secret", "secret": {"secretName": "creds"}},
                    {"name": "config", "configMap": {"name": "settings"}},
                ],
                "containers": [{
                    "name": "main",
                    "image": node.busybox,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", "sleep 3600"],
                    "volumeMounts": [
                        {"name": "secret", "mountPath": "/secret"},
                        {"name": "config", "mountPath": "/config"},
                    ],
                }],
            }}),
        ),
    )
    .await
    .expect("create parent");
    wait_for("the parent runs", LONG, || async {
        pod_running(&pods, "parent").await.then_some(())
    })
    .await;
    let parent = ns.key("parent");

    // 1. Asked to watch a namespace the chart did not grant.
    let mut agent = Agent::start(
        &node,
        AgentOptions {
            namespaces: &[&ns.name, &other.name],
            kubeconfig: Some(kubeconfig),
            ..Default::default()
        },
    );
    let forbidden = r#"{reason="forbidden",resource="pods"}"#;
    wait_for("forbidden pod watches are counted", SHORT, || async {
        let (_, m) = agent.get("/metrics")?;
        sample(&m, "pod_checkpointer_api_errors_total", forbidden).filter(|n| *n >= 2.0)
    })
    .await;
    let refusals: Vec<serde_json::Value> = agent
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "forbidden")
        .filter(|v| v["level"] == "ERROR")
        .collect();
    assert_eq!(
        refusals.len(),
        1,
        "one error line for the refused watch, not one per retry: {refusals:#?}\n{}",
        agent.log()
    );
    let line = &refusals[0];
    assert_eq!(
        line["scope"],
        other.name.as_str(),
        "names the namespace: {line}"
    );
    assert!(
        line["message"].as_str().is_some_and(|m| m.contains("RBAC")),
        "tells the operator to look at RBAC: {line}"
    );
    assert!(
        agent
            .log()
            .lines()
            .any(|l| l.contains("\"action\":\"api_reachable\"")
                && l.contains(&format!("\"scope\":\"{}\"", ns.name))),
        "the granted namespace's watch syncs"
    );
    // A partial view must never look like "the parent is gone": the API view stays unknown.
    holds_for(
        "the API view stays unknown while one watch is forbidden",
        Duration::from_secs(3),
        || async { agent.metric("pod_checkpointer_api_reachable") == Some(0.0) },
    )
    .await;
    assert_eq!(agent.metric("pod_checkpointer_removals_total"), Some(0.0));
    assert_eq!(
        agent.get("/healthz").map(|(s, _)| s),
        Some(200),
        "still alive"
    );
    assert!(agent.stop().success());

    // 2. Only the granted namespace: the chart's RBAC covers everything the agent does.
    let agent = Agent::start(
        &node,
        AgentOptions {
            namespaces: &[&ns.name],
            kubeconfig: Some(kubeconfig),
            ..Default::default()
        },
    );
    let manifest = wait_for(
        "the parent's checkpoint, with its Secret, ConfigMap and token",
        LONG,
        || async {
            let manifest = read(&agent.inactive_manifest(&parent))?;
            let secret_dir = agent.secret_dir(&parent);
            std::fs::read_dir(&secret_dir)
                .ok()?
                .flatten()
                .find(|e| read(&e.path().join("password")).as_deref() == Some("s3cret"))?;
            std::fs::read_dir(agent.configmap_dir(&parent))
                .ok()?
                .flatten()
                .find(|e| read(&e.path().join("mode")).as_deref() == Some("safe"))?;
            token_in(&secret_dir)?;
            Some(manifest)
        },
    )
    .await;
    assert!(manifest.contains(CHECKPOINT_OF));
    let token = token_in(&agent.secret_dir(&parent)).expect("token");
    assert_eq!(
        token.split('.').count(),
        3,
        "a JWT from the TokenRequest API"
    );
    assert_eq!(agent.metric("pod_checkpointer_api_reachable"), Some(1.0));

    // Events: removing the checkpoint of a deleted parent is reported on it.
    pods.delete("parent", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete parent");
    wait_for(
        "the deleted parent's checkpoint is removed",
        SHORT,
        || async { (!agent.inactive_manifest(&parent).exists()).then_some(()) },
    )
    .await;
    wait_for(
        "an Event reports the removal on the parent",
        SHORT,
        || async {
            let events = ns.api::<Event>().list(&ListParams::default()).await.ok()?;
            events
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("CheckpointRemoved")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("parent")
                })
                .map(|_| ())
        },
    )
    .await;
    let (_, metrics) = agent.get("/metrics").expect("metrics");
    let refused: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("pod_checkpointer_api_errors_total") && l.contains("forbidden"))
        .collect();
    assert!(
        refused.is_empty(),
        "nothing forbidden with the chart's RBAC: {refused:?}"
    );
    assert!(
        !agent.log().contains("\"reason\":\"forbidden\""),
        "no forbidden request logged"
    );
}

impl Release<'_> {
    /// Creates an annotated busybox parent in the release's namespace and waits until it runs
    /// with its checkpoint written.
    async fn running_parent(&self, name: &str) -> PodKey {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let pod = busybox_pod(self.node, name, true, "sleep 3600", serde_json::json!({}));
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create parent");
        let key = PodKey::new(&self.namespace, name);
        wait_for("the parent runs with its checkpoint", LONG, || async {
            (self.inactive(&key).exists() && pod_running(&pods, name).await).then_some(())
        })
        .await;
        key
    }

    /// `helm upgrade --reuse-values` with `set`, waiting for the rollout.
    fn upgrade(&self, set: &[&str]) {
        let chart = chart_dir();
        let mut args = vec![
            "upgrade",
            self.name.as_str(),
            chart.to_str().expect("chart path"),
            "--namespace",
            self.namespace.as_str(),
            "--reuse-values",
            "--wait",
            "--timeout",
            "120s",
        ];
        for s in set {
            args.extend(["--set", s]);
        }
        if let Err(e) = helm(self.node, &args) {
            self.logs.dump();
            panic!("helm upgrade: {e}");
        }
    }
}

/// Issue 11.3: `helm upgrade --set checkpointSelf=false`, in the losing order: the old pod's
/// static copy takes the node lock before the newer DaemonSet pod (which does not checkpoint
/// itself) starts. The copy must see that newer pod as its replacement, annotated or not, and
/// remove only its own checkpoint: every other checkpoint on the node stays.
#[tokio::test]
async fn turning_off_self_checkpointing_removes_only_the_agents_own_checkpoint() {
    let node = Node::from_env();
    let ns = ChartNamespace::create(&node, "e2e-chart-noself").await;
    let release = Release::install(&node, &ns, "pc").await;
    let pod = wait_for("the DaemonSet's pod is Ready", LONG, || async {
        release.daemon_pod().await.filter(is_ready)
    })
    .await;
    let me = ns.key(pod.metadata.name.as_deref().expect("pod name"));
    let copy = me.static_pod_key(&node.name);
    wait_for("the static copy stands by on the lock", LONG, || async {
        (node.active_manifest(&me).exists()
            && release
                .logs
                .of(&copy.name)
                .contains("\"action\":\"standby\""))
        .then_some(())
    })
    .await;
    let parent = release.running_parent("parent").await;
    let pods = ns.pods();

    release.upgrade(&["checkpointSelf=false"]);
    wait_for(
        "the old pod's static copy holds the node lock (the losing order)",
        LONG,
        || async {
            release
                .logs
                .of(&copy.name)
                .contains("holding the node lock")
                .then_some(())
        },
    )
    .await;
    wait_for(
        "the copy removes its own checkpoint, and only that",
        CLEANUP,
        || async {
            assert!(
                release.inactive(&parent).exists(),
                "the parent's checkpoint was removed: the copy took the new release for an uninstall"
            );
            let own_left =
                release.inactive(&me).exists() || node.active_manifest(&me).exists();
            (!own_left).then_some(())
        },
    )
    .await;
    let newer = wait_for(
        "the newer DaemonSet pod holds the node lock",
        LONG,
        || async {
            let pod = release.daemon_pod().await?;
            let name = pod.metadata.name.clone()?;
            (name != me.name && release.logs.of(&name).contains("holding the node lock"))
                .then_some(name)
        },
    )
    .await;
    holds_for(
        "the parent's checkpoint stays under the newer agent",
        Duration::from_secs(10),
        || async { release.inactive(&parent).exists() && pod_running(&pods, "parent").await },
    )
    .await;
    for name in [&copy.name, &newer] {
        assert_eq!(
            line_of(&release.logs.of(name), "parent", "remove"),
            None,
            "{name} removed the parent's checkpoint"
        );
    }
}

/// Issue 12.9: delete and reinstall, the usual recipe for changing what a DaemonSet cannot
/// change in place. The first release cleans up after itself; the second takes the node over
/// from nothing: the parent's checkpoint is written again and the new agent checkpoints itself.
#[tokio::test]
async fn delete_and_reinstall_hands_the_node_to_the_new_release() {
    let node = Node::from_env();
    let ns = ChartNamespace::create(&node, "e2e-chart-reinstall").await;
    let mut first = Release::install(&node, &ns, "pc").await;
    let parent = first.running_parent("parent").await;
    let pods = ns.pods();

    first.uninstall();
    wait_for(
        "the first release left nothing on the node",
        CLEANUP,
        || async { first.leftovers().await.is_empty().then_some(()) },
    )
    .await;
    assert!(
        pod_running(&pods, "parent").await,
        "the parent is left alone"
    );
    drop(first);

    let second = Release::install(&node, &ns, "pc").await;
    let pod = wait_for("the new DaemonSet pod is Ready", LONG, || async {
        second.daemon_pod().await.filter(is_ready)
    })
    .await;
    let me = ns.key(pod.metadata.name.as_deref().expect("pod name"));
    wait_for(
        "the new agent checkpoints the parent and itself",
        LONG,
        || async {
            (second.inactive(&parent).exists()
                && second.inactive(&me).exists()
                && node.active_manifest(&me).exists())
            .then_some(())
        },
    )
    .await;
    let metrics = wait_for("the new agent works", SHORT, || async {
        node_admin_get("/metrics")
            .filter(|m| sample(m, "pod_checkpointer_lock_held", "") == Some(1.0))
    })
    .await;
    assert_eq!(
        sample(
            &metrics,
            "pod_checkpointer_checkpoints",
            r#"{state="inactive"}"#
        ),
        Some(1.0),
        "the parent's checkpoint, inactive while it runs"
    );
}
