//! What a failed store operation says: the action, the path and, for an atomic write, the step,
//! never file contents (manifests and side files hold secrets).

use std::io;
use std::path::{Path, PathBuf};

use crate::model::PodKey;

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
pub(super) trait IoContext<T> {
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
    /// Not part of a write: the point in [`Store::remove`](super::Store::remove) between deleting
    /// the manifest and deleting its side trees, where a crash leaves orphans.
    RemoveSideTrees,
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
            Step::RemoveSideTrees => "removing side trees",
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

pub(super) fn at_step(step: Step) -> impl FnOnce(io::Error) -> io::Error {
    move |source| io::Error::new(source.kind(), StepFailed { step, source })
}

/// Describes a JSON error by category and position only: serde's own messages may quote values
/// from the file, and manifests hold secrets.
pub(super) fn json_error_summary(e: &serde_json::Error) -> String {
    let category = match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Data => "JSON that is not a v1 Pod",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{category} at line {}, column {}", e.line(), e.column())
}
