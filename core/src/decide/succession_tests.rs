//! Parents that go away on purpose, parents the kubelet restarts itself, and successors from
//! the same controller (SPEC §4: "being deleted", "kubelet will restart by itself",
//! "Replacement", "Fallback"). Each test is one tick of a self-hosted API server's life.

use super::*;

const NODE: &str = "node-a";
const FALLBACK: Duration = Duration::from_secs(300);
const GRACE: Duration = Duration::from_secs(60);
const DS: &str = "ds-uid";

fn key(name: &str) -> PodKey {
    PodKey::new("kube-system", name)
}

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).expect("valid test time")
}

/// A pod of the API server DaemonSet that has started here.
fn pod(uid: &str) -> ApiParent {
    ApiParent {
        started_here: true,
        uid: uid.into(),
        controller: Some(DS.into()),
        leaving: false,
        ready: false,
    }
}

impl ApiParent {
    fn leaving(mut self) -> Self {
        self.leaving = true;
        self
    }
    fn ready(mut self) -> Self {
        self.ready = true;
        self
    }
    fn not_started(mut self) -> Self {
        self.started_here = false;
        self
    }
    fn controlled_by(mut self, uid: Option<&str>) -> Self {
        self.controller = uid.map(Into::into);
        self
    }
}

fn yielded(successor: &str, since: Timestamp) -> Yield {
    Yield {
        successor: successor.into(),
        since,
        ready_seen: false,
        fell_back: false,
    }
}

/// One tick's world, API up and nothing running unless a test says otherwise.
#[derive(Clone)]
struct Tick {
    now: Timestamp,
    api: Observation<BTreeMap<PodKey, ApiParent>>,
    kubelet: Observation<BTreeMap<PodKey, ApiParent>>,
    remembered: BTreeMap<PodKey, ApiParent>,
    yields: BTreeMap<PodKey, Yield>,
    running: Observation<BTreeSet<PodKey>>,
    disk: BTreeMap<PodKey, OnDiskState>,
    deadlines: BTreeMap<PodKey, Timestamp>,
}

impl Tick {
    fn new() -> Self {
        Self {
            now: t(0),
            api: Observation::Known(BTreeMap::new()),
            kubelet: Observation::Unknown,
            remembered: BTreeMap::new(),
            yields: BTreeMap::new(),
            running: Observation::Known(BTreeSet::new()),
            disk: BTreeMap::new(),
            deadlines: BTreeMap::new(),
        }
    }
    fn api_down(mut self) -> Self {
        self.api = Observation::Unknown;
        self
    }
    fn listed(mut self, k: &PodKey, p: ApiParent) -> Self {
        if let Observation::Known(m) = &mut self.api {
            m.insert(k.clone(), p);
        }
        self
    }
    fn kubelet_lists(mut self, k: &PodKey, p: ApiParent) -> Self {
        let mut m = self.kubelet.known().cloned().unwrap_or_default();
        m.insert(k.clone(), p);
        self.kubelet = Observation::Known(m);
        self
    }
    fn kubelet_lists_nothing(mut self) -> Self {
        self.kubelet = Observation::Known(BTreeMap::new());
        self
    }
    fn remembers(mut self, k: &PodKey, p: ApiParent) -> Self {
        self.remembered.insert(k.clone(), p);
        self
    }
    fn yielded(mut self, k: &PodKey, y: Yield) -> Self {
        self.yields.insert(k.clone(), y);
        self
    }
    fn inactive(mut self, k: &PodKey) -> Self {
        self.disk.entry(k.clone()).or_default().inactive = true;
        self
    }
    fn active(mut self, k: &PodKey) -> Self {
        let d = self.disk.entry(k.clone()).or_default();
        d.inactive = true;
        d.active = true;
        self
    }
    fn running(mut self, k: &PodKey) -> Self {
        if let Observation::Known(s) = &mut self.running {
            s.insert(k.clone());
        }
        self
    }
    fn deadline(mut self, k: &PodKey, at: Timestamp) -> Self {
        self.deadlines.insert(k.clone(), at);
        self
    }
    fn at(mut self, now: Timestamp) -> Self {
        self.now = now;
        self
    }
    fn decide(&self) -> Decision {
        decide(&Inputs {
            now: self.now,
            grace: GRACE,
            node_name: NODE,
            me: None,
            api: &self.api,
            kubelet: &self.kubelet,
            remembered: &self.remembered,
            yields: &self.yields,
            fallback_timeout: FALLBACK,
            running: &self.running,
            api_settled: true,
            desired: &BTreeMap::new(),
            written: &BTreeMap::new(),
            disk: &self.disk,
            api_since: None,
            deadlines: &self.deadlines,
            uninstalling: false,
            replaced: false,
            keep_active: true,
        })
    }
    fn actions(&self) -> Vec<Action> {
        self.decide().actions
    }
}

fn activates(actions: &[Action], k: &PodKey) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Activate(x) | Action::Fallback(x) if x == k))
}

fn deactivates(actions: &[Action], k: &PodKey, why: DeactivateReason) -> bool {
    actions.contains(&Action::Deactivate(k.clone(), why))
}

fn removes(actions: &[Action], k: &PodKey) -> bool {
    actions.contains(&Action::Remove(k.clone()))
}

// --- going away on purpose ---

#[test]
fn parent_being_deleted_is_not_activated_while_the_api_is_up() {
    let old = key("kube-apiserver-old");
    let tick = Tick::new().listed(&old, pod("u1").leaving()).inactive(&old);
    assert_eq!(tick.actions(), vec![]);
}

#[test]
fn parent_being_deleted_keeps_a_copy_that_already_runs() {
    // Deleting it killed the only API server; the copy brought the API back. The API still
    // lists the pod as being deleted: taking the copy away now would lose the API again.
    let old = key("kube-apiserver-old");
    let tick = Tick::new().listed(&old, pod("u1").leaving()).active(&old);
    assert_eq!(tick.actions(), vec![]);
}

#[test]
fn api_unreachable_and_last_known_state_being_deleted_still_activates() {
    let old = key("kube-apiserver-old");
    let via_kubelet = Tick::new()
        .api_down()
        .kubelet_lists(&old, pod("u1").leaving())
        .remembers(&old, pod("u1").leaving())
        .inactive(&old);
    assert!(activates(&via_kubelet.actions(), &old));
    let nothing_answers = Tick::new()
        .api_down()
        .remembers(&old, pod("u1").leaving())
        .inactive(&old);
    assert!(activates(&nothing_answers.actions(), &old));
}

#[test]
fn parent_being_deleted_that_still_runs_gets_no_copy_even_with_the_api_down() {
    let old = key("kube-apiserver-old");
    let tick = Tick::new()
        .api_down()
        .kubelet_lists(&old, pod("u1").leaving())
        .running(&old)
        .inactive(&old);
    assert_eq!(tick.actions(), vec![]);
}

#[test]
fn finished_parent_is_not_activated_while_the_api_is_up() {
    let done = key("job-like");
    let tick = Tick::new()
        .listed(&done, pod("u1").leaving())
        .inactive(&done);
    assert!(!activates(&tick.actions(), &done));
}

// --- the kubelet restarts its own pods ---

#[test]
fn parent_the_kubelet_still_lists_is_left_to_the_kubelet() {
    let p = key("kube-apiserver-a");
    let api_down = Tick::new()
        .api_down()
        .kubelet_lists(&p, pod("u1"))
        .inactive(&p);
    assert_eq!(api_down.actions(), vec![], "API down, kubelet up: no copy");
    let api_up = Tick::new()
        .listed(&p, pod("u1"))
        .kubelet_lists(&p, pod("u1"))
        .inactive(&p);
    assert_eq!(api_up.actions(), vec![], "API up, kubelet up: no copy");
}

#[test]
fn reboot_with_the_api_down_activates_at_once_because_the_kubelet_lists_no_api_pods() {
    let p = key("kube-apiserver-a");
    let tick = Tick::new().api_down().kubelet_lists_nothing().inactive(&p);
    assert_eq!(tick.actions(), vec![Action::Activate(p)]);
}

#[test]
fn kubelet_that_does_not_answer_leaves_the_decision_to_the_runtime() {
    let p = key("kube-apiserver-a");
    let tick = Tick::new().api_down().inactive(&p);
    assert_eq!(tick.actions(), vec![Action::Activate(p)]);
}

#[test]
fn parent_the_kubelet_lists_as_being_deleted_is_not_its_to_restart() {
    let p = key("kube-apiserver-a");
    let tick = Tick::new()
        .api_down()
        .kubelet_lists(&p, pod("u1").leaving())
        .inactive(&p);
    assert_eq!(tick.actions(), vec![Action::Activate(p)]);
}

// --- replacement ---

#[test]
fn started_successor_makes_the_predecessors_copy_yield_at_once() {
    let (old, new) = (key("kube-apiserver-old"), key("kube-apiserver-new"));
    let tick = Tick::new()
        .remembers(&old, pod("u1"))
        .listed(&new, pod("u2"))
        .active(&old)
        .deadline(&old, t(50));
    let actions = tick.actions();
    assert!(deactivates(&actions, &old, DeactivateReason::Replaced));
    assert!(actions.contains(&Action::SetYield(old.clone(), yielded("u2", t(0)))));
    assert!(!removes(&actions, &old), "removal still waits for grace");
    assert_eq!(tick.decide().wake_at, Some(t(50)));
}

#[test]
fn successor_of_a_parent_still_listed_as_being_deleted_also_wins() {
    let (old, new) = (key("kube-apiserver-old"), key("kube-apiserver-new"));
    let tick = Tick::new()
        .listed(&old, pod("u1").leaving())
        .listed(&new, pod("u2"))
        .active(&old);
    assert!(deactivates(
        &tick.actions(),
        &old,
        DeactivateReason::Replaced
    ));
}

#[test]
fn successor_that_never_starts_does_not_make_the_copy_yield() {
    let (old, new) = (key("kube-apiserver-old"), key("kube-apiserver-new"));
    let tick = Tick::new()
        .remembers(&old, pod("u1"))
        .listed(&new, pod("u2").not_started())
        .active(&old)
        .deadline(&old, t(-1));
    let actions = tick.actions();
    assert!(actions.iter().all(|a| a.key() != &old), "{actions:?}");
}

#[test]
fn predecessor_is_kept_past_grace_until_a_successor_has_been_ready() {
    let (old, new) = (key("kube-apiserver-old"), key("kube-apiserver-new"));
    let waiting = Tick::new()
        .remembers(&old, pod("u1"))
        .listed(&new, pod("u2"))
        .inactive(&old)
        .deadline(&old, t(-1))
        .yielded(&old, yielded("u2", t(-10)));
    assert!(!removes(&waiting.actions(), &old));
    let ready = waiting.clone().listed(&new, pod("u2").ready());
    let actions = ready.actions();
    assert!(removes(&actions, &old), "{actions:?}");
    assert!(actions.contains(&Action::SetYield(
        old.clone(),
        Yield {
            ready_seen: true,
            ..yielded("u2", t(-10))
        }
    )));
}

#[test]
fn serving_copy_of_a_controllers_pod_outlives_grace_until_a_successor_is_ready() {
    // The DaemonSet deleted the old API server pod; it creates the new one only once the old is
    // gone. Until then the copy is the only API server: grace alone does not remove it.
    let old = key("kube-apiserver-old");
    let serving = Tick::new()
        .remembers(&old, pod("u1"))
        .active(&old)
        .deadline(&old, t(-1));
    assert_eq!(serving.actions(), vec![]);
    // An inactive one (nothing runs from it) goes after grace as usual, as does a copy of a pod
    // no controller will replace.
    let idle = Tick::new()
        .remembers(&old, pod("u1"))
        .inactive(&old)
        .deadline(&old, t(-1));
    assert!(removes(&idle.actions(), &old));
    let bare = Tick::new()
        .remembers(&old, pod("u1").controlled_by(None))
        .active(&old)
        .deadline(&old, t(-1));
    assert!(removes(&bare.actions(), &old));
}

#[test]
fn successor_ready_while_the_copy_still_holds_the_ports_does_not_count() {
    // The successor's hostNetwork readiness probe was answered by the copy itself.
    let (old, new) = (key("kube-apiserver-old"), key("kube-apiserver-new"));
    let copy = old.static_pod_key(NODE);
    let yielding = Tick::new()
        .remembers(&old, pod("u1"))
        .listed(&new, pod("u2").ready())
        .active(&old)
        .running(&copy);
    let actions = yielding.actions();
    assert!(actions.contains(&Action::SetYield(old.clone(), yielded("u2", t(0)))));
    assert!(deactivates(&actions, &old, DeactivateReason::Replaced));
    let still_running = Tick::new()
        .remembers(&old, pod("u1"))
        .listed(&new, pod("u2").ready())
        .inactive(&old)
        .running(&copy)
        .deadline(&old, t(50))
        .yielded(&old, yielded("u2", t(0)));
    assert_eq!(
        still_running.actions(),
        vec![],
        "the copy has not stopped yet"
    );
    let stopped = Tick::new()
        .remembers(&old, pod("u1"))
        .listed(&new, pod("u2").ready())
        .inactive(&old)
        .yielded(&old, yielded("u2", t(0)));
    assert!(stopped.actions().contains(&Action::SetYield(
        old.clone(),
        Yield {
            ready_seen: true,
            ..yielded("u2", t(0))
        }
    )));
}

#[test]
fn pods_of_another_controller_are_not_successors() {
    let (old, other) = (key("kube-apiserver-old"), key("something-else"));
    let tick = Tick::new()
        .remembers(&old, pod("u1"))
        .listed(&other, pod("u9").controlled_by(Some("other-ds")))
        .active(&old);
    let stays = |actions: Vec<Action>| {
        actions
            .iter()
            .all(|a| matches!(a, Action::SetDeadline(..)) || a.key() != &old)
    };
    assert!(stays(tick.actions()));
    let no_controller = Tick::new()
        .remembers(&old, pod("u1").controlled_by(None))
        .listed(&other, pod("u9").controlled_by(None))
        .active(&old);
    assert!(stays(no_controller.actions()));
}

#[test]
fn successor_seen_only_by_the_kubelet_counts_while_the_api_is_down() {
    let (old, new) = (key("kube-apiserver-old"), key("kube-apiserver-new"));
    let tick = Tick::new()
        .api_down()
        .remembers(&old, pod("u1"))
        .kubelet_lists(&new, pod("u2"))
        .active(&old);
    assert!(deactivates(
        &tick.actions(),
        &old,
        DeactivateReason::Replaced
    ));
}

// --- fallback: last known good ---

#[test]
fn yielded_copy_stays_down_while_the_successor_has_time_even_with_the_api_down() {
    let (old, new) = (key("kube-apiserver-old"), key("kube-apiserver-new"));
    let y = yielded("u2", t(0));
    let tick = Tick::new()
        .api_down()
        .remembers(&old, pod("u1"))
        .kubelet_lists(&new, pod("u2"))
        .inactive(&old)
        .yielded(&old, y.clone())
        .at(t(299));
    let d = tick.decide();
    assert!(!activates(&d.actions, &old), "{:?}", d.actions);
    assert_eq!(d.wake_at, Some(t(300)));
    // Neither the API nor the kubelet answers: still no flip-flop before the timeout.
    let blind = Tick::new()
        .api_down()
        .remembers(&old, pod("u1"))
        .inactive(&old)
        .yielded(&old, y)
        .at(t(100));
    assert!(!activates(&blind.actions(), &old));
}

#[test]
fn successor_not_ready_within_the_fallback_timeout_brings_the_copy_back() {
    let (old, new) = (key("kube-apiserver-old"), key("kube-apiserver-new"));
    let tick = Tick::new()
        .remembers(&old, pod("u1"))
        .listed(&new, pod("u2"))
        .inactive(&old)
        .yielded(&old, yielded("u2", t(0)))
        .at(t(300));
    let actions = tick.actions();
    assert!(
        actions.contains(&Action::Fallback(old.clone())),
        "{actions:?}"
    );
    assert!(actions.contains(&Action::SetYield(
        old.clone(),
        Yield {
            fell_back: true,
            ..yielded("u2", t(0))
        }
    )));
}

#[test]
fn fallen_back_copy_keeps_serving_beside_the_failed_successor() {
    let (old, new) = (key("kube-apiserver-old"), key("kube-apiserver-new"));
    let failed = Yield {
        fell_back: true,
        ..yielded("u2", t(0))
    };
    let tick = Tick::new()
        .remembers(&old, pod("u1"))
        .listed(&new, pod("u2"))
        .active(&old)
        .yielded(&old, failed.clone())
        .deadline(&old, t(-1))
        .at(t(1000));
    assert_eq!(tick.actions(), vec![]);
    // A rollback deletes the failed successor first: the copy is all that serves meanwhile.
    let rollback = Tick::new()
        .remembers(&old, pod("u1"))
        .listed(&new, pod("u2").leaving())
        .active(&old)
        .yielded(&old, failed)
        .deadline(&old, t(-1))
        .at(t(1000));
    assert_eq!(rollback.actions(), vec![]);
}

#[test]
fn fallen_back_copy_yields_again_to_the_next_successor_that_starts() {
    let (old, bad, good) = (key("old"), key("bad"), key("good"));
    let tick = Tick::new()
        .remembers(&old, pod("u1"))
        .listed(&bad, pod("u2"))
        .listed(&good, pod("u3"))
        .active(&old)
        .yielded(
            &old,
            Yield {
                fell_back: true,
                ..yielded("u2", t(0))
            },
        )
        .at(t(1000));
    let actions = tick.actions();
    assert!(deactivates(&actions, &old, DeactivateReason::Replaced));
    assert!(actions.contains(&Action::SetYield(old.clone(), yielded("u3", t(1000)))));
}

#[test]
fn successor_deleted_before_it_was_ready_brings_the_copy_back_at_once() {
    let old = key("kube-apiserver-old");
    let tick = Tick::new()
        .remembers(&old, pod("u1"))
        .inactive(&old)
        .yielded(&old, yielded("u2", t(0)))
        .at(t(5));
    assert!(tick.actions().contains(&Action::Fallback(old)));
}

#[test]
fn successor_the_kubelet_lists_without_a_started_status_still_has_its_time() {
    // With the API down, the kubelet's `/pods` carries the status the API last gave the new
    // pod ("Pending"), though its container runs: that is no reason to come back early.
    let (old, new) = (key("kube-apiserver-old"), key("kube-apiserver-new"));
    let tick = Tick::new()
        .api_down()
        .remembers(&old, pod("u1"))
        .kubelet_lists(&new, pod("u2").not_started())
        .inactive(&old)
        .yielded(&old, yielded("u2", t(0)))
        .at(t(5));
    let d = tick.decide();
    assert!(!activates(&d.actions, &old), "{:?}", d.actions);
    assert_eq!(d.wake_at, Some(t(300)));
}

#[test]
fn a_copy_never_runs_beside_a_started_successor_that_has_time_left() {
    // Table over the views: whatever the API, kubelet and runtime say, a predecessor whose
    // started successor is within its fallback window is never (re)activated.
    let (old, new) = (key("old"), key("new"));
    for api_up in [true, false] {
        for kubelet_up in [true, false] {
            for active in [true, false] {
                for ready in [true, false] {
                    let succ = if ready { pod("u2").ready() } else { pod("u2") };
                    let mut tick = Tick::new().remembers(&old, pod("u1"));
                    tick = if api_up {
                        tick.listed(&new, succ.clone())
                    } else {
                        tick.api_down()
                    };
                    if kubelet_up {
                        tick = tick.kubelet_lists(&new, succ);
                    }
                    tick = if active {
                        tick.active(&old)
                    } else {
                        tick.inactive(&old)
                    };
                    let tick = tick.yielded(&old, yielded("u2", t(0))).at(t(10));
                    let actions = tick.actions();
                    assert!(
                        !activates(&actions, &old),
                        "api_up={api_up} kubelet_up={kubelet_up} active={active}: {actions:?}"
                    );
                    if active && (api_up || kubelet_up) {
                        assert!(deactivates(&actions, &old, DeactivateReason::Replaced));
                    }
                }
            }
        }
    }
}
