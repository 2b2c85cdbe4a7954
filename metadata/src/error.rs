use tessera_proto::errno;
use tonic::{Code, Status};

use crate::store::StoreError;

pub type Result<T, E = MetaError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{what} already exists")]
    Exists { what: String },
    #[error("directory {ino} of volume {volume} is not empty")]
    NotEmpty { volume: u64, ino: u64 },
    #[error("inode {ino} is not a directory")]
    NotDir { ino: u64 },
    #[error("inode {ino} is a directory")]
    IsDir { ino: u64 },
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("not permitted: {0}")]
    NotPermitted(String),
    #[error("name too long: {0}")]
    NameTooLong(String),
    #[error("volume {volume} is full: {used} of {size} bytes used")]
    Quota {
        volume: String,
        used: u64,
        size: u64,
    },
    #[error("{0}")]
    Unavailable(String),
    /// Too many locks on one file (ENOLCK).
    #[error("{0}")]
    NoLocks(String),
    /// The request is valid but must wait (e.g. a node still holds data).
    #[error("{0}")]
    Busy(String),
    #[error("xattr {name} not found on inode {ino}")]
    NoXattr { ino: u64, name: String },
    #[error(
        "file size {size} is past the largest file ({} bytes)",
        tessera_common::MAX_FILE_SIZE
    )]
    FileTooLarge { size: u64 },
    /// Inode `ino` has a truncation still being cut: finish it, then try
    /// again (`fs/release.rs`). Never leaves the service.
    #[error("a truncation of inode {ino} of volume {volume} is still being cut")]
    TrimPending { volume: u64, ino: u64 },
    #[error("corrupt metadata record at key {key:?}: {why}")]
    Corrupt { key: Vec<u8>, why: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tessera_common::Error> for MetaError {
    fn from(e: tessera_common::Error) -> Self {
        MetaError::Invalid(e.to_string())
    }
}

impl MetaError {
    pub fn not_found(what: impl Into<String>) -> Self {
        MetaError::NotFound { what: what.into() }
    }

    fn errno(&self) -> i32 {
        match self {
            MetaError::NotFound { .. } => libc_errno::ENOENT,
            MetaError::Exists { .. } => libc_errno::EEXIST,
            MetaError::NotEmpty { .. } => libc_errno::ENOTEMPTY,
            MetaError::NotDir { .. } => libc_errno::ENOTDIR,
            MetaError::IsDir { .. } => libc_errno::EISDIR,
            MetaError::Invalid(_) => libc_errno::EINVAL,
            MetaError::NotPermitted(_) => libc_errno::EPERM,
            MetaError::NameTooLong(_) => libc_errno::ENAMETOOLONG,
            MetaError::Quota { .. } => libc_errno::ENOSPC,
            MetaError::Busy(_) => libc_errno::EBUSY,
            MetaError::NoLocks(_) => libc_errno::ENOLCK,
            MetaError::NoXattr { .. } => libc_errno::ENODATA,
            MetaError::FileTooLarge { .. } => libc_errno::EFBIG,
            MetaError::Unavailable(_)
            | MetaError::Corrupt { .. }
            | MetaError::Store(_)
            | MetaError::TrimPending { .. } => libc_errno::EIO,
        }
    }
}

/// Linux errno values (stable ABI; spelled out to keep libc out of the
/// metadata crate).
mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const EFBIG: i32 = 27;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const ENAMETOOLONG: i32 = 36;
    pub const ENOLCK: i32 = 37;
    pub const ENOTEMPTY: i32 = 39;
    pub const ENODATA: i32 = 61;
}

/// The one place metadata errors become gRPC statuses.
impl From<MetaError> for Status {
    fn from(e: MetaError) -> Status {
        if let MetaError::Store(StoreError::Deposed(why)) = &e {
            // Nothing of this transaction was committed: a standby's
            // answer, which clients take to the process that leads now
            // (a call whose earlier steps committed, a truncation's cut,
            // is sent again whole: ARCHITECTURE.md).
            return Status::unavailable(format!("{}: {why}", tessera_proto::STANDBY));
        }
        let code = match &e {
            MetaError::NotFound { .. } | MetaError::NoXattr { .. } => Code::NotFound,
            MetaError::Exists { .. } => Code::AlreadyExists,
            MetaError::NotEmpty { .. } | MetaError::NotDir { .. } | MetaError::IsDir { .. } => {
                Code::FailedPrecondition
            }
            MetaError::Invalid(_) | MetaError::NameTooLong(_) | MetaError::FileTooLarge { .. } => {
                Code::InvalidArgument
            }
            MetaError::NotPermitted(_) => Code::PermissionDenied,
            MetaError::Quota { .. } | MetaError::NoLocks(_) => Code::ResourceExhausted,
            MetaError::Busy(_) => Code::FailedPrecondition,
            MetaError::Unavailable(_) => Code::Unavailable,
            MetaError::Corrupt { .. } => Code::DataLoss,
            MetaError::Store(_) | MetaError::TrimPending { .. } => Code::Internal,
        };
        if matches!(code, Code::Internal | Code::DataLoss) {
            tracing::error!(error = %e, "metadata request failed");
        }
        errno::status(code, e.errno(), e.to_string())
    }
}
