//! `{:?}` of anything holding Secret bytes prints names, sizes and modes, never the bytes: one
//! `?` in a log line must not leak a Secret (issue 11.8).

use super::*;

const PASSWORD: &str = "hunter2-s3cr3t-password";
const TOKEN: &str = "eyJ-token-s3cr3t-value";
const CA: &str = "ca-bundle-s3cr3t-contents";

/// Whether `text` holds `secret` as text or as the byte list a derived `Debug` of `Vec<u8>`
/// prints (`[104, 117, ...]`, one byte a line with `{:#?}`).
fn leaks(text: &str, secret: &str) -> bool {
    let squeeze = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    let bytes = squeeze(&format!("{:?}", secret.as_bytes()));
    let bytes = bytes.trim_start_matches('[').trim_end_matches(']');
    text.contains(secret) || squeeze(text).contains(bytes)
}

/// A parent with a secret volume, a secret env literal and a kube-api-access volume, and the
/// objects and token it needs.
fn secret_parent() -> (Pod, Objects) {
    let parent = parent(json!({
        "volumes": [{"name": "creds", "secret": {"secretName": "creds"}}, kube_api_access()],
        "containers": [{"name": "app", "image": "a",
            "env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}],
            "envFrom": [{"secretRef": {"name": "creds"}, "prefix": "C_"}],
            "volumeMounts": [{"name": "creds", "mountPath": "/creds"}]}],
    }));
    let mut objects = objects(
        &[("creds", data(&[("password", PASSWORD.as_bytes())]))],
        &[("kube-root-ca.crt", data(&[("ca.crt", CA.as_bytes())]))],
    );
    objects.tokens.insert(token_spec(), TOKEN.into());
    (parent, objects)
}

#[test]
fn debug_of_objects_key_data_side_files_and_checkpoints_never_shows_secret_bytes() {
    let (parent, objects) = secret_parent();
    let checkpoint = ok(&parent, &objects);
    // The secret really is in there: in the manifest's env and in the side files.
    assert!(String::from_utf8_lossy(&checkpoint.manifest_bytes()).contains(PASSWORD));
    assert!(checkpoint.files.iter().any(|f| matches!(&f.entry,
        SideEntry::File { data, .. } if data == TOKEN.as_bytes())));

    let token_file = checkpoint
        .files
        .iter()
        .find(|f| f.path.ends_with("token"))
        .expect("token file")
        .clone();
    let shown = [
        ("Objects", format!("{objects:?}"), format!("{objects:#?}")),
        (
            "KeyData",
            format!("{:?}", objects.secrets["creds"]),
            format!("{:#?}", objects.secrets["creds"]),
        ),
        (
            "Checkpoint",
            format!("{checkpoint:?}"),
            format!("{checkpoint:#?}"),
        ),
        (
            "SideFile",
            format!("{token_file:?}"),
            format!("{token_file:#?}"),
        ),
        (
            "SideEntry",
            format!("{:?}", token_file.entry),
            format!("{:#?}", token_file.entry),
        ),
    ];
    let mut leaked = Vec::new();
    for (what, plain, pretty) in &shown {
        for text in [plain, pretty] {
            for secret in [PASSWORD, TOKEN, CA] {
                if leaks(text, secret) {
                    leaked.push(format!("{what} leaks {secret:?}: {text}"));
                }
            }
        }
    }
    assert!(leaked.is_empty(), "{}", leaked.join("\n"));

    // What is shown is still useful: names, sizes, modes.
    let [
        objects_text,
        key_data_text,
        checkpoint_text,
        side_file_text,
        entry_text,
    ] = shown.map(|(_, plain, _)| plain);
    assert!(
        objects_text.contains("\"creds\"") && objects_text.contains("\"password\""),
        "{objects_text}"
    );
    assert!(
        objects_text.contains(&format!("{} bytes", TOKEN.len())),
        "{objects_text}"
    );
    assert!(
        key_data_text.contains(&format!("\"password\": {} bytes", PASSWORD.len())),
        "{key_data_text}"
    );
    assert!(
        checkpoint_text.contains("prod") && checkpoint_text.contains("web"),
        "{checkpoint_text}"
    );
    assert!(
        side_file_text.contains("_volume-kube-api-access-xyz/token"),
        "{side_file_text}"
    );
    assert!(
        entry_text.contains(&format!("{} bytes", TOKEN.len())) && entry_text.contains("0o644"),
        "{entry_text}"
    );
}
