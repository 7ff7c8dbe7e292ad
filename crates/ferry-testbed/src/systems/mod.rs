//! The systems compared in one run, each given the same network, file and arrival times.

pub mod bittorrent;
pub mod direct;
pub mod ferry;
