//! `secret`, `configMap` and `projected` volumes turned into hostPath directories holding the
//! files the kubelet would have projected, honouring `items`, modes and `optional`.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    Container, HostPathVolumeSource, KeyToPath, PodSpec, Volume, VolumeProjection,
};

use super::{
    Ctx, DEFAULT_MODE, Kind, Refusal, SideEntry, SideFile, TokenSpec, Warning, check_name,
    containers, mode_or, safe_relative,
};
use crate::model::Owner;

/// Prefix of a volume's own directory; `_` cannot appear in an object name, so it never collides.
const VOLUME_DIR_PREFIX: &str = "_volume-";

pub(super) fn host_path_volume(name: &str, dir: &Path) -> Result<Volume, Refusal> {
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

/// What backs a volume in the kubelet, which decides the mode of the volume's own directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Medium {
    /// `secret` and `projected`: a tmpfs mounted without a `mode=` option, whose root is 1777.
    Tmpfs,
    /// `configMap`: a plain directory the kubelet chmods to 0777.
    Disk,
}

/// The owners and modes the kubelet (v1.34.4) gives the files of a secret, configMap or projected
/// volume, so a copy's containers can read exactly what its parent's could (SPEC §2). What the
/// kubelet does, in `k8s.io/kubernetes@v1.34.4/pkg`:
/// - the volume's own directory is an emptyDir: a tmpfs for secrets and projected volumes
///   (`volume/secret/secret.go:54`, `volume/projected/projected.go:63`) mounted with no mode
///   option (`volume/emptydir/empty_dir.go:579`), so 1777 root:root; a plain directory for
///   configMaps, chmodded to 0777 (`volume/configmap/configmap.go:172`, `empty_dir.go:50,454`);
/// - files get the item's `mode`, else `defaultMode`, else 0644, exactly (chmod after write,
///   `volume/util/atomic_writer.go:431-442`), owned by root; directories of nested paths are
///   `MkdirAll(0777)` under the kubelet's umask 0022, so 0755 (`atomic_writer.go:426`);
/// - with the pod's `fsGroup` (pod level only, `volume/util/operationexecutor/
///   operation_generator.go:501-510`), everything in the volume gets it as group and, the volumes
///   being read-only (`secret.go:166`, `configmap.go:160`, `projected.go:175`), mode | 0440, plus
///   setgid and 0110 on directories (`volume/volume_linux.go:149-182`);
/// - a projected `serviceAccountToken` file is owned by `FsUser`, the one effective `runAsUser`
///   (the container's, else the pod's: `securitycontext/util.go:127`) shared by every container,
///   init and ephemeral ones included, none when one has no user or two differ
///   (`volume/util/util.go:541-557`); with an `FsUser` or an `fsGroup` it is 0600 instead of
///   `defaultMode` (0640 once the group bits are added: `projected.go:323-353`). Secret,
///   configMap and downward-API files of the same volume stay root's.
///
/// `runAsGroup` and `supplementalGroups` play no part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Access {
    fs_group: Option<u32>,
    fs_user: Option<u32>,
}

/// The kubelet's umask-narrowed `MkdirAll(0777)` for nested paths.
const NESTED_DIR_MODE: u32 = 0o755;

impl Access {
    /// Reads `fsGroup` and the containers' users off the parent. Ids outside u32 count as unset.
    pub(super) fn of(spec: &PodSpec) -> Self {
        let id = |value: Option<i64>| value.and_then(|v| u32::try_from(v).ok());
        let pod = spec.security_context.as_ref();
        let user_of = |c: &Container| {
            id(c.security_context.as_ref().and_then(|s| s.run_as_user))
                .or_else(|| id(pod.and_then(|p| p.run_as_user)))
        };
        let mut users =
            containers(spec)
                .map(user_of)
                .chain(spec.ephemeral_containers.iter().flatten().map(|e| {
                    id(e.security_context.as_ref().and_then(|s| s.run_as_user))
                        .or_else(|| id(pod.and_then(|p| p.run_as_user)))
                }));
        let first = users.next().flatten();
        let fs_user = first.filter(|_| users.all(|u| u == first));
        Self {
            fs_group: id(pod.and_then(|p| p.fs_group)),
            fs_user,
        }
    }

    /// The fsGroup's bits added to a mode (`volume_linux.go:166-176`).
    fn grouped(&self, mode: u32, is_dir: bool) -> u32 {
        match (self.fs_group, is_dir) {
            (None, _) => mode,
            (Some(_), false) => mode | 0o440,
            (Some(_), true) => mode | 0o440 | 0o110 | 0o2000,
        }
    }

    fn owner(&self, uid: u32) -> Owner {
        Owner {
            uid,
            gid: self.fs_group.unwrap_or(0),
        }
    }
}

/// Collects side entries, adding intermediate directories for nested paths.
pub(super) struct Tree {
    access: Access,
    entries: Vec<SideFile>,
}

impl Tree {
    pub(super) fn new(access: Access) -> Self {
        Self {
            access,
            entries: Vec::new(),
        }
    }

    fn dir(&mut self, path: PathBuf, mode: u32) {
        self.entries.push(SideFile {
            path,
            entry: SideEntry::Dir {
                mode: self.access.grouped(mode, true),
            },
            owner: self.access.owner(0),
        });
    }

    /// The directory a container mounts: as the kubelet's volume directory for `medium`.
    fn volume_dir(&mut self, path: PathBuf, medium: Medium) {
        let mode = match medium {
            Medium::Tmpfs => 0o1777,
            Medium::Disk => 0o777,
        };
        self.dir(path, mode);
    }

    /// `components` come from [`safe_relative`], so the file stays under `dir`.
    pub(super) fn file(&mut self, dir: &Path, components: &[&str], data: Vec<u8>, mode: u32) {
        self.put(dir, components, data, self.access.grouped(mode, false), 0);
    }

    /// A projected token: the kubelet's `FsUser` owns it, 0600 when a user or group is set.
    fn token(&mut self, dir: &Path, components: &[&str], data: Vec<u8>, default_mode: u32) {
        let access = self.access;
        let mode = if access.fs_user.is_some() || access.fs_group.is_some() {
            0o600
        } else {
            default_mode
        };
        let uid = access.fs_user.unwrap_or(0);
        self.put(dir, components, data, access.grouped(mode, false), uid);
    }

    fn put(&mut self, dir: &Path, components: &[&str], data: Vec<u8>, mode: u32, uid: u32) {
        let Some((name, parents)) = components.split_last() else {
            return;
        };
        let mut path = dir.to_path_buf();
        for parent in parents {
            path.push(parent);
            self.dir(path.clone(), NESTED_DIR_MODE);
        }
        path.push(name);
        self.entries.push(SideFile {
            path,
            entry: SideEntry::File { data, mode },
            owner: self.access.owner(uid),
        });
    }

    /// Sorted by path, identical entries merged; two different entries at one path are refused.
    pub(super) fn finish(mut self) -> Result<Vec<SideFile>, Refusal> {
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

/// The driver of a volume that names a Secret for the kubelet to read through the API (a CSI
/// driver's publish secret, an in-tree driver's `secretRef`, azureFile's `secretName`). The
/// kubelet rejects a static pod that references any API object, so its copy could never start.
fn secret_reading_driver(v: &Volume) -> Option<&'static str> {
    let csi = v
        .csi
        .as_ref()
        .is_some_and(|s| s.node_publish_secret_ref.is_some());
    let found = [
        ("csi", csi),
        (
            "rbd",
            v.rbd.as_ref().is_some_and(|s| s.secret_ref.is_some()),
        ),
        (
            "cephfs",
            v.cephfs.as_ref().is_some_and(|s| s.secret_ref.is_some()),
        ),
        (
            "iscsi",
            v.iscsi.as_ref().is_some_and(|s| s.secret_ref.is_some()),
        ),
        (
            "flexVolume",
            v.flex_volume
                .as_ref()
                .is_some_and(|s| s.secret_ref.is_some()),
        ),
        ("azureFile", v.azure_file.is_some()),
        ("scaleIO", v.scale_io.is_some()),
        (
            "storageos",
            v.storageos.as_ref().is_some_and(|s| s.secret_ref.is_some()),
        ),
        (
            "cinder",
            v.cinder.as_ref().is_some_and(|s| s.secret_ref.is_some()),
        ),
    ];
    found
        .into_iter()
        .find(|(_, refs)| *refs)
        .map(|(driver, _)| driver)
}

impl<'a> Ctx<'a> {
    /// Converts a volume that references the API into files under a directory, returning that
    /// directory; `None` for volumes a static pod can carry as they are.
    pub(super) fn convert_volume(
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
        if let Some(driver) = secret_reading_driver(volume) {
            return Err(unsupported(&format!(
                "a {driver} volume that reads a Secret through the API"
            )));
        }
        let needed_by = format!("volume {:?}", volume.name);
        let object = if let Some(source) = &volume.secret {
            let name = source.secret_name.as_deref().unwrap_or("");
            let view = View::new(
                Kind::Secret,
                name,
                &source.items,
                source.optional,
                source.default_mode,
                DEFAULT_MODE,
            );
            Some((view, self.layout.pod_secret_dir(self.key)))
        } else {
            volume.config_map.as_ref().map(|source| {
                let view = View::new(
                    Kind::ConfigMap,
                    &source.name,
                    &source.items,
                    source.optional,
                    source.default_mode,
                    DEFAULT_MODE,
                );
                (view, self.layout.pod_configmap_dir(self.key))
            })
        };
        if let Some((view, pod_dir)) = object {
            return self
                .convert_object_volume(&view, pod_dir, &volume.name, &needed_by, tree)
                .map(Some);
        }
        if let Some(projected) = &volume.projected {
            let default_mode = mode_or(projected.default_mode, DEFAULT_MODE);
            let dir = own_dir(self.layout.pod_secret_dir(self.key), &volume.name)?;
            tree.volume_dir(dir.clone(), Medium::Tmpfs);
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
        let medium = match view.kind {
            Kind::Secret => Medium::Tmpfs,
            Kind::ConfigMap => Medium::Disk,
        };
        tree.volume_dir(dir.clone(), medium);
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
            for (key, value) in data.files() {
                let components = safe_relative(key, &context)?;
                tree.file(dir, &components, value.to_vec(), view.default_mode);
            }
            return Ok(());
        };
        for (item, components) in items.iter().zip(item_paths) {
            match data.file(&item.key) {
                Some(value) => {
                    let mode = mode_or(item.mode, view.default_mode);
                    tree.file(dir, &components, value.to_vec(), mode);
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
        let secret = (source.secret.as_ref()).map(|s| {
            View::new(
                Kind::Secret,
                &s.name,
                &s.items,
                s.optional,
                None,
                default_mode,
            )
        });
        let config_map = (source.config_map.as_ref()).map(|c| {
            View::new(
                Kind::ConfigMap,
                &c.name,
                &c.items,
                c.optional,
                None,
                default_mode,
            )
        });
        for view in secret.iter().chain(&config_map) {
            self.write_view(view, dir, volume, &needed_by, tree)?;
        }
        if let Some(downward) = &source.downward_api {
            for item in downward.items.iter().flatten() {
                let components = safe_relative(&item.path, &needed_by)?;
                let value = self.downward_value(item, volume)?;
                let mode = mode_or(item.mode, default_mode);
                tree.file(dir, &components, value.into_bytes(), mode);
            }
        }
        if let Some(token) = &source.service_account_token {
            let components = safe_relative(&token.path, &needed_by)?;
            match self.objects.tokens.get(&TokenSpec::of(token)) {
                Some(value) => {
                    tree.token(dir, &components, value.clone().into_bytes(), default_mode)
                }
                None => warnings.push(Warning::TokenUnavailable {
                    volume: volume.to_owned(),
                }),
            }
        }
        Ok(())
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

impl<'v> View<'v> {
    /// The one place a view is read off a volume or projection source: a missing `optional`
    /// means required, and `mode` (the source's `defaultMode`) falls back to `default_mode`.
    fn new(
        kind: Kind,
        name: &'v str,
        items: &'v Option<Vec<KeyToPath>>,
        optional: Option<bool>,
        mode: Option<i32>,
        default_mode: u32,
    ) -> Self {
        Self {
            kind,
            name,
            items: items.as_deref(),
            optional: optional.unwrap_or(false),
            default_mode: mode_or(mode, default_mode),
        }
    }

    /// `items`, where an empty list means "every key", as in the kubelet.
    fn items(&self) -> Option<&[KeyToPath]> {
        self.items.filter(|items| !items.is_empty())
    }
}
