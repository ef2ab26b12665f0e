//! Who owns a volume's files and with which modes, as the kubelet would set them (issue 10.1).

use super::*;

/// One row of what the kubelet shows in a projected volume (see `volumes::Access` for where in
/// the kubelet each rule lives): (directory, a secret file, the token) as (mode, uid, gid).
type Seen = [(u32, u32, u32); 3];

fn seen_in_projected(security: Value, containers: Value, default_mode: u32) -> Seen {
    let parent = parent(json!({
        "securityContext": security,
        "containers": containers,
        "volumes": [{"name": "v", "projected": {"defaultMode": default_mode, "sources": [
            {"secret": {"name": "s"}},
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
        ]}}],
    }));
    let mut objects = objects(&[("s", data(&[("k", b"v")]))], &[]);
    objects.tokens.insert(token_spec(), "tok".into());
    let checkpoint = ok(&parent, &objects);
    let row = |f: &SideFile| {
        let mode = match f.entry {
            SideEntry::Dir { mode } | SideEntry::File { mode, .. } => mode,
        };
        (mode, f.owner.uid, f.owner.gid)
    };
    let rows: Vec<_> = checkpoint.files.iter().map(row).collect();
    rows.try_into().expect("directory, k, token")
}

/// Owners and modes follow the kubelet, not the pod's users: files stay root's (a container
/// running as 1000 must not read a 0400 secret in the copy that it could not read in its
/// parent), `fsGroup` is the group with the kubelet's group bits, and only the token belongs to
/// the one user every container runs as.
#[test]
fn volume_files_get_the_kubelets_owners_and_modes() {
    let user = |uid: i64| json!({"runAsUser": uid});
    let c = |name: &str, sc: Value| json!({"name": name, "image": "a", "securityContext": sc});
    let one = |sc: Value| json!([c("app", sc)]);
    let cases: Vec<(&str, Value, Value, u32, Seen)> = vec![
        (
            "no users, no group: defaultMode everywhere, all root's",
            json!({}),
            one(json!({})),
            0o644,
            [(0o1777, 0, 0), (0o644, 0, 0), (0o644, 0, 0)],
        ),
        (
            "pod user: only the token is the user's, and 0600",
            user(1000),
            one(json!({})),
            0o644,
            [(0o1777, 0, 0), (0o644, 0, 0), (0o600, 1000, 0)],
        ),
        (
            "container users that differ: no FsUser, the token keeps defaultMode",
            json!({}),
            json!([c("a", user(1000)), c("b", user(2000))]),
            0o400,
            [(0o1777, 0, 0), (0o400, 0, 0), (0o400, 0, 0)],
        ),
        (
            "a container's user overrides the pod's; all the same: FsUser",
            user(2000),
            json!([c("a", user(1000)), c("b", user(1000))]),
            0o644,
            [(0o1777, 0, 0), (0o644, 0, 0), (0o600, 1000, 0)],
        ),
        (
            "one container with a user: FsUser",
            json!({}),
            json!([c("a", user(1000))]),
            0o644,
            [(0o1777, 0, 0), (0o644, 0, 0), (0o600, 1000, 0)],
        ),
        (
            "fsGroup: group bits, setgid directory, token 0640; runAsGroup plays no part",
            json!({"runAsGroup": 1500, "fsGroup": 3000}),
            one(json!({})),
            0o400,
            [(0o3777, 0, 3000), (0o440, 0, 3000), (0o640, 0, 3000)],
        ),
        (
            "fsGroup and a pod user",
            json!({"runAsUser": 1000, "fsGroup": 3000}),
            one(json!({})),
            0o644,
            [(0o3777, 0, 3000), (0o644, 0, 3000), (0o640, 1000, 3000)],
        ),
        (
            "ids outside u32 are unset",
            json!({"runAsUser": -1, "fsGroup": -1}),
            one(json!({})),
            0o644,
            [(0o1777, 0, 0), (0o644, 0, 0), (0o644, 0, 0)],
        ),
    ];
    for (what, security, containers, default_mode, expected) in cases {
        assert_eq!(
            seen_in_projected(security, containers, default_mode),
            expected,
            "{what}"
        );
    }

    let with_init = parent(json!({
        "initContainers": [c("init", json!({}))],
        "containers": [c("a", user(1000))],
        "volumes": [{"name": "v", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
        ]}}],
    }));
    let mut objects = objects(&[], &[]);
    objects.tokens.insert(token_spec(), "tok".into());
    let token = &ok(&with_init, &objects).files[1];
    assert_eq!(
        (token.owner.uid, &token.entry),
        (
            0,
            &SideEntry::File {
                data: b"tok".to_vec(),
                mode: 0o644
            }
        ),
        "an init container without a user: no FsUser"
    );
}
