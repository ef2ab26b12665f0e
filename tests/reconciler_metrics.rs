//! The reconciler's metrics as a scraper sees them while passes run: a series that stays true
//! never disappears, even for an instant (a `for:` alert would start over).

mod support {
    pub mod settings;
}

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use pod_checkpointer::metrics::Metrics;
use pod_checkpointer::model::{Layout, Observation};
use pod_checkpointer::poller::NodeView;
use pod_checkpointer::reconciler::Reconciler;
use pod_checkpointer::store::Store;
use pod_checkpointer_core::fixtures::PodBuilder;
use serde_json::json;

const NODE: &str = "node-a";
const STOPPED: usize = 40;
const REFUSED: usize = 20;

/// A parent the kubelet lists as finished, so with nothing running its copy is activated.
fn stopped(name: &str) -> Pod {
    PodBuilder::parent("kube-system", name)
        .node(NODE)
        .volumes(json!([{"name": "scratch", "emptyDir": {}}]))
        .status(json!({"phase": "Failed"}))
        .build()
}

/// A parent that cannot be checkpointed (a claim).
fn refused(name: &str) -> Pod {
    PodBuilder::parent("kube-system", name)
        .node(NODE)
        .volumes(json!([{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_that_stay_true_never_vanish_during_a_pass() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let layout = Layout::under_root(tmp.path());
    let store = Store::new(layout);
    store.prepare().expect("prepare");
    let metrics = Metrics::new().expect("metrics");
    let mut pods: Vec<Pod> = (0..STOPPED).map(|i| stopped(&format!("s{i}"))).collect();
    pods.extend((0..REFUSED).map(|i| refused(&format!("r{i}"))));
    let node = Arc::new(Mutex::new(NodeView {
        running: Observation::Known(BTreeSet::new()),
        kubelet_pods: Observation::Known(pods),
    }));
    let settings = support::settings::settings(NODE);
    let mut r = Reconciler::new(settings, store, metrics.clone(), node, None, None);
    // Until every copy is active and every refusal is exported.
    for _ in 0..5 {
        r.reconcile().await;
    }
    let activated = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("pod_checkpointer_checkpoint_activated_timestamp_seconds{"))
            .count()
    };
    let refused_line = "pod_checkpointer_refused_pods{reason=";
    let text = metrics.render();
    assert_eq!(activated(&text), STOPPED);
    assert!(text.contains(refused_line));

    let stop = Arc::new(AtomicBool::new(false));
    let gaps = Arc::new(AtomicUsize::new(0));
    let scraper = {
        let (stop, gaps, metrics) = (stop.clone(), gaps.clone(), metrics.clone());
        std::thread::spawn(move || {
            let mut first_gap = None;
            while !stop.load(Ordering::Relaxed) {
                let text = metrics.render();
                let seen = activated(&text);
                if seen != STOPPED || !text.contains(refused_line) {
                    gaps.fetch_add(1, Ordering::Relaxed);
                    first_gap.get_or_insert((seen, text.contains(refused_line)));
                }
            }
            first_gap
        })
    };
    for _ in 0..150 {
        r.reconcile().await;
    }
    stop.store(true, Ordering::Relaxed);
    let first_gap = scraper.join().expect("scraper");
    assert_eq!(
        gaps.load(Ordering::Relaxed),
        0,
        "scrapes saw series missing; first: {first_gap:?} (activation series seen, refused series seen)"
    );
}

#[tokio::test]
async fn series_that_are_gone_are_removed() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = Store::new(Layout::under_root(tmp.path()));
    store.prepare().expect("prepare");
    let metrics = Metrics::new().expect("metrics");
    let node = Arc::new(Mutex::new(NodeView {
        running: Observation::Known(BTreeSet::new()),
        kubelet_pods: Observation::Known(vec![stopped("a"), stopped("b"), refused("r")]),
    }));
    let settings = support::settings::settings(NODE);
    let mut r = Reconciler::new(settings, store, metrics.clone(), node.clone(), None, None);
    for _ in 0..3 {
        r.reconcile().await;
    }
    let text = metrics.render();
    assert!(
        text.contains(r#"checkpoint_activated_timestamp_seconds{namespace="kube-system",pod="a"}"#)
    );
    assert!(
        text.contains(r#"checkpoint_activated_timestamp_seconds{namespace="kube-system",pod="b"}"#)
    );
    assert!(text.contains("pod_checkpointer_refused_pods{reason="));

    // "a" runs again (its copy is deactivated); the refused pod is gone.
    if let Ok(mut view) = node.lock() {
        view.running = Observation::Known(BTreeSet::from([pod_checkpointer::model::PodKey::new(
            "kube-system",
            "a",
        )]));
        view.kubelet_pods = Observation::Known(vec![stopped("a"), stopped("b")]);
    }
    for _ in 0..3 {
        r.reconcile().await;
    }
    let text = metrics.render();
    assert!(
        !text
            .contains(r#"checkpoint_activated_timestamp_seconds{namespace="kube-system",pod="a"}"#)
    );
    assert!(
        text.contains(r#"checkpoint_activated_timestamp_seconds{namespace="kube-system",pod="b"}"#)
    );
    assert!(!text.contains("pod_checkpointer_refused_pods{reason="));
}
