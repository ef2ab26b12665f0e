//! Plain domain types shared by the pure core and the shell. Nothing here does I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Marks a pod as a parent: a pod the agent keeps a checkpoint of.
pub const CHECKPOINT_ANNOTATION: &str = "checkpointer.alpha.coreos.com/checkpoint";
/// Marks a manifest as a checkpoint and names its parent; the only files the agent ever touches carry it.
pub const CHECKPOINT_OF_ANNOTATION: &str = "checkpointer.alpha.coreos.com/checkpoint-of";
/// Set by the kubelet on pods it read from a file (static pods); such pods are never parents.
pub const CONFIG_SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
/// Set on the API's mirror of a static pod; mirrors are never parents.
pub const CONFIG_MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// Name prefix of the store's temporary files. Dot-prefixed so the kubelet ignores them in its
/// static-pod directory; the store deletes leftovers with this prefix (and only those) and refuses
/// to place a side file under such a name, so `sanitize` refuses keys and paths that use it.
pub const TMP_PREFIX: &str = ".pod-checkpointer-tmp-";

/// Identifies a parent, and therefore its checkpoint, across the API, the node and the disk.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodKey {
    /// The namespace, which scopes the parent's Secrets and ConfigMaps.
    pub namespace: String,
    /// The parent's name (not the static copy's `<name>-<node>`).
    pub name: String,
}

impl PodKey {
    /// Takes anything string-like so tests and callers need no `to_owned()`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The seed's manifest file name, kept so clusters can switch from the Go checkpointer.
    pub fn manifest_file_name(&self) -> String {
        format!("{}-{}.json", self.namespace, self.name)
    }

    /// The name the kubelet gives the static pod it runs from this checkpoint (`<name>-<node>`).
    pub fn static_pod_key(&self, node_name: &str) -> PodKey {
        PodKey::new(&self.namespace, format!("{}-{}", self.name, node_name))
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Something the agent asked about and either got an answer for or did not. "The runtime did not
/// answer" must never be mistaken for "nothing is running", so it is its own variant, not `false`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation<T> {
    /// The source answered with this.
    Known(T),
    /// The source did not answer; nothing may be concluded.
    Unknown,
}

impl<T> Observation<T> {
    /// The answer, for code that treats "unknown" like "nothing known" on purpose.
    pub fn known(&self) -> Option<&T> {
        match self {
            Observation::Known(t) => Some(t),
            Observation::Unknown => None,
        }
    }
}

/// The uid/gid that own a checkpoint's side files, so non-root containers can read them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    /// The pod's runAsUser, else root.
    pub uid: u32,
    /// The pod's fsGroup, else its runAsGroup, else root.
    pub gid: u32,
}

/// Where checkpoints and their files live on the node (SPEC §2). Every path is a flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The kubelet's static pod directory: a checkpoint here is active.
    pub manifest_dir: PathBuf,
    /// Where every checkpoint lies, active or not.
    pub inactive_manifest_dir: PathBuf,
    /// Root of `<ns>/<pod>/<secret>/<key>` files (and of projected volumes).
    pub secret_dir: PathBuf,
    /// Root of `<ns>/<pod>/<configmap>/<key>` files.
    pub configmap_dir: PathBuf,
    /// Agent state that must survive a restart (grace deadlines).
    pub state_dir: PathBuf,
}

impl Layout {
    /// The seed's default layout, prefixed by `root` (`/` on a real node).
    pub fn under_root(root: &Path) -> Self {
        let at = |p: &str| root.join(p);
        Self {
            manifest_dir: at("etc/kubernetes/manifests"),
            inactive_manifest_dir: at("etc/kubernetes/inactive-manifests"),
            secret_dir: at("etc/kubernetes/checkpoint-secrets"),
            configmap_dir: at("etc/kubernetes/checkpoint-configmaps"),
            state_dir: at("var/lib/pod-checkpointer"),
        }
    }

    /// Per-pod directory under the secret root; everything in it belongs to this checkpoint.
    pub fn pod_secret_dir(&self, key: &PodKey) -> PathBuf {
        self.secret_dir.join(&key.namespace).join(&key.name)
    }

    /// Per-pod directory under the configmap root; everything in it belongs to this checkpoint.
    pub fn pod_configmap_dir(&self, key: &PodKey) -> PathBuf {
        self.configmap_dir.join(&key.namespace).join(&key.name)
    }
}

/// Keys and values of one Secret or ConfigMap, as fetched.
///
/// A ConfigMap's `binaryData` is kept apart from its `data`, because the kubelet reads them
/// differently: a volume projects both, while `env` and `envFrom` only ever read `data`.
///
/// Its `Debug` shows each key and the size of its value, never the value: these are Secrets, and
/// one `?` in a log line must not leak them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KeyData {
    /// What every consumer reads: a Secret's `data` (and `stringData`), a ConfigMap's `data`.
    data: BTreeMap<String, Vec<u8>>,
    /// A ConfigMap's `binaryData`: projected into volumes, invisible to env.
    binary_data: BTreeMap<String, Vec<u8>>,
}

impl KeyData {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` of `data` (a Secret's keys, a ConfigMap's `data`); the later value wins.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) {
        self.data.insert(key.into(), value.into());
    }

    /// Sets `key` of a ConfigMap's `binaryData`; the later value wins.
    pub fn insert_binary(&mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) {
        self.binary_data.insert(key.into(), value.into());
    }

    /// The file a volume shows for `key`. A key in both maps (which the API server refuses) reads
    /// `binaryData`, as the kubelet's volume does when it projects every key.
    pub fn file(&self, key: &str) -> Option<&[u8]> {
        (self.binary_data.get(key))
            .or_else(|| self.data.get(key))
            .map(Vec::as_slice)
    }

    /// Every file a volume shows, in key order (see [`KeyData::file`]).
    pub fn files(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let mut merged: BTreeMap<&str, &[u8]> = BTreeMap::new();
        for (key, value) in self.data.iter().chain(&self.binary_data) {
            merged.insert(key, value);
        }
        merged.into_iter()
    }

    /// The value `env` and `envFrom` read for `key`: `data` only.
    pub fn env_value(&self, key: &str) -> Option<&[u8]> {
        self.data.get(key).map(Vec::as_slice)
    }

    /// Every key `envFrom` reads, in key order: `data` only.
    pub fn env_values(&self) -> impl Iterator<Item = (&str, &[u8])> {
        (self.data.iter()).map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// How many files a volume shows.
    pub fn len(&self) -> usize {
        self.files().count()
    }

    /// Whether the object has no keys.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty() && self.binary_data.is_empty()
    }
}

impl FromIterator<(String, Vec<u8>)> for KeyData {
    /// Keys of `data`; of two entries for one key, the later one wins.
    fn from_iter<I: IntoIterator<Item = (String, Vec<u8>)>>(iter: I) -> Self {
        Self {
            data: iter.into_iter().collect(),
            binary_data: BTreeMap::new(),
        }
    }
}

impl From<BTreeMap<String, Vec<u8>>> for KeyData {
    /// Keys of `data`.
    fn from(data: BTreeMap<String, Vec<u8>>) -> Self {
        Self {
            data,
            binary_data: BTreeMap::new(),
        }
    }
}

impl fmt::Debug for KeyData {
    /// `KeyData { data: {"key": 12 bytes, ...}, binary_data: {...} }`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyData")
            .field("data", &RedactedMap(&self.data))
            .field("binary_data", &RedactedMap(&self.binary_data))
            .finish()
    }
}

/// A map of values shown as their sizes.
struct RedactedMap<'a>(&'a BTreeMap<String, Vec<u8>>);

impl fmt::Debug for RedactedMap<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, Redacted(v))))
            .finish()
    }
}

/// Shows bytes as their size only (`12 bytes`), for `Debug` impls of types that hold Secrets.
#[derive(Clone, Copy)]
pub struct Redacted<'a>(pub &'a [u8]);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0.len())
    }
}

/// Shows permission bits in octal (`0o644`), as they are written in a pod spec's comments.
#[derive(Clone, Copy)]
pub struct Mode(pub u32);

impl fmt::Debug for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#o}", self.0)
    }
}

impl PodKey {
    /// The agent's own parent, from its pod name: the DaemonSet pod is its own parent, and the
    /// static copy the kubelet runs from the checkpoint is named `<parent>-<node>`.
    pub fn own_parent(namespace: &str, pod_name: &str, node_name: &str) -> PodKey {
        let parent = pod_name
            .strip_suffix(node_name)
            .and_then(|p| p.strip_suffix('-'))
            .filter(|p| !p.is_empty())
            .unwrap_or(pod_name);
        PodKey::new(namespace, parent)
    }
}

/// The namespace the API server and the kubelet assume for an object that names none, so a
/// checkpoint's key is read the same way they read it.
pub const DEFAULT_NAMESPACE: &str = "default";
