//! Tests of [`decide`](super): the original tool's one-tick scenarios, the SPEC §4 rules one by
//! one, and invariants over generated worlds. Worlds come from the shared [`World`] fixture.

use super::*;
use crate::fixtures::{NODE, World, key, t};

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

    // Due: others go first, even those whose parents are listed; self waits. (A running copy
    // would be kept by default: see `leaving_the_node_keeps_checkpoints_whose_copy_runs`.)
    let mut due = base.clone().deadline(&me, t(-1));
    due.keep_active = false;
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

/// Issue 12.9: on uninstall (or when the agent's own pod is gone for good), a checkpoint whose
/// copy runs may be the only thing running its parent (a kube-apiserver standing in for a dead
/// one): it stays, and is reported as kept; the inactive ones go, then the agent's own.
#[test]
fn leaving_the_node_keeps_checkpoints_whose_copy_runs() {
    let me = key("pod-checkpointer");
    let (a, b) = (key("apiserver"), key("scheduler"));
    let leaving = |uninstalling: bool, b_left: bool| {
        let mut w = World::new()
            .me(&me)
            .api_up()
            .inactive(&me)
            .active(&me)
            .inactive(&a)
            .active(&a)
            .running(&a.static_pod_key(NODE));
        if b_left {
            w = w.inactive(&b);
        }
        if uninstalling {
            w = w.listed(&me, true);
            w.uninstalling = true;
        } else {
            w = w.deadline(&me, t(-1));
        }
        w
    };
    for uninstalling in [true, false] {
        let first = leaving(uninstalling, true).decide();
        assert_eq!(
            first.actions,
            vec![remove(&b)],
            "uninstalling: {uninstalling}"
        );
        assert_eq!(first.kept, vec![a.clone()], "uninstalling: {uninstalling}");
        // Then itself: the kept copy does not hold the agent's own removal back.
        let then = leaving(uninstalling, false).decide();
        assert_eq!(
            then.actions,
            vec![remove(&me), deactivate(&me, DeactivateReason::Removal)],
            "uninstalling: {uninstalling}"
        );
        assert_eq!(then.kept, vec![a.clone()], "uninstalling: {uninstalling}");
    }
    // A person said so: everything goes, the running copy first.
    let mut w = leaving(true, true);
    w.keep_active = false;
    let decision = w.decide();
    assert_eq!(
        decision.actions,
        vec![deactivate(&a, DeactivateReason::Removal), remove(&b)],
        "the agent's own waits until the copy of a is gone"
    );
    assert!(decision.kept.is_empty());
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

#[test]
fn time_the_api_could_not_be_asked_does_not_count_toward_grace() {
    // The deadline passed during an outage; the API answers again since t(100): removal waits
    // for a whole grace period of reachable API, so the first pass after the outage removes
    // nothing (a self-hosted API server's copy is what brought the API back).
    let a = key("apiserver");
    let mut back = World::new()
        .api_up()
        .inactive(&a)
        .active(&a)
        .deadline(&a, t(60))
        .at(t(100));
    back.api_since = Some(t(100));
    let d = back.decide();
    assert_eq!(d.actions, vec![], "nothing removed right after the outage");
    assert_eq!(d.wake_at, Some(t(160)));
    let later = back.at(t(160));
    assert_eq!(
        later.actions(),
        vec![
            Action::Deactivate(a.clone(), DeactivateReason::Removal),
            Action::Remove(a)
        ]
    );
}

// --- SPEC §5: a pass acts only on a complete view ---

#[test]
fn first_pass_after_a_start_does_not_activate_before_the_pod_watch_has_answered() {
    // Restarted while the parent's sandbox is being set up: the runtime does not list it yet,
    // and the API (which would say "merely starting") has not been asked yet. Its checkpoint
    // stays inactive until the watch has synced or failed, or its short bound has passed.
    let a = key("apiserver");
    let w = World::new().inactive(&a).api_unsettled();
    assert_eq!(w.actions(), vec![]);
    let reboot = World::new().only_on_disk(&a).api_unsettled();
    assert_eq!(reboot.actions(), vec![], "not even from disk alone");
}

#[test]
fn a_pod_watch_that_failed_at_start_is_a_complete_view_and_the_reboot_activates_at_once() {
    // After a reboot with no API the watch fails at once (or runs out its bound): the view is
    // complete with the API unknown, and the outage rule activates.
    let a = key("apiserver");
    let w = World::new().only_on_disk(&a);
    assert!(w.api_settled && w.api == Observation::Unknown);
    assert_eq!(w.actions(), vec![activate(&a)]);
}

#[test]
fn once_synced_a_parent_that_is_merely_starting_still_gets_no_copy() {
    let a = key("apiserver");
    let w = World::new().api_up().listed(&a, false).inactive(&a);
    assert_eq!(w.actions(), vec![]);
}

#[test]
fn an_unsettled_view_still_writes_and_deactivates_on_the_runtime_word() {
    // Only activation waits: a running parent's copy yields at once, and a parent seen by the
    // kubelet is written.
    let a = key("apiserver");
    let running = World::new()
        .inactive(&a)
        .active(&a)
        .running(&a)
        .api_unsettled();
    assert_eq!(
        running.actions(),
        vec![deactivate(&a, DeactivateReason::ParentRunning)]
    );
    let fresh = World::new().desired(&a, 7).api_unsettled();
    assert_eq!(fresh.actions(), vec![write(&a)]);
}

#[test]
fn an_unsettled_view_keeps_the_agents_own_checkpoint_active() {
    // The agent's own copy is always active; the lock, not the view, decides who works.
    let me = key("me");
    let w = World::new().me(&me).inactive(&me).api_unsettled();
    assert_eq!(w.actions(), vec![activate(&me)]);
}
