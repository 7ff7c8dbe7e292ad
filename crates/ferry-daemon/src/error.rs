//! The daemon's errors, their failure codes on the wire, and how they reach a caller of the
//! local API (a gRPC status whose `ferry-failure` metadata carries the code the CLI maps to
//! its exit code).

use ferry_backend::BackendError;
use ferry_proto::scheduler::{Failure, FailureCode};
use ferry_storage::StorageError;
use tonic::{Code, Status};

/// Metadata key of the failure code (the proto enum's number) on a failed download.
pub const FAILURE_METADATA: &str = "ferry-failure";

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Origin(#[from] BackendError),
    /// The peer that read the origin for this task failed with this request's own request.
    #[error("{}", .0.message)]
    OriginRemote(Failure),
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("no scheduler reachable ({0}); check --scheduler and that `ferry scheduler` runs")]
    NoScheduler(String),
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("the origin's content changed while Ferry read it ({0}); try again to fetch the new content")]
    OriginChanged(String),
    #[error("write output {path}: {source}")]
    WriteOutput { path: String, source: std::io::Error },
    #[error("download timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// Nothing came from the origin (no layout, no byte) for this long.
    #[error("the origin did not answer within {0:?}")]
    OriginSilent(std::time::Duration),
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("nobody waits for this task any more")]
    Cancelled,
    /// Another request's origin read failed and reset the task: this request starts over
    /// with its own. Never shown to a user.
    #[error("the task was reset by another request's failure")]
    Restart,
    #[error("bind {what} at {addr}: {source}")]
    Bind { what: &'static str, addr: String, source: std::io::Error },
    /// The HTTPS proxy could not be set up (its CA, a host's certificate).
    #[error("{0}")]
    Proxy(String),
    #[error("a daemon already listens on {0}")]
    AlreadyRunning(String),
    /// Joining the cluster (the member certificate) failed for good.
    #[error("cluster membership: {0}")]
    Membership(#[from] ferry_membership::MembershipError),
    /// The scheduler gave up having seeds replicate an imported file.
    #[error("replication failed: {0}")]
    Replication(String),
}

fn is_disk_full(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC)
}

impl DaemonError {
    pub fn code(&self) -> FailureCode {
        match self {
            Self::Origin(e) => match e {
                BackendError::Status { status: 401 | 403, .. } => FailureCode::Unauthorized,
                BackendError::Status { .. } | BackendError::NotInCluster(_) => FailureCode::OriginStatus,
                BackendError::Connect { .. } | BackendError::Read { .. } | BackendError::Tls { .. } => {
                    FailureCode::OriginUnreachable
                }
                _ => FailureCode::OriginBadResponse,
            },
            Self::OriginRemote(f) => FailureCode::try_from(f.code).unwrap_or(FailureCode::Unspecified),
            Self::Storage(e) if e.is_disk_full() => FailureCode::StorageFull,
            Self::WriteOutput { source, .. } if is_disk_full(source) => FailureCode::StorageFull,
            Self::NoScheduler(_) => FailureCode::NoScheduler,
            Self::DigestMismatch { .. } => FailureCode::DigestMismatch,
            Self::OriginChanged(_) => FailureCode::OriginChanged,
            Self::Timeout(_) => FailureCode::Timeout,
            Self::OriginSilent(_) => FailureCode::OriginUnreachable,
            Self::ShuttingDown | Self::Cancelled | Self::Restart => FailureCode::Cancelled,
            _ => FailureCode::Internal,
        }
    }

    pub fn http_status(&self) -> u32 {
        match self {
            Self::Origin(e) => e.http_status().unwrap_or(0) as u32,
            Self::OriginRemote(f) => f.http_status,
            _ => 0,
        }
    }

    /// What other peers of the task hear. The message is this error's own line, which never
    /// holds a secret (backend errors carry redacted URLs).
    pub fn failure(&self) -> Failure {
        Failure { code: self.code() as i32, http_status: self.http_status(), message: self.to_string() }
    }

    /// The failure came from the origin's answer to one particular request (status, bad
    /// bytes): a request that differs may well succeed.
    pub fn is_request_specific(&self) -> bool {
        matches!(
            self.code(),
            FailureCode::OriginStatus
                | FailureCode::Unauthorized
                | FailureCode::OriginBadResponse
                | FailureCode::DigestMismatch
                | FailureCode::OriginUnreachable
        )
    }

    /// The gRPC status a CLI sees, with the failure code in [`FAILURE_METADATA`].
    pub fn to_status(&self) -> Status {
        let grpc = match self.code() {
            _ if matches!(self, Self::BadRequest(_)) => Code::InvalidArgument,
            _ if matches!(self, Self::Origin(BackendError::UnsupportedScheme(_))) => Code::InvalidArgument,
            FailureCode::OriginStatus if matches!(self.http_status(), 404 | 410) => Code::NotFound,
            FailureCode::Unauthorized => Code::PermissionDenied,
            FailureCode::OriginStatus | FailureCode::OriginUnreachable | FailureCode::OriginBadResponse => {
                Code::Unavailable
            }
            FailureCode::DigestMismatch => Code::DataLoss,
            FailureCode::OriginChanged => Code::Aborted,
            FailureCode::StorageFull => Code::ResourceExhausted,
            FailureCode::Timeout => Code::DeadlineExceeded,
            FailureCode::NoScheduler => Code::FailedPrecondition,
            FailureCode::Cancelled => Code::Cancelled,
            _ => Code::Internal,
        };
        let mut status = Status::new(grpc, self.to_string());
        if let Ok(v) = (self.code() as i32).to_string().parse() {
            status.metadata_mut().insert(FAILURE_METADATA, v);
        }
        status
    }
}
