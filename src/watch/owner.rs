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
            let api: Api<DaemonSet> = Api::namespaced(client, &namespace);
            let cfg = watcher::Config::default()
                .fields(&format!("metadata.name={owner}"))
                .timeout(super::WATCH_TIMEOUT_SECS);
            let mut events = std::pin::pin!(kube::runtime::watcher(api, cfg).default_backoff());
            let mut seen = false;
            while let Some(event) = events.next().await {
                let gone = match event {
                    Ok(Event::Init) => {
                        seen = false;
                        false
                    }
                    Ok(Event::InitApply(ds) | Event::Apply(ds)) => {
                        seen = true;
                        ds.metadata.deletion_timestamp.is_some()
                    }
                    Ok(Event::InitDone) => !seen,
                    Ok(Event::Delete(_)) => true,
                    Err(e) => {
                        tracing::debug!(daemonset = %owner, error = %e, "owner watch failing");
                        false
                    }
                };
                if gone && !flag.swap(true, Ordering::Relaxed) {
                    tracing::info!(daemonset = %owner, action = "uninstall", "the agent's DaemonSet is being deleted: removing every checkpoint on this node, then its own");
                    trigger.notify_one();
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
