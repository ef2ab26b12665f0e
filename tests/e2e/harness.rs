//! Test-side handles on the real node brought up by `tests/node/node.sh`: the API server, the
//! runtime, the kubelet's static pod directory, and the agent binary run as a child process.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, PostParams};
use pod_checkpointer::cri::CriClient;
use pod_checkpointer::model::PodKey;

/// Everything the tests need to know about the node, from `node.sh env`.
pub struct Node {
    pub name: String,
    pub manifest_dir: PathBuf,
    pub cri_endpoint: String,
    pub kubeconfig: PathBuf,
    pub busybox: String,
    node_sh: PathBuf,
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the end-to-end tests through `make test` (hack/test-all.sh), which brings the node up")
    })
}

impl Node {
    pub fn from_env() -> Self {
        Self {
            name: env("NODE_NAME"),
            manifest_dir: PathBuf::from(env("MANIFEST_DIR")),
            cri_endpoint: env("CRI_ENDPOINT"),
            kubeconfig: PathBuf::from(env("KUBECONFIG")),
            busybox: env("BUSYBOX_IMAGE"),
            node_sh: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node/node.sh"),
        }
    }

    /// Runs a `node.sh` command (stop-apiserver, reboot-runtime, ...) and waits for it.
    pub fn sh(&self, args: &[&str]) {
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(&self.node_sh)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running node.sh");
        assert!(
            out.status.success(),
            "node.sh {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "[node] {} took {:.1}s",
            args.join(" "),
            started.elapsed().as_secs_f64()
        );
    }

    /// Stops the API server until the returned guard is dropped or [`ApiOutage::end`]ed, so a
    /// failing scenario never leaves the node without one for the next.
    pub fn stop_apiserver(&self) -> ApiOutage<'_> {
        self.sh(&["stop-apiserver"]);
        ApiOutage {
            node: self,
            ended: false,
        }
    }

    pub async fn client(&self) -> Client {
        Client::try_default()
            .await
            .expect("kube client from KUBECONFIG")
    }

    pub fn cri(&self) -> CriClient {
        CriClient::new(&self.cri_endpoint, Duration::from_secs(5)).expect("CRI client")
    }

    /// Whether the runtime has a READY sandbox for this pod name (e.g. a static copy).
    pub async fn sandbox_ready(&self, key: &PodKey) -> bool {
        self.cri()
            .list_sandboxes()
            .await
            .map(|s| s.iter().any(|s| &s.key == key && s.ready))
            .unwrap_or(false)
    }

    pub fn active_manifest(&self, key: &PodKey) -> PathBuf {
        self.manifest_dir.join(key.manifest_file_name())
    }
}

/// An API server outage in progress.
pub struct ApiOutage<'a> {
    node: &'a Node,
    ended: bool,
}

impl ApiOutage<'_> {
    /// Starts the API server again (and waits until it is ready).
    pub fn end(mut self) {
        self.ended = true;
        self.node.sh(&["start-apiserver"]);
    }
}

impl Drop for ApiOutage<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.node.sh(&["start-apiserver"]);
        }
    }
}

/// Polls `check` every 200 ms until it yields a value or `deadline` passes; panics naming what
/// it waited for. Every wait in these tests goes through here: no fixed sleeps.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            eprintln!("[wait] {what}: {:.1}s", started.elapsed().as_secs_f64());
            return v;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asserts `check` holds on every poll for the whole `period` (for "nothing happens" claims).
pub async fn holds_for<F, Fut>(what: &str, period: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < period {
        assert!(
            check().await,
            "stopped holding after {:?}: {what}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A namespace of one scenario, deleted when the scenario ends.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    pub async fn create(node: &Node, prefix: &str) -> Self {
        let name = format!("{prefix}-{}", std::process::id() % 100_000);
        let client = node.client().await;
        let api: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
            .expect("namespace");
        let _ = api.create(&PostParams::default(), &ns).await;
        // No controller-manager publishes the default ServiceAccount or root CA fast enough for
        // us: the harness does it.
        node.sh(&["namespace", &name]);
        Self { name, client }
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    pub fn key(&self, pod: &str) -> PodKey {
        PodKey::new(&self.name, pod)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Drop cannot await, and the test's client lives on the runtime this Drop blocks: ask
        // kubectl, and do not wait for the namespace controller to finish.
        let _ = Command::new("kubectl")
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
    }
}

/// The agent binary, run on the host against the real node, with its own directories.
pub struct Agent {
    child: Option<Child>,
    pub root: tempfile::TempDir,
    pub admin: String,
    log: PathBuf,
}

/// What to run the agent with beyond the defaults.
pub struct AgentOptions<'a> {
    pub namespaces: &'a [&'a str],
    pub grace: &'a str,
    pub cri_endpoint: Option<&'a str>,
    pub kubeconfig: Option<&'a Path>,
}

impl Default for AgentOptions<'_> {
    fn default() -> Self {
        Self {
            namespaces: &[],
            grace: "3s",
            cri_endpoint: None,
            kubeconfig: None,
        }
    }
}

impl Agent {
    pub fn start(node: &Node, opts: AgentOptions<'_>) -> Self {
        let root = tempfile::Builder::new()
            .prefix("pc-agent-")
            .tempdir_in("/tmp")
            .expect("agent root");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let admin = format!("127.0.0.1:{port}");
        let log = root.path().join("agent.log");
        let log_file = std::fs::File::create(&log).expect("agent log");
        let kubeconfig = opts.kubeconfig.unwrap_or(&node.kubeconfig);
        let mut command = Command::new(env!("CARGO_BIN_EXE_pod-checkpointer"));
        // No namespace means every namespace, which the agent only takes when asked plainly.
        match opts.namespaces {
            [] => command.arg("--all-namespaces"),
            names => command.args(["--namespaces", &names.join(",")]),
        };
        let child = command
            .args(["--node-name", &node.name])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args([
                "--cri-endpoint",
                opts.cri_endpoint.unwrap_or(&node.cri_endpoint),
            ])
            .args(["--kubelet-url", "http://127.0.0.1:10255"])
            .args(["--poll-interval", "500ms", "--grace-period", opts.grace])
            .args([
                "--admin-addr",
                &admin,
                "--log-format",
                "json",
                "--log-level",
                "debug",
            ])
            .arg("--root")
            .arg(root.path())
            .arg("--manifest-dir")
            .arg(&node.manifest_dir)
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("starting the agent");
        Self {
            child: Some(child),
            root,
            admin,
            log,
        }
    }

    pub fn inactive_manifest(&self, key: &PodKey) -> PathBuf {
        self.root
            .path()
            .join("etc/kubernetes/inactive-manifests")
            .join(key.manifest_file_name())
    }

    pub fn secret_dir(&self, key: &PodKey) -> PathBuf {
        self.root
            .path()
            .join("etc/kubernetes/checkpoint-secrets")
            .join(&key.namespace)
            .join(&key.name)
    }

    pub fn configmap_dir(&self, key: &PodKey) -> PathBuf {
        self.root
            .path()
            .join("etc/kubernetes/checkpoint-configmaps")
            .join(&key.namespace)
            .join(&key.name)
    }

    /// The agent's log so far (JSON lines).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET on the admin server; None when it does not answer.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(&self.admin).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        let status = body.split_whitespace().nth(1)?.parse().ok()?;
        let text = body.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((status, text))
    }

    /// The value of one sample on `/metrics`, e.g. `pod_checkpointer_api_reachable`.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics")?;
        text.lines()
            .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// SIGTERM, then wait (bounded); returns how it exited.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent still running");
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("agent did not exit within 10s of SIGTERM\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- agent log ----\n{}", self.log());
        }
    }
}

/// A hostNetwork busybox pod bound to the node, annotated as a parent when `checkpoint`.
pub fn busybox_pod(
    node: &Node,
    name: &str,
    checkpoint: bool,
    script: &str,
    extra: serde_json::Value,
) -> Pod {
    let mut pod = serde_json::json!({
        "metadata": {
            "name": name,
            "labels": {"app": name},
            "annotations": if checkpoint {
                serde_json::json!({"checkpointer.alpha.coreos.com/checkpoint": "true"})
            } else {
                serde_json::json!({})
            },
        },
        "spec": {
            "nodeName": node.name,
            "hostNetwork": true,
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{
                "name": "main",
                "image": node.busybox,
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", script],
            }],
        }
    });
    merge(&mut pod, extra);
    serde_json::from_value(pod).expect("valid pod")
}

/// Deep-merges `extra` into `base` (objects merge, everything else replaces).
fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
    match (base, extra) {
        (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

/// Whether the API reports the pod Running.
pub async fn pod_running(pods: &Api<Pod>, name: &str) -> bool {
    pods.get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|p| p.status)
        .and_then(|s| s.phase)
        .is_some_and(|p| p == "Running")
}

/// File mode bits of a path.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// An agent stopped by [`Agent::stop_for_restart`]: its command line, to start it again as it was.
pub struct StoppedAgent {
    program: std::ffi::OsString,
    args: Vec<std::ffi::OsString>,
}

impl Agent {
    /// SIGTERM, keeping the command line (read back from `/proc`, so it is exactly what
    /// [`Agent::start`] ran) for [`Agent::start_again`]: same directories, admin port and log.
    pub fn stop_for_restart(&mut self) -> StoppedAgent {
        use std::os::unix::ffi::OsStringExt;
        let pid = self.child.as_ref().expect("agent still running").id();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("agent command line");
        let mut words = cmdline
            .split(|b| *b == 0)
            .filter(|w| !w.is_empty())
            .map(|w| std::ffi::OsString::from_vec(w.to_vec()));
        let program = words.next().expect("agent program");
        let args = words.collect();
        let status = self.stop();
        assert!(status.success(), "SIGTERM exits 0, got {status:?}");
        StoppedAgent { program, args }
    }

    /// Starts the stopped agent again, as a supervisor or a reboot would; its lines are appended
    /// to the same log. Returns when the process was spawned, for timing what follows.
    pub fn start_again(&mut self, stopped: StoppedAgent) -> Instant {
        assert!(self.child.is_none(), "the agent is still running");
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let spawned = Instant::now();
        let child = Command::new(&stopped.program)
            .args(&stopped.args)
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting the agent again");
        self.child = Some(child);
        spawned
    }

    /// [`Agent::stop_for_restart`], then [`Agent::start_again`] at once.
    pub fn restart(&mut self) -> Instant {
        let stopped = self.stop_for_restart();
        self.start_again(stopped)
    }
}
