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

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize, Serializer};

use crate::model::{CHECKPOINT_OF_ANNOTATION, Layout, Owner, PodKey};

/// Name prefix of the store's temporary files. Dot-prefixed so the kubelet ignores them in its
/// static-pod directory; [`Store::prepare`] deletes leftovers with this prefix (and only those).
pub const TMP_PREFIX: &str = ".pod-checkpointer-tmp-";

/// Manifests hold literal secret values (SPEC §3), so only root may read them.
const MANIFEST_MODE: u32 = 0o600;
/// Every directory the agent owns is private (SPEC §2).
const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode for the kubelet's static-pod directory, or parents, when the agent has to create them.
const PUBLIC_DIR_MODE: u32 = 0o755;
/// Side files may carry permission bits only; never setuid/setgid/sticky.
const SIDE_FILE_MODE_MASK: u32 = 0o777;
/// Manifests and the deadline file are small; anything larger is not ours and is not read whole.
const MAX_READ_BYTES: u64 = 64 << 20;
/// Where grace deadlines are persisted, inside `Layout::state_dir`.
const DEADLINES_FILE: &str = "deadlines.json";
/// Version of the deadline file's format, so a future change is detected rather than misread.
const DEADLINES_VERSION: u32 = 1;
/// The namespace the kubelet assumes for a manifest that names none.
const DEFAULT_NAMESPACE: &str = "default";
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
}

/// Where one checkpoint lies: inactive only, or also active in the kubelet's directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OnDisk {
    /// The file in the inactive directory holding this checkpoint, if any.
    pub inactive: Option<PathBuf>,
    /// The file in the kubelet's static-pod directory holding it, if any (it then runs).
    pub active: Option<PathBuf>,
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

/// Why a store operation failed. Each variant says what was being done and where; none carries
/// file contents, because manifests and side files hold secrets.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem call failed (`writing inactive manifest /x/y: No space left on device`).
    #[error("{doing} {}: {cause}", .path.display())]
    Io {
        /// What the store was doing, e.g. "writing inactive manifest".
        doing: &'static str,
        /// The file or directory it was doing it to.
        path: PathBuf,
        /// The OS error (for an atomic write, prefixed with the step that failed).
        cause: io::Error,
    },
    /// A file at a path the store wanted to replace or read is not a checkpoint of this key (a
    /// name collision such as `a-b`/`c` vs `a`/`b-c`, a static pod, a foreign or corrupt file).
    #[error("refusing to {doing} {}: it is {found}, not a checkpoint of {key}", .path.display())]
    NotOurs {
        /// What the store refused to do, e.g. "overwrite active manifest".
        doing: &'static str,
        /// The file it left alone.
        path: PathBuf,
        /// The checkpoint the store was working on.
        key: PodKey,
        /// What the file turned out to be (never its content).
        found: String,
    },
    /// A side file that would land outside the pod's own directories, or conflicts with another.
    #[error("refusing side file {} of {key}: {reason}", .path.display())]
    BadSideFile {
        /// The refused path.
        path: PathBuf,
        /// The checkpoint it was given for.
        key: PodKey,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A key that cannot safely become a file or directory name (it has no path yet).
    #[error("refusing checkpoint key {key}: {reason}")]
    BadKey {
        /// The refused key.
        key: PodKey,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The manifest handed to the store is not a checkpoint of the key it is stored under; it
    /// would be unrecognisable on the next scan and could never be cleaned up.
    #[error("refusing to write manifest {} for {key}: {reason}", .path.display())]
    BadManifest {
        /// Where it would have been written.
        path: PathBuf,
        /// The key it was given for.
        key: PodKey,
        /// What it is instead (never its content).
        reason: String,
    },
    /// A file of the store's own is damaged (e.g. the deadline file does not parse).
    #[error("reading {what} {}: {reason}", .path.display())]
    Corrupt {
        /// Which of the store's files.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong (category and position, never content).
        reason: String,
    },
}

impl StoreError {
    /// A short, stable label per variant, for metrics (`refused_total{reason=...}` and friends).
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::Io { .. } => "io",
            StoreError::NotOurs { .. } => "not_ours",
            StoreError::BadSideFile { .. } => "bad_side_file",
            StoreError::BadKey { .. } => "bad_key",
            StoreError::BadManifest { .. } => "bad_manifest",
            StoreError::Corrupt { .. } => "corrupt",
        }
    }

    /// The underlying I/O error, if any (to tell ENOSPC from EACCES, say). It is part of the
    /// Display text rather than `source()`, so chained printers do not repeat it.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            StoreError::Io { cause, .. } => Some(cause),
            _ => None,
        }
    }
}

/// Attaches "what was being done, where" to an I/O result.
trait IoContext<T> {
    fn doing(self, doing: &'static str, path: &Path) -> Result<T, StoreError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn doing(self, doing: &'static str, path: &Path) -> Result<T, StoreError> {
        self.map_err(|cause| StoreError::Io {
            doing,
            path: path.to_owned(),
            cause,
        })
    }
}

/// The steps of one atomic file replacement, in order. Tests make any of them fail to prove the
/// target is never left torn. Owner and mode are set before the fsync so they are durable too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Step {
    CreateTemp,
    Write,
    SetOwnerMode,
    SyncFile,
    Rename,
    SyncDir,
}

impl Step {
    /// Every step, for tests that fail each in turn.
    #[cfg(test)]
    pub(crate) const ALL: [Step; 6] = [
        Step::CreateTemp,
        Step::Write,
        Step::SetOwnerMode,
        Step::SyncFile,
        Step::Rename,
        Step::SyncDir,
    ];

    fn describe(self) -> &'static str {
        match self {
            Step::CreateTemp => "creating temporary file",
            Step::Write => "writing temporary file",
            Step::SetOwnerMode => "setting owner and mode of temporary file",
            Step::SyncFile => "syncing temporary file",
            Step::Rename => "renaming temporary file into place",
            Step::SyncDir => "syncing directory",
        }
    }
}

/// An I/O error with the atomic-write step it happened in; keeps the original error reachable.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", .step.describe())]
struct StepFailed {
    step: Step,
    source: io::Error,
}

fn at_step(step: Step) -> impl FnOnce(io::Error) -> io::Error {
    move |source| io::Error::new(source.kind(), StepFailed { step, source })
}

/// Test-only fault injection: fail the `nth` (0-based) occurrence of a step of atomic writes.
#[cfg(test)]
mod fault {
    use super::Step;
    use std::io;
    use std::sync::Mutex;

    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Fault {
        pub step: Step,
        pub nth: usize,
        /// Simulate a crash: leave the temporary file behind instead of cleaning it up.
        pub leave_temp: bool,
    }

    #[derive(Debug, Default)]
    pub(crate) struct Faults {
        armed: Mutex<Option<(Fault, usize)>>,
        fired: Mutex<Option<Fault>>,
    }

    impl Faults {
        pub(crate) fn arm(&self, fault: Fault) {
            *self.armed.lock().expect("fault lock") = Some((fault, 0));
            *self.fired.lock().expect("fault lock") = None;
        }

        /// The fault that fired since `arm`, if any.
        pub(crate) fn fired(&self) -> Option<Fault> {
            *self.fired.lock().expect("fault lock")
        }

        /// Called before each step: errors when the armed fault matches this occurrence.
        pub(crate) fn hit(&self, step: Step) -> io::Result<()> {
            let mut armed = self.armed.lock().expect("fault lock");
            let Some((fault, seen)) = armed.as_mut() else {
                return Ok(());
            };
            if fault.step != step {
                return Ok(());
            }
            if *seen < fault.nth {
                *seen += 1;
                return Ok(());
            }
            let fault = *fault;
            *armed = None;
            *self.fired.lock().expect("fault lock") = Some(fault);
            Err(io::Error::other(format!("injected fault at {step:?}")))
        }

        pub(crate) fn leaves_temp(&self) -> bool {
            self.fired().is_some_and(|f| f.leave_temp)
        }
    }
}

/// Small facts the DaemonSet pod remembers for its static copy, which may start after a reboot
/// with no API server to ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateFile {
    /// The name of the agent's own DaemonSet: tells a rolling update from a removal.
    Owner,
    /// The in-cluster API address: a copy started before the kubelet knows Services has none.
    ApiAddress,
}

impl StateFile {
    fn file_name(self) -> &'static str {
        match self {
            StateFile::Owner => "daemonset-name",
            StateFile::ApiAddress => "api-server-url",
        }
    }
}

/// Makes temporary names unique within the process; the PID makes them unique across processes.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

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
    /// missing but its mode is never changed) and removes leftover temporaries (names starting
    /// with [`TMP_PREFIX`]) that a crash mid-write left behind. Returns how many it removed.
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
            for (key, path) in found.checkpoints {
                let entry = view.checkpoints.entry(key.clone()).or_default();
                let slot = if is_active {
                    &mut entry.active
                } else {
                    &mut entry.inactive
                };
                place_checkpoint(slot, &key, path);
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
        files_changed += self.prune_side_trees(key, &plan)?;
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
    /// remove is fine.
    pub fn remove(&self, key: &PodKey) -> Result<(), StoreError> {
        check_key(key)?;
        remove_checkpoints_of(
            &self.layout.inactive_manifest_dir,
            key,
            "removing inactive manifest",
        )?;
        remove_pod_tree(&self.layout.secret_dir, key)?;
        remove_pod_tree(&self.layout.configmap_dir, key)?;
        Ok(())
    }

    /// Loads the persisted grace deadlines, so a restart does not reset them (SPEC §4).
    /// A missing file means no deadlines; a corrupt one is an error (never silently "none").
    pub fn load_deadlines(&self) -> Result<BTreeMap<PodKey, jiff::Timestamp>, StoreError> {
        let path = self.deadlines_path();
        let bytes = match read_capped(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(e).doing("reading grace deadlines", &path),
        };
        let file: DeadlinesFile =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                what: "grace deadlines",
                path: path.clone(),
                reason: json_error_summary(&e),
            })?;
        if file.version != DEADLINES_VERSION {
            return Err(StoreError::Corrupt {
                what: "grace deadlines",
                path,
                reason: format!("unsupported version {}", file.version),
            });
        }
        Ok(file
            .deadlines
            .into_iter()
            .map(|d| (PodKey::new(d.namespace, d.name), d.deadline))
            .collect())
    }

    /// Persists the grace deadlines atomically (0600) at `state_dir/deadlines.json`.
    pub fn save_deadlines(
        &self,
        deadlines: &BTreeMap<PodKey, jiff::Timestamp>,
    ) -> Result<(), StoreError> {
        let path = self.deadlines_path();
        let file = DeadlinesFile {
            version: DEADLINES_VERSION,
            deadlines: deadlines
                .iter()
                .map(|(key, deadline)| DeadlineEntry {
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                    deadline: *deadline,
                })
                .collect(),
        };
        let mut bytes = serde_json::to_vec_pretty(&file).map_err(|e| StoreError::Corrupt {
            what: "grace deadlines to save",
            path: path.clone(),
            reason: json_error_summary(&e),
        })?;
        bytes.push(b'\n');
        ensure_base_dir(&self.layout.state_dir, PRIVATE_DIR_MODE, true)
            .doing("creating state directory", &self.layout.state_dir)?;
        self.put_file(&FileSpec::manifest(&path, &bytes))
            .doing("writing grace deadlines", &path)?;
        Ok(())
    }

    /// Reads a remembered fact (see [`StateFile`]); `None` when it was never written.
    pub fn read_state(&self, which: StateFile) -> Result<Option<String>, StoreError> {
        let path = self.layout.state_dir.join(which.file_name());
        match read_capped(&path) {
            Ok(bytes) => {
                Ok(Some(String::from_utf8_lossy(&bytes).trim().to_string())
                    .filter(|s| !s.is_empty()))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).doing("reading agent state", &path),
        }
    }

    /// Remembers a fact atomically (0600) in the state directory; unchanged values are not
    /// rewritten.
    pub fn write_state(&self, which: StateFile, value: &str) -> Result<(), StoreError> {
        let path = self.layout.state_dir.join(which.file_name());
        ensure_base_dir(&self.layout.state_dir, PRIVATE_DIR_MODE, true)
            .doing("creating state directory", &self.layout.state_dir)?;
        self.put_file(&FileSpec::manifest(&path, value.as_bytes()))
            .doing("writing agent state", &path)?;
        Ok(())
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

    fn deadlines_path(&self) -> PathBuf {
        self.layout.state_dir.join(DEADLINES_FILE)
    }

    /// Creates or fixes every planned side entry (parents first); returns how many changed.
    fn apply_side_plan(&self, key: &PodKey, plan: &SidePlan<'_>) -> Result<usize, StoreError> {
        let mut changed = 0;
        for (root, pod_dir) in plan.roots() {
            if !plan.uses(pod_dir) {
                continue;
            }
            ensure_base_dir(root, PRIVATE_DIR_MODE, false).doing("creating side root", root)?;
            let ns_dir = root.join(&key.namespace);
            changed += usize::from(
                ensure_own_dir(&ns_dir, ROOT).doing("creating namespace directory", &ns_dir)?,
            );
            changed += usize::from(
                ensure_own_dir(pod_dir, ROOT).doing("creating pod directory", pod_dir)?,
            );
        }
        for (path, want) in &plan.entries {
            let did = match want {
                Want::Dir { owner } => {
                    ensure_own_dir(path, *owner).doing("creating side directory", path)?
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

    /// Deletes what the plan does not list under the pod's two directories.
    fn prune_side_trees(&self, key: &PodKey, plan: &SidePlan<'_>) -> Result<usize, StoreError> {
        let mut removed = 0;
        for (root, pod_dir) in plan.roots() {
            if plan.uses(pod_dir) {
                removed += prune_tree(pod_dir, plan)?;
            } else if remove_pod_tree(root, key)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Makes `spec.path` hold exactly the spec, atomically; `Ok(false)` when it already did.
    fn put_file(&self, spec: &FileSpec<'_>) -> io::Result<bool> {
        if is_identical(spec)? {
            return Ok(false);
        }
        self.replace_file(spec)?;
        Ok(true)
    }

    /// Atomic replacement: temp file in the same directory, write, owner/mode, fsync, rename,
    /// fsync the directory. On failure before the rename the temp file is removed (a crash
    /// leaves it for `prepare`), so the target keeps its old complete content.
    fn replace_file(&self, spec: &FileSpec<'_>) -> io::Result<()> {
        let (dir, name) = split_path(spec.path)?;
        let (temp_path, file) = self.create_temp(dir, name)?;
        if let Err(e) = self.fill_and_rename(file, &temp_path, spec) {
            if !self.crash_simulated() {
                let _ = fs::remove_file(&temp_path);
            }
            return Err(e);
        }
        self.fault(Step::SyncDir).map_err(at_step(Step::SyncDir))?;
        sync_dir(dir).map_err(at_step(Step::SyncDir))
    }

    fn fill_and_rename(&self, mut file: File, temp: &Path, spec: &FileSpec<'_>) -> io::Result<()> {
        self.write_data(&mut file, spec.data)
            .map_err(at_step(Step::Write))?;
        self.fault(Step::SetOwnerMode)
            .and_then(|()| set_owner_mode(&file, spec.mode, spec.owner))
            .map_err(at_step(Step::SetOwnerMode))?;
        self.fault(Step::SyncFile)
            .and_then(|()| file.sync_all())
            .map_err(at_step(Step::SyncFile))?;
        drop(file);
        self.fault(Step::Rename)
            .and_then(|()| fs::rename(temp, spec.path))
            .map_err(at_step(Step::Rename))
    }

    /// Writes all of `data`; an injected fault writes half first, like a full disk would.
    fn write_data(&self, file: &mut File, data: &[u8]) -> io::Result<()> {
        if let Err(e) = self.fault(Step::Write) {
            file.write_all(&data[..data.len() / 2])?;
            return Err(e);
        }
        file.write_all(data)
    }

    /// Creates `<dir>/<TMP_PREFIX><name>.<pid>.<n>` exclusively, 0600 until filled, so a
    /// secret is never readable by others while being written.
    fn create_temp(&self, dir: &Path, name: &OsStr) -> io::Result<(PathBuf, File)> {
        self.fault(Step::CreateTemp)
            .map_err(at_step(Step::CreateTemp))?;
        let mut attempts = 0;
        loop {
            let path = dir.join(temp_name(name));
            let opened = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(MANIFEST_MODE)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path);
            match opened {
                Ok(file) => return Ok((path, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 16 => {
                    attempts += 1;
                }
                Err(e) => return Err(at_step(Step::CreateTemp)(e)),
            }
        }
    }

    #[cfg(test)]
    fn fault(&self, step: Step) -> io::Result<()> {
        self.faults.hit(step)
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn fault(&self, _step: Step) -> io::Result<()> {
        Ok(())
    }

    #[cfg(test)]
    fn crash_simulated(&self) -> bool {
        self.faults.leaves_temp()
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn crash_simulated(&self) -> bool {
        false
    }
}

/// The desired state of one file.
struct FileSpec<'a> {
    path: &'a Path,
    data: &'a [u8],
    mode: u32,
    owner: Owner,
}

impl<'a> FileSpec<'a> {
    /// Manifests and agent state: root-owned, 0600.
    fn manifest(path: &'a Path, data: &'a [u8]) -> Self {
        Self {
            path,
            data,
            mode: MANIFEST_MODE,
            owner: ROOT,
        }
    }
}

/// What one path under a pod's side trees should be.
#[derive(Debug)]
enum Want<'a> {
    Dir {
        owner: Owner,
    },
    File {
        data: &'a [u8],
        mode: u32,
        owner: Owner,
    },
}

impl Want<'_> {
    fn owner(&self) -> Owner {
        match self {
            Want::Dir { owner } | Want::File { owner, .. } => *owner,
        }
    }
}

/// The validated, complete picture of a pod's side trees: every listed entry plus the parent
/// directories it implies (0700, owned like their first descendant), keyed by absolute path.
/// Path order puts every directory before what it contains.
struct SidePlan<'a> {
    secret: (PathBuf, PathBuf),
    configmap: (PathBuf, PathBuf),
    entries: BTreeMap<PathBuf, Want<'a>>,
}

impl<'a> SidePlan<'a> {
    fn new(layout: &Layout, key: &PodKey, files: &'a [SideFile]) -> Result<Self, StoreError> {
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
                SideEntry::Dir => Want::Dir { owner: file.owner },
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
                        plan.entries.insert(parent.to_owned(), Want::Dir { owner });
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

/// What a manifest holds, judged from its content only (SPEC §2).
enum Identity {
    Checkpoint(PodKey),
    NotCheckpoint,
    Unparsable(String),
}

impl Identity {
    /// For refusal messages: what was found instead of the expected checkpoint.
    fn describe(&self) -> String {
        match self {
            Identity::Checkpoint(key) => format!("a checkpoint of {key}"),
            Identity::NotCheckpoint => "a pod manifest without checkpoint-of".to_owned(),
            Identity::Unparsable(why) => format!("unparsable ({why})"),
        }
    }
}

fn identify(bytes: &[u8]) -> Identity {
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

/// Describes a JSON error by category and position only: serde's own messages may quote values
/// from the file, and manifests hold secrets.
fn json_error_summary(e: &serde_json::Error) -> String {
    let category = match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Data => "JSON that is not a v1 Pod",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{category} at line {}, column {}", e.line(), e.column())
}

/// Keys become file and directory names, so they must be plain DNS-1123 names: no '/', no
/// leading dot (that would look like a temporary), no "..".
fn check_key(key: &PodKey) -> Result<(), StoreError> {
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

fn check_manifest_bytes(key: &PodKey, manifest: &[u8], target: &Path) -> Result<(), StoreError> {
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
fn check_ours(path: &Path, key: &PodKey, doing: &'static str) -> Result<(), StoreError> {
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
fn read_capped(path: &Path) -> io::Result<Vec<u8>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_READ_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_READ_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_READ_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

/// Checkpoints and unreadable files found in one manifest directory.
#[derive(Default)]
struct ManifestDir {
    checkpoints: Vec<(PodKey, PathBuf)>,
    unreadable: Vec<(PathBuf, String)>,
}

/// Reads every candidate manifest (regular, `*.json`, not dot-prefixed) of a directory. A missing
/// directory is empty; a file that cannot be read or parsed is reported, not fatal.
fn read_manifest_dir(dir: &Path) -> Result<ManifestDir, StoreError> {
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
        let bytes = match read_capped(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                out.unreadable.push((path, format!("cannot read: {e}")));
                continue;
            }
        };
        match identify(&bytes) {
            Identity::Checkpoint(key) => match check_key(&key) {
                Ok(()) => out.checkpoints.push((key, path)),
                Err(e) => out.unreadable.push((path, e.to_string())),
            },
            Identity::NotCheckpoint => {}
            Identity::Unparsable(why) => out.unreadable.push((path, why)),
        }
    }
    Ok(out)
}

/// Records a found checkpoint file; when two files hold the same key, the canonically named one
/// (`<ns>-<name>.json`) wins and the other is logged, never guessed about.
fn place_checkpoint(slot: &mut Option<PathBuf>, key: &PodKey, path: PathBuf) {
    let canonical = key.manifest_file_name();
    let is_canonical = |p: &Path| p.file_name() == Some(OsStr::new(&canonical));
    match slot {
        None => *slot = Some(path),
        Some(existing) => {
            let (keep, other) = if is_canonical(&path) && !is_canonical(existing) {
                (path, existing.clone())
            } else {
                (existing.clone(), path)
            };
            tracing::warn!(
                namespace = %key.namespace,
                pod = %key.name,
                kept = %keep.display(),
                duplicate = %other.display(),
                "two manifest files hold the same checkpoint"
            );
            *slot = Some(keep);
        }
    }
}

/// Removes every file in `dir` that is a checkpoint of `key`, then syncs `dir`.
fn remove_checkpoints_of(dir: &Path, key: &PodKey, doing: &'static str) -> Result<(), StoreError> {
    let found = read_manifest_dir(dir)?;
    let mut removed = false;
    for (found_key, path) in found.checkpoints {
        if found_key != *key {
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

/// `<root>/<ns>/<pod>` when it exists as a real directory reached without symlinks; the
/// per-pod trees are the agent's own, but a symlinked path must never lead it elsewhere.
fn real_pod_dir(root: &Path, key: &PodKey) -> Result<Option<PathBuf>, StoreError> {
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
fn remove_pod_tree(root: &Path, key: &PodKey) -> Result<bool, StoreError> {
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

/// Deletes everything under `dir` that the plan does not list; returns how many were removed.
fn prune_tree(dir: &Path, plan: &SidePlan<'_>) -> Result<usize, StoreError> {
    let mut removed_here = 0;
    let mut removed_below = 0;
    for entry in fs::read_dir(dir).doing("listing side files in", dir)? {
        let entry = entry.doing("listing side files in", dir)?;
        let path = entry.path();
        let meta = entry.metadata().doing("inspecting", &path)?;
        let file_type = meta.file_type();
        match plan.entries.get(&path) {
            Some(Want::Dir { .. }) if file_type.is_dir() => {
                removed_below += prune_tree(&path, plan)?;
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
fn list_tree(dir: &Path, out: &mut Vec<SideFileInfo>) -> Result<(), StoreError> {
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

/// Whether `spec.path` already is a regular file with exactly these bytes, mode and owner.
/// Only stats and reads: an unchanged checkpoint costs no write.
fn is_identical(spec: &FileSpec<'_>) -> io::Result<bool> {
    let meta = match fs::symlink_metadata(spec.path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let owner_ok = enforced_owner(spec.owner)
        .is_none_or(|owner| meta.uid() == owner.uid && meta.gid() == owner.gid);
    if !meta.file_type().is_file()
        || meta.mode() & 0o7777 != spec.mode
        || meta.len() != spec.data.len() as u64
        || !owner_ok
    {
        return Ok(false);
    }
    let mut existing = Vec::with_capacity(spec.data.len());
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(spec.path)?
        .take(spec.data.len() as u64 + 1)
        .read_to_end(&mut existing)?;
    Ok(existing == spec.data)
}

/// The owner to apply: only root can give files away, so otherwise ownership is left as is
/// (and not compared, or an unprivileged run would rewrite every file forever).
fn enforced_owner(owner: Owner) -> Option<Owner> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    (euid == 0).then_some(owner)
}

/// chown (when root) before chmod: chown may clear mode bits.
fn set_owner_mode(file: &File, mode: u32, owner: Owner) -> io::Result<()> {
    if let Some(owner) = enforced_owner(owner) {
        std::os::unix::fs::fchown(file, Some(owner.uid), Some(owner.gid))?;
    }
    file.set_permissions(Permissions::from_mode(mode))
}

/// Makes `path` a real 0700 directory owned by `owner` (when root), replacing a non-directory
/// found there. Only for paths inside the agent's own trees. Returns whether anything changed.
fn ensure_own_dir(path: &Path, owner: Owner) -> io::Result<bool> {
    let mut changed = false;
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_dir() => {}
        Ok(_) => {
            fs::remove_file(path)?;
            create_dir(path)?;
            changed = true;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            create_dir(path)?;
            changed = true;
        }
        Err(e) => return Err(e),
    }
    // Work on an open descriptor so a swapped-in symlink cannot redirect the chown/chmod.
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)?;
    let meta = dir.metadata()?;
    let owner_ok = enforced_owner(owner)
        .is_none_or(|owner| meta.uid() == owner.uid && meta.gid() == owner.gid);
    if meta.mode() & 0o7777 != PRIVATE_DIR_MODE || !owner_ok {
        set_owner_mode(&dir, PRIVATE_DIR_MODE, owner)?;
        changed = true;
    }
    Ok(changed)
}

/// mkdir 0700 and make the new entry durable in its parent.
fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(PRIVATE_DIR_MODE).create(path)?;
    match path.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Creates a configured base directory (parents 0755) with `mode`; when it exists, fixes its
/// mode only if `enforce_mode` (never for the kubelet's directory, which is not ours). Follows
/// symlinks: an operator may point a flag at a symlinked path.
fn ensure_base_dir(path: &Path, mode: u32, enforce_mode: bool) -> io::Result<()> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            if enforce_mode && meta.mode() & 0o7777 != mode {
                fs::set_permissions(path, Permissions::from_mode(mode))?;
            }
            return Ok(());
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "exists and is not a directory",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(PUBLIC_DIR_MODE)
            .create(parent)?;
    }
    match DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    // The umask may have narrowed the mode at creation.
    fs::set_permissions(path, Permissions::from_mode(mode))
}

/// Removes files named `TMP_PREFIX*` in `dir` (and below, if `recursive`); nothing else.
fn remove_temporaries(dir: &Path, recursive: bool) -> Result<usize, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).doing("listing temporaries in", dir),
    };
    let mut removed_here = 0;
    let mut removed_below = 0;
    for entry in entries {
        let entry = entry.doing("listing temporaries in", dir)?;
        let path = entry.path();
        let file_type = entry.file_type().doing("inspecting", &path)?;
        let is_temp = entry
            .file_name()
            .as_bytes()
            .starts_with(TMP_PREFIX.as_bytes());
        if file_type.is_dir() {
            if recursive {
                removed_below += remove_temporaries(&path, true)?;
            }
        } else if is_temp {
            match fs::remove_file(&path) {
                Ok(()) => {
                    tracing::debug!(path = %path.display(), "removed leftover temporary file");
                    removed_here += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).doing("removing leftover temporary", &path),
            }
        }
    }
    if removed_here > 0 {
        sync_dir(dir).doing("syncing directory", dir)?;
    }
    Ok(removed_here + removed_below)
}

/// `<TMP_PREFIX><name>.<pid>.<n>`, with `name` shortened so the whole stays under NAME_MAX.
fn temp_name(name: &OsStr) -> OsString {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(TMP_PREFIX.len() + bytes.len() + 32);
    out.extend_from_slice(TMP_PREFIX.as_bytes());
    out.extend_from_slice(&bytes[..bytes.len().min(128)]);
    out.extend_from_slice(format!(".{}.{n}", std::process::id()).as_bytes());
    OsString::from_vec(out)
}

fn split_path(path: &Path) -> io::Result<(&Path, &OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => Ok((dir, name)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path has no parent directory or file name",
        )),
    }
}

/// fsync a directory, making creations, renames and removals in it durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// On-disk form of the grace deadlines (PodKey cannot be a JSON object key).
#[derive(Serialize, Deserialize)]
struct DeadlinesFile {
    version: u32,
    deadlines: Vec<DeadlineEntry>,
}

#[derive(Serialize, Deserialize)]
struct DeadlineEntry {
    namespace: String,
    name: String,
    deadline: jiff::Timestamp,
}

#[cfg(test)]
mod tests {
    use super::fault::Fault;
    use super::*;
    use std::collections::BTreeSet;
    use std::os::unix::fs::symlink;
    use tempfile::TempDir;

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
            entry: SideEntry::Dir,
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
    fn write_inactive_sets_modes_and_owners() {
        let (_root, store) = store();
        let k = key("kube-system", "apiserver");
        let outcome = store
            .write_inactive(&k, &manifest(&k, "1"), &side_files(&store, &k, "1"))
            .expect("write");
        assert!(outcome.manifest_changed);
        // 5 listed entries + the implied `sub` dir + ns and pod dirs under each root.
        assert_eq!(outcome.files_changed, 6 + 4);

        let l = store.layout();
        let inactive = l.inactive_manifest_dir.join("kube-system-apiserver.json");
        assert_eq!(fs::read(&inactive).expect("read"), manifest(&k, "1"));
        assert_eq!(mode_of(&inactive), 0o600);

        let sec = l.pod_secret_dir(&k).join("creds");
        assert_eq!(mode_of(&sec.join("token")), 0o600);
        assert_eq!(mode_of(&sec.join("sub/ca.crt")), 0o640);
        assert_eq!(
            mode_of(&l.pod_configmap_dir(&k).join("conf/app.yaml")),
            0o644
        );
        for d in [
            l.secret_dir.join("kube-system"),
            l.pod_secret_dir(&k),
            sec.clone(),
            sec.join("sub"),
            l.pod_configmap_dir(&k).join("conf"),
        ] {
            assert_eq!(mode_of(&d), 0o700, "{}", d.display());
        }
        if is_root() {
            assert_eq!(owner_of(&inactive), ROOT);
            assert_eq!(owner_of(&l.pod_secret_dir(&k)), ROOT);
            assert_eq!(owner_of(&l.secret_dir.join("kube-system")), ROOT);
            for p in [
                &sec,
                &sec.join("sub"),
                &sec.join("token"),
                &sec.join("sub/ca.crt"),
            ] {
                assert_eq!(owner_of(p), POD_OWNER, "{}", p.display());
            }
        }
    }

    #[test]
    fn side_file_modes_drop_special_bits() {
        let (_root, store) = store();
        let k = key("ns", "p");
        let path = store.layout().pod_secret_dir(&k).join("s/k");
        store
            .write_inactive(&k, &manifest(&k, "1"), &[file(path.clone(), "v", 0o4755)])
            .expect("write");
        assert_eq!(mode_of(&path), 0o755);
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
    fn keys_that_disappear_upstream_are_deleted() {
        let (_root, store) = store();
        let k = key("ns", "p");
        let l = store.layout().clone();
        store
            .write_inactive(&k, &manifest(&k, "1"), &side_files(&store, &k, "1"))
            .expect("write");
        // A stray entry the agent did not list is also pruned.
        fs::write(l.pod_secret_dir(&k).join("creds/stray"), "x").expect("stray");

        let sec = l.pod_secret_dir(&k).join("creds");
        let only_token = vec![dir(sec.clone()), file(sec.join("token"), "token-1", 0o600)];
        let outcome = store
            .write_inactive(&k, &manifest(&k, "1"), &only_token)
            .expect("write");
        // `sub` (with ca.crt), `stray`, and the whole configmap pod tree.
        assert_eq!(outcome.files_changed, 3);
        assert!(!outcome.manifest_changed);
        assert_eq!(
            tree(&l.pod_secret_dir(&k)),
            BTreeSet::from([sec.clone(), sec.join("token")])
        );
        assert!(!l.configmap_dir.join("ns").exists(), "empty <ns> goes too");

        let outcome = store
            .write_inactive(&k, &manifest(&k, "1"), &[])
            .expect("write");
        assert_eq!(outcome.files_changed, 1);
        assert!(!l.secret_dir.join("ns").exists());
        assert!(store.inactive_path(&k).exists());
    }

    #[test]
    fn a_key_turning_into_a_directory_and_back_is_handled() {
        let (_root, store) = store();
        let k = key("ns", "p");
        let base = store.layout().pod_secret_dir(&k).join("s");
        let as_file = vec![file(base.join("a"), "1", 0o600)];
        let as_dir = vec![file(base.join("a/b"), "2", 0o600)];
        let m = manifest(&k, "1");
        store.write_inactive(&k, &m, &as_file).expect("file");
        store.write_inactive(&k, &m, &as_dir).expect("dir");
        assert_eq!(fs::read(base.join("a/b")).expect("read"), b"2");
        store.write_inactive(&k, &m, &as_file).expect("file again");
        assert_eq!(fs::read(base.join("a")).expect("read"), b"1");
    }

    #[test]
    fn scan_reads_keys_from_content_and_ignores_foreign_files() {
        let (_root, store) = store();
        let l = store.layout().clone();
        let k = key("kube-system", "apiserver");
        store
            .write_inactive(&k, &manifest(&k, "1"), &[])
            .expect("write");
        store.activate(&k).expect("activate");

        let etcd = l.manifest_dir.join("etcd.json");
        fs::write(&etcd, pod_json("kube-system", "etcd", None, "etcd")).expect("etcd");
        fs::write(l.manifest_dir.join(".apiserver.json.swp"), "garbage").expect("swp");
        fs::write(l.manifest_dir.join("notes.txt"), "garbage").expect("txt");
        let garbage = l.manifest_dir.join("broken.json");
        fs::write(
            &garbage,
            format!("{{\"metadata\": {{\"name\": 7, \"x\": \"{SECRET_MARKER}"),
        )
        .expect("garbage");
        let wrong_kind = l.manifest_dir.join("wrong.json");
        fs::write(
            &wrong_kind,
            format!(r#"{{"apiVersion":"v1","kind":"{SECRET_MARKER}"}}"#),
        )
        .expect("wrong");
        // Named like nothing in particular, but its content says whose checkpoint it is.
        let oddly_named = l.inactive_manifest_dir.join("whatever.json");
        fs::write(&oddly_named, pod_json("", "x", Some("dns"), "img")).expect("odd");
        // A key that cannot be a path is reported, not used.
        let evil = l.inactive_manifest_dir.join("evil.json");
        fs::write(&evil, pod_json("..", "x", Some("y"), "img")).expect("evil");

        let view = store.scan().expect("scan");
        let mut expected = BTreeMap::new();
        expected.insert(
            k.clone(),
            OnDisk {
                inactive: Some(l.inactive_manifest_dir.join("kube-system-apiserver.json")),
                active: Some(l.manifest_dir.join("kube-system-apiserver.json")),
            },
        );
        expected.insert(
            key("default", "dns"),
            OnDisk {
                inactive: Some(oddly_named.clone()),
                active: None,
            },
        );
        assert_eq!(view.checkpoints, expected);
        let unreadable: Vec<&PathBuf> = view.unreadable.iter().map(|(p, _)| p).collect();
        assert_eq!(unreadable.len(), 3, "{:?}", view.unreadable);
        for path in [&garbage, &wrong_kind, &evil] {
            assert!(unreadable.contains(&path), "{} missing", path.display());
        }
        for (_, why) in &view.unreadable {
            assert!(!why.contains(SECRET_MARKER), "content leaked: {why}");
        }
    }

    #[test]
    fn foreign_files_are_never_touched() {
        let (_root, store) = store();
        let l = store.layout().clone();
        let etcd = l.manifest_dir.join("etcd.json");
        let swp = l.manifest_dir.join(".kube-system-etcd.json.swp");
        // Foreign files exactly where checkpoints of these keys would go.
        let k = key("kube-system", "etcd");
        let squatted = l.manifest_dir.join(k.manifest_file_name());
        fs::write(&etcd, pod_json("kube-system", "etcd", None, "etcd")).expect("etcd");
        fs::write(&swp, "vim swap").expect("swp");
        fs::write(&squatted, pod_json("kube-system", "etcd", None, "etcd")).expect("squat");
        let foreign = [&etcd, &swp, &squatted];
        let before: Vec<_> = foreign
            .iter()
            .map(|p| (stamp(p), fs::read(p).expect("read")))
            .collect();

        store
            .write_inactive(&k, &manifest(&k, "1"), &side_files(&store, &k, "1"))
            .expect("write");
        assert!(matches!(
            store.activate(&k),
            Err(StoreError::NotOurs { .. })
        ));
        store.deactivate(&k).expect("deactivate");
        store.remove(&k).expect("remove");
        store.prepare().expect("prepare");
        store.scan().expect("scan");
        store.describe().expect("describe");

        let after: Vec<_> = foreign
            .iter()
            .map(|p| (stamp(p), fs::read(p).expect("read")))
            .collect();
        assert_eq!(before, after);
    }

    #[test]
    fn name_collisions_are_refused_without_writing() {
        let (_root, store) = store();
        let first = key("a-b", "c");
        let second = key("a", "b-c");
        assert_eq!(first.manifest_file_name(), second.manifest_file_name());
        store
            .write_inactive(&first, &manifest(&first, "1"), &[])
            .expect("first");
        let err = store
            .write_inactive(
                &second,
                &manifest(&second, "1"),
                &side_files(&store, &second, "1"),
            )
            .expect_err("collision");
        assert!(matches!(err, StoreError::NotOurs { .. }), "{err}");
        assert!(err.to_string().contains("a-b/c"), "{err}");
        assert!(!err.to_string().contains(SECRET_MARKER));
        assert_eq!(
            fs::read(store.inactive_path(&first)).expect("read"),
            manifest(&first, "1")
        );
        assert!(
            !store.layout().secret_dir.join("a").exists(),
            "no side file written"
        );

        // The active side too: second's active path holds first's checkpoint.
        store.activate(&first).expect("activate first");
        assert!(store.deactivate(&second).is_ok());
        assert!(
            store.active_path(&first).exists(),
            "deactivate(second) left it"
        );
        store.remove(&second).expect("remove second");
        assert!(
            store.inactive_path(&first).exists(),
            "remove(second) left it"
        );
    }

    #[test]
    fn a_manifest_that_is_not_a_checkpoint_of_its_key_is_refused() {
        let (_root, store) = store();
        let k = key("ns", "p");
        for bytes in [
            pod_json("ns", "p", None, "img"),
            pod_json("other", "p", Some("p"), "img"),
            pod_json("ns", "p", Some("q"), "img"),
            b"not json".to_vec(),
        ] {
            let err = store.write_inactive(&k, &bytes, &[]).expect_err("refused");
            assert!(matches!(err, StoreError::BadManifest { .. }), "{err}");
            assert!(!err.to_string().contains(SECRET_MARKER));
        }
        assert!(tree(&store.layout().inactive_manifest_dir).is_empty());
    }

    #[test]
    fn side_files_outside_the_pod_dirs_are_refused_without_writing() {
        let (_root, store) = store();
        let k = key("ns", "p");
        let l = store.layout().clone();
        let good = file(l.pod_secret_dir(&k).join("s/k"), "v", 0o600);
        let bad_paths = [
            l.pod_secret_dir(&k).join("../q/s/k"),
            l.pod_secret_dir(&k).join("s/../../../../../etc/passwd"),
            l.pod_secret_dir(&key("ns", "q")).join("s/k"),
            l.secret_dir.join("ns/p"),
            PathBuf::from("/etc/passwd"),
            PathBuf::from("s/k"),
            l.pod_configmap_dir(&k).join(format!("{TMP_PREFIX}x")),
        ];
        for bad in bad_paths {
            let files = vec![good.clone(), file(bad.clone(), "v", 0o600)];
            let err = store
                .write_inactive(&k, &manifest(&k, "1"), &files)
                .expect_err("refused");
            assert!(
                matches!(err, StoreError::BadSideFile { .. }),
                "{}: {err}",
                bad.display()
            );
        }
        let dup = vec![good.clone(), good.clone()];
        assert!(store.write_inactive(&k, &manifest(&k, "1"), &dup).is_err());
        let file_as_parent = vec![
            good.clone(),
            file(l.pod_secret_dir(&k).join("s/k/x"), "v", 0o600),
        ];
        assert!(
            store
                .write_inactive(&k, &manifest(&k, "1"), &file_as_parent)
                .is_err()
        );
        assert!(tree(&l.secret_dir).is_empty());
        assert!(tree(&l.inactive_manifest_dir).is_empty());
    }

    #[test]
    fn unusable_keys_are_refused() {
        let (_root, store) = store();
        for k in [
            key("..", "x"),
            key("ns", ""),
            key("ns", "a/b"),
            key(".ns", "x"),
            key("NS", "x"),
        ] {
            let err = store
                .write_inactive(&k, &manifest(&k, "1"), &[])
                .expect_err("bad");
            assert!(matches!(err, StoreError::BadKey { .. }), "{err}");
            assert!(store.remove(&k).is_err());
            assert!(store.deactivate(&k).is_err());
            assert!(store.activate(&k).is_err());
        }
    }

    #[test]
    fn activate_copies_and_deactivate_removes() {
        let (_root, store) = store();
        let k = key("ns", "p");
        assert!(store.activate(&k).is_err(), "nothing to activate yet");
        store.deactivate(&k).expect("missing is fine");
        store
            .write_inactive(&k, &manifest(&k, "1"), &[])
            .expect("write");
        store.activate(&k).expect("activate");
        let active = store.active_path(&k);
        assert_eq!(fs::read(&active).expect("read"), manifest(&k, "1"));
        assert_eq!(mode_of(&active), 0o600);
        let first = stamp(&active);
        store.activate(&k).expect("activate again");
        assert_eq!(stamp(&active), first, "identical activation writes nothing");

        store.deactivate(&k).expect("deactivate");
        assert!(!active.exists());
        assert!(store.inactive_path(&k).exists());
        store.deactivate(&k).expect("twice is fine");
    }

    #[test]
    fn a_symlink_at_the_active_path_is_refused() {
        let (root, store) = store();
        let k = key("ns", "p");
        store
            .write_inactive(&k, &manifest(&k, "1"), &[])
            .expect("write");
        let elsewhere = root.path().join("elsewhere.json");
        fs::write(&elsewhere, manifest(&k, "0")).expect("write");
        symlink(&elsewhere, store.active_path(&k)).expect("symlink");
        assert!(matches!(
            store.activate(&k),
            Err(StoreError::NotOurs { .. })
        ));
        assert_eq!(fs::read(&elsewhere).expect("read"), manifest(&k, "0"));
    }

    #[test]
    fn remove_deletes_manifest_then_side_trees_and_empty_namespaces() {
        let (_root, store) = store();
        let l = store.layout().clone();
        let k = key("ns", "p");
        let neighbour = key("ns", "q");
        for each in [&k, &neighbour] {
            store
                .write_inactive(each, &manifest(each, "1"), &side_files(&store, each, "1"))
                .expect("write");
        }
        store.activate(&k).expect("activate");

        store.remove(&k).expect("remove");
        assert!(!store.inactive_path(&k).exists());
        assert!(!l.pod_secret_dir(&k).exists());
        assert!(!l.pod_configmap_dir(&k).exists());
        assert!(
            store.active_path(&k).exists(),
            "the caller deactivates first"
        );
        assert!(l.pod_secret_dir(&neighbour).exists(), "the neighbour stays");
        assert!(store.inactive_path(&neighbour).exists());

        store.remove(&neighbour).expect("remove");
        assert!(!l.secret_dir.join("ns").exists());
        assert!(!l.configmap_dir.join("ns").exists());
        store.remove(&neighbour).expect("missing is fine");
    }

    #[test]
    fn remove_never_follows_a_symlinked_namespace_dir() {
        let (root, store) = store();
        let l = store.layout().clone();
        let k = key("ns", "p");
        let outside = root.path().join("outside/p");
        fs::create_dir_all(&outside).expect("mkdir");
        fs::write(outside.join("keep"), "x").expect("write");
        symlink(root.path().join("outside"), l.secret_dir.join("ns")).expect("symlink");
        assert!(store.remove(&k).is_err());
        assert!(outside.join("keep").exists());
    }

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
    fn describe_lists_side_files_without_contents() {
        let (_root, store) = store();
        let k = key("ns", "p");
        store
            .write_inactive(&k, &manifest(&k, "1"), &side_files(&store, &k, "1"))
            .expect("write");
        let infos = store.describe().expect("describe");
        assert_eq!(infos.len(), 1);
        let info = &infos[0];
        assert_eq!(info.key, k);
        assert_eq!(info.inactive, Some(store.inactive_path(&k)));
        assert_eq!(info.active, None);
        let token = store.layout().pod_secret_dir(&k).join("creds/token");
        let entry = info
            .side_files
            .iter()
            .find(|f| f.path == token)
            .expect("token listed");
        assert_eq!((entry.kind, entry.mode), (SideKind::File, 0o600));
        assert_eq!(info.side_files.len(), 6);
        let json = serde_json::to_string(&infos).expect("json");
        assert!(json.contains(r#""mode":"0600""#), "{json}");
        assert!(!json.contains("token-1"), "no contents");
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

    fn expected_state(
        store: &Store,
        k: &PodKey,
        version: &str,
    ) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
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
                    let result = store.write_inactive(
                        &k,
                        &manifest(&k, "new"),
                        &side_files(&store, &k, "new"),
                    );
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

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A side tree description: relative path (1-3 components from a tiny alphabet, so
        /// files and directories often collide across rounds) → contents.
        fn side_set() -> impl Strategy<Value = BTreeMap<Vec<String>, String>> {
            let component = prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_owned);
            prop::collection::btree_map(prop::collection::vec(component, 1..4), "[xyz]{0,3}", 0..6)
        }

        /// Drops entries that would be both a file and the parent of another (refused input).
        fn consistent(set: BTreeMap<Vec<String>, String>) -> BTreeMap<Vec<String>, String> {
            let keys: Vec<Vec<String>> = set.keys().cloned().collect();
            set.into_iter()
                .filter(|(path, _)| {
                    !keys
                        .iter()
                        .any(|o| o.len() > path.len() && o.starts_with(path))
                })
                .collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(40))]

            /// After any sequence of writes, the pod's secret tree holds exactly the last set
            /// (plus its parent directories), with the last contents.
            #[test]
            fn the_side_tree_always_matches_the_last_write(rounds in prop::collection::vec(side_set(), 1..5)) {
                let (_root, store) = store();
                let k = key("ns", "p");
                let pod_dir = store.layout().pod_secret_dir(&k);
                for set in rounds {
                    let set = consistent(set);
                    let files: Vec<SideFile> = set
                        .iter()
                        .map(|(rel, data)| file(pod_dir.join(rel.join("/")), data, 0o600))
                        .collect();
                    store.write_inactive(&k, &manifest(&k, "1"), &files).expect("write");

                    let mut expected = BTreeSet::new();
                    for f in &files {
                        for p in f.path.ancestors() {
                            if p == pod_dir { break; }
                            expected.insert(p.to_owned());
                        }
                        prop_assert_eq!(fs::read(&f.path).expect("read"), match &f.entry {
                            SideEntry::File { data, .. } => data.clone(),
                            SideEntry::Dir => unreachable!(),
                        });
                    }
                    prop_assert_eq!(tree(&pod_dir), expected);
                    prop_assert_eq!(pod_dir.exists(), !files.is_empty());
                }
            }
        }
    }
}
