//! The pod watch (SPEC §5): one reflector on the pods bound to this node, per namespace or
//! cluster-wide, and the API's reachability as that watch sees it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use tokio::task::JoinHandle;

use super::{ReconnectBackoff, Trigger, watcher_reason};
use crate::metrics::Metrics;

/// The reflector stores of the pods bound to this node, one per watched namespace (or one for
/// all namespaces), and whether each watch is connected and synced.
pub struct PodWatch {
    streams: Vec<(Store<Pod>, Arc<AtomicBool>)>,
    tasks: Vec<JoinHandle<()>>,
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
            let up = Arc::new(AtomicBool::new(false));
            let events = kube::runtime::watcher(api, cfg.clone())
                .backoff(ReconnectBackoff::default())
                .reflect(writer);
            tasks.push(tokio::spawn(follow_pods(
                events,
                scope,
                up.clone(),
                trigger.clone(),
                metrics.clone(),
            )));
            streams.push((reader, up));
        }
        Self { streams, tasks }
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
            .all(|(_, up)| up.load(Ordering::Relaxed))
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn follow_pods(
    events: impl Stream<Item = watcher::Result<Event<Pod>>>,
    scope: String,
    up: Arc<AtomicBool>,
    trigger: Trigger,
    metrics: Metrics,
) {
    let _down_when_gone = DownWhenGone {
        up: up.clone(),
        scope: scope.clone(),
        trigger: trigger.clone(),
    };
    let mut events = std::pin::pin!(events);
    // Whether the last thing logged was a failure, so each transition is logged once.
    let mut down_logged = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init | Event::InitApply(_)) => continue,
            Ok(Event::InitDone | Event::Apply(_) | Event::Delete(_)) => {
                if !up.swap(true, Ordering::Relaxed) {
                    tracing::info!(scope = %scope, action = "api_reachable", "pod watch synced with the API server");
                }
                down_logged = false;
                metrics.synced("api");
            }
            Err(e) => {
                let reason = watcher_reason(&e);
                metrics.api_error("pods", reason);
                up.store(false, Ordering::Relaxed);
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
            }
        }
        trigger.notify_one();
    }
    tracing::error!(scope = %scope, action = "api_unreachable", component = "pod_watch", "pod watch stream ended: the API view is unknown from now on (nothing is removed)");
}

/// Marks a pod watch down when its task ends, returns or panics alike (issue 11.5): its store is
/// frozen from then on, and a frozen list must read as "unknown", never as the pods bound here.
/// A panic is logged here; a stream that ended, by [`follow_pods`]; an abort (the agent stopping)
/// is not an error.
struct DownWhenGone {
    up: Arc<AtomicBool>,
    scope: String,
    trigger: Trigger,
}

impl Drop for DownWhenGone {
    fn drop(&mut self) {
        self.up.store(false, Ordering::Relaxed);
        self.trigger.notify_one();
        if std::thread::panicking() {
            tracing::error!(scope = %self.scope, action = "api_unreachable", component = "pod_watch", "pod watch panicked: the API view is unknown from now on (nothing is removed)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11.5: a pod watch whose task ends (or panics) leaves a frozen store behind; it must
    /// not stay reported live.
    #[tokio::test]
    async fn a_pod_watch_that_ends_is_not_reported_live() {
        let up = Arc::new(AtomicBool::new(false));
        let events = futures::stream::iter(vec![Ok::<_, watcher::Error>(Event::<Pod>::InitDone)]);
        let metrics = Metrics::new().expect("metrics");
        follow_pods(
            events,
            "*".into(),
            up.clone(),
            Arc::new(tokio::sync::Notify::new()),
            metrics,
        )
        .await;
        assert!(
            !up.load(Ordering::Relaxed),
            "a watch that ended is not connected"
        );
    }
}
