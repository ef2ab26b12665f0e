//! What to do about every checkpoint on this node, as a pure function of what the API server, the
//! node and the disk say, and of the time (SPEC §4). No I/O, no clock: the reconciler gathers the
//! views, calls [`decide`], and carries out the [`Action`]s in order.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;

use crate::model::{Observation, PodKey};

/// A parent pod as a source (the API server, or the kubelet) describes it on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiParent {
    /// Whether the parent's status shows it has ever started a container here. A parent that is
    /// still pulling images or starting must not be "replaced" by a copy that fights it for ports.
    pub started_here: bool,
    /// The pod object's uid: a successor is another object, even under the same name.
    pub uid: String,
    /// The uid of its controller (`ownerReferences` with `controller: true`): pods that share it
    /// replace one another (a DaemonSet's new pod after an update or a delete).
    pub controller: Option<String>,
    /// Being deleted, or finished (`Succeeded`/`Failed`): going away on purpose, not to be
    /// stood in for while the API can say so, and not something the kubelet will restart.
    pub leaving: bool,
    /// Ready as the kubelet reports it: a successor that was Ready ends the predecessor's claim.
    pub ready: bool,
}

/// How a parent's checkpoint stands with a successor that has started (SPEC §4 "Replacement"
/// and "Fallback"). Kept by the shell between passes, like the grace deadlines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Yield {
    /// The uid of the successor the copy yielded to.
    pub successor: String,
    /// When it yielded: the fallback timeout counts from here.
    pub since: Timestamp,
    /// The successor has been Ready here: the predecessor's copy is no longer needed.
    pub ready_seen: bool,
    /// The successor was not Ready in time and the predecessor's copy runs again.
    pub fell_back: bool,
}

/// Which checkpoint files exist for one parent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OnDiskState {
    /// The inactive manifest exists: there is something to activate.
    pub inactive: bool,
    /// The manifest is in the kubelet's static pod directory: the kubelet runs (or will run) it.
    pub active: bool,
}

/// Everything [`decide`] looks at. Maps are keyed by the parent's namespace/name.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// The time of the decision, given rather than read so that `decide` stays pure.
    pub now: Timestamp,
    /// How long the API must go without listing a parent before its checkpoint is removed.
    pub grace: Duration,
    /// Used to recognise the static copy the kubelet runs from a checkpoint (`<name>-<node>`).
    pub node_name: &'a str,
    /// The agent's own parent (its DaemonSet pod's key), whose checkpoint is always active.
    pub me: Option<&'a PodKey>,
    /// Parents the API lists on this node; `Unknown` while the API is unreachable or not yet synced.
    pub api: &'a Observation<BTreeMap<PodKey, ApiParent>>,
    /// Parents the kubelet lists (its `/pods`), which it knows without the API; `Unknown` when
    /// it did not answer or is not asked. A parent it lists, not leaving, is one it will restart.
    pub kubelet: &'a Observation<BTreeMap<PodKey, ApiParent>>,
    /// The last API description of parents the API no longer lists, so a predecessor's
    /// controller is still known after its pod object is gone.
    pub remembered: &'a BTreeMap<PodKey, ApiParent>,
    /// Checkpoints that yielded to a successor, and how that stands.
    pub yields: &'a BTreeMap<PodKey, Yield>,
    /// How long a successor that made a copy yield has to become Ready before the copy runs again.
    pub fallback_timeout: Duration,
    /// Pods the runtime runs, by namespace/name; `Unknown` when it did not answer.
    pub running: &'a Observation<BTreeSet<PodKey>>,
    /// The API's side of the view is in: since the agent started, the pod watch has synced, or
    /// failed, or had its short bound to do either. False only in the first moments after a
    /// start, when `api` is `Unknown` because nobody has asked yet, not because the API is down:
    /// a parent the API would call merely starting must not get a copy then (SPEC §5, "a pass
    /// acts only on a complete view"). A reboot with no API sets it within that bound.
    pub api_settled: bool,
    /// Digest of the checkpoint each seen parent sanitizes to now (from the API or the kubelet).
    pub desired: &'a BTreeMap<PodKey, u64>,
    /// Digest of what the agent last wrote for each checkpoint in this process.
    pub written: &'a BTreeMap<PodKey, u64>,
    /// Checkpoint files found on disk.
    pub disk: &'a BTreeMap<PodKey, OnDiskState>,
    /// Since when the API has answered without a break, when the shell knows (it does not
    /// across a restart of the agent): removal waits a whole grace period of reachable API.
    pub api_since: Option<Timestamp>,
    /// Persisted removal deadlines.
    pub deadlines: &'a BTreeMap<PodKey, Timestamp>,
    /// The agent's own DaemonSet is being deleted: it is being uninstalled from the node, and
    /// must leave nothing behind while it still can.
    pub uninstalling: bool,
    /// A newer pod of the agent's own DaemonSet is listed on this node (a rolling update): when
    /// the agent is gone from the API, only its own checkpoint goes.
    pub replaced: bool,
    /// When the agent leaves the node (uninstalled, or its pod gone for good), keep checkpoints
    /// whose copy runs: the copy may be the only thing running its parent, and removing it could
    /// take down a control plane. `false` when a person said to remove them too.
    pub keep_active: bool,
}

/// One step for the shell to carry out. Actions are listed in the order they must run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write (or refresh) the inactive checkpoint and its side files.
    WriteInactive(PodKey),
    /// Put the checkpoint in the kubelet's static pod directory.
    Activate(PodKey),
    /// Take the checkpoint out of the static pod directory.
    Deactivate(PodKey, DeactivateReason),
    /// Delete the inactive checkpoint, then its secrets and configmaps.
    Remove(PodKey),
    /// Start (or keep) the grace period before removal.
    SetDeadline(PodKey, Timestamp),
    /// The parent is listed again: removal is off.
    ClearDeadline(PodKey),
    /// Record how the checkpoint stands with its successor (see [`Yield`]).
    SetYield(PodKey, Yield),
    /// The successor was not Ready within the fallback timeout: run the predecessor's copy
    /// again (last known good), and say so.
    Fallback(PodKey),
}

/// Why a checkpoint leaves the static pod directory; logged and counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeactivateReason {
    /// The parent runs again on this node.
    ParentRunning,
    /// First step of removal.
    Removal,
    /// A successor from the same controller has started here and needs the ports.
    Replaced,
}

impl Action {
    /// The parent this action is about.
    pub fn key(&self) -> &PodKey {
        match self {
            Action::WriteInactive(k)
            | Action::Activate(k)
            | Action::Deactivate(k, _)
            | Action::Remove(k)
            | Action::SetDeadline(k, _)
            | Action::ClearDeadline(k)
            | Action::SetYield(k, _)
            | Action::Fallback(k) => k,
        }
    }

    /// A stable name for logs (the `action` field) and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Action::WriteInactive(_) => "write",
            Action::Activate(_) => "activate",
            Action::Deactivate(..) => "deactivate",
            Action::Remove(_) => "remove",
            Action::SetDeadline(..) => "grace_start",
            Action::ClearDeadline(_) => "grace_cancel",
            Action::SetYield(..) => "yield",
            Action::Fallback(_) => "fallback",
        }
    }
}

/// The actions to take now, and when to look again if nothing else happens first (the earliest
/// pending grace deadline).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// What to do, in order; a failed action skips the later ones for the same key.
    pub actions: Vec<Action>,
    /// The earliest pending deadline, so the loop wakes without a blind timer.
    pub wake_at: Option<Timestamp>,
    /// Checkpoints left in place although the agent leaves the node, because their copy runs
    /// (see [`Inputs::keep_active`]): the shell reports them.
    pub kept: Vec<PodKey>,
}

/// How a checkpoint stands with respect to removal.
enum Removal {
    /// The API lists the parent, or cannot be asked: keep it.
    Keep,
    /// The API has stopped listing it; removal waits for the deadline.
    Grace,
    /// The deadline has passed while the API was reachable.
    Due,
}

/// Decides what to do with every checkpoint, in the order it must be done (SPEC §4).
pub fn decide(inp: &Inputs<'_>) -> Decision {
    let mut out = Decision::default();
    let keys: BTreeSet<&PodKey> = inp
        .desired
        .keys()
        .chain(inp.disk.keys())
        .chain(inp.deadlines.keys())
        .collect();

    let self_due = inp
        .me
        .is_some_and(|me| matches!(removal(inp, me, &mut out), Removal::Due) || inp.uninstalling);
    // Replaced by a newer agent pod: only its own checkpoint goes; the successor keeps the rest.
    if self_due && inp.replaced && !inp.uninstalling {
        if let Some(me) = inp.me.filter(|me| inp.disk.contains_key(*me)) {
            remove_self(me, inp, &mut out);
        }
        return out;
    }
    // The agent itself is gone from the API: every checkpoint goes, its own last.
    if self_due {
        let mut others_left = false;
        for key in keys.iter().copied().filter(|k| Some(*k) != inp.me) {
            if inp.keep_active && inp.disk.get(key).is_some_and(|d| d.active) {
                out.kept.push(key.clone());
                continue;
            }
            others_left |= remove_steps(inp, key, &mut out);
        }
        if let Some(me) = inp
            .me
            .filter(|me| !others_left && inp.disk.contains_key(*me))
        {
            remove_self(me, inp, &mut out);
        }
        return out;
    }

    for key in keys {
        if Some(key) == inp.me {
            keep_self_active(inp, key, &mut out);
            continue;
        }
        let removal = removal(inp, key, &mut out);
        match (succession(inp, key, &mut out), removal) {
            // A successor has been Ready here: the copy stays down and goes after grace.
            (Succession::Done, Removal::Due) => {
                remove_steps(inp, key, &mut out);
            }
            // A successor has started here: it, not the copy, decides what runs.
            (Succession::Done | Succession::Holding, Removal::Keep) => {
                write_if_changed(inp, key, &mut out);
            }
            (Succession::Done | Succession::Holding, _) => {}
            (Succession::None, Removal::Due) if awaits_ready_successor(inp, key) => {
                // Last known good: kept until a successor has been Ready here.
            }
            (Succession::None, Removal::Due) => {
                remove_steps(inp, key, &mut out);
            }
            (Succession::None, Removal::Grace) => {
                // The API says the parent is no longer here; nothing is started for it, and an
                // active copy stays as it is until the grace period ends.
            }
            (Succession::None, Removal::Keep) => activation(inp, key, &mut out),
        }
    }
    out
}

/// Works out the removal state of one checkpoint and records deadline changes.
fn removal(inp: &Inputs<'_>, key: &PodKey, out: &mut Decision) -> Removal {
    let existing = inp.deadlines.get(key).copied();
    let Observation::Known(listed) = inp.api else {
        // An outage never removes anything and leaves deadlines as they are.
        return Removal::Keep;
    };
    if listed.contains_key(key) {
        if existing.is_some() {
            out.actions.push(Action::ClearDeadline(key.clone()));
        }
        return Removal::Keep;
    }
    let has_something = inp.disk.contains_key(key) || inp.desired.contains_key(key);
    if !has_something {
        if existing.is_some() {
            out.actions.push(Action::ClearDeadline(key.clone()));
        }
        return Removal::Keep;
    }
    let deadline = match existing {
        Some(d) => d,
        None => {
            let d = inp.now.checked_add(inp.grace).unwrap_or(Timestamp::MAX);
            out.actions.push(Action::SetDeadline(key.clone(), d));
            d
        }
    };
    // The API must have gone without listing the parent for the whole grace period: time it
    // could not be asked does not count, so the first pass after an outage never removes.
    let due = match inp.api_since {
        Some(since) => deadline.max(since.checked_add(inp.grace).unwrap_or(Timestamp::MAX)),
        None => deadline,
    };
    if inp.now >= due {
        Removal::Due
    } else {
        out.wake_at = Some(out.wake_at.map_or(due, |w| w.min(due)));
        Removal::Grace
    }
}

/// Writes, activates or deactivates one checkpoint whose parent is still wanted here.
fn activation(inp: &Inputs<'_>, key: &PodKey, out: &mut Decision) {
    let on_disk = inp.disk.get(key).copied().unwrap_or_default();
    let writes = write_if_changed(inp, key, out);
    let has_checkpoint = on_disk.inactive || writes;
    let Observation::Known(running) = inp.running else {
        // Unknown is not "stopped": without an answer from the runtime nothing moves.
        return;
    };
    let parent_running = running.contains(key);
    if parent_running {
        if on_disk.active {
            out.actions.push(Action::Deactivate(
                key.clone(),
                DeactivateReason::ParentRunning,
            ));
        }
        return;
    }
    let listed = match inp.api {
        Observation::Known(listed) => listed.get(key),
        Observation::Unknown => None,
    };
    // Starting (image pull, first start): a copy would fight it for ports.
    let merely_starting = listed.is_some_and(|p| !p.started_here);
    // Being deleted or finished, while the API can say so: going away on purpose.
    let leaving = listed.is_some_and(|p| p.leaving);
    // Half a view: right after a start the API has not been asked yet, and may yet say
    // "merely starting" or "leaving". Deactivating above is safe on the runtime's word alone.
    if has_checkpoint
        && inp.api_settled
        && !on_disk.active
        && !merely_starting
        && !leaving
        && !kubelet_restarts(inp, key)
    {
        out.actions.push(Action::Activate(key.clone()));
    }
}

/// Whether the kubelet answers and still lists the parent, not leaving: restarting it is the
/// kubelet's job, and a copy would run beside it. After a reboot with the API down the kubelet
/// lists no API pods, so this never delays that recovery.
fn kubelet_restarts(inp: &Inputs<'_>, key: &PodKey) -> bool {
    matches!(inp.kubelet, Observation::Known(pods) if pods.get(key).is_some_and(|p| !p.leaving))
}

/// The pods on this node as the freshest source says: the API when it answers, else the kubelet.
fn pods_here<'a>(inp: &Inputs<'a>) -> Option<&'a BTreeMap<PodKey, ApiParent>> {
    inp.api.known().or_else(|| inp.kubelet.known())
}

/// The controller of a parent, from whoever still describes it.
fn controller_of<'a>(inp: &Inputs<'a>, key: &PodKey) -> Option<&'a str> {
    [inp.api.known(), inp.kubelet.known(), Some(inp.remembered)]
        .into_iter()
        .flatten()
        .find_map(|pods| pods.get(key))
        .and_then(|p| p.controller.as_deref())
}

/// Other pods on this node with the parent's controller, not leaving: its successors.
fn successors<'a>(
    inp: &Inputs<'a>,
    key: &'a PodKey,
) -> impl Iterator<Item = (&'a PodKey, &'a ApiParent)> + 'a {
    let controller = controller_of(inp, key);
    pods_here(inp).into_iter().flatten().filter(move |(k, p)| {
        *k != key && !p.leaving && controller.is_some() && p.controller.as_deref() == controller
    })
}

/// Whether removal must wait: the copy serves a controller's pod, or a successor exists (or one
/// made the copy yield) that has not yet been Ready here, so the predecessor's checkpoint is the
/// last known good.
fn awaits_ready_successor(inp: &Inputs<'_>, key: &PodKey) -> bool {
    let yielded = inp.yields.get(key);
    if yielded.is_some_and(|y| y.ready_seen) {
        return false;
    }
    // A copy that serves a controller's pod is the last known good until a successor is Ready:
    // a DaemonSet creates the replacement only after the old pod is gone, and removing the copy
    // first would take a single self-hosted API server down with nothing to replace it.
    let serving = inp.disk.get(key).is_some_and(|d| d.active) && controller_of(inp, key).is_some();
    serving || yielded.is_some() || successors(inp, key).any(|(_, p)| !p.ready)
}

/// Where a checkpoint stands with the successors of its parent.
enum Succession {
    /// No successor has started here: the ordinary rules apply.
    None,
    /// A successor has started and the copy yielded to it, or fell back from it: this decided
    /// whether the copy runs.
    Holding,
    /// A successor has been Ready here: the copy stays down and is removed after grace.
    Done,
}

/// Replacement and fallback (SPEC §4): yield at once to a newly started successor; stay down
/// while it has time to become Ready; run again (last known good) when it did not in time.
fn succession(inp: &Inputs<'_>, key: &PodKey, out: &mut Decision) -> Succession {
    let on_disk = inp.disk.get(key).copied().unwrap_or_default();
    let previous = inp.yields.get(key);
    let failed = |uid: &str| previous.is_some_and(|y| y.fell_back && y.successor == uid);
    // A successor the copy already fell back from is passed over for any other that started.
    let started = successors(inp, key)
        .filter(|(_, p)| p.started_here)
        .min_by_key(|(_, p)| failed(&p.uid));
    let mut state = match (started, previous) {
        (Some((_, s)), Some(y)) if y.successor == s.uid || y.ready_seen => y.clone(),
        (Some((_, s)), _) => Yield {
            successor: s.uid.clone(),
            since: inp.now,
            ready_seen: false,
            fell_back: false,
        },
        // Ready seen, or fell back: a rollback deletes the failed successor before creating
        // the next, and the copy that fell back is all that serves meanwhile.
        (None, Some(y)) if y.ready_seen || y.fell_back => y.clone(),
        (None, Some(y)) => {
            // The successor it yielded to is gone before it was Ready (a rollback deleted
            // it): the copy comes back at once. Still listed but not seen started (the
            // kubelet's `/pods` carries the status the API last gave it), or nothing answers:
            // wait for the timeout.
            let mut y = y.clone();
            let listed = successors(inp, key).any(|(_, p)| p.uid == y.successor);
            y.fell_back |= pods_here(inp).is_some() && !listed;
            y
        }
        (None, None) => return Succession::None,
    };
    // A hostNetwork successor's readiness probe can be answered by the copy that still holds
    // the ports: its Ready counts only once the copy has stopped.
    let copy = key.static_pod_key(inp.node_name);
    let copy_stopped = !on_disk.active
        && matches!(inp.running, Observation::Known(running) if !running.contains(&copy));
    state.ready_seen |=
        copy_stopped && started.is_some_and(|(_, s)| s.ready && s.uid == state.successor);
    let due = state
        .since
        .checked_add(inp.fallback_timeout)
        .unwrap_or(Timestamp::MAX);
    if !state.ready_seen && !state.fell_back && inp.now >= due {
        state.fell_back = true;
    }
    if previous != Some(&state) {
        out.actions
            .push(Action::SetYield(key.clone(), state.clone()));
    }
    if state.ready_seen {
        if on_disk.active {
            out.actions
                .push(Action::Deactivate(key.clone(), DeactivateReason::Replaced));
        }
        return Succession::Done;
    }
    if state.fell_back {
        if !on_disk.active && on_disk.inactive {
            out.actions.push(Action::Fallback(key.clone()));
        }
        return Succession::Holding;
    }
    if on_disk.active {
        out.actions
            .push(Action::Deactivate(key.clone(), DeactivateReason::Replaced));
    }
    out.wake_at = Some(out.wake_at.map_or(due, |w| w.min(due)));
    Succession::Holding
}

/// The agent's own checkpoint is always active: the lock decides which copy works.
fn keep_self_active(inp: &Inputs<'_>, key: &PodKey, out: &mut Decision) {
    let on_disk = inp.disk.get(key).copied().unwrap_or_default();
    let writes = write_if_changed(inp, key, out);
    if (on_disk.inactive || writes) && !on_disk.active {
        out.actions.push(Action::Activate(key.clone()));
    }
}

/// Queues a write when the sanitized checkpoint differs from what this process last wrote, or
/// when the inactive file is missing.
fn write_if_changed(inp: &Inputs<'_>, key: &PodKey, out: &mut Decision) -> bool {
    let on_disk = inp.disk.get(key).is_some_and(|d| d.inactive);
    match inp.desired.get(key) {
        Some(digest) if !on_disk || inp.written.get(key) != Some(digest) => {
            out.actions.push(Action::WriteInactive(key.clone()));
            true
        }
        _ => false,
    }
}

/// The next removal steps for one checkpoint: deactivate, wait until the runtime no longer runs
/// the copy, then delete. Returns true while the checkpoint is still on disk.
fn remove_steps(inp: &Inputs<'_>, key: &PodKey, out: &mut Decision) -> bool {
    let Some(on_disk) = inp.disk.get(key).copied() else {
        return false;
    };
    if on_disk.active {
        out.actions
            .push(Action::Deactivate(key.clone(), DeactivateReason::Removal));
    }
    let copy = key.static_pod_key(inp.node_name);
    match inp.running {
        Observation::Known(running) if !running.contains(&copy) => {
            out.actions.push(Action::Remove(key.clone()));
        }
        // Still running, or the runtime cannot say: wait for the next look.
        _ => {}
    }
    true
}

/// Removes the agent's own checkpoint. Taking it out of the static pod directory makes the
/// kubelet stop the copy that may be running this very code, so that goes last: files first.
fn remove_self(me: &PodKey, inp: &Inputs<'_>, out: &mut Decision) {
    let on_disk = inp.disk.get(me).copied().unwrap_or_default();
    if on_disk.inactive {
        out.actions.push(Action::Remove(me.clone()));
    }
    if on_disk.active {
        out.actions
            .push(Action::Deactivate(me.clone(), DeactivateReason::Removal));
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod succession_tests;
