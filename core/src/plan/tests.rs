//! Table tests, one per rule of [`plan`](super).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::fixtures::{PodBuilder, key};
use crate::model::Layout;
use crate::sanitize::Objects;

fn running(status: serde_json::Value) -> Pod {
    PodBuilder::new("kube-system", "p").status(status).build()
}

fn container_status(restarts: i32, state: serde_json::Value) -> serde_json::Value {
    json!({"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": restarts,
        "state": state})
}

#[test]
fn started_here_reads_the_status() {
    let cases = [
        (json!({}), false),
        (
            json!({"phase": "Pending", "containerStatuses": [container_status(0, json!({"waiting": {"reason": "ErrImagePull"}}))]}),
            false,
        ),
        (json!({"phase": "Running"}), true),
        (
            json!({"phase": "Pending", "containerStatuses": [container_status(2, json!({"waiting": {"reason": "CrashLoopBackOff"}}))]}),
            true,
        ),
        (
            json!({"phase": "Failed", "containerStatuses": [container_status(0, json!({"terminated": {"exitCode": 1}}))]}),
            true,
        ),
        (
            json!({"phase": "Pending", "initContainerStatuses": [container_status(0, json!({"running": {}}))]}),
            true,
        ),
        (
            json!({"phase": "Pending", "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": false,
                "restartCount": 0, "lastState": {"terminated": {"exitCode": 0}}}]}),
            true,
        ),
    ];
    for (status, expected) in cases {
        assert_eq!(started_here(&running(status.clone())), expected, "{status}");
    }
    let no_status = PodBuilder::new("kube-system", "p").build();
    assert!(!started_here(&no_status));
}

#[test]
fn key_of_uses_the_name_else_the_generate_name() {
    let cases = [
        (
            json!({"name": "a", "namespace": "ns"}),
            PodKey::new("ns", "a"),
        ),
        (
            json!({"generateName": "g-", "namespace": "ns"}),
            PodKey::new("ns", "g-"),
        ),
        (
            json!({"name": "a", "generateName": "g-"}),
            PodKey::new("", "a"),
        ),
        (json!({}), PodKey::new("", "")),
    ];
    for (metadata, expected) in cases {
        let pod = crate::fixtures::pod(json!({"metadata": metadata}));
        assert_eq!(key_of(&pod), expected);
    }
}

#[test]
fn owned_by_daemonset_needs_the_kind_and_the_name() {
    let cases = [
        (PodBuilder::new("ns", "p"), false),
        (
            PodBuilder::new("ns", "p").owner("DaemonSet", "agent", "u", true),
            true,
        ),
        (
            PodBuilder::new("ns", "p").owner("DaemonSet", "other", "u", true),
            false,
        ),
        (
            PodBuilder::new("ns", "p").owner("ReplicaSet", "agent", "u", true),
            false,
        ),
        (
            PodBuilder::new("ns", "p")
                .owner("ReplicaSet", "x", "u", true)
                .owner("DaemonSet", "agent", "v", false),
            true,
        ),
    ];
    for (i, (pod, expected)) in cases.into_iter().enumerate() {
        assert_eq!(
            owned_by_daemonset(&pod.build(), "agent"),
            expected,
            "case {i}"
        );
    }
}

#[test]
fn wanted_needs_an_opted_in_parent_in_scope_on_this_node() {
    let namespaces = ["prod".to_owned()];
    let all = Scope {
        node_name: "n1",
        namespaces: &[],
        me: None,
    };
    let prod = Scope {
        node_name: "n1",
        namespaces: &namespaces,
        me: None,
    };
    let cases = [
        (PodBuilder::parent("prod", "a"), true, true),
        (PodBuilder::parent("dev", "a"), true, false),
        (PodBuilder::parent("prod", "a").node("n1"), true, true),
        (PodBuilder::parent("prod", "a").node("n2"), false, false),
        (PodBuilder::new("prod", "a"), false, false),
        (
            PodBuilder::parent("prod", "a").annotation("kubernetes.io/config.mirror", "x"),
            false,
            false,
        ),
    ];
    for (i, (pod, in_all, in_prod)) in cases.into_iter().enumerate() {
        let pod = pod.build();
        assert_eq!(all.wanted(&pod), in_all, "case {i}, all namespaces");
        assert_eq!(prod.wanted(&pod), in_prod, "case {i}, prod only");
    }
}

#[test]
fn manages_its_namespaces_and_always_its_own_checkpoint() {
    let namespaces = ["prod".to_owned()];
    let me = key("agent");
    let cases = [
        (&[][..], None, PodKey::new("any", "a"), true),
        (&namespaces[..], None, PodKey::new("prod", "a"), true),
        (&namespaces[..], None, PodKey::new("dev", "a"), false),
        (&namespaces[..], None, me.clone(), false),
        (&namespaces[..], Some(&me), me.clone(), true),
        (&namespaces[..], Some(&me), key("other"), false),
    ];
    for (i, (namespaces, me, key, expected)) in cases.into_iter().enumerate() {
        let scope = Scope {
            node_name: "n1",
            namespaces,
            me,
        };
        assert_eq!(scope.manages(&key), expected, "case {i}");
    }
}

#[test]
fn parents_come_from_the_api_else_the_kubelet_else_nowhere() {
    let scope = Scope {
        node_name: "n1",
        namespaces: &[],
        me: None,
    };
    let from_api = vec![
        Arc::new(PodBuilder::parent("ns", "api").build()),
        Arc::new(PodBuilder::new("ns", "not-a-parent").build()),
    ];
    let kubelet = Observation::Known(vec![PodBuilder::parent("ns", "kubelet").build()]);
    let names = |pods: Vec<Arc<Pod>>| pods.iter().map(|p| key_of(p).name).collect::<Vec<_>>();
    assert_eq!(names(scope.parents(Some(&from_api), &kubelet)), ["api"]);
    assert_eq!(names(scope.parents(None, &kubelet)), ["kubelet"]);
    assert!(scope.parents(None, &Observation::Unknown).is_empty());
    assert_eq!(
        names(scope.parents(Some(&[]), &kubelet)),
        Vec::<String>::new()
    );
}

#[test]
fn replaced_when_a_newer_pod_of_the_agents_daemonset_is_listed() {
    let me = PodKey::new("cp", "agent-old");
    let pod = |ns: &str, name: &str, owner: &str| {
        Arc::new(
            PodBuilder::parent(ns, name)
                .owner("DaemonSet", owner, "u", true)
                .build(),
        )
    };
    let scope = Scope {
        node_name: "n1",
        namespaces: &[],
        me: Some(&me),
    };
    let cases = [
        (vec![pod("cp", "agent-old", "agent")], Some("agent"), false),
        (
            vec![
                pod("cp", "agent-old", "agent"),
                pod("cp", "agent-new", "agent"),
            ],
            Some("agent"),
            true,
        ),
        (vec![pod("cp", "agent-new", "agent")], None, false),
        (
            vec![pod("other", "agent-new", "agent")],
            Some("agent"),
            false,
        ),
        (vec![pod("cp", "web", "web")], Some("agent"), false),
    ];
    for (i, (parents, owner, expected)) in cases.into_iter().enumerate() {
        assert_eq!(scope.replaced(&parents, owner), expected, "case {i}");
    }
    let nobody = Scope { me: None, ..scope };
    assert!(!nobody.replaced(&[pod("cp", "agent-new", "agent")], Some("agent")));
}

#[test]
fn tokens_are_bound_except_the_agents_own() {
    let me = key("agent");
    let scope = Scope {
        node_name: "n1",
        namespaces: &[],
        me: Some(&me),
    };
    assert!(!scope.binds_token(&me));
    assert!(scope.binds_token(&key("web")));
    let anonymous = Scope { me: None, ..scope };
    assert!(anonymous.binds_token(&me));
}

fn token_parent() -> Pod {
    PodBuilder::parent("prod", "web")
        .volumes(
            json!([{"name": "kube-api-access-x", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token"}}]}}]),
        )
        .build()
}

fn checkpoint(pod: &Pod, objects: &Objects) -> Checkpoint {
    let layout = Layout::under_root(std::path::Path::new("/r"));
    sanitize::sanitize(pod, objects, &layout).expect("checkpointable")
}

#[test]
fn a_checkpoint_without_its_token_never_replaces_one_on_disk() {
    let pod = token_parent();
    let without = checkpoint(&pod, &Objects::default());
    let mut objects = Objects::default();
    let spec = sanitize::references(&pod)
        .tokens
        .into_iter()
        .next()
        .expect("one token");
    objects.tokens.insert(spec, "t".to_owned());
    let with = checkpoint(&pod, &objects);
    let cases = [
        (&without, true, true),
        (&without, false, false),
        (&with, true, false),
        (&with, false, false),
    ];
    for (i, (cp, on_disk, expected)) in cases.into_iter().enumerate() {
        assert_eq!(loses_token(cp, on_disk), expected, "case {i}");
    }
}

#[test]
fn views_build_what_decide_borrows() {
    let started = PodBuilder::parent("prod", "a")
        .spec(json!({"containers": [{"name": "app", "image": "app:1"}]}))
        .status(json!({"phase": "Running"}))
        .build();
    let starting = PodBuilder::parent("prod", "b")
        .status(json!({"phase": "Pending"}))
        .build();
    let parents = vec![Arc::new(started.clone()), Arc::new(starting)];
    let cp = checkpoint(&started, &Objects::default());
    let checkpoints = BTreeMap::from([(cp.key.clone(), cp.clone())]);
    let on_disk = OnDiskState {
        inactive: true,
        active: false,
    };
    let disk = [(PodKey::new("prod", "c"), on_disk)];

    let up = Views::new(true, &parents, &checkpoints, disk.clone());
    let listed = BTreeMap::from([
        (PodKey::new("prod", "a"), facts(&parents[0])),
        (PodKey::new("prod", "b"), facts(&parents[1])),
    ]);
    assert_eq!(up.api, Observation::Known(listed));
    assert_eq!(up.desired, BTreeMap::from([(cp.key.clone(), cp.digest())]));
    assert_eq!(up.disk, BTreeMap::from(disk.clone()));

    let down = Views::new(false, &parents, &checkpoints, disk);
    assert_eq!(down.api, Observation::Unknown);
    assert_eq!(down.desired, up.desired);
}

#[test]
fn a_pod_is_ready_only_while_every_container_runs() {
    let ready_condition = json!([{"type": "Ready", "status": "True"}]);
    let running = PodBuilder::parent("kube-system", "api")
        .status(json!({"phase": "Running", "conditions": ready_condition,
            "containerStatuses": [{"name": "a", "image": "i", "imageID": "", "ready": true,
                "restartCount": 0, "state": {"running": {}}}]}))
        .build();
    assert!(facts(&running).ready);
    // The condition outlives a container that just crashed by a probe period.
    let crashed = PodBuilder::parent("kube-system", "api")
        .status(json!({"phase": "Running", "conditions": ready_condition,
            "containerStatuses": [{"name": "a", "image": "i", "imageID": "", "ready": true,
                "restartCount": 1, "state": {"terminated": {"exitCode": 1}}}]}))
        .build();
    assert!(!facts(&crashed).ready);
    assert!(facts(&crashed).started_here);
    let being_deleted = PodBuilder::parent("kube-system", "api")
        .status(json!({"phase": "Succeeded"}))
        .build();
    assert!(facts(&being_deleted).leaving);
}

/// Issue 11.3: `helm upgrade --set checkpointSelf=false` makes the newer DaemonSet pod a pod
/// without the annotation. It still replaces the agent: were it missed, the old pod's static
/// copy would read its own absence as an uninstall and wipe the node after the grace period.
#[test]
fn a_newer_daemonset_pod_replaces_the_agent_whether_or_not_it_checkpoints_itself() {
    let me = PodKey::new("cp", "agent-old");
    let scope = Scope {
        node_name: "n1",
        namespaces: &[],
        me: Some(&me),
    };
    let newer = |annotated: bool| {
        let pod = if annotated {
            PodBuilder::parent("cp", "agent-new")
        } else {
            PodBuilder::new("cp", "agent-new")
        };
        Arc::new(pod.owner("DaemonSet", "agent", "u", true).build())
    };
    let parent = Arc::new(PodBuilder::parent("cp", "web").build());
    for annotated in [true, false] {
        let api = [newer(annotated), parent.clone()];
        let seen = listing(&scope, Some(&api), &Observation::Unknown, Some("agent"));
        assert!(seen.replaced, "annotated: {annotated}");
        let names: Vec<_> = seen.parents.iter().map(|p| key_of(p).name).collect();
        let expected: &[&str] = if annotated {
            &["agent-new", "web"]
        } else {
            &["web"]
        };
        assert_eq!(names, expected, "annotated: {annotated}");
    }
    // Only the API names every pod: the kubelet's list never says "replaced".
    let kubelet = Observation::Known(vec![(*newer(false)).clone()]);
    assert!(!listing(&scope, None, &kubelet, Some("agent")).replaced);
}

/// Issue 11.3: a namespace list that leaves out the agent's own namespace must not hide the
/// agent's own pod (or it would read its absence as an uninstall).
#[test]
fn the_agents_own_pod_and_namespace_are_watched_whatever_the_namespace_list() {
    let namespaces = ["prod".to_owned()];
    let me = PodKey::new("agents", "agent-x");
    let scope = Scope {
        node_name: "n1",
        namespaces: &namespaces,
        me: Some(&me),
    };
    assert_eq!(scope.watched_namespaces(), ["prod", "agents"]);
    assert!(scope.wanted(&PodBuilder::parent("agents", "agent-x").build()));
    assert!(!scope.wanted(&PodBuilder::parent("agents", "other").build()));
    let all = Scope {
        namespaces: &[],
        ..scope
    };
    assert!(all.watched_namespaces().is_empty(), "empty still means all");
    let listed = Scope {
        namespaces: &["agents".to_owned()],
        ..scope
    };
    assert_eq!(listed.watched_namespaces(), ["agents"]);
}

/// Issue 10.2: `a-b`/`c` and `a`/`b-c` both need `a-b-c.json`. One parent keeps the file (the
/// one whose checkpoint is there, else the first by name, so the choice is stable from pass to
/// pass); the other is refused with its own reason, not retried as a write error.
#[test]
fn parents_that_need_the_same_file_name_refuse_all_but_one_stably() {
    let ab_c = PodKey::new("a-b", "c");
    let a_bc = PodKey::new("a", "b-c");
    let other = PodKey::new("a", "x");
    let keys = [ab_c.clone(), a_bc.clone(), other.clone()];
    let cases = [
        (vec![], a_bc.clone(), ab_c.clone()),
        (vec![ab_c.clone()], ab_c.clone(), a_bc.clone()),
        (vec![a_bc.clone()], a_bc.clone(), ab_c.clone()),
    ];
    for (i, (on_disk, holder, loser)) in cases.into_iter().enumerate() {
        let refused = name_collisions(&keys, |k| on_disk.contains(k));
        assert_eq!(refused.len(), 1, "case {i}: {refused:?}");
        let why = refused.get(&loser).expect("the loser is refused");
        assert_eq!(why.reason(), "name_collision", "case {i}");
        assert!(why.to_string().contains("a-b-c.json"), "case {i}: {why}");
        assert!(
            why.to_string().contains(&holder.to_string()),
            "case {i}: {why}"
        );
    }
    assert!(name_collisions(&[other], |_| false).is_empty());
}

/// Issue 10.11: the last API copy of a parent is kept after it leaves the API only while its
/// checkpoint is on disk (its removal is reported on it); a parent never written (refused) is
/// forgotten once it is gone, so memory does not grow with every refused pod ever seen.
#[test]
fn remembered_parents_are_forgotten_once_neither_listed_nor_on_disk() {
    let pod = |name: &str| Arc::new(PodBuilder::parent("kube-system", name).build());
    let mut memory = Remembered::default();
    memory.listed(&[pod("written"), pod("refused"), pod("stays")]);
    assert_eq!(memory.len(), 3);
    // "written" and "refused" left the API; only "written" has a checkpoint on disk.
    memory.listed(&[pod("stays")]);
    memory.forget_gone(|k| k.name == "written");
    assert!(
        memory.get(&key("written")).is_some(),
        "kept for its removal"
    );
    assert!(memory.get(&key("refused")).is_none(), "forgotten");
    assert!(memory.get(&key("stays")).is_some(), "still listed");
    assert_eq!(memory.len(), 2);
    assert_eq!(
        memory
            .facts()
            .keys()
            .map(|k| k.name.as_str())
            .collect::<Vec<_>>(),
        ["stays", "written"]
    );
}
