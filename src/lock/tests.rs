use super::*;
use std::fs;
use std::os::unix::fs::MetadataExt;

#[test]
fn second_acquire_fails_until_the_first_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("run/lock/pod-checkpointer.lock");

    let first = InstanceLock::try_acquire(&path)
        .expect("acquire")
        .expect("free lock is taken");
    assert_eq!(first.path(), path);

    // A second open file description conflicts even within one process.
    let second = InstanceLock::try_acquire(&path).expect("second attempt");
    assert!(second.is_none(), "lock must not be taken twice");

    drop(first);
    let third = InstanceLock::try_acquire(&path).expect("after release");
    assert!(
        third.is_some(),
        "lock is free again once the holder is gone"
    );
}

#[test]
fn lock_file_is_0600_and_names_the_holder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pod-checkpointer.lock");
    fs::write(
        &path,
        "stale content from an older holder, longer than a pid\n",
    )
    .expect("seed file");
    fs::set_permissions(&path, Permissions::from_mode(0o644)).expect("chmod");

    let _lock = InstanceLock::try_acquire(&path)
        .expect("acquire")
        .expect("free lock is taken");

    let meta = fs::metadata(&path).expect("stat");
    assert_eq!(meta.mode() & 0o7777, 0o600);
    let holder = Holder::read(&path).expect("a holder record");
    assert_eq!(holder.pid, std::process::id());
    assert_eq!(holder.instance, Identity::current().as_str());
}

#[test]
fn a_held_lock_leaves_the_file_content_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pod-checkpointer.lock");
    let _held = InstanceLock::try_acquire(&path)
        .expect("acquire")
        .expect("free lock is taken");
    let before = fs::read(&path).expect("read");
    assert!(InstanceLock::try_acquire(&path).expect("attempt").is_none());
    assert_eq!(fs::read(&path).expect("read"), before);
}

#[test]
fn a_symlinked_lock_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("elsewhere");
    fs::write(&target, "not ours").expect("seed");
    let path = dir.path().join("pod-checkpointer.lock");
    std::os::unix::fs::symlink(&target, &path).expect("symlink");
    assert!(InstanceLock::try_acquire(&path).is_err());
    assert_eq!(fs::read_to_string(&target).expect("read"), "not ours");
}

/// Issue 12.8: a copy that hands the lock over must not leave a record naming it as the holder,
/// or its probe keeps asking the admin port it no longer serves.
#[test]
fn releasing_the_lock_clears_the_holder_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pod-checkpointer.lock");
    let lock = InstanceLock::try_acquire(&path)
        .expect("acquire")
        .expect("free lock is taken");
    assert!(Holder::read(&path).is_some());
    drop(lock);
    assert_eq!(Holder::read(&path), None);
}
