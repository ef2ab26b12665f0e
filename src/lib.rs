//! pod-checkpointer: keeps annotated pods recoverable on a node while the API server is away.
//!
//! Every decision lives in the pure core crate, `pod-checkpointer-core` ([`model`],
//! [`sanitize`], [`plan`], [`decide`]), which cannot do I/O; `ARCHITECTURE.md` draws the layout. This crate is the shell around it: [`watch`]
//! (API server), [`cri`], [`kubelet`] and [`poller`] (the node), [`store`] and [`lock`] (the
//! disk), [`admin`], [`metrics`] and [`telemetry`] (operators), [`reconciler`] (the loop that
//! feeds the core and carries out what it decides) and [`agent`] (wiring). [`offline`] holds
//! the `render` and `status` subcommands.

pub use pod_checkpointer_core::{decide, model, plan, sanitize};

pub mod admin;
pub mod agent;
pub mod config;
pub mod cri;
pub mod kubelet;
pub mod lock;
pub mod metrics;
pub mod offline;
pub mod poller;
pub mod reconciler;
pub mod store;
pub mod telemetry;
pub mod watch;
