//! Watches on the Secrets and ConfigMaps that parents reference, one per object, so a change
//! reaches the checkpoint within moments without any polling (SPEC §5).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use tokio::task::JoinHandle;

use super::{Trigger, watcher_reason};
use crate::metrics::Metrics;
use crate::model::KeyData;

/// Which kind of object a parent references.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    /// A Secret (`secret` volumes, `secretKeyRef`, projected secrets, image pull secrets).
    Secret,
    /// A ConfigMap (`configMap` volumes, `configMapKeyRef`, projected configmaps).
    ConfigMap,
}

impl ObjectKind {
    fn resource(self) -> &'static str {
        match self {
            ObjectKind::Secret => "secrets",
            ObjectKind::ConfigMap => "configmaps",
        }
    }
}

/// A referenced Secret or ConfigMap: the unit of watching, so each object is watched once however
/// many parents use it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// Which API the object lives in.
    pub kind: ObjectKind,
    /// The parent's namespace: a pod can only reference objects of its own.
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

/// What the watch on one object has seen so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectState {
    /// No answer yet: sanitizing now would wrongly treat the object as missing.
    Pending,
    /// The object's current keys.
    Found(KeyData),
    /// The API says it does not exist.
    Missing,
    /// The API refused (e.g. `forbidden`); the reason label says why.
    Failed(&'static str),
}

type ObjectMap = Arc<Mutex<BTreeMap<ObjectRef, ObjectState>>>;

/// One watch per referenced object (field selector `metadata.name`), started and stopped as
/// references change, so a changed Secret reaches the disk within moments and nothing is polled.
pub struct ObjectWatches {
    client: Client,
    trigger: Trigger,
    metrics: Metrics,
    state: ObjectMap,
    tasks: HashMap<ObjectRef, JoinHandle<()>>,
}

impl ObjectWatches {
    /// No watches yet: [`ObjectWatches::ensure`] starts them once parents are known.
    pub fn new(client: Client, trigger: Trigger, metrics: Metrics) -> Self {
        Self {
            client,
            trigger,
            metrics,
            state: Arc::default(),
            tasks: HashMap::new(),
        }
    }

    /// Watches exactly `wanted`: starts missing watches, stops the ones no parent needs.
    pub fn ensure(&mut self, wanted: &BTreeSet<ObjectRef>) {
        self.tasks.retain(|r, task| {
            let keep = wanted.contains(r);
            if !keep {
                task.abort();
            }
            keep
        });
        if let Ok(mut state) = self.state.lock() {
            state.retain(|r, _| wanted.contains(r));
        }
        for r in wanted {
            if self.tasks.contains_key(r) {
                continue;
            }
            if let Ok(mut state) = self.state.lock() {
                state.insert(r.clone(), ObjectState::Pending);
            }
            let task = match r.kind {
                ObjectKind::Secret => self.spawn::<Secret>(r.clone()),
                ObjectKind::ConfigMap => self.spawn::<ConfigMap>(r.clone()),
            };
            self.tasks.insert(r.clone(), task);
        }
    }

    /// The current state of one object (`Pending` if unknown).
    pub fn get(&self, r: &ObjectRef) -> ObjectState {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.get(r).cloned())
            .unwrap_or(ObjectState::Pending)
    }

    fn spawn<K>(&self, r: ObjectRef) -> JoinHandle<()>
    where
        K: KeyDataSource
            + Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + Sync
            + 'static,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &r.namespace);
        let cfg = watcher::Config::default().fields(&format!("metadata.name={}", r.name));
        let state = self.state.clone();
        let trigger = self.trigger.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(kube::runtime::watcher(api, cfg).default_backoff());
            let mut seen: Option<KeyData> = None;
            while let Some(event) = events.next().await {
                let next = match event {
                    Ok(Event::Init) => {
                        seen = None;
                        continue;
                    }
                    Ok(Event::InitApply(obj)) => {
                        seen = Some(obj.key_data());
                        continue;
                    }
                    Ok(Event::InitDone) => match seen.take() {
                        Some(d) => ObjectState::Found(d),
                        None => ObjectState::Missing,
                    },
                    Ok(Event::Apply(obj)) => ObjectState::Found(obj.key_data()),
                    Ok(Event::Delete(_)) => ObjectState::Missing,
                    Err(e) => {
                        let reason = watcher_reason(&e);
                        metrics.api_error(r.kind.resource(), reason);
                        if reason == "forbidden" {
                            tracing::error!(namespace = %r.namespace, object = %r.name, resource = r.kind.resource(), reason, error = %e, "not allowed to watch a referenced object; check the agent's RBAC");
                        } else {
                            tracing::debug!(namespace = %r.namespace, object = %r.name, reason, error = %e, "object watch failing");
                        }
                        ObjectState::Failed(reason)
                    }
                };
                let changed = match state.lock() {
                    Ok(mut s) => match s.get_mut(&r) {
                        // A transient failure keeps the last good data.
                        Some(cur)
                            if matches!(next, ObjectState::Failed(_))
                                && matches!(cur, ObjectState::Found(_) | ObjectState::Missing) =>
                        {
                            false
                        }
                        Some(cur) if *cur != next => {
                            *cur = next;
                            true
                        }
                        _ => false,
                    },
                    Err(_) => false,
                };
                if changed {
                    tracing::debug!(namespace = %r.namespace, object = %r.name, resource = r.kind.resource(), "referenced object changed");
                    trigger.notify_one();
                }
            }
        })
    }
}

impl Drop for ObjectWatches {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.abort();
        }
    }
}

/// A referenced object's keys as the sanitizer reads them, one conversion for the watches and for
/// `render`'s `--objects` file, so an offline rendering matches what the agent writes.
pub trait KeyDataSource {
    /// Every key with its bytes; of two entries for one key in one field, the later field wins.
    fn key_data(&self) -> KeyData;
}

impl KeyDataSource for Secret {
    /// `data`, then `stringData` as `kubectl apply` would merge it (the API never returns it).
    fn key_data(&self) -> KeyData {
        binary(&self.data).chain(text(&self.string_data)).collect()
    }
}

impl KeyDataSource for ConfigMap {
    /// `data`, and `binaryData` apart: volumes show both, env reads only `data` (as the kubelet).
    fn key_data(&self) -> KeyData {
        let mut keys: KeyData = text(&self.data).collect();
        for (key, value) in binary(&self.binary_data) {
            keys.insert_binary(key, value);
        }
        keys
    }
}

/// The entries of a base64 field (`data` of a Secret, `binaryData` of a ConfigMap).
fn binary(map: &Option<BTreeMap<String, ByteString>>) -> impl Iterator<Item = (String, Vec<u8>)> {
    map.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone()))
}

/// The entries of a text field (`stringData` of a Secret, `data` of a ConfigMap).
fn text(map: &Option<BTreeMap<String, String>>) -> impl Iterator<Item = (String, Vec<u8>)> {
    map.iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_map_binary_data_is_kept_apart_for_volumes_only() {
        let cm = ConfigMap {
            data: Some(BTreeMap::from([("a".to_owned(), "text".to_owned())])),
            binary_data: Some(BTreeMap::from([("b".to_owned(), ByteString(vec![0xff]))])),
            ..ConfigMap::default()
        };
        let keys = cm.key_data();
        assert_eq!(keys.file("a"), Some(&b"text"[..]));
        assert_eq!(keys.file("b"), Some(&[0xff][..]));
        assert_eq!(keys.env_value("a"), Some(&b"text"[..]));
        assert_eq!(keys.env_value("b"), None);
    }

    #[test]
    fn debug_of_an_object_state_shows_keys_and_sizes_never_values() {
        let secret = Secret {
            data: Some(BTreeMap::from([(
                "password".to_owned(),
                ByteString(b"s3cr3t-password".to_vec()),
            )])),
            ..Secret::default()
        };
        let state = ObjectState::Found(secret.key_data());
        for text in [format!("{state:?}"), format!("{state:#?}")] {
            assert!(!text.contains("s3cr3t"), "{text}");
            assert!(text.contains("\"password\": 15 bytes"), "{text}");
        }
    }
}
