//! Side trees outliving their reason: orphans a crashed removal left (issue 10.8) are swept, and
//! the files a running copy mounts are not pruned under it (issue 10.12).

use super::*;

/// A checkpoint manifest of `k` whose volumes mount `dirs` from the host, as a sanitized one does.
fn manifest_mounting(k: &PodKey, dirs: &[&Path]) -> Vec<u8> {
    let volumes: Vec<serde_json::Value> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            serde_json::json!({
                "name": format!("v{i}"),
                "hostPath": { "path": dir, "type": "Directory" },
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": k.name,
            "namespace": k.namespace,
            "annotations": { CHECKPOINT_OF_ANNOTATION: k.name },
        },
        "spec": {
            "containers": [{ "name": "c", "image": "img" }],
            "volumes": volumes,
        },
    }))
    .expect("json")
}

/// Issue 10.8, the crash point itself: `remove` deleted the inactive manifest, then the process
/// died before the side trees went. The next start must sweep them: nothing else ever would.
#[test]
fn side_trees_left_by_a_crash_during_removal_are_swept_at_start() {
    let (root, store) = store();
    let l = store.layout().clone();
    let gone = key("ns", "gone");
    let kept = key("ns", "kept");
    for k in [&gone, &kept] {
        store
            .write_inactive(k, &manifest(k, "1"), &side_files(&store, k, "1"))
            .expect("write");
    }
    // What `remove(&gone)` had done when the crash came.
    fs::remove_file(store.inactive_path(&gone)).expect("manifest deleted first");

    let restarted = Store::new(Layout::under_root(root.path()));
    restarted.prepare().expect("prepare");
    assert!(!l.pod_secret_dir(&gone).exists(), "orphaned secrets swept");
    assert!(
        !l.pod_configmap_dir(&gone).exists(),
        "orphaned configmaps swept"
    );
    assert_eq!(
        fs::read(l.pod_secret_dir(&kept).join("creds/token")).expect("kept"),
        b"token-1",
        "a tree with a checkpoint stays"
    );
}

/// Issue 10.8 without a restart: a removal whose side-tree step failed left an orphan behind; the
/// checkpoint is no longer on disk, so no later pass removes it again. The next removal sweeps it.
#[test]
fn a_removal_sweeps_side_trees_an_earlier_failed_removal_left() {
    let (_root, store) = store();
    let l = store.layout().clone();
    let first = key("ns", "first");
    let second = key("other", "second");
    for k in [&first, &second] {
        store
            .write_inactive(k, &manifest(k, "1"), &side_files(&store, k, "1"))
            .expect("write");
    }
    fs::remove_file(store.inactive_path(&first)).expect("manifest deleted, trees left");

    store.remove(&second).expect("remove");
    assert!(!l.pod_secret_dir(&first).exists());
    assert!(!l.pod_configmap_dir(&first).exists());
    assert!(!l.secret_dir.join("ns").exists(), "its empty <ns> goes too");
}

/// The sweep only takes `<root>/<ns>/<pod>` directories with plain names and no checkpoint in
/// either manifest directory: an active-only checkpoint keeps its trees, and odd entries that
/// cannot be a pod's tree (files, symlinks, names the store would never write) stay.
#[test]
fn the_sweep_keeps_active_checkpoints_and_entries_it_did_not_make() {
    let (root, store) = store();
    let l = store.layout().clone();
    let active_only = key("ns", "active");
    store
        .write_inactive(
            &active_only,
            &manifest(&active_only, "1"),
            &side_files(&store, &active_only, "1"),
        )
        .expect("write");
    store.activate(&active_only).expect("activate");
    fs::remove_file(store.inactive_path(&active_only)).expect("only the active copy left");

    let outside = root.path().join("outside");
    fs::create_dir_all(outside.join("p")).expect("mkdir");
    fs::write(outside.join("p/keep"), "x").expect("write");
    symlink(&outside, l.secret_dir.join("linked")).expect("symlink");
    fs::write(l.secret_dir.join("stray-file"), "x").expect("write");
    fs::create_dir_all(l.secret_dir.join("Not_A_Name/p")).expect("mkdir");

    store.prepare().expect("prepare");
    assert!(l.pod_secret_dir(&active_only).join("creds/token").exists());
    assert!(
        l.pod_configmap_dir(&active_only)
            .join("conf/app.yaml")
            .exists()
    );
    assert!(
        outside.join("p/keep").exists(),
        "a symlink is never followed"
    );
    assert!(l.secret_dir.join("stray-file").exists());
    assert!(l.secret_dir.join("Not_A_Name/p").exists());
}

/// Issue 10.12: an active copy is never refreshed, so it keeps mounting the directories of the
/// checkpoint it was activated from. Rewriting the inactive checkpoint against a new desired
/// state (a volume that now has `items`, a configMap volume gone, a key gone) must leave every
/// file the copy mounts in place while it is active.
#[test]
fn files_an_active_copy_mounts_stay_when_its_checkpoint_is_rewritten() {
    let (_root, store) = store();
    let l = store.layout().clone();
    let k = key("ns", "p");
    let shared = l.pod_secret_dir(&k).join("creds");
    let conf = l.pod_configmap_dir(&k).join("conf");
    store
        .write_inactive(
            &k,
            &manifest_mounting(&k, &[&shared, &conf]),
            &side_files(&store, &k, "1"),
        )
        .expect("write v1");
    store.activate(&k).expect("activate");

    let own = l.pod_secret_dir(&k).join("_volume-creds");
    let v2 = vec![dir(own.clone()), file(own.join("token"), "token-2", 0o600)];
    store
        .write_inactive(&k, &manifest_mounting(&k, &[&own]), &v2)
        .expect("write v2");

    for (path, content) in [
        (shared.join("token"), "token-1"),
        (shared.join("sub/ca.crt"), "ca-1"),
        (conf.join("app.yaml"), "app-1"),
        (own.join("token"), "token-2"),
    ] {
        assert_eq!(
            fs::read_to_string(&path).expect("still there"),
            content,
            "{}",
            path.display()
        );
    }
}

/// Issue 10.12, the other side: once the copy is no longer active, the next write prunes what
/// the new checkpoint does not mount, as before.
#[test]
fn an_inactive_checkpoint_is_pruned_against_its_new_state() {
    let (_root, store) = store();
    let l = store.layout().clone();
    let k = key("ns", "p");
    let shared = l.pod_secret_dir(&k).join("creds");
    let conf = l.pod_configmap_dir(&k).join("conf");
    let v1 = manifest_mounting(&k, &[&shared, &conf]);
    store
        .write_inactive(&k, &v1, &side_files(&store, &k, "1"))
        .expect("write v1");
    store.activate(&k).expect("activate");
    let own = l.pod_secret_dir(&k).join("_volume-creds");
    let v2 = vec![dir(own.clone()), file(own.join("token"), "token-2", 0o600)];
    let v2_manifest = manifest_mounting(&k, &[&own]);
    store
        .write_inactive(&k, &v2_manifest, &v2)
        .expect("write v2");

    store.deactivate(&k).expect("deactivate");
    let outcome = store
        .write_inactive(&k, &v2_manifest, &v2)
        .expect("write again");
    assert!(outcome.files_changed > 0, "stale entries pruned");
    assert_eq!(
        tree(&l.pod_secret_dir(&k)),
        BTreeSet::from([own.clone(), own.join("token")])
    );
    assert!(!l.pod_configmap_dir(&k).exists());
}

/// Issue 10.8 through the store's own fault injection: `remove` fails right between deleting
/// the manifest and deleting the trees, leaving nothing behind but the orphans; the next start
/// sweeps them.
#[test]
fn a_crash_between_manifest_and_trees_in_remove_leaves_nothing_after_restart() {
    let (root, store) = store();
    let l = store.layout().clone();
    let k = key("ns", "p");
    store
        .write_inactive(&k, &manifest(&k, "1"), &side_files(&store, &k, "1"))
        .expect("write");
    store.faults.arm(Fault {
        step: Step::RemoveSideTrees,
        nth: 0,
        leave_temp: true,
    });
    assert!(store.remove(&k).is_err());
    assert!(store.faults.fired().is_some(), "the fault fired");
    assert!(!store.inactive_path(&k).exists());
    assert!(l.pod_secret_dir(&k).exists(), "the crash left the trees");

    let restarted = Store::new(Layout::under_root(root.path()));
    restarted.prepare().expect("prepare");
    assert!(tree(&l.secret_dir).is_empty(), "{:?}", tree(&l.secret_dir));
    assert!(tree(&l.configmap_dir).is_empty());
}
