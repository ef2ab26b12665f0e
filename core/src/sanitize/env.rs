//! `env[].valueFrom` key references and `envFrom` turned into literal values: a static pod
//! cannot read Secrets or ConfigMaps from the API.
//!
//! The rules follow the kubelet (`makeEnvironmentVariables` in pkg/kubelet/kubelet_pods.go):
//! - `envFrom` is expanded first, source by source, a later source overriding an earlier one;
//!   each name is the prefix followed by the key;
//! - of a ConfigMap, `envFrom` and `configMapKeyRef` read `data` only: `binaryData` keys are
//!   ignored by `envFrom` and missing for `configMapKeyRef`;
//! - `env` entries follow, in order, so they override `envFrom` and expand `$(VAR)` against it;
//!   an optional reference to a missing object or key leaves the variable out.
//!
//! The checkpoint is a static pod, which the kubelet validates with the strict env-name rule
//! (pkg/kubelet/config/common.go uses empty validation options up to v1.34): an `envFrom` name
//! that breaks it is skipped (as kubelets did before relaxed names, with an event), and an `env`
//! name that breaks it refuses the pod, since the kubelet would reject the whole checkpoint.
//! A Secret value that is not UTF-8 refuses the pod: a JSON literal cannot carry it, and the
//! kubelet cannot pass it to the runtime either (CRI strings are UTF-8).

use k8s_openapi::api::core::v1::{Container, EnvFromSource, EnvVar};

use super::{Ctx, Kind, Refusal};

impl Ctx<'_> {
    /// Turns `secretKeyRef`/`configMapKeyRef` env and `envFrom` into literal values. `envFrom`
    /// entries come first so that `env` keeps its precedence (the kubelet's last-wins order).
    pub(super) fn resolve_env(&self, container: &mut Container) -> Result<(), Refusal> {
        let mut expanded: Vec<EnvVar> = Vec::new();
        for source in container.env_from.take().into_iter().flatten() {
            self.expand_env_from(&container.name, &source, &mut expanded)?;
        }
        let own = match container.env.take() {
            None => None,
            Some(env) => {
                let mut resolved = Vec::with_capacity(env.len());
                for var in env {
                    if !valid_env_name(&var.name) {
                        return Err(Refusal::InvalidEnvName {
                            container: container.name.clone(),
                            env: var.name,
                        });
                    }
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
        for (key, bytes) in data.env_values() {
            // The prefix is part of the name that must be valid.
            let env = format!("{prefix}{key}");
            if !valid_env_name(&env) {
                continue;
            }
            let var = literal_env(container, env, kind, name, key, bytes)?;
            // A later source overrides an earlier one, as in the kubelet.
            out.retain(|e| e.name != var.name);
            out.push(var);
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
        let Some(bytes) = data.env_value(key) else {
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
        literal_env(container, var.name, kind, name, key, bytes).map(Some)
    }
}

/// The variable `env` holding `bytes` (key `key` of object `name`) as a literal; refused when
/// the value is not UTF-8, since an env literal cannot carry it.
fn literal_env(
    container: &str,
    env: String,
    kind: Kind,
    name: &str,
    key: &str,
    bytes: &[u8],
) -> Result<EnvVar, Refusal> {
    match literal(bytes) {
        Some(value) => Ok(EnvVar {
            name: env,
            value: Some(value),
            value_from: None,
        }),
        None => Err(Refusal::BinaryEnv {
            container: container.to_owned(),
            env,
            kind: kind.label(),
            name: name.to_owned(),
            key: key.to_owned(),
        }),
    }
}

/// A fetched value as an env literal. The kubelet expands `$(VAR)` in literal values but not in
/// referenced ones, so `$` is escaped as `$$` to keep the value exactly as it was.
fn literal(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes)
        .ok()
        .map(|value| value.replace('$', "$$"))
}

/// The strict env-name rule the kubelet applies to static pods (`IsEnvVarName`):
/// `[-._a-zA-Z][-._a-zA-Z0-9]*`, and not `.` nor starting with `..`.
fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
    bytes
        .next()
        .is_some_and(|b| plain(b) && !b.is_ascii_digit())
        && bytes.all(plain)
        && name != "."
        && !name.starts_with("..")
}
