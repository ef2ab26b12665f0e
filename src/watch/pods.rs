//! The pod watch (SPEC §5): one reflector on the pods bound to this node, per namespace or
//! cluster-wide, and the API's reachability as that watch sees it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use tokio::task::JoinHandle;

use super::{ReconnectBackoff, Trigger, watcher_reason};
use crate::metrics::Metrics;

/// How long after a start the pod watch has to sync or fail before a pass acts without it
/// (SPEC §5 "a complete view"). An API that refuses connections fails at once; this bounds one
/// that does not answer, so a reboot with no API still activates within it.
pub const FIRST_ANSWER: Duration = Duration::from_secs(2);

/// How one pod watch stands, shared between its task and the reconciler.
#[derive(Debug, Default)]
struct WatchState {
    /// Connected, and the store holds a full list taken since the last failure.
    up: AtomicBool,
    /// Synced or failed at least once since the start: the API has had its say.
    answered: AtomicBool,
}

/// The reflector stores of the pods bound to this node, one per watched namespace (or one for
/// all namespaces), and whether each watch is connected and synced.
pub struct PodWatch {
    streams: Vec<(Store<Pod>, Arc<WatchState>)>,
    tasks: Vec<JoinHandle<()>>,
    /// When the watches were started: the bound of [`FIRST_ANSWER`] counts from here.
    started: Instant,
}

impl PodWatch {
    /// Starts the watches. `namespaces` empty means one cluster-wide watch.
    pub fn spawn(
        client: &Client,
        node_name: &str,
        namespaces: &[String],
        trigger: Trigger,
        metrics: Metrics,
    ) -> Self {
        let cfg = watcher::Config::default()
            .fields(&format!("spec.nodeName={node_name}"))
            .timeout(super::WATCH_TIMEOUT_SECS);
        let apis: Vec<(String, Api<Pod>)> = if namespaces.is_empty() {
            vec![("*".to_string(), Api::all(client.clone()))]
        } else {
            namespaces
                .iter()
                .map(|ns| (ns.clone(), Api::namespaced(client.clone(), ns)))
                .collect()
        };
        let mut streams = Vec::new();
        let mut tasks = Vec::new();
        for (scope, api) in apis {
            let (reader, writer) = reflector::store();
            let state = Arc::new(WatchState::default());
            let cfg = cfg.clone();
            tasks.push(tokio::spawn(follow_pods(
                move || kube::runtime::watcher(api.clone(), cfg.clone()),
                writer,
                scope,
                state.clone(),
                trigger.clone(),
                metrics.clone(),
            )));
            streams.push((reader, state));
        }
        Self {
            streams,
            tasks,
            started: Instant::now(),
        }
    }

    /// Every pod bound here, or `None` while any watch is disconnected or not yet synced: a
    /// partial list must never look like "the parent is gone".
    pub fn pods(&self) -> Option<Vec<Arc<Pod>>> {
        if !self.is_reachable() {
            return None;
        }
        Some(self.streams.iter().flat_map(|(s, _)| s.state()).collect())
    }

    /// True when every watch is connected and has delivered its initial list.
    pub fn is_reachable(&self) -> bool {
        self.streams
            .iter()
            .all(|(_, w)| w.up.load(Ordering::Relaxed))
    }

    /// `None` once the API's side of the view is in: every watch has synced or failed since the
    /// start, or [`FIRST_ANSWER`] has passed; before that, "no API view" only means nobody has
    /// asked yet, and a pass must not activate on it. Otherwise when that bound ends, so the
    /// reconciler looks again then (a watch that answers sooner wakes it itself).
    pub fn settles_at(&self) -> Option<Instant> {
        let answered = (self.streams.iter()).all(|(_, w)| w.answered.load(Ordering::Relaxed));
        let bound = self.started + FIRST_ANSWER;
        (!answered && Instant::now() < bound).then_some(bound)
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Follows one pod watch into its store. After any failure the watch starts over with a fresh
/// list, whose end (`InitDone`) says the API answers again: a watch left to resume from its
/// resourceVersion comes back without a word when no pod changed meanwhile, and the API would
/// stay "unreachable" (no GC, no tokens, no new checkpoints) until some pod on the node changed.
/// Costs one LIST per reconnect, none while the watch holds.
async fn follow_pods<S>(
    mut connect: impl FnMut() -> S,
    mut writer: Writer<Pod>,
    scope: String,
    state: Arc<WatchState>,
    trigger: Trigger,
    metrics: Metrics,
) where
    S: Stream<Item = watcher::Result<Event<Pod>>>,
{
    let _down_when_gone = DownWhenGone {
        state: state.clone(),
        scope: scope.clone(),
        trigger: trigger.clone(),
    };
    let mut backoff = ReconnectBackoff::default();
    // Whether the last thing logged was a failure, so each transition is logged once.
    let mut down_logged = false;
    loop {
        let mut events = std::pin::pin!(connect());
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    writer.apply_watcher_event(&event);
                    if matches!(event, Event::Init | Event::InitApply(_)) {
                        continue;
                    }
                    if !state.up.swap(true, Ordering::Relaxed) {
                        tracing::info!(scope = %scope, action = "api_reachable", "pod watch synced with the API server");
                    }
                    state.answered.store(true, Ordering::Relaxed);
                    down_logged = false;
                    backoff.reset();
                    metrics.synced("api");
                    trigger.notify_one();
                }
                Err(e) => {
                    let reason = watcher_reason(&e);
                    metrics.api_error("pods", reason);
                    state.up.store(false, Ordering::Relaxed);
                    state.answered.store(true, Ordering::Relaxed);
                    if !down_logged {
                        down_logged = true;
                        if reason == "forbidden" {
                            tracing::error!(scope = %scope, action = "api_unreachable", reason, error = %e, "not allowed to watch pods; check the agent's RBAC for this namespace");
                        } else {
                            tracing::warn!(scope = %scope, action = "api_unreachable", reason, error = %e, "cannot reach the API server; retrying, and removing nothing until it is back");
                        }
                    } else {
                        tracing::debug!(scope = %scope, reason, error = %e, "pod watch still failing");
                    }
                    trigger.notify_one();
                    break;
                }
            }
        }
        tokio::time::sleep(backoff.next().unwrap_or(ReconnectBackoff::MAX)).await;
    }
}

/// Marks a pod watch down when its task ends, returns or panics alike (issue 11.5): its store is
/// frozen from then on, and a frozen list must read as "unknown", never as the pods bound here.
/// A panic is logged here (`follow_pods` itself never returns: a watch that fails or ends starts
/// over); an abort (the agent stopping) is not an error.
struct DownWhenGone {
    state: Arc<WatchState>,
    scope: String,
    trigger: Trigger,
}

impl Drop for DownWhenGone {
    fn drop(&mut self) {
        self.state.up.store(false, Ordering::Relaxed);
        self.trigger.notify_one();
        if std::thread::panicking() {
            tracing::error!(scope = %self.scope, action = "api_unreachable", component = "pod_watch", "pod watch panicked: the API view is unknown from now on (nothing is removed)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use futures::stream;
    use tokio::sync::Notify;

    type Script = Vec<watcher::Result<Event<Pod>>>;

    /// Runs `follow_pods` over scripted watch streams, one per (re)connect; each stream stays
    /// open after its script, as a watch that resumed and has nothing to say does.
    fn run(scripts: Vec<Script>) -> (Arc<WatchState>, Arc<Mutex<usize>>, JoinHandle<()>) {
        let state = Arc::new(WatchState::default());
        let connects = Arc::new(Mutex::new(0));
        let mut scripts = scripts.into_iter();
        let counter = connects.clone();
        let connect = move || {
            if let Ok(mut n) = counter.lock() {
                *n += 1;
            }
            stream::iter(scripts.next().unwrap_or_default()).chain(stream::pending())
        };
        let (_, writer) = reflector::store();
        let metrics = Metrics::new().expect("metrics");
        let task = tokio::spawn(follow_pods(
            connect,
            writer,
            "test".to_string(),
            state.clone(),
            Arc::new(Notify::new()),
            metrics,
        ));
        (state, connects, task)
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn api_is_reachable_again_after_a_failure_without_any_pod_change() {
        // Synced, then the watch fails; what follows says nothing (no pod changed). The watch
        // starts over with a list, and its end marks the API reachable again.
        let (state, connects, task) = run(vec![
            vec![
                Ok(Event::Init),
                Ok(Event::InitDone),
                Err(watcher::Error::NoResourceVersion),
            ],
            vec![Ok(Event::Init), Ok(Event::InitDone)],
        ]);
        until("reconnected", || connects.lock().is_ok_and(|n| *n == 2)).await;
        until("reachable again", || state.up.load(Ordering::Relaxed)).await;
        task.abort();
    }

    #[tokio::test]
    async fn a_watch_that_fails_at_once_has_answered_but_is_not_reachable() {
        // An API that refuses connections settles the view at once: unknown, not "not asked".
        let (state, _, task) = run(vec![vec![
            Ok(Event::Init),
            Err(watcher::Error::NoResourceVersion),
        ]]);
        until("answered", || state.answered.load(Ordering::Relaxed)).await;
        assert!(!state.up.load(Ordering::Relaxed));
        task.abort();
    }

    #[tokio::test]
    async fn a_watch_that_has_not_answered_leaves_the_view_unsettled() {
        let (state, _, task) = run(vec![vec![Ok(Event::Init)]]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!state.answered.load(Ordering::Relaxed));
        assert!(!state.up.load(Ordering::Relaxed));
        task.abort();
    }

    /// Issue 11.5: a pod watch whose task is gone (it panicked, or was stopped) leaves a frozen
    /// store behind; it must not stay reported live.
    #[tokio::test]
    async fn a_pod_watch_that_ends_is_not_reported_live() {
        let (state, _, task) = run(vec![vec![Ok(Event::Init), Ok(Event::InitDone)]]);
        until("synced", || state.up.load(Ordering::Relaxed)).await;
        task.abort();
        until("down once its task is gone", || {
            !state.up.load(Ordering::Relaxed)
        })
        .await;
    }
}
