//! The rules around [`decide`](crate::decide) that used to live in the reconciler: which pods are
//! this agent's parents, which checkpoints on the shared static pod directory it manages, when it
//! has been replaced by a newer pod of its DaemonSet, which tokens it binds, when a fresh
//! checkpoint must not replace the one on disk, and the views [`Inputs`](crate::decide::Inputs)
//! borrows. The shell gathers, calls these, and carries out the result; nothing here does I/O.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ContainerState, Pod};

use crate::decide::{ApiParent, OnDiskState};
use crate::model::{Observation, PodKey};
use crate::sanitize::{self, Checkpoint, Refusal, Warning};

/// The key a pod is known by everywhere (disk, deadlines, metrics): its namespace and name, or
/// its `generateName` when it has no name yet, as the API client names it.
pub fn key_of(pod: &Pod) -> PodKey {
    let meta = &pod.metadata;
    let name = meta.name.clone().or_else(|| meta.generate_name.clone());
    PodKey::new(
        meta.namespace.clone().unwrap_or_default(),
        name.unwrap_or_default(),
    )
}

/// Whether the API's status says the pod has ever started a container on this node. A parent
/// still pulling its image has not; activating a copy beside it would fight it for ports.
pub fn started_here(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    if status.phase.as_deref() == Some("Running") {
        return true;
    }
    let ran = |s: &Option<ContainerState>| {
        s.as_ref()
            .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
    };
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .any(|c| c.restart_count > 0 || ran(&c.state) || ran(&c.last_state))
}

/// What the rules of SPEC §4 need to know about a pod, from whichever source described it (the
/// API, or the kubelet, which knows its own pods' status without the API).
pub fn facts(pod: &Pod) -> ApiParent {
    let status = pod.status.as_ref();
    let finished = status
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|phase| phase == "Succeeded" || phase == "Failed");
    // Ready, and every container running now: a Ready condition can outlive the container that
    // earned it by a probe period, and a successor that crashed is not the last known good.
    let all_running = status
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| {
            !cs.is_empty()
                && cs
                    .iter()
                    .all(|c| c.state.as_ref().is_some_and(|st| st.running.is_some()))
        });
    let ready = all_running
        && status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
    let controller = (pod.metadata.owner_references.iter().flatten())
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone());
    ApiParent {
        started_here: started_here(pod),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        controller,
        leaving: pod.metadata.deletion_timestamp.is_some() || finished,
        ready,
    }
}

/// Whether `pod` belongs to the DaemonSet named `owner`: how the agent recognises a newer pod of
/// its own DaemonSet after a rolling update.
pub fn owned_by_daemonset(pod: &Pod, owner: &str) -> bool {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet" && o.name == owner)
}

/// Whether writing `checkpoint` would replace a checkpoint on disk that holds a service-account
/// token with one that has none (the token could not be obtained this pass): the older copy
/// keeps working credentials, so it stays.
pub fn loses_token(checkpoint: &Checkpoint, on_disk: bool) -> bool {
    on_disk
        && checkpoint
            .warnings
            .iter()
            .any(|w| matches!(w, Warning::TokenUnavailable { .. }))
}

/// Where this agent works: its node, its namespaces and its own parent. The static pod
/// directory is shared with other agents and tools, so every choice of what to touch goes
/// through here.
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    /// The node the agent runs on; parents bound elsewhere are not its business.
    pub node_name: &'a str,
    /// Namespaces to checkpoint; empty means all.
    pub namespaces: &'a [String],
    /// The agent's own parent, when it knows its pod name.
    pub me: Option<&'a PodKey>,
}

impl Scope<'_> {
    fn namespace_allowed(&self, namespace: &str) -> bool {
        self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == namespace)
    }

    /// A parent to checkpoint: opted in, in an allowed namespace (or the agent's own pod,
    /// wherever it runs), and bound to this node (or not bound yet, as the kubelet lists its
    /// own pods).
    pub fn wanted(&self, pod: &Pod) -> bool {
        let ns_ok = self.namespaces.is_empty()
            || (pod.metadata.namespace.as_deref()).is_some_and(|ns| self.namespace_allowed(ns))
            || self.me.is_some_and(|me| key_of(pod) == *me);
        let node_ok = (pod.spec.as_ref())
            .and_then(|s| s.node_name.as_deref())
            .is_none_or(|n| n == self.node_name);
        ns_ok && node_ok && sanitize::is_parent(pod)
    }

    /// The checkpoints on disk this agent manages: those in its namespaces, and always its own
    /// (its namespace may not be on the list).
    pub fn manages(&self, key: &PodKey) -> bool {
        self.namespace_allowed(&key.namespace) || Some(key) == self.me
    }

    /// The parents of this pass: the API's when it answers (`api` is `Some`), else what the
    /// kubelet still knows, else none.
    pub fn parents(
        &self,
        api: Option<&[Arc<Pod>]>,
        kubelet: &Observation<Vec<Pod>>,
    ) -> Vec<Arc<Pod>> {
        match (api, kubelet) {
            (Some(pods), _) => pods.iter().filter(|p| self.wanted(p)).cloned().collect(),
            (None, Observation::Known(pods)) => pods
                .iter()
                .filter(|p| self.wanted(p))
                .map(|p| Arc::new(p.clone()))
                .collect(),
            (None, Observation::Unknown) => Vec::new(),
        }
    }

    /// The namespaces whose pods the agent must watch: its allow-list and its own namespace,
    /// whether listed or not (it must see its own pod and its DaemonSet's newer pods, or it
    /// would read its own absence as an uninstall); empty means all.
    pub fn watched_namespaces(&self) -> Vec<String> {
        let mut watched = self.namespaces.to_vec();
        if let Some(me) = self.me
            && !watched.is_empty()
            && !watched.contains(&me.namespace)
        {
            watched.push(me.namespace.clone());
        }
        watched
    }

    /// Whether a newer pod of the agent's own DaemonSet (`owner`, remembered on disk) is among
    /// `listed`, every pod the API lists on this node, opted in or not (a newer release may
    /// not checkpoint itself): the agent was replaced (a rolling update), not removed, so only
    /// its own checkpoint should go.
    pub fn replaced(&self, listed: &[Arc<Pod>], owner: Option<&str>) -> bool {
        let (Some(me), Some(owner)) = (self.me, owner) else {
            return false;
        };
        listed.iter().any(|p| {
            let key = key_of(p);
            key != *me && key.namespace == me.namespace && owned_by_daemonset(p, owner)
        })
    }

    /// Whether a parent's tokens are bound to it. The agent's own are not: its static copy runs
    /// after its pod is gone, and a bound token would die with the pod.
    pub fn binds_token(&self, key: &PodKey) -> bool {
        Some(key) != self.me
    }
}

/// Parents whose checkpoint file name another parent of this pass needs too (`a-b`/`c` and
/// `a`/`b-c` both map to `a-b-c.json`, the seed's naming, kept for compatibility). One keeps the
/// file: the one whose checkpoint is on disk (`on_disk`), else the first by namespace and name,
/// so the choice holds from pass to pass. The others are refused, each with the holder's name.
pub fn name_collisions<'a>(
    keys: impl IntoIterator<Item = &'a PodKey>,
    on_disk: impl Fn(&PodKey) -> bool,
) -> BTreeMap<PodKey, Refusal> {
    let mut by_file: BTreeMap<String, Vec<&PodKey>> = BTreeMap::new();
    for key in keys {
        by_file
            .entry(key.manifest_file_name())
            .or_default()
            .push(key);
    }
    let mut refused = BTreeMap::new();
    for (file, mut claims) in by_file.into_iter().filter(|(_, c)| c.len() > 1) {
        claims.sort();
        let holder = claims
            .iter()
            .copied()
            .find(|k| on_disk(k))
            .unwrap_or(claims[0]);
        for key in claims.into_iter().filter(|k| *k != holder) {
            let why = Refusal::NameCollision {
                file: file.clone(),
                holder: holder.to_string(),
            };
            refused.insert(key.clone(), why);
        }
    }
    refused
}

/// The last API copy of each parent, kept after it leaves the API while its checkpoint is on
/// disk: succession (SPEC §4) needs its last known state, and its removal is reported on it.
#[derive(Clone, Debug, Default)]
pub struct Remembered {
    pods: BTreeMap<PodKey, Arc<Pod>>,
    /// The parents of the API's latest list.
    listed: BTreeSet<PodKey>,
}

impl Remembered {
    /// Takes the API's current list of parents.
    pub fn listed(&mut self, parents: &[Arc<Pod>]) {
        self.listed.clear();
        for p in parents {
            let key = key_of(p);
            self.listed.insert(key.clone());
            self.pods.insert(key, p.clone());
        }
    }

    /// Forgets the parents that the API's latest list left out and that have nothing on disk:
    /// refused or never written, they would otherwise stay for the agent's lifetime.
    pub fn forget_gone(&mut self, on_disk: impl Fn(&PodKey) -> bool) {
        let listed = &self.listed;
        self.pods.retain(|k, _| listed.contains(k) || on_disk(k));
    }

    /// Forgets one parent (its checkpoint was removed).
    pub fn forget(&mut self, key: &PodKey) {
        self.pods.remove(key);
    }

    /// The last API copy of one parent.
    pub fn get(&self, key: &PodKey) -> Option<&Arc<Pod>> {
        self.pods.get(key)
    }

    /// How many parents are remembered.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// What [`decide`](crate::decide) needs to know about each.
    pub fn facts(&self) -> BTreeMap<PodKey, ApiParent> {
        (self.pods.iter())
            .map(|(k, p)| (k.clone(), facts(p)))
            .collect()
    }
}

/// Who is who in one pass: the parents, and whether the agent has been replaced.
#[derive(Clone, Debug)]
pub struct Listing {
    /// The parents of this pass (see [`Scope::parents`]).
    pub parents: Vec<Arc<Pod>>,
    /// A newer pod of the agent's DaemonSet is listed (see [`Scope::replaced`]); only ever
    /// true when the API answered, since only the API names every pod on the node.
    pub replaced: bool,
}

/// The parents and the agent's succession, from the API's list (`None` when it did not answer),
/// the kubelet's, and the agent's DaemonSet as remembered on disk.
pub fn listing(
    scope: &Scope<'_>,
    api: Option<&[Arc<Pod>]>,
    kubelet: &Observation<Vec<Pod>>,
    owner: Option<&str>,
) -> Listing {
    let parents = scope.parents(api, kubelet);
    let replaced = api.is_some_and(|listed| scope.replaced(listed, owner));
    Listing { parents, replaced }
}

/// The parents the kubelet lists (it knows them without the API), `Unknown` when it did not
/// answer: a parent it lists, not leaving, is one it will restart by itself.
pub fn kubelet_parents(
    scope: &Scope<'_>,
    kubelet: &Observation<Vec<Pod>>,
) -> Observation<BTreeMap<PodKey, ApiParent>> {
    match kubelet {
        Observation::Known(pods) => Observation::Known(
            pods.iter()
                .filter(|p| scope.wanted(p))
                .map(|p| (key_of(p), facts(p)))
                .collect(),
        ),
        Observation::Unknown => Observation::Unknown,
    }
}

/// The owned maps [`Inputs`](crate::decide::Inputs) borrows, built from the shell's views.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Views {
    /// The parents the API lists here, `Unknown` when it did not answer.
    pub api: Observation<BTreeMap<PodKey, ApiParent>>,
    /// What each parent sanitizes to now.
    pub desired: BTreeMap<PodKey, u64>,
    /// Which checkpoint files exist.
    pub disk: BTreeMap<PodKey, OnDiskState>,
}

impl Views {
    /// `parents` came from the API when `api_up`; otherwise the API view is unknown, whatever
    /// the kubelet listed. `disk` gives, per checkpoint, whether its inactive and active files
    /// exist.
    pub fn new(
        api_up: bool,
        parents: &[Arc<Pod>],
        checkpoints: &BTreeMap<PodKey, Checkpoint>,
        disk: impl IntoIterator<Item = (PodKey, OnDiskState)>,
    ) -> Self {
        let api = if api_up {
            Observation::Known(parents.iter().map(|p| (key_of(p), facts(p))).collect())
        } else {
            Observation::Unknown
        };
        let desired = checkpoints
            .iter()
            .map(|(k, cp)| (k.clone(), cp.digest()))
            .collect();
        Self {
            api,
            desired,
            disk: disk.into_iter().collect(),
        }
    }
}
