//! The reconciler and the clock: what it loads at start must not outlast one grace period, and
//! what it counts down (grace, fallback) must survive a restart.

mod support {
    pub mod settings;
}

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use pod_checkpointer::metrics::Metrics;
use pod_checkpointer::model::{Layout, Observation, PodKey};
use pod_checkpointer::poller::NodeView;
use pod_checkpointer::reconciler::{Reconciler, Settings};
use pod_checkpointer::sanitize::{self, Objects};
use pod_checkpointer::store::Store;
use pod_checkpointer_core::fixtures::PodBuilder;
use serde_json::json;

const GRACE: Duration = Duration::from_secs(60);

/// A clock stepped back, or a corrupt file, must not keep a stale copy for hours: a deadline
/// loaded at start lies at most one grace period ahead, in memory and on disk.
#[tokio::test]
async fn a_deadline_loaded_at_start_lies_at_most_one_grace_period_ahead() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let layout = Layout::under_root(tmp.path());
    let store = Store::new(layout.clone());
    store.prepare().expect("prepare");
    let far = PodKey::new("kube-system", "far");
    let near = PodKey::new("kube-system", "near");
    let now = Timestamp::now();
    let near_at = now + SignedDuration::from_secs(10);
    store
        .save_deadlines(&BTreeMap::from([
            (far.clone(), now + SignedDuration::from_hours(24 * 30)),
            (near.clone(), near_at),
        ]))
        .expect("seed deadlines");

    let settings = Settings {
        grace: GRACE,
        ..support::settings::settings("node-a")
    };
    let node = Arc::new(Mutex::new(NodeView {
        running: Observation::Known(BTreeSet::new()),
        kubelet_pods: Observation::Known(Vec::new()),
    }));
    let _reconciler = Reconciler::new(
        settings,
        Store::new(layout.clone()),
        Metrics::new().expect("metrics"),
        node,
        None,
        None,
    );
    let limit = Timestamp::now() + SignedDuration::try_from(GRACE).expect("grace");
    let on_disk = Store::new(layout.clone()).load_deadlines().expect("load");
    assert!(
        on_disk[&far] <= limit,
        "far deadline persisted as {}",
        on_disk[&far]
    );
    assert_eq!(on_disk[&near], near_at, "a deadline within grace is kept");
}

/// A copy that yielded to a successor runs again when the successor is not Ready within the
/// fallback timeout, even if the agent restarts meanwhile (the kubelet restarting it under load,
/// say): the timeout counts from the yield, not from the agent's start. CI saw a self-hosted
/// API server stay down past its fallback timeout.
#[tokio::test]
async fn the_fallback_timeout_survives_an_agent_restart() {
    const FALLBACK: Duration = Duration::from_secs(1);
    let tmp = tempfile::tempdir().expect("temp dir");
    let layout = Layout::under_root(tmp.path());
    Store::new(layout.clone()).prepare().expect("prepare");
    let daemonset = |name: &str, uid: &str, status: serde_json::Value| {
        PodBuilder::parent("kube-system", name)
            .uid(uid)
            .node("node-a")
            .owner("DaemonSet", "kube-apiserver", "ds-1", true)
            .status(status)
            .build()
    };
    // The old pod stopped with its checkpoint inactive; the new one started and is not Ready.
    let old = daemonset("kube-apiserver-old", "old-1", json!({"phase": "Failed"}));
    let new = daemonset("kube-apiserver-new", "new-1", json!({"phase": "Running"}));
    let old_key = PodKey::new("kube-system", "kube-apiserver-old");
    let checkpoint = sanitize::sanitize(&old, &Objects::default(), &layout).expect("sanitizes");
    Store::new(layout.clone())
        .write_inactive(&old_key, &checkpoint.manifest_bytes(), &checkpoint.files)
        .expect("seed checkpoint");
    let node = Arc::new(Mutex::new(NodeView {
        running: Observation::Known(BTreeSet::from([PodKey::new(
            "kube-system",
            "kube-apiserver-new",
        )])),
        kubelet_pods: Observation::Known(vec![old, new]),
    }));
    let settings = Settings {
        grace: GRACE,
        fallback_timeout: FALLBACK,
        ..support::settings::settings("node-a")
    };
    let active = layout.manifest_dir.join(old_key.manifest_file_name());
    let start = std::time::Instant::now();
    // Restart after every pass, for four fallback timeouts.
    while start.elapsed() < FALLBACK * 4 && !active.exists() {
        let mut reconciler = Reconciler::new(
            settings.clone(),
            Store::new(layout.clone()),
            Metrics::new().expect("metrics"),
            node.clone(),
            None,
            None,
        );
        reconciler.reconcile().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        active.exists(),
        "the copy did not run again within {:?} of yielding",
        start.elapsed()
    );
    assert!(
        start.elapsed() >= FALLBACK,
        "fell back before the timeout: {:?}",
        start.elapsed()
    );
}
