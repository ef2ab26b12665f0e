# syntax=docker/dockerfile:1.7
#
# pod-checkpointer image: one static binary on distroless/static.
#
#   docker build -t ghcr.io/pod-checkpointer/pod-checkpointer:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 ...   (each arch builds natively under
#                                                                 emulation; no cross toolchain)
#
# The binary is linked statically against musl, so the runtime image needs no libc: nothing but
# the binary, CA certificates and /etc/passwd from distroless.

# Pinned to the toolchain the project is developed and tested with (Cargo.toml's rust-version is
# the floor, not what builds the release).
ARG RUST_VERSION=1.95
ARG VERSION=0.1.0

FROM rust:${RUST_VERSION}-bookworm AS builder
ARG TARGETARCH=amd64
# musl-tools: musl-gcc, the C compiler for the few C parts of dependencies (ring).
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN case "$TARGETARCH" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *) echo "unsupported TARGETARCH $TARGETARCH" >&2; exit 1 ;; \
    esac > /rust-target \
 && rustup target add "$(cat /rust-target)"
WORKDIR /src
COPY . .
# Registry, git and target caches survive between builds (BuildKit cache mounts); the binary is
# copied out of the cached target dir in the same step. --locked: exactly Cargo.lock. The build
# fails rather than ship a binary that asks for a dynamic loader.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    target="$(cat /rust-target)" \
 && CC_x86_64_unknown_linux_musl=musl-gcc CC_aarch64_unknown_linux_musl=musl-gcc \
    cargo build --release --locked --target "$target" --bin pod-checkpointer \
 && install -D -m 0755 "target/$target/release/pod-checkpointer" /out/pod-checkpointer \
 && if readelf -l /out/pod-checkpointer | grep -q 'Requesting program interpreter'; then \
      echo "pod-checkpointer is not statically linked" >&2; exit 1; \
    fi

FROM gcr.io/distroless/static-debian12
ARG VERSION
LABEL org.opencontainers.image.title="pod-checkpointer" \
      org.opencontainers.image.description="Keeps critical pods recoverable on a node while the Kubernetes API server is unreachable" \
      org.opencontainers.image.source="https://github.com/pod-checkpointer/pod-checkpointer" \
      org.opencontainers.image.url="https://github.com/pod-checkpointer/pod-checkpointer" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=builder /out/pod-checkpointer /pod-checkpointer
# Root, on purpose: the agent creates root-owned 0700 directories under /etc/kubernetes and
# chowns checkpointed Secret/ConfigMap files to the uid/gid each checkpointed pod runs as. The
# Helm chart takes everything else away: every capability dropped except CHOWN, FOWNER and
# DAC_OVERRIDE, no privilege escalation, read-only root filesystem, RuntimeDefault seccomp.
USER 0:0
ENTRYPOINT ["/pod-checkpointer"]
