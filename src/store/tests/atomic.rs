//! Atomic replacement: modes at start, temporaries, unchanged files left alone, and a failure at any step never tearing a file.

use super::*;

#[test]
fn prepare_creates_private_dirs_and_leaves_manifest_dir_mode_alone() {
    let root = tempfile::tempdir().expect("tempdir");
    let layout = Layout::under_root(root.path());
    fs::create_dir_all(&layout.manifest_dir).expect("mkdir");
    fs::set_permissions(&layout.manifest_dir, Permissions::from_mode(0o750)).expect("chmod");
    fs::create_dir_all(&layout.secret_dir).expect("mkdir");
    fs::set_permissions(&layout.secret_dir, Permissions::from_mode(0o755)).expect("chmod");

    let store = Store::new(layout.clone());
    assert_eq!(store.prepare().expect("prepare"), 0);

    assert_eq!(mode_of(&layout.manifest_dir), 0o750);
    for dir in [
        &layout.inactive_manifest_dir,
        &layout.secret_dir,
        &layout.configmap_dir,
        &layout.state_dir,
    ] {
        assert_eq!(mode_of(dir), 0o700, "{}", dir.display());
    }
    assert_eq!(mode_of(&root.path().join("etc/kubernetes")), 0o755);
}

#[test]
fn prepare_creates_a_missing_manifest_dir_0755() {
    let (_root, store) = store();
    assert_eq!(mode_of(&store.layout().manifest_dir), 0o755);
}

#[test]
fn prepare_removes_only_our_temporaries() {
    let (_root, store) = store();
    let l = store.layout().clone();
    let nested = l.secret_dir.join("ns/pod/creds");
    fs::create_dir_all(&nested).expect("mkdir");
    // A checkpoint of ns/pod, so its side tree is no orphan for the sweep.
    fs::write(
        l.inactive_manifest_dir.join("ns-pod.json"),
        manifest(&key("ns", "pod"), "1"),
    )
    .expect("write");
    let ours = [
        l.manifest_dir
            .join(format!("{TMP_PREFIX}kube-system-x.json.1.2")),
        l.inactive_manifest_dir
            .join(format!("{TMP_PREFIX}a.json.1.3")),
        nested.join(format!("{TMP_PREFIX}token.9.9")),
        l.configmap_dir.join(format!("{TMP_PREFIX}x")),
        l.state_dir.join(format!("{TMP_PREFIX}deadlines.json.1.1")),
    ];
    let foreign = [
        l.manifest_dir.join(".etcd.json.swp"),
        l.manifest_dir.join("etcd.json"),
        nested.join("token"),
    ];
    for path in ours.iter().chain(&foreign) {
        fs::write(path, "x").expect("write");
    }
    assert_eq!(store.prepare().expect("prepare"), ours.len());
    for path in &ours {
        assert!(!path.exists(), "{} should be gone", path.display());
    }
    for path in &foreign {
        assert!(path.exists(), "{} must stay", path.display());
    }
}

#[test]
fn identical_rewrite_writes_nothing() {
    let (_root, store) = store();
    let k = key("ns", "p");
    let files = side_files(&store, &k, "1");
    store
        .write_inactive(&k, &manifest(&k, "1"), &files)
        .expect("write");
    let watched = tree(store.layout().secret_dir.parent().expect("parent"));
    let before: Vec<_> = watched.iter().map(|p| stamp(p)).collect();

    let outcome = store
        .write_inactive(&k, &manifest(&k, "1"), &files)
        .expect("rewrite");
    assert_eq!(outcome, WriteOutcome::default());
    let after: Vec<_> = watched.iter().map(|p| stamp(p)).collect();
    assert_eq!(before, after, "no inode, mtime or ctime may change");
    assert_eq!(
        tree(store.layout().secret_dir.parent().expect("p")),
        watched
    );
}

#[test]
fn changed_mode_or_content_is_rewritten() {
    let (_root, store) = store();
    let k = key("ns", "p");
    let mut files = side_files(&store, &k, "1");
    store
        .write_inactive(&k, &manifest(&k, "1"), &files)
        .expect("write");
    let token = store.layout().pod_secret_dir(&k).join("creds/token");
    files[1] = file(token.clone(), "token-1", 0o400);
    let outcome = store
        .write_inactive(&k, &manifest(&k, "2"), &files)
        .expect("rewrite");
    assert_eq!(
        outcome,
        WriteOutcome {
            manifest_changed: true,
            files_changed: 1
        }
    );
    assert_eq!(mode_of(&token), 0o400);
    assert_eq!(
        fs::read(store.inactive_path(&k)).expect("read"),
        manifest(&k, "2")
    );
}

#[test]
fn errors_name_the_action_and_path() {
    let (_root, store) = store();
    let k = key("ns", "p");
    store.faults.arm(Fault {
        step: Step::SyncFile,
        nth: 0,
        leave_temp: false,
    });
    let err = store
        .write_inactive(&k, &manifest(&k, "1"), &[])
        .expect_err("fault");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "writing inactive manifest {}: syncing temporary file: injected",
            store.inactive_path(&k).display()
        )),
        "{text}"
    );
    assert_eq!(err.reason(), "io");
    assert!(err.io_error().is_some());
}

/// State of the files one write_inactive touches, to compare against old/new versions.
fn snapshot(store: &Store, k: &PodKey) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut paths = vec![store.inactive_path(k)];
    for f in side_files(store, k, "x") {
        if matches!(f.entry, SideEntry::File { .. }) {
            paths.push(f.path);
        }
    }
    paths
        .into_iter()
        .map(|p| {
            let bytes = fs::read(&p).ok();
            (p, bytes)
        })
        .collect()
}

fn expected_state(store: &Store, k: &PodKey, version: &str) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    out.insert(store.inactive_path(k), Some(manifest(k, version)));
    for f in side_files(store, k, version) {
        if let SideEntry::File { data, .. } = f.entry {
            out.insert(f.path, Some(data));
        }
    }
    out
}

/// A failure at any step of any of the four atomic writes of one write_inactive leaves each
/// file wholly old or wholly new, a new manifest only over new side files, and (after the
/// next prepare) no temporary; a retry then converges.
#[test]
fn a_failure_at_any_step_never_tears_a_file() {
    for step in Step::ALL {
        for nth in 0..4 {
            for leave_temp in [false, true] {
                let (root, store) = store();
                let k = key("ns", "p");
                store
                    .write_inactive(&k, &manifest(&k, "old"), &side_files(&store, &k, "old"))
                    .expect("old version");
                let old = expected_state(&store, &k, "old");
                let new = expected_state(&store, &k, "new");

                store.faults.arm(Fault {
                    step,
                    nth,
                    leave_temp,
                });
                let result =
                    store.write_inactive(&k, &manifest(&k, "new"), &side_files(&store, &k, "new"));
                let case = format!("{step:?} #{nth} leave_temp={leave_temp}");
                assert!(store.faults.fired().is_some(), "{case}: fault never fired");
                assert!(result.is_err(), "{case}: error must surface");

                let now = snapshot(&store, &k);
                for (path, bytes) in &now {
                    assert!(
                        *bytes == old[path] || *bytes == new[path],
                        "{case}: {} is torn",
                        path.display()
                    );
                }
                let manifest_path = store.inactive_path(&k);
                if now[&manifest_path] == new[&manifest_path] {
                    assert_eq!(now, new, "{case}: new manifest over old side files");
                }

                let leftovers = temporaries(root.path()).len();
                if !leave_temp {
                    assert_eq!(leftovers, 0, "{case}: temp not cleaned up");
                }
                assert_eq!(store.prepare().expect("prepare"), leftovers, "{case}");
                assert!(temporaries(root.path()).is_empty(), "{case}");

                store
                    .write_inactive(&k, &manifest(&k, "new"), &side_files(&store, &k, "new"))
                    .expect("retry");
                assert_eq!(snapshot(&store, &k), new, "{case}: retry converges");
            }
        }
    }
}

#[test]
fn a_failed_activation_keeps_the_old_active_copy() {
    for step in Step::ALL {
        let (root, store) = store();
        let k = key("ns", "p");
        store
            .write_inactive(&k, &manifest(&k, "old"), &[])
            .expect("old");
        store.activate(&k).expect("activate");
        store
            .write_inactive(&k, &manifest(&k, "new"), &[])
            .expect("new");
        store.faults.arm(Fault {
            step,
            nth: 0,
            leave_temp: true,
        });
        assert!(store.activate(&k).is_err(), "{step:?}");
        let active = fs::read(store.active_path(&k)).expect("read");
        assert!(active == manifest(&k, "old") || active == manifest(&k, "new"));
        store.prepare().expect("prepare");
        assert!(temporaries(root.path()).is_empty());
    }
}
