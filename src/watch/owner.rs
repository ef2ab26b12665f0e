//! The agent's own DaemonSet: its name tells a rolling update from a removal, and its deletion is
//! the last moment the agent can learn it should clean the node.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::task::JoinHandle;

use super::Trigger;

/// Watches the DaemonSet that owns the agent's own pod. Its deletion means the agent is being
/// uninstalled: the ServiceAccount and RBAC go with it, so this is the last moment the agent
/// knows it should clean the node. The watch is opened while the permissions still hold, and a
/// watch already open keeps delivering.
pub struct OwnerWatch {
    deleted: Arc<AtomicBool>,
    owner: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

impl OwnerWatch {
    /// Finds the owner of `pod_name` (retrying while the API is away) and watches it. A pod with
    /// no DaemonSet owner (the static copy's mirror pod, a pod run by hand) never reports deletion.
    /// The owner's name, once found, is offered through [`OwnerWatch::owner`] for the store to
    /// remember, so the static copy can recognise a newer pod of the same DaemonSet.
    pub fn spawn(client: Client, namespace: &str, pod_name: &str, trigger: Trigger) -> Self {
        let deleted = Arc::new(AtomicBool::new(false));
        let flag = deleted.clone();
        let found = Arc::new(Mutex::new(None));
        let found_by_task = found.clone();
        let (namespace, pod_name) = (namespace.to_string(), pod_name.to_string());
        let task = tokio::spawn(async move {
            let Some(owner) = daemonset_owner(&client, &namespace, &pod_name).await else {
                return;
            };
            if let Ok(mut slot) = found_by_task.lock() {
                *slot = Some(owner.clone());
            }
            trigger.notify_one();
            let api: Api<DaemonSet> = Api::namespaced(client.clone(), &namespace);
            let cfg = watcher::Config::default()
                .fields(&format!("metadata.name={owner}"))
                .timeout(super::WATCH_TIMEOUT_SECS);
            let mut events = std::pin::pin!(kube::runtime::watcher(api, cfg).default_backoff());
            let mut state = OwnerState::default();
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        tracing::debug!(daemonset = %owner, error = %e, "owner watch failing");
                        continue;
                    }
                };
                match state.on(&event) {
                    Verdict::Deleted if flag.load(Ordering::Relaxed) => {}
                    Verdict::Deleted => {
                        if orphaned(&client, &namespace, &pod_name, &owner).await {
                            tracing::info!(daemonset = %owner, action = "orphaned", "the agent's DaemonSet was deleted leaving its pods (--cascade=orphan): this pod keeps running, and keeps the node's checkpoints");
                            continue;
                        }
                        flag.store(true, Ordering::Relaxed);
                        tracing::info!(daemonset = %owner, action = "uninstall", "the agent's DaemonSet is being deleted: removing every checkpoint on this node, then its own");
                        trigger.notify_one();
                    }
                    Verdict::Back => {
                        if flag.swap(false, Ordering::Relaxed) {
                            tracing::info!(daemonset = %owner, action = "reinstall", "the agent's DaemonSet exists again: no longer uninstalling; checkpoints are written again");
                            trigger.notify_one();
                        }
                    }
                    Verdict::Unchanged => {}
                }
            }
        });
        Self {
            deleted,
            owner: found,
            task,
        }
    }

    /// The name of the DaemonSet that owns the agent's pod, once the API has said it.
    pub fn owner(&self) -> Option<String> {
        self.owner.lock().ok().and_then(|o| o.clone())
    }

    /// True once the owner DaemonSet is being deleted or is gone.
    pub fn deleted(&self) -> bool {
        self.deleted.load(Ordering::Relaxed)
    }
}

impl Drop for OwnerWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether the agent's own pod was left running by a `--cascade=orphan` deletion of its
/// DaemonSet: the garbage collector strips the owner reference from every pod before the
/// DaemonSet goes, while a cascading deletion (`helm uninstall`, plain `kubectl delete`) leaves
/// it until the pod itself is deleted. Anything else (the pod gone, or no answer: the RBAC goes
/// with an uninstall) is read as an uninstall, as before.
async fn orphaned(client: &Client, namespace: &str, pod_name: &str, owner: &str) -> bool {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    match tokio::time::timeout(ORPHAN_CHECK_TIMEOUT, pods.get_opt(pod_name)).await {
        Ok(Ok(Some(pod))) => pod.metadata.deletion_timestamp.is_none() && !owned_by(&pod, owner),
        _ => false,
    }
}

/// How long the orphan check may wait on the API before the deletion counts as an uninstall.
const ORPHAN_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `pod` names the DaemonSet `owner` among its owners.
fn owned_by(pod: &Pod, owner: &str) -> bool {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet" && o.name == owner)
}

/// The name of the DaemonSet that owns the pod, asking until the API answers.
async fn daemonset_owner(client: &Client, namespace: &str, pod_name: &str) -> Option<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut delay = Duration::from_secs(1);
    loop {
        match pods.get_opt(pod_name).await {
            Ok(Some(pod)) => {
                return pod
                    .metadata
                    .owner_references
                    .into_iter()
                    .flatten()
                    .find(|o| o.kind == "DaemonSet")
                    .map(|o| o.name);
            }
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the agent's own pod yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// What the owner watch concluded from one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The DaemonSet is being deleted or is gone.
    Deleted,
    /// Nothing new.
    Unchanged,
    /// A DaemonSet of that name exists again after being deleted.
    Back,
}

/// The owner watch's reading of its event stream, kept apart from the I/O so it can be tested.
#[derive(Debug, Default)]
struct OwnerState {
    /// The DaemonSet was listed in the current (re)list.
    seen: bool,
    /// The last verdict was `Deleted`: a DaemonSet of that name listed again is `Back`.
    deleted: bool,
}

impl OwnerState {
    fn on(&mut self, event: &Event<DaemonSet>) -> Verdict {
        let gone = match event {
            Event::Init => {
                self.seen = false;
                false
            }
            Event::InitApply(ds) | Event::Apply(ds) => {
                self.seen = true;
                ds.metadata.deletion_timestamp.is_some()
            }
            Event::InitDone => !self.seen,
            Event::Delete(_) => true,
        };
        let listed = matches!(event, Event::InitApply(_) | Event::Apply(_)) && !gone;
        if gone {
            self.deleted = true;
            Verdict::Deleted
        } else if listed && std::mem::take(&mut self.deleted) {
            Verdict::Back
        } else {
            Verdict::Unchanged
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ds(uid: &str, deleting: bool) -> DaemonSet {
        let mut ds = DaemonSet::default();
        ds.metadata.name = Some("pod-checkpointer".into());
        ds.metadata.uid = Some(uid.into());
        if deleting {
            ds.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        }
        ds
    }

    /// Issue 10.6: after a delete-and-recreate (or `--cascade=orphan` and a new DaemonSet that
    /// adopts the running pods), the DaemonSet is back: the agent must stop uninstalling.
    #[test]
    fn a_daemonset_that_comes_back_ends_the_uninstall() {
        let mut state = OwnerState::default();
        assert_eq!(
            state.on(&Event::InitApply(ds("a", false))),
            Verdict::Unchanged
        );
        assert_eq!(state.on(&Event::InitDone), Verdict::Unchanged);
        assert_eq!(state.on(&Event::Delete(ds("a", true))), Verdict::Deleted);
        assert_eq!(state.on(&Event::Apply(ds("b", false))), Verdict::Back);
        // A relist that finds it again says the same.
        let mut relisted = OwnerState::default();
        assert_eq!(relisted.on(&Event::Init), Verdict::Unchanged);
        assert_eq!(relisted.on(&Event::InitDone), Verdict::Deleted);
        assert_eq!(relisted.on(&Event::Init), Verdict::Unchanged);
        assert_eq!(
            relisted.on(&Event::InitApply(ds("b", false))),
            Verdict::Back
        );
    }

    /// Issue 10.6: `kubectl delete ds --cascade=orphan` strips the owner reference from the pods
    /// that keep running; a cascading deletion does not.
    #[test]
    fn an_orphaned_agent_pod_is_told_from_one_being_uninstalled() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let mut pod = Pod::default();
        assert!(
            !owned_by(&pod, "pod-checkpointer"),
            "orphaned: no owner left"
        );
        pod.metadata.owner_references = Some(vec![OwnerReference {
            kind: "DaemonSet".into(),
            name: "pod-checkpointer".into(),
            ..Default::default()
        }]);
        assert!(owned_by(&pod, "pod-checkpointer"), "cascading: still owned");
        assert!(!owned_by(&pod, "other"));
    }
}
