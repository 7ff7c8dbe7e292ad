//! ferry-daemon
