//! The operator's offline subcommands: `render` shows what the agent would write for a pod, and
//! `status` lists what is on a node's disk. Neither talks to the API server.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Resource;
use serde::de::DeserializeOwned;

use crate::config::{OutputFormat, RenderArgs, StatusArgs};
use crate::model::{DEFAULT_NAMESPACE, KeyData, Layout};
use crate::sanitize::{self, Objects, Warning};
use crate::store::Store;
use crate::watch::KeyDataSource;

/// Prints the checkpoint manifest for `--pod`, and with `--root` writes it and its files.
pub fn render(args: &RenderArgs) -> anyhow::Result<()> {
    let pod: Pod = parse_one(&read_input(&args.pod)?)
        .with_context(|| format!("parsing pod {}", args.pod.display()))?;
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.into());
    let mut objects = Objects::default();
    if let Some(path) = &args.objects {
        load_objects(&read_input(path)?, &namespace, &mut objects)
            .with_context(|| format!("parsing objects {}", path.display()))?;
    }
    let layout = Layout::under_root(args.paths.root.as_deref().unwrap_or(Path::new("/")));
    let cp = sanitize::sanitize(&pod, &objects, &layout)
        .map_err(|r| anyhow::anyhow!("cannot checkpoint this pod ({}): {r}", r.reason()))?;
    for w in &cp.warnings {
        match w {
            Warning::TokenUnavailable { volume } => eprintln!(
                "note: volume {volume:?} needs a service-account token, which only the API server can issue; rendered without it"
            ),
        }
    }
    let bytes = cp.manifest_bytes();
    if let Some(root) = &args.paths.root {
        let store = Store::new(layout);
        store
            .prepare()
            .with_context(|| format!("preparing {}", root.display()))?;
        store
            .write_inactive(&cp.key, &bytes, &cp.files)
            .with_context(|| format!("writing the checkpoint under {}", root.display()))?;
    }
    std::io::stdout()
        .write_all(&bytes)
        .context("writing to stdout")?;
    Ok(())
}

/// Lists every checkpoint on disk with its state, files and grace deadline.
pub fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let store = Store::new(args.paths.layout());
    let checkpoints = store.describe().context("reading checkpoints")?;
    let deadlines = store.load_deadlines().context("reading grace deadlines")?;
    match args.output {
        OutputFormat::Json => {
            let rows: Vec<serde_json::Value> = checkpoints
                .iter()
                .map(|c| {
                    let mut v = serde_json::to_value(c).unwrap_or_default();
                    if let (Some(obj), Some(d)) = (v.as_object_mut(), deadlines.get(&c.key)) {
                        obj.insert("remove_at".into(), serde_json::Value::String(d.to_string()));
                    }
                    v
                })
                .collect();
            let text = serde_json::to_string_pretty(&rows).context("encoding status")?;
            println!("{text}");
        }
        OutputFormat::Text => {
            if checkpoints.is_empty() {
                println!("no checkpoints");
            }
            for c in &checkpoints {
                let state = if c.active.is_some() {
                    "active"
                } else {
                    "inactive"
                };
                let grace = deadlines
                    .get(&c.key)
                    .map(|d| format!(", removal at {d}"))
                    .unwrap_or_default();
                println!("{} ({state}{grace})", c.key);
                if let Some(p) = &c.inactive {
                    println!("  inactive: {}", p.display());
                }
                if let Some(p) = &c.active {
                    println!("  active:   {}", p.display());
                }
                for f in &c.side_files {
                    println!("  file:     {}", describe_file(f));
                }
            }
            for (key, at) in deadlines
                .iter()
                .filter(|(k, _)| !checkpoints.iter().any(|c| &c.key == *k))
            {
                println!("{key} (no files, removal at {at})");
            }
        }
    }
    Ok(())
}

fn describe_file(f: &crate::store::SideFileInfo) -> String {
    serde_json::to_string(f).unwrap_or_else(|_| format!("{f:?}"))
}

fn read_input(path: &Path) -> anyhow::Result<String> {
    let mut text = String::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading standard input")?;
    } else {
        text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(text)
}

/// How pod and object files are read. JSON is YAML, so one parser serves both. YAML 1.2 core
/// rules, as the Kubernetes tools use: `yes`/`on` stay strings (a ConfigMap value would not
/// parse otherwise), and numbers written with a leading zero stay strings, for
/// [`octal_modes`] to read the way kubectl does.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
    }
}

/// Reads one YAML or JSON document.
fn parse_one<T: DeserializeOwned>(text: &str) -> anyhow::Result<T> {
    let mut value: serde_json::Value = serde_saphyr::from_str_with_options(text, yaml_options())?;
    octal_modes(&mut value);
    Ok(serde_json::from_value(value)?)
}

/// Manifests written for kubectl say `defaultMode: 0400`, which YAML 1.1 reads as octal and a
/// YAML 1.2 parser as decimal 400; the parser keeps such spellings as strings, read here as octal.
fn octal_modes(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                let octal = matches!(k.as_str(), "mode" | "defaultMode")
                    .then(|| val.as_str())
                    .flatten()
                    .filter(|s| s.len() > 1 && s.starts_with('0'))
                    .and_then(|s| i64::from_str_radix(s, 8).ok());
                match octal {
                    Some(n) => *val = n.into(),
                    None => octal_modes(val),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(octal_modes),
        _ => {}
    }
}

/// Reads Secrets and ConfigMaps of the pod's namespace from a v1 List or YAML documents.
fn load_objects(text: &str, namespace: &str, into: &mut Objects) -> anyhow::Result<()> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple_with_options(text, yaml_options())?;
    for value in docs {
        if value.is_null() {
            continue;
        }
        let items = match value.get("kind").and_then(|k| k.as_str()) {
            Some(k) if k.ends_with("List") => value
                .get("items")
                .and_then(|i| i.as_array())
                .cloned()
                .unwrap_or_default(),
            _ => vec![value],
        };
        for item in items {
            add_object(item, namespace, into)?;
        }
    }
    Ok(())
}

/// Adds one Secret or ConfigMap of the pod's namespace (or of none) to `into`.
fn add_object(item: serde_json::Value, namespace: &str, into: &mut Objects) -> anyhow::Result<()> {
    let kind = item
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_string();
    match kind.as_str() {
        "Secret" => insert_object::<Secret>(item, namespace, &mut into.secrets),
        "ConfigMap" => insert_object::<ConfigMap>(item, namespace, &mut into.config_maps),
        other => bail!("--objects holds a {other:?}; only Secrets and ConfigMaps are used"),
    }
}

/// Stores the object's keys under its name, the way the agent's watch would see them.
fn insert_object<K>(
    item: serde_json::Value,
    namespace: &str,
    into: &mut BTreeMap<String, KeyData>,
) -> anyhow::Result<()>
where
    K: KeyDataSource + Resource + DeserializeOwned,
{
    let object: K = serde_json::from_value(item)?;
    let meta = object.meta();
    if in_namespace(meta.namespace.as_deref(), namespace) {
        into.insert(meta.name.clone().unwrap_or_default(), object.key_data());
    }
    Ok(())
}

fn in_namespace(object_ns: Option<&str>, pod_ns: &str) -> bool {
    object_ns.is_none_or(|ns| ns == pod_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_with_a_leading_zero_are_octal_and_yes_stays_a_string() {
        let text = "spec: {volumes: [{secret: {defaultMode: 0400}}], x: [yes, 0123, 12, true]}";
        let pod: serde_json::Value = parse_one(text).expect("parse");
        assert_eq!(pod["spec"]["volumes"][0]["secret"]["defaultMode"], 256);
        assert_eq!(
            pod["spec"]["x"],
            serde_json::json!(["yes", "0123", 12, true])
        );
    }

    #[test]
    fn objects_come_from_documents_and_lists_of_the_pods_namespace() {
        let text = "---
kind: Secret
metadata: {name: s}
data: {a: YQ==}
stringData: {b: yes}
---
---
kind: List
items:
- {kind: ConfigMap, metadata: {name: c, namespace: ns}, data: {k: '1'}, binaryData: {k: Mg==}}
- {kind: ConfigMap, metadata: {name: other, namespace: elsewhere}, data: {k: v}}
";
        let mut objects = Objects::default();
        load_objects(text, "ns", &mut objects).expect("load");
        let data = |pairs: &[(&str, &str)]| -> KeyData {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect()
        };
        assert_eq!(objects.secrets["s"], data(&[("a", "a"), ("b", "yes")]));
        // A key in both fields: volumes read binaryData, env reads data (as the kubelet).
        assert_eq!(objects.config_maps["c"].file("k"), Some(&b"2"[..]));
        assert_eq!(objects.config_maps["c"].env_value("k"), Some(&b"1"[..]));
        assert!(!objects.config_maps.contains_key("other"));
        assert!(load_objects("kind: Pod\n", "ns", &mut objects).is_err());
    }
}
