//! `cri::CriClient` against a real containerd (Debian's 1.6 + runc), started by the test itself
//! with everything under a temporary directory.
//!
//! containerd runs in a private mount namespace whose `/run` is a directory of the tempdir, so the
//! paths it hard-codes (`/run/containerd/{s,fifo,runc}`) and its overlay mounts never reach the
//! host and vanish with it. Pods get a cgroup parent unique to the test run, which is how the
//! cleanup finds (by pid) anything a failed test left running. See NODE-TEST-ENV.md §3-§5 for why
//! the config looks the way it does.
//!
//! Needs root, `containerd`, `runc` and `unshare`; the sandbox test also needs `ctr`, `gcc` and
//! `python3` (it builds the pause image from `tests/node/`). When something is missing the tests
//! say so and pass, unless `POD_CHECKPOINTER_REQUIRE_CONTAINERD=1` (CI) makes that a failure.

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pod_checkpointer::cri::{CriClient, CriError, DEFAULT_TIMEOUT, Sandbox, proto};
use pod_checkpointer::model::PodKey;

/// How long containerd may take to serve its socket (0.14 s when the machine is idle; CI shares
/// two cores with compilers).
const START_DEADLINE: Duration = Duration::from_secs(30);
/// Deadline for slow runtime calls (RunPodSandbox, Stop/Remove) on a loaded machine.
const SLOW_CALL: Duration = Duration::from_secs(60);
/// Must match the locally imported pause image, or containerd would try to pull it.
const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.6";

// ---------------------------------------------------------------------------------------------
// Environment

/// `Some(reason)` when this machine cannot run the test.
fn missing(tools: &[&str]) -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let absent: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !std::env::split_paths(&path).any(|d| d.join(t).is_file()))
        .collect();
    (!absent.is_empty()).then(|| format!("not installed: {}", absent.join(", ")))
}

/// Skips (passes) the test with a message, or fails it when CI demands a real runtime.
fn skip_or_fail(reason: &str) {
    if std::env::var("POD_CHECKPOINTER_REQUIRE_CONTAINERD").as_deref() == Ok("1") {
        panic!("containerd test cannot run: {reason}");
    }
    eprintln!("SKIPPED: containerd test cannot run: {reason}");
}

/// Unique per test run: names the cgroup parent and pod UIDs, so cleanup touches only our own.
fn run_id(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("podckpt-{test}-{}-{nanos}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// A containerd of our own

/// A running containerd and everything needed to leave the machine as it was. Dropping it kills
/// what the test started, even when an assertion failed half-way.
struct Containerd {
    dir: tempfile::TempDir,
    run_id: String,
    child: Option<Child>,
}

impl Containerd {
    fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd/containerd.sock")
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The cgroup parent of our pods (cgroupfs driver: a plain path in every hierarchy).
    fn cgroup_parent(&self) -> String {
        format!("/{}", self.run_id)
    }

    /// Writes the config and starts containerd; does not wait for it.
    fn start(test: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("podckpt-cri-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path();
        for d in [
            "containerd/root",
            "containerd/state",
            "containerd/opt",
            "run",
            "cni/net.d",
            "logs",
        ] {
            fs::create_dir_all(root.join(d)).expect("create state dirs");
        }
        // The harness's containerd config (tests/node/containerd.toml.in), on this test's dirs.
        let config = include_str!("node/containerd.toml.in")
            .replace("@DIR@", &root.display().to_string())
            .replace("@PAUSE_IMAGE@", PAUSE_IMAGE);
        fs::write(root.join("containerd/config.toml"), config).expect("write config");
        let mut me = Self {
            dir,
            run_id: run_id(test),
            child: None,
        };
        me.spawn();
        me
    }

    /// (Re)starts the daemon on the same directories.
    fn spawn(&mut self) {
        let root = self.dir.path();
        let log = File::options()
            .create(true)
            .append(true)
            .open(root.join("containerd.log"))
            .expect("open containerd log");
        let log_err = log.try_clone().expect("clone log handle");
        let mut cmd = Command::new("unshare");
        // unshare execs sh, which execs containerd: the child's pid is containerd's.
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$1" /run && exec containerd --config "$2""#)
            .arg("sh")
            .arg(root.join("run"))
            .arg(root.join("containerd/config.toml"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // SAFETY: prctl is async-signal-safe. If the test process dies without running Drop,
        // the kernel kills containerd (the flag survives the execs: no setuid binaries involved).
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        self.child = Some(cmd.spawn().expect("spawn containerd"));
    }

    /// Polls `client` until the runtime answers, failing early if containerd exits.
    async fn wait_ready(&mut self, client: &CriClient) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let last = match client.running().await {
                Ok(_) => return,
                Err(e) => e,
            };
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "containerd exited with {status} before serving:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not serve CRI within {START_DEADLINE:?} (last error: {last}):\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then SIGKILL after a deadline; always reaps.
    fn stop_daemon(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: plain kill(2) on our own child, which we have not reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Processes still working for this test: members of our pod cgroups, and shims whose command
    /// line names our socket (they outlive containerd by design).
    fn leftover_pids(&self) -> Vec<libc::pid_t> {
        let mut pids: Vec<libc::pid_t> = Vec::new();
        for procs in cgroup_dirs(&self.cgroup_parent())
            .iter()
            .map(|d| d.join("cgroup.procs"))
        {
            if let Ok(text) = fs::read_to_string(procs) {
                pids.extend(
                    text.lines()
                        .filter_map(|l| l.trim().parse::<libc::pid_t>().ok()),
                );
            }
        }
        let socket = self.socket().display().to_string();
        if let Ok(entries) = fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                if let Ok(cmdline) = fs::read(entry.path().join("cmdline"))
                    && String::from_utf8_lossy(&cmdline).contains(&socket)
                {
                    pids.push(pid);
                }
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

/// Every directory at or under `/sys/fs/cgroup/<hierarchy><parent>`, deepest first.
fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    let mut out = Vec::new();
    if let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            let dir = h.path().join(parent.trim_start_matches('/'));
            if dir.is_dir() {
                walk(&dir, &mut out);
            }
        }
    }
    out
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Pods first (their processes are not containerd's children), then the daemon, then shims.
        for pid in self.leftover_pids() {
            // SAFETY: plain kill(2); pids come from our own cgroups / our socket's shims.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        self.stop_daemon();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.leftover_pids();
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                eprintln!("WARNING: processes left behind by the containerd test: {left:?}");
                break;
            }
            for &pid in &left {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // runc leaves the empty pod cgroups; they are ours (unique name), remove them.
        for dir in cgroup_dirs(&self.cgroup_parent()) {
            let _ = fs::remove_dir(dir);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn empty_runtime_is_known_empty_and_a_missing_one_is_an_error() {
    if let Some(reason) = missing(&["containerd", "runc", "containerd-shim-runc-v2", "unshare"]) {
        return skip_or_fail(&reason);
    }
    let mut node = Containerd::start("empty");
    // Built before containerd serves: lazy connect, and the same client works once it is up.
    let client = CriClient::new(&node.endpoint(), DEFAULT_TIMEOUT).expect("client");
    node.wait_ready(&client).await;

    let running = client.running().await.expect("empty runtime answers");
    assert!(running.is_empty(), "fresh runtime runs {running:?}");
    let sandboxes = client.list_sandboxes().await.expect("ListPodSandbox");
    assert!(sandboxes.is_empty(), "{sandboxes:?}");

    // No runtime at all is an error, never "nothing runs".
    let absent = node.dir.path().join("absent.sock");
    let nobody = CriClient::new(absent.to_str().expect("utf-8 path"), DEFAULT_TIMEOUT)
        .expect("client builds lazily");
    let err = nobody
        .running()
        .await
        .expect_err("missing socket must not read as empty");
    let msg = err.to_string();
    assert!(matches!(err, CriError::Unavailable { .. }), "{msg}");
    assert!(msg.contains(&absent.display().to_string()), "{msg}");

    // The runtime restarting: errors while it is down, answers again on the same client.
    node.stop_daemon();
    let err = client
        .running()
        .await
        .expect_err("stopped runtime must not read as empty");
    assert!(err.to_string().contains(&node.endpoint()), "{err}");
    node.spawn();
    node.wait_ready(&client).await;
    assert!(client.running().await.expect("after restart").is_empty());
}

#[tokio::test]
async fn ready_sandbox_runs_until_stopped_and_removed() {
    let tools = [
        "containerd",
        "runc",
        "containerd-shim-runc-v2",
        "unshare",
        "ctr",
        "gcc",
        "python3",
    ];
    if let Some(reason) = missing(&tools) {
        return skip_or_fail(&reason);
    }
    let mut node = Containerd::start("sandbox");
    let img = node.dir.path().join("img");
    fs::create_dir_all(&img).expect("image dir");

    // Build and package the pause image while containerd starts.
    let node_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    run(Command::new("gcc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(img.join("pause"))
        .arg(node_dir.join("pause.c")));
    run(Command::new("python3")
        .arg(node_dir.join("mkimage.py"))
        .arg(img.join("images.tar"))
        .arg(format!(
            "{PAUSE_IMAGE}=/pause:{}@/pause",
            img.join("pause").display()
        )));

    let client = CriClient::new(&node.endpoint(), DEFAULT_TIMEOUT).expect("client");
    let slow = CriClient::new(&node.endpoint(), SLOW_CALL).expect("slow client");
    node.wait_ready(&client).await;
    run(Command::new("ctr")
        .arg("-a")
        .arg(node.socket())
        .args(["-n", "k8s.io", "image", "import"])
        .arg(img.join("images.tar")));

    let key = PodKey::new("kube-system", "kube-apiserver");
    let uid = format!("{}-uid", node.run_id);
    let request = proto::RunPodSandboxRequest {
        config: Some(proto::PodSandboxConfig {
            metadata: Some(proto::PodSandboxMetadata {
                name: key.name.clone(),
                uid: uid.clone(),
                namespace: key.namespace.clone(),
                attempt: 0,
            }),
            // Must stay empty for hostNetwork: no private UTS namespace to set it in.
            hostname: String::new(),
            log_directory: node.dir.path().join("logs").display().to_string(),
            labels: HashMap::from([("io.kubernetes.pod.uid".to_owned(), uid.clone())]),
            linux: Some(proto::LinuxPodSandboxConfig {
                cgroup_parent: node.cgroup_parent(),
                security_context: Some(proto::LinuxSandboxSecurityContext {
                    namespace_options: Some(proto::NamespaceOption {
                        network: proto::NamespaceMode::Node.into(),
                        pid: proto::NamespaceMode::Container.into(),
                        ipc: proto::NamespaceMode::Pod.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        runtime_handler: String::new(),
    };
    let created: proto::RunPodSandboxResponse = match slow.unary("RunPodSandbox", request).await {
        Ok(r) => r,
        Err(e) => panic!("RunPodSandbox: {e}\n{}", node.log()),
    };
    let id = created.pod_sandbox_id;

    // Given a READY sandbox, the pod runs.
    let running = client.running().await.expect("running");
    assert!(running.contains(&key), "{running:?}");
    let sandboxes = client.list_sandboxes().await.expect("list");
    assert_eq!(
        sandboxes,
        vec![Sandbox {
            id: id.clone(),
            key: key.clone(),
            uid: uid.clone(),
            ready: true
        }]
    );

    // When it is stopped (what a crash or a node shutdown leaves), the pod no longer runs, though
    // the runtime still lists its sandbox.
    let _: proto::StopPodSandboxResponse = slow
        .unary(
            "StopPodSandbox",
            proto::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            },
        )
        .await
        .expect("StopPodSandbox");
    assert!(client.running().await.expect("running").is_empty());
    let sandboxes = client.list_sandboxes().await.expect("list");
    assert!(sandboxes.len() == 1 && !sandboxes[0].ready, "{sandboxes:?}");

    // Then removed (a reboot): gone entirely. Stop is idempotent, so the helper's stop is fine.
    slow.stop_and_remove_sandbox(&id)
        .await
        .expect("stop and remove");
    assert!(client.running().await.expect("running").is_empty());
    assert!(client.list_sandboxes().await.expect("list").is_empty());
}

/// Runs a helper command to completion, failing the test with its output.
fn run(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
