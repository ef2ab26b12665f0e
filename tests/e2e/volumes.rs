//! Issue 10.1 on the real node: the containers of an activated copy see their Secret, ConfigMap
//! and projected volumes exactly as the parent's containers saw the kubelet's (modes, owners,
//! `fsGroup` group, what each user can read), whatever user each container runs as.

use std::collections::BTreeMap;
use std::path::Path;

use kube::api::PostParams;

use crate::harness::*;
use crate::{LONG, SHORT, Scene, read};

/// What each container reports, every second, to `/out/v.<pod>.<container>`: its uid, then
/// `stat -L` (mode in octal, uid, gid) of every volume directory and every entry in it, then
/// what `cat` gives for each data file (content or the error). The token's content differs
/// between parent and copy (each has its own), so only its `stat` is compared.
const SCRIPT: &str = r#"while true; do
  f="/out/v.$POD_NAME.$C"
  {
    id -u
    for p in /s /s/* /s4 /s4/* /s4/d/* /c /c/* /p /p/*; do stat -L -c '%n %a %u %g' "$p"; done
    for p in /s/password /s4/a /s4/d/b /c/mode /p/mode; do cat "$p" 2>&1; echo; done
  } > "$f.tmp" 2>&1 && mv "$f.tmp" "$f"
  sleep 1
done"#;

/// A parent with four volumes: the Secret shown whole with the default mode, the Secret through
/// `items` (one nested path) with `defaultMode` 0400, the ConfigMap, and a projected volume with
/// a token and the ConfigMap. `security` is the pod's securityContext; `users` gives each
/// container's name and its own `runAsUser`, if any.
fn parent(
    node: &Node,
    name: &str,
    out: &Path,
    security: serde_json::Value,
    users: &[(&str, Option<i64>)],
) -> k8s_openapi::api::core::v1::Pod {
    let containers: Vec<serde_json::Value> = users
        .iter()
        .map(|(c, uid)| {
            let mut container = serde_json::json!({
                "name": c,
                "image": node.busybox,
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", SCRIPT],
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "C", "value": c},
                ],
                "volumeMounts": [
                    {"name": "s", "mountPath": "/s"},
                    {"name": "s4", "mountPath": "/s4"},
                    {"name": "c", "mountPath": "/c"},
                    {"name": "p", "mountPath": "/p"},
                    {"name": "out", "mountPath": "/out"},
                ],
            });
            if let Some(uid) = uid {
                container["securityContext"] = serde_json::json!({"runAsUser": uid});
            }
            container
        })
        .collect();
    busybox_pod(
        node,
        name,
        true,
        SCRIPT,
        serde_json::json!({"spec": {
            "securityContext": security,
            "containers": containers,
            "volumes": [
                {"name": "s", "secret": {"secretName": "creds"}},
                {"name": "s4", "secret": {"secretName": "creds", "defaultMode": 0o400, "items": [
                    {"key": "password", "path": "a"},
                    {"key": "password", "path": "d/b"},
                ]}},
                {"name": "c", "configMap": {"name": "settings", "defaultMode": 0o644}},
                {"name": "p", "projected": {"defaultMode": 0o644, "sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                    {"configMap": {"name": "settings"}},
                ]}},
                {"name": "out", "hostPath": {"path": out.to_string_lossy(), "type": "Directory"}},
            ],
        }}),
    )
}

/// Each container's name and its own `runAsUser`, if any.
type Users = Vec<(&'static str, Option<i64>)>;

/// The reports of `pod`'s containers, by container, once every one has written one.
fn views(out: &Path, pod: &str, containers: &[&str]) -> Option<BTreeMap<String, String>> {
    containers
        .iter()
        .map(|c| Some(((*c).to_owned(), read(&out.join(format!("v.{pod}.{c}")))?)))
        .collect()
}

/// Scenario (issue 10.1): two parents, one whose containers run as 1000 and 2000 (set on the
/// containers, no fsGroup), one with a pod-level user and an fsGroup. After a reboot with the API
/// down, every container of each copy reports the same uid, the same `stat` of every volume
/// directory and file, and the same `cat` results (including "Permission denied" where the
/// parent's container had it) as the same container of the parent did.
#[tokio::test]
async fn copies_see_their_volumes_as_the_parents_saw_the_kubelets() {
    let node = Node::from_env();
    let Scene { ns, out, agent } = Scene::start(&node, "e2e-volumes", "s3cret", "3s").await;
    {
        use std::os::unix::fs::PermissionsExt;
        // Non-root containers write their reports here.
        std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod out");
    }
    let parents: [(&str, serde_json::Value, Users); 2] = [
        (
            "users",
            serde_json::json!({}),
            vec![("u1000", Some(1000)), ("u2000", Some(2000))],
        ),
        (
            "group",
            serde_json::json!({"runAsUser": 1000, "fsGroup": 3000}),
            vec![("a", None), ("b", None)],
        ),
    ];
    for (name, security, users) in &parents {
        let pod = parent(&node, name, out.path(), security.clone(), users);
        ns.pods()
            .create(&PostParams::default(), &pod)
            .await
            .expect("create parent");
    }

    let mut seen_in_parent = BTreeMap::new();
    for (name, _, users) in &parents {
        let containers: Vec<&str> = users.iter().map(|(c, _)| *c).collect();
        let key = ns.key(name);
        let parent_views = wait_for("the parent's containers report", LONG, || async {
            views(out.path(), name, &containers)
        })
        .await;
        wait_for("an inactive checkpoint with the token", LONG, || async {
            read(&agent.inactive_manifest(&key))?;
            agent
                .secret_dir(&key)
                .join("_volume-p/token")
                .exists()
                .then_some(())
        })
        .await;
        seen_in_parent.insert(*name, parent_views);
    }

    // The "reboot": API server down, kubelet restarted with every sandbox gone.
    let outage = node.stop_apiserver();
    wait_for("agent sees the API server gone", SHORT, || async {
        (agent.metric("pod_checkpointer_api_reachable") == Some(0.0)).then_some(())
    })
    .await;
    node.sh(&["reboot-runtime"]);

    for (name, _, users) in &parents {
        let containers: Vec<&str> = users.iter().map(|(c, _)| *c).collect();
        let copy = ns.key(name).static_pod_key(&node.name);
        let copy_views = wait_for("the copy's containers report", LONG, || async {
            views(out.path(), &copy.name, &containers)
        })
        .await;
        let parent_views = &seen_in_parent[name];
        for c in &containers {
            eprintln!(
                "---- {name}/{c}: parent ----\n{}---- {name}/{c}: copy ----\n{}",
                parent_views[*c], copy_views[*c]
            );
        }
        assert_eq!(
            &copy_views, parent_views,
            "{name}: every container of the copy sees what it saw in the parent"
        );
        for c in &containers {
            assert!(
                copy_views[*c].contains("\ns3cret\n"),
                "{name}/{c} reads the secret in the copy"
            );
        }
    }

    // API back: the parents run again and the copies are deactivated.
    outage.end();
    for (name, _, _) in &parents {
        let key = ns.key(name);
        wait_for("checkpoint deactivated", LONG, || async {
            (!node.active_manifest(&key).exists()).then_some(())
        })
        .await;
    }
}
