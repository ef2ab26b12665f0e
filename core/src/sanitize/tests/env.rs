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
