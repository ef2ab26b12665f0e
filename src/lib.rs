//! pod-checkpointer: keeps annotated pods recoverable on a node while the API server is away.
//!
//! The pure core holds every decision and does no I/O: [`model`] (plain types), [`sanitize`]
//! (parent pod to checkpoint) and [`decide`] (views and time to actions).
//! The shell around it talks to the world: [`watch`] (API server), [`cri`], [`kubelet`] and
//! [`poller`] (the node), [`store`] and [`lock`] (the disk), [`admin`], [`metrics`] and
//! [`telemetry`] (operators), [`reconciler`] (the loop that feeds the core and carries out what
//! it decides) and [`agent`] (wiring). [`offline`] holds the `render` and `status` subcommands.

pub mod admin;
pub mod agent;
pub mod config;
pub mod cri;
pub mod decide;
pub mod kubelet;
pub mod lock;
pub mod metrics;
pub mod model;
pub mod offline;
pub mod poller;
pub mod reconciler;
pub mod sanitize;
pub mod store;
pub mod telemetry;
pub mod watch;
