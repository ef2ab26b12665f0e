//! Kubernetes Events on parent pods, so an operator sees what the agent did where they look
//! first (`kubectl describe pod`).

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::{Client, Resource};

/// Publishes Kubernetes Events on parent pods so `kubectl describe pod` shows what the agent did.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
}

impl Events {
    /// Events signed by this node's agent, so `kubectl describe` says which node acted.
    pub fn new(client: Client, node_name: &str) -> Self {
        let reporter = Reporter {
            controller: "pod-checkpointer".into(),
            instance: Some(node_name.to_string()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// Fire and forget: an Event that cannot be sent must never hold up the agent.
    pub fn publish(&self, pod: &Pod, reason: &str, action: &str, note: String) {
        self.send(pod, EventType::Normal, reason, action, note);
    }

    /// A Warning Event, for what the pod's owner must fix (a pod that cannot be checkpointed).
    pub fn warn(&self, pod: &Pod, reason: &str, action: &str, note: String) {
        self.send(pod, EventType::Warning, reason, action, note);
    }

    fn send(&self, pod: &Pod, type_: EventType, reason: &str, action: &str, note: String) {
        let reference: ObjectReference = pod.object_ref(&());
        let event = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::debug!(error = %e, "could not publish an Event");
            }
        });
    }
}
