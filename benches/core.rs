//! Micro-benchmarks of the pure core (sanitize, digest, decide) and of the store (write, scan).
//!
//! Run with `cargo bench --bench core [FILTER]`. No benchmark framework: every row is timed with
//! `Instant` after a warm-up, in several batches, and reported as the median and p90 per op.
//! - Fast, pure operations run in batches of many iterations sized to ~2 ms each; a sample is one
//!   batch's time divided by its iterations.
//! - Disk operations (fsync-bound) are timed one op at a time, with untimed per-op setup where
//!   needed; a sample is one op.
//!
//! Every row has a wall-clock budget, so the whole run stays well under a minute on 2 cores.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use pod_checkpointer::decide::{self, OnDiskState};
use pod_checkpointer::model::{KeyData, Layout, PodKey};
use pod_checkpointer::sanitize::{self, Checkpoint, Objects, SideEntry, TokenSpec};
use pod_checkpointer::store::{Store, WriteOutcome};
use pod_checkpointer_core::fixtures::{PodBuilder, World};
use serde_json::json;

/// Target duration of one batch of a fast operation.
const BATCH_TARGET: Duration = Duration::from_millis(2);
/// Least number of batches per fast operation.
const MIN_SAMPLES: usize = 20;
/// Fast operations are measured in this many interleaved rounds.
const ROUNDS: usize = 5;

// ---- measurement ---------------------------------------------------------------------------

/// One row of the result table.
struct Row {
    name: String,
    iterations: u64,
    median: Duration,
    p90: Duration,
}

/// Median and p90 of the samples (nearest-rank), in nanoseconds per op.
fn summarize(name: &str, iterations: u64, mut samples: Vec<f64>) -> Row {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        Duration::from_nanos(samples[rank - 1].round() as u64)
    };
    Row {
        name: name.to_owned(),
        iterations,
        median: at(0.5),
        p90: at(0.9),
    }
}

/// A fast operation under measurement; see [`run_fast`].
struct Fast<'a> {
    name: String,
    op: Box<dyn FnMut() + 'a>,
    per_batch: u64,
    iterations: u64,
    samples: Vec<f64>,
}

impl<'a> Fast<'a> {
    /// `op` must `black_box` what it computes.
    fn new(name: impl Into<String>, op: impl FnMut() + 'a) -> Self {
        Self {
            name: name.into(),
            op: Box::new(op),
            per_batch: 1,
            iterations: 0,
            samples: Vec::new(),
        }
    }

    /// Warm-up (caches, allocator, branch predictors) that also sizes a batch to
    /// [`BATCH_TARGET`].
    fn calibrate(&mut self, warmup: Duration) {
        let warm = Instant::now();
        let mut iters = 0u64;
        while warm.elapsed() < warmup || iters < 10 {
            (self.op)();
            iters += 1;
        }
        let per_op = warm.elapsed().as_secs_f64() / iters as f64;
        self.per_batch = ((BATCH_TARGET.as_secs_f64() / per_op).ceil() as u64).max(1);
    }

    /// Runs whole batches for `budget`, at least `min_batches` of them.
    fn run_for(&mut self, budget: Duration, min_batches: usize) {
        let start = Instant::now();
        let mut batches = 0;
        while start.elapsed() < budget || batches < min_batches {
            let t = Instant::now();
            for _ in 0..self.per_batch {
                (self.op)();
            }
            let elapsed = t.elapsed();
            self.samples
                .push(elapsed.as_nanos() as f64 / self.per_batch as f64);
            self.iterations += self.per_batch;
            batches += 1;
        }
    }
}

/// Times fast operations in [`ROUNDS`] interleaved rounds of `budget / ROUNDS` each (after a
/// warm-up of `budget / 10`), so a slow phase of a shared machine hits every row alike instead
/// of skewing one of them. Each row gets at least [`MIN_SAMPLES`] batches.
fn run_fast(mut benches: Vec<Fast<'_>>, budget: Duration) -> Vec<Row> {
    for b in &mut benches {
        b.calibrate(budget / 10);
    }
    let per_round = MIN_SAMPLES.div_ceil(ROUNDS);
    for _ in 0..ROUNDS {
        for b in &mut benches {
            b.run_for(budget / ROUNDS as u32, per_round);
        }
    }
    benches
        .into_iter()
        .map(|b| summarize(&b.name, b.iterations, b.samples))
        .collect()
}

/// Times a slow (disk) operation one call at a time. `setup` runs untimed before every call and
/// hands the call its input. Runs `warmup` calls, then `batches` batches of equal size that fit
/// in `budget` (at least 3 calls per batch).
fn bench_slow<S, R>(
    name: &str,
    budget: Duration,
    batches: usize,
    mut setup: impl FnMut() -> S,
    mut op: impl FnMut(S) -> R,
) -> Row {
    let warm = Instant::now();
    let warmup = 3;
    for _ in 0..warmup {
        let input = setup();
        black_box(op(black_box(input)));
    }
    // Wall time per call including setup, to size the batches to the budget.
    let per_call = warm.elapsed().as_secs_f64() / f64::from(warmup);
    let per_batch = ((budget.as_secs_f64() / per_call / batches as f64) as usize).clamp(3, 200);

    let mut samples = Vec::with_capacity(batches * per_batch);
    for _ in 0..batches {
        for _ in 0..per_batch {
            let input = black_box(setup());
            let t = Instant::now();
            let out = op(input);
            let elapsed = t.elapsed();
            black_box(out);
            samples.push(elapsed.as_nanos() as f64);
        }
    }
    summarize(name, samples.len() as u64, samples)
}

/// The system's load averages, to tell a quiet run from one that shared the CPUs.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn fmt_duration(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

fn print_table(rows: &[Row]) {
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    println!(
        "| {:<width$} | {:>10} | {:>13} | {:>13} |",
        "name", "iterations", "median per op", "p90 per op"
    );
    println!(
        "|{:-<w$}|{:->12}|{:->14}:|{:->14}:|",
        "",
        "",
        "",
        "",
        w = width + 2
    );
    for r in rows {
        println!(
            "| {:<width$} | {:>10} | {:>13} | {:>13} |",
            r.name,
            r.iterations,
            fmt_duration(r.median),
            fmt_duration(r.p90)
        );
    }
}

// ---- fixtures ------------------------------------------------------------------------------

/// Deterministic PEM-looking text of about `len` bytes (64-column base64 body).
fn pem(label: &str, seed: u64, len: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = format!("-----BEGIN {label}-----\n").into_bytes();
    for i in 0..len {
        // xorshift64: cheap, deterministic filler.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.push(ALPHABET[(state % 64) as usize]);
        if i % 64 == 63 {
            out.push(b'\n');
        }
    }
    out.extend_from_slice(format!("\n-----END {label}-----\n").as_bytes());
    out
}

fn keydata(entries: &[(&str, Vec<u8>)]) -> KeyData {
    entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// What the shell would fetch for [`parent`]: 19 keys over 5 Secrets and 4 ConfigMaps, plus one
/// projected service-account token. `rotation` changes the content of `apiserver.crt` only.
fn objects(rotation: u64) -> Objects {
    let cert = |seed| pem("CERTIFICATE", seed, 1_200);
    let rsa = |seed| pem("RSA PRIVATE KEY", seed, 1_600);
    let secrets = BTreeMap::from([
        (
            "kube-apiserver-certs".to_owned(),
            keydata(&[
                ("apiserver.crt", cert(1 + 1000 * rotation)),
                ("apiserver.key", rsa(2)),
                ("ca.crt", cert(3)),
                ("front-proxy-client.crt", cert(4)),
                ("front-proxy-client.key", rsa(5)),
            ]),
        ),
        (
            "etcd-client-certs".to_owned(),
            keydata(&[
                ("etcd-ca.crt", cert(6)),
                ("etcd-client.crt", cert(7)),
                ("etcd-client.key", rsa(8)),
            ]),
        ),
        (
            "service-account-keys".to_owned(),
            keydata(&[("sa.key", rsa(9)), ("sa.pub", pem("PUBLIC KEY", 10, 400))]),
        ),
        (
            "kube-apiserver-env".to_owned(),
            keydata(&[
                ("OIDC_CLIENT_SECRET", b"c2VjcmV0LW9pZGMtY2xpZW50".to_vec()),
                ("AUDIT_WEBHOOK_TOKEN", b"d2ViaG9vay10b2tlbg$x".to_vec()),
            ]),
        ),
        (
            "encryption-key".to_owned(),
            keydata(&[("key1", b"K3lJ0xQ2n9Zr8Yt4Vw6Ux1Ps5Ob7Na0M".to_vec())]),
        ),
    ]);
    let yaml = |lines: usize| {
        "key: value # some configuration\n"
            .repeat(lines)
            .into_bytes()
    };
    let config_maps = BTreeMap::from([
        (
            "kube-apiserver-config".to_owned(),
            keydata(&[
                ("admission.yaml", yaml(20)),
                ("egress-selector.yaml", yaml(12)),
                ("tracing.yaml", yaml(6)),
            ]),
        ),
        (
            "audit-policy".to_owned(),
            keydata(&[("policy.yaml", yaml(80))]),
        ),
        (
            "kube-root-ca.crt".to_owned(),
            keydata(&[("ca.crt", cert(3))]),
        ),
        (
            "cluster-info".to_owned(),
            keydata(&[("service-cidr", b"10.96.0.0/12".to_vec())]),
        ),
    ]);
    let token = format!(
        "eyJhbGciOiJSUzI1NiIsImtpZCI6ImJlbmNoIn0.{}.{}",
        "e".repeat(600),
        "s".repeat(342)
    );
    let tokens = BTreeMap::from([(
        TokenSpec {
            audience: None,
            expiration_seconds: 3607,
        },
        token,
    )]);
    Objects {
        secrets,
        config_maps,
        tokens,
    }
}

/// A kube-apiserver-like parent: 3 Secret volumes, 2 ConfigMap volumes, a kube-api-access
/// projected volume, a hostPath, `secretKeyRef`/`configMapKeyRef` env and `envFrom`.
fn parent(name: &str) -> Pod {
    let mut args: Vec<String> = [
        "--advertise-address=10.0.0.10",
        "--allow-privileged=true",
        "--authorization-mode=Node,RBAC",
        "--client-ca-file=/etc/kubernetes/pki/ca.crt",
        "--enable-admission-plugins=NodeRestriction",
        "--enable-bootstrap-token-auth=true",
        "--etcd-cafile=/etc/kubernetes/pki/etcd/etcd-ca.crt",
        "--etcd-certfile=/etc/kubernetes/pki/etcd/etcd-client.crt",
        "--etcd-keyfile=/etc/kubernetes/pki/etcd/etcd-client.key",
        "--etcd-servers=https://127.0.0.1:2379",
        "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
        "--proxy-client-cert-file=/etc/kubernetes/pki/front-proxy-client.crt",
        "--proxy-client-key-file=/etc/kubernetes/pki/front-proxy-client.key",
        "--requestheader-allowed-names=front-proxy-client",
        "--secure-port=6443",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        "--service-account-key-file=/etc/kubernetes/pki/sa/sa.pub",
        "--service-account-signing-key-file=/etc/kubernetes/pki/sa/sa.key",
        "--service-cluster-ip-range=10.96.0.0/12",
        "--tls-cert-file=/etc/kubernetes/pki/apiserver.crt",
        "--tls-private-key-file=/etc/kubernetes/pki/apiserver.key",
        "--audit-policy-file=/etc/kubernetes/audit/policy.yaml",
        "--admission-control-config-file=/etc/kubernetes/config/admission.yaml",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.insert(0, "kube-apiserver".to_owned());
    PodBuilder::parent("kube-system", name)
        .uid("5b0c8f8e-2f8d-4f6c-9d1e-0c1f4a8b9e21")
        .label("component", "kube-apiserver")
        .label("tier", "control-plane")
        .label("k8s-app", name)
        .annotation("kubectl.kubernetes.io/default-container", "kube-apiserver")
        .owner("DaemonSet", name, "0d6a2b3c-1111-2222-3333-444455556666", true)
        .spec(json!({
            "nodeName": "cp-node-1",
            "hostNetwork": true,
            "dnsPolicy": "ClusterFirstWithHostNet",
            "priorityClassName": "system-node-critical",
            "priority": 2000001000,
            "serviceAccountName": "kube-apiserver",
            "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
            "tolerations": [{"operator": "Exists", "effect": "NoSchedule"},
                            {"operator": "Exists", "effect": "NoExecute"}],
            "containers": [{
                "name": "kube-apiserver",
                "image": "registry.k8s.io/kube-apiserver:v1.34.1",
                "command": args,
                "ports": [{"name": "https", "containerPort": 6443, "hostPort": 6443}],
                "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}},
                "livenessProbe": {"httpGet": {"host": "127.0.0.1", "path": "/livez", "port": 6443, "scheme": "HTTPS"},
                                  "initialDelaySeconds": 10, "timeoutSeconds": 15},
                "readinessProbe": {"httpGet": {"host": "127.0.0.1", "path": "/readyz", "port": 6443, "scheme": "HTTPS"}},
                "envFrom": [{"secretRef": {"name": "kube-apiserver-env"}}],
                "env": [
                    {"name": "ENCRYPTION_KEY", "valueFrom": {"secretKeyRef": {"name": "encryption-key", "key": "key1"}}},
                    {"name": "SERVICE_CIDR", "valueFrom": {"configMapKeyRef": {"name": "cluster-info", "key": "service-cidr"}}},
                    {"name": "GOMAXPROCS", "value": "4"},
                ],
                "volumeMounts": [
                    {"name": "certs", "mountPath": "/etc/kubernetes/pki"},
                    {"name": "etcd-certs", "mountPath": "/etc/kubernetes/pki/etcd"},
                    {"name": "sa-keys", "mountPath": "/etc/kubernetes/pki/sa"},
                    {"name": "config", "mountPath": "/etc/kubernetes/config"},
                    {"name": "audit", "mountPath": "/etc/kubernetes/audit"},
                    {"name": "ca-certs", "mountPath": "/etc/ssl/certs", "readOnly": true},
                    {"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true},
                ],
            }],
            "volumes": [
                {"name": "certs", "secret": {"secretName": "kube-apiserver-certs"}},
                {"name": "etcd-certs", "secret": {"secretName": "etcd-client-certs", "defaultMode": 0o400}},
                {"name": "sa-keys", "secret": {"secretName": "service-account-keys", "items": [
                    {"key": "sa.key", "path": "sa.key", "mode": 0o400}, {"key": "sa.pub", "path": "sa.pub"}]}},
                {"name": "config", "configMap": {"name": "kube-apiserver-config"}},
                {"name": "audit", "configMap": {"name": "audit-policy", "items": [{"key": "policy.yaml", "path": "policy.yaml"}]}},
                {"name": "ca-certs", "hostPath": {"path": "/etc/ssl/certs", "type": "DirectoryOrCreate"}},
                {"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                ]}},
            ],
        }))
        .status(json!({"phase": "Running", "podIP": "10.0.0.10", "hostIP": "10.0.0.10"}))
        .build()
}

fn checkpoint_of(name: &str, rotation: u64, layout: &Layout) -> Checkpoint {
    sanitize::sanitize(&parent(name), &objects(rotation), layout)
        .expect("the fixture is checkpointable")
}

/// A world for `decide` over `n` checkpoints, with a mix of states cycling every 8 keys:
/// steady, changed digest, missing inactive file, active while the parent runs again, active and
/// stopped, merely starting, dropped from the API (new grace), and past its deadline.
fn decide_world(n: usize, api_up: bool) -> World {
    let mut w = World::new()
        .node("cp-node-1")
        .grace(Duration::from_secs(600));
    if api_up {
        w = w.api_up();
    }
    for i in 0..n {
        let key = PodKey::new("kube-system", format!("control-plane-{i:03}"));
        let state = i % 8;
        let digest = 0x1234_5678_u64.wrapping_mul(i as u64 + 1);
        if state != 7 {
            w = w.desired(&key, digest);
        }
        w = w.written(&key, if state == 1 { digest ^ 1 } else { digest });
        if state != 2 {
            let active = matches!(state, 3 | 4 | 7);
            w = w.on_disk(
                &key,
                OnDiskState {
                    inactive: true,
                    active,
                },
            );
        }
        if matches!(state, 0 | 3 | 5) {
            w = w.running(&key);
        }
        if state < 6 && api_up {
            w = w.listed(&key, state != 5);
        }
        if state == 7 {
            let past = w.now - jiff::SignedDuration::from_secs(5);
            w = w.deadline(&key, past);
        }
    }
    w
}

/// A prepared, empty layout under `root`.
fn fresh_store(root: &Path) -> Store {
    let store = Store::new(Layout::under_root(root));
    store.prepare().expect("prepare the bench layout");
    store
}

/// A store under `root` holding `n` checkpoints written from the fixture, every 4th active.
fn populated_store(root: &Path, n: usize) -> Store {
    let store = fresh_store(root);
    for i in 0..n {
        let cp = checkpoint_of(&format!("kube-apiserver-{i:03}"), 0, store.layout());
        store
            .write_inactive(&cp.key, &cp.manifest_bytes(), &cp.files)
            .expect("populate");
        if i % 4 == 0 {
            store.activate(&cp.key).expect("activate");
        }
    }
    store
}

// ---- main ----------------------------------------------------------------------------------

fn main() {
    // `cargo bench` passes `--bench`; any other free argument filters rows by substring.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let total = Instant::now();
    let load_before = load_average();
    let mut rows = Vec::new();
    let mut notes = Vec::new();

    // Pure core.
    let layout = Layout::under_root(Path::new("/"));
    let pod = parent("kube-apiserver");
    let objs = objects(0);
    let cp = sanitize::sanitize(&pod, &objs, &layout).expect("the fixture is checkpointable");
    let manifest = cp.manifest_bytes();
    let side_bytes: usize = cp
        .files
        .iter()
        .map(|f| match &f.entry {
            SideEntry::File { data, .. } => data.len(),
            SideEntry::Dir { .. } => 0,
        })
        .sum();
    let side_files = cp
        .files
        .iter()
        .filter(|f| matches!(f.entry, SideEntry::File { .. }))
        .count();
    notes.push(format!(
        "fixture: manifest {} bytes; {} side entries ({} files, {} dirs, {} bytes of file data); {} warnings",
        manifest.len(),
        cp.files.len(),
        side_files,
        cp.files.len() - side_files,
        side_bytes,
        cp.warnings.len()
    ));

    let mut worlds = Vec::new();
    for n in [1, 10, 100] {
        for api_up in [true, false] {
            let name = format!(
                "decide, {n} checkpoint{}, API {}",
                if n == 1 { "" } else { "s" },
                if api_up { "up" } else { "down" }
            );
            let world = decide_world(n, api_up);
            let decision = world.decide();
            notes.push(format!("{name}: {} actions", decision.actions.len()));
            worlds.push((name, world));
        }
    }
    let mut fast = vec![
        Fast::new("sanitize (kube-apiserver)", || {
            black_box(sanitize::sanitize(
                black_box(&pod),
                black_box(&objs),
                black_box(&layout),
            ))
            .ok();
        }),
        Fast::new("Checkpoint::manifest_bytes", || {
            black_box(black_box(&cp).manifest_bytes());
        }),
        Fast::new("Checkpoint::digest", || {
            black_box(black_box(&cp).digest());
        }),
    ];
    for (name, world) in &worlds {
        let inputs = world.inputs();
        fast.push(Fast::new(name.as_str(), move || {
            black_box(decide::decide(black_box(&inputs)));
        }));
    }
    fast.retain(|b| wanted(&b.name));
    rows.extend(run_fast(fast, Duration::from_millis(1200)));

    // Store, on the real filesystem of the temp directory (fsync included).
    let tmp = tempfile::Builder::new()
        .prefix("pod-checkpointer-bench-")
        .tempdir()
        .expect("create a temp directory");

    if wanted("write_inactive") {
        // First write: every iteration gets a fresh prepared layout (untimed).
        let mut round = 0u32;
        let mut first: Option<WriteOutcome> = None;
        rows.push(bench_slow(
            "Store::write_inactive, first write",
            Duration::from_secs(6),
            5,
            || {
                round += 1;
                let store = fresh_store(&tmp.path().join(format!("first-{round}")));
                let cp = checkpoint_of("kube-apiserver", 0, store.layout());
                let bytes = cp.manifest_bytes();
                (store, cp, bytes)
            },
            |(store, cp, bytes)| {
                let out = store
                    .write_inactive(&cp.key, &bytes, &cp.files)
                    .expect("first write");
                first.get_or_insert(out);
                // Returned so their drop is not timed.
                (store, cp, bytes)
            },
        ));
        if let Some(out) = first {
            notes.push(format!("first write: {out:?}"));
        }

        // Unchanged rewrite: the same checkpoint again must write nothing.
        let store = fresh_store(&tmp.path().join("rewrite"));
        let cp = checkpoint_of("kube-apiserver", 0, store.layout());
        let bytes = cp.manifest_bytes();
        store
            .write_inactive(&cp.key, &bytes, &cp.files)
            .expect("initial write");
        let mut changed = 0usize;
        rows.push(bench_slow(
            "Store::write_inactive, unchanged rewrite",
            Duration::from_secs(3),
            5,
            || (),
            |()| {
                let out = store
                    .write_inactive(&cp.key, &bytes, &cp.files)
                    .expect("rewrite");
                changed += usize::from(out.manifest_changed) + out.files_changed;
            },
        ));
        assert_eq!(changed, 0, "an unchanged rewrite must not write anything");
        notes.push("unchanged rewrite: 0 files written over all iterations (checked)".to_owned());

        // One Secret key rotated: alternate between two versions of apiserver.crt.
        let store = fresh_store(&tmp.path().join("rotate"));
        let versions: Vec<(Checkpoint, Vec<u8>)> = (0..2)
            .map(|r| {
                let cp = checkpoint_of("kube-apiserver", r, store.layout());
                let bytes = cp.manifest_bytes();
                (cp, bytes)
            })
            .collect();
        store
            .write_inactive(&versions[0].0.key, &versions[0].1, &versions[0].0.files)
            .expect("initial write");
        let mut next = 1;
        let mut last: Option<WriteOutcome> = None;
        rows.push(bench_slow(
            "Store::write_inactive, 1 secret key rotated",
            Duration::from_secs(4),
            5,
            || {
                let v = &versions[next];
                next = 1 - next;
                v
            },
            |(cp, bytes)| {
                let out = store
                    .write_inactive(&cp.key, bytes, &cp.files)
                    .expect("rotated write");
                last = Some(out);
            },
        ));
        if let Some(out) = last {
            notes.push(format!("rotated rewrite: {out:?}"));
        }
    }

    for n in [10, 100] {
        let name = format!("Store::scan, {n} checkpoints");
        if !wanted(&name) {
            continue;
        }
        let store = populated_store(&tmp.path().join(format!("scan-{n}")), n);
        let view = store.scan().expect("scan");
        assert_eq!(view.checkpoints.len(), n);
        assert!(view.unreadable.is_empty());
        rows.push(bench_slow(
            &name,
            Duration::from_secs(3),
            5,
            || (),
            |()| store.scan().expect("scan"),
        ));
    }

    print_table(&rows);
    println!();
    for note in notes {
        println!("- {note}");
    }
    println!(
        "- load average (1/5/15 min) before: {load_before}; after: {}",
        load_average()
    );
    println!("- total wall time: {:.1} s", total.elapsed().as_secs_f64());
}
