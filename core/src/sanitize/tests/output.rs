//! The checkpoint as written: idempotence, manifest bytes, digest, refusal labels.

use super::*;

/// A parent using every kind of reference at once.
fn rich_parent() -> (Pod, Objects) {
    let parent = parent(json!({
        "serviceAccountName": "web",
        "nodeName": "node-1",
        "securityContext": {"runAsUser": 1000, "fsGroup": 2000},
        "volumes": [
            {"name": "tls", "secret": {"secretName": "tls"}},
            {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "a", "path": "conf/a"}]}},
            kube_api_access(),
            {"name": "scratch", "emptyDir": {}},
        ],
        "initContainers": [{"name": "init", "image": "i", "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "I_"}],
            "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}],
        "containers": [{"name": "app", "image": "a",
            "env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "tls", "key": "pw"}}}, {"name": "X", "value": "$(PW)"}],
            "volumeMounts": [{"name": "tls", "mountPath": "/tls"}, {"name": "kube-api-access-xyz", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}],
    }));
    let mut objects = objects(
        &[("tls", data(&[("tls.crt", b"CRT"), ("pw", b"p$w")]))],
        &[
            ("cfg", data(&[("a", b"A")])),
            ("kube-root-ca.crt", data(&[("ca.crt", b"CA")])),
        ],
    );
    objects.tokens.insert(token_spec(), "tok".into());
    (parent, objects)
}

#[test]
fn sanitizing_a_checkpoint_again_changes_nothing() {
    let (parent, objects) = rich_parent();
    let first = ok(&parent, &objects);
    let reparsed: Pod = serde_json::from_slice(&first.manifest_bytes()).expect("manifest parses");
    assert_eq!(checkpoint_of(&reparsed), Some(PodKey::new("prod", "web")));
    assert!(!is_parent(&reparsed));
    assert_eq!(references(&reparsed), References::default());
    let second = ok(&reparsed, &Objects::default());
    assert_eq!(
        String::from_utf8(second.manifest_bytes()).expect("utf-8"),
        String::from_utf8(first.manifest_bytes()).expect("utf-8")
    );
    assert_eq!(second.key, first.key);
    assert_eq!(second.files, vec![]);
    assert_eq!(second.warnings, vec![]);
    let third = ok(&reparsed, &objects);
    assert_eq!(third.manifest_bytes(), first.manifest_bytes());
}

#[test]
fn manifest_bytes_are_pretty_json_with_a_trailing_newline() {
    let checkpoint = ok(
        &parent(json!({"containers": [{"name": "app", "image": "a"}]})),
        &Objects::default(),
    );
    let text = String::from_utf8(checkpoint.manifest_bytes()).expect("utf-8");
    assert_eq!(
        text,
        "{\n  \"apiVersion\": \"v1\",\n  \"kind\": \"Pod\",\n  \"metadata\": {\n    \"annotations\": {\n      \
         \"checkpointer.alpha.coreos.com/checkpoint-of\": \"web\"\n    },\n    \"name\": \"web\",\n    \
         \"namespace\": \"prod\"\n  },\n  \"spec\": {\n    \"automountServiceAccountToken\": false,\n    \
         \"containers\": [\n      {\n        \"image\": \"a\",\n        \"name\": \"app\"\n      }\n    ]\n  }\n}\n"
    );
}

#[test]
fn digest_tracks_the_manifest_and_every_side_file() {
    let (parent, objects) = rich_parent();
    let base = ok(&parent, &objects);
    assert_eq!(base.digest(), ok(&parent, &objects).digest());
    assert_eq!(base.files[0].owner, Owner { uid: 0, gid: 2000 });

    let mut changed_data = objects.clone();
    changed_data
        .secrets
        .insert("tls".into(), data(&[("tls.crt", b"NEW"), ("pw", b"p$w")]));
    let mut changed_token = objects.clone();
    changed_token.tokens.insert(token_spec(), "tok2".into());
    let mut changed_owner = base.clone();
    changed_owner.files[0].owner.uid = 1;
    let mut changed_mode = base.clone();
    if let Some(SideEntry::File { mode, .. }) = changed_mode
        .files
        .iter_mut()
        .map(|f| &mut f.entry)
        .find(|e| matches!(e, SideEntry::File { .. }))
    {
        *mode = 0o600;
    }
    let mut changed_labels = parent.clone();
    changed_labels.metadata.labels = Some(BTreeMap::from([("v".into(), "2".into())]));

    for other in [
        ok(&parent, &changed_data).digest(),
        ok(&parent, &changed_token).digest(),
        changed_owner.digest(),
        changed_mode.digest(),
        ok(&changed_labels, &objects).digest(),
    ] {
        assert_ne!(other, base.digest());
    }
}

#[test]
fn refusal_reasons_are_stable_labels() {
    let cases = [
        (Refusal::NoSpec, "invalid_pod"),
        (
            Refusal::InvalidName {
                what: "pod name",
                name: "X".into(),
            },
            "invalid_name",
        ),
        (
            Refusal::UnsafePath {
                context: "c".into(),
                path: "..".into(),
            },
            "unsafe_path",
        ),
        (
            Refusal::UnsupportedVolume {
                volume: "v".into(),
                kind: "k".into(),
            },
            "unsupported_volume",
        ),
        (
            Refusal::UnsupportedField {
                volume: "v".into(),
                field: "f".into(),
                why: "w".into(),
            },
            "unsupported_field",
        ),
        (Refusal::PathConflict { path: "/p".into() }, "path_conflict"),
    ];
    for (refusal, reason) in cases {
        assert_eq!(refusal.reason(), reason);
    }
    let no_spec = pod(json!({"metadata": {"name": "web"}}));
    assert_eq!(
        sanitize(&no_spec, &Objects::default(), &layout()).expect_err("refused"),
        Refusal::NoSpec
    );
}
