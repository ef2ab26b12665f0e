//! Durable file and directory primitives. Every file is replaced through a temporary in the same
//! directory (fsync, rename, fsync of the directory), so a crash leaves the old or the new
//! version, never a torn one; leftover temporaries are recognised by [`TMP_PREFIX`] and swept.

use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::{IoContext, Step, StoreError, at_step};
use super::{MANIFEST_MODE, PRIVATE_DIR_MODE, PUBLIC_DIR_MODE, ROOT, Store, TMP_PREFIX};
use crate::model::Owner;

/// Makes temporary names unique within the process; the PID makes them unique across processes.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The desired state of one file.
pub(super) struct FileSpec<'a> {
    pub path: &'a Path,
    pub data: &'a [u8],
    pub mode: u32,
    pub owner: Owner,
}

impl<'a> FileSpec<'a> {
    /// Manifests and agent state: root-owned, 0600.
    pub(super) fn manifest(path: &'a Path, data: &'a [u8]) -> Self {
        Self {
            path,
            data,
            mode: MANIFEST_MODE,
            owner: ROOT,
        }
    }
}

impl Store {
    /// Makes `spec.path` hold exactly the spec, atomically; `Ok(false)` when it already did.
    pub(super) fn put_file(&self, spec: &FileSpec<'_>) -> io::Result<bool> {
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
    pub(super) fn fault(&self, step: Step) -> io::Result<()> {
        self.faults.hit(step)
    }

    #[cfg(not(test))]
    #[inline(always)]
    pub(super) fn fault(&self, _step: Step) -> io::Result<()> {
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
pub(super) fn enforced_owner(owner: Owner) -> Option<Owner> {
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

/// Makes `path` a real directory with `mode` owned by `owner` (when root), replacing a
/// non-directory found there. Only for paths inside the agent's own trees. Returns whether
/// anything changed.
pub(super) fn ensure_own_dir(path: &Path, mode: u32, owner: Owner) -> io::Result<bool> {
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
    // A new directory inherits setgid from a setgid parent: the comparison catches that too.
    if meta.mode() & 0o7777 != mode || !owner_ok {
        set_dir_owner_mode(&dir, mode, owner)?;
        changed = true;
    }
    Ok(changed)
}

/// For directories, chmod while the group is still the agent's own, then chown: without
/// CAP_FSETID (the chart drops it) chmod silently drops setgid on a directory of a group the
/// process is not in, while chown keeps a directory's setgid (only files lose it).
fn set_dir_owner_mode(dir: &File, mode: u32, owner: Owner) -> io::Result<()> {
    let Some(owner) = enforced_owner(owner) else {
        return dir.set_permissions(Permissions::from_mode(mode));
    };
    // SAFETY: getegid has no preconditions and cannot fail.
    let own_group = unsafe { libc::getegid() };
    std::os::unix::fs::fchown(dir, Some(owner.uid), Some(own_group))?;
    dir.set_permissions(Permissions::from_mode(mode))?;
    std::os::unix::fs::fchown(dir, None, Some(owner.gid))
}

/// mkdir 0700 (opened up by the caller once owned) and make the new entry durable in its parent.
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
pub(super) fn ensure_base_dir(path: &Path, mode: u32, enforce_mode: bool) -> io::Result<()> {
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
pub(super) fn remove_temporaries(dir: &Path, recursive: bool) -> Result<usize, StoreError> {
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
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
