//! What the agent knows at the start of a pass, on the real node: the first passes after a start
//! act only on a complete view (SPEC §5), the API counts as reachable again as soon as its watch
//! resumes, a failed rewrite does not hold back a checkpoint already on disk, and a parent that
//! the kubelet restarts by itself gets no copy (the stop-the-sandbox protocol M4a of
//! `ANCHOR-FIGURES.md`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::PostParams;
use pod_checkpointer::cri::proto;
use pod_checkpointer::model::PodKey;

use crate::harness::*;

const SHORT: Duration = Duration::from_secs(30);
const LONG: Duration = Duration::from_secs(120);

/// How long after its start the agent may wait for the pod watch before it activates on the
/// runtime's word alone (SPEC §5: "about 2 s"), plus what starting the process takes.
const REBOOT_ACTIVATION_BOUND: Duration = Duration::from_millis(2500);

/// One measured figure, in the self-hosted scenarios' format (`FIGURE <scenario> <name> = ...`).
fn figure(scenario: &str, name: &str, value: f64, unit: &str) {
    // + 0.0: an empty f64 sum is -0.0
    println!("FIGURE view/{scenario} {name} = {:.2} {unit}", value + 0.0);
}

/// Removes the static copies of these parents however the scenario ends, so that a failing
/// scenario leaves no static pod running on the shared node.
struct CopyGuard<'a> {
    node: &'a Node,
    keys: Vec<PodKey>,
}

impl Drop for CopyGuard<'_> {
    fn drop(&mut self) {
        for key in &self.keys {
            let _ = std::fs::remove_file(self.node.active_manifest(key));
        }
    }
}

fn agent_options<'a>(namespaces: &'a [&'a str]) -> AgentOptions<'a> {
    AgentOptions {
        namespaces,
        // Long enough that nothing is removed while a scenario runs.
        grace: "120s",
        ..Default::default()
    }
}

async fn create(ns: &TestNamespace, pod: k8s_openapi::api::core::v1::Pod) {
    ns.pods()
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
}

async fn inactive_checkpoint(agent: &Agent, key: &PodKey) {
    wait_for("inactive checkpoint", LONG, || async {
        agent.inactive_manifest(key).exists().then_some(())
    })
    .await;
}

/// The ids of the runtime's READY sandboxes for this pod.
async fn ready_sandboxes(node: &Node, key: &PodKey) -> BTreeSet<String> {
    node.cri()
        .list_sandboxes()
        .await
        .map(|s| {
            s.into_iter()
                .filter(|s| &s.key == key && s.ready)
                .map(|s| s.id)
                .collect()
        })
        .unwrap_or_default()
}

/// Lines of the agent's log after `from` bytes (what a restarted process wrote).
fn log_since(agent: &Agent, from: usize) -> String {
    agent.log().get(from..).unwrap_or_default().to_string()
}

/// Issue 11.9: restarted while one parent waits for a volume (the kubelet has not created its
/// sandbox) and another runs its init container, the agent activates neither: the runtime does
/// not run the first, but the API (once its watch has answered) says it is merely starting.
#[tokio::test]
async fn restart_while_a_parent_is_starting_activates_nothing() {
    let node = Node::from_env();
    let ns = TestNamespace::create(&node, "e2e-view-start").await;
    let mut agent = Agent::start(&node, agent_options(&[&ns.name]));
    let missing = format!("/tmp/pc-e2e-view-missing-{}", ns.name);
    create(
        &ns,
        busybox_pod(
            &node,
            "waits",
            true,
            "sleep 3600",
            serde_json::json!({"spec": {
                "volumes": [{"name": "data", "hostPath": {"path": missing, "type": "Directory"}}],
                "containers": [{
                    "name": "main",
                    "image": node.busybox,
                    "imagePullPolicy": "Never",
                    "command": ["sleep", "3600"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }],
            }}),
        ),
    )
    .await;
    create(
        &ns,
        busybox_pod(
            &node,
            "init",
            true,
            "sleep 3600",
            serde_json::json!({"spec": {"initContainers": [{
                "name": "slow-init",
                "image": node.busybox,
                "imagePullPolicy": "Never",
                "command": ["sleep", "3600"],
            }]}}),
        ),
    )
    .await;
    let (waits, init) = (ns.key("waits"), ns.key("init"));
    let _copies = CopyGuard {
        node: &node,
        keys: vec![waits.clone(), init.clone()],
    };
    inactive_checkpoint(&agent, &waits).await;
    inactive_checkpoint(&agent, &init).await;
    wait_for("the init container's sandbox is up", LONG, || async {
        node.sandbox_ready(&init).await.then_some(())
    })
    .await;
    assert!(
        ready_sandboxes(&node, &waits).await.is_empty(),
        "the parent waiting for its volume has no sandbox"
    );

    let from = agent.log().len();
    agent.restart();
    wait_for("the restarted agent's pod watch synced", SHORT, || async {
        log_since(&agent, from)
            .contains("\"action\":\"api_reachable\"")
            .then_some(())
    })
    .await;
    holds_for(
        "no copy activated for a parent that is starting",
        Duration::from_secs(5),
        || async {
            !node.active_manifest(&waits).exists() && !node.active_manifest(&init).exists()
        },
    )
    .await;
    let log = log_since(&agent, from);
    assert!(
        !log.contains("\"action\":\"activate\""),
        "no activate line after the restart:\n{log}"
    );
    assert_eq!(
        agent.metric("pod_checkpointer_activations_total"),
        Some(0.0)
    );
}

/// Issue 11.9, the other half: after a reboot with no API the first passes do not wait for a
/// watch that cannot answer; the copy is in the static pod directory within the bound.
#[tokio::test]
async fn reboot_with_the_api_down_activates_within_the_bound() {
    let node = Node::from_env();
    let ns = TestNamespace::create(&node, "e2e-view-reboot").await;
    let mut agent = Agent::start(&node, agent_options(&[&ns.name]));
    create(
        &ns,
        busybox_pod(&node, "parent", true, "sleep 3600", serde_json::json!({})),
    )
    .await;
    let key = ns.key("parent");
    let copy = key.static_pod_key(&node.name);
    let _copies = CopyGuard {
        node: &node,
        keys: vec![key.clone()],
    };
    inactive_checkpoint(&agent, &key).await;
    wait_for("parent running", LONG, || async {
        node.sandbox_ready(&key).await.then_some(())
    })
    .await;

    // The reboot: the agent goes with the node, the API stays down, every sandbox is gone.
    let stopped = agent.stop_for_restart();
    let outage = node.stop_apiserver();
    node.sh(&["reboot-runtime"]);
    let spawned = agent.start_again(stopped);
    let deadline = spawned + Duration::from_secs(10);
    while !node.active_manifest(&key).exists() {
        assert!(
            Instant::now() < deadline,
            "no activation within 10 s of the agent's start\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = spawned.elapsed();
    figure(
        "reboot_api_down",
        "agent_start_to_copy_active_s",
        took.as_secs_f64(),
        "s",
    );
    assert!(
        took < REBOOT_ACTIVATION_BOUND,
        "activation took {took:?} after a reboot with no API"
    );
    wait_for("kubelet runs the static copy", LONG, || async {
        node.sandbox_ready(&copy).await.then_some(())
    })
    .await;

    outage.end();
    wait_for("parent running again", LONG, || async {
        node.sandbox_ready(&key).await.then_some(())
    })
    .await;
    wait_for("checkpoint deactivated", SHORT, || async {
        (!node.active_manifest(&key).exists()).then_some(())
    })
    .await;
    // After a reboot a self-hosted API can go once more while its copy yields: let it settle, so
    // the namespace's deletion is not lost.
    wait_for("the API answers", LONG, || async {
        ns.pods().get_opt("parent").await.ok().map(|_| ())
    })
    .await;
}

/// Issue 10.4: the API comes back and the watch resumes where it stopped, with nothing to report
/// (no pod changed): the agent reports the API reachable again within seconds all the same.
#[tokio::test]
async fn api_back_after_a_blip_is_reachable_again_without_any_pod_change() {
    let node = Node::from_env();
    // No pods at all: nothing can change, so no watch event can mark the API reachable.
    let ns = TestNamespace::create(&node, "e2e-view-blip").await;
    let agent = Agent::start(&node, agent_options(&[&ns.name]));
    wait_for("API reachable", SHORT, || async {
        (agent.metric("pod_checkpointer_api_reachable") == Some(1.0)).then_some(())
    })
    .await;
    let outage = node.stop_apiserver();
    wait_for("agent sees the API server gone", SHORT, || async {
        (agent.metric("pod_checkpointer_api_reachable") == Some(0.0)).then_some(())
    })
    .await;
    outage.end();
    let back = Instant::now();
    wait_for(
        "API reachable again, with no pod changed",
        Duration::from_secs(20),
        || async { (agent.metric("pod_checkpointer_api_reachable") == Some(1.0)).then_some(()) },
    )
    .await;
    figure(
        "api_blip",
        "api_back_to_reported_reachable_s",
        back.elapsed().as_secs_f64(),
        "s",
    );
}

/// Sets the immutable flag on a directory until dropped: nothing can be created or renamed in
/// it, root included, which is how a rewrite of the files in it fails.
struct Immutable(PathBuf);

impl Immutable {
    fn set(dir: PathBuf) -> Self {
        chattr("+i", &dir);
        Self(dir)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        chattr("-i", &self.0);
    }
}

fn chattr(flag: &str, dir: &std::path::Path) {
    let status = std::process::Command::new("chattr")
        .arg(flag)
        .arg(dir)
        .status()
        .expect("chattr (e2fsprogs)");
    assert!(status.success(), "chattr {flag} {}", dir.display());
}

/// The host directory behind the checkpoint's service-account token volume.
fn token_dir(agent: &Agent, key: &PodKey) -> PathBuf {
    let text = std::fs::read_to_string(agent.inactive_manifest(key)).expect("inactive manifest");
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_str(&text).expect("a v1 Pod");
    let volumes = pod.spec.and_then(|s| s.volumes).unwrap_or_default();
    let volume = volumes
        .iter()
        .find(|v| v.name.starts_with("kube-api-access-"))
        .expect("the service-account volume, as a hostPath");
    PathBuf::from(&volume.host_path.as_ref().expect("hostPath").path)
}

/// Issue 11.1 on the real node: after a restart every checkpoint is rewritten (a new token), and
/// that rewrite fails; the parent then stops with nobody to restart it, and the checkpoint that
/// is already on disk is activated all the same, and its copy runs.
#[tokio::test]
async fn a_failed_rewrite_does_not_block_activating_the_checkpoint_on_disk() {
    let node = Node::from_env();
    let ns = TestNamespace::create(&node, "e2e-view-rewrite").await;
    let mut agent = Agent::start(&node, agent_options(&[&ns.name]));
    create(
        &ns,
        busybox_pod(&node, "parent", true, "sleep 3600", serde_json::json!({})),
    )
    .await;
    let key = ns.key("parent");
    let copy = key.static_pod_key(&node.name);
    let _copies = CopyGuard {
        node: &node,
        keys: vec![key.clone()],
    };
    inactive_checkpoint(&agent, &key).await;
    let tokens = token_dir(&agent, &key);
    wait_for("token written", LONG, || async {
        tokens.join("token").exists().then_some(())
    })
    .await;
    let parent_sandboxes = wait_for("parent running", LONG, || async {
        Some(ready_sandboxes(&node, &key).await).filter(|s| !s.is_empty())
    })
    .await;
    // The API must know it has started here: a parent it still calls starting gets no copy.
    wait_for("the API reports the parent Running", LONG, || async {
        pod_running(&ns.pods(), "parent").await.then_some(())
    })
    .await;

    // A restarted agent asks for a new token, so the rewrite must replace the token file: in an
    // immutable directory it cannot.
    let stopped = agent.stop_for_restart();
    let _frozen = Immutable::set(tokens.clone());
    agent.start_again(stopped);
    wait_for("the rewrite fails", SHORT, || async {
        agent
            .metric("pod_checkpointer_write_errors_total")
            .filter(|n| *n >= 1.0)
    })
    .await;

    // The parent stops and nothing restarts it (the kubelet is down); the API still lists it.
    let kubelet = KubeletStopped::stop(&node);
    let cri = node.cri();
    for id in &parent_sandboxes {
        cri.stop_and_remove_sandbox(id)
            .await
            .expect("stop the parent's sandbox");
    }
    wait_for("checkpoint activated", SHORT, || async {
        node.active_manifest(&key).exists().then_some(())
    })
    .await;
    let log = agent.log();
    assert!(
        log.lines().any(
            |l| l.contains("\"action\":\"write\"") && l.contains("checkpoint operation failed")
        ),
        "the rewrite failed while the checkpoint was activated"
    );

    // The kubelet comes back with the API down, as after a reboot: it runs the copy alone.
    let outage = node.stop_apiserver();
    kubelet.start();
    wait_for("kubelet runs the static copy", LONG, || async {
        node.sandbox_ready(&copy).await.then_some(())
    })
    .await;
    assert!(
        std::fs::read_to_string(tokens.join("token")).is_ok_and(|t| t.split('.').count() == 3),
        "the copy has the token that was on disk"
    );

    outage.end();
    wait_for("parent running again", LONG, || async {
        node.sandbox_ready(&key).await.then_some(())
    })
    .await;
    wait_for("checkpoint deactivated", SHORT, || async {
        (!node.active_manifest(&key).exists()).then_some(())
    })
    .await;
}

/// Starts the kubelet again however the scenario ends.
struct KubeletStopped<'a> {
    node: &'a Node,
    started: bool,
}

impl<'a> KubeletStopped<'a> {
    fn stop(node: &'a Node) -> Self {
        node.sh(&["stop-kubelet"]);
        Self {
            node,
            started: false,
        }
    }

    fn start(mut self) {
        self.started = true;
        self.node.sh(&["start-kubelet"]);
    }
}

impl Drop for KubeletStopped<'_> {
    fn drop(&mut self) {
        if !self.started {
            self.node.sh(&["start-kubelet"]);
        }
    }
}

/// Watches the static pod directory every 20 ms from a thread of its own (as M4a's host did),
/// recording every file of the given parents' checkpoints that appears, however briefly.
struct StaticDirWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeSet<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StaticDirWatch {
    fn start(node: &Node, keys: &[PodKey]) -> Self {
        let files: Vec<PathBuf> = keys.iter().map(|k| node.active_manifest(k)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let (stop_flag, seen_files) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !stop_flag.load(Ordering::Relaxed) {
                for f in files.iter().filter(|f| f.exists()) {
                    if let Ok(mut s) = seen_files.lock() {
                        s.insert(f.display().to_string());
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> BTreeSet<String> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for StaticDirWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A pause of 0–5.5 s, different each time (M4a's "random pause"), without a random crate.
fn m4a_pause(i: u32) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_millis(u64::from(
        nanos.wrapping_mul(2_654_435_761).wrapping_add(i) % 5_500,
    ))
}

/// Issue 10.15, M4a of `ANCHOR-FIGURES.md`: API down, kubelet up; each of five parents in turn
/// has its sandbox stopped (`crictl stopp`) after a random pause, and the kubelet restarts it.
/// No copy is activated beside a parent the kubelet restarts by itself (the Go original: 1 of 5;
/// this project before the rule: 4 of 5).
#[tokio::test]
async fn m4a_parent_the_kubelet_restarts_gets_no_copy() {
    const PARENTS: u32 = 5;
    let node = Node::from_env();
    let ns = TestNamespace::create(&node, "e2e-view-m4a").await;
    let agent = Agent::start(&node, agent_options(&[&ns.name]));
    let keys: Vec<PodKey> = (1..=PARENTS)
        .map(|i| ns.key(&format!("p-{i:02}")))
        .collect();
    for key in &keys {
        create(
            &ns,
            busybox_pod(&node, &key.name, true, "sleep 3600", serde_json::json!({})),
        )
        .await;
    }
    let _copies = CopyGuard {
        node: &node,
        keys: keys.clone(),
    };
    for key in &keys {
        inactive_checkpoint(&agent, key).await;
        wait_for("parent running", LONG, || async {
            Some(ready_sandboxes(&node, key).await).filter(|s| !s.is_empty())
        })
        .await;
    }

    let outage = node.stop_apiserver();
    wait_for("agent sees the API server gone", SHORT, || async {
        (agent.metric("pod_checkpointer_api_reachable") == Some(0.0)).then_some(())
    })
    .await;
    let watch = StaticDirWatch::start(&node, &keys);
    let cri = node.cri();
    let mut restarts = Vec::new();
    for (i, key) in (0..).zip(&keys) {
        tokio::time::sleep(m4a_pause(i)).await;
        let before = ready_sandboxes(&node, key).await;
        for id in &before {
            let stop = proto::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            };
            cri.unary::<_, proto::StopPodSandboxResponse>("StopPodSandbox", stop)
                .await
                .expect("crictl stopp");
        }
        let stopped = Instant::now();
        wait_for("the kubelet restarts the parent", SHORT, || async {
            ready_sandboxes(&node, key)
                .await
                .difference(&before)
                .next()
                .map(|_| ())
        })
        .await;
        restarts.push(stopped.elapsed());
    }
    // A copy the last stop might still get would appear within a few polls.
    holds_for(
        "no copy after the last stop",
        Duration::from_secs(3),
        || async { keys.iter().all(|k| !node.active_manifest(k).exists()) },
    )
    .await;
    let seen = watch.seen();
    let slowest = restarts.iter().max().copied().unwrap_or_default();
    figure(
        "m4a",
        "kubelet_restart_slowest_s",
        slowest.as_secs_f64(),
        "s",
    );
    figure(
        "m4a",
        "checkpoints_activated",
        seen.len() as f64,
        &format!("of {PARENTS}"),
    );
    assert!(seen.is_empty(), "copies activated: {seen:?}");
    assert_eq!(
        agent.metric("pod_checkpointer_activations_total"),
        Some(0.0)
    );
    outage.end();
}
