//! Turns a parent pod into a checkpoint (SPEC §3): a static-pod manifest that references nothing in
//! the API, plus the side files (secrets, configmaps, projected volumes) it mounts from the host.
//!
//! Everything here is pure: no I/O, no clock. The shell fetches what [`references`] lists, hands it
//! over as [`Objects`], and writes what [`sanitize`] returns. Sanitizing a checkpoint again gives the
//! same manifest, so a checkpoint read back from disk can be compared byte for byte.
//!
//! This file holds the public API and the rules every part shares (names, paths, modes). The
//! parts, by duty: [`references`](mod@references) (what to fetch), `volumes` (secret, configMap
//! and projected volumes to hostPath side trees), `env` (env/envFrom to literals) and `downward`
//! (downward-API values and quantity formatting).

mod downward;
mod env;
mod references;
mod volumes;

#[cfg(test)]
mod tests;

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::{
    CHECKPOINT_ANNOTATION, CHECKPOINT_OF_ANNOTATION, CONFIG_MIRROR_ANNOTATION,
    CONFIG_SOURCE_ANNOTATION, DEFAULT_NAMESPACE, KeyData, Layout, Mode, Owner, PodKey, Redacted,
    TMP_PREFIX,
};

pub use references::{References, TokenSpec, references};
use volumes::{Access, Tree, host_path_volume};

/// The kubelet's file mode when a volume sets none.
const DEFAULT_MODE: u32 = 0o644;
/// Longest name accepted as a path component (a DNS subdomain).
const MAX_NAME_LEN: usize = 253;

/// The referenced objects as fetched by the shell. An absent name means "not found", which
/// `optional` sources tolerate and others refuse. `Debug` shows names, keys and sizes only.
#[derive(Clone, Default)]
pub struct Objects {
    /// Secrets by name.
    pub secrets: BTreeMap<String, KeyData>,
    /// ConfigMaps with `data` and `binaryData` merged.
    pub config_maps: BTreeMap<String, KeyData>,
    /// Tokens obtained through the TokenRequest API for the parent pod.
    pub tokens: BTreeMap<TokenSpec, String>,
}

impl fmt::Debug for Objects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tokens = DebugWith(|f: &mut fmt::Formatter<'_>| {
            f.debug_map()
                .entries(
                    (self.tokens.iter()).map(|(spec, token)| (spec, Redacted(token.as_bytes()))),
                )
                .finish()
        });
        f.debug_struct("Objects")
            .field("secrets", &self.secrets)
            .field("config_maps", &self.config_maps)
            .field("tokens", &tokens)
            .finish()
    }
}

/// Whether a side path is a directory or a file, so the store can create it with the right kind.
/// `Debug` shows a file's size and mode, never its content.
#[derive(Clone, PartialEq, Eq)]
pub enum SideEntry {
    /// A directory with these permission bits (the kubelet's, setgid and sticky included: SPEC §2).
    Dir {
        /// Permission bits.
        mode: u32,
    },
    /// A file with its content and permission bits (`mode`/`defaultMode`, else 0644).
    File {
        /// The bytes the kubelet would have projected.
        data: Vec<u8>,
        /// Permission bits.
        mode: u32,
    },
}

impl fmt::Debug for SideEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SideEntry::Dir { mode } => f.debug_struct("Dir").field("mode", &Mode(*mode)).finish(),
            SideEntry::File { data, mode } => f
                .debug_struct("File")
                .field("data", &Redacted(data))
                .field("mode", &Mode(*mode))
                .finish(),
        }
    }
}

/// One directory or file the checkpoint needs on disk. `path` is absolute (under
/// `layout.secret_dir` or `layout.configmap_dir`); `owner` lets non-root containers read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SideFile {
    /// Absolute path, strictly below the pod's secret or configmap directory.
    pub path: PathBuf,
    /// What to create there.
    pub entry: SideEntry,
    /// Who owns it: the kubelet's choice for the same volume (root, the pod's `fsGroup` as group,
    /// a token's user), so that exactly the containers that could read it in the parent can.
    pub owner: Owner,
}

/// Something the checkpoint lacks but that does not stop it from being written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Warning {
    /// No token was available for a `serviceAccountToken` source (e.g. rendering offline), so the
    /// projected volume has no token file until the shell obtains one.
    TokenUnavailable {
        /// The projected volume that lacks its token file.
        volume: String,
    },
}

/// A sanitized parent, ready to be written. `Debug` shows the manifest's shape (containers,
/// volumes, size) and the side files' paths, sizes and modes: the manifest holds literal env values
/// taken from Secrets, and the files hold their keys.
#[derive(Clone)]
pub struct Checkpoint {
    /// The parent's key; the checkpoint is stored and found under it.
    pub key: PodKey,
    /// The static-pod manifest: only hostPath volumes and literal env left where the parent had
    /// API references.
    pub manifest: Pod,
    /// Every directory and file the manifest's hostPath volumes need, sorted by path, deduplicated.
    pub files: Vec<SideFile>,
    /// What is missing but not fatal (a token not obtained yet); to be logged.
    pub warnings: Vec<Warning>,
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let spec = self.manifest.spec.as_ref();
        fn names(containers: Option<&Vec<Container>>) -> Vec<&str> {
            (containers.into_iter().flatten())
                .map(|c| c.name.as_str())
                .collect()
        }
        let manifest = DebugWith(|f: &mut fmt::Formatter<'_>| {
            f.debug_struct("Pod")
                .field("containers", &names(spec.map(|s| &s.containers)))
                .field(
                    "init_containers",
                    &names(spec.and_then(|s| s.init_containers.as_ref())),
                )
                .field(
                    "volumes",
                    &(spec.and_then(|s| s.volumes.as_ref()).into_iter().flatten())
                        .map(|v| v.name.as_str())
                        .collect::<Vec<_>>(),
                )
                .field("json", &Redacted(&self.manifest_bytes()))
                .finish_non_exhaustive()
        });
        f.debug_struct("Checkpoint")
            .field("key", &self.key)
            .field("manifest", &manifest)
            .field("files", &self.files)
            .field("warnings", &self.warnings)
            .finish()
    }
}

/// A `Debug` written by a closure, for the redacted impls above.
struct DebugWith<F>(F);

impl<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result> fmt::Debug for DebugWith<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.0)(f)
    }
}

impl Checkpoint {
    /// The exact bytes of the manifest file (pretty JSON + trailing newline). Deterministic, so a
    /// checkpoint is rewritten only when its content really changes.
    pub fn manifest_bytes(&self) -> Vec<u8> {
        // Serializing a Pod cannot fail: every map in it is keyed by strings.
        let mut bytes = serde_json::to_vec_pretty(&self.manifest).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// A digest of the manifest bytes and every side file (path, kind, mode, owner, data), so the
    /// shell can tell whether anything changed. Only comparable within one process.
    pub fn digest(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.manifest_bytes().hash(&mut hasher);
        self.files.len().hash(&mut hasher);
        for file in &self.files {
            file.path.hash(&mut hasher);
            file.owner.hash(&mut hasher);
            match &file.entry {
                SideEntry::Dir { mode } => {
                    0u8.hash(&mut hasher);
                    mode.hash(&mut hasher);
                }
                SideEntry::File { data, mode } => {
                    1u8.hash(&mut hasher);
                    mode.hash(&mut hasher);
                    data.hash(&mut hasher);
                }
            }
        }
        hasher.finish()
    }
}

/// Why a pod cannot be checkpointed. Refusing one pod never affects the others; `reason()` is the
/// metric label, the message names what to fix.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[allow(
    missing_docs,
    reason = "each variant's #[error] message says what its fields are"
)]
pub enum Refusal {
    /// Nothing to run: the pod has no spec.
    #[error("the pod has no spec")]
    NoSpec,
    /// A namespace, pod, volume or object name that is not safe as a path component.
    #[error(
        "invalid {what} {name:?}: a name used in a path must be 1-253 characters of [a-z0-9.-], not \".\" or \"..\", and not start with {TMP_PREFIX:?} (reserved for the agent's temporary files)"
    )]
    InvalidName { what: &'static str, name: String },
    /// A key or item path that could escape its directory.
    #[error(
        "unsafe path {path:?} in {context}: keys and paths must be non-empty, relative, free of NUL, and no component may be or start with \"..\""
    )]
    UnsafePath { context: String, path: String },
    /// A key or item path with a component the store reserves for its temporary files: valid in
    /// Kubernetes, but the store would refuse (and sweep) the file on every pass.
    #[error(
        "key or path {path:?} in {context} has a component starting with {TMP_PREFIX:?}, which the agent reserves for its temporary files; rename the key or set items[].path"
    )]
    ReservedPath { context: String, path: String },
    /// A volume a static pod cannot carry (PVC, ephemeral, clusterTrustBundle, podCertificate).
    #[error("volume {volume:?} is {kind}, which a static pod cannot carry")]
    UnsupportedVolume { volume: String, kind: String },
    /// A downward-API item whose value cannot be computed without the node (or is unknown).
    #[error("{field} in volume {volume:?} cannot be resolved for a checkpoint: {why}")]
    UnsupportedField {
        volume: String,
        field: String,
        why: String,
    },
    /// A referenced Secret/ConfigMap that does not exist and is not optional.
    #[error("{kind} {namespace}/{name} (needed by {needed_by}) was not found and is not optional")]
    MissingObject {
        kind: &'static str,
        namespace: String,
        name: String,
        needed_by: String,
    },
    /// A key named by `items` or a key reference that the object lacks, and that is not optional.
    #[error(
        "key {key:?} of {kind} {namespace}/{name} (needed by {needed_by}) was not found and is not optional"
    )]
    MissingKey {
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
        needed_by: String,
    },
    /// A referenced Secret value that is not UTF-8, so it cannot be written as a literal env value
    /// (nor can the kubelet pass it on: CRI strings must be UTF-8, so the parent's container cannot
    /// start either).
    #[error(
        "env {env:?} of container {container:?} comes from key {key:?} of {kind} {name:?}, whose value is not UTF-8 and cannot be a literal"
    )]
    BinaryEnv {
        container: String,
        env: String,
        kind: &'static str,
        name: String,
        key: String,
    },
    /// An `env` name the API accepts (printable ASCII but `=`) that the kubelet refuses in a static
    /// pod: it validates static pods with the strict rule, so it would reject the whole checkpoint.
    #[error(
        "env {env:?} of container {container:?} is not a name the kubelet accepts in a static pod: it must match [-._a-zA-Z][-._a-zA-Z0-9]* and not be \".\" or start with \"..\""
    )]
    InvalidEnvName { container: String, env: String },
    /// Two keys or items that need the same path as different things (e.g. `a` and `a/b`).
    #[error("two side entries of the checkpoint claim {path:?} with different kinds or contents")]
    PathConflict { path: PathBuf },
    /// Another parent's checkpoint needs the same file name (see `plan::name_collisions`).
    #[error(
        "the checkpoint file {file:?} is taken by {holder}, whose namespace and name join to the same file name; rename one of the two pods"
    )]
    NameCollision { file: String, holder: String },
}

impl Refusal {
    /// A short, stable snake_case label for the refused-pods metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NoSpec => "invalid_pod",
            Refusal::InvalidName { .. } => "invalid_name",
            Refusal::UnsafePath { .. } => "unsafe_path",
            Refusal::ReservedPath { .. } => "reserved_path",
            Refusal::UnsupportedVolume { .. } => "unsupported_volume",
            Refusal::UnsupportedField { .. } => "unsupported_field",
            Refusal::MissingObject { .. } => "missing_object",
            Refusal::MissingKey { .. } => "missing_key",
            Refusal::BinaryEnv { .. } => "binary_env",
            Refusal::InvalidEnvName { .. } => "invalid_env_name",
            Refusal::PathConflict { .. } => "path_conflict",
            Refusal::NameCollision { .. } => "name_collision",
        }
    }
}

/// Is this pod a parent (SPEC §1)? Only pods that opted in with the annotation exactly `"true"`,
/// and never static pods, mirrors, or checkpoints themselves (that would checkpoint checkpoints).
pub fn is_parent(pod: &Pod) -> bool {
    let Some(annotations) = pod.metadata.annotations.as_ref() else {
        return false;
    };
    annotations.get(CHECKPOINT_ANNOTATION).map(String::as_str) == Some("true")
        && annotations
            .get(CONFIG_SOURCE_ANNOTATION)
            .map(String::as_str)
            != Some("file")
        && !annotations.contains_key(CONFIG_MIRROR_ANNOTATION)
        && !annotations.contains_key(CHECKPOINT_OF_ANNOTATION)
}

/// Reads `checkpoint-of` from a manifest: `Some(parent key)` for a checkpoint, `None` otherwise.
/// The agent only touches files for which this is `Some` (SPEC §2).
pub fn checkpoint_of(pod: &Pod) -> Option<PodKey> {
    let parent = pod
        .metadata
        .annotations
        .as_ref()?
        .get(CHECKPOINT_OF_ANNOTATION)
        .filter(|name| !name.is_empty())?;
    Some(PodKey::new(namespace_of(pod), parent))
}

/// Sanitizes a parent into a checkpoint (SPEC §3): strips what a static pod cannot carry, turns
/// every Secret/ConfigMap/projected reference into local files or literals, and refuses what cannot
/// be made local. `objects` holds what [`references`] asked for.
pub fn sanitize(parent: &Pod, objects: &Objects, layout: &Layout) -> Result<Checkpoint, Refusal> {
    let key = pod_key(parent)?;
    let parent_spec = parent.spec.as_ref().ok_or(Refusal::NoSpec)?;
    let ctx = Ctx {
        parent,
        parent_spec,
        objects,
        layout,
        key: &key,
    };
    let mut tree = Tree::new(Access::of(parent_spec));
    let mut warnings = Vec::new();
    let mut spec = parent_spec.clone();

    let mut converted = BTreeSet::new();
    if let Some(volumes) = spec.volumes.as_mut() {
        for volume in volumes.iter_mut() {
            if let Some(dir) = ctx.convert_volume(volume, &mut tree, &mut warnings)? {
                converted.insert(volume.name.clone());
                *volume = host_path_volume(&volume.name, &dir)?;
            }
        }
    }

    for container in containers_mut(&mut spec) {
        ctx.resolve_env(container)?;
        for mount in container.volume_mounts.iter_mut().flatten() {
            if converted.contains(&mount.name) {
                mount.read_only = Some(true);
            }
        }
        if let Some(resources) = container.resources.as_mut() {
            resources.claims = None;
        }
    }
    strip_spec(&mut spec);

    let manifest = Pod {
        metadata: ObjectMeta {
            name: Some(key.name.clone()),
            namespace: Some(key.namespace.clone()),
            labels: parent.metadata.labels.clone(),
            annotations: Some(BTreeMap::from([(
                CHECKPOINT_OF_ANNOTATION.to_owned(),
                key.name.clone(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    };
    Ok(Checkpoint {
        key,
        manifest,
        files: tree.finish()?,
        warnings,
    })
}

/// Drops every pod-level field that refers to the API, the scheduler or the node assignment.
fn strip_spec(spec: &mut PodSpec) {
    spec.service_account_name = None;
    spec.service_account = None;
    spec.automount_service_account_token = Some(false);
    spec.node_name = None;
    spec.affinity = None;
    spec.node_selector = None;
    spec.image_pull_secrets = None;
    spec.scheduling_gates = None;
    spec.scheduling_group = None;
    spec.resource_claims = None;
    spec.ephemeral_containers = None;
    if let Some(resources) = spec.resources.as_mut() {
        resources.claims = None;
    }
}

/// Containers and init containers (sidecars included); ephemeral containers are not part of it.
fn containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
}

fn containers_mut(spec: &mut PodSpec) -> impl Iterator<Item = &mut Container> {
    spec.containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
}

/// The namespace the kubelet would give the pod: its own, else `default`.
fn namespace_of(pod: &Pod) -> &str {
    pod.metadata
        .namespace
        .as_deref()
        .filter(|ns| !ns.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE)
}

fn pod_key(pod: &Pod) -> Result<PodKey, Refusal> {
    let namespace = namespace_of(pod);
    let name = pod.metadata.name.as_deref().unwrap_or("");
    check_name("namespace", namespace)?;
    check_name("pod name", name)?;
    Ok(PodKey::new(namespace, name))
}

/// Accepts only names that are safe as one path component: `[a-z0-9.-]{1,253}`, not `.`/`..`,
/// and not starting with the store's [`TMP_PREFIX`].
fn check_name(what: &'static str, name: &str) -> Result<(), Refusal> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name.starts_with(TMP_PREFIX)
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(Refusal::InvalidName {
            what,
            name: name.to_owned(),
        })
    }
}

/// Splits a key or item path into components that cannot leave their directory (the kubelet's
/// rule, tightened to every component): relative, no NUL, no component that is or starts with `..`.
/// Empty and `.` components are dropped, as `filepath.Join` would. A component starting with the
/// store's [`TMP_PREFIX`] is refused too: the store would never write it.
fn safe_relative<'p>(path: &'p str, context: &str) -> Result<Vec<&'p str>, Refusal> {
    let unsafe_path = || Refusal::UnsafePath {
        context: context.to_owned(),
        path: path.to_owned(),
    };
    if path.is_empty() || path.starts_with('/') || path.contains('\0') {
        return Err(unsafe_path());
    }
    let components: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if components.is_empty() || components.iter().any(|c| c.starts_with("..")) {
        return Err(unsafe_path());
    }
    if components.iter().any(|c| c.starts_with(TMP_PREFIX)) {
        return Err(Refusal::ReservedPath {
            context: context.to_owned(),
            path: path.to_owned(),
        });
    }
    Ok(components)
}

/// File modes come from the API as i32; only the permission bits matter. An unset mode is the
/// enclosing default.
fn mode_or(mode: Option<i32>, default: u32) -> u32 {
    mode.map_or(default, |mode| (mode as u32) & 0o777)
}

/// Secret or ConfigMap, for lookups and messages.
#[derive(Clone, Copy)]
enum Kind {
    Secret,
    ConfigMap,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::ConfigMap => "configMap",
        }
    }

    fn name_label(self) -> &'static str {
        match self {
            Kind::Secret => "secret name",
            Kind::ConfigMap => "configMap name",
        }
    }
}

/// Everything a sanitization reads.
struct Ctx<'a> {
    parent: &'a Pod,
    parent_spec: &'a PodSpec,
    objects: &'a Objects,
    layout: &'a Layout,
    key: &'a PodKey,
}

impl<'a> Ctx<'a> {
    /// Finds a referenced object: `Ok(None)` when it is missing but optional.
    fn lookup(
        &self,
        kind: Kind,
        name: &str,
        optional: bool,
        needed_by: &str,
    ) -> Result<Option<&'a KeyData>, Refusal> {
        check_name(kind.name_label(), name)?;
        let objects = match kind {
            Kind::Secret => &self.objects.secrets,
            Kind::ConfigMap => &self.objects.config_maps,
        };
        match objects.get(name) {
            Some(data) => Ok(Some(data)),
            None if optional => Ok(None),
            None => Err(Refusal::MissingObject {
                kind: kind.label(),
                namespace: self.key.namespace.clone(),
                name: name.to_owned(),
                needed_by: needed_by.to_owned(),
            }),
        }
    }
}
