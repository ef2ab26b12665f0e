//! The reconciler end to end against a real store in a temporary directory, with the API side
//! absent (the node view alone): what a pass does when the disk misbehaves.

mod support {
    pub mod logs;
    pub mod settings;
}

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use pod_checkpointer::metrics::Metrics;
use pod_checkpointer::model::{Layout, Observation, PodKey};
use pod_checkpointer::poller::{NodeView, SharedNodeView};
use pod_checkpointer::reconciler::Reconciler;
use pod_checkpointer::sanitize::{self, Objects, TokenSpec};
use pod_checkpointer::store::Store;
use pod_checkpointer_core::fixtures::PodBuilder;
use serde_json::json;

const NODE: &str = "node-a";
const NS: &str = "kube-system";
const NAME: &str = "apiserver";

fn key() -> PodKey {
    PodKey::new(NS, NAME)
}

/// A parent the kubelet lists as finished: it will not restart it, so with the runtime saying
/// nothing runs, its checkpoint is due to be activated.
fn stopped_parent(volumes: serde_json::Value) -> Pod {
    PodBuilder::parent(NS, NAME)
        .node(NODE)
        .volumes(volumes)
        .status(json!({"phase": "Failed"}))
        .build()
}

/// A projected volume the node alone can fill (downward API, no API object).
fn downward_volume() -> serde_json::Value {
    json!([{"name": "info", "projected": {"sources": [{"downwardAPI": {"items": [
        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}
    ]}}]}}])
}

/// A projected volume holding a service-account token: without the API the token cannot be had.
fn token_volume() -> serde_json::Value {
    json!([{"name": "token", "projected": {"sources": [
        {"serviceAccountToken": {"path": "token"}}
    ]}}])
}

fn node_view(parents: Vec<Pod>, running: BTreeSet<PodKey>) -> SharedNodeView {
    Arc::new(Mutex::new(NodeView {
        running: Observation::Known(running),
        kubelet_pods: Observation::Known(parents),
    }))
}

struct World {
    _tmp: tempfile::TempDir,
    layout: Layout,
    metrics: Metrics,
}

impl World {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let layout = Layout::under_root(tmp.path());
        Store::new(layout.clone()).prepare().expect("prepare");
        Self {
            _tmp: tmp,
            layout,
            metrics: Metrics::new().expect("metrics"),
        }
    }

    fn store(&self) -> Store {
        Store::new(self.layout.clone())
    }

    fn reconciler(&self, node: SharedNodeView) -> Reconciler {
        Reconciler::new(
            support::settings::settings(NODE),
            self.store(),
            self.metrics.clone(),
            node,
            None,
            None,
        )
    }

    fn inactive(&self) -> PathBuf {
        self.layout
            .inactive_manifest_dir
            .join(key().manifest_file_name())
    }

    fn active(&self) -> PathBuf {
        self.layout.manifest_dir.join(key().manifest_file_name())
    }

    /// Writes the checkpoint `parent` sanitizes to with `objects`, as an earlier run would have.
    fn seed(&self, parent: &Pod, objects: &Objects) {
        let cp = sanitize::sanitize(parent, objects, &self.layout).expect("sanitizes");
        self.store()
            .write_inactive(&key(), &cp.manifest_bytes(), &cp.files)
            .expect("seed write");
    }

    fn gauge(&self, state: &str) -> i64 {
        self.metrics.checkpoints.with_label_values(&[state]).get()
    }

    fn activated_series(&self) -> bool {
        self.metrics
            .render()
            .contains("pod_checkpointer_checkpoint_activated_timestamp_seconds{")
    }
}

/// Replaces a directory by a regular file, so that reading or creating it fails even for root.
fn block_dir(dir: &Path) -> PathBuf {
    let aside = dir.with_extension("aside");
    fs::rename(dir, &aside).expect("move dir aside");
    fs::write(dir, b"not a directory").expect("block dir");
    aside
}

fn unblock_dir(dir: &Path, aside: &Path) {
    fs::remove_file(dir).expect("unblock");
    fs::rename(aside, dir).expect("move dir back");
}

/// Issue 11, item 1: after a restart every digest differs, so a pass both rewrites and
/// activates. A failed rewrite must not keep the good copy already on disk from starting.
#[tokio::test]
async fn failed_rewrite_still_activates_the_checkpoint_already_on_disk() {
    let w = World::new();
    // An older, valid checkpoint (no side files), from before the parent gained a volume.
    w.seed(
        &stopped_parent(json!([{"name": "scratch", "emptyDir": {}}])),
        &Objects::default(),
    );
    // The fresh one has side files under the secret root.
    // The store will not replace its secret root: a file there makes every side write fail.
    block_dir(&w.layout.secret_dir);

    let node = node_view(vec![stopped_parent(downward_volume())], BTreeSet::new());
    let mut r = w.reconciler(node);
    r.reconcile().await;

    assert_eq!(w.metrics.write_errors.get(), 1, "the rewrite fails");
    assert!(
        w.active().is_file(),
        "the checkpoint on disk is activated although its rewrite failed"
    );
    assert_eq!(w.metrics.activations.get(), 1);
    assert_eq!(
        fs::read(w.active()).expect("active"),
        fs::read(w.inactive()).expect("inactive"),
        "the active copy is the checkpoint that was on disk"
    );
}

/// A failed write with nothing on disk before still keeps the activation back: there is
/// nothing to start.
#[tokio::test]
async fn failed_first_write_activates_nothing() {
    let w = World::new();
    // The store will not replace its secret root: a file there makes every side write fail.
    block_dir(&w.layout.secret_dir);

    let node = node_view(vec![stopped_parent(downward_volume())], BTreeSet::new());
    let mut r = w.reconciler(node);
    r.reconcile().await;

    assert!(!w.active().exists());
    assert_eq!(w.metrics.activations.get(), 0);
    assert_eq!(w.metrics.write_errors.get(), 1, "only the write failed");
}

/// Issue 11, item 2: a scan that fails is "unknown", not "no checkpoints". The guard that keeps
/// a checkpoint holding a token from being replaced by one without must still hold.
#[tokio::test]
async fn scan_error_never_replaces_a_checkpoint_that_holds_a_token() {
    let w = World::new();
    let parent = stopped_parent(token_volume());
    let mut objects = Objects::default();
    objects.tokens.insert(
        TokenSpec {
            audience: None,
            expiration_seconds: 3600,
        },
        "a-working-token".to_owned(),
    );
    w.seed(&parent, &objects);
    let token = w
        .layout
        .pod_secret_dir(&key())
        .join("_volume-token")
        .join("token");
    assert!(token.is_file(), "seeded token at {}", token.display());

    // The kubelet's static pod directory cannot be read: the disk view is unknown.
    block_dir(&w.layout.manifest_dir);
    // Running, so nothing would be activated either way; only the write is in question.
    let node = node_view(vec![parent], BTreeSet::from([key()]));
    let mut r = w.reconciler(node);
    r.reconcile().await;

    assert_eq!(
        fs::read(&token).ok().as_deref(),
        Some(&b"a-working-token"[..]),
        "the token the checkpoint holds is kept"
    );
}

/// Issue 11, item 2: while the disk cannot be read, the gauges keep their last values (an
/// active-too-long alert must not go quiet), the pass does not claim an empty node (the
/// uninstall drain would end), and the error is counted once, not once per pass.
#[tokio::test]
async fn scan_error_keeps_the_last_gauges_and_never_reports_an_empty_node() {
    let w = World::new();
    w.seed(&stopped_parent(downward_volume()), &Objects::default());
    let node = node_view(vec![stopped_parent(downward_volume())], BTreeSet::new());
    let mut r = w.reconciler(node);
    let pass = r.reconcile().await;
    assert!(w.active().is_file(), "activated");
    assert_eq!(pass.checkpoints_on_disk, Some(1));
    assert_eq!((w.gauge("active"), w.gauge("inactive")), (1, 0));
    assert!(w.activated_series());
    let errors_before = w.metrics.write_errors.get();

    let aside = block_dir(&w.layout.inactive_manifest_dir);
    for _ in 0..3 {
        let pass = r.reconcile().await;
        assert_eq!(pass.checkpoints_on_disk, None, "unknown, not empty");
        assert!(!pass.acted);
    }
    assert_eq!((w.gauge("active"), w.gauge("inactive")), (1, 0));
    assert!(
        w.activated_series(),
        "the activation time is still exported"
    );
    assert_eq!(w.metrics.disk_readable.get(), 0);
    assert_eq!(
        w.metrics.write_errors.get(),
        errors_before + 1,
        "counted once per transition"
    );

    unblock_dir(&w.layout.inactive_manifest_dir, &aside);
    let pass = r.reconcile().await;
    assert_eq!(pass.checkpoints_on_disk, Some(1));
    assert_eq!(w.metrics.disk_readable.get(), 1);
    assert_eq!((w.gauge("active"), w.gauge("inactive")), (1, 0));
}

/// Issue 10.2: namespace `a-b` pod `c` and namespace `a` pod `b-c` both need `a-b-c.json`. The
/// loser is a stable refusal (`refused_pods{reason="name_collision"}`), not a write error
/// retried on every pass (which fired the disk alert), and the holder's checkpoint is written.
#[tokio::test]
async fn a_file_name_collision_is_a_refusal_not_a_write_error() {
    let w = World::new();
    let pod = |ns: &str, name: &str| {
        PodBuilder::parent(ns, name)
            .node(NODE)
            .status(json!({"phase": "Running"}))
            .build()
    };
    let (holder, loser) = (PodKey::new("a", "b-c"), PodKey::new("a-b", "c"));
    let running = BTreeSet::from([holder.clone(), loser.clone()]);
    let node = node_view(vec![pod("a-b", "c"), pod("a", "b-c")], running);
    let mut r = w.reconciler(node);
    for _ in 0..3 {
        r.reconcile().await;
    }
    assert_eq!(w.metrics.write_errors.get(), 0, "not a write error");
    assert_eq!(
        w.metrics
            .refused_pods
            .with_label_values(&["name_collision"])
            .get(),
        1
    );
    let file = w.layout.inactive_manifest_dir.join("a-b-c.json");
    let written: Pod =
        serde_json::from_slice(&fs::read(&file).expect("holder's checkpoint")).expect("a pod");
    assert_eq!(sanitize::checkpoint_of(&written), Some(holder));
}

/// Issue 10.13: a failure that lasts is logged when it starts (and when it ends), not on every
/// pass; it is still counted on every pass.
#[tokio::test]
async fn a_lasting_write_failure_is_logged_once_not_every_pass() {
    let (logged, _guard) = support::logs::capture();
    let w = World::new();
    let aside = block_dir(&w.layout.secret_dir);
    let node = node_view(vec![stopped_parent(downward_volume())], BTreeSet::new());
    let mut r = w.reconciler(node);
    for _ in 0..3 {
        r.reconcile().await;
    }
    assert_eq!(w.metrics.write_errors.get(), 3, "counted every pass");
    assert_eq!(logged.count(tracing::Level::ERROR, "action=\"write\""), 1);
    unblock_dir(&w.layout.secret_dir, &aside);
    r.reconcile().await;
    assert!(w.inactive().is_file());
    assert_eq!(logged.count(tracing::Level::INFO, "works again"), 1);
}

/// Issue 10.13: two files holding the same checkpoint are reported once, not twice per pass.
#[tokio::test]
async fn a_duplicate_manifest_is_reported_once() {
    let (logged, _guard) = support::logs::capture();
    let w = World::new();
    let parent = stopped_parent(json!([]));
    w.seed(&parent, &Objects::default());
    let copy = w.layout.inactive_manifest_dir.join("copy-of-it.json");
    fs::copy(w.inactive(), &copy).expect("duplicate");
    let node = node_view(vec![parent], BTreeSet::from([key()]));
    let mut r = w.reconciler(node);
    for _ in 0..3 {
        r.reconcile().await;
    }
    assert_eq!(
        logged.count(tracing::Level::WARN, "copy-of-it.json"),
        1,
        "reported once"
    );
}

/// Issue 12.10: the self-check. The agent's own checkpoint is always active, so the kubelet
/// should run its static copy; when it does not, the manifest directory is not the kubelet's
/// static pod path and no checkpoint would come back after a reboot: `own_copy_running` says so.
#[tokio::test]
async fn own_copy_running_says_whether_the_kubelet_runs_the_agents_static_copy() {
    let w = World::new();
    let me = PodKey::new(NS, "pod-checkpointer-x");
    let agent = PodBuilder::parent(NS, &me.name)
        .node(NODE)
        .status(json!({"phase": "Running"}))
        .build();
    let copy = me.static_pod_key(NODE);
    let view = node_view(vec![agent], BTreeSet::from([me.clone()]));
    let mut settings = support::settings::settings(NODE);
    settings.me = Some(me.clone());
    let mut r = Reconciler::new(
        settings,
        w.store(),
        w.metrics.clone(),
        view.clone(),
        None,
        None,
    );
    let gauge = || {
        w.metrics
            .own_copy_running
            .with_label_values(&[&copy.name])
            .get()
    };
    for _ in 0..3 {
        r.reconcile().await;
    }
    assert!(
        w.layout
            .manifest_dir
            .join(me.manifest_file_name())
            .is_file(),
        "its own checkpoint is active"
    );
    assert_eq!(gauge(), 0, "nothing runs the copy");
    if let Ok(mut v) = view.lock() {
        v.running = Observation::Known(BTreeSet::from([me.clone(), copy.clone()]));
    }
    r.reconcile().await;
    assert_eq!(gauge(), 1, "the kubelet runs it");
}
