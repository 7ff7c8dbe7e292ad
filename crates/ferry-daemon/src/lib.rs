//! The daemon: one per host. It downloads pieces from parents and origin, stores them,
//! serves them to other peers, and answers the local CLIs over a Unix socket.
//!
//! - [`options`]: what an operator can set; [`advertise`]: the address peers reach us on.
//! - [`schedulers`]: host sessions to every scheduler and the rendezvous pick of a task's one.
//! - [`task`]: one task's download, shared by every local request for it: its lifecycle, the
//!   two ways pieces arrive (from parents, from the origin), and the seams ([`task::env`])
//!   through which it meets its scheduler, parents and origin.
//! - [`gc`]: the cache collector; [`workers`]: the background loops and their status;
//!   [`metrics`]: Prometheus metrics and readiness.
//! - [`ctx`]: the running daemon as the local API sees it; [`api`]: the local API
//!   ([`local`]: its client, for CLIs and tools); [`output`]: landing the file at the caller's path.
//! - [`mirror`]: the OCI registry mirror (blobs and manifests by digest through P2P).
//! - [`cache`]: files imported into the cluster from this host, their replicas and removal.
//! - [`membership`]: this host's member certificate (joined with the token, renewed).
//! - [`run`]: the wiring of all of the above.
//!
//! Dependencies run one way: `run` -> `api` -> (`mirror`, `cache`) -> `ctx` -> `task` -> (`gc`, `registry`,
//! `output`, `counters`, `options`); `schedulers` implements `task::env::SchedulerLink`.

// `tonic::Status` is the error type at this crate's gRPC edge; boxing it would only add noise.
#![allow(clippy::result_large_err)]

pub mod advertise;
pub mod api;
pub mod cache;
pub mod counters;
pub mod ctx;
pub mod error;
pub mod gc;
pub mod local;
pub mod manager;
pub mod membership;
pub mod metrics;
pub mod mirror;
pub mod options;
pub mod output;
pub mod preheat;
pub mod registry;
pub mod retry;
pub mod run;
pub mod schedulers;
pub mod task;
pub mod workers;

pub use error::DaemonError;
pub use options::DaemonOptions;
pub use run::{run, Ready};
