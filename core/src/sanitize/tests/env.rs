//! env and envFrom turned into literals.

use super::*;

#[test]
fn env_from_and_key_refs_become_literals_with_env_taking_precedence() {
    let parent = with_env(
        json!([
            {"name": "CFG_MODE", "value": "override"},
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LEVEL"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ]),
        json!([
            {"configMapRef": {"name": "settings"}, "prefix": "CFG_"},
            {"secretRef": {"name": "creds"}},
        ]),
    );
    let objects = objects(
        &[(
            "creds",
            data(&[("user", b"admin"), ("password", b"s3cr$(t)")]),
        )],
        &[(
            "settings",
            data(&[
                ("MODE", b"fast"),
                ("bad=key", b"x"),
                ("LEVEL", b"3"),
                ("", b"e"),
            ]),
        )],
    );
    let checkpoint = ok(&parent, &objects);
    assert_eq!(
        env(&checkpoint),
        json!([
            {"name": "CFG_", "value": "e"},
            {"name": "CFG_LEVEL", "value": "3"},
            {"name": "CFG_MODE", "value": "fast"},
            {"name": "password", "value": "s3cr$$(t)"},
            {"name": "user", "value": "admin"},
            {"name": "CFG_MODE", "value": "override"},
            {"name": "PASSWORD", "value": "s3cr$$(t)"},
            {"name": "LEVEL", "value": "3"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ])
    );
    assert_eq!(spec(&checkpoint).containers[0].env_from, None);
}

#[test]
fn later_env_from_sources_override_earlier_ones_and_invalid_names_are_skipped() {
    let parent = with_env(
        json!(null),
        json!([{"configMapRef": {"name": "a"}}, {"secretRef": {"name": "b"}}]),
    );
    let objects = objects(
        &[("b", data(&[("X", b"from-b")]))],
        &[(
            "a",
            data(&[("X", b"from-a"), ("Y", b"y"), ("bad\tname", b"z")]),
        )],
    );
    let checkpoint = ok(&parent, &objects);
    assert_eq!(
        env(&checkpoint),
        json!([{"name": "Y", "value": "y"}, {"name": "X", "value": "from-b"}])
    );
}

#[test]
fn optional_missing_env_references_are_dropped() {
    let parent = with_env(
        json!([
            {"name": "A", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k", "optional": true}}},
            {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "gone", "optional": true}}},
            {"name": "C", "value": "c"},
        ]),
        json!([{"secretRef": {"name": "gone", "optional": true}}]),
    );
    let objects = objects(&[], &[("cfg", data(&[("k", b"v")]))]);
    let checkpoint = ok(&parent, &objects);
    assert_eq!(env(&checkpoint), json!([{"name": "C", "value": "c"}]));
}

#[test]
fn required_missing_env_references_are_refused() {
    let objects = objects(&[("s", data(&[("k", b"v")]))], &[]);
    let cases = [
        (
            with_env(
                json!([{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "nope"}}}]),
                json!(null),
            ),
            Refusal::MissingKey {
                kind: "secret",
                namespace: "prod".into(),
                name: "s".into(),
                key: "nope".into(),
                needed_by: "env \"A\" of container \"app\"".into(),
            },
        ),
        (
            with_env(
                json!([{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]),
                json!(null),
            ),
            Refusal::MissingObject {
                kind: "configMap",
                namespace: "prod".into(),
                name: "c".into(),
                needed_by: "env \"A\" of container \"app\"".into(),
            },
        ),
        (
            with_env(json!(null), json!([{"configMapRef": {"name": "c"}}])),
            Refusal::MissingObject {
                kind: "configMap",
                namespace: "prod".into(),
                name: "c".into(),
                needed_by: "envFrom of container \"app\"".into(),
            },
        ),
    ];
    for (parent, expected) in cases {
        assert_eq!(
            sanitize(&parent, &objects, &layout()).expect_err("refused"),
            expected
        );
    }
}

#[test]
fn binary_env_values_are_refused() {
    let objects = objects(&[("s", data(&[("k", &[0xff, 0xfe])]))], &[]);
    for parent in [
        with_env(
            json!([{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]),
            json!(null),
        ),
        with_env(json!(null), json!([{"secretRef": {"name": "s"}}])),
    ] {
        let refusal = sanitize(&parent, &objects, &layout()).expect_err("refused");
        assert_eq!(refusal.reason(), "binary_env");
        assert!(
            refusal.to_string().contains("key \"k\" of secret \"s\""),
            "{refusal}"
        );
    }
}

// The rules below follow the kubelet's makeEnvironmentVariables (pkg/kubelet/kubelet_pods.go,
// v1.34) and its validation of static pods (pkg/kubelet/config/common.go), since the checkpoint
// is a static pod.

#[test]
fn env_from_a_config_map_reads_data_and_ignores_binary_data() {
    let parent = with_env(
        json!(null),
        json!([{"configMapRef": {"name": "cm"}, "prefix": "P_"}]),
    );
    let objects = objects(
        &[],
        &[(
            "cm",
            config_map(
                &[("A", "a")],
                &[("BIN", &[0xff, 0x00]), ("TXT", b"utf-8 but binaryData")],
            ),
        )],
    );
    let checkpoint = ok(&parent, &objects);
    assert_eq!(env(&checkpoint), json!([{"name": "P_A", "value": "a"}]));
}

#[test]
fn config_map_key_refs_do_not_see_binary_data() {
    let objects = objects(
        &[],
        &[(
            "cm",
            config_map(&[("A", "a")], &[("BIN", &[0xff]), ("TXT", b"text")]),
        )],
    );
    let key_ref = |key: &str, optional: bool| {
        with_env(
            json!([{"name": "V", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": key, "optional": optional}}},
                   {"name": "KEEP", "value": "k"}]),
            json!(null),
        )
    };
    for key in ["BIN", "TXT"] {
        // Required: the kubelet fails with "couldn't find key"; the checkpoint is refused alike.
        assert_eq!(
            sanitize(&key_ref(key, false), &objects, &layout()).expect_err(key),
            Refusal::MissingKey {
                kind: "configMap",
                namespace: "prod".into(),
                name: "cm".into(),
                key: key.into(),
                needed_by: "env \"V\" of container \"app\"".into(),
            },
        );
        // Optional: the kubelet leaves the variable out.
        let checkpoint = ok(&key_ref(key, true), &objects);
        assert_eq!(
            env(&checkpoint),
            json!([{"name": "KEEP", "value": "k"}]),
            "{key}"
        );
    }
}

#[test]
fn a_config_map_key_in_both_data_and_binary_data_is_data_in_env_and_binary_data_in_volumes() {
    let parent = web()
        .volumes(json!([{"name": "v", "configMap": {"name": "cm"}}]))
        .env(
            json!([{"name": "REF", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}]),
            json!([{"configMapRef": {"name": "cm"}}]),
        )
        .build();
    let objects = objects(
        &[],
        &[("cm", config_map(&[("k", "text")], &[("k", b"bin")]))],
    );
    let checkpoint = ok(&parent, &objects);
    assert_eq!(
        env(&checkpoint),
        json!([{"name": "k", "value": "text"}, {"name": "REF", "value": "text"}])
    );
    assert!(
        checkpoint
            .files
            .contains(&file(&format!("{CM}/cm/k"), b"bin", 0o644))
    );
}

#[test]
fn env_from_names_are_prefixed_then_kept_only_if_a_static_pod_accepts_them() {
    // (prefix, key, kept): the static pod's env names must match [-._a-zA-Z][-._a-zA-Z0-9]* and
    // not be "." or start with "..", else the kubelet rejects the whole checkpoint.
    let cases = [
        ("", "KEY", true),
        ("", "a.b-c_D9", true),
        ("", ".x", true),
        ("", "-x", true),
        ("", "1KEY", false),
        ("P_", "1KEY", true),
        ("1", "KEY", false),
        ("my prefix ", "K", false),
        ("a:", "b", false),
        ("..", "x", false),
        ("", "..x", false),
        (".", ".", false),
        ("x=", "y", false),
    ];
    for (prefix, key, kept) in cases {
        let parent = with_env(
            json!(null),
            json!([{"configMapRef": {"name": "cm"}, "prefix": prefix}]),
        );
        let objects = objects(&[], &[("cm", config_map(&[(key, "v")], &[]))]);
        let checkpoint = ok(&parent, &objects);
        let expected = if kept {
            json!([{"name": format!("{prefix}{key}"), "value": "v"}])
        } else {
            json!(null)
        };
        assert_eq!(env(&checkpoint), expected, "prefix {prefix:?} key {key:?}");
    }
}

#[test]
fn own_env_names_a_static_pod_rejects_are_refused_naming_them() {
    for (name, container) in [
        ("1X", "app"),
        ("MY VAR", "app"),
        ("a:b", "init"),
        ("..x", "app"),
    ] {
        let spec = if container == "init" {
            json!({"containers": [{"name": "app", "image": "a"}],
                   "initContainers": [{"name": "init", "image": "i", "env": [{"name": name, "value": "v"}]}]})
        } else {
            json!({"containers": [{"name": "app", "image": "a", "env": [{"name": name, "value": "v"}]}]})
        };
        let refusal = sanitize(&parent(spec), &Objects::default(), &layout()).expect_err(name);
        assert_eq!(refusal.reason(), "invalid_env_name", "{name}: {refusal}");
        let message = refusal.to_string();
        assert!(
            message.contains(&format!("{name:?}")) && message.contains(&format!("{container:?}")),
            "{message}"
        );
    }
    for name in ["A", "my.env-name", "_x", "-", ".x"] {
        let with_name = with_env(json!([{"name": name, "value": "v"}]), json!(null));
        ok(&with_name, &Objects::default());
    }
}

#[test]
fn env_entries_follow_env_from_so_they_win_and_expand_against_it() {
    // The kubelet fills its map from envFrom, then walks env in order: B expands $(A) to the
    // envFrom value, and A is then overridden. Keeping both A entries, envFrom first, does the same.
    let parent = with_env(
        json!([{"name": "B", "value": "$(A)"}, {"name": "A", "value": "2"}]),
        json!([{"configMapRef": {"name": "cm"}}]),
    );
    let objects = objects(&[], &[("cm", config_map(&[("A", "1")], &[]))]);
    assert_eq!(
        env(&ok(&parent, &objects)),
        json!([
            {"name": "A", "value": "1"},
            {"name": "B", "value": "$(A)"},
            {"name": "A", "value": "2"},
        ])
    );
}

#[test]
fn an_optional_missing_env_reference_leaves_the_env_from_value_in_place() {
    let parent = with_env(
        json!([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k", "optional": true}}}]),
        json!([{"configMapRef": {"name": "cm"}}]),
    );
    let objects = objects(&[], &[("cm", config_map(&[("X", "from-cm")], &[]))]);
    assert_eq!(
        env(&ok(&parent, &objects)),
        json!([{"name": "X", "value": "from-cm"}])
    );
}
