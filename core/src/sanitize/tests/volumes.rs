//! Secret and configMap volumes, and the paths and names a hostile pod could abuse.

use super::*;

#[test]
fn plain_secret_volumes_share_the_object_directory() {
    let parent = with_volumes(json!([
        {"name": "a", "secret": {"secretName": "tls"}},
        {"name": "b", "secret": {"secretName": "tls", "defaultMode": 0o644}},
    ]));
    let objects = objects(
        &[("tls", data(&[("tls.key", b"KEY"), ("tls.crt", b"CRT")]))],
        &[],
    );
    let checkpoint = ok(&parent, &objects);
    let d = format!("{SEC}/tls");
    assert_eq!(
        checkpoint.files,
        vec![
            dir(&d),
            file(&format!("{d}/tls.crt"), b"CRT", 0o644),
            file(&format!("{d}/tls.key"), b"KEY", 0o644)
        ]
    );
    assert_eq!(volume(&checkpoint, "a"), host_path("a", &d));
    assert_eq!(volume(&checkpoint, "b"), host_path("b", &d));
}

#[test]
fn secret_items_and_modes_get_their_own_directory() {
    let parent = with_volumes(
        json!([{"name": "creds", "secret": {"secretName": "db", "defaultMode": 0o400, "items": [
            {"key": "user", "path": "user"},
            {"key": "pass", "path": "nested/pass", "mode": 0o600},
        ]}}]),
    );
    let objects = objects(
        &[(
            "db",
            data(&[("user", b"u"), ("pass", b"p"), ("unused", b"x")]),
        )],
        &[],
    );
    let checkpoint = ok(&parent, &objects);
    let d = format!("{SEC}/_volume-creds");
    assert_eq!(
        checkpoint.files,
        vec![
            dir(&d),
            sub_dir(&format!("{d}/nested")),
            file(&format!("{d}/nested/pass"), b"p", 0o600),
            file(&format!("{d}/user"), b"u", 0o400),
        ]
    );
    assert_eq!(volume(&checkpoint, "creds"), host_path("creds", &d));
}

#[test]
fn secret_with_other_default_mode_gets_its_own_directory() {
    let parent = with_volumes(
        json!([{"name": "keys", "secret": {"secretName": "tls", "defaultMode": 0o1600}}]),
    );
    let objects = objects(&[("tls", data(&[("tls.key", b"KEY")]))], &[]);
    let checkpoint = ok(&parent, &objects);
    let d = format!("{SEC}/_volume-keys");
    assert_eq!(
        checkpoint.files,
        vec![dir(&d), file(&format!("{d}/tls.key"), b"KEY", 0o600)]
    );
}

#[test]
fn optional_missing_secret_yields_an_empty_directory() {
    let parent =
        with_volumes(json!([{"name": "v", "secret": {"secretName": "maybe", "optional": true}}]));
    let checkpoint = ok(&parent, &Objects::default());
    assert_eq!(checkpoint.files, vec![dir(&format!("{SEC}/maybe"))]);
    assert_eq!(
        volume(&checkpoint, "v"),
        host_path("v", &format!("{SEC}/maybe"))
    );
}

#[test]
fn required_missing_secret_is_refused() {
    let parent = with_volumes(json!([{"name": "v", "secret": {"secretName": "gone"}}]));
    let refusal = sanitize(&parent, &Objects::default(), &layout()).expect_err("must be refused");
    assert_eq!(
        refusal,
        Refusal::MissingObject {
            kind: "secret",
            namespace: "prod".into(),
            name: "gone".into(),
            needed_by: "volume \"v\"".into(),
        }
    );
    assert_eq!(refusal.reason(), "missing_object");
    assert_eq!(
        refusal.to_string(),
        "secret prod/gone (needed by volume \"v\") was not found and is not optional"
    );
}

#[test]
fn missing_item_key_is_skipped_when_optional_and_refused_otherwise() {
    let volumes = |optional: bool| {
        json!([{"name": "v", "configMap": {"name": "cfg", "optional": optional, "items": [
            {"key": "present", "path": "p"}, {"key": "absent", "path": "a"}]}}])
    };
    let objects = objects(&[], &[("cfg", data(&[("present", b"yes")]))]);
    let checkpoint = ok(&with_volumes(volumes(true)), &objects);
    let d = format!("{CM}/_volume-v");
    assert_eq!(
        checkpoint.files,
        vec![cm_dir(&d), file(&format!("{d}/p"), b"yes", 0o644)]
    );

    let refusal =
        sanitize(&with_volumes(volumes(false)), &objects, &layout()).expect_err("refused");
    assert_eq!(
        refusal,
        Refusal::MissingKey {
            kind: "configMap",
            namespace: "prod".into(),
            name: "cfg".into(),
            key: "absent".into(),
            needed_by: "volume \"v\"".into(),
        }
    );
    assert_eq!(refusal.reason(), "missing_key");
}

#[test]
fn configmap_binary_data_is_written_byte_for_byte() {
    let parent = with_volumes(json!([{"name": "v", "configMap": {"name": "blobs"}}]));
    let blob: &[u8] = &[0, 159, 146, 150, 255];
    let objects = objects(
        &[],
        &[("blobs", data(&[("blob.bin", blob), ("text", b"hi")]))],
    );
    let checkpoint = ok(&parent, &objects);
    let d = format!("{CM}/blobs");
    assert_eq!(
        checkpoint.files,
        vec![
            cm_dir(&d),
            file(&format!("{d}/blob.bin"), blob, 0o644),
            file(&format!("{d}/text"), b"hi", 0o644)
        ]
    );
    assert_eq!(volume(&checkpoint, "v"), host_path("v", &d));
}

#[test]
fn conflicting_paths_are_refused() {
    let parent = with_volumes(json!([{"name": "v", "secret": {"secretName": "s"}}]));
    let objects = objects(&[("s", data(&[("a", b"1"), ("a/b", b"2")]))], &[]);
    let refusal = sanitize(&parent, &objects, &layout()).expect_err("refused");
    assert_eq!(
        refusal,
        Refusal::PathConflict {
            path: PathBuf::from(format!("{SEC}/s/a"))
        }
    );
    assert_eq!(refusal.reason(), "path_conflict");
}

#[test]
fn converted_volume_mounts_become_read_only() {
    let parent = parent(json!({
        "volumes": [{"name": "cfg", "configMap": {"name": "c"}}, {"name": "scratch", "emptyDir": {}}],
        "initContainers": [{"name": "init", "image": "i", "volumeMounts": [{"name": "cfg", "mountPath": "/c"}]}],
        "containers": [{"name": "app", "image": "a", "volumeMounts": [
            {"name": "cfg", "mountPath": "/c", "readOnly": false},
            {"name": "scratch", "mountPath": "/tmp"},
        ]}],
    }));
    let objects = objects(&[], &[("c", KeyData::new())]);
    let checkpoint = ok(&parent, &objects);
    let read_only = |c: &Container| -> Vec<Option<bool>> {
        c.volume_mounts
            .iter()
            .flatten()
            .map(|m| m.read_only)
            .collect()
    };
    let spec = spec(&checkpoint);
    assert_eq!(read_only(&spec.containers[0]), vec![Some(true), None]);
    assert_eq!(
        read_only(&spec.init_containers.as_ref().expect("init")[0]),
        vec![Some(true)]
    );
}

#[test]
fn persistent_volume_claims_and_ephemeral_volumes_are_refused() {
    let cases = [
        (
            json!({"name": "data", "persistentVolumeClaim": {"claimName": "pvc"}}),
            "a persistentVolumeClaim",
        ),
        (
            json!({"name": "data", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}),
            "an ephemeral volume (it claims a PersistentVolumeClaim)",
        ),
    ];
    for (vol, kind) in cases {
        let refusal = sanitize(&with_volumes(json!([vol])), &Objects::default(), &layout())
            .expect_err("refused");
        assert_eq!(
            refusal,
            Refusal::UnsupportedVolume {
                volume: "data".into(),
                kind: kind.into()
            }
        );
        assert_eq!(refusal.reason(), "unsupported_volume");
        assert_eq!(
            refusal.to_string(),
            format!("volume \"data\" is {kind}, which a static pod cannot carry")
        );
    }
}

/// Issue 12.3: volumes that read a Secret through the API (a CSI driver's publish secret, the
/// `secretRef` of in-tree drivers, azureFile's `secretName`) would make the kubelet reject the
/// static pod: refused with a reason, like PVCs.
#[test]
fn volumes_that_read_a_secret_through_the_api_are_refused() {
    let cases = [
        json!({"name": "data", "csi": {"driver": "d", "nodePublishSecretRef": {"name": "s"}}}),
        json!({"name": "data", "rbd": {"monitors": ["m"], "image": "i", "secretRef": {"name": "s"}}}),
        json!({"name": "data", "cephfs": {"monitors": ["m"], "secretRef": {"name": "s"}}}),
        json!({"name": "data", "iscsi": {"targetPortal": "p", "iqn": "q", "lun": 0, "secretRef": {"name": "s"}}}),
        json!({"name": "data", "flexVolume": {"driver": "d", "secretRef": {"name": "s"}}}),
        json!({"name": "data", "azureFile": {"secretName": "s", "shareName": "x"}}),
        json!({"name": "data", "scaleIO": {"gateway": "g", "system": "s", "secretRef": {"name": "s"}}}),
        json!({"name": "data", "storageos": {"secretRef": {"name": "s"}}}),
        json!({"name": "data", "cinder": {"volumeID": "v", "secretRef": {"name": "s"}}}),
    ];
    for vol in cases {
        let refusal = sanitize(
            &with_volumes(json!([vol.clone()])),
            &Objects::default(),
            &layout(),
        )
        .expect_err(&format!("refused: {vol}"));
        assert_eq!(refusal.reason(), "unsupported_volume", "{vol}");
        assert!(refusal.to_string().contains("Secret"), "{refusal}");
    }
    // Without a secret reference the same drivers need nothing from the API.
    let plain = json!({"name": "data", "csi": {"driver": "d"}});
    assert!(
        sanitize(
            &with_volumes(json!([plain])),
            &Objects::default(),
            &layout()
        )
        .is_ok()
    );
}

#[test]
fn hostile_names_and_paths_are_refused() {
    let secret = objects(&[("s", data(&[("k", b"v")]))], &[]);
    let hostile_key = |key: &str| objects(&[("s", data(&[(key, b"v")]))], &[]);
    let item = |path: &str| {
        with_volumes(
            json!([{"name": "v", "secret": {"secretName": "s", "items": [{"key": "k", "path": path}]}}]),
        )
    };
    let plain = with_volumes(json!([{"name": "v", "secret": {"secretName": "s"}}]));
    let mut bad_pod_name = plain.clone();
    bad_pod_name.metadata.name = Some("../x".into());
    let mut bad_namespace = plain.clone();
    bad_namespace.metadata.namespace = Some("Prod".into());
    let cases: Vec<(&str, Pod, Objects, &str)> = vec![
        (
            "secret name ../x",
            with_volumes(
                json!([{"name": "v", "secret": {"secretName": "../x", "optional": true}}]),
            ),
            Objects::default(),
            "invalid_name",
        ),
        (
            "configMap name ..",
            with_volumes(json!([{"name": "v", "configMap": {"name": ".."}}])),
            Objects::default(),
            "invalid_name",
        ),
        (
            "empty secret name",
            with_volumes(json!([{"name": "v", "secret": {}}])),
            Objects::default(),
            "invalid_name",
        ),
        (
            "volume name with /",
            with_volumes(
                json!([{"name": "a/b", "secret": {"secretName": "s", "items": [{"key": "k", "path": "k"}]}}]),
            ),
            secret.clone(),
            "invalid_name",
        ),
        (
            "pod name ../x",
            bad_pod_name,
            secret.clone(),
            "invalid_name",
        ),
        (
            "upper-case namespace",
            bad_namespace,
            secret.clone(),
            "invalid_name",
        ),
        (
            "env ref name",
            with_env(
                json!([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "a/b", "key": "k"}}}]),
                json!(null),
            ),
            Objects::default(),
            "invalid_name",
        ),
        (
            "absolute item path",
            item("/etc/passwd"),
            secret.clone(),
            "unsafe_path",
        ),
        (
            "item path ../x",
            item("../x"),
            secret.clone(),
            "unsafe_path",
        ),
        (
            "item path a/../../b",
            item("a/../../b"),
            secret.clone(),
            "unsafe_path",
        ),
        (
            "item path ..data",
            item("..data"),
            secret.clone(),
            "unsafe_path",
        ),
        (
            "item path a/..b",
            item("a/..b"),
            secret.clone(),
            "unsafe_path",
        ),
        ("empty item path", item(""), secret.clone(), "unsafe_path"),
        ("item path .", item("."), secret.clone(), "unsafe_path"),
        (
            "item path with NUL",
            item("a\0b"),
            secret.clone(),
            "unsafe_path",
        ),
        (
            "key ..data",
            plain.clone(),
            hostile_key("..data"),
            "unsafe_path",
        ),
        (
            "key ../../etc/cron.d/x",
            plain.clone(),
            hostile_key("../../etc/cron.d/x"),
            "unsafe_path",
        ),
        (
            "key /abs",
            plain.clone(),
            hostile_key("/abs"),
            "unsafe_path",
        ),
        (
            "token path ..",
            with_volumes(
                json!([{"name": "p", "projected": {"sources": [{"serviceAccountToken": {"path": "../t"}}]}}]),
            ),
            Objects::default(),
            "unsafe_path",
        ),
        (
            "downward path /x",
            with_volumes(
                json!([{"name": "p", "projected": {"sources": [{"downwardAPI": {"items": [{"path": "/x", "fieldRef": {"fieldPath": "metadata.name"}}]}}]}}]),
            ),
            Objects::default(),
            "unsafe_path",
        ),
    ];
    for (what, pod, objects, reason) in cases {
        let refusal = sanitize(&pod, &objects, &layout()).expect_err(what);
        assert_eq!(refusal.reason(), reason, "{what}: {refusal}");
    }
    let refusal = sanitize(&item("../x"), &secret, &layout()).expect_err("refused");
    assert_eq!(
        refusal,
        Refusal::UnsafePath {
            context: "volume \"v\"".into(),
            path: "../x".into()
        }
    );
}

#[test]
fn harmless_path_spellings_are_normalised() {
    let parent = with_volumes(
        json!([{"name": "v", "secret": {"secretName": "s", "items": [
        {"key": "k", "path": "./a//b/"}]}}]),
    );
    let objects = objects(&[("s", data(&[("k", b"v")]))], &[]);
    let checkpoint = ok(&parent, &objects);
    let d = format!("{SEC}/_volume-v");
    assert_eq!(
        checkpoint.files,
        vec![
            dir(&d),
            sub_dir(&format!("{d}/a")),
            file(&format!("{d}/a/b"), b"v", 0o644)
        ]
    );
}

/// The store's temporary-file prefix (`TMP_PREFIX`): the store refuses and sweeps side files whose
/// name starts with it, so a key or path using it must be refused here, naming the key, rather
/// than fail every pass in the store.
const TMP: &str = crate::model::TMP_PREFIX;

#[test]
fn keys_and_paths_using_the_store_temporary_prefix_are_refused_naming_the_key() {
    let key_in = |key: &str| {
        objects(
            &[("s", data(&[(key, b"v")]))],
            &[("c", data(&[(key, b"v")]))],
        )
    };
    let secret = key_in("k");
    let plain = with_volumes(json!([{"name": "v", "secret": {"secretName": "s"}}]));
    let item = |path: &str| {
        with_volumes(
            json!([{"name": "v", "secret": {"secretName": "s", "items": [{"key": "k", "path": path}]}}]),
        )
    };
    let projected =
        |source: Value| with_volumes(json!([{"name": "p", "projected": {"sources": [source]}}]));
    let nested = format!("a/{TMP}x/b");
    let cases: Vec<(&str, Pod, Objects, String)> = vec![
        (
            "key equal to the prefix",
            plain.clone(),
            key_in(TMP),
            TMP.to_owned(),
        ),
        (
            "key starting with the prefix",
            plain.clone(),
            key_in(&format!("{TMP}x")),
            format!("{TMP}x"),
        ),
        (
            "configMap key",
            with_volumes(json!([{"name": "v", "configMap": {"name": "c"}}])),
            key_in(&format!("{TMP}cfg")),
            format!("{TMP}cfg"),
        ),
        (
            "item path",
            item(&format!("{TMP}x")),
            secret.clone(),
            format!("{TMP}x"),
        ),
        (
            "nested item path",
            item(&nested),
            secret.clone(),
            nested.clone(),
        ),
        (
            "projected secret item",
            projected(
                json!({"secret": {"name": "s", "items": [{"key": "k", "path": format!("{TMP}p")}]}}),
            ),
            secret.clone(),
            format!("{TMP}p"),
        ),
        (
            "downward item path",
            projected(
                json!({"downwardAPI": {"items": [{"path": format!("{TMP}d"), "fieldRef": {"fieldPath": "metadata.name"}}]}}),
            ),
            Objects::default(),
            format!("{TMP}d"),
        ),
        (
            "token path",
            projected(json!({"serviceAccountToken": {"path": format!("{TMP}t")}})),
            Objects::default(),
            format!("{TMP}t"),
        ),
    ];
    for (what, pod, objects, named) in cases {
        let refusal = sanitize(&pod, &objects, &layout()).expect_err(what);
        assert_eq!(refusal.reason(), "reserved_path", "{what}: {refusal}");
        let message = refusal.to_string();
        assert!(message.contains(&format!("{named:?}")), "{what}: {message}");
        assert!(message.contains("temporary"), "{what}: {message}");
    }

    // A name used as a directory (the object's shared directory) is refused alike.
    let named_dir = with_volumes(
        json!([{"name": "v", "secret": {"secretName": format!("{TMP}s"), "optional": true}}]),
    );
    let refusal = sanitize(&named_dir, &Objects::default(), &layout()).expect_err("refused");
    assert_eq!(refusal.reason(), "invalid_name", "{refusal}");

    // The prefix elsewhere in a name, or a shorter spelling of it, is an ordinary name.
    for key in [
        format!("x{TMP}"),
        ".pod-checkpointer-tmp".to_owned(),
        format!("a/x{TMP}"),
    ] {
        let checkpoint = ok(&item(&key), &secret);
        assert!(
            checkpoint.files.iter().any(|f| f.path.ends_with(&key)),
            "{key}: {:?}",
            checkpoint.files.iter().map(|f| &f.path).collect::<Vec<_>>()
        );
    }
}
