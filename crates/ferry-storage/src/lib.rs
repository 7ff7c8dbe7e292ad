//! Where a daemon keeps task content: one content file per task, written piece by piece at
//! each piece's offset, and a redb database that records which pieces are verified.
//!
//! Invariant: a piece is recorded in the database only after its bytes were verified against
//! the task's piece digest and written to the content file, so after a crash (even SIGKILL)
//! every recorded piece can be served and does not need fetching again. The digest is stored
//! with the record, so a restarted daemon can serve and resume without the scheduler.

mod store;

pub use store::{DiskSpace, HeldPieces, PieceStore, Pin, Store, StoredTask, TaskFile, TaskRecord};

use ferry_types::TaskId;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("open metadata database {path}: {source}")]
    OpenDatabase { path: String, source: Box<redb::DatabaseError> },
    #[error("metadata database: {0}")]
    Database(String),
    /// An I/O error inside the database (a full disk, typically); the store reopens it.
    #[error("metadata database: {reason}")]
    DatabaseIo { reason: String, disk_full: bool },
    #[error("create storage directory {path}: {source}")]
    CreateDir { path: String, source: std::io::Error },
    #[error("open content file of {task:?}: {source}")]
    OpenContent { task: TaskId, source: std::io::Error },
    #[error("write piece {index} of {task:?}: {source}")]
    WritePiece { task: TaskId, index: u32, source: std::io::Error },
    #[error("remove content file of {task:?}: {source}")]
    RemoveContent { task: TaskId, source: std::io::Error },
    #[error("read piece {index} of {task:?}: {source}")]
    ReadPiece { task: TaskId, index: u32, source: std::io::Error },
    #[error("decode metadata of {task:?}: {reason}")]
    DecodeRecord { task: TaskId, reason: String },
    #[error("{task:?} is stored with {stored} bytes in pieces of {stored_piece}, asked for {asked} in pieces of {asked_piece}")]
    LayoutMismatch { task: TaskId, stored: u64, stored_piece: u32, asked: u64, asked_piece: u32 },
}

impl StorageError {
    /// True when the disk is full, so the edge can say so plainly.
    pub fn is_disk_full(&self) -> bool {
        if let Self::DatabaseIo { disk_full, .. } = self {
            return *disk_full;
        }
        let io = match self {
            Self::CreateDir { source, .. } | Self::OpenContent { source, .. } | Self::WritePiece { source, .. } => {
                source
            }
            _ => return false,
        };
        io.raw_os_error() == Some(libc::ENOSPC)
    }
}

impl From<redb::StorageError> for StorageError {
    fn from(e: redb::StorageError) -> Self {
        match e {
            redb::StorageError::Io(ref io) => {
                Self::DatabaseIo { disk_full: io.raw_os_error() == Some(libc::ENOSPC), reason: e.to_string() }
            }
            redb::StorageError::PreviousIo => Self::DatabaseIo { disk_full: false, reason: e.to_string() },
            e => Self::Database(e.to_string()),
        }
    }
}

macro_rules! db_err {
    ($($t:ident),*) => {$(
        impl From<redb::$t> for StorageError {
            fn from(e: redb::$t) -> Self {
                match e {
                    redb::$t::Storage(inner) => inner.into(),
                    e => Self::Database(e.to_string()),
                }
            }
        }
    )*};
}
db_err!(TransactionError, TableError, CommitError);
