//! Scenarios on a self-hosted node (`node.sh up --self-hosted`, issue 9): kube-apiserver runs as
//! a DaemonSet pod in kube-system, checkpointed by the agent the harness installed with the Helm
//! chart, and nothing else brings the API back when that pod stops. They run only when `node.sh
//! env` says `SELF_HOSTED=1`, and share the one node: each leaves it healthy for the next.
//!
//! Every scenario watches from the host: a thread polls `https://127.0.0.1:6443/readyz` every
//! 100 ms and records each up/down transition; another samples the runtime (crictl) and the
//! static pod directory every 250 ms, so the figures say who served when and for how long two
//! API servers fought for port 6443. Figures are printed one per line, prefixed `FIGURE`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::harness::{Node, wait_for};

const CHECKPOINT_OF: &str = "checkpointer.alpha.coreos.com/checkpoint-of";
/// How long the API may take to come back from a checkpoint once nothing serves it: the agent's
/// poll (500 ms), the kubelet's static pod scan (1 s), kube-apiserver's start (~3 s), slack for
/// two loaded cores.
const API_BACK: Duration = Duration::from_secs(45);
/// The old copy must leave port 6443 to a successor that has started within this (SPEC §4
/// "Replacement": at once, not after the grace period).
const YIELD_BOUND: f64 = 10.0;
/// The kubelet's crash-loop backoff decides when a container that lost the port race tries again
/// (10 s, 20 s, 40 s, ...): how long a parent may take to serve after its copy yielded.
const PARENT_BACK: Duration = Duration::from_secs(150);

fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

fn figure(scenario: &str, name: &str, value: f64, unit: &str) {
    // + 0.0: an empty f64 sum is -0.0
    println!(
        "FIGURE selfhosted/{scenario} {name} = {:.2} {unit}",
        value + 0.0
    );
}

/// "15s", "500ms", "2m" as a Duration.
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    if let Some(secs) = s.strip_suffix('s') {
        return secs.parse().ok().map(Duration::from_secs_f64);
    }
    if let Some(mins) = s.strip_suffix('m') {
        return mins
            .parse::<f64>()
            .ok()
            .map(|m| Duration::from_secs_f64(m * 60.0));
    }
    None
}

/// Runs a command to completion: Ok(stdout), or Err(everything it said).
fn run(program: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("starting {}: {e}", program.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{} {args:?}: {}\n{}{}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// What `node.sh env` says about the self-hosted control plane.
pub struct SelfHosted {
    node: Node,
    namespace: String,
    daemonset: String,
    release: String,
    values: PathBuf,
    chart: PathBuf,
    daemonset_yaml: PathBuf,
    grace: Duration,
    fallback: Option<Duration>,
    inactive_dir: PathBuf,
    secret_dir: PathBuf,
    configmap_dir: PathBuf,
    bin: PathBuf,
    node_sh: PathBuf,
}

/// One pod of the API server's DaemonSet, as the API lists it.
#[derive(Clone, Debug)]
struct ApiPod {
    name: String,
    ready: bool,
    deleting: bool,
    restarts: i64,
}

impl SelfHosted {
    /// None (the scenario is skipped) unless the node was brought up with `--self-hosted`.
    fn from_env() -> Option<Self> {
        if std::env::var("SELF_HOSTED").ok().as_deref() != Some("1") {
            eprintln!(
                "skipped: not a self-hosted node (node.sh up --self-hosted sets SELF_HOSTED=1)"
            );
            return None;
        }
        let var = |n: &str| std::env::var(n).unwrap_or_else(|_| panic!("{n} from node.sh env"));
        let node_dir = PathBuf::from(var("NODE_DIR"));
        Some(Self {
            node: Node::from_env(),
            namespace: var("SELF_HOSTED_NAMESPACE"),
            daemonset: var("SELF_HOSTED_DAEMONSET"),
            release: var("SELF_HOSTED_AGENT_RELEASE"),
            values: PathBuf::from(var("SELF_HOSTED_AGENT_VALUES")),
            chart: PathBuf::from(var("CHART_DIR")),
            daemonset_yaml: node_dir.join("selfhosted/kube-apiserver-daemonset.yaml"),
            grace: parse_duration(&var("SELF_HOSTED_GRACE")).expect("SELF_HOSTED_GRACE"),
            fallback: std::env::var("SELF_HOSTED_FALLBACK_TIMEOUT")
                .ok()
                .and_then(|v| parse_duration(&v)),
            inactive_dir: PathBuf::from(var("INACTIVE_MANIFEST_DIR")),
            secret_dir: PathBuf::from(var("CHECKPOINT_SECRET_DIR")),
            configmap_dir: PathBuf::from(var("CHECKPOINT_CONFIGMAP_DIR")),
            bin: PathBuf::from(var("NODE_BIN")),
            node_sh: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node/node.sh"),
        })
    }

    fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let kubeconfig = self.node.kubeconfig.to_string_lossy().into_owned();
        let mut all = vec!["--kubeconfig", &kubeconfig, "--request-timeout=10s"];
        all.extend_from_slice(args);
        run(&self.bin.join("kubectl"), &all)
    }

    fn helm(&self, args: &[&str]) -> Result<String, String> {
        let kubeconfig = self.node.kubeconfig.to_string_lossy().into_owned();
        let mut all = vec!["--kubeconfig", kubeconfig.as_str()];
        all.extend_from_slice(args);
        run(&self.bin.join("helm"), &all)
    }

    /// `node.sh ARGS`; its stderr (node.sh logs there), or a panic with what it said.
    fn sh(&self, args: &[&str]) -> String {
        let out = Command::new("bash")
            .arg(&self.node_sh)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running node.sh");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "node.sh {args:?} failed:\n{stderr}");
        stderr
    }

    /// The DaemonSet's pods (mirror pods of static copies left out).
    fn api_pods(&self) -> Option<Vec<ApiPod>> {
        let out = self
            .kubectl(&[
                "-n",
                &self.namespace,
                "get",
                "pods",
                "-l",
                &format!("app={}", self.daemonset),
                "-o",
                "json",
            ])
            .ok()?;
        let list: serde_json::Value = serde_json::from_str(&out).ok()?;
        let pods = list["items"]
            .as_array()?
            .iter()
            .filter(|p| p["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_null())
            .map(|p| ApiPod {
                name: p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                ready: p["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                }),
                deleting: !p["metadata"]["deletionTimestamp"].is_null(),
                restarts: p["status"]["containerStatuses"][0]["restartCount"]
                    .as_i64()
                    .unwrap_or_default(),
            })
            .collect();
        Some(pods)
    }

    /// The one Ready pod of the DaemonSet that is not being deleted.
    fn serving_pod(&self) -> Option<ApiPod> {
        let pods = self.api_pods()?;
        let live: Vec<&ApiPod> = pods.iter().filter(|p| !p.deleting).collect();
        match live.as_slice() {
            [one] if one.ready => Some((*one).clone()),
            _ => None,
        }
    }

    fn active_copies(&self) -> Vec<String> {
        manifests_of(&self.node.manifest_dir, &self.namespace, &self.daemonset)
    }

    fn inactive_checkpoints(&self) -> Vec<String> {
        manifests_of(&self.inactive_dir, &self.namespace, &self.daemonset)
    }

    fn inactive_file(&self, pod: &str) -> PathBuf {
        self.inactive_dir
            .join(format!("{}-{pod}.json", self.namespace))
    }

    /// What is wrong with the node now, for the API server's pods: empty when the DaemonSet's
    /// pod serves alone, with exactly its own checkpoint, no copy in the static pod directory
    /// and no side files of pods that are gone.
    fn problems(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let Some(pods) = self.api_pods() else {
            return vec!["the API does not answer".into()];
        };
        let live: BTreeSet<String> = pods
            .iter()
            .filter(|p| !p.deleting)
            .map(|p| p.name.clone())
            .collect();
        match self.serving_pod() {
            Some(p) => {
                if !self.inactive_file(&p.name).exists() {
                    bad.push(format!("no checkpoint of the serving pod {}", p.name));
                }
            }
            None => bad.push(format!("no single Ready DaemonSet pod: {pods:?}")),
        }
        for cp in self.inactive_checkpoints() {
            if !live.contains(&cp) {
                bad.push(format!("checkpoint without a parent: {cp}"));
            }
        }
        for copy in self.active_copies() {
            bad.push(format!("copy in the static pod directory: {copy}"));
        }
        for (what, root) in [
            ("secret", &self.secret_dir),
            ("configmap", &self.configmap_dir),
        ] {
            for entry in std::fs::read_dir(root.join(&self.namespace))
                .into_iter()
                .flatten()
                .flatten()
            {
                let pod = entry.file_name().to_string_lossy().into_owned();
                if pod.starts_with(&format!("{}-", self.daemonset))
                    && !self.inactive_file(&pod).exists()
                {
                    bad.push(format!("stale {what} files of {pod}"));
                }
            }
        }
        bad
    }

    /// Waits until [`problems`] is empty: removals wait for the grace period.
    async fn assert_clean(&self, scenario: &str) {
        let deadline = self.grace + Duration::from_secs(90);
        let started = std::time::Instant::now();
        let mut last = Vec::new();
        loop {
            let now = self.problems();
            if now.is_empty() {
                eprintln!(
                    "[selfhosted/{scenario}] node clean after {:.1}s",
                    started.elapsed().as_secs_f64()
                );
                return;
            }
            if now != last {
                eprintln!("[selfhosted/{scenario}] not clean yet: {now:?}");
                last = now;
            }
            assert!(
                started.elapsed() < deadline,
                "{scenario}: node not clean within {deadline:?}: {last:?}\n{}",
                self.sh(&["api-status"])
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The DaemonSet's pod template as the harness created it.
    fn restore_daemonset(&self) -> Result<String, String> {
        let file = self.daemonset_yaml.to_string_lossy().into_owned();
        self.kubectl(&["apply", "-f", &file])
    }

    fn patch_daemonset(&self, patch: &serde_json::Value) {
        self.kubectl(&[
            "-n",
            &self.namespace,
            "patch",
            "daemonset",
            &self.daemonset,
            "--type=json",
            "-p",
            &patch.to_string(),
        ])
        .unwrap_or_else(|e| panic!("patch the DaemonSet: {e}"));
    }

    fn rollout_undo(&self) -> Result<String, String> {
        self.kubectl(&[
            "-n",
            &self.namespace,
            "rollout",
            "undo",
            &format!("daemonset/{}", self.daemonset),
        ])
    }
}

/// `<ns>-<prefix>-*` manifests in `dir` that are checkpoints, by parent name.
fn manifests_of(dir: &Path, namespace: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&format!("{namespace}-{prefix}-")) || !name.ends_with(".json") {
            continue;
        }
        let parent = std::fs::read_to_string(entry.path())
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| {
                v["metadata"]["annotations"][CHECKPOINT_OF]
                    .as_str()
                    .map(str::to_string)
            });
        if let Some(parent) = parent {
            out.push(parent);
        }
    }
    out.sort();
    out
}

/// A scenario that fails must not leave the next one without an API server: bring the bootstrap
/// process back if nothing answers, put the DaemonSet's template back, and hand over again; when
/// even that fails, build the node afresh.
struct Recover<'a>(&'a SelfHosted);

impl Drop for Recover<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let sh = self.0;
        print_agent_logs();
        eprintln!("[selfhosted] recovering the node for the next scenario");
        let status = Command::new("bash")
            .arg(&sh.node_sh)
            .arg("rescue")
            .stdin(Stdio::null())
            .status();
        eprintln!("[selfhosted] rescue: {status:?}");
        eprintln!(
            "[selfhosted] DaemonSet restored: {:?}",
            sh.restore_daemonset()
        );
        let node_sh = |args: &[&str]| {
            let status = Command::new("bash")
                .arg(&sh.node_sh)
                .args(args)
                .env("SELF_HOSTED", "1")
                .stdin(Stdio::null())
                .status();
            eprintln!("[selfhosted] node.sh {}: {status:?}", args.join(" "));
            status.is_ok_and(|s| s.success())
        };
        // Last resort, so one failure cannot fail every scenario after it: a fresh node, built
        // the way the suite built it (same directories, so the environment still holds).
        let recovered = node_sh(&["pivot"]) || (node_sh(&["down"]) && node_sh(&["up"]));
        if !recovered {
            eprintln!("[selfhosted] the node could not be recovered");
        }
    }
}

/// What the agents (DaemonSet pods and static copies) logged, for a failure read only in CI's
/// output: each container's restarts and its last decisions (lines with an `action`).
fn print_agent_logs() {
    let Ok(dir) = std::env::var("NODE_DIR") else {
        return;
    };
    let pods = std::fs::read_dir(PathBuf::from(dir).join("pod-logs"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("pod-checkpointer"));
    for pod in pods {
        for container in std::fs::read_dir(pod.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let mut runs: Vec<PathBuf> = std::fs::read_dir(container.path())
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect();
            runs.sort();
            eprintln!(
                "[selfhosted] agent log {}: {} run(s)",
                container.path().display(),
                runs.len()
            );
            for run in runs {
                let text = std::fs::read_to_string(&run).unwrap_or_default();
                let decisions: Vec<&str> = text.lines().filter(|l| l.contains("action")).collect();
                eprintln!("[selfhosted]   {}:", run.display());
                for line in &decisions[decisions.len().saturating_sub(25)..] {
                    eprintln!("[selfhosted]     {line}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Observation from the host

/// What the runtime and the static pod directory show about the API server's pods at one time.
#[derive(Clone, Debug, Default, PartialEq)]
struct NodeSample {
    /// Static copies (`<pod>-<node>`) with a READY sandbox.
    copies: BTreeSet<String>,
    /// DaemonSet pods with a READY sandbox.
    parents: BTreeSet<String>,
    /// Pods (copy or parent) whose kube-apiserver container is RUNNING.
    running: BTreeSet<String>,
    /// Checkpoints in the static pod directory, by parent.
    active: Vec<String>,
}

struct Observer {
    scenario: &'static str,
    t0: f64,
    api: Arc<Mutex<Vec<(f64, bool)>>>,
    node: Arc<Mutex<Vec<(f64, NodeSample)>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Observer {
    fn start(sh: &SelfHosted, scenario: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let api = Arc::new(Mutex::new(Vec::new()));
        let node = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        {
            let (stop, api) = (stop.clone(), api.clone());
            threads.push(std::thread::spawn(move || poll_api(&stop, &api)));
        }
        {
            let (stop, node) = (stop.clone(), node.clone());
            let crictl = sh.bin.join("crictl");
            let endpoint = sh.node.cri_endpoint.clone();
            let manifests = sh.node.manifest_dir.clone();
            let (ns, ds, node_name) = (
                sh.namespace.clone(),
                sh.daemonset.clone(),
                sh.node.name.clone(),
            );
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(s) =
                        sample_node(&crictl, &endpoint, &manifests, &ns, &ds, &node_name)
                    {
                        let mut v = node.lock().expect("node samples");
                        if v.last().is_none_or(|(_, last)| *last != s) {
                            v.push((epoch(), s));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            }));
        }
        let me = Self {
            scenario,
            t0: epoch(),
            api,
            node,
            stop,
            threads,
        };
        // A first answer on both, so transitions are measured from a known state.
        let started = std::time::Instant::now();
        while (me.api.lock().expect("api").is_empty() || me.node.lock().expect("node").is_empty())
            && started.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        me
    }

    fn api_up(&self) -> bool {
        self.api
            .lock()
            .expect("api")
            .last()
            .is_some_and(|(_, up)| *up)
    }

    /// API transitions after `since` (epoch seconds).
    fn api_transitions(&self) -> Vec<(f64, bool)> {
        self.api.lock().expect("api").clone()
    }

    /// Outages (start, end) seen; an outage still running ends "now".
    fn outages(&self) -> Vec<(f64, f64)> {
        let mut out = Vec::new();
        let mut down_since = None;
        for (t, up) in self.api_transitions() {
            match (up, down_since) {
                (false, None) => down_since = Some(t),
                (true, Some(d)) => {
                    out.push((d, t));
                    down_since = None;
                }
                _ => {}
            }
        }
        if let Some(d) = down_since {
            out.push((d, epoch()));
        }
        out
    }

    fn total_down(&self) -> f64 {
        self.outages().iter().map(|(a, b)| b - a).sum()
    }

    fn longest_outage(&self) -> f64 {
        self.outages()
            .iter()
            .map(|(a, b)| b - a)
            .fold(0.0, f64::max)
    }

    fn node_samples(&self) -> Vec<(f64, NodeSample)> {
        self.node.lock().expect("node").clone()
    }

    /// Longest stretch during which a static copy and a DaemonSet pod both had a READY sandbox
    /// (two API servers for one port: one of them crash-loops on bind), and when it started.
    fn longest_fight(&self) -> (f64, Option<f64>) {
        let samples = self.node_samples();
        let mut best = (0.0, None);
        let mut since = None;
        for (i, (t, s)) in samples.iter().enumerate() {
            let fighting = !s.copies.is_empty() && !s.parents.is_empty();
            match (fighting, since) {
                (true, None) => since = Some(*t),
                (false, Some(a)) => {
                    if t - a > best.0 {
                        best = (t - a, Some(a));
                    }
                    since = None;
                }
                _ => {}
            }
            if i + 1 == samples.len()
                && let Some(a) = since
            {
                let end = epoch();
                if end - a > best.0 {
                    best = (end - a, Some(a));
                }
            }
        }
        best
    }

    /// First node sample time at or after `since` where `pred` holds.
    fn first_node(&self, since: f64, pred: impl Fn(&NodeSample) -> bool) -> Option<f64> {
        self.node_samples()
            .into_iter()
            .find(|(t, s)| *t >= since && pred(s))
            .map(|(t, _)| t)
    }

    /// First API transition to `up` at or after `since`.
    fn first_api(&self, since: f64, up: bool) -> Option<f64> {
        self.api_transitions()
            .into_iter()
            .find(|(t, u)| *t >= since && *u == up)
            .map(|(t, _)| t)
    }

    /// Everything that changed, in order, relative to the observer's start.
    fn print_timeline(&self, scenario: &str) {
        let mut lines: Vec<(f64, String)> = self
            .api_transitions()
            .into_iter()
            .map(|(t, up)| (t, format!("API {}", if up { "up" } else { "DOWN" })))
            .collect();
        let mut prev = NodeSample::default();
        for (t, s) in self.node_samples() {
            let diff = |what: &str, a: &BTreeSet<String>, b: &BTreeSet<String>| {
                let mut v = Vec::new();
                for x in b.difference(a) {
                    v.push(format!("{what} {x}: yes"));
                }
                for x in a.difference(b) {
                    v.push(format!("{what} {x}: no"));
                }
                v
            };
            let mut changes = diff("copy sandbox", &prev.copies, &s.copies);
            changes.extend(diff("parent sandbox", &prev.parents, &s.parents));
            changes.extend(diff(
                "apiserver container running in",
                &prev.running,
                &s.running,
            ));
            let (pa, sa): (BTreeSet<String>, BTreeSet<String>) = (
                prev.active.iter().cloned().collect(),
                s.active.iter().cloned().collect(),
            );
            changes.extend(diff("checkpoint active for", &pa, &sa));
            for c in changes {
                lines.push((t, c));
            }
            prev = s;
        }
        lines.sort_by(|a, b| a.0.total_cmp(&b.0));
        eprintln!("---- timeline selfhosted/{scenario} (seconds since the scenario's start) ----");
        for (t, l) in lines {
            eprintln!("{:8.2}  {l}", t - self.t0);
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_timeline(&format!("{} (failed)", self.scenario));
        }
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Polls /readyz every 100 ms with the admin credentials and records each transition.
fn poll_api(stop: &AtomicBool, out: &Mutex<Vec<(f64, bool)>>) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        let Ok(client) = kube::Client::try_default().await else {
            return;
        };
        while !stop.load(Ordering::Relaxed) {
            let started = std::time::Instant::now();
            let up = match http::Request::get("/readyz").body(Vec::new()) {
                Ok(req) => matches!(
                    tokio::time::timeout(Duration::from_millis(900), client.request_text(req))
                        .await,
                    Ok(Ok(_))
                ),
                Err(_) => false,
            };
            {
                let mut v = out.lock().expect("api samples");
                if v.last().is_none_or(|(_, last)| *last != up) {
                    v.push((epoch(), up));
                }
            }
            let spent = started.elapsed();
            if spent < Duration::from_millis(100) {
                tokio::time::sleep(Duration::from_millis(100) - spent).await;
            }
        }
    });
}

fn sample_node(
    crictl: &Path,
    endpoint: &str,
    manifests: &Path,
    ns: &str,
    ds: &str,
    node_name: &str,
) -> Option<NodeSample> {
    let ep = format!("--runtime-endpoint={endpoint}");
    let pods: serde_json::Value = serde_json::from_str(
        &run(
            crictl,
            &[&ep, "--timeout=2s", "pods", "--namespace", ns, "-o", "json"],
        )
        .ok()?,
    )
    .ok()?;
    let containers: serde_json::Value = serde_json::from_str(
        &run(
            crictl,
            &[
                &ep,
                "--timeout=2s",
                "ps",
                "-a",
                "--namespace",
                ns,
                "--name",
                "^kube-apiserver$",
                "-o",
                "json",
            ],
        )
        .ok()?,
    )
    .ok()?;
    let mut s = NodeSample::default();
    let mut names = std::collections::BTreeMap::new();
    let prefix = format!("{ds}-");
    let copy_suffix = format!("-{node_name}");
    for p in pods["items"].as_array()? {
        let name = p["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !name.starts_with(&prefix) {
            continue;
        }
        names.insert(
            p["id"].as_str().unwrap_or_default().to_string(),
            name.clone(),
        );
        if p["state"] != "SANDBOX_READY" {
            continue;
        }
        if name.ends_with(&copy_suffix) {
            s.copies.insert(name);
        } else {
            s.parents.insert(name);
        }
    }
    for c in containers["containers"].as_array()? {
        if c["state"] == "CONTAINER_RUNNING"
            && let Some(pod) = names.get(c["podSandboxId"].as_str().unwrap_or_default())
        {
            s.running.insert(pod.clone());
        }
    }
    s.active = manifests_of(manifests, ns, ds);
    Some(s)
}

/// Waits until the DaemonSet's pod serves: one Ready pod, no copy active or running, API up.
async fn wait_parent_serves(
    sh: &SelfHosted,
    obs: &Observer,
    what: &str,
    deadline: Duration,
) -> ApiPod {
    wait_for(what, deadline, || async {
        if !obs.api_up() || !sh.active_copies().is_empty() {
            return None;
        }
        let pod = sh.serving_pod()?;
        let last = obs.node_samples().last().map(|(_, s)| s.clone())?;
        (last.copies.is_empty() && last.running.contains(&pod.name)).then_some(pod)
    })
    .await
}

/// Common start of every scenario: the node is healthy, the DaemonSet's pod serves and has its
/// checkpoint.
async fn healthy_start(sh: &SelfHosted, scenario: &str) -> ApiPod {
    wait_for(
        &format!("{scenario}: the node starts healthy"),
        Duration::from_secs(120),
        || async { sh.problems().is_empty().then_some(()) },
    )
    .await;
    sh.serving_pod().expect("a serving pod")
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// Reboot: every sandbox gone, kubelet restarted, no API anywhere. The agent's own static copy
/// starts, activates the API server's checkpoint, the API answers; the kubelet then starts the
/// DaemonSet's pod, the copy is deactivated, and the pod serves.
#[tokio::test]
async fn selfhosted_reboot_the_checkpoint_brings_the_api_back() {
    let Some(sh) = SelfHosted::from_env() else {
        return;
    };
    let _recover = Recover(&sh);
    let before = healthy_start(&sh, "reboot").await;
    let obs = Observer::start(&sh, "reboot");
    assert!(obs.api_up(), "the API answers before the reboot");

    let reboot_started = epoch();
    let log = sh.sh(&["reboot-runtime"]);
    let kubelet_start = log
        .lines()
        .find_map(|l| l.split("KUBELET_START_EPOCH=").nth(1))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("node.sh reboot-runtime says when the kubelet started");

    let copy_active = wait_for("checkpoint of the API server active", API_BACK, || async {
        obs.first_node(reboot_started, |s| s.active.contains(&before.name))
    })
    .await;
    let api_back = wait_for(
        "the API answers again (from the copy)",
        API_BACK,
        || async { obs.first_api(kubelet_start, true) },
    )
    .await;
    let served_by =
        wait_parent_serves(&sh, &obs, "the DaemonSet's pod serves again", PARENT_BACK).await;
    let parent_serves = epoch();
    let (fight, fight_at) = obs.longest_fight();
    obs.print_timeline("reboot");

    let down = obs.longest_outage();
    figure("reboot", "api_down_total_s", obs.total_down(), "s");
    figure("reboot", "api_down_longest_s", down, "s");
    figure(
        "reboot",
        "kubelet_start_to_checkpoint_active_s",
        copy_active - kubelet_start,
        "s",
    );
    figure(
        "reboot",
        "kubelet_start_to_api_answers_s",
        api_back - kubelet_start,
        "s",
    );
    figure(
        "reboot",
        "kubelet_start_to_parent_serves_s",
        parent_serves - kubelet_start,
        "s",
    );
    figure("reboot", "longest_port_fight_s", fight, "s");
    if let Some(at) = fight_at {
        figure(
            "reboot",
            "port_fight_started_after_kubelet_start_s",
            at - kubelet_start,
            "s",
        );
    }
    assert_eq!(
        served_by.name, before.name,
        "the same DaemonSet pod, restarted by the kubelet"
    );
    assert!(
        copy_active - kubelet_start < 30.0,
        "the checkpoint is activated within seconds of the kubelet's start"
    );
    assert!(
        fight < YIELD_BOUND,
        "the copy yields port 6443 within {YIELD_BOUND}s of the parent's start, not {fight:.1}s"
    );
    sh.assert_clean("reboot").await;
}

/// Delete: `kubectl delete pod` of the API server's pod. The API comes back from the
/// checkpoint, the DaemonSet's new pod replaces it, the deleted pod's checkpoint is gone after the
/// grace period, nothing is left.
#[tokio::test]
async fn selfhosted_delete_the_new_pod_replaces_the_checkpoint() {
    let Some(sh) = SelfHosted::from_env() else {
        return;
    };
    let _recover = Recover(&sh);
    let before = healthy_start(&sh, "delete").await;
    let obs = Observer::start(&sh, "delete");
    let t = epoch();
    sh.kubectl(&[
        "-n",
        &sh.namespace,
        "delete",
        "pod",
        &before.name,
        "--wait=false",
    ])
    .expect("kubectl delete pod");
    replacement("delete", &sh, &obs, &before, t).await;
}

/// Rolling update: a changed flag. Same as delete; and the old copy does not hold port 6443
/// once the new pod has started (seconds, not the grace period).
#[tokio::test]
async fn selfhosted_rolling_update_the_old_copy_yields() {
    let Some(sh) = SelfHosted::from_env() else {
        return;
    };
    let _recover = Recover(&sh);
    let before = healthy_start(&sh, "rolling-update").await;
    let obs = Observer::start(&sh, "rolling-update");
    let t = epoch();
    // A harmless flag change: more verbose logs (flips between --v=1 and --v=2 on reruns).
    let args = sh
        .kubectl(&[
            "-n",
            &sh.namespace,
            "get",
            "daemonset",
            &sh.daemonset,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].args}",
        ])
        .expect("DaemonSet args");
    let args: Vec<String> = serde_json::from_str(&args).expect("args JSON");
    let at = args
        .iter()
        .position(|a| a.starts_with("--v="))
        .expect("a --v flag");
    let next = if args[at] == "--v=2" {
        "--v=1"
    } else {
        "--v=2"
    };
    sh.patch_daemonset(&serde_json::json!([{
        "op": "replace",
        "path": format!("/spec/template/spec/containers/0/args/{at}"),
        "value": next,
    }]));
    let after = replacement("rolling-update", &sh, &obs, &before, t).await;
    let args = sh
        .kubectl(&[
            "-n",
            &sh.namespace,
            "get",
            "pod",
            &after.name,
            "-o",
            "jsonpath={.spec.containers[0].args}",
        ])
        .expect("pod args");
    assert!(args.contains(next), "the new pod runs with {next}: {args}");
}

/// What delete and rolling update have in common: the old pod goes, the API comes back from its
/// checkpoint, the new pod starts, the copy yields at once, the new pod serves, and the old
/// checkpoint is removed after the grace period.
async fn replacement(
    scenario: &str,
    sh: &SelfHosted,
    obs: &Observer,
    before: &ApiPod,
    t: f64,
) -> ApiPod {
    // The DaemonSet controller decides when the old pod goes; after earlier outages its work
    // queue backs off for a minute or more, so this waits as long as for a new pod.
    let went_down = wait_for(
        "the API goes down with the old pod",
        PARENT_BACK,
        || async { obs.first_api(t, false) },
    )
    .await;
    let copy_active = wait_for(
        "the old pod's checkpoint is activated",
        API_BACK,
        || async { obs.first_node(t, |s| s.active.contains(&before.name)) },
    )
    .await;
    let back = wait_for("the API answers again", API_BACK, || async {
        obs.first_api(went_down, true)
    })
    .await;
    let new_started = wait_for("the DaemonSet's new pod starts", PARENT_BACK, || async {
        obs.first_node(t, |s| s.parents.iter().any(|p| *p != before.name))
    })
    .await;
    let after = wait_parent_serves(sh, obs, "the new pod serves", PARENT_BACK).await;
    let serves = epoch();
    let copy_gone = obs
        .first_node(new_started, |s| s.copies.is_empty())
        .unwrap_or(serves);
    let (fight, _) = obs.longest_fight();
    obs.print_timeline(scenario);
    figure(scenario, "api_down_total_s", obs.total_down(), "s");
    figure(scenario, "api_down_longest_s", obs.longest_outage(), "s");
    figure(
        scenario,
        "api_down_until_checkpoint_serves_s",
        back - went_down,
        "s",
    );
    figure(
        scenario,
        "old_pod_gone_to_checkpoint_active_s",
        copy_active - went_down,
        "s",
    );
    figure(
        scenario,
        "new_pod_started_to_copy_gone_s",
        copy_gone - new_started,
        "s",
    );
    figure(scenario, "longest_port_fight_s", fight, "s");
    figure(scenario, "change_to_new_pod_serving_s", serves - t, "s");
    assert_ne!(after.name, before.name, "a new pod serves");
    assert!(
        copy_gone - new_started < YIELD_BOUND,
        "{scenario}: the old copy held port 6443 {:.1}s after the new pod started (bound {YIELD_BOUND}s, grace {:?})",
        copy_gone - new_started,
        sh.grace
    );
    let removed = wait_for(
        "the old pod's checkpoint is removed after the grace period",
        sh.grace + Duration::from_secs(60),
        || async { (!sh.inactive_file(&before.name).exists()).then(epoch) },
    )
    .await;
    figure(
        scenario,
        "change_to_old_checkpoint_removed_s",
        removed - t,
        "s",
    );
    sh.assert_clean(scenario).await;
    after
}

/// An update took the old pod, and with it the API; its checkpoint brings the API back. Waits for
/// both and prints the gap.
async fn api_back_from_checkpoint(obs: &Observer, scenario: &str, t: f64) {
    // The DaemonSet controller decides when the old pod goes; after earlier outages its work
    // queue backs off for a minute or more, so this waits as long as for a new pod.
    let went_down = wait_for(
        "the API goes down with the old pod",
        PARENT_BACK,
        || async { obs.first_api(t, false) },
    )
    .await;
    let back = wait_for(
        "the API answers from the old checkpoint",
        API_BACK,
        || async { obs.first_api(went_down, true) },
    )
    .await;
    figure(
        scenario,
        "api_down_until_checkpoint_serves_s",
        back - went_down,
        "s",
    );
}

/// Bad update: the new image does not exist. The old checkpoint keeps serving the API (the
/// successor never starts, so it does not yield); a rollback recovers.
#[tokio::test]
async fn selfhosted_bad_image_keeps_the_old_checkpoint_serving() {
    let Some(sh) = SelfHosted::from_env() else {
        return;
    };
    let _recover = Recover(&sh);
    let before = healthy_start(&sh, "bad-update").await;
    let obs = Observer::start(&sh, "bad-update");
    let t = epoch();
    sh.patch_daemonset(&serde_json::json!([{
        "op": "replace",
        "path": "/spec/template/spec/containers/0/image",
        "value": "localhost/kube-apiserver:does-not-exist",
    }]));
    api_back_from_checkpoint(&obs, "bad-update", t).await;
    wait_for(
        "the bad pod exists and waits for its image",
        PARENT_BACK,
        || async {
            let pods = sh.api_pods()?;
            pods.iter()
                .any(|p| p.name != before.name && !p.deleting && !p.ready)
                .then_some(())
        },
    )
    .await;
    // Longer than the grace period: the old checkpoint must neither yield to a successor that
    // never started nor be removed as "parent gone" while it is the only API server.
    let hold = sh.grace + Duration::from_secs(15);
    let hold_from = epoch();
    let started = std::time::Instant::now();
    while started.elapsed() < hold {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let outages_in_hold: f64 = obs
        .outages()
        .iter()
        .filter(|(_, end)| *end > hold_from)
        .map(|(a, b)| b - a.max(hold_from))
        .sum();
    figure("bad-update", "api_down_during_hold_s", outages_in_hold, "s");
    figure("bad-update", "hold_s", hold.as_secs_f64(), "s");
    let available = outages_in_hold < 1.0;
    let undo_at = epoch();
    if available {
        sh.rollout_undo().expect("kubectl rollout undo");
    }
    assert!(
        available,
        "the API went away for {outages_in_hold:.1}s while only the old checkpoint could serve it"
    );
    let after = wait_parent_serves(&sh, &obs, "the rolled-back pod serves", PARENT_BACK).await;
    figure(
        "bad-update",
        "undo_to_parent_serves_s",
        epoch() - undo_at,
        "s",
    );
    obs.print_timeline("bad-update");
    assert_ne!(after.name, before.name);
    sh.assert_clean("bad-update").await;
}

/// Bad configuration: the new pod starts but its API server exits at once (unknown flag). The
/// old copy yields to it, the new pod never becomes Ready, and within the fallback timeout the old
/// copy serves again, so `kubectl rollout undo` works; afterwards the DaemonSet's pod serves alone.
#[tokio::test]
async fn selfhosted_bad_flag_falls_back_to_the_old_checkpoint() {
    let Some(sh) = SelfHosted::from_env() else {
        return;
    };
    let _recover = Recover(&sh);
    let fallback = sh.fallback.unwrap_or_else(|| {
        panic!("the installed agent has no --fallback-timeout (SPEC §4 Fallback): this scenario needs it")
    });
    let before = healthy_start(&sh, "bad-config").await;
    let obs = Observer::start(&sh, "bad-config");
    let t = epoch();
    sh.patch_daemonset(&serde_json::json!([{
        "op": "add",
        "path": "/spec/template/spec/containers/0/args/-",
        "value": "--no-such-flag=1",
    }]));
    api_back_from_checkpoint(&obs, "bad-config", t).await;
    let new_started = wait_for("the bad pod starts", PARENT_BACK, || async {
        obs.first_node(t, |s| s.parents.iter().any(|p| *p != before.name))
    })
    .await;
    let yielded = wait_for("the old copy yields to the new pod", API_BACK, || async {
        obs.first_node(new_started, |s| s.copies.is_empty())
    })
    .await;
    let fell_back = wait_for(
        "the old copy serves again (fallback)",
        fallback + API_BACK,
        || async {
            let active = obs.first_node(yielded, |s| !s.copies.is_empty())?;
            obs.first_api(active, true)
        },
    )
    .await;
    figure(
        "bad-config",
        "new_pod_started_to_copy_gone_s",
        yielded - new_started,
        "s",
    );
    figure(
        "bad-config",
        "copy_gone_to_fallback_serves_s",
        fell_back - yielded,
        "s",
    );
    assert!(
        sh.api_pods()
            .unwrap_or_default()
            .iter()
            .all(|p| p.name == before.name || !p.ready),
        "the bad pod never becomes Ready"
    );
    let undo_at = epoch();
    sh.rollout_undo()
        .expect("kubectl rollout undo through the fallback copy");
    let after =
        wait_parent_serves(&sh, &obs, "the rolled-back pod serves alone", PARENT_BACK).await;
    figure(
        "bad-config",
        "undo_to_parent_serves_s",
        epoch() - undo_at,
        "s",
    );
    figure("bad-config", "api_down_total_s", obs.total_down(), "s");
    obs.print_timeline("bad-config");
    assert_ne!(after.name, before.name);
    sh.assert_clean("bad-config").await;
}

/// Agent upgrade: `helm upgrade` of the agent (a changed value) while the API server is
/// self-hosted. The new agent pod takes the lock, the old static copy removes only itself, and
/// the API server is not touched.
#[tokio::test]
async fn selfhosted_agent_upgrade_leaves_the_api_server_alone() {
    let Some(sh) = SelfHosted::from_env() else {
        return;
    };
    let _recover = Recover(&sh);
    let before = healthy_start(&sh, "agent-upgrade").await;
    let agent_pods = |sh: &SelfHosted| -> Option<Vec<(String, bool)>> {
        let out = sh
            .kubectl(&[
                "-n",
                &sh.namespace,
                "get",
                "pods",
                "-l",
                &format!("app.kubernetes.io/instance={}", sh.release),
                "-o",
                "json",
            ])
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        Some(
            v["items"]
                .as_array()?
                .iter()
                .filter(|p| p["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_null())
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .map(|p| {
                    let ready = p["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    });
                    (
                        p["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        ready,
                    )
                })
                .collect(),
        )
    };
    // Its probes are exec probes, which need the runtime: after a scenario that stopped the
    // runtime, the pod is Ready again within a probe period or two.
    let old_agent = wait_for(
        "one Ready agent pod before the upgrade",
        Duration::from_secs(60),
        || async {
            match agent_pods(&sh)?.as_slice() {
                [(name, true)] => Some(name.clone()),
                _ => None,
            }
        },
    )
    .await;
    let old_copy = sh
        .node
        .manifest_dir
        .join(format!("{}-{old_agent}.json", sh.namespace));
    assert!(
        old_copy.exists(),
        "the old agent's own checkpoint is active"
    );
    let obs = Observer::start(&sh, "agent-upgrade");
    let t = epoch();
    let values = sh.values.to_string_lossy().into_owned();
    let chart = sh.chart.to_string_lossy().into_owned();
    let stamp = format!("podAnnotations.e2e-upgrade={}", t as u64);
    sh.helm(&[
        "upgrade",
        &sh.release,
        &chart,
        "--namespace",
        &sh.namespace,
        "--values",
        &values,
        "--set-string",
        &stamp,
        "--wait",
        "--timeout",
        "120s",
    ])
    .unwrap_or_else(|e| panic!("helm upgrade: {e}"));
    let new_agent = wait_for(
        "the new agent pod is Ready",
        Duration::from_secs(120),
        || async {
            let pods = agent_pods(&sh)?;
            match pods.as_slice() {
                [(name, true)] if *name != old_agent => Some(name.clone()),
                _ => None,
            }
        },
    )
    .await;
    let new_copy = sh
        .node
        .manifest_dir
        .join(format!("{}-{new_agent}.json", sh.namespace));
    let old_files = [
        old_copy.clone(),
        sh.inactive_file(&old_agent),
        sh.secret_dir.join(&sh.namespace).join(&old_agent),
        sh.configmap_dir.join(&sh.namespace).join(&old_agent),
    ];
    let old_gone = wait_for(
        "the old static copy removed only itself",
        sh.grace + Duration::from_secs(90),
        || async { (old_files.iter().all(|f| !f.exists()) && new_copy.exists()).then(epoch) },
    )
    .await;
    figure(
        "agent-upgrade",
        "upgrade_to_old_copy_removed_s",
        old_gone - t,
        "s",
    );
    figure("agent-upgrade", "api_down_total_s", obs.total_down(), "s");
    obs.print_timeline("agent-upgrade");
    let now = sh.serving_pod().expect("the API server pod still serves");
    assert_eq!(
        now.name, before.name,
        "the API server's pod was not replaced"
    );
    assert_eq!(now.restarts, before.restarts, "nor restarted");
    assert!(
        sh.inactive_file(&before.name).exists(),
        "the API server's checkpoint is kept"
    );
    assert!(
        obs.total_down() < 0.5,
        "the API stayed up during the agent's upgrade"
    );
    sh.assert_clean("agent-upgrade").await;
}
