//! The node side of the shell: asks the container runtime (CRI) and the kubelet what runs here,
//! every poll interval, and pokes the reconciler only when an answer changes. Works with the API
//! server gone, which is the whole point.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio_util::sync::CancellationToken;

use crate::admin::Health;
use crate::cri::{CriClient, Running};
use crate::kubelet::{self, KubeletClient};
use crate::metrics::Metrics;
use crate::model::Observation;
use crate::watch::Trigger;

/// What the node said at the last poll.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeView {
    /// Pods running here; from the runtime, or from the kubelet's pod status without a runtime.
    pub running: Observation<Running>,
    /// Pods the kubelet knows, as it reported them.
    pub kubelet_pods: Observation<Vec<Pod>>,
}

impl Default for NodeView {
    fn default() -> Self {
        Self {
            running: Observation::Unknown,
            kubelet_pods: Observation::Unknown,
        }
    }
}

/// Shared, always-current node view.
pub type SharedNodeView = Arc<Mutex<NodeView>>;

/// The sources to poll; at least one is set (checked at start-up). Cheap to clone, so a poller
/// that died can be started again on the same sources.
#[derive(Clone)]
pub struct NodeSources {
    pub cri: Option<CriClient>,
    pub kubelet: Option<KubeletClient>,
}

/// Polls until cancelled. Failures are counted and logged once per transition, not per poll.
pub async fn run(
    sources: NodeSources,
    interval: Duration,
    view: SharedNodeView,
    trigger: Trigger,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cri_ok: Option<bool> = None;
    let mut kubelet_ok: Option<bool> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        // The node side is alive whether or not the sources answer: a runtime that is down is
        // reported through metrics, never by getting the agent restarted.
        health.beat_node();
        let kubelet_pods = match &sources.kubelet {
            None => Observation::Unknown,
            Some(k) => match k.pods().await {
                Ok(answer) => {
                    metrics.synced("kubelet");
                    transition(&mut kubelet_ok, true, "kubelet", None);
                    for bad in &answer.unparsable {
                        tracing::debug!(source = "kubelet", error = %bad, "skipped a pod the kubelet reported that does not parse");
                    }
                    Observation::Known(answer.pods)
                }
                Err(e) => {
                    metrics.kubelet_poll_errors.inc();
                    transition(&mut kubelet_ok, false, "kubelet", Some(e.to_string()));
                    Observation::Unknown
                }
            },
        };
        let running = match &sources.cri {
            Some(cri) => match cri.running().await {
                Ok(r) => {
                    metrics.synced("runtime");
                    transition(&mut cri_ok, true, "runtime", None);
                    Observation::Known(r)
                }
                Err(e) => {
                    metrics.runtime_poll_errors.inc();
                    transition(&mut cri_ok, false, "runtime", Some(e.to_string()));
                    Observation::Unknown
                }
            },
            None => match &kubelet_pods {
                Observation::Known(pods) => Observation::Known(kubelet::running_from_status(pods)),
                Observation::Unknown => Observation::Unknown,
            },
        };
        let next = NodeView {
            running,
            kubelet_pods,
        };
        let changed = match view.lock() {
            Ok(mut cur) if *cur != next => {
                *cur = next;
                true
            }
            _ => false,
        };
        if changed {
            trigger.notify_one();
        }
    }
}

/// Logs a source going up or down once, when it happens.
fn transition(state: &mut Option<bool>, ok: bool, source: &str, error: Option<String>) {
    if *state == Some(ok) {
        return;
    }
    let first = state.is_none();
    *state = Some(ok);
    match (ok, error) {
        (true, _) if !first => {
            tracing::info!(source, action = "source_up", "node source answers again")
        }
        (true, _) => tracing::info!(source, action = "source_up", "node source answers"),
        (false, e) => tracing::warn!(
            source,
            action = "source_down",
            error = e.unwrap_or_default(),
            "node source does not answer; nothing is activated or deactivated on its word until it does"
        ),
    }
}
