//! Side trees: modes and owners, keys that disappear upstream, refused paths, removal.

use super::*;

#[test]
fn write_inactive_sets_modes_and_owners() {
    let (_root, store) = store();
    let k = key("kube-system", "apiserver");
    let outcome = store
        .write_inactive(&k, &manifest(&k, "1"), &side_files(&store, &k, "1"))
        .expect("write");
    assert!(outcome.manifest_changed);
    // 5 listed entries + the implied `sub` dir + ns and pod dirs under each root.
    assert_eq!(outcome.files_changed, 6 + 4);

    let l = store.layout();
    let inactive = l.inactive_manifest_dir.join("kube-system-apiserver.json");
    assert_eq!(fs::read(&inactive).expect("read"), manifest(&k, "1"));
    assert_eq!(mode_of(&inactive), 0o600);

    let sec = l.pod_secret_dir(&k).join("creds");
    assert_eq!(mode_of(&sec.join("token")), 0o600);
    assert_eq!(mode_of(&sec.join("sub/ca.crt")), 0o640);
    assert_eq!(
        mode_of(&l.pod_configmap_dir(&k).join("conf/app.yaml")),
        0o644
    );
    for d in [
        l.secret_dir.join("kube-system"),
        l.pod_secret_dir(&k),
        sec.clone(),
        sec.join("sub"),
        l.pod_configmap_dir(&k).join("conf"),
    ] {
        assert_eq!(mode_of(&d), 0o700, "{}", d.display());
    }
    if is_root() {
        assert_eq!(owner_of(&inactive), ROOT);
        assert_eq!(owner_of(&l.pod_secret_dir(&k)), ROOT);
        assert_eq!(owner_of(&l.secret_dir.join("kube-system")), ROOT);
        for p in [
            &sec,
            &sec.join("sub"),
            &sec.join("token"),
            &sec.join("sub/ca.crt"),
        ] {
            assert_eq!(owner_of(p), POD_OWNER, "{}", p.display());
        }
    }
}

#[test]
fn side_file_modes_drop_special_bits() {
    let (_root, store) = store();
    let k = key("ns", "p");
    let path = store.layout().pod_secret_dir(&k).join("s/k");
    store
        .write_inactive(&k, &manifest(&k, "1"), &[file(path.clone(), "v", 0o4755)])
        .expect("write");
    assert_eq!(mode_of(&path), 0o755);
}

#[test]
fn keys_that_disappear_upstream_are_deleted() {
    let (_root, store) = store();
    let k = key("ns", "p");
    let l = store.layout().clone();
    store
        .write_inactive(&k, &manifest(&k, "1"), &side_files(&store, &k, "1"))
        .expect("write");
    // A stray entry the agent did not list is also pruned.
    fs::write(l.pod_secret_dir(&k).join("creds/stray"), "x").expect("stray");

    let sec = l.pod_secret_dir(&k).join("creds");
    let only_token = vec![dir(sec.clone()), file(sec.join("token"), "token-1", 0o600)];
    let outcome = store
        .write_inactive(&k, &manifest(&k, "1"), &only_token)
        .expect("write");
    // `sub` (with ca.crt), `stray`, and the whole configmap pod tree.
    assert_eq!(outcome.files_changed, 3);
    assert!(!outcome.manifest_changed);
    assert_eq!(
        tree(&l.pod_secret_dir(&k)),
        BTreeSet::from([sec.clone(), sec.join("token")])
    );
    assert!(!l.configmap_dir.join("ns").exists(), "empty <ns> goes too");

    let outcome = store
        .write_inactive(&k, &manifest(&k, "1"), &[])
        .expect("write");
    assert_eq!(outcome.files_changed, 1);
    assert!(!l.secret_dir.join("ns").exists());
    assert!(store.inactive_path(&k).exists());
}

#[test]
fn a_key_turning_into_a_directory_and_back_is_handled() {
    let (_root, store) = store();
    let k = key("ns", "p");
    let base = store.layout().pod_secret_dir(&k).join("s");
    let as_file = vec![file(base.join("a"), "1", 0o600)];
    let as_dir = vec![file(base.join("a/b"), "2", 0o600)];
    let m = manifest(&k, "1");
    store.write_inactive(&k, &m, &as_file).expect("file");
    store.write_inactive(&k, &m, &as_dir).expect("dir");
    assert_eq!(fs::read(base.join("a/b")).expect("read"), b"2");
    store.write_inactive(&k, &m, &as_file).expect("file again");
    assert_eq!(fs::read(base.join("a")).expect("read"), b"1");
}

#[test]
fn side_files_outside_the_pod_dirs_are_refused_without_writing() {
    let (_root, store) = store();
    let k = key("ns", "p");
    let l = store.layout().clone();
    let good = file(l.pod_secret_dir(&k).join("s/k"), "v", 0o600);
    let bad_paths = [
        l.pod_secret_dir(&k).join("../q/s/k"),
        l.pod_secret_dir(&k).join("s/../../../../../etc/passwd"),
        l.pod_secret_dir(&key("ns", "q")).join("s/k"),
        l.secret_dir.join("ns/p"),
        PathBuf::from("/etc/passwd"),
        PathBuf::from("s/k"),
        l.pod_configmap_dir(&k).join(format!("{TMP_PREFIX}x")),
    ];
    for bad in bad_paths {
        let files = vec![good.clone(), file(bad.clone(), "v", 0o600)];
        let err = store
            .write_inactive(&k, &manifest(&k, "1"), &files)
            .expect_err("refused");
        assert!(
            matches!(err, StoreError::BadSideFile { .. }),
            "{}: {err}",
            bad.display()
        );
    }
    let dup = vec![good.clone(), good.clone()];
    assert!(store.write_inactive(&k, &manifest(&k, "1"), &dup).is_err());
    let file_as_parent = vec![
        good.clone(),
        file(l.pod_secret_dir(&k).join("s/k/x"), "v", 0o600),
    ];
    assert!(
        store
            .write_inactive(&k, &manifest(&k, "1"), &file_as_parent)
            .is_err()
    );
    assert!(tree(&l.secret_dir).is_empty());
    assert!(tree(&l.inactive_manifest_dir).is_empty());
}

#[test]
fn remove_deletes_manifest_then_side_trees_and_empty_namespaces() {
    let (_root, store) = store();
    let l = store.layout().clone();
    let k = key("ns", "p");
    let neighbour = key("ns", "q");
    for each in [&k, &neighbour] {
        store
            .write_inactive(each, &manifest(each, "1"), &side_files(&store, each, "1"))
            .expect("write");
    }
    store.activate(&k).expect("activate");

    store.remove(&k).expect("remove");
    assert!(!store.inactive_path(&k).exists());
    assert!(!l.pod_secret_dir(&k).exists());
    assert!(!l.pod_configmap_dir(&k).exists());
    assert!(
        store.active_path(&k).exists(),
        "the caller deactivates first"
    );
    assert!(l.pod_secret_dir(&neighbour).exists(), "the neighbour stays");
    assert!(store.inactive_path(&neighbour).exists());

    store.remove(&neighbour).expect("remove");
    assert!(!l.secret_dir.join("ns").exists());
    assert!(!l.configmap_dir.join("ns").exists());
    store.remove(&neighbour).expect("missing is fine");
}

#[test]
fn remove_never_follows_a_symlinked_namespace_dir() {
    let (root, store) = store();
    let l = store.layout().clone();
    let k = key("ns", "p");
    let outside = root.path().join("outside/p");
    fs::create_dir_all(&outside).expect("mkdir");
    fs::write(outside.join("keep"), "x").expect("write");
    symlink(root.path().join("outside"), l.secret_dir.join("ns")).expect("symlink");
    assert!(store.remove(&k).is_err());
    assert!(outside.join("keep").exists());
}

#[test]
fn describe_lists_side_files_without_contents() {
    let (_root, store) = store();
    let k = key("ns", "p");
    store
        .write_inactive(&k, &manifest(&k, "1"), &side_files(&store, &k, "1"))
        .expect("write");
    let infos = store.describe().expect("describe");
    assert_eq!(infos.len(), 1);
    let info = &infos[0];
    assert_eq!(info.key, k);
    assert_eq!(info.inactive, Some(store.inactive_path(&k)));
    assert_eq!(info.active, None);
    let token = store.layout().pod_secret_dir(&k).join("creds/token");
    let entry = info
        .side_files
        .iter()
        .find(|f| f.path == token)
        .expect("token listed");
    assert_eq!((entry.kind, entry.mode), (SideKind::File, 0o600));
    assert_eq!(info.side_files.len(), 6);
    let json = serde_json::to_string(&infos).expect("json");
    assert!(json.contains(r#""mode":"0600""#), "{json}");
    assert!(!json.contains("token-1"), "no contents");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A side tree description: relative path (1-3 components from a tiny alphabet, so
    /// files and directories often collide across rounds) → contents.
    fn side_set() -> impl Strategy<Value = BTreeMap<Vec<String>, String>> {
        let component = prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_owned);
        prop::collection::btree_map(prop::collection::vec(component, 1..4), "[xyz]{0,3}", 0..6)
    }

    /// Drops entries that would be both a file and the parent of another (refused input).
    fn consistent(set: BTreeMap<Vec<String>, String>) -> BTreeMap<Vec<String>, String> {
        let keys: Vec<Vec<String>> = set.keys().cloned().collect();
        set.into_iter()
            .filter(|(path, _)| {
                !keys
                    .iter()
                    .any(|o| o.len() > path.len() && o.starts_with(path))
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]

        /// After any sequence of writes, the pod's secret tree holds exactly the last set
        /// (plus its parent directories), with the last contents.
        #[test]
        fn the_side_tree_always_matches_the_last_write(rounds in prop::collection::vec(side_set(), 1..5)) {
            let (_root, store) = store();
            let k = key("ns", "p");
            let pod_dir = store.layout().pod_secret_dir(&k);
            for set in rounds {
                let set = consistent(set);
                let files: Vec<SideFile> = set
                    .iter()
                    .map(|(rel, data)| file(pod_dir.join(rel.join("/")), data, 0o600))
                    .collect();
                store.write_inactive(&k, &manifest(&k, "1"), &files).expect("write");

                let mut expected = BTreeSet::new();
                for f in &files {
                    for p in f.path.ancestors() {
                        if p == pod_dir { break; }
                        expected.insert(p.to_owned());
                    }
                    prop_assert_eq!(fs::read(&f.path).expect("read"), match &f.entry {
                        SideEntry::File { data, .. } => data.clone(),
                        SideEntry::Dir { .. } => unreachable!(),
                    });
                }
                prop_assert_eq!(tree(&pod_dir), expected);
                prop_assert_eq!(pod_dir.exists(), !files.is_empty());
            }
        }
    }
}
