//! The reconciler and the clock: what it loads at start must not outlast one grace period.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use pod_checkpointer::metrics::Metrics;
use pod_checkpointer::model::{Layout, Observation, PodKey};
use pod_checkpointer::poller::NodeView;
use pod_checkpointer::reconciler::{Reconciler, Settings};
use pod_checkpointer::store::Store;

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
        node_name: "node-a".to_owned(),
        me: None,
        grace: GRACE,
        namespaces: Vec::new(),
        fallback_timeout: Duration::from_secs(300),
        keep_active_on_uninstall: true,
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
