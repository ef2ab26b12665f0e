//! Which pods are parents, which manifests are checkpoints, and what a parent references.

use super::*;

#[test]
fn is_parent_requires_the_annotation_and_excludes_static_mirror_and_checkpoints() {
    let with =
        |annotations: Value| pod(json!({"metadata": {"name": "p", "annotations": annotations}}));
    let cases = [
        (
            json!({"checkpointer.alpha.coreos.com/checkpoint": "true"}),
            true,
        ),
        (
            json!({"checkpointer.alpha.coreos.com/checkpoint": "True"}),
            false,
        ),
        (
            json!({"checkpointer.alpha.coreos.com/checkpoint": "false"}),
            false,
        ),
        (json!({}), false),
        (
            json!({"checkpointer.alpha.coreos.com/checkpoint": "true", "kubernetes.io/config.source": "file"}),
            false,
        ),
        (
            json!({"checkpointer.alpha.coreos.com/checkpoint": "true", "kubernetes.io/config.source": "api"}),
            true,
        ),
        (
            json!({"checkpointer.alpha.coreos.com/checkpoint": "true", "kubernetes.io/config.mirror": "abc"}),
            false,
        ),
        (
            json!({"checkpointer.alpha.coreos.com/checkpoint": "true", "checkpointer.alpha.coreos.com/checkpoint-of": "p"}),
            false,
        ),
    ];
    for (annotations, expected) in cases {
        assert_eq!(
            is_parent(&with(annotations.clone())),
            expected,
            "{annotations}"
        );
    }
    assert!(!is_parent(&pod(json!({"metadata": {"name": "p"}}))));
}

#[test]
fn checkpoint_of_reads_the_parent_key() {
    let with = |metadata: Value| pod(json!({"metadata": metadata}));
    let of = "checkpointer.alpha.coreos.com/checkpoint-of";
    assert_eq!(
        checkpoint_of(&with(
            json!({"name": "web", "namespace": "prod", "annotations": {of: "web"}})
        )),
        Some(PodKey::new("prod", "web"))
    );
    assert_eq!(
        checkpoint_of(&with(json!({"name": "web", "annotations": {of: "web"}}))),
        Some(PodKey::new("default", "web"))
    );
    assert_eq!(
        checkpoint_of(&with(json!({"name": "web", "annotations": {of: ""}}))),
        None
    );
    assert_eq!(
        checkpoint_of(&with(json!({"name": "web", "namespace": "prod"}))),
        None
    );
}

#[test]
fn references_list_what_the_shell_must_fetch() {
    let parent = parent(json!({
        "serviceAccountName": "web-sa",
        "imagePullSecrets": [{"name": "registry"}],
        "volumes": [
            {"name": "a", "secret": {"secretName": "vol-secret"}},
            {"name": "b", "configMap": {"name": "vol-cm"}},
            {"name": "c", "projected": {"sources": [
                {"secret": {"name": "proj-secret"}},
                {"configMap": {"name": "proj-cm"}},
                {"serviceAccountToken": {"path": "t"}},
                {"serviceAccountToken": {"path": "v", "audience": "vault", "expirationSeconds": 600}},
            ]}},
        ],
        "initContainers": [{"name": "init", "image": "i", "envFrom": [{"secretRef": {"name": "init-secret"}}]}],
        "containers": [{"name": "app", "image": "a",
            "env": [
                {"name": "A", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}},
                {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "k"}}},
            ],
            "envFrom": [{"configMapRef": {"name": "from-cm"}}]}],
        "ephemeralContainers": [{"name": "debug", "image": "d", "envFrom": [{"secretRef": {"name": "debug-secret"}}]}],
    }));
    let set = |names: &[&str]| {
        names
            .iter()
            .map(|n| (*n).to_owned())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        references(&parent),
        References {
            secrets: set(&["env-secret", "init-secret", "proj-secret", "vol-secret"]),
            config_maps: set(&["env-cm", "from-cm", "proj-cm", "vol-cm"]),
            tokens: BTreeSet::from([
                TokenSpec {
                    audience: None,
                    expiration_seconds: 3600
                },
                TokenSpec {
                    audience: Some("vault".into()),
                    expiration_seconds: 600
                },
            ]),
            service_account: Some("web-sa".into()),
        }
    );
    assert_eq!(
        references(&pod(json!({"metadata": {"name": "x"}}))),
        References::default()
    );
}
