//! The scheduler service: per task, who holds which pieces, and who should feed whom.
//!
//! State is soft and in memory ([`state`]); daemons rebuild it by re-announcing what they
//! hold after a scheduler restart. Decisions come from `ferry-policy`; this crate only keeps
//! the books and moves messages ([`service`]); [`holders`] answers who holds a task and has
//! seeds replicate an imported file. A [`gc`] worker collects silent hosts and
//! idle tasks.

// `tonic::Status` is the error type at this crate's gRPC edge; boxing it would only add noise.
#![allow(clippy::result_large_err)]

pub mod gc;
mod holders;
pub mod manager;
pub mod metrics;
mod preheat;
mod schedule;
pub mod service;
pub mod state;
pub mod validate;

pub use ferry_policy::RankOptions;
pub use service::{SchedulerOptions, SchedulerService};
