//! Metadata and spec: what a checkpoint keeps, drops and who owns its side files.

use super::*;

#[test]
fn metadata_keeps_only_name_namespace_labels_and_checkpoint_of() {
    let parent = pod(json!({
        "metadata": {
            "name": "web", "namespace": "prod", "uid": "uid-1", "resourceVersion": "42",
            "generation": 3, "generateName": "web-", "finalizers": ["x/y"],
            "creationTimestamp": "2024-01-01T00:00:00Z", "deletionTimestamp": "2024-01-02T00:00:00Z",
            "labels": {"app": "web"},
            "annotations": {"checkpointer.alpha.coreos.com/checkpoint": "true", "other": "x"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "web", "uid": "ds-1"}],
            "managedFields": [{"manager": "kubectl", "operation": "Update"}],
        },
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
        "status": {"phase": "Running", "podIP": "10.0.0.1"},
    }));
    let checkpoint = ok(&parent, &Objects::default());
    assert_eq!(checkpoint.key, PodKey::new("prod", "web"));
    assert_eq!(
        checkpoint.manifest.metadata,
        ObjectMeta {
            name: Some("web".into()),
            namespace: Some("prod".into()),
            labels: Some(BTreeMap::from([("app".into(), "web".into())])),
            annotations: Some(BTreeMap::from([(
                CHECKPOINT_OF_ANNOTATION.into(),
                "web".into()
            )])),
            ..ObjectMeta::default()
        }
    );
    assert_eq!(checkpoint.manifest.status, None);
    assert_eq!(checkpoint.files, vec![]);
    assert_eq!(checkpoint.warnings, vec![]);
}

#[test]
fn spec_drops_scheduling_identity_and_claims() {
    let parent = parent(json!({
        "serviceAccountName": "web", "serviceAccount": "web", "automountServiceAccountToken": true,
        "nodeName": "node-1", "nodeSelector": {"role": "cp"},
        "affinity": {"nodeAffinity": {}}, "imagePullSecrets": [{"name": "registry"}],
        "schedulingGates": [{"name": "wait"}], "schedulingGroup": {"podGroupName": "g"},
        "resourceClaims": [{"name": "gpu", "resourceClaimName": "gpu-claim"}],
        "ephemeralContainers": [{"name": "debug", "image": "busybox"}],
        "containers": [{"name": "app", "image": "app:1",
            "resources": {"claims": [{"name": "gpu"}], "limits": {"cpu": "1"}}}],
    }));
    let checkpoint = ok(&parent, &Objects::default());
    assert_eq!(
        *spec(&checkpoint),
        spec_of(json!({
            "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": "app:1", "resources": {"limits": {"cpu": "1"}}}],
        }))
    );
}

#[test]
fn spec_keeps_what_a_static_pod_can_run() {
    let kept = json!({
        "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet",
        "priorityClassName": "system-node-critical", "priority": 2000001000,
        "tolerations": [{"operator": "Exists"}],
        "securityContext": {"runAsNonRoot": true},
        "volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "etc", "hostPath": {"path": "/etc/x"}},
                    {"name": "info", "downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}}],
        "initContainers": [
            {"name": "setup", "image": "setup:1"},
            {"name": "proxy", "image": "proxy:1", "restartPolicy": "Always"},
        ],
        "containers": [{
            "name": "app", "image": "app:1",
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
            "readinessProbe": {"tcpSocket": {"port": 8080}},
            "securityContext": {"readOnlyRootFilesystem": true},
            "env": [
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}},
                {"name": "PLAIN", "value": "$(NODE)"},
            ],
            "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}],
        }],
    });
    let checkpoint = ok(&parent(kept.clone()), &Objects::default());
    let mut expected = spec_of(kept);
    expected.automount_service_account_token = Some(false);
    assert_eq!(*spec(&checkpoint), expected);
}

#[test]
fn image_pull_secrets_are_dropped() {
    let parent = parent(json!({
        "imagePullSecrets": [{"name": "registry"}],
        "containers": [{"name": "app", "image": "private/app:1"}],
    }));
    assert_eq!(references(&parent).secrets, BTreeSet::new());
    let checkpoint = ok(&parent, &Objects::default());
    assert_eq!(spec(&checkpoint).image_pull_secrets, None);
    assert_eq!(
        spec(&checkpoint).containers[0].image.as_deref(),
        Some("private/app:1")
    );
}
