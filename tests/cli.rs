//! The binary as an operator meets it, without a cluster: `render`, `status`, and the agent
//! started with no API server and no runtime to talk to.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pod-checkpointer");

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: api
  namespace: kube-system
  annotations: {checkpointer.alpha.coreos.com/checkpoint: "true"}
spec:
  serviceAccountName: api
  imagePullSecrets: [{name: registry}]
  containers:
  - name: api
    image: example/api:1
    env:
    - name: PASSWORD
      valueFrom: {secretKeyRef: {name: creds, key: password}}
    volumeMounts: [{name: creds, mountPath: /creds}, {name: token, mountPath: /token}]
  volumes:
  - name: creds
    secret: {secretName: creds, defaultMode: 0400}
  - name: token
    projected:
      sources: [{serviceAccountToken: {path: token, expirationSeconds: 3600}}]
"#;

const OBJECTS: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: kube-system}
stringData: {password: hunter2}
"#;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write fixture");
    p
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run pod-checkpointer")
}

#[test]
fn render_prints_the_checkpoint_and_writes_it_under_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = write(dir.path(), "pod.yaml", POD);
    let objects = write(dir.path(), "objects.yaml", OBJECTS);
    let root = dir.path().join("node");
    let out = run(&[
        "render",
        "--pod",
        pod.to_str().expect("utf-8"),
        "--objects",
        objects.to_str().expect("utf-8"),
        "--root",
        root.to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON pod");
    assert_eq!(
        manifest["metadata"]["annotations"]["checkpointer.alpha.coreos.com/checkpoint-of"],
        "api"
    );
    assert!(manifest["spec"]["imagePullSecrets"].is_null());
    assert_eq!(
        manifest["spec"]["containers"][0]["env"][0]["value"],
        "hunter2"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("token"),
        "offline token is explained: {stderr}"
    );

    let written = root.join("etc/kubernetes/inactive-manifests/kube-system-api.json");
    assert_eq!(
        std::fs::read(&written).expect("manifest written"),
        out.stdout
    );
    let secret = std::fs::read_dir(root.join("etc/kubernetes/checkpoint-secrets/kube-system/api"))
        .expect("secret dir")
        .flatten()
        .map(|e| e.path().join("password"))
        .find(|p| p.exists())
        .expect("secret file");
    assert_eq!(std::fs::read_to_string(secret).expect("read"), "hunter2");

    let status = run(&["status", "--root", root.to_str().expect("utf-8")]);
    assert!(status.status.success());
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("kube-system/api (inactive)"), "{text}");
    assert!(!text.contains("hunter2"), "status never shows secret data");
}

#[test]
fn render_refuses_a_missing_secret_and_a_pvc_naming_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = write(dir.path(), "pod.yaml", POD);
    let out = run(&["render", "--pod", pod.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("creds"), "names the missing secret: {err}");

    let pvc = POD.replace(
        "secret: {secretName: creds, defaultMode: 0400}",
        "persistentVolumeClaim: {claimName: data}",
    );
    let pod = write(dir.path(), "pvc.yaml", &pvc);
    let objects = write(dir.path(), "objects.yaml", OBJECTS);
    let out = run(&[
        "render",
        "--pod",
        pod.to_str().expect("utf-8"),
        "--objects",
        objects.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unsupported_volume") && err.contains("creds"),
        "{err}"
    );
}

fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text))
}

/// With no API server and no runtime, the agent starts, reports the API as unreachable, logs the
/// problem once, and exits 0 on SIGTERM.
#[test]
fn agent_without_api_server_or_runtime_starts_reports_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    // An API server address nothing listens on (loopback only).
    let kubeconfig = write(
        dir.path(),
        "kubeconfig",
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}]\nusers: [{name: u, user: {token: x}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let log = dir.path().join("agent.log");
    let mut child = Command::new(BIN)
        .args([
            "--node-name",
            "n1",
            "--all-namespaces",
            "--kubeconfig",
            kubeconfig.to_str().expect("utf-8"),
        ])
        .args([
            "--cri-endpoint",
            &format!("unix://{}/none.sock", dir.path().display()),
        ])
        .args(["--admin-addr", &addr, "--poll-interval", "200ms", "--root"])
        .arg(dir.path().join("root"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start agent");

    let started = Instant::now();
    let metrics = loop {
        let m = get(&addr, "/metrics").map(|r| r.1).unwrap_or_default();
        if m.contains("pod_checkpointer_runtime_poll_errors_total 3")
            || started.elapsed() > Duration::from_secs(20)
        {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        metrics.contains("pod_checkpointer_api_reachable 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pod_checkpointer_runtime_poll_errors_total 3"),
        "{metrics}"
    );
    assert_eq!(get(&addr, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(
        get(&addr, "/readyz").map(|r| r.0),
        Some(503),
        "not ready before the first sync"
    );

    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit 0 on SIGTERM: {status:?}");
    let log = std::fs::read_to_string(&log).expect("log");
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(
        count("\"action\":\"api_unreachable\""),
        1,
        "logged once:\n{log}"
    );
    assert_eq!(
        count("\"action\":\"source_down\""),
        1,
        "logged once:\n{log}"
    );
}

/// `--help` groups the agent's flags by the part they configure.
#[test]
fn help_lists_the_flags_by_group() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    // Each section: a heading at the start of a line, then its indented flags.
    let section = |heading: &str| {
        let start = help
            .find(&format!("\n{heading}:\n"))
            .unwrap_or_else(|| panic!("no {heading} group:\n{help}"));
        let body = &help[start + heading.len() + 2..];
        let end = body
            .lines()
            .position(|l| !l.is_empty() && !l.starts_with(' '))
            .map_or(body.len(), |n| {
                body.lines().take(n).map(|l| l.len() + 1).sum()
            });
        body[..end].to_string()
    };
    for (heading, flags) in [
        (
            "Identity",
            &[
                "--node-name",
                "--pod-name",
                "--pod-namespace",
                "--namespaces",
                "--all-namespaces",
            ][..],
        ),
        ("API server", &["--kubeconfig"]),
        ("Container runtime", &["--cri-endpoint"]),
        (
            "Kubelet",
            &["--kubelet-url", "--kubelet-insecure-skip-tls-verify"],
        ),
        (
            "Timing",
            &["--poll-interval", "--grace-period", "--fallback-timeout"],
        ),
        ("Admin server", &["--admin-addr"]),
        ("Logging", &["--log-format", "--log-level"]),
        ("Node lock", &["--lock-file"]),
        ("Paths", &["--root", "--manifest-dir", "--state-dir"]),
    ] {
        let text = section(heading);
        for flag in flags {
            assert!(text.contains(flag), "{flag} under {heading}:\n{help}");
        }
    }
}

/// Starts the agent with `args` plus harmless defaults (a dead API server, no runtime, its own
/// root and a free admin port) and waits for it to stop by itself. A flag the agent refuses must
/// stop it at once with clap's usage status (2); returns its stderr. An agent that accepted the
/// flags is killed after a few seconds and the test fails naming what it did.
fn agent_refuses(args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = write(
        dir.path(),
        "kubeconfig",
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}]\nusers: [{name: u, user: {token: x}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n",
    );
    let err = dir.path().join("stderr");
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args([
            "--cri-endpoint",
            &format!("unix://{}/none.sock", dir.path().display()),
        ])
        .args([
            "--admin-addr",
            "127.0.0.1:0",
            "--log-format",
            "text",
            "--root",
        ])
        .arg(dir.path().join("root"))
        .env_remove("ALL_NAMESPACES")
        .env_remove("NAMESPACES")
        .env_remove("FALLBACK_TIMEOUT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).expect("stderr file"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start agent");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if started.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(2),
        "{args:?} {env:?} must be refused as a usage error ({status:?}):\n{stderr}"
    );
    stderr
}

/// Issue 10.3: a value that starts with a dash reaches the parser, and the error names the flag
/// and the value instead of "unexpected argument '-5'".
#[test]
fn a_negative_duration_is_refused_naming_the_flag_and_the_value() {
    for flag in ["--grace-period", "--poll-interval"] {
        let err = agent_refuses(
            &[
                "--node-name",
                "n1",
                "--namespaces",
                "kube-system",
                flag,
                "-5s",
            ],
            &[],
        );
        assert!(
            err.contains(flag) && err.contains("-5s"),
            "names {flag} and -5s:\n{err}"
        );
    }
    let err = agent_refuses(&["--node-name", "n1", "--namespaces", "-kube-system"], &[]);
    assert!(
        err.contains("--namespaces") && err.contains("-kube-system"),
        "{err}"
    );
    // A missing value is still reported as one, not as a stray `1s`.
    let err = agent_refuses(
        &[
            "--node-name",
            "n1",
            "--all-namespaces",
            "--grace-period",
            "--poll-interval",
            "1s",
        ],
        &[],
    );
    assert!(
        err.contains("a value is required for '--grace-period'"),
        "{err}"
    );
}

/// Issue 10.3: a zero poll interval made the poller panic and the standby loop spin; zero or
/// absurd durations are refused before anything starts, naming the flag.
#[test]
fn zero_and_unbounded_durations_are_refused_naming_the_flag() {
    for (flag, value) in [
        ("--poll-interval", "0s"),
        ("--poll-interval", "0ms"),
        ("--poll-interval", "2h"),
        ("--grace-period", "0s"),
        ("--grace-period", "100000h"),
    ] {
        let err = agent_refuses(
            &[
                "--node-name",
                "n1",
                "--namespaces",
                "kube-system",
                flag,
                value,
            ],
            &[],
        );
        assert!(
            err.contains(flag) && err.contains(value),
            "names {flag} and {value}:\n{err}"
        );
    }
}

/// Issue 10.3: an empty `--namespaces` (a templating slip) silently meant "every namespace".
/// Every namespace is now asked for with `--all-namespaces`; anything else without a namespace
/// is refused, naming both flags.
#[test]
fn no_namespace_is_refused_unless_all_namespaces_is_asked_for() {
    for (args, env) in [
        (&["--node-name", "n1", "--namespaces", ""][..], &[][..]),
        (&["--node-name", "n1", "--namespaces", ","], &[]),
        (&["--node-name", "n1", "--namespaces", "a,,b"], &[]),
        (&["--node-name", "n1", "--namespaces="], &[]),
        (&["--node-name", "n1"], &[]),
        (&["--node-name", "n1"], &[("ALL_NAMESPACES", "false")]),
    ] {
        let err = agent_refuses(args, env);
        assert!(
            err.contains("--namespaces") && err.contains("--all-namespaces"),
            "{args:?} {env:?}: names both flags:\n{err}"
        );
    }
    for (args, env) in [
        (
            &["--node-name", "n1", "--namespaces", "a", "--all-namespaces"][..],
            &[][..],
        ),
        (
            &["--node-name", "n1", "--namespaces", "a"],
            &[("ALL_NAMESPACES", "true")],
        ),
    ] {
        let err = agent_refuses(args, env);
        assert!(
            err.contains("--namespaces") && err.contains("--all-namespaces"),
            "{args:?} {env:?}: a conflict names both flags:\n{err}"
        );
    }
}

/// SPEC §4 Fallback: the timeout is a flag under Timing that explains itself, and is refused
/// when zero.
#[test]
fn fallback_timeout_is_documented_and_validated() {
    let out = run(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    let at = help
        .find("--fallback-timeout")
        .expect("--fallback-timeout in --help");
    let text = &help[at..];
    assert!(
        text.contains("FALLBACK_TIMEOUT") && text.contains("5m") && text.contains("Ready"),
        "env, default and why:\n{help}"
    );
    let err = agent_refuses(
        &[
            "--node-name",
            "n1",
            "--all-namespaces",
            "--fallback-timeout",
            "0s",
        ],
        &[],
    );
    assert!(
        err.contains("--fallback-timeout") && err.contains("0s"),
        "{err}"
    );
    let err = agent_refuses(
        &["--node-name", "n1", "--all-namespaces"],
        &[("FALLBACK_TIMEOUT", "-1m")],
    );
    assert!(
        err.contains("--fallback-timeout") && err.contains("-1m"),
        "{err}"
    );
}

/// A dead API server, for agents started by the lock and port tests.
const DEAD_API: &str = "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}]\nusers: [{name: u, user: {token: x}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n";

/// A free loopback address (found by binding port 0 and letting go).
fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    format!("127.0.0.1:{port}")
}

/// The agent on `root` with a dead API server and no runtime, serving on `addr`, logging to
/// `log`, telling itself apart from other copies by `POD_NAME`.
fn start_agent(root: &Path, addr: &str, pod_name: &str, log: &Path) -> std::process::Child {
    let kubeconfig = write(root, "kubeconfig", DEAD_API);
    Command::new(BIN)
        .args(["--node-name", "n1", "--all-namespaces", "--kubeconfig"])
        .arg(&kubeconfig)
        .args([
            "--cri-endpoint",
            &format!("unix://{}/none.sock", root.display()),
        ])
        .args(["--admin-addr", addr, "--poll-interval", "200ms", "--root"])
        .arg(root.join("root"))
        .env("POD_NAME", pod_name)
        .env_remove("POD_NAMESPACE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("start agent")
}

/// `pod-checkpointer probe KIND` as the kubelet's exec probe runs it in the container of the
/// copy named `pod_name`: its exit status and output.
fn probe(root: &Path, pod_name: &str, kind: &str) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["probe", kind, "--root"])
        .arg(root.join("root"))
        .env("POD_NAME", pod_name)
        .env_remove("POD_NAMESPACE")
        .stdin(Stdio::null())
        .output()
        .expect("run probe");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Polls `cond` every 100 ms until it holds or `within` has passed.
fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM to a child and its exit status within 30 s.
fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut status = None;
    let exited = eventually(Duration::from_secs(30), || {
        status = child.try_wait().expect("wait");
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
    }
    status.expect("exit after SIGTERM")
}

/// Issue 12.4: the copy that stands by (another copy holds the node lock) neither binds the
/// admin port nor answers for the working copy, and still passes its own (exec) probe; once the
/// holder goes, it takes the lock and then the port.
#[test]
fn a_standby_copy_leaves_the_admin_port_to_the_lock_holder_and_passes_its_own_probe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_addr();
    // The working copy: holds the node lock (as the agent does: flock on the lock file).
    let lock_path = dir.path().join("root/var/run/lock/pod-checkpointer.lock");
    std::fs::create_dir_all(lock_path.parent().expect("parent")).expect("lock dir");
    let holder = std::fs::File::create(&lock_path).expect("lock file");
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&holder),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    assert_eq!(rc, 0, "test takes the node lock");

    let log = dir.path().join("standby.log");
    let mut standby = start_agent(dir.path(), &addr, "standby", &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(10), || read_log()
            .contains("\"action\":\"standby\"")),
        "the agent stands by:\n{}",
        read_log()
    );
    assert_eq!(
        get(&addr, "/readyz").map(|r| r.0),
        None,
        "the standby must not answer on the admin port while another copy holds the lock"
    );
    assert!(
        eventually(Duration::from_secs(5), || probe(
            dir.path(),
            "standby",
            "live"
        )
        .0),
        "the standby passes its liveness probe: {}",
        probe(dir.path(), "standby", "live").1
    );
    assert!(
        probe(dir.path(), "standby", "ready").0,
        "the standby is ready (a rollout must not wait on it)"
    );
    let (ok, text) = probe(dir.path(), "someone-else", "live");
    assert!(
        !ok,
        "a copy that is neither holder nor standby fails: {text}"
    );

    // The holder goes: the standby takes the lock, then the port, and its probe now asks it.
    drop(holder);
    assert!(
        eventually(Duration::from_secs(20), || get(&addr, "/healthz")
            .map(|r| r.0)
            == Some(200)),
        "after the holder left, the former standby serves:\n{}",
        read_log()
    );
    assert!(
        eventually(Duration::from_secs(5), || probe(
            dir.path(),
            "standby",
            "live"
        )
        .0),
        "the holder passes its liveness probe: {}",
        probe(dir.path(), "standby", "live").1
    );
    let status = terminate(&mut standby);
    assert!(
        status.success(),
        "exit 0 on SIGTERM: {status:?}\n{}",
        read_log()
    );
}

/// Issue 12.5: copies of the agent bind the admin port only while holding the node lock, so a
/// port in use while we hold it belongs to a foreign program (say the CSI livenessprobe on its
/// default 9808): the agent fails at once, naming the port, instead of retrying forever.
#[test]
fn a_foreign_program_on_the_admin_port_is_a_loud_failure_not_a_retry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let foreign = std::net::TcpListener::bind("127.0.0.1:0").expect("foreign listener");
    let addr = foreign.local_addr().expect("addr").to_string();
    let log = dir.path().join("agent.log");
    let mut agent = start_agent(dir.path(), &addr, "holder", &log);
    let mut status = None;
    let exited = eventually(Duration::from_secs(20), || {
        status = agent.try_wait().expect("wait");
        status.is_some()
    });
    if !exited {
        let _ = agent.kill();
        let _ = agent.wait();
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        exited,
        "the agent must not retry a foreign port forever:\n{text}"
    );
    assert!(
        !status.expect("status").success(),
        "a failure exit status:\n{text}"
    );
    assert!(
        text.contains(&addr) && text.contains("another program"),
        "the error names the address and says it is not a copy of the agent:\n{text}"
    );
    drop(foreign);
}

/// A stand-in API server on loopback (plain HTTP) that answers every request 401, as the API
/// server answers an expired token. Counts the connections it got.
fn unauthorized_api() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("fake API");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;
            let _ = write!(
                conn,
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, seen)
}

fn kubeconfig_for(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: '{url}'}}}}]\nusers: [{{name: u, user: {{token: expired}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: u}}}}]\ncurrent-context: c\n"
    )
}

/// Issue 10.7: an API configuration that cannot be loaded at start (a kubeconfig not there yet)
/// is tried again, so the agent is not without an API for its whole life.
#[test]
fn an_api_configuration_missing_at_start_is_tried_again() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, seen) = unauthorized_api();
    let kubeconfig = dir.path().join("later/kubeconfig");
    let log = dir.path().join("agent.log");
    let mut agent = Command::new(BIN)
        .args(["--node-name", "n1", "--all-namespaces", "--kubeconfig"])
        .arg(&kubeconfig)
        .args([
            "--cri-endpoint",
            &format!("unix://{}/none.sock", dir.path().display()),
        ])
        .args([
            "--admin-addr",
            &free_addr(),
            "--poll-interval",
            "200ms",
            "--root",
        ])
        .arg(dir.path().join("root"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start agent");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(10), || read_log()
            .contains("kubeconfig")),
        "the agent reports the missing configuration:\n{}",
        read_log()
    );
    std::fs::create_dir_all(kubeconfig.parent().expect("dir")).expect("dir");
    write(
        kubeconfig.parent().expect("dir"),
        "kubeconfig",
        &kubeconfig_for(&url),
    );
    let reached = eventually(Duration::from_secs(20), || seen.load(Ordering::SeqCst) > 0);
    let status = terminate(&mut agent);
    assert!(
        reached,
        "the agent never tried the API once its configuration was there:\n{}",
        read_log()
    );
    assert!(status.success(), "{status:?}");
}

/// Issue 12.8: a copy whose own token the API server refuses (401, an expired token after a long
/// outage) must not sit on the node lock: it hands the lock over (to the DaemonSet pod, whose
/// token the kubelet keeps fresh) and stands by.
#[test]
fn a_persistent_401_hands_the_node_lock_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, _) = unauthorized_api();
    let kubeconfig = write(dir.path(), "kubeconfig", &kubeconfig_for(&url));
    let log = dir.path().join("agent.log");
    let addr = free_addr();
    let mut agent = Command::new(BIN)
        .args(["--node-name", "n1", "--all-namespaces", "--kubeconfig"])
        .arg(&kubeconfig)
        .args([
            "--cri-endpoint",
            &format!("unix://{}/none.sock", dir.path().display()),
        ])
        .args(["--admin-addr", &addr, "--poll-interval", "200ms", "--root"])
        .arg(dir.path().join("root"))
        .env("API_UNAUTHORIZED_HANDOVER", "3s")
        .env("POD_NAME", "static-copy")
        .env_remove("POD_NAMESPACE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start agent");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(10), || get(&addr, "/healthz").is_some()),
        "the agent takes the lock and serves:\n{}",
        read_log()
    );
    // The other copy tries the lock as the agent does.
    let lock_path = dir.path().join("root/var/run/lock/pod-checkpointer.lock");
    let other = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&lock_path)
        .expect("lock file");
    let took = eventually(Duration::from_secs(30), || {
        // SAFETY: flock on a descriptor we own.
        unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&other),
                libc::LOCK_EX | libc::LOCK_NB,
            ) == 0
        }
    });
    let text = read_log();
    assert!(took, "the lock was never handed over:\n{text}");
    assert!(text.contains("\"action\":\"handover\""), "{text}");
    assert_eq!(
        get(&addr, "/healthz").map(|r| r.0),
        None,
        "the port goes with the lock"
    );
    assert!(
        eventually(Duration::from_secs(5), || probe(
            dir.path(),
            "static-copy",
            "live"
        )
        .0),
        "the copy that handed over stands by and passes its probe: {}",
        probe(dir.path(), "static-copy", "live").1
    );
    let status = terminate(&mut agent);
    assert!(status.success(), "{status:?}\n{}", read_log());
}
