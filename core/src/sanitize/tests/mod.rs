//! Tests of [`sanitize`](super), by duty, with the helpers they share. Pods come from the crate's
//! shared [`fixtures`](crate::fixtures); what is here is specific to checkpoints of `prod/web`.

mod access;
mod classification;
mod env;
mod output;
mod projected;
mod properties;
mod redaction;
mod spec;
mod volumes;

pub(super) use super::downward::{parse_quantity, scaled_quantity};
pub(super) use super::*;
pub(super) use crate::fixtures::{PodBuilder, config_map, pod};
pub(super) use crate::model::{KeyData, Layout, Owner, PodKey};
pub(super) use k8s_openapi::api::core::v1::{HostPathVolumeSource, Pod, PodSpec, Volume};
pub(super) use serde_json::{Value, json};
pub(super) use std::collections::BTreeMap;
pub(super) use std::path::{Path, PathBuf};

const SEC: &str = "/r/etc/kubernetes/checkpoint-secrets/prod/web";
const CM: &str = "/r/etc/kubernetes/checkpoint-configmaps/prod/web";

fn spec_of(value: Value) -> PodSpec {
    serde_json::from_value(value).expect("test spec must deserialize")
}

/// The parent every test here checkpoints: `prod/web`, opted in.
fn web() -> PodBuilder {
    PodBuilder::parent("prod", "web").uid("uid-1")
}

/// A parent `prod/web` with the given spec.
fn parent(spec: Value) -> Pod {
    web().spec(spec).build()
}

/// A parent whose only container mounts the given volumes.
fn with_volumes(volumes: Value) -> Pod {
    web().volumes(volumes).build()
}

/// A parent whose only container has the given `env` and `envFrom`.
fn with_env(env: Value, env_from: Value) -> Pod {
    web().env(env, env_from).build()
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

/// A secret or projected volume's own directory, as the kubelet's tmpfs root (1777).
fn dir(path: &str) -> SideFile {
    dir_with_mode(path, 0o1777)
}

/// A configMap volume's own directory, as the kubelet's plain emptyDir (0777).
fn cm_dir(path: &str) -> SideFile {
    dir_with_mode(path, 0o777)
}

/// A directory of a nested key path, as the kubelet's `MkdirAll` under umask 0022 (0755).
fn sub_dir(path: &str) -> SideFile {
    dir_with_mode(path, 0o755)
}

fn dir_with_mode(path: &str, mode: u32) -> SideFile {
    SideFile {
        path: PathBuf::from(path),
        entry: SideEntry::Dir { mode },
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
