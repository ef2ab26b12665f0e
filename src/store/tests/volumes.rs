//! Side trees as the containers see them: a sanitized parent written to disk must show every
//! container the modes and owners the kubelet's own secret, configMap and projected volumes show
//! (SPEC §2), whatever the users the containers run as.

use k8s_openapi::api::core::v1::Pod;

use super::*;
use crate::model::KeyData;
use crate::sanitize::{Objects, TokenSpec, sanitize};

/// A parent with the four kinds of volume directories the sanitizer makes: a secret shown whole
/// (the shared `<secret>/` directory), a secret with `items`, a nested path and `defaultMode`
/// 0400 (a directory of its own), a configMap, and a projected volume with a token.
fn parent(k: &PodKey, security: serde_json::Value, containers: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": k.name, "namespace": k.namespace, "uid": "u1" },
        "spec": {
            "securityContext": security,
            "containers": containers,
            "volumes": [
                { "name": "whole", "secret": { "secretName": "s" } },
                { "name": "strict", "secret": {
                    "secretName": "s", "defaultMode": 0o400,
                    "items": [{ "key": "a", "path": "a" }, { "key": "b", "path": "d/b" }],
                }},
                { "name": "conf", "configMap": { "name": "c", "defaultMode": 0o644 } },
                { "name": "proj", "projected": { "defaultMode": 0o644, "sources": [
                    { "serviceAccountToken": { "path": "token" } },
                    { "configMap": { "name": "c" } },
                ]}},
            ],
        },
    }))
    .expect("pod")
}

fn container(name: &str, run_as_user: Option<i64>) -> serde_json::Value {
    let mut c = serde_json::json!({ "name": name, "image": "busybox" });
    if let Some(uid) = run_as_user {
        c["securityContext"] = serde_json::json!({ "runAsUser": uid });
    }
    c
}

fn objects() -> Objects {
    let mut secret = KeyData::new();
    secret.insert("a", "alpha");
    secret.insert("b", "beta");
    let mut config = KeyData::new();
    config.insert("k", "kay");
    Objects {
        secrets: BTreeMap::from([("s".to_owned(), secret)]),
        config_maps: BTreeMap::from([("c".to_owned(), config)]),
        tokens: BTreeMap::from([(
            TokenSpec {
                audience: None,
                expiration_seconds: 3600,
            },
            "tok".to_owned(),
        )]),
    }
}

/// "path mode uid:gid" (path relative to the side roots, mode in octal) of every entry under the
/// pod's two directories, the pod directories themselves included, as `ls -ln` would say it.
fn seen(store: &Store, k: &PodKey) -> Vec<String> {
    let l = store.layout();
    let mut out = Vec::new();
    for (label, root, pod_dir) in [
        ("secret", &l.secret_dir, l.pod_secret_dir(k)),
        ("configmap", &l.configmap_dir, l.pod_configmap_dir(k)),
    ] {
        for path in std::iter::once(pod_dir.clone()).chain(tree(&pod_dir)) {
            let meta = fs::symlink_metadata(&path).expect("stat");
            let rel = path.strip_prefix(root).expect("under root").display();
            out.push(format!(
                "{label}/{rel} {:04o} {}:{}",
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid()
            ));
        }
    }
    out.sort();
    out
}

fn write(store: &Store, pod: &Pod) -> PodKey {
    let cp = sanitize(pod, &objects(), store.layout()).expect("checkpointable");
    store
        .write_inactive(&cp.key, &cp.manifest_bytes(), &cp.files)
        .expect("write");
    cp.key
}

/// Issue 10.1: two containers running as 1000 and 2000 (set on the containers), no fsGroup.
/// The kubelet's volume directories are 1777 (a tmpfs root: secret, projected) or 0777 (a plain
/// directory: configMap), nested directories 0755, files root's with the volume's modes; the
/// token keeps `defaultMode` because no single user runs every container. Only the pod's own
/// directory and above stay root's 0700.
#[test]
fn volumes_look_as_the_kubelets_to_containers_with_their_own_users() {
    if !is_root() {
        return;
    }
    let (_root, store) = store();
    let k = key("ns", "p");
    let pod = parent(
        &k,
        serde_json::json!({}),
        serde_json::json!([container("one", Some(1000)), container("two", Some(2000))]),
    );
    write(&store, &pod);
    assert_eq!(
        seen(&store, &k),
        vec![
            "configmap/ns/p 0700 0:0",
            "configmap/ns/p/c 0777 0:0",
            "configmap/ns/p/c/k 0644 0:0",
            "secret/ns/p 0700 0:0",
            "secret/ns/p/_volume-proj 1777 0:0",
            "secret/ns/p/_volume-proj/k 0644 0:0",
            "secret/ns/p/_volume-proj/token 0644 0:0",
            "secret/ns/p/_volume-strict 1777 0:0",
            "secret/ns/p/_volume-strict/a 0400 0:0",
            "secret/ns/p/_volume-strict/d 0755 0:0",
            "secret/ns/p/_volume-strict/d/b 0400 0:0",
            "secret/ns/p/s 1777 0:0",
            "secret/ns/p/s/a 0644 0:0",
            "secret/ns/p/s/b 0644 0:0",
        ]
    );
}

/// Issue 10.1 with a pod-level user and an fsGroup: the kubelet gives every entry of the volume
/// the fsGroup as group, adds group read (and, on directories, setgid and traverse) bits, and
/// makes the token 0600 owned by the one user every container runs as, 0640 with the group.
#[test]
fn volumes_look_as_the_kubelets_to_a_pod_user_with_an_fs_group() {
    if !is_root() {
        return;
    }
    let (_root, store) = store();
    let k = key("ns", "q");
    let pod = parent(
        &k,
        serde_json::json!({ "runAsUser": 1000, "runAsGroup": 1500, "fsGroup": 3000 }),
        serde_json::json!([container("one", None), container("two", None)]),
    );
    write(&store, &pod);
    assert_eq!(
        seen(&store, &k),
        vec![
            "configmap/ns/q 0700 0:0",
            "configmap/ns/q/c 2777 0:3000",
            "configmap/ns/q/c/k 0644 0:3000",
            "secret/ns/q 0700 0:0",
            "secret/ns/q/_volume-proj 3777 0:3000",
            "secret/ns/q/_volume-proj/k 0644 0:3000",
            "secret/ns/q/_volume-proj/token 0640 1000:3000",
            "secret/ns/q/_volume-strict 3777 0:3000",
            "secret/ns/q/_volume-strict/a 0440 0:3000",
            "secret/ns/q/_volume-strict/d 2755 0:3000",
            "secret/ns/q/_volume-strict/d/b 0440 0:3000",
            "secret/ns/q/s 3777 0:3000",
            "secret/ns/q/s/a 0644 0:3000",
            "secret/ns/q/s/b 0644 0:3000",
        ]
    );
}
