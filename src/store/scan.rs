//! Reading the manifest directories: which pod a file holds is judged from its content
//! (`checkpoint-of`), never from its name, and only such files are ever replaced or removed.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Pod;

use super::atomic::sync_dir;
use super::error::{IoContext, StoreError, json_error_summary};
use crate::model::{CHECKPOINT_OF_ANNOTATION, DEFAULT_NAMESPACE, PodKey};

/// Manifests and the deadline file are small; anything larger is not ours and is not read whole.
const MAX_READ_BYTES: u64 = 64 << 20;

/// What a manifest holds, judged from its content only (SPEC §2).
pub(super) enum Identity {
    Checkpoint(PodKey),
    NotCheckpoint,
    Unparsable(String),
}

impl Identity {
    /// For refusal messages: what was found instead of the expected checkpoint.
    pub(super) fn describe(&self) -> String {
        match self {
            Identity::Checkpoint(key) => format!("a checkpoint of {key}"),
            Identity::NotCheckpoint => "a pod manifest without checkpoint-of".to_owned(),
            Identity::Unparsable(why) => format!("unparsable ({why})"),
        }
    }
}

pub(super) fn identify(bytes: &[u8]) -> Identity {
    let pod: Pod = match serde_json::from_slice(bytes) {
        Ok(pod) => pod,
        Err(e) => return Identity::Unparsable(json_error_summary(&e)),
    };
    let parent = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CHECKPOINT_OF_ANNOTATION));
    let Some(parent) = parent else {
        return Identity::NotCheckpoint;
    };
    let namespace = match pod.metadata.namespace {
        Some(ns) if !ns.is_empty() => ns,
        _ => DEFAULT_NAMESPACE.to_owned(),
    };
    Identity::Checkpoint(PodKey::new(namespace, parent.clone()))
}

/// The host directories a checkpoint manifest of `key` mounts (its `hostPath` volumes); `None`
/// when the bytes are not a readable checkpoint of `key`, so the caller cannot know.
pub(super) fn host_paths(bytes: &[u8], key: &PodKey) -> Option<Vec<PathBuf>> {
    match identify(bytes) {
        Identity::Checkpoint(found) if found == *key => {}
        _ => return None,
    }
    let pod: Pod = serde_json::from_slice(bytes).ok()?;
    let volumes = pod.spec.and_then(|spec| spec.volumes).unwrap_or_default();
    Some(
        volumes
            .into_iter()
            .filter_map(|v| v.host_path.map(|h| PathBuf::from(h.path)))
            .collect(),
    )
}

/// Keys become file and directory names, so they must be plain DNS-1123 names: no '/', no
/// leading dot (that would look like a temporary), no "..".
pub(super) fn check_key(key: &PodKey) -> Result<(), StoreError> {
    for part in [&key.namespace, &key.name] {
        if let Some(reason) = name_problem(part) {
            return Err(StoreError::BadKey {
                key: key.clone(),
                reason,
            });
        }
    }
    Ok(())
}

fn name_problem(name: &str) -> Option<&'static str> {
    let plain = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    if name.is_empty() || name.len() > 253 {
        Some("namespace and name must be 1 to 253 characters")
    } else if !name.chars().all(plain) {
        Some("namespace and name may only hold a-z, 0-9, '-' and '.'")
    } else if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        Some("namespace and name must start with a letter or digit")
    } else {
        None
    }
}

pub(super) fn check_manifest_bytes(
    key: &PodKey,
    manifest: &[u8],
    target: &Path,
) -> Result<(), StoreError> {
    let reason = match identify(manifest) {
        Identity::Checkpoint(found) if found == *key => return Ok(()),
        other => format!("it is {}, not a checkpoint of {key}", other.describe()),
    };
    Err(StoreError::BadManifest {
        path: target.to_owned(),
        key: key.clone(),
        reason,
    })
}

/// Ok when `path` is free or already holds a checkpoint of `key`; a refusal otherwise.
pub(super) fn check_ours(path: &Path, key: &PodKey, doing: &'static str) -> Result<(), StoreError> {
    let refuse = |found: String| StoreError::NotOurs {
        doing,
        path: path.to_owned(),
        key: key.clone(),
        found,
    };
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).doing("inspecting", path),
    };
    if !meta.file_type().is_file() {
        return Err(refuse(format!("a {}", kind_name(&meta))));
    }
    let bytes = match read_capped(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::InvalidData => return Err(refuse(e.to_string())),
        Err(e) => return Err(e).doing("reading", path),
    };
    match identify(&bytes) {
        Identity::Checkpoint(found) if found == *key => Ok(()),
        other => Err(refuse(other.describe())),
    }
}

fn kind_name(meta: &fs::Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_dir() {
        "directory"
    } else if ft.is_symlink() {
        "symbolic link"
    } else if ft.is_file() {
        "regular file"
    } else {
        "special file"
    }
}

/// Reads a file we expect to be small, refusing to follow a symlink or to slurp a huge file.
pub(super) fn read_capped(path: &Path) -> io::Result<Vec<u8>> {
    read_capped_stamped(path).map(|(bytes, _)| bytes)
}

/// [`read_capped`], plus when the file was last written (from the open descriptor, so it is the
/// same file): for an active manifest, the time it was activated, which survives restarts.
fn read_capped_stamped(path: &Path) -> io::Result<(Vec<u8>, Option<SystemTime>)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let written = file.metadata().and_then(|m| m.modified()).ok();
    let mut bytes = Vec::new();
    file.take(MAX_READ_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_READ_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_READ_BYTES} bytes"),
        ));
    }
    Ok((bytes, written))
}

/// One checkpoint file found in a manifest directory.
pub(super) struct FoundCheckpoint {
    /// The parent it was made from, read from its content.
    pub key: PodKey,
    pub path: PathBuf,
    /// When the file was last written, if the filesystem says.
    pub written: Option<SystemTime>,
}

/// Checkpoints and unreadable files found in one manifest directory.
#[derive(Default)]
pub(super) struct ManifestDir {
    pub checkpoints: Vec<FoundCheckpoint>,
    pub unreadable: Vec<(PathBuf, String)>,
}

/// Reads every candidate manifest (regular, `*.json`, not dot-prefixed) of a directory. A missing
/// directory is empty; a file that cannot be read or parsed is reported, not fatal.
pub(super) fn read_manifest_dir(dir: &Path) -> Result<ManifestDir, StoreError> {
    let mut out = ManifestDir::default();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).doing("listing manifests in", dir),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.doing("listing manifests in", dir)?;
        let name = entry.file_name();
        let name = name.as_bytes();
        if name.starts_with(b".") || !name.ends_with(b".json") {
            continue;
        }
        let file_type = entry.file_type().doing("inspecting", &entry.path())?;
        if file_type.is_file() {
            paths.push(entry.path());
        }
    }
    paths.sort();
    for path in paths {
        let (bytes, written) = match read_capped_stamped(&path) {
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                out.unreadable.push((path, format!("cannot read: {e}")));
                continue;
            }
        };
        match identify(&bytes) {
            Identity::Checkpoint(key) => match check_key(&key) {
                Ok(()) => out.checkpoints.push(FoundCheckpoint { key, path, written }),
                Err(e) => out.unreadable.push((path, e.to_string())),
            },
            Identity::NotCheckpoint => {}
            Identity::Unparsable(why) => out.unreadable.push((path, why)),
        }
    }
    Ok(out)
}

/// Records a found checkpoint file; when two files hold the same key, the canonically named one
/// (`<ns>-<name>.json`) wins and the other goes to `duplicates` (reported by the caller, once),
/// never guessed about. Returns whether `path` is the one kept.
pub(super) fn place_checkpoint(
    slot: &mut Option<PathBuf>,
    key: &PodKey,
    path: PathBuf,
    duplicates: &mut Vec<(PodKey, PathBuf)>,
) -> bool {
    let canonical = key.manifest_file_name();
    let is_canonical = |p: &Path| p.file_name() == Some(OsStr::new(&canonical));
    match slot {
        None => {
            *slot = Some(path);
            true
        }
        Some(existing) => {
            let takes_over = is_canonical(&path) && !is_canonical(existing);
            let (keep, other) = if takes_over {
                (path, existing.clone())
            } else {
                (existing.clone(), path)
            };
            duplicates.push((key.clone(), other));
            *slot = Some(keep);
            takes_over
        }
    }
}

/// Removes every file in `dir` that is a checkpoint of `key`, then syncs `dir`.
pub(super) fn remove_checkpoints_of(
    dir: &Path,
    key: &PodKey,
    doing: &'static str,
) -> Result<(), StoreError> {
    let found = read_manifest_dir(dir)?;
    let mut removed = false;
    for FoundCheckpoint {
        key: found, path, ..
    } in found.checkpoints
    {
        if found != *key {
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).doing(doing, &path),
        }
    }
    if removed {
        sync_dir(dir).doing("syncing directory", dir)?;
    }
    Ok(())
}
