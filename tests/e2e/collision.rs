//! Issue 10.2 on the real node: two parents whose namespace and name join to the same checkpoint
//! file name. One keeps the file; the other is a stable refusal, seen in `refused_pods`, logged
//! once and reported as a Warning Event on that pod, never a write error retried every pass.

use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};

use crate::harness::{
    Agent, AgentOptions, Node, TestNamespace, busybox_pod, holds_for, pod_running, wait_for,
};

const LONG: Duration = Duration::from_secs(120);

#[tokio::test]
async fn a_file_name_collision_refuses_one_parent_once_with_an_event() {
    let node = Node::from_env();
    // `<a>`/`x-<id>-c` and `<a>-x-<id>`/`c` both need `<a>-x-<id>-c.json`.
    let a = TestNamespace::create(&node, "e2e-collide").await;
    let id = a.name.rsplit('-').next().expect("suffix").to_owned();
    let ab = TestNamespace::create(&node, &format!("{}-x", a.name)).await;
    assert_eq!(ab.name, format!("{}-x-{id}", a.name));
    let (holder, loser) = (a.key(&format!("x-{id}-c")), ab.key("c"));
    assert_eq!(holder.manifest_file_name(), loser.manifest_file_name());

    let mut agent = Agent::start(
        &node,
        AgentOptions {
            namespaces: &[&a.name, &ab.name],
            ..Default::default()
        },
    );
    for (ns, key) in [(&a, &holder), (&ab, &loser)] {
        let pod = busybox_pod(&node, &key.name, true, "sleep 3600", serde_json::json!({}));
        ns.pods()
            .create(&PostParams::default(), &pod)
            .await
            .expect("create parent");
    }
    for (ns, key) in [(&a, &holder), (&ab, &loser)] {
        wait_for("the parent runs", LONG, || async {
            pod_running(&ns.pods(), &key.name).await.then_some(())
        })
        .await;
    }
    wait_for("the holder's checkpoint", LONG, || async {
        let text = std::fs::read(agent.inactive_manifest(&holder)).ok()?;
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_slice(&text).ok()?;
        (pod.metadata.namespace.as_deref() == Some(a.name.as_str())).then_some(())
    })
    .await;
    let refused = "pod_checkpointer_refused_pods{reason=\"name_collision\"}";
    wait_for("the loser is refused", LONG, || async {
        (agent.metric(refused) == Some(1.0)).then_some(())
    })
    .await;
    // Passes go on (the poll is 500 ms): still a refusal, never a write error.
    holds_for(
        "a stable refusal, no write error",
        Duration::from_secs(5),
        || async {
            agent.metric(refused) == Some(1.0)
                && agent.metric("pod_checkpointer_write_errors_total") == Some(0.0)
        },
    )
    .await;
    let log = agent.log();
    let refusals = log
        .lines()
        .filter(|l| {
            l.contains("\"action\":\"refuse\"")
                && l.contains(&format!("\"namespace\":\"{}\"", ab.name))
        })
        .count();
    assert_eq!(refusals, 1, "logged once:\n{log}");
    assert!(
        !log.contains("\"level\":\"ERROR\""),
        "no error logged:\n{log}"
    );

    let events: Api<Event> = ab.api();
    let event = wait_for("a Warning Event on the refused pod", LONG, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("CheckpointRefused")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("c")
        })
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(
        event
            .note
            .as_deref()
            .is_some_and(|n| n.contains(&holder.to_string())),
        "the Event names the holder: {:?}",
        event.note
    );
    assert!(agent.stop().success());
}
