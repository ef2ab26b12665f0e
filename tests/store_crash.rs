//! Given a writer that keeps rewriting a large checkpoint, when it is SIGKILLed at random
//! moments, then every checkpoint file is always one complete version (old or new, byte for
//! byte) and the next `prepare()` sweeps away the temporaries it left.
//!
//! The writer is this same test binary, re-executed with `CHILD_ENV` set so that only
//! `crash_child_writer` does anything; run normally, that test returns at once.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pod_checkpointer::model::{CHECKPOINT_OF_ANNOTATION, Layout, Owner, PodKey};
use pod_checkpointer::store::{SideEntry, SideFile, Store, TMP_PREFIX};

/// Set in the child's environment to the layout root it writes under.
const CHILD_ENV: &str = "POD_CHECKPOINTER_STORE_CRASH_CHILD";
/// Overrides the kill-timing seed, to replay a failing run.
const SEED_ENV: &str = "STORE_CRASH_SEED";
const DEFAULT_SEED: u64 = 0x5eed_c0ff_ee15_600d;
const ITERATIONS: usize = 30;
/// Upper bound of the random delay between "child is writing" and SIGKILL.
const MAX_KILL_DELAY_MS: u64 = 250;
/// The child gives up on its own after this, in case the parent died without killing it.
const CHILD_LIFETIME: Duration = Duration::from_secs(30);
const READY_FILE: &str = "child-ready";

fn key() -> PodKey {
    PodKey::new("kube-system", "kube-apiserver")
}

/// One complete version of the checkpoint: a large manifest and a few side files. The two
/// versions differ in size and content, so any torn mix of them is detectable.
struct Version {
    manifest: Vec<u8>,
    files: Vec<SideFile>,
}

fn version(layout: &Layout, which: u8) -> Version {
    let k = key();
    let filler_len = if which == 0 { 3 << 20 } else { (3 << 20) / 2 };
    // Spelled out rather than built with serde_json: a debug build takes ~0.3 s to serialize
    // megabytes, which would dwarf the writes under test. The filler needs no escaping.
    let filler = char::from(b'a' + which).to_string().repeat(filler_len);
    let manifest = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"{ns}","annotations":{{"{CHECKPOINT_OF_ANNOTATION}":"{name}"}}}},"spec":{{"containers":[{{"name":"apiserver","image":"registry.k8s.io/kube-apiserver:v1.{which}","env":[{{"name":"FILLER","value":"{filler}"}}]}}]}}}}"#,
        name = k.name,
        ns = k.namespace,
    )
    .into_bytes();

    let secret = layout.pod_secret_dir(&k).join("certs");
    let configmap = layout.pod_configmap_dir(&k).join("config");
    let owner = Owner {
        uid: 1000,
        gid: 1000,
    };
    let blob = |dir: &Path, name: &str, len: usize| {
        let len = len + usize::from(which) * 4096;
        let pattern = format!("{name}:{which}:");
        let mut data = pattern.repeat(len / pattern.len() + 1).into_bytes();
        data.truncate(len);
        SideFile {
            path: dir.join(name),
            entry: SideEntry::File { data, mode: 0o600 },
            owner,
        }
    };
    Version {
        manifest,
        files: vec![
            blob(&secret, "tls.crt", 512 << 10),
            blob(&secret, "tls.key", 256 << 10),
            blob(&configmap, "app.yaml", 128 << 10),
        ],
    }
}

fn versions(layout: &Layout) -> [Version; 2] {
    [version(layout, 0), version(layout, 1)]
}

/// The child: rewrite the checkpoint, alternating versions, until killed.
#[test]
fn crash_child_writer() {
    let Some(root) = std::env::var_os(CHILD_ENV) else {
        return; // Not the child: nothing to do in a normal test run.
    };
    let root = PathBuf::from(root);
    let store = Store::new(Layout::under_root(&root));
    let versions = versions(store.layout());
    fs::write(root.join(READY_FILE), b"").expect("ready marker");
    let started = Instant::now();
    // The parent wrote version 0: start with 1 so that every round does real writes.
    let mut i = 1usize;
    while started.elapsed() < CHILD_LIFETIME {
        let v = &versions[i % 2];
        store
            .write_inactive(&key(), &v.manifest, &v.files)
            .expect("write in child");
        i += 1;
    }
}

/// A small deterministic generator (xorshift64*), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn spawn_writer(root: &Path) -> Child {
    Command::new(std::env::current_exe().expect("own test binary"))
        .args(["--exact", "crash_child_writer", "--test-threads", "1"])
        .env(CHILD_ENV, root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn writer")
}

fn wait_until_ready(root: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !root.join(READY_FILE).exists() {
        if let Some(status) = child.try_wait().expect("poll child") {
            panic!("writer exited before it was ready: {status}");
        }
        assert!(Instant::now() < deadline, "writer never became ready");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn temporaries(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let entry = entry.expect("dir entry");
        let path = entry.path();
        if entry.file_type().expect("file type").is_dir() {
            temporaries(&path, out);
        } else if entry
            .file_name()
            .as_bytes()
            .starts_with(TMP_PREFIX.as_bytes())
        {
            out.push(path);
        }
    }
}

/// Every file the checkpoint consists of, mapped to its two acceptable contents.
fn acceptable_contents<'v>(
    store: &Store,
    [a, b]: &'v [Version; 2],
) -> BTreeMap<PathBuf, [&'v [u8]; 2]> {
    let manifest_path = store
        .layout()
        .inactive_manifest_dir
        .join(key().manifest_file_name());
    let mut out = BTreeMap::from([(manifest_path, [&a.manifest[..], &b.manifest[..]])]);
    for (fa, fb) in a.files.iter().zip(&b.files) {
        let (SideEntry::File { data: da, .. }, SideEntry::File { data: db, .. }) =
            (&fa.entry, &fb.entry)
        else {
            unreachable!("only files in this test");
        };
        out.insert(fa.path.clone(), [&da[..], &db[..]]);
    }
    out
}

#[test]
fn sigkill_mid_write_never_leaves_a_torn_checkpoint() {
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    eprintln!("store_crash seed {seed} (set {SEED_ENV} to replay)");
    let mut rng = Rng(seed | 1);
    let mut leftovers_seen = 0;
    let mut kills_after_progress = 0;

    for iteration in 0..ITERATIONS {
        let root = tempfile::tempdir().expect("tempdir");
        let store = Store::new(Layout::under_root(root.path()));
        store.prepare().expect("prepare");
        let versions = versions(store.layout());
        store
            .write_inactive(&key(), &versions[0].manifest, &versions[0].files)
            .expect("initial version");
        let initial = snapshot(&store, &versions);

        let mut child = spawn_writer(root.path());
        wait_until_ready(root.path(), &mut child);
        std::thread::sleep(Duration::from_millis(rng.next() % (MAX_KILL_DELAY_MS + 1)));
        if let Some(status) = child.try_wait().expect("poll child") {
            panic!("iteration {iteration}: writer died on its own: {status}");
        }
        child.kill().expect("SIGKILL writer");
        child.wait().expect("reap writer");

        let after_kill = snapshot(&store, &versions);
        for (path, [a, b]) in acceptable_contents(&store, &versions) {
            let now = after_kill[&path]
                .as_deref()
                .unwrap_or_else(|| panic!("iteration {iteration}: {} is missing", path.display()));
            assert!(
                now == a || now == b,
                "iteration {iteration}: {} is torn ({} bytes)",
                path.display(),
                now.len()
            );
            if path.extension().is_some_and(|e| e == "json") {
                serde_json::from_slice::<serde_json::Value>(now).expect("manifest parses");
            }
        }
        kills_after_progress += usize::from(after_kill != initial);
        let view = store.scan().expect("scan");
        assert!(view.unreadable.is_empty(), "{:?}", view.unreadable);
        assert!(view.checkpoints.contains_key(&key()));

        let mut left = Vec::new();
        temporaries(root.path(), &mut left);
        leftovers_seen += left.len();
        assert_eq!(store.prepare().expect("prepare"), left.len());
        let mut after = Vec::new();
        temporaries(root.path(), &mut after);
        assert!(
            after.is_empty(),
            "iteration {iteration}: {after:?} survived prepare"
        );

        // And the store keeps working from whatever state the kill left.
        store
            .write_inactive(&key(), &versions[1].manifest, &versions[1].files)
            .expect("write after crash");
    }
    eprintln!(
        "store_crash: {ITERATIONS} kills, {kills_after_progress} after the writer changed \
         something, {leftovers_seen} temporaries left and swept"
    );
    // Guards the test itself: kills that all land before the first write prove nothing. (Kills
    // after an even number of rounds also look like "no change", hence the low bar.)
    assert!(
        kills_after_progress >= ITERATIONS / 10,
        "only {kills_after_progress} of {ITERATIONS} kills happened after the writer made progress"
    );
}

/// The current content of every checkpoint file (None when missing).
fn snapshot(store: &Store, versions: &[Version; 2]) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    acceptable_contents(store, versions)
        .into_keys()
        .map(|path| {
            let bytes = fs::read(&path).ok();
            (path, bytes)
        })
        .collect()
}
