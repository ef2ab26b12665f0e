//! The instance lock (SPEC §4 "Itself"): the DaemonSet pod and its own static checkpoint both
//! start on a node, and only the one holding this lock may work.
//!
//! The lock is a `flock(2)` on a file (`/var/run/lock/pod-checkpointer.lock` by default). The
//! kernel drops it when the holder's file description closes, so a crashed or SIGKILLed agent
//! never leaves a stale lock behind, and no PID-file guessing is needed.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of the lock file: only root needs to see it.
const LOCK_FILE_MODE: u32 = 0o600;
/// Mode of a lock directory the agent has to create itself (normally `/var/run/lock` exists).
const LOCK_DIR_MODE: u32 = 0o755;

/// Proof that this process is the one agent allowed to work on this node.
///
/// Held for the life of the process; the kernel releases it if we die. Dropping it releases the
/// lock too. The file itself is deliberately left in place: unlinking a lock file while another
/// process is about to lock it lets two processes hold "the" lock on two different inodes.
#[derive(Debug)]
pub struct InstanceLock {
    /// Keeps the open file description, and with it the `flock`, alive.
    #[expect(
        dead_code,
        reason = "held only for its flock; closing it releases the lock"
    )]
    file: File,
    path: PathBuf,
}

impl InstanceLock {
    /// Tries to take the lock without waiting, so the caller decides how to wait (and can log
    /// that it is standing by instead of hanging silently).
    ///
    /// Returns `Ok(Some(lock))` when acquired and `Ok(None)` when another process holds it.
    /// Creates the file 0600 (and its parent directory) when missing. Once acquired, the file
    /// holds the holder's PID, for operators only; nothing reads it back.
    pub fn try_acquire(path: &Path) -> io::Result<Option<InstanceLock>> {
        create_parent_dir(path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(LOCK_FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        if !try_flock_exclusive(&file)? {
            return Ok(None);
        }
        // Only the holder may touch the content or the mode of the lock file.
        file.set_permissions(Permissions::from_mode(LOCK_FILE_MODE))?;
        record_pid(&file)?;
        Ok(Some(InstanceLock {
            file,
            path: path.to_owned(),
        }))
    }

    /// The lock file, for log lines and the `status` output.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates the directory the lock file lives in, so a fresh node (or a test root) works.
fn create_parent_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => DirBuilder::new()
            .recursive(true)
            .mode(LOCK_DIR_MODE)
            .create(parent),
        _ => Ok(()),
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: `Ok(true)` when taken, `Ok(false)` when someone else holds it.
///
/// flock locks belong to the open file description, so even a second `open()` of the same file
/// in this very process conflicts, which is what keeps two agents apart.
fn try_flock_exclusive(file: &File) -> io::Result<bool> {
    loop {
        // SAFETY: the descriptor is valid for as long as `file` lives; flock reads no memory.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
}

/// Replaces the file's content with our PID, so `cat` on the lock tells who holds it.
fn record_pid(file: &File) -> io::Result<()> {
    file.set_len(0)?;
    file.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)
}

#[cfg(test)]
mod tests;
