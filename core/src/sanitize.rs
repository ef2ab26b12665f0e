//! Turns a parent pod into a checkpoint (SPEC §3): a static-pod manifest that references nothing in
//! the API, plus the side files (secrets, configmaps, projected volumes) it mounts from the host.
//!
//! Everything here is pure: no I/O, no clock. The shell fetches what [`references`] lists, hands it
//! over as [`Objects`], and writes what [`sanitize`] returns. Sanitizing a checkpoint again gives the
//! same manifest, so a checkpoint read back from disk can be compared byte for byte.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, EnvFromSource, EnvVar, HostPathVolumeSource, KeyToPath, Pod,
    PodSpec, ResourceFieldSelector, ServiceAccountTokenProjection, Volume, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::{
    CHECKPOINT_ANNOTATION, CHECKPOINT_OF_ANNOTATION, CONFIG_MIRROR_ANNOTATION,
    CONFIG_SOURCE_ANNOTATION, KeyData, Layout, Owner, PodKey,
};

/// The kubelet's file mode when a volume sets none.
const DEFAULT_MODE: u32 = 0o644;
/// The TokenRequest expiry the API defaults a `serviceAccountToken` projection to.
const DEFAULT_TOKEN_EXPIRATION_SECONDS: i64 = 3600;
/// Prefix of a volume's own directory; `_` cannot appear in an object name, so it never collides.
const VOLUME_DIR_PREFIX: &str = "_volume-";
/// Longest name accepted as a path component (a DNS subdomain).
const MAX_NAME_LEN: usize = 253;
/// The namespace the kubelet gives a static pod that names none.
const DEFAULT_NAMESPACE: &str = "default";

/// A projected serviceAccountToken source: what to ask the TokenRequest API for.
///
/// Two sources with the same audience and expiry can share one token, hence the `Ord`/`Hash`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenSpec {
    /// The audience the token is bound to; `None` means the API server's own audiences.
    pub audience: Option<String>,
    /// Requested lifetime; 3600 when the source sets none (the API's default).
    pub expiration_seconds: i64,
}

impl TokenSpec {
    /// The token a projection asks for, with the API's default expiry filled in.
    fn of(projection: &ServiceAccountTokenProjection) -> Self {
        Self {
            audience: projection.audience.clone(),
            expiration_seconds: projection
                .expiration_seconds
                .unwrap_or(DEFAULT_TOKEN_EXPIRATION_SECONDS),
        }
    }
}

/// What a pod references in its own namespace; the shell fetches exactly these (and watches them,
/// so a changed Secret or ConfigMap rewrites the checkpoint).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct References {
    /// Secret names, from volumes, projected sources, `secretKeyRef` and `envFrom`.
    pub secrets: BTreeSet<String>,
    /// ConfigMap names, from volumes, projected sources, `configMapKeyRef` and `envFrom`.
    pub config_maps: BTreeSet<String>,
    /// Tokens to request for the parent pod, one per distinct audience/expiry.
    pub tokens: BTreeSet<TokenSpec>,
    /// The service account tokens are requested for (`serviceAccountName`, else the deprecated
    /// `serviceAccount`).
    pub service_account: Option<String>,
}

/// Lists every Secret, ConfigMap and service-account token the pod needs to be sanitized: from
/// `secret`, `configMap` and `projected` volumes and from `env`/`envFrom` of containers and init
/// containers. Ephemeral containers are ignored: they are dropped from checkpoints.
pub fn references(pod: &Pod) -> References {
    let mut refs = References::default();
    let Some(spec) = pod.spec.as_ref() else {
        return refs;
    };
    let add = |set: &mut BTreeSet<String>, name: &str| {
        if !name.is_empty() {
            set.insert(name.to_owned());
        }
    };
    for volume in spec.volumes.iter().flatten() {
        if let Some(s) = &volume.secret {
            add(&mut refs.secrets, s.secret_name.as_deref().unwrap_or(""));
        }
        if let Some(c) = &volume.config_map {
            add(&mut refs.config_maps, &c.name);
        }
        for source in volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
        {
            if let Some(s) = &source.secret {
                add(&mut refs.secrets, &s.name);
            }
            if let Some(c) = &source.config_map {
                add(&mut refs.config_maps, &c.name);
            }
            if let Some(token) = &source.service_account_token {
                refs.tokens.insert(TokenSpec::of(token));
            }
        }
    }
    for container in containers(spec) {
        for from in container
            .env
            .iter()
            .flatten()
            .filter_map(|v| v.value_from.as_ref())
        {
            if let Some(r) = &from.secret_key_ref {
                add(&mut refs.secrets, &r.name);
            }
            if let Some(r) = &from.config_map_key_ref {
                add(&mut refs.config_maps, &r.name);
            }
        }
        for source in container.env_from.iter().flatten() {
            if let Some(r) = &source.secret_ref {
                add(&mut refs.secrets, &r.name);
            }
            if let Some(r) = &source.config_map_ref {
                add(&mut refs.config_maps, &r.name);
            }
        }
    }

    refs.service_account = spec
        .service_account_name
        .as_deref()
        .filter(|n| !n.is_empty())
        .or(spec.service_account.as_deref().filter(|n| !n.is_empty()))
        .map(str::to_owned);
    refs
}

/// The referenced objects as fetched by the shell. An absent name means "not found", which
/// `optional` sources tolerate and others refuse.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    /// Secrets by name.
    pub secrets: BTreeMap<String, KeyData>,
    /// ConfigMaps with `data` and `binaryData` merged.
    pub config_maps: BTreeMap<String, KeyData>,
    /// Tokens obtained through the TokenRequest API for the parent pod.
    pub tokens: BTreeMap<TokenSpec, String>,
}

/// Whether a side path is a directory or a file, so the store can create it with the right kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SideEntry {
    /// A directory (0700 on disk, SPEC §2).
    Dir,
    /// A file with its content and permission bits (`mode`/`defaultMode`, else 0644).
    File { data: Vec<u8>, mode: u32 },
}

/// One directory or file the checkpoint needs on disk. `path` is absolute (under
/// `layout.secret_dir` or `layout.configmap_dir`); `owner` lets non-root containers read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SideFile {
    /// Absolute path, strictly below the pod's secret or configmap directory.
    pub path: PathBuf,
    /// What to create there.
    pub entry: SideEntry,
    /// The pod's runAsUser and fsGroup (else runAsGroup), so its containers can read the file.
    pub owner: Owner,
}

/// Something the checkpoint lacks but that does not stop it from being written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Warning {
    /// No token was available for a `serviceAccountToken` source (e.g. rendering offline), so the
    /// projected volume has no token file until the shell obtains one.
    TokenUnavailable { volume: String },
}

/// A sanitized parent, ready to be written.
#[derive(Clone, Debug)]
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
                SideEntry::Dir => 0u8.hash(&mut hasher),
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
pub enum Refusal {
    /// Nothing to run: the pod has no spec.
    #[error("the pod has no spec")]
    NoSpec,
    /// A namespace, pod, volume or object name that is not safe as a path component.
    #[error(
        "invalid {what} {name:?}: a name used in a path must be 1-253 characters of [a-z0-9.-] and not \".\" or \"..\""
    )]
    InvalidName { what: &'static str, name: String },
    /// A key or item path that could escape its directory.
    #[error(
        "unsafe path {path:?} in {context}: keys and paths must be non-empty, relative, free of NUL, and no component may be or start with \"..\""
    )]
    UnsafePath { context: String, path: String },
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
    /// A referenced value that is not UTF-8, so it cannot be written as a literal env value.
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
    /// Two keys or items that need the same path as different things (e.g. `a` and `a/b`).
    #[error("two side entries of the checkpoint claim {path:?} with different kinds or contents")]
    PathConflict { path: PathBuf },
}

impl Refusal {
    /// A short, stable snake_case label for the refused-pods metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NoSpec => "invalid_pod",
            Refusal::InvalidName { .. } => "invalid_name",
            Refusal::UnsafePath { .. } => "unsafe_path",
            Refusal::UnsupportedVolume { .. } => "unsupported_volume",
            Refusal::UnsupportedField { .. } => "unsupported_field",
            Refusal::MissingObject { .. } => "missing_object",
            Refusal::MissingKey { .. } => "missing_key",
            Refusal::BinaryEnv { .. } => "binary_env",
            Refusal::PathConflict { .. } => "path_conflict",
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
    let mut tree = Tree::new(owner_of(parent_spec));
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

/// Side files belong to the uid the pod runs as and to its fsGroup (else runAsGroup), so that
/// non-root containers can read them. Values outside u32 are treated as unset.
fn owner_of(spec: &PodSpec) -> Owner {
    let context = spec.security_context.as_ref();
    let id = |value: Option<i64>| value.and_then(|v| u32::try_from(v).ok());
    Owner {
        uid: id(context.and_then(|c| c.run_as_user)).unwrap_or(0),
        gid: id(context.and_then(|c| c.fs_group))
            .or_else(|| id(context.and_then(|c| c.run_as_group)))
            .unwrap_or(0),
    }
}

/// Accepts only names that are safe as one path component: `[a-z0-9.-]{1,253}`, not `.`/`..`.
fn check_name(what: &'static str, name: &str) -> Result<(), Refusal> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
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
/// Empty and `.` components are dropped, as `filepath.Join` would.
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
    Ok(components)
}

/// File modes come from the API as i32; only the permission bits matter.
fn mode_bits(mode: i32) -> u32 {
    (mode as u32) & 0o777
}

fn host_path_volume(name: &str, dir: &Path) -> Result<Volume, Refusal> {
    let path = dir.to_str().ok_or_else(|| Refusal::UnsafePath {
        context: format!("the layout (volume {name:?})"),
        path: dir.to_string_lossy().into_owned(),
    })?;
    Ok(Volume {
        name: name.to_owned(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_owned(),
            type_: Some("Directory".to_owned()),
        }),
        ..Volume::default()
    })
}

/// A volume's own directory, for views of an object that differ from the shared `<object>/` one.
fn own_dir(pod_dir: PathBuf, volume: &str) -> Result<PathBuf, Refusal> {
    check_name("volume name", volume)?;
    Ok(pod_dir.join(format!("{VOLUME_DIR_PREFIX}{volume}")))
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

/// Collects side entries, adding intermediate directories for nested paths.
struct Tree {
    owner: Owner,
    entries: Vec<SideFile>,
}

impl Tree {
    fn new(owner: Owner) -> Self {
        Self {
            owner,
            entries: Vec::new(),
        }
    }

    fn dir(&mut self, path: PathBuf) {
        self.entries.push(SideFile {
            path,
            entry: SideEntry::Dir,
            owner: self.owner,
        });
    }

    /// `components` come from [`safe_relative`], so the file stays under `dir`.
    fn file(&mut self, dir: &Path, components: &[&str], data: Vec<u8>, mode: u32) {
        let Some((name, parents)) = components.split_last() else {
            return;
        };
        let mut path = dir.to_path_buf();
        for parent in parents {
            path.push(parent);
            self.dir(path.clone());
        }
        path.push(name);
        self.entries.push(SideFile {
            path,
            entry: SideEntry::File { data, mode },
            owner: self.owner,
        });
    }

    /// Sorted by path, identical entries merged; two different entries at one path are refused.
    fn finish(mut self) -> Result<Vec<SideFile>, Refusal> {
        self.entries.sort_by(|a, b| a.path.cmp(&b.path));
        let mut files: Vec<SideFile> = Vec::with_capacity(self.entries.len());
        for entry in self.entries {
            if let Some(last) = files.last()
                && last.path == entry.path
            {
                if *last == entry {
                    continue;
                }
                return Err(Refusal::PathConflict { path: entry.path });
            }
            files.push(entry);
        }
        Ok(files)
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

    /// Converts a volume that references the API into files under a directory, returning that
    /// directory; `None` for volumes a static pod can carry as they are.
    fn convert_volume(
        &self,
        volume: &Volume,
        tree: &mut Tree,
        warnings: &mut Vec<Warning>,
    ) -> Result<Option<PathBuf>, Refusal> {
        let unsupported = |kind: &str| Refusal::UnsupportedVolume {
            volume: volume.name.clone(),
            kind: kind.to_owned(),
        };
        if volume.persistent_volume_claim.is_some() {
            return Err(unsupported("a persistentVolumeClaim"));
        }
        if volume.ephemeral.is_some() {
            return Err(unsupported(
                "an ephemeral volume (it claims a PersistentVolumeClaim)",
            ));
        }
        let needed_by = format!("volume {:?}", volume.name);
        if let Some(source) = &volume.secret {
            let name = source.secret_name.as_deref().unwrap_or("");
            let view = View {
                kind: Kind::Secret,
                name,
                items: source.items.as_deref(),
                optional: source.optional.unwrap_or(false),
                default_mode: source.default_mode.map(mode_bits).unwrap_or(DEFAULT_MODE),
            };
            let pod_dir = self.layout.pod_secret_dir(self.key);
            return self
                .convert_object_volume(&view, pod_dir, &volume.name, &needed_by, tree)
                .map(Some);
        }
        if let Some(source) = &volume.config_map {
            let view = View {
                kind: Kind::ConfigMap,
                name: &source.name,
                items: source.items.as_deref(),
                optional: source.optional.unwrap_or(false),
                default_mode: source.default_mode.map(mode_bits).unwrap_or(DEFAULT_MODE),
            };
            let pod_dir = self.layout.pod_configmap_dir(self.key);
            return self
                .convert_object_volume(&view, pod_dir, &volume.name, &needed_by, tree)
                .map(Some);
        }
        if let Some(projected) = &volume.projected {
            let default_mode = projected
                .default_mode
                .map(mode_bits)
                .unwrap_or(DEFAULT_MODE);
            let dir = own_dir(self.layout.pod_secret_dir(self.key), &volume.name)?;
            tree.dir(dir.clone());
            for source in projected.sources.iter().flatten() {
                self.project_source(source, &dir, default_mode, &volume.name, tree, warnings)?;
            }
            return Ok(Some(dir));
        }
        Ok(None)
    }

    /// A `secret`/`configMap` volume: the shared `<object>/` directory when it shows every key with
    /// the default mode (the seed's layout), else a directory of its own.
    fn convert_object_volume(
        &self,
        view: &View<'_>,
        pod_dir: PathBuf,
        volume: &str,
        needed_by: &str,
        tree: &mut Tree,
    ) -> Result<PathBuf, Refusal> {
        check_name(view.kind.name_label(), view.name)?;
        let dir = if view.items().is_none() && view.default_mode == DEFAULT_MODE {
            pod_dir.join(view.name)
        } else {
            own_dir(pod_dir, volume)?
        };
        tree.dir(dir.clone());
        self.write_view(view, &dir, volume, needed_by, tree)?;
        Ok(dir)
    }

    /// Writes the files the kubelet would project for one object: every key, or only `items`.
    fn write_view(
        &self,
        view: &View<'_>,
        dir: &Path,
        volume: &str,
        needed_by: &str,
        tree: &mut Tree,
    ) -> Result<(), Refusal> {
        let context = format!("volume {volume:?}");
        // Item paths are checked even when the object is missing: a hostile pod is refused alike.
        let item_paths = view
            .items()
            .map(|items| {
                items
                    .iter()
                    .map(|item| safe_relative(&item.path, &context))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let Some(data) = self.lookup(view.kind, view.name, view.optional, needed_by)? else {
            return Ok(());
        };
        let (Some(items), Some(item_paths)) = (view.items(), item_paths) else {
            for (key, value) in data {
                let components = safe_relative(key, &context)?;
                tree.file(dir, &components, value.clone(), view.default_mode);
            }
            return Ok(());
        };
        for (item, components) in items.iter().zip(item_paths) {
            match data.get(&item.key) {
                Some(value) => {
                    let mode = item.mode.map(mode_bits).unwrap_or(view.default_mode);
                    tree.file(dir, &components, value.clone(), mode);
                }
                None if view.optional => {}
                None => {
                    return Err(Refusal::MissingKey {
                        kind: view.kind.label(),
                        namespace: self.key.namespace.clone(),
                        name: view.name.to_owned(),
                        key: item.key.clone(),
                        needed_by: needed_by.to_owned(),
                    });
                }
            }
        }
        Ok(())
    }

    /// One source of a projected volume, written into the volume's directory.
    fn project_source(
        &self,
        source: &VolumeProjection,
        dir: &Path,
        default_mode: u32,
        volume: &str,
        tree: &mut Tree,
        warnings: &mut Vec<Warning>,
    ) -> Result<(), Refusal> {
        let unsupported = |kind: &str| Refusal::UnsupportedVolume {
            volume: volume.to_owned(),
            kind: format!("a projected volume with a {kind} source"),
        };
        if source.cluster_trust_bundle.is_some() {
            return Err(unsupported("clusterTrustBundle"));
        }
        if source.pod_certificate.is_some() {
            return Err(unsupported("podCertificate"));
        }
        let needed_by = format!("volume {volume:?}");
        if let Some(secret) = &source.secret {
            let view = View {
                kind: Kind::Secret,
                name: &secret.name,
                items: secret.items.as_deref(),
                optional: secret.optional.unwrap_or(false),
                default_mode,
            };
            self.write_view(&view, dir, volume, &needed_by, tree)?;
        }
        if let Some(config_map) = &source.config_map {
            let view = View {
                kind: Kind::ConfigMap,
                name: &config_map.name,
                items: config_map.items.as_deref(),
                optional: config_map.optional.unwrap_or(false),
                default_mode,
            };
            self.write_view(&view, dir, volume, &needed_by, tree)?;
        }
        if let Some(downward) = &source.downward_api {
            for item in downward.items.iter().flatten() {
                let components = safe_relative(&item.path, &needed_by)?;
                let value = self.downward_value(item, volume)?;
                let mode = item.mode.map(mode_bits).unwrap_or(default_mode);
                tree.file(dir, &components, value.into_bytes(), mode);
            }
        }
        if let Some(token) = &source.service_account_token {
            let components = safe_relative(&token.path, &needed_by)?;
            match self.objects.tokens.get(&TokenSpec::of(token)) {
                Some(value) => {
                    tree.file(dir, &components, value.clone().into_bytes(), default_mode)
                }
                None => warnings.push(Warning::TokenUnavailable {
                    volume: volume.to_owned(),
                }),
            }
        }
        Ok(())
    }

    /// The content of a downwardAPI item, computed from the parent as the kubelet would.
    fn downward_value(
        &self,
        item: &DownwardAPIVolumeFile,
        volume: &str,
    ) -> Result<String, Refusal> {
        if let Some(field) = &item.field_ref {
            return field_value(self.parent, &field.field_path).ok_or_else(|| {
                Refusal::UnsupportedField {
                    volume: volume.to_owned(),
                    field: format!("fieldRef {:?}", field.field_path),
                    why: "unknown field path".to_owned(),
                }
            });
        }
        if let Some(selector) = &item.resource_field_ref {
            return self.resource_value(selector, volume);
        }
        Err(Refusal::UnsupportedField {
            volume: volume.to_owned(),
            field: format!("downwardAPI item {:?}", item.path),
            why: "it has neither fieldRef nor resourceFieldRef".to_owned(),
        })
    }

    /// `limits.*`/`requests.*` of a container, scaled by the divisor and rounded up like the
    /// kubelet; the raw quantity when it cannot be parsed exactly.
    fn resource_value(
        &self,
        selector: &ResourceFieldSelector,
        volume: &str,
    ) -> Result<String, Refusal> {
        let unsupported = |why: String| Refusal::UnsupportedField {
            volume: volume.to_owned(),
            field: format!("resourceFieldRef {:?}", selector.resource),
            why,
        };
        let container_name = selector
            .container_name
            .as_deref()
            .ok_or_else(|| unsupported("a volume must name the container".to_owned()))?;
        let container = containers(self.parent_spec)
            .find(|c| c.name == container_name)
            .ok_or_else(|| unsupported(format!("there is no container {container_name:?}")))?;
        let (bucket, resource) = selector
            .resource
            .split_once('.')
            .ok_or_else(|| unsupported("unknown resource".to_owned()))?;
        let known = matches!(resource, "cpu" | "memory" | "ephemeral-storage")
            || resource.starts_with("hugepages-");
        let resources = container.resources.as_ref();
        let list = match bucket {
            "limits" if known => resources.and_then(|r| r.limits.as_ref()),
            "requests" if known => resources.and_then(|r| r.requests.as_ref()),
            _ => return Err(unsupported("unknown resource".to_owned())),
        };
        let divisor = selector.divisor.as_ref().map_or("1", |d| d.0.as_str());
        match list.and_then(|l| l.get(resource)) {
            Some(quantity) => Ok(scaled_quantity(&quantity.0, divisor, resource == "cpu")
                .unwrap_or_else(|| quantity.0.clone())),
            None if bucket == "requests" => Ok("0".to_owned()),
            None => Err(unsupported(format!(
                "container {container_name:?} sets no limit, and the kubelet would use the node's allocatable"
            ))),
        }
    }

    /// Turns `secretKeyRef`/`configMapKeyRef` env and `envFrom` into literal values. `envFrom`
    /// entries come first so that `env` keeps its precedence (the kubelet's last-wins order).
    fn resolve_env(&self, container: &mut Container) -> Result<(), Refusal> {
        let mut expanded: Vec<EnvVar> = Vec::new();
        for source in container.env_from.take().into_iter().flatten() {
            self.expand_env_from(&container.name, &source, &mut expanded)?;
        }
        let own = match container.env.take() {
            None => None,
            Some(env) => {
                let mut resolved = Vec::with_capacity(env.len());
                for var in env {
                    if let Some(var) = self.resolve_env_var(&container.name, var)? {
                        resolved.push(var);
                    }
                }
                Some(resolved)
            }
        };
        container.env = if expanded.is_empty() {
            own
        } else {
            expanded.extend(own.into_iter().flatten());
            Some(expanded)
        };
        Ok(())
    }

    fn expand_env_from(
        &self,
        container: &str,
        source: &EnvFromSource,
        out: &mut Vec<EnvVar>,
    ) -> Result<(), Refusal> {
        let (kind, name, optional) = if let Some(r) = &source.config_map_ref {
            (Kind::ConfigMap, &r.name, r.optional)
        } else if let Some(r) = &source.secret_ref {
            (Kind::Secret, &r.name, r.optional)
        } else {
            return Ok(());
        };
        let needed_by = format!("envFrom of container {container:?}");
        let Some(data) = self.lookup(kind, name, optional.unwrap_or(false), &needed_by)? else {
            return Ok(());
        };
        let prefix = source.prefix.as_deref().unwrap_or("");
        for (key, bytes) in data {
            let env = format!("{prefix}{key}");
            if !valid_env_name(&env) {
                continue;
            }
            let value = literal(bytes).ok_or_else(|| Refusal::BinaryEnv {
                container: container.to_owned(),
                env: env.clone(),
                kind: kind.label(),
                name: name.clone(),
                key: key.clone(),
            })?;
            // A later source overrides an earlier one, as in the kubelet.
            out.retain(|e| e.name != env);
            out.push(literal_env(env, value));
        }
        Ok(())
    }

    /// `Ok(None)` drops the variable (an optional reference that is missing).
    fn resolve_env_var(&self, container: &str, var: EnvVar) -> Result<Option<EnvVar>, Refusal> {
        let Some(from) = &var.value_from else {
            return Ok(Some(var));
        };
        let (kind, name, key, optional) = if let Some(r) = &from.secret_key_ref {
            (Kind::Secret, &r.name, &r.key, r.optional.unwrap_or(false))
        } else if let Some(r) = &from.config_map_key_ref {
            (
                Kind::ConfigMap,
                &r.name,
                &r.key,
                r.optional.unwrap_or(false),
            )
        } else {
            return Ok(Some(var));
        };
        let needed_by = format!("env {:?} of container {container:?}", var.name);
        let Some(data) = self.lookup(kind, name, optional, &needed_by)? else {
            return Ok(None);
        };
        let Some(bytes) = data.get(key) else {
            if optional {
                return Ok(None);
            }
            return Err(Refusal::MissingKey {
                kind: kind.label(),
                namespace: self.key.namespace.clone(),
                name: name.clone(),
                key: key.clone(),
                needed_by,
            });
        };
        let value = literal(bytes).ok_or_else(|| Refusal::BinaryEnv {
            container: container.to_owned(),
            env: var.name.clone(),
            kind: kind.label(),
            name: name.clone(),
            key: key.clone(),
        })?;
        Ok(Some(literal_env(var.name, value)))
    }
}

/// One object's view inside a volume.
struct View<'v> {
    kind: Kind,
    name: &'v str,
    items: Option<&'v [KeyToPath]>,
    optional: bool,
    default_mode: u32,
}

impl View<'_> {
    /// `items`, where an empty list means "every key", as in the kubelet.
    fn items(&self) -> Option<&[KeyToPath]> {
        self.items.filter(|items| !items.is_empty())
    }
}

fn literal_env(name: String, value: String) -> EnvVar {
    EnvVar {
        name,
        value: Some(value),
        value_from: None,
    }
}

/// A fetched value as an env literal. The kubelet expands `$(VAR)` in literal values but not in
/// referenced ones, so `$` is escaped as `$$` to keep the value exactly as it was.
fn literal(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes)
        .ok()
        .map(|value| value.replace('$', "$$"))
}

/// The kubelet skips `envFrom` keys that are not valid env names: printable ASCII other than `=`.
fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'=')
}

/// A downward-API field of the parent, formatted as the kubelet writes it into a volume.
fn field_value(pod: &Pod, field_path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let text = |value: Option<&String>| value.cloned().unwrap_or_default();
    let value = match field_path {
        "metadata.name" => text(meta.name.as_ref()),
        "metadata.namespace" => namespace_of(pod).to_owned(),
        "metadata.uid" => text(meta.uid.as_ref()),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "spec.nodeName" => text(spec.and_then(|s| s.node_name.as_ref())),
        "spec.serviceAccountName" => text(spec.and_then(|s| s.service_account_name.as_ref())),
        "status.hostIP" => text(status.and_then(|s| s.host_ip.as_ref())),
        "status.podIP" => text(status.and_then(|s| s.pod_ip.as_ref())),
        _ => {
            let (path, subscript) = split_subscript(field_path)?;
            let map = match path {
                "metadata.labels" => meta.labels.as_ref(),
                "metadata.annotations" => meta.annotations.as_ref(),
                _ => return None,
            };
            text(map.and_then(|m| m.get(subscript)))
        }
    };
    Some(value)
}

/// `metadata.labels['key']` → (`metadata.labels`, `key`), as Go's `SplitMaybeSubscriptedPath`.
fn split_subscript(field_path: &str) -> Option<(&str, &str)> {
    let (path, subscript) = field_path.strip_suffix("']")?.split_once("['")?;
    (!path.is_empty()).then_some((path, subscript))
}

/// Sorted `key="value"` lines, the value quoted like Go's `%q` (the kubelet's `FormatMap`).
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(key, value)| format!("{key}={}", go_quote(value)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Go's `strconv.Quote` for the characters that occur in labels and annotations: escapes quotes,
/// backslashes and control characters, keeps other characters as they are.
fn go_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `ceil(ceil(q·s) / ceil(d·s))` with s = 1000 for cpu (milli-units) and 1 otherwise, as the
/// kubelet's `convertResource*ToString`. `None` when a quantity cannot be parsed exactly.
fn scaled_quantity(quantity: &str, divisor: &str, cpu: bool) -> Option<String> {
    let scale = if cpu { 1000 } else { 1 };
    let value = ceil_scaled(parse_quantity(quantity)?, scale)?;
    let divisor = ceil_scaled(parse_quantity(divisor)?, scale)?;
    if divisor == 0 {
        return None;
    }
    Some(value.div_ceil(divisor).to_string())
}

/// An exact non-negative quantity `num / den`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ratio {
    num: u128,
    den: u128,
}

fn ceil_scaled(ratio: Ratio, scale: u128) -> Option<u128> {
    Some(ratio.num.checked_mul(scale)?.div_ceil(ratio.den))
}

/// Parses a Kubernetes quantity (`1.5`, `250m`, `64Mi`, `1e3`, `2G`) exactly; negative or
/// overflowing quantities give `None`.
fn parse_quantity(text: &str) -> Option<Ratio> {
    let text = text.trim();
    let text = text.strip_prefix('+').unwrap_or(text);
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let mantissa: u128 = format!("{whole}{fraction}").parse().ok()?;
    let mut exp10 = -i32::try_from(fraction.len()).ok()?;
    let mut exp2 = 0u32;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        other => exp10 = exp10.checked_add(other.strip_prefix(['e', 'E'])?.parse().ok()?)?,
    }
    let num = mantissa
        .checked_mul(2u128.checked_pow(exp2)?)?
        .checked_mul(10u128.checked_pow(exp10.max(0).unsigned_abs())?)?;
    let den = 10u128.checked_pow(exp10.min(0).unsigned_abs())?;
    Some(Ratio { num, den })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use proptest::prelude::*;
    use serde_json::{Value, json};
    use std::path::Component;

    const SEC: &str = "/r/etc/kubernetes/checkpoint-secrets/prod/web";
    const CM: &str = "/r/etc/kubernetes/checkpoint-configmaps/prod/web";

    // ---- fixtures -------------------------------------------------------------------------

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).expect("test pod must deserialize")
    }

    fn spec_of(value: Value) -> PodSpec {
        serde_json::from_value(value).expect("test spec must deserialize")
    }

    /// A parent `prod/web` with the given spec.
    fn parent(spec: Value) -> Pod {
        pod(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web",
                "namespace": "prod",
                "uid": "uid-1",
                "annotations": {"checkpointer.alpha.coreos.com/checkpoint": "true"},
            },
            "spec": spec,
        }))
    }

    /// A parent whose only container mounts the given volumes.
    fn with_volumes(volumes: Value) -> Pod {
        parent(json!({"containers": [{"name": "app", "image": "app:1"}], "volumes": volumes}))
    }

    /// A parent whose only container has the given `env` and `envFrom`.
    fn with_env(env: Value, env_from: Value) -> Pod {
        parent(
            json!({"containers": [{"name": "app", "image": "app:1", "env": env, "envFrom": env_from}]}),
        )
    }

    fn layout() -> Layout {
        Layout::under_root(Path::new("/r"))
    }

    fn data(pairs: &[(&str, &[u8])]) -> KeyData {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
            .collect()
    }

    fn objects(secrets: &[(&str, KeyData)], config_maps: &[(&str, KeyData)]) -> Objects {
        Objects {
            secrets: secrets
                .iter()
                .map(|(n, d)| ((*n).to_owned(), d.clone()))
                .collect(),
            config_maps: config_maps
                .iter()
                .map(|(n, d)| ((*n).to_owned(), d.clone()))
                .collect(),
            tokens: BTreeMap::new(),
        }
    }

    fn dir(path: &str) -> SideFile {
        SideFile {
            path: PathBuf::from(path),
            entry: SideEntry::Dir,
            owner: Owner::default(),
        }
    }

    fn file(path: &str, data: &[u8], mode: u32) -> SideFile {
        SideFile {
            path: PathBuf::from(path),
            entry: SideEntry::File {
                data: data.to_vec(),
                mode,
            },
            owner: Owner::default(),
        }
    }

    fn ok(parent: &Pod, objects: &Objects) -> Checkpoint {
        sanitize(parent, objects, &layout()).expect("pod must be checkpointable")
    }

    fn spec(checkpoint: &Checkpoint) -> &PodSpec {
        checkpoint
            .manifest
            .spec
            .as_ref()
            .expect("checkpoint has a spec")
    }

    fn volume(checkpoint: &Checkpoint, name: &str) -> Volume {
        spec(checkpoint)
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .cloned()
            .expect("volume exists")
    }

    fn host_path(name: &str, path: &str) -> Volume {
        Volume {
            name: name.to_owned(),
            host_path: Some(HostPathVolumeSource {
                path: path.to_owned(),
                type_: Some("Directory".to_owned()),
            }),
            ..Volume::default()
        }
    }

    fn env(checkpoint: &Checkpoint) -> Value {
        serde_json::to_value(&spec(checkpoint).containers[0].env).expect("env serializes")
    }

    fn kube_api_access() -> Value {
        json!({"name": "kube-api-access-xyz", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]}})
    }

    fn token_spec() -> TokenSpec {
        TokenSpec {
            audience: None,
            expiration_seconds: 3607,
        }
    }

    // ---- metadata and spec ----------------------------------------------------------------

    #[test]
    fn metadata_keeps_only_name_namespace_labels_and_checkpoint_of() {
        let parent = pod(json!({
            "metadata": {
                "name": "web", "namespace": "prod", "uid": "uid-1", "resourceVersion": "42",
                "generation": 3, "generateName": "web-", "finalizers": ["x/y"],
                "creationTimestamp": "2024-01-01T00:00:00Z", "deletionTimestamp": "2024-01-02T00:00:00Z",
                "labels": {"app": "web"},
                "annotations": {"checkpointer.alpha.coreos.com/checkpoint": "true", "other": "x"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "web", "uid": "ds-1"}],
                "managedFields": [{"manager": "kubectl", "operation": "Update"}],
            },
            "spec": {"containers": [{"name": "app", "image": "app:1"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1"},
        }));
        let checkpoint = ok(&parent, &Objects::default());
        assert_eq!(checkpoint.key, PodKey::new("prod", "web"));
        assert_eq!(
            checkpoint.manifest.metadata,
            ObjectMeta {
                name: Some("web".into()),
                namespace: Some("prod".into()),
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                annotations: Some(BTreeMap::from([(
                    CHECKPOINT_OF_ANNOTATION.into(),
                    "web".into()
                )])),
                ..ObjectMeta::default()
            }
        );
        assert_eq!(checkpoint.manifest.status, None);
        assert_eq!(checkpoint.files, vec![]);
        assert_eq!(checkpoint.warnings, vec![]);
    }

    #[test]
    fn spec_drops_scheduling_identity_and_claims() {
        let parent = parent(json!({
            "serviceAccountName": "web", "serviceAccount": "web", "automountServiceAccountToken": true,
            "nodeName": "node-1", "nodeSelector": {"role": "cp"},
            "affinity": {"nodeAffinity": {}}, "imagePullSecrets": [{"name": "registry"}],
            "schedulingGates": [{"name": "wait"}], "schedulingGroup": {"podGroupName": "g"},
            "resourceClaims": [{"name": "gpu", "resourceClaimName": "gpu-claim"}],
            "ephemeralContainers": [{"name": "debug", "image": "busybox"}],
            "containers": [{"name": "app", "image": "app:1",
                "resources": {"claims": [{"name": "gpu"}], "limits": {"cpu": "1"}}}],
        }));
        let checkpoint = ok(&parent, &Objects::default());
        assert_eq!(
            *spec(&checkpoint),
            spec_of(json!({
                "automountServiceAccountToken": false,
                "containers": [{"name": "app", "image": "app:1", "resources": {"limits": {"cpu": "1"}}}],
            }))
        );
    }

    #[test]
    fn spec_keeps_what_a_static_pod_can_run() {
        let kept = json!({
            "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet",
            "priorityClassName": "system-node-critical", "priority": 2000001000,
            "tolerations": [{"operator": "Exists"}],
            "securityContext": {"runAsNonRoot": true},
            "volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "etc", "hostPath": {"path": "/etc/x"}},
                        {"name": "info", "downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}}],
            "initContainers": [
                {"name": "setup", "image": "setup:1"},
                {"name": "proxy", "image": "proxy:1", "restartPolicy": "Always"},
            ],
            "containers": [{
                "name": "app", "image": "app:1",
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
                "readinessProbe": {"tcpSocket": {"port": 8080}},
                "securityContext": {"readOnlyRootFilesystem": true},
                "env": [
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}},
                    {"name": "PLAIN", "value": "$(NODE)"},
                ],
                "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}],
            }],
        });
        let checkpoint = ok(&parent(kept.clone()), &Objects::default());
        let mut expected = spec_of(kept);
        expected.automount_service_account_token = Some(false);
        assert_eq!(*spec(&checkpoint), expected);
    }

    #[test]
    fn image_pull_secrets_are_dropped() {
        let parent = parent(json!({
            "imagePullSecrets": [{"name": "registry"}],
            "containers": [{"name": "app", "image": "private/app:1"}],
        }));
        assert_eq!(references(&parent).secrets, BTreeSet::new());
        let checkpoint = ok(&parent, &Objects::default());
        assert_eq!(spec(&checkpoint).image_pull_secrets, None);
        assert_eq!(
            spec(&checkpoint).containers[0].image.as_deref(),
            Some("private/app:1")
        );
    }

    // ---- projected volumes ----------------------------------------------------------------

    #[test]
    fn kube_api_access_volume_becomes_three_files() {
        let parent = with_volumes(json!([kube_api_access()]));
        let mut objects = objects(
            &[],
            &[(
                "kube-root-ca.crt",
                data(&[("ca.crt", b"CA"), ("other", b"x")]),
            )],
        );
        objects.tokens.insert(token_spec(), "tok".into());
        let checkpoint = ok(&parent, &objects);
        let dir_path = format!("{SEC}/_volume-kube-api-access-xyz");
        assert_eq!(
            checkpoint.files,
            vec![
                dir(&dir_path),
                file(&format!("{dir_path}/ca.crt"), b"CA", 0o644),
                file(&format!("{dir_path}/namespace"), b"prod", 0o644),
                file(&format!("{dir_path}/token"), b"tok", 0o644),
            ]
        );
        assert_eq!(
            volume(&checkpoint, "kube-api-access-xyz"),
            host_path("kube-api-access-xyz", &dir_path)
        );
        assert_eq!(checkpoint.warnings, vec![]);
    }

    #[test]
    fn missing_token_is_a_warning_not_a_refusal() {
        let parent = with_volumes(json!([kube_api_access()]));
        let objects = objects(&[], &[("kube-root-ca.crt", data(&[("ca.crt", b"CA")]))]);
        let checkpoint = ok(&parent, &objects);
        let dir_path = format!("{SEC}/_volume-kube-api-access-xyz");
        assert_eq!(
            checkpoint.files,
            vec![
                dir(&dir_path),
                file(&format!("{dir_path}/ca.crt"), b"CA", 0o644),
                file(&format!("{dir_path}/namespace"), b"prod", 0o644),
            ]
        );
        assert_eq!(
            checkpoint.warnings,
            vec![Warning::TokenUnavailable {
                volume: "kube-api-access-xyz".into()
            }]
        );
    }

    #[test]
    fn projected_secret_and_configmap_sources_honour_items_and_modes() {
        let parent = with_volumes(
            json!([{"name": "bundle", "projected": {"defaultMode": 0o440, "sources": [
                {"secret": {"name": "tls", "items": [{"key": "tls.key", "path": "keys/tls.key", "mode": 0o400}]}},
                {"configMap": {"name": "settings"}},
                {"secret": {"name": "absent", "optional": true}},
                {"serviceAccountToken": {"audience": "vault", "path": "vault-token"}},
            ]}}]),
        );
        let mut objects = objects(
            &[("tls", data(&[("tls.key", b"KEY"), ("tls.crt", b"CRT")]))],
            &[("settings", data(&[("a.conf", b"A")]))],
        );
        objects.tokens.insert(
            TokenSpec {
                audience: Some("vault".into()),
                expiration_seconds: 3600,
            },
            "vault-tok".into(),
        );
        let checkpoint = ok(&parent, &objects);
        let d = format!("{SEC}/_volume-bundle");
        assert_eq!(
            checkpoint.files,
            vec![
                dir(&d),
                file(&format!("{d}/a.conf"), b"A", 0o440),
                dir(&format!("{d}/keys")),
                file(&format!("{d}/keys/tls.key"), b"KEY", 0o400),
                file(&format!("{d}/vault-token"), b"vault-tok", 0o440),
            ]
        );
    }

    #[test]
    fn downward_api_items_are_computed_from_the_parent() {
        let mut parent = with_volumes(
            json!([{"name": "info", "projected": {"sources": [{"downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "tier", "fieldRef": {"fieldPath": "metadata.labels['tier']"}},
                {"path": "missing", "fieldRef": {"fieldPath": "metadata.annotations['nope']"}},
                {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                {"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}},
                {"path": "node", "fieldRef": {"fieldPath": "spec.nodeName"}},
                {"path": "ip", "fieldRef": {"fieldPath": "status.podIP"}, "mode": 0o600},
            ]}}]}}]),
        );
        parent.metadata.labels = Some(BTreeMap::from([
            ("tier".into(), "front".into()),
            ("app".into(), "say \"hi\"\\\n\u{1}é".into()),
        ]));
        parent.spec.as_mut().expect("spec").node_name = Some("node-1".into());
        parent.status = Some(serde_json::from_value(json!({"podIP": "10.0.0.7"})).expect("status"));
        let checkpoint = ok(&parent, &Objects::default());
        let d = format!("{SEC}/_volume-info");
        assert_eq!(
            checkpoint.files,
            vec![
                dir(&d),
                file(&format!("{d}/ip"), b"10.0.0.7", 0o600),
                file(
                    &format!("{d}/labels"),
                    "app=\"say \\\"hi\\\"\\\\\\n\\x01é\"\ntier=\"front\"".as_bytes(),
                    0o644
                ),
                file(&format!("{d}/missing"), b"", 0o644),
                file(&format!("{d}/name"), b"web", 0o644),
                file(&format!("{d}/node"), b"node-1", 0o644),
                file(&format!("{d}/tier"), b"front", 0o644),
                file(&format!("{d}/uid"), b"uid-1", 0o644),
            ]
        );
    }

    #[test]
    fn resource_field_refs_are_scaled_like_the_kubelet() {
        let item = |path: &str, resource: &str, divisor: Option<&str>| json!({"path": path, "resourceFieldRef": {"containerName": "app", "resource": resource, "divisor": divisor}});
        let parent = parent(json!({
            "containers": [{"name": "app", "image": "app:1",
                "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}, "requests": {"cpu": "0.1"}}}],
            "volumes": [{"name": "res", "projected": {"sources": [{"downwardAPI": {"items": [
                item("cpu", "limits.cpu", None),
                item("cpu-m", "limits.cpu", Some("1m")),
                item("mem-mi", "limits.memory", Some("1Mi")),
                item("mem", "limits.memory", None),
                item("req-cpu-m", "requests.cpu", Some("1m")),
                item("req-mem", "requests.memory", None),
            ]}}]}}],
        }));
        let checkpoint = ok(&parent, &Objects::default());
        let d = format!("{SEC}/_volume-res");
        assert_eq!(
            checkpoint.files,
            vec![
                dir(&d),
                file(&format!("{d}/cpu"), b"1", 0o644),
                file(&format!("{d}/cpu-m"), b"500", 0o644),
                file(&format!("{d}/mem"), b"67108864", 0o644),
                file(&format!("{d}/mem-mi"), b"64", 0o644),
                file(&format!("{d}/req-cpu-m"), b"100", 0o644),
                file(&format!("{d}/req-mem"), b"0", 0o644),
            ]
        );
    }

    #[test]
    fn quantities_parse_exactly() {
        let cases: &[(&str, Option<(u128, u128)>)] = &[
            ("1", Some((1, 1))),
            ("500m", Some((500, 1000))),
            ("0.1", Some((1, 10))),
            ("64Mi", Some((64 << 20, 1))),
            ("1.5Gi", Some((15 << 30, 10))),
            ("2k", Some((2000, 1))),
            ("1e3", Some((1000, 1))),
            ("1E", Some((1_000_000_000_000_000_000, 1))),
            ("+3", Some((3, 1))),
            ("-1", None),
            ("", None),
            ("1Xi", None),
        ];
        for (text, expected) in cases {
            let got = parse_quantity(text).map(|r| (r.num, r.den));
            assert_eq!(got, *expected, "quantity {text:?}");
        }
        assert_eq!(scaled_quantity("64Mi", "0", false), None);
    }

    #[test]
    fn unresolvable_resource_field_refs_are_refused() {
        let spec = |resource: &str, container: &str| {
            parent(json!({
                "containers": [{"name": "app", "image": "app:1"}],
                "volumes": [{"name": "res", "projected": {"sources": [{"downwardAPI": {"items": [
                    {"path": "x", "resourceFieldRef": {"containerName": container, "resource": resource}}]}}]}}],
            }))
        };
        for (resource, container) in [
            ("limits.memory", "app"),
            ("limits.gpu", "app"),
            ("limits.cpu", "nope"),
        ] {
            let refusal = sanitize(&spec(resource, container), &Objects::default(), &layout())
                .expect_err("must be refused");
            assert_eq!(
                refusal.reason(),
                "unsupported_field",
                "{resource} of {container}"
            );
        }
    }

    #[test]
    fn unsupported_projection_sources_are_refused() {
        for source in [
            json!({"clusterTrustBundle": {"signerName": "x/y", "path": "ca.pem"}}),
            json!({"podCertificate": {"signerName": "x/y", "keyType": "ED25519", "credentialBundlePath": "c"}}),
            json!({"downwardAPI": {"items": [{"path": "x", "fieldRef": {"fieldPath": "metadata.generation"}}]}}),
        ] {
            let parent =
                with_volumes(json!([{"name": "p", "projected": {"sources": [source.clone()]}}]));
            let refusal =
                sanitize(&parent, &Objects::default(), &layout()).expect_err("must be refused");
            let expected = if source.get("downwardAPI").is_some() {
                "unsupported_field"
            } else {
                "unsupported_volume"
            };
            assert_eq!(refusal.reason(), expected, "{source}");
            assert!(refusal.to_string().contains("\"p\""), "{refusal}");
        }
    }

    // ---- secret and configMap volumes -----------------------------------------------------

    #[test]
    fn plain_secret_volumes_share_the_object_directory() {
        let parent = with_volumes(json!([
            {"name": "a", "secret": {"secretName": "tls"}},
            {"name": "b", "secret": {"secretName": "tls", "defaultMode": 0o644}},
        ]));
        let objects = objects(
            &[("tls", data(&[("tls.key", b"KEY"), ("tls.crt", b"CRT")]))],
            &[],
        );
        let checkpoint = ok(&parent, &objects);
        let d = format!("{SEC}/tls");
        assert_eq!(
            checkpoint.files,
            vec![
                dir(&d),
                file(&format!("{d}/tls.crt"), b"CRT", 0o644),
                file(&format!("{d}/tls.key"), b"KEY", 0o644)
            ]
        );
        assert_eq!(volume(&checkpoint, "a"), host_path("a", &d));
        assert_eq!(volume(&checkpoint, "b"), host_path("b", &d));
    }

    #[test]
    fn secret_items_and_modes_get_their_own_directory() {
        let parent = with_volumes(
            json!([{"name": "creds", "secret": {"secretName": "db", "defaultMode": 0o400, "items": [
                {"key": "user", "path": "user"},
                {"key": "pass", "path": "nested/pass", "mode": 0o600},
            ]}}]),
        );
        let objects = objects(
            &[(
                "db",
                data(&[("user", b"u"), ("pass", b"p"), ("unused", b"x")]),
            )],
            &[],
        );
        let checkpoint = ok(&parent, &objects);
        let d = format!("{SEC}/_volume-creds");
        assert_eq!(
            checkpoint.files,
            vec![
                dir(&d),
                dir(&format!("{d}/nested")),
                file(&format!("{d}/nested/pass"), b"p", 0o600),
                file(&format!("{d}/user"), b"u", 0o400),
            ]
        );
        assert_eq!(volume(&checkpoint, "creds"), host_path("creds", &d));
    }

    #[test]
    fn secret_with_other_default_mode_gets_its_own_directory() {
        let parent = with_volumes(
            json!([{"name": "keys", "secret": {"secretName": "tls", "defaultMode": 0o1600}}]),
        );
        let objects = objects(&[("tls", data(&[("tls.key", b"KEY")]))], &[]);
        let checkpoint = ok(&parent, &objects);
        let d = format!("{SEC}/_volume-keys");
        assert_eq!(
            checkpoint.files,
            vec![dir(&d), file(&format!("{d}/tls.key"), b"KEY", 0o600)]
        );
    }

    #[test]
    fn optional_missing_secret_yields_an_empty_directory() {
        let parent = with_volumes(
            json!([{"name": "v", "secret": {"secretName": "maybe", "optional": true}}]),
        );
        let checkpoint = ok(&parent, &Objects::default());
        assert_eq!(checkpoint.files, vec![dir(&format!("{SEC}/maybe"))]);
        assert_eq!(
            volume(&checkpoint, "v"),
            host_path("v", &format!("{SEC}/maybe"))
        );
    }

    #[test]
    fn required_missing_secret_is_refused() {
        let parent = with_volumes(json!([{"name": "v", "secret": {"secretName": "gone"}}]));
        let refusal =
            sanitize(&parent, &Objects::default(), &layout()).expect_err("must be refused");
        assert_eq!(
            refusal,
            Refusal::MissingObject {
                kind: "secret",
                namespace: "prod".into(),
                name: "gone".into(),
                needed_by: "volume \"v\"".into(),
            }
        );
        assert_eq!(refusal.reason(), "missing_object");
        assert_eq!(
            refusal.to_string(),
            "secret prod/gone (needed by volume \"v\") was not found and is not optional"
        );
    }

    #[test]
    fn missing_item_key_is_skipped_when_optional_and_refused_otherwise() {
        let volumes = |optional: bool| {
            json!([{"name": "v", "configMap": {"name": "cfg", "optional": optional, "items": [
                {"key": "present", "path": "p"}, {"key": "absent", "path": "a"}]}}])
        };
        let objects = objects(&[], &[("cfg", data(&[("present", b"yes")]))]);
        let checkpoint = ok(&with_volumes(volumes(true)), &objects);
        let d = format!("{CM}/_volume-v");
        assert_eq!(
            checkpoint.files,
            vec![dir(&d), file(&format!("{d}/p"), b"yes", 0o644)]
        );

        let refusal =
            sanitize(&with_volumes(volumes(false)), &objects, &layout()).expect_err("refused");
        assert_eq!(
            refusal,
            Refusal::MissingKey {
                kind: "configMap",
                namespace: "prod".into(),
                name: "cfg".into(),
                key: "absent".into(),
                needed_by: "volume \"v\"".into(),
            }
        );
        assert_eq!(refusal.reason(), "missing_key");
    }

    #[test]
    fn configmap_binary_data_is_written_byte_for_byte() {
        let parent = with_volumes(json!([{"name": "v", "configMap": {"name": "blobs"}}]));
        let blob: &[u8] = &[0, 159, 146, 150, 255];
        let objects = objects(
            &[],
            &[("blobs", data(&[("blob.bin", blob), ("text", b"hi")]))],
        );
        let checkpoint = ok(&parent, &objects);
        let d = format!("{CM}/blobs");
        assert_eq!(
            checkpoint.files,
            vec![
                dir(&d),
                file(&format!("{d}/blob.bin"), blob, 0o644),
                file(&format!("{d}/text"), b"hi", 0o644)
            ]
        );
        assert_eq!(volume(&checkpoint, "v"), host_path("v", &d));
    }

    #[test]
    fn conflicting_paths_are_refused() {
        let parent = with_volumes(json!([{"name": "v", "secret": {"secretName": "s"}}]));
        let objects = objects(&[("s", data(&[("a", b"1"), ("a/b", b"2")]))], &[]);
        let refusal = sanitize(&parent, &objects, &layout()).expect_err("refused");
        assert_eq!(
            refusal,
            Refusal::PathConflict {
                path: PathBuf::from(format!("{SEC}/s/a"))
            }
        );
        assert_eq!(refusal.reason(), "path_conflict");
    }

    #[test]
    fn converted_volume_mounts_become_read_only() {
        let parent = parent(json!({
            "volumes": [{"name": "cfg", "configMap": {"name": "c"}}, {"name": "scratch", "emptyDir": {}}],
            "initContainers": [{"name": "init", "image": "i", "volumeMounts": [{"name": "cfg", "mountPath": "/c"}]}],
            "containers": [{"name": "app", "image": "a", "volumeMounts": [
                {"name": "cfg", "mountPath": "/c", "readOnly": false},
                {"name": "scratch", "mountPath": "/tmp"},
            ]}],
        }));
        let objects = objects(&[], &[("c", KeyData::new())]);
        let checkpoint = ok(&parent, &objects);
        let read_only = |c: &Container| -> Vec<Option<bool>> {
            c.volume_mounts
                .iter()
                .flatten()
                .map(|m| m.read_only)
                .collect()
        };
        let spec = spec(&checkpoint);
        assert_eq!(read_only(&spec.containers[0]), vec![Some(true), None]);
        assert_eq!(
            read_only(&spec.init_containers.as_ref().expect("init")[0]),
            vec![Some(true)]
        );
    }

    #[test]
    fn persistent_volume_claims_and_ephemeral_volumes_are_refused() {
        let cases = [
            (
                json!({"name": "data", "persistentVolumeClaim": {"claimName": "pvc"}}),
                "a persistentVolumeClaim",
            ),
            (
                json!({"name": "data", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}),
                "an ephemeral volume (it claims a PersistentVolumeClaim)",
            ),
        ];
        for (vol, kind) in cases {
            let refusal = sanitize(&with_volumes(json!([vol])), &Objects::default(), &layout())
                .expect_err("refused");
            assert_eq!(
                refusal,
                Refusal::UnsupportedVolume {
                    volume: "data".into(),
                    kind: kind.into()
                }
            );
            assert_eq!(refusal.reason(), "unsupported_volume");
            assert_eq!(
                refusal.to_string(),
                format!("volume \"data\" is {kind}, which a static pod cannot carry")
            );
        }
    }

    #[test]
    fn hostile_names_and_paths_are_refused() {
        let secret = objects(&[("s", data(&[("k", b"v")]))], &[]);
        let hostile_key = |key: &str| objects(&[("s", data(&[(key, b"v")]))], &[]);
        let item = |path: &str| {
            with_volumes(
                json!([{"name": "v", "secret": {"secretName": "s", "items": [{"key": "k", "path": path}]}}]),
            )
        };
        let plain = with_volumes(json!([{"name": "v", "secret": {"secretName": "s"}}]));
        let mut bad_pod_name = plain.clone();
        bad_pod_name.metadata.name = Some("../x".into());
        let mut bad_namespace = plain.clone();
        bad_namespace.metadata.namespace = Some("Prod".into());
        let cases: Vec<(&str, Pod, Objects, &str)> = vec![
            (
                "secret name ../x",
                with_volumes(
                    json!([{"name": "v", "secret": {"secretName": "../x", "optional": true}}]),
                ),
                Objects::default(),
                "invalid_name",
            ),
            (
                "configMap name ..",
                with_volumes(json!([{"name": "v", "configMap": {"name": ".."}}])),
                Objects::default(),
                "invalid_name",
            ),
            (
                "empty secret name",
                with_volumes(json!([{"name": "v", "secret": {}}])),
                Objects::default(),
                "invalid_name",
            ),
            (
                "volume name with /",
                with_volumes(
                    json!([{"name": "a/b", "secret": {"secretName": "s", "items": [{"key": "k", "path": "k"}]}}]),
                ),
                secret.clone(),
                "invalid_name",
            ),
            (
                "pod name ../x",
                bad_pod_name,
                secret.clone(),
                "invalid_name",
            ),
            (
                "upper-case namespace",
                bad_namespace,
                secret.clone(),
                "invalid_name",
            ),
            (
                "env ref name",
                with_env(
                    json!([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "a/b", "key": "k"}}}]),
                    json!(null),
                ),
                Objects::default(),
                "invalid_name",
            ),
            (
                "absolute item path",
                item("/etc/passwd"),
                secret.clone(),
                "unsafe_path",
            ),
            (
                "item path ../x",
                item("../x"),
                secret.clone(),
                "unsafe_path",
            ),
            (
                "item path a/../../b",
                item("a/../../b"),
                secret.clone(),
                "unsafe_path",
            ),
            (
                "item path ..data",
                item("..data"),
                secret.clone(),
                "unsafe_path",
            ),
            (
                "item path a/..b",
                item("a/..b"),
                secret.clone(),
                "unsafe_path",
            ),
            ("empty item path", item(""), secret.clone(), "unsafe_path"),
            ("item path .", item("."), secret.clone(), "unsafe_path"),
            (
                "item path with NUL",
                item("a\0b"),
                secret.clone(),
                "unsafe_path",
            ),
            (
                "key ..data",
                plain.clone(),
                hostile_key("..data"),
                "unsafe_path",
            ),
            (
                "key ../../etc/cron.d/x",
                plain.clone(),
                hostile_key("../../etc/cron.d/x"),
                "unsafe_path",
            ),
            (
                "key /abs",
                plain.clone(),
                hostile_key("/abs"),
                "unsafe_path",
            ),
            (
                "token path ..",
                with_volumes(
                    json!([{"name": "p", "projected": {"sources": [{"serviceAccountToken": {"path": "../t"}}]}}]),
                ),
                Objects::default(),
                "unsafe_path",
            ),
            (
                "downward path /x",
                with_volumes(
                    json!([{"name": "p", "projected": {"sources": [{"downwardAPI": {"items": [{"path": "/x", "fieldRef": {"fieldPath": "metadata.name"}}]}}]}}]),
                ),
                Objects::default(),
                "unsafe_path",
            ),
        ];
        for (what, pod, objects, reason) in cases {
            let refusal = sanitize(&pod, &objects, &layout()).expect_err(what);
            assert_eq!(refusal.reason(), reason, "{what}: {refusal}");
        }
        let refusal = sanitize(&item("../x"), &secret, &layout()).expect_err("refused");
        assert_eq!(
            refusal,
            Refusal::UnsafePath {
                context: "volume \"v\"".into(),
                path: "../x".into()
            }
        );
    }

    #[test]
    fn harmless_path_spellings_are_normalised() {
        let parent = with_volumes(
            json!([{"name": "v", "secret": {"secretName": "s", "items": [
            {"key": "k", "path": "./a//b/"}]}}]),
        );
        let objects = objects(&[("s", data(&[("k", b"v")]))], &[]);
        let checkpoint = ok(&parent, &objects);
        let d = format!("{SEC}/_volume-v");
        assert_eq!(
            checkpoint.files,
            vec![
                dir(&d),
                dir(&format!("{d}/a")),
                file(&format!("{d}/a/b"), b"v", 0o644)
            ]
        );
    }

    // ---- env ------------------------------------------------------------------------------

    #[test]
    fn env_from_and_key_refs_become_literals_with_env_taking_precedence() {
        let parent = with_env(
            json!([
                {"name": "CFG_MODE", "value": "override"},
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LEVEL"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ]),
            json!([
                {"configMapRef": {"name": "settings"}, "prefix": "CFG_"},
                {"secretRef": {"name": "creds"}},
            ]),
        );
        let objects = objects(
            &[(
                "creds",
                data(&[("user", b"admin"), ("password", b"s3cr$(t)")]),
            )],
            &[(
                "settings",
                data(&[
                    ("MODE", b"fast"),
                    ("bad=key", b"x"),
                    ("LEVEL", b"3"),
                    ("", b"e"),
                ]),
            )],
        );
        let checkpoint = ok(&parent, &objects);
        assert_eq!(
            env(&checkpoint),
            json!([
                {"name": "CFG_", "value": "e"},
                {"name": "CFG_LEVEL", "value": "3"},
                {"name": "CFG_MODE", "value": "fast"},
                {"name": "password", "value": "s3cr$$(t)"},
                {"name": "user", "value": "admin"},
                {"name": "CFG_MODE", "value": "override"},
                {"name": "PASSWORD", "value": "s3cr$$(t)"},
                {"name": "LEVEL", "value": "3"},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ])
        );
        assert_eq!(spec(&checkpoint).containers[0].env_from, None);
    }

    #[test]
    fn later_env_from_sources_override_earlier_ones_and_invalid_names_are_skipped() {
        let parent = with_env(
            json!(null),
            json!([{"configMapRef": {"name": "a"}}, {"secretRef": {"name": "b"}}]),
        );
        let objects = objects(
            &[("b", data(&[("X", b"from-b")]))],
            &[(
                "a",
                data(&[("X", b"from-a"), ("Y", b"y"), ("bad\tname", b"z")]),
            )],
        );
        let checkpoint = ok(&parent, &objects);
        assert_eq!(
            env(&checkpoint),
            json!([{"name": "Y", "value": "y"}, {"name": "X", "value": "from-b"}])
        );
    }

    #[test]
    fn optional_missing_env_references_are_dropped() {
        let parent = with_env(
            json!([
                {"name": "A", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k", "optional": true}}},
                {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "gone", "optional": true}}},
                {"name": "C", "value": "c"},
            ]),
            json!([{"secretRef": {"name": "gone", "optional": true}}]),
        );
        let objects = objects(&[], &[("cfg", data(&[("k", b"v")]))]);
        let checkpoint = ok(&parent, &objects);
        assert_eq!(env(&checkpoint), json!([{"name": "C", "value": "c"}]));
    }

    #[test]
    fn required_missing_env_references_are_refused() {
        let objects = objects(&[("s", data(&[("k", b"v")]))], &[]);
        let cases = [
            (
                with_env(
                    json!([{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "nope"}}}]),
                    json!(null),
                ),
                Refusal::MissingKey {
                    kind: "secret",
                    namespace: "prod".into(),
                    name: "s".into(),
                    key: "nope".into(),
                    needed_by: "env \"A\" of container \"app\"".into(),
                },
            ),
            (
                with_env(
                    json!([{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]),
                    json!(null),
                ),
                Refusal::MissingObject {
                    kind: "configMap",
                    namespace: "prod".into(),
                    name: "c".into(),
                    needed_by: "env \"A\" of container \"app\"".into(),
                },
            ),
            (
                with_env(json!(null), json!([{"configMapRef": {"name": "c"}}])),
                Refusal::MissingObject {
                    kind: "configMap",
                    namespace: "prod".into(),
                    name: "c".into(),
                    needed_by: "envFrom of container \"app\"".into(),
                },
            ),
        ];
        for (parent, expected) in cases {
            assert_eq!(
                sanitize(&parent, &objects, &layout()).expect_err("refused"),
                expected
            );
        }
    }

    #[test]
    fn binary_env_values_are_refused() {
        let objects = objects(&[("s", data(&[("k", &[0xff, 0xfe])]))], &[]);
        for parent in [
            with_env(
                json!([{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]),
                json!(null),
            ),
            with_env(json!(null), json!([{"secretRef": {"name": "s"}}])),
        ] {
            let refusal = sanitize(&parent, &objects, &layout()).expect_err("refused");
            assert_eq!(refusal.reason(), "binary_env");
            assert!(
                refusal.to_string().contains("key \"k\" of secret \"s\""),
                "{refusal}"
            );
        }
    }

    // ---- owner ----------------------------------------------------------------------------

    #[test]
    fn side_files_are_owned_by_the_pod_user_and_group() {
        let cases = [
            (json!(null), Owner { uid: 0, gid: 0 }),
            (json!({"runAsUser": 1000}), Owner { uid: 1000, gid: 0 }),
            (
                json!({"runAsUser": 1000, "runAsGroup": 3000}),
                Owner {
                    uid: 1000,
                    gid: 3000,
                },
            ),
            (
                json!({"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000}),
                Owner {
                    uid: 1000,
                    gid: 2000,
                },
            ),
            (json!({"fsGroup": 2000}), Owner { uid: 0, gid: 2000 }),
            (json!({"runAsUser": -1}), Owner { uid: 0, gid: 0 }),
        ];
        for (context, expected) in cases {
            let parent = parent(json!({
                "securityContext": context,
                "containers": [{"name": "app", "image": "a"}],
                "volumes": [{"name": "v", "secret": {"secretName": "s"}}],
            }));
            let checkpoint = ok(&parent, &objects(&[("s", data(&[("k", b"v")]))], &[]));
            let owners: Vec<Owner> = checkpoint.files.iter().map(|f| f.owner).collect();
            assert_eq!(owners, vec![expected, expected], "{context}");
        }
    }

    // ---- classification -------------------------------------------------------------------

    #[test]
    fn is_parent_requires_the_annotation_and_excludes_static_mirror_and_checkpoints() {
        let with = |annotations: Value| {
            pod(json!({"metadata": {"name": "p", "annotations": annotations}}))
        };
        let cases = [
            (
                json!({"checkpointer.alpha.coreos.com/checkpoint": "true"}),
                true,
            ),
            (
                json!({"checkpointer.alpha.coreos.com/checkpoint": "True"}),
                false,
            ),
            (
                json!({"checkpointer.alpha.coreos.com/checkpoint": "false"}),
                false,
            ),
            (json!({}), false),
            (
                json!({"checkpointer.alpha.coreos.com/checkpoint": "true", "kubernetes.io/config.source": "file"}),
                false,
            ),
            (
                json!({"checkpointer.alpha.coreos.com/checkpoint": "true", "kubernetes.io/config.source": "api"}),
                true,
            ),
            (
                json!({"checkpointer.alpha.coreos.com/checkpoint": "true", "kubernetes.io/config.mirror": "abc"}),
                false,
            ),
            (
                json!({"checkpointer.alpha.coreos.com/checkpoint": "true", "checkpointer.alpha.coreos.com/checkpoint-of": "p"}),
                false,
            ),
        ];
        for (annotations, expected) in cases {
            assert_eq!(
                is_parent(&with(annotations.clone())),
                expected,
                "{annotations}"
            );
        }
        assert!(!is_parent(&pod(json!({"metadata": {"name": "p"}}))));
    }

    #[test]
    fn checkpoint_of_reads_the_parent_key() {
        let with = |metadata: Value| pod(json!({"metadata": metadata}));
        let of = "checkpointer.alpha.coreos.com/checkpoint-of";
        assert_eq!(
            checkpoint_of(&with(
                json!({"name": "web", "namespace": "prod", "annotations": {of: "web"}})
            )),
            Some(PodKey::new("prod", "web"))
        );
        assert_eq!(
            checkpoint_of(&with(json!({"name": "web", "annotations": {of: "web"}}))),
            Some(PodKey::new("default", "web"))
        );
        assert_eq!(
            checkpoint_of(&with(json!({"name": "web", "annotations": {of: ""}}))),
            None
        );
        assert_eq!(
            checkpoint_of(&with(json!({"name": "web", "namespace": "prod"}))),
            None
        );
    }

    #[test]
    fn references_list_what_the_shell_must_fetch() {
        let parent = parent(json!({
            "serviceAccountName": "web-sa",
            "imagePullSecrets": [{"name": "registry"}],
            "volumes": [
                {"name": "a", "secret": {"secretName": "vol-secret"}},
                {"name": "b", "configMap": {"name": "vol-cm"}},
                {"name": "c", "projected": {"sources": [
                    {"secret": {"name": "proj-secret"}},
                    {"configMap": {"name": "proj-cm"}},
                    {"serviceAccountToken": {"path": "t"}},
                    {"serviceAccountToken": {"path": "v", "audience": "vault", "expirationSeconds": 600}},
                ]}},
            ],
            "initContainers": [{"name": "init", "image": "i", "envFrom": [{"secretRef": {"name": "init-secret"}}]}],
            "containers": [{"name": "app", "image": "a",
                "env": [
                    {"name": "A", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}},
                    {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "k"}}},
                ],
                "envFrom": [{"configMapRef": {"name": "from-cm"}}]}],
            "ephemeralContainers": [{"name": "debug", "image": "d", "envFrom": [{"secretRef": {"name": "debug-secret"}}]}],
        }));
        let set = |names: &[&str]| {
            names
                .iter()
                .map(|n| (*n).to_owned())
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(
            references(&parent),
            References {
                secrets: set(&["env-secret", "init-secret", "proj-secret", "vol-secret"]),
                config_maps: set(&["env-cm", "from-cm", "proj-cm", "vol-cm"]),
                tokens: BTreeSet::from([
                    TokenSpec {
                        audience: None,
                        expiration_seconds: 3600
                    },
                    TokenSpec {
                        audience: Some("vault".into()),
                        expiration_seconds: 600
                    },
                ]),
                service_account: Some("web-sa".into()),
            }
        );
        assert_eq!(
            references(&pod(json!({"metadata": {"name": "x"}}))),
            References::default()
        );
    }

    // ---- output ---------------------------------------------------------------------------

    /// A parent using every kind of reference at once.
    fn rich_parent() -> (Pod, Objects) {
        let parent = parent(json!({
            "serviceAccountName": "web",
            "nodeName": "node-1",
            "securityContext": {"runAsUser": 1000, "fsGroup": 2000},
            "volumes": [
                {"name": "tls", "secret": {"secretName": "tls"}},
                {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "a", "path": "conf/a"}]}},
                kube_api_access(),
                {"name": "scratch", "emptyDir": {}},
            ],
            "initContainers": [{"name": "init", "image": "i", "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "I_"}],
                "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}],
            "containers": [{"name": "app", "image": "a",
                "env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "tls", "key": "pw"}}}, {"name": "X", "value": "$(PW)"}],
                "volumeMounts": [{"name": "tls", "mountPath": "/tls"}, {"name": "kube-api-access-xyz", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}],
        }));
        let mut objects = objects(
            &[("tls", data(&[("tls.crt", b"CRT"), ("pw", b"p$w")]))],
            &[
                ("cfg", data(&[("a", b"A")])),
                ("kube-root-ca.crt", data(&[("ca.crt", b"CA")])),
            ],
        );
        objects.tokens.insert(token_spec(), "tok".into());
        (parent, objects)
    }

    #[test]
    fn sanitizing_a_checkpoint_again_changes_nothing() {
        let (parent, objects) = rich_parent();
        let first = ok(&parent, &objects);
        let reparsed: Pod =
            serde_json::from_slice(&first.manifest_bytes()).expect("manifest parses");
        assert_eq!(checkpoint_of(&reparsed), Some(PodKey::new("prod", "web")));
        assert!(!is_parent(&reparsed));
        assert_eq!(references(&reparsed), References::default());
        let second = ok(&reparsed, &Objects::default());
        assert_eq!(
            String::from_utf8(second.manifest_bytes()).expect("utf-8"),
            String::from_utf8(first.manifest_bytes()).expect("utf-8")
        );
        assert_eq!(second.key, first.key);
        assert_eq!(second.files, vec![]);
        assert_eq!(second.warnings, vec![]);
        let third = ok(&reparsed, &objects);
        assert_eq!(third.manifest_bytes(), first.manifest_bytes());
    }

    #[test]
    fn manifest_bytes_are_pretty_json_with_a_trailing_newline() {
        let checkpoint = ok(
            &parent(json!({"containers": [{"name": "app", "image": "a"}]})),
            &Objects::default(),
        );
        let text = String::from_utf8(checkpoint.manifest_bytes()).expect("utf-8");
        assert_eq!(
            text,
            "{\n  \"apiVersion\": \"v1\",\n  \"kind\": \"Pod\",\n  \"metadata\": {\n    \"annotations\": {\n      \
             \"checkpointer.alpha.coreos.com/checkpoint-of\": \"web\"\n    },\n    \"name\": \"web\",\n    \
             \"namespace\": \"prod\"\n  },\n  \"spec\": {\n    \"automountServiceAccountToken\": false,\n    \
             \"containers\": [\n      {\n        \"image\": \"a\",\n        \"name\": \"app\"\n      }\n    ]\n  }\n}\n"
        );
    }

    #[test]
    fn digest_tracks_the_manifest_and_every_side_file() {
        let (parent, objects) = rich_parent();
        let base = ok(&parent, &objects);
        assert_eq!(base.digest(), ok(&parent, &objects).digest());
        assert_eq!(
            base.files[0].owner,
            Owner {
                uid: 1000,
                gid: 2000
            }
        );

        let mut changed_data = objects.clone();
        changed_data
            .secrets
            .insert("tls".into(), data(&[("tls.crt", b"NEW"), ("pw", b"p$w")]));
        let mut changed_token = objects.clone();
        changed_token.tokens.insert(token_spec(), "tok2".into());
        let mut changed_owner = base.clone();
        changed_owner.files[0].owner.uid = 1;
        let mut changed_mode = base.clone();
        if let Some(SideEntry::File { mode, .. }) = changed_mode
            .files
            .iter_mut()
            .map(|f| &mut f.entry)
            .find(|e| matches!(e, SideEntry::File { .. }))
        {
            *mode = 0o600;
        }
        let mut changed_labels = parent.clone();
        changed_labels.metadata.labels = Some(BTreeMap::from([("v".into(), "2".into())]));

        for other in [
            ok(&parent, &changed_data).digest(),
            ok(&parent, &changed_token).digest(),
            changed_owner.digest(),
            changed_mode.digest(),
            ok(&changed_labels, &objects).digest(),
        ] {
            assert_ne!(other, base.digest());
        }
    }

    #[test]
    fn refusal_reasons_are_stable_labels() {
        let cases = [
            (Refusal::NoSpec, "invalid_pod"),
            (
                Refusal::InvalidName {
                    what: "pod name",
                    name: "X".into(),
                },
                "invalid_name",
            ),
            (
                Refusal::UnsafePath {
                    context: "c".into(),
                    path: "..".into(),
                },
                "unsafe_path",
            ),
            (
                Refusal::UnsupportedVolume {
                    volume: "v".into(),
                    kind: "k".into(),
                },
                "unsupported_volume",
            ),
            (
                Refusal::UnsupportedField {
                    volume: "v".into(),
                    field: "f".into(),
                    why: "w".into(),
                },
                "unsupported_field",
            ),
            (Refusal::PathConflict { path: "/p".into() }, "path_conflict"),
        ];
        for (refusal, reason) in cases {
            assert_eq!(refusal.reason(), reason);
        }
        let no_spec = pod(json!({"metadata": {"name": "web"}}));
        assert_eq!(
            sanitize(&no_spec, &Objects::default(), &layout()).expect_err("refused"),
            Refusal::NoSpec
        );
    }

    // ---- properties -----------------------------------------------------------------------

    fn hostile() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("../x".to_owned()),
            Just("/etc/passwd".to_owned()),
            Just("a/../../b".to_owned()),
            Just("..data".to_owned()),
            Just("a\0b".to_owned()),
            Just("./a//b/".to_owned()),
            "[a-z./]{1,12}",
            any::<String>(),
        ]
    }

    /// Mostly valid paths, so that many cases get past validation, with hostile ones mixed in.
    fn path() -> impl Strategy<Value = String> {
        prop_oneof![3 => "[a-z][a-z0-9.]{0,5}(/[a-z][a-z0-9]{0,3}){0,2}", 1 => hostile()]
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![3 => Just("s".to_owned()), 1 => Just("v".to_owned()), 1 => hostile()]
    }

    fn key_data() -> impl Strategy<Value = KeyData> {
        prop::collection::btree_map(path(), prop::collection::vec(any::<u8>(), 0..4), 0..4)
    }

    /// Everything under `root` (strictly) and made of plain components only.
    fn strictly_under(path: &Path, root: &Path) -> bool {
        path.strip_prefix(root).is_ok_and(|rel| {
            rel.components().next().is_some()
                && rel.components().all(|c| matches!(c, Component::Normal(_)))
        })
    }

    proptest! {
        #[test]
        fn sanitize_never_panics_and_stays_under_the_pod_directories(
            secret_name in name(),
            config_map_name in name(),
            volume_name in name(),
            secret_data in key_data(),
            config_map_data in key_data(),
            items in prop::collection::vec((path(), path(), any::<Option<i32>>()), 0..3),
            use_items in any::<bool>(),
            default_mode in any::<Option<i32>>(),
            projected_paths in prop::collection::vec(path(), 0..3),
            optional in any::<bool>(),
        ) {
            let items: Vec<Value> = items
                .iter()
                .map(|(key, path, mode)| json!({"key": key, "path": path, "mode": mode}))
                .collect();
            let items = if use_items { json!(items) } else { json!(null) };
            let downward: Vec<Value> = projected_paths
                .iter()
                .map(|path| json!({"path": path, "fieldRef": {"fieldPath": "metadata.name"}}))
                .collect();
            let parent = parent(json!({
                "containers": [{"name": "app", "image": "a",
                    "volumeMounts": [{"name": volume_name, "mountPath": "/v"}]}],
                "volumes": [
                    {"name": volume_name, "secret": {"secretName": secret_name, "items": items, "defaultMode": default_mode, "optional": optional}},
                    {"name": "cm", "configMap": {"name": config_map_name, "items": items, "optional": optional}},
                    {"name": "proj", "projected": {"sources": [
                        {"secret": {"name": secret_name, "items": items, "optional": optional}},
                        {"downwardAPI": {"items": downward}},
                    ]}},
                ],
            }));
            let mut objects = Objects::default();
            objects.secrets.insert(secret_name.clone(), secret_data);
            objects.config_maps.insert(config_map_name.clone(), config_map_data);
            let layout = layout();
            let key = PodKey::new("prod", "web");
            let (secret_root, config_map_root) = (layout.pod_secret_dir(&key), layout.pod_configmap_dir(&key));
            if let Ok(checkpoint) = sanitize(&parent, &objects, &layout) {
                for side in &checkpoint.files {
                    prop_assert!(
                        strictly_under(&side.path, &secret_root) || strictly_under(&side.path, &config_map_root),
                        "{:?} escapes", side.path
                    );
                }
                for volume in spec(&checkpoint).volumes.iter().flatten() {
                    let host = volume.host_path.as_ref().map(|h| PathBuf::from(&h.path));
                    prop_assert!(host.is_some_and(|p| strictly_under(&p, &secret_root) || strictly_under(&p, &config_map_root)));
                }
                let mut paths: Vec<&PathBuf> = checkpoint.files.iter().map(|f| &f.path).collect();
                paths.dedup();
                prop_assert_eq!(paths.len(), checkpoint.files.len());
                let reparsed: Pod = serde_json::from_slice(&checkpoint.manifest_bytes()).expect("manifest parses");
                let again = sanitize(&reparsed, &Objects::default(), &layout).expect("a checkpoint sanitizes");
                prop_assert_eq!(again.manifest_bytes(), checkpoint.manifest_bytes());
                let _ = checkpoint.digest();
            }
        }
    }
}
