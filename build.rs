//! Generates the CRI v1 client (`runtime.v1`: messages and a `RuntimeService` client, no server)
//! from the vendored upstream proto into OUT_DIR, for `src/cri/proto.rs` to include.
//!
//! The proto is parsed by protox (pure Rust), so building needs neither `protoc` nor the network:
//! only `proto/cri-api/<version>/`, which `hack/update-cri-proto.sh` fetches.

use std::path::PathBuf;

/// The `k8s.io/cri-api` version the agent speaks (Kubernetes v1.34.4). Bump together with
/// `hack/update-cri-proto.sh <version>`.
const CRI_API_VERSION: &str = "v0.34.4";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from("proto/cri-api").join(CRI_API_VERSION);
    let api = dir.join("api.proto");
    println!("cargo:rerun-if-changed={}", dir.display());
    println!("cargo:rustc-env=CRI_API_VERSION={CRI_API_VERSION}");

    // Resolves imports inside the vendored directory only (plus the google/protobuf well-known
    // types protox carries), so a gogo import of an older cri-api is read from its vendored copy.
    let descriptors = protox::compile([&api], [&dir])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        // No `connect()` constructor: the client is built on our own unix-socket channel.
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
