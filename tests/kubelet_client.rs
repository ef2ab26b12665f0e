//! The kubelet client in an image with no system CA roots (the agent's image is a single static
//! binary): plain http, and https with a CA file, must not need the system's roots. Its own test
//! binary, because it changes the process environment.

use pod_checkpointer::kubelet::{KubeletClient, KubeletConfig};

#[tokio::test]
async fn kubelet_client_needs_no_system_ca_roots_for_http_or_a_given_ca_file() {
    // Where rustls looks for the system's roots: nowhere, as in a distroless image.
    // SAFETY: the only test in this binary, set before any other thread reads the environment.
    unsafe {
        std::env::set_var("SSL_CERT_FILE", "/nonexistent/ca.pem");
        std::env::set_var("SSL_CERT_DIR", "/nonexistent");
    }
    let http = KubeletClient::new(&KubeletConfig::new("http://127.0.0.1:10255"));
    assert!(http.is_ok(), "plain http: {:?}", http.err());

    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.crt");
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args([
            "-nodes",
            "-subj",
            "/CN=kubelet-test-ca",
            "-days",
            "1",
            "-keyout",
        ])
        .arg(dir.path().join("ca.key"))
        .arg("-out")
        .arg(&ca)
        .output()
        .expect("run openssl");
    assert!(made.status.success(), "openssl: {made:?}");
    let mut with_ca = KubeletConfig::new("https://127.0.0.1:10250");
    with_ca.ca_file = Some(ca);
    let https = KubeletClient::new(&with_ca);
    assert!(https.is_ok(), "https with a CA file: {:?}", https.err());
}
