//! The daemon's errors, and how they reach a caller of the local API.

use ferry_backend::BackendError;
use ferry_storage::StorageError;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Origin(#[from] BackendError),
    #[error("origin failed for this task: {reason}")]
    OriginRemote { reason: String, http_status: u32 },
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("no scheduler reachable ({0}); check --scheduler and that `ferry scheduler` runs")]
    NoScheduler(String),
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("origin bytes changed: piece {index} does not match the digest other peers reported")]
    OriginChanged { index: u32 },
    #[error("write output {path}: {source}")]
    WriteOutput { path: String, source: std::io::Error },
    #[error("download timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("bind {what} at {addr}: {source}")]
    Bind { what: &'static str, addr: String, source: std::io::Error },
    #[error("a daemon already listens on {0}")]
    AlreadyRunning(String),
}

fn io_code(e: &std::io::Error) -> Code {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        Code::ResourceExhausted
    } else {
        Code::Internal
    }
}

impl DaemonError {
    /// The gRPC status a CLI sees; the CLI maps it to an exit code.
    pub fn to_status(&self) -> Status {
        let code = match self {
            Self::BadRequest(_) => Code::InvalidArgument,
            Self::Origin(e) => match e.http_status() {
                Some(404) | Some(410) => Code::NotFound,
                Some(401) | Some(403) => Code::PermissionDenied,
                _ if matches!(e, BackendError::UnsupportedScheme(_)) => Code::InvalidArgument,
                _ => Code::Unavailable,
            },
            Self::OriginRemote { http_status, .. } => match http_status {
                404 | 410 => Code::NotFound,
                401 | 403 => Code::PermissionDenied,
                _ => Code::Unavailable,
            },
            Self::Storage(e) if e.is_disk_full() => Code::ResourceExhausted,
            Self::Storage(_) => Code::Internal,
            Self::NoScheduler(_) => Code::Unavailable,
            Self::DigestMismatch { .. } | Self::OriginChanged { .. } => Code::DataLoss,
            Self::WriteOutput { source, .. } => io_code(source),
            Self::Timeout(_) => Code::DeadlineExceeded,
            Self::ShuttingDown => Code::Unavailable,
            Self::Bind { .. } | Self::AlreadyRunning(_) => Code::Internal,
        };
        Status::new(code, self.to_string())
    }
}
