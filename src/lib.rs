//! pod-checkpointer: keeps annotated pods recoverable on a node while the API server is away.
//!
//! The pure core (`model`, `sanitize`, `decide`) holds every decision and does no I/O.
//! The shell around it talks to the world: `watch` (API server), `cri` and `kubelet` (the node),
//! `store` and `lock` (the disk), `admin` and `metrics` (operators), `reconciler` (the loop that
//! feeds the core and carries out what it decides).

pub mod cri;
pub mod decide;
pub mod kubelet;
pub mod lock;
pub mod model;
pub mod sanitize;
pub mod store;
