//! The agent's life cycle on the real node (issue 12.4): two copies of the agent on one node
//! lock, as the DaemonSet pod and its static copy are. The holder serves the admin port; the
//! standby leaves the port alone and still passes its own exec probe; once the holder stops, the
//! standby takes the lock, then the port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::*;

const DEADLINE: Duration = Duration::from_secs(30);

/// One copy of the agent: real runtime, kubelet and API server; a shared root and lock; told
/// apart from the other copy by `POD_NAME` (in a container, its PID namespace does that too).
struct Copy {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
    lock: PathBuf,
}

impl Copy {
    fn start(node: &Node, ns: &str, root: &Path, admin: &str, name: &'static str) -> Self {
        let log = root.join(format!("{name}.log"));
        let lock = root.join("shared.lock");
        let child = Command::new(env!("CARGO_BIN_EXE_pod-checkpointer"))
            .args([
                "--namespaces",
                ns,
                "--node-name",
                &node.name,
                "--kubeconfig",
            ])
            .arg(&node.kubeconfig)
            .args(["--cri-endpoint", &node.cri_endpoint])
            .args(["--kubelet-url", "http://127.0.0.1:10255"])
            .args(["--poll-interval", "500ms", "--admin-addr", admin])
            .arg("--lock-file")
            .arg(&lock)
            .arg("--root")
            .arg(root)
            .arg("--manifest-dir")
            .arg(&node.manifest_dir)
            .env("POD_NAME", name)
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("starting the agent");
        Self {
            name,
            child: Some(child),
            log,
            lock,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exec probe as the kubelet runs it in this copy's container.
    fn probe(&self, kind: &str) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_pod-checkpointer"))
            .args(["probe", kind, "--lock-file"])
            .arg(&self.lock)
            .env("POD_NAME", self.name)
            .env_remove("POD_NAMESPACE")
            .output()
            .expect("probe");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().expect("wait");
        assert!(
            status.success(),
            "{} exit: {status:?}\n{}",
            self.name,
            self.log()
        );
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.log());
        }
    }
}

/// GET on the admin address; the status, or None when nothing answers.
fn status(admin: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn only_the_lock_holder_serves_the_port_and_the_standby_passes_its_own_probe() {
    let node = Node::from_env();
    let ns = TestNamespace::create(&node, "e2e-lifecycle").await;
    let root = tempfile::Builder::new()
        .prefix("pc-lifecycle-")
        .tempdir_in("/tmp")
        .expect("root");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let admin = format!("127.0.0.1:{port}");

    let mut a = Copy::start(&node, &ns.name, root.path(), &admin, "copy-a");
    wait_for("copy A holds the lock and serves", DEADLINE, || async {
        (status(&admin, "/healthz") == Some(200)).then_some(())
    })
    .await;
    let mut b = Copy::start(&node, &ns.name, root.path(), &admin, "copy-b");
    wait_for("copy B stands by", DEADLINE, || async {
        b.log().contains("\"action\":\"standby\"").then_some(())
    })
    .await;
    wait_for(
        "copy B passes its liveness and readiness probes",
        DEADLINE,
        || async { (b.probe("live").0 && b.probe("ready").0).then_some(()) },
    )
    .await;
    wait_for(
        "copy A passes its readiness probe (synced)",
        DEADLINE,
        || async { a.probe("ready").0.then_some(()) },
    )
    .await;
    assert!(a.probe("live").0, "{}", a.probe("live").1);
    assert!(
        !b.log().contains("admin server listening"),
        "the standby bound the admin port:\n{}",
        b.log()
    );
    assert!(a.log().contains("admin server listening"), "{}", a.log());

    // The holder goes: the standby takes the lock, then the port; its probe now asks its server.
    a.stop();
    wait_for("copy B took the lock and serves", DEADLINE, || async {
        (b.log().contains("holding the node lock") && status(&admin, "/healthz") == Some(200))
            .then_some(())
    })
    .await;
    wait_for("copy B's probe asks its own server", DEADLINE, || async {
        let (ok, text) = b.probe("live");
        (ok && text.contains("holding the node lock")).then_some(())
    })
    .await;
    let (ok, text) = a.probe("live");
    assert!(!ok, "a copy that is gone does not pass: {text}");
    b.stop();
}
