//! The data plane: how pieces move between peers.
//!
//! [`server`] serves pieces a daemon holds to other peers; [`client`] is one child's
//! connection to one parent. Both speak the frames of `ferry_proto::frame` over TCP, or over
//! mutual TLS with cluster membership (`ferry_membership`). On plain TCP the server sends
//! piece bytes with `sendfile(2)` straight from the content file, so a piece never passes
//! through user space on the parent; over TLS it reads them to encrypt them (no kTLS here).

pub mod avail;
pub mod client;
pub mod io;
pub mod rate;
pub mod server;

pub use avail::Availability;
pub use client::{connect, ParentEvent, ParentReader, ParentWriter};
pub use rate::RateLimit;
pub use server::{serve, ServerOptions, ServerStats, TaskLookup};

use ferry_proto::frame::FrameError;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connect to parent {addr}: {source}")]
    ConnectParent { addr: String, source: std::io::Error },
    #[error("connect to parent {addr}: timed out")]
    ConnectTimeout { addr: String },
    #[error("parent {addr} does not hold this task")]
    UnknownTask { addr: String },
    #[error("peer sent a bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("peer sent {got:?} where {expected} was expected")]
    Unexpected { expected: &'static str, got: String },
    #[error("peer stalled in the middle of a frame for {0:?}")]
    Stalled(std::time::Duration),
    #[error("peer sent no Hello within {0:?} of connecting")]
    NoHello(std::time::Duration),
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
}
