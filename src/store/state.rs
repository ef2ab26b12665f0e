//! What the agent remembers across restarts besides checkpoints: grace deadlines (so a restart
//! does not reset them, SPEC §4) and small facts its static copy needs with no API server to ask.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::atomic::{FileSpec, ensure_base_dir};
use super::error::{IoContext, StoreError, json_error_summary};
use super::scan::read_capped;
use super::{PRIVATE_DIR_MODE, Store};
use crate::model::PodKey;

/// Where grace deadlines are persisted, inside `Layout::state_dir`.
const DEADLINES_FILE: &str = "deadlines.json";

/// Version of the deadline file's format, so a future change is detected rather than misread.
const DEADLINES_VERSION: u32 = 1;

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

impl Store {
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

    pub(super) fn deadlines_path(&self) -> PathBuf {
        self.layout.state_dir.join(DEADLINES_FILE)
    }
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
