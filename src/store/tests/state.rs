//! Grace deadlines and remembered facts.

use super::*;

#[test]
fn deadlines_round_trip_and_corruption_is_an_error() {
    let (_root, store) = store();
    assert!(store.load_deadlines().expect("empty").is_empty());

    let mut deadlines = BTreeMap::new();
    deadlines.insert(key("ns", "p"), "2024-05-01T12:00:00Z".parse().expect("ts"));
    deadlines.insert(key("kube-system", "x"), jiff::Timestamp::UNIX_EPOCH);
    store.save_deadlines(&deadlines).expect("save");
    assert_eq!(store.load_deadlines().expect("load"), deadlines);
    assert_eq!(mode_of(&store.deadlines_path()), 0o600);

    store.save_deadlines(&BTreeMap::new()).expect("save empty");
    assert!(store.load_deadlines().expect("load").is_empty());

    fs::write(store.deadlines_path(), "{ not json").expect("corrupt");
    let err = store.load_deadlines().expect_err("corrupt");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    fs::write(
        store.deadlines_path(),
        r#"{"version": 99, "deadlines": []}"#,
    )
    .expect("v99");
    assert!(store.load_deadlines().is_err());
}

#[test]
fn facts_round_trip_trimmed_and_absent_until_written() {
    let (_root, store) = store();
    assert_eq!(store.read_state(StateFile::Owner).expect("read"), None);
    store
        .write_state(StateFile::Owner, "pod-checkpointer\n")
        .expect("write");
    store
        .write_state(StateFile::ApiAddress, "https://10.0.0.1:443")
        .expect("write");
    assert_eq!(
        store.read_state(StateFile::Owner).expect("read").as_deref(),
        Some("pod-checkpointer")
    );
    assert_eq!(
        store
            .read_state(StateFile::ApiAddress)
            .expect("read")
            .as_deref(),
        Some("https://10.0.0.1:443")
    );
    let path = store.layout().state_dir.join("daemonset-name");
    assert_eq!(mode_of(&path), 0o600);
    store.write_state(StateFile::Owner, "  ").expect("blank");
    assert_eq!(store.read_state(StateFile::Owner).expect("read"), None);
}
