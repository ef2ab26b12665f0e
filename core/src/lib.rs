//! The pure core of pod-checkpointer: every decision the agent makes, as plain functions of
//! plain values. Nothing in this crate does I/O; its dependencies (k8s-openapi types, serde,
//! jiff) cannot, and `clippy.toml` bans the standard library's filesystem, network and process
//! APIs. The agent crate gathers the views, calls in here, and carries out the result.
//!
//! - [`model`]: the shared words (pod keys, observations, the on-disk layout);
//! - [`sanitize`]: a parent pod to the checkpoint the kubelet can run (SPEC §3);
//! - [`decide`]: views and time to actions (SPEC §4);
//! - [`plan`]: the rules around `decide` (which pods are parents here, which checkpoints this
//!   agent manages, when the agent was replaced) and the views it takes;
//! - `fixtures` (tests and the `fixtures` feature only): pod and decision-world builders.

#![warn(missing_docs)]

pub mod decide;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod model;
pub mod plan;
pub mod sanitize;
