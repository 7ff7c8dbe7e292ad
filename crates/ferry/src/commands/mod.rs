//! One module per long-running role or CLI command.

pub mod cache;
pub mod daemon;
pub mod demo;
pub mod get;
pub mod init;
pub mod manage;
pub mod manager;
pub mod membership;
pub mod preheat;
pub mod scheduler;
