//! The reconciler end to end against a real store in a temporary directory, with an API side
//! whose server refuses connections or never answers: what the first passes after a start may
//! do before the pod watch has had its say (SPEC §5, "a pass acts only on a complete view").

mod support {
    pub mod settings;
}

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use pod_checkpointer::metrics::Metrics;
use pod_checkpointer::model::{Layout, Observation, PodKey};
use pod_checkpointer::poller::{NodeView, SharedNodeView};
use pod_checkpointer::reconciler::{ApiSide, Reconciler};
use pod_checkpointer::sanitize::{self, Objects};
use pod_checkpointer::store::Store;
use pod_checkpointer::watch::{Events, ObjectWatches, PodWatch, Tokens, Trigger};
use pod_checkpointer_core::fixtures::PodBuilder;
use tokio::sync::Notify;

const NODE: &str = "node-a";

fn key() -> PodKey {
    PodKey::new("kube-system", "apiserver")
}

fn parent() -> Pod {
    PodBuilder::parent("kube-system", "apiserver")
        .node(NODE)
        .build()
}

/// A checkpoint on disk from before the start, nothing running, the kubelet not asked: the
/// reboot with its one question left, whether the API would call the parent merely starting.
struct World {
    _tmp: tempfile::TempDir,
    layout: Layout,
    metrics: Metrics,
}

impl World {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let layout = Layout::under_root(tmp.path());
        let store = Store::new(layout.clone());
        store.prepare().expect("prepare");
        let cp = sanitize::sanitize(&parent(), &Objects::default(), &layout).expect("sanitizes");
        store
            .write_inactive(&key(), &cp.manifest_bytes(), &cp.files)
            .expect("seed write");
        Self {
            _tmp: tmp,
            layout,
            metrics: Metrics::new().expect("metrics"),
        }
    }

    /// A reconciler started without its API side, which the agent builds in the background
    /// (issue 10.7) and attaches later.
    fn reconciler_awaiting_api(&self) -> Reconciler {
        let mut r = Reconciler::new(
            support::settings::settings(NODE),
            Store::new(self.layout.clone()),
            self.metrics.clone(),
            node_view(),
            None,
            None,
        );
        r.expect_api();
        r
    }

    /// A reconciler whose API server is at `url`; the pod watch starts now.
    fn reconciler(&self, url: &str) -> Reconciler {
        let config = kube::Config::new(url.parse().expect("url"));
        let client = Client::try_from(config).expect("client");
        let trigger: Trigger = Arc::new(Notify::new());
        let api = ApiSide {
            pods: PodWatch::spawn(&client, NODE, &[], trigger.clone(), self.metrics.clone()),
            objects: ObjectWatches::new(client.clone(), trigger.clone(), self.metrics.clone()),
            tokens: Tokens::new(trigger),
            events: Events::new(client.clone(), NODE),
            uninstall: None,
            client,
        };
        let store = Store::new(self.layout.clone());
        Reconciler::new(
            support::settings::settings(NODE),
            store,
            self.metrics.clone(),
            node_view(),
            None,
            Some(api),
        )
    }

    fn active(&self) -> PathBuf {
        self.layout.manifest_dir.join(key().manifest_file_name())
    }
}

/// Nothing running, the kubelet not asked.
fn node_view() -> SharedNodeView {
    Arc::new(Mutex::new(NodeView {
        running: Observation::Known(BTreeSet::new()),
        kubelet_pods: Observation::Unknown,
    }))
}

/// Passes, as the loop runs them, until the checkpoint is active; how long that took.
async fn passes_until_active(w: &World, r: &mut Reconciler, limit: Duration) -> Duration {
    let started = Instant::now();
    while !w.active().exists() {
        assert!(started.elapsed() < limit, "not activated within {limit:?}");
        r.reconcile().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// Issue 11.9: the first pass after a start, with an API that has not answered yet, must not
/// activate (the API may yet say the parent is merely starting); it asks to be woken when the
/// short bound ends, and the pass then activates, so a reboot with a silent API still recovers.
#[tokio::test]
async fn first_pass_after_a_start_waits_for_the_pod_watch_then_activates_after_the_bound() {
    let w = World::new();
    // Accepts connections (the kernel's backlog) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("listener");
    let url = format!("http://{}", silent.local_addr().expect("addr"));
    let started = Instant::now();
    let mut r = w.reconciler(&url);

    let first = r.reconcile().await;
    assert!(
        !w.active().exists(),
        "activated before the pod watch answered"
    );
    assert_eq!(w.metrics.activations.get(), 0);
    let wake = first.wake_at.expect("a wake-up at the end of the bound");
    let ahead = wake.duration_since(jiff::Timestamp::now());
    assert!(
        ahead.is_positive() && ahead <= jiff::SignedDuration::from_secs(2),
        "wake-up {ahead:?} ahead"
    );

    let took = passes_until_active(&w, &mut r, Duration::from_secs(5)).await;
    let since_start = started.elapsed();
    assert!(
        since_start >= Duration::from_millis(1900),
        "activated after {since_start:?}, before the bound"
    );
    assert_eq!(w.metrics.activations.get(), 1);
    eprintln!(
        "FIGURE silent API: first activation {:.0} ms after the watch started ({took:?} of passes)",
        since_start.as_secs_f64() * 1000.0
    );
}

/// An API that refuses connections (a reboot with no API server anywhere) has answered: the
/// watch fails at once and the checkpoint is activated without waiting for the bound.
#[tokio::test]
async fn an_api_that_refuses_connections_lets_the_first_passes_activate_at_once() {
    let w = World::new();
    let closed = TcpListener::bind("127.0.0.1:0").expect("listener");
    let url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let started = Instant::now();
    let mut r = w.reconciler(&url);
    passes_until_active(&w, &mut r, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1000),
        "activation waited {took:?}: a refused connection is an answer"
    );
    eprintln!(
        "FIGURE refused API: first activation {:.0} ms after the watch started",
        took.as_secs_f64() * 1000.0
    );
}

/// Issue 11.9 again, where the API side is built in the background (issue 10.7): until it is
/// attached, the view is no more complete than with a watch that has not answered. The first
/// passes must not activate; after the same short bound, with no API side yet, they do.
#[tokio::test]
async fn first_passes_before_the_api_side_is_attached_wait_for_the_same_bound() {
    let w = World::new();
    let started = Instant::now();
    let mut r = w.reconciler_awaiting_api();
    let first = r.reconcile().await;
    assert!(
        !w.active().exists(),
        "activated before the API side was even built"
    );
    assert!(first.wake_at.is_some(), "a wake-up at the end of the bound");
    passes_until_active(&w, &mut r, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "activated after {:?}, before the bound",
        started.elapsed()
    );
}
