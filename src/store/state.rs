//! What the agent remembers across restarts besides checkpoints: grace deadlines and yields to
//! successors (so a restart resets neither clock, SPEC §4), and small facts its static copy needs
//! with no API server to ask.

use std::collections::BTreeMap;
use std::io;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::atomic::{FileSpec, ensure_base_dir};
use super::error::{IoContext, StoreError, json_error_summary};
use super::scan::read_capped;
use super::{PRIVATE_DIR_MODE, Store};
use crate::decide::Yield;
use crate::model::PodKey;

/// Where grace deadlines are persisted, inside `Layout::state_dir`.
const DEADLINES_FILE: &str = "deadlines.json";

/// Version of the keyed state files' format, so a future change is detected rather than misread.
const STATE_VERSION: u32 = 1;

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
        let entries: BTreeMap<PodKey, Deadline> = self.load_keyed(&DEADLINES)?;
        Ok(entries.into_iter().map(|(k, d)| (k, d.deadline)).collect())
    }

    /// Persists the grace deadlines atomically (0600) at `state_dir/deadlines.json`.
    pub fn save_deadlines(
        &self,
        deadlines: &BTreeMap<PodKey, jiff::Timestamp>,
    ) -> Result<(), StoreError> {
        let entries = deadlines
            .iter()
            .map(|(k, &deadline)| (k, Deadline { deadline }));
        self.save_keyed(&DEADLINES, entries)
    }

    /// Loads the persisted yields to successors (SPEC §4 "Fallback"), so an agent restarted while
    /// a successor has its chance does not give it a fresh fallback timeout. A missing file means
    /// none; a corrupt one is an error.
    pub fn load_yields(&self) -> Result<BTreeMap<PodKey, Yield>, StoreError> {
        let entries: BTreeMap<PodKey, YieldEntry> = self.load_keyed(&YIELDS)?;
        Ok(entries.into_iter().map(|(k, y)| (k, y.into())).collect())
    }

    /// Persists the yields atomically (0600) at `state_dir/yields.json`.
    pub fn save_yields(&self, yields: &BTreeMap<PodKey, Yield>) -> Result<(), StoreError> {
        self.save_keyed(
            &YIELDS,
            yields.iter().map(|(k, y)| (k, YieldEntry::from(y))),
        )
    }

    fn load_keyed<T: DeserializeOwned>(
        &self,
        kind: &KeyedFile,
    ) -> Result<BTreeMap<PodKey, T>, StoreError> {
        let path = self.layout.state_dir.join(kind.file_name);
        let bytes = match read_capped(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(e).doing(kind.reading, &path),
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            what: kind.what,
            path: path.clone(),
            reason,
        };
        let file: Versioned =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(json_error_summary(&e)))?;
        if file.version != STATE_VERSION {
            return Err(corrupt(format!("unsupported version {}", file.version)));
        }
        let list = file.rest.get(kind.list).cloned().unwrap_or_default();
        let entries: Vec<Entry<T>> =
            serde_json::from_value(list).map_err(|e| corrupt(json_error_summary(&e)))?;
        Ok(entries
            .into_iter()
            .map(|e| (PodKey::new(e.namespace, e.name), e.value))
            .collect())
    }

    fn save_keyed<'a, T: Serialize>(
        &self,
        kind: &KeyedFile,
        entries: impl Iterator<Item = (&'a PodKey, T)>,
    ) -> Result<(), StoreError> {
        let path = self.layout.state_dir.join(kind.file_name);
        let entries: Vec<Entry<T>> = entries
            .map(|(key, value)| Entry {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                value,
            })
            .collect();
        let file = serde_json::json!({ "version": STATE_VERSION, kind.list: entries });
        let mut bytes = serde_json::to_vec_pretty(&file).map_err(|e| StoreError::Corrupt {
            what: kind.what,
            path: path.clone(),
            reason: json_error_summary(&e),
        })?;
        bytes.push(b'\n');
        ensure_base_dir(&self.layout.state_dir, PRIVATE_DIR_MODE, true)
            .doing("creating state directory", &self.layout.state_dir)?;
        self.put_file(&FileSpec::manifest(&path, &bytes))
            .doing(kind.writing, &path)?;
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

    #[cfg(test)]
    pub(super) fn deadlines_path(&self) -> std::path::PathBuf {
        self.layout.state_dir.join(DEADLINES_FILE)
    }
}

/// Which keyed state file, and how its errors read.
struct KeyedFile {
    file_name: &'static str,
    /// The name of the list inside the file.
    list: &'static str,
    what: &'static str,
    reading: &'static str,
    writing: &'static str,
}

const DEADLINES: KeyedFile = KeyedFile {
    file_name: DEADLINES_FILE,
    list: "deadlines",
    what: "grace deadlines",
    reading: "reading grace deadlines",
    writing: "writing grace deadlines",
};

const YIELDS: KeyedFile = KeyedFile {
    file_name: "yields.json",
    list: "yields",
    what: "yields to successors",
    reading: "reading yields to successors",
    writing: "writing yields to successors",
};

/// Any keyed state file: `{"version": 1, "<list>": [{"namespace", "name", ...}]}` (PodKey cannot
/// be a JSON object key).
#[derive(Deserialize)]
struct Versioned {
    version: u32,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct Entry<T> {
    namespace: String,
    name: String,
    #[serde(flatten)]
    value: T,
}

#[derive(Serialize, Deserialize)]
struct Deadline {
    deadline: jiff::Timestamp,
}

/// On-disk form of a [`Yield`], kept apart so the core type carries no file format.
#[derive(Serialize, Deserialize)]
struct YieldEntry {
    successor: String,
    since: jiff::Timestamp,
    ready_seen: bool,
    fell_back: bool,
}

impl From<&Yield> for YieldEntry {
    fn from(y: &Yield) -> Self {
        Self {
            successor: y.successor.clone(),
            since: y.since,
            ready_seen: y.ready_seen,
            fell_back: y.fell_back,
        }
    }
}

impl From<YieldEntry> for Yield {
    fn from(y: YieldEntry) -> Self {
        Self {
            successor: y.successor,
            since: y.since,
            ready_seen: y.ready_seen,
            fell_back: y.fell_back,
        }
    }
}
