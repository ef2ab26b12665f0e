# pod-checkpointer: conventional entry points. `make help` lists them.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
DOCKER ?= docker
VERSION := $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
IMAGE ?= ghcr.io/pod-checkpointer/pod-checkpointer
TAG ?= $(VERSION)
# Target of the static binary for image-local (falls back to the host target when the musl
# target or musl-gcc is missing; tests/node/node.sh copies a dynamic binary's libraries too).
MUSL_TARGET ?= x86_64-unknown-linux-musl
DIST ?= dist
CHART := charts/pod-checkpointer

.PHONY: help build test demo lint fmt chart image image-local clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## cargo build --release
	$(CARGO) build --release --locked

test: ## The full test suite (unit, node integration, chart): hack/test-all.sh
	bash hack/test-all.sh

demo: ## Self-hosted node rebooted, the checkpoint brings the API back: hack/demo.sh (DEMO=basic|all)
	bash hack/demo.sh

lint: ## cargo fmt --check, clippy -D warnings, hack/chart-check.sh
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	bash hack/chart-check.sh

fmt: ## cargo fmt
	$(CARGO) fmt --all

chart: ## Check the chart (hack/chart-check.sh) and package it into $(DIST)/
	bash hack/chart-check.sh
	bash hack/chart-package.sh $(DIST)

image: ## docker build $(IMAGE):$(TAG) from the Dockerfile (needs a Docker/BuildKit engine)
	$(DOCKER) build --build-arg VERSION=$(VERSION) -t $(IMAGE):$(TAG) .

image-local: ## Build a static release binary and import it as $(IMAGE):$(TAG) into the test node (tests/node/node.sh)
	@if rustup target list --installed 2>/dev/null | grep -qx '$(MUSL_TARGET)' && command -v musl-gcc >/dev/null; then \
	  echo "building a static binary for $(MUSL_TARGET)"; \
	  CC_$(subst -,_,$(MUSL_TARGET))=musl-gcc $(CARGO) build --release --locked --target $(MUSL_TARGET) --bin pod-checkpointer; \
	  bin=target/$(MUSL_TARGET)/release/pod-checkpointer; \
	else \
	  echo "no $(MUSL_TARGET) target or musl-gcc (rustup target add $(MUSL_TARGET); apt-get install musl-tools): building for the host target"; \
	  $(CARGO) build --release --locked --bin pod-checkpointer; \
	  bin=target/release/pod-checkpointer; \
	fi; \
	bash tests/node/node.sh image $(IMAGE):$(TAG) "$$bin"

clean: ## Remove build outputs (target/, $(DIST)/)
	$(CARGO) clean
	rm -rf $(DIST)
