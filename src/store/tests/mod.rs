//! The store's unit tests, by duty like the store itself; the helpers here build pods, side
//! files and temporary roots, and look at what ended up on disk.

mod atomic;
mod scan;
mod side;
mod state;
mod sweep;
mod volumes;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, Permissions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::atomic::enforced_owner;
use super::error::Step;
use super::fault::Fault;
use super::*;
use crate::decide::Yield;
use crate::model::{CHECKPOINT_OF_ANNOTATION, Layout, Owner, PodKey};

const SECRET_MARKER: &str = "s3cr3t-value-never-in-errors";

const POD_OWNER: Owner = Owner {
    uid: 1000,
    gid: 2000,
};

fn store() -> (TempDir, Store) {
    let root = tempfile::tempdir().expect("tempdir");
    let store = Store::new(Layout::under_root(root.path()));
    store.prepare().expect("prepare");
    (root, store)
}

fn key(ns: &str, name: &str) -> PodKey {
    PodKey::new(ns, name)
}

fn pod_json(ns: &str, name: &str, checkpoint_of: Option<&str>, image: &str) -> Vec<u8> {
    let mut meta = serde_json::json!({ "name": name, "namespace": ns });
    if let Some(parent) = checkpoint_of {
        meta["annotations"] = serde_json::json!({ CHECKPOINT_OF_ANNOTATION: parent });
    }
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": { "containers": [{
            "name": "c",
            "image": image,
            "env": [{ "name": "PASSWORD", "value": SECRET_MARKER }],
        }]},
    }))
    .expect("json")
}

/// A checkpoint manifest of `k`; `version` makes different contents.
fn manifest(k: &PodKey, version: &str) -> Vec<u8> {
    pod_json(
        &k.namespace,
        &k.name,
        Some(&k.name),
        &format!("img:{version}"),
    )
}

fn file(path: PathBuf, data: &str, mode: u32) -> SideFile {
    SideFile {
        path,
        entry: SideEntry::File {
            data: data.as_bytes().to_vec(),
            mode,
        },
        owner: POD_OWNER,
    }
}

fn dir(path: PathBuf) -> SideFile {
    SideFile {
        path,
        entry: SideEntry::Dir { mode: 0o700 },
        owner: POD_OWNER,
    }
}

/// A secret volume (two keys, one nested via `items`) and a configmap volume.
fn side_files(s: &Store, k: &PodKey, version: &str) -> Vec<SideFile> {
    let sec = s.layout().pod_secret_dir(k).join("creds");
    let cm = s.layout().pod_configmap_dir(k).join("conf");
    vec![
        dir(sec.clone()),
        file(sec.join("token"), &format!("token-{version}"), 0o600),
        file(sec.join("sub/ca.crt"), &format!("ca-{version}"), 0o640),
        dir(cm.clone()),
        file(cm.join("app.yaml"), &format!("app-{version}"), 0o644),
    ]
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).expect("stat").mode() & 0o7777
}

fn owner_of(path: &Path) -> Owner {
    let meta = fs::symlink_metadata(path).expect("stat");
    Owner {
        uid: meta.uid(),
        gid: meta.gid(),
    }
}

fn is_root() -> bool {
    enforced_owner(ROOT).is_some()
}

/// Every path under `root` (recursive, symlinks not followed).
fn tree(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let Ok(entries) = fs::read_dir(root) else {
        return out;
    };
    for entry in entries {
        let path = entry.expect("entry").path();
        if fs::symlink_metadata(&path).expect("stat").is_dir() {
            out.extend(tree(&path));
        }
        out.insert(path);
    }
    out
}

fn temporaries(root: &Path) -> Vec<PathBuf> {
    tree(root)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.as_bytes().starts_with(TMP_PREFIX.as_bytes()))
        })
        .collect()
}

/// (inode, mtime in ns, ctime in ns): changes on any write, rename or chmod.
fn stamp(path: &Path) -> (u64, i64, i64) {
    let meta = fs::symlink_metadata(path).expect("stat");
    (
        meta.ino(),
        meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
    )
}
