//! Identifying checkpoints by content: foreign files, name collisions, refused keys, activation.

use super::*;

#[test]
fn scan_reads_keys_from_content_and_ignores_foreign_files() {
    let (_root, store) = store();
    let l = store.layout().clone();
    let k = key("kube-system", "apiserver");
    store
        .write_inactive(&k, &manifest(&k, "1"), &[])
        .expect("write");
    store.activate(&k).expect("activate");

    let etcd = l.manifest_dir.join("etcd.json");
    fs::write(&etcd, pod_json("kube-system", "etcd", None, "etcd")).expect("etcd");
    fs::write(l.manifest_dir.join(".apiserver.json.swp"), "garbage").expect("swp");
    fs::write(l.manifest_dir.join("notes.txt"), "garbage").expect("txt");
    let garbage = l.manifest_dir.join("broken.json");
    fs::write(
        &garbage,
        format!("{{\"metadata\": {{\"name\": 7, \"x\": \"{SECRET_MARKER}"),
    )
    .expect("garbage");
    let wrong_kind = l.manifest_dir.join("wrong.json");
    fs::write(
        &wrong_kind,
        format!(r#"{{"apiVersion":"v1","kind":"{SECRET_MARKER}"}}"#),
    )
    .expect("wrong");
    // Named like nothing in particular, but its content says whose checkpoint it is.
    let oddly_named = l.inactive_manifest_dir.join("whatever.json");
    fs::write(&oddly_named, pod_json("", "x", Some("dns"), "img")).expect("odd");
    // A key that cannot be a path is reported, not used.
    let evil = l.inactive_manifest_dir.join("evil.json");
    fs::write(&evil, pod_json("..", "x", Some("y"), "img")).expect("evil");

    let view = store.scan().expect("scan");
    let active = l.manifest_dir.join("kube-system-apiserver.json");
    let mut expected = BTreeMap::new();
    expected.insert(
        k.clone(),
        OnDisk {
            inactive: Some(l.inactive_manifest_dir.join("kube-system-apiserver.json")),
            active: Some(active.clone()),
            active_since: Some(
                fs::metadata(&active)
                    .and_then(|m| m.modified())
                    .expect("mtime"),
            ),
        },
    );
    expected.insert(
        key("default", "dns"),
        OnDisk {
            inactive: Some(oddly_named.clone()),
            active: None,
            active_since: None,
        },
    );
    assert_eq!(view.checkpoints, expected);
    let unreadable: Vec<&PathBuf> = view.unreadable.iter().map(|(p, _)| p).collect();
    assert_eq!(unreadable.len(), 3, "{:?}", view.unreadable);
    for path in [&garbage, &wrong_kind, &evil] {
        assert!(unreadable.contains(&path), "{} missing", path.display());
    }
    for (_, why) in &view.unreadable {
        assert!(!why.contains(SECRET_MARKER), "content leaked: {why}");
    }
}

#[test]
fn foreign_files_are_never_touched() {
    let (_root, store) = store();
    let l = store.layout().clone();
    let etcd = l.manifest_dir.join("etcd.json");
    let swp = l.manifest_dir.join(".kube-system-etcd.json.swp");
    // Foreign files exactly where checkpoints of these keys would go.
    let k = key("kube-system", "etcd");
    let squatted = l.manifest_dir.join(k.manifest_file_name());
    fs::write(&etcd, pod_json("kube-system", "etcd", None, "etcd")).expect("etcd");
    fs::write(&swp, "vim swap").expect("swp");
    fs::write(&squatted, pod_json("kube-system", "etcd", None, "etcd")).expect("squat");
    let foreign = [&etcd, &swp, &squatted];
    let before: Vec<_> = foreign
        .iter()
        .map(|p| (stamp(p), fs::read(p).expect("read")))
        .collect();

    store
        .write_inactive(&k, &manifest(&k, "1"), &side_files(&store, &k, "1"))
        .expect("write");
    assert!(matches!(
        store.activate(&k),
        Err(StoreError::NotOurs { .. })
    ));
    store.deactivate(&k).expect("deactivate");
    store.remove(&k).expect("remove");
    store.prepare().expect("prepare");
    store.scan().expect("scan");
    store.describe().expect("describe");

    let after: Vec<_> = foreign
        .iter()
        .map(|p| (stamp(p), fs::read(p).expect("read")))
        .collect();
    assert_eq!(before, after);
}

#[test]
fn name_collisions_are_refused_without_writing() {
    let (_root, store) = store();
    let first = key("a-b", "c");
    let second = key("a", "b-c");
    assert_eq!(first.manifest_file_name(), second.manifest_file_name());
    store
        .write_inactive(&first, &manifest(&first, "1"), &[])
        .expect("first");
    let err = store
        .write_inactive(
            &second,
            &manifest(&second, "1"),
            &side_files(&store, &second, "1"),
        )
        .expect_err("collision");
    assert!(matches!(err, StoreError::NotOurs { .. }), "{err}");
    assert!(err.to_string().contains("a-b/c"), "{err}");
    assert!(!err.to_string().contains(SECRET_MARKER));
    assert_eq!(
        fs::read(store.inactive_path(&first)).expect("read"),
        manifest(&first, "1")
    );
    assert!(
        !store.layout().secret_dir.join("a").exists(),
        "no side file written"
    );

    // The active side too: second's active path holds first's checkpoint.
    store.activate(&first).expect("activate first");
    assert!(store.deactivate(&second).is_ok());
    assert!(
        store.active_path(&first).exists(),
        "deactivate(second) left it"
    );
    store.remove(&second).expect("remove second");
    assert!(
        store.inactive_path(&first).exists(),
        "remove(second) left it"
    );
}

#[test]
fn a_manifest_that_is_not_a_checkpoint_of_its_key_is_refused() {
    let (_root, store) = store();
    let k = key("ns", "p");
    for bytes in [
        pod_json("ns", "p", None, "img"),
        pod_json("other", "p", Some("p"), "img"),
        pod_json("ns", "p", Some("q"), "img"),
        b"not json".to_vec(),
    ] {
        let err = store.write_inactive(&k, &bytes, &[]).expect_err("refused");
        assert!(matches!(err, StoreError::BadManifest { .. }), "{err}");
        assert!(!err.to_string().contains(SECRET_MARKER));
    }
    assert!(tree(&store.layout().inactive_manifest_dir).is_empty());
}

#[test]
fn unusable_keys_are_refused() {
    let (_root, store) = store();
    for k in [
        key("..", "x"),
        key("ns", ""),
        key("ns", "a/b"),
        key(".ns", "x"),
        key("NS", "x"),
    ] {
        let err = store
            .write_inactive(&k, &manifest(&k, "1"), &[])
            .expect_err("bad");
        assert!(matches!(err, StoreError::BadKey { .. }), "{err}");
        assert!(store.remove(&k).is_err());
        assert!(store.deactivate(&k).is_err());
        assert!(store.activate(&k).is_err());
    }
}

#[test]
fn activate_copies_and_deactivate_removes() {
    let (_root, store) = store();
    let k = key("ns", "p");
    assert!(store.activate(&k).is_err(), "nothing to activate yet");
    store.deactivate(&k).expect("missing is fine");
    store
        .write_inactive(&k, &manifest(&k, "1"), &[])
        .expect("write");
    store.activate(&k).expect("activate");
    let active = store.active_path(&k);
    assert_eq!(fs::read(&active).expect("read"), manifest(&k, "1"));
    assert_eq!(mode_of(&active), 0o600);
    let first = stamp(&active);
    store.activate(&k).expect("activate again");
    assert_eq!(stamp(&active), first, "identical activation writes nothing");

    store.deactivate(&k).expect("deactivate");
    assert!(!active.exists());
    assert!(store.inactive_path(&k).exists());
    store.deactivate(&k).expect("twice is fine");
}

#[test]
fn a_symlink_at_the_active_path_is_refused() {
    let (root, store) = store();
    let k = key("ns", "p");
    store
        .write_inactive(&k, &manifest(&k, "1"), &[])
        .expect("write");
    let elsewhere = root.path().join("elsewhere.json");
    fs::write(&elsewhere, manifest(&k, "0")).expect("write");
    symlink(&elsewhere, store.active_path(&k)).expect("symlink");
    assert!(matches!(
        store.activate(&k),
        Err(StoreError::NotOurs { .. })
    ));
    assert_eq!(fs::read(&elsewhere).expect("read"), manifest(&k, "0"));
}

/// The activation time comes from the active file, is kept across rescans (an unchanged copy is
/// not rewritten), and belongs to the canonically named file when two hold the same checkpoint.
#[test]
fn scan_reports_when_the_active_copy_was_written() {
    let (_root, store) = store();
    let l = store.layout().clone();
    let k = key("ns", "p");
    store
        .write_inactive(&k, &manifest(&k, "1"), &[])
        .expect("write");
    assert_eq!(
        store.scan().expect("scan").checkpoints[&k].active_since,
        None
    );

    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    let stray = l.manifest_dir.join("aaa-stray.json");
    fs::write(&stray, manifest(&k, "1")).expect("stray");
    fs::File::options()
        .write(true)
        .open(&stray)
        .and_then(|f| f.set_modified(old))
        .expect("set mtime");
    assert_eq!(
        store.scan().expect("scan").checkpoints[&k].active_since,
        Some(old)
    );

    store.activate(&k).expect("activate");
    let canonical = l.manifest_dir.join(k.manifest_file_name());
    let written = fs::metadata(&canonical)
        .and_then(|m| m.modified())
        .expect("mtime");
    let on_disk = &store.scan().expect("scan").checkpoints[&k];
    assert_eq!(on_disk.active.as_ref(), Some(&canonical));
    assert_eq!(on_disk.active_since, Some(written));
    assert_ne!(on_disk.active_since, Some(old));

    store.activate(&k).expect("activate again");
    assert_eq!(
        store.scan().expect("scan").checkpoints[&k].active_since,
        Some(written)
    );
}
