//! Ferry's vocabulary: ids, digests, sizes and the piece layout of a task.
//!
//! Every value here is built by one checked constructor and carried as a newtype
//! afterwards, so code further up never re-validates a task id or a digest string.
//! No IO and nothing async lives here.

mod digest;
mod id;
mod layout;
mod request;
mod size;

pub use digest::{DigestAlgo, FileDigest, FileHasher, PieceDigest};
pub use id::{HostId, TaskId, TaskIdInput};
pub use layout::{PieceIndex, PieceLayout, MAX_PIECES, MAX_PIECE_SIZE, MIN_PIECE_SIZE, MIN_RATE_LENGTH};
pub use request::{
    cache_digest, cache_url, host_port, is_object_store_scheme, is_secret_header, redact_url, OriginRequest,
    RequestKey, Validators, CACHE_SCHEME,
};
pub use size::ByteSize;

/// Why a value given by a user or a peer was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("digest `{0}` is not `sha256:<64 hex>` or `sha512:<128 hex>`")]
    Digest(String),
    #[error("task id `{0}` is not 64 hex characters")]
    TaskId(String),
    #[error("host id must be 1-128 characters of [A-Za-z0-9._:-], got `{0}`")]
    HostId(String),
    #[error("size `{0}` is not a number with an optional unit (B, KiB, MiB, GiB, KB, MB, GB)")]
    Size(String),
    #[error("piece index {index} is out of range for a task of {count} pieces")]
    PieceIndex { index: u32, count: u32 },
    #[error("piece size {0} must be a power of two between 16 KiB and 64 MiB")]
    PieceSize(u64),
    #[error("{length} bytes in pieces of {piece_size} is more than {max} pieces", max = MAX_PIECES)]
    TooManyPieces { length: u64, piece_size: u32 },
    #[error("{0}")]
    Header(String),
}
