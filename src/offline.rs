//! The operator's offline subcommands: `render` shows what the agent would write for a pod, and
//! `status` lists what is on a node's disk. Neither talks to the API server.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use serde::Deserialize;

use crate::config::{OutputFormat, RenderArgs, StatusArgs};
use crate::model::{KeyData, Layout};
use crate::sanitize::{self, Objects, Warning};
use crate::store::Store;

/// Prints the checkpoint manifest for `--pod`, and with `--root` writes it and its files.
pub fn render(args: &RenderArgs) -> anyhow::Result<()> {
    let pod: Pod = parse_one(&read_input(&args.pod)?)
        .with_context(|| format!("parsing pod {}", args.pod.display()))?;
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
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

/// JSON is YAML, so one parser serves both.
fn parse_one<T: serde::de::DeserializeOwned>(text: &str) -> anyhow::Result<T> {
    let mut value: serde_json::Value = serde_yaml::from_str(text)?;
    octal_modes(&mut value);
    Ok(serde_json::from_value(value)?)
}

/// Manifests written for kubectl say `defaultMode: 0400`, which YAML 1.1 reads as octal and this
/// YAML 1.2 parser as a string; read such modes the way kubectl does.
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
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_json::Value::deserialize(doc)?;
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

fn add_object(item: serde_json::Value, namespace: &str, into: &mut Objects) -> anyhow::Result<()> {
    let kind = item
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_string();
    match kind.as_str() {
        "Secret" => {
            let s: Secret = serde_json::from_value(item)?;
            if !in_namespace(s.metadata.namespace.as_deref(), namespace) {
                return Ok(());
            }
            let mut data: KeyData = s
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect();
            for (k, v) in s.string_data.iter().flatten() {
                data.insert(k.clone(), v.clone().into_bytes());
            }
            into.secrets
                .insert(s.metadata.name.unwrap_or_default(), data);
        }
        "ConfigMap" => {
            let c: ConfigMap = serde_json::from_value(item)?;
            if !in_namespace(c.metadata.namespace.as_deref(), namespace) {
                return Ok(());
            }
            let mut data: KeyData = c
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                .collect();
            for (k, v) in c.binary_data.iter().flatten() {
                data.insert(k.clone(), v.0.clone());
            }
            into.config_maps
                .insert(c.metadata.name.unwrap_or_default(), data);
        }
        other => bail!("--objects holds a {other:?}; only Secrets and ConfigMaps are used"),
    }
    Ok(())
}

fn in_namespace(object_ns: Option<&str>, pod_ns: &str) -> bool {
    object_ns.is_none_or(|ns| ns == pod_ns)
}
