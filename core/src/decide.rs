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
    pub inactive: bool,
    pub active: bool,
}

/// Everything [`decide`] looks at. Maps are keyed by the parent's namespace/name.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
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
    /// Digest of the checkpoint each seen parent sanitizes to now (from the API or the kubelet).
    pub desired: &'a BTreeMap<PodKey, u64>,
    /// Digest of what the agent last wrote for each checkpoint in this process.
    pub written: &'a BTreeMap<PodKey, u64>,
    /// Checkpoint files found on disk.
    pub disk: &'a BTreeMap<PodKey, OnDiskState>,
    /// Persisted removal deadlines.
    pub deadlines: &'a BTreeMap<PodKey, Timestamp>,
    /// The agent's own DaemonSet is being deleted: it is being uninstalled from the node, and
    /// must leave nothing behind while it still can.
    pub uninstalling: bool,
    /// A newer pod of the agent's own DaemonSet is listed on this node (a rolling update): when
    /// the agent is gone from the API, only its own checkpoint goes.
    pub replaced: bool,
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
    pub actions: Vec<Action>,
    pub wake_at: Option<Timestamp>,
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
    if inp.now >= deadline {
        Removal::Due
    } else {
        out.wake_at = Some(out.wake_at.map_or(deadline, |w| w.min(deadline)));
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
    if has_checkpoint
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

/// Whether removal must wait: a successor exists (or one made the copy yield) that has not yet
/// been Ready here, so the predecessor's checkpoint is the last known good.
fn awaits_ready_successor(inp: &Inputs<'_>, key: &PodKey) -> bool {
    let yielded = inp.yields.get(key);
    if yielded.is_some_and(|y| y.ready_seen) {
        return false;
    }
    yielded.is_some() || successors(inp, key).any(|(_, p)| !p.ready)
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
            // it): the copy comes back at once. Unseen (no API, no kubelet): wait for the timeout.
            let mut y = y.clone();
            y.fell_back |= pods_here(inp).is_some();
            y
        }
        (None, None) => return Succession::None,
    };
    state.ready_seen |= started.is_some_and(|(_, s)| s.ready && s.uid == state.successor);
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
mod succession_tests;

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "node-a";

    fn key(name: &str) -> PodKey {
        PodKey::new("kube-system", name)
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("valid test time")
    }

    /// One tick's world, built up in the test's own words.
    #[derive(Clone, Debug)]
    struct World {
        now: Timestamp,
        me: Option<PodKey>,
        api: Observation<BTreeMap<PodKey, ApiParent>>,
        running: Observation<BTreeSet<PodKey>>,
        desired: BTreeMap<PodKey, u64>,
        written: BTreeMap<PodKey, u64>,
        disk: BTreeMap<PodKey, OnDiskState>,
        deadlines: BTreeMap<PodKey, Timestamp>,
        uninstalling: bool,
        replaced: bool,
    }

    impl World {
        fn new() -> Self {
            Self {
                now: t(0),
                me: None,
                api: Observation::Unknown,
                running: Observation::Known(BTreeSet::new()),
                desired: BTreeMap::new(),
                written: BTreeMap::new(),
                disk: BTreeMap::new(),
                deadlines: BTreeMap::new(),
                uninstalling: false,
                replaced: false,
            }
        }
        fn api_up(mut self) -> Self {
            self.api = Observation::Known(BTreeMap::new());
            self
        }
        fn listed(mut self, k: &PodKey, started_here: bool) -> Self {
            let mut m = self.api.known().cloned().unwrap_or_default();
            m.insert(
                k.clone(),
                ApiParent {
                    started_here,
                    ..ApiParent::default()
                },
            );
            self.api = Observation::Known(m);
            self
        }
        fn running(mut self, k: &PodKey) -> Self {
            let mut s = self.running.known().cloned().unwrap_or_default();
            s.insert(k.clone());
            self.running = Observation::Known(s);
            self
        }
        fn runtime_unknown(mut self) -> Self {
            self.running = Observation::Unknown;
            self
        }
        fn inactive(mut self, k: &PodKey) -> Self {
            self.disk.entry(k.clone()).or_default().inactive = true;
            self.written.insert(k.clone(), 1);
            self.desired.insert(k.clone(), 1);
            self
        }
        fn active(mut self, k: &PodKey) -> Self {
            self.disk.entry(k.clone()).or_default().active = true;
            self
        }
        /// On disk, but no parent sanitizes to it now (API down after a reboot, say).
        fn only_on_disk(mut self, k: &PodKey) -> Self {
            self.disk.entry(k.clone()).or_default().inactive = true;
            self.desired.remove(k);
            self.written.remove(k);
            self
        }
        fn desired(mut self, k: &PodKey, digest: u64) -> Self {
            self.desired.insert(k.clone(), digest);
            self
        }
        fn deadline(mut self, k: &PodKey, at: Timestamp) -> Self {
            self.deadlines.insert(k.clone(), at);
            self
        }
        fn me(mut self, k: &PodKey) -> Self {
            self.me = Some(k.clone());
            self
        }
        fn at(mut self, now: Timestamp) -> Self {
            self.now = now;
            self
        }
        fn decide(&self) -> Decision {
            decide(&Inputs {
                now: self.now,
                grace: Duration::from_secs(60),
                node_name: NODE,
                me: self.me.as_ref(),
                api: &self.api,
                kubelet: &Observation::Unknown,
                remembered: &BTreeMap::new(),
                yields: &BTreeMap::new(),
                fallback_timeout: Duration::from_secs(300),
                running: &self.running,
                desired: &self.desired,
                written: &self.written,
                disk: &self.disk,
                deadlines: &self.deadlines,
                uninstalling: self.uninstalling,
                replaced: self.replaced,
            })
        }
        fn actions(&self) -> Vec<Action> {
            self.decide().actions
        }
    }

    fn activate(k: &PodKey) -> Action {
        Action::Activate(k.clone())
    }
    fn deactivate(k: &PodKey, r: DeactivateReason) -> Action {
        Action::Deactivate(k.clone(), r)
    }
    fn remove(k: &PodKey) -> Action {
        Action::Remove(k.clone())
    }
    fn write(k: &PodKey) -> Action {
        Action::WriteInactive(k.clone())
    }

    // --- the original tool's one-tick scenarios ---

    #[test]
    fn inactive_checkpoint_with_nothing_running_and_api_down_starts() {
        let a = key("apiserver");
        assert_eq!(World::new().only_on_disk(&a).actions(), vec![activate(&a)]);
    }

    #[test]
    fn running_parent_keeps_its_checkpoint_inactive() {
        let a = key("apiserver");
        let w = World::new().inactive(&a).running(&a);
        assert_eq!(w.actions(), vec![]);
        assert_eq!(w.api_up().listed(&a, true).actions(), vec![]);
    }

    #[test]
    fn api_up_without_the_parent_removes_after_the_grace_period() {
        let a = key("apiserver");
        let first = World::new().api_up().inactive(&a).running(&a);
        let d = first.decide();
        assert_eq!(d.actions, vec![Action::SetDeadline(a.clone(), t(60))]);
        assert_eq!(d.wake_at, Some(t(60)));

        let waiting = World::new()
            .api_up()
            .inactive(&a)
            .deadline(&a, t(60))
            .at(t(59));
        assert_eq!(waiting.actions(), vec![], "nothing before the deadline");
        assert_eq!(waiting.decide().wake_at, Some(t(60)));

        let due = waiting.at(t(60));
        assert_eq!(due.actions(), vec![remove(&a)]);
    }

    #[test]
    fn api_lists_parent_that_is_not_running_starts_the_checkpoint() {
        let a = key("apiserver");
        let w = World::new().api_up().listed(&a, true).inactive(&a);
        assert_eq!(w.actions(), vec![activate(&a)]);
    }

    #[test]
    fn active_checkpoint_stops_when_the_parent_runs() {
        let a = key("apiserver");
        let w = World::new().inactive(&a).active(&a).running(&a);
        assert_eq!(
            w.actions(),
            vec![deactivate(&a, DeactivateReason::ParentRunning)]
        );
        let up = w.api_up().listed(&a, true);
        assert_eq!(
            up.actions(),
            vec![deactivate(&a, DeactivateReason::ParentRunning)]
        );
    }

    #[test]
    fn active_and_inactive_files_give_a_single_removal_deactivating_first() {
        let a = key("apiserver");
        let w = World::new()
            .api_up()
            .only_on_disk(&a)
            .active(&a)
            .deadline(&a, t(-1));
        assert_eq!(
            w.actions(),
            vec![deactivate(&a, DeactivateReason::Removal), remove(&a)]
        );
    }

    #[test]
    fn removal_waits_while_the_runtime_still_runs_the_copy() {
        let a = key("apiserver");
        let copy = a.static_pod_key(NODE);
        let w = World::new()
            .api_up()
            .only_on_disk(&a)
            .active(&a)
            .running(&copy)
            .deadline(&a, t(-1));
        assert_eq!(w.actions(), vec![deactivate(&a, DeactivateReason::Removal)]);
        let deactivated = World::new()
            .api_up()
            .only_on_disk(&a)
            .running(&copy)
            .deadline(&a, t(-1));
        assert_eq!(deactivated.actions(), vec![], "copy still running: wait");
        assert_eq!(
            deactivated.clone().runtime_unknown().actions(),
            vec![],
            "runtime cannot say: wait"
        );
        let stopped = World::new().api_up().only_on_disk(&a).deadline(&a, t(-1));
        assert_eq!(stopped.actions(), vec![remove(&a)]);
    }

    #[test]
    fn own_checkpoint_always_starts() {
        let me = key("pod-checkpointer");
        for w in [
            World::new().me(&me).inactive(&me),
            World::new().me(&me).inactive(&me).running(&me),
            World::new().me(&me).inactive(&me).runtime_unknown(),
            World::new()
                .me(&me)
                .api_up()
                .listed(&me, false)
                .inactive(&me),
            World::new()
                .me(&me)
                .api_up()
                .listed(&me, true)
                .inactive(&me)
                .running(&me),
        ] {
            assert_eq!(w.actions(), vec![activate(&me)]);
        }
        let active = World::new().me(&me).inactive(&me).active(&me).running(&me);
        assert_eq!(active.actions(), vec![], "never deactivated while listed");
    }

    #[test]
    fn own_first_checkpoint_is_written_then_activated() {
        let me = key("pod-checkpointer");
        let w = World::new()
            .me(&me)
            .api_up()
            .listed(&me, true)
            .running(&me)
            .desired(&me, 7);
        assert_eq!(w.actions(), vec![write(&me), activate(&me)]);
    }

    #[test]
    fn checkpointer_gone_from_the_api_removes_every_checkpoint_and_itself_last() {
        let me = key("pod-checkpointer");
        let a = key("apiserver");
        let b = PodKey::new("monitoring", "prometheus");
        let base = World::new()
            .me(&me)
            .api_up()
            .listed(&a, true)
            .running(&a)
            .inactive(&me)
            .active(&me)
            .inactive(&a)
            .inactive(&b)
            .active(&b);

        // Grace first.
        let first = base.clone().decide();
        assert!(
            first
                .actions
                .contains(&Action::SetDeadline(me.clone(), t(60)))
        );
        assert!(!first.actions.iter().any(|a| matches!(a, Action::Remove(_))));

        // Due: others go first, even those whose parents are listed; self waits.
        let due = base.clone().deadline(&me, t(-1));
        assert_eq!(
            due.actions(),
            vec![
                remove(&a),
                deactivate(&b, DeactivateReason::Removal),
                remove(&b)
            ]
        );

        // Only itself left: files first, then the active copy that runs this code.
        let alone = World::new()
            .me(&me)
            .api_up()
            .inactive(&me)
            .active(&me)
            .deadline(&me, t(-1));
        assert_eq!(
            alone.actions(),
            vec![remove(&me), deactivate(&me, DeactivateReason::Removal)]
        );
        let only_active = World::new()
            .me(&me)
            .api_up()
            .active(&me)
            .deadline(&me, t(-1));
        assert_eq!(
            only_active.actions(),
            vec![deactivate(&me, DeactivateReason::Removal)]
        );
    }

    #[test]
    fn uninstalled_agent_removes_everything_at_once_without_waiting_for_grace() {
        let me = key("pod-checkpointer");
        let a = key("apiserver");
        let mut w = World::new()
            .me(&me)
            .api_up()
            .listed(&me, true)
            .listed(&a, true)
            .running(&a)
            .inactive(&me)
            .active(&me)
            .inactive(&a);
        w.uninstalling = true;
        assert_eq!(w.actions(), vec![remove(&a)], "others first");
        let mut alone = World::new().me(&me).inactive(&me).active(&me);
        alone.uninstalling = true;
        assert_eq!(
            alone.actions(),
            vec![remove(&me), deactivate(&me, DeactivateReason::Removal)],
            "then itself, even with the API gone"
        );
    }

    #[test]
    fn replaced_agent_removes_only_its_own_checkpoint() {
        let me = key("pod-checkpointer-old");
        let a = key("apiserver");
        let mut w = World::new()
            .me(&me)
            .api_up()
            .listed(&a, true)
            .inactive(&me)
            .active(&me)
            .inactive(&a)
            .active(&a)
            .deadline(&me, t(-1));
        w.replaced = true;
        assert_eq!(
            w.actions(),
            vec![remove(&me), deactivate(&me, DeactivateReason::Removal)],
            "the successor keeps the others"
        );
    }

    #[test]
    fn self_removal_waits_for_others_still_running_as_copies() {
        let me = key("pod-checkpointer");
        let a = key("apiserver");
        let w = World::new()
            .me(&me)
            .api_up()
            .inactive(&me)
            .active(&me)
            .only_on_disk(&a)
            .running(&a.static_pod_key(NODE))
            .deadline(&me, t(-1));
        assert_eq!(w.actions(), vec![], "wait until the copy of a is gone");
    }

    #[test]
    fn static_copy_identifies_its_parent() {
        let me = PodKey::own_parent("kube-system", "pod-checkpointer-abcde-node-a", NODE);
        assert_eq!(me, key("pod-checkpointer-abcde"));
        let ds = PodKey::own_parent("kube-system", "pod-checkpointer-abcde", NODE);
        assert_eq!(ds, key("pod-checkpointer-abcde"));
        // The decisions are then the same as for the DaemonSet pod.
        let w = World::new().me(&me).inactive(&me).running(&me);
        assert_eq!(w.actions(), vec![activate(&me)]);
    }

    // --- the rules the original got wrong ---

    #[test]
    fn runtime_unknown_activates_and_deactivates_nothing() {
        let a = key("apiserver");
        for w in [
            World::new().inactive(&a),
            World::new().inactive(&a).active(&a),
            World::new().api_up().listed(&a, true).inactive(&a),
            World::new()
                .api_up()
                .listed(&a, true)
                .inactive(&a)
                .active(&a),
        ] {
            assert_eq!(w.runtime_unknown().actions(), vec![]);
        }
    }

    #[test]
    fn listed_parent_that_never_ran_here_is_not_replaced() {
        let a = key("apiserver");
        let w = World::new().api_up().listed(&a, false).inactive(&a);
        assert_eq!(w.actions(), vec![]);
        // After a reboot with the API down, activation is immediate.
        assert_eq!(World::new().inactive(&a).actions(), vec![activate(&a)]);
    }

    #[test]
    fn api_outage_removes_nothing_however_long() {
        let a = key("apiserver");
        let w = World::new()
            .inactive(&a)
            .active(&a)
            .deadline(&a, t(-3600))
            .at(t(86_400));
        assert_eq!(w.actions(), vec![], "active, nothing runs, nothing removed");
    }

    #[test]
    fn grace_deadline_survives_a_restart() {
        // A fresh process: nothing written yet, deadline loaded from disk.
        let a = key("apiserver");
        let w = World::new()
            .api_up()
            .only_on_disk(&a)
            .deadline(&a, t(30))
            .at(t(10));
        let d = w.decide();
        assert_eq!(d.actions, vec![], "the old deadline stands, no new one");
        assert_eq!(d.wake_at, Some(t(30)));
        assert_eq!(w.at(t(30)).actions(), vec![remove(&a)]);
    }

    #[test]
    fn parent_listed_again_or_recreated_cancels_removal() {
        let a = key("apiserver");
        let w = World::new()
            .api_up()
            .listed(&a, true)
            .running(&a)
            .inactive(&a)
            .deadline(&a, t(-1));
        assert_eq!(w.actions(), vec![Action::ClearDeadline(a.clone())]);
        // A recreated parent has a new UID and has not started yet; the deadline still goes, and
        // nothing is started beside it.
        let recreated = World::new()
            .api_up()
            .listed(&a, false)
            .inactive(&a)
            .deadline(&a, t(-1));
        assert_eq!(recreated.actions(), vec![Action::ClearDeadline(a.clone())]);
    }

    #[test]
    fn parents_in_any_namespace() {
        let a = PodKey::new("team-a", "db");
        let b = PodKey::new("team-b", "db");
        let w = World::new()
            .api_up()
            .listed(&a, true)
            .listed(&b, true)
            .running(&b)
            .inactive(&a)
            .inactive(&b);
        assert_eq!(w.actions(), vec![activate(&a)]);
    }

    #[test]
    fn unlisted_parent_in_grace_is_not_started() {
        let a = key("apiserver");
        let w = World::new().api_up().inactive(&a).deadline(&a, t(30));
        assert_eq!(w.actions(), vec![]);
    }

    #[test]
    fn checkpoints_are_written_when_their_bytes_change() {
        let a = key("apiserver");
        let seen = World::new()
            .api_up()
            .listed(&a, true)
            .running(&a)
            .desired(&a, 1);
        assert_eq!(seen.actions(), vec![write(&a)], "new parent is written");
        let same = World::new()
            .api_up()
            .listed(&a, true)
            .running(&a)
            .inactive(&a);
        assert_eq!(same.actions(), vec![]);
        let changed = same.clone().desired(&a, 2);
        assert_eq!(changed.actions(), vec![write(&a)]);
        let mut deleted = same.clone();
        deleted.disk.remove(&a);
        assert_eq!(deleted.actions(), vec![write(&a)], "missing file rewritten");
    }

    #[test]
    fn new_parent_seen_only_by_the_kubelet_is_written_and_kept() {
        let a = key("apiserver");
        let w = World::new().desired(&a, 1).running(&a);
        assert_eq!(w.actions(), vec![write(&a)]);
    }

    #[test]
    fn deleted_active_checkpoint_is_repaired_while_the_parent_is_down() {
        let a = key("apiserver");
        // Active before; someone removed the file from the static pod directory.
        let w = World::new().inactive(&a);
        assert_eq!(w.actions(), vec![activate(&a)]);
    }

    mod invariants {
        use super::*;
        use proptest::prelude::*;

        fn keys() -> Vec<PodKey> {
            vec![key("a"), key("b"), PodKey::new("other", "c"), key("me")]
        }

        prop_compose! {
            fn world()(
                api in prop::option::of(prop::collection::vec((any::<bool>(), any::<bool>()), 4)),
                running in prop::option::of(prop::collection::vec((any::<bool>(), any::<bool>()), 4)),
                disk in prop::collection::vec((any::<bool>(), any::<bool>()), 4),
                desired in prop::collection::vec(prop::option::of(0u64..3), 4),
                written in prop::collection::vec(prop::option::of(0u64..3), 4),
                deadlines in prop::collection::vec(prop::option::of(-100i64..100), 4),
                with_me in any::<bool>(),
            ) -> World {
                let ks = keys();
                let mut w = World::new();
                w.me = with_me.then(|| key("me"));
                w.api = match api {
                    None => Observation::Unknown,
                    Some(v) => Observation::Known(ks.iter().zip(v).filter(|(_, (l, _))| *l)
                        .map(|(k, (_, s))| (k.clone(), ApiParent { started_here: s, ..ApiParent::default() })).collect()),
                };
                w.running = match running {
                    None => Observation::Unknown,
                    Some(v) => Observation::Known(ks.iter().zip(v).flat_map(|(k, (p, c))| {
                        [p.then(|| k.clone()), c.then(|| k.static_pod_key(NODE))]
                    }).flatten().collect()),
                };
                for (i, k) in ks.iter().enumerate() {
                    let (inactive, active) = disk[i];
                    if inactive || active {
                        w.disk.insert(k.clone(), OnDiskState { inactive, active });
                    }
                    if let Some(d) = desired[i] { w.desired.insert(k.clone(), d); }
                    if let Some(d) = written[i] { w.written.insert(k.clone(), d); }
                    if let Some(d) = deadlines[i] { w.deadlines.insert(k.clone(), t(d)); }
                }
                w
            }
        }

        proptest! {
            #[test]
            fn outage_never_removes(mut w in world()) {
                w.api = Observation::Unknown;
                for a in w.actions() {
                    prop_assert!(!matches!(a, Action::Remove(_) | Action::Deactivate(_, DeactivateReason::Removal) | Action::SetDeadline(..)), "{a:?}");
                }
            }

            #[test]
            fn unknown_runtime_starts_only_the_agents_own_checkpoint_and_stops_nothing_for_a_parent(mut w in world()) {
                w.running = Observation::Unknown;
                for a in w.actions() {
                    let is_me = Some(a.key()) == w.me.as_ref();
                    match a {
                        Action::Activate(_) => prop_assert!(is_me, "{a:?}"),
                        Action::Deactivate(_, DeactivateReason::ParentRunning) => prop_assert!(false, "{a:?}"),
                        // Only the agent's own files may go unseen by the runtime: the copy
                        // running this code is its own.
                        Action::Remove(_) => prop_assert!(is_me, "removal needs the runtime: {a:?}"),
                        _ => {}
                    }
                }
            }

            #[test]
            fn nothing_is_removed_while_its_copy_runs_or_its_parent_is_listed_unless_the_agent_leaves(w in world()) {
                let me_leaving = w.me.as_ref().is_some_and(|me| {
                    w.api.known().is_some_and(|l| !l.contains_key(me))
                        && w.deadlines.get(me).is_some_and(|d| *d <= w.now)
                });
                for a in w.actions() {
                    // The agent's own files go first, while its copy may still run this code.
                    if let Action::Remove(k) = &a
                        && Some(k) != w.me.as_ref()
                    {
                        if let Observation::Known(r) = &w.running {
                            prop_assert!(!r.contains(&k.static_pod_key(NODE)), "{a:?}");
                        }
                        if !me_leaving {
                            prop_assert!(w.api.known().is_some_and(|l| !l.contains_key(k)), "{a:?}");
                        }
                    }
                }
            }

            #[test]
            fn a_key_is_never_both_activated_and_deactivated(w in world()) {
                let acts = w.actions();
                for a in &acts {
                    if let Action::Activate(k) = a {
                        prop_assert!(!acts.iter().any(|b| matches!(b, Action::Deactivate(j, _) if j == k)));
                    }
                }
            }
        }
    }

    #[test]
    fn forgotten_deadline_without_checkpoint_is_cleared() {
        let a = key("apiserver");
        let w = World::new().api_up().deadline(&a, t(5));
        assert_eq!(w.actions(), vec![Action::ClearDeadline(a)]);
    }
}
