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

/// The file an earlier release wrote still reads the same (the format is shared with yields now).
#[test]
fn a_deadline_file_from_an_earlier_release_still_loads() {
    let (_root, store) = store();
    fs::create_dir_all(store.deadlines_path().parent().expect("dir")).expect("state dir");
    fs::write(
        store.deadlines_path(),
        r#"{"version": 1, "deadlines": [{"namespace": "ns", "name": "p", "deadline": "2024-05-01T12:00:00Z"}]}"#,
    )
    .expect("old file");
    let loaded = store.load_deadlines().expect("load");
    assert_eq!(
        loaded.get(&key("ns", "p")),
        Some(&"2024-05-01T12:00:00Z".parse().expect("ts"))
    );
}

#[test]
fn yields_round_trip_and_corruption_is_an_error() {
    let (_root, store) = store();
    assert!(store.load_yields().expect("empty").is_empty());
    let yields = BTreeMap::from([
        (
            key("kube-system", "api"),
            Yield {
                successor: "uid-2".into(),
                since: "2024-05-01T12:00:00Z".parse().expect("ts"),
                ready_seen: false,
                fell_back: true,
            },
        ),
        (
            key("ns", "p"),
            Yield {
                successor: "uid-3".into(),
                since: jiff::Timestamp::UNIX_EPOCH,
                ready_seen: true,
                fell_back: false,
            },
        ),
    ]);
    store.save_yields(&yields).expect("save");
    assert_eq!(store.load_yields().expect("load"), yields);
    let path = store.layout.state_dir.join("yields.json");
    assert_eq!(mode_of(&path), 0o600);
    fs::write(&path, r#"{"version": 1, "yields": [{"namespace": "ns"}]}"#).expect("corrupt");
    let err = store.load_yields().expect_err("corrupt");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
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
