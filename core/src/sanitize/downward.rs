//! Downward-API values (`fieldRef`, `resourceFieldRef`) computed from the parent as the kubelet
//! would write them, and the exact quantity arithmetic that scaling resources needs.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, Pod, ResourceFieldSelector};

use super::{Ctx, Refusal, containers, namespace_of};

impl Ctx<'_> {
    /// The content of a downwardAPI item, computed from the parent as the kubelet would.
    pub(super) fn downward_value(
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
}

/// A downward-API field of the parent, formatted as the kubelet writes it into a volume.
pub(super) fn field_value(pod: &Pod, field_path: &str) -> Option<String> {
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
pub(super) fn scaled_quantity(quantity: &str, divisor: &str, cpu: bool) -> Option<String> {
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
pub(super) struct Ratio {
    pub(super) num: u128,
    pub(super) den: u128,
}

fn ceil_scaled(ratio: Ratio, scale: u128) -> Option<u128> {
    Some(ratio.num.checked_mul(scale)?.div_ceil(ratio.den))
}

/// Parses a Kubernetes quantity (`1.5`, `250m`, `64Mi`, `1e3`, `2G`) exactly; negative or
/// overflowing quantities give `None`.
pub(super) fn parse_quantity(text: &str) -> Option<Ratio> {
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
