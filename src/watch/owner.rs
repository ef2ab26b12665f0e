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
                    Verdict::Deleted => {
                        if !flag.swap(true, Ordering::Relaxed) {
                            tracing::info!(daemonset = %owner, action = "uninstall", "the agent's DaemonSet is being deleted: removing every checkpoint on this node, then its own");
                            trigger.notify_one();
                        }
                    }
                    Verdict::Orphaning => {
                        tracing::info!(daemonset = %owner, action = "orphaned", "the agent's DaemonSet is being deleted leaving its pods (--cascade=orphan): this pod keeps running, and keeps the node's checkpoints");
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
    /// The DaemonSet is being deleted, or is gone, taking its pods with it: an uninstall.
    Deleted,
    /// The DaemonSet is being deleted with `--cascade=orphan`: its pods keep running.
    Orphaning,
    /// A DaemonSet of that name exists again after being deleted (delete and recreate, or a new
    /// DaemonSet adopting the orphaned pods).
    Back,
    /// Nothing new.
    Unchanged,
}

/// The finalizer the API server puts on an object deleted with `propagationPolicy: Orphan`
/// (`kubectl delete --cascade=orphan`); the garbage collector strips the dependents' owner
/// references, then removes it, and the object goes.
const ORPHAN_FINALIZER: &str = "orphan";

/// The owner watch's reading of its event stream, kept apart from the I/O so it can be tested.
/// Told from the events alone, so the verdict is there the moment the deletion is seen (a SIGTERM
/// follows within moments in an uninstall, and the drain needs it then).
#[derive(Debug, Default)]
struct OwnerState {
    /// The DaemonSet was listed in the current (re)list.
    seen: bool,
    /// The last verdict was `Deleted` or `Orphaning`: a DaemonSet of that name listed again is
    /// `Back`.
    deleted: bool,
    /// The DaemonSet is being deleted with its pods left running: its disappearance is no
    /// uninstall.
    orphaning: bool,
}

impl OwnerState {
    fn on(&mut self, event: &Event<DaemonSet>) -> Verdict {
        let verdict = match event {
            Event::Init => {
                self.seen = false;
                Verdict::Unchanged
            }
            Event::InitApply(ds) | Event::Apply(ds) => {
                self.seen = true;
                if ds.metadata.deletion_timestamp.is_none() {
                    self.orphaning = false;
                    if std::mem::take(&mut self.deleted) {
                        return Verdict::Back;
                    }
                    return Verdict::Unchanged;
                }
                if orphaning(ds) {
                    self.orphaning = true;
                    Verdict::Orphaning
                } else {
                    Verdict::Deleted
                }
            }
            Event::InitDone if self.seen => Verdict::Unchanged,
            Event::InitDone | Event::Delete(_) if self.orphaning => Verdict::Unchanged,
            Event::Delete(ds) if orphaning(ds) => {
                self.orphaning = true;
                Verdict::Orphaning
            }
            Event::InitDone | Event::Delete(_) => Verdict::Deleted,
        };
        if matches!(verdict, Verdict::Deleted | Verdict::Orphaning) {
            self.deleted = true;
        }
        verdict
    }
}

/// Whether a DaemonSet is being deleted with its pods orphaned.
fn orphaning(ds: &DaemonSet) -> bool {
    ds.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == ORPHAN_FINALIZER)
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

    /// Issue 10.6: `kubectl delete ds --cascade=orphan` leaves the agent pods running; the
    /// DaemonSet first gets the `orphan` finalizer, then goes. That is no uninstall; a cascading
    /// deletion (no such finalizer) is.
    #[test]
    fn an_orphaning_deletion_is_not_an_uninstall() {
        let mut orphaned = ds("a", true);
        orphaned.metadata.finalizers = Some(vec!["orphan".into()]);
        let mut state = OwnerState::default();
        assert_eq!(
            state.on(&Event::InitApply(ds("a", false))),
            Verdict::Unchanged
        );
        assert_eq!(state.on(&Event::InitDone), Verdict::Unchanged);
        assert_eq!(state.on(&Event::Apply(orphaned)), Verdict::Orphaning);
        assert_eq!(state.on(&Event::Delete(ds("a", true))), Verdict::Unchanged);
        // A relist that no longer finds it: still the orphaning deletion.
        assert_eq!(state.on(&Event::Init), Verdict::Unchanged);
        assert_eq!(state.on(&Event::InitDone), Verdict::Unchanged);
        // A new DaemonSet adopts the pods.
        assert_eq!(state.on(&Event::Apply(ds("b", false))), Verdict::Back);
        // Later, a cascading deletion (helm uninstall) is an uninstall again.
        assert_eq!(state.on(&Event::Delete(ds("b", true))), Verdict::Deleted);
    }
}
