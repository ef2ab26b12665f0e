//! The disk (SPEC §2): the only code that reads or writes checkpoint files.
//!
//! Conservative by construction:
//! - which pod a manifest holds is read from its content (`checkpoint-of`), never from its name,
//!   and only files carrying that annotation are ever overwritten or deleted; a static etcd
//!   manifest or an editor's swap file beside our checkpoints is never touched;
//! - every file is replaced atomically (temporary file in the same directory, fsync, rename,
//!   fsync of the directory), so a crash leaves the old or the new version, never a torn one,
//!   and temporaries (`TMP_PREFIX`) are swept at start by [`Store::prepare`];
//! - unchanged files are not rewritten, so the kubelet does not see spurious manifest events;
//! - keys and side-file paths are validated before anything is written, so nothing can escape
//!   the per-pod directories;
//! - errors name the action and the path, never file contents (manifests hold secrets).
//!
//! By duty: `atomic` writes files durably, `scan` reads the manifest directories, `side`
//! places secret and configmap trees, `state` keeps the agent's own facts, `error` says what
//! failed where.

mod atomic;
mod error;
#[cfg(test)]
mod fault;
mod scan;
mod side;
mod state;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

use serde::Serialize;

use crate::model::{Layout, Owner, PodKey};

use atomic::{FileSpec, ensure_base_dir, remove_temporaries};
use error::IoContext;
use scan::{
    Identity, check_key, check_manifest_bytes, check_ours, host_paths, identify, place_checkpoint,
    read_capped, read_manifest_dir, remove_checkpoints_of,
};
use side::{SidePlan, list_tree, real_pod_dir, remove_pod_tree};

pub use error::StoreError;
pub use side::{SideFileInfo, SideKind};
pub use state::StateFile;

/// Name prefix of the store's temporary files, defined in the core so `sanitize` refuses keys and
/// paths that would use it. [`Store::prepare`] deletes leftovers with this prefix (and only those).
pub use crate::model::TMP_PREFIX;

/// Manifests hold literal secret values (SPEC §3), so only root may read them.
const MANIFEST_MODE: u32 = 0o600;

/// Every directory the agent owns is private (SPEC §2).
const PRIVATE_DIR_MODE: u32 = 0o700;

/// Mode for the kubelet's static-pod directory, or parents, when the agent has to create them.
const PUBLIC_DIR_MODE: u32 = 0o755;

/// Owner of manifests and of the per-namespace/per-pod directories.
const ROOT: Owner = Owner { uid: 0, gid: 0 };

/// The sanitizer produces these; the store only places them on disk.
pub use crate::sanitize::{SideEntry, SideFile};

/// What [`Store::write_inactive`] actually changed on disk, so callers can count and log real
/// work instead of every reconcile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The inactive manifest was (re)written.
    pub manifest_changed: bool,
    /// Side directories and files created, rewritten or re-permissioned (the per-namespace and
    /// per-pod directories included), plus stale entries deleted. 0 when nothing changed.
    pub files_changed: usize,
}

/// The checkpoints found on disk (SPEC §1 "disk view"), read from both manifest directories.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskView {
    /// Every checkpoint found, keyed by the parent it was made from (read from the content).
    pub checkpoints: BTreeMap<PodKey, OnDisk>,
    /// `*.json` files that could not be read or parsed: reported so an operator can look, never
    /// touched. The text says what is wrong, without the file's content.
    pub unreadable: Vec<(PathBuf, String)>,
    /// Files holding a checkpoint that another file (the canonically named one) already holds:
    /// ignored, and reported so an operator can look.
    pub duplicates: Vec<(PodKey, PathBuf)>,
}

/// Where one checkpoint lies: inactive only, or also active in the kubelet's directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OnDisk {
    /// The file in the inactive directory holding this checkpoint, if any.
    pub inactive: Option<PathBuf>,
    /// The file in the kubelet's static-pod directory holding it, if any (it then runs).
    pub active: Option<PathBuf>,
    /// When the active file was last written: the activation time, which outlives restarts of
    /// the agent, so the shell can export it without touching the disk itself. `None` when not
    /// active or when the filesystem keeps no modification time.
    pub active_since: Option<SystemTime>,
}

/// One checkpoint as the `status` subcommand shows it: where it lies and what side files it has.
/// Never carries file contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckpointInfo {
    /// The parent this checkpoint was made from.
    pub key: PodKey,
    /// Its inactive manifest, if present.
    pub inactive: Option<PathBuf>,
    /// Its active manifest, if present.
    pub active: Option<PathBuf>,
    /// Everything under its secret and configmap directories, parents before children.
    pub side_files: Vec<SideFileInfo>,
}

/// The only code that touches checkpoint files; see the module documentation for its guarantees.
#[derive(Debug)]
pub struct Store {
    layout: Layout,
    #[cfg(test)]
    faults: fault::Faults,
}

impl Store {
    /// A store over these directories. Does no I/O: call [`Store::prepare`] at start.
    pub fn new(layout: Layout) -> Self {
        Self {
            layout,
            #[cfg(test)]
            faults: fault::Faults::default(),
        }
    }

    /// The directories this store works in, for logs and the `status` output.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Gets the disk ready at start: creates the directories (0700 for the inactive, secret,
    /// configmap and state directories; the kubelet's manifest directory is created 0755 if
    /// missing but its mode is never changed), removes leftover temporaries (names starting
    /// with [`TMP_PREFIX`]) that a crash mid-write left behind, and sweeps side trees no
    /// checkpoint refers to (a crash in [`Store::remove`] between the manifest and its trees).
    /// Returns how many temporaries it removed.
    pub fn prepare(&self) -> Result<usize, StoreError> {
        let l = &self.layout;
        ensure_base_dir(&l.manifest_dir, PUBLIC_DIR_MODE, false)
            .doing("creating manifest directory", &l.manifest_dir)?;
        for (dir, doing) in [
            (
                &l.inactive_manifest_dir,
                "creating inactive manifest directory",
            ),
            (&l.secret_dir, "creating secret directory"),
            (&l.configmap_dir, "creating configmap directory"),
            (&l.state_dir, "creating state directory"),
        ] {
            ensure_base_dir(dir, PRIVATE_DIR_MODE, true).doing(doing, dir)?;
        }
        let mut removed = 0;
        for (dir, recursive) in [
            (&l.manifest_dir, false),
            (&l.inactive_manifest_dir, false),
            (&l.state_dir, false),
            (&l.secret_dir, true),
            (&l.configmap_dir, true),
        ] {
            removed += remove_temporaries(dir, recursive)?;
        }
        self.sweep_orphans()?;
        Ok(removed)
    }

    /// Reads both manifest directories into the disk view. Only regular `*.json` files that are
    /// not dot-prefixed are considered, and only those whose content is a v1 Pod annotated
    /// `checkpoint-of` are checkpoints; others (a static etcd manifest) are ignored. The key is
    /// (the manifest's namespace, default "default"; the `checkpoint-of` value). Files that do
    /// not parse are reported in `unreadable`, not fatal.
    pub fn scan(&self) -> Result<DiskView, StoreError> {
        let mut view = DiskView::default();
        let inactive = read_manifest_dir(&self.layout.inactive_manifest_dir)?;
        let active = read_manifest_dir(&self.layout.manifest_dir)?;
        for (found, is_active) in [(inactive, false), (active, true)] {
            view.unreadable.extend(found.unreadable);
            for file in found.checkpoints {
                let dups = &mut view.duplicates;
                let entry = view.checkpoints.entry(file.key.clone()).or_default();
                if !is_active {
                    place_checkpoint(&mut entry.inactive, &file.key, file.path, dups);
                } else if place_checkpoint(&mut entry.active, &file.key, file.path, dups) {
                    entry.active_since = file.written;
                }
            }
        }
        Ok(view)
    }

    /// Writes (or refreshes) the inactive checkpoint of `key`: first the side files, so the
    /// manifest never points at missing files, then the manifest (0600) at
    /// `inactive_manifest_dir/<ns>-<name>.json`, then deletes entries under the pod's secret and
    /// configmap directories that `files` no longer lists (keys that disappeared upstream).
    ///
    /// Every file is replaced atomically and skipped when it already has identical bytes, mode
    /// and owner. Nothing is written when the key, the manifest or any side file is refused:
    /// the manifest must be a checkpoint of `key`, an existing file at the target must be one
    /// too (collision or foreign file otherwise), and every side path must lie strictly under
    /// the pod's two directories.
    ///
    /// While the checkpoint is active, the directories its running copy mounts (read from the
    /// active manifest) are not pruned: the copy is never refreshed and must keep its files.
    pub fn write_inactive(
        &self,
        key: &PodKey,
        manifest: &[u8],
        files: &[SideFile],
    ) -> Result<WriteOutcome, StoreError> {
        check_key(key)?;
        let target = self.inactive_path(key);
        check_manifest_bytes(key, manifest, &target)?;
        let plan = SidePlan::new(&self.layout, key, files)?;
        ensure_base_dir(&self.layout.inactive_manifest_dir, PRIVATE_DIR_MODE, true).doing(
            "creating inactive manifest directory",
            &self.layout.inactive_manifest_dir,
        )?;
        check_ours(&target, key, "overwrite inactive manifest")?;

        let mut files_changed = self.apply_side_plan(key, &plan)?;
        let manifest_changed = self
            .put_file(&FileSpec::manifest(&target, manifest))
            .doing("writing inactive manifest", &target)?;
        let mounted = self.mounted_by_active(key);
        files_changed += self.prune_side_trees(key, &plan, &mounted)?;
        Ok(WriteOutcome {
            manifest_changed,
            files_changed,
        })
    }

    /// Makes the checkpoint active: copies the inactive manifest into the kubelet's directory
    /// atomically (0600). Refuses when the inactive file is not a checkpoint of `key`, or when
    /// the target holds a file that is not (a static pod or a colliding name).
    pub fn activate(&self, key: &PodKey) -> Result<(), StoreError> {
        check_key(key)?;
        let source = self.inactive_path(key);
        let bytes = read_capped(&source).doing("reading inactive manifest", &source)?;
        match identify(&bytes) {
            Identity::Checkpoint(found) if found == *key => {}
            other => {
                return Err(StoreError::NotOurs {
                    doing: "activate from",
                    path: source,
                    key: key.clone(),
                    found: other.describe(),
                });
            }
        }
        let target = self.active_path(key);
        ensure_base_dir(&self.layout.manifest_dir, PUBLIC_DIR_MODE, false)
            .doing("creating manifest directory", &self.layout.manifest_dir)?;
        check_ours(&target, key, "overwrite active manifest")?;
        self.put_file(&FileSpec::manifest(&target, &bytes))
            .doing("writing active manifest", &target)?;
        Ok(())
    }

    /// Stops the checkpoint: removes every file in the kubelet's directory that is a checkpoint
    /// of `key` (normally just `<ns>-<name>.json`), then syncs the directory. Files that are not
    /// checkpoints of `key` are never removed. Nothing to remove is fine.
    pub fn deactivate(&self, key: &PodKey) -> Result<(), StoreError> {
        check_key(key)?;
        remove_checkpoints_of(&self.layout.manifest_dir, key, "removing active manifest")
    }

    /// Deletes the checkpoint (SPEC §4 removal order: the caller deactivates first and waits for
    /// the runtime): the inactive manifest(s) of `key`, then the pod's secret and configmap
    /// trees, then `<ns>` directories left empty. Does not touch the active copy. Only files that
    /// are checkpoints of `key`, or lie under the pod's own directories, are removed. Nothing to
    /// remove is fine. Then sweeps the trees of other pods that have no checkpoint left (an
    /// earlier removal that failed or crashed after its manifest went): nothing else would.
    pub fn remove(&self, key: &PodKey) -> Result<(), StoreError> {
        check_key(key)?;
        remove_checkpoints_of(
            &self.layout.inactive_manifest_dir,
            key,
            "removing inactive manifest",
        )?;
        self.fault(error::Step::RemoveSideTrees)
            .doing("removing side files", &self.layout.pod_secret_dir(key))?;
        remove_pod_tree(&self.layout.secret_dir, key)?;
        remove_pod_tree(&self.layout.configmap_dir, key)?;
        if let Err(e) = self.sweep_orphans() {
            tracing::warn!(action = "sweep", error = %e, "could not sweep side trees left without a checkpoint; the next start tries again");
        }
        Ok(())
    }

    /// The directories the active copy of `key` mounts, which pruning must leave alone: none when
    /// the checkpoint is not active, both of the pod's directories when the active manifest
    /// cannot be read (unknown is not "mounts nothing").
    fn mounted_by_active(&self, key: &PodKey) -> Vec<PathBuf> {
        let everything = || {
            vec![
                self.layout.pod_secret_dir(key),
                self.layout.pod_configmap_dir(key),
            ]
        };
        match read_capped(&self.active_path(key)) {
            Ok(bytes) => match identify(&bytes) {
                Identity::Checkpoint(found) if found == *key => {
                    host_paths(&bytes, key).unwrap_or_else(everything)
                }
                // Another pod's file under that name: not this checkpoint's copy.
                Identity::Checkpoint(_) | Identity::NotCheckpoint => Vec::new(),
                Identity::Unparsable(_) => everything(),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(_) => everything(),
        }
    }

    /// Lists every checkpoint with its manifests and side files (paths, kinds, modes, owners;
    /// never contents), for the `status` subcommand.
    pub fn describe(&self) -> Result<Vec<CheckpointInfo>, StoreError> {
        let view = self.scan()?;
        let mut out = Vec::with_capacity(view.checkpoints.len());
        for (key, on_disk) in view.checkpoints {
            let mut side_files = Vec::new();
            // A key read from a manifest may be unusable as a path; it then has no side files.
            if check_key(&key).is_ok() {
                for root in [&self.layout.secret_dir, &self.layout.configmap_dir] {
                    if let Some(pod_dir) = real_pod_dir(root, &key)? {
                        list_tree(&pod_dir, &mut side_files)?;
                    }
                }
            }
            out.push(CheckpointInfo {
                key,
                inactive: on_disk.inactive,
                active: on_disk.active,
                side_files,
            });
        }
        Ok(out)
    }

    fn inactive_path(&self, key: &PodKey) -> PathBuf {
        self.layout
            .inactive_manifest_dir
            .join(key.manifest_file_name())
    }

    fn active_path(&self, key: &PodKey) -> PathBuf {
        self.layout.manifest_dir.join(key.manifest_file_name())
    }
}
