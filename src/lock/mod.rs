//! The instance lock (SPEC §4 "Itself"): the DaemonSet pod and its own static checkpoint both
//! start on a node, and only the one holding this lock may work.
//!
//! The lock is a `flock(2)` on a file (`/var/run/lock/pod-checkpointer.lock` by default). The
//! kernel drops it when the holder's file description closes, so a crashed or SIGKILLed agent
//! never leaves a stale lock behind, and no PID-file guessing is needed.
//!
//! The lock also says who works (issue 12.4): the holder records its [`Identity`] and the admin
//! address it serves on in the file, and only the holder binds the admin port. The copy that
//! stands by proves it is alive through its own heartbeat file next to the lock ([`Standby`]),
//! which is what its exec probe (`pod-checkpointer probe`, see [`probe`]) reads.

pub mod probe;

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    file: File,
    path: PathBuf,
}

impl InstanceLock {
    /// Tries to take the lock without waiting, so the caller decides how to wait (and can log
    /// that it is standing by instead of hanging silently).
    ///
    /// Returns `Ok(Some(lock))` when acquired and `Ok(None)` when another process holds it.
    /// Creates the file 0600 (and its parent directory) when missing. Once acquired, the file
    /// holds a [`Holder`] record (PID and identity; the admin address once it is bound), which
    /// operators and the exec probe read.
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
        let lock = InstanceLock {
            file,
            path: path.to_owned(),
        };
        lock.record(&Holder::me(None))?;
        Ok(Some(lock))
    }

    /// Replaces the holder record; called again once the admin port is bound, so the probe knows
    /// where to ask.
    pub fn record(&self, holder: &Holder) -> io::Result<()> {
        let mut line = serde_json::to_string(holder).map_err(io::Error::other)?;
        line.push('\n');
        self.file.set_len(0)?;
        self.file.write_all_at(line.as_bytes(), 0)
    }

    /// The lock file, for log lines and the `status` output.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Releasing the lock clears the holder record first, so that until the next holder writes its
/// own, no copy's probe takes the record for its own and asks a port nobody serves.
impl Drop for InstanceLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
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

/// Who a copy of the agent is, as both the agent and an exec probe run in its container can
/// work out by themselves: the pod (`POD_NAMESPACE`/`POD_NAME`, from the downward API, which
/// differ between the DaemonSet pod and its static copy) and the PID namespace (a restarted
/// container gets a new one, so a record left by a dead copy never names a live one). Two copies
/// run by hand in one PID namespace must be given different `POD_NAME`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity(String);

impl Identity {
    /// This process's identity.
    pub fn current() -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let pod = format!(
            "{}/{}",
            env("POD_NAMESPACE").unwrap_or_else(|| "-".into()),
            env("POD_NAME").unwrap_or_else(|| "-".into())
        );
        let pidns = std::fs::read_link("/proc/self/ns/pid")
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "pid:[?]".into());
        Self(format!("{pod} {pidns}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A file-name-safe digest (FNV-1a, 64 bits), for the standby heartbeat file's name.
    fn digest(&self) -> String {
        let hash = self.0.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("{hash:016x}")
    }
}

/// What the holder writes into the lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub instance: String,
    /// Where the holder's admin server answers (a loopback address when it is bound to all
    /// addresses); `None` until it is bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
}

impl Holder {
    /// This process as the holder, serving on `admin` once bound.
    pub fn me(admin: Option<String>) -> Self {
        Self {
            pid: std::process::id(),
            instance: Identity::current().0,
            admin,
        }
    }

    /// The record in the lock file at `path`; `None` when there is none or it does not parse
    /// (an older agent's PID line, an empty file).
    pub fn read(path: &Path) -> Option<Holder> {
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(text.trim()).ok()
    }
}

/// The heartbeat of a copy standing by: a small file beside the lock, named after the copy's
/// [`Identity`], rewritten (temp file, rename) at every beat; its age is the proof of life the
/// exec probe checks. The lock directory is a tmpfs on most nodes (`/var/run/lock`), so these
/// files go at reboot; the holder also sweeps ones that have not beaten for an hour.
#[derive(Debug)]
pub struct Standby {
    path: PathBuf,
    record: StandbyRecord,
}

/// The content of a standby heartbeat file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StandbyRecord {
    pub instance: String,
    /// How old the file may grow before the probe calls this copy stuck.
    pub stall_after_ms: u64,
}

/// Standby files not rewritten for this long belong to copies that are gone.
const STANDBY_STALE: Duration = Duration::from_secs(3600);

impl Standby {
    /// The heartbeat of this process beside the lock at `lock_path`.
    pub fn new(lock_path: &Path, stall_after: Duration) -> Self {
        let me = Identity::current();
        Self {
            path: standby_path(lock_path, &me),
            record: StandbyRecord {
                instance: me.0,
                stall_after_ms: u64::try_from(stall_after.as_millis()).unwrap_or(u64::MAX),
            },
        }
    }

    /// One beat: the file is replaced whole, so a probe never reads half of it.
    pub fn beat(&self) -> io::Result<()> {
        create_parent_dir(&self.path)?;
        let tmp = self.path.with_extension("tmp");
        let text = serde_json::to_string(&self.record).map_err(io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Removes the file: this copy is no longer standing by (it holds the lock, or stops).
    pub fn clear(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `<lock file>.standby-<identity digest>`.
fn standby_path(lock_path: &Path, who: &Identity) -> PathBuf {
    let mut name = lock_path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".standby-{}", who.digest()));
    lock_path.with_file_name(name)
}

/// Removes standby files of copies that have not beaten for [`STANDBY_STALE`]: done by the
/// holder, best effort.
pub fn sweep_stale_standby(lock_path: &Path) {
    let (Some(dir), Some(name)) = (lock_path.parent(), lock_path.file_name()) else {
        return;
    };
    let prefix = format!("{}.standby-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STANDBY_STALE);
        if stale && entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests;
