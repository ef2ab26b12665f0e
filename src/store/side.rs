//! The secret and configmap side trees of each checkpoint (`<root>/<ns>/<pod>/...`): validating
//! what the sanitizer asks for into a plan, applying it, pruning what it no longer lists, and
//! removing a pod's trees. Nothing outside a pod's own two directories is ever written.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use serde::{Serialize, Serializer};

use super::atomic::{FileSpec, ensure_base_dir, ensure_own_dir, sync_dir};
use super::error::{IoContext, StoreError};
use super::scan::check_key;
use super::{PRIVATE_DIR_MODE, ROOT, SideEntry, SideFile, Store, TMP_PREFIX};
use crate::model::{Layout, Owner, PodKey};

/// Side files may carry permission bits only; never setuid/setgid/sticky.
const SIDE_FILE_MODE_MASK: u32 = 0o777;

/// Side directories may also be setgid and sticky, as the kubelet's volume directories are
/// (SPEC §2); never setuid.
const SIDE_DIR_MODE_MASK: u32 = 0o3777;

/// Metadata of one entry under a checkpoint's secret or configmap directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SideFileInfo {
    /// Absolute path of the entry.
    pub path: PathBuf,
    /// What the entry is (symlinks are not followed).
    pub kind: SideKind,
    /// Permission bits, shown in octal ("0600") because that is how operators read them.
    #[serde(serialize_with = "serialize_octal")]
    pub mode: u32,
    /// Owning user, to check a non-root pod can read its files.
    pub uid: u32,
    /// Owning group.
    pub gid: u32,
}

/// The type of a side entry as found on disk (anything but dirs and files is unexpected).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SideKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link (never created by the store).
    Symlink,
    /// Anything else (FIFO, socket, device; never created by the store).
    Other,
}

/// What one path under a pod's side trees should be.
enum Want<'a> {
    Dir {
        mode: u32,
        owner: Owner,
    },
    File {
        data: &'a [u8],
        mode: u32,
        owner: Owner,
    },
}

/// File contents are Secret data: `Debug` shows their size, never the bytes.
impl std::fmt::Debug for Want<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Want::Dir { mode, owner } => f
                .debug_struct("Dir")
                .field("mode", &format_args!("{mode:o}"))
                .field("owner", owner)
                .finish(),
            Want::File { data, mode, owner } => f
                .debug_struct("File")
                .field("bytes", &data.len())
                .field("mode", &format_args!("{mode:o}"))
                .field("owner", owner)
                .finish(),
        }
    }
}

impl Want<'_> {
    fn owner(&self) -> Owner {
        match self {
            Want::Dir { owner, .. } | Want::File { owner, .. } => *owner,
        }
    }
}

/// The validated, complete picture of a pod's side trees: every listed entry plus the parent
/// directories it implies (0700, owned like their first descendant: callers list every directory
/// a container must see), keyed by absolute path.
/// Path order puts every directory before what it contains.
pub(super) struct SidePlan<'a> {
    secret: (PathBuf, PathBuf),
    configmap: (PathBuf, PathBuf),
    entries: BTreeMap<PathBuf, Want<'a>>,
}

impl<'a> SidePlan<'a> {
    pub(super) fn new(
        layout: &Layout,
        key: &PodKey,
        files: &'a [SideFile],
    ) -> Result<Self, StoreError> {
        let mut plan = SidePlan {
            secret: (layout.secret_dir.clone(), layout.pod_secret_dir(key)),
            configmap: (layout.configmap_dir.clone(), layout.pod_configmap_dir(key)),
            entries: BTreeMap::new(),
        };
        let bad = |path: &Path, reason| StoreError::BadSideFile {
            path: path.to_owned(),
            key: key.clone(),
            reason,
        };
        for file in files {
            plan.pod_dir_of(&file.path)
                .map_err(|reason| bad(&file.path, reason))?;
            let want = match &file.entry {
                SideEntry::Dir { mode } => Want::Dir {
                    mode: mode & SIDE_DIR_MODE_MASK,
                    owner: file.owner,
                },
                SideEntry::File { data, mode } => Want::File {
                    data,
                    mode: mode & SIDE_FILE_MODE_MASK,
                    owner: file.owner,
                },
            };
            if plan.entries.insert(file.path.clone(), want).is_some() {
                return Err(bad(&file.path, "listed more than once"));
            }
        }
        let listed: Vec<(PathBuf, Owner)> = plan
            .entries
            .iter()
            .map(|(path, want)| (path.clone(), want.owner()))
            .collect();
        for (path, owner) in listed {
            let pod_dir = plan
                .pod_dir_of(&path)
                .map_err(|reason| bad(&path, reason))?
                .to_owned();
            for parent in path.ancestors().skip(1) {
                if parent == pod_dir {
                    break;
                }
                match plan.entries.get(parent) {
                    Some(Want::File { .. }) => {
                        return Err(bad(parent, "listed as a file but contains other entries"));
                    }
                    Some(Want::Dir { .. }) => {}
                    None => {
                        let implied = Want::Dir {
                            mode: PRIVATE_DIR_MODE,
                            owner,
                        };
                        plan.entries.insert(parent.to_owned(), implied);
                    }
                }
            }
        }
        Ok(plan)
    }

    /// The pod directory `path` lies strictly under, or why it is refused.
    fn pod_dir_of(&self, path: &Path) -> Result<&Path, &'static str> {
        for (_, pod_dir) in self.roots() {
            let Ok(rest) = path.strip_prefix(pod_dir) else {
                continue;
            };
            if rest.as_os_str().is_empty() {
                return Err("is the pod directory itself, not an entry in it");
            }
            for component in rest.components() {
                let Component::Normal(name) = component else {
                    return Err("contains '..' or other non-plain components");
                };
                if name.as_bytes().starts_with(TMP_PREFIX.as_bytes()) {
                    return Err("has a name reserved for temporary files");
                }
            }
            return Ok(pod_dir);
        }
        Err("is not under the pod's secret or configmap directory")
    }

    /// (side root, pod directory under it) for secrets and configmaps.
    fn roots(&self) -> [(&Path, &Path); 2] {
        [
            (&self.secret.0, &self.secret.1),
            (&self.configmap.0, &self.configmap.1),
        ]
    }

    fn uses(&self, pod_dir: &Path) -> bool {
        self.entries.keys().any(|path| path.starts_with(pod_dir))
    }
}

impl Store {
    /// Creates or fixes every planned side entry (parents first); returns how many changed.
    pub(super) fn apply_side_plan(
        &self,
        key: &PodKey,
        plan: &SidePlan<'_>,
    ) -> Result<usize, StoreError> {
        let mut changed = 0;
        for (root, pod_dir) in plan.roots() {
            if !plan.uses(pod_dir) {
                continue;
            }
            ensure_base_dir(root, PRIVATE_DIR_MODE, false).doing("creating side root", root)?;
            let ns_dir = root.join(&key.namespace);
            changed += usize::from(
                ensure_own_dir(&ns_dir, PRIVATE_DIR_MODE, ROOT)
                    .doing("creating namespace directory", &ns_dir)?,
            );
            changed += usize::from(
                ensure_own_dir(pod_dir, PRIVATE_DIR_MODE, ROOT)
                    .doing("creating pod directory", pod_dir)?,
            );
        }
        for (path, want) in &plan.entries {
            let did = match want {
                Want::Dir { mode, owner } => {
                    ensure_own_dir(path, *mode, *owner).doing("creating side directory", path)?
                }
                Want::File { data, mode, owner } => {
                    clear_directory_at(path).doing("replacing directory with file", path)?;
                    let spec = FileSpec {
                        path,
                        data,
                        mode: *mode,
                        owner: *owner,
                    };
                    self.put_file(&spec).doing("writing side file", path)?
                }
            };
            changed += usize::from(did);
        }
        Ok(changed)
    }

    /// Deletes what the plan does not list under the pod's two directories, except what lies in
    /// a `mounted` directory (a running copy's).
    pub(super) fn prune_side_trees(
        &self,
        key: &PodKey,
        plan: &SidePlan<'_>,
        mounted: &[PathBuf],
    ) -> Result<usize, StoreError> {
        let mut removed = 0;
        for (root, pod_dir) in plan.roots() {
            if plan.uses(pod_dir) || mounted.iter().any(|m| m.starts_with(pod_dir)) {
                removed += prune_tree(pod_dir, plan, mounted)?;
            } else if remove_pod_tree(root, key)? {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

impl Store {
    /// Removes every `<root>/<ns>/<pod>` tree (plain names, real directories) whose pod has no
    /// checkpoint in either manifest directory: what a removal interrupted between its manifest
    /// and its trees left. A pod whose manifest is there but unreadable keeps its trees. Returns
    /// how many trees were removed.
    pub(super) fn sweep_orphans(&self) -> Result<usize, StoreError> {
        let view = self.scan()?;
        let unreadable: BTreeSet<&OsStr> = (view.unreadable.iter())
            .filter_map(|(path, _)| path.file_name())
            .collect();
        let mut swept = 0;
        for root in [&self.layout.secret_dir, &self.layout.configmap_dir] {
            for ns in plain_dirs(root)? {
                for name in plain_dirs(&root.join(&ns))? {
                    let key = PodKey::new(ns.clone(), name);
                    if check_key(&key).is_err()
                        || view.checkpoints.contains_key(&key)
                        || unreadable.contains(OsStr::new(&key.manifest_file_name()))
                    {
                        continue;
                    }
                    if remove_pod_tree(root, &key)? {
                        swept += 1;
                        tracing::warn!(
                            namespace = %key.namespace,
                            pod = %key.name,
                            action = "sweep",
                            path = %root.join(&key.namespace).join(&key.name).display(),
                            "removed side files that no checkpoint refers to (left by an interrupted removal)"
                        );
                    }
                }
            }
        }
        Ok(swept)
    }
}

/// Names of the real (not symlinked) directories in `dir` that are valid UTF-8; none when `dir`
/// is missing.
fn plain_dirs(dir: &Path) -> Result<Vec<String>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).doing("listing side files in", dir),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.doing("listing side files in", dir)?;
        let is_dir = (entry.file_type())
            .doing("inspecting", &entry.path())?
            .is_dir();
        if let (true, Ok(name)) = (is_dir, entry.file_name().into_string()) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// `<root>/<ns>/<pod>` when it exists as a real directory reached without symlinks; the
/// per-pod trees are the agent's own, but a symlinked path must never lead it elsewhere.
pub(super) fn real_pod_dir(root: &Path, key: &PodKey) -> Result<Option<PathBuf>, StoreError> {
    let ns_dir = root.join(&key.namespace);
    let pod_dir = ns_dir.join(&key.name);
    for dir in [&ns_dir, &pod_dir] {
        match fs::symlink_metadata(dir) {
            Ok(meta) if meta.file_type().is_dir() => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).doing("inspecting", dir),
        }
    }
    Ok(Some(pod_dir))
}

/// Deletes `<root>/<ns>/<pod>` (whatever it is: it belongs to the agent), then `<root>/<ns>` if
/// that left it empty. Returns whether anything was removed. A symlinked `<ns>` is left alone.
pub(super) fn remove_pod_tree(root: &Path, key: &PodKey) -> Result<bool, StoreError> {
    let ns_dir = root.join(&key.namespace);
    match fs::symlink_metadata(&ns_dir) {
        Ok(meta) if meta.file_type().is_dir() => {}
        Ok(_) => {
            return Err(StoreError::NotOurs {
                doing: "remove side files under",
                path: ns_dir,
                key: key.clone(),
                found: "not a plain directory".to_owned(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).doing("inspecting", &ns_dir),
    }
    let pod_dir = ns_dir.join(&key.name);
    let removed = match fs::symlink_metadata(&pod_dir) {
        Ok(meta) => {
            remove_entry(&pod_dir, &meta).doing("removing side files", &pod_dir)?;
            sync_dir(&ns_dir).doing("syncing directory", &ns_dir)?;
            true
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).doing("inspecting", &pod_dir),
    };
    match fs::remove_dir(&ns_dir) {
        Ok(()) => sync_dir(root).doing("syncing directory", root)?,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::DirectoryNotEmpty | io::ErrorKind::NotFound
            ) => {}
        Err(e) => return Err(e).doing("removing empty namespace directory", &ns_dir),
    }
    Ok(removed)
}

/// Deletes everything under `dir` that the plan does not list, keeping whatever lies in a
/// `mounted` directory; returns how many were removed.
fn prune_tree(dir: &Path, plan: &SidePlan<'_>, mounted: &[PathBuf]) -> Result<usize, StoreError> {
    let mut removed_here = 0;
    let mut removed_below = 0;
    for entry in fs::read_dir(dir).doing("listing side files in", dir)? {
        let entry = entry.doing("listing side files in", dir)?;
        let path = entry.path();
        let meta = entry.metadata().doing("inspecting", &path)?;
        let file_type = meta.file_type();
        if mounted.iter().any(|m| path.starts_with(m)) {
            continue;
        }
        let holds_mounted = mounted.iter().any(|m| m.starts_with(&path));
        match plan.entries.get(&path) {
            Some(Want::Dir { .. }) if file_type.is_dir() => {
                removed_below += prune_tree(&path, plan, mounted)?;
            }
            _ if holds_mounted && file_type.is_dir() => {
                removed_below += prune_tree(&path, plan, mounted)?;
            }
            Some(Want::File { .. }) if file_type.is_file() => {}
            _ => {
                remove_entry(&path, &meta).doing("removing stale side file", &path)?;
                removed_here += 1;
            }
        }
    }
    if removed_here > 0 {
        sync_dir(dir).doing("syncing directory", dir)?;
    }
    Ok(removed_here + removed_below)
}

/// Removes a file, symlink or whole directory tree (without following symlinks).
fn remove_entry(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let result = if meta.file_type().is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// A file is about to go where a directory stands (a key became an `items` path parent, or the
/// reverse): the directory is the agent's own, remove it so the rename can succeed.
fn clear_directory_at(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_dir() => fs::remove_dir_all(path),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Appends every entry under `dir` (depth first, sorted, symlinks not followed).
pub(super) fn list_tree(dir: &Path, out: &mut Vec<SideFileInfo>) -> Result<(), StoreError> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).doing("listing side files in", dir)? {
        paths.push(entry.doing("listing side files in", dir)?.path());
    }
    paths.sort();
    for path in paths {
        let meta = fs::symlink_metadata(&path).doing("inspecting", &path)?;
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            SideKind::Dir
        } else if ft.is_file() {
            SideKind::File
        } else if ft.is_symlink() {
            SideKind::Symlink
        } else {
            SideKind::Other
        };
        out.push(SideFileInfo {
            path: path.clone(),
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        });
        if kind == SideKind::Dir {
            list_tree(&path, out)?;
        }
    }
    Ok(())
}

fn serialize_octal<S: Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{mode:04o}"))
}
