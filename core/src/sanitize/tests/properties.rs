//! Property tests: whatever the input, sanitize never panics and never leaves its directories.

use std::path::Component;

use proptest::prelude::*;

use super::*;

fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("../x".to_owned()),
        Just("/etc/passwd".to_owned()),
        Just("a/../../b".to_owned()),
        Just("..data".to_owned()),
        Just("a\0b".to_owned()),
        Just("./a//b/".to_owned()),
        "[a-z./]{1,12}",
        any::<String>(),
    ]
}

/// Mostly valid paths, so that many cases get past validation, with hostile ones mixed in.
fn path() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[a-z][a-z0-9.]{0,5}(/[a-z][a-z0-9]{0,3}){0,2}", 1 => hostile()]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![3 => Just("s".to_owned()), 1 => Just("v".to_owned()), 1 => hostile()]
}

fn key_data() -> impl Strategy<Value = KeyData> {
    prop::collection::btree_map(path(), prop::collection::vec(any::<u8>(), 0..4), 0..4)
        .prop_map(KeyData::from)
}

/// Everything under `root` (strictly) and made of plain components only.
fn strictly_under(path: &Path, root: &Path) -> bool {
    path.strip_prefix(root).is_ok_and(|rel| {
        rel.components().next().is_some()
            && rel.components().all(|c| matches!(c, Component::Normal(_)))
    })
}

proptest! {
    #[test]
    fn sanitize_never_panics_and_stays_under_the_pod_directories(
        secret_name in name(),
        config_map_name in name(),
        volume_name in name(),
        secret_data in key_data(),
        config_map_data in key_data(),
        items in prop::collection::vec((path(), path(), any::<Option<i32>>()), 0..3),
        use_items in any::<bool>(),
        default_mode in any::<Option<i32>>(),
        projected_paths in prop::collection::vec(path(), 0..3),
        optional in any::<bool>(),
    ) {
        let items: Vec<Value> = items
            .iter()
            .map(|(key, path, mode)| json!({"key": key, "path": path, "mode": mode}))
            .collect();
        let items = if use_items { json!(items) } else { json!(null) };
        let downward: Vec<Value> = projected_paths
            .iter()
            .map(|path| json!({"path": path, "fieldRef": {"fieldPath": "metadata.name"}}))
            .collect();
        let parent = parent(json!({
            "containers": [{"name": "app", "image": "a",
                "volumeMounts": [{"name": volume_name, "mountPath": "/v"}]}],
            "volumes": [
                {"name": volume_name, "secret": {"secretName": secret_name, "items": items, "defaultMode": default_mode, "optional": optional}},
                {"name": "cm", "configMap": {"name": config_map_name, "items": items, "optional": optional}},
                {"name": "proj", "projected": {"sources": [
                    {"secret": {"name": secret_name, "items": items, "optional": optional}},
                    {"downwardAPI": {"items": downward}},
                ]}},
            ],
        }));
        let mut objects = Objects::default();
        objects.secrets.insert(secret_name.clone(), secret_data);
        objects.config_maps.insert(config_map_name.clone(), config_map_data);
        let layout = layout();
        let key = PodKey::new("prod", "web");
        let (secret_root, config_map_root) = (layout.pod_secret_dir(&key), layout.pod_configmap_dir(&key));
        if let Ok(checkpoint) = sanitize(&parent, &objects, &layout) {
            for side in &checkpoint.files {
                prop_assert!(
                    strictly_under(&side.path, &secret_root) || strictly_under(&side.path, &config_map_root),
                    "{:?} escapes", side.path
                );
            }
            for volume in spec(&checkpoint).volumes.iter().flatten() {
                let host = volume.host_path.as_ref().map(|h| PathBuf::from(&h.path));
                prop_assert!(host.is_some_and(|p| strictly_under(&p, &secret_root) || strictly_under(&p, &config_map_root)));
            }
            let mut paths: Vec<&PathBuf> = checkpoint.files.iter().map(|f| &f.path).collect();
            paths.dedup();
            prop_assert_eq!(paths.len(), checkpoint.files.len());
            let reparsed: Pod = serde_json::from_slice(&checkpoint.manifest_bytes()).expect("manifest parses");
            let again = sanitize(&reparsed, &Objects::default(), &layout).expect("a checkpoint sanitizes");
            prop_assert_eq!(again.manifest_bytes(), checkpoint.manifest_bytes());
            let _ = checkpoint.digest();
        }
    }
}
