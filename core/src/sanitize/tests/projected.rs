//! Projected volumes: kube-api-access, tokens, downward-API items and quantities.

use super::*;

#[test]
fn kube_api_access_volume_becomes_three_files() {
    let parent = with_volumes(json!([kube_api_access()]));
    let mut objects = objects(
        &[],
        &[(
            "kube-root-ca.crt",
            data(&[("ca.crt", b"CA"), ("other", b"x")]),
        )],
    );
    objects.tokens.insert(token_spec(), "tok".into());
    let checkpoint = ok(&parent, &objects);
    let dir_path = format!("{SEC}/_volume-kube-api-access-xyz");
    assert_eq!(
        checkpoint.files,
        vec![
            dir(&dir_path),
            file(&format!("{dir_path}/ca.crt"), b"CA", 0o644),
            file(&format!("{dir_path}/namespace"), b"prod", 0o644),
            file(&format!("{dir_path}/token"), b"tok", 0o644),
        ]
    );
    assert_eq!(
        volume(&checkpoint, "kube-api-access-xyz"),
        host_path("kube-api-access-xyz", &dir_path)
    );
    assert_eq!(checkpoint.warnings, vec![]);
}

#[test]
fn missing_token_is_a_warning_not_a_refusal() {
    let parent = with_volumes(json!([kube_api_access()]));
    let objects = objects(&[], &[("kube-root-ca.crt", data(&[("ca.crt", b"CA")]))]);
    let checkpoint = ok(&parent, &objects);
    let dir_path = format!("{SEC}/_volume-kube-api-access-xyz");
    assert_eq!(
        checkpoint.files,
        vec![
            dir(&dir_path),
            file(&format!("{dir_path}/ca.crt"), b"CA", 0o644),
            file(&format!("{dir_path}/namespace"), b"prod", 0o644),
        ]
    );
    assert_eq!(
        checkpoint.warnings,
        vec![Warning::TokenUnavailable {
            volume: "kube-api-access-xyz".into()
        }]
    );
}

#[test]
fn projected_secret_and_configmap_sources_honour_items_and_modes() {
    let parent = with_volumes(
        json!([{"name": "bundle", "projected": {"defaultMode": 0o440, "sources": [
            {"secret": {"name": "tls", "items": [{"key": "tls.key", "path": "keys/tls.key", "mode": 0o400}]}},
            {"configMap": {"name": "settings"}},
            {"secret": {"name": "absent", "optional": true}},
            {"serviceAccountToken": {"audience": "vault", "path": "vault-token"}},
        ]}}]),
    );
    let mut objects = objects(
        &[("tls", data(&[("tls.key", b"KEY"), ("tls.crt", b"CRT")]))],
        &[("settings", data(&[("a.conf", b"A")]))],
    );
    objects.tokens.insert(
        TokenSpec {
            audience: Some("vault".into()),
            expiration_seconds: 3600,
        },
        "vault-tok".into(),
    );
    let checkpoint = ok(&parent, &objects);
    let d = format!("{SEC}/_volume-bundle");
    assert_eq!(
        checkpoint.files,
        vec![
            dir(&d),
            file(&format!("{d}/a.conf"), b"A", 0o440),
            sub_dir(&format!("{d}/keys")),
            file(&format!("{d}/keys/tls.key"), b"KEY", 0o400),
            file(&format!("{d}/vault-token"), b"vault-tok", 0o440),
        ]
    );
}

#[test]
fn downward_api_items_are_computed_from_the_parent() {
    let mut parent = with_volumes(
        json!([{"name": "info", "projected": {"sources": [{"downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "tier", "fieldRef": {"fieldPath": "metadata.labels['tier']"}},
            {"path": "missing", "fieldRef": {"fieldPath": "metadata.annotations['nope']"}},
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}},
            {"path": "node", "fieldRef": {"fieldPath": "spec.nodeName"}},
            {"path": "ip", "fieldRef": {"fieldPath": "status.podIP"}, "mode": 0o600},
        ]}}]}}]),
    );
    parent.metadata.labels = Some(BTreeMap::from([
        ("tier".into(), "front".into()),
        ("app".into(), "say \"hi\"\\\n\u{1}é".into()),
    ]));
    parent.spec.as_mut().expect("spec").node_name = Some("node-1".into());
    parent.status = Some(serde_json::from_value(json!({"podIP": "10.0.0.7"})).expect("status"));
    let checkpoint = ok(&parent, &Objects::default());
    let d = format!("{SEC}/_volume-info");
    assert_eq!(
        checkpoint.files,
        vec![
            dir(&d),
            file(&format!("{d}/ip"), b"10.0.0.7", 0o600),
            file(
                &format!("{d}/labels"),
                "app=\"say \\\"hi\\\"\\\\\\n\\x01é\"\ntier=\"front\"".as_bytes(),
                0o644
            ),
            file(&format!("{d}/missing"), b"", 0o644),
            file(&format!("{d}/name"), b"web", 0o644),
            file(&format!("{d}/node"), b"node-1", 0o644),
            file(&format!("{d}/tier"), b"front", 0o644),
            file(&format!("{d}/uid"), b"uid-1", 0o644),
        ]
    );
}

#[test]
fn resource_field_refs_are_scaled_like_the_kubelet() {
    let item = |path: &str, resource: &str, divisor: Option<&str>| json!({"path": path, "resourceFieldRef": {"containerName": "app", "resource": resource, "divisor": divisor}});
    let parent = parent(json!({
        "containers": [{"name": "app", "image": "app:1",
            "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}, "requests": {"cpu": "0.1"}}}],
        "volumes": [{"name": "res", "projected": {"sources": [{"downwardAPI": {"items": [
            item("cpu", "limits.cpu", None),
            item("cpu-m", "limits.cpu", Some("1m")),
            item("mem-mi", "limits.memory", Some("1Mi")),
            item("mem", "limits.memory", None),
            item("req-cpu-m", "requests.cpu", Some("1m")),
            item("req-mem", "requests.memory", None),
        ]}}]}}],
    }));
    let checkpoint = ok(&parent, &Objects::default());
    let d = format!("{SEC}/_volume-res");
    assert_eq!(
        checkpoint.files,
        vec![
            dir(&d),
            file(&format!("{d}/cpu"), b"1", 0o644),
            file(&format!("{d}/cpu-m"), b"500", 0o644),
            file(&format!("{d}/mem"), b"67108864", 0o644),
            file(&format!("{d}/mem-mi"), b"64", 0o644),
            file(&format!("{d}/req-cpu-m"), b"100", 0o644),
            file(&format!("{d}/req-mem"), b"0", 0o644),
        ]
    );
}

#[test]
fn quantities_parse_exactly() {
    let cases: &[(&str, Option<(u128, u128)>)] = &[
        ("1", Some((1, 1))),
        ("500m", Some((500, 1000))),
        ("0.1", Some((1, 10))),
        ("64Mi", Some((64 << 20, 1))),
        ("1.5Gi", Some((15 << 30, 10))),
        ("2k", Some((2000, 1))),
        ("1e3", Some((1000, 1))),
        ("1E", Some((1_000_000_000_000_000_000, 1))),
        ("+3", Some((3, 1))),
        ("-1", None),
        ("", None),
        ("1Xi", None),
    ];
    for (text, expected) in cases {
        let got = parse_quantity(text).map(|r| (r.num, r.den));
        assert_eq!(got, *expected, "quantity {text:?}");
    }
    assert_eq!(scaled_quantity("64Mi", "0", false), None);
}

#[test]
fn unresolvable_resource_field_refs_are_refused() {
    let spec = |resource: &str, container: &str| {
        parent(json!({
            "containers": [{"name": "app", "image": "app:1"}],
            "volumes": [{"name": "res", "projected": {"sources": [{"downwardAPI": {"items": [
                {"path": "x", "resourceFieldRef": {"containerName": container, "resource": resource}}]}}]}}],
        }))
    };
    for (resource, container) in [
        ("limits.memory", "app"),
        ("limits.gpu", "app"),
        ("limits.cpu", "nope"),
    ] {
        let refusal = sanitize(&spec(resource, container), &Objects::default(), &layout())
            .expect_err("must be refused");
        assert_eq!(
            refusal.reason(),
            "unsupported_field",
            "{resource} of {container}"
        );
    }
}

#[test]
fn unsupported_projection_sources_are_refused() {
    for source in [
        json!({"clusterTrustBundle": {"signerName": "x/y", "path": "ca.pem"}}),
        json!({"podCertificate": {"signerName": "x/y", "keyType": "ED25519", "credentialBundlePath": "c"}}),
        json!({"downwardAPI": {"items": [{"path": "x", "fieldRef": {"fieldPath": "metadata.generation"}}]}}),
    ] {
        let parent =
            with_volumes(json!([{"name": "p", "projected": {"sources": [source.clone()]}}]));
        let refusal =
            sanitize(&parent, &Objects::default(), &layout()).expect_err("must be refused");
        let expected = if source.get("downwardAPI").is_some() {
            "unsupported_field"
        } else {
            "unsupported_volume"
        };
        assert_eq!(refusal.reason(), expected, "{source}");
        assert!(refusal.to_string().contains("\"p\""), "{refusal}");
    }
}
